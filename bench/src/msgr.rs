//! The asyncmsgr peer: a server messenger that answers every message on the connection
//! it came on, and client messengers that keep `depth` requests in flight, check that
//! every reply answers the oldest request (tid order), count resets, and fail the run
//! when a reply is missing, out of order, or traffic stops.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Sender;
use event_center::{WorkerPool, WorkerPoolConfig};
use hdrhistogram::Histogram;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use parking_lot::Mutex;
use protocol::auth::cephx::CephxProvider;
use protocol::auth::{ConMode, ConModes};
use protocol::types::{AddrType, EntityAddr, EntityType};
use protocol::Message;

use crate::args::{Args, MsgrVariant, BUSY_POLL};
use crate::cephx::Keys;
use crate::report::{measure, new_histogram, Report};
use crate::verify::{InFlight, Signal};
use crate::wire::{client_name, MSG_PING, SERVER_NAME};

/// The messengers' options; with `auth` (cephx), that provider authenticates every
/// connection and the mode options (`ms_client_mode`, `ms_service_mode`) allow only the
/// mode `variant` asks for, so a connection that cannot have it fails instead of running
/// the other.
fn config(args: &Args, variant: MsgrVariant, auth: Option<Arc<CephxProvider>>) -> MessengerConfig {
    let config = MessengerConfig {
        workers: args.workers,
        crc_header: args.crc,
        crc_data: args.crc,
        early_batches: !variant.late,
        tcp_congestion: args.tcp_congestion.clone(),
        ..MessengerConfig::default()
    };
    match (auth, expected_mode(variant)) {
        (Some(provider), Some(mode)) => {
            let only = Some(ConModes(vec![mode]));
            MessengerConfig { client_mode: only.clone(), service_mode: only, ..config }
                .with_auth_provider(provider)
        }
        _ => config,
    }
}

/// The connection mode `variant` must have negotiated (`None`: msgr v1, no modes).
fn expected_mode(variant: MsgrVariant) -> Option<ConMode> {
    match (variant.v2, variant.secure) {
        (false, _) => None,
        (true, false) => Some(ConMode::CRC),
        (true, true) => Some(ConMode::SECURE),
    }
}

/// Whether `variant` authenticates with cephx (secure mode always does).
fn wants_cephx(variant: MsgrVariant) -> bool {
    variant.cephx || variant.secure
}

/// The providers `variant` needs: cephx keys, or none (auth none).
fn keys_for(variant: MsgrVariant) -> io::Result<Option<Keys>> {
    wants_cephx(variant).then(Keys::new).transpose().map_err(io::Error::other)
}

/// Checks that a connection spoke `proto` and negotiated the mode `variant` asks for;
/// `end` names the side in the error.
fn check_spoke(end: &str, variant: MsgrVariant, spoke: Spoke) -> io::Result<()> {
    let proto = if variant.v2 { ProtocolVersion::V2 } else { ProtocolVersion::V1 };
    if spoke.0 != Some(proto) {
        return Err(io::Error::other(format!("{end}: asked for {proto:?}, spoke {:?}", spoke.0)));
    }
    let mode = expected_mode(variant);
    if mode.is_some() && spoke.1 != mode {
        let show = |m: Option<ConMode>| m.map_or("no".to_string(), |m| m.to_string());
        return Err(io::Error::other(format!(
            "{end}: asked for msgr2 {} mode, negotiated {} mode",
            show(mode),
            show(spoke.1)
        )));
    }
    Ok(())
}

/// The protocol a connection spoke and the msgr2 mode it negotiated.
type Spoke = (Option<ProtocolVersion>, Option<ConMode>);

/// What the server's end of each accepted connection negotiated, by connection id,
/// recorded when the session opens (before its first message is dispatched).
#[derive(Default)]
pub struct Accepted(Mutex<BTreeMap<u64, Spoke>>);

impl Accepted {
    fn record(&self, conn: &Connection) {
        self.0.lock().insert(conn.id(), (conn.protocol(), conn.con_mode()));
    }

    /// Sessions the server opened so far.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether the server opened no session.
    pub fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Fails unless the server opened at least `conns` sessions and every one spoke the
    /// protocol and mode `variant` asks for.
    pub fn check(&self, variant: MsgrVariant, conns: usize) -> io::Result<()> {
        let accepted = self.0.lock().clone();
        if accepted.len() < conns {
            return Err(io::Error::other(format!(
                "server: opened {} sessions for {conns} client connections",
                accepted.len()
            )));
        }
        accepted.into_values().try_for_each(|spoke| check_spoke("server", variant, spoke))
    }
}

/// Answers every message on its own connection with a message of the same type and tid
/// carrying `reply` as data: from the worker (fast dispatch) or, `queued`, from the
/// dispatch thread.
struct Echo {
    reply: Bytes,
    queued: bool,
    accepted: Arc<Accepted>,
}

