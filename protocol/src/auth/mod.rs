//! Authentication: the seam both connection machines call, auth none behind it, and
//! cephx (shared/protocol/cephx.md), sans-IO.
//!
//! Owns the seam ([`AuthProvider`] and the handlers it creates: [`AuthClient`] /
//! [`AuthServer`] for msgr2's AUTH frames, [`AuthorizerClient`] / [`AuthorizerServer`]
//! for msgr v1's authorizers, [`SessionHandler`] for per-message signing), the msgr2
//! connection modes ([`ConMode`]), auth none ([`AuthNoneProvider`]), keys and keyrings
//! ([`KeyRing`], [`CryptoKey`]), the cephx structures, the client handler for a monitor
//! ([`cephx::CephxClient`]), the monitor-side key server ([`cephx::KeyServer`]),
//! authorizers and their verification, v1 message signatures, and the auth options with
//! Ceph's names ([`AuthConfig`]).
//!
//! Never: sockets, threads or clock reads. Time is an argument (`Instant` for the
//! client's own deadlines, wall-clock [`crate::encoding::UTime`] where cephx stamps or
//! checks tickets), and every nonce, challenge and key comes from a random source the
//! caller passes in (`rand_core::CryptoRngCore`), so tests are reproducible. Crypto
//! comes from RustCrypto's `aes`/`cbc`; comparisons of secrets use `subtle`.
//!
//! Deliberate differences from Ceph:
//! - [`AuthConfig::default`] is auth none (Ceph defaults to cephx) until the messenger
//!   installs a cephx provider; [`AuthConfig::ceph_defaults`] has Ceph's values.
//! - A daemon refuses an authorizer whose ticket has expired at the `now` it is given
//!   (Ceph relies on the rotation of service secrets alone).
//! - Decoders refuse counts above small fixed bounds (16 tickets per reply, 16 rotating
//!   secrets) before allocating.
//! - A v1 connector checks the acceptor's authorizer reply only when it sent a cephx
//!   authorizer; auth none's (which it sends to every peer but a monitor it dials as a
//!   client, as Ceph's does: a daemon refuses a connect without one) gets an empty reply
//!   that is not checked.
//!
//! # The seam: what the machines call, and when
//!
//! One [`AuthProvider`] per messenger sits in [`crate::Config::auth`].
//!
//! **msgr2** (in the handshake, `crate::v2`):
//! - connector: for each method of `methods(Connector, peer_type)` not yet refused,
//!   `client(peer_type, peer_addr, method)` → [`AuthClient`]: `build_request()` is
//!   AUTH_REQUEST's payload; each AUTH_REPLY_MORE goes to `handle_reply_more()`;
//!   AUTH_DONE to `handle_done(now, global_id, mode, payload)` → [`AuthOutcome`]
//!   (session key for AUTH_SIGNATURE, connection secret for secure mode); the peer's
//!   AUTH_SIGNATURE matching it, to `confirmed()`;
//! - acceptor: `server(peer_type, method)` → [`AuthServer`]:
//!   `handle_request(now, mode, more, payload)` → [`AuthStep`] (More, Done, Reject,
//!   Busy);
//! - modes: `modes(role, peer_type)` in preference order ([`AuthConfig`]'s `ms_*_mode`
//!   options, by Ceph's `AuthRegistry` table: [`ConnKind`]); a messenger may replace
//!   them ([`WithConModes`]).
//!
//! **msgr v1** (in the handshake, `crate::v1`):
//! - connector, each connect message (except to a monitor when we are not one):
//!   `authorizer_client(peer_type)` → [`AuthorizerClient`]; its `method()` and
//!   `bytes()` go in the connect message; CHALLENGE_AUTHORIZER →
//!   `handle_challenge(challenge)` gives the repeated connect's authorizer; SEQ/READY →
//!   `handle_reply(reply, features)` (an error faults the connection) gives the open
//!   session's [`SessionHandler`];
//! - acceptor, on the first connect: `authorizer_server()` → one [`AuthorizerServer`]
//!   for the connection (`None`: the driver answers [`crate::Event::VerifyAuthorizer`]
//!   with an [`crate::AuthVerdict`]); each connect's authorizer →
//!   `verify(&AuthorizerRequest)` → [`AuthorizerStep`]: Accept (reply bytes in the
//!   final connect reply, signer for the open session), Challenge (CHALLENGE_AUTHORIZER,
//!   wait for the repeated connect), Reject (BADAUTHORIZER);
//! - open session: every framed message → `sign(header, &mut footer)` after the crcs;
//!   every received message → `check(header, footer)` before it is delivered (an error
//!   faults the connection, `Fault::Auth`).
//!
//! # cephx: [`cephx::CephxProvider`]
//!
//! [`cephx::CephxProvider`] implements the traits with the rest of [`cephx`] (a daemon
//! names it in the messenger's config). Over msgr2 ([`cephx::v2`]): to a monitor its
//! own cephx session per connection (AUTH_MODE_MON, [`cephx::CephxProvider::
//! with_monitor_key`]; the tickets AUTH_DONE brings fill its [`cephx::TicketStore`],
//! which keeps the session for the application to renew on),
//! to other daemons an authorizer with the challenge round; as an acceptor authorizers
//! verified with its [`cephx::KeyStore`] and, with a [`cephx::KeyServer`]
//! ([`cephx::CephxProvider::with_key_server`]), monitor-mode requests; secure mode's
//! 64-byte connection secret minted by the acceptor. Over msgr v1:
//! - [`cephx::CephxAuthorizerClient`]: a [`cephx::Authorizer`] from the service ticket
//!   of the peer type (`Authorizer::new(global_id, &ticket, rng)`); it answers
//!   CHALLENGE_AUTHORIZER, checks the reply (`nonce + 1`) and yields the session's
//!   [`cephx::MessageSigner`] (`cephx_sign_messages`, `MSG_AUTH` negotiated);
//! - [`cephx::CephxAuthorizerServer`]: one per accepted connection, a
//!   [`cephx::AuthorizerVerifier`] over the daemon's [`cephx::KeyStore`], the challenge
//!   round with every peer that can answer it (CEPHX_V2) and, when
//!   `cephx_*require_version >= 2`, every peer, ticket expiry checked at the wall-clock
//!   time of the machine's `now`; any failure answers BADAUTHORIZER;
//! - both refuse a session without `MSG_AUTH` when `cephx_*require_signatures`;
//! - which method a peer must use follows `auth_cluster_required` (daemon ↔ daemon),
//!   `auth_service_required` (a daemon accepting a client) and `auth_client_required`
//!   (a client dialling); where `none` is listed too, no ticket / an empty authorizer is
//!   auth none. Tickets come from a [`cephx::TicketSource`] ([`cephx::TicketStore`],
//!   filled by hand or from a [`cephx::CephxClient`]), secrets from a
//!   [`cephx::KeyStore`] ([`cephx::SharedKeyStore`] can be refreshed), wall-clock time
//!   from a [`cephx::WallClock`] the caller anchors, randomness from a
//!   [`cephx::RngSource`].
//!
//! The monitor session ([`cephx::CephxClient`]) stays above the messenger, as in Ceph's
//! MonClient: it supplies the service tickets the connector's authorizers are built from
//! and the rotating secrets a daemon's [`cephx::KeyStore`] holds, and renews them with
//! MAuth messages on its monitor connection. Over msgr v1 the application runs it from
//! the start; over msgr2 the handshake runs it and the application takes it over
//! ([`cephx::TicketStore::take_monitor_session`]), as Ceph's MonClient takes the
//! handshake's `AuthClientHandler` into itself.

mod authorizer;
pub mod cephx;
pub mod config;
pub mod crypto;
pub mod error;
pub mod keyring;
mod mode;
mod none;
mod provider;

pub use authorizer::{
    AuthorizerClient, AuthorizerRequest, AuthorizerServer, AuthorizerStep, SessionHandler,
};
pub use config::{AuthConfig, AuthMethods, ConModes, ConnKind};
pub use crypto::CryptoKey;
pub use error::{AuthError, KeyringError};
pub use keyring::{parse_entity_name, KeyEntry, KeyRing};
pub use mode::ConMode;
pub use none::{
    authorizer_peer as auth_none_authorizer_peer, AuthNoneAuthorizer, AuthNoneClient,
    AuthNoneProvider, AuthNoneServer, FIRST_GLOBAL_ID,
};
pub use provider::{
    filter_modes, pick_mode, AuthClient, AuthOutcome, AuthPeer, AuthProvider, AuthRole, AuthServer,
    AuthStep, WithConModes, AUTH_MODE_AUTHORIZER, AUTH_MODE_MON, AUTH_MODE_MON_MAX, EACCES,
    EOPNOTSUPP,
};
