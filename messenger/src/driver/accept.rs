//! The accept decision and the replace hand-off (Ceph's `handle_connect_message_2` and
//! `replace`), on the driver's side.
//!
//! The decision is one check-and-set of the session table (`SessionTable::decide_accept`)
//! around the protocol's pure decision (`machine::decide`). A lossless replace then runs
//! as a hand-off: the accepting driver posts its socket and half-open machine to the
//! existing session's driver ([`Driver::take_over`]), which adopts them and moves its
//! session into the new machine; no two connections are ever locked together, and the
//! user's handle to the session stays valid.

use std::time::Instant;

use event_center::Context;
use protocol::RequestKind;

use super::Driver;
use crate::machine::{self, AcceptAction, AcceptRequest, Machine, Policy, Replacement, Verdict};
use crate::mailbox::{Command, Incoming};
use crate::session_table::Claim;
use crate::state::ConnState;

impl Driver {
    /// The accept decision: the machine parsed and pre-checked the peer's connect; the
    /// session table says whether a session exists.
    pub(super) fn decide_accept(&mut self, cx: &mut Context<'_>, req: AcceptRequest) {
        let now = cx.now();
        let policy = self.env.policies.policy(req.peer_type);
        let mut my_addrs = self.env.my_addrs();
        // A blank IP still ours (a `[::]` listener that took no IPv4 IP): the race
        // compares us as this peer knows us, the IP it reached us on (what we announce
        // to it, and what our own connects to it announce, as it saw them), not the
        // blank one (another family: both ends would let the incoming connection win).
        let blank = my_addrs.addrs.iter().any(|a| a.is_blank_ip() && a.addr.is_some());
        let local = blank.then(|| self.io.socket.as_ref().and_then(|s| s.local_addr().ok()));
        if let Some(local) = local.flatten() {
            let ip = protocol::types::unmapped(local).ip();
            for a in my_addrs.addrs.iter_mut().filter(|a| a.is_blank_ip() && a.addr.is_some()) {
                a.addr = Some(std::net::SocketAddr::new(ip, a.port()));
            }
        }
        // The peer's address and type are published already, for the dispatchers'
        // `ms_handle_authentication` just before (`authenticate_then_decide`).
        let (Some(id), true) = (self.id, self.io.socket.is_some()) else {
            // Not running or no socket: nothing to decide for (the machine faults).
            self.machine.handle_transport_closed(now);
            return;
        };
        let authenticated = self.machine.peer_auth().cloned();
        let opening = self.machine.snapshot_on_open(&req, &policy);
        let mut seen = None;
        let (verdict, existing, other_protocol) = self.env.sessions.decide_accept(
            &self.conn,
            req.peer_addr,
            authenticated.as_ref(),
            opening,
            |existing| {
                seen = existing.copied();
                let verdict = machine::decide(&req, existing, &policy, &my_addrs);
                let claim = match verdict.action {
                    AcceptAction::HandOver => Claim::BeginReplace,
                    AcceptAction::ResetExisting | AcceptAction::Proceed { register: true } => {
                        Claim::Register
                    }
                    AcceptAction::NudgeExisting
                    | AcceptAction::OpenUnregistered
                    | AcceptAction::Proceed { register: false } => Claim::Nothing,
                };
                (verdict, claim)
            },
        );
        log::debug!(target: "msgr::conn", "{}: accept decision {verdict:?}", self.machine);
        if let Some(other) = other_protocol {
            // Out of the table already: closed as Ceph's `existing->mark_down()`, silently.
            log::info!(target: "msgr::conn", "{}: existing {other:?} speaks the other protocol, marking it down", self.machine);
            other.mark_down();
        }
        match (verdict.action, existing, seen) {
            (AcceptAction::HandOver, Some(existing), Some(seen)) => {
                // Lossless replace: the existing session adopts this socket. From here
                // on nothing returns early with `replacing` set: either the existing
                // driver adopts the socket (and clears it), or it is already closed.
                let Some(socket) = self.io.socket.take() else {
                    // Not reached: the socket was there before the decision, and nothing
                    // since takes it. Were it gone, the mark must not outlive it.
                    self.env.sessions.abort_replace(&existing);
                    self.machine.handle_transport_closed(now);
                    return;
                };
                let _ = cx.deregister(id);
                let fresh = Machine::accept(
                    self.env.protocol_config(),
                    req.socket_peer,
                    req.socket_peer,
                    now,
                );
                let accepted = std::mem::replace(&mut self.machine, fresh);
                let replacement = Replacement::new(accepted, policy, verdict, &seen, req, my_addrs);
                let incoming = Incoming { socket, replacement };
                if !existing.post(Command::TakeOver(Box::new(incoming))) {
                    // Closed meanwhile: the socket is dropped and the peer connects again.
                    self.env.sessions.abort_replace(&existing);
                }
                // This driver's handle never opened; it vanishes without callbacks (but
                // the reset of a handle its dispatchers were shown), and its handshake
                // timer with it (left armed, it stayed in the worker's timer set until
                // its deadline: one more per reconnect of a looping peer).
                self.report_unopened_end();
                self.cleanup();
                self.cancel_timer(cx);
                cx.remove(id);
            }
            (AcceptAction::ResetExisting, Some(existing), _) => {
                // Lossy existing session: it is reset, this one becomes the session. A
                // v1 connect tells our dispatchers of a remote reset first (Ceph's
                // ProtocolV1 calls the existing session's `session_reset` before its
                // `replace`); msgr2's only of the reset.
                let v1 = matches!(req.kind, RequestKind::Connect { .. });
                self.published = Some(opening);
                self.machine.forget_snapshot();
                self.env.reset_session(&existing, v1);
                self.policy = Some(policy);
                self.answer_registered(now, policy, verdict);
            }
            (AcceptAction::NudgeExisting, Some(existing), _) => {
                existing.send_keepalive();
                self.machine.handle_verdict(now, policy, verdict);
            }
            (AcceptAction::Proceed { register: true }, _, _) => {
                self.published = Some(opening);
                self.machine.forget_snapshot();
                self.policy = Some(policy);
                self.answer_registered(now, policy, verdict);
            }
            (AcceptAction::OpenUnregistered, _, _) => {
                self.policy = Some(policy);
                self.machine.handle_verdict(now, policy, verdict);
            }
            _ => self.machine.handle_verdict(now, policy, verdict),
        }
    }

