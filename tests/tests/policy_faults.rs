//! Connection policies against Ceph's semantics (`src/msg/Policy.h`, and how
//! `ProtocolV1`/`ProtocolV2` act on them): what wakes a session parked in standby.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityType};
use tests::chaos::{ChaosConfig, ChaosProxy};
use tests::loopback::*;

use ProtocolVersion::{V1, V2};

const MSG_TEST: u16 = 0x7f00;

/// Reconnects must not wait long (as the chaos tests').
fn chaos_config() -> MessengerConfig {
    backoff_config(Duration::from_millis(5), Duration::from_millis(100))
}

/// The proxy's address for `srv` over `proto`.
fn through(proxy: &ChaosProxy, srv: &Messenger, proto: ProtocolVersion) -> EntityAddr {
    addr_for(proto, EntityAddr::legacy(proxy.addr(), srv.my_addr().nonce))
}

/// Waits until `c` is in `state`.
fn wait_state(c: &Connection, state: messenger::ConnState, what: &str) {
    wait_until(|| c.state() == state, || format!("{what}: {c:?} never reached {state:?}"));
}

/// Callbacks `rx` gets within a short grace period.
fn quiet(rx: &Receiver<Seen>) -> Vec<String> {
    let mut got = Vec::new();
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = rx.recv_deadline(grace) {
        got.push(match seen {
            Seen::Message(c, m) => format!("msg {} tid={}", c.id(), m.tid()),
            other => format!("{other:?}"),
        });
    }
    got
}

/// A standby session dials for a message, not for a keepalive. Ceph's `send_keepalive`
/// only sets the flag and wakes the writer, whose STANDBY branch connects when
/// `is_queued()` (messages in `out_q`, or bytes in the outgoing buffer), which a
/// keepalive is not (ProtocolV1/ProtocolV2 `write_event`): the keepalive waits for the
/// next message's dial and goes out with it.
fn a_keepalive_does_not_wake_standby(proto: ProtocolVersion) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, srv_addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), true, any, chaos_config());
    let proxy = ChaosProxy::start(srv_addr, ChaosConfig::new(0)).expect("proxy");
    let (cli, cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_peer(), chaos_config());
    let conn = cli.connect_to(EntityType::OSD, through(&proxy, &srv, proto));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (_, m) = next_message(&cli_rx);
    assert_eq!(m.tid(), 1);
    let (s1, _) = next_message(&srv_rx);
    wait_until(|| conn.queued_send_bytes() == 0, || "client acked".into());
    wait_until(|| s1.queued_send_bytes() == 0, || "server acked".into());
    proxy.cut_now(tests::chaos::CutKind::Reset);
    wait_state(&conn, messenger::ConnState::Standby, "client");
    let before = s1.last_keepalive();
    conn.send_keepalive();
    assert_eq!(quiet(&cli_rx), Vec::<String>::new(), "{proto:?}: client callbacks");
    assert_eq!(conn.state(), messenger::ConnState::Standby, "{proto:?}: a keepalive woke it");
    assert_eq!(proxy.stats().links, 1, "{proto:?}: a keepalive dialled");
    // The next message dials, once, and carries the keepalive.
    conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    let (c, m) = next_message(&cli_rx);
    assert_eq!((c, m.tid()), (conn.clone(), 2));
    wait_until(|| s1.last_keepalive() > before, || format!("{proto:?}: no keepalive came"));
    assert_eq!(proxy.stats().links, 2, "{proto:?}");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_keepalive_does_not_wake_a_standby_session_v1() {
    a_keepalive_does_not_wake_standby(V1);
}

#[test]
fn a_keepalive_does_not_wake_a_standby_session_v2() {
    a_keepalive_does_not_wake_standby(V2);
}
