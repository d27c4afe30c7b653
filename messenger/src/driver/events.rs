//! What the driver does with the machine's events: peer and session state published on
//! the handle, received messages handed to the dispatch layer, session events queued for
//! the dispatchers, reconnects dialled, the accept decision and budget requests passed
//! on to their own files.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dispatch::{ConnectionRef, Permit, QueueEvent};
use event_center::Context;
use protocol::wire::KeepaliveStamp;
use protocol::Message;

use super::Driver;
use crate::counters::WorkerCounters;
use crate::machine::Event;
use crate::own_sends;
use crate::state::ConnState;

/// The smallest batch `hand_on_batch` makes before `dispatch_batch` (when that is
/// larger), with [`EARLY_RECV_BYTES`]: 4 requests of 4 KiB. A client with 32 of them in
/// flight sends again after the first 4 replies instead of 8, and ran ~13 % more round
/// trips for ~4 % less CPU each (the server's writes overlap its parsing and the
/// client's; msgr2 in crc mode +20 %). Only while the worker has time to spare: see
/// [`MIN_BUSY_DISPATCH_BATCH`].
pub(super) const MIN_DISPATCH_BATCH: usize = 4;

/// The smallest early batch while the worker is mostly busy (`Context::mostly_busy`):
/// there the extra writes of batches of 4 cost more than the peer's shorter wait gains.
/// With 4 always, 4 KiB at depth 128 (whose read phases are often short) made ~30 %
/// more writes for 7–14 % more CPU per round trip and 5–15 % fewer round trips, and
/// msgr2's secure mode at depth 32 (bound by its cipher) 12 % fewer round trips. Only a
/// read phase's first batch at 4 (the rest at 8) kept depth 128's writes but gave depth
/// 32 only +5 %.
pub(super) const MIN_BUSY_DISPATCH_BATCH: usize = 8;

/// The smallest early batch while the worker is mostly busy and the last batch measured
/// handled its messages in under `MessengerConfig::quick_message` each. With it, 4 KiB
/// at depth 128 made a quarter fewer writes, for ~4 % less CPU per round trip and 1–4 %
/// more round trips under cubic, whose round trips hold still (v1, msgr2 in crc mode,
/// lossless: 4–6 alternating pairs each), and 4–7 % less CPU under BBR; 32 gained
/// nothing more. Slow messages keep [`MIN_BUSY_DISPATCH_BATCH`]: with 16 always, msgr2's
/// secure mode at depth 32 ran 20 % fewer round trips.
pub(super) const QUICK_BUSY_DISPATCH_BATCH: usize = 16;

/// What a batch smaller than `dispatch_batch` must have had sent through the mailbox
/// by other threads (send cost) to be written early: on loopback a write costs the
/// writer the peer's receive path too, and a write of a few small replies did ~10 %
/// more CPU per 64 B round trip for no more round trips.
const EARLY_BATCH_BYTES: usize = 32 << 10;

/// What a batch smaller than `dispatch_batch` must have received (payload bytes) to be
/// handed on early, with at least [`MIN_DISPATCH_BATCH`] messages: small messages never
/// reach it within a window (128 of 64 B: 8 KiB), so they go by the check points.
const EARLY_RECV_BYTES: usize = 16 << 10;

/// What this thread's fast dispatch must have sent (as the send bounds count it: a
/// small message ~650 bytes) before a check point writes it: 16 KiB is 26 small
/// replies, so at 64 B both ends of a full window write every 32 messages instead of
/// every `dispatch_batch` (64) and work at once; with 32 KiB they traded half-windows,
/// and 64 B at depth 128 ran 1.8× fewer round trips for ~15 % more CPU each (messages of
/// 256 B and up reached either bound at 32). Replies from `ms_dispatch` keep coming
/// through the mailbox while the worker reads: written at this bound they went in more,
/// smaller writes, and a server answering 64 B from `ms_dispatch` ran ~23 % fewer round
/// trips for ~25 % more CPU each, so they keep [`EARLY_BATCH_BYTES`].
pub(super) const EARLY_SENT_BYTES: u64 = 16 << 10;

