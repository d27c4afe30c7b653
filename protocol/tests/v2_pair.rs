//! Two-sided scenarios of the msgr2 state machine on the in-memory [`Pair`] network with
//! a virtual clock: handshake both sides (auth none and a two-round method, crc and
//! secure), messages both ways byte-exact, delivery in any chunking, a cut at every
//! byte offset, tampering (crc and GCM tag), simultaneous connect, reconnect with
//! replay, reset, lossy sessions and keepalives.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::auth::ConMode;
use protocol::testing::node_config as nc;
use protocol::testing::{numbered, numbers, Pair, TestAuthProvider, TEST_AUTH};
use protocol::types::Features;
use protocol::wire::KeepaliveStamp;
use protocol::Message;
use protocol::{ConnectSeq, Cookies, Policy, ProtocolVersion, Seq, SessionState};

fn node_config(num: i64, port: u16, nonce: u32) -> protocol::Config {
    nc(ProtocolVersion::V2, num, port, nonce)
}
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A message with all three segments, sized from `id`.
fn big_msg(id: u32) -> Message {
    let mut m = numbered(id);
    m.set_tid(u64::from(id) * 3);
    m.set_version(7);
    m.set_compat_version(2);
    m.set_middle(Bytes::from(vec![id as u8; (id as usize * 13) % 200]));
    m.set_data(Bytes::from((0..(id as usize * 997) % 9000).map(|i| i as u8).collect::<Vec<_>>()));
    m
}

/// A lossless client and a stateful server authenticating with the two-round test
/// method in `modes`.
fn test_auth_pair(modes: &[ConMode]) -> Pair {
    Pair::with_test_auth(
        Instant::now(),
        Policy::lossless_client(),
        Policy::stateful_server(),
        modes,
    )
}

fn client_server() -> Pair {
    Pair::v2(Instant::now(), Policy::lossless_client(), Policy::stateful_server())
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
    assert!(p.eps[b].conn.is_open(), "{} / {:?}", p.eps[b].conn, p.nodes[1].log);
    assert_eq!(p.eps[a].link, p.eps[b].link, "sessions on different links");
    let open: Vec<_> = p.eps.iter().filter(|e| e.alive && e.conn.is_open()).collect();
    assert_eq!(open.len(), 2, "exactly one session per side");
}

// msgr-v2.md 1.1: banner, HELLO, AUTH_REQUEST/AUTH_DONE, two AUTH_SIGNATUREs,
// CLIENT_IDENT/SERVER_IDENT. Byte counts for a mon-type pair with single v2 addresses:
// C→S 26 + 72 + 70 + 68 + 159 (the AUTH_REQUEST names "mon.0", 4 bytes shorter than the
// CLI's "client.admin"), S→C 26 + 72 + 52 + 68 + 124 (SERVER_IDENT with one address is
// 35 bytes shorter than the monitor's two-address one).
#[test]
fn handshake_opens_both_sides_with_exact_byte_counts() {
    let mut p = client_server();
    p.connect(0);
    p.drive();
    assert_one_session(&p);
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.links[0].sent, [26 + 72 + 52 + 68 + 124, 26 + 72 + 70 + 68 + 159]);
    assert_eq!((p.nodes[0].opened, p.nodes[1].opened), (1, 1));
    assert_eq!(p.eps[a].conn.features(), Features::PACIFIC_ADVERTISED);
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::CRC));
    assert!(!p.eps[a].conn.is_lossy());
    let Cookies { client: cc, server: sc } = p.eps[a].conn.cookies();
    assert!(cc != 0 && sc != 0, "lossless: both cookies set");
    assert_eq!(p.eps[b].conn.cookies(), Cookies { client: cc, server: sc });
    assert_eq!(p.eps[a].conn.state(), SessionState::Open);
    let shown = p.eps[a].conn.to_string();
    assert!(shown.starts_with("v2#") && shown.contains("Open crc"), "{shown}");
}

