//! Loose ends of a connection's life: `mark_down` is synchronous (no dispatch of the
//! connection's messages starts after it returns), and a configuration that would spin
//! or panic is refused when the messenger is created.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{
    ConnState, Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy,
    ProtocolVersion,
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

/// What [`MarkDownInFastDispatch`] saw.
#[derive(Debug, PartialEq)]
enum Heard {
    MarkedDown(u64),
    Connect(u64),
    Reset(u64),
    RemoteReset(u64),
    Barrier,
}

/// Marks the connection down from fast dispatch of the first [`MSG_TEST`] message, or
/// with `at_connect` from `ms_handle_fast_connect`; takes [`MSG_BARRIER`] in
/// `ms_dispatch`; reports both and every event.
struct MarkDownInFastDispatch {
    tx: crossbeam_channel::Sender<Heard>,
    at_connect: bool,
}

const MSG_BARRIER: u16 = 0x7f01;

impl Dispatcher<Connection> for MarkDownInFastDispatch {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_TEST
    }
    fn ms_fast_dispatch(&self, conn: &Connection, _msg: Message) {
        conn.mark_down();
        let _ = self.tx.send(Heard::MarkedDown(conn.id()));
    }
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        if msg.msg_type() == MSG_BARRIER {
            let _ = self.tx.send(Heard::Barrier);
        }
        Dispatched::Taken
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        // Not the loopback connection's, which it hears as it is added (and which no
        // mark_down closes).
        if self.at_connect && !conn.is_loopback() {
            conn.mark_down();
            let _ = self.tx.send(Heard::MarkedDown(conn.id()));
        }
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        let _ = self.tx.send(Heard::Connect(conn.id()));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(Heard::Reset(conn.id()));
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let _ = self.tx.send(Heard::RemoteReset(conn.id()));
    }
}

/// A started client with `policy` on one worker with a [`MarkDownInFastDispatch`], holding back
/// every message from an OSD by an injected delay of up to 600 s (seeded: minutes).
fn marking_client(
    at_connect: bool,
    policy: Policy,
) -> (Messenger, crossbeam_channel::Receiver<Heard>) {
    let config = MessengerConfig {
        inject_delay_type: vec![EntityType::OSD],
        inject_delay_max: Duration::from_secs(600),
        inject_delay_probability: 1.0,
        inject_seed: 7,
        ..test_config(1)
    };
    let cli = Messenger::new(EntityName::new(EntityType::CLIENT, 2), 2, config).expect("messenger");
    cli.set_default_policy(policy);
    cli.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    cli.add_dispatcher_head(Arc::new(MarkDownInFastDispatch { tx, at_connect }))
        .expect("dispatcher");
    (cli, rx)
}