/// [`EARLY_SENT_BYTES`] while the worker is mostly busy and its messages are quick
/// (where [`QUICK_BUSY_DISPATCH_BATCH`] applies): more than a `dispatch_batch` (64) of
/// small replies, so those go once per `dispatch_batch` instead of every 32, while 16
/// requests of 4 KiB still reach it at the first check point. There the CPU is what
/// bounds both ends, and each write costs the peer a read: on an AMD EPYC host, 64 B at
/// depth 128 ran 3–6 % more round trips for 5–10 % less CPU each, lossless 16 % more
/// for 17 % less, a server answering from `ms_dispatch` 9 % more for 6 % less; msgr2
/// the same round trips for 6 % less, and 256 B–4 KiB level. An idle worker keeps
/// [`EARLY_SENT_BYTES`], so both ends of a half-empty window still work at once.
pub(super) const QUICK_BUSY_EARLY_SENT_BYTES: u64 = 64 << 10;

/// What fast dispatch must have sent before a driver writes in the middle of a read when
/// it makes no early batches (`early_batches` off, or a peer that shares its CPU and
/// reads only once we sleep): a window of 4 KiB requests (128: 512 KiB) written at once
/// ran ~20 % slower than in two writes.
const COLOCATED_WRITE_BYTES: u64 = 256 << 10;

/// How many check points `hand_on_batch` makes per `dispatch_batch`: at each, what fast
/// dispatch sent is taken into the protocol and written if it reaches
/// [`EARLY_SENT_BYTES`] (or the mailbox's, [`EARLY_BATCH_BYTES`]).
const CHECKS_PER_BATCH: usize = 4;

/// The messages between `hand_on_batch`'s check points for a `dispatch_batch` of `most`.
pub(super) fn check_every(most: usize) -> usize {
    (most / CHECKS_PER_BATCH).max(1)
}

/// Our wall clock as a keepalive stamp (KEEPALIVE2 carries one; the peer echoes it).
pub(super) fn wall_stamp() -> KeepaliveStamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    KeepaliveStamp { sec: d.as_secs() as u32, nsec: d.subsec_nanos() }
}

impl Driver {
    /// Handles every pending machine event. Returns whether any was handled.
    #[inline]
    pub(super) fn handle_events(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.machine.has_events() && self.pending.is_drained() {
            // Most calls after the read phase find nothing: no call to the loop below.
            self.drop_budget_of_dropped_message();
            return false;
        }
        self.handle_pending_events(cx)
    }

    #[inline(never)]
    fn handle_pending_events(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        // Before each event: the last one's fast dispatch may have marked the
        // connection disposable, and a fault queued behind it is then a reset.
        loop {
            self.apply_disposable();
            // A message (nearly every event) is taken as itself and goes straight to
            // `handle_message`: through `handle_event` each paid that function's large
            // frame (a stack probe, seven saved registers), the jump over every variant
            // and the check for a session event (~37 instructions per 64 B round trip).
            if let Some(msg) = self.machine.poll_message() {
                self.handle_message(cx, msg);
            } else if let Some(ev) = self.machine.poll_event() {
                self.handle_event(cx, ev);
            } else {
                break;
            }
            any = true;
            if self.finished {
                break;
            }
        }
        self.deliver_pending();
        self.drop_budget_of_dropped_message();
        any
    }

    /// The old socket's events at a hand-off, before its session moves to the new socket.
    ///
    /// Why: a wake-up that grants a waiting message its budget completes the message
    /// before the pump drains the mailbox, where the hand-off waits. The session's in_seq
    /// counts that message, and the new machine tells the peer that in_seq, so the peer
    /// never sends it again: it is delivered now or never. Remote resets, opens and
    /// keepalives are handled as any pump would. A fault's reconnect or standby, a wait for
    /// budget and a handshake's requests were about the socket being replaced and go
    /// with it; a reset and close end the session here (the caller then drops the
    /// hand-off).
    pub(super) fn handle_events_before_take_over(&mut self, cx: &mut Context<'_>) {
        while let Some(ev) = self.poll_event() {
            match ev {
                Event::Reconnect { .. }
                | Event::Standby
                | Event::NeedBudget { .. }
                | Event::AcceptRequest(_)
                | Event::VerifyAuthorizer { .. } => {}
                ev => self.handle_event(cx, ev),
            }
            if self.finished {
                return;
            }
        }
        self.deliver_pending();
    }

