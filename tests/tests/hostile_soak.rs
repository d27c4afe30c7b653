//! Soak: 32 hostile peers of mixed kinds attack one server, reconnecting as soon as they
//! are thrown out, while one well-behaved lossless client streams to it. The good stream
//! must arrive complete: every message once, in order.
//!
//! The msgr2 variant runs the same kinds in both protocols (half the peers speak msgr v1,
//! half msgr2, against the one listener serving both) while the good client streams over
//! msgr2. Each runs for `ASYNCMSGR_SOAK_SECS` (10 s by default, for CI).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType, Features};
use protocol::v2::banner::Banner;
use protocol::v2::Tag as V2Tag;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tests::hostile::*;
use tests::hostile_v2::*;
use tests::loopback::*;
use tests::soak;

const MSG_TEST: u16 = 0x7f00;
const HOSTILE: usize = 32;

/// The ways a hostile peer misbehaves, one per kind.
const KINDS: [&str; 8] = [
    "garbage",
    "bad-connects",
    "trickled-handshake",
    "silent-large-message",
    "trickled-message",
    "never-reads",
    "duplicates",
    "unknown-tag",
];

/// One round of `kind` against `srv` (`server` is its socket address); returns when the
/// server threw us out or the round's time is up: true, or false if it could not connect.
fn attack_once(
    kind: &str,
    srv: protocol::types::EntityAddr,
    server: SocketAddr,
    rng: &mut SmallRng,
) -> bool {
    let round = Duration::from_millis(rng.gen_range(200..3000));
    let started = Instant::now();
    let give_up = |sock: &mut TcpStream| {
        let left = round.saturating_sub(started.elapsed());
        let _ = closed_within(sock, left);
    };
    match kind {
        "garbage" => {
            let Ok(mut sock) = TcpStream::connect(server) else { return false };
            let noise: Vec<u8> = (0..rng.gen_range(1..8192)).map(|_| rng.gen()).collect();
            let _ = sock.write_all(&noise);
            give_up(&mut sock);
        }
        "bad-connects" => {
            let mut sock = banner_socket(server);
            let one = connect_msg(rng.gen(), Features::PACIFIC_ADVERTISED);
            let blob: Vec<u8> = one.iter().copied().cycle().take(33 * 10_000).collect();
            let _ = sock.write_all(&blob);
            give_up(&mut sock);
        }
        "trickled-handshake" => {
            let mut sock = banner_socket(server);
            for b in session_connect(0, 1).iter().take(32) {
                if sock.write_all(&[*b]).is_err() || started.elapsed() > round {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            give_up(&mut sock);
        }
        "silent-large-message" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&msg_head(1, 1, 0, rng.gen_range(1..128) << 20));
            let _ = sock.write_all(&vec![0u8; rng.gen_range(0..100_000)]);
            give_up(&mut sock);
        }
        "trickled-message" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&msg_head(1, 1, 4 << 20, 0));
            while started.elapsed() < round {
                if sock.write_all(&[0u8; 16]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        "never-reads" => {
            let (mut sock, footer) = handshaken_socket(srv, Policy::lossy_client());
            let front = vec![1u8; rng.gen_range(0..8192)];
            for seq in 1..=20_000u64 {
                if sock.write_all(&msg_frame(seq, seq, &front, footer)).is_err()
                    || started.elapsed() > round
                {
                    return true;
                }
            }
        }
        "duplicates" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&msg_head(0, 1, 0, 100 << 20));
            let chunk = vec![0u8; 64 << 10];
            while started.elapsed() < round {
                if sock.write_all(&chunk).is_err() {
                    return true;
                }
            }
        }
        _ => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&[0x42]);
            give_up(&mut sock);
        }
    }
    true
}

