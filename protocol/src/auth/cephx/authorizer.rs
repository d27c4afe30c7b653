//! cephx authorizers (cephx.md 3.7, 7): what a client presents to a daemon, the
//! challenge round, and how the daemon verifies it.
//!
//! ```text
//! client (Authorizer)                                  daemon (AuthorizerVerifier)
//!   A{global_id, service, ticket} + E_SK{nonce, 0, 0}  ->
//!                                                    <-  Challenge: E_SK{server_challenge}
//!   A + E_SK{nonce, 1, server_challenge + 1}           ->
//!                                                    <-  Accepted: E_SK{nonce + 1}
//! ```
//!
//! Both sides are pure: the connection machine carries the bytes (v1: in
//! `ceph_msg_connect` / `CHALLENGE_AUTHORIZER`; v2: in AUTH frames).

use bytes::Bytes;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use crate::auth::crypto::CryptoKey;
use crate::auth::error::AuthError;
use crate::encoding::{Decoder, Encoder, UTime};
use crate::types::EntityType;

use super::rotating::KeyStore;
use super::ticket::{
    utime_add, utime_to_duration, AuthTicket, ReceivedTicket, ServiceTicketInfo, TicketBlob,
    MAX_TICKET_CREATED_AHEAD,
};

/// The authorizer's first byte: its version, which Pacific servers also read as the
/// auth mode (`AUTH_MODE_AUTHORIZER` = 1).
const AUTHORIZER_V: u8 = 1;
/// `CephXAuthorize` version with the challenge fields.
const AUTHORIZE_V: u8 = 2;

/// Authorizer part A (kernel `ceph_x_authorize_a`): sent in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizerA {
    /// The client's global id; must equal the ticket's.
    pub global_id: u64,
    /// The service contacted (`osd` = 4, ...).
    pub service_id: u32,
    /// The service ticket.
    pub ticket: TicketBlob,
}

impl AuthorizerA {
    /// Appends the encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(AUTHORIZER_V).u64(self.global_id).u32(self.service_id);
        self.ticket.encode(e);
    }

    /// Reads it.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let _v = d.u8()?;
        Ok(AuthorizerA {
            global_id: d.u64()?,
            service_id: d.u32()?,
            ticket: TicketBlob::decode(d)?,
        })
    }
}

/// Authorizer part B, `CephXAuthorize`, sealed with the ticket's session key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorize {
    /// Random per authorizer.
    pub nonce: u64,
    /// Whether this answers a challenge.
    pub have_challenge: bool,
    /// The daemon's challenge + 1 (when `have_challenge`).
    pub server_challenge_plus_one: u64,
}

impl Authorize {
    fn encode(&self, e: &mut Encoder) {
        e.u8(AUTHORIZE_V).u64(self.nonce).bool(self.have_challenge);
        e.u64(self.server_challenge_plus_one);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let v = d.u8()?;
        let nonce = d.u64()?;
        if v < 2 {
            return Ok(Authorize { nonce, have_challenge: false, server_challenge_plus_one: 0 });
        }
        Ok(Authorize { nonce, have_challenge: d.bool()?, server_challenge_plus_one: d.u64()? })
    }
}

/// `CephXAuthorizeReply`: the daemon's proof, `nonce + 1`, and (v2) a connection secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeReply {
    /// The client's nonce + 1.
    pub nonce_plus_one: u64,
    /// The connection secret (msgr v2 only; absent over v1).
    pub connection_secret: Option<Vec<u8>>,
}

impl AuthorizeReply {
    /// Sealed (`encode_encrypt`, length-prefixed) under `session_key`.
    pub fn seal(&self, session_key: &CryptoKey) -> Vec<u8> {
        let mut e = Encoder::with_capacity(40);
        session_key.seal_blob(&mut e, |e| match &self.connection_secret {
            None => {
                e.u8(1).u64(self.nonce_plus_one);
            }
            Some(secret) => {
                e.u8(2).u64(self.nonce_plus_one).blob(secret);
            }
        });
        e.into_vec()
    }

    /// Opens a sealed reply.
    pub fn open(session_key: &CryptoKey, bytes: &[u8]) -> Result<Self, AuthError> {
        let plain = session_key.open_blob(&mut Decoder::new(bytes))?;
        let mut d = Decoder::new(&plain);
        let v = d.u8()?;
        let nonce_plus_one = d.u64()?;
        let connection_secret = if v >= 2 { Some(d.blob()?.to_vec()) } else { None };
        Ok(AuthorizeReply { nonce_plus_one, connection_secret })
    }
}