    /// The machine's next event, once a `mark_disposable` made since the last one
    /// applies (see `apply_disposable`).
    #[inline]
    fn poll_event(&mut self) -> Option<Event> {
        self.apply_disposable();
        self.machine.poll_event()
    }

    /// A fault dropped the message being received: so does its budget.
    #[inline]
    fn drop_budget_of_dropped_message(&mut self) {
        if self.recv.is_active() && !self.machine.message_in_progress() {
            self.recv = Default::default();
        }
    }

    fn handle_event(&mut self, cx: &mut Context<'_>, ev: Event) {
        let now = cx.now();
        if !matches!(ev, Event::Message(_) | Event::NeedBudget { .. }) {
            // Whatever else happens comes after the messages received before it (a wait
            // for budget hands them over in `try_budget`).
            self.deliver_pending();
        }
        match ev {
            Event::AcceptRequest(req) => {
                if let Some(req) = self.seams.hold_accept(now, *req) {
                    self.authenticate_then_decide(cx, req);
                }
            }
            Event::VerifyAuthorizer { peer_type, protocol, authorizer } => {
                // Named before the hooks run: one that panics has seen it too. (A peer
                // may connect again on the socket: a judgement of an earlier one stands.)
                let before = self.named;
                self.named = true;
                let (verdict, judged) = self.env.dispatchers().judge_authorizer(
                    &self.conn,
                    peer_type.0,
                    protocol,
                    &authorizer,
                );
                // Only a dispatcher with a judgement of its own may keep state for it.
                self.named = before || judged;
                self.machine.handle_authorizer_verdict(now, verdict);
            }
            Event::Opened(opened) => {
                // Interval keepalives of this session are stamped from our wall clock,
                // read once per open (the machine reads no clock).
                self.machine.anchor_wall_clock(wall_stamp());
                {
                    let mut p = self.conn.0.published.lock();
                    p.addr = Some(opened.peer_addr);
                    p.entity_type = Some(opened.peer_type);
                    p.features = opened.features;
                    let (addrs, id) = self.machine.peer_ident().unzip();
                    p.ident_addrs = addrs;
                    p.ident_id = id;
                    p.protocol = self.machine.protocol();
                    p.con_mode = self.machine.con_mode();
                    // A session we dialled learns no name: one its peer proved before
                    // (accepted, then redialled by us) still says who the peer is, and
                    // keeps it from being taken by another entity's connect.
                    if let Some(a) = self.machine.peer_auth() {
                        p.peer_auth = Some(a.clone());
                    }
                }
                // The session's seqs and cookies are published before the state says
                // Open: another connection's accept decision reads both, and an open
                // state beside the snapshot from before the handshake (no peer
                // global_seq, no server cookie) let a stale msgr2 CLIENT_IDENT — sent on
                // a connection its peer had itself replaced meanwhile — take this open
                // session over as a new one (in_seq back to 0), and the peer's resends
                // were delivered twice. With the snapshot first, the ident's older
                // global_seq marks it stale.
                self.publish_snapshot(false);
                self.opened = true;
                self.conn.set_state(ConnState::Open);
                log::info!(target: "msgr::conn", "{}: open", self.machine);
                let ev = if self.server_side {
                    QueueEvent::Accept(self.conn.clone())
                } else {
                    QueueEvent::Connect(self.conn.clone())
                };
                self.enqueue_event(ev);
            }
            Event::NeedBudget { bytes, first } => self.need_budget(cx, bytes, first),
            Event::Message(msg) => self.handle_message(cx, msg),
            Event::Acked { .. } => {}
            Event::LearnedAddr => {
                log::info!(target: "msgr::conn", "{}: learned my addrs {:?}", self.machine, self.env.my_addrs());
                self.env.loopback_moved();
            }
            Event::KeepaliveReceived => {
                self.conn.0.published.lock().last_keepalive = Some(now);
            }
            Event::KeepaliveAck(stamp) => {
                self.conn.0.published.lock().last_keepalive_ack = Some(stamp);
            }
            Event::Reconnect { .. } => {
                // We dial from here on, whoever accepted the session before: it opens as
                // ours (ms_handle_connect, as Ceph's client_ready) and a standby of it
                // waits for our next message, not for its peer.
                self.server_side = false;
                // The connect_seq the fault moved on is published before the state, as
                // at the open (see `SessionTable`): a racing connect from the peer
                // decided meanwhile saw "connecting" beside the old number, and replaced
                // the session where the new one breaks the tie (one more round).
                self.publish_snapshot(false);
                self.conn.set_state(ConnState::Connecting);
                match self.io.dial.or_else(|| self.conn.peer_addr().and_then(|a| a.addr)) {
                    Some(addr) => {
                        self.io.dial = Some(addr);
                        if let Err(e) = self.dial_now(cx, addr) {
                            log::info!(target: "msgr::conn", "{}: dial {addr} failed: {e}", self.machine);
                            self.report_refused_dial(&e);
                            self.machine.handle_transport_closed(now);
                        }
                        // Else the machine restarts its handshake once the TCP connect is done.
                    }
                    None => self.finish(cx),
                }
            }
            Event::Standby => {
                self.close_socket(cx);
                self.conn.set_state(ConnState::Standby);
                if self.server_side {
                    self.conn.set_server_standby();
                    // Checked once this pump has published what the session holds.
                    self.standby_check = true;
                }
            }
            Event::Reset => self.report_reset(),
            Event::RemoteReset => {
                // Ceph's was_session_reset: the old incarnation is gone with what it
                // received that no dispatcher has seen (held back by an injected delay,
                // or waiting in the dispatch queue) and what was sent for it and not
                // taken yet; delivered or sent later, it would land in the new session.
                self.seams.discard_messages();
                self.env.queue.discard(self.conn.id());
                let shared = &self.conn.0;
                let dropped =
                    shared.mailbox.lock().take_messages(&shared.mailbox_cost, &shared.send_budget);
                drop(dropped);
                own_sends::discard(&self.conn, false);
                self.enqueue_event(QueueEvent::RemoteReset(self.conn.clone()));
            }
            Event::Refused => {
                self.enqueue_event(QueueEvent::Refused(self.conn.clone()));
            }
            Event::Closed { by, reason } => {
                log::info!(target: "msgr::conn", "{}: closed by {by:?}: {reason}", self.machine);
                if self.opened && matches!(*reason, protocol::CloseReason::Refused(_)) {
                    // A session its dispatchers were told was open (a lossless one
                    // redialling) ends with the refusal of its reconnect: they hear it
                    // ended, as from any other end of it, after `ms_handle_refused`.
                    self.report_reset();
                }
                self.report_unopened_end();
                self.flush_held_messages();
                self.finish(cx);
            }
        }
    }

