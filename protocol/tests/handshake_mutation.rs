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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::auth::ConMode;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{node_config, Pair, TestAuthProvider};
use protocol::{GlobalSeq, Message, Policy, ProtocolVersion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The handshake flavours fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    V1,
    V1Authorizers,
    CrcNone,
    Crc,
    Secure,
}

const MODES: [Mode; 5] = [Mode::V1, Mode::V1Authorizers, Mode::CrcNone, Mode::Crc, Mode::Secure];

/// Ids of node 1's messages start here (node 0's at 0).
const NODE1_IDS: u32 = 1_000_000;

/// The largest read delivered at once (a driver's read buffer).
const READ: usize = 64 << 10;

/// The most a machine may hold for what it receives: the largest message sent (~70 KiB,
/// see [`random_message`]) and a read on top of it, with room to spare. A mutated length
/// (of a frame, an auth payload, an authorizer) must not make it allocate what the peer
/// announced.
const HELD_BOUND: usize = 256 << 10;

/// The most bytes in flight on the network at once (everything sent, twice over, and the
/// handshakes): what a mutated handshake makes a machine write must stay bounded too.
const IN_FLIGHT_BOUND: usize = 8 << 20;

fn pair(mode: Mode, p0: Policy, p1: Policy) -> Pair {
    let now = Instant::now();
    match mode {
        Mode::V1 => Pair::v1(now, p0, p1),
        Mode::V1Authorizers => {
            let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
            let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
            c0.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
            c1.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
            Pair::with_configs(now, ProtocolVersion::V1, c0, p0, c1, p1)
        }
        Mode::CrcNone => Pair::v2(now, p0, p1),
        Mode::Crc => Pair::with_test_auth(now, p0, p1, &[ConMode::CRC]),
        Mode::Secure => Pair::with_test_auth(now, p0, p1, &[ConMode::SECURE]),
    }
}

/// Message `id` with `extra` bytes of front after the id, and `data` bytes of data.
fn message(id: u32, extra: usize, data: usize) -> Message {
    let mut front = id.to_le_bytes().to_vec();
    front.resize(4 + extra, 0xa5);
    let mut m = Message::new(2, Bytes::from(front));
    if data > 0 {
        m.set_data(Bytes::from(vec![0x5a; data]));
    }
    m.set_priority(PRIO_DEFAULT);
    m
}

fn random_message(rng: &mut SmallRng, id: u32) -> Message {
    match rng.gen_range(0..20) {
        0 => message(id, rng.gen_range(0..4000), 0),
        1 => message(id, 0, rng.gen_range(1..70_000)),
        _ => message(id, rng.gen_range(0..32), 0),
    }
}

fn ids(received: &[Message]) -> Vec<u32> {
    received
        .iter()
        .map(|m| {
            m.front().get(..4).and_then(|b| b.try_into().ok()).map_or(u32::MAX, u32::from_le_bytes)
        })
        .collect()
}

/// What the mutator did, by kind (for the summary and for minimising).
const OPS: [&str; 12] = [
    "flip",
    "insert",
    "delete",
    "duplicate",
    "replay-chunk",
    "replay-write",
    "drop-write",
    "splice",
    "extreme",
    "swallow",
    "hold",
    "stale-write",
];

/// The mutator's state, shared with the run.
struct Mutation {
    rng: SmallRng,
    /// Mutate only while set.
    active: bool,
    /// The directions mutated: bytes travelling toward these nodes.
    toward: [bool; 2],
    /// Chance a write is mutated.
    rate: f64,
    /// The last writes on each link and direction (as written).
    history: HashMap<(usize, usize), VecDeque<Bytes>>,
    /// Writes of every link toward each node (for replays on a later link).
    stale: [VecDeque<Bytes>; 2],
    /// Replay writes of older links ("stale-write"): only where the handshake is
    /// authenticated end to end (secure mode). Elsewhere a stale CLIENT_IDENT or CONNECT
    /// is a forgery no one can tell from the peer's own retry (Ceph's "continuing
    /// session establishment" restarts the session's sequence numbers): a
    /// man-in-the-middle, not a peer.
    stale_writes: bool,
    /// Links whose further bytes are swallowed.
    swallowed: HashSet<(usize, usize)>,
    /// A write held back per link, spliced into or sent after the next.
    held: HashMap<(usize, usize), Bytes>,
    /// Count per kind of [`OPS`].
    counts: [u64; OPS.len()],
    /// Log of the mutations applied (when tracing).
    trace: Option<Vec<String>>,
}

