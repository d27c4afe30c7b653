//! msgr v1's authorizers and the per-message signing of an open session: the traits a
//! method (cephx) implements so the v1 machine can present, challenge, verify and sign
//! without knowing it.
//!
//! The v1 connector takes an [`AuthorizerClient`] from the provider for each connect
//! message, answers a CHALLENGE_AUTHORIZER with [`AuthorizerClient::handle_challenge`]
//! and checks the acceptor's final reply with [`AuthorizerClient::handle_reply`], which
//! yields the session's [`SessionHandler`]. The v1 acceptor keeps one
//! [`AuthorizerServer`] per connection and answers each connect's authorizer with its
//! [`AuthorizerStep`]. The open session signs every message it frames and checks every
//! message it receives with the [`SessionHandler`], if its authentication installed one.

use std::time::Instant;

use bytes::Bytes;

use crate::types::{EntityType, Features};
use crate::wire::{MsgFooter, MsgHeader};

use super::error::AuthError;
use super::provider::AuthPeer;

/// The authorizer a v1 connector presents on one connection (Ceph's `AuthAuthorizer`).
#[doc(alias = "AuthAuthorizer")]
pub trait AuthorizerClient: Send {
    /// The connect message's `authorizer_protocol` (`CEPH_AUTH_*`).
    fn method(&self) -> u32;

    /// The authorizer bytes for the connect message.
    fn bytes(&self) -> Bytes;

    /// The acceptor answered CHALLENGE_AUTHORIZER with `challenge`: the authorizer for
    /// the repeated connect (Ceph's `add_challenge`).
    #[doc(alias = "add_challenge")]
    fn handle_challenge(&mut self, challenge: &[u8]) -> Result<Bytes, AuthError>;

    /// The acceptor's final reply (SEQ or READY) carried `reply`: check it (a mismatch
    /// faults the connection). Returns the message signing of the session the
    /// connection negotiated `features` for, if anything is signed on it.
    #[doc(alias = "verify_reply")]
    fn handle_reply(
        &mut self,
        reply: &[u8],
        features: Features,
    ) -> Result<Option<Box<dyn SessionHandler>>, AuthError>;
}

/// One connect message's authorizer, as the v1 acceptor hands it to its verifier.
#[derive(Clone, Copy, Debug)]
pub struct AuthorizerRequest<'a> {
    /// The peer's entity type (`host_type`).
    pub peer_type: EntityType,
    /// `authorizer_protocol` (`CEPH_AUTH_*`; 0 for none).
    pub method: u32,
    /// The authorizer bytes (empty for none).
    pub authorizer: &'a [u8],
    /// The features both sides support (`peer & ours`): what the session will sign with.
    pub features: Features,
    /// The machine's clock (a verifier that checks ticket expiry maps it to wall-clock
    /// time through a clock its creator gave it; the machine reads none).
    pub now: Instant,
}

/// An [`AuthorizerServer`]'s answer to one authorizer.
pub enum AuthorizerStep {
    /// The peer is who it says: send `reply` with the final connect reply; `signer`
    /// signs and checks the session's messages (None: nothing is signed).
    Accept {
        /// The authorizer reply bytes.
        reply: Bytes,
        /// The session's message signing.
        signer: Option<Box<dyn SessionHandler>>,
        /// Who the peer authenticated as (`None`: the verifier names nobody).
        peer: Option<AuthPeer>,
    },
    /// Send CHALLENGE_AUTHORIZER with these bytes; the peer repeats its connect with an
    /// authorizer answering it.
    Challenge(Bytes),
    /// Refuse: the peer gets BADAUTHORIZER.
    Reject,
}

impl std::fmt::Debug for AuthorizerStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthorizerStep::Accept { reply, signer, peer } => f
                .debug_struct("Accept")
                .field("reply_len", &reply.len())
                .field("signed", &signer.is_some())
                .field("peer", peer)
                .finish(),
            AuthorizerStep::Challenge(c) => f.debug_tuple("Challenge").field(&c.len()).finish(),
            AuthorizerStep::Reject => f.write_str("Reject"),
        }
    }
}

/// The v1 acceptor's verifier of one connection's authorizers (Ceph's
/// `AuthServer::handle_auth_request` for v1, `cephx_verify_authorizer`): created per
/// accepted connection, so it remembers the challenge it issued.
#[doc(alias = "verify_authorizer")]
pub trait AuthorizerServer: Send {
    /// Judges one connect message's authorizer.
    fn verify(&mut self, request: &AuthorizerRequest<'_>) -> AuthorizerStep;
}

/// The message signing of one open session (Ceph's `AuthSessionHandler`): v1 signs
/// footers with the session key cephx agreed. msgr2 signs nothing per message (its
/// secure mode encrypts frames with keys from the same authentication instead).
#[doc(alias = "AuthSessionHandler")]
pub trait SessionHandler: Send {
    /// Writes the signature into `footer` (after the crcs are in header and footer).
    #[doc(alias = "sign_message")]
    fn sign(&self, header: &MsgHeader, footer: &mut MsgFooter);

    /// Checks a received message's signature; an error faults the connection.
    #[doc(alias = "check_message_signature")]
    fn check(&self, header: &MsgHeader, footer: &MsgFooter) -> Result<(), AuthError>;
}
