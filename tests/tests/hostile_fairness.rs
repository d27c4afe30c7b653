//! Fairness: one busy or hostile peer must not stall the other connections of its worker
//! or of its dispatch queue. A server with one worker; a peer floods it (many small
//! messages, 1 MiB messages, or partial frames a few bytes per write) while a second
//! peer on the same worker sends pings one at a time. Measured on the worker as it
//! parses each ping: the flood bytes it read while the ping waited in its socket (a few
//! read budgets, whatever the machine's speed or load) and the time (far below a
//! stall). And a flood queued for `ms_dispatch` takes turns with another connection's
//! message at the same priority, as Ceph's `DispatchQueue` does. Over msgr v1 and msgr2.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::hostile::*;
use tests::loopback::*;

const MSG_PING: u16 = 0x7f00;
/// How long the flood runs while the pings are timed.
const FLOOD_FOR: Duration = Duration::from_secs(2);
/// The bound on the 99th percentile of the pings' waits while the flood runs: far above
/// what loopback takes (tens of µs) and what a read phase of the flood takes (a
/// `read_budget` of 1 MiB), far below a stall.
const P99_BOUND: Duration = Duration::from_millis(100);
/// The server's `read_budget` (the default): what one read phase of a connection takes
/// at most before the worker turns to its others.
const READ_BUDGET: u64 = 1 << 20;
/// Read budgets of the flood a ping may wait for (p99): the worker's iteration under
/// way enters the flooder's driver at most once per way (readiness, a timer, a notify),
/// the next may enter it before the pinger's, and a phase's last read of a large
/// segment may run past its budget by up to that read (measured: up to 6 MiB with
/// 1 MiB messages, 3 MiB otherwise); with a margin. A stall reads without bound.
const PHASES_BOUND: u64 = 16;

/// Counts the flood; for each ping, reports on the worker as it parses it (in
/// `ms_fast_preprocess`, whether the ping then goes to fast dispatch or to the queue)
/// the bytes the worker had read by then, and when.
struct Watch {
    fast: bool,
    floods: AtomicU64,
    counters: std::sync::OnceLock<Arc<messenger::counters::WorkerCounters>>,
    pings: crossbeam_channel::Sender<(u64, u64, Instant)>,
}

