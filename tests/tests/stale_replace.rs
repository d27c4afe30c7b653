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

use messenger::{ConnState, Connection, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::session::Decision;
use protocol::types::{proto_version, AddrType, EntityAddr, EntityName, EntityType, Features};
use protocol::v2::Tag as V2Tag;
use protocol::wire::{ConnectMsg, ConnectReply, Tag as V1Tag, MAX_AUTHORIZER_LEN};
use protocol::{Event, Message};
use tests::hostile::banner_socket_as;
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
    /// Steps the peer's acceptor until the messenger's connect opened a lossless session
    /// (the peer's decision: open).
    fn open_lossless(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the session never opened");
            let events = self.step();
            if events.iter().any(|e| matches!(e, Event::AcceptRequest(_))) {
                self.m.handle_accept_decision(
                    Instant::now(),
                    Policy::lossless_peer(),
                    Decision::Open,
                    None,
                );
            }
            if events.iter().any(|e| matches!(e, Event::Opened(_))) {
                break;
            }
        }
    }

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

    /// Answers the accept it holds with `decision` (as a lossless peer) and sends
    /// messages 1 to `n` behind the answer.
    fn answer_then_send(&mut self, decision: Decision, n: u64) {
        self.m.handle_accept_decision(Instant::now(), Policy::lossless_peer(), decision, None);
        for tid in 1..=n {
            self.m.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[5; 32])));
        }
        self.flush();
    }

    /// One round: writes what the machine has, reads what arrived within 10 ms, runs
    /// due timers; returns the machine's events (a reconnect is dialled here).
    fn step(&mut self) -> Vec<Event> {
        self.flush();
        if let Some(sock) = &mut self.sock {
            sock.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
            let mut buf = vec![0u8; 65536];
            match tests::read_some(sock, &mut buf) {
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
                // A v1 acceptor has the auth-none authorizer verified too (msgr2 has none).
                Event::VerifyAuthorizer { .. }
                    if self.m.protocol() == Some(ProtocolVersion::V1) =>
                {
                    let accept = protocol::AuthVerdict::Accept { reply: Bytes::new() };
                    self.m.handle_authorizer_verdict(Instant::now(), accept);
                }
                Event::VerifyAuthorizer { .. } => panic!("no authorizer to verify with auth none"),
                Event::NeedBudget { .. } => self.m.grant_budget(Instant::now()),
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
    let answer = |s2: &mut TcpStream| {
        let tag = read_frame(s2).map(|(t, _)| t);
        (tag == Some(V2Tag::SERVER_IDENT), format!("{tag:?}"))
    };
    each_message_once_after(rx, conn, skip, peer, s2, n, wait, answer);
}

/// [`each_message_once`] with `answer` reading the messenger's answer to the racing
/// connect on `s2`: whether it adopted the socket (the peer's session on its own connect
/// then ends), and the answer as the failure message shows it.
#[allow(clippy::too_many_arguments)]
fn each_message_once_after(
    rx: &Receiver<Seen>,
    conn: &Connection,
    skip: Option<&Connection>,
    peer: &mut Peer,
    s2: &mut TcpStream,
    n: u64,
    wait: Duration,
    answer: impl FnOnce(&mut TcpStream) -> (bool, String),
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
    let (adopted, answer) = answer(s2);
    take(&mut seen);
    if adopted {
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
    assert_eq!(seen, want, "delivered on {conn:?} (answer to the racing connect: {answer})");
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
    peer.answer_then_send(Decision::Open, N);
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
        match tests::peek_some(&s2, &mut [0u8; 1]) {
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
    let (m, rx, m_addr, first) = server_beside_a_first_session(config, ProtocolVersion::V2);

    // The messenger dials the peer; the peer dials it, up to its ident (accepted on the
    // listener's worker).
    let (conn, mut peer, mut s2, cfg, p_addr, _listener) = dial_an_unanswered_peer(&m, None);

    // From the peer's one global_seq counter, before its acceptor answers (as the ident
    // it sent before that answer).
    let gs = cfg.global_seq.next().0;

    // The dial's pump held right before it reads (after it loaded the replace mark),
    // while the peer answers the messenger's ident and sends.
    let pump = hold_the_next_read(&conn);
    const N: u64 = 20;
    peer.answer_then_send(Decision::Open, N);
    pump.held_on_another_worker_than(&first);

    // The racing ident, decided on the listener's worker against a session still
    // connecting: the accepting connection hands its socket over and ends.
    send_the_racing_ident(&m, &mut s2, m_addr, p_addr, gs);
    // The held pump reads on: our connect opens, the messages are delivered.
    pump.go.send(()).expect("the pump waits");

    // The hand-off: the incoming socket is answered, or closed.
    each_message_once(&rx, &conn, Some(&first.server_side), &mut peer, &mut s2, N, WAIT);
    drop(s2);
    first.client.shutdown();
    m.shutdown();
}

/// A first session of a client of a messenger at `m_addr` (which reports on `rx`), which takes the
/// listener's worker (the least loaded at bind, and ties go to the lowest index): a
/// session the messenger dials next runs on the other, and a racing socket is accepted where the
/// listener is, free while the dial's worker is held.
struct FirstSession {
    client: Messenger,
    /// Its connection at `m`'s end.
    server_side: Connection,
    /// The listener's worker.
    worker: std::thread::ThreadId,
}

/// An OSD messenger under `config` (a lossless peer, listening on loopback) and a first
/// session of a client of it at its `proto` address: returns the messenger, what it
/// reports, that address and the first session.
fn server_beside_a_first_session(
    config: MessengerConfig,
    proto: ProtocolVersion,
) -> (Messenger, Receiver<Seen>, EntityAddr, FirstSession) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (m, _, rx) =
        server_on(EntityType::OSD, 10, Policy::lossless_peer(), false, loopback, config.clone());
    let m_addr = addr_for(proto, m.my_addr());
    let (client, _crx) = client_with(EntityType::CLIENT, 3, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, m_addr);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("queued");
    let (server_side, _) = next_message(&rx);
    let (tx, worker) = crossbeam_channel::bounded(1);
    server_side.inject_before_settle(move || {
        let _ = tx.send(std::thread::current().id());
    });
    let worker = worker.recv_timeout(WAIT).expect("the first session's pump ran");
    (m, rx, m_addr, FirstSession { client, server_side, worker })
}

/// A connection's next read held right before it reads (after its pump loaded the
/// replace mark), until `go`.
struct HeldRead {
    held: Receiver<std::thread::ThreadId>,
    go: crossbeam_channel::Sender<()>,
}

fn hold_the_next_read(conn: &Connection) -> HeldRead {
    let (held_tx, held) = crossbeam_channel::bounded(1);
    let (go, go_rx) = crossbeam_channel::bounded::<()>(1);
    conn.inject_before_read(move || {
        let _ = held_tx.send(std::thread::current().id());
        let _ = go_rx.recv_timeout(WAIT);
    });
    HeldRead { held, go }
}

impl HeldRead {
    /// Waits until the read is held, and checks it is not on `first`'s worker (where
    /// the racing socket must be accepted meanwhile).
    fn held_on_another_worker_than(&self, first: &FirstSession) {
        let worker = self.held.recv_timeout(WAIT).expect("the pump never read");
        assert_ne!(worker, first.worker, "held on the listener's worker: none accepts");
    }
}

/// Connections open on `m`'s workers.
fn active_connections(m: &Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.active_connections.load(Relaxed)).sum()
}

/// `m` dials a v1 peer driven by hand, whose acceptor has not read its connect yet.
/// Returns the dial's handle, the peer, its config, its address and its listener.
fn dial_a_v1_peer(
    m: &Messenger,
) -> (Connection, Peer, Arc<protocol::Config>, EntityAddr, TcpListener) {
    dial_a_peer(m, ProtocolVersion::V1)
}

/// As [`dial_a_v1_peer`], over `proto`.
fn dial_a_peer(
    m: &Messenger,
    proto: ProtocolVersion,
) -> (Connection, Peer, Arc<protocol::Config>, EntityAddr, TcpListener) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("peer listener");
    let p_addr = addr_for(proto, EntityAddr::legacy(listener.local_addr().expect("addr"), 1));
    let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::OSD, 1), p_addr));
    let conn = m.connect_to(EntityType::OSD, p_addr);
    let (s1, from) = listener.accept().expect("accept");
    let local = s1.local_addr().expect("local");
    let config = Arc::clone(&cfg);
    let acceptor = match proto {
        ProtocolVersion::V1 => protocol::Connection::accept_v1(config, from, local, Instant::now()),
        ProtocolVersion::V2 => protocol::Connection::accept_v2(config, from, local, Instant::now()),
    };
    let dial = addr_for(proto, m.my_addr()).addr.expect("messenger address");
    (conn, Peer { m: acceptor, sock: Some(s1), dial }, cfg, p_addr, listener)
}

