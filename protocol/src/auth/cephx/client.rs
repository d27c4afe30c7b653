//! The client side of cephx with a monitor: a sans-IO state machine fed `MAuthReply`s
//! and the time (Ceph's `CephxClientHandler` and the auth part of `MonClient`).
//!
//! ```text
//!  start ──► AwaitChallenge ──(server challenge)──► AwaitSessionKey ──(auth ticket)──► Ready
//!              │ MAuth proto 0 {[cephx], name,        │ GET_AUTH_SESSION_KEY               │
//!              │   global_id (reclaim) }              │ {proof, old ticket, other_keys}    │
//!              ▼                                      ▼                                    │
//!            Failed ◄──── error result / bad reply / timeout ─────────────────────────────┘
//!  Ready: renewal (GET_AUTH_SESSION_KEY with the old ticket, same server challenge),
//!         service tickets (GET_PRINCIPAL_SESSION_KEY), rotating secrets (GET_ROTATING_KEY).
//! ```
//!
//! How to drive it (quinn style):
//! - inputs: [`CephxClient::handle_reply`] for every `MAuthReply`,
//!   [`CephxClient::handle_timeout`] when [`CephxClient::poll_timeout`] passes;
//! - commands: [`CephxClient::start`] on every new monitor session,
//!   [`CephxClient::request_service_tickets`], [`CephxClient::request_rotating_secrets`];
//! - outputs: [`CephxClient::poll_request`] (the next `MAuth` to send; at most one is
//!   outstanding), [`CephxClient::poll_event`], [`CephxClient::poll_timeout`].
//!
//! After every input or command, drain `poll_request` and `poll_event` and re-arm the
//! timer from `poll_timeout`. Every request has a deadline, so nothing waits forever;
//! an error result is final until the next [`CephxClient::start`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::auth::crypto::CryptoKey;
use crate::auth::error::AuthError;
use crate::encoding::{Decoder, Encoder};
use crate::messages::{AuthNegotiation, MAuth, MAuthReply};
use crate::types::{AuthEntityName, EntityType, AUTH_CEPHX, AUTH_UNKNOWN};

use super::authorizer::Authorizer;
use super::request::{
    challenge_proof, Authenticate, RequestType, ResponseHeader, ServerChallenge, ServiceMask,
    ServiceTicketRequest,
};
use super::rotating::RotatingSecrets;
use super::ticket::{decode_ticket_reply, ReceivedTicket};

const LOG: &str = "msgr::auth";

/// The soonest a service the monitor left out of its answer is asked for again: Ceph's
/// MonClient checks its tickets on its tick, once a second (the smaller of
/// `mon_client_ping_interval` and `mon_client_log_interval`). It was asked again at
/// once, at the speed of the round trip.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The soonest a ticket is renewed after it came, whatever its validity: a monitor
/// handing out tickets of no validity was otherwise asked again at once, over and over.
/// Short enough for the shortest ttl a monitor takes (a 16.2 monitor accepts 0.5 s,
/// renewed at 375 ms).
const MIN_RENEWAL_AFTER: Duration = Duration::from_millis(100);

