//! Loopback helpers for messenger tests: a recording dispatcher, an adapter for
//! dispatchers that take every message on the worker ([`OnWorker`]), and messenger
//! builders.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
};
use protocol::auth::{ConMode, ConModes};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use protocol::Message;

/// How long a test waits for something that should happen promptly on loopback.
pub const WAIT: Duration = Duration::from_secs(20);

/// What a [`Recorder`] saw. (Test-only: the size difference of variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Seen {
    /// A message (with the connection it came on).
    Message(Connection, Message),
    /// `ms_handle_connect`.
    Connect(Connection),
    /// `ms_handle_accept`.
    Accept(Connection),
    /// `ms_handle_reset`.
    Reset(Connection),
    /// `ms_handle_remote_reset`.
    RemoteReset(Connection),
    /// `ms_handle_refused`.
    Refused(Connection),
}

/// A dispatcher that forwards everything it sees to a channel, and optionally answers
/// every message with a reply of the same type on the same connection.
pub struct Recorder {
    tx: Sender<Seen>,
    echo: bool,
}

impl Recorder {
    /// A recorder and the receiving end of what it sees.
    pub fn new(echo: bool) -> (Arc<Recorder>, Receiver<Seen>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Arc::new(Recorder { tx, echo }), rx)
    }
}

impl Dispatcher<Connection> for Recorder {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        if self.echo {
            let mut reply = Message::new(msg.msg_type(), msg.front().clone());
            reply.set_tid(msg.tid());
            reply.set_data(msg.data().clone());
            let _ = conn.send_message(reply);
        }
        let _ = self.tx.send(Seen::Message(conn.clone(), msg));
        Dispatched::Taken
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        let _ = self.tx.send(Seen::Connect(conn.clone()));
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        let _ = self.tx.send(Seen::Accept(conn.clone()));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(Seen::Reset(conn.clone()));
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let _ = self.tx.send(Seen::RemoteReset(conn.clone()));
    }
    fn ms_handle_refused(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(Seen::Refused(conn.clone()));
        true
    }
}

/// What a dispatcher wrapped in [`OnWorker`] does with each message, on the worker.
pub trait FastHandler: Send + Sync + 'static {
    /// `ms_fast_dispatch` of `msg`, received on `conn`.
    fn on_message(&self, conn: &Connection, msg: Message);
}

/// A dispatcher that takes every message by fast dispatch, on the worker, and hands it
/// to its [`FastHandler`]; a message that reaches `ms_dispatch` anyway (one queued
/// before the dispatcher was added) is dropped unseen. Derefs to the handler, so a test
/// reads the handler's fields through it.
pub struct OnWorker<H>(pub H);

impl<H> std::ops::Deref for OnWorker<H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.0
    }
}

impl<H: FastHandler> Dispatcher<Connection> for OnWorker<H> {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.0.on_message(conn, msg);
    }
}

/// Waits for the next message seen, skipping connection events; panics on timeout
/// (one deadline for the whole wait: a stream of connection events, e.g. a reconnect
/// loop, does not extend it).
pub fn next_message(rx: &Receiver<Seen>) -> (Connection, Message) {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) => return (c, m),
            Ok(_) => continue,
            Err(e) => panic!("no message within {WAIT:?}: {e}"),
        }
    }
}

/// Asserts that no further message arrives within a short grace period (a duplicate or
/// a stray delivery would); connection events are ignored.
///
/// A window, not a marker, because what its callers guard against is mostly not
/// ordered by a marker sent on one connection: a refused peer's or a wrongly signed
/// message (no session to send a marker on), a message of an old session or of the
/// losing connection of a race (another connection), a resend after a reconnect that a
/// later cut may still cause. A window can only miss a stray message, never report one
/// that was not delivered; a caller whose guard is ordered may use a marker instead.
pub fn assert_no_more_messages(rx: &Receiver<Seen>, why: &str) {
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = rx.recv_deadline(grace) {
        assert!(!matches!(seen, Seen::Message(..)), "unexpected message: {why}");
    }
}

