//! A lossless session whose protocol queue is full (`MAX_IN_PROTOCOL`, 1,024 messages
//! queued or unacknowledged) leaves the rest in its mailbox marked notified, so later
//! sends post no wake-up: socket progress is to bring its driver back. These tests hold
//! that progress off (the server unreachable, backing off; a peer that stops reading),
//! send far more than 1,024 messages meanwhile, from another thread and from the
//! connection's own fast dispatch, then let progress resume: every message arrives once
//! and in order. And the reverse: a connection whose driver is gone refuses sends
//! rather than queueing them in a mailbox nobody drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    ConnState, Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy,
    ProtocolVersion,
};
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::Message;
use tests::chaos::{ChaosConfig, ChaosProxy};
use tests::loopback::*;

use ProtocolVersion::{V1, V2};

const MSG_TEST: u16 = 0x7f00;
/// Asks the client's fast dispatch to send its burst.
const MSG_GO: u16 = 0x7f01;
/// Well past the protocol queue's 1,024.
const N: u64 = 3000;

fn quick_config() -> MessengerConfig {
    backoff_config(Duration::from_millis(5), Duration::from_millis(50))
}

/// What the send bound counts for `conn`, in its mailbox and in its driver's session.
fn send_queued(m: &Messenger, conn: &Connection) -> (u64, u64) {
    let dump = m.dump_connections();
    let entry = dump
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"].as_u64() == Some(conn.id())))
        .unwrap_or_else(|| panic!("conn {} not in the dump: {dump}", conn.id()));
    let q = &entry["send_queued"];
    (q["mailbox"].as_u64().unwrap_or(0), q["session"].as_u64().unwrap_or(0))
}

/// Waits until `conn`'s driver filled its protocol queue (1,024 messages, each costing
/// what one test message does) and the rest waits in the mailbox: the state in which
/// sends post no wake-up.
fn wait_for_full_protocol_queue(m: &Messenger, conn: &Connection) {
    let cost = test_message(MSG_TEST, 2, Bytes::new()).send_cost();
    wait_until(
        || {
            let (mailbox, session) = send_queued(m, conn);
            mailbox > 0 && session >= 1024 * cost
        },
        || format!("no full protocol queue and backlog: {}", m.dump_connections()),
    );
}

/// Receives tids `from..=to` on `rx` in order, then nothing more.
fn receive_all(rx: &Receiver<Seen>, from: u64, to: u64) {
    for tid in from..=to {
        let (_, m) = next_message(rx);
        assert_eq!(m.tid(), tid, "in order, none lost, none duplicated");
    }
    assert_no_more_messages(rx, "a message arrived twice");
}

fn send_from_another_thread(conn: &Connection, from: u64, to: u64) {
    let conn = conn.clone();
    std::thread::spawn(move || {
        for tid in from..=to {
            conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
        }
    })
    .join()
    .expect("sender");
}

/// A lossless client whose server is unreachable (the proxy in front of it gone, its
/// port closed) backs off and redials; another thread sends 3,000 messages meanwhile.
/// The proxy comes back on the same port: the session resumes and every message arrives.
fn server_gone_and_back(proto: ProtocolVersion) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, srv_addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, any, quick_config());
    let proxy = ChaosProxy::start(srv_addr, ChaosConfig::new(1)).expect("proxy");
    let proxy_addr = proxy.addr();
    let (cli, _cli_rx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), quick_config());
    let addr = addr_for(proto, EntityAddr::legacy(proxy_addr, srv.my_addr().nonce));
    let conn = cli.connect_to(EntityType::OSD, addr);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    receive_all(&srv_rx, 1, 1);

    drop(proxy);
    wait_until(
        || conn.state() != ConnState::Open,
        || format!("the client did not see the proxy go: {:?}", conn.state()),
    );
    send_from_another_thread(&conn, 2, N);
    wait_for_full_protocol_queue(&cli, &conn);

    let listener = std::net::TcpListener::bind(proxy_addr).expect("the same port again");
    let _proxy = ChaosProxy::start_on(listener, srv_addr, ChaosConfig::new(1)).expect("proxy");
    receive_all(&srv_rx, 2, N);
    assert!(conn.is_connected(), "the session resumed");
}

