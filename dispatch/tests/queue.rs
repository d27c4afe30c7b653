//! DispatchQueue and Dispatchers behaviour through the public API.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncmsgr_dispatch::{
    AuthVerdict, Delivery, DispatchQueue, Dispatched, Dispatcher, Dispatchers, QueueEvent,
    ReadBatch, ShutdownMode, Throttle,
};
use common::*;
use crossbeam_channel::{unbounded, Receiver};
use protocol::message::{PRIO_DEFAULT, PRIO_HIGH, PRIO_HIGHEST, PRIO_LOW};
use protocol::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn queue(d: &Arc<Dispatchers<TestConn>>) -> Arc<DispatchQueue<TestConn>> {
    DispatchQueue::new("test", Arc::clone(d), Throttle::new("dispatch", 0))
}

fn dispatched(s: &Seen) -> Option<(&'static str, u64, u16, u64)> {
    match s {
        Seen::Dispatch { who, conn, msg_type, tid, .. } => Some((who, *conn, *msg_type, *tid)),
        _ => None,
    }
}

/// A stopped queue whose one dispatcher "r" fast-dispatches message type 10 and takes
/// everything else in `ms_dispatch`, and what it reports.
fn fast_tens_queue() -> (Arc<DispatchQueue<TestConn>>, Receiver<Seen>) {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    let mut r = Recorder::new("r", tx);
    r.fast = vec![10];
    d.add_tail(arc(r));
    (queue(&d), rx)
}

/// The message type for transaction `tid`: every third one (11) for the queue, the rest
/// (10) for the fast path.
fn every_third_queued(tid: u64) -> u16 {
    if tid.is_multiple_of(3) {
        11
    } else {
        10
    }
}

/// Ceph's ms_deliver_dispatch: head → tail until one takes it; the rest never see it.
#[test]
fn chain_walks_head_to_tail_until_taken() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    let mut b = Recorder::new("b", tx.clone());
    b.takes = Some(vec![1]);
    let mut a = Recorder::new("a", tx.clone());
    a.takes = Some(vec![2]);
    let mut c = Recorder::new("c", tx.clone());
    c.takes = Some(vec![1, 2]);
    d.add_tail(arc(b));
    d.add_head(arc(a)); // now a, b
    d.add_tail(arc(c)); // a, b, c
    assert_eq!(d.len(), 3);
    let q = queue(&d);
    q.start().expect("start");
    let conn = TestConn(7);
    q.enqueue(&conn, msg(1, PRIO_DEFAULT, 1, 0), None);
    q.enqueue(&conn, msg(2, PRIO_DEFAULT, 2, 0), None);
    q.enqueue(&conn, msg(3, PRIO_DEFAULT, 3, 0), None); // nobody takes type 3
    q.shutdown(ShutdownMode::Drain);
    let seen: Vec<_> = rx.try_iter().filter_map(|s| dispatched(&s)).collect();
    assert_eq!(seen, [("b", 7, 1, 1), ("a", 7, 2, 2)]);
    let k = q.counters();
    assert_eq!((k.dispatched, k.untaken, k.len), (2, 1, 0));
}

/// Fast-dispatchable messages never enter the queue and run on the delivering thread;
/// ms_fast_preprocess sees every message in arrival order.
#[test]
fn fast_dispatch_bypasses_queue_and_preprocess_sees_all_in_order() {
    let (q, rx) = fast_tens_queue();
    let budget = Throttle::new("budget", 1000);
    // Not started: anything queued stays queued, so fast deliveries are visibly synchronous.
    let worker = {
        let q = Arc::clone(&q);
        let budget = Arc::clone(&budget);
        std::thread::spawn(move || {
            let conn = TestConn(1);
            let mut kinds = Vec::new();
            for tid in 0..20u64 {
                let ty = every_third_queued(tid);
                let permit = budget.try_acquire(10).expect("room");
                kinds.push(q.deliver(&conn, msg(ty, PRIO_DEFAULT, tid, 10), Some(permit)));
            }
            (std::thread::current().id(), kinds)
        })
    };
    let (worker_id, kinds) = worker.join().expect("worker");
    let fast_tids: Vec<u64> = (0..20).filter(|t| t % 3 != 0).collect();
    let queued_tids: Vec<u64> = (0..20).filter(|t| t % 3 == 0).collect();
    for (tid, kind) in kinds.iter().enumerate() {
        let want = if tid % 3 == 0 { Delivery::Queued } else { Delivery::Fast };
        assert_eq!(*kind, want, "tid {tid}");
    }
    let seen: Vec<Seen> = rx.try_iter().collect();
    let pre: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Preprocess { tid, .. } => Some(*tid),
            _ => None,
        })
        .collect();
    assert_eq!(pre, (0..20).collect::<Vec<_>>());
    let fast: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Fast { tid, thread, .. } => {
                assert_eq!(*thread, worker_id);
                Some(*tid)
            }
            _ => None,
        })
        .collect();
    assert_eq!(fast, fast_tids);
    let k = q.counters();
    assert_eq!((k.messages, k.fast_dispatched), (queued_tids.len(), fast_tids.len() as u64));
    // Fast budgets were released when ms_fast_dispatch returned; queued ones are held.
    assert_eq!(budget.current(), 10 * queued_tids.len() as u64);
    q.start().expect("start");
    let got: Vec<u64> =
        recv_n(&rx, queued_tids.len()).iter().filter_map(|s| dispatched(s).map(|x| x.3)).collect();
    assert_eq!(got, queued_tids);
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(budget.current(), 0);
}

