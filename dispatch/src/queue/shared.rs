//! The state the [`DispatchQueue`](super::DispatchQueue) handle and the dispatch thread
//! share, and the public data types it is made of.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use protocol::Message;

use crate::dispatcher::{ConnectionRef, Dispatchers};
use crate::prio::PrioQueue;
use crate::throttle::{Permit, Throttle};

/// A connection event for the dispatchers.
#[derive(Clone, Debug)]
pub enum QueueEvent<C> {
    /// An outgoing connection opened: `ms_handle_connect` (and, at enqueue time,
    /// `ms_handle_fast_connect`).
    Connect(C),
    /// An incoming connection opened: `ms_handle_accept` (and, at enqueue time,
    /// `ms_handle_fast_accept`).
    Accept(C),
    /// The connection was reset: `ms_handle_reset`, head → tail until one handles it.
    Reset(C),
    /// The peer reset the session: `ms_handle_remote_reset` on every dispatcher.
    RemoteReset(C),
    /// The peer refused us: `ms_handle_refused`, head → tail until one handles it.
    Refused(C),
}

impl<C> QueueEvent<C> {
    /// The connection the event is about.
    pub fn conn(&self) -> &C {
        match self {
            QueueEvent::Connect(c)
            | QueueEvent::Accept(c)
            | QueueEvent::Reset(c)
            | QueueEvent::RemoteReset(c)
            | QueueEvent::Refused(c) => c,
        }
    }
}

/// How [`DispatchQueue::shutdown`](super::DispatchQueue::shutdown) treats what is still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Deliver everything already queued, then stop.
    Drain,
    /// Drop every queued message (releasing budgets) but deliver the connection events
    /// already queued, then stop: Ceph's `DispatchQueue` after `shutdown`, whose thread
    /// still delivers its queued codes (a messenger's shutdown queues a reset for each
    /// connection it closes) and discards the messages.
    Discard,
}

/// A snapshot of the queue's state and totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Items waiting: messages (queued and local) plus events.
    pub len: usize,
    /// Messages waiting (queued and local).
    pub messages: usize,
    /// Events waiting.
    pub events: usize,
    /// How long the oldest waiting message has waited (zero when none waits).
    pub oldest_age: Duration,
    /// Messages taken by an `ms_dispatch`.
    pub dispatched: u64,
    /// Messages delivered by `ms_fast_dispatch` (workers and local delivery).
    pub fast_dispatched: u64,
    /// Messages dropped: discarded, refused after shutdown, or dropped by shutdown.
    pub discarded: u64,
    /// Messages that every dispatcher declined.
    pub untaken: u64,
    /// Panics of dispatchers on the dispatch thread, each caught: the message or event
    /// it was handling is lost, the thread goes on.
    pub panics: u64,
    /// Events delivered to the dispatchers.
    pub events_delivered: u64,
    /// Times the dispatch thread found nothing to do, even after its idle spin, and
    /// slept until a producer woke it (each costs a futex wait here and a wake there).
    pub sleeps: u64,
}

pub(super) struct Queued<C> {
    pub(super) conn: C,
    pub(super) msg: Message,
    pub(super) budget: Option<Permit>,
    /// When it was handed to the queue (for [`QueueCounters::oldest_age`]).
    pub(super) since: Instant,
}

impl<C> Queued<C> {
    /// Stamped with the message's dispatch stamp when the worker set one (it read the
    /// clock once for its whole batch), else with the clock now.
    pub(super) fn new(conn: C, msg: Message, budget: Option<Permit>) -> Self {
        let since = msg.dispatch_stamp().unwrap_or_else(Instant::now);
        Queued { conn, msg, budget, since }
    }
}

/// Where the queue is in its life: what producers may queue and when the dispatch thread
/// exits. Moves only forward, except that a failed spawn takes `Running` back to `Created`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not started: items are queued and wait for the thread.
    Created,
    /// Started (the thread may still be being spawned): items are queued and delivered.
    Running,
    /// Shutdown began: nothing new is accepted; the thread exits once drained (`Drain`),
    /// or once the events queued before it are delivered (`Discard`).
    Stopping(ShutdownMode),
    /// No thread will run again and none is left to join by a shutdown.
    Stopped,
}

/// The dispatch thread as `start` and `shutdown` hand it on. It changes only under the
/// state lock, and leaving `Spawning` or `Joining` is followed by a notification of
/// [`Shared::lifecycle`]. The spawn and the join happen without the lock, in those two
/// states, so a shutdown that finds either waits instead of returning with the thread
/// unjoined.
#[derive(Debug)]
pub(super) enum ThreadSlot {
    /// No thread to join: never started, its spawn failed, or it was joined.
    Empty,
    /// `start` is spawning the thread; it stores the handle, or goes back to `Empty` if the
    /// spawn failed.
    Spawning,
    /// The thread runs (or has exited) and nobody joins it yet.
    Spawned(JoinHandle<()>),
    /// A shutdown took the handle and joins the thread with this id; it then sets `Empty`.
    Joining(ThreadId),
}