/// Writes kept per link and direction for replays (and toward each node, for stale ones).
const HISTORY: usize = 32;

impl Mutation {
    fn apply(&mut self, link: usize, to: usize, off: u64, seg: Bytes) -> Bytes {
        if !self.active || !self.toward[to] {
            return seg;
        }
        let key = (link, to);
        if self.swallowed.contains(&key) {
            return Bytes::new();
        }
        let hist = self.history.entry(key).or_default();
        hist.push_back(seg.clone());
        if hist.len() > HISTORY {
            hist.pop_front();
        }
        let stale = &mut self.stale[to];
        stale.push_back(seg.clone());
        if stale.len() > HISTORY {
            stale.pop_front();
        }
        let held = self.held.remove(&key);
        if !self.rng.gen_bool(self.rate) {
            return match held {
                Some(h) => [h, seg].concat().into(),
                None => seg,
            };
        }
        let mut b = BytesMut::from(&seg[..]);
        if let Some(h) = held {
            // A held write goes now: after this one (reordered) or spliced into it.
            if self.rng.gen_bool(0.5) {
                b.extend_from_slice(&h);
            } else {
                let i = self.rng.gen_range(0..=h.len());
                let j = self.rng.gen_range(0..=b.len());
                let mut s = BytesMut::from(&h[..i]);
                s.extend_from_slice(&b[j..]);
                b = s;
                self.note(7, link, to, off, format!("splice held[..{i}] + write[{j}..]"));
            }
        }
        let n = self.rng.gen_range(1..=3);
        for _ in 0..n {
            let k = self.rng.gen_range(0..OPS.len());
            let len = b.len();
            let pos = self.rng.gen_range(0..=len);
            match k {
                0 if len > 0 => {
                    let p = pos.min(len - 1);
                    let x = 1u8 << self.rng.gen_range(0..8);
                    b[p] ^= x;
                    self.note(k, link, to, off, format!("flip {x:#x} at {p}/{len}"));
                }
                1 => {
                    let m = self.rng.gen_range(1..=16);
                    let ins: Vec<u8> = (0..m).map(|_| self.rng.gen()).collect();
                    let mut s = BytesMut::from(&b[..pos]);
                    s.extend_from_slice(&ins);
                    s.extend_from_slice(&b[pos..]);
                    b = s;
                    self.note(k, link, to, off, format!("insert {m} at {pos}/{len}"));
                }
                2 if pos < len => {
                    let m = self.rng.gen_range(1..=(len - pos).min(64));
                    let mut s = BytesMut::from(&b[..pos]);
                    s.extend_from_slice(&b[pos + m..]);
                    b = s;
                    self.note(k, link, to, off, format!("delete {m} at {pos}/{len}"));
                }
                3 if pos < len => {
                    let m = self.rng.gen_range(1..=(len - pos).min(256));
                    let mut s = BytesMut::from(&b[..pos + m]);
                    s.extend_from_slice(&b[pos..]);
                    b = s;
                    self.note(k, link, to, off, format!("duplicate {m} at {pos}/{len}"));
                }
                4 => {
                    // A piece of an earlier write of this link, anywhere.
                    let hist = &self.history[&key];
                    let w = &hist[self.rng.gen_range(0..hist.len())];
                    let a = self.rng.gen_range(0..=w.len());
                    let m = self.rng.gen_range(0..=(w.len() - a).min(512));
                    let chunk = w.slice(a..a + m);
                    let mut s = BytesMut::from(&b[..pos]);
                    s.extend_from_slice(&chunk);
                    s.extend_from_slice(&b[pos..]);
                    b = s;
                    self.note(k, link, to, off, format!("replay {m} of a write at {pos}/{len}"));
                }
                5 => {
                    // Whole earlier writes of this link, before or after this one.
                    let hist = &self.history[&key];
                    let first = self.rng.gen_range(0..hist.len());
                    let n = self.rng.gen_range(1..=3).min(hist.len() - first);
                    let chunk: Vec<u8> =
                        hist.range(first..first + n).flat_map(|w| w.iter().copied()).collect();
                    let at = if self.rng.gen_bool(0.5) { len } else { 0 };
                    let mut s = BytesMut::from(&b[..at]);
                    s.extend_from_slice(&chunk);
                    s.extend_from_slice(&b[at..]);
                    b = s;
                    let back = hist.len() - first;
                    let what = format!("replay {n} writes from {back} back at {at}/{len}");
                    self.note(k, link, to, off, what);
                }
                6 => {
                    b.clear();
                    self.note(k, link, to, off, format!("drop write of {len}"));
                }
                8 if len > 0 => {
                    let p = pos.min(len - 1);
                    let m = self.rng.gen_range(1..=8).min(len - p);
                    let v = [0u8, 0xff, 0x7f, 0x80][self.rng.gen_range(0..4)];
                    b[p..p + m].fill(v);
                    self.note(k, link, to, off, format!("extreme {v:#x} x{m} at {p}/{len}"));
                }
                9 if self.rng.gen_ratio(1, 4) => {
                    b.truncate(pos);
                    self.swallowed.insert(key);
                    self.note(k, link, to, off, format!("swallow from {pos}/{len}"));
                    break;
                }
                10 => {
                    self.held.insert(key, b.split().freeze());
                    self.note(k, link, to, off, format!("hold {len}"));
                    break;
                }
                11 if self.stale_writes => {
                    // A write from any link toward this node (an older connection's
                    // handshake, mostly) instead of this one, or before it.
                    let stale = &self.stale[to];
                    let w = stale[self.rng.gen_range(0..stale.len())].clone();
                    let wl = w.len();
                    if self.rng.gen_bool(0.5) {
                        b = BytesMut::from(&w[..]);
                    } else {
                        let mut s = BytesMut::from(&w[..]);
                        s.extend_from_slice(&b);
                        b = s;
                    }
                    self.note(k, link, to, off, format!("stale write of {wl} for {len}"));
                }
                _ => {}
            }
        }
        b.freeze()
    }

