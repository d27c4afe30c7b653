//! Reset semantics, callback by callback (Ceph's StatefulTest, StatelessTest,
//! ClientStandbyTest and NameAddrTest in test_msgr.cc): for `mark_down` on the client side
//! and on the server side under each policy, the exact sequence of `ms_handle_*` calls
//! each side sees, standby and the wake-up on send, sequence numbers restarting at 1
//! after a session reset, and `connect_to` on the server returning the connection it
//! accepted.
//!
//! Each side's callbacks are read in order from its recorder and named: the client's
//! connections `c1, c2…`, the server's `s1, s2…`, in order of first appearance.

use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{ConnState, Connection, Messenger, Policy};
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// One side's callbacks, as short strings with stable connection names.
struct Journal {
    rx: Receiver<Seen>,
    prefix: char,
    names: Vec<Connection>,
}

impl Journal {
    fn new(rx: Receiver<Seen>, prefix: char) -> Journal {
        Journal { rx, prefix, names: Vec::new() }
    }

    /// The connection's name (`c1`, `s2`…), naming it on first sight.
    fn name(&mut self, c: &Connection) -> String {
        let i = match self.names.iter().position(|n| n == c) {
            Some(i) => i,
            None => {
                self.names.push(c.clone());
                self.names.len() - 1
            }
        };
        format!("{}{}", self.prefix, i + 1)
    }

    /// The connection named `name`.
    fn conn(&self, name: &str) -> Connection {
        let i: usize = name[1..].parse().expect("a connection name");
        self.names[i - 1].clone()
    }

    fn describe(&mut self, seen: Seen) -> String {
        match seen {
            Seen::Connect(c) => format!("connect {}", self.name(&c)),
            Seen::Accept(c) => format!("accept {}", self.name(&c)),
            Seen::Reset(c) => format!("reset {}", self.name(&c)),
            Seen::RemoteReset(c) => format!("remote_reset {}", self.name(&c)),
            Seen::Refused(c) => format!("refused {}", self.name(&c)),
            Seen::Message(c, m) => format!("msg {} tid={} seq={}", self.name(&c), m.tid(), m.seq()),
        }
    }

    /// Callbacks up to and including `last`; fails if it does not come within the wait.
    fn until(&mut self, last: &str) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self.rx.recv_timeout(WAIT) {
                Ok(seen) => {
                    let d = self.describe(seen);
                    let done = d == last;
                    got.push(d);
                    if done {
                        return got;
                    }
                }
                Err(e) => panic!("{}: no `{last}` within {WAIT:?} ({e}); got {got:?}", self.prefix),
            }
        }
    }

    /// Callbacks in a short grace period (nothing, when nothing is due).
    fn quiet(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        let grace = Instant::now() + Duration::from_millis(300);
        while let Ok(seen) = self.rx.recv_deadline(grace) {
            got.push(self.describe(seen));
        }
        got
    }
}

fn send(c: &Connection, tid: u64) {
    c.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
}

/// Waits until the peer has acknowledged everything `c` sent: a lossless connection
/// that faults with unacked messages reconnects to resend them instead of parking in
/// standby (Ceph's fault rule), so a scenario about standby must start from here.
fn wait_acked(c: &Connection) {
    let deadline = Instant::now() + WAIT;
    while c.queued_send_bytes() != 0 {
        assert!(Instant::now() < deadline, "{c:?} still holds {} bytes", c.queued_send_bytes());
        std::thread::yield_now();
    }
}

fn wait_for_state(c: &Connection, state: ConnState) {
    let deadline = Instant::now() + WAIT;
    while c.state() != state {
        assert!(Instant::now() < deadline, "{c:?} never reached {state:?}");
        std::thread::yield_now();
    }
}

/// A server (echoing, so the client sees replies) and a client, as Ceph's fixture.
fn pair(server: Policy, client_policy: Policy) -> (Messenger, Journal, Messenger, Journal) {
    let (srv, _, srv_rx) = tests::loopback::server(EntityType::OSD, 1, server, true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, client_policy);
    (srv, Journal::new(srv_rx, 's'), cli, Journal::new(cli_rx, 'c'))
}

/// The first exchange of every scenario: the client connects and sends tid 1, the
/// server (echoing) accepts it as `s1`, the client gets the echo on `c1`. Returns `c1`.
fn first_exchange(
    srv: &Messenger,
    s: &mut Journal,
    cli: &Messenger,
    c: &mut Journal,
) -> Connection {
    let c1 = cli.connect_to(EntityType::OSD, srv.my_addr());
    send(&c1, 1);
    assert_eq!(c.until("msg c1 tid=1 seq=1"), ["connect c1", "msg c1 tid=1 seq=1"]);
    assert_eq!(s.until("msg s1 tid=1 seq=1"), ["accept s1", "msg s1 tid=1 seq=1"]);
    c1
}