impl Dispatcher<Connection> for Watch {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {}
    fn ms_fast_preprocess(&self, _conn: &Connection, msg: &Message) {
        if msg.msg_type() != MSG_PING {
            self.floods.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let read = self.counters.get().map_or(0, |c| c.recv_bytes.load(Ordering::Relaxed));
        let _ = self.pings.send((msg.tid(), read, Instant::now()));
    }
}

/// A started one-worker server and its dispatcher, whose pings come out of the receiver.
fn one_worker_server(
    fast: bool,
    config: MessengerConfig,
) -> (Messenger, Arc<Watch>, Receiver<(u64, u64, Instant)>) {
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    m.set_default_policy(Policy::stateless_server());
    m.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (pings, rx) = crossbeam_channel::unbounded();
    let watch = Arc::new(Watch {
        fast,
        floods: AtomicU64::new(0),
        counters: std::sync::OnceLock::new(),
        pings,
    });
    let [counters] = m.worker_counters() else { panic!("one worker") };
    let _ = watch.counters.set(counters.clone());
    m.add_dispatcher_head(watch.clone()).expect("dispatcher");
    (m, watch, rx)
}

/// What a flooding peer sends.
#[derive(Clone, Copy, Debug)]
enum Flood {
    /// Messages with an 8-byte front, framed in batches of 256.
    Small,
    /// Messages with 1 MiB of data.
    Large,
    /// One message of 64 MiB of data, written a few bytes per write, as fast as writes go.
    Partial,
}

/// A peer flooding `srv` with `kind` until `stop`; returns the bytes it wrote.
fn flooder(
    srv: &Messenger,
    proto: ProtocolVersion,
    kind: Flood,
    stop: Arc<AtomicBool>,
) -> JoinHandle<u64> {
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    assert_eq!(peer.protocol(), proto);
    let reader = drain_in_background(peer.sock.try_clone().expect("clone"), stop.clone());
    std::thread::spawn(move || {
        let mut sock = peer.sock.try_clone().expect("clone");
        let mut wrote = 0u64;
        let mut tid = 1u64;
        match kind {
            Flood::Small => {
                while !stop.load(Ordering::Relaxed) {
                    let mut batch = Vec::with_capacity(256 * 128);
                    for _ in 0..256 {
                        batch.extend_from_slice(&peer.message(tid, &tid.to_le_bytes()));
                        tid += 1;
                    }
                    if sock.write_all(&batch).is_err() {
                        break;
                    }
                    wrote += batch.len() as u64;
                }
            }
            Flood::Large => {
                let data = Bytes::from(vec![5u8; 1 << 20]);
                while !stop.load(Ordering::Relaxed) {
                    let mut msg = Message::new(MSG_HOSTILE, Bytes::new());
                    msg.set_tid(tid);
                    msg.set_data(data.clone());
                    tid += 1;
                    let wire = peer.frame(msg);
                    if sock.write_all(&wire).is_err() {
                        break;
                    }
                    wrote += wire.len() as u64;
                }
            }
            Flood::Partial => {
                let len = 64 << 20;
                let wire = peer.announce(1, len, head_len(proto) + len);
                sock.set_nodelay(true).expect("nodelay");
                for piece in wire.chunks(3) {
                    if stop.load(Ordering::Relaxed) || sock.write_all(piece).is_err() {
                        break;
                    }
                    wrote += piece.len() as u64;
                }
            }
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
        wrote
    })
}

/// Pings written by `pinger` until `FLOOD_FOR` passed, one at a time: for each, how
/// long the worker took to parse it once it was in its socket, and how many bytes (the
/// flood's) it read meanwhile, each sorted. Measured on the worker, from the moment
/// the ping's write returned (loopback: the ping is readable then), so a delay of this
/// thread can only make a measure smaller.
fn ping_for(
    srv: &Messenger,
    pinger: &mut RawPeer,
    pings: &Receiver<(u64, u64, Instant)>,
) -> (Vec<Duration>, Vec<u64>) {
    let read = || srv.worker_counters()[0].recv_bytes.load(Ordering::Relaxed);
    let started = Instant::now();
    let (mut lat, mut bytes) = (Vec::new(), Vec::new());
    let mut tid = 1;
    while started.elapsed() < FLOOD_FOR {
        let mut ping = Message::new(MSG_PING, Bytes::new());
        ping.set_tid(tid);
        let wire = pinger.frame(ping);
        pinger.sock.write_all(&wire).expect("ping");
        let (sent, read_before) = (Instant::now(), read());
        let (got, read_at, at) = pings.recv_timeout(WAIT).expect("the ping parsed");
        assert_eq!(got, tid, "pings in order");
        lat.push(at.saturating_duration_since(sent));
        bytes.push(read_at.saturating_sub(read_before));
        tid += 1;
    }
    lat.sort();
    bytes.sort();
    (lat, bytes)
}

fn percentile<T: Copy>(lat: &[T], p: usize) -> T {
    lat[(lat.len() * p / 100).min(lat.len() - 1)]
}

fn flood_does_not_stall_another_connection(proto: ProtocolVersion, kind: Flood, fast: bool) {
    let config = MessengerConfig {
        read_budget: READ_BUDGET as usize,
        // The flood's partial frame must not be cut off while the pings are timed.
        payload_timeout: PATIENCE,
        connection_ready_timeout: PATIENCE,
        ..test_config(1)
    };
    let (srv, watch, pings) = one_worker_server(fast, config);
    let mut pinger = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    // Each ping leaves at once (no Nagle delay waiting for the last one's ACK), and the
    // server's acks are read, so it never waits for the pinger's socket.
    pinger.sock.set_nodelay(true).expect("nodelay");
    let stop = Arc::new(AtomicBool::new(false));
    let pinger_reader = drain_in_background(pinger.sock.try_clone().expect("clone"), stop.clone());

    let flood = flooder(&srv, proto, kind, stop.clone());
    // The flood is under way before the pings are timed.
    let before = srv.worker_counters()[0].recv_bytes.load(Ordering::Relaxed);
    wait_until(
        || {
            srv.worker_counters()[0].recv_bytes.load(Ordering::Relaxed) > before + (1 << 20)
                || flood.is_finished()
        },
        || "the flood did not start".into(),
    );
    let (lat, bytes) = ping_for(&srv, &mut pinger, &pings);
    let still_flooding = !flood.is_finished();
    stop.store(true, Ordering::Relaxed);
    let wrote = flood.join().expect("flooder");
    let _ = pinger_reader.join();
    let (p50, p99, max) = (percentile(&lat, 50), percentile(&lat, 99), lat[lat.len() - 1]);
    let (b50, b99, bmax) = (percentile(&bytes, 50), percentile(&bytes, 99), bytes[bytes.len() - 1]);
    eprintln!(
        "{proto:?} {kind:?} fast={fast}: {} pings, parsed after p50 {p50:?} p99 {p99:?} \
         max {max:?}; flood bytes read meanwhile p50 {b50} p99 {b99} max {bmax}; \
         flooder wrote {} MiB, {} messages parsed",
        lat.len(),
        wrote >> 20,
        watch.floods.load(Ordering::Relaxed),
    );
    assert!(still_flooding, "the flooder stopped before the pings ended");
    // Independent of the machine's speed and load: while a ping waits in its socket,
    // the worker serves the flood a few read phases, not more.
    assert!(
        b99 <= PHASES_BOUND * READ_BUDGET,
        "{proto:?} {kind:?}: {b99} bytes of the flood read while a ping waited (p99)"
    );
    // The time only in a release build: a debug build's read phase of small messages
    // took up to 1.3 s on a loaded machine, where the bytes above are the measure.
    if !cfg!(debug_assertions) {
        assert!(p99 < P99_BOUND, "{proto:?} {kind:?}: p99 {p99:?} (max {max:?}) while flooded");
    }
    srv.shutdown();
}

macro_rules! flood_tests {
    ($($name:ident: $proto:ident, $kind:ident, $fast:expr;)*) => {$(
        #[test]
        fn $name() {
            flood_does_not_stall_another_connection(ProtocolVersion::$proto, Flood::$kind, $fast);
        }
    )*};
}

flood_tests! {
    small_flood_v1_fast: V1, Small, true;
    small_flood_v2_fast: V2, Small, true;
    large_flood_v1_fast: V1, Large, true;
    large_flood_v2_fast: V2, Large, true;
    partial_flood_v1_fast: V1, Partial, true;
    partial_flood_v2_fast: V2, Partial, true;
    small_flood_v1_queued: V1, Small, false;
    small_flood_v2_queued: V2, Small, false;
    large_flood_v1_queued: V1, Large, false;
    large_flood_v2_queued: V2, Large, false;
}

/// A queued dispatcher whose first flood message holds the dispatch thread until the
/// gate opens, recording the order it dispatches in.
struct Gated {
    gate: Receiver<()>,
    held: crossbeam_channel::Sender<()>,
    gated: AtomicBool,
    order: parking_lot::Mutex<Vec<u16>>,
    done: crossbeam_channel::Sender<()>,
}

impl Dispatcher<Connection> for Gated {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        if !self.gated.swap(true, Ordering::Relaxed) {
            let _ = self.held.send(());
            let _ = self.gate.recv_timeout(WAIT);
        }
        self.order.lock().push(msg.msg_type());
        if msg.msg_type() == MSG_PING {
            let _ = self.done.send(());
        }
        Dispatched::Taken
    }
}

/// Ceph's `DispatchQueue` takes the connections waiting at one priority in turn: a peer
/// with thousands of messages queued holds another connection's message (same
/// priority) back by at most one of its own.
fn queued_flood_takes_turns(proto: ProtocolVersion) {
    const FLOOD: u64 = 2000;
    let (srv, _, _pings) = one_worker_server(false, patient_config(1));
    let (gate_tx, gate) = crossbeam_channel::bounded(1);
    let (held, held_rx) = crossbeam_channel::bounded(1);
    let (done, done_rx) = crossbeam_channel::bounded(1);
    let gated = Arc::new(Gated {
        gate,
        held,
        gated: AtomicBool::new(false),
        order: parking_lot::Mutex::new(Vec::new()),
        done,
    });
    srv.add_dispatcher_head(gated.clone()).expect("dispatcher");
    // Messages waiting (events, such as the good connection's accept, not counted).
    let queued = || {
        let q = &srv.counters_json()["dispatch_queue"];
        q["len"].as_u64().unwrap_or(0) - q["events"].as_u64().unwrap_or(0)
    };

    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let mut wire = Vec::new();
    for tid in 1..=FLOOD {
        wire.extend_from_slice(&peer.message(tid, &tid.to_le_bytes()));
    }
    peer.sock.write_all(&wire).expect("flood");
    held_rx.recv_timeout(WAIT).expect("the first flood message holds the dispatch thread");
    wait_until(|| queued() == FLOOD - 1, || format!("{} of the flood queued", queued()));

    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    good.send_message(test_message(MSG_PING, 1, Bytes::new())).expect("send");
    wait_until(
        || queued() == FLOOD,
        || {
            format!(
                "{} queued, the good message not: {}",
                queued(),
                srv.counters_json()["dispatch_queue"]
            )
        },
    );
    gate_tx.send(()).expect("open the gate");
    done_rx.recv_timeout(WAIT).expect("the good message is dispatched");
    let order = gated.order.lock().clone();
    let before = order.iter().position(|t| *t == MSG_PING).expect("dispatched");
    // The held message itself, then at most one more of the flood's.
    assert!(before <= 2, "{before} flood messages went before the other connection's");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_queued_flood_takes_turns_with_another_connection() {
    queued_flood_takes_turns(ProtocolVersion::V1);
}

#[test]
fn a_queued_flood_takes_turns_with_another_connection_over_msgr2() {
    queued_flood_takes_turns(ProtocolVersion::V2);
}