#[test]
fn messages_flow_both_ways_byte_exact_and_acks_trim_unacked() {
    let mut p = client_server();
    let sent0: Vec<Message> = (1..=20).map(big_msg).collect();
    for m in &sent0 {
        p.send(0, m.clone());
    }
    p.drive();
    let sent1: Vec<Message> = (101..=110).map(big_msg).collect();
    for m in &sent1 {
        p.send(1, m.clone());
    }
    p.drive();
    for (got, want) in
        p.nodes[1].received.iter().zip(&sent0).chain(p.nodes[0].received.iter().zip(&sent1))
    {
        assert_eq!(
            (got.front(), got.middle(), got.data()),
            (want.front(), want.middle(), want.data())
        );
        assert_eq!(
            (got.msg_type(), got.tid(), got.version(), got.compat_version(), got.priority()),
            (want.msg_type(), want.tid(), want.version(), want.compat_version(), want.priority())
        );
    }
    assert_eq!(numbers(&p.nodes[1].received), (1..=20).collect::<Vec<_>>());
    assert_eq!(numbers(&p.nodes[0].received), (101..=110).collect::<Vec<_>>());
    assert_eq!(p.nodes[1].received[0].seq(), 1);
    assert_eq!(p.nodes[1].received[19].seq(), 20);
    let src = p.nodes[1].received[0].src().unwrap();
    assert_eq!(src.to_string(), "mon.0", "src from HELLO type + ident gid");
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[a].conn.pending_messages(), 0, "acked via ack_seq / ACK");
    assert_eq!(p.eps[b].conn.pending_messages(), 0);
    assert_eq!(p.eps[a].conn.seqs().in_seq, Seq(10));
    assert_eq!(p.eps[a].conn.seqs().out_seq, Seq(20));
}

/// Both directions, all segment shapes, for the pair built by `make`.
fn exchange_is_byte_exact(mut p: Pair) -> Pair {
    let sent0: Vec<Message> = (1..=12).map(big_msg).collect();
    let sent1: Vec<Message> = (101..=106).map(big_msg).collect();
    for m in &sent0 {
        p.send(0, m.clone());
    }
    p.drive();
    for m in &sent1 {
        p.send(1, m.clone());
    }
    p.drive();
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), (1..=12).collect::<Vec<_>>());
    assert_eq!(numbers(&p.nodes[0].received), (101..=106).collect::<Vec<_>>());
    for (got, want) in p.nodes[1].received.iter().zip(&sent0) {
        assert_eq!(
            (got.front(), got.middle(), got.data()),
            (want.front(), want.middle(), want.data())
        );
    }
    p
}

// msgr-v2.md 5.3-5.5 with a two-round method: AUTH_REPLY_MORE / AUTH_REQUEST_MORE, a
// session key (real HMAC signatures over both transcripts), crc mode.
#[test]
fn two_round_auth_with_signatures_in_crc_mode() {
    let p = Pair::with_test_auth(
        Instant::now(),
        Policy::lossless_client(),
        Policy::stateful_server(),
        &[ConMode::CRC],
    );
    let p = exchange_is_byte_exact(p);
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::CRC));
    assert!(p.eps[a].conn.as_v2().unwrap().global_id() > 1000, "global id from the test method");
}

// msgr-v2.md 3.3: secure mode from the connection secret; every frame after AUTH_DONE
// encrypted, messages of every shape byte-exact both ways.
#[test]
fn secure_mode_handshake_and_messages() {
    let p = Pair::with_test_auth(
        Instant::now(),
        Policy::lossless_client(),
        Policy::stateful_server(),
        &[ConMode::SECURE, ConMode::CRC],
    );
    let p = exchange_is_byte_exact(p);
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::SECURE));
    assert_eq!(p.eps[b].conn.con_mode(), Some(ConMode::SECURE));
    // The acceptor's AUTH_SIGNATURE and everything after it is 96-byte blocks: 26 + 72 +
    // 57 (REPLY_MORE, 8-byte challenge + 4 + 4 crc) + AUTH_DONE, then secure frames.
    assert!(p.links[0].sent[0] > 26 + 72 + 48 + 96);
}

// The connector prefers the acceptor's order? No: pick_con_mode takes the connector's
// first preference that the acceptor allows (msgr-v2.md 5.2: [2,1] → secure, [1,2] → crc).
#[test]
fn mode_is_the_connectors_first_allowed_preference() {
    let now = Instant::now();
    let mut c0 = node_config(0, 6789, 1);
    let mut c1 = node_config(1, 6790, 2);
    c0.auth = std::sync::Arc::new(TestAuthProvider::new(&[ConMode::CRC, ConMode::SECURE]));
    c1.auth = std::sync::Arc::new(TestAuthProvider::new(&[ConMode::SECURE, ConMode::CRC]));
    let mut p = Pair::with_configs(
        now,
        ProtocolVersion::V2,
        c0,
        Policy::lossless_client(),
        c1,
        Policy::stateful_server(),
    );
    p.send(0, numbered(1));
    p.drive();
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::CRC));
}

