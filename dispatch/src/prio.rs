//! The message ordering of the dispatch queue, as a pure data structure (no threads).
//!
//! Ceph's `PrioritizedQueue` with the split DESIGN.md asks for:
//! - priorities above [`PRIO_HIGH`] (so [`PRIO_HIGHEST`](protocol::message::PRIO_HIGHEST))
//!   are *strict*: the highest non-empty one is always served first. Ceph's
//!   `DispatchQueue::enqueue` makes everything from `CEPH_MSG_PRIO_LOW` (64) up strict
//!   (checked in 16.2 and 20.2), so there a backlog of `PRIO_HIGH` messages (an OSD's
//!   heartbeats) always goes before `PRIO_DEFAULT` ones; here they share turns 196 : 127.
//!   The cut is DESIGN.md's, near the OSD op queue's (`osd_op_queue_cut_off = high`),
//!   which makes `PRIO_HIGH` itself strict (`priority >= cutoff`) where we do not;
//! - the others share turns by smooth weighted round robin with the priority value as
//!   the weight: over any stretch where priorities `a` and `b` both stay non-empty, they
//!   get turns in the ratio `a : b`, each within one turn of its exact share, so no
//!   priority starves (Ceph weights by tokens and message cost; we weight by turns);
//! - inside one priority, connections take turns (round robin) and each connection's
//!   messages leave in FIFO order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use protocol::message::{PRIO_DEFAULT, PRIO_HIGH};

/// Hashes a FIFO's key, a priority and a connection id, with one multiply each.
/// Connection ids are handed out by the process (never chosen by a peer) and a peer's
/// priorities are 16 bits, which the multiply spreads one to one over the low bits, so
/// flooding one bucket is not a threat, and a SipHash per queued message is measurable
/// on the dispatch path.
#[derive(Default)]
struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(FIB_MULTIPLIER);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // The high bits carry the mix; hashbrown takes its control bits from the top.
        self.0 = (self.0 ^ n).wrapping_mul(FIB_MULTIPLIER);
    }
}

/// 2^64 / φ, odd: multiplying by it spreads consecutive ids over the high bits.
const FIB_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The FIFOs of all lanes, by (priority, connection): one map for the queue, not one
/// per lane. A map per lane cost each new lane its first table (~180 bytes) besides
/// the lane itself, and a peer giving each message a priority of its own (65,536 of
/// them) made every queued message, charged `MESSAGE_OVERHEAD` (512 bytes), hold ~810.
type FifoMap<V> = HashMap<(u16, u64), V, BuildHasherDefault<ConnIdHasher>>;

/// How many emptied per-connection deques the queue keeps for reuse, so a connection
/// whose backlog drains and refills (the steady state of a busy dispatch thread) does
/// not free and allocate a deque each time: 8 for each lane kept empty.
const SPARE_DEQUES: usize = 8 * 2 * KEEP_EMPTY_LANES;

/// A spare deque keeps at most this much capacity (items); a larger one, left by a
/// burst, is dropped rather than kept holding memory.
const SPARE_CAPACITY: usize = 64;

/// Room (in FIFOs) the FIFO map keeps once the FIFOs it held were (nearly) emptied: as many
/// (priority, connection) pairs waiting at once regrow nothing, but a peer that gave
/// each message of a flood a priority of its own (up to what the dispatch throttle
/// holds, ~200,000 messages) must not leave the map holding the flood's room (~13 MiB
/// of buckets) for the messenger's life: a map never shrinks on its own.
const FIFOS_KEEP: usize = 1024;

/// Room (in connections) a lane's rotation keeps once the connections that waited in it
/// at once (nearly) left: that many waiting together regrow nothing, but a burst of
/// connections (every client of a daemon with a message waiting at one priority) must not
/// leave each lane kept ([`KEEP_EMPTY_LANES`]) holding the burst's room for the
/// messenger's life: a deque never shrinks on its own.
const ROTATION_KEEP: usize = 256;

/// One priority level: the connections with queued items, served in rotation. Their
/// FIFOs are in the queue's [`Fifos`].
struct Lane {
    /// Invariant: holds each connection with a FIFO at this priority exactly once.
    rotation: VecDeque<u64>,
    len: usize,
    /// Smooth WRR running weight (unused for strict lanes).
    current: i64,
}

impl Lane {
    /// Room for one connection in turn: a new lane is made for the message that fills
    /// it, and most lanes a peer makes are of one connection (a deque's first growth
    /// makes room for 4). A lane with more connections waiting grows as any deque and
    /// gives the room of a burst back as they leave ([`Lane::give_back_room`]).
    fn new() -> Self {
        Lane { rotation: VecDeque::with_capacity(1), len: 0, current: 0 }
    }

    /// After a connection left the rotation: gives back the room of a burst once the
    /// rotation holds a quarter of it or less, down to twice what it holds (so it shrinks
    /// again only once that halved: no reallocation per pop), never below
    /// [`ROTATION_KEEP`].
    fn give_back_room(&mut self) {
        let room = self.rotation.capacity();
        if room > 2 * ROTATION_KEEP && self.rotation.len() <= room / 4 {
            self.rotation.shrink_to(ROTATION_KEEP.max(self.rotation.len() * 2));
        }
    }
}

