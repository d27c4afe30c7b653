//! Micro-benchmarks: external-event round trip between two workers, submit_to from a
//! foreign thread, and timer insert+cancel throughput.
// criterion_group! generates a public fn without docs.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use asyncmsgr_event_center::{
    CenterHandle, EventCenter, TimerTarget, WorkerPool, WorkerPoolConfig,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Sender};

/// One round trip: `a` posts to `b`, `b` posts back to `a`; `left` more after this one.
fn ping(a: CenterHandle, b: CenterHandle, left: u64, done: Sender<()>) {
    if left == 0 {
        let _ = done.send(());
        return;
    }
    let b2 = b.clone();
    let _ = b.dispatch_event_external(move |_| {
        let a2 = a.clone();
        let _ = a.dispatch_event_external(move |_| ping(a2, b2, left - 1, done));
    });
}

fn external_round_trip(c: &mut Criterion) {
    let pool = WorkerPool::new(WorkerPoolConfig { workers: 2, ..WorkerPoolConfig::default() })
        .expect("pool");
    let (a, b) = (pool.handle(0).clone(), pool.handle(1).clone());
    let mut group = c.benchmark_group("external");
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip_two_workers", |bench| {
        bench.iter_custom(|iters| {
            let (done_tx, done_rx) = bounded(1);
            let start = Instant::now();
            let (a1, b1) = (a.clone(), b.clone());
            a.dispatch_event_external(move |_| ping(a1, b1, iters, done_tx)).expect("post");
            done_rx.recv().expect("chain finished");
            start.elapsed()
        })
    });
    group.bench_function("submit_to_from_foreign_thread", |bench| {
        bench.iter(|| a.submit_to(|cx| cx.center_id()).expect("submit"))
    });
    group.finish();
}

fn timers(c: &mut Criterion) {
    let mut center = EventCenter::new(0).expect("center");
    let mut group = c.benchmark_group("timers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_then_cancel", |bench| {
        bench.iter(|| {
            center.with_context(|cx| {
                let id =
                    cx.create_time_event(Duration::from_secs(5), TimerTarget::Fn(Box::new(|_| ())));
                cx.delete_time_event(id)
            })
        })
    });
    // With 10k timers already armed (a busy worker's keepalives), cost grows with log n.
    let armed: Vec<_> = center.with_context(|cx| {
        (0..10_000u64)
            .map(|i| {
                cx.create_time_event(
                    Duration::from_secs(60 + i % 600),
                    TimerTarget::Fn(Box::new(|_| ())),
                )
            })
            .collect()
    });
    group.bench_function("insert_then_cancel_with_10k_armed", |bench| {
        bench.iter(|| {
            center.with_context(|cx| {
                let id = cx
                    .create_time_event(Duration::from_secs(90), TimerTarget::Fn(Box::new(|_| ())));
                cx.delete_time_event(id)
            })
        })
    });
    group.finish();
    center.with_context(|cx| {
        for id in armed {
            cx.delete_time_event(id);
        }
    });
}

criterion_group!(benches, external_round_trip, timers);
criterion_main!(benches);
