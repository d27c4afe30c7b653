//! Reconnects and reconnect races on real sockets (Ceph's ReconnectTest and
//! ReconnectRaceTest, and the lossless-peer livelock of Ceph PR 27359: both peers cut at
//! once, both reconnecting with equal connect_seqs, one answered WAIT forever).
//!
//! The numbers of connect attempts and of WAIT / RETRY / RESETSESSION replies come from
//! `Messenger::v1_counters` (the session counters both protocols share); each open of a
//! session from `ms_handle_connect` / `ms_handle_accept`. The messenger-level tests run
//! over msgr v1 and, dialling the peers' `v2:` addresses, over msgr2 (SESSION_RECONNECT,
//! RETRY, RETRY_GLOBAL and WAIT are msgr2's counterparts of v1's connect replies).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, MessengerConfig, Policy, ProtocolVersion};
use protocol::session::CounterValues;
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// The WAIT backoff is `max_backoff`: a minute here, so a race that only resolves by
/// falling back to it shows as a stalled stream instead of passing slowly.
fn race_config() -> MessengerConfig {
    backoff_config(Duration::from_millis(50), Duration::from_secs(60))
}

fn delta(after: CounterValues, before: CounterValues) -> CounterValues {
    CounterValues {
        connects: after.connects - before.connects,
        wait: after.wait - before.wait,
        retry_global: after.retry_global - before.retry_global,
        retry_session: after.retry_session - before.retry_session,
        reset_session: after.reset_session - before.reset_session,
        old_seq_dropped: after.old_seq_dropped - before.old_seq_dropped,
        bad_signatures: after.bad_signatures - before.bad_signatures,
        authorizers_rejected: after.authorizers_rejected - before.authorizers_rejected,
        authorizers_refused_by_peer: after.authorizers_refused_by_peer
            - before.authorizers_refused_by_peer,
        identity_refused: after.identity_refused - before.identity_refused,
    }
}

/// Receives messages `from..=to` in order on `rx`, counting opens (connect + accept) on
/// the way; fails on any reset.
fn receive_in_order(who: &str, rx: &Receiver<Seen>, from: u64, to: u64) -> usize {
    let mut opens = 0;
    let mut expect = from;
    while expect <= to {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Seen::Message(_, m)) => {
                assert_eq!(m.tid(), expect, "{who}: lost, duplicated or reordered");
                expect += 1;
            }
            Ok(Seen::Connect(_) | Seen::Accept(_)) => opens += 1,
            Ok(other) => panic!("{who}: {other:?} on a lossless session"),
            Err(e) => panic!("{who}: stalled at {expect} of {to} (a WAIT backoff?): {e}"),
        }
    }
    opens
}

/// Opens seen in a short grace period (a second reconnect would show here).
///
/// A window, not a marker: what it looks for is a reconnect that comes after the ones
/// counted, a new socket and handshake that no message sent on the session now is
/// ordered before (a marker would arrive on the open session first), and an open is
/// queued only when it happens (the dispatch queue's events go first only among those
/// already queued). A window can only miss one, never report one that did not happen.
fn later_opens(who: &str, rx: &Receiver<Seen>) -> usize {
    let mut opens = 0;
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = rx.recv_deadline(grace) {
        match seen {
            Seen::Connect(_) | Seen::Accept(_) => opens += 1,
            Seen::Message(_, m) => panic!("{who}: unexpected message {}", m.tid()),
            other => panic!("{who}: {other:?} on a lossless session"),
        }
    }
    opens
}

/// [`later_opens`] of two receivers over one grace period.
fn later_opens_both(a: &Receiver<Seen>, b: &Receiver<Seen>) -> (usize, usize) {
    let mut opens = [0, 0];
    let grace = Instant::now() + Duration::from_millis(300);
    loop {
        let timeout = grace.saturating_duration_since(Instant::now());
        let (who, seen) = crossbeam_channel::select! {
            recv(a) -> s => (0, s),
            recv(b) -> s => (1, s),
            default(timeout) => return (opens[0], opens[1]),
        };
        match seen.expect("recorder alive") {
            Seen::Connect(_) | Seen::Accept(_) => opens[who] += 1,
            other => panic!("{}: {other:?} after the round", ["a", "b"][who]),
        }
    }
}

