//! [`DispatchQueue`]: received messages and connection events waiting for the one
//! `ms_dispatch` thread.
//!
//! # What is promised
//! - **Events first.** Queued connection events ([`QueueEvent`]) are delivered before
//!   any queued message, in the order they were enqueued (one FIFO for all
//!   connections). So an event enqueued before a message of the same connection is
//!   delivered first — and an event enqueued later (a reset) may overtake that
//!   connection's earlier queued messages, as in Ceph. [`DispatchQueue::discard`] does
//!   not remove events.
//! - **Connect / accept before messages.** [`DispatchQueue::enqueue_event`] with
//!   `Connect`/`Accept` calls `ms_handle_fast_connect`/`ms_handle_fast_accept` on the
//!   calling thread before it returns, and queues `ms_handle_connect`/`ms_handle_accept`.
//!   If the caller delivers that connection's messages after `enqueue_event` returns
//!   (the connection's worker does), then the fast hooks run before every message of
//!   the connection, fast-dispatched or queued, and the queued hooks run before every
//!   *queued* message of it. A fast-dispatched message may run before the queued
//!   `ms_handle_connect` (as in Ceph).
//! - **Messages.** Priorities above `PRIO_HIGH` (so `PRIO_HIGHEST`) strictly first,
//!   highest first; the others by weighted round robin, the priority value being the
//!   weight (see the `prio` module docs: proportional turns, nothing starves); within a
//!   priority, connections take turns; within one connection and one priority, FIFO.
//!   Priority 0 counts as `PRIO_DEFAULT`. Messages of one connection at different
//!   priorities may be reordered (that is what priorities are for).
//! - **Fast path.** [`DispatchQueue::deliver`] runs `ms_fast_preprocess` for every
//!   message and `ms_fast_dispatch` on the calling thread for those a fast dispatcher
//!   wants, bypassing the queue; each connection's worker calls it in arrival order, so
//!   preprocess sees each connection's messages in arrival order.
//! - **Loopback.** [`DispatchQueue::local_delivery`] keeps the same guarantees: local
//!   messages wait in a FIFO lane that the dispatch thread serves after events and
//!   before queued messages, running preprocess, then fast dispatch or queueing, exactly
//!   as a worker would. (Ceph uses a separate local-delivery thread; we add no thread.)
//! - **Budget.** Each message may carry a dispatch-throttle [`Permit`], acquired when it
//!   was read. It is released when the dispatcher (fast or not) returns, or when the
//!   message is discarded.
//!
//! # Bounds
//! The message queue has no bound of its own: it is bounded by the dispatch throttle
//! (bytes; default 100 MiB, Ceph's `ms_dispatch_throttle_bytes`), because workers stop
//! reading when they cannot acquire budget. Every message is charged what it costs
//! while queued, [`Message::queued_cost`] (payload plus
//! [`protocol::message::MESSAGE_OVERHEAD`] for the value and its queue entry), so
//! empty messages are bounded too. Events are few per
//! connection (open, reset, refused). Local deliveries are charged with
//! [`Throttle::take`] (the local sender is not blocked, as in Ceph), which makes
//! remote readers back off.
//!
//! # Wakeups
//! The dispatch thread sleeps on a condvar when nothing waits, and a producer wakes it
//! only when it makes an idle queue non-empty. Each sleep costs a futex wait here and
//! a futex wake on the producer (a worker), which dominated the queued path's cost
//! under a request/reply load. So before it sleeps the thread spins for a few
//! microseconds ([`DispatchQueue::set_idle_spin`], default [`DEFAULT_IDLE_SPIN`]),
//! watching an arrivals counter without the lock; work that lands within the spin is
//! taken with no syscall on either side. A spin that found nothing makes the thread
//! skip the spin the next 1, 2, 4 … (at most 64) times it runs dry, so a load whose
//! gaps outlast the spin (depth 1, an idle daemon) pays almost nothing for it.
//! [`QueueCounters::sleeps`] counts the sleeps.
//!
//! A waiting message's age ([`QueueCounters::oldest_age`]) counts from its
//! [`Message::dispatch_stamp`] (the worker reads the clock once per batch) and the
//! queue reads the clock only for messages without one.
//!
//! # Shutdown
//! [`ShutdownMode::Drain`] delivers what is queued, then stops; `Discard` drops it
//! (releasing budgets) after the dispatch in progress. Both refuse new items and
//! join the thread (unless called from the dispatch thread itself, where they only
//! ask it to stop). If the thread was never started, both discard.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use protocol::Message;

use crate::dispatcher::{ConnectionRef, Dispatchers};
use crate::prio::PrioQueue;
use crate::throttle::{Permit, Throttle};