/// The client's address as the server knows it (Ceph's `last_accept`).
fn last_accept(s: &mut Journal, name: &str) -> protocol::types::EntityAddr {
    s.conn(name).peer_addr().expect("the client's announced address")
}

/// StatefulTest: stateful server, lossless client.
/// 1. The client marks its connection down: no callback on either side; the server keeps
///    the session (standby) and `connect_to` the client's address returns it.
/// 2. The client connects anew (connect_seq 0): the server sees a peer restart and, with
///    resetcheck, resets the session — `ms_handle_remote_reset`, then `ms_handle_accept`
///    on the same handle, numbering from 1 again.
/// 3. The server marks its side down: the client reconnects, is told RESETSESSION
///    (`ms_handle_remote_reset`, then `ms_handle_connect`), and the server accepts a new
///    connection, seq 1 again both ways.
#[test]
fn stateful_server_and_lossless_client() {
    let (srv, mut s, cli, mut c) = pair(Policy::stateful_server(), Policy::lossless_client());
    let c1 = first_exchange(&srv, &mut s, &cli, &mut c);

    // 1. Client-side mark_down.
    c1.mark_down();
    assert!(!c1.is_connected());
    assert!(c1.send_message(test_message(MSG_TEST, 9, Bytes::new())).is_err());
    let client_addr = last_accept(&mut s, "s1");
    wait_for_state(&s.conn("s1"), ConnState::Standby);
    assert_eq!(srv.connect_to(EntityType::CLIENT, client_addr), s.conn("s1"), "state kept");
    assert_eq!(c.quiet(), Vec::<String>::new(), "mark_down calls nothing back");
    assert_eq!(s.quiet(), Vec::<String>::new(), "the server's session waits in standby");

    // 2. A new connection from the same client: a peer restart for the server.
    let c2 = cli.connect_to(EntityType::OSD, srv.my_addr());
    assert_ne!(c2, c1);
    send(&c2, 2);
    assert_eq!(c.until("msg c2 tid=2 seq=1"), ["connect c2", "msg c2 tid=2 seq=1"]);
    assert_eq!(
        s.until("msg s1 tid=2 seq=1"),
        ["remote_reset s1", "accept s1", "msg s1 tid=2 seq=1"],
        "resetcheck: the old session is reset, the handle carries the new one"
    );
    assert_eq!(srv.connect_to(EntityType::CLIENT, client_addr), s.conn("s1"));

    // 3. Server-side mark_down.
    s.conn("s1").mark_down();
    assert!(!s.conn("s1").is_connected());
    assert_eq!(c.until("connect c2"), ["remote_reset c2", "connect c2"]);
    send(&c2, 3);
    assert_eq!(c.until("msg c2 tid=3 seq=1"), ["msg c2 tid=3 seq=1"]);
    assert_eq!(s.until("msg s2 tid=3 seq=1"), ["accept s2", "msg s2 tid=3 seq=1"]);
    assert_eq!(srv.connect_to(EntityType::CLIENT, client_addr), s.conn("s2"));
    assert_eq!((c.quiet(), s.quiet()), (Vec::new(), Vec::new()));
    assert_eq!(cli.v1_counters().reset_session, 1, "told once that its session was gone");
    cli.shutdown();
    srv.shutdown();
}

/// StatelessTest: stateless server, lossy client.
/// 1. The client marks down: nothing on the client; the server's lossy session dies with
///    its socket (`ms_handle_reset`). A new connection is a new session on both sides.
/// 2. The server marks down: nothing on the server; the client learns it when it next
///    talks (a keepalive) — `ms_handle_reset` — and the handle stays closed; a new one
///    works.
#[test]
fn stateless_server_and_lossy_client() {
    let (srv, mut s, cli, mut c) = pair(Policy::stateless_server(), Policy::lossy_client());
    let c1 = first_exchange(&srv, &mut s, &cli, &mut c);

    // 1. Client-side mark_down.
    c1.mark_down();
    assert!(!c1.is_connected());
    assert_eq!(s.until("reset s1"), ["reset s1"]);
    assert_eq!(c.quiet(), Vec::<String>::new());
    let c2 = cli.connect_to(EntityType::OSD, srv.my_addr());
    assert_ne!(c2, c1);
    send(&c2, 2);
    assert_eq!(c.until("msg c2 tid=2 seq=1"), ["connect c2", "msg c2 tid=2 seq=1"]);
    assert_eq!(s.until("msg s2 tid=2 seq=1"), ["accept s2", "msg s2 tid=2 seq=1"], "lost state");

    // 2. Server-side mark_down.
    s.conn("s2").mark_down();
    assert!(!s.conn("s2").is_connected());
    c2.send_keepalive();
    assert_eq!(c.until("reset c2"), ["reset c2"]);
    assert!(!c2.is_connected());
    assert!(c2.send_message(test_message(MSG_TEST, 9, Bytes::new())).is_err(), "stays closed");
    assert_eq!(s.quiet(), Vec::<String>::new(), "the server's own mark_down is silent");
    let c3 = cli.connect_to(EntityType::OSD, srv.my_addr());
    send(&c3, 3);
    assert_eq!(c.until("msg c3 tid=3 seq=1"), ["connect c3", "msg c3 tid=3 seq=1"]);
    assert_eq!(s.until("msg s3 tid=3 seq=1"), ["accept s3", "msg s3 tid=3 seq=1"]);
    cli.shutdown();
    srv.shutdown();
}

