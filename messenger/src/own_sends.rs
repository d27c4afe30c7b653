//! Sends a connection's driver makes to its own connection while it runs: a reply from
//! `ms_fast_dispatch`, sent on the worker that is dispatching the request.
//!
//! Such a send needs none of the mailbox's locking: the driver that will take the
//! message is running on this very thread. It goes into a thread-local queue the driver
//! takes from at the same points it takes from the mailbox. Why: at 64 B a send's three
//! atomic read-modify-writes (the mailbox lock, the messenger's send budget, the unlock)
//! were ~3 % of all CPU, each stalling on the stores the reply's construction had just
//! made.
//!
//! Messages leave in the order their sends happened, whichever thread made them: a send
//! takes this path only while the mailbox is empty (read without its lock, from
//! `mailbox_cost`), so every message in this queue was sent before every message in the
//! mailbox, and the driver takes this queue first. A message another thread queued before
//! the reply (say, one whose send the dispatcher waited for) is in the mailbox, and the
//! reply then goes there behind it; one queued after the reply (a thread the dispatcher
//! told about it) follows it out of the mailbox.
//!
//! The bounds stay what they are. The message's cost goes into the connection's
//! `driver_cost` at once (the driver's own counter: only this thread writes it), so the
//! per-connection bound counts it for every sender. The messenger-wide bound is charged
//! ahead, a chunk at a time ([`SendBudget::reserve`]), and what was not used goes back
//! when the driver's turn ends: the total never passes its bound, and a reserve is held
//! only while the driver runs.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use protocol::Message;

use crate::connection::{Connection, SendError};
use crate::mailbox::SendBudget;

thread_local! {
    static OWN: RefCell<Own> = const { RefCell::new(Own::new()) };
}

/// The most messages the thread's queue keeps room for between driver turns: a turn
/// that sent more (a large burst of replies) gives its buffer back instead.
const KEPT_CAPACITY: usize = 256;

/// The thread's queue of its running driver's own sends.
struct Own {
    /// The connection whose driver runs on this thread (set by [`Scope::enter`]).
    conn: Option<Connection>,
    /// The session of `conn` was closed while its driver ran: later sends fail.
    closed: bool,
    messages: Vec<Message>,
    /// What `messages` cost (`Message::send_cost`); counted in `conn`'s `driver_cost`.
    cost: u64,
    /// Charged to the messenger-wide bound ahead of sends, and not used yet.
    reserve: u64,
}

impl Own {
    const fn new() -> Own {
        Own { conn: None, closed: false, messages: Vec::new(), cost: 0, reserve: 0 }
    }

    /// Takes the queued messages (and their cost) out, to be handled once the queue is
    /// no longer borrowed. An empty queue keeps its buffer for the driver's next turn
    /// (one no larger than [`KEPT_CAPACITY`]): taking it cost an allocation and a free
    /// per turn, ~400 instructions (2 %) per round trip at depth 1.
    fn detach(&mut self) -> Own {
        let messages = if self.messages.is_empty() && self.messages.capacity() <= KEPT_CAPACITY {
            Vec::new()
        } else {
            std::mem::take(&mut self.messages)
        };
        Own {
            conn: None,
            closed: false,
            messages,
            cost: std::mem::take(&mut self.cost),
            reserve: 0,
        }
    }

    /// Whether [`detach`](Self::detach) would hand over anything: messages, their cost,
    /// or a buffer too large to keep.
    fn holds_anything(&self) -> bool {
        !self.messages.is_empty() || self.messages.capacity() > KEPT_CAPACITY || self.cost != 0
    }

    fn is(&self, conn: &Connection) -> bool {
        self.conn.as_ref().is_some_and(|c| Arc::ptr_eq(&c.0, &conn.0))
    }

    /// Drops the queued messages with their share of the bounds.
    fn discard_messages(&mut self, conn: &Connection) {
        if self.messages.is_empty() {
            return;
        }
        let cost = std::mem::take(&mut self.cost);
        // The total first, then the connection's count, which senders admit against: the
        // count never shows room the total still holds (see `Driver::update_gauges`).
        conn.0.send_budget.adjust(cost, 0);
        sub_driver_cost(conn, cost);
        self.messages.clear();
    }