/// Ceph's ms_handle_fast_connect/accept run before any message of the connection, and
/// the queued ms_handle_connect/accept before any queued message of it.
#[test]
fn connect_and_accept_reach_dispatchers_before_messages() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    let mut r = Recorder::new("r", tx);
    r.fast = vec![10];
    d.add_tail(arc(r));
    let q = queue(&d);
    q.start().expect("start");
    let conns = 50u64;
    let per_conn = 20u64;
    let workers: Vec<_> = (0..2u64)
        .map(|w| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for c in (0..conns).filter(|c| c % 2 == w) {
                    let conn = TestConn(c);
                    let ev = if c % 4 < 2 {
                        QueueEvent::Connect(conn.clone())
                    } else {
                        QueueEvent::Accept(conn.clone())
                    };
                    q.enqueue_event(ev);
                    for tid in 0..per_conn {
                        let ty = if tid % 2 == 0 { 10 } else { 11 };
                        q.deliver(&conn, msg(ty, PRIO_DEFAULT, tid, 0), None);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    // Per conn: fast open, 2 open, preprocess and fast/queued delivery of each message.
    let total = (conns * (2 + per_conn * 2)) as usize;
    let seen = recv_n(&rx, total);
    q.shutdown(ShutdownMode::Drain);
    let mut fast_open: HashMap<u64, usize> = HashMap::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for (i, s) in seen.iter().enumerate() {
        match s {
            Seen::FastConnect(c) | Seen::FastAccept(c) => {
                assert!(fast_open.insert(*c, i).is_none());
            }
            Seen::Connect(c) | Seen::Accept(c) => {
                assert_eq!(matches!(s, Seen::Connect(_)), c % 4 < 2);
                assert!(open.insert(*c, i).is_none());
            }
            Seen::Preprocess { conn, .. } | Seen::Fast { conn, .. } => {
                assert!(fast_open.contains_key(conn), "conn {conn}: message before fast open");
            }
            Seen::Dispatch { conn, .. } => {
                assert!(fast_open.contains_key(conn), "conn {conn}: message before fast open");
                assert!(open.contains_key(conn), "conn {conn}: queued message before open");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((fast_open.len(), open.len()), (conns as usize, conns as usize));
}

/// Within one connection and one priority, messages are dispatched in FIFO order, under
/// several producers, many connections and mixed priorities.
#[test]
fn per_connection_fifo_under_many_connections_and_priorities() {
    let seed = seed("per_connection_fifo");
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("r", tx)));
    let budget = Throttle::new("dispatch", 64 * 1024);
    let q = DispatchQueue::new("fifo", Arc::clone(&d), Arc::clone(&budget));
    q.start().expect("start");
    let prios = [PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH, PRIO_HIGHEST];
    let producers = 4u64;
    let per_producer = 5_000u64;
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let q = Arc::clone(&q);
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ p);
                // Producer p owns connections p, p + producers, ... (a worker owns its conns).
                let mut next: HashMap<(u64, u16), u64> = HashMap::new();
                for _ in 0..per_producer {
                    let conn = p + producers * rng.gen_range(0..16u64);
                    let prio = prios[rng.gen_range(0..prios.len())];
                    let slot = next.entry((conn, prio)).or_insert(0);
                    let len = rng.gen_range(0..256usize);
                    let permit = budget.acquire(len as u64);
                    q.enqueue(&TestConn(conn), msg(1, prio, *slot, len), Some(permit));
                    *slot += 1;
                }
            })
        })
        .collect();
    let seen = recv_n(&rx, (producers * per_producer) as usize);
    for h in handles {
        h.join().expect("producer");
    }
    let mut expect: HashMap<(u64, u16), u64> = HashMap::new();
    for s in &seen {
        if let Seen::Dispatch { conn, prio, tid, .. } = s {
            let e = expect.entry((*conn, *prio)).or_insert(0);
            assert_eq!(*tid, *e, "seed {seed}: conn {conn} prio {prio} out of order");
            *e += 1;
        }
    }
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(budget.current(), 0, "seed {seed}");
    assert_eq!(q.counters().dispatched, producers * per_producer);
}

/// Ceph's prioritized queue: strict priorities first, then turns proportional to the
/// priority value; the lowest priority is never starved.
#[test]
fn weighted_round_robin_proportions_and_no_starvation() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("r", tx)));
    let q = queue(&d);
    let n = 2_000u64;
    for tid in 0..n {
        for (i, p) in [PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH].into_iter().enumerate() {
            q.enqueue(&TestConn(i as u64), msg(1, p, tid, 0), None);
        }
    }
    for tid in 0..10 {
        q.enqueue(&TestConn(9), msg(1, PRIO_HIGHEST, tid, 0), None);
    }
    assert_eq!(q.counters().messages, (3 * n + 10) as usize);
    q.start().expect("start");
    let seen = recv_n(&rx, (3 * n + 10) as usize);
    q.shutdown(ShutdownMode::Drain);
    let prios: Vec<u16> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Dispatch { prio, .. } => Some(*prio),
            _ => None,
        })
        .collect();
    assert!(prios[..10].iter().all(|p| *p == PRIO_HIGHEST));
    // While all three are backlogged (the first n turns at least), each gets its share.
    let total = f64::from(PRIO_LOW + PRIO_DEFAULT + PRIO_HIGH);
    let mut counts = HashMap::new();
    for (turn, p) in prios[10..10 + n as usize].iter().enumerate() {
        *counts.entry(*p).or_insert(0u32) += 1;
        for w in [PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH] {
            let share = (turn + 1) as f64 * f64::from(w) / total;
            let got = f64::from(*counts.get(&w).unwrap_or(&0));
            assert!((got - share).abs() <= 1.0, "turn {turn} prio {w}: {got} vs {share:.1}");
        }
    }
    // No starvation: in every window of 10 turns the lowest priority gets one.
    for window in prios[10..10 + n as usize].windows(10) {
        assert!(window.contains(&PRIO_LOW));
    }
}

