//! Hostile handshakes: a peer that pipelines connect after connect, or trickles its
//! handshake, loses only its own connection; the process and every other connection
//! go on. Over msgr v1 and msgr2.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::v1::MAX_CONNECT_ATTEMPTS;
use protocol::v2::banner::Banner;
use protocol::v2::Tag as V2Tag;
use protocol::wire::{ConnectReply, Tag};
use tests::hostile::*;
use tests::hostile_v2::*;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// A server (an OSD, stateless) whose handshake timeout is far beyond [`WAIT`]: a
/// socket of a misbehaving connector it closes within `WAIT` was closed for what that
/// connector sent, not because its handshake ran out of time.
fn patient_server(
    echo: bool,
) -> (messenger::Messenger, std::net::SocketAddr, crossbeam_channel::Receiver<Seen>) {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    server_on(EntityType::OSD, 1, Policy::stateless_server(), echo, any, patient_config(2))
}

/// Sends `n` copies of `connect` in one write from a helper thread (the server stops
/// reading once it faults us, so the write may fail), waits until the server closes and
/// checks that what it answered before was at most `max` replies, each `tag`.
fn flood_connects(server: std::net::SocketAddr, connect: [u8; 33], n: usize, tag: Tag, max: usize) {
    let mut sock = banner_socket(server);
    let mut writer = sock.try_clone().expect("clone");
    let blob: Vec<u8> = connect.iter().copied().cycle().take(connect.len() * n).collect();
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&blob);
    });
    let sent =
        read_until_closed(&mut sock, WAIT).expect("the server kept a looping connector open");
    w.join().expect("writer");
    let replies: Vec<Tag> = sent.chunks(ConnectReply::LEN).map(|r| Tag(r[0])).collect();
    assert_eq!(sent.len() % ConnectReply::LEN, 0, "a reply was cut short");
    assert!(replies.len() <= max, "{} connects answered, at most {max}", replies.len());
    assert!(replies.iter().all(|t| *t == tag), "{replies:?}");
}

/// Sends `n` copies of `connect` one after the other and returns the reply tags.
fn answered_connects(
    server: std::net::SocketAddr,
    connect: [u8; 33],
    n: usize,
) -> (std::net::TcpStream, Vec<Tag>) {
    let mut sock = banner_socket(server);
    let mut tags = Vec::new();
    for _ in 0..n {
        sock.write_all(&connect).expect("connect");
        let mut reply = [0u8; ConnectReply::LEN];
        sock.read_exact(&mut reply).expect("reply");
        tags.push(Tag(reply[0]));
    }
    (sock, tags)
}

// Ceph answers a bad connect with BADPROTOVER or FEATURES and lets the connector try
// again on the same socket; a connector that keeps trying is closed after a few.
#[test]
fn pipelined_bad_connects_are_answered_a_few_times_then_faulted() {
    let (srv, addr, srv_rx) = patient_server(true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, srv.my_addr());
    let max = MAX_CONNECT_ATTEMPTS as usize;
    let bad_version = connect_msg(u32::MAX, Features::PACIFIC_ADVERTISED);
    let bad_features = connect_msg(good_protocol_version(), Features(0));

    // Each bad connect is answered, up to the bound; one more and the socket is closed.
    for (connect, tag) in [(bad_version, Tag::BADPROTOVER), (bad_features, Tag::FEATURES)] {
        let (mut sock, tags) = answered_connects(addr, connect, max);
        assert!(tags.iter().all(|t| *t == tag), "{tags:?}");
        sock.write_all(&connect).expect("one more");
        let sent = read_until_closed(&mut sock, WAIT).expect("the socket is closed");
        assert!(sent.is_empty(), "connect number {} was answered: {sent:?}", max + 1);
    }

    // 100,000 connects in one write: answered without recursion (this used to overflow
    // the worker's stack and abort the process), and only up to the bound.
    for (connect, tag) in [(bad_version, Tag::BADPROTOVER), (bad_features, Tag::FEATURES)] {
        let before = peer_issues(&srv);
        flood_connects(addr, connect, 100_000, tag, max);
        let issues = peer_issues(&srv) - before;
        assert!((1..=max as u64 + 1).contains(&issues), "{issues} connects handled");
    }

    // The process and the good client are fine.
    for tid in 0..50u64 {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[1; 64]))).expect("send");
    }
    for tid in 0..50u64 {
        assert_eq!(next_message(&cli_rx).1.tid(), tid);
    }
    drop(srv_rx);
    cli.shutdown();
    srv.shutdown();
}

// The handshake timeout runs from accept: a connector trickling its handshake one byte at
// a time (progress every time) is closed when it runs out, not kept forever.
#[test]
fn a_trickled_handshake_is_closed_at_the_handshake_timeout() {
    let (srv, addr) = server_with_a_2s_handshake_timeout();
    let sock = banner_socket(addr);
    let connect = connect_msg(good_protocol_version(), Features::PACIFIC_ADVERTISED);
    // 32 of the 33 bytes: progress all the time, never complete.
    assert_trickle_is_closed(sock, &connect[..32], "a trickled handshake was kept open");
    srv.shutdown();
}

