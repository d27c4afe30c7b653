//! cephx (cephx.md): Ceph's Kerberos-like authentication with AES keys.
//!
//! - [`request`], [`ticket`], [`authorizer`], [`rotating`]: every structure of
//!   cephx.md sections 2–3 with its encoding, checked against the document's vectors
//!   and a live 16.2.15 exchange;
//! - [`CephxClient`]: the client of a monitor (MAuth rounds, tickets, renewal, reclaim);
//! - [`KeyServer`]: the monitor side (challenge, proof, tickets, rotating secrets);
//! - [`Authorizer`] / [`AuthorizerVerifier`]: what a client presents to a daemon and how
//!   the daemon checks it, challenge round included;
//! - [`MessageSigner`]: msgr v1 footer signatures;
//! - [`CephxProvider`]: all of the above behind the auth seam, msgr v1 and msgr2
//!   ([`v2`]: cephx in AUTH frames, to monitors and to daemons, both roles).

pub mod authorizer;
pub mod client;
pub mod provider;
pub mod request;
pub mod rotating;
pub mod server;
pub mod signature;
pub mod ticket;
pub mod v2;

pub use authorizer::{AcceptedAuthorizer, Authorizer, AuthorizerVerdict, AuthorizerVerifier};
pub use client::{CephxClient, ClientConfig, ClientEvent};
pub use provider::{
    CephxAuthorizerClient, CephxAuthorizerServer, CephxProvider, RngSource, SharedKeyStore,
    TicketSource, TicketStore, WallClock,
};
pub use request::{challenge_proof, RequestType, ServiceMask};
pub use rotating::{KeyStore, RotatingKeyStore, RotatingSecrets};
pub use server::{KeyServer, ServerSession};
pub use signature::{message_signature, MessageSigner, SignatureScheme, SignedFields};
pub use ticket::{AuthTicket, ReceivedTicket, TicketBlob, SECRET_ID_OWN_KEY};
pub use v2::{connection_secret_len, CephxAuthorizerV2Client, CephxMonClient, CephxV2Server};

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v2_tests;
