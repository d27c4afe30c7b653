//! [`AuthProvider`]: the one object per messenger through which both connection
//! machines authenticate, and the msgr2 handlers it creates ([`AuthClient`],
//! [`AuthServer`]).
//!
//! msgr2 carries authentication in its AUTH frames (msgr-v2.md 5.2): the machine asks
//! the provider which methods and modes to offer or allow for a peer type, and starts
//! one [`AuthClient`] (connector) or [`AuthServer`] (acceptor) per attempt; the method
//! ends with an [`AuthOutcome`] (the session key that signs the pre-auth transcript,
//! the connection secret secure mode derives its keys from). msgr v1 carries an
//! authorizer in its connect message: the provider hands a connector its
//! [`AuthorizerClient`] and an acceptor its [`AuthorizerServer`] (see
//! [`super::authorizer`]).
//!
//! These are Ceph's `AuthClient` / `AuthServer` / `AuthRegistry` interfaces reduced to
//! what one connection needs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::error::Result;
use crate::types::{AuthEntityName, EntityAddr, EntityType, Features, AUTH_NONE};

use super::authorizer::{AuthorizerClient, AuthorizerServer};
use super::cephx::ticket::AuthCapsInfo;
use super::config::{ConModes, ConnKind};
use super::error::AuthError;
use super::mode::ConMode;

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

/// Who an accepted peer authenticated as, from what the auth method verified (a cephx
/// ticket, or the name auth none was given): Ceph's `peer_name`, `peer_global_id` and
/// `peer_caps_info` of a connection, what a daemon authorizes the peer's requests by.
/// The entity type the peer claims in its handshake (HELLO, the v1 connect's host
/// type) is a claim; this is what its credentials say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthPeer {
    /// The authenticated entity (`client.admin`, `osd.3`).
    pub name: AuthEntityName,
    /// Its global id.
    pub global_id: u64,
    /// Its caps for this service, as the ticket carries them (auth none: everything).
    pub caps: AuthCapsInfo,
}

/// What a finished msgr2 authentication yields for the connection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthOutcome {
    /// The session key's secret: signs the pre-auth transcript. `None` (auth none):
    /// the signatures are zeros.
    pub session_key: Option<Vec<u8>>,
    /// The connection secret: secure mode's key and nonces come from its first 40
    /// bytes. Empty in crc mode.
    pub connection_secret: Vec<u8>,
    /// Acceptor side: who the peer authenticated as (`None` on the connector side).
    pub peer: Option<AuthPeer>,
}

impl std::fmt::Debug for AuthOutcome {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthOutcome")
            .field("session_key", &self.session_key.as_ref().map(Vec::len))
            .field("connection_secret", &self.connection_secret.len())
            .field("peer", &self.peer)
            .finish()
    }
}

/// The msgr2 connector's side of one authentication (Ceph's `AuthClient` for one
/// connection).
pub trait AuthClient: Send {
    /// The first AUTH_REQUEST's payload.
    fn build_request(&mut self) -> Result<Bytes>;

    /// An AUTH_REPLY_MORE payload arrived; returns the AUTH_REQUEST_MORE payload.
    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes>;

    /// AUTH_DONE arrived at `now` with `global_id`, the chosen mode and the final
    /// payload (cephx stamps the tickets it brings with `now`, from which their renewal
    /// is timed).
    fn handle_done(
        &mut self,
        now: Instant,
        global_id: u64,
        mode: ConMode,
        payload: &[u8],
    ) -> Result<AuthOutcome>;

    /// The acceptor's AUTH_SIGNATURE matched: the AUTH_DONE was its answer on this
    /// connection, not one replayed from another. What it taught (tickets, a global id)
    /// may be kept from now on, not before.
    fn confirmed(&mut self) {}
}

/// The msgr2 acceptor's verdict on one AUTH_REQUEST or AUTH_REQUEST_MORE.
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

/// The msgr2 acceptor's side of one authentication (Ceph's `AuthServer` for one
/// connection).
pub trait AuthServer: Send {
    /// Handles the payload of AUTH_REQUEST (`more` false) or AUTH_REQUEST_MORE (true)
    /// for a connection in `mode`, at `now` (cephx checks ticket expiry and stamps the
    /// tickets it issues with the wall-clock time of `now`). The machine never passes an
    /// empty payload: it refuses one itself with [`EACCES`], as Ceph's auth servers do.
    fn handle_request(
        &mut self,
        now: Instant,
        mode: ConMode,
        more: bool,
        payload: &[u8],
    ) -> AuthStep;
}

/// Which side of a connection a method or mode list is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRole {
    /// We dial (`auth_client_required`, `ms_*client_mode`).
    Connector,
    /// We accept (`auth_service_required` / `auth_cluster_required`, `ms_*service_mode`
    /// / `ms_*cluster_mode`).
    Acceptor,
}

/// Per-messenger auth configuration and handler factory (Ceph's `AuthRegistry` plus
/// its `AuthClient`/`AuthServer`), for both protocols.
pub trait AuthProvider: Send + Sync {
    /// msgr2: methods (`CEPH_AUTH_*`) for a peer of `peer_type`, in preference order.
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32>;

    /// msgr2: connection modes for a peer of `peer_type`, in preference order, before
    /// the per-method filter (auth none allows crc only; the machine applies that).
    fn modes(&self, role: AuthRole, peer_type: EntityType) -> Vec<ConMode>;

