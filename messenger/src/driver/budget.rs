//! The driver's budgets: receive windows charged to the throttles as a message's payload
//! arrives (see the crate docs, "Bounds a peer cannot escape"), and this connection's
//! share of the send bounds and of the worker's gauges.

use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::Instant;

use dispatch::{InFlight, Permit, Throttle, Ticket, Waiting};
use event_center::Context;
use protocol::message::{ThrottleCharge, MESSAGE_OVERHEAD};
use protocol::session::PROGRESS_SHARE;
use protocol::types::EntityType;

use super::Driver;
use crate::connection::Connection;
use crate::counters::WorkerCounters;
use crate::env::Env;
use crate::policies::ThrottlerPair;

/// The steps of a budget request, in the order they are taken: the policy's message
/// count first (a message in progress always holds its count, so counting cannot
/// deadlock with the byte windows), then the policy's bytes, then the dispatch bytes.
const STEP_MESSAGES: usize = 0;
const STEP_POLICY_BYTES: usize = 1;
const STEP_DISPATCH: usize = 2;
const STEPS: usize = 3;

/// Receive credit taken at most at once: messages, and bytes (payloads plus
/// `MESSAGE_OVERHEAD` each)...
const CREDIT_MESSAGES: u64 = 64;
const CREDIT_BYTES: u64 = 256 << 10;
/// ...and never more than this share of a throttle with a maximum, so that a few
/// connections holding credit cannot starve the rest.
const CREDIT_SHARE: u64 = 8;
/// Only a message costing at most this much starts a credit: at least 8 like it fit.
const CREDIT_MAX_COST: u64 = CREDIT_BYTES / 8;

/// The smallest read given credit before it is parsed (`Driver::credit_for_read`): no
/// whole message is shorter (v1's tag, header and footer alone are 67 bytes, msgr2's
/// preamble 32 and its message header more), so a peer trickling a message a few bytes
/// per read costs no throttle round per read.
const MIN_CREDITED_READ: usize = 64;

/// A window of budget the machine asked for (`Event::NeedBudget`).
#[derive(Clone, Copy, Debug)]
struct Want {
    /// Payload bytes of the window.
    bytes: u64,
    /// The message's first window (it also pays the message count and overhead).
    first: bool,
}

/// What the message being received holds of the throttles (see `Driver::try_budget`).
/// Dropping it releases everything.
#[derive(Default)]
pub(super) struct RecvBudget {
    /// In-progress registrations on the byte throttles, from the second window on.
    // Before `permits`, so dropped first (a reset drops the fields in order): a permit
    // released while its registration still counted it as held by messages in progress
    // let the throttle's serve take what it still held for free room, and pass the
    // oldest message beyond the maximum (`progress_may_overshoot`).
    inflight: [Option<InFlight>; STEPS],
    /// Held permits by step, windows merged.
    pub(super) permits: [Option<Permit>; STEPS],
    /// The window being served, and the step it is at.
    want: Option<Want>,
    step: usize,
    /// The queued request of the current step, when its throttle made it wait.
    waiting: Option<Waiting>,
    /// A window was asked for since the last [`Self::release_all`] (or reset): only then
    /// can anything above be held. One flag read per message, where checking every
    /// field cost ~35 instructions per 64 B round trip.
    asked: bool,
}

impl RecvBudget {
    /// Whether the message being received asked for or holds any budget. Nothing is
    /// held without a window asked for (see [`Self::finish_unasked`]): the flag first,
    /// and the fields only for a message that asked. Every `handle_events` asks this
    /// (twice per round trip at depth 1), and looking at all seven fields cost ~22
    /// instructions a time.
    #[inline]
    pub(super) fn is_active(&self) -> bool {
        debug_assert!(self.asked || !self.holds_anything(), "held without a window asked for");
        self.asked && self.holds_anything()
    }

