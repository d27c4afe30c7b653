//! What the dispatchers hear when a messenger shuts down, as from Ceph's
//! `AsyncMessenger::shutdown` (`mark_down_all`: `AsyncConnection::stop(true)` queues a
//! reset for every connection not already closed) and `wait` (the dispatch thread, told
//! to stop only then, delivers its queued codes and discards its messages): one
//! `ms_handle_reset` per session still going, none for one the user marked down or for
//! the loopback connection, nothing after the shutdown returns, and no message that was
//! still waiting for `ms_dispatch`. Before, shutdown closed every connection silently and
//! dropped the queued events with the messages, so a daemon never freed what it keeps
//! per session (an MDS's session map, a client's per-connection bookkeeping).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
/// `ms_dispatch` of it shuts the messenger down.
const MSG_STOP: u16 = 0x7f01;
/// `ms_fast_dispatch` of it (on a worker) shuts the messenger down.
const MSG_FAST_STOP: u16 = 0x7f02;

/// What the messenger under test told its dispatcher, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Heard {
    /// A message: the connection's id and the message's tid.
    Message(u64, u64),
    /// `ms_handle_reset` of the connection with this id.
    Reset(u64),
    /// The dispatcher's own call to `shutdown` returned.
    ShutdownReturned,
}

/// Journals every message and reset (connects and accepts are not journalled); holds the
/// first message in `ms_dispatch` while `hold` is set, until the test sends on or drops
/// its sender; shuts the messenger in `stop` down on `MSG_STOP` / `MSG_FAST_STOP`.
struct Journal {
    heard: Mutex<Vec<Heard>>,
    /// Each entry as it is journalled, for the test to wait on.
    tx: Sender<Heard>,
    hold: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    stop: OnceLock<Weak<Messenger>>,
    /// The connection of the last message `ms_dispatch` was given.
    last: Mutex<Option<Connection>>,
}

impl Journal {
    fn new() -> (Arc<Journal>, Receiver<Heard>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let j = Journal {
            heard: Mutex::new(Vec::new()),
            tx,
            hold: Mutex::new(None),
            stop: OnceLock::new(),
            last: Mutex::new(None),
        };
        (Arc::new(j), rx)
    }

    fn note(&self, h: Heard) {
        self.heard.lock().push(h.clone());
        let _ = self.tx.send(h);
    }

    /// Makes `ms_dispatch` hold the next message it is given: the receiver hears when
    /// it holds it, and a send on (or drop of) the sender lets it go.
    fn hold_next(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered) = crossbeam_channel::bounded(1);
        let (release_tx, release) = crossbeam_channel::bounded(1);
        *self.hold.lock() = Some((entered_tx, release));
        (entered, release_tx)
    }

    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().clone()
    }

    /// Shuts the messenger down from this dispatcher, and notes that the call returned.
    fn shut_down(&self) {
        if let Some(m) = self.stop.get().and_then(Weak::upgrade) {
            m.shutdown();
            self.note(Heard::ShutdownReturned);
        }
    }
}

impl Dispatcher<Connection> for Journal {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_FAST_STOP
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.note(Heard::Message(conn.id(), msg.tid()));
        self.shut_down();
    }
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        *self.last.lock() = Some(conn.clone());
        self.note(Heard::Message(conn.id(), msg.tid()));
        // Taken out first: the lock is not held while the dispatcher waits.
        let hold = self.hold.lock().take();
        if let Some((entered, release)) = hold {
            let _ = entered.send(());
            let _ = release.recv_timeout(WAIT);
        }
        if msg.msg_type() == MSG_STOP {
            self.shut_down();
        }
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        self.note(Heard::Reset(conn.id()));
        true
    }
}

/// A started OSD (2 workers of its own) bound on 127.0.0.1 port 0, a stateless server
/// to clients and a lossless peer to other OSDs, whose one dispatcher is a [`Journal`].
fn journalled() -> (Arc<Messenger>, Arc<Journal>, Receiver<Heard>) {
    let name = EntityName::new(EntityType::OSD, 0);
    let m = Arc::new(Messenger::new(name, 1, test_config(2)).expect("new"));
    m.set_default_policy(Policy::stateless_server());
    m.set_policy(EntityType::OSD, Policy::lossless_peer());
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (j, rx) = Journal::new();
    assert!(j.stop.set(Arc::downgrade(&m)).is_ok());
    m.add_dispatcher_head(j.clone()).expect("dispatcher");
    (m, j, rx)
}

