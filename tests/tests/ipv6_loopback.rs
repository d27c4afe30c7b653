//! The messenger over IPv6 loopback (`[::1]`, port 0), as Ceph runs with
//! `ms_bind_ipv6`: a listener bound there announces `[::1]` in both address types,
//! serves msgr v1 and msgr2 (crc, and secure under cephx), a pure client learns its own
//! IPv6 address from the acceptor, the acceptor knows it by that address, and a
//! lossless session survives socket cuts without loss or duplicates. Skipped (with a
//! message) where the host's loopback has no IPv6. No sleeps: every wait is a channel
//! receive with a timeout.

use std::collections::HashSet;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::Bytes;
use messenger::{Connection, MessengerConfig, Policy, ProtocolVersion};
use protocol::auth::{ConMode, ConModes};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

type Rx = crossbeam_channel::Receiver<Seen>;

/// `[::1]:0`, if this host can bind it (else the test says so and is skipped).
fn v6_loopback() -> Option<SocketAddr> {
    let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0));
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Some(addr),
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback here ({e})");
            None
        }
    }
}

fn is_v6_loopback(a: &EntityAddr) -> bool {
    matches!(a.addr, Some(SocketAddr::V6(s)) if *s.ip() == Ipv6Addr::LOCALHOST)
}

/// Sends tids `from..=to` on `conn`; checks each arrives at the server once, in order,
/// on one server-side connection, and its echo comes back on `conn`. Returns that
/// server-side connection.
fn stream(conn: &Connection, cli_rx: &Rx, srv_rx: &Rx, from: u64, to: u64) -> Connection {
    for tid in from..=to {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![tid as u8; 300])))
            .expect("send");
    }
    let mut served = HashSet::new();
    let mut last = None;
    for tid in from..=to {
        let (c, m) = next_message(srv_rx);
        assert_eq!(m.tid(), tid, "exactly once, in order");
        assert_eq!(m.data().as_ref(), &vec![tid as u8; 300][..]);
        served.insert(c.id());
        last = Some(c);
    }
    for tid in from..=to {
        let (c, m) = next_message(cli_rx);
        assert_eq!(m.tid(), tid, "echoes exactly once, in order");
        assert_eq!(&c, conn, "the echo came on the connection we sent on");
    }
    assert_eq!(served.len(), 1, "one server-side connection");
    last.expect("from <= to")
}

/// A server on `[::1]:0` announces `[::1]` and its port as v2 and v1; an unbound
/// lossless client reaches it over each protocol, learns its own address from the
/// acceptor (`[::1]`, with its nonce), which is what the acceptor then knows it by; the
/// session survives socket cuts, every message exactly once.
#[test]
fn v1_and_msgr2_over_ipv6_loopback_with_reconnects() {
    let Some(lo6) = v6_loopback() else { return };
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let (srv, bound, srv_rx) =
            server_on(EntityType::OSD, 11, Policy::stateful_server(), true, lo6, test_config(2));
        assert!(matches!(bound, SocketAddr::V6(s) if *s.ip() == Ipv6Addr::LOCALHOST));
        assert_ne!(bound.port(), 0);
        let me = srv.my_addr();
        assert_eq!((me.ty, me.nonce, me.addr), (AddrType::LEGACY, 11, Some(bound)));
        let addrs = srv.my_addrs().addrs;
        let tys: Vec<_> = addrs.iter().map(|a| a.ty).collect();
        assert_eq!(tys, [AddrType::MSGR2, AddrType::LEGACY]);
        assert!(addrs.iter().all(|a| a.addr == Some(bound) && a.nonce == 11), "{addrs:?}");

        let (cli, cli_rx) = client(EntityType::OSD, 22, Policy::lossless_client());
        let target = addr_for(proto, me);
        let conn = cli.connect_to(EntityType::OSD, target);
        let served = stream(&conn, &cli_rx, &srv_rx, 1, 20);
        assert_eq!(conn.protocol(), Some(proto));
        assert_eq!(served.protocol(), Some(proto));
        assert_eq!(conn.peer_addr(), Some(target), "{proto:?}: the client's peer");
        let peer = served.peer_addr().expect("the acceptor knows its peer's address");
        assert!(is_v6_loopback(&peer), "{proto:?}: the client is known at [::1]: {peer}");
        assert_eq!(peer.nonce, 22, "{proto:?}: {peer}");
        let sock = served.peer_socket_addr().expect("socket peer");
        assert!(matches!(sock, SocketAddr::V6(s) if *s.ip() == Ipv6Addr::LOCALHOST));

        for cut in 0..3u64 {
            conn.inject_socket_failure();
            let again = stream(&conn, &cli_rx, &srv_rx, 21 + cut * 20, 40 + cut * 20);
            assert_eq!(again, served, "{proto:?}: the cut session resumed on the same handle");
        }
        assert_no_more_messages(&srv_rx, "a duplicate arrived");
        cli.shutdown();
        srv.shutdown();
    }
}

