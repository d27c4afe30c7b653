//! The accept decision: what an acceptor answers to CLIENT_IDENT or SESSION_RECONNECT
//! given the session the messenger already holds for the peer (msgr-v2.md 7.3 and 7.4,
//! Ceph's `handle_client_ident` + `handle_existing_connection` and `handle_reconnect`).
//!
//! The state machine checks what needs no global knowledge (addresses, target,
//! features) and emits [`super::Event::AcceptRequest`]; the messenger looks up its
//! session table, calls [`decide`] and answers with
//! [`super::Connection::handle_accept_decision`], moving the existing session in when
//! the decision is a [`Decision::Replace`] that keeps it.

use std::net::SocketAddr;

use crate::types::{AddrType, EntityAddr, EntityAddrVec, EntityType, Features};
use crate::v1::{ExistingState, Policy};

/// A peer's CLIENT_IDENT or SESSION_RECONNECT, parsed and pre-checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptRequest {
    /// The peer's addresses (CLIENT_IDENT / SESSION_RECONNECT `addrs`): the key of the
    /// messenger's session table.
    pub peer_addrs: EntityAddrVec,
    /// The peer's entity type (from its HELLO).
    pub peer_type: EntityType,
    /// The TCP peer address of the socket.
    pub socket_peer: SocketAddr,
    /// What the peer asked for.
    pub kind: RequestKind,
}

/// The two ways a connector asks for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// CLIENT_IDENT: a new session.
    Ident {
        /// `global_seq`.
        global_seq: u64,
        /// `client_cookie` (0 for a lossy connector).
        client_cookie: u64,
        /// The peer's supported features.
        features: Features,
        /// The peer's `gid`.
        gid: i64,
        /// The LOSSY flag (informational: our policy decides).
        lossy: bool,
    },
    /// SESSION_RECONNECT: resume a session.
    Reconnect {
        /// `global_seq`.
        global_seq: u64,
        /// `connect_seq`.
        connect_seq: u64,
        /// `client_cookie`.
        client_cookie: u64,
        /// `server_cookie`.
        server_cookie: u64,
        /// The peer's in_seq.
        msg_seq: u64,
    },
}

impl RequestKind {
    /// The request's `global_seq`.
    pub fn global_seq(&self) -> u64 {
        match *self {
            RequestKind::Ident { global_seq, .. } | RequestKind::Reconnect { global_seq, .. } => {
                global_seq
            }
        }
    }
}

/// What the session table says about the existing connection to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistingSession {
    /// Its state.
    pub state: ExistingState,
    /// Its session's client cookie (0: none).
    pub client_cookie: u64,
    /// Its session's server cookie (0: none, e.g. a connector that never got
    /// SERVER_IDENT).
    pub server_cookie: u64,
    /// Its session's connect_seq.
    pub connect_seq: u64,
    /// The peer's global_seq it last saw.
    pub peer_global_seq: u64,
    /// Its policy is lossy.
    pub lossy: bool,
    /// Its policy is a server one.
    pub server_side: bool,
    /// Another incoming connection is taking it over right now.
    pub replacing: bool,
}

/// The acceptor's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new session: reply SERVER_IDENT (CLIENT_IDENT only).
    Open,
    /// This connection takes over the existing one (Ceph's `reuse_connection`).
    ///
    /// With `reset_existing` the existing session is discarded (it was lossy, or the
    /// peer restarted under `resetcheck`) and this connection starts a fresh one;
    /// otherwise the messenger moves the existing session in
    /// ([`super::Connection::take_session`]). The reply is SERVER_IDENT for an ident,
    /// SESSION_RECONNECT_OK for a reconnect.
    Replace {
        /// Discard the existing session's state.
        reset_existing: bool,
        /// The peer restarted (a different client cookie): report a remote reset.
        remote_reset: bool,
    },
    /// A stale connection (its global_seq is older than the existing one's): close it
    /// without a reply.
    Drop,
    /// Reply WAIT: the connection race was lost by the peer; our own connection to it
    /// carries the session (the messenger queues a keepalive on it).
    Wait,
    /// Reply SESSION_RESET.
    Reset {
        /// Full reset (the peer drops its whole session) or only its server cookie,
        /// connect_seq and in_seq.
        full: bool,
    },
    /// Reply SESSION_RETRY with the existing connect_seq.
    Retry {
        /// The existing session's connect_seq.
        connect_seq: u64,
    },
    /// Reply SESSION_RETRY_GLOBAL with the global_seq we last saw.
    RetryGlobal {
        /// The existing session's peer global_seq.
        global_seq: u64,
    },
}

