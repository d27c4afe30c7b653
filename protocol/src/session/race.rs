//! The accept decision's vocabulary, shared by both protocols: what an acceptor asks
//! ([`AcceptRequest`]), what the messenger's session table knows about the peer
//! ([`ExistingSession`]), and the answer ([`Decision`]).
//!
//! Each protocol's race rules are a pure function over these types
//! ([`crate::v1::race::decide`], [`crate::v2::race::decide`]; [`crate::decide`] picks
//! the one for a request). The messenger runs "read the existing session, decide, apply
//! the table's side ([`Decision::table_effect`])" as one check-and-set of its session
//! table, without knowing which protocol asked.

use std::net::SocketAddr;

use crate::types::{EntityAddr, EntityAddrVec, EntityType, Features};

use super::seq::{ConnectSeq, GlobalSeq, Seq};
use super::state::SessionState;

/// A peer's request for a session, parsed and pre-checked by the accepting machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptRequest {
    /// The key of the messenger's session table: v1, the address the peer announced in
    /// its banner (blank IP replaced by the socket's peer IP); msgr2, the peer's v2
    /// address from its ident (else its first address).
    pub peer_addr: EntityAddr,
    /// The peer's entity type.
    pub peer_type: EntityType,
    /// The TCP peer address of the socket.
    pub socket_peer: SocketAddr,
    /// What the peer asked for.
    pub kind: RequestKind,
}

/// The three ways a connector asks for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// msgr v1: a connect message.
    Connect {
        /// `connect.global_seq`.
        global_seq: GlobalSeq,
        /// `connect.connect_seq`.
        connect_seq: ConnectSeq,
        /// The peer's features (`connect.features`).
        features: Features,
        /// `connect.flags & LOSSY` (informational: the acceptor's policy decides).
        lossy: bool,
    },
    /// msgr2 CLIENT_IDENT: a new session.
    Ident {
        /// The peer's addresses.
        peer_addrs: EntityAddrVec,
        /// `global_seq`.
        global_seq: GlobalSeq,
        /// `client_cookie` (0 for a lossy connector).
        client_cookie: u64,
        /// The peer's supported features.
        features: Features,
        /// The peer's `gid`.
        gid: i64,
        /// The LOSSY flag (informational: our policy decides).
        lossy: bool,
    },
    /// msgr2 SESSION_RECONNECT: resume a session.
    Reconnect {
        /// The peer's addresses.
        peer_addrs: EntityAddrVec,
        /// `global_seq`.
        global_seq: GlobalSeq,
        /// `connect_seq`.
        connect_seq: ConnectSeq,
        /// `client_cookie`.
        client_cookie: u64,
        /// `server_cookie`.
        server_cookie: u64,
        /// The peer's in_seq.
        msg_seq: Seq,
    },
}

impl AcceptRequest {
    /// The request's `global_seq`.
    pub fn global_seq(&self) -> GlobalSeq {
        match self.kind {
            RequestKind::Connect { global_seq, .. }
            | RequestKind::Ident { global_seq, .. }
            | RequestKind::Reconnect { global_seq, .. } => global_seq,
        }
    }
}

/// What the messenger's session table says about an existing connection to the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExistingState {
    /// The session is open.
    Open,
    /// The session is in standby (no socket, waiting).
    Standby,
    /// Our own connection to the peer is still connecting (a race if the peer dials us).
    Connecting,
    /// The existing connection is closed: treat as none.
    #[default]
    Closed,
}

impl From<SessionState> for ExistingState {
    fn from(s: SessionState) -> Self {
        match s {
            SessionState::Open => ExistingState::Open,
            SessionState::Standby => ExistingState::Standby,
            SessionState::Closed => ExistingState::Closed,
            SessionState::Connecting | SessionState::Accepting => ExistingState::Connecting,
        }
    }
}

