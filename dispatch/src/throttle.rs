//! [`Throttle`]: Ceph's counting throttle, with RAII [`Permit`]s and worker wakeups.
//!
//! | Ceph (`common/Throttle.h`) | here |
//! |---|---|
//! | `get_or_fail(c)` | [`Throttle::try_acquire`] |
//! | `get(c)` (blocks) | [`Throttle::acquire`] (user threads only) |
//! | `take(c)` | [`Throttle::take`] |
//! | `put(c)` | dropping the [`Permit`] |
//! | `reset_max(m)` | [`Throttle::reset_max`] |
//! | `get_current()` / `get_max()` | [`Throttle::current`] / [`Throttle::max`] |
//! | AsyncConnection's 1 ms retry timer | [`Throttle::acquire_or_wait`]'s [`Waiting`] + waker |
//!
//! # Waiting
//! Waiters are served strictly in arrival order (FIFO), blocked threads and event-loop
//! workers alike, and while any of them waits [`Throttle::try_acquire`] fails (Ceph's
//! `get_or_fail` does the same), so a large request is never starved by small ones.
//! The next windows of messages in progress ([`InFlight`]) queue apart, in their own
//! arrival order, and the two queues do not hold each other up: a message in progress
//! that waits for a window too large for what is left does not stop new messages that
//! fit (it goes on at the latest as the oldest in progress, below), and new messages
//! waiting do not stop those in progress from completing and releasing ([`Throttle::try_acquire`]
//! fails only while new requests wait, [`InFlight::try_acquire`] only while windows
//! do). A release grants waiters from the head of each queue while they fit: the amount is
//! charged at once and handed to the waiter, a blocked thread wakes with it, a worker's
//! waker is called and the worker picks it up with [`Waiting::try_take`]. A worker
//! holds one [`Waiting`] per request, however often it is woken for other reasons, and
//! dropping it (its connection closed) cancels the wait and passes a grant it did not
//! pick up on to the next waiter. Every operation is O(log waiters), a release O(log
//! waiters) per request it grants.
//!
//! # Messages in progress
//! A message that arrives in several windows of budget holds what it received while it
//! waits for the next window. If such messages held all of the budget, none could
//! complete and nothing would be released. So a message that needs more than one
//! window registers as in progress ([`Throttle::begin_inflight`], with one [`Ticket`]
//! across all the throttles it uses), and the oldest one in progress is granted its
//! next window even beyond the maximum: it completes, is dispatched, and releases. Only
//! while what the messages in progress do not hold is within the maximum: a message
//! that went on so and is then kept (a policy's messages live until dropped) holds its
//! overshoot, and the next oldest waits for it to be given back rather than add its
//! own. So the overshoot is bounded by the remainder of one message. The throttle also keeps
//! what each message in progress holds (from registration, and every window taken
//! through its [`InFlight`]), and tells the oldest, while requests are queued, what all
//! of them hold ([`InFlight::held_while_others_wait`]): the messenger makes that
//! message progress in proportion, so that the privilege is not a way to keep everyone
//! waiting.
//!
//! Differences from Ceph, on purpose:
//! - a request larger than the maximum is admitted only when nothing at all is held
//!   (Ceph admits it whenever the count is not already above the maximum), so the
//!   overshoot is bounded by one oversize request;
//! - a worker never sleeps or polls: its waker is called when its request is granted;
//! - the oldest message in progress may exceed the maximum (see above); Ceph reserves a
//!   message's whole length when its header arrives, which lets a peer that announces
//!   a large message and stops sending hold the budget.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Called once, outside any lock, when a worker's request was granted.
pub type Waker = Box<dyn FnOnce() + Send>;

/// A counting limit on a shared resource (bytes or messages).
///
/// Amounts are charged by acquiring a [`Permit`] and returned when the permit is
/// dropped. A maximum of 0 means unlimited (everything is admitted, but still counted).
/// See the module docs for the waiting rules.
pub struct Throttle {
    name: String,
    state: Mutex<State>,
    /// Whether requests are queued, as of the last change under the lock: read without
    /// it by [`InFlight::held_while_others_wait`], which runs before every read of a
    /// message arriving in several windows.
    queued: AtomicBool,
}

struct State {
    /// Amount currently held by live permits and by grants not yet picked up.
    current: u64,
    /// 0 = unlimited.
    max: u64,
    /// Queued requests by id; ids grow, so this is arrival (FIFO) order. Bounded by the
    /// number of threads and connections waiting (each holds one request at a time).
    waiters: BTreeMap<u64, Waiter>,
    /// Queued next windows of messages in progress, by id (their own FIFO).
    windows: BTreeMap<u64, Waiter>,
    next_id: u64,
    /// Amounts granted to workers' [`Waiting`]s and not picked up yet, by request id
    /// (included in `current`), with the ticket of the message in progress they are for
    /// (included in its `held`).
    grants: HashMap<u64, (u64, Option<u64>)>,
    /// Messages in progress ([`Throttle::begin_inflight`]) by ticket, oldest first.
    inflight: BTreeMap<u64, Progress>,
    /// What the messages in progress hold, together (the sum of their `held`).
    inflight_held: u64,
    counters: ThrottleCounters,
}

/// A message in progress on one throttle.
#[derive(Default)]
struct Progress {
    /// The id of its queued request, if it waits.
    waiting: Option<u64>,
    /// What it holds of this throttle: what it held when it registered, plus what it
    /// was granted since.
    held: u64,
}

struct Waiter {
    need: u64,
    kind: WaiterKind,
    /// The ticket of the message in progress this request is for.
    ticket: Option<u64>,
}

enum WaiterKind {
    /// A user thread in `acquire`; the grant sets its flag and wakes it alone.
    Blocking(Arc<Blocked>),
    /// A worker; the grant is kept for its [`Waiting`] and the waker called.
    Wake(Waker),
}