/// Ceph's `entity_addrvec_t::msgr2_addr()`: the first v2 address, or a blank one. Its
/// [`EntityAddr::race_key`] is what connection races compare.
pub fn msgr2_addr(addrs: &EntityAddrVec) -> EntityAddr {
    addrs.addrs.iter().copied().find(|a| a.ty == AddrType::MSGR2).unwrap_or_default()
}

/// The accept decision, rule for rule as msgr-v2.md 7.3 (ident) and 7.4 (reconnect).
///
/// `policy` is our policy for the peer's type; `my_addrs` our bound addresses (the race
/// tie-break compares `msgr2_addr()`s byte-wise).
pub fn decide(
    req: &AcceptRequest,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    match req.kind {
        RequestKind::Ident { global_seq, client_cookie, .. } => {
            decide_ident(req, global_seq, client_cookie, existing, policy, my_addrs)
        }
        RequestKind::Reconnect { global_seq, connect_seq, client_cookie, .. } => decide_reconnect(
            req,
            global_seq,
            connect_seq,
            client_cookie,
            existing,
            policy,
            my_addrs,
        ),
    }
}

/// How the peer's `msgr2_addr()` compares with ours (Ceph's byte-wise `entity_addr_t`
/// comparison).
fn peer_vs_me(req: &AcceptRequest, my_addrs: &EntityAddrVec) -> std::cmp::Ordering {
    msgr2_addr(&req.peer_addrs).race_key().cmp(&msgr2_addr(my_addrs).race_key())
}

fn decide_ident(
    req: &AcceptRequest,
    global_seq: u64,
    client_cookie: u64,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    // "incoming lossy client, no need to register this connection".
    if policy.server && policy.lossy {
        return Decision::Open;
    }
    let Some(ex) = existing.filter(|e| e.state != ExistingState::Closed) else {
        return Decision::Open;
    };
    if ex.replacing {
        return Decision::Wait;
    }
    if ex.peer_global_seq > global_seq {
        return Decision::Drop;
    }
    if ex.lossy {
        return Decision::Replace { reset_existing: true, remote_reset: false };
    }
    if ex.server_cookie != 0 && ex.client_cookie != 0 && ex.client_cookie != client_cookie {
        // "found previous session, peer must have reseted".
        return Decision::Replace { reset_existing: policy.resetcheck, remote_reset: true };
    }
    if ex.client_cookie == client_cookie {
        // "session establishment interrupted between client_ident and server_ident".
        return Decision::Replace { reset_existing: false, remote_reset: false };
    }
    if matches!(ex.state, ExistingState::Open | ExistingState::Standby) {
        return Decision::Replace { reset_existing: false, remote_reset: false };
    }
    // Both sides are connecting: the lower address (or a server side) yields.
    if peer_vs_me(req, my_addrs).is_lt() || ex.server_side {
        Decision::Replace { reset_existing: false, remote_reset: false }
    } else {
        Decision::Wait
    }
}

