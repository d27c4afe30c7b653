//! The shell around the fault policy, for both protocols: what a fault does to the
//! machine ([`fault_action`] decides, this file carries it out), reconnecting, waking
//! from standby, opening, refusing and finishing, and the log of peer misbehaviour.

use std::fmt;
use std::time::{Duration, Instant};

use crate::auth::SessionHandler;
use crate::types::{EntityAddr, EntityType};

use super::clock::later;
use super::event::{CloseReason, Event, Initiator, Opened};
use super::fault::{fault_action, Fault, FaultAction, FaultContext, Side};
use super::issues::{log_limited, PeerIssue, WARN_LINES_PER_SECOND};
use super::machine::{Machine, Protocol};
use super::open::Open;
use super::outputs::Written;
use super::state::State;

/// How a session opened, as the protocol saw it.
pub(crate) struct OpenNote {
    /// The address reported in [`Opened::peer_addr`].
    pub(crate) peer_addr: EntityAddr,
    /// The open continued an existing session.
    pub(crate) resumed: bool,
    /// The peer restarted.
    pub(crate) remote_reset: bool,
}

impl<P: Protocol> Machine<P> {
    /// The session is open: `rx` is the protocol's receive state, `signer` the message
    /// signing its authentication agreed (if any).
    pub(crate) fn open(
        &mut self,
        now: Instant,
        rx: P::OpenRx,
        signer: Option<Box<dyn SessionHandler>>,
        note: OpenNote,
    ) {
        self.set_state(State::Open(Open::new(rx, now, &self.config, signer)));
        self.backoff = Duration::ZERO;
        self.opened_at = Some(now);
        self.attempt = 0;
        self.once_ready = true;
        self.announced = true;
        self.last_rx = now;
        log::info!(target: P::LOG, "{self}: open, features {:#x}, lossy {}", self.session.features.bits(), self.lossy);
        self.events.push_back(Event::Opened(Box::new(Opened {
            peer_addr: note.peer_addr,
            peer_type: self.peer_type.unwrap_or(EntityType::ANY),
            features: self.session.features,
            connect_seq: self.session.connect_seq,
            lossy: self.lossy,
            resumed: note.resumed,
            remote_reset: note.remote_reset,
        })));
    }