    /// Gives the machine the decision that registered this connection as the peer's
    /// session (it frames the reply), unless an injected internal delay holds it.
    fn answer_registered(&mut self, now: Instant, policy: Policy, verdict: Verdict) {
        if let Some((policy, verdict)) = self.seams.hold_verdict(now, policy, verdict) {
            self.machine.handle_verdict(now, policy, verdict);
        }
    }

    /// Gives the machine the decision an injected internal delay `held` (see
    /// [`Self::answer_registered`]).
    pub(super) fn answer_held(&mut self, now: Instant, held: Option<(Policy, Verdict)>) {
        // A handshake that timed out meanwhile has nothing left to answer.
        if let (Some((policy, verdict)), false) = (held, self.machine.is_closed()) {
            self.machine.handle_verdict(now, policy, verdict);
        }
    }

    /// Adopts a newly accepted socket for this session (Ceph's replace): the session's
    /// sequence numbers and queues move into the new socket's state machine.
    pub(super) fn take_over(&mut self, cx: &mut Context<'_>, incoming: Box<Incoming>) {
        let Incoming { socket, replacement } = *incoming;
        let now = cx.now();
        let policy = replacement.policy();
        // A decision held since it registered this connection came first: its session
        // opens, as it would have without the delay, before it moves on.
        let held = self.seams.take_verdict();
        self.answer_held(now, held);
        let current = self.machine.snapshot(self.policy.as_ref()).marked(self.conn.is_disposable());
        let open = self.machine.is_open();
        if !replacement.still_holds(current, open) {
            // The session moved on from the numbers the decision read (a pump that
            // loaded the mark before the decision set it read on, see
            // `Replacement::still_holds`): the decision is void. The socket is dropped
            // unanswered, as when the hand-off finds the session closed, and the
            // session resumes (woken: its pump reads again); the peer's next connect is
            // decided afresh against what the session is now. Checked before the events
            // are handled as a hand-off's: what the machine raised stays for the pump,
            // a fault's redial among them (dropped as the replaced socket's, the session
            // that moved on by that fault dialled nobody until its handshake deadline).
            log::info!(target: "msgr::conn", "{}: session moved on since the replace was decided ({:?}, now {current:?}, open {open}), dropping the incoming socket", self.machine, replacement.decided_against());
            // The numbers it moved to are published while the mark still stands, then
            // `abort_replace` clears it under the table's lock: a connect decided in
            // between waits, and none reads the old numbers without the mark (it was
            // voided in turn, one more reconnect of the peer). Cleared here instead, a
            // decision between the two could set the mark again, for `abort_replace` to
            // clear under its hand-off. (Any held decision was answered above, so
            // nothing keeps the publication back.)
            self.publish_snapshot(false);
            self.env.sessions.abort_replace(&self.conn);
            return;
        }
        self.handle_events_before_take_over(cx);
        if self.finished {
            // The session ended meanwhile: as if the hand-off had found it closed, the
            // socket is dropped and the peer connects again (to no session).
            self.env.sessions.abort_replace(&self.conn);
            return;
        }
        self.machine = replacement.adopt(&mut self.machine, now);
        self.policy = Some(policy);
        self.server_side = true;
        // Resuming, no longer waiting in standby: not to be evicted as one while the
        // handshake on the new socket finishes (its peer would find the session gone).
        // Before the snapshot below ends the replace: the standby bound reads the mark,
        // then the state. (An open session stays Open, as before.)
        if self.conn.state() == ConnState::Standby {
            self.conn.set_state(ConnState::Connecting);
        }
        self.recv = Default::default();
        // The session's new numbers and the end of the replace become visible together:
        // a connect racing this one must see either `replacing` or the new connect_seq,
        // never the old numbers without the mark (it would replace the session again).
        self.publish_snapshot(true);
        if let Err(e) = self.adopt_socket(cx, socket) {
            log::info!(target: "msgr::conn", "{}: adopting replaced socket failed: {e}", self.machine);
            self.machine.handle_transport_closed(now);
        }
        // A peer reset ends the old incarnation here, before anything else reaches the
        // session: messages held back for it or sent for it meanwhile (the caller may
        // deliver due held messages or drain the mailbox next) must not enter the new one.
        self.handle_events(cx);
    }

    /// Writes what another connection's accept decision needs to the handle (and ends a
    /// replace when `replace_done`).
    #[inline]
    pub(super) fn publish_snapshot(&mut self, replace_done: bool) {
        // Not built again while the open session only carried traffic since it was last
        // (see `Machine::snapshot_unmoved`): every pump looks twice.
        if !replace_done && self.machine.snapshot_unmoved() {
            return;
        }
        self.publish_moved_snapshot(replace_done);
    }

    /// [`Self::publish_snapshot`] when the numbers may have moved.
    #[inline(never)]
    fn publish_moved_snapshot(&mut self, replace_done: bool) {
        if self.seams.holds_verdict() {
            // The machine has not got the decision that registered it: until it has,
            // the numbers published with the registration stand for its session.
            return;
        }
        let now = self.machine.snapshot_noted(self.policy.as_ref());
        // These change only on (re)connects: skip the lock on every other pump.
        if self.published != Some(now) || replace_done {
            self.published = Some(now);
            let mut p = self.conn.0.published.lock();
            p.session = now;
            if replace_done {
                self.conn.set_replacing(&mut p, false);
            }
        }
    }
}
