//! cephx over msgr2's AUTH frames (msgr-v2.md 5.2–5.5, cephx.md 9): the handlers
//! [`super::CephxProvider`] creates for the v2 machine.
//!
//! ```text
//! to a monitor (AUTH_MODE_MON)                     to any other daemon (AUTH_MODE_AUTHORIZER)
//!  AUTH_REQUEST       {10, name, global_id}         AUTH_REQUEST       authorizer (ticket + E_SK{nonce})
//!  AUTH_REPLY_MORE    server challenge              AUTH_REPLY_MORE    E_SK{challenge}   (cephx v2)
//!  AUTH_REQUEST_MORE  GET_AUTH_SESSION_KEY          AUTH_REQUEST_MORE  the rebuilt authorizer
//!  AUTH_DONE          tickets + E_SK{secret}        AUTH_DONE          E_SK{nonce + 1, secret}
//! ```
//!
//! - [`CephxMonClient`]: a client of a monitor. One [`CephxClient`] session per
//!   connection; the auth ticket and the service tickets AUTH_DONE carries go into the
//!   provider's [`TicketStore`]: later authorizers to OSDs, MDSs and MGRs are built from
//!   them, and the next monitor connection reclaims the global id with the auth ticket
//!   (cephx.md 6), as Ceph's MonClient does. The session itself stays in the store
//!   under the address dialled, for the application to renew the tickets on over MAuth
//!   ([`TicketStore::take_monitor_session`]).
//! - [`CephxAuthorizerV2Client`]: an authorizer to any other daemon.
//! - [`CephxV2Server`]: the acceptor. Authorizers are verified against the daemon's
//!   [`super::KeyStore`], always with the challenge round (every msgr2 peer can answer
//!   it, and Ceph always asks);
//!   with a [`super::KeyServer`] it also plays a monitor for AUTH_MODE_MON requests,
//!   rotating the key server's due secrets before it issues tickets.
//!
//! The connection secret is Ceph's length for the mode (`AuthConnectionMeta::
//! get_connection_secret_length`): 64 random bytes in secure mode, none in crc mode.
//! Every refusal is AUTH_BAD_METHOD with `-EACCES`, as a 16.2.15 daemon or monitor
//! answers: an authorizer's whatever failed, an empty payload, an auth mode we do not
//! serve (a monitor-mode request to a daemon among them) or a monitor-mode request that
//! does not decode (a later monitor-mode round answers its error's errno); the connector
//! may then try another method.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand_core::CryptoRngCore;

use crate::auth::error::AuthError;
use crate::auth::mode::ConMode;
use crate::auth::provider::{
    AuthClient, AuthOutcome, AuthPeer, AuthServer, AuthStep, AUTH_MODE_AUTHORIZER, AUTH_MODE_MON,
    AUTH_MODE_MON_MAX, EACCES,
};
use crate::encoding::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::messages::MAuthReply;
use crate::types::{AuthEntityName, EntityAddr, EntityType, AUTH_CEPHX};

use super::authorizer::{Authorizer, AuthorizerVerdict, AuthorizerVerifier};
use super::client::{CephxClient, ClientConfig};
use super::provider::{Shared, TicketSource, TicketStore, TICKET_SERVICES};
use super::server::{KeyServer, ServerSession};

const LOG: &str = "msgr::auth";

/// `AuthConnectionMeta::get_connection_secret_length`: what an acceptor mints for a
/// connection in `mode` (secure mode keys and nonces come from its first 40 bytes).
#[doc(alias = "get_connection_secret_length")]
pub fn connection_secret_len(mode: ConMode) -> usize {
    /// Ceph's `16 * 4`.
    const SECURE_SECRET_LEN: usize = 64;
    if mode == ConMode::SECURE {
        SECURE_SECRET_LEN
    } else {
        0
    }
}