/// ClientStandbyTest: stateful server, lossless_peer client. The server marks down: the
/// client, with nothing to send, parks in standby without a callback. A send wakes it:
/// it reconnects, is told RESETSESSION (`ms_handle_remote_reset`: the message that woke
/// it is discarded with the old session, as in Ceph), then `ms_handle_connect`; the next
/// message is seq 1 on a new server connection.
#[test]
fn lossless_peer_client_in_standby_wakes_on_send() {
    let (srv, mut s, cli, mut c) = pair(Policy::stateful_server(), Policy::lossless_peer());
    let c1 = first_exchange(&srv, &mut s, &cli, &mut c);
    let client_addr = last_accept(&mut s, "s1");
    assert_eq!(srv.connect_to(EntityType::CLIENT, client_addr), s.conn("s1"));

    s.conn("s1").mark_down();
    wait_for_state(&c1, ConnState::Standby);
    assert_eq!(c.quiet(), Vec::<String>::new(), "standby calls nothing back");
    assert_eq!(s.quiet(), Vec::<String>::new());

    send(&c1, 2);
    assert_eq!(c.until("connect c1"), ["remote_reset c1", "connect c1"]);
    assert_eq!(s.until("accept s2"), ["accept s2"]);
    send(&c1, 3);
    assert_eq!(c.until("msg c1 tid=3 seq=1"), ["msg c1 tid=3 seq=1"]);
    assert_eq!(s.until("msg s2 tid=3 seq=1"), ["msg s2 tid=3 seq=1"], "tid 2 went with the reset");
    assert_eq!(srv.connect_to(EntityType::CLIENT, client_addr), s.conn("s2"));
    assert_eq!((c.quiet(), s.quiet()), (Vec::new(), Vec::new()));
    cli.shutdown();
    srv.shutdown();
}

/// NameAddrTest: the client's connection knows the server's announced address and type;
/// the server's `connect_to` the client's address returns the connection it accepted, not
/// a new one — for a stateful server, and for a stateless one, which registers its lossy
/// clients (our `stateless_server` is also Ceph's `stateless_registered_server`, and
/// Ceph's NameAddrTest expects the accepted connection back from its stateless server).
#[test]
fn connect_to_on_the_server_returns_the_accepted_connection() {
    let (srv, mut s, cli, mut c) = pair(Policy::stateful_server(), Policy::lossless_client());
    let c1 = cli.connect_to(EntityType::OSD, srv.my_addr());
    send(&c1, 1);
    c.until("msg c1 tid=1 seq=1");
    s.until("msg s1 tid=1 seq=1");
    assert_eq!(c1.peer_addr(), Some(srv.my_addr()));
    assert_eq!(c1.peer_type(), Some(EntityType::OSD));
    let s1 = s.conn("s1");
    assert_eq!(s1.peer_type(), Some(EntityType::CLIENT));
    let back = srv.connect_to(EntityType::CLIENT, s1.peer_addr().expect("announced"));
    assert_eq!(back, s1, "the accepted connection, not a new one");
    send(&back, 7);
    assert_eq!(c.until("msg c1 tid=7 seq=2"), ["msg c1 tid=7 seq=2"], "after the echo of 1");
    assert_eq!(srv.connection_count(), 1);
    cli.shutdown();
    srv.shutdown();

    let (srv, mut s, cli, mut c) = pair(Policy::stateless_server(), Policy::lossy_client());
    let c1 = cli.connect_to(EntityType::OSD, srv.my_addr());
    send(&c1, 1);
    c.until("msg c1 tid=1 seq=1");
    s.until("msg s1 tid=1 seq=1");
    let s1 = s.conn("s1");
    let back = srv.connect_to(EntityType::CLIENT, s1.peer_addr().expect("announced"));
    assert_eq!(back, s1, "the accepted lossy connection");
    send(&back, 7);
    assert_eq!(c.until("msg c1 tid=7 seq=2"), ["msg c1 tid=7 seq=2"]);
    assert_eq!(srv.connection_count(), 1);
    cli.shutdown();
    srv.shutdown();
}

