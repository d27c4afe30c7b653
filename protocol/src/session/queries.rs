//! [`Machine`]'s queries: what a driver derives its interest, timers and counters from,
//! and what the messenger shows about a connection.

use std::time::Instant;

use crate::auth::AuthPeer;
use crate::types::{EntityAddr, EntityType, Features};
use crate::wire::KeepaliveStamp;

use super::cookies::Cookies;
use super::fault::Side;
use super::machine::{Machine, Protocol};
use super::policy::Policy;
use super::race::ExistingSession;
use super::state::{SessionState, State};
use super::Seqs;

impl<P: Protocol> Machine<P> {
    /// Whether the driver should read the socket (false while waiting for a decision,
    /// a verdict or a budget, and when there is no socket).
    pub fn wants_read(&self) -> bool {
        match &self.state {
            State::Handshake { step, .. } => P::step_wants_read(step),
            State::Open(open) => !open.budget.is_waiting(),
            _ => false,
        }
    }

    /// Whether [`Machine::poll_transmit`] has something to return.
    pub fn wants_write(&self) -> bool {
        !self.ctrl.is_empty()
            || self.state.open().is_some_and(|open| {
                !self.session.queue.is_empty()
                    || (open.ack_pending && !self.lossy)
                    || self.keepalive.pending.is_some()
                    || self.keepalive.ack_owed.is_some()
            })
    }

    /// Whether the session is open.
    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }

    /// Whether the machine is finished.
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Whether the session is waiting out its reconnect backoff after a fault: it holds
    /// no transport until [`Machine::poll_timeout`]'s deadline starts the redial, so a
    /// driver still holding the faulted socket closes it now (Ceph's fault shuts the
    /// socket down before the backoff).
    pub fn is_backing_off(&self) -> bool {
        matches!(self.state, State::AwaitBackoff { .. })
    }

    /// The coarse state.
    pub fn state(&self) -> SessionState {
        match self.state {
            State::Open(_) => SessionState::Open,
            State::Standby => SessionState::Standby,
            State::Closed => SessionState::Closed,
            State::Handshake { .. } if self.side == Side::Accept => SessionState::Accepting,
            State::AwaitTransport { .. }
            | State::Handshake { .. }
            | State::AwaitBackoff { .. }
            | State::Transition => SessionState::Connecting,
        }
    }

    /// What the messenger's session table holds for this machine's session (not being
    /// replaced): the snapshot the accept decision of another connection reads.
    pub fn existing_session(&self) -> ExistingSession {
        ExistingSession {
            state: self.state().into(),
            connect_seq: self.session.connect_seq,
            peer_global_seq: self.session.peer_global_seq,
            client_cookie: self.session.cookies.client,
            server_cookie: self.session.cookies.server,
            lossy: self.lossy,
            server_side: self.policy.server,
            replacing: false,
        }
    }

    /// The peer's address: dialled, or announced (v1, after the blank-IP fix-up), or
    /// its v2 address (msgr2, what a reconnect dials).
    pub fn peer_addr(&self) -> Option<&EntityAddr> {
        self.peer_addr.as_ref()
    }

    /// The peer's entity type, once known.
    pub fn peer_type(&self) -> Option<EntityType> {
        self.peer_type
    }

    /// Negotiated features (empty before the first open).
    pub fn features(&self) -> Features {
        self.session.features
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether the session is lossy.
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// What the messages this machine holds for sending cost: queued, and sent but not
    /// yet acknowledged (`Message::send_cost` each; a lossy session keeps none it sent
    /// while lossy). The messenger's send
    /// bounds count this.
    pub fn send_held_cost(&self) -> u64 {
        self.session.send_cost()
    }

    /// The part of [`Self::send_held_cost`] sent but not yet acknowledged: a lossless
    /// session's, or what a session marked lossy had sent before the mark.
    pub fn sent_held_cost(&self) -> u64 {
        self.session.sent_cost
    }

    /// When the peer's last KEEPALIVE / KEEPALIVE2 arrived.
    pub fn last_keepalive(&self) -> Option<Instant> {
        self.keepalive.last_received
    }

    /// Accept side: who the peer authenticated as on this connection (the auth method's
    /// verdict: a cephx ticket's entity, global id and caps, or auth none's claimed
    /// name); `None` on the connect side and before authentication.
    pub fn peer_auth(&self) -> Option<&AuthPeer> {
        self.peer_auth.as_ref()
    }

    /// The stamp of the peer's last KEEPALIVE2_ACK.
    pub fn last_keepalive_ack(&self) -> Option<KeepaliveStamp> {
        self.keepalive.last_ack
    }

    /// The session's numbers.
    pub fn seqs(&self) -> Seqs {
        self.session.seqs()
    }

    /// The session's msgr2 cookies (zero for v1).
    pub fn cookies(&self) -> Cookies {
        self.session.cookies
    }

    /// Messages queued or sent-but-unacked.
    pub fn pending_messages(&self) -> usize {
        self.session.pending()
    }

    /// Messages framed so far by [`Machine::poll_transmit`], each once: a message framed
    /// again after a reconnect or a replace (a resend) is not counted again.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent
    }

    /// Messages dropped as duplicates (`seq <= in_seq`) so far.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }

    /// Whether a message is being received: its header was read and it has not
    /// completed (the driver holds its budget meanwhile). False after a fault.
    pub fn message_in_progress(&self) -> bool {
        self.state
            .open()
            .is_some_and(|open| open.budget.is_waiting() || P::message_in_progress(&open.rx))
    }

    /// Whether the open session is between frames: nothing of the next one read yet
    /// (neither a message, stored or streaming by as a duplicate, nor any other frame)
    /// and no budget awaited. False while not open.
    pub fn between_messages(&self) -> bool {
        P::between_messages(self)
    }

    /// The payload length of the message being received (0 between messages).
    pub fn receiving_len(&self) -> u64 {
        self.state.open().map_or(0, |open| open.budget.len())
    }

    /// Bytes of memory held for the message being received.
    pub fn receive_held_bytes(&self) -> usize {
        if self.state.is_open() {
            P::receive_held_bytes(self)
        } else {
            0
        }
    }

    /// Peer misbehaviour seen since the last call: `(issues, not logged at WARN)`. Each
    /// kind of issue is logged at WARN once per connection and at DEBUG afterwards, so a
    /// peer repeating it costs one log line; the counts let the messenger show the rest.
    pub fn poll_peer_issues(&mut self) -> (u64, u64) {
        self.issues.take_counts()
    }
}
