//! Messenger configuration, with Ceph's option names and defaults, and its validation.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use protocol::auth::{AuthProvider, ConModes, ConnKind, WithConModes};
use protocol::types::EntityType as PeerType;

#[cfg(feature = "fault-injection")]
use protocol::types::EntityType;

/// The longest duration any timeout, interval or backoff may be set to. Far beyond any
/// sensible value, and far below what overflows `Instant` arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest duration an option takes: a backoff, keepalive interval or timeout below
/// it makes a worker spin (re-armed every loop iteration) or fault every connection.
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The most worker threads a messenger may create.
pub const MAX_WORKERS: usize = 1024;

/// The largest read buffer a connection may use.
pub const MAX_READ_BUFFER: usize = 64 << 20;

/// Why [`MessengerConfig::validate`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending option (the field name).
    pub option: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid messenger option {}: {}", self.option, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for std::io::Error {
    fn from(e: ConfigError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// The authentication of a messenger's connections ([`MessengerConfig::auth`]): one
/// provider shared by all of them, e.g. `protocol::auth::cephx::CephxProvider`.
#[derive(Clone)]
pub struct AuthProviderHandle(pub Arc<dyn AuthProvider>);

impl fmt::Debug for AuthProviderHandle {
    /// Providers hold keys: nothing of them is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthProvider")
    }
}