/// Two lossless peers (both bound; B echoes), A's connection marked down on A's side or
/// on B's side, under `lossless_peer` (no resetcheck) and `lossless_peer_reuse`.
/// * A marks down and connects anew (connect_seq 0): for B a peer restart. Without
///   resetcheck B keeps the session and only accepts again; with it, B reports
///   `ms_handle_remote_reset` first. A sees a plain new connection.
/// * B marks down: A parks in standby without a callback; its next message wakes it into
///   RESETSESSION (`ms_handle_remote_reset`, that message discarded, `ms_handle_connect`)
///   and B accepts a new connection. Seqs start at 1 again.
#[test]
fn lossless_peers_mark_down_on_either_side() {
    for (policy, resetcheck) in
        [(Policy::lossless_peer(), false), (Policy::lossless_peer_reuse(), true)]
    {
        for b_side in [false, true] {
            let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let (a, _, a_rx) = server_on(EntityType::OSD, 1, policy, false, any, test_config(2));
            let (b, _, b_rx) = server_on(EntityType::OSD, 2, policy, true, any, test_config(2));
            let (mut aj, mut bj) = (Journal::new(a_rx, 'a'), Journal::new(b_rx, 'b'));
            let case = format!("{policy:?}, mark_down on {}", if b_side { "B" } else { "A" });
            let a1 = a.connect_to(EntityType::OSD, b.my_addr());
            send(&a1, 1);
            assert_eq!(
                aj.until("msg a1 tid=1 seq=1"),
                ["connect a1", "msg a1 tid=1 seq=1"],
                "{case}"
            );
            assert_eq!(
                bj.until("msg b1 tid=1 seq=1"),
                ["accept b1", "msg b1 tid=1 seq=1"],
                "{case}"
            );
            wait_acked(&a1);
            wait_acked(&bj.conn("b1"));
            if !b_side {
                a1.mark_down();
                wait_for_state(&bj.conn("b1"), ConnState::Standby);
                assert_eq!((aj.quiet(), bj.quiet()), (Vec::new(), Vec::new()), "{case}");
                let a2 = a.connect_to(EntityType::OSD, b.my_addr());
                assert_ne!(a2, a1, "{case}");
                send(&a2, 2);
                assert_eq!(
                    aj.until("msg a2 tid=2 seq=1"),
                    ["connect a2", "msg a2 tid=2 seq=1"],
                    "{case}"
                );
                let expect: &[&str] = if resetcheck {
                    &["remote_reset b1", "accept b1", "msg b1 tid=2 seq=1"]
                } else {
                    &["accept b1", "msg b1 tid=2 seq=1"]
                };
                assert_eq!(bj.until("msg b1 tid=2 seq=1"), expect, "{case}");
            } else {
                bj.conn("b1").mark_down();
                wait_for_state(&a1, ConnState::Standby);
                assert_eq!((aj.quiet(), bj.quiet()), (Vec::new(), Vec::new()), "{case}");
                send(&a1, 2);
                assert_eq!(aj.until("connect a1"), ["remote_reset a1", "connect a1"], "{case}");
                assert_eq!(bj.until("accept b2"), ["accept b2"], "{case}");
                send(&a1, 3);
                assert_eq!(aj.until("msg a1 tid=3 seq=1"), ["msg a1 tid=3 seq=1"], "{case}");
                assert_eq!(bj.until("msg b2 tid=3 seq=1"), ["msg b2 tid=3 seq=1"], "{case}");
            }
            assert_eq!((aj.quiet(), bj.quiet()), (Vec::new(), Vec::new()), "{case}");
            a.shutdown();
            b.shutdown();
        }
    }
}

/// Sends on every connection it is told was reset, and reports what the send returned.
/// Its second accept waits (on the worker, in the fast hook) for that report: the
/// accepting worker then cannot run anything else before the reset is dispatched.
struct SendOnReset {
    sent: crossbeam_channel::Sender<Result<(), messenger::SendError>>,
    reported: Receiver<()>,
    reported_tx: crossbeam_channel::Sender<()>,
    accepts: std::sync::atomic::AtomicUsize,
}

impl messenger::Dispatcher<Connection> for SendOnReset {
    fn ms_dispatch(&self, _conn: &Connection, _msg: protocol::Message) -> messenger::Dispatched {
        messenger::Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_handle_fast_accept(&self, _conn: &Connection) {
        if self.accepts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            let _ = self.reported.recv_timeout(WAIT);
        }
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.sent.send(conn.send_message(test_message(MSG_TEST, 1, Bytes::new())));
        let _ = self.reported_tx.send(());
        true
    }
}

