//! Messages per second through a pair of open msgr2 state machines, in memory (no
//! sockets): the protocol's own CPU cost of framing, crc or AES-GCM, parsing, seq/ack
//! bookkeeping. The same exchange as `benches/v1.rs`, for comparison; the receiver is
//! driven as the messenger's driver drives it (receive credit granted ahead for a burst
//! of small messages, `carry_with_credit`).
//!
//! `cargo bench -p asyncmsgr-protocol --bench v2 -- --warm-up-time 1 --measurement-time 5`
#![allow(clippy::unwrap_used, missing_docs)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::auth::ConMode;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{ack_back, carry_with_credit, Pair};
use protocol::{Connection, Message, Policy};

/// Sends `batch` messages from `a` to `b`; returns how many `b` delivered.
fn one_way(
    a: &mut Connection,
    b: &mut Connection,
    msg: &Message,
    batch: u64,
    now: Instant,
    segs: &mut Vec<Bytes>,
) -> u64 {
    for _ in 0..batch {
        a.send_message(msg.clone());
    }
    let mut got = 0;
    let _ = carry_with_credit(a, b, now, segs, |_| got += 1);
    // The ACK back, so the sender's unacked queue stays bounded.
    ack_back(a, b, now, segs);
    got
}

// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn bench_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("v2_pair_one_way");
    for (size, label, batch) in [(4096usize, "4KiB", 1000u64), (1 << 20, "1MiB", 16)] {
        let mut msg = Message::new(2, Bytes::from(vec![0xa5u8; size]));
        msg.set_priority(PRIO_DEFAULT);
        // The same exchange through v1 machines (crc on, lossless), as the yardstick.
        let mut p1 = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
        let a = p1.connect(0);
        p1.drive();
        let b = p1.session_ep(1).unwrap();
        let (lo, hi) = p1.eps.split_at_mut(b);
        let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
        let now = p1.now;
        let mut segs = Vec::new();
        group.throughput(Throughput::Bytes(batch * size as u64));
        group.bench_function(BenchmarkId::new(label, "v1 crc/lossless (yardstick)"), |bench| {
            bench.iter(|| assert_eq!(one_way(ca, cb, &msg, batch, now, &mut segs), batch));
        });
        for (name, policy, mode) in [
            ("crc/lossless", Policy::lossless_peer(), ConMode::CRC),
            ("crc/lossy", Policy::lossy_client(), ConMode::CRC),
            ("secure/lossless", Policy::lossless_peer(), ConMode::SECURE),
        ] {
            let mut p =
                Pair::with_test_auth(Instant::now(), policy, Policy::lossless_peer(), &[mode]);
            let a = p.connect(0);
            p.drive();
            let b = p.session_ep(1).unwrap();
            assert!(p.eps[a].conn.is_open() && p.eps[b].conn.is_open());
            assert_eq!(p.eps[a].conn.con_mode(), Some(mode));
            let (lo, hi) = p.eps.split_at_mut(b);
            let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
            let now = p.now;
            let mut msg = Message::new(2, Bytes::from(vec![0xa5u8; size]));
            msg.set_priority(PRIO_DEFAULT);
            let mut segs = Vec::new();
            group.throughput(Throughput::Bytes(batch * size as u64));
            group.bench_function(BenchmarkId::new(label, name), |bench| {
                bench.iter(|| assert_eq!(one_way(ca, cb, &msg, batch, now, &mut segs), batch));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_pair);
criterion_main!(benches);
