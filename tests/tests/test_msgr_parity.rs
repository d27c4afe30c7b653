//! Ports of Ceph's messenger tests (src/test/msgr/test_msgr.cc) that no other file
//! covers, on our injection seams. Ceph's msgr2 race tests pause a connection at a
//! protocol step with its `Interceptor` breakpoints; we have no breakpoints, so one side
//! of each race is a raw msgr2 peer driven by hand (`tests::hostile_v2`), which stops
//! exactly where Ceph's breakpoint would, and the server's held steps come from
//! `inject_internal_delays` (`ms_inject_internal_delays`).
//!
//! Where the others are: SimpleTest / SimpleMsgr2Test (messenger_loopback.rs,
//! messenger_v2.rs), StatefulTest, StatelessTest, ClientStandbyTest, NameAddrTest
//! (reset_semantics.rs), ReconnectTest, ReconnectRaceTest (reconnect_races.rs),
//! ConnectionRaceTest in rounds (connect_race_rounds.rs; here once, with held decisions),
//! MessageTest (large_messages.rs),
//! Synthetic* (messenger_synthetic*.rs), MarkdownTest (markdown.rs).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{ConnState, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::v2::Tag as V2Tag;
use tests::hostile::RawPeer;
use tests::hostile_v2::*;
use tests::loopback::*;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The tag of the next frame on `sock` that is not a keepalive or an ack.
fn next_payload_frame(sock: &mut TcpStream) -> Option<V2Tag> {
    loop {
        let (tag, _) = read_frame(sock)?;
        if ![V2Tag::ACK, V2Tag::KEEPALIVE2, V2Tag::KEEPALIVE2_ACK].contains(&tag) {
            return Some(tag);
        }
    }
}

/// Whether the peer closed `sock` within `within` (EOF or reset; bytes read are skipped).
fn closed_within(sock: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left)).expect("timeout");
        match std::io::Read::read(sock, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// The events on `rx` within a short grace period, named.
fn drain_events(rx: &Receiver<Seen>, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(ev) = rx.recv_deadline(deadline) {
        seen.push(match ev {
            Seen::Message(_, m) => format!("message {}", m.tid()),
            Seen::Connect(_) => "connect".into(),
            Seen::Accept(_) => "accept".into(),
            Seen::Reset(_) => "reset".into(),
            Seen::RemoteReset(_) => "remote_reset".into(),
            Seen::Refused(_) => "refused".into(),
        });
    }
    seen
}

/// Ceph's ConnectionRaceReuseBannerTest. A (a real messenger, lossless_peer_reuse) and B
/// (a raw peer) connect to each other at once. A's connection to B stops in the banner
/// exchange (B's listener never answers: Ceph's breakpoints at A's
/// BANNER_EXCHANGE_BANNER_CONNECTING and B's accepting BANNER_EXCHANGE); B's connection
/// to A then runs its whole handshake (Ceph releases B's SEND_CLIENT_IDENTITY). B's
/// address sorts lower, so A's accept wins the race and A's own connection, still in the
/// banner exchange, takes over B's socket (Ceph's `reuse_connection`). The session opens
/// exactly once, on A's `connect_to` handle: both messages are delivered, A's
/// banner-stage socket is closed, no reset, and A never dials again.
fn reuse_banner(proto: ProtocolVersion) {
    let listener = TcpListener::bind(loopback()).expect("raw listener");
    let b_addr = addr_for(proto, EntityAddr::legacy(listener.local_addr().expect("addr"), 1));
    let config = MessengerConfig { initial_backoff: Duration::from_millis(50), ..test_config(2) };
    let (a, _bound, arx) =
        server_on(EntityType::OSD, 1000, Policy::lossless_peer_reuse(), false, loopback(), config);
    let a_addr = addr_for(proto, a.my_addr());

    // A -> B: dialled, stuck in the banner exchange (B's listener answers nothing).
    let c2s = a.connect_to(EntityType::CLIENT, b_addr);
    c2s.send_message(test_message(0x7f00, 2, Bytes::from_static(b"from A"))).expect("queued");
    let (mut a_dial, _) = listener.accept().expect("A dials B");

    // B -> A: the whole handshake, then a message each way.
    let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::CLIENT, -1), b_addr));
    let mut s2c = RawPeer::try_handshake_with(a_addr, Policy::lossless_peer_reuse(), cfg)
        .expect("B's connection wins the race: B's address sorts lower");
    let m1 = s2c.message(1, b"from B");
    s2c.sock.write_all(&m1).expect("B's message");
    let got = s2c.receive(1).expect("A's message, on B's socket");
    assert_eq!(got[0].tid(), 2);

    let (on, msg) = next_message(&arx);
    assert_eq!(msg.tid(), 1);
    assert_eq!(on, c2s, "B's message arrived on another connection than A's connect_to handle");
    assert_eq!(c2s.state(), ConnState::Open);
    assert!(closed_within(&mut a_dial, WAIT), "A's banner-stage socket was left open");
    let events = drain_events(&arx, Duration::from_millis(500));
    assert!(!events.iter().any(|e| e.contains("reset")), "the race reset a session: {events:?}");
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "A dialled B again: the session was not reused");
    a.shutdown();
}