#[test]
fn sends_past_the_protocol_queue_while_the_server_is_gone_arrive_when_it_is_back() {
    server_gone_and_back(V1);
}

#[test]
fn sends_past_the_protocol_queue_while_the_server_is_gone_arrive_when_it_is_back_over_msgr2() {
    server_gone_and_back(V2);
}

/// The client's fast dispatch of `MSG_GO` tells the test, waits for its go-ahead, then
/// sends tids 2..=N on the connection (its own sends: the worker's queue, the rest
/// spilled to the mailbox).
struct Burster {
    got: Sender<Connection>,
    proceed: Receiver<()>,
}

impl Dispatcher<Connection> for Burster {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_GO
    }
    fn ms_fast_dispatch(&self, conn: &Connection, _msg: Message) {
        let _ = self.got.send(conn.clone());
        if self.proceed.recv_timeout(WAIT).is_err() {
            return;
        }
        for tid in 2..=N {
            conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("own send");
        }
    }
}

/// Who sends the burst while the server does not read.
#[derive(Clone, Copy)]
enum Sender_ {
    OtherThread,
    OwnWorker,
}

/// A lossless client sends 3,000 messages while its server's workers are held (it reads
/// nothing and acknowledges nothing); then the server resumes.
fn peer_stops_reading(proto: ProtocolVersion, who: Sender_) {
    let (srv, srv_addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    let cli = Messenger::new(EntityName::new(EntityType::CLIENT, 2), 2, quick_config())
        .expect("messenger");
    cli.set_default_policy(Policy::lossless_client());
    cli.start().expect("start");
    let (got_tx, got) = crossbeam_channel::unbounded();
    let (proceed, proceed_rx) = crossbeam_channel::unbounded();
    cli.add_dispatcher_head(Arc::new(Burster { got: got_tx, proceed: proceed_rx }))
        .expect("dispatcher");
    let addr = addr_for(proto, EntityAddr::legacy(srv_addr, srv.my_addr().nonce));
    let conn = cli.connect_to(EntityType::OSD, addr);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);

    match who {
        Sender_::OtherThread => {
            let hold = hold_workers(&srv);
            send_from_another_thread(&conn, 2, N);
            wait_for_full_protocol_queue(&cli, &conn);
            drop(hold);
        }
        Sender_::OwnWorker => {
            served.send_message(test_message(MSG_GO, 1, Bytes::new())).expect("go");
            let c = got.recv_timeout(WAIT).expect("the client's fast dispatch");
            assert_eq!(c, conn);
            let hold = hold_workers(&srv);
            proceed.send(()).expect("proceed");
            wait_for_full_protocol_queue(&cli, &conn);
            drop(hold);
        }
    }
    receive_all(&srv_rx, 2, N);
}

#[test]
fn sends_past_the_protocol_queue_to_a_peer_that_stops_reading_arrive_when_it_reads() {
    peer_stops_reading(V1, Sender_::OtherThread);
}

#[test]
fn sends_past_the_protocol_queue_to_a_peer_that_stops_reading_arrive_over_msgr2() {
    peer_stops_reading(V2, Sender_::OtherThread);
}

#[test]
fn own_sends_past_the_protocol_queue_to_a_peer_that_stops_reading_arrive_when_it_reads() {
    peer_stops_reading(V1, Sender_::OwnWorker);
}

#[test]
fn own_sends_past_the_protocol_queue_to_a_peer_that_stops_reading_arrive_over_msgr2() {
    peer_stops_reading(V2, Sender_::OwnWorker);
}

/// Holds the first message in `ms_dispatch` until the gate opens; reports every tid.
struct Gated {
    gate: Receiver<()>,
    seen: Sender<u64>,
}

impl Dispatcher<Connection> for Gated {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        if msg.tid() == 1 {
            let _ = self.gate.recv_timeout(WAIT);
        }
        let _ = self.seen.send(msg.tid());
        Dispatched::Taken
    }
}

