//! Mutation fuzzing of OPEN sessions on the in-memory [`Pair`] network: once a session
//! is open, the byte stream of one direction is mutated (bits flipped, byte ranges
//! inserted, deleted or duplicated, earlier chunks of the stream replayed, two writes
//! spliced, fields overwritten with extreme values, the rest of a link swallowed),
//! while messages flow both ways, over msgr v1 (plain and signed), msgr2 crc and msgr2
//! secure mode.
//!
//! Held on every run: no panic; no livelock (the pair's step bound) and no hang (a
//! watchdog); the bytes a machine holds for the message it receives stay bounded; each
//! node receives each peer's messages in strictly increasing order within a session (a
//! reported reset, remote reset or refusal starts a new one). Once the mutation stops
//! and the links are cut, a lossless session recovers and delivers everything sent
//! since, unless a session end was reported; in secure mode, where no mutation passes
//! the GCM tags, everything ever sent arrives, and only a refusal (the msgr2 banner is
//! unprotected) may end a session. msgr v1 is mutated only on links whose handshake is
//! done (its handshake carries no checksum: a connect_seq rewritten to 0 is a peer
//! restart no one can tell from a real one).
//!
//! `MUT_SEED` (base seed) and `MUT_RUNS` (runs per mode) run it longer.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::mutation::{
    check_held, dump, dumper, random_message, reports, start, Fuzzer, OrderCheck, Outcome, Setup,
    Sizes, NODE1_IDS, OPS,
};
use protocol::testing::{numbers, Pair};
use protocol::Policy;
use rand::Rng;

/// The session flavours fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V1,
    V1Signed,
    Crc,
    Secure,
}

impl Mode {
    fn setup(self) -> Setup {
        match self {
            Mode::V1 => Setup::V1,
            Mode::V1Signed => Setup::V1Authorizers,
            Mode::Crc => Setup::Crc,
            Mode::Secure => Setup::Secure,
        }
    }
}

const MODES: [Mode; 4] = [Mode::V1, Mode::V1Signed, Mode::Crc, Mode::Secure];

/// The messages sent: up to ~300 KiB.
const SIZES: Sizes = Sizes { front: 8000, data: 300_000, front_and_data: true };

/// The most a machine may hold for the message it receives: the largest message sent
/// (~300 KiB, see [`SIZES`]) and a read on top of it, with room to spare. A mutated
/// length must not make it allocate what the peer announced.
const HELD_BOUND: usize = 512 << 10;

const POLICIES: [(Policy, Policy); 3] = [
    (Policy::lossless_client(), Policy::stateful_server()),
    (Policy::lossless_peer(), Policy::lossless_peer()),
    (Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse()),
];

/// This fuzzer: every kind of mutation but the stale write (of a write of an older link,
/// which the handshake fuzzer replays), with the last 64 writes kept for replays.
const FUZZER: Fuzzer<Mode> = Fuzzer {
    name: "open_mutation",
    default_seed: 0x0b5e55ed,
    modes: &MODES,
    policies: &POLICIES,
    ops: OPS.len() - 1,
    history: 64,
    kinds: |_| OPS.len() - 1,
    // The two rarest may not run in a few runs: splicing needs a held write and a next
    // one in the same direction.
    rare: 2,
    run,
};

/// The live links whose both ends are open (their handshake is done).
fn open_links(p: &Pair) -> HashSet<usize> {
    p.live_links()
        .into_iter()
        .filter(|&l| p.links[l].ends.iter().all(|&e| p.eps[e].alive && p.eps[e].conn.is_open()))
        .collect()
}

