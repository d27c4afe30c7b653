//! cephx behind the auth seam for msgr v1 and msgr2 (Ceph's `AuthRegistry` + the cephx
//! parts of `MonClient::get_auth_authorizer` / `handle_auth_request` for daemons): a
//! connector's authorizers built from service tickets, an acceptor's verifier over the
//! daemon's service secrets, the signing of every v1 message of the session, and over
//! msgr2 the monitor session itself.
//!
//! ```text
//! CephxProvider
//!   v1 connector: authorizer_client(peer) -> CephxAuthorizerClient
//!                   ticket from a TicketSource (TicketStore, filled by the user or a CephxClient)
//!   v1 acceptor:  authorizer_server()     -> CephxAuthorizerServer (one per connection)
//!                   secrets from a KeyStore (SharedKeyStore: the rotating secrets)
//!   v1 both:      MessageSigner for the session (cephx_sign_messages, MSG_AUTH)
//!   v2 connector: client(peer, addr, cephx) -> CephxMonClient (a monitor:
//!                   with_monitor_key; fills the TicketStore and leaves it the session,
//!                   which the application takes to renew over MAuth)
//!                   | CephxAuthorizerV2Client (a ticket's authorizer)
//!   v2 acceptor:  server(peer, cephx) -> CephxV2Server (authorizers: KeyStore;
//!                   monitor mode: with_key_server)
//! ```
//!
//! Sans-IO like the rest of the crate: wall-clock time comes from a [`WallClock`]
//! anchored by the caller (the machine's `Instant`s map onto it), and randomness from
//! an [`RngSource`] the caller gives (one generator per authorizer or accepted
//! connection, so no lock is shared across connections).
//!
//! Which method a peer must use (Ceph's `AuthRegistry::_get_supported_methods`): between
//! two daemons `auth_cluster_required`; a daemon accepting a client
//! `auth_service_required`; a client connecting anywhere `auth_client_required`. Where
//! the list holds `none` as well, a missing ticket (connector) or an empty authorizer
//! (acceptor) is auth none.
//!
//! msgr2 (AUTH frames): cephx through the handlers of [`super::v2`] — to a monitor the
//! provider's own cephx session ([`CephxProvider::with_monitor_key`], whose tickets fill
//! its [`TicketStore`], and which the application takes over from there to renew them:
//! [`TicketStore::take_monitor_session`]), to other daemons authorizers from the
//! [`TicketSource`]; as an
//! acceptor authorizers verified with the [`KeyStore`], and monitor-mode requests
//! answered by a [`KeyServer`] ([`CephxProvider::with_key_server`]). Auth none where
//! the lists allow it. Methods and modes follow Ceph's `AuthRegistry`
//! ([`AuthConfig::methods_for`], [`AuthConfig::modes_for`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rand_core::CryptoRngCore;

use crate::auth::authorizer::{
    AuthorizerClient, AuthorizerRequest, AuthorizerServer, AuthorizerStep, SessionHandler,
};
use crate::auth::config::{AuthConfig, AuthMethods};
use crate::auth::crypto::CryptoKey;
use crate::auth::error::AuthError;
use crate::auth::mode::ConMode;
use crate::auth::none::{AuthNoneAuthorizer, AuthNoneProvider, FIRST_GLOBAL_ID};
use crate::auth::provider::{AuthClient, AuthProvider, AuthRole, AuthServer};
use crate::encoding::UTime;
use crate::types::{
    AuthEntityName, EntityAddr, EntityType, Features, AUTH_CEPHX, AUTH_NONE, AUTH_UNKNOWN,
};

use super::authorizer::{Authorizer, AuthorizerVerdict, AuthorizerVerifier};
use super::client::CephxClient;
use super::request::ServiceMask;
use super::rotating::{KeyStore, RotatingKeyStore, RotatingSecrets};
use super::server::KeyServer;
use super::signature::MessageSigner;
use super::ticket::{duration_to_utime, utime_to_duration, ReceivedTicket};
use super::v2::{CephxAuthorizerV2Client, CephxMonClient, CephxV2Server};

const LOG: &str = "msgr::auth";

/// The services a daemon or client holds service tickets for.
pub(super) const TICKET_SERVICES: [EntityType; 4] =
    [EntityType::MON, EntityType::OSD, EntityType::MDS, EntityType::MGR];

/// A fresh random source per use: one per authorizer a connector builds and per
/// connection an acceptor verifies (e.g. `Arc::new(|| Box::new(rand_core::OsRng) as _)`).
pub type RngSource = Arc<dyn Fn() -> Box<dyn CryptoRngCore + Send> + Send + Sync>;

/// Wall-clock time for the machines' monotonic `Instant`s: the caller reads both clocks
/// once and anchors them here; later instants map onto wall time by their distance from
/// the anchor (ticket expiry is checked in wall time, cephx.md 7.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    at: Instant,
    wall: Duration,
}

impl WallClock {
    /// The instant `at` is the wall-clock time `wall`.
    pub fn anchored(at: Instant, wall: UTime) -> Self {
        WallClock { at, wall: utime_to_duration(wall) }
    }

    /// The instant of the anchor.
    pub(crate) fn anchor(&self) -> Instant {
        self.at
    }

    /// The wall-clock time at `now`.
    pub fn wall(&self, now: Instant) -> UTime {
        let wall = match now.checked_duration_since(self.at) {
            Some(ahead) => self.wall.saturating_add(ahead),
            None => self.wall.saturating_sub(self.at.saturating_duration_since(now)),
        };
        duration_to_utime(wall)
    }
}

/// Where a connector finds the service ticket (and the global id it was issued to) for
/// a peer type. Ceph keeps these in the `MonClient`'s cephx handler; here the user fills
/// a [`TicketStore`] from a [`CephxClient`] or by hand, or implements this.
pub trait TicketSource: Send + Sync {
    /// Our global id and the ticket for `service`, if held.
    fn ticket(&self, service: EntityType) -> Option<(u64, ReceivedTicket)>;
}

#[derive(Default)]
struct Tickets {
    global_id: u64,
    by_service: BTreeMap<EntityType, ReceivedTicket>,
}

