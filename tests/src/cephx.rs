//! An in-process cephx cluster for messenger tests: a [`KeyServer`] made from a test
//! keyring mints every entity's service tickets (no monitor), and each daemon's
//! [`SharedKeyStore`] holds the same rotating secrets the key server sealed them with.
//! [`TestCluster::provider`] gives the [`CephxProvider`] of one entity; a [`Tap`]
//! around a provider counts its sessions' signatures and can sign one message wrongly.
//! [`monitor_client`] is a messenger that authenticates to a real monitor as
//! client.admin ([`client_admin`]), its cephx provider holding the monitor key;
//! [`monitor_session`] dials the monitor with it and asks for the monmap ([`get_map`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy};
use protocol::auth::cephx::{
    CephxProvider, KeyServer, RngSource, RotatingKeyStore, SharedKeyStore, TicketStore, WallClock,
};
use protocol::auth::{
    parse_entity_name, AuthClient, AuthConfig, AuthError, AuthProvider, AuthRole, AuthServer,
    AuthorizerClient, AuthorizerRequest, AuthorizerServer, AuthorizerStep, ConMode, CryptoKey,
    KeyEntry, KeyRing, SessionHandler,
};
use protocol::encoding::UTime;
use protocol::messages::{MCommandReply, MsgType};
use protocol::types::{AuthEntityName, EntityAddr, EntityName, EntityType, Features};
use protocol::wire::{MsgFooter, MsgHeader};
use protocol::Message;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::loopback::{start_recorded, Seen, WAIT};

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

/// A random source for providers from the operating system's generator.
pub fn os_rng_source() -> RngSource {
    Arc::new(|| Box::new(rand::rngs::OsRng) as _)
}

/// client.admin's name and key in `keyring` (a test monitor's: [`CephMon::keyring`]).
///
/// [`CephMon::keyring`]: crate::ceph::CephMon::keyring
pub fn client_admin(keyring: &Path) -> (AuthEntityName, CryptoKey) {
    let ring = KeyRing::load(keyring).expect("keyring");
    let name = parse_entity_name("client.admin").expect("name");
    let key = ring.key(&name).expect("client.admin key").clone();
    (name, key)
}

/// A client messenger (a new client, nonce 1, lossy to everyone, started) whose cephx
/// provider authenticates to monitors as `name` with `key` (Ceph's defaults, the wall
/// clock, the OS's random numbers), keeping tickets and monitor sessions in `store`; on
/// `config`, its auth provider replaced. Everything it sees goes to the receiver, from
/// a [`Recorder`](crate::loopback::Recorder) that echoes nothing.
pub fn monitor_client(
    name: &AuthEntityName,
    key: &CryptoKey,
    store: &Arc<TicketStore>,
    config: MessengerConfig,
) -> (Messenger, Receiver<Seen>) {
    let clock = WallClock::anchored(Instant::now(), wall_now());
    let provider =
        CephxProvider::new(name.clone(), AuthConfig::ceph_defaults(), clock, os_rng_source())
            .with_monitor_key(key.clone(), store.clone());
    let config = config.with_auth_provider(Arc::new(provider));
    let msgr = Messenger::new(EntityName::new(EntityType::CLIENT, EntityName::NEW), 1, config)
        .expect("messenger");
    start_recorded(msgr, Policy::lossy_client())
}

/// An MMonGetMap, as a Pacific MonClient's first message to a monitor.
pub fn get_map() -> Message {
    let mut m = Message::new(MsgType::MON_GET_MAP.0, Bytes::new());
    m.set_version(1);
    m.set_compat_version(1);
    m
}

/// What came on `conn` first: its monmap (`Ok`) or its reset/refusal (`Err`, saying
/// which), within `within` (`Err` too when nothing did).
pub fn monmap_or_reset(
    rx: &Receiver<Seen>,
    conn: &Connection,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn && m.msg_type() == MsgType::MON_MAP.0 => {
                return Ok(())
            }
            Ok(Seen::Reset(c)) if &c == conn => return Err("reset".into()),
            Ok(Seen::Refused(c)) if &c == conn => return Err("refused".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("nothing within {within:?}: {e}")),
        }
    }
}

/// Dials the monitor at `addr` and asks for its map ([`get_map`]): the connection once
/// the MMonMap came, or `None` when the connection was refused or reset (the monitor
/// refused our credentials). Panics when neither came within [`WAIT`].
pub fn monitor_session(
    msgr: &Messenger,
    rx: &Receiver<Seen>,
    addr: EntityAddr,
) -> Option<Connection> {
    let conn = msgr.connect_to(EntityType::MON, addr);
    conn.send_message(get_map()).expect("send");
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if c == conn && m.msg_type() == MsgType::MON_MAP.0 => {
                return Some(conn)
            }
            Ok(Seen::Reset(c) | Seen::Refused(c)) if c == conn => return None,
            Ok(_) => {}
            Err(e) => panic!("no monmap and no refusal within {WAIT:?}: {e}"),
        }
    }
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
        let rotating = self.server.rotating(service).unwrap_or_default();
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
        self.provider_with_store(name, config, keys.map(|k| Arc::new(SharedKeyStore::new(k))))
    }

    /// Like [`TestCluster::provider`], verifying with `store`, which the caller may
    /// refresh while connections verify against it (a daemon fetching new rotating
    /// secrets).
    pub fn provider_with_store(
        &mut self,
        name: EntityName,
        config: Option<AuthConfig>,
        store: Option<Arc<SharedKeyStore>>,
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
        if let Some(store) = store {
            p = p.with_keys(store);
        }
        Arc::new(p)
    }
}

