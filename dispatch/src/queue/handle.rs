//! [`DispatchQueue`]: what producers (workers, local delivery, the messenger's event
//! paths) and the owner (start, shutdown, counters) call.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use protocol::Message;

use super::dispatch_thread::run;
use super::shared::{Phase, QueueCounters, QueueEvent, Queued, Shared, ShutdownMode, State};
use crate::dispatcher::{ChainCache, ConnectionRef, Dispatchers};
use crate::prio::PrioQueue;
use crate::throttle::{Permit, Throttle};

/// How long the dispatch thread watches for new work before it sleeps, by default (see
/// [`DispatchQueue::set_idle_spin`]). Long enough to cover the gap between two messages
/// a worker hands over from one read; short enough that an idle queue costs nothing.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(5);

/// Where [`DispatchQueue::deliver`] sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered by `ms_fast_dispatch` on the calling thread.
    Fast,
    /// Queued for the dispatch thread.
    Queued,
}

/// A worker's batch of received messages for the queue ([`DispatchQueue::deliver_into`],
/// [`DispatchQueue::enqueue_batch`]), with what delivering them needs that other workers
/// must not share per message: the worker's copy of the dispatcher chains and its count
/// of fast dispatches not yet added to [`QueueCounters::fast_dispatched`] (added at each
/// `enqueue_batch`).
pub struct ReadBatch<C: ConnectionRef> {
    messages: Vec<(Message, Option<Permit>)>,
    chains: ChainCache<C>,
    fast_dispatched: u64,
}

impl<C: ConnectionRef> Default for ReadBatch<C> {
    fn default() -> Self {
        ReadBatch { messages: Vec::new(), chains: ChainCache::default(), fast_dispatched: 0 }
    }
}

impl<C: ConnectionRef> ReadBatch<C> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages waiting for [`DispatchQueue::enqueue_batch`].
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether [`DispatchQueue::enqueue_batch`] has nothing to do: no message waits and
    /// no fast dispatch is left to count.
    #[inline]
    pub fn is_drained(&self) -> bool {
        self.messages.is_empty() && self.fast_dispatched == 0
    }
}

impl<C: ConnectionRef> std::fmt::Debug for ReadBatch<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBatch")
            .field("messages", &self.messages.len())
            .field("fast_dispatched", &self.fast_dispatched)
            .finish_non_exhaustive()
    }
}