    fn holds_anything(&self) -> bool {
        self.want.is_some()
            || self.permits.iter().any(Option::is_some)
            || self.inflight.iter().any(Option::is_some)
    }

    /// The message is complete and asked for no budget of its own (the receive credit
    /// paid for it, or it needed none): then there is nothing to release, and this is
    /// all it costs here. Otherwise the caller ends it with [`Self::release_all`].
    // Split from `release_all` so the common case builds no (permit, charge) pair: a
    // `finish_message` returning both for every message moved them through the stack
    // twice (~55 instructions per 64 B round trip, with the checks around them).
    // Nothing is held without a window asked for (`Driver::need_budget`, the only
    // place that sets `want`, which `try_budget` needs before it takes a permit or
    // queues), so an unasked message holds nothing; `step` is 0 then (as reset or as
    // `release_all` left it). A flag left set over nothing held costs only the
    // `release_all` of nothing.
    #[inline]
    pub(super) fn finish_unasked(&self) -> bool {
        !self.asked
    }

    /// A window of `bytes` is asked for (`first`: the message's first).
    pub(super) fn ask(&mut self, bytes: u64, first: bool) {
        self.want = Some(Want { bytes, first });
        self.step = 0;
        self.asked = true;
    }

    /// The message is complete, costing `cost` (its `queued_cost`), and held budget
    /// ([`Self::finish_unasked`] said no): returns its dispatch-throttle permit (it
    /// travels with the message until its dispatcher returns) and its policy-throttle
    /// charge, settled to `cost` (the message carries it until it is dropped), and ends
    /// its in-progress registrations, leaving this empty for the next one. Cleared in
    /// place: the whole struct moved out and back per message showed up as a memcpy in
    /// profiles.
    #[inline(never)]
    pub(super) fn release_all(&mut self, cost: u64) -> (Option<Permit>, Option<PolicyCharge>) {
        // The registrations end first (see `inflight`): what the message goes on to hold
        // is a complete message's, and what `settle` gives back is not still counted as
        // held by one in progress.
        self.inflight = Default::default();
        let dispatch = self.permits[STEP_DISPATCH].take();
        let messages = self.permits[STEP_MESSAGES].take();
        let mut bytes = self.permits[STEP_POLICY_BYTES].take();
        if let Some(b) = bytes.as_mut() {
            b.settle(cost);
        }
        self.permits = Default::default();
        self.want = None;
        self.step = 0;
        self.waiting = None;
        self.asked = false;
        (dispatch, PolicyCharge::of(messages, bytes))
    }

    /// A window is asked for and not granted yet.
    pub(super) fn is_waiting(&self) -> bool {
        self.want.is_some()
    }
}

/// What a received message holds of its peer type's policy throttlers (Ceph's
/// `byte_throttler` and `msg_throttler` on a `Message`): attached to the message as it
/// is handed over, released when the message is dropped, as Ceph's `~Message` puts
/// both (or part by part: `Message::release_message_throttle`, `clear_payload`,
/// `clear_data`). So a dispatcher that keeps messages (an OSD's queued ops) holds the
/// policy's count and bytes, and once they are full the connection stops reading.
pub(super) struct PolicyCharge {
    /// One count of the policy's message throttle.
    messages: Option<Permit>,
    /// The message's cost (payload plus `MESSAGE_OVERHEAD`) of its byte throttle.
    bytes: Option<Permit>,
}

impl PolicyCharge {
    /// The charge of these permits; `None` when the policy has neither throttler.
    #[inline]
    fn of(messages: Option<Permit>, bytes: Option<Permit>) -> Option<PolicyCharge> {
        (messages.is_some() || bytes.is_some()).then_some(PolicyCharge { messages, bytes })
    }

    /// Attaches this charge to `msg` (one allocation, only for a peer type with policy
    /// throttlers).
    pub(super) fn attach(self, msg: &mut protocol::Message) {
        msg.set_throttle_charge(Box::new(self));
    }
}