/// Ceph's discard_queue (used by mark_down): drops that connection's messages only and
/// returns their dispatch-throttle budget, waking a waiting worker.
#[test]
fn discard_drops_one_connection_and_releases_budget() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("r", tx)));
    let budget = Throttle::new("dispatch", 100);
    let q = DispatchQueue::new("discard", Arc::clone(&d), Arc::clone(&budget));
    for tid in 0..6u64 {
        let conn = TestConn(tid % 2);
        let p = budget.try_acquire(15).expect("room");
        q.enqueue(
            &conn,
            msg(1, if tid < 3 { PRIO_DEFAULT } else { PRIO_HIGHEST }, tid, 15),
            Some(p),
        );
    }
    q.enqueue_event(QueueEvent::Reset(TestConn(1)));
    assert_eq!(budget.current(), 90);
    let (wtx, wrx) = unbounded();
    let waiting =
        budget.acquire_or_wait(40, Box::new(move || wtx.send(()).expect("rx"))).expect_err("full");
    assert_eq!(q.discard(1), 3);
    wrx.recv_timeout(WAIT).expect("worker woken by the discard");
    // 45 still queued + the 40 granted to the worker.
    assert_eq!(budget.current(), 85);
    drop(waiting.try_take().expect("granted"));
    assert_eq!(budget.current(), 45);
    assert_eq!(q.discard(1), 0);
    let k = q.counters();
    assert_eq!((k.messages, k.events, k.discarded), (3, 1, 3));
    q.start().expect("start");
    let seen = recv_n(&rx, 4);
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(seen[0], Seen::Reset { who: "r", conn: 1 }, "the event survives discard");
    let tids: Vec<u64> = seen[1..].iter().filter_map(|s| dispatched(s).map(|x| x.3)).collect();
    assert_eq!(tids, [4, 0, 2]);
    assert_eq!(budget.current(), 0);
}

/// Reset and refused stop at the first dispatcher that handles them; remote reset
/// reaches all.
#[test]
fn reset_events_walk_the_chain() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("a", tx.clone())));
    let mut b = Recorder::new("b", tx.clone());
    b.handles_reset = true;
    d.add_tail(arc(b));
    d.add_tail(arc(Recorder::new("c", tx)));
    let q = queue(&d);
    q.start().expect("start");
    let c = TestConn(3);
    q.enqueue_event(QueueEvent::Reset(c.clone()));
    q.enqueue_event(QueueEvent::RemoteReset(c.clone()));
    q.enqueue_event(QueueEvent::Refused(c));
    q.shutdown(ShutdownMode::Drain);
    let seen: Vec<Seen> = rx.try_iter().collect();
    assert_eq!(
        seen,
        [
            Seen::Reset { who: "a", conn: 3 },
            Seen::Reset { who: "b", conn: 3 },
            Seen::RemoteReset { who: "a", conn: 3 },
            Seen::RemoteReset { who: "b", conn: 3 },
            Seen::RemoteReset { who: "c", conn: 3 },
            Seen::Refused { who: "a", conn: 3 },
            Seen::Refused { who: "b", conn: 3 },
        ]
    );
    assert_eq!(q.counters().events_delivered, 3);
}

/// A session's reset is its last callback: once its connection takes no messages (the
/// reset is being reported), an event another thread raises for it (a driver finishing
/// the handshake of a session a newcomer just reset) is dropped, fast hooks included,
/// while the reset itself is taken.
#[test]
fn after_a_sessions_end_only_its_reset_is_taken() {
    let (q, rx) = fast_tens_queue();
    q.start().expect("start");
    let ended = TestConn(ENDED | 4);
    q.enqueue_event(QueueEvent::Reset(ended.clone()));
    q.enqueue_event(QueueEvent::Connect(ended.clone()));
    q.enqueue_event(QueueEvent::Accept(ended.clone()));
    q.enqueue_event(QueueEvent::RemoteReset(ended.clone()));
    q.enqueue_event(QueueEvent::Refused(ended));
    // A live connection's events are still taken.
    q.enqueue_event(QueueEvent::Connect(TestConn(5)));
    q.shutdown(ShutdownMode::Drain);
    // The fast hook runs on this thread, the reset on the dispatch thread: their order
    // is the scheduler's.
    let (of_ended, of_live): (Vec<Seen>, Vec<Seen>) =
        rx.try_iter().partition(|s| !matches!(s, Seen::FastConnect(5) | Seen::Connect(5)));
    assert_eq!(of_ended, [Seen::Reset { who: "r", conn: ENDED | 4 }]);
    assert_eq!(of_live, [Seen::FastConnect(5), Seen::Connect(5)]);
    assert_eq!(q.counters().events_delivered, 2);
}

/// A lossy session a v1 peer's new connection replaced ends with a remote reset and a
/// reset (Ceph's ProtocolV1: `session_reset`, then `replace`): both taken, though the
/// session ended (it takes no messages) before they were queued, one right behind the
/// other, and nothing of it after them.
#[test]
fn a_replaced_sessions_remote_reset_and_reset_are_its_last_callbacks() {
    let (q, rx) = fast_tens_queue();
    q.start().expect("start");
    let ended = TestConn(ENDED | 6);
    q.enqueue_remote_reset_and_reset(ended.clone());
    q.enqueue_event(QueueEvent::RemoteReset(ended));
    q.shutdown(ShutdownMode::Drain);
    let seen: Vec<Seen> = rx.try_iter().collect();
    let conn = ENDED | 6;
    assert_eq!(seen, [Seen::RemoteReset { who: "r", conn }, Seen::Reset { who: "r", conn }]);
    assert_eq!(q.counters().events_delivered, 2);
}