/// Two bound lossless peers on `[::1]` (each listening, so either may redial the
/// other), over each protocol: messages both ways on one session, across socket cuts.
#[test]
fn lossless_peers_bound_on_ipv6_stream_both_ways_across_cuts() {
    let Some(lo6) = v6_loopback() else { return };
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let (a, _, a_rx) =
            server_on(EntityType::OSD, 1, Policy::lossless_peer(), false, lo6, test_config(2));
        let (b, _, b_rx) =
            server_on(EntityType::OSD, 2, Policy::lossless_peer(), false, lo6, test_config(2));
        let a_to_b = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
        a_to_b.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
        let (b_to_a, m) = next_message(&b_rx);
        assert_eq!(m.tid(), 1);
        let at_b = b_to_a.peer_addr().expect("b knows a");
        assert_eq!(at_b.addr, a.my_addr().addr, "{proto:?}: b knows a by its bound address");
        assert_eq!(at_b.nonce, 1);
        b_to_a.inject_socket_failure();
        for tid in 2..=50 {
            a_to_b.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
            b_to_a.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
            if tid % 17 == 0 {
                a_to_b.inject_socket_failure();
            }
        }
        for tid in 2..=50 {
            let (c, m) = next_message(&b_rx);
            assert_eq!((m.tid(), &c), (tid, &b_to_a), "{proto:?}: at b, once, in order");
        }
        for tid in 2..=50 {
            let (c, m) = next_message(&a_rx);
            assert_eq!((m.tid(), &c), (tid, &a_to_b), "{proto:?}: at a, once, in order");
        }
        assert_no_more_messages(&a_rx, "a duplicate arrived at a");
        assert_no_more_messages(&b_rx, "a duplicate arrived at b");
        a.shutdown();
        b.shutdown();
    }
}

/// msgr2 secure mode (cephx, AES-GCM) between two OSDs over `[::1]`, across a cut.
#[test]
fn msgr2_secure_mode_over_ipv6_loopback() {
    let Some(lo6) = v6_loopback() else { return };
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let mut cluster = TestCluster::new(&[osd0, osd1], rand::random());
    let config = |p| {
        MessengerConfig { cluster_mode: Some(ConModes(vec![ConMode::SECURE])), ..test_config(2) }
            .with_auth_provider(p)
    };
    let (srv, _, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        true,
        lo6,
        config(cluster.provider(osd0, None)),
    );
    let (cli, cli_rx) = client_with(
        EntityType::OSD,
        2,
        Policy::lossless_client(),
        config(cluster.provider(osd1, None)),
    );
    let conn = cli.connect_to(EntityType::OSD, addr_for(ProtocolVersion::V2, srv.my_addr()));
    let served = stream(&conn, &cli_rx, &srv_rx, 1, 10);
    assert_eq!(conn.con_mode(), Some(ConMode::SECURE));
    assert_eq!(served.con_mode(), Some(ConMode::SECURE));
    conn.inject_socket_failure();
    let again = stream(&conn, &cli_rx, &srv_rx, 11, 20);
    assert_eq!(again, served);
    let peer = served.peer_addr().expect("peer");
    assert!(is_v6_loopback(&peer), "{peer}");
    cli.shutdown();
    srv.shutdown();
}