/// Waits for the next message journalled (passing over anything else); its connection.
fn next_message_on(rx: &Receiver<Heard>, tid: u64) -> u64 {
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(Heard::Message(conn, t)) if t == tid => return conn,
            Ok(_) => {}
            Err(e) => panic!("no message {tid} within {WAIT:?}: {e}"),
        }
    }
}

/// Runs `m.shutdown()` on a thread of its own; returns what `j` had heard the moment it
/// returned.
fn shutdown_from_another_thread(m: &Arc<Messenger>, j: &Arc<Journal>) -> Vec<Heard> {
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let stopper = {
        let (m, j) = (Arc::clone(m), Arc::clone(j));
        std::thread::spawn(move || {
            m.shutdown();
            let _ = done_tx.send(j.heard());
        })
    };
    let heard = done.recv_timeout(WAIT).expect("shutdown returned");
    stopper.join().expect("stopper");
    heard
}

/// The resets in `heard`, by connection id, sorted.
fn resets(heard: &[Heard]) -> Vec<u64> {
    let mut ids: Vec<u64> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Reset(c) => Some(*c),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// An OSD with a session it dialled (to another OSD) and one it accepted (from a
/// client), and a third it dialled and then marked down itself (`Connection::mark_down`,
/// the silent one), shut down from another thread: its dispatcher hears exactly one
/// `ms_handle_reset` for each of the first two before `shutdown` returns, none for the
/// third or for the loopback connection, and nothing once `shutdown` returned. Ceph's
/// `shutdown_connections(true)` stops the connections in `conns` and `accepting_conns`
/// with their reset; one marked down is already closed and gets none.
#[test]
fn shutdown_reports_one_reset_per_session_before_it_returns() {
    let (m, j, rx) = journalled();
    let (peer, _, _peer_rx) = server(EntityType::OSD, 2, Policy::lossless_peer(), true);
    let (gone, _, _gone_rx) = server(EntityType::OSD, 3, Policy::lossless_peer(), true);
    let (cli, _cli_rx) = client(EntityType::CLIENT, 4, Policy::lossy_client());

    let dialled = m.connect_to(EntityType::OSD, peer.my_addr());
    dialled.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    assert_eq!(next_message_on(&rx, 1), dialled.id(), "the echo comes back on it");
    let marked = m.connect_to(EntityType::OSD, gone.my_addr());
    marked.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    assert_eq!(next_message_on(&rx, 2), marked.id());
    let to_m = cli.connect_to(EntityType::OSD, m.my_addr());
    to_m.send_message(test_message(MSG_TEST, 3, Bytes::new())).expect("send");
    let accepted = next_message_on(&rx, 3);
    assert!(dialled.is_connected() && marked.is_connected());
    marked.mark_down();

    let heard = shutdown_from_another_thread(&m, &j);
    let mut expected = vec![dialled.id(), accepted];
    expected.sort_unstable();
    assert_eq!(resets(&heard), expected, "one reset per session, before shutdown returned");
    assert_eq!(heard.iter().filter(|h| matches!(h, Heard::Message(..))).count(), 3);
    m.wait();
    assert_eq!(j.heard(), heard, "nothing heard after shutdown returned");
    cli.shutdown();
    peer.shutdown();
    gone.shutdown();
}

/// Messages waiting for `ms_dispatch` when the messenger shuts down (a client's, read
/// while `ms_dispatch` held the first, and two sent to ourselves) are dropped, not
/// delivered; the `ms_dispatch` under way finishes, and then the client's session is
/// reset, before `shutdown` returns. Ceph's dispatch thread discards the messages it
/// finds once stopped (`_stop`'s `discard_queue` has taken the session's already) and
/// delivers the reset queued before.
#[test]
fn shutdown_drops_what_waits_for_ms_dispatch_and_then_reports_the_reset() {
    let (m, j, rx) = journalled();
    let (entered, release_tx) = j.hold_next();
    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, m.my_addr());
    for tid in 1..=5 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
    }
    entered.recv_timeout(WAIT).expect("ms_dispatch holds message 1");
    let accepted = next_message_on(&rx, 1);
    let me = m.get_loopback_connection();
    for tid in 6..=7 {
        me.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send to ourselves");
    }
    let queue = |key: &str| m.counters_json()["dispatch_queue"][key].as_u64().unwrap_or(0);
    wait_until(|| queue("len") == 6, || format!("6 messages queued: {}", m.counters_json()));

    let (done_tx, done) = crossbeam_channel::bounded(1);
    let stopper = {
        let (m, j) = (Arc::clone(&m), Arc::clone(&j));
        std::thread::spawn(move || {
            m.shutdown();
            let _ = done_tx.send(j.heard());
        })
    };
    // The shutdown drops the queued messages at once; only then does ms_dispatch return,
    // so none of them can have been dispatched before the shutdown began.
    wait_until(
        || queue("discarded") == 6 && queue("len") == queue("events"),
        || format!("messages dropped: {}", m.counters_json()),
    );
    assert!(
        done.recv_timeout(Duration::from_millis(100)).is_err(),
        "shutdown returned while ms_dispatch still ran"
    );
    release_tx.send(()).expect("release");
    let heard = done.recv_timeout(WAIT).expect("shutdown returned");
    stopper.join().expect("stopper");
    assert_eq!(
        heard,
        [Heard::Message(accepted, 1), Heard::Reset(accepted)],
        "message 1, then the session's reset; nothing that waited"
    );
    m.wait();
    assert_eq!(j.heard(), heard, "nothing heard after shutdown returned");
    cli.shutdown();
}