/// Every lane's per-connection FIFOs.
struct Fifos<T> {
    /// Invariant: no empty deque is stored, nor the key of `hot`.
    by_key: FifoMap<VecDeque<T>>,
    /// The FIFO a pop found alone in its lane's rotation, taken out of the map with its
    /// key: the dispatch thread pops a read's batch (tens of messages of one connection)
    /// one by one, and each pop looked the FIFO up in the map (~30 instructions at 64 B).
    /// Invariant: never empty; it leaves only as it empties or its connection's items
    /// are removed, and pushes and pops of other FIFOs leave it where it is.
    hot: Option<((u16, u64), VecDeque<T>)>,
    /// Emptied deques for reuse (at most [`SPARE_DEQUES`], each at most
    /// [`SPARE_CAPACITY`] items of capacity).
    spare: Vec<VecDeque<T>>,
}

impl<T> Fifos<T> {
    fn new() -> Self {
        Fifos { by_key: FifoMap::default(), hot: None, spare: Vec::new() }
    }

    /// How many FIFOs are stored (none of them empty).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_key.len() + usize::from(self.hot.is_some())
    }

    /// The FIFO of `key`, wherever it is kept.
    #[cfg(test)]
    fn get(&self, key: &(u16, u64)) -> Option<&VecDeque<T>> {
        match &self.hot {
            Some((k, q)) if k == key => Some(q),
            _ => self.by_key.get(key),
        }
    }

    /// Queues `first` and then what `more` yields, all for `conn`, in that order, in
    /// `lane` (of priority `prio`); returns how many. The connection's FIFO is looked up
    /// once for the run.
    fn push_run(
        &mut self,
        lane: &mut Lane,
        prio: u16,
        conn: u64,
        first: T,
        more: impl Iterator<Item = T>,
    ) -> usize {
        let q = match &mut self.hot {
            Some((key, q)) if *key == (prio, conn) => q,
            _ => {
                let spare = &mut self.spare;
                self.by_key.entry((prio, conn)).or_insert_with(|| spare.pop().unwrap_or_default())
            }
        };
        if q.is_empty() {
            lane.rotation.push_back(conn);
        }
        let before = q.len();
        q.push_back(first);
        // An iterator of known length (a batch's messages) is written in place after
        // one reservation.
        q.extend(more);
        let n = q.len() - before;
        lane.len += n;
        n
    }

    /// The next item of `lane` (of priority `prio`).
    // Inlined into `PrioQueue::pop`: called apart, the item (a queue entry of 48 bytes)
    // was moved out through one more return slot, ~25 instructions per message at 64 B.
    #[inline(always)]
    fn pop(&mut self, lane: &mut Lane, prio: u16) -> Option<T> {
        if lane.rotation.len() == 1 {
            // One connection waiting (the usual case): its turn comes round again at
            // once, so the rotation stays as it is, and its FIFO is kept out of the map
            // until it empties, unless another FIFO is kept out already (two lanes of
            // one connection each, served in turns, would swap them at every pop).
            let key = (prio, *lane.rotation.front()?);
            let q = match &mut self.hot {
                Some((k, q)) if *k == key => q,
                Some(_) => self.by_key.get_mut(&key)?,
                None => {
                    let q = self.by_key.remove(&key)?;
                    &mut self.hot.insert((key, q)).1
                }
            };
            let item = q.pop_front();
            if q.is_empty() {
                lane.rotation.clear();
                lane.give_back_room();
                if let Some(q) = self.remove(&key) {
                    self.recycle(q);
                }
                self.give_back_room();
            }
            if item.is_some() {
                lane.len -= 1;
            }
            return item;
        }
        let conn = lane.rotation.pop_front()?;
        let key = (prio, conn);
        let q = match &mut self.hot {
            Some((k, q)) if *k == key => q,
            _ => self.by_key.get_mut(&key)?,
        };
        let item = q.pop_front();
        if q.is_empty() {
            lane.give_back_room();
            if let Some(q) = self.remove(&key) {
                self.recycle(q);
            }
            self.give_back_room();
        } else {
            lane.rotation.push_back(conn);
        }
        if item.is_some() {
            lane.len -= 1;
        }
        item
    }

    /// Takes the FIFO of `key` out, wherever it is kept.
    fn remove(&mut self, key: &(u16, u64)) -> Option<VecDeque<T>> {
        match &self.hot {
            Some((k, _)) if k == key => self.hot.take().map(|(_, q)| q),
            _ => self.by_key.remove(key),
        }
    }

    /// After a FIFO was removed: the map gives back the room of a flood once it holds a
    /// quarter of it or less, down to twice what it holds (so it shrinks again only once
    /// that halved: no rehash per message), never below [`FIFOS_KEEP`].
    fn give_back_room(&mut self) {
        let room = self.by_key.capacity();
        // Past twice the keep: a map shrunk to it may report more room than asked for
        // (its buckets are a power of two), and must not be shrunk again at every pop.
        if room > 2 * FIFOS_KEEP && self.by_key.len() <= room / 4 {
            self.by_key.shrink_to(FIFOS_KEEP.max(self.by_key.len() * 2));
        }
    }

    /// Keeps an emptied deque for the next connection that queues, within bounds.
    fn recycle(&mut self, q: VecDeque<T>) {
        if self.spare.len() < SPARE_DEQUES && q.capacity() <= SPARE_CAPACITY {
            self.spare.push(q);
        }
    }

    fn remove_conn(&mut self, lane: &mut Lane, prio: u16, conn: u64, out: &mut Vec<T>) {
        if let Some(q) = self.remove(&(prio, conn)) {
            lane.len -= q.len();
            out.extend(q);
            lane.rotation.retain(|c| *c != conn);
            lane.give_back_room();
            self.give_back_room();
        }
    }

    /// The first waiting item of each (priority, connection).
    fn heads(&self) -> impl Iterator<Item = &T> {
        self.hot.iter().map(|(_, q)| q).chain(self.by_key.values()).filter_map(VecDeque::front)
    }
}

