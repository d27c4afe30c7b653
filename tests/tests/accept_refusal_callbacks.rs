//! What our dispatchers hear when our acceptor refuses a connecting peer, over msgr v1
//! and msgr2. Ceph queues `ms_handle_refused` only on the dialling side (a dial nothing
//! listened to, `AsyncConnection`'s ECONNREFUSED); an acceptor that answers BADPROTOVER,
//! FEATURES or BADAUTHORIZER (ProtocolV1's `handle_connect_message_2`), AUTH_BAD_METHOD
//! or IDENT_MISSING_FEATURES (ProtocolV2's `handle_auth_request`, `handle_client_ident`)
//! and then loses the socket closes it quietly, but for the reset of a connection its
//! dispatchers judged in `ms_verify_authorizer` (ProtocolV1 resets a half-accepted
//! connection that faults). So for each refusal a raw peer provokes, no dispatcher hears
//! `ms_handle_refused`, and `ms_handle_reset` comes only for a connection a dispatcher
//! was shown, once.
//!
//! Every callback is recorded with its connection; a sentinel connection opened after
//! the hostile ones have gone marks the end of what they caused (the dispatch queue
//! delivers in order).

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    AuthVerdict, Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy,
    ProtocolVersion,
};
use protocol::auth::{AuthNoneAuthorizer, AuthorizerClient, ConMode};
use protocol::types::{AuthEntityName, EntityAddr, EntityName, EntityType, Features, AUTH_NONE};
use protocol::v2::banner::{Banner, Msgr2Features};
use protocol::v2::frames::AuthRequest;
use protocol::v2::Tag as Tag2;
use protocol::wire::{ConnectMsg, ConnectReply, Tag, ACCEPTOR_BLOCK_LEN, BANNER};
use protocol::Message;
use tests::hostile::{
    banner_socket_as, connect_msg, exchange_connect, fresh_peer_addr, good_protocol_version,
    read_until_closed, worker_counter,
};
use tests::hostile_v2::{
    client_hello, client_ident, control, featureless_ident, read_frame, v2_banner_socket,
    v2_peer_addr, v2_socket_at_ident,
};
use tests::loopback::{addr_for, test_config, wait_for_connection_count, WAIT};

/// A dispatcher callback, with the id of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Verify(u64),
    Accept(u64),
    Connect(u64),
    Reset(u64),
    RemoteReset(u64),
    Refused(u64),
}

/// The global id whose auth-none authorizer [`Log`] rejects.
const REJECTED_GLOBAL_ID: u64 = 666;

fn authorizer(name: &str, global_id: u64) -> Vec<u8> {
    AuthNoneAuthorizer::new(&AuthEntityName::new(EntityType::CLIENT, name), global_id)
        .bytes()
        .to_vec()
}

/// Records every callback; judges authorizers itself (so a connection it saw there is
/// one it may keep state for), rejecting those of [`REJECTED_GLOBAL_ID`].
struct Log {
    tx: Sender<Call>,
    rejected: Vec<u8>,
}

impl Dispatcher<Connection> for Log {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        let _ = self.tx.send(Call::Connect(conn.id()));
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        let _ = self.tx.send(Call::Accept(conn.id()));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(Call::Reset(conn.id()));
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let _ = self.tx.send(Call::RemoteReset(conn.id()));
    }
    fn ms_handle_refused(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(Call::Refused(conn.id()));
        true
    }
    fn ms_verify_authorizer(
        &self,
        conn: &Connection,
        _peer_type: u8,
        _protocol: u32,
        authorizer: &[u8],
    ) -> AuthVerdict {
        let _ = self.tx.send(Call::Verify(conn.id()));
        if authorizer == self.rejected.as_slice() {
            AuthVerdict::Reject
        } else {
            AuthVerdict::Accept { reply: Vec::new() }
        }
    }
}

/// An OSD messenger (auth none) serving v1 and msgr2 on one port with `policy`, whose
/// only dispatcher is a [`Log`].
fn server(policy: Policy) -> (Messenger, SocketAddr, Receiver<Call>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 4343, test_config(2))
        .expect("messenger");
    m.set_default_policy(policy);
    let bound = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    let rejected = authorizer("x", REJECTED_GLOBAL_ID);
    m.add_dispatcher_head(Arc::new(Log { tx, rejected })).expect("dispatcher");
    (m, bound, rx)
}

