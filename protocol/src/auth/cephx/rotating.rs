//! Rotating service secrets (cephx.md 3.8, 4.4, 5) and the key store a daemon verifies
//! authorizers with.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::auth::crypto::CryptoKey;
use crate::auth::error::AuthError;
use crate::encoding::{Decoder, Encoder, UTime};
use crate::types::EntityType;

use super::ticket::{utime_add, SECRET_ID_OWN_KEY};

/// Most rotating secrets one set may hold: Ceph keeps three (previous, current, next).
pub const MAX_ROTATING_SECRETS: usize = 16;
/// Smallest encoding of one map entry: id, version, AES key, expiration.
const MIN_ROTATING_ENTRY: usize = 8 + 1 + CryptoKey::ENCODED_LEN + 8;

/// `ExpiringCryptoKey`: a key and the end of its validity (monitor clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringCryptoKey {
    /// The secret.
    pub key: CryptoKey,
    /// When it stops being used.
    pub expiration: UTime,
}

/// `RotatingSecrets` of one service type: secret id → key, newest id in `max_ver`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotatingSecrets {
    /// The secrets by id (ascending = oldest first).
    pub secrets: BTreeMap<u64, ExpiringCryptoKey>,
    /// The newest id.
    pub max_ver: u64,
}

impl RotatingSecrets {
    /// A window of three secrets (previous, current, next) for a service whose secrets
    /// rotate every `period`, the current one expiring `period` after `now`, ids
    /// `first_id`, `first_id + 1`, `first_id + 2`. This is what a monitor holds.
    pub fn generate(
        now: UTime,
        period: Duration,
        first_id: u64,
        rng: &mut dyn rand_core::CryptoRngCore,
    ) -> Self {
        let mut secrets = BTreeMap::new();
        for i in 0..3u32 {
            // Saturating: `period` is a user's ttl, and `utime_add` saturates too.
            let expiration = utime_add(now, period.saturating_mul(i));
            secrets.insert(
                first_id + u64::from(i),
                ExpiringCryptoKey { key: CryptoKey::generate(now, rng), expiration },
            );
        }
        RotatingSecrets { secrets, max_ver: first_id + 2 }
    }

    /// The secret used to seal new tickets: the second of the window (cephx.md 5), or
    /// the only/last one when fewer are held.
    pub fn current(&self) -> Option<(u64, &ExpiringCryptoKey)> {
        let mut it = self.secrets.iter();
        let first = it.next();
        it.next().or(first).map(|(id, k)| (*id, k))
    }

    /// The secret with id `secret_id`.
    pub fn get(&self, secret_id: u64) -> Option<&CryptoKey> {
        self.secrets.get(&secret_id).map(|k| &k.key)
    }

    /// Whether a daemon should fetch fresh secrets at wall time `now` (Ceph's
    /// `_check_auth_rotating`, `need_new_secrets(now - tolerance)`): the current secret
    /// expired `tolerance` ago or more (Ceph: `min(30 s, auth_service_ticket_ttl / 4)`),
    /// or none is held. A monitor rotates only once its current secret expired
    /// (`KeyServer::_rotate_secret`), and seals with the next one meanwhile, which this
    /// window holds: asked sooner, it answers with the window already held.
    pub fn refresh_due(&self, now: UTime, tolerance: Duration) -> bool {
        match self.current() {
            Some((_, k)) => utime_add(k.expiration, tolerance) <= now,
            None => true,
        }
    }

    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(1);
        e.map(&self.secrets, |e, id, k| {
            e.u64(*id).u8(1);
            k.key.encode(e);
            e.utime(k.expiration);
        });
        e.u64(self.max_ver);
    }

    /// Reads it; more than [`MAX_ROTATING_SECRETS`] entries are refused.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        let n = d.count(MIN_ROTATING_ENTRY)?;
        if n > MAX_ROTATING_SECRETS {
            return Err(AuthError::Malformed("too many rotating secrets"));
        }
        let mut secrets = BTreeMap::new();
        for _ in 0..n {
            let id = d.u64()?;
            let _v = d.u8()?;
            let key = CryptoKey::decode(d)?;
            let expiration = d.utime()?;
            secrets.insert(id, ExpiringCryptoKey { key, expiration });
        }
        let max_ver = d.u64()?;
        Ok(RotatingSecrets { secrets, max_ver })
    }
}

