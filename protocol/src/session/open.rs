//! The open session's own state: what exists only while a session is open (the
//! protocol's receive state, the budget of the message being received, the ACK due,
//! the keepalive timer, the message signing).

use std::time::{Duration, Instant};

use crate::auth::SessionHandler;
use crate::message::MESSAGE_OVERHEAD;

use super::clock::later;
use super::config::Config;

/// The open session: what only exists while it is open, around the protocol's receive
/// state `R` (what it is in the middle of reading).
pub(crate) struct Open<R> {
    /// What the protocol is in the middle of reading.
    pub(crate) rx: R,
    /// The budget of the message being received.
    pub(crate) budget: Budget,
    /// Budget the driver granted ahead for whole small messages (see
    /// [`super::Machine::add_receive_credit`]); gone with the open session.
    pub(crate) credit: Credit,
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
            credit: Credit::default(),
            ack_pending: false,
            keepalive_due: config.keepalive_interval.map(|every| later(now, every)),
            signer,
        }
    }
}

/// Receive budget granted ahead (see [`super::Machine::add_receive_credit`]): whole
/// messages whose first window covers their payload take it from here, each one message
/// and its payload plus [`MESSAGE_OVERHEAD`], without a round trip through the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credit {
    /// Messages left.
    pub(crate) messages: u32,
    /// Bytes left (payloads plus [`MESSAGE_OVERHEAD`] each).
    pub(crate) bytes: u64,
    /// A message that asked for its budget was dropped unseen (msgr2's ABORTED, or a
    /// duplicate read in secure mode): the driver still holds that grant, and learns it
    /// is stale only from the next message's first [`super::Event::NeedBudget`]. Until
    /// then no message is taken on credit: one taken so reached the driver holding that
    /// grant, passed it for its own, and the credit it used stayed charged to nothing
    /// for as long as the peer kept a message in progress at each pass's end (a count
    /// and a message's cost per aborted frame, without limit). Kept when the unused
    /// credit is taken back.
    pub(crate) held_back: bool,
}

impl Credit {
    /// Takes one message of `payload` bytes, if the credit covers it.
    pub(crate) fn take(&mut self, payload: u64) -> bool {
        let cost = payload.saturating_add(MESSAGE_OVERHEAD);
        if self.held_back || self.messages == 0 || cost > self.bytes {
            return false;
        }
        self.messages -= 1;
        self.bytes -= cost;
        true
    }

    /// Gives back what [`Credit::take`] took for a message of `payload` bytes that was
    /// then dropped unseen (msgr2's ABORTED): nothing delivered holds it, so it is
    /// unused credit again, returned with the rest. (Kept as taken, it was released
    /// only when a pump ended with no message in progress, which a peer can avoid: a
    /// stream of aborted frames then held the throttles without limit.)
    pub(crate) fn refund(&mut self, payload: u64) {
        self.messages = self.messages.saturating_add(1);
        self.bytes = self.bytes.saturating_add(payload.saturating_add(MESSAGE_OVERHEAD));
    }
}

/// The receive budget of the message being received (see
/// [`super::Event::NeedBudget`]).
#[derive(Clone, Copy, Debug, Default)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Budget {
    /// Payload bytes granted so far.
    granted: u64,
    /// The request waiting for [`super::Machine::grant_budget`]: its bytes, and whether it is
    /// the message's first (the one that also admits its header).
    asked: Option<(u64, bool)>,
    /// While the payload arrives: when its clock last (re)started (moved on by the time
    /// it was paused), and the bytes it progressed since. It must progress by a window
    /// (or the floor) within `Config::payload_timeout` of that start; the deadline is
    /// worked out only when asked for (a timer poll), not per message as the clock
    /// restarts.
    clock: Option<(Instant, u64)>,
    /// When a request for the next window paused the clock ([`Budget::ask`]).
    paused_at: Option<Instant>,
    /// The payload bytes whose charge the message's first window took from the receive
    /// credit (not asked for): given back if the message is then dropped unseen.
    credited: Option<u64>,
    /// The least progress per payload timeout the driver asks of this message beyond
    /// the window ([`super::Machine::set_progress_floor`]).
    floor: u64,
    /// The message's payload length, once its header was read.
    len: u64,
    /// Whether anything moved the budget from its default since the last
    /// [`Budget::finish`]: a message taken whole on credit in msgr v1 never does, and
    /// its reset of every field showed per message (~8 instructions). Set by every
    /// method that changes a field ([`Budget::grant`] and [`Budget::progress`] change
    /// only what an [`Budget::ask`] started).
    touched: bool,
}

impl Budget {
    /// Whether a request waits for the driver (reading stops meanwhile).
    pub(crate) fn is_waiting(&self) -> bool {
        self.asked.is_some()
    }

    /// Payload bytes granted so far.
    pub(crate) fn granted(&self) -> u64 {
        self.granted
    }

    /// The payload length of the message being received (0 between messages).
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The message whose header was just read has a payload of `len` bytes.
    pub(crate) fn set_len(&mut self, len: u64) {
        self.touched = true;
        self.len = len;
    }

