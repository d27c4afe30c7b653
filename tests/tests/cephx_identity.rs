//! Who a peer authenticated as, on the accepting side (Ceph's `peer_name`,
//! `peer_global_id` and `peer_caps_info`): a cephx client's ticket names it, its global
//! id and its caps for the service, over msgr v1 (the connect's authorizer) and msgr2
//! (the AUTH frames); a session only ever dialled has none, and a session we redial keeps
//! the name its peer proved when it connected to us. Loopback, port 0.

use std::net::SocketAddr;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{ConnState, Connection, Messenger, Policy, ProtocolVersion};
use protocol::auth::cephx::ticket::AuthCapsInfo;
use protocol::types::{AuthEntityName, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::hostile::RawPeer;
use tests::loopback::{
    addr_for, client_with, next_message, server_on, test_config, test_message, wait_until,
    Recorder, Seen, WAIT,
};

const MSG_TEST: u16 = 0x7f00;

fn peer_auth_over(proto: ProtocolVersion) {
    let osd = EntityName::new(EntityType::OSD, 0);
    let client = EntityName::new(EntityType::CLIENT, 7);
    let mut cluster = TestCluster::new(&[osd, client], 42);
    let config = |p| test_config(1).with_auth_provider(p);
    let (srv, _, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config(cluster.provider(osd, None)),
    );
    let (cli, _cli_rx) = client_with(
        EntityType::CLIENT,
        7,
        Policy::lossy_client(),
        config(cluster.provider(client, None)),
    );
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, m) = next_message(&srv_rx);
    assert_eq!(m.tid(), 1);
    assert_eq!(served.protocol(), Some(proto));
    let who = served.peer_auth().expect("the accepted peer authenticated");
    assert_eq!(who.name, AuthEntityName::new(EntityType::CLIENT, "7"));
    // TestCluster numbers its providers from 5000: the daemon's, then the client's.
    assert_eq!(who.global_id, 5001);
    assert_eq!(who.caps, AuthCapsInfo::from_cap_string("allow *"), "the ticket's osd caps");
    assert_eq!(conn.peer_auth(), None, "the dialling side authenticates nobody");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn an_accepted_cephx_peer_is_known_by_its_ticket_over_msgr1() {
    peer_auth_over(ProtocolVersion::V1);
}

#[test]
fn an_accepted_cephx_peer_is_known_by_its_ticket_over_msgr2() {
    peer_auth_over(ProtocolVersion::V2);
}

/// The server's `identity_refused` count (perf dump, `msgr_protocol`).
fn refused(m: &Messenger) -> u64 {
    m.counters_json()["msgr_protocol"]["identity_refused"].as_u64().unwrap_or(0)
}

/// client.7 with a session to a cephx OSD server (`server_policy`), one round trip done,
/// and client.8's messenger under client.7's nonce (so, unbound, its address too).
struct Claim {
    srv: Messenger,
    srv_rx: Receiver<Seen>,
    cli: Messenger,
    cli_rx: Receiver<Seen>,
    /// client.7's connection, and the server's side of it.
    conn: Connection,
    served: Connection,
    other: Messenger,
}

fn claim_scene(proto: ProtocolVersion, server_policy: Policy, client_policy: Policy) -> Claim {
    let osd = EntityName::new(EntityType::OSD, 0);
    let alice = EntityName::new(EntityType::CLIENT, 7);
    let eve = EntityName::new(EntityType::CLIENT, 8);
    let mut cluster = TestCluster::new(&[osd, alice, eve], 43);
    let config = |p| test_config(1).with_auth_provider(p);
    let (srv, _, srv_rx) = server_on(
        EntityType::OSD,
        1,
        server_policy,
        true,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config(cluster.provider(osd, None)),
    );
    let (cli, cli_rx) =
        client_with(EntityType::CLIENT, 7, client_policy, config(cluster.provider(alice, None)));
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);
    assert_eq!(next_message(&cli_rx).1.tid(), 1);
    assert_eq!(
        served.peer_auth().expect("authenticated").name,
        AuthEntityName::new(EntityType::CLIENT, "7")
    );
    let other = Messenger::new(eve, 7, config(cluster.provider(eve, None))).expect("messenger");
    other.set_default_policy(client_policy);
    other.start().expect("start");
    let (rec, _rx) = Recorder::new(false);
    other.add_dispatcher_head(rec).expect("dispatcher");
    Claim { srv, srv_rx, cli, cli_rx, conn, served, other }
}