/// Empty lanes are kept (so a steady trickle at one priority does not allocate a lane
/// per message) while there are at most this many lanes; beyond it they are dropped.
/// Real traffic uses a handful of priorities.
const KEEP_EMPTY_LANES: usize = 8; // per class (strict, round robin)

/// Messages ordered by priority, then connection, then arrival.
pub(crate) struct PrioQueue<T> {
    /// Priorities above `PRIO_HIGH`. Lanes may be empty (see [`KEEP_EMPTY_LANES`]).
    strict: BTreeMap<u16, Lane>,
    /// The others. Lanes may be empty; an empty lane's WRR weight is reset to 0.
    wrr: BTreeMap<u16, Lane>,
    /// Every lane's FIFOs.
    fifos: Fifos<T>,
    /// Lanes of `strict` with items.
    strict_busy: usize,
    /// Lanes of `wrr` with items: with one, its turn needs no weighing (see `pop_wrr`).
    wrr_busy: usize,
    len: usize,
    /// Items [`hot_alone`](Self::hot_alone) pops took from the hot FIFO and did not yet
    /// count off its lane's `len` (so that lane's `len` is this much too high): each such
    /// pop found the lane in the `wrr` map, a search per message (~15 instructions at
    /// 64 B), only to count one off. Counted off by [`settle`](Self::settle), which
    /// every other pop and `remove_conn` run first. Pushes need not: they move no FIFO
    /// out of `hot`, and the lane, holding the hot FIFO's items, is busy by either count.
    hot_popped: usize,
}

impl<T> PrioQueue<T> {
    pub(crate) fn new() -> Self {
        PrioQueue {
            strict: BTreeMap::new(),
            wrr: BTreeMap::new(),
            fifos: Fifos::new(),
            strict_busy: 0,
            wrr_busy: 0,
            len: 0,
            hot_popped: 0,
        }
    }

    /// Counts the items [`hot_alone`](Self::hot_alone) pops took off the hot FIFO's lane
    /// ([`PrioQueue::hot_popped`]). They leave the hot FIFO in place and non-empty, and
    /// its lane is a round-robin one, so both are where those pops left them.
    #[inline]
    fn settle(&mut self) {
        if self.hot_popped == 0 {
            return;
        }
        let n = std::mem::take(&mut self.hot_popped);
        let lane = self.fifos.hot.as_ref().and_then(|((prio, _), _)| self.wrr.get_mut(prio));
        debug_assert!(lane.is_some(), "hot pops counted with no hot FIFO in a lane");
        if let Some(lane) = lane {
            lane.len -= n;
        }
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
        let (lane, fifos) = self.lane_to_fill(priority);
        self.len += fifos.push_run(lane, priority, conn, item, std::iter::empty());
    }

    /// The lane of `priority` (an effective one), created if missing and counted busy if
    /// it was empty: the caller queues at least one item in it; and the FIFOs.
    fn lane_to_fill(&mut self, priority: u16) -> (&mut Lane, &mut Fifos<T>) {
        let (map, busy) = if priority > PRIO_HIGH {
            (&mut self.strict, &mut self.strict_busy)
        } else {
            (&mut self.wrr, &mut self.wrr_busy)
        };
        let lane = map.entry(priority).or_insert_with(Lane::new);
        if lane.len == 0 {
            *busy += 1;
        }
        (lane, &mut self.fifos)
    }

    /// Queues the `(priority, item)`s of `items`, all of connection `conn`, in their
    /// order: what [`push`](Self::push) does for each, with the lane and the
    /// connection's FIFO looked up once per run of one priority (a read's batch is
    /// usually one run: ~100 instructions per message fewer at 64 B).
    pub(crate) fn push_all(&mut self, conn: u64, items: impl IntoIterator<Item = (u16, T)>) {
        let mut items = items.into_iter().peekable();
        while let Some((priority, first)) = items.next() {
            let priority = Self::effective_priority(priority);
            let more = std::iter::from_fn(|| {
                items
                    .next_if(|(p, _)| Self::effective_priority(*p) == priority)
                    .map(|(_, item)| item)
            });
            let (lane, fifos) = self.lane_to_fill(priority);
            self.len += fifos.push_run(lane, priority, conn, first, more);
        }
    }

