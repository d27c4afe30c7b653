//! The one place the messenger meets the protocol's session machine.
//!
//! [`Machine`] wraps the protocol seam (`protocol::Connection`: msgr v1 or msgr2) with
//! exactly the inputs, commands, outputs and queries the driver uses; [`decide`] turns
//! the protocol's accept decision into what the driver and the session table do with it;
//! [`Replacement`] is a half-open machine on its way to the session it takes over. No
//! other module of this crate names a protocol's machine: the rest take `Policy`,
//! `Event`, `AcceptRequest` and `CounterValues` from here, and never learn which
//! protocol a connection speaks.
//!
//! Which protocol: an accepted socket is served by whichever machine the peer's banner
//! asks for (`ceph v027` or `ceph v2\n`, read before we write ours), so one listening
//! port serves both, as Ceph's two bound ports do together. A dialled connection speaks
//! msgr2 when the address it was given is a `v2:` one (Ceph picks the address of the
//! protocol it prefers from the peer's address vector), msgr v1 otherwise.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::wire::KeepaliveStamp;
use protocol::{
    ConnectSeq, Connection, Decision, ExistingSession, ExistingState, GlobalSeq, GlobalSeqCounter,
    Message, ProtocolVersion, RequestKind, TableEffect,
};

use crate::config::MessengerConfig;
use crate::state::ConnState;

pub(crate) use protocol::session::CounterValues;
pub(crate) use protocol::{AcceptRequest, Event, Policy};

/// The protocol's configuration, shared by every machine of one messenger.
pub(crate) type ProtocolConfig = protocol::Config;

/// Every feature we speak (Pacific's, as a Ceph 16.2 daemon's `CEPH_FEATURES_ALL`):
/// what every [`Policy`] constructor advertises (its `features_supported`; a policy may
/// advertise less to a peer type). The loopback connection reports it as negotiated, as
/// Ceph's local connection reports `CEPH_FEATURES_ALL`.
pub(crate) const FEATURES_SUPPORTED: Features = Features::PACIFIC_ADVERTISED;

/// The protocol's configuration for a messenger named `name`, but for the addresses it
/// announces: none yet (the caller sets them, [`announced_addrs`]). Nothing here needs
/// the address, so it can be built before the address is locked: it reads the OS's
/// entropy (the cookie source's key, a `getrandom` that may block).
pub(crate) fn protocol_config_unaddressed(
    config: &MessengerConfig,
    name: EntityName,
    global_seq: Arc<GlobalSeqCounter>,
) -> ProtocolConfig {
    // The feature bits are the policies' (per peer type): the caller shares the
    // messenger's table as `pc.policies`.
    let mut pc = protocol::Config::new(name, EntityAddrVec::default());
    pc.crc_header = config.crc_header;
    pc.crc_data = config.crc_data;
    pc.handshake_timeout = config.connection_ready_timeout;
    pc.idle_timeout = config.connection_idle_timeout;
    pc.payload_timeout = config.payload_timeout;
    pc.write_timeout = config.write_timeout;
    // A message must progress by one read per payload timeout.
    pc.progress_window = u32::try_from(config.read_buffer).unwrap_or(u32::MAX);
    // The reads are slices of the worker's read buffer: what waits for the rest of a
    // frame is copied out of short ones (`protocol::Config::read_size`).
    pc.read_size = crate::driver::read_chunk(config.read_buffer);
    pc.keepalive_interval = config.keepalive_interval;
    pc.initial_backoff = config.initial_backoff;
    pc.max_backoff = config.max_backoff;
    // The driver ignores `Event::Acked`: the machine trims its sent queue by itself.
    pc.report_acks = false;
    pc.limits.max_front = config.max_front;
    pc.limits.max_middle = config.max_middle;
    pc.limits.max_data = config.max_data;
    pc.global_seq = global_seq;
    if let Some(auth) = &config.auth {
        pc.auth = auth.0.clone();
    }
    pc.auth = config.apply_con_modes(pc.auth.clone(), pc.my_name.ty);
    pc
}

/// The addresses we announce for our address `addr` (what `bind` gave, blank for a pure
/// client): the same socket address as msgr2 and as v1 (one listening socket serves
/// both), each only if `config` binds its protocol (`bind_msgr2`, `bind_msgr1`). msgr v1
/// announces the v1 one (or the first); msgr2 sends the vector (Ceph's order: v2 first)
/// and checks a connector's target against it.
pub(crate) fn announced_addrs(addr: EntityAddr, config: &MessengerConfig) -> EntityAddrVec {
    let v2 = EntityAddr { ty: AddrType::MSGR2, ..addr };
    let v1 = EntityAddr { ty: AddrType::LEGACY, ..addr };
    let addrs = [(config.bind_msgr2, v2), (config.bind_msgr1, v1)]
        .into_iter()
        .filter_map(|(bound, a)| bound.then_some(a))
        .collect();
    EntityAddrVec { addrs }
}