    /// A received message: counted, stamped, charged (its receive budget, or the
    /// credit's), then delivered, or held by an injected delay; a batch is handed on
    /// when it is due.
    #[inline]
    fn handle_message(&mut self, cx: &mut Context<'_>, mut msg: Message) {
        let now = cx.now();
        WorkerCounters::add_own(&self.counters.recv_messages, 1);
        let size = msg.payload_len();
        msg.set_dispatch_stamp(now);
        if let Some(src) = msg.src() {
            // The name is published when it changes, not locked per message.
            if self.peer_name != Some(src) {
                self.peer_name = Some(src);
                self.conn.0.published.lock().name = Some(src);
            }
        }
        // The dispatch-throttle permit travels with the message until its
        // dispatcher returns, charged exactly what the queued message costs; the
        // policy throttlers' charge goes into the message, which holds it until
        // it is dropped (Ceph's Message holds its byte_throttler and
        // msg_throttler until destroyed); the in-progress registrations end.
        let cost = msg.queued_cost();
        // Not asked for: it was taken from the credit granted ahead, which is
        // charged now and gives a permit only to a message that needs one.
        let (mut permit, funded) = if self.recv.finish_unasked() {
            let funded = self.credit.is_held();
            if funded {
                if let Some(c) = self.credit.spend(cost) {
                    c.attach(&mut msg);
                }
            }
            (None, funded)
        } else {
            self.finish_asked(&mut msg, cost)
        };
        let conn = &self.conn;
        if let Some(at) = self.seams.hold_until(now, || conn.peer_type()) {
            if funded {
                permit = self.credit.take_dispatch(cost);
            }
            self.seams.push_held(at, (msg, permit));
        } else {
            self.deliver_funded(msg, permit, funded.then_some(cost));
        }
        self.hand_on_batch(cx, size);
    }

