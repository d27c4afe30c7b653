//! What the mutation fuzzers (open_mutation.rs, handshake_mutation.rs) share: the pair
//! setups, the messages they send, the byte-stream [`Mutation`] they install on the
//! [`Pair`] network, the checks held on every run (order within a session, bounded
//! memory) and the [`Fuzzer`] that runs seeds under a watchdog and sums what they did.
//!
//! Each fuzzer keeps its own program (what a run sends, cuts and checks at the end) and
//! its own parameters: the kinds of mutation it draws from, how many writes it keeps for
//! replays, its policies. A seed draws the same sequence it drew when each fuzzer had
//! its own copy of this code.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::auth::ConMode;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::{node_config, numbers, Pair, TestAuthProvider};
use protocol::{Message, Policy, ProtocolVersion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Ids of node 1's messages start here (node 0's at 0).
pub const NODE1_IDS: u32 = 1_000_000;

/// The largest read delivered at once (a driver's read buffer).
pub const READ: usize = 64 << 10;

/// The pairs a fuzzer may run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// msgr v1, no authorizers.
    V1,
    /// msgr v1 with the test auth's authorizers (and so signed messages).
    V1Authorizers,
    /// msgr2 crc mode, auth none.
    CrcNone,
    /// msgr2 crc mode, the test auth.
    Crc,
    /// msgr2 secure mode, the test auth.
    Secure,
}

/// A pair on `setup`, node 0 with policy `p0` and node 1 with `p1`.
pub fn pair(setup: Setup, p0: Policy, p1: Policy) -> Pair {
    let now = Instant::now();
    match setup {
        Setup::V1 => Pair::v1(now, p0, p1),
        Setup::V1Authorizers => {
            let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
            let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
            c0.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
            c1.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
            Pair::with_configs(now, ProtocolVersion::V1, c0, p0, c1, p1)
        }
        Setup::CrcNone => Pair::v2(now, p0, p1),
        Setup::Crc => Pair::with_test_auth(now, p0, p1, &[ConMode::CRC]),
        Setup::Secure => Pair::with_test_auth(now, p0, p1, &[ConMode::SECURE]),
    }
}

/// Whether `MUT_DEBUG` asks for traces.
fn debug() -> bool {
    std::env::var("MUT_DEBUG").is_ok()
}

/// The start of every run: the `seed`'s generator (what the run draws next) and a pair
/// on `setup` whose reads are cut at [`READ`] bytes and, on half the seeds, at random
/// sizes, and whose nodes each give credit ahead of the message or not.
pub fn start(seed: u64, setup: Setup, p0: Policy, p1: Policy) -> (SmallRng, Pair) {
    prepare(seed, pair(setup, p0, p1))
}

/// [`start`] for a pair built elsewhere (another auth provider, say).
pub fn prepare(seed: u64, mut p: Pair) -> (SmallRng, Pair) {
    let mut rng = SmallRng::seed_from_u64(seed);
    p.verbose = debug();
    p.max_steps = 20_000;
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
    (rng, p)
}

/// Message `id` with `extra` bytes of front after the id, and `data` bytes of data.
pub fn message(id: u32, extra: usize, data: usize) -> Message {
    let mut front = id.to_le_bytes().to_vec();
    front.resize(4 + extra, 0xa5);
    let mut m = Message::new(2, Bytes::from(front));
    if data > 0 {
        m.set_data(Bytes::from(vec![0x5a; data]));
    }
    m.set_priority(PRIO_DEFAULT);
    m
}

/// The sizes of a fuzzer's [`random_message`]s.
pub struct Sizes {
    /// Bytes of front after the id, at most, in one message of 20.
    pub front: usize,
    /// Bytes of data, at most, in another one of 20.
    pub data: usize,
    /// Another one of 20 has both (a small front and a few KiB of data).
    pub front_and_data: bool,
}

/// Message `id`, mostly small (a front of up to 32 bytes), its size drawn from `sizes`.
pub fn random_message(rng: &mut SmallRng, id: u32, sizes: &Sizes) -> Message {
    match rng.gen_range(0..20) {
        0 => message(id, rng.gen_range(0..sizes.front), 0),
        1 => message(id, 0, rng.gen_range(1..sizes.data)),
        2 if sizes.front_and_data => message(id, rng.gen_range(0..100), rng.gen_range(1..5000)),
        _ => message(id, rng.gen_range(0..32), 0),
    }
}

