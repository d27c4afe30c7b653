//! The `ms_dispatch` thread: its loop, what it takes next, and its idle spin.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;
use protocol::session::WarnLimit;

use super::shared::{Phase, QueueEvent, Queued, Shared, ShutdownMode, Work};
use crate::dispatcher::{ChainCache, ConnectionRef};

/// Looks at the arrivals counter between clock reads while spinning.
const SPIN_CHECKS: u32 = 64;

thread_local! {
    /// The calling thread is some queue's `ms_dispatch` thread.
    static ON_DISPATCH_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller is the `ms_dispatch` thread of some [`DispatchQueue`] (any queue,
/// not only one the caller knows): code there (a dispatcher) must not join another
/// messenger's threads, which may be joining this one.
///
/// [`DispatchQueue`]: super::DispatchQueue
pub fn on_a_dispatch_thread() -> bool {
    ON_DISPATCH_THREAD.with(Cell::get)
}

/// The `ms_dispatch` thread.
pub(super) fn run<C: ConnectionRef>(s: &Shared<C>) {
    ON_DISPATCH_THREAD.with(|on| on.set(true));
    let mut spin = SpinPolicy::default();
    let mut chains = ChainCache::default();
    let limit = WarnLimit::default();
    loop {
        let work = next_work(s, &mut spin);
        if matches!(work, Work::Exit) {
            break;
        }
        // A dispatcher that panics costs its message (or event), not the thread: with the
        // thread gone nothing would be dispatched again, every queued message would keep
        // its budget and the workers would stop reading once the throttle filled. The
        // budget of the message being dispatched is released as the panic unwinds.
        let handled = catch_unwind(AssertUnwindSafe(|| handle(s, &mut chains, work)));
        if let Err(payload) = handled {
            s.panics.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = limit.take(Instant::now()) {
                let what = payload
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("<non-string panic>");
                log::error!(
                    target: "msgr::dispatch",
                    "{}: a dispatcher panicked: {what} ({suppressed} more not logged)",
                    s.name
                );
            }
        }
    }
    log::debug!(target: "msgr::dispatch", "{}: dispatch thread exits", s.name);
}

/// Delivers one item of work (never `Exit`).
fn handle<C: ConnectionRef>(s: &Shared<C>, chains: &mut ChainCache<C>, work: Work<C>) {
    match work {
        Work::Exit => {}
        Work::Event(ev) => {
            deliver_event(s, ev);
            s.events_delivered.fetch_add(1, Ordering::Relaxed);
        }
        Work::Local(q) => {
            let Queued { conn, msg, budget, since } = q;
            let compact_below = s.compact_below.load(Ordering::Relaxed);
            match s.dispatchers.preprocess_and_fast_dispatch(chains, &conn, msg, compact_below) {
                None => {
                    s.fast_dispatched.fetch_add(1, Ordering::Relaxed);
                    drop(budget);
                }
                Some(msg) => requeue_local(s, Queued { conn, msg, budget, since }),
            }
        }
        Work::Message(q) => {
            let Queued { conn, msg, budget, .. } = q;
            if conn.takes_no_messages() {
                // Taken off the queue just before a mark_down's (or a reset's) discard.
                s.discarded.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match s.dispatchers.dispatch_cached(chains, &conn, msg) {
                None => {
                    s.dispatched.fetch_add(1, Ordering::Relaxed);
                }
                Some(m) => {
                    s.untaken.fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        target: "msgr::dispatch",
                        "{}: no dispatcher took message type {} from conn {}",
                        s.name,
                        m.msg_type(),
                        conn.conn_id()
                    );
                }
            }
            // Ceph releases the dispatch throttle when ms_dispatch returns.
            drop(budget);
        }
    }
}

fn next_work<C: ConnectionRef>(s: &Shared<C>, policy: &mut SpinPolicy) -> Work<C> {
    let mut st = s.state.lock();
    let mut spun = false;
    loop {
        if let Some(ev) = st.events.pop_front() {
            return Work::Event(ev);
        }
        // A discarding shutdown took every message and the queue takes nothing since:
        // once the events queued before it are delivered (as Ceph's thread delivers its
        // queued codes after `stop` and discards only messages) nothing is left to do.
        if st.phase == Phase::Stopping(ShutdownMode::Discard) {
            return Work::Exit;
        }
        if let Some(q) = st.local.pop_front() {
            return Work::Local(q);
        }
        if let Some(q) = st.messages.pop() {
            return Work::Message(q);
        }
        if matches!(st.phase, Phase::Stopping(_) | Phase::Stopped) {
            return Work::Exit;
        }
        if !spun {
            spun = true;
            let spin = Duration::from_nanos(s.idle_spin.load(Ordering::Relaxed));
            if !spin.is_zero() && policy.should_spin() {
                // Read under the lock: a push after it bumps it.
                let seen = s.arrivals.load(Ordering::Relaxed);
                let hit = MutexGuard::unlocked(&mut st, || idle_spin(s, seen, spin));
                policy.record(hit);
                continue;
            }
        }
        s.sleeps.fetch_add(1, Ordering::Relaxed);
        s.work.wait(&mut st);
    }
}

/// Spins until a push finds the queue idle (`arrivals` moves past `seen`: returns
/// true) or `spin` has passed (false). The clock is read once per [`SPIN_CHECKS`] looks.
fn idle_spin<C: ConnectionRef>(s: &Shared<C>, seen: u64, spin: Duration) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..SPIN_CHECKS {
            if s.arrivals.load(Ordering::Acquire) != seen {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return false;
        }
    }
}

/// Whether the dispatch thread spins the next time it runs dry: always while spins pay
/// off; after a spin that found nothing it sleeps at once the next 1, 2, 4 … (at most
/// [`MAX_SPIN_BACKOFF`]) times, and one spin that finds work ends the backoff. So a
/// load whose gaps outlast the spin (a request/reply at depth 1, a quiet daemon) spins
/// at most once per [`MAX_SPIN_BACKOFF`] idle moments.
#[derive(Debug, Default)]
struct SpinPolicy {
    /// Idle moments left to sleep through without spinning.
    skip: u32,
    /// The current backoff; 0 while spins pay off.
    backoff: u32,
}

/// The longest run of idle moments without a spin (see [`SpinPolicy`]).
const MAX_SPIN_BACKOFF: u32 = 64;

impl SpinPolicy {
    fn should_spin(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn record(&mut self, hit: bool) {
        if hit {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff.saturating_mul(2)).clamp(1, MAX_SPIN_BACKOFF);
            self.skip = self.backoff;
        }
    }
}

/// A local message no fast dispatcher wanted joins the priority queue (even while
/// draining: it was accepted before shutdown).
fn requeue_local<C: ConnectionRef>(s: &Shared<C>, q: Queued<C>) {
    let mut st = s.state.lock();
    if st.phase == Phase::Stopping(ShutdownMode::Discard) {
        drop(st);
        s.discarded.fetch_add(1, Ordering::Relaxed);
        drop(q);
        return;
    }
    let priority = q.msg.priority();
    let id = q.conn.conn_id();
    st.messages.push(priority, id, q);
}

fn deliver_event<C: ConnectionRef>(s: &Shared<C>, ev: QueueEvent<C>) {
    let d = &s.dispatchers;
    match ev {
        QueueEvent::Connect(c) => d.handle_connect(&c),
        QueueEvent::Accept(c) => d.handle_accept(&c),
        QueueEvent::Reset(c) => {
            if !d.handle_reset(&c) {
                log::debug!(target: "msgr::dispatch", "{}: reset of conn {} unhandled", s.name, c.conn_id());
            }
        }
        QueueEvent::RemoteReset(c) => d.handle_remote_reset(&c),
        QueueEvent::Refused(c) => {
            if !d.handle_refused(&c) {
                log::debug!(target: "msgr::dispatch", "{}: refusal of conn {} unhandled", s.name, c.conn_id());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed spins back off exponentially up to the cap; one hit ends the backoff.
    #[test]
    fn spin_policy_backs_off_on_misses_and_resets_on_a_hit() {
        let mut p = SpinPolicy::default();
        // Spins taken (true) and skipped (false) over a run of misses.
        let mut pattern = Vec::new();
        for _ in 0..20 {
            let spin = p.should_spin();
            pattern.push(spin);
            if spin {
                p.record(false);
            }
        }
        let spins: Vec<usize> =
            pattern.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i).collect();
        assert_eq!(spins, [0, 2, 5, 10, 19]);
        let mut spins = 0;
        for _ in 0..1000 {
            if p.should_spin() {
                p.record(false);
                spins += 1;
            }
        }
        assert_eq!(p.backoff, MAX_SPIN_BACKOFF, "capped");
        assert!(spins <= 1000 / MAX_SPIN_BACKOFF as usize + 4, "{spins} spins in 1000");
        while !p.should_spin() {}
        p.record(true);
        assert!((0..10).all(|_| p.should_spin()), "a hit: spin every time again");
    }
}