#[test]
fn a_connection_in_the_banner_exchange_is_reused_by_the_winning_accept_over_msgr2() {
    reuse_banner(ProtocolVersion::V2);
}

#[test]
fn a_connection_in_the_banner_exchange_is_reused_by_the_winning_accept_over_msgr1() {
    reuse_banner(ProtocolVersion::V1);
}

/// Accept decisions and new sessions' replies `m` held back so far.
fn held(m: &Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.inject_internal_delays.load(Relaxed)).sum()
}

/// Ceph's MissingServerIdenTest: a stateful server has registered a client's new session
/// (CLIENT_IDENT decided) and holds its SERVER_IDENT (`ms_inject_internal_delays`, in
/// place of Ceph's breakpoint at SEND_SERVER_IDENTITY); meanwhile the server queues a
/// message on the accepted connection, and the socket fails before SERVER_IDENT goes
/// out. The client connects again with the same cookie: the session opens on the same
/// accepted connection, and the queued message is delivered on the new socket (a
/// lossless session loses nothing), with no reset.
#[test]
fn a_session_failed_before_its_server_ident_delivers_what_was_queued_after_the_reconnect() {
    let config =
        MessengerConfig { inject_internal_delays: Duration::from_millis(300), ..test_config(1) };
    let (srv, _bound, rx) =
        server_on(EntityType::OSD, 2, Policy::stateful_server(), false, loopback(), config);
    let server = addr_for(ProtocolVersion::V2, srv.my_addr());
    let me_listener = TcpListener::bind(loopback()).expect("raw client's address");
    let me = EntityAddr { addr: Some(me_listener.local_addr().expect("addr")), ..v2_peer_addr(1) };

    let mut first = v2_socket_at_ident(server, me, Policy::lossy_client());
    let before = held(&srv);
    first.write_all(&ident_listing(server, vec![me], 0xC, 50)).expect("ident");
    wait_until(|| held(&srv) >= before + 2, || "the new session's reply was never held".into());
    // The session is registered, its SERVER_IDENT not sent yet.
    let accepter = srv.connect_to(EntityType::CLIENT, me);
    accepter.send_message(test_message(0x7f00, 7, Bytes::from_static(b"m2"))).expect("queued");
    drop(first);

    let mut again = v2_socket_at_ident(server, me, Policy::lossy_client());
    again.write_all(&ident_listing(server, vec![me], 0xC, 51)).expect("ident again");
    let (tag, _) = read_frame(&mut again).expect("the server answers the second ident");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    assert_eq!(
        next_payload_frame(&mut again),
        Some(V2Tag::MESSAGE),
        "the message queued before the failure was not delivered after the reconnect"
    );
    let events = drain_events(&rx, Duration::from_millis(500));
    assert!(!events.iter().any(|e| e.contains("reset")), "a reset: {events:?}");
    assert_eq!(accepter.state(), ConnState::Open, "events: {events:?}");
    srv.shutdown();
}

/// Neither side hears a reset or a further message in a short grace period.
fn assert_quiet(arx: &Receiver<Seen>, brx: &Receiver<Seen>) {
    for (who, rx) in [("A", arx), ("B", brx)] {
        let events = drain_events(rx, Duration::from_millis(500));
        assert!(
            !events.iter().any(|e| e.contains("reset") || e.starts_with("message")),
            "{who}: {events:?}"
        );
    }
}

