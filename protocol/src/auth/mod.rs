//! Authentication: auth none and cephx (shared/protocol/cephx.md), sans-IO.
//!
//! Owns keys and keyrings ([`KeyRing`], [`CryptoKey`]), the cephx structures, the
//! client handler for a monitor ([`cephx::CephxClient`]), the monitor-side key server
//! ([`cephx::KeyServer`]), authorizers and their verification, v1 message signatures,
//! and the auth options with Ceph's names ([`AuthConfig`]).
//!
//! Never: sockets, threads or clock reads. Time is an argument (`Instant` for the
//! client's own deadlines, wall-clock [`crate::encoding::UTime`] where cephx stamps or
//! checks tickets), and every nonce, challenge and key comes from a random source the
//! caller passes in (`rand_core::CryptoRngCore`), so tests are reproducible. Crypto
//! comes from RustCrypto's `aes`/`cbc`; comparisons of secrets use `subtle`.
//!
//! Deliberate differences from Ceph:
//! - [`AuthConfig::default`] is auth none (Ceph defaults to cephx) until the connection
//!   machines call this module; [`AuthConfig::ceph_defaults`] has Ceph's values.
//! - A daemon refuses an authorizer whose ticket has expired at the `now` it is given
//!   (Ceph relies on the rotation of service secrets alone).
//! - Decoders refuse counts above small fixed bounds (16 tickets per reply, 16 rotating
//!   secrets) before allocating.
//!
//! # The auth seam (for the connection machines)
//!
//! What a v1 or v2 connection machine calls, and when:
//! - connector, building a connect to a daemon: [`cephx::Authorizer`] from the
//!   messenger's ticket source (its `bytes()` go in `ceph_msg_connect` with
//!   `authorizer_protocol = 2`); on `CHALLENGE_AUTHORIZER`,
//!   [`cephx::Authorizer::handle_challenge`] gives the bytes of the repeated connect;
//!   on `READY`/`SEQ`, [`cephx::Authorizer::verify_reply`] (failure faults the
//!   connection), then [`cephx::MessageSigner::for_session`] with its session key;
//! - acceptor, on a connect with an authorizer: one [`cephx::AuthorizerVerifier`] per
//!   connection, `verify(keys, my_type, bytes, config.requires_challenge(peer), now,
//!   None, rng)` → `Challenge(bytes)` (send `CHALLENGE_AUTHORIZER`) or `Accepted` (reply
//!   bytes in the connect reply, peer identity for the dispatcher, signer from its
//!   session key) or an error (`BADAUTHORIZER`);
//! - both, per message: [`cephx::MessageSigner::sign`] after the crcs are computed,
//!   [`cephx::MessageSigner::check`] before delivering (failure: drop, count, fault);
//! - the monitor session ([`cephx::CephxClient`]) stays above the messenger, as in
//!   Ceph's MonClient: it supplies the service tickets the connector's authorizers are
//!   built from and the rotating secrets a daemon's [`cephx::KeyStore`] holds.

pub mod cephx;
pub mod config;
pub mod crypto;
pub mod error;
pub mod keyring;

pub use config::{AuthConfig, AuthMethods};
pub use crypto::CryptoKey;
pub use error::{AuthError, KeyringError};
pub use keyring::{parse_entity_name, KeyEntry, KeyRing};
