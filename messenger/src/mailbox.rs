//! What other threads hand a connection's driver: the [`Mailbox`] on the handle
//! (messages to send and [`Command`]s), and the send-side bounds ([`SendBudget`]) those
//! messages are charged to from `send_message` until they leave the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use protocol::Message;

use crate::machine::Replacement;

/// Work for the driver, posted from other threads.
pub(crate) enum Command {
    /// Send a keepalive now.
    Keepalive,
    /// `mark_disposable`: the session becomes lossy.
    MarkDisposable,
    /// `mark_down`: close at once, discard queued messages, no reset callback.
    MarkDown,
    /// A newly accepted socket replaces this lossless session's socket (Ceph's replace:
    /// the existing connection keeps its queues and sequence numbers).
    TakeOver(Box<Incoming>),
    /// Test seam: cut the socket as a network failure would (both directions shut down).
    #[cfg(feature = "fault-injection")]
    InjectFault,
    /// Test seam: run this in the driver's pump after its last look at the mailbox.
    #[cfg(feature = "fault-injection")]
    InjectBeforeSettle(Box<dyn FnOnce() + Send>),
    /// Test seam: run this right before the driver's next write.
    #[cfg(feature = "fault-injection")]
    InjectBeforeWrite(Box<dyn FnOnce() + Send>),
    /// Test seam: run this right before the driver's next read from its socket.
    #[cfg(feature = "fault-injection")]
    InjectBeforeRead(Box<dyn FnOnce() + Send>),
    /// Test seam: run this halfway through the driver's next change of its send count.
    #[cfg(feature = "fault-injection")]
    InjectInSendCount(Box<dyn FnOnce() + Send>),
}

/// A freshly accepted socket whose connect was decided "replace", with its half-open
/// machine: it travels to the existing session's driver, which adopts it.
pub(crate) struct Incoming {
    pub(crate) socket: TcpStream,
    pub(crate) replacement: Replacement,
}

/// A connection's mailbox: what senders queued and the driver has not taken yet.
#[derive(Default)]
pub(crate) struct Mailbox {
    pub(crate) messages: VecDeque<(Message, Instant)>,
    pub(crate) commands: Vec<Command>,
    /// A notify is in flight (or the driver is about to drain): don't post another.
    pub(crate) notified: bool,
    /// The connection is closed: nothing more is queued.
    pub(crate) closed: bool,
}

/// What a closed mailbox held, dropped by whoever holds this (after the lock).
pub(crate) struct Closed {
    _messages: VecDeque<(Message, Instant)>,
    _commands: Vec<Command>,
}

impl Mailbox {
    /// Takes the messages waiting here out of the send bounds (`cost`: the connection's
    /// `mailbox_cost`, which the caller's lock on this mailbox guards) and returns them,
    /// for the caller to drop once the lock is released: a payload's owner may run
    /// arbitrary code when dropped.
    #[must_use = "dropped after the mailbox's lock is released"]
    pub(crate) fn take_messages(
        &mut self,
        cost: &AtomicU64,
        budget: &SendBudget,
    ) -> VecDeque<(Message, Instant)> {
        budget.adjust(cost.swap(0, Ordering::Relaxed), 0);
        std::mem::take(&mut self.messages)
    }

    /// Closes the mailbox for good and returns what waited in it (commands included) for
    /// the caller to drop once the lock is released: a command may hold a socket, whose
    /// drop is a `close` system call.
    #[must_use = "dropped after the mailbox's lock is released"]
    pub(crate) fn close(&mut self, cost: &AtomicU64, budget: &SendBudget) -> Closed {
        self.closed = true;
        Closed {
            _messages: self.take_messages(cost, budget),
            _commands: std::mem::take(&mut self.commands),
        }
    }
}

/// A connection's `standby_counted` while its session is not an accepted one waiting
/// in standby (what [`SendBudget::enter_standby`] counts from).
pub(crate) const NOT_IN_STANDBY: u64 = u64::MAX;

/// What a running driver charges the total bound ahead of its own sends
/// ([`SendBudget::reserve`]): one atomic update per 64 KiB of replies instead of one per
/// reply.
const RESERVE_CHUNK: u64 = 64 << 10;

/// The send-side bounds of one messenger: what messages waiting to leave its
/// connections cost (`Message::send_cost`), per connection and in total.
#[derive(Debug)]
pub(crate) struct SendBudget {
    /// What every connection holds together.
    held: AtomicU64,
    max_total: u64,
    max_per_conn: u64,
    /// What sessions in standby may hold together (see
    /// `MessengerConfig::max_standby_queued_bytes`).
    max_standby: u64,
    /// How many sessions may wait in standby (`MessengerConfig::max_standby_sessions`).
    max_standby_sessions: u64,
    /// Accepted sessions waiting in standby now.
    standby_sessions: AtomicU64,
    /// What those sessions hold, as each was last counted (its `standby_counted`): a
    /// running total, so that [`Env::bound_standby`](crate::env::Env::bound_standby)
    /// looks at the connections only when they may be over a bound. Moved with wrapping
    /// additions: a recount and a departure of one session on two threads may apply
    /// their differences in either order, and only the sum of both is right.
    standby_held: AtomicU64,
    /// `send_message` calls refused with `QueueFull`.
    refused: AtomicU64,
    /// Sessions in standby reset to keep within `max_standby` or
    /// `max_standby_sessions` (`Env::bound_standby`).
    standby_evicted: AtomicU64,
}

