//! `auth none` behind the seam: msgr2's AUTH_REQUEST payload (msgr-v2.md 5.2) and the
//! v1 authorizer a connector presents to a daemon (msgr-v1.md 3.6; an acceptor leaves
//! authorizers to its driver, [`crate::Event::VerifyAuthorizer`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::types::{AuthEntityName, EntityAddr, EntityType, Features, AUTH_NONE};

use super::authorizer::{AuthorizerClient, SessionHandler};
use super::cephx::ticket::AuthCapsInfo;
use super::error::AuthError;
use super::mode::ConMode;
use super::provider::{
    AuthClient, AuthOutcome, AuthPeer, AuthProvider, AuthRole, AuthServer, AuthStep,
    AUTH_MODE_AUTHORIZER, AUTH_MODE_MON, AUTH_MODE_MON_MAX, EACCES, EOPNOTSUPP,
};

/// auth none, connector side: the AUTH_REQUEST payload is `u8 auth_mode` (10 to a
/// monitor, 1 otherwise: the auth-none authorizer), the entity name and the global id.
#[derive(Clone, Debug)]
pub struct AuthNoneClient {
    name: AuthEntityName,
    global_id: u64,
    to_monitor: bool,
}

impl AuthNoneClient {
    /// A client for `name` (e.g. `client.admin`) with `global_id` (0 when it has
    /// none yet), talking to a peer of `peer_type`. A monitor authenticates other
    /// monitors with an authorizer, like every other daemon pair (msgr-v2.md 5.2).
    pub fn new(name: AuthEntityName, global_id: u64, peer_type: EntityType) -> Self {
        let i_am_mon = name.ty == u32::from(EntityType::MON.0);
        AuthNoneClient { name, global_id, to_monitor: peer_type == EntityType::MON && !i_am_mon }
    }
}

impl AuthClient for AuthNoneClient {
    fn build_request(&mut self) -> Result<Bytes> {
        let mut e = Encoder::new();
        e.u8(if self.to_monitor { AUTH_MODE_MON } else { AUTH_MODE_AUTHORIZER });
        self.name.encode(&mut e);
        e.u64(self.global_id);
        Ok(e.into_bytes())
    }

    fn handle_reply_more(&mut self, _payload: &[u8]) -> Result<Bytes> {
        Err(Error::Malformed("auth none has no second round"))
    }

    fn handle_done(
        &mut self,
        _now: Instant,
        global_id: u64,
        _mode: ConMode,
        _payload: &[u8],
    ) -> Result<AuthOutcome> {
        self.global_id = global_id;
        Ok(AuthOutcome::default())
    }
}

/// auth none's msgr v1 authorizer (Ceph's `AuthNoneAuthorizer`): `u8 1`, the entity
/// name and the global id (msgr-v1.md 3.6). A Pacific daemon or monitor answers a
/// connect without one BADAUTHORIZER even under auth none (its `require_authorizer`);
/// only a client dialling a monitor sends none.
#[derive(Clone, Debug)]
pub struct AuthNoneAuthorizer {
    bytes: Bytes,
}

impl AuthNoneAuthorizer {
    /// The authorizer of `name` with `global_id` (0 when it has none yet).
    pub fn new(name: &AuthEntityName, global_id: u64) -> Self {
        let mut e = Encoder::new();
        e.u8(1);
        name.encode(&mut e);
        e.u64(global_id);
        AuthNoneAuthorizer { bytes: e.into_bytes() }
    }
}

/// The peer an auth-none v1 authorizer names, as Ceph's `AuthNoneAuthorizeHandler`
/// reads it (`u8` version, entity name, global id; bytes after them ignored) and grants
/// it every cap. `None` for bytes that do not decode: Ceph refuses those.
pub fn authorizer_peer(bytes: &[u8]) -> Option<AuthPeer> {
    let mut d = Decoder::new(bytes);
    let _version = d.u8().ok()?;
    let name = AuthEntityName::decode(&mut d).ok()?;
    let global_id = d.u64().ok()?;
    Some(AuthPeer { name, global_id, caps: AuthCapsInfo::allow_all() })
}

impl AuthorizerClient for AuthNoneAuthorizer {
    fn method(&self) -> u32 {
        AUTH_NONE
    }

    fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    fn handle_challenge(&mut self, _challenge: &[u8]) -> std::result::Result<Bytes, AuthError> {
        Err(AuthError::Malformed("auth none answers no authorizer challenge"))
    }

