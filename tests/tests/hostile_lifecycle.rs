//! Loose ends of a connection's life: `mark_down` is synchronous (no dispatch of the
//! connection's messages starts after it returns), and a configuration that would spin
//! or panic is refused when the messenger is created.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Marks the connection down from inside `ms_dispatch` of message `at`, and counts any
/// message of it dispatched afterwards.
struct MarkDownAt {
    at: u64,
    marked: AtomicBool,
    after: AtomicU64,
    done: crossbeam_channel::Sender<()>,
}

impl Dispatcher<Connection> for MarkDownAt {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        if self.marked.load(Ordering::SeqCst) {
            self.after.fetch_add(1, Ordering::SeqCst);
        } else if msg.tid() == self.at {
            conn.mark_down();
            self.marked.store(true, Ordering::SeqCst);
            let _ = self.done.send(());
        }
        Dispatched::Taken
    }
}

// Ceph's mark_down stops the connection under its lock and discards its queue: nothing
// it read is dispatched afterwards.
fn no_message_is_dispatched_after_mark_down_returns_over(proto: ProtocolVersion) {
    for round in 0..5 {
        let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(2))
            .expect("messenger");
        srv.set_default_policy(Policy::stateless_server());
        srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        srv.start().expect("start");
        let (tx, rx) = crossbeam_channel::unbounded();
        let d = Arc::new(MarkDownAt {
            at: 20,
            marked: AtomicBool::new(false),
            after: AtomicU64::new(0),
            done: tx,
        });
        srv.add_dispatcher_head(d.clone()).expect("dispatcher");
        let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
        let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        // A stream the server is still reading while it marks the connection down.
        for tid in 0..5_000u64 {
            let _ = conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[0; 512])));
        }
        rx.recv_timeout(WAIT).expect("marked down");
        // Once the driver has closed, nothing more can come from the worker; once the
        // dispatch queue is empty, nothing more from it.
        let deadline = Instant::now() + WAIT;
        while srv.connection_count() > 0 || srv.counters_json()["dispatch_queue"]["len"] != 0 {
            assert!(Instant::now() < deadline, "the connection did not close");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(d.after.load(Ordering::SeqCst), 0, "round {round}: dispatched after mark_down");
        cli.shutdown();
        srv.shutdown();
    }
}

#[test]
fn no_message_is_dispatched_after_mark_down_returns() {
    no_message_is_dispatched_after_mark_down_returns_over(ProtocolVersion::V1);
}

#[test]
fn no_message_is_dispatched_after_mark_down_returns_over_msgr2() {
    no_message_is_dispatched_after_mark_down_returns_over(ProtocolVersion::V2);
}

fn refused(config: MessengerConfig) -> String {
    match Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config) {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            e.to_string()
        }
    }
}

#[test]
fn configurations_that_would_spin_or_panic_are_refused() {
    let ok = test_config(1);
    assert!(ok.validate().is_ok());
    let e = refused(MessengerConfig { keepalive_interval: Some(Duration::ZERO), ..ok.clone() });
    assert!(e.contains("keepalive_interval"), "{e}");
    let e = refused(MessengerConfig { read_budget: 0, ..ok.clone() });
    assert!(e.contains("read_budget"), "{e}");
    let e = refused(MessengerConfig { initial_backoff: Duration::ZERO, ..ok.clone() });
    assert!(e.contains("initial_backoff"), "{e}");
    let e = refused(MessengerConfig { connection_ready_timeout: Duration::MAX, ..ok.clone() });
    assert!(e.contains("connection_ready_timeout"), "{e}");
    let e = refused(MessengerConfig { connection_idle_timeout: Duration::MAX, ..ok.clone() });
    assert!(e.contains("connection_idle_timeout"), "{e}");
    let e = refused(MessengerConfig {
        initial_backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(1),
        ..ok.clone()
    });
    assert!(e.contains("max_backoff"), "{e}");
    let e = refused(MessengerConfig { workers: 0, ..ok.clone() });
    assert!(e.contains("workers"), "{e}");
    let e = refused(MessengerConfig { read_buffer: 0, ..ok.clone() });
    assert!(e.contains("read_buffer"), "{e}");
    let e = refused(MessengerConfig { dispatch_batch: 0, ..ok.clone() });
    assert!(e.contains("dispatch_batch"), "{e}");
    let e = refused(MessengerConfig { max_queued_bytes: 0, ..ok.clone() });
    assert!(e.contains("max_queued_bytes"), "{e}");
    let e = refused(MessengerConfig {
        max_queued_bytes: 1 << 30,
        max_total_queued_bytes: 1 << 20,
        ..ok.clone()
    });
    assert!(e.contains("max_total_queued_bytes"), "{e}");
    let e = refused(MessengerConfig { payload_timeout: Duration::ZERO, ..ok.clone() });
    assert!(e.contains("payload_timeout"), "{e}");
    let e = refused(MessengerConfig { write_timeout: Duration::MAX, ..ok });
    assert!(e.contains("write_timeout"), "{e}");
}

/// Blocks in `ms_dispatch` until released, after handing out the connection.
struct Blocking {
    conn: crossbeam_channel::Sender<Connection>,
    release: crossbeam_channel::Receiver<()>,
}

impl Dispatcher<Connection> for Blocking {
    fn ms_dispatch(&self, conn: &Connection, _msg: Message) -> Dispatched {
        let _ = self.conn.send(conn.clone());
        let _ = self.release.recv_timeout(WAIT);
        Dispatched::Taken
    }
}

// A driver waiting for throttle budget queues one request, however often it is woken
// meanwhile (Ceph's AsyncConnection retries on a timer instead).
fn a_waiting_connection_queues_one_throttle_request_however_often_it_is_woken_over(
    proto: ProtocolVersion,
) {
    let config = MessengerConfig { dispatch_throttle_bytes: 64 << 10, ..test_config(1) };
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (conn_tx, conn_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(Blocking { conn: conn_tx, release: release_rx }))
        .expect("dispatcher");
    let (cli, _rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    for tid in 0..8u64 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![0u8; 32 << 10])))
            .expect("send");
    }
    let server_side = conn_rx.recv_timeout(WAIT).expect("first message dispatched");
    let deadline = Instant::now() + WAIT;
    while srv.dispatch_throttle().waiting() == 0 {
        assert!(Instant::now() < deadline, "the server never waited for budget");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Each keepalive command wakes the waiting driver.
    for _ in 0..1000 {
        server_side.send_keepalive();
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        assert_eq!(srv.dispatch_throttle().waiting(), 1, "requests pile up");
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..8 {
        let _ = release_tx.send(());
    }
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_waiting_connection_queues_one_throttle_request_however_often_it_is_woken() {
    a_waiting_connection_queues_one_throttle_request_however_often_it_is_woken_over(
        ProtocolVersion::V1,
    );
}

#[test]
fn a_waiting_connection_queues_one_throttle_request_however_often_it_is_woken_over_msgr2() {
    a_waiting_connection_queues_one_throttle_request_however_often_it_is_woken_over(
        ProtocolVersion::V2,
    );
}
