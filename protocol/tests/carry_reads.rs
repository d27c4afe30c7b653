//! `testing::carry_reads`, the delivery that feeds a machine as the messenger's driver
//! reads its socket: every byte written is handed over exactly once, in order, in reads
//! no larger than a chunk (or than the receiver's assembly buffer asked for), and every
//! message arrives intact, crc on, lossless and lossy.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor).
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{ack_back, carry_reads, Pair, Reads, READ_CHUNK};
use protocol::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A message whose front carries `id` and whose data is `len` bytes derived from it.
fn message(id: u32, len: usize) -> Message {
    let mut m = Message::new(2, Bytes::copy_from_slice(&id.to_le_bytes()));
    m.set_priority(PRIO_DEFAULT);
    let data: Vec<u8> =
        (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(id) as u8).collect();
    m.set_data(Bytes::from(data));
    m
}

fn concat<'a>(parts: impl Iterator<Item = &'a Bytes>) -> Vec<u8> {
    parts.flat_map(|b| b.iter().copied()).collect()
}

/// Sends rounds of messages of 0–200 KiB (mostly small, some past the direct-read
/// threshold) through `carry_reads` with reads of `chunk`, the ACK back after each round.
fn run(lossy: bool, chunk: usize, seed: u64) {
    let (mut p, a, b) = Pair::open_v1(Instant::now(), true, lossy);
    let now = p.now;
    let (ca, cb) = p.ends_mut(a, b);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut reads = Reads::recording(chunk);
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let mut id = 0u32;
    for _ in 0..6 {
        for _ in 0..rng.gen_range(1..40) {
            let len = match rng.gen_range(0..10) {
                0 => 0,
                1..=5 => rng.gen_range(1..5000),
                6..=7 => rng.gen_range(5000..65536),
                _ => rng.gen_range(65536..=200 << 10),
            };
            let m = message(id, len);
            id += 1;
            sent.push(m.clone());
            ca.send_message(m);
        }
        carry_reads(ca, cb, now, &mut reads, |m| got.push(m));
        assert_eq!(reads.pending(), 0, "everything written was read");
        ack_back(ca, cb, now, &mut Vec::new());
    }
    // Each byte written handed over once, in order.
    let written = concat(reads.written.iter());
    let read = concat(reads.log.iter().map(|r| &r.bytes));
    assert!(!written.is_empty());
    assert_eq!(read.len(), written.len(), "bytes read vs written");
    assert!(read == written, "the reads are not the stream written, in order");
    // Reads no larger than a chunk (a direct one: than the assembly buffer asked for).
    let (mut plain, mut direct) = (0, 0);
    for (i, r) in reads.log.iter().enumerate() {
        assert!(!r.bytes.is_empty(), "read {i} is empty");
        assert!(r.bytes.len() <= r.limit, "read {i}: {} > its limit {}", r.bytes.len(), r.limit);
        if r.direct {
            direct += 1;
        } else {
            plain += 1;
            assert!(r.limit <= chunk, "read {i}: limit {} > chunk {chunk}", r.limit);
        }
    }
    assert_eq!((plain, direct), (reads.reads, reads.direct_reads));
    assert!(direct > 0, "no 200 KiB payload was read straight into its buffer");
    // Most reads full: the socket holds a chunk's worth whenever the sender has it.
    let full = reads.log.iter().filter(|r| !r.direct && r.bytes.len() == chunk).count();
    assert!(full * 2 > plain as usize, "{full} of {plain} reads full");
    // Every message intact, in order.
    assert_eq!(got.len(), sent.len(), "messages delivered");
    for (s, g) in sent.iter().zip(&got) {
        assert_eq!(g.front(), s.front());
        assert!(g.data() == s.data(), "message {:?}'s data", s.front());
    }
}

#[test]
fn reads_of_a_chunk_carry_every_byte_once_in_order_lossless() {
    run(false, READ_CHUNK, 1);
}

#[test]
fn reads_of_a_chunk_carry_every_byte_once_in_order_lossy() {
    run(true, READ_CHUNK, 2);
}

// Reads shorter than most messages and not aligned to anything in them.
#[test]
fn short_odd_reads_carry_every_byte_once_in_order() {
    run(false, 3001, 3);
    run(true, 3001, 4);
}
