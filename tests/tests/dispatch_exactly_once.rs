//! Exactly-once, in-order delivery on lossless sessions *through the dispatch layer*:
//! the protocol's guarantee (seqs, the sent list replayed, duplicates dropped) holds
//! only if what waits in the dispatch queue for a held `ms_dispatch` thread, or is
//! fast-dispatched beside it, survives what changes the session underneath it.
//!
//! Each test holds the receiver's dispatch thread in its first message (a dispatcher
//! that blocks on a channel), so everything received meanwhile waits in the queue,
//! then cuts the socket (either end), replaces the session (a reconnect on a new
//! socket: v1 connect_seq, msgr2 SESSION_RECONNECT; a connection race), or resets it
//! (`mark_down`, a peer restart seen as `ms_handle_remote_reset`), and finally lets the
//! thread go: every message is dispatched once and in order, or, where the session
//! was reset, nothing of the old session comes after the reset's callback. Beside them:
//! the dispatch throttle full behind the held thread while the socket is cut, a peer
//! restart without resetcheck (the queue is kept), and two lossless peers under
//! injected socket failures and delays with a slow `ms_dispatch`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::message::{PRIO_DEFAULT, PRIO_HIGH, PRIO_LOW};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

/// Queued for `ms_dispatch`.
const MSG_SLOW: u16 = 0x7f00;
/// Fast-dispatched (when the gate is told to).
const MSG_FAST: u16 = 0x7f01;

/// A recording dispatcher whose `ms_dispatch` blocks while `hold` is set (after
/// recording the message), until [`Gate::open`]; fast-dispatches [`MSG_FAST`] when
/// `fast` is set.
struct Gate {
    /// Records what the gate sees (and echoes nothing).
    rec: Arc<Recorder>,
    hold: AtomicBool,
    entered: Sender<u64>,
    release: Receiver<()>,
    fast: bool,
}

/// The test's side of a [`Gate`].
struct GateHandle {
    gate: Arc<Gate>,
    entered: Receiver<u64>,
    go: Sender<()>,
}

impl GateHandle {
    /// Waits until `ms_dispatch` is held in a message; returns its tid.
    fn wait_held(&self) -> u64 {
        self.entered.recv_timeout(WAIT).expect("ms_dispatch held")
    }

    /// Lets the held `ms_dispatch` go, and every later one.
    fn open(&self) {
        self.gate.hold.store(false, Ordering::SeqCst);
        let _ = self.go.send(());
    }

    /// Holds the next `ms_dispatch` again.
    fn close(&self) {
        // A token left by the last open must not release the next hold.
        while self.gate.release.try_recv().is_ok() {}
        self.gate.hold.store(true, Ordering::SeqCst);
    }
}

impl Gate {
    fn pair(fast: bool) -> (GateHandle, Receiver<Seen>) {
        let (rec, rx) = Recorder::new(false);
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (go, release) = crossbeam_channel::unbounded();
        let gate =
            Arc::new(Gate { rec, hold: AtomicBool::new(true), entered: entered_tx, release, fast });
        (GateHandle { gate, entered, go }, rx)
    }
}

impl Dispatcher<Connection> for Gate {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let tid = msg.tid();
        self.rec.ms_dispatch(conn, msg);
        if self.hold.load(Ordering::SeqCst) {
            let _ = self.entered.send(tid);
            let _ = self.release.recv_timeout(WAIT);
        }
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        self.fast && msg.msg_type() == MSG_FAST
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.rec.ms_dispatch(conn, msg);
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        self.rec.ms_handle_connect(conn);
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        self.rec.ms_handle_accept(conn);
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        self.rec.ms_handle_reset(conn)
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        self.rec.ms_handle_remote_reset(conn);
    }
    fn ms_handle_refused(&self, conn: &Connection) -> bool {
        self.rec.ms_handle_refused(conn)
    }
}

fn config() -> MessengerConfig {
    MessengerConfig { initial_backoff: Duration::from_millis(5), ..test_config(2) }
}

/// A started messenger of type `ty` with `policy`, bound to loopback if `bind`, with a
/// [`Gate`] (holding) as its only dispatcher.
fn gated(
    ty: EntityType,
    nonce: u32,
    policy: Policy,
    bind: bool,
    fast: bool,
) -> (Messenger, GateHandle, Receiver<Seen>) {
    let m =
        Messenger::new(EntityName::new(ty, i64::from(nonce)), nonce, config()).expect("messenger");
    m.set_default_policy(policy);
    if bind {
        m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    }
    m.start().expect("start");
    let (handle, rx) = Gate::pair(fast);
    m.add_dispatcher_head(handle.gate.clone()).expect("dispatcher");
    (m, handle, rx)
}