// AUTH_BAD_METHOD then another AUTH_REQUEST on the same connection (msgr-v2.md 5.2 [V]):
// the acceptor allows only auth none; the connector falls back to it.
#[test]
fn bad_method_falls_back_to_the_next_allowed_method() {
    let now = Instant::now();
    let mut c0 = node_config(0, 6789, 1);
    let mut c1 = node_config(1, 6790, 2);
    c0.auth = std::sync::Arc::new(TestAuthProvider::new(&[ConMode::SECURE, ConMode::CRC]));
    let mut server = TestAuthProvider::new(&[ConMode::SECURE, ConMode::CRC]);
    server.server_methods = vec![protocol::types::AUTH_NONE];
    c1.auth = std::sync::Arc::new(server);
    let mut p = Pair::with_configs(
        now,
        ProtocolVersion::V2,
        c0,
        Policy::lossless_client(),
        c1,
        Policy::stateful_server(),
    );
    p.send(0, numbered(1));
    p.drive();
    assert_one_session(&p);
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::CRC), "auth none forces crc");
    assert_eq!(numbers(&p.nodes[1].received), [1]);
}

// Bad credentials: AUTH_BAD_METHOD(-EACCES) in answer to AUTH_REQUEST_MORE; with no
// other method allowed a lossy connector is refused for good, a lossless one faults and
// dials again after its backoff, as Ceph's does, and delivers nothing meanwhile.
#[test]
fn wrong_key_is_refused() {
    for (policy, lossless) in [(Policy::lossy_client(), false), (Policy::lossless_client(), true)] {
        let now = Instant::now();
        let mut c0 = node_config(0, 6789, 1);
        let mut c1 = node_config(1, 6790, 2);
        let mut client = TestAuthProvider::new(&[ConMode::CRC]).with_wrong_key();
        client.client_methods = vec![TEST_AUTH];
        c0.auth = std::sync::Arc::new(client);
        let mut server = TestAuthProvider::new(&[ConMode::CRC]);
        server.server_methods = vec![TEST_AUTH];
        c1.auth = std::sync::Arc::new(server);
        let mut p =
            Pair::with_configs(now, ProtocolVersion::V2, c0, policy, c1, Policy::stateful_server());
        p.send(0, numbered(1));
        p.run_for(Duration::from_secs(30));
        assert!(p.nodes[1].received.is_empty());
        assert!(p.eps.iter().all(|e| !e.alive || !e.conn.is_open()));
        let redials = p.nodes[0].log.iter().filter(|l| l.starts_with("Reconnect")).count();
        if lossless {
            assert_eq!(p.nodes[0].refused, 0, "{:?}", p.nodes[0].log);
            // 30 s of backoff from 200 ms, doubling to 15 s: 0.2 + 0.4 + … + 12.8 + 15.
            assert!(redials >= 5, "{redials} redials: {:?}", p.nodes[0].log);
        } else {
            assert_eq!(p.nodes[0].refused, 1, "{:?}", p.nodes[0].log);
        }
    }
}

#[test]
fn delivery_byte_by_byte_crc_and_secure() {
    for modes in [&[ConMode::CRC][..], &[ConMode::SECURE][..]] {
        let mut p = test_auth_pair(modes);
        p.splitter = Some(Box::new(|_| 1));
        let p = exchange_is_byte_exact(p);
        let a = p.session_ep(0).unwrap();
        assert_eq!(p.eps[a].conn.con_mode(), Some(modes[0]));
    }
}