impl ThrottleCharge for PolicyCharge {
    fn release_count(&mut self) {
        self.messages = None;
    }

    fn release_bytes(&mut self, bytes: u64) {
        if let Some(p) = self.bytes.as_mut() {
            drop(p.split(bytes));
        }
    }
}

/// Receive budget granted ahead to the machine (`Machine::add_receive_credit`), so that
/// a burst of small messages costs one budget request, not one per message: the permits
/// held for it, by step. They hold the machine's unused credit plus the dispatch charge
/// of the messages it funded ([`Credit::spend`]): a funded message takes its policy
/// charge along as it is handed over (the message holds it until it is dropped), and,
/// bound for the queue, its dispatch charge too as a permit of its own
/// ([`Credit::take_dispatch`]); the dispatch charge of one fast-dispatched, whose
/// dispatcher has returned by then, is released together with the unused credit at the
/// end of the pump ([`Credit::release_spent`]) — per message, each release was a lock
/// and a reference count round trip. So an idle connection holds none.
#[derive(Default)]
pub(super) struct Credit {
    permits: [Option<Permit>; STEPS],
    /// The dispatch charge of funded messages not released yet (without what
    /// [`Credit::take_dispatch`] split off).
    spent_dispatch: u64,
}

impl Credit {
    /// Whether any credit is held (granted to the machine, or charged to a message it
    /// funded that is not handed over yet). The dispatch step is always taken, so it
    /// says for all three.
    pub(super) fn is_held(&self) -> bool {
        self.permits[STEP_DISPATCH].is_some()
    }

    /// A message funded by the credit was received, costing `cost`: `cost` of dispatch
    /// budget until its dispatcher returns, and one message and `cost` policy bytes,
    /// split off here as the charge the message carries until it is dropped (`None`
    /// when the policy has no throttlers: then this is all a funded message costs).
    #[inline]
    pub(super) fn spend(&mut self, cost: u64) -> Option<PolicyCharge> {
        self.spent_dispatch += cost;
        let [messages, bytes, _] = &mut self.permits;
        if messages.is_none() && bytes.is_none() {
            return None;
        }
        self.split_policy(cost)
    }

    /// [`Credit::spend`]'s policy charge, for a peer type with policy throttlers.
    #[inline(never)]
    fn split_policy(&mut self, cost: u64) -> Option<PolicyCharge> {
        let [messages, bytes, _] = &mut self.permits;
        PolicyCharge::of(
            messages.as_mut().map(|p| p.split(1)),
            bytes.as_mut().map(|p| p.split(cost)),
        )
    }

    /// The dispatch charge `cost` of a funded message that goes to the dispatch queue,
    /// split off to travel with it (released when its `ms_dispatch` returns).
    pub(super) fn take_dispatch(&mut self, cost: u64) -> Option<Permit> {
        let permit = self.permits[STEP_DISPATCH].as_mut()?;
        self.spent_dispatch = self.spent_dispatch.saturating_sub(cost);
        Some(permit.split(cost))
    }

    /// Releases everything held, as `Credit::default()` replacing it would, in the
    /// steps' order. Slot by slot: the array's drop glue was a call per pump at depth 1
    /// that tested every slot again.
    #[inline]
    fn clear(&mut self) {
        let [messages, policy_bytes, dispatch] = &mut self.permits;
        *messages = None;
        *policy_bytes = None;
        *dispatch = None;
        self.spent_dispatch = 0;
    }

    /// Releases the dispatch charge of funded messages that hold it no more: they have
    /// been handed over and fast-dispatched.
    fn release_spent(&mut self) {
        let spent = std::mem::take(&mut self.spent_dispatch);
        if let (Some(p), true) = (self.permits[STEP_DISPATCH].as_mut(), spent > 0) {
            drop(p.split(spent));
        }
    }

