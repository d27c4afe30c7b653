//! A replace decided against a session that moves on before the hand-off: the accept
//! decision reads the existing session in the session table's critical section, but the
//! existing session's driver adopts the incoming socket later (a command to its worker,
//! here held by `ms_inject_internal_delays`). Ceph stops the existing connection in the
//! decision's critical section (`reuse_connection` sets its state to NONE under its
//! lock); ours kept running: a connect of ours the peer answered meanwhile opened and
//! delivered messages, and the replace then renumbered that session from 0 on the same
//! handle. The peer, resending what it had not seen acknowledged after the
//! SESSION_RESET that followed, had it delivered twice.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;

use messenger::{Connection, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::session::Decision;
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use protocol::v2::Tag as V2Tag;
use protocol::{Event, Message};
use tests::hostile_v2::*;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
/// The accept decision and the replace hand-off each wait this long.
const HOLD: Duration = Duration::from_millis(1500);

fn held(m: &Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.inject_internal_delays.load(Relaxed)).sum()
}

/// A msgr2 peer driven by hand: a protocol machine over a blocking socket.
struct Peer {
    m: protocol::Connection,
    sock: Option<TcpStream>,
    /// Where it dials on a reconnect.
    dial: SocketAddr,
}

impl Peer {
    fn flush(&mut self) {
        let mut out = Vec::new();
        while self.m.poll_transmit(&mut out) > 0 {}
        if let Some(sock) = &mut self.sock {
            for seg in out {
                if sock.write_all(&seg).is_err() {
                    break;
                }
            }
        }
    }

    /// One round: writes what the machine has, reads what arrived within 10 ms, runs
    /// due timers; returns the machine's events (a reconnect is dialled here).
    fn step(&mut self) -> Vec<Event> {
        self.flush();
        if let Some(sock) = &mut self.sock {
            sock.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
            let mut buf = vec![0u8; 65536];
            match sock.read(&mut buf) {
                Ok(0) => {
                    self.sock = None;
                    self.m.handle_transport_closed(Instant::now());
                }
                Ok(n) => self.m.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => {
                    self.sock = None;
                    self.m.handle_transport_closed(Instant::now());
                }
            }
        }
        if self.m.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            self.m.handle_timeout(Instant::now());
        }
        let mut events = Vec::new();
        while let Some(ev) = self.m.poll_event() {
            match ev {
                Event::Reconnect { .. } => {
                    self.sock = Some(TcpStream::connect(self.dial).expect("redial"));
                    self.m.handle_transport_connected(Instant::now());
                }
                Event::VerifyAuthorizer { .. } => panic!("no authorizer to verify with auth none"),
                ev => events.push(ev),
            }
        }
        self.flush();
        events
    }
}

