//! Settings shared by every msgr2 connection of one messenger.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::types::{AuthEntityName, EntityAddrVec, EntityName, Features};

use super::auth::{AuthNoneProvider, AuthProvider};
use super::framing::FrameLimits;

/// Random non-zero cookies for lossless sessions, from a seed.
///
/// SplitMix64 over a counter: distinct outputs for distinct counter values, so two
/// sessions of one process never share a cookie; a restarted process gets a new seed
/// and so new cookies (which is what the peer's restart detection needs). Not a
/// cryptographic generator: cookies are session identifiers, not secrets.
#[derive(Debug)]
pub struct CookieSource {
    state: AtomicU64,
}

impl CookieSource {
    /// A source seeded with `seed` (tests use fixed seeds).
    pub fn with_seed(seed: u64) -> Self {
        CookieSource { state: AtomicU64::new(seed) }
    }

    /// A source seeded from the standard library's per-process random hash keys (no
    /// clock, no I/O of ours).
    pub fn from_entropy() -> Self {
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish();
        CookieSource::with_seed(seed)
    }

    /// The next cookie, never 0.
    pub fn next(&self) -> u64 {
        const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
        loop {
            let mut z = self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }
}

/// Configuration of the msgr2 state machines of one messenger (`Arc<Config>` is
/// shared by all its connections).
#[derive(Clone)]
pub struct Config {
    /// Our entity name: HELLO's entity type, ident's `gid` (the number).
    pub my_name: EntityName,
    /// The addresses we are bound to (v2 first). A pure client has one address of type
    /// ANY with its nonce and port 0 (its IP is learned from the acceptor's HELLO).
    pub my_addrs: EntityAddrVec,
    /// Ceph features we advertise.
    pub features_supported: Features,
    /// Ceph features a peer must have (MSG_ADDR2 is always added, Ceph's
    /// `msgr2_required`).
    pub features_required: Features,
    /// Frame length limits, checked before allocating.
    pub limits: FrameLimits,
    /// `ms_connection_ready_timeout`, 10 s: the whole handshake.
    pub handshake_timeout: Duration,
    /// `ms_connection_idle_timeout`, 900 s.
    pub idle_timeout: Duration,
    /// Send a keepalive when nothing was sent for this long (None: only on request).
    pub keepalive_interval: Option<Duration>,
    /// `ms_initial_backoff`, 0.2 s.
    pub initial_backoff: Duration,
    /// `ms_max_backoff`, 15 s (also the WAIT backoff).
    pub max_backoff: Duration,
    /// The messenger's connection-attempt counter, shared by all its connections.
    pub global_seq: Arc<AtomicU64>,
    /// Auth methods, modes and handlers.
    pub auth: Arc<dyn AuthProvider>,
    /// Cookie generator.
    pub cookies: Arc<CookieSource>,
    /// Handshake rounds allowed per TCP connection (auth requests and replies, refused
    /// idents, session retries and resets): a peer cannot keep a handshake (and its
    /// transcript) going forever. Ceph's own exchanges take at most a handful.
    pub max_auth_rounds: u32,
}

impl Config {
    /// Ceph's defaults for `my_name` bound to `my_addrs`, auth none as
    /// `auth_name`, Pacific features.
    pub fn new(my_name: EntityName, my_addrs: EntityAddrVec, auth_name: AuthEntityName) -> Self {
        Config {
            my_name,
            my_addrs,
            features_supported: Features::PACIFIC_ADVERTISED,
            features_required: Features::REQUIRED_DEFAULT,
            limits: FrameLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            keepalive_interval: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            global_seq: Arc::new(AtomicU64::new(0)),
            auth: Arc::new(AuthNoneProvider::new(auth_name)),
            cookies: Arc::new(CookieSource::from_entropy()),
            max_auth_rounds: 16,
        }
    }

    /// Takes the next global_seq (the first is 1).
    pub(crate) fn next_global_seq(&self) -> u64 {
        self.global_seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Ceph's `get_global_seq(old)`: raises the counter above `seen` and returns it.
    pub(crate) fn global_seq_above(&self, seen: u64) -> u64 {
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
            .field("my_addrs", &self.my_addrs)
            .field("features_supported", &self.features_supported)
            .field("features_required", &self.features_required)
            .field("limits", &self.limits)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_distinct_and_non_zero() {
        let c = CookieSource::with_seed(0);
        let a: Vec<u64> = (0..1000).map(|_| c.next()).collect();
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), a.len());
        assert!(a.iter().all(|&x| x != 0));
        assert_ne!(CookieSource::with_seed(1).next(), CookieSource::with_seed(2).next());
    }
}