impl Echo {
    fn answer(&self, conn: &Connection, msg: &Message) {
        let mut reply = Message::new(msg.msg_type(), Bytes::new());
        reply.set_tid(msg.tid());
        reply.set_data(self.reply.clone());
        // A closed connection has nobody to answer; the client notices the reset.
        let _ = conn.send_message(reply);
    }
}

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.answer(conn, &msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        !self.queued
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        !self.queued
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.answer(conn, &msg);
    }
    fn ms_handle_fast_accept(&self, conn: &Connection) {
        self.accepted.record(conn);
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        // Queued dispatch gets no fast hook; in fast mode this repeats the record.
        self.accepted.record(conn);
    }
    fn ms_handle_reset(&self, _conn: &Connection) -> bool {
        // Every client that leaves resets its lossy session; nothing to do.
        true
    }
}

/// A server messenger of the bench on its own worker pool, and what its accepted
/// sessions negotiated.
pub struct Server {
    /// The messenger.
    pub messenger: Messenger,
    /// Its workers (the bench's, so they can busy-poll).
    pool: Arc<WorkerPool>,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Protocol and mode of every session it opened.
    pub accepted: Arc<Accepted>,
}

impl Server {
    /// Shuts the messenger down, then its workers.
    pub fn shutdown(&self) {
        self.messenger.shutdown();
        self.pool.shutdown();
    }
}

/// A pool of `args.workers` workers, busy-polling `--busy-poll` before they sleep (at
/// least [`BUSY_POLL`] for the `busy` variant).
fn worker_pool(
    args: &Args,
    variant: MsgrVariant,
    name_prefix: &str,
) -> io::Result<Arc<WorkerPool>> {
    let busy_poll = if variant.busy { args.busy_poll.max(BUSY_POLL) } else { args.busy_poll };
    Ok(Arc::new(WorkerPool::new(WorkerPoolConfig {
        workers: args.workers,
        name_prefix: name_prefix.into(),
        busy_poll,
        ..WorkerPoolConfig::default()
    })?))
}

/// Starts a server messenger bound to `addr`, auth none (see [`server_with`]).
pub fn server(args: &Args, addr: SocketAddr, variant: MsgrVariant) -> io::Result<Server> {
    server_with(args, addr, variant, None)
}

/// Starts a server messenger bound to `addr`, authenticating with `auth` (cephx, only
/// the mode `variant` asks for) when given. A cephx or secure `variant` needs it.
pub fn server_with(
    args: &Args,
    addr: SocketAddr,
    variant: MsgrVariant,
    auth: Option<Arc<CephxProvider>>,
) -> io::Result<Server> {
    if wants_cephx(variant) && auth.is_none() {
        return Err(io::Error::other("cephx needs the server's cephx provider"));
    }
    // Nonce 0, as a monitor announces: a client that knows only the server's IP:port
    // (the `client` mode in another process) dials exactly what the server announces.
    let pool = worker_pool(args, variant, "bench-server")?;
    let m = Messenger::with_pool(SERVER_NAME, 0, config(args, variant, auth), pool.clone())?;
    m.set_default_policy(if variant.lossless {
        Policy::lossless_peer()
    } else {
        Policy::stateless_server()
    });
    let bound = m.bind(addr)?;
    m.start()?;
    let accepted = Arc::new(Accepted::default());
    m.add_dispatcher_head(Arc::new(Echo {
        reply: Bytes::from(vec![0x5a; args.reply_size]),
        queued: variant.queued || variant.queued_server,
        accepted: accepted.clone(),
    }))?;
    Ok(Server { messenger: m, pool, addr: bound, accepted })
}

/// The window of one connection: requests in flight and the round trips completed.
struct Window {
    inflight: InFlight,
    hist: Histogram<u64>,
    /// The setup thread is sending the first window: the reply thread leaves the
    /// requests its replies call for to it (`owed`) instead of sending them.
    starting: bool,
    /// Requests owed by replies that came while `starting`.
    owed: usize,
    /// The drain was reported (once per connection: the run counts them).
    drained: bool,
}

impl Window {
    /// Whether the drain is to be reported now: nothing in flight and not reported
    /// before (the run counts one per connection).
    fn take_drain(&mut self) -> bool {
        self.inflight.is_empty() && !std::mem::replace(&mut self.drained, true)
    }
}

/// The client side of one connection: every reply completes a round trip and, until the
/// deadline, sends the next request from the thread that delivered the reply, so the
/// window stays `depth` deep with no user thread in the loop — how an event-driven Ceph
/// client keeps its ops in flight.
struct Pipeline {
    payload: Bytes,
    deadline: Instant,
    /// Requests kept in flight.
    depth: usize,
    queued: bool,
    window: Mutex<Window>,
    done: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
    signals: Sender<Signal>,
    /// Set once the connection failed: no more sends, one report.
    failed: AtomicBool,
    /// Set as the run's teardown shuts the messenger down: the reset its shutdown
    /// reports for the session (as Ceph's does) is not the run's.
    closing: AtomicBool,
}

