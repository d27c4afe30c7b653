//! [`Machine`]: one TCP connection attempt / session as a pure state machine, the same
//! for both protocols; the protocol ([`Protocol`]) fills in its handshake, the open
//! session's reading and framing.
//!
//! # Driving a machine (quinn-proto style)
//!
//! * **Inputs** (`handle_*`): [`Machine::handle_transport_connected`] (connect side,
//!   once the TCP connect completes), [`Machine::handle_bytes`] (only while
//!   [`Machine::wants_read`]), the direct-read pair [`Machine::direct_read_buffer`] /
//!   [`Machine::handle_direct_read`], [`Machine::handle_transport_closed`],
//!   [`Machine::handle_write_blocked`] / [`Machine::handle_write_progress`],
//!   [`Machine::handle_timeout`], [`Machine::handle_accept_decision`],
//!   [`Machine::handle_authorizer_verdict`], [`Machine::grant_budget`].
//! * **Commands**: [`Machine::send_message`], [`Machine::send_keepalive`],
//!   [`Machine::close`], [`Machine::take_session`], [`Machine::mark_lossy`].
//! * **Outputs**, after every input or command, in this order: drain
//!   [`Machine::poll_event`], write what [`Machine::poll_transmit`] returns (until it
//!   returns 0 or the socket is full), re-arm the one timer at
//!   [`Machine::poll_timeout`], and derive read interest from [`Machine::wants_read`].
//! * Time never goes backwards between calls; a spurious [`Machine::handle_timeout`]
//!   does nothing.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::types::{EntityAddr, EntityType};
use crate::wire::KeepaliveStamp;

use super::config::Config;
use super::event::{AuthVerdict, CloseReason, Event, Initiator};
use super::fault::{Fault, Side};
use super::lifecycle::PeerIssues;
use super::policy::Policy;
use super::protocol::Protocol;
use super::race::Decision;
use super::rx::RxBuf;
use super::seq::{GlobalSeq, Seq};
use super::state::State;
use super::timers::{later, Keepalive};
use super::Session;

/// Source of the connection ids shown in the `Display` prefix.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Input steps one call may take. Each step consumes input or changes state, or
/// returns false; the bound only guards against a bug turning into a hang.
const INPUT_STEPS_BOUND: usize = 1_000_000;

/// One connection attempt / session of a protocol `P` (connect or accept side), as a
/// pure state machine: fed bytes and `now`, it hands back bytes to write, [`Event`]s
/// and its next deadline (see the module docs for the call order).
pub struct Machine<P: Protocol> {
    /// Process-unique id for logs.
    pub(crate) id: u64,
    pub(crate) config: Arc<Config>,
    pub(crate) state: State<P::Handshake, P::OpenRx>,
    /// The name of the state last entered through [`Machine::set_state`] (logs read it:
    /// a step taken out to be consumed, [`Machine::take_step`], still shows as itself).
    label: &'static str,
    /// The role of the current TCP connection (an accepted lossless session that
    /// reconnects becomes a connect side).
    pub(crate) side: Side,
    /// The policy for the peer's type; on the accept side the default until the
    /// messenger's decision brings the real one.
    pub(crate) policy: Policy,
    /// The session turned out lossy (our policy, or the acceptor's LOSSY flag).
    pub(crate) lossy: bool,
    /// Connect side: the address dialled. Accept side: the address the peer announced
    /// (v1, after the blank-IP fix-up), or its v2 address from its ident if it has one
    /// we could dial back.
    pub(crate) peer_addr: Option<EntityAddr>,
    pub(crate) peer_type: Option<EntityType>,
    pub(crate) socket_peer: Option<SocketAddr>,
    pub(crate) session: Session,
    /// Our global_seq of the current connect attempt.
    pub(crate) global_seq: GlobalSeq,
    /// The session has been open on some connection of this machine (Ceph's
    /// `once_ready`).
    pub(crate) once_ready: bool,
    /// Backoff used for the last attempt (zero after a successful open).
    pub(crate) backoff: Duration,
    /// Reconnect attempts since the last open.
    pub(crate) attempt: u32,
    /// Received bytes not yet consumed.
    pub(crate) rx: RxBuf,
    /// Control bytes to send, in order (handshake, ACKs, keepalives, CLOSE).
    pub(crate) ctrl: BytesMut,
    pub(crate) events: VecDeque<Event>,
    /// The latest `now` seen (commands without a `now` use it).
    pub(crate) now: Instant,
    /// Last time bytes arrived (idle timeout).
    pub(crate) last_rx: Instant,
    /// Since when bytes have waited that the socket would not take.
    pub(crate) write_blocked_since: Option<Instant>,
    pub(crate) keepalive: Keepalive,
    /// Messages framed so far (resends included).
    pub(crate) messages_sent: u64,
    /// Messages dropped as duplicates (`seq <= in_seq`).
    pub(crate) duplicates_dropped: u64,
    /// A frame could not be encoded (msgr2 secure mode out of nonces): the connection
    /// faults before it reads or writes anything more.
    pub(crate) deferred_fault: Option<Fault>,
    pub(crate) issues: PeerIssues,
    /// The protocol's per-connection data.
    pub(crate) proto: P,
}