/// A server whose handshakes must be done 2 s after accept.
fn server_with_a_2s_handshake_timeout() -> (messenger::Messenger, std::net::SocketAddr) {
    let config = messenger::MessengerConfig {
        connection_ready_timeout: Duration::from_secs(2),
        ..test_config(1)
    };
    let (srv, addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        true,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    (srv, addr)
}

/// Writes `bytes` one every 150 ms (the trickle is the misbehaviour) and asserts the
/// server closes `sock` at its handshake timeout, not later.
fn assert_trickle_is_closed(mut sock: std::net::TcpStream, bytes: &[u8], kept_open: &str) {
    let started = Instant::now();
    let mut closed = false;
    for b in bytes {
        if sock.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    if !closed {
        closed = closed_within(&mut sock, WAIT);
    }
    assert!(closed, "{kept_open}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "closed only after {took:?}");
}

// msgr2 counterparts. A raw peer speaks msgr2 (crc mode, auth none) up to the point where
// it misbehaves; the frames come from the protocol crate's encoder.

/// The server's v2 address, and the address a raw peer with `nonce` announces.
fn v2_addrs(srv: &messenger::Messenger, nonce: u32) -> (EntityAddr, EntityAddr) {
    (addr_for(ProtocolVersion::V2, srv.my_addr()), v2_peer_addr(nonce))
}

/// The bound on handshake rounds an acceptor allows one connection.
fn max_rounds() -> usize {
    let name = EntityName::new(EntityType::OSD, 0);
    protocol::Config::new(name, EntityAddr::default()).max_auth_rounds as usize
}

// Each featureless CLIENT_IDENT is answered, a bounded number of times; then the socket is
// closed. 100,000 of them in one write are handled only up to the bound (no recursion, no
// unbounded work), and a good msgr2 client of the same server goes on.
#[test]
fn pipelined_bad_client_idents_are_answered_a_few_times_then_faulted_over_msgr2() {
    let (srv, _addr, srv_rx) = patient_server(true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(ProtocolVersion::V2, srv.my_addr()));
    let bound = max_rounds();

    // One at a time: answered with IDENT_MISSING_FEATURES until the bound, then closed
    // (`read_frame` fails the test if the server neither answers nor closes).
    let (server, me) = v2_addrs(&srv, 3_000_001);
    let mut sock = v2_socket_at_ident(server, me, Policy::lossy_client());
    let ident = featureless_ident(server, me);
    let mut answered = 0;
    let mut closed = false;
    for _ in 0..bound + 2 {
        if sock.write_all(&ident).is_err() {
            closed = true;
            break;
        }
        match read_frame(&mut sock) {
            Some((tag, _)) => {
                assert_eq!(tag, V2Tag::IDENT_MISSING_FEATURES);
                answered += 1;
            }
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "{answered} featureless idents answered and the socket still open");
    assert!((1..=bound).contains(&answered), "{answered} featureless idents answered");
    eprintln!("{answered} featureless idents answered, then closed (bound {bound})");

    // 100,000 in one write.
    let (server, me) = v2_addrs(&srv, 3_000_002);
    let mut sock = v2_socket_at_ident(server, me, Policy::lossy_client());
    let blob = featureless_ident(server, me).repeat(100_000);
    let before = peer_issues(&srv);
    let mut writer = sock.try_clone().expect("clone");
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&blob);
    });
    let sent =
        read_until_closed(&mut sock, WAIT).expect("the server kept a looping connector open");
    w.join().expect("writer");
    let issues = peer_issues(&srv) - before;
    assert!((1..=bound as u64 + 1).contains(&issues), "{issues} idents handled");
    let answers = frame_tags(&sent);
    assert!(answers.len() <= bound, "{} idents answered, at most {bound}", answers.len());
    assert!(answers.iter().all(|t| *t == V2Tag::IDENT_MISSING_FEATURES), "{answers:?}");

    for tid in 0..50u64 {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[1; 64]))).expect("send");
    }
    for tid in 0..50u64 {
        assert_eq!(next_message(&cli_rx).1.tid(), tid);
    }
    assert_eq!(good.protocol(), Some(ProtocolVersion::V2));
    drop(srv_rx);
    cli.shutdown();
    srv.shutdown();
}

