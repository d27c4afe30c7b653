//! A two-sided fuzz body: both ends of a msgr v1 session (`protocol::v1::testing::Pair`,
//! two messengers' worth of state machines on an in-memory network with a virtual
//! clock), driven by the input: which policies, how deliveries are chunked, and a
//! program of sends, steps, cuts, timer advances, budget holds, unreachable peers,
//! rewound global_seqs, explicit connects and keepalives. It reaches the paths a single-sided
//! target cannot: replays with a non-empty sent queue, connection races (WAIT),
//! RETRY_SESSION, RETRY_GLOBAL and RESETSESSION, standby and wake.
//!
//! Input layout: byte 0 picks the policy pair, byte 1 seeds the chunking (0: whole
//! segments), then one operation per byte, some taking the next byte as argument.
//!
//! Properties checked on every input:
//! - no panic (the pair's livelock detector included);
//! - each node receives each peer's messages in strictly increasing order: never a
//!   duplicate, never reordered, lossy or not;
//! - lossless policies, after the program and a healing phase (links up, budgets
//!   granted, every timer run, a message each way to wake standby): everything sent
//!   arrives, unless the sender was told its session was reset (`RemoteReset`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::session::CounterValues;
use protocol::testing::Pair;
use protocol::Message;
use protocol::Policy;

/// The policy pairs byte 0 chooses from (node 0's, node 1's).
pub const POLICY_PAIRS: [(Policy, Policy); 6] = [
    (Policy::lossless_peer(), Policy::lossless_peer()),
    (Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse()),
    (Policy::lossless_client(), Policy::stateful_server()),
    (Policy::lossless_peer(), Policy::stateful_server()),
    (Policy::lossy_client(), Policy::stateless_server()),
    (Policy::lossless_peer(), Policy::lossless_peer_reuse()),
];

/// Operations run at most per input (each costs a few steps).
const MAX_OPS: usize = 512;
/// Ids of node 1's messages start here (node 0's at 0).
const NODE1_IDS: u32 = 1_000_000;

/// What one run reached (for corpus coverage checks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// Handshake counters of both nodes, summed.
    pub counters: CounterValues,
    /// A cut hit a link while one of its ends had messages queued or unacked: their
    /// replay followed.
    pub replay_with_pending: bool,
    /// Session resets reported (`RemoteReset`), both nodes.
    pub remote_resets: usize,
    /// Messages delivered, both ways.
    pub delivered: usize,
}

fn message(id: u32, extra: usize) -> Message {
    let mut front = id.to_le_bytes().to_vec();
    front.resize(4 + extra, 0xa5);
    let mut m = Message::new(2, Bytes::from(front));
    m.set_priority(PRIO_DEFAULT);
    m
}

