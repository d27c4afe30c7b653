//! The out queue: messages waiting to be framed, by priority.

use std::collections::VecDeque;

use crate::message::Message;

use super::seq::Seq;

/// Empty lanes kept for reuse beyond which they are dropped: a sender using many
/// priorities must not leave a lane behind for each.
const MAX_LANES: usize = 8;

/// Room (in messages) a lane keeps when the queue empties: a window of small messages
/// fills and empties the queue once per batch (64 or so), and giving the room back each
/// time made it grow again by doubling, three `realloc`s per batch (0.09 per round trip at
/// 64 B depth 128); a connection idle after a larger burst keeps 1 KiB of it, not the
/// burst's room.
const LANE_KEEP: usize = 128;

/// Batches smaller than this move into the queue message by message, not by handing
/// over their buffer ([`OutQueue::append_uniform`]): the scan, the lane's lookup and the
/// conversions both ways cost more than the moves of a few (4 KiB depth 1, a batch of
/// one: ~60 instructions more per round trip).
pub(crate) const SWAP_AT_LEAST: usize = 4;

/// One priority's messages, FIFO.
#[derive(Clone, Debug)]
struct Lane {
    prio: u16,
    msgs: VecDeque<Message>,
}

/// Outgoing messages not yet framed, by priority (highest first), FIFO within one.
///
/// The queue empties after nearly every write and fills again on the next send, so a
/// lane is kept when it empties, with its capacity: a map of deques that dropped a
/// priority's deque when empty paid a node, a buffer and its regrowth per batch.
/// Senders use a handful of priorities (Ceph's are 64, 127, 196 and 255), so lanes are
/// a short vector, highest first, scanned.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutQueue {
    /// Sent messages put back after a fault, in seq order: framed before any lane, so
    /// they keep their numbers and their order. (Ceph puts them at the front of the
    /// PRIO_HIGHEST lane; a message of a higher priority, u16 as on the wire, then went
    /// before them: reordered within its own priority, and, against a peer that had
    /// some of them, numbered with a seq the peer dropped as a duplicate.)
    requeued: VecDeque<Message>,
    /// Sorted by priority, highest first; at most one lane per priority.
    lanes: Vec<Lane>,
    len: usize,
    /// Sum of `send_cost` of the queued messages.
    cost: u64,
}

impl OutQueue {
    /// The lane of `prio`, made (in order) if there is none.
    #[inline(never)]
    fn lane(&mut self, prio: u16) -> &mut VecDeque<Message> {
        let place =
            |lanes: &[Lane]| lanes.iter().position(|l| l.prio <= prio).unwrap_or(lanes.len());
        let mut at = place(&self.lanes);
        if self.lanes.get(at).is_none_or(|l| l.prio != prio) {
            if self.lanes.len() >= MAX_LANES {
                // Only empty lanes go (lanes before `at` among them, so it moves).
                self.lanes.retain(|l| !l.msgs.is_empty());
                at = place(&self.lanes);
            }
            self.lanes.insert(at, Lane { prio, msgs: VecDeque::new() });
        }
        // In bounds: the lane was found at `at` or just inserted there.
        &mut self.lanes[at].msgs
    }

    // Inlined into the one send path, with the first lane tried before the lookup: most
    // connections send at one priority, and as a call of its own the push cost more in
    // saved registers (~17 instructions per message) than in work.
    #[inline]
    pub(crate) fn push_back(&mut self, msg: Message) {
        self.cost += msg.send_cost();
        self.len += 1;
        let prio = msg.priority();
        match self.lanes.first_mut() {
            Some(first) if first.prio == prio => first.msgs.push_back(msg),
            _ => self.lane(prio).push_back(msg),
        }
    }