/// One connection's session machine, as the driver drives it. Inputs are `handle_*`,
/// commands change what it will send, outputs are `poll_*`; after any input or command
/// the driver drains [`Machine::poll_event`], writes what [`Machine::poll_transmit`]
/// returns and re-arms its timer from [`Machine::poll_timeout`].
///
/// The flag beside it says the session's snapshot cannot have moved since
/// [`Machine::snapshot_noted`] last built it (see [`Machine::snapshot_unmoved`]).
pub(crate) struct Machine(Connection, bool);

impl Machine {
    /// The connect side towards `addr` (the driver dials, then
    /// [`Machine::handle_transport_connected`]): msgr2 for a `v2:` address, else v1.
    pub(crate) fn connect(
        config: Arc<ProtocolConfig>,
        policy: Policy,
        addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Machine {
        Machine(
            Connection::connect(config, dialled_protocol(&addr), policy, addr, peer_type, now),
            false,
        )
    }

    /// The accept side of a socket just accepted from `peer` on `local`. Serving both
    /// protocols (both are in our announced addresses), it reads the peer's banner,
    /// then runs the machine of the protocol the banner names; serving one, it runs
    /// that protocol's machine in Ceph's order (our banner queued first), which closes
    /// a peer whose banner is the other protocol's.
    pub(crate) fn accept(
        config: Arc<ProtocolConfig>,
        peer: SocketAddr,
        local: SocketAddr,
        now: Instant,
    ) -> Machine {
        let serves = |ty| config.my_addrs.addrs.iter().any(|a| a.ty == ty);
        let c = match (serves(AddrType::LEGACY), serves(AddrType::MSGR2)) {
            (true, false) => Connection::accept_v1(config, peer, local, now),
            (false, true) => Connection::accept_v2(config, peer, local, now),
            _ => Connection::accept(config, peer, local, now),
        };
        Machine(c, false)
    }

    // ----- inputs -----

    #[inline]
    pub(crate) fn handle_transport_connected(&mut self, now: Instant) {
        self.0.handle_transport_connected(now);
    }

    #[inline]
    pub(crate) fn handle_transport_closed(&mut self, now: Instant) {
        self.0.handle_transport_closed(now);
    }

    #[inline]
    pub(crate) fn handle_bytes(&mut self, now: Instant, data: Bytes) {
        self.0.handle_bytes(now, data);
    }

    /// The buffer a large segment is assembled in and how much of it is still missing,
    /// when the next read should go straight there.
    #[inline]
    pub(crate) fn direct_read_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        self.0.direct_read_buffer()
    }

    #[inline]
    pub(crate) fn handle_direct_read(&mut self, now: Instant, n: usize) {
        self.0.handle_direct_read(now, n);
    }

    #[inline]
    pub(crate) fn handle_write_blocked(&mut self, now: Instant) {
        self.0.handle_write_blocked(now);
    }

    #[inline]
    pub(crate) fn handle_write_progress(&mut self, now: Instant) {
        self.0.handle_write_progress(now);
    }

