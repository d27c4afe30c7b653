//! A hostile server against our client: sockets our messenger dials, answered by a
//! test acceptor that misbehaves. Whatever it does, a client of ours must not redial in
//! a busy loop (the dials in a bounded window are counted against a bound), and what a
//! lossless connection queued reaches a good server once one answers, in order, once.

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{MessengerConfig, Policy};
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType};
use protocol::{AuthVerdict, Decision, Event};
use tests::loopback::*;

/// How long dials are counted.
const WINDOW: Duration = Duration::from_secs(2);

/// The client's backoff in these tests: 100 ms doubling to 800 ms, so a client that
/// backs off dials about 6 times in [`WINDOW`] after failed connects (100 + 200 + 400 +
/// 800 + 800 ms), about 20 times if each session opens and is cut at once (the initial
/// backoff each time), and a busy loop thousands of times.
fn backoff_config() -> MessengerConfig {
    MessengerConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(800),
        ..test_config(2)
    }
}

/// The most dials (or handshakes) allowed in [`WINDOW`] with [`backoff_config`]: 1.5
/// times what the initial backoff allows, far below a busy loop.
const MAX_DIALS: usize = 30;

/// What a [`HostileServer`] does with each socket it accepts.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Close it at once, before any byte.
    CloseAtOnce,
    /// Run the acceptor's handshake, opening every session (`Decision::Open`), and close
    /// the socket as soon as the session opened.
    OpenThenCut,
    /// Answer every connect with this decision (WAIT, RETRY_*, RESET) and keep
    /// answering; the socket is closed only when the client gives up on it.
    AnswerForever(Decision),
    /// Accept and say nothing, keeping the socket until the client closes it.
    Silent,
    /// Write these bytes (a bad banner), then as [`Behaviour::Silent`].
    Send(fn() -> Vec<u8>),
    /// Write the v1 acceptor banner, then message frames without end (no connect reply
    /// ever): a server flooding a client that has not finished connecting. Each
    /// socket's bytes written are reported on [`HostileServer::flooded`].
    Flood,
}

/// A listener on 127.0.0.1 that serves every socket with a [`Behaviour`] and reports each
/// accepted socket (and each connect request) on channels.
struct HostileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// One per socket accepted.
    dials: Receiver<Instant>,
    /// One per connect request (v1 CONNECT, msgr2 CLIENT_IDENT / SESSION_RECONNECT).
    connects: Receiver<Instant>,
    /// [`Behaviour::Flood`]: the bytes each socket took before the client closed it.
    flooded: Receiver<u64>,
}

impl HostileServer {
    fn start(behaviour: Behaviour, ty: AddrType, nonce: u32) -> HostileServer {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let (dial_tx, dials) = crossbeam_channel::unbounded();
        let (connect_tx, connects) = crossbeam_channel::unbounded();
        let (flood_tx, flooded) = crossbeam_channel::unbounded();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut serving = Vec::new();
                for sock in listener.incoming() {
                    if stop.load(Relaxed) {
                        break;
                    }
                    let Ok(sock) = sock else { continue };
                    let _ = dial_tx.send(Instant::now());
                    let (stop, connect_tx) = (stop.clone(), connect_tx.clone());
                    let flood_tx = flood_tx.clone();
                    serving.push(std::thread::spawn(move || {
                        if matches!(behaviour, Behaviour::Flood) {
                            let _ = flood_tx.send(flood(sock, addr, nonce, &stop));
                            return;
                        }
                        serve(sock, addr, ty, nonce, behaviour, &stop, &connect_tx)
                    }));
                }
                for t in serving {
                    let _ = t.join();
                }
            })
        };
        HostileServer { addr, stop, thread: Some(thread), dials, connects, flooded }
    }

    /// The address a client dials over `ty` (v1: LEGACY, msgr2: MSGR2), with `nonce`.
    fn entity_addr(&self, ty: AddrType, nonce: u32) -> EntityAddr {
        EntityAddr { ty, ..EntityAddr::legacy(self.addr, nonce) }
    }

    fn stop(mut self) {
        self.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().expect("hostile server thread");
        }
    }
}

/// Counts what `rx` reports within [`WINDOW`] of the first report (which must come
/// within [`WAIT`]).
fn count_in_window(rx: &Receiver<Instant>, what: &str) -> usize {
    let first = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no {what} at all"));
    let mut n = 1;
    while rx.recv_deadline(first + WINDOW).is_ok() {
        n += 1;
    }
    n
}

