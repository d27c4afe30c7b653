//! [`Connection`]: one TCP connection attempt / session of msgr v1, as a pure state
//! machine (see the module docs of [`super`] for the call order and the state diagram).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;
use crate::message::{DecodeOptions, EncodeOptions, Message, MessageDecoder, Progress};
use crate::types::{proto_version, EntityAddr, EntityType, Features, LEGACY_ADDR_LEN};
use crate::wire::{
    ack_frame, check_banner, decode_ack, decode_keepalive_stamp, keepalive2_frame, AcceptorBanner,
    ConnectMsg, ConnectReply, FooterFormat, KeepaliveStamp, Tag, ACCEPTOR_BLOCK_LEN, BANNER,
    BANNER_LEN, CONNECT_LOSSY, MAX_AUTHORIZER_LEN,
};

use super::config::{Config, Counters};
use super::decide::{AcceptRequest, Decision};
use super::event::{AuthVerdict, CloseReason, Event, Initiator, Opened};
use super::fault::{fault_action, Fault, FaultAction, FaultContext, Side};
use super::policy::Policy;
use super::rx::RxBuf;
use super::session::Session;

const LOG: &str = "msgr::v1";

/// How many payload bytes one `poll_transmit` call frames at most, so one busy
/// connection cannot build an unbounded write list (the driver calls again after
/// writing).
const TRANSMIT_BATCH_BYTES: usize = 1 << 20;

/// Source of the connection ids shown in the `Display` prefix.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Connect messages one accepted TCP connection may send before it is faulted.
///
/// A well-behaved connector needs at most a handful on one socket (RETRY_SESSION,
/// RETRY_GLOBAL, RESETSESSION, one more after a BADAUTHORIZER); anything beyond is a
/// peer looping on purpose, and each connect costs us a reply. Ceph's connector gives up
/// after a few retries too; 8 leaves room for every legitimate sequence.
pub const MAX_CONNECT_ATTEMPTS: u32 = 8;

/// Kinds of peer misbehaviour that a peer could trigger in bulk. Each is logged at WARN
/// the first time it happens on a connection and at DEBUG afterwards, and always counted
/// ([`Connection::poll_peer_issues`]), so a flood costs one log line per connection and
/// kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerIssue {
    /// A connect we answer with a retry or refusal (bad protocol version, features,
    /// authorizer), or too many connects.
    BadConnect,
    /// A connect reply we cannot accept.
    BadConnectReply,
    /// A banner or address that is not what it must be.
    BadBanner,
    /// A message that failed to decode (crc, limits, footer).
    BadMessage,
    /// An unknown tag in the open session.
    UnknownTag,
}

impl PeerIssue {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A coarse public view of the connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Dialling, in the handshake, or backing off before the next attempt.
    Connecting,
    /// Accept side, in the handshake.
    Accepting,
    /// The session is open.
    Open,
    /// Lossless session without a socket, waiting.
    Standby,
    /// Finished.
    Closed,
}

/// The internal state. Wait states share the `Await` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Connect side: the driver is dialling.
    AwaitTransport,
    /// Connect side: banner sent, waiting for the acceptor's 281-byte block.
    AwaitBanner,
    /// Connect side: connect sent, waiting for the reply.
    AwaitConnectReply,
    /// Lossless fault: waiting out the backoff before dialling again.
    AwaitBackoff { until: Instant },
    /// Accept side: our block sent, waiting for the peer's banner and address.
    AwaitPeerBanner,
    /// Accept side: waiting for a connect message.
    AwaitConnect,
    /// Accept side: waiting for [`Connection::handle_authorizer_verdict`].
    AwaitAuthorizerVerdict,
    /// Accept side: waiting for [`Connection::handle_accept_decision`].
    AwaitAcceptDecision,
    /// Accept side: SEQ sent, waiting for the peer's `u64` in_seq.
    AwaitPeerInSeq,
    /// Session open.
    Open,
    /// Lossless session parked without a socket.
    Standby,
    /// Finished; nothing more happens.
    Closed,
}

impl State {
    fn in_handshake(self) -> bool {
        matches!(
            self,
            State::AwaitTransport
                | State::AwaitBanner
                | State::AwaitConnectReply
                | State::AwaitPeerBanner
                | State::AwaitConnect
                | State::AwaitAuthorizerVerdict
                | State::AwaitAcceptDecision
                | State::AwaitPeerInSeq
        )
    }

    fn name(self) -> &'static str {
        match self {
            State::AwaitTransport => "AwaitTransport",
            State::AwaitBanner => "AwaitBanner",
            State::AwaitConnectReply => "AwaitConnectReply",
            State::AwaitBackoff { .. } => "AwaitBackoff",
            State::AwaitPeerBanner => "AwaitPeerBanner",
            State::AwaitConnect => "AwaitConnect",
            State::AwaitAuthorizerVerdict => "AwaitAuthorizerVerdict",
            State::AwaitAcceptDecision => "AwaitAcceptDecision",
            State::AwaitPeerInSeq => "AwaitPeerInSeq",
            State::Open => "Open",
            State::Standby => "Standby",
            State::Closed => "Closed",
        }
    }
}

/// What the open session expects next on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenRx {
    /// A one-byte tag.
    Tag,
    /// The `u64` of an ACK.
    Ack,
    /// The stamp of a KEEPALIVE2.
    Keepalive2,
    /// The stamp of a KEEPALIVE2_ACK.
    Keepalive2Ack,
    /// Message bytes (fed to the decoder); `discard` for a duplicate seq.
    Msg { discard: bool },
    /// A header was decoded; waiting for [`Connection::grant_budget`].
    AwaitBudget,
}

/// The budget of the message being received (see [`Event::NeedBudget`]).
#[derive(Clone, Copy, Debug, Default)]
struct MsgBudget {
    /// Payload bytes granted so far.
    granted: u64,
    /// The amount of the outstanding request.
    requested: u64,
    /// The header waits for its first grant (`MessageDecoder::proceed_with`).
    first: bool,
}

/// The peer's connect message while the accept side decides about it.
#[derive(Clone, Debug)]
struct PendingConnect {
    msg: ConnectMsg,
    /// What we send back with the final reply (empty for auth none).
    authorizer_reply: Bytes,
}