impl Claim {
    fn shutdown(self) {
        self.other.shutdown();
        self.cli.shutdown();
        self.srv.shutdown();
    }
}

// A peer that authenticated as client.8 but announces the address of client.7's session
// (same IP, port and nonce) is refused: by the address alone it would reset that
// session (it looks like client.7 restarted) and take its place, or, lossless and with
// its cookie, resume it and receive its messages. Ceph decides by the address only.
fn foreign_claim_refused(proto: ProtocolVersion) {
    let c = claim_scene(proto, Policy::stateful_server(), Policy::lossless_client());
    // Nonce 7 as well, and no listener: the server sees client.7's address.
    let hijack = c.other.connect_to(EntityType::OSD, addr_for(proto, c.srv.my_addr()));
    hijack.send_message(test_message(MSG_TEST, 100, Bytes::new())).expect("send");
    wait_until(|| refused(&c.srv) > 0, || "the claim was not refused".into());

    // Client.7's session goes on where it was, and nothing of the attacker's arrived.
    c.conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    loop {
        match c.srv_rx.recv_timeout(WAIT).expect("the server saw nothing more") {
            Seen::Message(conn, m) if m.tid() == 2 => {
                assert_eq!(conn, c.served, "client.7's message came on another connection");
                break;
            }
            Seen::Message(_, m) => panic!("the attacker's message {} was taken", m.tid()),
            Seen::Reset(conn) | Seen::RemoteReset(conn) if conn == c.served => {
                panic!("client.7's session was reset")
            }
            _ => {}
        }
    }
    assert_eq!(next_message(&c.cli_rx).1.tid(), 2);
    c.shutdown();
}

#[test]
fn a_peer_claiming_another_entitys_session_is_refused_over_msgr1() {
    foreign_claim_refused(ProtocolVersion::V1);
}

#[test]
fn a_peer_claiming_another_entitys_session_is_refused_over_msgr2() {
    foreign_claim_refused(ProtocolVersion::V2);
}

// A stateless server's sessions share nothing: a peer authenticated as client.8 that
// announces client.7's address opens a session of its own (its message is delivered),
// but the address stays client.7's session, which goes on untouched.
fn stateless_foreign_claim_opens_unregistered(proto: ProtocolVersion) {
    let c = claim_scene(proto, Policy::stateless_server(), Policy::lossy_client());
    let second = c.other.connect_to(EntityType::OSD, addr_for(proto, c.srv.my_addr()));
    second.send_message(test_message(MSG_TEST, 100, Bytes::new())).expect("send");
    loop {
        match c.srv_rx.recv_timeout(WAIT).expect("the second peer's message") {
            Seen::Message(conn, m) if m.tid() == 100 => {
                assert_ne!(conn, c.served, "client.8's message came on client.7's session");
                break;
            }
            Seen::Reset(conn) | Seen::RemoteReset(conn) if conn == c.served => {
                panic!("client.7's session was reset")
            }
            _ => {}
        }
    }
    let key = c.served.peer_addr().expect("client.7's address");
    assert_eq!(c.srv.connect_to(EntityType::CLIENT, key), c.served, "the address changed hands");
    c.conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    let (conn, m) = next_message(&c.srv_rx);
    assert_eq!((conn, m.tid()), (c.served.clone(), 2));
    c.shutdown();
}

#[test]
fn a_stateless_server_opens_another_entitys_claim_without_giving_it_the_address() {
    stateless_foreign_claim_opens_unregistered(ProtocolVersion::V1);
}

#[test]
fn a_stateless_server_opens_another_entitys_claim_without_giving_it_the_address_over_msgr2() {
    stateless_foreign_claim_opens_unregistered(ProtocolVersion::V2);
}