/// One run: open a session, mutate one direction while messages flow both ways, stop,
/// cut, heal, check.
fn run(seed: u64, mode: Mode, p0: Policy, p1: Policy) -> Outcome {
    let (mut rng, mut p) = start(seed, mode.setup(), p0, p1);
    let mut m = FUZZER.mutation(seed);
    m.toward[rng.gen_range(0..2)] = true;
    m.rate = [0.01, 0.05, 0.2, 0.5][rng.gen_range(0..4)];
    let mutation = m.install(&mut p);
    let ctx = format!("seed {seed} {mode:?} {p0:?}/{p1:?}");

    let (mut sent0, mut sent1) = (0u32, 0u32);
    // Open the session with a message each way.
    p.send(0, random_message(&mut rng, sent0, &SIZES));
    sent0 += 1;
    p.run_for(Duration::from_millis(100));
    if p.session_ep(1).is_some() {
        p.send(1, random_message(&mut rng, NODE1_IDS + sent1, &SIZES));
        sent1 += 1;
    }
    p.run_for(Duration::from_millis(100));
    assert!(p.nodes[0].opened > 0 && p.nodes[1].opened > 0, "{ctx}: not open");

    let mut order = OrderCheck::default();
    order.check(&ctx, &p, || {});
    mutation.borrow_mut().active = true;
    let rounds = rng.gen_range(20..400);
    for _ in 0..rounds {
        if rng.gen_bool(0.4) {
            p.send(0, random_message(&mut rng, sent0, &SIZES));
            sent0 += 1;
        }
        // A server never dials: it sends while it has the session.
        if rng.gen_bool(0.4) && (!p1.server || p.session_ep(1).is_some()) {
            p.send(1, random_message(&mut rng, NODE1_IDS + sent1, &SIZES));
            sent1 += 1;
        }
        if matches!(mode, Mode::V1 | Mode::V1Signed) {
            mutation.borrow_mut().only = Some(open_links(&p));
        }
        p.step();
        if rng.gen_ratio(1, 10) {
            p.run_for(Duration::from_millis(rng.gen_range(0..3000)));
        }
        check_held(&ctx, &p, HELD_BOUND, dumper(&p, &mutation));
        order.check(&ctx, &p, dumper(&p, &mutation));
    }

    // Stop mutating, cut, heal: what was sent arrives.
    mutation.borrow_mut().stop();
    p.cut_all();
    let after0 = sent0;
    p.send(0, random_message(&mut rng, sent0, &SIZES));
    sent0 += 1;
    p.run_for(Duration::from_secs(300));
    check_held(&ctx, &p, HELD_BOUND, dumper(&p, &mutation));
    order.check(&ctx, &p, dumper(&p, &mutation));
    // A server may hold node 1's messages in standby until the client is back.
    let after1 = sent1;
    if p.session_ep(1).is_some() || !p1.server {
        p.send(1, random_message(&mut rng, NODE1_IDS + sent1, &SIZES));
        sent1 += 1;
    }
    p.send(0, random_message(&mut rng, sent0, &SIZES));
    sent0 += 1;
    p.run_for(Duration::from_secs(300));
    check_held(&ctx, &p, HELD_BOUND, dumper(&p, &mutation));

    let m = mutation.borrow();
    dump(&p, &m);
    let got1 = numbers(&p.nodes[1].received);
    let got0 = numbers(&p.nodes[0].received);
    order.check(&ctx, &p, || {});
    let reset = reports(&p) > 0;
    let ctx = format!("{ctx} counts {:?}", m.counts);
    if mode == Mode::Secure {
        // Only the banner (before any frame, unprotected) can make a peer look
        // incompatible: a refusal, and the new session's reset of the peer's.
        let refused: usize = p.nodes.iter().map(|n| n.refused).sum();
        assert!(!reset || refused > 0, "{ctx}: a session reset in secure mode");
    }
    if !reset {
        // Everything sent after the mutation stopped arrives; in secure mode everything.
        let from = if mode == Mode::Secure { 0 } else { after0 };
        let missing: Vec<u32> =
            (from..sent0).filter(|id| got1.binary_search(id).is_err()).collect();
        assert!(missing.is_empty(), "{ctx}: node 1 never got {missing:?}: {got1:?}");
        let from = if mode == Mode::Secure { 0 } else { after1 };
        let missing: Vec<u32> = (NODE1_IDS + from..NODE1_IDS + sent1)
            .filter(|id| got0.binary_search(id).is_err())
            .collect();
        assert!(missing.is_empty(), "{ctx}: node 0 never got {missing:?}: {got0:?}");
    }
    Outcome { reset, counts: m.counts.clone(), links: None }
}

#[test]
fn mutated_open_v1_sessions_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::V1);
}

#[test]
fn mutated_open_signed_v1_sessions_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::V1Signed);
}

#[test]
fn mutated_open_msgr2_crc_sessions_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::Crc);
}

#[test]
fn mutated_open_msgr2_secure_sessions_lose_nothing() {
    FUZZER.test(Mode::Secure);
}

/// Runs one seed of one mode (`MUT_ONE=<mode 0-3>:<seed>`), with `MUT_DEBUG` for traces.
#[test]
fn one() {
    FUZZER.one();
}
