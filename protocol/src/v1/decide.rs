//! The accept decision: what an acceptor does with a peer's connect message, given the
//! session the messenger already holds for that peer (msgr-v1.md 3.7, Ceph's
//! `ProtocolV1::handle_connect_message_2`).
//!
//! The state machine checks what needs no global knowledge (protocol version, features,
//! authorizer) itself, then emits [`super::Event::AcceptRequest`]; the messenger looks
//! its session table up and calls [`decide`], and hands the [`Decision`] back through
//! [`super::Connection::handle_accept_decision`].

use std::net::SocketAddr;

use crate::types::{EntityAddr, EntityType, Features};

use super::Policy;

/// A peer's connect message, parsed and pre-checked by the accepting state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptRequest {
    /// The address the peer announced in its banner (blank IP replaced by the socket's
    /// peer IP): the key of the messenger's session table.
    pub peer_addr: EntityAddr,
    /// The peer's `host_type`.
    pub peer_type: EntityType,
    /// The TCP peer address of the socket.
    pub socket_peer: SocketAddr,
    /// The peer's features (`connect.features`).
    pub features: Features,
    /// `connect.global_seq`.
    pub global_seq: u32,
    /// `connect.connect_seq`.
    pub connect_seq: u32,
    /// `connect.flags & LOSSY` (informational: the acceptor's policy decides).
    pub lossy: bool,
}

/// What the messenger's session table says about an existing connection to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExistingState {
    /// The session is open.
    Open,
    /// The session is in standby (no socket, waiting).
    Standby,
    /// Our own connection to the peer is still connecting (a race if the peer dials us).
    Connecting,
    /// The existing connection is closed: treat as none.
    Closed,
}

/// The existing session registered under the peer's address (Ceph's `existing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistingSession {
    /// Its state.
    pub state: ExistingState,
    /// Its session `connect_seq`.
    pub connect_seq: u32,
    /// The peer's `global_seq` it last saw.
    pub peer_global_seq: u32,
    /// Its policy is lossy.
    pub lossy: bool,
    /// Its policy is a server one (Ceph's `existing->policy.server`): a race against a
    /// server-side connection is always won by the incoming one.
    pub server_side: bool,
    /// It is in the middle of being replaced by another incoming connection.
    pub replacing: bool,
}

/// The outcome of [`decide`]: which reply the acceptor sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Open a new session (no existing one): reply SEQ or READY.
    Open {
        /// The peer restarted (its connect_seq is 0 against a session of ours): reply
        /// READY, zero in_seq, and report a remote reset.
        reset_from_peer: bool,
    },
    /// The incoming connection takes over the existing session.
    Replace {
        /// The existing session is discarded (lossy, or resetcheck on a peer restart):
        /// the messenger resets it and the new connection starts a fresh session.
        /// Otherwise the messenger moves the session into the new connection
        /// ([`super::Connection::take_session`]).
        reset_existing: bool,
        /// As in [`Decision::Open`].
        reset_from_peer: bool,
    },
    /// Reply RETRY_GLOBAL: the peer must use a global_seq above this value.
    RetryGlobal(u32),
    /// Reply RETRY_SESSION: the peer must use this connect_seq.
    RetrySession(u32),
    /// Reply WAIT: the connection race was lost by the peer; our own outgoing connection
    /// carries the session (the messenger queues a keepalive on it so it completes).
    Wait,
    /// Reply RESETSESSION: we have no such session; the peer resets and retries with 0.
    ResetSession,
}