    #[inline]
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }

    /// The dispatchers' verdict on the peer's authorizer.
    pub(crate) fn handle_authorizer_verdict(
        &mut self,
        now: Instant,
        verdict: dispatch::AuthVerdict,
    ) {
        let verdict = match verdict {
            dispatch::AuthVerdict::Accept { reply } => {
                protocol::AuthVerdict::Accept { reply: reply.into() }
            }
            dispatch::AuthVerdict::Reject => protocol::AuthVerdict::Reject,
        };
        self.0.handle_authorizer_verdict(now, verdict);
    }

    /// The accept decision, for every outcome but a hand-over (see [`Replacement`]).
    pub(crate) fn handle_verdict(&mut self, now: Instant, policy: Policy, verdict: Verdict) {
        self.0.handle_accept_decision(now, policy, verdict.decision, None);
    }

    /// See `protocol::Machine::set_progress_floor`.
    pub(crate) fn set_progress_floor(&mut self, now: Instant, bytes: u64) {
        self.0.set_progress_floor(now, bytes);
    }

    /// The budget asked for by `Event::NeedBudget` is granted.
    #[inline]
    pub(crate) fn handle_budget_granted(&mut self, now: Instant) {
        self.0.grant_budget(now);
    }

    /// Receive budget granted ahead (see `protocol::Machine::add_receive_credit`).
    #[inline]
    pub(crate) fn add_receive_credit(&mut self, messages: u32, bytes: u64) {
        self.0.add_receive_credit(messages, bytes);
    }

    /// The receive credit not used yet, taken back.
    #[inline]
    pub(crate) fn take_receive_credit(&mut self) -> (u32, u64) {
        self.0.take_receive_credit()
    }

    // ----- commands -----

    #[inline]
    pub(crate) fn set_clock(&mut self, now: Instant) {
        self.0.set_clock(now);
    }

    #[inline]
    pub(crate) fn send_messages(&mut self, msgs: impl IntoIterator<Item = Message>) {
        self.0.send_messages(msgs);
    }

    #[inline]
    pub(crate) fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        self.0.send_keepalive(wall_clock);
    }

    #[inline]
    pub(crate) fn anchor_wall_clock(&mut self, wall_clock: KeepaliveStamp) {
        self.0.anchor_wall_clock(wall_clock);
    }

    /// Ceph's `mark_disposable`: the session becomes lossy.
    pub(crate) fn mark_lossy(&mut self) {
        // The snapshot's `lossy` moves with no event, the session staying open.
        self.1 = false;
        self.0.mark_lossy();
    }

    // ----- outputs -----

    #[inline]
    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        self.0.poll_transmit(out)
    }

    #[inline]
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        let ev = self.0.poll_event();
        // Any event but the open session's traffic may come with moved numbers (an
        // open, a fault's redial, a reset): the next snapshot is built again. (Looked at
        // in place: the event is not moved out and back.)
        if !matches!(
            ev,
            None | Some(
                Event::Message(_)
                    | Event::NeedBudget { .. }
                    | Event::Acked { .. }
                    | Event::KeepaliveReceived
                    | Event::KeepaliveAck(_)
            )
        ) {
            self.1 = false;
        }
        ev
    }

    /// The next event if it is a received message (see `Connection::poll_message`).
    #[inline]
    pub(crate) fn poll_message(&mut self) -> Option<Message> {
        self.0.poll_message()
    }

    #[inline]
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }

    /// Peer misbehaviour since the last call: `(issues, not logged at WARN)`.
    #[inline]
    pub(crate) fn poll_peer_issues(&mut self) -> (u64, u64) {
        self.0.poll_peer_issues()
    }

    // ----- queries -----

    /// The protocol, once known (an accepted socket's is known from the peer's banner).
    #[inline]
    pub(crate) fn protocol(&self) -> Option<ProtocolVersion> {
        self.0.protocol()
    }

    /// msgr2's connection mode (`None` for v1).
    #[inline]
    pub(crate) fn con_mode(&self) -> Option<protocol::auth::ConMode> {
        self.0.con_mode()
    }

    /// Accept side: who the peer authenticated as.
    #[inline]
    pub(crate) fn peer_auth(&self) -> Option<&protocol::auth::AuthPeer> {
        self.0.peer_auth()
    }

    /// msgr2: the addresses and the entity number (gid) the peer's ident named (`None`
    /// for v1, whose handshake names no entity, or before an ident).
    pub(crate) fn peer_ident(&self) -> Option<(protocol::types::EntityAddrVec, i64)> {
        let v2 = self.0.as_v2()?;
        let name = v2.peer_name()?;
        Some((v2.peer_addrs().clone(), name.num))
    }

    #[inline]
    pub(crate) fn has_events(&self) -> bool {
        self.0.has_events()
    }

    #[inline]
    pub(crate) fn wants_read(&self) -> bool {
        self.0.wants_read()
    }

    /// Whether `poll_transmit` has something to frame (queued messages, an ack, a
    /// keepalive, handshake bytes).
    #[inline]
    pub(crate) fn wants_write(&self) -> bool {
        self.0.wants_write()
    }

    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_open()
    }

    /// The machine is finished (no more events after its `Closed`).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// The session is waiting out its reconnect backoff after a fault: any socket the
    /// driver still holds is one the fault left behind.
    #[inline]
    pub(crate) fn is_backing_off(&self) -> bool {
        self.0.is_backing_off()
    }

    #[inline]
    pub(crate) fn is_lossy(&self) -> bool {
        self.0.is_lossy()
    }

    /// What the messages this machine holds for sending cost (the send bounds count it).
    #[inline]
    pub(crate) fn send_held_cost(&self) -> u64 {
        self.0.send_held_cost()
    }

    /// The part of it sent but not yet acknowledged.
    #[inline]
    pub(crate) fn sent_held_cost(&self) -> u64 {
        self.0.sent_held_cost()
    }

    /// Messages queued or sent-but-unacked.
    #[inline]
    pub(crate) fn pending_messages(&self) -> usize {
        self.0.pending_messages()
    }

    /// Messages framed so far, each once (a resend after a reconnect is not counted again).
    #[inline]
    pub(crate) fn messages_sent(&self) -> u64 {
        self.0.messages_sent()
    }

    /// Open and between frames: nothing of the next one read yet, no budget awaited.
    #[inline]
    pub(crate) fn between_messages(&self) -> bool {
        self.0.between_messages()
    }

    /// A message is being received (its budget is held meanwhile).
    #[inline]
    pub(crate) fn message_in_progress(&self) -> bool {
        self.0.message_in_progress()
    }

    /// The payload length of the message being received (0 between messages).
    pub(crate) fn receiving_len(&self) -> u64 {
        self.0.receiving_len()
    }

    /// Bytes held for the message being received.
    #[inline]
    pub(crate) fn receive_held_bytes(&self) -> usize {
        self.0.receive_held_bytes()
    }

    /// What another connection's accept decision needs to know of this session, under
    /// the messenger's `policy` for it.
    #[inline]
    pub(crate) fn snapshot(&self, policy: Option<&Policy>) -> SessionSnapshot {
        let seqs = self.0.seqs();
        let cookies = self.0.cookies();
        SessionSnapshot {
            connect_seq: seqs.connect_seq,
            peer_global_seq: seqs.peer_global_seq,
            client_cookie: cookies.client,
            server_cookie: cookies.server,
            // As the machine has it: a connector takes it from the acceptor's reply, as
            // Ceph's `client_ready` (and msgr2's `handle_server_ident`) sets the
            // `policy.lossy` an accept decision reads as `existing->policy.lossy`.
            lossy: policy.is_some() && self.0.is_lossy(),
            server_policy: policy.is_some_and(|p| p.server),
            protocol: self.0.protocol(),
        }
    }

    /// Whether the session's snapshot cannot have moved since [`Self::snapshot_noted`]
    /// last built it: the session stayed open and no event but its traffic (messages,
    /// budget, acks, keepalives) was taken since, nor a [`Self::mark_lossy`] made. The
    /// protocol moves the numbers only while no session is open (the handshake, which
    /// ends in `Event::Opened`; a fault, which leaves it closed, standing by or
    /// reconnecting, and its redial needs `Event::Reconnect`), and the messenger's
    /// `policy` for an open session changes only with a new machine (a replace).
    #[inline]
    pub(crate) fn snapshot_unmoved(&self) -> bool {
        self.1 && self.0.is_open()
    }

    /// [`Self::snapshot`], noted for [`Self::snapshot_unmoved`]: the caller keeps it
    /// as what it last published.
    pub(crate) fn snapshot_noted(&mut self, policy: Option<&Policy>) -> SessionSnapshot {
        self.1 = self.0.is_open();
        self.snapshot(policy)
    }

    /// [`Self::snapshot_unmoved`] is false until the next [`Self::snapshot_noted`]
    /// (what the caller compares with was set from elsewhere).
    pub(crate) fn forget_snapshot(&mut self) {
        self.1 = false;
    }

    /// What this accepting connection's session will publish once `req` opens it under
    /// `policy` (a new session: no existing one is moved in): the peer's global_seq, the
    /// cookies (the client's, and the server cookie SERVER_IDENT will carry), and v1's
    /// next connect_seq. Ceph's newcomer holds these before `accept_conn` registers it;
    /// the session table publishes them with the registration, so a stale connect from
    /// the peer decided before this connection's reply is framed is found stale.
    pub(crate) fn snapshot_on_open(&self, req: &AcceptRequest, policy: &Policy) -> SessionSnapshot {
        let mut snap = self.snapshot(Some(policy));
        // (The machine takes the policy with the decision, after this.)
        snap.lossy = policy.lossy;
        snap.peer_global_seq = req.global_seq();
        match req.kind {
            RequestKind::Connect { connect_seq, .. } => snap.connect_seq = connect_seq.next_v1(),
            RequestKind::Ident { client_cookie, .. } => {
                snap.client_cookie = client_cookie;
                snap.server_cookie = if policy.lossy { 0 } else { self.0.offered_server_cookie() };
            }
            // A reconnect resumes an existing session and registers nothing.
            RequestKind::Reconnect { .. } => {}
        }
        snap
    }
}

