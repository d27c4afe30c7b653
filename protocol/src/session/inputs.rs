//! [`Machine`]'s inputs (`handle_*`): what the driver feeds it (bytes, transport
//! changes, time, answers), and the bounded input loop that hands bytes to the
//! protocol.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::event::AuthVerdict;
use super::fault::{Fault, Side};
use super::machine::{Machine, Protocol};
use super::policy::Policy;
use super::race::Decision;
use super::state::State;
use super::Session;

/// Input steps one call may take. Each step consumes input or changes state, or
/// returns false; the bound only guards against a bug turning into a hang.
const INPUT_STEPS_BOUND: usize = 1_000_000;

impl<P: Protocol> Machine<P> {
    /// The dialled socket is connected (first attempt or after [`super::Event::Reconnect`]):
    /// the handshake starts.
    #[doc(alias = "reconnect_transport")]
    #[doc(alias = "start_client_banner_exchange")]
    pub fn handle_transport_connected(&mut self, now: Instant) {
        self.now = now;
        if !matches!(self.state, State::AwaitTransport { .. }) {
            log::warn!(target: P::LOG, "{self}: transport connected in state {}", self.state_name());
            return;
        }
        self.side = Side::Connect;
        self.reset_transport();
        self.global_seq = self.config.global_seq.next();
        self.last_rx = now;
        let step = P::start_handshake(self);
        self.set_state(State::Handshake { deadline: self.handshake_deadline(now), step });
    }

    /// Bytes from the socket, in any chunking. Call only while [`Machine::wants_read`];
    /// payloads are sliced out of `data` without copying.
    pub fn handle_bytes(&mut self, now: Instant, data: Bytes) {
        self.now = now;
        if self.state.is_closed() || data.is_empty() {
            return;
        }
        log::trace!(target: P::LOG, "{self}: {} bytes in", data.len());
        self.last_rx = now;
        if P::PROGRESS_ON_ARRIVAL {
            self.note_payload_progress(now, data.len() as u64);
        }
        self.rx.push(data, super::rx::copy_below(self.config.read_size));
        self.process(now);
    }

