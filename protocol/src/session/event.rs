//! What a session machine reports to its driver ([`super::Machine::poll_event`]): one
//! [`Event`] type for both protocols.

use std::fmt;

use bytes::Bytes;

use crate::message::Message;
use crate::types::{EntityAddr, EntityType, Features};
use crate::wire::KeepaliveStamp;

use super::fault::Fault;
use super::race::AcceptRequest;
use super::seq::{ConnectSeq, Seq};

/// The driver's answer to [`Event::VerifyAuthorizer`] (the same three outcomes an
/// inline [`crate::auth::AuthorizerServer`] has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Accept; `reply` is the authorizer reply sent back (empty for auth none).
    Accept {
        /// Authorizer reply bytes.
        reply: Bytes,
    },
    /// Send CHALLENGE_AUTHORIZER with these bytes; the peer repeats its connect with an
    /// authorizer that answers it.
    Challenge(Bytes),
    /// Reject: the connector gets BADAUTHORIZER.
    Reject,
}

/// Who ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// Our own user (`close`, mark_down).
    Local,
    /// The peer (CLOSE tag, or it refused us).
    Peer,
    /// This library (a fault, a timeout, a replaced session).
    Library,
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// `close()` was called.
    Requested,
    /// The peer sent CLOSE.
    PeerClose,
    /// The session is gone after a fault (lossy reset, or a half-accepted connection).
    Fault(Fault),
    /// The peer refused us for good (v1 BADPROTOVER, FEATURES, BADAUTHORIZER; msgr2
    /// IDENT_MISSING_FEATURES, no auth method left), or we refused it.
    Refused(&'static str),
    /// The session moved to another state machine ([`super::Machine::take_session`])
    /// or the accept decision gave this connection up.
    Replaced,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Requested => f.write_str("close requested"),
            CloseReason::PeerClose => f.write_str("peer sent CLOSE"),
            CloseReason::Fault(fault) => write!(f, "fault: {fault}"),
            CloseReason::Refused(why) => write!(f, "refused: {why}"),
            CloseReason::Replaced => f.write_str("session moved to another connection"),
        }
    }
}

/// The session opened (Ceph's `ms_handle_connect` / `ms_handle_accept`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The peer's address (dialled, or announced and fixed up).
    pub peer_addr: EntityAddr,
    /// The peer's entity type.
    pub peer_type: EntityType,
    /// Negotiated features (`peer & ours`).
    pub features: Features,
    /// The session's connect_seq after this open.
    pub connect_seq: ConnectSeq,
    /// The session is lossy.
    pub lossy: bool,
    /// This open continued an existing session (reconnect or replace), rather than
    /// starting a new one.
    pub resumed: bool,
    /// The peer restarted (reset from peer); see also [`Event::RemoteReset`].
    pub remote_reset: bool,
}

