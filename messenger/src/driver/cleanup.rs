//! How a driver ends, whichever way it ends: closed, its socket handed to another
//! session, or dropped by the event center after a panic.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use dispatch::QueueEvent;
use event_center::Context;

use super::Driver;
use crate::own_sends;

impl Driver {
    /// Closes for good: unregisters, drops queued messages, releases the handler.
    pub(super) fn finish(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        // Counted before the socket closes, so whoever sees the close sees the counts.
        self.count_peer_issues();
        self.close_socket(cx);
        self.cleanup();
        self.cancel_timer(cx);
        if let Some(id) = self.id {
            cx.remove(id);
        }
    }

    /// Cancels the driver's timer, if armed: a removed handler's timers are only skipped
    /// when due, and until then stay in the worker's timer set.
    pub(super) fn cancel_timer(&mut self, cx: &mut Context<'_>) {
        if let Some((tid, _)) = self.timer.take() {
            cx.delete_time_event(tid);
        }
    }

    /// Undoes everything this driver stands for outside itself: the handle is closed and
    /// its queued messages dropped (with their share of the send bounds), the session
    /// table forgets it, its gauges, the worker's load and the active-connection count
    /// go back, a `replacing` mark on its own session is cleared, and what an injected
    /// delay held is dropped. Needs no `Context`, so `Drop` can run it; runs once.
    pub(super) fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.release();
        self.leave();
    }

    /// The first half of [`Driver::cleanup`]: the handle closed, what it held let go.
    fn release(&mut self) {
        self.cleaned = true;
        self.finished = true;
        self.count_peer_issues();
        own_sends::discard(&self.conn, true);
        self.update_gauges();
        // Its dispatch is over whichever way it ended (a refusal, a hand-over, a close
        // after its reset): a mark_down_all that listed it just before reports no reset
        // for it, as Ceph's stop(true) reports none for a closed connection.
        let _ = self.conn.stop_messages();
        self.conn.close();
        self.conn.set_replacing(&mut self.conn.0.published.lock(), false);
        self.recv = Default::default();
        self.credit = Default::default();
        self.seams.discard();
    }

    /// The second half: the connection leaves the table and the counts (after which
    /// `wait` may return).
    fn leave(&mut self) {
        self.env.sessions.unregister(&self.conn);
        self.counters.active_connections.fetch_sub(1, Relaxed);
        self.center.add_load(-1);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Dropped without closing: a callback panicked (a user's fast dispatcher, say)
        // and the event center discarded the driver, or the center stopped. Without
        // this the session table would keep a dead session that swallows the peer's
        // reconnects.
        // Opened once, whatever it is now: a session reconnecting (Connecting) was heard
        // of by its dispatchers as much as an open one; so was a connection they were
        // shown in `ms_verify_authorizer`.
        let env = Arc::clone(&self.env);
        let pending =
            if self.opened || self.named { env.sessions.end_session(&self.conn) } else { None };
        log::warn!(target: "msgr::conn", "{}: driver dropped without closing; cleaning up", self.machine);
        self.release();
        if let Some(pending) = pending {
            // The session's state is gone with the driver: for the dispatchers this is
            // a reset, with what it received and no dispatcher saw gone too (as any
            // reset's), and reported once. Queued before the connection leaves the
            // table, as a reset is on every other path: `wait` may return once it has.
            self.env.queue.discard(self.conn.id());
            self.env.queue.enqueue_event(QueueEvent::Reset(self.conn.clone()));
            drop(pending);
        }
        self.leave();
    }
}
