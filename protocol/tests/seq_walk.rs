//! Both ends of a session agree on its numbers after every kind of (re)connect: a seeded,
//! bounded random walk over the [`Pair`] network (both protocols, the lossless policy
//! pairs Ceph uses) through sends from either side, simultaneous sends (connection and
//! reconnect races), cuts (idle, and at a random byte of a handshake), mark_down on
//! either side and a side forgetting its session (a restart as the peer sees it: a new
//! session, a new client cookie, connect_seq 0). After each step settles, both ends of
//! the session hold the same connect_seq, and a probe — the link cut, one side sending —
//! reopens the session within the initial backoff and without a WAIT: the liveness
//! stall a disagreement causes (a reconnect meeting a parked session at its own
//! connect_seq is taken for a reconnect race and told to WAIT out `ms_max_backoff`).

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use protocol::testing::{numbered, numbers, Pair};
use protocol::{Policy, ProtocolVersion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Longer than the WAIT backoff (`ms_max_backoff`, 15 s) and the next attempt after it:
/// a step settles fully, whatever it went through.
const SETTLE: Duration = Duration::from_secs(40);
/// `ms_initial_backoff`: the probe's reconnect must open within it.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const STEPS: usize = 24;
const SEEDS: u64 = 60;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// One side sends.
    Send(usize),
    /// Every link is cut (both sides fault), then both send before anything moves: a
    /// reconnect race (both parked), or a connection race (neither has a session).
    RaceBoth,
    /// Every link is cut (both sides fault).
    Cut,
    /// Every link is cut, a side sends, and every link is cut again after `.1` more
    /// bytes: inside a handshake (a reply lost, e.g. SERVER_IDENT or RECONNECT_OK) or
    /// just after it.
    CutAfter(usize, u64),
    /// As [`Step::CutAfter`], both sides sending: a race interrupted.
    RaceCutAfter(u64),
    /// A side marks its session down (closes it; the peer sees the socket close).
    MarkDown(usize),
    /// A side forgets its session without closing it (a crash, then a restart at the
    /// same address): its links die, and its next session is a new one.
    Forget(usize),
    /// Both sides forget their sessions (a connection race follows).
    ForgetBoth,
}

fn random_step(rng: &mut SmallRng) -> Step {
    let n = rng.gen_range(0..2);
    match rng.gen_range(0..12) {
        0 | 1 => Step::Send(n),
        2 | 3 => Step::RaceBoth,
        4 => Step::Cut,
        5..=7 => Step::CutAfter(n, rng.gen_range(1..600)),
        8 => Step::RaceCutAfter(rng.gen_range(1..1200)),
        9 => Step::MarkDown(n),
        10 => Step::Forget(n),
        _ => Step::ForgetBoth,
    }
}

/// `nodes` lose every connection and session at once, unannounced.
fn forget(p: &mut Pair, nodes: &[usize]) {
    for e in 0..p.eps.len() {
        if nodes.contains(&p.eps[e].node) {
            p.eps[e].alive = false;
        }
    }
    for &n in nodes {
        p.nodes[n].sessions.clear();
    }
    p.cut_all();
}

struct Walk {
    p: Pair,
    next_id: u32,
    /// The seed, then every step and probe so far (for the failure messages).
    trace: Vec<String>,
}

impl Walk {
    fn new(version: ProtocolVersion, p0: Policy, p1: Policy) -> Walk {
        let mut p = Pair::new(Instant::now(), version, p0, p1);
        p.verbose = true;
        Walk { p, next_id: 1, trace: Vec::new() }
    }