/// A client's connect to an OSD with an auth-none authorizer (as ours send).
fn osd_connect(connect_seq: u32, global_seq: u32) -> ConnectMsg {
    ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::CLIENT,
        global_seq,
        connect_seq,
        protocol_version: good_protocol_version(),
        authorizer_protocol: AUTH_NONE,
        authorizer_len: 0,
        flags: 0,
    }
}

/// Opens a msgr2 session from a fresh raw peer and returns once the acceptor answered
/// SERVER_IDENT: its `ms_handle_accept` follows everything queued before.
fn sentinel(server: EntityAddr) -> TcpStream {
    let me = v2_peer_addr(rand::random::<u32>() | 1);
    let mut sock = v2_socket_at_ident(server, me, Policy::lossy_client());
    sock.write_all(&client_ident(server, me, Features::PACIFIC_ADVERTISED, 77)).expect("ident");
    let (tag, _) = read_frame(&mut sock).expect("an answer to the sentinel's ident");
    assert_eq!(tag, Tag2::SERVER_IDENT);
    sock
}

/// The callbacks up to the sentinel's `ms_handle_accept`, the one after `opened` others.
fn calls_before_sentinel(rx: &Receiver<Call>, opened: usize) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut accepts = 0;
    loop {
        match rx.recv_timeout(WAIT).expect("the sentinel's ms_handle_accept") {
            Call::Accept(_) if accepts == opened => return calls,
            c => {
                accepts += usize::from(matches!(c, Call::Accept(_)));
                calls.push(c);
            }
        }
    }
}

/// No `ms_handle_refused`; every `ms_handle_reset` for a connection a dispatcher judged,
/// once; every judged connection that never opened reported reset.
fn assert_ceph_callbacks(calls: &[Call]) {
    let refused: Vec<_> = calls.iter().filter(|c| matches!(c, Call::Refused(_))).collect();
    assert!(refused.is_empty(), "ms_handle_refused on accepted connections: {calls:?}");
    let verified: HashSet<u64> = calls
        .iter()
        .filter_map(|c| if let Call::Verify(id) = c { Some(*id) } else { None })
        .collect();
    let accepted: HashSet<u64> = calls
        .iter()
        .filter_map(|c| if let Call::Accept(id) = c { Some(*id) } else { None })
        .collect();
    let mut resets: HashMap<u64, usize> = HashMap::new();
    for c in calls {
        if let Call::Reset(id) = c {
            *resets.entry(*id).or_default() += 1;
        }
    }
    for (id, n) in &resets {
        assert!(
            verified.contains(id),
            "ms_handle_reset of {id}, which no dispatcher saw: {calls:?}"
        );
        assert_eq!(*n, 1, "connection {id} reset {n} times: {calls:?}");
    }
    for id in verified.difference(&accepted) {
        assert!(resets.contains_key(id), "judged connection {id} ended unreported: {calls:?}");
    }
    for c in calls {
        assert!(
            !matches!(c, Call::Connect(_) | Call::RemoteReset(_)),
            "a callback no accept-side refusal gives: {calls:?}"
        );
    }
}

/// Each msgr v1 acceptor refusal, then hang-up.
fn v1_refusals(addr: SocketAddr) {
    // BADPROTOVER.
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    s.write_all(&connect_msg(999, Features::PACIFIC_ADVERTISED)).expect("connect");
    let mut reply = [0u8; ConnectReply::LEN];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(ConnectReply::decode(&reply).expect("reply").0.tag, Tag::BADPROTOVER);
    drop(s);
    // FEATURES: a peer lacking what we require.
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    let msg = ConnectMsg { features: Features(0), ..osd_connect(0, 1) };
    assert_eq!(exchange_connect(&mut s, msg, &[]), Tag::FEATURES);
    drop(s);
    // FEATURES after the dispatcher judged the authorizer? (Ceph checks features
    // first: the dispatchers never see it.)
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    let msg = ConnectMsg { features: Features(0), ..osd_connect(0, 1) };
    assert_eq!(exchange_connect(&mut s, msg, &authorizer("x", 1)), Tag::FEATURES);
    drop(s);
    // BADAUTHORIZER: one the dispatcher rejects, and one that does not decode.
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    let bad = authorizer("x", REJECTED_GLOBAL_ID);
    assert_eq!(exchange_connect(&mut s, osd_connect(0, 1), &bad), Tag::BADAUTHORIZER);
    drop(s);
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    assert_eq!(exchange_connect(&mut s, osd_connect(0, 1), &[0xff; 3]), Tag::BADAUTHORIZER);
    drop(s);
    // The same refusals pipelined on one socket until the acceptor gives up on it.
    let mut s = banner_socket_as(addr, fresh_peer_addr());
    let mut burst = Vec::new();
    for _ in 0..64 {
        bad_connect_bytes(&mut burst, &bad);
    }
    let _ = s.write_all(&burst);
    assert!(read_until_closed(&mut s, WAIT).is_some(), "the acceptor ends a refusal loop");
}

