//! The loop: [`EventCenter`] runs one worker's `mio::Poll`, then its file handlers, due
//! timers and external events, each batch bounded.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use log::{debug, error};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll};

use crate::center_handle::CenterHandle;
use crate::external::{self, External, Inbox};
use crate::handler::{run_closure, run_handler, Context, Core, ExternalFn, Ready, TimerTarget};
use crate::registry::{drop_quietly, HandlerId, HandlerRegistry, TIMER_TOKEN, WAKER_TOKEN};
use crate::timer::{poll_timeout, TimerQueue};
use crate::timerfd::TimerFd;

const LOG: &str = "msgr::center";

thread_local! {
    /// The center whose loop iteration this thread is running (the address of its shared
    /// state) and that iteration's clock; `None` outside an iteration. Lets code on a
    /// worker use the loop's clock instead of reading it again
    /// ([`CenterHandle::loop_now`]).
    static RUNNING: Cell<Option<(usize, Instant)>> = const { Cell::new(None) };
}

/// The clock of the iteration the calling thread is running of the center whose shared
/// state is at `center`, if it is running one.
#[inline]
pub(crate) fn loop_now(center: usize) -> Option<Instant> {
    RUNNING.with(Cell::get).filter(|&(c, _)| c == center).map(|(_, now)| now)
}

/// Whether the calling thread is running an iteration of some center (code in a handler,
/// a timer or an external event): such code must not wait for another center, since
/// two workers waiting on each other deadlock.
pub fn on_a_worker() -> bool {
    RUNNING.with(Cell::get).is_some()
}

/// Marks the calling thread as running an iteration until dropped (unwinding included).
struct Running;

impl Running {
    fn enter(center: usize, now: Instant) -> Running {
        RUNNING.with(|r| r.set(Some((center, now))));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(None));
    }
}

/// How many readiness events one `poll` returns at most, and so how many file handlers one
/// iteration runs. 256 keeps the buffer at a few KiB; sources beyond it are reported by the
/// next poll (epoll keeps them ready), so nothing is lost, only deferred one iteration.
pub const EVENTS_CAPACITY: usize = 256;

/// How many external events one iteration runs at most (of those queued when its drain
/// began). A flood from other threads is then interleaved with file and timer events
/// instead of starving them; when more are queued the next poll does not sleep.
pub const EXTERNAL_BATCH: usize = 1024;

/// How many due timers one iteration fires at most (a timer re-arming itself with a zero
/// delay must not keep one iteration going forever).
pub const TIMER_BATCH: usize = 1024;

/// The furthest ahead the timerfd is armed (see [`EventCenter::run_once`]).
const LONGEST_ARMING: Duration = Duration::from_secs(24 * 3600);

/// How much of a center's time (running and in `poll`) one judgement of its load covers:
/// long enough for many loop iterations, short enough to follow a change of traffic.
const LOAD_WINDOW_NS: u64 = 2_000_000;

/// The share of a window a center must have spent running, not in `poll`, to count as
/// mostly busy ([`Context::mostly_busy`]).
const BUSY_PERCENT: u64 = 80;

/// A center's running time against its time in `poll`, judged every
/// [`LOAD_WINDOW_NS`]: the time from one `poll`'s return to the next `poll` is running.
///
/// Iterations follow one another (each runs from the previous `poll`'s return), so a
/// window's running and polling sum to the time since it began: the running is summed
/// and the window's total taken once. An iteration whose callbacks each began where the
/// one before it ended, the last one's end being where the next `poll` began
/// (`Context::ended_at`), ran for the sum of what they reported: no clock subtraction
/// then; otherwise one per iteration.
#[derive(Debug, Default)]
struct LoadMeter {
    /// The `poll` return the window's first iteration ran from, and when it is complete.
    window: Option<(Instant, Instant)>,
    running_ns: u64,
}

