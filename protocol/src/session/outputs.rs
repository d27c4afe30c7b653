//! [`Machine`]'s outputs (`poll_*` but the timeout, which is in `timers.rs`): bytes to
//! write and events.

use bytes::{Bytes, BytesMut};

use crate::wire::KeepaliveStamp;

use super::event::Event;
use super::machine::{Machine, Protocol};
use super::seq::Seq;

/// The most a round of [`Machine::poll_transmit`] may hand out (or its control buffer
/// hold) for that buffer's allocation to be kept for the next round.
const CTRL_KEEP: usize = 64 << 10;

/// Which of the events a peer can provoke as fast as it sends (a keepalive, the ack of
/// ours, an ack of messages) wait in the machine's queue: at most one of each, which
/// carries the newest when taken. One per arrival let one read of 64 KiB of KEEPALIVE
/// tags queue 65,536 events (and the queue keeps its capacity).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueuedNotes {
    keepalive: bool,
    keepalive_ack: bool,
    /// The newest ack while an [`Event::Acked`] waits.
    acked: Option<Seq>,
}

/// How far a TCP connection's output is known written, from what
/// [`Machine::poll_transmit`] handed out and what the driver reported since
/// ([`Machine::handle_write_progress`], [`Machine::handle_write_blocked`]): enough to
/// tell whether its first bytes (a v1 connector's banner) left, as Ceph's ProtocolV1
/// leaves CONNECTING only once its banner's write completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Written {
    /// Nothing handed out on this connection yet.
    #[default]
    Nothing,
    /// Bytes were handed out that may still wait unwritten.
    Waiting,
    /// The driver reported progress since and no block: unless a block follows (it
    /// does right after the progress of a write that left bytes waiting), all of it
    /// is written.
    Progressed,
    /// Everything handed out before a later handout was written: the first bytes are.
    FirstOut,
}

impl Written {
    /// `poll_transmit` handed bytes out.
    fn handed_out(self) -> Self {
        match self {
            Written::Nothing | Written::Waiting => Written::Waiting,
            Written::Progressed | Written::FirstOut => Written::FirstOut,
        }
    }

    /// The driver reported that the socket took bytes, or that none wait.
    pub(crate) fn progressed(self) -> Self {
        if self == Written::Waiting {
            Written::Progressed
        } else {
            self
        }
    }

    /// The driver reported bytes waiting that the socket does not take.
    pub(crate) fn blocked(self) -> Self {
        if self == Written::Progressed {
            Written::Waiting
        } else {
            self
        }
    }

    /// Nothing was handed out on this connection yet.
    pub(crate) fn is_nothing(self) -> bool {
        self == Written::Nothing
    }

    /// Whether the connection's first bytes are known written.
    pub(crate) fn first_out(self) -> bool {
        matches!(self, Written::Progressed | Written::FirstOut)
    }
}

impl<P: Protocol> Machine<P> {
    /// Appends the bytes to write, as segments (payloads are shared, not copied);
    /// returns how many bytes were appended. Call until it returns 0 or the socket is
    /// full; what was returned must be written in order before the next call's output.
    pub fn poll_transmit(&mut self, out: &mut Vec<Bytes>) -> usize {
        let first = out.len();
        let mut head = std::mem::take(&mut self.ctrl);
        if self.state.is_open() {
            P::transmit(self, &mut head, out);
        }
        let grown = head.capacity() > CTRL_KEEP;
        if !head.is_empty() {
            out.push(head.split().freeze());
        }
        let total = out[first..].iter().map(Bytes::len).sum();
        // Keep the allocation for the next round when it was not handed out, unless the
        // round was large: what is left of `head` after a split shares its allocation,
        // so kept, it pinned the largest round ever framed (a batch of small messages
        // gathered, a secure frame sealed whole) for the connection's life, and reused it.
        self.ctrl = if grown || total > CTRL_KEEP { BytesMut::new() } else { head };
        if total > 0 {
            self.written = self.written.handed_out();
            log::trace!(target: P::LOG, "{self}: {total} bytes out");
        }
        if let Some(fault) = self.deferred_fault.take() {
            let now = self.now;
            self.fault(now, fault);
        }
        total
    }

    /// The next event, if any. Drain after every input or command.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        // A message and a budget request (nearly every event) carry nothing noted
        // elsewhere: handed back as popped, inlined into the driver's loop, without the
        // call and the match below (~30 instructions per event at 64 B).
        if matches!(ev, Event::Message(_) | Event::NeedBudget { .. }) {
            return Some(ev);
        }
        Some(self.take_noted(ev))
    }

    /// [`Self::poll_event`]'s event `ev` just popped, with what was noted for it since it
    /// was queued.
    #[inline(never)]
    fn take_noted(&mut self, ev: Event) -> Event {
        match ev {
            Event::KeepaliveReceived => {
                self.notes.keepalive = false;
                ev
            }
            Event::KeepaliveAck(stamp) => {
                self.notes.keepalive_ack = false;
                Event::KeepaliveAck(self.keepalive.last_ack.unwrap_or(stamp))
            }
            Event::Acked { up_to } => {
                Event::Acked { up_to: self.notes.acked.take().unwrap_or(up_to) }
            }
            // What the last fault decided is taken: from here on it has happened, and
            // `mark_lossy` no longer changes it.
            Event::Standby | Event::Reconnect { .. } => {
                self.unreported_fault = None;
                ev
            }
            ev => ev,
        }
    }

    /// A KEEPALIVE or KEEPALIVE2 arrived (its time already in `keepalive`): queued
    /// unless one waits.
    pub(crate) fn note_keepalive(&mut self) {
        if !std::mem::replace(&mut self.notes.keepalive, true) {
            self.events.push_back(Event::KeepaliveReceived);
        }
    }

    /// A KEEPALIVE2_ACK arrived (its stamp already in `keepalive`): queued unless one
    /// waits, which will carry this stamp.
    pub(crate) fn note_keepalive_ack(&mut self, stamp: KeepaliveStamp) {
        if !std::mem::replace(&mut self.notes.keepalive_ack, true) {
            self.events.push_back(Event::KeepaliveAck(stamp));
        }
    }

    /// The peer acknowledged up to `up_to`: reported (with `report_acks`) unless a
    /// report waits, which will carry this one.
    pub(crate) fn note_acked(&mut self, up_to: Seq) {
        if self.notes.acked.replace(up_to).is_none() {
            self.events.push_back(Event::Acked { up_to });
        }
    }

    /// Whether events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }
}
