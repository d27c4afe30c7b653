//! Toy authentication for the harness (NOT secure: it only has the shape of cephx):
//! a two-round msgr2 method with a session key and a connection secret (secure mode),
//! and msgr v1 authorizers with a challenge round and signed messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::auth::{
    AuthClient, AuthError, AuthNoneProvider, AuthOutcome, AuthProvider, AuthRole, AuthServer,
    AuthStep, AuthorizerClient, AuthorizerRequest, AuthorizerServer, AuthorizerStep, ConMode,
    SessionHandler, EACCES,
};
use crate::error::{Error, Result};
use crate::types::{AuthEntityName, EntityAddr, EntityType, Features, AUTH_NONE};
use crate::wire::{FooterFlags, MsgFooter, MsgHeader};

/// The toy method's number: outside Ceph's `CEPH_AUTH_*` values.
pub const TEST_AUTH: u32 = 0xfe;

/// A toy auth method for tests (NOT secure: it only has the shape of cephx): two rounds
/// over msgr2, and optionally v1 authorizers ([`TestAuthProvider::with_v1_authorizers`]).
///
/// AUTH_REQUEST carries a name; the acceptor answers AUTH_REPLY_MORE with an 8-byte
/// challenge; AUTH_REQUEST_MORE proves the shared key by xoring it in; AUTH_DONE
/// carries a 64-byte connection secret masked with the key (secure mode only). Both
/// sides then hold the key as session key (so the AUTH_SIGNATUREs are real HMACs).
pub struct TestAuthProvider {
    key: [u8; 16],
    modes: Vec<ConMode>,
    counter: Arc<AtomicU64>,
    /// Methods a connector offers (default: TEST_AUTH then AUTH_NONE).
    pub client_methods: Vec<u32>,
    /// Methods an acceptor allows (default: TEST_AUTH then AUTH_NONE).
    pub server_methods: Vec<u32>,
    /// msgr v1: connectors present [`TEST_AUTH`] authorizers and acceptors verify them
    /// inline, with a challenge round and signed messages (default: off, auth none).
    pub v1_authorizers: bool,
    none: AuthNoneProvider,
}

impl TestAuthProvider {
    /// Both roles, preferring `modes`.
    pub fn new(modes: &[ConMode]) -> Self {
        TestAuthProvider {
            key: *b"asyncmsgr-test!!",
            modes: modes.to_vec(),
            counter: Arc::new(AtomicU64::new(1)),
            client_methods: vec![TEST_AUTH, AUTH_NONE],
            server_methods: vec![TEST_AUTH, AUTH_NONE],
            v1_authorizers: false,
            none: AuthNoneProvider::new(AuthEntityName::new(EntityType::CLIENT, "test")),
        }
    }

    /// The same key with a different value: proofs fail (EACCES).
    pub fn with_wrong_key(mut self) -> Self {
        self.key[0] ^= 1;
        self
    }

    /// With msgr v1 authorizers on ([`TestAuthProvider::v1_authorizers`]).
    pub fn with_v1_authorizers(mut self) -> Self {
        self.v1_authorizers = true;
        self
    }
}

fn mask(key: &[u8; 16], data: &[u8]) -> Vec<u8> {
    data.iter().zip(key.iter().cycle()).map(|(d, k)| d ^ k).collect()
}

struct TestClient {
    key: [u8; 16],
}

impl AuthClient for TestClient {
    fn build_request(&mut self) -> Result<Bytes> {
        Ok(Bytes::from_static(b"test-auth"))
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes> {
        if payload.len() != 8 {
            return Err(Error::Malformed("test auth challenge is not 8 bytes"));
        }
        Ok(Bytes::from(mask(&self.key, payload)))
    }

    fn handle_done(
        &mut self,
        _now: Instant,
        _global_id: u64,
        mode: ConMode,
        payload: &[u8],
    ) -> Result<AuthOutcome> {
        let secret = mask(&self.key, payload);
        if mode == ConMode::SECURE && secret.len() < 40 {
            return Err(Error::Malformed("test auth secret too short"));
        }
        Ok(AuthOutcome {
            session_key: Some(self.key.to_vec()),
            connection_secret: secret,
            peer: None,
        })
    }
}

struct TestServer {
    key: [u8; 16],
    challenge: [u8; 8],
    counter: Arc<AtomicU64>,
}

impl AuthServer for TestServer {
    fn handle_request(
        &mut self,
        _now: Instant,
        mode: ConMode,
        more: bool,
        payload: &[u8],
    ) -> AuthStep {
        if !more {
            return AuthStep::More(Bytes::copy_from_slice(&self.challenge));
        }
        if payload != mask(&self.key, &self.challenge).as_slice() {
            return AuthStep::Reject { result: EACCES };
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let secret: Vec<u8> = if mode == ConMode::SECURE {
            (0..64u64).map(|i| (n.wrapping_mul(31).wrapping_add(i * 7)) as u8).collect()
        } else {
            Vec::new()
        };
        AuthStep::Done {
            global_id: 1000 + n,
            payload: Bytes::from(mask(&self.key, &secret)),
            outcome: AuthOutcome {
                session_key: Some(self.key.to_vec()),
                connection_secret: secret,
                peer: None,
            },
        }
    }
}

impl AuthProvider for TestAuthProvider {
    fn methods(&self, role: AuthRole, _peer_type: EntityType) -> Vec<u32> {
        match role {
            AuthRole::Connector => self.client_methods.clone(),
            AuthRole::Acceptor => self.server_methods.clone(),
        }
    }

    fn modes(&self, _role: AuthRole, _peer_type: EntityType) -> Vec<ConMode> {
        self.modes.clone()
    }