fn msg(tid: u64, mixed: bool) -> Message {
    let ty = if mixed && tid.is_multiple_of(2) { MSG_FAST } else { MSG_SLOW };
    test_message(ty, tid, Bytes::from_static(&[5; 200]))
}

/// Waits until the peer acknowledged everything `c` sent (it was received, and waits in
/// the dispatch queue or was fast-dispatched).
fn wait_acked(c: &Connection) {
    wait_until(
        || c.queued_send_bytes() == 0,
        || format!("{c:?} still holds {} bytes", c.queued_send_bytes()),
    );
}

/// What a receiver saw, after the gate opened: the messages' tids in the order their
/// dispatchers ran, and the events by kind.
#[derive(Debug, Default)]
struct Log {
    tids: Vec<u64>,
    resets: usize,
    remote_resets: usize,
}

/// Reads `rx` until `n` messages came (each within [`WAIT`]), then a short grace period
/// for more (a duplicate shows as one more).
fn collect(who: &str, rx: &Receiver<Seen>, n: usize) -> Log {
    let mut log = Log::default();
    let note = |log: &mut Log, seen: Seen| match seen {
        Seen::Message(_, m) => log.tids.push(m.tid()),
        Seen::Reset(_) => log.resets += 1,
        Seen::RemoteReset(_) => log.remote_resets += 1,
        _ => {}
    };
    while log.tids.len() < n {
        match rx.recv_timeout(WAIT) {
            Ok(seen) => note(&mut log, seen),
            Err(e) => panic!("{who}: {} of {n} messages: {e}; got {:?}", log.tids.len(), log.tids),
        }
    }
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = rx.recv_deadline(grace) {
        note(&mut log, seen);
    }
    log
}

/// Every tid of `1..=n` once; in order among the queued ones and among the fast ones
/// (each its own order: fast dispatch goes before what waits for `ms_dispatch`).
fn assert_once_in_order(who: &str, log: &Log, n: u64, mixed: bool) {
    assert_eq!((log.resets, log.remote_resets), (0, 0), "{who}: a reset on a lossless session");
    let mut sorted = log.tids.clone();
    sorted.sort_unstable();
    let want: Vec<u64> = (1..=n).collect();
    if sorted != want {
        let mut dups = sorted.clone();
        dups.dedup();
        let lost: Vec<u64> =
            want.iter().copied().filter(|t| sorted.binary_search(t).is_err()).collect();
        panic!(
            "{who}: {} dispatched, {} duplicates, lost {:?}",
            sorted.len(),
            sorted.len() - dups.len(),
            lost
        );
    }
    for fast in [false, true] {
        let lane: Vec<u64> = log
            .tids
            .iter()
            .copied()
            .filter(|t| mixed && t.is_multiple_of(2) == fast || !mixed && !fast)
            .collect();
        assert!(
            lane.is_sorted(),
            "{who}: reordered ({}): {lane:?}",
            if fast { "fast" } else { "queued" }
        );
    }
}