/// The loopback path: preprocess in order, fast dispatch on the dispatch thread (never
/// the sender's), the rest queued; budget charged and returned.
#[test]
fn local_delivery_keeps_the_worker_guarantees() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    let mut r = Recorder::new("r", tx);
    r.fast = vec![10];
    d.add_tail(arc(r));
    let budget = Throttle::new("dispatch", 1000);
    let q = DispatchQueue::new("local", Arc::clone(&d), Arc::clone(&budget));
    let me = TestConn(0);
    q.enqueue_event(QueueEvent::Connect(me.clone()));
    for tid in 0..10u64 {
        q.local_delivery(&me, msg(if tid % 2 == 0 { 10 } else { 11 }, PRIO_DEFAULT, tid, 5));
    }
    // Each is charged what it costs queued: payload and overhead.
    assert_eq!(budget.current(), 10 * msg(10, PRIO_DEFAULT, 0, 5).queued_cost());
    assert_eq!(q.counters().messages, 10);
    q.start().expect("start");
    // fast connect + connect + 10 preprocess + 5 fast + 5 dispatch
    let seen = recv_n(&rx, 22);
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(seen[0], Seen::FastConnect(0));
    assert_eq!(seen[1], Seen::Connect(0));
    let pre: Vec<u64> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Preprocess { tid, .. } => Some(*tid),
            _ => None,
        })
        .collect();
    assert_eq!(pre, (0..10).collect::<Vec<_>>());
    for s in &seen {
        if let Seen::Fast { thread, .. } = s {
            assert_ne!(*thread, std::thread::current().id());
        }
    }
    let queued: Vec<u64> = seen.iter().filter_map(|s| dispatched(s).map(|x| x.3)).collect();
    assert_eq!(queued, [1, 3, 5, 7, 9]);
    let k = q.counters();
    assert_eq!((k.fast_dispatched, k.dispatched, k.len), (5, 5, 0));
    assert_eq!(budget.current(), 0);
}

/// A dispatcher that blocks on its first message until released.
struct Gate {
    entered: crossbeam_channel::Sender<()>,
    open: crossbeam_channel::Receiver<()>,
}

impl Dispatcher<TestConn> for Gate {
    fn ms_dispatch(&self, _conn: &TestConn, _msg: Message) -> Dispatched {
        if self.entered.send(()).is_ok() {
            let _ = self.open.recv_timeout(WAIT);
        }
        Dispatched::Taken
    }
}

#[test]
fn shutdown_drain_with_a_full_queue_delivers_everything() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("r", tx)));
    let budget = Throttle::new("dispatch", 10_000);
    let q = DispatchQueue::new("drain", Arc::clone(&d), Arc::clone(&budget));
    q.start().expect("start");
    let mut n = 0u64;
    while let Some(p) = budget.try_acquire(1) {
        q.enqueue(&TestConn(n % 5), msg(1, PRIO_DEFAULT, n, 1), Some(p));
        n += 1;
        if n == 10_000 {
            break;
        }
    }
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(rx.try_iter().count() as u64, n);
    assert_eq!(budget.current(), 0);
    // Refused after shutdown, budget released at once.
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 0, 1), Some(budget.take(1)));
    assert_eq!(budget.current(), 0);
    assert_eq!(q.counters().discarded, 1);
    q.shutdown(ShutdownMode::Drain); // idempotent
}

#[test]
fn shutdown_discard_with_a_full_queue_drops_it_and_returns() {
    let (entered_tx, entered_rx) = unbounded();
    let (open_tx, open_rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Gate { entered: entered_tx, open: open_rx }));
    let budget = Throttle::new("dispatch", 1_000);
    let q = DispatchQueue::new("discard", Arc::clone(&d), Arc::clone(&budget));
    q.start().expect("start");
    for tid in 0..1_000u64 {
        let p = budget.try_acquire(1).expect("room");
        q.enqueue(&TestConn(tid % 3), msg(1, PRIO_DEFAULT, tid, 1), Some(p));
    }
    entered_rx.recv_timeout(WAIT).expect("dispatcher busy with the first message");
    let stopper = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.shutdown(ShutdownMode::Discard))
    };
    // The queue is emptied (and its budget released) before the join; only the message
    // inside ms_dispatch still holds budget. Only then let the dispatcher return.
    wait_until(|| q.counters().len == 0 && budget.current() == 1);
    open_tx.send(()).expect("gate");
    stopper.join().expect("shutdown returned");
    let k = q.counters();
    assert_eq!((k.dispatched, k.discarded), (1, 999));
    assert_eq!(budget.current(), 0);
}

