//! Every throttle and bound a connection charges returns to its idle value once the
//! connection is gone and everything is quiet, whichever way it ended: the dispatch
//! throttle, a peer type's policy throttlers, the send bounds (per connection and in
//! total) and the workers' receive gauges.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, SendError, Throttle,
};
use protocol::types::{EntityName, EntityType};
use protocol::{Message, ProtocolVersion};
use tests::counting::Forward;
use tests::hostile::{worker_counter, RawPeer};
use tests::loopback::{addr_for, test_config, wait_until, WAIT};

/// The messenger's send bounds as `perf dump` shows them: what is held in total.
fn send_queue_val(m: &Messenger) -> u64 {
    m.counters_json()["msgr_send_queues"]["val"].as_u64().expect("msgr_send_queues.val")
}

/// Waits until every bound of `m` (and `extra` throttles) is back at zero.
#[track_caller]
fn assert_quiet(m: &Messenger, extra: &[&Arc<Throttle>]) {
    wait_until(
        || {
            send_queue_val(m) == 0
                && m.dispatch_throttle().current() == 0
                && worker_counter(m, "msgr_recv_held_bytes") == 0
                && extra.iter().all(|t| t.current() == 0)
        },
        || {
            format!(
                "not quiet: send queues {}, dispatch {:?}, recv held {}, policy {:?}",
                m.counters_json()["msgr_send_queues"],
                m.dispatch_throttle(),
                worker_counter(m, "msgr_recv_held_bytes"),
                extra.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>(),
            )
        },
    );
}

/// A dispatcher that hands every connection it accepts to the test and drops every
/// message (it keeps nothing), and tells the test of every reset.
struct Grabber {
    accepted: Sender<Connection>,
    resets: Sender<u64>,
}

impl Dispatcher<Connection> for Grabber {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        let _ = self.accepted.send(conn.clone());
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.resets.send(conn.id());
        true
    }
}

fn grabbing_server(
    config: MessengerConfig,
    policy: Policy,
) -> (Messenger, Receiver<Connection>, Receiver<u64>) {
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(policy);
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (accepted, acc_rx) = crossbeam_channel::unbounded();
    let (resets, reset_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(Grabber { accepted, resets })).expect("dispatcher");
    (srv, acc_rx, reset_rx)
}

/// Sends `size`-byte messages on `conn` until the send bounds refuse one; returns how
/// many went.
fn fill(conn: &Connection, size: usize) -> usize {
    let data = Bytes::from(vec![7u8; size]);
    for n in 0..100_000 {
        let mut m = Message::new(0x7f00, Bytes::new());
        m.set_tid(n as u64 + 1);
        m.set_data(data.clone());
        match conn.send_message(m) {
            Ok(()) => {}
            Err(SendError::QueueFull) => return n,
            Err(e) => panic!("send {n}: {e:?}"),
        }
    }
    panic!("the send bounds never refused a message");
}

// A server's lossy session to a peer that does not read fills its send queue to the
// bound; the peer then goes away: the session resets and its queued messages go, and
// so does their charge to the send bounds.
fn full_lossy_queue_then_peer_gone(proto: ProtocolVersion) {
    let config = MessengerConfig {
        max_queued_bytes: 1 << 20,
        max_total_queued_bytes: 8 << 20,
        tcp_sndbuf: 64 << 10,
        ..test_config(2)
    };
    let (srv, accepted, resets) = grabbing_server(config, Policy::stateless_server());
    let peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let conn = accepted.recv_timeout(WAIT).expect("accepted");
    let sent = fill(&conn, 64 << 10);
    assert!(sent > 0, "some went");
    assert!(send_queue_val(&srv) > 0, "the full queue is counted");
    drop(peer);
    let reset = resets.recv_timeout(WAIT).expect("reset");
    assert_eq!(reset, conn.id());
    assert_quiet(&srv, &[]);
    srv.shutdown();
}

#[test]
fn a_full_lossy_send_queue_whose_peer_went_away_holds_no_send_bound_v1() {
    full_lossy_queue_then_peer_gone(ProtocolVersion::V1);
}

