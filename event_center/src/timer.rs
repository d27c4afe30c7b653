//! One-shot timers: an ordered map keyed by `(deadline, seq)`.
//!
//! Insert and cancel are O(log n) and cancel removes the entry at once (no lazy deletion,
//! so 100k insert/cancel cycles leave nothing behind). Ties on the deadline fire in
//! creation order because `seq` only grows. Generic over what a timer does when it fires
//! (the center stores a [`TimerTarget`](crate::TimerTarget)).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Names one armed timer on one center. Carries its deadline, so cancel needs no side table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId {
    deadline: Instant,
    seq: u64,
}

impl TimerId {
    /// When the timer is (or was) due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The armed timers of one center.
pub(crate) struct TimerQueue<T> {
    /// Invariant: every key was produced by `insert` and has not been popped or cancelled.
    armed: BTreeMap<(Instant, u64), T>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue { armed: BTreeMap::new(), next_seq: 0 }
    }
}

impl<T> TimerQueue<T> {
    #[inline]
    pub(crate) fn insert(&mut self, deadline: Instant, target: T) -> TimerId {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.armed.insert((deadline, seq), target);
        TimerId { deadline, seq }
    }

    #[inline]
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        self.armed.remove(&(id.deadline, id.seq)).is_some()
    }

    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.armed.first_key_value().map(|(&(deadline, _), _)| deadline)
    }

    /// The earliest timer if it is due at `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerId, T)> {
        let entry = self.armed.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let ((deadline, seq), target) = entry.remove_entry();
        Some((TimerId { deadline, seq }, target))
    }

    pub(crate) fn len(&self) -> usize {
        self.armed.len()
    }

    /// Drops every timer whose target `keep` refuses (a scan of all of them).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.armed.retain(|_, target| keep(target));
    }

    pub(crate) fn clear(&mut self) {
        self.armed.clear();
    }
}

/// How long `poll` may sleep to wake at `deadline`: rounded UP to whole milliseconds.
///
/// epoll's timeout has millisecond granularity. A deadline 0.3 ms away must become 1 ms,
/// not 0: a zero timeout returns at once with the timer still not due, and the loop spins
/// until it is (Ceph PR 53477 burnt 99 % CPU that way).
pub(crate) fn poll_timeout(now: Instant, deadline: Instant) -> Duration {
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        return Duration::ZERO;
    }
    let millis = left.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_fifo_order() {
        let mut q = TimerQueue::default();
        let t0 = Instant::now();
        q.insert(t0 + Duration::from_millis(5), 0);
        q.insert(t0 + Duration::from_millis(1), 1);
        q.insert(t0 + Duration::from_millis(5), 2);
        let mut order = Vec::new();
        while let Some((_, n)) = q.pop_due(t0 + Duration::from_secs(1)) {
            order.push(n);
        }
        assert_eq!(order, [1, 0, 2]);
    }

    #[test]
    fn not_due_stays() {
        let mut q = TimerQueue::<u32>::default();
        let t0 = Instant::now();
        let t = q.insert(t0 + Duration::from_millis(5), 0);
        assert!(q.pop_due(t0).is_none());
        assert!(q.cancel(t));
        assert!(!q.cancel(t));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn timeout_rounds_up_to_a_millisecond() {
        let t0 = Instant::now();
        assert_eq!(poll_timeout(t0, t0), Duration::ZERO);
        assert_eq!(poll_timeout(t0 + Duration::from_millis(1), t0), Duration::ZERO);
        assert_eq!(poll_timeout(t0, t0 + Duration::from_nanos(1)), Duration::from_millis(1));
        assert_eq!(poll_timeout(t0, t0 + Duration::from_micros(300)), Duration::from_millis(1));
        assert_eq!(poll_timeout(t0, t0 + Duration::from_micros(1001)), Duration::from_millis(2));
        assert_eq!(poll_timeout(t0, t0 + Duration::from_millis(3)), Duration::from_millis(3));
    }
}