/// Waits until `cli` holds back the server's echo (the injected delay) and asserts that
/// the dispatcher heard the connect of `conn` and nothing else.
fn echo_held(cli: &Messenger, rx: &crossbeam_channel::Receiver<Heard>, conn: &Connection) {
    let held = || {
        cli.worker_counters()
            .iter()
            .map(|c| c.inject_delayed_messages.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    wait_until(|| held() == 1, || format!("the echo was not held back ({} held)", held()));
    assert_eq!(rx.recv_timeout(WAIT).expect("connected"), Heard::Connect(conn.id()));
}

/// Everything `cli`'s dispatcher hears from now until a loopback barrier, once its
/// connections are gone: a driver that is gone queues nothing more, and the dispatch
/// thread takes queued events before a loopback message.
fn heard_until_barrier(cli: &Messenger, rx: &crossbeam_channel::Receiver<Heard>) -> Vec<Heard> {
    wait_for_connection_count(cli, 0, "client");
    cli.get_loopback_connection()
        .send_message(test_message(MSG_BARRIER, 2, Bytes::new()))
        .expect("loopback send");
    let mut heard = Vec::new();
    loop {
        match rx.recv_timeout(WAIT).expect("the barrier never came") {
            Heard::Barrier => return heard,
            h => heard.push(h),
        }
    }
}

// Ceph's mark_down stops the connection before it returns: no ms_handle_reset (or any
// other event) follows it. Here the reset is raised in the same pump as the mark_down:
// an injected delay holds the server's echo until the client's socket is cut; the lossy
// session's reset first delivers what was held, whose fast dispatch marks the
// connection down, and only then would the reset be queued.
fn no_event_is_queued_after_mark_down_returns_over(proto: ProtocolVersion) {
    let (srv, _srv_addr, _srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let (cli, rx) = marking_client(false, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"echo me"))).expect("send");
    echo_held(&cli, &rx, &conn);
    conn.inject_socket_failure();
    assert_eq!(
        rx.recv_timeout(WAIT).expect("the held echo is delivered at the reset"),
        Heard::MarkedDown(conn.id())
    );
    assert_eq!(heard_until_barrier(&cli, &rx), [], "heard after mark_down returned");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn no_event_is_queued_after_mark_down_returns() {
    no_event_is_queued_after_mark_down_returns_over(ProtocolVersion::V1);
}

#[test]
fn no_event_is_queued_after_mark_down_returns_over_msgr2() {
    no_event_is_queued_after_mark_down_returns_over(ProtocolVersion::V2);
}

/// `ms_handle_fast_connect` runs before the connect event is queued; a mark_down made
/// there is the last the dispatchers hear of the connection: no `ms_handle_connect`.
#[test]
fn mark_down_from_fast_connect_drops_the_connect_event() {
    let (srv, _srv_addr, _srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let (cli, rx) = marking_client(true, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"echo me"))).expect("send");
    assert_eq!(rx.recv_timeout(WAIT).expect("fast connect"), Heard::MarkedDown(conn.id()));
    assert_eq!(heard_until_barrier(&cli, &rx), [], "heard after mark_down returned");
    cli.shutdown();
    srv.shutdown();
}

/// The messages `srv` received, once its stateful `session` went to standby: the client
/// closed the socket, and the server has read all it ever will of it.
fn received_by_standby(srv: &Messenger, session: &Connection) -> u64 {
    wait_until(
        || session.state() == ConnState::Standby,
        || format!("server session {:?}", session.state()),
    );
    srv.worker_counters().iter().map(|c| c.recv_messages.load(Ordering::SeqCst)).sum()
}

// Ceph's mark_down stops the connection before it returns: nothing more of it goes out.
// Here the mark_down comes in the pump that reopens a lossless session after a cut, with
// messages sent meanwhile waiting to be written: the echo held back by an injected delay
// is delivered as the session opens (ahead of the connect event), and its fast dispatch
// marks the connection down. The driver must take the mark_down before it writes them,
// or the server receives messages of a connection the client had already marked down.
fn nothing_is_written_after_mark_down_returns_over(proto: ProtocolVersion) {
    let (srv, _srv_addr, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), true);
    let (cli, rx) = marking_client(false, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"echo me"))).expect("send");
    let (session, first) = next_message(&srx);
    assert_eq!(first.tid(), 1);
    echo_held(&cli, &rx, &conn);
    // The cut and the sends after it reach the driver together (posted from its own
    // pump, where it takes them in its next): the sends are written once the session
    // has reopened, in the pump that marks it down.
    let (sent_tx, sent_rx) = crossbeam_channel::bounded(1);
    let c = conn.clone();
    conn.inject_before_settle(move || {
        c.inject_socket_failure();
        let sent: Result<Vec<()>, _> =
            (2..=5).map(|tid| c.send_message(test_message(MSG_TEST, tid, Bytes::new()))).collect();
        let _ = sent_tx.send(sent);
    });
    sent_rx.recv_timeout(WAIT).expect("the seam ran").expect("sends queued");
    assert_eq!(
        rx.recv_timeout(WAIT).expect("the held echo is delivered as the session opens"),
        Heard::MarkedDown(conn.id())
    );
    assert_eq!(heard_until_barrier(&cli, &rx), [], "heard after mark_down returned");
    assert_eq!(received_by_standby(&srv, &session), 1, "written after mark_down returned");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn nothing_is_written_after_mark_down_returns() {
    nothing_is_written_after_mark_down_returns_over(ProtocolVersion::V1);
}

