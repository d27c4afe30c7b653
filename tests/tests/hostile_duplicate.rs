//! A duplicate message (`seq <= in_seq`) is dropped as it streams in: it is charged to
//! no throttle, so it must not be stored either, whatever length it announces.

use std::io::Write;

use messenger::Policy;
use protocol::types::EntityType;
use tests::hostile::*;
use tests::loopback::*;

const MIB: u32 = 1 << 20;

/// A counter of the server summed over its workers.
fn worker_sum(srv: &messenger::Messenger, name: &str) -> u64 {
    let counters = srv.counters_json();
    let Some(sections) = counters.as_object() else { return 0 };
    sections
        .iter()
        .filter(|(k, _)| k.starts_with("AsyncMessenger::Worker"))
        .map(|(_, v)| v[name].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until the server's sockets have read `total` bytes in all (no event reports
/// it, so the counter is polled, with a deadline).
fn wait_until_read(srv: &messenger::Messenger, total: u64) {
    wait_until(
        || srv.totals().recv_bytes >= total,
        || "the server stopped reading a duplicate".into(),
    );
}

// Ceph skips a duplicate's payload too (msgr-v1.md 3.9); on a fresh session in_seq is 0,
// so `seq: 0` makes any message a duplicate.
#[test]
fn a_duplicate_announcing_128_mib_is_not_stored() {
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let (mut sock, footer) = handshaken_socket(srv.my_addr(), Policy::lossy_client());
    let data_len = 128 * MIB;
    sock.write_all(&msg_head(0, 1, 0, data_len)).expect("header");
    let chunk = vec![0u8; MIB as usize];
    let before = srv.totals().recv_bytes;
    for _ in 0..32 {
        sock.write_all(&chunk).expect("payload");
    }
    // Once the server has read those 32 MiB, it holds none of them.
    wait_until_read(&srv, before + 32 * u64::from(MIB));
    let held = worker_sum(&srv, "msgr_recv_held_bytes");
    assert!(held < u64::from(MIB), "a duplicate holds {held} bytes");
    assert_eq!(srv.dispatch_throttle().current(), 0);

    // The rest of it, its footer, then a real message: the session goes on.
    for _ in 32..128 {
        sock.write_all(&chunk).expect("payload");
    }
    sock.write_all(&vec![0u8; footer.encoded_len()]).expect("footer");
    sock.write_all(&msg_frame(1, 42, b"after the duplicate", footer)).expect("message");
    let (_, m) = next_message(&srv_rx);
    assert_eq!(m.tid(), 42);
    assert_no_more_messages(&srv_rx, "the duplicate was delivered");
    srv.shutdown();
}

// The same over msgr2 (crc mode): a MESSAGE frame whose header2 carries a seq the server
// already received, announcing a 128 MiB data segment. Its segments must be checked (crc)
// as they stream by and dropped, never gathered: the acceptor holds none of it and
// charges no throttle, and the session goes on with the next message.
#[test]
fn a_duplicate_announcing_128_mib_is_not_stored_over_msgr2() {
    use protocol::ProtocolVersion;
    use tests::hostile_v2::message_pieces;
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let v2 = addr_for(messenger::ProtocolVersion::V2, srv.my_addr());
    let mut peer = RawPeer::handshake(v2, Policy::lossy_client());
    assert_eq!(peer.protocol(), ProtocolVersion::V2);
    let first = peer.message(1, b"first");
    peer.sock.write_all(&first).expect("first message");
    assert_eq!(next_message(&srv_rx).1.tid(), 1);
    // Its permit goes back once its dispatcher returned (just after it was recorded).
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("message 1 still holds {}", srv.dispatch_throttle().current()),
    );

    // seq 1 again: a duplicate. Its data is calloc'd zeros (the pages stay untouched but
    // for the crc and the socket's reads), so the test itself holds almost nothing.
    let data_len = 128 * MIB as usize;
    let dup = message_pieces(1, 2, bytes::Bytes::new(), bytes::Bytes::from(vec![0u8; data_len]));
    let rss_before = rss_bytes();
    let recv_before = srv.totals().recv_bytes;
    let mut sent = 0usize;
    let mut checked = false;
    for piece in &dup {
        for chunk in piece.chunks(MIB as usize) {
            peer.sock.write_all(chunk).expect("duplicate");
            sent += chunk.len();
            if !checked && sent >= 64 * MIB as usize {
                checked = true;
                // Once the server has read 64 MiB of it, it holds none of them.
                wait_until_read(&srv, recv_before + 64 * u64::from(MIB));
                let grew = rss_bytes().saturating_sub(rss_before);
                assert!(grew < 32 * u64::from(MIB), "a duplicate grew the process by {grew} bytes");
                assert_eq!(srv.dispatch_throttle().current(), 0, "a duplicate was charged");
            }
        }
    }
    assert!(checked);
    let after = peer.message(3, b"after the duplicate");
    peer.sock.write_all(&after).expect("message");
    let (_, m) = next_message(&srv_rx);
    assert_eq!(m.tid(), 3, "the duplicate was delivered, or the session lost");
    assert_no_more_messages(&srv_rx, "the duplicate was delivered");
    srv.shutdown();
}