/// Ceph's ReconnectTest: a lossless client of a stateful server loses its socket once
/// in the middle of a stream. Exactly one reconnect: one more connect attempt (no WAIT,
/// no RETRY, no RESETSESSION, no duplicate to drop), one more `ms_handle_connect` on the
/// client and one more `ms_handle_accept` on the server (which never dials), and every
/// message once, in order. (`lossless_client` has no standby, so the reconnect is
/// immediate whether or not anything was pending at the cut.)
#[test]
fn a_single_cut_gives_exactly_one_reconnect() {
    single_cut(ProtocolVersion::V1);
}

/// [`a_single_cut_gives_exactly_one_reconnect`] over msgr2: one SESSION_RECONNECT.
#[test]
fn a_single_cut_gives_exactly_one_reconnect_over_msgr2() {
    single_cut(ProtocolVersion::V2);
}

fn single_cut(proto: ProtocolVersion) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, any, race_config());
    let (cli, cli_rx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), race_config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    assert_eq!(receive_in_order("server", &srv_rx, 1, 1), 1, "one accept");
    assert_eq!(count_events(&cli_rx, 1, |s| matches!(s, Seen::Connect(_))), 1, "one connect");
    let (c0, s0) = (cli.v1_counters(), srv.v1_counters());
    assert_eq!(c0.connects, 1);
    for tid in 2..=200 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[7; 100])))
            .expect("send");
        if tid == 100 {
            conn.inject_socket_failure();
        }
    }
    let opens = receive_in_order("server", &srv_rx, 2, 200);
    // The cut may land after the last message went through: its reconnect comes later.
    let opens = opens + count_events(&srv_rx, 1 - opens, |s| matches!(s, Seen::Accept(_)));
    assert_eq!(opens, 1, "one accept per cut");
    assert_eq!(count_events(&cli_rx, 1, |s| matches!(s, Seen::Connect(_))), 1, "one reconnect");
    let (c, s) = (delta(cli.v1_counters(), c0), delta(srv.v1_counters(), s0));
    assert_eq!(c, CounterValues { connects: 1, ..CounterValues::default() }, "client");
    assert_eq!(s, CounterValues::default(), "a stateful server never dials");
    wait_for_connection_count(&cli, 1, "client");
    wait_for_connection_count(&srv, 1, "server");
    assert_eq!(conn.protocol(), Some(proto));
    cli.shutdown();
    srv.shutdown();
}

/// Ceph's ReconnectRaceTest and PR 27359: two lossless peers, both with messages queued
/// for the other, lose their socket at the same instant; both reconnect at once with the
/// same connect_seq, so each one's connect meets the other's as a connection race. Over
/// 12 rounds: each round ends with exactly one session (one open on each side, one
/// connection each), every message of both streams once and in order, without falling
/// back to the WAIT backoff (a minute here), and within bounded handshake rounds: per
/// side at most 2 connect attempts and at most 1 WAIT, 1 RETRY_SESSION and 1
/// RETRY_GLOBAL reply, never a RESETSESSION.
#[test]
fn both_lossless_peers_cut_at_once_reconnect_into_one_session() {
    // The session was dialled by the peer with the lower address (nonce 1).
    race_rounds(1, 2, ProtocolVersion::V1);
}

/// [`both_lossless_peers_cut_at_once_reconnect_into_one_session`] over msgr2: the two
/// SESSION_RECONNECTs meet as a reconnect race (msgr-v2.md 7.4).
#[test]
fn both_lossless_peers_cut_at_once_reconnect_into_one_session_over_msgr2() {
    race_rounds(1, 2, ProtocolVersion::V2);
}

/// The same with the session dialled by the peer with the higher address: the side that
/// accepted it now sorts lower, so the race rule and the "existing is a server" rule
/// must agree on one winner.
#[test]
fn both_lossless_peers_cut_at_once_when_the_lower_address_accepted() {
    race_rounds(2, 1, ProtocolVersion::V1);
}

/// [`both_lossless_peers_cut_at_once_when_the_lower_address_accepted`] over msgr2.
#[test]
fn both_lossless_peers_cut_at_once_when_the_lower_address_accepted_over_msgr2() {
    race_rounds(2, 1, ProtocolVersion::V2);
}