impl LoadMeter {
    /// Adds one iteration: the previous `poll` returned at `ran_from`, the center ran
    /// until it entered this one at `polled_from` (for `ran` if its callbacks reported
    /// it) and it returned at `now`. Returns whether the center was mostly busy once a
    /// window is complete.
    fn record(
        &mut self,
        ran_from: Instant,
        polled_from: Instant,
        ran_ns: Option<u64>,
        now: Instant,
    ) -> Option<bool> {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let (began, complete) = *self.window.get_or_insert_with(|| {
            let complete = ran_from.checked_add(Duration::from_nanos(LOAD_WINDOW_NS));
            (ran_from, complete.unwrap_or(ran_from))
        });
        let ran = match ran_ns {
            Some(ran) => ran,
            None => ns(polled_from.saturating_duration_since(ran_from)),
        };
        self.running_ns = self.running_ns.saturating_add(ran);
        if now < complete {
            return None;
        }
        let total = ns(now.saturating_duration_since(began));
        let running = self.running_ns.min(total);
        let busy = running.saturating_mul(100) >= total.saturating_mul(BUSY_PERCENT);
        *self = LoadMeter::default();
        Some(busy)
    }
}

/// One worker's event loop over its own `mio::Poll`.
///
/// Each [`run_once`](Self::run_once): the center's timerfd armed for the nearest timer
/// (only when that moves earlier) → `poll` → file
/// handlers for each ready token (at most [`EVENTS_CAPACITY`]) → due timers (at most
/// [`TIMER_BATCH`]) → external events (at most [`EXTERNAL_BATCH`]). Idle, it sleeps in
/// `poll`. The thread that first runs it is its owner (see
/// [`CenterHandle::is_current_thread`]).
pub struct EventCenter {
    poll: Poll,
    events: Events,
    inbox: Inbox<ExternalFn>,
    core: Core,
    iterations: u64,
    shut_down: bool,
    /// How long `run_once` polls without sleeping before it sleeps in `poll` (zero: it
    /// sleeps at once). See [`set_busy_poll`](Self::set_busy_poll).
    busy_poll: Duration,
    /// Wakes `poll` for the nearest time event (see the `timerfd` module); `None` if it
    /// could not be made, and then `poll` times out instead.
    timerfd: Option<TimerFd>,
    /// The deadline `timerfd` is armed for, until it fires.
    timer_armed: Option<Instant>,
    /// Running against polling, for [`Context::mostly_busy`].
    load: LoadMeter,
    /// The clock the last callback of the previous iteration read as it ended, for
    /// [`run`](Self::run)'s next iteration (see `Context::ended_at`), and how long that
    /// iteration ran if its callbacks said (see `LoadMeter`).
    poll_from: Option<Instant>,
    /// The nanoseconds the previous iteration ran, when its callbacks said.
    poll_ran_ns: Option<u64>,
}

