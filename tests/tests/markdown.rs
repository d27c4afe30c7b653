//! Ceph's MarkdownTest (test_msgr.cc): the deadlock detector. Dispatchers that mark down
//! *other* connections while holding their own lock, with random 0–500 µs pauses inside
//! it, while `ms_handle_reset` takes the same lock — on the dispatch thread and, in the
//! fast variant, on the workers. Plus `mark_down_all` and `shutdown` called from inside a
//! reset handler. A watchdog (`tests::watchdog`) turns any stall into a failure that
//! prints which thread waits on what.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use rand::Rng;
use tests::loopback::{test_config, test_message};
use tests::watchdog::Watchdog;

const MSG_PING: u16 = 2;
const ITERATIONS: u64 = 1000;
/// No progress for this long is a stall (the watchdog fires before any channel wait of
/// the test gives up, so a stall always comes with its dump).
const STALL: Duration = Duration::from_secs(15);
const BACKSTOP: Duration = Duration::from_secs(60);

/// Messengers a watchdog dump shows.
type Registry = Arc<Mutex<Vec<(String, Weak<Messenger>)>>>;

fn watchdog(name: &str) -> (Arc<Watchdog>, Registry) {
    let registry: Registry = Arc::new(Mutex::new(Vec::new()));
    let shown = registry.clone();
    let wd = Watchdog::start(name, STALL, move || {
        let mut out = String::new();
        let list = shown.lock().clone();
        for (name, m) in list {
            if let Some(m) = m.upgrade() {
                out += &format!(
                    "{name}: connections {}\n  counters {}\n",
                    m.dump_connections(),
                    m.counters_json()["dispatch_queue"]
                );
            }
        }
        out
    });
    (Arc::new(wd), registry)
}

fn register(registry: &Registry, name: &str, m: &Arc<Messenger>) {
    registry.lock().push((name.to_owned(), Arc::downgrade(m)));
}

fn pause_up_to_500us() {
    std::thread::sleep(Duration::from_micros(rand::thread_rng().gen_range(0..500)));
}

struct MarkdownState {
    conns: Vec<Connection>,
    last_mark: bool,
}

/// Ceph's MarkdownDispatcher: on every message, under its lock, marks down a connection
/// other than the one the message came on; resets take the same lock.
struct MarkdownDispatcher {
    name: &'static str,
    /// Run the markdown from `ms_fast_dispatch` (on a worker) instead of `ms_dispatch`.
    fast: bool,
    state: Mutex<MarkdownState>,
    count: AtomicU64,
    watchdog: Arc<Watchdog>,
    dispatched: Sender<u64>,
    resets: Sender<Connection>,
}

impl MarkdownDispatcher {
    fn new(
        name: &'static str,
        fast: bool,
        watchdog: Arc<Watchdog>,
    ) -> (Arc<MarkdownDispatcher>, Receiver<u64>, Receiver<Connection>) {
        let (dispatched, dispatched_rx) = crossbeam_channel::unbounded();
        let (resets, resets_rx) = crossbeam_channel::unbounded();
        let d = MarkdownDispatcher {
            name,
            fast,
            state: Mutex::new(MarkdownState { conns: Vec::new(), last_mark: false }),
            count: AtomicU64::new(0),
            watchdog,
            dispatched,
            resets,
        };
        (Arc::new(d), dispatched_rx, resets_rx)
    }

    fn remember(&self, conn: &Connection, hook: &str) {
        // Not the loopback connection, whose fast connect every fast dispatcher hears
        // and which no mark_down closes: Ceph's test marks down connections to peers.
        if conn.is_loopback() {
            return;
        }
        let _w =
            self.watchdog.doing(format!("{} {hook}: waiting for the dispatcher lock", self.name));
        let mut st = self.state.lock();
        if !st.conns.contains(conn) {
            st.conns.push(conn.clone());
        }
    }

    fn mark_down_another(&self, conn: &Connection, msg: &Message) {
        let _w =
            self.watchdog.doing(format!("{} dispatch: waiting for the dispatcher lock", self.name));
        let mut st = self.state.lock();
        let _h =
            self.watchdog.doing(format!("{} dispatch: holding the dispatcher lock", self.name));
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self.dispatched.send(msg.tid());
        if !st.conns.contains(conn) {
            st.conns.push(conn.clone());
        }
        if st.conns.len() < 2 && !st.last_mark {
            return;
        }
        st.last_mark = true;
        pause_up_to_500us();
        if let Some(pos) = st.conns.iter().position(|c| c != conn) {
            let other = st.conns.remove(pos);
            let _m = self.watchdog.doing(format!(
                "{} dispatch: holding the dispatcher lock, marking down {other:?}",
                self.name
            ));
            other.mark_down();
        }
        if st.conns.is_empty() {
            st.last_mark = false;
        }
    }
}