/// The messenger `m` dials a peer driven by hand (with `first` queued, if any, so the
/// session has something to send), whose acceptor reads `m`'s ident and leaves it
/// unanswered; the peer then dials `m`, up to its CLIENT_IDENT (not sent). Returns the
/// dial's handle, the peer (its machine holding the unanswered accept), its socket to
/// `m`, its config, its address and its listener.
fn dial_an_unanswered_peer(
    m: &Messenger,
    first: Option<Message>,
) -> (Connection, Peer, TcpStream, Arc<protocol::Config>, EntityAddr, TcpListener) {
    let m_addr = addr_for(ProtocolVersion::V2, m.my_addr());
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = TcpListener::bind(loopback).expect("peer listener");
    let p_addr = EntityAddr {
        ty: AddrType::MSGR2,
        ..EntityAddr::legacy(listener.local_addr().expect("addr"), 1)
    };
    let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::OSD, 1), p_addr));
    let conn = m.connect_to(EntityType::OSD, p_addr);
    if let Some(msg) = first {
        conn.send_message(msg).expect("send");
    }
    let (s1, from) = listener.accept().expect("accept");
    let local = s1.local_addr().expect("local");
    let mut peer = Peer {
        m: protocol::Connection::accept_v2(Arc::clone(&cfg), from, local, Instant::now()),
        sock: Some(s1),
        dial: m_addr.addr.expect("messenger address"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peer.step().iter().any(|e| matches!(e, Event::AcceptRequest(_))) {
        assert!(Instant::now() < deadline, "the messenger's ident never came");
    }
    let s2 =
        v2_socket_at_ident_with(Arc::clone(&cfg), m_addr, EntityType::OSD, Policy::lossless_peer());
    (conn, peer, s2, cfg, p_addr, listener)
}

/// The race both tests start from, up to the held hand-off: `m` dials a peer driven by
/// hand (with `first` queued, if any, so the session has something to send), whose
/// acceptor reads `m`'s ident and leaves it unanswered; the peer then dials `m` and its
/// CLIENT_IDENT wins the race there (its nonce sorts lower). Returns once the replace was
/// decided and the hand-off waits at the existing session (held twice): the dial's
/// handle, the peer (its machine holding the unanswered accept), its socket to `m` and
/// its listener.
fn race_to_a_held_hand_off(
    m: &Messenger,
    first: Option<Message>,
) -> (Connection, Peer, TcpStream, TcpListener) {
    let m_addr = addr_for(ProtocolVersion::V2, m.my_addr());
    let (conn, peer, mut s2, cfg, p_addr, listener) = dial_an_unanswered_peer(m, first);
    let before = held(m);
    // From the peer's one global_seq counter, as its later connects.
    let gs = cfg.global_seq.next().0;
    s2.write_all(&ident_listing(m_addr, vec![p_addr], 0xC, gs)).expect("ident");
    // Decided (held once), and the hand-off waiting at the existing session (twice).
    wait_until(
        || held(m) >= before + 2,
        || format!("the replace was never decided and handed off: {}", m.dump_connections()),
    );
    (conn, peer, s2, listener)
}

/// After a raced replace: reads the messenger's answer to the racing ident on `s2` (a
/// SERVER_IDENT if it adopted the socket: the peer's session on its own connect then
/// ends), has the peer send one message more, and asserts that each of the `n + 1`
/// reached `conn` once and in order (messages on `skip`, another session, aside).
fn each_message_once(
    rx: &Receiver<Seen>,
    conn: &Connection,
    skip: Option<&Connection>,
    peer: &mut Peer,
    s2: &mut TcpStream,
    n: u64,
    wait: Duration,
) {
    let mut seen = Vec::new();
    let take = |seen: &mut Vec<u64>| {
        while let Ok(s) = rx.try_recv() {
            if let Seen::Message(c, msg) = s {
                if skip == Some(&c) {
                    continue;
                }
                assert!(c == *conn, "message {} on another handle {c:?}", msg.tid());
                seen.push(msg.tid());
            }
        }
    };
    s2.set_read_timeout(Some(wait)).expect("timeout");
    let answer = read_frame(s2).map(|(t, _)| t);
    take(&mut seen);
    if answer == Some(V2Tag::SERVER_IDENT) {
        // Adopted: the messenger's connect (now the peer's session) is closed. What the
        // messenger acknowledged there, if anything, is lost with the socket.
        if let Some(mut s1) = peer.sock.take() {
            s1.set_read_timeout(Some(wait)).expect("timeout");
            let _ = std::io::copy(&mut s1, &mut std::io::sink());
        }
        peer.m.handle_transport_closed(Instant::now());
    }

    // One more message; then every one must have arrived once.
    peer.m.send_message(test_message(MSG_TEST, n + 1, Bytes::from_static(&[5; 32])));
    let deadline = Instant::now() + wait;
    while !seen.contains(&(n + 1)) {
        assert!(Instant::now() < deadline, "the last message never came: {seen:?}");
        peer.step();
        take(&mut seen);
    }
    let want: Vec<u64> = (1..=n + 1).collect();
    assert_eq!(seen, want, "delivered on {conn:?} (answer to the racing ident: {answer:?})");
}

// The messenger dials the peer; the peer's acceptor holds the messenger's ident
// unanswered while the peer dials the messenger and sends CLIENT_IDENT: a connection
// race the peer wins (its nonce sorts lower), so the messenger decides to hand its
// session to the incoming socket. While the hand-off waits, the peer answers the
// messenger's ident (its own race decision, as a peer that knows us by another address
// takes it) and sends messages: delivered there, then renumbered by the replace, they
// came again with the peer's resends. Every message must reach the messenger's handle
// once, whatever becomes of the race.
// The existing session reads nothing on its own socket from the replace decision to the
// hand-off (as Ceph's `reuse_connection` stops it in the decision's critical section).
#[test]
fn a_replace_decided_before_the_existing_session_opened_delivers_nothing_twice_over_msgr2() {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(2) };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (m, _, rx) =
        server_on(EntityType::OSD, 10, Policy::lossless_peer(), false, loopback, config);
    let (conn, mut peer, mut s2, _listener) = race_to_a_held_hand_off(&m, None);

    // Meanwhile the peer answers the messenger's ident and sends.
    const N: u64 = 20;
    peer.m.handle_accept_decision(Instant::now(), Policy::lossless_peer(), Decision::Open, None);
    for tid in 1..=N {
        peer.m.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[5; 32])));
    }
    peer.flush();
    // The hand-off (after its hold): the incoming socket is answered, or closed.
    each_message_once(&rx, &conn, None, &mut peer, &mut s2, N, Duration::from_secs(20));
    drop(s2);
    m.shutdown();
}

