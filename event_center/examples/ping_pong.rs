//! Two workers bounce N external events back and forth and report the rate.
//!
//! `cargo run --release -p asyncmsgr-event-center --example ping_pong -- [round_trips]`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use asyncmsgr_event_center::{CenterHandle, WorkerPool, WorkerPoolConfig};
use crossbeam_channel::{bounded, Sender};

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let round_trips: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 200_000,
    };
    let pool = WorkerPool::new(WorkerPoolConfig { workers: 2, ..WorkerPoolConfig::default() })?;
    let (a, b) = (pool.handle(0).clone(), pool.handle(1).clone());
    let (done_tx, done_rx) = bounded(1);
    let start = Instant::now();
    let (a1, b1) = (a.clone(), b.clone());
    a.dispatch_event_external(move |_| ping(a1, b1, round_trips, done_tx))?;
    done_rx.recv()?;
    let elapsed = start.elapsed();
    let secs = elapsed.as_secs_f64();
    println!(
        "{round_trips} round trips ({} events) in {elapsed:.2?}: {:.0} round trips/s, {:.2} us each",
        2 * round_trips,
        round_trips as f64 / secs,
        secs * 1e6 / round_trips as f64
    );
    println!("wakeups: worker 0 {}, worker 1 {}", a.wakeups(), b.wakeups());
    pool.shutdown();
    Ok(())
}