impl Dispatcher<Connection> for MarkdownDispatcher {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.mark_down_another(conn, &msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        self.fast && msg.msg_type() == MSG_PING
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.mark_down_another(conn, &msg);
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        self.remember(conn, "fast connect");
    }
    fn ms_handle_fast_accept(&self, conn: &Connection) {
        self.remember(conn, "fast accept");
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _w =
            self.watchdog.doing(format!("{} reset: waiting for the dispatcher lock", self.name));
        let mut st = self.state.lock();
        let _h = self.watchdog.doing(format!("{} reset: holding the dispatcher lock", self.name));
        st.conns.retain(|c| c != conn);
        pause_up_to_500us();
        let _ = self.resets.send(conn.clone());
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let _w = self.watchdog.doing(format!("{} remote reset: waiting for the lock", self.name));
        self.state.lock().conns.retain(|c| c != conn);
    }
}

fn messenger(ty: EntityType, nonce: u32, policy: Policy, bind: bool) -> Arc<Messenger> {
    let m = Messenger::new(EntityName::new(ty, nonce as i64), nonce, test_config(2))
        .expect("messenger");
    m.set_default_policy(policy);
    if bind {
        m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    }
    m.start().expect("start");
    Arc::new(m)
}

/// 2 servers sharing one MarkdownDispatcher, 1 client with its own; 1000 rounds of a
/// ping on each server's connection. Every ping is either dispatched or lost with its
/// connection, which the client then sees reset: nothing hangs, and the servers keep
/// dispatching to the end.
fn markdown_rounds(name: &'static str, fast: bool) {
    let (wd, registry) = watchdog(name);
    let (srv_d, dispatched, _srv_resets) = MarkdownDispatcher::new("server", fast, wd.clone());
    let (cli_d, _cli_dispatched, cli_resets) = MarkdownDispatcher::new("client", fast, wd.clone());
    let s1 = messenger(EntityType::OSD, 1, Policy::stateless_server(), true);
    let s2 = messenger(EntityType::OSD, 2, Policy::stateless_server(), true);
    let cli = messenger(EntityType::CLIENT, 3, Policy::lossy_client(), false);
    for (n, m) in [("server 1", &s1), ("server 2", &s2), ("client", &cli)] {
        register(&registry, n, m);
    }
    s1.add_dispatcher_head(srv_d.clone()).expect("dispatcher");
    s2.add_dispatcher_head(srv_d.clone()).expect("dispatcher");
    cli.add_dispatcher_head(cli_d.clone()).expect("dispatcher");

    let mut reset_seen: Vec<Connection> = Vec::new();
    let mut lost = 0u64;
    let started = Instant::now();
    for round in 0..ITERATIONS {
        let mut pending: Vec<(Connection, u64)> = Vec::new();
        for (k, server) in [&s1, &s2].into_iter().enumerate() {
            let conn = cli.connect_to(EntityType::OSD, server.my_addr());
            let tid = 2 * round + k as u64 + 1;
            let sent = conn.send_message(test_message(MSG_PING, tid, Bytes::new())).is_ok();
            if sent && !reset_seen.contains(&conn) {
                pending.push((conn, tid));
            } else {
                lost += 1;
            }
        }
        // Each ping resolves: dispatched, or its connection is reset (the server marked
        // it down before or after the ping got there).
        while !pending.is_empty() {
            crossbeam_channel::select! {
                recv(dispatched) -> tid => {
                    let tid = tid.expect("server dispatcher alive");
                    pending.retain(|(_, t)| *t != tid);
                }
                recv(cli_resets) -> conn => {
                    let conn = conn.expect("client dispatcher alive");
                    lost += pending.iter().filter(|(c, _)| *c == conn).count() as u64;
                    pending.retain(|(c, _)| *c != conn);
                    reset_seen.push(conn);
                }
                default(BACKSTOP) => panic!("round {round}: {} pings unresolved", pending.len()),
            }
        }
        wd.beat();
    }
    let count = srv_d.count.load(Ordering::Relaxed);
    eprintln!(
        "{name}: {ITERATIONS} rounds in {:?}: {count} pings dispatched, {lost} resolved by \
         the reset of their connection, {} client resets",
        started.elapsed(),
        reset_seen.len()
    );
    assert!(count >= ITERATIONS, "the servers dispatched only {count} of {} pings", 2 * ITERATIONS);
    assert!(!reset_seen.is_empty(), "no connection was ever marked down: the test tested nothing");
    let _w = wd.doing("test: shutting down");
    for m in [&cli, &s1, &s2] {
        m.shutdown();
        m.wait();
    }
}

/// MarkdownTest: the markdown runs in `ms_dispatch` (the dispatch thread).
#[test]
fn mark_down_from_ms_dispatch_under_the_dispatchers_lock() {
    markdown_rounds("mark_down_from_ms_dispatch_under_the_dispatchers_lock", false);
}

/// The fast-dispatch variant: the markdown runs in `ms_fast_dispatch` on a worker,
/// possibly the very worker that owns the connection being marked down.
#[test]
fn mark_down_from_ms_fast_dispatch_under_the_dispatchers_lock() {
    markdown_rounds("mark_down_from_ms_fast_dispatch_under_the_dispatchers_lock", true);
}

