//! Two-sided scenarios of the v1 state machine on the in-memory [`Pair`] network with a
//! virtual clock: handshake, delivery in any chunking, cuts, tampering, races, resets,
//! standby, keepalives, timeouts and the receive budget.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::testing::{numbered, numbers, Pair};
use protocol::types::Features;
use protocol::wire::KeepaliveStamp;
use protocol::Message;
use protocol::{ConnectSeq, GlobalSeq, Policy, Seq, SessionState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn client_server() -> Pair {
    Pair::v1(Instant::now(), Policy::lossless_client(), Policy::stateful_server())
}

/// Both session endpoints are open and talk to each other.
fn assert_one_session(p: &Pair) {
    let a = p.session_ep(0).expect("node 0 has a session");
    let b = p.session_ep(1).expect("node 1 has a session");
    assert!(
        p.eps[a].conn.is_open(),
        "{} / {:?} / {:?}",
        p.eps[a].conn,
        p.nodes[0].log,
        p.nodes[1].log
    );
    assert!(p.eps[b].conn.is_open(), "{}", p.eps[b].conn);
    assert_eq!(p.eps[a].link, p.eps[b].link, "sessions on different links");
    let open: Vec<_> = p.eps.iter().filter(|e| e.alive && e.conn.is_open()).collect();
    assert_eq!(open.len(), 2, "exactly one session per side");
}

// ProtocolV1 handshake: 204 bytes from the connector (banner, addr, connect with mon.0's
// 18-byte auth-none authorizer, as a monitor sends one to a monitor (msgr-v1.md 3.6),
// in_seq) and 315 from the acceptor (banner block, SEQ reply, in_seq), msgr-v1.md 2.1.
#[test]
fn handshake_opens_both_sides_with_exact_byte_counts() {
    let mut p = client_server();
    p.connect(0);
    p.drive();
    assert_one_session(&p);
    assert_eq!(p.links[0].sent, [315, 204]);
    assert_eq!((p.nodes[0].opened, p.nodes[1].opened), (1, 1));
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    let s = p.eps[a].conn.seqs();
    assert_eq!((s.in_seq, s.out_seq, s.connect_seq), (Seq(0), Seq(0), ConnectSeq(1)));
    assert_eq!(p.eps[b].conn.seqs().connect_seq, ConnectSeq(1));
    assert_eq!(p.eps[a].conn.features(), Features::PACIFIC_ADVERTISED);
    assert!(!p.eps[a].conn.is_lossy());
    let shown = p.eps[a].conn.to_string();
    assert!(shown.starts_with("v1#") && shown.contains("Open cs=1"), "{shown}");
}

#[test]
fn messages_flow_both_ways_in_order_and_acks_trim_unacked() {
    let mut p = client_server();
    for i in 0..10 {
        p.send(0, numbered(i));
    }
    p.drive();
    for i in 100..110 {
        p.send(1, numbered(i));
    }
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), (0..10).collect::<Vec<_>>());
    assert_eq!(numbers(&p.nodes[0].received), (100..110).collect::<Vec<_>>());
    let seqs: Vec<u64> = p.nodes[1].received.iter().map(Message::seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[a].conn.pending_messages(), 0, "ACKs trimmed the unacked queue");
    assert_eq!(p.eps[b].conn.pending_messages(), 0);
    assert_eq!(p.eps[a].conn.seqs().in_seq, Seq(10));
    assert_eq!(p.eps[b].conn.seqs().out_seq, Seq(10));
}

// Priority ordering of the out queue: HIGHEST first, FIFO within a priority.
#[test]
fn out_queue_sends_higher_priority_first() {
    let mut p = client_server();
    let a = p.connect(0);
    let mut low = numbered(1);
    low.set_priority(64);
    let mut high = numbered(2);
    high.set_priority(255);
    p.conn(a).send_message(low);
    p.conn(a).send_message(high);
    p.conn(a).send_message(numbered(3));
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [2, 3, 1]);
}

// A stateless server (how a monitor treats clients) makes the session lossy and never
// ACKs; lossy clients never ACK either (msgr-v1.md 3.9).
#[test]
fn stateless_server_makes_session_lossy_without_acks() {
    let mut p = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.send(0, numbered(1));
    p.drive();
    let a = p.session_ep(0).unwrap();
    assert!(p.eps[a].conn.is_lossy());
    assert_eq!(numbers(&p.nodes[1].received), [1]);
    // 315 + MSG from the server? No: nothing but the handshake came back (no ACK).
    assert_eq!(p.links[0].sent[0], 315);
    assert_eq!(p.eps[a].conn.pending_messages(), 0, "lossy keeps no unacked copies");
}