    /// The budget of a received message that asked for its own (see
    /// `RecvBudget::finish_unasked`), costing `cost`: its policy charge goes into `msg`;
    /// returns its dispatch permit, and whether the credit paid for it after all (then
    /// the credit charges it).
    #[inline(never)]
    fn finish_asked(&mut self, msg: &mut Message, cost: u64) -> (Option<Permit>, bool) {
        let (mut permit, mut charge) = self.recv.release_all(cost);
        let funded = permit.is_none() && self.credit.is_held();
        if funded {
            charge = self.credit.spend(cost);
        } else if let Some(p) = permit.as_mut() {
            p.settle(cost);
        }
        if let Some(c) = charge {
            c.attach(msg);
        }
        (permit, funded)
    }

    /// Ends the session and reports it (`ms_handle_reset`), as Ceph's `stop`, then
    /// `queue_reset`: what an injected delay held is delivered first (its
    /// `delay_state->flush`), then what waits for ms_dispatch goes with the session
    /// (`_stop`'s `discard_queue`), so no ms_dispatch of it follows its ms_handle_reset.
    /// Reported once: a newcomer may have reset the session from the accept path
    /// already. Until it is queued, a shutdown that finds the session ended waits.
    fn report_reset(&mut self) {
        self.flush_held_messages();
        let pending = self.env.sessions.end_session(&self.conn);
        // Dead before anyone hears of it: a dispatcher reacting to the reset (MonClient
        // dialling again) must get a new session from get_connection, and sends on this
        // handle must fail.
        self.env.sessions.forget(&self.conn);
        self.conn.set_state(ConnState::Closed);
        self.conn.0.mailbox.lock().closed = true;
        own_sends::discard(&self.conn, true);
        self.env.queue.discard(self.conn.id());
        if let Some(pending) = pending {
            self.env.queue.enqueue_event(QueueEvent::Reset(self.conn.clone()));
            drop(pending);
        }
    }

    /// A connection its dispatchers were shown before it opened (`ms_verify_authorizer`)
    /// ends without opening (its authorizer refused, its connect answered other than
    /// open, its socket handed to the session it replaces): they hear it ended, as
    /// Ceph's ProtocolV1 queues a reset for a connection faulting half-accepted and for
    /// the new connection a replace dumps. Without it, state a dispatcher keeps per
    /// connection it judged would grow by one entry per such connect. A connection no
    /// dispatcher saw (a bad banner, a connect without an authorizer) ends silently.
    pub(super) fn report_unopened_end(&mut self) {
        if self.named && !self.opened {
            self.report_reset();
        }
    }

