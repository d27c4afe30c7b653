//! The dispatch budget a message holds while it is still arriving: a peer that
//! announces a large message and goes silent (or trickles it) holds no more than one
//! window of it and loses its connection at the payload timeout; other connections keep
//! flowing. And honest large messages arriving at once never deadlock on the budget.
//! Each over msgr v1 and msgr2.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
    Throttle,
};
use protocol::message::MESSAGE_OVERHEAD;
use protocol::session::DEFAULT_FIRST_WINDOW;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::counting::Forward;
use tests::hostile::*;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
const MIB: u32 = 1 << 20;

fn echo_server(config: MessengerConfig) -> (Messenger, SocketAddr, Receiver<Seen>) {
    server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        true,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    )
}

/// `n` round trips of `size` bytes on `good`; panics if any reply takes longer than `WAIT`.
fn round_trips(good: &Connection, rx: &Receiver<Seen>, first_tid: u64, n: u64, size: usize) {
    for tid in first_tid..first_tid + n {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![7u8; size]))).expect("send");
        assert_eq!(next_message(rx).1.tid(), tid, "good traffic disturbed");
    }
}

// Ceph reserves a message's whole length when its header arrives; here a message holds
// budget only for what arrived plus one window, so announcing 100 MiB and going silent
// costs the server nothing the others need.
fn silent_announcers_do_not_stall_others(proto: ProtocolVersion) {
    let window = 64 << 10;
    let config = MessengerConfig {
        // Long enough that the good traffic below cannot be waiting for it.
        payload_timeout: Duration::from_secs(60),
        read_buffer: window,
        ..test_config(2)
    };
    let (srv, _addr, _srv_rx) = echo_server(config);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    round_trips(&good, &cli_rx, 0, 10, 4096);
    // The last request's permit goes back after its dispatcher returns, which can be
    // after its reply arrived: the attackers' share below is measured from nothing.
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the good requests' budget back".into(),
    );

    // One peer announces 100 MiB, two more 50 MiB each; each sends 100 bytes of it.
    let mut attackers = Vec::new();
    for data_len in [100 * MIB, 50 * MIB, 50 * MIB] {
        let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
        assert_eq!(peer.protocol(), proto);
        let head = peer.announce(1, data_len as usize, head_len(proto) + 100);
        peer.sock.write_all(&head).expect("header and a little payload");
        attackers.push(peer.sock);
    }
    // Each holds its first window: a page (more only for payload already received). Read
    // once the three windows are granted and the credit each read took ahead (its bytes
    // and an overhead, 666 here, given back once the read is parsed) is back: a CI run
    // beside a soak read one read's credit on top, 14,490 bytes. Silent peers holding
    // more for good would time this out.
    let held_most = 3 * (u64::from(DEFAULT_FIRST_WINDOW) + MESSAGE_OVERHEAD);
    wait_until(
        || srv.dispatch_throttle().current() == held_most,
        || {
            let held = srv.dispatch_throttle().current();
            format!("silent peers hold {held} bytes of dispatch budget, not {held_most}")
        },
    );

    // The good client goes on at once, while the attackers still hold their windows.
    round_trips(&good, &cli_rx, 10, 200, 4096);
    round_trips(&good, &cli_rx, 210, 20, 1 << 20);
    for sock in &mut attackers {
        assert!(!closed_within(sock, Duration::from_millis(1)), "attacker closed early");
    }
    drop(attackers);
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn peers_announcing_large_messages_and_going_silent_do_not_stall_others() {
    silent_announcers_do_not_stall_others(ProtocolVersion::V1);
}

#[test]
fn peers_announcing_large_messages_and_going_silent_do_not_stall_others_over_msgr2() {
    silent_announcers_do_not_stall_others(ProtocolVersion::V2);
}