    /// Releases `messages` and `bytes` of what is held (the machine's unused credit).
    fn release(&mut self, messages: u64, bytes: u64) {
        let [m, pb, d] = &mut self.permits;
        if let Some(p) = m {
            drop(p.split(messages));
        }
        for p in [pb, d].into_iter().flatten() {
            drop(p.split(bytes));
        }
    }
}

/// A share of `n` of `throttle` (see [`Driver::take_shares`]) into the empty `slot`:
/// whether it was there now; true, holding nothing, for a throttle the policy lacks.
// Inline for the test only: a peer type without policy throttlers (the common case)
// made two calls per read that did nothing.
#[inline(always)]
fn take_share(throttle: &Option<Arc<Throttle>>, n: u64, slot: &mut Option<Permit>) -> bool {
    match throttle {
        Some(t) => take_share_of(t, n, slot),
        None => true,
    }
}

/// [`take_share`] of a policy throttle.
#[inline(never)]
fn take_share_of(throttle: &Arc<Throttle>, n: u64, slot: &mut Option<Permit>) -> bool {
    *slot = throttle.try_acquire_share(n, CREDIT_SHARE);
    slot.is_some()
}

/// The peer type's policy throttlers held in `slot`, looked up the first time.
#[inline]
fn loaded<'a>(
    slot: &'a mut Option<ThrottlerPair>,
    env: &Env,
    conn: &Connection,
) -> &'a ThrottlerPair {
    slot.get_or_insert_with(|| env.policies.throttlers(conn.peer_type().unwrap_or(EntityType::ANY)))
}

impl Driver {
    /// Gives the machine receive credit for a burst of small messages, after the
    /// message whose first window was just granted showed the peer sends them: taken
    /// only if it is there now (never waited for), and at most a share of each throttle.
    fn refill_credit(&mut self, size: u64) {
        self.return_credit(false);
        // The message just granted is the first of those up to the next batch.
        let until_batch = self.messages_to_batch(usize::try_from(size).unwrap_or(usize::MAX));
        let wanted = CREDIT_MESSAGES.min(until_batch.saturating_sub(1) as u64);
        if wanted == 0 {
            return;
        }
        // As many messages as large as this one.
        let want_bytes =
            wanted.saturating_mul(size.saturating_add(MESSAGE_OVERHEAD)).min(CREDIT_BYTES);
        let Some((messages, policy_bytes, dispatch)) = self.take_shares(wanted, want_bytes) else {
            return;
        };
        let count = messages.as_ref().map_or(wanted, Permit::amount);
        let bytes = policy_bytes.as_ref().map_or(u64::MAX, Permit::amount).min(dispatch.amount());
        if count == 0 || bytes < MESSAGE_OVERHEAD {
            return;
        }
        for (step, permit) in [
            (STEP_MESSAGES, messages),
            (STEP_POLICY_BYTES, policy_bytes),
            (STEP_DISPATCH, Some(dispatch)),
        ] {
            let Some(mut p) = permit else { continue };
            let keep = if step == STEP_MESSAGES { count } else { bytes };
            // The larger of the byte throttles' grants gives back its surplus now.
            drop(p.split(p.amount().saturating_sub(keep)));
            match &mut self.credit.permits[step] {
                Some(held) => {
                    let _ = held.merge(p);
                }
                slot => *slot = Some(p),
            }
        }
        self.machine.add_receive_credit(u32::try_from(count).unwrap_or(u32::MAX), bytes);
    }

