//! Settings shared by every connection of one messenger, whichever protocol it speaks.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthNoneProvider, AuthProvider};
use crate::message::DecodeLimits;
use crate::types::{AuthEntityName, EntityAddr, EntityAddrVec, EntityName};

use super::cookies::CookieSource;
use super::issues::WarnLimit;
use super::learned::LearnedAddr;
use super::policy::{Policy, PolicyTable};
use super::seq::GlobalSeqCounter;

/// Default [`Config::first_window`]: a page. Small enough that a thousand peers which
/// announce large messages and stall hold only a few MiB of budget; larger messages
/// double it quickly (a 128 MiB one asks 16 times).
pub const DEFAULT_FIRST_WINDOW: u32 = 4 << 10;

/// Default [`Config::progress_window`]: one socket read of the messenger's default size.
pub const DEFAULT_PROGRESS_WINDOW: u32 = 64 << 10;

/// The share of the budget that waits on it which the message everyone waits for must
/// bring per [`Config::payload_timeout`] (a sixteenth): the messenger's floor for the
/// oldest message in progress while its throttle queues requests
/// ([`super::Machine::set_progress_floor`]). The oldest message may go past the
/// throttle's maximum, and messages waiting for their next window hold what they have
/// meanwhile; without a floor in proportion, a peer trickling the oldest message at one
/// window per timeout kept everyone waiting for hours. With it, keeping budget held costs
/// the peer bandwidth: a sixteenth of it per timeout (at the defaults, 640 KB/s to hold
/// the whole 100 MiB dispatch throttle), else its connection faults within a timeout.
/// Without contention no floor applies, so an honest large message on a slow link is
/// not cut off. Where a message-count throttle has new messages waiting and messages in
/// progress hold all of its counts, each message in progress must likewise bring a
/// sixteenth of its own length per timeout.
pub const PROGRESS_SHARE: u64 = 16;

/// Default [`Config::max_control_frame`]: Ceph's control frames are < 1 KiB; AUTH_DONE
/// with every cephx ticket, the largest, is ~1 KiB.
pub const DEFAULT_MAX_CONTROL_FRAME: u32 = 64 << 10;

