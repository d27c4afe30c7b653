//! The out queue: messages waiting to be framed, by priority.

use std::collections::{BTreeMap, VecDeque};

use crate::message::{Message, PRIO_HIGHEST};

use super::seq::Seq;

/// Outgoing messages not yet framed, by priority (highest first), FIFO within one.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutQueue {
    /// Invariant: no empty deques are kept.
    by_prio: BTreeMap<u16, VecDeque<Message>>,
    /// Invariant: the number of queued messages.
    len: usize,
    /// Invariant: the sum of `Message::send_cost` over the queued messages.
    cost: u64,
}

impl OutQueue {
    pub(crate) fn push_back(&mut self, msg: Message) {
        self.cost += msg.send_cost();
        self.by_prio.entry(msg.priority()).or_default().push_back(msg);
        self.len += 1;
    }

    /// Puts already-numbered messages back in front of everything (Ceph's
    /// `requeue_sent`: at HIGHEST, original order).
    pub(crate) fn requeue_front(&mut self, msgs: impl DoubleEndedIterator<Item = Message>) {
        let q = self.by_prio.entry(PRIO_HIGHEST).or_default();
        for m in msgs.rev() {
            self.cost += m.send_cost();
            q.push_front(m);
            self.len += 1;
        }
        if q.is_empty() {
            self.by_prio.remove(&PRIO_HIGHEST);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Message> {
        let mut entry = self.by_prio.last_entry()?;
        let msg = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        if let Some(m) = &msg {
            self.len -= 1;
            self.cost -= m.send_cost();
        }
        msg
    }

    /// Drops requeued messages (seq != 0, at the head of HIGHEST) with seq <= `acked`;
    /// returns how many (Ceph's `discard_requeued_up_to`).
    pub(crate) fn discard_requeued_up_to(&mut self, acked: Seq) -> u64 {
        let Some(q) = self.by_prio.get_mut(&PRIO_HIGHEST) else { return 0 };
        let mut n = 0;
        while q.front().is_some_and(|m| m.seq() != 0 && m.seq() <= acked.0) {
            if let Some(m) = q.pop_front() {
                self.cost -= m.send_cost();
            }
            n += 1;
        }
        if q.is_empty() {
            self.by_prio.remove(&PRIO_HIGHEST);
        }
        self.len -= n as usize;
        n
    }

    /// Whether requeued (already numbered) messages wait at the head.
    pub(crate) fn has_requeued(&self) -> bool {
        self.by_prio.get(&PRIO_HIGHEST).and_then(|q| q.front()).is_some_and(|m| m.seq() != 0)
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
    use crate::message::PRIO_DEFAULT;
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
}
