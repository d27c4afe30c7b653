//! Round trips through a pair of open v1 state machines in memory: windows of `depth`
//! requests of `size` bytes one way, as many empty replies back. A fixed amount of
//! work with no clock or thread in it, for an instruction count of the protocol's share
//! of a round trip:
//!
//! `cargo build --release --example v1_round_trips -p asyncmsgr-protocol` then
//! `valgrind --tool=callgrind target/release/examples/v1_round_trips 64 128 2000`
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

extern crate asyncmsgr_protocol as protocol;

use std::time::Instant;

use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{carry, Pair};
use protocol::{Message, Policy};

#[allow(clippy::disallowed_methods)]
fn main() {
    let arg =
        |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (size, depth, windows) = (arg(1, 64), arg(2, 128), arg(3, 2000));
    // The benchmark's policies: a lossy client, a stateless server.
    let mut p = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    let a = p.connect(0);
    p.drive();
    // A stateless server keeps no session record: its endpoint is the accepted one.
    let b = p.eps.iter().position(|e| e.node == 1 && e.alive).unwrap();
    assert!(p.eps[a].conn.is_open() && p.eps[b].conn.is_open());
    let (lo, hi) = p.eps.split_at_mut(b);
    let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
    let now = p.now;
    let payload = Bytes::from(vec![0xa5u8; size]);
    let mut segs = Vec::new();
    let mut trips = 0u64;
    for w in 0..windows {
        for i in 0..depth {
            let mut m = Message::new(2, Bytes::new());
            m.set_priority(PRIO_DEFAULT);
            m.set_tid((w * depth + i) as u64);
            m.set_data(payload.clone());
            ca.send_message(m);
        }
        let mut requests = Vec::new();
        carry(ca, cb, now, &mut segs, |m| requests.push(m));
        assert_eq!(requests.len(), depth);
        for r in requests {
            let mut m = Message::new(3, Bytes::new());
            m.set_tid(r.tid());
            cb.send_message(m);
        }
        let mut replies = 0;
        carry(cb, ca, now, &mut segs, |_| replies += 1);
        assert_eq!(replies, depth);
        trips += replies as u64;
    }
    println!("{trips} round trips of {size} B, depth {depth}");
}