    /// Gives the machine credit for one message of at most the `n` bytes just read,
    /// before they are parsed, so a message that arrived whole in one read (depth 1,
    /// the first of a burst) is taken without a budget request: that round through the
    /// driver, the header parsed twice, cost ~310 instructions per message over v1 and
    /// ~1,590 over msgr2 (4 KiB at depth 1). Only between frames with no credit held,
    /// for reads small enough to start a credit, and only if every throttle has it now
    /// (never waited for); returned at the end of the pump with whatever else the credit
    /// holds.
    pub(super) fn credit_for_read(&mut self, n: usize) {
        // Between frames only: a read that goes on with one (a message, or a duplicate
        // streaming by unstored and uncharged) holds no whole message of its own.
        if n < MIN_CREDITED_READ || self.credit.is_held() || !self.machine.between_messages() {
            return;
        }
        // The read holds the message's payload and more: its length and the overhead
        // cover what the message will be charged.
        let bytes = (n as u64).saturating_add(MESSAGE_OVERHEAD);
        if bytes > CREDIT_MAX_COST {
            return;
        }
        if self.take_shares_for_one(bytes) {
            self.machine.add_receive_credit(1, bytes);
        }
    }

    /// [`Self::take_shares`] for one message of `bytes`, straight into the credit's
    /// slots (empty: no credit is held): whether every throttle had a share that covers
    /// it; if not, none is held (the message asks, as before). The same requests in the
    /// same order as `take_shares`; per read at depth 1, its tuple of permits moved
    /// through the stack and the emptied array's drop glue cost ~50 instructions.
    #[inline]
    fn take_shares_for_one(&mut self, bytes: u64) -> bool {
        let (tb, tm) = loaded(&mut self.throttlers, &self.env, &self.conn);
        let [messages, policy_bytes, dispatch] = &mut self.credit.permits;
        debug_assert!(messages.is_none() && policy_bytes.is_none() && dispatch.is_none());
        let taken = take_share(tm, 1, messages)
            && take_share(tb, bytes, policy_bytes)
            && match self.env.dispatch_throttle().try_acquire_share(bytes, CREDIT_SHARE) {
                Some(p) => {
                    *dispatch = Some(p);
                    true
                }
                None => false,
            };
        // A share smaller than asked may not cover the message.
        let covers = |p: &Option<Permit>| p.as_ref().is_none_or(|p| p.amount() >= bytes);
        if taken && covers(policy_bytes) && covers(dispatch) {
            return true;
        }
        // Given back in the order the tuple's permits dropped in.
        *dispatch = None;
        *policy_bytes = None;
        *messages = None;
        false
    }

    /// Receive credit's permits: up to `messages` of the policy's message throttle and
    /// `bytes` of its byte throttle and of the dispatch throttle, in the steps' order,
    /// each at most a share of its throttle and only if it is there now; `None` for a
    /// throttle the policy lacks. The throttlers are borrowed, not cloned: this runs
    /// for a read at depth 1.
    #[inline]
    fn take_shares(
        &mut self,
        messages: u64,
        bytes: u64,
    ) -> Option<(Option<Permit>, Option<Permit>, Permit)> {
        let take = |t: &Option<Arc<Throttle>>, n: u64| match t {
            Some(t) => t.try_acquire_share(n, CREDIT_SHARE).map(Some),
            None => Some(None),
        };
        let (tb, tm) = loaded(&mut self.throttlers, &self.env, &self.conn);
        let messages = take(tm, messages)?;
        let policy_bytes = take(tb, bytes)?;
        let dispatch = self.env.dispatch_throttle().try_acquire_share(bytes, CREDIT_SHARE)?;
        Some((messages, policy_bytes, dispatch))
    }

    /// Takes the machine's unused credit back and releases it, with the dispatch charge
    /// the messages it funded spent ([`Credit::release_spent`]: they are handed over by
    /// now; their policy charges went with them); with
    /// `all`, once nothing it funded is still on its way (no message in progress, no
    /// event unhandled), releases everything the credit still holds.
    pub(super) fn return_credit(&mut self, all: bool) {
        let (messages, bytes) = self.machine.take_receive_credit();
        if all {
            // Unused and spent alike: each permit goes whole, one release per throttle
            // instead of a split and a release for each part.
            self.credit.clear();
            return;
        }
        self.credit.release(u64::from(messages), bytes);
        self.credit.release_spent();
    }