/// How long the dispatch thread watches for new work before it sleeps, by default (see
/// [`DispatchQueue::set_idle_spin`]). Long enough to cover the gap between two messages
/// a worker hands over from one read; short enough that an idle queue costs nothing.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(5);

/// Looks at the arrivals counter between clock reads while spinning.
const SPIN_CHECKS: u32 = 64;

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

/// Where [`DispatchQueue::deliver`] sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Delivered by `ms_fast_dispatch` on the calling thread.
    Fast,
    /// Queued for the dispatch thread.
    Queued,
}

/// How [`DispatchQueue::shutdown`] treats what is still queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Deliver everything already queued, then stop.
    Drain,
    /// Drop everything queued (releasing budgets), then stop.
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
    /// Events delivered to the dispatchers.
    pub events_delivered: u64,
    /// Times the dispatch thread found nothing to do, even after its idle spin, and
    /// slept until a producer woke it (each costs a futex wait here and a wake there).
    pub sleeps: u64,
}

struct Queued<C> {
    conn: C,
    msg: Message,
    budget: Option<Permit>,
    /// When it was handed to the queue (for [`QueueCounters::oldest_age`]).
    since: Instant,
}

impl<C> Queued<C> {
    /// Stamped with the message's dispatch stamp when the worker set one (it read the
    /// clock once for its whole batch), else with the clock now.
    fn new(conn: C, msg: Message, budget: Option<Permit>) -> Self {
        let since = msg.dispatch_stamp().unwrap_or_else(Instant::now);
        Queued { conn, msg, budget, since }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Stopping(ShutdownMode),
    Stopped,
}

struct State<C> {
    phase: Phase,
    events: VecDeque<QueueEvent<C>>,
    /// Loopback messages not yet preprocessed, in arrival order.
    local: VecDeque<Queued<C>>,
    messages: PrioQueue<Queued<C>>,
}

impl<C> State<C> {
    fn accepting(&self) -> bool {
        matches!(self.phase, Phase::Created | Phase::Running)
    }

    fn is_idle(&self) -> bool {
        self.events.is_empty() && self.local.is_empty() && self.messages.len() == 0
    }

    /// When the longest-waiting message arrived: the oldest head of the local lane and of
    /// every (priority, connection) FIFO. O(connections waiting); for counters only.
    fn oldest(&self) -> Option<Instant> {
        self.local.front().into_iter().chain(self.messages.heads()).map(|q| q.since).min()
    }

    fn take_all(&mut self) -> (Vec<Queued<C>>, Vec<QueueEvent<C>>) {
        let mut msgs: Vec<_> = self.local.drain(..).collect();
        msgs.extend(self.messages.drain());
        (msgs, self.events.drain(..).collect())
    }
}

struct Shared<C: ConnectionRef> {
    name: String,
    dispatchers: Arc<Dispatchers<C>>,
    throttle: Arc<Throttle>,
    state: Mutex<State<C>>,
    /// The dispatch thread sleeps here when everything is empty.
    work: Condvar,
    dispatched: AtomicU64,
    fast_dispatched: AtomicU64,
    discarded: AtomicU64,
    untaken: AtomicU64,
    events_delivered: AtomicU64,
    sleeps: AtomicU64,
    /// See [`DispatchQueue::set_compact_below`].
    compact_below: AtomicUsize,
    /// See [`DispatchQueue::set_idle_spin`]; nanoseconds.
    idle_spin: AtomicU64,
    /// Bumped by every push that finds the queue idle (under the state lock) and by
    /// shutdown: the dispatch thread watches it without the lock while it spins.
    arrivals: AtomicU64,
}

/// What the dispatch thread does next.
enum Work<C> {
    Event(QueueEvent<C>),
    Local(Queued<C>),
    Message(Queued<C>),
    Exit,
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

    /// Puts one message into its lane with `place` and wakes the dispatch thread if the
    /// queue was idle; after shutdown began the message is dropped and counted instead.
    /// Its budget is released outside the lock either way.
    fn push_message(
        &self,
        conn: &C,
        msg: Message,
        budget: Option<Permit>,
        place: impl FnOnce(&mut State<C>, Queued<C>),
    ) {
        let rejected = {
            let mut st = self.shared.state.lock();
            // Checked under the lock that `discard` takes: a message of a connection
            // marked down either is queued before the discard (and discarded by it) or
            // is refused here.
            if st.accepting() && !conn.is_marked_down() {
                let was_idle = st.is_idle();
                place(&mut st, Queued::new(conn.clone(), msg, budget));
                if was_idle {
                    self.shared.arrivals.fetch_add(1, Ordering::Release);
                }
                drop(st);
                if was_idle {
                    self.shared.work.notify_one();
                }
                None
            } else {
                Some((msg, budget))
            }
        };
        if rejected.is_some() {
            self.shared.discarded.fetch_add(1, Ordering::Relaxed);
            log::debug!(target: "msgr::dispatch", "{}: message refused (shutdown or marked down)", self.shared.name);
        }
        drop(rejected);
    }

