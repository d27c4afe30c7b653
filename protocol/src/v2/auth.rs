//! The auth seam of msgr2: how the state machine obtains and checks the payloads of
//! AUTH_REQUEST / AUTH_REPLY_MORE / AUTH_REQUEST_MORE / AUTH_DONE without knowing the
//! method (msgr-v2.md 5.2), and `auth none` behind it.
//!
//! The machine asks an [`AuthProvider`] (one per messenger, in [`super::Config`]) which
//! methods and modes to offer or allow for a peer type, and starts one [`AuthClient`]
//! (connector) or [`AuthServer`] (acceptor) per authentication attempt. The method
//! returns an [`AuthOutcome`]: the session key that signs the pre-auth transcript
//! (AUTH_SIGNATURE) and the connection secret secure mode derives its keys from.
//!
//! These traits are Ceph's `AuthClient` / `AuthServer` interfaces reduced to what one
//! connection needs. They are defined here for now and are meant to move to
//! `protocol::auth` when the auth seam lands, where cephx implements them too; nothing
//! in them is specific to msgr2 except the [`ConMode`] a method is told about.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::types::{AuthEntityName, EntityType, AUTH_NONE};

use super::tag::ConMode;

/// `AUTH_MODE_AUTHORIZER`: the payload is an authorizer (any peer but a monitor).
pub const AUTH_MODE_AUTHORIZER: u8 = 1;
/// `AUTH_MODE_MON`: the payload authenticates to a monitor.
pub const AUTH_MODE_MON: u8 = 10;
/// Highest `AUTH_MODE_MON*` value (10..=19 are monitor modes, 1..=9 authorizers).
pub const AUTH_MODE_MON_MAX: u8 = 19;

/// `-EOPNOTSUPP`: the result in AUTH_BAD_METHOD for a method or mode we do not allow.
pub const EOPNOTSUPP: i32 = -95;
/// `-EACCES`: the result in AUTH_BAD_METHOD for bad credentials.
pub const EACCES: i32 = -13;

/// What a finished authentication yields for the connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthOutcome {
    /// The session key's secret: signs the pre-auth transcript. `None` (auth none):
    /// the signatures are zeros.
    pub session_key: Option<Vec<u8>>,
    /// The connection secret: secure mode's key and nonces come from its first 40
    /// bytes. Empty in crc mode.
    pub connection_secret: Vec<u8>,
}

impl std::fmt::Debug for AuthOutcome {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthOutcome")
            .field("session_key", &self.session_key.as_ref().map(Vec::len))
            .field("connection_secret", &self.connection_secret.len())
            .finish()
    }
}

/// The connector's side of one authentication (Ceph's `AuthClient` for one connection).
pub trait AuthClient: Send {
    /// The first AUTH_REQUEST's payload.
    fn build_request(&mut self) -> Result<Bytes>;

    /// An AUTH_REPLY_MORE payload arrived; returns the AUTH_REQUEST_MORE payload.
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes>;

    /// AUTH_DONE arrived with `global_id`, the chosen mode and the final payload.
    fn handle_done(&mut self, global_id: u64, mode: ConMode, payload: &[u8])
        -> Result<AuthOutcome>;
}

/// The acceptor's verdict on one AUTH_REQUEST or AUTH_REQUEST_MORE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Another round: send AUTH_REPLY_MORE with this payload.
    More(Bytes),
    /// Authenticated: send AUTH_DONE.
    Done {
        /// The connector's global id.
        global_id: u64,
        /// AUTH_DONE's payload.
        payload: Bytes,
        /// Keys for the signature and secure mode.
        outcome: AuthOutcome,
    },
    /// Refused (bad credentials, unknown entity): AUTH_BAD_METHOD with this negative
    /// errno; the connector may try again on the same connection.
    Reject {
        /// A negative errno, e.g. [`EACCES`].
        result: i32,
    },
    /// Cannot authenticate now (a monitor without quorum, Ceph's `-EBUSY`): drop the
    /// connection.
    Busy,
}

/// The acceptor's side of one authentication (Ceph's `AuthServer` for one connection).
pub trait AuthServer: Send {
    /// Handles the payload of AUTH_REQUEST (`more` false) or AUTH_REQUEST_MORE (true)
    /// for a connection in `mode`.
    fn handle_request(&mut self, mode: ConMode, more: bool, payload: &[u8]) -> AuthStep;
}

/// Which side of a connection a mode list is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRole {
    /// We dial (`auth_client_required`, `ms_*client_mode`).
    Connector,
    /// We accept (`auth_service_required` / `auth_cluster_required`, `ms_*service_mode`
    /// / `ms_*cluster_mode`).
    Acceptor,
}

/// Per-messenger auth configuration and handler factory (Ceph's `AuthRegistry` plus
/// its `AuthClient`/`AuthServer`).
pub trait AuthProvider: Send + Sync {
    /// Methods (`CEPH_AUTH_*`) for a peer of `peer_type`, in preference order.
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32>;