impl fmt::Display for Machine {
    /// The machine's log prefix (id, peer, state, seqs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The protocol counters of every machine of a messenger (connect attempts, WAIT and
/// RETRY rounds, duplicates dropped).
pub(crate) fn counter_values(config: &ProtocolConfig) -> CounterValues {
    config.counters.values()
}

/// The protocol a connection dialling `addr` speaks: msgr2 for a `v2:` address, else v1.
fn dialled_protocol(addr: &EntityAddr) -> ProtocolVersion {
    if addr.ty == AddrType::MSGR2 {
        ProtocolVersion::V2
    } else {
        ProtocolVersion::V1
    }
}

/// What another connection's accept decision needs to know of a session (Ceph reads
/// these from `existing` under its lock); published by the session's driver whenever
/// they change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionSnapshot {
    connect_seq: ConnectSeq,
    peer_global_seq: GlobalSeq,
    /// msgr2's session cookies (0 for v1): a reconnect must name them.
    client_cookie: u64,
    server_cookie: u64,
    lossy: bool,
    /// The session's policy is a server one (Ceph's `existing->policy.server`, which
    /// wins a connection race against it for the incoming side): the policy, not
    /// whether the connection was accepted, so a race between two lossless peers is
    /// decided by their addresses alone, the same way on both sides.
    server_policy: bool,
    /// The protocol the session speaks: a connect of the other one never decides
    /// against it (Ceph marks it down instead).
    protocol: Option<ProtocolVersion>,
}