/// Configuration of the session machines of one messenger (`Arc<Config>` is shared by
/// all its connections, v1 and v2).
#[derive(Clone)]
pub struct Config {
    /// Our entity name: `src` of outgoing messages, v1's `host_type`, msgr2's HELLO
    /// entity type and ident `gid`.
    pub my_name: EntityName,
    /// The addresses we are bound to. msgr v1 announces the LEGACY one (or the first;
    /// [`Config::v1_addr`]); msgr2 sends them all in its idents. A pure client has one
    /// address with a blank IP and port 0 (its IP is learned from the peer:
    /// [`Config::learned_addr`]).
    pub my_addrs: EntityAddrVec,
    /// The IP our blank addresses take, learned by the first connection we dialled
    /// whose acceptor told us how it sees us (or set by the messenger's
    /// `set_addr_unknowns`): what every later connect announces. Shared by every
    /// machine of one messenger (Ceph's `learned_addr`, once per messenger).
    pub learned_addr: Arc<LearnedAddr>,
    /// Our policy for each peer type, where an acceptor looks up the feature bits it
    /// checks the peer against and advertises (its [`Policy::features_required`] and
    /// [`Policy::features_supported`]) as soon as it learns the peer's type: v1
    /// CONNECT's `host_type`, msgr2 HELLO's entity type. A connector uses the policy it
    /// was created with, a messenger's for the type it dials. Default: one
    /// [`Policy::default()`] for every type (Pacific's features, NOSRCADDR required).
    pub policies: Arc<dyn PolicyTable>,
    /// Limits on the message segment lengths a peer may announce (checked before
    /// allocating).
    pub limits: DecodeLimits,
    /// msgr2: the largest control frame (every frame but MESSAGE) a peer may send.
    pub max_control_frame: u32,
    /// msgr v1 `ms_crc_header`: compute and check header, front and middle crcs.
    pub crc_header: bool,
    /// msgr v1 `ms_crc_data`: compute and check data crcs.
    pub crc_data: bool,
    /// A handshake that does not complete in this time faults (a real monitor never
    /// times out a silent v1 handshake; we must). Ceph's `ms_connection_ready_timeout`,
    /// 10 s.
    pub handshake_timeout: Duration,
    /// An open connection with no traffic from the peer for this long faults.
    /// `ms_connection_idle_timeout`, 900 s.
    pub idle_timeout: Duration,
    /// While a message arrives, its payload must progress by at least
    /// [`Config::progress_window`] bytes, and by the floor the messenger set if that is
    /// more ([`super::Machine::set_progress_floor`]), or to its end, within this time of
    /// the last such progress or of the message's first grant of budget (the clock
    /// pauses while the message waits for a later window, and goes on where it was when
    /// that is granted); otherwise the connection faults and releases what the message
    /// held. A peer cannot hold budget by announcing a large
    /// message and then trickling it.
    pub payload_timeout: Duration,
    /// Bytes waiting to be sent that the socket does not take for this long fault the
    /// connection: the peer stopped reading ([`super::Machine::handle_write_blocked`]).
    pub write_timeout: Duration,
    /// The budget a message asks for when its header arrives
    /// ([`super::Event::NeedBudget`]; more if more of its payload already arrived with
    /// the header). Later windows double with what the message already holds, so the
    /// budget (and the assembly buffer) of a message grows with the bytes that actually
    /// arrived.
    pub first_window: u32,
    /// The progress a message must make per [`Config::payload_timeout`].
    pub progress_window: u32,
    /// The size of the socket reads the input comes in (the messenger's read buffer,
    /// whose slices they are). Bytes waiting for the rest of a frame that came in reads
    /// shorter than a quarter of it are copied out of those reads, so what waits keeps
    /// alive at most about four times its size of read buffers, not one per read.
    pub read_size: usize,
    /// Send a keepalive every this long while open, whatever else was sent (None: only
    /// on request).
    pub keepalive_interval: Option<Duration>,
    /// First reconnect backoff (`ms_initial_backoff`, 0.2 s).
    pub initial_backoff: Duration,
    /// Backoff ceiling, also the WAIT backoff (`ms_max_backoff`, 15 s).
    pub max_backoff: Duration,
    /// The messenger's connection-attempt counter, shared by all its connections.
    pub global_seq: Arc<GlobalSeqCounter>,
    /// Authentication: msgr2's methods, modes and handlers; v1's authorizers, their
    /// verification and message signing ([`crate::auth`]).
    pub auth: Arc<dyn AuthProvider>,
    /// msgr v1: without an inline verifier ([`AuthProvider::authorizer_server`]), ask
    /// the driver to verify an empty authorizer too (a monitor rejects mon peers without
    /// one); when false an empty authorizer is accepted without an event.
    pub verify_empty_authorizer: bool,
    /// Whether an ACK from the peer produces [`super::Event::Acked`]. The ACK trims the
    /// sent queue either way; a driver that does nothing with the event turns it off
    /// rather than pop and drop one per ACK.
    pub report_acks: bool,
    /// msgr2: the cookie generator.
    pub cookies: Arc<CookieSource>,
    /// msgr2: handshake rounds allowed per TCP connection (auth requests and replies,
    /// refused idents, session retries and resets): a peer cannot keep a handshake (and
    /// its transcript) going forever. Ceph's own exchanges take at most a handful.
    pub max_auth_rounds: u32,
    /// Handshake and duplicate counters of every connection sharing this config.
    pub counters: Arc<Counters>,
    /// How many peer issues a second the connections sharing this config log at WARN.
    pub warn_limit: Arc<WarnLimit>,
}