/// The existing session registered under the peer's address (Ceph's `existing`): one
/// snapshot for both protocols.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExistingSession {
    /// Its state.
    pub state: ExistingState,
    /// Its session's connect_seq.
    pub connect_seq: ConnectSeq,
    /// The peer's global_seq it last saw.
    pub peer_global_seq: GlobalSeq,
    /// msgr2: its session's client cookie (0: none).
    pub client_cookie: u64,
    /// msgr2: its session's server cookie (0: none, e.g. a connector that never got
    /// SERVER_IDENT).
    pub server_cookie: u64,
    /// Its policy is lossy.
    pub lossy: bool,
    /// Its policy is a server one (Ceph's `existing->policy.server`): a race against a
    /// server-side connection is always won by the incoming one.
    pub server_side: bool,
    /// It is in the middle of being replaced by another incoming connection.
    pub replacing: bool,
}

/// The outcome of a race function: which reply the acceptor sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new session: v1 SEQ/READY, msgr2 SERVER_IDENT.
    Open,
    /// The incoming connection takes over the existing session (Ceph's replace /
    /// `reuse_connection`): v1 SEQ/READY, msgr2 SERVER_IDENT or SESSION_RECONNECT_OK.
    Replace {
        /// The existing session is discarded (it was lossy, or the peer restarted under
        /// `resetcheck`): this connection starts a fresh one. Otherwise the messenger
        /// moves the existing session in ([`super::Machine::take_session`]).
        reset_existing: bool,
        /// The peer restarted (v1: connect_seq 0 against a session of ours; msgr2: a
        /// different client cookie): report a remote reset when the session is reset.
        peer_restarted: bool,
    },
    /// Reply WAIT: the connection race was lost by the peer; our own outgoing connection
    /// carries the session (the messenger queues a keepalive on it so it completes).
    Wait,
    /// Reply RETRY_GLOBAL / SESSION_RETRY_GLOBAL with this global_seq: the peer must
    /// use a higher one.
    RetryGlobal(GlobalSeq),
    /// Reply RETRY_SESSION (v1: the connect_seq the peer must use) / SESSION_RETRY
    /// (msgr2: the existing session's connect_seq, the peer uses the next).
    RetrySession(ConnectSeq),
    /// Reply RESETSESSION / SESSION_RESET: we have no such session.
    ResetSession {
        /// msgr2: the peer drops its whole session (true), or only its server cookie,
        /// connect_seq and in_seq (false). Always true for v1.
        full: bool,
    },
    /// msgr2: a stale connection (its global_seq is older than the existing one's):
    /// close it without a reply.
    Drop,
    /// The peer authenticated as another entity than the one the existing session
    /// under its address authenticated as: it may not resume, replace or reset that
    /// session, so it is refused and closed without a reply. (Ceph decides by the
    /// claimed address alone.) The messenger decides this before the protocol's rules.
    Refuse,
}

/// Why [`Decision::Refuse`] closed a connection (its log line and close reason).
pub(crate) const REFUSED_FOREIGN: &str =
    "authenticated as another entity than the session under its address";

/// The session table's side of a [`Decision`] (applied in the same critical section
/// that read the existing session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableEffect {
    /// Register the incoming connection under the peer's address.
    Register,
    /// The existing (lossless) session moves into the incoming connection: mark the
    /// existing entry `replacing`; its driver hands over the session
    /// ([`super::Machine::take_session`]) and the incoming machine gets it with the
    /// decision.
    Replace,
    /// The existing (lossy) session ends (`ms_handle_reset`) and the incoming connection
    /// is registered in its place.
    ResetExisting,
    /// Our own connection to the peer carries the session: queue a keepalive on it so
    /// its handshake completes.
    NudgeExisting,
    /// Nothing changes in the table (retry and reset replies, drops).
    Nothing,
}