/// Options of one messenger. A field that is one of Ceph's `ms_*` options carries the
/// option's name as a doc alias (its field name is the option's without the prefix, but
/// for `workers`, `ms_async_op_threads`) and defaults to Ceph's (Pacific) value, but for
/// the `ms_*_mode` fields, whose `None` leaves the modes to the auth provider. The other
/// fields are ours.
#[derive(Clone, Debug)]
pub struct MessengerConfig {
    /// `ms_async_op_threads`: worker threads to create when the messenger is not given a
    /// shared pool.
    #[doc(alias = "ms_async_op_threads")]
    pub workers: usize,
    /// `ms_tcp_nodelay`: disable Nagle on every socket (messages are small and latency-bound).
    #[doc(alias = "ms_tcp_nodelay")]
    pub tcp_nodelay: bool,
    /// `ms_tcp_rcvbuf` (0 = kernel default).
    #[doc(alias = "ms_tcp_rcvbuf")]
    pub tcp_rcvbuf: usize,
    /// Send buffer size (0 = kernel default). (Ours: Ceph sets only the receive buffer.)
    pub tcp_sndbuf: usize,
    /// TCP congestion control of every socket (`TCP_CONGESTION`, Linux), e.g. `"cubic"`;
    /// `None` keeps the host's default (`net.ipv4.tcp_congestion_control`). Ours, not
    /// Ceph's. BBR, the default of some hosts, paces every segment by its estimate of the
    /// path's bandwidth: between daemons on one host (loopback, or the host's own
    /// address) there is no path to estimate, and on this project's machine kind the
    /// pacing halved the rate of 1 MiB messages and made 4 KiB streams run in two
    /// states (README, "Performance"). [`MessengerConfig::validate`] refuses a name the
    /// kernel does not let this process use.
    pub tcp_congestion: Option<String>,
    /// The priority of every socket's packets (`SO_PRIORITY`, Linux), dialled and
    /// accepted alike, with the DSCP class CS6 in their IP header (`IP_TOS`, or
    /// `IPV6_TCLASS`), as Ceph's `Messenger::set_socket_priority` does: an OSD's heartbeat
    /// messengers take `SOCKET_PRIORITY_MIN_DELAY` (6) with
    /// `osd_heartbeat_use_min_delay_socket`, so a link's queueing discipline lets its
    /// pings pass the bulk traffic. `None` (the default) leaves both as the kernel sets
    /// them. Above 6 the kernel asks for `CAP_NET_ADMIN`; [`MessengerConfig::validate`]
    /// refuses a priority the kernel does not let this process set (Ceph logs the
    /// failure on every socket and goes on).
    #[doc(alias = "set_socket_priority")]
    #[doc(alias = "SO_PRIORITY")]
    pub socket_priority: Option<u32>,
    /// `ms_initial_backoff`: first reconnect delay of a lossless connection. Also the
    /// least time between a session's open and its redial: one cut sooner waits out the
    /// rest (Ceph redials a lost session at once, so a peer that opens every session and
    /// cuts it was redialled thousands of times a second); one open longer redials at once.
    #[doc(alias = "ms_initial_backoff")]
    pub initial_backoff: Duration,
    /// `ms_max_backoff`: reconnect delay cap (also the WAIT backoff).
    #[doc(alias = "ms_max_backoff")]
    pub max_backoff: Duration,
    /// `ms_connection_ready_timeout`: the whole handshake must complete within this time,
    /// counted from accept (or from the start of the dial); progress does not extend it,
    /// so a peer trickling its handshake byte by byte is cut off too.
    #[doc(alias = "ms_connection_ready_timeout")]
    pub connection_ready_timeout: Duration,
    /// While a message arrives, its payload must progress by at least `read_buffer`
    /// bytes (or to its end) within this time, or the connection faults and releases
    /// what the message held; while others wait on the budget, the oldest message in
    /// progress must also bring a sixteenth of what the messages in progress hold (ours;
    /// see the crate docs, "Bounds").
    pub payload_timeout: Duration,
    /// Bytes waiting to be sent that the socket takes none of for this long fault the
    /// connection: the peer stopped reading (ours; see the crate docs, "Bounds").
    pub write_timeout: Duration,
    /// How long an admin-socket client may take to send its command, and then go
    /// without reading any of its answer (the socket taking none of it): past it, the
    /// client is closed. A client that keeps reading, however slowly, gets its whole
    /// answer. (Ours: Ceph's admin socket has no deadline and serves one client at a
    /// time.) Defaults to [`crate::ADMIN_CLIENT_DEADLINE`].
    pub admin_client_deadline: Duration,
    /// `ms_connection_idle_timeout`: an open connection that receives nothing for this
    /// long (not counted while it waits for receive budget) faults, as Ceph's does: a
    /// lossy session is reset (`ms_handle_reset`), a lossless one reconnects or waits in
    /// standby, as its policy says.
    #[doc(alias = "ms_connection_idle_timeout")]
    pub connection_idle_timeout: Duration,
    /// Interval of keepalives sent on open connections (`None` = only on request).
    pub keepalive_interval: Option<Duration>,
    /// `ms_dispatch_throttle_bytes`: bytes of received messages waiting for or inside dispatch.
    #[doc(alias = "ms_dispatch_throttle_bytes")]
    pub dispatch_throttle_bytes: u64,
    /// `ms_crc_header`: compute and check header, front and middle crcs.
    #[doc(alias = "ms_crc_header")]
    pub crc_header: bool,
    /// `ms_crc_data`: compute and check the data crc.
    #[doc(alias = "ms_crc_data")]
    pub crc_data: bool,
    /// Largest front a peer may send (checked before allocating; at least 1).
    pub max_front: u32,
    /// Largest middle a peer may send (at least 1: Ceph has no such limit to mirror, and
    /// 0 is refused rather than read as "none").
    pub max_middle: u32,
    /// Largest data segment a peer may send (Ceph's `osd_max_write_size`-like bound; at
    /// least 1, as `max_middle`).
    pub max_data: u32,
    /// Bytes read per socket readiness event before yielding to other connections.
    pub read_budget: usize,
    /// Size of the reusable read buffer of a connection while it is active.
    pub read_buffer: usize,
    /// The most messages of one read a connection hands on together: every batch, those
    /// for `ms_dispatch` go to the dispatch thread, so it starts on them while the rest
    /// of a burst is parsed. What fast dispatch sent (replies) is written at the end of
    /// the read, or once 256 KiB of it waits; with [`early_batches`](Self::early_batches)
    /// also batch by batch. Acks alone wait for the end of the read. (Ours; Ceph hands on
    /// and writes after every message.)
    pub dispatch_batch: usize,
    /// Whether what fast dispatch sent is also written in the middle of a read, so a
    /// peer on another CPU starts on the first replies while the rest of a burst is
    /// parsed: at every batch of `dispatch_batch` messages, or fewer once it received 16
    /// KiB (after a quarter of the previous read's burst, at least 4, or 8 while the
    /// worker spent most of its last ~2 ms running, 16 if its messages are
    /// [quick](Self::quick_message)), or once fast
    /// dispatch sent 16 KiB as the send bounds count it (~26 small replies; 64 KiB on a
    /// busy worker with quick messages; 32 KiB sent by other threads; looked at every
    /// quarter of `dispatch_batch`, written once half
    /// the previous burst was delivered). Off, the replies go at the end of the read, or every 256 KiB sent, as
    /// a single-threaded codec's do.
    ///
    /// It keeps both ends of a connection busy, and a peer on another host (which runs
    /// beside us whatever we do) gets its replies sooner, as from Ceph, which writes
    /// after every message. Each extra write costs a syscall, the peer's receive path and
    /// maybe its wake-up: on one host of four we measured (wake-ups of ~5 µs, CPUs that
    /// the bench saturated) 4 KiB requests at 32 and 128 in flight ran as fast for ~19 %
    /// less CPU per round trip without; on the two where a wake-up took 1.3–1.5 µs they
    /// ran 27–49 % more round trips with, for about the same CPU, and on the host where
    /// it took tens of µs they were what kept both ends busy. The benchmark's `late`
    /// peer runs with it off beside the default. On by default. (Ours.)
    pub early_batches: bool,
    /// With [`early_batches`](Self::early_batches), on a worker that spent most of its
    /// last ~2 ms running: how long a message may take to handle (parsed, dispatched,
    /// its reply built) for that connection's early batches to take at least 16
    /// messages instead of 8. Quick messages make batches whose writes cost more than
    /// they shorten the peer's wait; slow ones (msgr2's secure mode, large messages)
    /// keep batches of 8, since the peer would wait twice as long for the first reply.
    /// Measured on each batch after a read's first (from the write ending the one
    /// before). 1 µs by default: on the benchmark's host 4 KiB requests took 0.2–0.9 µs
    /// each, 1.7–2.6 µs in secure mode. Zero: always 8. (Ours.)
    pub quick_message: Duration,
    /// With [`early_batches`](Self::early_batches): whether a connection whose peer runs
    /// on this host, on the very CPU the connection's worker runs on, skips them. Seen by
    /// `SO_INCOMING_CPU`, looked at in one read phase of every 8 (a syscall each); two
    /// looks in a row must see it, since a packet our own sending provoked shows our CPU
    /// too. Such a peer cannot run before the worker sleeps, so a write in the middle of
    /// a read is a syscall for nothing, and the read's replies go at its end (or every
    /// 256 KiB sent). On by default; off, every connection makes early batches. (Ours.)
    pub colocated_peer_batching: bool,
    /// Bound on the sender side, per connection: what messages queued on one
    /// connection cost until they leave it (written, or acknowledged on a lossless
    /// session), counted in framed bytes plus a per-message overhead
    /// (`Message::send_cost`). `send_message` beyond it fails with `QueueFull`, except
    /// for a message larger than the bound sent while the connection holds nothing,
    /// which is admitted so that it can be sent at all.
    pub max_queued_bytes: u64,
    /// The same bound over all connections of the messenger together (with the same
    /// exception: a message larger than it is admitted while the messenger holds
    /// nothing).
    pub max_total_queued_bytes: u64,
    /// What sessions waiting in standby may hold together: a server's lossless sessions
    /// (`Policy::stateful_server`, `lossless_peer`) whose peer went away keep what was
    /// queued for it until it reconnects, as Ceph's do. Beyond this, the ones holding the
    /// most are reset (`ms_handle_reset`; the peer, if it comes back, finds its session
    /// reset), so
    /// that peers which flood without reading and leave cannot fill the total bound and
    /// have every other connection's sends refused. At most a quarter of
    /// `max_total_queued_bytes` is used, whatever this says. (Ours: Ceph's queues are
    /// unbounded.)
    pub max_standby_queued_bytes: u64,
    /// How many such sessions may wait in standby: beyond it, those holding nothing are
    /// reset first, then the oldest (the same as above). A standby session keeps no
    /// socket, so nothing else bounds how many a peer leaves behind by handshaking under
    /// new names and going away; each costs its driver's memory (about what an idle
    /// connection does). (Ours.)
    pub max_standby_sessions: usize,
    /// Connection events (`ms_handle_accept`, `ms_handle_reset`…) waiting for the dispatch
    /// thread at most, as far as the listener is concerned: at this many it stops
    /// accepting until they drain below it, so that a peer connecting and leaving over
    /// and over while the dispatch thread is held up cannot queue events (each keeping
    /// its connection's handle alive) without bound. Our own connections' events are
    /// not refused (see the crate docs, "Connection events", for what a server we dial
    /// can make them cost). (Ours: Ceph's event queue is unbounded.)
    pub max_queued_events: usize,
    /// Authentication of every connection (msgr v1 authorizers and message signing,
    /// msgr2's AUTH frames). `None`: auth none as our entity name. Set it before the
    /// messenger starts; [`MessengerConfig::with_auth_provider`] wraps an `Arc`.
    pub auth: Option<AuthProviderHandle>,
    // ---- msgr2 connection modes (Ceph's `ms_*_mode`); `None`: the auth provider's own
    // lists (a cephx provider's AuthConfig, auth none: crc). Which applies to a
    // connection follows Ceph's AuthRegistry (`protocol::auth::ConnKind`).
    /// `ms_mon_client_mode`: modes a client offers monitors.
    #[doc(alias = "ms_mon_client_mode")]
    pub mon_client_mode: Option<ConModes>,
    /// `ms_mon_cluster_mode`: modes between monitors.
    #[doc(alias = "ms_mon_cluster_mode")]
    pub mon_cluster_mode: Option<ConModes>,
    /// `ms_mon_service_mode`: modes a monitor allows anything but monitors.
    #[doc(alias = "ms_mon_service_mode")]
    pub mon_service_mode: Option<ConModes>,
    /// `ms_client_mode`: modes a client offers other daemons.
    #[doc(alias = "ms_client_mode")]
    pub client_mode: Option<ConModes>,
    /// `ms_cluster_mode`: modes between non-monitor daemons.
    #[doc(alias = "ms_cluster_mode")]
    pub cluster_mode: Option<ConModes>,
    /// `ms_service_mode`: modes a non-monitor daemon allows clients.
    #[doc(alias = "ms_service_mode")]
    pub service_mode: Option<ConModes>,
    // ---- end of the msgr2 connection modes
    // ----- Binding: which protocols the listener serves -----
    /// `ms_bind_msgr1`: the listener serves msgr v1 and the messenger announces a v1
    /// (`LEGACY`) address. Like Ceph's, only the listening side is governed: dialling
    /// follows the address dialled. Ceph binds one listening socket per protocol (v2 on
    /// 3300 and v1 on 6789 for a monitor, a port each from the range for a daemon);
    /// we bind one socket that serves whichever of the two are on, so both announced
    /// addresses carry the same port (see [`crate::Messenger::my_addrs`]).
    #[doc(alias = "ms_bind_msgr1")]
    pub bind_msgr1: bool,
    /// `ms_bind_msgr2`: the listener serves msgr2 and the messenger announces a v2
    /// address (first, Ceph's order). With only one of the two on, the listener speaks
    /// that protocol alone in Ceph's order (its banner first); a peer speaking the
    /// other one fails the banner exchange and is closed.
    #[doc(alias = "ms_bind_msgr2")]
    pub bind_msgr2: bool,
    /// `ms_bind_port_min` and `ms_bind_port_max`: the ports a bind to port 0 tries, in
    /// turn from the lowest, binding the first free one ([`crate::Messenger::bind`]);
    /// with none free the attempt fails with `AddrInUse` (and is retried, see
    /// [`bind_retry_count`](Self::bind_retry_count)). A bind to any other port binds that
    /// port. The one listener serves v1 and v2 (see [`bind_msgr1`](Self::bind_msgr1)),
    /// so both announced addresses carry the one port taken from the range, where Ceph
    /// takes two. Several messengers of a process (an OSD's public, cluster and
    /// heartbeat ones) each get the next free port, since the earlier ones hold theirs.
    /// [`crate::Messenger::rebind`] walks it too, skipping its `avoid_ports` and the old
    /// port (Ceph's `avoid_ports`); without a range a rebind takes the kernel's port,
    /// asking again (a bounded number of times) while it is one to avoid.
    ///
    /// `None` by default, unlike Ceph (`6800..=7300`): port 0 then binds an ephemeral
    /// port of the kernel's choosing, as it always did here, so tests and clients
    /// binding port 0 never take a port in 6800–7300 that a Ceph daemon on the host
    /// (the interop tests') expects to get. A daemon set it as Ceph's daemons have it:
    /// `Some(6800..=7300)`. [`MessengerConfig::validate`] refuses a range starting at 0
    /// or ending below its start.
    #[doc(alias = "ms_bind_port_min")]
    #[doc(alias = "ms_bind_port_max")]
    pub bind_port_range: Option<RangeInclusive<u16>>,
    /// `ms_bind_retry_count`: how many times a bind is attempted in all (as Ceph counts
    /// it, despite the name: 3, Ceph's default, is the first attempt and two retries;
    /// 1, no retry; validation refuses 0), [`bind_retry_delay`](Self::bind_retry_delay)
    /// apart. Every error is retried, as Ceph does: a daemon restarting while its old
    /// socket lingers, or starting before its address is configured, binds once it is
    /// free. Each attempt walks the whole [`bind_port_range`](Self::bind_port_range).
    /// The waits sleep the thread calling bind with no lock held, never a worker's: on a
    /// worker thread there is one attempt only.
    #[doc(alias = "ms_bind_retry_count")]
    pub bind_retry_count: u32,
    /// `ms_bind_retry_delay`: how long a failed bind waits before the next attempt (Ceph's
    /// 5 s by default; a test config wants a few milliseconds, so that a bind expected to
    /// fail fails at once). A messenger started or shut down during the wait gives the
    /// bind up when it ends.
    #[doc(alias = "ms_bind_retry_delay")]
    pub bind_retry_delay: Duration,
    /// `ms_inject_socket_failures` (test seam, feature `fault-injection`): each socket
    /// read, write, dial and accept fails — the socket is shut down, as a network
    /// failure would — with probability 1/N; 0 = never.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_socket_failures")]
    pub inject_socket_failures: u32,
    /// `ms_inject_internal_delays` (test seam): the accept decision, the reply of a new
    /// session once the decision registered it, and the adoption of a replaced session's
    /// new socket wait this long (on a timer of the worker, never a sleep), to widen the
    /// races around them; zero = no delay.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_internal_delays")]
    pub inject_internal_delays: Duration,
    /// `ms_inject_delay_type` (test seam): messages received from peers of these types
    /// go through a delay queue (Ceph's `DelayedDelivery`), in order per connection.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_delay_type")]
    pub inject_delay_type: Vec<EntityType>,
    /// `ms_inject_delay_max` (test seam): the longest delay of one received message.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_delay_max")]
    pub inject_delay_max: Duration,
    /// `ms_inject_delay_probability` (test seam): the chance, from 0 to 1, that a
    /// message from a peer of `inject_delay_type` is delayed (by a random part of
    /// `inject_delay_max`); the messages behind it wait behind it.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_delay_probability")]
    pub inject_delay_probability: f64,
    /// `ms_inject_network_congestion` (test seam, Ceph PR 44289): a socket write
    /// reports "would block" N−1 times in N without writing; 0 = never.
    #[cfg(feature = "fault-injection")]
    #[doc(alias = "ms_inject_network_congestion")]
    pub inject_network_congestion: u32,
    /// Seeds the injection decisions (each connection draws from its own generator,
    /// seeded from this, the messenger's nonce and the connection's id), so a run with
    /// the same seed injects alike.
    #[cfg(feature = "fault-injection")]
    pub inject_seed: u64,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            workers: 3,
            tcp_nodelay: true,
            tcp_rcvbuf: 0,
            tcp_sndbuf: 0,
            tcp_congestion: None,
            socket_priority: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            connection_ready_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(900),
            payload_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            admin_client_deadline: crate::admin::ADMIN_CLIENT_DEADLINE,
            keepalive_interval: None,
            dispatch_throttle_bytes: 100 << 20,
            crc_header: true,
            crc_data: true,
            max_front: 64 << 20,
            max_middle: 64 << 20,
            max_data: 128 << 20,
            read_budget: 1 << 20,
            read_buffer: 64 << 10,
            dispatch_batch: 64,
            early_batches: true,
            quick_message: Duration::from_micros(1),
            colocated_peer_batching: true,
            max_queued_bytes: 256 << 20,
            max_total_queued_bytes: 1 << 30,
            max_standby_queued_bytes: 256 << 20,
            max_standby_sessions: 16 << 10,
            max_queued_events: 16 << 10,
            auth: None,
            mon_client_mode: None,
            mon_cluster_mode: None,
            mon_service_mode: None,
            client_mode: None,
            cluster_mode: None,
            service_mode: None,
            bind_msgr1: true,
            bind_msgr2: true,
            bind_port_range: None,
            bind_retry_count: 3,
            bind_retry_delay: Duration::from_secs(5),
            #[cfg(feature = "fault-injection")]
            inject_socket_failures: 0,
            #[cfg(feature = "fault-injection")]
            inject_internal_delays: Duration::ZERO,
            #[cfg(feature = "fault-injection")]
            inject_delay_type: Vec::new(),
            #[cfg(feature = "fault-injection")]
            inject_delay_max: Duration::from_secs(1),
            #[cfg(feature = "fault-injection")]
            inject_delay_probability: 0.0,
            #[cfg(feature = "fault-injection")]
            inject_network_congestion: 0,
            #[cfg(feature = "fault-injection")]
            inject_seed: 0,
        }
    }
}

