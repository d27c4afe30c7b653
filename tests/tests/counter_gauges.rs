//! What the messenger reports about itself agrees with what happened: after a known
//! exchange the two ends' message and byte counters mirror each other (what one wrote,
//! the other read) over v1, v1 + cephx, msgr2 crc and msgr2 secure, and the connection
//! gauges (and the send queues', throttle's and dispatch queue's) come back to what is
//! live once sessions end, however they ended: raw sockets that go, lossy sessions
//! marked down, refused dials, injected socket failures with replaces, a rebind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::auth::{ConMode, ConModes};
use protocol::types::{EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

const SERVER: EntityName = EntityName { ty: EntityType::OSD, num: 0 };
const CLIENT: EntityName = EntityName { ty: EntityType::CLIENT, num: 2 };

/// `name` of `perf dump` summed over the messenger's workers (what the admin socket
/// answers).
fn perf(m: &Messenger, name: &str) -> u64 {
    let dump = m.counters_json();
    let sections = dump.as_object().into_iter().flatten();
    let workers = sections.filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"));
    workers.map(|(_, v)| v[name].as_u64().unwrap_or(0)).sum()
}

/// Waits for `read()` to reach `expected`, then checks it stays there a moment.
#[track_caller]
fn assert_settles_at(what: &str, read: impl Fn() -> u64, expected: u64) {
    wait_until(|| read() == expected, || format!("{what}: {} of {expected}", read()));
    let grace = Instant::now() + Duration::from_millis(200);
    while Instant::now() < grace {
        assert_eq!(read(), expected, "{what}");
        std::thread::yield_now();
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    V1,
    V1Cephx,
    V2Crc,
    V2Secure,
}

fn configs(mode: Mode) -> (MessengerConfig, MessengerConfig, ProtocolVersion) {
    let base = test_config(2);
    match mode {
        Mode::V1 => (base.clone(), base, ProtocolVersion::V1),
        Mode::V2Crc => {
            let c = MessengerConfig { client_mode: Some(ConModes(vec![ConMode::CRC])), ..base };
            (c.clone(), c, ProtocolVersion::V2)
        }
        Mode::V1Cephx | Mode::V2Secure => {
            let mut cluster = TestCluster::new(&[SERVER, CLIENT], 7);
            let base =
                MessengerConfig { client_mode: Some(ConModes(vec![ConMode::SECURE])), ..base };
            let srv = base.clone().with_auth_provider(cluster.provider(SERVER, None));
            let cli = base.with_auth_provider(cluster.provider(CLIENT, None));
            let proto = if matches!(mode, Mode::V1Cephx) {
                ProtocolVersion::V1
            } else {
                ProtocolVersion::V2
            };
            (srv, cli, proto)
        }
    }
}

/// N messages of known size each way: each end counts N sent and N received, and what
/// one end counts written the other counts read, once the exchange is over.
fn counters_mirror_each_other_over(mode: Mode) {
    const N: u64 = 40;
    let (srv_config, cli_config, proto) = configs(mode);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _addr, srv_rx) =
        server_on(SERVER.ty, 1, Policy::stateful_server(), true, loopback, srv_config);
    let cli = Messenger::new(CLIENT, 2, cli_config).expect("client");
    let (cli, cli_rx) = start_recorded(cli, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    for tid in 1..=N {
        let data = Bytes::from(vec![tid as u8; 1000 + tid as usize]);
        conn.send_message(test_message(MSG_TEST, tid, data)).expect("send");
    }
    for tid in 1..=N {
        assert_eq!(next_message(&srv_rx).1.tid(), tid);
        assert_eq!(next_message(&cli_rx).1.tid(), tid);
    }
    assert_eq!(conn.protocol(), Some(proto), "{mode:?}");
    assert_settles_at("client sent", || perf(&cli, "msgr_send_messages"), N);
    assert_settles_at("server received", || perf(&srv, "msgr_recv_messages"), N);
    assert_settles_at("server sent", || perf(&srv, "msgr_send_messages"), N);
    assert_settles_at("client received", || perf(&cli, "msgr_recv_messages"), N);
    // Acks and keepalives settle: then every byte written was read.
    wait_until(
        || {
            perf(&cli, "msgr_send_bytes") == perf(&srv, "msgr_recv_bytes")
                && perf(&srv, "msgr_send_bytes") == perf(&cli, "msgr_recv_bytes")
        },
        || {
            format!(
                "{mode:?}: client wrote {} (server read {}), server wrote {} (client read {})",
                perf(&cli, "msgr_send_bytes"),
                perf(&srv, "msgr_recv_bytes"),
                perf(&srv, "msgr_send_bytes"),
                perf(&cli, "msgr_recv_bytes"),
            )
        },
    );
    assert_eq!(perf(&cli, "msgr_active_connections"), 1);
    assert_eq!(perf(&srv, "msgr_active_connections"), 1);
    cli.mark_down_all();
    assert_settles_at("client connections", || perf(&cli, "msgr_active_connections"), 0);
    cli.shutdown();
    srv.shutdown();
    assert_eq!(perf(&srv, "msgr_active_connections"), 0);
}

#[test]
fn counters_mirror_each_other_over_v1() {
    counters_mirror_each_other_over(Mode::V1);
}

#[test]
fn counters_mirror_each_other_over_v1_cephx() {
    counters_mirror_each_other_over(Mode::V1Cephx);
}

#[test]
fn counters_mirror_each_other_over_msgr2_crc() {
    counters_mirror_each_other_over(Mode::V2Crc);
}

#[test]
fn counters_mirror_each_other_over_msgr2_secure() {
    counters_mirror_each_other_over(Mode::V2Secure);
}

/// The active-connection gauge of `m` and its live connections, once they agree
/// (a driver leaves the table and the gauge in one step).
#[track_caller]
fn assert_active_settles_at(m: &Messenger, who: &str, expected: u64) {
    assert_settles_at(
        &format!("{who}: active connections"),
        || perf(m, "msgr_active_connections"),
        expected,
    );
    assert_eq!(m.connection_count() as u64, expected, "{who}: {}", m.dump_connections());
}

/// Sockets that connect and go (at once, after a banner, after garbage), lossy sessions
/// opened and marked down, dials refused, each many times: the gauges come back to
/// nothing live on both ends.
#[test]
fn active_connections_come_back_after_many_short_lives() {
    use std::io::Write;
    const ROUNDS: u64 = 30;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, bound, _srv_rx) =
        server_on(SERVER.ty, 1, Policy::stateless_server(), true, loopback, patient_config(2));
    for round in 0..ROUNDS {
        let mut s = std::net::TcpStream::connect(bound).expect("dial");
        match round % 3 {
            0 => {}
            1 => {
                let _ = s.write_all(b"ceph v027");
            }
            _ => {
                let _ = s.write_all(&[0xffu8; 64]);
            }
        }
        drop(s);
    }
    wait_until(
        || perf(&srv, "msgr_created_connections") == ROUNDS,
        || format!("accepted {}", perf(&srv, "msgr_created_connections")),
    );
    assert_active_settles_at(&srv, "server after raw sockets", 0);

    let (cli, cli_rx) = client_with(CLIENT.ty, 2, Policy::lossy_client(), test_config(2));
    for round in 0..ROUNDS {
        let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
        conn.send_message(test_message(MSG_TEST, round + 1, Bytes::new())).expect("send");
        assert_eq!(next_message(&cli_rx).1.tid(), round + 1);
        if round % 2 == 0 {
            conn.mark_down();
        } else {
            cli.mark_down_all();
        }
    }
    assert_active_settles_at(&cli, "client after lossy sessions", 0);
    assert_active_settles_at(&srv, "server after lossy sessions", 0);
    assert_eq!(perf(&cli, "msgr_created_connections"), ROUNDS);

    // Dials to a port nobody listens on, each marked down once refused.
    let dead = {
        let l = std::net::TcpListener::bind(loopback).expect("bind");
        l.local_addr().expect("addr")
    };
    for _ in 0..ROUNDS {
        let conn = cli.get_connection(EntityType::OSD, dead);
        assert!(wait_for_event(&cli_rx, |e| matches!(e, Seen::Refused(c) if *c == conn)));
        conn.mark_down();
    }
    assert_active_settles_at(&cli, "client after refused dials", 0);
    cli.shutdown();
    srv.shutdown();
}

/// A lossless stream through injected socket failures and internal delays on both ends
/// (reconnects, replaces, races), then a rebind of the server and a new stream: each
/// end's active-connection gauge equals its live connections once things settle, and
/// the messages were each counted once.
fn gauges_follow_the_live_connections_through_faults_over(mode: Mode) {
    const N: u64 = 300;
    let (srv_config, cli_config, proto) = configs(mode);
    let faulty = |base: MessengerConfig, nonce: u64| MessengerConfig {
        inject_socket_failures: 20,
        inject_internal_delays: Duration::from_millis(2),
        inject_seed: nonce,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        ..base
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _addr, srv_rx) =
        server_on(SERVER.ty, 1, Policy::stateful_server(), true, loopback, faulty(srv_config, 1));
    let cli = Messenger::new(CLIENT, 2, faulty(cli_config, 2)).expect("client");
    let (cli, cli_rx) = start_recorded(cli, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    // In small windows: many reads and writes, each a draw for a failure.
    for window in 0..N / 5 {
        for tid in window * 5 + 1..=window * 5 + 5 {
            let data = Bytes::from(vec![1u8; 300]);
            conn.send_message(test_message(MSG_TEST, tid, data)).expect("send");
        }
        for tid in window * 5 + 1..=window * 5 + 5 {
            assert_eq!(next_message(&srv_rx).1.tid(), tid);
            assert_eq!(next_message(&cli_rx).1.tid(), tid);
        }
    }
    assert!(cli.v1_counters().connects > 2, "faults happened: {:?}", cli.v1_counters());
    assert_settles_at("client sent", || perf(&cli, "msgr_send_messages"), N);
    assert_settles_at("server received", || perf(&srv, "msgr_recv_messages"), N);
    assert_settles_at("server sent", || perf(&srv, "msgr_send_messages"), N);
    assert_settles_at("client received", || perf(&cli, "msgr_recv_messages"), N);
    wait_until(
        || perf(&srv, "msgr_active_connections") == srv.connection_count() as u64,
        || {
            format!(
                "server: {} active, {}",
                perf(&srv, "msgr_active_connections"),
                srv.dump_connections()
            )
        },
    );
    wait_until(
        || perf(&cli, "msgr_active_connections") == cli.connection_count() as u64,
        || {
            format!(
                "client: {} active, {}",
                perf(&cli, "msgr_active_connections"),
                cli.dump_connections()
            )
        },
    );
    cli.mark_down_all();
    assert_active_settles_at(&cli, "client after mark_down_all", 0);
    srv.rebind(&Default::default()).expect("rebind");
    assert_active_settles_at(&srv, "server after the rebind", 0);
    for (m, who) in [(&cli, "client"), (&srv, "server")] {
        let gauges = || {
            let d = m.counters_json();
            [
                perf(m, "msgr_recv_held_bytes"),
                d["msgr_send_queues"]["val"].as_u64().unwrap_or(99),
                d["msgr_send_queues"]["standby_sessions"].as_u64().unwrap_or(99),
                d["msgr_send_queues"]["standby_held"].as_u64().unwrap_or(99),
                d["throttle-msgr_dispatch_throttler"]["val"].as_u64().unwrap_or(99),
                d["dispatch_queue"]["len"].as_u64().unwrap_or(99),
            ]
        };
        wait_until(
            || gauges() == [0; 6],
            || format!("{who}: {:?} {}", gauges(), m.counters_json()),
        );
    }
    cli.shutdown();
    srv.shutdown();
    assert_eq!(perf(&srv, "msgr_active_connections"), 0);
    assert_eq!(perf(&cli, "msgr_active_connections"), 0);
}

#[test]
fn gauges_follow_the_live_connections_through_faults_over_v1() {
    gauges_follow_the_live_connections_through_faults_over(Mode::V1);
}

#[test]
fn gauges_follow_the_live_connections_through_faults_over_v1_cephx() {
    gauges_follow_the_live_connections_through_faults_over(Mode::V1Cephx);
}

#[test]
fn gauges_follow_the_live_connections_through_faults_over_msgr2_crc() {
    gauges_follow_the_live_connections_through_faults_over(Mode::V2Crc);
}

#[test]
fn gauges_follow_the_live_connections_through_faults_over_msgr2_secure() {
    gauges_follow_the_live_connections_through_faults_over(Mode::V2Secure);
}