/// How many msgr2 monitor sessions a [`TicketStore`] keeps for the application to take:
/// more than a client hunts at once (Ceph's `mon_client_hunt_parallel`, 3) or a monmap
/// lists in practice. Beyond it the oldest goes: an application that never takes its
/// sessions (it does not renew) holds no more than these.
const KEPT_MONITOR_SESSIONS: usize = 16;

/// A [`TicketSource`] the user fills: service tickets and the global id they name.
/// Renewal is the filler's job (refill with [`TicketStore::update_from`] after a
/// [`CephxClient`] renewed its tickets); a stale ticket is refused by the daemon, whose
/// refusal the connection reports.
///
/// As a provider's monitor store ([`CephxProvider::with_monitor_key`]) it is also where
/// each msgr2 monitor session's [`CephxClient`] waits, from its handshake until the
/// application takes it ([`TicketStore::take_monitor_session`]) to renew the tickets
/// over MAuth on that connection.
#[derive(Default)]
pub struct TicketStore {
    inner: RwLock<Tickets>,
    /// msgr2 monitor sessions by the address they were dialled at, oldest first; at
    /// most [`KEPT_MONITOR_SESSIONS`], one per address.
    monitor_sessions: Mutex<Vec<(EntityAddr, CephxClient)>>,
}

impl std::fmt::Debug for TicketStore {
    /// Names the services held, never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (global_id, services) = {
            let t = self.inner.read();
            let services: Vec<&str> = t.by_service.keys().map(|s| s.name()).collect();
            (t.global_id, services)
        };
        let sessions = self.monitor_sessions.lock().len();
        f.debug_struct("TicketStore")
            .field("global_id", &global_id)
            .field("services", &services)
            .field("monitor_sessions", &sessions)
            .finish()
    }
}

impl TicketStore {
    /// An empty store for tickets issued to `global_id`.
    pub fn new(global_id: u64) -> Self {
        let store = TicketStore::default();
        store.write().global_id = global_id;
        store
    }

    fn write(&self) -> parking_lot::RwLockWriteGuard<'_, Tickets> {
        self.inner.write()
    }

    /// The global id the tickets are issued to (a new monitor session's). The tickets
    /// held for another global id go: a daemon refuses an authorizer naming a global id
    /// its ticket was not issued to.
    pub fn set_global_id(&self, global_id: u64) {
        self.adopt(global_id, Vec::new());
    }

    /// Holds `ticket` for its service (replacing an older one), issued to `global_id`
    /// (the tickets held for another global id go).
    pub fn insert(&self, global_id: u64, ticket: ReceivedTicket) {
        self.adopt(global_id, vec![ticket]);
    }

    /// Holds `tickets`, issued to `global_id`, in one step (an authorizer is never
    /// built from half of them). A new global id is a new session: what was held for
    /// the old one goes, as Ceph's MonClient replaces its whole cephx handler with the
    /// new session's; within one global id older tickets of services not renewed stay.
    pub(super) fn adopt(&self, global_id: u64, tickets: Vec<ReceivedTicket>) {
        let mut t = self.write();
        if t.global_id != global_id {
            t.by_service.clear();
            t.global_id = global_id;
        }
        for ticket in tickets {
            t.by_service.insert(ticket.service, ticket);
        }
    }

    /// Copies the monitor session's auth ticket, its service tickets valid at `now`
    /// (mon, osd, mds, mgr) and its global id: call after it authenticated and after
    /// each renewal. Later authorizers are built from these, and the next msgr2 monitor
    /// session reclaims the global id with this auth ticket (Ceph's MonClient builds
    /// both from the one handler it renews).
    pub fn update_from(&self, client: &CephxClient, now: Instant) {
        let fresh: Vec<ReceivedTicket> = TICKET_SERVICES
            .into_iter()
            .filter_map(|s| client.service_ticket(s, now).cloned())
            .chain(client.auth_ticket().cloned())
            .collect();
        self.adopt(client.global_id(), fresh);
    }

    /// Takes the cephx session of the msgr2 monitor connection dialled at `addr` (the
    /// address given to the messenger's `connect_to`), once its handshake completed:
    /// authenticated, holding the session's server challenge, global id, auth ticket and
    /// service tickets, its renewal timed from when AUTH_DONE arrived. Drive it as on
    /// msgr v1 ([`CephxClient`]'s module docs) without `start`: its `MAuth` requests go
    /// on that connection, the `MAuthReply`s come back to it, and after each renewal
    /// [`TicketStore::update_from`] hands the tickets to the provider. Ceph's MonClient
    /// does the same: it moves the handshake's `AuthClientHandler` into itself
    /// (`_finish_hunting`) and renews over MAuth (`_check_auth_tickets`).
    ///
    /// `None` until that handshake completes, or once taken. A later handshake to the
    /// same address (the connection was reset and dialled again) leaves its own
    /// session, whose server challenge is the one the monitor now holds: take it again.
    #[doc(alias = "_finish_hunting")]
    pub fn take_monitor_session(&self, addr: &EntityAddr) -> Option<CephxClient> {
        let mut sessions = self.monitor_sessions.lock();
        let at = sessions.iter().position(|(a, _)| a == addr)?;
        Some(sessions.remove(at).1)
    }

    /// Keeps the session of the monitor connection dialled at `addr`, replacing an
    /// older one of that address.
    pub(super) fn keep_monitor_session(&self, addr: EntityAddr, client: CephxClient) {
        let mut sessions = self.monitor_sessions.lock();
        sessions.retain(|(a, _)| *a != addr);
        if sessions.len() >= KEPT_MONITOR_SESSIONS {
            sessions.remove(0);
        }
        sessions.push((addr, client));
    }
}

impl TicketSource for TicketStore {
    fn ticket(&self, service: EntityType) -> Option<(u64, ReceivedTicket)> {
        let t = self.inner.read();
        t.by_service.get(&service).map(|ticket| (t.global_id, ticket.clone()))
    }
}

/// A daemon's [`KeyStore`] that can be refreshed while connections verify against it
/// (new rotating secrets from the monitor every `auth_service_ticket_ttl`).
#[derive(Debug, Default)]
pub struct SharedKeyStore {
    inner: RwLock<RotatingKeyStore>,
}

impl SharedKeyStore {
    /// A store holding `keys`.
    pub fn new(keys: RotatingKeyStore) -> Self {
        SharedKeyStore { inner: RwLock::new(keys) }
    }

