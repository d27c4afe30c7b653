//! msgr2 session cookies and where they come from.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

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

/// Random non-zero cookies for lossless sessions: HMAC-SHA256 of a counter under a key
/// of the source's own, drawn from the operating system.
///
/// A cookie names a session on a SESSION_RECONNECT, and an acceptor resumes the session
/// of the claimed address whose client cookie matches (as Ceph does): a cookie an
/// attacker can predict lets it take that session over. A keyed pseudo-random function
/// of a counter reveals nothing of the key or of other cookies, unlike the invertible
/// SplitMix64 this replaced, one of whose outputs gave away every other. Two sessions
/// share a cookie with probability 2^-64 per pair; a restarted process draws a new key
/// and so new cookies (which the peer's restart detection needs).
pub struct CookieSource {
    /// Keyed once; cloned per cookie.
    mac: Hmac<Sha256>,
    counter: AtomicU64,
}

impl fmt::Debug for CookieSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("CookieSource").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl CookieSource {
    /// A source keyed by `key`.
    fn with_key(key: &[u8]) -> Self {
        // HMAC accepts keys of any length: the fallback is never taken.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        CookieSource { mac, counter: AtomicU64::new(0) }
    }

    /// A source keyed by `seed` (tests use fixed seeds: their cookies are predictable).
    pub fn with_seed(seed: u64) -> Self {
        CookieSource::with_key(&seed.to_le_bytes())
    }

    /// A source keyed with 32 bytes from the operating system's random source (or, should
    /// that fail, from the standard library's per-process random hash keys).
    pub fn from_entropy() -> Self {
        let mut key = [0u8; 32];
        if OsRng.try_fill_bytes(&mut key).is_err() {
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                let mut h = RandomState::new().build_hasher();
                h.write_usize(i);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
        }
        CookieSource::with_key(&key)
    }

    /// The next cookie, never 0.
    pub fn next(&self) -> u64 {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let mut mac = self.mac.clone();
            mac.update(&n.to_le_bytes());
            let out = mac.finalize().into_bytes();
            let mut cookie = [0u8; 8];
            cookie.copy_from_slice(&out[..8]);
            let cookie = u64::from_le_bytes(cookie);
            if cookie != 0 {
                return cookie;
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
        assert_ne!(CookieSource::from_entropy().next(), CookieSource::from_entropy().next());
    }

    /// SplitMix64 as the old source ran it: the output for the state after a step.
    fn splitmix(state: u64) -> u64 {
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// What the old source gave after `out`: its finaliser inverted to the state, the
    /// state stepped, mixed again.
    fn splitmix_successor(out: u64) -> u64 {
        let unxorshift = |z: u64, s: u32| {
            let mut r = z;
            for _ in 0..64 / s {
                r = z ^ (r >> s);
            }
            r
        };
        // The inverse of an odd multiplier modulo 2^64 (Newton's iteration).
        let inv = |m: u64| {
            let mut x = m;
            for _ in 0..6 {
                x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
            }
            x
        };
        let mut z = unxorshift(out, 31);
        z = unxorshift(z.wrapping_mul(inv(0x94d0_49bb_1331_11eb)), 27);
        z = unxorshift(z.wrapping_mul(inv(0xbf58_476d_1ce4_e5b9)), 30);
        splitmix(z.wrapping_add(GAMMA))
    }

    /// One cookie of the old SplitMix64 source predicted the next (and every other); one
    /// of ours does not, and sources with different keys share nothing.
    #[test]
    fn one_cookie_does_not_predict_the_next() {
        let seed = 0x1234_5678_9abc_def0u64;
        let old = (
            splitmix(seed.wrapping_add(GAMMA)),
            splitmix(seed.wrapping_add(GAMMA).wrapping_add(GAMMA)),
        );
        assert_eq!(splitmix_successor(old.0), old.1, "the predictor works on the old source");
        let c = CookieSource::from_entropy();
        for _ in 0..100 {
            let a = c.next();
            assert_ne!(splitmix_successor(a), c.next());
        }
        let stream = |seed| {
            let c = CookieSource::with_seed(seed);
            (0..64).map(|_| c.next()).collect::<Vec<u64>>()
        };
        let (s1, s2) = (stream(7), stream(8));
        assert!(s1.iter().all(|x| !s2.contains(x)));
    }
}