/// A cephx failure as the machine's error (it faults the attempt); the detail is logged.
fn failed(what: &str, e: &AuthError) -> Error {
    log::info!(target: LOG, "cephx over msgr2: {what}: {e}");
    Error::Malformed("cephx exchange failed")
}

/// A connector's cephx session with a monitor over msgr2 (Ceph's `MonConnection` with
/// its `CephxClientHandler`), one per connection attempt.
pub struct CephxMonClient {
    /// The session; `None` once handed to the store ([`AuthClient::confirmed`]).
    client: Option<CephxClient>,
    store: Arc<TicketStore>,
    /// The address dialled: the store keeps the session under it.
    peer: EntityAddr,
    /// The instant the client's requests are stamped with before AUTH_DONE. The
    /// machine's handshake deadline bounds the exchange, so the client's own request
    /// deadlines are unused; its tickets are stamped when AUTH_DONE arrives.
    at: Instant,
    /// What AUTH_DONE taught (the global id, the auth and service tickets), kept in the
    /// store only once the monitor's AUTH_SIGNATURE matched ([`AuthClient::confirmed`]):
    /// a replayed AUTH_DONE must not replace the store's tickets and global id.
    learned: Option<(u64, Vec<crate::auth::cephx::ReceivedTicket>)>,
    /// The server challenge arrived and the session key was asked for: only then may
    /// AUTH_DONE come (cephx always challenges first).
    asked_for_key: bool,
}

impl CephxMonClient {
    pub(super) fn new(
        shared: &Shared,
        key: crate::auth::CryptoKey,
        store: Arc<TicketStore>,
        peer: EntityAddr,
    ) -> Self {
        let mut config = ClientConfig::new(shared.name.clone(), key);
        config.want_services = shared.want_services;
        CephxMonClient {
            client: Some(CephxClient::new(config, (shared.rng)())),
            store,
            peer,
            at: shared.clock.anchor(),
            learned: None,
            asked_for_key: false,
        }
    }

    fn client(&mut self) -> Result<&mut CephxClient> {
        self.client.as_mut().ok_or(Error::Misuse("the cephx session was handed over"))
    }

    fn reply(global_id: u64, payload: &[u8]) -> MAuthReply {
        MAuthReply {
            protocol: AUTH_CEPHX,
            global_id,
            result_bl: Bytes::copy_from_slice(payload),
            ..MAuthReply::default()
        }
    }
}