#[test]
fn delivery_byte_by_byte() {
    let mut p = client_server();
    p.splitter = Some(Box::new(|_| 1));
    for i in 0..5 {
        p.send(0, numbered(i));
    }
    p.drive();
    for i in 0..5 {
        p.send(1, numbered(50 + i));
    }
    p.drive();
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), (0..5).collect::<Vec<_>>());
    assert_eq!(numbers(&p.nodes[0].received), (50..55).collect::<Vec<_>>());
}

#[test]
fn delivery_in_random_splits() {
    for seed in 0..200u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut p = client_server();
        let mut r2 = SmallRng::seed_from_u64(seed ^ 0xdead);
        p.splitter = Some(Box::new(move |n| r2.gen_range(1..=n)));
        let n = rng.gen_range(1..20);
        for i in 0..n {
            let mut m = numbered(i);
            m.set_data(Bytes::from(vec![i as u8; rng.gen_range(0..3000)]));
            p.send(0, m);
        }
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), (0..n).collect::<Vec<_>>(), "seed {seed}");
    }
}

// A cut at every byte offset of handshake + three messages: the lossless client
// reconnects and every message arrives exactly once, in order.
#[test]
fn cut_at_every_byte_offset_loses_nothing() {
    let mut p = client_server();
    for i in 0..3 {
        p.send(0, numbered(i));
    }
    p.drive();
    let total = p.delivered;
    for off in 0..=total {
        let mut p = client_server();
        p.cut_after = Some(off);
        for i in 0..3 {
            p.send(0, numbered(i));
        }
        p.run_for(Duration::from_secs(60));
        assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2], "cut at {off}");
        assert_one_session(&p);
    }
}

// A flipped bit in a message header fails its crc: the server faults (stateful server →
// standby), the client reconnects and resends; the message arrives once.
#[test]
fn tampered_header_is_a_crc_fault_and_lossless_resend_recovers() {
    let mut p = client_server();
    p.tamper = Some((1, 204 + 1 + 10, 0x40)); // inside the first MSG header (tid)
    p.send(0, numbered(7));
    p.run_for(Duration::from_secs(5));
    assert_eq!(numbers(&p.nodes[1].received), [7]);
    assert!(p.nodes[1].log.contains(&"Standby".to_string()), "{:?}", p.nodes[1].log);
    assert!(p.nodes[0].log.contains(&"Reconnect".to_string()), "{:?}", p.nodes[0].log);
    assert_one_session(&p);
}

// Bad front crc on a lossy session: the monitor-like server closes; both sides reset
// (ms_handle_reset) and nothing is delivered.
#[test]
fn tampered_front_on_lossy_session_resets_both_sides() {
    let mut p = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.tamper = Some((1, 204 + 1 + 53, 0x01)); // first front byte
    p.send(0, numbered(7));
    p.drive();
    assert!(p.nodes[1].received.is_empty());
    assert_eq!(p.nodes[1].resets, 1);
    assert_eq!(p.nodes[0].resets, 1);
    assert!(p.eps.iter().all(|e| !e.alive));
}

// Connection race (msgr-v1.md 3.7): both dial at once; the lower address (node 0) wins,
// node 1's acceptor WAITs node 1's... rather node 0's acceptor WAITs node 1's connector
// and node 1's acceptor replaces its own attempt. Exactly one session results.
#[test]
fn simultaneous_connect_resolves_to_one_session() {
    let mut p = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.send(0, numbered(1));
    p.send(1, numbered(2));
    p.run_for(Duration::from_secs(60));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1]);
    assert_eq!(numbers(&p.nodes[0].received), [2]);
    let a = p.session_ep(0).unwrap();
    assert!(!p.eps[a].accepted, "node 0 (lower address) keeps its outgoing connection");
}

#[test]
fn simultaneous_connect_random_orders() {
    for seed in 0..300u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut p = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
        let mut r2 = SmallRng::seed_from_u64(seed ^ 7);
        p.splitter = Some(Box::new(move |n| r2.gen_range(1..=n)));
        let first = rng.gen_range(0..2);
        p.send(first, numbered(1));
        for _ in 0..rng.gen_range(0..4) {
            p.step();
        }
        p.send(1 - first, numbered(2));
        p.run_for(Duration::from_secs(120));
        assert_one_session(&p);
        assert_eq!(numbers(&p.nodes[1 - first].received), [1], "seed {seed}");
        assert_eq!(numbers(&p.nodes[first].received), [2], "seed {seed}");
    }
}

/// A session reset seen on one node after a step of the run: what that node had sent
/// by then. (The machine resets when the RESETSESSION or the restarting connect is read;
/// the pair hears of it at its next step, so messages sent in between may be on either
/// side of the reset: only those sent after it was seen are surely after it.)
#[derive(Clone, Copy, Debug)]
struct ResetMark {
    /// Messages the reset node had sent (queued) when the reset was seen.
    sent: u32,
}

