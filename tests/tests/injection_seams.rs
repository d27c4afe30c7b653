//! The fault-injection seams of `MessengerConfig` (feature `fault-injection`), each on
//! its own over real loopback sockets: Ceph's `ms_inject_socket_failures`,
//! `ms_inject_network_congestion` (PR 44289), `ms_inject_delay_{type,max,probability}`
//! and `ms_inject_internal_delays`. Each test checks that the seam fires at its configured
//! rate (from the messenger's own counters, with a fixed seed) and that a lossless
//! session delivers everything once and in order through it. The scenarios that lean on
//! these seams (Synthetic, reconnect races) live in their own files. Last, ours:
//! `Connection::inject_before_settle`, a send that lands between a pump's last look at
//! its mailbox and its settle.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::counters::WorkerCounters;
use messenger::{Messenger, MessengerConfig, Policy};
use protocol::types::{EntityName, EntityType};
use tests::loopback::{
    client_with, next_message, server_on, test_config, test_message, wait_for_connection_count,
    wait_until, Recorder, Seen,
};

const MSG: u16 = 0x7f30;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Sums one counter over a messenger's workers.
fn total(m: &Messenger, counter: impl Fn(&WorkerCounters) -> u64) -> u64 {
    m.worker_counters().iter().map(|c| counter(c)).sum()
}

/// Asserts that `hits` of `draws` Bernoulli(`p`) draws is within five standard
/// deviations (plus one) of the mean: the seam fires at its rate, neither never nor
/// always.
fn assert_rate(what: &str, hits: u64, draws: u64, p: f64) {
    let mean = draws as f64 * p;
    let sd = (draws as f64 * p * (1.0 - p)).sqrt();
    let off = (hits as f64 - mean).abs();
    assert!(
        off <= 5.0 * sd + 1.0,
        "{what}: {hits} of {draws} (expected about {mean:.0} ± {:.0})",
        5.0 * sd + 1.0
    );
}

/// Receives `n` messages and asserts their tids are exactly 1..=n in order (nothing
/// lost, duplicated or reordered).
fn expect_in_order(rx: &Receiver<Seen>, n: u64) {
    for want in 1..=n {
        let (_, msg) = next_message(rx);
        assert_eq!(msg.tid(), want, "message {want} arrived out of order or was lost");
    }
}

/// `ms_inject_socket_failures = 20` on both ends of a lossless session: about one read,
/// write, dial or accept in 20 shuts its socket down, the session reconnects each time,
/// and every message arrives once, in order.
#[test]
fn socket_failures_fire_one_in_n_and_a_lossless_session_loses_nothing() {
    const N: u32 = 20;
    const MESSAGES: u64 = 2_000;
    let config = MessengerConfig {
        inject_socket_failures: N,
        inject_seed: 11,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..test_config(2)
    };
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, loopback(), config.clone());
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, server.my_addr());
    for tid in 1..=MESSAGES {
        conn.send_message(test_message(MSG, tid, Bytes::from_static(&[7; 512]))).expect("queued");
    }
    expect_in_order(&srx, MESSAGES);
    let (mut failures, mut ops) = (0, 0);
    for m in [&server, &client] {
        failures += total(m, |c| c.inject_socket_failures.load(Relaxed));
        ops += total(m, |c| c.inject_socket_ops.load(Relaxed));
    }
    assert!(failures > 0, "no socket operation failed in {ops}");
    assert_rate("socket failures", failures, ops, 1.0 / f64::from(N));
    let connects = client.v1_counters().connects;
    assert!(connects > 1, "{failures} injected failures but {connects} connect attempts");
    eprintln!("{failures} of {ops} socket operations failed; {connects} connect attempts");
}

