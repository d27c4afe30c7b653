//! [`Connection`]: one TCP connection attempt / session of msgr2.1, as a pure state
//! machine (see the module docs of [`super`] for the call order and the state diagram).

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::error::Error;
use crate::message::Message;
use crate::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use crate::v1::{
    fault_action, CloseReason, Fault, FaultAction, FaultContext, Initiator, Opened, Policy,
    SessionState, Side,
};
use crate::wire::{FooterFlags, KeepaliveStamp, MsgFooter, MsgHeader};

use super::auth::{
    filter_modes, pick_mode, AuthClient, AuthOutcome, AuthRole, AuthServer, AuthStep, EOPNOTSUPP,
};
use super::banner::{Banner, Msgr2Features, BANNER_HEAD_LEN};
use super::config::Config;
use super::decide::{msgr2_addr, AcceptRequest, Decision, RequestKind};
use super::event::Event;
use super::frames::{
    Ack, AuthBadMethod, AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, AuthSignature,
    ClientIdent, ControlFrame, Hello, IdentMissingFeatures, Keepalive2, Keepalive2Ack, MsgHeader2,
    ServerIdent, SessionReconnect, SessionReconnectOk, SessionReset, SessionRetry,
    SessionRetryGlobal, Wait, HEADER2_FLAGS, IDENT_FLAG_LOSSY,
};
use super::framing::{Frame, FrameDecoder, FrameEncoder, FrameHead, FrameProgress, GcmStream};
use super::rx::RxBuf;
use super::session::Session;
use super::tag::{ConMode, Tag};

const LOG: &str = "msgr::v2";

/// How many payload bytes one `poll_transmit` call frames at most, so one busy
/// connection cannot build an unbounded write list (the driver calls again).
const TRANSMIT_BATCH_BYTES: usize = 1 << 20;

/// The pre-auth transcript of one direction may not grow beyond this: Ceph's are a few
/// hundred bytes to ~2 KiB (cephx with every ticket); a peer that keeps the auth phase
/// going longer is refused rather than buffered.
const MAX_TRANSCRIPT: usize = 256 << 10;

/// Ceph's `msgr2_required`: every msgr2 peer must support MSG_ADDR2.
const MSGR2_REQUIRED: Features = Features::MSG_ADDR2;

/// Source of the connection ids shown in the `Display` prefix.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The internal state. Wait states share the `Await` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Connect side: the driver is dialling.
    AwaitTransport,
    /// Connect side: our banner sent, waiting for the acceptor's.
    AwaitBanner,
    /// Connect side: HELLO sent, waiting for the acceptor's HELLO.
    AwaitHello,
    /// Connect side: AUTH_REQUEST(_MORE) sent.
    AwaitAuthReply,
    /// Both: our AUTH_SIGNATURE sent, waiting for the peer's.
    AwaitAuthSignature,
    /// Connect side: CLIENT_IDENT or SESSION_RECONNECT sent.
    AwaitIdentReply,
    /// Lossless fault: waiting out the backoff before dialling again.
    AwaitBackoff { until: Instant },
    /// Accept side: our banner sent, waiting for the connector's.
    AwaitPeerBanner,
    /// Accept side: waiting for the connector's HELLO.
    AwaitPeerHello,
    /// Accept side: waiting for AUTH_REQUEST (first, or after AUTH_BAD_METHOD).
    AwaitAuthRequest,
    /// Accept side: AUTH_REPLY_MORE sent, waiting for AUTH_REQUEST_MORE.
    AwaitAuthRequestMore,
    /// Accept side: signatures checked, waiting for CLIENT_IDENT / SESSION_RECONNECT.
    AwaitIdent,
    /// Accept side: waiting for [`Connection::handle_accept_decision`].
    AwaitAcceptDecision,
    /// Session ready.
    Open,
    /// Lossless session parked without a socket.
    Standby,
    /// Finished.
    Closed,
}

impl State {
    fn in_handshake(self) -> bool {
        !matches!(self, State::AwaitBackoff { .. } | State::Open | State::Standby | State::Closed)
    }

    fn name(self) -> &'static str {
        match self {
            State::AwaitTransport => "AwaitTransport",
            State::AwaitBanner => "AwaitBanner",
            State::AwaitHello => "AwaitHello",
            State::AwaitAuthReply => "AwaitAuthReply",
            State::AwaitAuthSignature => "AwaitAuthSignature",
            State::AwaitIdentReply => "AwaitIdentReply",
            State::AwaitBackoff { .. } => "AwaitBackoff",
            State::AwaitPeerBanner => "AwaitPeerBanner",
            State::AwaitPeerHello => "AwaitPeerHello",
            State::AwaitAuthRequest => "AwaitAuthRequest",
            State::AwaitAuthRequestMore => "AwaitAuthRequestMore",
            State::AwaitIdent => "AwaitIdent",
            State::AwaitAcceptDecision => "AwaitAcceptDecision",
            State::Open => "Open",
            State::Standby => "Standby",
            State::Closed => "Closed",
        }
    }
}

/// Where the MESSAGE being received stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxMsg {
    /// Not inside a MESSAGE.
    Idle,
    /// Header read; waiting for [`Connection::grant_budget`].
    AwaitBudget(MsgHeader2),
    /// Reading the segments; `discard` for a duplicate seq.
    Reading { header: MsgHeader2, discard: bool },
}

/// The authentication in progress on this TCP connection.
#[derive(Default)]
struct AuthState {
    client: Option<Box<dyn AuthClient>>,
    server: Option<Box<dyn AuthServer>>,
    /// The method of the current attempt.
    method: u32,
    /// Connect side: methods already refused.
    tried: Vec<u32>,
    /// Connect side: the modes we offered with the current method.
    offered: Vec<ConMode>,
    /// Accept side: the mode picked for the current attempt.
    mode: ConMode,
    rounds: u32,
    /// Record every byte sent and received (banner through AUTH_DONE).
    recording: bool,
    rx_transcript: Vec<u8>,
    tx_transcript: Vec<u8>,
    session_key: Option<Vec<u8>>,
}

/// One msgr2 connection (connect or accept side) and the session it carries.
pub struct Connection {
    id: u64,
    config: Arc<Config>,
    /// The role of the current TCP connection.
    side: Side,
    /// Our policy for the peer's type (accept side: the default until the decision).
    policy: Policy,
    /// The session is lossy (our policy, or the acceptor's LOSSY flag).
    lossy: bool,
    state: State,
    /// Connect side: the address dialled (`target_addr`). Accept side: the peer's v2
    /// address from its ident, if it has one we could dial back.
    peer_addr: Option<EntityAddr>,
    /// The peer's addresses (from its ident, or the acceptor's SERVER_IDENT).
    peer_addrs: EntityAddrVec,
    peer_type: Option<EntityType>,
    socket_peer: Option<SocketAddr>,
    socket_local: Option<SocketAddr>,
    /// Our addresses as sent in idents, with the IP learned from the acceptor's HELLO
    /// when ours is blank (`ms_learn_addr_from_peer`).
    my_addrs: EntityAddrVec,
    session: Session,
    /// Our global_seq of the current attempt.
    global_seq: u64,
    once_ready: bool,
    resuming: bool,
    remote_reset: bool,
    backoff: Duration,
    attempt: u32,
    /// Connect side: SESSION_RECONNECT was sent (not CLIENT_IDENT).
    reconnecting: bool,
    /// Accept side: the request awaiting the messenger's decision.
    pending_request: Option<AcceptRequest>,
    auth: AuthState,
    con_mode: ConMode,
    /// The global id the acceptor's auth assigned (connect side) or accepted.
    global_id: u64,
    rx: RxBuf,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    rx_msg: RxMsg,
    /// Encoded control frames to send, in order.
    ctrl: BytesMut,
    events: VecDeque<Event>,
    now: Instant,
    handshake_deadline: Option<Instant>,
    last_rx: Instant,
    keepalive_due: Option<Instant>,
    keepalive_pending: Option<KeepaliveStamp>,
    /// The instant and stamp of the last `send_keepalive` (maps `Instant`s to wall-clock
    /// stamps for timer-driven keepalives).
    stamp_anchor: (Instant, KeepaliveStamp),
    last_keepalive: Option<Instant>,
    last_keepalive_ack: Option<KeepaliveStamp>,
    /// in_seq advanced since the last ACK or MESSAGE we sent (lossless only).
    ack_pending: bool,
    messages_sent: u64,
    /// MESSAGEs dropped because their seq was already delivered (a Ceph receiver stops
    /// reading on these, so a correct sender never causes one).
    duplicates_dropped: u64,
    /// A frame could not be encoded (secure mode out of nonces): fault on the next input.
    tx_failed: Option<Error>,
}

