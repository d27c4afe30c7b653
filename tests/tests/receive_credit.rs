//! A message that arrives whole in one read is taken on receive credit granted for that
//! read, before its bytes are parsed: at depth 1 no message asks the throttles for its
//! budget in a round through the driver. `msgr_recv_budget_requests` counts the ones
//! that do ask: here, one too large for a read's credit. The credit goes back once the
//! server is idle; reads too short to hold a message take none, nor do reads larger
//! than a throttle's share, nor the reads of a duplicate streaming by.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crossbeam_channel::Receiver;
use messenger::{MessengerConfig, Policy};
use protocol::types::EntityType;
use protocol::ProtocolVersion;
use tests::hostile::{handshaken_socket, msg_frame, RawPeer};
use tests::hostile_v2::message_pieces;
use tests::loopback::{
    addr_for, hold_workers, next_message, server_on, test_config, wait_until, Seen, WAIT,
};

/// Messages written one at a time, each after the last was dispatched.
const LONE: u64 = 20;

/// What `m`'s workers counted in `msgr_recv_budget_requests`.
fn budget_requests(m: &messenger::Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.recv_budget_requests.load(Relaxed)).sum()
}

/// A server on one worker with `config`.
fn server(config: MessengerConfig) -> (messenger::Messenger, Receiver<Seen>) {
    let addr = "127.0.0.1:0".parse().expect("addr");
    let (srv, _, seen) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), false, addr, config);
    (srv, seen)
}

/// [`server`], and a raw peer with an open `proto` session.
fn serve(
    proto: ProtocolVersion,
    config: MessengerConfig,
) -> (messenger::Messenger, Receiver<Seen>, RawPeer) {
    let (srv, seen) = server(config);
    let peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    (srv, seen, peer)
}

/// What `m`'s workers read from sockets (`msgr_recv_bytes`).
fn read_bytes(m: &messenger::Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.recv_bytes.load(Relaxed)).sum()
}

/// The dispatch throttle's successful non-blocking gets: every credit takes one.
fn credit_gets(m: &messenger::Messenger) -> u64 {
    m.dispatch_throttle().counters().get_or_fail_success
}

/// Writes `bytes` in pieces of `piece` bytes, each once the server has read the last: a
/// read per piece.
fn write_read_by_read(
    srv: &messenger::Messenger,
    sock: &mut TcpStream,
    bytes: &[u8],
    piece: usize,
) {
    for (i, p) in bytes.chunks(piece).enumerate() {
        let until = read_bytes(srv) + p.len() as u64;
        sock.write_all(p).expect("write");
        wait_until(|| read_bytes(srv) >= until, || format!("piece {i} never read"));
    }
}

/// Writes [`LONE`] messages with a front of 4 KiB, each once the last was dispatched,
/// checking they arrive in order and whole.
fn send_lone(proto: ProtocolVersion, peer: &mut RawPeer, seen: &Receiver<Seen>) {
    let front = vec![7u8; 4096];
    for tid in 1..=LONE {
        let bytes = peer.message(tid, &front);
        peer.sock.write_all(&bytes).expect("write");
        let (_, msg) = next_message(seen);
        assert_eq!(msg.tid(), tid, "{proto:?}: dispatched in order");
        assert_eq!(msg.front().len(), front.len(), "{proto:?}: whole front");
    }
}

/// Waits until `srv`'s dispatch throttle holds nothing: the credit went back.
/// Waits for a burst's `n` messages (tids 1.., each with a front of `front_len` bytes),
/// checking they arrive whole and in order; returns how many budget requests the server
/// made.
fn burst_arrived(
    proto: ProtocolVersion,
    srv: &messenger::Messenger,
    seen: &Receiver<Seen>,
    n: u64,
    front_len: usize,
) -> u64 {
    for tid in 1..=n {
        let (_, msg) = next_message(seen);
        assert_eq!((msg.tid(), msg.front().len()), (tid, front_len), "{proto:?}: in order");
    }
    budget_requests(srv)
}

fn wait_until_released(proto: ProtocolVersion, srv: &messenger::Messenger) {
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("{proto:?}: dispatch throttle holds {}", srv.dispatch_throttle().current()),
    );
}

fn lone_messages_take_no_budget_round(proto: ProtocolVersion) {
    let (srv, seen, mut peer) = serve(proto, test_config(1));
    send_lone(proto, &mut peer, &seen);
    assert_eq!(
        budget_requests(&srv),
        0,
        "{proto:?}: {LONE} messages of 4 KiB, each whole in one read, asked for budget"
    );

    // Too large for a read's credit (its front alone is more than 32 KiB): it asks.
    let large = vec![9u8; 100 << 10];
    let bytes = peer.message(LONE + 1, &large);
    peer.sock.write_all(&bytes).expect("write");
    let (_, msg) = next_message(&seen);
    assert_eq!((msg.tid(), msg.front().len()), (LONE + 1, large.len()), "{proto:?}");
    assert!(budget_requests(&srv) >= 1, "{proto:?}: the large message took no budget round");

    // Nothing stays charged once the server is idle.
    wait_until_released(proto, &srv);
    srv.shutdown();
}