    /// Connection modes for a peer of `peer_type`, in preference order, before the
    /// per-method filter (auth none allows crc only; the machine applies that).
    fn modes(&self, role: AuthRole, peer_type: EntityType) -> Vec<ConMode>;

    /// A connector-side handler for `method`, or `None` if we cannot speak it.
    fn client(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthClient>>;

    /// An acceptor-side handler for `method`, or `None` if we do not allow it.
    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>>;
}

/// Ceph's `AuthRegistry::get_supported_modes` filter: a method without a connection
/// secret (auth none) cannot do secure mode.
pub fn filter_modes(method: u32, modes: &[ConMode]) -> Vec<ConMode> {
    modes.iter().copied().filter(|&m| method != AUTH_NONE || m != ConMode::SECURE).collect()
}

/// Ceph's `pick_con_mode`: the first of the connector's preferences we allow.
pub fn pick_mode(preferred: &[ConMode], allowed: &[ConMode]) -> Option<ConMode> {
    preferred.iter().copied().find(|m| allowed.contains(m))
}

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
        global_id: u64,
        _mode: ConMode,
        _payload: &[u8],
    ) -> Result<AuthOutcome> {
        self.global_id = global_id;
        Ok(AuthOutcome::default())
    }
}

/// auth none, acceptor side: accepts any well-formed request. To a monitor-mode
/// request with global id 0 it assigns the next id of its counter (a monitor's job);
/// an authorizer keeps the id it names.
pub struct AuthNoneServer {
    next_global_id: std::sync::Arc<AtomicU64>,
}

impl AuthServer for AuthNoneServer {
    fn handle_request(&mut self, _mode: ConMode, more: bool, payload: &[u8]) -> AuthStep {
        if more {
            return AuthStep::Reject { result: EOPNOTSUPP };
        }
        let mut d = Decoder::new(payload);
        let parsed = (|| -> Result<(u8, u64)> {
            let mode = d.u8()?;
            AuthEntityName::decode(&mut d)?;
            Ok((mode, d.u64()?))
        })();
        match parsed {
            Ok((mode, 0)) if (AUTH_MODE_MON..=AUTH_MODE_MON_MAX).contains(&mode) => {
                let global_id = self.next_global_id.fetch_add(1, Ordering::Relaxed);
                AuthStep::Done { global_id, payload: Bytes::new(), outcome: AuthOutcome::default() }
            }
            Ok((mode, global_id)) if (AUTH_MODE_AUTHORIZER..=AUTH_MODE_MON_MAX).contains(&mode) => {
                AuthStep::Done { global_id, payload: Bytes::new(), outcome: AuthOutcome::default() }
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
    next_global_id: std::sync::Arc<AtomicU64>,
    modes: Vec<ConMode>,
}

impl AuthNoneProvider {
    /// Auth none as `name` (the `EntityName` sent in requests).
    pub fn new(name: AuthEntityName) -> Self {
        AuthNoneProvider {
            name,
            next_global_id: std::sync::Arc::new(AtomicU64::new(FIRST_GLOBAL_ID)),
            modes: vec![ConMode::CRC],
        }
    }

    /// The same, handing out global ids from `first` on (an acceptor playing a
    /// monitor).
    pub fn with_first_global_id(self, first: u64) -> Self {
        self.next_global_id.store(first, Ordering::Relaxed);
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

    fn client(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthClient>> {
        (method == AUTH_NONE)
            .then(|| Box::new(AuthNoneClient::new(self.name.clone(), 0, peer_type)) as _)
    }

    fn server(&self, _peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        (method == AUTH_NONE)
            .then(|| Box::new(AuthNoneServer { next_global_id: self.next_global_id.clone() }) as _)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let AuthStep::Done { global_id, .. } = s.handle_request(ConMode::CRC, false, &req) else {
            panic!("not done")
        };
        assert_eq!(global_id, FIRST_GLOBAL_ID);
        let AuthStep::Done { global_id, .. } = s.handle_request(ConMode::CRC, false, &req) else {
            panic!("not done")
        };
        assert_eq!(global_id, FIRST_GLOBAL_ID + 1);
        assert_eq!(s.handle_request(ConMode::CRC, false, &[]), AuthStep::Reject { result: EACCES });
        assert_eq!(
            s.handle_request(
                ConMode::CRC,
                false,
                &[42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            ),
            AuthStep::Reject { result: EACCES }
        );
        assert!(p.server(EntityType::CLIENT, 2).is_none());
    }

    // "With method none only crc is possible" (msgr-v2.md 5.2); pick_con_mode.
    #[test]
    fn mode_filter_and_pick() {
        let both = [ConMode::SECURE, ConMode::CRC];
        assert_eq!(filter_modes(AUTH_NONE, &both), [ConMode::CRC]);
        assert_eq!(filter_modes(2, &both), both);
        assert_eq!(
            pick_mode(&[ConMode::SECURE, ConMode::CRC], &[ConMode::CRC, ConMode::SECURE]),
            Some(ConMode::SECURE)
        );
        assert_eq!(pick_mode(&[ConMode::SECURE], &[ConMode::CRC]), None);
    }
}
