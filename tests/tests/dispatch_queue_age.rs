//! `Messenger::dispatch_queue_len` and `Messenger::dispatch_queue_max_age` (Ceph's
//! `get_dispatch_queue_len` and `get_dispatch_queue_max_age`): what waits for
//! `ms_dispatch` and for how long, read while a dispatcher holds the dispatch thread, as
//! an MDS reads them before it marks a client's session stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Holds the dispatch thread in the `ms_dispatch` of the message with tid 1 until
/// `release` says so (or [`WAIT`] passes); reports every tid it takes.
struct Gate {
    taken: Sender<u64>,
    release: Receiver<()>,
}

impl Dispatcher<Connection> for Gate {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        let _ = self.taken.send(msg.tid());
        if msg.tid() == 1 {
            let _ = self.release.recv_timeout(WAIT);
        }
        Dispatched::Taken
    }
}

/// A started MDS messenger (nonce `nonce`, `policy` for every peer) whose only
/// dispatcher is a [`Gate`]: the messenger, the tids the gate takes, and its release.
fn gated_mds(nonce: u32, policy: Policy) -> (Messenger, Receiver<u64>, Sender<()>) {
    let srv =
        Messenger::new(EntityName::new(EntityType::MDS, 0), nonce, test_config(1)).expect("server");
    srv.set_default_policy(policy);
    srv.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    srv.start().expect("start");
    let (taken_tx, taken) = crossbeam_channel::unbounded();
    let (release, release_rx) = crossbeam_channel::bounded(1);
    srv.add_dispatcher_head(Arc::new(Gate { taken: taken_tx, release: release_rx }))
        .expect("dispatcher");
    (srv, taken, release)
}

/// While the dispatch thread is held by the first of five messages, the other four are
/// counted waiting, and the age of the oldest grows with the time it waits, never past
/// the time since its connection was dialled; once the thread goes on, both are back to zero.
#[test]
fn dispatch_queue_len_and_max_age_follow_what_waits_for_ms_dispatch() {
    let (srv, taken, release) = gated_mds(1, Policy::stateful_server());
    assert_eq!(srv.dispatch_queue_len(), 0, "nothing received yet");
    assert_eq!(srv.dispatch_queue_max_age(), Duration::ZERO, "nothing received yet");

    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
    // Before the dial: the worker stamps a message with the time its loop woke for it,
    // which may be before the message was sent, never before the dial.
    let sent_at = Instant::now();
    let conn = cli.connect_to(EntityType::MDS, srv.my_addr());
    for tid in 1..=5 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from_static(b"renew"))).expect("send");
    }
    assert_eq!(taken.recv_timeout(WAIT).expect("the first message dispatched"), 1);
    // The accept event, if still queued, goes before the messages; the four others then
    // wait behind the held dispatcher.
    wait_until(
        || srv.dispatch_queue_len() == 4,
        || format!("four messages waiting, found {}", srv.dispatch_queue_len()),
    );
    let first = srv.dispatch_queue_max_age();
    assert!(first > Duration::ZERO, "a message waits: its age is not zero");
    assert!(first <= sent_at.elapsed(), "{first:?} is older than the dial");

    // Measured, not waited on: the oldest message keeps waiting while the thread is held.
    let pause = Duration::from_millis(150);
    std::thread::sleep(pause);
    let later = srv.dispatch_queue_max_age();
    assert!(later >= first + pause, "{later:?} after {first:?} and a pause of {pause:?}");
    assert!(later <= sent_at.elapsed(), "{later:?} is older than the dial");
    assert_eq!(srv.dispatch_queue_len(), 4, "nothing taken while the thread is held");

    release.send(()).expect("release");
    for tid in 2..=5 {
        assert_eq!(taken.recv_timeout(WAIT).expect("the rest dispatched"), tid);
    }
    wait_until(
        || srv.dispatch_queue_len() == 0,
        || format!("queue drained, found {}", srv.dispatch_queue_len()),
    );
    assert_eq!(srv.dispatch_queue_max_age(), Duration::ZERO, "nothing waits any more");

    cli.shutdown();
    srv.shutdown();
}

/// The connection events count too (as in Ceph, whose queue holds them with the
/// messages), but have no age: a connection's `ms_handle_reset` queued behind a held
/// dispatcher is one item waiting, and the age stays that of the messages.
#[test]
fn dispatch_queue_len_counts_events_but_max_age_only_messages() {
    let (srv, taken, release) = gated_mds(3, Policy::stateless_server());

    let (cli, _cli_rx) = client(EntityType::CLIENT, 4, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::MDS, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    assert_eq!(taken.recv_timeout(WAIT).expect("the message dispatched"), 1);
    wait_until(|| srv.connection_count() == 1, || "the server's connection".into());
    // The server ends its lossy session: its reset waits behind the held dispatcher.
    srv.mark_down_all();
    wait_until(
        || srv.dispatch_queue_len() == 1,
        || format!("the reset waiting, found {}", srv.dispatch_queue_len()),
    );
    assert_eq!(srv.dispatch_queue_max_age(), Duration::ZERO, "no message waits");

    release.send(()).expect("release");
    wait_until(
        || srv.dispatch_queue_len() == 0,
        || format!("queue drained, found {}", srv.dispatch_queue_len()),
    );
    cli.shutdown();
    srv.shutdown();
}