/// What a shutdown on thread `me` does about the dispatch thread ([`ThreadSlot::claim`]).
pub(super) enum Claim {
    /// Join it: the handle is this caller's alone.
    Join(JoinHandle<()>),
    /// Wait for [`Shared::lifecycle`] and claim again (the reason, for the log).
    Wait(&'static str),
    /// Nothing to join: no thread, or the caller is the dispatch thread, which cannot join
    /// itself.
    Nothing,
}

impl ThreadSlot {
    /// Takes the handle for a shutdown on thread `me` if it may join it (leaving
    /// `Joining`), else says why not.
    pub(super) fn claim(&mut self, me: ThreadId) -> Claim {
        let (slot, claim) = match std::mem::replace(self, ThreadSlot::Empty) {
            ThreadSlot::Spawned(h) if h.thread().id() != me => {
                (ThreadSlot::Joining(h.thread().id()), Claim::Join(h))
            }
            ThreadSlot::Spawning => (
                ThreadSlot::Spawning,
                Claim::Wait("a racing start is spawning the dispatch thread"),
            ),
            ThreadSlot::Joining(id) if id != me => {
                (ThreadSlot::Joining(id), Claim::Wait("another shutdown joins the dispatch thread"))
            }
            // Empty; or the caller is the dispatch thread itself (in a dispatcher), whose
            // join waits for it to return: it must not wait for that join.
            slot => (slot, Claim::Nothing),
        };
        *self = slot;
        claim
    }
}

pub(super) struct State<C> {
    pub(super) phase: Phase,
    /// Invariant: `Empty` while the phase is `Created`.
    pub(super) thread: ThreadSlot,
    pub(super) events: VecDeque<QueueEvent<C>>,
    /// Loopback messages not yet preprocessed, in arrival order.
    pub(super) local: VecDeque<Queued<C>>,
    pub(super) messages: PrioQueue<Queued<C>>,
}

impl<C> State<C> {
    pub(super) fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Created | Phase::Running)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.events.is_empty() && self.local.is_empty() && self.messages.len() == 0
    }

    /// When the longest-waiting message arrived: the oldest head of the local lane and of
    /// every (priority, connection) FIFO. O(connections waiting); for counters only.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.local.front().into_iter().chain(self.messages.heads()).map(|q| q.since).min()
    }

    /// Every waiting message, the local lane's first.
    pub(super) fn take_messages(&mut self) -> Vec<Queued<C>> {
        let mut msgs: Vec<_> = self.local.drain(..).collect();
        msgs.extend(self.messages.drain());
        msgs
    }

    pub(super) fn take_all(&mut self) -> (Vec<Queued<C>>, Vec<QueueEvent<C>>) {
        (self.take_messages(), self.events.drain(..).collect())
    }
}

pub(super) struct Shared<C: ConnectionRef> {
    pub(super) name: String,
    pub(super) dispatchers: Arc<Dispatchers<C>>,
    pub(super) throttle: Arc<Throttle>,
    pub(super) state: Mutex<State<C>>,
    /// The dispatch thread sleeps here when everything is empty.
    pub(super) work: Condvar,
    /// Shutdowns wait here while the dispatch thread is being spawned or joined by another
    /// caller (see [`ThreadSlot`]). Apart from `work` so that a producer's `notify_one`
    /// always reaches the dispatch thread.
    pub(super) lifecycle: Condvar,
    pub(super) dispatched: AtomicU64,
    pub(super) fast_dispatched: AtomicU64,
    pub(super) discarded: AtomicU64,
    pub(super) untaken: AtomicU64,
    /// Dispatcher panics the dispatch thread caught (each cost one message or event).
    pub(super) panics: AtomicU64,
    pub(super) events_delivered: AtomicU64,
    pub(super) sleeps: AtomicU64,
    /// See [`DispatchQueue::set_compact_below`](super::DispatchQueue::set_compact_below).
    pub(super) compact_below: AtomicUsize,
    /// See [`DispatchQueue::set_idle_spin`](super::DispatchQueue::set_idle_spin); nanoseconds.
    pub(super) idle_spin: AtomicU64,
    /// Bumped by every push that finds the queue idle (under the state lock) and by
    /// shutdown: the dispatch thread watches it without the lock while it spins.
    pub(super) arrivals: AtomicU64,
}

/// What the dispatch thread does next.
pub(super) enum Work<C> {
    Event(QueueEvent<C>),
    Local(Queued<C>),
    Message(Queued<C>),
    Exit,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MESSAGE_OVERHEAD covers a queued message's entry (the message value included)
    /// with room for allocator slack.
    #[test]
    fn message_overhead_covers_a_queue_entry() {
        let entry = std::mem::size_of::<Queued<u64>>() as u64;
        assert!(entry + 64 <= protocol::message::MESSAGE_OVERHEAD, "entry is {entry} bytes");
    }
}
