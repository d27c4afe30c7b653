//! Sessions of the two protocols meeting under one session-table key: an msgr2
//! CLIENT_IDENT that lists only a v1 address is looked up under that address, where a
//! v1 session may be (and a v1 connect from that address then finds the msgr2 one).
//! Ceph never decides such a connect against the other protocol's session: both
//! `ProtocolV2::handle_client_ident` / `handle_reconnect` and
//! `ProtocolV1::handle_connect_message_2` mark an existing connection of the other
//! protocol down (`existing->mark_down()`, silent) and go on as if there were none.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;

use messenger::{ConnState, Connection, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType};
use protocol::v2::frames::MsgHeader2;
use protocol::v2::Tag as V2Tag;
use tests::hostile::*;
use tests::hostile_v2::*;
use tests::loopback::*;

/// The next `ms_handle_accept`'s connection (other callbacks are skipped).
fn next_accept(rx: &crossbeam_channel::Receiver<Seen>) -> Connection {
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(Seen::Accept(c)) => return c,
            Ok(_) => {}
            Err(e) => panic!("no accept: {e}"),
        }
    }
}

/// The tid of the next MESSAGE frame on `sock` (keepalives and acks skipped).
fn next_message_tid(sock: &mut std::net::TcpStream) -> u64 {
    loop {
        let (tag, seg) = read_frame(sock).expect("a frame");
        if tag == V2Tag::MESSAGE {
            return MsgHeader2::decode(&seg).expect("header2").tid;
        }
        assert!(
            [V2Tag::ACK, V2Tag::KEEPALIVE2, V2Tag::KEEPALIVE2_ACK].contains(&tag),
            "unexpected {tag:?}"
        );
    }
}

// A lossless v1 session is open, and its peer holds a message of ours it has not
// acknowledged. An msgr2 CLIENT_IDENT listing only the v1 peer's address arrives. Ceph
// marks the v1 session down and opens a new msgr2 session (a new connection, nothing
// queued on it). Ours decided the ident by msgr2's rules against the v1 session's
// snapshot (client cookie 0, open: "keep") and moved the v1 session into the msgr2
// machine: the v1 connection carried on over msgr2, and the message the v1 peer already
// had was sent again, renumbered, to the msgr2 one.
#[test]
fn an_msgr2_ident_listing_a_v1_sessions_address_marks_that_session_down() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _bound, rx) =
        server_on(EntityType::OSD, 3, Policy::stateful_server(), false, loopback, test_config(2));
    let server_v1 = addr_for(ProtocolVersion::V1, srv.my_addr());
    let server_v2 = addr_for(ProtocolVersion::V2, srv.my_addr());

    let mut v1_peer = RawPeer::handshake_as(server_v1, Policy::lossless_client(), 77);
    let v1_conn = next_accept(&rx);
    v1_conn.send_message(test_message(0x7f00, 1, Bytes::from_static(b"for v1"))).expect("send");
    assert_eq!(v1_peer.receive(1).expect("the v1 peer gets it").len(), 1);
    // The key the server registered the v1 session under: the v1 peer's banner address,
    // its blank IP filled in from the socket.
    let v1_key = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 77);

    let mut v2 = v2_socket_at_ident(server_v2, v2_peer_addr(78), Policy::lossless_client());
    v2.write_all(&ident_listing(server_v2, vec![v1_key], 0, 100)).expect("ident");
    let (tag, _) = read_frame(&mut v2).expect("the ident's answer");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let v2_conn = next_accept(&rx);
    v2_conn.send_message(test_message(0x7f00, 2, Bytes::from_static(b"for v2"))).expect("send");
    assert_eq!(
        next_message_tid(&mut v2),
        2,
        "the v1 session's message, which the v1 peer had, was sent again to the msgr2 peer"
    );
    assert_ne!(v2_conn, v1_conn, "the msgr2 ident took the v1 session over");
    wait_until(
        || v1_conn.state() == ConnState::Closed,
        || "the v1 session is not marked down".into(),
    );
    srv.shutdown();
}

// The other way round: an msgr2 session registered under a v1 address (its ident listed
// only that one), then a v1 connect from that address. Ceph's handle_connect_message_2
// marks the msgr2 session down and opens a new v1 session; ours decided the connect by
// v1's rules against the msgr2 session's snapshot, and moved the msgr2 session into the
// v1 machine.
#[test]
fn a_v1_connect_from_an_msgr2_sessions_address_marks_that_session_down() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _bound, rx) =
        server_on(EntityType::OSD, 4, Policy::stateful_server(), false, loopback, test_config(2));
    let server_v1 = addr_for(ProtocolVersion::V1, srv.my_addr());
    let server_v2 = addr_for(ProtocolVersion::V2, srv.my_addr());
    let v1_key = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 79);

    let mut v2 = v2_socket_at_ident(server_v2, v2_peer_addr(80), Policy::lossless_client());
    v2.write_all(&ident_listing(server_v2, vec![v1_key], 0xE, 1)).expect("ident");
    let (tag, _) = read_frame(&mut v2).expect("the ident's answer");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let v2_conn = next_accept(&rx);
    v2_conn.send_message(test_message(0x7f00, 1, Bytes::from_static(b"for v2"))).expect("send");
    assert_eq!(next_message_tid(&mut v2), 1);

    let mut v1_peer = RawPeer::handshake_as(server_v1, Policy::lossless_client(), 79);
    let v1_conn = next_accept(&rx);
    v1_conn.send_message(test_message(0x7f00, 2, Bytes::from_static(b"for v1"))).expect("send");
    let got = v1_peer.receive(1).expect("a message for the v1 peer");
    assert_eq!(
        got[0].tid(),
        2,
        "the msgr2 session's message, which the msgr2 peer had, was sent again to the v1 peer"
    );
    assert_ne!(v1_conn, v2_conn, "the v1 connect took the msgr2 session over");
    wait_until(
        || v2_conn.state() == ConnState::Closed,
        || "the msgr2 session is not marked down".into(),
    );
    srv.shutdown();
}