/// A lossy peer connecting again from the same address while its old connection is still
/// open, to a server with `policy`: the acceptor resets the old session
/// (`ms_handle_reset`), and the handle is closed by then, as after any other reset: a send
/// on it from the callback fails instead of being taken and dropped by its driver later.
fn old_lossy_session_is_closed_when_the_peer_connects_again(policy: Policy) {
    for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
        let srv =
            Messenger::new(protocol::types::EntityName::new(EntityType::OSD, 0), 1, test_config(1))
                .expect("messenger");
        srv.set_default_policy(policy);
        srv.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        srv.start().expect("start");
        let (sent, rx) = crossbeam_channel::unbounded();
        let (reported_tx, reported) = crossbeam_channel::unbounded();
        let dispatcher = SendOnReset { sent, reported, reported_tx, accepts: Default::default() };
        srv.add_dispatcher_head(std::sync::Arc::new(dispatcher)).expect("dispatcher");
        let addr = addr_for(proto, srv.my_addr());
        let old = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 77);
        let new = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 77);
        let sent = rx.recv_timeout(WAIT).expect("the old session was reset");
        assert_eq!(sent, Err(messenger::SendError::Closed), "{policy:?} {proto:?}");
        drop((old, new));
        srv.shutdown();
    }
}

/// Between lossy peers: two OSDs' heartbeat connections, say.
#[test]
fn a_lossy_session_replaced_by_a_new_connection_is_closed_when_reset() {
    old_lossy_session_is_closed_when_the_peer_connects_again(Policy::lossy_client());
}

/// At a stateless server (an OSD's public messenger: Ceph's `stateless_registered_server`):
/// the client's old session is reset instead of left open beside the new one with its
/// queued messages still to be dispatched.
#[test]
fn a_stateless_server_resets_a_clients_old_session_when_it_connects_again() {
    old_lossy_session_is_closed_when_the_peer_connects_again(Policy::stateless_server());
}

/// What the acceptor's dispatchers hear when a lossy session's peer connects again from
/// the same address, between lossy peers and at a stateless server: over msgr v1,
/// `ms_handle_remote_reset` and then `ms_handle_reset` for the old session (Ceph's
/// ProtocolV1 accept calls its `session_reset`, which queues the remote reset, then
/// `replace`, which stops it and queues the reset); over msgr2 only `ms_handle_reset`
/// (its ProtocolV2 stops the old session and queues the reset). Then the new one is
/// accepted.
#[test]
fn a_replaced_lossy_session_is_reset_remotely_over_v1_only() {
    for policy in [Policy::lossy_client(), Policy::stateless_server()] {
        for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
            let (srv, _, rx) = tests::loopback::server(EntityType::OSD, 1, policy, false);
            let mut s = Journal::new(rx, 's');
            let addr = addr_for(proto, srv.my_addr());
            let old = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 77);
            assert_eq!(s.until("accept s1"), ["accept s1"], "{policy:?} {proto:?}");
            let new = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 77);
            let want: &[&str] = match proto {
                messenger::ProtocolVersion::V1 => &["remote_reset s1", "reset s1", "accept s2"],
                messenger::ProtocolVersion::V2 => &["reset s1", "accept s2"],
            };
            assert_eq!(s.until("accept s2"), want, "{policy:?} {proto:?}");
            assert_eq!(s.quiet(), Vec::<String>::new(), "{policy:?} {proto:?}");
            drop((old, new));
            srv.shutdown();
        }
    }
}

/// What a server's dispatcher saw, in order: messages by tid (with their connection) and
/// resets. Its `ms_dispatch` (or `ms_fast_dispatch`, with `fast`) holds message 1 until
/// the test says go.
struct HoldFirst {
    fast: bool,
    seen: crossbeam_channel::Sender<(Connection, Option<u64>)>,
    held: crossbeam_channel::Sender<()>,
    go: Receiver<()>,
}

impl HoldFirst {
    fn message(&self, conn: &Connection, msg: &protocol::Message) {
        let _ = self.seen.send((conn.clone(), Some(msg.tid())));
        if msg.tid() == 1 {
            let _ = self.held.send(());
            let _ = self.go.recv_timeout(WAIT);
        }
    }
}

impl messenger::Dispatcher<Connection> for HoldFirst {
    fn ms_dispatch(&self, conn: &Connection, msg: protocol::Message) -> messenger::Dispatched {
        self.message(conn, &msg);
        messenger::Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &protocol::Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: protocol::Message) {
        self.message(conn, &msg);
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.seen.send((conn.clone(), None));
        true
    }
}

