//! [`Messenger`]: lifecycle, session table, policies, dispatchers, counters.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dispatch::{DispatchQueue, Dispatcher, Dispatchers, ShutdownMode, Throttle};
use event_center::{CenterHandle, WorkerPool, WorkerPoolConfig};
use parking_lot::{Condvar, Mutex, RwLock};
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::v1::{self, Policy};
use protocol::Message;

use crate::config::MessengerConfig;
use crate::connection::{ConnState, Connection, SendBudget, SendError};
use crate::counters::WorkerCounters;
use crate::{driver, processor};

/// The (bytes, messages) policy throttlers of one peer type.
pub(crate) type ThrottlerPair = (Option<Arc<Throttle>>, Option<Arc<Throttle>>);

/// Per-peer-type policies and throttlers (Ceph's `Policy` table of a messenger).
#[derive(Clone)]
pub(crate) struct PolicySet {
    pub(crate) default: Policy,
    pub(crate) by_type: HashMap<u8, Policy>,
    /// (bytes, messages) throttlers charged for every received message from that peer type.
    pub(crate) throttlers: HashMap<u8, ThrottlerPair>,
}

impl PolicySet {
    pub(crate) fn policy(&self, peer: EntityType) -> Policy {
        self.by_type.get(&peer.0).cloned().unwrap_or(self.default)
    }
    pub(crate) fn throttlers(&self, peer: EntityType) -> ThrottlerPair {
        self.throttlers.get(&peer.0).cloned().unwrap_or((None, None))
    }
}

/// State shared by the messenger's handle, its drivers and its processor. Owns no threads
/// (the pool is owned by [`Messenger`]), so drivers can hold it without a cycle.
pub(crate) struct Core {
    pub(crate) name: RwLock<EntityName>,
    pub(crate) nonce: u32,
    pub(crate) config: MessengerConfig,
    pub(crate) proto: OnceLock<Arc<v1::Config>>,
    pub(crate) my_addr: RwLock<EntityAddr>,
    pub(crate) global_seq: Arc<AtomicU32>,
    pub(crate) dispatchers: Arc<Dispatchers<Connection>>,
    pub(crate) queue: Arc<DispatchQueue<Connection>>,
    pub(crate) dispatch_throttle: Arc<Throttle>,
    pub(crate) policies: RwLock<PolicySet>,
    /// Peer's announced address → its session. Feeds the accept decision and
    /// `get_connection` reuse.
    pub(crate) sessions: Mutex<HashMap<EntityAddr, Connection>>,
    /// Every live connection by id (for mark_down_all, dumps and shutdown).
    pub(crate) conns: Mutex<HashMap<u64, Connection>>,
    /// Signalled when `conns` becomes empty ([`Messenger::wait`] waits for it).
    pub(crate) conns_gone: Condvar,
    pub(crate) counters: Vec<Arc<WorkerCounters>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) stopping: AtomicBool,
    /// The pool's workers (handles only: the pool itself is owned by [`Messenger`]).
    pub(crate) workers: Vec<CenterHandle>,
    /// The send-side bounds shared by every connection.
    pub(crate) send_budget: Arc<SendBudget>,
}

impl Core {
    pub(crate) fn dispatch_queue(&self) -> &Arc<DispatchQueue<Connection>> {
        &self.queue
    }

    /// Loopback delivery: no socket; the message keeps the dispatch queue's guarantees.
    pub(crate) fn deliver_local(&self, conn: &Connection, mut msg: Message) {
        if msg.priority() == 0 {
            msg.set_priority(protocol::message::PRIO_DEFAULT);
        }
        self.queue.local_delivery(conn, msg);
    }

    /// Removes `conn` from the session table if it is the registered session.
    pub(crate) fn forget(&self, conn: &Connection) {
        if let Some(addr) = conn.peer_addr() {
            let mut sessions = self.sessions.lock();
            if sessions.get(&addr) == Some(conn) {
                sessions.remove(&addr);
            }
        }
    }

    pub(crate) fn unregister(&self, conn: &Connection) {
        self.forget(conn);
        self.drop_conn(conn.id());
    }

    /// Removes connection `id` from the live list (its driver is done).
    pub(crate) fn drop_conn(&self, id: u64) {
        let mut conns = self.conns.lock();
        conns.remove(&id);
        if conns.is_empty() {
            self.conns_gone.notify_all();
        }
    }