/// One report of a session machine, v1 or v2. After [`Event::Closed`] no more events
/// come.
// The rare large payloads (the open session's facts, a close's reason) are boxed: every
// received message is an event, moved into the queue and out of it, and an event the
// size of the largest variant (96 bytes, then 40) cost ~57 instructions per 64 B round
// trip; at 40 (an authorizer's `Bytes` inline) each was still copied through the stack
// in five pieces on its way out of the queue. Now two words (`event_is_two_words`).
#[derive(Clone, Debug)]
pub enum Event {
    /// Accept side: the peer's connect (v1) or CLIENT_IDENT / SESSION_RECONNECT (msgr2)
    /// passed the checks that need no global knowledge; decide with the session table
    /// ([`crate::decide`]) and answer with [`super::Machine::handle_accept_decision`].
    /// Reading stops until then.
    AcceptRequest(Box<AcceptRequest>),
    /// Accept side (v1), when the config's auth provider has no inline verifier: verify
    /// this authorizer and answer with [`super::Machine::handle_authorizer_verdict`].
    VerifyAuthorizer {
        /// The peer's type.
        peer_type: EntityType,
        /// `authorizer_protocol` (`CEPH_AUTH_*`).
        protocol: u32,
        /// The authorizer bytes. Boxed: a `Bytes` here made every event 40 bytes, and
        /// each received message is an event moved into the queue and out again.
        authorizer: Box<Bytes>,
    },
    /// The session is open.
    Opened(Box<Opened>),
    /// A message being received needs budget for this many more payload bytes: its
    /// first window when its header was decoded (that request also stands for the
    /// message itself: count it as one message), then (v1) one window each time the
    /// previous one is used up (see `Config::first_window`). Reading stops until
    /// [`super::Machine::grant_budget`].
    NeedBudget {
        /// front + middle + data bytes.
        bytes: u64,
        /// The message's first window (its header just arrived): whatever the driver
        /// still holds for an earlier message is stale, that message was dropped (an
        /// aborted msgr2 frame, a fault) before its event could say so.
        first: bool,
    },
    /// A message arrived (seq filled in; duplicates already dropped).
    Message(Message),
    /// The peer acknowledged our messages up to this seq (the newest ack: one event
    /// stands for every ack since the last one was taken).
    Acked {
        /// Highest acknowledged seq.
        up_to: Seq,
    },
    /// A KEEPALIVE or KEEPALIVE2 arrived (its time is
    /// [`super::Machine::last_keepalive`]); one event for every one that arrived since
    /// the last was taken.
    KeepaliveReceived,
    /// A KEEPALIVE2_ACK arrived, echoing our stamp (the newest: one event for every one
    /// that arrived since the last was taken).
    KeepaliveAck(KeepaliveStamp),
    /// Lossless fault: dial the peer again ([`super::Machine::peer_addr`]), then call
    /// [`super::Machine::handle_transport_connected`].
    Reconnect {
        /// 1 for the first attempt after a fault.
        attempt: u32,
    },
    /// Lossless session with nothing to send: the socket can go; a `send_message`
    /// (connect side) wakes it with [`Event::Reconnect`].
    Standby,
    /// The session is gone (`ms_handle_reset`): a lossy session faulted, or the peer
    /// sent CLOSE.
    Reset,
    /// Our session was reset because the peer lost it (`ms_handle_remote_reset`, Ceph's
    /// `session_reset`): the connector got RESETSESSION / a full SESSION_RESET, or the
    /// acceptor saw a restarted peer under `resetcheck`. Queued and unacked messages were
    /// discarded.
    RemoteReset,
    /// The peer refused the connection for good (`ms_handle_refused`).
    Refused,
    /// Connect side: this connection was the first to tell the messenger how a peer
    /// sees us ([`super::Config::learned_addr`], Ceph's `learned_addr`): our blank
    /// address may have taken its IP (the messenger updates its loopback connection,
    /// as Ceph's `_init_local_connection`).
    LearnedAddr,
    /// The connection is finished; the driver drops the socket and the machine.
    Closed {
        /// Who ended it.
        by: Initiator,
        /// Why.
        reason: Box<CloseReason>,
    },
}

impl Event {
    /// The variant's name (for logs and test assertions).
    pub fn name(&self) -> &'static str {
        match self {
            Event::AcceptRequest(_) => "AcceptRequest",
            Event::VerifyAuthorizer { .. } => "VerifyAuthorizer",
            Event::Opened(_) => "Opened",
            Event::NeedBudget { .. } => "NeedBudget",
            Event::Message(_) => "Message",
            Event::Acked { .. } => "Acked",
            Event::KeepaliveReceived => "KeepaliveReceived",
            Event::KeepaliveAck(_) => "KeepaliveAck",
            Event::Reconnect { .. } => "Reconnect",
            Event::Standby => "Standby",
            Event::Reset => "Reset",
            Event::RemoteReset => "RemoteReset",
            Event::Refused => "Refused",
            Event::LearnedAddr => "LearnedAddr",
            Event::Closed { .. } => "Closed",
        }
    }

    /// A request to the driver about the current TCP connection, moot once it fails.
    pub(crate) fn is_request(&self) -> bool {
        matches!(
            self,
            Event::AcceptRequest(_) | Event::VerifyAuthorizer { .. } | Event::NeedBudget { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every received message is an event moved into the machine's queue and out to the
    // driver: a variant that grows it is paid per message (see the comment on `Event`).
    #[test]
    fn event_is_two_words() {
        assert_eq!(std::mem::size_of::<Event>(), 2 * std::mem::size_of::<u64>());
    }
}
