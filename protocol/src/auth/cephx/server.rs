//! The monitor side of cephx (Ceph's `CephxServiceHandler` + `KeyServer`), sans-IO: fed
//! one `MAuth` at a time with the session it arrived on, the wall-clock time and a
//! random source; answers the `MAuthReply`. The key server is shared between sessions;
//! only its rotating secrets change, swapped whole by [`KeyServer::rotate`].
//!
//! Enough to authenticate the real `ceph` CLI and our own [`super::CephxClient`]:
//! challenge, proof check, auth ticket, extra and principal service tickets, renewal
//! and global_id reclaim with the old ticket (cephx.md 6), rotating secrets for
//! daemons; on the MAuth path, cephx is not offered to a connection without the
//! MSG_AUTH or CEPHX_V2 feature the config requires (Ceph's `AuthMonitor::prep_auth`).
//! Every credential failure answers `-EACCES`, as a 16.2.15 monitor does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use crate::auth::config::AuthConfig;
use crate::auth::crypto::CryptoKey;
use crate::auth::error::{AuthError, EACCES, EINVAL};
use crate::auth::keyring::KeyRing;
use crate::encoding::{Decoder, Encoder, UTime};
use crate::messages::{AuthNegotiation, MAuth, MAuthReply};
use crate::types::{AuthEntityName, EntityType, Features, AUTH_CEPHX, AUTH_NONE, AUTH_UNKNOWN};

use super::authorizer::{AuthorizerA, AuthorizerVerdict, AuthorizerVerifier};
use super::request::{
    challenge_proof, Authenticate, RequestType, ResponseHeader, ServerChallenge, ServiceMask,
    ServiceTicketRequest,
};
use super::rotating::{KeyStore, RotatingSecrets};
use super::ticket::{
    encode_ticket_reply, utime_add, AuthCapsInfo, AuthTicket, IssuedTicket, ReceivedTicket,
    ServiceTicketInfo, MAX_TICKET_LIFETIME, SECRET_ID_OWN_KEY,
};

const LOG: &str = "msgr::auth";

/// Rotating secrets kept per service: previous, current, next.
const ROTATING_WINDOW: usize = 3;
/// Most times one [`KeyServer::rotate`] builds new secrets: a build that lost the race
/// to a concurrent rotation looks again at the winner's secrets, which are current as a
/// rule; the bound keeps a caller from spinning whatever the others do.
const ROTATE_ATTEMPTS: usize = 3;
/// The services a key server keeps rotating secrets for.
const ROTATING_SERVICES: [EntityType; 5] =
    [EntityType::AUTH, EntityType::MON, EntityType::OSD, EntityType::MDS, EntityType::MGR];

/// Where one client's session with the monitor is (one per connection).
#[derive(Clone, Debug, Default)]
pub enum ServerSession {
    /// Nothing received yet.
    #[default]
    New,
    /// Round 1 answered with a server challenge.
    Challenged {
        /// Who is authenticating.
        name: AuthEntityName,
        /// The global id given (or kept).
        global_id: u64,
        /// The session's challenge (reused for renewals).
        server_challenge: u64,
        /// The client asked to keep a previous global id.
        reclaim: bool,
    },
    /// Authenticated.
    Authenticated {
        /// Who.
        name: AuthEntityName,
        /// Its global id.
        global_id: u64,
        /// The session's challenge.
        server_challenge: u64,
    },
    /// Negotiated auth none (the key server allowed it).
    AuthNone {
        /// Its global id.
        global_id: u64,
    },
}

impl ServerSession {
    /// The authenticated entity and its global id, once authenticated.
    pub fn authenticated(&self) -> Option<(&AuthEntityName, u64)> {
        match self {
            ServerSession::Authenticated { name, global_id, .. } => Some((name, *global_id)),
            _ => None,
        }
    }
}

/// Every service's rotating secrets.
type RotatingMap = BTreeMap<EntityType, RotatingSecrets>;