#[test]
fn delivery_in_random_splits() {
    let base: u64 = std::env::var("V2_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5151);
    eprintln!("delivery_in_random_splits: base seed {base} (V2_SEED)");
    for i in 0..150u64 {
        let seed = base.wrapping_add(i);
        let mut rng = SmallRng::seed_from_u64(seed);
        let modes = if seed % 2 == 0 { [ConMode::SECURE] } else { [ConMode::CRC] };
        let mut p = test_auth_pair(&modes);
        // Half the runs read as the messenger does, with receive credit granted ahead:
        // then whole messages are taken in one call and the rest piece by piece.
        p.nodes[1].credit_ahead = (seed / 2) % 2 == 0;
        let mut r2 = SmallRng::seed_from_u64(seed ^ 0xdead);
        p.splitter = Some(Box::new(move |n| r2.gen_range(1..=n)));
        let n = rng.gen_range(1..20);
        for i in 0..n {
            let mut m = numbered(i);
            m.set_data(Bytes::from(vec![i as u8; rng.gen_range(0..6000)]));
            p.send(0, m);
        }
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), (0..n).collect::<Vec<_>>(), "seed {seed}");
    }
}

/// The bytes delivered for a handshake plus three messages, in `modes`.
fn cut_everywhere(modes: &[ConMode]) {
    let make = || test_auth_pair(modes);
    let mut p = make();
    for i in 0..3 {
        p.send(0, numbered(i));
    }
    p.drive();
    p.send(1, numbered(9));
    p.drive();
    let total = p.delivered;
    for off in 0..=total {
        let mut p = make();
        p.cut_after = Some(off);
        for i in 0..3 {
            p.send(0, numbered(i));
        }
        p.drive();
        if p.session_ep(1).is_some() {
            p.send(1, numbered(9));
        }
        p.run_for(Duration::from_secs(60));
        assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2], "cut at {off} of {total}");
        assert!(numbers(&p.nodes[0].received).len() <= 1, "cut at {off}: no duplicate");
        assert_one_session(&p);
    }
}

// A cut at every byte offset of handshake + messages (crc mode): the lossless client
// reconnects (SESSION_RECONNECT, or CLIENT_IDENT if the session never opened) and every
// message arrives exactly once, in order.
#[test]
fn cut_at_every_byte_offset_loses_nothing_crc() {
    cut_everywhere(&[ConMode::CRC]);
}

// The same in secure mode (new keys per connection, nonces restart).
#[test]
fn cut_at_every_byte_offset_loses_nothing_secure() {
    cut_everywhere(&[ConMode::SECURE]);
}

// A flipped bit in a MESSAGE's front fails its crc (crc mode) or the GCM tag (secure):
// the server faults (stateful server → standby), the client reconnects and resends.
#[test]
fn tampered_bytes_fault_and_lossless_resend_recovers() {
    for modes in [[ConMode::CRC], [ConMode::SECURE]] {
        let mut probe = test_auth_pair(&modes);
        probe.connect(0);
        probe.drive();
        let handshake = probe.links[0].sent[1];
        let mut p = test_auth_pair(&modes);
        // Inside the first MESSAGE: its front (crc) / its first GCM block (secure).
        p.tamper = Some((1, handshake + 60, 0x40));
        p.send(0, numbered(7));
        p.run_for(Duration::from_secs(5));
        assert_eq!(numbers(&p.nodes[1].received), [7], "{modes:?}");
        assert!(p.nodes[1].log.contains(&"Standby".to_string()), "{modes:?} {:?}", p.nodes[1].log);
        assert!(p.nodes[0].log.contains(&"Reconnect".to_string()), "{:?}", p.nodes[0].log);
        assert_one_session(&p);
    }
}

// Tampering with any byte of the handshake faults it (bad crc, GCM tag, or signature):
// the lossless client retries and gets through.
#[test]
fn tampered_handshake_byte_anywhere_is_detected() {
    for modes in [[ConMode::CRC], [ConMode::SECURE]] {
        let mut probe = test_auth_pair(&modes);
        probe.connect(0);
        probe.drive();
        let sent = probe.links[0].sent;
        for (to, &len) in sent.iter().enumerate() {
            for off in (0..len).step_by(3) {
                let mut p = test_auth_pair(&modes);
                p.tamper = Some((to, off, 0x10));
                p.send(0, numbered(1));
                p.run_for(Duration::from_secs(30));
                if to == 0 && (18..26).contains(&off) {
                    // The acceptor's banner now requires unknown msgr2 features: the
                    // connector refuses for good (a retry meets the same banner).
                    assert_eq!(p.nodes[0].refused, 1, "{modes:?} at {off}");
                    continue;
                }
                assert_eq!(numbers(&p.nodes[1].received), [1], "{modes:?} toward {to} at {off}");
                assert!(
                    p.links.len() >= 2 || p.tamper.is_some(),
                    "{modes:?} toward {to} at {off}: tamper unnoticed"
                );
            }
        }
    }
}

