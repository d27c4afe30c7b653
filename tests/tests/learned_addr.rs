//! A messenger learns its own address, as Ceph's does (`AsyncMessenger::learned_addr`,
//! `set_addr_unknowns`): a pure client (never bound) and a messenger bound to a
//! wildcard take the IP the first acceptor they dial says it sees them at (v1's banner
//! reply, msgr2's HELLO), keeping their port, nonce and address types; once, the first
//! report deciding; `my_addrs()` shows it, every later connect announces it (v1's
//! address block, msgr2's CLIENT_IDENT), and the loopback connection follows (its fast
//! dispatchers hear `ms_handle_fast_connect` again). `set_addr_unknowns` fills a bound
//! wildcard's IP from given addresses.
//!
//! Peers that lie are played by listeners that answer a v1 connector's banner with the
//! address they choose and read the address it announces back. No sleeps: every wait is
//! a channel receive with a timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityAddrVec, EntityType};
use protocol::wire::{AcceptorBanner, BANNER_LEN};
use protocol::Message;
use tests::loopback::*;

const PROTOCOLS: [ProtocolVersion; 2] = [ProtocolVersion::V1, ProtocolVersion::V2];
const MSG_TEST: u16 = 0x7f00;
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A fast dispatcher that reports the peer address of the loopback connection each
/// time it hears `ms_handle_fast_connect` for it (and takes no message).
struct LoopbackWatch(Sender<Option<EntityAddr>>);

impl Dispatcher<Connection> for LoopbackWatch {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        if conn.is_loopback() {
            let _ = self.0.send(conn.peer_addr());
        }
    }
}

/// Adds a [`LoopbackWatch`] behind `m`'s dispatchers; returns what it hears.
fn watch_loopback(m: &Messenger) -> Receiver<Option<EntityAddr>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    m.add_dispatcher_tail(Arc::new(LoopbackWatch(tx))).expect("dispatcher");
    rx
}

/// Receives the next report of a [`LoopbackWatch`], within [`WAIT`].
fn next_told(rx: &Receiver<Option<EntityAddr>>) -> Option<EntityAddr> {
    rx.recv_timeout(WAIT).expect("ms_handle_fast_connect for the loopback connection")
}

/// A started server bound to `0.0.0.0:0` that also dials OSDs (as a lossy client), with
/// a recorder (that echoes if `echo`: not one that dials echoing peers).
fn wildcard_server(nonce: u32, echo: bool) -> (Messenger, SocketAddr, Receiver<Seen>) {
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let (m, bound, rx) =
        server_on(EntityType::OSD, nonce, Policy::stateless_server(), echo, any4, test_config(2));
    m.set_policy(EntityType::OSD, Policy::lossy_client());
    (m, bound, rx)
}

/// A started pure client (never bound) with a recorder.
fn unbound_client(nonce: u32) -> (Messenger, Receiver<Seen>) {
    client(EntityType::CLIENT, nonce, Policy::lossy_client())
}

/// `addrs` with every IP set to `ip` (ports, nonces and types kept).
fn with_ip(addrs: &EntityAddrVec, ip: IpAddr) -> EntityAddrVec {
    let mut addrs = addrs.clone();
    for a in &mut addrs.addrs {
        a.addr = Some(SocketAddr::new(ip, a.port()));
    }
    addrs
}

/// Sends one message on `conn` and waits for the peer to get it and its echo to come
/// back; returns the connection the peer got it on.
fn round_trip(
    conn: &Connection,
    tid: u64,
    srv_rx: &Receiver<Seen>,
    rx: &Receiver<Seen>,
) -> Connection {
    conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(b"hi"))).expect("send");
    let (on, m) = next_message(srv_rx);
    assert_eq!(m.tid(), tid, "the peer got it");
    let (c, m) = next_message(rx);
    assert_eq!((m.tid(), &c), (tid, conn), "the echo came back");
    on
}