impl MessengerConfig {
    /// The same with `provider` authenticating every connection (e.g. cephx).
    pub fn with_auth_provider(mut self, provider: Arc<dyn AuthProvider>) -> Self {
        self.auth = Some(AuthProviderHandle(provider));
        self
    }

    /// `provider` for an entity of type `me` with the `ms_*_mode` options set here
    /// replacing its mode lists (unchanged when none is set).
    pub fn apply_con_modes(
        &self,
        provider: Arc<dyn AuthProvider>,
        me: PeerType,
    ) -> Arc<dyn AuthProvider> {
        let set = [
            (ConnKind::ClientToMon, &self.mon_client_mode),
            (ConnKind::MonCluster, &self.mon_cluster_mode),
            (ConnKind::MonService, &self.mon_service_mode),
            (ConnKind::Client, &self.client_mode),
            (ConnKind::Cluster, &self.cluster_mode),
            (ConnKind::Service, &self.service_mode),
        ];
        let modes: std::collections::BTreeMap<ConnKind, ConModes> =
            set.into_iter().filter_map(|(k, m)| Some((k, m.clone()?))).collect();
        if modes.is_empty() {
            return provider;
        }
        Arc::new(WithConModes::new(provider, me, modes))
    }

    /// Checks every option: zero (or, for a duration, under a millisecond) where it would
    /// spin (a keepalive interval, read budget or backoff), values so large that deadline
    /// arithmetic would overflow (`Duration::MAX`), contradictions (a maximum below its minimum), and a
    /// `tcp_congestion` or `socket_priority` the kernel refuses (tried on a socket that is
    /// never connected).
    /// Called by [`crate::Messenger::new`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(option: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError { option, reason: reason.into() })
        }
        fn duration(option: &'static str, d: Duration) -> Result<(), ConfigError> {
            // Not just above zero: a nanosecond re-arms a keepalive or a redial on every
            // loop iteration as surely as zero does, and faults every connection as a
            // timeout.
            if d < MIN_DURATION {
                return bad(option, format!("{d:?} is below the minimum {MIN_DURATION:?}"));
            }
            if d > MAX_DURATION {
                return bad(option, format!("{d:?} is above the maximum {MAX_DURATION:?}"));
            }
            Ok(())
        }
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return bad("workers", format!("{} is not within 1..={MAX_WORKERS}", self.workers));
        }
        duration("initial_backoff", self.initial_backoff)?;
        duration("max_backoff", self.max_backoff)?;
        if self.max_backoff < self.initial_backoff {
            return bad("max_backoff", "is below initial_backoff");
        }
        duration("connection_ready_timeout", self.connection_ready_timeout)?;
        duration("connection_idle_timeout", self.connection_idle_timeout)?;
        duration("payload_timeout", self.payload_timeout)?;
        duration("write_timeout", self.write_timeout)?;
        duration("admin_client_deadline", self.admin_client_deadline)?;
        if let Some(every) = self.keepalive_interval {
            duration("keepalive_interval", every)?;
        }
        if self.dispatch_throttle_bytes == 0 {
            return bad("dispatch_throttle_bytes", "0 would leave received messages unbounded");
        }
        if self.max_front == 0 {
            return bad("max_front", "0 would refuse every message");
        }
        // Ceph has no such limit (its receive bounds are the throttles), so no value
        // means "none" here: 0 would fault every connection that carries such a message,
        // a lossless one again after each reconnect, as it is replayed.
        if self.max_middle == 0 {
            return bad("max_middle", "0 would refuse every message with a middle segment");
        }
        if self.max_data == 0 {
            return bad("max_data", "0 would refuse every message with a data segment");
        }
        if self.dispatch_batch == 0 {
            return bad("dispatch_batch", "0 messages per batch would never hand one on");
        }
        if self.read_budget == 0 {
            return bad("read_budget", "0 would never read");
        }
        if self.read_buffer == 0 || self.read_buffer > MAX_READ_BUFFER {
            return bad(
                "read_buffer",
                format!("{} is not within 1..={MAX_READ_BUFFER}", self.read_buffer),
            );
        }
        for (option, size) in [("tcp_rcvbuf", self.tcp_rcvbuf), ("tcp_sndbuf", self.tcp_sndbuf)] {
            if i32::try_from(size).is_err() {
                return bad(option, format!("{size} does not fit a socket option"));
            }
        }
        if let Some(name) = &self.tcp_congestion {
            check_tcp_congestion(name)
                .map_err(|reason| ConfigError { option: "tcp_congestion", reason })?;
        }
        if let Some(prio) = self.socket_priority {
            check_socket_priority(prio)
                .map_err(|reason| ConfigError { option: "socket_priority", reason })?;
        }
        if self.max_queued_bytes == 0 {
            return bad("max_queued_bytes", "0 would refuse every message");
        }
        if self.max_queued_events == 0 {
            return bad("max_queued_events", "0 would never accept a connection");
        }
        if self.max_total_queued_bytes < self.max_queued_bytes {
            return bad("max_total_queued_bytes", "is below max_queued_bytes");
        }
        if !self.bind_msgr1 && !self.bind_msgr2 {
            return bad(
                "bind_msgr2",
                "and bind_msgr1 are both off: the listener would serve nothing",
            );
        }
        if let Some(range) = &self.bind_port_range {
            if *range.start() == 0 {
                return bad("bind_port_range", "starts at port 0, which is no port to bind");
            }
            if range.end() < range.start() {
                return bad(
                    "bind_port_range",
                    format!("ends ({}) below its start ({})", range.end(), range.start()),
                );
            }
        }
        if self.bind_retry_count == 0 {
            return bad("bind_retry_count", "0 attempts would never bind");
        }
        duration("bind_retry_delay", self.bind_retry_delay)?;
        #[cfg(feature = "fault-injection")]
        {
            if self.inject_internal_delays > MAX_DURATION {
                return bad("inject_internal_delays", "is above the maximum duration");
            }
            if self.inject_delay_max > MAX_DURATION {
                return bad("inject_delay_max", "is above the maximum duration");
            }
            if !(0.0..=1.0).contains(&self.inject_delay_probability) {
                return bad("inject_delay_probability", "is not within 0..=1");
            }
        }
        Ok(())
    }
}