/// Counts the events matching `pred` until `expected` were seen (each within [`WAIT`]),
/// then for a short grace period more, so one too many shows as a count above
/// `expected`. Other events are skipped. Returns the count (below `expected` on timeout).
///
/// The grace period is a window, not a marker: the events counted (opens, resets) come
/// from reconnects and ends that may happen after anything sent now, and the dispatch
/// queue puts an event first only among those already queued, so a marker message
/// proves no later one absent. A window can only miss an extra event.
pub fn count_events(rx: &Receiver<Seen>, expected: usize, pred: impl Fn(&Seen) -> bool) -> usize {
    let mut n = 0;
    while n < expected {
        match rx.recv_timeout(WAIT) {
            Ok(seen) if pred(&seen) => n += 1,
            Ok(_) => {}
            Err(_) => return n,
        }
    }
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = rx.recv_deadline(grace) {
        if pred(&seen) {
            n += 1;
        }
    }
    n
}

/// Waits (at most [`WAIT`]) for an event `pred` accepts, passing over the others;
/// false if none came.
pub fn wait_for_event(rx: &Receiver<Seen>, pred: impl Fn(&Seen) -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while let Ok(seen) = rx.recv_deadline(deadline) {
        if pred(&seen) {
            return true;
        }
    }
    false
}

/// Waits for `ms_handle_reset` and asserts it is for `conn`; panics on timeout.
pub fn wait_for_reset(rx: &Receiver<Seen>, conn: &Connection) {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Reset(c)) => {
                assert_eq!(&c, conn, "reset for another connection");
                return;
            }
            Ok(_) => continue,
            Err(e) => panic!("no ms_handle_reset within {WAIT:?}: {e}"),
        }
    }
}

/// A test message: type `msg_type`, tid `tid`, front = tid as 8 LE bytes, data `data`.
pub fn test_message(msg_type: u16, tid: u64, data: Bytes) -> Message {
    let mut m = Message::new(msg_type, Bytes::copy_from_slice(&tid.to_le_bytes()));
    m.set_tid(tid);
    m.set_data(data);
    m
}

/// Each side streams `n` messages (tids 1..=n) on its own handle while the other does
/// the same, then checks it received the other's stream on that same handle (one
/// session, however a connection race was resolved), every message once and in order.
pub fn stream_both_ways_on_own_handles(
    (a_to_b, a_rx): (&Connection, &Receiver<Seen>),
    (b_to_a, b_rx): (&Connection, &Receiver<Seen>),
    msg_type: u16,
    n: u64,
) {
    std::thread::scope(|s| {
        for conn in [a_to_b, b_to_a] {
            s.spawn(move || {
                for tid in 1..=n {
                    conn.send_message(test_message(msg_type, tid, Bytes::new())).expect("send");
                }
            });
        }
    });
    for (rx, own, who) in [(b_rx, b_to_a, "b"), (a_rx, a_to_b, "a")] {
        for tid in 1..=n {
            let (c, m) = next_message(rx);
            assert_eq!(m.tid(), tid, "{who}: in order, no loss, no duplicate");
            assert_eq!(&c, own, "{who}: received on its own handle: one session");
        }
        assert_no_more_messages(rx, "a duplicate arrived");
    }
}

/// Waits until `done` holds, for state no callback or channel reports (a counter, a
/// connection's state); panics with `why()` after [`WAIT`]. Yields between looks.
#[track_caller]
pub fn wait_until(mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::yield_now();
    }
}

/// Cuts `conn`'s socket ([`Connection::inject_socket_failure`]) and returns once its
/// driver has taken the cut, so that what is sent from then on is framed after it.
///
/// The cut is a command, which the driver takes between read phases, while a message
/// sent after it can be taken in the middle of one and leave first: under load a whole
/// batch sent "after" the cut went out and was acknowledged before it, both sessions
/// were idle when it landed, peers that may park (lossless_peer, stateful_server) went
/// to standby, and a test waiting for the reconnect saw none. Call it on an open
/// session: a cut asked for while none is open waits for the next open, which this does
/// not wait for.
#[track_caller]
pub fn cut_before_the_rest(conn: &Connection) {
    inject_cut(conn).wait();
}

/// Asks for a cut of `conn`'s socket without waiting for it: [`PendingCut::wait`] later
/// returns once the driver has taken it. For a test that wants the cut to meet messages
/// in flight (sent between this call and the wait) yet needs a message framed after the
/// cut (sent after the wait) to wake sessions the cut may have parked.
pub fn inject_cut(conn: &Connection) -> PendingCut {
    conn.inject_socket_failure();
    let (tx, rx) = crossbeam_channel::bounded(1);
    // Commands are taken in order: this closure runs at the end of the pump that took
    // the cut, or a later one.
    conn.inject_before_settle(move || {
        let _ = tx.send(());
    });
    PendingCut { conn: conn.clone(), taken: rx }
}

