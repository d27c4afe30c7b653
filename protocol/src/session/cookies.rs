//! msgr2 session cookies and where they come from.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// A msgr2 session's cookies: chosen by each side when the session starts, they name it
/// on a SESSION_RECONNECT. msgr v1 has none (both stay 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cookies {
    /// Chosen by the side that sent CLIENT_IDENT: random non-zero when lossless.
    pub client: u64,
    /// Chosen by the side that sent SERVER_IDENT; non-zero on a connector means "a
    /// session exists: reconnect instead of ident".
    pub server: u64,
}

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
        // SplitMix64's increment and finaliser constants.
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