fn id_of(m: &Message) -> Option<u32> {
    let b = m.front().get(..4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The fuzz body: runs the program in `data`, checks the properties, returns what it
/// reached.
pub fn v1_pair(data: &[u8]) -> Reached {
    let [policy, chunking, program @ ..] = data else { return Reached::default() };
    let (p0, p1) = POLICY_PAIRS[usize::from(*policy) % POLICY_PAIRS.len()];
    let lossless = !p0.lossy && !p1.lossy;
    let mut p = Pair::v1(Instant::now(), p0, p1);
    p.max_steps = 20_000;
    if *chunking != 0 {
        let mut x = u32::from(*chunking) | 0x100;
        p.splitter = Some(Box::new(move |n| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 4 == 0 {
                n
            } else {
                1 + (x as usize) % n
            }
        }));
    }
    let mut sent = [0u32; 2];
    let mut reached = Reached::default();
    // A server never dials: it only answers on a session its client opened.
    let may_send = |p: &Pair, node: usize| {
        let policy = if node == 0 { p0 } else { p1 };
        !policy.server || p.session_ep(node).is_some_and(|e| p.eps[e].conn.is_open())
    };
    let mut ops = program.iter().copied().take(MAX_OPS);
    while let Some(op) = ops.next() {
        match op {
            0x00..=0x3f => {
                let node = usize::from(op & 1);
                if may_send(&p, node) {
                    let base = if node == 0 { 0 } else { NODE1_IDS };
                    p.send(node, message(base + sent[node], usize::from(op >> 1)));
                    sent[node] += 1;
                }
            }
            0x50..=0x5f => {
                let live = p.live_links();
                let arg = usize::from(ops.next().unwrap_or(0));
                if let Some(&l) = live.get(arg % live.len().max(1)) {
                    let pending =
                        p.links[l].ends.iter().any(|&e| p.eps[e].conn.pending_messages() > 0);
                    reached.replay_with_pending |= pending;
                    p.cut(l);
                }
            }
            0x60..=0x6f => {
                let ms = u64::from(ops.next().unwrap_or(0)) * 10;
                p.run_for(Duration::from_millis(ms));
            }
            0x70 => p.drive(),
            0x71 => {
                let node = usize::from(ops.next().unwrap_or(0) & 1);
                p.nodes[node].hold_budget = !p.nodes[node].hold_budget;
            }
            0x72 => p.release_budget(),
            0x73 => {
                // A stale global_seq (as after a restart of the counter): RETRY_GLOBAL.
                let arg = ops.next().unwrap_or(0);
                let node = usize::from(arg & 1);
                p.nodes[node].config.global_seq.set(protocol::GlobalSeq(u64::from(arg >> 1)));
            }
            0x74 => {
                let node = usize::from(ops.next().unwrap_or(0) & 1);
                let policy = if node == 0 { p0 } else { p1 };
                if p.session_ep(node).is_none() && !policy.server {
                    p.connect(node);
                }
            }
            0x75 => {
                let pending = p.eps.iter().any(|e| e.alive && e.conn.pending_messages() > 0);
                reached.replay_with_pending |= pending && !p.live_links().is_empty();
                p.cut_all();
            }
            0x76 => {
                let node = usize::from(ops.next().unwrap_or(0) & 1);
                p.nodes[node].unreachable = !p.nodes[node].unreachable;
            }
            0x77 => {
                // A keepalive asked for (kept across a session reset, sent once open).
                let arg = ops.next().unwrap_or(0);
                if let Some(ep) = p.session_ep(usize::from(arg & 1)) {
                    let stamp = protocol::wire::KeepaliveStamp { sec: u32::from(arg), nsec: 0 };
                    p.conn(ep).send_keepalive(stamp);
                }
            }
            _ => {
                p.step();
            }
        }
    }
    // Heal: everything reachable and granted, every timer run, a message each way to
    // wake a parked session, the timers again.
    for node in 0..2 {
        p.nodes[node].unreachable = false;
        p.nodes[node].hold_budget = false;
    }
    p.release_budget();
    p.run_for(Duration::from_secs(120));
    for (node, sent) in sent.iter_mut().enumerate() {
        if may_send(&p, node) {
            let base = if node == 0 { 0 } else { NODE1_IDS };
            p.send(node, message(base + *sent, 0));
            *sent += 1;
        }
    }
    p.release_budget();
    p.run_for(Duration::from_secs(120));

    for (node, &sent) in sent.iter().enumerate() {
        let peer = 1 - node;
        let base = if node == 0 { 0 } else { NODE1_IDS };
        let got: Vec<u32> = p.nodes[peer]
            .received
            .iter()
            .filter_map(id_of)
            .filter(|id| (base..base + NODE1_IDS).contains(id))
            .collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "node {node}'s messages: {got:?}");
        assert!(got.iter().all(|&id| id < base + sent), "a message never sent: {got:?}");
        let told = p.nodes[node].remote_resets + p.nodes[node].resets > 0;
        if lossless && !told {
            assert_eq!(got.len(), sent as usize, "node {node} lost messages: {got:?}");
        }
        reached.delivered += got.len();
    }
    for node in 0..2 {
        let c = p.nodes[node].config.counters.values();
        reached.counters.connects += c.connects;
        reached.counters.wait += c.wait;
        reached.counters.retry_global += c.retry_global;
        reached.counters.retry_session += c.retry_session;
        reached.counters.reset_session += c.reset_session;
        reached.counters.old_seq_dropped += c.old_seq_dropped;
        reached.remote_resets += p.nodes[node].remote_resets;
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in seeds (`corpus/v1_pair`) replay cleanly, and together reach every
    /// path this target exists for.
    #[test]
    fn v1_pair_corpus_replays_and_reaches_the_retry_paths() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/v1_pair");
        let mut total = Reached::default();
        let mut seeds = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")).flatten() {
            let data = std::fs::read(entry.path()).unwrap_or_default();
            let r = v1_pair(&data);
            total.counters.wait += r.counters.wait;
            total.counters.retry_global += r.counters.retry_global;
            total.counters.retry_session += r.counters.retry_session;
            total.counters.reset_session += r.counters.reset_session;
            total.replay_with_pending |= r.replay_with_pending;
            total.delivered += r.delivered;
            seeds += 1;
        }
        assert!(seeds > 0, "no seeds");
        let c = total.counters;
        assert!(c.wait > 0, "no seed reaches WAIT: {total:?}");
        assert!(c.retry_global > 0, "no seed reaches RETRY_GLOBAL: {total:?}");
        assert!(c.retry_session > 0, "no seed reaches RETRY_SESSION: {total:?}");
        assert!(c.reset_session > 0, "no seed reaches RESETSESSION: {total:?}");
        assert!(total.replay_with_pending, "no seed cuts a link with messages pending");
    }

    /// Every prefix and single-byte corruption of every seed: still no panic.
    #[test]
    fn v1_pair_mutated_seeds_hold() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/v1_pair");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let data = std::fs::read(entry.path()).unwrap_or_default();
            for cut in 0..data.len() {
                v1_pair(&data[..cut]);
            }
            for at in 0..data.len() {
                let mut d = data.clone();
                d[at] = d[at].wrapping_add(0x3b);
                v1_pair(&d);
            }
        }
    }

    /// Maps random program bytes onto the interesting mix: mostly sends, steps, cuts,
    /// timer advances and rewound global_seqs.
    fn bias(data: &mut [u8]) {
        for b in data.iter_mut().skip(2) {
            *b = match *b % 8 {
                0..=2 => *b % 4,
                3 => 0x50,
                4 => 0x40,
                5 => 0x60,
                6 => 0x75,
                _ => 0x73,
            };
        }
    }

    /// Stand-in for a fuzzing session without cargo-fuzz: random programs.
    /// `FUZZ_ITERS=100000 cargo test --release -- --ignored v1_pair_random_programs`.
    #[test]
    #[ignore]
    fn v1_pair_random_programs() {
        let iters: u64 =
            std::env::var("FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
        let seed: u64 =
            std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        eprintln!("v1_pair_random_programs: seed {seed}, {iters} programs");
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut total = Reached::default();
        for _ in 0..iters {
            let n = 2 + (next() % 200) as usize;
            let mut data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                bias(&mut data);
            }
            let r = v1_pair(&data);
            total.counters.wait += r.counters.wait;
            total.counters.retry_global += r.counters.retry_global;
            total.counters.retry_session += r.counters.retry_session;
            total.counters.reset_session += r.counters.reset_session;
            total.remote_resets += r.remote_resets;
            total.delivered += r.delivered;
        }
        eprintln!("reached: {total:?}");
    }

    /// Finds programs that reach each path (from a fixed pseudo-random sequence) and
    /// writes them as seeds: `cargo test -- --ignored write_v1_pair_seeds`.
    #[test]
    #[ignore]
    fn write_v1_pair_seeds() {
        type Want = (&'static str, fn(&Reached) -> bool);
        let wanted: [Want; 4] = [
            ("race_wait", |r| r.counters.wait > 0),
            ("reset_session", |r| r.counters.reset_session > 0),
            ("remote_reset_by_restart_rule", |r| {
                r.remote_resets > r.counters.reset_session as usize
            }),
            ("retry_session_and_global", |r| {
                r.counters.retry_session > 0 && r.counters.retry_global > 0
            }),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/v1_pair");
        let mut x: u64 = 0x5eed_cafe;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, pred) in wanted {
            let found = (0..200_000).find_map(|_| {
                let n = 8 + (next() % 64) as usize;
                let mut data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                bias(&mut data);
                pred(&v1_pair(&data)).then_some(data)
            });
            let data = found.unwrap_or_else(|| panic!("no program reaches {name}"));
            std::fs::write(dir.join(name), &data).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("{name}: {data:02x?}");
        }
    }
}