/// Writes the peer's CLIENT_IDENT (cookie 0xC, `global_seq`) on `s2`, a msgr2 socket at
/// its ident, while the messenger holds the first session, its dial to the peer and
/// `s2`; returns once the accepting connection handed its socket over and ended.
fn send_the_racing_ident(
    m: &Messenger,
    s2: &mut TcpStream,
    m_addr: EntityAddr,
    p_addr: EntityAddr,
    global_seq: u64,
) {
    let active = || active_connections(m);
    assert_eq!(active(), 3, "the first session, the dial and the racing socket");
    s2.write_all(&ident_listing(m_addr, vec![p_addr], 0xC, global_seq)).expect("ident");
    wait_until(
        || active() == 2,
        || format!("the racing ident was not handed over: {}", m.dump_connections()),
    );
}

/// An OSD's v1 connect with no authorizer.
fn osd_connect(global_seq: u32, connect_seq: u32) -> ConnectMsg {
    ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::OSD,
        global_seq,
        connect_seq,
        protocol_version: proto_version(EntityType::OSD, EntityType::OSD, true),
        authorizer_protocol: 0,
        authorizer_len: 0,
        flags: 0,
    }
}

/// The messenger's answer to a v1 connect on `sock`, read within `wait`: its tag (`None`
/// if the socket closed first). On SEQ the acceptor's in_seq is read and the connector's
/// (0: this session received nothing) sent, so the session opens on `sock`.
fn read_v1_answer(sock: &mut TcpStream, wait: Duration) -> Option<(V1Tag, u64)> {
    sock.set_read_timeout(Some(wait)).expect("timeout");
    let mut head = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut head).ok()?;
    let (reply, _) = ConnectReply::decode(&head).ok()?;
    let mut auth = vec![0u8; (reply.authorizer_len as usize).min(MAX_AUTHORIZER_LEN)];
    sock.read_exact(&mut auth).ok()?;
    let mut in_seq = [0u8; 8];
    if reply.tag == V1Tag::SEQ {
        sock.read_exact(&mut in_seq).ok()?;
        sock.write_all(&0u64.to_le_bytes()).ok()?;
    }
    Some((reply.tag, u64::from_le_bytes(in_seq)))
}

