//! The driver's end of the handle's mailbox: take messages into the machine (as many as
//! it has room for) and run commands; leave the awake state so the next send wakes us.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use event_center::Context;
use protocol::Message;

use super::events::wall_stamp;
use super::Driver;
use crate::counters::WorkerCounters;
use crate::mailbox::Command;
use crate::own_sends;

/// Messages handed to the protocol's out queue (queued + sent-but-unacked) at most; the
/// rest wait in the handle's mailbox, bounded by `max_queued_bytes`.
const MAX_IN_PROTOCOL: usize = 1024;

impl Driver {
    /// Takes the mailbox's messages (see [`Self::take_mailbox`]) and runs its commands;
    /// with `awake`, first marks the mailbox notified (see [`Self::take_mailbox`]).
    #[inline]
    pub(super) fn drain_mailbox(&mut self, cx: &mut Context<'_>, awake: bool) {
        let (_, commands) = self.take_mailbox(cx, true, awake);
        // Most drains bring no command: no loop over (and drop of) an empty list in a
        // large frame, ~60 instructions per drain at 4 KiB depth 1.
        if !commands.is_empty() {
            self.run_commands(cx, commands);
        }
    }

    /// Runs the commands a drain took, in the order they were queued.
    #[inline(never)]
    fn run_commands(&mut self, cx: &mut Context<'_>, commands: Vec<Command>) {
        let now = cx.now();
        self.machine.set_clock(now);
        for cmd in commands {
            match cmd {
                Command::Keepalive => self.machine.send_keepalive(wall_stamp()),
                Command::MarkDisposable => self.apply_disposable(),
                Command::MarkDown => {
                    self.finish(cx);
                    return;
                }
                Command::TakeOver(incoming) => {
                    if let Some(incoming) = self.seams.hold_take_over(now, incoming) {
                        self.take_over(cx, incoming);
                        if self.finished {
                            return;
                        }
                    }
                }
                #[cfg(feature = "fault-injection")]
                Command::InjectFault => self.seams.add_cut(),
                #[cfg(feature = "fault-injection")]
                Command::InjectBeforeSettle(f) => self.seams.add_before_settle(f),
                #[cfg(feature = "fault-injection")]
                Command::InjectBeforeWrite(f) => self.seams.add_before_write(f),
                #[cfg(feature = "fault-injection")]
                Command::InjectBeforeRead(f) => self.seams.add_before_read(f),
                #[cfg(feature = "fault-injection")]
                Command::InjectInSendCount(f) => self.seams.add_in_send_count(f),
            }
        }
    }