// Bad bytes on a lossy session: the monitor-like server closes; both sides reset.
#[test]
fn tampered_frame_on_lossy_session_resets_both_sides() {
    let mut p = Pair::v2(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.connect(0);
    p.drive();
    let handshake = p.links[0].sent[1];
    p.tamper = Some((1, handshake + 40, 0x01));
    p.send(0, numbered(7));
    p.drive();
    assert!(p.nodes[1].received.is_empty());
    assert_eq!(p.nodes[1].resets, 1);
    assert_eq!(p.nodes[0].resets, 1);
    assert!(p.eps.iter().all(|e| !e.alive));
}

// Connection race (msgr-v2.md 7.3, last row): both dial at once; exactly one session.
#[test]
fn simultaneous_connect_resolves_to_one_session() {
    let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.send(0, numbered(1));
    p.send(1, numbered(2));
    p.run_for(Duration::from_secs(60));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1]);
    assert_eq!(numbers(&p.nodes[0].received), [2]);
}

#[test]
fn simultaneous_connect_random_orders() {
    let base: u64 = std::env::var("V2_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x7a7a);
    eprintln!("simultaneous_connect_random_orders: base seed {base} (V2_SEED)");
    for i in 0..200u64 {
        let seed = base.wrapping_add(i);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
        let mut r2 = SmallRng::seed_from_u64(seed ^ 7);
        p.splitter = Some(Box::new(move |n| r2.gen_range(1..=n)));
        let first = rng.gen_range(0..2);
        p.send(first, numbered(1));
        for _ in 0..rng.gen_range(0..6) {
            p.step();
        }
        p.send(1 - first, numbered(2));
        p.run_for(Duration::from_secs(120));
        assert_one_session(&p);
        assert_eq!(numbers(&p.nodes[1 - first].received), [1], "seed {seed}");
        assert_eq!(numbers(&p.nodes[first].received), [2], "seed {seed}");
    }
}

/// One randomised lossless run: messages both ways, random cuts, random chunking.
/// Returns whether a session reset (reported to the sender) happened.
fn lossless_run(seed: u64, p0: Policy, p1: Policy, modes: &[ConMode]) -> bool {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut p = Pair::with_test_auth(Instant::now(), p0, p1, modes);
    p.verbose = std::env::var("V2_DEBUG").is_ok();
    let mut r2 = SmallRng::seed_from_u64(seed.wrapping_mul(31));
    p.splitter = Some(Box::new(move |n| if r2.gen_bool(0.5) { n } else { r2.gen_range(1..=n) }));
    let n0 = rng.gen_range(1..25u32);
    let n1 = rng.gen_range(0..25u32);
    let (mut sent0, mut sent1) = (0, 0);
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
        if rng.gen_ratio(1, 12) {
            let live = p.live_links();
            if !live.is_empty() {
                let l = live[rng.gen_range(0..live.len())];
                p.cut(l);
            }
        }
        if rng.gen_ratio(1, 8) {
            p.run_for(Duration::from_millis(rng.gen_range(0..500)));
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
    if p.nodes[0].received.len() < sent1 as usize {
        p.send(0, numbered(sent0));
        sent0 += 1;
        p.run_for(Duration::from_secs(120));
    }
    if std::env::var("V2_DEBUG").is_ok() {
        eprintln!("node0 log: {:#?}\nnode1 log: {:#?}", p.nodes[0].log, p.nodes[1].log);
        for e in &p.eps {
            eprintln!("ep node {} alive {} accepted {} {}", e.node, e.alive, e.accepted, e.conn);
        }
    }
    let got1 = numbers(&p.nodes[1].received);
    let got0 = numbers(&p.nodes[0].received);
    // A Pacific receiver stops reading on a resent seq it already has: we must never
    // send one (requeued messages up to the peer's in_seq are discarded on resume).
    let dups: u64 = p.eps.iter().map(|e| e.conn.duplicates_dropped()).sum();
    assert_eq!(dups, 0, "seed {seed}: a seq the peer had was sent again");
    assert!(got1.windows(2).all(|w| w[0] < w[1]), "seed {seed}: node 1 got {got1:?}");
    assert!(got0.windows(2).all(|w| w[0] < w[1]), "seed {seed}: node 0 got {got0:?}");
    let reset0 = p.nodes[0].remote_resets + p.nodes[0].resets > 0;
    let reset1 = p.nodes[1].remote_resets + p.nodes[1].resets > 0;
    if !reset0 {
        assert_eq!(got1, (0..sent0).collect::<Vec<_>>(), "seed {seed}: node 1 got");
    }
    if !reset1 || server1 {
        assert_eq!(got0, (1000..1000 + sent1).collect::<Vec<_>>(), "seed {seed}: node 0 got");
    }
    assert!(!(server1 && reset0), "seed {seed}: a lossless client of a stateful server was reset");
    for node in 0..2 {
        let live = p.eps.iter().filter(|e| e.node == node && e.alive && e.conn.is_open()).count();
        assert!(live <= 1, "seed {seed}: node {node} has {live} open sessions");
    }
    reset0 || reset1
}

// requeue_sent / SESSION_RECONNECT(msg_seq) / RECONNECT_OK(msg_seq) / drop of seq <=
// in_seq: zero loss, zero duplicates, order kept, over random cut schedules.
#[test]
fn lossless_reconnect_replay_randomised() {
    let base: u64 = std::env::var("V2_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let runs: u64 = std::env::var("V2_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    eprintln!(
        "lossless_reconnect_replay_randomised: base seed {base} ({runs} runs; V2_SEED/V2_RUNS)"
    );
    for i in 0..runs {
        let modes = if i % 2 == 0 { [ConMode::CRC] } else { [ConMode::SECURE] };
        lossless_run(
            base.wrapping_add(i),
            Policy::lossless_client(),
            Policy::stateful_server(),
            &modes,
        );
    }
}

// The same between two lossless peers (mon ↔ mon): both sides reconnect, races included.
#[test]
fn lossless_peers_replay_randomised() {
    let base: u64 = std::env::var("V2_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xbeef);
    eprintln!("lossless_peers_replay_randomised: base seed {base} (V2_SEED)");
    let mut resets = 0;
    for i in 0..300 {
        let modes = if i % 2 == 0 { [ConMode::CRC] } else { [ConMode::SECURE] };
        resets += usize::from(lossless_run(
            base.wrapping_add(i),
            Policy::lossless_peer_reuse(),
            Policy::lossless_peer_reuse(),
            &modes,
        ));
    }
    eprintln!("{resets} of 300 runs saw a session reset (reported as RemoteReset)");
    assert!(resets < 60, "resets should be the exception: {resets}");
}

// ProtocolV2::_fault on a lossy channel: "failing", ms_handle_reset on both sides.
#[test]
fn lossy_session_resets_on_cut() {
    let mut p = Pair::v2(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.send(0, numbered(1));
    p.drive();
    let a = p.session_ep(0).unwrap();
    assert!(p.eps[a].conn.is_lossy());
    assert_eq!(p.eps[a].conn.cookies(), Cookies::default(), "lossy sessions carry no cookies");
    assert_eq!(p.eps[a].conn.pending_messages(), 0, "lossy keeps no unacked copies");
    p.cut(0);
    p.drive();
    assert_eq!(p.nodes[0].resets, 1);
    assert_eq!(p.nodes[1].resets, 1);
    assert!(p.nodes[0].log.ends_with(&["Reset".to_string(), "Closed".to_string()]));
    assert!(p.eps.iter().all(|e| !e.alive));
}

// msgr-v2.md 7.4 row 1 and 7.2: the server lost the session (restart); the client's
// SESSION_RECONNECT gets SESSION_RESET(full), the client reports a remote reset and
// sends CLIENT_IDENT on the same connection.
#[test]
fn server_restart_answers_session_reset() {
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
    assert_eq!(p.links.len(), 2, "CLIENT_IDENT went on the reconnect's own connection");
    p.send(0, numbered(2));
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[b].conn.seqs().in_seq, Seq(1), "a new session numbers from 1");
}

// msgr-v2.md 7.3 "peer restarted": a new client cookie against a session with both
// cookies; with resetcheck the old session is reset and reported.
#[test]
fn peer_restart_with_resetcheck_resets_session() {
    let mut p =
        Pair::v2(Instant::now(), Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse());
    for i in 0..3 {
        p.send(0, numbered(i));
    }
    p.drive();
    // Node 0 restarts: its state is gone, its socket dies, node 1 cannot dial it back.
    for e in 0..p.eps.len() {
        if p.eps[e].node == 0 {
            p.eps[e].alive = false;
        }
    }
    p.nodes[0].sessions.clear();
    p.nodes[0].unreachable = true;
    p.cut_all();
    p.drive();
    p.nodes[0].unreachable = false;
    p.send(0, numbered(10));
    p.run_for(Duration::from_secs(10));
    assert_eq!(p.nodes[1].remote_resets, 1, "{:?}", p.nodes[1].log);
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[b].conn.seqs().in_seq, Seq(1), "in_seq restarted: the new message is seq 1");
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 10]);
    assert_one_session(&p);
}

// Standby and wake: a lossless peer with nothing queued parks on a cut; a new message
// wakes it and the session resumes (SESSION_RECONNECT → RECONNECT_OK).
#[test]
fn standby_then_wake_on_send_resumes_session() {
    let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::stateful_server());
    p.send(0, numbered(1));
    p.drive();
    let a = p.session_ep(0).unwrap();
    let cookies = p.eps[a].conn.cookies();
    p.cut_all();
    p.drive();
    assert_eq!(p.eps[a].conn.state(), SessionState::Standby);
    assert!(p.eps[a].conn.poll_timeout().is_none(), "standby arms no timer");
    p.send(0, numbered(2));
    p.run_for(Duration::from_secs(5));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1, 2]);
    assert_eq!(p.eps[a].conn.cookies(), cookies, "same session");
    assert_eq!(p.eps[a].conn.seqs().connect_seq, ConnectSeq(1), "connect_seq counts the reconnect");
    let b = p.session_ep(1).unwrap();
    assert_eq!(p.eps[b].conn.seqs().in_seq, Seq(2), "seq numbering continued");
}