fn decide_reconnect(
    req: &AcceptRequest,
    global_seq: u64,
    connect_seq: u64,
    client_cookie: u64,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    let Some(ex) = existing.filter(|e| e.state != ExistingState::Closed) else {
        return Decision::Reset { full: true };
    };
    if ex.replacing {
        return Decision::RetryGlobal { global_seq: ex.peer_global_seq };
    }
    if ex.client_cookie != client_cookie {
        // "client cookie mismatch, I must have reseted".
        return Decision::Reset { full: policy.resetcheck };
    }
    if ex.server_cookie == 0 {
        // "I was a client and didn't received the server_ident".
        return Decision::Reset { full: false };
    }
    if ex.peer_global_seq > global_seq {
        return Decision::RetryGlobal { global_seq: ex.peer_global_seq };
    }
    if ex.connect_seq > connect_seq {
        return Decision::Retry { connect_seq: ex.connect_seq };
    }
    if ex.connect_seq == connect_seq && peer_vs_me(req, my_addrs).is_gt() && !ex.server_side {
        // "reconnect race detected, this connection loses to existing".
        return Decision::Wait;
    }
    Decision::Replace { reset_existing: false, remote_reset: false }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v2(port: u16, nonce: u32) -> EntityAddrVec {
        EntityAddrVec::single(EntityAddr {
            ty: AddrType::MSGR2,
            nonce,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        })
    }

    fn ident(gs: u64, cookie: u64) -> AcceptRequest {
        AcceptRequest {
            peer_addrs: v2(6800, 7),
            peer_type: EntityType::MON,
            socket_peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            kind: RequestKind::Ident {
                global_seq: gs,
                client_cookie: cookie,
                features: Features::PACIFIC_ADVERTISED,
                gid: 1,
                lossy: false,
            },
        }
    }

    fn reconnect(gs: u64, cs: u64, cc: u64) -> AcceptRequest {
        AcceptRequest {
            kind: RequestKind::Reconnect {
                global_seq: gs,
                connect_seq: cs,
                client_cookie: cc,
                server_cookie: 99,
                msg_seq: 0,
            },
            ..ident(gs, cc)
        }
    }

    fn ex(state: ExistingState) -> ExistingSession {
        ExistingSession {
            state,
            client_cookie: 11,
            server_cookie: 22,
            connect_seq: 3,
            peer_global_seq: 40,
            lossy: false,
            server_side: false,
            replacing: false,
        }
    }

    /// Our address sorts above the peer's (6801 > 6800): races go to the peer.
    fn me_high() -> EntityAddrVec {
        v2(6801, 7)
    }
    /// Our address sorts below the peer's.
    fn me_low() -> EntityAddrVec {
        v2(6799, 7)
    }

    /// (why, existing, request, policy, my addrs) → decision.
    type Row =
        (&'static str, Option<ExistingSession>, AcceptRequest, Policy, EntityAddrVec, Decision);

    const PEER: Policy = Policy::lossless_peer();
    const REUSE: Policy = Policy::lossless_peer_reuse();
    const KEEP: Decision = Decision::Replace { reset_existing: false, remote_reset: false };

    /// One row of 7.3: (existing, request, policy, my addrs) → decision.
    #[test]
    fn ident_table() {
        use ExistingState::*;
        let rows: Vec<Row> = vec![
            (
                "stateless server: no lookup",
                Some(ex(Open)),
                ident(1, 5),
                Policy::stateless_server(),
                me_high(),
                Decision::Open,
            ),
            ("no existing", None, ident(1, 5), PEER, me_high(), Decision::Open),
            ("existing closed", Some(ex(Closed)), ident(1, 5), PEER, me_high(), Decision::Open),
            (
                "existing being replaced",
                Some(ExistingSession { replacing: true, ..ex(Open) }),
                ident(50, 5),
                PEER,
                me_high(),
                Decision::Wait,
            ),
            ("stale global_seq", Some(ex(Open)), ident(39, 11), PEER, me_high(), Decision::Drop),
            (
                "lossy existing",
                Some(ExistingSession { lossy: true, ..ex(Open) }),
                ident(50, 5),
                PEER,
                me_high(),
                Decision::Replace { reset_existing: true, remote_reset: false },
            ),
            (
                "peer restarted, resetcheck",
                Some(ex(Open)),
                ident(50, 5),
                REUSE,
                me_high(),
                Decision::Replace { reset_existing: true, remote_reset: true },
            ),
            (
                "peer restarted, no resetcheck",
                Some(ex(Open)),
                ident(50, 5),
                PEER,
                me_high(),
                Decision::Replace { reset_existing: false, remote_reset: true },
            ),
            (
                "ident interrupted, same cookie",
                Some(ex(Connecting)),
                ident(50, 11),
                PEER,
                me_low(),
                KEEP,
            ),
            (
                "no server cookie yet, open",
                Some(ExistingSession { server_cookie: 0, ..ex(Open) }),
                ident(50, 5),
                PEER,
                me_low(),
                KEEP,
            ),
            (
                "standby",
                Some(ExistingSession { server_cookie: 0, ..ex(Standby) }),
                ident(50, 5),
                PEER,
                me_low(),
                KEEP,
            ),
            (
                "race, peer sorts lower",
                Some(ExistingSession { server_cookie: 0, ..ex(Connecting) }),
                ident(50, 5),
                PEER,
                me_high(),
                KEEP,
            ),
            (
                "race, peer sorts higher",
                Some(ExistingSession { server_cookie: 0, ..ex(Connecting) }),
                ident(50, 5),
                PEER,
                me_low(),
                Decision::Wait,
            ),
            (
                "race against a server-side existing",
                Some(ExistingSession { server_cookie: 0, server_side: true, ..ex(Connecting) }),
                ident(50, 5),
                PEER,
                me_low(),
                KEEP,
            ),
        ];
        for (why, e, req, policy, me, want) in rows {
            assert_eq!(decide(&req, e.as_ref(), &policy, &me), want, "{why}");
        }
    }

    /// One row of 7.4.
    #[test]
    fn reconnect_table() {
        use ExistingState::*;
        let rows: Vec<Row> = vec![
            (
                "no existing (lossy client)",
                None,
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::Reset { full: true },
            ),
            (
                "existing closed",
                Some(ex(Closed)),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::Reset { full: true },
            ),
            (
                "existing being replaced",
                Some(ExistingSession { replacing: true, ..ex(Open) }),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::RetryGlobal { global_seq: 40 },
            ),
            (
                "client cookie mismatch, resetcheck",
                Some(ex(Open)),
                reconnect(50, 4, 12),
                REUSE,
                me_high(),
                Decision::Reset { full: true },
            ),
            (
                "client cookie mismatch, no resetcheck",
                Some(ex(Open)),
                reconnect(50, 4, 12),
                PEER,
                me_high(),
                Decision::Reset { full: false },
            ),
            (
                "existing never got SERVER_IDENT",
                Some(ExistingSession { server_cookie: 0, ..ex(Open) }),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::Reset { full: false },
            ),
            (
                "stale global_seq",
                Some(ex(Open)),
                reconnect(39, 4, 11),
                PEER,
                me_high(),
                Decision::RetryGlobal { global_seq: 40 },
            ),
            (
                "old connect_seq",
                Some(ex(Open)),
                reconnect(50, 2, 11),
                PEER,
                me_high(),
                Decision::Retry { connect_seq: 3 },
            ),
            (
                "reconnect race, peer sorts higher",
                Some(ex(Connecting)),
                reconnect(50, 3, 11),
                PEER,
                me_low(),
                Decision::Wait,
            ),
            (
                "reconnect race, peer sorts lower",
                Some(ex(Connecting)),
                reconnect(50, 3, 11),
                PEER,
                me_high(),
                KEEP,
            ),
            (
                "reconnect race against a server side",
                Some(ExistingSession { server_side: true, ..ex(Connecting) }),
                reconnect(50, 3, 11),
                PEER,
                me_low(),
                KEEP,
            ),
            ("normal reconnect", Some(ex(Standby)), reconnect(50, 4, 11), PEER, me_low(), KEEP),
        ];
        for (why, e, req, policy, me, want) in rows {
            assert_eq!(decide(&req, e.as_ref(), &policy, &me), want, "{why}");
        }
    }

    // msgr-v2.md 7.4: "a peer with nonce > 0 sorted above a monitor with nonce 0".
    #[test]
    fn race_key_compares_nonce_first() {
        let mon = v2(3300, 0);
        let peer = v2(1, 5);
        assert!(msgr2_addr(&mon).race_key() < msgr2_addr(&peer).race_key());
        let any_only = EntityAddrVec::single(EntityAddr { ty: AddrType::ANY, ..msgr2_addr(&peer) });
        assert_eq!(msgr2_addr(&any_only), EntityAddr::default());
    }
}