/// A user thread blocked in [`Throttle::acquire`]: it sleeps on its own condvar (with
/// the state lock), as Ceph's `Throttle` keeps one per waiter, so that a grant wakes the
/// threads it grants and no other.
#[derive(Default)]
struct Blocked {
    /// Set, under the state lock, when the request was granted.
    granted: AtomicBool,
    wake: Condvar,
}

/// Snapshot of a throttle's counters, named as Ceph's throttle perf counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleCounters {
    /// Amount currently held (`val`).
    pub val: u64,
    /// The maximum (`max`); 0 = unlimited.
    pub max: u64,
    /// Successful gets, blocking or not (`get`).
    pub get: u64,
    /// Sum of the amounts got (`get_sum`).
    pub get_sum: u64,
    /// Failed non-blocking gets (`get_or_fail_fail`).
    pub get_or_fail_fail: u64,
    /// Successful non-blocking gets (`get_or_fail_success`).
    pub get_or_fail_success: u64,
    /// Takes, i.e. charges without waiting (`take`).
    pub take: u64,
    /// Sum of the amounts taken (`take_sum`).
    pub take_sum: u64,
    /// Releases (`put`).
    pub put: u64,
    /// Sum of the amounts released (`put_sum`).
    pub put_sum: u64,
    /// Times a caller had to wait: blocked in `acquire` or queued a worker's request (`wait`).
    pub wait: u64,
    /// Total time blocked in `acquire` (Ceph's `wait` is this as an average).
    pub wait_time: Duration,
    /// Grants beyond the maximum to the oldest message in progress (ours).
    pub inflight_overshoot: u64,
}

/// Orders messages in progress across every throttle they use (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

