//! Measures what an attack costs a messenger: runs one kind of hostile peer against a
//! server (in a child process, so its memory is its own) while a well-behaved client
//! does round trips on another connection, and prints the good client's rate before and
//! during the attack and the server's resident memory.
//!
//! ```text
//! cargo run --release -p tests --example attack -- --kind stall
//! cargo run --release -p tests --example attack -- --kind all --seconds 10
//! cargo run --release -p tests --example attack -- --kind noread --send-bound 32
//! ```
//!
//! Kinds (the attacks of issue 10):
//! - `badconnect`: after the banner, 100,000 connects with a bad protocol version in one
//!   write, over and over;
//! - `stall`: a peer announces a 100 MiB message, sends 100 bytes and goes silent;
//! - `stall2`: two peers announce 50 MiB each, likewise;
//! - `trickle`: 1,000 peers announce 100 MiB each and trickle it a byte at a time;
//! - `noread`: a peer sends 4 KiB requests and never reads the replies;
//! - `dup`: a peer streams a duplicate (seq 0) announcing 128 MiB, over and over;
//! - `pin`: a peer sends 10,000 small messages that the server's (blocked) dispatcher
//!   keeps queued, each followed by a 60 KiB duplicate, so that each small message lands
//!   in a read buffer of its own (item 6: a retained small message must not pin it).
#![allow(clippy::print_stdout)] // a measuring tool: printing is its output

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy};
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::Message;
use tests::counting::Count;
use tests::hostile::*;

const MSG_TEST: u16 = 0x7f00;
const KINDS: [&str; 7] = ["badconnect", "stall", "stall2", "trickle", "noread", "dup", "pin"];
const MIB: f64 = (1 << 20) as f64;

struct Args {
    kind: String,
    seconds: u64,
    size: usize,
    depth: u64,
    /// The server's `max_queued_bytes` in MiB (its default otherwise).
    send_bound: Option<u64>,
    serve: bool,
}

fn args() -> Args {
    let mut a = Args {
        kind: "all".into(),
        seconds: 10,
        size: 4096,
        depth: 16,
        send_bound: None,
        serve: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_default();
        match flag.as_str() {
            "--kind" => a.kind = value(),
            "--seconds" => a.seconds = value().parse().unwrap_or(a.seconds),
            "--size" => a.size = value().parse().unwrap_or(a.size),
            "--depth" => a.depth = value().parse().unwrap_or(a.depth),
            "--send-bound" => a.send_bound = value().parse().ok(),
            "--serve" => a.serve = true,
            _ => {
                println!(
                    "usage: attack [--kind {}|all] [--seconds N] [--size BYTES] [--depth N]",
                    KINDS.join("|")
                );
                std::process::exit(2);
            }
        }
    }
    a
}

/// The server's configuration: the defaults (but `--send-bound`), printed with the
/// results.
fn server_config(a: &Args) -> MessengerConfig {
    let d = MessengerConfig::default();
    let max_queued_bytes = a.send_bound.map_or(d.max_queued_bytes, |mib| mib << 20);
    MessengerConfig { workers: 2, max_queued_bytes, ..d }
}

/// Messages with a tid from here on are kept: queued for the dispatch thread, which
/// stays blocked in its first `ms_dispatch` until the server exits (the `pin` kind).
const KEEP_TID: u64 = 1 << 40;

/// Answers every message on the worker (fast dispatch) with one of the same front,
/// except those to keep (see [`KEEP_TID`]).
struct Echo;

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.tid() < KEEP_TID
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        let mut reply = Message::new(msg.msg_type(), msg.front().clone());
        reply.set_tid(msg.tid());
        let _ = conn.send_message(reply);
    }
}