/// What the mutator does, by kind (for the summary and for minimising). A fuzzer draws
/// from the first [`Fuzzer::ops`] of them.
pub const OPS: [&str; 12] = [
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

/// The mutator's state, shared with the run. A link and a direction (the node the bytes
/// travel toward) key what it keeps.
pub struct Mutation {
    rng: SmallRng,
    /// Kinds drawn from: the first `ops` of [`OPS`].
    ops: usize,
    /// Writes kept per link and direction for replays (and toward each node, for stale
    /// ones).
    history_len: usize,
    /// Mutate only while set.
    pub active: bool,
    /// The directions mutated: bytes travelling toward these nodes.
    pub toward: [bool; 2],
    /// Chance a write is mutated.
    pub rate: f64,
    /// Mutate only these links, when set (open msgr v1 sessions: links whose handshake
    /// is done).
    pub only: Option<HashSet<usize>>,
    /// Replay writes of older links ("stale-write") when drawn: only where the
    /// handshake is authenticated end to end (msgr2 secure mode). Elsewhere a stale
    /// CLIENT_IDENT or CONNECT is a forgery no one can tell from the peer's own retry
    /// (Ceph's "continuing session establishment" restarts the session's sequence
    /// numbers): a man-in-the-middle, not a peer.
    pub stale_writes: bool,
    /// The last writes on each link and direction (as written).
    history: HashMap<(usize, usize), VecDeque<Bytes>>,
    /// Writes of every link toward each node (for replays on a later link), kept only
    /// with `stale_writes`.
    stale: [VecDeque<Bytes>; 2],
    /// Links and directions whose further bytes are swallowed.
    swallowed: HashSet<(usize, usize)>,
    /// A write held back per link and direction, spliced into or sent after the next.
    held: HashMap<(usize, usize), Bytes>,
    /// Count per kind of [`OPS`] drawn from.
    pub counts: Vec<u64>,
    /// Log of the mutations applied (when tracing).
    trace: Option<Vec<String>>,
}

impl Mutation {
    /// Hands the mutation to `p`, which passes it every write; the run keeps the other
    /// handle.
    pub fn install(self, p: &mut Pair) -> Rc<RefCell<Mutation>> {
        let mutation = Rc::new(RefCell::new(self));
        let m2 = mutation.clone();
        p.mutate =
            Some(Box::new(move |link, to, off, seg| m2.borrow_mut().apply(link, to, off, seg)));
        mutation
    }

    /// Stops mutating: what was held back and swallowed is forgotten.
    pub fn stop(&mut self) {
        self.active = false;
        self.held.clear();
        self.swallowed.clear();
    }

    fn apply(&mut self, link: usize, to: usize, off: u64, seg: Bytes) -> Bytes {
        if !self.active || !self.toward[to] {
            return seg;
        }
        if self.only.as_ref().is_some_and(|only| !only.contains(&link)) {
            return seg;
        }
        let key = (link, to);
        if self.swallowed.contains(&key) {
            return Bytes::new();
        }
        let hist = self.history.entry(key).or_default();
        hist.push_back(seg.clone());
        if hist.len() > self.history_len {
            hist.pop_front();
        }
        if self.stale_writes {
            let stale = &mut self.stale[to];
            stale.push_back(seg.clone());
            if stale.len() > self.history_len {
                stale.pop_front();
            }
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
                self.note(7, key, off, format!("splice held[..{i}] + write[{j}..]"));
            }
        }
        let n = self.rng.gen_range(1..=3);
        for _ in 0..n {
            let k = self.rng.gen_range(0..self.ops);
            let len = b.len();
            let pos = self.rng.gen_range(0..=len);
            match k {
                0 if len > 0 => {
                    let p = pos.min(len - 1);
                    let x = 1u8 << self.rng.gen_range(0..8);
                    b[p] ^= x;
                    self.note(k, key, off, format!("flip {x:#x} at {p}/{len}"));
                }
                1 => {
                    let m = self.rng.gen_range(1..=16);
                    let ins: Vec<u8> = (0..m).map(|_| self.rng.gen()).collect();
                    let mut s = BytesMut::from(&b[..pos]);
                    s.extend_from_slice(&ins);
                    s.extend_from_slice(&b[pos..]);
                    b = s;
                    self.note(k, key, off, format!("insert {m} at {pos}/{len}"));
                }
                2 if pos < len => {
                    let m = self.rng.gen_range(1..=(len - pos).min(64));
                    let mut s = BytesMut::from(&b[..pos]);
                    s.extend_from_slice(&b[pos + m..]);
                    b = s;
                    self.note(k, key, off, format!("delete {m} at {pos}/{len}"));
                }
                3 if pos < len => {
                    let m = self.rng.gen_range(1..=(len - pos).min(256));
                    let mut s = BytesMut::from(&b[..pos + m]);
                    s.extend_from_slice(&b[pos..]);
                    b = s;
                    self.note(k, key, off, format!("duplicate {m} at {pos}/{len}"));
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
                    self.note(
                        k,
                        key,
                        off,
                        format!("replay {m} of an earlier write at {pos}/{len}"),
                    );
                }
                5 => {
                    // Whole earlier writes of this link (whole frames, mostly), before or
                    // after this one.
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
                    self.note(k, key, off, what);
                }
                6 => {
                    b.clear();
                    self.note(k, key, off, format!("drop write of {len}"));
                }
                8 if len > 0 => {
                    let p = pos.min(len - 1);
                    let m = self.rng.gen_range(1..=8).min(len - p);
                    let v = [0u8, 0xff, 0x7f, 0x80][self.rng.gen_range(0..4)];
                    b[p..p + m].fill(v);
                    self.note(k, key, off, format!("extreme {v:#x} x{m} at {p}/{len}"));
                }
                9 if self.rng.gen_ratio(1, 4) => {
                    b.truncate(pos);
                    self.swallowed.insert(key);
                    self.note(k, key, off, format!("swallow from {pos}/{len}"));
                    break;
                }
                10 => {
                    self.held.insert(key, b.split().freeze());
                    self.note(k, key, off, format!("hold {len}"));
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
                    self.note(k, key, off, format!("stale write of {wl} for {len}"));
                }
                _ => {}
            }
        }
        b.freeze()
    }

    fn note(&mut self, k: usize, (link, to): (usize, usize), off: u64, what: String) {
        self.counts[k] += 1;
        if let Some(t) = self.trace.as_mut() {
            t.push(format!("link {link} toward {to} @{off} {what}"));
        }
    }
}

