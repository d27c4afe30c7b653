//! A received message a dispatcher keeps holds its peer type's policy byte charge
//! (payload plus overhead) until it is dropped: that charge must bound what the kept
//! message holds in memory. A small message is a slice of the worker's shared read
//! buffer; kept as such, it pins the whole buffer (64 KiB), and a peer that sends each
//! small kept message beside a large one the dispatcher drops makes every kept message
//! hold a read buffer while it is charged a few hundred bytes.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::Sender;
use messenger::{Messenger, Policy, Throttle};
use protocol::types::{EntityName, EntityType};
use protocol::{Message, ProtocolVersion};
use tests::counting::{live_bytes, Forward};
use tests::hostile::RawPeer;
use tests::loopback::{addr_for, test_config, WAIT};

#[global_allocator]
static ALLOCATOR: tests::counting::Counting = tests::counting::Counting;

/// The allocator counts the whole process: one test at a time.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Kept by the dispatcher (sent to the test); every other type is dropped at once.
const MSG_KEEP: u16 = 0x7f30;

/// Keeps [`MSG_KEEP`] messages, from fast dispatch (an OSD's ops) or `ms_dispatch`.
fn keeper(kept: Sender<Message>, fast: bool) -> Arc<Forward<Message>> {
    Forward::filtered(kept, fast, |msg| (msg.msg_type() == MSG_KEEP).then_some(msg))
}

