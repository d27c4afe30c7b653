//! Mutation fuzzing of HANDSHAKES on the in-memory [`Pair`] network: while a link's
//! handshake runs (until both its ends are open), the bytes of one or both directions
//! are mutated (bits flipped, byte ranges inserted, deleted or duplicated, earlier
//! chunks or whole writes of the link replayed, writes of an older link of the pair
//! replayed, writes dropped, held back and spliced, fields overwritten with extreme
//! values, the rest of a link swallowed), over msgr v1 (plain and with authorizers),
//! msgr2 crc (auth none and the test auth) and msgr2 secure. Meanwhile the program
//! sends both ways, cuts links (the reconnect handshakes of lossless sessions), races
//! connects, rewinds global_seqs (RETRY_GLOBAL) and lets the clock run past the
//! handshake timeout: the banners, v1 CONNECT/CONNECT_REPLY (RETRY_SESSION,
//! RETRY_GLOBAL, RESETSESSION, WAIT, authorizers), msgr2 HELLO, AUTH_*, the idents and
//! SESSION_RECONNECT and its answers are all mutated.
//!
//! Held on every run: no panic; no livelock (the pair's step bound) and no hang (a
//! watchdog); the bytes a machine holds stay bounded; each node receives each peer's
//! messages in strictly increasing order within a session (a reported reset, remote
//! reset or refusal starts a new one). Once the mutation stops, without any cut, every
//! handshake left ends on its own (opens or faults: no endpoint is left on a link
//! without being open), and on lossless policies what was sent since arrives unless a
//! session end was reported since. In secure mode (everything after the banner is
//! signed or sealed) everything ever sent arrives exactly once, unless a session end
//! was reported. msgr v1's handshake and msgr2 crc mode's frames after AUTH_DONE carry
//! no authentication (a rewritten ack or connect_seq is a peer no one can tell from a
//! real one), so in crc mode only what was sent after the mutation stopped must arrive,
//! and over msgr v1 (whose handshake carries the peer's address unprotected: a mutated
//! one is a second peer, a second session) only no panic, no stall and the bounds hold.
//!
//! `MUT_SEED` (base seed) and `MUT_RUNS` (runs per mode) run it longer; `MUT_ONE=<mode
//! 0-4>:<seed>` runs one (with `MUT_DEBUG` for traces).

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

mod common;

use std::time::{Duration, Instant};

use common::mutation::{
    check_held, check_in_flight, check_not_stuck, dump, dumper, random_message, reports, start,
    Fuzzer, OrderCheck, Outcome, Sizes, NODE1_IDS, OPS,
};
use protocol::testing::{numbers, Pair};
use protocol::{GlobalSeq, Policy};
use rand::rngs::SmallRng;
use rand::Rng;

/// The handshake flavours fuzzed: every setup of the pair.
use common::mutation::Setup as Mode;

const MODES: [Mode; 5] = [Mode::V1, Mode::V1Authorizers, Mode::CrcNone, Mode::Crc, Mode::Secure];

/// The messages sent: up to ~70 KiB.
const SIZES: Sizes = Sizes { front: 4000, data: 70_000, front_and_data: false };

/// The most a machine may hold for what it receives: the largest message sent (~70 KiB,
/// see [`SIZES`]) and a read on top of it, with room to spare. A mutated length (of a
/// frame, an auth payload, an authorizer) must not make it allocate what the peer
/// announced.
const HELD_BOUND: usize = 256 << 10;

/// The most bytes in flight on the network at once (everything sent, twice over, and the
/// handshakes): what a mutated handshake makes a machine write must stay bounded too.
const IN_FLIGHT_BOUND: usize = 8 << 20;

const POLICIES: [(Policy, Policy); 5] = [
    (Policy::lossless_client(), Policy::stateful_server()),
    (Policy::lossless_peer(), Policy::lossless_peer()),
    (Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse()),
    (Policy::lossless_peer(), Policy::lossless_peer_reuse()),
    (Policy::lossy_client(), Policy::stateless_server()),
];