/// A cut asked for with [`inject_cut`].
#[must_use = "wait for the cut to land"]
pub struct PendingCut {
    conn: Connection,
    taken: Receiver<()>,
}

impl PendingCut {
    /// Returns once the driver has taken the cut; panics after [`WAIT`].
    #[track_caller]
    pub fn wait(self) {
        // Dropped unrun only if the connection closed first: then there is nothing to cut.
        if let Err(crossbeam_channel::RecvTimeoutError::Timeout) = self.taken.recv_timeout(WAIT) {
            panic!("the driver of {:?} never took the injected cut", self.conn);
        }
    }
}

/// Keeps every worker of `m` busy until the returned sender is dropped (or [`WAIT`]
/// passes): what is written to it meanwhile waits in the socket, to be read in a few
/// large reads however the machine's load would have batched it.
pub fn hold_workers(m: &Messenger) -> crossbeam_channel::Sender<()> {
    let (go, wait) = crossbeam_channel::bounded::<()>(0);
    for worker in m.pool().handles() {
        let wait = wait.clone();
        worker
            .dispatch_event_external(move |_| {
                let _ = wait.recv_timeout(WAIT);
            })
            .expect("post");
    }
    go
}

/// Waits until `m` has exactly `n` live connections (e.g. the losing attempt of a race
/// has closed); panics with its connection dump after [`WAIT`].
#[track_caller]
pub fn wait_for_connection_count(m: &Messenger, n: usize, who: &str) {
    wait_until(|| m.connection_count() == n, || format!("{who}: {}", m.dump_connections()));
}

/// `addr` (an announced address) as the address to dial it over `proto`: for msgr2 the
/// `v2:` address on the same port (our listener serves both protocols there).
pub fn addr_for(proto: ProtocolVersion, addr: EntityAddr) -> EntityAddr {
    let ty = match proto {
        ProtocolVersion::V1 => AddrType::LEGACY,
        ProtocolVersion::V2 => AddrType::MSGR2,
    };
    EntityAddr { ty, ..addr }
}

/// Turns on `RUST_LOG`-driven logging for a test binary (idempotent).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .is_test(true)
        .try_init();
}

/// Calls `m.wait()` on a thread of its own (one of no messenger): the receiver hears
/// when it returned; join the handle after.
pub fn wait_on_a_thread(
    m: &Arc<Messenger>,
) -> (crossbeam_channel::Receiver<()>, std::thread::JoinHandle<()>) {
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let m = Arc::clone(m);
    let waiter = std::thread::spawn(move || {
        m.wait();
        let _ = done_tx.send(());
    });
    (done, waiter)
}

/// How long a bind of a [`test_config`] waits before trying again
/// ([`MessengerConfig::bind_retry_delay`]): a bind expected to fail (an address this host
/// lacks) fails within milliseconds instead of Ceph's 2 × 5 s.
pub const TEST_BIND_RETRY_DELAY: Duration = Duration::from_millis(5);

/// A small config for tests: 2 workers unless said otherwise, and binds retried after
/// [`TEST_BIND_RETRY_DELAY`] (no port range: port 0 stays the kernel's ephemeral port,
/// never one of the 6800–7300 a real Ceph daemon of the interop tests binds).
pub fn test_config(workers: usize) -> MessengerConfig {
    init_logging();
    MessengerConfig {
        workers,
        bind_retry_delay: TEST_BIND_RETRY_DELAY,
        ..MessengerConfig::default()
    }
}

/// A one-worker test config whose every connection mode (client, cluster, service) is
/// `mode` (Ceph's defaults if none).
pub fn in_mode(mode: Option<ConMode>) -> MessengerConfig {
    MessengerConfig {
        client_mode: mode.map(|m| ConModes(vec![m])),
        cluster_mode: mode.map(|m| ConModes(vec![m])),
        service_mode: mode.map(|m| ConModes(vec![m])),
        ..test_config(1)
    }
}

