//! [`Connection`]: the one type a messenger's driver drives, whichever protocol the
//! connection speaks (the protocol seam).
//!
//! An enum of the two machines, dispatched by `match` (no trait object on the
//! per-message path), plus the accept side's short first state that reads the peer's
//! banner to pick one ([`Sniffer`]). Every method is [`crate::Machine`]'s, with the same
//! contract: see [`crate::session::Machine`] for the call order.
//!
//! ```text
//! connect(V1 | V2) ─────────────────────────────────► V1 | V2
//! accept_v1 / accept_v2 (a listener bound to one) ──► V1 | V2
//! accept (both) ─► Sniffing ─ peer's 8 banner bytes ─► V1 | V2
//!                     └── bad banner, timeout, EOF ─► closed (Event::Closed)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::accept::{Sniffed, Sniffer};
use crate::auth::{AuthPeer, ConMode};
use crate::message::Message;
use crate::session::{
    AuthVerdict, CloseReason, Config, Cookies, Decision, Event, ExistingSession, Initiator, Policy,
    Seqs, Session, SessionState,
};
use crate::types::{EntityAddr, EntityType, Features};
use crate::wire::KeepaliveStamp;
use crate::{v1, v2};

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// msgr v1 (`ceph v027`; Ceph's `ms_bind_msgr1`, port 6789).
    V1,
    /// msgr2.1 (`ceph v2\n`; Ceph's `ms_bind_msgr2`, port 3300).
    V2,
}

/// One connection of either protocol (connect or accept side) and the session it
/// carries.
#[derive(Debug)]
pub enum Connection {
    /// msgr v1.
    V1(v1::Connection),
    /// msgr2.
    V2(v2::Connection),
    /// Accept side of a listener serving both protocols: the peer's banner is not read
    /// yet ([`Connection::accept`]).
    Sniffing(Sniffer),
}

/// `match` over the two machines; `$sniff` is what a sniffing acceptor does.
macro_rules! each {
    ($self:expr, $c:ident => $machine:expr, $s:ident => $sniff:expr) => {
        match $self {
            Connection::V1($c) => $machine,
            Connection::V2($c) => $machine,
            Connection::Sniffing($s) => $sniff,
        }
    };
}

/// The policy of a connection with no session yet.
static NO_POLICY: Policy = Policy {
    lossy: false,
    server: false,
    standby: false,
    resetcheck: false,
    features_supported: Features::PACIFIC_ADVERTISED,
    features_required: Features::REQUIRED_DEFAULT,
};

impl Connection {
    // ----- constructors -----

    /// A connect-side machine of `version` for `peer_addr` (of type `peer_type`). The
    /// driver dials and calls [`Connection::handle_transport_connected`].
    pub fn connect(
        config: Arc<Config>,
        version: ProtocolVersion,
        policy: Policy,
        peer_addr: EntityAddr,
        peer_type: EntityType,
        now: Instant,
    ) -> Self {
        match version {
            ProtocolVersion::V1 => {
                Connection::V1(v1::Connection::connect(config, policy, peer_addr, peer_type, now))
            }
            ProtocolVersion::V2 => {
                Connection::V2(v2::Connection::connect(config, policy, peer_addr, peer_type, now))
            }
        }
    }

    /// An accept-side connection for a listener serving both protocols: it reads the
    /// peer's banner first and becomes V1 or V2 (see [`crate::Sniffer`] for why it
    /// writes nothing until then).
    pub fn accept(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        Connection::Sniffing(Sniffer::new(config, socket_peer, socket_local, now))
    }

    /// An accept-side msgr v1 machine (a listener bound to v1 only): its banner is
    /// ready at once, as Ceph's.
    pub fn accept_v1(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        Connection::V1(v1::Connection::accept(config, socket_peer, socket_local, now))
    }