    /// Registers a new live connection, unless the messenger is shutting down (then the
    /// caller must not start its driver). Checked under the same lock `mark_down_all`
    /// takes its snapshot under, so a connection either is marked down by `shutdown` or
    /// never starts.
    pub(crate) fn register(&self, conn: &Connection) -> bool {
        let mut conns = self.conns.lock();
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        conns.insert(conn.id(), conn.clone());
        true
    }

    /// Ceph's `get_worker`: the worker holding the fewest connections, ties to the lowest.
    pub(crate) fn pool_least_loaded(&self) -> Option<CenterHandle> {
        self.workers.iter().min_by_key(|w| w.load()).cloned()
    }

    pub(crate) fn new_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn counters_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for (i, c) in self.counters.iter().enumerate() {
            obj.insert(format!("AsyncMessenger::Worker-{i}"), c.to_json());
        }
        let t = self.dispatch_throttle.counters();
        obj.insert(
            "throttle-msgr_dispatch_throttler".into(),
            serde_json::json!({
                "val": t.val, "max": t.max, "get": t.get, "get_sum": t.get_sum,
                "get_or_fail_fail": t.get_or_fail_fail,
                "get_or_fail_success": t.get_or_fail_success,
                "take": t.take, "put": t.put, "wait": t.wait,
            }),
        );
        let b = &self.send_budget;
        obj.insert(
            "msgr_send_queues".into(),
            serde_json::json!({
                "val": b.held.load(Ordering::Relaxed), "max": b.max_total,
                "max_per_connection": b.max_per_conn,
                "refused": b.refused.load(Ordering::Relaxed),
            }),
        );
        let q = self.queue.counters();
        obj.insert(
            "dispatch_queue".into(),
            serde_json::json!({
                "len": q.len, "dispatched": q.dispatched, "discarded": q.discarded,
                "untaken": q.untaken,
            }),
        );
        serde_json::Value::Object(obj)
    }

    pub(crate) fn dump_connections(&self) -> serde_json::Value {
        let conns: Vec<Connection> = self.conns.lock().values().cloned().collect();
        serde_json::Value::Array(
            conns
                .iter()
                .map(|c| {
                    let peer = c.0.peer.lock().clone();
                    serde_json::json!({
                        "id": c.id(),
                        "peer_addr": peer.addr.map(|a| a.to_string()),
                        "peer_type": peer.entity_type.map(|t| t.name().to_string()),
                        "socket": peer.socket_addr.map(|a| a.to_string()),
                        "state": format!("{:?}", c.state()),
                        "features": format!("{:#x}", peer.features.0),
                    })
                })
                .collect(),
        )
    }

    pub(crate) fn proto_config(&self) -> Arc<v1::Config> {
        self.proto.get_or_init(|| Arc::new(self.build_proto_config())).clone()
    }

    fn build_proto_config(&self) -> v1::Config {
        let c = &self.config;
        let mut pc = v1::Config::new(*self.name.read(), *self.my_addr.read());
        pc.crc_header = c.crc_header;
        pc.crc_data = c.crc_data;
        pc.handshake_timeout = c.connection_ready_timeout;
        pc.idle_timeout = c.connection_idle_timeout;
        pc.payload_timeout = c.payload_timeout;
        pc.write_timeout = c.write_timeout;
        // A message must progress by one read per payload timeout.
        pc.progress_window = u32::try_from(c.read_buffer).unwrap_or(u32::MAX);
        pc.keepalive_interval = c.keepalive_interval;
        pc.initial_backoff = c.initial_backoff;
        pc.max_backoff = c.max_backoff;
        pc.limits.max_front = c.max_front;
        pc.limits.max_middle = c.max_middle;
        pc.limits.max_data = c.max_data;
        pc.global_seq = self.global_seq.clone();
        pc
    }
}

/// A Ceph AsyncMessenger: one entity's endpoint for sending and receiving messages.
///
/// Lifecycle (Ceph's): [`Messenger::new`] → [`Messenger::bind`] (servers) →
/// [`Messenger::start`] → [`Messenger::add_dispatcher_head`] /
/// [`Messenger::add_dispatcher_tail`] (the first one makes it ready) → traffic →
/// [`Messenger::shutdown`] → [`Messenger::wait`].
pub struct Messenger {
    core: Arc<Core>,
    pool: Arc<WorkerPool>,
    owns_pool: bool,
    processor: Mutex<Option<processor::Processor>>,
    ready: AtomicBool,
    started: AtomicBool,
    /// The connection to ourselves (held here, not in `Core`, which it points back to).
    loopback: Connection,
    admin: Mutex<Option<crate::admin::AdminSocket>>,
}

