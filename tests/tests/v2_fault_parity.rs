//! How a msgr2 session faults, against Ceph's `ProtocolV2::_fault` (src/msg/async/
//! ProtocolV2.cc): each test drives one fault through a real messenger and checks what
//! a user sees (dials, callbacks, connection state) against what Ceph does.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{ConnState, Connection, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Reconnects must not wait long: a dial loop shows within a few hundred ms.
fn quick_config() -> MessengerConfig {
    backoff_config(Duration::from_millis(5), Duration::from_millis(50))
}

/// A TCP listener on loopback that accepts every connection and closes it at once
/// (the peer's end of a handshake that faults on the transport). Each accept is
/// reported on the returned channel.
fn closing_listener() -> (SocketAddr, Receiver<()>) {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Waits until `c` is in `state`.
fn wait_state(c: &Connection, state: ConnState, what: &str) {
    wait_until(|| c.state() == state, || format!("{what}: {c:?} never reached {state:?}"));
}

/// A connection whose policy is a server one (Ceph's `stateful_server`, what an OSD
/// holds for its clients) that dials out and faults in its handshake goes to STANDBY:
/// ProtocolV2's `_fault` ("server, going to standby, even though i have stuff queued")
/// parks every server-policy connection it does not reset or close, in whatever state
/// it faulted, and a server never dials its peer again (`write_event` connects from
/// STANDBY only `!policy.server`). Before, ours retried with backoff for ever, a dial
/// loop Ceph does not have.
#[test]
fn a_server_policy_connector_faulting_in_its_handshake_goes_standby() {
    let (peer, dials) = closing_listener();
    let (m, _rx) = client_with(EntityType::OSD, 7, Policy::stateful_server(), quick_config());
    let addr = addr_for(ProtocolVersion::V2, EntityAddr::legacy(peer, 1));
    let conn = m.connect_to(EntityType::OSD, addr);
    // A lossless message waits: Ceph's server check comes after the standby one, and
    // parks the connection even with it queued.
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    dials.recv_timeout(WAIT).expect("the first dial");
    wait_state(&conn, ConnState::Standby, "server-policy connector");
    // Backoff is at most 50 ms: a retry would come well within this.
    assert!(
        dials.recv_timeout(Duration::from_millis(500)).is_err(),
        "a server-policy connection dialled its peer again: {conn:?}"
    );
    assert_eq!(conn.state(), ConnState::Standby);
    m.shutdown();
}

/// The acceptor's HELLO names another entity type than the one dialled (an OSD now
/// listens where a monitor was): ProtocolV2's `handle_hello` stops the connection and
/// queues its reset ("connection peer type does not match what peer advertises":
/// `stop()`, `queue_reset`), lossless or not, so the user hears `ms_handle_reset` and
/// can look elsewhere (a MonClient hunts another monitor). Before, ours took it for a
/// fault of the handshake and redialled the wrong daemon with backoff for ever, the
/// message queued and no callback.
#[test]
fn a_hello_naming_another_entity_type_resets_the_connection() {
    let (srv, srv_addr, _srx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let (cli, crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), quick_config());
    let addr = addr_for(ProtocolVersion::V2, EntityAddr::legacy(srv_addr, 1));
    let conn = cli.connect_to(EntityType::MON, addr);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    wait_for_reset(&crx, &conn);
    wait_state(&conn, ConnState::Closed, "connector to the wrong entity type");
    cli.shutdown();
    srv.shutdown();
}

/// What a parked server-policy connector queued is not stuck: once the peer dials in,
/// the acceptor takes the parked session over (Ceph's `handle_existing_connection`:
/// an existing STANDBY connection is reused) and the message goes out on it, once.
#[test]
fn a_parked_server_policy_connector_sends_once_its_peer_dials_in() {
    // A port nobody listens on yet: the first dial is refused.
    let reserved = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let b_port = reserved.local_addr().expect("addr");
    drop(reserved);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (a, _, a_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, any, quick_config());
    let to_b = addr_for(ProtocolVersion::V2, EntityAddr::legacy(b_port, 2));
    let a_conn = a.connect_to(EntityType::OSD, to_b);
    a_conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    wait_state(&a_conn, ConnState::Standby, "server-policy connector");
    let (b, _, b_rx) =
        server_on(EntityType::OSD, 2, Policy::lossless_peer(), false, b_port, quick_config());
    let b_conn = b.connect_to(EntityType::OSD, addr_for(ProtocolVersion::V2, a.my_addr()));
    b_conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    let (_, m) = next_message(&a_rx);
    assert_eq!(m.tid(), 2);
    let (_, m) = next_message(&b_rx);
    assert_eq!(m.tid(), 1, "the parked message");
    assert_no_more_messages(&b_rx, "the parked message came twice");
    a.shutdown();
    b.shutdown();
}