impl Pipeline {
    /// Sends the first window, `depth` requests, from the setup thread. Requests sent
    /// from two threads could reach the connection out of tid order (a thread
    /// descheduled between taking its tid and sending it: the hypervisor's steal made
    /// that happen, and the server answers in arrival order). So while this sends, the
    /// reply thread only counts the requests its replies call for (`owed`); then, under
    /// the window's lock and with every send of this thread done, the reply thread takes
    /// over and sends what is owed with its next request. Only if nothing is in flight
    /// by then (no reply left to come) does this thread send what is owed itself first.
    fn start(&self, conn: &Connection) {
        let mut n = self.depth;
        loop {
            let tids = {
                let mut w = self.window.lock();
                w.starting = true;
                if n == 0 {
                    let over =
                        Instant::now() >= self.deadline || self.failed.load(Ordering::Relaxed);
                    if w.owed == 0 || !w.inflight.is_empty() || over {
                        w.starting = false;
                        // Every reply came while this thread sent and the run is over:
                        // no reply is left to report the drain.
                        let drained = w.take_drain();
                        drop(w);
                        self.report_drain(drained);
                        return;
                    }
                    n = std::mem::take(&mut w.owed);
                }
                w.inflight.push_n(Instant::now(), n)
            };
            n = 0;
            self.send_tids(conn, tids);
        }
    }

    /// Sends the requests whose stamps are in the window as `tids`, in order. After a
    /// failed send the rest are not sent and leave the window with it.
    fn send_tids(&self, conn: &Connection, tids: std::ops::Range<u64>) {
        for tid in tids.clone() {
            let mut msg = Message::new(MSG_PING, Bytes::new());
            msg.set_tid(tid);
            msg.set_data(self.payload.clone());
            if let Err(e) = conn.send_message(msg) {
                let mut w = self.window.lock();
                for _ in tid..tids.end {
                    w.inflight.unpush();
                }
                drop(w);
                return self.fail(format!("send_message failed: {e}"));
            }
        }
    }

    /// Reports the connection drained if `drained` (from [`Window::take_drain`]) and the
    /// run did not fail.
    fn report_drain(&self, drained: bool) {
        if drained && !self.failed.load(Ordering::Relaxed) {
            let _ = self.signals.send(Signal::Drained);
        }
    }

    fn fail(&self, why: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            let _ = self.signals.send(Signal::Failed(why));
        }
    }

    fn reply(&self, conn: &Connection, msg: &Message) {
        // One clock read for the latency and the deadline: the other peers read the clock
        // twice per round trip (a request's stamp, its reply's latency), and so do we.
        let now = Instant::now();
        let more = now < self.deadline && !self.failed.load(Ordering::Relaxed);
        // The next request's stamp, read apart from `now` as the other peers do; its slot
        // is taken under the same lock that completes this reply.
        let stamp = more.then(Instant::now);
        let (drained, next) = {
            let mut w = self.window.lock();
            match w.inflight.complete(msg.tid()) {
                Ok(sent) => {
                    let _ = w.hist.record(now.saturating_duration_since(sent).as_nanos() as u64);
                    let next = match stamp {
                        Some(_) if w.starting => {
                            w.owed += 1;
                            None
                        }
                        Some(s) => {
                            // And what replies owed while the setup thread sent.
                            let owed = std::mem::take(&mut w.owed);
                            Some(w.inflight.push_n(s, 1 + owed))
                        }
                        None => None,
                    };
                    (stamp.is_none() && w.take_drain(), next)
                }
                Err(e) => {
                    drop(w);
                    return self.fail(format!("connection {}: {e}", conn.id()));
                }
            }
        };
        self.done.fetch_add(1, Ordering::Relaxed);
        match next {
            Some(tids) => self.send_tids(conn, tids),
            None => self.report_drain(drained),
        }
    }

    fn reset(&self, conn: &Connection, hook: &str) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        self.resets.fetch_add(1, Ordering::Relaxed);
        let lost = self.window.lock().inflight.len();
        if lost > 0 {
            self.fail(format!(
                "connection {} to {:?} reset ({hook}) with {lost} requests in flight: \
                 their replies are lost",
                conn.id(),
                conn.peer_socket_addr()
            ));
        }
    }
}

impl Dispatcher<Connection> for Pipeline {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        self.reply(conn, &msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        !self.queued
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        !self.queued
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.reply(conn, &msg);
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        self.reset(conn, "ms_handle_reset");
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        self.reset(conn, "ms_handle_remote_reset");
    }
}