/// This fuzzer: every kind of mutation, the stale write only in secure mode (see
/// [`common::mutation::Mutation::stale_writes`]), with the last 32 writes kept for
/// replays.
const FUZZER: Fuzzer<Mode> = Fuzzer {
    name: "handshake_mutation",
    default_seed: 0x4a4d5348,
    modes: &MODES,
    policies: &POLICIES,
    ops: OPS.len(),
    history: 32,
    kinds: |mode| if mode == Mode::Secure { OPS.len() } else { OPS.len() - 1 },
    rare: 3,
    run,
};

fn check_bounds(ctx: &str, p: &Pair, dump: impl Fn()) {
    check_held(ctx, p, HELD_BOUND, &dump);
    check_in_flight(ctx, p, IN_FLIGHT_BOUND, &dump);
}

/// One run: a program of sends, steps, cuts, races, rewinds and clock runs while the
/// handshakes are mutated; then, with the mutation stopped and no cut, everything
/// settles on its own; then the checks.
fn run(seed: u64, mode: Mode, p0: Policy, p1: Policy) -> Outcome {
    let (mut rng, mut p) = start(seed, mode, p0, p1);
    p.mutate_handshakes_only = true;
    let mut m = FUZZER.mutation(seed);
    m.active = true;
    m.toward = match rng.gen_range(0..3) {
        0 => [true, false],
        1 => [false, true],
        _ => [true, true],
    };
    m.rate = [0.05, 0.2, 0.5, 1.0][rng.gen_range(0..4)];
    m.stale_writes = mode == Mode::Secure;
    let mutation = m.install(&mut p);
    let ctx = format!("seed {seed} {mode:?} {p0:?}/{p1:?}");
    let lossless = !p0.lossy && !p1.lossy;
    // msgr v1's handshake carries the peer's address, connect_seq and acked seq with no
    // checksum: a mutated address is another peer (a second session, whose replays
    // duplicate the first's), a mutated ack loses messages. Only the liveness
    // properties hold there.
    let v1 = matches!(mode, Mode::V1 | Mode::V1Authorizers);

    // A server never dials: it sends while it has the session.
    let may_send = |p: &Pair, node: usize| {
        let policy = if node == 0 { p0 } else { p1 };
        !policy.server || p.session_ep(node).is_some()
    };
    let mut sent = [0u32; 2];
    let send = |p: &mut Pair, rng: &mut SmallRng, sent: &mut [u32; 2], node: usize| {
        if may_send(p, node) {
            let base = if node == 0 { 0 } else { NODE1_IDS };
            p.send(node, random_message(rng, base + sent[node], &SIZES));
            sent[node] += 1;
        }
    };
    let mut order = OrderCheck::default();
    let rounds = rng.gen_range(10..120);
    for _ in 0..rounds {
        match rng.gen_range(0..24) {
            0..=5 => send(&mut p, &mut rng, &mut sent, 0),
            6..=8 => send(&mut p, &mut rng, &mut sent, 1),
            9..=14 => {
                p.step();
            }
            15 | 16 => p.run_for(Duration::from_millis(rng.gen_range(0..2000))),
            // Past the handshake timeout (10 s) and the reconnect backoff.
            17 => p.run_for(Duration::from_millis(rng.gen_range(5000..30_000))),
            18 => {
                // A cut: the reconnect handshake of a lossless session (or a new one).
                let live = p.live_links();
                if !live.is_empty() {
                    p.cut(live[rng.gen_range(0..live.len())]);
                }
            }
            19 => p.cut_all(),
            20 => {
                // A stale global_seq (as after a restart of the counter): RETRY_GLOBAL.
                let node = rng.gen_range(0..2);
                let g = rng.gen_range(0..4);
                p.nodes[node].config.global_seq.set(GlobalSeq(g));
            }
            21 => {
                // Both sides dial: a race (WAIT, or the msgr2 resolution).
                let node = rng.gen_range(0..2);
                let policy = if node == 0 { p0 } else { p1 };
                if p.session_ep(node).is_none() && !policy.server {
                    p.connect(node);
                }
            }
            _ => {
                send(&mut p, &mut rng, &mut sent, 0);
                send(&mut p, &mut rng, &mut sent, 1);
                p.step();
            }
        }
        check_bounds(&ctx, &p, dumper(&p, &mutation));
        if !v1 {
            order.check(&ctx, &p, dumper(&p, &mutation));
        }
    }

    // Stop mutating. No cut: a handshake the mutation left stuck must end on its own.
    mutation.borrow_mut().stop();
    let reports_at_stop = reports(&p);
    let after = sent;
    send(&mut p, &mut rng, &mut sent, 0);
    p.run_for(Duration::from_secs(300));
    check_bounds(&ctx, &p, dumper(&p, &mutation));
    if !v1 {
        order.check(&ctx, &p, dumper(&p, &mutation));
    }
    // A server may hold node 1's messages in standby until the client is back.
    send(&mut p, &mut rng, &mut sent, 1);
    send(&mut p, &mut rng, &mut sent, 0);
    p.run_for(Duration::from_secs(300));
    check_bounds(&ctx, &p, dumper(&p, &mutation));
    if !v1 {
        order.check(&ctx, &p, dumper(&p, &mutation));
    }

    // No stall: every endpoint still on a link got through its handshake.
    check_not_stuck(&ctx, &p, dumper(&p, &mutation));

    let m = mutation.borrow();
    let ctx = format!("{ctx} counts {:?}", m.counts);
    let got = [numbers(&p.nodes[0].received), numbers(&p.nodes[1].received)];
    let reset = reports(&p) > 0;
    if lossless && !v1 {
        for node in 0..2 {
            let peer = 1 - node;
            let base = if node == 0 { 0 } else { NODE1_IDS };
            let from = if mode == Mode::Secure {
                if reset {
                    continue;
                }
                0
            } else {
                if reports(&p) != reports_at_stop {
                    continue;
                }
                after[node]
            };
            let missing: Vec<u32> =
                (base + from..base + sent[node]).filter(|id| !got[peer].contains(id)).collect();
            if !missing.is_empty() {
                dump(&p, &m);
                panic!("{ctx}: node {peer} never got {missing:?}: {:?}", got[peer]);
            }
        }
    }
    Outcome { reset, counts: m.counts.clone(), links: Some(p.links.len()) }
}