// KEEPALIVE2 is answered with KEEPALIVE2_ACK echoing the stamp; the periodic one fires.
#[test]
fn keepalive2_is_echoed_and_periodic() {
    let now = Instant::now();
    let mut c0 = node_config(0, 6789, 1);
    c0.keepalive_interval = Some(Duration::from_secs(3));
    let c1 = node_config(1, 6790, 2);
    let mut p = Pair::with_configs(
        now,
        ProtocolVersion::V2,
        c0,
        Policy::lossless_client(),
        c1,
        Policy::stateful_server(),
    );
    p.connect(0);
    p.drive();
    let a = p.session_ep(0).unwrap();
    let stamp = KeepaliveStamp { sec: 1_700_000_000, nsec: 7 };
    p.conn(a).send_keepalive(stamp);
    p.drive();
    assert_eq!(p.eps[a].conn.last_keepalive_ack(), Some(stamp));
    let b = p.session_ep(1).unwrap();
    assert!(p.eps[b].conn.last_keepalive().is_some());
    let before = p.nodes[1].log.iter().filter(|l| *l == "KeepaliveReceived").count();
    p.run_for(Duration::from_secs(10));
    let after = p.nodes[1].log.iter().filter(|l| *l == "KeepaliveReceived").count();
    assert_eq!(after - before, 3, "every 3 s for 10 s");
    let ack = p.eps[a].conn.last_keepalive_ack().unwrap();
    assert_eq!(ack.sec, stamp.sec + 9, "timer stamps extrapolate from the last given stamp");
}