fn seal_challenge(session_key: &CryptoKey, server_challenge: u64) -> Vec<u8> {
    session_key.seal(|e| {
        e.u8(1).u64(server_challenge);
    })
}

fn open_challenge(session_key: &CryptoKey, bytes: &[u8]) -> Result<u64, AuthError> {
    let plain = session_key.open(bytes)?;
    let mut d = Decoder::new(&plain);
    let _v = d.u8()?;
    Ok(d.u64()?)
}

/// A client's authorizer for one connection to one service (Ceph's
/// `CephXAuthorizer`). Built from a service ticket; answers the daemon's challenge and
/// checks its reply.
#[derive(Clone, Debug)]
pub struct Authorizer {
    service: EntityType,
    part_a: Vec<u8>,
    session_key: CryptoKey,
    nonce: u64,
    bytes: Bytes,
}

impl Authorizer {
    /// An authorizer presenting `ticket` as `global_id`, with a fresh nonce from `rng`.
    pub fn new(global_id: u64, ticket: &ReceivedTicket, rng: &mut dyn CryptoRngCore) -> Self {
        let mut e = Encoder::with_capacity(64 + ticket.blob.blob.len());
        AuthorizerA {
            global_id,
            service_id: u32::from(ticket.service.0),
            ticket: ticket.blob.clone(),
        }
        .encode(&mut e);
        let part_a = e.into_vec();
        let nonce = rng.next_u64();
        let mut a = Authorizer {
            service: ticket.service,
            part_a,
            session_key: ticket.session_key.clone(),
            nonce,
            bytes: Bytes::new(),
        };
        a.bytes = a.build(Authorize { nonce, have_challenge: false, server_challenge_plus_one: 0 });
        a
    }

    fn build(&self, b: Authorize) -> Bytes {
        let mut e = Encoder::with_capacity(self.part_a.len() + 40);
        e.bytes(&self.part_a);
        self.session_key.seal_blob(&mut e, |e| b.encode(e));
        e.into_bytes()
    }

    /// The bytes to send (`authorizer_protocol` = `CEPH_AUTH_CEPHX`).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The service this authorizer is for.
    pub fn service(&self) -> EntityType {
        self.service
    }

    /// The session key: the v1 signing key once the daemon's reply checks out.
    pub fn session_key(&self) -> &CryptoKey {
        &self.session_key
    }

    /// The daemon's `CHALLENGE_AUTHORIZER` payload (raw ciphertext) → the authorizer to
    /// send on the repeated connect (same nonce, `server_challenge + 1`). The new bytes
    /// also replace [`Authorizer::bytes`].
    pub fn handle_challenge(&mut self, challenge: &[u8]) -> Result<Bytes, AuthError> {
        let server_challenge = open_challenge(&self.session_key, challenge)?;
        self.bytes = self.build(Authorize {
            nonce: self.nonce,
            have_challenge: true,
            server_challenge_plus_one: server_challenge.wrapping_add(1),
        });
        Ok(self.bytes.clone())
    }

    /// Checks the daemon's authorizer reply (`nonce + 1`, constant-time); returns the
    /// connection secret it carried (v2), if any. A mismatch must fault the connection.
    pub fn verify_reply(&self, reply: &[u8]) -> Result<Option<Vec<u8>>, AuthError> {
        let r = AuthorizeReply::open(&self.session_key, reply)?;
        let want = self.nonce.wrapping_add(1).to_le_bytes();
        if !bool::from(r.nonce_plus_one.to_le_bytes().ct_eq(&want)) {
            return Err(AuthError::BadAuthorizer("reply nonce does not match"));
        }
        Ok(r.connection_secret)
    }
}

/// What a daemon learned from an accepted authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedAuthorizer {
    /// The peer's identity, global id and caps, from the ticket.
    pub ticket: AuthTicket,
    /// The session key (the v1 signing key).
    pub session_key: CryptoKey,
    /// The authorizer reply to send back (36 bytes over v1).
    pub reply: Bytes,
}

/// The daemon's answer to one authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizerVerdict {
    /// Send `CHALLENGE_AUTHORIZER` with these bytes (raw ciphertext, no length) and
    /// wait for the repeated connect.
    Challenge(Bytes),
    /// The peer is who its ticket says.
    Accepted(AcceptedAuthorizer),
}