/// Runs `args.conns` client messengers against `server` for the run's duration. The
/// client messengers share one pool of `args.workers` workers (so 1,000 connections
/// are 1,000 messengers on 2 threads, as daemons share a pool); each is its own entity,
/// `client.i`, as `ceph_perf_msgr_client` does. With `auth` (cephx) they share that
/// cephx provider (one client entity). Fails unless every connection spoke the protocol
/// and negotiated the mode `variant` asks for.
pub fn client(
    args: &Args,
    server: SocketAddr,
    variant: MsgrVariant,
    auth: Option<Arc<CephxProvider>>,
    name: &str,
) -> io::Result<Report> {
    client_of(args, || Ok(server), variant, auth, name)
}

/// [`client`] of the server at the address `server` returns. `server` runs inside the
/// measured window, so a server it starts is set up there, timed and its CPU counted, as
/// every other peer's `start` sets up its server.
fn client_of(
    args: &Args,
    server: impl FnOnce() -> io::Result<SocketAddr>,
    variant: MsgrVariant,
    auth: Option<Arc<CephxProvider>>,
    name: &str,
) -> io::Result<Report> {
    if wants_cephx(variant) && auth.is_none() {
        return Err(io::Error::other("cephx needs the clients' cephx provider"));
    }
    let resets = Arc::new(AtomicU64::new(0));
    let mut report = measure(args, name, |deadline, done, signals| {
        let server = server()?;
        let pool = worker_pool(args, variant, "bench-client")?;
        let payload = Bytes::from(vec![0xa5; args.size]);
        // The server announces nonce 0 on one port for both protocols: msgr2 is its
        // `v2:` address there.
        let ty = if variant.v2 { AddrType::MSGR2 } else { AddrType::LEGACY };
        let target = EntityAddr { ty, ..EntityAddr::legacy(server, 0) };
        let mut clients = Vec::with_capacity(args.conns);
        for i in 0..args.conns {
            let config = config(args, variant, auth.clone());
            let m = Messenger::with_pool(client_name(i), 1000 + i as u32, config, pool.clone())?;
            m.set_default_policy(if variant.lossless {
                Policy::lossless_peer()
            } else {
                Policy::lossy_client()
            });
            m.start()?;
            let pipeline = Arc::new(Pipeline {
                payload: payload.clone(),
                deadline,
                depth: args.depth,
                queued: variant.queued,
                window: Mutex::new(Window {
                    inflight: InFlight::new(args.depth),
                    hist: new_histogram(),
                    starting: false,
                    owed: 0,
                    drained: false,
                }),
                done: done.clone(),
                resets: resets.clone(),
                signals: signals.clone(),
                failed: AtomicBool::new(false),
                closing: AtomicBool::new(false),
            });
            m.add_dispatcher_head(pipeline.clone())?;
            let conn = m.connect_to(EntityType::OSD, target);
            clients.push((m, conn, pipeline));
        }
        for (_, conn, pipeline) in &clients {
            pipeline.start(conn);
        }
        Ok(Box::new(move || {
            let mut rtt = new_histogram();
            let mut spoke = Ok(());
            for (m, conn, pipeline) in clients {
                let _ = rtt.add(&pipeline.window.lock().hist);
                if spoke.is_ok() {
                    spoke = check_spoke("client", variant, (conn.protocol(), conn.con_mode()));
                }
                pipeline.closing.store(true, Ordering::Release);
                m.shutdown();
            }
            pool.shutdown();
            spoke.map(|()| rtt)
        }))
    })?;
    report.resets = resets.load(Ordering::Relaxed);
    Ok(report)
}

/// Server and clients in this process. With cephx (and in secure mode) both get cephx
/// providers from one in-process key server. The run fails unless the server's end of
/// every connection, too, spoke the protocol and negotiated the mode asked for.
pub fn run(args: &Args, variant: MsgrVariant, name: &str) -> io::Result<Report> {
    let keys = keys_for(variant)?;
    let (server_auth, client_auth) = match keys {
        Some(k) => (Some(k.server), Some(k.client)),
        None => (None, None),
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    // Started inside the measured window, as the tokio and std peers start theirs.
    let mut started: Option<Server> = None;
    let report = client_of(
        args,
        || {
            let server = server_with(args, loopback, variant, server_auth)?;
            let addr = server.addr;
            started = Some(server);
            Ok(addr)
        },
        variant,
        client_auth,
        name,
    );
    if let Some(server) = &started {
        server.shutdown();
    }
    let mut report = report?;
    if report.failure.is_none() {
        let Some(server) = &started else {
            return Err(io::Error::other("the asyncmsgr server was not started"));
        };
        report.failure = server.accepted.check(variant, args.conns).err().map(|e| e.to_string());
    }
    Ok(report)
}
