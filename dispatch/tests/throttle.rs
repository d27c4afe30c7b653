//! Throttle accounting, oversize admission and wakeups, through the public API.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use asyncmsgr_dispatch::{Permit, Throttle};
use common::{seed, wait_until, WAIT};
use crossbeam_channel::unbounded;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// 8 threads mixing every way of acquiring: the maximum is never exceeded, every
/// amount got is put back, every worker that waits is granted, and the counters add up.
#[test]
fn exact_accounting_under_eight_threads() {
    let seed = seed("exact_accounting");
    const MAX: u64 = 100;
    let t = Throttle::new("contended", MAX);
    let wakers_registered = Arc::new(AtomicU64::new(0));
    let wakers_called = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let t = Arc::clone(&t);
            let registered = Arc::clone(&wakers_registered);
            let called = Arc::clone(&wakers_called);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ i);
                let mut held: Vec<Permit> = Vec::new();
                let mut got = 0u64;
                for _ in 0..3_000 {
                    if !held.is_empty() && (held.len() > 3 || rng.gen_bool(0.5)) {
                        let k = rng.gen_range(0..held.len());
                        drop(held.swap_remove(k));
                        continue;
                    }
                    let n = rng.gen_range(1..=30u64);
                    let permit = match rng.gen_range(0..3) {
                        0 => t.try_acquire(n),
                        // Blocking is only safe while holding nothing ourselves.
                        1 if held.is_empty() => Some(t.acquire(n)),
                        _ => {
                            // The worker path: queue, wait for the waker, pick the grant up.
                            let (tx, rx) = unbounded();
                            let called = Arc::clone(&called);
                            let waker = Box::new(move || {
                                called.fetch_add(1, Ordering::SeqCst);
                                let _ = tx.send(());
                            });
                            match t.acquire_or_wait(n, waker) {
                                Ok(p) => Some(p),
                                // Do not wait while holding: cancel the request.
                                Err(_cancelled) if !held.is_empty() => None,
                                Err(waiting) => {
                                    registered.fetch_add(1, Ordering::SeqCst);
                                    rx.recv_timeout(WAIT).expect("waker called by a grant");
                                    Some(waiting.try_take().expect("granted when woken"))
                                }
                            }
                        }
                    };
                    if let Some(p) = permit {
                        assert!(t.current() <= MAX, "seed {seed}: max exceeded");
                        got += p.amount();
                        held.push(p);
                    }
                }
                drop(held);
                got
            })
        })
        .collect();
    let got: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    // Requests cancelled by workers that gave up may have been granted (and returned)
    // meanwhile: everything charged was released, nothing waits, and every worker that
    // waited was granted.
    assert_eq!(t.current(), 0, "seed {seed}");
    assert_eq!(t.waiting(), 0, "seed {seed}");
    assert!(wakers_called.load(Ordering::SeqCst) >= wakers_registered.load(Ordering::SeqCst));
    let k = t.counters();
    assert!(k.get_sum >= got, "seed {seed}");
    assert_eq!(k.put_sum, k.get_sum, "seed {seed}");
    assert_eq!(k.put, k.get, "seed {seed}");
    assert_eq!(k.val, 0);
    assert!(k.get >= k.get_or_fail_success);
}

/// Ceph's "except for large c": a request above the maximum is admitted once nothing
/// else is held — for blocking callers and for workers.
#[test]
fn oversize_request_admitted_when_idle() {
    let t = Throttle::new("t", 10);
    let a = t.try_acquire(6).expect("fits");
    let b = t.try_acquire(4).expect("fits");
    let blocked = {
        let t = Arc::clone(&t);
        std::thread::spawn(move || t.acquire(50).amount())
    };
    wait_until(|| t.waiting() == 1);
    // A waiting blocked thread keeps others from jumping ahead.
    drop(a);
    assert!(t.try_acquire(1).is_none());
    drop(b);
    assert_eq!(blocked.join().expect("blocked thread"), 50);
    assert_eq!(t.current(), 0);

    let held = t.try_acquire(3).expect("fits");
    let (tx, rx) = unbounded();
    let waiting =
        t.acquire_or_wait(25, Box::new(move || tx.send(()).expect("rx"))).expect_err("waits");
    // An oversize worker waiter also keeps small requests out, so it is not starved.
    assert!(t.try_acquire(1).is_none());
    assert!(rx.try_recv().is_err());
    drop(held);
    rx.recv_timeout(WAIT).expect("woken when idle");
    let big = waiting.try_take().expect("idle: admitted");
    assert_eq!(t.current(), 25);
    drop(big);
}

/// A worker's waker is called once, outside the lock (it may use the throttle), when a
/// release grants its request — and not for a release that does not.
#[test]
fn waker_called_once_on_grant() {
    let t = Throttle::new("t", 10);
    let mut held = t.try_acquire(10).expect("fits");
    let (tx, rx) = unbounded();
    let t2 = Arc::clone(&t);
    let waker = Box::new(move || {
        // Re-entering the throttle from the waker must not deadlock.
        tx.send(t2.current()).expect("rx");
    });
    let waiting = t.acquire_or_wait(4, waker).expect_err("full");
    drop(held.split(2));
    assert!(rx.try_recv().is_err(), "2 free: 4 does not fit yet");
    drop(held.split(2));
    assert_eq!(rx.recv_timeout(WAIT).expect("woken"), 10, "6 held + 4 granted");
    let p = waiting.try_take().expect("granted");
    drop(held);
    assert!(rx.try_recv().is_err(), "called only once");
    drop(p);
    assert_eq!(t.current(), 0);
    assert_eq!(t.counters().wait, 1);
}