// The same race, the hand-off held longer than what is left of the messenger's own
// handshake: its connect to the peer (unanswered) times out while its session is frozen
// for the replace. Ceph's `reuse_connection` leaves the existing connection in state
// NONE, where a fault (its tick's connect timeout included) does nothing, and restarts
// the timer at the hand-off. Ours faulted the frozen session and redialled the peer
// while the hand-off was in flight: one more connect for the peer to decide, against a
// session whose number the replace is about to move.
#[test]
fn a_frozen_session_s_handshake_timer_does_not_redial_while_the_hand_off_is_in_flight() {
    // The accept decision waits HOLD, then the hand-off HOLD more; the messenger's own
    // connect times out in between (at 1.5 HOLD after it started), with HOLD / 2 of
    // margin on either side.
    const HOLD: Duration = Duration::from_millis(1500);
    let config = MessengerConfig {
        inject_internal_delays: HOLD,
        connection_ready_timeout: HOLD * 3 / 2,
        initial_backoff: Duration::from_millis(10),
        ..test_config(2)
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (m, _, _rx) =
        server_on(EntityType::OSD, 10, Policy::lossless_peer(), false, loopback, config);
    // The messenger dials with a message to send (a session holding none would go to
    // standby at the fault, not redial).
    let first = test_message(MSG_TEST, 1, Bytes::from_static(&[5; 32]));
    let (_conn, _peer, mut s2, listener) = race_to_a_held_hand_off(&m, Some(first));

    // Until the hand-off answers the peer's ident (or closes it), the frozen session
    // dials nobody.
    listener.set_nonblocking(true).expect("nonblocking");
    s2.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the hand-off never came");
        match listener.accept() {
            Ok((_, from)) => panic!(
                "the frozen session redialled the peer (from {from}) before its hand-off: {}",
                m.dump_connections()
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock, "accept: {e}"),
        }
        match s2.peek(&mut [0u8; 1]) {
            Ok(_) => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    s2.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    assert_eq!(
        read_frame(&mut s2).map(|(t, _)| t),
        Some(V2Tag::SERVER_IDENT),
        "the hand-off did not answer the peer's ident"
    );
    m.shutdown();
}

// The last window of the replace freeze: the existing session's pump loads the mark
// once, before it reads. Here the pump that reads the peer's SERVER_IDENT and messages is
// held right after that load, before its read, while the peer's racing CLIENT_IDENT
// (sent before the peer answered the messenger's ident) is decided on the other worker
// against a session still connecting: a race the peer wins, replace keeping the session.
// The held pump then read on: our connect opened and the messages were delivered; the
// hand-off renumbered that open session, and the peer's resends after the reset that
// followed were delivered twice. Every message must reach the messenger's handle once,
// whatever becomes of the racing ident.
#[test]
fn a_replace_decided_while_the_existing_session_opens_in_one_pump_delivers_nothing_twice() {
    let config = test_config(2);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (m, _, rx) =
        server_on(EntityType::OSD, 10, Policy::lossless_peer(), false, loopback, config.clone());
    let m_addr = addr_for(ProtocolVersion::V2, m.my_addr());

    // A first session takes the listener's worker (the least loaded at bind, and ties go
    // to the lowest index): the messenger's dial below runs on the other, and the racing
    // ident's socket is accepted where the listener is, free while the dial's is held.
    let (other, _orx) = client_with(EntityType::CLIENT, 3, Policy::lossless_client(), config);
    let other_conn = other.connect_to(EntityType::OSD, m_addr);
    other_conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("queued");
    let (other_server_side, _) = next_message(&rx);
    let (tid_tx, tid_rx) = crossbeam_channel::bounded(4);
    let tx = tid_tx.clone();
    other_server_side.inject_before_settle(move || {
        let _ = tx.send(std::thread::current().id());
    });
    let listener_worker = tid_rx.recv_timeout(WAIT).expect("the first session's pump ran");

    // The messenger dials the peer; the peer dials it, up to its ident (accepted on the
    // listener's worker).
    let (conn, mut peer, mut s2, cfg, p_addr, _listener) = dial_an_unanswered_peer(&m, None);

    // From the peer's one global_seq counter, before its acceptor answers (as the ident
    // it sent before that answer).
    let gs = cfg.global_seq.next().0;

    // The dial's pump held right before it reads (after it loaded the replace mark),
    // while the peer answers the messenger's ident and sends.
    let (held_tx, held_rx) = crossbeam_channel::bounded::<()>(1);
    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    conn.inject_before_read(move || {
        let _ = tid_tx.send(std::thread::current().id());
        let _ = held_tx.send(());
        let _ = go_rx.recv_timeout(WAIT);
    });
    const N: u64 = 20;
    peer.m.handle_accept_decision(Instant::now(), Policy::lossless_peer(), Decision::Open, None);
    for tid in 1..=N {
        peer.m.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[5; 32])));
    }
    peer.flush();
    held_rx.recv_timeout(WAIT).expect("the dial's pump never read");
    let dial_worker = tid_rx.recv_timeout(WAIT).expect("the dial's worker");
    assert_ne!(dial_worker, listener_worker, "the dial on the listener's worker: none accepts");

    // The racing ident, decided on the listener's worker against a session still
    // connecting: the accepting connection hands its socket over and ends.
    let active =
        || -> u64 { m.worker_counters().iter().map(|c| c.active_connections.load(Relaxed)).sum() };
    assert_eq!(active(), 3, "the first session, the dial and the racing socket");
    s2.write_all(&ident_listing(m_addr, vec![p_addr], 0xC, gs)).expect("ident");
    wait_until(
        || active() == 2,
        || format!("the racing ident was not handed over: {}", m.dump_connections()),
    );
    // The held pump reads on: our connect opens, the messages are delivered.
    go_tx.send(()).expect("the pump waits");

    // The hand-off: the incoming socket is answered, or closed.
    each_message_once(&rx, &conn, Some(&other_server_side), &mut peer, &mut s2, N, WAIT);
    drop(s2);
    other.shutdown();
    m.shutdown();
}