    /// Every batch of messages delivered, hands those queued for `ms_dispatch` to the
    /// dispatch thread, and with `early_batches` writes what fast dispatch sent meanwhile
    /// (the rest of a read's burst is still to be parsed): the dispatch thread and the
    /// peer work on them while this end reads on, instead of the ends trading whole
    /// bursts. Nothing is written when nothing was sent (acks alone wait for the end of
    /// the read). Without `early_batches` a batch of `dispatch_batch` messages writes
    /// only once [`COLOCATED_WRITE_BYTES`] were sent.
    ///
    /// With `early_batches`, a batch is `dispatch_batch` messages, or fewer once it
    /// received [`EARLY_RECV_BYTES`] in a quarter of the previous read phase's burst, at
    /// least [`MIN_DISPATCH_BATCH`] ([`MIN_BUSY_DISPATCH_BATCH`] while the worker is
    /// mostly busy, [`QUICK_BUSY_DISPATCH_BATCH`] if its messages are also quick), and at
    /// least that many of this read phase's (and none once the phase has delivered
    /// `dispatch_batch`: `early_batches_pay`), so a
    /// peer with little in flight (its whole window a burst of 4–31 messages of 4 KiB)
    /// gets its first replies after 4 instead of sitting idle while we parse, and a read
    /// of fewer is answered in one write at its end — or sent: every quarter of
    /// `dispatch_batch` what fast dispatch sent moves into the protocol, and is written
    /// once it reaches [`EARLY_SENT_BYTES`] ([`QUICK_BUSY_EARLY_SENT_BYTES`] on a
    /// mostly busy worker with quick messages; what other threads sent through the
    /// mailbox: [`EARLY_BATCH_BYTES`]) and half the previous burst was delivered (a
    /// client whose small replies each make it send a 4 KiB request; small replies to
    /// small requests, at the default 64, every 32, or 64 on that busy worker). Fewer
    /// small replies than that wait:
    /// a write is a syscall and a wake-up of the peer, and those are what such a batch
    /// costs.
    fn hand_on_batch(&mut self, cx: &mut Context<'_>, size: usize) {
        self.delivered_since_batch += 1;
        self.bytes_since_batch = self.bytes_since_batch.saturating_add(size);
        self.burst += 1;
        let done = self.delivered_since_batch;
        let most = self.env.config.dispatch_batch;
        // Nearly every message: short of the next check point and of a whole batch, and
        // too few bytes for an early batch. Decided before `early` is worked out (~6
        // instructions per small message).
        if done < self.next_check && done < most && self.bytes_since_batch < EARLY_RECV_BYTES {
            return;
        }
        let early = (self.last_burst / 4).max(self.min_batch);
        // Counted in this read phase too: the batch counters carry over from earlier
        // reads, and a count carried in would cut a read of fewer than `early` messages
        // (4 requests of 4 KiB per connection among 1,000) into two writes.
        // None once this read phase delivered a whole `dispatch_batch`: the rest of its
        // replies go by the batch and the check points (see `early_batches_pay`).
        let received = done >= early
            && self.burst >= early
            && self.bytes_since_batch >= EARLY_RECV_BYTES
            && self.early_batches_pay(self.burst, most);
        // `done` is a multiple of `check_every(most)` (counted from 0 by ones).
        let at_check = done == self.next_check;
        if at_check {
            self.next_check = done.saturating_add(check_every(most));
        }
        if !received && done < most && !at_check {
            return;
        }
        // Without early batches, and for a peer on our own CPU (which runs only once
        // this thread sleeps), early batches and check points write nothing:
        // the window goes in one write, or in writes of COLOCATED_WRITE_BYTES, as a
        // single-threaded codec's does. Queued messages still go to the dispatch thread
        // batch by batch: it may run on another CPU.
        if self.batches_whole() {
            if done >= most {
                self.restart_batch_count();
                self.bytes_since_batch = 0;
                self.deliver_pending();
                self.take_sent(cx);
                if self.sent_since_batch >= COLOCATED_WRITE_BYTES {
                    self.sent_since_batch = 0;
                    self.own_sent_since_batch = 0;
                    self.flush(cx);
                }
            }
            return;
        }
        if !received && done < most {
            // A check point: take what was sent, and write it only if it is worth a write.
            self.take_sent(cx);
            // Half the previous burst first: a client whose whole window came back in
            // one read (4 KiB at depth 128: ~90 replies) sends its requests in two large
            // writes instead of five or six of 16, the cost that bounds it there; one
            // whose window is small (depth 32) still sends its first 16 early.
            let worth = self.own_sent_since_batch >= self.early_sent
                || self.sent_since_batch >= EARLY_BATCH_BYTES as u64;
            if !worth || done < self.last_burst / 2 {
                return;
            }
        }
        if let Some(began) = self.batch_clock {
            let quick = self.env.config.quick_message;
            let count = u32::try_from(done).unwrap_or(u32::MAX);
            self.quick_messages = began.elapsed() < quick.saturating_mul(count);
        }
        self.restart_batch_count();
        self.bytes_since_batch = 0;
        // What check points took is not written yet (or was, by a pump's end since).
        let taken = std::mem::take(&mut self.sent_since_batch) > 0;
        self.own_sent_since_batch = 0;
        self.deliver_pending();
        // Commands (a mark_down, a replacing socket) wait for the end of the read: they
        // change the session, which this is in the middle of parsing.
        let (moved, _) = self.take_mailbox(cx, false, false);
        if moved > 0 || taken {
            self.flush(cx);
        }
        // The next batch's clock starts after this write: it times the messages alone.
        self.batch_clock = Some(Instant::now());
    }

