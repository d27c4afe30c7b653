//! Two messengers in one process (an OSD's front and back messengers, a client and a
//! server) shutting each other down from their dispatchers, on loopback (127.0.0.1, port
//! 0), no sleeps: every wait is a channel receive with a timeout.
//!
//! Messenger A's hook calls `B.shutdown()` and `B.wait()` while B's hook calls
//! `A.shutdown()` and `A.wait()`, each hook on its messenger's dispatch thread
//! (`ms_dispatch`) or on a worker (`ms_fast_dispatch`), each messenger on a pool of its
//! own or both on one shared pool. A shutdown or a wait joining the other messenger's
//! dispatch thread or workers, while that thread joins ours, deadlocked: all four calls
//! must return, and a `wait` from a thread of neither after them. The same for each hook
//! dropping the last handle of the other messenger (a drop shuts it down and joins).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

/// Queued: ms_dispatch runs it.
const MSG_QUEUED: u16 = 0x7f00;
/// Fast-dispatched on the connection's worker.
const MSG_FAST: u16 = 0x7f01;

/// How long a hook waits for the other messenger's, and the test for a hook to return.
const HANG: Duration = Duration::from_secs(10);

/// Where a messenger's hook shuts the other messenger down.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum At {
    DispatchThread,
    Worker,
}

impl At {
    fn message(self) -> u16 {
        match self {
            At::DispatchThread => MSG_QUEUED,
            At::Worker => MSG_FAST,
        }
    }
}

/// What a hook does to the other messenger.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ends {
    /// `shutdown` and `wait`.
    ShutdownAndWait,
    /// Drops the last handle of it.
    LastHandle,
}

/// One messenger's dispatcher: once both messengers' hooks are in, shuts the other down
/// and waits for it, or drops the last handle of it.
struct ShutsTheOtherDown {
    name: &'static str,
    other: OnceLock<Weak<Messenger>>,
    /// The last handle of the other messenger, for [`Ends::LastHandle`].
    last: Mutex<Option<Arc<Messenger>>>,
    /// Told when this hook is in.
    here: Sender<()>,
    /// Hears when the other messenger's hook is in.
    there: Receiver<()>,
    done: Sender<&'static str>,
}

impl ShutsTheOtherDown {
    fn act(&self) {
        let _ = self.here.send(());
        let _ = self.there.recv_timeout(HANG);
        let last = self.last.lock().take();
        if last.is_some() {
            drop(last);
        } else if let Some(other) = self.other.get().and_then(Weak::upgrade) {
            other.shutdown();
            other.wait();
        }
        let _ = self.done.send(self.name);
    }
}

impl Dispatcher<Connection> for ShutsTheOtherDown {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_FAST
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        self.act();
    }
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        self.act();
        Dispatched::Taken
    }
}

fn server(name: EntityName, nonce: u32, shared: &Option<Arc<WorkerPool>>) -> Arc<Messenger> {
    let m = match shared {
        Some(pool) => Messenger::with_pool(name, nonce, test_config(1), Arc::clone(pool)),
        None => Messenger::new(name, nonce, test_config(1)),
    }
    .expect("new");
    m.set_default_policy(Policy::stateless_server());
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    Arc::new(m)
}

/// Messengers A and B, each with one peer connected; then A's hook (`a_at`) and B's
/// (`b_at`) are in together, and each shuts the other messenger down and waits for it.
fn shut_each_other_down(a_at: At, b_at: At, shared: Option<Arc<WorkerPool>>) {
    end_each_other(a_at, b_at, shared, Ends::ShutdownAndWait);
}

