//! [`Env`]: what a messenger's drivers, listener and admin socket share — and all they
//! may reach of the messenger. Each part has one owner type that keeps its own
//! invariants (the session table, the policies, who we are); the messenger creates the
//! environment once and hands it out in an `Arc`.

use std::net::{SocketAddr, SocketAddrV6};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use dispatch::{DispatchQueue, Dispatcher, Dispatchers, QueueEvent, Throttle};
use parking_lot::{Mutex, RwLock};
use protocol::session::{LearnedAddr, WarnLimit};
use protocol::types::{EntityAddr, EntityAddrVec, EntityName};
use protocol::{GlobalSeqCounter, Message};

use crate::config::MessengerConfig;
use crate::connection::{Connection, Home};
use crate::counters::WorkerCounters;
use crate::machine::{self, ProtocolConfig};
use crate::mailbox::SendBudget;
use crate::policies::Policies;
use crate::session_table::SessionTable;

/// How much a rebind adds to the nonce: Ceph's `AsyncMessenger::rebind` (`nonce +=
/// 1000000`, "we want our entity_addr_t to be truly unique"), so a peer never takes the
/// rebound messenger for the one it knew, even at the same IP and port.
pub(crate) const REBIND_NONCE_STEP: u32 = 1_000_000;

/// Who the messenger is: its name, nonce and address, and the protocol configuration
/// built from them when it starts (and again by a rebind).
pub(crate) struct Identity {
    name: RwLock<EntityName>,
    /// Changed only by a rebind ([`Identity::rebound`]), under `addr`'s write lock.
    nonce: AtomicU32,
    addr: RwLock<EntityAddr>,
    /// Ceph's `global_seq`: one counter for every connect attempt of this messenger.
    global_seq: Arc<GlobalSeqCounter>,
    /// The IP our blank address takes (Ceph's `learned_addr`, `set_addr_unknowns`),
    /// shared with every machine through the protocol configuration, which learns it.
    /// Kept across a rebind, which binds the same IP again (Ceph's rebinds the learned
    /// one).
    learned: Arc<LearnedAddr>,
    /// Built on first use (at `start`) and fixed from then on, but by a rebind, which
    /// replaces it with one announcing the new address: the name and address machines
    /// announce. A machine keeps the one it was made with (it is marked down by the
    /// rebind). Written under `addr`'s read or write lock, taken first.
    protocol: RwLock<Option<Arc<ProtocolConfig>>>,
}

impl Identity {
    fn new(name: EntityName, nonce: u32) -> Identity {
        Identity {
            name: RwLock::new(name),
            nonce: AtomicU32::new(nonce),
            addr: RwLock::new(EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce)),
            global_seq: Arc::new(GlobalSeqCounter::new()),
            learned: Arc::new(LearnedAddr::new()),
            protocol: RwLock::new(None),
        }
    }

    pub(crate) fn name(&self) -> EntityName {
        *self.name.read()
    }

    pub(crate) fn set_name(&self, name: EntityName) {
        *self.name.write() = name;
    }

    pub(crate) fn nonce(&self) -> u32 {
        self.nonce.load(Ordering::Acquire)
    }

    pub(crate) fn addr(&self) -> EntityAddr {
        *self.addr.read()
    }

    /// The protocol configuration, if it was built.
    pub(crate) fn protocol(&self) -> Option<Arc<ProtocolConfig>> {
        self.protocol.read().clone()
    }

    /// The address we listen on (with our nonce), unless the protocol configuration was
    /// already built from the unbound one (returns `false` then): machines would
    /// announce the blank address, and every msgr2 peer's CLIENT_IDENT would be refused
    /// for naming an address we do not announce.
    pub(crate) fn set_bound(&self, bound: SocketAddr) -> bool {
        let mut addr = self.addr.write();
        if self.protocol.read().is_some() {
            return false;
        }
        *addr = EntityAddr::legacy(bound, self.nonce());
        true
    }

    /// A rebind's new identity (Ceph's `rebind`: `nonce += 1000000`, then
    /// `_finish_bind`): the nonce moves on by [`REBIND_NONCE_STEP`] (wrapping, as the
    /// wire's 32 bits would), the address becomes `bound` with it, and a protocol
    /// configuration already built is replaced by one announcing it (the same counters,
    /// cookies, auth and `global_seq`, which Ceph keeps across a rebind too). Machines
    /// made from here on announce the new address; returns the new nonce.
    pub(crate) fn rebound(&self, bound: SocketAddr, config: &MessengerConfig) -> u32 {
        let mut addr = self.addr.write();
        let nonce = self.nonce().wrapping_add(REBIND_NONCE_STEP);
        self.nonce.store(nonce, Ordering::Release);
        *addr = EntityAddr::legacy(bound, nonce);
        let mut protocol = self.protocol.write();
        if let Some(old) = protocol.as_ref() {
            let mut pc = ProtocolConfig::clone(old);
            pc.my_addrs = machine::announced_addrs(*addr, config);
            *protocol = Some(Arc::new(pc));
        }
        nonce
    }

    /// A client reset's new identity (Ceph's `client_reset`: `nonce += 1000000` at the
    /// same address): [`Identity::rebound`] to the address we have.
    pub(crate) fn renonced(&self, config: &MessengerConfig) -> u32 {
        let at = self.addr().addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.rebound(at, config)
    }
}