    /// While a large message segment arrives in pieces, the buffer it is assembled in
    /// and how many more bytes it needs: the driver may read at most that many bytes
    /// into its spare capacity, then call [`Machine::handle_direct_read`]. `None`
    /// whenever bytes must go through [`Machine::handle_bytes`].
    pub fn direct_read_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        if !self.state.is_open() || self.rx.len() > 0 {
            return None;
        }
        P::direct_read_buffer(self)
    }

    /// `n` bytes were read into [`Machine::direct_read_buffer`].
    pub fn handle_direct_read(&mut self, now: Instant, n: usize) {
        self.now = now;
        if self.state.is_closed() || n == 0 {
            return;
        }
        log::trace!(target: P::LOG, "{self}: {n} bytes in (direct)");
        self.last_rx = now;
        self.note_payload_progress(now, n as u64);
        self.process(now);
    }

    /// The socket reached EOF or failed.
    pub fn handle_transport_closed(&mut self, now: Instant) {
        self.now = now;
        match self.state {
            State::Closed | State::Standby | State::AwaitBackoff { .. } => {}
            _ => self.fault(now, Fault::TransportClosed),
        }
    }

    /// The driver has bytes to write that the socket does not take (it would block).
    /// If that lasts `Config::write_timeout` with no [`Machine::handle_write_progress`]
    /// in between, the open session faults: the peer stopped reading, and what waits for
    /// it must not be held forever.
    pub fn handle_write_blocked(&mut self, now: Instant) {
        self.now = now;
        if self.write_blocked_since.is_none() {
            self.write_blocked_since = Some(now);
        }
        self.written = self.written.blocked();
    }

    /// The socket took bytes, or nothing waits to be written any more. A write that
    /// took bytes but left some waiting is reported with this, then
    /// [`Machine::handle_write_blocked`] before anything more is polled: progress without
    /// a block before the next [`Machine::poll_transmit`] means all of its output was
    /// written (how a v1 connector knows its banner left, Ceph's end of CONNECTING).
    pub fn handle_write_progress(&mut self, now: Instant) {
        self.now = now;
        self.write_blocked_since = None;
        self.written = self.written.progressed();
    }

    /// The messenger's answer to [`super::Event::AcceptRequest`]: its policy for the peer's
    /// type, the [`Decision`] (from [`crate::decide`]) and, when the decision keeps an
    /// existing session ([`super::TableEffect::Replace`]), that session, taken from its
    /// machine with [`Machine::take_session`]. The feature bits stay those of
    /// [`super::Config::policies`] for the peer's type, looked up when the peer named
    /// its type: the peer was checked against them (the bits of `policy` are not used;
    /// a messenger's are the same).
    pub fn handle_accept_decision(
        &mut self,
        now: Instant,
        policy: Policy,
        decision: Decision,
        transferred: Option<Session>,
    ) {
        self.now = now;
        if !self.state.step().is_some_and(P::step_awaits_decision) {
            log::warn!(target: P::LOG, "{self}: accept decision in state {}", self.state_name());
            return;
        }
        self.policy = Policy {
            features_supported: self.policy.features_supported,
            features_required: self.policy.features_required,
            ..policy
        };
        self.lossy = policy.lossy;
        log::debug!(target: P::LOG, "{self}: accept decision {decision:?}");
        P::accept_decision(self, now, decision, transferred);
    }

    /// The messenger's answer to [`super::Event::VerifyAuthorizer`].
    pub fn handle_authorizer_verdict(&mut self, now: Instant, verdict: AuthVerdict) {
        self.now = now;
        P::authorizer_verdict(self, now, verdict);
    }

    /// The message being received must progress by at least `bytes` per
    /// `Config::payload_timeout` (besides `Config::progress_window`), counted from when
    /// its clock last started, for as long as it lasts or until set again (set at `now`:
    /// progress already enough for the new floor restarts the clock). The messenger sets this for the message others wait for
    /// (the oldest message in progress while its throttle queues requests): in proportion
    /// to the budget they wait on ([`super::PROGRESS_SHARE`]), so that keeping them waiting
    /// costs its peer bandwidth.
    pub fn set_progress_floor(&mut self, now: Instant, bytes: u64) {
        self.now = now;
        let window = self.config.progress_window;
        if let Some(open) = self.state.open_mut() {
            open.budget.set_floor(bytes, window, now);
        }
    }

    /// Budget for the message announced by [`super::Event::NeedBudget`] was reserved: read on.
    pub fn grant_budget(&mut self, now: Instant) {
        self.now = now;
        let Some((bytes, first)) = self.take_grant(now, P::TIMED_PAYLOAD) else { return };
        // Reading resumes: the idle clock runs again from here, not from the last read
        // before the wait.
        self.last_rx = now;
        if let Err(fault) = P::grant(self, bytes, first) {
            self.fault(now, fault);
            return;
        }
        self.process(now);
    }

    /// Grants receive budget ahead: up to `messages` whole messages, `bytes` in all
    /// (each costs its payload plus [`crate::message::MESSAGE_OVERHEAD`]), are taken
    /// without an [`super::Event::NeedBudget`] when their first window covers their
    /// payload. The caller holds that much of its throttles until it takes the unused
    /// rest back with [`Self::take_receive_credit`]; the credit is lost when the open
    /// session ends. Ignored while no session is open.
    pub fn add_receive_credit(&mut self, messages: u32, bytes: u64) {
        if let Some(open) = self.state.open_mut() {
            open.credit.messages = open.credit.messages.saturating_add(messages);
            open.credit.bytes = open.credit.bytes.saturating_add(bytes);
        }
    }

    /// Takes back the receive credit not used yet: `(messages, bytes)`; zero when none
    /// is left or the session it was granted to has ended.
    pub fn take_receive_credit(&mut self) -> (u32, u64) {
        let Some(open) = self.state.open_mut() else { return (0, 0) };
        let held_back = open.credit.held_back;
        let left = std::mem::replace(
            &mut open.credit,
            super::open::Credit { held_back, ..Default::default() },
        );
        (left.messages, left.bytes)
    }

    /// Runs input steps until one needs more input or an answer. What is left waiting
    /// for the rest of its frame, in a short read (or the short rest of a long one), is
    /// then copied out of the read buffer it came in: see `RxBuf`. Here, not only after
    /// new bytes: a budget grant or a decision resumes reading what waited. Not while
    /// an answer is awaited (events queued: a budget request, a decision), when what is
    /// left is read on as soon as the driver answers: copied then, the rest of a read
    /// was copied once per message that asked for budget (10 % of the instructions of a
    /// 64 B round trip).
    pub(crate) fn process(&mut self, now: Instant) {
        self.process_steps(now);
        if self.events.is_empty() {
            self.rx.settle(super::rx::copy_below(self.config.read_size));
        }
    }

    fn process_steps(&mut self, now: Instant) {
        for _ in 0..INPUT_STEPS_BOUND {
            if let Some(fault) = self.deferred_fault.take() {
                // Something queued before could not be encoded.
                self.fault(now, fault);
                return;
            }
            let more = match self.state {
                State::Handshake { .. } => P::read_handshake(self, now),
                State::Open(_) => P::read_open(self, now),
                State::AwaitTransport { .. }
                | State::AwaitBackoff { .. }
                | State::Standby
                | State::Closed => {
                    // Bytes of a connection that is gone.
                    self.rx.clear();
                    false
                }
                State::Transition => false,
            };
            if !more {
                return;
            }
        }
        log::warn!(target: P::LOG, "{self}: input loop bound hit");
    }
}
