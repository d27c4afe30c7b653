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

use crate::auth::AuthPeer;
use crate::message::Message;
use crate::types::{EntityAddr, EntityType};

use super::clock::{later, Keepalive};
use super::config::Config;
use super::event::{AuthVerdict, Event};
use super::fault::{Fault, FaultContext, Side};
use super::issues::PeerIssues;
use super::outputs::{QueuedNotes, Written};
use super::policy::Policy;
use super::race::Decision;
use super::rx::RxBuf;
use super::seq::GlobalSeq;
use super::state::State;
use super::Session;

/// Source of the connection ids shown in the `Display` prefix.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a protocol (msgr v1, msgr2) plugs into [`Machine`]: its handshake steps, what
/// its open session is in the middle of reading, and the hooks the shared skeleton
/// calls. Implemented by [`crate::v1::V1`] and [`crate::v2::V2`] only; a driver never
/// calls these.
pub trait Protocol: Sized + Send + 'static {
    /// The protocol's handshake steps (a closed enum of per-step data).
    type Handshake: Send;
    /// What the open session is in the middle of reading.
    type OpenRx: Send;
    /// Log target (`msgr::v1`, `msgr::v2`).
    const LOG: &'static str;
    /// The prefix of the `Display` form (`v1`, `v2`).
    const NAME: &'static str;

    /// The step's name, for logs.
    fn step_name(step: &Self::Handshake) -> &'static str;
    /// Whether the step reads the socket (false while the driver owes an answer).
    fn step_wants_read(step: &Self::Handshake) -> bool;
    /// Whether the step waits for [`Machine::handle_accept_decision`].
    fn step_awaits_decision(step: &Self::Handshake) -> bool;
    /// Whether a message's payload must progress against `Config::payload_timeout`
    /// once its budget is granted (both protocols: a peer that announces a message and
    /// stalls or trickles it loses its connection and the budget it held).
    const TIMED_PAYLOAD: bool;
    /// Whether payload progress is counted as bytes arrive ([`Machine::handle_bytes`])
    /// instead of by the protocol as it consumes them: v1 reads payloads in windows and
    /// counts what it consumed; msgr2's frame decoder takes a segment whole once it is
    /// buffered, so what arrives meanwhile is the progress.
    const PROGRESS_ON_ARRIVAL: bool;
    /// Whether a server-policy connection parks in standby on any fault it survives,
    /// even one of its own connect attempt ([`FaultContext::server_always_parks`]).
    const SERVER_ALWAYS_PARKS: bool;

    /// The dialled socket connected: queue the banner; the first handshake step.
    fn start_handshake(m: &mut Machine<Self>) -> Self::Handshake;
    /// One unit of handshake input; false when more input (or an answer) is needed.
    fn read_handshake(m: &mut Machine<Self>, now: Instant) -> bool;
    /// One unit of open-session input; false when more input (or budget) is needed.
    fn read_open(m: &mut Machine<Self>, now: Instant) -> bool;
    /// The driver's accept decision (the machine is in its AwaitAcceptDecision step).
    fn accept_decision(
        m: &mut Machine<Self>,
        now: Instant,
        decision: Decision,
        transferred: Option<Session>,
    );
    /// The driver's authorizer verdict.
    fn authorizer_verdict(m: &mut Machine<Self>, now: Instant, verdict: AuthVerdict);
    /// The driver granted `bytes` of budget (`first`: the message's first grant): let
    /// the decoder read on. An error faults the connection.
    fn grant(m: &mut Machine<Self>, bytes: u64, first: bool) -> Result<(), Fault>;
    /// The large payload segment being assembled and how many bytes may be read into it.
    fn direct_read_buffer(m: &mut Machine<Self>) -> Option<(&mut BytesMut, usize)>;
    /// Whether a message's header was read and it has not completed.
    fn message_in_progress(rx: &Self::OpenRx) -> bool;
    /// Open and between frames: nothing of the next one read yet (no message stored
    /// or let stream by as a duplicate, no other frame begun), no budget awaited.
    fn between_messages(m: &Machine<Self>) -> bool;
    /// Bytes of memory held for the message being received (the session is open),
    /// wherever the protocol assembles it.
    fn receive_held_bytes(m: &Machine<Self>) -> usize;

    /// While open: appends ACKs, pending keepalives and framed messages after the
    /// control bytes in `head` (small pieces into `head`, payload segments pushed onto
    /// `out` by reference, flushing `head` before them).
    fn transmit(m: &mut Machine<Self>, head: &mut BytesMut, out: &mut Vec<Bytes>);
    /// The user closes the connection: what goes out before the socket does (v1's
    /// CLOSE on an open session).
    fn queue_close(m: &mut Machine<Self>, was_open: bool);
    /// Forgets the protocol's per-TCP-connection state.
    fn reset_transport(m: &mut Machine<Self>);
    /// Whether a reconnect after a fault starts the session's next connect_seq
    /// (`past_connecting`: the session was open or accepted on the failed connection).
    fn bumps_connect_seq(m: &Machine<Self>, past_connecting: bool) -> bool;
    /// Whether waking from standby starts the session's next connect_seq.
    fn wake_bumps_connect_seq(m: &Machine<Self>) -> bool;
    /// Extra words for the `Display` prefix after the state (msgr2's mode).
    fn describe(m: &Machine<Self>) -> Option<&'static str>;
    /// Whether `fault`, in a connector's handshake, ends a lossy session with a reset
    /// rather than a retry: Ceph's ProtocolV1 retries a lossy connect only in
    /// START_CONNECT and CONNECTING (until its banner was written), its ProtocolV2
    /// from START_CONNECT through SESSION_RECONNECTING, which a WAIT reply leaves.
    fn lossy_handshake_ends(m: &Machine<Self>, fault: &Fault) -> bool;
}