/// Longest congestion control name the kernel takes (`TCP_CA_NAME_MAX` less its NUL).
const MAX_TCP_CONGESTION_NAME: usize = 15;

/// Whether `name` is a congestion control this process may set: its shape here, then
/// the kernel's word on a fresh socket, so a typo fails at startup rather than in every
/// connection. [`MessengerConfig::validate`] checks `tcp_congestion` with it.
pub fn check_tcp_congestion(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TCP_CONGESTION_NAME {
        return Err(format!("{name:?} is not 1..={MAX_TCP_CONGESTION_NAME} bytes long"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("{name:?} is not a congestion control's name"));
    }
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("no socket to try {name:?} on: {e}"))?;
    set_tcp_congestion(socket2::SockRef::from(&probe), name).map_err(|e| {
        format!(
            "the kernel refuses {name:?}: {e} (net.ipv4.tcp_allowed_congestion_control \
             lists what this process may use)"
        )
    })
}

/// Sets `TCP_CONGESTION` on `sock`.
#[cfg(target_os = "linux")]
pub(crate) fn set_tcp_congestion(sock: socket2::SockRef<'_>, name: &str) -> std::io::Result<()> {
    sock.set_tcp_congestion(name.as_bytes())
}

/// Sets `TCP_CONGESTION` on `sock` (not offered here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_tcp_congestion(_sock: socket2::SockRef<'_>, _name: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "TCP_CONGESTION is Linux only"))
}

