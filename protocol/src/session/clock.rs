//! Time as the machines use it: deadlines that cannot overflow, and the wall-clock
//! stamps of keepalives extrapolated from the last one the driver gave.

use std::time::{Duration, Instant};

use crate::wire::KeepaliveStamp;

/// `at + d`, or a point far enough out to mean "never" when that overflows `Instant`
/// (a configured `Duration::MAX` must not panic here).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d).or_else(|| at.checked_add(NEVER)).unwrap_or(at)
}

/// Keepalive bookkeeping of a machine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keepalive {
    /// The keepalive to send at the next transmit (sent once open if asked for before):
    /// the newest stamp only. A user, a timer or a peer's request asking again before it
    /// went out replaces it, so what waits to be written stays one frame.
    pub(crate) pending: Option<KeepaliveStamp>,
    /// The stamp of the peer's newest KEEPALIVE2 not yet acknowledged: one
    /// KEEPALIVE2_ACK, for the newest, goes out at the next transmit. Appending an ack
    /// per KEEPALIVE2 let a peer that sends them and never reads grow our memory as fast
    /// as it could send.
    pub(crate) ack_owed: Option<KeepaliveStamp>,
    /// Maps `Instant`s to wall-clock stamps for timer-driven keepalives: the instant and
    /// stamp of the last `send_keepalive` or `anchor_wall_clock` (the messenger anchors
    /// each session as it opens), else creation and zero.
    pub(crate) anchor: (Instant, KeepaliveStamp),
    /// When the peer's last KEEPALIVE / KEEPALIVE2 arrived.
    pub(crate) last_received: Option<Instant>,
    /// The stamp of the peer's last KEEPALIVE2_ACK.
    pub(crate) last_ack: Option<KeepaliveStamp>,
}

impl Keepalive {
    pub(crate) fn new(now: Instant) -> Self {
        Keepalive {
            pending: None,
            ack_owed: None,
            anchor: (now, KeepaliveStamp::default()),
            last_received: None,
            last_ack: None,
        }
    }

    /// A wall-clock stamp for `now`, extrapolated from the last stamp the driver gave.
    pub(crate) fn stamp_at(&self, now: Instant) -> KeepaliveStamp {
        let (at, base) = self.anchor;
        let total =
            Duration::new(u64::from(base.sec), base.nsec) + now.saturating_duration_since(at);
        KeepaliveStamp { sec: total.as_secs() as u32, nsec: total.subsec_nanos() }
    }
}