/// One connection attempt / session of a protocol `P` (connect or accept side), as a
/// pure state machine: fed bytes and `now`, it hands back bytes to write, [`super::Event`]s
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
    /// The policy for the peer's type. On the accept side: its feature bits from
    /// [`Config::policies`] once the peer's type is known
    /// ([`Machine::learn_peer_type`]), the rest the default until the messenger's
    /// decision brings it.
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
    /// This connection's session opened here (`Event::Opened`), or a session was moved
    /// into it by a replace that kept it (see [`FaultContext::announced`]). A fault of a
    /// lossy session reports a reset only then.
    pub(crate) announced: bool,
    /// Backoff used for the last attempt (zero after a successful open).
    pub(crate) backoff: Duration,
    /// When the session last opened on this machine. A session that faults sooner than
    /// `Config::initial_backoff` after it opened is redialled once that much time has
    /// passed since the open, not at once: a peer that opens every session and cuts it
    /// straight away would otherwise be redialled as fast as the handshake goes,
    /// thousands of times a second (opening resets the backoff, and Ceph redials a lost
    /// session at once).
    pub(crate) opened_at: Option<Instant>,
    /// Reconnect attempts since the last open.
    pub(crate) attempt: u32,
    /// Received bytes not yet consumed.
    pub(crate) rx: RxBuf,
    /// Control bytes to send, in order (handshake, ACKs, keepalives, CLOSE).
    pub(crate) ctrl: BytesMut,
    pub(crate) events: VecDeque<Event>,
    /// Which of the events a peer can provoke as fast as it sends are in `events`.
    pub(crate) notes: QueuedNotes,
    /// The latest `now` seen (commands without a `now` use it).
    pub(crate) now: Instant,
    /// Last time bytes arrived (idle timeout).
    pub(crate) last_rx: Instant,
    /// Since when bytes have waited that the socket would not take.
    pub(crate) write_blocked_since: Option<Instant>,
    /// How far this TCP connection's output is known written.
    pub(crate) written: Written,
    pub(crate) keepalive: Keepalive,
    /// Accept side: who the peer authenticated as on this connection.
    pub(crate) peer_auth: Option<AuthPeer>,
    /// Messages taken to be framed so far, each once: a requeued message framed again
    /// after a reconnect or a replace is not counted again (Ceph counts a message once,
    /// when it is sent).
    pub(crate) messages_sent: u64,
    /// Messages dropped as duplicates (`seq <= in_seq`).
    pub(crate) duplicates_dropped: u64,
    /// A frame could not be encoded (msgr2 secure mode out of nonces): the connection
    /// faults before it reads or writes anything more.
    pub(crate) deferred_fault: Option<Fault>,
    /// The last fault, while what it decided (standby, or a reconnect at once) waits
    /// untaken in `events`: [`Machine::mark_lossy`] decides it again as a lossy
    /// session's. Cleared when that event is taken. Boxed: set only between a fault and
    /// the driver's next look at the events, and every connection carries the slot.
    pub(crate) unreported_fault: Option<Box<(FaultContext, Fault)>>,
    pub(crate) issues: PeerIssues,
    /// The protocol's per-connection data.
    pub(crate) proto: P,
}