/// The DSCP class Ceph marks a prioritised socket's packets with (`IPTOS_CLASS_CS6`).
pub const IPTOS_CLASS_CS6: u32 = 0xc0;

/// Whether this process may give its sockets priority `prio`
/// ([`MessengerConfig::socket_priority`]): the kernel's word on a fresh socket, so a
/// priority that needs a capability the process lacks fails at startup rather than on
/// every connection. [`MessengerConfig::validate`] checks `socket_priority` with it.
pub fn check_socket_priority(prio: u32) -> Result<(), String> {
    if i32::try_from(prio).is_err() {
        return Err(format!("{prio} does not fit a socket option"));
    }
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("no socket to try priority {prio} on: {e}"))?;
    set_socket_priority(socket2::SockRef::from(&probe), prio).map_err(|e| {
        format!("the kernel refuses priority {prio}: {e} (above 6 needs CAP_NET_ADMIN)")
    })
}

/// Marks `sock`'s packets with [`IPTOS_CLASS_CS6`] and gives them priority `prio`, in
/// that order, as Ceph's `NetHandler::set_priority`: setting the TOS resets the
/// priority.
#[cfg(target_os = "linux")]
pub(crate) fn set_socket_priority(sock: socket2::SockRef<'_>, prio: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if sock.domain()? == socket2::Domain::IPV6 {
        sock.set_tclass_v6(IPTOS_CLASS_CS6)?;
    } else {
        sock.set_tos(IPTOS_CLASS_CS6)?;
    }
    let prio = libc::c_int::try_from(prio)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live `c_int` on this
    // stack frame; the descriptor is `sock`'s, open for the call's duration.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            std::ptr::from_ref(&prio).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `SO_PRIORITY` on `sock` (not offered here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_socket_priority(_sock: socket2::SockRef<'_>, _prio: u32) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SO_PRIORITY is Linux only"))
}
