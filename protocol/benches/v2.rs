//! Messages per second through a pair of open msgr2 state machines, in memory (no
//! sockets): the protocol's own CPU cost of framing, crc or AES-GCM, parsing, seq/ack
//! bookkeeping, one way, 4 KiB messages. The same exchange as `benches/v1.rs`
//! (`testing::one_way`, `BATCH` messages an iteration, then the ACK back), for
//! comparison, with its cases:
//! - `reads` (the main cases): the receiver is fed as the messenger's driver feeds it
//!   ([`Delivery::Reads`], `carry_reads`: the write list through one reused 64 KiB read
//!   buffer, receive credit granted ahead of a burst).
//! - `pieces`: each piece of the write list handed over as a read of its own
//!   ([`Delivery::Pieces`], `carry_with_credit`), as every case of this bench was run
//!   before (with 1,000 messages an iteration): kept for comparison with those numbers.
//! - `lossy`: a `lossy_client` dialling a `stateless_server`, whose sender keeps no sent
//!   queue; `lossless`: two `lossless_peer`s.
//! - `v1 crc/lossless/reads (yardstick)`: the v1 machines' main case, as benches/v1.rs
//!   runs it.
//!
//! `cargo bench -p asyncmsgr-protocol --bench v2 -- --warm-up-time 1 --measurement-time 5`
//! (`examples/v1_one_way.rs ... v2` runs the same under callgrind.)
#![allow(clippy::unwrap_used, missing_docs)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::auth::ConMode;
use protocol::testing::{Delivery, OneWay, Pair};

/// Messages per iteration: 1 MiB of 4 KiB messages, as benches/v1.rs (see its module
/// docs for why).
const BATCH: u64 = 250;

// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn bench_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("v2_pair_one_way");
    // `None`: the v1 machines (crc on).
    for (name, mode, lossy, delivery) in [
        ("v1 crc/lossless/reads (yardstick)", None, false, Delivery::Reads),
        ("crc/lossless/reads", Some(ConMode::CRC), false, Delivery::Reads),
        ("crc/lossy/reads", Some(ConMode::CRC), true, Delivery::Reads),
        ("secure/lossless/reads", Some(ConMode::SECURE), false, Delivery::Reads),
        ("crc/lossless/pieces", Some(ConMode::CRC), false, Delivery::Pieces),
    ] {
        let open = match mode {
            Some(mode) => Pair::open_v2(Instant::now(), mode, lossy),
            None => Pair::open_v1(Instant::now(), true, lossy),
        };
        let mut case = OneWay::new(open, 4096);
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(BenchmarkId::new("4KiB", name), |bench| {
            bench.iter(|| assert_eq!(case.run(BATCH, delivery), BATCH));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_pair);
criterion_main!(benches);