/// A discarding shutdown drops at once every message that waits (queued and local,
/// releasing their budget), but the events queued before it are still delivered, after
/// the dispatch under way and before the shutdown returns; one queued after it is
/// refused. Ceph's dispatch thread delivers its queued codes once `stop` is set and
/// discards only messages, so the reset a messenger's shutdown queues for each
/// connection reaches the dispatchers. They were dropped with the messages.
#[test]
fn shutdown_discard_delivers_the_events_queued_before_it_and_no_message() {
    let (entered_tx, entered_rx) = unbounded();
    let (open_tx, open_rx) = unbounded();
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Gate { entered: entered_tx, open: open_rx }));
    let mut r = Recorder::new("r", tx);
    r.handles_reset = true;
    d.add_tail(arc(r));
    let budget = Throttle::new("dispatch", 1_000);
    let q = DispatchQueue::new("discard-events", Arc::clone(&d), Arc::clone(&budget));
    q.start().expect("start");
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 0, 1), Some(budget.take(1)));
    entered_rx.recv_timeout(WAIT).expect("ms_dispatch holds message 0");
    for tid in 1..=10u64 {
        q.enqueue(&TestConn(1 + tid % 2), msg(1, PRIO_DEFAULT, tid, 1), Some(budget.take(1)));
    }
    q.local_delivery(&TestConn(3), msg(1, PRIO_DEFAULT, 11, 1));
    q.enqueue_event(QueueEvent::Reset(TestConn(1)));
    q.enqueue_event(QueueEvent::Reset(TestConn(2)));
    let stopper = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || q.shutdown(ShutdownMode::Discard))
    };
    // The messages go at once; only message 0, inside ms_dispatch, holds budget.
    wait_until(|| q.counters().messages == 0 && budget.current() == 1);
    assert_eq!(q.counters().events, 2, "the events wait for the dispatch thread");
    q.enqueue_event(QueueEvent::Reset(TestConn(4)));
    assert_eq!(q.counters().events, 2, "an event after the shutdown is refused");
    assert!(rx.try_recv().is_err(), "nothing delivered while ms_dispatch runs");
    open_tx.send(()).expect("gate");
    stopper.join().expect("shutdown returned");
    let seen: Vec<Seen> = rx.try_iter().collect();
    assert_eq!(
        seen,
        [Seen::Reset { who: "r", conn: 1 }, Seen::Reset { who: "r", conn: 2 }],
        "the queued events, in order, before shutdown returned; no message"
    );
    let k = q.counters();
    assert_eq!((k.dispatched, k.discarded, k.events_delivered, k.len), (1, 11, 2, 0));
    assert_eq!(budget.current(), 0);
}

/// A dispatcher may shut its own queue down without deadlocking on the join.
#[test]
fn shutdown_from_the_dispatch_thread_does_not_hang() {
    struct Stopper {
        q: parking_lot::Mutex<Option<Arc<DispatchQueue<TestConn>>>>,
        done: crossbeam_channel::Sender<()>,
    }
    impl Dispatcher<TestConn> for Stopper {
        fn ms_dispatch(&self, _c: &TestConn, _m: Message) -> Dispatched {
            if let Some(q) = self.q.lock().take() {
                q.shutdown(ShutdownMode::Discard);
                let _ = self.done.send(());
            }
            Dispatched::Taken
        }
    }
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    let stopper = Arc::new(Stopper { q: parking_lot::Mutex::new(None), done: tx });
    d.add_tail(Arc::clone(&stopper) as Arc<dyn Dispatcher<TestConn>>);
    let q = queue(&d);
    *stopper.q.lock() = Some(Arc::clone(&q));
    q.start().expect("start");
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 0, 0), None);
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 1, 0), None);
    rx.recv_timeout(WAIT).expect("dispatcher returned from shutdown");
    q.shutdown(ShutdownMode::Drain); // joins the now-exiting thread
    assert_eq!(q.counters().dispatched, 1);
}

#[test]
fn start_twice_is_an_error_and_shutdown_without_start_discards() {
    let d = Dispatchers::<TestConn>::new();
    let q = queue(&d);
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 0, 0), None);
    q.shutdown(ShutdownMode::Drain);
    assert_eq!(q.counters().discarded, 1);
    assert!(q.start().is_err());
    let q2 = queue(&d);
    q2.start().expect("start");
    assert!(q2.start().is_err());
    q2.shutdown(ShutdownMode::Discard);
}

#[test]
fn counters_report_length_and_oldest_age() {
    let d = Dispatchers::<TestConn>::new();
    let q = queue(&d);
    assert_eq!(q.counters().oldest_age, std::time::Duration::ZERO);
    q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, 0, 0), None);
    q.enqueue_event(QueueEvent::Accept(TestConn(1)));
    let k = q.counters();
    assert_eq!((k.len, k.messages, k.events), (2, 1, 1));
    let first = k.oldest_age;
    wait_until(|| q.counters().oldest_age > first);
    q.shutdown(ShutdownMode::Discard);
}

/// A message's age counts from its dispatch stamp (the worker reads the clock once for
/// a batch; the queue reads none of its own), and the oldest is found across
/// priorities, connections and the loopback lane.
#[test]
fn oldest_age_counts_from_dispatch_stamps_across_lanes() {
    let d = Dispatchers::<TestConn>::new();
    let q = queue(&d);
    let now = Instant::now();
    let stamped = |prio, tid, age_s| {
        let mut m = msg(1, prio, tid, 0);
        let at = now.checked_sub(Duration::from_secs(age_s)).expect("up for a minute");
        m.set_dispatch_stamp(at);
        m
    };
    q.enqueue(&TestConn(1), stamped(PRIO_HIGHEST, 1, 40), None);
    q.enqueue(&TestConn(2), stamped(PRIO_LOW, 2, 60), None);
    q.enqueue(&TestConn(2), stamped(PRIO_LOW, 3, 50), None);
    q.local_delivery(&TestConn(3), stamped(PRIO_DEFAULT, 4, 20));
    let age = q.counters().oldest_age;
    assert!(age >= Duration::from_secs(60) && age < Duration::from_secs(60) + WAIT, "{age:?}");
    assert_eq!(q.discard(2), 2);
    let age = q.counters().oldest_age;
    assert!(age >= Duration::from_secs(40) && age < Duration::from_secs(50), "{age:?}");
    assert_eq!(q.discard(1), 1);
    let age = q.counters().oldest_age;
    assert!(age >= Duration::from_secs(20) && age < Duration::from_secs(40), "{age:?}");
    q.shutdown(ShutdownMode::Discard);
}

