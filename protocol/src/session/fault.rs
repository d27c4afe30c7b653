//! Faults and the pure fault policy (Ceph's `ProtocolV1::fault`, `ProtocolV2::_fault`).
//!
//! A fault is anything that ends the current TCP connection of a session: the peer's
//! bytes made no sense, a timer ran out, or the transport closed. [`fault_action`] turns
//! the fault and the session's situation into what happens next; the state machine
//! only carries the action out.

use std::fmt;
use std::time::Duration;

use crate::auth::AuthError;
use crate::error::Error;

/// Why a connection faulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The transport closed (EOF or socket error), as reported by the driver.
    TransportClosed,
    /// The peer's banner was not the protocol's (`ceph v027`, `ceph v2\n`).
    BadBanner,
    /// The acceptor announced an address other than the one we dialled.
    AddrMismatch,
    /// The peer's bytes failed to decode (bad crc, missing COMPLETE, oversize length,
    /// bad address marker, ...).
    Decode(Error),
    /// An unknown tag arrived (in the connect reply or the open session).
    UnknownTag(u8),
    /// The peer broke a protocol rule (for example a wrong connect_seq in its reply).
    Misbehaved(&'static str),
    /// The handshake did not complete within `Config::handshake_timeout`.
    HandshakeTimeout,
    /// Nothing arrived for `Config::idle_timeout`.
    IdleTimeout,
    /// A message's payload stopped arriving (`Config::payload_timeout`).
    PayloadTimeout,
    /// Bytes waited to be sent and the socket took none for `Config::write_timeout`:
    /// the peer does not read.
    WriteTimeout,
    /// The acceptor answered WAIT: we lost the connection race; the
    /// acceptor's own outgoing connection will carry the session.
    Wait,
    /// Authentication failed on an open or opening session: a bad authorizer reply, a
    /// message whose signature does not check.
    Auth(AuthError),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::TransportClosed => f.write_str("transport closed"),
            Fault::BadBanner => f.write_str("bad banner"),
            Fault::AddrMismatch => {
                f.write_str("peer announced an address other than the one dialled")
            }
            Fault::Decode(e) => write!(f, "{e}"),
            Fault::UnknownTag(t) => write!(f, "unknown tag {t}"),
            Fault::Misbehaved(why) => write!(f, "peer misbehaved: {why}"),
            Fault::HandshakeTimeout => f.write_str("handshake timed out"),
            Fault::IdleTimeout => f.write_str("idle timeout"),
            Fault::PayloadTimeout => f.write_str("message payload stalled"),
            Fault::WriteTimeout => f.write_str("peer stopped reading (write timed out)"),
            Fault::Wait => f.write_str("connection race lost (WAIT)"),
            Fault::Auth(e) => write!(f, "authentication: {e}"),
        }
    }
}

impl std::error::Error for Fault {}

/// Which end of the TCP connection this machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We dialled.
    Connect,
    /// We accepted.
    Accept,
}

/// The situation in which a fault happened: everything [`fault_action`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultContext {
    /// The session's policy is lossy.
    pub lossy: bool,
    /// The policy is a server one (never dials the peer).
    pub server: bool,
    /// A server-policy connection parks in standby on any fault that neither resets nor
    /// closes it, a fault of its own connect attempt included (msgr2: Ceph's
    /// `ProtocolV2::_fault`, "server, going to standby, even though i have stuff
    /// queued", checked before it looks at the state); without it (msgr v1's `fault`)
    /// only past connecting, and a connect attempt backs off and dials again.
    pub server_always_parks: bool,
    /// The policy allows standby.
    pub standby: bool,
    /// Which side this connection is.
    pub side: Side,
    /// The fault hit an open session, rather than a connect attempt.
    pub was_open: bool,
    /// This connection carries a session that was opened (Ceph's `once_ready`): on the
    /// accept side, set from the moment the final reply went out or a session was
    /// transferred in.
    pub once_ready: bool,
    /// The session this connection carries opened on it, or was moved into it by a
    /// replace that kept it (usually a session our dispatchers were told of, though it
    /// may be one of our own connects that never opened, or an acceptance that waited in
    /// standby unannounced). A fresh acceptance whose final reply went out but which has
    /// not opened yet (msgr v1's SEQ, awaiting the peer's in_seq) has `once_ready`
    /// without it.
    pub announced: bool,
    /// Messages are queued or unacked (after requeueing), or a keepalive is pending.
    pub has_pending: bool,
    /// The fault is a WAIT reply (race lost).
    pub wait: bool,
    /// A connector's fault in its handshake that ends a lossy session: msgr v1 once its
    /// banner was written ([`v1_still_connecting`]: Ceph's ProtocolV1 resets there),
    /// msgr2 on a WAIT reply (Ceph's ProtocolV2 faults from its WAIT state, past the
    /// states in which it retries a lossy connect).
    pub lossy_handshake_ends: bool,
    /// The backoff used for the previous attempt (zero if none yet).
    pub prev_backoff: Duration,
    /// `Config::initial_backoff`.
    pub initial_backoff: Duration,
    /// `Config::max_backoff`.
    pub max_backoff: Duration,
}