/// Where a daemon finds the secret that sealed a ticket presented to it.
///
/// A daemon fills it with the rotating secrets fetched from the monitor
/// ([`RotatingKeyStore`]) or by itself (tests, embedded clusters).
pub trait KeyStore {
    /// The secret `secret_id` of `service`; [`SECRET_ID_OWN_KEY`] asks for the
    /// service's own long-term key (`mon.` between monitors).
    fn service_secret(&self, service: EntityType, secret_id: u64) -> Option<CryptoKey>;
}

/// A daemon's keys: its service type's rotating secrets, and optionally its own key for
/// tickets sealed with [`SECRET_ID_OWN_KEY`].
#[derive(Clone, Debug, Default)]
pub struct RotatingKeyStore {
    /// The service type whose tickets this store opens (`osd` for an OSD).
    pub service: EntityType,
    /// The rotating secrets (from GET_ROTATING_KEY).
    pub rotating: RotatingSecrets,
    /// The service's long-term key, for own-key tickets: the type-wide `<type>.` entry
    /// of the daemon's keyring (`mon.`), which Ceph's `cephx_verify_authorizer` looks up
    /// for [`SECRET_ID_OWN_KEY`], never the daemon's own entity key (`osd.3`), which
    /// would let that key's holder mint any ticket. `None` (Ceph's daemons other than
    /// monitors: no `<type>.` entry) refuses own-key tickets.
    pub own_key: Option<CryptoKey>,
}

impl RotatingKeyStore {
    /// A store for `service`.
    pub fn new(service: EntityType, rotating: RotatingSecrets) -> Self {
        RotatingKeyStore { service, rotating, own_key: None }
    }
}

impl KeyStore for RotatingKeyStore {
    fn service_secret(&self, service: EntityType, secret_id: u64) -> Option<CryptoKey> {
        if service != self.service {
            return None;
        }
        if secret_id == SECRET_ID_OWN_KEY {
            return self.own_key.clone();
        }
        self.rotating.get(secret_id).cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::cephx::testing::TestRng;

    #[test]
    fn rotating_secrets_round_trip_and_pick_the_second_as_current() {
        let mut rng = TestRng::new(7);
        let now = UTime::new(1_000_000, 0);
        let r = RotatingSecrets::generate(now, Duration::from_secs(3600), 1, &mut rng);
        let mut e = Encoder::new();
        r.encode(&mut e);
        let mut d = Decoder::new(e.as_slice());
        assert_eq!(RotatingSecrets::decode(&mut d).unwrap(), r);
        assert!(d.is_empty());
        let (id, cur) = r.current().unwrap();
        assert_eq!(id, 2);
        assert_eq!(cur.expiration, UTime::new(1_003_600, 0));
        let tolerance = Duration::from_secs(60);
        assert!(!r.refresh_due(now, tolerance));
        // Not while the current secret is valid, nor within the tolerance after.
        assert!(!r.refresh_due(UTime::new(1_003_590, 0), tolerance));
        assert!(!r.refresh_due(UTime::new(1_003_650, 0), tolerance));
        assert!(r.refresh_due(UTime::new(1_003_660, 0), tolerance));
        assert!(RotatingSecrets::default().refresh_due(now, tolerance));
        let store = RotatingKeyStore::new(EntityType::OSD, r.clone());
        assert_eq!(store.service_secret(EntityType::OSD, 2), Some(cur.key.clone()));
        assert_eq!(store.service_secret(EntityType::MGR, 2), None);
        assert_eq!(store.service_secret(EntityType::OSD, SECRET_ID_OWN_KEY), None);
    }

    // A period set by a user (`auth_*_ticket_ttl`) as large as a `Duration` holds: the
    // window's expirations saturate instead of `period * 2` overflowing.
    #[test]
    fn a_huge_period_saturates() {
        let mut rng = TestRng::new(7);
        let now = UTime::new(1_000_000, 0);
        let r = RotatingSecrets::generate(now, Duration::from_secs(u64::MAX / 2 + 1), 1, &mut rng);
        let expirations: Vec<u32> = r.secrets.values().map(|k| k.expiration.sec).collect();
        assert_eq!(expirations, [1_000_000, u32::MAX, u32::MAX]);
    }

    #[test]
    fn hostile_rotating_count_is_refused() {
        let mut e = Encoder::new();
        e.u8(1).u32(1000);
        e.bytes(&vec![0u8; 1000 * MIN_ROTATING_ENTRY]);
        assert!(RotatingSecrets::decode(&mut Decoder::new(e.as_slice())).is_err());
    }
}
