//! [`Messenger`]: the lifecycle of one endpoint (bind, start, dispatchers, shutdown,
//! wait) and its public operations, over the environment its drivers share.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::Duration;

use dispatch::{Dispatcher, ShutdownMode, Throttle};
use event_center::{WorkerPool, WorkerPoolConfig};
use parking_lot::{Condvar, Mutex};
use protocol::types::{EntityAddr, EntityAddrVec, EntityName, EntityType};
use protocol::Message;

use crate::admin::AdminSocket;
use crate::config::MessengerConfig;
use crate::connection::{Connection, SendError};
use crate::counters::WorkerCounters;
use crate::driver;
use crate::env::Env;
use crate::machine::{self, CounterValues, Policy, SessionSnapshot};
use crate::processor::{self, Processor};
use crate::session_table::Lookup;
use crate::state::ConnState;

/// A Ceph AsyncMessenger: one entity's endpoint for sending and receiving messages.
///
/// Lifecycle (Ceph's): [`Messenger::new`] → [`Messenger::bind`] (servers) →
/// [`Messenger::start`] → [`Messenger::add_dispatcher_head`] /
/// [`Messenger::add_dispatcher_tail`] (the first one makes it ready) → traffic →
/// [`Messenger::shutdown`] → [`Messenger::wait`].
///
/// Dropping it shuts it down (without the wait) and joins its dispatch thread and its
/// pool's workers (if the pool is its own and these are the last handles), except when
/// dropped on a worker or a dispatch thread (of any messenger: in a hook), where those
/// joins are left to a thread spawned for them, since the threads joined may be joining
/// the caller.
pub struct Messenger {
    env: Arc<Env>,
    pool: Arc<WorkerPool>,
    owns_pool: bool,
    processor: Mutex<Option<Processor>>,
    /// A listener was bound (or a `bind` is binding one): a messenger has one.
    bound: AtomicBool,
    /// Where the listener is bound, once a `bind` (or a `rebind`) succeeded: what a
    /// `rebind` binds again, with port 0.
    listen_at: Mutex<Option<ListenAt>>,
    /// A `rebind` is under way (one at a time).
    rebinding: AtomicBool,
    /// The threads telling fast dispatchers of the loopback connection, once each per
    /// call under way ([`Messenger::announce_loopback`]: a `rebind`, `client_reset` or
    /// `set_addr_unknowns` telling the chain of its new address, a dispatcher being
    /// added or a start telling one of it): a shutdown waits for them, so that no hook
    /// runs after `shutdown` or `wait` returned. Held only to change or read it.
    announcing: Mutex<Vec<ThreadId>>,
    /// Signalled when a thread leaves `announcing`.
    announced: Condvar,
    ready: AtomicBool,
    started: AtomicBool,
    /// The connection to ourselves (held here, not in the environment it points back to).
    loopback: Connection,
    // Who hears `ms_handle_fast_connect` for `loopback` and when its address moved are
    // in the environment (`Env::loopback_unannounced`, `Env::loopback_moves`): a
    // worker that learns our address tells them too.
    admin: Mutex<Option<AdminSocket>>,
    /// Dropped last (declared last): tells the thread a drop on a messenger's thread
    /// hands the pool and the environment to that they are its to drop (see `Drop`).
    released: Option<std::sync::mpsc::Sender<()>>,
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
    /// Fails with `InvalidInput` if [`MessengerConfig::validate`] refuses `config`
    /// (`config.workers` is not used: the pool's workers are).
    pub fn with_pool(
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
        let env = Env::new(name, nonce, config, pool.workers());
        let loopback = env.new_connection(true);
        loopback.set_state(ConnState::Open);
        env.init_local_connection(&loopback);
        env.set_loopback(loopback.clone());
        Messenger {
            env,
            pool,
            owns_pool,
            processor: Mutex::new(None),
            bound: AtomicBool::new(false),
            listen_at: Mutex::new(None),
            rebinding: AtomicBool::new(false),
            announcing: Mutex::new(Vec::new()),
            announced: Condvar::new(),
            ready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            loopback,
            admin: Mutex::new(None),
            released: None,
        }
    }

    /// Binds a listening socket (socket, non-blocking, bind, getsockname, listen) and
    /// returns the bound address. Port 0 picks a free port: the first free one of
    /// [`MessengerConfig::bind_port_range`] if set (Ceph's `ms_bind_port_min` to
    /// `ms_bind_port_max`), else one the kernel chooses. A bind that fails is tried
    /// again after [`MessengerConfig::bind_retry_delay`], up to
    /// [`MessengerConfig::bind_retry_count`] attempts in all (a daemon restarting while
    /// its old socket lingers), the caller's thread sleeping meanwhile with no lock held;
    /// called on a worker thread, there is one attempt and no wait. Fails with the last
    /// attempt's error (`AddrInUse` when no port of the range was free).
    ///
    /// Once, before `start` (as Ceph's `bind`), the first dispatcher or the first
    /// connection: a second call, or one after any of those, fails with `AlreadyExists`
    /// and binds nothing ([`Messenger::rebind`] moves a bound messenger to a new port).
    /// Why: the address we listen on is fixed at start (a later one
    /// would not be announced, and msgr2 peers naming it would be refused; only a blank
    /// IP is filled later, learned from a peer or by [`Messenger::set_addr_unknowns`]),
    /// and a
    /// listener replaced after it started would stay registered on its worker,
    /// accepting on the old address past this messenger's shutdown, while the new one
    /// never started.
    #[doc(alias = "Processor::bind")]
    pub fn bind(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.bind_announcing(addr, None)
    }

    /// [`Messenger::bind`], announcing `public` (with our nonce) instead of the bound
    /// address: Ceph's `bindv(bind_addrs, public_addrs)` (`public_bind_addr` with
    /// `public_addr`), for a daemon reached through a NAT or a proxy at another
    /// address. Peers dial `public`; msgr2 peers must name it in CLIENT_IDENT, and find
    /// it in our SERVER_IDENT. Returns the bound address.
    #[doc(alias = "bindv")]
    pub fn bind_public(&self, addr: SocketAddr, public: SocketAddr) -> io::Result<SocketAddr> {
        self.bind_announcing(addr, Some(public))
    }