impl FaultContext {
    /// Past connecting: open, or accepted (Ceph's states other than START_CONNECT,
    /// CONNECTING and WAIT), including an accepted session whose handshake had not
    /// finished (its last reply sent, or a session handed over by a replace).
    pub fn past_connecting(&self) -> bool {
        self.was_open || self.side == Side::Accept
    }
}

/// What to do after a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Lossy session that was open, a lossy msgr v1 connector faulting past CONNECTING,
    /// or a lossy msgr2 connector answered WAIT: drop it (`ms_handle_reset`) and stop.
    Reset,
    /// A connection that never carried a session (half-accepted): close quietly.
    Close,
    /// Keep the session, wait for new messages (connect side) or for the peer to
    /// reconnect (server side).
    Standby,
    /// Keep the session and dial again after `after`.
    Reconnect {
        /// Delay before dialling; zero for the first reconnect of an open session.
        after: Duration,
    },
}

/// The fault policy, mirroring Ceph's `ProtocolV1::fault` (msgr-v1.md 3.8, 3.9).
pub fn fault_action(ctx: &FaultContext) -> FaultAction {
    // A lossy session dies with its connection; a lossy connector still retries while
    // it has never been open (Ceph keeps lossy connects in START_CONNECT), in msgr v1
    // only until its banner was written (ProtocolV1's CONNECTING: v1_still_connecting),
    // in msgr2 unless it was answered WAIT (ProtocolV2's WAIT state).
    if ctx.lossy && ctx.lossy_handshake_ends {
        return FaultAction::Reset;
    }
    // Past connecting, a lossy session our dispatchers were told of (open, or resumed
    // and waiting for the peer's in_seq) is reported reset, as Ceph's fault does in
    // every state past CONNECTING. One never announced closes quietly: a half-accepted
    // connection, or a fresh v1 acceptance that faults before the peer's in_seq (Ceph
    // queues its accept before that wait and would report accept, then reset; this
    // fault reports neither rather than a reset alone).
    if ctx.lossy && ctx.past_connecting() {
        let carried = ctx.was_open || ctx.announced;
        return if carried { FaultAction::Reset } else { FaultAction::Close };
    }
    // Half-accepted and nothing of ours to deliver: nobody depends on this connection.
    if ctx.side == Side::Accept && !ctx.once_ready && !ctx.has_pending {
        return FaultAction::Close;
    }
    if ctx.standby && !ctx.has_pending && !ctx.wait {
        return FaultAction::Standby;
    }
    // A server never dials its peer again: msgr2 parks it whatever it was doing.
    if ctx.server && ctx.server_always_parks {
        return FaultAction::Standby;
    }
    if ctx.past_connecting() {
        // A server never dials its clients: it waits for them to come back.
        if ctx.server {
            return FaultAction::Standby;
        }
        // Ceph reconnects at once after losing an open session (backoff zero).
        return FaultAction::Reconnect { after: Duration::ZERO };
    }
    FaultAction::Reconnect { after: next_backoff(ctx) }
}

