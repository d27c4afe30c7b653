//! Two connects racing to replace one lossless session: the accept decision reads the
//! session and marks it "being replaced" in one critical section, so at most one wins;
//! the other is told to retry (Ceph's RETRY_GLOBAL while `replacing`). Over msgr v1 and
//! msgr2. And a stale connect decided between a new session's registration and its
//! reply, which must meet the new session's numbers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;

use messenger::{ConnState, Connection, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::{EntityAddr, EntityAddrVec, EntityType, Features};
use protocol::v2::frames::{ControlFrame, ServerIdent, SessionReconnect};
use protocol::v2::Tag as V2Tag;
use protocol::wire::{ConnectReply, Tag};
use tests::hostile::*;
use tests::hostile_v2::*;
use tests::loopback::*;

fn reply_tag(sock: &mut std::net::TcpStream) -> Tag {
    let mut reply = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut reply).expect("reply");
    Tag(reply[0])
}

#[test]
fn two_connects_racing_to_replace_a_session_do_not_both_win() {
    let config = test_config(4);
    let (srv, addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let mut both_won = 0;
    for round in 0..100u32 {
        let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 1000 + round);
        // The session: opened by a first socket (connect_seq 0 → the session's is 1).
        let mut first = banner_socket_as(addr, me);
        first.write_all(&session_connect(0, 10)).expect("connect");
        assert!(matches!(reply_tag(&mut first), Tag::READY | Tag::SEQ));
        // Two reconnects of that session at once.
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut sock = banner_socket_as(addr, me);
                    barrier.wait();
                    sock.write_all(&session_connect(2, 100)).expect("connect");
                    let tag = reply_tag(&mut sock);
                    (sock, tag)
                })
            })
            .collect();
        let tags: Vec<Tag> = racers.into_iter().map(|r| r.join().expect("racer").1).collect();
        let won = tags.iter().filter(|t| matches!(**t, Tag::READY | Tag::SEQ)).count();
        assert!(won >= 1 || tags.contains(&Tag::RETRY_GLOBAL), "round {round}: {tags:?}");
        if won > 1 {
            both_won += 1;
        }
        drop(first);
    }
    assert_eq!(both_won, 0, "two connects replaced one session in {both_won} rounds");
    srv.shutdown();
}

// The msgr2 counterpart: a lossless session opened with CLIENT_IDENT, then two
// SESSION_RECONNECTs of it at once (same cookies, global_seq and connect_seq). The accept
// decision marks the session "being replaced" in the same critical section that reads it,
// so exactly one gets SESSION_RECONNECT_OK; the other is answered as Ceph's
// `handle_reconnect` says: RETRY_GLOBAL while the session is being replaced, or, once the
// winner is in, WAIT (equal connect_seq, the peer's address sorts higher and the policy
// is not a server's: the existing session wins the reconnect race). Never a second
// RECONNECT_OK, never a socket closed without an answer.
#[test]
fn two_session_reconnects_racing_to_replace_a_session_do_not_both_win_over_msgr2() {
    const ROUNDS: u32 = 60;
    let config = test_config(4);
    let (srv, _addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::lossless_peer(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let server = addr_for(messenger::ProtocolVersion::V2, srv.my_addr());
    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..ROUNDS {
        // Nonces above the server's: our address sorts higher in a race.
        let me = v2_peer_addr(5000 + round);
        let cookie = 0x1000 + u64::from(round);
        // The session: opened by a first socket.
        let mut first = v2_socket_at_ident(server, me, Policy::lossless_peer());
        first
            .write_all(&client_ident(server, me, Features::PACIFIC_ADVERTISED, cookie))
            .expect("ident");
        let (tag, seg) = read_frame(&mut first).expect("ident reply");
        assert_eq!(tag, V2Tag::SERVER_IDENT, "round {round}");
        let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
        assert_ne!(server_cookie, 0, "a lossless session has a server cookie");
        let reconnect = control(&SessionReconnect {
            addrs: EntityAddrVec { addrs: vec![me] },
            client_cookie: cookie,
            server_cookie,
            global_seq: 100,
            connect_seq: 1,
            msg_seq: 0,
        });
        // Two reconnects of that session at once.
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, reconnect) = (barrier.clone(), reconnect.clone());
                std::thread::spawn(move || {
                    let mut sock = v2_socket_at_ident(server, me, Policy::lossless_peer());
                    barrier.wait();
                    sock.write_all(&reconnect).expect("reconnect");
                    let tag = read_frame(&mut sock).map(|(t, _)| t);
                    (sock, tag)
                })
            })
            .collect();
        let tags: Vec<Option<V2Tag>> =
            racers.into_iter().map(|r| r.join().expect("racer").1).collect();
        for t in &tags {
            *tally.entry(format!("{t:?}")).or_default() += 1;
        }
        let won = tags.iter().filter(|t| **t == Some(V2Tag::SESSION_RECONNECT_OK)).count();
        let lost = tags
            .iter()
            .filter(|t| matches!(t, Some(V2Tag::SESSION_RETRY_GLOBAL | V2Tag::WAIT)))
            .count();
        assert_eq!((won, lost), (1, 1), "round {round}: {tags:?}");
        drop(first);
    }
    eprintln!("replies over {ROUNDS} rounds: {tally:?}");
    srv.shutdown();
}

