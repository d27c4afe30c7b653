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
};
use protocol::message::MESSAGE_OVERHEAD;
use protocol::session::DEFAULT_FIRST_WINDOW;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
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
    // Each holds its first window: a page (more only for payload already received).
    let held_most = 3 * (u64::from(DEFAULT_FIRST_WINDOW) + MESSAGE_OVERHEAD);
    wait_until(
        || srv.dispatch_throttle().current() >= 3 * MESSAGE_OVERHEAD,
        || "timed out waiting for the attackers' first windows".into(),
    );
    let held = srv.dispatch_throttle().current();
    assert!(held <= held_most, "silent peers hold {held} bytes of dispatch budget");

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

// A peer that sends a large message quickly, holding more than the whole dispatch
// throttle as the oldest message in progress, then trickles it: a window per payload
// timeout no longer keeps it, it must also bring a sixteenth of what it holds. So it is
// faulted and everyone it made wait goes on. (At a window per timeout the rest of this
// 16 MiB message would have held the throttle for ~100 s; a 256 MiB one, for hours.)
fn budget_holding_trickler_is_faulted(proto: ProtocolVersion) {
    const MAX: u64 = 4 << 20;
    let timeout = Duration::from_secs(1);
    let config = MessengerConfig {
        dispatch_throttle_bytes: MAX,
        payload_timeout: timeout,
        ..test_config(2)
    };
    let (srv, _addr, _srv_rx) = echo_server(config);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    round_trips(&good, &cli_rx, 0, 1, 4096);
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "timed out waiting for the good request's budget back".into(),
    );

    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let len = 16 << 20;
    let wire = peer.announce(1, len, head_len(proto) + len - 1);
    let fast = head_len(proto) + MAX as usize + 1;
    peer.sock.write_all(&wire[..fast]).expect("the fast part");
    wait_until(
        || srv.dispatch_throttle().current() > MAX,
        || format!("the fast part holds {}", srv.dispatch_throttle().current()),
    );

    // 128 KiB/s: twice the progress window per timeout, half of a sixteenth of 4 MiB.
    let piece = 16 << 10;
    let mut sock = peer.sock.try_clone().expect("clone");
    let total = wire.len();
    let trickler = std::thread::spawn(move || {
        let mut sent = fast;
        let started = Instant::now();
        while sent + piece < wire.len() && started.elapsed() < 2 * WAIT {
            if sock.write_all(&wire[sent..sent + piece]).is_err() {
                break;
            }
            sent += piece;
            std::thread::sleep(Duration::from_millis(125));
        }
        sent
    });

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
fn a_trickler_holding_the_budget_must_progress_in_proportion() {
    budget_holding_trickler_is_faulted(ProtocolVersion::V1);
}

#[test]
fn a_trickler_holding_the_budget_must_progress_in_proportion_over_msgr2() {
    budget_holding_trickler_is_faulted(ProtocolVersion::V2);
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
