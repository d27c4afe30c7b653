//! A connection the dispatchers were shown in `ms_verify_authorizer` (msgr v1, auth
//! none, an authorizer sent) is a connection they may keep state for, as Ceph's daemons
//! keep a session from `ms_handle_authentication`: its end must reach them, whether it
//! ever opens or not. Ceph's ProtocolV1 queues a reset for a connection that faults in
//! the half-accept states (`fault`: "with nothing to send and in the half accept state
//! just closed", `stop(); dispatch_queue->queue_reset(connection)`), and for the new
//! connection a replace dumps for the old one (`replace`: "queue a reset on the new
//! connection, which we're dumping for the old"). Without it a peer that connects with
//! an authorizer and hangs up grows such a dispatcher's state by one entry per connect.
//!
//! A socket no dispatcher ever saw (a bad banner) stays silent.

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use messenger::{AuthVerdict, Connection, Dispatched, Dispatcher, Messenger, Policy};
use protocol::auth::{AuthNoneAuthorizer, AuthorizerClient};
use protocol::types::{AuthEntityName, EntityName, EntityType, Features, AUTH_NONE};
use protocol::wire::{ConnectMsg, Tag};
use protocol::Message;
use tests::hostile::{banner_socket_as, exchange_connect, fresh_peer_addr, good_protocol_version};
use tests::loopback::{test_config, wait_for_connection_count, WAIT};

/// Hostile connects per case.
const N: usize = 8;

/// Records the connections `ms_verify_authorizer` is shown and those reported reset.
struct Tracker {
    verified: Sender<u64>,
    resets: Sender<u64>,
    accept: bool,
}

impl Dispatcher<Connection> for Tracker {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }

    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.resets.send(conn.id());
        true
    }

    fn ms_verify_authorizer(
        &self,
        conn: &Connection,
        _peer_type: u8,
        _protocol: u32,
        _authorizer: &[u8],
    ) -> AuthVerdict {
        let _ = self.verified.send(conn.id());
        if self.accept {
            AuthVerdict::Accept { reply: Vec::new() }
        } else {
            AuthVerdict::Reject
        }
    }
}

/// An OSD messenger (auth none, v1) whose only dispatcher is a [`Tracker`].
fn server(accept: bool, policy: Policy) -> (Messenger, SocketAddr, Receiver<u64>, Receiver<u64>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 4242, test_config(2))
        .expect("messenger");
    m.set_default_policy(policy);
    let bound = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (vtx, verified) = crossbeam_channel::unbounded();
    let (rtx, resets) = crossbeam_channel::unbounded();
    m.add_dispatcher_head(Arc::new(Tracker { verified: vtx, resets: rtx, accept }))
        .expect("dispatcher");
    (m, bound, verified, resets)
}

/// A client's connect to an OSD carrying a well-formed auth-none authorizer, with the
/// given session numbers and flags; returns the reply's tag.
fn connect_with_authorizer(sock: &mut TcpStream, connect_seq: u32, global_seq: u32) -> Tag {
    let authorizer = AuthNoneAuthorizer::new(&AuthEntityName::new(EntityType::CLIENT, "x"), 7);
    let bytes = authorizer.bytes();
    let msg = ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::CLIENT,
        global_seq,
        connect_seq,
        protocol_version: good_protocol_version(),
        authorizer_protocol: AUTH_NONE,
        authorizer_len: 0,
        flags: 0,
    };
    exchange_connect(sock, msg, &bytes)
}

/// A socket that sends a bad banner and is closed: no dispatcher hears of it.
fn bad_banner(server: SocketAddr) {
    let mut sock = TcpStream::connect(server).expect("connect");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    sock.write_all(b"not a ceph banner at all").expect("write");
    let mut b = [0u8; 256];
    // Read until the server closes it (it writes its banner first).
    while matches!(tests::read_some(&mut sock, &mut b), Ok(n) if n > 0) {}
}