/// Work that arrives while the idle dispatch thread spins is taken at once and without
/// the thread sleeping; a shutdown ends the spin rather than waiting it out.
#[test]
fn idle_spin_takes_new_work_without_sleeping_and_shutdown_ends_it() {
    // Far longer than WAIT: a spin that missed an arrival or a shutdown fails the test.
    const SPIN: Duration = Duration::from_secs(60);
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("a", tx)));
    let q = queue(&d);
    q.set_idle_spin(SPIN);
    q.start().expect("start");
    for tid in 0..50 {
        q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, tid, 0), None);
        let seen = rx.recv_timeout(WAIT).expect("dispatched during the spin");
        assert_eq!(dispatched(&seen), Some(("a", 1, 1, tid)));
    }
    assert_eq!(q.counters().sleeps, 0, "every message arrived while the thread spun");
    let asked = Instant::now();
    q.shutdown(ShutdownMode::Drain);
    assert!(asked.elapsed() < WAIT, "shutdown waited {:?} for the spin", asked.elapsed());
}

/// With no idle spin the thread sleeps as soon as the queue is empty, and a message
/// wakes it.
#[test]
fn without_idle_spin_the_thread_sleeps_and_a_message_wakes_it() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("a", tx)));
    let q = queue(&d);
    q.set_idle_spin(Duration::ZERO);
    q.start().expect("start");
    for tid in 0..3 {
        wait_until(|| q.counters().sleeps > tid);
        q.enqueue(&TestConn(1), msg(1, PRIO_DEFAULT, tid, 0), None);
        let seen = rx.recv_timeout(WAIT).expect("woken and dispatched");
        assert_eq!(dispatched(&seen), Some(("a", 1, 1, tid)));
    }
    q.shutdown(ShutdownMode::Drain);
}

/// Authorizer hooks: the first supplied authorizer wins; any rejection wins.
#[test]
fn authorizer_hooks() {
    struct Auth(Option<u32>, AuthVerdict);
    impl Dispatcher<TestConn> for Auth {
        fn ms_dispatch(&self, _c: &TestConn, m: Message) -> Dispatched {
            Dispatched::NotTaken(m)
        }
        fn ms_get_authorizer(&self, _peer: u8) -> Option<asyncmsgr_dispatch::Authorizer> {
            self.0.map(|p| asyncmsgr_dispatch::Authorizer { protocol: p, bytes: vec![p as u8] })
        }
        fn ms_verify_authorizer(&self, _c: &TestConn, _t: u8, _p: u32, _a: &[u8]) -> AuthVerdict {
            self.1.clone()
        }
    }
    let d = Dispatchers::<TestConn>::new();
    let c = TestConn(1);
    assert_eq!(d.verify_authorizer(&c, 4, 2, b"x"), AuthVerdict::Accept { reply: vec![] });
    d.add_tail(Arc::new(Auth(None, AuthVerdict::Accept { reply: vec![] })));
    d.add_tail(Arc::new(Auth(Some(2), AuthVerdict::Accept { reply: vec![9] })));
    d.add_tail(Arc::new(Auth(Some(1), AuthVerdict::Accept { reply: vec![8] })));
    assert_eq!(d.get_authorizer(4).map(|a| a.protocol), Some(2));
    assert_eq!(d.verify_authorizer(&c, 4, 2, b"x"), AuthVerdict::Accept { reply: vec![9] });
    d.add_tail(Arc::new(Auth(None, AuthVerdict::Reject)));
    assert_eq!(d.verify_authorizer(&c, 4, 2, b"x"), AuthVerdict::Reject);
}

/// The queue is bounded by the dispatch throttle: a worker that cannot get budget stops
/// reading and is resumed by its waker when the dispatch thread releases budget (no
/// polling). Ceph's dispatch throttle, without its 1 ms retry timer.
#[test]
fn dispatch_throttle_bounds_the_queue_and_resumes_the_worker() {
    const MAX: u64 = 1_000;
    const SIZE: usize = 100;
    const N: u64 = 500;
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("r", tx)));
    let budget = Throttle::new("dispatch", MAX);
    let q = DispatchQueue::new("bounded", Arc::clone(&d), Arc::clone(&budget));
    let worker = {
        let q = Arc::clone(&q);
        let budget = Arc::clone(&budget);
        std::thread::spawn(move || {
            // The worker's "event loop": its external-event channel.
            let (wake_tx, wake_rx) = unbounded::<()>();
            let mut stalls = 0u64;
            let conn = TestConn(1);
            for tid in 0..N {
                let wake_tx = wake_tx.clone();
                let waker = Box::new(move || {
                    let _ = wake_tx.send(());
                });
                let permit = match budget.acquire_or_wait(SIZE as u64, waker) {
                    Ok(p) => p,
                    Err(waiting) => {
                        stalls += 1;
                        wake_rx.recv_timeout(WAIT).expect("woken by a release");
                        waiting.try_take().expect("granted")
                    }
                };
                assert!(q.counters().messages as u64 * SIZE as u64 <= MAX);
                q.enqueue(&conn, msg(1, PRIO_DEFAULT, tid, SIZE), Some(permit));
            }
            stalls
        })
    };
    // Not started yet: the worker fills the budget and must stall.
    wait_until(|| budget.waiting() == 1);
    assert_eq!(q.counters().messages as u64, MAX / SIZE as u64);
    q.start().expect("start");
    let seen = recv_n(&rx, N as usize);
    let stalls = worker.join().expect("worker");
    q.shutdown(ShutdownMode::Drain);
    let tids: Vec<u64> = seen.iter().filter_map(|s| dispatched(s).map(|x| x.3)).collect();
    assert_eq!(tids, (0..N).collect::<Vec<_>>());
    assert_eq!(budget.current(), 0);
    let k = budget.counters();
    assert!(stalls >= 1);
    assert_eq!(k.wait, stalls);
    assert!(k.get_sum == N * SIZE as u64 && k.put_sum == k.get_sum);
}

