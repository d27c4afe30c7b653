//! Races around the handshake's lifecycle on real sockets (issue 11 item 4; Ceph PRs
//! 17288, 25823, 46732, 26668 and 27337 and the bugs behind them): a socket cut while
//! its replace is being decided, `mark_down` of the session being replaced, `shutdown`
//! with handshakes paused, a listener that accepts and never answers, a connector whose
//! handshake faults (its socket closed at once, not at the redial), and a connection
//! race whose winner's socket is black-holed.
//!
//! The accept decision and the replace hand-off are held open with
//! `ms_inject_internal_delays` (on a timer of the worker), which widens the windows
//! these races need; each test first waits until the messenger's own counter shows the
//! step is held, then strikes.
//!
//! The cut-while-deciding, `mark_down` and `shutdown` races run over msgr v1 and msgr2
//! (clients dial the server's `v2:` address; SESSION_RECONNECT and SESSION_RESET play
//! v1's connect and RESETSESSION, CLIENT_IDENT its first connect).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::counters::WorkerCounters;
use messenger::{
    ConnState, Connection, Messenger, MessengerConfig, Policy, ProtocolVersion, SendError,
};
use protocol::session::CounterValues;
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::wire::{ConnectReply, Tag};
use tests::chaos::{ChaosConfig, ChaosProxy, CutKind};
use tests::hostile::{accept_v1_connect, banner_socket_as, closed_within, session_connect};
use tests::hostile_v2::{client_ident, v2_peer_addr, v2_socket_at_ident};
use tests::loopback::*;
use tests::nat::NatProxy;

const MSG: u16 = 0x7f40;

/// How long an accept decision or a replace hand-off is held: long enough that a test
/// strikes well inside the window even on a loaded machine.
const HOLD: Duration = Duration::from_millis(400);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Accept decisions and replace hand-offs `m` held back so far.
fn held(m: &Messenger) -> u64 {
    total(m, |c| &c.inject_internal_delays)
}

fn total(m: &Messenger, counter: fn(&WorkerCounters) -> &AtomicU64) -> u64 {
    m.worker_counters().iter().map(|c| counter(c).load(Relaxed)).sum()
}

/// Polls `cond` until it holds; panics with `what` after [`WAIT`]. For state only a
/// counter shows (no callback announces it). Returns when `cond` was last seen false
/// (or the call's start): what made it true happened after that instant.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + WAIT;
    let mut last_false = Instant::now();
    while !cond() {
        last_false = Instant::now();
        assert!(last_false < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    last_false
}

fn send_range(conn: &Connection, tids: std::ops::RangeInclusive<u64>) {
    for tid in tids {
        conn.send_message(test_message(MSG, tid, Bytes::from_static(&[5; 256]))).expect("queued");
    }
}

/// Receives messages `tids` in order (each once: a duplicate or a gap fails), failing on
/// any reset of a lossless session. Returns the connection they came on.
fn receive_in_order(
    who: &str,
    rx: &Receiver<Seen>,
    tids: std::ops::RangeInclusive<u64>,
) -> Connection {
    let mut on = None;
    for want in tids {
        loop {
            match rx.recv_timeout(WAIT) {
                Ok(Seen::Message(c, m)) => {
                    assert_eq!(m.tid(), want, "{who}: lost, duplicated or reordered");
                    on = Some(c);
                    break;
                }
                Ok(Seen::Reset(_) | Seen::RemoteReset(_)) => {
                    panic!("{who}: a lossless session was reset")
                }
                Ok(_) => {}
                Err(e) => panic!("{who}: stalled waiting for {want}: {e}"),
            }
        }
    }
    on.expect("a non-empty range")
}

/// Ceph PR 17288 (and the `ms_inject_internal_delays` it tests with): a lossless client
/// reconnects, and its new socket is cut while the server holds the accept decision that
/// will replace the old one. The decision runs on a dead socket; the client dials again
/// and the session carries on: every message once and in order, no reset on either
/// side, one session on the server.
#[test]
fn a_socket_cut_while_its_replace_is_being_decided_loses_nothing() {
    cut_while_the_replace_is_decided(ProtocolVersion::V1);
}

/// [`a_socket_cut_while_its_replace_is_being_decided_loses_nothing`] over msgr2: the
/// SESSION_RECONNECT's socket is cut while its decision is held.
#[test]
fn a_socket_cut_while_its_replace_is_being_decided_loses_nothing_over_msgr2() {
    cut_while_the_replace_is_decided(ProtocolVersion::V2);
}

fn cut_while_the_replace_is_decided(proto: ProtocolVersion) {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(2) };
    let (server, bound, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, loopback(), config);
    let proxy = ChaosProxy::start(bound, ChaosConfig::new(0)).expect("proxy");
    let client_config = MessengerConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        ..test_config(2)
    };
    let (client, crx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), client_config);
    let through_proxy = EntityAddr::legacy(proxy.addr(), server.my_addr().nonce);
    let conn = client.connect_to(EntityType::OSD, addr_for(proto, through_proxy));
    send_range(&conn, 1..=100);
    receive_in_order("server", &srx, 1..=100);

    let before = held(&server);
    proxy.cut_now(CutKind::Reset);
    // The client reconnects at once; the server holds the accept decision.
    wait_for("the reconnect's accept decision is held", || held(&server) > before);
    send_range(&conn, 101..=200);
    // Cut the socket whose replace is being decided.
    proxy.cut_now(CutKind::Fin);
    receive_in_order("server", &srx, 101..=200);
    assert_no_more_messages(&srx, "a duplicate after the cut replace");
    let cuts = proxy.stats().cuts;
    assert_eq!(cuts, 2, "the second cut found no live socket to cut ({cuts} cuts)");
    assert!(
        !crx.try_iter().any(|s| matches!(s, Seen::Reset(_) | Seen::RemoteReset(_))),
        "the lossless client's session was reset"
    );
    wait_for("the server has one session", || server.connection_count() == 1);
    let connects = client.v1_counters().connects;
    assert!((3..=8).contains(&connects), "{connects} connect attempts for 2 cuts");
    assert_eq!(conn.protocol(), Some(proto));
    client.shutdown();
    server.shutdown();
}