    /// `Event::NeedBudget`: the message being received needs `bytes` more payload
    /// bytes of budget; `first`: its first window (it pays for the message too).
    pub(super) fn need_budget(&mut self, cx: &mut Context<'_>, bytes: u64, first: bool) {
        if first && self.recv.is_active() {
            // An earlier message was dropped in this same pass (an aborted msgr2 frame
            // read on from its grant): `handle_events` clears its budget only after the
            // events, and until then this message would take its permits as its own
            // first window, skipping its count and queueing as the oldest in progress.
            self.recv = Default::default();
        }
        if !first && self.recv.inflight.iter().all(Option::is_none) {
            // A second window: from now on this message holds budget while it waits for
            // more, so it registers as in progress (the oldest one always goes on; see
            // `dispatch::throttle`).
            let ticket = Ticket::next();
            let (tb, tm) = self.throttlers();
            let held = |step: usize| self.recv.permits[step].as_ref().map_or(0, Permit::amount);
            let (policy_held, dispatch_held) = (held(STEP_POLICY_BYTES), held(STEP_DISPATCH));
            // Its count too, so that the count throttle knows how much of it messages in
            // progress hold (`set_progress_floor`). Taken with the first window, so a
            // message without it (a policy without a count) registers none.
            let counted = held(STEP_MESSAGES);
            self.recv.inflight[STEP_MESSAGES] =
                tm.filter(|_| counted > 0).map(|t| t.begin_inflight(ticket, counted));
            self.recv.inflight[STEP_POLICY_BYTES] =
                tb.map(|t| t.begin_inflight(ticket, policy_held));
            self.recv.inflight[STEP_DISPATCH] =
                Some(self.env.dispatch_throttle().begin_inflight(ticket, dispatch_held));
        }
        if first {
            WorkerCounters::add_own(&self.counters.recv_budget_requests, 1);
        }
        self.recv.ask(bytes, first);
        self.try_budget(cx);
    }

    /// The message in progress, if it is the one a byte throttle's queue waits for (the
    /// oldest in progress, which goes on past the maximum while the others wait), must
    /// bring a share of what the messages in progress hold per payload timeout
    /// ([`PROGRESS_SHARE`]); any other, a window. While new messages wait for a count
    /// that only messages in progress hold, every message in progress must also bring a
    /// share of its own length. Asked before each read and timeout, at `now`.
    #[inline]
    pub(super) fn set_progress_floor(&mut self, now: Instant) {
        if self.recv.inflight.iter().all(Option::is_none) {
            return;
        }
        let bytes =
            [STEP_POLICY_BYTES, STEP_DISPATCH].map(|step| self.recv.inflight[step].as_ref());
        let held = bytes.into_iter().flatten().map(InFlight::held_while_others_wait).max();
        let mut floor = held.unwrap_or(0) / PROGRESS_SHARE;
        // A message in progress holds a count of the policy's message throttle, and new
        // messages waiting for one wait for counts to be given back, not for bytes. When
        // messages in progress hold every count, only their completing (or faulting)
        // frees one: then each must arrive whole within PROGRESS_SHARE timeouts (a
        // trickler holds few bytes but a whole count). When a message handed on holds
        // one (kept by its dispatcher until dropped, as Ceph's ops are, which fill the
        // cap under load), the waiters wait for the application too, and a message in
        // progress is one of the cap's messages like it, as in Ceph: it owes only its
        // window, so an honest large message on a slow link is not cut off.
        let count = self.recv.inflight[STEP_MESSAGES].as_ref();
        if count.is_some_and(InFlight::progress_holds_all_while_others_wait) {
            floor = floor.max(self.machine.receiving_len() / PROGRESS_SHARE);
        }
        self.machine.set_progress_floor(now, floor);
    }

    /// The peer type's (bytes, messages) policy throttlers; the type is fixed once
    /// known, so they are looked up once.
    fn throttlers(&mut self) -> ThrottlerPair {
        loaded(&mut self.throttlers, &self.env, &self.conn).clone()
    }