/// A monitor's key server: every entity's secret and caps, and the rotating service
/// secrets that seal tickets.
///
/// Shared (`Arc`) between whatever answers a monitor's clients, as Ceph's is between
/// its monitor's sessions: its rotating secrets rotate through `&self`
/// ([`KeyServer::rotate`]).
#[derive(Debug)]
pub struct KeyServer {
    keyring: KeyRing,
    /// Swapped whole by a rotation, built outside the lock: a reader clones the `Arc`
    /// and lets go, so the lock is held across neither key generation nor sealing,
    /// and a ticket is sealed with one set or the next, never a mix.
    rotating: RwLock<Arc<RotatingMap>>,
    config: AuthConfig,
}

impl Clone for KeyServer {
    fn clone(&self) -> Self {
        KeyServer {
            keyring: self.keyring.clone(),
            rotating: RwLock::new(self.secrets()),
            config: self.config.clone(),
        }
    }
}

/// Whether `r`, whose secrets rotate every `period`, wants a new one at `now`: its
/// window is short of three, or its current secret expired (Ceph's
/// `RotatingSecrets::need_new_secrets`). Never with a zero period, which would expire
/// every new secret at once.
fn rotation_due(r: &RotatingSecrets, period: Duration, now: UTime) -> bool {
    !period.is_zero()
        && (r.secrets.len() < ROTATING_WINDOW
            || r.current().is_none_or(|(_, k)| k.expiration <= now))
}

/// Rotates `r` until its current secret is valid past `now`: a new "next" secret comes,
/// expiring a period after the later of `now + period` and the newest one's expiration,
/// and the oldest goes (Ceph's `KeyServer::_rotate_secret`).
fn rotate_secrets(
    r: &mut RotatingSecrets,
    period: Duration,
    now: UTime,
    rng: &mut dyn CryptoRngCore,
) {
    // Each new secret expires at least two periods past `now`: once one is current the
    // loop ends, after two passes from a full window and three from an empty one,
    // whatever `now` says. Chained from the newest secret alone, the new ones stayed
    // in the past after a long pause, and every later call replaced the whole window
    // again.
    for _ in 0..ROTATING_WINDOW {
        if !rotation_due(r, period, now) {
            break;
        }
        let soonest = utime_add(now, period);
        let from = match r.secrets.values().next_back() {
            Some(newest) => newest.expiration.max(soonest),
            None => now,
        };
        let id = r.max_ver + 1;
        r.secrets.insert(
            id,
            super::rotating::ExpiringCryptoKey {
                key: CryptoKey::generate(now, rng),
                expiration: utime_add(from, period),
            },
        );
        r.max_ver = id;
        while r.secrets.len() > ROTATING_WINDOW {
            r.secrets.pop_first();
        }
    }
}

/// How long a rotating secret of `service` lives: auth tickets' lifetime for AUTH (they
/// are sealed with its secrets and renewed against them for that long), service
/// tickets' for the rest (Ceph's `KeyServer::_rotate_secret`). At the service period
/// (1 h) AUTH's secrets were gone while the auth tickets they sealed (72 h) had days to
/// run, and renewing with one failed.
fn rotation_period(config: &AuthConfig, service: EntityType) -> Duration {
    if service == EntityType::AUTH {
        config.auth_mon_ticket_ttl
    } else {
        config.auth_service_ticket_ttl
    }
}

impl KeyServer {
    /// A key server for the entities of `keyring`, with fresh rotating secrets for
    /// auth, mon, osd, mds and mgr made at `now`. Uses `config`'s methods, ticket ttls
    /// and `auth_allow_insecure_global_id_reclaim`.
    pub fn new(
        keyring: KeyRing,
        config: AuthConfig,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
    ) -> Self {
        let rotating = ROTATING_SERVICES
            .into_iter()
            .map(|s| (s, RotatingSecrets::generate(now, rotation_period(&config, s), 1, rng)))
            .collect();
        KeyServer { keyring, rotating: RwLock::new(Arc::new(rotating)), config }
    }

    /// The rotating secrets of `service`, as they are now.
    pub fn rotating(&self, service: EntityType) -> Option<RotatingSecrets> {
        self.secrets().get(&service).cloned()
    }