    /// Replaces the rotating secrets (GET_ROTATING_KEY's answer, or the daemon's own).
    pub fn set_rotating(&self, rotating: RotatingSecrets) {
        self.inner.write().rotating = rotating;
    }
}

impl KeyStore for SharedKeyStore {
    fn service_secret(
        &self,
        service: EntityType,
        secret_id: u64,
    ) -> Option<crate::auth::CryptoKey> {
        self.inner.read().service_secret(service, secret_id)
    }
}

/// A connector's credentials for monitors over msgr2 (AUTH_MODE_MON).
#[derive(Clone)]
struct MonCredentials {
    key: CryptoKey,
    store: Arc<TicketStore>,
}

/// What the connector and acceptor sides share.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) name: AuthEntityName,
    pub(super) my_type: EntityType,
    pub(super) config: AuthConfig,
    tickets: Option<Arc<dyn TicketSource>>,
    pub(super) keys: Option<Arc<dyn KeyStore + Send + Sync>>,
    mon: Option<MonCredentials>,
    /// The service tickets asked of monitors over msgr2.
    pub(super) want_services: ServiceMask,
    pub(super) key_server: Option<Arc<KeyServer>>,
    /// Global ids handed out when playing a monitor.
    pub(super) next_global_id: Arc<AtomicU64>,
    pub(super) clock: WallClock,
    pub(super) rng: RngSource,
}

impl Shared {
    /// The methods allowed with a peer of `peer`, whichever side dialled (Ceph's
    /// `AuthRegistry::get_supported_methods`; the role does not matter there).
    fn methods(&self, _role: AuthRole, peer: EntityType) -> &AuthMethods {
        self.config.methods_for(self.my_type, peer)
    }

    /// Whether msgr2's AUTH_REQUEST to `peer` is monitor-mode (a monitor authenticates
    /// other monitors with authorizers, like every other daemon pair).
    fn to_monitor(&self, peer: EntityType) -> bool {
        peer == EntityType::MON && self.my_type != EntityType::MON
    }

    /// Whether we can do cephx with `peer` in `role` at all (Ceph drops cephx from its
    /// lists when it has no keyring).
    fn can_cephx(&self, role: AuthRole, peer: EntityType) -> bool {
        match role {
            AuthRole::Connector if self.to_monitor(peer) => self.mon.is_some(),
            AuthRole::Connector => self.tickets.is_some(),
            AuthRole::Acceptor => self.keys.is_some() || self.key_server.is_some(),
        }
    }

    /// `cephx_*require_signatures` for a peer: the session must negotiate `MSG_AUTH`.
    fn check_signing(&self, peer: EntityType, features: Features) -> Result<(), AuthError> {
        if self.config.requires_signatures(peer) && !features.contains(Features::MSG_AUTH) {
            return Err(AuthError::BadAuthorizer("signatures required; peer lacks MSG_AUTH"));
        }
        Ok(())
    }

    fn signer(
        &self,
        key: crate::auth::CryptoKey,
        features: Features,
    ) -> Option<Box<dyn SessionHandler>> {
        MessageSigner::for_session(key, features, self.config.cephx_sign_messages)
            .map(|s| Box::new(s) as Box<dyn SessionHandler>)
    }
}

/// cephx for msgr v1 and msgr2 behind [`AuthProvider`]: see the module docs.
pub struct CephxProvider {
    shared: Arc<Shared>,
    none: AuthNoneProvider,
}

impl std::fmt::Debug for CephxProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephxProvider")
            .field("my_type", &self.shared.my_type)
            .field("connector", &self.shared.tickets.is_some())
            .field("acceptor", &self.shared.keys.is_some())
            .field("monitor_key", &self.shared.mon.is_some())
            .field("key_server", &self.shared.key_server.is_some())
            .finish()
    }
}

impl CephxProvider {
    /// A provider for entity `name` with `config`'s methods and signing options.
    /// Without [`CephxProvider::with_tickets`] it presents no authorizer; without
    /// [`CephxProvider::with_keys`] it refuses every cephx authorizer.
    pub fn new(name: AuthEntityName, config: AuthConfig, clock: WallClock, rng: RngSource) -> Self {
        let my_type = EntityType(u8::try_from(name.ty).unwrap_or(EntityType::ANY.0));
        // One counter for auth none's monitor-mode ids and cephx's, as a monitor has.
        let next_global_id = Arc::new(AtomicU64::new(FIRST_GLOBAL_ID));
        CephxProvider {
            shared: Arc::new(Shared {
                name: name.clone(),
                my_type,
                config,
                tickets: None,
                keys: None,
                mon: None,
                want_services: ServiceMask::CLIENT_SERVICES,
                key_server: None,
                next_global_id: next_global_id.clone(),
                clock,
                rng,
            }),
            none: AuthNoneProvider::new(name).with_global_id_counter(next_global_id),
        }
    }

    /// msgr2 connector to monitors: authenticate with `key` (our keyring entry) in
    /// AUTH_MODE_MON; every monitor session's global id and service tickets (those of
    /// [`CephxProvider::with_wanted_services`]) go into `store`, which also becomes the
    /// [`TicketSource`] of our authorizers, and the session itself waits there for the
    /// application to renew its tickets on ([`TicketStore::take_monitor_session`]).
    pub fn with_monitor_key(mut self, key: CryptoKey, store: Arc<TicketStore>) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        shared.tickets = Some(store.clone());
        shared.mon = Some(MonCredentials { key, store });
        self
    }

    /// The service tickets [`CephxProvider::with_monitor_key`]'s monitor sessions ask
    /// for (Ceph's `MonClient::set_want_keys`; the auth ticket always comes): mon, osd
    /// and mgr unless told, as librados and an OSD want. An MDS daemon or a CephFS
    /// client adds MDS (`ServiceMask::CLIENT_SERVICES.with(ServiceMask::of(EntityType::MDS))`),
    /// and its authorizers to MDSs are then built from the MDS ticket.
    #[doc(alias = "set_want_keys")]
    pub fn with_wanted_services(mut self, services: ServiceMask) -> Self {
        Arc::make_mut(&mut self.shared).want_services = services;
        self
    }

    /// msgr2 acceptor playing a monitor: AUTH_MODE_MON requests are answered by
    /// `server` (challenge, proof, tickets, a connection secret), global ids handed out
    /// from [`FIRST_GLOBAL_ID`] (one counter with auth none's, where allowed). Without
    /// [`CephxProvider::with_keys`] authorizers are verified with its secrets too. Its
    /// rotating secrets rotate when due, before they seal a session's tickets
    /// ([`KeyServer::rotate`]; a Ceph monitor does it on its tick): an application
    /// minting tickets or answering MAuth with the same key server rotates it likewise
    /// before it does.
    pub fn with_key_server(mut self, server: Arc<KeyServer>) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        if shared.keys.is_none() {
            shared.keys = Some(server.clone());
        }
        shared.key_server = Some(server);
        self
    }

    /// Connector side: service tickets come from `tickets`.
    pub fn with_tickets(mut self, tickets: Arc<dyn TicketSource>) -> Self {
        Arc::make_mut(&mut self.shared).tickets = Some(tickets);
        self
    }

    /// Acceptor side: authorizers are verified with the secrets of `keys`.
    pub fn with_keys(mut self, keys: Arc<dyn KeyStore + Send + Sync>) -> Self {
        Arc::make_mut(&mut self.shared).keys = Some(keys);
        self
    }
}