/// Child mode: serve until stdin closes.
fn serve(a: &Args) -> std::io::Result<()> {
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, server_config(a))?;
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    srv.start()?;
    srv.add_dispatcher_head(Arc::new(Echo))?;
    let addr = srv.my_addr();
    println!("{} {}", addr.addr.map(|a| a.to_string()).unwrap_or_default(), addr.nonce);
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    srv.shutdown();
    Ok(())
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Round trips per second of the good client over `secs`, keeping `depth` in flight.
fn measure(conn: &Connection, replies: &Count, sent: &mut u64, a: &Args, secs: u64) -> f64 {
    let start_replies = replies.count();
    let started = Instant::now();
    let payload = Bytes::from(vec![7u8; a.size]);
    while started.elapsed() < Duration::from_secs(secs) {
        while *sent < replies.count() + a.depth {
            let mut m = Message::new(MSG_TEST, payload.clone());
            m.set_tid(*sent);
            if conn.send_message(m).is_err() {
                break;
            }
            *sent += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let done = replies.count() - start_replies;
    done as f64 / started.elapsed().as_secs_f64()
}

/// Runs `kind` until `stop`; counts rounds.
fn attack(kind: &str, srv: EntityAddr, stop: &AtomicBool, rounds: &AtomicU64) {
    let threads = match kind {
        "trickle" => 10,
        "stall2" => 2,
        _ => 1,
    };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    // A refused handshake panics in the helper: it only ends the round.
                    let r = std::panic::catch_unwind(|| one_round(kind, srv, stop));
                    if r.is_err() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
}

fn one_round(kind: &str, srv: EntityAddr, stop: &AtomicBool) {
    let Some(server) = srv.addr else { return };
    let hold = |sock: &mut TcpStream| {
        while !stop.load(Ordering::Relaxed) {
            if closed_within(sock, Duration::from_millis(200)) {
                return;
            }
        }
    };
    match kind {
        "badconnect" => {
            let mut sock = banner_socket(server);
            let one = connect_msg(u32::MAX, Features::PACIFIC_ADVERTISED);
            let blob: Vec<u8> = one.iter().copied().cycle().take(33 * 100_000).collect();
            let _ = sock.write_all(&blob);
            hold(&mut sock);
        }
        "stall" | "stall2" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let len = if kind == "stall" { 100 << 20 } else { 50 << 20 };
            let _ = sock.write_all(&msg_head(1, 1, 0, len));
            let _ = sock.write_all(&[0u8; 100]);
            hold(&mut sock);
        }
        "trickle" => {
            // 100 peers per thread, 10 threads: 1,000 trickling peers.
            let mut socks: Vec<TcpStream> = (0..100)
                .map(|_| {
                    let (mut s, _) = handshaken_socket(srv, Policy::lossy_client());
                    let _ = s.write_all(&msg_head(1, 1, 0, 100 << 20));
                    let _ = s.set_nonblocking(true);
                    s
                })
                .collect();
            while !stop.load(Ordering::Relaxed) && !socks.is_empty() {
                socks.retain_mut(|s| s.write(&[0u8]).is_ok());
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        "noread" => {
            let (mut sock, footer) = handshaken_socket(srv, Policy::lossy_client());
            // Bounded writes, so the round notices `stop` even when the server stops
            // reading us.
            let _ = sock.set_write_timeout(Some(Duration::from_millis(200)));
            let front = vec![1u8; 4096];
            let (mut seq, mut frame, mut at) = (0u64, Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                if at == frame.len() {
                    seq += 1;
                    frame = msg_frame(seq, seq, &front, footer);
                    at = 0;
                }
                match sock.write(&frame[at..]) {
                    Ok(n) => at += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
            }
        }
        "pin" => {
            let (mut sock, footer) = handshaken_socket(srv, Policy::lossy_client());
            let dup = {
                let mut d = msg_head(1, 1, 60 << 10, 0);
                d.extend_from_slice(&vec![0u8; (60 << 10) + footer.encoded_len()]);
                d
            };
            for seq in 1..=10_000u64 {
                let mut dup = dup.clone();
                dup[1..9].copy_from_slice(&seq.to_le_bytes());
                let header_crc = protocol::wire::ceph_crc32c(0, &dup[1..50]);
                dup[50..54].copy_from_slice(&header_crc.to_le_bytes());
                if stop.load(Ordering::Relaxed)
                    || sock.write_all(&msg_frame(seq, KEEP_TID + seq, &[5u8; 100], footer)).is_err()
                    || sock.write_all(&dup).is_err()
                {
                    return;
                }
            }
            hold(&mut sock);
        }
        "dup" => {
            let (mut sock, _) = handshaken_socket(srv, Policy::lossy_client());
            let _ = sock.write_all(&msg_head(0, 1, 0, 128 << 20));
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..128 {
                if stop.load(Ordering::Relaxed) || sock.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        _ => {}
    }
}

fn start_server(a: &Args) -> std::io::Result<(Child, EntityAddr)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve");
    if let Some(mib) = a.send_bound {
        cmd.args(["--send-bound", &mib.to_string()]);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let out = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let addr: SocketAddr = parts
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad address line {line:?}")))?;
    let nonce: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Ok((child, EntityAddr::legacy(addr, nonce)))
}

fn run(kind: &str, a: &Args) -> std::io::Result<()> {
    let (mut child, srv) = start_server(a)?;
    let pid = child.id();
    let cli = Messenger::new(
        EntityName::new(EntityType::CLIENT, 1),
        2,
        MessengerConfig { workers: 1, ..MessengerConfig::default() },
    )?;
    cli.set_default_policy(Policy::lossy_client());
    cli.start()?;
    // Records reply arrivals for the good client.
    let replies = Count::new(true);
    cli.add_dispatcher_head(replies.clone())?;
    let conn = cli.connect_to(EntityType::OSD, srv);
    let mut sent = 0;
    measure(&conn, &replies, &mut sent, a, 1); // warm-up
    let rss_before = rss_of(pid);
    let before = measure(&conn, &replies, &mut sent, a, a.seconds);

    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let mut rss_max = rss_before;
    let during = std::thread::scope(|s| {
        let attacker = s.spawn(|| attack(kind, srv, &stop, &rounds));
        // Let the attack get going (the trickle kind opens 1,000 connections).
        std::thread::sleep(Duration::from_secs(2));
        let sampler = s.spawn(|| {
            let mut most = 0;
            while !stop.load(Ordering::Relaxed) {
                most = most.max(rss_of(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        let during = measure(&conn, &replies, &mut sent, a, a.seconds);
        stop.store(true, Ordering::Relaxed);
        rss_max = rss_max.max(sampler.join().unwrap_or(0));
        let _ = attacker.join();
        during
    });
    let alive = child.try_wait()?.is_none();
    let c = server_config(a);
    println!(
        "{kind:>10}: good client {} B depth {}: before {before:>8.0} rt/s, during {during:>8.0} rt/s ({:>3.0} %) | server RSS before {:>6.1} MiB, max during {:>6.1} MiB | alive {alive} | attack rounds {}",
        a.size,
        a.depth,
        100.0 * during / before.max(1.0),
        rss_before as f64 / MIB,
        rss_max as f64 / MIB,
        rounds.load(Ordering::Relaxed),
    );
    println!(
        "{:>10}  server bounds: dispatch {} MiB, send {} MiB per connection / {} MiB total, payload timeout {:?}, write timeout {:?}",
        "",
        c.dispatch_throttle_bytes >> 20,
        c.max_queued_bytes >> 20,
        c.max_total_queued_bytes >> 20,
        c.payload_timeout,
        c.write_timeout,
    );
    cli.shutdown();
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

fn main() -> std::io::Result<()> {
    let a = args();
    if a.serve {
        return serve(&a);
    }
    let kinds: Vec<&str> = if a.kind == "all" { KINDS.to_vec() } else { vec![a.kind.as_str()] };
    for kind in kinds {
        if !KINDS.contains(&kind) {
            println!("unknown kind {kind}; kinds: {}", KINDS.join(", "));
            std::process::exit(2);
        }
        run(kind, &a)?;
    }
    Ok(())
}