/// A worker's read batch: `deliver_into` preprocesses and fast-dispatches at once but
/// only collects what is for the queue; `enqueue_batch` queues it in arrival order with
/// its budget, waking the sleeping dispatch thread once for the whole batch; after
/// shutdown a batch is dropped, counted and its budget released.
#[test]
fn deliver_into_collects_a_batch_that_enqueue_batch_queues_with_one_wakeup() {
    let (q, rx) = fast_tens_queue();
    q.set_idle_spin(Duration::ZERO);
    q.start().expect("start");
    wait_until(|| q.counters().sleeps > 0);
    let asleep = q.counters().sleeps;
    let budget = Throttle::new("budget", 1000);
    let conn = TestConn(3);
    let mut batch = ReadBatch::new();
    for tid in 0..20u64 {
        let ty = every_third_queued(tid);
        let permit = budget.try_acquire(10).expect("room");
        q.deliver_into(&conn, msg(ty, PRIO_DEFAULT, tid, 10), Some(permit), &mut batch);
    }
    assert_eq!(q.counters().fast_dispatched, 0, "counted when the batch is handed over");
    let queued_tids: Vec<u64> = (0..20).filter(|t| t % 3 == 0).collect();
    let before: Vec<Seen> = rx.try_iter().collect();
    assert!(before.iter().all(|s| dispatched(s).is_none()), "nothing queued before the hand-over");
    assert_eq!(before.iter().filter(|s| matches!(s, Seen::Fast { .. })).count(), 20 - 7);
    assert_eq!(batch.len(), queued_tids.len());
    assert_eq!(budget.current(), 10 * queued_tids.len() as u64, "the batch holds its budget");

    q.enqueue_batch(&conn, &mut batch);
    assert!(batch.is_empty());
    assert_eq!(q.counters().fast_dispatched, 20 - 7);
    let got: Vec<u64> =
        recv_n(&rx, queued_tids.len()).iter().filter_map(|s| dispatched(s).map(|x| x.3)).collect();
    assert_eq!(got, queued_tids, "dispatched in arrival order");
    wait_until(|| q.counters().sleeps > asleep);
    assert_eq!(q.counters().sleeps, asleep + 1, "one wakeup for the whole batch");
    assert_eq!(budget.current(), 0);

    q.shutdown(ShutdownMode::Drain);
    let permit = budget.try_acquire(10).expect("room");
    q.deliver_into(&conn, msg(11, PRIO_DEFAULT, 99, 10), Some(permit), &mut batch);
    q.enqueue_batch(&conn, &mut batch);
    assert!(batch.is_empty());
    assert_eq!(q.counters().discarded, 1);
    assert_eq!(budget.current(), 0, "a refused batch releases its budget");
}

/// A worker keeps its copy of the dispatcher chains in its `ReadBatch`: a dispatcher
/// added after the copy was made still sees the next message (fast or queued), and a
/// budget given through `deliver_into_with` is taken only for a message that is queued.
#[test]
fn a_read_batch_sees_dispatchers_added_after_its_first_message() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(arc(Recorder::new("slow", tx.clone())));
    let q = queue(&d);
    q.start().expect("start");
    let conn = TestConn(5);
    let budget = Throttle::new("budget", 1000);
    let mut batch = ReadBatch::new();
    let mut asked = 0;
    let mut charge = || {
        asked += 1;
        budget.try_acquire(10)
    };
    assert_eq!(
        q.deliver_into_with(&conn, msg(10, PRIO_DEFAULT, 1, 10), &mut charge, &mut batch),
        Delivery::Queued
    );
    // Added after the batch copied the chains: the next message must still reach it.
    let mut fast = Recorder::new("fast", tx);
    fast.fast = vec![10];
    fast.takes = Some(Vec::new());
    d.add_head(arc(fast));
    assert_eq!(
        q.deliver_into_with(&conn, msg(10, PRIO_DEFAULT, 2, 10), &mut charge, &mut batch),
        Delivery::Fast
    );
    assert_eq!(asked, 1, "no budget taken for the fast-dispatched message");
    assert_eq!(budget.current(), 10);
    q.enqueue_batch(&conn, &mut batch);
    // The fast dispatcher's preprocess and fast dispatch of tid 2, the queued tid 1.
    let seen = recv_n(&rx, 3);
    assert!(seen.iter().any(|s| matches!(s, Seen::Fast { conn: 5, tid: 2, .. })), "{seen:?}");
    assert!(seen.iter().any(|s| dispatched(s) == Some(("slow", 5, 10, 1))), "{seen:?}");
    wait_until(|| budget.current() == 0);
    q.shutdown(ShutdownMode::Drain);
}