// A client marks a connection down in the middle of its handshake and opens a new
// session; the old connection's CLIENT_IDENT, late (a proxy, a slow path), reaches the
// stateful server after the new session's. Its lower global_seq marks it stale (Ceph's
// handle_existing_connection: "this is a stale connection"): it must not replace the
// newer session as a peer restart would, or the client's next reconnect of that session
// is answered SESSION_RESET and a lossless client sees its session reset.
#[test]
fn a_late_ident_of_an_older_connection_does_not_replace_a_newer_session_over_msgr2() {
    let (srv, _addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        test_config(2),
    );
    let server = addr_for(messenger::ProtocolVersion::V2, srv.my_addr());
    let me = v2_peer_addr(4242);
    let mut old = v2_socket_at_ident(server, me, Policy::lossless_client());
    let mut new = v2_socket_at_ident(server, me, Policy::lossless_client());
    new.write_all(&ident_listing(server, vec![me], 0xB, 20)).expect("new ident");
    let (tag, seg) = read_frame(&mut new).expect("new ident reply");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
    old.write_all(&ident_listing(server, vec![me], 0xA, 10)).expect("old ident");
    let answer = read_frame(&mut old).map(|(t, _)| t);
    assert_ne!(answer, Some(V2Tag::SERVER_IDENT), "the stale ident opened a session");
    // The newer session survives: its reconnect after a cut is taken, not reset.
    drop(new);
    let mut again = v2_socket_at_ident(server, me, Policy::lossless_client());
    again
        .write_all(&control(&SessionReconnect {
            addrs: EntityAddrVec { addrs: vec![me] },
            client_cookie: 0xB,
            server_cookie,
            global_seq: 30,
            connect_seq: 1,
            msg_seq: 0,
        }))
        .expect("reconnect");
    let tag = read_frame(&mut again).map(|(t, _)| t);
    assert_eq!(tag, Some(V2Tag::SESSION_RECONNECT_OK), "the newer session was replaced");
    srv.shutdown();
}

/// How long the server of the window tests holds each accept decision and each new
/// session's reply: far longer than the test needs to strike inside the window.
const HOLD: Duration = Duration::from_millis(1000);

/// Accept decisions, replies and hand-offs `m` held back so far.
fn held(m: &Messenger) -> u64 {
    m.worker_counters().iter().map(|c| c.inject_internal_delays.load(Relaxed)).sum()
}

/// A stateful server whose accept decisions, and new sessions' replies once a decision
/// registered them (Ceph's `inject_delay` after `accept_conn`), wait [`HOLD`]
/// (`ms_inject_internal_delays`). One worker: held steps run in the order they were
/// held. Its nonce (2) sorts above the peer's (1), so without the new session's numbers
/// the race rule would hand that session to the peer's stale connect.
fn holding_server() -> (Messenger, SocketAddr) {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(1) };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, bound, _rx) =
        server_on(EntityType::OSD, 2, Policy::stateful_server(), false, loopback, config);
    (srv, bound)
}

