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
//! | AsyncConnection's 1 ms retry timer | [`Throttle::acquire_or_wait`]'s waker |
//!
//! Differences from Ceph, on purpose:
//! - a request larger than the maximum is admitted only when nothing at all is held
//!   (Ceph admits it whenever the count is not already above the maximum), so the
//!   overshoot is bounded by one oversize request;
//! - a worker never sleeps or polls: it registers a waker that a release calls.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Called once, outside any lock, when a release may have made room for a worker.
pub type Waker = Box<dyn FnOnce() + Send>;

/// A counting limit on a shared resource (bytes or messages).
///
/// Amounts are charged by acquiring a [`Permit`] and returned when the permit is
/// dropped. A maximum of 0 means unlimited (everything is admitted, but still counted).
///
/// Fairness: a thread blocked in [`acquire`](Self::acquire) is served in FIFO order and
/// granted its amount directly by the release that makes room; while one waits, or
/// while a worker waits for an oversize amount, [`try_acquire`](Self::try_acquire)
/// fails for everyone else (Ceph's "always wait behind other waiters"). Wakers
/// registered by [`acquire_or_wait`](Self::acquire_or_wait) are hints: the woken worker
/// retries and may lose a race with another worker, in which case it registers again;
/// every waker whose amount fits is called by the release that makes room for it.
pub struct Throttle {
    name: String,
    state: Mutex<State>,
    /// Blocked [`acquire`](Self::acquire) callers sleep here; each checks its own grant flag.
    granted: Condvar,
}

struct State {
    /// Amount currently held by live permits (including grants not yet picked up).
    current: u64,
    /// 0 = unlimited.
    max: u64,
    /// FIFO. Bounded by the number of threads and connections waiting (each waits once).
    waiters: VecDeque<Waiter>,
    counters: ThrottleCounters,
}

struct Waiter {
    need: u64,
    kind: WaiterKind,
}

enum WaiterKind {
    /// A user thread in `acquire`; the release grants it directly and sets the flag.
    Blocking(Arc<AtomicBool>),
    /// A worker's waker; called when the amount would fit, without granting.
    Wake(Waker),
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
    /// Times a caller had to wait: blocked in `acquire` or registered a waker (`wait`).
    pub wait: u64,
    /// Total time blocked in `acquire` (Ceph's `wait` is this as an average).
    pub wait_time: Duration,
}

impl State {
    /// Ceph's `_should_wait`, except that an oversize request waits until nothing is held.
    fn should_wait(&self, held: u64, n: u64) -> bool {
        if self.max == 0 {
            return false;
        }
        if n > self.max {
            held > 0
        } else {
            held.saturating_add(n) > self.max
        }
    }

    /// Whether a queued waiter forbids others from jumping ahead of it.
    fn has_barrier(&self) -> bool {
        let max = self.max;
        self.waiters.iter().any(|w| match w.kind {
            WaiterKind::Blocking(_) => true,
            WaiterKind::Wake(_) => max != 0 && w.need > max,
        })
    }

    /// After a release (or a raised max): grants blocked threads in FIFO order while
    /// they fit, and picks every waker whose amount fits now.
    ///
    /// Wakers are not promised their room: a woken worker whose connection has since
    /// closed never retries, and reserving room for it would strand the waiters behind
    /// it with nothing held. So each waker that fits on its own is called, and those
    /// that lose the race register again — a release may wake more workers than fit,
    /// bounded by the number of waiting connections. Wakers behind a blocked thread
    /// that does not fit stay queued: they could not get past it anyway.
    fn serve_waiters(&mut self) -> (Vec<Waker>, bool) {
        let mut wakers = Vec::new();
        let mut granted = false;
        // One pass, rebuilding the queue: O(waiters) per release.
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        let mut pending = std::mem::take(&mut self.waiters).into_iter();
        for w in pending.by_ref() {
            if self.should_wait(self.current, w.need) {
                let blocked = matches!(w.kind, WaiterKind::Blocking(_));
                kept.push_back(w);
                if blocked {
                    break;
                }
                continue;
            }
            match w.kind {
                WaiterKind::Blocking(flag) => {
                    self.current = self.current.saturating_add(w.need);
                    self.counters.get += 1;
                    self.counters.get_sum = self.counters.get_sum.saturating_add(w.need);
                    flag.store(true, Ordering::Release);
                    granted = true;
                }
                WaiterKind::Wake(waker) => wakers.push(waker),
            }
        }
        kept.extend(pending);
        self.waiters = kept;
        (wakers, granted)
    }
}