    /// Hands what the driver did not take to the front of the mailbox (sent before
    /// anything there), or drops it if the mailbox is closed, waking the driver if no
    /// wake-up is pending.
    fn spill(&mut self, conn: &Connection) {
        if self.messages.is_empty() {
            return;
        }
        let cost = std::mem::take(&mut self.cost);
        let messages = std::mem::take(&mut self.messages);
        let now = Instant::now();
        let wake = {
            let mut mb = conn.0.mailbox.lock();
            // Moved from the driver's count to the mailbox's under the lock senders check
            // both under: lowered before it, a sender in between saw the connection
            // holding less than it did and could pass its bound by what was spilled.
            sub_driver_cost(conn, cost);
            if mb.closed {
                None
            } else {
                for m in messages.into_iter().rev() {
                    mb.messages.push_front((m, now));
                }
                conn.0.mailbox_cost.store(conn.0.mailbox_cost.load(Relaxed) + cost, Relaxed);
                Some(!std::mem::replace(&mut mb.notified, true))
            }
        };
        match wake {
            None => conn.0.send_budget.adjust(cost, 0),
            Some(true) => conn.wake(),
            Some(false) => {}
        }
    }
}

/// Only the driver's thread writes `driver_cost`: a load and a store, no atomic
/// read-modify-write.
fn sub_driver_cost(conn: &Connection, cost: u64) {
    let d = &conn.0.driver_cost;
    d.store(d.load(Relaxed).saturating_sub(cost), Relaxed);
}

/// While alive, sends to `conn` from this thread go to the thread's queue. Dropped at the
/// end of the driver's turn (also when a callback unwinds): what was not taken goes to
/// the mailbox, and the unused reserve back to the bound.
pub(crate) struct Scope {
    active: bool,
}

