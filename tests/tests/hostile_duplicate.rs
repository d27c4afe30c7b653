//! A duplicate message (`seq <= in_seq`) is dropped as it streams in: it is charged to
//! no throttle, so it must not be stored either, whatever length it announces.

use std::io::Write;
use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + WAIT;
    while srv.totals().recv_bytes < before + 32 * u64::from(MIB) {
        assert!(Instant::now() < deadline, "the server stopped reading a duplicate");
        std::thread::sleep(Duration::from_millis(5));
    }
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