impl Throttle {
    /// A throttle called `name` (for logs) with maximum `max` (0 = unlimited).
    pub fn new(name: &str, max: u64) -> Arc<Self> {
        Arc::new(Throttle {
            name: name.to_owned(),
            state: Mutex::new(State {
                current: 0,
                max,
                waiters: VecDeque::new(),
                counters: ThrottleCounters::default(),
            }),
            granted: Condvar::new(),
        })
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes `n` if it fits now and nobody is queued ahead; never waits.
    #[doc(alias = "get_or_fail")]
    pub fn try_acquire(self: &Arc<Self>, n: u64) -> Option<Permit> {
        let mut st = self.state.lock();
        if st.should_wait(st.current, n) || st.has_barrier() {
            st.counters.get_or_fail_fail += 1;
            return None;
        }
        Some(self.grant_locked(&mut st, n))
    }

    /// Takes `n` now if it fits; otherwise registers `waker` and returns `None`.
    ///
    /// This is the worker path: the waker is called exactly once, on the releasing
    /// thread and outside any lock, when a release (or [`reset_max`](Self::reset_max))
    /// makes room for `n`. It should post to the worker, which then calls this again.
    /// The room is not reserved, so the retry may fail and register a new waker. If the
    /// throttle is dropped first, the waker is dropped without being called. On success
    /// the waker is dropped uncalled.
    pub fn acquire_or_wait(self: &Arc<Self>, n: u64, waker: Waker) -> Option<Permit> {
        let mut st = self.state.lock();
        if !st.should_wait(st.current, n) && !st.has_barrier() {
            return Some(self.grant_locked(&mut st, n));
        }
        st.counters.get_or_fail_fail += 1;
        st.counters.wait += 1;
        st.waiters.push_back(Waiter { need: n, kind: WaiterKind::Wake(waker) });
        log::trace!(target: "msgr::throttle", "{}: worker waits for {n} (current {})", self.name, st.current);
        None
    }

    /// Takes `n`, blocking the calling thread until it fits.
    ///
    /// For user threads only: never call this from an event-loop worker or from a
    /// dispatcher (the dispatch thread is what releases the dispatch throttle).
    #[doc(alias = "get")]
    pub fn acquire(self: &Arc<Self>, n: u64) -> Permit {
        let mut st = self.state.lock();
        if !st.should_wait(st.current, n) && !st.has_barrier() {
            st.counters.get += 1;
            st.counters.get_sum = st.counters.get_sum.saturating_add(n);
            st.current = st.current.saturating_add(n);
            return Permit { throttle: Arc::clone(self), amount: n };
        }
        let flag = Arc::new(AtomicBool::new(false));
        st.waiters.push_back(Waiter { need: n, kind: WaiterKind::Blocking(Arc::clone(&flag)) });
        st.counters.wait += 1;
        let started = Instant::now();
        log::debug!(target: "msgr::throttle", "{}: blocking for {n} (current {})", self.name, st.current);
        while !flag.load(Ordering::Acquire) {
            self.granted.wait(&mut st);
        }
        st.counters.wait_time += started.elapsed();
        // The releasing thread already charged `n` and counted the get.
        Permit { throttle: Arc::clone(self), amount: n }
    }

    /// Charges `n` without waiting, even beyond the maximum.
    pub fn take(self: &Arc<Self>, n: u64) -> Permit {
        let mut st = self.state.lock();
        st.current = st.current.saturating_add(n);
        st.counters.take += 1;
        st.counters.take_sum = st.counters.take_sum.saturating_add(n);
        Permit { throttle: Arc::clone(self), amount: n }
    }

    /// Changes the maximum (0 = unlimited) and serves waiters that now fit.
    pub fn reset_max(&self, max: u64) {
        let wakers = {
            let mut st = self.state.lock();
            st.max = max;
            let (wakers, granted) = st.serve_waiters();
            if granted {
                self.granted.notify_all();
            }
            wakers
        };
        wakers.into_iter().for_each(|w| w());
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

    /// Number of callers waiting (blocked threads and registered wakers).
    pub fn waiting(&self) -> usize {
        self.state.lock().waiters.len()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ThrottleCounters {
        let st = self.state.lock();
        ThrottleCounters { val: st.current, max: st.max, ..st.counters }
    }

    fn grant_locked(self: &Arc<Self>, st: &mut State, n: u64) -> Permit {
        st.current = st.current.saturating_add(n);
        st.counters.get += 1;
        st.counters.get_sum = st.counters.get_sum.saturating_add(n);
        st.counters.get_or_fail_success += 1;
        Permit { throttle: Arc::clone(self), amount: n }
    }

    /// Ceph's `put`: returns `n` and serves waiters; wakers run after the lock is released.
    fn release(&self, n: u64) {
        let wakers = {
            let mut st = self.state.lock();
            st.current = st.current.saturating_sub(n);
            st.counters.put += 1;
            st.counters.put_sum = st.counters.put_sum.saturating_add(n);
            if st.waiters.is_empty() {
                return;
            }
            let (wakers, granted) = st.serve_waiters();
            if granted {
                self.granted.notify_all();
            }
            wakers
        };
        for w in wakers {
            w();
        }
    }
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Throttle")
            .field("name", &self.name)
            .field("current", &st.current)
            .field("max", &st.max)
            .field("waiting", &st.waiters.len())
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
}

impl Drop for Permit {
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
    fn waker_runs_once_when_room_is_made() {
        let t = Throttle::new("t", 10);
        let held = t.try_acquire(8).expect("fits");
        let (tx, rx) = unbounded();
        let tx2 = tx.clone();
        assert!(t.acquire_or_wait(5, Box::new(move || tx2.send(()).expect("rx alive"))).is_none());
        assert!(rx.try_recv().is_err());
        let mut held = held;
        drop(held.split(2)); // 6 held: 5 still does not fit
        assert!(rx.try_recv().is_err());
        drop(held);
        assert!(rx.try_recv().is_ok());
        // A later release does not call it again.
        drop(t.try_acquire(3).expect("fits"));
        assert!(rx.try_recv().is_err());
        assert_eq!(t.waiting(), 0);
        drop(tx);
    }
}