/// Records a reset mark for every node whose remote-reset count grew since `seen`.
fn note_resets(p: &Pair, sent: [u32; 2], seen: &mut [usize; 2], marks: &mut [Vec<ResetMark>; 2]) {
    for n in 0..2 {
        let now = p.nodes[n].remote_resets;
        for _ in seen[n]..now {
            marks[n].push(ResetMark { sent: sent[n] });
        }
        seen[n] = now;
    }
}

/// Every remote reset of `node` is explained by a cut in the session's first handshake,
/// through one of Ceph's two rules for a peer that seems to have lost its session
/// (msgr-v1.md 3.7; in the pair nobody restarts, so it always is such a cut):
/// * as acceptor, the peer-restart rule: a connect with connect_seq 0 against our session
///   with connect_seq > 0, under resetcheck, replaces and resets it ("accept peer reset,
///   then tried to connect to us") — the peer never saw our reply, so it never opened;
/// * as connector, RESETSESSION: we accepted (connect_seq 1) but the handshake was cut
///   before the peer's own attempt opened, so our reconnect met a session of the peer's
///   that never opened (connect_seq 0, connecting or parked) — "we reset" under
///   resetcheck.
///
/// (A connect_seq of 0 means the sender's session never opened since it began or was
/// itself reset, so chains of such cuts explain resets on both sides.)
fn explain_remote_resets(seed: u64, p: &Pair, node: usize) {
    let log = &p.nodes[node].log;
    let mut as_connector = 0;
    for (i, entry) in log.iter().enumerate() {
        let Some(ep) = entry.strip_prefix("RemoteReset#") else { continue };
        let (decide, reconnect) = (format!("decide#{ep}("), format!("Reconnect#{ep}"));
        // The endpoint's latest role: a decision (acceptor) or a reconnect (connector).
        let latest = log[..i].iter().rev().find(|e| e.starts_with(&decide) || **e == reconnect);
        match latest {
            Some(why) if why.starts_with(&decide) => {
                let request = why.split(" vs ").next().unwrap_or_default();
                assert!(
                    request.contains("connect_seq: ConnectSeq(0),")
                        && why.ends_with("= Replace { reset_existing: true, peer_restarted: true }"),
                    "seed {seed}: node {node}: remote reset #{ep} not by the peer-restart rule: {why}"
                );
            }
            _ => as_connector += 1,
        }
    }
    let peer = &p.nodes[1 - node];
    let reset_sessions: Vec<&String> = peer
        .log
        .iter()
        .filter(|e| e.starts_with("decide#") && e.ends_with("= ResetSession { full: true }"))
        .collect();
    for why in &reset_sessions {
        let existing = why.split(" vs ").nth(1).unwrap_or_default();
        assert!(
            existing.contains(", connect_seq: ConnectSeq(0),"),
            "seed {seed}: node {}: RESETSESSION against a session that had opened: {why}",
            1 - node
        );
    }
    assert!(
        as_connector <= reset_sessions.len(),
        "seed {seed}: node {node}: {as_connector} RESETSESSIONs received, {} sent",
        reset_sessions.len()
    );
}

/// The stream `node` sent (ids `base..base + sent`) as the peer received it (`got`), held
/// to the lossless promise: strictly increasing (never a duplicate, never reordered), and
/// complete but for what session resets of `node` discarded — each reset drops the queue
/// of its session, one contiguous run of messages, so there are at most as many gaps as
/// resets — and everything sent after the last reset was seen arrives.
fn check_stream(seed: u64, node: usize, base: u32, sent: u32, got: &[u32], marks: &[ResetMark]) {
    assert!(got.windows(2).all(|w| w[0] < w[1]), "seed {seed}: node {node}'s stream {got:?}");
    assert!(got.iter().all(|&id| id >= base && id < base + sent), "seed {seed}: {got:?}");
    let delivered = |id: &u32| got.binary_search(id).is_ok();
    let mut gaps = 0;
    let mut in_gap = false;
    for id in base..base + sent {
        let missing = !delivered(&id);
        gaps += usize::from(missing && !in_gap);
        in_gap = missing;
    }
    assert!(
        gaps <= marks.len(),
        "seed {seed}: node {node} lost {gaps} runs with {marks:?}: {got:?}"
    );
    let after_last = marks.last().map_or(0, |m| m.sent);
    let missing: Vec<u32> = (base + after_last..base + sent).filter(|id| !delivered(id)).collect();
    assert!(missing.is_empty(), "seed {seed}: node {node}: lost {missing:?} (resets {marks:?})");
}

