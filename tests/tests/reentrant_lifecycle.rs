//! A daemon calling the messenger's lifecycle back from its dispatchers, on loopback
//! (127.0.0.1, port 0), no sleeps: every wait is a channel receive with a timeout.
//!
//! The dispatch thread and the workers each may wait for the other in a shutdown (the
//! dispatch thread's shutdown joins a pool it owns and waits for the listener's worker;
//! a `wait` joins the dispatch thread): a shutdown and a `wait` called from hooks on
//! both at once must all return.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

/// Queued: ms_dispatch runs it.
const MSG_QUEUED: u16 = 0x7f00;
/// Fast-dispatched on the connection's worker.
const MSG_FAST: u16 = 0x7f01;

/// How long a hook waits for the other thread, and the test for a hook to return.
const HANG: Duration = Duration::from_secs(10);

/// Which thread shuts the messenger down first; the other calls `shutdown` and then
/// `wait` once that shutdown has begun (it is ending the sessions).
#[derive(Clone, Copy, PartialEq, Eq)]
enum First {
    DispatchThread,
    Worker,
}

struct Lifecycle {
    m: OnceLock<Weak<Messenger>>,
    first: First,
    /// The dispatch thread is in ms_dispatch.
    dispatching: Sender<()>,
    /// The worker is in ms_fast_dispatch, its connection's reset hook in place.
    fast: (Sender<()>, Receiver<()>),
    /// The first shutdown is ending the sessions (sent from the connection's reset hook).
    ending: (Sender<()>, Receiver<()>),
    done: Sender<&'static str>,
}

impl Lifecycle {
    fn messenger(&self) -> Option<Arc<Messenger>> {
        self.m.get().and_then(Weak::upgrade)
    }

    /// The thread that comes first shuts down; the other, once that shutdown is ending
    /// the sessions, shuts down (which returns at once) and waits.
    fn act(&self, me: First) {
        let Some(m) = self.messenger() else { return };
        if me == self.first {
            m.shutdown();
        } else {
            let _ = self.ending.1.recv_timeout(HANG);
            m.shutdown();
            m.wait();
        }
    }
}

impl Dispatcher<Connection> for Lifecycle {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_FAST
    }
    fn ms_fast_dispatch(&self, conn: &Connection, _msg: Message) {
        let ending = self.ending.0.clone();
        conn.inject_in_reset(move || {
            let _ = ending.try_send(());
        });
        let _ = self.fast.0.send(());
        self.act(First::Worker);
        let _ = self.done.send("worker");
    }
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        let _ = self.dispatching.send(());
        let _ = self.fast.1.recv_timeout(HANG);
        self.act(First::DispatchThread);
        let _ = self.done.send("dispatch thread");
        Dispatched::Taken
    }
}

/// A server on one worker (the listener's and the connection's; of a pool of its own,
/// or of `shared`) whose dispatch thread and worker are in a hook together, then shut it
/// down and wait as `first` says. Both hooks must return, and a `wait` from the test
/// thread after.
fn shutdown_and_wait_from_both_threads(first: First, shared: Option<Arc<WorkerPool>>) {
    let name = EntityName::new(EntityType::OSD, 0);
    let srv = Arc::new(
        match &shared {
            Some(pool) => Messenger::with_pool(name, 1, test_config(1), Arc::clone(pool)),
            None => Messenger::new(name, 1, test_config(1)),
        }
        .expect("new"),
    );
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (dispatching_tx, dispatching) = bounded(1);
    let (done_tx, done) = bounded(2);
    let d = Arc::new(Lifecycle {
        m: OnceLock::new(),
        first,
        dispatching: dispatching_tx,
        fast: bounded(1),
        ending: bounded(1),
        done: done_tx,
    });
    assert!(d.m.set(Arc::downgrade(&srv)).is_ok());
    srv.add_dispatcher_head(d).expect("dispatcher");
    let (cli, _cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    // The queued message first, and only once the dispatch thread holds it the fast one.
    conn.send_message(test_message(MSG_QUEUED, 1, Bytes::new())).expect("send");
    dispatching.recv_timeout(HANG).expect("ms_dispatch runs");
    conn.send_message(test_message(MSG_FAST, 2, Bytes::new())).expect("send");
    let mut returned: Vec<_> = (0..2)
        .map(|i| {
            done.recv_timeout(HANG)
                .unwrap_or_else(|_| panic!("{i} of 2 hooks returned: the other is deadlocked"))
        })
        .collect();
    returned.sort_unstable();
    assert_eq!(returned, ["dispatch thread", "worker"]);
    let (waited_tx, waited) = bounded(1);
    let waiter = {
        let srv = Arc::clone(&srv);
        std::thread::spawn(move || {
            srv.wait();
            let _ = waited_tx.send(());
        })
    };
    waited.recv_timeout(HANG).expect("wait from another thread returns");
    waiter.join().expect("waiter");
    cli.shutdown();
    if let Some(pool) = shared {
        pool.shutdown();
    }
}

fn one_worker() -> Option<Arc<WorkerPool>> {
    let config = WorkerPoolConfig { workers: 1, ..WorkerPoolConfig::default() };
    Some(Arc::new(WorkerPool::new(config).expect("pool")))
}

// ms_dispatch shuts the messenger down; meanwhile ms_fast_dispatch on the worker calls
// shutdown (which returns at once) and wait. The wait joined the dispatch thread, which
// was joining that worker (its pool) or waiting for it to close the listener: deadlock.
#[test]
fn wait_from_a_worker_while_the_dispatch_thread_shuts_down_returns() {
    shutdown_and_wait_from_both_threads(First::DispatchThread, None);
}

// The same on a shared pool: the dispatch thread's shutdown waited for the listener's
// worker to close it, and that worker's wait joined the dispatch thread.
#[test]
fn wait_from_a_worker_while_the_dispatch_thread_shuts_down_returns_on_a_shared_pool() {
    shutdown_and_wait_from_both_threads(First::DispatchThread, one_worker());
}

// ms_fast_dispatch shuts the messenger down; meanwhile ms_dispatch calls shutdown (which
// returns at once) and wait. The worker's shutdown joined the dispatch thread, whose wait
// joined that worker (its pool): deadlock.
#[test]
fn wait_from_the_dispatch_thread_while_a_worker_shuts_down_returns() {
    shutdown_and_wait_from_both_threads(First::Worker, None);
}

// The same on a shared pool: the dispatch thread's wait waited for the connection to
// leave the worker whose shutdown was joining the dispatch thread.
#[test]
fn wait_from_the_dispatch_thread_while_a_worker_shuts_down_returns_on_a_shared_pool() {
    shutdown_and_wait_from_both_threads(First::Worker, one_worker());
}