    /// Queues every item of `items`, all of connection `conn` and of `priority`, in
    /// their order: [`push_all`](Self::push_all) for a run known to be of one priority,
    /// without a look at each item's (a read's batch is usually one run: ~25
    /// instructions per message fewer at 64 B).
    pub(crate) fn push_run(
        &mut self,
        priority: u16,
        conn: u64,
        items: impl IntoIterator<Item = T>,
    ) {
        let mut items = items.into_iter();
        let Some(first) = items.next() else {
            return;
        };
        let priority = Self::effective_priority(priority);
        let (lane, fifos) = self.lane_to_fill(priority);
        self.len += fifos.push_run(lane, priority, conn, first, items);
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        if let Some(q) = self.hot_alone() {
            // Taken straight into the return value: an item handed back through a
            // helper's `Option` was moved once more (~6 instructions per message).
            let item = q.pop_front();
            self.hot_popped += 1;
            self.len -= 1;
            return item;
        }
        self.settle();
        let strict = if self.strict_busy > 0 {
            self.strict.iter_mut().rev().find(|(_, lane)| lane.len > 0)
        } else {
            None
        };
        let item = match strict {
            Some((prio, lane)) => {
                let prio = *prio;
                let item = self.fifos.pop(lane, prio);
                if lane.len == 0 {
                    self.strict_busy -= 1;
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

    /// For [`pop`](Self::pop): the hot FIFO when every queued item is in it, none in a
    /// strict lane (so it is of a round-robin lane), and it keeps at least one once
    /// popped: the dispatch thread working through one connection's batch. Then its lane
    /// is the only busy one, with that connection alone in its rotation, so the general
    /// pop would serve it, leave the rotation and the WRR weights as they are and only
    /// count the item off; here neither the lane nor the FIFO is looked up (~55
    /// instructions per message at 64 B), and the lane's count waits for
    /// [`settle`](Self::settle). `None` when that is not the case.
    #[inline(always)]
    fn hot_alone(&mut self) -> Option<&mut VecDeque<T>> {
        if self.strict_busy != 0 {
            return None;
        }
        let (_, q) = self.fifos.hot.as_mut()?;
        // All the items in one FIFO, none in a strict lane: its lane is the only busy
        // one and holds only it.
        if q.len() < 2 || q.len() != self.len {
            return None;
        }
        Some(q)
    }

    fn trim(map: &mut BTreeMap<u16, Lane>, prio: u16) {
        if map.len() > KEEP_EMPTY_LANES {
            map.remove(&prio);
        }
    }

    fn pop_wrr(&mut self) -> Option<T> {
        if self.wrr_busy == 1 {
            // The only lane with items: the weighing below would add its weight to its
            // running weight, pick it and take the total (its weight) off again, leaving
            // every running weight as it was. The dispatch thread pops per message, and
            // the weighing walked the lanes twice (~150 instructions at one lane).
            let (&prio, lane) = self.wrr.iter_mut().find(|(_, l)| l.len > 0)?;
            let item = self.fifos.pop(lane, prio);
            if lane.len == 0 {
                lane.current = 0;
                self.wrr_busy -= 1;
                Self::trim(&mut self.wrr, prio);
            }
            return item;
        }
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
        let item = self.fifos.pop(lane, prio);
        if lane.len == 0 {
            // Leaving the rotation: it re-enters with no credit or debt, as a new lane.
            lane.current = 0;
            self.wrr_busy -= 1;
            Self::trim(&mut self.wrr, prio);
        }
        item
    }

    /// Removes every item queued for `conn`, in no particular order.
    pub(crate) fn remove_conn(&mut self, conn: u64) -> Vec<T> {
        self.settle();
        let mut out = Vec::new();
        for map in [&mut self.strict, &mut self.wrr] {
            for (&prio, lane) in map.iter_mut() {
                self.fifos.remove_conn(lane, prio, conn, &mut out);
                if lane.len == 0 {
                    lane.current = 0;
                }
            }
            if map.len() > KEEP_EMPTY_LANES {
                map.retain(|_, lane| lane.len > 0);
            }
        }
        self.len -= out.len();
        self.strict_busy = self.strict.values().filter(|l| l.len > 0).count();
        self.wrr_busy = self.wrr.values().filter(|l| l.len > 0).count();
        out
    }

    /// The first waiting item of every (priority, connection) pair: each is the oldest of
    /// its FIFO, so the oldest item of all is among them.
    pub(crate) fn heads(&self) -> impl Iterator<Item = &T> {
        self.fifos.heads()
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

    /// The policy in the module docs, written plainly: the queue's shortcuts (one busy
    /// lane, one waiting connection) must not change what it serves.
    #[derive(Default)]
    struct Model {
        lanes: BTreeMap<u16, ModelLane>,
    }

    /// (running weight, connections in turn, FIFO per connection)
    type ModelLane = (i64, VecDeque<u64>, HashMap<u64, VecDeque<u32>>);

    impl Model {
        fn push(&mut self, priority: u16, conn: u64, item: u32) {
            let prio = PrioQueue::<u32>::effective_priority(priority);
            let (_, turns, fifos) = self.lanes.entry(prio).or_default();
            let fifo = fifos.entry(conn).or_default();
            if fifo.is_empty() {
                turns.push_back(conn);
            }
            fifo.push_back(item);
        }

        fn busy(&self) -> impl Iterator<Item = u16> + '_ {
            self.lanes.iter().filter(|(_, (_, t, _))| !t.is_empty()).map(|(p, _)| *p)
        }

        fn pop(&mut self) -> Option<u32> {
            let prio = match self.busy().filter(|p| *p > PRIO_HIGH).max() {
                Some(p) => p,
                None => {
                    let busy: Vec<u16> = self.busy().collect();
                    let total: i64 = busy.iter().map(|p| i64::from(*p)).sum();
                    let mut best: Option<(u16, i64)> = None;
                    for &p in busy.iter().rev() {
                        let lane = self.lanes.get_mut(&p)?;
                        lane.0 += i64::from(p);
                        if best.is_none_or(|(_, w)| lane.0 > w) {
                            best = Some((p, lane.0));
                        }
                    }
                    let (p, _) = best?;
                    self.lanes.get_mut(&p)?.0 -= total;
                    p
                }
            };
            let (current, turns, fifos) = self.lanes.get_mut(&prio)?;
            let conn = turns.pop_front()?;
            let fifo = fifos.get_mut(&conn)?;
            let item = fifo.pop_front();
            if fifo.is_empty() {
                fifos.remove(&conn);
            } else {
                turns.push_back(conn);
            }
            if turns.is_empty() {
                *current = 0;
            }
            item
        }

        fn remove_conn(&mut self, conn: u64) {
            for (current, turns, fifos) in self.lanes.values_mut() {
                fifos.remove(&conn);
                turns.retain(|c| *c != conn);
                if turns.is_empty() {
                    *current = 0;
                }
            }
        }
    }

    /// A small deterministic generator (Knuth's MMIX LCG): `next(n)` is in `0..n`.
    fn lcg(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        }
    }

    /// Random pushes, pops and connection removals, mostly at one priority and from one
    /// connection (the dispatch thread's usual load), sometimes mixed: the queue serves
    /// exactly what the plain model serves.
    #[test]
    fn serves_as_the_plain_policy_does() {
        let mut next = lcg(0x2545_f491_4f6c_dd1d);
        let (mut q, mut model) = (PrioQueue::new(), Model::default());
        let mut item = 0u32;
        let mut popped = 0;
        for round in 0..200_000u32 {
            // Stretches of single-lane, single-connection traffic, then mixed ones.
            let mixed = (round / 2_000) % 3 == 0;
            match next(10) {
                0 => {
                    // A read's batch: one connection, mostly one priority.
                    let conn = if mixed { next(4) } else { 1 };
                    let run: Vec<(u16, u32)> = (0..next(6))
                        .map(|k| {
                            let p = if mixed && next(3) == 0 { PRIO_HIGHEST } else { PRIO_DEFAULT };
                            (p, item + k as u32)
                        })
                        .collect();
                    item += run.len() as u32;
                    for &(p, it) in &run {
                        model.push(p, conn, it);
                    }
                    // A run of one priority, as the queue's receive path hands it over.
                    match run.first() {
                        Some(&(p, _)) if run.iter().all(|r| r.0 == p) && next(2) == 0 => {
                            q.push_run(p, conn, run.into_iter().map(|(_, it)| it));
                        }
                        _ => q.push_all(conn, run),
                    }
                }
                1..=4 => {
                    let priority = if mixed {
                        [0, PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH, 200, PRIO_HIGHEST][next(6) as usize]
                    } else {
                        PRIO_DEFAULT
                    };
                    let conn = if mixed { next(4) } else { 1 };
                    q.push(priority, conn, item);
                    model.push(priority, conn, item);
                    item += 1;
                }
                5..=8 => {
                    let got = q.pop();
                    assert_eq!(got, model.pop(), "pop {popped} (round {round})");
                    popped += usize::from(got.is_some());
                }
                _ if next(20) == 0 => {
                    let conn = next(4);
                    q.remove_conn(conn);
                    model.remove_conn(conn);
                }
                _ => {}
            }
        }
        while let Some(got) = q.pop() {
            assert_eq!(Some(got), model.pop());
        }
        assert_eq!(model.pop(), None);
        assert!(popped > 50_000, "{popped}");
    }

    /// Floods of (priority, connection) pairs past what the FIFO map keeps (strict and
    /// weighted lanes, a few thousand keys), drained with pushes and connection removals
    /// interleaved: the map's room is given back as it empties (rehashes in the middle
    /// of the traffic) and the queue still serves exactly what the plain model serves.
    #[test]
    fn serves_as_the_plain_policy_does_through_floods_of_keys() {
        let mut next = lcg(0x9e37_79b9_7f4a_7c15);
        let (mut q, mut model) = (PrioQueue::new(), Model::default());
        let mut item = 0u32;
        let mut grown = 0;
        for flood in 0..3u64 {
            for _ in 0..6_000 {
                let (priority, conn) = (next(600) as u16, next(8));
                q.push(priority, conn, item);
                model.push(priority, conn, item);
                item += 1;
            }
            grown = grown.max(q.fifos.by_key.capacity());
            let mut popped = 0;
            while q.len() > 0 {
                match next(100) {
                    0..=9 => {
                        let (priority, conn) = (next(600) as u16, next(8));
                        q.push(priority, conn, item);
                        model.push(priority, conn, item);
                        item += 1;
                    }
                    10 if flood > 0 => {
                        let conn = next(8);
                        let mut gone = q.remove_conn(conn);
                        gone.sort_unstable();
                        model.remove_conn(conn);
                        assert!(gone.windows(2).all(|w| w[0] < w[1]));
                    }
                    _ => {
                        let got = q.pop();
                        assert_eq!(got, model.pop(), "flood {flood}, pop {popped}");
                        popped += 1;
                    }
                }
            }
            assert_eq!(model.pop(), None);
            assert!(grown > 2 * FIFOS_KEEP, "the flood grew the map to {grown} keys only");
            assert!(q.fifos.by_key.capacity() <= 2 * FIFOS_KEEP, "flood {flood} drained");
        }
    }

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

    /// A connection whose backlog drains and refills reuses its emptied deque; spares
    /// stay bounded in number and size, and reuse keeps FIFO order and turns.
    #[test]
    fn emptied_deques_are_reused_within_bounds() {
        let mut q = PrioQueue::new();
        for round in 0..3u64 {
            for conn in 0..(2 * SPARE_DEQUES as u64) {
                for i in 0..3 {
                    q.push(PRIO_DEFAULT, conn, (round, conn, i));
                }
            }
            let got = q.drain();
            let mut expect = Vec::new();
            for i in 0..3 {
                for conn in 0..(2 * SPARE_DEQUES as u64) {
                    expect.push((round, conn, i));
                }
            }
            assert_eq!(got, expect);
            assert_eq!(q.fifos.spare.len(), SPARE_DEQUES);
        }
        // A burst leaves a deque too large to keep.
        for i in 0..(4 * SPARE_CAPACITY as u64) {
            q.push(PRIO_DEFAULT, 99, (9, 99, i));
        }
        let _ = q.drain();
        let spare = &q.fifos.spare;
        assert!(spare.iter().all(|d| d.capacity() <= SPARE_CAPACITY));
        assert!(spare.len() <= SPARE_DEQUES);
    }

    /// A peer giving each message a priority of its own makes a FIFO key per message;
    /// once its flood is dispatched, the one map of every lane's FIFOs must not keep the
    /// flood's room (hashbrown never shrinks on its own) for the messenger's life, nor
    /// when traffic goes on and the queue is never seen empty.
    #[test]
    fn a_flood_of_priorities_leaves_no_fifo_room_behind() {
        let mut q = PrioQueue::new();
        for prio in 1..=u16::MAX {
            q.push(prio, 7, u32::from(prio));
        }
        let grown = q.fifos.by_key.capacity();
        // Traffic goes on: another connection keeps a message waiting throughout.
        q.push(PRIO_DEFAULT, 8, 0);
        while q.len() > 1 {
            q.pop();
        }
        for i in 1..=10 {
            q.push(PRIO_DEFAULT, 8, i);
            q.pop();
        }
        assert_eq!(q.len(), 1);
        let slot = std::mem::size_of::<((u16, u64), VecDeque<u32>)>() + 1;
        let kept = q.fifos.by_key.capacity() * slot;
        // A thousand (priority, connection) pairs waiting at once regrow nothing.
        assert!(
            kept <= 2 * FIFOS_KEEP * slot,
            "flood dispatched, the FIFO map keeps {kept} bytes of room (grew to {grown} keys)"
        );
    }

    /// Many connections waiting at once in one lane (a burst of N clients, strict and
    /// weighted), then dispatched while traffic goes on: the lanes kept must not keep
    /// the burst's rotation room (a deque never shrinks on its own) for the messenger's
    /// life.
    #[test]
    fn a_burst_of_connections_leaves_no_rotation_room_behind() {
        const CONNS: u64 = 20_000;
        let mut q = PrioQueue::new();
        for conn in 0..CONNS {
            q.push(PRIO_DEFAULT, conn, 0u32);
            q.push(PRIO_HIGHEST, conn, 1);
        }
        let room = |q: &PrioQueue<u32>| -> usize {
            q.strict.values().chain(q.wrr.values()).map(|l| l.rotation.capacity()).sum()
        };
        let grown = room(&q);
        assert!(grown >= 2 * CONNS as usize, "the burst grew the rotations to {grown} only");
        // Traffic goes on: another connection keeps a message waiting throughout.
        q.push(PRIO_DEFAULT, CONNS, 2);
        while q.len() > 1 {
            q.pop();
        }
        for i in 0..10 {
            q.push(PRIO_DEFAULT, CONNS, i);
            q.pop();
            q.push(PRIO_HIGHEST, CONNS + 1, i);
            q.pop();
        }
        assert_eq!(q.len(), 1);
        let kept = room(&q) * std::mem::size_of::<u64>();
        assert!(
            kept <= 2 * 2 * ROTATION_KEEP * std::mem::size_of::<u64>(),
            "burst dispatched, the two lanes' rotations keep {kept} bytes of room (grew to {grown})"
        );
        // And once everything is gone.
        q.drain();
        let kept = room(&q) * std::mem::size_of::<u64>();
        assert!(kept <= 2 * 2 * ROTATION_KEEP * std::mem::size_of::<u64>(), "{kept} bytes");
    }

    #[test]
    fn priority_zero_is_default() {
        let mut q = PrioQueue::new();
        q.push(0, 1, "a");
        q.push(PRIO_DEFAULT, 1, "b");
        assert_eq!(q.drain(), ["a", "b"]);
    }

    /// Where a random run stands (seed, step), for failure messages, formatted only
    /// when one is.
    struct At(u64, u64);

    impl std::fmt::Display for At {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "seed {} step {}", self.0, self.1)
        }
    }

    /// A small xorshift64* generator, so a failing seed replays exactly.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            // Any seed, 0 included, gives a non-zero state.
            XorShift((seed ^ 0x853c_49e6_748f_ea9b).wrapping_mul(FIB_MULTIPLIER) | 1)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn prio(&mut self) -> u16 {
            (self.next() >> 48) as u16
        }
    }

