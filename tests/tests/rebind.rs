//! `Messenger::rebind(avoid_ports)`, Ceph's `AsyncMessenger::rebind`: an OSD wrongly
//! marked down binds its cluster and heartbeat messengers again, at a new port (never an
//! avoided one, nor the old one) and with its nonce moved on by 1,000,000, so that no
//! peer takes it for who it was. Every session ends as by `mark_down_all` (each reported
//! with `ms_handle_reset` on the rebinding side), the old port refuses, accepts arrive on
//! the new socket, and dials from then on announce the new address. Each scenario runs
//! over msgr v1 and msgr2 (the protocol chosen by the type of the address dialled).
//!
//! The port ranges used are found free first, below the kernel's ephemeral ports (as
//! `bind_ports.rs` does), distinct for every test of this process.

use std::collections::BTreeSet;
use std::io;
use std::net::{SocketAddr, TcpStream};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use tests::chaos::{ChaosConfig, ChaosProxy};
use tests::loopback::*;

const PROTOCOLS: [ProtocolVersion; 2] = [ProtocolVersion::V1, ProtocolVersion::V2];

/// Ceph's rebind step (`nonce += 1000000`).
const NONCE_STEP: u32 = 1_000_000;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The address of `m` that speaks `proto` (its v1 or its msgr2 one).
fn addr_of(m: &Messenger, proto: ProtocolVersion) -> EntityAddr {
    let ty = match proto {
        ProtocolVersion::V1 => AddrType::LEGACY,
        ProtocolVersion::V2 => AddrType::MSGR2,
    };
    let addrs = m.my_addrs();
    addrs.addrs.iter().copied().find(|a| a.ty == ty).expect("the address of the protocol")
}

/// Sends one message on `conn` and waits for the server's echo on `rx`; returns the
/// connection the echo came on.
fn round_trip(conn: &Connection, rx: &Receiver<Seen>, tid: u64) -> Connection {
    conn.send_message(test_message(0x4242, tid, Bytes::from_static(b"rebind"))).expect("send");
    let (on, echo) = next_message(rx);
    assert_eq!(echo.tid(), tid, "the echo of message {tid}");
    on
}

/// Whether a TCP dial of `addr` is refused.
fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused)
}

/// A server messenger bound to 127.0.0.1 with `config`, not yet ready (no dispatcher).
fn bound_server(nonce: u32, port: u16, config: MessengerConfig) -> (Messenger, SocketAddr) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 1), nonce, config).expect("messenger");
    m.set_default_policy(Policy::lossless_peer());
    let bound = m.bind(loopback(port)).expect("bind");
    (m, bound)
}

/// A fast dispatcher counting `ms_handle_fast_connect` on the loopback connection.
#[derive(Default)]
struct LoopbackAnnouncements(AtomicUsize);