impl Messenger {
    /// A messenger with its own pool of `config.workers` worker threads.
    ///
    /// Fails with `InvalidInput` if [`MessengerConfig::validate`] refuses `config`.
    pub fn new(name: EntityName, nonce: u32, config: MessengerConfig) -> io::Result<Messenger> {
        config.validate()?;
        let pool = Arc::new(WorkerPool::new(WorkerPoolConfig {
            workers: config.workers,
            ..WorkerPoolConfig::default()
        })?);
        Ok(Self::build(name, nonce, config, pool, true))
    }

    /// A messenger sharing `pool` with other messengers (an OSD runs several on one pool).
    ///
    /// # Panics
    /// If [`MessengerConfig::validate`] refuses `config` (a programming error, like an
    /// out-of-range index); [`Messenger::try_with_pool`] returns the error instead.
    pub fn with_pool(
        name: EntityName,
        nonce: u32,
        config: MessengerConfig,
        pool: Arc<WorkerPool>,
    ) -> Messenger {
        match Self::try_with_pool(name, nonce, config, pool) {
            Ok(m) => m,
            Err(e) => panic!("Messenger::with_pool: {e}"),
        }
    }

    /// Like [`Messenger::with_pool`], failing with `InvalidInput` if
    /// [`MessengerConfig::validate`] refuses `config`.
    pub fn try_with_pool(
        name: EntityName,
        nonce: u32,
        config: MessengerConfig,
        pool: Arc<WorkerPool>,
    ) -> io::Result<Messenger> {
        config.validate()?;
        Ok(Self::build(name, nonce, config, pool, false))
    }