/// Writes `newer`'s connect, then, once its decision is held, `stale`'s: the server
/// decides `newer`'s first and holds its reply, then decides `stale`'s.
fn strike_inside_the_window(
    srv: &Messenger,
    newer: (&mut TcpStream, &[u8]),
    stale: (&mut TcpStream, &[u8]),
) {
    let before = held(srv);
    newer.0.write_all(newer.1).expect("newer connect");
    wait_until(|| held(srv) > before, || "the newer connect's decision was never held".into());
    stale.0.write_all(stale.1).expect("stale connect");
    wait_until(|| held(srv) >= before + 2, || "the stale connect's decision was never held".into());
    assert_eq!(
        held(srv),
        before + 2,
        "the newer connect was decided before the stale one reached its decision (a stall \
         of about {HOLD:?}): the stale one would be decided after the window"
    );
}

/// `me`'s SESSION_RECONNECT of the session with client cookie 0xC and `server_cookie`
/// (global_seq 60, connect_seq 1, nothing received), on a new socket: the socket, kept
/// open, and the tag of the server's reply.
fn reconnect_reply(
    server: EntityAddr,
    me: EntityAddr,
    server_cookie: u64,
) -> (TcpStream, Option<V2Tag>) {
    let mut again = v2_socket_at_ident(server, me, Policy::lossless_client());
    let reconnect = SessionReconnect {
        addrs: EntityAddrVec { addrs: vec![me] },
        client_cookie: 0xC,
        server_cookie,
        global_seq: 60,
        connect_seq: 1,
        msg_seq: 0,
    };
    again.write_all(&control(&reconnect)).expect("reconnect");
    let tag = read_frame(&mut again).map(|(t, _)| t);
    (again, tag)
}

/// Whether `sock` has nothing to read yet (and was not closed).
fn nothing_yet(sock: &TcpStream) -> bool {
    sock.set_nonblocking(true).expect("nonblocking");
    let got = tests::peek_some(sock, &mut [0u8; 1]);
    sock.set_nonblocking(false).expect("blocking");
    matches!(got, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

// Ceph's newcomer holds the peer's global_seq and cookies (handle_client_ident) and its
// server cookie (send_server_ident) before `accept_conn` registers it, so a stale ident
// of the same peer decided meanwhile meets them: "this is a stale connection", closed
// unanswered. Here the newer ident (global_seq 50) is decided first and registered, its
// reply held; the stale one (global_seq 40, the same cookie: a connection its peer gave
// up on) is decided inside that window. Registered with no numbers, the new session
// looked like a racing connect of ours that the peer wins: the stale connection took it
// over (a fresh server cookie, seqs back to 0, the peer's good socket closed).
#[test]
fn a_stale_ident_decided_before_a_new_sessions_reply_is_dropped_over_msgr2() {
    let (srv, _) = holding_server();
    let server = addr_for(ProtocolVersion::V2, srv.my_addr());
    let me = v2_peer_addr(1);
    let mut newer = v2_socket_at_ident(server, me, Policy::lossless_client());
    let mut stale = v2_socket_at_ident(server, me, Policy::lossless_client());
    let (newer_ident, stale_ident) =
        (ident_listing(server, vec![me], 0xC, 50), ident_listing(server, vec![me], 0xC, 40));
    strike_inside_the_window(&srv, (&mut newer, &newer_ident), (&mut stale, &stale_ident));

    let answer = read_frame(&mut stale).map(|(t, _)| t);
    assert_eq!(answer, None, "the stale ident was answered: it took the new session over");
    assert!(nothing_yet(&newer), "the stale ident was decided after the new session's reply");
    let (tag, seg) = read_frame(&mut newer).expect("the newer ident's reply");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
    // The session is the newer connection's: its reconnect after a cut resumes it.
    drop(newer);
    let (_again, tag) = reconnect_reply(server, me, server_cookie);
    assert_eq!(tag, Some(V2Tag::SESSION_RECONNECT_OK), "the new session was not resumed");
    srv.shutdown();
}

// msgr v1: Ceph's `open` sets connect_seq and peer_global_seq before `accept_conn`
// registers the newcomer, so a stale connect (global_seq 40) decided before the newer
// one's reply (global_seq 50) is told RETRY_GLOBAL with 50. Registered with no numbers,
// the new session looked like a racing connect of ours (connect_seq 0 both) that the
// peer wins: the stale connection took it over.
#[test]
fn a_stale_connect_decided_before_a_new_sessions_reply_is_retried_over_msgr1() {
    let (srv, bound) = holding_server();
    let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 1);
    let mut newer = banner_socket_as(bound, me);
    let mut stale = banner_socket_as(bound, me);
    let (newer_connect, stale_connect) = (session_connect(0, 50), session_connect(0, 40));
    strike_inside_the_window(&srv, (&mut newer, &newer_connect), (&mut stale, &stale_connect));

    let mut reply = [0u8; ConnectReply::LEN];
    stale.read_exact(&mut reply).expect("the stale connect's reply");
    let (reply, _) = ConnectReply::decode(&reply).expect("reply decodes");
    assert_eq!(
        (reply.tag, reply.global_seq),
        (Tag::RETRY_GLOBAL, 50),
        "the stale connect was not told to retry above the new session's global_seq"
    );
    assert!(nothing_yet(&newer), "the stale connect was decided after the new session's reply");
    assert!(matches!(reply_tag(&mut newer), Tag::READY | Tag::SEQ), "the newer connect lost");
    srv.shutdown();
}

/// The callbacks `rx` delivers up to and including the first accept, named.
fn callbacks_until_an_accept(rx: &crossbeam_channel::Receiver<Seen>) -> Vec<&'static str> {
    let mut seen = Vec::new();
    loop {
        let ev = rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no accept: {seen:?}"));
        let name = match ev {
            Seen::Accept(_) => "accept",
            Seen::Reset(_) => "reset",
            Seen::RemoteReset(_) => "remote_reset",
            Seen::Connect(_) => "connect",
            Seen::Refused(_) => "refused",
            Seen::Message(..) => "message",
        };
        seen.push(name);
        if name == "accept" {
            return seen;
        }
    }
}