// The msgr v1 counterpart of the test above. The messenger dials the peer; the peer's
// acceptor holds the messenger's connect unanswered while the peer dials the messenger
// (banners and addresses exchanged, its connect not sent). The dial's pump is then held
// after it loaded the replace mark, before its read, while the peer answers the
// messenger's connect READY (as a peer that knows us by another address, or after a
// reset, answers it) and sends; the peer's racing connect (connect_seq 0, sent before
// that answer) is decided on the listener's worker against a session still connecting
// at connect_seq 0: a race the peer wins (its address sorts lower), a replace keeping
// the session. The held pump then reads on: the session opens at connect_seq 1 and the
// messages are delivered under the decision. Every message must reach the messenger's
// handle once, whatever becomes of the racing connect.
#[test]
fn a_replace_decided_while_the_existing_session_opens_in_one_pump_delivers_nothing_twice_over_msgr1(
) {
    let config = test_config(2);
    let (m, rx, _, first) = server_beside_a_first_session(config, ProtocolVersion::V1);

    // The messenger dials the peer over v1; the peer's acceptor reads its connect and
    // leaves it unanswered.
    let (conn, mut peer, cfg, p_addr, _listener) = dial_a_v1_peer(&m);
    let deadline = Instant::now() + WAIT;
    while !peer.step().iter().any(|e| matches!(e, Event::AcceptRequest(_))) {
        assert!(Instant::now() < deadline, "the messenger's connect never came");
    }
    // The peer dials the messenger, up to its connect (not sent).
    let mut s2 = banner_socket_as(peer.dial, p_addr);
    // From the peer's one global_seq counter, before its acceptor answers (as the
    // connect it sent before that answer).
    let gs = cfg.global_seq.next().to_v1();

    // The dial's pump held right before it reads (after it loaded the replace mark),
    // while the peer answers the messenger's connect READY and sends: what the held
    // pump reads opens the session and delivers them.
    let pump = hold_the_next_read(&conn);
    const N: u64 = 20;
    // READY (no in_seq exchange): a peer's answer after a reset of its own; the session
    // opens on the reply and the messages behind it are read in the same pump.
    let ready = Decision::Replace { reset_existing: false, peer_restarted: true };
    peer.answer_then_send(ready, N);
    pump.held_on_another_worker_than(&first);

    // The racing connect, decided on the listener's worker against a session still
    // connecting: the accepting connection hands its socket over and ends.
    let active = || active_connections(&m);
    assert_eq!(active(), 3, "the first session, the dial and the racing socket");
    s2.write_all(&osd_connect(gs, 0).to_bytes()).expect("connect");
    wait_until(
        || active() == 2,
        || format!("the racing connect was not handed over: {}", m.dump_connections()),
    );
    // The held pump reads on: our connect opens, the messages are delivered.
    pump.go.send(()).expect("the pump waits");

    // The hand-off: the incoming socket is answered (the session opens on it), or closed.
    let answer = |s2: &mut TcpStream| {
        let answer = read_v1_answer(s2, WAIT);
        (matches!(answer, Some((V1Tag::SEQ | V1Tag::READY, _))), format!("{answer:?}"))
    };
    each_message_once_after(
        &rx,
        &conn,
        Some(&first.server_side),
        &mut peer,
        &mut s2,
        N,
        WAIT,
        answer,
    );
    drop(s2);
    first.client.shutdown();
    m.shutdown();
}