impl<P: Protocol> Machine<P> {
    /// A machine in `state`, before any protocol specifics.
    pub(crate) fn new(
        config: Arc<Config>,
        side: Side,
        policy: Policy,
        state: State<P::Handshake, P::OpenRx>,
        proto: P,
        now: Instant,
    ) -> Self {
        let label = state_name::<P>(&state);
        Machine {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            config,
            label,
            state,
            side,
            lossy: policy.lossy,
            policy,
            peer_addr: None,
            peer_type: None,
            socket_peer: None,
            session: Session::default(),
            global_seq: GlobalSeq::default(),
            once_ready: false,
            backoff: Duration::ZERO,
            attempt: 0,
            rx: RxBuf::default(),
            ctrl: BytesMut::new(),
            events: VecDeque::new(),
            now,
            last_rx: now,
            write_blocked_since: None,
            keepalive: Keepalive::new(now),
            messages_sent: 0,
            duplicates_dropped: 0,
            deferred_fault: None,
            issues: PeerIssues::default(),
            proto,
        }
    }

    /// The handshake deadline for an attempt starting at `now`.
    pub(crate) fn handshake_deadline(&self, now: Instant) -> Instant {
        later(now, self.config.handshake_timeout)
    }

    // ----- inputs -----

    /// The dialled socket is connected (first attempt or after [`Event::Reconnect`]):
    /// the handshake starts.
    #[doc(alias = "reconnect_transport")]
    #[doc(alias = "start_client_banner_exchange")]
    pub fn handle_transport_connected(&mut self, now: Instant) {
        self.now = now;
        if !matches!(self.state, State::AwaitTransport { .. }) {
            log::warn!(target: P::LOG, "{self}: transport connected in state {}", self.state_name());
            return;
        }
        self.side = Side::Connect;
        self.reset_transport();
        self.global_seq = self.config.global_seq.next();
        self.last_rx = now;
        let step = P::start_handshake(self);
        self.set_state(State::Handshake { deadline: self.handshake_deadline(now), step });
    }

    /// Bytes from the socket, in any chunking. Call only while [`Machine::wants_read`];
    /// payloads are sliced out of `data` without copying.
    pub fn handle_bytes(&mut self, now: Instant, data: Bytes) {
        self.now = now;
        if self.state.is_closed() || data.is_empty() {
            return;
        }
        log::trace!(target: P::LOG, "{self}: {} bytes in", data.len());
        self.last_rx = now;
        self.rx.push(data);
        self.process(now);
    }

