//! Messages per second through a pair of open v1 state machines, in memory (no sockets):
//! the protocol's own CPU cost of framing, crc, parsing, seq/ack bookkeeping, one way,
//! 4 KiB messages.
//!
//! What it models, case by case:
//! - `reads` (the main cases): the receiver is fed as the messenger's driver feeds it
//!   ([`carry_reads`]): the sender's write list goes through one reused 64 KiB read
//!   buffer (the copy stands for the kernel's into the driver's buffer, and is counted),
//!   each read handed over once, so most messages arrive whole and are split off without
//!   a copy; receive credit granted ahead of a burst, as the driver grants it.
//! - `pieces`: the same credit, but each piece of the write list handed over as a read of
//!   its own ([`carry_with_credit`]): a 4 KiB payload, sent by reference, then arrives
//!   without its footer and is copied into a buffer of its own (~1,000 instructions per
//!   message that the messenger's reads seldom cost). Kept for comparison with earlier
//!   numbers, which were all taken this way.
//! - `budget-per-message`: pieces, and one budget request per message (no credit).
//! - `lossy`: a lossy session (a `lossy_client` dialling a `stateless_server`: in v1 the
//!   acceptor's flag decides), whose sender keeps no sent queue; `lossless`: two
//!   `lossless_peer`s, whose sender keeps every message until the ACK.
//!
//! Each iteration sends `BATCH` messages, then carries the receiver's ACK back. `BATCH` is
//! about 1 MiB of messages: what the sender's driver frames per `poll_transmit` (the
//! protocol's 1 MiB transmit batch, also the driver's frame-ahead bound) and what the
//! receiver's driver reads per readiness event (`read_budget`, 1 MiB) before it flushes
//! the ACK. (1,000 per iteration, as before, is the most the messenger's driver lets into
//! the protocol unacked, `MAX_IN_PROTOCOL`, not the usual: with 1,000 unacked, the clones
//! outnumbered `pool_box`'s free list of 256 and 3 in 4 messages cost an allocation and
//! a free.)
//!
//! `cargo bench -p asyncmsgr-protocol --bench v1 -- --warm-up-time 1 --measurement-time 5`
//! (`examples/v1_one_way.rs` runs the same under callgrind.)
#![allow(clippy::unwrap_used, missing_docs)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{one_way, Delivery, Pair, Reads};
use protocol::Message;

/// Messages per iteration (see the module docs): 1 MiB of 4 KiB messages.
const BATCH: u64 = 250;

// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn bench_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("v1_pair_one_way");
    for (name, lossy, crc, delivery) in [
        ("crc/lossless/reads", false, true, Delivery::Reads),
        ("crc/lossy/reads", true, true, Delivery::Reads),
        ("nocrc/lossless/reads", false, false, Delivery::Reads),
        ("crc/lossless/pieces", false, true, Delivery::Pieces),
        ("crc/lossless/budget-per-message", false, true, Delivery::BudgetPerMessage),
    ] {
        let (mut p, a, b) = Pair::open_v1(Instant::now(), crc, lossy);
        let now = p.now;
        let (ca, cb) = p.ends_mut(a, b);
        let mut msg = Message::new(2, Bytes::from(vec![0xa5u8; 4096]));
        msg.set_priority(PRIO_DEFAULT);
        let mut segs = Vec::new();
        let mut reads = Reads::default();
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(BenchmarkId::new("4KiB", name), |bench| {
            bench.iter(|| {
                let got = one_way(ca, cb, &msg, BATCH, delivery, now, &mut reads, &mut segs);
                assert_eq!(got, BATCH);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pair);
criterion_main!(benches);
