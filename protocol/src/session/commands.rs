//! [`Machine`]'s commands: what the messenger's user asks of a connection.

use std::time::Instant;

use crate::message::Message;
use crate::wire::KeepaliveStamp;

use super::event::{CloseReason, Initiator};
use super::machine::{Machine, Protocol};
use super::queue::SWAP_AT_LEAST;
use super::state::State;
use super::Session;

impl<P: Protocol> Machine<P> {
    /// The time the commands that follow act at ([`Machine::send_message`] and
    /// [`Machine::send_keepalive`] take none): a session they wake from standby starts its
    /// handshake deadline from it, and a keepalive is anchored at it. Without it they
    /// used the time of the machine's last input, for a session in standby the fault
    /// that parked it, so a wake after an idle spell found its handshake already timed
    /// out.
    pub fn set_clock(&mut self, now: Instant) {
        self.now = now;
    }

    /// Queues `msg` (priority order, HIGHEST first; FIFO within a priority). Its seq is
    /// assigned when it is framed. Wakes a connect-side standby session.
    pub fn send_message(&mut self, msg: Message) {
        if self.state.is_closed() {
            log::debug!(target: P::LOG, "{self}: message dropped, connection closed");
            return;
        }
        self.session.queue.push_back(msg);
        self.wake_from_standby();
    }

    /// Queues `msgs` for sending, in their order, as [`send_message`](Self::send_message)
    /// would one by one. Why: the driver hands over what its mailbox held in one go, and
    /// the per-call work (the closed check, the standby wake, the call itself) was ~25
    /// instructions per message at 64 B. Takes every item (dropping them when closed).
    pub fn send_messages(&mut self, msgs: impl IntoIterator<Item = Message>) {
        if self.state.is_closed() {
            log::debug!(target: P::LOG, "{self}: messages dropped, connection closed");
            msgs.into_iter().for_each(drop);
            return;
        }
        let mut any = false;
        for msg in msgs {
            self.session.queue.push_back(msg);
            any = true;
        }
        if any {
            self.wake_from_standby();
        }
    }

    /// Queues all of `msgs` as [`send_messages`](Self::send_messages) would, each first
    /// passed to `prepare` (which may set its priority), and leaves `msgs` empty (its
    /// buffer possibly swapped for one of the queue's). Why: a batch of 4 or more, all of
    /// one priority, goes into an empty lane whole, its buffer handed over, with no move
    /// per message (the driver's fast-dispatch replies: one batch per check point, of
    /// one priority): ~31 instructions fewer per 64 B round trip at depth 128.
    pub fn send_message_vec(
        &mut self,
        msgs: &mut Vec<Message>,
        mut prepare: impl FnMut(&mut Message),
    ) {
        if self.state.is_closed() {
            log::debug!(target: P::LOG, "{self}: messages dropped, connection closed");
            msgs.clear();
            return;
        }
        if msgs.is_empty() {
            return;
        }
        if msgs.len() < SWAP_AT_LEAST {
            // A few (at depth 1, one per turn): moved one by one, as `send_messages`
            // does, which costs less than handing the buffer over both ways.
            for mut msg in msgs.drain(..) {
                prepare(&mut msg);
                self.session.queue.push_back(msg);
            }
        } else {
            self.append_prepared(msgs, prepare);
        }
        self.wake_from_standby();
    }

    /// [`Self::send_message_vec`]'s batch of [`SWAP_AT_LEAST`] or more: prepared in place,
    /// and, all of one priority, handed to the queue whole.
    fn append_prepared(&mut self, msgs: &mut Vec<Message>, mut prepare: impl FnMut(&mut Message)) {
        let Some((first, rest)) = msgs.split_first_mut() else {
            return;
        };
        prepare(first);
        let prio = first.priority();
        let mut cost = first.send_cost();
        let mut uniform = true;
        for m in rest {
            prepare(m);
            uniform &= m.priority() == prio;
            cost += m.send_cost();
        }
        if uniform {
            self.session.queue.append_uniform(msgs, prio, cost);
        } else {
            for msg in msgs.drain(..) {
                self.session.queue.push_back(msg);
            }
        }
    }