impl AuthClient for CephxMonClient {
    fn build_request(&mut self) -> Result<Bytes> {
        let (at, resumed) = (self.at, self.store.ticket(EntityType::AUTH));
        let client = self.client()?;
        // The provider's last monitor session: reclaim its global id with its auth
        // ticket, as Ceph's MonClient does on every new monitor connection.
        if let Some((global_id, auth)) = resumed {
            client.resume(global_id, auth, at);
        }
        client.start(at);
        // Round 1 of the MAuth path becomes this payload; the client now waits for the
        // server challenge.
        let _ = client.poll_request(at);
        let mut e = Encoder::with_capacity(32);
        e.u8(AUTH_MODE_MON);
        client.name().encode(&mut e);
        e.u64(client.global_id());
        Ok(e.into_bytes())
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes> {
        let at = self.at;
        let client = self.client()?;
        // msgr2 tells the global id only in AUTH_DONE; until then the one we asked to
        // keep stands (0 for a new one), so a reclaim sends the old ticket.
        let asked = client.global_id();
        client
            .handle_reply(at, &Self::reply(asked, payload))
            .map_err(|e| failed("server challenge", &e))?;
        // The client ignores a reply answering another request (over msgr v1, a lost
        // connection's late one) and then has nothing to send: here it is the peer's
        // doing, not ours.
        let req = client
            .poll_request(at)
            .ok_or(Error::Malformed("cephx AUTH_REPLY_MORE answers another request"))?;
        self.asked_for_key = true;
        Ok(req.auth_payload)
    }

    fn handle_done(
        &mut self,
        now: Instant,
        global_id: u64,
        mode: ConMode,
        payload: &[u8],
    ) -> Result<AuthOutcome> {
        if !self.asked_for_key {
            // Taken as the challenge's answer, its payload would decode as a challenge
            // (trailing bytes ignored) and the old ticket's session key come back.
            return Err(Error::Malformed("cephx AUTH_DONE before the server challenge"));
        }
        let client = self.client()?;
        // The session's global id from here on (the one asked to keep may have been
        // refused): its renewals' authorizers carry it.
        client.set_global_id(global_id);
        client
            .handle_reply(now, &Self::reply(global_id, payload))
            .map_err(|e| failed("auth ticket", &e))?;
        if !client.is_authenticated() {
            // The client ignores an MAuthReply answering another request (over msgr v1,
            // a late reply of a lost connection); AUTH_DONE is this connection's only
            // answer. Taken, the stored auth ticket's session key came back as this one's.
            return Err(Error::Malformed("cephx AUTH_DONE answers another request"));
        }
        let ticket = client.auth_ticket().ok_or(Error::Misuse("no auth ticket after AUTH_DONE"))?;
        let session_key = ticket.session_key.secret().to_vec();
        let secret = client.connection_secret().to_vec();
        // The auth ticket too: the next connection reclaims the global id with it.
        let mut tickets = vec![ticket.clone()];
        for service in TICKET_SERVICES {
            if let Some(t) = client.service_ticket(service, now) {
                tickets.push(t.clone());
            }
        }
        log::debug!(target: LOG, "{}: authenticated to a monitor over msgr2 as global_id {global_id}, {mode} mode", client.name());
        self.learned = Some((global_id, tickets));
        Ok(AuthOutcome { session_key: Some(session_key), connection_secret: secret, peer: None })
    }

    fn confirmed(&mut self) {
        let Some((global_id, tickets)) = self.learned.take() else { return };
        self.store.adopt(global_id, tickets);
        // The session goes to the application (Ceph's MonClient takes the handshake's
        // handler into itself), which renews the tickets on this connection.
        if let Some(client) = self.client.take() {
            let name = client.name().clone();
            self.store.keep_monitor_session(self.peer, client);
            log::debug!(target: LOG, "{name}: tickets and session kept for {}: {:?}", self.peer, self.store);
        }
    }
}

/// A connector's cephx authorizer to a daemon over msgr2 (Ceph's `CephXAuthorizer`
/// through `MonClient::get_auth_request` / `handle_auth_reply_more` / `handle_auth_done`).
pub struct CephxAuthorizerV2Client {
    authorizer: Authorizer,
}

impl CephxAuthorizerV2Client {
    pub(super) fn new(authorizer: Authorizer) -> Self {
        CephxAuthorizerV2Client { authorizer }
    }
}

impl AuthClient for CephxAuthorizerV2Client {
    fn build_request(&mut self) -> Result<Bytes> {
        Ok(self.authorizer.bytes().clone())
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes> {
        self.authorizer.handle_challenge(payload).map_err(|e| failed("authorizer challenge", &e))
    }

    fn handle_done(
        &mut self,
        _now: Instant,
        _global_id: u64,
        _mode: ConMode,
        payload: &[u8],
    ) -> Result<AuthOutcome> {
        let secret = self
            .authorizer
            .verify_reply(payload)
            .map_err(|e| failed("authorizer reply", &e))?
            .unwrap_or_default();
        Ok(AuthOutcome {
            session_key: Some(self.authorizer.session_key().secret().to_vec()),
            connection_secret: secret,
            peer: None,
        })
    }
}

/// Where one accepted connection's cephx exchange is.
enum Exchange {
    /// Nothing yet (or a new AUTH_REQUEST after a refusal).
    Fresh,
    /// AUTH_MODE_MON: challenged, waiting for GET_AUTH_SESSION_KEY.
    Mon { session: ServerSession, global_id: u64 },
    /// AUTH_MODE_AUTHORIZER: the verifier remembers the challenge it issued.
    Authorizer(AuthorizerVerifier),
}

/// The acceptor's cephx over msgr2 for one connection (Ceph's `Monitor::
/// handle_auth_request` for AUTH_MODE_MON, `MonClient::handle_auth_request` for
/// authorizers).
pub struct CephxV2Server {
    shared: Arc<Shared>,
    peer_type: EntityType,
    exchange: Exchange,
    rng: Box<dyn CryptoRngCore + Send>,
}

impl CephxV2Server {
    pub(super) fn new(shared: Arc<Shared>, peer_type: EntityType) -> Self {
        let rng = (shared.rng)();
        CephxV2Server { shared, peer_type, exchange: Exchange::Fresh, rng }
    }