/// A listener on 127.0.0.1 playing a v1 acceptor that tells every connector it sees it
/// at `says` (port 40000), then reads the 136-byte address the connector announces and
/// sends it on the channel. It holds its sockets (the connectors wait for a connect
/// reply) until the returned sender is dropped.
fn lying_v1_acceptor(says: IpAddr) -> (EntityAddr, Receiver<EntityAddr>, Sender<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let at = EntityAddr::legacy(listener.local_addr().expect("local addr"), 0);
    let (tx, announced) = crossbeam_channel::unbounded();
    let (done, until) = crossbeam_channel::bounded::<()>(0);
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    s.set_read_timeout(Some(WAIT)).expect("timeout");
                    let peer = EntityAddr::legacy(SocketAddr::new(says, 40000), 0);
                    let block = AcceptorBanner { my_addr: at, peer_addr: peer };
                    s.write_all(&block.to_bytes()).expect("banner");
                    let mut buf = [0u8; BANNER_LEN + protocol::types::LEGACY_ADDR_LEN];
                    if s.read_exact(&mut buf).is_ok() {
                        let addr = EntityAddr::decode_legacy(&buf[BANNER_LEN..]).expect("addr");
                        let _ = tx.send(addr);
                    }
                    held.push(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Polls for the next connector or the end (no sleep in the test's
                    // waits: this only paces the listener's own thread).
                    match until.recv_timeout(std::time::Duration::from_millis(5)) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    (at, announced, done)
}

/// Receives the address a connector announced to a [`lying_v1_acceptor`].
fn announced(rx: &Receiver<EntityAddr>) -> EntityAddr {
    rx.recv_timeout(WAIT).expect("the connector's address")
}

/// An unbound client's `my_addrs()` has a blank IP until its first connection, then the
/// IP its acceptor saw (127.0.0.1), with its own port (0), nonce and types; the loopback
/// connection's peer address follows and its fast dispatchers hear it; the acceptor
/// knows it by that address. Over v1 and msgr2.
#[test]
fn an_unbound_client_learns_its_ip_from_its_first_peer() {
    for (i, proto) in PROTOCOLS.into_iter().enumerate() {
        let (srv, _bound, srv_rx) = server(EntityType::OSD, 11, Policy::stateless_server(), true);
        let (cli, cli_rx) = unbound_client(22);
        let told = watch_loopback(&cli);
        let before = cli.my_addrs();
        assert!(!before.addrs.is_empty());
        assert!(before.addrs.iter().all(|a| a.is_blank_ip() && a.port() == 0 && a.nonce == 22));
        assert_eq!(next_told(&told), Some(cli.my_addr()), "told as it was added");

        let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        let on = round_trip(&conn, i as u64 + 1, &srv_rx, &cli_rx);

        let want = with_ip(&before, LOCALHOST);
        assert_eq!(cli.my_addrs(), want, "{proto:?}");
        let me = cli.my_addr();
        assert_eq!((me.addr, me.nonce), (Some(SocketAddr::new(LOCALHOST, 0)), 22), "{proto:?}");
        assert_eq!(cli.get_loopback_connection().peer_addr(), Some(me), "{proto:?}");
        assert_eq!(next_told(&told), Some(me), "{proto:?}: the fast dispatchers heard it");
        let seen = on.peer_addr().expect("the server knows the client's address");
        assert_eq!((seen.addr.map(|a| a.ip()), seen.nonce), (Some(LOCALHOST), 22), "{proto:?}");
        cli.shutdown();
        srv.shutdown();
    }
}

/// The first acceptor decides, whatever it says (Ceph trusts it:
/// `ms_learn_addr_from_peer`): a client told it is at 10.9.9.9 takes that IP; a second
/// acceptor saying 10.8.8.8 changes nothing, and is told 10.9.9.9 in the client's v1
/// address block; a real v1 or msgr2 server later hears 10.9.9.9 too (v1's address
/// block, msgr2's CLIENT_IDENT): every connect announces the messenger's address.
#[test]
fn the_first_peer_decides_and_later_connects_announce_it() {
    let first = IpAddr::from([10, 9, 9, 9]);
    let (cli, cli_rx) = unbound_client(33);
    let blank = cli.my_addrs();
    let (a1, rx1, _hold1) = lying_v1_acceptor(first);
    let _c1 = cli.connect_to(EntityType::OSD, a1);
    let got = announced(&rx1);
    assert_eq!((got.addr, got.nonce), (Some(SocketAddr::new(first, 0)), 33));
    assert_eq!(cli.my_addrs(), with_ip(&blank, first));

    let (a2, rx2, _hold2) = lying_v1_acceptor(IpAddr::from([10, 8, 8, 8]));
    let _c2 = cli.connect_to(EntityType::OSD, a2);
    let got = announced(&rx2);
    assert_eq!(
        got.addr,
        Some(SocketAddr::new(first, 0)),
        "the second connect announces the first IP"
    );
    assert_eq!(cli.my_addrs(), with_ip(&blank, first), "unchanged");

    for (i, proto) in PROTOCOLS.into_iter().enumerate() {
        let (srv, _bound, srv_rx) = server(EntityType::OSD, 11, Policy::stateless_server(), true);
        let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        let on = round_trip(&conn, i as u64 + 1, &srv_rx, &cli_rx);
        let seen = on.peer_addr().expect("peer address");
        assert_eq!((seen.addr.map(|a| a.ip()), seen.nonce), (Some(first), 33), "{proto:?}");
        assert_eq!(cli.my_addrs(), with_ip(&blank, first), "{proto:?}: unchanged");
        srv.shutdown();
    }
    cli.shutdown();
}

/// Two connections racing to tell a client different IPs: one wins, for the messenger
/// and for both connects' announced addresses (Ceph's lock and `need_addr`).
#[test]
fn racing_connections_agree_on_the_first_ip() {
    for round in 0..8u32 {
        let (cli, _cli_rx) = unbound_client(40 + round);
        let blank = cli.my_addrs();
        let ips = [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])];
        let (a1, rx1, _h1) = lying_v1_acceptor(ips[0]);
        let (a2, rx2, _h2) = lying_v1_acceptor(ips[1]);
        let _c1 = cli.connect_to(EntityType::OSD, a1);
        let _c2 = cli.connect_to(EntityType::OSD, a2);
        let (g1, g2) = (announced(&rx1), announced(&rx2));
        assert_eq!(g1, g2, "round {round}: both connects announce the winner");
        let won = g1.addr.expect("an IP").ip();
        assert!(ips.contains(&won), "round {round}: {won}");
        assert_eq!(cli.my_addrs(), with_ip(&blank, won), "round {round}");
        cli.shutdown();
    }
}