/// One randomised lossless run: messages both ways, random cuts, random chunking.
/// Every run is held to zero loss, duplicates and reordering, the only exception being
/// what a session reset discarded (and the sender was told of, `RemoteReset`); every such
/// reset must be explained (see [`explain_remote_resets`]). Returns the number of resets.
fn lossless_run(seed: u64, p0: Policy, p1: Policy) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Pair::v1(Instant::now(), p0, p1);
    p.verbose = true;
    let mut r2 = SmallRng::seed_from_u64(seed.wrapping_mul(31));
    p.splitter = Some(Box::new(move |n| if r2.gen_bool(0.5) { n } else { r2.gen_range(1..=n) }));
    let n0 = rng.gen_range(1..25u32);
    let n1 = rng.gen_range(0..25u32);
    let (mut sent0, mut sent1) = (0, 0);
    let mut seen = [0usize; 2];
    let mut marks: [Vec<ResetMark>; 2] = [Vec::new(), Vec::new()];
    // Node 1 of a server policy never dials: it sends once both sides saw the session
    // open (before that, a reconnect with connect_seq 0 is a peer reset in Ceph's rules).
    let server1 = p1.server;
    for _round in 0..400 {
        if sent0 < n0 && rng.gen_bool(0.4) {
            p.send(0, numbered(sent0));
            sent0 += 1;
        }
        let may1 = !server1 || (p.nodes[0].opened > 0 && p.session_ep(1).is_some());
        if sent1 < n1 && rng.gen_bool(0.4) && may1 {
            p.send(1, numbered(1000 + sent1));
            sent1 += 1;
        }
        p.step();
        note_resets(&p, [sent0, sent1], &mut seen, &mut marks);
        if rng.gen_ratio(1, 12) {
            let live = p.live_links();
            if !live.is_empty() {
                let l = live[rng.gen_range(0..live.len())];
                p.cut(l);
                note_resets(&p, [sent0, sent1], &mut seen, &mut marks);
            }
        }
        if rng.gen_ratio(1, 8) {
            p.run_for(Duration::from_millis(rng.gen_range(0..500)));
            note_resets(&p, [sent0, sent1], &mut seen, &mut marks);
        }
        if sent0 == n0 && sent1 == n1 && rng.gen_ratio(1, 20) {
            break;
        }
    }
    while sent0 < n0 {
        p.send(0, numbered(sent0));
        sent0 += 1;
    }
    p.run_for(Duration::from_secs(120));
    note_resets(&p, [sent0, sent1], &mut seen, &mut marks);
    // A stateful server may still hold messages in standby until the client comes back.
    if p.nodes[0].received.len() < sent1 as usize {
        p.send(0, numbered(sent0));
        sent0 += 1;
        p.run_for(Duration::from_secs(120));
        note_resets(&p, [sent0, sent1], &mut seen, &mut marks);
    }
    if std::env::var("V1_DEBUG").is_ok() {
        eprintln!("node0 log: {:#?}\nnode1 log: {:#?}", p.nodes[0].log, p.nodes[1].log);
        for e in &p.eps {
            eprintln!("ep node {} alive {} accepted {} {}", e.node, e.alive, e.accepted, e.conn);
        }
    }
    for node in 0..2 {
        assert_eq!(p.nodes[node].resets, 0, "seed {seed}: ms_handle_reset on a lossless session");
        explain_remote_resets(seed, &p, node);
    }
    check_stream(seed, 0, 0, sent0, &numbers(&p.nodes[1].received), &marks[0]);
    check_stream(seed, 1, 1000, sent1, &numbers(&p.nodes[0].received), &marks[1]);
    assert!(!server1 || marks[0].is_empty(), "seed {seed}: a lossless client was reset");
    // Standby policies may end parked; never two live sessions on one node.
    for node in 0..2 {
        let live = p.eps.iter().filter(|e| e.node == node && e.alive && e.conn.is_open()).count();
        assert!(live <= 1, "seed {seed}: node {node} has {live} open sessions");
    }
    let resets = marks[0].len() + marks[1].len();
    if resets > 0 && std::env::var("V1_SHOW_RESETS").is_ok() {
        eprintln!("seed {seed}: resets {:?} {:?}", marks[0], marks[1]);
    }
    resets
}