    /// The queue's own bookkeeping: every rotation holds each connection with a FIFO at
    /// its priority exactly once, no empty FIFO is stored, lane lengths, busy counts and
    /// the total agree with the FIFOs, empty lanes and spare deques stay within bounds.
    fn check_internals(q: &PrioQueue<u32>, at: &impl std::fmt::Display) {
        // Each rotation entry names a stored FIFO of its lane, no rotation names one twice,
        // and there are as many entries as FIFOs: so rotations and FIFOs match one to one.
        let mut total = 0;
        let mut turns = 0;
        for (strict, map) in [(true, &q.strict), (false, &q.wrr)] {
            let mut empty = 0;
            for (&prio, lane) in map {
                assert_ne!(prio, 0, "{at}: a lane for priority 0");
                assert_eq!(prio > PRIO_HIGH, strict, "{at}: lane {prio} in the wrong class");
                let mut len = 0;
                for (i, &conn) in lane.rotation.iter().enumerate() {
                    let twice = lane.rotation.iter().skip(i + 1).any(|c| *c == conn);
                    assert!(!twice, "{at}: lane {prio} holds {conn} twice in its rotation");
                    let fifo = q.fifos.get(&(prio, conn));
                    let fifo =
                        fifo.unwrap_or_else(|| panic!("{at}: {conn} in turn at {prio}, no FIFO"));
                    assert!(!fifo.is_empty(), "{at}: empty FIFO stored for ({prio}, {conn})");
                    len += fifo.len();
                }
                turns += lane.rotation.len();
                // The hot FIFO's lane counts the pops `settle` has not counted off yet.
                let unsettled = match &q.fifos.hot {
                    Some(((hot, _), _)) if *hot == prio && !strict => q.hot_popped,
                    _ => 0,
                };
                let lane_len = lane.len - unsettled;
                assert_eq!(lane_len, len, "{at}: lane {prio}'s length");
                if lane_len == 0 {
                    empty += 1;
                    assert_eq!(lane.current, 0, "{at}: empty lane {prio} keeps a WRR weight");
                }
                total += lane_len;
            }
            assert!(empty <= KEEP_EMPTY_LANES, "{at}: {empty} empty lanes (strict: {strict})");
            // Unsettled pops leave the hot FIFO at least one item: they change no lane's
            // emptiness.
            let busy = map.values().filter(|l| l.len > 0).count();
            let counted = if strict { q.strict_busy } else { q.wrr_busy };
            assert_eq!(counted, busy, "{at}: busy lanes (strict: {strict})");
        }
        assert_eq!(turns, q.fifos.len(), "{at}: FIFOs out of any rotation");
        if let Some((key, hot)) = &q.fifos.hot {
            assert!(!hot.is_empty(), "{at}: the hot FIFO {key:?} is empty");
            assert!(!q.fifos.by_key.contains_key(key), "{at}: {key:?} both hot and in the map");
        }
        assert_eq!(q.len, total, "{at}: len against the lanes");
        assert!(q.fifos.spare.len() <= SPARE_DEQUES, "{at}: {} spares", q.fifos.spare.len());
        for d in &q.fifos.spare {
            assert!(d.is_empty(), "{at}: a spare deque holds items");
            assert!(d.capacity() <= SPARE_CAPACITY, "{at}: a spare of {}", d.capacity());
        }
    }