/// Every connection shown to `ms_verify_authorizer` is reported reset once its socket
/// is gone, and no other connection is.
fn assert_each_verified_reset(m: &Messenger, verified: &Receiver<u64>, resets: &Receiver<u64>) {
    wait_for_connection_count(m, 0, "server");
    let seen: HashSet<u64> = verified.try_iter().collect();
    assert_eq!(seen.len(), N, "each hostile connect was shown to ms_verify_authorizer");
    let mut ended = HashSet::new();
    while ended.len() < seen.len() {
        match resets.recv_timeout(WAIT) {
            Ok(id) => {
                assert!(seen.contains(&id), "reset of connection {id} no dispatcher saw");
                assert!(ended.insert(id), "connection {id} reported reset twice");
            }
            Err(_) => panic!(
                "{} of {} connections shown to ms_verify_authorizer were never reported ended",
                seen.len() - ended.len(),
                seen.len()
            ),
        }
    }
    assert!(resets.try_recv().is_err(), "a reset no dispatcher could expect");
    m.shutdown();
    m.wait();
}

// A peer that sends a well-formed authorizer the dispatchers reject (BADAUTHORIZER) and
// hangs up: the connection they were shown must be reported ended.
#[test]
fn rejected_authorizer_connection_is_reported_ended() {
    let (m, addr, verified, resets) = server(false, Policy::stateless_server());
    bad_banner(addr);
    for _ in 0..N {
        let mut sock = banner_socket_as(addr, fresh_peer_addr());
        assert_eq!(connect_with_authorizer(&mut sock, 0, 1), Tag::BADAUTHORIZER);
    }
    bad_banner(addr);
    assert_each_verified_reset(&m, &verified, &resets);
}

// A peer whose authorizer the dispatchers accept, but whose connect is answered
// RESETSESSION (a reconnect of a session we do not have), and which hangs up: the
// connection never opens, and its end must still be reported.
#[test]
fn accepted_authorizer_connection_that_never_opens_is_reported_ended() {
    let (m, addr, verified, resets) = server(true, Policy::stateful_server());
    for _ in 0..N {
        let mut sock = banner_socket_as(addr, fresh_peer_addr());
        assert_eq!(connect_with_authorizer(&mut sock, 1, 1), Tag::RESETSESSION);
    }
    assert_each_verified_reset(&m, &verified, &resets);
}

// A lossless session replaced by a new socket whose authorizer the dispatchers saw:
// the new connection is dumped for the old one (the session moves into the existing
// handle), and that new connection is reported ended, as Ceph's replace does.
#[test]
fn connection_dumped_by_a_replace_is_reported_ended() {
    let (m, addr, verified, resets) = server(true, Policy::stateful_server());
    for _ in 0..N {
        let me = fresh_peer_addr();
        // The session, opened with an authorizer (shown to the dispatchers: one of N).
        let mut first = banner_socket_as(addr, me);
        let tag = connect_with_authorizer(&mut first, 0, 1);
        assert!(matches!(tag, Tag::READY | Tag::SEQ), "the session opens: {tag:?}");
        // The same peer again on a new socket, one connect_seq on: a replace.
        let mut second = banner_socket_as(addr, me);
        let mut tag = connect_with_authorizer(&mut second, 1, 2);
        if tag == Tag::RETRY_SESSION {
            // The open session is at connect_seq 1: one past it (the same connection,
            // already shown to the dispatchers).
            tag = connect_with_authorizer(&mut second, 2, 2);
        }
        assert!(matches!(tag, Tag::READY | Tag::SEQ), "a reconnect replaces the session: {tag:?}");
        drop((first, second));
    }
    // Each session stays (a lossless server keeps it in standby): mark them down so
    // their resets come too, then both connections per peer were shown and ended.
    wait_for_connection_count(&m, N, "the sessions, once each dumped connection ended");
    m.mark_down_all();
    wait_for_connection_count(&m, 0, "server");
    let seen: HashSet<u64> = verified.try_iter().collect();
    assert_eq!(seen.len(), 2 * N, "each connect was shown to ms_verify_authorizer");
    let mut ended = HashSet::new();
    while ended.len() < seen.len() {
        let Ok(id) = resets.recv_timeout(WAIT) else {
            panic!(
                "{} of {} connections shown to ms_verify_authorizer were never reported ended",
                seen.len() - ended.len(),
                seen.len()
            );
        };
        assert!(seen.contains(&id), "reset of connection {id} no dispatcher saw");
        assert!(ended.insert(id), "connection {id} reported reset twice");
    }
    m.shutdown();
    m.wait();
}