/// `ms_inject_network_congestion = 4`: three writes in four are refused as if the
/// socket were full; the driver comes back by itself (no edge is lost), and everything
/// is delivered in order.
#[test]
fn congestion_refuses_three_writes_in_four_and_everything_arrives_in_order() {
    const MESSAGES: u64 = 1_000;
    let config = MessengerConfig { inject_network_congestion: 4, inject_seed: 5, ..test_config(2) };
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, loopback(), test_config(2));
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, server.my_addr());
    for tid in 1..=MESSAGES {
        let data = Bytes::from(vec![tid as u8; 4096]);
        conn.send_message(test_message(MSG, tid, data)).expect("queued");
    }
    expect_in_order(&srx, MESSAGES);
    let refused = total(&client, |c| c.inject_congested_writes.load(Relaxed));
    let writes = total(&client, |c| c.inject_writes.load(Relaxed));
    assert!(refused > 0, "no write refused in {writes}");
    assert_rate("congested writes", refused, writes, 0.75);
    assert_eq!(client.v1_counters().connects, 1, "congestion is not a fault");
}

/// `ms_inject_delay_type = client`, probability 0.3, up to 20 ms: about 30 % of the
/// messages a server receives from clients are held back, those behind a held one wait
/// behind it (order kept), and messages from other peer types (the server's echoes,
/// as the client receives them) are never delayed.
#[test]
fn delayed_delivery_keeps_order_and_delays_only_the_chosen_peer_types() {
    const MESSAGES: u64 = 500;
    let config = MessengerConfig {
        inject_delay_type: vec![EntityType::CLIENT],
        inject_delay_max: Duration::from_millis(20),
        inject_delay_probability: 0.3,
        inject_seed: 23,
        ..test_config(2)
    };
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), true, loopback(), config.clone());
    let (client, crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, server.my_addr());
    for tid in 1..=MESSAGES {
        conn.send_message(test_message(MSG, tid, Bytes::new())).expect("queued");
    }
    expect_in_order(&srx, MESSAGES);
    expect_in_order(&crx, MESSAGES);
    let delayed = total(&server, |c| c.inject_delayed_messages.load(Relaxed));
    assert_rate("delayed messages", delayed, MESSAGES, 0.3);
    assert_eq!(
        total(&client, |c| c.inject_delayed_messages.load(Relaxed)),
        0,
        "messages from an OSD were delayed, but only clients were chosen"
    );
}

/// `ms_inject_internal_delays` holds an accept decision on a timer of the worker, not
/// in a sleep: with one worker thread for everything, a session on that worker keeps
/// exchanging messages while a newcomer's accept decision waits (30 s: the test ends
/// long before it is taken).
#[test]
fn internal_delay_holds_the_accept_decision_without_stalling_the_worker() {
    let delay = Duration::from_secs(30);
    let pool = Arc::new(
        event_center::WorkerPool::new(event_center::WorkerPoolConfig {
            workers: 1,
            ..Default::default()
        })
        .expect("pool"),
    );
    let messenger = |name: EntityName, nonce: u32, config: MessengerConfig, policy: Policy| {
        let m = Messenger::with_pool(name, nonce, config, pool.clone()).expect("messenger");
        m.set_default_policy(policy);
        m
    };
    // The server delays every accept decision; its peer `echo` accepts without delay.
    let delayed = MessengerConfig { inject_internal_delays: delay, ..test_config(1) };
    let server =
        messenger(EntityName::new(EntityType::OSD, 0), 1, delayed, Policy::lossless_peer());
    server.bind(loopback()).expect("bind");
    server.start().expect("start");
    let (rec, srx) = Recorder::new(false);
    server.add_dispatcher_head(rec).expect("dispatcher");
    let echo =
        messenger(EntityName::new(EntityType::OSD, 1), 2, test_config(1), Policy::lossless_peer());
    echo.bind(loopback()).expect("bind");
    echo.start().expect("start");
    let (rec, _erx) = Recorder::new(true);
    echo.add_dispatcher_head(rec).expect("dispatcher");
    let newcomer = messenger(
        EntityName::new(EntityType::CLIENT, 2),
        3,
        test_config(1),
        Policy::lossy_client(),
    );
    newcomer.start().expect("start");

    // The server's own session to `echo` (dialled: no accept decision of the server's).
    let to_echo = server.connect_to(EntityType::OSD, echo.my_addr());
    to_echo.send_message(test_message(MSG, 1, Bytes::new())).expect("queued");
    assert_eq!(next_message(&srx).1.tid(), 1);
    let delays = || total(&server, |c| c.inject_internal_delays.load(Relaxed));
    assert_eq!(delays(), 0, "a delay before any accept decision");

    // A newcomer dials the server: its accept decision is held from here on.
    let held = newcomer.connect_to(EntityType::OSD, server.my_addr());
    held.send_message(test_message(MSG, 100, Bytes::new())).expect("queued");
    wait_until(|| delays() >= 1, || "the newcomer's accept decision was never held".into());
    // Meanwhile the one worker serves the open session: its echo comes back at once, not
    // when the delay is over (a worker asleep in it would not even read it).
    to_echo.send_message(test_message(MSG, 2, Bytes::new())).expect("queued");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (conn, msg) = loop {
        match srx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) => break (c, m),
            Ok(_) => {}
            Err(e) => panic!("no echo within 5 s of a 30 s hold: the worker stalled ({e})"),
        }
    };
    assert_eq!(msg.tid(), 2, "the newcomer's message came first: its decision was not held");
    assert_eq!(conn, to_echo);
    assert_eq!(delays(), 1, "one accept decision held, and still the only one");
    assert!(!held.is_connected(), "the accept decision was not held");
    // Shut down with the decision still held: nothing waits for it.
    for m in [&newcomer, &echo, &server] {
        m.shutdown();
        m.wait();
    }
    pool.shutdown();
}