    /// When the payload must have progressed, `timeout` after its clock started; none
    /// while the clock is paused.
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.asked.is_some() {
            return None;
        }
        self.clock.map(|(since, _)| later(since, timeout))
    }

    /// The next window for a message whose payload still needs `uncovered` bytes:
    /// `Config::first_window`, or what the message already holds (so windows double),
    /// or what already arrived and waits in the receive buffer (it is in memory anyway,
    /// and a message that arrived whole is then taken in one window, without a copy),
    /// whichever is largest, and never more than `uncovered`.
    pub(crate) fn window(&self, uncovered: u64, config: &Config, buffered: usize) -> u64 {
        let window = u64::from(config.first_window.max(1)).max(self.granted).max(buffered as u64);
        uncovered.min(window)
    }

    /// The message is complete (or dropped): the next one starts afresh.
    pub(crate) fn finish(&mut self) -> Option<u64> {
        if !self.touched {
            return None;
        }
        let credited = self.credited;
        *self = Budget::default();
        credited
    }

    /// The message's payload of `len` bytes was paid for from the receive credit (its
    /// first window, or the whole message taken in one call).
    pub(crate) fn funded_by_credit(&mut self, len: u64) {
        self.touched = true;
        self.credited = Some(len);
    }

    /// Asks for `bytes` at `now` (`first`: for a message whose header just arrived: it
    /// starts afresh). The payload's clock pauses meanwhile: waiting for our own budget
    /// is not the peer's stall.
    pub(crate) fn ask(&mut self, bytes: u64, first: bool, now: Instant) {
        if first {
            *self = Budget::default();
        }
        self.touched = true;
        self.asked = Some((bytes, first));
        if self.clock.is_some() {
            self.paused_at = Some(now);
        }
    }

    /// The request was granted: returns `(bytes, first)` (`None` when nothing was
    /// asked) and, when `clock_from` is given (the time of the grant), runs the clock
    /// again: from there for a first window, else where it paused. A grant does not
    /// restart it: a peer that used up a small window (the oldest message in progress
    /// is granted the next at once) still owes its progress per timeout.
    pub(crate) fn grant(&mut self, clock_from: Option<Instant>) -> Option<(u64, bool)> {
        let (bytes, first) = self.asked.take()?;
        self.granted = self.granted.saturating_add(bytes);
        if let Some(now) = clock_from {
            self.clock = match (self.clock, self.paused_at.take()) {
                (Some((since, progressed)), Some(at)) => {
                    Some((later(since, now.saturating_duration_since(at)), progressed))
                }
                _ => Some((now, 0)),
            };
        }
        Some((bytes, first))
    }

    /// The least progress per payload timeout asked of this message from `now` on, if
    /// more than `window` (0: the window alone). Progress already enough for the new
    /// rule restarts the clock, as a byte arriving would.
    pub(crate) fn set_floor(&mut self, bytes: u64, window: u32, now: Instant) {
        self.touched = true;
        self.floor = bytes;
        if let (Some((_, progressed)), None) = (self.clock, self.asked) {
            if progressed >= u64::from(window.max(1)).max(bytes) {
                self.clock = Some((now, 0));
            }
        }
    }

    /// `n` more payload bytes arrived at `now`: a whole `window` of progress, or the
    /// floor if more, restarts the clock from `now`.
    pub(crate) fn progress(&mut self, n: u64, window: u32, now: Instant) {
        let Some((since, progressed)) = self.clock else { return };
        let progressed = progressed.saturating_add(n);
        let required = u64::from(window.max(1)).max(self.floor);
        self.clock =
            if progressed >= required { Some((now, 0)) } else { Some((since, progressed)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `finish` skips its reset when nothing touched the budget: each way of touching it
    // must still be undone, so the next message starts from the default.
    #[test]
    // The instants are only inputs here.
    #[allow(clippy::disallowed_methods)]
    fn finish_resets_whatever_touched_the_budget_and_leaves_an_untouched_one_default() {
        let now = Instant::now();
        let mut b = Budget::default();
        assert_eq!((b.finish(), b), (None, Budget::default()), "untouched: stays default");

        let touch: [&dyn Fn(&mut Budget); 4] =
            [&|b| b.set_floor(100, 10, now), &|b| b.set_len(7), &|b| b.funded_by_credit(7), &|b| {
                b.ask(5, true, now);
                b.grant(Some(now));
                b.progress(3, 10, now);
            }];
        for (i, f) in touch.iter().enumerate() {
            let mut b = Budget::default();
            f(&mut b);
            assert_ne!(b, Budget::default(), "touch {i} changed the budget");
            let credited = b.finish();
            assert_eq!(credited, (i == 2).then_some(7), "touch {i}: what the credit paid");
            assert_eq!(b, Budget::default(), "touch {i}: finish starts the next message afresh");
            assert_eq!(b.finish(), None, "touch {i}: a second finish gives nothing back");
        }
    }
}
