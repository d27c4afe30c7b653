//! Admin clients reading a large answer slowly, or not at all, and idle clients that
//! take every slot. The real `ceph --admin-daemon` CLI reads the answer's 4-byte length,
//! then loops `while got < len: got += len(sock.recv(…))`: an answer cut short (closed
//! by the server before `len` bytes) makes it spin on `recv` returning `b''` for ever, at
//! 100 % CPU. Ceph's `AdminSocket::do_accept` writes the whole answer (blocking), so its
//! CLI never meets one.
//!
//! The answers here are `perf schema` of a 64-worker messenger (~5 KiB a worker, so
//! over 300 KiB): more than a Unix socket's send buffer (`net.core.wmem_default`, 208
//! KiB) takes, so the server's write waits for the reader. The admin deadline is made
//! short (`admin_client_deadline`) so that a reader slower than it is quick to run.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use messenger::{Messenger, MessengerConfig, Policy};
use protocol::types::EntityType;
use tests::loopback::*;

/// The admin deadline of these servers: far shorter than the slow reader's whole read.
const DEADLINE: Duration = Duration::from_millis(500);

/// Workers of the server, whose `perf schema` is the large answer.
const WORKERS: usize = 64;

/// The least answer size: well past what the socket buffers take (208 KiB by default).
const LARGE: usize = 256 << 10;

const PERF_SCHEMA: &[u8] = br#"{"prefix": "perf schema"}"#;

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("asyncmsgr-asok-slow-{tag}-{}.asok", std::process::id()))
}

/// A server with [`WORKERS`] workers and admin deadline `deadline`, serving its admin
/// socket at a path of its own.
fn admin_server(tag: &str, workers: usize, deadline: Duration) -> (Messenger, PathBuf) {
    let config = MessengerConfig { admin_client_deadline: deadline, ..test_config(workers) };
    let (srv, _addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let path = socket_path(tag);
    srv.start_admin_socket(&path).expect("admin socket");
    (srv, path)
}

/// Sends `command` and reads the answer's length, as the CLI does.
fn ask_length(path: &Path, command: &[u8]) -> (UnixStream, usize) {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(command).expect("write");
    s.write_all(&[0]).expect("write NUL");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("the answer's length");
    (s, u32::from_be_bytes(len) as usize)
}

/// Reads `len` bytes, `chunk` at a time, pausing `pace` after each: a reader that keeps
/// making progress, slowly. Stops early at EOF; returns what it read.
fn read_slowly(s: &mut UnixStream, len: usize, chunk: usize, pace: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut buf = vec![0u8; chunk];
    while out.len() < len {
        let want = chunk.min(len - out.len());
        match s.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {} of {len} bytes: {e}", out.len()),
        }
        std::thread::sleep(pace);
    }
    out
}

