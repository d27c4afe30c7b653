//! A panic in a connection's driver (here a user's fast dispatcher) ends that
//! connection only, and cleanly: the session table, the connection list and the
//! worker's load forget it, and the same peer can connect again and work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy, ProtocolVersion};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
const POISON: u64 = 13;

/// Echoes on the worker (fast dispatch), and panics on the poisoned tid.
struct PanickyEcho;

impl Dispatcher<Connection> for PanickyEcho {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        assert_ne!(msg.tid(), POISON, "the dispatcher panics on the poisoned message");
        let mut reply = Message::new(msg.msg_type(), msg.front().clone());
        reply.set_tid(msg.tid());
        let _ = conn.send_message(reply);
    }
}

// Ceph's AsyncConnection has no such case (a throwing dispatcher aborts the daemon);
// our event center survives a panicking handler, so the driver must clean up after it.
fn a_panicking_fast_dispatcher_leaves_no_zombie_and_the_peer_reconnects_over(
    proto: ProtocolVersion,
) {
    let srv =
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("messenger");
    srv.set_default_policy(Policy::stateful_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    srv.add_dispatcher_head(Arc::new(PanickyEcho)).expect("dispatcher");
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    for tid in 0..POISON {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
        assert_eq!(next_message(&cli_rx).1.tid(), tid);
    }
    assert_eq!(srv.connection_count(), 1);
    let panics_before: u64 = srv.pool().handles().iter().map(|h| h.panics()).sum();

    conn.send_message(test_message(MSG_TEST, POISON, Bytes::new())).expect("send");
    wait_until(
        || srv.pool().handles().iter().map(|h| h.panics()).sum::<u64>() > panics_before,
        || "timed out waiting for the panic".into(),
    );
    // The dead connection is forgotten and the worker's load given back: checked once
    // the peer is back (below), where a zombie session or a leaked load shows as 2. Read
    // now, both could still be 1 before the cleanup ran.
    let load = || srv.pool().handles().iter().map(|h| h.load()).sum::<usize>();

    // The same peer reconnects (its lossless session was lost with the driver, so the
    // server resets it; what was queued meanwhile is dropped with the session, as Ceph's
    // RESETSESSION does) and works: ping until a reply comes, then a whole batch.
    let deadline = Instant::now() + WAIT;
    let mut ping = 1000u64;
    loop {
        assert!(Instant::now() < deadline, "no traffic after the panic");
        conn.send_message(test_message(MSG_TEST, ping, Bytes::new())).expect("send");
        match cli_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Seen::Message(_, m)) if m.tid() >= 1000 => break,
            _ => ping += 1,
        }
    }
    for tid in 100..120u64 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
    }
    for tid in 100..120u64 {
        // Replies to the pings above (tids from 1000) may still come, late or not.
        let got = loop {
            let tid = next_message(&cli_rx).1.tid();
            if tid < 1000 {
                break tid;
            }
        };
        assert_eq!(got, tid);
    }
    // Waited for: the cleanup unregisters before it gives the load back, and the
    // reconnect is charged to a worker before its session registers.
    wait_until(
        || srv.connection_count() == 1 && load() == 1,
        || "timed out waiting for one connection, load 1".into(),
    );
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_panicking_fast_dispatcher_leaves_no_zombie_and_the_peer_reconnects() {
    a_panicking_fast_dispatcher_leaves_no_zombie_and_the_peer_reconnects_over(ProtocolVersion::V1);
}

#[test]
fn a_panicking_fast_dispatcher_leaves_no_zombie_and_the_peer_reconnects_over_msgr2() {
    a_panicking_fast_dispatcher_leaves_no_zombie_and_the_peer_reconnects_over(ProtocolVersion::V2);
}

/// A fast dispatcher whose `ms_handle_fast_connect` for the loopback connection panics.
struct PanicsOnLoopbackConnect;

impl Dispatcher<Connection> for PanicsOnLoopbackConnect {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        assert!(!conn.is_loopback(), "the dispatcher panics on the loopback connection");
    }
}

// The first dispatcher starts the messenger; its `ms_handle_fast_connect` for the
// loopback connection runs in that start, on the caller's thread. Its panic unwound out
// of the start after `ready` and `started` were set but before the dispatch thread and
// the listener started: every later call (a second dispatcher added) returned Ok, and
// nothing was ever accepted or dispatched.
#[test]
fn a_panicking_loopback_connect_hook_leaves_the_messenger_started() {
    let srv =
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        srv.add_dispatcher_head(Arc::new(PanicsOnLoopbackConnect))
    }));
    assert!(added.is_err(), "the hook's panic reaches the thread adding the dispatcher");
    let (rec, rx) = Recorder::new(false);
    srv.add_dispatcher_tail(rec).expect("a second dispatcher");
    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(_, m)) => {
                assert_eq!(m.tid(), 1);
                break;
            }
            Ok(_) => {}
            Err(_) => panic!("nothing dispatched: the messenger is half started"),
        }
    }
    cli.shutdown();
    srv.shutdown();
}
