//! Deadlines and keepalives: what [`Machine::poll_timeout`] reports and what
//! [`Machine::handle_timeout`] does when it passes.
//!
//! One deadline is armed at a time per state: the handshake's (dial included), the
//! backoff's, or, while open, the earliest of the idle timeout, the payload's progress
//! deadline, the write timeout and the next periodic keepalive. The driver keeps one
//! timer per connection at [`Machine::poll_timeout`].

use std::time::Instant;

use super::clock::later;
use super::fault::Fault;
use super::machine::{Machine, Protocol};
use super::state::State;

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
                let payload_due = open.budget.deadline(self.config.payload_timeout);
                // Not while we wait for receive budget: we stopped reading, so the peer's
                // silence is ours (Ceph's throttle waits refresh the connection too).
                let waiting = open.budget.is_waiting();
                if !waiting && now >= later(self.last_rx, self.config.idle_timeout) {
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
                        self.keepalive.pending = Some(self.keepalive.stamp_at(now));
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
                // The earliest of four, folded by hand: the driver asks after every pump,
                // and an iterator over an array of options cost ~30 instructions more.
                let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let mut due = earliest(open.keepalive_due, self.write_deadline());
                // While the budget waits for the throttles, neither the payload's deadline
                // (`Budget::deadline` is none then) nor idleness runs.
                if !open.budget.is_waiting() {
                    due = earliest(due, open.budget.deadline(self.config.payload_timeout));
                    due = earliest(due, Some(later(self.last_rx, self.config.idle_timeout)));
                }
                due
            }
            State::Standby | State::Closed | State::Transition => None,
        }
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.write_blocked_since.map(|at| later(at, self.config.write_timeout))
    }
}