    /// While a large message segment arrives in pieces, the buffer it is assembled in
    /// and how many more bytes it needs: the driver may read at most that many bytes
    /// into its spare capacity, then call [`Machine::handle_direct_read`]. `None`
    /// whenever bytes must go through [`Machine::handle_bytes`] (always for msgr2).
    pub fn direct_read_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        if !self.state.is_open() || self.rx.len() > 0 {
            return None;
        }
        P::direct_read_buffer(self)
    }

    /// `n` bytes were read into [`Machine::direct_read_buffer`].
    pub fn handle_direct_read(&mut self, now: Instant, n: usize) {
        self.now = now;
        if self.state.is_closed() || n == 0 {
            return;
        }
        log::trace!(target: P::LOG, "{self}: {n} bytes in (direct)");
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
    /// If that lasts `Config::write_timeout` with no [`Machine::handle_write_progress`]
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

    /// The messenger's answer to [`Event::AcceptRequest`]: its policy for the peer's
    /// type, the [`Decision`] (from [`crate::decide`]) and, when the decision keeps an
    /// existing session ([`super::TableEffect::Replace`]), that session, taken from its
    /// machine with [`Machine::take_session`].
    pub fn handle_accept_decision(
        &mut self,
        now: Instant,
        policy: Policy,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        self.now = now;
        if !self.state.step().is_some_and(P::step_awaits_decision) {
            log::warn!(target: P::LOG, "{self}: accept decision in state {}", self.state_name());
            return;
        }
        self.policy = policy;
        self.lossy = policy.lossy;
        log::debug!(target: P::LOG, "{self}: accept decision {decision:?}");
        P::accept_decision(self, now, decision, transferred);
    }

    /// The messenger's answer to [`Event::VerifyAuthorizer`].
    pub fn handle_authorizer_verdict(&mut self, now: Instant, verdict: AuthVerdict) {
        self.now = now;
        P::authorizer_verdict(self, now, verdict);
    }

    /// Budget for the message announced by [`Event::NeedBudget`] was reserved: read on.
    pub fn grant_budget(&mut self, now: Instant) {
        self.now = now;
        let Some((bytes, first)) = self.take_grant(now, P::TIMED_PAYLOAD) else { return };
        if let Err(fault) = P::grant(self, bytes, first) {
            self.fault(now, fault);
            return;
        }
        self.process(now);
    }

    // ----- commands -----

    /// Queues `msg` (priority order, HIGHEST first; FIFO within a priority). Its seq is
    /// assigned when it is framed. Wakes a connect-side standby session.
    pub fn send_message(&mut self, msg: Message) {
        if self.state.is_closed() {
            log::debug!(target: P::LOG, "{self}: message dropped, connection closed");
            return;
        }
        self.session.queue.push_back(msg);
        self.wake_from_standby();
    }

    /// Queues a keepalive carrying `wall_clock` (v1 without KEEPALIVE2: a bare
    /// KEEPALIVE). Sent once open if not open yet.
    pub fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        self.keepalive.anchor = (self.now, wall_clock);
        match self.state {
            State::Closed => {}
            State::Open(_) => P::queue_keepalive(self, wall_clock),
            _ => {
                self.keepalive.pending = Some(wall_clock);
                self.wake_from_standby();
            }
        }
    }

    /// Closes the connection: an open v1 session sends CLOSE (flush
    /// [`Machine::poll_transmit`] before dropping the socket; msgr2 has no CLOSE frame);
    /// queued messages are dropped. Emits [`Event::Closed`] by [`Initiator::Local`].
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.state.is_closed() {
            return;
        }
        let was_open = self.state.is_open();
        self.session.reset();
        P::queue_close(self, was_open);
        self.finish(Initiator::Local, CloseReason::Requested);
    }

    /// Moves the session (seqs, queued and unacked messages) out for a replace; this
    /// machine is closed afterwards without further events.
    pub fn take_session(&mut self) -> Option<Session> {
        if self.state.is_closed() {
            return None;
        }
        self.session.requeue_sent();
        let s = std::mem::take(&mut self.session);
        log::debug!(target: P::LOG, "{self}: session taken (cs={} in={} out={})", s.connect_seq, s.in_seq, s.out_seq);
        self.ctrl.clear();
        self.rx.clear();
        self.set_state(State::Closed);
        Some(s)
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

    // ----- outputs -----

    /// Appends the bytes to write, as segments (payloads are shared, not copied);
    /// returns how many bytes were appended. Call until it returns 0 or the socket is
    /// full; what was returned must be written in order before the next call's output.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        let first = out.len();
        let mut head = std::mem::take(&mut self.ctrl);
        if self.state.is_open() {
            P::transmit(self, &mut head, out);
        }
        if !head.is_empty() {
            out.push(head.split().freeze());
        }
        // Keep the allocation for the next round when it was not handed out.
        self.ctrl = head;
        let total = out[first..].iter().map(Bytes::len).sum();
        if total > 0 {
            log::trace!(target: P::LOG, "{self}: {total} bytes out");
        }
        if let Some(fault) = self.deferred_fault.take() {
            let now = self.now;
            self.fault(now, fault);
        }
        total
    }

    /// The next event, if any. Drain after every input or command.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    // ----- reading -----

    /// Runs input steps until one needs more input or an answer.
    pub(crate) fn process(&mut self, now: Instant) {
        for _ in 0..INPUT_STEPS_BOUND {
            if let Some(fault) = self.deferred_fault.take() {
                // Something queued before could not be encoded.
                self.fault(now, fault);
                return;
            }
            let more = match self.state {
                State::Handshake { .. } => P::read_handshake(self, now),
                State::Open(_) => P::read_open(self, now),
                State::AwaitTransport { .. }
                | State::AwaitBackoff { .. }
                | State::Standby
                | State::Closed => {
                    // Bytes of a connection that is gone.
                    self.rx.clear();
                    false
                }
                State::Transition => false,
            };
            if !more {
                return;
            }
        }
        log::warn!(target: P::LOG, "{self}: input loop bound hit");
    }

    // ----- writing -----

    /// The next message to frame, numbered with the next out_seq (a requeued message
    /// keeps its number: Ceph's `requeue_sent` rolled out_seq back).
    pub(crate) fn next_outgoing(&mut self) -> Option<(Message, Seq)> {
        let mut msg = self.session.queue.pop()?;
        self.session.out_seq = self.session.out_seq.next();
        let seq = self.session.out_seq;
        if msg.seq() != 0 && msg.seq() != seq.0 {
            // A mismatch means the requeue invariant broke.
            log::warn!(target: P::LOG, "{self}: requeued message seq {} framed as {seq}", msg.seq());
        }
        msg.set_seq(seq.0);
        Some((msg, seq))
    }

    /// `msg` went into the write list: a lossless session keeps it until acked.
    pub(crate) fn framed(&mut self, msg: Message) {
        self.messages_sent += 1;
        if !self.lossy {
            self.session.push_sent(msg);
        }
    }

    /// Moves to the next handshake step, keeping the handshake's deadline.
    pub(crate) fn set_step(&mut self, step: P::Handshake) {
        let deadline = match self.state {
            State::Handshake { deadline, .. } | State::AwaitTransport { deadline } => deadline,
            _ => self.handshake_deadline(self.now),
        };
        self.set_state(State::Handshake { deadline, step });
    }

    /// Takes the handshake step (and its deadline) out to consume its data; the state
    /// is [`State::Transition`] until the caller moves to the next one (or faults),
    /// which every caller does before returning.
    pub(crate) fn take_step(&mut self) -> Option<(Instant, P::Handshake)> {
        match std::mem::replace(&mut self.state, State::Transition) {
            State::Handshake { deadline, step } => Some((deadline, step)),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// The state's name, for logs.
    pub(crate) fn state_name(&self) -> &'static str {
        self.label
    }

    /// Moves to `next`, logging the transition.
    pub(crate) fn set_state(&mut self, next: State<P::Handshake, P::OpenRx>) {
        let from = self.label;
        self.state = next;
        self.label = state_name::<P>(&self.state);
        if from != self.label {
            log::debug!(target: P::LOG, "{self}: {from} -> {}", self.label);
        }
    }
}