// A message's payload must progress by a window per payload timeout: trickling one byte
// at a time (which resets the idle timer every time) does not keep it alive.
fn trickled_message_is_faulted(proto: ProtocolVersion) {
    let config = MessengerConfig { payload_timeout: Duration::from_secs(1), ..test_config(1) };
    let (srv, _addr, _srv_rx) = echo_server(config);
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let head = peer.announce(1, 8 * MIB as usize, head_len(proto));
    let mut sock = peer.sock;
    sock.write_all(&head).expect("header");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < WAIT {
        if sock.write_all(&[0u8]).is_err() || closed_within(&mut sock, Duration::from_millis(100)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled message kept its connection for {:?}", started.elapsed());
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the budget to be released".into(),
    );
    srv.shutdown();
}

#[test]
fn a_trickled_message_is_faulted_at_the_payload_timeout() {
    trickled_message_is_faulted(ProtocolVersion::V1);
}

#[test]
fn a_trickled_message_is_faulted_at_the_payload_timeout_over_msgr2() {
    trickled_message_is_faulted(ProtocolVersion::V2);
}

/// A server with a dispatch throttle of `max` and a 2 s payload timeout, a good client
/// connected to it over `proto`, and what the server saw.
fn small_budget_server(
    proto: ProtocolVersion,
    max: u64,
) -> (Messenger, Messenger, Connection, Receiver<Seen>) {
    small_budget_server_counting(proto, max, None)
}

/// [`small_budget_server`] whose clients' messages are also counted by `counts` (the
/// policy's message throttle; a connection looks its throttlers up once).
fn small_budget_server_counting(
    proto: ProtocolVersion,
    max: u64,
    counts: Option<Arc<Throttle>>,
) -> (Messenger, Messenger, Connection, Receiver<Seen>) {
    let config = MessengerConfig {
        dispatch_throttle_bytes: max,
        payload_timeout: Duration::from_secs(2),
        ..test_config(2)
    };
    let (srv, _addr, _srv_rx) = echo_server(config);
    srv.set_policy_throttlers(EntityType::CLIENT, None, counts);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    round_trips(&good, &cli_rx, 0, 1, 4096);
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the good request's budget back".into(),
    );
    (srv, cli, good, cli_rx)
}

// A peer sends a large message quickly, holding more than the whole dispatch throttle
// as the oldest message in progress, then trickles it at two windows per payload
// timeout. While the good client waits on it, that is not enough: the message everyone
// waits for must bring a sixteenth of what the messages in progress hold per timeout.
// So it is faulted and the good client goes on. (At a window per timeout the rest of
// this 16 MiB message would have kept the good client waiting for minutes; a 256 MiB
// one, for hours.)
fn budget_holding_trickler_is_faulted(proto: ProtocolVersion) {
    let (srv, cli, good, cli_rx) = small_budget_server(proto, 4 << 20);
    let max = srv.dispatch_throttle().max() as usize;
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let len = 16 << 20;
    let wire = peer.announce(1, len, head_len(proto) + len - 1);
    let total = wire.len();
    // 64 KiB/s: two windows per 2 s timeout, half of a sixteenth of 4 MiB per timeout.
    let sock = peer.sock.try_clone().expect("clone");
    let trickler = trickle(sock, wire, head_len(proto) + max + 1, 64 << 10);
    wait_until(
        || srv.dispatch_throttle().current() > max as u64,
        || format!("the fast part holds {}", srv.dispatch_throttle().current()),
    );

    // The good client's next request waits behind the trickler's hold, then goes on.
    round_trips(&good, &cli_rx, 1, 20, 4096);
    assert!(closed_within(&mut peer.sock, WAIT), "the trickler kept its connection");
    let sent = trickler.join().expect("trickler");
    assert!(sent < total / 2, "the trickler sent {sent} of {total} bytes");
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the budget to be released".into(),
    );
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_trickler_holding_the_budget_others_wait_on_must_progress_in_proportion() {
    budget_holding_trickler_is_faulted(ProtocolVersion::V1);
}

#[test]
fn a_trickler_holding_the_budget_others_wait_on_must_progress_in_proportion_over_msgr2() {
    budget_holding_trickler_is_faulted(ProtocolVersion::V2);
}