#[test]
fn nothing_is_written_after_mark_down_returns_over_msgr2() {
    nothing_is_written_after_mark_down_returns_over(ProtocolVersion::V2);
}

// The same from another thread: a mark_down that returns while the driver is about to
// write (after its last look at the mailbox; the seam stands in for the other thread)
// stops that write.
fn a_mark_down_landing_before_a_write_stops_it_over(proto: ProtocolVersion) {
    let (srv, _srv_addr, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    let (cli, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), test_config(1));
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (session, first) = next_message(&srx);
    assert_eq!(first.tid(), 1);
    let c = conn.clone();
    conn.inject_before_write(move || c.mark_down());
    conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    wait_for_connection_count(&cli, 0, "client");
    assert_eq!(received_by_standby(&srv, &session), 1, "written after mark_down returned");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_mark_down_landing_before_a_write_stops_it() {
    a_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V1);
}

#[test]
fn a_mark_down_landing_before_a_write_stops_it_over_msgr2() {
    a_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V2);
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
    // A nanosecond spins as zero does (re-armed every loop iteration).
    let tiny = Duration::from_nanos(1);
    let e = refused(MessengerConfig { keepalive_interval: Some(tiny), ..ok.clone() });
    assert!(e.contains("keepalive_interval"), "{e}");
    let e = refused(MessengerConfig { initial_backoff: tiny, max_backoff: tiny, ..ok.clone() });
    assert!(e.contains("backoff"), "{e}");
    let e = refused(MessengerConfig { payload_timeout: tiny, ..ok.clone() });
    assert!(e.contains("payload_timeout"), "{e}");
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
    let e = refused(MessengerConfig { max_queued_events: 0, ..ok.clone() });
    assert!(e.contains("max_queued_events"), "{e}");
    let e = refused(MessengerConfig { max_queued_bytes: 0, ..ok.clone() });
    assert!(e.contains("max_queued_bytes"), "{e}");
    let e = refused(MessengerConfig {
        max_queued_bytes: 1 << 30,
        max_total_queued_bytes: 1 << 20,
        ..ok.clone()
    });
    assert!(e.contains("max_total_queued_bytes"), "{e}");
    // A zero segment limit would refuse every message carrying that segment.
    for (option, config) in [
        ("max_front", MessengerConfig { max_front: 0, ..ok.clone() }),
        ("max_middle", MessengerConfig { max_middle: 0, ..ok.clone() }),
        ("max_data", MessengerConfig { max_data: 0, ..ok.clone() }),
    ] {
        let e = refused(config);
        assert!(e.contains(option), "{e}");
    }
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
    // Each keepalive command wakes the waiting driver. A probe posted after them runs
    // once the driver has taken them all: the wake-ups reached it before the window.
    for _ in 0..1000 {
        server_side.send_keepalive();
    }
    let (probe_tx, probe_rx) = crossbeam_channel::bounded(1);
    server_side.inject_before_settle(move || {
        let _ = probe_tx.send(());
    });
    probe_rx.recv_timeout(WAIT).expect("the driver took the keepalives");
    // The probe orders the check after every wake-up; the window after it stays, as a
    // timed retry (Ceph's way) would queue its requests later, with no event to wait on.
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

/// Blocks in the first `ms_handle_accept` until released, after saying so.
struct BlockingAccept {
    blocked: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
    first: AtomicBool,
}

impl Dispatcher<Connection> for BlockingAccept {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_handle_accept(&self, _conn: &Connection) {
        if !self.first.swap(true, Ordering::SeqCst) {
            let _ = self.blocked.send(());
            let _ = self.release.recv_timeout(WAIT);
        }
    }
}

/// The server's queued connection events.
fn queued_events(m: &Messenger) -> u64 {
    m.counters_json()["dispatch_queue"]["events"].as_u64().expect("events")
}

