//! Who a peer authenticated as, on the accepting side (Ceph's `peer_name`,
//! `peer_global_id` and `peer_caps_info`): a cephx client's ticket names it, its global
//! id and its caps for the service, over msgr v1 (the connect's authorizer) and msgr2
//! (the AUTH frames); the dialling side has none. Loopback, port 0.

use std::net::SocketAddr;

use bytes::Bytes;
use messenger::{Policy, ProtocolVersion};
use protocol::auth::cephx::ticket::AuthCapsInfo;
use protocol::types::{AuthEntityName, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::loopback::{addr_for, client_with, next_message, server_on, test_config, test_message};

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