    fn note(&mut self, k: usize, link: usize, to: usize, off: u64, what: String) {
        self.counts[k] += 1;
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("link {link} toward {to} @{off} {what}"));
        }
    }
}

/// What one run saw.
#[derive(Default)]
struct Outcome {
    /// A session end was reported on either node.
    reset: bool,
    counts: [u64; OPS.len()],
    /// Links the run created (handshakes started).
    links: usize,
}

/// Session ends reported on either node: resets, remote resets, refusals.
fn reports(p: &Pair) -> usize {
    p.nodes.iter().map(|n| n.resets + n.remote_resets + n.refused).sum()
}

/// Checks, as messages arrive, that each node receives the peer's in strictly increasing
/// order within a session: a session end reported (see [`reports`]) starts the order
/// over, and what arrived in the interval where it was reported is not checked.
#[derive(Default)]
struct OrderCheck {
    checked: [usize; 2],
    last: [Option<u32>; 2],
    reports: usize,
}

impl OrderCheck {
    fn check(&mut self, ctx: &str, p: &Pair, dump: impl Fn()) {
        let reports = reports(p);
        for node in 0..2 {
            let got = ids(&p.nodes[node].received[self.checked[node]..]);
            self.checked[node] = p.nodes[node].received.len();
            if reports != self.reports {
                self.last[node] = None;
                continue;
            }
            for id in got {
                if self.last[node].is_some_and(|last| last >= id) {
                    dump();
                    let all = ids(&p.nodes[node].received);
                    panic!("{ctx}: node {node} received {id} after {:?}: {all:?}", self.last[node]);
                }
                self.last[node] = Some(id);
            }
        }
        self.reports = reports;
    }
}

fn dump(p: &Pair, m: &Mutation) {
    if let Some(t) = m.trace.as_ref() {
        eprintln!("mutations: {t:#?}");
        eprintln!("node0 log: {:#?}\nnode1 log: {:#?}", p.nodes[0].log, p.nodes[1].log);
        eprintln!("sessions: {:?} / {:?}", p.nodes[0].sessions, p.nodes[1].sessions);
    }
}

fn dumper<'a>(p: &'a Pair, m: &'a RefCell<Mutation>) -> impl Fn() + 'a {
    move || dump(p, &m.borrow())
}

fn check_bounds(ctx: &str, p: &Pair, dump: impl Fn()) {
    for (i, e) in p.eps.iter().enumerate() {
        let held = e.conn.receive_held_bytes();
        if held > HELD_BOUND {
            dump();
            panic!("{ctx}: endpoint {i} holds {held} bytes: {}", e.conn);
        }
    }
    let in_flight: usize = p
        .links
        .iter()
        .filter(|l| !l.dead)
        .flat_map(|l| l.toward.iter().flatten())
        .map(Bytes::len)
        .sum();
    if in_flight > IN_FLIGHT_BOUND {
        dump();
        panic!("{ctx}: {in_flight} bytes in flight");
    }
}