/// A peer saying we are at 0.0.0.0 teaches nothing (stricter than Ceph, which would
/// keep the blank IP for good): the client announces its blank address to it, and
/// learns from the next peer. A bound IPv4 wildcard told an IPv6 address does not take
/// it (Ceph: same family only), and that report used up its one chance, as in Ceph; the
/// connection still announces what its peer saw.
#[test]
fn a_blank_or_foreign_family_view_is_not_taken() {
    let (cli, cli_rx) = unbound_client(55);
    let blank = cli.my_addrs();
    let (a, rx, _h) = lying_v1_acceptor(IpAddr::from([0, 0, 0, 0]));
    let _c = cli.connect_to(EntityType::OSD, a);
    assert!(announced(&rx).is_blank_ip());
    assert_eq!(cli.my_addrs(), blank);
    let (srv, _bound, srv_rx) = server(EntityType::OSD, 11, Policy::stateless_server(), true);
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    round_trip(&conn, 1, &srv_rx, &cli_rx);
    assert_eq!(cli.my_addrs(), with_ip(&blank, LOCALHOST));
    cli.shutdown();

    let (wild, bound, wild_rx) = wildcard_server(66, false);
    let blank = wild.my_addrs();
    let v6: IpAddr = "2001:db8::5".parse().expect("ip");
    let (a, rx, _h) = lying_v1_acceptor(v6);
    let _c = wild.connect_to(EntityType::OSD, a);
    let got = announced(&rx);
    assert_eq!(got.addr, Some(SocketAddr::new(v6, bound.port())), "what this peer saw");
    assert_eq!(wild.my_addrs(), blank, "another family: not taken");
    let conn = wild.connect_to(EntityType::OSD, srv.my_addr());
    round_trip(&conn, 2, &srv_rx, &wild_rx);
    assert_eq!(wild.my_addrs(), blank, "the one chance was used");
    wild.shutdown();
    srv.shutdown();
}