// A replace voided by a fault: the peer reconnects (its old socket closed, a connect with
// the next connect_seq on a new one) while the session's pump, holding a message to
// send, is held after it loaded the replace mark, before its read; the reconnect is
// decided on the other worker (a replace keeping the session). The held pump then reads
// the old socket's end: the session faults and redials at once (connect_seq moved on),
// and the hand-off finds the decision void. The redial the fault asked for was dropped
// with the events the hand-off discards as the replaced socket's: the session waited,
// dialling nobody, for its handshake deadline. After the void it must carry on: it
// dials the peer again, or the incoming socket is answered.
#[test]
fn a_replace_voided_by_a_fault_of_the_held_pump_still_redials() {
    let config = MessengerConfig {
        // The session opened below is past its initial backoff (its fault redials at
        // once), and its handshake deadline far beyond what the test waits.
        initial_backoff: Duration::from_millis(10),
        connection_ready_timeout: PATIENCE,
        ..test_config(2)
    };
    let (m, rx, _, first) = server_beside_a_first_session(config, ProtocolVersion::V1);

    // The messenger dials the peer over v1 and the session opens.
    let (conn, mut peer, cfg, p_addr, listener) = dial_a_v1_peer(&m);
    peer.open_lossless();
    assert!(wait_for_event(&rx, |s| matches!(s, Seen::Connect(c) if *c == conn)), "not open");
    // A time that must pass, not a wait for an event: within its initial backoff of the
    // open, the session's fault would redial later, from a timer, not from the event the
    // hand-off dropped.
    std::thread::sleep(Duration::from_millis(50));
    let mut s2 = banner_socket_as(peer.dial, p_addr);

    // The session sends a message the peer never acknowledges (it reads no more).
    conn.send_message(test_message(MSG_TEST, 7, Bytes::from_static(&[5; 32]))).expect("queued");
    let s1 = peer.sock.take().expect("the peer's socket");
    s1.set_read_timeout(Some(WAIT)).expect("timeout");
    assert!(tests::peek_some(&s1, &mut [0u8; 1]).is_ok_and(|n| n > 0), "the message never came");

    // The peer reconnects: its old socket closed (the session's pump, woken by its end,
    // held right before it reads), its connect on the new one (the next connect_seq, a
    // newer global_seq), decided on the listener's worker.
    let pump = hold_the_next_read(&conn);
    s1.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(s1);
    pump.held_on_another_worker_than(&first);
    let active = || active_connections(&m);
    assert_eq!(active(), 3, "the first session, ours and the peer's new socket");
    s2.write_all(&osd_connect(cfg.global_seq.next().to_v1(), 2).to_bytes()).expect("connect");
    wait_until(
        || active() == 2,
        || format!("the reconnect was not handed over: {}", m.dump_connections()),
    );
    // The held pump reads the old socket's end: the session faults.
    pump.go.send(()).expect("the pump waits");

    // The session carries on: the new socket is answered, or the session dials the peer.
    let (dialled_tx, dialled) = crossbeam_channel::bounded(1);
    let peer_listens = std::thread::spawn(move || {
        let _ = dialled_tx.send(listener.accept().map(drop));
    });
    let within = Duration::from_secs(5);
    s2.set_read_timeout(Some(within)).expect("timeout");
    let carried_on = match tests::peek_some(&s2, &mut [0u8; 1]) {
        Ok(n) if n > 0 => true,
        // Still open, unanswered: only a dial meanwhile will do.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            dialled.try_recv().is_ok()
        }
        // Closed unanswered (the decision void): the session must dial.
        _ => dialled.recv_timeout(within).is_ok(),
    };
    assert!(
        carried_on,
        "the session neither answered the peer's reconnect nor dialled it within {within:?}: {}",
        m.dump_connections()
    );
    drop(s2);
    first.client.shutdown();
    m.shutdown();
    // Unblocks the peer's accept if nothing dialled it.
    let _ = TcpStream::connect(p_addr.addr.expect("peer address"));
    peer_listens.join().expect("the peer's listener");
}