// A stateless server's fresh v1 session from a peer with RECONNECT_SEQ is answered SEQ
// and opens (ms_handle_accept) only once the peer's in_seq is read. A peer that hangs up
// in between leaves a connection no dispatcher was told of: it closes quietly. (Ceph
// queues its accept before that wait and reports accept, then reset; a reset alone, for
// a connection never accepted, is what neither does.) A second peer's session, accepted
// after the first connection is gone, bounds the wait: a reset of the first would have
// been queued before that accept.
#[test]
fn a_fresh_lossy_v1_session_closed_before_the_peers_in_seq_reports_no_lone_reset() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, bound, rx) =
        server_on(EntityType::OSD, 2, Policy::stateless_server(), false, loopback, test_config(1));
    let active = || -> u64 {
        srv.worker_counters().iter().map(|c| c.active_connections.load(Relaxed)).sum()
    };
    let mut sock = fresh_banner_socket(bound);
    sock.write_all(&session_connect(0, 1)).expect("connect");
    assert_eq!(
        reply_tag(&mut sock),
        Tag::SEQ,
        "a fresh session with RECONNECT_SEQ is answered SEQ"
    );
    wait_until(|| active() >= 1, || "the server never counted the connection".into());
    drop(sock);
    wait_until(|| active() == 0, || "the server kept the abandoned connection".into());
    let _second =
        RawPeer::handshake(addr_for(ProtocolVersion::V1, srv.my_addr()), Policy::lossy_client());
    let seen = callbacks_until_an_accept(&rx);
    srv.shutdown();
    assert_eq!(seen, ["accept"], "a reset came for a connection never accepted");
}
/// A stateful server's msgr2 session with the raw peer `me` (client cookie 0xC), opened:
/// the server, its callbacks, the server's v2 address, the peer's socket, the server
/// cookie and the accepted connection.
fn open_v2_session(
    me: EntityAddr,
) -> (Messenger, crossbeam_channel::Receiver<Seen>, EntityAddr, TcpStream, u64, Connection) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _bound, rx) =
        server_on(EntityType::OSD, 2, Policy::stateful_server(), false, loopback, test_config(1));
    let server = addr_for(ProtocolVersion::V2, srv.my_addr());
    let mut first = v2_socket_at_ident(server, me, Policy::lossless_client());
    first.write_all(&ident_listing(server, vec![me], 0xC, 50)).expect("ident");
    let (tag, seg) = read_frame(&mut first).expect("server ident");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
    let conn = match rx.recv_timeout(WAIT) {
        Ok(Seen::Accept(c)) => c,
        other => panic!("no accept: {other:?}"),
    };
    (srv, rx, server, first, server_cookie, conn)
}