// Two peers together: the first starts a message and trickles it at two windows per
// timeout, holding little, and so is the oldest message in progress; the second sends
// 9 MiB of its own quickly and then waits for its next window, which does not fit while
// it holds what it has (4 MiB or more of 8), at the head of the throttle's queue, where
// it holds its budget at no cost (its clock pauses while we make it wait). The good
// client queues behind it. The trickler must now bring a sixteenth of what both hold
// per timeout (256 KiB or more, twice what it sends), is faulted, and the second, then
// the oldest and silent, is faulted in turn: the good client goes on within a few
// timeouts, not when the trickler is done (minutes).
fn trickler_and_holder_are_faulted(proto: ProtocolVersion) {
    let (srv, cli, good, cli_rx) = small_budget_server(proto, 8 << 20);
    let addr = addr_for(proto, srv.my_addr());
    let len = 16 << 20;
    let mut trickler = RawPeer::handshake(addr, Policy::lossy_client());
    let wire = trickler.announce(1, len, head_len(proto) + len - 1);
    let total = wire.len();
    // 100 KiB at once: past the first window (one read at most), so it registered as
    // in progress; then 64 KiB/s, two windows per timeout.
    let sock = trickler.sock.try_clone().expect("clone");
    let trickled = trickle(sock, wire, head_len(proto) + (100 << 10), 64 << 10);
    wait_until(
        || srv.dispatch_throttle().current() >= 100 << 10,
        || format!("the trickler holds {}", srv.dispatch_throttle().current()),
    );

    // More than fits beside the trickler's: however the windows fell, the holder ends
    // up waiting for one that does not fit. Written from a thread: the server stops
    // reading it, and what the socket buffers take is the kernel's business.
    let mut holder = RawPeer::handshake(addr, Policy::lossy_client());
    let head = holder.announce(1, len, head_len(proto) + (9 << 20));
    let mut sock = holder.sock.try_clone().expect("clone");
    let held = std::thread::spawn(move || {
        let _ = sock.write_all(&head);
    });
    wait_until(
        || srv.dispatch_throttle().waiting() > 0,
        || format!("nothing waits; {} held", srv.dispatch_throttle().current()),
    );

    round_trips(&good, &cli_rx, 1, 20, 4096);
    assert!(closed_within(&mut trickler.sock, WAIT), "the trickler kept its connection");
    assert!(closed_within(&mut holder.sock, WAIT), "the holder kept its connection");
    let sent = trickled.join().expect("trickler");
    assert!(sent < total / 2, "the trickler sent {sent} of {total} bytes");
    held.join().expect("holder");
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the budget to be released".into(),
    );
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_trickler_and_a_holder_waiting_behind_it_are_faulted_in_turn() {
    trickler_and_holder_are_faulted(ProtocolVersion::V1);
}

#[test]
fn a_trickler_and_a_holder_waiting_behind_it_are_faulted_in_turn_over_msgr2() {
    trickler_and_holder_are_faulted(ProtocolVersion::V2);
}

// A policy's message-count throttle (Ceph's osd_client_message_cap) of 1, and a peer
// that starts a 16 MiB message and trickles it at two windows per timeout: it holds the
// count and few bytes. While the good client's message waits for the count, which
// messages in progress hold all of (the server keeps no message), a message in progress
// must arrive whole within sixteen timeouts (1 MiB per timeout, eight times
// what it sends), so it is faulted and the good client goes on, rather than after the
// trickler's four minutes.
fn count_holding_trickler_is_faulted(proto: ProtocolVersion) {
    let counts = Throttle::new("client messages", 1);
    let (srv, cli, good, cli_rx) =
        small_budget_server_counting(proto, 100 << 20, Some(counts.clone()));
    let len = 16 << 20;
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let wire = peer.announce(1, len, head_len(proto) + len - 1);
    let total = wire.len();
    let sock = peer.sock.try_clone().expect("clone");
    let trickler = trickle(sock, wire, head_len(proto) + (100 << 10), 64 << 10);
    wait_until(|| counts.current() == 1, || "the trickler holds no count".into());

    round_trips(&good, &cli_rx, 1, 20, 4096);
    assert!(closed_within(&mut peer.sock, WAIT), "the trickler kept its connection");
    let sent = trickler.join().expect("trickler");
    assert!(sent < total / 2, "the trickler sent {sent} of {total} bytes");
    cli.shutdown();
    srv.shutdown();
}