/// One round of the msgr2 counterpart of `kind` against `srv` (its `v2:` address;
/// `server` is its socket address); as [`attack_once`].
fn attack_once_v2(kind: &str, srv: EntityAddr, server: SocketAddr, rng: &mut SmallRng) -> bool {
    let round = Duration::from_millis(rng.gen_range(200..3000));
    let started = Instant::now();
    let give_up = |sock: &mut TcpStream| {
        let left = round.saturating_sub(started.elapsed());
        let _ = closed_within(sock, left);
    };
    let me = v2_peer_addr(rng.gen());
    match kind {
        "garbage" => {
            let mut sock = v2_banner_socket(server);
            let noise: Vec<u8> = (0..rng.gen_range(1..8192)).map(|_| rng.gen()).collect();
            let _ = sock.write_all(&noise);
            give_up(&mut sock);
        }
        "bad-connects" => {
            let mut sock = v2_socket_at_ident(srv, me, Policy::lossy_client());
            let _ = sock.write_all(&featureless_ident(srv, me).repeat(10_000));
            give_up(&mut sock);
        }
        "trickled-handshake" => {
            let mut bytes = Banner::OURS.to_bytes().to_vec();
            bytes.extend(client_hello(srv));
            let Ok(mut sock) = TcpStream::connect(server) else { return false };
            for b in bytes.iter().take(bytes.len() - 1) {
                if sock.write_all(&[*b]).is_err() || started.elapsed() > round {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            give_up(&mut sock);
        }
        "silent-large-message" => {
            let mut peer = RawPeer::handshake(srv, Policy::lossy_client());
            let n = head_len(protocol::ProtocolVersion::V2) + rng.gen_range(0..100_000);
            let head = peer.announce(1, rng.gen_range(1..128) << 20, n);
            let _ = peer.sock.write_all(&head);
            give_up(&mut peer.sock);
        }
        "trickled-message" => {
            let mut peer = RawPeer::handshake(srv, Policy::lossy_client());
            let _ = peer.sock.write_all(&message_head(1, 1, 4 << 20));
            while started.elapsed() < round {
                if peer.sock.write_all(&[0u8; 16]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        "never-reads" => {
            let mut peer = RawPeer::handshake(srv, Policy::lossy_client());
            let front = vec![1u8; rng.gen_range(0..8192)];
            for tid in 1..=20_000u64 {
                let frame = peer.message(tid, &front);
                if peer.sock.write_all(&frame).is_err() || started.elapsed() > round {
                    return true;
                }
            }
        }
        "duplicates" => {
            // seq 0 on a fresh session (in_seq 0): a duplicate announcing 100 MiB.
            let mut peer = RawPeer::handshake(srv, Policy::lossy_client());
            let _ = peer.sock.write_all(&message_head(0, 1, 100 << 20));
            let chunk = vec![0u8; 64 << 10];
            while started.elapsed() < round {
                if peer.sock.write_all(&chunk).is_err() {
                    return true;
                }
            }
        }
        _ => {
            let mut peer = RawPeer::handshake(srv, Policy::lossy_client());
            let _ = peer.sock.write_all(&frame(V2Tag(0x42), &[&Bytes::from_static(b"?")]));
            give_up(&mut peer.sock);
        }
    }
    true
}

#[test]
fn a_lossless_stream_survives_32_hostile_peers() {
    let run = soak::soak_duration().unwrap_or(Duration::from_secs(10));
    soak("a_lossless_stream_survives_32_hostile_peers", ProtocolVersion::V1, run);
}

/// The msgr2 variant: 16 peers attack in msgr v1, 16 in msgr2, the good client streams
/// over msgr2.
#[test]
fn a_lossless_stream_survives_32_hostile_peers_over_msgr2() {
    let run = soak::soak_duration().unwrap_or(Duration::from_secs(10));
    soak("a_lossless_stream_survives_32_hostile_peers_over_msgr2", ProtocolVersion::V2, run);
}

fn soak(name: &str, proto: ProtocolVersion, run: Duration) {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("{name}: seed {seed}");
    let config = MessengerConfig {
        connection_ready_timeout: Duration::from_secs(2),
        payload_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        max_queued_bytes: 8 << 20,
        // Small enough that sessions the never-reads peers leave behind would fill it
        // within the run if standby sessions were not bounded (each holds up to 8 MiB).
        max_total_queued_bytes: 96 << 20,
        ..test_config(2)
    };
    let (srv, addr, seen_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        true,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    // The server's recorder sees every message and event of the hostile peers too (tens
    // of thousands a second; kept until the end, they filled 24 GiB within a 90 s run).
    // Only the good stream's tids are kept, in the order the server dispatched them.
    let (tid_tx, srv_rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for ev in seen_rx {
            if let Seen::Message(_, m) = ev {
                if m.msg_type() == MSG_TEST && tid_tx.send(m.tid()).is_err() {
                    return;
                }
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Rounds begun, and per kind and protocol (0 v1, 1 msgr2) the rounds that reached
    // the server and ran to their end (no helper panicked on a refused handshake).
    let rounds = Arc::new(AtomicU64::new(0));
    let done: Arc<[[AtomicU64; 2]; KINDS.len()]> =
        Arc::new(std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]));
    let attackers: Vec<_> = (0..HOSTILE)
        .map(|i| {
            let (stop, rounds, srv_addr) = (stop.clone(), rounds.clone(), srv.my_addr());
            let done = done.clone();
            // Over msgr2, every other peer attacks in msgr2.
            let v2 = proto == ProtocolVersion::V2 && i % 2 == 1;
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ i as u64);
                // Over msgr2 each kind has as many msgr2 peers as v1 ones.
                let per_kind = if proto == ProtocolVersion::V2 { i / 2 } else { i };
                let k = per_kind % KINDS.len();
                let kind = KINDS[k];
                while !stop.load(Ordering::Relaxed) {
                    // A panic in a helper (the server refusing a handshake) only ends
                    // this round, uncounted in `done`.
                    let mut r = SmallRng::seed_from_u64(rng.gen());
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if v2 {
                            attack_once_v2(
                                kind,
                                addr_for(ProtocolVersion::V2, srv_addr),
                                addr,
                                &mut r,
                            )
                        } else {
                            attack_once(kind, srv_addr, addr, &mut r)
                        }
                    }));
                    rounds.fetch_add(1, Ordering::Relaxed);
                    if matches!(ran, Ok(true)) {
                        done[k][usize::from(v2)].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // The good lossless client: a window of 32 messages in flight, replies checked too.
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    let started = Instant::now();
    let (mut sent, mut replied) = (0u64, 0u64);
    let mut rng = SmallRng::seed_from_u64(seed);
    while started.elapsed() < run || replied < sent {
        while sent < replied + 32 && started.elapsed() < run {
            let size = if rng.gen_bool(0.05) {
                rng.gen_range(0..(1 << 20))
            } else {
                rng.gen_range(0..4096)
            };
            good.send_message(test_message(MSG_TEST, sent, Bytes::from(vec![3u8; size])))
                .expect("send");
            sent += 1;
        }
        let (_, m) = next_message(&cli_rx);
        assert_eq!(
            m.tid(),
            replied,
            "good stream: reply lost, duplicated or reordered (seed {seed})"
        );
        replied += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().expect("attacker");
    }
    // The server saw exactly the good stream, once and in order. Its recorder replies
    // before it records, so its last records may trail the last reply: waited for.
    let mut seen = 0u64;
    loop {
        // Then whatever else is there: a duplicate would fail the order check.
        let next =
            if seen < sent { srv_rx.recv_timeout(WAIT).ok() } else { srv_rx.try_recv().ok() };
        let Some(tid) = next else { break };
        assert_eq!(tid, seen, "server side: lost, duplicated or reordered (seed {seed})");
        seen += 1;
    }
    assert_eq!(seen, sent, "seed {seed}");
    assert!(good.is_connected());
    assert_eq!(good.protocol(), Some(proto), "the good client speaks {proto:?}");
    let rounds = rounds.load(Ordering::Relaxed);
    let done: Vec<[u64; 2]> =
        done.iter().map(|d| [d[0].load(Ordering::Relaxed), d[1].load(Ordering::Relaxed)]).collect();
    let full: u64 = done.iter().flatten().sum();
    let v2_full: u64 = done.iter().map(|d| d[1]).sum();
    eprintln!("{sent} good messages, {rounds} hostile rounds, {full} run to their end:");
    for (kind, [v1, v2]) in KINDS.iter().zip(&done) {
        eprintln!("  {kind}: {v1} over msgr v1, {v2} over msgr2");
    }
    // Every kind attacked, in every protocol its peers speak: a kind whose every round
    // failed (a helper panicking, say) tested nothing.
    for (kind, [v1, v2]) in KINDS.iter().zip(&done) {
        assert!(*v1 >= 1, "no {kind} round over msgr v1 ran to its end");
        if proto == ProtocolVersion::V2 {
            assert!(*v2 >= 1, "no {kind} round over msgr2 ran to its end");
        }
    }
    assert!(full >= HOSTILE as u64, "the attackers hardly ran");
    if proto == ProtocolVersion::V2 {
        assert!(v2_full >= HOSTILE as u64 / 2, "the msgr2 attackers hardly ran");
    }
    cli.shutdown();
    srv.shutdown();
}