/// A server (2 workers, lossy policy `policy`) whose dispatcher is a [`HoldFirst`]: the
/// messenger, its address over `proto`, what the dispatcher saw, and the hold's
/// `held` / `go` ends.
#[allow(clippy::type_complexity)]
fn holding_server(
    policy: Policy,
    fast: bool,
    proto: messenger::ProtocolVersion,
) -> (
    Messenger,
    protocol::types::EntityAddr,
    Receiver<(Connection, Option<u64>)>,
    Receiver<()>,
    crossbeam_channel::Sender<()>,
) {
    let srv =
        Messenger::new(protocol::types::EntityName::new(EntityType::OSD, 0), 1, test_config(2))
            .expect("messenger");
    srv.set_default_policy(policy);
    srv.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (seen_tx, seen) = crossbeam_channel::unbounded();
    let (held_tx, held) = crossbeam_channel::unbounded();
    let (go_tx, go) = crossbeam_channel::unbounded();
    let d = HoldFirst { fast, seen: seen_tx, held: held_tx, go };
    srv.add_dispatcher_head(std::sync::Arc::new(d)).expect("dispatcher");
    let addr = addr_for(proto, srv.my_addr());
    (srv, addr, seen, held, go_tx)
}

/// Asserts that nothing more of `conn` is seen for a short grace period.
fn assert_nothing_more_of(seen: &Receiver<(Connection, Option<u64>)>, conn: &Connection) {
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok((c, what)) = seen.recv_deadline(grace) {
        assert!(&c != conn, "after its reset: {what:?} (None: a second reset)");
    }
}

/// A lossy session that faults while its messages wait for `ms_dispatch`: as Ceph's
/// `_stop` before `queue_reset`, they are discarded, and its `ms_handle_reset` is the
/// last callback of it (the one being dispatched, message 1, comes first). Before, the
/// reset overtook them (events go first) and they were dispatched on a closed session.
#[test]
fn a_lossy_reset_drops_what_waits_for_ms_dispatch_and_is_the_last_callback() {
    for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
        let (srv, addr, seen, held, go) = holding_server(Policy::stateless_server(), false, proto);
        let mut peer = tests::hostile::RawPeer::handshake(addr, Policy::lossy_client());
        let mut wire = Vec::new();
        for tid in 1..=5 {
            wire.extend(peer.message(tid, b"m"));
        }
        std::io::Write::write_all(&mut peer.sock, &wire).expect("write");
        let (conn, first) = seen.recv_timeout(WAIT).expect("message 1");
        assert_eq!(first, Some(1), "{proto:?}");
        held.recv_timeout(WAIT).expect("held in ms_dispatch");
        // Messages 2-5 are read before the end of the stream: they wait in the queue when
        // the session's fault resets it.
        drop(peer);
        wait_until(|| conn.state() == ConnState::Closed, || format!("{proto:?}: not reset"));
        go.send(()).expect("go");
        let (c, what) = seen.recv_timeout(WAIT).expect("the reset");
        assert_eq!((&c, what), (&conn, None), "{proto:?}: the reset is next");
        assert_nothing_more_of(&seen, &conn);
        srv.shutdown();
    }
}

/// A lossy peer connecting again while its old session's worker is inside a fast
/// dispatch of the old session's message 1, with message 2 and the end of the old stream
/// still to read: the newcomer resets the old session from the accept path, and the old
/// session's driver, when it goes on, delivers nothing more of it and reports no second
/// reset when it finds its stream ended.
#[test]
fn a_lossy_session_reset_by_a_newcomer_is_reset_once_and_delivers_nothing_after() {
    for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
        let (srv, addr, seen, held, go) = holding_server(Policy::lossy_client(), true, proto);
        // A first peer takes the listener's worker, so the session under test is held on
        // the other and the newcomer can still be accepted.
        let _other = tests::hostile::RawPeer::handshake(addr, Policy::lossy_client());
        let mut old = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 78);
        let mut wire = old.message(1, b"m");
        wire.extend(old.message(2, b"m"));
        std::io::Write::write_all(&mut old.sock, &wire).expect("write");
        let (conn, first) = seen.recv_timeout(WAIT).expect("message 1");
        assert_eq!(first, Some(1), "{proto:?}");
        held.recv_timeout(WAIT).expect("held in ms_fast_dispatch");
        drop(old);
        let _new = tests::hostile::RawPeer::handshake_as(addr, Policy::lossy_client(), 78);
        let (c, what) = seen.recv_timeout(WAIT).expect("the reset");
        assert_eq!((&c, what), (&conn, None), "{proto:?}: the old session is reset");
        go.send(()).expect("go");
        assert_nothing_more_of(&seen, &conn);
        srv.shutdown();
    }
}

/// A dial that nothing listens to (`ECONNREFUSED`) is told to the dispatchers
/// (`ms_handle_refused`), as Ceph's `AsyncConnection` tells them before its fault (an OSD
/// fails a heartbeat peer at once on it): a notification only, on every refused attempt,
/// while the fault policy goes on retrying (lossless and lossy connector alike), and a
/// message sent meanwhile is still taken.
#[test]
fn a_refused_dial_is_reported_on_every_attempt_while_the_session_retries() {
    for policy in [Policy::lossless_peer(), Policy::lossy_client()] {
        // Bound, not listening: every connect to it is refused, and the port stays ours.
        let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        closed.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        let port = closed.local_addr().expect("addr").as_socket().expect("inet").port();
        let target = protocol::types::EntityAddr::legacy(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            9,
        );
        let (cli, rx) = client(EntityType::OSD, 2, policy);
        let conn = cli.connect_to(EntityType::OSD, target);
        conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
        for attempt in 1..=2 {
            let refused = wait_for_event(&rx, |s| matches!(s, Seen::Refused(c) if c == &conn));
            assert!(refused, "{policy:?}: attempt {attempt} not reported refused");
        }
        assert_ne!(conn.state(), ConnState::Closed, "{policy:?}: the session goes on");
        conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("still taken");
        cli.shutdown();
        drop(closed);
    }
}