// Ceph's requeue_sent / SEQ exchange / discard of seq <= in_seq: zero loss, zero
// duplicates, order kept, over thousands of random cut schedules.
#[test]
fn lossless_reconnect_replay_randomised() {
    let base: u64 = std::env::var("V1_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let runs: u64 = std::env::var("V1_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    eprintln!(
        "lossless_reconnect_replay_randomised: base seed {base} ({runs} runs; V1_SEED/V1_RUNS)"
    );
    let mut resets = 0;
    for i in 0..runs {
        resets += lossless_run(
            base.wrapping_add(i),
            Policy::lossless_client(),
            Policy::stateful_server(),
        );
    }
    eprintln!("{resets} session resets, each explained by a cut in a first handshake");
}

// The same between two lossless peers (mon ↔ mon): both sides reconnect, races included.
#[test]
fn lossless_peers_replay_randomised() {
    let base: u64 = std::env::var("V1_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xbeef);
    let runs: u64 = std::env::var("V1_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    eprintln!("lossless_peers_replay_randomised: base seed {base} ({runs} runs; V1_SEED/V1_RUNS)");
    let mut resets = 0;
    for i in 0..runs {
        resets += lossless_run(
            base.wrapping_add(i),
            Policy::lossless_peer_reuse(),
            Policy::lossless_peer_reuse(),
        );
    }
    eprintln!("{resets} session resets, each explained by a cut in a first handshake");
}

// ProtocolV1::fault on a lossy channel: "failing", ms_handle_reset on both sides.
#[test]
fn lossy_session_resets_on_cut() {
    let mut p = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.send(0, numbered(1));
    p.drive();
    p.cut(0);
    p.drive();
    assert_eq!(p.nodes[0].resets, 1);
    assert_eq!(p.nodes[1].resets, 1);
    assert!(p.nodes[0].log.ends_with(&["Reset".to_string(), "Closed".to_string()]));
    assert!(p.eps.iter().all(|e| !e.alive));
}

// "accept peer reset, then tried to connect to us" with resetcheck: the restarted peer's
// connect_seq 0 replaces our session, which is reset (READY, in_seq 0, remote reset).
#[test]
fn peer_restart_with_resetcheck_resets_session() {
    let mut p =
        Pair::v1(Instant::now(), Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse());
    for i in 0..3 {
        p.send(0, numbered(i));
    }
    p.drive();
    let b_old = p.session_ep(1).unwrap();
    assert_eq!(p.eps[b_old].conn.seqs().in_seq, Seq(3));
    // Node 0 restarts: its state is gone, its socket dies.
    for e in 0..p.eps.len() {
        if p.eps[e].node == 0 {
            p.eps[e].alive = false;
        }
    }
    p.nodes[0].sessions.clear();
    p.cut_all();
    p.drive();
    p.nodes[0].received.clear();
    p.send(0, numbered(10));
    p.run_for(Duration::from_secs(10));
    assert_eq!(p.nodes[1].remote_resets, 1, "{:?}", p.nodes[1].log);
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[b].conn.seqs().in_seq, Seq(1), "in_seq restarted: the new message is seq 1");
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 10]);
    assert_one_session(&p);
}

// RESETSESSION: the server lost the session (restart); the client's reconnect with
// connect_seq > 0 is answered RESETSESSION, the client discards its queue, reports a
// remote reset and connects again with connect_seq 0.
#[test]
fn server_restart_answers_resetsession() {
    let mut p = client_server();
    p.send(0, numbered(1));
    p.drive();
    for e in 0..p.eps.len() {
        if p.eps[e].node == 1 {
            p.eps[e].alive = false;
        }
    }
    p.nodes[1].sessions.clear();
    p.cut_all();
    p.run_for(Duration::from_secs(10));
    assert_eq!(p.nodes[0].remote_resets, 1, "{:?}", p.nodes[0].log);
    assert_one_session(&p);
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.seqs().connect_seq, ConnectSeq(1), "fresh session after reset");
    p.send(0, numbered(2));
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
}

/// A lossless v1 pair whose dialling session delivered message 1 and, cut with
/// nothing queued, parked in standby; returns the pair and that session's endpoint.
fn lossless_pair_in_standby() -> (Pair, usize) {
    let mut p = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.send(0, numbered(1));
    p.drive();
    p.cut_all();
    p.drive();
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.state(), SessionState::Standby);
    (p, a)
}

// Standby and wake: a lossless peer with nothing queued parks on a cut; a new message
// wakes it; the reconnect with an equal connect_seq gets RETRY_SESSION, then replaces.
#[test]
fn standby_then_wake_on_send_via_retry_session() {
    let (mut p, a) = lossless_pair_in_standby();
    assert!(p.nodes[0].log.contains(&"Standby".to_string()));
    assert!(p.eps[a].conn.poll_timeout().is_none(), "standby arms no timer");
    p.send(0, numbered(2));
    p.run_for(Duration::from_secs(5));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
    // cs 1 → standby reconnect with 1 → RETRY_SESSION(2) → replace → 3.
    assert_eq!(p.eps[a].conn.seqs().connect_seq, ConnectSeq(3));
}

// `send_messages` is `send_message` one by one: a batch handed to a session in standby
// wakes it once, keeps the order within a priority and the priority order across them,
// and a closed session takes (and drops) the whole batch.
#[test]
fn a_batch_wakes_standby_and_keeps_the_order_of_one_by_one_sends() {
    let (mut p, a) = lossless_pair_in_standby();
    let mut high = numbered(4);
    high.set_priority(255);
    p.conn(a).send_messages([numbered(2), numbered(3), high, numbered(5)]);
    p.conn(a).send_messages(std::iter::empty());
    p.run_for(Duration::from_secs(5));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1, 4, 2, 3, 5]);
    p.conn(a).close(Instant::now());
    let kept = numbered(6);
    p.conn(a).send_messages([kept.clone(), numbered(7)]);
    assert!(kept.front().is_unique(), "a closed session kept a message of the batch");
    assert_eq!(p.conn(a).pending_messages(), 0);
}