    /// The current TCP connection failed (Ceph's `fault`): the fault policy decides
    /// between resetting the session, closing, standby and reconnecting.
    pub(crate) fn fault(&mut self, now: Instant, fault: Fault) {
        if self.state.is_closed() {
            return;
        }
        let was_open = self.state.is_open();
        // How much of the initial backoff since the session opened is left (none for one
        // open longer, or a connect attempt that failed): see `opened_at`.
        let young_wait = match self.opened_at {
            Some(at) if was_open => {
                let initial = self.config.initial_backoff.min(self.config.max_backoff);
                initial.saturating_sub(now.saturating_duration_since(at))
            }
            _ => Duration::ZERO,
        };
        let young = !young_wait.is_zero();
        log::info!(target: P::LOG, "{self}: fault: {fault}");
        if !self.lossy {
            self.session.requeue_sent();
        }
        let ctx = FaultContext {
            lossy: self.lossy,
            server: self.policy.server,
            server_always_parks: P::SERVER_ALWAYS_PARKS,
            standby: self.policy.standby,
            side: self.side,
            was_open,
            once_ready: self.once_ready,
            announced: self.announced,
            has_pending: !self.session.queue.is_empty() || self.keepalive.pending.is_some(),
            wait: fault == Fault::Wait,
            lossy_handshake_ends: self.side == Side::Connect
                && matches!(self.state, State::Handshake { .. })
                && P::lossy_handshake_ends(self, &fault),
            prev_backoff: self.backoff,
            initial_backoff: self.config.initial_backoff,
            max_backoff: self.config.max_backoff,
        };
        let mut action = fault_action(&ctx);
        // Ceph redials a session it lost at once; here no sooner than the initial backoff
        // after it opened. That bounds the redials of a peer that opens every session and
        // cuts it, and costs a network that cuts often little: no growing backoff, and
        // only what is left of the initial one.
        if let FaultAction::Reconnect { after } = &mut action {
            if young && after.is_zero() {
                *after = young_wait;
            }
        }
        // A reconnect past connecting starts the session's next connect_seq (Ceph's).
        let past_connecting = ctx.past_connecting();
        // A peer without a dialable address (a pure client) cannot be dialled back.
        if matches!(action, FaultAction::Reconnect { .. }) && !self.peer_dialable() {
            action = FaultAction::Standby;
        }
        self.reset_transport();
        self.drop_stale_requests();
        let by = if fault == Fault::TransportClosed { Initiator::Peer } else { Initiator::Library };
        log::debug!(target: P::LOG, "{self}: fault action {action:?}");
        match action {
            FaultAction::Reset => {
                self.session.reset();
                self.events.push_back(Event::Reset);
                self.finish(by, CloseReason::Fault(fault));
            }
            FaultAction::Close => self.finish(by, CloseReason::Fault(fault)),
            FaultAction::Standby => {
                self.set_state(State::Standby);
                self.events.push_back(Event::Standby);
                self.unreported_fault = Some(Box::new((ctx, fault)));
            }
            FaultAction::Reconnect { after } => {
                if P::bumps_connect_seq(self, past_connecting) {
                    self.session.connect_seq = self.session.connect_seq.next();
                }
                // (A young session's wait is not a step of the doubling backoff: a connect
                // attempt failing after it waits the initial one.)
                self.backoff = if young { Duration::ZERO } else { after };
                if after.is_zero() {
                    self.start_reconnect(now);
                    self.unreported_fault = Some(Box::new((ctx, fault)));
                } else {
                    // Nothing to take back after a failed connect attempt, which parsed
                    // no message a dispatcher could have marked the session lossy on; a
                    // session cut young did, and this backoff is its fault's outcome
                    // until the redial (`redecide_unreported_fault`).
                    if was_open {
                        self.unreported_fault = Some(Box::new((ctx, fault)));
                    }
                    self.set_state(State::AwaitBackoff { until: later(now, after) });
                }
            }
        }
    }

    /// [`Machine::mark_lossy`] on a machine whose last fault's outcome was not taken yet:
    /// the fault is decided again as a lossy session's, and if that ends the session
    /// (a reset, or a close for one that never opened) the standby or reconnect it had
    /// decided is withdrawn. The session was requeued and, for a reconnect, its
    /// connect_seq moved on: both go with it. Nothing was dialled yet (the driver dials on
    /// the Reconnect it has not taken).
    pub(crate) fn redecide_unreported_fault(&mut self) {
        let Some(taken) = self.unreported_fault.take() else { return };
        let (ctx, fault) = *taken;
        let pending = |e: &Event| matches!(e, Event::Standby | Event::Reconnect { .. });
        // (A backoff still running is a reconnect not started yet.)
        let backing_off = matches!(self.state, State::AwaitBackoff { .. });
        if self.state.is_closed() || !(backing_off || self.events.iter().any(pending)) {
            return;
        }
        let action = fault_action(&FaultContext { lossy: true, ..ctx });
        let by = if fault == Fault::TransportClosed { Initiator::Peer } else { Initiator::Library };
        log::info!(target: P::LOG, "{self}: marked lossy before its fault was taken ({fault}): {action:?} instead");
        match action {
            FaultAction::Reset => {
                self.events.retain(|e| !pending(e));
                self.session.reset();
                self.events.push_back(Event::Reset);
                self.finish(by, CloseReason::Fault(fault));
            }
            FaultAction::Close => {
                self.events.retain(|e| !pending(e));
                self.finish(by, CloseReason::Fault(fault));
            }
            // A lossy connector that never opened retries as a lossless one does.
            FaultAction::Standby | FaultAction::Reconnect { .. } => {}
        }
    }