/// Waits up to `within` for the server to have closed `s` (its write side: POLLRDHUP),
/// without reading what is queued on it.
fn hung_up(s: &UnixStream, within: Duration) -> bool {
    let mut fd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    n == 1 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

fn assert_whole(answer: &[u8], len: usize, what: &str) {
    assert_eq!(
        answer.len(),
        len,
        "{what}: the server closed after {} of {len} bytes (the ceph CLI's `while got < \
         len: recv()` spins for ever on that)",
        answer.len()
    );
    let schema: serde_json::Value = serde_json::from_slice(answer).expect("json");
    assert!(schema.get("AsyncMessenger::Worker-0").is_some());
}

// A client that reads its answer slowly but steadily, taking longer than the admin
// deadline in all, gets the whole answer. Before, the deadline (counted from accept)
// closed it part-way: the CLI then spun for ever.
#[test]
fn a_slow_but_steady_reader_gets_the_whole_answer() {
    let (srv, path) = admin_server("steady", WORKERS, DEADLINE);
    let started = Instant::now();
    let (mut s, len) = ask_length(&path, PERF_SCHEMA);
    assert!(len > LARGE, "an answer of {len} bytes is not larger than the socket buffers");
    // 4 KiB every 20 ms: 200 KiB/s, the whole answer in over 1.5 s. Within a deadline it
    // reads ~100 KiB, less than the three quarters of the socket buffer it must read
    // before the socket reports room to the server.
    let answer = read_slowly(&mut s, len, 4 << 10, Duration::from_millis(20));
    let took = started.elapsed();
    assert_whole(&answer, len, "a slow reader");
    assert!(took > 2 * DEADLINE, "the reader was not slower than the deadline: {took:?}");
    srv.shutdown();
}

// A client that reads the length, then none of the answer, is still closed once it has
// made no progress for the deadline: it holds neither a slot nor the answer for ever.
#[test]
fn a_reader_that_stops_reading_is_closed_after_the_deadline() {
    let (srv, path) = admin_server("stopped", WORKERS, DEADLINE);
    let connected = Instant::now();
    let (mut s, len) = ask_length(&path, PERF_SCHEMA);
    assert!(hung_up(&s, WAIT), "a client that reads nothing was kept past {WAIT:?}");
    assert!(connected.elapsed() >= DEADLINE, "closed after {:?}", connected.elapsed());
    // What the socket took before the close is there; the rest never came.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.len() < len, "{} of {len}", rest.len());
    srv.shutdown();
}

// The messenger shuts down while a slow reader is part-way through its answer, and
// while another reads none of its own: the shutdown is prompt, the slow reader still gets
// its whole answer (as Ceph's, whose shutdown joins the admin thread that finishes the
// answer first), and the stopped one is closed within the deadline of no progress.
// Before, both were closed at the shutdown, the slow reader part-way (the CLI spins).
#[test]
fn a_shutdown_finishes_a_half_written_answer_in_the_background() {
    let (srv, path) = admin_server("shutdown", WORKERS, DEADLINE);
    let (mut slow, len) = ask_length(&path, PERF_SCHEMA);
    let (stopped, _) = ask_length(&path, PERF_SCHEMA);
    let mut answer = vec![0u8; 8 << 10];
    slow.read_exact(&mut answer).expect("the answer's start");
    let shut = Instant::now();
    srv.shutdown();
    srv.wait();
    assert!(shut.elapsed() < Duration::from_secs(5), "shutdown took {:?}", shut.elapsed());
    answer.extend(read_slowly(&mut slow, len - answer.len(), 4 << 10, Duration::from_millis(20)));
    assert_whole(&answer, len, "a slow reader at the shutdown");
    assert!(hung_up(&stopped, WAIT), "a client reading nothing was kept past {WAIT:?}");
    assert!(!path.exists(), "socket file removed at shutdown");
}

// Idle local clients (connected, no command) that fill every slot do not keep a client
// with a command out: the oldest idle one gives its slot up. Before, every newcomer was
// closed unanswered for as long as the idle ones stayed (the deadline, and for ever if
// they reconnect as they are closed): the CLI got no answer.
#[test]
fn idle_admin_clients_do_not_keep_a_command_out() {
    use messenger::{ADMIN_CLIENT_DEADLINE, ADMIN_MAX_CLIENTS};
    let (srv, path) = admin_server("idle", 1, ADMIN_CLIENT_DEADLINE);
    let started = Instant::now();
    let mut idle: Vec<UnixStream> =
        (0..ADMIN_MAX_CLIENTS).map(|_| UnixStream::connect(&path).expect("connect")).collect();
    let mut s = UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(br#"{"prefix": "version"}"#).expect("write");
    s.write_all(&[0]).expect("write NUL");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("an answer, though idle clients held every slot");
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).expect("answer");
    let version: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(version["release"], "asyncmsgr");
    // The oldest idle client gave its slot up, well before any deadline.
    assert!(closed_by_server(&mut idle[0], WAIT), "the oldest idle client is closed");
    assert!(started.elapsed() < ADMIN_CLIENT_DEADLINE, "…before its deadline");
    srv.shutdown();
}