/// What one run saw.
pub struct Outcome {
    /// A session end was reported on either node.
    pub reset: bool,
    /// Count per kind of [`OPS`] drawn from.
    pub counts: Vec<u64>,
    /// Links the run created (handshakes started), when the fuzzer counts them.
    pub links: Option<usize>,
}

/// Session ends reported on either node: resets, remote resets, refusals.
pub fn reports(p: &Pair) -> usize {
    p.nodes.iter().map(|n| n.resets + n.remote_resets + n.refused).sum()
}

/// Checks, as messages arrive, that each node receives the peer's in strictly increasing
/// order within a session: a session end reported (see [`reports`]) starts the order
/// over, and what arrived in the interval where it was reported is not checked.
#[derive(Default)]
pub struct OrderCheck {
    checked: [usize; 2],
    last: [Option<u32>; 2],
    reports: usize,
}

impl OrderCheck {
    /// Checks what arrived since the last call; `ctx` names the run in a panic, after
    /// `dump`.
    pub fn check(&mut self, ctx: &str, p: &Pair, dump: impl Fn()) {
        let reports = reports(p);
        for node in 0..2 {
            let got = numbers(&p.nodes[node].received[self.checked[node]..]);
            self.checked[node] = p.nodes[node].received.len();
            if reports != self.reports {
                self.last[node] = None;
                continue;
            }
            for id in got {
                if self.last[node].is_some_and(|last| last >= id) {
                    dump();
                    let all = numbers(&p.nodes[node].received);
                    panic!("{ctx}: node {node} received {id} after {:?}: {all:?}", self.last[node]);
                }
                self.last[node] = Some(id);
            }
        }
        self.reports = reports;
    }
}

