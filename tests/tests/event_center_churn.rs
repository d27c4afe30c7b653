//! The event center under connection churn: every time event a connection arms is fired
//! or cancelled when it goes away (the worker's timer count goes back to where it
//! started, even with deadlines a year out), and a message sent from another thread
//! just as the worker goes to sleep is delivered without waiting for an unrelated event.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::types::{EntityAddr, EntityType};
use protocol::Message;
use tests::hostile::RawPeer;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Deadlines far beyond the test: a timer left behind by a connection is still armed
/// at the end.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Armed timers on each of `m`'s workers (the worker ran an iteration since any
/// connection closed: `submit_to` is an external event run after that iteration's
/// file events and timers).
fn timers(m: &Messenger) -> Vec<usize> {
    m.pool().handles().iter().map(|h| h.submit_to(|cx| cx.timer_count()).expect("worker")).collect()
}

/// Live handlers on each of `m`'s workers.
fn handlers(m: &Messenger) -> Vec<usize> {
    m.pool()
        .handles()
        .iter()
        .map(|h| h.submit_to(|cx| cx.handler_count()).expect("worker"))
        .collect()
}

/// The timers and handlers on each of a messenger's workers, to come back to.
struct Baseline {
    timers: Vec<usize>,
    handlers: Vec<usize>,
}

impl Baseline {
    fn of(m: &Messenger) -> Self {
        Baseline { timers: timers(m), handlers: handlers(m) }
    }

    /// Waits until `m` has no connection left, shuts it down and checks its workers hold
    /// what they held before `what`.
    #[track_caller]
    fn assert_back(&self, m: &Messenger, what: &str) {
        wait_for_connection_count(m, 0, what);
        let (t1, h1) = (timers(m), handlers(m));
        m.shutdown();
        assert_eq!(h1, self.handlers, "handlers after {what}");
        assert_eq!(t1, self.timers, "timers after {what}");
    }
}

fn far_config() -> MessengerConfig {
    MessengerConfig {
        connection_ready_timeout: FAR,
        payload_timeout: FAR,
        connection_idle_timeout: FAR,
        ..test_config(1)
    }
}

/// Peers that connect and close (nothing sent, half a banner, a whole banner) leave
/// the server's worker with the timers and handlers it had before, although each
/// armed a handshake timeout a year out.
#[test]
fn connect_and_close_churn_leaves_no_timer() {
    let (srv, bound, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        far_config(),
    );
    let before = Baseline::of(&srv);
    const ROUNDS: usize = 3_000;
    for round in 0..ROUNDS {
        let mut s = TcpStream::connect(bound).expect("connect");
        match round % 3 {
            0 => {}
            1 => {
                let _ = s.write_all(&protocol::wire::BANNER[..4]);
            }
            _ => {
                let _ = s.write_all(protocol::wire::BANNER);
                let mut b = [0u8; 1];
                let _ = tests::read_some(&mut s, &mut b);
            }
        }
        drop(s);
    }
    before.assert_back(&srv, &format!("{ROUNDS} connects and closes"));
}