/// A server bound to 0.0.0.0 learns 127.0.0.1 when it dials a peer, keeping its port,
/// nonce and types; its loopback connection follows; a second peer changes nothing;
/// clients dialling it at 127.0.0.1 are still served. Over v1 and msgr2.
#[test]
fn a_wildcard_bound_messenger_learns_its_ip_when_it_dials() {
    for (i, proto) in PROTOCOLS.into_iter().enumerate() {
        let tid = 10 * i as u64;
        let (wild, bound, wild_rx) = wildcard_server(77, false);
        let told = watch_loopback(&wild);
        let blank = wild.my_addrs();
        assert!(blank.addrs.iter().all(|a| a.is_blank_ip() && a.port() == bound.port()));
        assert_eq!(next_told(&told), Some(wild.my_addr()));

        let (peer, _, peer_rx) = server(EntityType::OSD, 11, Policy::stateless_server(), true);
        let conn = wild.connect_to(EntityType::OSD, addr_for(proto, peer.my_addr()));
        let on = round_trip(&conn, tid + 1, &peer_rx, &wild_rx);
        let want = with_ip(&blank, LOCALHOST);
        assert_eq!(wild.my_addrs(), want, "{proto:?}");
        assert_eq!(wild.my_addr().nonce, 77);
        assert_eq!(
            on.peer_addr().and_then(|a| a.addr),
            Some(SocketAddr::new(LOCALHOST, bound.port()))
        );
        assert_eq!(wild.get_loopback_connection().peer_addr(), Some(wild.my_addr()), "{proto:?}");
        assert_eq!(next_told(&told), Some(wild.my_addr()), "{proto:?}");

        let (other, _, other_rx) = server(EntityType::OSD, 12, Policy::stateless_server(), true);
        let conn = wild.connect_to(EntityType::OSD, addr_for(proto, other.my_addr()));
        round_trip(&conn, tid + 2, &other_rx, &wild_rx);
        assert_eq!(wild.my_addrs(), want, "{proto:?}: unchanged by a second connection");

        let (cli, _cli_rx) = unbound_client(88);
        let conn = cli.connect_to(EntityType::OSD, addr_for(proto, wild.my_addr()));
        conn.send_message(test_message(MSG_TEST, tid + 3, Bytes::from_static(b"hi")))
            .expect("send");
        let (_, m) = next_message(&wild_rx);
        assert_eq!(m.tid(), tid + 3, "{proto:?}: a client dialling 127.0.0.1 is served");
        for m in [cli, other, peer, wild] {
            m.shutdown();
        }
    }
}

