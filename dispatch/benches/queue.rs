//! Enqueue → dispatch throughput of the DispatchQueue (messages/s), from 1 and 2
//! producer threads, each message charged to a 100 MiB dispatch throttle as the
//! messenger's workers do; plus the fast path for comparison. `handoff` hands over one
//! message at a time and waits for its dispatch (the queue runs dry after every
//! message, as under a request/reply load), with and without the idle spin: it shows
//! what a sleep and wake of the dispatch thread costs.
//!
//! Run: `cargo bench -p asyncmsgr-dispatch --bench queue -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncmsgr_dispatch::{
    ConnectionRef, DispatchQueue, Dispatched, Dispatcher, Dispatchers, ShutdownMode, Throttle,
    DEFAULT_DISPATCH_THROTTLE_BYTES, DEFAULT_IDLE_SPIN,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use protocol::message::PRIO_DEFAULT;
use protocol::Message;

#[derive(Clone)]
struct BenchConn(u64);

impl ConnectionRef for BenchConn {
    fn conn_id(&self) -> u64 {
        self.0
    }
}

/// Counts messages and reports when the expected number has arrived.
struct Counter {
    seen: AtomicU64,
    target: AtomicU64,
    done: Sender<()>,
    fast: bool,
}

impl Counter {
    fn count(&self) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.target.load(Ordering::Relaxed) {
            let _ = self.done.send(());
        }
    }
}

impl Dispatcher<BenchConn> for Counter {
    fn ms_dispatch(&self, _conn: &BenchConn, _msg: Message) -> Dispatched {
        self.count();
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, _conn: &BenchConn, _msg: Message) {
        self.count();
    }
}

struct Rig {
    queue: Arc<DispatchQueue<BenchConn>>,
    throttle: Arc<Throttle>,
    counter: Arc<Counter>,
    done: Receiver<()>,
}

fn rig(fast: bool) -> Rig {
    rig_with_spin(fast, DEFAULT_IDLE_SPIN)
}

fn rig_with_spin(fast: bool, spin: Duration) -> Rig {
    let (tx, rx) = bounded(1);
    let counter = Arc::new(Counter {
        seen: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        done: tx,
        fast,
    });
    let d = Dispatchers::new();
    d.add_tail(Arc::clone(&counter) as Arc<dyn Dispatcher<BenchConn>>);
    let throttle = Throttle::new("dispatch", DEFAULT_DISPATCH_THROTTLE_BYTES);
    let queue = DispatchQueue::new("bench", d, Arc::clone(&throttle));
    queue.set_idle_spin(spin);
    queue.start().expect("start dispatch thread");
    Rig { queue, throttle, counter, done: rx }
}

/// Sends `total` messages from `producers` threads and waits until all were dispatched.
fn run(rig: &Rig, producers: u64, total: u64) -> Duration {
    rig.counter.seen.store(0, Ordering::Relaxed);
    rig.counter.target.store(total, Ordering::Relaxed);
    let payload = Bytes::from_static(&[0u8; 64]);
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..producers {
            let share = total / producers + u64::from(p < total % producers);
            let payload = payload.clone();
            s.spawn(move || {
                let conn = BenchConn(p);
                for tid in 0..share {
                    let mut m = Message::new(1, payload.clone());
                    m.set_priority(PRIO_DEFAULT);
                    m.set_tid(tid);
                    let budget = rig.throttle.acquire(m.payload_len() as u64);
                    rig.queue.deliver(&conn, m, Some(budget));
                }
            });
        }
    });
    if total > 0 {
        rig.done.recv_timeout(Duration::from_secs(60)).expect("all dispatched");
    }
    start.elapsed()
}

/// Sends `total` messages one at a time, each after the previous one was dispatched.
/// The producer polls the count (yielding), so only the dispatch thread may sleep.
fn handoff(rig: &Rig, total: u64) -> Duration {
    rig.counter.seen.store(0, Ordering::Relaxed);
    rig.counter.target.store(u64::MAX, Ordering::Relaxed);
    let payload = Bytes::from_static(&[0u8; 64]);
    let conn = BenchConn(0);
    let start = Instant::now();
    for tid in 0..total {
        let mut m = Message::new(1, payload.clone());
        m.set_tid(tid);
        let budget = rig.throttle.acquire(m.payload_len() as u64);
        rig.queue.deliver(&conn, m, Some(budget));
        while rig.counter.seen.load(Ordering::Acquire) <= tid {
            std::thread::yield_now();
        }
    }
    start.elapsed()
}

fn bench_queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("enqueue_dispatch");
    g.throughput(Throughput::Elements(1));
    for producers in [1u64, 2] {
        let rig = rig(false);
        g.bench_function(format!("queued/{producers}_producers"), |b| {
            b.iter_custom(|iters| run(&rig, producers, iters))
        });
        rig.queue.shutdown(ShutdownMode::Drain);
    }
    let rig = rig(true);
    g.bench_function("fast_dispatch/1_producer", |b| b.iter_custom(|iters| run(&rig, 1, iters)));
    rig.queue.shutdown(ShutdownMode::Drain);
    for (name, spin) in [("idle_spin_0", Duration::ZERO), ("idle_spin_default", DEFAULT_IDLE_SPIN)]
    {
        let rig = rig_with_spin(false, spin);
        g.bench_function(format!("handoff/{name}"), |b| {
            b.iter_custom(|iters| handoff(&rig, iters))
        });
        let sleeps = rig.queue.counters().sleeps;
        let dispatched = rig.queue.counters().dispatched;
        rig.queue.shutdown(ShutdownMode::Drain);
        eprintln!(
            "handoff/{name}: {sleeps} sleeps of the dispatch thread for {dispatched} messages"
        );
    }
    g.finish();
}

criterion_group!(benches, bench_queue);
criterion_main!(benches);