#[test]
fn a_full_lossy_send_queue_whose_peer_went_away_holds_no_send_bound_v2() {
    full_lossy_queue_then_peer_gone(ProtocolVersion::V2);
}

// The same on a lossless session, ended by mark_down.
fn full_lossless_queue_marked_down(proto: ProtocolVersion) {
    let config = MessengerConfig {
        max_queued_bytes: 1 << 20,
        max_total_queued_bytes: 8 << 20,
        tcp_sndbuf: 64 << 10,
        ..test_config(2)
    };
    let (srv, accepted, _resets) = grabbing_server(config, Policy::lossless_peer());
    let peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossless_peer());
    let conn = accepted.recv_timeout(WAIT).expect("accepted");
    let sent = fill(&conn, 64 << 10);
    assert!(sent > 0, "some went");
    conn.mark_down();
    assert_quiet(&srv, &[]);
    drop(peer);
    srv.shutdown();
}

#[test]
fn a_full_lossless_send_queue_marked_down_holds_no_send_bound_v1() {
    full_lossless_queue_marked_down(ProtocolVersion::V1);
}

#[test]
fn a_full_lossless_send_queue_marked_down_holds_no_send_bound_v2() {
    full_lossless_queue_marked_down(ProtocolVersion::V2);
}

/// A dispatcher that panics on every message (fast or not, as set).
struct Panicker {
    fast: bool,
}

impl Dispatcher<Connection> for Panicker {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        panic!("ms_dispatch panics (on purpose)");
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        panic!("ms_fast_dispatch panics (on purpose)");
    }
}

// A dispatcher that panics costs its message, and the message's charges go with it.
fn panicking_dispatcher(proto: ProtocolVersion, fast: bool) {
    let srv =
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(2)).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    let bytes = Throttle::new("client bytes", 1 << 20);
    let msgs = Throttle::new("client messages", 16);
    srv.set_policy_throttlers(EntityType::CLIENT, Some(bytes.clone()), Some(msgs.clone()));
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    srv.add_dispatcher_head(Arc::new(Panicker { fast })).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let mut wire = Vec::new();
    for tid in 1..=20 {
        wire.extend(peer.message(tid, &[3u8; 1000]));
    }
    let _ = peer.sock.write_all(&wire);
    wait_until(
        || {
            let q = &srv.counters_json()["dispatch_queue"];
            q["panics"].as_u64().unwrap_or(0) > 0 || srv.connection_count() == 0
        },
        || "no dispatcher ran".into(),
    );
    drop(peer);
    wait_until(|| srv.connection_count() == 0, || srv.dump_connections().to_string());
    assert_quiet(&srv, &[&bytes, &msgs]);
    srv.shutdown();
}

#[test]
fn a_panicking_ms_dispatch_leaves_no_charge_v1() {
    panicking_dispatcher(ProtocolVersion::V1, false);
}

#[test]
fn a_panicking_ms_dispatch_leaves_no_charge_v2() {
    panicking_dispatcher(ProtocolVersion::V2, false);
}

#[test]
fn a_panicking_fast_dispatch_leaves_no_charge_v1() {
    panicking_dispatcher(ProtocolVersion::V1, true);
}

#[test]
fn a_panicking_fast_dispatch_leaves_no_charge_v2() {
    panicking_dispatcher(ProtocolVersion::V2, true);
}

/// A dispatcher whose `ms_dispatch` waits for the test's word on its first message
/// (and tells the test it is waiting), then keeps nothing.
struct Held {
    waiting: Sender<()>,
    go: Receiver<()>,
}

impl Dispatcher<Connection> for Held {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        let _ = self.waiting.send(());
        let _ = self.go.recv_timeout(WAIT);
        Dispatched::Taken
    }
}