/// The environment of a messenger's drivers (and its listener and admin socket).
pub(crate) struct Env {
    pub(crate) config: MessengerConfig,
    pub(crate) identity: Identity,
    /// Shared with the protocol configuration ([`protocol::Config::policies`]).
    pub(crate) policies: Arc<Policies>,
    pub(crate) sessions: SessionTable,
    /// The dispatch queue, with the dispatchers and the dispatch throttle it serves.
    pub(crate) queue: Arc<DispatchQueue<Connection>>,
    /// The send-side bounds shared by every connection.
    pub(crate) send_budget: Arc<SendBudget>,
    /// One set per worker of the pool (index = worker index).
    pub(crate) counters: Vec<Arc<WorkerCounters>>,
    /// The priority a message sent with none (0) goes out with (Ceph's
    /// `default_send_priority`, `CEPH_MSG_PRIO_DEFAULT` unless the daemon sets another).
    default_send_priority: AtomicU16,
    next_id: AtomicU64,
    /// The messenger's connection to itself, which the messenger holds (set once, as it
    /// is built): told here when our address is learned on a worker.
    loopback: OnceLock<Connection>,
    /// The fast dispatchers added before the messenger started, which hear
    /// `ms_handle_fast_connect` for the loopback connection when it starts; `None` from
    /// then on, when a dispatcher added hears it as it is added (see
    /// `Messenger::add_dispatcher`).
    pub(crate) loopback_unannounced: Mutex<Option<Vec<Arc<dyn Dispatcher<Connection>>>>>,
    /// Moved on each time the loopback connection shows a new address (a rebind, a
    /// learned or set address), before the fast dispatchers of the chain are told: a
    /// dispatcher being added meanwhile (told before it joins the chain, perhaps of the
    /// old address) sees it move and is told again (see `Messenger::add_dispatcher`).
    pub(crate) loopback_moves: AtomicU64,
    /// The address every connection we dial binds its socket to before connecting: an
    /// IP, port 0, and for IPv6 the scope id given with it ([`dial_source`];
    /// `Messenger::client_bind`, Ceph's `client_bind` with `ms_bind_before_connect`);
    /// `None`: the kernel picks the source. Read once per dial.
    pub(crate) source_ip: Mutex<Option<SocketAddr>>,
    /// The lines a second that log a peer the dispatchers refused
    /// (`ms_handle_authentication`): a lossless or msgr2 peer redials and is refused at
    /// every backoff, and a crowd of them would otherwise log a line each time. Apart
    /// from the peer issues' limit (`ProtocolConfig::warn_limit`), so refusals do not
    /// use up the lines of peers that misbehave.
    pub(crate) refusal_log: WarnLimit,
}

impl Env {
    /// The priority a message sent with none goes out with.
    #[inline]
    pub(crate) fn default_send_priority(&self) -> u16 {
        self.default_send_priority.load(Relaxed)
    }