/// Ceph PR 25823 (mark_down vs accept): a lossless client reconnects after a cut and
/// the server marks the session down while `steps` of the replace are held (1: the
/// accept decision; 2: the decision was "replace" and the hand-off of the new socket to
/// the session is held). The session is gone for good: nothing is dispatched on its
/// handle after `mark_down` returns, sends on it fail, the client learns of it once
/// (`ms_handle_remote_reset`: its next connect is answered RESETSESSION), and what it
/// sends afterwards arrives once, in order, on one new server session.
fn mark_down_while_the_replace_is_held(steps: u64, proto: ProtocolVersion) {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(2) };
    let (server, _, srx) =
        server_on(EntityType::OSD, 1, Policy::stateful_server(), false, loopback(), config);
    let (client, crx) =
        client_with(EntityType::CLIENT, 2, Policy::lossless_client(), test_config(2));
    let conn = client.connect_to(EntityType::OSD, addr_for(proto, server.my_addr()));
    send_range(&conn, 1..=50);
    let session = receive_in_order("server", &srx, 1..=50);
    assert_eq!(session.protocol(), Some(proto));

    let before = held(&server);
    conn.inject_socket_failure();
    wait_for("the replace step is held", || held(&server) >= before + steps);
    session.mark_down();
    assert_eq!(session.state(), ConnState::Closed);
    assert_eq!(
        session.send_message(test_message(MSG, 0, Bytes::new())),
        Err(SendError::Closed),
        "a send on a marked-down session was queued"
    );
    assert_eq!(
        count_events(&crx, 1, |s| matches!(s, Seen::RemoteReset(_))),
        1,
        "the client did not learn (once) that the server dropped its session"
    );
    send_range(&conn, 51..=100);
    let mut next = 51;
    while next <= 100 {
        match srx.recv_timeout(WAIT) {
            Ok(Seen::Message(c, m)) => {
                assert_ne!(c, session, "message {} dispatched on the marked-down session", m.tid());
                assert_eq!(m.tid(), next, "lost, duplicated or reordered after the reset");
                next += 1;
            }
            Ok(Seen::Reset(c)) => panic!("ms_handle_reset for {c:?} (mark_down delivers none)"),
            Ok(_) => {}
            Err(e) => panic!("stalled at {next} after mark_down of the replaced session: {e}"),
        }
    }
    assert_no_more_messages(&srx, "a duplicate after the reset");
    wait_for("one session on each side", || {
        server.connection_count() == 1 && client.connection_count() == 1
    });
    client.shutdown();
    server.shutdown();
}