impl Dispatcher<Connection> for LoopbackAnnouncements {
    fn ms_dispatch(&self, _conn: &Connection, _msg: protocol::Message) -> Dispatched {
        Dispatched::NotTaken(_msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        if conn.is_loopback() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// Ceph's rebind: a new port (the old one avoided) and `nonce += 1000000`, published in
// both the v1 and the msgr2 address (`_finish_bind`), and the local connection's peer
// (us) follows.
#[test]
fn a_rebind_announces_a_new_port_and_nonce_in_both_addresses() {
    let (m, old, _rx) = server(EntityType::OSD, 7, Policy::lossless_peer(), true);
    let fast = Arc::new(LoopbackAnnouncements::default());
    m.add_dispatcher_tail(fast.clone()).expect("dispatcher");
    assert_eq!(fast.0.load(Ordering::SeqCst), 1, "told as it was added");
    let before = m.my_addrs();
    assert_eq!(before.addrs.len(), 2, "msgr2 and v1: {before:?}");
    let new = m.rebind(&BTreeSet::new()).expect("rebind");
    assert_eq!(new.ip(), old.ip(), "the same IP");
    assert_ne!(new.port(), old.port(), "the old port is avoided");
    let after = m.my_addrs();
    assert_eq!(after.addrs.len(), 2, "{after:?}");
    for (b, a) in before.addrs.iter().zip(&after.addrs) {
        assert_eq!(a.ty, b.ty, "same order, msgr2 first");
        assert_eq!(a.addr, Some(new), "{a:?}");
        assert_eq!(a.nonce, 7 + NONCE_STEP, "{a:?}");
    }
    assert_eq!(m.my_addr(), EntityAddr::legacy(new, 7 + NONCE_STEP));
    assert_eq!(m.get_loopback_connection().peer_addr(), Some(m.my_addr()));
    // As Ceph's `_finish_bind`, the loopback connection is announced again.
    assert_eq!(fast.0.load(Ordering::SeqCst), 2, "told again with the new address");
    // A second rebind moves on again.
    let third = m.rebind(&BTreeSet::new()).expect("second rebind");
    assert_ne!(third.port(), new.port());
    assert_eq!(m.my_addr().nonce, 7 + 2 * NONCE_STEP);
    m.shutdown();
}

// After a rebind the old listening socket is closed (Ceph's `Processor::stop`): a dial of
// the old port is refused, and a client reaches the messenger at its new address, where
// messages flow again.
#[test]
fn the_old_port_refuses_and_a_client_reaches_the_new_address() {
    for proto in PROTOCOLS {
        let (srv, old, _srx) = server(EntityType::OSD, 11, Policy::lossless_peer(), true);
        let (cli, crx) = client(EntityType::CLIENT, 12, Policy::lossless_client());
        let first = cli.connect_to(EntityType::OSD, addr_of(&srv, proto));
        round_trip(&first, &crx, 1);
        let new = srv.rebind(&BTreeSet::new()).expect("rebind");
        assert!(refused(old), "{proto:?}: the old port {old} still accepts");
        assert!(!refused(new), "{proto:?}: the new port {new} refuses");
        let target = addr_of(&srv, proto);
        assert_eq!(target.addr, Some(new));
        let second = cli.connect_to(EntityType::OSD, target);
        let on = round_trip(&second, &crx, 2);
        assert_eq!(on.peer_addr(), Some(target), "{proto:?}: the echo came from the new address");
        cli.shutdown();
        srv.shutdown();
    }
}

// A rebinding OSD's sessions all end (`mark_down_all`), each reported with
// `ms_handle_reset` on its side, and a connection it dials afterwards carries the new
// address and nonce in its handshake: the peer sees a different entity_addr_t, a new
// session, not the old one resumed.
#[test]
fn dials_after_a_rebind_announce_the_new_address_and_old_sessions_are_reset() {
    for proto in PROTOCOLS {
        let (peer, _, prx) = server(EntityType::OSD, 21, Policy::lossless_peer(), false);
        let (osd, _, orx) = server(EntityType::OSD, 22, Policy::lossless_peer(), false);
        let target = addr_of(&peer, proto);
        let before = osd.connect_to(EntityType::OSD, target);
        before.send_message(test_message(0x4242, 1, Bytes::new())).expect("send");
        let (first_seen, _) = next_message(&prx);
        let old_me = first_seen.peer_addr().expect("the peer knows our address");
        assert_eq!(old_me.nonce, 22, "{proto:?}");

        let new = osd.rebind(&BTreeSet::new()).expect("rebind");
        // Ceph: mark_down_all reports each session's end to its own dispatchers.
        wait_for_reset(&orx, &before);
        assert!(!before.is_connected(), "{proto:?}: the old session ended");

        let after = osd.connect_to(EntityType::OSD, target);
        assert_ne!(after.id(), before.id(), "{proto:?}: a new connection");
        after.send_message(test_message(0x4242, 2, Bytes::new())).expect("send");
        let (seen_on, msg) = next_message(&prx);
        assert_eq!(msg.tid(), 2);
        let new_me = seen_on.peer_addr().expect("the peer knows our address");
        assert_eq!(new_me.nonce, 22 + NONCE_STEP, "{proto:?}: {new_me:?}");
        assert_eq!(new_me.port(), new.port(), "{proto:?}: {new_me:?}");
        assert_ne!(seen_on.id(), first_seen.id(), "{proto:?}: the peer's new session");
        osd.shutdown();
        peer.shutdown();
    }
}

// Ceph's Processor::bind walks ms_bind_port_min..max skipping avoid_ports: with a range of
// a few ports, the avoided ones (and the old one) are never taken, and the first free
// port of the rest is.
#[test]
fn with_a_port_range_avoided_ports_are_never_picked() {
    let range = free_port_range(6);
    let p = *range.start();
    let config = MessengerConfig { bind_port_range: Some(range.clone()), ..test_config(1) };
    let (m, first) = bound_server(31, 0, config);
    assert_eq!(first.port(), p, "the range's first port");
    m.start().expect("start");
    let (rec, _rx) = Recorder::new(true);
    m.add_dispatcher_head(rec).expect("dispatcher");

    let avoid: BTreeSet<u16> = [p + 1, p + 2].into();
    let second = m.rebind(&avoid).expect("rebind");
    assert_eq!(second.port(), p + 3, "p (old), p+1 and p+2 (avoided) skipped");
    assert!(refused(first), "the old port is closed");

    // The port of two rebinds ago is free again and not avoided this time: taken again
    // (the avoid set is per call, as Ceph's), with a new nonce all the same.
    let avoid: BTreeSet<u16> = [p + 4].into();
    let third = m.rebind(&avoid).expect("rebind");
    assert_eq!(third.port(), p, "the first port not avoided");
    assert_eq!(m.my_addr().nonce, 31 + 2 * NONCE_STEP);

    // Every port of the range avoided but the old one, which is avoided anyway.
    let all: BTreeSet<u16> = range.clone().collect();
    for avoid in [all.clone(), all.iter().copied().filter(|&q| q != p).collect()] {
        let err = m.rebind(&avoid).expect_err("no port left");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    }
    m.shutdown();
}

// A rebind that finds no port fails and leaves the messenger as it was: still listening
// at its address, its nonce and sessions untouched (Ceph, which stops its processors and
// marks everything down before it binds, would be left listening nowhere).
#[test]
fn a_failed_rebind_leaves_the_messenger_listening_with_its_sessions() {
    for proto in PROTOCOLS {
        let range = free_port_range(3);
        let config = MessengerConfig { bind_port_range: Some(range.clone()), ..test_config(2) };
        let (srv, bound) = bound_server(41, 0, config);
        srv.start().expect("start");
        let (rec, srx) = Recorder::new(true);
        srv.add_dispatcher_head(rec).expect("dispatcher");
        let (cli, crx) = client(EntityType::CLIENT, 42, Policy::lossless_client());
        let conn = cli.connect_to(EntityType::OSD, addr_of(&srv, proto));
        round_trip(&conn, &crx, 1);
        let before = srv.my_addrs();

        let err = srv.rebind(&range.clone().collect()).expect_err("every port avoided");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{proto:?}: {err}");
        assert_eq!(srv.my_addrs(), before, "{proto:?}: nothing announced changed");
        // The session goes on, on the same connection: no reset on either side.
        assert_eq!(round_trip(&conn, &crx, 2).id(), conn.id());
        let reset = |s: &Seen| matches!(s, Seen::Reset(_) | Seen::RemoteReset(_));
        assert_eq!(count_events(&srx, 0, reset), 0, "{proto:?}: the server reset a session");
        assert_eq!(count_events(&crx, 0, reset), 0, "{proto:?}: the client heard a reset");
        // And it still accepts at its address.
        let (other, orx) = client(EntityType::CLIENT, 43, Policy::lossless_client());
        round_trip(&other.connect_to(EntityType::OSD, addr_of(&srv, proto)), &orx, 3);
        assert_eq!(bound.port(), addr_of(&srv, proto).port());
        other.shutdown();
        cli.shutdown();
        srv.shutdown();
    }
}

// Ceph asserts `did_bind`: a rebind of a messenger that never bound is refused, before or
// after it started, and binds nothing.
#[test]
fn a_rebind_without_a_bind_is_an_error() {
    let m =
        Messenger::new(EntityName::new(EntityType::OSD, 5), 51, test_config(1)).expect("messenger");
    let err = m.rebind(&BTreeSet::new()).expect_err("never bound");
    assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
    m.start().expect("start");
    let err = m.rebind(&BTreeSet::new()).expect_err("never bound");
    assert_eq!(err.kind(), io::ErrorKind::NotConnected, "{err}");
    assert_eq!(m.my_addr().nonce, 51, "the nonce is untouched");
    assert_eq!(m.my_addr().port(), 0, "still a pure client");
    m.shutdown();
}

// A rebind before the first dispatcher (bound, not ready): the new listener waits, as the
// first one would have, and starts accepting with the first dispatcher.
#[test]
fn a_rebind_before_the_messenger_is_ready_starts_accepting_when_it_is() {
    let (m, old) = bound_server(61, 0, test_config(1));
    m.start().expect("start");
    let new = m.rebind(&BTreeSet::new()).expect("rebind");
    assert!(refused(old), "the old listener is closed");
    let (rec, _rx) = Recorder::new(true);
    m.add_dispatcher_head(rec).expect("dispatcher");
    let (cli, crx) = client(EntityType::CLIENT, 62, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, addr_of(&m, ProtocolVersion::V2));
    assert_eq!(addr_of(&m, ProtocolVersion::V2).addr, Some(new));
    round_trip(&conn, &crx, 1);
    cli.shutdown();
    m.shutdown();
}

// A lossless peer of the old address that reaches the rebound messenger (here through a
// proxy that moves to the new port, as the old port now refuses) never resumes its
// session: over msgr2 its SESSION_RECONNECT finds no session (mark_down_all ended it)
// and is answered SESSION_RESET, so the peer hears ms_handle_remote_reset, as Ceph's
// `handle_reconnect` does; over v1 the acceptor announces the new nonce, which the
// connector refuses as another node (Ceph's "wrong node!"), so nothing is resumed either.
// In both, no message the peer queued for the old session reaches the new messenger.
#[test]
fn a_lossless_peer_of_the_old_address_is_not_resumed() {
    for proto in PROTOCOLS {
        let (srv, old, srx) = server(EntityType::OSD, 71, Policy::lossless_peer(), true);
        let proxy = ChaosProxy::start(old, ChaosConfig::new(71)).expect("proxy");
        let config = backoff_config(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(50),
        );
        let (peer, prx) = client_with(EntityType::OSD, 72, Policy::lossless_peer(), config);
        let via_proxy = EntityAddr { addr: Some(proxy.addr()), ..addr_of(&srv, proto) };
        let conn = peer.connect_to(EntityType::OSD, via_proxy);
        round_trip(&conn, &prx, 1);
        let accepted = loop {
            match srx.recv_timeout(WAIT).expect("the server's events") {
                Seen::Message(c, _) => break c,
                _ => continue,
            }
        };

        let new = srv.rebind(&BTreeSet::new()).expect("rebind");
        wait_for_reset(&srx, &accepted);
        proxy.redirect(new);
        let links = proxy.stats().links;
        // Queued on the old session: the peer reconnects to deliver it.
        conn.send_message(test_message(0x4242, 2, Bytes::new())).expect("send");
        match proto {
            ProtocolVersion::V2 => {
                let remote_reset =
                    |s: &Seen| matches!(s, Seen::RemoteReset(c) if c.id() == conn.id());
                assert!(wait_for_event(&prx, remote_reset), "msgr2: no remote reset");
            }
            ProtocolVersion::V1 => {
                // Several attempts reach the new listener and are turned away.
                wait_until(
                    || proxy.stats().links >= links + 3,
                    || format!("v1: the peer did not retry: {:?}", proxy.stats()),
                );
                assert!(!conn.is_connected() || conn.state() != messenger::ConnState::Open);
            }
        }
        // The rebound server never saw the old session's message.
        assert_no_more_messages(&srx, "a message of the old session reached the new one");
        peer.shutdown();
        srv.shutdown();
    }
}

/// Calls `rebind` on the messenger it is given from `ms_fast_dispatch` (on a worker) or
/// `ms_dispatch` (on the dispatch thread), and reports the outcome.
struct RebindFromHook {
    m: std::sync::OnceLock<std::sync::Weak<Messenger>>,
    fast: bool,
    done: crossbeam_channel::Sender<io::Result<SocketAddr>>,
    /// Rebound once: later messages go on to the next dispatcher.
    once: std::sync::atomic::AtomicBool,
}

impl RebindFromHook {
    fn rebind(&self) {
        let m = self.m.get().and_then(std::sync::Weak::upgrade).expect("messenger");
        let _ = self.done.send(m.rebind(&BTreeSet::new()));
    }
}

impl Dispatcher<Connection> for RebindFromHook {
    fn ms_dispatch(&self, _conn: &Connection, msg: protocol::Message) -> Dispatched {
        if self.once.swap(true, Ordering::SeqCst) {
            return Dispatched::NotTaken(msg);
        }
        self.rebind();
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &protocol::Message) -> bool {
        self.fast && !self.once.swap(true, Ordering::SeqCst)
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: protocol::Message) {
        self.rebind();
    }
}

// A rebind called from a dispatcher (on a worker, or on the dispatch thread) returns,
// the old port ends up refusing and the new one accepting, and a client reaches it.
#[test]
fn a_rebind_from_a_dispatcher_completes() {
    for fast in [true, false] {
        let m = Arc::new(
            Messenger::new(EntityName::new(EntityType::OSD, 1), 81, test_config(2))
                .expect("messenger"),
        );
        m.set_default_policy(Policy::lossless_peer());
        let old = m.bind(loopback(0)).expect("bind");
        m.start().expect("start");
        let (done, rebound) = crossbeam_channel::bounded(1);
        let hook = Arc::new(RebindFromHook {
            m: Default::default(),
            fast,
            done,
            once: Default::default(),
        });
        assert!(hook.m.set(Arc::downgrade(&m)).is_ok(), "set once");
        m.add_dispatcher_head(hook).expect("dispatcher");
        let (cli, _crx) = client(EntityType::CLIENT, 82, Policy::lossless_client());
        let conn = cli.connect_to(EntityType::OSD, addr_of(&m, ProtocolVersion::V2));
        conn.send_message(test_message(0x4242, 1, Bytes::new())).expect("send");
        let new = rebound.recv_timeout(WAIT).expect("the rebind returned").expect("rebind");
        wait_until(|| refused(old), || format!("fast {fast}: the old port {old} accepts"));
        assert!(!refused(new), "fast {fast}: the new port {new} refuses");
        let (rec, rrx) = Recorder::new(true);
        m.add_dispatcher_tail(rec).expect("dispatcher");
        let (cli2, crx2) = client(EntityType::CLIENT, 83, Policy::lossless_client());
        let c2 = cli2.connect_to(EntityType::OSD, addr_of(&m, ProtocolVersion::V2));
        round_trip(&c2, &crx2, 2);
        drop(rrx);
        cli2.shutdown();
        cli.shutdown();
        m.shutdown();
    }
}

// A rebind racing a shutdown on a shared pool (whose workers outlive the messenger):
// once both returned, nothing listens, at the old port nor the new one.
#[test]
fn a_rebind_racing_shutdown_leaves_no_listener() {
    let pool = Arc::new(
        messenger::WorkerPool::new(messenger::WorkerPoolConfig {
            workers: 2,
            ..messenger::WorkerPoolConfig::default()
        })
        .expect("pool"),
    );
    for round in 0..40u32 {
        let m = Arc::new(
            Messenger::with_pool(
                EntityName::new(EntityType::OSD, 1),
                90 + round,
                test_config(2),
                pool.clone(),
            )
            .expect("messenger"),
        );
        m.set_default_policy(Policy::lossless_peer());
        let old = m.bind(loopback(0)).expect("bind");
        m.start().expect("start");
        let (rec, _rx) = Recorder::new(true);
        m.add_dispatcher_head(rec).expect("dispatcher");
        let (go_tx, go) = crossbeam_channel::bounded::<()>(0);
        let r = {
            let m = m.clone();
            std::thread::spawn(move || {
                let _ = go.recv();
                m.rebind(&BTreeSet::new())
            })
        };
        let _ = go_tx.send(());
        m.shutdown();
        let rebound = r.join().expect("rebind thread");
        assert!(refused(old), "round {round}: the old port {old} accepts");
        if let Ok(new) = rebound {
            assert!(refused(new), "round {round}: the new port {new} accepts: {rebound:?}");
        }
    }
}

/// A fast dispatcher that records the loopback connection's peer address each time it
/// hears `ms_handle_fast_connect` for it; the first time, it tells `entered` and waits
/// for `release` (a dispatcher slow in that hook).
struct SlowLoopbackListener {
    seen: parking_lot::Mutex<Vec<Option<EntityAddr>>>,
    entered: crossbeam_channel::Sender<()>,
    release: Receiver<()>,
}

impl Dispatcher<Connection> for SlowLoopbackListener {
    fn ms_dispatch(&self, _conn: &Connection, msg: protocol::Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        if !conn.is_loopback() {
            return;
        }
        let first = {
            let mut seen = self.seen.lock();
            seen.push(conn.peer_addr());
            seen.len() == 1
        };
        if first {
            let _ = self.entered.send(());
            let _ = self.release.recv_timeout(WAIT);
        }
    }
}

// A fast dispatcher being added while a rebind runs (its `ms_handle_fast_connect` for the
// loopback connection under way, before it joins the chain) hears the new address too:
// after both returned, the last address it was told is the one we announce. Before, the
// rebind announced to the chain it did not yet belong to, and it had been told the old
// address only.
#[test]
fn a_fast_dispatcher_added_during_a_rebind_hears_the_new_address() {
    let (m, _old, _rx) = server(EntityType::OSD, 101, Policy::lossless_peer(), true);
    let m = Arc::new(m);
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release_tx, release) = crossbeam_channel::bounded(1);
    let slow = Arc::new(SlowLoopbackListener {
        seen: parking_lot::Mutex::new(Vec::new()),
        entered: entered_tx,
        release,
    });
    let adder = {
        let (m, slow) = (m.clone(), slow.clone());
        std::thread::spawn(move || m.add_dispatcher_head(slow))
    };
    entered.recv_timeout(WAIT).expect("the dispatcher is being told");
    m.rebind(&BTreeSet::new()).expect("rebind");
    release_tx.send(()).expect("release");
    adder.join().expect("adder").expect("dispatcher");
    let seen = slow.seen.lock().clone();
    assert_eq!(seen.last().copied().flatten(), Some(m.my_addr()), "told only {seen:?}");
    m.shutdown();
}

// A peer that dials the new port but names the old nonce in its target (msgr2's
// CLIENT_IDENT target_addr; v1's check of the acceptor's address) is not taken for the
// rebound messenger, as in Ceph ("peer is trying to reach ... which is not us", "wrong
// node"): no session opens on either side.
#[test]
fn a_peer_naming_the_old_nonce_at_the_new_port_is_refused() {
    for proto in PROTOCOLS {
        let (srv, _, srx) = server(EntityType::OSD, 111, Policy::lossless_peer(), true);
        let new = srv.rebind(&BTreeSet::new()).expect("rebind");
        let (cli, crx) = client(EntityType::CLIENT, 112, Policy::lossy_client());
        let stale = EntityAddr { nonce: 111, ..addr_of(&srv, proto) };
        assert_eq!(stale.addr, Some(new));
        let conn = cli.connect_to(EntityType::OSD, stale);
        conn.send_message(test_message(0x4242, 1, Bytes::new())).expect("send");
        let opened = |s: &Seen| matches!(s, Seen::Accept(_) | Seen::Message(..));
        assert_eq!(count_events(&srx, 0, opened), 0, "{proto:?}: the server opened a session");
        assert_eq!(count_events(&crx, 0, |s| matches!(s, Seen::Connect(_) | Seen::Message(..))), 0);
        cli.shutdown();
        srv.shutdown();
    }
}