// Frames that do not belong to the handshake's phase, pipelined right after HELLO (a
// CLIENT_IDENT and 100,000 MESSAGEs before any AUTH_REQUEST): the first one faults the
// connection, the rest are never handled, nothing is delivered.
#[test]
fn frames_pipelined_before_the_handshake_finished_fault_only_that_connection_over_msgr2() {
    let (srv, addr, srv_rx) = patient_server(true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(ProtocolVersion::V2, srv.my_addr()));
    let (server, me) = v2_addrs(&srv, 3_000_003);
    for early in
        [featureless_ident(server, me), message_pieces(1, 1, Bytes::new(), Bytes::new()).concat()]
    {
        let mut sock = v2_banner_socket(addr);
        let mut blob = client_hello(server);
        blob.extend(early.repeat(100_000));
        let mut writer = sock.try_clone().expect("clone");
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(&blob);
        });
        let sent =
            read_until_closed(&mut sock, WAIT).expect("the server kept an early framer open");
        w.join().expect("writer");
        // Its HELLO (unread so far), then nothing: none of the early frames was answered.
        assert_eq!(frame_tags(&sent), [V2Tag::HELLO], "{} bytes", sent.len());
    }
    for tid in 0..50u64 {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[2; 64]))).expect("send");
    }
    for tid in 0..50u64 {
        assert_eq!(next_message(&cli_rx).1.tid(), tid);
    }
    // Only the good client's 50 reached the server.
    for tid in 0..50u64 {
        assert_eq!(next_message(&srv_rx).1.tid(), tid);
    }
    assert_no_more_messages(&srv_rx, "a frame sent before the handshake was delivered");
    cli.shutdown();
    srv.shutdown();
}

// A msgr2 connector trickling its banner and HELLO one byte every 150 ms is
// closed at the handshake timeout (2 s here), not kept while it makes progress.
#[test]
fn a_trickled_handshake_is_closed_at_the_handshake_timeout_over_msgr2() {
    let (srv, addr) = server_with_a_2s_handshake_timeout();
    let (server, _) = v2_addrs(&srv, 0);
    let mut bytes = Banner::OURS.to_bytes().to_vec();
    bytes.extend(client_hello(server));
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    assert_trickle_is_closed(sock, &bytes, "a trickled msgr2 handshake was kept open");
    srv.shutdown();
}

/// The server's `msgr_peer_issues_unlogged`, summed over its workers.
fn unlogged_peer_issues(srv: &messenger::Messenger) -> u64 {
    srv.worker_counters()
        .iter()
        .map(|c| c.peer_issues_unlogged.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

// Each connection logs its peer's misbehaviour at WARN once per kind; a flood of
// misbehaving connections must not flood the log as well: the messenger logs a few lines
// a second in all and counts the rest. `misbehave` opens one connection, misbehaves and
// waits until the server closes it.
fn a_flood_logs_a_few_lines_a_second(misbehave: impl Fn(std::net::SocketAddr)) {
    const CONNS: u64 = 200;
    let (srv, addr, _rx) = patient_server(false);
    let started = Instant::now();
    for _ in 0..CONNS {
        misbehave(addr);
    }
    wait_until(|| peer_issues(&srv) >= CONNS, || format!("{} issues counted", peer_issues(&srv)));
    let seconds = started.elapsed().as_secs() + 1;
    let logged = peer_issues(&srv) - unlogged_peer_issues(&srv);
    let allowed = protocol::session::WARN_LINES_PER_SECOND * seconds;
    assert!(logged <= allowed, "{logged} lines logged at WARN in {seconds} s, at most {allowed}");
    assert!(logged > 0, "nothing logged at all");
    srv.shutdown();
}

#[test]
fn a_flood_of_bad_banners_logs_a_few_lines_a_second() {
    a_flood_logs_a_few_lines_a_second(|addr| {
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        sock.write_all(b"not a ceph banner, not at all\n").expect("write");
        assert!(closed_within(&mut sock, WAIT), "a bad banner was not refused");
    });
}

#[test]
fn a_flood_of_bad_frames_logs_a_few_lines_a_second_over_msgr2() {
    a_flood_logs_a_few_lines_a_second(|addr| {
        let mut sock = v2_banner_socket(addr);
        sock.write_all(&[0xa5; 64]).expect("write");
        assert!(closed_within(&mut sock, WAIT), "a bad frame was not refused");
    });
}

// The running-time counters (`msgr_running_total_time`, `_recv_time`, `_send_time`) sum
// what a worker spent in its connections' handlers, so on a server of one worker they
// stay within the time since it started, however many connections arrive at once. Each
// driver counted from the start of its loop iteration, and a batch of accepted
// connections starts in one iteration: 512 connects summed to seconds within
// milliseconds.
#[test]
fn an_accept_storm_keeps_the_running_time_counters_within_the_wall_time() {
    use std::sync::atomic::Ordering::Relaxed;
    const CONNECTS: usize = 512;
    let started = Instant::now();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, addr, _rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), false, any, patient_config(1));
    let socks: Vec<_> =
        (0..CONNECTS).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
    wait_for_connection_count(&srv, CONNECTS, "the storm's connections");
    let [worker] = srv.worker_counters() else { panic!("one worker") };
    let counted = [
        ("msgr_running_total_time", &worker.running_total_time_ns),
        ("msgr_running_recv_time", &worker.running_recv_time_ns),
        ("msgr_running_send_time", &worker.running_send_time_ns),
    ]
    .map(|(name, ns)| (name, Duration::from_nanos(ns.load(Relaxed))));
    // After the counters were read: every interval they summed lies before this.
    let elapsed = started.elapsed();
    for (name, time) in counted {
        assert!(time <= elapsed, "{name} {time:?} in {elapsed:?} on one worker");
    }
    drop(socks);
    srv.shutdown();
}