/// Calls `mark_down_all` or `shutdown` of its own messenger from `ms_handle_reset`.
struct ResetHook {
    messenger: OnceLock<Weak<Messenger>>,
    shutdown: bool,
    resets: Sender<Connection>,
    watchdog: Arc<Watchdog>,
}

impl Dispatcher<Connection> for ResetHook {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        if let Some(m) = self.messenger.get().and_then(Weak::upgrade) {
            if self.shutdown {
                let _w = self.watchdog.doing("reset handler: shutdown of its own messenger");
                m.shutdown();
            } else {
                let _w = self.watchdog.doing("reset handler: mark_down_all of its own messenger");
                m.mark_down_all();
            }
        }
        let _ = self.resets.send(conn.clone());
        true
    }
}

/// A lossy client with connections to three servers; one server goes away; the client's
/// reset handler calls `mark_down_all` (or `shutdown`) on the client's own messenger,
/// from the dispatch thread, in the middle of delivering events.
fn reset_handler_calls(name: &'static str, shutdown: bool) {
    let (wd, registry) = watchdog(name);
    let servers: Vec<_> = (1..=3)
        .map(|i| {
            let m = messenger(EntityType::OSD, i, Policy::stateless_server(), true);
            let (d, _, _) = MarkdownDispatcher::new("server", false, wd.clone());
            m.add_dispatcher_head(d).expect("dispatcher");
            register(&registry, "server", &m);
            m
        })
        .collect();
    let cli = messenger(EntityType::CLIENT, 9, Policy::lossy_client(), false);
    register(&registry, "client", &cli);
    let (resets_tx, resets) = crossbeam_channel::unbounded();
    let hook = Arc::new(ResetHook {
        messenger: OnceLock::new(),
        shutdown,
        resets: resets_tx,
        watchdog: wd.clone(),
    });
    let _ = hook.messenger.set(Arc::downgrade(&cli));
    cli.add_dispatcher_head(hook).expect("dispatcher");
    let conns: Vec<Connection> =
        servers.iter().map(|s| cli.connect_to(EntityType::OSD, s.my_addr())).collect();
    for (i, c) in conns.iter().enumerate() {
        c.send_message(test_message(MSG_PING, i as u64, Bytes::new())).expect("send");
    }
    let deadline = Instant::now() + BACKSTOP;
    while conns.iter().any(|c| !c.is_connected()) {
        assert!(Instant::now() < deadline, "connections never opened");
        std::thread::yield_now();
    }
    wd.beat();
    servers[0].shutdown();
    let first = resets.recv_timeout(BACKSTOP).expect("ms_handle_reset for the lost server");
    assert_eq!(first, conns[0]);
    wd.beat();
    // The handler's mark_down_all / shutdown closed the other connections, and
    // returned. Both report each with ms_handle_reset, as Ceph's do (its shutdown is a
    // mark_down_all), after the handler returned; the handler's own mark_down_all then
    // finds nothing, and its shutdown, already under way, returns at once.
    let deadline = Instant::now() + BACKSTOP;
    while conns.iter().any(|c| c.is_connected()) {
        assert!(Instant::now() < deadline, "{:?} still open", conns);
        std::thread::yield_now();
    }
    let mut others: Vec<u64> = (0..2)
        .map(|_| resets.recv_timeout(BACKSTOP).expect("a reset per connection closed"))
        .map(|c| c.id())
        .collect();
    others.sort_unstable();
    assert_eq!(others, [conns[1].id(), conns[2].id()]);
    assert!(resets.recv_timeout(Duration::from_millis(300)).is_err(), "a reset more");
    for c in &conns[1..] {
        assert!(c.send_message(test_message(MSG_PING, 99, Bytes::new())).is_err(), "{c:?} open");
    }
    if !shutdown {
        // The messenger still works after its own handler marked everything down.
        let again = cli.connect_to(EntityType::OSD, servers[1].my_addr());
        assert_ne!(again, conns[1], "a new session");
        again.send_message(test_message(MSG_PING, 100, Bytes::new())).expect("send");
        let deadline = Instant::now() + BACKSTOP;
        while !again.is_connected() {
            assert!(Instant::now() < deadline, "no new session after mark_down_all");
            std::thread::yield_now();
        }
    }
    let _w = wd.doing("test: shutting down");
    cli.shutdown();
    cli.wait();
    assert_eq!(cli.connection_count(), 0);
    for s in &servers {
        s.shutdown();
    }
}

/// `mark_down_all` from inside `ms_handle_reset` (Ceph's MonClient does this on a lost
/// monitor): no deadlock, the other connections close, each with its reset, and the
/// messenger goes on.
#[test]
fn mark_down_all_from_a_reset_handler() {
    reset_handler_calls("mark_down_all_from_a_reset_handler", false);
}

/// `shutdown` of its own messenger from inside `ms_handle_reset`, on the dispatch thread
/// it stops: returns, the other connections' resets come once the handler returned
/// (its shutdown from them returns at once), and the messenger winds down (`wait` from
/// the test returns).
#[test]
fn shutdown_from_a_reset_handler() {
    reset_handler_calls("shutdown_from_a_reset_handler", true);
}
