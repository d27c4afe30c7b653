//! [`DispatchQueue`]: what producers (workers, local delivery, the messenger's event
//! paths) and the owner (start, shutdown, counters) call.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};
use protocol::Message;

use super::dispatch_thread::run;
use super::shared::{
    Claim, Phase, QueueCounters, QueueEvent, Queued, Shared, ShutdownMode, State, ThreadSlot,
};
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
                    thread: ThreadSlot::Empty,
                    events: VecDeque::new(),
                    local: VecDeque::new(),
                    messages: PrioQueue::new(),
                }),
                work: Condvar::new(),
                lifecycle: Condvar::new(),
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
        })
    }

    /// Messages queued by [`enqueue`](Self::enqueue) with a payload below `n` bytes are
    /// copied out of their read buffer ([`Message::compact`]; a payload of at most 256
    /// bytes into a 1 KiB chunk it shares with the ones copied before and after it,
    /// a larger one into an allocation of its own): received messages are slices of
    /// large shared read buffers, which a small message waiting here would otherwise
    /// keep alive. So are those holding a policy-throttle charge that go to a fast
    /// dispatcher, which may keep them (the charge is then what bounds them, to within
    /// twice). 0 (the default) never copies.
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
    /// Errors: already started or shut down (then no thread is spawned), or the thread
    /// could not be spawned. Against a concurrent [`shutdown`](Self::shutdown) one of the
    /// two comes first: the shutdown, and this fails; or this, and the shutdown waits for
    /// the spawn and joins the thread (or, if the spawn failed, discards the queue).
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        self.start_with(|run| std::thread::Builder::new().name("ms_dispatch".into()).spawn(run))
    }

    /// [`start`](Self::start) with `spawn` standing in for the thread spawn: the seam
    /// through which a test runs a shutdown between the phase change and the stored handle.
    fn start_with(
        &self,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>,
    ) -> io::Result<()> {
        {
            // The phase (not the thread slot) guards against a second start; `Spawning`
            // makes a shutdown wait for the handle instead of missing it, so no lock is
            // held across the spawn.
            let mut st = self.shared.state.lock();
            if st.phase != Phase::Created {
                return Err(io::Error::other(format!(
                    "dispatch queue {}: start in phase {:?}",
                    self.shared.name, st.phase
                )));
            }
            st.phase = Phase::Running;
            st.thread = ThreadSlot::Spawning;
        }
        let shared = Arc::clone(&self.shared);
        let spawned = spawn(Box::new(move || run(&shared)));
        match spawned {
            Ok(h) => {
                self.shared.state.lock().thread = ThreadSlot::Spawned(h);
                self.shared.lifecycle.notify_all();
                log::debug!(target: "msgr::dispatch", "{}: dispatch thread started", self.shared.name);
                Ok(())
            }
            Err(e) => {
                self.spawn_failed(&e);
                Err(e)
            }
        }
    }

    /// After a failed spawn: back to `Created`; or, if a shutdown came during the spawn
    /// (it waits for it), with no thread to deliver them the items go as if that shutdown
    /// had come before the start, and it returns once their budgets are released.
    fn spawn_failed(&self, e: &io::Error) {
        let dropped = {
            let mut st = self.shared.state.lock();
            if st.phase == Phase::Running {
                st.phase = Phase::Created;
                st.thread = ThreadSlot::Empty;
                None
            } else {
                // Stopped, so no start can come in while the slot still says `Spawning`.
                st.phase = Phase::Stopped;
                Some(st.take_all())
            }
        };
        log::debug!(target: "msgr::dispatch", "{}: dispatch thread not spawned: {e}", self.shared.name);
        if let Some((dropped, events)) = dropped {
            self.shared.discarded.fetch_add(dropped.len() as u64, Ordering::Relaxed);
            log::debug!(
                target: "msgr::dispatch",
                "{}: shut down during the spawn, dropped {} messages and {} events",
                self.shared.name,
                dropped.len(),
                events.len()
            );
            // Releasing budgets may call wakers: outside the lock.
            drop((dropped, events));
            self.shared.state.lock().thread = ThreadSlot::Empty;
        }
        self.shared.lifecycle.notify_all();
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
        if !st.accepting() || conn.takes_no_messages() {
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
        let compact_below = self.shared.compact_below.load(Ordering::Relaxed);
        match self.shared.dispatchers.fast_or_return(conn, msg, compact_below) {
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
        let compact_below = self.shared.compact_below.load(Ordering::Relaxed);
        match dispatchers.preprocess_and_fast_dispatch(&mut batch.chains, conn, msg, compact_below)
        {
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
        // Copies, if any, are made before the lock is taken, for the whole batch at once:
        // its small payloads share a chunk (`Message::compact_all`). A read's messages
        // are nearly always of one priority: then they are queued as one run, without a
        // look at each one's priority under the lock.
        let compact_below = self.shared.compact_below.load(Ordering::Relaxed);
        Message::compact_all(batch, |(msg, _)| msg, compact_below);
        let mut one_priority = batch.first().map(|(msg, _)| msg.priority());
        for (msg, _) in batch.iter() {
            one_priority = one_priority.filter(|p| *p == msg.priority());
        }
        let id = conn.conn_id();
        let admitted = self.admit(conn, |st| match one_priority {
            Some(priority) => {
                let queued =
                    batch.drain(..).map(|(msg, budget)| Queued::new(conn.clone(), msg, budget));
                st.messages.push_run(priority, id, queued);
            }
            None => {
                let queued = batch
                    .drain(..)
                    .map(|(msg, budget)| (msg.priority(), Queued::new(conn.clone(), msg, budget)));
                st.messages.push_all(id, queued);
            }
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
    /// Ceph, whose `discard_queue` leaves events alone.) Once the connection takes no
    /// messages ([`crate::ConnectionRef::takes_no_messages`]) only its `Reset` is taken:
    /// the reset is the session's last callback, and another thread still finishing
    /// the session's handshake (a newcomer reset it from the accept path while its own
    /// driver read the peer's reply) must not report it connected after that.
    pub fn enqueue_event(&self, item: QueueEvent<C>) {
        if self.dropped_as_ended(&item) || !self.shared.state.lock().accepting() {
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
        if self.dropped_as_ended(&item) {
            return;
        }
        self.push_events(item, None);
    }

    /// Queues the end of a session its peer replaced: `ms_handle_remote_reset`, then
    /// `ms_handle_reset`, one right behind the other (Ceph's ProtocolV1 accepting a
    /// connect over a lossy session: `session_reset` queues the first, `replace` stops
    /// the session and queues the second). For a connection whose session the caller
    /// has just ended ([`crate::ConnectionRef::takes_no_messages`]), and reports: the
    /// remote reset is taken as its `Reset` is, and nothing of the connection comes
    /// between or after the two. Ignored after shutdown began, and for a connection
    /// marked down, as [`DispatchQueue::enqueue_event`].
    pub fn enqueue_remote_reset_and_reset(&self, conn: C) {
        let reset = QueueEvent::Reset(conn.clone());
        if self.dropped_as_ended(&reset) {
            return;
        }
        self.push_events(QueueEvent::RemoteReset(conn), Some(reset));
    }

    /// Pushes `first` (and `then` right behind it) onto the event queue, checked as
    /// `then`, else `first`, is (see [`DispatchQueue::enqueue_event`]).
    fn push_events(&self, first: QueueEvent<C>, then: Option<QueueEvent<C>>) {
        let mut st = self.shared.state.lock();
        // Once more under the lock a mark_down's discard (and a reset's) takes after
        // setting its flag: checked only before, a mark_down could return between the
        // check and the push, and its connection's event be delivered after it; a
        // session's Reset, queued after its flag is set, is then behind this event, or
        // this event sees the flag.
        if st.accepting() && !ended_before(then.as_ref().unwrap_or(&first)) {
            let was_idle = st.is_idle();
            st.events.push_back(first);
            st.events.extend(then);
            if was_idle {
                self.shared.arrivals.fetch_add(1, Ordering::Release);
            }
            drop(st);
            if was_idle {
                self.shared.work.notify_one();
            }
        }
    }

    /// Whether `item` comes after its connection's end ([`ended_before`]; logged, outside
    /// any lock).
    fn dropped_as_ended(&self, item: &QueueEvent<C>) -> bool {
        if !ended_before(item) {
            return false;
        }
        log::debug!(target: "msgr::dispatch", "{}: dropped an event of conn {}: marked down or reset", self.shared.name, item.conn().conn_id());
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

    /// Whether the calling thread is this queue's dispatch thread (running, or being
    /// joined by a shutdown: it may still be in a dispatcher).
    pub fn is_dispatch_thread(&self) -> bool {
        let me = std::thread::current().id();
        match &self.shared.state.lock().thread {
            ThreadSlot::Spawned(h) => h.thread().id() == me,
            ThreadSlot::Joining(id) => *id == me,
            _ => false,
        }
    }

    /// Stops the queue (see the module docs) and joins the dispatch thread. Idempotent.
    ///
    /// Every call returns only once no dispatch thread is left running or unjoined: one
    /// racing [`start`](Self::start) waits for its spawn, one racing another shutdown waits
    /// for that one's join. Except on the dispatch thread itself (from a dispatcher), which
    /// cannot join itself: there it only asks the thread to stop, and a later shutdown (or
    /// the drop) from another thread joins it.
    pub fn shutdown(&self, mode: ShutdownMode) {
        self.stop(mode);
        self.join_thread();
    }

    /// [`shutdown`](Self::shutdown) without the join: stops the queue and asks the
    /// dispatch thread to stop, but returns without waiting for it. For a caller the
    /// dispatch thread may be waiting for (an event loop's worker, which a shutdown on
    /// the dispatch thread joins or submits work to): a join there deadlocked. A later
    /// [`shutdown`](Self::shutdown) (or the drop) from another thread joins the thread.
    pub fn stop(&self, mode: ShutdownMode) {
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
                        // The events stay for the thread (see `ShutdownMode::Discard`).
                        ShutdownMode::Discard => (st.take_messages(), Vec::new()),
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
    }

    /// Joins the dispatch thread for [`shutdown`](Self::shutdown), unless the caller is that
    /// thread: takes its handle, waiting while a racing start spawns it or another shutdown
    /// joins it. No lock is held across the join.
    fn join_thread(&self) {
        let me = std::thread::current().id();
        let mut announced = false;
        let mut st = self.shared.state.lock();
        let handle = loop {
            match st.thread.claim(me) {
                Claim::Join(h) => break h,
                Claim::Nothing => return,
                Claim::Wait(why) if !announced => {
                    announced = true;
                    // Logged without the lock (a logger is code we do not know); the claim
                    // is made again before waiting, so no notification is missed.
                    MutexGuard::unlocked(&mut st, || {
                        log::debug!(target: "msgr::dispatch", "{}: shutdown waits: {why}", self.shared.name);
                    });
                }
                Claim::Wait(_) => self.shared.lifecycle.wait(&mut st),
            }
        };
        drop(st);
        if handle.join().is_err() {
            log::error!(target: "msgr::dispatch", "{}: dispatch thread panicked", self.shared.name);
        }
        {
            let mut st = self.shared.state.lock();
            st.thread = ThreadSlot::Empty;
            st.phase = Phase::Stopped;
        }
        self.shared.lifecycle.notify_all();
    }

    /// Connection events waiting for the dispatch thread.
    pub fn queued_events(&self) -> usize {
        self.shared.state.lock().events.len()
    }

    /// Items waiting for the dispatch thread: messages (queued and local) and events
    /// ([`QueueCounters::len`] alone).
    pub fn len(&self) -> usize {
        let st = self.shared.state.lock();
        st.messages.len() + st.local.len() + st.events.len()
    }

    /// Whether nothing waits for the dispatch thread.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the longest-waiting message has waited ([`QueueCounters::oldest_age`]
    /// alone): zero when none waits.
    pub fn max_age(&self) -> Duration {
        let oldest = self.shared.state.lock().oldest();
        oldest.map(|t| t.elapsed()).unwrap_or_default()
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

/// Whether `item` comes after its connection's end: the connection was marked down, or
/// its session ended and `item` is not the `Reset` that reports it.
fn ended_before<C: ConnectionRef>(item: &QueueEvent<C>) -> bool {
    let conn = item.conn();
    conn.is_marked_down() || (!matches!(item, QueueEvent::Reset(_)) && conn.takes_no_messages())
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

#[cfg(test)]
mod tests {
    //! `start` racing `shutdown`, forced through [`DispatchQueue::start_with`]: the spawn
    //! it stands in for runs the shutdown inside the window between the phase change and the
    //! stored handle.

    use std::sync::atomic::AtomicBool;
    use std::sync::Once;
    use std::thread;

    use bytes::Bytes;
    use crossbeam_channel::{select, unbounded, Receiver, Sender};
    use log::{LevelFilter, Log, Metadata, Record};

    use super::*;
    use crate::dispatcher::{Dispatched, Dispatcher};

    /// How long a test waits for something that should happen at once.
    const WAIT: Duration = Duration::from_secs(10);

    #[derive(Clone, Debug)]
    struct Conn(u64);

    impl ConnectionRef for Conn {
        fn conn_id(&self) -> u64 {
            self.0
        }
    }

    /// Takes every message.
    struct Taker;

    impl Dispatcher<Conn> for Taker {
        fn ms_dispatch(&self, _conn: &Conn, _msg: Message) -> Dispatched {
            Dispatched::Taken
        }
    }

    /// Tells the tests watching for a needle about each `msgr::dispatch` record holding it:
    /// a shutdown that waits for a racing start shows it nowhere but in its log.
    struct Capture {
        watchers: Mutex<Vec<(String, Sender<()>)>>,
    }

    static CAPTURE: Capture = Capture { watchers: parking_lot::const_mutex(Vec::new()) };

    impl Log for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target() == "msgr::dispatch"
        }

        fn log(&self, record: &Record<'_>) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let text = record.args().to_string();
            for (needle, tx) in self.watchers.lock().iter() {
                if text.contains(needle.as_str()) {
                    let _ = tx.send(());
                }
            }
        }

        fn flush(&self) {}
    }

    /// Reports every `msgr::dispatch` record holding `needle` from now on.
    fn watch_log(needle: String) -> Receiver<()> {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURE).expect("the only logger of this test binary");
            log::set_max_level(LevelFilter::Debug);
        });
        let (tx, rx) = unbounded();
        CAPTURE.watchers.lock().push((needle, tx));
        rx
    }

    /// How the shutdown started inside the spawn window went on before the spawn.
    enum Before<T> {
        /// It logged that it waits for the spawn.
        Waited,
        /// It returned, and `observe` saw this then.
        Returned(T),
        /// Neither within [`WAIT`].
        TimedOut,
    }

    /// Starts `q` through a spawn that first runs `shutdown(mode)` on another thread until
    /// that shutdown either returned or logged that it waits for the spawn, and only then
    /// calls `spawn`. Returns what `start` returned and what `observe` saw the moment the
    /// shutdown returned.
    fn start_racing_shutdown<T: Send + 'static>(
        q: &Arc<DispatchQueue<Conn>>,
        mode: ShutdownMode,
        observe: impl FnOnce() -> T + Send + 'static,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> io::Result<JoinHandle<()>>,
    ) -> (io::Result<()>, T) {
        let waits = watch_log(format!("{}: shutdown waits", q.shared.name));
        let (returned_tx, returned_rx) = unbounded();
        let mut stopper = None;
        let mut before = Before::TimedOut;
        let started = q.start_with(|run| {
            let stopping = Arc::clone(q);
            stopper = Some(thread::spawn(move || {
                stopping.shutdown(mode);
                let _ = returned_tx.send(observe());
            }));
            // No panic in here: it would leave a half-done start behind for the drop.
            select! {
                recv(waits) -> _ => before = Before::Waited,
                recv(returned_rx) -> seen => if let Ok(seen) = seen {
                    before = Before::Returned(seen);
                },
                default(WAIT) => {}
            }
            spawn(run)
        });
        let seen = match before {
            Before::Returned(seen) => seen,
            Before::Waited => returned_rx.recv_timeout(WAIT).expect("shutdown returned"),
            Before::TimedOut => panic!("the shutdown neither returned nor waited for the spawn"),
        };
        stopper.expect("start called the spawn").join().expect("shutdown did not panic");
        (started, seen)
    }

    /// A shutdown that runs while `start` spawns the dispatch thread (the phase says
    /// Running, no handle is stored yet) returns only once that thread delivered what was
    /// queued and was joined: no dispatch after shutdown returned, no thread left unjoined.
    #[test]
    fn shutdown_racing_start_waits_for_the_spawn_and_joins_the_thread() {
        let dispatchers = Dispatchers::new();
        dispatchers.add_tail(Arc::new(Taker));
        let q = DispatchQueue::new("race-start", dispatchers, Throttle::new("dispatch", 0));
        q.enqueue(&Conn(1), Message::new(1, Bytes::new()), None);
        let exited = Arc::new(AtomicBool::new(false));
        let observe = {
            let (q, exited) = (Arc::clone(&q), Arc::clone(&exited));
            move || (exited.load(Ordering::SeqCst), q.counters().dispatched)
        };
        let (started, (exited_then, dispatched_then)) =
            start_racing_shutdown(&q, ShutdownMode::Drain, observe, |run| {
                let exited = Arc::clone(&exited);
                thread::Builder::new().name("ms_dispatch".into()).spawn(move || {
                    run();
                    exited.store(true, Ordering::SeqCst);
                })
            });
        started.expect("start came first: it spawns the thread");
        assert!(exited_then, "shutdown returned with the dispatch thread running, unjoined");
        assert_eq!(dispatched_then, 1, "shutdown(Drain) returned before the queue was drained");
    }

    /// A shutdown waiting for a racing start whose spawn fails finds no thread: what was
    /// queued is discarded (as by a shutdown before any start), its budget released before
    /// the shutdown returns, and the queue is stopped.
    #[test]
    fn shutdown_racing_a_failed_spawn_discards_the_queue() {
        let budget = Throttle::new("dispatch", 0);
        let q = DispatchQueue::new("race-failed-spawn", Dispatchers::new(), Arc::clone(&budget));
        q.enqueue(&Conn(1), Message::new(1, Bytes::new()), Some(budget.take(1)));
        let observe = {
            let (q, budget) = (Arc::clone(&q), Arc::clone(&budget));
            move || (q.counters().len, q.counters().discarded, budget.current())
        };
        let (started, left_then) = start_racing_shutdown(&q, ShutdownMode::Drain, observe, |_| {
            Err(io::Error::other("no thread for this test"))
        });
        assert!(started.is_err());
        assert_eq!(left_then, (0, 1, 0), "(queued, discarded, budget held) when shutdown returned");
        assert!(q.start().is_err(), "a shut down queue does not start");
    }
}