/// The tag of the next frame on `sock` that is not a keepalive or an ack.
fn next_payload_frame(sock: &mut TcpStream) -> Option<V2Tag> {
    loop {
        let (tag, _) = read_frame(sock)?;
        if ![V2Tag::ACK, V2Tag::KEEPALIVE2, V2Tag::KEEPALIVE2_ACK].contains(&tag) {
            return Some(tag);
        }
    }
}

// msgr2: a SESSION_RECONNECT naming a lossless session our dispatcher marked disposable.
// Ceph's handle_reconnect never looks at the existing connection's policy: cookies and
// sequence numbers match, so it reuses the connection (SESSION_RECONNECT_OK) and the
// session goes on (accepted again, as every SESSION_RECONNECT_OK is), lossy from then on.
// A replace of a lossy session resets it only for a new session (a v1 connect, an msgr2
// ident).
#[test]
fn a_reconnect_to_a_session_marked_disposable_resumes_it_over_msgr2() {
    let me = v2_peer_addr(7);
    let (srv, rx, server, first, server_cookie, conn) = open_v2_session(me);
    conn.mark_disposable();
    let (again, tag) = reconnect_reply(server, me, server_cookie);
    assert_eq!(tag, Some(V2Tag::SESSION_RECONNECT_OK), "Ceph resumes it");
    // Ceph's send_reconnect_ok queues ms_handle_accept again, for the same connection.
    match rx.recv_timeout(WAIT) {
        Ok(Seen::Accept(c)) => assert_eq!(c, conn, "the resumed session is the same connection"),
        other => panic!("the session resumes (accepted again), got {other:?}"),
    }
    assert_eq!(conn.state(), ConnState::Open);
    // Still disposable: its next fault resets it.
    drop(again);
    match rx.recv_timeout(WAIT) {
        Ok(Seen::Reset(c)) => assert_eq!(c, conn, "the resumed session stays lossy"),
        other => panic!("a fault of the resumed disposable session resets it, got {other:?}"),
    }
    srv.shutdown();
    drop(first);
}

// Ceph's mark_disposable only makes the policy lossy: what the session sent before and
// the peer has not acknowledged stays in its sent list, and a reconnect that resumes the
// session (handle_reconnect, reuse_connection) sends it again. Ours dropped it at the
// mark, so the resumed session had a silent gap in the peer's lossless stream.
#[test]
fn a_resumed_disposable_session_sends_again_what_it_had_sent_unacknowledged_over_msgr2() {
    let me = v2_peer_addr(8);
    let (srv, _rx, server, mut first, server_cookie, conn) = open_v2_session(me);
    conn.send_message(test_message(0x7f00, 1, Bytes::from_static(b"unacked"))).expect("send");
    assert_eq!(next_payload_frame(&mut first), Some(V2Tag::MESSAGE), "sent on the first socket");
    conn.mark_disposable();
    let (mut again, tag) = reconnect_reply(server, me, server_cookie);
    assert_eq!(tag, Some(V2Tag::SESSION_RECONNECT_OK));
    assert_eq!(
        next_payload_frame(&mut again),
        Some(V2Tag::MESSAGE),
        "the unacknowledged message is sent again on the resumed session"
    );
    srv.shutdown();
    drop(first);
}

/// Returns once `conn`'s driver has run a whole pump that began after this call (its
/// gauges are published at the end of every pump).
fn after_a_whole_pump(conn: &Connection) {
    for _ in 0..2 {
        let (tx, ran) = crossbeam_channel::bounded(1);
        conn.inject_before_settle(move || {
            let _ = tx.send(());
        });
        ran.recv_timeout(WAIT).expect("the driver ran");
    }
}