/// A dispatcher that shuts its own messenger down (from `ms_dispatch`, on the dispatch
/// thread; from `ms_fast_dispatch`, on a worker of the messenger's own pool) does not
/// deadlock, and the session's reset is still delivered, by the dispatch thread, before
/// a `wait` from a thread of its own returns, and nothing comes later. From the dispatch
/// thread, which cannot wait for itself, the reset comes once that dispatcher returned.
/// From a worker the shutdown does not wait for the dispatch thread either (which may be
/// waiting for that worker: `Messenger::shutdown`), so the reset, delivered there, may
/// come before or after the fast dispatcher's shutdown returns; nothing orders the two,
/// as in Ceph, whose shutdown only queues the resets (`AsyncConnection::stop(true)` →
/// `DispatchQueue::queue_reset`) for its dispatch thread and never waits for them.
/// `shutdown_from_a_fast_dispatcher_returns_before_a_busy_dispatch_thread_resets` pins
/// the one order down.
#[test]
fn shutdown_from_a_dispatcher_still_reports_the_resets() {
    for (stop, fast) in [(MSG_STOP, false), (MSG_FAST_STOP, true)] {
        let (m, j, rx) = journalled();
        let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
        let conn = cli.connect_to(EntityType::OSD, m.my_addr());
        conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
        let accepted = next_message_on(&rx, 1);
        conn.send_message(test_message(stop, 2, Bytes::new())).expect("send");
        let (done, waiter) = wait_on_a_thread(&m);
        done.recv_timeout(WAIT).expect("wait returned");
        waiter.join().expect("waiter");
        let heard = j.heard();
        let messages = [Heard::Message(accepted, 1), Heard::Message(accepted, 2)];
        assert_eq!(heard.get(..2), Some(&messages[..]), "fast: {fast}: {heard:?}");
        let reset_then_return = [Heard::Reset(accepted), Heard::ShutdownReturned];
        let return_then_reset = [Heard::ShutdownReturned, Heard::Reset(accepted)];
        let after_stop = &heard[2..];
        if fast {
            assert!(
                after_stop == reset_then_return || after_stop == return_then_reset,
                "fast: one reset and the shutdown's return, in either order: {heard:?}"
            );
        } else {
            assert_eq!(after_stop, return_then_reset, "slow: {heard:?}");
        }
        cli.shutdown();
    }
}