impl Connection {
    fn new(config: Arc<Config>, side: Side, policy: Policy, state: State, now: Instant) -> Self {
        Connection {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            side,
            policy,
            lossy: policy.lossy,
            state,
            peer_addr: None,
            peer_addrs: EntityAddrVec::default(),
            peer_type: None,
            socket_peer: None,
            socket_local: None,
            my_addrs: config.my_addrs.clone(),
            session: Session::default(),
            global_seq: 0,
            once_ready: false,
            resuming: false,
            remote_reset: false,
            backoff: Duration::ZERO,
            attempt: 0,
            reconnecting: false,
            pending_request: None,
            auth: AuthState::default(),
            con_mode: ConMode::UNKNOWN,
            global_id: 0,
            rx: RxBuf::default(),
            decoder: FrameDecoder::new(config.limits),
            encoder: FrameEncoder::crc(),
            rx_msg: RxMsg::Idle,
            ctrl: BytesMut::new(),
            events: VecDeque::new(),
            now,
            handshake_deadline: Some(now + config.handshake_timeout),
            last_rx: now,
            keepalive_due: None,
            keepalive_pending: None,
            stamp_anchor: (now, KeepaliveStamp::default()),
            last_keepalive: None,
            last_keepalive_ack: None,
            ack_pending: false,
            messages_sent: 0,
            duplicates_dropped: 0,
            tx_failed: None,
            config,
        }
    }

    /// A connect-side machine for the peer at `peer_addr` (a v2 address) of type
    /// `peer_type`. The driver dials and calls [`Connection::handle_transport_connected`].
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

    /// An accept-side machine for a socket accepted from `socket_peer` on
    /// `socket_local`. Our banner is ready in [`Connection::poll_transmit`] at once.
    pub fn accept(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        let mut c =
            Connection::new(config, Side::Accept, Policy::default(), State::AwaitPeerBanner, now);
        c.socket_peer = Some(socket_peer);
        c.socket_local = Some(socket_local);
        c.auth.recording = true;
        c.send_raw(&Banner::OURS.to_bytes());
        log::debug!(target: LOG, "{c}: accepted");
        c
    }

    // ----- inputs -----

    /// The dialled socket is connected (first attempt or after [`Event::Reconnect`]).
    #[doc(alias = "start_client_banner_exchange")]
    pub fn handle_transport_connected(&mut self, now: Instant) {
        self.now = now;
        if self.state != State::AwaitTransport {
            log::warn!(target: LOG, "{self}: transport connected in state {}", self.state.name());
            return;
        }
        self.side = Side::Connect;
        self.reset_transport();
        self.global_seq = self.config.next_global_seq();
        self.auth.recording = true;
        self.send_raw(&Banner::OURS.to_bytes());
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.last_rx = now;
        self.set_state(State::AwaitBanner);
    }

    /// Bytes from the socket, in any chunking. Call only while
    /// [`Connection::wants_read`].
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

