//! Codec benchmarks: header encode/decode, crc32c throughput, 4 KiB message round trip.
//!
//! `cargo bench -p asyncmsgr-protocol --bench codec -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, missing_docs)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use protocol::message::{DecodeOptions, EncodeOptions, MessageDecoder, Progress};
use protocol::types::{EntityName, EntityType};
use protocol::wire::{ceph_crc32c, MsgHeader};
use protocol::Message;

fn header() -> MsgHeader {
    MsgHeader {
        seq: 42,
        tid: 7,
        msg_type: 17,
        priority: 127,
        version: 1,
        front_len: 4096,
        src: EntityName::new(EntityType::CLIENT, 4121),
        compat_version: 1,
        ..Default::default()
    }
}

fn bench_header(c: &mut Criterion) {
    let h = header();
    c.bench_function("header/encode_with_crc", |b| b.iter(|| black_box(h).with_crc().to_bytes()));
    let bytes = h.with_crc().to_bytes();
    // What the decoder does: the crc taken on the received bytes.
    c.bench_function("header/decode_checked", |b| {
        b.iter(|| MsgHeader::decode_checked(black_box(&bytes), true).unwrap().0)
    });
}

/// `ceph_crc32c` (what `protocol` uses) beside its two candidate kernels: the `crc32c`
/// crate (SSE4.2 `crc32` instruction, three streams) and `crc-fast` (carry-less multiply
/// folding, VPCLMULQDQ where the CPU has it), at a header (49 B), small, page, large
/// and bulk sizes.
fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [49, 64, 96, 128, 256, 1 << 10, 4 << 10, 64 << 10, 1 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("ceph_crc32c", size), &data, |b, d| {
            b.iter(|| ceph_crc32c(0, black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("crc32c-crate", size), &data, |b, d| {
            b.iter(|| !crc32c::crc32c_append(!0, black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("crc-fast", size), &data, |b, d| {
            b.iter(|| {
                let mut digest =
                    crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, 0);
                digest.update(black_box(d));
                digest.finalize() as u32 ^ !0
            })
        });
    }
    g.finish();
}

fn bench_message(c: &mut Criterion) {
    let mut m = Message::new(17, Bytes::from(vec![0x5au8; 4096]));
    m.set_version(1);
    let src = EntityName::new(EntityType::CLIENT, 4121);
    let opts = EncodeOptions::default();
    let mut g = c.benchmark_group("message_4k");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("encode", |b| b.iter(|| black_box(&m).encode_frame(1, src, &opts)));
    let mut wire = Vec::new();
    m.encode_frame(1, src, &opts).write_to(&mut wire);
    let body = Bytes::from(wire).slice(1..);
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            let mut input = body.clone();
            loop {
                match dec.feed(&mut input).unwrap() {
                    Progress::HeaderReady(_) => dec.proceed().unwrap(),
                    Progress::Message(m) => break m,
                    Progress::NeedMore => unreachable!(),
                }
            }
        })
    });
    g.bench_function("encode_decode", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(4200);
            m.encode_frame(1, src, &opts).write_to(&mut out);
            let mut input = Bytes::from(out).slice(1..);
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            loop {
                match dec.feed(&mut input).unwrap() {
                    Progress::HeaderReady(_) => dec.proceed().unwrap(),
                    Progress::Message(m) => break m,
                    Progress::NeedMore => unreachable!(),
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_header, bench_crc, bench_message);
criterion_main!(benches);