    fn secret(&mut self, mode: ConMode) -> Vec<u8> {
        let mut secret = vec![0u8; connection_secret_len(mode)];
        self.rng.fill_bytes(&mut secret);
        secret
    }

    /// AUTH_REQUEST in AUTH_MODE_MON to a key server: `{mode, name, global_id}` → the
    /// server challenge. A request that does not decode is refused with `-EACCES`, as
    /// Ceph's `Monitor::handle_auth_request` refuses it.
    fn start_mon(
        &mut self,
        server: Arc<KeyServer>,
        payload: &[u8],
    ) -> std::result::Result<AuthStep, AuthError> {
        let mut d = Decoder::new(payload);
        let decoded = (|| Ok::<_, Error>((d.u8()?, AuthEntityName::decode(&mut d)?, d.u64()?)))();
        let Ok((_mode, name, global_id)) = decoded else {
            return Ok(self.refuse("monitor-mode request does not decode"));
        };
        let counter = self.shared.next_global_id.clone();
        let mut session = ServerSession::New;
        let (challenge, global_id) =
            server.start_v2(&mut session, name, global_id, &mut *self.rng, &mut || {
                counter.fetch_add(1, Ordering::Relaxed)
            })?;
        self.exchange = Exchange::Mon { session, global_id };
        Ok(AuthStep::More(challenge))
    }

    /// AUTH_REQUEST_MORE in AUTH_MODE_MON: GET_AUTH_SESSION_KEY → AUTH_DONE.
    fn finish_mon(
        &mut self,
        now: Instant,
        mode: ConMode,
        payload: &[u8],
    ) -> std::result::Result<AuthStep, AuthError> {
        let server = self.shared.key_server.clone().ok_or(AuthError::Misuse("no key server"))?;
        let secret = self.secret(mode);
        let wall = self.shared.clock.wall(now);
        // Secrets due rotate before they seal this session's tickets: a Ceph monitor
        // keeps them current on its tick, and this one has no other occasion.
        server.rotate(wall, &mut *self.rng);
        let Exchange::Mon { session, global_id } = &mut self.exchange else {
            return Err(AuthError::Misuse("AUTH_REQUEST_MORE outside a monitor exchange"));
        };
        let global_id = *global_id;
        let (body, key) = server.handle_v2_more(session, payload, wall, &mut *self.rng, &secret)?;
        // The entity proved its key: the monitor's own caps for it (its tickets carry
        // none for the monitor).
        let peer = session.authenticated().map(|(name, global_id)| AuthPeer {
            name: name.clone(),
            global_id,
            caps: server.caps_for(name, self.shared.my_type),
        });
        Ok(AuthStep::Done {
            global_id,
            payload: body,
            outcome: AuthOutcome {
                session_key: Some(key.secret().to_vec()),
                connection_secret: secret,
                peer,
            },
        })
    }