// The same cap of 1, held by an honest peer sending a 2 MiB message at 256 KiB/s: four
// times the sixteenth of its length it owes per 2 s timeout while the good client waits
// for the count. It arrives whole (the server echoes it), then the good client's goes.
fn count_holding_honest_message_arrives(proto: ProtocolVersion) {
    let counts = Throttle::new("client messages", 1);
    let (srv, cli, good, cli_rx) =
        small_budget_server_counting(proto, 100 << 20, Some(counts.clone()));
    let len = 2 << 20;
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let wire = peer.announce(9, len, head_len(proto) + len + 4096);
    let sock = peer.sock.try_clone().expect("clone");
    let sender = trickle(sock, wire.clone(), head_len(proto) + (100 << 10), 256 << 10);
    wait_until(|| counts.current() == 1, || "the peer holds no count".into());

    // The good client's request waits for the count while the message arrives.
    good.send_message(test_message(MSG_TEST, 1, Bytes::from(vec![7u8; 4096]))).expect("send");
    let sent = sender.join().expect("sender");
    peer.sock.write_all(&wire[sent..]).expect("the rest");
    let echo = peer.receive(1).expect("the echo of the whole message");
    assert_eq!((echo[0].tid(), echo[0].data().len()), (9, len));
    assert_eq!(next_message(&cli_rx).1.tid(), 1);
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn an_honest_message_holding_the_message_count_arrives_while_others_wait() {
    count_holding_honest_message_arrives(ProtocolVersion::V1);
}

#[test]
fn an_honest_message_holding_the_message_count_arrives_while_others_wait_over_msgr2() {
    count_holding_honest_message_arrives(ProtocolVersion::V2);
}

#[test]
fn a_trickler_holding_the_message_count_is_faulted_while_others_wait() {
    count_holding_trickler_is_faulted(ProtocolVersion::V1);
}

#[test]
fn a_trickler_holding_the_message_count_is_faulted_while_others_wait_over_msgr2() {
    count_holding_trickler_is_faulted(ProtocolVersion::V2);
}

// Nobody waits: a large message arriving slowly (a slow link) needs only a window per
// timeout, however much of the budget it holds, and arrives whole.
fn slow_large_message_arrives(proto: ProtocolVersion) {
    let config = MessengerConfig { payload_timeout: Duration::from_secs(2), ..test_config(1) };
    let (srv, _addr, srv_rx) = echo_server(config);
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let len = 8 << 20;
    let wire = peer.announce(7, len, head_len(proto) + len + 4096);
    // 4 MiB at once, so the message holds 4 MiB or more (a sixteenth: 256 KiB or more
    // per 2 s timeout), then 64 KiB/s (two windows per timeout) for four seconds.
    let fast = head_len(proto) + (4 << 20);
    let slow = fast + 4 * (64 << 10);
    let sock = peer.sock.try_clone().expect("clone");
    let sent = trickle(sock, wire[..slow].to_vec(), fast, 64 << 10).join().expect("trickle");
    assert!(sent + (8 << 10) >= slow, "the slow part stopped at {sent}");
    peer.sock.write_all(&wire[sent..]).expect("the rest");
    let (_, msg) = next_message(&srv_rx);
    assert_eq!((msg.tid(), msg.data().len()), (7, len));
    srv.shutdown();
}

#[test]
fn a_large_message_on_a_slow_link_arrives_while_nobody_waits() {
    slow_large_message_arrives(ProtocolVersion::V1);
}

#[test]
fn a_large_message_on_a_slow_link_arrives_while_nobody_waits_over_msgr2() {
    slow_large_message_arrives(ProtocolVersion::V2);
}

/// Holds every message until `open` is called, then takes them all.
struct Gate {
    open: parking_lot::Mutex<bool>,
    cond: parking_lot::Condvar,
    tx: crossbeam_channel::Sender<(u64, u64)>,
}

impl Dispatcher<Connection> for Gate {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let mut open = self.open.lock();
        while !*open {
            self.cond.wait(&mut open);
        }
        let _ = self.tx.send((conn.id(), msg.tid()));
        Dispatched::Taken
    }
}

/// Opens the gate when dropped (also when the test fails, so shutdown can join).
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        *self.0.open.lock() = true;
        self.0.cond.notify_all();
    }
}

/// A started server whose dispatcher is a closed [`Gate`], and what the gate lets by.
fn gated_server(
    config: MessengerConfig,
) -> (Messenger, Arc<Gate>, crossbeam_channel::Receiver<(u64, u64)>) {
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    let gate = Arc::new(Gate {
        open: parking_lot::Mutex::new(false),
        cond: parking_lot::Condvar::new(),
        tx,
    });
    srv.add_dispatcher_head(gate.clone()).expect("dispatcher");
    (srv, gate, rx)
}