/// One msgr v1 connection (connect or accept side) and the session it carries.
pub struct Connection {
    /// Process-unique id for logs.
    id: u64,
    config: Arc<Config>,
    /// The role of the current TCP connection (an accepted lossless session that
    /// reconnects becomes a connect side).
    side: Side,
    /// The policy for the peer's type; on the accept side the default until the
    /// messenger's decision brings the real one.
    policy: Policy,
    /// The session turned out lossy (our policy, or the acceptor's LOSSY flag).
    lossy: bool,
    state: State,
    /// Dialled address (connect) or announced address after the blank-IP fix-up (accept).
    peer_addr: Option<EntityAddr>,
    peer_type: Option<EntityType>,
    socket_peer: Option<SocketAddr>,
    /// Negotiated features; valid once open.
    features: Features,
    session: Session,
    /// Our global_seq for the current connect attempt.
    global_seq: u32,
    /// The session has been open on some connection of this machine (Ceph's `once_ready`).
    once_ready: bool,
    /// The current open continues a session (not a fresh one).
    resuming: bool,
    /// The current open follows a peer restart (reset from peer).
    remote_reset: bool,
    /// Backoff used for the last attempt (zero after a successful open).
    backoff: Duration,
    /// Reconnect attempts since the last open.
    attempt: u32,
    rx: RxBuf,
    open_rx: OpenRx,
    decoder: MessageDecoder,
    /// Control bytes to send, in order (handshake, ACK, keepalives, CLOSE).
    ctrl: BytesMut,
    events: VecDeque<Event>,
    pending_connect: Option<PendingConnect>,
    /// The latest `now` seen (commands without a `now` use it).
    now: Instant,
    handshake_deadline: Option<Instant>,
    /// Last time bytes arrived (idle timeout).
    last_rx: Instant,
    /// Next periodic keepalive, when `keepalive_interval` is set and the session is open.
    keepalive_due: Option<Instant>,
    /// A keepalive asked for while not open, sent once open.
    keepalive_pending: Option<KeepaliveStamp>,
    /// Maps `Instant`s to wall-clock stamps for timer-driven keepalives: the instant and
    /// stamp of the last `send_keepalive` (or creation and zero).
    stamp_anchor: (Instant, KeepaliveStamp),
    last_keepalive: Option<Instant>,
    last_keepalive_ack: Option<KeepaliveStamp>,
    /// in_seq advanced since the last ACK we sent (lossless only).
    ack_pending: bool,
    messages_sent: u64,
    /// Connect messages received on the current accepted socket.
    connects_received: u32,
    /// The message being received: budget granted so far (payload bytes), the amount
    /// asked for by the pending [`Event::NeedBudget`], and whether its header is still
    /// waiting for the first grant.
    msg_budget: MsgBudget,
    /// While a message arrives: when it must have progressed by a window
    /// (`Config::payload_timeout`), and the bytes it progressed since the last reset.
    payload_deadline: Option<(Instant, u64)>,
    /// Since when bytes have waited that the socket would not take
    /// ([`Connection::handle_write_blocked`]).
    write_blocked_since: Option<Instant>,
    /// [`PeerIssue`] kinds already logged at WARN on this connection (one bit each).
    warned: u8,
    /// Peer issues seen and how many of them were not logged at WARN, since the last
    /// [`Connection::poll_peer_issues`].
    peer_issues: (u64, u64),
}