/// `set_addr_unknowns` fills a wildcard-bound messenger's blank IP from the first given
/// address of its family (port, nonce and types kept), once; the loopback connection
/// follows and its fast dispatchers hear it; a peer dialled afterwards teaches nothing;
/// clients dialling 127.0.0.1 are still served (v1 and msgr2). A messenger never bound,
/// or given only another family, takes nothing.
#[test]
fn set_addr_unknowns_fills_a_wildcard_address() {
    let (wild, bound, wild_rx) = wildcard_server(99, true);
    let told = watch_loopback(&wild);
    assert_eq!(next_told(&told), Some(wild.my_addr()));
    let blank = wild.my_addrs();
    let public = IpAddr::from([10, 1, 2, 3]);
    let v6only =
        EntityAddrVec::single(EntityAddr::legacy("[2001:db8::1]:3300".parse().expect("addr"), 0));
    assert!(!wild.set_addr_unknowns(&v6only), "another family");
    let given = EntityAddrVec {
        addrs: vec![
            EntityAddr::legacy("[2001:db8::1]:3300".parse().expect("addr"), 0),
            EntityAddr::legacy(SocketAddr::new(public, 3300), 5),
        ],
    };
    assert!(wild.set_addr_unknowns(&given));
    let want = with_ip(&blank, public);
    assert_eq!(wild.my_addrs(), want);
    assert_eq!(wild.my_addr().addr, Some(SocketAddr::new(public, bound.port())));
    assert_eq!(wild.my_addr().nonce, 99);
    assert_eq!(wild.get_loopback_connection().peer_addr(), Some(wild.my_addr()));
    assert_eq!(next_told(&told), Some(wild.my_addr()));
    let again = EntityAddrVec::single(EntityAddr::legacy("10.7.7.7:1".parse().expect("addr"), 0));
    assert!(!wild.set_addr_unknowns(&again), "once");

    for (i, proto) in PROTOCOLS.into_iter().enumerate() {
        let (cli, cli_rx) = unbound_client(100 + i as u32);
        let dialled = SocketAddr::new(LOCALHOST, bound.port());
        let target = addr_for(proto, EntityAddr { addr: Some(dialled), ..wild.my_addr() });
        let conn = cli.connect_to(EntityType::OSD, target);
        round_trip(&conn, i as u64 + 1, &wild_rx, &cli_rx);
        cli.shutdown();
    }
    assert_eq!(wild.my_addrs(), want, "unchanged");

    let (cli, _rx) = unbound_client(123);
    assert!(!cli.set_addr_unknowns(&given), "never bound");
    assert!(cli.my_addrs().addrs.iter().all(|a| a.is_blank_ip()));
    cli.shutdown();
    wild.shutdown();
}

/// A real Ceph 16.2 monitor (v1) knows our client by the address the client learned
/// from it: the monitor's `sessions` (admin socket) lists our session at
/// `Messenger::my_addr()` (127.0.0.1, port 0, our nonce). Skipped without Ceph.
#[test]
fn a_real_monitor_reports_the_address_our_client_learned() {
    use messenger::MessengerConfig;
    use tests::ceph::CephMon;
    use tests::mon::MonClient;

    init_logging();
    let Some(mon) = CephMon::start("a_real_monitor_reports_the_address_our_client_learned")
        .expect("start ceph-mon")
    else {
        return;
    };
    let client = MonClient::new(mon.addr(), MessengerConfig::default()).expect("client");
    let reply = client.authenticate().expect("MAuthReply");
    assert_eq!(reply.result, 0, "{reply:?}");
    let me = client.messenger().my_addr();
    assert_eq!(me.addr, Some(SocketAddr::new(LOCALHOST, 0)), "learned from the monitor");
    let sessions: serde_json::Value =
        serde_json::from_str(&mon.admin(&["sessions"]).expect("admin sessions")).expect("json");
    // Our one client session (the monitor lists its own connection too).
    let clients: Vec<_> = sessions
        .as_array()
        .expect("session list")
        .iter()
        .filter(|s| s["con_type"] == "client")
        .collect();
    assert_eq!(clients.len(), 1, "{sessions}");
    let addrvec = &clients[0]["addrs"]["addrvec"];
    let want = serde_json::json!([{"addr": "127.0.0.1:0", "nonce": me.nonce, "type": "v1"}]);
    assert_eq!(*addrvec, want, "the monitor knows us at our address: {sessions}");
    client.messenger().shutdown();
}

/// The fast dispatchers hear a learned address on the worker of the connection that
/// learned it; a shutdown (and a `wait`) from a thread of no messenger with a pool of
/// its own returns only once that hook did (it joins the workers): none runs after.
#[test]
fn a_shutdown_returns_after_the_learned_address_s_fast_connect() {
    let (srv, _bound, _srv_rx) = server(EntityType::OSD, 12, Policy::stateless_server(), true);
    let (cli, _cli_rx) = unbound_client(24);
    let cli = Arc::new(cli);
    let held = held_loopback_connect();
    // Told as it is added (here): armed after, for the learned address only.
    cli.add_dispatcher_head(held.hook.clone()).expect("fast dispatcher");
    held.hook.arm();
    let _conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    shutdown_waits_for_the_held_hook(&cli, &held);
    srv.shutdown();
}