/// Runs the peer's msgr2 acceptor `m` on `sock` (the messenger's dial) until it answers
/// the messenger's AUTH_REQUEST: what it sent before is written, its AUTH_DONE and what
/// follows (its AUTH_SIGNATURE) are returned unwritten. The messenger's connect then
/// waits for them, its CLIENT_IDENT (and client cookie) not drawn yet.
fn accept_up_to_auth_done(m: &mut protocol::Connection, sock: &mut TcpStream) -> Vec<u8> {
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let (mut relay, mut buf) = (V2Relay::default(), vec![0u8; 4096]);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the messenger's AUTH_REQUEST never came");
        if relay.write_until(m, sock, |tag| tag == V2Tag::AUTH_DONE) {
            return relay.into_pending();
        }
        let n = tests::read_some(sock, &mut buf).expect("read");
        assert!(n > 0, "the messenger closed its dial during the handshake");
        m.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
        while let Some(ev) = m.poll_event() {
            if let Event::NeedBudget { .. } = ev {
                m.grant_budget(Instant::now());
            }
        }
    }
}

// A race's replace decided against a connecting msgr2 session that had not sent its
// CLIENT_IDENT yet (no client cookie, no server cookie), whose held pump then reads the
// peer's AUTH_DONE and draws its client cookie for the ident before the hand-off comes.
// Against the new cookie the decision is the same (with no server cookie the race
// decides it either way), and the adoption takes the session as it is then: the hand-off
// carries it out. It was voided (any change of the numbers did): the racing socket
// dropped unanswered, and the peer paid one more reconnect for nothing (a third of the
// voids `connect_race_rounds` showed).
#[test]
fn a_replace_decided_before_the_existing_session_drew_its_client_cookie_is_carried_out() {
    let config = test_config(2);
    let (m, _rx, m_addr, first) = server_beside_a_first_session(config, ProtocolVersion::V2);

    // The messenger dials the peer, whose acceptor holds back its AUTH_DONE.
    let (conn, mut peer, cfg, p_addr, _listener) = dial_a_peer(&m, ProtocolVersion::V2);
    let mut s1 = peer.sock.take().expect("the peer's socket");
    let auth_done = accept_up_to_auth_done(&mut peer.m, &mut s1);
    // The peer dials the messenger, up to its ident (accepted on the listener's worker).
    let mut s2 =
        v2_socket_at_ident_with(Arc::clone(&cfg), m_addr, EntityType::OSD, Policy::lossless_peer());
    let gs = cfg.global_seq.next().0;

    // The dial's pump held right before it reads (after it loaded the replace mark), the
    // AUTH_DONE waiting on its socket.
    let pump = hold_the_next_read(&conn);
    s1.write_all(&auth_done).expect("AUTH_DONE");
    pump.held_on_another_worker_than(&first);

    // The racing ident, decided on the listener's worker against a session connecting
    // with no cookies (a race the peer wins: its nonce sorts lower): the accepting
    // connection hands its socket over and ends.
    send_the_racing_ident(&m, &mut s2, m_addr, p_addr, gs);
    // The held pump reads on: the AUTH_DONE, its client cookie drawn for its ident; then
    // the hand-off.
    pump.go.send(()).expect("the pump waits");

    s2.set_read_timeout(Some(WAIT)).expect("timeout");
    let answer = read_frame(&mut s2).map(|(t, _)| t);
    assert_eq!(
        answer,
        Some(V2Tag::SERVER_IDENT),
        "the replace was voided by the client cookie the session drew after it was decided \
         (None: the racing socket closed unanswered): {}",
        m.dump_connections()
    );
    drop(s2);
    drop(s1);
    first.client.shutdown();
    m.shutdown();
}