impl Connection {
    fn new(config: Arc<Config>, side: Side, policy: Policy, state: State, now: Instant) -> Self {
        let decoder = MessageDecoder::new(DecodeOptions {
            limits: config.limits,
            crc: EncodeOptions {
                crc_header: config.crc_header,
                crc_data: config.crc_data,
                footer: FooterFormat::New,
            },
        });
        Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            side,
            lossy: policy.lossy,
            policy,
            state,
            peer_addr: None,
            peer_type: None,
            socket_peer: None,
            features: Features::NONE,
            session: Session::default(),
            global_seq: 0,
            once_ready: false,
            resuming: false,
            remote_reset: false,
            backoff: Duration::ZERO,
            attempt: 0,
            rx: RxBuf::default(),
            open_rx: OpenRx::Tag,
            decoder,
            ctrl: BytesMut::new(),
            events: VecDeque::new(),
            pending_connect: None,
            now,
            handshake_deadline: Some(later(now, config.handshake_timeout)),
            last_rx: now,
            keepalive_due: None,
            keepalive_pending: None,
            stamp_anchor: (now, KeepaliveStamp::default()),
            last_keepalive: None,
            last_keepalive_ack: None,
            ack_pending: false,
            messages_sent: 0,
            connects_received: 0,
            msg_budget: MsgBudget::default(),
            payload_deadline: None,
            write_blocked_since: None,
            warned: 0,
            peer_issues: (0, 0),
            config,
        }
    }

    /// A connect-side machine for `peer_addr` (of type `peer_type`). The driver dials
    /// and calls [`Connection::handle_transport_connected`] when the socket is connected.
    pub fn connect(
        config: Arc<Config>,
        policy: Policy,
        peer_addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Self {
        let mut c = Connection::new(config, Side::Connect, policy, State::AwaitTransport, now);
        c.peer_addr = Some(peer_addr);
        c.peer_type = Some(peer_type);
        c.socket_peer = peer_addr.addr;
        log::debug!(target: LOG, "{c}: connecting");
        c
    }

    /// An accept-side machine for a socket just accepted from `socket_peer` on
    /// `socket_local`. Our banner block is ready in [`Connection::poll_transmit`] at once.
    pub fn accept(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        let mut c =
            Connection::new(config, Side::Accept, Policy::default(), State::AwaitPeerBanner, now);
        c.socket_peer = Some(socket_peer);
        let mut me = c.config.my_addr;
        if me.is_blank_ip() {
            // Announce the address the peer reached us on, keeping our port and nonce,
            // so its dialled-address check passes without the blank-IP exception.
            let port = if me.port() != 0 { me.port() } else { socket_local.port() };
            me.addr = Some(SocketAddr::new(socket_local.ip(), port));
        }
        let block = AcceptorBanner { my_addr: me, peer_addr: EntityAddr::legacy(socket_peer, 0) };
        c.ctrl.extend_from_slice(&block.to_bytes());
        log::debug!(target: LOG, "{c}: accepted");
        c
    }

    // ----- inputs -----

    /// The dialled socket is connected (first attempt or after [`Event::Reconnect`]):
    /// the handshake starts.
    #[doc(alias = "reconnect_transport")]
    pub fn handle_transport_connected(&mut self, now: Instant) {
        self.now = now;
        if self.state != State::AwaitTransport {
            log::warn!(target: LOG, "{self}: transport connected in state {}", self.state.name());
            return;
        }
        self.side = Side::Connect;
        self.reset_transport();
        self.global_seq = self.config.next_global_seq();
        self.ctrl.extend_from_slice(BANNER);
        self.handshake_deadline = Some(later(now, self.config.handshake_timeout));
        self.last_rx = now;
        self.set_state(State::AwaitBanner);
    }

    /// Bytes from the socket, in any chunking. Call only while
    /// [`Connection::wants_read`]; payloads are sliced out of `data` without copying.
    pub fn handle_bytes(&mut self, now: Instant, data: Bytes) {
        self.now = now;
        if self.state == State::Closed || data.is_empty() {
            return;
        }
        log::trace!(target: LOG, "{self}: {} bytes in", data.len());
        self.last_rx = now;
        self.rx.push(data);
        self.process(now);
    }

    /// While a large message segment arrives in pieces, the buffer it is assembled in
    /// and how many more bytes it needs ([`MessageDecoder::assembly_buffer`]): the driver
    /// may read at most that many bytes into its spare capacity, then call
    /// [`Connection::handle_direct_read`]. `None` whenever bytes must go through
    /// [`Connection::handle_bytes`].
    pub fn direct_read_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        if self.state != State::Open
            || !matches!(self.open_rx, OpenRx::Msg { .. })
            || self.rx.len() > 0
        {
            return None;
        }
        self.decoder.assembly_buffer()
    }

    /// `n` bytes were read into [`Connection::direct_read_buffer`].
    pub fn handle_direct_read(&mut self, now: Instant, n: usize) {
        self.now = now;
        if self.state == State::Closed || n == 0 {
            return;
        }
        log::trace!(target: LOG, "{self}: {n} bytes in (direct)");
        self.last_rx = now;
        self.note_payload_progress(now, n as u64);
        self.process(now);
    }

    /// The socket reached EOF or failed.
    pub fn handle_transport_closed(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::Closed | State::Standby | State::AwaitBackoff { .. } => {}
            _ => self.fault(now, Fault::TransportClosed),
        }
    }

    /// The driver has bytes to write that the socket does not take (it would block).
    /// If that lasts `Config::write_timeout` with no [`Connection::handle_write_progress`]
    /// in between, the open session faults: the peer stopped reading, and what waits for
    /// it must not be held forever.
    pub fn handle_write_blocked(&mut self, now: Instant) {
        self.now = now;
        if self.write_blocked_since.is_none() {
            self.write_blocked_since = Some(now);
        }
    }

    /// The socket took bytes, or nothing waits to be written any more.
    pub fn handle_write_progress(&mut self, now: Instant) {
        self.now = now;
        self.write_blocked_since = None;
    }

    /// The deadline from [`Connection::poll_timeout`] passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::AwaitBackoff { until } if now >= until => {
                self.start_reconnect(now);
            }
            s if s.in_handshake() && self.handshake_deadline.is_some_and(|d| now >= d) => {
                self.fault(now, Fault::HandshakeTimeout);
            }
            State::Open => {
                if now >= later(self.last_rx, self.config.idle_timeout) {
                    self.fault(now, Fault::IdleTimeout);
                    return;
                }
                if self.payload_deadline.is_some_and(|(at, _)| now >= at) {
                    self.fault(now, Fault::PayloadTimeout);
                    return;
                }
                if self.write_deadline().is_some_and(|at| now >= at) {
                    self.fault(now, Fault::WriteTimeout);
                    return;
                }
                if let (Some(due), Some(every)) =
                    (self.keepalive_due, self.config.keepalive_interval)
                {
                    if now >= due {
                        let stamp = self.stamp_at(now);
                        self.queue_keepalive(stamp);
                        self.keepalive_due = Some(later(now, every));
                    }
                }
            }
            _ => {}
        }
    }

    /// The messenger's answer to [`Event::AcceptRequest`]: its policy for the peer's
    /// type, the [`Decision`] (from [`super::decide`]) and, on a lossless replace, the
    /// session taken from the existing connection.
    pub fn handle_accept_decision(
        &mut self,
        now: Instant,
        policy: Policy,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        self.now = now;
        if self.state != State::AwaitAcceptDecision {
            log::warn!(target: LOG, "{self}: accept decision in state {}", self.state.name());
            return;
        }
        let Some(pending) = self.pending_connect.take() else {
            self.fault(now, Fault::Misbehaved("accept decision without a connect"));
            return;
        };
        self.policy = policy;
        self.lossy = policy.lossy;
        log::debug!(target: LOG, "{self}: accept decision {decision:?}");
        match decision {
            Decision::Open { reset_from_peer } => {
                self.accept_open(now, pending, transferred, false, reset_from_peer)
            }
            Decision::Replace { reset_existing, reset_from_peer } => {
                self.accept_open(now, pending, transferred, reset_existing, reset_from_peer)
            }
            Decision::RetryGlobal(gs) => self.retry_reply(&pending, Tag::RETRY_GLOBAL, gs, 0),
            Decision::RetrySession(cs) => self.retry_reply(&pending, Tag::RETRY_SESSION, 0, cs),
            Decision::Wait => self.retry_reply(&pending, Tag::WAIT, 0, 0),
            Decision::ResetSession => self.retry_reply(&pending, Tag::RESETSESSION, 0, 0),
        }
        // After a retry reply, the peer's next connect may already be buffered.
        if self.state == State::AwaitConnect {
            self.process(now);
        }
    }

    /// The messenger's answer to [`Event::VerifyAuthorizer`].
    pub fn handle_authorizer_verdict(&mut self, now: Instant, verdict: AuthVerdict) {
        self.now = now;
        if self.state != State::AwaitAuthorizerVerdict {
            log::warn!(target: LOG, "{self}: authorizer verdict in state {}", self.state.name());
            return;
        }
        match verdict {
            AuthVerdict::Accept { reply } => {
                if let Some(p) = self.pending_connect.as_mut() {
                    p.authorizer_reply = reply;
                }
                self.request_decision();
            }
            AuthVerdict::Reject => {
                self.peer_issue(PeerIssue::BadConnect, format_args!("authorizer rejected"));
                if let Some(p) = self.pending_connect.take() {
                    self.retry_reply(&p, Tag::BADAUTHORIZER, 0, 0);
                    self.process(now);
                }
            }
        }
    }

    /// Budget for the message announced by [`Event::NeedBudget`] was reserved: read on.
    pub fn grant_budget(&mut self, now: Instant) {
        self.now = now;
        if self.open_rx != OpenRx::AwaitBudget {
            return;
        }
        let b = &mut self.msg_budget;
        if b.first {
            b.first = false;
            if let Err(e) = self.decoder.proceed_with(b.requested) {
                self.fault(now, Fault::Decode(e));
                return;
            }
        } else {
            self.decoder.grant(b.requested);
        }
        b.granted = b.granted.saturating_add(b.requested);
        b.requested = 0;
        // The peer is on the clock again: it must fill the window in time.
        self.payload_deadline = Some((later(now, self.config.payload_timeout), 0));
        self.open_rx = OpenRx::Msg { discard: false };
        self.process(now);
    }

    // ----- commands -----

    /// Queues `msg` (priority order, HIGHEST first; FIFO within a priority). Its seq is
    /// assigned when it is framed. Wakes a connect-side standby session.
    pub fn send_message(&mut self, msg: Message) {
        if self.state == State::Closed {
            log::debug!(target: LOG, "{self}: message dropped, connection closed");
            return;
        }
        self.session.queue.push_back(msg);
        self.wake_from_standby();
    }

    /// Queues a keepalive: KEEPALIVE2 with `wall_clock` if negotiated, else KEEPALIVE.
    /// Sent once open if not open yet.
    pub fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        self.stamp_anchor = (self.now, wall_clock);
        match self.state {
            State::Closed => {}
            State::Open => self.queue_keepalive(wall_clock),
            _ => {
                self.keepalive_pending = Some(wall_clock);
                self.wake_from_standby();
            }
        }
    }

    /// Closes the connection: an open session sends CLOSE (flush
    /// [`Connection::poll_transmit`] before dropping the socket); queued messages are
    /// dropped. Emits [`Event::Closed`] by [`Initiator::Local`].
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        let was_open = self.state == State::Open;
        self.session.reset();
        if was_open {
            self.ctrl.clear();
            self.ctrl.put_u8(Tag::CLOSE.0);
        } else {
            self.ctrl.clear();
        }
        self.finish(Initiator::Local, CloseReason::Requested);
    }

    /// Moves the session (seqs, queued and unacked messages) out for a replace; this
    /// machine is closed afterwards without further events.
    pub fn take_session(&mut self) -> Option<Session> {
        if self.state == State::Closed {
            return None;
        }
        self.session.requeue_sent();
        let s = std::mem::take(&mut self.session);
        log::debug!(target: LOG, "{self}: session taken (cs={} in={} out={})", s.connect_seq, s.in_seq, s.out_seq);
        self.ctrl.clear();
        self.rx.clear();
        self.set_state(State::Closed);
        Some(s)
    }

    // ----- outputs -----

    /// Appends the bytes to write, as segments (payloads are shared, not copied);
    /// returns how many bytes were appended. Call until it returns 0 or the socket is
    /// full; what was returned must be written in order before the next call's output.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        let mut total = 0;
        if self.state == State::Open {
            if self.ack_pending && !self.lossy {
                self.ctrl.extend_from_slice(&ack_frame(self.session.in_seq));
                self.ack_pending = false;
            }
            if let Some(stamp) = self.keepalive_pending.take() {
                self.queue_keepalive(stamp);
            }
        }
        let mut head = std::mem::take(&mut self.ctrl);
        if self.state == State::Open {
            let format = FooterFormat::for_features(self.features);
            while total + head.len() < TRANSMIT_BATCH_BYTES {
                let Some(mut msg) = self.session.queue.pop() else { break };
                self.session.out_seq += 1;
                let seq = self.session.out_seq;
                if msg.seq() != 0 && msg.seq() != seq {
                    // A requeued message keeps its number (Ceph's requeue_sent rolls
                    // out_seq back); a mismatch means the invariant broke.
                    log::warn!(target: LOG, "{self}: requeued message seq {} framed as {seq}", msg.seq());
                }
                msg.set_seq(seq);
                let (header, footer) = msg.encode_header(
                    seq,
                    self.config.my_name,
                    self.config.crc_header,
                    self.config.crc_data,
                );
                head.reserve(1 + 53 + 21);
                head.put_u8(Tag::MSG.0);
                head.extend_from_slice(&header.to_bytes());
                for seg in [msg.front(), msg.middle(), msg.data()] {
                    if seg.is_empty() {
                        continue;
                    }
                    if !head.is_empty() {
                        let h = head.split().freeze();
                        total += h.len();
                        out.push(h);
                    }
                    total += seg.len();
                    out.push(seg.clone());
                }
                let (fb, flen) = footer.to_bytes(format);
                head.extend_from_slice(&fb[..flen]);
                self.messages_sent += 1;
                if !self.lossy {
                    self.session.push_sent(msg);
                }
            }
        }
        if !head.is_empty() {
            let h = head.split().freeze();
            total += h.len();
            out.push(h);
        }
        // Keep the allocation for the next round when it was not handed out.
        self.ctrl = head;
        if total > 0 {
            log::trace!(target: LOG, "{self}: {total} bytes out");
        }
        total
    }

    /// The next time [`Connection::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitBackoff { until } => Some(until),
            s if s.in_handshake() => self.handshake_deadline,
            State::Open => {
                let idle = later(self.last_rx, self.config.idle_timeout);
                [self.keepalive_due, self.payload_deadline.map(|(at, _)| at), self.write_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| at.min(idle))
                    .or(Some(idle))
            }
            _ => None,
        }
    }

    /// The next event, if any. Drain after every input or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether the driver should read the socket (false while waiting for a decision,
    /// a verdict or a budget, and when there is no socket).
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::AwaitBanner
            | State::AwaitConnectReply
            | State::AwaitPeerBanner
            | State::AwaitConnect
            | State::AwaitPeerInSeq => true,
            State::Open => self.open_rx != OpenRx::AwaitBudget,
            _ => false,
        }
    }

    /// Whether [`Connection::poll_transmit`] has something to return.
    pub fn wants_write(&self) -> bool {
        !self.ctrl.is_empty()
            || (self.state == State::Open
                && (!self.session.queue.is_empty()
                    || (self.ack_pending && !self.lossy)
                    || self.keepalive_pending.is_some()))
    }

    /// Whether the session is open.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the machine is finished.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The coarse state.
    pub fn state(&self) -> SessionState {
        match self.state {
            State::Open => SessionState::Open,
            State::Standby => SessionState::Standby,
            State::Closed => SessionState::Closed,
            State::AwaitPeerBanner
            | State::AwaitConnect
            | State::AwaitAuthorizerVerdict
            | State::AwaitAcceptDecision
            | State::AwaitPeerInSeq => SessionState::Accepting,
            _ => SessionState::Connecting,
        }
    }

    /// The peer's address (dialled, or announced after the blank-IP fix-up).
    pub fn peer_addr(&self) -> Option<&EntityAddr> {
        self.peer_addr.as_ref()
    }

    /// The peer's entity type, once known.
    pub fn peer_type(&self) -> Option<EntityType> {
        self.peer_type
    }

    /// Negotiated features (empty before the first open).
    pub fn features(&self) -> Features {
        self.features
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the session is lossy.
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// Makes the session lossy from now on (Ceph's `mark_disposable`): the next fault
    /// resets it ([`Event::Reset`]) instead of reconnecting, and nothing more is acked.
    pub fn mark_lossy(&mut self) {
        self.policy.lossy = true;
        self.lossy = true;
        // Never resent now, and no longer acknowledged: keeping them would hold them
        // (and their share of the send bounds) until the session ends.
        self.session.drop_sent();
    }

    /// What the messages this machine holds for sending cost: queued, and (lossless)
    /// sent but not yet acknowledged (`Message::send_cost` each). The messenger's send
    /// bounds count this.
    pub fn send_held_cost(&self) -> u64 {
        self.session.send_cost()
    }

    /// When the peer's last KEEPALIVE / KEEPALIVE2 arrived.
    pub fn last_keepalive(&self) -> Option<Instant> {
        self.last_keepalive
    }

    /// The stamp of the peer's last KEEPALIVE2_ACK.
    pub fn last_keepalive_ack(&self) -> Option<KeepaliveStamp> {
        self.last_keepalive_ack
    }

    /// `(in_seq, out_seq, connect_seq, peer_global_seq)`.
    pub fn seqs(&self) -> (u64, u64, u32, u32) {
        (
            self.session.in_seq,
            self.session.out_seq,
            self.session.connect_seq,
            self.session.peer_global_seq,
        )
    }

    /// Messages queued or sent-but-unacked.
    pub fn pending_messages(&self) -> usize {
        self.session.pending()
    }

    /// Messages framed so far by [`Connection::poll_transmit`] (resends included).
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// Whether a message is being received: its header was read and it has not
    /// completed (the driver holds its budget meanwhile). False after a fault.
    pub fn message_in_progress(&self) -> bool {
        self.state == State::Open
            && (self.open_rx == OpenRx::AwaitBudget
                || (self.open_rx == OpenRx::Msg { discard: false }
                    && self.decoder.header().is_some()))
    }

    /// Bytes of memory held for the message being received.
    pub fn receive_held_bytes(&self) -> usize {
        self.decoder.held_bytes()
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.write_blocked_since.map(|at| later(at, self.config.write_timeout))
    }

    /// Peer misbehaviour seen since the last call: `(issues, not logged at WARN)`. Each
    /// kind of issue is logged at WARN once per connection and at DEBUG afterwards, so a
    /// peer repeating it costs one log line; the counts let the messenger show the rest.
    pub fn poll_peer_issues(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.peer_issues)
    }

    // ----- the handshake -----

    fn process(&mut self, now: Instant) {
        // Each step consumes input or changes state, or returns false; the bound only
        // guards against a bug turning into a hang.
        for _ in 0..1_000_000 {
            if !self.step(now) {
                return;
            }
        }
        log::warn!(target: LOG, "{self}: input loop bound hit");
    }

    /// One unit of input processing; false when more input (or an answer) is needed.
    fn step(&mut self, now: Instant) -> bool {
        match self.state {
            State::AwaitBanner => self.read_acceptor_banner(now),
            State::AwaitConnectReply => self.read_connect_reply(now),
            State::AwaitPeerBanner => self.read_peer_banner(now),
            State::AwaitConnect => self.read_connect(now),
            State::AwaitPeerInSeq => {
                let Some(b) = self.rx.contiguous(8) else { return false };
                let mut s = [0u8; 8];
                s.copy_from_slice(b);
                self.rx.consume(8);
                let peer_in = u64::from_le_bytes(s);
                self.session.discard_requeued_up_to(peer_in);
                self.open(now);
                true
            }
            State::Open => self.read_open(now),
            State::AwaitAuthorizerVerdict | State::AwaitAcceptDecision => false,
            State::AwaitTransport | State::AwaitBackoff { .. } | State::Standby | State::Closed => {
                // Bytes of a connection that is gone.
                self.rx.clear();
                false
            }
        }
    }

    /// Runs a prefix decoder over the buffered input, widening the window when it reports
    /// how much it needs. `Ok(None)`: not enough input yet.
    fn parse<T>(
        &mut self,
        mut need: usize,
        f: impl Fn(&[u8]) -> Result<(T, usize), Error>,
    ) -> Result<Option<T>, Error> {
        loop {
            let Some(buf) = self.rx.contiguous(need) else { return Ok(None) };
            match f(buf) {
                Ok((v, used)) => {
                    self.rx.consume(used);
                    return Ok(Some(v));
                }
                Err(Error::Truncated { need: more, .. }) if more > need => need = more,
                Err(e) => return Err(e),
            }
        }
    }

    fn read_acceptor_banner(&mut self, now: Instant) -> bool {
        let Some(buf) = self.rx.contiguous(ACCEPTOR_BLOCK_LEN) else {
            // A wrong banner is known from its first 9 bytes.
            if let Some(b) = self.rx.contiguous(BANNER_LEN.min(self.rx.len())) {
                if b.len() == BANNER_LEN && check_banner(b).is_err() {
                    self.fault(now, Fault::BadBanner);
                }
            }
            return false;
        };
        let block = match AcceptorBanner::decode(buf) {
            Ok((b, _)) => b,
            Err(Error::BadBanner) => {
                self.fault(now, Fault::BadBanner);
                return false;
            }
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        self.rx.consume(ACCEPTOR_BLOCK_LEN);
        // The acceptor must be who we dialled; a blank IP with our port and nonce passes.
        if let Some(dialled) = self.peer_addr {
            let same = block.my_addr.nonce == dialled.nonce && block.my_addr.addr == dialled.addr;
            let blank_ok = block.my_addr.is_blank_ip()
                && block.my_addr.port() == dialled.port()
                && block.my_addr.nonce == dialled.nonce;
            if !same && !blank_ok {
                self.peer_issue(
                    PeerIssue::BadBanner,
                    format_args!("peer announced {:?}, dialled {:?}", block.my_addr, dialled),
                );
                self.fault(now, Fault::AddrMismatch);
                return false;
            }
        }
        // Learn our IP from what the peer saw (ms_learn_addr_from_peer), keep port/nonce.
        let mut me = self.config.my_addr;
        if me.is_blank_ip() {
            if let Some(seen) = block.peer_addr.addr {
                me.addr = Some(SocketAddr::new(seen.ip(), me.port()));
            }
        }
        self.ctrl.extend_from_slice(&me.encode_legacy());
        self.send_connect();
        self.set_state(State::AwaitConnectReply);
        true
    }

    fn send_connect(&mut self) {
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        let my_type = self.config.my_name.ty;
        // ProtocolV1 asks for an authorizer unless a non-monitor talks to a monitor
        // (clients authenticate to monitors with MAuth afterwards).
        let authorizer = if peer_type != EntityType::MON || my_type == EntityType::MON {
            self.config.authorizer.as_ref().and_then(|hook| hook(peer_type))
        } else {
            None
        };
        let (auth_proto, auth) = authorizer.unwrap_or((0, Bytes::new()));
        let msg = ConnectMsg {
            features: self.config.features_supported,
            host_type: my_type,
            global_seq: self.global_seq,
            connect_seq: self.session.connect_seq,
            protocol_version: proto_version(my_type, peer_type, true),
            authorizer_protocol: auth_proto,
            authorizer_len: u32::try_from(auth.len()).unwrap_or(u32::MAX),
            flags: if self.policy.lossy { CONNECT_LOSSY } else { 0 },
        };
        let mut out = Vec::with_capacity(ConnectMsg::LEN + auth.len());
        msg.encode_with_authorizer(&auth, &mut out);
        self.ctrl.extend_from_slice(&out);
        Counters::bump(&self.config.counters.connects);
        log::debug!(target: LOG, "{self}: connect gs={} cs={}", msg.global_seq, msg.connect_seq);
    }

    fn read_connect_reply(&mut self, now: Instant) -> bool {
        let parsed = self.parse(ConnectReply::LEN, |b| {
            ConnectReply::decode_full(b, MAX_AUTHORIZER_LEN)
                .map(|(r, _auth, in_seq, used)| ((r, in_seq), used))
        });
        let (reply, peer_in_seq) = match parsed {
            Ok(Some(r)) => r,
            Ok(None) => return false,
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        log::debug!(target: LOG, "{self}: reply {} gs={} cs={}", reply.tag, reply.global_seq, reply.connect_seq);
        let supported = self.config.features_supported;
        match reply.tag {
            Tag::FEATURES => {
                let missing = supported.missing_from(reply.features);
                self.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("peer requires features we lack: {missing}"),
                );
                self.refuse("peer requires features we lack");
                false
            }
            Tag::BADPROTOVER => {
                self.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("peer wants protocol version {}", reply.protocol_version),
                );
                self.refuse("protocol version mismatch");
                false
            }
            Tag::BADAUTHORIZER => {
                self.refuse("authorizer rejected");
                false
            }
            Tag::CHALLENGE_AUTHORIZER => {
                self.refuse("cephx authorizer challenge is not supported");
                false
            }
            Tag::RESETSESSION => {
                Counters::bump(&self.config.counters.reset_session);
                log::info!(target: LOG, "{self}: peer reset our session");
                self.session.reset();
                self.keepalive_pending = None;
                self.events.push_back(Event::RemoteReset);
                self.send_connect();
                true
            }
            Tag::RETRY_GLOBAL => {
                Counters::bump(&self.config.counters.retry_global);
                self.global_seq = self.config.global_seq_above(reply.global_seq);
                self.send_connect();
                true
            }
            Tag::RETRY_SESSION => {
                Counters::bump(&self.config.counters.retry_session);
                self.session.connect_seq = reply.connect_seq;
                self.send_connect();
                true
            }
            Tag::WAIT => {
                Counters::bump(&self.config.counters.wait);
                self.fault(now, Fault::Wait);
                false
            }
            Tag::SEQ | Tag::READY => {
                let missing = reply.features.missing_from(self.config.features_required);
                if !missing.is_empty() {
                    self.peer_issue(
                        PeerIssue::BadConnectReply,
                        format_args!("peer lacks required features {missing}"),
                    );
                    self.refuse("peer lacks required features");
                    return false;
                }
                let cs = self.session.connect_seq.wrapping_add(1);
                if reply.connect_seq != cs {
                    self.fault(now, Fault::Misbehaved("connect_seq in the reply is not ours + 1"));
                    return false;
                }
                if let Some(peer_in) = peer_in_seq {
                    self.session.discard_requeued_up_to(peer_in);
                    self.ctrl.extend_from_slice(&self.session.in_seq.to_le_bytes());
                }
                self.session.connect_seq = cs;
                self.session.peer_global_seq = reply.global_seq;
                self.lossy = self.policy.lossy || reply.is_lossy();
                self.features = reply.features & supported;
                self.open(now);
                true
            }
            other => {
                self.fault(now, Fault::UnknownTag(other.0));
                false
            }
        }
    }

    fn read_peer_banner(&mut self, now: Instant) -> bool {
        let need = BANNER_LEN + LEGACY_ADDR_LEN;
        let Some(buf) = self.rx.contiguous(need) else {
            if let Some(b) = self.rx.contiguous(BANNER_LEN) {
                if check_banner(b).is_err() {
                    self.fault(now, Fault::BadBanner);
                }
            }
            return false;
        };
        if check_banner(buf).is_err() {
            self.fault(now, Fault::BadBanner);
            return false;
        }
        let mut addr = match EntityAddr::decode_legacy(&buf[BANNER_LEN..need]) {
            Ok(a) => a,
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        self.rx.consume(need);
        if addr.is_blank_ip() {
            if let Some(sp) = self.socket_peer {
                addr.addr = Some(SocketAddr::new(sp.ip(), addr.port()));
            }
        }
        self.peer_addr = Some(addr);
        self.set_state(State::AwaitConnect);
        true
    }

    fn read_connect(&mut self, now: Instant) -> bool {
        let parsed = self.parse(ConnectMsg::LEN, |b| {
            ConnectMsg::decode_with_authorizer(b, MAX_AUTHORIZER_LEN)
                .map(|(m, auth, used)| ((m, Bytes::copy_from_slice(auth)), used))
        });
        let (msg, authorizer) = match parsed {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        let peer_type = msg.host_type;
        self.peer_type = Some(peer_type);
        log::debug!(target: LOG, "{self}: connect from {peer_type} gs={} cs={}", msg.global_seq, msg.connect_seq);
        self.connects_received = self.connects_received.saturating_add(1);
        if self.connects_received > MAX_CONNECT_ATTEMPTS {
            self.peer_issue(
                PeerIssue::BadConnect,
                format_args!("more than {MAX_CONNECT_ATTEMPTS} connects on one connection"),
            );
            self.fault(now, Fault::Misbehaved("too many connect attempts on one connection"));
            return false;
        }
        let pending = PendingConnect { msg, authorizer_reply: Bytes::new() };
        let expected = proto_version(self.config.my_name.ty, peer_type, false);
        if msg.protocol_version != expected {
            self.peer_issue(
                PeerIssue::BadConnect,
                format_args!("peer protocol {} != {expected}", msg.protocol_version),
            );
            self.retry_reply(&pending, Tag::BADPROTOVER, 0, 0);
            return true;
        }
        let missing = msg.features.missing_from(self.config.features_required);
        if !missing.is_empty() {
            self.peer_issue(
                PeerIssue::BadConnect,
                format_args!("peer lacks required features {missing}"),
            );
            self.retry_reply(&pending, Tag::FEATURES, 0, 0);
            return true;
        }
        self.pending_connect = Some(pending);
        if !authorizer.is_empty() || self.config.verify_empty_authorizer {
            self.events.push_back(Event::VerifyAuthorizer {
                peer_type,
                protocol: msg.authorizer_protocol,
                authorizer,
            });
            self.set_state(State::AwaitAuthorizerVerdict);
        } else {
            self.request_decision();
        }
        false
    }

    fn request_decision(&mut self) {
        let (Some(p), Some(peer_addr), Some(socket_peer)) =
            (self.pending_connect.as_ref(), self.peer_addr, self.socket_peer)
        else {
            return;
        };
        let req = AcceptRequest {
            peer_addr,
            peer_type: p.msg.host_type,
            socket_peer,
            features: p.msg.features,
            global_seq: p.msg.global_seq,
            connect_seq: p.msg.connect_seq,
            lossy: p.msg.is_lossy(),
        };
        self.events.push_back(Event::AcceptRequest(req));
        self.set_state(State::AwaitAcceptDecision);
    }

    /// A reply that leaves the peer to send another connect (or to give up): features
    /// `(theirs & supported) | required`, as Ceph's `send_connect_message_reply`.
    fn retry_reply(&mut self, p: &PendingConnect, tag: Tag, global_seq: u32, connect_seq: u32) {
        let reply = ConnectReply {
            tag,
            features: (p.msg.features & self.config.features_supported)
                | self.config.features_required,
            global_seq,
            connect_seq,
            protocol_version: proto_version(self.config.my_name.ty, p.msg.host_type, false),
            authorizer_len: 0,
            flags: 0,
        };
        let mut out = Vec::with_capacity(ConnectReply::LEN + p.authorizer_reply.len());
        reply.encode_full(&p.authorizer_reply, 0, &mut out);
        self.ctrl.extend_from_slice(&out);
        log::debug!(target: LOG, "{self}: replied {tag}");
        // Back to reading connects. The caller's input loop (`process`) reads the next
        // one: never call it from here, or a peer that pipelines thousands of bad
        // connects would recurse once per connect.
        self.set_state(State::AwaitConnect);
    }

    /// Ceph's `ProtocolV1::open` on the accept side.
    fn accept_open(
        &mut self,
        now: Instant,
        p: PendingConnect,
        transferred: Option<Session>,
        reset_existing: bool,
        reset_from_peer: bool,
    ) {
        self.resuming = false;
        self.once_ready = true;
        if let Some(mut s) = transferred {
            s.requeue_sent();
            self.session = s;
            self.resuming = true;
        }
        if reset_existing {
            self.session.reset();
            self.resuming = false;
        }
        // Ceph's session_reset queues ms_handle_remote_reset; a peer restart without
        // resetcheck keeps our session (READY, in_seq zeroed) and reports nothing.
        if reset_from_peer && reset_existing {
            self.events.push_back(Event::RemoteReset);
        }
        self.remote_reset = reset_from_peer;
        self.session.connect_seq = p.msg.connect_seq.wrapping_add(1);
        self.session.peer_global_seq = p.msg.global_seq;
        let seq_exchange = p.msg.features.contains(Features::RECONNECT_SEQ) && !reset_from_peer;
        if !seq_exchange {
            // Without the exchange (or after a peer restart) numbering starts over.
            self.session.in_seq = 0;
            if !self.session.queue.has_requeued() {
                self.session.out_seq = 0;
            }
        }
        let reply = ConnectReply {
            tag: if seq_exchange { Tag::SEQ } else { Tag::READY },
            features: self.config.features_supported,
            global_seq: self.config.next_global_seq(),
            connect_seq: self.session.connect_seq,
            protocol_version: proto_version(self.config.my_name.ty, p.msg.host_type, false),
            authorizer_len: 0,
            flags: if self.policy.lossy { CONNECT_LOSSY } else { 0 },
        };
        let mut out = Vec::with_capacity(ConnectReply::LEN + p.authorizer_reply.len() + 8);
        reply.encode_full(&p.authorizer_reply, self.session.in_seq, &mut out);
        self.ctrl.extend_from_slice(&out);
        self.features = self.config.features_supported & p.msg.features;
        log::debug!(target: LOG, "{self}: replied {}", reply.tag);
        if seq_exchange {
            self.set_state(State::AwaitPeerInSeq);
            self.process(now);
        } else {
            self.open(now);
            self.process(now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.set_state(State::Open);
        self.handshake_deadline = None;
        self.backoff = Duration::ZERO;
        self.attempt = 0;
        self.once_ready = true;
        self.open_rx = OpenRx::Tag;
        self.decoder.reset();
        let mut opts = *self.decoder.options();
        opts.crc.footer = FooterFormat::for_features(self.features);
        self.decoder.set_options(opts);
        self.last_rx = now;
        self.keepalive_due = self.config.keepalive_interval.map(|every| later(now, every));
        let (Some(peer_addr), Some(peer_type)) = (self.peer_addr, self.peer_type) else { return };
        log::info!(target: LOG, "{self}: open, features {:#x}, lossy {}", self.features.bits(), self.lossy);
        self.events.push_back(Event::Opened(Opened {
            peer_addr,
            peer_type,
            features: self.features,
            connect_seq: self.session.connect_seq,
            lossy: self.lossy,
            resumed: self.resuming || self.session.in_seq > 0 || self.session.out_seq > 0,
            remote_reset: self.remote_reset,
        }));
        self.resuming = false;
        self.remote_reset = false;
    }

    // ----- the open session -----

    fn read_open(&mut self, now: Instant) -> bool {
        match self.open_rx {
            OpenRx::AwaitBudget => false,
            OpenRx::Tag => {
                let Some(b) = self.rx.contiguous(1) else { return false };
                let tag = Tag(b[0]);
                self.rx.consume(1);
                match tag {
                    Tag::MSG => self.open_rx = OpenRx::Msg { discard: false },
                    Tag::ACK => self.open_rx = OpenRx::Ack,
                    Tag::KEEPALIVE => {
                        self.last_keepalive = Some(now);
                        self.events.push_back(Event::KeepaliveReceived);
                    }
                    Tag::KEEPALIVE2 => self.open_rx = OpenRx::Keepalive2,
                    Tag::KEEPALIVE2_ACK => self.open_rx = OpenRx::Keepalive2Ack,
                    Tag::CLOSE => {
                        log::info!(target: LOG, "{self}: peer sent CLOSE");
                        self.session.reset();
                        self.events.push_back(Event::Reset);
                        self.finish(Initiator::Peer, CloseReason::PeerClose);
                        return false;
                    }
                    other => {
                        self.peer_issue(
                            PeerIssue::UnknownTag,
                            format_args!("unknown tag {}", other.0),
                        );
                        self.fault(now, Fault::UnknownTag(other.0));
                        return false;
                    }
                }
                true
            }
            OpenRx::Ack => {
                let Some(b) = self.rx.contiguous(8) else { return false };
                let seq = decode_ack(b).map(|(s, _)| s).unwrap_or(0);
                self.rx.consume(8);
                self.open_rx = OpenRx::Tag;
                if !self.lossy {
                    self.session.ack(seq);
                }
                self.events.push_back(Event::Acked { up_to: seq });
                true
            }
            OpenRx::Keepalive2 | OpenRx::Keepalive2Ack => {
                let Some(b) = self.rx.contiguous(8) else { return false };
                let stamp = match decode_keepalive_stamp(b) {
                    Ok((s, _)) => s,
                    Err(e) => {
                        self.fault(now, Fault::Decode(e));
                        return false;
                    }
                };
                self.rx.consume(8);
                if self.open_rx == OpenRx::Keepalive2 {
                    self.ctrl.extend_from_slice(&keepalive2_frame(Tag::KEEPALIVE2_ACK, stamp));
                    self.last_keepalive = Some(now);
                    self.events.push_back(Event::KeepaliveReceived);
                } else {
                    self.last_keepalive_ack = Some(stamp);
                    self.events.push_back(Event::KeepaliveAck(stamp));
                }
                self.open_rx = OpenRx::Tag;
                true
            }
            OpenRx::Msg { discard } => self.read_message(now, discard),
        }
    }

    fn read_message(&mut self, now: Instant, discard: bool) -> bool {
        // No buffered input is fine: a direct read may have completed the segment.
        let mut chunk = self.rx.pop_chunk().unwrap_or_default();
        if discard {
            // A duplicate streams by without being stored.
            let done = self.decoder.skip_input(&mut chunk);
            self.rx.unpop_chunk(chunk);
            return match done {
                Err(e) => {
                    self.fault(now, Fault::Decode(e));
                    false
                }
                Ok(true) => {
                    self.open_rx = OpenRx::Tag;
                    true
                }
                Ok(false) => self.rx.len() > 0,
            };
        }
        let before = chunk.len();
        let progress = self.decoder.feed(&mut chunk);
        let used = before - chunk.len();
        self.rx.unpop_chunk(chunk);
        self.note_payload_progress(now, used as u64);
        match progress {
            Err(e) => {
                self.peer_issue(PeerIssue::BadMessage, format_args!("bad message: {e}"));
                self.fault(now, Fault::Decode(e));
                false
            }
            Ok(Progress::NeedMore) => {
                if let Some(uncovered) = self.decoder.budget_needed() {
                    self.request_budget(uncovered, false);
                    return false;
                }
                self.rx.len() > 0
            }
            Ok(Progress::HeaderReady(h)) => {
                if h.seq <= self.session.in_seq {
                    // Already delivered (a resend the peer could not know we had): let it
                    // stream by without budget and without storing it, then read on.
                    log::debug!(target: LOG, "{self}: dropping duplicate seq {} (in_seq {})", h.seq, self.session.in_seq);
                    Counters::bump(&self.config.counters.old_seq_dropped);
                    if let Err(e) = self.decoder.skip() {
                        self.fault(now, Fault::Decode(e));
                        return false;
                    }
                    self.open_rx = OpenRx::Msg { discard: true };
                    return true;
                }
                self.request_budget(h.payload_len(), true);
                false
            }
            Ok(Progress::Message(mut msg)) => {
                self.open_rx = OpenRx::Tag;
                self.msg_budget = MsgBudget::default();
                self.payload_deadline = None;
                let seq = msg.seq();
                if seq > self.session.in_seq.wrapping_add(1) {
                    log::info!(target: LOG, "{self}: seq gap: got {seq}, expected {}", self.session.in_seq + 1);
                }
                self.session.in_seq = seq;
                if !self.lossy {
                    self.ack_pending = true;
                }
                msg.set_recv_stamp(now);
                self.events.push_back(Event::Message(msg));
                true
            }
        }
    }

    /// Asks for the next window of budget for the message being received and stops
    /// reading until [`Connection::grant_budget`]. `uncovered` is what its payload still
    /// needs beyond what was granted. A window is `Config::first_window`, or what the
    /// message already holds (so windows double), or what already arrived and waits in
    /// the receive buffer (it is in memory anyway, and a message that arrived whole is
    /// then taken in one window, without a copy), whichever is largest: a message's
    /// budget grows with the bytes that actually arrived.
    fn request_budget(&mut self, uncovered: u64, first: bool) {
        let b = &mut self.msg_budget;
        if first {
            *b = MsgBudget { first: true, ..MsgBudget::default() };
        }
        let window =
            u64::from(self.config.first_window.max(1)).max(b.granted).max(self.rx.len() as u64);
        b.requested = uncovered.min(window);
        self.open_rx = OpenRx::AwaitBudget;
        // Waiting for our own budget is not the peer's stall.
        self.payload_deadline = None;
        self.events.push_back(Event::NeedBudget { bytes: b.requested });
    }

    /// Counts `n` bytes of the message being received towards its progress deadline.
    fn note_payload_progress(&mut self, now: Instant, n: u64) {
        let Some((_, progressed)) = self.payload_deadline else { return };
        let progressed = progressed.saturating_add(n);
        self.payload_deadline = if progressed >= u64::from(self.config.progress_window.max(1)) {
            Some((later(now, self.config.payload_timeout), 0))
        } else {
            self.payload_deadline.map(|(at, _)| (at, progressed))
        };
    }

    fn queue_keepalive(&mut self, stamp: KeepaliveStamp) {
        if self.features.contains(Features::MSGR_KEEPALIVE2) {
            self.ctrl.extend_from_slice(&keepalive2_frame(Tag::KEEPALIVE2, stamp));
        } else {
            self.ctrl.put_u8(Tag::KEEPALIVE.0);
        }
    }

    /// A wall-clock stamp for `now`, extrapolated from the last stamp the driver gave.
    fn stamp_at(&self, now: Instant) -> KeepaliveStamp {
        let (at, base) = self.stamp_anchor;
        let total =
            Duration::new(u64::from(base.sec), base.nsec) + now.saturating_duration_since(at);
        KeepaliveStamp { sec: total.as_secs() as u32, nsec: total.subsec_nanos() }
    }

    // ----- faults -----

    fn fault(&mut self, now: Instant, fault: Fault) {
        if self.state == State::Closed {
            return;
        }
        let was_open = self.state == State::Open;
        log::info!(target: LOG, "{self}: fault: {fault}");
        if !self.lossy {
            self.session.requeue_sent();
        }
        let ctx = FaultContext {
            lossy: self.lossy,
            server: self.policy.server,
            standby: self.policy.standby,
            side: self.side,
            was_open,
            once_ready: self.once_ready,
            has_pending: !self.session.queue.is_empty() || self.keepalive_pending.is_some(),
            wait: fault == Fault::Wait,
            prev_backoff: self.backoff,
            initial_backoff: self.config.initial_backoff,
            max_backoff: self.config.max_backoff,
        };
        let mut action = fault_action(&ctx);
        // A peer that announced port 0 (a pure client) cannot be dialled back.
        if matches!(action, FaultAction::Reconnect { .. }) && self.peer_addr.is_none_or_port0() {
            action = FaultAction::Standby;
        }
        self.reset_transport();
        self.pending_connect = None;
        self.handshake_deadline = None;
        self.keepalive_due = None;
        self.drop_stale_requests();
        let by = if fault == Fault::TransportClosed { Initiator::Peer } else { Initiator::Library };
        log::debug!(target: LOG, "{self}: fault action {action:?}");
        match action {
            FaultAction::Reset => {
                self.session.reset();
                self.events.push_back(Event::Reset);
                self.finish(by, CloseReason::Fault(fault));
            }
            FaultAction::Close => self.finish(by, CloseReason::Fault(fault)),
            FaultAction::Standby => {
                self.set_state(State::Standby);
                self.events.push_back(Event::Standby);
            }
            FaultAction::Reconnect { after } => {
                if was_open {
                    // Ceph bumps connect_seq when reconnecting an open session, so the
                    // acceptor sees a normal reconnect (connect_seq > existing).
                    self.session.connect_seq = self.session.connect_seq.wrapping_add(1);
                }
                self.backoff = after;
                if after.is_zero() {
                    self.start_reconnect(now);
                } else {
                    self.set_state(State::AwaitBackoff { until: later(now, after) });
                }
            }
        }
    }

    fn start_reconnect(&mut self, now: Instant) {
        self.attempt = self.attempt.saturating_add(1);
        self.side = Side::Connect;
        self.handshake_deadline = Some(later(now, self.config.handshake_timeout));
        self.set_state(State::AwaitTransport);
        self.events.push_back(Event::Reconnect { attempt: self.attempt });
    }

    fn wake_from_standby(&mut self) {
        if self.state == State::Standby && !self.policy.server && !self.peer_addr.is_none_or_port0()
        {
            log::debug!(target: LOG, "{self}: waking from standby");
            self.start_reconnect(self.now);
        }
    }

    fn refuse(&mut self, why: &'static str) {
        self.reset_transport();
        self.events.push_back(Event::Refused);
        self.finish(Initiator::Peer, CloseReason::Refused(why));
    }

    /// Forgets everything tied to the current TCP connection.
    fn reset_transport(&mut self) {
        self.rx.clear();
        self.ctrl.clear();
        self.open_rx = OpenRx::Tag;
        self.msg_budget = MsgBudget::default();
        self.payload_deadline = None;
        self.write_blocked_since = None;
        self.decoder.reset();
        self.ack_pending = false;
    }

    /// Requests to the driver about the connection that just failed are moot: a driver
    /// that answered a stale AcceptRequest could hand a session to a dead machine.
    fn drop_stale_requests(&mut self) {
        self.events.retain(|e| {
            !matches!(
                e,
                Event::AcceptRequest(_) | Event::VerifyAuthorizer { .. } | Event::NeedBudget { .. }
            )
        });
    }

    fn finish(&mut self, by: Initiator, reason: CloseReason) {
        self.drop_stale_requests();
        log::debug!(target: LOG, "{self}: closed by {by:?}: {reason}");
        self.set_state(State::Closed);
        self.handshake_deadline = None;
        self.keepalive_due = None;
        self.rx.clear();
        self.events.push_back(Event::Closed { by, reason });
    }

    /// Reports peer misbehaviour: WARN the first time `issue` happens on this
    /// connection, DEBUG afterwards; always counted.
    fn peer_issue(&mut self, issue: PeerIssue, what: fmt::Arguments<'_>) {
        self.peer_issues.0 += 1;
        if self.warned & issue.bit() == 0 {
            self.warned |= issue.bit();
            log::warn!(target: LOG, "{self}: {what}");
        } else {
            self.peer_issues.1 += 1;
            log::debug!(target: LOG, "{self}: {what} (again)");
        }
    }

    fn set_state(&mut self, next: State) {
        if self.state != next {
            log::debug!(target: LOG, "{self}: {} -> {}", self.state.name(), next.name());
            self.state = next;
        }
    }
}

/// `at + d`, or a point far enough out to mean "never" when that overflows `Instant`
/// (a configured `Duration::MAX` must not panic here).
fn later(at: Instant, d: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d).or_else(|| at.checked_add(NEVER)).unwrap_or(at)
}

/// `Option<EntityAddr>` helpers.
trait PeerAddrExt {
    fn is_none_or_port0(&self) -> bool;
}

impl PeerAddrExt for Option<EntityAddr> {
    fn is_none_or_port0(&self) -> bool {
        self.is_none_or(|a| a.port() == 0)
    }
}

impl fmt::Display for Connection {
    /// The log prefix: id, peer, state and `cs/gs/in/out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1#{} ", self.id)?;
        match (self.peer_type, self.peer_addr.and_then(|a| a.addr).or(self.socket_peer)) {
            (Some(t), Some(a)) => write!(f, "{t}@{a}")?,
            (None, Some(a)) => write!(f, "?@{a}")?,
            (Some(t), None) => write!(f, "{t}@?")?,
            (None, None) => f.write_str("?")?,
        }
        write!(
            f,
            " {} cs={} gs={} in={} out={}",
            self.state.name(),
            self.session.connect_seq,
            self.global_seq,
            self.session.in_seq,
            self.session.out_seq
        )
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({self})")
    }
}
