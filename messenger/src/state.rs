//! [`ConnState`]: where a connection is in its life, as its driver publishes it for
//! other threads (handles, the session table's accept decisions, dumps).

/// Where a connection is in its life, as seen from other threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Dialling, handshaking, or backing off before a reconnect.
    Connecting = 0,
    /// Session open: messages flow.
    Open = 1,
    /// Lossless session without a socket, waiting for traffic (policy `standby`).
    Standby = 2,
    /// Closed for good: sends are dropped.
    Closed = 3,
}

impl ConnState {
    /// The state stored as `v` (see [`ConnState`]'s `repr`); anything unknown reads as
    /// closed, the state nothing leaves.
    pub(crate) fn from_u8(v: u8) -> ConnState {
        match v {
            0 => ConnState::Connecting,
            1 => ConnState::Open,
            2 => ConnState::Standby,
            _ => ConnState::Closed,
        }
    }
}