impl SessionSnapshot {
    /// The snapshot of a session we dial at `addr`, before its driver publishes one.
    pub(crate) fn dialling(addr: &EntityAddr) -> SessionSnapshot {
        SessionSnapshot { protocol: Some(dialled_protocol(addr)), ..SessionSnapshot::default() }
    }

    /// The protocol the session speaks, if known.
    pub(crate) fn protocol(&self) -> Option<ProtocolVersion> {
        self.protocol
    }

    /// The snapshot of a session whose handle was marked disposable (`disposable`): lossy
    /// from the mark on, whatever its driver last published.
    pub(crate) fn marked(self, disposable: bool) -> SessionSnapshot {
        SessionSnapshot { lossy: self.lossy || disposable, ..self }
    }
}

/// The existing session an accept decision is taken against, as the session table
/// shows it: its state, what its driver last published, and whether another connect is
/// already replacing it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Existing {
    pub(crate) state: ConnState,
    pub(crate) session: SessionSnapshot,
    pub(crate) replacing: bool,
    /// The deciding connection's peer is another entity than the existing session's:
    /// it authenticated as another name, or as none where the session's peer proved
    /// one, or (a session with no name, e.g. one we dialled) as another type than the
    /// session's peer (`session_table::foreign`).
    pub(crate) foreign: bool,
}

/// What the accepting driver does once the decision is taken (the session table's side
/// was applied inside the decision, see `SessionTable::decide_accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptAction {
    /// Lossless replace: this socket and machine go to the existing session's driver,
    /// which adopts them (the table marked that session `replacing`).
    HandOver,
    /// The existing (lossy) session is reset; this connection becomes the session (the
    /// table registered it).
    ResetExisting,
    /// The peer must wait for our own connection to it: nudge that one with a
    /// keepalive so its handshake completes.
    NudgeExisting,
    /// This connection opens without being registered under the peer's address (a
    /// stateless server's connect from another entity than the session there).
    OpenUnregistered,
    /// This connection opens (`register`: the table registered it) or answers with a
    /// retry or reset reply.
    Proceed {
        /// The connection opens: the table now points at it and its policy is set.
        register: bool,
    },
}

/// The accept decision: the protocol's answer (given back to the machine) and what the
/// messenger does about it.
#[derive(Debug)]
pub(crate) struct Verdict {
    decision: Decision,
    /// What the accepting driver does.
    pub(crate) action: AcceptAction,
}