    /// What must have been queued, kept plainly: the FIFO of each (effective priority,
    /// connection), what was handed out, and the exact policy ([`Model`]) for the order.
    struct Plain {
        fifos: BTreeMap<(u16, u64), VecDeque<u32>>,
        /// By item (items are numbered from 0 in push order): its FIFO, and whether it
        /// was handed out.
        key_of: Vec<(u16, u64)>,
        out: Vec<bool>,
        /// By item: the last round of [`heads`](Self::heads) it was a head in.
        seen: Vec<u64>,
        round: u64,
        len: usize,
        policy: Model,
    }

    impl Plain {
        fn push(&mut self, priority: u16, conn: u64, item: u32) {
            let prio = PrioQueue::<u32>::effective_priority(priority);
            self.fifos.entry((prio, conn)).or_default().push_back(item);
            assert_eq!(self.key_of.len(), item as usize, "items are numbered in order");
            self.key_of.push((prio, conn));
            self.out.push(false);
            self.seen.push(0);
            self.policy.push(priority, conn, item);
            self.len += 1;
        }

        fn hand_out(&mut self, item: u32, at: &impl std::fmt::Display) {
            let out = self.out.get_mut(item as usize);
            let out = out.unwrap_or_else(|| panic!("{at}: {item} was never queued"));
            assert!(!*out, "{at}: {item} handed out twice");
            *out = true;
        }