#[test]
fn mark_down_while_the_accept_decision_is_held() {
    mark_down_while_the_replace_is_held(1, ProtocolVersion::V1);
}

#[test]
fn mark_down_while_the_replace_hand_off_is_held() {
    mark_down_while_the_replace_is_held(2, ProtocolVersion::V1);
}

#[test]
fn mark_down_while_the_accept_decision_is_held_over_msgr2() {
    mark_down_while_the_replace_is_held(1, ProtocolVersion::V2);
}

#[test]
fn mark_down_while_the_replace_hand_off_is_held_over_msgr2() {
    mark_down_while_the_replace_is_held(2, ProtocolVersion::V2);
}

/// Ceph PR 46732 (shutdown hanging behind connections stuck in their handshake): 50
/// peers have sent their connect and the server holds all 50 accept decisions (for a
/// minute). On a shared pool, whose workers keep running, `shutdown` and `wait` return
/// within 5 s (a deadline against a hang, not a measure of speed), every one of the 50
/// sockets is closed, and no connection is left.
#[test]
fn shutdown_with_50_handshakes_paused_returns_promptly() {
    shutdown_with_50_handshakes_paused(ProtocolVersion::V1);
}

/// [`shutdown_with_50_handshakes_paused_returns_promptly`] with 50 msgr2 peers paused
/// after their CLIENT_IDENT.
#[test]
fn shutdown_with_50_handshakes_paused_returns_promptly_over_msgr2() {
    shutdown_with_50_handshakes_paused(ProtocolVersion::V2);
}

fn shutdown_with_50_handshakes_paused(proto: ProtocolVersion) {
    const PEERS: u32 = 50;
    let pool = Arc::new(
        event_center::WorkerPool::new(event_center::WorkerPoolConfig {
            workers: 2,
            ..Default::default()
        })
        .expect("pool"),
    );
    let config =
        MessengerConfig { inject_internal_delays: Duration::from_secs(60), ..test_config(2) };
    let server = Messenger::with_pool(EntityName::new(EntityType::OSD, 0), 1, config, pool.clone())
        .expect("messenger");
    server.set_default_policy(Policy::stateful_server());
    let bound = server.bind(loopback()).expect("bind");
    server.start().expect("start");
    let (rec, _srx) = Recorder::new(false);
    server.add_dispatcher_head(rec).expect("dispatcher");
    let mut sockets: Vec<TcpStream> = (0..PEERS)
        .map(|i| match proto {
            ProtocolVersion::V1 => {
                let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 100 + i);
                let mut sock = banner_socket_as(bound, me);
                sock.write_all(&session_connect(0, 1)).expect("connect message");
                sock
            }
            ProtocolVersion::V2 => {
                let (server_addr, me) = (addr_for(proto, server.my_addr()), v2_peer_addr(100 + i));
                let mut sock = v2_socket_at_ident(server_addr, me, Policy::lossless_client());
                let ident = client_ident(server_addr, me, Features::PACIFIC_ADVERTISED, 1);
                sock.write_all(&ident).expect("client ident");
                sock
            }
        })
        .collect();
    wait_for("50 accept decisions are held", || held(&server) == u64::from(PEERS));

    let server = Arc::new(server);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let stopping = server.clone();
    // Detached on purpose: if it hangs, the deadline below fails the test.
    std::thread::spawn(move || {
        stopping.shutdown();
        stopping.wait();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("shutdown and wait with 50 paused handshakes did not return within 5 s");
    for (i, sock) in sockets.iter_mut().enumerate() {
        assert!(closed_within(sock, WAIT), "paused handshake {i} was left open by shutdown");
    }
    assert_eq!(server.connection_count(), 0, "connections left after wait()");
    pool.shutdown();
}

/// Ceph PR 26668's territory (a peer that accepts and never speaks): a listener accepts
/// every connection and never sends a byte. The lossless client gives each attempt its
/// handshake deadline (100 ms), then backs off 50 ms, doubling to 800 ms, and never gives
/// up. Counted over 4 s from the first attempt: about 8 attempts (at a constant 50 ms
/// backoff it would be 26, with none 40), fewer in the second 2 s than in the first, and
/// some in the second (the cap holds the backoff, nothing stops the retries). No connect
/// message is ever sent: the acceptor's banner never came.
#[test]
fn a_listener_that_never_answers_is_retried_with_backoff() {
    const WINDOW: Duration = Duration::from_secs(4);
    let listener = TcpListener::bind(loopback()).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let (accepted_tx, accepted_rx) = crossbeam_channel::unbounded();
    let silent = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Every socket is kept open and never written to.
            let mut kept = Vec::new();
            for sock in listener.incoming() {
                if stop.load(Relaxed) {
                    break;
                }
                if let Ok(sock) = sock {
                    kept.push(sock);
                    let _ = accepted_tx.send(Instant::now());
                }
            }
        })
    };
    let config = MessengerConfig {
        connection_ready_timeout: Duration::from_millis(100),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(800),
        ..test_config(2)
    };
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, EntityAddr::legacy(addr, 7));
    conn.send_message(test_message(MSG, 1, Bytes::new())).expect("queued");

    let first = accepted_rx.recv_timeout(WAIT).expect("no connect attempt at all");
    let (mut early, mut late) = (1, 0);
    while let Ok(at) = accepted_rx.recv_deadline(first + WINDOW) {
        if at.duration_since(first) < WINDOW / 2 {
            early += 1;
        } else {
            late += 1;
        }
    }
    eprintln!("connect attempts: {early} in the first 2 s, {late} in the next 2 s");
    assert!(early + late <= 12, "{} attempts in 4 s: no backoff", early + late);
    assert!(late < early, "no backoff growth: {early} attempts, then {late}");
    assert!(late >= 1, "the client stopped retrying");
    assert_eq!(client.v1_counters().connects, 0, "a connect message went to a silent peer");
    assert!(!conn.is_connected());
    client.shutdown();
    stop.store(true, Relaxed);
    let _ = TcpStream::connect(addr);
    silent.join().expect("listener thread");
}