fn bad_connect_bytes(out: &mut Vec<u8>, auth: &[u8]) {
    let msg = ConnectMsg {
        authorizer_len: u32::try_from(auth.len()).expect("small"),
        ..osd_connect(0, 1)
    };
    msg.encode_with_authorizer(auth, out);
}

/// Each msgr2 acceptor refusal, then hang-up.
fn v2_refusals(addr: SocketAddr, server: EntityAddr) {
    // AUTH_BAD_METHOD: a method we do not allow.
    let mut s = v2_banner_socket(addr);
    s.write_all(&client_hello(server)).expect("hello");
    let req =
        AuthRequest { method: 0x999, preferred_modes: vec![ConMode::CRC], payload: Bytes::new() };
    s.write_all(&control(&req)).expect("auth request");
    let (tag, _) = read_frame(&mut s).expect("hello");
    assert_eq!(tag, Tag2::HELLO);
    let (tag, _) = read_frame(&mut s).expect("an answer to the auth request");
    assert_eq!(tag, Tag2::AUTH_BAD_METHOD);
    drop(s);
    // IDENT_MISSING_FEATURES.
    let me = v2_peer_addr(rand::random::<u32>() | 1);
    let mut s = v2_socket_at_ident(server, me, Policy::lossy_client());
    s.write_all(&featureless_ident(server, me)).expect("ident");
    let (tag, _) = read_frame(&mut s).expect("an answer to the ident");
    assert_eq!(tag, Tag2::IDENT_MISSING_FEATURES);
    drop(s);
    // A banner requiring a feature we lack.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let banner = Banner { supported: Msgr2Features(u64::MAX), required: Msgr2Features(1 << 40) };
    s.write_all(&banner.to_bytes()).expect("banner");
    assert!(read_until_closed(&mut s, WAIT).is_some(), "the acceptor drops an incompatible peer");
}

// A lossy server (`stateless_server`, a client's OSD) refusing v1 and msgr2 peers in
// every way its acceptor can: no ms_handle_refused, resets only for judged connections.
#[test]
fn acceptor_refusals_deliver_no_refused_callback() {
    let (m, addr, rx) = server(Policy::stateless_server());
    let v2 = addr_for(ProtocolVersion::V2, m.my_addr());
    v1_refusals(addr);
    v2_refusals(addr, v2);
    wait_for_connection_count(&m, 0, "server, once the refused peers hung up");
    let _s = sentinel(v2);
    let calls = calls_before_sentinel(&rx, 0);
    assert_ceph_callbacks(&calls);
    m.shutdown();
    m.wait();
}

// The same against a lossless server (`stateful_server`), where connections register
// their sessions: a v1 peer authenticated as another entity than the session under its
// address is refused (Decision::Refuse) too.
#[test]
fn lossless_acceptor_refusals_deliver_no_refused_callback() {
    let (m, addr, rx) = server(Policy::stateful_server());
    let v2 = addr_for(ProtocolVersion::V2, m.my_addr());
    v1_refusals(addr);
    v2_refusals(addr, v2);
    // A session of client.x, then a connect from its address authenticated as client.y.
    let me = fresh_peer_addr();
    let mut first = banner_socket_as(addr, me);
    let tag = exchange_connect(&mut first, osd_connect(0, 1), &authorizer("x", 1));
    assert!(matches!(tag, Tag::READY | Tag::SEQ), "the session opens: {tag:?}");
    let mut second = banner_socket_as(addr, me);
    let mut msg = osd_connect(1, 2);
    msg.authorizer_protocol = AUTH_NONE;
    let auth = authorizer("y", 2);
    let m2 = ConnectMsg { authorizer_len: u32::try_from(auth.len()).expect("small"), ..msg };
    let mut out = Vec::new();
    m2.encode_with_authorizer(&auth, &mut out);
    second.write_all(&out).expect("connect");
    assert!(read_until_closed(&mut second, WAIT).is_some(), "the foreign claim is refused");
    let refused = &m.counters_json()["msgr_protocol"]["identity_refused"];
    assert_eq!(refused.as_u64(), Some(1), "refused as another entity's claim");
    drop((first, second));
    wait_for_connection_count(&m, 1, "the session, in standby");
    let _s = sentinel(v2);
    let calls = calls_before_sentinel(&rx, 1);
    assert_ceph_callbacks(&calls);
    m.shutdown();
    m.wait();
}