/// Received messages and connection events, delivered to the [`Dispatchers`] by one
/// thread named `ms_dispatch`. See the module docs for the ordering promises.
pub struct DispatchQueue<C: ConnectionRef> {
    shared: Arc<Shared<C>>,
    /// Taken out (never held locked) while joining.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<C: ConnectionRef> DispatchQueue<C> {
    /// A stopped queue delivering to `dispatchers`; `throttle` is the dispatch throttle
    /// (charged by [`local_delivery`](Self::local_delivery); workers charge it themselves).
    pub fn new(name: &str, dispatchers: Arc<Dispatchers<C>>, throttle: Arc<Throttle>) -> Arc<Self> {
        Arc::new(DispatchQueue {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                dispatchers,
                throttle,
                state: Mutex::new(State {
                    phase: Phase::Created,
                    events: VecDeque::new(),
                    local: VecDeque::new(),
                    messages: PrioQueue::new(),
                }),
                work: Condvar::new(),
                dispatched: AtomicU64::new(0),
                fast_dispatched: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
                untaken: AtomicU64::new(0),
                panics: AtomicU64::new(0),
                events_delivered: AtomicU64::new(0),
                sleeps: AtomicU64::new(0),
                compact_below: AtomicUsize::new(0),
                idle_spin: AtomicU64::new(DEFAULT_IDLE_SPIN.as_nanos() as u64),
                arrivals: AtomicU64::new(0),
            }),
            thread: Mutex::new(None),
        })
    }

    /// Messages queued by [`enqueue`](Self::enqueue) with a payload below `n` bytes are
    /// copied into an allocation of their own ([`Message::compact`]): received messages
    /// are slices of large shared read buffers, which a small message waiting here
    /// would otherwise keep alive. 0 (the default) never copies.
    pub fn set_compact_below(&self, n: usize) {
        self.shared.compact_below.store(n, Ordering::Relaxed);
    }

    /// How long the dispatch thread, having emptied the queue, watches for new work
    /// before it sleeps (default [`DEFAULT_IDLE_SPIN`]; zero sleeps at once).
    ///
    /// Work that arrives within the spin is taken without a futex wait on this thread
    /// or a futex wake on the producer's; past it, the thread sleeps as before. The cost
    /// is up to this much CPU each time the queue runs dry.
    pub fn set_idle_spin(&self, spin: Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.shared.idle_spin.store(ns, Ordering::Relaxed);
    }

    /// The dispatcher chain.
    pub fn dispatchers(&self) -> &Arc<Dispatchers<C>> {
        &self.shared.dispatchers
    }

    /// The dispatch throttle.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.shared.throttle
    }

    /// Spawns the `ms_dispatch` thread. Items queued before this are kept.
    ///
    /// Errors: already started or shut down, or the thread could not be spawned.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        {
            // The phase (not the thread slot) guards against a second start, so no lock
            // is held across the spawn.
            let mut st = self.shared.state.lock();
            if st.phase != Phase::Created {
                return Err(io::Error::other(format!(
                    "dispatch queue {}: start in phase {:?}",
                    self.shared.name, st.phase
                )));
            }
            st.phase = Phase::Running;
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new().name("ms_dispatch".into()).spawn(move || {
            run(&shared);
        });
        match spawned {
            Ok(h) => {
                *self.thread.lock() = Some(h);
                log::debug!(target: "msgr::dispatch", "{}: dispatch thread started", self.shared.name);
                Ok(())
            }
            Err(e) => {
                let mut st = self.shared.state.lock();
                if st.phase == Phase::Running {
                    st.phase = Phase::Created;
                }
                Err(e)
            }
        }
    }

    /// Queues a message read from `conn`, with the dispatch-throttle `budget` charged
    /// for it. After shutdown began the message is dropped (and counted as discarded).
    ///
    /// This is the bare queue: it runs neither `ms_fast_preprocess` nor the fast path.
    /// The receive path is [`deliver`](Self::deliver).
    pub fn enqueue(&self, conn: &C, mut msg: Message, budget: Option<Permit>) {
        msg.compact(self.shared.compact_below.load(Ordering::Relaxed));
        let priority = msg.priority();
        self.push_message(conn, msg, budget, |st, q| {
            st.messages.push(priority, q.conn.conn_id(), q)
        });
    }

    /// Puts one message into its lane with `place` (see [`admit`](Self::admit)); after
    /// shutdown began, or once `conn` is marked down, it is dropped and counted instead.
    fn push_message(
        &self,
        conn: &C,
        msg: Message,
        budget: Option<Permit>,
        place: impl FnOnce(&mut State<C>, Queued<C>),
    ) {
        let mut item = Some((msg, budget));
        let admitted = self.admit(conn, |st| {
            if let Some((msg, budget)) = item.take() {
                place(st, Queued::new(conn.clone(), msg, budget));
            }
        });
        if !admitted {
            self.refused(1);
        }
        // A refused message's budget is released here, outside the lock.
        drop(item);
    }

    /// Runs `place` under the queue's lock if the queue accepts messages of `conn` and
    /// wakes the dispatch thread if the queue was idle; returns whether it ran. Checked
    /// under the lock that `discard` takes: a message of a connection marked down either
    /// is queued before the discard (and discarded by it) or is refused here.
    fn admit(&self, conn: &C, place: impl FnOnce(&mut State<C>)) -> bool {
        let mut st = self.shared.state.lock();
        if !st.accepting() || conn.is_marked_down() {
            return false;
        }
        let was_idle = st.is_idle();
        place(&mut st);
        if was_idle {
            self.shared.arrivals.fetch_add(1, Ordering::Release);
        }
        drop(st);
        if was_idle {
            self.shared.work.notify_one();
        }
        true
    }

    /// Counts `n` messages refused after shutdown began or once their connection was
    /// marked down.
    fn refused(&self, n: usize) {
        self.shared.discarded.fetch_add(n as u64, Ordering::Relaxed);
        log::debug!(target: "msgr::dispatch", "{}: {n} messages refused (shutdown or marked down)", self.shared.name);
    }

    /// The receive path for a message read by `conn`'s worker, in arrival order:
    /// preprocess, fast dispatch on this thread if wanted (releasing `budget` when the
    /// dispatcher returns), else [`enqueue`](Self::enqueue) it with its budget.
    pub fn deliver(&self, conn: &C, msg: Message, budget: Option<Permit>) -> Delivery {
        match self.shared.dispatchers.fast_or_return(conn, msg) {
            None => {
                drop(budget);
                self.shared.fast_dispatched.fetch_add(1, Ordering::Relaxed);
                Delivery::Fast
            }
            Some(msg) => {
                self.enqueue(conn, msg, budget);
                Delivery::Queued
            }
        }
    }

    /// [`deliver`](Self::deliver) for one message of a batch read by `conn`'s worker:
    /// preprocess and fast dispatch happen now, but a message for the queue is appended
    /// to `batch` (in arrival order) instead of queued. The caller hands the batch to
    /// [`enqueue_batch`](Self::enqueue_batch) once its read is handled, so a read of many
    /// messages costs the queue one lock and the dispatch thread at most one wakeup.
    ///
    /// The messages in `batch` keep their budget until then: the caller must hand it over
    /// before it waits for dispatch-throttle budget itself.
    pub fn deliver_into(
        &self,
        conn: &C,
        msg: Message,
        budget: Option<Permit>,
        batch: &mut ReadBatch<C>,
    ) -> Delivery {
        self.deliver_into_with(conn, msg, move || budget, batch)
    }

    /// [`deliver_into`](Self::deliver_into) for a caller whose budget for `msg` is
    /// cheaper not to split off when it is fast-dispatched (a worker's budget taken ahead
    /// for a burst, released in one piece later): `budget` is called only when the
    /// message goes to the queue, and the permit it returns travels with it.
    #[inline]
    pub fn deliver_into_with(
        &self,
        conn: &C,
        msg: Message,
        budget: impl FnOnce() -> Option<Permit>,
        batch: &mut ReadBatch<C>,
    ) -> Delivery {
        let dispatchers = &self.shared.dispatchers;
        match dispatchers.preprocess_and_fast_dispatch(&mut batch.chains, conn, msg) {
            None => {
                batch.fast_dispatched += 1;
                Delivery::Fast
            }
            Some(msg) => {
                batch.messages.push((msg, budget()));
                Delivery::Queued
            }
        }
    }

    /// Queues every message of `batch` (all read from `conn`, in arrival order), leaving
    /// it empty: what [`enqueue`](Self::enqueue) does for each, under one lock and with at
    /// most one wakeup of the dispatch thread. After shutdown began, or once `conn` is
    /// marked down, the messages are dropped and counted as discarded instead. Adds the
    /// batch's fast dispatches to the counters.
    pub fn enqueue_batch(&self, conn: &C, batch: &mut ReadBatch<C>) {
        if batch.fast_dispatched > 0 {
            self.shared.fast_dispatched.fetch_add(batch.fast_dispatched, Ordering::Relaxed);
            batch.fast_dispatched = 0;
        }
        let batch = &mut batch.messages;
        if batch.is_empty() {
            return;
        }
        // Copies, if any, are made before the lock is taken.
        let compact_below = self.shared.compact_below.load(Ordering::Relaxed);
        for (msg, _) in batch.iter_mut() {
            msg.compact(compact_below);
        }
        let id = conn.conn_id();
        let admitted = self.admit(conn, |st| {
            let queued = batch
                .drain(..)
                .map(|(msg, budget)| (msg.priority(), Queued::new(conn.clone(), msg, budget)));
            st.messages.push_all(id, queued);
        });
        if !admitted {
            self.refused(batch.len());
            // Releasing budgets may call wakers: outside the lock.
            batch.clear();
        }
    }

    /// Queues a connection event; for `Connect`/`Accept`, first calls the fast hooks on
    /// this thread. Ignored after shutdown began, and for a connection marked down: as
    /// Ceph's `mark_down`, which stops the connection before it returns, is followed by
    /// no callback of it. (One queued before the mark_down is still delivered, as in
    /// Ceph, whose `discard_queue` leaves events alone.)
    pub fn enqueue_event(&self, item: QueueEvent<C>) {
        if self.dropped_as_marked_down(&item) || !self.shared.state.lock().accepting() {
            return;
        }
        match &item {
            QueueEvent::Connect(c) => self.shared.dispatchers.handle_fast_connect(c),
            QueueEvent::Accept(c) => self.shared.dispatchers.handle_fast_accept(c),
            QueueEvent::Reset(_) | QueueEvent::RemoteReset(_) | QueueEvent::Refused(_) => {}
        }
        // Again: a fast hook may have marked the connection down. (A mark_down racing
        // the push below is one made while the event was being queued: like an event
        // queued before it, that one is delivered.)
        if self.dropped_as_marked_down(&item) {
            return;
        }
        let mut st = self.shared.state.lock();
        if st.accepting() {
            let was_idle = st.is_idle();
            st.events.push_back(item);
            if was_idle {
                self.shared.arrivals.fetch_add(1, Ordering::Release);
            }
            drop(st);
            if was_idle {
                self.shared.work.notify_one();
            }
        }
    }

    /// Whether `item`'s connection was marked down (logged, outside any lock).
    fn dropped_as_marked_down(&self, item: &QueueEvent<C>) -> bool {
        let conn = item.conn();
        if !conn.is_marked_down() {
            return false;
        }
        log::debug!(target: "msgr::dispatch", "{}: dropped an event of conn {}: marked down", self.shared.name, conn.conn_id());
        true
    }

    /// Delivers a message sent on the loopback connection `conn` to our own dispatchers
    /// with the same guarantees as a worker's [`deliver`](Self::deliver), on the dispatch
    /// thread (never on the caller's, which may hold its own locks). Charges the dispatch
    /// throttle without waiting.
    pub fn local_delivery(&self, conn: &C, msg: Message) {
        let budget = self.shared.throttle.take(msg.queued_cost());
        self.push_message(conn, msg, Some(budget), |st, q| st.local.push_back(q));
    }

    /// Drops every waiting message of connection `conn_id` (not its events), releasing
    /// their budget. Returns how many were dropped. A message already handed to a
    /// dispatcher is not affected.
    #[doc(alias = "discard_queue")]
    pub fn discard(&self, conn_id: u64) -> usize {
        let dropped = {
            let mut st = self.shared.state.lock();
            let mut dropped = st.messages.remove_conn(conn_id);
            let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                st.local.drain(..).partition(|q| q.conn.conn_id() == conn_id);
            st.local = rest;
            dropped.extend(mine);
            dropped
        };
        let n = dropped.len();
        self.shared.discarded.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            log::debug!(target: "msgr::dispatch", "{}: discarded {n} messages of conn {conn_id}", self.shared.name);
        }
        // Releasing budgets may call wakers: outside the lock.
        drop(dropped);
        n
    }

    /// Stops the queue (see the module docs) and joins the dispatch thread. Idempotent;
    /// a concurrent second call may return before the first finished joining.
    pub fn shutdown(&self, mode: ShutdownMode) {
        let (dropped, events) = {
            let mut st = self.shared.state.lock();
            match st.phase {
                Phase::Created => {
                    st.phase = Phase::Stopped;
                    st.take_all()
                }
                Phase::Running | Phase::Stopping(ShutdownMode::Drain) => {
                    st.phase = Phase::Stopping(mode);
                    match mode {
                        ShutdownMode::Drain => (Vec::new(), Vec::new()),
                        ShutdownMode::Discard => st.take_all(),
                    }
                }
                Phase::Stopping(ShutdownMode::Discard) | Phase::Stopped => (Vec::new(), Vec::new()),
            }
        };
        self.shared.arrivals.fetch_add(1, Ordering::Release);
        self.shared.work.notify_all();
        self.shared.discarded.fetch_add(dropped.len() as u64, Ordering::Relaxed);
        log::debug!(
            target: "msgr::dispatch",
            "{}: shutdown {mode:?}, dropped {} messages and {} events",
            self.shared.name,
            dropped.len(),
            events.len()
        );
        drop((dropped, events));

        let handle = self.thread.lock().take();
        if let Some(h) = handle {
            if h.thread().id() == std::thread::current().id() {
                // Called by a dispatcher: the thread exits when this hook returns; a later
                // shutdown or the drop joins it.
                *self.thread.lock() = Some(h);
                return;
            }
            if h.join().is_err() {
                log::error!(target: "msgr::dispatch", "{}: dispatch thread panicked", self.shared.name);
            }
            self.shared.state.lock().phase = Phase::Stopped;
        }
    }

    /// Connection events waiting for the dispatch thread.
    pub fn queued_events(&self) -> usize {
        self.shared.state.lock().events.len()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> QueueCounters {
        let s = &self.shared;
        let (messages, events, oldest_age) = {
            let st = s.state.lock();
            let oldest = st.oldest().map(|t| t.elapsed());
            (st.messages.len() + st.local.len(), st.events.len(), oldest.unwrap_or_default())
        };
        QueueCounters {
            len: messages + events,
            messages,
            events,
            oldest_age,
            dispatched: s.dispatched.load(Ordering::Relaxed),
            fast_dispatched: s.fast_dispatched.load(Ordering::Relaxed),
            discarded: s.discarded.load(Ordering::Relaxed),
            untaken: s.untaken.load(Ordering::Relaxed),
            panics: s.panics.load(Ordering::Relaxed),
            events_delivered: s.events_delivered.load(Ordering::Relaxed),
            sleeps: s.sleeps.load(Ordering::Relaxed),
        }
    }
}

impl<C: ConnectionRef> Drop for DispatchQueue<C> {
    fn drop(&mut self) {
        self.shutdown(ShutdownMode::Discard);
    }
}

impl<C: ConnectionRef> std::fmt::Debug for DispatchQueue<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchQueue")
            .field("name", &self.shared.name)
            .field("counters", &self.counters())
            .finish()
    }
}