    /// Serves the pending request for the message being received, throttle by throttle
    /// (policy messages, policy bytes, dispatch bytes). When one makes it wait, the
    /// driver stops reading; the request's grant calls a waker (a notify of this
    /// driver), and `notify` picks it up here. One queued request per throttle at a
    /// time, however often the driver is notified for other reasons.
    pub(super) fn try_budget(&mut self, cx: &mut Context<'_>) {
        let Some(want) = self.recv.want else { return };
        let Some(id) = self.id else { return };
        let (tb, tm) = self.throttlers();
        // The first window also pays for the message itself.
        let bytes = want.bytes + if want.first { MESSAGE_OVERHEAD } else { 0 };
        while self.recv.step < STEPS {
            let step = self.recv.step;
            let (throttle, n) = match step {
                STEP_MESSAGES => (tm.as_ref(), u64::from(want.first)),
                STEP_POLICY_BYTES => (tb.as_ref(), bytes),
                _ => (Some(self.env.dispatch_throttle()), bytes),
            };
            let Some(throttle) = throttle.filter(|_| n > 0) else {
                self.recv.step += 1;
                continue;
            };
            let permit = match self.recv.waiting.take() {
                Some(waiting) => match waiting.try_take() {
                    Ok(p) => p,
                    Err(waiting) => {
                        self.recv.waiting = Some(waiting);
                        return;
                    }
                },
                // Room now is the common case: no waker to build.
                None => match self.recv.inflight[step]
                    .as_ref()
                    .map_or_else(|| throttle.try_acquire(n), |inflight| inflight.try_acquire(n))
                {
                    Some(p) => p,
                    None => {
                        // The received messages not handed over yet hold dispatch
                        // budget that only their dispatch releases.
                        self.env.queue.enqueue_batch(&self.conn, &mut self.pending);
                        let center = self.center.clone();
                        let waker = Box::new(move || {
                            let _ = center.notify(id);
                        });
                        let asked = match &self.recv.inflight[step] {
                            Some(inflight) => inflight.acquire_or_wait(n, waker),
                            None => throttle.acquire_or_wait(n, waker),
                        };
                        match asked {
                            Ok(p) => p,
                            Err(waiting) => {
                                self.recv.waiting = Some(waiting);
                                return;
                            }
                        }
                    }
                },
            };
            match &mut self.recv.permits[step] {
                Some(held) => {
                    let _ = held.merge(permit);
                }
                slot => *slot = Some(permit),
            }
            self.recv.step += 1;
        }
        self.recv.want = None;
        // From the second message of a read's burst on: a lone message (depth 1) would
        // pay for credit it never uses.
        if want.first && self.burst > 0 && bytes <= CREDIT_MAX_COST {
            self.refill_credit(want.bytes);
        }
        self.machine.handle_budget_granted(cx.now());
    }

    /// Updates this connection's share of the worker's gauges and of the send bounds.
    pub(super) fn update_gauges(&mut self) {
        let held = if self.finished { 0 } else { self.machine.receive_held_bytes() as u64 };
        WorkerCounters::move_gauge(&self.counters.recv_held_bytes, &mut self.recv_held, held);
        let send = if self.finished {
            0
        } else {
            // A lossless session keeps framed messages until they are acknowledged
            // (counted by the machine); a lossy one forgets them once framed, so their
            // bytes count while they wait here. A session marked lossy still keeps what
            // it had sent before (until acknowledged), and the unwritten frames may be
            // theirs: the larger of the two counts, not their sum, so the mark never
            // counts one message twice.
            let framed = if self.machine.is_lossy() {
                (self.io.wsegs_bytes as u64).saturating_sub(self.machine.sent_held_cost())
            } else {
                0
            };
            self.machine.send_held_cost() + framed
        };
        if send != self.send_held {
            // `send_message` admits against the connection's count and charges the
            // total: the count may never show room the total still holds. So a lower
            // count goes to the total first, a higher one to the connection first.
            // Lowered the other way round, a worker preempted between the two let the
            // dispatch thread fill the room it saw while the total still counted what
            // had been written (CI: 4 MiB bound, 4,502,877 bytes counted).
            let (count, budget) = (&self.conn.0.driver_cost, &self.conn.0.send_budget);
            if send < self.send_held {
                budget.adjust(self.send_held, send);
                self.seams.run_in_send_count();
                // Release: a sender that reads this count finds the total lowered.
                count.store(send, Release);
            } else {
                count.store(send, Release);
                self.seams.run_in_send_count();
                budget.adjust(self.send_held, send);
            }
            self.send_held = send;
        }
    }