    /// Sets [`Env::default_send_priority`].
    pub(crate) fn set_default_send_priority(&self, prio: u16) {
        self.default_send_priority.store(prio, Relaxed);
    }

    /// The environment of a messenger named `name` with `workers` workers.
    pub(crate) fn new(
        name: EntityName,
        nonce: u32,
        config: MessengerConfig,
        workers: usize,
    ) -> Arc<Env> {
        let dispatchers = Dispatchers::new();
        let throttle = Throttle::new("msgr_dispatch_throttler", config.dispatch_throttle_bytes);
        let queue = DispatchQueue::new("ms_dispatch", dispatchers, throttle);
        // Messages under half a read buffer are copied out of it when they are queued, so
        // a queued message pins at most about twice its size of read buffers.
        queue.set_compact_below(config.read_buffer / 2);
        let send_budget = SendBudget::new(
            config.max_queued_bytes,
            config.max_total_queued_bytes,
            config.max_standby_queued_bytes,
            config.max_standby_sessions,
        );
        Arc::new(Env {
            identity: Identity::new(name, nonce),
            policies: Arc::new(Policies::new()),
            sessions: SessionTable::default(),
            queue,
            send_budget,
            counters: (0..workers).map(|_| Arc::new(WorkerCounters::default())).collect(),
            default_send_priority: AtomicU16::new(protocol::message::PRIO_DEFAULT),
            next_id: AtomicU64::new(1),
            loopback: OnceLock::new(),
            loopback_unannounced: Mutex::new(Some(Vec::new())),
            loopback_moves: AtomicU64::new(0),
            source_ip: Mutex::new(None),
            refusal_log: WarnLimit::default(),
            config,
        })
    }

    /// Keeps accepted sessions in standby within the send budget's bounds for them by
    /// resetting some ([`Self::reset_session`]: their dispatchers hear `ms_handle_reset`):
    /// what they hold together (`max_standby`: those holding the most first) and how
    /// many they are (`max_standby_sessions`: those holding nothing first, then the
    /// others; the oldest connection first within each). Run by a driver whose session
    /// just went to standby, once it published what it holds.
    ///
    /// Why: a stateful server keeps a lossless session for a peer that went away (so
    /// that it can resume), with up to `max_queued_bytes` queued for it and no socket.
    /// Peers that flood without reading and leave, or only handshake and leave, under new
    /// names each time, would otherwise fill the total send bound (every other
    /// connection's sends refused) or memory with sessions nobody resumes.
    pub(crate) fn bound_standby(&self) {
        let budget = &self.send_budget;
        let (cap, max_sessions) = (budget.max_standby(), budget.max_standby_sessions());
        // Two loads: only while the sessions in standby hold more than the cap (as they
        // were last counted: each one's driver recounts it before it runs this), or are
        // too many, are the connections looked at one by one. The messenger's whole
        // total was checked here, so a messenger whose open connections held more than
        // the cap scanned every connection each time a session went to standby or was
        // sent more there.
        if budget.standby_held() <= cap && budget.standby_sessions() <= max_sessions {
            return;
        }
        // Handles cloned out of the table: a reset wakes drivers (a syscall), which must
        // not run under the table's lock.
        let mut standby: Vec<(u64, Connection)> = self
            .sessions
            .live()
            .into_iter()
            .filter(|c| c.is_server_standby())
            .map(|c| (c.queued_send_bytes(), c))
            .collect();
        let mut held: u64 = standby.iter().map(|&(h, _)| h).sum();
        let mut count = u64::try_from(standby.len()).unwrap_or(u64::MAX);
        if held <= cap && count <= max_sessions {
            return;
        }
        // Largest first while over the byte cap; then oldest first (connection ids grow).
        standby.sort_unstable_by_key(|(bytes, c)| (std::cmp::Reverse(*bytes), c.id()));
        let mut by_bytes = standby.into_iter().peekable();
        // A session not reset after all (another worker reset it, or its peer is
        // resuming it) is no longer waiting either: what it holds stops counting too, or
        // another would be reset in its place.
        while let Some((bytes, conn)) = by_bytes.next_if(|&(b, _)| b > 0 && held > cap) {
            self.evict_standby(&conn, bytes, held, count);
            held = held.saturating_sub(bytes);
            count = count.saturating_sub(1);
        }
        // Those holding nothing first (what handshake-and-leave peers leave), then the
        // oldest: a session with replies queued for a peer that may come back goes last.
        let mut rest: Vec<_> = by_bytes.collect();
        rest.sort_unstable_by_key(|(bytes, c)| (*bytes > 0, c.id()));
        for (bytes, conn) in rest {
            if count <= max_sessions {
                break;
            }
            self.evict_standby(&conn, bytes, held, count);
            held = held.saturating_sub(bytes);
            count = count.saturating_sub(1);
        }
    }