    /// Whether the peer can be dialled (a peer that announced port 0, a pure client,
    /// cannot).
    fn peer_dialable(&self) -> bool {
        self.peer_addr.is_some_and(|a| a.port() != 0)
    }

    /// Asks the driver to dial again.
    pub(crate) fn start_reconnect(&mut self, now: Instant) {
        self.attempt = self.attempt.saturating_add(1);
        self.side = Side::Connect;
        self.set_state(State::AwaitTransport { deadline: self.handshake_deadline(now) });
        self.events.push_back(Event::Reconnect { attempt: self.attempt });
    }

    /// Something to send woke a parked connect-side session.
    pub(crate) fn wake_from_standby(&mut self) {
        if matches!(self.state, State::Standby) && !self.policy.server && self.peer_dialable() {
            log::debug!(target: P::LOG, "{self}: waking from standby");
            if P::wake_bumps_connect_seq(self) {
                self.session.connect_seq = self.session.connect_seq.next();
            }
            self.start_reconnect(self.now);
        }
    }

    /// The peer refused us for good (or we refuse it): no retry would change anything.
    pub(crate) fn refuse(&mut self, why: &'static str) {
        self.reset_transport();
        self.events.push_back(Event::Refused);
        self.finish(Initiator::Peer, CloseReason::Refused(why));
    }

    /// Ends the session at once, whatever its policy, with everything it queued, and
    /// reports it reset (Ceph's `stop()` then `queue_reset`, as ProtocolV2's
    /// `handle_hello` does when the peer is not the entity type dialled): no retry would
    /// reach another peer, and the user must hear of it to look elsewhere.
    pub(crate) fn stop_and_reset(&mut self, why: &'static str) {
        self.reset_transport();
        self.session.reset();
        self.keepalive.pending = None;
        self.events.push_back(Event::Reset);
        self.finish(Initiator::Library, CloseReason::Fault(Fault::Misbehaved(why)));
    }

    /// Forgets everything tied to the current TCP connection.
    pub(crate) fn reset_transport(&mut self) {
        self.rx.clear();
        self.ctrl.clear();
        // An ack answers a keepalive of this TCP connection only; who authenticated
        // did so on it.
        self.keepalive.ack_owed = None;
        self.peer_auth = None;
        self.write_blocked_since = None;
        self.written = Written::Nothing;
        self.deferred_fault = None;
        P::reset_transport(self);
    }

    /// Requests to the driver about the connection that just failed are moot: a driver
    /// that answered a stale AcceptRequest could hand a session to a dead machine.
    fn drop_stale_requests(&mut self) {
        self.events.retain(|e| !e.is_request());
    }

    /// The machine is finished: [`super::Event::Closed`] is its last event.
    pub(crate) fn finish(&mut self, by: Initiator, reason: CloseReason) {
        self.drop_stale_requests();
        log::debug!(target: P::LOG, "{self}: closed by {by:?}: {reason}");
        self.set_state(State::Closed);
        self.rx.clear();
        self.events.push_back(Event::Closed { by, reason: Box::new(reason) });
    }

    /// Reports peer misbehaviour: WARN the first time `issue` happens on this
    /// connection, DEBUG afterwards; always counted.
    pub(crate) fn peer_issue(&mut self, issue: PeerIssue, what: fmt::Arguments<'_>) {
        let line = self.issues.note(issue, &self.config.warn_limit, self.now);
        log_limited(
            line,
            log::Level::Warn,
            P::LOG,
            format_args!("{self}: {what}"),
            format_args!(
                "more peer issues were not logged: at most {WARN_LINES_PER_SECOND} lines a second"
            ),
            format_args!("{self}: {what} (not logged at WARN: repeated or over the limit)"),
        );
    }
}