// Eight peers send 768 KiB messages at once into a 1 MiB dispatch budget: the messages
// in progress hold all of it while waiting for more. The oldest one in progress always
// gets its next window, so everything arrives.
fn large_messages_never_deadlock(proto: ProtocolVersion) {
    let config = MessengerConfig { dispatch_throttle_bytes: 1 << 20, ..test_config(2) };
    let (srv, gate, rx) = gated_server(config);
    const PEERS: usize = 8;
    const EACH: u64 = 6;
    let clients: Vec<_> = (0..PEERS)
        .map(|i| {
            let (cli, _rx) = client(EntityType::CLIENT, 10 + i as u32, Policy::lossless_client());
            let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
            for tid in 0..EACH {
                conn.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![1u8; 768 << 10])))
                    .expect("send");
            }
            (cli, conn)
        })
        .collect();
    // Let the budget fill up with queued and partly received messages, then dispatch.
    let opener = OpenOnDrop(gate.clone());
    wait_until(
        || srv.dispatch_throttle().waiting() > 0,
        || "timed out waiting for the budget to fill".into(),
    );
    drop(opener);
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    while got < PEERS as u64 * EACH {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "deadlock: {got} of {} messages arrived; {:?} {:?}",
                PEERS as u64 * EACH,
                srv.dispatch_throttle(),
                srv.dispatch_throttle().counters()
            )
        });
        got += 1;
    }
    for (cli, _) in clients {
        cli.shutdown();
    }
    srv.shutdown();
}

#[test]
fn large_messages_arriving_together_never_deadlock_on_the_budget() {
    large_messages_never_deadlock(ProtocolVersion::V1);
}

#[test]
fn large_messages_arriving_together_never_deadlock_on_the_budget_over_msgr2() {
    large_messages_never_deadlock(ProtocolVersion::V2);
}

// A msgr2 peer aborts a message it was granted budget for (its late status says
// ABORTED) and sends the next one in the same write: the next one asks for budget as a
// message of its own and waits while the dispatch throttle is full. It used to take
// over the dropped message's permits and pass for a later window of it, and so as the
// oldest message in progress, which goes on past the throttle's maximum.
#[test]
fn a_message_after_an_aborted_one_asks_for_budget_as_its_own() {
    const MAX: u64 = 200_000;
    let config =
        MessengerConfig { dispatch_throttle_bytes: MAX, read_buffer: 256 << 10, ..test_config(1) };
    let (srv, gate, rx) = gated_server(config);
    let _open = OpenOnDrop(gate);
    let addr = addr_for(ProtocolVersion::V2, srv.my_addr());

    // Another peer's message, held by the gate, leaves 2,000 bytes of the throttle.
    let held = MAX - 2_000;
    let mut other = RawPeer::handshake(addr, Policy::lossy_client());
    let frame = other.message(7, &vec![7u8; (held - MESSAGE_OVERHEAD) as usize]);
    other.sock.write_all(&frame).expect("write");
    wait_until(
        || srv.dispatch_throttle().current() == held,
        || format!("the held message charged {}", srv.dispatch_throttle().current()),
    );

    // A small message fits in what is left; the next one's first window does not.
    let mut peer = RawPeer::handshake(addr, Policy::lossy_client());
    let mut bytes = peer.message(1, &[1u8; 100]);
    // crc mode's epilogue: the late status byte, then three crcs.
    let at = bytes.len() - 13;
    bytes[at] = 0x01;
    bytes.extend(peer.message(2, &vec![2u8; 50_000]));
    peer.sock.write_all(&bytes).expect("write");
    wait_until(
        || srv.dispatch_throttle().waiting() == 1,
        || format!("not waiting; {} bytes charged", srv.dispatch_throttle().current()),
    );
    assert!(srv.dispatch_throttle().current() <= MAX);

    drop(_open);
    let mut seen: Vec<u64> = (0..2).map(|_| rx.recv_timeout(WAIT).expect("dispatched").1).collect();
    seen.sort_unstable();
    assert_eq!(seen, [2, 7], "the aborted message was dropped, the others delivered");
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the budget to be released".into(),
    );
    drop((peer, other));
    srv.shutdown();
}

/// A message of type `MSG_TEST` with `tid` and a front of `front` bytes, framed.
fn framed_front(peer: &mut RawPeer, tid: u64, front: usize) -> Vec<u8> {
    let mut m = Message::new(MSG_TEST, Bytes::from(vec![5u8; front]));
    m.set_tid(tid);
    peer.frame(m)
}