/// Half-open handshakes that time out leave nothing behind either.
#[test]
fn timed_out_handshakes_leave_no_timer() {
    let config = MessengerConfig {
        connection_ready_timeout: Duration::from_millis(100),
        payload_timeout: FAR,
        ..test_config(1)
    };
    let (srv, bound, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let before = Baseline::of(&srv);
    for _ in 0..5 {
        let mut socks: Vec<TcpStream> = (0..100)
            .map(|i| {
                let mut s = TcpStream::connect(bound).expect("connect");
                if i % 2 == 1 {
                    let _ = s.write_all(&protocol::wire::BANNER[..4]);
                }
                s.set_read_timeout(Some(WAIT)).expect("timeout");
                s
            })
            .collect();
        for s in &mut socks {
            // The server's banner, then its close when the handshake times out.
            let mut buf = [0u8; 4096];
            loop {
                match tests::read_some(s, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    before.assert_back(&srv, "500 timed-out handshakes");
}

/// Sessions opened and dropped by their peer (lossy), in both protocols, with a
/// keepalive interval: the server's worker ends where it began.
#[test]
fn opened_and_dropped_sessions_leave_no_timer() {
    let config = MessengerConfig { keepalive_interval: Some(FAR), ..far_config() };
    let (srv, _bound, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let before = Baseline::of(&srv);
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        for _ in 0..300 {
            let peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
            drop(peer);
        }
    }
    before.assert_back(&srv, "600 sessions");
}

/// Lossless connections redialling a dead address with backoff, then marked down:
/// their backoff timers go with them.
#[test]
fn redialling_connections_marked_down_leave_no_timer() {
    let config = MessengerConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(3),
        ..far_config()
    };
    let (cli, _rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let (t0, h0) = (timers(&cli), handlers(&cli));
    // Ports nothing listens on.
    let dead: Vec<SocketAddr> = (0..20)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        })
        .collect();
    for round in 0..5 {
        let conns: Vec<_> = dead
            .iter()
            .map(|&a| {
                let c = cli.connect_to(EntityType::OSD, EntityAddr::legacy(a, 7));
                let _ = c.send_message(test_message(MSG_TEST, 1, Bytes::new()));
                c
            })
            .collect();
        // Every connection backing off: a timer each.
        wait_until(
            || timers(&cli).iter().sum::<usize>() >= conns.len(),
            || format!("round {round}: backoff timers not armed"),
        );
        for c in &conns {
            c.mark_down();
        }
        wait_for_connection_count(&cli, 0, "marked down");
        assert_eq!(timers(&cli), t0, "round {round}: timers after mark_down");
        assert_eq!(handlers(&cli), h0, "round {round}: handlers after mark_down");
    }
    cli.shutdown();
}

/// Depth-1 round trips from several threads, each message waited for with a timeout: a
/// wake lost as a worker goes to sleep shows as a message that never arrives (there is
/// no other traffic to wake the worker).
#[test]
fn no_wake_is_lost_in_depth_one_round_trips() {
    let (srv, _bound, _srx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let pool = Arc::new(
        event_center::WorkerPool::new(event_center::WorkerPoolConfig {
            workers: 1,
            ..Default::default()
        })
        .expect("pool"),
    );
    const CLIENTS: usize = 4;
    const ROUNDS: u64 = 3_000;
    let mut threads = Vec::new();
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let m = Messenger::with_pool(
            protocol::types::EntityName::new(EntityType::CLIENT, 10 + n as i64),
            10 + n as u32,
            test_config(1),
            Arc::clone(&pool),
        )
        .expect("client");
        m.set_default_policy(Policy::lossy_client());
        m.start().expect("start");
        let (rec, rx) = Recorder::new(false);
        m.add_dispatcher_head(rec).expect("dispatcher");
        let conn = m.connect_to(EntityType::OSD, srv.my_addr());
        clients.push(m);
        threads.push(std::thread::spawn(move || {
            for tid in 0..ROUNDS {
                conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
                let until = Instant::now() + Duration::from_secs(5);
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(Seen::Message(_, m)) if m.tid() == tid => break,
                        Ok(_) => {}
                        Err(_) => panic!("client {n}: reply {tid} lost"),
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().expect("no reply lost");
    }
    for m in clients {
        m.shutdown();
    }
    srv.shutdown();
}

/// A fast dispatcher that panics on every message: the event center drops the
/// connection's driver, as it drops any handler that panics.
struct Panicky;

impl Dispatcher<Connection> for Panicky {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        panic!("the dispatcher panics on every message");
    }
}

/// A peer whose every message makes the user's fast dispatcher panic, reconnecting
/// each time: the driver the event center drops after the panic takes its timer (the
/// idle timeout, here a year out) with it. Before, the timer stayed in the worker's set
/// until its deadline, one more per connection the panic ended.
#[test]
fn connections_ended_by_a_panic_leave_no_timer() {
    let srv = Messenger::new(protocol::types::EntityName::new(EntityType::OSD, 0), 1, far_config())
        .expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    srv.add_dispatcher_head(Arc::new(Panicky)).expect("dispatcher");
    let panics = || srv.pool().handles().iter().map(|h| h.panics()).sum::<u64>();
    let before = Baseline::of(&srv);
    const ROUNDS: u64 = 100;
    for round in 0..ROUNDS {
        let proto = if round % 2 == 0 { ProtocolVersion::V1 } else { ProtocolVersion::V2 };
        let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
        let before = panics();
        let frame = peer.message(round, b"poison");
        peer.sock.write_all(&frame).expect("send");
        wait_until(|| panics() != before, || format!("round {round}: no panic"));
        drop(peer);
    }
    before.assert_back(&srv, &format!("{ROUNDS} connections ended by a panic"));
}