    /// Queues all of `msgs` (leaving it empty), every one of priority `prio`, together
    /// costing `cost` (their `send_cost`s summed). Into an empty lane the buffer is
    /// handed over whole, and `msgs` gets the lane's empty one: a driver's batch of
    /// replies then moves into the queue without a move per message (~30 instructions
    /// per message at 64 B through [`Self::push_back`]).
    #[inline]
    pub(crate) fn append_uniform(&mut self, msgs: &mut Vec<Message>, prio: u16, cost: u64) {
        debug_assert!(msgs.iter().all(|m| m.priority() == prio));
        debug_assert_eq!(msgs.iter().map(Message::send_cost).sum::<u64>(), cost);
        self.cost += cost;
        self.len += msgs.len();
        let lane = match self.lanes.first_mut() {
            Some(first) if first.prio == prio => &mut first.msgs,
            _ => self.lane(prio),
        };
        if lane.is_empty() {
            // Both conversions keep the buffer (the empty deque's needs no rotation).
            let batch = VecDeque::from(std::mem::take(msgs));
            *msgs = Vec::from(std::mem::replace(lane, batch));
        } else {
            for msg in msgs.drain(..) {
                lane.push_back(msg);
            }
        }
    }

    /// Puts `msgs` (sent, unacknowledged) back in front of everything, in their order,
    /// to be sent again first.
    pub(crate) fn requeue_front(&mut self, msgs: impl DoubleEndedIterator<Item = Message>) {
        let mut cost = 0;
        let mut n = 0;
        let q = &mut self.requeued;
        for m in msgs.rev() {
            cost += m.send_cost();
            n += 1;
            q.push_front(m);
        }
        self.cost += cost;
        self.len += n;
    }

    /// The next message to frame: requeued ones first, then the highest priority's
    /// oldest.
    // Always inlined (into `next_outgoing`, so into the transmit loops), the common case
    // first (nothing requeued, the first lane holding the next message), the rest out of
    // line: as a call of its own it cost ~53 instructions per message at 64 B; inlined,
    // the pop and the loop together take ~24 fewer (callgrind, 64 B depth 128).
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<Message> {
        let first = match self.lanes.first_mut() {
            Some(first) if self.requeued.is_empty() => first.msgs.pop_front(),
            _ => None,
        };
        match first {
            Some(msg) => {
                self.took(&msg);
                Some(msg)
            }
            // Empty: the end of every transmit loop, not worth a call.
            None if self.len == 0 => None,
            None => self.pop_other(),
        }
    }

    /// [`Self::pop`] when the first lane does not hold the next message and the queue
    /// is not empty: a requeued one, or a later lane's.
    #[inline(never)]
    fn pop_other(&mut self) -> Option<Message> {
        // Requeued messages first. Then the lane, then one pop: `find_map` over the pops
        // moved the message through two more `Option`s.
        let msg = match self.requeued.pop_front() {
            Some(m) => m,
            None => self.lanes.iter_mut().find(|l| !l.msgs.is_empty())?.msgs.pop_front()?,
        };
        self.took(&msg);
        Some(msg)
    }

    /// `msg` left the queue.
    #[inline(always)]
    fn took(&mut self, msg: &Message) {
        self.len -= 1;
        self.cost -= msg.send_cost();
        if self.len == 0 {
            self.trim();
        }
    }

    /// The queue just emptied (`pop`, `discard_requeued_up_to`): surplus lanes go, and
    /// the rest give back room beyond [`LANE_KEEP`].
    #[inline(never)]
    fn trim(&mut self) {
        if self.lanes.len() > MAX_LANES {
            self.lanes.clear();
        }
        for q in self.lanes.iter_mut().map(|l| &mut l.msgs).chain([&mut self.requeued]) {
            if q.capacity() > LANE_KEEP {
                q.shrink_to(LANE_KEEP);
            }
        }
    }

    /// Drops requeued messages the peer says it has (seq ≤ `acked`); returns how many.
    pub(crate) fn discard_requeued_up_to(&mut self, acked: Seq) -> u64 {
        let q = &mut self.requeued;
        let mut n = 0u64;
        let mut cost = 0;
        while q.front().is_some_and(|m| m.seq() != 0 && m.seq() <= acked.0) {
            if let Some(m) = q.pop_front() {
                cost += m.send_cost();
                n += 1;
            }
        }
        self.cost -= cost;
        self.len -= n as usize;
        if self.len == 0 {
            self.trim();
        }
        n
    }