    /// Every service's rotating secrets, as they are now.
    fn secrets(&self) -> Arc<RotatingMap> {
        Arc::clone(&self.rotating.read())
    }

    /// Rotates any service whose current secret expired at `now` (or whose window is
    /// short of three): a new "next" secret comes, expiring a period after the later of
    /// `now + period` and the newest one's expiration, and the oldest goes, until the
    /// current secret is valid past `now` (Ceph's `KeyServer::_rotate_secret`). True
    /// when it rotated something.
    ///
    /// A monitor calls it before it issues tickets (a [`super::CephxProvider`] with
    /// this key server does), or on a timer as Ceph's does on its tick; calls that find
    /// nothing due cost a look. Concurrent calls are safe: one of them rotates.
    pub fn rotate(&self, now: UTime, rng: &mut dyn CryptoRngCore) -> bool {
        for _ in 0..ROTATE_ATTEMPTS {
            let before = self.secrets();
            let due = |(&s, r): (&EntityType, &RotatingSecrets)| {
                rotation_due(r, rotation_period(&self.config, s), now)
            };
            if !before.iter().any(due) {
                return false;
            }
            let mut next = RotatingMap::clone(&before);
            for (&service, r) in next.iter_mut() {
                rotate_secrets(r, rotation_period(&self.config, service), now, rng);
            }
            let mut current = self.rotating.write();
            // Another rotation from the same secrets came first: ours would give the
            // ids it handed out to other keys.
            if Arc::ptr_eq(&current, &before) {
                *current = Arc::new(next);
                drop(current);
                log::debug!(target: LOG, "rotating secrets rotated at {}", now.sec);
                return true;
            }
        }
        false
    }

    /// `name`'s caps for `service` from the keyring (none for an unknown entity).
    pub fn caps_for(&self, name: &AuthEntityName, service: EntityType) -> AuthCapsInfo {
        self.keyring
            .get(name)
            .and_then(|e| e.caps.get(service.name()))
            .map(|c| AuthCapsInfo::from_cap_string(c))
            .unwrap_or_default()
    }