    /// Ends `conn`, a session in standby, for [`Self::bound_standby`]: reset, as a fault
    /// ends a session (its dispatchers hear `ms_handle_reset` and can drop what they
    /// keep for it), not marked down, which would end it without a word. Does nothing if
    /// it is no longer waiting (reset by another worker, or resumed by its peer).
    fn evict_standby(&self, conn: &Connection, bytes: u64, held: u64, count: u64) {
        // Checked again as it leaves the table, under the table's lock: seen in standby
        // when the list was made, it may be being resumed by now.
        if !self.sessions.forget_if(conn, Connection::is_server_standby) {
            return;
        }
        // It left the table above: a later connect gets a new session. Counted only by
        // the bound that ended it: two workers' bounds can both find it still waiting.
        if !self.reset_session(conn, false) {
            return;
        }
        let budget = &self.send_budget;
        log::info!(
            target: "msgr::conn",
            "conn {} to {:?}: session in standby reset: it held {bytes} bytes; sessions \
             in standby held {held} (at most {}) and were {count} (at most {})",
            conn.id(),
            conn.peer_addr(),
            budget.max_standby(),
            budget.max_standby_sessions(),
        );
        budget.count_standby_eviction();
    }

    /// Ends `conn`'s session from another thread than its driver's (a newcomer's reset
    /// from the accept path, the standby bound): its messages stop first, so its driver,
    /// perhaps still reading on another worker, delivers none after the reset; what
    /// waits for `ms_dispatch` is discarded; the handle is closed before the reset is
    /// queued, so a dispatcher sending on it from `ms_handle_reset` is told it is gone;
    /// and the reset is reported once, here or by the driver's own end, whichever comes
    /// first. Returns whether this call was the one that ended it. A shutdown waits for
    /// the reset to be queued ([`SessionTable::end_session`]), even one that found the
    /// session already ended by this call.
    ///
    /// With `remote_reset` (a lossy session a v1 peer's new connection replaces) the
    /// dispatchers hear `ms_handle_remote_reset` right before `ms_handle_reset`, as
    /// Ceph's ProtocolV1 tells them: its accept calls the existing session's
    /// `session_reset`, which queues the remote reset, then `replace`, which stops the
    /// session and queues the reset. Its ProtocolV2 only stops it and queues the reset.
    pub(crate) fn reset_session(&self, conn: &Connection, remote_reset: bool) -> bool {
        let pending = self.sessions.end_session(conn);
        #[cfg(feature = "fault-injection")]
        conn.run_in_reset();
        self.queue.discard(conn.id());
        conn.close_and_stop_driver();
        let Some(pending) = pending else { return false };
        if remote_reset {
            self.queue.enqueue_remote_reset_and_reset(conn.clone());
        } else {
            self.queue.enqueue_event(QueueEvent::Reset(conn.clone()));
        }
        drop(pending);
        true
    }