/// Waits for the dispatch of exactly `tids`, in order.
fn dispatched_in_order(rx: &Receiver<u64>, tids: &[u64]) {
    for &tid in tids {
        assert_eq!(rx.recv_timeout(WAIT).expect("dispatched"), tid);
    }
}

// A msgr2 peer sends, in one write, a message larger than the first window that it then
// aborts (late status ABORTED: it asked for its budget and is dropped), a small message
// the receive credit covers, and the head of a larger one left in progress at the end
// of the pass. The small one used to reach the driver still holding the aborted one's
// grant, pass it for its own, and leave the credit it was paid from charged to nothing
// for as long as each pass ended with a message in progress: a count and 612 bytes more
// per round (8 of a cap of 64 after 10 rounds, without limit). Now nothing accumulates:
// once every delivered message is dropped, the throttles hold only the one in progress.
#[test]
fn a_credit_funded_message_after_an_aborted_one_leaves_no_budget_behind() {
    const ROUNDS: u64 = 10;
    // The message left in progress is not cut off at the payload timeout meanwhile.
    let config = MessengerConfig {
        dispatch_throttle_bytes: 256 << 10,
        payload_timeout: PATIENCE,
        ..test_config(1)
    };
    let srv = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    srv.set_default_policy(Policy::stateless_server());
    let msgs = Throttle::new("client messages", 64);
    srv.set_policy_throttlers(EntityType::CLIENT, None, Some(msgs.clone()));
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    // Drops every message on the worker (fast dispatch), telling the test its tid.
    srv.add_dispatcher_head(Forward::tids(tx, true)).expect("dispatcher");

    let mut peer =
        RawPeer::handshake(addr_for(ProtocolVersion::V2, srv.my_addr()), Policy::lossy_client());
    let mut rest: Vec<u8> = Vec::new();
    for round in 0..ROUNDS {
        let tid = round * 10;
        let mut wire = std::mem::take(&mut rest);
        let mut expect = Vec::new();
        if round > 0 {
            // The last round's message in progress ends; a small one follows, whose
            // grant gives credit for the rest of the burst.
            expect.push(tid - 10 + 4);
            wire.extend(framed_front(&mut peer, tid + 1, 100));
            expect.push(tid + 1);
        }
        // Larger than the first window (asked for), then aborted.
        let mut aborted = framed_front(&mut peer, tid + 2, 6000);
        let at = aborted.len() - 13;
        aborted[at] = 0x01;
        wire.extend(aborted);
        // Covered by the credit.
        wire.extend(framed_front(&mut peer, tid + 3, 100));
        expect.push(tid + 3);
        // In progress at the end of the pass.
        let next = framed_front(&mut peer, tid + 4, 8000);
        let (head, tail) = next.split_at(next.len() - 1000);
        wire.extend_from_slice(head);
        rest = tail.to_vec();
        peer.sock.write_all(&wire).expect("write");
        dispatched_in_order(&rx, &expect);
    }
    // Delivered and dropped: only the message in progress holds a count, and the
    // dispatch throttle only what it was granted of its 8,000 bytes.
    wait_until(
        || msgs.current() == 1 && srv.dispatch_throttle().current() <= 8000 + MESSAGE_OVERHEAD,
        || {
            format!(
                "after {ROUNDS} rounds the throttles hold {msgs:?} and {:?}",
                srv.dispatch_throttle()
            )
        },
    );
    peer.sock.write_all(&rest).expect("write");
    dispatched_in_order(&rx, &[(ROUNDS - 1) * 10 + 4]);
    wait_until(
        || msgs.current() == 0 && srv.dispatch_throttle().current() == 0,
        || format!("{msgs:?} and {:?} after the last message", srv.dispatch_throttle()),
    );
    drop(peer);
    srv.shutdown();
}