impl Decision {
    /// What the session table does for this decision, given the request it answers and
    /// the existing entry it was made against (if any).
    ///
    /// A connect (v1) or ident (msgr2) replacing a lossy session resets it (Ceph's
    /// `handle_connect_message_2` and `handle_existing_connection` stop a lossy existing
    /// connection). An msgr2 reconnect resumes the session whatever its policy: Ceph's
    /// `handle_reconnect` never looks at it, so a session marked disposable after it
    /// opened is resumed (SESSION_RECONNECT_OK), not reset. A WAIT nudges the existing
    /// connection only when it answers a connection race (an ident or v1 connect against
    /// an existing session that is not being replaced).
    pub fn table_effect(
        &self,
        request: &RequestKind,
        existing: Option<&ExistingSession>,
    ) -> TableEffect {
        let live = existing.filter(|e| e.state != ExistingState::Closed);
        let resumes = matches!(request, RequestKind::Reconnect { .. });
        match (self, live) {
            (Decision::Open, _) | (Decision::Replace { .. }, None) => TableEffect::Register,
            (Decision::Replace { .. }, Some(e)) if e.lossy && !resumes => {
                TableEffect::ResetExisting
            }
            (Decision::Replace { .. }, Some(_)) => TableEffect::Replace,
            // Only a connection race kicks our own connection (Ceph's
            // handle_existing_connection and v1's handle_connect_message_2); the WAIT of
            // a session being replaced, or of an msgr2 reconnect race (handle_reconnect),
            // leaves the existing session alone.
            (Decision::Wait, Some(e)) if !resumes && !e.replacing => TableEffect::NudgeExisting,
            _ => TableEffect::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_effects() {
        let open = ExistingSession { state: ExistingState::Open, ..Default::default() };
        let lossy = ExistingSession { lossy: true, ..open };
        let keep = Decision::Replace { reset_existing: false, peer_restarted: false };
        let connect = RequestKind::Connect {
            global_seq: GlobalSeq(2),
            connect_seq: ConnectSeq(1),
            features: Features(0),
            lossy: false,
        };
        let ident = RequestKind::Ident {
            peer_addrs: EntityAddrVec::default(),
            global_seq: GlobalSeq(2),
            client_cookie: 7,
            features: Features(0),
            gid: 1,
            lossy: false,
        };
        let reconnect = RequestKind::Reconnect {
            peer_addrs: EntityAddrVec::default(),
            global_seq: GlobalSeq(2),
            connect_seq: ConnectSeq(1),
            client_cookie: 7,
            server_cookie: 9,
            msg_seq: Seq(0),
        };
        let effect =
            |d: &Decision, r: &RequestKind, e: Option<&ExistingSession>| d.table_effect(r, e);
        let replacing = ExistingSession { replacing: true, ..open };
        for r in [&connect, &ident, &reconnect] {
            assert_eq!(effect(&Decision::Open, r, Some(&open)), TableEffect::Register);
            assert_eq!(effect(&keep, r, None), TableEffect::Register);
            assert_eq!(effect(&keep, r, Some(&open)), TableEffect::Replace);
            assert_eq!(effect(&Decision::Wait, r, Some(&replacing)), TableEffect::Nothing);
            assert_eq!(effect(&Decision::Wait, r, None), TableEffect::Nothing);
            assert_eq!(effect(&Decision::Drop, r, Some(&open)), TableEffect::Nothing);
            assert_eq!(effect(&Decision::Refuse, r, Some(&open)), TableEffect::Nothing);
            let closed = ExistingSession::default();
            assert_eq!(effect(&keep, r, Some(&closed)), TableEffect::Register);
        }
        // A new session replacing a lossy one resets it; a reconnect resumes it (Ceph's
        // handle_reconnect reuses the connection whatever its policy).
        assert_eq!(effect(&keep, &connect, Some(&lossy)), TableEffect::ResetExisting);
        assert_eq!(effect(&keep, &ident, Some(&lossy)), TableEffect::ResetExisting);
        assert_eq!(effect(&keep, &reconnect, Some(&lossy)), TableEffect::Replace);
        // A connection race kicks our own connection; an msgr2 reconnect race does not
        // (Ceph's handle_reconnect answers WAIT and nothing else).
        assert_eq!(effect(&Decision::Wait, &connect, Some(&open)), TableEffect::NudgeExisting);
        assert_eq!(effect(&Decision::Wait, &ident, Some(&open)), TableEffect::NudgeExisting);
        assert_eq!(effect(&Decision::Wait, &reconnect, Some(&open)), TableEffect::Nothing);
    }
}