#[test]
fn mutated_v1_handshakes_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::V1);
}

#[test]
fn mutated_v1_authorizer_handshakes_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::V1Authorizers);
}

#[test]
fn mutated_msgr2_auth_none_handshakes_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::CrcNone);
}

#[test]
fn mutated_msgr2_crc_handshakes_never_panic_stall_or_reorder() {
    FUZZER.test(Mode::Crc);
}

#[test]
fn mutated_msgr2_secure_handshakes_lose_nothing() {
    FUZZER.test(Mode::Secure);
}

/// Runs one seed of one mode (`MUT_ONE=<mode 0-4>:<seed>`), with `MUT_DEBUG` for traces.
#[test]
fn one() {
    FUZZER.one();
}

/// Runs `p` on for 300 s (past any backoff) and checks the session opened again: node 0
/// got `expect` (or a reset was told), one link at most, and node 1 was told to retry its
/// global_seq (`what`) a few times at most, not for ever.
#[track_caller]
fn assert_not_wedged(p: &mut Pair, expect: &[u32], what: &str) {
    p.run_for(Duration::from_secs(300));
    let got = protocol::testing::numbers(&p.nodes[0].received);
    let told = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    assert!(told || got == expect, "node 0 got {got:?}: {:?}", p.nodes[1].log);
    assert!(p.live_links().len() <= 1, "{} links: reconnecting forever", p.live_links().len());
    let retries = p.nodes[1].config.counters.values().retry_global;
    assert!(retries < 5, "{retries} {what}s: {:?}", p.nodes[0].log);
}