/// A real Ceph 16.2 monitor bound to `[::1]` only (`ms_bind_ipv6`): our v1 client
/// authenticates (auth none), and the monmap it gets names the monitor at `[::1]` as v2
/// and v1; then a client of ours reaches the monitor's msgr2 address and is answered
/// MMonGetMap with the same map. The monitor's `sessions` show each of our clients at
/// `[::1]` with its nonce (what we announced after learning our address from it).
/// Skipped (with a message) without Ceph or without IPv6 loopback.
#[test]
fn real_monitor_on_ipv6_over_v1_and_msgr2() {
    use protocol::message::PRIO_DEFAULT;
    use protocol::messages::{MMonMap, MsgType, TypedMessage};
    use protocol::Message;
    use tests::ceph::CephMon;
    use tests::mon::MonClient;

    if v6_loopback().is_none() {
        return;
    }
    let Some(mon) = CephMon::start_ipv6("real_monitor_on_ipv6").expect("start ceph-mon") else {
        return;
    };
    assert!(mon.addr().is_ipv6());
    // v1: MonClient (MAuth, then the monmap).
    let v1 = MonClient::new(mon.addr(), test_config(2)).expect("client messenger");
    let reply = v1.authenticate().expect("MAuthReply over v1");
    assert_eq!(reply.result, 0, "{reply:?}");
    let monmap = v1.fetch_monmap().expect("monmap over v1");
    assert_eq!(monmap.fsid, mon.fsid_bytes());
    let info = monmap.mon_info.values().next().expect("one monitor").clone();
    let v1_addr = info.public_addrs.legacy_addr().expect("a v1 address");
    assert_eq!(v1_addr.addr, Some(mon.addr()), "{:?}", info.public_addrs);
    let v2_addr = *info.public_addrs.addrs.iter().find(|a| a.ty == AddrType::MSGR2).expect("v2");
    assert!(is_v6_loopback(&v2_addr), "{v2_addr}");
    assert_eq!(v1.connection().peer_addr(), Some(EntityAddr::legacy(mon.addr(), 0)));

    // msgr2: a lossy client, auth none in the AUTH frames, then MMonGetMap.
    let nonce = 0x5eed_0002;
    let (v2, v2_rx) =
        client_with(EntityType::CLIENT, nonce, Policy::lossy_client(), test_config(2));
    let conn = v2.connect_to(EntityType::MON, v2_addr);
    let mut get_map = Message::new(MsgType::MON_GET_MAP.0, Bytes::new());
    get_map.set_version(1);
    get_map.set_compat_version(1);
    get_map.set_priority(PRIO_DEFAULT);
    conn.send_message(get_map).expect("send MMonGetMap");
    let (c, m) = next_message(&v2_rx);
    assert_eq!(c, conn);
    assert_eq!(m.msg_type(), MsgType::MON_MAP.0);
    let map = MMonMap::from_message(&m).expect("decode MMonMap").monmap;
    assert_eq!(map, monmap, "the same map over msgr2");
    assert_eq!(conn.protocol(), Some(ProtocolVersion::V2));

    // The monitor knows both clients at [::1] with their nonces.
    let sessions: serde_json::Value =
        serde_json::from_str(&mon.admin(&["sessions"]).expect("admin sessions")).expect("json");
    let text = sessions.to_string();
    let known_at = |nonce: u64| {
        sessions.as_array().into_iter().flatten().any(|s| {
            s["addrs"]["addrvec"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["addr"] == "[::1]:0" && a["nonce"].as_u64() == Some(nonce))
        })
    };
    for n in [v1.messenger().my_addr().nonce, nonce] {
        assert!(known_at(u64::from(n)), "nonce {n} at [::1]: {text}");
    }
    v2.shutdown();
    v1.messenger().shutdown();
}