fn end_each_other(a_at: At, b_at: At, shared: Option<Arc<WorkerPool>>, ends: Ends) {
    let a = server(EntityName::new(EntityType::OSD, 0), 1, &shared);
    let b = server(EntityName::new(EntityType::OSD, 1), 2, &shared);
    let (a_here, a_there) = bounded(1);
    let (b_here, b_there) = bounded(1);
    let (done_tx, done) = bounded(2);
    let da = Arc::new(ShutsTheOtherDown {
        name: "A's hook",
        other: OnceLock::new(),
        last: Mutex::new(None),
        here: a_here,
        there: b_there,
        done: done_tx.clone(),
    });
    let db = Arc::new(ShutsTheOtherDown {
        name: "B's hook",
        other: OnceLock::new(),
        last: Mutex::new(None),
        here: b_here,
        there: a_there,
        done: done_tx,
    });
    assert!(da.other.set(Arc::downgrade(&b)).is_ok());
    assert!(db.other.set(Arc::downgrade(&a)).is_ok());
    a.add_dispatcher_head(Arc::clone(&da) as _).expect("dispatcher");
    b.add_dispatcher_head(Arc::clone(&db) as _).expect("dispatcher");
    // Both peers connected before either hook holds its thread: on a shared pool the
    // second connection goes to the worker the first did not (the least loaded), and
    // neither accept waits for a worker held in a hook.
    let (cli_a, _rx_a) = client(EntityType::CLIENT, 3, Policy::lossy_client());
    let (cli_b, _rx_b) = client(EntityType::CLIENT, 4, Policy::lossy_client());
    let conn_a = cli_a.connect_to(EntityType::OSD, a.my_addr());
    wait_for_connection_count(&a, 1, "A");
    let conn_b = cli_b.connect_to(EntityType::OSD, b.my_addr());
    wait_for_connection_count(&b, 1, "B");
    if ends == Ends::LastHandle {
        // The hooks hold the only handles: the test keeps nothing that would join.
        *da.last.lock() = Some(b);
        *db.last.lock() = Some(a);
        conn_a.send_message(test_message(a_at.message(), 1, Bytes::new())).expect("send");
        conn_b.send_message(test_message(b_at.message(), 1, Bytes::new())).expect("send");
        for i in 0..2 {
            if done.recv_timeout(HANG).is_err() {
                panic!("{i} of 2 hooks returned: deadlocked (A at {a_at:?}, B at {b_at:?})");
            }
        }
        cli_a.shutdown();
        cli_b.shutdown();
        return;
    }
    conn_a.send_message(test_message(a_at.message(), 1, Bytes::new())).expect("send");
    conn_b.send_message(test_message(b_at.message(), 1, Bytes::new())).expect("send");

    // On a hang the threads involved stay blocked: the messengers are leaked, not
    // dropped (a drop would join them too, and the test would never report).
    let hung = |what: String, a: Arc<Messenger>, b: Arc<Messenger>| -> ! {
        std::mem::forget(a);
        std::mem::forget(b);
        panic!("{what} (A at {a_at:?}, B at {b_at:?})");
    };
    let mut returned = Vec::new();
    for i in 0..2 {
        match done.recv_timeout(HANG) {
            Ok(who) => returned.push(who),
            Err(_) => hung(format!("{i} of 2 hooks returned ({returned:?}): deadlocked"), a, b),
        }
    }
    let (waited_tx, waited) = bounded(1);
    {
        let (a, b) = (Arc::clone(&a), Arc::clone(&b));
        std::thread::spawn(move || {
            a.wait();
            b.wait();
            let _ = waited_tx.send(());
        });
    }
    if waited.recv_timeout(HANG).is_err() {
        hung("a wait from another thread did not return".into(), a, b);
    }
    cli_a.shutdown();
    cli_b.shutdown();
    drop((a, b));
    if let Some(pool) = shared {
        pool.shutdown();
    }
}

fn two_workers() -> Option<Arc<WorkerPool>> {
    let config = WorkerPoolConfig { workers: 2, ..WorkerPoolConfig::default() };
    Some(Arc::new(WorkerPool::new(config).expect("pool")))
}

// Each dispatch thread joined the other's: deadlock, whatever the pools.
#[test]
fn dispatch_threads_shutting_each_others_messenger_down_return() {
    shut_each_other_down(At::DispatchThread, At::DispatchThread, None);
}

#[test]
fn dispatch_threads_shutting_each_others_messenger_down_return_on_a_shared_pool() {
    shut_each_other_down(At::DispatchThread, At::DispatchThread, two_workers());
}

// Each worker joined the other's pool: deadlock.
#[test]
fn workers_shutting_each_others_messenger_down_return() {
    shut_each_other_down(At::Worker, At::Worker, None);
}

// Both on one pool: each worker is one of the other messenger's, which the shutdown and
// the wait recognised already.
#[test]
fn workers_shutting_each_others_messenger_down_return_on_a_shared_pool() {
    shut_each_other_down(At::Worker, At::Worker, two_workers());
}

// A's dispatch thread joined B's pool, whose worker joined A's dispatch thread: deadlock.
#[test]
fn a_dispatch_thread_and_a_worker_shutting_each_others_messenger_down_return() {
    shut_each_other_down(At::DispatchThread, At::Worker, None);
}

// On one pool: B's worker is also A's, which A's shutdown recognised; A's dispatch thread
// joining B's dispatch thread is harmless there (that one is not in a hook).
#[test]
fn a_dispatch_thread_and_a_worker_shutting_each_others_messenger_down_return_on_a_shared_pool() {
    shut_each_other_down(At::DispatchThread, At::Worker, two_workers());
}

// Each hook drops the last handle of the other messenger: each drop shut its messenger
// down and then joined its dispatch thread (the dispatch queue's drop) and its workers
// (the pool's), which were in the other drop, joining ours: deadlock.
#[test]
fn dispatch_threads_dropping_each_others_last_handle_return() {
    end_each_other(At::DispatchThread, At::DispatchThread, None, Ends::LastHandle);
}

#[test]
fn workers_dropping_each_others_last_handle_return() {
    end_each_other(At::Worker, At::Worker, None, Ends::LastHandle);
}

#[test]
fn a_dispatch_thread_and_a_worker_dropping_each_others_last_handle_return() {
    end_each_other(At::DispatchThread, At::Worker, None, Ends::LastHandle);
}

#[test]
fn dispatch_threads_dropping_each_others_last_handle_return_on_a_shared_pool() {
    end_each_other(At::DispatchThread, At::DispatchThread, two_workers(), Ends::LastHandle);
}