    /// The protocol configuration (built from who we are on first use).
    pub(crate) fn protocol_config(&self) -> Arc<ProtocolConfig> {
        let id = &self.identity;
        if let Some(p) = id.protocol.read().as_ref() {
            return p.clone();
        }
        // All but the address is built before the lock: that part reads the OS's entropy
        // (a syscall that may block), and no lock is held across it. (Threads racing the
        // first use each build it; one is kept.)
        let mut pc =
            machine::protocol_config_unaddressed(&self.config, id.name(), id.global_seq.clone());
        pc.policies = self.policies.clone();
        // The address is set and the configuration published under the address's read
        // lock, which `set_bound` writes under: a bind racing the first use either lands
        // before the address is read, or sees the configuration built and fails.
        let addr = id.addr.read();
        pc.learned_addr = id.learned.clone();
        id.protocol
            .write()
            .get_or_insert_with(|| {
                // The bound addresses, blank IP and all: an acceptor matches a blank IP
                // with the socket's local address; a connector fills it from
                // `learned_addr`.
                pc.my_addrs = machine::announced_addrs(*addr, &self.config);
                Arc::new(pc)
            })
            .clone()
    }

    /// The addresses we announce: our bound address as msgr2 and as v1, each if bound,
    /// a blank IP filled with the one learned or set ([`LearnedAddr`]).
    pub(crate) fn my_addrs(&self) -> EntityAddrVec {
        let mut addrs = self.bound_addrs();
        self.identity.learned.fill(&mut addrs);
        addrs
    }

    /// Our bound address as msgr2 and as v1, each if bound, blank IP and all.
    fn bound_addrs(&self) -> EntityAddrVec {
        machine::announced_addrs(self.identity.addr(), &self.config)
    }

    /// Ceph's `set_addr_unknowns`: the blank IP of our bound address takes the IP of
    /// the first of `addrs` of its family (port, nonce and type kept), unless it was
    /// already learned or set. Returns whether it did; the loopback connection then
    /// shows the new address (Ceph's `_init_local_connection`), and the caller tells the
    /// fast dispatchers (`Messenger::set_addr_unknowns`, where a shutdown waits for it).
    pub(crate) fn set_addr_unknowns(&self, addrs: &EntityAddrVec) -> bool {
        let set = self.identity.learned.set_unknowns(addrs, &self.bound_addrs());
        if set {
            log::info!(target: "msgr::bind", "set_addr_unknowns: my addrs are {:?}", self.my_addrs());
            if let Some(lo) = self.loopback.get() {
                self.loopback_shows_move(lo);
            }
        }
        set
    }

    /// The messenger's loopback connection, once it is built.
    pub(crate) fn set_loopback(&self, lo: Connection) {
        let _ = self.loopback.set(lo);
    }

    /// Our address was learned from a peer: the loopback connection shows it, and once
    /// the messenger started the fast dispatchers of this moment hear
    /// `ms_handle_fast_connect` for it (Ceph's `learned_addr` calls
    /// `_init_local_connection`); before, the start tells them. Runs on the worker of
    /// the connection that learned it, with no lock held. A shutdown does not wait for
    /// it as for `Messenger::announce_loopback`: one from a thread of no messenger joins
    /// the workers of a pool it owns, and on a shared pool it leaves the hooks a worker
    /// began (as `Messenger::shutdown` says), while a `wait` waits for this connection
    /// to leave its worker; and a worker waiting for a shutdown that waits for it would
    /// deadlock (a hook calling `wait`).
    pub(crate) fn loopback_moved(&self) {
        let Some(lo) = self.loopback.get() else { return };
        self.loopback_shows_move(lo);
        let started = self.loopback_unannounced.lock().is_none();
        if started && lo.is_connected() {
            self.dispatchers().handle_fast_connect(lo);
        }
    }

    /// The loopback connection `lo` shows our new address, and the move is counted
    /// (before any fast dispatcher is told: see `loopback_moves`).
    fn loopback_shows_move(&self, lo: &Connection) {
        self.init_local_connection(lo);
        self.loopback_moves.fetch_add(1, Ordering::SeqCst);
    }

    /// The address a peer dials to reach us: our v1 one, or the first we announce.
    pub(crate) fn my_addr(&self) -> EntityAddr {
        let addrs = self.my_addrs();
        addrs.legacy_addr().or_else(|| addrs.addrs.first().copied()).unwrap_or_default()
    }