/// Prints the mutations, the nodes' logs and sessions (when tracing: `MUT_DEBUG`).
pub fn dump(p: &Pair, m: &Mutation) {
    if let Some(t) = m.trace.as_ref() {
        eprintln!("mutations: {t:#?}");
        eprintln!("node0 log: {:#?}\nnode1 log: {:#?}", p.nodes[0].log, p.nodes[1].log);
        eprintln!("sessions: {:?} / {:?}", p.nodes[0].sessions, p.nodes[1].sessions);
    }
}

/// [`dump`] for the checks to call before they panic.
pub fn dumper<'a>(p: &'a Pair, m: &'a RefCell<Mutation>) -> impl Fn() + 'a {
    move || dump(p, &m.borrow())
}

/// Checks that every endpoint still on a live link is open: once the mutation stopped,
/// a handshake it left stuck must have ended on its own.
pub fn check_not_stuck(ctx: &str, p: &Pair, dump: impl Fn()) {
    for (i, e) in p.eps.iter().enumerate() {
        if e.alive && e.link.is_some_and(|l| !p.links[l].dead) && !e.conn.is_open() {
            dump();
            panic!("{ctx}: endpoint {i} is stuck on a live link: {}", e.conn);
        }
    }
}

/// Checks that no endpoint holds more than `bound` bytes for what it receives: a mutated
/// length must not make it allocate what the peer announced.
pub fn check_held(ctx: &str, p: &Pair, bound: usize, dump: impl Fn()) {
    for (i, e) in p.eps.iter().enumerate() {
        let held = e.conn.receive_held_bytes();
        if held > bound {
            dump();
            panic!(
                "{ctx}: endpoint {i} holds {held} bytes: {} receiving {} in progress {}",
                e.conn,
                e.conn.receiving_len(),
                e.conn.message_in_progress()
            );
        }
    }
}

/// Checks that the live links carry no more than `bound` bytes in all: what a mutation
/// makes a machine write stays bounded too.
pub fn check_in_flight(ctx: &str, p: &Pair, bound: usize, dump: impl Fn()) {
    let in_flight: usize = p
        .links
        .iter()
        .filter(|l| !l.dead)
        .flat_map(|l| l.toward.iter().flatten())
        .map(Bytes::len)
        .sum();
    if in_flight > bound {
        dump();
        panic!("{ctx}: {in_flight} bytes in flight");
    }
}

/// A mutation fuzzer: its parameters and its run, for the tests that run its seeds.
pub struct Fuzzer<M: 'static> {
    /// The test file's name, for what it prints.
    pub name: &'static str,
    /// The base seed without `MUT_SEED`.
    pub default_seed: u64,
    /// The modes, by the index `MUT_ONE` names.
    pub modes: &'static [M],
    /// The nodes' policies, by seed (modulo their number).
    pub policies: &'static [(Policy, Policy)],
    /// Kinds of mutation drawn from: the first `ops` of [`OPS`]. Part of what a seed
    /// draws: changing it changes every run.
    pub ops: usize,
    /// Writes kept per link and direction for replays.
    pub history: usize,
    /// The kinds that can run in a mode (of those drawn).
    pub kinds: fn(M) -> usize,
    /// Of those, how many may not have run in fewer than 40 runs (the rarest).
    pub rare: usize,
    /// One run of a seed on a mode and node 0's and node 1's policies.
    pub run: fn(u64, M, Policy, Policy) -> Outcome,
}

