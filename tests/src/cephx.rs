//! An in-process cephx cluster for messenger tests: a [`KeyServer`] made from a test
//! keyring mints every entity's service tickets (no monitor), and each daemon's
//! [`SharedKeyStore`] holds the same rotating secrets the key server sealed them with.
//! [`TestCluster::provider`] gives the [`CephxProvider`] of one entity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use protocol::auth::cephx::{
    CephxProvider, KeyServer, RngSource, RotatingKeyStore, SharedKeyStore, TicketStore, WallClock,
};
use protocol::auth::{AuthConfig, CryptoKey, KeyEntry, KeyRing};
use protocol::encoding::UTime;
use protocol::types::{AuthEntityName, EntityName, EntityType};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The services every entity gets a ticket for.
const SERVICES: [EntityType; 4] =
    [EntityType::MON, EntityType::OSD, EntityType::MDS, EntityType::MGR];
/// Global ids handed out, from here on (a monitor starts around 4100 too).
const FIRST_GLOBAL_ID: u64 = 5000;

/// The wall clock now (tests may read clocks; the protocol crate may not).
pub fn wall_now() -> UTime {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    UTime::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos())
}

/// A seeded random source for providers: generator `i` is seeded with `seed + i`, so a
/// run is reproducible from the seed the test prints.
pub fn seeded_rng_source(seed: u64) -> RngSource {
    let next = Arc::new(AtomicU64::new(seed));
    Arc::new(move || Box::new(StdRng::seed_from_u64(next.fetch_add(1, Ordering::Relaxed))) as _)
}

/// A key server for a set of entities and what it minted.
pub struct TestCluster {
    server: KeyServer,
    rng: StdRng,
    seed: u64,
    next_global_id: u64,
    clock: WallClock,
    wall: UTime,
}

fn auth_name(name: EntityName) -> AuthEntityName {
    let id = if name.num >= 0 { name.num.to_string() } else { "admin".to_string() };
    AuthEntityName::new(name.ty, id)
}

impl TestCluster {
    /// A cluster whose keyring holds `entities` (with `allow *` caps), its rotating
    /// secrets and keys drawn from `seed`.
    pub fn new(entities: &[EntityName], seed: u64) -> TestCluster {
        let mut rng = StdRng::seed_from_u64(seed);
        let wall = wall_now();
        let mut ring = KeyRing::new();
        for &e in entities {
            let entry = KeyEntry::new(CryptoKey::generate(wall, &mut rng))
                .with_cap("mon", "allow *")
                .with_cap("osd", "allow *");
            ring.insert(auth_name(e), entry);
        }
        let server = KeyServer::new(ring, AuthConfig::ceph_defaults(), wall, &mut rng);
        TestCluster {
            server,
            rng,
            seed,
            next_global_id: FIRST_GLOBAL_ID,
            clock: WallClock::anchored(Instant::now(), wall),
            wall,
        }
    }

    /// The rotating secrets a daemon of type `service` holds.
    pub fn keys(&self, service: EntityType) -> RotatingKeyStore {
        let rotating = self.server.rotating(service).cloned().unwrap_or_default();
        RotatingKeyStore::new(service, rotating)
    }

    /// The provider of `name` with `config` (Ceph's defaults if `None`): tickets for
    /// every service minted now under a fresh global id, and (daemons) its service's
    /// rotating secrets.
    pub fn provider(&mut self, name: EntityName, config: Option<AuthConfig>) -> Arc<CephxProvider> {
        let keys = (name.ty != EntityType::CLIENT).then(|| self.keys(name.ty));
        self.provider_with_keys(name, config, keys)
    }

    /// Like [`TestCluster::provider`], verifying with `keys` (e.g. another cluster's).
    pub fn provider_with_keys(
        &mut self,
        name: EntityName,
        config: Option<AuthConfig>,
        keys: Option<RotatingKeyStore>,
    ) -> Arc<CephxProvider> {
        let global_id = self.next_global_id;
        self.next_global_id += 1;
        let who = auth_name(name);
        let tickets = Arc::new(TicketStore::new(global_id));
        for service in SERVICES {
            let t = self
                .server
                .service_ticket(&who, global_id, service, self.wall, &mut self.rng)
                .expect("the keyring holds this entity");
            tickets.insert(global_id, t);
        }
        let rng = seeded_rng_source(self.seed.wrapping_add(global_id << 16));
        let config = config.unwrap_or_else(AuthConfig::ceph_defaults);
        let mut p = CephxProvider::new(who, config, self.clock, rng).with_tickets(tickets);
        if let Some(keys) = keys {
            p = p.with_keys(Arc::new(SharedKeyStore::new(keys)));
        }
        Arc::new(p)
    }
}