/// `ms_inject_internal_delays` around a replace: the accept decision of the reconnect
/// and the hand-off of its socket to the existing session both wait (as do the first
/// connect's decision and its new session's reply); the lossless session still delivers
/// everything once and in order.
#[test]
fn internal_delays_around_a_replace_lose_nothing() {
    const MESSAGES: u64 = 400;
    let config =
        MessengerConfig { inject_internal_delays: Duration::from_millis(50), ..test_config(2) };
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, loopback(), config);
    let (client, _crx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), test_config(2));
    let conn = client.connect_to(EntityType::OSD, server.my_addr());
    for tid in 1..=MESSAGES / 2 {
        conn.send_message(test_message(MSG, tid, Bytes::new())).expect("queued");
    }
    expect_in_order(&srx, MESSAGES / 2);
    // A cut: the client reconnects and the server's session takes the new socket over.
    conn.inject_socket_failure();
    for tid in MESSAGES / 2 + 1..=MESSAGES {
        conn.send_message(test_message(MSG, tid, Bytes::new())).expect("queued");
    }
    for want in MESSAGES / 2 + 1..=MESSAGES {
        let (_, msg) = next_message(&srx);
        assert_eq!(msg.tid(), want, "message {want} arrived out of order or was lost");
    }
    // The first accept and its reply, the reconnect's accept and its hand-off. The cut
    // may land after the driver wrote the second half on the old socket (it is applied
    // at the start of the driver's next pass), so the replace can still be under way
    // here: wait for it.
    wait_until(
        || total(&server, |c| c.inject_internal_delays.load(Relaxed)) >= 4,
        || "the reconnect's accept and hand-off were not held".into(),
    );
    // The old socket is cut and the session is being replaced: messages sent now can only
    // travel on the adopted socket.
    for tid in MESSAGES + 1..=MESSAGES + 20 {
        conn.send_message(test_message(MSG, tid, Bytes::new())).expect("queued");
    }
    for want in MESSAGES + 1..=MESSAGES + 20 {
        let (_, msg) = next_message(&srx);
        assert_eq!(msg.tid(), want, "message {want} after the replace arrived out of order");
    }
    let delays = total(&server, |c| c.inject_internal_delays.load(Relaxed));
    assert_eq!(delays, 4, "internal delays: expected accept, reply, accept, hand-off");
    assert_eq!(client.v1_counters().connects, 2, "one cut, one reconnect");
    // The incoming driver posts the hand-off and then unregisters: waited for.
    wait_for_connection_count(&server, 1, "the replace left one session");
}