// A session frozen for a replace writes nothing until the hand-off, as Ceph's
// `reuse_connection` stops the existing connection's writes (`can_write = false`) in
// the decision's critical section. The messenger's open v1 session is being replaced by
// the peer's reconnect (the hand-off held); meanwhile the peer's old socket is reset and
// a message is sent on the session. Written, it faulted the frozen session (the write
// failed), which voided the decision at the hand-off: the peer's reconnect was closed
// unanswered and the peer had to connect once more. Unwritten, the message goes out on
// the adopted socket, and the reconnect is answered.
#[test]
fn a_frozen_session_writes_nothing_so_a_dead_socket_does_not_void_its_replace() {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(2) };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (m, _, rx) =
        server_on(EntityType::OSD, 10, Policy::lossless_peer(), false, loopback, config);

    // The messenger dials the peer over v1 and the session opens.
    let (conn, mut peer, cfg, p_addr, _listener) = dial_a_v1_peer(&m);
    peer.open_lossless();
    assert!(wait_for_event(&rx, |s| matches!(s, Seen::Connect(c) if *c == conn)), "not open");

    // The peer reconnects (the next connect_seq, a newer global_seq): decided, a replace
    // keeping the session, and the hand-off held at the session.
    let mut s2 = banner_socket_as(peer.dial, p_addr);
    let before = held(&m);
    s2.write_all(&osd_connect(cfg.global_seq.next().to_v1(), 2).to_bytes()).expect("connect");
    wait_until(
        || held(&m) >= before + 2,
        || format!("the reconnect was never decided and handed off: {}", m.dump_connections()),
    );

    // Frozen: the peer's old socket is reset, and the session has a message to send.
    let s1 = peer.sock.take().expect("the peer's socket");
    socket2::SockRef::from(&s1).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(s1);
    conn.send_message(test_message(MSG_TEST, 7, Bytes::from_static(&[5; 32]))).expect("queued");

    // The hand-off (after its hold) answers the reconnect.
    let answer = read_v1_answer(&mut s2, WAIT);
    assert!(
        matches!(answer, Some((V1Tag::SEQ | V1Tag::READY, _))),
        "the reconnect was not answered ({answer:?}): a write of the frozen session \
         faulted it and voided the replace: {}",
        m.dump_connections()
    );
    drop(s2);
    m.shutdown();
}

/// `conn`'s worker held at the end of the first pump that leaves its session connecting
/// (its redial in flight), until `go`.
struct HeldRedial {
    held: Receiver<std::thread::ThreadId>,
    go: crossbeam_channel::Sender<()>,
}

fn hold_the_redial(conn: &Connection) -> HeldRedial {
    let (held_tx, held) = crossbeam_channel::bounded(1);
    let (go, go_rx) = crossbeam_channel::bounded::<()>(1);
    hold_once_connecting(conn, held_tx, go_rx);
    HeldRedial { held, go }
}

/// Installs the hook of [`hold_the_redial`] again at every pump until one ends with the
/// session connecting.
fn hold_once_connecting(
    conn: &Connection,
    held: crossbeam_channel::Sender<std::thread::ThreadId>,
    go: Receiver<()>,
) {
    let again = conn.clone();
    conn.inject_before_settle(move || {
        if again.state() == ConnState::Connecting {
            let _ = held.send(std::thread::current().id());
            let _ = go.recv_timeout(WAIT);
        } else {
            hold_once_connecting(&again, held, go);
        }
    });
}