impl Scope {
    /// Starts the turn of `conn`'s driver on this thread. A turn already running here
    /// (not expected) keeps the queue: this one then sends through the mailbox.
    pub(crate) fn enter(conn: &Connection) -> Scope {
        let active = OWN
            .try_with(|own| match own.try_borrow_mut() {
                Ok(mut own) if own.conn.is_none() => {
                    own.conn = Some(conn.clone());
                    own.closed = false;
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
        Scope { active }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let _ = OWN.try_with(|own| {
            // Taken out first: what runs below (a wake-up, drops) must find the queue free.
            let (conn, rest, reserve) = match own.try_borrow_mut() {
                Ok(mut own) => {
                    // Nearly every turn ends with the queue taken (the pump's last drain,
                    // `spill`) and its buffer small enough to keep: then `detach` would
                    // hand over nothing, and building, spilling and dropping that empty
                    // `Own` cost ~45 instructions per turn (two turns per round trip at
                    // depth 1).
                    let rest = own.holds_anything().then(|| own.detach());
                    (own.conn.take(), rest, std::mem::take(&mut own.reserve))
                }
                Err(_) => return,
            };
            if let Some(conn) = conn {
                if let Some(mut rest) = rest {
                    rest.spill(&conn);
                }
                conn.0.send_budget.adjust(reserve, 0);
            }
        });
    }
}

/// Queues `msg` (whose `Message::send_cost` is `cost`) on this thread if `conn`'s driver
/// runs here; gives it back otherwise.
#[inline]
pub(crate) fn try_send(
    conn: &Connection,
    msg: Message,
    cost: u64,
) -> Result<Result<(), SendError>, Message> {
    let mut slot = Some(msg);
    let sent = OWN.try_with(|own| {
        let mut own = own.try_borrow_mut().ok()?;
        if !own.is(conn) {
            return None;
        }
        let msg = slot.take()?;
        Some(own.send(conn, msg, cost))
    });
    match (sent, slot) {
        (Ok(Some(result)), _) => result,
        (_, Some(msg)) => Err(msg),
        // Taken but not answered: cannot happen (`send` answers or gives it back).
        (_, None) => Ok(Err(SendError::Closed)),
    }
}

impl Own {
    /// Queues `msg` (costing `cost`), or refuses it as `send_message` would; gives it
    /// back when it must go through the mailbox.
    #[inline]
    fn send(
        &mut self,
        conn: &Connection,
        msg: Message,
        cost: u64,
    ) -> Result<Result<(), SendError>, Message> {
        let shared = &conn.0;
        // Ended by another thread (a newcomer's reset, the standby bound) counts as
        // closed too: the mailbox refuses then, and a reply taken here would only be
        // dropped with the session.
        if self.closed || shared.marked_down.load(Relaxed) || shared.stopped.load(Relaxed) {
            return Ok(Err(SendError::Closed));
        }
        let queued = shared.mailbox_cost.load(Relaxed);
        if queued > 0 {
            // Behind what waits there (see the module's docs).
            return Err(msg);
        }
        let budget: &SendBudget = &shared.send_budget;
        let held = shared.driver_cost.load(Relaxed);
        if !budget.within_conn(held, cost) {
            return Ok(Err(SendError::QueueFull));
        }
        if self.reserve < cost {
            match budget.reserve(cost) {
                Some(got) => self.reserve += got,
                None => return Ok(Err(SendError::QueueFull)),
            }
        }
        self.reserve -= cost;
        shared.driver_cost.store(held + cost, Relaxed);
        self.cost += cost;
        push_inline(&mut self.messages, msg);
        Ok(Ok(()))
    }
}

/// `v.push(msg)` with the store inline in the caller and only the growth out of line:
/// `Vec::push` was left out of line here (its growth path drops the message if it
/// unwinds), a call, three saved registers and a reload of the length: ~12 instructions
/// per reply sent from fast dispatch, 0.7 % of a 64 B round trip at depth 128 under
/// callgrind.
#[inline(always)]
fn push_inline(v: &mut Vec<Message>, msg: Message) {
    if v.len() == v.capacity() {
        grow(v);
    }
    let len = v.len();
    match v.spare_capacity_mut().first_mut() {
        Some(slot) => {
            slot.write(msg);
            // SAFETY: the slot at `len`, within the capacity, was just written.
            unsafe { v.set_len(len + 1) };
        }
        // Not after the growth above; kept so no path drops the message.
        None => v.push(msg),
    }
}

/// Room for at least one more message (the growth `Vec::push` would make).
#[cold]
#[inline(never)]
fn grow(v: &mut Vec<Message>) {
    v.reserve(1);
}

/// Moves up to `room` of the messages this thread queued for `conn` onto the end of
/// `out`, in the order they were sent (they go before the mailbox's: see the module's
/// docs). Returns what they cost (already counted in `driver_cost`).
///
/// Taking them all into an empty `out` swaps the two buffers: no per-message move, and
/// this queue keeps `out`'s room for the next turn. (Moved one by one into the mailbox's
/// scratch queue, each stamped with the time, they cost ~25 instructions per message
/// at 64 B: stamped only to be found to have waited nothing.)
///
/// Inline up to the emptiness check, the moves out of line: most calls (a pump drains at
/// its start and in every round) find the queue empty, and a call to the whole function
/// paid its frame (saved registers, ~15 instructions) for nothing, four times per round
/// trip at depth 1.
#[inline]
pub(crate) fn take(conn: &Connection, room: usize, out: &mut Vec<Message>) -> u64 {
    OWN.try_with(|own| {
        let Ok(mut own) = own.try_borrow_mut() else { return 0 };
        if !own.is(conn) || own.messages.is_empty() || room == 0 {
            return 0;
        }
        take_queued(&mut own, room, out)
    })
    .unwrap_or(0)
}

/// [`take`] once the queue holds messages for this driver and it has room for some.
#[inline(never)]
fn take_queued(own: &mut Own, room: usize, out: &mut Vec<Message>) -> u64 {
    let n = room.min(own.messages.len());
    if n == own.messages.len() {
        if out.is_empty() {
            std::mem::swap(&mut own.messages, out);
        } else {
            out.append(&mut own.messages);
        }
        return std::mem::take(&mut own.cost);
    }
    let cost: u64 = own.messages[..n].iter().map(Message::send_cost).sum();
    out.extend(own.messages.drain(..n));
    own.cost -= cost;
    cost
}

/// The driver is about to leave its mailbox for others (the end of its pump): what it
/// could not take goes there. Inline: it mostly finds the queue empty (taken by the
/// pump's last drain), and the call cost more than the check.
#[inline]
pub(crate) fn spill(conn: &Connection) {
    let queued = OWN
        .try_with(|own| own.try_borrow().is_ok_and(|own| own.is(conn) && !own.messages.is_empty()))
        .unwrap_or(false);
    if queued {
        spill_queued(conn);
    }
}

/// [`spill`] once the queue holds messages for `conn`.
#[inline(never)]
fn spill_queued(conn: &Connection) {
    let rest = OWN.try_with(|own| match own.try_borrow_mut() {
        Ok(mut own) if own.is(conn) && !own.messages.is_empty() => Some(own.detach()),
        _ => None,
    });
    if let Ok(Some(mut rest)) = rest {
        rest.spill(conn);
    }
}

/// The session dropped what was sent for it and not taken (a remote reset): drop this
/// thread's queue for `conn` too; with `close`, later sends fail.
pub(crate) fn discard(conn: &Connection, close: bool) {
    let rest = OWN.try_with(|own| match own.try_borrow_mut() {
        Ok(mut own) if own.is(conn) => {
            own.closed |= close;
            Some(own.detach())
        }
        _ => None,
    });
    if let Ok(Some(mut rest)) = rest {
        rest.discard_messages(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn queue_with(capacity: usize, queued: usize) -> Own {
        let mut own = Own::new();
        own.messages.reserve_exact(capacity);
        own.messages.extend((0..queued).map(|_| Message::new(1, Bytes::new())));
        own
    }

    #[test]
    fn an_empty_queue_keeps_its_buffer_for_the_next_turn() {
        let mut own = queue_with(64, 0);
        let rest = own.detach();
        assert!(own.messages.capacity() >= 64, "the buffer stays");
        assert_eq!(rest.messages.capacity(), 0, "nothing to hand on, nothing allocated");
    }

    #[test]
    fn a_large_buffer_goes_back() {
        let mut own = queue_with(KEPT_CAPACITY + 1, 0);
        let _rest = own.detach();
        assert_eq!(own.messages.capacity(), 0);
    }

    #[test]
    fn pushed_messages_keep_their_order_across_growth() {
        let mut v = Vec::new();
        for tid in 0..40 {
            let mut msg = Message::new(1, Bytes::new());
            msg.set_tid(tid);
            push_inline(&mut v, msg);
        }
        assert_eq!(v.iter().map(Message::tid).collect::<Vec<_>>(), (0..40).collect::<Vec<_>>());
    }

    /// Sends `n` messages to `conn` through this thread's queue (its driver's turn runs).
    fn send_own(conn: &Connection, n: u64) {
        for tid in 0..n {
            let mut msg = Message::new(1, Bytes::new());
            msg.set_tid(tid);
            let cost = msg.send_cost();
            assert!(matches!(try_send(conn, msg, cost), Ok(Ok(()))), "queued on this thread");
        }
    }

    fn queued_here() -> (usize, usize) {
        OWN.with(|own| {
            let own = own.borrow();
            (own.messages.len(), own.messages.capacity())
        })
    }

    // The turn's end skips handing over an empty queue; one that still holds messages
    // (sent after the pump's last drain, or that the protocol had no room for) hands
    // them to the mailbox, in order, with their cost moved to the mailbox's count.
    #[test]
    fn a_turn_that_ends_with_sends_queued_hands_them_to_the_mailbox() {
        let conn = crate::connection::testing::detached(1, false);
        let scope = Scope::enter(&conn);
        send_own(&conn, 3);
        let cost = conn.0.driver_cost.load(Relaxed);
        assert!(cost > 0);
        drop(scope);
        let mb = conn.0.mailbox.lock();
        let tids: Vec<u64> = mb.messages.iter().map(|(m, _)| m.tid()).collect();
        assert_eq!(tids, vec![0, 1, 2]);
        assert!(mb.notified, "the spill woke the driver");
        drop(mb);
        assert_eq!(conn.0.mailbox_cost.load(Relaxed), cost);
        assert_eq!(conn.0.driver_cost.load(Relaxed), 0);
        assert_eq!(queued_here().0, 0, "nothing left on the thread");
    }

    // An emptied queue whose buffer grew past `KEPT_CAPACITY` (a burst of replies, taken
    // by the driver) still gives the buffer back at the turn's end: only a small one is
    // kept for the next turn.
    #[test]
    fn a_turn_that_took_a_burst_gives_its_large_buffer_back() {
        let conn = crate::connection::testing::detached(1, false);
        let scope = Scope::enter(&conn);
        let burst = KEPT_CAPACITY as u64 + 1;
        send_own(&conn, burst);
        // Taken behind a message already there: appended, the thread keeps its buffer.
        let mut out = vec![Message::new(1, Bytes::new())];
        let cost = take(&conn, usize::MAX, &mut out);
        assert!(cost > 0);
        assert_eq!(out.len(), burst as usize + 1);
        let (len, capacity) = queued_here();
        assert_eq!(len, 0);
        assert!(capacity > KEPT_CAPACITY, "the burst's buffer is still the thread's");
        drop(scope);
        assert_eq!(queued_here(), (0, 0), "given back at the turn's end");
        assert!(conn.0.mailbox.lock().messages.is_empty());
    }

    // `take` returns early for an empty queue; one holding messages gives up to `room`
    // of them, in order, with their cost.
    #[test]
    fn take_moves_what_the_queue_holds_up_to_the_room() {
        let conn = crate::connection::testing::detached(1, false);
        let other = crate::connection::testing::detached(2, false);
        let _scope = Scope::enter(&conn);
        let mut out = Vec::new();
        assert_eq!(take(&conn, usize::MAX, &mut out), 0, "nothing queued");
        send_own(&conn, 3);
        assert_eq!(take(&other, usize::MAX, &mut out), 0, "not the running driver's");
        assert_eq!(take(&conn, 0, &mut out), 0, "no room");
        let one = take(&conn, 1, &mut out);
        assert!(one > 0);
        assert_eq!(out.iter().map(Message::tid).collect::<Vec<_>>(), vec![0]);
        assert_eq!(take(&conn, usize::MAX, &mut out), 2 * one);
        assert_eq!(out.iter().map(Message::tid).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(queued_here().0, 0);
    }

    // `spill` returns early for an empty queue (or another connection's); one holding
    // messages hands them to the mailbox.
    #[test]
    fn spill_hands_queued_messages_to_the_mailbox() {
        let conn = crate::connection::testing::detached(1, false);
        let other = crate::connection::testing::detached(2, false);
        let _scope = Scope::enter(&conn);
        spill(&conn);
        assert!(conn.0.mailbox.lock().messages.is_empty());
        send_own(&conn, 2);
        spill(&other);
        assert_eq!(queued_here().0, 2, "not the running driver's: left");
        spill(&conn);
        assert_eq!(queued_here().0, 0);
        let tids: Vec<u64> = conn.0.mailbox.lock().messages.iter().map(|(m, _)| m.tid()).collect();
        assert_eq!(tids, vec![0, 1]);
    }

    #[test]
    fn a_queue_holds_anything_with_messages_cost_or_a_large_buffer() {
        assert!(!queue_with(KEPT_CAPACITY, 0).holds_anything());
        assert!(queue_with(8, 1).holds_anything());
        assert!(queue_with(KEPT_CAPACITY + 1, 0).holds_anything());
        let mut own = queue_with(8, 0);
        own.cost = 1;
        assert!(own.holds_anything());
    }

    #[test]
    fn queued_messages_go_with_their_cost() {
        let mut own = queue_with(8, 3);
        own.cost = 30;
        let rest = own.detach();
        assert_eq!((rest.messages.len(), rest.cost), (3, 30));
        assert_eq!((own.messages.len(), own.cost), (0, 0));
    }
}