/// A 2-worker test config ([`test_config`]) whose reconnect backoff starts at `initial`
/// and doubles up to `max` (also the wait after a msgr WAIT reply).
pub fn backoff_config(initial: Duration, max: Duration) -> MessengerConfig {
    MessengerConfig { initial_backoff: initial, max_backoff: max, ..test_config(2) }
}

/// Far beyond [`WAIT`]: the handshake and payload timeouts of a [`patient_config`].
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A test config ([`test_config`]) whose handshake and payload timeouts are
/// [`PATIENCE`], far beyond [`WAIT`]: a socket a server with it closes within `WAIT` was
/// closed for what its peer sent, not because one of those timeouts ran out.
pub fn patient_config(workers: usize) -> MessengerConfig {
    MessengerConfig {
        connection_ready_timeout: PATIENCE,
        payload_timeout: PATIENCE,
        ..test_config(workers)
    }
}

/// A started server messenger on 127.0.0.1 port 0 with `policy` and a recorder.
pub fn server(
    ty: EntityType,
    nonce: u32,
    policy: Policy,
    echo: bool,
) -> (Messenger, SocketAddr, Receiver<Seen>) {
    server_on(ty, nonce, policy, echo, SocketAddr::from(([127, 0, 0, 1], 0)), test_config(2))
}

/// Like [`server`], on a given address with a given config.
pub fn server_on(
    ty: EntityType,
    nonce: u32,
    policy: Policy,
    echo: bool,
    addr: SocketAddr,
    config: MessengerConfig,
) -> (Messenger, SocketAddr, Receiver<Seen>) {
    let m = Messenger::new(EntityName::new(ty, 0), nonce, config).expect("messenger");
    m.set_default_policy(policy);
    let bound = m.bind(addr).expect("bind");
    m.start().expect("start");
    let (rec, rx) = Recorder::new(echo);
    m.add_dispatcher_head(rec).expect("dispatcher");
    (m, bound, rx)
}

/// A started client messenger (no listener) with `policy` and a recorder.
pub fn client(ty: EntityType, nonce: u32, policy: Policy) -> (Messenger, Receiver<Seen>) {
    client_with(ty, nonce, policy, test_config(2))
}

/// Like [`client`], with a given config.
pub fn client_with(
    ty: EntityType,
    nonce: u32,
    policy: Policy,
    config: MessengerConfig,
) -> (Messenger, Receiver<Seen>) {
    let m = Messenger::new(EntityName::new(ty, nonce as i64), nonce, config).expect("messenger");
    start_recorded(m, policy)
}

/// Starts client messenger `m` (no listener) with `policy` as its default and a
/// recorder that echoes nothing at the head of its dispatchers.
pub fn start_recorded(m: Messenger, policy: Policy) -> (Messenger, Receiver<Seen>) {
    m.set_default_policy(policy);
    m.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    m.add_dispatcher_head(rec).expect("dispatcher");
    (m, rx)
}

/// Whether the admin socket closed `s` (EOF or reset) within `within`.
pub fn closed_by_server(s: &mut std::os::unix::net::UnixStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 1];
    match std::io::Read::read(s, &mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        }
    }
}

/// `len` consecutive ports of 127.0.0.1, each bound a moment ago and released, below
/// 32768 (the kernel's ephemeral ports start there unless the host says otherwise, so no
/// port-0 bind or dial of another test takes one meanwhile) and never handed out twice
/// in this process. The start depends on the process id, so two runs on one host (other
/// worktrees) look in different places first. For tests of port ranges
/// (`bind_port_range`); every other test binds port 0.
pub fn free_port_range(len: u16) -> std::ops::RangeInclusive<u16> {
    static NEXT: parking_lot::Mutex<u16> = parking_lot::Mutex::new(0);
    let mut next = NEXT.lock();
    if *next == 0 {
        *next = 20_000 + (std::process::id() % 120) as u16 * 100;
    }
    let mut start = *next;
    while start + len < 32_768 {
        let held: Result<Vec<std::net::TcpListener>, u16> = (start..start + len)
            .map(|p| {
                std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], p))).map_err(|_| p)
            })
            .collect();
        match held {
            Ok(_released) => {
                *next = start + len;
                return start..=start + len - 1;
            }
            Err(taken) => start = taken + 1,
        }
    }
    panic!("no {len} free consecutive ports below 32768 on 127.0.0.1");
}

