//! msgr v1 sessions whose messages are signed (a v1 authorizer with a challenge round
//! and a session signer): random cuts and reconnects of lossless sessions deliver
//! every message once, in order, each checked against the signer of the connection it
//! arrived on.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::testing::{node_config, numbered, numbers, Pair, TestAuthProvider};
use protocol::{Policy, ProtocolVersion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn signed_pair(p0: Policy, p1: Policy) -> Pair {
    let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
    let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
    c0.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
    c1.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
    Pair::with_configs(Instant::now(), ProtocolVersion::V1, c0, p0, c1, p1)
}

fn run(seed: u64, p0: Policy, p1: Policy) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = signed_pair(p0, p1);
    p.nodes[1].credit_ahead = rng.gen_bool(0.5);
    let mut r2 = SmallRng::seed_from_u64(seed.wrapping_mul(31));
    p.splitter = Some(Box::new(move |n| if r2.gen_bool(0.5) { n } else { r2.gen_range(1..=n) }));
    let n = rng.gen_range(1..40u32);
    let mut sent = 0;
    for _ in 0..300 {
        if sent < n && rng.gen_bool(0.5) {
            p.send(0, numbered(sent));
            sent += 1;
        }
        p.step();
        // Cuts only once the session opened: a cut in the first handshake may reset it.
        if p.nodes[0].opened > 0 && rng.gen_ratio(1, 10) {
            let live = p.live_links();
            if !live.is_empty() {
                let l = live[rng.gen_range(0..live.len())];
                p.cut(l);
            }
        }
        if rng.gen_ratio(1, 8) {
            p.run_for(Duration::from_millis(rng.gen_range(0..500)));
        }
    }
    while sent < n {
        p.send(0, numbered(sent));
        sent += 1;
    }
    p.run_for(Duration::from_secs(300));
    let got = numbers(&p.nodes[1].received);
    let bad: u64 = (0..2).map(|i| p.nodes[i].config.counters.values().bad_signatures).sum();
    assert_eq!(bad, 0, "seed {seed}: bad signatures on honest peers");
    if p.nodes[0].remote_resets == 0 && p.nodes[1].remote_resets == 0 {
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "seed {seed}");
    } else {
        assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {got:?}");
    }
}

#[test]
fn signed_lossless_sessions_replay_once_in_order_across_cuts() {
    for seed in 0..300 {
        run(seed, Policy::lossless_client(), Policy::stateful_server());
        run(seed, Policy::lossless_peer(), Policy::lossless_peer());
    }
}

/// A flipped bit anywhere in the message a client sends on a signed lossless session:
/// whatever it hits (header, payload, crc or signature), the message arrives once; a
/// flipped signature bit is a bad signature, counted, and never dispatched.
#[test]
fn a_flipped_bit_anywhere_in_a_signed_message_delivers_it_once() {
    let total = {
        let mut p = signed_pair(Policy::lossless_client(), Policy::stateful_server());
        p.send(0, numbered(7));
        p.run_for(Duration::from_secs(5));
        assert_eq!(numbers(&p.nodes[1].received), [7]);
        p.links.iter().map(|l| l.sent[1]).sum::<u64>()
    };
    // The message is the last thing the client sends: tag, header, front, footer.
    let frame = (1 + 53 + numbered(7).front().len() + 21) as u64;
    let mut bad_sigs = 0;
    for off in total - frame..total {
        let mut p = signed_pair(Policy::lossless_client(), Policy::stateful_server());
        p.tamper = Some((1, off, 0x10));
        p.send(0, numbered(7));
        p.run_for(Duration::from_secs(120));
        assert_eq!(numbers(&p.nodes[1].received), [7], "offset {off}: {:?}", p.nodes[1].log);
        bad_sigs += p.nodes[1].config.counters.values().bad_signatures;
    }
    assert!(bad_sigs >= 8, "the signature's bits were never hit: {bad_sigs} of {total}");
}