impl Ticket {
    /// A ticket younger than every ticket handed out before.
    pub fn next() -> Ticket {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Ticket(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl State {
    /// Ceph's `_should_wait`, except that an oversize request waits until nothing is held.
    fn should_wait(&self, n: u64) -> bool {
        if self.max == 0 {
            return false;
        }
        if n > self.max {
            self.current > 0
        } else {
            self.current.saturating_add(n) > self.max
        }
    }

    /// A get that never waits (Ceph's `get_or_fail`): charges `n` unless `queued` (a
    /// request it must not pass waits) or it does not fit; counted either way.
    fn try_charge(&mut self, n: u64, queued: bool) -> bool {
        if queued || self.should_wait(n) {
            self.counters.get_or_fail_fail += 1;
            return false;
        }
        self.charge(n);
        self.counters.get_or_fail_success += 1;
        true
    }

    fn charge(&mut self, n: u64) {
        self.current = self.current.saturating_add(n);
        self.counters.get += 1;
        self.counters.get_sum = self.counters.get_sum.saturating_add(n);
    }

    fn queue(&mut self, need: u64, kind: WaiterKind, ticket: Option<u64>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let waiter = Waiter { need, kind, ticket };
        if let Some(t) = ticket.and_then(|t| self.inflight.get_mut(&t)) {
            t.waiting = Some(id);
            self.windows.insert(id, waiter);
        } else {
            self.waiters.insert(id, waiter);
        }
        self.counters.wait += 1;
        id
    }

    /// Whether the oldest message in progress may be granted beyond the maximum: only
    /// while what the messages in progress do not hold (messages handed on and kept,
    /// queued ones, first windows) is within the maximum. Past it, an earlier
    /// message's overshoot is still held (its dispatcher keeps it): the oldest waits for
    /// that to be given back, as any request does, instead of adding its own. Without
    /// this, a chain of messages in progress, each the oldest in turn, went through
    /// while a dispatcher kept them all, and a policy's byte cap of 64 KiB held 6 MiB.
    fn progress_may_overshoot(&self) -> bool {
        self.current.saturating_sub(self.inflight_held) <= self.max
    }

    /// Whether requests are queued (in either queue).
    fn anyone_waits(&self) -> bool {
        !self.waiters.is_empty() || !self.windows.is_empty()
    }

    /// Takes the queued request `id` out of its queue.
    fn unqueue(&mut self, id: u64) -> Option<Waiter> {
        self.waiters.remove(&id).or_else(|| self.windows.remove(&id))
    }

    /// Grants the queued request `id` (already removed from its queue).
    fn grant(&mut self, id: u64, w: Waiter, out: &mut Served) {
        self.charge(w.need);
        if let Some(t) = w.ticket {
            self.hold(t, w.need);
        }
        match w.kind {
            WaiterKind::Blocking(blocked) => {
                blocked.granted.store(true, Ordering::Release);
                out.blocking.push(blocked);
            }
            WaiterKind::Wake(waker) => {
                self.grants.insert(id, (w.need, w.ticket));
                out.wakers.push(waker);
            }
        }
    }

    /// The message in progress `ticket` was granted `n` (and waits no more).
    fn hold(&mut self, ticket: u64, n: u64) {
        if let Some(t) = self.inflight.get_mut(&ticket) {
            t.waiting = None;
            t.held = t.held.saturating_add(n);
            self.inflight_held = self.inflight_held.saturating_add(n);
        }
    }

    /// After a release, a raised maximum or a cancelled request: grants queued requests
    /// from the head of each queue while they fit, then the oldest message in progress
    /// if it waits.
    fn serve(&mut self) -> Served {
        let mut out = Served::default();
        loop {
            let mut granted = false;
            for windows in [false, true] {
                let queue = if windows { &self.windows } else { &self.waiters };
                let Some((id, need)) = queue.first_key_value().map(|(&id, w)| (id, w.need)) else {
                    continue;
                };
                if self.should_wait(need) {
                    continue;
                }
                if let Some(w) = self.unqueue(id) {
                    self.grant(id, w, &mut out);
                    granted = true;
                }
            }
            if !granted {
                break;
            }
        }
        if let Some(id) = self.inflight.first_key_value().and_then(|(_, p)| p.waiting) {
            let need = self.windows.get(&id).map(|w| w.need);
            let over = need.is_some_and(|need| self.should_wait(need));
            if !over || self.progress_may_overshoot() {
                if let Some(w) = self.unqueue(id) {
                    if over {
                        self.counters.inflight_overshoot += 1;
                    }
                    self.grant(id, w, &mut out);
                }
            }
        }
        out
    }
}

/// What [`State::serve`] granted: wakers to call and blocked threads to wake.
#[derive(Default)]
struct Served {
    wakers: Vec<Waker>,
    blocking: Vec<Arc<Blocked>>,
}

impl Throttle {
    /// A throttle called `name` (for logs) with maximum `max` (0 = unlimited).
    pub fn new(name: &str, max: u64) -> Arc<Self> {
        Arc::new(Throttle {
            name: name.to_owned(),
            state: Mutex::new(State {
                current: 0,
                max,
                waiters: BTreeMap::new(),
                windows: BTreeMap::new(),
                next_id: 0,
                grants: HashMap::new(),
                inflight: BTreeMap::new(),
                inflight_held: 0,
                counters: ThrottleCounters::default(),
            }),
            queued: AtomicBool::new(false),
        })
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes `n` if it fits now and nobody is queued; never waits.
    #[doc(alias = "get_or_fail")]
    pub fn try_acquire(self: &Arc<Self>, n: u64) -> Option<Permit> {
        let mut st = self.state.lock();
        let queued = !st.waiters.is_empty();
        st.try_charge(n, queued).then(|| self.permit(n))
    }

    /// Takes up to `n`, and no more than a `share`th of the maximum (all `n` when
    /// unlimited), if that much fits now and nobody is queued; never waits. For budget
    /// taken ahead of need, so that one holder cannot take the whole throttle.
    // Inline: the messenger takes one per read at depth 1 with a constant `share`, and
    // the division by it was a `div` (and the call's frame) on every read.
    #[inline]
    pub fn try_acquire_share(self: &Arc<Self>, n: u64, share: u64) -> Option<Permit> {
        let mut st = self.state.lock();
        let n = if st.max == 0 { n } else { n.min(st.max / share.max(1)) };
        let queued = n == 0 || !st.waiters.is_empty();
        st.try_charge(n, queued).then(|| self.permit(n))
    }

    /// Takes `n` now if it fits and nobody is queued; otherwise queues the request and
    /// returns its [`Waiting`].
    ///
    /// This is the worker path: `waker` is called once, on the granting thread and
    /// outside any lock, when the request is granted; the worker then picks the permit
    /// up with [`Waiting::try_take`]. It should post to the worker rather than do work
    /// itself. Dropping the `Waiting` cancels the request (a grant not picked up goes to
    /// the next waiter). On immediate success the waker is dropped uncalled.
    pub fn acquire_or_wait(self: &Arc<Self>, n: u64, waker: Waker) -> Result<Permit, Waiting> {
        self.acquire_or_queue(n, waker, None)
    }

    fn acquire_or_queue(
        self: &Arc<Self>,
        n: u64,
        waker: Waker,
        ticket: Option<u64>,
    ) -> Result<Permit, Waiting> {
        let mut st = self.state.lock();
        let oldest = ticket.is_some() && st.inflight.first_key_value().map(|(t, _)| *t) == ticket;
        // A window waits only behind windows; a new request only behind new requests.
        let queue = if ticket.is_some() { &st.windows } else { &st.waiters };
        let fits = !st.should_wait(n) && queue.is_empty();
        if fits || (oldest && (!st.should_wait(n) || st.progress_may_overshoot())) {
            if !fits && st.should_wait(n) {
                st.counters.inflight_overshoot += 1;
            }
            st.charge(n);
            if let Some(t) = ticket {
                st.hold(t, n);
            }
            return Ok(self.permit(n));
        }
        let id = st.queue(n, WaiterKind::Wake(waker), ticket);
        self.queued.store(true, Ordering::Relaxed);
        let current = st.current;
        // Logged after the lock: a logger's write is a syscall.
        drop(st);
        log::trace!(target: "msgr::throttle", "{}: worker waits for {n} (current {current})", self.name);
        Err(Waiting { throttle: Arc::clone(self), id: Some(id) })
    }

    /// Takes `n`, blocking the calling thread until it is granted.
    ///
    /// For user threads only: never call this from an event-loop worker or from a
    /// dispatcher (the dispatch thread is what releases the dispatch throttle).
    #[doc(alias = "get")]
    pub fn acquire(self: &Arc<Self>, n: u64) -> Permit {
        let mut st = self.state.lock();
        if !st.should_wait(n) && st.waiters.is_empty() {
            st.charge(n);
            return self.permit(n);
        }
        // Logged before the lock is taken again to queue (a logger's write is a
        // syscall); `current` is as of this check.
        let current = st.current;
        drop(st);
        log::debug!(target: "msgr::throttle", "{}: blocking for {n} (current {current})", self.name);
        let mut st = self.state.lock();
        if !st.should_wait(n) && st.waiters.is_empty() {
            st.charge(n);
            return self.permit(n);
        }
        let blocked = Arc::new(Blocked::default());
        st.queue(n, WaiterKind::Blocking(Arc::clone(&blocked)), None);
        self.queued.store(true, Ordering::Relaxed);
        let started = Instant::now();
        while !blocked.granted.load(Ordering::Acquire) {
            blocked.wake.wait(&mut st);
        }
        st.counters.wait_time += started.elapsed();
        // The granting thread already charged `n` and counted the get.
        self.permit(n)
    }

    /// Charges `n` without waiting, even beyond the maximum.
    pub fn take(self: &Arc<Self>, n: u64) -> Permit {
        let mut st = self.state.lock();
        st.current = st.current.saturating_add(n);
        st.counters.take += 1;
        st.counters.take_sum = st.counters.take_sum.saturating_add(n);
        self.permit(n)
    }

    /// Registers a message in progress with `ticket` (the same ticket on every throttle
    /// the message uses), holding `held` of this throttle already: while it is the
    /// oldest registered, its requests through [`InFlight::acquire_or_wait`] are always
    /// granted. Drop the [`InFlight`] when the message completes or is abandoned.
    pub fn begin_inflight(self: &Arc<Self>, ticket: Ticket, held: u64) -> InFlight {
        let served = {
            let mut st = self.state.lock();
            if let Some(old) = st.inflight.insert(ticket.0, Progress { waiting: None, held }) {
                st.inflight_held = st.inflight_held.saturating_sub(old.held);
            }
            st.inflight_held = st.inflight_held.saturating_add(held);
            // What it holds now counts as in progress: that may bring what is not in
            // progress back within the maximum, and the oldest waiting one goes on.
            st.anyone_waits().then(|| self.serve(&mut st))
        };
        if let Some(served) = served {
            self.finish_serving(served);
        }
        InFlight { throttle: Arc::clone(self), ticket: ticket.0 }
    }

    /// Changes the maximum (0 = unlimited) and serves waiters that now fit.
    pub fn reset_max(&self, max: u64) {
        let served = {
            let mut st = self.state.lock();
            st.max = max;
            self.serve(&mut st)
        };
        self.finish_serving(served);
    }

    /// Amount currently held.
    #[doc(alias = "get_current")]
    pub fn current(&self) -> u64 {
        self.state.lock().current
    }

    /// The maximum; 0 = unlimited.
    #[doc(alias = "get_max")]
    pub fn max(&self) -> u64 {
        self.state.lock().max
    }

    /// Whether requests are queued, without taking the lock (as of the last change).
    pub fn has_waiters(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    /// Number of queued requests (blocked threads and waiting workers) not yet granted.
    pub fn waiting(&self) -> usize {
        let st = self.state.lock();
        st.waiters.len() + st.windows.len()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ThrottleCounters {
        let st = self.state.lock();
        ThrottleCounters { val: st.current, max: st.max, ..st.counters }
    }

    fn permit(self: &Arc<Self>, amount: u64) -> Permit {
        Permit { throttle: Arc::clone(self), amount }
    }

    /// [`State::serve`], keeping [`Throttle::queued`] up to date.
    fn serve(&self, st: &mut State) -> Served {
        let served = st.serve();
        self.queued.store(st.anyone_waits(), Ordering::Relaxed);
        served
    }

    /// Wakes what `serve` granted; called without the lock.
    fn finish_serving(&self, served: Served) {
        for b in served.blocking {
            b.wake.notify_one();
        }
        for w in served.wakers {
            w();
        }
    }

    /// Ceph's `put`: returns `n` and serves waiters; wakers run after the lock is released.
    // Out of line: `Permit::drop` inlines up to its "nothing held" test and calls this.
    #[inline(never)]
    fn release(&self, n: u64) {
        let served = {
            let mut st = self.state.lock();
            st.current = st.current.saturating_sub(n);
            st.counters.put += 1;
            st.counters.put_sum = st.counters.put_sum.saturating_add(n);
            if !st.anyone_waits() {
                return;
            }
            self.serve(&mut st)
        };
        self.finish_serving(served);
    }

    /// Cancels request `id`: unqueues it, or returns its grant if it was not picked up.
    fn cancel(&self, id: u64) {
        let (served, waker) = {
            let mut st = self.state.lock();
            let mut waker = None;
            if let Some(w) = st.unqueue(id) {
                if let Some(t) = w.ticket.and_then(|t| st.inflight.get_mut(&t)) {
                    t.waiting = None;
                }
                // Dropped below, outside the lock: a waker may own anything.
                if let WaiterKind::Wake(k) = w.kind {
                    waker = Some(k);
                }
            } else if let Some((amount, ticket)) = st.grants.remove(&id) {
                // Its message keeps its registration: what it holds goes down again.
                if let Some(t) = ticket.and_then(|t| st.inflight.get_mut(&t)) {
                    t.held = t.held.saturating_sub(amount);
                    st.inflight_held = st.inflight_held.saturating_sub(amount);
                }
                st.current = st.current.saturating_sub(amount);
                st.counters.put += 1;
                st.counters.put_sum = st.counters.put_sum.saturating_add(amount);
            }
            (self.serve(&mut st), waker)
        };
        drop(waker);
        self.finish_serving(served);
    }
}

impl fmt::Debug for Throttle {
    /// Copies what it shows out of the state first: the formatter writes to the caller's
    /// sink (any code), never with the lock held.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (current, max, waiting, inflight) = {
            let st = self.state.lock();
            (st.current, st.max, st.waiters.len() + st.windows.len(), st.inflight.len())
        };
        f.debug_struct("Throttle")
            .field("name", &self.name)
            .field("current", &current)
            .field("max", &max)
            .field("waiting", &waiting)
            .field("inflight", &inflight)
            .finish()
    }
}

/// A worker's queued request ([`Throttle::acquire_or_wait`]). Dropping it cancels the
/// request; a grant not picked up yet goes back to the throttle.
#[must_use = "dropping a Waiting cancels the request"]
pub struct Waiting {
    throttle: Arc<Throttle>,
    /// `None` once the grant was picked up.
    id: Option<u64>,
}

impl Waiting {
    /// The permit, if the request was granted (the waker has been or is being called);
    /// otherwise the request stays queued and comes back.
    pub fn try_take(mut self) -> Result<Permit, Waiting> {
        let Some(id) = self.id else { return Err(self) };
        let amount = self.throttle.state.lock().grants.remove(&id);
        match amount {
            Some((amount, _)) => {
                self.id = None;
                Ok(self.throttle.permit(amount))
            }
            None => Err(self),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.throttle.cancel(id);
        }
    }
}

impl fmt::Debug for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiting")
            .field("throttle", &self.throttle.name)
            .field("id", &self.id)
            .finish()
    }
}

/// A message in progress on one throttle ([`Throttle::begin_inflight`]).
#[must_use = "dropping an InFlight ends the registration"]
pub struct InFlight {
    throttle: Arc<Throttle>,
    ticket: u64,
}

impl InFlight {
    /// [`Throttle::try_acquire`] for this message: what it takes counts as held by it
    /// ([`InFlight::held_while_others_wait`]); only other windows queued before stop it.
    pub fn try_acquire(&self, n: u64) -> Option<Permit> {
        let mut st = self.throttle.state.lock();
        let queued = !st.windows.is_empty();
        if !st.try_charge(n, queued) {
            return None;
        }
        st.hold(self.ticket, n);
        Some(self.throttle.permit(n))
    }

    /// Like [`Throttle::acquire_or_wait`], except that the request is granted at once,
    /// even beyond the maximum, while this is the oldest message in progress on the
    /// throttle, and that a queued request is granted as soon as it becomes the oldest.
    pub fn acquire_or_wait(&self, n: u64, waker: Waker) -> Result<Permit, Waiting> {
        self.throttle.acquire_or_queue(n, waker, Some(self.ticket))
    }

    /// The throttle this registration is on.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// What all messages in progress hold of the throttle, if this one is the oldest
    /// and requests are queued (the queue waits for it to complete); else 0. The
    /// messenger makes such a message progress in proportion, so that holding budget
    /// others wait for costs its peer bandwidth.
    pub fn held_while_others_wait(&self) -> u64 {
        if !self.throttle.queued.load(Ordering::Relaxed) {
            return 0;
        }
        let st = self.throttle.state.lock();
        let oldest = st.inflight.first_key_value().is_some_and(|(t, _)| *t == self.ticket);
        if oldest && st.anyone_waits() {
            st.inflight_held
        } else {
            0
        }
    }

    /// Whether requests are queued while the messages in progress together hold all of
    /// the throttle (its maximum or more): only then do the queued requests wait for
    /// messages in progress, which free what they hold by completing or being
    /// abandoned. While anything else holds part of it (what was handed on and is kept),
    /// they wait for that too, and making the messages in progress hurry would not let
    /// them in. Never for an unlimited throttle.
    pub fn progress_holds_all_while_others_wait(&self) -> bool {
        if !self.throttle.queued.load(Ordering::Relaxed) {
            return false;
        }
        let st = self.throttle.state.lock();
        st.max > 0 && st.anyone_waits() && st.inflight_held >= st.max
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let served = {
            let mut st = self.throttle.state.lock();
            if let Some(p) = st.inflight.remove(&self.ticket) {
                st.inflight_held = st.inflight_held.saturating_sub(p.held);
            }
            if !st.anyone_waits() {
                return;
            }
            // The next oldest may be waiting: it goes on now.
            self.throttle.serve(&mut st)
        };
        self.throttle.finish_serving(served);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("throttle", &self.throttle.name)
            .field("ticket", &self.ticket)
            .finish()
    }
}

/// An amount held on a [`Throttle`]; dropping it releases the amount (Ceph's `put`).
#[must_use = "dropping a Permit releases it at once"]
pub struct Permit {
    throttle: Arc<Throttle>,
    amount: u64,
}

impl Permit {
    /// The amount this permit holds.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The throttle this permit is charged to.
    pub fn throttle(&self) -> &Arc<Throttle> {
        &self.throttle
    }

    /// Moves `other`'s amount into this permit. Fails (giving `other` back) if the two
    /// belong to different throttles.
    pub fn merge(&mut self, mut other: Permit) -> Result<(), Permit> {
        if !Arc::ptr_eq(&self.throttle, &other.throttle) {
            return Err(other);
        }
        self.amount = self.amount.saturating_add(other.amount);
        other.amount = 0;
        Ok(())
    }

    /// Splits off a permit for `n` (at most this permit's amount), leaving the rest here.
    pub fn split(&mut self, n: u64) -> Permit {
        let n = n.min(self.amount);
        self.amount -= n;
        Permit { throttle: Arc::clone(&self.throttle), amount: n }
    }

    /// Makes this permit hold exactly `n`: the surplus is released, a shortfall is
    /// charged with [`Throttle::take`] (without waiting).
    pub fn settle(&mut self, n: u64) {
        if n < self.amount {
            drop(self.split(self.amount - n));
        } else if n > self.amount {
            let more = self.throttle.take(n - self.amount);
            let _ = self.merge(more);
        }
    }
}

impl Drop for Permit {
    // Inline up to the test: a permit emptied by a split or a merge releases nothing,
    // and one that holds an amount makes one call (`release`) where it made two.
    #[inline]
    fn drop(&mut self) {
        if self.amount > 0 {
            self.throttle.release(self.amount);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("throttle", &self.throttle.name)
            .field("amount", &self.amount)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    // `Debug` writes to the caller's sink with the state unlocked: a sink that takes the
    // throttle's lock (any code may) would otherwise deadlock.
    #[test]
    fn debug_writes_with_the_lock_free() {
        struct Sink<'a>(&'a Throttle, String);
        impl fmt::Write for Sink<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                assert!(self.0.state.try_lock().is_some(), "state locked while writing");
                self.1.push_str(s);
                Ok(())
            }
        }
        let t = Throttle::new("t", 10);
        let _p = t.try_acquire(4).expect("fits");
        let mut sink = Sink(&t, String::new());
        fmt::write(&mut sink, format_args!("{t:?}")).expect("formats");
        assert_eq!(
            sink.1,
            r#"Throttle { name: "t", current: 4, max: 10, waiting: 0, inflight: 0 }"#
        );
    }

    #[test]
    fn accounting_follows_permits() {
        let t = Throttle::new("t", 10);
        let a = t.try_acquire(4).expect("fits");
        let b = t.try_acquire(6).expect("fits");
        assert!(t.try_acquire(1).is_none());
        assert_eq!(t.current(), 10);
        drop(a);
        assert_eq!(t.current(), 6);
        let c = t.take(20);
        assert_eq!(t.current(), 26);
        drop((b, c));
        let k = t.counters();
        assert_eq!((k.val, k.get, k.get_sum, k.take, k.take_sum), (0, 2, 10, 1, 20));
        assert_eq!((k.put, k.put_sum, k.get_or_fail_fail, k.get_or_fail_success), (3, 30, 1, 2));
    }

    #[test]
    fn unlimited_admits_everything() {
        let t = Throttle::new("t", 0);
        let p = t.try_acquire(u64::MAX / 2).expect("unlimited");
        let q = t.try_acquire(u64::MAX / 2).expect("unlimited");
        assert_eq!(t.current(), (u64::MAX / 2) * 2);
        drop((p, q));
        assert_eq!(t.current(), 0);
    }

    /// Ceph's "except for large c": an oversize request is not refused forever.
    #[test]
    fn oversize_admitted_only_when_idle() {
        let t = Throttle::new("t", 10);
        let small = t.try_acquire(1).expect("fits");
        assert!(t.try_acquire(11).is_none());
        drop(small);
        let big = t.try_acquire(11).expect("idle: oversize admitted");
        assert_eq!(t.current(), 11);
        assert!(t.try_acquire(1).is_none());
        drop(big);
        assert_eq!(t.current(), 0);
    }

    #[test]
    fn split_and_merge_keep_the_total() {
        let t = Throttle::new("t", 100);
        let mut p = t.try_acquire(10).expect("fits");
        let q = p.split(4);
        assert_eq!((p.amount(), q.amount()), (6, 4));
        drop(q);
        assert_eq!(t.current(), 6);
        let r = t.try_acquire(5).expect("fits");
        p.merge(r).expect("same throttle");
        assert_eq!(p.amount(), 11);
        let other = Throttle::new("u", 100);
        let s = other.try_acquire(1).expect("fits");
        let s = p.merge(s).expect_err("different throttle");
        drop((p, s));
        assert_eq!((t.current(), other.current()), (0, 0));
    }

    #[test]
    fn waker_runs_once_when_the_request_is_granted() {
        let t = Throttle::new("t", 10);
        let held = t.try_acquire(8).expect("fits");
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        let waiting = t
            .acquire_or_wait(5, Box::new(move || tx2.send(()).expect("rx alive")))
            .expect_err("does not fit");
        assert!(rx.try_recv().is_err());
        let waiting = waiting.try_take().expect_err("not granted yet");
        let mut held = held;
        drop(held.split(2)); // 6 held: 5 still does not fit
        assert!(rx.try_recv().is_err());
        drop(held);
        assert!(rx.try_recv().is_ok());
        // Granted: charged already, handed over by try_take.
        assert_eq!(t.current(), 5);
        let p = waiting.try_take().expect("granted");
        assert_eq!(p.amount(), 5);
        drop(p);
        assert!(rx.try_recv().is_err());
        assert_eq!((t.waiting(), t.current()), (0, 0));
        drop(tx);
    }

    #[test]
    fn a_cancelled_grant_goes_to_the_next_waiter() {
        let t = Throttle::new("t", 10);
        let held = t.try_acquire(10).expect("fits");
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        let first =
            t.acquire_or_wait(6, Box::new(move || tx.send(1).expect("rx"))).expect_err("full");
        let second =
            t.acquire_or_wait(6, Box::new(move || tx2.send(2).expect("rx"))).expect_err("full");
        drop(held);
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(rx.try_recv().is_err(), "6 + 6 do not fit");
        // The first worker's connection closed before it picked its grant up.
        drop(first);
        assert_eq!(rx.try_recv(), Ok(2));
        let p = second.try_take().expect("granted");
        assert_eq!(t.current(), 6);
        drop(p);
        assert_eq!(t.current(), 0);
    }

    #[test]
    fn fifo_a_queued_large_request_is_not_overtaken() {
        let t = Throttle::new("t", 10);
        let held = t.try_acquire(5).expect("fits");
        let big = t.acquire_or_wait(8, Box::new(|| {})).expect_err("does not fit");
        // 5 would fit, but someone is queued.
        assert!(t.try_acquire(5).is_none());
        drop(held);
        let big = big.try_take().expect("granted first");
        assert_eq!(big.amount(), 8);
    }

    // A window granted to a waiting message in progress and given up before it was
    // picked up (its connection closed) goes back, and no longer counts as held.
    #[test]
    fn a_window_given_up_after_its_grant_is_not_held() {
        let t = Throttle::new("t", 10);
        let (a, b) = (Ticket::next(), Ticket::next());
        let (ia, ib) = (t.begin_inflight(a, 0), t.begin_inflight(b, 0));
        let pa = ia.try_acquire(8).expect("fits");
        let wb = ib.acquire_or_wait(4, Box::new(|| {})).expect_err("b waits");
        drop(pa);
        assert_eq!(t.state.lock().inflight_held, 8 + 4, "a's 8 (a still registered), b's 4");
        drop(wb);
        assert_eq!(t.current(), 0);
        assert_eq!(t.state.lock().inflight_held, 8, "b's grant went back");
        drop((ia, ib));
        assert_eq!(t.state.lock().inflight_held, 0);
    }

    // The next windows of messages in progress queue apart from new requests: a window
    // too large for what is left does not hold up a new request that fits, a new
    // request waiting does not hold up a window that fits, and windows keep their own
    // order.
    #[test]
    fn windows_and_new_requests_queue_apart() {
        let t = Throttle::new("t", 10);
        let (a, b, c) = (Ticket::next(), Ticket::next(), Ticket::next());
        let (ia, ib, ic) = (t.begin_inflight(a, 0), t.begin_inflight(b, 0), t.begin_inflight(c, 0));
        let pa = ia.try_acquire(1).expect("fits");
        let pb = ib.try_acquire(5).expect("fits");
        // b (not the oldest) wants 6 more: 12 > 10, it waits.
        let wb = ib.acquire_or_wait(6, Box::new(|| {})).expect_err("b waits");
        let new = t.try_acquire(3).expect("a new request passes a waiting window");
        assert!(ic.try_acquire(1).is_none(), "c's window queues behind b's");
        // A new request that does not fit (13 > 10) waits; b gives up its window.
        let (tx, rx) = unbounded();
        let big = t
            .acquire_or_wait(4, Box::new(move || tx.send(()).expect("rx")))
            .expect_err("does not fit");
        drop(wb);
        assert!(t.try_acquire(1).is_none(), "a new request queues behind the new one");
        let more_b = ib.try_acquire(1).expect("a window passes a waiting new request");
        assert_eq!(t.current(), 10);
        drop((pb, more_b));
        rx.recv_timeout(Duration::from_secs(5)).expect("the new one granted");
        assert_eq!(big.try_take().expect("granted").amount(), 4);
        drop((pa, new, ia, ib, ic));
    }

    // What the messages in progress hold (from registration, and every window granted
    // since: taken, at once or after a wait) is reported to the oldest of them only, and only
    // while requests wait; a message that ends takes its share along.
    #[test]
    fn the_oldest_message_in_progress_learns_what_all_hold_while_others_wait() {
        let t = Throttle::new("t", 10);
        let (a, b) = (Ticket::next(), Ticket::next());
        let first_a = t.try_acquire(2).expect("a's first window");
        let ia = t.begin_inflight(a, 2);
        let ib = t.begin_inflight(b, 1);
        let pb = ib.try_acquire(3).expect("fits");
        assert_eq!((ia.held_while_others_wait(), ib.held_while_others_wait()), (0, 0));
        // Full (2 + 3 + a's 5): a newcomer waits, and so does b's next window.
        let pa = ia.acquire_or_wait(5, Box::new(|| {})).expect("fits");
        let newcomer = t.acquire_or_wait(8, Box::new(|| {})).expect_err("full");
        assert_eq!(ia.held_while_others_wait(), 2 + 5 + 1 + 3);
        assert_eq!(ib.held_while_others_wait(), 0, "not the oldest");
        let (tx, rx) = unbounded();
        let wb =
            ib.acquire_or_wait(4, Box::new(move || tx.send(()).expect("rx"))).expect_err("b waits");
        assert_eq!(ia.held_while_others_wait(), 11, "a queued request is not held yet");
        // a ends: b is the oldest, is granted its window beyond the maximum, and holds
        // what it registered with and both windows.
        drop((ia, first_a, pa));
        rx.recv_timeout(Duration::from_secs(5)).expect("b granted as the oldest");
        let more_b = wb.try_take().expect("granted");
        assert_eq!(ib.held_while_others_wait(), 1 + 3 + 4, "the newcomer still waits");
        drop((pb, more_b));
        let newcomer = newcomer.try_take().expect("granted once b released");
        assert_eq!(ib.held_while_others_wait(), 0, "nobody waits");
        drop((newcomer, ib));
        assert_eq!(t.state.lock().inflight_held, 0);
    }

    // A message-count throttle whose messages in progress register with their one
    // count: queued requests wait on them only while they hold the whole maximum, not
    // while something handed on (a kept message) holds part of it.
    #[test]
    fn queued_requests_wait_on_progress_only_while_it_holds_the_maximum() {
        let t = Throttle::new("t", 2);
        let kept = t.try_acquire(1).expect("a kept message's count");
        let count_a = t.try_acquire(1).expect("a's count");
        let ia = t.begin_inflight(Ticket::next(), 1);
        assert!(!ia.progress_holds_all_while_others_wait(), "nobody waits");
        let newcomer = t.acquire_or_wait(1, Box::new(|| {})).expect_err("full");
        assert!(!ia.progress_holds_all_while_others_wait(), "the kept message holds one");
        // The kept one goes, and b takes its count while the newcomer waits (taken as
        // a grant the newcomer has not picked up: still full, nobody queued).
        drop(kept);
        let newcomer = newcomer.try_take().expect("granted");
        let waits = t.acquire_or_wait(1, Box::new(|| {})).expect_err("full again");
        assert!(!ia.progress_holds_all_while_others_wait(), "the newcomer holds one");
        drop(newcomer);
        let count_b = waits.try_take().expect("granted");
        let ib = t.begin_inflight(Ticket::next(), 1);
        let last = t.acquire_or_wait(1, Box::new(|| {})).expect_err("full");
        assert!(ia.progress_holds_all_while_others_wait(), "both counts in progress");
        assert!(ib.progress_holds_all_while_others_wait(), "asked by any of them");
        drop((ib, count_b));
        assert!(!ia.progress_holds_all_while_others_wait(), "b's count went to the last");
        drop((last, ia, count_a));
        assert!(!Throttle::new("u", 0)
            .begin_inflight(Ticket::next(), 5)
            .progress_holds_all_while_others_wait());
    }

    // The oldest message in progress always gets its next window, so messages that hold
    // all of the budget while waiting for more cannot deadlock.
    #[test]
    fn the_oldest_message_in_progress_always_goes_on() {
        let t = Throttle::new("t", 10);
        let (a, b) = (Ticket::next(), Ticket::next());
        let ia = t.begin_inflight(a, 0);
        let ib = t.begin_inflight(b, 0);
        let pa = ia.acquire_or_wait(5, Box::new(|| {})).expect("fits");
        let pb = ib.acquire_or_wait(5, Box::new(|| {})).expect("fits");
        // Full, and both want more: b waits, a (the oldest) overshoots.
        let (tx, rx) = unbounded();
        let wb =
            ib.acquire_or_wait(5, Box::new(move || tx.send(()).expect("rx"))).expect_err("b waits");
        let more_a = ia.acquire_or_wait(5, Box::new(|| {})).expect("the oldest goes on");
        assert_eq!(t.current(), 15);
        assert_eq!(t.counters().inflight_overshoot, 1);
        // a completes (its permits go with the message); b is now the oldest and is
        // granted at once, beyond the maximum.
        drop(ia);
        rx.recv_timeout(Duration::from_secs(5)).expect("b granted as the oldest");
        let more_b = wb.try_take().expect("granted");
        assert_eq!(t.current(), 20);
        drop((pa, more_a, pb, more_b, ib));
        assert_eq!((t.current(), t.waiting()), (0, 0));
    }

    // A message in progress granted beyond the maximum and then kept (handed on, its
    // registration ended) holds that overshoot: the next oldest waits for it to be given
    // back instead of adding its own, so what is held past the maximum is one message's.
    #[test]
    fn a_kept_overshoot_is_not_followed_by_another() {
        let t = Throttle::new("t", 10);
        let (a, b) = (Ticket::next(), Ticket::next());
        let (ia, ib) = (t.begin_inflight(a, 0), t.begin_inflight(b, 0));
        let pa = ia.try_acquire(4).expect("fits");
        let pb = ib.try_acquire(4).expect("fits");
        let more_a = ia.acquire_or_wait(20, Box::new(|| {})).expect("the oldest goes on");
        drop(ia);
        let (tx, rx) = unbounded();
        let wb = ib
            .acquire_or_wait(20, Box::new(move || tx.send(()).expect("rx")))
            .expect_err("a's overshoot is still held");
        drop(pa);
        assert!(rx.try_recv().is_err(), "a still holds 20 of its own beyond the maximum");
        drop(more_a);
        rx.recv_timeout(Duration::from_secs(5)).expect("b goes on once a's is given back");
        let more_b = wb.try_take().expect("granted");
        assert_eq!(t.current(), 24);
        drop((pb, more_b, ib));
        assert_eq!(t.current(), 0);
    }

    // A registration moves the first window a message holds from "not in progress" to
    // "in progress": that may bring what the messages in progress do not hold back within
    // the maximum, and then the oldest message in progress, waiting for its next window
    // on that rule, goes on at once, as after a release. Before, it slept on until some
    // later release, and the newly registered message's own next window queued behind
    // it: both waited while nothing else held anything to release but a kept message.
    #[test]
    fn a_registration_that_lets_the_oldest_go_on_serves_it() {
        let t = Throttle::new("t", 10);
        let (a, b, c) = (Ticket::next(), Ticket::next(), Ticket::next());
        let first_a = t.try_acquire(2).expect("a's first window");
        let ia = t.begin_inflight(a, 2);
        let first_c = t.try_acquire(3).expect("c's first window, c not registered yet");
        let first_b = t.try_acquire(3).expect("b's first window");
        let ib = t.begin_inflight(b, 3);
        // a, the oldest, goes on past the maximum, completes and is kept (handed on).
        let more_a = ia.acquire_or_wait(7, Box::new(|| {})).expect("the oldest goes on");
        drop(ia);
        // Its 9 are kept by its dispatcher.
        let kept_a = (first_a, more_a);
        // b, now the oldest, waits: 9 kept + c's 3 not in progress is past the maximum.
        let (tx, rx) = unbounded();
        let wb = ib
            .acquire_or_wait(5, Box::new(move || tx.send(()).expect("rx")))
            .expect_err("a's kept overshoot and c's first window are past the maximum");
        // c registers its 3: what is not in progress (a's kept 9) is within the maximum.
        let ic = t.begin_inflight(c, 3);
        rx.try_recv()
            .expect("b, the oldest, goes on once what is not in progress is within the maximum");
        let more_b = wb.try_take().expect("granted");
        assert_eq!(t.counters().inflight_overshoot, 2);
        drop((more_b, first_b, ib, first_c, ic, kept_a));
        assert_eq!((t.current(), t.waiting()), (0, 0));
    }

    #[test]
    fn a_share_is_capped_and_never_waits() {
        let t = Throttle::new("t", 800);
        let p = t.try_acquire_share(1000, 8).expect("a share fits");
        assert_eq!((p.amount(), t.current()), (100, 100), "capped at max / share");
        let _big = t.try_acquire(650).expect("fits");
        assert!(t.try_acquire_share(1000, 8).is_none(), "100 more would pass the max");
        drop(p);
        assert_eq!(t.try_acquire_share(40, 8).map(|p| p.amount()), Some(40), "less than a share");
        let unlimited = Throttle::new("u", 0);
        assert_eq!(unlimited.try_acquire_share(1000, 8).map(|p| p.amount()), Some(1000));
        let tiny = Throttle::new("tiny", 4);
        assert!(tiny.try_acquire_share(10, 8).is_none(), "a share of nothing is refused");
    }

    // A permit emptied by a split or a merge releases nothing when dropped: no put is
    // counted for it, and the amount it gave away is released once, by its holder.
    #[test]
    fn an_emptied_permit_releases_nothing() {
        let t = Throttle::new("t", 100);
        let mut p = t.try_acquire(10).expect("fits");
        let all = p.split(10);
        drop(p);
        let mut q = t.try_acquire(5).expect("fits");
        q.merge(all).expect("same throttle");
        let k = t.counters();
        assert_eq!((k.val, k.put, k.put_sum), (15, 0, 0), "the emptied ones counted no put");
        drop(q);
        let k = t.counters();
        assert_eq!((k.val, k.put, k.put_sum), (0, 1, 15));
    }

    #[test]
    fn settle_charges_exactly() {
        let t = Throttle::new("t", 100);
        let mut p = t.try_acquire(10).expect("fits");
        p.settle(4);
        assert_eq!((p.amount(), t.current()), (4, 4));
        p.settle(30);
        assert_eq!((p.amount(), t.current()), (30, 30));
        drop(p);
        assert_eq!(t.current(), 0);
    }
}