// The messenger shut down with messages waiting for a held ms_dispatch, and a
// connection waiting for dispatch budget the queue holds: once the shutdown returned,
// nothing is charged to any throttle.
fn shutdown_with_messages_queued(proto: ProtocolVersion) {
    let config = MessengerConfig { dispatch_throttle_bytes: 64 << 10, ..test_config(2) };
    let srv = Arc::new(
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger"),
    );
    srv.set_default_policy(Policy::stateless_server());
    let bytes = Throttle::new("client bytes", 1 << 20);
    let msgs = Throttle::new("client messages", 1000);
    srv.set_policy_throttlers(EntityType::CLIENT, Some(bytes.clone()), Some(msgs.clone()));
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (waiting_tx, waiting) = crossbeam_channel::unbounded();
    let (go, go_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(Held { waiting: waiting_tx, go: go_rx })).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let mut wire = Vec::new();
    for tid in 1..=40 {
        wire.extend(peer.message(tid, &[3u8; 4000]));
    }
    peer.sock.write_all(&wire).expect("write");
    waiting.recv_timeout(WAIT).expect("ms_dispatch holds the first");
    let throttle = srv.dispatch_throttle().clone();
    wait_until(|| throttle.waiting() > 0, || format!("nobody waits: {throttle:?}"));
    let stopper = {
        let srv = Arc::clone(&srv);
        std::thread::spawn(move || srv.shutdown())
    };
    // Let the held dispatcher go once the shutdown has closed the connection.
    wait_until(|| srv.connection_count() == 0, || srv.dump_connections().to_string());
    drop(go);
    stopper.join().expect("shutdown");
    assert_eq!(throttle.current(), 0, "dispatch budget left held: {throttle:?}");
    assert_eq!((bytes.current(), msgs.current()), (0, 0), "policy budget left held");
    drop(peer);
}

#[test]
fn a_shutdown_with_messages_queued_leaves_no_charge_v1() {
    shutdown_with_messages_queued(ProtocolVersion::V1);
}

#[test]
fn a_shutdown_with_messages_queued_leaves_no_charge_v2() {
    shutdown_with_messages_queued(ProtocolVersion::V2);
}

const MSG_FAST: u16 = 0x7f20;
const MSG_QUEUED: u16 = 0x7f21;

/// A server dispatcher that echoes every message on its connection: from fast dispatch
/// for [`MSG_FAST`], from `ms_dispatch` for the rest, and counts what it saw.
struct Echo {
    seen: Sender<(u16, u64)>,
    conn: parking_lot::Mutex<Option<Connection>>,
}

impl Echo {
    fn echo(&self, conn: &Connection, msg: &Message) {
        let mut reply = Message::new(msg.msg_type(), msg.front().clone());
        reply.set_tid(msg.tid());
        reply.set_data(msg.data().clone());
        let sent = conn.send_message(reply);
        assert!(sent.is_ok(), "echo {}: {sent:?}", msg.tid());
        let _ = self.seen.send((msg.msg_type(), msg.tid()));
        self.conn.lock().get_or_insert_with(|| conn.clone());
    }
}

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.echo(conn, &msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_FAST
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.echo(conn, &msg);
    }
}

