//! Messages per second through a pair of open v1 state machines, in memory (no sockets):
//! the protocol's own CPU cost of framing, crc, parsing, seq/ack bookkeeping. The
//! receiver is driven as the messenger's driver drives it (`credit`: receive credit
//! granted ahead for a burst), and, for comparison, with one budget request per message.
//!
//! `cargo bench -p asyncmsgr-protocol --bench v1 -- --warm-up-time 1 --measurement-time 5`
#![allow(clippy::unwrap_used, missing_docs)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{carry, carry_with_credit, Pair};
use protocol::{Connection, Message, Policy, ProtocolVersion};

const BATCH: u64 = 1000;

/// Sends `BATCH` messages from `a` to `b`; returns how many `b` delivered.
fn one_way(
    a: &mut Connection,
    b: &mut Connection,
    msg: &Message,
    credit: bool,
    now: Instant,
    segs: &mut Vec<Bytes>,
) -> u64 {
    for _ in 0..BATCH {
        a.send_message(msg.clone());
    }
    let mut got = 0;
    if credit {
        let _ = carry_with_credit(a, b, now, segs, |_| got += 1);
    } else {
        let _ = carry(a, b, now, segs, |_| got += 1);
    }
    // The batched ACK back, so the sender's unacked queue stays bounded.
    segs.clear();
    b.poll_transmit(segs);
    for s in segs.drain(..) {
        a.handle_bytes(now, s);
    }
    while a.poll_event().is_some() {}
    got
}

// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn bench_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("v1_pair_one_way");
    for (name, policy, crc, credit) in [
        ("crc/lossless/credit", Policy::lossless_peer(), true, true),
        ("crc/lossy/credit", Policy::lossy_client(), true, true),
        ("crc/lossless/budget-per-message", Policy::lossless_peer(), true, false),
        ("crc/lossy/budget-per-message", Policy::lossy_client(), true, false),
        ("nocrc/lossless/credit", Policy::lossless_peer(), false, true),
    ] {
        let base = Pair::v1(Instant::now(), policy, Policy::lossless_peer());
        let mut c0 = (*base.nodes[0].config).clone();
        let mut c1 = (*base.nodes[1].config).clone();
        for c in [&mut c0, &mut c1] {
            c.crc_header = crc;
            c.crc_data = crc;
        }
        let v1 = ProtocolVersion::V1;
        let mut p = Pair::with_configs(base.now, v1, c0, policy, c1, Policy::lossless_peer());
        let a = p.connect(0);
        p.drive();
        let b = p.session_ep(1).unwrap();
        assert!(p.eps[a].conn.is_open() && p.eps[b].conn.is_open());
        let (lo, hi) = p.eps.split_at_mut(b);
        let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
        let now = p.now;
        let mut msg = Message::new(2, Bytes::from(vec![0xa5u8; 4096]));
        msg.set_priority(PRIO_DEFAULT);
        let mut segs = Vec::new();
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(BenchmarkId::new("4KiB", name), |bench| {
            bench.iter(|| assert_eq!(one_way(ca, cb, &msg, credit, now, &mut segs), BATCH));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pair);
criterion_main!(benches);