// A message sent before the mark stays in the sent list, counted at its send cost, and
// its frame may still be waiting to be written: a lossy session also counts unwritten
// frames (it keeps nothing it frames). Counted by both, the mark doubled what the
// connection held against its send bounds (and the messenger's total), and could refuse
// sends on every connection until the peer read (review).
#[test]
fn marking_disposable_counts_an_unwritten_unacknowledged_message_once_over_msgr2() {
    let me = v2_peer_addr(9);
    let (srv, _rx, _server, first, _cookie, conn) = open_v2_session(me);
    // The peer reads nothing: most of the frame stays unwritten.
    conn.send_message(test_message(0x7f00, 1, Bytes::from(vec![0x5a; 64 << 20]))).expect("send");
    after_a_whole_pump(&conn);
    let before = conn.queued_send_bytes();
    assert!(before >= 64 << 20, "the message is counted: {before}");
    conn.mark_disposable();
    after_a_whole_pump(&conn);
    let after = conn.queued_send_bytes();
    assert!(after <= before, "held {before} before the mark, {after} after it");
    srv.shutdown();
    drop(first);
}

// A replacing reconnect freezes its session (nothing read on the old socket) only until
// the hand-off, which the accepting connection posts with its decision, not after
// anything more from the peer: a peer that sends SESSION_RECONNECT and then goes silent
// (reads nothing, writes nothing more, keeps the socket open) leaves the session on the
// adopted socket, and its next reconnect is decided against the session
// (SESSION_RECONNECT_OK), not told to retry for as long as the silent socket stays open
// (SESSION_RETRY_GLOBAL, Ceph's answer while the session is `replacing`). Decisions and
// the hand-off each wait HOLD here, so the freeze lasts long enough to be seen.
#[test]
fn a_silent_replacing_reconnect_does_not_freeze_the_session_over_msgr2() {
    let config = MessengerConfig { inject_internal_delays: HOLD, ..test_config(1) };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _, _rx) =
        server_on(EntityType::OSD, 2, Policy::lossless_peer(), false, loopback, config);
    let server = addr_for(ProtocolVersion::V2, srv.my_addr());
    let me = v2_peer_addr(5000);
    let mut first = v2_socket_at_ident(server, me, Policy::lossless_peer());
    first.write_all(&client_ident(server, me, Features::PACIFIC_ADVERTISED, 0xC)).expect("ident");
    let (tag, seg) = read_frame(&mut first).expect("ident reply");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
    let reconnect = |global_seq: u64, connect_seq: u64| {
        control(&SessionReconnect {
            addrs: EntityAddrVec { addrs: vec![me] },
            client_cookie: 0xC,
            server_cookie,
            global_seq,
            connect_seq,
            msg_seq: 0,
        })
    };

    // The silent reconnect: decided (held once), its hand-off waiting at the session
    // (twice), which is frozen from the decision on.
    let before = held(&srv);
    let mut silent = v2_socket_at_ident(server, me, Policy::lossless_peer());
    silent.write_all(&reconnect(100, 1)).expect("silent reconnect");
    wait_until(
        || held(&srv) >= before + 2,
        || format!("the reconnect was never decided and handed off: {}", srv.dump_connections()),
    );

    // The peer's next reconnect, retried with a higher global_seq on each
    // SESSION_RETRY_GLOBAL, must get the session once the hand-off is done.
    let deadline = std::time::Instant::now() + HOLD * 10;
    let mut tags = Vec::new();
    for global_seq in (200..).step_by(100) {
        let mut again = v2_socket_at_ident(server, me, Policy::lossless_peer());
        again.write_all(&reconnect(global_seq, 10)).expect("reconnect");
        let tag = read_frame(&mut again).map(|(t, _)| t);
        tags.push(tag);
        if tag == Some(V2Tag::SESSION_RECONNECT_OK) {
            break;
        }
        assert_eq!(tag, Some(V2Tag::SESSION_RETRY_GLOBAL), "replies: {tags:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the session stayed frozen for the silent reconnect: replies {tags:?}, {}",
            srv.dump_connections()
        );
    }
    drop(silent);
    srv.shutdown();
}