/// The accept decision, rule for rule as msgr-v1.md 3.7 (steps 6-7).
///
/// `policy` is our policy for the peer's type; `my_addr` our legacy address (the race
/// tie-break compares it byte-wise with the peer's).
pub fn decide(
    req: &AcceptRequest,
    existing: Option<&ExistingSession>,
    policy: &Policy,
    my_addr: &EntityAddr,
) -> Decision {
    // Step 6: a stateless server opens a fresh session for every connect, no lookup.
    if policy.lossy && policy.server {
        return Decision::Open { reset_from_peer: false };
    }
    let Some(ex) = existing.filter(|e| e.state != ExistingState::Closed) else {
        // No session: a peer that thinks it has one (connect_seq > 0) must reset.
        return if req.connect_seq > 0 {
            Decision::ResetSession
        } else {
            Decision::Open { reset_from_peer: false }
        };
    };
    if ex.replacing {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if req.global_seq < ex.peer_global_seq {
        return Decision::RetryGlobal(ex.peer_global_seq);
    }
    if ex.lossy {
        return Decision::Replace { reset_existing: true, reset_from_peer: false };
    }
    if req.connect_seq == 0 && ex.connect_seq > 0 {
        // The peer restarted and lost its session.
        return Decision::Replace { reset_existing: policy.resetcheck, reset_from_peer: true };
    }
    if req.connect_seq < ex.connect_seq {
        return Decision::RetrySession(ex.connect_seq.wrapping_add(1));
    }
    if req.connect_seq == ex.connect_seq {
        if matches!(ex.state, ExistingState::Open | ExistingState::Standby) {
            if policy.resetcheck && ex.connect_seq == 0 {
                return Decision::Replace { reset_existing: false, reset_from_peer: false };
            }
            return Decision::RetrySession(ex.connect_seq.wrapping_add(1));
        }
        // Both sides dialled each other: the lower address (or a server side) yields.
        if req.peer_addr.race_key() < my_addr.race_key() || ex.server_side {
            return Decision::Replace { reset_existing: false, reset_from_peer: false };
        }
        return Decision::Wait;
    }
    // req.connect_seq > ex.connect_seq: a normal reconnect, unless we reset meanwhile.
    if policy.resetcheck && ex.connect_seq == 0 {
        return Decision::ResetSession;
    }
    Decision::Replace { reset_existing: false, reset_from_peer: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn addr(port: u16, nonce: u32) -> EntityAddr {
        EntityAddr::legacy(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)), nonce)
    }

    fn req(connect_seq: u32, global_seq: u32) -> AcceptRequest {
        let peer_addr = addr(6800, 7);
        AcceptRequest {
            peer_addr,
            peer_type: EntityType::MON,
            socket_peer: peer_addr.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1))),
            features: Features::PACIFIC_ADVERTISED,
            global_seq,
            connect_seq,
            lossy: false,
        }
    }

    fn existing(state: ExistingState, connect_seq: u32, peer_global_seq: u32) -> ExistingSession {
        ExistingSession {
            state,
            connect_seq,
            peer_global_seq,
            lossy: false,
            server_side: false,
            replacing: false,
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

    // Step 6: "incoming lossy client, no need to register this connection".
    #[test]
    fn stateless_server_always_opens_without_lookup() {
        let ex = existing(ExistingState::Open, 9, 100);
        let d = decide(&req(5, 1), Some(&ex), &Policy::stateless_server(), &me_high());
        assert_eq!(d, Decision::Open { reset_from_peer: false });
    }

    // "existing already closed" → open.
    #[test]
    fn closed_existing_is_ignored() {
        let ex = existing(ExistingState::Closed, 3, 100);
        assert_eq!(
            decide(&req(0, 1), Some(&ex), &PEER, &me_high()),
            Decision::Open { reset_from_peer: false }
        );
    }

    // "existing racing replace happened while replacing" → RETRY_GLOBAL.
    #[test]
    fn replacing_existing_answers_retry_global() {
        let ex = ExistingSession { replacing: true, ..existing(ExistingState::Open, 1, 40) };
        assert_eq!(decide(&req(2, 50), Some(&ex), &PEER, &me_high()), Decision::RetryGlobal(40));
    }

    // "accept existing.gseq > connect.gseq, RETRY_GLOBAL".
    #[test]
    fn older_global_seq_answers_retry_global() {
        let ex = existing(ExistingState::Open, 1, 40);
        assert_eq!(decide(&req(2, 39), Some(&ex), &PEER, &me_high()), Decision::RetryGlobal(40));
    }

    // "accept replacing existing (lossy) channel".
    #[test]
    fn lossy_existing_is_reset_and_replaced() {
        let ex = ExistingSession { lossy: true, ..existing(ExistingState::Open, 4, 1) };
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: true, reset_from_peer: false }
        );
    }

    // "accept peer reset, then tried to connect to us, replacing" (resetcheck resets ours).
    #[test]
    fn peer_restart_replaces_and_resets_with_resetcheck() {
        let ex = existing(ExistingState::Open, 4, 1);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: true, reset_from_peer: true }
        );
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, reset_from_peer: true }
        );
    }

    // "old attempt, or we sent READY but they didn't get it" → RETRY_SESSION cs+1.
    #[test]
    fn older_connect_seq_answers_retry_session() {
        let ex = existing(ExistingState::Open, 4, 1);
        assert_eq!(decide(&req(2, 2), Some(&ex), &PEER, &me_high()), Decision::RetrySession(5));
    }

    // Equal connect_seq against an OPEN or STANDBY session: "not a connection race",
    // the peer must bump its connect_seq.
    #[test]
    fn equal_connect_seq_on_open_or_standby_answers_retry_session() {
        for state in [ExistingState::Open, ExistingState::Standby] {
            let ex = existing(state, 3, 1);
            assert_eq!(decide(&req(3, 2), Some(&ex), &PEER, &me_high()), Decision::RetrySession(4));
        }
    }

    // "if connect_seq both zero, dont stuck into dead lock. it's ok to replace".
    #[test]
    fn both_zero_with_resetcheck_replaces() {
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: false, reset_from_peer: false }
        );
        assert_eq!(decide(&req(0, 2), Some(&ex), &PEER, &me_high()), Decision::RetrySession(1));
    }

    // Connection race, peer's address sorts lower: "incoming wins" → replace.
    #[test]
    fn race_lower_peer_address_wins() {
        let ex = existing(ExistingState::Connecting, 0, 0);
        assert_eq!(
            decide(&req(0, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, reset_from_peer: false }
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
            Decision::Replace { reset_existing: false, reset_from_peer: false }
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
            Decision::Replace { reset_existing: false, reset_from_peer: false }
        );
        r.peer_addr = addr(6800, 1);
        assert_eq!(decide(&r, Some(&ex), &PEER, &addr(6800, 256)), Decision::Wait);
    }

    // "accept we reset (peer sent cseq > 0, existing cseq 0), sending RESETSESSION".
    #[test]
    fn newer_connect_seq_against_fresh_session_with_resetcheck_resets() {
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(decide(&req(3, 2), Some(&ex), &REUSE, &me_high()), Decision::ResetSession);
    }

    // "accept peer sent cseq > existing.cseq" → replace (normal reconnect).
    #[test]
    fn newer_connect_seq_replaces() {
        let ex = existing(ExistingState::Standby, 2, 1);
        assert_eq!(
            decide(&req(3, 2), Some(&ex), &REUSE, &me_high()),
            Decision::Replace { reset_existing: false, reset_from_peer: false }
        );
        let ex = existing(ExistingState::Open, 0, 1);
        assert_eq!(
            decide(&req(3, 2), Some(&ex), &PEER, &me_high()),
            Decision::Replace { reset_existing: false, reset_from_peer: false }
        );
    }

    // No existing session: "we reset, and they are opening a new session" → RESETSESSION.
    #[test]
    fn no_session_and_nonzero_connect_seq_resets() {
        assert_eq!(decide(&req(1, 1), None, &PEER, &me_high()), Decision::ResetSession);
    }

    // No existing session, connect_seq 0: "accept new session".
    #[test]
    fn no_session_opens() {
        assert_eq!(
            decide(&req(0, 1), None, &PEER, &me_high()),
            Decision::Open { reset_from_peer: false }
        );
    }
}
