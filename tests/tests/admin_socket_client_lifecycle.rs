//! An admin client still being served when its admin socket stops (the messenger shut
//! down, or a new admin socket replaced it) is closed then, with its deadline timer: on a
//! shared pool, whose workers outlive the messenger, it stayed on the worker until
//! `ADMIN_CLIENT_DEADLINE`, holding its descriptor, a handler, a timer and the whole
//! shut-down messenger's environment (and answering a command sent meanwhile). A file
//! of its own: it counts the handlers and timers of a pool no other test uses.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger::{Connection, Dispatched, Dispatcher, Messenger, WorkerPool, WorkerPoolConfig};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::{closed_by_server, init_logging, test_config, wait_until};

struct Quiet;

impl Dispatcher<Connection> for Quiet {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
}

/// Handlers and armed timers on the pool's one worker.
fn load(pool: &WorkerPool) -> (usize, usize) {
    pool.handle(0).submit_to(|cx| (cx.handler_count(), cx.timer_count())).expect("worker")
}

#[test]
fn admin_clients_are_closed_when_the_admin_socket_stops_on_a_shared_pool() {
    init_logging();
    let pool = Arc::new(
        WorkerPool::new(WorkerPoolConfig { workers: 1, ..WorkerPoolConfig::default() })
            .expect("pool"),
    );
    let dir = std::env::temp_dir().join(format!("asyncmsgr-admin-life-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (first, second) = (dir.join("first.asok"), dir.join("second.asok"));
    let m =
        Messenger::with_pool(EntityName::new(EntityType::OSD, 0), 1, test_config(1), pool.clone())
            .expect("messenger");
    m.start().expect("start");
    m.add_dispatcher_head(Arc::new(Quiet)).expect("dispatcher");
    let idle = load(&pool);

    // A client of the first admin socket that never sends its command; the socket is
    // replaced by one at another path.
    m.start_admin_socket(&first).expect("admin socket");
    let mut replaced = UnixStream::connect(&first).expect("connect");
    // The listener, the client and its deadline.
    wait_until(|| load(&pool) == (idle.0 + 2, idle.1 + 1), || format!("{:?}", load(&pool)));
    m.start_admin_socket(&second).expect("second admin socket");
    assert!(
        closed_by_server(&mut replaced, Duration::from_secs(3)),
        "a replaced socket's client is closed"
    );

    // A client of the second, when the messenger shuts down.
    let mut stalled = UnixStream::connect(&second).expect("connect");
    wait_until(|| load(&pool) == (idle.0 + 2, idle.1 + 1), || format!("{:?}", load(&pool)));
    let shut = Instant::now();
    m.shutdown();
    m.wait();
    assert!(closed_by_server(&mut stalled, Duration::from_secs(3)), "closed at the shutdown");
    assert!(shut.elapsed() < Duration::from_secs(5));
    assert_eq!(load(&pool), idle, "no handler or timer left on the shared worker");
    drop(m);
    pool.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