    /// Moves the machine's peer-misbehaviour counts into the worker's counters.
    pub(super) fn count_peer_issues(&mut self) {
        let (issues, unlogged) = self.machine.poll_peer_issues();
        if issues > 0 {
            self.counters.peer_issues.fetch_add(issues, Relaxed);
            self.counters.peer_issues_unlogged.fetch_add(unlogged, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A read's credit is all or nothing, and goes back whole: a share goes into its
    // slot only when the throttle has it now, a throttle the policy lacks passes
    // holding nothing, and clearing the credit releases every step and the spent sum.
    #[test]
    fn a_share_goes_into_its_slot_and_clearing_gives_all_back() {
        let (messages, bytes) = (Throttle::new("msgs", 80), Throttle::new("bytes", 8000));
        let dispatch = Throttle::new("dispatch", 8000);
        let mut credit = Credit::default();
        let [m, b, d] = &mut credit.permits;
        assert!(take_share(&Some(Arc::clone(&messages)), 1, m));
        assert!(take_share(&None, 500, b), "no policy throttle: passes");
        assert!(b.is_none(), "and holds nothing");
        assert!(take_share(&Some(Arc::clone(&bytes)), 5000, b));
        assert_eq!(b.as_ref().map(Permit::amount), Some(1000), "capped at a share");
        assert!(take_share(&Some(Arc::clone(&dispatch)), 500, d));
        // Someone waits on the dispatch throttle: a share is not there now.
        let full = dispatch.try_acquire(7500).expect("fits");
        let waits = dispatch.acquire_or_wait(8000, Box::new(|| {})).expect_err("full");
        let mut other = None;
        assert!(!take_share(&Some(Arc::clone(&dispatch)), 1, &mut other));
        assert!(other.is_none());
        credit.spent_dispatch = 300;
        assert!(credit.is_held());
        credit.clear();
        assert!(!credit.is_held() && credit.permits.iter().all(Option::is_none));
        assert_eq!(credit.spent_dispatch, 0);
        assert_eq!((messages.current(), bytes.current(), dispatch.current()), (0, 0, 7500));
        let k = dispatch.counters();
        assert_eq!((k.get_or_fail_success, k.get_or_fail_fail, k.put), (2, 1, 1));
        drop((full, waits));
    }

    // `is_active` reads the `asked` flag first: a message that asked for a window is
    // still seen holding budget, both while the window waits and once it is granted,
    // until `release_all`.
    #[test]
    fn a_message_that_asked_is_active_until_released() {
        let throttle = Throttle::new("dispatch", 1 << 20);
        let mut recv = RecvBudget::default();
        assert!(!recv.is_active(), "nothing asked, nothing held");
        recv.ask(100, true);
        assert!(recv.is_active(), "a window asked for and not granted yet");
        // Granted as `try_budget` grants it: the permit held, the window served.
        recv.permits[STEP_DISPATCH] = throttle.try_acquire(100);
        recv.want = None;
        assert!(recv.is_active(), "the granted window's permit is held");
        let (permit, _) = recv.release_all(100);
        assert!(permit.is_some());
        assert!(!recv.is_active(), "released");
    }
}