// A session frozen for a replace takes no dial result until the freeze ends, as Ceph's
// existing connection in state NONE after `reuse_connection` ignores its connect's. The
// messenger's open msgr2 session faults (the peer's socket closed, a message
// unacknowledged) and redials the peer at once; its worker is held right after the dial
// went out while the peer's reconnect is decided on the listener's worker (a reconnect
// race the peer wins: a replace keeping the session) and the hand-off is held at the
// session. The dial then settles while the session is frozen: refused (the peer's
// listener gone), it faulted the session, whose connect_seq moved on (a msgr2 session
// counts its attempts), and the hand-off voided the decision: the reconnect was closed
// unanswered and the peer had to connect once more. Accepted, it moves nothing; either
// way the hand-off must answer the reconnect (the dial dropped with the old socket).
#[test]
fn a_dial_settling_while_its_session_is_frozen_does_not_void_the_replace() {
    for refused in [true, false] {
        let config = MessengerConfig {
            inject_internal_delays: HOLD,
            // The session opened below is past its initial backoff (its fault redials
            // at once), and its handshake deadline far beyond what the test waits.
            initial_backoff: Duration::from_millis(10),
            connection_ready_timeout: PATIENCE,
            ..test_config(2)
        };
        let (m, rx, _, first) = server_beside_a_first_session(config, ProtocolVersion::V2);

        // The messenger dials the peer over msgr2 and the session opens.
        let (conn, mut peer, _cfg, _p_addr, listener) = dial_a_peer(&m, ProtocolVersion::V2);
        peer.open_lossless();
        assert!(wait_for_event(&rx, |s| matches!(s, Seen::Connect(c) if *c == conn)), "not open");
        // A time that must pass, not a wait for an event: within its initial backoff of
        // the open, the session's fault would redial later, from a timer.
        std::thread::sleep(Duration::from_millis(50));

        // The session sends a message the peer never acknowledges (it reads no more):
        // faulted, it redials rather than waiting in standby.
        conn.send_message(test_message(MSG_TEST, 7, Bytes::from_static(&[5; 32]))).expect("queued");
        let s1 = peer.sock.take().expect("the peer's socket");
        s1.set_read_timeout(Some(WAIT)).expect("timeout");
        assert!(
            tests::peek_some(&s1, &mut [0u8; 1]).is_ok_and(|n| n > 0),
            "the message never came"
        );

        // The peer's old socket closes: the session faults and redials, to no listener
        // (refused) or to one that never accepts (the kernel completes the connect), and
        // its worker is held before it learns how the dial went.
        let kept = (!refused).then_some(listener);
        let pump = hold_the_redial(&conn);
        s1.shutdown(std::net::Shutdown::Both).expect("shutdown");
        drop(s1);
        let worker = pump.held.recv_timeout(WAIT).expect("the session never redialled");
        assert_ne!(worker, first.worker, "held on the listener's worker: none accepts");

        // The peer reconnects (its RECONNECT at the connect_seq its own fault counted,
        // the session's too): decided on the listener's worker after its hold, a race
        // the peer wins (its nonce sorts lower), the accepting connection handing its
        // socket over.
        let before = held(&m);
        // (With a message to send: with none it would wait in standby.)
        peer.m.send_message(test_message(MSG_TEST, 1, Bytes::from_static(&[5; 32])));
        peer.m.handle_transport_closed(Instant::now());
        let deadline = Instant::now() + WAIT;
        while held(&m) == before || active_connections(&m) != 2 {
            assert!(
                Instant::now() < deadline,
                "no reconnect handed over: {}",
                m.dump_connections()
            );
            let events = peer.step();
            assert!(events.is_empty() || refused, "the peer's reconnect ended: {events:?}");
        }
        let reconnect = peer.sock.as_ref().and_then(|s| s.local_addr().ok());
        assert!(reconnect.is_some(), "the peer's reconnect closed before the hand-off");
        // The session's worker goes on: the dial's result comes while the hand-off is
        // held at the session.
        pump.go.send(()).expect("the pump waits");

        // The hand-off answers the reconnect on the socket the decision was taken on.
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the session never reopened");
            let events = peer.step();
            let now = peer.sock.as_ref().and_then(|s| s.local_addr().ok());
            assert_eq!(
                now,
                reconnect,
                "refused {refused}: the peer's reconnect was closed unanswered ({events:?}): \
                 the dial's result faulted the frozen session and voided the replace: {}",
                m.dump_connections()
            );
            if events.iter().any(|e| matches!(e, Event::Opened(_))) {
                break;
            }
        }
        drop(kept);
        first.client.shutdown();
        m.shutdown();
    }
}