impl SendBudget {
    pub(crate) fn new(
        max_per_conn: u64,
        max_total: u64,
        max_standby: u64,
        max_standby_sessions: usize,
    ) -> Arc<SendBudget> {
        Arc::new(SendBudget {
            held: AtomicU64::new(0),
            max_total,
            max_per_conn,
            max_standby: max_standby.min(max_total / 4),
            max_standby_sessions: u64::try_from(max_standby_sessions).unwrap_or(u64::MAX),
            standby_sessions: AtomicU64::new(0),
            standby_held: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            standby_evicted: AtomicU64::new(0),
        })
    }

    /// What sessions in standby may hold together.
    pub(crate) fn max_standby(&self) -> u64 {
        self.max_standby
    }

    /// How many sessions may wait in standby.
    pub(crate) fn max_standby_sessions(&self) -> u64 {
        self.max_standby_sessions
    }

    /// Accepted sessions waiting in standby now.
    pub(crate) fn standby_sessions(&self) -> u64 {
        self.standby_sessions.load(Ordering::Relaxed)
    }

    /// What accepted sessions waiting in standby hold together, as each was last
    /// counted ([`Self::enter_standby`], [`Self::recount_standby`]).
    pub(crate) fn standby_held(&self) -> u64 {
        self.standby_held.load(Ordering::Relaxed)
    }

