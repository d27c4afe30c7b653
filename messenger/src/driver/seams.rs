//! The driver's side of the fault-injection seams (feature `fault-injection`): what it
//! holds back on purpose — an accept decision, the reply of a session the decision
//! registered, or a replace hand-off for `ms_inject_internal_delays`, received messages
//! for `ms_inject_delay_*` — and the cuts asked for with
//! `Connection::inject_socket_failure`.
//!
//! Held work waits for the driver's one timer (its deadline joins the machine's), never
//! in a sleep on the event loop thread. Without the feature, [`Seams`] is an empty type
//! whose every question is answered "no" at compile time, so a release build pays for
//! none of it (checked by the size assertion below).

use std::time::Instant;

use dispatch::Permit;
use protocol::types::EntityType;
use protocol::Message;

use crate::machine::{AcceptRequest, Policy, Verdict};
use crate::mailbox::Incoming;

pub(super) use imp::Seams;

/// A received message and the dispatch-throttle permit it carries to its dispatcher.
pub(super) type Received = (Message, Option<Permit>);

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Arc;

    use super::*;
    use crate::config::MessengerConfig;
    use crate::counters::WorkerCounters;
    use crate::inject::{DelayQueue, Injector};

    /// The injection state of one driver.
    pub(in crate::driver) struct Seams {
        injector: Injector,
        /// `inject_socket_failure` calls not applied yet: one is applied per open
        /// session, so N calls make N reconnects.
        cuts_pending: u32,
        /// The current socket was already cut by an injected failure.
        socket_cut: bool,
        /// A write was refused as congested: the socket is in fact writable and will
        /// raise no edge, so the driver comes back by itself.
        write_retry: bool,
        /// An accept decision held back by an internal delay, and when it runs.
        accept: Option<(Instant, AcceptRequest)>,
        /// The decision of a connection it registered as the peer's session, held back
        /// from the machine (whose reply it is) by an internal delay, and when it runs.
        verdict: Option<(Instant, Policy, Verdict)>,
        /// A replace hand-off held back by an internal delay, and when it runs.
        take_over: Option<(Instant, Box<Incoming>)>,
        /// Whether this peer's messages go through `delayed` (decided once its type is
        /// known).
        delays_peer: Option<bool>,
        delayed: DelayQueue<Received>,
        /// `Connection::inject_before_settle`: run at the pump's settle, then dropped.
        before_settle: Vec<Box<dyn FnOnce() + Send>>,
        /// `Connection::inject_before_write`: run before the next write, then dropped.
        before_write: Vec<Box<dyn FnOnce() + Send>>,
        /// `Connection::inject_before_read`: run before the next read, then dropped.
        before_read: Vec<Box<dyn FnOnce() + Send>>,
        /// `Connection::inject_in_send_count`: run halfway through the next change of
        /// the driver's send count, then dropped.
        in_send_count: Vec<Box<dyn FnOnce() + Send>>,
    }

    impl Seams {
        pub(in crate::driver) fn new(
            config: &MessengerConfig,
            nonce: u32,
            conn_id: u64,
            counters: Arc<WorkerCounters>,
        ) -> Seams {
            Seams {
                injector: Injector::new(config, nonce, conn_id, counters),
                cuts_pending: 0,
                socket_cut: false,
                write_retry: false,
                accept: None,
                verdict: None,
                take_over: None,
                delays_peer: None,
                delayed: DelayQueue::default(),
                before_settle: Vec::new(),
                before_write: Vec::new(),
                before_read: Vec::new(),
                in_send_count: Vec::new(),
            }
        }

        /// `ms_inject_socket_failures`: the socket operation about to run fails.
        pub(in crate::driver) fn fail_socket(&mut self) -> bool {
            self.injector.fail_socket()
        }

        /// `ms_inject_network_congestion`: the write about to run is refused.
        pub(in crate::driver) fn congest_write(&mut self) -> bool {
            let congested = self.injector.congest_write();
            self.write_retry |= congested;
            congested
        }

        /// Whether a write was refused since the last call (the caller retries later).
        pub(in crate::driver) fn take_write_retry(&mut self) -> bool {
            std::mem::take(&mut self.write_retry)
        }

        /// One more `Connection::inject_socket_failure`.
        pub(in crate::driver) fn add_cut(&mut self) {
            self.cuts_pending = self.cuts_pending.saturating_add(1);
        }

        /// Whether a requested cut waits for a socket not cut yet.
        pub(in crate::driver) fn cut_wanted(&self) -> bool {
            self.cuts_pending > 0 && !self.socket_cut
        }

        /// One more `Connection::inject_before_settle`.
        pub(in crate::driver) fn add_before_settle(&mut self, f: Box<dyn FnOnce() + Send>) {
            self.before_settle.push(f);
        }

        /// Runs what `Connection::inject_before_settle` asked for, once.
        pub(in crate::driver) fn run_before_settle(&mut self) {
            for f in std::mem::take(&mut self.before_settle) {
                f();
            }
        }

        /// One more `Connection::inject_before_read`.
        pub(in crate::driver) fn add_before_read(&mut self, f: Box<dyn FnOnce() + Send>) {
            self.before_read.push(f);
        }

        /// Runs what `Connection::inject_before_read` asked for, once.
        pub(in crate::driver) fn run_before_read(&mut self) {
            for f in std::mem::take(&mut self.before_read) {
                f();
            }
        }

        /// One more `Connection::inject_before_write`.
        pub(in crate::driver) fn add_before_write(&mut self, f: Box<dyn FnOnce() + Send>) {
            self.before_write.push(f);
        }

        /// Runs what `Connection::inject_before_write` asked for, once.
        pub(in crate::driver) fn run_before_write(&mut self) {
            for f in std::mem::take(&mut self.before_write) {
                f();
            }
        }

        /// One more `Connection::inject_in_send_count`.
        pub(in crate::driver) fn add_in_send_count(&mut self, f: Box<dyn FnOnce() + Send>) {
            self.in_send_count.push(f);
        }

        /// Runs what `Connection::inject_in_send_count` asked for, once.
        pub(in crate::driver) fn run_in_send_count(&mut self) {
            for f in std::mem::take(&mut self.in_send_count) {
                f();
            }
        }

        /// A requested cut was applied to the current socket.
        pub(in crate::driver) fn cut_applied(&mut self) {
            self.cuts_pending -= 1;
            self.socket_cut = true;
        }

        /// A new socket: it has not been cut.
        pub(in crate::driver) fn new_socket(&mut self) {
            self.socket_cut = false;
        }

        /// `ms_inject_internal_delays` at the accept decision: `req` back to decide now,
        /// or `None` if it was held until the delay is over.
        pub(in crate::driver) fn hold_accept(
            &mut self,
            now: Instant,
            req: AcceptRequest,
        ) -> Option<AcceptRequest> {
            match self.injector.internal_delay() {
                Some(delay) => {
                    self.accept = Some((now + delay, req));
                    None
                }
                None => Some(req),
            }
        }

        /// The held accept decision, once its delay is over.
        pub(in crate::driver) fn due_accept(&mut self, now: Instant) -> Option<AcceptRequest> {
            match &self.accept {
                Some((at, _)) if *at <= now => self.accept.take().map(|(_, req)| req),
                _ => None,
            }
        }

        /// `ms_inject_internal_delays` after a decision registered this connection as the
        /// peer's session, before the machine gets it and frames its reply (Ceph's
        /// `inject_delay` after `accept_conn`, in `send_server_ident` and v1's `open`):
        /// the decision back to apply now, or `None` if it was held until the delay is
        /// over.
        pub(in crate::driver) fn hold_verdict(
            &mut self,
            now: Instant,
            policy: Policy,
            verdict: Verdict,
        ) -> Option<(Policy, Verdict)> {
            match self.injector.internal_delay() {
                Some(delay) => {
                    self.verdict = Some((now + delay, policy, verdict));
                    None
                }
                None => Some((policy, verdict)),
            }
        }

        /// The held decision, once its delay is over.
        pub(in crate::driver) fn due_verdict(&mut self, now: Instant) -> Option<(Policy, Verdict)> {
            match &self.verdict {
                Some((at, ..)) if *at <= now => self.take_verdict(),
                _ => None,
            }
        }

        /// The held decision, due or not.
        pub(in crate::driver) fn take_verdict(&mut self) -> Option<(Policy, Verdict)> {
            self.verdict.take().map(|(_, policy, verdict)| (policy, verdict))
        }

        /// Whether a decision is held (see [`Self::hold_verdict`]).
        pub(in crate::driver) fn holds_verdict(&self) -> bool {
            self.verdict.is_some()
        }

        /// `ms_inject_internal_delays` at the replace hand-off: `incoming` back to adopt
        /// now, or `None` if it was held until the delay is over.
        pub(in crate::driver) fn hold_take_over(
            &mut self,
            now: Instant,
            incoming: Box<Incoming>,
        ) -> Option<Box<Incoming>> {
            let Some(delay) = self.injector.internal_delay() else {
                return Some(incoming);
            };
            // The session is marked `replacing` meanwhile, so no second hand-off comes;
            // if one did, the older socket would be dropped and its peer reconnect.
            self.take_over = Some((now + delay, incoming));
            None
        }

        /// The held hand-off, once its delay is over.
        pub(in crate::driver) fn due_take_over(&mut self, now: Instant) -> Option<Box<Incoming>> {
            match &self.take_over {
                Some((at, _)) if *at <= now => self.take_over.take().map(|(_, i)| i),
                _ => None,
            }
        }

        /// `ms_inject_delay_*`: when a message received now is to be delivered, or
        /// `None` to deliver it now. A held message goes to [`Self::push_held`], behind
        /// whatever is held already, so the connection's order holds.
        pub(in crate::driver) fn hold_until(
            &mut self,
            now: Instant,
            peer_type: impl FnOnce() -> Option<EntityType>,
        ) -> Option<Instant> {
            let injector = &self.injector;
            let delays = *self
                .delays_peer
                .get_or_insert_with(|| peer_type().is_some_and(|t| injector.delays_peer(t)));
            if !delays {
                return None;
            }
            let delay = self.injector.message_delay();
            if delay.is_zero() && self.delayed.is_empty() {
                return None;
            }
            Some(now + delay)
        }

        /// Holds `msg` until `at` (from [`Self::hold_until`]).
        pub(in crate::driver) fn push_held(&mut self, at: Instant, msg: Received) {
            self.delayed.push(at, msg);
        }

        /// Drops the held messages (their session was reset by the peer: they belong to
        /// the incarnation that is gone, as Ceph's `was_session_reset` discards them).
        pub(in crate::driver) fn discard_messages(&mut self) {
            self.delayed.clear();
        }

        /// The next delayed message whose time has come.
        pub(in crate::driver) fn due_message(&mut self, now: Instant) -> Option<Received> {
            self.delayed.pop_due(now)
        }

        /// The next delayed message, due or not (delivered before a session event, so
        /// callbacks keep their order with messages, as Ceph's `DelayedDelivery::flush`).
        pub(in crate::driver) fn flush_message(&mut self) -> Option<Received> {
            self.delayed.pop_front()
        }

        /// The earliest time held work is due.
        pub(in crate::driver) fn next_deadline(&self) -> Option<Instant> {
            [
                self.accept.as_ref().map(|a| a.0),
                self.verdict.as_ref().map(|v| v.0),
                self.take_over.as_ref().map(|t| t.0),
            ]
            .into_iter()
            .chain(std::iter::once(self.delayed.next_release()))
            .flatten()
            .min()
        }

        /// Drops everything held (the driver closes): a held hand-off's socket closes
        /// and its peer reconnects; held messages go with the session (Ceph's
        /// `DelayedDelivery::discard`).
        pub(in crate::driver) fn discard(&mut self) {
            self.accept = None;
            self.verdict = None;
            self.take_over = None;
            self.delayed.clear();
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    use std::sync::Arc;

    use super::*;
    use crate::config::MessengerConfig;
    use crate::counters::WorkerCounters;

    /// No injection: every question is answered "no" and inlined away.
    pub(in crate::driver) struct Seams;

    // A release build carries no injection state at all.
    const _: () = assert!(std::mem::size_of::<Seams>() == 0);

    impl Seams {
        #[inline(always)]
        pub(in crate::driver) fn new(
            _config: &MessengerConfig,
            _nonce: u32,
            _conn_id: u64,
            _counters: Arc<WorkerCounters>,
        ) -> Seams {
            Seams
        }
        #[inline(always)]
        pub(in crate::driver) fn fail_socket(&mut self) -> bool {
            false
        }
        #[inline(always)]
        pub(in crate::driver) fn congest_write(&mut self) -> bool {
            false
        }
        #[inline(always)]
        pub(in crate::driver) fn take_write_retry(&mut self) -> bool {
            false
        }
        #[inline(always)]
        pub(in crate::driver) fn cut_wanted(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(in crate::driver) fn run_before_settle(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn run_before_write(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn run_before_read(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn run_in_send_count(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn cut_applied(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn new_socket(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn hold_accept(
            &mut self,
            _now: Instant,
            req: AcceptRequest,
        ) -> Option<AcceptRequest> {
            Some(req)
        }
        #[inline(always)]
        pub(in crate::driver) fn due_accept(&mut self, _now: Instant) -> Option<AcceptRequest> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn hold_verdict(
            &mut self,
            _now: Instant,
            policy: Policy,
            verdict: Verdict,
        ) -> Option<(Policy, Verdict)> {
            Some((policy, verdict))
        }
        #[inline(always)]
        pub(in crate::driver) fn due_verdict(
            &mut self,
            _now: Instant,
        ) -> Option<(Policy, Verdict)> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn take_verdict(&mut self) -> Option<(Policy, Verdict)> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn holds_verdict(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(in crate::driver) fn hold_take_over(
            &mut self,
            _now: Instant,
            incoming: Box<Incoming>,
        ) -> Option<Box<Incoming>> {
            Some(incoming)
        }
        #[inline(always)]
        pub(in crate::driver) fn due_take_over(&mut self, _now: Instant) -> Option<Box<Incoming>> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn hold_until(
            &mut self,
            _now: Instant,
            _peer_type: impl FnOnce() -> Option<EntityType>,
        ) -> Option<Instant> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn push_held(&mut self, _at: Instant, msg: Received) {
            // Never called: nothing is held without the feature.
            drop(msg);
        }
        #[inline(always)]
        pub(in crate::driver) fn due_message(&mut self, _now: Instant) -> Option<Received> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn flush_message(&mut self) -> Option<Received> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn next_deadline(&self) -> Option<Instant> {
            None
        }
        #[inline(always)]
        pub(in crate::driver) fn discard_messages(&mut self) {}
        #[inline(always)]
        pub(in crate::driver) fn discard(&mut self) {}
    }
}