/// A fast dispatcher whose `ms_handle_fast_connect` of the loopback connection, once
/// armed ([`HeldLoopbackConnect::arm`]), says so on its `entered` channel, waits for its
/// `release`, then shuts its messenger down if given one
/// ([`HeldLoopbackConnect::then_shut_down`]), and says it returned: what a test needs to
/// hold that hook while it checks what a shutdown does meanwhile.
pub struct HeldLoopbackConnect {
    armed: std::sync::atomic::AtomicBool,
    entered: Sender<()>,
    release: Receiver<()>,
    shut_down: std::sync::OnceLock<std::sync::Weak<Messenger>>,
    done: std::sync::atomic::AtomicBool,
    returned: Sender<()>,
}

/// The channels of a [`HeldLoopbackConnect`].
pub struct HeldHook {
    /// The hook (not armed).
    pub hook: Arc<HeldLoopbackConnect>,
    /// Receives when the armed hook entered.
    pub entered: Receiver<()>,
    /// Lets the held hook go on.
    pub release: Sender<()>,
    /// Receives when the hook returned (after its shutdown, if it makes one).
    pub returned: Receiver<()>,
}

/// A [`HeldLoopbackConnect`], not armed, and its channels.
pub fn held_loopback_connect() -> HeldHook {
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded(1);
    let (returned_tx, returned) = crossbeam_channel::bounded(1);
    let hook = Arc::new(HeldLoopbackConnect {
        armed: std::sync::atomic::AtomicBool::new(false),
        entered: entered_tx,
        release: release_rx,
        shut_down: std::sync::OnceLock::new(),
        done: std::sync::atomic::AtomicBool::new(false),
        returned: returned_tx,
    });
    HeldHook { hook, entered, release, returned }
}

impl HeldLoopbackConnect {
    /// Holds the next `ms_handle_fast_connect` of the loopback connection (armed after
    /// the one a dispatcher hears as it is added, for the call a test means).
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Once released, the hook shuts `m` down before it returns.
    pub fn then_shut_down(&self, m: &Arc<Messenger>) {
        let _ = self.shut_down.set(Arc::downgrade(m));
    }

    /// Whether the held hook returned.
    pub fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Dispatcher<Connection> for HeldLoopbackConnect {
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        use std::sync::atomic::Ordering;
        if conn.is_loopback() && self.armed.swap(false, Ordering::SeqCst) {
            let _ = self.entered.send(());
            let _ = self.release.recv_timeout(WAIT);
            if let Some(m) = self.shut_down.get().and_then(std::sync::Weak::upgrade) {
                m.shutdown();
            }
            self.done.store(true, Ordering::SeqCst);
            let _ = self.returned.send(());
        }
    }
}

/// Once `held`'s hook (armed, its `ms_handle_fast_connect` under way on another
/// thread) entered, calls `m.wait()` and `m.shutdown()`, each on a thread of its own:
/// neither may return while the hook is held; both must once it is released, and not
/// before it returned.
pub fn shutdown_waits_for_the_held_hook(m: &Arc<Messenger>, held: &HeldHook) {
    held.entered.recv_timeout(WAIT).expect("the announcement reaches the fast dispatcher");
    // A `wait` on a thread of its own, and the shutdown: each says whether the hook had
    // returned when it did.
    let (returned_tx, returned) = crossbeam_channel::bounded(2);
    let [waiter, stopper] = [false, true].map(|shut| {
        let (m, hook, returned_tx) = (m.clone(), held.hook.clone(), returned_tx.clone());
        std::thread::spawn(move || {
            if shut {
                m.shutdown();
            } else {
                m.wait();
            }
            let who = if shut { "shutdown" } else { "wait" };
            let _ = returned_tx.send((who, hook.done()));
        })
    });
    // The hook is held: a shutdown that does not wait for it returns meanwhile (at once
    // on loopback), one that waits does not return until it is released. A loaded
    // machine can only make the bug go unseen here, never fail a correct shutdown.
    if let Ok((who, _)) = returned.recv_timeout(Duration::from_secs(1)) {
        panic!("{who} returned while ms_handle_fast_connect was running");
    }
    held.release.send(()).expect("release the hook");
    for _ in 0..2 {
        let (who, done) = returned.recv_timeout(WAIT).expect("returned once the hook did");
        assert!(done, "{who} returned before the hook it waited for");
    }
    stopper.join().expect("shutdown thread");
    waiter.join().expect("wait thread");
}