/// `a` (nonce `a_nonce`) dials `b` (nonce `b_nonce`) over `proto`, then the rounds of
/// cuts.
fn race_rounds(a_nonce: u32, b_nonce: u32, proto: ProtocolVersion) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (a, _, a_rx) =
        server_on(EntityType::OSD, a_nonce, Policy::lossless_peer(), false, any, race_config());
    let (b, _, b_rx) =
        server_on(EntityType::OSD, b_nonce, Policy::lossless_peer(), false, any, race_config());
    let a_to_b = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    a_to_b.send_message(test_message(MSG_TEST, 0, Bytes::new())).expect("send");
    let (b_to_a, first) = next_message(&b_rx);
    assert_eq!(first.tid(), 0);
    // Drain the opening events of both sides.
    let _ = later_opens("a", &a_rx);
    const BATCH: u64 = 100;
    const ROUNDS: usize = 12;
    let mut tid = 0;
    let (mut total_a, mut total_b) = (CounterValues::default(), CounterValues::default());
    let mut races = 0;
    for round in 0..ROUNDS {
        let (a0, b0) = (a.v1_counters(), b.v1_counters());
        let from = tid + 1;
        let send_both = |tid: u64| {
            let payload = Bytes::from_static(&[9; 64]);
            a_to_b.send_message(test_message(MSG_TEST, tid, payload.clone())).expect("a sends");
            b_to_a.send_message(test_message(MSG_TEST, tid, payload)).expect("b sends");
        };
        for _ in 0..BATCH {
            tid += 1;
            send_both(tid);
        }
        // Alternate which end the cut is made from; both ends lose the socket either way.
        // The second half is sent while the cut is pending, so that it usually meets
        // messages in flight both ways (both sides reconnect at once: the race).
        let cut = if round.is_multiple_of(2) { inject_cut(&a_to_b) } else { inject_cut(&b_to_a) };
        for _ in 0..BATCH {
            tid += 1;
            send_both(tid);
        }
        // The cut may land only after the whole round went out and was acknowledged:
        // then both idle sessions park in standby (lossless_peer). The next message of
        // each, sent once the cut has landed, wakes them into the same race.
        cut.wait();
        let opens_b = receive_in_order("b", &b_rx, from, tid);
        let opens_a = receive_in_order("a", &a_rx, from, tid);
        tid += 1;
        send_both(tid);
        let opens_b = opens_b + receive_in_order("b", &b_rx, tid, tid);
        let opens_a = opens_a + receive_in_order("a", &a_rx, tid, tid);
        let (later_a, later_b) = later_opens_both(&a_rx, &b_rx);
        let (opens_a, opens_b) = (opens_a + later_a, opens_b + later_b);
        assert_eq!((opens_a, opens_b), (1, 1), "round {round}: one session opened on each side");
        let (da, db) = (delta(a.v1_counters(), a0), delta(b.v1_counters(), b0));
        for (who, d) in [("a", da), ("b", db)] {
            assert!(d.connects <= 2, "round {round}: {who} tried {} connects: {d:?}", d.connects);
            assert!(
                d.wait <= 1 && d.retry_session <= 1 && d.retry_global <= 1,
                "round {round}: {who} {d:?}"
            );
            assert_eq!(d.reset_session, 0, "round {round}: {who}: the session was lost");
        }
        assert!(da.connects + db.connects >= 1, "round {round}: nobody reconnected");
        races += usize::from(da.connects > 0 && db.connects > 0);
        wait_for_connection_count(&a, 1, "a");
        wait_for_connection_count(&b, 1, "b");
        assert!(a_to_b.is_connected() && b_to_a.is_connected(), "round {round}");
        for (t, d) in [(&mut total_a, da), (&mut total_b, db)] {
            t.connects += d.connects;
            t.wait += d.wait;
            t.retry_session += d.retry_session;
            t.retry_global += d.retry_global;
        }
    }
    assert_eq!(a_to_b.protocol(), Some(proto));
    eprintln!("{proto:?}, {ROUNDS} cuts: {races} rounds where both sides reconnected at once; a {total_a:?}, b {total_b:?}");
    assert!(races > 0, "both sides never reconnected at once: no race was exercised");
    let _: &Connection = &a_to_b;
    a.shutdown();
    b.shutdown();
}

/// A peer played by the sans-IO v1 machine over a blocking socket, so a test decides
/// exactly when each of its connects goes out.
struct RawPeer {
    machine: protocol::v1::Connection,
    socket: Option<std::net::TcpStream>,
}

