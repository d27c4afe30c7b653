//! Replies sent from `ms_fast_dispatch` on the connection being dispatched take a path of
//! their own (a queue on the worker's thread, no mailbox lock): they are bounded as any
//! other send, per connection and in total, leave in the order they were sent however
//! many one dispatch sends and whichever other thread sends on the connection before or
//! after them, are dropped by a `mark_down` made in the same dispatch, and give back
//! everything they were charged once written, or once the dispatch that sent them panics.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{unbounded, Receiver, Sender};
use messenger::{
    Connection, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion, SendError,
};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::hostile::RawPeer;
use tests::loopback::{addr_for, test_config, wait_until, FastHandler, OnWorker, WAIT};

const MSG_REPLY: u16 = 0x7f03;

/// What one fast dispatch did: how many replies `send_message` accepted, the first
/// error, and (after a `mark_down`) what one more send returned.
#[derive(Debug)]
struct Report {
    accepted: u64,
    first_error: Option<SendError>,
    after_mark_down: Option<Result<(), SendError>>,
    conn: Connection,
}

/// What [`Burst`] does after its replies: nothing, `mark_down`, or panic.
#[derive(Clone, Copy)]
enum Then {
    Return = 0,
    MarkDown = 1,
    Panic = 2,
}

/// Answers a request whose front is `[count: u32 LE, size: u32 LE, then: u8]` with
/// `count` replies of `size` bytes of front (tids 1, 2, …), all from one fast dispatch,
/// then marks the connection down or panics if asked (see [`Then`]).
struct Burst {
    reports: Sender<Report>,
}

fn reply(tid: u64, size: usize) -> Message {
    let mut m = Message::new(MSG_REPLY, Bytes::from(vec![tid as u8; size]));
    m.set_tid(tid);
    m
}