    /// The receive path for a message read by `conn`'s worker, in arrival order:
    /// preprocess, fast dispatch on this thread if wanted (releasing `budget` when the
    /// dispatcher returns), else [`enqueue`](Self::enqueue) it with its budget.
    pub fn deliver(&self, conn: &C, msg: Message, budget: Option<Permit>) -> Delivery {
        // One snapshot for both walks: a dispatcher added meanwhile sees neither.
        let fast = self.shared.dispatchers.fast();
        for d in fast.iter() {
            d.ms_fast_preprocess(conn, &msg);
        }
        match fast.iter().find(|d| d.ms_can_fast_dispatch(&msg)) {
            Some(d) => {
                d.ms_fast_dispatch(conn, msg);
                drop(budget);
                self.shared.fast_dispatched.fetch_add(1, Ordering::Relaxed);
                Delivery::Fast
            }
            None => {
                self.enqueue(conn, msg, budget);
                Delivery::Queued
            }
        }
    }

    /// Queues a connection event; for `Connect`/`Accept`, first calls the fast hooks on
    /// this thread. Ignored after shutdown began.
    pub fn enqueue_event(&self, item: QueueEvent<C>) {
        if !self.shared.state.lock().accepting() {
            return;
        }
        match &item {
            QueueEvent::Connect(c) => self.shared.dispatchers.handle_fast_connect(c),
            QueueEvent::Accept(c) => self.shared.dispatchers.handle_fast_accept(c),
            QueueEvent::Reset(_) | QueueEvent::RemoteReset(_) | QueueEvent::Refused(_) => {}
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

/// The `ms_dispatch` thread.
fn run<C: ConnectionRef>(s: &Shared<C>) {
    let mut spin = SpinPolicy::default();
    loop {
        match next_work(s, &mut spin) {
            Work::Exit => break,
            Work::Event(ev) => {
                deliver_event(s, ev);
                s.events_delivered.fetch_add(1, Ordering::Relaxed);
            }
            Work::Local(q) => {
                let Queued { conn, msg, budget, since } = q;
                s.dispatchers.fast_preprocess(&conn, &msg);
                match s.dispatchers.fast_dispatch(&conn, msg) {
                    None => {
                        s.fast_dispatched.fetch_add(1, Ordering::Relaxed);
                        drop(budget);
                    }
                    Some(msg) => requeue_local(s, Queued { conn, msg, budget, since }),
                }
            }
            Work::Message(q) => {
                let Queued { conn, msg, budget, .. } = q;
                if conn.is_marked_down() {
                    // Taken off the queue just before a mark_down's discard.
                    s.discarded.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match s.dispatchers.dispatch(&conn, msg) {
                    None => {
                        s.dispatched.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(m) => {
                        s.untaken.fetch_add(1, Ordering::Relaxed);
                        log::debug!(
                            target: "msgr::dispatch",
                            "{}: no dispatcher took message type {} from conn {}",
                            s.name,
                            m.msg_type(),
                            conn.conn_id()
                        );
                    }
                }
                // Ceph releases the dispatch throttle when ms_dispatch returns.
                drop(budget);
            }
        }
    }
    log::debug!(target: "msgr::dispatch", "{}: dispatch thread exits", s.name);
}

fn next_work<C: ConnectionRef>(s: &Shared<C>, policy: &mut SpinPolicy) -> Work<C> {
    let mut st = s.state.lock();
    let mut spun = false;
    loop {
        if st.phase == Phase::Stopping(ShutdownMode::Discard) {
            return Work::Exit;
        }
        if let Some(ev) = st.events.pop_front() {
            return Work::Event(ev);
        }
        if let Some(q) = st.local.pop_front() {
            return Work::Local(q);
        }
        if let Some(q) = st.messages.pop() {
            return Work::Message(q);
        }
        if matches!(st.phase, Phase::Stopping(_) | Phase::Stopped) {
            return Work::Exit;
        }
        if !spun {
            spun = true;
            let spin = Duration::from_nanos(s.idle_spin.load(Ordering::Relaxed));
            if !spin.is_zero() && policy.should_spin() {
                // Read under the lock: a push after it bumps it.
                let seen = s.arrivals.load(Ordering::Relaxed);
                let hit = MutexGuard::unlocked(&mut st, || idle_spin(s, seen, spin));
                policy.record(hit);
                continue;
            }
        }
        s.sleeps.fetch_add(1, Ordering::Relaxed);
        s.work.wait(&mut st);
    }
}

/// Spins until a push finds the queue idle (`arrivals` moves past `seen`: returns
/// true) or `spin` has passed (false). The clock is read once per [`SPIN_CHECKS`] looks.
fn idle_spin<C: ConnectionRef>(s: &Shared<C>, seen: u64, spin: Duration) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..SPIN_CHECKS {
            if s.arrivals.load(Ordering::Acquire) != seen {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return false;
        }
    }
}

/// Whether the dispatch thread spins the next time it runs dry: always while spins pay
/// off; after a spin that found nothing it sleeps at once the next 1, 2, 4 … (at most
/// [`MAX_SPIN_BACKOFF`]) times, and one spin that finds work ends the backoff. So a
/// load whose gaps outlast the spin (a request/reply at depth 1, a quiet daemon) spins
/// at most once per [`MAX_SPIN_BACKOFF`] idle moments.
#[derive(Debug, Default)]
struct SpinPolicy {
    /// Idle moments left to sleep through without spinning.
    skip: u32,
    /// The current backoff; 0 while spins pay off.
    backoff: u32,
}

/// The longest run of idle moments without a spin (see [`SpinPolicy`]).
const MAX_SPIN_BACKOFF: u32 = 64;

impl SpinPolicy {
    fn should_spin(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn record(&mut self, hit: bool) {
        if hit {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff.saturating_mul(2)).clamp(1, MAX_SPIN_BACKOFF);
            self.skip = self.backoff;
        }
    }
}

/// A local message no fast dispatcher wanted joins the priority queue (even while
/// draining: it was accepted before shutdown).
fn requeue_local<C: ConnectionRef>(s: &Shared<C>, q: Queued<C>) {
    let mut st = s.state.lock();
    if st.phase == Phase::Stopping(ShutdownMode::Discard) {
        drop(st);
        s.discarded.fetch_add(1, Ordering::Relaxed);
        drop(q);
        return;
    }
    let priority = q.msg.priority();
    let id = q.conn.conn_id();
    st.messages.push(priority, id, q);
}

fn deliver_event<C: ConnectionRef>(s: &Shared<C>, ev: QueueEvent<C>) {
    let d = &s.dispatchers;
    match ev {
        QueueEvent::Connect(c) => d.handle_connect(&c),
        QueueEvent::Accept(c) => d.handle_accept(&c),
        QueueEvent::Reset(c) => {
            if !d.handle_reset(&c) {
                log::debug!(target: "msgr::dispatch", "{}: reset of conn {} unhandled", s.name, c.conn_id());
            }
        }
        QueueEvent::RemoteReset(c) => d.handle_remote_reset(&c),
        QueueEvent::Refused(c) => {
            if !d.handle_refused(&c) {
                log::debug!(target: "msgr::dispatch", "{}: refusal of conn {} unhandled", s.name, c.conn_id());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed spins back off exponentially up to the cap; one hit ends the backoff.
    #[test]
    fn spin_policy_backs_off_on_misses_and_resets_on_a_hit() {
        let mut p = SpinPolicy::default();
        // Spins taken (true) and skipped (false) over a run of misses.
        let mut pattern = Vec::new();
        for _ in 0..20 {
            let spin = p.should_spin();
            pattern.push(spin);
            if spin {
                p.record(false);
            }
        }
        let spins: Vec<usize> =
            pattern.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect();
        assert_eq!(spins, [0, 2, 5, 10, 19]);
        let mut spins = 0;
        for _ in 0..1000 {
            if p.should_spin() {
                p.record(false);
                spins += 1;
            }
        }
        assert_eq!(p.backoff, MAX_SPIN_BACKOFF, "capped");
        assert!(spins <= 1000 / MAX_SPIN_BACKOFF as usize + 4, "{spins} spins in 1000");
        while !p.should_spin() {}
        p.record(true);
        assert!((0..10).all(|_| p.should_spin()), "a hit: spin every time again");
    }

    /// MESSAGE_OVERHEAD covers a queued message's entry (the message value included)
    /// with room for allocator slack.
    #[test]
    fn message_overhead_covers_a_queue_entry() {
        let entry = std::mem::size_of::<Queued<u64>>() as u64;
        assert!(entry + 64 <= protocol::message::MESSAGE_OVERHEAD, "entry is {entry} bytes");
    }
}
