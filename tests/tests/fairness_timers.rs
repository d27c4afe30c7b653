//! Fairness beyond the read path: while one connection keeps a one-worker messenger
//! busy, that worker's timers (a half-open handshake's timeout),
//! its external events (`submit_to`) and another connection's round trips still run
//! within a bound. The busy connection is a peer flooding small messages, or a local
//! thread calling `send_message` in a tight loop on one connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use protocol::ProtocolVersion;
use tests::counting::{Count, Forward};
use tests::hostile::*;
use tests::loopback::*;

/// How long a stalled timer, event or round trip may take at most: far beyond what a few
/// read phases take even in a debug build on a loaded machine, far below "never".
const STALL: Duration = Duration::from_secs(10);

fn one_worker_server(config: MessengerConfig) -> (Messenger, Arc<Count>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    m.set_default_policy(Policy::stateless_server());
    m.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    // Counts what it is sent and drops it (fast dispatch, on the worker).
    let sink = Count::new(true);
    m.add_dispatcher_head(sink.clone()).expect("dispatcher");
    (m, sink)
}

/// A peer flooding `srv` with small messages until `stop`.
fn small_flood(srv: &Messenger, proto: ProtocolVersion, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let reader = drain_in_background(peer.sock.try_clone().expect("clone"), stop.clone());
    std::thread::spawn(move || {
        let mut sock = peer.sock.try_clone().expect("clone");
        let mut tid = 1u64;
        while !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::with_capacity(256 * 128);
            for _ in 0..256 {
                batch.extend_from_slice(&peer.message(tid, &tid.to_le_bytes()));
                tid += 1;
            }
            if std::io::Write::write_all(&mut sock, &batch).is_err() {
                break;
            }
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
    })
}

/// Under a peer's flood, a half-open handshake on the same worker is timed out
/// (`connection_ready_timeout`) and the worker's external events run, each within
/// [`STALL`].
fn timers_and_events_run_under_a_flood(proto: ProtocolVersion) {
    let ready_timeout = Duration::from_millis(300);
    let config = MessengerConfig {
        connection_ready_timeout: ready_timeout,
        payload_timeout: PATIENCE,
        ..test_config(1)
    };
    let (srv, sink) = one_worker_server(config);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = small_flood(&srv, proto, stop.clone());
    wait_until(|| sink.count() > 10_000, || "the flood did not start".into());

    // A half-open connection: the banner only, never a handshake.
    let mut half = banner_socket(srv.my_addr().addr.expect("bound"));
    let opened = Instant::now();
    let closed = closed_within(&mut half, STALL);
    let took = opened.elapsed();

    // External events on the flooded worker.
    let handle = srv.pool().handle(0).clone();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        handle.submit_to(|_| ()).expect("submit");
        worst = worst.max(t.elapsed());
    }
    let still = !flood.is_finished();
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flooder");
    eprintln!("{proto:?}: half-open closed after {took:?}; submit_to worst {worst:?}");
    assert!(still, "the flood ended early");
    assert!(closed, "{proto:?}: a half-open handshake outlived {STALL:?} under a flood");
    assert!(worst < STALL, "{proto:?}: an external event waited {worst:?} under a flood");
    srv.shutdown();
}

#[test]
fn timers_and_events_run_under_a_v1_flood() {
    timers_and_events_run_under_a_flood(ProtocolVersion::V1);
}

#[test]
fn timers_and_events_run_under_a_v2_flood() {
    timers_and_events_run_under_a_flood(ProtocolVersion::V2);
}

/// Echoes every message back (fast dispatch).
struct Echo;

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.ms_fast_dispatch(conn, msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        let mut reply = Message::new(msg.msg_type(), Bytes::new());
        reply.set_tid(msg.tid());
        let _ = conn.send_message(reply);
    }
}

/// A client on one worker: a thread sends 64 KiB messages in a tight loop on one
/// connection (to a sink) while the test makes round trips on another (to an echo
/// server), each within [`STALL`].
fn a_sending_thread_does_not_stall_another_connection(proto: ProtocolVersion) {
    let (sink_srv, sink) = one_worker_server(test_config(1));
    let echo_srv =
        Messenger::new(EntityName::new(EntityType::OSD, 1), 2, test_config(1)).expect("echo");
    echo_srv.set_default_policy(Policy::stateless_server());
    echo_srv.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    echo_srv.start().expect("start");
    echo_srv.add_dispatcher_head(Arc::new(Echo)).expect("dispatcher");

    let client =
        Messenger::new(EntityName::new(EntityType::CLIENT, 9), 9, test_config(1)).expect("client");
    client.set_default_policy(Policy::lossy_client());
    client.start().expect("start");
    let (tx, replies) = crossbeam_channel::unbounded();
    // Hands each reply's tid to the test.
    client.add_dispatcher_head(Forward::tids(tx, false)).expect("dispatcher");

    let busy = client.connect_to(EntityType::OSD, addr_for(proto, sink_srv.my_addr()));
    let quiet = client.connect_to(EntityType::OSD, addr_for(proto, echo_srv.my_addr()));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (busy, stop) = (busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let data = Bytes::from(vec![7u8; 64 << 10]);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut m = Message::new(MSG_HOSTILE, Bytes::new());
                m.set_data(data.clone());
                if busy.send_message(m).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    wait_until(|| sink.count() > 100, || "the sender did not start".into());
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut trips = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        trips += 1;
        let mut ping = Message::new(0x7f00, Bytes::new());
        ping.set_tid(trips);
        let t = Instant::now();
        quiet.send_message(ping).expect("ping");
        let got = replies.recv_timeout(STALL);
        worst = worst.max(t.elapsed());
        assert_eq!(got.ok(), Some(trips), "{proto:?}: a round trip stalled beside a sender");
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    eprintln!(
        "{proto:?}: {trips} round trips, worst {worst:?}; sender queued {sent}, sink got {}",
        sink.count()
    );
    client.shutdown();
    sink_srv.shutdown();
    echo_srv.shutdown();
}

#[test]
fn a_sending_thread_does_not_stall_another_connection_v1() {
    a_sending_thread_does_not_stall_another_connection(ProtocolVersion::V1);
}

#[test]
fn a_sending_thread_does_not_stall_another_connection_v2() {
    a_sending_thread_does_not_stall_another_connection(ProtocolVersion::V2);
}