impl RawPeer {
    /// Writes what the machine has, reads once (or until `deadline`), feeds the bytes,
    /// and returns the events.
    fn pump(&mut self, deadline: Instant) -> Vec<protocol::Event> {
        use std::io::Write;
        let mut events = Vec::new();
        let now = Instant::now();
        let mut out = Vec::new();
        self.machine.poll_transmit(&mut out);
        if let Some(s) = self.socket.as_mut() {
            for seg in &out {
                s.write_all(seg).expect("raw peer write");
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
            s.set_read_timeout(Some(wait)).expect("timeout");
            let mut buf = vec![0u8; 64 << 10];
            match tests::read_some(s, &mut buf) {
                Ok(0) => self.machine.handle_transport_closed(Instant::now()),
                Ok(n) => {
                    buf.truncate(n);
                    self.machine.handle_bytes(Instant::now(), Bytes::from(buf));
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => self.machine.handle_transport_closed(Instant::now()),
            }
        }
        while let Some(ev) = self.machine.poll_event() {
            if let protocol::Event::NeedBudget { .. } = ev {
                self.machine.grant_budget(Instant::now());
            }
            events.push(ev);
        }
        // What the input produced (the in_seq of a SEQ exchange, ACKs) goes out now.
        out.clear();
        self.machine.poll_transmit(&mut out);
        if let Some(s) = self.socket.as_mut() {
            for seg in &out {
                s.write_all(seg).expect("raw peer write");
            }
        }
        events
    }

    /// Pumps until an event matching `pred` shows up; panics after `WAIT`.
    fn until(&mut self, what: &str, pred: impl Fn(&protocol::Event) -> bool) -> protocol::Event {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "raw peer: no {what}");
            if let Some(ev) = self.pump(deadline).into_iter().find(|e| pred(e)) {
                return ev;
            }
        }
    }
}

