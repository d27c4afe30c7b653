//! A messenger bound to the IPv6 wildcard `[::]:0` (dual-stack where the host's
//! `net.ipv6.bindv6only` is 0): IPv4 clients that dial `127.0.0.1:port` reach it over
//! msgr v1 and msgr2 (an IPv4 connection accepted there has the local socket address
//! `[::ffff:127.0.0.1]`, which a v1 acceptor must not announce to a peer that dialled
//! `127.0.0.1`), and IPv6 clients that dial `[::1]:port` too. No sleeps: every wait is
//! a channel receive with a timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::Bytes;
use messenger::{Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// `[::]:0`, if this host can bind it and it accepts IPv4 too (else skipped, saying so).
fn dual_stack_wildcard() -> Option<SocketAddr> {
    let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipped: cannot bind [::] here ({e})");
            return None;
        }
    };
    let port = listener.local_addr().ok()?.port();
    match std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Some(addr),
        Err(e) => {
            eprintln!("skipped: [::] is not dual-stack here ({e})");
            None
        }
    }
}

/// A server bound to `[::]:0` serves an IPv4 client dialling `127.0.0.1:port` and an
/// IPv6 client dialling `[::1]:port`, over v1 and msgr2: the message arrives and its
/// echo comes back on the connection the client opened.
#[test]
fn wildcard_v6_listener_serves_ipv4_and_ipv6_over_v1_and_msgr2() {
    let Some(any6) = dual_stack_wildcard() else { return };
    let mut tid = 0;
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            let (srv, bound, srv_rx) = server_on(
                EntityType::OSD,
                11,
                Policy::stateless_server(),
                true,
                any6,
                test_config(2),
            );
            assert!(bound.ip().is_unspecified(), "{bound}");
            let (cli, cli_rx) = client(EntityType::CLIENT, 22, Policy::lossy_client());
            let target = addr_for(
                proto,
                EntityAddr { addr: Some(SocketAddr::new(ip, bound.port())), ..srv.my_addr() },
            );
            let conn = cli.connect_to(EntityType::OSD, target);
            tid += 1;
            conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(b"hi")))
                .expect("send");
            let (_, m) = next_message(&srv_rx);
            assert_eq!(m.tid(), tid, "{proto:?} to {ip}: the server got it");
            let (c, m) = next_message(&cli_rx);
            assert_eq!(m.tid(), tid, "{proto:?} to {ip}: the echo came back");
            assert_eq!(c, conn);
            assert_eq!(conn.protocol(), Some(proto));
            cli.shutdown();
            srv.shutdown();
        }
    }
}

/// A server bound to the IPv4 wildcard `0.0.0.0:0` serves a client dialling
/// `127.0.0.1:port` over v1 and msgr2: msgr2's SERVER_IDENT names the address dialled
/// (the connector refuses one without it), not `0.0.0.0`.
#[test]
fn wildcard_v4_listener_serves_loopback_over_v1_and_msgr2() {
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    for (tid, proto) in [ProtocolVersion::V1, ProtocolVersion::V2].into_iter().enumerate() {
        let (srv, bound, srv_rx) =
            server_on(EntityType::OSD, 11, Policy::stateless_server(), true, any4, test_config(2));
        assert!(bound.ip().is_unspecified(), "{bound}");
        let (cli, cli_rx) = client(EntityType::CLIENT, 22, Policy::lossy_client());
        let dialled = SocketAddr::from((Ipv4Addr::LOCALHOST, bound.port()));
        let target = addr_for(proto, EntityAddr { addr: Some(dialled), ..srv.my_addr() });
        let conn = cli.connect_to(EntityType::OSD, target);
        let tid = tid as u64 + 1;
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(b"hi"))).expect("send");
        let (_, m) = next_message(&srv_rx);
        assert_eq!(m.tid(), tid, "{proto:?}: the server got it");
        let (c, m) = next_message(&cli_rx);
        assert_eq!((m.tid(), &c), (tid, &conn), "{proto:?}: the echo came back");
        cli.shutdown();
        srv.shutdown();
    }
}