/// Decides a peer's connect (v1) or ident / reconnect (msgr2) against the session the
/// table holds for it (the protocol's race and reset rules, Ceph's
/// `handle_connect_message_2` and `handle_existing_connection`); `my_addrs` are ours
/// ([`announced_addrs`]). Pure: the session table runs it inside its one critical
/// section.
pub(crate) fn decide(
    req: &AcceptRequest,
    existing: Option<&Existing>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Verdict {
    if existing.is_some_and(|e| e.foreign) {
        if policy.lossy && policy.server {
            // A stateless server resets a client's older session when the client
            // connects again (Ceph's registered one), but this peer authenticated as
            // another entity: it must not end that entity's session. This one opens,
            // and the address stays the existing session's.
            return Verdict { decision: Decision::Open, action: AcceptAction::OpenUnregistered };
        }
        // Whatever the protocol's rules would say: resuming, replacing or resetting the
        // session of an entity the peer did not authenticate as would hand that
        // entity's messages to it, or cut that entity off.
        return Verdict {
            decision: Decision::Refuse,
            action: AcceptAction::Proceed { register: false },
        };
    }
    let view = existing.map(|e| ExistingSession {
        state: match e.state {
            ConnState::Open => ExistingState::Open,
            ConnState::Standby => ExistingState::Standby,
            ConnState::Connecting => ExistingState::Connecting,
            ConnState::Closed => ExistingState::Closed,
        },
        connect_seq: e.session.connect_seq,
        peer_global_seq: e.session.peer_global_seq,
        client_cookie: e.session.client_cookie,
        server_cookie: e.session.server_cookie,
        lossy: e.session.lossy,
        server_side: e.session.server_policy,
        replacing: e.replacing,
    });
    let decision = protocol::decide(req, view.as_ref(), policy, my_addrs);
    let action = match decision.table_effect(&req.kind, view.as_ref()) {
        TableEffect::Replace => AcceptAction::HandOver,
        TableEffect::ResetExisting => AcceptAction::ResetExisting,
        TableEffect::NudgeExisting => AcceptAction::NudgeExisting,
        TableEffect::Register => AcceptAction::Proceed { register: true },
        TableEffect::Nothing => AcceptAction::Proceed { register: false },
    };
    Verdict { decision, action }
}

/// An accepted machine whose connect was decided "replace": it travels (with its socket)
/// to the existing session's driver, which moves its session into it (Ceph's replace).
pub(crate) struct Replacement {
    machine: Machine,
    policy: Policy,
    decision: Decision,
    /// The existing session as the decision read it (its driver's last published
    /// snapshot and state).
    decided_against: Existing,
    /// The connect decided, and our addresses as the decision compared them: to decide
    /// it again against the session's numbers at the hand-off (see
    /// [`Replacement::still_holds`]).
    req: AcceptRequest,
    my_addrs: EntityAddrVec,
}

impl Replacement {
    /// The accepting machine, to be adopted under `policy` as `verdict` says; `existing`
    /// is the session the decision was taken against, for the peer's `req`, with our
    /// addresses `my_addrs`.
    pub(crate) fn new(
        machine: Machine,
        policy: Policy,
        verdict: Verdict,
        existing: &Existing,
        req: AcceptRequest,
        my_addrs: EntityAddrVec,
    ) -> Replacement {
        Replacement {
            machine,
            policy,
            decision: verdict.decision,
            decided_against: *existing,
            req,
            my_addrs,
        }
    }

    /// The policy the session continues under.
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Whether the decision still holds for the existing session, whose numbers are now
    /// `now` (marked as the decision's view was, see `SessionTable::decide_accept`) and
    /// whose machine is open (`open`) or not.
    ///
    /// The decision read what the session's driver last published. The driver's pump
    /// loads the replace mark once, before it reads: one that loaded it before the
    /// decision set it reads on, and what it reads (our connect answered: the session
    /// opens, its numbers published at the open, its messages delivered) moves the
    /// session under the decision. Taken against a session still connecting, a race's
    /// replace then renumbered one that had opened and delivered. Ceph's lock on
    /// `existing` allows no change between its decision and `reuse_connection`. Here
    /// the decision holds if the session's numbers did not move, or if the one change
    /// is the client cookie a session connecting then, and still not open, drew for its
    /// own CLIENT_IDENT since (its cookie was 0), and the same connect decided again
    /// against the numbers now gets the same decision: with no server cookie the race
    /// rules decide it the same either way, and voided, the peer paid one more
    /// reconnect for nothing (a third of the voids in `connect_race_rounds`). Any other
    /// change voids it (a redial after a fault, an open, a reset), whatever a decision
    /// taken now would say: the state the decision read may since have moved in ways
    /// its snapshot does not show.
    pub(crate) fn still_holds(&self, now: SessionSnapshot, open: bool) -> bool {
        let then = &self.decided_against;
        if then.session == now {
            return true;
        }
        let only_drew_a_cookie = then.session.client_cookie == 0
            && SessionSnapshot { client_cookie: now.client_cookie, ..then.session } == now;
        if !only_drew_a_cookie || open || then.state != ConnState::Connecting {
            return false;
        }
        // Not being replaced but by this decision (which saw no mark), as then.
        let current = Existing { session: now, replacing: false, ..*then };
        let again = decide(&self.req, Some(&current), &self.policy, &self.my_addrs);
        again.action == AcceptAction::HandOver && again.decision == self.decision
    }

    /// The existing session as the decision read it (for the log of a void).
    pub(crate) fn decided_against(&self) -> &Existing {
        &self.decided_against
    }

    /// Moves `old`'s session (seqs, queued and unacknowledged messages) into the new
    /// machine and answers its connect; `old` is closed without further events. Returns
    /// the machine that carries the session from now on.
    pub(crate) fn adopt(self, old: &mut Machine, now: Instant) -> Machine {
        let Replacement { mut machine, policy, decision, .. } = self;
        // Whatever the old socket's machine raised was handled first: a message it
        // completed is counted in the session's in_seq and would be lost with it.
        debug_assert!(!old.has_events(), "{old}: events left at a hand-off");
        let session = old.0.take_session();
        machine.0.handle_accept_decision(now, policy, decision, session);
        machine.0.adopt_keepalive(&mut old.0);
        // The session's numbers moved in: whatever it noted before is not theirs.
        machine.forget_snapshot();
        machine
    }
}

impl Machine {
    /// [`protocol::Machine::send_message_vec`]: the driver's own sends, handed over as a
    /// buffer where they can be.
    #[inline]
    pub(crate) fn send_message_vec(
        &mut self,
        msgs: &mut Vec<Message>,
        prepare: impl FnMut(&mut Message),
    ) {
        self.0.send_message_vec(msgs, prepare);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use protocol::GlobalSeq;

    use super::*;

    fn v2(port: u16) -> EntityAddrVec {
        EntityAddrVec::single(EntityAddr {
            ty: AddrType::MSGR2,
            nonce: 7,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        })
    }

    /// A replace decided for a peer's CLIENT_IDENT (cookie 0xC, global_seq 50) against
    /// our session connecting to it as `then` shows it: a race the peer wins (our
    /// address sorts above its own).
    fn decided(then: SessionSnapshot) -> Replacement {
        let socket = SocketAddr::from(([127, 0, 0, 1], 40000));
        let req = AcceptRequest {
            peer_addr: protocol::v2::race::msgr2_addr(&v2(6800)),
            peer_type: EntityType::OSD,
            socket_peer: socket,
            kind: RequestKind::Ident {
                peer_addrs: v2(6800),
                global_seq: GlobalSeq(50),
                client_cookie: 0xC,
                features: Features::PACIFIC_ADVERTISED,
                gid: 1,
                lossy: false,
            },
        };
        let existing = Existing {
            state: ConnState::Connecting,
            session: then,
            replacing: false,
            foreign: false,
        };
        let (policy, me) = (Policy::lossless_peer(), v2(6801));
        let verdict = decide(&req, Some(&existing), &policy, &me);
        assert_eq!(verdict.action, AcceptAction::HandOver, "{verdict:?}");
        let config =
            Arc::new(protocol::Config::new(EntityName::new(EntityType::OSD, 0), me.clone()));
        let machine = Machine::accept(config, socket, socket, Instant::now());
        Replacement::new(machine, policy, verdict, &existing, req, me)
    }

    /// One side of a session as a driver runs it, for the snapshot's test: what it
    /// published last, and how many looks found nothing to build.
    struct Side {
        machine: Machine,
        policy: Option<Policy>,
        published: Option<SessionSnapshot>,
        skipped: usize,
        /// Looks only after taking events, and only at an open session: what may have
        /// moved is then known from the events alone.
        blind: bool,
    }

    impl Side {
        /// The driver's look at the snapshot (`Driver::publish_snapshot`): a look that
        /// builds nothing must find the numbers as published.
        fn look(&mut self, step: &str) {
            if !self.blind {
                self.look_now(step);
            }
        }

        fn look_now(&mut self, step: &str) {
            if self.machine.snapshot_unmoved() {
                self.skipped += 1;
                let now = self.machine.snapshot(self.policy.as_ref());
                assert_eq!(self.published, Some(now), "{step}: moved without a rebuild");
            } else {
                self.published = Some(self.machine.snapshot_noted(self.policy.as_ref()));
            }
        }

        /// Takes the machine's events as the driver does (an accept decision against no
        /// existing session, auth none), looking at the snapshot after each.
        fn events(&mut self, now: Instant, my_addrs: &EntityAddrVec, step: &str) -> usize {
            let mut messages = 0;
            while let Some(ev) = self.machine.poll_event() {
                match ev {
                    Event::AcceptRequest(req) => {
                        let policy = Policy::lossless_peer();
                        self.policy = Some(policy);
                        let verdict = decide(&req, None, &policy, my_addrs);
                        self.machine.handle_verdict(now, policy, verdict);
                    }
                    Event::VerifyAuthorizer { .. } => {
                        let accept = dispatch::AuthVerdict::Accept { reply: Vec::new() };
                        self.machine.handle_authorizer_verdict(now, accept);
                    }
                    Event::NeedBudget { .. } => self.machine.handle_budget_granted(now),
                    Event::Message(_) => messages += 1,
                    _ => {}
                }
                if !self.blind || self.machine.is_open() {
                    self.look_now(step);
                }
            }
            messages
        }
    }

    /// One side's turn: its events, then what it sends handed to the other. Returns
    /// whether it sent anything and the messages the other received.
    fn turn(from: &mut Side, to: &mut Side, now: Instant, step: &str) -> (bool, usize) {
        let addrs = v2(6800);
        from.events(now, &addrs, step);
        from.look(step);
        let mut out = Vec::new();
        from.machine.poll_transmit(&mut out);
        from.look(step);
        let mut moved = false;
        for bytes in out.into_iter().filter(|b| !b.is_empty()) {
            moved = true;
            to.machine.handle_bytes(now, bytes);
            to.look(step);
        }
        (moved, to.events(now, &addrs, step))
    }

    /// Runs both sides until neither has bytes for the other; returns the messages the
    /// server received.
    fn exchange(client: &mut Side, server: &mut Side, now: Instant, step: &str) -> usize {
        let mut messages = 0;
        for _ in 0..64 {
            let (sent, got) = turn(client, server, now, step);
            messages += got;
            let (answered, _) = turn(server, client, now, step);
            if !sent && !answered {
                return messages;
            }
        }
        panic!("{step}: the sides never settled");
    }

    /// The snapshot is built again whenever its numbers may have moved, for either
    /// protocol: at the handshake (seqs, cookies, policy), a mark of lossy on an open
    /// session (no event), a fault (the connector's connect_seq); an open session
    /// carrying messages is not looked at again. Missing the mark of lossy (not
    /// clearing the flag) or a fault that left the session (no check of `is_open`)
    /// fails with "moved without a rebuild".
    #[test]
    fn the_snapshot_is_rebuilt_whenever_its_numbers_may_have_moved() {
        for ty in [AddrType::LEGACY, AddrType::MSGR2] {
            let now = Instant::now();
            let addrs = |port| {
                EntityAddrVec::single(EntityAddr {
                    ty,
                    nonce: 7,
                    addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
                })
            };
            let (server_addrs, client_addrs) = (addrs(6800), addrs(6801));
            let config = |me: EntityAddrVec, num| {
                Arc::new(protocol::Config::new(EntityName::new(EntityType::OSD, num), me))
            };
            let target = server_addrs.addrs[0];
            let socket = SocketAddr::from(([127, 0, 0, 1], 40000));
            let policy = Policy::lossless_peer();
            let mut client = Side {
                machine: Machine::connect(
                    config(client_addrs, 1),
                    policy,
                    target,
                    EntityType::OSD,
                    now,
                ),
                policy: Some(policy),
                published: None,
                skipped: 0,
                blind: false,
            };
            let mut server = Side {
                machine: Machine::accept(config(server_addrs, 0), socket, socket, now),
                policy: None,
                published: None,
                skipped: 0,
                blind: false,
            };
            client.look("start");
            server.look("start");
            client.machine.handle_transport_connected(now);
            client.look("connected");
            exchange(&mut client, &mut server, now, "handshake");
            assert!(client.machine.is_open() && server.machine.is_open(), "{ty:?}: not open");
            assert_ne!(client.published.map(|s| s.peer_global_seq), Some(GlobalSeq(0)));
            let skipped = client.skipped + server.skipped;
            for i in 0..5 {
                client.machine.send_messages([Message::new(0x7f00, Bytes::from_static(b"x"))]);
                client.look("send");
                assert_eq!(exchange(&mut client, &mut server, now, "traffic"), 1, "message {i}");
            }
            assert!(client.skipped + server.skipped > skipped + 10, "{ty:?}: traffic rebuilt it");
            // Lossy with no event, the session open.
            server.machine.mark_lossy();
            let before = server.published;
            server.look("mark_lossy");
            assert_ne!(server.published, before, "{ty:?}: marked lossy, not published");
            // A fault of the session marked lossy resets it (its numbers cleared), the
            // events not taken yet: seen by the state left open.
            let before = server.published;
            server.machine.handle_transport_closed(now);
            server.look("fault");
            assert_ne!(server.published, before, "{ty:?}: the reset session, not published");
            // The client's fault and redial with no look until its events (a driver
            // that looks only after taking them): the open is among them.
            client.blind = true;
            client.machine.handle_transport_closed(now);
            let later = now + std::time::Duration::from_secs(30);
            client.machine.handle_timeout(later);
            // In standby until it has something to send: a message wakes it.
            client.machine.send_messages([Message::new(0x7f00, Bytes::from_static(b"y"))]);
            client.events(later, &v2(6801), "redial");
            // A restarted peer further on in its global_seq: the numbers move.
            let restarted = config(addrs(6800), 0);
            restarted.global_seq.next();
            restarted.global_seq.next();
            let mut server = Side {
                machine: Machine::accept(restarted, socket, socket, later),
                policy: None,
                published: None,
                skipped: 0,
                blind: false,
            };
            client.machine.handle_transport_connected(later);
            let before = client.published;
            exchange(&mut client, &mut server, later, "reconnect");
            assert!(
                client.machine.is_open(),
                "{ty:?}: not open again: {} / {}",
                client.machine,
                server.machine
            );
            assert_ne!(client.published, before, "{ty:?}: the new session, not published");
        }
    }

    /// The decision holds against a session that only drew its client cookie for its
    /// own CLIENT_IDENT since (no server cookie: the race decides it either way), and is
    /// void against one that opened, learned a server cookie, or saw a newer connect of
    /// the peer. It was void against any change: the peer reconnected once more for
    /// nothing.
    #[test]
    fn a_replace_holds_against_a_client_cookie_drawn_after_it_and_no_other_change() {
        let then = SessionSnapshot {
            connect_seq: ConnectSeq(0),
            peer_global_seq: GlobalSeq(0),
            client_cookie: 0,
            server_cookie: 0,
            lossy: false,
            server_policy: false,
            protocol: Some(ProtocolVersion::V2),
        };
        let r = decided(then);
        assert!(r.still_holds(then, false), "unchanged");
        let cookie = SessionSnapshot { client_cookie: 0xABC, ..then };
        assert!(r.still_holds(cookie, false), "only the client cookie drawn for our own ident");
        assert!(!r.still_holds(cookie, true), "the session opened");
        let served =
            SessionSnapshot { server_cookie: 0xDEF, peer_global_seq: GlobalSeq(40), ..cookie };
        assert!(!r.still_holds(served, true), "the session opened on SERVER_IDENT");
        assert!(!r.still_holds(served, false), "a server cookie: the peer restarted, not a race");
        let newer = SessionSnapshot { peer_global_seq: GlobalSeq(60), ..cookie };
        assert!(!r.still_holds(newer, false), "the peer's ident is older than its session now");
        let lossy = SessionSnapshot { lossy: true, ..cookie };
        assert!(!r.still_holds(lossy, false), "marked disposable: reset, not kept");
    }
}
