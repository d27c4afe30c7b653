//! A lossless session through the chaos proxy (`tests::chaos`): a userspace TCP proxy
//! cuts the client's and the server's sockets at once, with RSTs and FINs, at random
//! seeded moments, while a numbered stream flows both ways. The messengers are the
//! unmodified library; they only see their sockets die. Each test runs over msgr v1 and,
//! dialling the proxy's `v2:` address, over msgr2 in crc mode (the proxy rewrites the
//! ident frames that name the server, see `tests::chaos`).
//!
//! `ASYNCMSGR_SOAK_SECS=N` runs the stream for N seconds instead of the CI's few.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use messenger::{Connection, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType};
use tests::chaos::{ChaosConfig, ChaosProxy, CutKind};
use tests::loopback::*;
use tests::soak;

use ProtocolVersion::{V1, V2};

const MSG_TEST: u16 = 0x7f00;
/// Messages sent and not yet echoed, at most.
const WINDOW: u64 = 256;
/// Largest payload (bytes) of a stream message.
const MAX_PAYLOAD: usize = 4096;

/// Reconnects must not wait long: the proxy cuts every few dozen milliseconds, and a
/// handshake it cuts backs off (Ceph's test suite sets `ms_max_backoff` to 1 s too).
fn chaos_config() -> MessengerConfig {
    backoff_config(Duration::from_millis(5), Duration::from_millis(100))
}

/// Ceph's lossless promise through a network that keeps failing: a stateful server and
/// a lossless client, the client streaming numbered messages (0–4 KiB) that the server
/// echoes on the same connection, while the proxy cuts every 20–150 ms. Every message
/// and every echo arrives exactly once, in order, byte for byte; no `ms_handle_reset` or
/// `ms_handle_remote_reset` reaches either side; and every reconnect is explained by a
/// cut (reconnects ≤ cuts).
#[test]
fn lossless_stream_survives_a_proxy_cutting_both_sides_at_random() {
    let name = "lossless_stream_survives_a_proxy_cutting_both_sides_at_random";
    let seed = soak::seed(name);
    stream_through_chaos(ChaosConfig::new(seed), Duration::from_secs(3), V1);
}

/// [`lossless_stream_survives_a_proxy_cutting_both_sides_at_random`] over msgr2: the
/// session resumes with SESSION_RECONNECT after every cut.
#[test]
fn lossless_stream_survives_a_proxy_cutting_both_sides_at_random_over_msgr2() {
    let name = "lossless_stream_survives_a_proxy_cutting_both_sides_at_random_over_msgr2";
    let seed = soak::seed(name);
    stream_through_chaos(ChaosConfig::new(seed), Duration::from_secs(3), V2);
}

/// The same under a storm of cuts every 1–8 ms, so that many land inside handshakes
/// (connect sent, reply or SEQ exchange in flight) and reconnects back off: still
/// nothing lost, duplicated, reordered or reset.
#[test]
fn lossless_stream_survives_cuts_that_land_inside_handshakes() {
    storm("lossless_stream_survives_cuts_that_land_inside_handshakes", V1);
}

/// [`lossless_stream_survives_cuts_that_land_inside_handshakes`] over msgr2: cuts land
/// between HELLO, AUTH, the idents and SESSION_RECONNECT/RECONNECT_OK.
#[test]
fn lossless_stream_survives_cuts_that_land_inside_handshakes_over_msgr2() {
    storm("lossless_stream_survives_cuts_that_land_inside_handshakes_over_msgr2", V2);
}

fn storm(name: &str, proto: ProtocolVersion) {
    let storm = ChaosConfig {
        min_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(8),
        ..ChaosConfig::new(soak::seed(name))
    };
    stream_through_chaos(storm, Duration::from_secs(2), proto);
}

/// A lossless client's connection to the server behind `proxy`, over `proto`.
fn connect_through(
    cli: &messenger::Messenger,
    srv: &messenger::Messenger,
    proxy: &ChaosProxy,
    proto: ProtocolVersion,
) -> Connection {
    let addr = addr_for(proto, EntityAddr::legacy(proxy.addr(), srv.my_addr().nonce));
    cli.connect_to(EntityType::OSD, addr)
}

/// Every session of the run spoke `proto`, and over msgr2 the proxy rewrote the idents
/// of at least the first handshake (one SERVER_IDENT, one CLIENT_IDENT).
fn check_protocol(conn: &Connection, proxy: &ChaosProxy, proto: ProtocolVersion) {
    assert_eq!(conn.protocol(), Some(proto), "the session speaks {proto:?}");
    let rewritten = proxy.stats().v2_idents_rewritten;
    match proto {
        V1 => assert_eq!(rewritten, 0, "no msgr2 frame on a v1 link"),
        V2 => assert!(rewritten >= 2, "the first handshake's idents: {rewritten}"),
    }
}