    fn bind_announcing(
        &self,
        addr: SocketAddr,
        public: Option<SocketAddr>,
    ) -> io::Result<SocketAddr> {
        let too_late = || {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "bind: the messenger is already bound, started or shut down",
            )
        };
        if self.started.load(Ordering::Acquire) || self.bound.swap(true, Ordering::AcqRel) {
            return Err(too_late());
        }
        // A bind waiting to retry (`bind_retry_delay`) gives up once the messenger
        // started or shut down meanwhile: what it would bind could not be announced.
        let still_wanted = || {
            if self.started.load(Ordering::Acquire) || self.env.sessions.is_stopping() {
                return Err(too_late());
            }
            Ok(())
        };
        let (listener, bound) =
            match processor::bind(addr, &self.env.config, &BTreeSet::new(), still_wanted) {
                Ok(b) => b,
                Err(e) => {
                    // Nothing was bound: a later call may try again.
                    self.bound.store(false, Ordering::Release);
                    return Err(e);
                }
            };
        let worker = self.pool.least_loaded().clone();
        // Decided under the lock `ready` takes the listener under after it sets `ready`:
        // either the listener is in place before `ready` looks for it, or this sees
        // `ready` (or a start that fixed our address, or a shutdown) and gives it up.
        let mut slot = self.processor.lock();
        if self.ready.load(Ordering::Acquire)
            || self.env.sessions.is_stopping()
            || !self.env.identity.set_bound(public.unwrap_or(bound))
        {
            drop(slot);
            drop(listener);
            return Err(too_late());
        }
        *slot = Some(Processor::new(listener, worker));
        *self.listen_at.lock() = Some(ListenAt { bound, public: public.is_some() });
        drop(slot);
        // A bound messenger's dials are not bound (`client_bind`): one made before this
        // bind lapses. Under the lock `client_bind` reads `bound` under, after `bound`
        // was set: a racing `client_bind` either is undone here or sees it and fails.
        *self.env.source_ip.lock() = None;
        // As Ceph's `_finish_bind`: the loopback connection's peer (us) is at this address.
        self.env.init_local_connection(&self.loopback);
        Ok(bound)
    }

    /// Makes every connection this messenger dials come from `addr`'s IP: each
    /// outgoing socket is bound to it, port 0, before it connects, so a peer sees our
    /// connections come from that IP (Ceph's `client_bind` under
    /// `ms_bind_before_connect`: a client on a host with several addresses picking the
    /// one its peers' firewalls expect). `addr`'s port is not used; an IPv6 `addr`'s scope
    /// id is (a link-local address binds on that interface). Takes effect for
    /// dials from then on. A dial to a peer of the other address family than `addr`
    /// is not bound (where Ceph's bind fails, and with it the dial).
    ///
    /// For a messenger that is not bound, before [`Messenger::start`] and its first
    /// connection: after those, or on a bound messenger, it fails with
    /// `AlreadyExists` and changes nothing (Ceph's returns -1 once started and does
    /// nothing on a bound messenger). It may be called again meanwhile; the last call
    /// wins.
    ///
    /// Unlike Ceph's, it needs no option set (calling it is the opt-in), and our own
    /// address does not take `addr` at once: a pure client learns its IP from the first
    /// peer it dials, which sees this one ([`Messenger::my_addrs`]). A bound messenger's
    /// dials are not bound (Ceph, with the option set, binds those to its address too),
    /// so a [`Messenger::bind`] after this call undoes it.
    #[doc(alias = "ms_bind_before_connect")]
    pub fn client_bind(&self, addr: SocketAddr) -> io::Result<()> {
        let mut source = self.env.source_ip.lock();
        if self.started.load(Ordering::Acquire)
            || self.bound.load(Ordering::Acquire)
            || self.env.identity.protocol().is_some()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "client_bind: the messenger is bound, started or has connected",
            ));
        }
        *source = Some(crate::env::dial_source(addr));
        Ok(())
    }

    /// Binds again, at the same IP with a new port and a new nonce, so that no peer
    /// takes us for who we were (Ceph's `AsyncMessenger::rebind(avoid_ports)`, which an
    /// OSD calls on its cluster and heartbeat messengers when the monitor wrongly marked
    /// it down). Returns the new bound address; [`Messenger::my_addrs`] announces it
    /// from then on (msgr2 and v1 alike, with the new nonce).
    ///
    /// In order: a new listener is bound at the old IP with port 0, never on a port of
    /// `avoid_ports` nor the old port (the range's walk skips them; without a
    /// [`MessengerConfig::bind_port_range`], a port the kernel picks that is to be
    /// avoided is held while the kernel is asked again, at most 16 times, then
    /// `AddrInUse`), with the retries of [`Messenger::bind`]
    /// ([`MessengerConfig::bind_retry_count`], sleeping the caller, not on a worker);
    /// then the old listener is closed (before this returns, but called on a worker,
    /// where the close is posted); the nonce moves on by 1,000,000 (Ceph's "we want our
    /// entity_addr_t to be truly unique") and the address becomes the new one; every
    /// session ends as by [`Messenger::mark_down_all`] (each reported with
    /// `ms_handle_reset`), so a peer that comes back finds none to resume and is reset;
    /// then the new listener starts accepting (at once if the messenger is ready, else
    /// when it becomes ready); last, once the messenger started, the fast dispatchers
    /// hear `ms_handle_fast_connect` for the loopback connection, whose address changed
    /// (as Ceph's `_finish_bind`), on the caller's thread. Connections dialled from then
    /// on announce the new address. Do not call it holding a lock a dispatcher takes.
    ///
    /// Errors, each leaving the messenger as it was (listening where it listened, its
    /// sessions and nonce untouched), where Ceph, which stops and marks down first,
    /// would be left listening nowhere: `NotConnected` if it was never bound (Ceph
    /// asserts), `Unsupported` if it was bound with [`Messenger::bind_public`] (the
    /// announced address is not ours to bind again), `WouldBlock` while another rebind
    /// is under way or the listener is being started by the first dispatcher (try
    /// again), the bind's own error (`AddrInUse` when every port was avoided or taken),
    /// or `Other` once the messenger shut down.
    ///
    /// Unlike Ceph's, the old port is avoided too: Ceph builds that set
    /// (`new_avoid`) but passes `avoid_ports` to its bind, so it may take the old
    /// port again. And the nonce changes only when the rebind succeeds.
    #[doc(alias = "AsyncMessenger::rebind")]
    pub fn rebind(&self, avoid_ports: &BTreeSet<u16>) -> io::Result<SocketAddr> {
        let at = *self.listen_at.lock();
        let Some(at) = at else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "rebind: the messenger was never bound",
            ));
        };
        if at.public {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "rebind: the messenger announces a public address of its own (bind_public)",
            ));
        }
        let shut_down = || io::Error::other("rebind: the messenger shut down");
        if self.env.sessions.is_stopping() {
            return Err(shut_down());
        }
        if self.rebinding.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "rebind: another rebind is under way",
            ));
        }
        let _one_at_a_time = ClearOnDrop(&self.rebinding);
        let mut avoid = avoid_ports.clone();
        avoid.insert(at.bound.port());
        let mut addr = at.bound;
        addr.set_port(0);
        log::info!(target: "msgr::bind", "rebind from {} avoiding ports {avoid:?}", at.bound);
        // Bound before anything is torn down: a bind that fails leaves the messenger as
        // it was. The old listener still holds the old port meanwhile.
        let still_wanted =
            || if self.env.sessions.is_stopping() { Err(shut_down()) } else { Ok(()) };
        let (listener, bound) = processor::bind(addr, &self.env.config, &avoid, still_wanted)?;
        let worker = self.pool.least_loaded().clone();
        let old = {
            let mut slot = self.processor.lock();
            if self.env.sessions.is_stopping() {
                return Err(shut_down());
            }
            match slot.take() {
                Some(old) => old,
                None => {
                    // `ready` has it out, starting it: it puts it back started.
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "rebind: the listener is being started; try again",
                    ));
                }
            }
        };
        // No more accepts on the old socket (Ceph: `Processor::stop`): closed on its
        // worker before the new identity is published, so no connection accepted there
        // runs under it.
        old.stop();
        // Who we are changes before the sessions end: a dial racing the mark-down that
        // saw the old identity is marked down with the rest, and one after it
        // announces the new address (the reverse would let a dial in between keep the
        // old identity past the rebind).
        let nonce = self.env.identity.rebound(bound, &self.env.config);
        *self.listen_at.lock() = Some(ListenAt { bound, public: false });
        self.env.init_local_connection(&self.loopback);
        // After the loopback connection shows the new address, before the chain is told
        // (below): a fast dispatcher joining meanwhile is told by its own add.
        self.env.loopback_moves.fetch_add(1, Ordering::SeqCst);
        self.mark_down_all();
        log::info!(target: "msgr::bind", "rebound from {} to {bound}, nonce {nonce}", at.bound);
        self.install_processor(Processor::new(listener, worker))?;
        // As Ceph's `_finish_bind` (`_init_local_connection`): the fast dispatchers of
        // this moment hear `ms_handle_fast_connect` for the loopback connection, whose
        // address changed; before the start, the start tells them. Last, with no lock
        // held: a panicking hook leaves the messenger rebound.
        self.announce_new_loopback_addr();
        Ok(bound)
    }

    /// Forgets every peer and takes a new nonce, as a client that has to look new to
    /// its peers (Ceph's `client_reset`, which a client blocklisted by the cluster calls
    /// before it reconnects): every session ends as by [`Messenger::mark_down_all`]
    /// (each reported with `ms_handle_reset`), after the nonce moved on by 1,000,000 at
    /// the same address ([`Messenger::my_addrs`] shows it, the loopback connection's
    /// peer address follows and the fast dispatchers hear `ms_handle_fast_connect` for
    /// it once the messenger started, on this thread, unless a shutdown began
    /// meanwhile). Connections dialled from then on
    /// announce the new nonce, so no peer resumes a session with us: each takes us for
    /// a new entity. A listener, if any, stays where it is. Returns the new nonce.
    ///
    /// Unlike Ceph's, which marks the sessions down first, the nonce changes before
    /// they end (as in [`Messenger::rebind`]): a dial racing the reset that saw the old
    /// nonce is marked down with the rest, and one after it announces the new one.
    /// Fails with `WouldBlock` while a [`Messenger::rebind`] (or another reset) is under
    /// way, and with `Other` once the messenger shut down. Do not call it holding a lock
    /// a dispatcher takes.
    #[doc(alias = "AsyncMessenger::client_reset")]
    pub fn client_reset(&self) -> io::Result<u32> {
        if self.env.sessions.is_stopping() {
            return Err(io::Error::other("client_reset: the messenger shut down"));
        }
        if self.rebinding.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "client_reset: a rebind or another reset is under way",
            ));
        }
        let _one_at_a_time = ClearOnDrop(&self.rebinding);
        let nonce = self.env.identity.renonced(&self.env.config);
        log::info!(target: "msgr::bind", "client_reset: new nonce {nonce}");
        self.env.init_local_connection(&self.loopback);
        self.env.loopback_moves.fetch_add(1, Ordering::SeqCst);
        self.mark_down_all();
        self.announce_new_loopback_addr();
        Ok(nonce)
    }

    /// Tells the fast dispatchers of the loopback connection's new address (the end of
    /// `rebind`, `client_reset` and `set_addr_unknowns`), on this thread, once the
    /// messenger started (before, the start tells them), as
    /// [`Messenger::announce_loopback`] does.
    fn announce_new_loopback_addr(&self) {
        let started = self.env.loopback_unannounced.lock().is_none();
        if started {
            self.announce_loopback(|| self.env.dispatchers().handle_fast_connect(&self.loopback));
        }
    }

    /// Runs `tell` (`ms_handle_fast_connect` of the loopback connection on some fast
    /// dispatchers) on this thread, unless a shutdown began: one that began meanwhile
    /// (while a `rebind` marked the sessions down, a dispatcher was being added) may be
    /// about to return, promising no dispatcher runs after, and it closes the loopback
    /// connection only at its end. A shutdown that begins once this decided to run it
    /// waits until it returned ([`Messenger::wait_for_announcement`]); no lock is held
    /// while the hooks run.
    fn announce_loopback(&self, tell: impl FnOnce()) {
        if !self.loopback.is_connected() {
            return;
        }
        {
            // Decided under `announcing`, which a shutdown takes after it began: either
            // it finds this thread here and waits, or this finds it began.
            let mut announcing = self.announcing.lock();
            if self.env.sessions.is_stopping() {
                return;
            }
            announcing.push(thread::current().id());
        }
        // Cleared however the hooks return (a panicking one too).
        let _told = ClearAnnouncing(self);
        tell();
    }

    /// Blocks while another thread tells fast dispatchers of the loopback connection
    /// ([`Messenger::announce_loopback`]), for a shutdown that began (none starts after)
    /// and has ended the sessions (a hook that waits for the shutdown, in a `wait` or a
    /// second `shutdown`, gets that far). Not on a thread telling them itself (a hook
    /// that shuts the messenger down, which runs after it returns anyway: two such hooks
    /// on two threads would each wait for the other), nor on a thread of a messenger,
    /// where a shutdown does not wait for hooks (see [`Messenger::shutdown`]): a `wait`
    /// from a thread of no messenger does.
    fn wait_for_announcement(&self) {
        if on_a_messenger_thread() {
            return;
        }
        let me = thread::current().id();
        let mut announcing = self.announcing.lock();
        if announcing.contains(&me) {
            return;
        }
        while !announcing.is_empty() {
            self.announced.wait(&mut announcing);
        }
    }

    /// Puts a listener bound by `rebind` in place: started at once if the messenger is
    /// ready, else left for `ready` to start. Decided under the lock `ready` takes the
    /// listener under after it sets `ready`, as in `bind_announcing`; stopped at once if
    /// a shutdown began, which found no listener to stop.
    fn install_processor(&self, mut p: Processor) -> io::Result<()> {
        let mut slot = self.processor.lock();
        let stopped = || io::Error::other("rebind: the messenger shut down");
        if !self.ready.load(Ordering::Acquire) {
            if self.env.sessions.is_stopping() {
                drop(slot);
                p.stop();
                return Err(stopped());
            }
            *slot = Some(p);
            return Ok(());
        }
        // No lock while the listener's worker registers it.
        drop(slot);
        let started = p.start(self.env.clone(), self.pool.handles().to_vec());
        slot = self.processor.lock();
        if self.env.sessions.is_stopping() {
            drop(slot);
            p.stop();
            return Err(stopped());
        }
        *slot = Some(p);
        drop(slot);
        started
    }

    /// The address a peer dials to reach us (after `bind`; port 0 for a pure client,
    /// whose IP is blank until its first connection learns it): our v1 address (Ceph's
    /// `get_myaddr_legacy`), or our msgr2 one when only msgr2 is bound (`bind_msgr1 =
    /// false`), so dialling it always works.
    #[doc(alias = "get_myaddr_legacy")]
    pub fn my_addr(&self) -> EntityAddr {
        self.env.my_addr()
    }

    /// Our address vector (Ceph's `get_myaddrs`): the bound address as msgr2 (first)
    /// and as msgr v1, each only if its protocol is bound (`bind_msgr2`, `bind_msgr1`).
    /// Both carry the same port: one listening socket serves both protocols (Ceph binds
    /// one per protocol; see [`MessengerConfig::bind_msgr1`]). A blank IP (a pure
    /// client, a listener on `0.0.0.0` or `[::]`) is the one learned from the first
    /// peer we dialled that told us how it sees us (Ceph's `learned_addr`), or set by
    /// [`Messenger::set_addr_unknowns`], once known; port and nonce stay ours.
    #[doc(alias = "get_myaddrs")]
    pub fn my_addrs(&self) -> EntityAddrVec {
        self.env.my_addrs()
    }

    /// Fills the blank IP of our bound address (a listener on `0.0.0.0` or `[::]`) with
    /// the IP of the first of `addrs` of its family, keeping our port, nonce and address
    /// types (Ceph's `set_addr_unknowns`: a daemon bound to a wildcard told its public
    /// IP, as a monitor's from its monmap). Returns whether it did: not for a
    /// messenger never bound (a pure client learns its IP from its first peer instead),
    /// one bound to an IP, one whose IP was already learned from a peer or set, or when
    /// `addrs` has no address of the family. Then [`Messenger::my_addrs`] shows it,
    /// connections dialled from then on announce it, the loopback connection's peer
    /// address follows, and the fast dispatchers hear `ms_handle_fast_connect` for it
    /// (once the messenger started; before, the start tells them), on this thread,
    /// unless a shutdown began (one that begins meanwhile waits for them).
    ///
    /// An acceptor still matches a connector's target address against the socket's
    /// local address where we are bound to a wildcard, and announces that address in
    /// its banner or SERVER_IDENT, as before: a host reached at several addresses stays
    /// reachable at each (Ceph's msgr2 acceptor would refuse a target other than the
    /// set address).
    #[doc(alias = "AsyncMessenger::set_addr_unknowns")]
    pub fn set_addr_unknowns(&self, addrs: &EntityAddrVec) -> bool {
        let set = self.env.set_addr_unknowns(addrs);
        if set {
            // As `rebind`'s: a shutdown waits for it, or it is not told once one began.
            self.announce_new_loopback_addr();
        }
        set
    }

    /// Our entity name.
    pub fn my_name(&self) -> EntityName {
        self.env.identity.name()
    }

    /// Changes our entity name (a client learns `client.<global_id>` after MAuth).
    /// Takes effect for messages framed afterwards, and for the loopback connection,
    /// whose peer is us.
    pub fn set_myname(&self, name: EntityName) {
        self.env.identity.set_name(name);
        self.env.init_local_connection(&self.loopback);
    }

    /// Starts the messenger. Accepting begins once the first dispatcher is added.
    ///
    /// A fast dispatcher added before hears `ms_handle_fast_connect` for the loopback
    /// connection here; if that hook panics, the others still hear it, the messenger is
    /// started all the same, and the (first) panic then goes on unwinding in the caller.
    pub fn start(&self) -> io::Result<()> {
        if let Some(panic) = self.start_announcing() {
            std::panic::resume_unwind(panic);
        }
        Ok(())
    }

    /// [`Messenger::start`], returning the first panic of an `ms_handle_fast_connect`
    /// instead of unwinding with it: the caller finishes starting first (`ready`, whose
    /// flags are set by then, would otherwise leave the dispatch thread and the listener
    /// never started, every later call returning Ok with nothing ever dispatched).
    fn start_announcing(&self) -> Option<Box<dyn std::any::Any + Send>> {
        if self.started.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Who we are is fixed from here on for the machines.
        let _ = self.env.protocol_config();
        // Ceph's `start` (and `_finish_bind`) initialise the local connection, and the
        // fast dispatchers present hear its `ms_handle_fast_connect`; a dispatcher added
        // later hears it as it is added, not never (Ceph calls it again only when its
        // address changes, which ours does from here on in a `rebind`, a learned address
        // or `set_addr_unknowns`, each of which calls it again too).
        let unannounced = self.env.loopback_unannounced.lock().take();
        let mut panicked = None;
        for d in unannounced.into_iter().flatten() {
            let announced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.announce_loopback_to(&*d)
            }));
            if let Err(panic) = announced {
                panicked.get_or_insert(panic);
            }
        }
        panicked
    }

    /// Adds a dispatcher in front of the others. The first dispatcher makes the
    /// messenger ready: the dispatch thread starts and the listener accepts.
    ///
    /// A fast dispatcher hears `ms_handle_fast_connect` for the loopback connection once,
    /// on the thread that starts the messenger if it was added before, else on this one
    /// before it joins the chain (so before it sees any message), and again each time
    /// our address moves after the start ([`Messenger::rebind`], a learned address,
    /// [`Messenger::set_addr_unknowns`]); not once a shutdown began (one that begins
    /// while the hook runs waits for it, as for a rebind's). If that hook panics,
    /// the panic reaches the caller: here before the dispatcher joins (it is not added),
    /// in a start (this call's, when the messenger was not started yet) once the
    /// messenger has started, with the dispatcher added.
    pub fn add_dispatcher_head(&self, d: Arc<dyn Dispatcher<Connection>>) -> io::Result<()> {
        self.add_dispatcher(d, true)
    }

    /// Adds a dispatcher behind the others (`ms_handle_fast_connect` for the loopback
    /// connection as in [`Messenger::add_dispatcher_head`]).
    pub fn add_dispatcher_tail(&self, d: Arc<dyn Dispatcher<Connection>>) -> io::Result<()> {
        self.add_dispatcher(d, false)
    }

    fn add_dispatcher(&self, d: Arc<dyn Dispatcher<Connection>>, head: bool) -> io::Result<()> {
        // Asked once (as Ceph's add_dispatcher_head), here rather than by the chain:
        // `d` is told about the loopback connection before it joins.
        let fast = d.ms_can_fast_dispatch_any();
        let moves = self.env.loopback_moves.load(Ordering::SeqCst);
        if fast {
            // Either `start` has taken the list (then `d` is told here), or it will
            // find `d` on it: never both, never neither. No lock while the hook runs.
            let told_by_start = match self.env.loopback_unannounced.lock().as_mut() {
                Some(waiting) => {
                    waiting.push(Arc::clone(&d));
                    true
                }
                None => false,
            };
            if !told_by_start {
                self.announce_loopback_to(&*d);
            }
        }
        self.env.dispatchers().add_asked(Arc::clone(&d), head, fast);
        let ready = self.ready();
        // A move of the loopback connection (a rebind, a learned or set address) while
        // `d` was told (perhaps of the old address) and before it joined told the chain
        // without it: told again here, after `ready` (a panic of this hook leaves the
        // messenger ready). One that moved it after `d` joined told it itself.
        if fast
            && self.env.loopback_moves.load(Ordering::SeqCst) != moves
            && self.env.loopback_unannounced.lock().is_none()
        {
            self.announce_loopback_to(&*d);
        }
        ready
    }

    /// `ms_handle_fast_connect` for the loopback connection on fast dispatcher `d`
    /// (Ceph's `ms_deliver_handle_fast_connect(local_connection)`), unless a shutdown
    /// began; one that begins meanwhile waits for it ([`Messenger::announce_loopback`]).
    fn announce_loopback_to(&self, d: &dyn Dispatcher<Connection>) {
        self.announce_loopback(|| d.ms_handle_fast_connect(&self.loopback));
    }

    fn ready(&self) -> io::Result<()> {
        if self.ready.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A fast dispatcher's panic unwinds only once the rest is started: `ready` is set.
        let panicked = self.start_announcing();
        let started = self.start_dispatching();
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        started
    }

    /// The dispatch thread and the listener, for `ready`.
    fn start_dispatching(&self) -> io::Result<()> {
        self.env.queue.start()?;
        // Taken out so no lock is held while the listener's worker registers it.
        let processor = self.processor.lock().take();
        if let Some(mut p) = processor {
            let started = p.start(self.env.clone(), self.pool.handles().to_vec());
            // Put back under the lock `shutdown` takes it from, unless shutdown began
            // meanwhile: it found nothing to stop then (shutdown begins before it looks),
            // and the listener would outlive the messenger.
            let mut slot = self.processor.lock();
            if self.env.sessions.is_stopping() {
                drop(slot);
                p.stop();
                return Err(io::Error::other("messenger shut down while starting"));
            }
            *slot = Some(p);
            drop(slot);
            started?;
        }
        Ok(())
    }

    /// The priority every message sent without one (priority 0) goes out with, on every
    /// connection, the loopback one included: Ceph's `set_default_send_priority` (a
    /// monitor sends at `PRIO_HIGH`). Until set, [`protocol::message::PRIO_DEFAULT`].
    ///
    /// Before [`Messenger::start`] only, as in Ceph (which asserts it): changed later, a
    /// message sent after the change would go out in a higher lane than one still queued
    /// from before it, and overtake it on a lossless connection.
    pub fn set_default_send_priority(&self, prio: u16) -> io::Result<()> {
        if self.started.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "set_default_send_priority: the messenger is already started",
            ));
        }
        self.env.set_default_send_priority(prio);
        Ok(())
    }

    /// The priority messages sent without one go out with
    /// ([`Messenger::set_default_send_priority`]).
    pub fn default_send_priority(&self) -> u16 {
        self.env.default_send_priority()
    }

    /// The policy for peers without a specific one; until set, [`Policy::lossless_peer`]
    /// (lossless, standby, no resetcheck). That is not Ceph's default, a default-constructed
    /// `Policy()`: lossless, no standby, resetcheck.
    pub fn set_default_policy(&self, policy: Policy) {
        self.env.policies.set_default(policy);
    }

    /// The policy for peers of `peer_type`, with its feature bits
    /// ([`Policy::features_supported`], [`Policy::features_required`]): what connections
    /// we dial to that type advertise and require of the peer, and what connections
    /// accepted from a peer naming that type (v1 CONNECT's `host_type`, msgr2 HELLO) are
    /// checked against and offered. So an OSD can require `SERVER_*` bits of OSD peers
    /// and not of clients: `set_policy(EntityType::OSD, Policy::lossless_peer()
    /// .with_features(supported, required))`.
    pub fn set_policy(&self, peer_type: EntityType, policy: Policy) {
        self.env.policies.set(peer_type, policy);
    }

    /// The policy connections to and from peers of `peer_type` get: the one
    /// [`Messenger::set_policy`] set for that type, else the default
    /// ([`Messenger::default_policy`]). Ceph's `get_policy(type)`, except that the
    /// throttlers are not part of it here ([`Messenger::set_policy_throttlers`] sets
    /// them apart). A policy set later applies to connections whose peer type is
    /// looked up from then on; one already open keeps the policy it opened with.
    #[doc(alias = "get_policy")]
    pub fn policy(&self, peer_type: EntityType) -> Policy {
        self.env.policies.policy(peer_type)
    }

    /// The policy for peers of a type with no policy of its own: what
    /// [`Messenger::set_default_policy`] set, else [`Policy::lossless_peer`] (see there
    /// for how that differs from Ceph's default). Ceph's `get_default_policy`.
    #[doc(alias = "get_default_policy")]
    pub fn default_policy(&self) -> Policy {
        self.env.policies.default_policy()
    }

    /// Throttlers charged for every message received from peers of `peer_type`: its
    /// bytes (payload plus [`protocol::message::MESSAGE_OVERHEAD`]) and one count,
    /// taken from its header on and held by the message itself until it is dropped,
    /// as Ceph's `Message` holds its `byte_throttler` and `msg_throttler` (Ceph's
    /// `osd_client_message_size_cap` and `osd_client_message_cap`): a dispatcher that
    /// keeps messages past its return holds them, and while they are full the
    /// connections of such peers stop reading. [`Message::release_message_throttle`]
    /// gives the count back early, [`Message::clear_payload`] and
    /// [`Message::clear_data`] the bytes of what they empty (only the dispatch
    /// throttle is released when the dispatcher returns; see the crate docs). Looked
    /// up once per connection, when its first message arrives.
    pub fn set_policy_throttlers(
        &self,
        peer_type: EntityType,
        bytes: Option<Arc<Throttle>>,
        messages: Option<Arc<Throttle>>,
    ) {
        self.env.policies.set_throttlers(peer_type, (bytes, messages));
    }

    /// The connection to `addr`, reusing an existing session; a new one is dialled on
    /// the least-loaded worker.
    pub fn get_connection(&self, peer_type: EntityType, addr: SocketAddr) -> Connection {
        self.connect_to(peer_type, EntityAddr::legacy(addr, 0))
    }

    /// Like [`Messenger::get_connection`] for a peer whose announced address (with nonce)
    /// is known, e.g. from a monmap or an OSD map.
    pub fn connect_to(&self, peer_type: EntityType, addr: EntityAddr) -> Connection {
        // Who we are is fixed by the first connection, here rather than on its worker,
        // so a later `bind` fails whatever the worker did meanwhile.
        let _ = self.env.protocol_config();
        if self.my_addrs().addrs.contains(&addr) {
            return self.get_loopback_connection();
        }
        let created = self.env.sessions.get_or_create(addr, || {
            let conn = self.env.new_connection(false);
            {
                let mut p = conn.0.published.lock();
                p.addr = Some(addr);
                p.entity_type = Some(peer_type);
                p.session = SessionSnapshot::dialling(&addr);
            }
            conn
        });
        match created {
            Lookup::Existing(conn) => conn,
            Lookup::Created(conn) => {
                let worker = self.pool.least_loaded().clone();
                driver::spawn_outgoing(&self.env, &worker, conn.clone(), peer_type, addr);
                conn
            }
            Lookup::Stopping(conn) => {
                // Shutting down: a handle that is closed from the start.
                conn.close();
                conn
            }
        }
    }

    /// The connection to ourselves: delivers to our own dispatchers without a socket.
    /// Its peer is us, as Ceph's local connection's: [`Connection::peer_addr`] is
    /// [`Messenger::my_addr`], its peer type and name are ours (kept current through
    /// `bind` and [`Messenger::set_myname`]), its features every feature we speak; and
    /// a message sent on it comes from our name, whatever source it named.
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

    /// Closes the session with the peer at `addr`, discarding what is queued for it, and
    /// reports its end with `ms_handle_reset`, as Ceph's messenger-level mark_down does
    /// (`mark_down_addrs`: `stop(true)`). [`Connection::mark_down`] is the silent one.
    pub fn mark_down(&self, addr: &EntityAddr) {
        if let Some(conn) = self.env.sessions.lookup(addr) {
            self.end_reporting(&conn);
        }
    }

    /// Closes every connection, each reported with `ms_handle_reset` (Ceph's
    /// `mark_down_all`).
    pub fn mark_down_all(&self) {
        for conn in self.env.sessions.live() {
            self.end_reporting(&conn);
        }
    }

    /// Ends `conn`'s session as Ceph's `AsyncConnection::stop(true)` does: its messages
    /// stop and what is queued goes, then `ms_handle_reset` is queued (once, whoever
    /// ends it first).
    fn end_reporting(&self, conn: &Connection) {
        if conn.is_loopback() {
            return;
        }
        // Out of the table first: a connect from here on gets a new session.
        self.env.sessions.forget(conn);
        self.env.reset_session(conn, false);
    }

    /// The dispatch throttle (`ms_dispatch_throttle_bytes`).
    pub fn dispatch_throttle(&self) -> &Arc<Throttle> {
        self.env.dispatch_throttle()
    }

    /// How many items wait for the dispatch thread: received messages not yet taken by
    /// an `ms_dispatch` (the loopback connection's included) and connection events
    /// (connect, accept, reset…) not yet delivered; neither the one being dispatched nor
    /// messages fast dispatch took. Ceph's `get_dispatch_queue_len` (its queue holds the
    /// events too; its loopback messages wait apart and are not counted there).
    #[doc(alias = "get_dispatch_queue_len")]
    pub fn dispatch_queue_len(&self) -> usize {
        self.env.queue.len()
    }

    /// How long the longest-waiting message has waited for `ms_dispatch` since the
    /// worker received it (zero when none waits; events are not counted), Ceph's
    /// `get_dispatch_queue_max_age`: how far behind the dispatch thread is. An MDS
    /// adds it to its session timeout before it marks a client's session stale
    /// (`Server::find_idle_sessions`), so a client whose renewal still waits in the
    /// queue is not taken for gone.
    #[doc(alias = "get_dispatch_queue_max_age")]
    pub fn dispatch_queue_max_age(&self) -> Duration {
        self.env.queue.max_age()
    }

    /// Number of live connections of this messenger.
    pub fn connection_count(&self) -> usize {
        self.env.sessions.len()
    }

    /// Number of peer addresses with a session registered (Ceph's `conns`: what
    /// `connect_to` and an accept decision look up). Never more than
    /// [`connection_count`](Self::connection_count).
    pub fn session_count(&self) -> usize {
        self.env.sessions.sessions()
    }

    /// The worker pool this messenger runs on.
    pub fn pool(&self) -> &Arc<WorkerPool> {
        &self.pool
    }

    /// Counters as JSON: one `AsyncMessenger::Worker-N` section per worker (Ceph's names)
    /// plus the dispatch throttle and queue (also the admin socket's `perf dump`).
    pub fn counters_json(&self) -> serde_json::Value {
        self.env.perf_dump()
    }

    /// A JSON list of connections: id, peer, state, features (also the admin socket's
    /// `messenger dump`).
    pub fn dump_connections(&self) -> serde_json::Value {
        self.env.sessions.dump()
    }

    /// Serves Ceph's admin-socket protocol on a Unix socket at `path` from one of the
    /// workers (no thread of its own, but for one that finishes an answer half-written
    /// when the socket stops): `perf dump` (also `perfcounters_dump` and `1`),
    /// `perf schema` (also `perfcounters_schema` and `2`), `messenger dump`, `version`,
    /// `git_version`, `help`, `get_command_descriptions`, Ceph's ping (`0`, answered
    /// `2`) and its binary requests (codes 0, 1 and 2), so `ceph --admin-daemon PATH perf
    /// dump` works and a Ceph daemon starting at `path` sees a live socket.
    /// The socket file is removed when the messenger shuts down. A socket at `path` that
    /// answers (another daemon's) is left alone: `AlreadyExists`; a stale file is
    /// replaced.
    ///
    /// From any thread, a worker's included (`ms_fast_dispatch`, a timer): there it does
    /// not wait for the listener's registration on its worker (which may be the caller's
    /// own, or one waiting for it) but posts it, so a failure of that registration (the
    /// poll's, out of memory; or the worker stopped first) is not returned: it is logged,
    /// the socket file removed, and [`Messenger::admin_socket_path`] says `None` from
    /// then on.
    pub fn start_admin_socket(&self, path: &std::path::Path) -> io::Result<()> {
        // Before the file at `path` is touched.
        if self.env.sessions.is_stopping() {
            return Err(io::Error::other("messenger shut down"));
        }
        let worker = self.pool.least_loaded().clone();
        // Ours only while it still holds the file: one whose registration failed gave it
        // up, and the path may be another process's since.
        let ours =
            self.admin.lock().as_ref().filter(|a| a.path() == path).and_then(|a| a.file_claim());
        let admin = AdminSocket::start(path, self.env.clone(), &worker, ours)?;
        // As `ready` puts the listener back: a shutdown that began meanwhile found no
        // admin socket to stop.
        let mut slot = self.admin.lock();
        if self.env.sessions.is_stopping() {
            drop(slot);
            admin.stop();
            return Err(io::Error::other("messenger shut down"));
        }
        // A second admin socket replaces the first, which keeps its file if the new one
        // was bound at the same path (binding replaced it).
        let old = slot.replace(admin);
        drop(slot);
        if let Some(old) = old {
            if old.path() == path {
                old.stop_keeping_file();
            } else {
                old.stop();
            }
        }
        Ok(())
    }

    /// Where the admin socket serves: the path of the last successful
    /// [`start_admin_socket`](Self::start_admin_socket), `None` before one, after the
    /// shutdown, or once the listener of one called on a worker failed to register (or
    /// its worker stopped first). Such a registration still pending counts as served.
    pub fn admin_socket_path(&self) -> Option<std::path::PathBuf> {
        let admin = self.admin.lock();
        admin.as_ref().filter(|a| a.is_served()).map(|a| a.path().to_path_buf())
    }

    /// Summed counters over all workers (message and byte totals).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.env.counters {
            t.recv_messages += c.recv_messages.load(Ordering::Relaxed);
            t.send_messages += c.send_messages.load(Ordering::Relaxed);
            t.recv_bytes += c.recv_bytes.load(Ordering::Relaxed);
            t.send_bytes += c.send_bytes.load(Ordering::Relaxed);
        }
        t
    }

    /// The handshake counters of all our connections, msgr v1 and msgr2 alike (the name
    /// is older than msgr2): connect attempts (v1 connect messages, msgr2 idents and
    /// reconnects), the WAIT, retry-global, retry-session and reset-session replies met
    /// (v1's tags, msgr2's frames), received messages dropped as already delivered, bad
    /// signatures, refused credentials and identities ([`CounterValues`]). Read-only;
    /// for tests and diagnostics.
    pub fn v1_counters(&self) -> CounterValues {
        // Read without building the protocol config: that fixes who we are (start does).
        self.env.identity.protocol().map(|p| machine::counter_values(&p)).unwrap_or_default()
    }

    /// Per-worker counters (index = worker index).
    pub fn worker_counters(&self) -> &[Arc<WorkerCounters>] {
        &self.env.counters
    }

    /// Stops accepting, ends every connection's session as [`Messenger::mark_down_all`]
    /// does, stops the dispatch thread and, if the pool is ours, the workers; returns
    /// once they stopped.
    ///
    /// What the dispatchers hear, as from Ceph's `shutdown` and `wait`: one
    /// `ms_handle_reset` for each connection whose session had not ended yet (open, in
    /// standby, reconnecting, or still in its handshake; dialled or accepted), so a
    /// daemon frees what it keeps per session; none for the loopback connection, for one
    /// the user marked down ([`Connection::mark_down`]) or for one whose reset was
    /// already reported. The dispatch thread delivers them while this call waits for it:
    /// first the `ms_dispatch` under way returns, then come the connection events queued
    /// until the thread is told to stop, these resets among them, in the order they were
    /// queued; the messages still waiting for `ms_dispatch` (the loopback connection's
    /// included) are dropped, never delivered, and nothing queued after that is taken.
    /// A session that another thread is ending at that moment (its own worker on a fault,
    /// a newcomer replacing it, a `mark_down` or `mark_down_all` elsewhere) is reported
    /// once, by that thread, and still before this returns: the dispatch thread is not
    /// told to stop before that reset is queued. So in Ceph: a fault or a newcomer ends a
    /// session and queues its reset under the connection's lock, which `stop` takes to
    /// end it, and `mark_down_all` or `mark_down` stops one and queues its reset under the
    /// messenger's lock, which the shutdown's `mark_down_all` holds.
    ///
    /// So no dispatcher of ours runs after it returns, with two exceptions: on a shared
    /// pool ([`Messenger::with_pool`]), whose workers it leaves running, a hook a worker
    /// had already begun (`ms_fast_dispatch`, `ms_fast_preprocess`, `ms_handle_fast_*`)
    /// may still be running, as after [`Connection::mark_down`]; and called from the
    /// dispatch thread or a worker, it cannot wait for the dispatch thread (which may
    /// be waiting for that worker): the dispatch thread delivers the resets once it
    /// comes to them, which from `ms_dispatch` is after that dispatcher returns, and from
    /// a worker's hook (`ms_fast_dispatch`) may be before or after this returns (as in
    /// Ceph, whose shutdown never waits for its dispatch queue); either way before a
    /// [`Messenger::wait`] from a thread of no messenger returns.
    /// [`Messenger::wait`] waits for both. A call made while another is under way (or
    /// after one) waits as `wait` does, but on the dispatch thread or a worker, where it
    /// returns at once (so an `ms_handle_reset` that calls it again goes on at once).
    ///
    /// The same holds on the threads of another messenger of the process (its dispatch
    /// thread, a worker of its pool): there it joins none of ours, our workers included
    /// (they are told to stop, and a `wait` from a thread of no messenger joins them),
    /// since that messenger's shutdown may be under way on one of ours, joining the
    /// caller (two messengers shutting each other down from their dispatchers). So
    /// called from a dispatcher, of this messenger or any other, it returns without
    /// waiting for any messenger's threads; a daemon that must know them stopped calls
    /// `wait` from a thread of its own (as Ceph's daemons do).
    ///
    /// Unlike Ceph's, which only signals and leaves the joins to `wait`, it waits for an
    /// `ms_dispatch` under way to return and for the resets to be delivered, and (except
    /// on a thread of a messenger, and in such a hook) for an `ms_handle_fast_connect`
    /// of the loopback connection that a [`Messenger::rebind`], [`Messenger::client_reset`],
    /// [`Messenger::set_addr_unknowns`], a dispatcher being added or a start on another
    /// thread began before the shutdown (none of those begins one after): do not call
    /// it holding a lock a dispatcher takes. It waits for that hook only once the
    /// sessions ended, so a hook that calls `wait` or `shutdown` goes on meanwhile.
    pub fn shutdown(&self) {
        if !self.stop() {
            // Another call began it (perhaps on the dispatch thread, which cannot join
            // itself, or still under way): from any other thread this one waits as
            // `wait` does. Not on a dispatch thread or a worker (ours or another
            // messenger's), which the first call may be joining: one joining the other
            // deadlocked.
            if !on_a_messenger_thread() {
                self.wait();
            }
        }
    }

    /// The shutdown itself; false if another call began it.
    fn stop(&self) -> bool {
        let Some(live) = self.env.sessions.begin_shutdown() else { return false };
        // Ceph's shutdown is mark_down_all (shutdown_connections(true)): every connection
        // not already closed is stopped and its reset queued, and the dispatch thread,
        // told to stop only later (in wait), delivers it. A daemon frees what it keeps
        // per session there (an MDS its session, a MonClient its hunting state). One the
        // user marked down hears nothing (the queue takes no event of it); one whose
        // session already ended was reported then, not again. Nothing accepted from now
        // on starts (the table refuses it), so the listener may close after this.
        for conn in live {
            self.end_reporting(&conn);
        }
        // Only now may `wait`, on any thread, stop the dispatch queue, which would refuse
        // these resets, and only once those of the sessions another thread ended first
        // are queued too (sessions_ended waits for them: that thread only has to queue
        // it, and holds nothing we hold, for we hold nothing). Before the listener's and
        // the admin socket's closes, which wait for a worker: a `wait` on that worker (a
        // fast dispatcher's) waits for this.
        self.env.sessions.sessions_ended();
        // A call that decided to tell fast dispatchers of the loopback connection (a
        // `rebind`, `client_reset` or `set_addr_unknowns` of its new address, a dispatcher
        // being added) before this began has told them before this goes on, so none of
        // those hooks runs after the shutdown returned. Only once the sessions ended: a
        // hook that waits for the shutdown (a `wait`, a second `shutdown`) waits that far.
        self.wait_for_announcement();
        let processor = self.processor.lock().take();
        if let Some(p) = processor {
            p.stop();
        }
        let admin = self.admin.lock().take();
        if let Some(a) = admin {
            a.stop();
        }
        // The loopback handle too: sends to ourselves fail from now on (the dispatch queue
        // would drop them), and its private data goes (as Ceph's shutdown clears it), so
        // data holding the handle is no cycle.
        self.loopback.set_state(ConnState::Closed);
        self.loopback.set_priv(None);
        self.stop_dispatch_thread();
        self.stop_pool();
        true
    }

    /// Blocks until the messenger has shut down (Ceph's `wait`): until some thread calls
    /// [`Messenger::shutdown`] (at once if one did), then until the dispatch thread has
    /// stopped, our workers too if the pool is ours, and, on a shared pool whose
    /// workers keep running, every connection of this messenger is gone from them. The
    /// `ms_handle_reset`s the shutdown queued have been delivered by then, and none of
    /// its dispatchers runs after it returns, even when the shutdown was called from the
    /// dispatch thread (which cannot join itself) or is still under way on another
    /// thread. A daemon's main thread waits here while a signal handler or a command
    /// shuts it down.
    ///
    /// Not to be called from the dispatch thread or a worker of the pool before the
    /// shutdown (it would wait for itself, as in Ceph); called from one after, it waits
    /// for neither that thread nor, on a worker, the connections or the dispatch thread
    /// (which may be waiting for that worker: a shutdown or `wait` under way there
    /// joins a pool it owns, or waits for the listener's worker or the connections).
    /// Called from a thread of another messenger (its dispatch thread, a worker of any
    /// pool) after the shutdown, it waits for none of our threads nor the connections
    /// either: that messenger's shutdown may be under way on one of them, joining the
    /// caller ([`Messenger::shutdown`]). Only a `wait` from a thread of no messenger
    /// waits for everything.
    pub fn wait(&self) {
        // Not before the shutdown has queued its resets: the queue stopped here would
        // refuse them.
        self.env.sessions.wait_for_shutdown();
        // As the shutdown does (which did not, on a messenger's thread).
        self.wait_for_announcement();
        // Idempotent: joins the dispatch thread if the shutdown could not (it ran on that
        // thread), or waits for the shutdown joining it (not on a worker: see
        // `stop_dispatch_thread`).
        self.stop_dispatch_thread();
        self.stop_pool();
        if event_center::on_a_worker() || self.on_another_messengers_thread() {
            return;
        }
        self.env.sessions.wait_until_empty();
    }

    /// Whether the caller is a worker of our pool (in a fast dispatcher, a timer).
    fn on_our_worker(&self) -> bool {
        self.pool.handles().iter().any(|w| w.is_current_thread())
    }

    /// Whether the caller is a thread of another messenger only: a worker not of our
    /// pool, or a dispatch thread not ours (in one of its dispatchers, a timer). That
    /// messenger's shutdown or `wait` may be under way on one of our threads, joining
    /// the caller's: whatever this one joins or waits for there may be waiting for the
    /// caller (our dispatch thread in that shutdown, our worker in a `wait` or a pool
    /// join), and two messengers shutting each other down from their hooks deadlocked.
    fn on_another_messengers_thread(&self) -> bool {
        (event_center::on_a_worker() && !self.on_our_worker())
            || (dispatch::on_a_dispatch_thread() && !self.env.queue.is_dispatch_thread())
    }

    /// Stops the dispatch queue and joins its thread, except on a worker (of our pool or
    /// another's) or a dispatch thread (ours or another messenger's): the dispatch
    /// thread may be waiting for that worker (a shutdown there joins the pool it owns
    /// and waits for the listener's worker to close it; a `wait` there joins the pool or
    /// waits for its connections to leave the workers) or for that thread (its
    /// messenger's shutdown joining it), and the two joining each other deadlocked.
    /// There it only asks the thread to stop (as a shutdown on the dispatch thread itself
    /// does), and a `wait` from another thread joins it.
    fn stop_dispatch_thread(&self) {
        if on_a_messenger_thread() {
            self.env.queue.stop(ShutdownMode::Discard);
        } else {
            self.env.queue.shutdown(ShutdownMode::Discard);
        }
    }

    /// Stops the workers if the pool is ours, and joins them, except on a thread of
    /// another messenger (see [`Messenger::on_another_messengers_thread`]): a worker of
    /// ours may be in a hook shutting that messenger down, joining the caller. There
    /// the workers are only told to stop (each exits once its callback under way
    /// returns), and a `wait` from another thread (or the pool's drop) joins them.
    fn stop_pool(&self) {
        if !self.owns_pool {
            return;
        }
        if self.on_another_messengers_thread() {
            for worker in self.pool.handles() {
                worker.stop();
            }
        } else {
            self.pool.shutdown();
        }
    }
}

