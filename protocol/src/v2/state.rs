//! msgr2's handshake steps and the open session's reading state: one variant per step,
//! each carrying what only it needs (the pre-auth transcript until AUTH_DONE, the auth
//! handler of the attempt, the request awaiting the messenger's decision).

use crate::auth::{AuthClient, AuthServer, ConMode};
use crate::session::AcceptRequest;

use super::frames::{AuthSignature, MsgHeader2};

/// The pre-auth phase's transcript would grow past this: Ceph's are a few hundred bytes
/// to ~2 KiB (cephx with every ticket); a peer that keeps the auth phase going longer
/// is refused rather than buffered.
pub(crate) const MAX_TRANSCRIPT: usize = 256 << 10;

/// The msgr2 handshake steps, both sides (see the state diagram in [`super`]).
#[allow(clippy::enum_variant_names)] // Wait states share the `Await` prefix (STYLE.md).
pub enum Handshake {
    /// Connect side: our banner sent, waiting for the acceptor's.
    AwaitBanner(Transcript),
    /// Connect side: HELLO sent, waiting for the acceptor's HELLO.
    AwaitHello(Transcript),
    /// Connect side: AUTH_REQUEST(_MORE) sent.
    AwaitAuthReply(Transcript, ClientAuth),
    /// Both: our AUTH_SIGNATURE sent (the mode switched), waiting for the peer's.
    AwaitAuthSignature(PeerSignature),
    /// Connect side: CLIENT_IDENT (`reconnect` false) or SESSION_RECONNECT sent.
    AwaitIdentReply {
        /// SESSION_RECONNECT was sent.
        reconnect: bool,
    },
    /// Accept side: our banner sent, waiting for the connector's.
    AwaitPeerBanner(Transcript),
    /// Accept side: waiting for the connector's HELLO.
    AwaitPeerHello(Transcript),
    /// Accept side: waiting for AUTH_REQUEST (first, or after AUTH_BAD_METHOD).
    AwaitAuthRequest(Transcript),
    /// Accept side: AUTH_REPLY_MORE sent, waiting for AUTH_REQUEST_MORE.
    AwaitAuthRequestMore(Transcript, ServerAuth),
    /// Accept side: signatures checked, waiting for CLIENT_IDENT / SESSION_RECONNECT.
    AwaitIdent,
    /// Accept side: waiting for [`crate::Machine::handle_accept_decision`].
    AwaitAcceptDecision(AcceptRequest),
}

impl Handshake {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Handshake::AwaitBanner(_) => "AwaitBanner",
            Handshake::AwaitHello(_) => "AwaitHello",
            Handshake::AwaitAuthReply(..) => "AwaitAuthReply",
            Handshake::AwaitAuthSignature(_) => "AwaitAuthSignature",
            Handshake::AwaitIdentReply { .. } => "AwaitIdentReply",
            Handshake::AwaitPeerBanner(_) => "AwaitPeerBanner",
            Handshake::AwaitPeerHello(_) => "AwaitPeerHello",
            Handshake::AwaitAuthRequest(_) => "AwaitAuthRequest",
            Handshake::AwaitAuthRequestMore(..) => "AwaitAuthRequestMore",
            Handshake::AwaitIdent => "AwaitIdent",
            Handshake::AwaitAcceptDecision(_) => "AwaitAcceptDecision",
        }
    }

    /// The transcript being recorded, until AUTH_DONE.
    pub(crate) fn transcript_mut(&mut self) -> Option<&mut Transcript> {
        match self {
            Handshake::AwaitBanner(t)
            | Handshake::AwaitHello(t)
            | Handshake::AwaitAuthReply(t, _)
            | Handshake::AwaitPeerBanner(t)
            | Handshake::AwaitPeerHello(t)
            | Handshake::AwaitAuthRequest(t)
            | Handshake::AwaitAuthRequestMore(t, _) => Some(t),
            Handshake::AwaitAuthSignature(_)
            | Handshake::AwaitIdentReply { .. }
            | Handshake::AwaitIdent
            | Handshake::AwaitAcceptDecision(_) => None,
        }
    }
}

/// Every byte sent and received from the banner through AUTH_DONE: each side signs
/// what it received (AUTH_SIGNATURE) and checks the peer's signature over what it sent.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    /// Bytes received.
    pub(crate) rx: Vec<u8>,
    /// Bytes sent.
    pub(crate) tx: Vec<u8>,
}

impl Transcript {
    /// Whether either direction grew past [`MAX_TRANSCRIPT`].
    pub(crate) fn too_long(&self) -> bool {
        self.rx.len() > MAX_TRANSCRIPT || self.tx.len() > MAX_TRANSCRIPT
    }
}

/// The connector's authentication attempt.
pub struct ClientAuth {
    /// The method's handler.
    pub(crate) client: Box<dyn AuthClient>,
    /// The method of the current attempt.
    pub(crate) method: u32,
    /// Methods already refused on this connection.
    pub(crate) tried: Vec<u32>,
    /// The modes we offered with the current method.
    pub(crate) offered: Vec<ConMode>,
}

/// The acceptor's authentication attempt, between rounds.
pub struct ServerAuth {
    /// The method's handler.
    pub(crate) server: Box<dyn AuthServer>,
    /// The method of the current attempt.
    pub(crate) method: u32,
    /// The mode picked for the attempt.
    pub(crate) mode: ConMode,
}

/// What checks the peer's AUTH_SIGNATURE: the session key and what we sent.
pub struct PeerSignature {
    /// The session key (None for auth none: the signature is zeros).
    pub(crate) session_key: Option<Vec<u8>>,
    /// The bytes we sent, banner through AUTH_DONE.
    pub(crate) sent: Vec<u8>,
    /// A connector's own signature, sent once the acceptor's matched, and the method's
    /// handler to confirm then ([`crate::auth::AuthClient::confirmed`]).
    pub(crate) held: Option<(AuthSignature, Box<dyn AuthClient>)>,
}

/// Where the MESSAGE being received stands (its budget is the session's
/// [`crate::session::Budget`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenRx {
    /// Not inside a MESSAGE.
    Idle,
    /// Header read; the segments follow (once budget was granted, unless skipped).
    Reading {
        /// The message's header2.
        header: MsgHeader2,
        /// A duplicate seq: dropped once complete, never delivered.
        duplicate: bool,
        /// Its rest goes by unstored and unbudgeted (a duplicate in crc mode, its crcs
        /// checked as it passes); a duplicate in secure mode is read, budgeted, as any
        /// message, so that its tag is checked before it is dropped.
        skipped: bool,
    },
}