    fn build(
        name: EntityName,
        nonce: u32,
        config: MessengerConfig,
        pool: Arc<WorkerPool>,
        owns_pool: bool,
    ) -> Messenger {
        let dispatchers = Dispatchers::new();
        let dispatch_throttle =
            Throttle::new("msgr_dispatch_throttler", config.dispatch_throttle_bytes);
        let queue =
            DispatchQueue::new("ms_dispatch", dispatchers.clone(), dispatch_throttle.clone());
        // Messages under half a read buffer are copied out of it when they are queued, so
        // a queued message pins at most about twice its size of read buffers.
        queue.set_compact_below(config.read_buffer / 2);
        let counters = (0..pool.workers()).map(|_| Arc::new(WorkerCounters::default())).collect();
        let send_budget = SendBudget::new(config.max_queued_bytes, config.max_total_queued_bytes);
        let core = Arc::new(Core {
            name: RwLock::new(name),
            nonce,
            my_addr: RwLock::new(EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce)),
            config,
            proto: OnceLock::new(),
            global_seq: Arc::new(AtomicU32::new(0)),
            dispatchers,
            queue,
            dispatch_throttle,
            policies: RwLock::new(PolicySet {
                default: Policy::lossless_peer(),
                by_type: HashMap::new(),
                throttlers: HashMap::new(),
            }),
            sessions: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            conns_gone: Condvar::new(),
            counters,
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            workers: pool.handles().to_vec(),
            send_budget,
        });
        let lo = Connection::new(0, Arc::downgrade(&core), true, core.send_budget.clone());
        lo.set_state(ConnState::Open);
        Messenger {
            core,
            pool,
            owns_pool,
            processor: Mutex::new(None),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            loopback: lo,
            admin: Mutex::new(None),
        }
    }

    /// Binds a listening socket (socket, non-blocking, bind, getsockname, listen) and
    /// returns the bound address (port 0 picks a free port).
    #[doc(alias = "Processor::bind")]
    pub fn bind(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let (listener, bound) = processor::bind(addr, &self.core.config)?;
        *self.core.my_addr.write() = EntityAddr::legacy(bound, self.core.nonce);
        let worker = self.pool.least_loaded().clone();
        *self.processor.lock() = Some(processor::Processor::new(listener, worker));
        Ok(bound)
    }

    /// Our announced address (after `bind`; blank IP and port 0 for a pure client).
    pub fn my_addr(&self) -> EntityAddr {
        *self.core.my_addr.read()
    }

    /// Our entity name.
    pub fn my_name(&self) -> EntityName {
        *self.core.name.read()
    }

    /// Changes our entity name (a client learns `client.<global_id>` after MAuth).
    /// Takes effect for messages framed afterwards.
    pub fn set_myname(&self, name: EntityName) {
        *self.core.name.write() = name;
    }

    /// Starts the messenger. Accepting begins once the first dispatcher is added.
    pub fn start(&self) -> io::Result<()> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.core.proto_config();
        Ok(())
    }

    /// Adds a dispatcher in front of the others. The first dispatcher makes the
    /// messenger ready: the dispatch thread starts and the listener accepts.
    pub fn add_dispatcher_head(&self, d: Arc<dyn Dispatcher<Connection>>) -> io::Result<()> {
        self.core.dispatchers.add_head(d);
        self.ready()
    }

    /// Adds a dispatcher behind the others.
    pub fn add_dispatcher_tail(&self, d: Arc<dyn Dispatcher<Connection>>) -> io::Result<()> {
        self.core.dispatchers.add_tail(d);
        self.ready()
    }

    fn ready(&self) -> io::Result<()> {
        if self.ready.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.start()?;
        self.core.queue.start()?;
        // Taken out so no lock is held while the listener's worker registers it.
        let processor = self.processor.lock().take();
        if let Some(mut p) = processor {
            let started = p.start(self.core.clone());
            *self.processor.lock() = Some(p);
            started?;
        }
        Ok(())
    }

    /// The policy for peers without a specific one.
    pub fn set_default_policy(&self, policy: Policy) {
        self.core.policies.write().default = policy;
    }

    /// The policy for peers of `peer_type`.
    pub fn set_policy(&self, peer_type: EntityType, policy: Policy) {
        self.core.policies.write().by_type.insert(peer_type.0, policy);
    }

    /// Throttlers charged for every message received from peers of `peer_type`: bytes
    /// and message count, held until the message is dispatched.
    pub fn set_policy_throttlers(
        &self,
        peer_type: EntityType,
        bytes: Option<Arc<Throttle>>,
        messages: Option<Arc<Throttle>>,
    ) {
        self.core.policies.write().throttlers.insert(peer_type.0, (bytes, messages));
    }

    /// The connection to `addr`, reusing an existing session; a new one is dialled on
    /// the least-loaded worker.
    pub fn get_connection(&self, peer_type: EntityType, addr: SocketAddr) -> Connection {
        self.connect_to(peer_type, EntityAddr::legacy(addr, 0))
    }

    /// Like [`Messenger::get_connection`] for a peer whose announced address (with nonce)
    /// is known, e.g. from a monmap or an OSD map.
    pub fn connect_to(&self, peer_type: EntityType, addr: EntityAddr) -> Connection {
        if addr == *self.core.my_addr.read() {
            return self.get_loopback_connection();
        }
        let mut sessions = self.core.sessions.lock();
        if let Some(conn) = sessions.get(&addr) {
            if conn.state() != ConnState::Closed {
                return conn.clone();
            }
        }
        let conn = Connection::new(
            self.core.new_conn_id(),
            Arc::downgrade(&self.core),
            false,
            self.core.send_budget.clone(),
        );
        {
            let mut peer = conn.0.peer.lock();
            peer.addr = Some(addr);
            peer.entity_type = Some(peer_type);
        }
        sessions.insert(addr, conn.clone());
        drop(sessions);
        if !self.core.register(&conn) {
            // Shutting down: a handle that is closed from the start.
            self.core.forget(&conn);
            conn.set_state(ConnState::Closed);
            conn.0.mailbox.lock().closed = true;
            return conn;
        }
        let worker = self.pool.least_loaded().clone();
        driver::spawn_outgoing(&self.core, &worker, conn.clone(), peer_type, addr);
        conn
    }

    /// The connection to ourselves: delivers to our own dispatchers without a socket.
    pub fn get_loopback_connection(&self) -> Connection {
        self.loopback.clone()
    }

    /// Sends `msg` to the peer at `addr`, connecting if needed.
    pub fn send_message(
        &self,
        msg: Message,
        peer_type: EntityType,
        addr: SocketAddr,
    ) -> Result<(), SendError> {
        self.get_connection(peer_type, addr).send_message(msg)
    }

    /// Closes the session with the peer at `addr`, discarding what is queued for it.
    pub fn mark_down(&self, addr: &EntityAddr) {
        let conn = self.core.sessions.lock().get(addr).cloned();
        if let Some(conn) = conn {
            conn.mark_down();
        }
    }

    /// Closes every connection.
    pub fn mark_down_all(&self) {
        let all: Vec<Connection> = self.core.conns.lock().values().cloned().collect();
        for conn in all {
            conn.mark_down();
        }
    }

    /// The dispatch throttle (`ms_dispatch_throttle_bytes`).
    pub fn dispatch_throttle(&self) -> &Arc<Throttle> {
        &self.core.dispatch_throttle
    }

    /// Number of live connections of this messenger.
    pub fn connection_count(&self) -> usize {
        self.core.conns.lock().len()
    }

    /// The worker pool this messenger runs on.
    pub fn pool(&self) -> &Arc<WorkerPool> {
        &self.pool
    }

    /// Counters as JSON: one `AsyncMessenger::Worker-N` section per worker (Ceph's names)
    /// plus the dispatch throttle and queue (also the admin socket's `perf dump`).
    pub fn counters_json(&self) -> serde_json::Value {
        self.core.counters_json()
    }

    /// A JSON list of connections: id, peer, state, features (also the admin socket's
    /// `messenger dump`).
    pub fn dump_connections(&self) -> serde_json::Value {
        self.core.dump_connections()
    }

    /// Serves Ceph's admin-socket protocol on a Unix socket at `path` from one of the
    /// workers (no thread of its own): `perf dump`, `messenger dump`, `version`, `help`
    /// and `get_command_descriptions`, so `ceph --admin-daemon PATH perf dump` works.
    /// The socket file is removed when the messenger shuts down.
    pub fn start_admin_socket(&self, path: &std::path::Path) -> io::Result<()> {
        let worker = self.pool.least_loaded().clone();
        let admin = crate::admin::AdminSocket::start(path, self.core.clone(), &worker)?;
        *self.admin.lock() = Some(admin);
        Ok(())
    }

    /// Summed counters over all workers (message and byte totals).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.core.counters {
            t.recv_messages += c.recv_messages.load(Ordering::Relaxed);
            t.send_messages += c.send_messages.load(Ordering::Relaxed);
            t.recv_bytes += c.recv_bytes.load(Ordering::Relaxed);
            t.send_bytes += c.send_bytes.load(Ordering::Relaxed);
        }
        t
    }

    /// The v1 handshake counters of all our connections: connect attempts, WAIT,
    /// RETRY_GLOBAL, RETRY_SESSION and RESETSESSION replies met, and received messages
    /// dropped as already delivered. Read-only; for tests and diagnostics.
    pub fn v1_counters(&self) -> v1::CounterValues {
        self.core.proto_config().counters.values()
    }

    /// Per-worker counters (index = worker index).
    pub fn worker_counters(&self) -> &[Arc<WorkerCounters>] {
        &self.core.counters
    }

    /// Stops accepting, closes every connection, stops the dispatch thread (discarding
    /// what is still queued) and, if the pool is ours, the workers. Returns promptly.
    pub fn shutdown(&self) {
        if self.core.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let processor = self.processor.lock().take();
        if let Some(p) = processor {
            p.stop();
        }
        let admin = self.admin.lock().take();
        if let Some(a) = admin {
            a.stop();
        }
        self.mark_down_all();
        self.core.queue.shutdown(ShutdownMode::Discard);
        if self.owns_pool {
            self.pool.shutdown();
        }
    }

    /// Waits until the messenger has shut down (Ceph's `wait`): calls `shutdown`, then,
    /// on a shared pool whose workers keep running, waits until every connection of this
    /// messenger is gone from them, so none of its dispatchers is called afterwards.
    /// Called from a worker of the pool itself it cannot wait for that worker, and only
    /// shuts down.
    pub fn wait(&self) {
        self.shutdown();
        if self.core.workers.iter().any(|w| w.is_current_thread()) {
            return;
        }
        let mut conns = self.core.conns.lock();
        while !conns.is_empty() {
            self.core.conns_gone.wait(&mut conns);
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Message and byte totals over all workers of one messenger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages received.
    pub recv_messages: u64,
    /// Messages sent.
    pub send_messages: u64,
    /// Bytes read from sockets.
    pub recv_bytes: u64,
    /// Bytes written to sockets.
    pub send_bytes: u64,
}
