//! msgr v1's handshake steps and the open session's reading state: one struct or
//! variant per step, each carrying what only it needs.

use bytes::Bytes;

use crate::auth::{AuthPeer, AuthorizerClient, AuthorizerServer, SessionHandler};
use crate::message::MessageDecoder;
use crate::wire::ConnectMsg;

/// The log target of msgr v1.
pub(crate) const LOG: &str = "msgr::v1";

/// msgr v1 as a protocol of [`crate::Machine`]: the handshake of msgr-v1.md 2-3, the
/// open session's tags and messages, its framing.
#[derive(Debug)]
pub struct V1 {
    _private: (),
}

impl V1 {
    pub(crate) fn new() -> Self {
        V1 { _private: () }
    }
}

/// The v1 handshake steps, both sides (see the state diagram in [`super`]).
#[allow(clippy::enum_variant_names)] // Wait states share the `Await` prefix (STYLE.md).
pub enum Handshake {
    /// Connect side: banner sent, waiting for the acceptor's 281-byte block.
    AwaitBanner,
    /// Connect side: connect sent, waiting for the reply.
    AwaitConnectReply {
        /// The authorizer the connect carried (answers a challenge, checks the reply).
        authorizer: Option<Box<dyn AuthorizerClient>>,
        /// The authorizer's bytes once they answered the acceptor's challenge (Ceph's
        /// `authorizer_more`): every later connect on this TCP connection carries them
        /// again. The acceptor keeps its challenge for the connection, so a fresh
        /// authorizer after a retry reply would not answer it and be refused.
        answered: Option<Bytes>,
        /// Connects sent on this TCP connection: a peer asking for more than
        /// [`super::accept::MAX_CONNECT_ATTEMPTS`] is faulted.
        connects: u32,
    },
    /// Accept side: our block sent, waiting for the peer's banner and address.
    AwaitPeerBanner,
    /// Accept side: waiting for a connect message.
    AwaitConnect(AcceptLink),
    /// Accept side: waiting for [`crate::Machine::handle_authorizer_verdict`].
    AwaitAuthorizerVerdict(AcceptLink, PendingConnect),
    /// Accept side: waiting for [`crate::Machine::handle_accept_decision`].
    AwaitAcceptDecision(AcceptLink, PendingConnect),
    /// Accept side: SEQ sent, waiting for the peer's `u64` in_seq; then open.
    AwaitPeerInSeq(Opening),
}

impl Handshake {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Handshake::AwaitBanner => "AwaitBanner",
            Handshake::AwaitConnectReply { .. } => "AwaitConnectReply",
            Handshake::AwaitPeerBanner => "AwaitPeerBanner",
            Handshake::AwaitConnect(_) => "AwaitConnect",
            Handshake::AwaitAuthorizerVerdict(..) => "AwaitAuthorizerVerdict",
            Handshake::AwaitAcceptDecision(..) => "AwaitAcceptDecision",
            Handshake::AwaitPeerInSeq(_) => "AwaitPeerInSeq",
        }
    }

    /// False while the driver owes an answer.
    pub(crate) fn wants_read(&self) -> bool {
        !matches!(self, Handshake::AwaitAuthorizerVerdict(..) | Handshake::AwaitAcceptDecision(..))
    }
}

/// What the accept side keeps across the connect messages of one socket.
#[derive(Default)]
pub struct AcceptLink {
    /// Connect messages received on this socket.
    pub(crate) connects: u32,
    /// Who verifies authorizers on this socket.
    pub(crate) verifier: Verifier,
}

/// Who verifies the authorizers of one accepted socket.
#[derive(Default)]
pub enum Verifier {
    /// Not decided yet (no connect arrived).
    #[default]
    Unasked,
    /// The driver ([`crate::Event::VerifyAuthorizer`]): the provider has no verifier.
    Driver,
    /// The provider's verifier, kept for the socket (it remembers its challenge).
    Inline(Box<dyn AuthorizerServer>),
}

/// The peer's connect message while the accept side decides about it.
pub struct PendingConnect {
    pub(crate) msg: ConnectMsg,
    /// What we send back with the final reply (empty for auth none).
    pub(crate) authorizer_reply: Bytes,
    /// The session's message signing, from the accepted authorizer.
    pub(crate) signer: Option<Box<dyn SessionHandler>>,
    /// Whom an auth-none authorizer named, for the connection once the driver's
    /// verdict accepts it (a verifier inline names the peer in its own step).
    pub(crate) named_peer: Option<AuthPeer>,
}

/// An accepted session about to open (after the peer's in_seq).
pub struct Opening {
    /// A session was transferred in (a replace that kept it).
    pub(crate) resumed: bool,
    /// The peer restarted.
    pub(crate) remote_reset: bool,
    /// The session's message signing.
    pub(crate) signer: Option<Box<dyn SessionHandler>>,
}

/// The open session's receive side.
pub struct OpenRx {
    /// What comes next on the wire.
    pub(crate) next: Next,
    /// Decodes message bytes (after [`crate::wire::Tag::MSG`]).
    pub(crate) decoder: MessageDecoder,
}

/// What the open session expects next on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A one-byte tag.
    Tag,
    /// The `u64` of an ACK.
    Ack,
    /// The stamp of a KEEPALIVE2.
    Keepalive2,
    /// The stamp of a KEEPALIVE2_ACK.
    Keepalive2Ack,
    /// Message bytes (fed to the decoder); `discard` for a duplicate seq.
    Msg {
        /// Let the message stream by unstored.
        discard: bool,
    },
}