// A lossless client sends a mix of small and large messages, fast-dispatched and
// queued, to a server whose throttles are small, and both ends' sockets are cut over and
// over while they flow; every echo comes back once, and then nothing is charged on
// either side.
fn echo_under_cuts(proto: ProtocolVersion) {
    const N: u64 = 200;
    let srv_config = MessengerConfig {
        dispatch_throttle_bytes: 96 << 10,
        max_queued_bytes: 64 << 20,
        ..test_config(2)
    };
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, srv_config).expect("srv");
    srv.set_default_policy(Policy::stateful_server());
    let bytes = Throttle::new("client bytes", 128 << 10);
    let msgs = Throttle::new("client messages", 24);
    srv.set_policy_throttlers(EntityType::CLIENT, Some(bytes.clone()), Some(msgs.clone()));
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (srv_seen_tx, srv_seen) = crossbeam_channel::unbounded();
    let echo = Arc::new(Echo { seen: srv_seen_tx, conn: parking_lot::Mutex::new(None) });
    srv.add_dispatcher_head(echo.clone()).expect("dispatcher");
    let cli_config = MessengerConfig { max_queued_bytes: 64 << 20, ..test_config(2) };
    let cli =
        Messenger::new(EntityName::new(EntityType::CLIENT, 2), 2, cli_config).expect("client");
    cli.set_default_policy(Policy::lossless_client());
    cli.start().expect("start");
    let (cli_seen_tx, cli_seen) = crossbeam_channel::unbounded();
    // Counts the echoes.
    let count = Forward::new(cli_seen_tx, false, |msg| (msg.msg_type(), msg.tid()));
    cli.add_dispatcher_head(count).expect("dispatcher");
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    for tid in 1..=N {
        let ty = if tid % 3 == 0 { MSG_QUEUED } else { MSG_FAST };
        let size = match tid % 7 {
            0 => 200 << 10,
            1 => 40 << 10,
            _ => 300,
        };
        let mut m = Message::new(ty, Bytes::from(vec![tid as u8; 16]));
        m.set_tid(tid);
        m.set_data(Bytes::from(vec![tid as u8; size]));
        conn.send_message(m).expect("send");
        if tid % 25 == 0 {
            conn.inject_socket_failure();
        }
        if tid % 40 == 0 {
            if let Some(c) = echo.conn.lock().clone() {
                c.inject_socket_failure();
            }
        }
    }
    let mut got = std::collections::BTreeMap::new();
    while got.len() < N as usize {
        let (_, tid) = cli_seen.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "{} of {N} echoes came back: {} / server {} {}",
                got.len(),
                cli.dump_connections(),
                srv.dump_connections(),
                srv.counters_json()
            )
        });
        *got.entry(tid).or_insert(0u32) += 1;
    }
    assert!(got.values().all(|n| *n == 1), "an echo came twice");
    drop(srv_seen);
    // Everything was echoed and acknowledged: nothing is held on either side.
    assert_quiet(&srv, &[&bytes, &msgs]);
    assert_quiet(&cli, &[]);
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn echoes_under_cuts_leave_nothing_charged_v1() {
    echo_under_cuts(ProtocolVersion::V1);
}

#[test]
fn echoes_under_cuts_leave_nothing_charged_v2() {
    echo_under_cuts(ProtocolVersion::V2);
}

// A lossless client's session holds more than the protocol's queue takes (the rest
// waits in its mailbox) for a server that does not read; the server then forgets the
// session (mark_down) and reads again: the client's reconnect is told the session was
// reset, everything it held goes, and so does its charge to the send bounds; what it
// sends afterwards arrives.
fn remote_reset_with_a_full_mailbox(proto: ProtocolVersion) {
    let (srv, accepted, _resets) = grabbing_server(test_config(2), Policy::stateful_server());
    let cli_config = MessengerConfig { max_queued_bytes: 64 << 20, ..test_config(2) };
    let (cli, cli_rx) =
        tests::loopback::client_with(EntityType::CLIENT, 2, Policy::lossless_client(), cli_config);
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_keepalive();
    let srv_conn = accepted.recv_timeout(WAIT).expect("accepted");
    let hold = tests::loopback::hold_workers(&srv);
    for tid in 1..=3000u64 {
        let mut m = Message::new(0x7f00, Bytes::from(vec![1u8; 16]));
        m.set_tid(tid);
        m.set_data(Bytes::from(vec![2u8; 4096]));
        conn.send_message(m).expect("send");
    }
    assert!(send_queue_val(&cli) > 0);
    srv_conn.mark_down();
    drop(hold);
    assert!(
        tests::loopback::wait_for_event(&cli_rx, |s| matches!(
            s,
            tests::loopback::Seen::RemoteReset(_)
        )),
        "no remote reset"
    );
    assert_quiet(&cli, &[]);
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_remote_reset_of_a_session_with_a_full_mailbox_releases_its_send_bounds_v1() {
    remote_reset_with_a_full_mailbox(ProtocolVersion::V1);
}

#[test]
fn a_remote_reset_of_a_session_with_a_full_mailbox_releases_its_send_bounds_v2() {
    remote_reset_with_a_full_mailbox(ProtocolVersion::V2);
}