fn stream_through_chaos(chaos: ChaosConfig, ci_run: Duration, proto: ProtocolVersion) {
    let run_for = soak::soak_duration().unwrap_or(ci_run);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, srv_addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), true, any, chaos_config());
    let proxy = ChaosProxy::start(srv_addr, chaos).expect("proxy");
    let (cli, cli_rx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), chaos_config());
    let conn = connect_through(&cli, &srv, &proxy, proto);

    let started = Instant::now();
    let soak::Streamed { sent, connects, .. } = soak::stream_through_chaos(
        &proxy,
        &conn,
        &cli_rx,
        &srv_rx,
        MSG_TEST,
        run_for,
        WINDOW,
        MAX_PAYLOAD,
    );
    let wall = started.elapsed();
    let stats = proxy.stats();
    let reconnects = connects.saturating_sub(1);
    let v1 = cli.v1_counters();
    eprintln!(
        "chaos over {proto:?}: {sent} messages each way in {wall:?}, {} cuts ({} RST, {} FIN) ending {} \
         connections, {reconnects} reconnects, {} connect attempts; 0 lost, 0 duplicated, \
         0 reordered, 0 resets",
        stats.cuts, stats.resets, stats.fins, stats.links_cut, v1.connects
    );
    assert!(stats.cuts >= 3, "the proxy barely cut: {stats:?}");
    assert!(reconnects >= 1, "no cut hit an open session: {stats:?}");
    assert!(reconnects as u64 <= stats.cuts, "a reconnect without a cut: {reconnects} > {stats:?}");
    assert_eq!(v1.reset_session, 0, "the server never lost the session");
    assert_eq!(srv.v1_counters().old_seq_dropped, 0, "replays were trimmed by the SEQ exchange");
    check_protocol(&conn, &proxy, proto);
    cli.shutdown();
    srv.shutdown();
}

/// One cut of each kind on an idle lossless session: each costs exactly one reconnect
/// (the client's `ms_handle_connect` again, the server's `ms_handle_accept` for the
/// replacing socket) and nothing else — no reset of either kind, no message.
#[test]
fn one_proxy_cut_of_each_kind_is_one_reconnect() {
    one_cut_of_each_kind(V1);
}

/// [`one_proxy_cut_of_each_kind_is_one_reconnect`] over msgr2.
#[test]
fn one_proxy_cut_of_each_kind_is_one_reconnect_over_msgr2() {
    one_cut_of_each_kind(V2);
}

fn one_cut_of_each_kind(proto: ProtocolVersion) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, srv_addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), true, any, chaos_config());
    let proxy = ChaosProxy::start(srv_addr, ChaosConfig::new(0)).expect("proxy");
    let (cli, cli_rx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), chaos_config());
    let conn = connect_through(&cli, &srv, &proxy, proto);
    let mut tid = 0;
    let mut connects = 0;
    // The next echo; counts the connects seen on the way.
    let echo = |connects: &mut usize| loop {
        match cli_rx.recv_timeout(WAIT).expect("an echo within the wait") {
            Seen::Message(_, m) => return m.tid(),
            Seen::Connect(_) => *connects += 1,
            Seen::Reset(_) | Seen::RemoteReset(_) => {
                panic!("client: a reset on a lossless session")
            }
            _ => {}
        }
    };
    for kind in [CutKind::Reset, CutKind::Fin] {
        tid += 1;
        conn.send_message(test_message(MSG_TEST, tid, bytes::Bytes::new())).expect("send");
        assert_eq!(echo(&mut connects), tid);
        proxy.cut_now(kind);
        // A lossless client reconnects at once after losing an open session, with or
        // without anything to send (lossless_client has no standby).
        tid += 1;
        conn.send_message(test_message(MSG_TEST, tid, bytes::Bytes::new())).expect("send");
        assert_eq!(echo(&mut connects), tid, "{kind:?}: the session came back");
    }
    connects += count_events(&cli_rx, 3 - connects, |s| matches!(s, Seen::Connect(_)));
    assert_eq!(connects, 3, "one connect, then one reconnect per cut");
    assert_eq!(proxy.stats().cuts, 2);
    let mut accepts = 0;
    let mut got = Vec::new();
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = srv_rx.recv_deadline(grace) {
        match seen {
            Seen::Accept(_) => accepts += 1,
            Seen::Message(_, m) => got.push(m.tid()),
            Seen::Reset(_) | Seen::RemoteReset(_) => {
                panic!("server: a reset on a lossless session")
            }
            _ => {}
        }
    }
    assert_eq!(got, [1, 2, 3, 4], "each message once, in order");
    assert_eq!(accepts, 3, "one accept, then one replacing accept per cut");
    check_protocol(&conn, &proxy, proto);
    cli.shutdown();
    srv.shutdown();
}