/// Found by this fuzzer (msgr v1, seed 107787): one CONNECT whose global_seq got its
/// top bit flipped (0x8000_0001: past `GLOBAL_SEQ_PLAUSIBLE`) was taken as the peer's
/// global_seq. Every later CONNECT of the session was answered RETRY_GLOBAL to it, which
/// the connector refuses as implausible: the lossless session reconnected forever and
/// never delivered again, with no reset reported to either side.
#[test]
fn v1_connect_with_implausible_global_seq_does_not_wedge_the_session() {
    let mut p = Pair::v1(Instant::now(), Policy::stateful_server(), Policy::lossless_client());
    p.max_steps = 20_000;
    // Toward node 0: banner (9), node 1's legacy address (136), then CONNECT, whose
    // global_seq (a u32 after features and host_type) ends at byte 16.
    p.tamper = Some((0, 9 + 136 + 15, 0x80));
    p.send(1, protocol::testing::numbered(0));
    p.run_for(Duration::from_secs(30));
    p.cut_all();
    p.send(1, protocol::testing::numbered(1));
    assert_not_wedged(&mut p, &[0, 1], "RETRY_GLOBAL");
}

/// msgr2's acceptor took a CLIENT_IDENT's global_seq past `GLOBAL_SEQ_PLAUSIBLE` as the
/// peer's, as v1's did (see above): every later SESSION_RECONNECT of the session was
/// answered SESSION_RETRY_GLOBAL to it, which the connector refuses as implausible, and
/// the session never opened again.
#[test]
fn v2_ident_with_implausible_global_seq_does_not_wedge_the_session() {
    let mut p = Pair::v2(Instant::now(), Policy::stateful_server(), Policy::lossless_client());
    p.max_steps = 20_000;
    // Node 1's counter says 0x8000_0000 for one connection, then is back to normal.
    p.nodes[1].config.global_seq.set(GlobalSeq(0x8000_0000));
    p.send(1, protocol::testing::numbered(0));
    p.run_for(Duration::from_secs(30));
    p.nodes[1].config.global_seq.set(GlobalSeq(0));
    p.cut_all();
    p.send(1, protocol::testing::numbered(1));
    assert_not_wedged(&mut p, &[0, 1], "SESSION_RETRY_GLOBAL");
}

/// Found by this fuzzer (msgr v1 with authorizers, seed 9048562): the same wedge from the
/// other side. A CONNECT_REPLY whose global_seq got its top bit flipped was kept by the
/// connector as its peer's global_seq; when the peer then dialled (a lossless peer
/// reconnecting), it was answered RETRY_GLOBAL to it, refused it, and so on for ever.
#[test]
fn v1_connect_reply_with_implausible_global_seq_does_not_wedge_the_session() {
    let mut p = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.max_steps = 20_000;
    // Toward node 0 (the connector): banner (9), node 1's address (136), node 0's address
    // as seen (136), then CONNECT_REPLY: tag (1), features (8), global_seq (u32).
    p.tamper = Some((0, 9 + 136 + 136 + 1 + 8 + 3, 0x80));
    p.send(0, protocol::testing::numbered(0));
    p.run_for(Duration::from_secs(30));
    p.cut_all();
    // Node 1 dials now: its reconnect meets node 0's session.
    p.send(1, protocol::testing::numbered(1_000_000));
    assert_not_wedged(&mut p, &[1_000_000], "RETRY_GLOBAL");
}

/// msgr2's connector kept a SERVER_IDENT's global_seq past `GLOBAL_SEQ_PLAUSIBLE` as its
/// peer's, as v1's did with a CONNECT_REPLY's (see above): the peer's own reconnects were
/// then answered SESSION_RETRY_GLOBAL to it, refused, for ever.
#[test]
fn v2_server_ident_with_implausible_global_seq_does_not_wedge_the_session() {
    let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.max_steps = 20_000;
    // Node 1's counter says 0x8000_0000 for the connection it accepts, then is back to normal.
    p.nodes[1].config.global_seq.set(GlobalSeq(0x8000_0000));
    p.send(0, protocol::testing::numbered(0));
    p.run_for(Duration::from_secs(30));
    p.nodes[1].config.global_seq.set(GlobalSeq(0));
    p.cut_all();
    p.send(1, protocol::testing::numbered(1_000_000));
    assert_not_wedged(&mut p, &[1_000_000], "SESSION_RETRY_GLOBAL");
}