    fn client(
        &self,
        peer_type: EntityType,
        peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>> {
        match method {
            TEST_AUTH => Some(Box::new(TestClient { key: self.key })),
            _ => self.none.client(peer_type, peer_addr, method),
        }
    }

    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        match method {
            TEST_AUTH => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                Some(Box::new(TestServer {
                    key: self.key,
                    challenge: n.to_le_bytes(),
                    counter: self.counter.clone(),
                }))
            }
            _ => self.none.server(peer_type, method),
        }
    }

    fn authorizer_client(
        &self,
        _peer_type: EntityType,
    ) -> std::result::Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        let nonce = self.counter.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .v1_authorizers
            .then(|| Box::new(TestAuthorizer { key: self.key, nonce, answer: None }) as _))
    }

    fn authorizer_server(&self) -> Option<Box<dyn AuthorizerServer>> {
        self.v1_authorizers.then(|| {
            let challenge = self.counter.fetch_add(1, Ordering::Relaxed) | 1 << 63;
            Box::new(TestAuthorizerServer { key: self.key, challenge, issued: false }) as _
        })
    }
}

/// The toy v1 authorizer: `"tauth"`, a nonce, and once challenged the challenge masked
/// with the key. The acceptor's reply is `nonce + 1` masked with the key.
struct TestAuthorizer {
    key: [u8; 16],
    nonce: u64,
    answer: Option<Vec<u8>>,
}

impl TestAuthorizer {
    fn encode(&self) -> Bytes {
        let mut b = b"tauth".to_vec();
        b.extend_from_slice(&self.nonce.to_le_bytes());
        if let Some(a) = &self.answer {
            b.extend_from_slice(a);
        }
        Bytes::from(b)
    }
}

impl AuthorizerClient for TestAuthorizer {
    fn method(&self) -> u32 {
        TEST_AUTH
    }

    fn bytes(&self) -> Bytes {
        self.encode()
    }

    fn handle_challenge(&mut self, challenge: &[u8]) -> std::result::Result<Bytes, AuthError> {
        if challenge.len() != 8 {
            return Err(AuthError::Malformed("test challenge is not 8 bytes"));
        }
        self.answer = Some(mask(&self.key, challenge));
        Ok(self.encode())
    }

    fn handle_reply(
        &mut self,
        reply: &[u8],
        features: Features,
    ) -> std::result::Result<Option<Box<dyn SessionHandler>>, AuthError> {
        if reply != mask(&self.key, &self.nonce.wrapping_add(1).to_le_bytes()).as_slice() {
            return Err(AuthError::Malformed("test authorizer reply does not match"));
        }
        Ok(TestSigner::for_session(self.key, features))
    }
}

/// The acceptor's side of [`TestAuthorizer`]: always challenges once.
struct TestAuthorizerServer {
    key: [u8; 16],
    challenge: u64,
    issued: bool,
}

impl AuthorizerServer for TestAuthorizerServer {
    fn verify(&mut self, req: &AuthorizerRequest<'_>) -> AuthorizerStep {
        let a = req.authorizer;
        let (Some(b"tauth"), Some(nonce)) = (a.get(..5), a.get(5..13)) else {
            return AuthorizerStep::Reject;
        };
        if req.method != TEST_AUTH {
            return AuthorizerStep::Reject;
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(nonce);
        let nonce = u64::from_le_bytes(n);
        if !self.issued {
            self.issued = true;
            return AuthorizerStep::Challenge(Bytes::copy_from_slice(
                &self.challenge.to_le_bytes(),
            ));
        }
        if a.get(13..) != Some(mask(&self.key, &self.challenge.to_le_bytes()).as_slice()) {
            return AuthorizerStep::Reject;
        }
        let _: Instant = req.now;
        AuthorizerStep::Accept {
            reply: Bytes::from(mask(&self.key, &nonce.wrapping_add(1).to_le_bytes())),
            signer: TestSigner::for_session(self.key, req.features),
            peer: None,
        }
    }
}

/// Toy message signatures: the signed fields folded with the key (so a changed byte in
/// any covered field, or the wrong key, fails the check).
pub struct TestSigner {
    key: [u8; 16],
}

impl TestSigner {
    /// A signer when the session negotiated MSG_AUTH (the footer has room), as cephx.
    pub fn for_session(key: [u8; 16], features: Features) -> Option<Box<dyn SessionHandler>> {
        features.contains(Features::MSG_AUTH).then(|| Box::new(TestSigner { key }) as _)
    }

    fn signature(&self, h: &MsgHeader, f: &MsgFooter) -> u64 {
        let words = [
            u64::from(h.crc),
            u64::from(f.front_crc),
            u64::from(f.middle_crc),
            u64::from(f.data_crc),
            u64::from(h.front_len) << 32 | u64::from(h.data_len),
            h.seq,
        ];
        let mut k = [0u8; 8];
        k.copy_from_slice(&self.key[..8]);
        words
            .iter()
            .fold(u64::from_le_bytes(k), |acc, w| (acc ^ w).rotate_left(13).wrapping_mul(31))
    }
}

impl SessionHandler for TestSigner {
    fn sign(&self, header: &MsgHeader, footer: &mut MsgFooter) {
        footer.sig = self.signature(header, footer);
        footer.flags = footer.flags | FooterFlags::SIGNED;
    }

    fn check(&self, header: &MsgHeader, footer: &MsgFooter) -> std::result::Result<(), AuthError> {
        if footer.sig == self.signature(header, footer) {
            Ok(())
        } else {
            Err(AuthError::BadSignature { seq: header.seq })
        }
    }
}