    /// Whether a batch may still go early for what it received ([`EARLY_RECV_BYTES`]):
    /// only while this read phase has delivered fewer than `most` (`dispatch_batch`)
    /// messages. Early batches are for a peer whose window we could drain before it
    /// gets a reply (4 KiB at depth 32: 1.10–1.15× the round trips); a read phase that
    /// has gone on for a whole batch is one whose peer keeps sending while we parse,
    /// and there each further early batch of small replies was a `writev` of ~1 KiB, a
    /// syscall and a receive on the peer's side for replies it mostly read together
    /// anyway: 4 KiB at depth 128 made ~5 of them per read phase of ~96 requests, half
    /// of both ends' writes. The rest of such a phase is answered by the batch, at the
    /// check points and at its end. `burst`: the phase's count with the message that
    /// would make the batch.
    #[inline]
    fn early_batches_pay(&self, burst: usize, most: usize) -> bool {
        burst < most
    }

    /// Whether `hand_on_batch` hands on whole batches only (of `dispatch_batch`), with
    /// no early batches and no check points: without `early_batches`, and for a peer on
    /// our own CPU (which runs only once this thread sleeps).
    #[inline]
    fn batches_whole(&mut self) -> bool {
        let config = &self.env.config;
        !config.early_batches || (config.colocated_peer_batching && self.io.peer_on_our_cpu())
    }

    /// A batch was handed on: the count of the next starts at 0, its first check point
    /// a `check_every` on.
    fn restart_batch_count(&mut self) {
        self.delivered_since_batch = 0;
        self.next_check = check_every(self.env.config.dispatch_batch);
    }

    /// Takes what was sent meanwhile (fast dispatch on this thread, the mailbox) into
    /// the protocol, counting it in `sent_since_batch` and this thread's part in
    /// `own_sent_since_batch` (written later, by the caller's rule or the pump's end).
    fn take_sent(&mut self, cx: &mut Context<'_>) {
        let (before, own_before) = (self.send_held, self.own_sent_total);
        self.take_mailbox(cx, false, false);
        self.sent_since_batch =
            self.sent_since_batch.saturating_add(self.send_held.saturating_sub(before));
        let own = self.own_sent_total.wrapping_sub(own_before);
        self.own_sent_since_batch = self.own_sent_since_batch.saturating_add(own);
    }

    /// How many more messages of `size` payload bytes are delivered before
    /// `hand_on_batch` hands a batch on or makes a check point (counting the next one):
    /// receive credit stops there, so a burst parsed without budget requests is still
    /// answered batch by batch.
    pub(super) fn messages_to_batch(&mut self, size: usize) -> usize {
        let done = self.delivered_since_batch;
        let most = self.env.config.dispatch_batch;
        // Without early batches (and for a peer on our CPU) nothing happens before a
        // whole batch: credit stopping at the early batch's point (4 requests of 4 KiB)
        // made most messages of such a burst ask for their budget one by one.
        if self.batches_whole() {
            return most.saturating_sub(done).max(1);
        }
        // The next multiple of `check_every(most)` above `done` (see `hand_on_batch`).
        let to_check = self.next_check.saturating_sub(done).min(most.saturating_sub(done)).max(1);
        let early = (self.last_burst / 4).max(self.min_batch).saturating_sub(done.min(self.burst));
        let bytes_left = EARLY_RECV_BYTES.saturating_sub(self.bytes_since_batch);
        let to_early = match size {
            0 if bytes_left > 0 => usize::MAX,
            0 => early,
            size => early.max(bytes_left.div_ceil(size)),
        };
        // Judged at the message that would make it, which counts in the burst: where
        // that one takes the burst to `dispatch_batch`, no early batch is made there,
        // and credit stopping at it made the next message ask for its budget.
        let early_pays = self.early_batches_pay(self.burst.saturating_add(to_early.max(1)), most);
        let to_early = if early_pays { to_early } else { usize::MAX };
        to_check.min(to_early).max(1)
    }