/// The name of `state`, for logs.
fn state_name<P: Protocol>(state: &State<P::Handshake, P::OpenRx>) -> &'static str {
    match state {
        State::AwaitTransport { .. } => "AwaitTransport",
        State::Handshake { step, .. } => P::step_name(step),
        State::Open(_) => "Open",
        State::AwaitBackoff { .. } => "AwaitBackoff",
        State::Standby => "Standby",
        State::Closed => "Closed",
        State::Transition => "Transition",
    }
}

impl<P: Protocol> fmt::Display for Machine<P> {
    /// The log prefix: protocol, id, peer, state (and msgr2's mode), `cs/gs/in/out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{} ", P::NAME, self.id)?;
        match (self.peer_type, self.peer_addr.and_then(|a| a.addr).or(self.socket_peer)) {
            (Some(t), Some(a)) => write!(f, "{t}@{a}")?,
            (None, Some(a)) => write!(f, "?@{a}")?,
            (Some(t), None) => write!(f, "{t}@?")?,
            (None, None) => f.write_str("?")?,
        }
        write!(f, " {}", self.state_name())?;
        if let Some(extra) = P::describe(self) {
            write!(f, " {extra}")?;
        }
        write!(
            f,
            " cs={} gs={} in={} out={}",
            self.session.connect_seq, self.global_seq, self.session.in_seq, self.session.out_seq
        )
    }
}

impl<P: Protocol> fmt::Debug for Machine<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({self})")
    }
}

/// The public type of one protocol's machine: a newtype of [`Machine`] that derefs to
/// it (rustls' `ClientConnection` over `ConnectionCommon`), so a driver calls the
/// machine's methods on it directly.
macro_rules! machine_newtype {
    ($(#[$doc:meta])* $name:ident, $proto:ty) => {
        $(#[$doc])*
        pub struct $name($crate::session::Machine<$proto>);

        impl $name {
            /// The machine.
            pub fn into_machine(self) -> $crate::session::Machine<$proto> {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = $crate::session::Machine<$proto>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

pub(crate) use machine_newtype;
