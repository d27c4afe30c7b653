//! msgr2's connection race: what an acceptor answers to CLIENT_IDENT or
//! SESSION_RECONNECT given the session the messenger already holds for the peer
//! (msgr-v2.md 7.3 and 7.4, Ceph's `handle_client_ident` + `handle_existing_connection`
//! and `handle_reconnect`).
//!
//! The machine checks what needs no global knowledge (addresses, target, features) and
//! emits [`crate::Event::AcceptRequest`]; the messenger looks up its session table,
//! calls [`decide`] (through [`crate::decide`]) and answers with
//! [`crate::Machine::handle_accept_decision`], moving the existing session in when the
//! decision is a [`Decision::Replace`] that keeps it.

use crate::session::{
    AcceptRequest, ConnectSeq, Decision, ExistingSession, ExistingState, GlobalSeq, Policy,
    RequestKind,
};
use crate::types::{AddrType, EntityAddr, EntityAddrVec};

/// Ceph's `entity_addrvec_t::msgr2_addr()`: the first v2 address, or a blank one. Its
/// [`EntityAddr::race_key`] is what connection races compare.
pub fn msgr2_addr(addrs: &EntityAddrVec) -> EntityAddr {
    addrs.addrs.iter().copied().find(|a| a.ty == AddrType::MSGR2).unwrap_or_default()
}

/// The accept decision, rule for rule as msgr-v2.md 7.3 (ident) and 7.4 (reconnect).
///
/// `policy` is our policy for the peer's type; `my_addrs` our bound addresses (the race
/// tie-break compares `msgr2_addr()`s byte-wise). A request that is not msgr2's is
/// dropped (only a driver mixing up its machines could pass one).
#[doc(alias = "handle_existing_connection")]
#[doc(alias = "handle_client_ident")]
#[doc(alias = "handle_reconnect")]
pub fn decide(
    req: &AcceptRequest,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    match &req.kind {
        RequestKind::Ident { peer_addrs, global_seq, client_cookie, .. } => {
            let peer = msgr2_addr(peer_addrs);
            decide_ident(&peer, *global_seq, *client_cookie, existing, policy, my_addrs)
        }
        RequestKind::Reconnect { peer_addrs, global_seq, connect_seq, client_cookie, .. } => {
            let peer = msgr2_addr(peer_addrs);
            let (gs, cs, cookie) = (*global_seq, *connect_seq, *client_cookie);
            decide_reconnect(&peer, gs, cs, cookie, existing, policy, my_addrs)
        }
        RequestKind::Connect { .. } => Decision::Drop,
    }
}

/// How the peer's `msgr2_addr()` compares with ours (Ceph's byte-wise `entity_addr_t`
/// comparison).
fn peer_vs_me(peer: &EntityAddr, my_addrs: &EntityAddrVec) -> std::cmp::Ordering {
    peer.race_key().cmp(&msgr2_addr(my_addrs).race_key())
}

fn decide_ident(
    peer: &EntityAddr,
    global_seq: GlobalSeq,
    client_cookie: u64,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    // Ceph skips the lookup for a lossy client of a server that does not register them
    // ("incoming lossy client, no need to register this connection"). Ours registers
    // them (Ceph's `stateless_registered_server`, an OSD's public messenger): a client
    // connecting again replaces its old lossy session, reset with its queued messages
    // (`handle_existing_connection`), after the same checks as any existing session.
    if policy.server && policy.lossy {
        return match existing.filter(|e| e.state != ExistingState::Closed && e.lossy) {
            Some(ex) if ex.replacing => Decision::Wait,
            Some(ex) if ex.peer_global_seq > global_seq => Decision::Drop,
            Some(_) => Decision::Replace { reset_existing: true, peer_restarted: false },
            None => Decision::Open,
        };
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
        return Decision::Replace { reset_existing: true, peer_restarted: false };
    }
    if ex.server_cookie != 0 && ex.client_cookie != 0 && ex.client_cookie != client_cookie {
        // "found previous session, peer must have reseted".
        return Decision::Replace { reset_existing: policy.resetcheck, peer_restarted: true };
    }
    if ex.client_cookie == client_cookie {
        // "session establishment interrupted between client_ident and server_ident".
        return KEEP;
    }
    if matches!(ex.state, ExistingState::Open | ExistingState::Standby) {
        return KEEP;
    }
    // Both sides are connecting: the lower address (or a server side) yields.
    if peer_vs_me(peer, my_addrs).is_lt() || ex.server_side {
        KEEP
    } else {
        Decision::Wait
    }
}