/// Whether a msgr v1 connector's fault in its handshake leaves it in Ceph's CONNECTING,
/// where ProtocolV1 retries even a lossy session (its fault resets a lossy one in any
/// state but START_CONNECT and CONNECTING). CONNECTING lasts from the banner's write to
/// its completion (`send_client_banner` → `handle_client_banner_write`) and reads
/// nothing, so only the transport or the clock fault it there: a fault the peer's bytes
/// raised, or any once the acceptor's banner was read (`awaiting_banner` false: Ceph
/// reads it only after writing its own), is past it.
pub fn v1_still_connecting(awaiting_banner: bool, banner_written: bool, fault: &Fault) -> bool {
    awaiting_banner
        && !banner_written
        && matches!(fault, Fault::TransportClosed | Fault::HandshakeTimeout)
}

/// The backoff before the next connect attempt: `initial`, doubling to `max`; WAIT
/// waits `max` straight away.
pub fn next_backoff(ctx: &FaultContext) -> Duration {
    if ctx.wait {
        ctx.max_backoff
    } else if ctx.prev_backoff.is_zero() {
        ctx.initial_backoff.min(ctx.max_backoff)
    } else {
        ctx.prev_backoff.saturating_mul(2).min(ctx.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> FaultContext {
        FaultContext {
            lossy: false,
            server: false,
            server_always_parks: false,
            standby: false,
            side: Side::Connect,
            was_open: true,
            once_ready: true,
            announced: true,
            has_pending: true,
            wait: false,
            lossy_handshake_ends: false,
            prev_backoff: Duration::ZERO,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
        }
    }

    // ProtocolV1::fault: "on lossy channel, failing" → stop + queue_reset.
    #[test]
    fn lossy_open_session_resets() {
        let c = FaultContext { lossy: true, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Reset);
    }

    // A lossy connector that never got a session keeps retrying with backoff, but in
    // msgr v1 only until its banner was written: ProtocolV1's fault resets a lossy
    // connection in any state past START_CONNECT and CONNECTING (a lossless one retries).
    #[test]
    fn lossy_connect_attempt_retries_with_initial_backoff() {
        let c = FaultContext { lossy: true, was_open: false, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Reconnect { after: Duration::from_millis(200) });
        let v1_handshake = FaultContext { lossy_handshake_ends: true, ..c };
        assert_eq!(fault_action(&v1_handshake), FaultAction::Reset);
        let lossless = FaultContext { lossy: false, ..v1_handshake };
        assert!(matches!(fault_action(&lossless), FaultAction::Reconnect { .. }));
    }

    // ProtocolV1's CONNECTING runs from the banner's write to its completion and reads
    // nothing: a write error or a timeout there retries a lossy connect; once the banner
    // is written (or the acceptor's was read: Ceph reads it only after), or for a fault
    // the peer's bytes raised, it is past CONNECTING.
    #[test]
    fn v1_connecting_ends_once_the_banner_is_written() {
        let decode = Fault::Decode(Error::Malformed("x"));
        for fault in [Fault::TransportClosed, Fault::HandshakeTimeout] {
            assert!(v1_still_connecting(true, false, &fault), "{fault}: banner unwritten");
            assert!(!v1_still_connecting(true, true, &fault), "{fault}: banner written");
            assert!(!v1_still_connecting(false, false, &fault), "{fault}: peer banner read");
        }
        for fault in [Fault::BadBanner, Fault::AddrMismatch, decode, Fault::UnknownTag(9)] {
            assert!(!v1_still_connecting(true, false, &fault), "{fault}: the peer's bytes");
        }
    }

    // "with nothing to send and in the half accept state just closed".
    #[test]
    fn half_accepted_connection_just_closes() {
        let c = FaultContext {
            side: Side::Accept,
            was_open: false,
            once_ready: false,
            has_pending: false,
            ..ctx()
        };
        assert_eq!(fault_action(&c), FaultAction::Close);
        // A session already handed over (reply sent / transferred) is not half-accepted:
        // past connecting, as an open one (Ceph's fault for states beyond CONNECTING).
        let c = FaultContext { side: Side::Accept, was_open: false, has_pending: false, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Reconnect { after: Duration::ZERO });
        let c = FaultContext { server: true, ..c };
        assert_eq!(fault_action(&c), FaultAction::Standby, "a server never dials");
        let c = FaultContext { once_ready: false, has_pending: true, ..c };
        assert_eq!(fault_action(&c), FaultAction::Standby, "nor for a replace's messages");
        let c = FaultContext {
            lossy: true,
            side: Side::Accept,
            was_open: false,
            once_ready: false,
            announced: false,
            ..ctx()
        };
        assert_eq!(fault_action(&c), FaultAction::Close);
    }

    // A session a v1 replace resumed (its SEQ sent, the peer's in_seq not read yet) and
    // then marked disposable: Ceph's fault resets it (lossy, past CONNECTING), and our
    // dispatchers, which heard it accepted, must hear it reset. Before, it closed quietly
    // (it was not open), and no ms_handle_reset came.
    #[test]
    fn a_lossy_resumed_session_not_yet_open_resets() {
        let c = FaultContext { lossy: true, side: Side::Accept, was_open: false, ..ctx() };
        assert!(c.once_ready && c.announced);
        assert_eq!(fault_action(&c), FaultAction::Reset);
    }

    // A fresh lossy v1 acceptance whose SEQ reply went out (once_ready) faults before
    // the peer's in_seq: no dispatcher was told of it (ms_handle_accept comes with the
    // open), so it closes quietly; a reset would be the first any dispatcher heard of it.
    #[test]
    fn a_fresh_lossy_acceptance_not_yet_open_closes_quietly() {
        let c = FaultContext {
            lossy: true,
            side: Side::Accept,
            was_open: false,
            announced: false,
            ..ctx()
        };
        assert!(c.once_ready);
        assert_eq!(fault_action(&c), FaultAction::Close);
    }

    // "with nothing to send, going to standby".
    #[test]
    fn standby_when_nothing_pending_and_policy_allows() {
        let c = FaultContext { standby: true, has_pending: false, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Standby);
        // Pending messages override standby.
        let c = FaultContext { standby: true, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Reconnect { after: Duration::ZERO });
    }

    // "server, going to standby": a server never dials its peer.
    #[test]
    fn lossless_server_goes_standby() {
        let c = FaultContext { server: true, side: Side::Accept, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Standby);
    }

    // msgr2 parks a server-policy connector that faults in its own connect attempt, a
    // WAIT included ("server, going to standby, even though i have stuff queued");
    // msgr v1 backs off and dials again. A lossy one answered WAIT still resets (Ceph's
    // lossy check comes first).
    #[test]
    fn a_v2_server_connector_parks_when_its_connect_faults() {
        let c = FaultContext { server: true, was_open: false, ..ctx() };
        assert_eq!(fault_action(&c), FaultAction::Reconnect { after: Duration::from_millis(200) });
        let v2 = FaultContext { server_always_parks: true, ..c };
        assert_eq!(fault_action(&v2), FaultAction::Standby);
        assert_eq!(fault_action(&FaultContext { wait: true, ..v2 }), FaultAction::Standby);
        assert_eq!(fault_action(&FaultContext { lossy: true, ..v2 }), FaultAction::Standby);
        let lossy_wait = FaultContext { lossy: true, wait: true, lossy_handshake_ends: true, ..v2 };
        assert_eq!(fault_action(&lossy_wait), FaultAction::Reset);
    }

    // "initiating reconnect": first reconnect after an open session is immediate.
    #[test]
    fn lossless_open_session_reconnects_immediately() {
        assert_eq!(fault_action(&ctx()), FaultAction::Reconnect { after: Duration::ZERO });
    }

    // Backoff: ms_initial_backoff doubling to ms_max_backoff; WAIT uses the max.
    #[test]
    fn backoff_doubles_to_max_and_wait_uses_max() {
        let mut c = FaultContext { was_open: false, ..ctx() };
        let mut seen = Vec::new();
        for _ in 0..10 {
            let FaultAction::Reconnect { after } = fault_action(&c) else {
                panic!("not reconnect")
            };
            seen.push(after.as_millis());
            c.prev_backoff = after;
        }
        assert_eq!(seen, [200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000, 15000]);
        let c = FaultContext {
            was_open: false,
            wait: true,
            standby: true,
            has_pending: false,
            ..ctx()
        };
        assert_eq!(fault_action(&c), FaultAction::Reconnect { after: Duration::from_secs(15) });
    }
}