/// What a [`Tap`] saw of its sessions' signing.
#[derive(Default)]
pub struct TapCounts {
    /// Messages signed.
    pub signed: AtomicU64,
    /// Received messages checked.
    pub checked: AtomicU64,
    /// Sign the message with this seq wrongly, once (0: never).
    pub tamper_seq: AtomicU64,
    /// The tampering happened.
    pub tampered: AtomicBool,
}

/// A provider that delegates to the real one and wraps the session signers it returns:
/// counts what they sign and check, and can sign one message wrongly (a peer that signs
/// wrong).
pub struct Tap {
    inner: Arc<dyn AuthProvider>,
    counts: Arc<TapCounts>,
}

struct TapSigner {
    inner: Box<dyn SessionHandler>,
    counts: Arc<TapCounts>,
}

impl SessionHandler for TapSigner {
    fn sign(&self, header: &MsgHeader, footer: &mut MsgFooter) {
        self.inner.sign(header, footer);
        self.counts.signed.fetch_add(1, Ordering::Relaxed);
        if header.seq == self.counts.tamper_seq.load(Ordering::Relaxed)
            && !self.counts.tampered.swap(true, Ordering::Relaxed)
        {
            footer.sig ^= 1;
        }
    }
    fn check(&self, header: &MsgHeader, footer: &MsgFooter) -> Result<(), AuthError> {
        self.counts.checked.fetch_add(1, Ordering::Relaxed);
        self.inner.check(header, footer)
    }
}

fn tap(
    signer: Option<Box<dyn SessionHandler>>,
    counts: &Arc<TapCounts>,
) -> Option<Box<dyn SessionHandler>> {
    signer.map(|inner| Box::new(TapSigner { inner, counts: counts.clone() }) as _)
}

struct TapClient {
    inner: Box<dyn AuthorizerClient>,
    counts: Arc<TapCounts>,
}

impl AuthorizerClient for TapClient {
    fn method(&self) -> u32 {
        self.inner.method()
    }
    fn bytes(&self) -> Bytes {
        self.inner.bytes()
    }
    fn handle_challenge(&mut self, challenge: &[u8]) -> Result<Bytes, AuthError> {
        self.inner.handle_challenge(challenge)
    }
    fn handle_reply(
        &mut self,
        reply: &[u8],
        features: Features,
    ) -> Result<Option<Box<dyn SessionHandler>>, AuthError> {
        Ok(tap(self.inner.handle_reply(reply, features)?, &self.counts))
    }
}

struct TapServer {
    inner: Box<dyn AuthorizerServer>,
    counts: Arc<TapCounts>,
}

impl AuthorizerServer for TapServer {
    fn verify(&mut self, request: &AuthorizerRequest<'_>) -> AuthorizerStep {
        match self.inner.verify(request) {
            AuthorizerStep::Accept { reply, signer, peer } => {
                AuthorizerStep::Accept { reply, signer: tap(signer, &self.counts), peer }
            }
            other => other,
        }
    }
}

impl AuthProvider for Tap {
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32> {
        self.inner.methods(role, peer_type)
    }
    fn modes(&self, role: AuthRole, peer_type: EntityType) -> Vec<ConMode> {
        self.inner.modes(role, peer_type)
    }
    fn client(
        &self,
        peer_type: EntityType,
        peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>> {
        self.inner.client(peer_type, peer_addr, method)
    }
    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        self.inner.server(peer_type, method)
    }
    fn allows_authenticated(&self, method: u32, named: EntityType) -> bool {
        self.inner.allows_authenticated(method, named)
    }
    fn authorizer_client(
        &self,
        peer_type: EntityType,
    ) -> Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        let Some(inner) = self.inner.authorizer_client(peer_type)? else { return Ok(None) };
        Ok(Some(Box::new(TapClient { inner, counts: self.counts.clone() })))
    }
    fn v1_required_features(&self, peer_type: EntityType, method: u32) -> Features {
        self.inner.v1_required_features(peer_type, method)
    }
    fn authorizer_server(&self) -> Option<Box<dyn AuthorizerServer>> {
        let inner = self.inner.authorizer_server()?;
        Some(Box::new(TapServer { inner, counts: self.counts.clone() }))
    }
}

impl Tap {
    /// A tap around `inner` and its counts.
    pub fn new(inner: Arc<dyn AuthProvider>) -> (Arc<Tap>, Arc<TapCounts>) {
        let counts = Arc::new(TapCounts::default());
        (Arc::new(Tap { inner, counts: counts.clone() }), counts)
    }
}

/// A real 16.2 OSD's answer to `{"prefix": "version"}`: success, and Pacific's version
/// JSON.
pub fn assert_version_json(reply: &MCommandReply) {
    assert_eq!((reply.r, reply.rs.as_str()), (0, ""), "{reply:?}");
    let json: serde_json::Value = serde_json::from_slice(&reply.data).expect("version JSON");
    assert_eq!(json["release"], "pacific", "{json}");
    assert!(json["version"].as_str().is_some_and(|v| v.starts_with("16.2.")), "{json}");
}
