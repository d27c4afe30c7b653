//! Messages in progress must not deadlock under the rule that the oldest goes past a
//! throttle's maximum only while what messages in progress do not hold is within it
//! (`dispatch::throttle`, `progress_may_overshoot`): several lossless peers each send
//! 1 MiB messages, far larger than the dispatch throttle (`ms_dispatch_throttle_bytes`)
//! and the policy's byte cap, with a count cap too, to a dispatcher (queued or fast)
//! that drops each message at once; with sockets cut every few milliseconds too, so
//! messages in progress are dropped and replayed. Every message arrives within the wait.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Connection, Messenger, MessengerConfig, Policy, Throttle};
use protocol::types::{EntityName, EntityType};
use protocol::ProtocolVersion;
use tests::counting::Forward;
use tests::loopback::{addr_for, client, test_config, test_message, WAIT};

const MSG_TEST: u16 = 0x7f00;

#[allow(clippy::too_many_arguments)]
fn run(
    proto: ProtocolVersion,
    workers: usize,
    dispatch_cap: u64,
    bytes_cap: Option<u64>,
    count_cap: Option<u64>,
    fast: bool,
    peers: usize,
    per_peer: usize,
    len: usize,
    cuts: bool,
) {
    let config = MessengerConfig { dispatch_throttle_bytes: dispatch_cap, ..test_config(workers) };
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateful_server());
    let bytes = bytes_cap.map(|c| Throttle::new("client bytes", c));
    let msgs = count_cap.map(|c| Throttle::new("client messages", c));
    srv.set_policy_throttlers(EntityType::CLIENT, bytes.clone(), msgs.clone());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    // Drops every message, telling the test its tid and data length.
    let dropper = Forward::new(tx, fast, |msg| (msg.tid(), msg.data().len()));
    srv.add_dispatcher_head(dropper).expect("dispatcher");
    let data = Bytes::from(vec![9u8; len]);
    let mut clients = Vec::new();
    for p in 0..peers {
        let (cli, _rx) = client(EntityType::CLIENT, 100 + p as u32, Policy::lossless_client());
        let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        clients.push((cli, conn));
    }
    for i in 0..per_peer {
        for (_, conn) in &clients {
            conn.send_message(test_message(MSG_TEST, i as u64, data.clone())).expect("send");
        }
    }
    let total = peers * per_peer;
    let cutter = cuts.then(|| {
        let conns: Vec<Connection> = clients.iter().map(|(_, c)| c.clone()).collect();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let h = std::thread::spawn(move || {
            let mut i = 0;
            while stop_rx.recv_timeout(Duration::from_millis(3))
                == Err(crossbeam_channel::RecvTimeoutError::Timeout)
            {
                conns[i % conns.len()].inject_socket_failure();
                i += 1;
            }
        });
        (stop_tx, h)
    });
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < total {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((_, n)) => {
                assert_eq!(n, len);
                got += 1;
            }
            Err(_) => panic!(
                "stalled at {got} of {total}: dispatch {:?} bytes {:?} msgs {:?} counters {:?}",
                srv.dispatch_throttle(),
                bytes,
                msgs,
                srv.dispatch_throttle().counters()
            ),
        }
    }
    // The path under test was taken: the oldest message in progress went past the cap.
    let overshoots = srv.dispatch_throttle().counters().inflight_overshoot;
    assert!(overshoots > 0, "no message in progress went past the dispatch throttle");
    if let Some((stop, h)) = cutter {
        drop(stop);
        h.join().expect("cutter");
    }
    for (cli, _) in clients {
        cli.shutdown();
    }
    srv.shutdown();
}

#[test]
fn dispatch_only_v1() {
    run(ProtocolVersion::V1, 2, 64 << 10, None, None, false, 6, 8, 1 << 20, false);
}
#[test]
fn dispatch_only_v2() {
    run(ProtocolVersion::V2, 2, 64 << 10, None, None, false, 6, 8, 1 << 20, false);
}
#[test]
fn dispatch_policy_v1() {
    run(ProtocolVersion::V1, 2, 64 << 10, Some(100 << 10), Some(3), false, 6, 8, 1 << 20, false);
}
#[test]
fn dispatch_policy_v2() {
    run(ProtocolVersion::V2, 2, 64 << 10, Some(100 << 10), Some(3), false, 6, 8, 1 << 20, false);
}
#[test]
fn dispatch_policy_fast_v1() {
    run(ProtocolVersion::V1, 1, 300 << 10, Some(64 << 10), Some(2), true, 6, 8, 1 << 20, false);
}
#[test]
fn dispatch_policy_fast_v2() {
    run(ProtocolVersion::V2, 1, 300 << 10, Some(64 << 10), Some(2), true, 6, 8, 1 << 20, false);
}
#[test]
fn mixed_sizes_v2() {
    run(ProtocolVersion::V2, 2, 64 << 10, Some(64 << 10), None, false, 8, 10, 200 << 10, false);
}

#[test]
fn cuts_v1() {
    run(ProtocolVersion::V1, 2, 64 << 10, Some(100 << 10), Some(3), false, 4, 10, 1 << 20, true);
}
#[test]
fn cuts_v2() {
    run(ProtocolVersion::V2, 2, 64 << 10, Some(100 << 10), Some(3), false, 4, 10, 1 << 20, true);
}
#[test]
fn cuts_fast_v2() {
    run(ProtocolVersion::V2, 1, 64 << 10, Some(64 << 10), None, true, 4, 10, 1 << 20, true);
}