/// What the connector under test backs off after its handshake fault: far longer than a
/// close takes on loopback, so a socket that closes within half of it was closed by the
/// fault, not by the redial that ends the backoff.
const FAULT_BACKOFF: Duration = Duration::from_secs(4);

/// Ceph's ProtocolV1 `fault` (through `AsyncConnection::fault`, whose `shutdown_socket`
/// comes before the backoff is scheduled): a lossless connector told WAIT by a fake v1
/// acceptor closes its socket at once, so the acceptor reads EOF well inside the
/// backoff (WAIT waits `max_backoff`), and dials again once the backoff is over.
#[test]
fn a_connector_told_to_wait_closes_its_socket_at_once_and_redials_after_the_backoff() {
    a_connector_fault_closes_its_socket_at_once(ProtocolVersion::V1);
}

/// [`a_connector_told_to_wait_closes_its_socket_at_once_and_redials_after_the_backoff`]
/// over msgr2 (ProtocolV2's `fault`, the same `shutdown_socket`): the fake acceptor
/// answers the connector's banner with one that is not msgr2's.
#[test]
fn a_connector_given_a_bad_banner_closes_its_socket_at_once_over_msgr2() {
    a_connector_fault_closes_its_socket_at_once(ProtocolVersion::V2);
}

fn a_connector_fault_closes_its_socket_at_once(proto: ProtocolVersion) {
    let listener = TcpListener::bind(loopback()).expect("bind");
    let peer = EntityAddr::legacy(listener.local_addr().expect("addr"), 7);
    let (accepted_tx, accepted) = crossbeam_channel::unbounded();
    // The first attempt's socket and the redial's, each with when it was accepted.
    let acceptor = std::thread::spawn(move || {
        for sock in listener.incoming().take(2) {
            let _ = accepted_tx.send((sock.expect("accept"), Instant::now()));
        }
    });
    let config = MessengerConfig {
        initial_backoff: FAULT_BACKOFF,
        max_backoff: FAULT_BACKOFF,
        ..test_config(2)
    };
    let (client, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let conn = client.connect_to(EntityType::OSD, addr_for(proto, peer));
    conn.send_message(test_message(MSG, 1, Bytes::new())).expect("queued");
    let (mut sock, _) = accepted.recv_timeout(WAIT).expect("no connect attempt");
    // Taken before the reply is written: the fault, and its backoff, come after it.
    let replied_at = match proto {
        ProtocolVersion::V1 => {
            accept_v1_connect(&mut sock, peer);
            let at = Instant::now();
            sock.write_all(&ConnectReply::new(Tag::WAIT).to_bytes()).expect("WAIT");
            at
        }
        ProtocolVersion::V2 => {
            let at = Instant::now();
            sock.write_all(b"ceph v3\n\0\0").expect("banner");
            at
        }
    };
    assert!(
        closed_within(&mut sock, FAULT_BACKOFF / 2),
        "the connector kept its socket open into a backoff of {FAULT_BACKOFF:?}"
    );
    let (_redial, redialled_at) = accepted.recv_timeout(WAIT).expect("no redial after the fault");
    let waited = redialled_at.duration_since(replied_at);
    assert!(waited >= FAULT_BACKOFF, "redialled after {waited:?}, inside the backoff");
    acceptor.join().expect("acceptor thread");
    client.shutdown();
}

/// Ceph PR 27337 (tracker 39241: a connection race whose winner faults leaves the loser
/// stuck "replacing"): two lossless peers, each behind its own NAT proxy, lose their
/// session at once and both reconnect, so their connects race; both sides hold their
/// accept decisions so the race happens every time. The winner (`w`, the lower nonce)
/// gets its connect accepted by the loser (`lo`), and while the loser hands the
/// winner's socket to its session, that socket is black-holed: the loser's reply never
/// arrives and the winner's handshake times out. The winner dials again and replaces the
/// loser's session on the dead socket. In the end: one session on each side, no reset,
/// and both streams (queued on both sides across the race) delivered once and in order.
#[test]
fn a_race_winner_whose_socket_is_black_holed_still_ends_in_one_session() {
    // Rounds of cuts until one races and is black-holed in time. Whose decision comes
    // first varies: the loser counts the winner's WAIT only when the winner's decision
    // answers it before the loser decides to replace (from then on the loser's session
    // reads nothing on its own socket until the hand-off, as Ceph's): about one round
    // in four; and the loser's own connect may reach the winner first (no hand-off).
    const ROUNDS: usize = 24;
    let config = |nonce: u32| {
        let c = MessengerConfig {
            inject_internal_delays: HOLD,
            connection_ready_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            ..test_config(2)
        };
        let m = Messenger::new(EntityName::new(EntityType::OSD, i64::from(nonce)), nonce, c)
            .expect("messenger");
        m.set_default_policy(Policy::lossless_peer());
        let bound = m.bind(loopback()).expect("bind");
        m.start().expect("start");
        let (rec, rx) = Recorder::new(false);
        m.add_dispatcher_head(rec).expect("dispatcher");
        (m, bound, rx)
    };
    // The lower nonce wins a race (the race key compares nonces first).
    let (w, w_bound, w_rx) = config(1);
    let (lo, lo_bound, lo_rx) = config(2);
    let w_nat = NatProxy::start(w_bound).expect("nat");
    let lo_nat = NatProxy::start(lo_bound).expect("nat");
    // Connectors through a proxy are announced as living behind their own proxy.
    w_nat.announce_connectors_as(lo_nat.addr());
    lo_nat.announce_connectors_as(w_nat.addr());
    let w_public = EntityAddr::legacy(w_nat.addr(), 1);
    let lo_public = EntityAddr::legacy(lo_nat.addr(), 2);

    let w_to_lo = w.connect_to(EntityType::OSD, lo_public);
    send_range(&w_to_lo, 1..=100);
    let lo_to_w = receive_in_order("lo", &lo_rx, 1..=100);
    assert_eq!(
        lo.connect_to(EntityType::OSD, w_public),
        lo_to_w,
        "lo keys w by its public address"
    );
    send_range(&lo_to_w, 1..=100);
    receive_in_order("w", &w_rx, 1..=100);
    let delta = |a: CounterValues, b: CounterValues| {
        (a.connects - b.connects, a.wait - b.wait, a.reset_session - b.reset_session)
    };

    // A round: both lose the socket and reconnect with the same connect_seq. Usually
    // their connects race (the loser is answered WAIT); on a loaded machine the loser
    // may notice the cut only after the winner's connect was decided, and then there
    // was no race: the round still has to deliver everything, and another round runs.
    let mut tid = 100;
    let mut raced = false;
    for round in 1..=ROUNDS {
        let (w0, lo0) = (w.v1_counters(), lo.v1_counters());
        let swallowed = lo_nat.stats().swallowed;
        let before = held(&lo);
        let batch = tid + 1..=tid + 100;
        tid += 100;
        w_to_lo.inject_socket_failure();
        // The batch must cross the cut: the driver applies a cut at its next pump, and
        // messages sent before that could still leave on the old socket (then nothing
        // needs the reconnect). The session is not open again before `lo`'s held
        // decision, nor parked in standby until the batch.
        wait_for("w's socket is cut", || w_to_lo.state() != ConnState::Open);
        send_range(&w_to_lo, batch.clone());
        send_range(&lo_to_w, batch.clone());
        // `lo` accepted the winner's connect and holds the hand-off of its socket: the
        // only live connection through `lo`'s proxy now is the winner's. Black-hole it.
        // Or the winner took the loser's connect first (a higher connect_seq, decided
        // before the winner's own redial was): the winner's session opens on the loser's
        // socket, and the loser, answering the winner's stale connect with a retry, holds
        // one decision and no hand-off. No race: the round still has to deliver
        // everything, and another round runs.
        let mut handed_off = false;
        let not_yet = wait_for("lo holds the hand-off of the winner's socket", || {
            handed_off = held(&lo) >= before + 2;
            handed_off || w_to_lo.state() == ConnState::Open
        });
        if !handed_off {
            receive_in_order("lo", &lo_rx, batch.clone());
            receive_in_order("w", &w_rx, batch);
            assert_no_more_messages(&lo_rx, "a duplicate after the reconnect");
            assert_no_more_messages(&w_rx, "a duplicate after the reconnect");
            wait_for("one session on each side", || {
                w.connection_count() == 1 && lo.connection_count() == 1
            });
            let (w_d, lo_d) = (delta(w.v1_counters(), w0), delta(lo.v1_counters(), lo0));
            eprintln!("round {round}: w {w_d:?}, lo {lo_d:?}; the winner took the loser's connect");
            assert_eq!((w_d.2, lo_d.2), (0, 0), "a lossless session was reset");
            assert_eq!(w_d.1, 0, "the winner (lower nonce) was answered WAIT");
            assert!(
                w_d.0 <= 30 && lo_d.0 <= 30,
                "unbounded connect attempts: w {w_d:?}, lo {lo_d:?}"
            );
            continue;
        }
        let holed = lo_nat.black_hole_all();
        // The hold began after `not_yet`; if this thread ran too late (a loaded machine
        // can stall it for longer than the hold), the hand-off may have ended and the
        // loser's reply passed before the black hole, and then there is nothing for the
        // winner to time out on: the round still has to deliver everything.
        let in_time = not_yet.elapsed() < HOLD;
        assert_eq!(holed, 1, "round {round}: expected the winner's connection alone to be live");

        receive_in_order("lo", &lo_rx, batch.clone());
        receive_in_order("w", &w_rx, batch);
        assert_no_more_messages(&lo_rx, "a duplicate after the race");
        assert_no_more_messages(&w_rx, "a duplicate after the race");
        wait_for("one session on each side", || {
            w.connection_count() == 1 && lo.connection_count() == 1
        });
        let (w_d, lo_d) = (delta(w.v1_counters(), w0), delta(lo.v1_counters(), lo0));
        eprintln!(
            "round {round}: w {w_d:?}, lo {lo_d:?} (connects, WAIT, RESETSESSION); nat {:?}; \
             black hole in time: {in_time}",
            lo_nat.stats()
        );
        assert!(
            !in_time || lo_nat.stats().swallowed > swallowed,
            "the black hole swallowed nothing (not even the loser's reply)"
        );
        assert_eq!((w_d.2, lo_d.2), (0, 0), "a lossless session was reset");
        assert_eq!(w_d.1, 0, "the winner (lower nonce) was answered WAIT");
        // 2 to 3 connects on each side on a quiet machine, up to 10 on a busy one (RETRY
        // replies while the hand-off is held); a livelock would pass 30 before the stream
        // stalled.
        assert!(w_d.0 <= 30 && lo_d.0 <= 30, "unbounded connect attempts: w {w_d:?}, lo {lo_d:?}");
        if lo_d.1 >= 1 && in_time {
            // The race happened, and the winner's handshake on the black hole timed out
            // before the loser's (which started a held decision later): the winner
            // dialled again.
            assert!(w_d.0 >= 2, "the winner never dialled again after the black hole");
            raced = true;
            break;
        }
    }
    assert!(raced, "no round of {ROUNDS} raced with the black hole inside the hand-off");
    w.shutdown();
    lo.shutdown();
}