/// A fast dispatcher that marks the connection of every message disposable and answers
/// it at once, from the worker (a reply that can be taken before the mark was posted);
/// it reports messages and resets.
struct DisposeAndReply {
    seen: crossbeam_channel::Sender<Seen>,
}

impl messenger::Dispatcher<Connection> for DisposeAndReply {
    fn ms_dispatch(&self, conn: &Connection, msg: protocol::Message) -> messenger::Dispatched {
        self.ms_fast_dispatch(conn, msg);
        messenger::Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &protocol::Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: protocol::Message) {
        conn.mark_disposable();
        let _ = conn.send_message(test_message(MSG_TEST, msg.tid(), Bytes::new()));
        let _ = self.seen.send(Seen::Message(conn.clone(), msg));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.seen.send(Seen::Reset(conn.clone()));
        true
    }
}

/// Ceph's `mark_disposable` sets `policy.lossy` under the connection's lock at once, and
/// its ProtocolV1/V2 dispatch a message before they read the bytes behind it: when a
/// stateful server's dispatcher marks a client's lossless session disposable on a
/// message (and replies), the fault the next bytes raise resets the session
/// (`ms_handle_reset`) instead of parking it in standby for a peer that will not come
/// back. The bytes that fault come in the same write as the message.
#[test]
fn a_fault_after_mark_disposable_resets_a_lossless_session() {
    use std::io::Write;
    for proto in [messenger::ProtocolVersion::V1, messenger::ProtocolVersion::V2] {
        let srv =
            Messenger::new(protocol::types::EntityName::new(EntityType::OSD, 0), 1, test_config(1))
                .expect("messenger");
        srv.set_default_policy(Policy::stateful_server());
        srv.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        srv.start().expect("start");
        let (tx, seen) = crossbeam_channel::unbounded();
        srv.add_dispatcher_head(std::sync::Arc::new(DisposeAndReply { seen: tx }))
            .expect("dispatcher");
        let addr = addr_for(proto, srv.my_addr());
        let mut peer = tests::hostile::RawPeer::handshake(addr, Policy::lossless_client());
        let mut bytes = peer.message(1, b"last words");
        bytes.extend_from_slice(&[0xee; 64]);
        peer.sock.write_all(&bytes).expect("write");
        let conn = match seen.recv_timeout(WAIT) {
            Ok(Seen::Message(c, m)) if m.tid() == 1 => c,
            other => panic!("{proto:?}: the message first, got {other:?}"),
        };
        match seen.recv_timeout(WAIT) {
            Ok(Seen::Reset(c)) => assert_eq!(c, conn, "{proto:?}"),
            other => panic!("{proto:?}: no reset ({other:?}); the session is {:?}", conn.state()),
        }
        assert_eq!(conn.state(), ConnState::Closed, "{proto:?}");
        srv.shutdown();
    }
}