/// osd.0 (`a`, a recorder that does not echo) and osd.1 (`b`, a recorder echoing if
/// `b_echoes`), both lossless peers bound on loopback with their cephx providers.
fn two_osds(
    cluster: &mut TestCluster,
    osd0: EntityName,
    osd1: EntityName,
    b_echoes: bool,
) -> (Messenger, Receiver<Seen>, Messenger, Receiver<Seen>) {
    let config = |p| test_config(1).with_auth_provider(p);
    let (a, _, a_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::lossless_peer(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config(cluster.provider(osd0, None)),
    );
    let b = Messenger::new(osd1, 2, config(cluster.provider(osd1, None))).expect("messenger");
    b.set_default_policy(Policy::lossless_peer());
    b.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    b.start().expect("start");
    let (rec, b_rx) = Recorder::new(b_echoes);
    b.add_dispatcher_head(rec).expect("dispatcher");
    (a, a_rx, b, b_rx)
}

// osd.0 dialled osd.1, so its session there has no proven name. A peer with client.8's
// ticket that announces osd.1's address and claims to be an OSD is refused: a session
// we know as an OSD's is not taken by a client's ticket (by the address alone it reset
// the session, as if osd.1 had restarted, and took its place).
fn dialled_session_kept_from_another_type(proto: ProtocolVersion) {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let eve = EntityName::new(EntityType::CLIENT, 8);
    let mut cluster = TestCluster::new(&[osd0, osd1, eve], 45);
    let (a, a_rx, b, b_rx) = two_osds(&mut cluster, osd0, osd1, true);
    let b_addr = addr_for(proto, b.my_addr());
    let dialled = a.connect_to(EntityType::OSD, b_addr);
    dialled.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    assert_eq!(next_message(&b_rx).1.tid(), 1);
    assert_eq!(next_message(&a_rx).1.tid(), 1, "the echo");

    let cfg = protocol::Config::new(osd1, b_addr).with_auth(cluster.provider(eve, None));
    let claim = RawPeer::try_handshake_with(
        addr_for(proto, a.my_addr()),
        Policy::lossless_peer(),
        std::sync::Arc::new(cfg),
    );
    assert!(claim.is_err(), "a client's ticket opened a session under osd.1's address");
    assert!(refused(&a) >= 1, "closed, but not as a refusal: {}", a.counters_json());

    dialled.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    assert_eq!(next_message(&b_rx).1.tid(), 2);
    loop {
        match a_rx.recv_timeout(WAIT).expect("the echo of 2") {
            Seen::Message(c, m) if m.tid() == 2 => {
                assert_eq!(c, dialled);
                break;
            }
            Seen::Reset(c) | Seen::RemoteReset(c) if c == dialled => {
                panic!("the session to osd.1 was reset")
            }
            _ => {}
        }
    }
    b.shutdown();
    a.shutdown();
}

#[test]
fn a_dialled_osd_session_is_not_taken_by_a_clients_ticket_over_msgr1() {
    dialled_session_kept_from_another_type(ProtocolVersion::V1);
}

#[test]
fn a_dialled_osd_session_is_not_taken_by_a_clients_ticket_over_msgr2() {
    dialled_session_kept_from_another_type(ProtocolVersion::V2);
}

// osd.1 dialled osd.0 and proved its name there; then the socket broke and osd.0,
// having something to send, dialled osd.1 back, so the session's last open learnt no
// name. It still says osd.1: a peer with osd.2's ticket that announces osd.1's address
// is refused, as it was before the redial. (Were the name forgotten, only the type
// would be checked, and osd.2 is an OSD: by the address it took osd.1's session over,
// as if osd.1 had restarted, and the session then carried osd.2's name.)
fn redialled_session_keeps_proven_name(proto: ProtocolVersion) {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let osd2 = EntityName::new(EntityType::OSD, 2);
    let mut cluster = TestCluster::new(&[osd0, osd1, osd2], 46);
    let (a, a_rx, b, b_rx) = two_osds(&mut cluster, osd0, osd1, false);
    let b_addr = addr_for(proto, b.my_addr());
    let dialling = b.connect_to(EntityType::OSD, addr_for(proto, a.my_addr()));
    dialling.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (accepted, m) = next_message(&a_rx);
    assert_eq!(m.tid(), 1);
    let proven = AuthEntityName::new(EntityType::OSD, "1");
    assert_eq!(accepted.peer_auth().expect("osd.1 authenticated").name, proven);

    // Nothing left unacknowledged on osd.1's side: after the cut it parks in standby,
    // and only osd.0 dials.
    wait_until(
        || dialling.queued_send_bytes() == 0,
        || "osd.0 never acknowledged message 1".into(),
    );
    accepted.inject_socket_failure();
    wait_until(
        || accepted.state() == ConnState::Standby && dialling.state() == ConnState::Standby,
        || format!("not both in standby: {:?}, {:?}", accepted.state(), dialling.state()),
    );
    let dials = (a.v1_counters().connects, b.v1_counters().connects);
    accepted.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    // Open again (its state says so once what the open learnt is published).
    wait_until(
        || accepted.is_connected(),
        || format!("osd.0's session to osd.1 did not open again: {:?}", accepted.state()),
    );
    assert!(a.v1_counters().connects > dials.0, "osd.0 did not dial");
    assert_eq!(b.v1_counters().connects, dials.1, "osd.1 dialled too");
    let (on, m) = next_message(&b_rx);
    assert_eq!((on, m.tid()), (dialling.clone(), 2), "osd.1's session did not go on");

    let before = refused(&a);
    let cfg = protocol::Config::new(osd1, b_addr).with_auth(cluster.provider(osd2, None));
    let claim = RawPeer::try_handshake_with(
        addr_for(proto, a.my_addr()),
        Policy::lossless_peer(),
        std::sync::Arc::new(cfg),
    );
    assert!(claim.is_err(), "osd.2's ticket opened a session under osd.1's address");
    assert_eq!(refused(&a), before + 1, "closed, but not as a refusal: {}", a.counters_json());
    assert_eq!(accepted.peer_auth().map(|p| p.name), Some(proven), "the name was forgotten");

    accepted.send_message(test_message(MSG_TEST, 3, Bytes::new())).expect("send");
    loop {
        match b_rx.recv_timeout(WAIT).expect("message 3") {
            Seen::Message(c, m) if m.tid() == 3 => {
                assert_eq!(c, dialling, "message 3 came on another connection");
                break;
            }
            Seen::Reset(c) | Seen::RemoteReset(c) if c == dialling => {
                panic!("osd.1's session was reset")
            }
            _ => {}
        }
    }
    b.shutdown();
    a.shutdown();
}

#[test]
fn a_session_we_redialled_keeps_the_name_its_peer_proved_over_msgr1() {
    redialled_session_keeps_proven_name(ProtocolVersion::V1);
}

#[test]
fn a_session_we_redialled_keeps_the_name_its_peer_proved_over_msgr2() {
    redialled_session_keeps_proven_name(ProtocolVersion::V2);
}

/// Under auth none the accepted peer is whom its authorizer names, every cap granted (as
/// Ceph's auth-none handlers record `peer_name` and `peer_global_id`): over msgr v1 the
/// connect's authorizer, over msgr2 the AUTH_REQUEST.
fn auth_none_peer_over(proto: ProtocolVersion) {
    let (srv, _, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        test_config(1),
    );
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 7, Policy::lossy_client(), test_config(1));
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);
    assert_eq!(served.protocol(), Some(proto));
    let who = served.peer_auth().expect("the authorizer named the peer");
    assert_eq!(who.name, AuthEntityName::new(EntityType::CLIENT, "7"), "{who:?}");
    assert_eq!(who.caps, AuthCapsInfo::allow_all());
    assert_eq!(conn.peer_auth(), None, "the dialling side authenticates nobody");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn an_accepted_auth_none_peer_is_whom_its_authorizer_names_over_msgr1() {
    auth_none_peer_over(ProtocolVersion::V1);
}

