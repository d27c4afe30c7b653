//! Soak: 32 hostile peers of mixed kinds attack one server for 30 s, reconnecting as
//! soon as they are thrown out, while one well-behaved lossless client streams to it.
//! The good stream must arrive complete: every message once, in order.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{MessengerConfig, Policy};
use protocol::types::{EntityType, Features};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tests::hostile::*;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
const SOAK: Duration = Duration::from_secs(30);
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
/// server threw us out or the round's time is up.
fn attack_once(
    kind: &str,
    srv: protocol::types::EntityAddr,
    server: SocketAddr,
    rng: &mut SmallRng,
) {
    let round = Duration::from_millis(rng.gen_range(200..3000));
    let started = Instant::now();
    let give_up = |sock: &mut TcpStream| {
        let left = round.saturating_sub(started.elapsed());
        let _ = closed_within(sock, left);
    };
    match kind {
        "garbage" => {
            let Ok(mut sock) = TcpStream::connect(server) else { return };
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
                    return;
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
                    return;
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
                    return;
                }
            }
        }
        "duplicates" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&msg_head(0, 1, 0, 100 << 20));
            let chunk = vec![0u8; 64 << 10];
            while started.elapsed() < round {
                if sock.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        _ => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&[0x42]);
            give_up(&mut sock);
        }
    }
}

#[test]
fn a_lossless_stream_survives_32_hostile_peers_for_30_seconds() {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let config = MessengerConfig {
        connection_ready_timeout: Duration::from_secs(2),
        payload_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        max_queued_bytes: 8 << 20,
        ..test_config(2)
    };
    let (srv, addr, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        true,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..HOSTILE)
        .map(|i| {
            let (stop, rounds, srv_addr) = (stop.clone(), rounds.clone(), srv.my_addr());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ i as u64);
                let kind = KINDS[i % KINDS.len()];
                while !stop.load(Ordering::Relaxed) {
                    // A panic in a helper (the server refusing a handshake) only ends
                    // this round.
                    let mut r = SmallRng::seed_from_u64(rng.gen());
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        attack_once(kind, srv_addr, addr, &mut r)
                    }));
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // The good lossless client: a window of 32 messages in flight, replies checked too.
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
    let good = cli.connect_to(EntityType::OSD, srv.my_addr());
    let started = Instant::now();
    let (mut sent, mut replied) = (0u64, 0u64);
    let mut rng = SmallRng::seed_from_u64(seed);
    while started.elapsed() < SOAK || replied < sent {
        while sent < replied + 32 && started.elapsed() < SOAK {
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
    // The server saw exactly the good stream, once and in order.
    let mut seen = 0u64;
    while let Ok(ev) = srv_rx.try_recv() {
        if let Seen::Message(_, m) = ev {
            if m.msg_type() == MSG_TEST {
                assert_eq!(
                    m.tid(),
                    seen,
                    "server side: lost, duplicated or reordered (seed {seed})"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, sent, "seed {seed}");
    assert!(good.is_connected());
    let rounds = rounds.load(Ordering::Relaxed);
    eprintln!("{sent} good messages, {rounds} hostile rounds");
    assert!(rounds >= HOSTILE as u64, "the attackers hardly ran");
    cli.shutdown();
    srv.shutdown();
}