    /// An accept-side msgr2 machine (a listener bound to v2 only): its banner is ready
    /// at once, as Ceph's.
    pub fn accept_v2(
        config: Arc<Config>,
        socket_peer: SocketAddr,
        socket_local: SocketAddr,
        now: Instant,
    ) -> Self {
        Connection::V2(v2::Connection::accept(config, socket_peer, socket_local, now))
    }

    // ----- which protocol -----

    /// The protocol, once known.
    pub fn protocol(&self) -> Option<ProtocolVersion> {
        match self {
            Connection::V1(_) => Some(ProtocolVersion::V1),
            Connection::V2(_) => Some(ProtocolVersion::V2),
            Connection::Sniffing(_) => None,
        }
    }

    /// msgr2's connection mode (None for v1, or before the protocol is known).
    pub fn con_mode(&self) -> Option<ConMode> {
        match self {
            Connection::V2(c) => Some(c.con_mode()),
            _ => None,
        }
    }

    /// Accept side: the server cookie a lossless msgr2 session opened by the pending
    /// CLIENT_IDENT gets, known before the accept decision (0 for v1, or before an
    /// ident). The messenger publishes it when the decision registers the connection,
    /// before the session opens.
    pub fn offered_server_cookie(&self) -> u64 {
        match self {
            Connection::V2(c) => c.offered_server_cookie(),
            _ => 0,
        }
    }

    /// The msgr v1 machine, if this is one.
    pub fn as_v1(&self) -> Option<&v1::Connection> {
        match self {
            Connection::V1(c) => Some(c),
            _ => None,
        }
    }

    /// The msgr2 machine, if this is one.
    pub fn as_v2(&self) -> Option<&v2::Connection> {
        match self {
            Connection::V2(c) => Some(c),
            _ => None,
        }
    }

    // ----- inputs -----

    /// See [`crate::Machine::handle_transport_connected`].
    #[inline]
    pub fn handle_transport_connected(&mut self, now: Instant) {
        each!(self, c => c.handle_transport_connected(now), _s => {})
    }

    /// See [`crate::Machine::handle_bytes`]. A sniffing acceptor becomes V1 or V2 here.
    #[inline]
    pub fn handle_bytes(&mut self, now: Instant, data: Bytes) {
        let next = match self {
            Connection::V1(c) => return c.handle_bytes(now, data),
            Connection::V2(c) => return c.handle_bytes(now, data),
            Connection::Sniffing(s) => s.handle_bytes(now, data),
        };
        match next {
            Sniffed::Pending => {}
            Sniffed::V1(c) => *self = Connection::V1(c),
            Sniffed::V2(c) => *self = Connection::V2(c),
        }
    }