    fn send(&mut self, node: usize) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.p.send(node, numbered(id));
        id
    }

    fn apply(&mut self, step: Step) {
        self.trace.push(format!("{step:?}"));
        let p = &mut self.p;
        match step {
            Step::Send(n) => {
                self.send(n);
            }
            Step::RaceBoth => {
                p.cut_all();
                p.drive();
                self.send(0);
                self.send(1);
            }
            Step::Cut => {
                p.cut_all();
            }
            Step::CutAfter(n, bytes) => {
                p.cut_all();
                p.drive();
                self.p.cut_after = Some(self.p.delivered + bytes);
                self.send(n);
            }
            Step::RaceCutAfter(bytes) => {
                p.cut_all();
                p.drive();
                self.p.cut_after = Some(self.p.delivered + bytes);
                self.send(0);
                self.send(1);
            }
            Step::MarkDown(n) => {
                if let Some(ep) = p.session_ep(n) {
                    let now = p.now;
                    p.eps[ep].conn.close(now);
                    let peer = p.nodes[Pair::peer_of(n)].addr(p.version);
                    p.nodes[n].sessions.remove(&peer);
                }
            }
            Step::Forget(n) => forget(p, &[n]),
            Step::ForgetBoth => {
                forget(p, &[0, 1]);
                self.send(0);
                self.send(1);
            }
        }
        self.p.run_for(SETTLE);
        self.p.cut_after = None;
    }

    fn context(&self) -> String {
        let p = &self.p;
        let eps: Vec<String> = (0..2)
            .map(|n| match p.session_ep(n) {
                Some(e) => format!("node {n}: {} {:?}", p.eps[e].conn, p.eps[e].conn.seqs()),
                None => format!("node {n}: no session"),
            })
            .collect();
        format!(
            "steps {:?}\n{}\nlog 0: {:?}\nlog 1: {:?}",
            self.trace,
            eps.join("\n"),
            p.nodes[0].log.iter().rev().take(30).collect::<Vec<_>>(),
            p.nodes[1].log.iter().rev().take(30).collect::<Vec<_>>()
        )
    }

    fn waits(&self) -> usize {
        self.p.nodes.iter().flat_map(|n| &n.log).filter(|l| l.ends_with("= Wait")).count()
    }

    /// Both ends of the session, once each side holds one and both are open, count its
    /// reconnects from the same connect_seq.
    fn check_agree(&self) {
        let p = &self.p;
        let (Some(a), Some(b)) = (p.session_ep(0), p.session_ep(1)) else { return };
        if !(p.eps[a].conn.is_open() && p.eps[b].conn.is_open()) {
            return;
        }
        assert_eq!(
            p.eps[a].conn.seqs().connect_seq,
            p.eps[b].conn.seqs().connect_seq,
            "both ends of the open session agree on connect_seq\n{}",
            self.context()
        );
    }

    /// Messages reach each side in order, each once.
    fn check_order(&self) {
        for n in 0..2 {
            let got = numbers(&self.p.nodes[n].received);
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "node {n} received {got:?} (duplicated or reordered)\n{}",
                self.context()
            );
        }
    }

    /// The link dies; `node` sends: the session reopens within the initial backoff
    /// with no WAIT, and the message arrives.
    fn probe(&mut self, node: usize) {
        // A server never dials (Ceph's `policy.server`): its message waits for the
        // client, which has nothing to send. Its client probes instead.
        let node = if self.p.nodes[node].policy.server { Pair::peer_of(node) } else { node };
        self.p.cut_all();
        self.p.drive();
        let waits = self.waits();
        let remote_resets = self.p.nodes[node].remote_resets;
        let id = self.send(node);
        self.trace.push(format!("probe({node}, {id})"));
        self.p.run_for(INITIAL_BACKOFF);
        let peer = Pair::peer_of(node);
        let (a, b) = (self.p.session_ep(0), self.p.session_ep(1));
        let open = |e: Option<usize>| e.is_some_and(|e| self.p.eps[e].conn.is_open());
        assert!(
            open(a) && open(b) && self.p.eps[a.unwrap()].link == self.p.eps[b.unwrap()].link,
            "the probe's reconnect opens within the initial backoff\n{}",
            self.context()
        );
        // Unless the peer had lost the session (a mark_down, a restart): told to reset
        // it, the sender drops what it queued for it, as Ceph's `reset_session` does.
        if self.p.nodes[node].remote_resets == remote_resets {
            assert_eq!(
                numbers(&self.p.nodes[peer].received).last(),
                Some(&id),
                "the probe's message arrives within the initial backoff\n{}",
                self.context()
            );
        }
        assert_eq!(self.waits(), waits, "the probe's reconnect met a WAIT\n{}", self.context());
        self.p.run_for(SETTLE);
    }
}

