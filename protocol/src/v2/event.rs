//! What the msgr2 state machine reports to its driver
//! ([`super::Connection::poll_event`]). The same shape as [`crate::v1::Event`] (the
//! variants a driver acts on are identical; [`crate::v1::Opened`], [`CloseReason`] and
//! [`Initiator`] are shared), so one driver can treat both protocols alike. Only the
//! accept request differs, and msgr2 has no authorizer-verification event: its
//! authentication runs inside the machine through [`super::auth::AuthProvider`].

use crate::message::Message;
use crate::v1::{CloseReason, Initiator, Opened};
use crate::wire::KeepaliveStamp;

use super::decide::AcceptRequest;

/// One report of the state machine. After [`Event::Closed`] no more events come.
#[derive(Clone, Debug)]
pub enum Event {
    /// Accept side: the peer's CLIENT_IDENT or SESSION_RECONNECT passed the checks;
    /// call [`super::decide`] and answer with
    /// [`super::Connection::handle_accept_decision`]. Reading stops until then.
    AcceptRequest(AcceptRequest),
    /// The session is open (`ms_handle_connect` / `ms_handle_accept`).
    Opened(Opened),
    /// A MESSAGE header arrived: the payload is this many bytes. Reading stops until
    /// [`super::Connection::grant_budget`].
    NeedBudget {
        /// front + middle + data bytes.
        bytes: u64,
    },
    /// A message arrived (duplicates already dropped).
    Message(Message),
    /// The peer acknowledged our messages up to this seq (an ACK frame).
    Acked {
        /// Highest acknowledged seq.
        up_to: u64,
    },
    /// A KEEPALIVE2 arrived (answered with KEEPALIVE2_ACK).
    KeepaliveReceived,
    /// A KEEPALIVE2_ACK arrived, echoing our stamp.
    KeepaliveAck(KeepaliveStamp),
    /// Lossless fault: dial the peer again ([`super::Connection::peer_addr`]), then call
    /// [`super::Connection::handle_transport_connected`].
    Reconnect {
        /// 1 for the first attempt after a fault.
        attempt: u32,
    },
    /// Lossless session with nothing to send: the socket can go.
    Standby,
    /// The session is gone (`ms_handle_reset`): a lossy session faulted.
    Reset,
    /// Our session was reset because the peer lost it (`ms_handle_remote_reset`):
    /// SESSION_RESET (full), or a restarted peer under `resetcheck`. Queued and
    /// unacked messages were discarded.
    RemoteReset,
    /// The peer refused the connection for good (`ms_handle_refused`).
    Refused,
    /// The connection is finished; the driver drops the socket and the machine.
    Closed {
        /// Who ended it.
        by: Initiator,
        /// Why.
        reason: CloseReason,
    },
}