/// A lossless client streams to a stateful server whose `ms_dispatch` is held in the
/// first message: every `BATCH` messages the socket is cut, from the client's end or
/// the server's, and the session reconnects (v1: a connect with the session's
/// connect_seq, replacing on the server; msgr2: SESSION_RECONNECT on a new socket),
/// while everything received so far waits in the server's dispatch queue. Once all is
/// acknowledged the gate opens: every message once, in order, no reset.
fn cuts_while_dispatch_is_held(proto: ProtocolVersion, mixed: bool) {
    const BATCH: u64 = 40;
    const CUTS: u64 = 10;
    let (srv, gate, srv_rx) = gated(EntityType::OSD, 1, Policy::stateful_server(), true, mixed);
    let (cli, cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(msg(1, false)).expect("send");
    assert_eq!(gate.wait_held(), 1);
    let (srv_conn, first) = next_message(&srv_rx);
    assert_eq!(first.tid(), 1);
    let mut tid = 1;
    for cut in 0..CUTS {
        for _ in 0..BATCH {
            tid += 1;
            conn.send_message(msg(tid, mixed)).expect("send");
        }
        if cut % 2 == 0 {
            conn.inject_socket_failure();
        } else {
            srv_conn.inject_socket_failure();
        }
    }
    for _ in 0..BATCH {
        tid += 1;
        conn.send_message(msg(tid, mixed)).expect("send");
    }
    wait_acked(&conn);
    gate.open();
    let log = collect("server", &srv_rx, tid as usize - 1);
    let mut all = vec![1];
    all.extend(log.tids.iter().copied());
    let log = Log { tids: all, ..log };
    assert_once_in_order("server", &log, tid, mixed);
    assert!(
        !cli_rx.try_iter().any(|s| matches!(s, Seen::Reset(_) | Seen::RemoteReset(_))),
        "client: a reset on a lossless session"
    );
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn cuts_while_ms_dispatch_is_held_lose_and_duplicate_nothing_over_msgr1() {
    cuts_while_dispatch_is_held(ProtocolVersion::V1, false);
}

#[test]
fn cuts_while_ms_dispatch_is_held_lose_and_duplicate_nothing_over_msgr2() {
    cuts_while_dispatch_is_held(ProtocolVersion::V2, false);
}

#[test]
fn cuts_with_fast_and_queued_types_mixed_lose_and_duplicate_nothing_over_msgr1() {
    cuts_while_dispatch_is_held(ProtocolVersion::V1, true);
}

#[test]
fn cuts_with_fast_and_queued_types_mixed_lose_and_duplicate_nothing_over_msgr2() {
    cuts_while_dispatch_is_held(ProtocolVersion::V2, true);
}

/// Two lossless peers stream to each other, both dispatch threads held, and both lose
/// the socket at once: both reconnect with the same connect_seq into a connection race
/// (v1), or SESSION_RECONNECT races (msgr2), which one side resolves by replacing its
/// session's socket with the incoming one. Over several rounds, with both queues full
/// each time: every message once, in order, on each side.
fn race_while_dispatch_is_held(proto: ProtocolVersion, a_nonce: u32, b_nonce: u32) {
    const BATCH: u64 = 50;
    const ROUNDS: usize = 6;
    let (a, a_gate, a_rx) = gated(EntityType::OSD, a_nonce, Policy::lossless_peer(), true, false);
    let (b, b_gate, b_rx) = gated(EntityType::OSD, b_nonce, Policy::lossless_peer(), true, false);
    let a_to_b = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    a_to_b.send_message(msg(1, false)).expect("send");
    assert_eq!(b_gate.wait_held(), 1);
    let (b_to_a, _) = next_message(&b_rx);
    b_to_a.send_message(msg(1, false)).expect("send");
    assert_eq!(a_gate.wait_held(), 1);
    let _ = next_message(&a_rx);
    let mut tid = 1;
    for round in 0..ROUNDS {
        let from = tid + 1;
        for _ in 0..BATCH {
            tid += 1;
            a_to_b.send_message(msg(tid, false)).expect("a sends");
            b_to_a.send_message(msg(tid, false)).expect("b sends");
        }
        if round % 2 == 0 {
            a_to_b.inject_socket_failure();
        } else {
            b_to_a.inject_socket_failure();
        }
        for _ in 0..BATCH {
            tid += 1;
            a_to_b.send_message(msg(tid, false)).expect("a sends");
            b_to_a.send_message(msg(tid, false)).expect("b sends");
        }
        wait_acked(&a_to_b);
        wait_acked(&b_to_a);
        a_gate.open();
        b_gate.open();
        for (rx, who) in [(&a_rx, "a"), (&b_rx, "b")] {
            let log = collect(who, rx, (tid - from + 1) as usize);
            let want: Vec<u64> = (from..=tid).collect();
            assert_eq!(log.tids, want, "{who}, round {round}: lost, duplicated or reordered");
            assert_eq!((log.resets, log.remote_resets), (0, 0), "{who}: reset");
        }
        // The next round's first message holds each dispatch thread again.
        a_gate.close();
        b_gate.close();
    }
    a_gate.open();
    b_gate.open();
    a.shutdown();
    b.shutdown();
}

#[test]
fn lossless_peers_racing_while_ms_dispatch_is_held_over_msgr1() {
    race_while_dispatch_is_held(ProtocolVersion::V1, 1, 2);
}

#[test]
fn lossless_peers_racing_while_ms_dispatch_is_held_over_msgr2() {
    race_while_dispatch_is_held(ProtocolVersion::V2, 1, 2);
}

/// The session is reset by a peer restart while the server's queue holds its messages:
/// the lossless client marks its connection down and connects anew (connect_seq 0 / a
/// new client cookie), the stateful server (resetcheck) reports
/// `ms_handle_remote_reset`. No message of the old session may be dispatched after
/// that callback (Ceph's `discard_queue`), and the new session's messages all come,
/// once, in order, after it.
fn remote_reset_while_dispatch_is_held(proto: ProtocolVersion) {
    let (srv, gate, srv_rx) = gated(EntityType::OSD, 1, Policy::stateful_server(), true, false);
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let old = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    old.send_message(msg(1, false)).expect("send");
    assert_eq!(gate.wait_held(), 1);
    for tid in 2..=50 {
        old.send_message(msg(tid, false)).expect("send");
    }
    wait_acked(&old);
    old.mark_down();
    let new = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    assert_ne!(new, old);
    for tid in 1001..=1050 {
        new.send_message(msg(tid, false)).expect("send");
    }
    wait_acked(&new);
    gate.open();
    // Everything after the held message: the remote reset, then 1001..=1050 only.
    let mut seen = Vec::new();
    let mut messages = 0;
    while messages < 51 {
        match srv_rx.recv_timeout(WAIT) {
            Ok(Seen::Message(_, m)) => {
                messages += 1;
                seen.push(format!("msg {}", m.tid()));
            }
            Ok(Seen::RemoteReset(_)) => seen.push("remote_reset".into()),
            Ok(Seen::Reset(_)) => seen.push("reset".into()),
            Ok(Seen::Accept(_)) => seen.push("accept".into()),
            Ok(other) => seen.push(format!("{other:?}")),
            Err(_) => break,
        }
    }
    let first_new = seen.iter().position(|s| s == "msg 1001");
    let reset = seen.iter().position(|s| s == "remote_reset");
    let old_after_reset: Vec<&String> = seen
        .iter()
        .skip(reset.map_or(0, |r| r + 1))
        .filter(|s| {
            s.strip_prefix("msg ").and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t < 1000)
        })
        .collect();
    assert!(
        reset.is_some() && reset < first_new,
        "no remote reset before the new session: {seen:?}"
    );
    assert!(old_after_reset.is_empty(), "old session's messages after its reset: {seen:?}");
    let new: Vec<u64> = seen
        .iter()
        .filter_map(|s| s.strip_prefix("msg ").and_then(|t| t.parse::<u64>().ok()))
        .filter(|t| *t > 1000)
        .collect();
    assert_eq!(new, (1001..=1050).collect::<Vec<_>>(), "new session: {seen:?}");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_peer_restart_discards_the_old_sessions_queued_messages_over_msgr1() {
    remote_reset_while_dispatch_is_held(ProtocolVersion::V1);
}

#[test]
fn a_peer_restart_discards_the_old_sessions_queued_messages_over_msgr2() {
    remote_reset_while_dispatch_is_held(ProtocolVersion::V2);
}

/// `mark_down` of a connection whose messages wait for a held `ms_dispatch`: none of
/// them is dispatched once it returns (the one being dispatched finishes).
fn mark_down_while_dispatch_is_held(proto: ProtocolVersion) {
    let (srv, gate, srv_rx) = gated(EntityType::OSD, 1, Policy::stateful_server(), true, false);
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(msg(1, false)).expect("send");
    assert_eq!(gate.wait_held(), 1);
    let (srv_conn, _) = next_message(&srv_rx);
    for tid in 2..=100 {
        conn.send_message(msg(tid, false)).expect("send");
    }
    wait_acked(&conn);
    srv_conn.mark_down();
    gate.open();
    let grace = Instant::now() + Duration::from_millis(500);
    while let Ok(seen) = srv_rx.recv_deadline(grace) {
        if let Seen::Message(c, m) = seen {
            assert_ne!(c, srv_conn, "message {} of a marked-down connection dispatched", m.tid());
        }
    }
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn mark_down_drops_what_waits_for_a_held_ms_dispatch_over_msgr1() {
    mark_down_while_dispatch_is_held(ProtocolVersion::V1);
}

#[test]
fn mark_down_drops_what_waits_for_a_held_ms_dispatch_over_msgr2() {
    mark_down_while_dispatch_is_held(ProtocolVersion::V2);
}

/// Messages of three priorities on one lossless connection, cut while the server's
/// `ms_dispatch` is held: the queue may reorder across priorities (documented), but
/// each priority's messages come once and in order.
fn priorities_with_cuts(proto: ProtocolVersion) {
    let (srv, gate, srv_rx) = gated(EntityType::OSD, 1, Policy::stateful_server(), true, false);
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(msg(1, false)).expect("send");
    assert_eq!(gate.wait_held(), 1);
    let (srv_conn, _) = next_message(&srv_rx);
    let prios = [PRIO_LOW, PRIO_DEFAULT, PRIO_HIGH];
    let n = 600u64;
    for tid in 2..=n {
        let mut m = msg(tid, false);
        m.set_priority(prios[(tid % 3) as usize]);
        conn.send_message(m).expect("send");
        if tid % 100 == 0 {
            if tid % 200 == 0 {
                conn.inject_socket_failure();
            } else {
                srv_conn.inject_socket_failure();
            }
        }
    }
    wait_acked(&conn);
    gate.open();
    let log = collect("server", &srv_rx, n as usize - 1);
    let mut sorted = log.tids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (2..=n).collect::<Vec<_>>(), "lost or duplicated");
    for p in 0..3 {
        let lane: Vec<u64> = log.tids.iter().copied().filter(|t| t % 3 == p).collect();
        assert!(lane.is_sorted(), "priority {}: reordered: {lane:?}", prios[p as usize]);
    }
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn priorities_keep_their_own_order_across_cuts_over_msgr1() {
    priorities_with_cuts(ProtocolVersion::V1);
}

#[test]
fn priorities_keep_their_own_order_across_cuts_over_msgr2() {
    priorities_with_cuts(ProtocolVersion::V2);
}

/// [`Gate`] that never holds for good: every 64th `ms_dispatch` waits a little, so the
/// queue fills behind it while the sockets are cut.
fn slow_peer(nonce: u32, config: MessengerConfig) -> (Messenger, Receiver<Seen>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, i64::from(nonce)), nonce, config)
        .expect("messenger");
    m.set_default_policy(Policy::lossless_peer());
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (handle, rx) = Gate::pair(true);
    handle.gate.hold.store(false, Ordering::SeqCst);
    m.add_dispatcher_head(Arc::new(Slow(handle))).expect("dispatcher");
    (m, rx)
}

struct Slow(GateHandle);

impl Dispatcher<Connection> for Slow {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        if msg.tid().is_multiple_of(64) {
            // Never sent: a pause of the dispatch thread, not a wait for anything.
            let _ = self.0.gate.release.recv_timeout(Duration::from_millis(3));
        }
        self.0.gate.ms_dispatch(conn, msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        self.0.gate.ms_can_fast_dispatch(msg)
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.0.gate.ms_fast_dispatch(conn, msg)
    }
}

/// Two lossless peers stream to each other, fast and queued types mixed, with socket
/// failures injected (1 socket operation in 30), internal delays widening the races
/// around replaces, and a delay queue on received messages: every message once, in
/// order per kind, on both sides, and no reset.
fn stress(proto: ProtocolVersion, seed: u64) {
    const N: u64 = 3_000;
    let config = MessengerConfig {
        inject_socket_failures: 30,
        inject_seed: seed,
        inject_internal_delays: Duration::from_millis(1),
        inject_delay_type: vec![EntityType::OSD],
        inject_delay_max: Duration::from_millis(2),
        inject_delay_probability: 0.05,
        initial_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        ..test_config(2)
    };
    let (a, a_rx) = slow_peer(1, config.clone());
    let (b, b_rx) = slow_peer(2, config);
    let a_to_b = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    let b_to_a = b.connect_to(EntityType::OSD, addr_for(proto, a.my_addr()));
    std::thread::scope(|s| {
        for conn in [&a_to_b, &b_to_a] {
            s.spawn(move || {
                for tid in 1..=N {
                    let mut m = msg(tid, true);
                    m.set_priority(PRIO_DEFAULT);
                    loop {
                        match conn.send_message(m.clone()) {
                            Ok(()) => break,
                            Err(e) => {
                                // Bounded send queue: wait for acks.
                                assert!(format!("{e:?}").contains("QueueFull"), "{e:?}");
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            });
        }
    });
    for (rx, who) in [(&b_rx, "b"), (&a_rx, "a")] {
        let log = collect(who, rx, N as usize);
        assert_once_in_order(who, &log, N, true);
    }
    a.shutdown();
    b.shutdown();
}

#[test]
fn lossless_peers_under_injected_failures_and_delays_deliver_once_in_order_over_msgr1() {
    stress(ProtocolVersion::V1, 3);
}

#[test]
fn lossless_peers_under_injected_failures_and_delays_deliver_once_in_order_over_msgr2() {
    stress(ProtocolVersion::V2, 4);
}

/// A lossless peer restarts (marks its connection down and connects anew) while the
/// other's queue holds what it sent; without resetcheck (`lossless_peer`) the other
/// keeps the session (Ceph's replace with `is_reset_from_peer`, no `reset_session`):
/// what waits in its queue is still dispatched, then the new incarnation's messages
/// (seq 1 again), all once and in order, with no reset callback.
fn peer_restart_without_resetcheck(proto: ProtocolVersion) {
    let (a, a_gate, _a_rx) = gated(EntityType::OSD, 1, Policy::lossless_peer(), true, false);
    let (b, b_gate, b_rx) = gated(EntityType::OSD, 2, Policy::lossless_peer(), true, false);
    a_gate.open();
    let old = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    old.send_message(msg(1, false)).expect("send");
    assert_eq!(b_gate.wait_held(), 1);
    for tid in 2..=50 {
        old.send_message(msg(tid, false)).expect("send");
    }
    wait_acked(&old);
    old.mark_down();
    let new = a.connect_to(EntityType::OSD, addr_for(proto, b.my_addr()));
    for tid in 51..=100 {
        new.send_message(msg(tid, false)).expect("send");
    }
    wait_acked(&new);
    b_gate.open();
    let log = collect("b", &b_rx, 100);
    assert_eq!(log.tids, (1..=100).collect::<Vec<_>>(), "b: lost, duplicated or reordered");
    assert_eq!((log.resets, log.remote_resets), (0, 0), "b: no resetcheck, no reset");
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_peer_restart_without_resetcheck_keeps_the_queued_messages_over_msgr1() {
    peer_restart_without_resetcheck(ProtocolVersion::V1);
}

#[test]
fn a_peer_restart_without_resetcheck_keeps_the_queued_messages_over_msgr2() {
    peer_restart_without_resetcheck(ProtocolVersion::V2);
}

/// The dispatch throttle full behind a held `ms_dispatch`: the server stops reading
/// with a message waiting for budget, and the socket is cut from either end several
/// times while it waits (each reconnect meets the same full throttle). Once the gate
/// opens, every message comes once, in order.
fn cuts_while_the_dispatch_throttle_is_full(proto: ProtocolVersion) {
    const N: u64 = 60;
    let srv_config = MessengerConfig { dispatch_throttle_bytes: 32 << 10, ..config() };
    let m = Messenger::new(EntityName::new(EntityType::OSD, 1), 1, srv_config).expect("messenger");
    m.set_default_policy(Policy::stateful_server());
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (gate, srv_rx) = Gate::pair(false);
    m.add_dispatcher_head(gate.gate.clone()).expect("dispatcher");
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, m.my_addr()));
    let big = |tid| test_message(MSG_SLOW, tid, Bytes::from(vec![tid as u8; 8 << 10]));
    conn.send_message(big(1)).expect("send");
    assert_eq!(gate.wait_held(), 1);
    let (srv_conn, _) = next_message(&srv_rx);
    for tid in 2..=N {
        conn.send_message(big(tid)).expect("send");
    }
    // The throttle holds ~4 of them: the rest wait in the client's sent list.
    let throttle = m.dispatch_throttle();
    wait_until(
        || throttle.current() + (8 << 10) > throttle.max() && throttle.waiting() > 0,
        || format!("{:?}", throttle.counters()),
    );
    for cut in 0..6 {
        if cut % 2 == 0 {
            conn.inject_socket_failure();
        } else {
            srv_conn.inject_socket_failure();
        }
    }
    gate.open();
    let log = collect("server", &srv_rx, N as usize - 1);
    let mut all = vec![1];
    all.extend(log.tids.iter().copied());
    assert_eq!(all, (1..=N).collect::<Vec<_>>(), "lost, duplicated or reordered");
    assert_eq!((log.resets, log.remote_resets), (0, 0));
    cli.shutdown();
    m.shutdown();
}

#[test]
fn cuts_while_the_dispatch_throttle_is_full_over_msgr1() {
    cuts_while_the_dispatch_throttle_is_full(ProtocolVersion::V1);
}

#[test]
fn cuts_while_the_dispatch_throttle_is_full_over_msgr2() {
    cuts_while_the_dispatch_throttle_is_full(ProtocolVersion::V2);
}
