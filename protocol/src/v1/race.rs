//! msgr v1's connection race: what an acceptor does with a peer's connect message,
//! given the session the messenger already holds for that peer (msgr-v1.md 3.7, Ceph's
//! `ProtocolV1::handle_connect_message_2` with its existing-connection branch).
//!
//! The machine checks what needs no global knowledge (protocol version, features,
//! authorizer) itself, then emits [`crate::Event::AcceptRequest`]; the messenger looks
//! its session table up, calls [`decide`] (through [`crate::decide`]), and hands the
//! [`Decision`] back through [`crate::Machine::handle_accept_decision`].

use crate::session::{
    AcceptRequest, ConnectSeq, Decision, ExistingSession, ExistingState, Policy, RequestKind,
};
use crate::types::EntityAddr;

/// The accept decision for a v1 connect, rule for rule as msgr-v1.md 3.7 (steps 6-7).
///
/// `policy` is our policy for the peer's type; `my_addr` our legacy address (the race
/// tie-break compares it byte-wise with the peer's). A request that is not a v1
/// connect is dropped (only a driver mixing up its machines could pass one).
#[doc(alias = "handle_connect_message_2")]
#[doc(alias = "handle_connect_message")]
pub fn decide(
    req: &AcceptRequest,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addr: &EntityAddr,
) -> Decision {
    let RequestKind::Connect { global_seq, connect_seq, .. } = req.kind else {
        return Decision::Drop;
    };
    // Step 6: a stateless server opens a fresh session for every connect. Ours registers
    // its clients (Ceph's `stateless_registered_server`, an OSD's public messenger), so a
    // client connecting again replaces its old lossy session and resets it, whose queued
    // messages go with it (Ceph's fix for ops dispatched out of order, tracker 42328),
    // after the same global_seq checks as any existing session.
    if policy.lossy && policy.server {
        return match existing.filter(|e| e.state != ExistingState::Closed && e.lossy) {
            Some(ex) if ex.replacing || global_seq < ex.peer_global_seq => {
                Decision::RetryGlobal(ex.peer_global_seq)
            }
            Some(_) => Decision::Replace { reset_existing: true, peer_restarted: false },
            None => Decision::Open,
        };
    }
    let Some(ex) = existing.filter(|e| e.state != ExistingState::Closed) else {
        // No session: a peer that thinks it has one (connect_seq > 0) must reset.
        return if connect_seq.0 > 0 {
            Decision::ResetSession { full: true }
        } else {
            Decision::Open
        };
    };
    // The session's connect_seq as a v1 connect carries it (its low 32 bits, as Ceph's
    // `uint32_t`): one counted past the field (a v1 session's fault bumps it generically)
    // would otherwise be above every connect the peer can send.
    let ex = &ExistingSession { connect_seq: ConnectSeq::from_v1(ex.connect_seq.to_v1()), ..*ex };
    if ex.replacing {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if global_seq < ex.peer_global_seq {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if ex.lossy {
        return Decision::Replace { reset_existing: true, peer_restarted: false };
    }
    if connect_seq.0 == 0 && ex.connect_seq.0 > 0 {
        // The peer restarted and lost its session.
        return Decision::Replace { reset_existing: policy.resetcheck, peer_restarted: true };
    }
    if connect_seq < ex.connect_seq {
        return Decision::RetrySession(ex.connect_seq.next());
    }
    if connect_seq == ex.connect_seq {
        if matches!(ex.state, ExistingState::Open | ExistingState::Standby) {
            if policy.resetcheck && ex.connect_seq.0 == 0 {
                return KEEP;
            }
            return Decision::RetrySession(ex.connect_seq.next());
        }
        // Both sides dialled each other: the lower address (or a server side) yields.
        if req.peer_addr.race_key() < my_addr.race_key() || ex.server_side {
            return KEEP;
        }
        return Decision::Wait;
    }
    // connect_seq > ex.connect_seq: a normal reconnect, unless we reset meanwhile.
    if policy.resetcheck && ex.connect_seq.0 == 0 {
        return Decision::ResetSession { full: true };
    }
    KEEP
}

/// Replace, keeping the existing session.
const KEEP: Decision = Decision::Replace { reset_existing: false, peer_restarted: false };

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ConnectSeq, GlobalSeq};
    use crate::types::{EntityType, Features};
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    fn addr(port: u16, nonce: u32) -> EntityAddr {
        EntityAddr::legacy(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)), nonce)
    }

    fn req(connect_seq: u32, global_seq: u32) -> AcceptRequest {
        let peer_addr = addr(6800, 7);
        AcceptRequest {
            peer_addr,
            peer_type: EntityType::MON,
            socket_peer: peer_addr.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1))),
            kind: RequestKind::Connect {
                global_seq: GlobalSeq::from_v1(global_seq),
                connect_seq: ConnectSeq::from_v1(connect_seq),
                features: Features::PACIFIC_ADVERTISED,
                lossy: false,
            },
        }
    }

    fn existing(state: ExistingState, connect_seq: u32, peer_global_seq: u32) -> ExistingSession {
        ExistingSession {
            state,
            connect_seq: ConnectSeq::from_v1(connect_seq),
            peer_global_seq: GlobalSeq::from_v1(peer_global_seq),
            ..ExistingSession::default()
        }
    }

    /// Our address sorts above the peer's (port 6801 > 6800), so a race is won by the peer.
    fn me_high() -> EntityAddr {
        addr(6801, 7)
    }
    /// Our address sorts below the peer's.
    fn me_low() -> EntityAddr {
        addr(6799, 7)
    }

    const PEER: Policy = Policy::lossless_peer();
    const REUSE: Policy = Policy::lossless_peer_reuse();

    // Step 6: our stateless server registers its lossy clients (Ceph's
    // stateless_registered_server): a client's new connect resets its old lossy session
    // ("accept replacing existing (lossy) channel"), after the global_seq checks; with
    // none, a fresh session.
    #[test]
    fn stateless_server_resets_a_clients_old_session() {
        let server = Policy::stateless_server();
        assert_eq!(decide(&req(5, 1), None, &server, &me_high()), Decision::Open);
        let closed = ExistingSession { lossy: true, ..existing(ExistingState::Closed, 0, 100) };
        assert_eq!(decide(&req(0, 1), Some(&closed), &server, &me_high()), Decision::Open);
        let old = ExistingSession { lossy: true, ..existing(ExistingState::Open, 0, 40) };
        assert_eq!(
            decide(&req(0, 41), Some(&old), &server, &me_high()),
            Decision::Replace { reset_existing: true, peer_restarted: false }
        );
        assert_eq!(
            decide(&req(0, 39), Some(&old), &server, &me_high()),
            Decision::RetryGlobal(GlobalSeq(40))
        );
    }

    // "existing already closed" → open.
    #[test]
    fn closed_existing_is_ignored() {
        let ex = existing(ExistingState::Closed, 3, 100);
        assert_eq!(decide(&req(0, 1), Some(&ex), &PEER, &me_high()), Decision::Open);
    }

    // "existing racing replace happened while replacing" → RETRY_GLOBAL.
    #[test]
    fn replacing_existing_answers_retry_global() {
        let ex = ExistingSession { replacing: true, ..existing(ExistingState::Open, 1, 40) };
        assert_eq!(
            decide(&req(2, 50), Some(&ex), &PEER, &me_high()),
            Decision::RetryGlobal(GlobalSeq(40))
        );
    }

    // "accept existing.gseq > connect.gseq, RETRY_GLOBAL".
    #[test]
    fn older_global_seq_answers_retry_global() {
        let ex = existing(ExistingState::Open, 1, 40);
        assert_eq!(
            decide(&req(2, 39), Some(&ex), &PEER, &me_high()),
            Decision::RetryGlobal(GlobalSeq(40))
        );
    }

    // "accept replacing existing (lossy) channel".
    #[test]
    fn lossy_existing_is_reset_and_replaced() {
        let ex = ExistingSession { lossy: true, ..existing(ExistingState::Open, 4, 1) };
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: true, peer_restarted: false }
        );
    }

    // "accept peer reset, then tried to connect to us, replacing" (resetcheck resets ours).
    #[test]
    fn peer_restart_replaces_and_resets_with_resetcheck() {
        let ex = existing(ExistingState::Open, 4, 1);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: true, peer_restarted: true }
        );
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: true }
        );
    }

    // "old attempt, or we sent READY but they didn't get it" → RETRY_SESSION cs+1.
    #[test]
    fn older_connect_seq_answers_retry_session() {
        let ex = existing(ExistingState::Open, 4, 1);
        assert_eq!(
            decide(&req(2, 2), Some(&ex), &PEER, &me_high()),
            Decision::RetrySession(ConnectSeq(5))
        );
    }

    // Equal connect_seq against an OPEN or STANDBY session: "not a connection race",
    // the peer must bump its connect_seq.
    #[test]
    fn equal_connect_seq_on_open_or_standby_answers_retry_session() {
        for state in [ExistingState::Open, ExistingState::Standby] {
            let ex = existing(state, 3, 1);
            assert_eq!(
                decide(&req(3, 2), Some(&ex), &PEER, &me_high()),
                Decision::RetrySession(ConnectSeq(4))
            );
        }
    }

    // "if connect_seq both zero, dont stuck into dead lock. it's ok to replace".
    #[test]
    fn both_zero_with_resetcheck_replaces() {
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::RetrySession(ConnectSeq(1))
        );
    }

    // Connection race, peer's address sorts lower: "incoming wins" → replace.
    #[test]
    fn race_lower_peer_address_wins() {
        let ex = existing(ExistingState::Connecting, 0, 0);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
    }

    // Connection race, our address sorts lower: "our existing outgoing wins" → WAIT.
    #[test]
    fn race_higher_peer_address_gets_wait() {
        let ex = existing(ExistingState::Connecting, 0, 0);
        assert_eq!(decide(&req(0, 2), Some(&ex), &PEER, &me_low()), Decision::Wait);
    }

    // Connection race against a server-side existing: "or we are server, replacing".
    #[test]
    fn race_against_server_side_existing_replaces() {
        let ex = ExistingSession { server_side: true, ..existing(ExistingState::Connecting, 0, 0) };
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_low()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
    }

    // The tie-break compares nonces as little-endian bytes, not numerically
    // (memcmp over entity_addr_t): nonce 256 (00 01 ..) sorts below nonce 1 (01 00 ..).
    #[test]
    fn race_compares_nonce_bytes_not_numbers() {
        let ex = existing(ExistingState::Connecting, 0, 0);
        let mut r = req(0, 2);
        r.peer_addr = addr(6800, 256);
        assert_eq!(
            decide(&r, Some(&ex), &PEER, &addr(6800, 1)),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
        r.peer_addr = addr(6800, 1);
        assert_eq!(decide(&r, Some(&ex), &PEER, &addr(6800, 256)), Decision::Wait);
    }

    // "accept we reset (peer sent cseq > 0, existing cseq 0), sending RESETSESSION".
    #[test]
    fn newer_connect_seq_against_fresh_session_with_resetcheck_resets() {
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(
            decide(&req(3, 2), Some(&ex), &REUSE, &me_high()),
            Decision::ResetSession { full: true }
        );
    }

    // "accept peer sent cseq > existing.cseq" → replace (normal reconnect).
    #[test]
    fn newer_connect_seq_replaces() {
        let ex = existing(ExistingState::Standby, 2, 1);
        assert_eq!(
            decide(&req(3, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(
            decide(&req(3, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
    }

    // No existing session: "we reset, and they are opening a new session" → RESETSESSION.
    #[test]
    fn no_session_and_nonzero_connect_seq_resets() {
        assert_eq!(
            decide(&req(1, 1), None, &PEER, &me_high()),
            Decision::ResetSession { full: true }
        );
    }

    // A session whose connect_seq was counted past v1's 32-bit field (a fault's bump at
    // u32::MAX) is compared as the wire carries it, as Ceph's `uint32_t`: the peer's
    // reconnect that counts on from the wrapped value gets in, instead of RETRY_SESSION
    // with the same wrapped value on every connect.
    #[test]
    fn connect_seq_past_the_v1_field_is_compared_as_the_wire_carries_it() {
        let ex = ExistingSession {
            connect_seq: ConnectSeq(1 << 32),
            ..existing(ExistingState::Standby, 0, 1)
        };
        assert_eq!(
            decide(&req(1, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, peer_restarted: false }
        );
    }

    // No existing session, connect_seq 0: "accept new session".
    #[test]
    fn no_session_opens() {
        assert_eq!(decide(&req(0, 1), None, &PEER, &me_high()), Decision::Open);
    }
}
