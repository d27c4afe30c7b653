//! The transferable part of a lossless session: sequence numbers and queues.
//!
//! On a replace (msgr-v1.md 3.7) Ceph hands the new socket to the old connection object;
//! we move the session out of the old state machine as a value instead
//! ([`super::Connection::take_session`]) and into the one that owns the new socket
//! ([`super::Connection::handle_accept_decision`]).

use std::collections::{BTreeMap, VecDeque};

use crate::message::{Message, PRIO_HIGHEST};

/// Outgoing messages not yet framed, by priority (highest first), FIFO within one.
#[derive(Clone, Debug, Default)]
pub(crate) struct OutQueue {
    /// Invariant: no empty deques are kept.
    by_prio: BTreeMap<u16, VecDeque<Message>>,
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
    pub(crate) fn discard_requeued_up_to(&mut self, acked: u64) -> u64 {
        let Some(q) = self.by_prio.get_mut(&PRIO_HIGHEST) else { return 0 };
        let mut n = 0;
        while q.front().is_some_and(|m| m.seq() != 0 && m.seq() <= acked) {
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

/// A session's sequence numbers and queues, movable between state machines.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Successful connects in this session (0 for a new session).
    pub(crate) connect_seq: u32,
    /// The peer's global_seq of its last accepted connect.
    pub(crate) peer_global_seq: u32,
    /// Seq of the last message accepted from the peer.
    pub(crate) in_seq: u64,
    /// Seq of the last message framed. Invariant: `sent` holds seqs
    /// `out_seq - sent.len() + 1 ..= out_seq` in order (lossless only).
    pub(crate) out_seq: u64,
    /// Messages waiting to be framed.
    pub(crate) queue: OutQueue,
    /// Framed but not yet acked (lossless policies only), in seq order.
    pub(crate) sent: VecDeque<Message>,
    /// Invariant: the sum of `Message::send_cost` over `sent`.
    pub(crate) sent_cost: u64,
}

impl Session {
    /// The session's connect_seq.
    pub fn connect_seq(&self) -> u32 {
        self.connect_seq
    }
    /// The peer's last global_seq.
    pub fn peer_global_seq(&self) -> u32 {
        self.peer_global_seq
    }
    /// Seq of the last message received.
    pub fn in_seq(&self) -> u64 {
        self.in_seq
    }
    /// Seq of the last message framed.
    pub fn out_seq(&self) -> u64 {
        self.out_seq
    }
    /// Messages queued or sent-but-unacked.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.sent.len()
    }

    /// What the messages queued or sent-but-unacked cost (`Message::send_cost`).
    pub fn send_cost(&self) -> u64 {
        self.queue.cost() + self.sent_cost
    }

    /// Keeps a framed message until the peer acknowledges it (lossless sessions).
    pub(crate) fn push_sent(&mut self, msg: Message) {
        self.sent_cost += msg.send_cost();
        self.sent.push_back(msg);
    }

    /// Forgets the framed-but-unacked messages (the session became lossy: they will
    /// never be resent).
    pub(crate) fn drop_sent(&mut self) {
        self.sent.clear();
        self.sent_cost = 0;
    }

    /// Ceph's `requeue_sent`: unacked messages go back to the head of the queue with
    /// their seqs, and out_seq rolls back so they are framed with the same numbers.
    pub(crate) fn requeue_sent(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        self.out_seq = self.out_seq.saturating_sub(self.sent.len() as u64);
        let sent = std::mem::take(&mut self.sent);
        self.sent_cost = 0;
        self.queue.requeue_front(sent.into_iter());
    }

    /// After the peer told us its in_seq: drop requeued messages it already has.
    pub(crate) fn discard_requeued_up_to(&mut self, peer_in_seq: u64) {
        self.out_seq += self.queue.discard_requeued_up_to(peer_in_seq);
    }

    /// Ceph's `session_reset` (RESETSESSION, peer restart under resetcheck): a brand
    /// new session; everything queued or unacked is discarded.
    pub(crate) fn reset(&mut self) {
        *self = Session::default();
    }

    /// Trims `sent` up to `seq` (an ACK); returns whether anything was trimmed.
    pub(crate) fn ack(&mut self, seq: u64) -> bool {
        let mut any = false;
        while self.sent.front().is_some_and(|m| m.seq() <= seq) {
            if let Some(m) = self.sent.pop_front() {
                self.sent_cost -= m.send_cost();
            }
            any = true;
        }
        any
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

    // ProtocolV1::requeue_sent + discard_requeued_up_to.
    #[test]
    fn requeue_keeps_seqs_and_discard_advances_out_seq() {
        let mut s = Session::default();
        for i in 1..=3u64 {
            let mut m = msg(PRIO_DEFAULT, i as u8);
            m.set_seq(i);
            s.sent.push_back(m);
        }
        s.out_seq = 3;
        s.queue.push_back(msg(PRIO_HIGHEST, 9));
        s.requeue_sent();
        assert_eq!(s.out_seq, 0);
        assert!(s.queue.has_requeued());
        s.discard_requeued_up_to(2);
        assert_eq!(s.out_seq, 2);
        let first = s.queue.pop().map(|m| m.seq());
        assert_eq!(first, Some(3));
        assert_eq!(s.queue.pop().map(|m| m.front()[0]), Some(9));
    }

    #[test]
    fn send_cost_follows_the_messages_through_every_stage() {
        let mut s = Session::default();
        let one = msg(PRIO_DEFAULT, 1).send_cost();
        for _ in 0..3 {
            s.queue.push_back(msg(PRIO_DEFAULT, 1));
        }
        assert_eq!(s.send_cost(), 3 * one);
        for seq in 1..=2u64 {
            let mut m = s.queue.pop().expect("queued");
            m.set_seq(seq);
            s.out_seq = seq;
            s.push_sent(m);
        }
        assert_eq!(s.send_cost(), 3 * one);
        s.ack(1);
        assert_eq!(s.send_cost(), 2 * one);
        s.requeue_sent();
        assert_eq!(s.send_cost(), 2 * one);
        s.discard_requeued_up_to(2);
        assert_eq!(s.send_cost(), one);
        s.reset();
        assert_eq!(s.send_cost(), 0);
    }
}