/// Serves one accepted socket with `behaviour`, as the acceptor at `addr` with `nonce`
/// (for a v1 connector if `ty` is LEGACY).
fn serve(
    mut sock: TcpStream,
    addr: SocketAddr,
    ty: AddrType,
    nonce: u32,
    behaviour: Behaviour,
    stop: &AtomicBool,
    connects: &Sender<Instant>,
) {
    if let Behaviour::Send(bytes) = behaviour {
        if sock.write_all(&bytes()).is_err() {
            return;
        }
    }
    let decision = match behaviour {
        Behaviour::CloseAtOnce | Behaviour::Flood => return,
        Behaviour::Silent | Behaviour::Send(_) => {
            let mut buf = [0u8; 4096];
            let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
            while !stop.load(Relaxed) {
                match tests::read_some(&mut sock, &mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
            return;
        }
        Behaviour::OpenThenCut => Decision::Open,
        Behaviour::AnswerForever(d) => d,
    };
    let v1 = EntityAddr::legacy(addr, nonce);
    let v2 = EntityAddr { ty: AddrType::MSGR2, ..v1 };
    let cfg = protocol::Config::new(
        EntityName::new(EntityType::OSD, 0),
        EntityAddrVec { addrs: vec![v2, v1] },
    );
    let now = Instant::now();
    let (peer, local) = (sock.peer_addr().expect("peer"), sock.local_addr().expect("local"));
    // (A v1 connector waits for the acceptor's banner: a v1 listener's.)
    let mut c = if ty == AddrType::LEGACY {
        protocol::Connection::accept_v1(Arc::new(cfg), peer, local, now)
    } else {
        protocol::Connection::accept(Arc::new(cfg), peer, local, now)
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    let policy = Policy::lossless_peer();
    while !stop.load(Relaxed) {
        let mut out = Vec::new();
        while c.poll_transmit(&mut out) > 0 {}
        for s in &out {
            if sock.write_all(s).is_err() {
                return;
            }
        }
        let now = Instant::now();
        let mut opened = false;
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::NeedBudget { .. } => c.grant_budget(now),
                Event::VerifyAuthorizer { .. } => {
                    c.handle_authorizer_verdict(now, AuthVerdict::Accept { reply: Bytes::new() })
                }
                Event::AcceptRequest(_) => {
                    let _ = connects.send(now);
                    c.handle_accept_decision(now, policy, decision, None);
                }
                Event::Opened(_) => opened = true,
                Event::Closed { .. } => return,
                _ => {}
            }
        }
        if opened {
            // Whatever the open queued goes out, then the cut.
            let mut out = Vec::new();
            while c.poll_transmit(&mut out) > 0 {}
            for s in &out {
                let _ = sock.write_all(s);
            }
            if matches!(behaviour, Behaviour::OpenThenCut) {
                return;
            }
        }
        if c.wants_write() {
            continue;
        }
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
        match tests::read_some(&mut sock, &mut buf) {
            Ok(0) => return,
            Ok(n) => c.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// [`Behaviour::Flood`] on one socket: the v1 acceptor banner, then 1 KiB message frames
/// until the client closes the socket (or the server stops); returns the bytes written.
fn flood(mut sock: TcpStream, addr: SocketAddr, nonce: u32, stop: &AtomicBool) -> u64 {
    let peer = sock.peer_addr().expect("peer");
    let banner = protocol::wire::AcceptorBanner {
        my_addr: EntityAddr::legacy(addr, nonce),
        peer_addr: EntityAddr::legacy(peer, 0),
    };
    let _ = sock.set_write_timeout(Some(Duration::from_millis(100)));
    let mut written = 0u64;
    if sock.write_all(&banner.to_bytes()).is_err() {
        return written;
    }
    let format =
        protocol::wire::FooterFormat::for_features(protocol::types::Features::PACIFIC_ADVERTISED);
    let mut burst = Vec::new();
    for seq in 1..=64u64 {
        burst.extend(tests::hostile::msg_frame(seq, seq, &[0x55; 1024], format));
    }
    while !stop.load(Relaxed) {
        match sock.write(&burst) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    written
}

/// A lossless client of ours dials a [`HostileServer`] behaving as `behaviour` over
/// `ty`'s protocol with one message queued; returns the number of sockets it opened and
/// of connect requests it made in [`WINDOW`].
fn dials_against(behaviour: Behaviour, ty: AddrType, config: MessengerConfig) -> (usize, usize) {
    dials_against_as(behaviour, ty, config, 7, EntityType::OSD)
}

/// [`dials_against`] a server announcing itself with nonce `nonce` (the client dials
/// nonce 7), the client expecting a peer of type `peer_type` (the server is an OSD).
fn dials_against_as(
    behaviour: Behaviour,
    ty: AddrType,
    config: MessengerConfig,
    nonce: u32,
    peer_type: EntityType,
) -> (usize, usize) {
    let srv = HostileServer::start(behaviour, ty, nonce);
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(peer_type, srv.entity_addr(ty, 7));
    conn.send_message(test_message(0x7f41, 1, Bytes::new())).expect("queued");
    let dials = count_in_window(&srv.dials, "dial");
    let connects = srv.connects.try_iter().count();
    eprintln!("{behaviour:?} over {ty:?}: {dials} dials, {connects} connects in {WINDOW:?}");
    client.shutdown();
    srv.stop();
    (dials, connects)
}

fn assert_backs_off(behaviour: Behaviour, ty: AddrType) {
    let (dials, connects) = dials_against(behaviour, ty, backoff_config());
    assert!(dials <= MAX_DIALS, "{behaviour:?} over {ty:?}: {dials} dials in {WINDOW:?}");
    if !matches!(behaviour, Behaviour::CloseAtOnce | Behaviour::Silent) {
        assert!(connects > 0, "{behaviour:?} over {ty:?}: the handshake never got to a connect");
    }
    // (A connector may retry a few times on one socket: bounded per socket.)
    assert!(
        connects <= MAX_DIALS * 8,
        "{behaviour:?} over {ty:?}: {connects} connects in {WINDOW:?}"
    );
}

// A server that accepts and closes at once, before any byte: a failed connect attempt,
// redialled after a growing backoff.
#[test]
fn v1_server_closing_every_socket_at_once_is_redialled_with_backoff() {
    assert_backs_off(Behaviour::CloseAtOnce, AddrType::LEGACY);
}

#[test]
fn v2_server_closing_every_socket_at_once_is_redialled_with_backoff() {
    assert_backs_off(Behaviour::CloseAtOnce, AddrType::MSGR2);
}

// A server that completes every handshake (the session opens) and cuts the socket at
// once. An open session's fault redials at once (Ceph's), and opening reset the backoff:
// without a backoff for a session cut straight after it opened, the client redials as
// fast as the handshake goes, thousands of times a second, pinning a worker.
#[test]
fn v1_server_cutting_every_session_as_it_opens_is_redialled_with_backoff() {
    assert_backs_off(Behaviour::OpenThenCut, AddrType::LEGACY);
}

#[test]
fn v2_server_cutting_every_session_as_it_opens_is_redialled_with_backoff() {
    assert_backs_off(Behaviour::OpenThenCut, AddrType::MSGR2);
}

// msgr2 WAIT to every ident: the client waits its max backoff between dials.
#[test]
fn v2_server_answering_wait_forever_is_redialled_with_backoff() {
    assert_backs_off(Behaviour::AnswerForever(Decision::Wait), AddrType::MSGR2);
}

// v1 RETRY_GLOBAL / RETRY_SESSION forever: a bounded number of rounds on one socket, then
// a fault and a backoff.
#[test]
fn v1_server_answering_retry_global_forever_is_redialled_with_backoff() {
    let d = Decision::RetryGlobal(protocol::session::GlobalSeq(1000));
    assert_backs_off(Behaviour::AnswerForever(d), AddrType::LEGACY);
}

#[test]
fn v1_server_answering_retry_session_forever_is_redialled_with_backoff() {
    let d = Decision::RetrySession(protocol::session::ConnectSeq(5));
    assert_backs_off(Behaviour::AnswerForever(d), AddrType::LEGACY);
}

// msgr2 SESSION_RESET to every ident: our connector faults on a reset that does not
// answer a reconnect, and backs off.
#[test]
fn v2_server_answering_session_reset_forever_is_redialled_with_backoff() {
    for full in [true, false] {
        let d = Decision::ResetSession { full };
        assert_backs_off(Behaviour::AnswerForever(d), AddrType::MSGR2);
    }
}

#[test]
fn v1_server_answering_reset_session_forever_is_redialled_with_backoff() {
    assert_backs_off(
        Behaviour::AnswerForever(Decision::ResetSession { full: true }),
        AddrType::LEGACY,
    );
}

// A server that accepts and never answers: the handshake timeout ends each attempt,
// then the backoff.
#[test]
fn silent_server_is_redialled_after_the_handshake_timeout_and_backoff() {
    for ty in [AddrType::LEGACY, AddrType::MSGR2] {
        let config = MessengerConfig {
            connection_ready_timeout: Duration::from_millis(100),
            ..backoff_config()
        };
        let (dials, _) = dials_against(Behaviour::Silent, ty, config);
        assert!((2..=MAX_DIALS).contains(&dials), "silent server over {ty:?}: {dials} dials");
    }
}

/// Receives messages tids `1..=n` on `rx`, in order, each once; other events are skipped.
fn receive_all_in_order(rx: &Receiver<Seen>, n: u64) {
    let mut expect = 1;
    while expect <= n {
        match rx.recv_timeout(WAIT) {
            Ok(Seen::Message(_, m)) => {
                assert_eq!(m.tid(), expect, "lost, duplicated or reordered");
                expect += 1;
            }
            Ok(_) => {}
            Err(e) => panic!("stalled at {expect} of {n}: {e}"),
        }
    }
    if let Ok(Seen::Message(_, m)) = rx.recv_timeout(Duration::from_millis(200)) {
        panic!("message {} after the last", m.tid());
    }
}

// Messages a lossless client queued while a hostile server answered its dials reach the
// good server that takes its address afterwards: each once, in order.
#[test]
fn messages_queued_against_a_hostile_server_reach_a_good_one_in_order() {
    const N: u64 = 50;
    for (behaviour, ty) in [
        (Behaviour::CloseAtOnce, AddrType::LEGACY),
        (Behaviour::CloseAtOnce, AddrType::MSGR2),
        (Behaviour::Silent, AddrType::MSGR2),
        (Behaviour::AnswerForever(Decision::Wait), AddrType::MSGR2),
        (
            Behaviour::AnswerForever(Decision::RetryGlobal(protocol::session::GlobalSeq(1000))),
            AddrType::LEGACY,
        ),
    ] {
        let srv = HostileServer::start(behaviour, ty, 7);
        let at = srv.addr;
        let config = MessengerConfig {
            connection_ready_timeout: Duration::from_millis(100),
            ..backoff_config()
        };
        let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
        let conn = client.connect_to(EntityType::OSD, srv.entity_addr(ty, 7));
        for tid in 1..=N {
            conn.send_message(test_message(0x7f41, tid, Bytes::from(vec![tid as u8; 64])))
                .expect("queued");
        }
        for _ in 0..2 {
            srv.dials.recv_timeout(WAIT).expect("a dial");
        }
        srv.stop();
        let (good, bound, rx) =
            server_on(EntityType::OSD, 7, Policy::stateful_server(), false, at, test_config(2));
        assert_eq!(bound, at);
        receive_all_in_order(&rx, N);
        eprintln!("{behaviour:?} over {ty:?}: all {N} delivered");
        client.shutdown();
        good.shutdown();
    }
}

// A session cut after it stayed open a while (a real network cut) is redialled at once,
// as Ceph's is: the backoff for sessions cut as they open does not slow it down. With a
// 1 s initial backoff, the message sent after the cut arrives well within it.
#[test]
fn a_session_open_a_while_redials_at_once_after_a_cut() {
    let backoff = Duration::from_secs(1);
    for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
        let (srv, addr, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
        let config = MessengerConfig {
            initial_backoff: backoff,
            max_backoff: backoff * 2,
            ..test_config(2)
        };
        let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
        let peer = addr_for(proto, EntityAddr::legacy(addr, 1));
        let conn = client.connect_to(EntityType::OSD, peer);
        conn.send_message(test_message(0x7f41, 1, Bytes::new())).expect("queued");
        receive_all_in_order(&srx, 1);
        // The session ages past the initial backoff (a wait for time to pass, not for an
        // event).
        std::thread::sleep(backoff + Duration::from_millis(200));
        let cut = Instant::now();
        // Message 2 is framed after the cut has landed: merely asked for, the cut could
        // land after message 2 went out on the old socket, and its quick arrival would
        // show nothing about the redial.
        cut_before_the_rest(&conn);
        conn.send_message(test_message(0x7f41, 2, Bytes::new())).expect("queued");
        loop {
            match srx.recv_timeout(WAIT) {
                Ok(Seen::Message(_, m)) => {
                    assert_eq!(m.tid(), 2);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{proto:?}: message 2 never came: {e}"),
            }
        }
        let took = cut.elapsed();
        eprintln!("{proto:?}: redialled and delivered {took:?} after the cut");
        assert!(took < backoff / 2, "{proto:?}: {took:?} after the cut: it waited a backoff");
        client.shutdown();
        srv.shutdown();
    }
}

// While a session cut as it opened waits out its backoff, its connection does not claim
// to be open (`is_connected`, and the state the accept decisions of a racing connection
// from the peer read).
#[test]
fn a_session_backing_off_after_a_cut_is_not_reported_open() {
    for ty in [AddrType::LEGACY, AddrType::MSGR2] {
        let srv = HostileServer::start(Behaviour::OpenThenCut, ty, 7);
        let config =
            MessengerConfig { initial_backoff: PATIENCE, max_backoff: PATIENCE, ..test_config(2) };
        let (client, crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
        let conn = client.connect_to(EntityType::OSD, srv.entity_addr(ty, 7));
        conn.send_message(test_message(0x7f41, 1, Bytes::new())).expect("queued");
        assert!(wait_for_event(&crx, |s| matches!(s, Seen::Connect(_))), "{ty:?}: never opened");
        wait_until(
            || conn.state() != messenger::ConnState::Open,
            || format!("{ty:?}: cut, backing off, and still {:?}", conn.state()),
        );
        assert_eq!(srv.dials.try_iter().count(), 1, "{ty:?}: one dial, then the backoff");
        client.shutdown();
        srv.stop();
    }
}

// Bad banners: garbage, and a msgr2 banner requiring every feature bit. Each dial fails
// its handshake and is redialled after the backoff.
#[test]
fn bad_banners_are_redialled_with_backoff() {
    fn garbage() -> Vec<u8> {
        vec![0xa5; 4096]
    }
    fn impossible_v2() -> Vec<u8> {
        use protocol::v2::banner::{Banner, Msgr2Features};
        Banner { supported: Msgr2Features(u64::MAX), required: Msgr2Features(u64::MAX) }
            .to_bytes()
            .to_vec()
    }
    for (bytes, ty) in [
        (garbage as fn() -> Vec<u8>, AddrType::LEGACY),
        (garbage, AddrType::MSGR2),
        (impossible_v2, AddrType::MSGR2),
        (impossible_v2, AddrType::LEGACY),
    ] {
        let (dials, _) = dials_against(Behaviour::Send(bytes), ty, backoff_config());
        assert!(dials <= MAX_DIALS, "{ty:?}: {dials} dials in {WINDOW:?}");
    }
}

// A v1 server that floods message frames before any connect reply: the client faults on
// the first byte that is not a reply and closes the socket, taking at most what the
// socket buffers hold, not the flood; and it backs off.
#[test]
fn a_v1_server_flooding_before_the_connect_reply_is_cut_off() {
    let srv = HostileServer::start(Behaviour::Flood, AddrType::LEGACY, 7);
    let (client, _crx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), backoff_config());
    let conn = client.connect_to(EntityType::OSD, srv.entity_addr(AddrType::LEGACY, 7));
    conn.send_message(test_message(0x7f41, 1, Bytes::new())).expect("queued");
    let dials = count_in_window(&srv.dials, "dial");
    // Every socket but the last one has ended (the client closed it): what each took.
    let most = (1..dials)
        .map(|_| srv.flooded.recv_timeout(WAIT).expect("a flooded socket the client kept"))
        .max()
        .unwrap_or(0);
    eprintln!("flood: {dials} dials in {WINDOW:?}, at most {most} bytes taken by one socket");
    client.shutdown();
    srv.stop();
    assert!(dials <= MAX_DIALS, "{dials} dials in {WINDOW:?}");
    assert!(most < 32 << 20, "one socket took {most} bytes of the flood");
}

// A server announcing another address than the one dialled (v1's banner, msgr2's
// SERVER_IDENT): each attempt fails its handshake and is redialled after the backoff.
// Another entity type (msgr2's HELLO) ends the connection with a reset at the first
// attempt (Ceph's handle_hello; tests/tests/v2_fault_parity.rs): no dial loop either.
#[test]
fn a_server_naming_another_address_or_entity_is_redialled_with_backoff() {
    for ty in [AddrType::LEGACY, AddrType::MSGR2] {
        let (dials, _) =
            dials_against_as(Behaviour::OpenThenCut, ty, backoff_config(), 8, EntityType::OSD);
        assert!(dials <= MAX_DIALS, "another address over {ty:?}: {dials} dials in {WINDOW:?}");
    }
    let (dials, _) = dials_against_as(
        Behaviour::OpenThenCut,
        AddrType::MSGR2,
        backoff_config(),
        7,
        EntityType::MON,
    );
    assert!(dials <= MAX_DIALS, "another entity type: {dials} dials in {WINDOW:?}");
}