impl fmt::Debug for EventCenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCenter")
            .field("id", &self.core.shared.id())
            .field("handlers", &self.core.handlers.len())
            .field("timers", &self.core.timers.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl EventCenter {
    /// Creates a center with its own poll and waker. `id` is reported by
    /// [`CenterHandle::id`] and in logs.
    pub fn new(id: usize) -> io::Result<EventCenter> {
        let poll = Poll::new()?;
        let (shared, inbox) = external::channel(id, poll.registry())?;
        let registry = poll.registry().try_clone()?;
        let timerfd = match TimerFd::new().and_then(|t| {
            let fd = t.raw_fd();
            poll.registry().register(&mut SourceFd(&fd), TIMER_TOKEN, Interest::READABLE)?;
            Ok(t)
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                debug!(target: LOG, "center {id}: no timerfd ({e}): poll times out for timers");
                None
            }
        };
        Ok(EventCenter {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            inbox,
            core: Core {
                handlers: HandlerRegistry::new(registry, id),
                timers: TimerQueue::default(),
                shared,
                now: Instant::now(),
                mostly_busy: false,
                ended_at: None,
                ran_ns: None,
                ended_ran_ns: 0,
                fresh: false,
                began_at: None,
            },
            iterations: 0,
            shut_down: false,
            busy_poll: Duration::ZERO,
            timerfd,
            timer_armed: None,
            load: LoadMeter::default(),
            poll_from: None,
            poll_ran_ns: None,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> CenterHandle {
        CenterHandle::new(std::sync::Arc::clone(&self.core.shared))
    }

    /// Runs `f` with a [`Context`] directly (set-up code on the owning thread, tests).
    pub fn with_context<R>(&mut self, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        f(&mut self.core.context())
    }

    /// Before sleeping in `poll`, poll without sleeping for up to `spin` (bounded by the
    /// nearest timer), one `epoll_wait(0)` after another: an event that arrives meanwhile
    /// is taken without the wakeup a sleeping thread needs (the scheduler's wakeup and,
    /// on another CPU, an interrupt), which is most of a depth-1 round trip's latency.
    /// The cost is CPU: an idle worker burns `spin` after each burst of work, so a
    /// worker that sees a message every few microseconds never sleeps. Zero (the
    /// default) turns it off.
    pub fn set_busy_poll(&mut self, spin: Duration) {
        self.busy_poll = spin;
    }

    /// Loop iterations run so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Live handlers.
    pub fn handler_count(&self) -> usize {
        self.core.handlers.len()
    }

    /// Armed timers.
    pub fn timer_count(&self) -> usize {
        self.core.timers.len()
    }

    /// One loop iteration, sleeping in `poll` at most `max_wait` (`None`: until an event or
    /// the nearest timer). Returns `poll`'s error, if any (EINTR is not an error).
    pub fn run_once(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        // The caller may have spent any time since the last iteration: read the clock.
        self.poll_from = None;
        self.iterate(max_wait)
    }

    /// [`run_once`](Self::run_once), for [`run`](Self::run): taking the clock the last
    /// callback of the iteration just before read as it ended, if it did.
    fn iterate(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        self.core.shared.claim_owner();

        // One clock read before `poll` (or the one the last callback of the previous
        // iteration made as it ended, `Context::ended_at`: nothing but the loop's own
        // steps ran since), for the nearest timer's arming and the busy-poll
        // limit, and to split what the center ran since the last `poll` from what it
        // waited (or spun) in this one (arming the timerfd, when it moves earlier, then
        // counts as waiting: one syscall, against a read on every iteration).
        let (polled_from, ran) = match self.poll_from.take() {
            Some(at) => (at, self.poll_ran_ns),
            None => (Instant::now(), None),
        };
        let mut timeout = max_wait;
        if let Some(deadline) = self.core.timers.next_deadline() {
            // Due (`poll_timeout` zero) or no timerfd to wake us: `poll` times out. Compared
            // first: the subtraction is for that case only.
            if deadline <= polled_from || !self.arm_timer(polled_from, deadline) {
                let until = poll_timeout(polled_from, deadline);
                timeout = Some(timeout.map_or(until, |t| t.min(until)));
            }
        }
        if !self.inbox.is_empty() || self.core.shared.is_stopping() {
            timeout = Some(Duration::ZERO);
        }
        let spinning = timeout != Some(Duration::ZERO) && !self.busy_poll.is_zero();
        let timeout = if spinning { self.spin(polled_from, timeout)? } else { Some(timeout) };
        if let Some(timeout) = timeout {
            self.poll_events(timeout)?;
        }
        let ran_from = self.core.now;
        self.core.now = Instant::now();
        self.core.fresh = true;
        self.core.ran_ns = Some(0);
        if let Some(busy) = self.load.record(ran_from, polled_from, ran, self.core.now) {
            self.core.mostly_busy = busy;
        }
        self.iterations += 1;
        let _running = Running::enter(self.core.shared.address(), self.core.now);

        for event in self.events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            if event.token() == TIMER_TOKEN {
                if let Some(t) = &self.timerfd {
                    t.clear();
                }
                self.timer_armed = None;
                continue;
            }
            let id = HandlerId::from_token(event.token());
            // Skip stale tokens and sources whose interest was dropped earlier in this batch.
            if self.core.handlers.wants_readiness(id) {
                let ready = Ready::from_event(event);
                run_handler(&mut self.core, id, "ready", |h, cx| h.ready(cx, ready));
            }
        }

        let now = self.core.now;
        for _ in 0..TIMER_BATCH {
            let Some((timer, target)) = self.core.timers.pop_due(now) else { break };
            match target {
                TimerTarget::Handler(id) => {
                    run_handler(&mut self.core, id, "timer", |h, cx| h.timer(cx, timer));
                }
                TimerTarget::Fn(f) => run_closure(&mut self.core, "timer closure", f),
            }
        }

        // Cleared before draining: a post that lands after it wakes the next poll.
        self.inbox.begin_drain();
        // What was queued when the drain began, no more: a handler that notifies itself
        // to come back "after other work" (a driver whose read budget ran out on a
        // readable socket, the listener after a batch of accepts) is run again in the
        // next iteration, after its worker's file events and timers, as Ceph swaps its
        // external events once per iteration. Popped in this drain, it ran up to
        // EXTERNAL_BATCH times in a row while every other connection of the worker
        // waited.
        // Asked whether any wait first: most iterations find none, and counting a
        // channel's events costs twice as much as seeing it empty.
        let queued = if self.inbox.is_empty() { 0 } else { self.inbox.len().min(EXTERNAL_BATCH) };
        for _ in 0..queued {
            match self.inbox.pop() {
                Some(External::Run(f)) => run_closure(&mut self.core, "external event", f),
                Some(External::Notify(id)) => {
                    run_handler(&mut self.core, id, "notify", |h, cx| h.notify(cx));
                }
                None => break,
            }
        }
        // Set only if the callback that ran last read the clock as it ended.
        (self.poll_from, self.poll_ran_ns) = match self.core.end_iteration() {
            Some((at, ran)) => (Some(at), ran),
            None => (None, None),
        };
        Ok(())
    }

    /// Makes sure the timerfd fires by `deadline` (it is in the future): arms it unless
    /// it is armed for then or earlier already (waking early costs one empty iteration;
    /// arming costs a syscall, so a later timer never re-arms it). Returns false when
    /// there is no timerfd or arming failed: then `poll` must time out instead.
    fn arm_timer(&mut self, now: Instant, deadline: Instant) -> bool {
        let Some(t) = &self.timerfd else { return false };
        if self.timer_armed.is_some_and(|armed| armed <= deadline) {
            return true;
        }
        // A day at most: the kernel refuses the far future (an idle center re-arms daily).
        let after = deadline.saturating_duration_since(now).min(LONGEST_ARMING);
        match t.arm(after) {
            Ok(()) => {
                self.timer_armed = Some(now + after);
                true
            }
            Err(e) => {
                let id = self.core.shared.id();
                debug!(target: LOG, "center {id}: arming the timerfd failed: {e}");
                self.timer_armed = None;
                false
            }
        }
    }

    /// One `poll` into `self.events`; EINTR leaves them empty.
    fn poll_events(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Polls without sleeping until an event arrives or the busy-poll time (at most
    /// `timeout`, both counted from `start`, the iteration's clock read before `poll`) is
    /// over. Returns `None` when events arrived, else what is left of `timeout` for the
    /// sleeping `poll`.
    fn spin(
        &mut self,
        start: Instant,
        timeout: Option<Duration>,
    ) -> io::Result<Option<Option<Duration>>> {
        let limit = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
        loop {
            self.poll_events(Some(Duration::ZERO))?;
            if !self.events.is_empty() {
                return Ok(None);
            }
            let spent = start.elapsed();
            if spent >= limit {
                return Ok(Some(timeout.map(|t| t.saturating_sub(spent))));
            }
            std::hint::spin_loop();
        }
    }

    /// Runs until [`CenterHandle::stop`], then [`shutdown`](Self::shutdown). A `poll` error
    /// ends the loop too (after the shutdown) and is returned.
    pub fn run(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        while !self.core.shared.is_stopping() {
            if let Err(e) = self.iterate(None) {
                error!(target: LOG, "center {}: poll failed: {e}", self.core.shared.id());
                result = Err(e);
                break;
            }
        }
        self.shutdown();
        result
    }

    /// Stops the center for good: marks it stopping, gives every live handler
    /// [`Handler::shutdown`](crate::Handler::shutdown), deregisters and drops them, drops
    /// armed timers and queued external events unrun (a waiting `submit_to` then gets
    /// [`CenterError::Stopped`](crate::CenterError::Stopped)). Idempotent; also run on drop.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.core.shared.mark_stopping();
        let ids = self.core.handlers.live_ids();
        for &id in &ids {
            run_handler(&mut self.core, id, "shutdown", |h, cx| h.shutdown(cx));
            drop_quietly(self.core.handlers.remove(id));
        }
        // Handlers created by other handlers' shutdown get no callback: bounded work.
        for id in self.core.handlers.live_ids() {
            drop_quietly(self.core.handlers.remove(id));
        }
        self.core.timers.clear();
        let dropped = self.inbox.discard_all();
        debug!(
            target: LOG,
            "center {}: shut down, {} handlers, {dropped} external events dropped",
            self.core.shared.id(),
            ids.len()
        );
    }
}

impl Drop for EventCenter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_meter_takes_the_running_time_reported_instead_of_the_clocks() {
        let t0 = Instant::now();
        // The clocks say the center ran for nothing: 2 ms in `poll`.
        let mut meter = LoadMeter::default();
        assert_eq!(meter.record(t0, t0, None, t0 + 2 * MS), Some(false));
        // The same clocks with 1.9 ms of running reported: busy.
        let mut meter = LoadMeter::default();
        assert_eq!(meter.record(t0, t0, Some(1_900_000), t0 + 2 * MS), Some(true));
        // Unreported, the clocks give the running: 1.9 ms of 2.
        let mut meter = LoadMeter::default();
        assert_eq!(meter.record(t0, t0 + MS * 19 / 10, None, t0 + 2 * MS), Some(true));
        // Summed over the window's iterations, none judged before it is complete.
        let mut meter = LoadMeter::default();
        assert_eq!(meter.record(t0, t0 + MS, None, t0 + MS), None);
        assert_eq!(meter.record(t0 + MS, t0 + MS, Some(100_000), t0 + 2 * MS), Some(false));
    }

    #[test]
    fn callbacks_chained_by_their_ends_report_the_iterations_running_time() {
        let mut center = EventCenter::new(0).expect("center");
        let core = &mut center.core;
        let t0 = core.now;
        let begin = |core: &mut Core| {
            core.fresh = true;
            core.ran_ns = Some(0);
        };
        let ends_at = |at: Instant, ran: Duration| -> ExternalFn {
            Box::new(move |cx: &mut Context<'_>| cx.ended_at(at, ran))
        };
        // Each began where the one before ended: the iteration ran for their sum.
        begin(core);
        run_closure(core, "first", ends_at(t0 + MS, MS));
        run_closure(core, "second", ends_at(t0 + 3 * MS, 2 * MS));
        assert_eq!(core.end_iteration(), Some((t0 + 3 * MS, Some(3_000_000))));
        // One that did not say when it ended: the next began at an unknown time, and
        // the center measures the iteration from the clocks.
        begin(core);
        run_closure(core, "first", ends_at(t0 + MS, MS));
        run_closure(core, "untimed", Box::new(|_cx: &mut Context<'_>| {}));
        run_closure(core, "last", ends_at(t0 + 3 * MS, MS));
        assert_eq!(core.end_iteration(), Some((t0 + 3 * MS, None)));
        // The last callback untimed: the next `poll` reads the clock.
        begin(core);
        run_closure(core, "first", ends_at(t0 + MS, MS));
        run_closure(core, "untimed", Box::new(|_cx: &mut Context<'_>| {}));
        assert_eq!(core.end_iteration(), None);
    }

    /// The meter as it was before callbacks reported their running time: the polling
    /// summed, the running the window's total less it.
    #[derive(Default)]
    struct ClockMeter {
        window: Option<(Instant, Instant)>,
        polling_ns: u64,
    }

    impl ClockMeter {
        fn record(
            &mut self,
            ran_from: Instant,
            polled_from: Instant,
            now: Instant,
        ) -> Option<bool> {
            let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let (began, complete) = *self
                .window
                .get_or_insert_with(|| (ran_from, ran_from + Duration::from_nanos(LOAD_WINDOW_NS)));
            self.polling_ns += ns(now.saturating_duration_since(polled_from));
            if now < complete {
                return None;
            }
            let total = ns(now.saturating_duration_since(began)).max(self.polling_ns);
            let running = total - self.polling_ns;
            let busy = running * 100 >= total * BUSY_PERCENT;
            *self = ClockMeter::default();
            Some(busy)
        }
    }

    /// Iterations of timed callbacks (as the driver's pump: from `began_at` when known,
    /// else from a clock of its own), untimed ones (closures) and gaps between them, in
    /// any mix, on a clock of their own: the meter fed what the callbacks reported
    /// judges every window as the clocks alone did (the running time reported is the
    /// clocks' exactly, or not reported).
    #[test]
    fn the_reported_running_time_judges_every_window_as_the_clocks_did() {
        let mut center = EventCenter::new(0).expect("center");
        let core = &mut center.core;
        let t0 = core.now;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let us = |n: u64| Duration::from_micros(n);
        let (mut meter, mut clocks) = (LoadMeter::default(), ClockMeter::default());
        let (mut reported, mut busy, mut idle) = (0, 0, 0);
        // The previous iteration's `poll` return and where its callbacks ended.
        let mut ran_from = t0;
        let mut poll_from: Option<(Instant, Option<u64>)> = None;
        let mut clock = t0;
        for _ in 0..20_000 {
            // The next `poll`: from the last callback's end, else a clock read after the
            // loop's own steps; then it waits a while (often not at all).
            let (polled_from, ran) = match poll_from {
                Some((at, ran)) => (at, ran),
                None => (clock + us(next(3)), None),
            };
            let now = polled_from + us([0, 0, 1, 20, 300][next(5) as usize]);
            let verdict = meter.record(ran_from, polled_from, ran, now);
            assert_eq!(
                verdict,
                clocks.record(ran_from, polled_from, now),
                "ran_from {:?} polled_from {:?} ran {ran:?} now {:?}",
                ran_from - t0,
                polled_from - t0,
                now - t0,
            );
            reported += usize::from(ran.is_some());
            match verdict {
                Some(true) => busy += 1,
                Some(false) => idle += 1,
                None => {}
            }
            core.now = now;
            core.fresh = true;
            core.ran_ns = Some(0);
            ran_from = now;
            clock = now;
            for _ in 0..next(4) {
                // The loop's own steps between callbacks, then the callback.
                clock += us(next(2));
                let start = clock;
                clock += us(1 + next(200));
                let end = clock;
                if next(4) == 0 {
                    run_closure(core, "untimed", Box::new(|_cx: &mut Context<'_>| {}));
                } else {
                    let timed: ExternalFn = Box::new(move |cx: &mut Context<'_>| {
                        let began = cx.began_at().unwrap_or(start);
                        cx.ended_at(end, end.saturating_duration_since(began));
                    });
                    run_closure(core, "timed", timed);
                }
            }
            poll_from = core.end_iteration();
        }
        // Both verdicts reached, many iterations measured from what was reported.
        assert!(busy > 10 && idle > 10 && reported > 1000, "{busy} {idle} {reported}");
    }
}