/// `Connection::inject_before_settle`: a message queued after a pump's last look at its
/// mailbox (as a reply another thread sends just then, with no wake-up since the driver
/// is running) still leaves, with no further input from anywhere: the pump's settle
/// finds it and runs the pump again. The peer is a raw socket that sends nothing more
/// and the session is lossy, so no ack, keepalive or read comes to do it instead.
fn late_send_leaves(proto: protocol::ProtocolVersion) {
    let config = test_config(1);
    let (srv, _, rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), false, loopback(), config);
    let mut peer = tests::hostile::RawPeer::handshake(
        tests::loopback::addr_for(proto, srv.my_addr()),
        Policy::lossy_client(),
    );
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = peer.message(1, b"ping");
    std::io::Write::write_all(&mut peer.sock, &request).expect("request");
    let (conn, msg) = next_message(&rx);
    assert_eq!(msg.tid(), 1);

    let (ran_tx, ran) = crossbeam_channel::bounded(1);
    let late = test_message(MSG, 2, Bytes::from_static(b"late"));
    let sender = conn.clone();
    conn.inject_before_settle(move || {
        let _ = ran_tx.send(sender.send_message(late).is_ok());
    });
    assert_eq!(ran.recv_timeout(tests::loopback::WAIT), Ok(true), "the hook ran and sent");
    let got = peer
        .receive(1)
        .unwrap_or_else(|e| panic!("the message sent at the pump's settle never left: {e}"));
    assert_eq!(
        got.iter().map(|m| (m.tid(), m.data().clone())).collect::<Vec<_>>(),
        [(2, Bytes::from_static(b"late"))]
    );
    srv.shutdown();
    srv.wait();
}

#[test]
fn a_message_sent_after_the_pumps_last_look_at_its_mailbox_still_leaves() {
    late_send_leaves(protocol::ProtocolVersion::V1);
}

#[test]
fn a_message_sent_after_the_pumps_last_look_at_its_mailbox_still_leaves_over_msgr2() {
    late_send_leaves(protocol::ProtocolVersion::V2);
}

/// What a replaced reset hook's captures do when they are dropped: call the connection
/// back (set another hook), as a dispatcher that owns what it captured may.
struct HookOwner {
    conn: messenger::Connection,
    dropped: crossbeam_channel::Sender<()>,
}

impl Drop for HookOwner {
    fn drop(&mut self) {
        self.conn.inject_in_reset(|| {});
        let _ = self.dropped.send(());
    }
}

/// `Connection::inject_in_reset` replaces the hook set before, which is the caller's
/// closure: its drop is the caller's code, which may call back into the connection
/// (`ms_fast_dispatch` in reentrant_lifecycle sets a new hook each time it runs). It
/// must go after the hook's lock, as `set_priv`'s old data does: dropped under it, a
/// hook that set another waited for itself, for ever.
#[test]
fn a_replaced_reset_hook_is_dropped_after_its_lock() {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("new");
    let conn = m.get_loopback_connection();
    let (dropped_tx, dropped) = crossbeam_channel::bounded(1);
    let owner = HookOwner { conn: conn.clone(), dropped: dropped_tx };
    let setter = conn.clone();
    // On its own thread: on the current code it never returns.
    std::thread::spawn(move || {
        setter.inject_in_reset(move || {
            let _held = &owner;
        });
        setter.inject_in_reset(|| {});
    });
    assert_eq!(
        dropped.recv_timeout(tests::loopback::WAIT),
        Ok(()),
        "replacing the reset hook deadlocked: the old hook was dropped with the lock held"
    );
    m.shutdown();
    m.wait();
}