    /// Whether the next [`pop`](Self::pop) takes a requeued message (one framed before).
    pub(crate) fn next_is_requeued(&self) -> bool {
        !self.requeued.is_empty()
    }

    /// Whether a requeued (already sequenced) message waits to be sent again. Only the
    /// requeued queue counts: a message a user forwards keeps the seq it was received
    /// with, and in a lane it must not pass for one of ours (nor be discarded as one).
    pub(crate) fn has_requeued(&self) -> bool {
        self.requeued.front().is_some_and(|m| m.seq() != 0)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn cost(&self) -> u64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{PRIO_DEFAULT, PRIO_HIGHEST};
    use bytes::Bytes;

    fn msg(prio: u16, tag: u8) -> Message {
        let mut m = Message::new(2, Bytes::from(vec![tag]));
        m.set_priority(prio);
        m
    }

    #[test]
    fn queue_orders_by_priority_then_fifo() {
        let mut q = OutQueue::default();
        q.push_back(msg(PRIO_DEFAULT, 1));
        q.push_back(msg(PRIO_HIGHEST, 2));
        q.push_back(msg(PRIO_DEFAULT, 3));
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|m| m.front()[0]).collect();
        assert_eq!(order, [2, 1, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn many_priorities_keep_their_order_and_surplus_empty_lanes_go() {
        let mut q = OutQueue::default();
        // More priorities than lanes kept: every one still orders (highest first,
        // FIFO within), and once drained only MAX_LANES empty lanes stay behind.
        for round in 0..3u8 {
            for p in (0..20u16).map(|i| i * 13 % 20) {
                q.push_back(msg(p, round));
            }
        }
        assert_eq!(q.len(), 60);
        let mut popped = Vec::new();
        while let Some(m) = q.pop() {
            popped.push((m.priority(), m.front()[0]));
        }
        let mut want: Vec<(u16, u8)> =
            (0..20u16).flat_map(|p| (0..3u8).map(move |r| (p, r))).collect();
        want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(popped, want);
        assert_eq!((q.len(), q.cost()), (0, 0));
        assert!(q.lanes.is_empty(), "{} lanes left once drained", q.lanes.len());
        q.push_back(msg(1000, 0));
        assert_eq!(q.pop().map(|m| m.priority()), Some(1000));
    }

    #[test]
    fn an_emptied_lane_keeps_a_batch_of_room_and_no_more() {
        let mut q = OutQueue::default();
        // A batch's room survives the queue emptying, so the next batch does not regrow it.
        for i in 0..100u8 {
            q.push_back(msg(PRIO_DEFAULT, i));
        }
        while q.pop().is_some() {}
        let room: Vec<usize> = q.lanes.iter().map(|l| l.msgs.capacity()).collect();
        assert!(room.iter().all(|&c| c >= 100), "{room:?}");
        // A burst's room beyond that is given back.
        for i in 0..1000u32 {
            q.push_back(msg(PRIO_DEFAULT, i as u8));
        }
        while q.pop().is_some() {}
        let room: Vec<usize> = q.lanes.iter().map(|l| l.msgs.capacity()).collect();
        assert!(room.iter().all(|&c| c <= LANE_KEEP), "{room:?}");
    }

    /// A batch of one priority (of at least `SWAP_AT_LEAST`) goes into its empty lane
    /// whole: the lane's buffer comes
    /// back in its place (room kept for the caller's next batch), and into a lane holding
    /// messages it goes behind them. Priorities, counts and costs hold either way.
    #[test]
    fn a_uniform_batch_swaps_into_an_empty_lane_and_queues_behind_a_full_one() {
        let mut q = OutQueue::default();
        // A lane with room, emptied.
        for i in 0..10u8 {
            q.push_back(msg(PRIO_DEFAULT, i));
        }
        while q.pop().is_some() {}
        let lane_room = q.lanes[0].msgs.capacity();
        let batch_of = |tags: &[u8]| -> (Vec<Message>, u64) {
            let v: Vec<Message> = tags.iter().map(|&t| msg(PRIO_DEFAULT, t)).collect();
            let cost = v.iter().map(Message::send_cost).sum();
            (v, cost)
        };
        let (mut batch, cost) = batch_of(&[1, 2, 3, 4]);
        let batch_room = batch.capacity();
        q.append_uniform(&mut batch, PRIO_DEFAULT, cost);
        assert!(batch.is_empty());
        assert_eq!(batch.capacity(), lane_room, "the lane's buffer came back");
        assert_eq!(q.lanes[0].msgs.capacity(), batch_room, "the batch's buffer is the lane");
        let (mut more, more_cost) = batch_of(&[5, 6]);
        q.append_uniform(&mut more, PRIO_DEFAULT, more_cost);
        assert!(more.is_empty());
        // Another priority: a lane of its own, made for it.
        let mut high = vec![msg(PRIO_HIGHEST, 7)];
        let high_cost = high[0].send_cost();
        q.append_uniform(&mut high, PRIO_HIGHEST, high_cost);
        assert_eq!((q.len(), q.cost()), (7, cost + more_cost + high_cost));
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|m| m.front()[0]).collect();
        assert_eq!(order, [7, 1, 2, 3, 4, 5, 6]);
        assert_eq!((q.len(), q.cost()), (0, 0));
    }

    #[test]
    fn requeued_messages_go_first_and_are_discarded_once_acked() {
        let mut q = OutQueue::default();
        q.push_back(msg(PRIO_DEFAULT, 1));
        let sent: Vec<Message> = (1..=3u64)
            .map(|seq| {
                let mut m = msg(PRIO_DEFAULT, 10 + seq as u8);
                m.set_seq(seq);
                m
            })
            .collect();
        q.requeue_front(sent.into_iter());
        assert!(q.has_requeued());
        assert_eq!(q.len(), 4);
        assert_eq!(q.discard_requeued_up_to(Seq(2)), 2);
        assert_eq!(q.len(), 2);
        let order: Vec<u8> = std::iter::from_fn(|| q.pop()).map(|m| m.front()[0]).collect();
        assert_eq!(order, [13, 1]);
        assert!(!q.has_requeued());
        assert_eq!(q.cost(), 0);
    }

    /// A message a user forwards keeps the seq it was received with: in its lane it is
    /// no requeued message of ours, so a reconnect's discard leaves it, and it goes out
    /// after the requeued ones.
    #[test]
    fn a_forwarded_message_with_a_seq_is_not_a_requeued_one() {
        let mut q = OutQueue::default();
        let mut forwarded = msg(PRIO_HIGHEST, 1);
        forwarded.set_seq(5);
        q.push_back(forwarded);
        assert!(!q.has_requeued());
        assert_eq!(q.discard_requeued_up_to(Seq(10)), 0);
        let mut ours = msg(PRIO_DEFAULT, 2);
        ours.set_seq(3);
        q.requeue_front(std::iter::once(ours));
        assert!(q.has_requeued());
        assert_eq!(q.discard_requeued_up_to(Seq(10)), 1, "ours only");
        assert_eq!(q.pop().map(|m| m.front()[0]), Some(1));
        assert!(q.is_empty());
    }

    /// Every mix of the queue's operations (one-by-one pushes and uniform batches of
    /// any size and priority, requeues, acks discarding requeued messages) pops in the
    /// order of a plain model (requeued first, then highest priority, FIFO within),
    /// with `len` and `cost` exact after every step, and an emptied queue keeps no
    /// lane's room beyond `LANE_KEEP`.
    #[test]
    fn the_queue_pops_as_a_plain_model_under_any_mix_of_operations() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        use std::collections::BTreeMap;
        // A model message: (tag, prio, seq); its payload (the tag, then padding that
        // varies with it) gives each a cost of its own.
        type M = (u32, u16, u64);
        let make = |(tag, prio, seq): M| {
            let mut front = tag.to_le_bytes().to_vec();
            front.resize(4 + tag as usize % 37, 0);
            let mut m = Message::new(2, Bytes::from(front));
            m.set_priority(prio);
            m.set_seq(seq);
            m
        };
        let tag_of = |m: &Message| {
            let b = m.front();
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]), m.priority(), m.seq())
        };
        let prios = [PRIO_HIGHEST, 196, PRIO_DEFAULT, 64, 3, 1000];
        for seed in 0..60u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut q = OutQueue::default();
            let mut requeued: VecDeque<M> = VecDeque::new();
            let mut lanes: BTreeMap<std::cmp::Reverse<u16>, VecDeque<M>> = BTreeMap::new();
            let mut next_tag = 0u32;
            let mut next_seq = 1u64;
            let mut scratch: Vec<Message> = Vec::new();
            for _ in 0..400 {
                let mut fresh = |prio: u16| {
                    next_tag += 1;
                    (next_tag, prio, 0)
                };
                match rng.gen_range(0..10) {
                    0..=2 => {
                        let m = fresh(prios[rng.gen_range(0..prios.len())]);
                        q.push_back(make(m));
                        lanes.entry(std::cmp::Reverse(m.1)).or_default().push_back(m);
                    }
                    3..=4 => {
                        let prio = prios[rng.gen_range(0..prios.len())];
                        let n = rng.gen_range(0..12);
                        let batch: Vec<M> = (0..n).map(|_| fresh(prio)).collect();
                        scratch.extend(batch.iter().copied().map(make));
                        let cost = scratch.iter().map(Message::send_cost).sum();
                        q.append_uniform(&mut scratch, prio, cost);
                        assert!(scratch.is_empty());
                        lanes.entry(std::cmp::Reverse(prio)).or_default().extend(batch);
                    }
                    5 => {
                        // Sent messages put back: numbered in order, ahead of the rest.
                        let n = rng.gen_range(0..5);
                        let sent: Vec<M> = (0..n)
                            .map(|_| {
                                let mut m = fresh(PRIO_DEFAULT);
                                m.2 = next_seq;
                                next_seq += 1;
                                m
                            })
                            .collect();
                        q.requeue_front(sent.iter().copied().map(make));
                        for m in sent.into_iter().rev() {
                            requeued.push_front(m);
                        }
                    }
                    6 => {
                        let acked = rng.gen_range(0..next_seq + 1);
                        let mut n = 0;
                        while requeued.front().is_some_and(|m| m.2 != 0 && m.2 <= acked) {
                            requeued.pop_front();
                            n += 1;
                        }
                        assert_eq!(q.discard_requeued_up_to(Seq(acked)), n, "seed {seed}");
                    }
                    _ => {
                        for _ in 0..rng.gen_range(1..8) {
                            let want = requeued.pop_front().or_else(|| {
                                lanes.values_mut().find(|l| !l.is_empty())?.pop_front()
                            });
                            assert_eq!(q.pop().as_ref().map(tag_of), want, "seed {seed}");
                        }
                    }
                }
                let model: Vec<M> =
                    requeued.iter().chain(lanes.values().flatten()).copied().collect();
                let cost: u64 = model.iter().map(|&m| make(m).send_cost()).sum();
                assert_eq!((q.len(), q.cost()), (model.len(), cost), "seed {seed}");
                assert_eq!(q.is_empty(), model.is_empty());
                assert_eq!(q.next_is_requeued(), !requeued.is_empty());
                if q.is_empty() {
                    let room: Vec<usize> = q.lanes.iter().map(|l| l.msgs.capacity()).collect();
                    assert!(room.iter().all(|&c| c <= LANE_KEEP), "seed {seed}: {room:?}");
                    assert!(q.lanes.len() <= MAX_LANES);
                }
            }
            while let Some(m) = q.pop() {
                let want = requeued
                    .pop_front()
                    .or_else(|| lanes.values_mut().find(|l| !l.is_empty())?.pop_front());
                assert_eq!(Some(tag_of(&m)), want, "seed {seed}");
            }
            assert!(requeued.is_empty() && lanes.values().all(VecDeque::is_empty));
            assert_eq!((q.len(), q.cost()), (0, 0));
        }
    }
}
