//! A message that arrives whole in one read is taken on receive credit granted for that
//! read, before its bytes are parsed: at depth 1 no message asks the throttles for its
//! budget in a round through the driver. `msgr_recv_budget_requests` counts the ones
//! that do ask: here, one too large for a read's credit. The credit goes back once the
//! server is idle; reads too short to hold a message take none, nor do reads larger
//! than a throttle's share.

use std::sync::atomic::Ordering::Relaxed;

use crossbeam_channel::Receiver;
use messenger::{MessengerConfig, Policy};
use protocol::types::EntityType;
use protocol::ProtocolVersion;
use tests::hostile::RawPeer;
use tests::loopback::{addr_for, next_message, server_on, test_config, wait_until, Seen};

/// Messages written one at a time, each after the last was dispatched.
const LONE: u64 = 20;

/// What `m`'s workers counted in `msgr_recv_budget_requests`.
fn budget_requests(m: &messenger::Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.recv_budget_requests.load(Relaxed)).sum()
}

/// A server on one worker with `config`, and a raw peer with an open `proto` session.
fn serve(
    proto: ProtocolVersion,
    config: MessengerConfig,
) -> (messenger::Messenger, Receiver<Seen>, RawPeer) {
    let addr = "127.0.0.1:0".parse().expect("addr");
    let (srv, _, seen) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), false, addr, config);
    let peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    (srv, seen, peer)
}

/// Writes [`LONE`] messages with a front of 4 KiB, each once the last was dispatched,
/// checking they arrive in order and whole.
fn send_lone(proto: ProtocolVersion, peer: &mut RawPeer, seen: &Receiver<Seen>) {
    let front = vec![7u8; 4096];
    for tid in 1..=LONE {
        let bytes = peer.message(tid, &front);
        std::io::Write::write_all(&mut peer.sock, &bytes).expect("write");
        let (_, msg) = next_message(seen);
        assert_eq!(msg.tid(), tid, "{proto:?}: dispatched in order");
        assert_eq!(msg.front().len(), front.len(), "{proto:?}: whole front");
    }
}

/// Waits until `srv`'s dispatch throttle holds nothing: the credit went back.
fn wait_until_released(proto: ProtocolVersion, srv: &messenger::Messenger) {
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("{proto:?}: dispatch throttle holds {}", srv.dispatch_throttle().current()),
    );
}

fn lone_messages_take_no_budget_round(proto: ProtocolVersion) {
    let (srv, seen, mut peer) = serve(proto, test_config(1));
    send_lone(proto, &mut peer, &seen);
    assert_eq!(
        budget_requests(&srv),
        0,
        "{proto:?}: {LONE} messages of 4 KiB, each whole in one read, asked for budget"
    );

    // Too large for a read's credit (its front alone is more than 32 KiB): it asks.
    let large = vec![9u8; 100 << 10];
    let bytes = peer.message(LONE + 1, &large);
    std::io::Write::write_all(&mut peer.sock, &bytes).expect("write");
    let (_, msg) = next_message(&seen);
    assert_eq!((msg.tid(), msg.front().len()), (LONE + 1, large.len()), "{proto:?}");
    assert!(budget_requests(&srv) >= 1, "{proto:?}: the large message took no budget round");

    // Nothing stays charged once the server is idle.
    wait_until_released(proto, &srv);
    srv.shutdown();
}

/// A message trickled one byte per read: reads too short to hold a message take no
/// credit, so the throttles see nothing until the rest arrives in one write.
fn trickled_bytes_take_no_credit(proto: ProtocolVersion) {
    let (srv, seen, mut peer) = serve(proto, test_config(1));
    let bytes = peer.message(1, &[5u8; 4096]);
    let read = |m: &messenger::Messenger| -> u64 {
        m.worker_counters().iter().map(|c| c.recv_bytes.load(Relaxed)).sum()
    };
    let gets = || srv.dispatch_throttle().counters().get_or_fail_success;
    let before = gets();
    // Fewer than either protocol's message head: nothing asks for budget yet.
    const TRICKLED: usize = 40;
    for (i, byte) in bytes.iter().take(TRICKLED).enumerate() {
        let start = read(&srv);
        std::io::Write::write_all(&mut peer.sock, std::slice::from_ref(byte)).expect("write");
        // Each byte its own read: the next is written once this one was read.
        wait_until(|| read(&srv) > start, || format!("{proto:?}: byte {i} never read"));
    }
    assert_eq!(gets() - before, 0, "{proto:?}: one-byte reads took throttle budget");
    std::io::Write::write_all(&mut peer.sock, &bytes[TRICKLED..]).expect("write");
    let (_, msg) = next_message(&seen);
    assert_eq!((msg.tid(), msg.front().len()), (1, 4096), "{proto:?}");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

#[test]
fn trickled_bytes_take_no_credit_v1() {
    trickled_bytes_take_no_credit(ProtocolVersion::V1);
}

#[test]
fn trickled_bytes_take_no_credit_v2() {
    trickled_bytes_take_no_credit(ProtocolVersion::V2);
}

/// A dispatch throttle whose share (an eighth of it) is less than a read: no read
/// credit, so each lone message asks as it did before, and all of it is released.
fn a_small_throttle_gives_no_read_credit(proto: ProtocolVersion) {
    let config = MessengerConfig { dispatch_throttle_bytes: 16 << 10, ..test_config(1) };
    let (srv, seen, mut peer) = serve(proto, config);
    send_lone(proto, &mut peer, &seen);
    assert_eq!(budget_requests(&srv), LONE, "{proto:?}: each message asked for its budget");
    wait_until_released(proto, &srv);
    srv.shutdown();
}

#[test]
fn a_small_throttle_gives_no_read_credit_v1() {
    a_small_throttle_gives_no_read_credit(ProtocolVersion::V1);
}

#[test]
fn a_small_throttle_gives_no_read_credit_v2() {
    a_small_throttle_gives_no_read_credit(ProtocolVersion::V2);
}

#[test]
fn lone_messages_take_no_budget_round_v1() {
    lone_messages_take_no_budget_round(ProtocolVersion::V1);
}

#[test]
fn lone_messages_take_no_budget_round_v2() {
    lone_messages_take_no_budget_round(ProtocolVersion::V2);
}