// `send_message_vec` is `send_messages` with each message prepared first: a batch of
// one priority goes in whole (into the empty lane, and behind the messages a lane holds),
// one whose preparation mixed priorities message by message, and a closed session empties
// the batch, dropping it.
#[test]
fn a_vec_batch_keeps_the_order_of_one_by_one_sends() {
    let (mut p, a) = lossless_pair_in_standby();
    let number = |m: &Message| numbers(std::slice::from_ref(m))[0];
    // Large enough to be handed over as a buffer, then one too small to be, then one
    // large enough whose preparation mixes priorities.
    let mut batch = vec![numbered(2), numbered(3), numbered(4), numbered(5)];
    p.conn(a).send_message_vec(&mut batch, |_| {});
    assert!(batch.is_empty());
    batch.extend([numbered(6), numbered(7)]);
    p.conn(a).send_message_vec(&mut batch, |_| {});
    // Raised by its preparation: it goes first, the rest after the lane's.
    batch.extend([numbered(8), numbered(9), numbered(10), numbered(11)]);
    p.conn(a).send_message_vec(&mut batch, |m| {
        if number(m) == 9 {
            m.set_priority(255);
        }
    });
    assert!(batch.is_empty());
    assert_eq!(p.conn(a).pending_messages(), 10);
    p.run_for(Duration::from_secs(5));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1, 9, 2, 3, 4, 5, 6, 7, 8, 10, 11]);
    let prios: Vec<u16> = p.nodes[1].received.iter().map(Message::priority).collect();
    assert_eq!(prios[1], 255, "the preparation's priority was sent");
    p.conn(a).close(Instant::now());
    let kept = numbered(12);
    batch.extend([kept.clone(), numbered(13)]);
    p.conn(a).send_message_vec(&mut batch, |_| {});
    assert!(batch.is_empty(), "a closed session left the batch");
    assert!(kept.front().is_unique(), "a closed session kept a message of the batch");
    assert_eq!(p.conn(a).pending_messages(), 0);
}

// RETRY_GLOBAL: a connect whose global_seq is below what the acceptor saw last.
#[test]
fn stale_global_seq_gets_retry_global() {
    let mut p = client_server();
    p.send(0, numbered(1));
    p.drive();
    p.cut_all();
    p.run_for(Duration::from_secs(1)); // reconnect: gs 2, replace
    let b = p.session_ep(1).unwrap();
    let pgs = p.eps[b].conn.seqs().peer_global_seq;
    assert_eq!(pgs, GlobalSeq(2));
    p.nodes[0].config.global_seq.set(GlobalSeq(0));
    p.cut_all();
    p.run_for(Duration::from_secs(1)); // gs 1 < 2 → RETRY_GLOBAL(2) → gs 3
    assert_eq!(p.nodes[0].config.global_seq.current(), GlobalSeq(3));
    assert_one_session(&p);
    p.send(0, numbered(2));
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
}

// KEEPALIVE2 → KEEPALIVE2_ACK echoing the stamp; periodic keepalives from the timer.
#[test]
fn keepalive2_is_echoed_and_periodic() {
    let mut c0 = protocol::Config::new(
        protocol::types::EntityName::new(protocol::types::EntityType::CLIENT, -1),
        protocol::types::EntityAddr::default(),
    );
    c0.keepalive_interval = Some(Duration::from_secs(10));
    let p1 = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    let c1 = (*p1.nodes[1].config).clone();
    let mut p = Pair::with_configs(
        Instant::now(),
        protocol::ProtocolVersion::V1,
        c0,
        Policy::lossy_client(),
        c1,
        Policy::stateless_server(),
    );
    let a = p.connect(0);
    p.drive();
    let stamp = KeepaliveStamp { sec: 0x6b01_e722, nsec: 0x1c78_b0c7 };
    p.conn(a).send_keepalive(stamp);
    p.drive();
    assert_eq!(p.eps[a].conn.last_keepalive_ack(), Some(stamp));
    p.run_for(Duration::from_secs(35));
    let acks = p.nodes[0].log.iter().filter(|e| *e == "KeepaliveAck").count();
    assert_eq!(acks, 4, "one explicit + three periodic");
    let b = p.session_ep(1).or_else(|| p.eps.iter().position(|e| e.node == 1 && e.alive)).unwrap();
    assert!(p.eps[b].conn.last_keepalive().is_some());
    assert!(p.eps[a].conn.is_open(), "keepalives keep the session out of idle timeout");
}