    /// See [`crate::Machine::direct_read_buffer`].
    #[inline]
    pub fn direct_read_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        each!(self, c => c.direct_read_buffer(), _s => None)
    }

    /// See [`crate::Machine::handle_direct_read`].
    #[inline]
    pub fn handle_direct_read(&mut self, now: Instant, n: usize) {
        each!(self, c => c.handle_direct_read(now, n), _s => {})
    }

    /// See [`crate::Machine::handle_transport_closed`].
    #[inline]
    pub fn handle_transport_closed(&mut self, now: Instant) {
        each!(self, c => c.handle_transport_closed(now), s => s.handle_transport_closed())
    }

    /// See [`crate::Machine::handle_write_blocked`].
    #[inline]
    pub fn handle_write_blocked(&mut self, now: Instant) {
        each!(self, c => c.handle_write_blocked(now), _s => {})
    }

    /// See [`crate::Machine::handle_write_progress`].
    #[inline]
    pub fn handle_write_progress(&mut self, now: Instant) {
        each!(self, c => c.handle_write_progress(now), _s => {})
    }

    /// See [`crate::Machine::handle_timeout`].
    #[inline]
    pub fn handle_timeout(&mut self, now: Instant) {
        each!(self, c => c.handle_timeout(now), s => s.handle_timeout(now))
    }

    /// See [`crate::Machine::handle_accept_decision`].
    #[inline]
    pub fn handle_accept_decision(
        &mut self,
        now: Instant,
        policy: Policy,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        each!(self, c => c.handle_accept_decision(now, policy, decision, transferred), _s => {})
    }

    /// See [`crate::Machine::handle_authorizer_verdict`].
    #[inline]
    pub fn handle_authorizer_verdict(&mut self, now: Instant, verdict: AuthVerdict) {
        each!(self, c => c.handle_authorizer_verdict(now, verdict), _s => {})
    }

    /// See [`crate::Machine::set_progress_floor`].
    pub fn set_progress_floor(&mut self, now: Instant, bytes: u64) {
        each!(self, c => c.set_progress_floor(now, bytes), _s => {})
    }

    /// See [`crate::Machine::grant_budget`].
    #[inline]
    pub fn grant_budget(&mut self, now: Instant) {
        each!(self, c => c.grant_budget(now), _s => {})
    }

    /// See [`crate::Machine::add_receive_credit`].
    #[inline]
    pub fn add_receive_credit(&mut self, messages: u32, bytes: u64) {
        each!(self, c => c.add_receive_credit(messages, bytes), _s => {})
    }

    /// See [`crate::Machine::take_receive_credit`].
    #[inline]
    pub fn take_receive_credit(&mut self) -> (u32, u64) {
        each!(self, c => c.take_receive_credit(), _s => (0, 0))
    }

    // ----- commands -----

    /// See [`crate::Machine::set_clock`].
    #[inline]
    pub fn set_clock(&mut self, now: Instant) {
        each!(self, c => c.set_clock(now), _s => {})
    }

    /// See [`crate::Machine::anchor_wall_clock`] (a session not yet past its banner has
    /// no keepalives to stamp).
    pub fn anchor_wall_clock(&mut self, wall_clock: KeepaliveStamp) {
        each!(self, c => c.anchor_wall_clock(wall_clock), _s => {})
    }

    /// See [`crate::Machine::send_message`].
    #[inline]
    pub fn send_message(&mut self, msg: Message) {
        each!(self, c => c.send_message(msg), s => s.send_message(msg))
    }

    /// See [`crate::Machine::send_messages`].
    #[inline]
    pub fn send_messages(&mut self, msgs: impl IntoIterator<Item = Message>) {
        each!(self, c => c.send_messages(msgs), s => msgs.into_iter().for_each(|m| s.send_message(m)))
    }

    /// See [`crate::Machine::send_message_vec`].
    #[inline]
    pub fn send_message_vec(
        &mut self,
        msgs: &mut Vec<Message>,
        mut prepare: impl FnMut(&mut Message),
    ) {
        each!(self, c => c.send_message_vec(msgs, prepare), s => msgs.drain(..).for_each(|mut m| {
            prepare(&mut m);
            s.send_message(m)
        }))
    }

    /// See [`crate::Machine::send_keepalive`].
    #[inline]
    pub fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        each!(self, c => c.send_keepalive(wall_clock), s => s.send_keepalive(wall_clock))
    }

    /// See [`crate::Machine::close`].
    #[inline]
    pub fn close(&mut self, now: Instant) {
        each!(self, c => c.close(now), s => s.close(Initiator::Local, CloseReason::Requested))
    }

    /// See [`crate::Machine::take_session`].
    #[inline]
    pub fn take_session(&mut self) -> Option<Session> {
        each!(self, c => c.take_session(), _s => None)
    }

    /// See [`crate::Machine::adopt_keepalive`]; nothing across protocols (a replace
    /// never is).
    pub fn adopt_keepalive(&mut self, old: &mut Connection) {
        match (self, old) {
            (Connection::V1(c), Connection::V1(o)) => c.adopt_keepalive(o),
            (Connection::V2(c), Connection::V2(o)) => c.adopt_keepalive(o),
            _ => {}
        }
    }

    /// See [`crate::Machine::mark_lossy`].
    #[inline]
    pub fn mark_lossy(&mut self) {
        each!(self, c => c.mark_lossy(), s => s.mark_lossy())
    }

    // ----- outputs -----

    /// See [`crate::Machine::poll_transmit`]. A sniffing acceptor writes nothing.
    #[inline]
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        each!(self, c => c.poll_transmit(out), _s => 0)
    }

    /// See [`crate::Machine::poll_timeout`].
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        each!(self, c => c.poll_timeout(), s => s.deadline())
    }

    /// See [`crate::Machine::poll_event`].
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        each!(self, c => c.poll_event(), s => s.poll_event())
    }

    /// The next event if it is a received message (nearly every event while messages
    /// arrive), taken out; else `None`, and the event (if any) waits for
    /// [`Self::poll_event`]. What `poll_event` would hand back, but as the message alone:
    /// a driver loop matching `poll_event`'s `Option<Event>` copied each one through
    /// memory twice, piecewise (~20 instructions per message at 64 B); a message is one
    /// pointer, returned in a register.
    #[inline(always)]
    pub fn poll_message(&mut self) -> Option<Message> {
        let events = match self {
            Connection::V1(c) => &mut c.events,
            Connection::V2(c) => &mut c.events,
            // A sniffing acceptor receives no message.
            Connection::Sniffing(_) => return None,
        };
        // Popped, and put back if it is no message (its slot is free again): looking at
        // the front first cost a second pass over the ring's indices per message.
        match events.pop_front()? {
            Event::Message(msg) => Some(msg),
            ev => {
                events.push_front(ev);
                None
            }
        }
    }

    /// See [`crate::Machine::has_events`].
    #[inline]
    pub fn has_events(&self) -> bool {
        each!(self, c => c.has_events(), s => s.has_events())
    }

    // ----- queries -----

    /// See [`crate::Machine::wants_read`].
    #[inline]
    pub fn wants_read(&self) -> bool {
        each!(self, c => c.wants_read(), s => !s.is_closed())
    }

    /// See [`crate::Machine::wants_write`].
    #[inline]
    pub fn wants_write(&self) -> bool {
        each!(self, c => c.wants_write(), _s => false)
    }

    /// See [`crate::Machine::is_open`].
    #[inline]
    pub fn is_open(&self) -> bool {
        each!(self, c => c.is_open(), _s => false)
    }

    /// See [`crate::Machine::is_closed`].
    #[inline]
    pub fn is_closed(&self) -> bool {
        each!(self, c => c.is_closed(), s => s.is_closed())
    }

    /// See [`crate::Machine::is_backing_off`].
    #[inline]
    pub fn is_backing_off(&self) -> bool {
        each!(self, c => c.is_backing_off(), _s => false)
    }

    /// See [`crate::Machine::state`].
    #[inline]
    pub fn state(&self) -> SessionState {
        each!(self, c => c.state(), s => if s.is_closed() {
            SessionState::Closed
        } else {
            SessionState::Accepting
        })
    }

    /// See [`crate::Machine::existing_session`].
    #[inline]
    pub fn existing_session(&self) -> ExistingSession {
        each!(self, c => c.existing_session(), _s => ExistingSession {
            state: self.state().into(),
            ..ExistingSession::default()
        })
    }

    /// See [`crate::Machine::peer_addr`].
    #[inline]
    pub fn peer_addr(&self) -> Option<&EntityAddr> {
        each!(self, c => c.peer_addr(), _s => None)
    }

    /// See [`crate::Machine::peer_type`].
    #[inline]
    pub fn peer_type(&self) -> Option<EntityType> {
        each!(self, c => c.peer_type(), _s => None)
    }

    /// See [`crate::Machine::features`].
    #[inline]
    pub fn features(&self) -> Features {
        each!(self, c => c.features(), _s => Features::NONE)
    }

    /// See [`crate::Machine::policy`].
    #[inline]
    pub fn policy(&self) -> &Policy {
        each!(self, c => c.policy(), _s => &NO_POLICY)
    }

    /// See [`crate::Machine::is_lossy`].
    #[inline]
    pub fn is_lossy(&self) -> bool {
        each!(self, c => c.is_lossy(), _s => false)
    }

    /// See [`crate::Machine::send_held_cost`].
    #[inline]
    pub fn send_held_cost(&self) -> u64 {
        each!(self, c => c.send_held_cost(), s => s.send_cost())
    }

    /// See [`crate::Machine::sent_held_cost`].
    #[inline]
    pub fn sent_held_cost(&self) -> u64 {
        each!(self, c => c.sent_held_cost(), _s => 0)
    }

    /// See [`crate::Machine::last_keepalive`].
    #[inline]
    pub fn last_keepalive(&self) -> Option<Instant> {
        each!(self, c => c.last_keepalive(), _s => None)
    }

    /// See [`crate::Machine::peer_auth`].
    #[inline]
    pub fn peer_auth(&self) -> Option<&AuthPeer> {
        each!(self, c => c.peer_auth(), _s => None)
    }

    /// See [`crate::Machine::last_keepalive_ack`].
    #[inline]
    pub fn last_keepalive_ack(&self) -> Option<KeepaliveStamp> {
        each!(self, c => c.last_keepalive_ack(), _s => None)
    }

    /// See [`crate::Machine::seqs`].
    #[inline]
    pub fn seqs(&self) -> Seqs {
        each!(self, c => c.seqs(), _s => Seqs::default())
    }

    /// See [`crate::Machine::cookies`].
    #[inline]
    pub fn cookies(&self) -> Cookies {
        each!(self, c => c.cookies(), _s => Cookies::default())
    }

    /// See [`crate::Machine::pending_messages`].
    #[inline]
    pub fn pending_messages(&self) -> usize {
        each!(self, c => c.pending_messages(), s => s.pending())
    }

    /// See [`crate::Machine::messages_sent`].
    #[inline]
    pub fn messages_sent(&self) -> u64 {
        each!(self, c => c.messages_sent(), _s => 0)
    }

    /// See [`crate::Machine::duplicates_dropped`].
    #[inline]
    pub fn duplicates_dropped(&self) -> u64 {
        each!(self, c => c.duplicates_dropped(), _s => 0)
    }

    /// See [`crate::Machine::message_in_progress`].
    #[inline]
    pub fn message_in_progress(&self) -> bool {
        each!(self, c => c.message_in_progress(), _s => false)
    }

    /// See [`crate::Machine::between_messages`].
    #[inline]
    pub fn between_messages(&self) -> bool {
        each!(self, c => c.between_messages(), _s => false)
    }

    /// See [`crate::Machine::receiving_len`].
    pub fn receiving_len(&self) -> u64 {
        each!(self, c => c.receiving_len(), _s => 0)
    }

    /// See [`crate::Machine::receive_held_bytes`].
    #[inline]
    pub fn receive_held_bytes(&self) -> usize {
        each!(self, c => c.receive_held_bytes(), _s => 0)
    }

    /// See [`crate::Machine::poll_peer_issues`].
    #[inline]
    pub fn poll_peer_issues(&mut self) -> (u64, u64) {
        each!(self, c => c.poll_peer_issues(), s => s.poll_peer_issues())
    }
}

impl From<v1::Connection> for Connection {
    fn from(c: v1::Connection) -> Self {
        Connection::V1(c)
    }
}

impl From<v2::Connection> for Connection {
    fn from(c: v2::Connection) -> Self {
        Connection::V2(c)
    }
}

impl std::fmt::Display for Connection {
    /// The machine's log prefix (`v1#…`, `v2#…`), or `accept@<peer>` while sniffing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::V1(c) => c.fmt(f),
            Connection::V2(c) => c.fmt(f),
            Connection::Sniffing(s) => write!(f, "accept@{}", s.socket_peer()),
        }
    }
}