    fn handle_reply(
        &mut self,
        _reply: &[u8],
        _features: Features,
    ) -> std::result::Result<Option<Box<dyn SessionHandler>>, AuthError> {
        // The acceptor's auth-none reply is empty, and nothing is signed.
        Ok(None)
    }
}

/// auth none, acceptor side: accepts any well-formed request. To a monitor-mode
/// request with global id 0 it assigns the next id of its counter (a monitor's job);
/// an authorizer keeps the id it names.
pub struct AuthNoneServer {
    next_global_id: Arc<AtomicU64>,
}

impl AuthServer for AuthNoneServer {
    fn handle_request(
        &mut self,
        _now: std::time::Instant,
        _mode: ConMode,
        more: bool,
        payload: &[u8],
    ) -> AuthStep {
        if more {
            return AuthStep::Reject { result: EOPNOTSUPP };
        }
        let mut d = Decoder::new(payload);
        let parsed = (|| -> Result<(u8, AuthEntityName, u64)> {
            let mode = d.u8()?;
            let name = AuthEntityName::decode(&mut d)?;
            Ok((mode, name, d.u64()?))
        })();
        // auth none authenticates nobody: the peer is whom it names, with every cap (as
        // Ceph's AuthNone handlers grant).
        let done = |name, global_id| AuthStep::Done {
            global_id,
            payload: Bytes::new(),
            outcome: AuthOutcome {
                peer: Some(AuthPeer { name, global_id, caps: AuthCapsInfo::allow_all() }),
                ..AuthOutcome::default()
            },
        };
        match parsed {
            Ok((mode, name, 0)) if (AUTH_MODE_MON..=AUTH_MODE_MON_MAX).contains(&mode) => {
                done(name, self.next_global_id.fetch_add(1, Ordering::Relaxed))
            }
            Ok((mode, name, global_id))
                if (AUTH_MODE_AUTHORIZER..=AUTH_MODE_MON_MAX).contains(&mode) =>
            {
                done(name, global_id)
            }
            _ => AuthStep::Reject { result: EACCES },
        }
    }
}

/// The first global id an auth-none acceptor hands out (a 16.2.15 monitor started at
/// 4099 in our runs; any non-zero value works).
pub const FIRST_GLOBAL_ID: u64 = 4096;

/// `auth none` in both roles for every peer type, crc mode only.
#[derive(Debug)]
pub struct AuthNoneProvider {
    name: AuthEntityName,
    next_global_id: Arc<AtomicU64>,
    modes: Vec<ConMode>,
}

impl AuthNoneProvider {
    /// Auth none as `name` (the `EntityName` sent in requests).
    pub fn new(name: AuthEntityName) -> Self {
        AuthNoneProvider {
            name,
            next_global_id: Arc::new(AtomicU64::new(FIRST_GLOBAL_ID)),
            modes: vec![ConMode::CRC],
        }
    }

    /// The same, handing out global ids from `first` on (an acceptor playing a
    /// monitor).
    pub fn with_first_global_id(self, first: u64) -> Self {
        self.next_global_id.store(first, Ordering::Relaxed);
        self
    }

    /// The same, handing out global ids from `counter`, which another method's
    /// acceptor of the same monitor shares: a monitor has one counter (Ceph's
    /// `AuthMonitor::_assign_global_id`), whichever method a peer authenticates with.
    pub(crate) fn with_global_id_counter(mut self, counter: Arc<AtomicU64>) -> Self {
        self.next_global_id = counter;
        self
    }
}

impl AuthProvider for AuthNoneProvider {
    fn methods(&self, _role: AuthRole, _peer_type: EntityType) -> Vec<u32> {
        vec![AUTH_NONE]
    }

    fn modes(&self, _role: AuthRole, _peer_type: EntityType) -> Vec<ConMode> {
        self.modes.clone()
    }