/// Two lossless_peer_reuse messengers whose accept decisions are held
/// (`ms_inject_internal_delays`), so two dials of each other meet with both handshakes
/// past their banners.
fn racing_pair() -> (Messenger, Receiver<Seen>, Messenger, Receiver<Seen>) {
    let config = MessengerConfig {
        inject_internal_delays: Duration::from_millis(200),
        initial_backoff: Duration::from_millis(20),
        ..test_config(2)
    };
    let (a, _, arx) = server_on(
        EntityType::OSD,
        1,
        Policy::lossless_peer_reuse(),
        false,
        loopback(),
        config.clone(),
    );
    let (b, _, brx) =
        server_on(EntityType::CLIENT, 2, Policy::lossless_peer_reuse(), false, loopback(), config);
    (a, arx, b, brx)
}

/// Ceph's ConnectionRaceTest: A connects to B and B to A at the same time (both held just
/// before their idents are decided), each with one message. One session opens: each
/// side's message arrives once, on the peer's own `connect_to` handle (Ceph checks each
/// handle's session count), both handles open, no reset.
fn connection_race(proto: ProtocolVersion) {
    let (a, arx, b, brx) = racing_pair();
    let a2b = a.connect_to(EntityType::CLIENT, addr_for(proto, b.my_addr()));
    let b2a = b.connect_to(EntityType::OSD, addr_for(proto, a.my_addr()));
    a2b.send_message(test_message(0x7f00, 1, Bytes::from_static(b"m1"))).expect("queued");
    b2a.send_message(test_message(0x7f00, 2, Bytes::from_static(b"m2"))).expect("queued");
    let (on_b, m) = next_message(&brx);
    assert_eq!((m.tid(), &on_b), (1, &b2a), "A's message did not arrive on B's handle");
    let (on_a, m) = next_message(&arx);
    assert_eq!((m.tid(), &on_a), (2, &a2b), "B's message did not arrive on A's handle");
    wait_until(
        || a2b.state() == ConnState::Open && b2a.state() == ConnState::Open,
        || format!("not both open: {:?} {:?}", a2b.state(), b2a.state()),
    );
    assert_quiet(&arx, &brx);
    a.shutdown();
    b.shutdown();
}

#[test]
fn two_peers_connecting_to_each_other_at_once_open_one_session_on_their_handles_over_msgr2() {
    connection_race(ProtocolVersion::V2);
}

#[test]
fn two_peers_connecting_to_each_other_at_once_open_one_session_on_their_handles_over_msgr1() {
    connection_race(ProtocolVersion::V1);
}

/// Ceph's MissingServerIdenTest2: two lossless peers. A connects to B (through a proxy
/// that can cut the socket, in place of Ceph's FAIL at B's SEND_SERVER_IDENTITY) with
/// nothing to send; B registers the session and holds its SERVER_IDENT
/// (`ms_inject_internal_delays`), queues a message on the accepted connection, and the
/// socket is cut before the SERVER_IDENT goes out. B has something to send, so the session
/// comes back (B dials A, or A redials): B's message reaches A on A's `connect_to`
/// handle, both ends open, no reset.
#[test]
fn a_lossless_session_failed_before_its_server_ident_delivers_the_acceptors_message() {
    use tests::chaos::{ChaosConfig, ChaosProxy, CutKind};
    let config = MessengerConfig {
        inject_internal_delays: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(20),
        ..test_config(1)
    };
    // B announces the proxy's address as its own (as a daemon behind a NAT), so A's
    // session with B is under the address B's own reconnects announce.
    let proxy_listener = TcpListener::bind(loopback()).expect("proxy listener");
    let public = proxy_listener.local_addr().expect("proxy address");
    let b = Messenger::new(EntityName::new(EntityType::OSD, 0), 2, config).expect("messenger");
    b.set_default_policy(Policy::lossless_peer());
    let b_bound = b.bind_public(loopback(), public).expect("bind");
    b.start().expect("start");
    let (rec, brx) = Recorder::new(false);
    b.add_dispatcher_head(rec).expect("dispatcher");
    let no_rewrite = ChaosConfig { rewrite: false, ..ChaosConfig::new(7) };
    let proxy = ChaosProxy::start_on(proxy_listener, b_bound, no_rewrite).expect("proxy");
    let a_config = MessengerConfig { initial_backoff: Duration::from_millis(20), ..test_config(2) };
    let (a, _, arx) =
        server_on(EntityType::CLIENT, 1, Policy::lossless_peer(), false, loopback(), a_config);
    let b_via_proxy = addr_for(ProtocolVersion::V2, b.my_addr());
    assert_eq!(b_via_proxy.addr, Some(proxy.addr()));
    let before = held(&b);
    let c2s = a.connect_to(EntityType::OSD, b_via_proxy);
    wait_until(|| held(&b) >= before + 2, || "B never held the new session's reply".into());
    let accepter = b.connect_to(EntityType::CLIENT, addr_for(ProtocolVersion::V2, a.my_addr()));
    accepter.send_message(test_message(0x7f00, 9, Bytes::from_static(b"m2"))).expect("queued");
    proxy.cut_now(CutKind::Reset);

    let (on, m) = next_message(&arx);
    assert_eq!(m.tid(), 9);
    assert_eq!(on, c2s, "B's message did not arrive on A's connect_to handle");
    wait_until(
        || c2s.state() == ConnState::Open && accepter.state() == ConnState::Open,
        || format!("A's {:?}, B's {:?}", c2s.state(), accepter.state()),
    );
    assert_quiet(&arx, &brx);
    a.shutdown();
    b.shutdown();
}