impl<M: Copy + Debug + Send + 'static> Fuzzer<M> {
    /// A mutation for a run of `seed`, inactive and toward no node: the run sets what it
    /// draws.
    pub fn mutation(&self, seed: u64) -> Mutation {
        Mutation {
            rng: SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ops: self.ops,
            history_len: self.history,
            active: false,
            toward: [false; 2],
            rate: 0.0,
            only: None,
            stale_writes: false,
            history: HashMap::new(),
            stale: [VecDeque::new(), VecDeque::new()],
            swallowed: HashSet::new(),
            held: HashMap::new(),
            counts: vec![0; self.ops],
            trace: debug().then(Vec::new),
        }
    }

    /// The nodes' policies for `seed`.
    pub fn policies(&self, seed: u64) -> (Policy, Policy) {
        self.policies[(seed % self.policies.len() as u64) as usize]
    }

    /// The base seed and runs per mode (`MUT_SEED`, `MUT_RUNS`), printed.
    pub fn params(&self, default_runs: u64) -> (u64, u64) {
        let var = |name| std::env::var(name).ok().and_then(|s| s.parse().ok());
        let base = var("MUT_SEED").unwrap_or(self.default_seed);
        let runs = var("MUT_RUNS").unwrap_or(default_runs);
        eprintln!("{}: base seed {base}, {runs} runs (MUT_SEED/MUT_RUNS)", self.name);
        (base, runs)
    }

    /// The test of `mode`: [`Fuzzer::fuzz`] with [`Fuzzer::params`] (10 runs by default).
    pub fn test(&self, mode: M) {
        let (base, runs) = self.params(10);
        self.fuzz(mode, base, runs);
    }

    /// Runs `runs` seeds from `base` for `mode` under a watchdog that names the seed of a
    /// run that hangs; prints what they did and checks that every kind of mutation ran.
    pub fn fuzz(&self, mode: M, base: u64, runs: u64) {
        let current = Arc::new(AtomicU64::new(u64::MAX));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (current.clone(), done.clone());
        let name = self.name;
        let watchdog = std::thread::spawn(move || {
            let mut last = u64::MAX;
            let mut same = 0;
            while !d.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(500));
                let now = c.load(Ordering::Relaxed);
                same = if now == last { same + 1 } else { 0 };
                last = now;
                if same >= 120 {
                    eprintln!("{name}: seed {now} {mode:?} ran for a minute: hang");
                    std::process::abort();
                }
            }
        });
        let mut resets = 0;
        let mut links = None;
        let mut counts = vec![0u64; self.ops];
        for i in 0..runs {
            let seed = base.wrapping_add(i);
            current.store(seed, Ordering::Relaxed);
            let (p0, p1) = self.policies(seed);
            let o = (self.run)(seed, mode, p0, p1);
            resets += usize::from(o.reset);
            if let Some(n) = o.links {
                *links.get_or_insert(0) += n;
            }
            for (c, n) in counts.iter_mut().zip(o.counts) {
                *c += n;
            }
        }
        done.store(true, Ordering::Relaxed);
        watchdog.thread().unpark();
        watchdog.join().unwrap();
        let summary: Vec<String> =
            OPS.iter().zip(&counts).map(|(n, c)| format!("{n} {c}")).collect();
        let handshakes = links.map(|n| format!("{n} handshakes, ")).unwrap_or_default();
        eprintln!(
            "{mode:?}: {runs} runs from seed {base}, {handshakes}{resets} with a reset; {}",
            summary.join(", ")
        );
        // Every kind ran (in fewer than 200 runs, all but the rarest: splicing, for one,
        // needs a held write and a next one in the same direction; 40 secure runs from
        // seed 777 spliced nothing; 200 runs spliced dozens of times).
        let ran = counts.iter().filter(|&&c| c > 0).count();
        let kinds = (self.kinds)(mode);
        let want = if runs >= 200 { kinds } else { kinds - self.rare };
        assert!(ran >= want, "{mode:?}: {} kinds of mutation never ran: {summary:?}", kinds - ran);
    }

    /// Runs one seed of one mode (`MUT_ONE=<mode index>:<seed>`), with `MUT_DEBUG` for
    /// traces; nothing without `MUT_ONE`.
    pub fn one(&self) {
        let Some(spec) = std::env::var("MUT_ONE").ok() else { return };
        let (m, s) = spec.split_once(':').unwrap();
        let mode = self.modes[m.parse::<usize>().unwrap()];
        let seed: u64 = s.parse().unwrap();
        let (p0, p1) = self.policies(seed);
        (self.run)(seed, mode, p0, p1);
    }
}