        /// Checks what the queue's pop gave.
        fn popped(&mut self, got: Option<u32>, at: &impl std::fmt::Display) {
            let expected = self.policy.pop();
            // The model keeps every lane it made; an empty one has no weight, so it can go.
            self.policy.lanes.retain(|_, (_, turns, _)| !turns.is_empty());
            let Some(item) = got else {
                assert_eq!(self.len, 0, "{at}: pop gave nothing with items queued");
                assert_eq!(expected, None, "{at}: the policy had {expected:?}");
                return;
            };
            self.hand_out(item, at);
            let key = self.key_of[item as usize];
            // Keys sort by priority first: the last is of the highest priority waiting.
            let top = self.fifos.keys().next_back().map(|(p, _)| *p);
            if let Some(top) = top.filter(|p| *p > PRIO_HIGH) {
                assert_eq!(key.0, top, "{at}: {item} of {key:?} while strict {top} waits");
            }
            let fifo = self.fifos.get_mut(&key).expect("a FIFO for an item not yet out");
            assert_eq!(fifo.front(), Some(&item), "{at}: {item} overtook its FIFO {key:?}");
            fifo.pop_front();
            if fifo.is_empty() {
                self.fifos.remove(&key);
            }
            self.len -= 1;
            assert_eq!(Some(item), expected, "{at}: served out of the policy's order");
        }

        fn removed(&mut self, conn: u64, mut got: Vec<u32>, at: &impl std::fmt::Display) {
            for &item in &got {
                self.hand_out(item, at);
            }
            let mut expected: Vec<u32> = Vec::new();
            self.fifos.retain(|&(_, c), fifo| {
                if c == conn {
                    expected.extend(fifo.iter().copied());
                }
                c != conn
            });
            self.len -= expected.len();
            self.policy.remove_conn(conn);
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "{at}: remove_conn({conn})");
        }