// A peer that does not read is owed one KEEPALIVE2_ACK, the newest, for any number of
// KEEPALIVE2s it sent while our socket was full: framed at every read into the write
// list behind what the socket would not take, an ack per read waited there (up to 1
// MiB of them, charged to nothing), where it now stays one owed frame.
#[test]
fn a_peer_that_does_not_read_is_owed_one_keepalive_ack() {
    use protocol::wire::Tag;
    use std::io::Read;
    let config = MessengerConfig {
        tcp_sndbuf: 16 << 10,
        write_timeout: Duration::from_secs(120),
        ..test_config(1)
    };
    let (srv, _, _rx) = echo_server(config);
    let mut peer = RawPeer::handshake(srv.my_addr(), Policy::lossy_client());
    assert_eq!(peer.protocol(), ProtocolVersion::V1);
    socket2::SockRef::from(&peer.sock).set_recv_buffer_size(16 << 10).expect("rcvbuf");
    peer.sock.set_nodelay(true).expect("nodelay");
    let sent0 = srv.totals().send_bytes;
    let front = vec![7u8; 256 << 10];
    let big = peer.message(1, &front);
    peer.sock.write_all(&big).expect("write");
    // The reply is framed (bytes of it went out) and cannot all go: the peer reads
    // nothing, and the sockets hold less than it.
    wait_until(
        || srv.totals().send_bytes - sent0 >= 8 << 10,
        || format!("{} bytes of the reply written", srv.totals().send_bytes - sent0),
    );
    // One at a time, each once the server read the one before, so it reads each on its
    // own.
    for sec in 0..300u32 {
        let mut ka = vec![Tag::KEEPALIVE2.0];
        ka.extend(sec.to_le_bytes());
        ka.extend(9u32.to_le_bytes());
        let read = srv.totals().recv_bytes;
        peer.sock.write_all(&ka).expect("keepalive");
        wait_until(
            || srv.totals().recv_bytes >= read + ka.len() as u64,
            || format!("keepalive {sec} not read"),
        );
    }
    // A last request: its reply follows the acks owed before it was read.
    let last = peer.message(2, b"last");
    peer.sock.write_all(&last).expect("write");
    // The raw stream from here on (no ACKs: the session is lossy).
    let (mut replies, mut acks) = (Vec::new(), 0);
    let mut head = [0u8; protocol::wire::MsgHeader::LEN];
    while replies.len() < 2 {
        let mut tag = [0u8; 1];
        peer.sock.read_exact(&mut tag).expect("read");
        match Tag(tag[0]) {
            Tag::MSG => {
                peer.sock.read_exact(&mut head).expect("header");
                let h = protocol::wire::MsgHeader::from_bytes(&head);
                // Payload and the (new) footer.
                let mut body = vec![0u8; h.payload_len() as usize + 21];
                peer.sock.read_exact(&mut body).expect("payload");
                replies.push(h.tid);
            }
            Tag::KEEPALIVE2_ACK => {
                peer.sock.read_exact(&mut [0u8; 8]).expect("stamp");
                acks += 1;
            }
            other => panic!("tag {} in the stream", other.0),
        }
    }
    assert_eq!(replies, [1, 2], "the replies' tids");
    // An ack goes out whenever the socket takes bytes again: a few times while the
    // peer's kernel still took some of the reply, and once it reads. One per keepalive
    // (300) before.
    assert!(
        acks <= 10,
        "{acks} KEEPALIVE2_ACKs for 300 KEEPALIVE2s sent while the socket was full"
    );
}

// A large data segment assembled in place (read straight into its buffer) grows its
// buffer with the windows granted, doubling, but never past the segment's length: a
// 65 MiB segment's buffer doubled to 128 MiB, twice what its message was charged, and
// the message kept it.
fn assembly_buffer_bounded_by_segment(proto: ProtocolVersion) {
    let (srv, _addr, _rx) = echo_server(test_config(1));
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let data_len = (64usize << 20) + (1 << 20);
    let wire = peer.announce(1, data_len, head_len(peer.protocol()) + data_len - 1);
    let before = srv.totals().recv_bytes;
    // All of the data but its last byte: the message stays in progress.
    peer.sock.write_all(&wire).expect("data");
    wait_until(
        || srv.totals().recv_bytes >= before + wire.len() as u64,
        || "the server stopped reading".into(),
    );
    let held = worker_counter(&srv, "msgr_recv_held_bytes");
    assert!(held <= data_len as u64 + u64::from(MIB), "held {held} for a {data_len}-byte segment");
    srv.shutdown();
}

#[test]
fn a_segment_assembled_in_place_holds_no_more_than_its_length() {
    assembly_buffer_bounded_by_segment(ProtocolVersion::V1);
}

#[test]
fn a_segment_assembled_in_place_holds_no_more_than_its_length_over_msgr2() {
    assembly_buffer_bounded_by_segment(ProtocolVersion::V2);
}
