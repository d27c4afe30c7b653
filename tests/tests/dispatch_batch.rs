//! A burst read at once is handed on in batches (`MessengerConfig::dispatch_batch`): the
//! dispatch thread gets the first queued messages, and with `early_batches` a peer that
//! sends many requests in one write gets the first replies, while the rest are still
//! being parsed, as from Ceph, which hands on and writes after every message. Checked by
//! holding the fast dispatch of a later message until the first batch has arrived where
//! it goes: handed on only at the end of the read, it never does. These servers batch
//! whatever CPU the peer sends from (`colocated_peer_batching` off); the last tests pin
//! a server's worker and its peer to one CPU, where the burst is answered at the end of
//! the read. Without `early_batches` (on by default) every burst is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use event_center::{Context, TimerTarget};
use messenger::{Connection, Dispatched, Dispatcher, Message, MessengerConfig, Policy};
use protocol::types::EntityType;
use protocol::ProtocolVersion;
use tests::hostile::{RawPeer, MSG_HOSTILE};
use tests::loopback::{addr_for, server_on, test_config, WAIT};

/// The reply's type.
const MSG_REPLY: u16 = 0x7f02;

/// The server's `dispatch_batch`, and the burst: three batches in one write.
const BATCH: usize = 8;
const BURST: u64 = 3 * BATCH as u64;

/// A server handing on every `dispatch_batch` messages at most, on one worker, making
/// early batches (the default).
fn batch_server(
    dispatch_batch: usize,
) -> (messenger::Messenger, std::net::SocketAddr, Receiver<tests::loopback::Seen>) {
    let config =
        MessengerConfig { dispatch_batch, colocated_peer_batching: false, ..test_config(1) };
    assert!(config.early_batches, "on by default");
    server_with(config)
}

/// A server with `config` on one worker.
fn server_with(
    config: MessengerConfig,
) -> (messenger::Messenger, std::net::SocketAddr, Receiver<tests::loopback::Seen>) {
    let addr = "127.0.0.1:0".parse().expect("addr");
    server_on(EntityType::OSD, 1, Policy::stateless_server(), false, addr, config)
}

/// Writes [`BURST`] requests (tids 1, 2, …) with `front` in one write, and makes the
/// peer's reads give up after 5 s.
fn send_burst(peer: &mut RawPeer, front: &[u8]) {
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write_requests(peer, 1..=BURST, front);
}

/// Writes requests with tids `tids` and `front` in one write.
fn write_requests(peer: &mut RawPeer, tids: std::ops::RangeInclusive<u64>, front: &[u8]) {
    let bytes: Vec<u8> = tids.flat_map(|tid| peer.message(tid, front)).collect();
    std::io::Write::write_all(&mut peer.sock, &bytes).expect("burst");
}

/// Whether the server has written anything to `peer` yet, without waiting: a
/// non-blocking peek of one byte (`WouldBlock`: nothing). Called while the worker is held
/// inside a dispatch, so whatever it wrote before is in the socket.
fn peek_written(peer: &RawPeer) -> std::io::Result<usize> {
    peer.sock.set_nonblocking(true).expect("nonblocking");
    let written = tests::peek_some(&peer.sock, &mut [0u8; 1]);
    peer.sock.set_nonblocking(false).expect("blocking");
    written
}

/// Waits until request `tid` is held inside its dispatch (reported on `entered`), looks
/// whether the server wrote anything to `peer` before it, releases it (`go`), and fails
/// saying `what` if something was written.
fn nothing_written_before(
    peer: &RawPeer,
    entered: &Receiver<u64>,
    go: &Sender<()>,
    tid: u64,
    what: &str,
) {
    assert_eq!(entered.recv_timeout(WAIT), Ok(tid), "request {tid} was dispatched");
    let early = peek_written(peer);
    go.send(()).expect("release the held request");
    match early {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("{what}: {other:?}"),
    }
}

/// Returns once the server's only worker is judged not mostly busy. On a loaded machine
/// its handshake work may be preempted long enough to read as busy, and a busy worker
/// makes early batches of 8 (`a_busy_worker_batches_at_least_8`).
fn until_worker_not_busy(srv: &messenger::Messenger) {
    let (tx, rx) = bounded(1);
    srv.pool().handle(0).dispatch_event_external(move |cx| look(cx, tx, 100)).expect("post");
    assert_eq!(rx.recv_timeout(WAIT), Ok(true), "the server's worker stayed mostly busy");
}