    /// An authorizer (first or answering our challenge) → challenge or AUTH_DONE.
    fn authorize(
        &mut self,
        now: Instant,
        mode: ConMode,
        payload: &[u8],
    ) -> std::result::Result<AuthStep, AuthError> {
        let shared = self.shared.clone();
        let keys =
            shared.keys.as_ref().ok_or(AuthError::Misuse("no service secrets to verify with"))?;
        let secret = self.secret(mode);
        let Exchange::Authorizer(verifier) = &mut self.exchange else {
            return Err(AuthError::Misuse("authorizer outside an authorizer exchange"));
        };
        let verdict = verifier.verify(
            keys.as_ref(),
            shared.my_type,
            payload,
            // Every msgr2 peer can answer the challenge, and Ceph always asks it, whatever
            // cephx_*_require_version says: without it a captured authorizer replays.
            true,
            shared.clock.wall(now),
            (!secret.is_empty()).then(|| secret.clone()),
            &mut *self.rng,
        )?;
        Ok(match verdict {
            AuthorizerVerdict::Challenge(c) => AuthStep::More(c),
            AuthorizerVerdict::Accepted(a) => AuthStep::Done {
                global_id: a.ticket.global_id,
                payload: a.reply,
                outcome: AuthOutcome {
                    session_key: Some(a.session_key.secret().to_vec()),
                    connection_secret: secret,
                    peer: Some(a.ticket.peer()),
                },
            },
        })
    }

    fn step(
        &mut self,
        now: Instant,
        mode: ConMode,
        more: bool,
        payload: &[u8],
    ) -> std::result::Result<AuthStep, AuthError> {
        if more {
            return match self.exchange {
                Exchange::Mon { .. } => self.finish_mon(now, mode, payload),
                Exchange::Authorizer(_) => self.authorize(now, mode, payload),
                Exchange::Fresh => Err(AuthError::Misuse("AUTH_REQUEST_MORE before AUTH_REQUEST")),
            };
        }
        // A new AUTH_REQUEST starts over (the connector may retry after a refusal).
        self.exchange = Exchange::Fresh;
        let auth_mode = payload.first().copied().unwrap_or_default();
        if (AUTH_MODE_AUTHORIZER..AUTH_MODE_MON).contains(&auth_mode) {
            self.exchange = Exchange::Authorizer(AuthorizerVerifier::new());
            return self.authorize(now, mode, payload);
        }
        match self.shared.key_server.clone() {
            Some(server) if (AUTH_MODE_MON..=AUTH_MODE_MON_MAX).contains(&auth_mode) => {
                self.start_mon(server, payload)
            }
            // An empty payload, a mode no one serves, or a monitor-mode request to a
            // daemon: Ceph's MonClient::handle_auth_request (a daemon's) and
            // Monitor::handle_auth_request refuse each with -EACCES before looking
            // further (it answered -EINVAL).
            Some(_) => Ok(self.refuse("no monitor or authorizer auth mode")),
            None => Ok(self.refuse("no authorizer auth mode (we are no monitor)")),
        }
    }

    /// A request refused before any cephx work: `-EACCES`, whatever was wrong with it.
    fn refuse(&mut self, why: &str) -> AuthStep {
        log::info!(target: LOG, "cephx over msgr2 from a {} refused: {why}", self.peer_type.name());
        self.exchange = Exchange::Fresh;
        AuthStep::Reject { result: EACCES }
    }
}

impl AuthServer for CephxV2Server {
    fn handle_request(
        &mut self,
        now: Instant,
        mode: ConMode,
        more: bool,
        payload: &[u8],
    ) -> AuthStep {
        self.step(now, mode, more, payload).unwrap_or_else(|e| {
            log::info!(target: LOG, "cephx over msgr2 from a {} refused: {e}", self.peer_type.name());
            // An authorizer is refused with EACCES whatever failed, as a Ceph daemon's
            // (MonClient::handle_auth_request): a ticket that decrypted and did not parse
            // answered EINVAL, telling a forger which of its ciphertexts decrypted.
            // Monitor mode: every credential problem is EACCES (AuthError::errno).
            let authorizer = matches!(self.exchange, Exchange::Authorizer(_));
            self.exchange = Exchange::Fresh;
            AuthStep::Reject { result: if authorizer { EACCES } else { -e.errno() } }
        })
    }
}