/// With more than one fast dispatcher, every one preprocesses each message (head to
/// tail) and the first that wants it fast-dispatches it; the others never see it, and
/// one nobody wants goes to the queue. On both paths: a worker's read batch (its cached
/// chains) and a delivery without one. (One fast dispatcher takes a path of its own.)
#[test]
fn every_fast_dispatcher_preprocesses_and_the_first_that_wants_a_message_takes_it() {
    let (ta, ra) = unbounded();
    let (tb, rb) = unbounded();
    let d = Dispatchers::new();
    let mut a = Recorder::new("a", ta);
    a.fast = vec![10];
    let mut b = Recorder::new("b", tb);
    b.fast = vec![10, 12];
    d.add_tail(arc(a));
    d.add_tail(arc(b));
    // Not started: what is queued stays queued.
    let q = queue(&d);
    let conn = TestConn(3);
    let mut batch = ReadBatch::new();
    let mut kinds = Vec::new();
    for (tid, ty) in [(1, 10), (2, 12), (3, 11)] {
        kinds.push(q.deliver_into_with(&conn, msg(ty, PRIO_DEFAULT, tid, 0), || None, &mut batch));
    }
    for (tid, ty) in [(4, 10), (5, 12), (6, 11)] {
        kinds.push(q.deliver(&conn, msg(ty, PRIO_DEFAULT, tid, 0), None));
    }
    use Delivery::{Fast, Queued};
    assert_eq!(kinds, [Fast, Fast, Queued, Fast, Fast, Queued]);
    let saw = |rx: &Receiver<Seen>| -> (Vec<u64>, Vec<u64>) {
        let (mut pre, mut fast) = (Vec::new(), Vec::new());
        for s in rx.try_iter() {
            match s {
                Seen::Preprocess { conn: 3, tid } => pre.push(tid),
                Seen::Fast { conn: 3, tid, .. } => fast.push(tid),
                other => panic!("unexpected {other:?}"),
            }
        }
        (pre, fast)
    };
    assert_eq!(saw(&ra), (vec![1, 2, 3, 4, 5, 6], vec![1, 4]));
    assert_eq!(saw(&rb), (vec![1, 2, 3, 4, 5, 6], vec![2, 5]));
    q.enqueue_batch(&conn, &mut batch);
    assert_eq!(q.counters().messages, 2);
    q.shutdown(ShutdownMode::Discard);
}

/// Panics on messages with tid 0 and on the first reset; reports the rest.
struct PanicsOnce(crossbeam_channel::Sender<u64>);

impl Dispatcher<TestConn> for PanicsOnce {
    fn ms_dispatch(&self, _conn: &TestConn, m: Message) -> Dispatched {
        assert_ne!(m.tid(), 0, "a dispatcher bug");
        let _ = self.0.send(m.tid());
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, _conn: &TestConn) -> bool {
        panic!("a reset handler bug");
    }
}

/// A dispatcher that panics costs the message (or event) it was handling, not the
/// `ms_dispatch` thread: what is queued behind it is dispatched, every budget comes back,
/// and the panics are counted. Before, the thread died, and the queue kept every later
/// message and its budget for good.
#[test]
fn a_panicking_dispatcher_costs_its_message_not_the_thread() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(Arc::new(PanicsOnce(tx)));
    let budget = Throttle::new("dispatch", 100);
    let q = DispatchQueue::new("panics", Arc::clone(&d), Arc::clone(&budget));
    q.start().expect("start");
    let conn = TestConn(1);
    q.enqueue_event(QueueEvent::Reset(conn.clone()));
    for tid in 0..4u64 {
        let p = budget.try_acquire(10).expect("room");
        q.enqueue(&conn, msg(1, PRIO_DEFAULT, tid, 10), Some(p));
    }
    let got: Vec<u64> = (0..3).map(|_| rx.recv_timeout(WAIT).expect("dispatched")).collect();
    assert_eq!(got, [1, 2, 3]);
    let deadline = Instant::now() + WAIT;
    while budget.current() > 0 {
        assert!(Instant::now() < deadline, "{} bytes of budget held", budget.current());
        std::thread::yield_now();
    }
    assert_eq!(q.counters().panics, 2);
    q.shutdown(ShutdownMode::Drain);
}

/// Keeps every message it is given: sends it on.
struct Keeper(crossbeam_channel::Sender<Message>);

impl Dispatcher<TestConn> for Keeper {
    fn ms_dispatch(&self, _conn: &TestConn, m: Message) -> Dispatched {
        let _ = self.0.send(m);
        Dispatched::Taken
    }
}

/// A read batch's small messages, queued by `enqueue_batch`, are copied out of the read
/// buffer they were sliced from into chunks they share (one after the other in memory),
/// byte for byte; one kept by its dispatcher reads its payload still after the others
/// are gone and more batches were copied. Before, each got a buffer of its own.
#[test]
fn enqueue_batch_packs_small_payloads_out_of_the_read_buffer_and_a_kept_one_outlives_the_rest() {
    let (tx, rx) = unbounded();
    let d = Dispatchers::new();
    d.add_tail(Arc::new(Keeper(tx)));
    let q = queue(&d);
    q.set_compact_below(32 << 10);
    q.start().expect("start");
    let read = bytes::Bytes::from((0..64u32 << 10).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    let range = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
    let conn = TestConn(5);
    let batch_of = |from: usize| {
        let mut batch = ReadBatch::new();
        for i in 0..30 {
            let mut m = msg(11, PRIO_DEFAULT, i as u64, 0);
            m.set_data(read.slice(from + i * 100..from + i * 100 + 64));
            q.deliver_into(&conn, m, None, &mut batch);
        }
        q.enqueue_batch(&conn, &mut batch);
        recv_n(&rx, 30)
    };
    let got = batch_of(0);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.data(), &read.slice(i * 100..i * 100 + 64), "message {i}");
        assert!(!range.contains(&(m.data().as_ptr() as usize)), "still a slice of the read buffer");
    }
    let next_to_each_other = got
        .windows(2)
        .filter(|w| w[0].data().as_ptr() as usize + 64 == w[1].data().as_ptr() as usize)
        .count();
    // 1,920 bytes in chunks of at least 1 KiB, the first perhaps partly filled before.
    assert!(next_to_each_other >= 26, "{next_to_each_other} of 29 pairs packed together");
    let kept = got.into_iter().nth(17).expect("30 messages");
    for round in 1..20 {
        drop(batch_of(round * 3000));
    }
    assert_eq!(kept.data(), &read.slice(1700..1764));
    q.shutdown(ShutdownMode::Drain);
}
