//! The state skeleton both protocols share, and its public coarse view.
//!
//! A machine is dialling, in its protocol's handshake, open, backing off, parked in
//! standby, or closed. Only the handshake steps and what the open session is in the
//! middle of receiving differ by protocol: they are the `H` and `O` of [`State`]
//! (each protocol's own closed enum of per-step structs). Data a state needs lives in
//! it and goes with it: the handshake deadline, the open session's decoder, timers and
//! budget.

use std::time::Instant;

use super::open::Open;

/// Where a machine is. Wait states share the `Await` prefix.
pub(crate) enum State<H, O> {
    /// Connect side: the driver is dialling; the handshake deadline already runs.
    AwaitTransport {
        /// When the attempt (dial and handshake) times out.
        deadline: Instant,
    },
    /// In the protocol's handshake.
    Handshake {
        /// When the handshake times out (`Config::handshake_timeout`).
        deadline: Instant,
        /// The protocol's handshake step.
        step: H,
    },
    /// The session is open.
    Open(Open<O>),
    /// Lossless fault: waiting out the backoff before dialling again.
    AwaitBackoff {
        /// When to dial again.
        until: Instant,
    },
    /// Lossless session parked without a socket.
    Standby,
    /// Finished; nothing more happens.
    Closed,
    /// A handshake step taken out to be consumed ([`super::Machine::take_step`]); only
    /// seen inside one call, which moves on to the next state before it returns.
    Transition,
}

impl<H, O> State<H, O> {
    pub(crate) fn is_open(&self) -> bool {
        matches!(self, State::Open(_))
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self, State::Closed)
    }

    /// The handshake step, if in the handshake.
    pub(crate) fn step(&self) -> Option<&H> {
        match self {
            State::Handshake { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The handshake step, if in the handshake.
    pub(crate) fn step_mut(&mut self) -> Option<&mut H> {
        match self {
            State::Handshake { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The open session, if open.
    pub(crate) fn open(&self) -> Option<&Open<O>> {
        match self {
            State::Open(o) => Some(o),
            _ => None,
        }
    }

    /// The open session, if open.
    pub(crate) fn open_mut(&mut self) -> Option<&mut Open<O>> {
        match self {
            State::Open(o) => Some(o),
            _ => None,
        }
    }
}

/// A coarse public view of a machine's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Dialling, in the handshake, or backing off before the next attempt.
    Connecting,
    /// Accept side, in the handshake.
    Accepting,
    /// The session is open.
    Open,
    /// Lossless session without a socket, waiting.
    Standby,
    /// Finished.
    Closed,
}