#[test]
fn an_accepted_auth_none_peer_is_whom_its_authorizer_names_over_msgr2() {
    auth_none_peer_over(ProtocolVersion::V2);
}

/// An auth-none v1 authorizer that does not decode is refused with BADAUTHORIZER, as a
/// Ceph 16.2 OSD refuses it (`interop_osd_auth_none`); a whole one opens a session that
/// names its peer.
#[test]
fn a_v1_auth_none_authorizer_that_does_not_decode_is_refused() {
    use protocol::types::AUTH_NONE;
    use protocol::wire::Tag;
    use tests::hostile::{fresh_banner_socket, objecter_connect};
    let (srv, bound, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        test_config(1),
    );
    let whole = protocol::auth::AuthNoneAuthorizer::new(
        &AuthEntityName::new(EntityType::CLIENT, "admin"),
        4107,
    );
    let whole = protocol::auth::AuthorizerClient::bytes(&whole);
    let mut cut = fresh_banner_socket(bound);
    let (reply, _) = objecter_connect(
        &mut cut,
        protocol::types::Features::PACIFIC_ADVERTISED,
        AUTH_NONE,
        &whole[..7],
    );
    assert_eq!(reply.tag, Tag::BADAUTHORIZER, "{reply:?}");
    let mut sock = fresh_banner_socket(bound);
    let (reply, _) = objecter_connect(
        &mut sock,
        protocol::types::Features::PACIFIC_ADVERTISED,
        AUTH_NONE,
        &whole,
    );
    assert!(matches!(reply.tag, Tag::SEQ | Tag::READY), "{reply:?}");
    let rejected = srv.counters_json()["msgr_protocol"]["authorizers_rejected"].as_u64();
    assert_eq!(rejected, Some(1), "{}", srv.counters_json()["msgr_protocol"]);
    drop((sock, cut, srv_rx));
    srv.shutdown();
}