// ms_connection_idle_timeout: a silent open session faults.
#[test]
fn idle_timeout_faults_silent_session() {
    let mut p = Pair::v2(Instant::now(), Policy::lossy_client(), Policy::stateless_server());
    p.connect(0);
    p.drive();
    p.run_for(Duration::from_secs(901));
    assert_eq!(p.nodes[0].resets, 1, "{:?}", p.nodes[0].log);
}

// NeedBudget stops reading until granted; nothing is delivered meanwhile.
#[test]
fn receive_budget_pauses_reading_until_granted() {
    let mut p = client_server();
    p.nodes[1].hold_budget = true;
    for i in 0..3 {
        p.send(0, numbered(i));
    }
    p.drive();
    assert!(p.nodes[1].received.is_empty());
    let b = p.session_ep(1).unwrap();
    assert!(!p.eps[b].conn.wants_read());
    for _ in 0..3 {
        p.release_budget();
        p.drive();
    }
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2]);
}

// The handshake timeout bounds a silent peer on both sides.
#[test]
fn handshake_timeout_on_a_silent_peer() {
    let mut p = client_server();
    p.cut_after = Some(26);
    p.connect(0);
    p.run_for(Duration::from_secs(1));
    assert!(p.nodes[1].log.contains(&"Closed".to_string()), "{:?}", p.nodes[1].log);
}

