//! cephx keys for msgr2 secure mode (`--mode secure`): secure mode's AES-128-GCM keys
//! come from the connection secret a cephx authorizer exchange agrees on, so both bench
//! messengers need cephx providers. With no monitor in the bench, an in-process
//! [`KeyServer`] holds a fresh keyring (the server's OSD entity and one client entity all
//! client messengers share), mints the client's OSD service ticket directly, and hands
//! the server the OSD rotating secrets that ticket is sealed with — what a monitor would
//! hand out, without its rounds.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use protocol::auth::cephx::{
    CephxProvider, KeyServer, RngSource, RotatingKeyStore, SharedKeyStore, TicketStore, WallClock,
};
use protocol::auth::{AuthConfig, CryptoKey, KeyEntry, KeyRing};
use protocol::encoding::UTime;
use protocol::types::{AuthEntityName, EntityType};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The global id of the client entity's (monitor-less) session.
const CLIENT_GLOBAL_ID: u64 = 4200;

/// The cephx providers of one bench run: the server's and the one all clients share.
pub struct Keys {
    /// The server's (`osd.0`): verifies authorizers with the OSD rotating secrets.
    pub server: Arc<CephxProvider>,
    /// The clients' (`client.bench`): presents its OSD service ticket.
    pub client: Arc<CephxProvider>,
}

fn wall_now() -> UTime {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UTime::new(u32::try_from(since.as_secs()).unwrap_or(u32::MAX), since.subsec_nanos())
}

/// Fresh cryptographic generators from the OS for every session the providers open.
fn os_rng() -> RngSource {
    Arc::new(|| Box::new(StdRng::from_entropy()) as _)
}

impl Keys {
    /// A fresh keyring and key server; the providers use Ceph's cephx defaults.
    pub fn new() -> Result<Keys, String> {
        let wall = wall_now();
        let clock = WallClock::anchored(Instant::now(), wall);
        let mut rng = StdRng::from_entropy();
        let server_name = AuthEntityName::new(EntityType::OSD, "0");
        let client_name = AuthEntityName::new(EntityType::CLIENT, "bench");
        let mut ring = KeyRing::new();
        for name in [&server_name, &client_name] {
            let entry = KeyEntry::new(CryptoKey::generate(wall, &mut rng))
                .with_cap("mon", "allow *")
                .with_cap("osd", "allow *");
            ring.insert(name.clone(), entry);
        }
        let config = AuthConfig::ceph_defaults();
        let key_server = KeyServer::new(ring, config.clone(), wall, &mut rng);
        let ticket = key_server
            .service_ticket(&client_name, CLIENT_GLOBAL_ID, EntityType::OSD, wall, &mut rng)
            .map_err(|e| format!("cephx: minting the client's OSD ticket: {e}"))?;
        let tickets = Arc::new(TicketStore::new(CLIENT_GLOBAL_ID));
        tickets.insert(CLIENT_GLOBAL_ID, ticket);
        let rotating = key_server
            .rotating(EntityType::OSD)
            .ok_or("cephx: the key server has no OSD rotating secrets")?;
        let keys = SharedKeyStore::new(RotatingKeyStore::new(EntityType::OSD, rotating));
        let server = CephxProvider::new(server_name, config.clone(), clock, os_rng())
            .with_keys(Arc::new(keys));
        let client = CephxProvider::new(client_name, config, clock, os_rng()).with_tickets(tickets);
        Ok(Keys { server: Arc::new(server), client: Arc::new(client) })
    }
}