/// A blocking acquire (user threads only) is woken by the release that makes room,
/// and FIFO order among blocked threads holds.
#[test]
fn blocking_acquire_woken_by_release() {
    let t = Throttle::new("t", 10);
    let held = t.try_acquire(8).expect("fits");
    let (tx, rx) = unbounded();
    let spawn = |n: u64, tag: u8| {
        let t = Arc::clone(&t);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let p = t.acquire(n);
            tx.send(tag).expect("rx");
            p
        })
    };
    let first = spawn(5, 1);
    wait_until(|| t.waiting() == 1);
    let second = spawn(2, 2);
    wait_until(|| t.waiting() == 2);
    // 2 is free: the second would fit, but it waits behind the first.
    assert!(rx.try_recv().is_err());
    drop(held);
    let order = [rx.recv_timeout(WAIT).expect("woken"), rx.recv_timeout(WAIT).expect("woken")];
    let mut sorted = order;
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2]);
    let (p1, p2) = (first.join().expect("t1"), second.join().expect("t2"));
    assert_eq!(t.current(), 7);
    drop((p1, p2));
    let k = t.counters();
    assert_eq!((k.val, k.wait, k.get, k.get_sum), (0, 2, 3, 15));
}

#[test]
fn reset_max_serves_waiters() {
    let t = Throttle::new("t", 4);
    let held = t.try_acquire(4).expect("fits");
    let (tx, rx) = unbounded();
    let waiting =
        t.acquire_or_wait(4, Box::new(move || tx.send(()).expect("rx"))).expect_err("full");
    t.reset_max(8);
    rx.recv_timeout(WAIT).expect("woken by the larger max");
    assert_eq!(t.max(), 8);
    let p = waiting.try_take().expect("granted");
    drop((held, p));
    t.reset_max(0);
    assert!(t.try_acquire(1 << 40).is_some());
}

/// A worker whose connection closed never picks its grant up; dropping its request
/// passes the grant on, so the others are not stranded.
#[test]
fn a_closed_connection_does_not_strand_others() {
    let t = Throttle::new("t", 100);
    let held = t.try_acquire(100).expect("fits");
    let (tx, rx) = unbounded();
    let (dead_tx, dead_rx) = unbounded();
    let dead =
        t.acquire_or_wait(60, Box::new(move || dead_tx.send(()).expect("rx"))).expect_err("full");
    let live = t.acquire_or_wait(60, Box::new(move || tx.send(()).expect("rx"))).expect_err("full");
    drop(held);
    dead_rx.recv_timeout(WAIT).expect("first request granted");
    assert!(rx.try_recv().is_err(), "60 + 60 do not fit");
    // Its owner never comes back: its request is dropped with the connection.
    drop(dead);
    rx.recv_timeout(WAIT).expect("second request granted");
    let p = live.try_take().expect("granted");
    assert_eq!((t.waiting(), t.current()), (0, 60));
    drop(p);
}

/// The voluntary context switches of the calling thread so far (Linux): each time it
/// slept, in a condvar or a contended lock.
fn my_sleeps() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// A release wakes exactly the blocked threads it grants, in FIFO order (Ceph's
/// `Throttle` keeps a condvar per waiter and signals the front one): the others sleep
/// on. Before, every grant woke every blocked thread, each to find its request still
/// queued and sleep again: O(blocked threads) wakeups per release, O(n²) for n blocked
/// threads let through one by one.
#[test]
fn a_release_wakes_only_the_blocked_threads_it_grants() {
    const N: usize = 48;
    let t = Throttle::new("t", 1);
    let held = t.try_acquire(1).expect("fits");
    let (tx, rx) = unbounded();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let mine = Arc::clone(&t);
            let tx = tx.clone();
            let th = std::thread::spawn(move || {
                let before = my_sleeps();
                let p = mine.acquire(1);
                let slept = my_sleeps() - before;
                tx.send(i).expect("rx");
                drop(p); // grants the next one
                slept
            });
            // Queued in this order.
            wait_until(|| t.waiting() == i + 1);
            th
        })
        .collect();
    drop(held);
    let order: Vec<usize> = (0..N).map(|_| rx.recv_timeout(WAIT).expect("granted")).collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "FIFO");
    let slept: Vec<u64> = threads.into_iter().map(|h| h.join().expect("thread")).collect();
    let total: u64 = slept.iter().sum();
    // One sleep each for its grant, and now and then one on the lock.
    assert!(total <= 3 * N as u64, "{total} sleeps for {N} grants: {slept:?}");
    assert_eq!((t.current(), t.waiting()), (0, 0));
}
