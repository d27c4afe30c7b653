//! The message ordering of the dispatch queue, as a pure data structure (no threads).
//!
//! Mirrors Ceph's `PrioritizedQueue` as used by `DispatchQueue`:
//! - priorities above [`PRIO_HIGH`] (so [`PRIO_HIGHEST`](protocol::message::PRIO_HIGHEST))
//!   are *strict*: the highest non-empty one is always served first;
//! - the others share turns by smooth weighted round robin with the priority value as
//!   the weight: over any stretch where priorities `a` and `b` both stay non-empty, they
//!   get turns in the ratio `a : b`, each within one turn of its exact share, so no
//!   priority starves (Ceph weights by tokens and message cost; we weight by turns);
//! - inside one priority, connections take turns (round robin) and each connection's
//!   messages leave in FIFO order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::message::{PRIO_DEFAULT, PRIO_HIGH};

/// One priority level: the connections with queued items, served in rotation.
struct Lane<T> {
    /// Invariant: holds each key of `by_conn` exactly once.
    rotation: VecDeque<u64>,
    /// Invariant: no empty deque is stored.
    by_conn: HashMap<u64, VecDeque<T>>,
    len: usize,
    /// Smooth WRR running weight (unused for strict lanes).
    current: i64,
}

impl<T> Lane<T> {
    fn new() -> Self {
        Lane { rotation: VecDeque::new(), by_conn: HashMap::new(), len: 0, current: 0 }
    }