    /// Fills in what the loopback connection `lo` shows of its peer, which is us (Ceph's
    /// `_init_local_connection`): our address, entity type and name, and every feature
    /// we speak as negotiated. Called when it is made and again whenever who we are
    /// changes (bind, a new name), so it stays current.
    pub(crate) fn init_local_connection(&self, lo: &Connection) {
        // Who we are is read under the lock: every change of it is followed by a call,
        // so whichever call takes the lock last publishes the newest.
        let mut p = lo.0.published.lock();
        let name = self.identity.name();
        p.addr = Some(self.my_addr());
        // Ceph's local connection's `peer_addrs` is `my_addrs`, the whole vector.
        p.ident_addrs = Some(self.my_addrs());
        p.entity_type = Some(name.ty);
        p.name = Some(name);
        p.features = machine::FEATURES_SUPPORTED;
    }

    pub(crate) fn dispatchers(&self) -> &Arc<Dispatchers<Connection>> {
        self.queue.dispatchers()
    }

    pub(crate) fn dispatch_throttle(&self) -> &Arc<Throttle> {
        self.queue.throttle()
    }

    /// The counters of the worker with index `worker`.
    pub(crate) fn worker_counters(&self, worker: usize) -> Arc<WorkerCounters> {
        self.counters[worker % self.counters.len().max(1)].clone()
    }

    /// A new handle belonging to this messenger (not registered anywhere yet).
    pub(crate) fn new_connection(self: &Arc<Self>, loopback: bool) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let home: Weak<dyn Home> = Arc::<Env>::downgrade(self);
        Connection::new(id, home, loopback, self.send_budget.clone())
    }

    /// Counters as JSON: one `AsyncMessenger::Worker-N` section per worker (Ceph's
    /// names) plus the dispatch throttle, the send queues and the dispatch queue.
    pub(crate) fn perf_dump(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        for (i, c) in self.counters.iter().enumerate() {
            obj.insert(format!("AsyncMessenger::Worker-{i}"), c.to_json());
        }
        let t = self.dispatch_throttle().counters();
        obj.insert(
            "throttle-msgr_dispatch_throttler".into(),
            serde_json::json!({
                "val": t.val, "max": t.max, "get": t.get, "get_sum": t.get_sum,
                "get_or_fail_fail": t.get_or_fail_fail,
                "get_or_fail_success": t.get_or_fail_success,
                "take": t.take, "put": t.put, "wait": t.wait,
            }),
        );
        obj.insert("msgr_send_queues".into(), self.send_budget.to_json());
        let q = self.queue.counters();
        obj.insert(
            "dispatch_queue".into(),
            serde_json::json!({
                "len": q.len, "events": q.events, "dispatched": q.dispatched,
                "discarded": q.discarded, "untaken": q.untaken, "panics": q.panics,
            }),
        );
        // Read without building the protocol config: that fixes who we are (start does).
        let p = self.identity.protocol().map(|c| c.counters.values()).unwrap_or_default();
        obj.insert(
            "msgr_protocol".into(),
            serde_json::json!({
                "connects": p.connects, "wait": p.wait, "retry_global": p.retry_global,
                "retry_session": p.retry_session, "reset_session": p.reset_session,
                "old_seq_dropped": p.old_seq_dropped, "bad_signatures": p.bad_signatures,
                "authorizers_rejected": p.authorizers_rejected,
                "authorizers_refused_by_peer": p.authorizers_refused_by_peer,
                "identity_refused": p.identity_refused,
            }),
        );
        serde_json::Value::Object(obj)
    }

    /// What [`perf_dump`](Self::perf_dump) holds, section by section, in the shape of
    /// Ceph's `perf schema`.
    pub(crate) fn perf_schema(&self) -> serde_json::Value {
        use crate::counters::{perf_schema_section, PerfType::*, PerfUnit::None};
        let mut obj = serde_json::Map::new();
        for i in 0..self.counters.len() {
            obj.insert(format!("AsyncMessenger::Worker-{i}"), WorkerCounters::schema());
        }
        // Ceph's descriptions, but `wait` counts waits here (Ceph's is their latency).
        obj.insert(
            "throttle-msgr_dispatch_throttler".into(),
            perf_schema_section(&[
                ("val", Gauge, None, "Currently available throttle"),
                ("max", Gauge, None, "Max value for throttle"),
                ("get", Counter, None, "Gets"),
                ("get_sum", Counter, None, "Got data"),
                ("get_or_fail_fail", Counter, None, "Get blocked during get_or_fail"),
                ("get_or_fail_success", Counter, None, "Successful get during get_or_fail"),
                ("take", Counter, None, "Takes"),
                ("put", Counter, None, "Puts"),
                ("wait", Counter, None, "Waits"),
            ]),
        );
        obj.insert("msgr_send_queues".into(), SendBudget::schema());
        obj.insert(
            "dispatch_queue".into(),
            perf_schema_section(&[
                ("len", Gauge, None, "Messages and events waiting for dispatch"),
                ("events", Gauge, None, "Events waiting for dispatch"),
                ("dispatched", Counter, None, "Messages taken by ms_dispatch"),
                ("discarded", Counter, None, "Messages dropped before dispatch"),
                ("untaken", Counter, None, "Messages every dispatcher declined"),
                ("panics", Counter, None, "Dispatcher panics caught"),
            ]),
        );
        obj.insert(
            "msgr_protocol".into(),
            perf_schema_section(&[
                ("connects", Counter, None, "Connect attempts"),
                ("wait", Counter, None, "WAIT replies met"),
                ("retry_global", Counter, None, "RETRY_GLOBAL replies met"),
                ("retry_session", Counter, None, "RETRY_SESSION replies met"),
                ("reset_session", Counter, None, "RESET_SESSION replies met"),
                ("old_seq_dropped", Counter, None, "Received messages dropped as duplicates"),
                ("bad_signatures", Counter, None, "Messages with bad signatures"),
                ("authorizers_rejected", Counter, None, "Peer credentials refused"),
                ("authorizers_refused_by_peer", Counter, None, "Our credentials refused by peers"),
                ("identity_refused", Counter, None, "Peer identities refused"),
            ]),
        );
        serde_json::Value::Object(obj)
    }
}

