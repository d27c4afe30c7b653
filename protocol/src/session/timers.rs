//! Deadlines and keepalives: what [`Machine::poll_timeout`] reports and what
//! [`Machine::handle_timeout`] does when it passes.
//!
//! One deadline is armed at a time per state: the handshake's (dial included), the
//! backoff's, or, while open, the earliest of the idle timeout, the payload's progress
//! deadline, the write timeout and the next periodic keepalive. The driver keeps one
//! timer per connection at [`Machine::poll_timeout`].

use std::time::{Duration, Instant};

use crate::wire::KeepaliveStamp;

use super::fault::Fault;
use super::machine::Machine;
use super::protocol::Protocol;
use super::state::State;

/// `at + d`, or a point far enough out to mean "never" when that overflows `Instant`
/// (a configured `Duration::MAX` must not panic here).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const NEVER: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d).or_else(|| at.checked_add(NEVER)).unwrap_or(at)
}

/// Keepalive bookkeeping of a machine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keepalive {
    /// A keepalive asked for while not open, sent once open.
    pub(crate) pending: Option<KeepaliveStamp>,
    /// Maps `Instant`s to wall-clock stamps for timer-driven keepalives: the instant and
    /// stamp of the last `send_keepalive` (or creation and zero).
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

impl<P: Protocol> Machine<P> {
    /// The deadline from [`Machine::poll_timeout`] passed (calling early is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match &mut self.state {
            State::AwaitBackoff { until } if now >= *until => self.start_reconnect(now),
            State::AwaitTransport { deadline } | State::Handshake { deadline, .. }
                if now >= *deadline =>
            {
                self.fault(now, Fault::HandshakeTimeout);
            }
            State::Open(open) => {
                let keepalive_due = open.keepalive_due;
                let payload_due = open.budget.deadline();
                if now >= later(self.last_rx, self.config.idle_timeout) {
                    self.fault(now, Fault::IdleTimeout);
                    return;
                }
                if payload_due.is_some_and(|at| now >= at) {
                    self.fault(now, Fault::PayloadTimeout);
                    return;
                }
                if self.write_deadline().is_some_and(|at| now >= at) {
                    self.fault(now, Fault::WriteTimeout);
                    return;
                }
                if let (Some(due), Some(every)) = (keepalive_due, self.config.keepalive_interval) {
                    if now >= due {
                        let stamp = self.keepalive.stamp_at(now);
                        P::queue_keepalive(self, stamp);
                        if let Some(open) = self.state.open_mut() {
                            open.keepalive_due = Some(later(now, every));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// The next time [`Machine::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitBackoff { until } => Some(*until),
            State::AwaitTransport { deadline } | State::Handshake { deadline, .. } => {
                Some(*deadline)
            }
            State::Open(open) => {
                let idle = later(self.last_rx, self.config.idle_timeout);
                [open.keepalive_due, open.budget.deadline(), self.write_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|at| at.min(idle))
                    .or(Some(idle))
            }
            State::Standby | State::Closed | State::Transition => None,
        }
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.write_blocked_since.map(|at| later(at, self.config.write_timeout))
    }
}