    /// Moves the mailbox's messages into the protocol's queue (as many as it has room
    /// for) and, with `with_commands`, takes its commands for the caller to run (else
    /// they stay for the next drain). With `awake` (the pump's first drain), marks the
    /// mailbox notified under the same lock: senders need not wake a running driver (see
    /// `pump`). Returns how many messages moved, and the commands.
    pub(super) fn take_mailbox(
        &mut self,
        cx: &mut Context<'_>,
        with_commands: bool,
        awake: bool,
    ) -> (usize, Vec<Command>) {
        // Only as many messages move into the protocol's queue as it has room for: the
        // rest stay in the mailbox. Wherever they are, the send bounds count them. A
        // socket making progress (writable, ACKs) brings the driver back to take more.
        let room = MAX_IN_PROTOCOL.saturating_sub(self.machine.pending_messages());
        // The messages move through scratch queues the driver keeps, so a drain costs
        // no allocation. Used in place (borrowed field by field), not taken out and put
        // back: the moves, and the drop of the empty queue each put-back replaced, were
        // ~60 instructions per drain at 4 KiB depth 1 (most drains move one message).
        let inbox = &mut self.inbox;
        let own_msgs = &mut self.own_inbox;
        // A burst's emptied mailbox queue, let go after the lock (a large free may unmap).
        let mut shed = None;
        let (closed, commands) = {
            let mut mb = self.conn.0.mailbox.lock();
            // Marked here rather than under a lock of its own just before: one lock less
            // per pump (~20 instructions), and a send that lands between the two is
            // taken by this drain either way.
            if awake {
                mb.notified = true;
            }
            // First what this thread's fast dispatch sent: all of it was sent before
            // anything now in the mailbox (see `own_sends`). None once the mailbox is
            // closed: those go with it (below).
            if !mb.closed {
                let own = own_sends::take(&self.conn, room, own_msgs);
                self.own_sent_total = self.own_sent_total.wrapping_add(own);
                self.send_held += own;
            }
            let room = room.saturating_sub(own_msgs.len());
            if (mb.messages.is_empty() || room == 0) && (!with_commands || mb.commands.is_empty()) {
                (mb.closed, Vec::new())
            } else {
                let n = room.min(mb.messages.len());
                let before = inbox.len();
                if n == mb.messages.len() && before == 0 {
                    std::mem::swap(&mut mb.messages, inbox);
                } else {
                    inbox.extend(mb.messages.drain(..n));
                    if mb.messages.is_empty() && mb.messages.capacity() > MAX_IN_PROTOCOL {
                        // Drained in pieces after a burst: its capacity is not kept for
                        // the connection's life.
                        shed = Some(std::mem::take(&mut mb.messages));
                    }
                }
                // The messages stay counted against the send bounds: as the driver's now.
                let moved: u64 = inbox.iter().skip(before).map(|(m, _)| m.send_cost()).sum();
                let queued = &self.conn.0.mailbox_cost;
                queued.store(queued.load(Relaxed).saturating_sub(moved), Relaxed);
                self.conn.0.driver_cost.fetch_add(moved, Relaxed);
                self.send_held += moved;
                let commands =
                    if with_commands { std::mem::take(&mut mb.commands) } else { Vec::new() };
                (mb.closed, commands)
            }
        };
        drop(shed);
        // What a server's session in standby holds is bounded with the others' at the
        // end of this pump: checked only as it went to standby, replies sent to it
        // afterwards (ms_dispatch answering what its peer asked before leaving) grew it
        // past the bound, and every other connection met QueueFull.
        if !(inbox.is_empty() && own_msgs.is_empty()) && self.conn.marked_server_standby() {
            self.standby_check = true;
        }
        if closed {
            // A mark_down (or a reset) closed it after they were sent: they go with it.
            own_sends::discard(&self.conn, true);
        }
        if inbox.is_empty() && own_msgs.is_empty() && commands.is_empty() {
            // Most drains find nothing (a pump drains at its start and every round):
            // none of the accounting below, nor a clock read, for them.
            return (0, commands);
        }
        let mut now = cx.now();
        // What the messages wake (a session in standby) starts from the loop's clock.
        self.machine.set_clock(now);
        let mut clock_read = false;
        let moved = own_msgs.len() + inbox.len();
        let me = (moved > 0).then(|| self.env.identity.name());
        let default_prio = self.env.default_send_priority();
        // Every message leaves with our name, whatever source it named (Ceph's
        // `send_message` stamps `header.src` on every one): one received and sent on
        // does not speak for its sender.
        let prepare = move |msg: &mut Message| {
            if let Some(me) = me {
                msg.set_src(me);
            }
            if msg.priority() == 0 {
                msg.set_priority(default_prio);
            }
        };
        // What fast dispatch sent in this iteration first (all of it was sent before
        // anything in the mailbox, see `own_sends`): it waited nothing. Each list is
        // handed over only when it holds something: a drain mostly finds one of the two
        // empty, and handing the machine an empty one cost a call and its setup.
        if !own_msgs.is_empty() {
            // Prepared in place and, all of one priority, handed over as a buffer.
            self.machine.send_message_vec(own_msgs, prepare);
        }
        if !inbox.is_empty() {
            // Summed here and added once per drain: an atomic add per message and counter
            // showed in profiles. A run of equal stamps costs one clock subtraction, not one
            // per message (~55 instructions each at 64 B).
            let mut waited_ns: u64 = 0;
            let mut last = (now, 0);
            self.machine.send_messages(inbox.drain(..).map(|(mut msg, queued_at)| {
                let ns = match last {
                    (at, ns) if at == queued_at => ns,
                    _ => {
                        // One subtraction answers both whether the stamp is older than
                        // the clock and by how much (two comparisons before it cost ~12
                        // instructions per message sent from another thread).
                        let ns = match now.checked_duration_since(queued_at) {
                            Some(waited) => nanos(waited),
                            // Sent by another thread after this loop iteration read its
                            // clock: the cached clock would count no wait at all.
                            None if !clock_read => {
                                now = Instant::now();
                                clock_read = true;
                                now.checked_duration_since(queued_at).map_or(0, nanos)
                            }
                            None => 0,
                        };
                        last = (queued_at, ns);
                        ns
                    }
                };
                waited_ns = waited_ns.saturating_add(ns);
                prepare(&mut msg);
                msg
            }));
            WorkerCounters::add_own(&self.counters.send_messages_queue_lat_ns, waited_ns);
            // The scratch queue is kept, but not at a burst's size: a mailbox handed over
            // whole (the swap above) can be far larger than what one drain takes. Cut down
            // rather than let go: under a sustained backlog the next swap hands it to the
            // mailbox, which then regrows only past MAX_IN_PROTOCOL, not from nothing.
            inbox.shrink_to(MAX_IN_PROTOCOL);
        }
        // Own sends waited nothing: they add to the count, not to the wait's sum.
        if moved > 0 {
            WorkerCounters::add_own(&self.counters.send_messages_queue_lat_count, moved as u64);
        }
        // The same for the other scratch (it changes places with the own-sends queue).
        self.own_inbox.shrink_to(MAX_IN_PROTOCOL);
        (moved, commands)
    }

    /// Leaves the awake state: returns whether the mailbox still has work this driver can
    /// take now (then it stays marked notified and the caller schedules another pump).
    /// Messages left only because the protocol queue is full need no wakeup from senders:
    /// socket progress (writable, ACKs) brings the driver back. Not for a server's
    /// session in standby, which has no socket: each send wakes it, and the standby bound
    /// counts what waits (it saw the mailbox only as messages moved, and none move into a
    /// full queue: such a session grew to its own bound).
    pub(super) fn settle_mailbox(&mut self) -> bool {
        let room = MAX_IN_PROTOCOL > self.machine.pending_messages();
        let standby = self.conn.marked_server_standby();
        let mut mb = self.conn.0.mailbox.lock();
        if mb.closed {
            return false;
        }
        let waiting = !mb.messages.is_empty();
        let more = !mb.commands.is_empty() || (room && waiting);
        mb.notified = more || (waiting && !standby);
        drop(mb);
        self.standby_check |= waiting && standby;
        more
    }
}

/// `waited` in nanoseconds, saturating: in `u64` arithmetic, which is all a wait in a
/// mailbox needs (`Duration::as_nanos` multiplies in `u128` and narrows after).
fn nanos(waited: std::time::Duration) -> u64 {
    waited.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(waited.subsec_nanos()))
}