fn kept_small_messages(proto: ProtocolVersion, fast: bool) {
    const N: usize = 200;
    let _serial = SERIAL.lock();
    let srv =
        Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    let bytes = Throttle::new("client bytes", 256 << 20);
    srv.set_policy_throttlers(EntityType::CLIENT, Some(bytes.clone()), None);
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (kept_tx, kept_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(keeper(kept_tx, fast)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    // Each small kept message goes with a large one the dispatcher drops: a read of the
    // shared buffer holds about one of each.
    let mut wire = Vec::new();
    for tid in 1..=N as u64 {
        let mut keep = Message::new(MSG_KEEP, Bytes::from_static(&[1u8; 16]));
        keep.set_tid(tid);
        wire.extend(peer.frame(keep));
        wire.extend(peer.message(100_000 + tid, &vec![2u8; 40 << 10]));
    }
    let before = live_bytes();
    let writer = {
        let mut sock = peer.sock.try_clone().expect("clone");
        let wire = wire.clone();
        std::thread::spawn(move || sock.write_all(&wire))
    };
    let mut kept = Vec::with_capacity(N);
    for _ in 0..N {
        kept.push(kept_rx.recv_timeout(WAIT).expect("a kept message"));
    }
    writer.join().expect("writer").expect("written");
    // What the worker took ahead for the burst goes back at the end of its pass: then
    // the kept messages alone hold the policy's bytes, each what it costs.
    let cost = kept[0].queued_cost();
    tests::loopback::wait_until(
        || bytes.current() == N as u64 * cost,
        || format!("the kept messages hold {bytes:?}, not {N} x {cost}"),
    );
    let held = live_bytes() - before;
    let charged = bytes.current() as isize;
    // The wire's clone (freed by the writer) and the worker's current read buffer are
    // not the kept messages': a MiB of slack covers them.
    let allowed = 4 * charged + (1 << 20);
    assert!(
        held <= allowed,
        "{N} kept messages charged {charged} bytes hold {held} bytes (allowed {allowed})"
    );
    drop(kept);
    drop(peer);
    srv.shutdown();
}

#[test]
fn kept_fast_dispatched_messages_hold_no_more_than_charged_v1() {
    kept_small_messages(ProtocolVersion::V1, true);
}

#[test]
fn kept_fast_dispatched_messages_hold_no_more_than_charged_v2() {
    kept_small_messages(ProtocolVersion::V2, true);
}

#[test]
fn kept_queued_messages_hold_no_more_than_charged_v1() {
    kept_small_messages(ProtocolVersion::V1, false);
}

#[test]
fn kept_queued_messages_hold_no_more_than_charged_v2() {
    kept_small_messages(ProtocolVersion::V2, false);
}

// Peers each send a large message the server drops and, in the same write, the head of
// a message with a small front and a large data segment, and go silent: each message in
// progress holds its first window of the dispatch throttle, and must hold about that
// much memory, not the read buffer its front came in.
fn messages_in_progress(proto: ProtocolVersion) {
    const K: usize = 40;
    let _serial = SERIAL.lock();
    let config = tests::loopback::patient_config(1);
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    // Drops every message at once (fast dispatch), telling the test of each.
    srv.add_dispatcher_head(Forward::tids(seen_tx, true)).expect("dispatcher");
    let mut peers = Vec::new();
    for i in 0..K as u64 {
        let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
        let mut wire = peer.message(i + 1, &vec![2u8; 48 << 10]);
        let mut big = Message::new(MSG_KEEP, Bytes::from_static(&[1u8; 16]));
        big.set_tid(1000 + i);
        big.set_data(Bytes::from(vec![3u8; 1 << 20]));
        let framed = peer.frame(big);
        wire.extend_from_slice(&framed[..tests::hostile::head_len(proto) + 16 + 10]);
        peers.push((peer, wire));
    }
    let before = live_bytes();
    for (peer, wire) in &mut peers {
        peer.sock.write_all(wire).expect("write");
    }
    for _ in 0..K {
        seen.recv_timeout(WAIT).expect("the large message dispatched");
    }
    let throttle = srv.dispatch_throttle();
    tests::loopback::wait_until(
        || throttle.current() >= K as u64 * protocol::message::MESSAGE_OVERHEAD,
        || format!("not every message in progress holds its window: {throttle:?}"),
    );
    let held = live_bytes() - before;
    let charged = throttle.current() as isize;
    let allowed = 4 * charged + (512 << 10);
    assert!(
        held <= allowed,
        "{K} messages in progress charged {charged} bytes hold {held} bytes (allowed {allowed})"
    );
    drop(peers);
    srv.shutdown();
}

#[test]
fn messages_in_progress_hold_no_more_than_charged_v1() {
    messages_in_progress(ProtocolVersion::V1);
}

#[test]
fn messages_in_progress_hold_no_more_than_charged_v2() {
    messages_in_progress(ProtocolVersion::V2);
}

// Peers each send a duplicate of a large message they sent before (it streams by, not
// stored and not charged) and, in the same write, the head of a new message that waits
// for a policy count another peer's kept message holds: a message waiting for its budget
// holds nothing of the throttles, and must hold about nothing, not the read buffer its
// head came in.
fn messages_waiting_for_budget(proto: ProtocolVersion) {
    const K: usize = 40;
    let _serial = SERIAL.lock();
    let config = tests::loopback::patient_config(1);
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    let counts = Throttle::new("client messages", 1);
    srv.set_policy_throttlers(EntityType::CLIENT, None, Some(counts.clone()));
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (kept_tx, kept_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(keeper(kept_tx, true)).expect("dispatcher");
    let addr = addr_for(proto, srv.my_addr());
    let mut peers = Vec::new();
    for i in 0..K as u64 {
        let mut peer = RawPeer::handshake(addr, Policy::lossy_client());
        let mut first = Message::new(MSG_KEEP, Bytes::new());
        first.set_tid(i + 1);
        first.set_data(Bytes::from(vec![2u8; 48 << 10]));
        let first = peer.frame(first);
        // Delivered, then dropped: the count is free again.
        peer.sock.write_all(&first).expect("write");
        drop(kept_rx.recv_timeout(WAIT).expect("delivered"));
        let mut next = Message::new(MSG_KEEP, Bytes::from_static(&[1u8; 16]));
        next.set_tid(1000 + i);
        next.set_data(Bytes::from(vec![3u8; 1024]));
        let framed = peer.frame(next);
        // The first frame again (a duplicate), then the next one's head.
        let mut wire = first;
        wire.extend_from_slice(&framed[..tests::hostile::head_len(proto)]);
        peers.push((peer, wire));
    }
    // Another peer's message, kept: it holds the only count.
    let mut holder = RawPeer::handshake(addr, Policy::lossy_client());
    let mut keep = Message::new(MSG_KEEP, Bytes::from_static(&[4u8; 16]));
    keep.set_tid(1);
    let keep = holder.frame(keep);
    holder.sock.write_all(&keep).expect("write");
    let held = kept_rx.recv_timeout(WAIT).expect("kept");
    let before = live_bytes();
    for (peer, wire) in &mut peers {
        peer.sock.write_all(wire).expect("write");
    }
    tests::loopback::wait_until(
        || counts.waiting() == K,
        || format!("not every next message waits for a count: {counts:?}"),
    );
    let grown = live_bytes() - before;
    let allowed = 512 << 10;
    assert!(
        grown <= allowed,
        "{K} messages waiting for their budget, charged nothing, hold {grown} bytes (allowed {allowed})"
    );
    drop(held);
    drop((peers, holder));
    srv.shutdown();
}

#[test]
fn messages_waiting_for_budget_hold_no_read_buffer_v1() {
    messages_waiting_for_budget(ProtocolVersion::V1);
}

#[test]
fn messages_waiting_for_budget_hold_no_read_buffer_v2() {
    messages_waiting_for_budget(ProtocolVersion::V2);
}