    /// msgr2: a connector-side handler for `method` on a connection dialled to
    /// `peer_addr` (the address given to the messenger's `connect_to`), or `None` if we
    /// cannot speak it. cephx keeps a monitor session's state under that address for
    /// the application ([`super::cephx::TicketStore::take_monitor_session`]), as Ceph's
    /// MonClient finds a connection's `MonConnection` among its `pending_cons`.
    fn client(
        &self,
        peer_type: EntityType,
        peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>>;

    /// msgr2: an acceptor-side handler for `method`, or `None` if we do not allow it.
    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>>;

    /// msgr2: whether a peer that authenticated with `method` as an entity of type
    /// `named` may have done so. [`AuthProvider::server`] was picked by the type the
    /// peer's HELLO claimed; this checks the entity it turned out to be, so a peer cannot
    /// claim a type whose methods are weaker than its own's. By default only auth none
    /// is checked, whose name is the peer's word: a method that proved the name (cephx)
    /// stands, as on Ceph's daemons (an mgr's librados says "client" in its HELLO and
    /// authenticates as mgr.x). A monitor checks every method (Ceph's does).
    fn allows_authenticated(&self, method: u32, named: EntityType) -> bool {
        method != AUTH_NONE || self.methods(AuthRole::Acceptor, named).contains(&method)
    }

    /// msgr v1: the authorizer a connector presents to a peer of `peer_type` (Ceph's
    /// `ms_get_authorizer`), asked for each connect message; `Ok(None)` sends none (a
    /// method without v1 authorizers). An error (cephx required and no ticket for the
    /// peer's service) faults the connect, which is retried after the backoff, as
    /// Ceph's connector does: a session opened without the authorizer would be neither
    /// authenticated nor signed.
    #[doc(alias = "ms_get_authorizer")]
    fn authorizer_client(
        &self,
        peer_type: EntityType,
    ) -> std::result::Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        let _ = peer_type;
        Ok(None)
    }

    /// msgr v1: the feature bits an acceptor requires, beyond its policy's, of a connect
    /// from a peer of `peer_type` whose authorizer is of `method` (Ceph's
    /// `ProtocolV1::handle_connect_message_2` adds MSG_AUTH and CEPHX_V2 for cephx, as
    /// its config requires). A peer lacking one is answered FEATURES, before its
    /// authorizer is verified. None by default.
    fn v1_required_features(&self, peer_type: EntityType, method: u32) -> Features {
        let _ = (peer_type, method);
        Features::NONE
    }

    /// msgr v1: the verifier of the authorizers one accepted connection receives (it
    /// keeps the challenge it issued). `None`: the machine asks its driver instead
    /// ([`crate::Event::VerifyAuthorizer`]), as the messenger's dispatcher hooks do.
    #[doc(alias = "ms_verify_authorizer")]
    fn authorizer_server(&self) -> Option<Box<dyn AuthorizerServer>> {
        None
    }
}

/// Another provider with some of its msgr2 mode lists replaced (a messenger's
/// `ms_*_mode` options over whatever provider it was given); everything else is the
/// inner provider's.
pub struct WithConModes {
    inner: Arc<dyn AuthProvider>,
    me: EntityType,
    modes: BTreeMap<ConnKind, ConModes>,
}

impl WithConModes {
    /// `inner` for an entity of type `me`, with `modes` replacing its lists for those
    /// kinds of connection.
    pub fn new(
        inner: Arc<dyn AuthProvider>,
        me: EntityType,
        modes: BTreeMap<ConnKind, ConModes>,
    ) -> Self {
        WithConModes { inner, me, modes }
    }
}

impl AuthProvider for WithConModes {
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32> {
        self.inner.methods(role, peer_type)
    }

    fn modes(&self, role: AuthRole, peer_type: EntityType) -> Vec<ConMode> {
        match self.modes.get(&ConnKind::of(self.me, peer_type)) {
            Some(m) => m.0.clone(),
            None => self.inner.modes(role, peer_type),
        }
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
    ) -> std::result::Result<Option<Box<dyn AuthorizerClient>>, AuthError> {
        self.inner.authorizer_client(peer_type)
    }

    fn v1_required_features(&self, peer_type: EntityType, method: u32) -> Features {
        self.inner.v1_required_features(peer_type, method)
    }

    fn authorizer_server(&self) -> Option<Box<dyn AuthorizerServer>> {
        self.inner.authorizer_server()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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

    // The override replaces exactly the lists it names.
    #[test]
    fn with_con_modes_overrides_only_its_kinds() {
        let none = Arc::new(super::super::AuthNoneProvider::new(
            crate::types::AuthEntityName::new(EntityType::CLIENT, "admin"),
        ));
        let modes = BTreeMap::from([(ConnKind::ClientToMon, ConModes(vec![ConMode::SECURE]))]);
        let p = WithConModes::new(none, EntityType::CLIENT, modes);
        assert_eq!(p.modes(AuthRole::Connector, EntityType::MON), [ConMode::SECURE]);
        assert_eq!(p.modes(AuthRole::Connector, EntityType::OSD), [ConMode::CRC]);
        assert_eq!(p.methods(AuthRole::Connector, EntityType::MON), [AUTH_NONE]);
    }
}