    /// Hands a received message to the dispatch layer (fast dispatch here, or the
    /// driver's batch for the dispatch queue), unless the connection was marked down
    /// meanwhile.
    fn deliver(&mut self, msg: Message, permit: Option<Permit>) {
        self.deliver_funded(msg, permit, None);
    }

    /// [`deliver`](Self::deliver) for a message that may be funded by the credit
    /// (`funded`: its cost): then it gets its dispatch permit only if it goes to the
    /// queue; fast-dispatched, its dispatch charge is released with the credit's at the
    /// end of the pump (its policy charge is in the message already).
    #[inline]
    fn deliver_funded(&mut self, msg: Message, permit: Option<Permit>, funded: Option<u64>) {
        if self.conn.takes_no_messages() {
            // Read after mark_down, or after a newcomer reset the session: never
            // delivered (the MarkDown command that closes this driver is on its way).
            return;
        }
        let credit = &mut self.credit;
        let budget = move || match funded {
            Some(cost) => credit.take_dispatch(cost),
            None => permit,
        };
        let _ = self.env.queue.deliver_into_with(&self.conn, msg, budget, &mut self.pending);
    }

    /// Queues the batch of received messages for the dispatch thread: one lock and at
    /// most one wakeup per read, not per message. Runs before anything that must come
    /// after them (a session event, a wait for dispatch budget) and when events are done.
    pub(super) fn deliver_pending(&mut self) {
        self.env.queue.enqueue_batch(&self.conn, &mut self.pending);
    }

    /// Queues a session event for the dispatchers, after the messages received before it.
    /// A dial the peer's host refused (`ECONNREFUSED`: nothing listens there) is told to
    /// the dispatchers (`ms_handle_refused`), as Ceph's `AsyncConnection` does before its
    /// fault (an OSD fails a heartbeat peer at once on it,
    /// `osd_fast_fail_on_connection_refused`). Only a notification: the session's fault
    /// policy runs as for any other failed dial (backoff, standby, or a lossy reset).
    pub(super) fn report_refused_dial(&mut self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            self.enqueue_event(QueueEvent::Refused(self.conn.clone()));
        }
    }

    fn enqueue_event(&mut self, ev: QueueEvent<crate::connection::Connection>) {
        self.flush_held_messages();
        self.env.queue.enqueue_event(ev);
    }

    /// Delivers the messages an injected delay holds back, whatever their time (none
    /// without the `fault-injection` feature).
    fn flush_held_messages(&mut self) {
        while let Some((msg, permit)) = self.seams.flush_message() {
            self.deliver(msg, permit);
        }
        self.deliver_pending();
    }

    /// Runs what an injected delay held back once its time has come (none without the
    /// `fault-injection` feature): an accept decision, the reply of a session it
    /// registered, a replace hand-off, messages.
    pub(super) fn release_held(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        if let Some(req) = self.seams.due_accept(now) {
            // A handshake that timed out meanwhile has nothing left to decide.
            if !self.machine.is_closed() {
                self.authenticate_then_decide(cx, req);
            }
        }
        let held = self.seams.due_verdict(now);
        self.answer_held(now, held);
        if let Some(incoming) = self.seams.due_take_over(now) {
            self.take_over(cx, incoming);
            if self.finished {
                return;
            }
        }
        while let Some((msg, permit)) = self.seams.due_message(now) {
            self.deliver(msg, permit);
        }
        self.deliver_pending();
    }
}