impl FastHandler for Burst {
    fn on_message(&self, conn: &Connection, msg: Message) {
        let f = msg.front();
        let word = |at: usize| {
            f.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
        };
        let then = f.get(8).copied().unwrap_or(0);
        let (count, size) = (word(0), word(4) as usize);
        let (mark_down, panic) = (then == Then::MarkDown as u8, then == Then::Panic as u8);
        let (mut accepted, mut first_error) = (0, None);
        for tid in 1..=u64::from(count) {
            match conn.send_message(reply(tid, size)) {
                Ok(()) => accepted += 1,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let after_mark_down = mark_down.then(|| {
            conn.mark_down();
            conn.send_message(reply(0, size))
        });
        let _ = self.reports.send(Report {
            accepted,
            first_error,
            after_mark_down,
            conn: conn.clone(),
        });
        assert!(!panic, "the dispatcher panics after its replies, as asked");
    }
}

/// A started server on one worker with `dispatcher`.
fn server_with(config: MessengerConfig, dispatcher: Arc<dyn Dispatcher<Connection>>) -> Messenger {
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    srv.add_dispatcher_head(dispatcher).expect("dispatcher");
    srv
}

/// A server on one worker answering with [`Burst`].
fn burst_server(config: MessengerConfig) -> (Messenger, Receiver<Report>) {
    let (tx, rx) = unbounded();
    (server_with(config, Arc::new(OnWorker(Burst { reports: tx }))), rx)
}

/// A server on one worker answering with [`Burst`], whose connections may queue `total`
/// each and together.
fn total_bound_server(total: u64) -> (Messenger, Receiver<Report>) {
    burst_server(MessengerConfig {
        max_queued_bytes: total,
        max_total_queued_bytes: total,
        ..test_config(1)
    })
}

/// Asks `srv` for `count` replies of `size` bytes, more than a bound admits, and checks it
/// refused exactly those after the first `admitted`, which arrive in order. Returns the
/// peer (kept open) and the dispatch's report.
fn bounded_at(
    srv: &Messenger,
    reports: &Receiver<Report>,
    proto: ProtocolVersion,
    (count, size): (u32, u32),
    admitted: u64,
) -> (RawPeer, Report) {
    let mut peer = ask(srv, proto, count, size, Then::Return);
    let report = reports.recv_timeout(WAIT).expect("dispatched");
    assert_eq!(report.accepted, admitted, "refused at the bound, not before or after");
    assert_eq!(report.first_error, Some(SendError::QueueFull));
    receive_in_order(&mut peer, admitted, size as usize);
    (peer, report)
}

/// Asks `srv` (over `proto`) for `count` replies of `size` bytes from one fast dispatch.
fn ask(srv: &Messenger, proto: ProtocolVersion, count: u32, size: u32, then: Then) -> RawPeer {
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let mut front = Vec::new();
    front.extend_from_slice(&count.to_le_bytes());
    front.extend_from_slice(&size.to_le_bytes());
    front.push(then as u8);
    let frame = peer.message(1, &front);
    std::io::Write::write_all(&mut peer.sock, &frame).expect("request");
    peer
}

fn send_queues(srv: &Messenger, field: &str) -> u64 {
    srv.counters_json()["msgr_send_queues"][field].as_u64().unwrap_or(0)
}

/// Reads `n` replies and checks they are tids 1..=n, each with its own front.
fn receive_in_order(peer: &mut RawPeer, n: u64, size: usize) {
    let got = peer.receive(n as usize).expect("replies");
    for (i, m) in got.iter().enumerate() {
        let tid = i as u64 + 1;
        assert_eq!(m.tid(), tid, "reply {i} out of order");
        assert_eq!(m.front().len(), size);
        assert!(m.front().iter().all(|&b| b == tid as u8), "reply {tid}: wrong front");
    }
}

/// Everything charged for the replies is given back once they are written.
fn assert_released(srv: &Messenger, report: &Report) {
    wait_until(
        || send_queues(srv, "val") == 0 && report.conn.queued_send_bytes() == 0,
        || {
            format!(
                "still held: {} in total, {} on the connection",
                send_queues(srv, "val"),
                report.conn.queued_send_bytes()
            )
        },
    );
}

// One dispatch sending far past the per-connection bound: the bound refuses exactly the
// replies that would pass it (nothing is written while the dispatch runs).
fn bounded_per_connection_over(proto: ProtocolVersion) {
    const SIZE: u32 = 1000;
    let cost = reply(1, SIZE as usize).send_cost();
    let bound = 40 * cost + cost / 2;
    let (srv, reports) =
        burst_server(MessengerConfig { max_queued_bytes: bound, ..test_config(1) });
    let (_peer, report) = bounded_at(&srv, &reports, proto, (1000, SIZE), 40);
    assert_eq!(send_queues(&srv, "refused"), 960);
    assert_released(&srv, &report);
    srv.shutdown();
}

#[test]
fn fast_dispatch_replies_are_bounded_per_connection() {
    bounded_per_connection_over(ProtocolVersion::V1);
}

#[test]
fn fast_dispatch_replies_are_bounded_per_connection_over_msgr2() {
    bounded_per_connection_over(ProtocolVersion::V2);
}

// The same against the messenger's total bound (charged ahead in chunks: still exact),
// with part of it held by another connection's messages.
#[test]
fn fast_dispatch_replies_are_bounded_in_total() {
    const SIZE: u32 = 100;
    let cost = reply(1, SIZE as usize).send_cost();
    let total = 64 << 10;
    let (srv, reports) = total_bound_server(total);
    // A listener that never accepts: the dial completes into its backlog and no banner
    // ever comes, so these wait, charged to the total. (Bound for the whole test: a port
    // released here could be taken by another test's listener.)
    srv.set_policy(EntityType::MON, Policy::lossless_client());
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = nowhere.local_addr().expect("addr");
    let waiting = srv.get_connection(EntityType::MON, addr);
    let mut held = 0;
    for tid in 1..=20 {
        let m = reply(tid, 1000);
        held += m.send_cost();
        waiting.send_message(m).expect("queued");
    }
    let admitted = (total - held) / cost;
    let (_peer, report) = bounded_at(&srv, &reports, ProtocolVersion::V1, (5000, SIZE), admitted);
    waiting.mark_down();
    assert_released(&srv, &report);
    srv.shutdown();
    drop(nowhere);
}

// More replies from one dispatch than the session takes into its queue at once (1,024):
// the rest wait in the mailbox and follow, in order.
fn more_than_the_session_takes_over(proto: ProtocolVersion) {
    let (srv, reports) = burst_server(test_config(1));
    let mut peer = ask(&srv, proto, 3000, 8, Then::Return);
    let report = reports.recv_timeout(WAIT).expect("dispatched");
    assert_eq!((report.accepted, &report.first_error), (3000, &None));
    receive_in_order(&mut peer, 3000, 8);
    assert_released(&srv, &report);
    srv.shutdown();
}

#[test]
fn more_replies_than_the_session_takes_at_once_follow_in_order() {
    more_than_the_session_takes_over(ProtocolVersion::V1);
}

#[test]
fn more_replies_than_the_session_takes_at_once_follow_in_order_over_msgr2() {
    more_than_the_session_takes_over(ProtocolVersion::V2);
}

// Ceph's mark_down discards what is queued: replies the same dispatch sent before it
// never leave, and a send after it fails.
#[test]
fn mark_down_in_fast_dispatch_drops_the_replies_it_sent() {
    let (srv, reports) = burst_server(test_config(1));
    let mut peer = ask(&srv, ProtocolVersion::V1, 5, 16, Then::MarkDown);
    let report = reports.recv_timeout(WAIT).expect("dispatched");
    assert_eq!((report.accepted, &report.first_error), (5, &None));
    assert_eq!(report.after_mark_down, Some(Err(SendError::Closed)));
    // The socket closes; nothing was written to it before.
    let started = Instant::now();
    let mut rest = Vec::new();
    peer.sock.read_to_end(&mut rest).expect("closed, not timed out");
    assert!(started.elapsed() < WAIT);
    assert!(rest.is_empty(), "{} bytes written after the handshake", rest.len());
    assert_released(&srv, &report);
    srv.shutdown();
}

// A fast dispatcher that panics after its replies: the event center survives it and the
// connection goes, and what the replies were charged goes back with the chunk of the
// total bound the driver had reserved ahead. Either one kept would refuse later sends
// before the bound, which the second request measures exactly.
fn a_panic_after_replies_gives_everything_back_over(proto: ProtocolVersion) {
    const SIZE: u32 = 100;
    let cost = reply(1, SIZE as usize).send_cost();
    let total = 256 << 10;
    let (srv, reports) = total_bound_server(total);
    let panics = || srv.pool().handles().iter().map(|h| h.panics()).sum::<u64>();
    let _gone = ask(&srv, proto, 200, SIZE, Then::Panic);
    let report = reports.recv_timeout(WAIT).expect("dispatched");
    assert_eq!((report.accepted, &report.first_error), (200, &None));
    wait_until(|| panics() == 1, || format!("{} panics counted", panics()));
    assert_released(&srv, &report);

    let (_peer, report) = bounded_at(&srv, &reports, proto, (5000, SIZE), total / cost);
    assert_released(&srv, &report);
    srv.shutdown();
}

#[test]
fn a_panic_after_fast_dispatch_replies_gives_everything_back() {
    a_panic_after_replies_gives_everything_back_over(ProtocolVersion::V1);
}

#[test]
fn a_panic_after_fast_dispatch_replies_gives_everything_back_over_msgr2() {
    a_panic_after_replies_gives_everything_back_over(ProtocolVersion::V2);
}

/// Sends on a connection from a thread of its own, when asked, and says when it has.
fn sender_thread() -> Sender<(Connection, u64, Sender<()>)> {
    let (tx, rx) = unbounded::<(Connection, u64, Sender<()>)>();
    std::thread::spawn(move || {
        for (conn, tid, done) in rx {
            conn.send_message(reply(tid, 8)).expect("queued");
            let _ = done.send(());
        }
    });
    tx
}

/// On a request whose front is `[1]`, replies (tid 1) and then has another thread send
/// tid 2 before returning; on `[2]`, has the other thread send tid 1 first, then
/// replies (tid 2). Either way the other thread's send happens-after or happens-before
/// the reply, so tid 1 must leave first.
struct Handoff {
    other: Sender<(Connection, u64, Sender<()>)>,
}

impl Handoff {
    fn by_other_thread(&self, conn: &Connection, tid: u64) {
        let (done, sent) = unbounded();
        self.other.send((conn.clone(), tid, done)).expect("sender thread");
        sent.recv_timeout(WAIT).expect("the other thread sent");
    }
}

impl FastHandler for Handoff {
    fn on_message(&self, conn: &Connection, msg: Message) {
        if msg.front().first() == Some(&1) {
            conn.send_message(reply(1, 8)).expect("reply");
            self.by_other_thread(conn, 2);
        } else {
            self.by_other_thread(conn, 1);
            conn.send_message(reply(2, 8)).expect("reply");
        }
    }
}

fn ordered_with_another_thread(first: u8) {
    let srv = server_with(test_config(1), Arc::new(OnWorker(Handoff { other: sender_thread() })));
    let mut peer = RawPeer::handshake(srv.my_addr(), Policy::lossy_client());
    let frame = peer.message(1, &[first]);
    std::io::Write::write_all(&mut peer.sock, &frame).expect("request");
    receive_in_order(&mut peer, 2, 8);
    srv.shutdown();
}

// A thread the dispatcher tells about its reply sends after it: the reply leaves first.
#[test]
fn a_reply_leaves_before_what_another_thread_sends_after_it() {
    ordered_with_another_thread(1);
}

// A thread whose send the dispatcher waited for sent before the reply: its message
// leaves first.
#[test]
fn a_reply_leaves_after_what_another_thread_sent_before_it() {
    ordered_with_another_thread(2);
}