/// The order the test above leaves open, pinned down: `ms_dispatch` holds a message on
/// the dispatch thread while `ms_fast_dispatch` shuts the messenger down on a worker. The
/// shutdown returns without waiting for the dispatch thread (joining it from a worker
/// could deadlock), so the fast dispatcher hears it return first; the reset comes once
/// the held `ms_dispatch` returns, before a `wait` from a thread of its own returns.
#[test]
fn shutdown_from_a_fast_dispatcher_returns_before_a_busy_dispatch_thread_resets() {
    let (m, j, rx) = journalled();
    let (entered, release_tx) = j.hold_next();
    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, m.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    entered.recv_timeout(WAIT).expect("ms_dispatch holds message 1");
    let accepted = next_message_on(&rx, 1);
    conn.send_message(test_message(MSG_FAST_STOP, 2, Bytes::new())).expect("send");
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(Heard::ShutdownReturned) => break,
            Ok(_) => {}
            Err(e) => panic!("the fast dispatcher's shutdown did not return: {e}"),
        }
    }
    let (done, waiter) = wait_on_a_thread(&m);
    release_tx.send(()).expect("release");
    done.recv_timeout(WAIT).expect("wait returned");
    waiter.join().expect("waiter");
    assert_eq!(
        j.heard(),
        [
            Heard::Message(accepted, 1),
            Heard::Message(accepted, 2),
            Heard::ShutdownReturned,
            Heard::Reset(accepted)
        ],
        "the shutdown returned while ms_dispatch held message 1; the reset came after"
    );
    cli.shutdown();
}

/// Runs `f` with `m` on a thread of its own; the receiver gets what `j` had heard the
/// moment it returned.
fn on_a_thread_of_its_own(
    m: &Arc<Messenger>,
    j: &Arc<Journal>,
    f: fn(&Messenger),
) -> Receiver<Vec<Heard>> {
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let (m, j) = (Arc::clone(m), Arc::clone(j));
    std::thread::spawn(move || {
        f(&m);
        let _ = done_tx.send(j.heard());
    });
    done
}

/// A session that another thread is ending to report it (a `mark_down_all` here; a
/// newcomer replacing a lossy session, the standby bound and the session's own fault end
/// one the same way) when the messenger shuts down: the shutdown finds it already ended
/// and leaves its reset to that thread, but neither the shutdown nor a `wait` parked on a
/// third thread returns before that reset is delivered. Ceph's `mark_down_all` stops a
/// connection and queues its reset under the messenger's lock, which its shutdown's own
/// `mark_down_all` takes (a fault does both under the connection's lock, which `stop`
/// takes), so a shutdown cannot pass a connection whose reset is not queued yet, and the
/// dispatch thread stops only after. Here the shutdown went on and stopped
/// the dispatch queue, which then refused that reset: the daemon never heard the
/// session end.
#[test]
fn shutdown_waits_for_a_reset_another_thread_is_queuing() {
    let (m, j, rx) = journalled();
    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let to_m = cli.connect_to(EntityType::OSD, m.my_addr());
    to_m.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let accepted = next_message_on(&rx, 1);
    let conn = j.last.lock().clone().expect("the accepted connection");
    assert_eq!(conn.id(), accepted);

    // The first thread to end the session (the mark_down_all's) stops inside the window,
    // its messages stopped and its reset not queued, until released; the next (the
    // shutdown's) only says it got there.
    let (parked_tx, parked) = crossbeam_channel::bounded(1);
    let (release_tx, release) = crossbeam_channel::bounded::<()>(1);
    let (found_tx, found) = crossbeam_channel::bounded(1);
    let calls = AtomicUsize::new(0);
    conn.inject_in_reset(move || {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = parked_tx.send(());
            let _ = release.recv_timeout(WAIT);
        } else {
            let _ = found_tx.send(());
        }
    });
    let marked = on_a_thread_of_its_own(&m, &j, Messenger::mark_down_all);
    parked.recv_timeout(WAIT).expect("mark_down_all ended the session");
    let waited = on_a_thread_of_its_own(&m, &j, Messenger::wait);
    let stopped = on_a_thread_of_its_own(&m, &j, Messenger::shutdown);
    found.recv_timeout(WAIT).expect("the shutdown found the session ended");
    // A shutdown that does not wait for the reset returns about now (it has nothing else
    // to wait for); the release after this then comes too late. One that waits cannot
    // return before the release, however slow the machine.
    let early = stopped.recv_timeout(Duration::from_millis(200)).ok();
    release_tx.send(()).expect("release");
    let heard = early.or_else(|| stopped.recv_timeout(WAIT).ok()).expect("shutdown returned");
    assert_eq!(resets(&heard), [accepted], "the session's reset, before shutdown returned");
    let waited = waited.recv_timeout(WAIT).expect("wait returned");
    assert_eq!(resets(&waited), [accepted], "and before wait returned");
    marked.recv_timeout(WAIT).expect("mark_down_all returned");
    assert_eq!(resets(&j.heard()), [accepted], "once, and nothing after");
    cli.shutdown();
}