impl AuthProvider for CephxProvider {
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32> {
        let s = &self.shared;
        s.methods(role, peer_type)
            .0
            .iter()
            .copied()
            .filter(|&m| m == AUTH_NONE || (m == AUTH_CEPHX && s.can_cephx(role, peer_type)))
            .collect()
    }

    fn modes(&self, _role: AuthRole, peer_type: EntityType) -> Vec<ConMode> {
        self.shared.config.modes_for(self.shared.my_type, peer_type).0.clone()
    }

    fn client(
        &self,
        peer_type: EntityType,
        peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>> {
        let s = &self.shared;
        if !self.methods(AuthRole::Connector, peer_type).contains(&method) {
            return None;
        }
        if method != AUTH_CEPHX {
            return self.none.client(peer_type, peer_addr, method);
        }
        if s.to_monitor(peer_type) {
            let mon = s.mon.as_ref()?;
            let (key, store) = (mon.key.clone(), mon.store.clone());
            return Some(Box::new(CephxMonClient::new(s, key, store, *peer_addr)));
        }
        let Some((global_id, ticket)) = s.tickets.as_ref().and_then(|t| t.ticket(peer_type)) else {
            log::warn!(target: LOG, "no cephx ticket for {}: cannot offer cephx", peer_type.name());
            return None;
        };
        let mut rng = (s.rng)();
        let authorizer = Authorizer::new(global_id, &ticket, &mut *rng);
        Some(Box::new(CephxAuthorizerV2Client::new(authorizer)))
    }

    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        if !self.methods(AuthRole::Acceptor, peer_type).contains(&method) {
            return None;
        }
        if method != AUTH_CEPHX {
            return self.none.server(peer_type, method);
        }
        Some(Box::new(CephxV2Server::new(self.shared.clone(), peer_type)))
    }

    fn allows_authenticated(&self, method: u32, named: EntityType) -> bool {
        let s = &self.shared;
        if s.key_server.is_some() {
            // A monitor authenticating an entity (monitor mode): cluster methods for
            // daemons, service methods for clients, whatever the connection's kind.
            return s.config.accepted_from(named).allows(method)
                && (method == AUTH_NONE || s.can_cephx(AuthRole::Acceptor, named));
        }
        method != AUTH_NONE || self.methods(AuthRole::Acceptor, named).contains(&method)
    }

    fn authorizer_client(
        &self,
        peer_type: EntityType,
    ) -> Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        let s = &self.shared;
        let methods = s.methods(AuthRole::Connector, peer_type);
        let ticket = s.tickets.as_ref().and_then(|t| t.ticket(peer_type));
        match ticket {
            Some((global_id, ticket)) if methods.allows(AUTH_CEPHX) => {
                let mut rng = (s.rng)();
                let authorizer = Authorizer::new(global_id, &ticket, &mut *rng);
                Ok(Some(Box::new(CephxAuthorizerClient {
                    shared: s.clone(),
                    peer_type,
                    authorizer,
                })))
            }
            // What a Ceph connector falls back to where none is allowed and cephx is not
            // in use (a daemon refuses a connect without an authorizer even under auth
            // none). With cephx in use, a missing ticket is an error, as there.
            _ if methods.allows(AUTH_NONE)
                && !(methods.allows(AUTH_CEPHX) && s.tickets.is_some()) =>
            {
                Ok(Some(Box::new(AuthNoneAuthorizer::new(&s.name, 0))))
            }
            // Not without: the session would be neither authenticated nor signed.
            _ => {
                log::warn!(target: LOG, "no cephx ticket for {}: cannot connect yet", peer_type.name());
                Err(AuthError::NoTicket { service: peer_type.name() })
            }
        }
    }

    fn v1_required_features(&self, peer_type: EntityType, method: u32) -> Features {
        if method == AUTH_CEPHX {
            self.shared.config.v1_cephx_required_features(peer_type)
        } else {
            Features::NONE
        }
    }

    fn authorizer_server(&self) -> Option<Box<dyn AuthorizerServer>> {
        Some(Box::new(CephxAuthorizerServer {
            shared: self.shared.clone(),
            verifier: AuthorizerVerifier::new(),
            rng: (self.shared.rng)(),
        }))
    }
}

/// A connector's cephx authorizer on one connection (Ceph's `CephXAuthorizer` as the v1
/// machine uses it).
pub struct CephxAuthorizerClient {
    shared: Arc<Shared>,
    peer_type: EntityType,
    authorizer: Authorizer,
}

impl AuthorizerClient for CephxAuthorizerClient {
    fn method(&self) -> u32 {
        AUTH_CEPHX
    }

    fn bytes(&self) -> Bytes {
        self.authorizer.bytes().clone()
    }

    fn handle_challenge(&mut self, challenge: &[u8]) -> Result<Bytes, AuthError> {
        self.authorizer.handle_challenge(challenge)
    }