/// ConnectionRaceReuseBannerTest's race with A's connection one step earlier: its dial
/// failed and it waits out its backoff to dial again. B's handshake meets it there; B's
/// address sorts lower, so A's connection takes over B's socket. Its backoff timer must
/// not fire into the open session afterwards: no second dial, no second session, each
/// message delivered once, B's socket kept.
fn reuse_in_backoff(proto: ProtocolVersion) {
    const BACKOFF: Duration = Duration::from_millis(2000);
    let listener = TcpListener::bind(loopback()).expect("raw listener");
    let b_addr = addr_for(proto, EntityAddr::legacy(listener.local_addr().expect("addr"), 1));
    let config =
        MessengerConfig { initial_backoff: BACKOFF, max_backoff: BACKOFF, ..test_config(2) };
    let (a, _bound, arx) =
        server_on(EntityType::OSD, 1000, Policy::lossless_peer_reuse(), false, loopback(), config);
    let a_addr = addr_for(proto, a.my_addr());

    let c2s = a.connect_to(EntityType::CLIENT, b_addr);
    c2s.send_message(test_message(0x7f00, 2, Bytes::from_static(b"from A"))).expect("queued");
    // A's first dial fails: B's listener hangs up on it. A backs off.
    let started = Instant::now();
    drop(listener.accept().expect("A dials B"));

    let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::CLIENT, -1), b_addr));
    let mut s2c = RawPeer::try_handshake_with(a_addr, Policy::lossless_peer_reuse(), cfg)
        .expect("B's connection wins the race");
    assert!(started.elapsed() < BACKOFF, "too slow: A's backoff ran out before B's handshake");
    let m1 = s2c.message(1, b"from B");
    s2c.sock.write_all(&m1).expect("B's message");
    let got = s2c.receive(1).expect("A's message, on B's socket");
    assert_eq!(got[0].tid(), 2);
    let (on, msg) = next_message(&arx);
    assert_eq!((msg.tid(), &on), (1, &c2s), "B's message not on A's handle");

    // Past A's backoff: no second dial, the session stays on B's socket. (An absence:
    // only waiting past the deadline the timer would have fired at shows it.)
    std::thread::sleep(BACKOFF + Duration::from_millis(700));
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "A's backoff timer dialled B again after the take-over");
    assert_eq!(c2s.state(), ConnState::Open);
    assert!(!closed_within(&mut s2c.sock, Duration::from_millis(200)), "A closed B's socket");
    c2s.send_message(test_message(0x7f00, 3, Bytes::from_static(b"again"))).expect("queued");
    let got = s2c.receive(1).expect("A's next message, on B's socket");
    assert_eq!(got[0].tid(), 3);
    let events = drain_events(&arx, Duration::from_millis(300));
    assert!(!events.iter().any(|e| e.contains("reset") || e.starts_with("message")), "{events:?}");
    a.shutdown();
}

#[test]
fn a_connection_backing_off_is_reused_by_the_winning_accept_and_does_not_redial_over_msgr2() {
    reuse_in_backoff(ProtocolVersion::V2);
}

#[test]
fn a_connection_backing_off_is_reused_by_the_winning_accept_and_does_not_redial_over_msgr1() {
    reuse_in_backoff(ProtocolVersion::V1);
}