/// Read-only counters of the connections sharing one [`Config`] (one messenger): how
/// many connect attempts the handshakes took and which retry replies they met, so
/// reconnect races can be checked for bounded rounds. Written with relaxed atomics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connect attempts sent: v1 connect messages (first attempts, reconnects, resends
    /// after a retry reply) and msgr2 idents and reconnects.
    pub connects: AtomicU64,
    /// WAIT replies received (a connection race lost to the peer's own connect).
    pub wait: AtomicU64,
    /// RETRY_GLOBAL / SESSION_RETRY_GLOBAL replies received.
    pub retry_global: AtomicU64,
    /// RETRY_SESSION / SESSION_RETRY replies received.
    pub retry_session: AtomicU64,
    /// RESETSESSION / SESSION_RESET replies received (the peer had lost our session).
    pub reset_session: AtomicU64,
    /// Received messages dropped because their seq was already delivered (a resend after
    /// a reconnect whose seq exchange could not tell the peer).
    pub old_seq_dropped: AtomicU64,
    /// Received messages whose signature did not check (each faulted its connection).
    pub bad_signatures: AtomicU64,
    /// Credentials refused: v1 authorizers (the peer got BADAUTHORIZER) and msgr2 AUTH
    /// requests the method refused (the peer got AUTH_BAD_METHOD with its errno). What
    /// peers refused of ours is [`Counters::authorizers_refused_by_peer`].
    pub authorizers_rejected: AtomicU64,
    /// Our credentials refused by the peer we dialled: a v1 BADAUTHORIZER reply, a msgr2
    /// AUTH_BAD_METHOD with any result but `-EOPNOTSUPP` (which says the method or mode
    /// is not allowed, a step of the method negotiation). Kept apart from
    /// [`Counters::authorizers_rejected`]: that one counts peers with bad credentials,
    /// this one ours refused (a wrong key, a stale ticket, the peer's stale rotating
    /// secrets).
    pub authorizers_refused_by_peer: AtomicU64,
    /// Connects refused because the peer authenticated as another entity than the
    /// session under the address it announced ([`super::Decision::Refuse`]).
    pub identity_refused: AtomicU64,
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
    /// [`Counters::bad_signatures`].
    pub bad_signatures: u64,
    /// [`Counters::authorizers_rejected`].
    pub authorizers_rejected: u64,
    /// [`Counters::authorizers_refused_by_peer`].
    pub authorizers_refused_by_peer: u64,
    /// [`Counters::identity_refused`].
    pub identity_refused: u64,
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
            bad_signatures: get(&self.bad_signatures),
            authorizers_rejected: get(&self.authorizers_rejected),
            authorizers_refused_by_peer: get(&self.authorizers_refused_by_peer),
            identity_refused: get(&self.identity_refused),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Config {
    /// Ceph's defaults for `my_name` bound to `my_addrs`: Pacific features (every peer
    /// type's policy), crcs on,
    /// 10 s handshake, 900 s idle, no periodic keepalive, backoff 0.2 s → 15 s, auth
    /// none as `<type>.<num>`, or `<type>.admin` for a name with no number yet
    /// (`EntityName::NEW`, a new client's: `client.admin`) ([`Config::with_auth`]
    /// changes it).
    pub fn new(my_name: EntityName, my_addrs: impl Into<EntityAddrVec>) -> Self {
        let id = if my_name.num >= 0 { my_name.num.to_string() } else { "admin".to_string() };
        let auth_name = AuthEntityName::new(my_name.ty, id);
        Config {
            my_name,
            my_addrs: my_addrs.into(),
            learned_addr: Arc::new(LearnedAddr::new()),
            policies: Arc::new(Policy::default()),
            limits: DecodeLimits::default(),
            max_control_frame: DEFAULT_MAX_CONTROL_FRAME,
            crc_header: true,
            crc_data: true,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            payload_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            first_window: DEFAULT_FIRST_WINDOW,
            progress_window: DEFAULT_PROGRESS_WINDOW,
            read_size: DEFAULT_PROGRESS_WINDOW as usize,
            keepalive_interval: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            global_seq: Arc::new(GlobalSeqCounter::new()),
            auth: Arc::new(AuthNoneProvider::new(auth_name)),
            verify_empty_authorizer: false,
            report_acks: true,
            cookies: Arc::new(CookieSource::from_entropy()),
            max_auth_rounds: 16,
            counters: Arc::new(Counters::default()),
            warn_limit: Arc::new(WarnLimit::default()),
        }
    }

    /// The same with `auth` as the authentication provider.
    pub fn with_auth(mut self, auth: Arc<dyn AuthProvider>) -> Self {
        self.auth = auth;
        self
    }

    /// The address msgr v1 announces: the LEGACY one of [`Config::my_addrs`], else the
    /// first (a client's blank address), else a blank one.
    pub fn v1_addr(&self) -> EntityAddr {
        self.my_addrs
            .legacy_addr()
            .or_else(|| self.my_addrs.addrs.first().copied())
            .unwrap_or_default()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("my_name", &self.my_name)
            .field("my_addrs", &self.my_addrs)
            .field("learned_addr", &self.learned_addr.ip())
            .field("policies", &"<policy table>")
            .field("limits", &self.limits)
            .field("crc_header", &self.crc_header)
            .field("crc_data", &self.crc_data)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("payload_timeout", &self.payload_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("first_window", &self.first_window)
            .field("progress_window", &self.progress_window)
            .field("read_size", &self.read_size)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}
