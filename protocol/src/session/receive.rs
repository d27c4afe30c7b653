//! The open session's receive bookkeeping, for both protocols: in_seq and duplicates,
//! the ACK that is due, the receive budget a message asks for in windows, and the
//! progress its payload must make.

use std::time::Instant;

use crate::auth::SessionHandler;

use super::config::{Config, Counters};
use super::event::Event;
use super::machine::Machine;
use super::protocol::Protocol;
use super::seq::Seq;
use super::timers::later;

/// The open session: what only exists while it is open, around the protocol's receive
/// state `R` (what it is in the middle of reading).
pub(crate) struct Open<R> {
    /// What the protocol is in the middle of reading.
    pub(crate) rx: R,
    /// The budget of the message being received.
    pub(crate) budget: Budget,
    /// in_seq advanced since the last ACK we sent (lossless only).
    pub(crate) ack_pending: bool,
    /// Next periodic keepalive (`Config::keepalive_interval`).
    pub(crate) keepalive_due: Option<Instant>,
    /// Signs outgoing and checks incoming messages (v1 with cephx); installed when the
    /// session opened, from what its authentication agreed.
    pub(crate) signer: Option<Box<dyn SessionHandler>>,
}

impl<R> Open<R> {
    pub(crate) fn new(
        rx: R,
        now: Instant,
        config: &Config,
        signer: Option<Box<dyn SessionHandler>>,
    ) -> Self {
        Open {
            rx,
            budget: Budget::default(),
            ack_pending: false,
            keepalive_due: config.keepalive_interval.map(|every| later(now, every)),
            signer,
        }
    }
}

/// The receive budget of the message being received (see [`Event::NeedBudget`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Budget {
    /// Payload bytes granted so far.
    granted: u64,
    /// The request waiting for [`Machine::grant_budget`]: its bytes, and whether it is
    /// the message's first (the one that also admits its header).
    asked: Option<(u64, bool)>,
    /// While the payload arrives: when it must have progressed by a window
    /// (`Config::payload_timeout`), and the bytes it progressed since the last reset.
    deadline: Option<(Instant, u64)>,
}

impl Budget {
    /// Whether a request waits for the driver (reading stops meanwhile).
    pub(crate) fn is_waiting(&self) -> bool {
        self.asked.is_some()
    }

    /// When the payload must have progressed.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline.map(|(at, _)| at)
    }

    /// The next window for a message whose payload still needs `uncovered` bytes:
    /// `Config::first_window`, or what the message already holds (so windows double),
    /// or what already arrived and waits in the receive buffer (it is in memory anyway,
    /// and a message that arrived whole is then taken in one window, without a copy),
    /// whichever is largest, and never more than `uncovered`.
    fn window(&self, uncovered: u64, config: &Config, buffered: usize) -> u64 {
        let window = u64::from(config.first_window.max(1)).max(self.granted).max(buffered as u64);
        uncovered.min(window)
    }

    /// The message is complete (or dropped): the next one starts afresh.
    pub(crate) fn finish(&mut self) {
        *self = Budget::default();
    }
}

impl<P: Protocol> Machine<P> {
    /// A message with `seq` was taken (not a duplicate): in_seq moves to it, and a
    /// lossless session owes the peer an ACK.
    pub(crate) fn note_received(&mut self, seq: Seq) {
        if seq > self.session.in_seq.next() {
            log::info!(target: P::LOG, "{self}: seq gap: got {seq}, expected {}", self.session.in_seq.next());
        }
        self.session.in_seq = seq;
        let lossless = !self.lossy;
        if let Some(open) = self.state.open_mut() {
            open.ack_pending |= lossless;
        }
    }

    /// Whether a message with `seq` was already delivered (a resend the peer could not
    /// know we had): then it is counted and the caller lets it stream by unstored.
    pub(crate) fn is_duplicate(&mut self, seq: Seq) -> bool {
        if seq > self.session.in_seq {
            return false;
        }
        log::debug!(target: P::LOG, "{self}: dropping duplicate seq {seq} (in_seq {})", self.session.in_seq);
        Counters::bump(&self.config.counters.old_seq_dropped);
        self.duplicates_dropped += 1;
        true
    }

    /// Asks the driver for budget for `bytes` of the message's payload and stops reading
    /// until [`Machine::grant_budget`]. `first`: the message's header just arrived.
    pub(crate) fn request_budget(&mut self, bytes: u64, first: bool) {
        let Some(open) = self.state.open_mut() else { return };
        if first {
            open.budget = Budget::default();
        }
        open.budget.asked = Some((bytes, first));
        // Waiting for our own budget is not the peer's stall.
        open.budget.deadline = None;
        self.events.push_back(Event::NeedBudget { bytes });
    }

    /// Asks for the next window of a message whose payload still needs `uncovered`
    /// bytes beyond what was granted ([`Budget::window`]).
    pub(crate) fn request_window(&mut self, uncovered: u64, first: bool) {
        let Some(open) = self.state.open() else { return };
        let budget = if first { Budget::default() } else { open.budget };
        let bytes = budget.window(uncovered, &self.config, self.rx.len());
        self.request_budget(bytes, first);
    }

    /// The driver granted the outstanding request: returns `(bytes, first)`, and (when
    /// `timed`) starts the payload's progress clock. `None` when nothing was asked.
    pub(crate) fn take_grant(&mut self, now: Instant, timed: bool) -> Option<(u64, bool)> {
        let payload_timeout = self.config.payload_timeout;
        let open = self.state.open_mut()?;
        let (bytes, first) = open.budget.asked.take()?;
        open.budget.granted = open.budget.granted.saturating_add(bytes);
        // The peer is on the clock again: it must fill the window in time.
        if timed {
            open.budget.deadline = Some((later(now, payload_timeout), 0));
        }
        Some((bytes, first))
    }

    /// Counts `n` bytes of the message being received towards its progress deadline.
    pub(crate) fn note_payload_progress(&mut self, now: Instant, n: u64) {
        let (window, timeout) = (self.config.progress_window.max(1), self.config.payload_timeout);
        let Some(open) = self.state.open_mut() else { return };
        let Some((at, progressed)) = open.budget.deadline else { return };
        let progressed = progressed.saturating_add(n);
        open.budget.deadline = if progressed >= u64::from(window) {
            Some((later(now, timeout), 0))
        } else {
            Some((at, progressed))
        };
    }
}
