//! Who a peer authenticated as, on the accepting side (Ceph's `peer_name`,
//! `peer_global_id` and `peer_caps_info`): a cephx client's ticket names it, its global
//! id and its caps for the service, over msgr v1 (the connect's authorizer) and msgr2
//! (the AUTH frames); the dialling side has none. Loopback, port 0.

use std::net::SocketAddr;

use bytes::Bytes;
use messenger::{Messenger, Policy, ProtocolVersion};
use protocol::auth::cephx::ticket::AuthCapsInfo;
use protocol::types::{AuthEntityName, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::hostile::peer_issues;
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

// A peer that authenticated as client.8 but announces the address of client.7's session
// (same IP, port and nonce) is refused: by the address alone it would reset that
// session (it looks like client.7 restarted) and take its place, or, lossless and with
// its cookie, resume it and receive its messages. Ceph decides by the address only.
fn foreign_claim_refused(proto: ProtocolVersion) {
    let osd = EntityName::new(EntityType::OSD, 0);
    let alice = EntityName::new(EntityType::CLIENT, 7);
    let eve = EntityName::new(EntityType::CLIENT, 8);
    let mut cluster = TestCluster::new(&[osd, alice, eve], 43);
    let config = |p| test_config(1).with_auth_provider(p);
    let (srv, _, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        true,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config(cluster.provider(osd, None)),
    );
    let (cli, cli_rx) = client_with(
        EntityType::CLIENT,
        7,
        Policy::lossless_client(),
        config(cluster.provider(alice, None)),
    );
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);
    assert_eq!(next_message(&cli_rx).1.tid(), 1);
    assert_eq!(
        served.peer_auth().expect("authenticated").name,
        AuthEntityName::new(EntityType::CLIENT, "7")
    );

    // Nonce 7 as well, and no listener: the server sees client.7's address.
    let issues = peer_issues(&srv);
    let attacker = Messenger::new(eve, 7, config(cluster.provider(eve, None))).expect("messenger");
    attacker.set_default_policy(Policy::lossless_client());
    attacker.start().expect("start");
    let (rec, _attacker_rx) = Recorder::new(false);
    attacker.add_dispatcher_head(rec).expect("dispatcher");
    let hijack = attacker.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    hijack.send_message(test_message(MSG_TEST, 100, Bytes::new())).expect("send");
    wait_until(|| peer_issues(&srv) > issues, || "the claim was not refused".into());

    // Client.7's session goes on where it was, and nothing of the attacker's arrived.
    conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    loop {
        match srv_rx.recv_timeout(WAIT).expect("the server saw nothing more") {
            Seen::Message(c, m) if m.tid() == 2 => {
                assert_eq!(c, served, "client.7's message came on another connection");
                break;
            }
            Seen::Message(_, m) => panic!("the attacker's message {} was taken", m.tid()),
            Seen::Reset(c) | Seen::RemoteReset(c) if c == served => {
                panic!("client.7's session was reset")
            }
            _ => {}
        }
    }
    assert_eq!(next_message(&cli_rx).1.tid(), 2);
    attacker.shutdown();
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_peer_claiming_another_entitys_session_is_refused_over_msgr1() {
    foreign_claim_refused(ProtocolVersion::V1);
}

#[test]
fn a_peer_claiming_another_entitys_session_is_refused_over_msgr2() {
    foreign_claim_refused(ProtocolVersion::V2);
}