/// Ceph breaks a connection race with `peer_addr < my_addr || existing->policy.server`:
/// the *policy's* server flag. Between two lossless peers neither is a server, so only the
/// address decides, the same way on both sides. Here the side with the lower address (A)
/// had accepted the session and is now reconnecting it (in Connecting, connect_seq 1)
/// when the higher peer B connects with the same connect_seq: A must answer WAIT (its own
/// attempt wins). Were it to replace because it once *accepted* the session, B would
/// replace too on its side, and the two would close each other's new sockets.
#[test]
fn a_race_at_the_lower_address_answers_wait_even_if_it_had_accepted_the_session() {
    use protocol::{Config, Event};
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (a, _, a_rx) =
        server_on(EntityType::OSD, 1, Policy::lossless_peer(), false, any, race_config());
    // B's listening address: a socket that accepts A's reconnect and never answers.
    let b_listener = std::net::TcpListener::bind(any).expect("bind");
    let b_addr = protocol::types::EntityAddr::legacy(b_listener.local_addr().expect("addr"), 2);
    assert!(a.my_addr().race_key() < b_addr.race_key(), "A sorts lower (nonce 1 < 2)");
    let config = std::sync::Arc::new(Config::new(
        protocol::types::EntityName::new(EntityType::OSD, 2),
        b_addr,
    ));
    let machine = protocol::v1::Connection::connect(
        config.clone(),
        Policy::lossless_peer(),
        a.my_addr(),
        EntityType::OSD,
        Instant::now(),
    );
    let a_sock = a.my_addr().addr.expect("A's socket address");
    let mut b =
        RawPeer { machine, socket: Some(std::net::TcpStream::connect(a_sock).expect("dial A")) };
    b.machine.handle_transport_connected(Instant::now());
    b.until("open", |e| matches!(e, Event::Opened(_)));
    let a_conn = loop {
        match a_rx.recv_timeout(WAIT).expect("A accepts") {
            Seen::Accept(c) => break c,
            _ => continue,
        }
    };
    // B's socket dies; A's session (nothing pending) parks in standby, then a message
    // wakes it: A dials B's address, where nobody answers. A is now Connecting, cs 1.
    b.socket = None;
    b.machine.handle_transport_closed(Instant::now());
    wait_until(
        || a_conn.state() == messenger::ConnState::Standby,
        || format!("A never parked: {:?}", a_conn.state()),
    );
    a_conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (_held, _) = b_listener.accept().expect("A reconnects to B's address");
    // B wakes too and connects again with the same connect_seq: a connection race.
    b.machine.send_message(test_message(MSG_TEST, 1, Bytes::new()));
    let reconnect = b.until("reconnect", |e| matches!(e, Event::Reconnect { .. }));
    assert!(matches!(reconnect, Event::Reconnect { .. }));
    b.socket = Some(std::net::TcpStream::connect(a_sock).expect("dial A again"));
    b.machine.handle_transport_connected(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    while config.counters.values().wait == 0 {
        assert!(Instant::now() < deadline, "no WAIT reply");
        for ev in b.pump(deadline) {
            assert!(
                !matches!(ev, Event::Opened(_)),
                "A replaced its own attempt: {:?}",
                config.counters.values()
            );
        }
    }
    assert_eq!(config.counters.values().connects, 2);
    a.shutdown();
}

/// Sums one counter over a messenger's workers.
fn total(
    m: &messenger::Messenger,
    counter: impl Fn(&messenger::counters::WorkerCounters) -> u64,
) -> u64 {
    m.worker_counters().iter().map(|c| counter(c)).sum()
}

/// A message whose dispatch budget is granted in the same wake-up that hands its
/// session over to the peer's new socket: the grant completes the message (the session's
/// in_seq counts it) and the hand-off tells the peer that in_seq, so the peer never
/// sends it again. It must reach the dispatcher, once, before anything that follows.
///
/// To make the two meet in one wake-up, the session's worker is held inside the
/// session's own pump (`inject_before_settle`) while the peer reconnects on the other
/// worker and the test gives the throttle back.
fn take_over_meeting_a_budget_grant(proto: ProtocolVersion) {
    use std::sync::atomic::Ordering::Relaxed;
    let config = MessengerConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..test_config(2)
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, any, config.clone());
    let target = addr_for(proto, server.my_addr());
    // A first session takes the listener's worker (the least loaded one at bind): the
    // session under test then runs on the other, and holding it leaves accepting free.
    let (other, _orx) =
        client_with(EntityType::CLIENT, 3, Policy::lossless_client(), config.clone());
    let other_conn = other.connect_to(EntityType::OSD, target);
    other_conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"x"))).expect("queued");
    let (other_server_side, _) = next_message(&srx);
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, target);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::from_static(b"one"))).expect("queued");
    let (session, first) = next_message(&srx);
    assert_eq!(first.tid(), 1);

    let (name_tx, name_rx) = crossbeam_channel::bounded(2);
    let tx = name_tx.clone();
    other_server_side.inject_before_settle(move || {
        let _ = tx.send(std::thread::current().id());
    });
    let other_worker = name_rx.recv_timeout(WAIT).expect("the first session's pump ran");

    // The whole dispatch throttle held: the next message waits for budget, whole in the
    // session's receive buffer.
    let throttle = server.dispatch_throttle().clone();
    let held = throttle.acquire(throttle.max());
    conn.send_message(test_message(MSG_TEST, 2, Bytes::from_static(b"two"))).expect("queued");
    wait_until(|| throttle.has_waiters(), || "message 2 never waited for budget".into());

    let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
    session.inject_before_settle(move || {
        let _ = name_tx.send(std::thread::current().id());
        let _ = go_rx.recv_timeout(WAIT);
    });
    let session_worker = name_rx.recv_timeout(WAIT).expect("the session's pump ran");
    assert_ne!(session_worker, other_worker, "both sessions on one worker: nothing could accept");

    // The client's socket cut: it reconnects, and the other worker accepts and hands the
    // socket to the held session (its accepting driver vanishes once it has).
    let created = total(&server, |c| c.created_connections.load(Relaxed));
    conn.inject_socket_failure();
    wait_until(
        || {
            total(&server, |c| c.created_connections.load(Relaxed)) == created + 1
                && total(&server, |c| c.active_connections.load(Relaxed)) == 2
        },
        || format!("no hand-off: {}", server.dump_connections()),
    );
    drop(held);
    go_tx.send(()).expect("the session's pump waits");

    conn.send_message(test_message(MSG_TEST, 3, Bytes::from_static(b"three"))).expect("queued");
    for want in [2, 3] {
        let (_, msg) = next_message(&srx);
        assert_eq!(msg.tid(), want, "message {want} lost or out of order");
    }
    assert_no_more_messages(&srx, "each message once");
}