impl Home for Env {
    fn forget(&self, conn: &Connection) {
        self.sessions.forget(conn);
    }

    fn discard_queued(&self, conn: &Connection) {
        self.queue.discard(conn.id());
    }

    /// Loopback delivery: no socket; the message keeps the dispatch queue's guarantees.
    /// It comes from us: stamped with our name whatever source it named, as Ceph's
    /// `AsyncConnection::send_message` stamps every message before its loopback branch.
    fn deliver_local(&self, conn: &Connection, mut msg: Message) {
        msg.set_src(self.identity.name());
        if msg.priority() == 0 {
            msg.set_priority(self.default_send_priority());
        }
        self.queue.local_delivery(conn, msg);
    }
}

/// The address a dial binds its socket to for `Messenger::client_bind(addr)`: `addr`'s
/// IP with port 0 (the kernel picks the port), and for IPv6 `addr`'s scope id, without
/// which the kernel cannot bind a link-local address (`fe80::…%eth0`: `EINVAL`, so every
/// dial failed). The flow label is not kept: it labels a flow, not the address.
pub(crate) fn dial_source(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::from((*a.ip(), 0)),
        SocketAddr::V6(a) => SocketAddrV6::new(*a.ip(), 0, 0, a.scope_id()).into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use protocol::types::EntityType;

    use super::*;

    // `perf schema` describes exactly what `perf dump` holds, section by section, and
    // each value is of the type the schema gives it (an average is an object, a time a
    // real, any other an integer), as Ceph's two dumps agree.
    #[test]
    fn perf_schema_describes_every_counter_of_perf_dump() {
        let env = Env::new(EntityName::new(EntityType::OSD, 3), 77, MessengerConfig::default(), 2);
        let (dump, schema) = (env.perf_dump(), env.perf_schema());
        let (dump, schema) = (dump.as_object().unwrap(), schema.as_object().unwrap());
        let names =
            |o: &serde_json::Map<String, serde_json::Value>| o.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(dump), names(schema));
        for (logger, section) in dump {
            let (section, described) =
                (section.as_object().unwrap(), schema[logger].as_object().unwrap());
            assert_eq!(names(section), names(described), "{logger}");
            for (counter, value) in section {
                let entry = &described[counter];
                let fits = match entry["type"].as_u64().unwrap() {
                    5 => ["avgcount", "sum", "avgtime"].iter().all(|k| value.get(k).is_some()),
                    1 => value.is_f64(),
                    2 | 10 => value.is_u64(),
                    other => panic!("{logger}.{counter}: type {other}"),
                };
                assert!(fits, "{logger}.{counter} = {value} against {entry}");
                assert!(!entry["description"].as_str().unwrap().is_empty(), "{logger}.{counter}");
            }
        }
    }

    // The configuration is built from the bound address once and fixed from then on, the
    // same whether or not its address-free part was built outside the lock.
    #[test]
    fn protocol_config_announces_the_bound_address_and_fixes_it() {
        let name = EntityName::new(EntityType::OSD, 3);
        let env = Env::new(name, 77, MessengerConfig::default(), 1);
        let bound = SocketAddr::from(([127, 0, 0, 1], 6800));
        assert!(env.identity.set_bound(bound));
        let pc = env.protocol_config();
        let want = machine::announced_addrs(EntityAddr::legacy(bound, 77), &env.config);
        assert_eq!(pc.my_addrs, want);
        assert_eq!(pc.my_name, name);
        assert!(Arc::ptr_eq(&pc, &env.protocol_config()), "built once");
        assert!(Arc::ptr_eq(&pc.global_seq, &env.identity.global_seq));
        // Too late: machines already announce the first address.
        assert!(!env.identity.set_bound(SocketAddr::from(([127, 0, 0, 1], 6801))));
        assert_eq!(env.protocol_config().my_addrs, want);
    }

    // A rebind (Ceph's `nonce += 1000000`, then `_finish_bind`) replaces the built
    // configuration by one announcing the new address and nonce; what the connections
    // share besides (counters, global_seq) stays the same.
    #[test]
    fn a_rebind_replaces_the_announced_address_and_keeps_the_rest() {
        let name = EntityName::new(EntityType::OSD, 3);
        let env = Env::new(name, 77, MessengerConfig::default(), 1);
        assert!(env.identity.set_bound(SocketAddr::from(([127, 0, 0, 1], 6800))));
        let old = env.protocol_config();
        let moved = SocketAddr::from(([127, 0, 0, 1], 6801));
        assert_eq!(env.identity.rebound(moved, &env.config), 77 + REBIND_NONCE_STEP);
        let new = env.protocol_config();
        let want = machine::announced_addrs(
            EntityAddr::legacy(moved, 77 + REBIND_NONCE_STEP),
            &env.config,
        );
        assert_eq!(new.my_addrs, want);
        assert_eq!(env.my_addrs(), want);
        assert_eq!(env.identity.nonce(), 77 + REBIND_NONCE_STEP);
        assert!(Arc::ptr_eq(&new.counters, &old.counters));
        assert!(Arc::ptr_eq(&new.global_seq, &old.global_seq));
        // A nonce near the top wraps, as the wire's 32 bits would.
        let env = Env::new(name, u32::MAX, MessengerConfig::default(), 1);
        assert_eq!(env.identity.rebound(moved, &env.config), REBIND_NONCE_STEP - 1);
    }

    // `client_bind` of a link-local IPv6 address keeps its interface (scope id) for the
    // dials' bind, and drops the port (and flow label); an IPv4 address, its port.
    #[test]
    fn a_dial_binds_to_the_client_bind_ip_with_its_scope_id_and_port_0() {
        let link_local: std::net::Ipv6Addr = "fe80::1".parse().unwrap();
        let given = SocketAddr::V6(SocketAddrV6::new(link_local, 4444, 7, 3));
        let SocketAddr::V6(source) = dial_source(given) else { panic!("{given}: not v6") };
        assert_eq!((*source.ip(), source.port(), source.scope_id()), (link_local, 0, 3));
        assert_eq!(source.flowinfo(), 0);
        let v4 = SocketAddr::from(([127, 0, 0, 2], 4444));
        assert_eq!(dial_source(v4), SocketAddr::from(([127, 0, 0, 2], 0)));
    }
}
