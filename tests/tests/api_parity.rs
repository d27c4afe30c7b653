//! The parts of Ceph's `Messenger`, `Connection` and `Dispatcher` API a daemon ported
//! from C++ expects: `get_policy`/`get_default_policy`, `client_bind`
//! (`ms_bind_before_connect`), `client_reset`, a connection's `get_peer_addrs`,
//! `get_peer_id`, `get_peer_global_id`, `has_feature(s)`, and the dispatchers'
//! `ms_handle_authentication`. Each test checks what the call does on loopback
//! messengers, over msgr v1 and msgr2 where the protocol matters.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    Authentication, Connection, Dispatched, Dispatcher, Messenger, Policy, ProtocolVersion,
};
use protocol::types::{EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::Message;
use tests::loopback::*;

const PROTOCOLS: [ProtocolVersion; 2] = [ProtocolVersion::V1, ProtocolVersion::V2];

/// Ceph's `client_reset` (and `rebind`) nonce step.
const NONCE_STEP: u32 = 1_000_000;

/// The address to dial `server` at over `proto`.
fn dial_addr(server: &Messenger, proto: ProtocolVersion) -> EntityAddr {
    addr_for(proto, server.my_addr())
}

/// Sends one message on `conn` and waits for it at the server (`rx`); returns the
/// server's side of the connection.
fn deliver(conn: &Connection, rx: &Receiver<Seen>, tid: u64) -> Connection {
    conn.send_message(test_message(0x4242, tid, Bytes::from_static(b"api"))).expect("send");
    let (on, msg) = next_message(rx);
    assert_eq!(msg.tid(), tid);
    on
}

// Ceph's `get_policy(type)` gives the type's policy, else the default one;
// `get_default_policy` the default (ours is lossless_peer until set, see its docs).
#[test]
fn the_policy_getters_give_what_the_setters_set() {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("m");
    assert_eq!(m.default_policy(), Policy::lossless_peer());
    assert_eq!(m.policy(EntityType::MON), Policy::lossless_peer());
    m.set_default_policy(Policy::lossy_client());
    assert_eq!(m.default_policy(), Policy::lossy_client());
    let osd = Policy::stateful_server().with_features(Features(0), Features::MSG_AUTH);
    m.set_policy(EntityType::OSD, osd);
    assert_eq!(m.policy(EntityType::OSD), osd);
    assert_eq!(m.policy(EntityType::MON), Policy::lossy_client(), "the default for others");
    // A later default leaves the type's own policy alone.
    m.set_default_policy(Policy::stateless_server());
    assert_eq!(m.policy(EntityType::OSD), osd);
    assert_eq!(m.policy(EntityType::CLIENT), Policy::stateless_server());
    m.shutdown();
}

// Ceph's `client_bind` with `ms_bind_before_connect`: every outgoing socket is bound to
// the given IP (port 0) before it connects, so the peer sees the connection come from
// it. 127.0.0.2 is a local address on Linux's loopback, and the kernel would otherwise
// pick 127.0.0.1 to reach 127.0.0.1.
#[test]
fn client_bind_makes_the_peer_see_our_connections_come_from_that_ip() {
    let bound_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for proto in PROTOCOLS {
        let (server, _, srx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
        let c = Messenger::new(EntityName::new(EntityType::CLIENT, 9), 9, test_config(1))
            .expect("client");
        c.client_bind(SocketAddr::new(bound_ip, 4444)).expect("client_bind before start");
        let (c, _crx) = start_recorded(c, Policy::lossy_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let theirs = deliver(&conn, &srx, 1);
        let seen = theirs.peer_socket_addr().expect("the server's peer socket");
        assert_eq!(seen.ip(), bound_ip, "{proto:?}: the server sees the bound IP");
        assert_ne!(seen.port(), 4444, "{proto:?}: the port is the kernel's, not the one given");
        assert_eq!(conn.peer_socket_addr().map(|a| a.ip()), server.my_addr().addr.map(|a| a.ip()));
        // The peer tells us how it sees us: our learned IP is the bound one.
        wait_until(
            || c.my_addr().addr.map(|a| a.ip()) == Some(bound_ip),
            || format!("{proto:?}: learned {:?}", c.my_addrs()),
        );
        // Too late once started (Ceph's returns -1).
        let late = c.client_bind(SocketAddr::new(bound_ip, 0)).expect_err("after start");
        assert_eq!(late.kind(), std::io::ErrorKind::AlreadyExists);
        c.shutdown();
        server.shutdown();
    }
}

// Not for a bound messenger: its dials are not bound (the call fails and changes nothing).
#[test]
fn client_bind_is_refused_on_a_bound_messenger() {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(1)).expect("m");
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let e = m.client_bind(SocketAddr::from(([127, 0, 0, 2], 0))).expect_err("bound");
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    m.shutdown();
}

// Ceph's `client_reset`: every session is marked down (each reported with
// ms_handle_reset) and the nonce moves on by 1,000,000, so the peer takes the next
// connection for a new entity (its accepted connection names the new nonce).
#[test]
fn client_reset_ends_every_session_and_takes_a_new_nonce() {
    for proto in PROTOCOLS {
        let (server, _, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
        let (c, crx) = client(EntityType::CLIENT, 21, Policy::lossless_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let theirs = deliver(&conn, &srx, 1);
        assert_eq!(theirs.peer_addr().map(|a| a.nonce), Some(21), "{proto:?}");
        let nonce = c.client_reset().expect("client_reset");
        assert_eq!(nonce, 21 + NONCE_STEP, "{proto:?}");
        wait_for_reset(&crx, &conn);
        assert!(!conn.is_connected(), "{proto:?}: the old session is down");
        assert!(c.my_addrs().addrs.iter().all(|a| a.nonce == nonce), "{:?}", c.my_addrs());
        assert_eq!(c.get_loopback_connection().peer_addr(), Some(c.my_addr()));
        // The next connection is a new one, from the new nonce.
        let again = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        assert_ne!(again, conn, "{proto:?}: a new connection");
        let theirs = deliver(&again, &srx, 2);
        assert_eq!(theirs.peer_addr().map(|a| a.nonce), Some(nonce), "{proto:?}");
        c.shutdown();
        server.shutdown();
    }
}

/// A fast dispatcher counting `ms_handle_fast_connect`s of the loopback connection made
/// once `late` is set.
#[derive(Default)]
struct LateLoopbackConnects {
    late: std::sync::atomic::AtomicBool,
    connects: AtomicUsize,
}

impl Dispatcher<Connection> for LateLoopbackConnects {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        if conn.is_loopback() && self.late.load(Ordering::SeqCst) {
            self.connects.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// A shutdown that begins while `client_reset` marks the sessions down: the reset tells
// no dispatcher of the loopback connection's new address after that (as `rebind`
// installs no listener then). It did, while the shutdown was still ending the sessions.
#[test]
fn a_shutdown_racing_client_reset_hears_no_fast_connect_after_it_began() {
    let (s1, _, s1rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let (s2, _, s2rx) = server(EntityType::OSD, 2, Policy::stateless_server(), false);
    let (c, _crx) = client(EntityType::CLIENT, 31, Policy::lossless_client());
    let c = Arc::new(c);
    let late = Arc::new(LateLoopbackConnects::default());
    c.add_dispatcher_head(late.clone()).expect("fast dispatcher");
    let a = c.connect_to(EntityType::OSD, dial_addr(&s1, ProtocolVersion::V2));
    let b = c.connect_to(EntityType::OSD, dial_addr(&s2, ProtocolVersion::V2));
    deliver(&a, &s1rx, 1);
    deliver(&b, &s2rx, 2);
    // Every end of a session says so. The first (on client_reset's thread: it ends them
    // all) waits until the shutdown began; the second, the shutdown's end of the other
    // session on its thread, holds the shutdown there (the loopback connection still
    // open) until client_reset returned.
    let (ends_tx, ends) = crossbeam_channel::unbounded::<()>();
    let (go_reset, reset_goes) = crossbeam_channel::bounded::<()>(1);
    let (go_shutdown, shutdown_goes) = crossbeam_channel::bounded::<()>(1);
    let calls = Arc::new(AtomicUsize::new(0));
    for conn in [&a, &b] {
        let (calls, ends_tx) = (calls.clone(), ends_tx.clone());
        let (reset_goes, shutdown_goes) = (reset_goes.clone(), shutdown_goes.clone());
        conn.inject_in_reset(move || {
            let _ = ends_tx.send(());
            let wait_for = match calls.fetch_add(1, Ordering::SeqCst) {
                0 => &reset_goes,
                1 => &shutdown_goes,
                _ => return,
            };
            let _ = wait_for.recv_timeout(WAIT);
        });
    }
    let resetter = {
        let c = c.clone();
        std::thread::spawn(move || c.client_reset())
    };
    ends.recv_timeout(WAIT).expect("client_reset ends a session");
    let stopper = {
        let c = c.clone();
        std::thread::spawn(move || c.shutdown())
    };
    ends.recv_timeout(WAIT).expect("the shutdown ends the other session");
    late.late.store(true, Ordering::SeqCst);
    go_reset.send(()).expect("release client_reset");
    let reset = resetter.join().expect("client_reset thread");
    go_shutdown.send(()).expect("release the shutdown");
    stopper.join().expect("shutdown thread");
    assert_eq!(reset.expect("client_reset"), 31 + NONCE_STEP);
    assert_eq!(late.connects.load(Ordering::SeqCst), 0, "a fast connect after the shutdown began");
    s1.shutdown();
    s2.shutdown();
}

/// Calls `announce` (a `client_reset`, `rebind` or `set_addr_unknowns` of `m`) on a
/// thread of its own and, while the `ms_handle_fast_connect` it makes for the loopback
/// connection is held, shuts `m` down on another: the shutdown returns only after the
/// hook did.
fn shutdown_waits_for_the_loopback_announcement(
    m: Messenger,
    announce: impl FnOnce(&Messenger) -> std::io::Result<()> + Send + 'static,
) {
    let m = Arc::new(m);
    let held = held_loopback_connect();
    // Told of the loopback connection here (on this thread, before it joins): armed
    // after, for the announcement only.
    m.add_dispatcher_head(held.hook.clone()).expect("fast dispatcher");
    held.hook.arm();
    let announcer = {
        let m = m.clone();
        std::thread::spawn(move || announce(&m))
    };
    shutdown_waits_for_the_held_hook(&m, &held);
    announcer.join().expect("announcer thread").expect("the announcing call");
}

// A shutdown that begins while `client_reset` is telling the fast dispatchers of the
// loopback connection's new address waits for that call: no dispatcher hook runs after
// `shutdown` returned (nor after `wait`). It returned meanwhile.
#[test]
fn a_shutdown_waits_for_client_reset_s_fast_connect_under_way() {
    let (c, _crx) = client(EntityType::CLIENT, 41, Policy::lossless_client());
    shutdown_waits_for_the_loopback_announcement(c, |m| m.client_reset().map(drop));
}

// The same for `rebind`'s `ms_handle_fast_connect` of the loopback connection.
#[test]
fn a_shutdown_waits_for_rebind_s_fast_connect_under_way() {
    let (s, _, _srx) = server(EntityType::OSD, 42, Policy::stateless_server(), false);
    shutdown_waits_for_the_loopback_announcement(s, |m| {
        m.rebind(&std::collections::BTreeSet::new()).map(drop)
    });
}

// The same for `set_addr_unknowns`'s (a messenger bound to a wildcard, told its IP).
#[test]
fn a_shutdown_waits_for_set_addr_unknowns_s_fast_connect_under_way() {
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let (s, _, _srx) =
        server_on(EntityType::OSD, 43, Policy::stateless_server(), false, any4, test_config(2));
    let given = EntityAddrVec::single(EntityAddr::legacy("10.1.2.3:3300".parse().expect("a"), 0));
    shutdown_waits_for_the_loopback_announcement(s, move |m| {
        if m.set_addr_unknowns(&given) {
            Ok(())
        } else {
            Err(std::io::Error::other("set_addr_unknowns set nothing"))
        }
    });
}

// The same for the `ms_handle_fast_connect` of the loopback connection a fast dispatcher
// added to a started messenger hears as it is added (on the adding thread).
#[test]
fn a_shutdown_waits_for_add_dispatcher_s_fast_connect_under_way() {
    let (c, _crx) = client(EntityType::CLIENT, 44, Policy::lossless_client());
    let m = Arc::new(c);
    let held = held_loopback_connect();
    held.hook.arm();
    let adder = {
        let (m, hook) = (m.clone(), held.hook.clone());
        std::thread::spawn(move || m.add_dispatcher_tail(hook))
    };
    shutdown_waits_for_the_held_hook(&m, &held);
    // Added after the shutdown began (the hook ran before it joined): refused or not,
    // the add returns.
    let _ = adder.join().expect("adder thread");
}

// A shutdown on one thread waits for `client_reset`'s `ms_handle_fast_connect` of the
// loopback connection on another, and that hook shuts the messenger down too: its
// shutdown returns without waiting for the first (which waits for it), and both return.
#[test]
fn a_loopback_fast_connect_that_shuts_down_while_a_shutdown_waits_for_it_returns() {
    let (c, _crx) = client(EntityType::CLIENT, 45, Policy::lossless_client());
    let m = Arc::new(c);
    let held = held_loopback_connect();
    held.hook.then_shut_down(&m);
    m.add_dispatcher_head(held.hook.clone()).expect("fast dispatcher");
    held.hook.arm();
    let resetter = {
        let m = m.clone();
        std::thread::spawn(move || m.client_reset())
    };
    held.entered.recv_timeout(WAIT).expect("client_reset's announcement reaches the hook");
    let (returned_tx, returned) = crossbeam_channel::bounded(1);
    let stopper = {
        let m = m.clone();
        std::thread::spawn(move || {
            m.shutdown();
            let _ = returned_tx.send(());
        })
    };
    // The shutdown began once `client_reset` says so (until then the reset under way
    // refuses it with WouldBlock): the hook's shutdown comes second.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match m.client_reset() {
            Err(e) if e.kind() == std::io::ErrorKind::Other => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("client_reset during the held reset: {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "the shutdown never began");
        std::thread::yield_now();
    }
    held.release.send(()).expect("release the hook");
    held.returned.recv_timeout(WAIT).expect("the hook's shutdown returned");
    returned.recv_timeout(WAIT).expect("the first shutdown returned");
    stopper.join().expect("shutdown thread");
    resetter.join().expect("client_reset thread").expect("client_reset");
}

// Two threads tell fast dispatchers of the loopback connection at once (a
// `set_addr_unknowns`, a dispatcher being added), and each hook shuts the messenger
// down: neither shutdown waits for the other's hook (each would wait for the other),
// and both return.
#[test]
fn two_loopback_fast_connects_that_shut_down_at_once_both_return() {
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let (s, _, _srx) =
        server_on(EntityType::OSD, 46, Policy::stateless_server(), false, any4, test_config(2));
    let m = Arc::new(s);
    let [first, second] = [(), ()].map(|()| {
        let held = held_loopback_connect();
        held.hook.then_shut_down(&m);
        held
    });
    m.add_dispatcher_head(first.hook.clone()).expect("fast dispatcher");
    first.hook.arm();
    let setter = {
        let m = m.clone();
        let given =
            EntityAddrVec::single(EntityAddr::legacy("10.1.2.3:3300".parse().expect("a"), 0));
        std::thread::spawn(move || m.set_addr_unknowns(&given))
    };
    first.entered.recv_timeout(WAIT).expect("set_addr_unknowns' announcement reaches the hook");
    second.hook.arm();
    let adder = {
        let (m, hook) = (m.clone(), second.hook.clone());
        std::thread::spawn(move || m.add_dispatcher_tail(hook))
    };
    second.entered.recv_timeout(WAIT).expect("the add's announcement reaches the hook");
    first.release.send(()).expect("release the first hook");
    second.release.send(()).expect("release the second hook");
    first.returned.recv_timeout(WAIT).expect("the first hook's shutdown returned");
    second.returned.recv_timeout(WAIT).expect("the second hook's shutdown returned");
    assert!(setter.join().expect("set_addr_unknowns thread"), "set");
    let _ = adder.join().expect("adder thread");
    m.wait();
}

// Ceph's `get_peer_addrs`, `get_peer_id`, `get_peer_global_id`, `has_feature(s)`: over
// msgr2 the peer's ident names its addresses and number (a server's SERVER_IDENT: its
// msgr2 and v1 addresses; a client's CLIENT_IDENT: its gid); over v1 the one address
// and no number. The global id is the accepted peer's authenticated one.
#[test]
fn a_connection_shows_the_peers_addrvec_id_global_id_and_features() {
    for proto in PROTOCOLS {
        let (server, _, srx) = server(EntityType::OSD, 3, Policy::stateless_server(), false);
        let (c, _crx) = client(EntityType::CLIENT, 77, Policy::lossy_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let theirs = deliver(&conn, &srx, 1);
        match proto {
            ProtocolVersion::V2 => {
                assert_eq!(conn.peer_addrs(), server.my_addrs(), "the server's ident");
                assert_eq!(conn.peer_id(), Some(0), "osd.0's number");
                let client_addrs = theirs.peer_addrs();
                assert!(!client_addrs.addrs.is_empty());
                assert!(client_addrs.addrs.iter().all(|a| a.nonce == 77), "{client_addrs:?}");
                assert_eq!(theirs.peer_id(), Some(77), "the client's gid");
            }
            ProtocolVersion::V1 => {
                assert_eq!(conn.peer_addrs().addrs, vec![conn.peer_addr().expect("addr")]);
                assert_eq!(conn.peer_id(), None, "v1 names no entity");
                assert_eq!(theirs.peer_addrs().addrs, vec![theirs.peer_addr().expect("addr")]);
                assert_eq!(theirs.peer_id(), None);
            }
        }
        // The accepted side knows who the peer authenticated as (auth none: its claim).
        let auth = theirs.peer_auth().expect("the accepted peer's auth");
        assert_eq!(theirs.peer_global_id(), Some(auth.global_id), "{proto:?}");
        assert_eq!(conn.peer_global_id(), None, "{proto:?}: a dialled session learns none");
        let f = conn.features();
        assert!(f.contains(Features::RECONNECT_SEQ), "{proto:?}: {f:?}");
        assert!(conn.has_feature(Features::RECONNECT_SEQ));
        assert!(conn.has_features(f));
        let reserved = Features(1 << 63);
        assert!(!f.contains(reserved));
        assert!(!conn.has_feature(reserved));
        assert!(!conn.has_features(Features(f.0 | reserved.0)), "every bit, not any");
        assert!(conn.has_feature(Features(f.0 | reserved.0)), "any bit");
        c.shutdown();
        server.shutdown();
    }
}

// Ceph's local connection's `peer_addrs` is `my_addrs`, the whole vector.
#[test]
fn the_loopback_connection_shows_our_addrvec() {
    let (server, _, _rx) = server(EntityType::OSD, 5, Policy::stateless_server(), false);
    let lo = server.get_loopback_connection();
    assert_eq!(lo.peer_addrs(), server.my_addrs());
    assert_eq!(lo.peer_addrs().addrs.len(), 2, "msgr2 and v1");
    server.shutdown();
}

/// What an `ms_handle_authentication` call saw of the connection: the peer's type,
/// whether who it authenticated as was shown, and whether the connection was open.
type AuthSeen = (Option<EntityType>, bool, bool);

/// A dispatcher answering `ms_handle_authentication` with `answer`, counting the calls
/// and sending what each call saw of the connection to `seen`.
struct Authenticator {
    answer: Authentication,
    calls: AtomicUsize,
    seen: Sender<AuthSeen>,
    /// Every handle it was asked about, in order.
    handles: parking_lot::Mutex<Vec<Connection>>,
    /// Every handle whose `ms_handle_reset` it heard (it passes each on).
    resets: parking_lot::Mutex<Vec<Connection>>,
}

impl Authenticator {
    fn new(answer: Authentication) -> (Arc<Authenticator>, Receiver<AuthSeen>) {
        let (seen, rx) = crossbeam_channel::unbounded();
        let (handles, resets) = Default::default();
        let calls = AtomicUsize::new(0);
        (Arc::new(Authenticator { answer, calls, seen, handles, resets }), rx)
    }
}

impl Dispatcher<Connection> for Authenticator {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_handle_authentication(&self, conn: &Connection) -> Authentication {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().push(conn.clone());
        let _ = self.seen.send((conn.peer_type(), conn.peer_auth().is_some(), conn.is_connected()));
        self.answer
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        self.resets.lock().push(conn.clone());
        false
    }
}

/// A started server on 127.0.0.1 whose dispatchers are `chain`, then a recorder.
fn authenticating_server(chain: &[Arc<Authenticator>]) -> (Messenger, Receiver<Seen>) {
    authenticating_server_with(chain, Policy::stateless_server())
}

/// [`authenticating_server`] with `policy` for every peer.
fn authenticating_server_with(
    chain: &[Arc<Authenticator>],
    policy: Policy,
) -> (Messenger, Receiver<Seen>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(2)).expect("m");
    m.set_default_policy(policy);
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    for d in chain {
        m.add_dispatcher_tail(d.clone()).expect("dispatcher");
    }
    let (rec, rx) = Recorder::new(false);
    m.add_dispatcher_tail(rec).expect("recorder");
    (m, rx)
}

// A refusal from `ms_handle_authentication` (Ceph's negative return) closes the
// connection before it opens, and the server's dispatchers never see ms_handle_accept
// nor the message sent. The dialler meets a fault in its handshake: over v1 a lossy one
// ends there (ms_handle_reset); over msgr2 it dials again after its backoff (as Ceph's
// ProtocolV2 does for a fault while connecting), and is asked about, and refused, again.
#[test]
fn a_refused_authentication_closes_the_connection_before_it_opens() {
    for proto in PROTOCOLS {
        let (refuser, seen) = Authenticator::new(Authentication::Refuse);
        let (server, srx) = authenticating_server(std::slice::from_ref(&refuser));
        let (c, crx) = client(EntityType::CLIENT, 31, Policy::lossy_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        conn.send_message(test_message(0x4242, 1, Bytes::from_static(b"no"))).expect("send");
        match proto {
            ProtocolVersion::V1 => wait_for_reset(&crx, &conn),
            ProtocolVersion::V2 => wait_until(
                || refuser.calls.load(Ordering::SeqCst) >= 2,
                || format!("{proto:?}: redialled and refused again"),
            ),
        }
        let (ty, authenticated, open) =
            seen.recv_timeout(WAIT).expect("ms_handle_authentication was called");
        assert_eq!(ty, Some(EntityType::CLIENT), "{proto:?}: the peer's type is known");
        assert!(authenticated, "{proto:?}: who it proved to be is shown");
        assert!(!open, "{proto:?}: asked before the connection opens");
        assert!(!conn.is_connected());
        // Up to a barrier: a message the server sends itself (its loopback connection)
        // comes after every connection event queued before it (the dispatch thread takes
        // events first), so an accept of the refused connection, queued at its decision
        // before the refusal was seen above, would come before it, and so would any
        // message of it (queued only after its accept).
        let barrier = test_message(0x4242, 99, Bytes::from_static(b"barrier"));
        server.get_loopback_connection().send_message(barrier).expect("loopback send");
        loop {
            match srx.recv_timeout(WAIT).expect("the loopback barrier") {
                Seen::Message(on, msg) if on.is_loopback() && msg.tid() == 99 => break,
                ev => assert!(
                    !matches!(ev, Seen::Accept(_) | Seen::Message(..)),
                    "{proto:?}: the server's dispatchers saw {ev:?}"
                ),
            }
        }
        if proto == ProtocolVersion::V1 {
            wait_for_connection_count(&server, 0, "the refused connection is gone");
        }
        assert!(refuser.calls.load(Ordering::SeqCst) >= 1);
        c.shutdown();
        server.shutdown();
    }
}

// The chain is asked head → tail until one answers: a `Pass` hands the peer on, an
// `Accept` lets it in and ends the walk (the dispatcher behind it is not asked), and
// the session opens as usual, after the question.
#[test]
fn an_accepted_authentication_ends_the_walk_and_the_session_opens() {
    for proto in PROTOCOLS {
        let (pass, _) = Authenticator::new(Authentication::Pass);
        let (accept, seen) = Authenticator::new(Authentication::Accept);
        let (refuse, _) = Authenticator::new(Authentication::Refuse);
        let (server, srx) = authenticating_server(&[pass.clone(), accept.clone(), refuse.clone()]);
        let (c, _crx) = client(EntityType::CLIENT, 41, Policy::lossy_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let theirs = deliver(&conn, &srx, 1);
        assert!(theirs.is_connected());
        let (ty, authenticated, open) = seen.try_recv().expect("asked before the message");
        assert_eq!(ty, Some(EntityType::CLIENT));
        assert!(authenticated && !open, "{proto:?}");
        assert_eq!(pass.calls.load(Ordering::SeqCst), 1, "{proto:?}: asked first");
        assert_eq!(accept.calls.load(Ordering::SeqCst), 1, "{proto:?}");
        assert_eq!(refuse.calls.load(Ordering::SeqCst), 0, "{proto:?}: behind an Accept");
        c.shutdown();
        server.shutdown();
    }
}

// A dispatcher that answered `Accept` may keep state for the handle it was shown (an
// OSD's session in `set_priv`): a handle that never opens is reported ended to it, as
// one judged in `ms_verify_authorizer` (Ceph's ProtocolV1 resets the connection a
// replace dumps). A lossless peer's reconnect is such a handle: authenticated, then
// handed over to the session it resumes, whose own handle stays open and unreported.
#[test]
fn a_handle_accepted_in_authentication_that_never_opens_is_reported_reset() {
    for proto in PROTOCOLS {
        let (accept, _) = Authenticator::new(Authentication::Accept);
        let (server, srx) =
            authenticating_server_with(std::slice::from_ref(&accept), Policy::stateful_server());
        let (c, _crx) = client(EntityType::CLIENT, 51, Policy::lossless_client());
        let conn = c.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let session = deliver(&conn, &srx, 1);
        conn.inject_socket_failure();
        assert_eq!(deliver(&conn, &srx, 2), session, "{proto:?}: the session resumed");
        wait_until(
            || accept.handles.lock().len() >= 2,
            || format!("{proto:?}: the reconnect was authenticated"),
        );
        let handles = accept.handles.lock().clone();
        assert_eq!(handles[0], session, "{proto:?}: the first connect opened the session");
        let dumped = handles[1].clone();
        assert_ne!(dumped, session, "{proto:?}: the reconnect came on a handle of its own");
        wait_until(
            || accept.resets.lock().contains(&dumped),
            || format!("{proto:?}: the handed-over handle is reported ended"),
        );
        assert!(!accept.resets.lock().contains(&session), "{proto:?}: the session is not reset");
        assert!(session.is_connected(), "{proto:?}");
        c.shutdown();
        server.shutdown();
    }
}

/// A dispatcher whose `ms_handle_authentication` keeps the handle it is shown (as an
/// OSD keeps a session for it) and then panics the first time, letting the peer in
/// after that; it sends every `ms_handle_reset`'s handle, in order.
struct PanicsOnce {
    calls: AtomicUsize,
    shown: parking_lot::Mutex<Vec<Connection>>,
    resets: Sender<Connection>,
}

impl Dispatcher<Connection> for PanicsOnce {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_handle_authentication(&self, conn: &Connection) -> Authentication {
        self.shown.lock().push(conn.clone());
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("ms_handle_authentication panics (on purpose)");
        }
        Authentication::Accept
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.resets.send(conn.clone());
        false
    }
}

// A hook that panics in `ms_handle_authentication` may have kept state for the handle
// it was shown, as one that panics in `ms_verify_authorizer`: the event center drops
// the connection, and the dispatchers hear its reset (once), so that state can go. The
// peer dials again and gets in.
#[test]
fn a_panic_in_authentication_drops_the_connection_and_reports_its_reset() {
    for proto in PROTOCOLS {
        let (resets_tx, resets) = crossbeam_channel::unbounded();
        let hook = Arc::new(PanicsOnce {
            calls: AtomicUsize::new(0),
            shown: Default::default(),
            resets: resets_tx,
        });
        let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(2)).expect("m");
        m.set_default_policy(Policy::stateful_server());
        m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        m.start().expect("start");
        m.add_dispatcher_tail(hook.clone()).expect("dispatcher");
        let (rec, srx) = Recorder::new(false);
        m.add_dispatcher_tail(rec).expect("recorder");
        let quick = backoff_config(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(50),
        );
        let (c, _crx) = client_with(EntityType::CLIENT, 61, Policy::lossless_client(), quick);
        let conn = c.connect_to(EntityType::OSD, dial_addr(&m, proto));
        let session = deliver(&conn, &srx, 1);
        let shown = hook.shown.lock().clone();
        assert!(shown.len() >= 2, "{proto:?}: asked again after the panic");
        let dropped = shown[0].clone();
        assert_ne!(dropped, session, "{proto:?}: the session came on a later connect");
        let first = resets.recv_timeout(WAIT).expect("the reset of the dropped handle");
        assert_eq!(first, dropped, "{proto:?}: the first reset is the dropped handle's");
        assert!(session.is_connected(), "{proto:?}");
        // Once, and not for the session: a later reset, the session's from a
        // mark_down_all now, comes behind any other already queued (one event queue, in
        // order), so what comes before it is every reset the drop and the reconnect made.
        m.mark_down_all();
        let mut before = Vec::new();
        loop {
            let r = resets.recv_timeout(WAIT).expect("the session's reset (the barrier)");
            if r == session {
                break;
            }
            before.push(r);
        }
        assert!(!before.contains(&dropped), "{proto:?}: reset again: {before:?}");
        c.shutdown();
        m.shutdown();
    }
}

// A messenger bound after a `client_bind` is a bound one: its dials are not bound to
// the client_bind IP any more (as its docs say of a bound messenger's, and as Ceph's,
// which binds them to the messenger's own address then). Kept, a daemon bound to one
// IP dialled its peers from another: 127.0.0.2 here, while it announces 127.0.0.1.
#[test]
fn a_bind_after_client_bind_leaves_the_dials_unbound() {
    let bound_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for proto in PROTOCOLS {
        let (server, _, srx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
        let m = Messenger::new(EntityName::new(EntityType::OSD, 4), 4, test_config(1)).expect("m");
        m.client_bind(SocketAddr::new(bound_ip, 0)).expect("client_bind before bind");
        let at = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind after client_bind");
        let (m, _rx) = start_recorded(m, Policy::lossless_peer());
        let conn = m.connect_to(EntityType::OSD, dial_addr(&server, proto));
        let theirs = deliver(&conn, &srx, 1);
        let seen = theirs.peer_socket_addr().expect("the server's peer socket");
        assert_eq!(seen.ip(), at.ip(), "{proto:?}: a bound messenger's dial is not bound");
        m.shutdown();
        server.shutdown();
    }
}
