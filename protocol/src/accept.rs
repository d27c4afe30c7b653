//! The accept side across protocols: the banner sniffer that lets one listener take
//! both msgr v1 and msgr2, and [`decide`], the accept decision for a request of either.
//!
//! # Sniffing the banner
//!
//! Ceph's acceptor writes its banner first and reads the connector's after. A listener
//! that serves both protocols cannot: which banner to write depends on the protocol, so
//! [`Sniffer`] waits for the connector's first 8 bytes (`ceph v02` of `ceph v027`, or
//! `ceph v2\n`) and only then becomes a v1 or v2 machine, which writes its banner. Real
//! Ceph connectors (and ours) send their banner at once without waiting for the
//! acceptor's, so they are served; a connector that waits to read first would time out.
//! Listeners bound to one protocol use [`crate::Connection::accept_v1`] /
//! [`crate::Connection::accept_v2`] and keep Ceph's order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::session::{
    later, log_limited, AcceptRequest, CloseReason, Config, Decision, Event, ExistingSession,
    Fault, Initiator, PeerIssue, PeerIssues, Policy, RequestKind, WARN_LINES_PER_SECOND,
};
use crate::types::EntityAddrVec;
use crate::wire::KeepaliveStamp;
use crate::{v1, v2};

/// Bytes of the connector's banner that tell the protocols apart.
const SNIFF_LEN: usize = 8;
/// msgr v1's banner, as far as the sniffer reads it.
const V1_PREFIX: &[u8; SNIFF_LEN] = b"ceph v02";
/// msgr2's banner prefix.
const V2_PREFIX: &[u8; SNIFF_LEN] = v2::banner::BANNER_PREFIX;

/// The accept decision for `req`, by its protocol's race rules
/// ([`v1::race::decide`], [`v2::race::decide`]): `existing` is the session the
/// messenger's table holds under `req.peer_addr`, `policy` its policy for the peer's
/// type, `my_addrs` our bound addresses (v1 compares its LEGACY one, msgr2 its v2 one).
///
/// Pure: the messenger calls it inside the critical section of its session table, then
/// applies [`Decision::table_effect`] and answers the machine with
/// [`crate::Machine::handle_accept_decision`].
pub fn decide(
    req: &AcceptRequest,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    match req.kind {
        RequestKind::Connect { .. } => {
            let me = my_addrs
                .legacy_addr()
                .or_else(|| my_addrs.addrs.first().copied())
                .unwrap_or_default();
            v1::race::decide(req, existing, policy, &me)
        }
        RequestKind::Ident { .. } | RequestKind::Reconnect { .. } => {
            v2::race::decide(req, existing, policy, my_addrs)
        }
    }
}

/// An accepted socket whose protocol is not known yet: it reads the connector's first
/// 8 bytes and becomes a v1 or v2 machine ([`crate::Connection::accept`]).
#[derive(Debug)]
pub struct Sniffer {
    config: Arc<Config>,
    socket_peer: SocketAddr,
    socket_local: SocketAddr,
    /// When the socket was accepted (the machine's handshake deadline counts from it).
    accepted: Instant,
    /// The connector's first bytes (at most [`SNIFF_LEN`] are looked at; everything
    /// buffered goes to the machine).
    seen: BytesMut,
    /// Messages queued before the protocol is known (handed to the machine).
    queued: Vec<Message>,
    /// A keepalive asked for meanwhile.
    keepalive: Option<KeepaliveStamp>,
    /// Made lossy meanwhile.
    lossy: bool,
    /// Set once closed: the last event to report.
    closed: Option<Event>,
    /// `closed` was reported.
    reported: bool,
    /// A peer that sent no Ceph banner, counted as a peer issue.
    issues: PeerIssues,
}

/// What the sniffer found.
pub(crate) enum Sniffed {
    /// Not enough bytes yet.
    Pending,
    /// msgr v1 (the buffered bytes included).
    V1(v1::Connection),
    /// msgr2.
    V2(v2::Connection),
}

impl Sniffer {
    pub(crate) fn new(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        Sniffer {
            config,
            socket_peer,
            socket_local,
            accepted: now,
            seen: BytesMut::new(),
            queued: Vec::new(),
            keepalive: None,
            lossy: false,
            closed: None,
            reported: false,
            issues: PeerIssues::default(),
        }
    }