/// On the worker: answers on `tx` whether it is judged not busy, once it is or after
/// `left` more looks. Each further look is a timer 3 ms out, so the worker waits in
/// `poll` for longer than a load window, which the loop iteration running the timer
/// judges before it runs it.
fn look(cx: &mut Context<'_>, tx: Sender<bool>, left: u32) {
    if !cx.mostly_busy() || left == 0 {
        let _ = tx.send(!cx.mostly_busy());
        return;
    }
    let again = move |cx: &mut Context<'_>| look(cx, tx, left - 1);
    cx.create_time_event(Duration::from_millis(3), TimerTarget::Fn(Box::new(again)));
}

/// Once the held request was let go: it says so, every reply of the burst arrives in
/// order, and the server stops.
fn all_replies_in_order(srv: messenger::Messenger, peer: &mut RawPeer, held: &Receiver<bool>) {
    assert_eq!(held.recv_timeout(WAIT), Ok(true), "the held request was released");
    let replies = peer.receive(BURST as usize).expect("the burst's replies");
    let tids: Vec<u64> = replies.iter().map(Message::tid).collect();
    assert_eq!(tids, (1..=BURST).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

/// Answers every request on its connection from fast dispatch, with `reply` as the
/// reply's front; each request with a tid in `hold` first reports that it is being
/// dispatched (`entered`: the worker is inside fast dispatch, so whatever it wrote
/// before is in the peer's socket), waits (at most [`WAIT`]) for the test's go-ahead
/// and reports whether it came (`held`).
struct Hold {
    hold: Vec<u64>,
    reply: Bytes,
    entered: Sender<u64>,
    go: Receiver<()>,
    held: Sender<bool>,
}

/// Adds a `Hold` dispatcher (empty replies) at the head of `srv`'s that holds request
/// `hold` in fast dispatch: returns the sender that releases it, the receiver told
/// whether it was held, and the receiver of the tids entering dispatch.
fn hold_request(
    srv: &messenger::Messenger,
    hold: u64,
) -> (Sender<()>, Receiver<bool>, Receiver<u64>) {
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    let (entered, entered_rx) = crossbeam_channel::unbounded();
    let d = Hold { hold: vec![hold], reply: Bytes::new(), entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    (go_tx, held_rx, entered_rx)
}

impl Dispatcher<Connection> for Hold {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_HOSTILE
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        if self.hold.contains(&msg.tid()) {
            let _ = self.entered.send(msg.tid());
            let released = self.go.recv_timeout(WAIT).is_ok();
            let _ = self.held.send(released);
        }
        let mut reply = Message::new(MSG_REPLY, self.reply.clone());
        reply.set_tid(msg.tid());
        let _ = conn.send_message(reply);
    }
}

/// A server with `dispatch_batch` answers a burst of requests carrying `front` with
/// replies carrying `reply` in batches of [`BATCH`].
fn burst_is_answered_in_batches(
    proto: ProtocolVersion,
    dispatch_batch: usize,
    front: &[u8],
    reply: &[u8],
) {
    // The first request of the third batch waits until the first batch is answered. Not
    // the second's: the burst (3 × 8 × 4 KiB in the large tests) may reach the server in
    // two reads, and an early batch counts the messages of its own read, so a first
    // read of fewer than 8 is answered at its end and the rest of the first 8 with the
    // next read's first batch — before its 8th message (at most the 15th), never after
    // the 17th.
    first_replies_before(proto, dispatch_batch, front, reply, BATCH, 2 * BATCH as u64 + 1);
}

/// A server with `dispatch_batch` answers the first `first` of a burst of requests
/// carrying `front` (replies carrying `reply`) before it dispatches request `hold`.
fn first_replies_before(
    proto: ProtocolVersion,
    dispatch_batch: usize,
    front: &[u8],
    reply: &[u8],
    first: usize,
    hold: u64,
) {
    // Up to three servers: one whose worker the machine's load made look mostly busy
    // as the burst came (a busy worker's early batches are 8 at least, by design, so the
    // held request comes before any reply) is no verdict on the batching of an idle one.
    // Every attempt checks the order of all the replies; the early batch must be seen
    // in one of them.
    let mut late = Vec::new();
    for attempt in 1..=3 {
        match replies_before(proto, dispatch_batch, front, reply, first, hold) {
            Ok(()) => return,
            Err(e) => {
                eprintln!("attempt {attempt}: {e}");
                late.push(e);
            }
        }
    }
    panic!("the first batch was not answered early in any of 3 attempts: {late:?}");
}

/// One server and burst of [`first_replies_before`]: `Err` when the first replies did
/// not come before the held request's.
fn replies_before(
    proto: ProtocolVersion,
    dispatch_batch: usize,
    front: &[u8],
    reply: &[u8],
    first: usize,
    hold: u64,
) -> Result<(), String> {
    let (srv, _, _rx) = batch_server(dispatch_batch);
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    let reply = Bytes::copy_from_slice(reply);
    let (entered, _) = crossbeam_channel::unbounded();
    let d = Hold { hold: vec![hold], reply, entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    until_worker_not_busy(&srv);
    send_burst(&mut peer, front);

    // One read may bring more than a batch's replies (all those before the held one).
    let early = peer.receive(first);
    go_tx.send(()).expect("release the held request");
    let early = match early {
        Ok(early) => early,
        Err(e) => {
            assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");
            let all = peer.receive(BURST as usize).expect("the replies once released");
            let tids: Vec<u64> = all.iter().map(Message::tid).collect();
            assert_eq!(tids, (1..=BURST).collect::<Vec<_>>());
            srv.shutdown();
            srv.wait();
            return Err(e);
        }
    };
    let tids: Vec<u64> = early.iter().map(Message::tid).collect();
    assert_eq!(tids, (1..=tids.len() as u64).collect::<Vec<_>>());
    assert!(tids.len() < hold as usize, "{} replies before the held request's", tids.len());
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");

    // And the rest follows, in order.
    let rest = peer.receive(BURST as usize - early.len()).expect("the rest of the replies");
    let tids: Vec<u64> = rest.iter().map(Message::tid).collect();
    assert_eq!(tids, (early.len() as u64 + 1..=BURST).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
    Ok(())
}

#[test]
fn a_burst_read_at_once_is_answered_in_batches() {
    burst_is_answered_in_batches(ProtocolVersion::V1, BATCH, b"ping", b"");
}

#[test]
fn a_burst_read_at_once_is_answered_in_batches_over_msgr2() {
    burst_is_answered_in_batches(ProtocolVersion::V2, BATCH, b"ping", b"");
}

/// With the default `dispatch_batch` (64), a burst of 4 KiB requests is answered in
/// early batches: a batch that carried 16 KiB goes early (a peer with a small window of
/// large messages would sit idle for the other 60).
#[test]
fn a_burst_of_large_messages_is_answered_in_early_batches() {
    let default = MessengerConfig::default().dispatch_batch;
    assert!(default > BURST as usize, "the burst fits in one default batch");
    burst_is_answered_in_batches(ProtocolVersion::V1, default, &[7; 4096], b"");
}

#[test]
fn a_burst_of_large_messages_is_answered_in_early_batches_over_msgr2() {
    let default = MessengerConfig::default().dispatch_batch;
    burst_is_answered_in_batches(ProtocolVersion::V2, default, &[7; 4096], b"");
}

/// And the first early batch is 4 requests of 4 KiB (16 KiB), so a window of 4 KiB
/// requests gets its first replies before the server parses the 8th: at depth 32 a
/// client sends again sooner (with 8 and 32 KiB, 4 KiB at depth 32 ran ~11 % fewer round
/// trips). Should the burst reach the server in two reads, a first read of fewer than 4
/// is answered at its end, and the next read's first 4 with the 7th at the latest.
fn the_first_4_of_large_messages_go_early(proto: ProtocolVersion) {
    let default = MessengerConfig::default().dispatch_batch;
    first_replies_before(proto, default, &[7; 4096], b"", 4, 8);
}

#[test]
fn the_first_4_of_a_burst_of_large_messages_are_answered_before_the_8th() {
    the_first_4_of_large_messages_go_early(ProtocolVersion::V1);
}

#[test]
fn the_first_4_of_a_burst_of_large_messages_are_answered_before_the_8th_over_msgr2() {
    the_first_4_of_large_messages_go_early(ProtocolVersion::V2);
}

/// Writes requests `tids` of 4 KiB while the server's only worker spins for 5 ms and
/// until the whole burst is in the socket (a writer preempted on a loaded machine must
/// not leave part of it for a later read): the loop iteration that reads the burst
/// closes a load window of nothing but running, so its pump starts busy, and reads all
/// of it.
fn burst_on_busy_worker(
    srv: &messenger::Messenger,
    peer: &mut RawPeer,
    tids: std::ops::RangeInclusive<u64>,
) {
    front_burst_on_busy_worker(srv, peer, tids, &[7; 4096]);
}

/// [`burst_on_busy_worker`] with requests carrying `front`.
fn front_burst_on_busy_worker(
    srv: &messenger::Messenger,
    peer: &mut RawPeer,
    tids: std::ops::RangeInclusive<u64>,
    front: &[u8],
) {
    let written = spin_worker(srv);
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write_requests(peer, tids, front);
    written.store(true, Ordering::Release);
}

/// Makes the server's only worker spin for 10 ms and until the returned flag is set
/// (once the test wrote its whole burst): the loop iteration that reads the burst
/// closes a load window of nothing but running, so its pump starts busy, and reads all
/// of it.
fn spin_worker(srv: &messenger::Messenger) -> Arc<AtomicBool> {
    let (spinning_tx, spinning) = bounded(1);
    let written = Arc::new(AtomicBool::new(false));
    let burst_in = written.clone();
    srv.pool()
        .handle(0)
        .dispatch_event_external(move |_cx| {
            let _ = spinning_tx.send(());
            let start = Instant::now();
            // The load meter judges windows of at least 2 ms, carrying shorter ones over:
            // idle time of up to 2 ms before this spin can share its window, and 10 ms
            // of spin keep that window busy (80 %) whatever it was.
            while (start.elapsed() < Duration::from_millis(10) || !burst_in.load(Ordering::Acquire))
                && start.elapsed() < WAIT
            {
                std::hint::spin_loop();
            }
        })
        .expect("post");
    spinning.recv_timeout(WAIT).expect("the worker runs the spin");
    written
}

/// But a worker that was mostly busy (`Context::mostly_busy`) makes early batches of 8
/// at least, where the smaller batches would cost it writes it has no time for: a burst
/// of 4 KiB requests that lands while the server's worker runs ≥ 5 ms of other work gets
/// no reply before its 8th request is dispatched (the 4th would be answered before it on
/// an idle worker, above).
fn a_busy_worker_batches_at_least_8(proto: ProtocolVersion) {
    let (srv, _, _rx) = batch_server(MessengerConfig::default().dispatch_batch);
    let (go_tx, held_rx, entered_rx) = hold_request(&srv, 8);
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    burst_on_busy_worker(&srv, &mut peer, 1..=BURST);
    nothing_written_before(&peer, &entered_rx, &go_tx, 8, "a busy worker answered early");
    all_replies_in_order(srv, &mut peer, &held_rx);
}

#[test]
fn a_busy_worker_answers_nothing_before_the_8th_of_a_burst_of_large_messages() {
    a_busy_worker_batches_at_least_8(ProtocolVersion::V1);
}

#[test]
fn a_busy_worker_answers_nothing_before_the_8th_of_a_burst_of_large_messages_over_msgr2() {
    a_busy_worker_batches_at_least_8(ProtocolVersion::V2);
}

/// The second burst of [`busy_worker_second_burst`]: `len` requests carrying `front`,
/// the `held`th held in its dispatch; with slow messages at least `early` replies are
/// written before it.
struct SecondBurst {
    len: u64,
    front: &'static [u8],
    held: u64,
    early: usize,
}

/// 4 KiB requests: early batches of 16 with quick messages, 8 with slow ones.
const LARGE_SECOND: SecondBurst = SecondBurst { len: BURST, front: &[7; 4096], held: 16, early: 8 };

/// Small requests with empty replies: check points come every 16 messages, so one at
/// the 41st at the latest has 16 KiB of replies (~26) to write; with quick messages
/// (`QUICK_BUSY_EARLY_SENT_BYTES`) they wait for `dispatch_batch` (64).
const SMALL_SECOND: SecondBurst = SecondBurst { len: 56, front: b"ping", held: 48, early: 16 };

/// A busy worker whose messages are quick (`MessengerConfig::quick_message`) makes
/// early batches of 16 once a batch of them was timed, and writes small replies sent
/// from fast dispatch only by the `dispatch_batch`; one whose messages are not keeps
/// batches of 8 and writes small replies at a check point once they cost 16 KiB. Two
/// bursts land on the busy worker: the first (4 KiB requests) times its second batch,
/// and the second's request `second.held` is held in its dispatch. With every message
/// quick (a bound of 1 s, which even a debug build's 4 KiB meet) nothing was written
/// before it; with none quick (zero) the first `second.early` replies were.
fn busy_worker_second_burst(proto: ProtocolVersion, quick_message: Duration, second: SecondBurst) {
    let config =
        MessengerConfig { quick_message, colocated_peer_batching: false, ..test_config(1) };
    assert_eq!(config.dispatch_batch, 64, "the default");
    let (srv, _, _rx) = server_with(config);
    let hold = BURST + second.held;
    let (go_tx, held_rx, entered_rx) = hold_request(&srv, hold);
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    burst_on_busy_worker(&srv, &mut peer, 1..=BURST);
    let first = peer.receive(BURST as usize).expect("the first burst's replies");
    assert_eq!(first.iter().map(Message::tid).collect::<Vec<_>>(), (1..=BURST).collect::<Vec<_>>());

    let last = BURST + second.len;
    front_burst_on_busy_worker(&srv, &mut peer, BURST + 1..=last, second.front);
    let written = if quick_message > Duration::ZERO {
        nothing_written_before(&peer, &entered_rx, &go_tx, hold, "quick messages went early");
        0
    } else {
        assert_eq!(entered_rx.recv_timeout(WAIT), Ok(hold), "request {hold} was dispatched");
        let early = peer.receive(second.early);
        go_tx.send(()).expect("release the held request");
        let early = early.unwrap_or_else(|e| panic!("slow messages were not answered early: {e}"));
        let tids: Vec<u64> = early.iter().map(Message::tid).collect();
        assert_eq!(tids, (BURST + 1..=BURST + tids.len() as u64).collect::<Vec<_>>());
        tids.len()
    };
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");
    let rest = peer.receive(second.len as usize - written).expect("the rest of the replies");
    let tids: Vec<u64> = rest.iter().map(Message::tid).collect();
    assert_eq!(tids, (BURST + 1 + written as u64..=last).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

#[test]
fn a_busy_worker_with_quick_messages_answers_nothing_before_the_16th() {
    busy_worker_second_burst(ProtocolVersion::V1, Duration::from_secs(1), LARGE_SECOND);
}

#[test]
fn a_busy_worker_with_quick_messages_answers_nothing_before_the_16th_over_msgr2() {
    busy_worker_second_burst(ProtocolVersion::V2, Duration::from_secs(1), LARGE_SECOND);
}

#[test]
fn a_busy_worker_with_slow_messages_answers_the_first_8_before_the_16th() {
    busy_worker_second_burst(ProtocolVersion::V1, Duration::ZERO, LARGE_SECOND);
}

#[test]
fn a_busy_worker_with_quick_messages_writes_small_replies_by_the_batch() {
    busy_worker_second_burst(ProtocolVersion::V1, Duration::from_secs(1), SMALL_SECOND);
}

#[test]
fn a_busy_worker_with_quick_messages_writes_small_replies_by_the_batch_over_msgr2() {
    busy_worker_second_burst(ProtocolVersion::V2, Duration::from_secs(1), SMALL_SECOND);
}

#[test]
fn a_busy_worker_with_slow_messages_writes_small_replies_at_a_check_point() {
    busy_worker_second_burst(ProtocolVersion::V1, Duration::ZERO, SMALL_SECOND);
}

/// Small requests whose replies carry 4 KiB each: the replies of the first quarter of a
/// `dispatch_batch` (8 of 32) carried 32 KiB and are written at that check point, not
/// at the end of the read (as a client whose small replies each make it send a large
/// request).
#[test]
fn small_requests_with_large_replies_are_answered_at_a_check_point() {
    burst_is_answered_in_batches(ProtocolVersion::V1, 4 * BATCH, b"ping", &[9; 4096]);
}

#[test]
fn small_requests_with_large_replies_are_answered_at_a_check_point_over_msgr2() {
    burst_is_answered_in_batches(ProtocolVersion::V2, 4 * BATCH, b"ping", &[9; 4096]);
}

/// A read phase that has delivered a whole `dispatch_batch` (64) makes no more early
/// batches: its peer keeps sending while the server parses, and each early batch would
/// be one more small `writev` (4 KiB at depth 128). One burst lands at once on a busy
/// worker (one read phase): 64 small requests, then 24 of 4 KiB, the 20th of those
/// held in its dispatch. The 64 replies of the first batch were written (the batch and
/// a check point), but nothing after them: an early batch of 8 or 16 (4 KiB requests on
/// a busy worker) would have gone at the 8th or 16th, and the check point at the 16th
/// has too few small replies to write.
fn after_a_whole_batch_nothing_goes_early(proto: ProtocolVersion) {
    let config = MessengerConfig { colocated_peer_batching: false, ..test_config(1) };
    let most = config.dispatch_batch as u64;
    assert_eq!(most, 64, "the default");
    let (srv, _, _rx) = server_with(config);
    let hold = most + 20;
    let (go_tx, held_rx, entered_rx) = hold_request(&srv, hold);
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let last = most + BURST;
    let mut wire: Vec<u8> = (1..=most).flat_map(|tid| peer.message(tid, b"ping")).collect();
    wire.extend((most + 1..=last).flat_map(|tid| peer.message(tid, &[7; 4096])));
    let spin = spin_worker(&srv);
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    std::io::Write::write_all(&mut peer.sock, &wire).expect("burst");
    spin.store(true, Ordering::Release);

    assert_eq!(entered_rx.recv_timeout(WAIT), Ok(hold), "request {hold} was dispatched");
    // The worker is held: whatever it wrote is in the socket.
    let first = peer.receive(most as usize);
    let after = peek_written(&peer);
    go_tx.send(()).expect("release the held request");
    let first = first.expect("the first batch's replies");
    let tids: Vec<u64> = first.iter().map(Message::tid).collect();
    assert_eq!(tids, (1..=most).collect::<Vec<_>>(), "the replies written before request {hold}");
    match after {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("an early batch was written after the whole batch: {other:?}"),
    }
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");
    let rest = peer.receive(BURST as usize).expect("the rest of the replies");
    let tids: Vec<u64> = rest.iter().map(Message::tid).collect();
    assert_eq!(tids, (most + 1..=last).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

#[test]
fn after_a_whole_batch_in_one_read_phase_nothing_goes_early() {
    after_a_whole_batch_nothing_goes_early(ProtocolVersion::V1);
}

#[test]
fn after_a_whole_batch_in_one_read_phase_nothing_goes_early_over_msgr2() {
    after_a_whole_batch_nothing_goes_early(ProtocolVersion::V2);
}

/// Takes every message but one (tid `hold`) in `ms_dispatch`, reporting its tid; holds
/// `hold` in fast dispatch, on the worker, until the test's go-ahead.
struct QueueAllButOne {
    hold: u64,
    seen: Sender<u64>,
    go: Receiver<()>,
    held: Sender<bool>,
}

impl Dispatcher<Connection> for QueueAllButOne {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        let _ = self.seen.send(msg.tid());
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_HOSTILE && msg.tid() == self.hold
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        let released = self.go.recv_timeout(WAIT).is_ok();
        let _ = self.held.send(released);
    }
}

/// Queued messages go to the dispatch thread batch by batch with early batches or
/// without (`early_batches`).
fn queued_burst_reaches_ms_dispatch_in_batches(proto: ProtocolVersion, early_batches: bool) {
    let config = MessengerConfig { early_batches, dispatch_batch: BATCH, ..test_config(1) };
    let (srv, _, _rx) = server_with(config);
    let (seen, seen_rx) = crossbeam_channel::unbounded();
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    // The first message of the second batch holds the worker until the dispatch thread
    // has the first batch.
    let hold = BATCH as u64 + 1;
    let d = QueueAllButOne { hold, seen, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    send_burst(&mut peer, b"ping");

    let first: Result<Vec<u64>, _> =
        (0..BATCH).map(|_| seen_rx.recv_timeout(Duration::from_secs(5))).collect();
    go_tx.send(()).expect("release the held message");
    let first = first.unwrap_or_else(|e| panic!("the first batch did not reach ms_dispatch: {e}"));
    assert_eq!(first, (1..=BATCH as u64).collect::<Vec<_>>());
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held message was released");

    // The rest of the queued ones follow, in order.
    let rest: Vec<u64> = (BATCH as u64 + 2..=BURST)
        .map(|_| seen_rx.recv_timeout(WAIT).expect("the rest of the burst"))
        .collect();
    assert_eq!(rest, (BATCH as u64 + 2..=BURST).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

#[test]
fn queued_messages_of_a_burst_reach_ms_dispatch_in_batches() {
    queued_burst_reaches_ms_dispatch_in_batches(ProtocolVersion::V1, true);
}

#[test]
fn without_early_batches_queued_messages_of_a_burst_still_reach_ms_dispatch_in_batches() {
    queued_burst_reaches_ms_dispatch_in_batches(ProtocolVersion::V1, false);
}

#[test]
fn queued_messages_of_a_burst_reach_ms_dispatch_in_batches_over_msgr2() {
    queued_burst_reaches_ms_dispatch_in_batches(ProtocolVersion::V2, true);
}

/// The early batch counts the messages of the read it is in: a read of fewer than 8
/// (the smallest early batch) is answered in one write at its end, though the batch count carried
/// over from the reads before it reaches 8 inside it (6 requests of 4 KiB, then 4: the
/// 8th message would have written the replies of the 7th and 8th, and those of the
/// 9th and 10th gone in a second write, as with 4 requests in flight on each of 1,000
/// connections).
fn short_read_in_one_write(proto: ProtocolVersion) {
    let (srv, _, _rx) = batch_server(MessengerConfig::default().dispatch_batch);
    let (entered, entered_rx) = bounded(1);
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    let d = Hold { hold: vec![9], reply: Bytes::new(), entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = [7u8; 4096];

    write_requests(&mut peer, 1..=6, &request);
    let first = peer.receive(6).expect("the first read's replies");
    assert_eq!(first.iter().map(Message::tid).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());

    write_requests(&mut peer, 7..=10, &request);
    // The worker is inside the 9th request's dispatch: whatever it wrote before is here.
    nothing_written_before(
        &peer,
        &entered_rx,
        &go_tx,
        9,
        "replies were written inside a read of 4 messages",
    );
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the 9th request was released");
    let rest = peer.receive(4).expect("the second read's replies");
    assert_eq!(rest.iter().map(Message::tid).collect::<Vec<_>>(), (7..=10).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

#[test]
fn a_read_shorter_than_an_early_batch_is_answered_in_one_write() {
    short_read_in_one_write(ProtocolVersion::V1);
}

#[test]
fn a_read_shorter_than_an_early_batch_is_answered_in_one_write_over_msgr2() {
    short_read_in_one_write(ProtocolVersion::V2);
}

/// A server with `dispatch_batch` `window` answers a first burst of `window` requests
/// (one read phase) with replies carrying `reply`, then a second: nothing is written
/// before the first request past its first check point is dispatched, and the replies
/// to the first half of the burst are, before the first request past the second.
fn half_a_burst_at_a_check_point(
    proto: ProtocolVersion,
    window: u64,
    request: &[u8],
    reply: &'static [u8],
    early: &str,
) {
    let (srv, _, _rx) = batch_server(window as usize);
    let every = window / 4;
    let (entered, entered_rx) = bounded(1);
    let (go_tx, go) = bounded(1);
    let (held, _) = crossbeam_channel::unbounded();
    // The first request of the second burst past its first check point, and past its
    // second.
    let (past_first, past_second) = (window + every + 1, window + 2 * every + 1);
    let reply = Bytes::from_static(reply);
    let d = Hold { hold: vec![past_first, past_second], reply, entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");

    // The first burst, one read phase, answered in full.
    write_requests(&mut peer, 1..=window, request);
    let first = peer.receive(window as usize).expect("the first burst's replies");
    assert_eq!(
        first.iter().map(Message::tid).collect::<Vec<_>>(),
        (1..=window).collect::<Vec<_>>()
    );

    write_requests(&mut peer, window + 1..=2 * window, request);
    nothing_written_before(&peer, &entered_rx, &go_tx, past_first, early);
    // After the second check point they were: the first half's replies arrive while
    // the next request is held.
    let second = entered_rx.recv_timeout(WAIT);
    assert_eq!(second, Ok(past_second), "the request past the second check point");
    let half = peer.receive(2 * every as usize);
    go_tx.send(()).expect("release it");
    let half = half.unwrap_or_else(|e| {
        panic!("{} replies were not written at the second check point: {e}", 2 * every)
    });
    let want: Vec<u64> = (window + 1..=window + 2 * every).collect();
    assert_eq!(half.iter().map(Message::tid).collect::<Vec<_>>(), want);
    let rest = peer.receive(2 * every as usize).expect("the rest of the replies");
    let want: Vec<u64> = (window + 2 * every + 1..=2 * window).collect();
    assert_eq!(rest.iter().map(Message::tid).collect::<Vec<_>>(), want);
    srv.shutdown();
    srv.wait();
}

/// After a read phase of 32 messages, the next burst's replies (4 KiB each) wait at the
/// check points until half as many were delivered (16, not 8 as in the first), though
/// the 8 at the first carried 32 KiB: a client whose whole window comes back in one read
/// sends its requests in writes of half of it.
fn half_the_last_burst_first(proto: ProtocolVersion) {
    let early = "replies were written after 8 messages of the second burst";
    half_a_burst_at_a_check_point(proto, 4 * BATCH as u64, b"ping", &[9; 4096], early);
}

#[test]
fn sent_check_point_waits_for_half_the_last_burst() {
    half_the_last_burst_first(ProtocolVersion::V1);
}

#[test]
fn sent_check_point_waits_for_half_the_last_burst_over_msgr2() {
    half_the_last_burst_first(ProtocolVersion::V2);
}

/// Small requests answered with small replies (64 B, ~650 bytes each as the send bounds
/// count them) at the default `dispatch_batch` (64: a check point every 16): the 16
/// replies at the first check point wait (~10 KiB), the 32 at the second are written
/// (16 KiB and more, and half the last burst) while the rest of the burst is parsed —
/// not all 64 at its end, where the two ends would trade whole half-windows.
fn small_replies_at_a_check_point(proto: ProtocolVersion) {
    let window = MessengerConfig::default().dispatch_batch as u64;
    let early = "16 small replies were written at the first check point";
    half_a_burst_at_a_check_point(proto, window, &[7; 64], &[9; 64], early);
}

#[test]
fn small_replies_to_small_requests_go_at_a_check_point() {
    small_replies_at_a_check_point(ProtocolVersion::V1);
}

#[test]
fn small_replies_to_small_requests_go_at_a_check_point_over_msgr2() {
    small_replies_at_a_check_point(ProtocolVersion::V2);
}

/// A peer sending from the CPU the server's worker runs on (both pinned to CPU 0) cannot
/// run before the worker sleeps: once two looks saw it there, nothing is written at the
/// early batch or the check points, and a burst's replies all come at the end of the
/// read.
/// With `colocated_peer_batching` off the same peer gets its early batch as any other.
fn colocated_peer_gets_no_early_batch(proto: ProtocolVersion, colocated_peer_batching: bool) {
    event_center::pin_current_thread(0).expect("pin the peer to CPU 0");
    tests::loopback::init_logging();
    let pool = event_center::WorkerPool::new(event_center::WorkerPoolConfig {
        workers: 1,
        name_prefix: "colocated".to_owned(),
        pin_cpus: true,
        ..Default::default()
    })
    .expect("pool");
    assert!(test_config(1).colocated_peer_batching, "on by default");
    let config = MessengerConfig {
        dispatch_batch: 4 * BATCH,
        early_batches: true,
        colocated_peer_batching,
        ..test_config(1)
    };
    let name = protocol::types::EntityName::new(EntityType::OSD, 0);
    let srv = messenger::Messenger::with_pool(name, 1, config, Arc::new(pool)).expect("server");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    srv.start().expect("start");
    let (entered, entered_rx) = bounded(1);
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    // In the checked burst, past the early batch (4 requests that carried 16 KiB) and
    // the first check point (8 replies of 32 KiB): either would have written before it.
    let hold = 9 * BURST + 2 * BATCH as u64 + 1;
    let reply = Bytes::from_static(&[9; 4096]);
    let d = Hold { hold: vec![hold], reply, entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    // The worker looks at the peer's CPU in every 8th read phase, and counts it from
    // the second look: 9 bursts (their read phases) before the one checked.
    let primed = 9 * BURST;
    for first in (1..=primed).step_by(BURST as usize) {
        write_requests(&mut peer, first..=first + BURST - 1, &[7; 4096]);
        let replies = peer.receive(BURST as usize).expect("a priming burst's replies");
        let want: Vec<u64> = (first..first + BURST).collect();
        assert_eq!(replies.iter().map(Message::tid).collect::<Vec<_>>(), want);
    }

    write_requests(&mut peer, primed + 1..=primed + BURST, &[7; 4096]);
    assert_eq!(entered_rx.recv_timeout(WAIT), Ok(hold), "the held request was dispatched");
    let early = peek_written(&peer);
    go_tx.send(()).expect("release the held request");
    match (early, colocated_peer_batching) {
        (Err(e), true) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        (Ok(1), false) => {}
        (other, _) => panic!("colocated_peer_batching {colocated_peer_batching}: {other:?}"),
    }
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");
    let last = peer.receive(BURST as usize).expect("the checked burst's replies");
    let want: Vec<u64> = (primed + 1..=primed + BURST).collect();
    assert_eq!(last.iter().map(Message::tid).collect::<Vec<_>>(), want);
    srv.shutdown();
    srv.wait();
}

#[test]
fn a_peer_on_the_workers_cpu_gets_its_burst_answered_at_the_reads_end() {
    colocated_peer_gets_no_early_batch(ProtocolVersion::V1, true);
}

#[test]
fn without_colocated_peer_batching_a_peer_on_the_workers_cpu_gets_early_batches() {
    colocated_peer_gets_no_early_batch(ProtocolVersion::V1, false);
}

#[test]
fn a_peer_on_the_workers_cpu_gets_its_burst_answered_at_the_reads_end_over_msgr2() {
    colocated_peer_gets_no_early_batch(ProtocolVersion::V2, true);
}

/// Without early batches a burst's replies all go at the end of the read: nothing is
/// written while its 17th request is dispatched, past the point where replies of 4 KiB
/// to the first 8 small requests (32 KiB) make an early batch write
/// (`small_requests_with_large_replies_are_answered_at_a_check_point`). Then all
/// replies come, in order. The requests are small, so the burst is one read.
fn burst_answered_at_the_reads_end(proto: ProtocolVersion) {
    let config = MessengerConfig { early_batches: false, ..test_config(1) };
    assert!(config.dispatch_batch > BURST as usize, "the burst fits in one batch");
    let (srv, _, _rx) = server_with(config);
    let (entered, entered_rx) = bounded(1);
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    let hold = 2 * BATCH as u64 + 1;
    let reply = Bytes::from_static(&[9; 4096]);
    let d = Hold { hold: vec![hold], reply, entered, go, held };
    srv.add_dispatcher_head(Arc::new(d)).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    send_burst(&mut peer, b"ping");

    nothing_written_before(
        &peer,
        &entered_rx,
        &go_tx,
        hold,
        "replies were written in the middle of the read",
    );
    all_replies_in_order(srv, &mut peer, &held_rx);
}

#[test]
fn without_early_batches_a_burst_is_answered_at_the_reads_end() {
    burst_answered_at_the_reads_end(ProtocolVersion::V1);
}

#[test]
fn without_early_batches_a_burst_is_answered_at_the_reads_end_over_msgr2() {
    burst_answered_at_the_reads_end(ProtocolVersion::V2);
}