// Connection events (accept, reset…) are not messages: no throttle is charged for them,
// and Ceph queues them without bound. While the dispatch thread is held up, a peer that
// connects and leaves over and over adds two for each connection: the listener stops
// accepting once `max_queued_events` are queued, and takes up again once they drain.
fn connection_floods_stop_at_the_event_bound_over(proto: ProtocolVersion) {
    const MAX_EVENTS: usize = 64;
    const CYCLES: usize = 400;
    let config = MessengerConfig { max_queued_events: MAX_EVENTS, ..test_config(2) };
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (blocked_tx, blocked_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(BlockingAccept {
        blocked: blocked_tx,
        release: release_rx,
        first: AtomicBool::new(false),
    }))
    .expect("dispatcher");
    let (cli, crx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let target = addr_for(proto, srv.my_addr());
    let mut stalled = None;
    for cycle in 0..CYCLES {
        let conn = cli.connect_to(EntityType::OSD, target);
        // A connect the listener does not take shows as one that does not complete, once
        // the listener says it paused; a slow one on a loaded machine is waited for.
        let give_up = Instant::now() + WAIT;
        let connected = loop {
            let deadline = (Instant::now() + Duration::from_millis(100)).min(give_up);
            if std::iter::from_fn(|| crx.recv_deadline(deadline).ok())
                .any(|s| matches!(s, Seen::Connect(c) if c == conn))
            {
                break true;
            }
            if tests::hostile::worker_counter(&srv, "msgr_accept_paused_for_events") > 0
                || Instant::now() >= give_up
            {
                break false;
            }
        };
        if !connected {
            stalled = Some((cycle, conn));
            break;
        }
        if cycle == 0 {
            blocked_rx.recv_timeout(WAIT).expect("the dispatch thread is held up");
        }
        conn.mark_down();
        // This connection gone from the server before the next connect: when the
        // listener decides on a connection, the events of all earlier ones are queued
        // but for those of one (the pump that forgot it may not have queued them yet,
        // on a loaded machine). Without this wait, events of several connections could
        // be on their way when the listener looked.
        wait_for_connection_count(&srv, 0, "server");
    }
    let held = queued_events(&srv);
    let Some((cycle, conn)) = stalled else {
        panic!("{CYCLES} connections accepted, {held} events queued");
    };
    // The last connection accepted saw fewer than the bound, and added its two events
    // to what was queued then and what one more connection still had on its way (two).
    assert!(held <= MAX_EVENTS as u64 + 3, "{held} events queued, bound {MAX_EVENTS}");
    assert!(cycle >= MAX_EVENTS / 2 - 2, "stalled at connection {cycle}");
    release_tx.send(()).expect("release");
    assert!(
        wait_for_event(&crx, |s| matches!(s, Seen::Connect(c) if *c == conn)),
        "accepting did not resume once the events drained"
    );
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn connection_floods_stop_at_the_event_bound() {
    connection_floods_stop_at_the_event_bound_over(ProtocolVersion::V1);
}

#[test]
fn connection_floods_stop_at_the_event_bound_over_msgr2() {
    connection_floods_stop_at_the_event_bound_over(ProtocolVersion::V2);
}

// A msgr2 peer whose CLIENT_IDENT lists a legacy address before its msgr2 one (port 0,
// as a client's): the acceptor registers the session under the msgr2 address, while the
// open session published the first. Removal looked the session up by the published one,
// so every such connect left an entry in the session table (and its handle) behind.
#[test]
fn sessions_of_peers_listing_a_legacy_address_first_are_removed() {
    use protocol::types::{EntityAddr, EntityAddrVec, Features};
    use protocol::v2::frames::ClientIdent;
    use tests::hostile_v2::{control, read_frame, v2_peer_addr, v2_socket_at_ident};
    const PEERS: u32 = 20;
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let target = addr_for(ProtocolVersion::V2, srv.my_addr());
    for nonce in 5_000..5_000 + PEERS {
        let me = v2_peer_addr(nonce);
        let legacy = EntityAddr::legacy(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), nonce);
        let mut sock = v2_socket_at_ident(target, me, Policy::lossy_client());
        let ident = control(&ClientIdent {
            addrs: EntityAddrVec { addrs: vec![legacy, me] },
            target_addr: target,
            gid: -1,
            global_seq: 10,
            supported_features: Features::PACIFIC_ADVERTISED,
            required_features: Features::MSG_ADDR2,
            flags: 0,
            client_cookie: u64::from(nonce),
        });
        std::io::Write::write_all(&mut sock, &ident).expect("ident");
        let (tag, _) = read_frame(&mut sock).expect("an answer");
        assert_eq!(tag, protocol::v2::Tag::SERVER_IDENT);
    }
    wait_for_connection_count(&srv, 0, "server");
    assert_eq!(srv.session_count(), 0, "sessions left behind");
    srv.shutdown();
}

/// Runs `call` with `m` on worker `worker` of its pool and returns what it returned.
fn on_worker<R: Send + 'static>(
    m: &Arc<Messenger>,
    worker: usize,
    call: impl FnOnce(&Messenger) -> R + Send + 'static,
) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let m2 = m.clone();
    m.pool()
        .handle(worker)
        .dispatch_event_external(move |_| {
            let _ = tx.send(call(&m2));
        })
        .expect("worker running");
    rx.recv_timeout(WAIT).expect("the call on the worker returned")
}