/// Every accept decision the walk's logs show, by kind (with its fields, the sequence
/// numbers blanked).
fn decisions(p: &Pair, into: &mut BTreeSet<String>) {
    for l in p.nodes.iter().flat_map(|n| &n.log) {
        if let Some((_, d)) = l.rsplit_once(") = ") {
            let kind: String =
                d.chars().map(|c| if c.is_ascii_digit() { '_' } else { c }).collect();
            into.insert(kind);
        }
    }
}

fn walk(version: ProtocolVersion, p0: Policy, p1: Policy) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for seed in 0..SEEDS {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut w = Walk::new(version, p0, p1);
        w.trace.push(format!("seed {seed}"));
        w.send(0);
        w.p.run_for(SETTLE);
        for _ in 0..STEPS {
            let step = random_step(&mut rng);
            w.apply(step);
            w.check_agree();
            w.check_order();
            // Not after every step: states compound between probes.
            if rng.gen_bool(0.5) {
                let node = rng.gen_range(0..2);
                w.probe(node);
                w.check_agree();
                w.check_order();
            }
        }
        decisions(&w.p, &mut seen);
    }
    seen
}

/// The walk reached every decision in `want` (it covers what it claims to).
fn assert_covers(seen: &BTreeSet<String>, want: &[&str]) {
    for w in want {
        assert!(seen.contains(*w), "the walk never reached {w}: {seen:?}");
    }
}

const OPEN: &str = "Open";
const KEEP: &str = "Replace { reset_existing: false, peer_restarted: false }";
const RESTARTED_KEPT: &str = "Replace { reset_existing: false, peer_restarted: true }";
const RESTARTED_RESET: &str = "Replace { reset_existing: true, peer_restarted: true }";
const RESET_FULL: &str = "ResetSession { full: true }";
const RESET_PARTIAL: &str = "ResetSession { full: false }";
const WAIT: &str = "Wait";
const RETRY_SESSION: &str = "RetrySession(ConnectSeq(_))";

#[test]
fn v2_lossless_peers_agree() {
    let seen = walk(ProtocolVersion::V2, Policy::lossless_peer(), Policy::lossless_peer());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_KEPT, RESET_FULL, RESET_PARTIAL, WAIT]);
}

#[test]
fn v2_lossless_peers_with_resetcheck_agree() {
    let seen =
        walk(ProtocolVersion::V2, Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_RESET, RESET_FULL, WAIT]);
}

#[test]
fn v2_lossless_client_and_stateful_server_agree() {
    let seen = walk(ProtocolVersion::V2, Policy::lossless_client(), Policy::stateful_server());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_RESET, RESET_FULL, WAIT]);
}

#[test]
fn v1_lossless_peers_agree() {
    let seen = walk(ProtocolVersion::V1, Policy::lossless_peer(), Policy::lossless_peer());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_KEPT, RESET_FULL, WAIT, RETRY_SESSION]);
}

#[test]
fn v1_lossless_peers_with_resetcheck_agree() {
    let seen =
        walk(ProtocolVersion::V1, Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_RESET, RESET_FULL, WAIT, RETRY_SESSION]);
}

#[test]
fn v1_lossless_client_and_stateful_server_agree() {
    let seen = walk(ProtocolVersion::V1, Policy::lossless_client(), Policy::stateful_server());
    assert_covers(&seen, &[OPEN, KEEP, RESTARTED_RESET, RESET_FULL, WAIT]);
}