/// One run: a program of sends, steps, cuts, races, rewinds and clock runs while the
/// handshakes are mutated; then, with the mutation stopped and no cut, everything
/// settles on its own; then the checks.
fn run(seed: u64, mode: Mode, p0: Policy, p1: Policy) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = pair(mode, p0, p1);
    p.verbose = std::env::var("MUT_DEBUG").is_ok();
    p.max_steps = 20_000;
    p.mutate_handshakes_only = true;
    let mut r2 = SmallRng::seed_from_u64(seed.wrapping_mul(31));
    // Reads of at most READ bytes, as a driver's read buffer makes them.
    let split = rng.gen_bool(0.5);
    p.splitter = Some(Box::new(move |n| {
        let n = n.min(READ);
        if split && r2.gen_bool(0.5) {
            r2.gen_range(1..=n)
        } else {
            n
        }
    }));
    p.nodes[1].credit_ahead = rng.gen_bool(0.5);
    p.nodes[0].credit_ahead = rng.gen_bool(0.5);
    let toward = match rng.gen_range(0..3) {
        0 => [true, false],
        1 => [false, true],
        _ => [true, true],
    };
    let mutation = Rc::new(RefCell::new(Mutation {
        rng: SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        active: true,
        toward,
        rate: [0.05, 0.2, 0.5, 1.0][rng.gen_range(0..4)],
        history: HashMap::new(),
        stale: [VecDeque::new(), VecDeque::new()],
        stale_writes: mode == Mode::Secure,
        swallowed: HashSet::new(),
        held: HashMap::new(),
        counts: [0; OPS.len()],
        trace: std::env::var("MUT_DEBUG").is_ok().then(Vec::new),
    }));
    let m2 = mutation.clone();
    p.mutate = Some(Box::new(move |link, to, off, seg| m2.borrow_mut().apply(link, to, off, seg)));
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
            p.send(node, random_message(rng, base + sent[node]));
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
    {
        let mut m = mutation.borrow_mut();
        m.active = false;
        m.held.clear();
        m.swallowed.clear();
    }
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
    for (i, e) in p.eps.iter().enumerate() {
        if e.alive && e.link.is_some_and(|l| !p.links[l].dead) && !e.conn.is_open() {
            dump(&p, &mutation.borrow());
            panic!("{ctx}: endpoint {i} is stuck on a live link: {}", e.conn);
        }
    }

    let m = mutation.borrow();
    let ctx = format!("{ctx} counts {:?}", m.counts);
    let got = [ids(&p.nodes[0].received), ids(&p.nodes[1].received)];
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
    Outcome { reset, counts: m.counts, links: p.links.len() }
}

const POLICIES: [(Policy, Policy); 5] = [
    (Policy::lossless_client(), Policy::stateful_server()),
    (Policy::lossless_peer(), Policy::lossless_peer()),
    (Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse()),
    (Policy::lossless_peer(), Policy::lossless_peer_reuse()),
    (Policy::lossy_client(), Policy::stateless_server()),
];