/// A message trickled one byte per read: reads too short to hold a message take no
/// credit, so the throttles see nothing until the rest arrives in one write.
fn trickled_bytes_take_no_credit(proto: ProtocolVersion) {
    let (srv, seen, mut peer) = serve(proto, test_config(1));
    let bytes = peer.message(1, &[5u8; 4096]);
    let before = credit_gets(&srv);
    // Fewer than either protocol's message head: nothing asks for budget yet.
    const TRICKLED: usize = 40;
    write_read_by_read(&srv, &mut peer.sock, &bytes[..TRICKLED], 1);
    assert_eq!(credit_gets(&srv) - before, 0, "{proto:?}: one-byte reads took throttle budget");
    peer.sock.write_all(&bytes[TRICKLED..]).expect("write");
    let (_, msg) = next_message(&seen);
    assert_eq!((msg.tid(), msg.front().len()), (1, 4096), "{proto:?}");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

/// A duplicate (`dup`, 32 KiB of front) streams by unstored and uncharged: its reads
/// after the first, 1 KiB each, go on with a frame already begun and take no credit;
/// `after` then arrives as tid 3.
fn a_duplicate_takes_no_credit(
    proto: ProtocolVersion,
    srv: &messenger::Messenger,
    seen: &Receiver<Seen>,
    sock: &mut TcpStream,
    dup: &[u8],
    after: &[u8],
) {
    let before = credit_gets(srv);
    write_read_by_read(srv, sock, dup, 1 << 10);
    // Its first read, taken between frames, is given credit before it is parsed (and
    // gives it back at the end of that pass); the 31 reads after it take none.
    let gets = credit_gets(srv) - before;
    assert!(gets <= 1, "{proto:?}: a duplicate's 32 reads took throttle budget {gets} times");
    sock.write_all(after).expect("write");
    let (_, msg) = next_message(seen);
    assert_eq!(msg.tid(), 3, "{proto:?}: the message after the duplicate");
    wait_until_released(proto, srv);
}

#[test]
fn a_duplicate_takes_no_credit_v1() {
    let (srv, seen) = server(test_config(1));
    let (mut sock, footer) = handshaken_socket(srv.my_addr(), Policy::lossy_client());
    // On a fresh session in_seq is 0: seq 0 is a duplicate.
    let dup = msg_frame(0, 2, &[0u8; 32 << 10], footer);
    let after = msg_frame(1, 3, b"after the duplicate", footer);
    a_duplicate_takes_no_credit(ProtocolVersion::V1, &srv, &seen, &mut sock, &dup, &after);
    srv.shutdown();
}

#[test]
fn a_duplicate_takes_no_credit_v2() {
    let (srv, seen, mut peer) = serve(ProtocolVersion::V2, test_config(1));
    let first = peer.message(1, b"first");
    peer.sock.write_all(&first).expect("write");
    assert_eq!(next_message(&seen).1.tid(), 1);
    wait_until_released(ProtocolVersion::V2, &srv);
    // seq 1 again.
    let dup = message_pieces(1, 2, Bytes::from(vec![0u8; 32 << 10]), Bytes::new()).concat();
    let after = peer.message(3, b"after the duplicate");
    a_duplicate_takes_no_credit(ProtocolVersion::V2, &srv, &seen, &mut peer.sock, &dup, &after);
    srv.shutdown();
}

#[test]
fn trickled_bytes_take_no_credit_v1() {
    trickled_bytes_take_no_credit(ProtocolVersion::V1);
}

#[test]
fn trickled_bytes_take_no_credit_v2() {
    trickled_bytes_take_no_credit(ProtocolVersion::V2);
}

/// A dispatch throttle whose share (an eighth of it) is less than a read: no read
/// credit, so each lone message asks as it did before, and all of it is released.
fn a_small_throttle_gives_no_read_credit(proto: ProtocolVersion) {
    let config = MessengerConfig { dispatch_throttle_bytes: 16 << 10, ..test_config(1) };
    let (srv, seen, mut peer) = serve(proto, config);
    send_lone(proto, &mut peer, &seen);
    assert_eq!(budget_requests(&srv), LONE, "{proto:?}: each message asked for its budget");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

#[test]
fn a_small_throttle_gives_no_read_credit_v1() {
    a_small_throttle_gives_no_read_credit(ProtocolVersion::V1);
}

#[test]
fn a_small_throttle_gives_no_read_credit_v2() {
    a_small_throttle_gives_no_read_credit(ProtocolVersion::V2);
}

#[test]
fn lone_messages_take_no_budget_round_v1() {
    lone_messages_take_no_budget_round(ProtocolVersion::V1);
}

#[test]
fn lone_messages_take_no_budget_round_v2() {
    lone_messages_take_no_budget_round(ProtocolVersion::V2);
}

/// A burst of `BURST` messages of 4 KiB, written while the server's worker is held so
/// that it reads them in a few large reads, to a server without early batches (which
/// hands on whole batches of `dispatch_batch` only, as it does for a peer on its own
/// CPU): the credit granted after a read's second message covers the rest of the
/// burst up to the batch, so few messages ask for their budget. (Credit that stopped
/// where an early batch would have been made, 16 KiB in, made every message after the
/// fourth ask.) All arrive in order and whole, and the credit goes back.
fn a_burst_without_early_batches_asks_a_few_times(proto: ProtocolVersion) {
    const BURST: u64 = 24;
    let config = MessengerConfig { early_batches: false, ..test_config(1) };
    let (srv, seen, mut peer) = serve(proto, config);
    let front = vec![3u8; 4096];
    let burst: Vec<u8> = (1..=BURST).flat_map(|tid| peer.message(tid, &front)).collect();
    let hold = hold_workers(&srv);
    peer.sock.write_all(&burst).expect("write");
    drop(hold);
    let asked = burst_arrived(proto, &srv, &seen, BURST, front.len());
    // Two per read phase at most (its first message, and the second, which takes the
    // credit for the rest); the burst arrives in one or two.
    assert!(asked <= 6, "{proto:?}: {asked} of {BURST} messages asked for their budget");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

#[test]
fn a_burst_without_early_batches_asks_a_few_times_v1() {
    a_burst_without_early_batches_asks_a_few_times(ProtocolVersion::V1);
}

#[test]
fn a_burst_without_early_batches_asks_a_few_times_v2() {
    a_burst_without_early_batches_asks_a_few_times(ProtocolVersion::V2);
}

/// Waits until `sock`'s send queue (bytes not sent, or not acknowledged) is empty: on
/// loopback, what it sent is then in its peer's socket. A write can return with part of
/// it still queued on our side (a loaded host), and the peer's reads would end at that
/// gap.
fn wait_until_sent(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ stores one c_int through the pointer, valid for the call.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
        assert_eq!(rc, 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
        n
    };
    wait_until(|| queued() == 0, || format!("{} bytes still queued to send", queued()));
}

/// A burst of `BURST` messages of 4 KiB that crosses `dispatch_batch` (24 here) with
/// early batches on, read in one read phase (written while the worker is held): an
/// early batch is made every 4 (or 8) messages while the phase has delivered fewer than
/// `dispatch_batch` (`early_batches_pay`), and each takes one budget request, after
/// which the credit runs to the next batch. The credit granted 4 short of
/// `dispatch_batch` must run past it to the next check point: it stopped where the
/// early batch would have been, which the burst's reaching `dispatch_batch` cancels, so
/// the message after it asked for its budget for nothing (8 requests instead of 7 for
/// the 25; 6 on a worker busy with quick messages, whose early batches are of 16).
fn a_burst_crossing_the_batch_asks_once_per_early_batch(proto: ProtocolVersion) {
    const BURST: u64 = 25;
    let config =
        MessengerConfig { dispatch_batch: 24, colocated_peer_batching: false, ..test_config(1) };
    let (srv, seen, mut peer) = serve(proto, config);
    let front = vec![4u8; 4096];
    let burst: Vec<u8> = (1..=BURST).flat_map(|tid| peer.message(tid, &front)).collect();
    // The worker is held (inside the hold: not reading the burst's first bytes as the
    // hold is posted) until all of the burst is in the server's socket: one read phase.
    let (go, wait) = crossbeam_channel::bounded::<()>(0);
    let (inside, held) = crossbeam_channel::bounded::<()>(1);
    srv.pool().handles()[0]
        .dispatch_event_external(move |_| {
            let _ = inside.send(());
            let _ = wait.recv_timeout(WAIT);
        })
        .expect("post");
    held.recv_timeout(WAIT).expect("the worker held");
    peer.sock.write_all(&burst).expect("write");
    wait_until_sent(&peer.sock);
    drop(go);
    let asked = burst_arrived(proto, &srv, &seen, BURST, front.len());
    assert!(asked <= 7, "{proto:?}: {asked} of {BURST} messages asked for their budget");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

#[test]
fn a_burst_crossing_the_batch_asks_once_per_early_batch_v1() {
    a_burst_crossing_the_batch_asks_once_per_early_batch(ProtocolVersion::V1);
}

#[test]
fn a_burst_crossing_the_batch_asks_once_per_early_batch_v2() {
    a_burst_crossing_the_batch_asks_once_per_early_batch(ProtocolVersion::V2);
}