/// A lossless client whose own dispatch throttle is full (its dispatcher holds the
/// first of the server's echoes) stops reading, so the server's acknowledgements wait
/// unread: its protocol queue stays full while another thread sends 3,000 messages.
/// Then the dispatcher lets go: the throttle's grant brings the driver back.
fn receive_throttle_full(proto: ProtocolVersion) {
    let (srv, srv_addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateful_server(), true);
    let config = MessengerConfig { dispatch_throttle_bytes: 1024, ..quick_config() };
    let cli = Messenger::new(EntityName::new(EntityType::CLIENT, 2), 2, config).expect("messenger");
    cli.set_default_policy(Policy::lossless_client());
    cli.start().expect("start");
    let (open, gate) = crossbeam_channel::unbounded();
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    cli.add_dispatcher_head(Arc::new(Gated { gate, seen: seen_tx })).expect("dispatcher");
    let addr = addr_for(proto, EntityAddr::legacy(srv_addr, srv.my_addr().nonce));
    let conn = cli.connect_to(EntityType::OSD, addr);
    send_from_another_thread(&conn, 1, N);
    wait_for_full_protocol_queue(&cli, &conn);
    open.send(()).expect("open");
    receive_all(&srv_rx, 1, N);
    for tid in 1..=N {
        assert_eq!(seen.recv_timeout(WAIT), Ok(tid), "echoes in order");
    }
}

#[test]
fn sends_past_the_protocol_queue_while_our_receive_throttle_is_full_arrive() {
    receive_throttle_full(V1);
}

#[test]
fn sends_past_the_protocol_queue_while_our_receive_throttle_is_full_arrive_over_msgr2() {
    receive_throttle_full(V2);
}

/// Panics in the fast dispatch of `MSG_GO`: the event center drops the driver.
struct Panicker;

impl Dispatcher<Connection> for Panicker {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_GO
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        panic!("the dispatcher fails (as the test asks)");
    }
}

/// The reverse: a connection whose driver is gone (reset by its lossy peer, or dropped
/// after its dispatcher panicked) takes no more sends.
#[test]
fn a_connection_whose_driver_is_gone_refuses_sends() {
    // A lossy session the server marks down: the client's driver finishes.
    let (srv, srv_addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, EntityAddr::legacy(srv_addr, srv.my_addr().nonce));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);
    served.mark_down();
    wait_for_reset(&cli_rx, &conn);
    wait_until(|| conn.state() == ConnState::Closed, || format!("{:?}", conn.state()));
    // Its driver has ended and left the session table.
    wait_for_connection_count(&cli, 0, "client");
    for tid in 1..=N {
        let sent = conn.send_message(test_message(MSG_TEST, tid, Bytes::new()));
        assert_eq!(sent, Err(messenger::SendError::Closed), "send {tid}");
    }
    assert_eq!(conn.queued_send_bytes(), 0);

    // A lossless session whose driver the event center dropped after a panic.
    let cli = Messenger::new(EntityName::new(EntityType::CLIENT, 3), 3, quick_config())
        .expect("messenger");
    cli.set_default_policy(Policy::lossless_client());
    cli.start().expect("start");
    cli.add_dispatcher_head(Arc::new(Panicker)).expect("dispatcher");
    let (srv, srv_addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    let conn = cli.connect_to(EntityType::OSD, EntityAddr::legacy(srv_addr, srv.my_addr().nonce));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, _) = next_message(&srv_rx);
    served.send_message(test_message(MSG_GO, 1, Bytes::new())).expect("go");
    wait_until(|| conn.state() == ConnState::Closed, || format!("{:?}", conn.state()));
    wait_for_connection_count(&cli, 0, "client");
    for tid in 1..=N {
        let sent = conn.send_message(test_message(MSG_TEST, tid, Bytes::new()));
        assert_eq!(sent, Err(messenger::SendError::Closed), "send {tid}");
    }
    assert_eq!(conn.queued_send_bytes(), 0);
}