fn decide_reconnect(
    peer: &EntityAddr,
    global_seq: GlobalSeq,
    connect_seq: ConnectSeq,
    client_cookie: u64,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addrs: &EntityAddrVec,
) -> Decision {
    let Some(ex) = existing.filter(|e| e.state != ExistingState::Closed) else {
        return Decision::ResetSession { full: true };
    };
    if ex.replacing {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if ex.client_cookie != client_cookie {
        // "client cookie mismatch, I must have reseted".
        return Decision::ResetSession { full: policy.resetcheck };
    }
    if ex.server_cookie == 0 {
        // "I was a client and didn't received the server_ident".
        return Decision::ResetSession { full: false };
    }
    if ex.peer_global_seq > global_seq {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if ex.connect_seq > connect_seq {
        return Decision::RetrySession(ex.connect_seq);
    }
    if ex.connect_seq == connect_seq && peer_vs_me(peer, my_addrs).is_gt() && !ex.server_side {
        // "reconnect race detected, this connection loses to existing".
        return Decision::Wait;
    }
    KEEP
}

/// Replace, keeping the existing session.
const KEEP: Decision = Decision::Replace { reset_existing: false, peer_restarted: false };

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::session::Seq;
    use crate::types::{EntityType, Features};
    use std::net::SocketAddr;

    fn v2(port: u16, nonce: u32) -> EntityAddrVec {
        EntityAddrVec::single(EntityAddr {
            ty: AddrType::MSGR2,
            nonce,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        })
    }

    fn ident(gs: u64, cookie: u64) -> AcceptRequest {
        AcceptRequest {
            peer_addr: msgr2_addr(&v2(6800, 7)),
            peer_type: EntityType::MON,
            socket_peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            kind: RequestKind::Ident {
                peer_addrs: v2(6800, 7),
                global_seq: GlobalSeq(gs),
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
                peer_addrs: v2(6800, 7),
                global_seq: GlobalSeq(gs),
                connect_seq: ConnectSeq(cs),
                client_cookie: cc,
                server_cookie: 99,
                msg_seq: Seq(0),
            },
            ..ident(gs, cc)
        }
    }

    fn ex(state: ExistingState) -> ExistingSession {
        ExistingSession {
            state,
            client_cookie: 11,
            server_cookie: 22,
            connect_seq: ConnectSeq(3),
            peer_global_seq: GlobalSeq(40),
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

    /// One row of 7.3: (existing, request, policy, my addrs) → decision.
    #[test]
    fn ident_table() {
        use ExistingState::*;
        let rows: Vec<Row> = vec![
            (
                "stateless server, no lossy session",
                Some(ex(Open)),
                ident(1, 5),
                Policy::stateless_server(),
                me_high(),
                Decision::Open,
            ),
            (
                "stateless server: the client's old lossy session is reset",
                Some(ExistingSession { lossy: true, ..ex(Open) }),
                ident(50, 5),
                Policy::stateless_server(),
                me_high(),
                Decision::Replace { reset_existing: true, peer_restarted: false },
            ),
            (
                "stateless server: a stale connect of the client's",
                Some(ExistingSession { lossy: true, ..ex(Open) }),
                ident(39, 5),
                Policy::stateless_server(),
                me_high(),
                Decision::Drop,
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
                Decision::Replace { reset_existing: true, peer_restarted: false },
            ),
            (
                "peer restarted, resetcheck",
                Some(ex(Open)),
                ident(50, 5),
                REUSE,
                me_high(),
                Decision::Replace { reset_existing: true, peer_restarted: true },
            ),
            (
                "peer restarted, no resetcheck",
                Some(ex(Open)),
                ident(50, 5),
                PEER,
                me_high(),
                Decision::Replace { reset_existing: false, peer_restarted: true },
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
                Decision::ResetSession { full: true },
            ),
            (
                "existing closed",
                Some(ex(Closed)),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::ResetSession { full: true },
            ),
            (
                "existing being replaced",
                Some(ExistingSession { replacing: true, ..ex(Open) }),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::RetryGlobal(GlobalSeq(40)),
            ),
            (
                "client cookie mismatch, resetcheck",
                Some(ex(Open)),
                reconnect(50, 4, 12),
                REUSE,
                me_high(),
                Decision::ResetSession { full: true },
            ),
            (
                "client cookie mismatch, no resetcheck",
                Some(ex(Open)),
                reconnect(50, 4, 12),
                PEER,
                me_high(),
                Decision::ResetSession { full: false },
            ),
            (
                "existing never got SERVER_IDENT",
                Some(ExistingSession { server_cookie: 0, ..ex(Open) }),
                reconnect(50, 4, 11),
                PEER,
                me_high(),
                Decision::ResetSession { full: false },
            ),
            (
                "stale global_seq",
                Some(ex(Open)),
                reconnect(39, 4, 11),
                PEER,
                me_high(),
                Decision::RetryGlobal(GlobalSeq(40)),
            ),
            (
                "old connect_seq",
                Some(ex(Open)),
                reconnect(50, 2, 11),
                PEER,
                me_high(),
                Decision::RetrySession(ConnectSeq(3)),
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