    /// Mints a ticket for `service` as if `name` (with `global_id`) had asked for it:
    /// sealed with the service's current rotating secret, valid for
    /// `auth_service_ticket_ttl`, with `name`'s caps for that service. For embedded
    /// clusters and tests that hand tickets to their clients without a monitor.
    pub fn service_ticket(
        &self,
        name: &AuthEntityName,
        global_id: u64,
        service: EntityType,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<ReceivedTicket, AuthError> {
        let entry =
            self.keyring.get(name).ok_or_else(|| AuthError::UnknownEntity(name.to_string()))?;
        let caps = entry
            .caps
            .get(service.name())
            .map(|c| AuthCapsInfo::from_cap_string(c))
            .unwrap_or_default();
        let ttl = self.config.auth_service_ticket_ttl;
        let t = self.issue(service, name, global_id, caps, ttl, now, rng)?;
        Ok(ReceivedTicket {
            service: t.service,
            session_key: t.session_key,
            validity: t.validity,
            blob: t.blob,
        })
    }

    /// Answers one `MAuth` of `session`, which arrived on a connection with
    /// `peer_features`: without MSG_AUTH or CEPHX_V2 where the config requires them,
    /// cephx is not offered to it ([`AuthConfig::mon_disallows_cephx`]). `new_global_id`
    /// hands out a fresh global id when the client has none to reclaim.
    pub fn handle_request(
        &self,
        session: &mut ServerSession,
        auth: &MAuth,
        peer_features: Features,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
        new_global_id: &mut dyn FnMut() -> u64,
    ) -> MAuthReply {
        let result = if auth.protocol == AUTH_UNKNOWN {
            self.negotiate(session, &auth.auth_payload, Some(peer_features), rng, new_global_id)
        } else if auth.protocol == AUTH_CEPHX {
            self.cephx_request(session, &auth.auth_payload, now, rng, None).map(|(p, b, _)| (p, b))
        } else {
            Err((AUTH_UNKNOWN, AuthError::UnexpectedMethod { method: auth.protocol }))
        };
        let global_id = match session {
            ServerSession::Challenged { global_id, .. }
            | ServerSession::Authenticated { global_id, .. }
            | ServerSession::AuthNone { global_id } => *global_id,
            ServerSession::New => 0,
        };
        match result {
            Ok((protocol, result_bl)) => {
                MAuthReply { protocol, result: 0, global_id, result_bl, result_msg: String::new() }
            }
            Err((protocol, e)) => {
                log::info!(target: LOG, "refusing MAuth (global_id {global_id}): {e}");
                MAuthReply {
                    protocol,
                    result: -e.errno(),
                    global_id: if protocol == AUTH_UNKNOWN { 0 } else { global_id },
                    ..MAuthReply::default()
                }
            }
        }
    }

    /// msgr2, AUTH_MODE_MON (msgr-v2.md 5.3): the first AUTH_REQUEST's payload after
    /// its mode byte — `name` asking for cephx with `global_id` (0: a new one from
    /// `new_global_id`). Returns the AUTH_REPLY_MORE payload (the server challenge) and
    /// the session's global id.
    #[doc(alias = "start_session")]
    pub fn start_v2(
        &self,
        session: &mut ServerSession,
        name: AuthEntityName,
        global_id: u64,
        rng: &mut dyn CryptoRngCore,
        new_global_id: &mut dyn FnMut() -> u64,
    ) -> Result<(Bytes, u64), AuthError> {
        let n = AuthNegotiation { methods: vec![AUTH_CEPHX], name, global_id };
        // No feature check: msgr2 needs neither (Ceph's Monitor::handle_auth_request).
        let (method, challenge) =
            self.negotiate(session, &n.encode(), None, rng, new_global_id).map_err(|(_, e)| e)?;
        match (method, &*session) {
            (AUTH_CEPHX, ServerSession::Challenged { global_id, .. }) => {
                Ok((challenge, *global_id))
            }
            _ => Err(AuthError::NoAcceptableMethod { offered: vec![AUTH_CEPHX] }),
        }
    }

    /// msgr2, AUTH_MODE_MON: an AUTH_REQUEST_MORE's payload (a cephx request, in
    /// practice GET_AUTH_SESSION_KEY). Returns AUTH_DONE's payload — with
    /// `connection_secret` sealed in it — and the auth ticket's session key (which
    /// signs the pre-auth transcript).
    pub fn handle_v2_more(
        &self,
        session: &mut ServerSession,
        payload: &[u8],
        now: UTime,
        rng: &mut dyn CryptoRngCore,
        connection_secret: &[u8],
    ) -> Result<(Bytes, CryptoKey), AuthError> {
        let (_, body, key) = self
            .cephx_request(session, payload, now, rng, Some(connection_secret))
            .map_err(|(_, e)| e)?;
        let key = key.ok_or(AuthError::Malformed("msgr2 auth must ask for the session key"))?;
        Ok((body, key))
    }

    /// Round 1: the method, the global id and (cephx) the server challenge.
    /// `peer_features`: the MAuth path's connection features (`None` over msgr2).
    fn negotiate(
        &self,
        session: &mut ServerSession,
        payload: &[u8],
        peer_features: Option<Features>,
        rng: &mut dyn CryptoRngCore,
        new_global_id: &mut dyn FnMut() -> u64,
    ) -> Result<(u32, Bytes), (u32, AuthError)> {
        let n =
            AuthNegotiation::decode(payload).map_err(|e| (AUTH_UNKNOWN, AuthError::Decode(e)))?;
        let named = EntityType::from_u32(n.name.ty);
        let peer = named.unwrap_or(EntityType::CLIENT);
        let allowed = self.config.accepted_from(peer);
        let no_cephx = peer_features
            .is_some_and(|f| self.config.mon_disallows_cephx(named.unwrap_or(EntityType::ANY), f));
        if no_cephx {
            log::info!(target: LOG, "{} supports cephx but lacks MSG_AUTH or CEPHX_V2 that the config requires: disallowing cephx", n.name);
        }
        // The first of our methods the client offered (Ceph: `AuthRegistry::pick`).
        let method = allowed
            .0
            .iter()
            .copied()
            .filter(|&m| !(no_cephx && m == AUTH_CEPHX))
            .find(|m| n.methods.contains(m))
            .ok_or((AUTH_UNKNOWN, AuthError::NoAcceptableMethod { offered: n.methods.clone() }))?;
        let reclaim = n.global_id != 0;
        let global_id = if reclaim { n.global_id } else { new_global_id() };
        if method == AUTH_NONE {
            *session = ServerSession::AuthNone { global_id };
            return Ok((AUTH_NONE, Bytes::new()));
        }
        let mut server_challenge = rng.next_u64();
        while server_challenge == 0 {
            server_challenge = rng.next_u64();
        }
        *session = ServerSession::Challenged { name: n.name, global_id, server_challenge, reclaim };
        let mut e = Encoder::with_capacity(9);
        ServerChallenge { server_challenge }.encode(&mut e);
        Ok((AUTH_CEPHX, e.into_bytes()))
    }

    /// One cephx request; also the auth ticket's session key when it issued one.
    fn cephx_request(
        &self,
        session: &mut ServerSession,
        payload: &[u8],
        now: UTime,
        rng: &mut dyn CryptoRngCore,
        connection_secret: Option<&[u8]>,
    ) -> Result<(u32, Bytes, Option<CryptoKey>), (u32, AuthError)> {
        let cephx = |e: AuthError| (AUTH_CEPHX, e);
        let mut d = Decoder::new(payload);
        let request = RequestType::decode(&mut d).map_err(cephx)?;
        let mut e = Encoder::with_capacity(256);
        let mut issued = None;
        match request {
            RequestType::GET_AUTH_SESSION_KEY => {
                let (body, key) = self
                    .session_key(session, &mut d, now, rng, connection_secret)
                    .map_err(cephx)?;
                issued = Some(key);
                ResponseHeader { request_type: request, status: 0 }.encode(&mut e);
                e.bytes(&body);
            }
            RequestType::GET_PRINCIPAL_SESSION_KEY => {
                let body = self.principal(session, d.rest(), now, rng).map_err(cephx)?;
                ResponseHeader { request_type: request, status: 0 }.encode(&mut e);
                e.bytes(&body);
            }
            RequestType::GET_ROTATING_KEY => {
                let (name, _) = session
                    .authenticated()
                    .ok_or(cephx(AuthError::Misuse("rotating keys before authentication")))?;
                let ty = EntityType::from_u32(name.ty).unwrap_or(EntityType::CLIENT);
                let all = self.secrets();
                let secrets = all
                    .get(&ty)
                    .filter(|_| ty != EntityType::CLIENT && ty != EntityType::AUTH)
                    .ok_or(cephx(AuthError::Refused { code: -EINVAL, message: String::new() }))?;
                let key = self
                    .keyring
                    .key(name)
                    .map_err(|_| cephx(AuthError::UnknownEntity(name.to_string())))?;
                ResponseHeader { request_type: request, status: 0 }.encode(&mut e);
                key.seal_blob(&mut e, |e| secrets.encode(e));
            }
            _ => return Err(cephx(AuthError::Malformed("unknown cephx request type"))),
        }
        Ok((AUTH_CEPHX, e.into_bytes(), issued))
    }

    /// GET_AUTH_SESSION_KEY: check the proof and the old ticket, issue the auth ticket
    /// (and the extra service tickets asked for in `other_keys`).
    ///
    /// `connection_secret`: msgr2's, sealed under the new session key in the reply;
    /// `None` on the MAuth path (an empty blob there, cephx.md 4.2).
    fn session_key(
        &self,
        session: &mut ServerSession,
        d: &mut Decoder<'_>,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
        connection_secret: Option<&[u8]>,
    ) -> Result<(Vec<u8>, CryptoKey), AuthError> {
        let (name, global_id, server_challenge, reclaim, renewal) = match session {
            ServerSession::Challenged { name, global_id, server_challenge, reclaim } => {
                (name.clone(), *global_id, *server_challenge, *reclaim, false)
            }
            ServerSession::Authenticated { name, global_id, server_challenge } => {
                (name.clone(), *global_id, *server_challenge, false, true)
            }
            _ => return Err(AuthError::Misuse("cephx request before negotiation")),
        };
        let req = Authenticate::decode(d)?;
        let entry =
            self.keyring.get(&name).ok_or_else(|| AuthError::UnknownEntity(name.to_string()))?;
        let expected = challenge_proof(&entry.key, server_challenge, req.client_challenge);
        if !bool::from(expected.to_le_bytes().ct_eq(&req.key.to_le_bytes())) {
            return Err(AuthError::PermissionDenied {
                entity: name.to_string(),
                code: -EACCES,
                message: "unexpected key".into(),
            });
        }
        // The old ticket proves a reclaimed global id (cephx.md 6).
        let old = if req.old_ticket.is_empty() {
            None
        } else {
            if !reclaim && !renewal {
                return Err(AuthError::Malformed("superfluous old ticket for a new global id"));
            }
            let opened = self
                .service_secret(EntityType::AUTH, req.old_ticket.secret_id)
                .ok_or(AuthError::MissingServiceSecret {
                    service: "auth",
                    secret_id: req.old_ticket.secret_id,
                })
                .and_then(|secret| ServiceTicketInfo::open(&req.old_ticket, &secret))
                .ok()
                .filter(|info| info.ticket.global_id == global_id && info.ticket.name == name);
            if opened.is_none() && !self.config.auth_allow_insecure_global_id_reclaim {
                return Err(AuthError::BadAuthorizer("old ticket does not prove the global id"));
            }
            opened
        };
        // Every request but a new global id's first proves the id with the old ticket:
        // a reclaim, and a renewal on an authenticated session too (Ceph's
        // verify_old_ticket asks for it in every state past NEW_PENDING, with the same
        // allowance for a legacy client where insecure reclaim is allowed).
        if (reclaim || renewal) && old.is_none() {
            let insecure_ok = req.struct_v < 3 && self.config.auth_allow_insecure_global_id_reclaim;
            if !insecure_ok {
                return Err(AuthError::BadAuthorizer("global id reclaim without the old ticket"));
            }
        }
        if entry.caps.get("mon").is_none_or(|c| c.is_empty()) {
            return Err(AuthError::PermissionDenied {
                entity: name.to_string(),
                code: -EACCES,
                message: "no mon caps".into(),
            });
        }
        let auth_ttl = self.config.auth_mon_ticket_ttl;
        let mut auth = self.issue(
            EntityType::AUTH,
            &name,
            global_id,
            AuthCapsInfo::default(),
            auth_ttl,
            now,
            rng,
        )?;
        auth.encrypt_blob_with = old.map(|o| o.session_key);
        let session_key = auth.session_key.clone();
        let mut out = Encoder::with_capacity(512);
        encode_ticket_reply(&mut out, &entry.key, std::slice::from_ref(&auth));
        if !req.other_keys.is_empty() {
            // The connection secret: empty on the MAuth path (cephx.md 4.2); over msgr2
            // sealed under the session key, even when empty (crc mode), as Ceph does.
            match connection_secret {
                None => {
                    out.blob(&[]);
                }
                Some(secret) => {
                    let mut sealed = Encoder::with_capacity(secret.len() + 48);
                    session_key.seal_blob(&mut sealed, |e| {
                        e.blob(secret);
                    });
                    out.blob(sealed.as_slice());
                }
            }
            let wanted = req.other_keys.without(ServiceMask::AUTH);
            let extra = self.service_tickets(&name, global_id, wanted, now, rng);
            if extra.is_empty() {
                out.blob(&[]);
            } else {
                let mut x = Encoder::with_capacity(200 * extra.len());
                encode_ticket_reply(&mut x, &session_key, &extra);
                out.blob(x.as_slice());
            }
        }
        log::debug!(target: LOG, "{name} global_id {global_id}: auth ticket (renewal {renewal})");
        *session = ServerSession::Authenticated { name, global_id, server_challenge };
        Ok((out.into_vec(), session_key))
    }

    /// GET_PRINCIPAL_SESSION_KEY: an authorizer for the auth service, then the wanted
    /// services.
    fn principal(
        &self,
        session: &mut ServerSession,
        payload: &[u8],
        now: UTime,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Vec<u8>, AuthError> {
        let (name, global_id) = session
            .authenticated()
            .map(|(n, g)| (n.clone(), g))
            .ok_or(AuthError::Misuse("service tickets before authentication"))?;
        // The authorizer is part A then a sealed blob; the ticket request follows it.
        let mut d = Decoder::new(payload);
        AuthorizerA::decode(&mut d)?;
        d.blob()?;
        let (authorizer, rest) = payload.split_at(d.position());
        let verdict = AuthorizerVerifier::new().verify(
            self,
            EntityType::AUTH,
            authorizer,
            false,
            now,
            None,
            rng,
        )?;
        let AuthorizerVerdict::Accepted(acc) = verdict else {
            return Err(AuthError::BadAuthorizer("unexpected challenge"));
        };
        if acc.ticket.global_id != global_id || acc.ticket.name != name {
            return Err(AuthError::BadAuthorizer("auth ticket of another entity"));
        }
        let req = ServiceTicketRequest::decode(&mut Decoder::new(rest))?;
        let tickets =
            self.service_tickets(&name, global_id, req.keys.without(ServiceMask::AUTH), now, rng);
        let mut out = Encoder::with_capacity(200 * tickets.len() + 8);
        encode_ticket_reply(&mut out, &acc.session_key, &tickets);
        Ok(out.into_vec())
    }

    fn service_tickets(
        &self,
        name: &AuthEntityName,
        global_id: u64,
        wanted: ServiceMask,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
    ) -> Vec<IssuedTicket> {
        let caps = self.keyring.get(name).map(|e| e.caps.clone()).unwrap_or_default();
        let ttl = self.config.auth_service_ticket_ttl;
        wanted
            .iter()
            .filter_map(|service| {
                // Mon caps are checked by the monitor itself: its tickets carry none.
                let caps = match caps.get(service.name()) {
                    Some(c) if service != EntityType::MON => AuthCapsInfo::from_cap_string(c),
                    _ => AuthCapsInfo::default(),
                };
                self.issue(service, name, global_id, caps, ttl, now, rng).ok()
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        service: EntityType,
        name: &AuthEntityName,
        global_id: u64,
        caps: AuthCapsInfo,
        ttl: Duration,
        now: UTime,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<IssuedTicket, AuthError> {
        let all = self.secrets();
        let (secret_id, secret) = all
            .get(&service)
            .and_then(|r| r.current())
            .ok_or(AuthError::MissingServiceSecret { service: service.name(), secret_id: 0 })?;
        // Daemons refuse a ticket valid for longer (ticket.rs).
        let ttl = ttl.min(MAX_TICKET_LIFETIME);
        let session_key = CryptoKey::generate(now, rng);
        let info = ServiceTicketInfo {
            ticket: AuthTicket {
                name: name.clone(),
                global_id,
                created: now,
                expires: utime_add(now, ttl),
                caps,
                flags: 0,
            },
            session_key: session_key.clone(),
        };
        Ok(IssuedTicket {
            service,
            session_key,
            validity: ttl,
            blob: info.seal(secret_id, &secret.key),
            encrypt_blob_with: None,
        })
    }
}

impl KeyStore for KeyServer {
    fn service_secret(&self, service: EntityType, secret_id: u64) -> Option<CryptoKey> {
        if secret_id == SECRET_ID_OWN_KEY {
            return self.keyring.get(&AuthEntityName::new(service, "")).map(|e| e.key.clone());
        }
        self.secrets().get(&service)?.get(secret_id).cloned()
    }
}