// ms_connection_idle_timeout: a silent open connection faults (lossy: reset).
#[test]
fn idle_timeout_faults_silent_session() {
    let mut p = Pair::v1(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    let mut c1 = (*p.nodes[1].config).clone();
    c1.idle_timeout = Duration::from_secs(30);
    let c0 = (*p.nodes[0].config).clone();
    p = Pair::with_configs(
        p.now,
        protocol::ProtocolVersion::V1,
        c0,
        Policy::lossy_client(),
        c1,
        Policy::stateless_server(),
    );
    p.connect(0);
    p.drive();
    p.run_for(Duration::from_secs(29));
    assert_eq!(p.nodes[1].resets, 0);
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.nodes[1].resets, 1);
    assert_eq!(p.nodes[0].resets, 1, "the client saw the server close");
}

// The receive budget: after a header the machine stops reading until granted.
#[test]
fn receive_budget_pauses_reading_until_granted() {
    let mut p = client_server();
    p.nodes[1].hold_budget = true;
    p.send(0, numbered(1));
    p.send(0, numbered(2));
    p.drive();
    assert!(p.nodes[1].received.is_empty());
    assert_eq!(p.nodes[1].budget_waiting.len(), 1);
    let b = p.session_ep(1).unwrap();
    assert!(!p.eps[b].conn.wants_read());
    // No idle deadline while we hold reading back (nothing else is due here).
    assert_eq!(p.eps[b].conn.poll_timeout(), None);
    p.release_budget();
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [1]);
    p.release_budget();
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
}

// The drive loop is bounded: a conversation that does not settle within max_steps
// rounds is reported as livelock instead of hanging the test.
#[test]
#[should_panic(expected = "livelock")]
fn drive_loop_is_bounded() {
    let mut p = client_server();
    p.max_steps = 2;
    p.send(0, numbered(1));
    p.drive();
}

/// Driven as the messenger drives it (`carry_with_credit`), a burst of 4 KiB messages
/// costs one budget request per [`BENCH_CREDIT`]'s worth of messages, where the plain
/// exchange asks once per message; every message arrives once, in order, either way.
#[test]
fn receive_credit_turns_a_burst_into_few_budget_requests() {
    use protocol::testing::{carry, carry_with_credit, BENCH_CREDIT};
    let mut p = client_server();
    let a = p.connect(0);
    p.drive();
    let b = p.session_ep(1).unwrap();
    let now = p.now;
    let (lo, hi) = p.eps.split_at_mut(b);
    let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
    let mut segs = Vec::new();
    let burst = 200u32;
    let (messages, max_bytes, _) = BENCH_CREDIT;
    let cost = 4096 + protocol::message::MESSAGE_OVERHEAD;
    // One request for the first message of each grant, which funds the next ones.
    let per_grant = u64::from(messages).min(max_bytes / cost) + 1;
    for credit in [true, false] {
        for id in 0..burst {
            let mut m = numbered(id);
            // 4 KiB of payload in all: one first window covers it.
            m.set_data(Bytes::from(vec![0x5a; 4092]));
            ca.send_message(m);
        }
        let mut got = Vec::new();
        let requests = if credit {
            carry_with_credit(ca, cb, now, &mut segs, |m| got.push(m))
        } else {
            carry(ca, cb, now, &mut segs, |m| got.push(m))
        };
        assert_eq!(numbers(&got), (0..burst).collect::<Vec<_>>(), "credit {credit}");
        let most = if credit { u64::from(burst).div_ceil(per_grant) } else { u64::from(burst) };
        assert_eq!(requests, most, "credit {credit}");
        assert_eq!(cb.take_receive_credit(), (0, 0), "the unused credit was taken back");
    }
}