/// What a [`CephxClient`] needs to know.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Who we authenticate as (`client.admin`, `osd.0`).
    pub name: AuthEntityName,
    /// Our secret (from the keyring).
    pub key: CryptoKey,
    /// Service tickets to get and keep fresh (mon, osd, mgr, mds).
    pub want_services: ServiceMask,
    /// How long one request may wait for its reply.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A client `name` with `key` wanting tickets for mon, osd and mgr, 30 s per
    /// request.
    pub fn new(name: AuthEntityName, key: CryptoKey) -> Self {
        ClientConfig {
            name,
            key,
            want_services: ServiceMask::CLIENT_SERVICES,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What happened, for the owner of a [`CephxClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// This monitor session is authenticated; we are `global_id` (it becomes our
    /// `client.<global_id>`). `reclaimed` when it is the id we asked to keep.
    Authenticated {
        /// Our global id.
        global_id: u64,
        /// Whether the monitor let us keep our previous global id.
        reclaimed: bool,
    },
    /// The auth ticket was renewed on the current session.
    AuthTicketRenewed,
    /// New service tickets arrived for these services.
    ServiceTickets(ServiceMask),
    /// A daemon's rotating service secrets arrived (GET_ROTATING_KEY).
    RotatingSecrets(RotatingSecrets),
}

/// A ticket we hold and when to renew it.
#[derive(Clone, Debug)]
struct Held {
    ticket: ReceivedTicket,
    /// 75 % of the validity (Ceph's `renew_after`), but no sooner than
    /// [`MIN_RENEWAL_AFTER`].
    renew_at: Instant,
    /// End of validity on our clock.
    expires_at: Instant,
}

impl Held {
    fn new(ticket: ReceivedTicket, now: Instant) -> Self {
        // No longer than the wire can say (u32 seconds): a ticket minted locally with a
        // user's ttl may say more, and `Instant + Duration` panics past its range.
        let v = ticket.validity.min(Duration::from_secs(u64::from(u32::MAX)));
        Held { renew_at: now + (v - v / 4).max(MIN_RENEWAL_AFTER), expires_at: now + v, ticket }
    }
}

/// Where the current monitor session is.
#[derive(Clone, Debug)]
enum Phase {
    /// No session: call [`CephxClient::start`].
    Idle,
    /// Negotiation sent (or about to be); waiting for the server challenge.
    AwaitChallenge {
        /// Whether the round-1 MAuth went out.
        sent: bool,
    },
    /// Got the challenge; GET_AUTH_SESSION_KEY sent (or about to be).
    AwaitSessionKey {
        /// The session's server challenge (reused for renewals).
        server_challenge: u64,
        /// Whether we asked to keep a previous global id.
        reclaiming: bool,
    },
    /// Authenticated on this session.
    Ready {
        /// The session's server challenge.
        server_challenge: u64,
    },
    /// Gave up until the next `start`.
    Failed(AuthError),
}

/// Which request is waiting for its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outstanding {
    Negotiate,
    SessionKey,
    Principal(ServiceMask),
    Rotating,
}

/// A cephx client of a monitor (see the module docs for the state diagram and how to
/// drive it).
pub struct CephxClient {
    config: ClientConfig,
    rng: Box<dyn CryptoRngCore + Send>,
    phase: Phase,
    /// Our global id (0 before the first authentication); kept across sessions to
    /// reclaim it.
    global_id: u64,
    /// The auth ticket (kept across sessions: it proves our global id on reconnect).
    auth: Option<Held>,
    /// Service tickets by service.
    services: BTreeMap<EntityType, Held>,
    /// The connection secret of the last auth reply (msgr v2; empty over v1).
    connection_secret: Vec<u8>,
    /// The request waiting for its reply and its deadline.
    outstanding: Option<(Outstanding, Instant)>,
    /// The auth ticket is due for renewal.
    want_renewal: bool,
    /// Service tickets to ask for.
    want_services: ServiceMask,
    /// Rotating secrets to ask for.
    want_rotating: bool,
    /// When the wanted services we hold no ticket for (the monitor left them out of its
    /// answer) are asked for again: Ceph's MonClient asks on every tick while its
    /// handler `need_tickets`.
    recheck_missing_at: Option<Instant>,
    /// Events not yet polled; at most a few per reply, drained by the owner.
    events: VecDeque<ClientEvent>,
}

impl std::fmt::Debug for CephxClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephxClient")
            .field("name", &self.config.name.to_string())
            .field("global_id", &self.global_id)
            .field("phase", &self.phase)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl CephxClient {
    /// A client with no session yet; `rng` provides challenges and nonces.
    pub fn new(config: ClientConfig, rng: Box<dyn CryptoRngCore + Send>) -> Self {
        let want_services = config.want_services;
        CephxClient {
            config,
            rng,
            phase: Phase::Idle,
            global_id: 0,
            auth: None,
            services: BTreeMap::new(),
            connection_secret: Vec::new(),
            outstanding: None,
            want_renewal: false,
            want_services,
            want_rotating: false,
            recheck_missing_at: None,
            events: VecDeque::new(),
        }
    }

    // ---- commands ----

    /// Begins authentication on a new monitor session (first connect or reconnect).
    /// A previous global id and auth ticket are offered back (global_id reclaim,
    /// cephx.md 6), so the monitor keeps our id.
    pub fn start(&mut self, _now: Instant) {
        if self.auth.is_none() && self.global_id != 0 {
            // An id a challenge handed out to a session that never got its ticket (the
            // connection was lost before the session key came): claimed without a
            // ticket, the monitor refuses it for good (-EACCES). Ceph's MonClient keeps
            // for reclaim only the id of a session that authenticated, with its ticket.
            log::debug!(target: LOG, "{}: global_id {} came with no ticket: asking for a new one", self.config.name, self.global_id);
            self.global_id = 0;
        }
        log::debug!(target: LOG, "{}: start (global_id {})", self.config.name, self.global_id);
        self.phase = Phase::AwaitChallenge { sent: false };
        self.outstanding = None;
        self.want_renewal = false;
        self.want_services = self.want_services.with(self.config.want_services);
        self.recheck_missing_at = None;
    }

    /// Takes up an earlier session's global id and auth ticket (e.g. of another
    /// connection to the monitors), so the next [`CephxClient::start`] reclaims that id
    /// with the ticket as proof (cephx.md 6). Service tickets held for another global
    /// id go: an authorizer names the global id, which must be its ticket's.
    pub fn resume(&mut self, global_id: u64, auth_ticket: ReceivedTicket, now: Instant) {
        if global_id != self.global_id {
            self.services.clear();
        }
        self.global_id = global_id;
        self.auth = Some(Held::new(auth_ticket, now));
    }

    /// The global id the monitor gave in msgr2's AUTH_DONE (over msgr v1 every
    /// `MAuthReply` names it): the authorizers of later requests carry it (Ceph's
    /// `set_global_id` in `MonConnection::handle_auth_done`).
    pub(super) fn set_global_id(&mut self, global_id: u64) {
        self.global_id = global_id;
    }

    /// Asks for (fresh) service tickets for `services` once authenticated.
    pub fn request_service_tickets(&mut self, services: ServiceMask) {
        self.want_services = self.want_services.with(services.without(ServiceMask::AUTH));
    }

    /// Asks for our entity type's rotating service secrets (daemons only).
    pub fn request_rotating_secrets(&mut self) {
        self.want_rotating = true;
    }

    // ---- outputs ----

    /// The next `MAuth` to send, if any (at most one request is outstanding).
    pub fn poll_request(&mut self, now: Instant) -> Option<MAuth> {
        if self.outstanding.is_some() {
            return None;
        }
        let (what, protocol, payload) = match self.phase.clone() {
            Phase::AwaitChallenge { sent: false } => {
                self.phase = Phase::AwaitChallenge { sent: true };
                let n = AuthNegotiation {
                    methods: vec![AUTH_CEPHX],
                    name: self.config.name.clone(),
                    global_id: self.global_id,
                };
                (Outstanding::Negotiate, AUTH_UNKNOWN, n.encode())
            }
            Phase::AwaitSessionKey { server_challenge, .. } => {
                (Outstanding::SessionKey, AUTH_CEPHX, self.authenticate_payload(server_challenge))
            }
            Phase::Ready { server_challenge } => {
                if self.want_renewal {
                    (
                        Outstanding::SessionKey,
                        AUTH_CEPHX,
                        self.authenticate_payload(server_challenge),
                    )
                } else if !self.want_services.is_empty() {
                    let keys = self.want_services;
                    (Outstanding::Principal(keys), AUTH_CEPHX, self.principal_payload(keys)?)
                } else if self.want_rotating {
                    let mut e = Encoder::with_capacity(2);
                    RequestType::GET_ROTATING_KEY.encode(&mut e);
                    (Outstanding::Rotating, AUTH_CEPHX, e.into_bytes())
                } else {
                    return None;
                }
            }
            Phase::Idle | Phase::AwaitChallenge { sent: true } | Phase::Failed(_) => return None,
        };
        log::debug!(target: LOG, "{}: sending {what:?}", self.config.name);
        self.outstanding = Some((what, now + self.config.request_timeout));
        Some(MAuth { protocol, auth_payload: payload, ..MAuth::default() })
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`CephxClient::handle_timeout`] must be called next: the outstanding
    /// request's deadline or the earliest renewal.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.outstanding.map(|(_, deadline)| deadline);
        if let Phase::Ready { .. } = self.phase {
            let mut consider = |at: Instant| t = Some(t.map_or(at, |t| t.min(at)));
            if let Some(a) = self.auth.as_ref().filter(|_| !self.want_renewal) {
                consider(a.renew_at);
            }
            if let Some(at) = self.recheck_missing_at {
                consider(at);
            }
            for (service, held) in &self.services {
                if self.config.want_services.contains(*service)
                    && !self.want_services.contains(*service)
                {
                    consider(held.renew_at);
                }
            }
        }
        t
    }

    // ---- inputs ----

    /// Time passed: a request past its deadline fails the session
    /// ([`AuthError::Timeout`]); tickets past 75 % of their validity are queued for
    /// renewal.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), AuthError> {
        if let Some((what, deadline)) = self.outstanding {
            if now >= deadline {
                let waiting_for = match what {
                    Outstanding::Negotiate => "server challenge",
                    Outstanding::SessionKey => "auth ticket",
                    Outstanding::Principal(_) => "service tickets",
                    Outstanding::Rotating => "rotating secrets",
                };
                return Err(self.fail(AuthError::Timeout { waiting_for }));
            }
        }
        if let Phase::Ready { .. } = self.phase {
            if self.auth.as_ref().is_some_and(|a| now >= a.renew_at) {
                self.want_renewal = true;
            }
            for (service, held) in &self.services {
                if self.config.want_services.contains(*service) && now >= held.renew_at {
                    self.want_services = self.want_services.with(ServiceMask::of(*service));
                }
            }
            if self.recheck_missing_at.is_some_and(|at| now >= at) {
                self.recheck_missing_at = None;
                let missing = self.missing_services();
                self.want_services = self.want_services.with(missing);
            }
        }
        Ok(())
    }

    /// An `MAuthReply` from the monitor. An error is final for this session (the
    /// state is `Failed` until the next [`CephxClient::start`]).
    pub fn handle_reply(&mut self, now: Instant, reply: &MAuthReply) -> Result<(), AuthError> {
        if let Some((what, _)) = self.outstanding {
            if reply.result >= 0
                && reply.protocol == AUTH_CEPHX
                && Self::answers_another(what, reply)
            {
                // A late reply to a request of an earlier session, from its lost connection
                // (Ceph's MonClient drops replies from a connection not its own): taken, it
                // failed this session, or (a ticket reply taken for the server challenge)
                // answered a challenge the monitor never made, refused -EACCES.
                log::warn!(target: LOG, "{}: MAuthReply to another request than {what:?} (a late reply of an earlier session?); ignored", self.config.name);
                return Ok(());
            }
        }
        let Some((what, _)) = self.outstanding.take() else {
            log::warn!(target: LOG, "{}: MAuthReply without a request; ignored", self.config.name);
            return Ok(());
        };
        let result = match what {
            Outstanding::Negotiate => self.on_challenge(reply),
            Outstanding::SessionKey => self.on_session_key(now, reply),
            Outstanding::Principal(keys) => self.on_principal(now, keys, reply),
            Outstanding::Rotating => self.on_rotating(reply),
        };
        result.map_err(|e| self.fail(e))
    }

    // ---- queries ----

    /// Whether the current session is authenticated.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Ready { .. })
    }

    /// The error that ended the current session, if any.
    pub fn error(&self) -> Option<&AuthError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Our global id (0 before the first authentication).
    pub fn global_id(&self) -> u64 {
        self.global_id
    }

    /// Who we authenticate as.
    pub fn name(&self) -> &AuthEntityName {
        &self.config.name
    }

    /// The auth ticket, if held.
    pub fn auth_ticket(&self) -> Option<&ReceivedTicket> {
        self.auth.as_ref().map(|h| &h.ticket)
    }

    /// The ticket for `service`, if held and not expired at `now`.
    pub fn service_ticket(&self, service: EntityType, now: Instant) -> Option<&ReceivedTicket> {
        self.services.get(&service).filter(|h| now < h.expires_at).map(|h| &h.ticket)
    }

    /// The connection secret of the last auth reply (msgr v2; empty over v1).
    pub fn connection_secret(&self) -> &[u8] {
        &self.connection_secret
    }

    /// A fresh authorizer for a connection to `service`, from its ticket.
    pub fn authorizer(
        &mut self,
        service: EntityType,
        now: Instant,
    ) -> Result<Authorizer, AuthError> {
        let global_id = self.global_id;
        let held = self
            .services
            .get(&service)
            .filter(|h| now < h.expires_at)
            .ok_or(AuthError::Misuse("no valid ticket for that service"))?;
        Ok(Authorizer::new(global_id, &held.ticket, &mut *self.rng))
    }

    // ---- internals ----

    fn fail(&mut self, e: AuthError) -> AuthError {
        log::warn!(target: LOG, "{}: authentication failed: {e}", self.config.name);
        self.outstanding = None;
        self.phase = Phase::Failed(e.clone());
        e
    }

    fn check_result(&self, reply: &MAuthReply) -> Result<(), AuthError> {
        if reply.result < 0 {
            return Err(AuthError::from_result(
                reply.result,
                &reply.result_msg,
                &self.config.name.to_string(),
                &[AUTH_CEPHX],
            ));
        }
        if reply.protocol != AUTH_CEPHX {
            return Err(AuthError::UnexpectedMethod { method: reply.protocol });
        }
        Ok(())
    }

    fn authenticate_payload(&mut self, server_challenge: u64) -> Bytes {
        let client_challenge = self.rng.next_u64();
        let old_ticket = self.auth.as_ref().map(|a| a.ticket.blob.clone()).unwrap_or_default();
        let a = Authenticate {
            struct_v: Authenticate::STRUCT_V,
            client_challenge,
            key: challenge_proof(&self.config.key, server_challenge, client_challenge),
            old_ticket,
            other_keys: ServiceMask::AUTH.with(self.config.want_services),
        };
        let mut e = Encoder::with_capacity(64 + a.old_ticket.blob.len());
        RequestType::GET_AUTH_SESSION_KEY.encode(&mut e);
        a.encode(&mut e);
        e.into_bytes()
    }

    fn principal_payload(&mut self, keys: ServiceMask) -> Option<Bytes> {
        let auth = self.auth.as_ref()?;
        let authorizer = Authorizer::new(self.global_id, &auth.ticket, &mut *self.rng);
        let mut e = Encoder::with_capacity(16 + authorizer.bytes().len());
        RequestType::GET_PRINCIPAL_SESSION_KEY.encode(&mut e);
        e.bytes(authorizer.bytes());
        ServiceTicketRequest { keys }.encode(&mut e);
        Some(e.into_bytes())
    }

    /// Whether `reply` is plainly the answer to another kind of request than `what`: a
    /// ticket or secrets reply (a response header of a request type other than `what`'s,
    /// or, waiting for the 9-byte server challenge, anything longer that starts with a
    /// response header). A reply that is neither is `what`'s to judge.
    fn answers_another(what: Outstanding, reply: &MAuthReply) -> bool {
        let known = [
            RequestType::GET_AUTH_SESSION_KEY,
            RequestType::GET_PRINCIPAL_SESSION_KEY,
            RequestType::GET_ROTATING_KEY,
        ];
        let mut d = Decoder::new(&reply.result_bl);
        let Ok(h) = ResponseHeader::decode(&mut d) else { return false };
        let expected = match what {
            // `CephXServerChallenge` is struct_v 1 and a u64: exactly 9 bytes.
            Outstanding::Negotiate => {
                return reply.result_bl.len() > 9 && known.contains(&h.request_type)
            }
            Outstanding::SessionKey => RequestType::GET_AUTH_SESSION_KEY,
            Outstanding::Principal(_) => RequestType::GET_PRINCIPAL_SESSION_KEY,
            Outstanding::Rotating => RequestType::GET_ROTATING_KEY,
        };
        h.request_type != expected && known.contains(&h.request_type)
    }

    fn on_challenge(&mut self, reply: &MAuthReply) -> Result<(), AuthError> {
        self.check_result(reply)?;
        let ServerChallenge { server_challenge } =
            ServerChallenge::decode(&mut Decoder::new(&reply.result_bl))?;
        let reclaiming = self.global_id != 0 && reply.global_id == self.global_id;
        if !reclaiming {
            // A new id: the old ticket proves nothing about it and would be refused as
            // superfluous.
            self.auth = None;
            self.services.clear();
        }
        self.global_id = reply.global_id;
        log::debug!(target: LOG, "{}: server challenge, global_id {}", self.config.name, self.global_id);
        self.phase = Phase::AwaitSessionKey { server_challenge, reclaiming };
        Ok(())
    }

    fn response_header<'a>(
        reply: &'a MAuthReply,
        want: RequestType,
    ) -> Result<Decoder<'a>, AuthError> {
        let mut d = Decoder::new(&reply.result_bl);
        let h = ResponseHeader::decode(&mut d)?;
        if h.request_type != want {
            return Err(AuthError::UnexpectedReply("response to another request type"));
        }
        if h.status < 0 {
            return Err(AuthError::Refused { code: h.status, message: reply.result_msg.clone() });
        }
        Ok(d)
    }

    fn previous_key(&self, service: EntityType) -> Option<CryptoKey> {
        if service == EntityType::AUTH {
            self.auth.as_ref().map(|a| a.ticket.session_key.clone())
        } else {
            self.services.get(&service).map(|h| h.ticket.session_key.clone())
        }
    }

    /// The wanted services we hold no ticket for.
    fn missing_services(&self) -> ServiceMask {
        let wanted = self.config.want_services.without(ServiceMask::AUTH);
        wanted
            .iter()
            .filter(|s| !self.services.contains_key(s))
            .fold(ServiceMask::NONE, |m, s| m.with(ServiceMask::of(s)))
    }

    fn store_services(&mut self, now: Instant, tickets: Vec<ReceivedTicket>) -> ServiceMask {
        let mut got = ServiceMask::NONE;
        for t in tickets {
            if t.service == EntityType::AUTH {
                continue;
            }
            got = got.with(ServiceMask::of(t.service));
            self.services.insert(t.service, Held::new(t, now));
        }
        self.want_services = self.want_services.without(got);
        got
    }

    fn on_session_key(&mut self, now: Instant, reply: &MAuthReply) -> Result<(), AuthError> {
        self.check_result(reply)?;
        let mut d = Self::response_header(reply, RequestType::GET_AUTH_SESSION_KEY)?;
        let tickets = decode_ticket_reply(&mut d, &self.config.key, |s| self.previous_key(s))?;
        let auth = tickets
            .into_iter()
            .find(|t| t.service == EntityType::AUTH)
            .ok_or(AuthError::UnexpectedReply("no auth ticket in the reply"))?;
        let mut connection_secret = Vec::new();
        let mut extra = Vec::new();
        if !d.is_empty() {
            let secret_bl = d.blob()?;
            if !secret_bl.is_empty() {
                let plain = auth.session_key.open_blob(&mut Decoder::new(secret_bl))?;
                connection_secret = Decoder::new(&plain).blob()?.to_vec();
            }
            let extra_bl = d.blob()?;
            if !extra_bl.is_empty() {
                extra = decode_ticket_reply(&mut Decoder::new(extra_bl), &auth.session_key, |s| {
                    self.previous_key(s)
                })?;
            }
        }
        let first = !matches!(self.phase, Phase::Ready { .. });
        let server_challenge = match self.phase {
            Phase::AwaitSessionKey { server_challenge, .. } | Phase::Ready { server_challenge } => {
                server_challenge
            }
            _ => return Err(AuthError::Misuse("session key reply outside a session")),
        };
        let reclaimed = matches!(self.phase, Phase::AwaitSessionKey { reclaiming: true, .. });
        self.auth = Some(Held::new(auth, now));
        self.connection_secret = connection_secret;
        self.want_renewal = false;
        let got = self.store_services(now, extra);
        self.phase = Phase::Ready { server_challenge };
        log::debug!(target: LOG, "{}: auth ticket (first {first}), services {got}", self.config.name);
        self.events.push_back(if first {
            ClientEvent::Authenticated { global_id: self.global_id, reclaimed }
        } else {
            ClientEvent::AuthTicketRenewed
        });
        if !got.is_empty() {
            self.events.push_back(ClientEvent::ServiceTickets(got));
        }
        Ok(())
    }

    fn on_principal(
        &mut self,
        now: Instant,
        asked: ServiceMask,
        reply: &MAuthReply,
    ) -> Result<(), AuthError> {
        self.check_result(reply)?;
        let mut d = Self::response_header(reply, RequestType::GET_PRINCIPAL_SESSION_KEY)?;
        let session_key = self
            .auth
            .as_ref()
            .map(|a| a.ticket.session_key.clone())
            .ok_or(AuthError::Misuse("service tickets without an auth ticket"))?;
        let tickets = decode_ticket_reply(&mut d, &session_key, |s| self.previous_key(s))?;
        let got = self.store_services(now, tickets);
        // Services the monitor has no secrets for are not asked again and again: those
        // renewed and left out wait for the next check.
        self.want_services = self.want_services.without(asked);
        for (service, held) in &mut self.services {
            if asked.without(got).contains(*service) {
                held.renew_at = held.renew_at.max(now + RECHECK_AFTER);
            }
        }
        // Those never held are asked for again at the next check too.
        if asked.without(got).iter().any(|s| self.missing_services().contains(s)) {
            self.recheck_missing_at = Some(now + RECHECK_AFTER);
        }
        if !got.is_empty() {
            self.events.push_back(ClientEvent::ServiceTickets(got));
        }
        Ok(())
    }

    fn on_rotating(&mut self, reply: &MAuthReply) -> Result<(), AuthError> {
        self.check_result(reply)?;
        let mut d = Self::response_header(reply, RequestType::GET_ROTATING_KEY)?;
        let plain = self.config.key.open_blob(&mut d)?;
        let secrets = RotatingSecrets::decode(&mut Decoder::new(&plain))?;
        self.want_rotating = false;
        self.events.push_back(ClientEvent::RotatingSecrets(secrets));
        Ok(())
    }
}