// msgr-v2.md 7.4 [V: S9]: both sides of a lossless session reconnect at once with the
// same connect_seq. The side whose address sorts higher gets WAIT from the other (whose
// own reconnect carries the session); exactly one session results, nothing is lost or
// repeated.
#[test]
fn reconnect_race_resolves_by_wait() {
    let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    p.verbose = true;
    p.send(0, numbered(1));
    p.drive();
    p.send(1, numbered(2));
    p.drive();
    let a = p.session_ep(0).unwrap();
    let b = p.session_ep(1).unwrap();
    let cs = p.eps[a].conn.seqs().connect_seq;
    // Both have something to send when the link dies: both redial at once.
    p.eps[a].conn.send_message(numbered(3));
    p.eps[b].conn.send_message(numbered(4));
    p.cut_all();
    p.run_for(Duration::from_secs(60));
    assert_one_session(&p);
    assert_eq!(numbers(&p.nodes[1].received), [1, 3]);
    assert_eq!(numbers(&p.nodes[0].received), [2, 4]);
    let waits = p.nodes.iter().flat_map(|n| &n.log).filter(|l| l.contains("= Wait")).count();
    assert!(waits >= 1, "a WAIT resolved the race: {:?} {:?}", p.nodes[0].log, p.nodes[1].log);
    let a = p.session_ep(0).unwrap();
    assert!(p.eps[a].conn.seqs().connect_seq > cs, "the session continued (connect_seq grew)");
    let dups: u64 = p.eps.iter().map(|e| e.conn.duplicates_dropped()).sum();
    assert_eq!(dups, 0);
}

// msgr-v2.md 7.3 "peer restarted" without resetcheck (lossless peers): the session kept
// for the new CLIENT_IDENT starts over at connect_seq 0 on both sides, as the peer's
// new session does. Kept at the old one, the next reconnect of the peer (connect_seq 1)
// met a parked session with that same connect_seq and, the peer's address sorting
// higher, was answered WAIT as if both were reconnecting: the parked side never dials,
// so the peer sat out the whole WAIT backoff.
#[test]
fn peer_restart_without_resetcheck_starts_connect_seq_over() {
    let mut p = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    // Node 1 (whose address sorts higher) opens the session and reconnects it once: node
    // 0's side of it is at connect_seq 1.
    p.send(1, numbered(1));
    p.drive();
    p.cut_all();
    p.drive();
    p.send(1, numbered(2));
    p.run_for(Duration::from_secs(1));
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.seqs().connect_seq, ConnectSeq(1));
    // Node 1 drops its session (a restart, or a mark_down) and dials again: a new client
    // cookie against node 0's session, which it keeps (no resetcheck).
    for e in 0..p.eps.len() {
        if p.eps[e].node == 1 {
            p.eps[e].alive = false;
        }
    }
    p.nodes[1].sessions.clear();
    p.nodes[1].unreachable = true;
    p.cut_all();
    p.drive();
    p.nodes[1].unreachable = false;
    p.send(1, numbered(3));
    p.run_for(Duration::from_secs(1));
    assert_one_session(&p);
    let (a, b) = (p.session_ep(0).unwrap(), p.session_ep(1).unwrap());
    assert_eq!(
        p.eps[a].conn.seqs().connect_seq,
        p.eps[b].conn.seqs().connect_seq,
        "both ends of the new session count its reconnects from the same connect_seq"
    );
    // The link dies with nothing queued: both park. Node 1's next message resumes the
    // session at once, with no WAIT.
    p.cut_all();
    p.drive();
    p.send(1, numbered(4));
    p.run_for(Duration::from_secs(1));
    assert_eq!(
        numbers(&p.nodes[0].received),
        [1, 2, 3, 4],
        "{:?} / {:?}",
        p.nodes[0].log,
        p.nodes[1].log
    );
    let waits = p.nodes.iter().flat_map(|n| &n.log).filter(|l| l.contains("= Wait")).count();
    assert_eq!(waits, 0, "{:?} / {:?}", p.nodes[0].log, p.nodes[1].log);
    assert_one_session(&p);
}