    /// Tells the machine the wall clock at the time of its last input ([`Self::set_clock`]
    /// or an input's `now`): the keepalives its `keepalive_interval` timer sends are
    /// stamped from it (KEEPALIVE2 carries our wall clock, which the peer echoes into
    /// our `last_keepalive_ack`). [`Self::send_keepalive`] anchors them too. Without
    /// either, they counted from the machine's creation as if it were 1970.
    pub fn anchor_wall_clock(&mut self, wall_clock: KeepaliveStamp) {
        self.keepalive.anchor = (self.now, wall_clock);
    }

    /// Queues a keepalive carrying `wall_clock` (v1 without KEEPALIVE2: a bare
    /// KEEPALIVE). Sent once open if not open yet. One not sent yet is replaced: the
    /// peer answers the newest stamp.
    ///
    /// It does not wake a session in standby: as in Ceph, whose writer connects from
    /// STANDBY only for what `is_queued()` counts (messages, outgoing bytes) and not for
    /// its keepalive flag (`ProtocolV1`/`ProtocolV2::write_event`), a standby session
    /// dials for a message, and the keepalive goes out once that reopens it.
    pub fn send_keepalive(&mut self, wall_clock: KeepaliveStamp) {
        self.keepalive.anchor = (self.now, wall_clock);
        if self.state.is_closed() {
            return;
        }
        self.keepalive.pending = Some(wall_clock);
    }

    /// Closes the connection: an open v1 session sends CLOSE (flush
    /// [`Machine::poll_transmit`] before dropping the socket; msgr2 has no CLOSE frame);
    /// queued messages are dropped. Emits [`super::Event::Closed`] by [`Initiator::Local`].
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.state.is_closed() {
            return;
        }
        let was_open = self.state.is_open();
        self.session.reset();
        P::queue_close(self, was_open);
        self.finish(Initiator::Local, CloseReason::Requested);
    }

    /// Moves the session (seqs, queued and unacked messages) out for a replace; this
    /// machine is closed afterwards without further events.
    pub fn take_session(&mut self) -> Option<Session> {
        if self.state.is_closed() {
            return None;
        }
        self.session.requeue_sent();
        let s = std::mem::take(&mut self.session);
        log::debug!(target: P::LOG, "{self}: session taken (cs={} in={} out={})", s.connect_seq, s.in_seq, s.out_seq);
        self.ctrl.clear();
        self.rx.clear();
        self.set_state(State::Closed);
        Some(s)
    }

    /// Moves the keepalive `old`'s user asked for and `old` did not send yet into this
    /// machine, which carries `old`'s session on (a replace, after
    /// [`Self::take_session`]), with the wall-clock anchor of `old`'s stamps. Ceph's
    /// replace moves the new socket into the existing connection, whose `keepalive` flag
    /// stays set. An ack `old` owed is not moved: Ceph's replace clears the bytes the old
    /// socket had not written, that ack with them.
    pub fn adopt_keepalive(&mut self, old: &mut Self) {
        self.keepalive.anchor = old.keepalive.anchor;
        if let Some(stamp) = old.keepalive.pending.take() {
            self.keepalive.pending = Some(stamp);
        }
    }

    /// Makes the session lossy from now on (Ceph's `mark_disposable`): the next fault
    /// resets it ([`super::Event::Reset`]) instead of reconnecting, nothing more is
    /// acked, and what is sent from now on is not kept for resending. What was sent
    /// before stays until the peer acknowledges it (acks are still read) or the session
    /// ends: an msgr2 peer that reconnects first resumes the session (Ceph's
    /// `handle_reconnect` does not look at the policy), and it is sent again then, as
    /// Ceph's sent list is.
    ///
    /// A fault whose outcome was not taken yet counts as a next one: while its
    /// [`super::Event::Standby`] or [`super::Event::Reconnect`] waits in the event queue,
    /// it is decided again as a lossy session's fault (a reset, for a session that was
    /// open), those events withdrawn. Events are taken in order, so for the caller that
    /// fault comes after what it took before this call: Ceph reads a message and
    /// dispatches it (whose dispatcher may mark the connection disposable) before it
    /// reads the bytes that fault the connection, where this machine parses both before
    /// the first event is taken.
    pub fn mark_lossy(&mut self) {
        self.policy.lossy = true;
        self.lossy = true;
        self.redecide_unreported_fault();
    }
}