/// The real `ceph` CLI (Ceph 16.2, v1 and then msgr2) against our mini monitor bound to
/// `[::]:0`, with `mon_host` at `127.0.0.1:port`: `ceph -s` prints our status (Ceph's
/// v1 connector refuses an acceptor announcing `[::ffff:127.0.0.1]`, its msgr2
/// connector a SERVER_IDENT without the address it dialled). Skipped without Ceph or
/// without a dual-stack `[::]`.
#[test]
fn real_ceph_cli_reaches_a_wildcard_v6_listener_over_ipv4() {
    use tests::ceph::{ceph_available, client_conf_for, client_conf_msgr2_for};
    use tests::mon::{fsid_string, MiniMon};

    const FSID: [u8; 16] = *b"r12-wildcard-v6!";
    let Some(any6) = dual_stack_wildcard() else { return };
    if !ceph_available("real_ceph_cli_reaches_a_wildcard_v6_listener_over_ipv4") {
        return;
    }
    for msgr2 in [false, true] {
        let status = serde_json::json!({"fsid": fsid_string(&FSID), "served_by": "r12"});
        let reply = Bytes::from(status.to_string());
        let table = Bytes::from(
            serde_json::json!({"cmd073": {"sig": ["status"], "help": "show cluster status",
                                          "module": "mon", "perm": "r", "flags": 0}})
            .to_string(),
        );
        let handler: tests::mon::CommandHandler =
            Box::new(move |cmd: &serde_json::Value| match cmd["prefix"].as_str() {
                Some("get_command_descriptions") => (0, String::new(), table.clone()),
                Some("status") => (0, String::new(), reply.clone()),
                _ => (-22, "unrecognized command".into(), Bytes::new()),
            });
        let (msgr, addr, _rx) = MiniMon::serve_bound(FSID, handler, msgr2, any6).expect("serve");
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let conf = if msgr2 {
            client_conf_msgr2_for(addr, &fsid_string(&FSID))
        } else {
            client_conf_for(addr, &fsid_string(&FSID))
        }
        .expect("conf");
        let out = std::process::Command::new("timeout")
            .args(["60", "ceph", "-c"])
            .arg(&conf)
            .args(["--connect-timeout", "10", "-s", "-f", "json"])
            .output()
            .expect("run ceph");
        if let Some(dir) = conf.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "msgr2 {msgr2}: ceph -s failed: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
        assert_eq!(printed, status, "msgr2 {msgr2}");
        msgr.shutdown();
    }
}

/// A peer bound to the IPv4 wildcard `0.0.0.0:port` learns its IP from the acceptor it
/// dials (`ms_learn_addr_from_peer`). An acceptor on a dual-stack `[::]` listener must
/// tell an IPv4 peer the IPv4 address it sees (`127.0.0.1`), not the socket's
/// `[::ffff:127.0.0.1]`: a peer that learned that announces itself at an IPv6 address,
/// the acceptor keys its session there and, dialling it back at it, is refused (the
/// peer's listener was reached at `127.0.0.1`: a msgr2 CLIENT_IDENT naming
/// `[::ffff:127.0.0.1]` is not for it, nor is a v1 acceptor at `127.0.0.1` the one
/// dialled). So a lossless peer that had to redial never reached it again.
#[test]
fn a_peer_of_a_dual_stack_listener_learns_its_ipv4_address_and_can_be_dialled_back() {
    let Some(any6) = dual_stack_wildcard() else { return };
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    for (round, proto) in [ProtocolVersion::V1, ProtocolVersion::V2].into_iter().enumerate() {
        let tid = round as u64 * 10;
        let (b, b_bound, b_rx) =
            server_on(EntityType::OSD, 11, Policy::lossless_peer(), false, any6, test_config(2));
        let (a, a_bound, a_rx) =
            server_on(EntityType::OSD, 22, Policy::lossless_peer(), false, any4, test_config(2));
        let to_b = addr_for(
            proto,
            EntityAddr {
                addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, b_bound.port()))),
                ..b.my_addr()
            },
        );
        let conn = a.connect_to(EntityType::OSD, to_b);
        conn.send_message(test_message(MSG_TEST, tid + 1, Bytes::from_static(b"hi")))
            .expect("send");
        let (at_b, m) = next_message(&b_rx);
        assert_eq!(m.tid(), tid + 1, "{proto:?}: B got A's message");
        let announced = at_b.peer_addr().expect("A's announced address");
        // B dials A back where A said it is, on a fresh session.
        b.mark_down(&announced);
        let back = b.connect_to(EntityType::OSD, announced);
        back.send_message(test_message(MSG_TEST, tid + 2, Bytes::from_static(b"back")))
            .expect("send");
        let (_, m) = next_message(&a_rx);
        assert_eq!(m.tid(), tid + 2, "{proto:?}: A got B's message on B's own dial");
        assert_eq!(
            announced.addr,
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, a_bound.port()))),
            "{proto:?}: A announced itself at {announced} (it learned its IP from B)"
        );
        a.shutdown();
        b.shutdown();
    }
}