    fn handle_reply(
        &mut self,
        reply: &[u8],
        features: Features,
    ) -> Result<Option<Box<dyn SessionHandler>>, AuthError> {
        self.authorizer.verify_reply(reply)?;
        self.shared.check_signing(self.peer_type, features)?;
        Ok(self.shared.signer(self.authorizer.session_key().clone(), features))
    }
}

/// An acceptor's verifier of one connection's authorizers (it keeps the challenge it
/// issued).
pub struct CephxAuthorizerServer {
    shared: Arc<Shared>,
    verifier: AuthorizerVerifier,
    rng: Box<dyn CryptoRngCore + Send>,
}

impl CephxAuthorizerServer {
    fn judge(&mut self, req: &AuthorizerRequest<'_>) -> Result<AuthorizerStep, AuthError> {
        let s = &self.shared;
        let methods = s.methods(AuthRole::Acceptor, req.peer_type);
        let none = req.authorizer.is_empty() || matches!(req.method, AUTH_NONE | AUTH_UNKNOWN);
        if none {
            // A monitor takes a v1 connect without an authorizer, or with auth none's,
            // from anyone but a monitor, unread and naming nobody: they authenticate
            // afterwards with MAuth (cephx.md 4, as every client and daemon dialling a
            // monitor does; Ceph: "the monitor doesn't do authenticators for msgr1").
            // Only what it allows otherwise.
            if s.my_type == EntityType::MON && req.peer_type != EntityType::MON {
                return Ok(AuthorizerStep::Accept {
                    reply: Bytes::new(),
                    signer: None,
                    peer: None,
                });
            }
            if !methods.allows(AUTH_NONE) {
                return Err(AuthError::NoAcceptableMethod { offered: vec![req.method] });
            }
            // An auth-none authorizer names its peer (Ceph's handler records it, and
            // refuses one that does not decode).
            let peer = match req.method {
                AUTH_NONE if !req.authorizer.is_empty() => Some(
                    crate::auth::auth_none_authorizer_peer(req.authorizer)
                        .ok_or(AuthError::Malformed("auth none authorizer"))?,
                ),
                _ => None,
            };
            // The methods were those of the type the connect claims; the entity named
            // must be allowed none too, as msgr2 checks (`allows_authenticated`): else a
            // peer claiming "client" could pass as osd.0 where the cluster needs cephx.
            if let Some(p) = &peer {
                let named = EntityType::from_u32(p.name.ty);
                if !named.is_some_and(|ty| s.methods(AuthRole::Acceptor, ty).allows(AUTH_NONE)) {
                    return Err(AuthError::NoAcceptableMethod { offered: vec![AUTH_NONE] });
                }
            }
            return Ok(AuthorizerStep::Accept { reply: Bytes::new(), signer: None, peer });
        }
        if req.method != AUTH_CEPHX || !methods.allows(AUTH_CEPHX) {
            return Err(AuthError::UnexpectedMethod { method: req.method });
        }
        let keys = s.keys.as_ref().ok_or(AuthError::Misuse("no service secrets to verify with"))?;
        s.check_signing(req.peer_type, req.features)?;
        let verdict = self.verifier.verify(
            keys.as_ref(),
            s.my_type,
            req.authorizer,
            // Ceph challenges every v1 peer that can answer (CEPHX_V2), whatever its
            // require_version; that only decides whether one that cannot is refused.
            s.config.requires_challenge(req.peer_type) || req.features.contains(Features::CEPHX_V2),
            s.clock.wall(req.now),
            None,
            &mut *self.rng,
        )?;
        Ok(match verdict {
            AuthorizerVerdict::Challenge(c) => AuthorizerStep::Challenge(c),
            AuthorizerVerdict::Accepted(a) => AuthorizerStep::Accept {
                reply: a.reply,
                signer: s.signer(a.session_key, req.features),
                peer: Some(a.ticket.peer()),
            },
        })
    }
}

