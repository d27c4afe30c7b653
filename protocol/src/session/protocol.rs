//! [`Protocol`]: what msgr v1 and msgr2 plug into the shared [`Machine`].

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::wire::KeepaliveStamp;

use super::event::AuthVerdict;
use super::fault::Fault;
use super::machine::Machine;
use super::race::Decision;
use super::Session;

/// What a protocol (msgr v1, msgr2) plugs into [`Machine`]: its handshake steps, what
/// its open session is in the middle of reading, and the hooks the shared skeleton
/// calls. Implemented by [`crate::v1::V1`] and [`crate::v2::V2`] only; a driver never
/// calls these.
pub trait Protocol: Sized + Send + 'static {
    /// The protocol's handshake steps (a closed enum of per-step data).
    type Handshake: Send;
    /// What the open session is in the middle of reading.
    type OpenRx: Send;
    /// Log target (`msgr::v1`, `msgr::v2`).
    const LOG: &'static str;
    /// The prefix of the `Display` form (`v1`, `v2`).
    const NAME: &'static str;

    /// The step's name, for logs.
    fn step_name(step: &Self::Handshake) -> &'static str;
    /// Whether the step reads the socket (false while the driver owes an answer).
    fn step_wants_read(step: &Self::Handshake) -> bool;
    /// Whether the step waits for [`Machine::handle_accept_decision`].
    fn step_awaits_decision(step: &Self::Handshake) -> bool;
    /// Whether a message's payload must progress against `Config::payload_timeout`
    /// once its budget is granted (v1, which reads payloads in windows; msgr2 takes a
    /// segment whole).
    const TIMED_PAYLOAD: bool;

    /// The dialled socket connected: queue the banner; the first handshake step.
    fn start_handshake(m: &mut Machine<Self>) -> Self::Handshake;
    /// One unit of handshake input; false when more input (or an answer) is needed.
    fn read_handshake(m: &mut Machine<Self>, now: Instant) -> bool;
    /// One unit of open-session input; false when more input (or budget) is needed.
    fn read_open(m: &mut Machine<Self>, now: Instant) -> bool;
    /// The driver's accept decision (the machine is in its AwaitAcceptDecision step).
    fn accept_decision(
        m: &mut Machine<Self>,
        now: Instant,
        decision: Decision,
        transferred: Option<Session>,
    );
    /// The driver's authorizer verdict.
    fn authorizer_verdict(m: &mut Machine<Self>, now: Instant, verdict: AuthVerdict);
    /// The driver granted `bytes` of budget (`first`: the message's first grant): let
    /// the decoder read on. An error faults the connection.
    fn grant(m: &mut Machine<Self>, bytes: u64, first: bool) -> Result<(), Fault>;
    /// The large payload segment being assembled and how many bytes may be read into it.
    fn direct_read_buffer(m: &mut Machine<Self>) -> Option<(&mut BytesMut, usize)>;
    /// Whether a message's header was read and it has not completed.
    fn message_in_progress(rx: &Self::OpenRx) -> bool;
    /// Bytes of memory held for the message being received.
    fn receive_held_bytes(rx: &Self::OpenRx) -> usize;

    /// While open: appends ACKs, pending keepalives and framed messages after the
    /// control bytes in `head` (small pieces into `head`, payload segments pushed onto
    /// `out` by reference, flushing `head` before them).
    fn transmit(m: &mut Machine<Self>, head: &mut BytesMut, out: &mut Vec<Bytes>);
    /// Queues a keepalive on the open session.
    fn queue_keepalive(m: &mut Machine<Self>, stamp: KeepaliveStamp);
    /// The user closes the connection: what goes out before the socket does (v1's
    /// CLOSE on an open session).
    fn queue_close(m: &mut Machine<Self>, was_open: bool);
    /// Forgets the protocol's per-TCP-connection state.
    fn reset_transport(m: &mut Machine<Self>);
    /// Whether a reconnect after a fault starts the session's next connect_seq.
    fn bumps_connect_seq(m: &Machine<Self>, was_open: bool) -> bool;
    /// Whether waking from standby starts the session's next connect_seq.
    fn wake_bumps_connect_seq(m: &Machine<Self>) -> bool;
    /// Extra words for the `Display` prefix after the state (msgr2's mode).
    fn describe(m: &Machine<Self>) -> Option<&'static str>;
}