/// A bound, started server on `workers` workers with no dispatcher yet (the first
/// `add_dispatcher_*` starts its listener), and the worker its listener went on.
fn unready_server(workers: usize) -> (Arc<Messenger>, usize) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(workers))
        .expect("messenger");
    m.set_default_policy(Policy::stateless_server());
    // bind places the listener on the least loaded worker; nothing runs meanwhile.
    let listener_worker = m.pool().least_loaded().id();
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    (Arc::new(m), listener_worker)
}

/// One echoed message from a new client: the server's listener accepts and answers.
fn answers(srv: &Messenger) {
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 7, Bytes::from_static(b"ping"))).expect("send");
    let (_, reply) = next_message(&cli_rx);
    assert_eq!(reply.tid(), 7);
    cli.shutdown();
}

// The first dispatcher added from the listener's own worker (a fast dispatch of another
// messenger on a shared pool, a timer) starts the listener, as Ceph's Processor::start
// does there (its submit_to runs inline on its own worker). Before, the registration
// waited for that worker (submit_to: OnOwnThread), failed, and dropped the listener:
// the messenger announced an address nothing listened on, and every later
// add_dispatcher_* said Ok.
#[test]
fn the_first_dispatcher_added_on_the_listeners_worker_starts_the_listener() {
    let (srv, _) = unready_server(1);
    let (rec, _rx) = Recorder::new(true);
    on_worker(&srv, 0, move |m| m.add_dispatcher_head(rec)).expect("dispatcher added");
    answers(&srv);
    srv.shutdown();
}

// From another worker while the listener's is busy: the call does not wait for it (two
// workers doing so to each other would deadlock), and the listener serves once the busy
// worker is free. Before, add_dispatcher_head blocked in submit_to until it was.
#[test]
fn a_dispatcher_added_on_another_worker_does_not_wait_for_the_listeners() {
    let (srv, listener_worker) = unready_server(2);
    let caller = 1 - listener_worker;
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let (blocked, is_blocked) = crossbeam_channel::bounded(1);
    srv.pool()
        .handle(listener_worker)
        .dispatch_event_external(move |_| {
            let _ = blocked.send(());
            let _ = released.recv_timeout(WAIT);
        })
        .expect("worker running");
    is_blocked.recv_timeout(WAIT).expect("the listener's worker is blocked");
    let (rec, _rx) = Recorder::new(true);
    let (added, while_blocked) = on_worker(&srv, caller, move |m| {
        let added = m.add_dispatcher_head(rec);
        // Fails once the blocked worker gave up waiting: the call waited for it.
        (added, release.send(()).is_ok())
    });
    added.expect("dispatcher added");
    assert!(while_blocked, "add_dispatcher_head waited for the listener's busy worker");
    answers(&srv);
    srv.shutdown();
}