/// Runs `runs` seeds from `base` for `mode` under a watchdog that names the seed of a
/// run that hangs.
fn fuzz(mode: Mode, base: u64, runs: u64) {
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let (c, d) = (current.clone(), done.clone());
    let watchdog = std::thread::spawn(move || {
        let mut last = u64::MAX;
        let mut same = 0;
        while !d.load(Ordering::Relaxed) {
            std::thread::park_timeout(Duration::from_millis(500));
            let now = c.load(Ordering::Relaxed);
            same = if now == last { same + 1 } else { 0 };
            last = now;
            if same >= 120 {
                eprintln!("handshake_mutation: seed {now} {mode:?} ran for a minute: hang");
                std::process::abort();
            }
        }
    });
    let mut resets = 0;
    let mut links = 0;
    let mut counts = [0u64; OPS.len()];
    for i in 0..runs {
        let seed = base.wrapping_add(i);
        current.store(seed, Ordering::Relaxed);
        let (p0, p1) = POLICIES[(seed % POLICIES.len() as u64) as usize];
        let o = run(seed, mode, p0, p1);
        resets += usize::from(o.reset);
        links += o.links;
        for (c, n) in counts.iter_mut().zip(o.counts) {
            *c += n;
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.thread().unpark();
    watchdog.join().unwrap();
    let summary: Vec<String> = OPS.iter().zip(counts).map(|(n, c)| format!("{n} {c}")).collect();
    eprintln!(
        "{mode:?}: {runs} runs from seed {base}, {links} handshakes, {resets} with a reset; {}",
        summary.join(", ")
    );
    let ran = counts.iter().filter(|&&c| c > 0).count();
    let kinds = if mode == Mode::Secure { OPS.len() } else { OPS.len() - 1 };
    let want = if runs >= 40 { kinds } else { kinds - 3 };
    assert!(ran >= want, "{mode:?}: {} kinds of mutation never ran: {summary:?}", kinds - ran);
}

fn params(default_runs: u64) -> (u64, u64) {
    let base = std::env::var("MUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x4a4d5348);
    let runs = std::env::var("MUT_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_runs);
    eprintln!("handshake_mutation: base seed {base}, {runs} runs (MUT_SEED/MUT_RUNS)");
    (base, runs)
}

#[test]
fn mutated_v1_handshakes_never_panic_stall_or_reorder() {
    let (base, runs) = params(10);
    fuzz(Mode::V1, base, runs);
}

#[test]
fn mutated_v1_authorizer_handshakes_never_panic_stall_or_reorder() {
    let (base, runs) = params(10);
    fuzz(Mode::V1Authorizers, base, runs);
}

#[test]
fn mutated_msgr2_auth_none_handshakes_never_panic_stall_or_reorder() {
    let (base, runs) = params(10);
    fuzz(Mode::CrcNone, base, runs);
}

#[test]
fn mutated_msgr2_crc_handshakes_never_panic_stall_or_reorder() {
    let (base, runs) = params(10);
    fuzz(Mode::Crc, base, runs);
}

#[test]
fn mutated_msgr2_secure_handshakes_lose_nothing() {
    let (base, runs) = params(10);
    fuzz(Mode::Secure, base, runs);
}

/// Runs one seed of one mode (`MUT_ONE=<mode 0-4>:<seed>`), with `MUT_DEBUG` for traces.
#[test]
fn one() {
    let Some(spec) = std::env::var("MUT_ONE").ok() else { return };
    let (m, s) = spec.split_once(':').unwrap();
    let mode = MODES[m.parse::<usize>().unwrap()];
    let seed: u64 = s.parse().unwrap();
    let (p0, p1) = POLICIES[(seed % POLICIES.len() as u64) as usize];
    run(seed, mode, p0, p1);
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
    p.run_for(Duration::from_secs(300));
    let got = protocol::testing::numbers(&p.nodes[0].received);
    let told = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    assert!(told || got == [0, 1], "node 0 got {got:?}: {:?}", p.nodes[1].log);
    assert!(p.live_links().len() <= 1, "{} links: reconnecting forever", p.live_links().len());
    let retries = p.nodes[1].config.counters.values().retry_global;
    assert!(retries < 5, "{retries} RETRY_GLOBALs: {:?}", p.nodes[0].log);
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
    p.run_for(Duration::from_secs(300));
    let got = protocol::testing::numbers(&p.nodes[0].received);
    let told = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    assert!(told || got == [0, 1], "node 0 got {got:?}: {:?}", p.nodes[1].log);
    let retries = p.nodes[1].config.counters.values().retry_global;
    assert!(retries < 5, "{retries} SESSION_RETRY_GLOBALs: {:?}", p.nodes[0].log);
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
    p.run_for(Duration::from_secs(300));
    let got = protocol::testing::numbers(&p.nodes[0].received);
    let told = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    assert!(told || got == [1_000_000], "node 0 got {got:?}: {:?}", p.nodes[1].log);
    let retries = p.nodes[1].config.counters.values().retry_global;
    assert!(retries < 5, "{retries} RETRY_GLOBALs: {:?}", p.nodes[0].log);
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
    p.run_for(Duration::from_secs(300));
    let got = protocol::testing::numbers(&p.nodes[0].received);
    let told = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    assert!(told || got == [1_000_000], "node 0 got {got:?}: {:?}", p.nodes[1].log);
    let retries = p.nodes[1].config.counters.values().retry_global;
    assert!(retries < 5, "{retries} SESSION_RETRY_GLOBALs: {:?}", p.nodes[0].log);
}