        /// Checks what the queue's `heads` gave: the front of each FIFO, each once.
        fn heads<'a>(&mut self, heads: impl Iterator<Item = &'a u32>, at: &impl std::fmt::Display) {
            self.round += 1;
            let mut n = 0;
            for &item in heads {
                let key = self.key_of.get(item as usize).copied();
                let key = key.unwrap_or_else(|| panic!("{at}: head {item} was never queued"));
                let front = self.fifos.get(&key).and_then(VecDeque::front);
                assert_eq!(front, Some(&item), "{at}: head {item} is not its FIFO's first");
                // Distinct FIFOs have distinct fronts: a head seen twice this round is
                // one FIFO given twice.
                assert_ne!(self.seen[item as usize], self.round, "{at}: head {item} twice");
                self.seen[item as usize] = self.round;
                n += 1;
            }
            assert_eq!(n, self.fifos.len(), "{at}: heads of {} FIFOs", self.fifos.len());
        }
    }

    /// Random pushes (at a few priorities, at a palette of the seed's own and at any of
    /// the 65,536), runs of one connection, pops, removals of connections and drains,
    /// against [`Plain`], with the queue's internals checked after every step.
    #[test]
    fn random_operations_keep_every_item_and_every_invariant() {
        const SMALL: [u16; 10] = [
            0,
            1,
            PRIO_LOW,
            PRIO_DEFAULT,
            PRIO_HIGH,
            PRIO_HIGH + 1,
            200,
            PRIO_HIGHEST,
            256,
            u16::MAX,
        ];
        for seed in 0..150u64 {
            let mut rng = XorShift::new(seed);
            // Per seed: how many connections, how many priorities of its own, how long
            // pushes outweigh pops and the other way round.
            let conns = 1 + rng.below(5);
            let palette: Vec<u16> = (0..4 + rng.below(24))
                .map(|_| if rng.below(2) == 0 { rng.prio() % (PRIO_HIGH + 1) } else { rng.prio() })
                .collect();
            let wide = rng.below(4); // out of 10: priorities drawn from all of u16
            let phase = 20 + rng.below(200);
            let pick_prio = |rng: &mut XorShift| match rng.below(10) {
                r if r < wide => rng.prio(),
                r if r < 6 => SMALL[rng.below(SMALL.len() as u64) as usize],
                _ => palette[rng.below(palette.len() as u64) as usize],
            };
            let mut q = PrioQueue::new();
            let mut plain = Plain {
                fifos: BTreeMap::new(),
                key_of: Vec::new(),
                out: Vec::new(),
                seen: Vec::new(),
                round: 0,
                len: 0,
                policy: Model::default(),
            };
            let mut item = 0u32;
            for step in 0..1_000u64 {
                let at = At(seed, step);
                let filling = (step / phase).is_multiple_of(2);
                match rng.below(100) {
                    r if r < if filling { 40 } else { 20 } => {
                        let (p, c) = (pick_prio(&mut rng), rng.below(conns));
                        q.push(p, c, item);
                        plain.push(p, c, item);
                        item += 1;
                    }
                    r if r < if filling { 55 } else { 30 } => {
                        // A read's batch: stretches of one priority, sometimes another,
                        // 0 and PRIO_DEFAULT being the same one.
                        let c = rng.below(conns);
                        let mut p = pick_prio(&mut rng);
                        let mut run = Vec::new();
                        for _ in 0..rng.below(8) {
                            match rng.below(6) {
                                0 => p = pick_prio(&mut rng),
                                1 if PrioQueue::<u32>::effective_priority(p) == PRIO_DEFAULT => {
                                    p = if p == 0 { PRIO_DEFAULT } else { 0 };
                                }
                                _ => {}
                            }
                            run.push((p, item));
                            plain.push(p, c, item);
                            item += 1;
                        }
                        q.push_all(c, run);
                    }
                    r if r < 94 => plain.popped(q.pop(), &at),
                    r if r < 98 => {
                        let c = rng.below(conns + 1); // sometimes one with nothing queued
                        plain.removed(c, q.remove_conn(c), &at);
                    }
                    98 if rng.below(3) > 0 => {
                        // A burst: one FIFO past what a spare deque may keep.
                        let (p, c) = (pick_prio(&mut rng), rng.below(conns));
                        let n = SPARE_CAPACITY as u32 + 1 + rng.below(100) as u32;
                        for i in item..item + n {
                            plain.push(p, c, i);
                        }
                        if rng.below(2) == 0 {
                            q.push_all(c, (item..item + n).map(|i| (p, i)));
                        } else {
                            q.push_run(p, c, item..item + n);
                        }
                        item += n;
                    }
                    98 => {
                        // Many FIFOs at once, at any priorities: more lanes than are
                        // kept empty and, once popped, more deques than are kept spare.
                        for _ in 0..rng.below(2 * SPARE_DEQUES as u64) {
                            let (p, c) = (rng.prio(), rng.below(conns));
                            q.push(p, c, item);
                            plain.push(p, c, item);
                            item += 1;
                        }
                    }
                    _ => {
                        for got in q.drain() {
                            plain.popped(Some(got), &at);
                        }
                        assert_eq!(plain.len, 0, "{at}: drain left items");
                    }
                }
                assert_eq!(q.len(), plain.len, "{at}: len");
                plain.heads(q.heads(), &at);
                check_internals(&q, &at);
            }
            for got in q.drain() {
                plain.popped(Some(got), &At(seed, u64::MAX));
            }
            plain.popped(q.pop(), &At(seed, u64::MAX));
            assert!(plain.out.iter().all(|out| *out), "seed {seed}: items lost");
            check_internals(&q, &At(seed, u64::MAX));
        }
    }
}