#[test]
fn a_message_granted_budget_as_its_session_is_taken_over_is_delivered() {
    take_over_meeting_a_budget_grant(ProtocolVersion::V1);
}

#[test]
fn a_message_granted_budget_as_its_session_is_taken_over_is_delivered_over_msgr2() {
    take_over_meeting_a_budget_grant(ProtocolVersion::V2);
}

/// The standby sessions a messenger counts (what `max_standby_sessions` bounds).
fn standby_sessions(m: &messenger::Messenger) -> u64 {
    m.counters_json()["msgr_send_queues"]["standby_sessions"].as_u64().unwrap_or(u64::MAX)
}

/// Returns once `conn`'s driver has run a pump after this call: whatever step it was
/// in the middle of when called (e.g. parking in standby, which publishes the state
/// before it counts the session) is done.
fn driver_passed(conn: &Connection) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    conn.inject_before_settle(move || {
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT).expect("the connection's driver ran");
}

/// A session accepted from a peer, then redialled by us after its socket was cut, opens
/// as ours: `ms_handle_connect` (Ceph's client_ready), not `ms_handle_accept`; and parked
/// in standby again it is not counted as a server's session waiting for its peer (it
/// waits for our next message), so the standby bound cannot evict it. Before, the driver
/// kept the accept side it had once: Accept was reported and the session counted.
fn a_session_we_redial_opens_as_ours(proto: ProtocolVersion) {
    let (a, _, a_rx) = server(EntityType::OSD, 1, Policy::lossless_peer(), false);
    let (b, _, b_rx) = server(EntityType::OSD, 2, Policy::lossless_peer(), false);
    let a_to_b = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    a_to_b.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (b_to_a, msg) = next_message(&b_rx);
    assert_eq!(msg.tid(), 1);
    let _ = b_rx.try_iter().count();
    // Acknowledged first: unacknowledged, message 1 would make A dial again at once.
    let acked = |c: &Connection| c.queued_send_bytes() == 0;
    wait_until(|| acked(&a_to_b), || "A's message 1 was never acknowledged".into());

    // B's socket cut with nothing to send: B's accepted session parks in standby, and
    // counts as one (its peer dialled it).
    b_to_a.inject_socket_failure();
    wait_until(
        || standby_sessions(&b) == 1,
        || format!("B's accepted session never counted in standby: {:?}", b_to_a.state()),
    );
    assert_eq!(b_to_a.state(), messenger::ConnState::Standby);

    // B sends: it dials A, and the session opens as B's.
    b_to_a.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    let (_, msg) = next_message(&a_rx);
    assert_eq!(msg.tid(), 2);
    let deadline = Instant::now() + WAIT;
    loop {
        match b_rx.recv_deadline(deadline) {
            Ok(Seen::Connect(c)) => {
                assert_eq!(c, b_to_a);
                break;
            }
            Ok(Seen::Accept(_)) => panic!("B dialled, yet heard ms_handle_accept"),
            Ok(Seen::Reset(_) | Seen::RemoteReset(_)) => panic!("the session was reset"),
            Ok(_) => {}
            Err(e) => panic!("no ms_handle_connect on B: {e}"),
        }
    }
    assert_eq!(standby_sessions(&b), 0);

    // Cut again: B's session, now dialled by B, parks uncounted.
    wait_until(|| acked(&b_to_a), || "B's message 2 was never acknowledged".into());
    b_to_a.inject_socket_failure();
    wait_until(
        || b_to_a.state() == messenger::ConnState::Standby,
        || format!("B's session never parked again: {:?}", b_to_a.state()),
    );
    // Parking publishes the state first and counts the session after: read the count
    // once the driver has finished that step.
    driver_passed(&b_to_a);
    assert_eq!(b_to_a.state(), messenger::ConnState::Standby, "the probe woke the session");
    assert_eq!(standby_sessions(&b), 0, "a session we dial waits for our next message");
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_session_we_redial_opens_as_ours_over_msgr1() {
    a_session_we_redial_opens_as_ours(ProtocolVersion::V1);
}

#[test]
fn a_session_we_redial_opens_as_ours_over_msgr2() {
    a_session_we_redial_opens_as_ours(ProtocolVersion::V2);
}