/// A daemon's verifier of one connection's authorizer (Ceph's
/// `cephx_verify_authorizer` plus the connection's challenge state).
///
/// Create one per incoming connection; it remembers the challenge it issued.
#[derive(Clone, Debug, Default)]
pub struct AuthorizerVerifier {
    /// The challenge sent on this connection, if any (one per connection, never two).
    server_challenge: Option<u64>,
}

impl AuthorizerVerifier {
    /// A verifier that has issued no challenge.
    pub fn new() -> Self {
        AuthorizerVerifier::default()
    }

    /// Verifies `authorizer` for `service` (our own entity type) with the secrets in
    /// `keys`.
    ///
    /// Steps (cephx.md 7.3): decode part A; find the secret that sealed the ticket; open
    /// the ticket; global ids must match; open part B with the ticket's session key;
    /// the ticket must not have expired a whole lifetime before `now` (wall clock; Ceph
    /// never checks it, see the check); then the challenge round
    /// when `require_challenge` (the peer can answer it, or `cephx_*_require_version >=
    /// 2` makes every peer answer it): the first
    /// authorizer gets [`AuthorizerVerdict::Challenge`], the repeated one must carry
    /// `challenge + 1`. `connection_secret` is put in the reply (msgr v2; `None` over v1).
    #[allow(clippy::too_many_arguments)]
    pub fn verify(
        &mut self,
        keys: &dyn KeyStore,
        service: EntityType,
        authorizer: &[u8],
        require_challenge: bool,
        now: UTime,
        connection_secret: Option<Vec<u8>>,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<AuthorizerVerdict, AuthError> {
        let mut d = Decoder::new(authorizer);
        let a = AuthorizerA::decode(&mut d)?;
        if a.service_id != u32::from(service.0) {
            return Err(AuthError::BadAuthorizer("authorizer is for another service"));
        }
        let secret = keys.service_secret(service, a.ticket.secret_id).ok_or(
            AuthError::MissingServiceSecret {
                service: service.name(),
                secret_id: a.ticket.secret_id,
            },
        )?;
        let info = ServiceTicketInfo::open(&a.ticket, &secret)?;
        if info.ticket.global_id != a.global_id {
            return Err(AuthError::BadAuthorizer("global_id does not match the ticket's"));
        }
        let plain = info.session_key.open_blob(&mut d)?;
        let b = Authorize::decode(&mut Decoder::new(&plain))?;
        // Ceph's daemons never look at `expires` (cephx_verify_authorizer): a ticket is
        // good while the secret that sealed it is held, which is up to about one lifetime
        // past its expiry, and our clock may run ahead of the monitor's that wrote it.
        // Refused once it expired a whole lifetime ago: at `expires` itself, a daemon
        // whose clock is ahead by more than a quarter of the ttl refused every client
        // in the last part of its tickets, before the client renews them at 75 %.
        let lifetime = utime_to_duration(info.ticket.expires)
            .saturating_sub(utime_to_duration(info.ticket.created));
        if utime_add(info.ticket.expires, lifetime) < now {
            return Err(AuthError::Expired);
        }
        // Garbled by its holder rather than written by a key server (AuthTicket::decode).
        if info.ticket.created > utime_add(now, MAX_TICKET_CREATED_AHEAD) {
            return Err(AuthError::BadAuthorizer("ticket created in the future"));
        }
        if require_challenge {
            match (self.server_challenge, b.have_challenge) {
                (None, false) => {
                    let mut challenge = rng.next_u64();
                    while challenge == 0 {
                        challenge = rng.next_u64();
                    }
                    self.server_challenge = Some(challenge);
                    let ct = seal_challenge(&info.session_key, challenge);
                    return Ok(AuthorizerVerdict::Challenge(Bytes::from(ct)));
                }
                (Some(c), true) => {
                    let want = c.wrapping_add(1).to_le_bytes();
                    if !bool::from(b.server_challenge_plus_one.to_le_bytes().ct_eq(&want)) {
                        return Err(AuthError::BadAuthorizer("wrong server_challenge + 1"));
                    }
                }
                (None, true) => {
                    return Err(AuthError::BadAuthorizer("answers a challenge never sent"))
                }
                (Some(_), false) => return Err(AuthError::BadAuthorizer("challenge not answered")),
            }
        }
        let reply = AuthorizeReply { nonce_plus_one: b.nonce.wrapping_add(1), connection_secret }
            .seal(&info.session_key);
        Ok(AuthorizerVerdict::Accepted(AcceptedAuthorizer {
            ticket: info.ticket,
            session_key: info.session_key,
            reply: Bytes::from(reply),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::cephx::rotating::{RotatingKeyStore, RotatingSecrets};
    use crate::auth::cephx::testing::TestRng;
    use crate::auth::cephx::ticket::AuthCapsInfo;
    use crate::types::AuthEntityName;

    const NOW: UTime = UTime::new(1_700_000_000, 0);

    /// A daemon store for osd and a client ticket sealed with its current secret.
    fn osd_and_ticket(rng: &mut TestRng, global_id: u64) -> (RotatingKeyStore, ReceivedTicket) {
        let rotating = RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, rng);
        let (id, cur) = rotating.current().unwrap();
        let session_key = CryptoKey::generate(NOW, rng);
        let info = ServiceTicketInfo {
            ticket: AuthTicket {
                name: AuthEntityName::new(EntityType::CLIENT, "admin"),
                global_id,
                created: NOW,
                expires: UTime::new(NOW.sec + 3600, 0),
                caps: AuthCapsInfo::from_cap_string("allow *"),
                flags: 0,
            },
            session_key: session_key.clone(),
        };
        let blob = info.seal(id, &cur.key);
        let store = RotatingKeyStore::new(EntityType::OSD, rotating.clone());
        (
            store,
            ReceivedTicket {
                service: EntityType::OSD,
                session_key,
                validity: Duration::from_secs(3600),
                blob,
            },
        )
    }

    #[test]
    fn challenge_round_then_accept_then_reply_checks() {
        let mut rng = TestRng::new(1);
        let (store, ticket) = osd_and_ticket(&mut rng, 4242);
        let mut client = Authorizer::new(4242, &ticket, &mut rng);
        // Sizes of cephx.md 7.1: 13 + (13 + blob) + 36.
        assert_eq!(client.bytes().len(), 13 + 13 + ticket.blob.blob.len() + 36);
        let mut daemon = AuthorizerVerifier::new();
        let v = daemon
            .verify(&store, EntityType::OSD, client.bytes(), true, NOW, None, &mut rng)
            .unwrap();
        let AuthorizerVerdict::Challenge(ch) = v else { panic!("{v:?}") };
        assert_eq!(ch.len(), 32, "raw ciphertext, no length");
        let again = client.handle_challenge(&ch).unwrap();
        let v = daemon.verify(&store, EntityType::OSD, &again, true, NOW, None, &mut rng).unwrap();
        let AuthorizerVerdict::Accepted(acc) = v else { panic!("{v:?}") };
        assert_eq!(acc.ticket.global_id, 4242);
        assert_eq!(acc.ticket.name.to_string(), "client.admin");
        assert_eq!(acc.session_key, *client.session_key());
        assert_eq!(acc.reply.len(), 36);
        assert_eq!(client.verify_reply(&acc.reply).unwrap(), None);
        // A reply for another nonce is refused.
        let forged = AuthorizeReply { nonce_plus_one: 7, connection_secret: None }
            .seal(client.session_key());
        assert!(matches!(client.verify_reply(&forged), Err(AuthError::BadAuthorizer(_))));
    }

    #[test]
    fn verifier_refuses_bad_authorizers() {
        let mut rng = TestRng::new(2);
        let (store, ticket) = osd_and_ticket(&mut rng, 4242);
        let check = |bytes: &[u8], rng: &mut TestRng| {
            AuthorizerVerifier::new().verify(&store, EntityType::OSD, bytes, false, NOW, None, rng)
        };
        // Accepted without a challenge when not required (cephx_service_require_version 1).
        let good = Authorizer::new(4242, &ticket, &mut rng);
        assert!(matches!(check(good.bytes(), &mut rng), Ok(AuthorizerVerdict::Accepted(_))));
        // Global id differs from the ticket's.
        let liar = Authorizer::new(4243, &ticket, &mut rng);
        assert!(matches!(check(liar.bytes(), &mut rng), Err(AuthError::BadAuthorizer(_))));
        // Part B under a wrong session key.
        let mut wrong = ticket.clone();
        wrong.session_key = CryptoKey::new(NOW, [5; 16]);
        let a = Authorizer::new(4242, &wrong, &mut rng);
        assert_eq!(check(a.bytes(), &mut rng), Err(AuthError::BadMagic));
        // A secret id the daemon does not hold.
        let mut stale = ticket.clone();
        stale.blob.secret_id = 99;
        let a = Authorizer::new(4242, &stale, &mut rng);
        assert!(matches!(check(a.bytes(), &mut rng), Err(AuthError::MissingServiceSecret { .. })));
        // Presented to the wrong service.
        let r = AuthorizerVerifier::new().verify(
            &store,
            EntityType::MGR,
            good.bytes(),
            false,
            NOW,
            None,
            &mut rng,
        );
        assert!(matches!(r, Err(AuthError::BadAuthorizer(_))));
        // Expired ticket, a whole lifetime ago (until then it is taken: a daemon's
        // clock may run ahead of the monitor's, and Ceph's never looks at it).
        let later = UTime::new(NOW.sec + 2 * 3600 + 1, 0);
        let r = AuthorizerVerifier::new().verify(
            &store,
            EntityType::OSD,
            good.bytes(),
            false,
            later,
            None,
            &mut rng,
        );
        assert_eq!(r, Err(AuthError::Expired));
        // Truncations never panic and never pass.
        for cut in 0..good.bytes().len() {
            assert!(check(&good.bytes()[..cut], &mut rng).is_err());
        }
    }

    #[test]
    fn challenge_answers_are_checked() {
        let mut rng = TestRng::new(3);
        let (store, ticket) = osd_and_ticket(&mut rng, 1);
        let mut client = Authorizer::new(1, &ticket, &mut rng);
        let mut daemon = AuthorizerVerifier::new();
        let AuthorizerVerdict::Challenge(ch) = daemon
            .verify(&store, EntityType::OSD, client.bytes(), true, NOW, None, &mut rng)
            .unwrap()
        else {
            panic!()
        };
        // Repeating the first authorizer does not answer the challenge.
        let first = client.bytes().clone();
        let r = daemon.verify(&store, EntityType::OSD, &first, true, NOW, None, &mut rng);
        assert!(matches!(r, Err(AuthError::BadAuthorizer(_))));
        // A wrong answer (challenge + 2) is refused.
        let mut off = client.clone();
        let plain = ticket.session_key.open(&ch).unwrap();
        let c = u64::from_le_bytes(plain[1..9].try_into().unwrap());
        off.bytes = off.build(Authorize {
            nonce: off.nonce,
            have_challenge: true,
            server_challenge_plus_one: c + 2,
        });
        let r = daemon.verify(&store, EntityType::OSD, off.bytes(), true, NOW, None, &mut rng);
        assert_eq!(r, Err(AuthError::BadAuthorizer("wrong server_challenge + 1")));
        // An answer to a challenge that was never sent.
        let answer = client.handle_challenge(&ch).unwrap();
        let r = AuthorizerVerifier::new().verify(
            &store,
            EntityType::OSD,
            &answer,
            true,
            NOW,
            None,
            &mut rng,
        );
        assert!(matches!(r, Err(AuthError::BadAuthorizer(_))));
        // v2: the reply carries the connection secret.
        let v = daemon
            .verify(&store, EntityType::OSD, &answer, true, NOW, Some(vec![9; 64]), &mut rng)
            .unwrap();
        let AuthorizerVerdict::Accepted(acc) = v else { panic!() };
        assert_eq!(client.verify_reply(&acc.reply).unwrap(), Some(vec![9; 64]));
    }

    // cephx seals a ticket with AES-CBC and no MAC (Ceph's design): whoever holds a
    // ticket flips bits of one 16-byte block of the plaintext by flipping the same bits
    // of the ciphertext block before it, which then decrypts to garbage. The holder
    // knows the layout (its own name fixes it), so client.admin could turn on
    // allow_all, or push the ticket's expiry to 2092, garbling only the block holding
    // auid and created, which were decoded and ignored: the daemon accepted both.
    #[test]
    fn a_ticket_its_holder_tampered_with_is_refused() {
        let mut rng = TestRng::new(4);
        let (store, ticket) = osd_and_ticket(&mut rng, 4242);
        // The layout for client.admin (the test reads it; an attacker knows it): auid
        // and created fill block 2, expires starts block 3, allow_all is its 10th byte.
        let secret = store.service_secret(EntityType::OSD, ticket.blob.secret_id).unwrap();
        let plain = secret.decrypt(&ticket.blob.blob).unwrap();
        assert_eq!(plain[32..40], [0xff; 8], "auid");
        assert_eq!(plain[48..52], (NOW.sec + 3600).to_le_bytes(), "expires");
        assert_eq!(plain[57], 0, "allow_all");
        let tampered = |at: usize, bits: u8| {
            let mut t = ticket.clone();
            t.blob.blob[at - 16] ^= bits;
            t
        };
        let check = |t: &ReceivedTicket, now: UTime, rng: &mut TestRng| {
            let a = Authorizer::new(4242, t, rng);
            AuthorizerVerifier::new().verify(
                &store,
                EntityType::OSD,
                a.bytes(),
                false,
                now,
                None,
                rng,
            )
        };
        assert!(matches!(check(&ticket, NOW, &mut rng), Ok(AuthorizerVerdict::Accepted(_))));
        // allow_all turned on.
        let r = check(&tampered(57, 1), NOW, &mut rng);
        if let Ok(AuthorizerVerdict::Accepted(acc)) = &r {
            assert!(!acc.ticket.caps.allow_all, "the holder gave itself allow_all");
        }
        assert!(r.is_err(), "{r:?}");
        // Expiry pushed from 2023 to 2092, and used a day after the real one.
        let r = check(&tampered(51, 0x80), UTime::new(NOW.sec + 86_400, 0), &mut rng);
        assert!(r.is_err(), "an expired ticket made valid for decades: {r:?}");
    }

    // The holder of a ticket whose name puts `created` and `expires` alone in one block
    // (an id of 13 bytes: `client.rgw.gateway01`) garbles just that block to flip
    // allow_all in the next: auid is not in it, and 16 random bytes pass "valid
    // nanoseconds, created <= expires, not expired" about once in 60 tries (each a
    // connection). A ticket is refused unless its validity is one a key server could
    // have written: no longer than MAX_TICKET_LIFETIME, created no later than a day
    // after now.
    #[test]
    fn a_tampered_ticket_whose_garbled_block_holds_only_its_validity_is_refused() {
        let mut rng = TestRng::new(5);
        let rotating = RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, &mut rng);
        let (id, cur) = rotating.current().unwrap();
        let session_key = CryptoKey::generate(NOW, &mut rng);
        let info = ServiceTicketInfo {
            ticket: AuthTicket {
                name: AuthEntityName::new(EntityType::CLIENT, "rgw.gateway01"),
                global_id: 4242,
                created: NOW,
                expires: UTime::new(NOW.sec + 3600, 0),
                caps: AuthCapsInfo::from_cap_string("allow r"),
                flags: 0,
            },
            session_key: session_key.clone(),
        };
        let blob = info.seal(id, &cur.key);
        let store = RotatingKeyStore::new(EntityType::OSD, rotating.clone());
        let ticket = ReceivedTicket {
            service: EntityType::OSD,
            session_key,
            validity: Duration::from_secs(3600),
            blob,
        };
        // The layout (the holder knows it from its name): auid fills block 2, created
        // and expires block 3, the caps' version and allow_all start block 4.
        let plain = cur.key.decrypt(&ticket.blob.blob).unwrap();
        assert_eq!(plain[40..48], [0xff; 8], "auid");
        assert_eq!(plain[48..52], NOW.sec.to_le_bytes(), "created");
        assert_eq!(plain[56..60], (NOW.sec + 3600).to_le_bytes(), "expires");
        assert_eq!(plain[65], 0, "allow_all");
        let mut accepted = Vec::new();
        // Byte 48 of the ciphertext flips the caps' version (ignored), byte 49
        // allow_all (any non-zero value is true); each pair garbles block 3 anew.
        'tries: for version in 0..=255u8 {
            for allow in 1..=255u8 {
                let mut t = ticket.clone();
                t.blob.blob[48] ^= version;
                t.blob.blob[49] ^= allow;
                let a = Authorizer::new(4242, &t, &mut rng);
                let r = AuthorizerVerifier::new().verify(
                    &store,
                    EntityType::OSD,
                    a.bytes(),
                    false,
                    NOW,
                    None,
                    &mut rng,
                );
                if let Ok(AuthorizerVerdict::Accepted(acc)) = r {
                    accepted.push((version, allow, acc.ticket.caps.allow_all));
                }
                if u32::from(version) * 255 + u32::from(allow) >= 4000 {
                    break 'tries;
                }
            }
        }
        assert!(accepted.is_empty(), "tampered tickets accepted (allow_all): {accepted:?}");
    }
}