/// Whether the caller is a worker (of any pool) or a dispatch thread (of any messenger),
/// where a shutdown or a `wait` joins no thread: one it would join may be joining it.
fn on_a_messenger_thread() -> bool {
    event_center::on_a_worker() || dispatch::on_a_dispatch_thread()
}

impl Drop for Messenger {
    fn drop(&mut self) {
        // No wait when an earlier shutdown did the work: the last handle going is no
        // reason to block on connections leaving a shared pool.
        self.stop();
        // Dropped on a worker or a dispatch thread (the last handle let go in a hook),
        // the pool's drop (if it is ours) and the dispatch queue's (with the environment)
        // would join threads that may be joining this one: another messenger's drop or
        // shutdown under way on one of ours. Those joins go to a thread of their own,
        // which drops its handles once ours are gone (`released`, dropped last).
        if on_a_messenger_thread() {
            let (pool, env) = (Arc::clone(&self.pool), Arc::clone(&self.env));
            let (released, gone) = std::sync::mpsc::channel::<()>();
            let reaper = std::thread::Builder::new().name("ms_reaper".into()).spawn(move || {
                let _ = gone.recv();
                drop(env);
                drop(pool);
            });
            // Not spawned: the handles went with the closure, and the joins are made here.
            if reaper.is_ok() {
                self.released = Some(released);
            }
        }
    }
}

/// Where a messenger's listener is bound, for `rebind`.
#[derive(Clone, Copy, Debug)]
struct ListenAt {
    /// The bound address (as `getsockname` reports it).
    bound: SocketAddr,
    /// Bound with `bind_public`: another address is announced.
    public: bool,
}

/// Clears a flag when dropped: `rebinding`, on every way out of `rebind`.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Takes this thread's entry (one: a hook may announce again inside) out of
/// `Messenger::announcing` when dropped, waking a shutdown waiting for it.
struct ClearAnnouncing<'a>(&'a Messenger);

impl Drop for ClearAnnouncing<'_> {
    fn drop(&mut self) {
        let me = thread::current().id();
        let mut announcing = self.0.announcing.lock();
        if let Some(at) = announcing.iter().rposition(|&t| t == me) {
            announcing.swap_remove(at);
        }
        drop(announcing);
        self.0.announced.notify_all();
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