impl<P: Protocol> Machine<P> {
    /// A connect-side machine for `peer_addr` (of type `peer_type`), waiting for the
    /// driver's TCP connect within the handshake timeout: what both protocols' connect
    /// constructors share.
    pub(crate) fn connecting(
        config: Arc<Config>,
        policy: Policy,
        proto: P,
        peer_addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Self {
        let state = State::AwaitTransport { deadline: later(now, config.handshake_timeout) };
        let mut m = Machine::new(config, Side::Connect, policy, state, proto, now);
        m.peer_addr = Some(peer_addr);
        m.peer_type = Some(peer_type);
        m.socket_peer = peer_addr.addr;
        m
    }

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
            announced: false,
            backoff: Duration::ZERO,
            opened_at: None,
            attempt: 0,
            rx: RxBuf::default(),
            ctrl: BytesMut::new(),
            events: VecDeque::new(),
            notes: QueuedNotes::default(),
            now,
            last_rx: now,
            write_blocked_since: None,
            written: Written::Nothing,
            keepalive: Keepalive::new(now),
            peer_auth: None,
            messages_sent: 0,
            duplicates_dropped: 0,
            deferred_fault: None,
            unreported_fault: None,
            issues: PeerIssues::default(),
            proto,
        }
    }

    /// Accept side: the peer says it is of type `peer_type` (v1 CONNECT's `host_type`,
    /// msgr2 HELLO's entity type). Our policy for that type's feature bits are what the
    /// peer is checked against and offered from now on (Ceph's `connection->policy =
    /// messenger->get_policy(peer_type)`); its other fields wait for the messenger's
    /// decision, which knows the session table.
    pub(crate) fn learn_peer_type(&mut self, peer_type: EntityType) {
        self.peer_type = Some(peer_type);
        let policy = self.config.policies.policy(peer_type);
        self.policy.features_supported = policy.features_supported;
        self.policy.features_required = policy.features_required;
    }

    /// The handshake deadline for an attempt starting at `now`.
    pub(crate) fn handshake_deadline(&self, now: Instant) -> Instant {
        later(now, self.config.handshake_timeout)
    }

    // ----- writing -----

    /// The next message to frame, numbered with the next out_seq (a requeued message
    /// keeps its number: Ceph's `requeue_sent` rolled out_seq back).
    // Always inlined (into the transmit loops): as a call the popped message came back
    // through memory; inlined, ~24 fewer instructions per 64 B round trip under callgrind
    // (the compiler's own choice flipped with unrelated edits).
    #[inline(always)]
    pub(crate) fn next_outgoing(&mut self) -> Option<Message> {
        let resend = self.session.queue.next_is_requeued();
        let mut msg = self.session.queue.pop()?;
        if !resend {
            self.messages_sent += 1;
        }
        self.session.out_seq = self.session.out_seq.next();
        let seq = self.session.out_seq;
        if msg.seq() != 0 && msg.seq() != seq.0 {
            // Renumbered: a new session on a replace keeps its messages and numbers from
            // 1 (a peer can cause that, so no WARN per message), and a forwarded message
            // still carries the seq it was received with.
            log::debug!(target: P::LOG, "{self}: requeued message seq {} framed as {seq}", msg.seq());
        }
        msg.set_seq(seq.0);
        Some(msg)
    }

    /// `msg` went into the write list: a lossless session keeps it until acked.
    // Always inlined into the transmit loops (where the compiler put it already): pinned
    // with `next_outgoing`, so edits elsewhere do not make it a per-message call.
    #[inline(always)]
    pub(crate) fn framed(&mut self, msg: Message) {
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