    /// A session whose count is `slot` (a connection's `standby_counted`) entered
    /// standby holding `holds`: counted, as a session and with what it holds. One
    /// already counted is counted again ([`Self::recount_standby`]).
    pub(crate) fn enter_standby(&self, slot: &AtomicU64, holds: u64) {
        match slot.compare_exchange(NOT_IN_STANDBY, holds, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                self.standby_sessions.fetch_add(1, Ordering::Relaxed);
                self.standby_held.fetch_add(holds, Ordering::Relaxed);
            }
            Err(_) => self.recount_standby(slot, holds),
        }
    }

    /// The session of `slot` holds `holds` now: if it is counted in standby, the total
    /// moves by the difference. Nothing for a session not in standby (one another
    /// thread took out meanwhile stays out).
    pub(crate) fn recount_standby(&self, slot: &AtomicU64, holds: u64) {
        let mut was = slot.load(Ordering::Relaxed);
        while was != NOT_IN_STANDBY {
            match slot.compare_exchange_weak(was, holds, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.standby_held.fetch_add(holds.wrapping_sub(was), Ordering::Relaxed);
                    return;
                }
                Err(now) => was = now,
            }
        }
    }

    /// The session of `slot` left standby (any other state): no longer counted. Returns
    /// whether it was.
    pub(crate) fn leave_standby(&self, slot: &AtomicU64) -> bool {
        let was = slot.swap(NOT_IN_STANDBY, Ordering::Relaxed);
        if was == NOT_IN_STANDBY {
            return false;
        }
        self.standby_sessions.fetch_sub(1, Ordering::Relaxed);
        self.standby_held.fetch_sub(was, Ordering::Relaxed);
        true
    }

    /// Counts a session in standby reset to keep within [`Self::max_standby`] or
    /// [`Self::max_standby_sessions`].
    pub(crate) fn count_standby_eviction(&self) {
        self.standby_evicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Charges `cost` for a message a connection already holding `held` wants to queue:
    /// false (counted as a refusal) if that would pass the per-connection or the total
    /// bound. A single message larger than a bound is admitted when nothing at all is
    /// held against it, so that it can be sent at all.
    pub(crate) fn try_charge(&self, held: u64, cost: u64) -> bool {
        if !self.within_conn(held, cost) {
            return false;
        }
        if self.charge_total(cost, 0).is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a connection holding `held` may queue a message of `cost` (false is
    /// counted as a refusal).
    #[inline]
    pub(crate) fn within_conn(&self, held: u64, cost: u64) -> bool {
        if held > 0 && held.saturating_add(cost) > self.max_per_conn {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Charges the total bound ahead for a driver's own sends: at least `cost`, and up
    /// to [`RESERVE_CHUNK`] (a sixteenth of the bound at most) where there is room.
    /// Returns what was charged, or `None` (counted as a refusal) where the bound has no
    /// room for `cost`. The caller gives back what it does not use ([`Self::adjust`]).
    pub(crate) fn reserve(&self, cost: u64) -> Option<u64> {
        let charged = self.charge_total(cost, RESERVE_CHUNK.min(self.max_total / 16));
        if charged.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        charged
    }

    /// Charges `cost` to the total, or up to `ahead` where there is room for more;
    /// `None` if `cost` would pass the bound while anything is held.
    fn charge_total(&self, cost: u64, ahead: u64) -> Option<u64> {
        let mut cur = self.held.load(Ordering::Relaxed);
        loop {
            if cur > 0 && cur.saturating_add(cost) > self.max_total {
                return None;
            }
            let take = cost.max(ahead.min(self.max_total.saturating_sub(cur)));
            match self.held.compare_exchange_weak(
                cur,
                cur.saturating_add(take),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(take),
                Err(now) => cur = now,
            }
        }
    }

    /// Moves the total by what one connection's holding changed.
    pub(crate) fn adjust(&self, before: u64, after: u64) {
        if after > before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// What [`to_json`](Self::to_json) holds, for `perf schema`.
    pub(crate) fn schema() -> serde_json::Value {
        use crate::counters::{perf_schema_section, PerfType::*, PerfUnit::*};
        perf_schema_section(&[
            ("val", Gauge, Bytes, "Bytes of messages waiting to be sent"),
            ("max", Gauge, Bytes, "Most bytes of messages waiting to be sent"),
            ("max_per_connection", Gauge, Bytes, "Most bytes waiting on one connection"),
            ("refused", Counter, None, "Messages refused for want of room"),
            ("max_standby", Gauge, Bytes, "Most bytes waiting in standby sessions"),
            ("standby_sessions", Gauge, None, "Sessions in standby"),
            ("standby_held", Gauge, Bytes, "Bytes of messages waiting in standby sessions"),
            ("max_standby_sessions", Gauge, None, "Most sessions in standby"),
            ("standby_evicted", Counter, None, "Standby sessions reset to keep within bounds"),
        ])
    }

    /// The bounds and their use, for `perf dump`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "val": self.held.load(Ordering::Relaxed), "max": self.max_total,
            "max_per_connection": self.max_per_conn,
            "refused": self.refused.load(Ordering::Relaxed),
            "max_standby": self.max_standby,
            "standby_sessions": self.standby_sessions.load(Ordering::Relaxed),
            "standby_held": self.standby_held.load(Ordering::Relaxed),
            "max_standby_sessions": self.max_standby_sessions,
            "standby_evicted": self.standby_evicted.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Arc<SendBudget> {
        SendBudget::new(1 << 20, 1 << 30, 1 << 20, 16)
    }

    fn slot() -> AtomicU64 {
        AtomicU64::new(NOT_IN_STANDBY)
    }

    /// The running total of what sessions in standby hold follows each session in,
    /// through its recounts, and out, whichever order they come in.
    #[test]
    fn sessions_in_standby_are_counted_with_what_they_hold() {
        let b = budget();
        let (one, two) = (slot(), slot());
        b.recount_standby(&one, 70);
        assert_eq!((b.standby_sessions(), b.standby_held()), (0, 0), "not in standby");
        b.enter_standby(&one, 100);
        b.enter_standby(&two, 0);
        assert_eq!((b.standby_sessions(), b.standby_held()), (2, 100));
        b.recount_standby(&two, 300);
        b.recount_standby(&one, 40);
        assert_eq!((b.standby_sessions(), b.standby_held()), (2, 340), "recounted");
        b.enter_standby(&one, 60);
        assert_eq!((b.standby_sessions(), b.standby_held()), (2, 360), "counted once");
        assert!(b.leave_standby(&two));
        assert!(!b.leave_standby(&two), "left once");
        assert_eq!((b.standby_sessions(), b.standby_held()), (1, 60));
        b.recount_standby(&two, 500);
        assert_eq!(b.standby_held(), 60, "a session gone from standby is not recounted");
        assert!(b.leave_standby(&one));
        assert_eq!((b.standby_sessions(), b.standby_held()), (0, 0));
    }

    /// A recount that grows a session and its departure, each applied to the total by
    /// another thread, the departure's first: the total wraps below zero in between and
    /// ends exact.
    #[test]
    fn a_recount_and_a_departure_end_exact_in_either_order() {
        let b = budget();
        let (one, two) = (slot(), slot());
        b.enter_standby(&one, 10);
        b.enter_standby(&two, 5);
        // The recount's exchange (10 to 20) is done, its difference not added yet.
        one.store(20, Ordering::Relaxed);
        assert!(b.leave_standby(&one));
        assert_eq!(b.standby_held(), 15u64.wrapping_sub(20), "below zero, wrapped");
        b.standby_held.fetch_add(20u64.wrapping_sub(10), Ordering::Relaxed);
        assert_eq!((b.standby_sessions(), b.standby_held()), (1, 5));
    }
}