/// Holds the dispatch thread in the first `ms_handle_reset` until released; judges
/// authorizers itself, rejecting every one (so each refused connection owes a reset).
struct StallOnReset {
    blocked: Sender<()>,
    release: Receiver<()>,
    first: AtomicBool,
}

impl Dispatcher<Connection> for StallOnReset {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, _conn: &Connection) -> bool {
        if !self.first.swap(true, Ordering::SeqCst) {
            let _ = self.blocked.send(());
            let _ = self.release.recv_timeout(WAIT);
        }
        true
    }
    fn ms_verify_authorizer(
        &self,
        _conn: &Connection,
        _peer_type: u8,
        _protocol: u32,
        _authorizer: &[u8],
    ) -> AuthVerdict {
        AuthVerdict::Reject
    }
}

// Each connection refused after a dispatcher judged it queues its reset: a peer that
// connects, is refused and hangs up over and over while the dispatch thread is held up
// must not queue them without bound. The listener stops at `max_queued_events`.
#[test]
fn refused_connection_floods_stop_at_the_event_bound() {
    const MAX_EVENTS: usize = 32;
    const CYCLES: usize = 400;
    let config = MessengerConfig { max_queued_events: MAX_EVENTS, ..test_config(2) };
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 4344, config).expect("messenger");
    m.set_default_policy(Policy::stateless_server());
    let addr = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (blocked_tx, blocked_rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    let stall =
        StallOnReset { blocked: blocked_tx, release: release_rx, first: AtomicBool::new(false) };
    m.add_dispatcher_head(Arc::new(stall)).expect("dispatcher");
    let queued = |m: &Messenger| m.counters_json()["dispatch_queue"]["events"].as_u64();
    let mut stalled = None;
    for cycle in 0..CYCLES {
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.write_all(BANNER).expect("banner");
        // Accepted when the acceptor's banner comes; not while the listener pauses.
        let give_up = Instant::now() + WAIT;
        let mut block = [0u8; ACCEPTOR_BLOCK_LEN];
        let mut got = 0;
        let accepted = loop {
            sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            match sock.read(&mut block[got..]) {
                Ok(0) => panic!("connection {cycle} closed after {got} bytes of the banner"),
                Ok(n) => {
                    got += n;
                    if got == block.len() {
                        break true;
                    }
                    continue;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("banner: {e}"),
            }
            if worker_counter(&m, "msgr_accept_paused_for_events") > 0 || Instant::now() >= give_up
            {
                break false;
            }
        };
        if !accepted {
            stalled = Some(cycle);
            break;
        }
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        sock.write_all(&fresh_peer_addr().encode_legacy()).expect("address");
        let auth = authorizer("x", 1);
        assert_eq!(exchange_connect(&mut sock, osd_connect(0, 1), &auth), Tag::BADAUTHORIZER);
        drop(sock);
        if cycle == 0 {
            blocked_rx.recv_timeout(WAIT).expect("the dispatch thread is held up");
        }
        wait_for_connection_count(&m, 0, "server");
    }
    let held = queued(&m).expect("events");
    let Some(cycle) = stalled else {
        panic!("{CYCLES} refused connections accepted, {held} events queued");
    };
    assert!(held <= MAX_EVENTS as u64 + 2, "{held} events queued, bound {MAX_EVENTS}");
    assert!(cycle >= MAX_EVENTS / 2, "stalled at connection {cycle}");
    release_tx.send(()).expect("release");
    m.shutdown();
    m.wait();
}