    /// The socket reached EOF or failed.
    pub fn handle_transport_closed(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::Closed | State::Standby | State::AwaitBackoff { .. } => {}
            _ => self.fault(now, Fault::TransportClosed),
        }
    }

    /// The deadline from [`Connection::poll_timeout`] passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::AwaitBackoff { until } if now >= until => self.start_reconnect(now),
            s if s.in_handshake() && self.handshake_deadline.is_some_and(|d| now >= d) => {
                self.fault(now, Fault::HandshakeTimeout);
            }
            State::Open => {
                if now >= self.last_rx + self.config.idle_timeout {
                    self.fault(now, Fault::IdleTimeout);
                    return;
                }
                if let (Some(due), Some(every)) =
                    (self.keepalive_due, self.config.keepalive_interval)
                {
                    if now >= due {
                        let stamp = self.stamp_at(now);
                        self.send_control(&Keepalive2 { stamp });
                        self.keepalive_due = Some(now + every);
                    }
                }
            }
            _ => {}
        }
    }

    /// The messenger's answer to [`Event::AcceptRequest`]: its policy for the peer's
    /// type, the [`Decision`] (from [`super::decide`]) and, when the decision keeps an
    /// existing session, that session ([`Connection::take_session`] on its machine).
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
        let Some(req) = self.pending_request.take() else {
            self.fault(now, Fault::Misbehaved("accept decision without a request"));
            return;
        };
        self.policy = policy;
        self.lossy = policy.lossy;
        log::debug!(target: LOG, "{self}: accept decision {decision:?}");
        match (req.kind, decision) {
            (RequestKind::Ident { .. }, Decision::Open) => {
                self.accept_new_session(now, &req, None, false, false)
            }
            (RequestKind::Ident { .. }, Decision::Replace { reset_existing, remote_reset }) => {
                let kept = if reset_existing { None } else { transferred };
                self.accept_new_session(now, &req, kept, reset_existing, remote_reset)
            }
            (RequestKind::Reconnect { .. }, Decision::Replace { .. }) => match transferred {
                Some(s) => self.accept_resume(now, &req, s),
                // Nothing to resume after all: the peer starts over.
                None => self.reply_and_wait(now, &SessionReset { full: true }),
            },
            (RequestKind::Reconnect { .. }, Decision::Open) => {
                self.reply_and_wait(now, &SessionReset { full: true })
            }
            (_, Decision::Drop) => {
                log::info!(target: LOG, "{self}: stale connection (older global_seq), closing");
                self.finish(Initiator::Library, CloseReason::Replaced);
            }
            (_, Decision::Wait) => self.reply_and_wait(now, &Wait),
            (_, Decision::Reset { full }) => self.reply_and_wait(now, &SessionReset { full }),
            (_, Decision::Retry { connect_seq }) => {
                self.reply_and_wait(now, &SessionRetry { connect_seq })
            }
            (_, Decision::RetryGlobal { global_seq }) => {
                self.reply_and_wait(now, &SessionRetryGlobal { global_seq })
            }
        }
    }

    /// Budget for the MESSAGE announced by [`Event::NeedBudget`] was reserved: read on.
    pub fn grant_budget(&mut self, now: Instant) {
        self.now = now;
        let RxMsg::AwaitBudget(header) = self.rx_msg else { return };
        if let Err(e) = self.decoder.proceed() {
            self.fault(now, Fault::Decode(e));
            return;
        }
        self.rx_msg = RxMsg::Reading { header, discard: false };
        self.process(now);
    }

    // ----- commands -----

    /// Queues `msg` (priority order, FIFO within a priority); its seq is assigned when
    /// framed. Wakes a connect-side standby session.
    pub fn send_message(&mut self, msg: Message) {
        if self.state == State::Closed {
            log::debug!(target: LOG, "{self}: message dropped, connection closed");
            return;
        }
        self.session.msgs.queue.push_back(msg);
        self.wake_from_standby();
    }

    /// Queues a KEEPALIVE2 carrying `wall_clock`; sent once open if not open yet.
    pub fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        self.stamp_anchor = (self.now, wall_clock);
        match self.state {
            State::Closed => {}
            State::Open => self.send_control(&Keepalive2 { stamp: wall_clock }),
            _ => {
                self.keepalive_pending = Some(wall_clock);
                self.wake_from_standby();
            }
        }
    }

    /// Closes the connection. msgr2 has no CLOSE frame: the driver just closes the
    /// socket (after flushing [`Connection::poll_transmit`]). Queued messages are
    /// dropped. Emits [`Event::Closed`] by [`Initiator::Local`].
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.state == State::Closed {
            return;
        }
        self.session.reset();
        self.finish(Initiator::Local, CloseReason::Requested);
    }

    /// Moves the session out for a replace; this machine is closed afterwards without
    /// further events.
    pub fn take_session(&mut self) -> Option<Session> {
        if self.state == State::Closed {
            return None;
        }
        self.session.msgs.requeue_sent();
        let s = std::mem::take(&mut self.session);
        log::debug!(target: LOG, "{self}: session taken (cs={} in={} out={})", s.connect_seq, s.in_seq(), s.out_seq());
        self.ctrl.clear();
        self.rx.clear();
        self.set_state(State::Closed);
        Some(s)
    }

    /// Makes the session lossy from now on (Ceph's `mark_disposable`).
    pub fn mark_lossy(&mut self) {
        self.policy.lossy = true;
        self.lossy = true;
    }

    // ----- outputs -----

    /// Appends the bytes to write (payload segments shared, not copied); returns how
    /// many. Call until it returns 0; write everything in order.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        let before: usize = out.iter().map(Bytes::len).sum();
        if self.state == State::Open {
            if let Some(stamp) = self.keepalive_pending.take() {
                self.send_control(&Keepalive2 { stamp });
            }
        }
        let mut head = std::mem::take(&mut self.ctrl);
        if self.state == State::Open {
            let mut framed = 0;
            while framed < TRANSMIT_BATCH_BYTES {
                let Some(mut msg) = self.session.msgs.queue.pop() else { break };
                self.session.msgs.out_seq += 1;
                let seq = self.session.msgs.out_seq;
                msg.set_seq(seq);
                let header = MsgHeader2 {
                    seq,
                    tid: msg.tid(),
                    msg_type: msg.msg_type(),
                    priority: msg.priority(),
                    version: msg.version(),
                    data_pre_padding_len: 0,
                    data_off: msg.data_off(),
                    ack_seq: self.session.msgs.in_seq,
                    flags: HEADER2_FLAGS,
                    compat_version: msg.compat_version(),
                    reserved: 0,
                };
                let h = Bytes::copy_from_slice(&header.to_bytes());
                let segs = [&h, msg.front(), msg.middle(), msg.data()];
                match self.encoder.encode(Tag::MESSAGE, &segs, &mut head, out) {
                    Ok(n) => framed += n,
                    Err(e) => {
                        self.tx_failed = Some(e);
                        break;
                    }
                }
                // The frame carries our in_seq: no separate ACK needed for it.
                self.ack_pending = false;
                self.messages_sent += 1;
                if !self.lossy {
                    self.session.msgs.push_sent(msg);
                }
            }
            if self.ack_pending && !self.lossy {
                self.ack_pending = false;
                let seg = Ack { seq: self.session.msgs.in_seq }.to_segment();
                if let Err(e) = self.encoder.encode(Tag::ACK, &[&seg], &mut head, out) {
                    self.tx_failed = Some(e);
                }
            }
        }
        if !head.is_empty() {
            out.push(head.split().freeze());
        }
        // Keep the allocation for the next round when it was not handed out.
        self.ctrl = head;
        let written = out.iter().map(Bytes::len).sum::<usize>() - before;
        if written > 0 {
            log::trace!(target: LOG, "{self}: {written} bytes out");
        }
        if let Some(e) = self.tx_failed.take() {
            let now = self.now;
            self.fault(now, Fault::Decode(e));
        }
        written
    }

    /// The next time [`Connection::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitBackoff { until } => Some(until),
            s if s.in_handshake() => self.handshake_deadline,
            State::Open => {
                let idle = self.last_rx + self.config.idle_timeout;
                Some(self.keepalive_due.map_or(idle, |k| k.min(idle)))
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

    /// Whether the driver should read the socket (false while waiting for a decision
    /// or a budget, and when there is no socket).
    pub fn wants_read(&self) -> bool {
        match self.state {
            State::AwaitTransport
            | State::AwaitBackoff { .. }
            | State::AwaitAcceptDecision
            | State::Standby
            | State::Closed => false,
            State::Open => !matches!(self.rx_msg, RxMsg::AwaitBudget(_)),
            _ => true,
        }
    }

    /// Whether [`Connection::poll_transmit`] has something to return.
    pub fn wants_write(&self) -> bool {
        !self.ctrl.is_empty()
            || (self.state == State::Open
                && (!self.session.msgs.queue.is_empty()
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
            | State::AwaitPeerHello
            | State::AwaitAuthRequest
            | State::AwaitAuthRequestMore
            | State::AwaitIdent
            | State::AwaitAcceptDecision => SessionState::Accepting,
            State::AwaitAuthSignature if self.side == Side::Accept => SessionState::Accepting,
            _ => SessionState::Connecting,
        }
    }

    /// Connect side: the address dialled. Accept side: the peer's v2 address, if it
    /// announced one (what a reconnect dials).
    pub fn peer_addr(&self) -> Option<&EntityAddr> {
        self.peer_addr.as_ref()
    }

    /// The peer's addresses from its ident (empty before).
    pub fn peer_addrs(&self) -> &EntityAddrVec {
        &self.peer_addrs
    }

    /// The peer's entity type, once known.
    pub fn peer_type(&self) -> Option<EntityType> {
        self.peer_type
    }

    /// The peer's entity name (type from HELLO, number from its ident's gid).
    pub fn peer_name(&self) -> Option<EntityName> {
        self.peer_type.map(|t| EntityName::new(t, self.session.peer_gid))
    }

    /// Negotiated features (empty before the first open).
    pub fn features(&self) -> Features {
        self.session.features
    }

    /// The connection mode negotiated by the last AUTH_DONE (UNKNOWN before).
    pub fn con_mode(&self) -> ConMode {
        self.con_mode
    }

    /// The global id from AUTH_DONE (0 before).
    pub fn global_id(&self) -> u64 {
        self.global_id
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the session is lossy.
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// `(client_cookie, server_cookie)` of the session.
    pub fn cookies(&self) -> (u64, u64) {
        self.session.cookies()
    }

    /// When the peer's last KEEPALIVE2 arrived.
    pub fn last_keepalive(&self) -> Option<Instant> {
        self.last_keepalive
    }

    /// The stamp of the peer's last KEEPALIVE2_ACK.
    pub fn last_keepalive_ack(&self) -> Option<KeepaliveStamp> {
        self.last_keepalive_ack
    }

    /// `(in_seq, out_seq, connect_seq, peer_global_seq)`.
    pub fn seqs(&self) -> (u64, u64, u64, u64) {
        (
            self.session.msgs.in_seq,
            self.session.msgs.out_seq,
            self.session.connect_seq,
            self.session.peer_global_seq,
        )
    }

    /// Messages queued or sent-but-unacked.
    pub fn pending_messages(&self) -> usize {
        self.session.pending()
    }

    /// Messages framed so far (resends included).
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// MESSAGEs dropped as duplicates (`seq <= in_seq`) so far.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }

    // ----- reading -----

    fn process(&mut self, now: Instant) {
        // Each step consumes input or changes state, or returns false; the bound only
        // guards against a bug turning into a hang.
        for _ in 0..1_000_000 {
            if let Some(e) = self.tx_failed.take() {
                // A reply could not be encoded (secure mode out of nonces).
                self.fault(now, Fault::Decode(e));
                return;
            }
            if !self.step(now) {
                return;
            }
        }
        log::warn!(target: LOG, "{self}: input loop bound hit");
    }

    fn step(&mut self, now: Instant) -> bool {
        match self.state {
            State::AwaitBanner | State::AwaitPeerBanner => self.read_banner(now),
            State::AwaitAcceptDecision => false,
            State::AwaitTransport | State::AwaitBackoff { .. } | State::Standby | State::Closed => {
                // Bytes of a connection that is gone.
                self.rx.clear();
                false
            }
            _ => self.read_frame(now),
        }
    }

    /// Takes exactly `n` buffered bytes as one `Bytes` (zero-copy within a chunk).
    fn take(&mut self, n: usize) -> Option<Bytes> {
        self.rx.contiguous(n)?;
        let mut c = self.rx.pop_chunk().unwrap_or_default();
        let out = c.split_to(n.min(c.len()));
        self.rx.unpop_chunk(c);
        if self.auth.recording {
            self.record_rx(&out);
        }
        Some(out)
    }

    fn record_rx(&mut self, b: &[u8]) {
        self.auth.rx_transcript.extend_from_slice(b);
    }

    fn read_banner(&mut self, now: Instant) -> bool {
        let len = {
            let Some(head) = self.rx.contiguous(BANNER_HEAD_LEN.min(self.rx.len().max(1))) else {
                return false;
            };
            // A wrong prefix is known from its first 8 bytes.
            if head.len() < BANNER_HEAD_LEN {
                let prefix = super::banner::BANNER_PREFIX;
                if !prefix.starts_with(&head[..head.len().min(8)]) {
                    self.fault(now, Fault::BadBanner);
                }
                return false;
            }
            match Banner::decode_head(head) {
                Ok(len) => len,
                Err(Error::BadBanner) => {
                    if head.starts_with(super::banner::V1_BANNER_PREFIX) {
                        log::info!(target: LOG, "{self}: peer is using msgr V1 protocol");
                    }
                    self.fault(now, Fault::BadBanner);
                    return false;
                }
                Err(e) => {
                    self.fault(now, Fault::Decode(e));
                    return false;
                }
            }
        };
        let Some(all) = self.take(BANNER_HEAD_LEN + len) else { return false };
        let peer = match Banner::decode_payload(&all[BANNER_HEAD_LEN..]) {
            Ok(b) => b,
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        if let Err(e) = Banner::OURS.check_compatible(&peer) {
            self.incompatible(now, e);
            return false;
        }
        if !peer.supported.contains(Msgr2Features::REVISION_1) {
            // msgr2.0 (Nautilus 14.2.0-14.2.4): different framing and nonces with known
            // weaknesses; not implemented.
            self.incompatible(now, Error::Unsupported("peer speaks msgr2.0 only (no REVISION_1)"));
            return false;
        }
        let my_type = self.config.my_name.ty;
        if self.side == Side::Connect {
            let dialled = self.peer_addr.unwrap_or_default();
            self.send_control(&Hello { entity_type: my_type, peer_addr: dialled });
            self.set_state(State::AwaitHello);
        } else {
            let seen = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: self.socket_peer };
            self.send_control(&Hello { entity_type: my_type, peer_addr: seen });
            self.set_state(State::AwaitPeerHello);
        }
        true
    }

    fn read_frame(&mut self, now: Instant) -> bool {
        if self.decoder.is_paused() {
            return false;
        }
        let n = self.decoder.need();
        let Some(piece) = self.take(n) else { return false };
        if self.auth.recording
            && (self.auth.rx_transcript.len() > MAX_TRANSCRIPT
                || self.auth.tx_transcript.len() > MAX_TRANSCRIPT)
        {
            self.fault(now, Fault::Misbehaved("pre-auth phase too long"));
            return false;
        }
        match self.decoder.advance(piece) {
            Err(e) => {
                log::warn!(target: LOG, "{self}: bad frame: {e}");
                self.fault(now, Fault::Decode(e));
                false
            }
            Ok(FrameProgress::NeedMore) => true,
            Ok(FrameProgress::Head(h)) => self.handle_head(now, h),
            Ok(FrameProgress::Frame(f)) => self.handle_frame(now, f),
        }
    }

    fn handle_head(&mut self, now: Instant, h: FrameHead) -> bool {
        if h.tag() != Tag::MESSAGE {
            if let Err(e) = self.decoder.proceed() {
                self.fault(now, Fault::Decode(e));
                return false;
            }
            return true;
        }
        if self.state != State::Open {
            log::warn!(target: LOG, "{self}: MESSAGE while not ready");
            self.fault(now, Fault::Misbehaved("MESSAGE before the session is ready"));
            return false;
        }
        let header = match MsgHeader2::decode(&h.segment0) {
            Ok(hd) => hd,
            Err(e) => {
                self.fault(now, Fault::Decode(e));
                return false;
            }
        };
        if header.seq <= self.session.msgs.in_seq {
            // Already delivered: read it without budget and drop it (Pacific stops
            // reading the connection instead, msgr-v2.md 6.2).
            log::debug!(target: LOG, "{self}: dropping duplicate seq {} (in_seq {})", header.seq, self.session.msgs.in_seq);
            if let Err(e) = self.decoder.proceed() {
                self.fault(now, Fault::Decode(e));
                return false;
            }
            self.duplicates_dropped += 1;
            self.rx_msg = RxMsg::Reading { header, discard: true };
            return true;
        }
        self.rx_msg = RxMsg::AwaitBudget(header);
        self.events.push_back(Event::NeedBudget { bytes: h.payload_len() });
        false
    }

    fn handle_frame(&mut self, now: Instant, f: Frame) -> bool {
        let tag = f.tag();
        log::trace!(target: LOG, "{self}: got {tag}");
        if f.aborted && tag != Tag::MESSAGE {
            // An aborted frame is dropped unread (FRAME_LATE_STATUS_ABORTED).
            return true;
        }
        let result = match self.state {
            State::Open => self.on_open_frame(now, f),
            State::AwaitHello => self.on_hello(now, &f),
            State::AwaitPeerHello => self.on_peer_hello(now, &f),
            State::AwaitAuthReply => self.on_auth_reply(now, &f),
            State::AwaitAuthRequest | State::AwaitAuthRequestMore => self.on_auth_request(now, &f),
            State::AwaitAuthSignature => self.on_auth_signature(now, &f),
            State::AwaitIdent => self.on_ident(now, &f),
            State::AwaitIdentReply => self.on_ident_reply(now, &f),
            _ => Ok(false),
        };
        match result {
            Ok(more) => more && self.state != State::Closed,
            Err(fault) => {
                log::warn!(target: LOG, "{self}: {tag}: {fault}");
                self.fault(now, fault);
                false
            }
        }
    }

    /// A frame that does not belong to the current state (Ceph faults on these).
    fn unexpected(&self, tag: Tag) -> Fault {
        if tag.0 == 0 || tag.0 > Tag::ACK.0 {
            Fault::UnknownTag(tag.0)
        } else {
            Fault::Misbehaved("frame not allowed in this state")
        }
    }

    // ----- handshake: connect side -----

    fn on_hello(&mut self, now: Instant, f: &Frame) -> Result<bool, Fault> {
        if f.tag() != Tag::HELLO {
            return Err(self.unexpected(f.tag()));
        }
        let hello = Hello::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
        if let Some(expected) = self.peer_type {
            if hello.entity_type != expected {
                log::warn!(target: LOG, "{self}: peer is a {}, expected a {expected}", hello.entity_type);
                return Err(Fault::Misbehaved("peer is not the entity type dialled"));
            }
        }
        // ms_learn_addr_from_peer: adopt the IP the acceptor saw, keep port and nonce.
        if let Some(seen) = hello.peer_addr.addr {
            for a in &mut self.my_addrs.addrs {
                if a.is_blank_ip() {
                    a.addr = Some(SocketAddr::new(seen.ip(), a.port()));
                }
            }
        }
        self.start_auth(now)
    }

    /// Sends AUTH_REQUEST with our next untried method; with none left we give up for
    /// good (Ceph's `get_auth_request` failing: stop + reset). Returns whether to go on
    /// reading.
    fn start_auth(&mut self, _now: Instant) -> Result<bool, Fault> {
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        let provider = self.config.auth.clone();
        for method in provider.methods(AuthRole::Connector, peer_type) {
            if self.auth.tried.contains(&method) {
                continue;
            }
            let Some(mut client) = provider.client(peer_type, method) else { continue };
            let modes = filter_modes(method, &provider.modes(AuthRole::Connector, peer_type));
            if modes.is_empty() {
                self.auth.tried.push(method);
                continue;
            }
            let payload = client.build_request().map_err(Fault::Decode)?;
            self.auth.method = method;
            self.auth.offered = modes.clone();
            self.auth.client = Some(client);
            self.send_control(&AuthRequest { method, preferred_modes: modes, payload });
            self.set_state(State::AwaitAuthReply);
            return Ok(true);
        }
        self.refuse("no auth method left that both sides allow");
        Ok(false)
    }

    fn count_round(&mut self) -> Result<(), Fault> {
        self.auth.rounds += 1;
        if self.auth.rounds > self.config.max_auth_rounds {
            return Err(Fault::Misbehaved("too many handshake rounds"));
        }
        Ok(())
    }

    fn on_auth_reply(&mut self, now: Instant, f: &Frame) -> Result<bool, Fault> {
        self.count_round()?;
        match f.tag() {
            Tag::AUTH_BAD_METHOD => {
                let bad = AuthBadMethod::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                log::info!(target: LOG, "{self}: auth method {} refused ({}), allowed {:?} modes {:?}", bad.method, bad.result, bad.allowed_methods, bad.allowed_modes);
                self.auth.tried.push(self.auth.method);
                self.auth.client = None;
                // Only methods the peer allows are worth another request.
                let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
                for m in self.config.auth.methods(AuthRole::Connector, peer_type) {
                    if !bad.allowed_methods.contains(&m) && !self.auth.tried.contains(&m) {
                        self.auth.tried.push(m);
                    }
                }
                self.start_auth(now)
            }
            Tag::AUTH_REPLY_MORE => {
                let more = AuthReplyMore::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                let Some(client) = self.auth.client.as_mut() else {
                    return Err(Fault::Misbehaved("AUTH_REPLY_MORE without a request"));
                };
                let payload = client.handle_reply_more(&more.payload).map_err(Fault::Decode)?;
                self.send_control(&AuthRequestMore { payload });
                Ok(true)
            }
            Tag::AUTH_DONE => {
                let done = AuthDone::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                if !self.auth.offered.contains(&done.con_mode) {
                    return Err(Fault::Misbehaved("AUTH_DONE with a mode we did not offer"));
                }
                let Some(client) = self.auth.client.as_mut() else {
                    return Err(Fault::Misbehaved("AUTH_DONE without a request"));
                };
                let outcome = client
                    .handle_done(done.global_id, done.con_mode, &done.payload)
                    .map_err(Fault::Decode)?;
                self.global_id = done.global_id;
                self.con_mode = done.con_mode;
                // The connector's transcripts end with the AUTH_DONE it read.
                self.finish_auth(outcome)?;
                Ok(true)
            }
            other => Err(self.unexpected(other)),
        }
    }

    /// After AUTH_DONE (read by a connector, written by an acceptor): stop recording
    /// the transcript, switch to the negotiated mode and send our AUTH_SIGNATURE over
    /// what we received (Ceph's `finish_auth` / the tail of `handle_auth_done`).
    fn finish_auth(&mut self, outcome: AuthOutcome) -> Result<(), Fault> {
        self.auth.recording = false;
        self.auth.session_key = outcome.session_key;
        let sig =
            AuthSignature::compute(self.auth.session_key.as_deref(), &self.auth.rx_transcript);
        self.auth.rx_transcript = Vec::new();
        self.install_mode(&outcome.connection_secret)?;
        self.send_control(&sig);
        self.set_state(State::AwaitAuthSignature);
        Ok(())
    }

    /// Switches both directions to the negotiated mode (after AUTH_DONE).
    fn install_mode(&mut self, secret: &[u8]) -> Result<(), Fault> {
        if self.con_mode != ConMode::SECURE {
            return Ok(());
        }
        let (rx, tx) = GcmStream::pair_from_secret(secret, self.side == Side::Connect)
            .map_err(Fault::Decode)?;
        self.decoder.set_secure(rx).map_err(Fault::Decode)?;
        self.encoder = FrameEncoder::secure(tx);
        Ok(())
    }

    fn on_auth_signature(&mut self, _now: Instant, f: &Frame) -> Result<bool, Fault> {
        if f.tag() != Tag::AUTH_SIGNATURE {
            return Err(self.unexpected(f.tag()));
        }
        let got = AuthSignature::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
        let want =
            AuthSignature::compute(self.auth.session_key.as_deref(), &self.auth.tx_transcript);
        if got != want {
            return Err(Fault::Misbehaved("pre-auth signature mismatch"));
        }
        self.auth.tx_transcript = Vec::new();
        if self.side == Side::Connect {
            self.send_ident_or_reconnect();
        } else {
            self.set_state(State::AwaitIdent);
        }
        Ok(true)
    }

    #[doc(alias = "finish_client_auth")]
    fn send_ident_or_reconnect(&mut self) {
        if self.session.server_cookie == 0 {
            if !self.lossy && self.session.client_cookie == 0 {
                self.session.client_cookie = self.config.cookies.next();
            }
            let ident = ClientIdent {
                addrs: self.my_addrs.clone(),
                target_addr: self.peer_addr.unwrap_or_default(),
                gid: self.config.my_name.num,
                global_seq: self.global_seq,
                supported_features: self.config.features_supported,
                required_features: self.config.features_required | MSGR2_REQUIRED,
                flags: if self.lossy { IDENT_FLAG_LOSSY } else { 0 },
                client_cookie: if self.lossy { 0 } else { self.session.client_cookie },
            };
            log::debug!(target: LOG, "{self}: client ident gs={} cookie={:#x}", ident.global_seq, ident.client_cookie);
            self.send_control(&ident);
            self.reconnecting = false;
        } else {
            let r = SessionReconnect {
                addrs: self.my_addrs.clone(),
                client_cookie: self.session.client_cookie,
                server_cookie: self.session.server_cookie,
                global_seq: self.global_seq,
                connect_seq: self.session.connect_seq,
                msg_seq: self.session.msgs.in_seq,
            };
            log::debug!(target: LOG, "{self}: reconnect gs={} cs={} ms={}", r.global_seq, r.connect_seq, r.msg_seq);
            self.send_control(&r);
            self.reconnecting = true;
        }
        self.set_state(State::AwaitIdentReply);
    }

    fn on_ident_reply(&mut self, now: Instant, f: &Frame) -> Result<bool, Fault> {
        let s0 = &f.segments[0];
        let reconnect_only = |me: &Self| {
            if me.reconnecting {
                Ok(())
            } else {
                Err(Fault::Misbehaved("session reply to an ident that was not a reconnect"))
            }
        };
        match f.tag() {
            Tag::SERVER_IDENT => {
                if self.reconnecting {
                    return Err(Fault::Misbehaved("SERVER_IDENT in answer to a reconnect"));
                }
                let si = ServerIdent::from_segment(s0).map_err(Fault::Decode)?;
                let target = self.peer_addr.unwrap_or_default();
                if !si.addrs.addrs.contains(&target) {
                    log::warn!(target: LOG, "{self}: peer identifies as {:?}, not {target}", si.addrs);
                    return Err(Fault::AddrMismatch);
                }
                let missing = si.supported_features.missing_from(self.config.features_required);
                if !missing.is_empty() {
                    log::warn!(target: LOG, "{self}: peer lacks required features {missing}");
                    self.refuse("peer lacks required features");
                    return Ok(false);
                }
                self.session.server_cookie = si.server_cookie;
                self.session.peer_global_seq = si.global_seq;
                self.session.peer_gid = si.gid;
                self.session.features = si.supported_features & self.config.features_supported;
                self.lossy = si.is_lossy();
                self.peer_addrs = si.addrs;
                self.policy.lossy = self.lossy;
                self.open(now);
                Ok(true)
            }
            Tag::IDENT_MISSING_FEATURES => {
                let m = IdentMissingFeatures::from_segment(s0).map_err(Fault::Decode)?;
                log::warn!(target: LOG, "{self}: peer requires features we lack: {:#x}", m.missing_features);
                self.refuse("peer requires features we lack");
                Ok(false)
            }
            Tag::SESSION_RECONNECT_OK => {
                reconnect_only(self)?;
                let ok = SessionReconnectOk::from_segment(s0).map_err(Fault::Decode)?;
                self.session.msgs.discard_requeued_up_to(ok.msg_seq);
                self.resuming = true;
                self.open(now);
                Ok(true)
            }
            Tag::SESSION_RETRY => {
                reconnect_only(self)?;
                let r = SessionRetry::from_segment(s0).map_err(Fault::Decode)?;
                self.count_round()?;
                self.session.connect_seq = r.connect_seq.wrapping_add(1);
                self.send_ident_or_reconnect();
                Ok(true)
            }
            Tag::SESSION_RETRY_GLOBAL => {
                reconnect_only(self)?;
                let r = SessionRetryGlobal::from_segment(s0).map_err(Fault::Decode)?;
                self.count_round()?;
                self.global_seq = self.config.global_seq_above(r.global_seq);
                self.send_ident_or_reconnect();
                Ok(true)
            }
            Tag::SESSION_RESET => {
                reconnect_only(self)?;
                let r = SessionReset::from_segment(s0).map_err(Fault::Decode)?;
                self.count_round()?;
                log::info!(target: LOG, "{self}: peer reset our session (full {})", r.full);
                if r.full {
                    self.session.reset();
                    self.keepalive_pending = None;
                    self.events.push_back(Event::RemoteReset);
                } else {
                    self.session.server_cookie = 0;
                    self.session.connect_seq = 0;
                    self.session.msgs.in_seq = 0;
                }
                self.send_ident_or_reconnect();
                Ok(true)
            }
            Tag::WAIT => {
                Wait::from_segment(s0).map_err(Fault::Decode)?;
                Err(Fault::Wait)
            }
            other => Err(self.unexpected(other)),
        }
    }

    // ----- handshake: accept side -----

    fn on_peer_hello(&mut self, _now: Instant, f: &Frame) -> Result<bool, Fault> {
        if f.tag() != Tag::HELLO {
            return Err(self.unexpected(f.tag()));
        }
        let hello = Hello::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
        self.peer_type = Some(hello.entity_type);
        self.set_state(State::AwaitAuthRequest);
        Ok(true)
    }

    fn on_auth_request(&mut self, _now: Instant, f: &Frame) -> Result<bool, Fault> {
        self.count_round()?;
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        let provider = self.config.auth.clone();
        let (payload, more) = match (self.state, f.tag()) {
            (State::AwaitAuthRequest, Tag::AUTH_REQUEST) => {
                let req = AuthRequest::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                self.auth.method = req.method;
                let allowed = provider.methods(AuthRole::Acceptor, peer_type);
                let modes =
                    filter_modes(req.method, &provider.modes(AuthRole::Acceptor, peer_type));
                let mode = pick_mode(&req.preferred_modes, &modes);
                let server = allowed
                    .contains(&req.method)
                    .then(|| provider.server(peer_type, req.method))
                    .flatten();
                match (mode, server) {
                    (Some(mode), Some(server)) => {
                        self.auth.mode = mode;
                        self.auth.server = Some(server);
                    }
                    _ => {
                        self.send_bad_method(EOPNOTSUPP);
                        return Ok(true);
                    }
                }
                (req.payload, false)
            }
            (State::AwaitAuthRequestMore, Tag::AUTH_REQUEST_MORE) => {
                let more = AuthRequestMore::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                (more.payload, true)
            }
            (_, other) => return Err(self.unexpected(other)),
        };
        let mode = self.auth.mode;
        let Some(server) = self.auth.server.as_mut() else {
            return Err(Fault::Misbehaved("auth round without a method"));
        };
        match server.handle_request(mode, more, &payload) {
            AuthStep::More(payload) => {
                self.send_control(&AuthReplyMore { payload });
                self.set_state(State::AwaitAuthRequestMore);
            }
            AuthStep::Reject { result } => {
                self.auth.server = None;
                self.send_bad_method(result);
            }
            AuthStep::Busy => {
                log::info!(target: LOG, "{self}: auth busy, dropping the connection");
                self.finish(Initiator::Library, CloseReason::Refused("authentication busy"));
                return Ok(false);
            }
            AuthStep::Done { global_id, payload, outcome } => {
                self.global_id = global_id;
                self.con_mode = mode;
                self.send_control(&AuthDone { global_id, con_mode: mode, payload });
                // The acceptor's transcripts end with the AUTH_DONE it wrote.
                self.finish_auth(outcome)?;
            }
        }
        Ok(true)
    }

    fn send_bad_method(&mut self, result: i32) {
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        let provider = self.config.auth.clone();
        let bad = AuthBadMethod {
            method: self.auth.method,
            result,
            allowed_methods: provider.methods(AuthRole::Acceptor, peer_type),
            allowed_modes: provider.modes(AuthRole::Acceptor, peer_type),
        };
        log::info!(target: LOG, "{self}: refusing auth method {} ({result})", bad.method);
        self.send_control(&bad);
        self.set_state(State::AwaitAuthRequest);
    }

    /// Whether `target` names us: one of our addresses, where a blank IP of ours
    /// matches the IP the peer reached us on.
    fn is_my_addr(&self, target: &EntityAddr) -> bool {
        self.config.my_addrs.addrs.iter().any(|mine| {
            if mine == target {
                return true;
            }
            mine.is_blank_ip()
                && mine.ty == target.ty
                && mine.nonce == target.nonce
                && mine.port() == target.port()
                && target.addr.map(|a| a.ip()) == self.socket_local.map(|a| a.ip())
        })
    }

    fn on_ident(&mut self, _now: Instant, f: &Frame) -> Result<bool, Fault> {
        let socket_peer = self.socket_peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        let req = match f.tag() {
            Tag::CLIENT_IDENT => {
                let ci = ClientIdent::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                if ci.addrs.addrs.first().is_none_or(|a| *a == EntityAddr::default()) {
                    return Err(Fault::Misbehaved("CLIENT_IDENT without addresses"));
                }
                if !self.is_my_addr(&ci.target_addr) {
                    log::warn!(target: LOG, "{self}: peer is trying to reach {} which is not us", ci.target_addr);
                    return Err(Fault::AddrMismatch);
                }
                let missing =
                    (self.config.features_required | MSGR2_REQUIRED).0 & !ci.supported_features.0;
                if missing != 0 {
                    // The peer may try again on this connection, but not forever.
                    self.count_round()?;
                    log::warn!(target: LOG, "{self}: peer lacks required features {missing:#x}");
                    self.send_control(&IdentMissingFeatures { missing_features: missing });
                    return Ok(true);
                }
                self.session.peer_gid = ci.gid;
                self.session.features = ci.supported_features & self.config.features_supported;
                AcceptRequest {
                    peer_addrs: ci.addrs.clone(),
                    peer_type,
                    socket_peer,
                    kind: RequestKind::Ident {
                        global_seq: ci.global_seq,
                        client_cookie: ci.client_cookie,
                        features: ci.supported_features,
                        gid: ci.gid,
                        lossy: ci.is_lossy(),
                    },
                }
            }
            Tag::SESSION_RECONNECT => {
                let r = SessionReconnect::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                AcceptRequest {
                    peer_addrs: r.addrs.clone(),
                    peer_type,
                    socket_peer,
                    kind: RequestKind::Reconnect {
                        global_seq: r.global_seq,
                        connect_seq: r.connect_seq,
                        client_cookie: r.client_cookie,
                        server_cookie: r.server_cookie,
                        msg_seq: r.msg_seq,
                    },
                }
            }
            other => return Err(self.unexpected(other)),
        };
        self.peer_addrs = req.peer_addrs.clone();
        let v2 = msgr2_addr(&req.peer_addrs);
        self.peer_addr = (v2.port() != 0).then_some(v2);
        log::debug!(target: LOG, "{self}: {:?}", req.kind);
        self.events.push_back(Event::AcceptRequest(req.clone()));
        self.pending_request = Some(req);
        self.set_state(State::AwaitAcceptDecision);
        Ok(false)
    }

    /// A reply after which the peer sends another ident or reconnect (or gives up).
    fn reply_and_wait<F: ControlFrame>(&mut self, now: Instant, f: &F) {
        log::debug!(target: LOG, "{self}: replied {}", F::TAG);
        self.send_control(f);
        self.set_state(State::AwaitIdent);
        self.process(now);
    }

    /// SERVER_IDENT: a new session (Ceph's `send_server_ident`), possibly keeping the
    /// queues of a replaced one.
    fn accept_new_session(
        &mut self,
        now: Instant,
        req: &AcceptRequest,
        kept: Option<Session>,
        reset_existing: bool,
        remote_reset: bool,
    ) {
        let RequestKind::Ident { global_seq, client_cookie, gid, .. } = req.kind else { return };
        let features = self.session.features;
        if let Some(mut s) = kept {
            s.msgs.requeue_sent();
            self.session = s;
            self.resuming = true;
        }
        if remote_reset && reset_existing {
            self.events.push_back(Event::RemoteReset);
        }
        self.remote_reset = remote_reset;
        self.once_ready = true;
        self.session.features = features;
        self.session.peer_gid = gid;
        self.session.client_cookie = client_cookie;
        self.session.server_cookie = if self.lossy { 0 } else { self.config.cookies.next() };
        self.session.peer_global_seq = global_seq;
        // A new session numbers from 1 both ways; kept messages are renumbered.
        self.session.msgs.in_seq = 0;
        self.session.msgs.out_seq = 0;
        let si = ServerIdent {
            addrs: self.config.my_addrs.clone(),
            gid: self.config.my_name.num,
            global_seq: self.config.next_global_seq(),
            supported_features: self.config.features_supported,
            required_features: self.config.features_required | MSGR2_REQUIRED,
            flags: if self.lossy { IDENT_FLAG_LOSSY } else { 0 },
            server_cookie: self.session.server_cookie,
        };
        self.send_control(&si);
        self.open(now);
        self.process(now);
    }

    /// SESSION_RECONNECT_OK: the session resumes (Ceph's `send_reconnect_ok`).
    fn accept_resume(&mut self, now: Instant, req: &AcceptRequest, mut s: Session) {
        let RequestKind::Reconnect { global_seq, connect_seq, msg_seq, .. } = req.kind else {
            return;
        };
        s.msgs.requeue_sent();
        self.session = s;
        self.once_ready = true;
        self.resuming = true;
        self.session.connect_seq = connect_seq;
        self.session.peer_global_seq = global_seq;
        self.session.msgs.discard_requeued_up_to(msg_seq);
        let in_seq = self.session.msgs.in_seq;
        self.send_control(&SessionReconnectOk { msg_seq: in_seq });
        self.open(now);
        self.process(now);
    }

    // ----- the ready session -----

    fn open(&mut self, now: Instant) {
        self.set_state(State::Open);
        self.handshake_deadline = None;
        self.backoff = Duration::ZERO;
        self.attempt = 0;
        self.once_ready = true;
        self.rx_msg = RxMsg::Idle;
        self.last_rx = now;
        self.keepalive_due = self.config.keepalive_interval.map(|every| now + every);
        self.auth = AuthState::default();
        let peer_type = self.peer_type.unwrap_or(EntityType::ANY);
        // The peer's v2 address, else its first one (a client's ANY address).
        let peer_addr =
            self.peer_addr.or_else(|| self.peer_addrs.addrs.first().copied()).unwrap_or_default();
        log::info!(target: LOG, "{self}: open, {} mode, features {:#x}, lossy {}", self.con_mode, self.session.features.bits(), self.lossy);
        self.events.push_back(Event::Opened(Opened {
            peer_addr,
            peer_type,
            features: self.session.features,
            connect_seq: u32::try_from(self.session.connect_seq).unwrap_or(u32::MAX),
            lossy: self.lossy,
            resumed: self.resuming,
            remote_reset: self.remote_reset,
        }));
        self.resuming = false;
        self.remote_reset = false;
    }

    fn on_open_frame(&mut self, now: Instant, f: Frame) -> Result<bool, Fault> {
        match f.tag() {
            Tag::MESSAGE => {
                let rx = std::mem::replace(&mut self.rx_msg, RxMsg::Idle);
                let RxMsg::Reading { header, discard } = rx else {
                    return Err(Fault::Misbehaved("MESSAGE without a header"));
                };
                if f.aborted || discard {
                    log::debug!(target: LOG, "{self}: dropped message seq {} (aborted {})", header.seq, f.aborted);
                    return Ok(true);
                }
                self.deliver(now, header, f);
                Ok(true)
            }
            Tag::KEEPALIVE2 => {
                let k = Keepalive2::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                self.send_control(&Keepalive2Ack { stamp: k.stamp });
                self.last_keepalive = Some(now);
                self.events.push_back(Event::KeepaliveReceived);
                Ok(true)
            }
            Tag::KEEPALIVE2_ACK => {
                let k = Keepalive2Ack::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                self.last_keepalive_ack = Some(k.stamp);
                self.events.push_back(Event::KeepaliveAck(k.stamp));
                Ok(true)
            }
            Tag::ACK => {
                let a = Ack::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
                if !self.lossy {
                    self.session.msgs.ack(a.seq);
                }
                self.events.push_back(Event::Acked { up_to: a.seq });
                Ok(true)
            }
            other => Err(self.unexpected(other)),
        }
    }

    fn deliver(&mut self, now: Instant, h: MsgHeader2, f: Frame) {
        let [_, front, middle, data] = f.segments;
        if h.seq > self.session.msgs.in_seq.wrapping_add(1) {
            log::info!(target: LOG, "{self}: missed message? got seq {}, expected {}", h.seq, self.session.msgs.in_seq + 1);
        }
        self.session.msgs.in_seq = h.seq;
        if !self.lossy {
            self.ack_pending = true;
            self.session.msgs.ack(h.ack_seq);
        }
        let len32 = |b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX);
        let header = MsgHeader {
            seq: h.seq,
            tid: h.tid,
            msg_type: h.msg_type,
            priority: h.priority,
            version: h.version,
            front_len: len32(&front),
            middle_len: len32(&middle),
            data_len: len32(&data),
            data_off: h.data_off,
            src: EntityName::new(self.peer_type.unwrap_or(EntityType::ANY), self.session.peer_gid),
            compat_version: h.compat_version,
            reserved: h.reserved,
            crc: 0,
        };
        let footer = MsgFooter { flags: FooterFlags::COMPLETE, ..MsgFooter::default() };
        let mut msg = Message::from_parts(&header, front, middle, data, footer);
        msg.set_recv_stamp(now);
        self.events.push_back(Event::Message(msg));
    }

    /// A wall-clock stamp for `now`, extrapolated from the last stamp the driver gave.
    fn stamp_at(&self, now: Instant) -> KeepaliveStamp {
        let (at, base) = self.stamp_anchor;
        let total =
            Duration::new(u64::from(base.sec), base.nsec) + now.saturating_duration_since(at);
        KeepaliveStamp { sec: total.as_secs() as u32, nsec: total.subsec_nanos() }
    }

    // ----- writing -----

    /// Raw bytes (the banner), recorded in the transcript while pre-auth.
    fn send_raw(&mut self, b: &[u8]) {
        if self.auth.recording {
            self.auth.tx_transcript.extend_from_slice(b);
        }
        self.ctrl.extend_from_slice(b);
    }

    /// Encodes a control frame in the current mode and queues it.
    fn send_control<F: ControlFrame>(&mut self, f: &F) {
        let seg = f.to_segment();
        let mut buf = BytesMut::new();
        let mut spill = Vec::new();
        match self.encoder.encode(F::TAG, &[&seg], &mut buf, &mut spill) {
            Ok(_) => {
                for s in spill {
                    self.send_raw(&s);
                }
                self.send_raw(&buf);
            }
            Err(e) => self.tx_failed = Some(e),
        }
    }

    // ----- faults -----

    fn fault(&mut self, now: Instant, fault: Fault) {
        if self.state == State::Closed {
            return;
        }
        let was_open = self.state == State::Open;
        log::info!(target: LOG, "{self}: fault: {fault}");
        if !self.lossy {
            self.session.msgs.requeue_sent();
        }
        let ctx = FaultContext {
            lossy: self.lossy,
            server: self.policy.server,
            standby: self.policy.standby,
            side: self.side,
            was_open,
            once_ready: self.once_ready,
            has_pending: !self.session.msgs.queue.is_empty() || self.keepalive_pending.is_some(),
            wait: fault == Fault::Wait,
            prev_backoff: self.backoff,
            initial_backoff: self.config.initial_backoff,
            max_backoff: self.config.max_backoff,
        };
        let mut action = fault_action(&ctx);
        // A peer without a dialable v2 address (a pure client) cannot be dialled back.
        if matches!(action, FaultAction::Reconnect { .. })
            && self.peer_addr.is_none_or(|a| a.port() == 0)
        {
            action = FaultAction::Standby;
        }
        self.reset_transport();
        self.pending_request = None;
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
                // Ceph's ProtocolV2::_fault: connect_seq counts attempts within a session.
                if self.session.server_cookie != 0 {
                    self.session.connect_seq = self.session.connect_seq.wrapping_add(1);
                }
                self.backoff = after;
                if after.is_zero() {
                    self.start_reconnect(now);
                } else {
                    self.set_state(State::AwaitBackoff { until: now + after });
                }
            }
        }
    }

    fn start_reconnect(&mut self, now: Instant) {
        self.attempt = self.attempt.saturating_add(1);
        self.side = Side::Connect;
        self.handshake_deadline = Some(now + self.config.handshake_timeout);
        self.set_state(State::AwaitTransport);
        self.events.push_back(Event::Reconnect { attempt: self.attempt });
    }

    fn wake_from_standby(&mut self) {
        if self.state == State::Standby
            && !self.policy.server
            && self.peer_addr.is_some_and(|a| a.port() != 0)
        {
            log::debug!(target: LOG, "{self}: waking from standby");
            if self.session.server_cookie != 0 {
                self.session.connect_seq = self.session.connect_seq.wrapping_add(1);
            }
            self.start_reconnect(self.now);
        }
    }

    /// The peer's banner is incompatible: a connector gives up for good (a retry would
    /// meet the same banner); an acceptor just drops the connection.
    fn incompatible(&mut self, now: Instant, e: Error) {
        log::warn!(target: LOG, "{self}: {e}");
        if self.side == Side::Connect {
            self.refuse("incompatible msgr2 peer");
        } else {
            self.fault(now, Fault::Decode(e));
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
        self.decoder = FrameDecoder::new(self.config.limits);
        self.encoder = FrameEncoder::crc();
        self.rx_msg = RxMsg::Idle;
        self.auth = AuthState::default();
        self.con_mode = ConMode::UNKNOWN;
        self.ack_pending = false;
        self.reconnecting = false;
        self.tx_failed = None;
    }

    /// Requests to the driver about the connection that just failed are moot.
    fn drop_stale_requests(&mut self) {
        self.events.retain(|e| !matches!(e, Event::AcceptRequest(_) | Event::NeedBudget { .. }));
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

    fn set_state(&mut self, next: State) {
        if self.state != next {
            log::debug!(target: LOG, "{self}: {} -> {}", self.state.name(), next.name());
            self.state = next;
        }
    }
}

impl fmt::Display for Connection {
    /// The log prefix: id, peer, state, mode and `cs/gs/in/out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v2#{} ", self.id)?;
        match (self.peer_type, self.peer_addr.and_then(|a| a.addr).or(self.socket_peer)) {
            (Some(t), Some(a)) => write!(f, "{t}@{a}")?,
            (None, Some(a)) => write!(f, "?@{a}")?,
            (Some(t), None) => write!(f, "{t}@?")?,
            (None, None) => f.write_str("?")?,
        }
        write!(
            f,
            " {} {} cs={} gs={} in={} out={}",
            self.state.name(),
            self.con_mode,
            self.session.connect_seq,
            self.global_seq,
            self.session.msgs.in_seq,
            self.session.msgs.out_seq
        )
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connection({self})")
    }
}