    /// When the handshake times out.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.closed.is_none().then(|| later(self.accepted, self.config.handshake_timeout))
    }

    /// The socket's peer.
    pub fn socket_peer(&self) -> SocketAddr {
        self.socket_peer
    }

    /// The connector's bytes; the machine, once they tell the protocol.
    pub(crate) fn handle_bytes(&mut self, now: Instant, data: Bytes) -> Sniffed {
        if self.closed.is_some() {
            return Sniffed::Pending;
        }
        self.seen.extend_from_slice(&data);
        let n = self.seen.len().min(SNIFF_LEN);
        let is_v1 = self.seen[..n] == V1_PREFIX[..n];
        let is_v2 = self.seen[..n] == V2_PREFIX[..n];
        if !is_v1 && !is_v2 {
            let line = self.issues.note(PeerIssue::BadBanner, &self.config.warn_limit, now);
            let peer = self.socket_peer;
            log_limited(
                line,
                log::Level::Warn,
                "msgr::accept",
                format_args!("{peer}: not a Ceph banner"),
                format_args!("more peer issues were not logged: at most {WARN_LINES_PER_SECOND} lines a second"),
                format_args!("{peer}: not a Ceph banner"),
            );
            self.close(Initiator::Library, CloseReason::Fault(Fault::BadBanner));
            return Sniffed::Pending;
        }
        if n < SNIFF_LEN {
            return Sniffed::Pending;
        }
        let (peer, local, at) = (self.socket_peer, self.socket_local, self.accepted);
        let bytes = std::mem::take(&mut self.seen).freeze();
        if is_v1 {
            let mut c = v1::Connection::accept(self.config.clone(), peer, local, at);
            self.hand_over(&mut c);
            c.handle_bytes(now, bytes);
            Sniffed::V1(c)
        } else {
            let mut c = v2::Connection::accept(self.config.clone(), peer, local, at);
            self.hand_over(&mut c);
            c.handle_bytes(now, bytes);
            Sniffed::V2(c)
        }
    }

    /// What was asked of the connection before its protocol was known.
    fn hand_over<P: crate::session::Protocol>(&mut self, m: &mut crate::Machine<P>) {
        if self.lossy {
            m.mark_lossy();
        }
        for msg in self.queued.drain(..) {
            m.send_message(msg);
        }
        if let Some(stamp) = self.keepalive.take() {
            m.send_keepalive(stamp);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| now >= d) {
            self.close(Initiator::Library, CloseReason::Fault(Fault::HandshakeTimeout));
        }
    }

    pub(crate) fn handle_transport_closed(&mut self) {
        self.close(Initiator::Peer, CloseReason::Fault(Fault::TransportClosed));
    }

    pub(crate) fn send_message(&mut self, msg: Message) {
        if self.closed.is_none() {
            self.queued.push(msg);
        }
    }

    pub(crate) fn send_keepalive(&mut self, stamp: KeepaliveStamp) {
        self.keepalive = Some(stamp);
    }

    pub(crate) fn mark_lossy(&mut self) {
        self.lossy = true;
    }

    pub(crate) fn close(&mut self, by: Initiator, reason: CloseReason) {
        if self.closed.is_none() {
            log::debug!(target: "msgr::accept", "{}: closed by {by:?}: {reason}", self.socket_peer);
            self.closed = Some(Event::Closed { by, reason: Box::new(reason) });
            self.queued.clear();
            self.seen.clear();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// See [`crate::Machine::poll_peer_issues`].
    pub(crate) fn poll_peer_issues(&mut self) -> (u64, u64) {
        self.issues.take_counts()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        if self.reported {
            return None;
        }
        let ev = self.closed.clone()?;
        self.reported = true;
        Some(ev)
    }

    pub(crate) fn has_events(&self) -> bool {
        self.closed.is_some() && !self.reported
    }

    pub(crate) fn pending(&self) -> usize {
        self.queued.len()
    }

    pub(crate) fn send_cost(&self) -> u64 {
        self.queued.iter().map(Message::send_cost).sum()
    }
}