impl AuthorizerServer for CephxAuthorizerServer {
    fn verify(&mut self, request: &AuthorizerRequest<'_>) -> AuthorizerStep {
        self.judge(request).unwrap_or_else(|e| {
            log::info!(target: LOG, "authorizer from a {} refused: {e}", request.peer_type.name());
            AuthorizerStep::Reject
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::cephx::testing::{rng_source, TestRng};
    use crate::auth::crypto::CryptoKey;
    use crate::auth::keyring::{KeyEntry, KeyRing};
    use crate::wire::{FooterFlags, MsgFooter, MsgHeader};

    const WALL0: UTime = UTime::new(1_700_000_000, 0);

    /// The tests' virtual clock starts from the real one (an `Instant` cannot be made
    /// otherwise); everything after is offsets from it.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    /// The connector's and the acceptor's signer of one session.
    type Signers = (Box<dyn SessionHandler>, Box<dyn SessionHandler>);

    fn cluster(rng: &mut TestRng) -> KeyServer {
        let mut ring = KeyRing::new();
        let osd = AuthEntityName::new(EntityType::OSD, "0");
        ring.insert(osd, KeyEntry::new(CryptoKey::generate(WALL0, rng)).with_cap("osd", "allow *"));
        KeyServer::new(ring, AuthConfig::ceph_defaults(), WALL0, rng)
    }

    /// osd.0 dialing osd.1: the provider pair runs the v1 authorizer exchange with the
    /// challenge round, and the two signers agree.
    fn exchange(
        server: &KeyServer,
        acceptor_keys: RotatingKeyStore,
        at: Instant,
    ) -> Result<Signers, AuthorizerStep> {
        let mut rng = TestRng::new(3);
        let clock = WallClock::anchored(at, WALL0);
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let tickets = Arc::new(TicketStore::new(4100));
        let t = server.service_ticket(&name, 4100, EntityType::OSD, WALL0, &mut rng).unwrap();
        tickets.insert(4100, t);
        let config = AuthConfig::ceph_defaults();
        let connector =
            CephxProvider::new(name, config.clone(), clock, rng_source(10)).with_tickets(tickets);
        let acceptor = CephxProvider::new(
            AuthEntityName::new(EntityType::OSD, "1"),
            config,
            clock,
            rng_source(20),
        )
        .with_keys(Arc::new(SharedKeyStore::new(acceptor_keys)));
        let features = Features::PACIFIC_ADVERTISED;
        let mut client = connector.authorizer_client(EntityType::OSD).unwrap().unwrap();
        let mut verifier = acceptor.authorizer_server().unwrap();
        let bytes = client.bytes();
        fn request(a: &[u8], features: Features, at: Instant) -> AuthorizerRequest<'_> {
            AuthorizerRequest {
                peer_type: EntityType::OSD,
                method: AUTH_CEPHX,
                authorizer: a,
                features,
                now: at,
            }
        }
        let req = |a| request(a, features, at);
        let AuthorizerStep::Challenge(c) = verifier.verify(&req(&bytes)) else {
            return Err(verifier.verify(&req(&bytes)));
        };
        let answer = client.handle_challenge(&c).unwrap();
        match verifier.verify(&req(&answer)) {
            AuthorizerStep::Accept { reply, signer, peer } => {
                // The acceptor learns who dialled from the ticket: osd.0, its caps.
                let peer = peer.unwrap();
                assert_eq!(peer.name, AuthEntityName::new(EntityType::OSD, "0"));
                assert_eq!(peer.caps.cap_string().as_deref(), Some("allow *"));
                let mine = client.handle_reply(&reply, features).unwrap().unwrap();
                Ok((mine, signer.unwrap()))
            }
            other => Err(other),
        }
    }

    #[test]
    fn authorizer_round_trip_and_signers_agree() {
        let mut rng = TestRng::new(1);
        let server = cluster(&mut rng);
        let keys =
            RotatingKeyStore::new(EntityType::OSD, server.rotating(EntityType::OSD).unwrap());
        let (mine, theirs) = exchange(&server, keys, start()).unwrap();
        let header = MsgHeader { seq: 7, front_len: 3, crc: 0xabcd, ..MsgHeader::default() };
        let mut footer =
            MsgFooter { front_crc: 9, flags: FooterFlags::COMPLETE, ..MsgFooter::default() };
        mine.sign(&header, &mut footer);
        theirs.check(&header, &footer).unwrap();
        footer.front_crc ^= 1;
        assert_eq!(theirs.check(&header, &footer), Err(AuthError::BadSignature { seq: 7 }));
    }

    #[test]
    fn wrong_service_secret_is_rejected() {
        let mut rng = TestRng::new(1);
        let server = cluster(&mut rng);
        let other = cluster(&mut TestRng::new(2));
        let keys = RotatingKeyStore::new(EntityType::OSD, other.rotating(EntityType::OSD).unwrap());
        let step = exchange(&server, keys, start()).map(|_| ()).unwrap_err();
        assert!(matches!(step, AuthorizerStep::Reject), "{step:?}");
    }

    #[test]
    fn expired_ticket_is_rejected_through_the_wall_clock() {
        let mut rng = TestRng::new(1);
        let server = cluster(&mut rng);
        let keys =
            RotatingKeyStore::new(EntityType::OSD, server.rotating(EntityType::OSD).unwrap());
        let ttl = AuthConfig::ceph_defaults().auth_service_ticket_ttl;
        // The verifier's now is two hours and a second past the anchor (and the ticket):
        // a whole lifetime past its expiry.
        let anchor = start();
        let clock = WallClock::anchored(anchor, WALL0);
        assert_eq!(clock.wall(anchor + ttl), UTime::new(WALL0.sec + 3600, 0));
        let late = exchange_at(&server, keys, anchor, anchor + 2 * ttl + Duration::from_secs(1));
        assert!(matches!(late, Some(AuthorizerStep::Reject)), "{late:?}");
    }

    fn exchange_at(
        server: &KeyServer,
        keys: RotatingKeyStore,
        anchor: Instant,
        now: Instant,
    ) -> Option<AuthorizerStep> {
        let mut rng = TestRng::new(3);
        let clock = WallClock::anchored(anchor, WALL0);
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let t = server.service_ticket(&name, 4100, EntityType::OSD, WALL0, &mut rng).ok()?;
        let authorizer = Authorizer::new(4100, &t, &mut rng);
        let acceptor = CephxProvider::new(name, AuthConfig::ceph_defaults(), clock, rng_source(5))
            .with_keys(Arc::new(SharedKeyStore::new(keys)));
        let mut v = acceptor.authorizer_server()?;
        Some(v.verify(&AuthorizerRequest {
            peer_type: EntityType::OSD,
            method: AUTH_CEPHX,
            authorizer: authorizer.bytes(),
            features: Features::PACIFIC_ADVERTISED,
            now,
        }))
    }

    // A v1 connector with cephx required and no ticket for its peer's service sends no
    // connect: it faults, and retries after its backoff, as Ceph's does. It sent one
    // without an authorizer, and a peer answering READY opened a session neither
    // authenticated nor signed.
    #[test]
    fn a_v1_connector_without_a_ticket_sends_no_connect() {
        use crate::wire::{AcceptorBanner, ConnectMsg};
        let at = start();
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let clock = WallClock::anchored(at, WALL0);
        let osd = CephxProvider::new(name, AuthConfig::ceph_defaults(), clock, rng_source(1))
            .with_tickets(Arc::new(TicketStore::new(4100)));
        let me = crate::types::EntityAddr::legacy(([127, 0, 0, 1], 6800).into(), 1);
        let mut config = crate::Config::new(crate::types::EntityName::new(EntityType::OSD, 0), me);
        config.auth = Arc::new(osd);
        let peer = crate::types::EntityAddr::legacy(([127, 0, 0, 1], 6801).into(), 7);
        let policy = crate::Policy::lossless_peer();
        let mut c =
            crate::v1::Connection::connect(Arc::new(config), policy, peer, EntityType::OSD, at);
        c.handle_transport_connected(at);
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        let block = AcceptorBanner {
            my_addr: peer,
            peer_addr: crate::types::EntityAddr::legacy(([127, 0, 0, 1], 40000).into(), 0),
        };
        c.handle_bytes(at, Bytes::copy_from_slice(&block.to_bytes()));
        out.clear();
        c.poll_transmit(&mut out);
        let sent: usize = out.iter().map(Bytes::len).sum();
        assert!(sent < 136 + ConnectMsg::LEN, "a connect went out ({sent} bytes)");
        assert!(!c.is_open());
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        // Faulted: with nothing to send, a lossless peer waits in standby (to redial
        // when it has); before, the connect went out and nothing was raised.
        assert!(
            events
                .iter()
                .any(|e| matches!(e, crate::Event::Standby | crate::Event::Reconnect { .. })),
            "not faulted: {events:?}"
        );
    }

    // A monitor takes a v1 connect without an authorizer from a client or a daemon
    // (they authenticate with MAuth afterwards: the real monitor does, cephx.md 4), not
    // from a monitor. It answered BADAUTHORIZER to every one.
    #[test]
    fn a_monitor_takes_v1_connects_without_an_authorizer_but_from_monitors() {
        let at = start();
        let mon = CephxProvider::new(
            AuthEntityName::new(EntityType::MON, "a"),
            AuthConfig::ceph_defaults(),
            WallClock::anchored(at, WALL0),
            rng_source(1),
        );
        let empty = |peer_type| AuthorizerRequest {
            peer_type,
            method: 0,
            authorizer: &[],
            features: Features::PACIFIC_ADVERTISED,
            now: at,
        };
        let mut v = mon.authorizer_server().unwrap();
        for peer in [EntityType::CLIENT, EntityType::OSD, EntityType::MGR] {
            let step = v.verify(&empty(peer));
            assert!(
                matches!(step, AuthorizerStep::Accept { signer: None, peer: None, .. }),
                "{}",
                peer.name()
            );
        }
        assert!(matches!(v.verify(&empty(EntityType::MON)), AuthorizerStep::Reject));
        // Auth none's bytes, whole or not, are not read either (Ceph's monitor skips the
        // handler for a non-monitor); from a monitor they would be, and refused here.
        let garbage = |peer_type| AuthorizerRequest {
            peer_type,
            method: AUTH_NONE,
            authorizer: b"auth",
            features: Features::PACIFIC_ADVERTISED,
            now: at,
        };
        let step = v.verify(&garbage(EntityType::CLIENT));
        assert!(matches!(step, AuthorizerStep::Accept { peer: None, .. }));
        assert!(matches!(v.verify(&garbage(EntityType::MON)), AuthorizerStep::Reject));
    }

    // Where only auth none is allowed with a peer (auth_cluster_required = none), a v1
    // connector presents auth none's authorizer, as Ceph's does, and the acceptor
    // allowing none takes it; where cephx is required it refuses it.
    #[test]
    fn a_peer_allowed_only_auth_none_gets_auth_none_s_authorizer() {
        let at = start();
        let clock = WallClock::anchored(at, WALL0);
        let config = AuthConfig {
            auth_cluster_required: AuthMethods::none(),
            ..AuthConfig::ceph_defaults()
        };
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let osd0 = CephxProvider::new(name.clone(), config.clone(), clock, rng_source(1));
        let a = osd0.authorizer_client(EntityType::OSD).unwrap().unwrap();
        assert_eq!((a.method(), a.bytes()), (AUTH_NONE, AuthNoneAuthorizer::new(&name, 0).bytes()));
        fn req(bytes: &[u8], now: Instant) -> AuthorizerRequest<'_> {
            AuthorizerRequest {
                peer_type: EntityType::OSD,
                method: AUTH_NONE,
                authorizer: bytes,
                features: Features::PACIFIC_ADVERTISED,
                now,
            }
        }
        let osd1 = CephxProvider::new(
            AuthEntityName::new(EntityType::OSD, "1"),
            config,
            clock,
            rng_source(2),
        );
        let step = osd1.authorizer_server().unwrap().verify(&req(&a.bytes(), at));
        // It names the peer, every cap granted (Ceph's auth-none handler); cut short it
        // names nobody and is refused.
        let AuthorizerStep::Accept { peer: Some(peer), .. } = step else {
            panic!("auth none's authorizer not taken, or naming nobody");
        };
        assert_eq!((peer.name, peer.global_id), (name, 0));
        assert_eq!(peer.caps, super::super::ticket::AuthCapsInfo::allow_all());
        let step = osd1.authorizer_server().unwrap().verify(&req(&a.bytes()[..7], at));
        assert!(matches!(step, AuthorizerStep::Reject));
        let strict = CephxProvider::new(
            AuthEntityName::new(EntityType::OSD, "1"),
            AuthConfig::ceph_defaults(),
            clock,
            rng_source(3),
        );
        let step = strict.authorizer_server().unwrap().verify(&req(&a.bytes(), at));
        assert!(!matches!(step, AuthorizerStep::Accept { .. }));
    }

    // msgr v1 as msgr2 (`AuthProvider::allows_authenticated`): the methods were picked by
    // the host type the connect claims; the entity an auth-none authorizer names must be
    // allowed none too. A peer saying "client" in its connect and naming osd.0, where
    // clients may use none but the cluster requires cephx, passed as osd.0 with every
    // cap; a real client with none still gets in.
    #[test]
    fn a_v1_auth_none_authorizer_must_name_an_entity_allowed_none() {
        let at = start();
        let clock = WallClock::anchored(at, WALL0);
        let mut config = AuthConfig::ceph_defaults();
        config.set("auth_service_required", "cephx none").unwrap();
        config.set("auth_cluster_required", "cephx").unwrap();
        let osd1 = CephxProvider::new(
            AuthEntityName::new(EntityType::OSD, "1"),
            config,
            clock,
            rng_source(2),
        );
        for (named, accepted) in [(EntityType::OSD, false), (EntityType::CLIENT, true)] {
            let bytes = AuthNoneAuthorizer::new(&AuthEntityName::new(named, "0"), 0).bytes();
            let req = AuthorizerRequest {
                peer_type: EntityType::CLIENT,
                method: AUTH_NONE,
                authorizer: &bytes,
                features: Features::PACIFIC_ADVERTISED,
                now: at,
            };
            let step = osd1.authorizer_server().unwrap().verify(&req);
            assert_eq!(matches!(step, AuthorizerStep::Accept { .. }), accepted, "{named}");
        }
    }

    // A daemon whose rotating secrets were stale verifies once they are refreshed, on
    // the same provider (connections accepted later see the new secrets).
    #[test]
    fn refreshed_secrets_take_effect() {
        let mut rng = TestRng::new(1);
        let server = cluster(&mut rng);
        let stale = cluster(&mut TestRng::new(2));
        let keys = Arc::new(SharedKeyStore::new(RotatingKeyStore::new(
            EntityType::OSD,
            stale.rotating(EntityType::OSD).unwrap(),
        )));
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let t = server.service_ticket(&name, 4100, EntityType::OSD, WALL0, &mut rng).unwrap();
        let authorizer = Authorizer::new(4100, &t, &mut rng);
        let mut config = AuthConfig::ceph_defaults();
        config.cephx_cluster_require_version = 1;
        config.cephx_require_version = 1;
        let clock = WallClock::anchored(start(), WALL0);
        let osd = CephxProvider::new(name, config, clock, rng_source(5)).with_keys(keys.clone());
        let req = AuthorizerRequest {
            peer_type: EntityType::OSD,
            method: AUTH_CEPHX,
            authorizer: authorizer.bytes(),
            features: Features::PACIFIC_ADVERTISED,
            now: start(),
        };
        let step = osd.authorizer_server().unwrap().verify(&req);
        assert!(matches!(step, AuthorizerStep::Reject), "{step:?}");
        keys.set_rotating(server.rotating(EntityType::OSD).unwrap());
        // A peer without CEPHX_V2 cannot answer a challenge: at require_version 1 it is
        // let in without one.
        let old = AuthorizerRequest {
            features: Features::PACIFIC_ADVERTISED & !Features::CEPHX_V2,
            ..req
        };
        let step = osd.authorizer_server().unwrap().verify(&old);
        assert!(matches!(step, AuthorizerStep::Accept { signer: Some(_), .. }), "{step:?}");
        // One that can answer is challenged whatever require_version says (Ceph's
        // need_challenge): accepted at once, a captured authorizer would replay.
        let step = osd.authorizer_server().unwrap().verify(&req);
        assert!(matches!(step, AuthorizerStep::Challenge(_)), "{step:?}");
    }

    // Replay of a captured v1 authorizer. Ceph requires CEPHX_V2 of a v1 peer (else it
    // answers FEATURES) when `cephx_require_version >= 2` (the default) or the peer's
    // own `cephx_{service,cluster}_require_version >= 2` (ProtocolV1::
    // handle_connect_message_2), so every peer it lets in is challenged. An OSD with
    // cephx_service_require_version = 1 but cephx_require_version left at 2 took a
    // client.admin authorizer captured off the wire, replayed in a connect without
    // CEPHX_V2, with no challenge: a session as client.admin, its caps.
    #[test]
    fn a_replayed_v1_authorizer_is_challenged_while_cephx_require_version_is_2() {
        let mut rng = TestRng::new(1);
        let mut ring = KeyRing::new();
        let admin = AuthEntityName::new(EntityType::CLIENT, "admin");
        let key = CryptoKey::generate(WALL0, &mut rng);
        ring.insert(admin.clone(), KeyEntry::new(key).with_cap("osd", "allow *"));
        let server = KeyServer::new(ring, AuthConfig::ceph_defaults(), WALL0, &mut rng);
        let t = server.service_ticket(&admin, 4100, EntityType::OSD, WALL0, &mut rng).unwrap();
        let tickets = Arc::new(TicketStore::new(4100));
        tickets.insert(4100, t);
        let at = start();
        let clock = WallClock::anchored(at, WALL0);
        let client = CephxProvider::new(admin, AuthConfig::ceph_defaults(), clock, rng_source(4))
            .with_tickets(tickets);
        let captured = client.authorizer_client(EntityType::OSD).unwrap().unwrap().bytes();
        for (option, peer_type) in [
            ("cephx_service_require_version", EntityType::CLIENT),
            ("cephx_cluster_require_version", EntityType::OSD),
        ] {
            let mut config = AuthConfig::ceph_defaults();
            config.set(option, "1").unwrap();
            assert_eq!(config.cephx_require_version, 2);
            let keys =
                RotatingKeyStore::new(EntityType::OSD, server.rotating(EntityType::OSD).unwrap());
            let osd = CephxProvider::new(
                AuthEntityName::new(EntityType::OSD, "1"),
                config,
                clock,
                rng_source(5),
            )
            .with_keys(Arc::new(SharedKeyStore::new(keys)));
            let replay = AuthorizerRequest {
                peer_type,
                method: AUTH_CEPHX,
                authorizer: &captured,
                // Without MSG_AUTH too: no signatures are required by default, so
                // the session it got was not even signed.
                features: Features::PACIFIC_ADVERTISED & !Features::CEPHX_V2 & !Features::MSG_AUTH,
                now: at,
            };
            let step = osd.authorizer_server().unwrap().verify(&replay);
            assert!(
                !matches!(step, AuthorizerStep::Accept { .. }),
                "{option} = 1: replayed authorizer accepted without a challenge: {step:?}"
            );
        }
    }

    #[test]
    fn methods_follow_the_peer_type_and_none_where_allowed() {
        let clock = WallClock::anchored(start(), WALL0);
        let mut config = AuthConfig::ceph_defaults();
        config.auth_service_required = AuthMethods(vec![AUTH_CEPHX, AUTH_NONE]);
        let osd = CephxProvider::new(
            AuthEntityName::new(EntityType::OSD, "1"),
            config,
            clock,
            rng_source(1),
        );
        let mut v = osd.authorizer_server().unwrap();
        let empty = |peer_type| AuthorizerRequest {
            peer_type,
            method: AUTH_UNKNOWN,
            authorizer: &[],
            features: Features::PACIFIC_ADVERTISED,
            now: start(),
        };
        // A client may come without one (service allows none); a daemon may not.
        assert!(matches!(v.verify(&empty(EntityType::CLIENT)), AuthorizerStep::Accept { .. }));
        assert!(matches!(v.verify(&empty(EntityType::OSD)), AuthorizerStep::Reject));
        // No ticket: no authorizer, and no connect without one.
        let no_ticket = osd.authorizer_client(EntityType::OSD).err();
        assert!(matches!(no_ticket, Some(AuthError::NoTicket { service: "osd" })));
        assert!(osd.methods(AuthRole::Acceptor, EntityType::OSD).is_empty());
        assert_eq!(osd.methods(AuthRole::Acceptor, EntityType::CLIENT), [AUTH_NONE]);
    }
}