// A RETRY_SESSION whose connect_seq is not above ours (found by open_mutation.rs: a
// corrupted reply on a reconnect) is refused, as Ceph's connector asserts it
// (`reply.connect_seq > connect_seq`). Adopted, a connect_seq of 0 went out on our next
// connect, which the acceptor takes for a peer that restarted and lost its session: it
// zeroed its in_seq (READY, no SEQ exchange) while we kept our session and resent what
// it already had, which it delivered a second time, and no reset was reported anywhere.
// Here the reconnect's connect is made to carry node 1's connect_seq (so that node 1,
// in standby, answers RETRY_SESSION) and that RETRY_SESSION arrives with connect_seq 0.
#[test]
fn a_retry_session_to_a_lower_connect_seq_is_refused_and_nothing_is_delivered_twice() {
    use protocol::wire::{ConnectMsg, ConnectReply, Tag};
    use std::cell::Cell;
    use std::rc::Rc;
    let mut p = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    // Once set: node 1's ACKs on the first link are lost, so node 0 keeps its messages.
    let swallow = Rc::new(Cell::new(false));
    // Node 1's connect_seq, which the reconnect's connect is made to carry.
    let theirs = Rc::new(Cell::new(0u32));
    let rewritten = Rc::new(Cell::new(0));
    let (s, t, r) = (swallow.clone(), theirs.clone(), rewritten.clone());
    // The connect follows the banner (9 bytes) and the connector's address (136).
    let at = 9 + 136;
    p.mutate = Some(Box::new(move |link, to, off, seg| match (link, to) {
        (0, 0) if s.get() => Bytes::new(),
        (1, 1) if off <= at && at < off + seg.len() as u64 => {
            let i = (at - off) as usize;
            let mut connect = ConnectMsg::decode(&seg[i..]).unwrap().0;
            connect.connect_seq = t.get();
            let mut v = seg[..i].to_vec();
            v.extend_from_slice(&connect.to_bytes());
            v.extend_from_slice(&seg[i + ConnectMsg::LEN..]);
            Bytes::from(v)
        }
        (1, 0) if seg.first() == Some(&Tag::RETRY_SESSION.0) => {
            let (mut reply, used) = ConnectReply::decode(&seg).unwrap();
            reply.connect_seq = 0;
            let mut v = reply.to_bytes().to_vec();
            v.extend_from_slice(&seg[used..]);
            r.set(r.get() + 1);
            Bytes::from(v)
        }
        _ => seg,
    }));
    p.send(0, numbered(0));
    p.run_for(Duration::from_secs(1));
    assert_eq!(numbers(&p.nodes[1].received), [0]);
    swallow.set(true);
    for i in 1..4 {
        p.send(0, numbered(i));
    }
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3]);
    let (a, b) = (p.session_ep(0).unwrap(), p.session_ep(1).unwrap());
    assert_eq!(p.conn(a).pending_messages(), 3, "unacknowledged");
    theirs.set(p.conn(b).existing_session().connect_seq.to_v1());
    p.cut_all();
    p.run_for(Duration::from_secs(60));
    assert_eq!(rewritten.get(), 1, "{:?} / {:?}", p.nodes[0].log, p.nodes[1].log);
    p.send(0, numbered(4));
    p.run_for(Duration::from_secs(60));
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3, 4], "{:?}", p.nodes[1].log);
    assert_eq!(p.nodes[0].remote_resets + p.nodes[1].remote_resets, 0);
    assert_one_session(&p);
}

/// A v1 pair whose connector (node 0, a lossless client) does not advertise
/// RECONNECT_SEQ, against a stateful server (node 1).
fn client_server_without_reconnect_seq() -> Pair {
    use protocol::testing::node_config;
    use protocol::ProtocolVersion;
    let c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
    let supported = Features(Features::PACIFIC_ADVERTISED.bits() & !Features::RECONNECT_SEQ.bits());
    let c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
    Pair::with_configs(
        Instant::now(),
        ProtocolVersion::V1,
        c0,
        Policy::lossless_client().with_features(supported, Features::REQUIRED_DEFAULT),
        c1,
        Policy::stateful_server(),
    )
}

// Without RECONNECT_SEQ the acceptor answers a reconnect READY, not SEQ: no seq
// exchange. The connector keeps its in_seq and out_seq (Ceph's client_ready leaves
// them), so the acceptor must keep the session's too unless the peer restarted (its
// connect_seq 0): renumbered from 1, its next messages carried seqs the connector
// already had and were dropped as duplicates (lost, then acknowledged), and with its
// in_seq zeroed, the connector's resends of what it had already delivered were
// delivered twice.
#[test]
fn a_reconnect_without_reconnect_seq_keeps_the_session_numbers() {
    let mut p = client_server_without_reconnect_seq();
    for i in 0..4 {
        p.send(0, numbered(i));
    }
    p.drive();
    for i in 100..104 {
        p.send(1, numbered(i));
    }
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3]);
    assert_eq!(numbers(&p.nodes[0].received), [100, 101, 102, 103]);
    // Everything was acknowledged both ways; the connection drops.
    p.cut_all();
    p.send(1, numbered(104));
    p.send(0, numbered(4));
    p.run_for(Duration::from_secs(60));
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3, 4], "server received");
    assert_eq!(numbers(&p.nodes[0].received), [100, 101, 102, 103, 104], "client received");
}

// As above, but the connection drops once the server has the client's last two
// messages and before its ACK of them reaches the client: the client resends them with
// their seqs, which the server already delivered.
#[test]
fn a_reconnect_without_reconnect_seq_delivers_no_resend_twice() {
    let run = |cut_after: Option<u64>| {
        let mut p = client_server_without_reconnect_seq();
        for i in 0..2 {
            p.send(0, numbered(i));
        }
        p.drive();
        let before = p.delivered;
        p.cut_after = cut_after.map(|n| before + n);
        p.send(0, numbered(2));
        p.send(0, numbered(3));
        p.drive();
        (p, before)
    };
    // The bytes of the two messages and the ACK's tag: all the exchange delivers but
    // the ACK's seq.
    let (p, before) = run(None);
    let (mut p, _) = run(Some(p.delivered - before - 8));
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3]);
    p.send(0, numbered(4));
    p.run_for(Duration::from_secs(60));
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3, 4], "server received");
}