    fn push(&mut self, conn: u64, item: T) {
        let q = self.by_conn.entry(conn).or_default();
        if q.is_empty() {
            self.rotation.push_back(conn);
        }
        q.push_back(item);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<T> {
        let conn = self.rotation.pop_front()?;
        let q = self.by_conn.get_mut(&conn)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.by_conn.remove(&conn);
        } else {
            self.rotation.push_back(conn);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    fn remove_conn(&mut self, conn: u64, out: &mut Vec<T>) {
        if let Some(q) = self.by_conn.remove(&conn) {
            self.len -= q.len();
            out.extend(q);
            self.rotation.retain(|c| *c != conn);
        }
    }
}

/// Empty lanes are kept (so a steady trickle at one priority does not allocate a lane
/// per message) while there are at most this many lanes; beyond it they are dropped.
/// Real traffic uses a handful of priorities.
const KEEP_EMPTY_LANES: usize = 8; // per class (strict, round robin)

/// Messages ordered by priority, then connection, then arrival.
pub(crate) struct PrioQueue<T> {
    /// Priorities above `PRIO_HIGH`. Lanes may be empty (see [`KEEP_EMPTY_LANES`]).
    strict: BTreeMap<u16, Lane<T>>,
    /// The others. Lanes may be empty; an empty lane's WRR weight is reset to 0.
    wrr: BTreeMap<u16, Lane<T>>,
    len: usize,
}

impl<T> PrioQueue<T> {
    pub(crate) fn new() -> Self {
        PrioQueue { strict: BTreeMap::new(), wrr: BTreeMap::new(), len: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Priority 0 means "unset" on a [`Message`](protocol::Message), so it counts as default.
    pub(crate) fn effective_priority(priority: u16) -> u16 {
        if priority == 0 {
            PRIO_DEFAULT
        } else {
            priority
        }
    }

    pub(crate) fn push(&mut self, priority: u16, conn: u64, item: T) {
        let priority = Self::effective_priority(priority);
        let map = if priority > PRIO_HIGH { &mut self.strict } else { &mut self.wrr };
        map.entry(priority).or_insert_with(Lane::new).push(conn, item);
        self.len += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let strict = self.strict.iter_mut().rev().find(|(_, lane)| lane.len > 0);
        let item = match strict {
            Some((prio, lane)) => {
                let prio = *prio;
                let item = lane.pop();
                if lane.len == 0 {
                    Self::trim(&mut self.strict, prio);
                }
                item
            }
            None => self.pop_wrr(),
        };
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    fn trim(map: &mut BTreeMap<u16, Lane<T>>, prio: u16) {
        if map.len() > KEEP_EMPTY_LANES {
            map.remove(&prio);
        }
    }

    fn pop_wrr(&mut self) -> Option<T> {
        let total: i64 =
            self.wrr.iter().filter(|(_, l)| l.len > 0).map(|(p, _)| i64::from(*p)).sum();
        let mut best: Option<(u16, i64)> = None;
        // Highest priority first, so ties go to the higher priority.
        for (prio, lane) in self.wrr.iter_mut().rev().filter(|(_, l)| l.len > 0) {
            lane.current += i64::from(*prio);
            if best.is_none_or(|(_, cw)| lane.current > cw) {
                best = Some((*prio, lane.current));
            }
        }
        let (prio, _) = best?;
        let lane = self.wrr.get_mut(&prio)?;
        lane.current -= total;
        let item = lane.pop();
        if lane.len == 0 {
            // Leaving the rotation: it re-enters with no credit or debt, as a new lane.
            lane.current = 0;
            Self::trim(&mut self.wrr, prio);
        }
        item
    }

    /// Removes every item queued for `conn`, in no particular order.
    pub(crate) fn remove_conn(&mut self, conn: u64) -> Vec<T> {
        let mut out = Vec::new();
        for map in [&mut self.strict, &mut self.wrr] {
            for lane in map.values_mut() {
                lane.remove_conn(conn, &mut out);
                if lane.len == 0 {
                    lane.current = 0;
                }
            }
            if map.len() > KEEP_EMPTY_LANES {
                map.retain(|_, lane| lane.len > 0);
            }
        }
        self.len -= out.len();
        out
    }

    /// Removes everything.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(item) = self.pop() {
            out.push(item);
        }
        out
    }

    #[cfg(test)]
    fn lanes(&self) -> usize {
        self.strict.len() + self.wrr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::{PRIO_HIGHEST, PRIO_LOW};

    #[test]
    fn strict_first_then_fifo_per_connection() {
        let mut q = PrioQueue::new();
        q.push(PRIO_LOW, 1, "low1");
        q.push(PRIO_HIGHEST, 2, "top1");
        q.push(PRIO_LOW, 1, "low2");
        q.push(PRIO_HIGHEST, 2, "top2");
        q.push(200, 3, "strict200");
        assert_eq!(q.len(), 5);
        let order: Vec<_> = q.drain();
        assert_eq!(order, ["top1", "top2", "strict200", "low1", "low2"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn connections_take_turns_within_a_priority() {
        let mut q = PrioQueue::new();
        for i in 0..3 {
            q.push(PRIO_DEFAULT, 1, (1, i));
        }
        q.push(PRIO_DEFAULT, 2, (2, 0));
        assert_eq!(q.drain(), [(1, 0), (2, 0), (1, 1), (1, 2)]);
    }

    /// Ceph's prioritized queue: weight proportional to priority, nothing starves.
    #[test]
    fn weighted_round_robin_proportions() {
        let mut q = PrioQueue::new();
        let prios = [PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH];
        for i in 0..10_000u32 {
            for p in prios {
                q.push(p, u64::from(i % 7), p);
            }
        }
        let total: u32 = prios.iter().map(|p| u32::from(*p)).sum();
        let mut counts = [0u32; 3];
        for turn in 1..=(total * 20) {
            let p = q.pop().expect("backlogged");
            let idx = prios.iter().position(|x| *x == p).expect("known prio");
            counts[idx] += 1;
            for (i, pr) in prios.iter().enumerate() {
                let exact = f64::from(turn) * f64::from(*pr) / f64::from(total);
                assert!((f64::from(counts[i]) - exact).abs() <= 1.0, "turn {turn}: {counts:?}");
            }
        }
        assert_eq!(counts, [64 * 20, 127 * 20, 196 * 20]);
    }

    #[test]
    fn remove_conn_leaves_others_in_order() {
        let mut q = PrioQueue::new();
        for i in 0..4 {
            q.push(PRIO_DEFAULT, i % 2, i);
            q.push(PRIO_HIGHEST, i % 2, 100 + i);
        }
        let mut gone = q.remove_conn(1);
        gone.sort_unstable();
        assert_eq!(gone, [1, 3, 101, 103]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.drain(), [100, 102, 0, 2]);
    }

    #[test]
    fn empty_lanes_are_bounded() {
        let mut q = PrioQueue::new();
        for p in 1..=300u16 {
            q.push(p, 1, p);
        }
        assert_eq!(q.lanes(), 300);
        let got = q.drain();
        assert_eq!(got.len(), 300);
        assert!(q.lanes() <= 2 * KEEP_EMPTY_LANES, "{} lanes", q.lanes());
        // Strict lanes 197..=300 first, highest first.
        assert_eq!(got[..3], [300, 299, 298]);
    }

    #[test]
    fn priority_zero_is_default() {
        let mut q = PrioQueue::new();
        q.push(0, 1, "a");
        q.push(PRIO_DEFAULT, 1, "b");
        assert_eq!(q.drain(), ["a", "b"]);
    }
}