    fn client(
        &self,
        peer_type: EntityType,
        _peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>> {
        (method == AUTH_NONE)
            .then(|| Box::new(AuthNoneClient::new(self.name.clone(), 0, peer_type)) as _)
    }

    fn server(&self, _peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        (method == AUTH_NONE)
            .then(|| Box::new(AuthNoneServer { next_global_id: self.next_global_id.clone() }) as _)
    }

    fn authorizer_client(
        &self,
        _peer_type: EntityType,
    ) -> std::result::Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        Ok(Some(Box::new(AuthNoneAuthorizer::new(&self.name, 0))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // What an auth-none v1 authorizer names is read back as Ceph's handler reads it;
    // bytes that do not decode name nobody.
    #[test]
    fn an_auth_none_authorizer_names_its_peer() {
        let name = AuthEntityName::new(EntityType::OSD, "3");
        let a = AuthNoneAuthorizer::new(&name, 4107);
        let peer = authorizer_peer(&a.bytes()).unwrap();
        assert_eq!((peer.name, peer.global_id), (name, 4107));
        assert_eq!(peer.caps, AuthCapsInfo::allow_all());
        let mut longer = a.bytes().to_vec();
        longer.extend_from_slice(b"later fields");
        assert!(authorizer_peer(&longer).is_some());
        for cut in 0..a.bytes().len() {
            assert!(authorizer_peer(&a.bytes()[..cut]).is_none(), "{cut} bytes");
        }
    }

    // msgr-v2.md 5.2: client.admin to a monitor, and mon.a's authorizer to a mon peer.
    #[test]
    fn none_payloads_match_ceph() {
        let mut c = AuthNoneClient::new(
            AuthEntityName::new(EntityType::CLIENT, "admin"),
            0,
            EntityType::MON,
        );
        let b = c.build_request().unwrap();
        assert_eq!(&b[..], b"\x0a\x08\x00\x00\x00\x05\x00\x00\x00admin\0\0\0\0\0\0\0\0");
        let mut m =
            AuthNoneClient::new(AuthEntityName::new(EntityType::MON, "a"), 0, EntityType::MON);
        assert_eq!(
            &m.build_request().unwrap()[..],
            b"\x01\x01\x00\x00\x00\x01\x00\x00\x00a\0\0\0\0\0\0\0\0"
        );
        assert!(c.handle_reply_more(b"x").is_err());
    }

    // msgr-v1.md 3.6: the v1 authorizer mon.b presented (a 16.2.15 monitor dialling
    // another entity); a challenge to it cannot be answered, and its reply is empty.
    #[test]
    fn none_authorizer_matches_ceph() {
        let mut a = AuthNoneAuthorizer::new(&AuthEntityName::new(EntityType::MON, "b"), 0);
        assert_eq!(a.method(), AUTH_NONE);
        assert_eq!(&a.bytes()[..], b"\x01\x01\x00\x00\x00\x01\x00\x00\x00b\0\0\0\0\0\0\0\0");
        assert!(a.handle_challenge(b"nonce").is_err());
        assert!(a.handle_reply(&[], Features::PACIFIC_ADVERTISED).unwrap().is_none());
        let p = AuthNoneProvider::new(AuthEntityName::new(EntityType::CLIENT, "admin"));
        let from_provider = p.authorizer_client(EntityType::OSD).unwrap().unwrap();
        let want = AuthNoneAuthorizer::new(&AuthEntityName::new(EntityType::CLIENT, "admin"), 0);
        assert_eq!(from_provider.bytes(), want.bytes());
    }

    #[test]
    fn none_server_assigns_ids_and_rejects_garbage() {
        let p = AuthNoneProvider::new(AuthEntityName::new(EntityType::MON, "a"));
        let mut s = p.server(EntityType::CLIENT, AUTH_NONE).unwrap();
        let mut c = AuthNoneClient::new(
            AuthEntityName::new(EntityType::CLIENT, "admin"),
            0,
            EntityType::MON,
        );
        let req = c.build_request().unwrap();
        // Auth none never reads the clock; any instant does.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        let AuthStep::Done { global_id, .. } = s.handle_request(now, ConMode::CRC, false, &req)
        else {
            panic!("not done")
        };
        assert_eq!(global_id, FIRST_GLOBAL_ID);
        let AuthStep::Done { global_id, .. } = s.handle_request(now, ConMode::CRC, false, &req)
        else {
            panic!("not done")
        };
        assert_eq!(global_id, FIRST_GLOBAL_ID + 1);
        assert_eq!(
            s.handle_request(now, ConMode::CRC, false, &[]),
            AuthStep::Reject { result: EACCES }
        );
        assert_eq!(
            s.handle_request(
                now,
                ConMode::CRC,
                false,
                &[42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            ),
            AuthStep::Reject { result: EACCES }
        );
        assert!(p.server(EntityType::CLIENT, 2).is_none());
    }
}
