//! Settings shared by every connection of one messenger.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::message::DecodeLimits;
use crate::types::{EntityAddr, EntityName, EntityType, Features};

/// Produces the authorizer for a connect to a peer of the given type: `Some((auth
/// protocol, bytes))`, or `None` to send none. Ceph's `ms_get_authorizer`.
pub type AuthorizerHook = Arc<dyn Fn(EntityType) -> Option<(u32, Bytes)> + Send + Sync>;

/// Default [`Config::first_window`]: a page. Small enough that a thousand peers which
/// announce large messages and stall hold only a few MiB of budget; larger messages
/// double it quickly (a 128 MiB one asks 16 times).
pub const DEFAULT_FIRST_WINDOW: u32 = 4 << 10;

/// Default [`Config::progress_window`]: one socket read of the messenger's default size.
pub const DEFAULT_PROGRESS_WINDOW: u32 = 64 << 10;

/// Configuration of the v1 state machines of one messenger (`Arc<Config>` is shared by
/// all its connections).
#[derive(Clone)]
pub struct Config {
    /// Our entity name: `src` of outgoing messages, `host_type` of our connects.
    pub my_name: EntityName,
    /// The legacy address we announce in banners; may have a blank IP and port 0 for a
    /// pure client. Also the race tie-break key.
    pub my_addr: EntityAddr,
    /// Features we advertise (`ms` policy `features_supported`).
    pub features_supported: Features,
    /// Features a peer must have (`features_required`).
    pub features_required: Features,
    /// Limits on the lengths a peer may announce (checked before allocating).
    pub limits: DecodeLimits,
    /// `ms_crc_header`: compute and check header, front and middle crcs.
    pub crc_header: bool,
    /// `ms_crc_data`: compute and check data crcs.
    pub crc_data: bool,
    /// A handshake that does not complete in this time faults (a real monitor never times
    /// out a silent handshake; we must). Ceph's `ms_connection_ready_timeout`, 10 s.
    pub handshake_timeout: Duration,
    /// An open connection with no traffic from the peer for this long faults.
    /// `ms_connection_idle_timeout`, 900 s.
    pub idle_timeout: Duration,
    /// While a message arrives, its payload must progress by at least
    /// [`Config::progress_window`] bytes (or to its end) within this time of the last
    /// such progress or grant of budget; otherwise the connection faults and releases
    /// what the message held. A peer cannot hold budget by announcing a large message
    /// and then trickling it.
    pub payload_timeout: Duration,
    /// Bytes waiting to be sent that the socket does not take for this long fault the
    /// connection: the peer stopped reading ([`super::Connection::handle_write_blocked`]).
    pub write_timeout: Duration,
    /// The budget a message asks for when its header arrives ([`super::Event::NeedBudget`];
    /// more if more of its payload already arrived with the header). Later windows
    /// double with what the message already holds, so the budget (and the assembly
    /// buffer) of a message grows with the bytes that actually arrived.
    pub first_window: u32,
    /// The progress a message must make per [`Config::payload_timeout`].
    pub progress_window: u32,
    /// Send a keepalive when nothing was sent for this long (None: only on request).
    pub keepalive_interval: Option<Duration>,
    /// First reconnect backoff (`ms_initial_backoff`, 0.2 s).
    pub initial_backoff: Duration,
    /// Backoff ceiling, also the WAIT backoff (`ms_max_backoff`, 15 s).
    pub max_backoff: Duration,
    /// The messenger's connection-attempt counter (Ceph's `AsyncMessenger::global_seq`),
    /// shared by all its connections.
    pub global_seq: Arc<AtomicU32>,
    /// Authorizer producer for connects (None: never send one).
    pub authorizer: Option<AuthorizerHook>,
    /// Ask the messenger to verify an empty authorizer too (a monitor rejects mon peers
    /// without one); when false an empty authorizer is accepted without an event.
    pub verify_empty_authorizer: bool,
    /// Handshake and duplicate counters of every connection sharing this config.
    pub counters: Arc<Counters>,
}

/// Read-only counters of the connections sharing one [`Config`] (one messenger): how
/// many connect attempts the handshakes took and which retry replies they met, so
/// reconnect races can be checked for bounded rounds. Written with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connect messages sent: first attempts, reconnects, and resends after a
    /// RETRY_GLOBAL, RETRY_SESSION or RESETSESSION reply.
    pub connects: AtomicU64,
    /// WAIT replies received (a connection race lost to the peer's own connect).
    pub wait: AtomicU64,
    /// RETRY_GLOBAL replies received.
    pub retry_global: AtomicU64,
    /// RETRY_SESSION replies received.
    pub retry_session: AtomicU64,
    /// RESETSESSION replies received (the peer had lost our session).
    pub reset_session: AtomicU64,
    /// Received messages dropped because their seq was already delivered (a resend after
    /// a reconnect whose SEQ exchange could not tell the peer).
    pub old_seq_dropped: AtomicU64,
}

/// The values of [`Counters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// [`Counters::connects`].
    pub connects: u64,
    /// [`Counters::wait`].
    pub wait: u64,
    /// [`Counters::retry_global`].
    pub retry_global: u64,
    /// [`Counters::retry_session`].
    pub retry_session: u64,
    /// [`Counters::reset_session`].
    pub reset_session: u64,
    /// [`Counters::old_seq_dropped`].
    pub old_seq_dropped: u64,
}

impl Counters {
    /// The current values.
    pub fn values(&self) -> CounterValues {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterValues {
            connects: get(&self.connects),
            wait: get(&self.wait),
            retry_global: get(&self.retry_global),
            retry_session: get(&self.retry_session),
            reset_session: get(&self.reset_session),
            old_seq_dropped: get(&self.old_seq_dropped),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Config {
    /// Ceph's defaults for `my_name` announcing `my_addr`: Pacific features, crcs on,
    /// 10 s handshake, 900 s idle, no periodic keepalive, backoff 0.2 s → 15 s.
    pub fn new(my_name: EntityName, my_addr: EntityAddr) -> Self {
        Config {
            my_name,
            my_addr,
            features_supported: Features::PACIFIC_ADVERTISED,
            features_required: Features::REQUIRED_DEFAULT,
            limits: DecodeLimits::default(),
            crc_header: true,
            crc_data: true,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            payload_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            first_window: DEFAULT_FIRST_WINDOW,
            progress_window: DEFAULT_PROGRESS_WINDOW,
            keepalive_interval: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            global_seq: Arc::new(AtomicU32::new(0)),
            authorizer: None,
            verify_empty_authorizer: false,
            counters: Arc::new(Counters::default()),
        }
    }

    /// Takes the next global_seq (the first is 1).
    pub(crate) fn next_global_seq(&self) -> u32 {
        self.global_seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Raises the counter above `seen` (RETRY_GLOBAL) and returns the new value.
    pub(crate) fn global_seq_above(&self, seen: u32) -> u32 {
        let mut cur = self.global_seq.load(Ordering::Relaxed);
        loop {
            let next = cur.max(seen).wrapping_add(1);
            match self.global_seq.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(now) => cur = now,
            }
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("my_name", &self.my_name)
            .field("my_addr", &self.my_addr)
            .field("features_supported", &self.features_supported)
            .field("features_required", &self.features_required)
            .field("crc_header", &self.crc_header)
            .field("crc_data", &self.crc_data)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("payload_timeout", &self.payload_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("first_window", &self.first_window)
            .field("progress_window", &self.progress_window)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}