/// Serves the acceptor's half of a handshake on `sock` (as the acceptor `me`: v1 if it is a
/// legacy address, else msgr2) with our sans-IO machine, requiring `required` features
/// (none if empty) and answering a msgr2 reconnect with SESSION_RESET, every other
/// request by opening. Returns true once the session opened and the connector was told so
/// (the socket stays open until the caller drops it), false if the connector closed it
/// first.
fn serve_acceptor(
    sock: &mut std::net::TcpStream,
    me: protocol::types::EntityAddr,
    required: protocol::types::Features,
) -> bool {
    use std::io::Write;
    let mut cfg = protocol::Config::new(
        protocol::types::EntityName::new(EntityType::OSD, 0),
        protocol::types::EntityAddrVec { addrs: vec![me] },
    );
    if !required.is_empty() {
        cfg.policies = std::sync::Arc::new(
            protocol::Policy::default()
                .with_features(protocol::types::Features::PACIFIC_ADVERTISED, required),
        );
    }
    let (peer, local) = (sock.peer_addr().expect("peer"), sock.local_addr().expect("local"));
    let cfg = std::sync::Arc::new(cfg);
    let now = Instant::now();
    let mut c = if me.ty == protocol::types::AddrType::LEGACY {
        protocol::Connection::accept_v1(cfg, peer, local, now)
    } else {
        protocol::Connection::accept(cfg, peer, local, now)
    };
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut out = Vec::new();
        while c.poll_transmit(&mut out) > 0 {}
        for s in &out {
            if sock.write_all(s).is_err() {
                return false;
            }
        }
        let now = Instant::now();
        let mut opened = false;
        while let Some(ev) = c.poll_event() {
            match ev {
                protocol::Event::NeedBudget { .. } => c.grant_budget(now),
                protocol::Event::VerifyAuthorizer { .. } => c.handle_authorizer_verdict(
                    now,
                    protocol::AuthVerdict::Accept { reply: Bytes::new() },
                ),
                protocol::Event::AcceptRequest(req) => {
                    let decision = match req.kind {
                        protocol::RequestKind::Reconnect { .. } => {
                            protocol::Decision::ResetSession { full: true }
                        }
                        _ => protocol::Decision::Open,
                    };
                    c.handle_accept_decision(now, Policy::stateful_server(), decision, None)
                }
                protocol::Event::Opened(_) => opened = true,
                _ => {}
            }
        }
        if opened {
            let mut out = Vec::new();
            while c.poll_transmit(&mut out) > 0 {}
            for s in &out {
                sock.write_all(s).expect("write");
            }
            return true;
        }
        if c.wants_write() {
            continue;
        }
        match tests::read_some(sock, &mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => c.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
        }
    }
}

/// How the test acceptor refuses a reconnect for good.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// msgr v1: a connect reply with this tag (BADPROTOVER, FEATURES).
    V1(protocol::wire::Tag),
    /// msgr2: an acceptor that knows no such session (SESSION_RESET), then requires a
    /// feature we lack of the new session (IDENT_MISSING_FEATURES).
    V2MissingFeatures,
}

/// A lossless session that was open (its dispatchers heard `ms_handle_connect`) and is
/// refused for good when it reconnects (the peer, restarted, answers BADPROTOVER or
/// FEATURES over v1, or takes no auth method we have over msgr2) ends there: its handle
/// is closed, what it holds is gone. Its dispatchers hear `ms_handle_refused`, and then
/// `ms_handle_reset`, once: the session they were told was open has ended. (Before, they
/// heard of the refusal only: a daemon keeping state per session, or waiting for the
/// reset to dial again as Ceph's MonClient does, waited for ever, and a shutdown
/// reported nothing for it either.)
#[test]
fn a_lossless_session_refused_for_good_on_reconnect_is_reset_once() {
    use protocol::wire::Tag;
    for refusal in
        [Refusal::V1(Tag::BADPROTOVER), Refusal::V1(Tag::FEATURES), Refusal::V2MissingFeatures]
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let legacy = protocol::types::EntityAddr::legacy(listener.local_addr().expect("addr"), 7);
        let me = match refusal {
            Refusal::V1(_) => legacy,
            Refusal::V2MissingFeatures => {
                protocol::types::EntityAddr { ty: protocol::types::AddrType::MSGR2, ..legacy }
            }
        };
        let (cli, rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
        let mut c = Journal::new(rx, 'c');
        let c1 = cli.connect_to(EntityType::OSD, me);
        let (mut first, _) = listener.accept().expect("first connect");
        let none = protocol::types::Features::NONE;
        assert!(serve_acceptor(&mut first, me, none), "{refusal:?}: the first session opens");
        assert_eq!(c.until("connect c1"), ["connect c1"], "{refusal:?}");
        // Unacknowledged: the lossless session reconnects at once when its socket is cut.
        send(&c1, 1);
        drop(first);
        let (mut second, _) = listener.accept().expect("the reconnect");
        match refusal {
            Refusal::V1(tag) => {
                let _ = tests::hostile::accept_v1_connect(&mut second, me);
                let mut reply = protocol::wire::ConnectReply::new(tag);
                reply.protocol_version = 1;
                reply.features = protocol::types::Features(u64::MAX);
                std::io::Write::write_all(&mut second, &reply.to_bytes()).expect("refusal");
            }
            Refusal::V2MissingFeatures => {
                let lacking = protocol::types::Features(1 << 63);
                assert!(!serve_acceptor(&mut second, me, lacking), "refused, not opened");
                assert_eq!(c.until("remote_reset c1"), ["remote_reset c1"]);
            }
        }
        assert_eq!(c.until("refused c1"), ["refused c1"], "{refusal:?}");
        wait_for_state(&c1, ConnState::Closed);
        let reset = c.until("reset c1");
        assert_eq!(reset, ["reset c1"], "{refusal:?}: the ended session's reset");
        assert_eq!(c.quiet(), Vec::<String>::new(), "{refusal:?}: nothing more");
        cli.shutdown();
        assert_eq!(c.quiet(), Vec::<String>::new(), "{refusal:?}: no second reset at shutdown");
    }
}
