//! A message waiting in the dispatch queue is charged its payload plus
//! `MESSAGE_OVERHEAD` to the dispatch throttle, which bounds what the queue holds: the
//! queue must hold about that much memory per message whatever the peer chose for it.
//! The peer chooses each message's priority (a u16 on the wire), and the queue keeps a
//! lane per priority: one per message if each comes with a new one.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use protocol::types::{EntityName, EntityType};
use protocol::{Message, ProtocolVersion};
use tests::counting::live_bytes;
use tests::hostile::RawPeer;
use tests::loopback::{addr_for, test_config, WAIT};

#[global_allocator]
static ALLOCATOR: tests::counting::Counting = tests::counting::Counting;

/// The allocator counts the whole process: one test at a time.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

const MSG_TYPE: u16 = 0x7f31;

/// Holds the dispatch thread in the first message until released, so that the others
/// wait in the queue; drops every message.
struct Blocker {
    seen: Sender<u64>,
    started: Sender<()>,
    release: Receiver<()>,
}

impl Dispatcher<Connection> for Blocker {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        let _ = self.seen.send(msg.tid());
        if msg.tid() == 0 {
            let _ = self.started.send(());
            let _ = self.release.recv_timeout(WAIT);
        }
        Dispatched::Taken
    }
}

/// How the queued messages are spread.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// One connection, every message at a priority of its own.
    NewPriorityEach,
    /// One connection, one priority (the usual load; for comparison).
    OnePriority,
    /// A connection per message, one priority.
    ConnectionEach,
}

/// Live bytes per queued message over its charge, the dispatch thread held meanwhile.
fn queued_messages(proto: ProtocolVersion, shape: Shape) -> (isize, isize) {
    let n: usize = match shape {
        Shape::ConnectionEach => 500,
        _ => 4000,
    };
    let _serial = SERIAL.lock();
    let srv =
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    let (started_tx, started) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(Blocker {
        seen: seen_tx,
        started: started_tx,
        release: release_rx,
    }))
    .expect("dispatcher");
    let addr = addr_for(proto, srv.my_addr());
    let peers = match shape {
        Shape::ConnectionEach => n + 1,
        _ => 1,
    };
    let mut peers: Vec<RawPeer> =
        (0..peers).map(|_| RawPeer::handshake(addr, Policy::lossy_client())).collect();
    // A message on each connection first, dispatched: what a connection allocates for
    // its first message is not the queue's.
    for (i, peer) in peers.iter_mut().enumerate() {
        let mut warm = Message::new(MSG_TYPE, Bytes::new());
        warm.set_tid(1_000_000 + i as u64);
        let warm = peer.frame(warm);
        peer.sock.write_all(&warm).expect("write");
    }
    for _ in 0..peers.len() {
        seen.recv_timeout(WAIT).expect("a first message dispatched");
    }
    let throttle = srv.dispatch_throttle();
    tests::loopback::wait_until(
        || throttle.current() == 0,
        || format!("the first messages were not all dispatched: {throttle:?}"),
    );
    // The message the dispatch thread is held in.
    let first = peers[0].frame(Message::new(MSG_TYPE, Bytes::new()));
    peers[0].sock.write_all(&first).expect("write");
    started.recv_timeout(WAIT).expect("the dispatch thread holds the first message");
    let mut wires: Vec<Vec<u8>> = vec![Vec::new(); peers.len()];
    for i in 0..n {
        let mut msg = Message::new(MSG_TYPE, Bytes::new());
        msg.set_tid(1 + i as u64);
        let priority = match shape {
            // Distinct, none 0 (the default's).
            Shape::NewPriorityEach => 1 + i as u16,
            _ => protocol::message::PRIO_DEFAULT,
        };
        msg.set_priority(priority);
        let p = match shape {
            Shape::ConnectionEach => 1 + i,
            _ => 0,
        };
        let framed = peers[p].frame(msg);
        wires[p].extend(framed);
    }
    let cost = Message::new(MSG_TYPE, Bytes::new()).queued_cost();
    let before = live_bytes();
    let charged_before = throttle.current() as isize;
    for (peer, wire) in peers.iter_mut().zip(&wires) {
        peer.sock.write_all(wire).expect("write");
    }
    // Every message queued and charged, the credit taken ahead given back.
    tests::loopback::wait_until(
        || throttle.current() == (n as u64 + 1) * cost,
        || format!("not every message queued: {throttle:?}"),
    );
    let held = live_bytes() - before;
    let charged = throttle.current() as isize - charged_before;
    drop(release);
    drop(peers);
    srv.shutdown();
    (held / n as isize, charged / n as isize)
}

fn assert_within_charge(proto: ProtocolVersion, shape: Shape) {
    let (held, charged) = queued_messages(proto, shape);
    eprintln!("{proto:?} {shape:?}: {held} bytes held per queued message, {charged} charged");
    // 1.25 times the charge, as other bounds of what a peer makes us hold.
    let allowed = charged + charged / 4;
    assert!(
        held <= allowed,
        "{shape:?}: each queued message charged {charged} bytes holds {held} (allowed {allowed})"
    );
}

#[test]
fn queued_messages_at_new_priorities_hold_no_more_than_charged_v1() {
    assert_within_charge(ProtocolVersion::V1, Shape::NewPriorityEach);
}

#[test]
fn queued_messages_at_new_priorities_hold_no_more_than_charged_v2() {
    assert_within_charge(ProtocolVersion::V2, Shape::NewPriorityEach);
}

#[test]
fn queued_messages_at_one_priority_hold_no_more_than_charged_v2() {
    assert_within_charge(ProtocolVersion::V2, Shape::OnePriority);
}

#[test]
fn queued_messages_of_many_connections_hold_no_more_than_charged_v2() {
    assert_within_charge(ProtocolVersion::V2, Shape::ConnectionEach);
}
