//! What runs on a worker: the [`Handler`] trait the center calls, the [`Context`] it
//! passes to every callback (and to timer and external closures), and [`TimerTarget`].
//!
//! These name each other (a callback receives a `Context`; a `Context` stores, lends and
//! removes handlers), so they share this file; the containers under them (the registry,
//! the timer queue, the external queue) are generic and know none of them.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;

use crate::external::Shared;
use crate::registry::{drop_quietly, HandlerId, HandlerRegistry};
use crate::timer::{TimerId, TimerQueue};

/// Readiness of a handler's source, as reported by one `poll`.
///
/// Readiness is edge-like (mio's contract): after `readable` the handler must read until
/// `WouldBlock` (likewise write until `WouldBlock` after `writable`), or remember that it
/// stopped early and resume on its own (e.g. through [`CenterHandle::notify`](crate::CenterHandle::notify)),
/// because no new event arrives for data that was already there.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Ready {
    /// The source may be read from.
    pub readable: bool,
    /// The source may be written to.
    pub writable: bool,
    /// The read or write half was closed by the peer, or the source has an error pending;
    /// a read or write will tell which.
    pub closed: bool,
}

impl Ready {
    pub(crate) fn from_event(event: &mio::event::Event) -> Ready {
        Ready {
            readable: event.is_readable(),
            writable: event.is_writable(),
            closed: event.is_read_closed() || event.is_write_closed() || event.is_error(),
        }
    }
}

/// Code owned by a center and run on its worker thread.
///
/// The center keeps each handler in a slab and takes it out while one of these methods
/// runs, so a handler never sees itself through [`Context::with_handler`]. Each call runs
/// under `catch_unwind`: a handler that panics is logged (target `msgr::center`), counted
/// ([`CenterHandle::panics`](crate::CenterHandle::panics)) and dropped with the timers
/// armed for it, since it may be left half-updated; the worker keeps running.
pub trait Handler: AsAny + Send + 'static {
    /// Readiness for the handler's registered source (see [`Ready`] for the edge contract).
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready);

    /// A timer armed with [`TimerTarget::Handler`] for this handler fired.
    fn timer(&mut self, cx: &mut Context<'_>, id: TimerId) {
        let _ = (cx, id);
    }

    /// [`CenterHandle::notify`](crate::CenterHandle::notify) was called for this handler
    /// (several notifies before delivery are delivered once).
    fn notify(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }

    /// The center is stopping. The handler is dropped after this returns; its source is
    /// deregistered by the center.
    fn shutdown(&mut self, cx: &mut Context<'_>) {
        let _ = cx;
    }
}

/// Lets [`Context::with_handler_as`] downcast a `dyn Handler` to its concrete type.
/// Implemented for every `'static` type; never implement it yourself.
pub trait AsAny {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn std::any::Any;
    /// `self` as `&mut dyn Any`.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// A closure run on the worker: an external event or a timer's.
pub(crate) type ExternalFn = Box<dyn FnOnce(&mut Context<'_>) + Send>;

/// What a timer does when it fires.
pub enum TimerTarget {
    /// Call [`Handler::timer`] on this handler, if it is still live.
    Handler(HandlerId),
    /// Run this closure on the worker.
    Fn(Box<dyn FnOnce(&mut Context<'_>) + Send>),
}

impl std::fmt::Debug for TimerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimerTarget::Handler(id) => f.debug_tuple("Handler").field(id).finish(),
            TimerTarget::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// Everything a handler may touch through its [`Context`]; owned by the loop.
pub(crate) struct Core {
    pub(crate) handlers: HandlerRegistry<Box<dyn Handler>>,
    pub(crate) timers: TimerQueue<TimerTarget>,
    pub(crate) shared: Arc<Shared<ExternalFn>>,
    /// Read once per loop iteration, after `poll` returns.
    pub(crate) now: Instant,
    /// Whether the last judged window was mostly running (see `center::LoadMeter`).
    pub(crate) mostly_busy: bool,
    /// A clock the callback running last read as it ended, and how long it ran from
    /// its `began_at` ([`Context::ended_at`]); cleared as each callback begins.
    pub(crate) ended_at: Option<Instant>,
    /// Nanoseconds the callback that set `ended_at` ran from its `began_at`.
    pub(crate) ended_ran_ns: u64,
    /// What the iteration's callbacks reported running, summed while each began where
    /// the one before it ended (the first at `now`): their sum is then the time from
    /// `now` to the last one's end (see `center::LoadMeter`). `None` once one began at
    /// a time nobody read.
    pub(crate) ran_ns: Option<u64>,
    /// No callback ran yet since `now` was read: the next one begins at `now`.
    pub(crate) fresh: bool,
    /// When the running callback began, if known without a clock read
    /// ([`Context::began_at`]).
    pub(crate) began_at: Option<Instant>,
}

impl Core {
    /// A context for code that runs on no handler's behalf (set-up code, closures).
    pub(crate) fn context(&mut self) -> Context<'_> {
        Context { core: self, current: None }
    }

    /// The iteration's callbacks are done: the clock the last one read as it ended, if
    /// it did, for the next `poll`, with the iteration's running time if every callback
    /// began where the one before it ended.
    pub(crate) fn end_iteration(&mut self) -> Option<(Instant, Option<u64>)> {
        let at = self.ended_at.take()?;
        Some((at, self.ran_ns.take().map(|ran| ran.saturating_add(self.ended_ran_ns))))
    }

    /// A callback begins: it began at the iteration's clock if it is the iteration's
    /// first, at the clock the callback before it read as it ended if that one did, and
    /// at an unknown time otherwise (other work ran in between, untimed).
    fn begin_callback(&mut self) {
        let first = std::mem::take(&mut self.fresh);
        match self.ended_at.take() {
            Some(at) => {
                self.began_at = Some(at);
                self.ran_ns = self.ran_ns.map(|sum| sum.saturating_add(self.ended_ran_ns));
            }
            None => {
                self.began_at = first.then_some(self.now);
                if !first {
                    self.ran_ns = None;
                }
            }
        }
    }
}

/// Runs one callback of handler `id` (lent out of its slot) under `catch_unwind`.
/// Returns false if the handler was not live (or already running).
pub(crate) fn run_handler(
    core: &mut Core,
    id: HandlerId,
    what: &str,
    f: impl FnOnce(&mut dyn Handler, &mut Context<'_>),
) -> bool {
    let Some(mut handler) = core.handlers.take(id) else {
        return false;
    };
    core.begin_callback();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = Context { core: &mut *core, current: Some(id) };
        f(handler.as_mut(), &mut cx);
    }));
    match result {
        Ok(()) => core.handlers.put_back(id, handler),
        Err(payload) => {
            core.shared.note_panic(&format!("handler {id:?} {what}"), payload.as_ref());
            core.handlers.discard(id, handler);
            // Its timers go with it: a handler that removes itself cancels its own, but
            // one dropped here had no say, and its timers stayed armed until their
            // deadlines (a connection's idle timeout, up to a year), one more for every
            // connection a panicking dispatcher ended. A scan, but panics are rare.
            core.timers.retain(|t| !matches!(t, TimerTarget::Handler(h) if *h == id));
        }
    }
    true
}

/// Runs a closure (timer or external event) under `catch_unwind`.
pub(crate) fn run_closure(core: &mut Core, what: &str, f: ExternalFn) {
    core.begin_callback();
    let result = catch_unwind(AssertUnwindSafe(|| f(&mut core.context())));
    if let Err(payload) = result {
        core.shared.note_panic(what, payload.as_ref());
    }
}

/// The center as seen from code running on its worker: handlers, timers and closures.
///
/// Everything here acts at once on the owning worker; nothing locks.
pub struct Context<'a> {
    pub(crate) core: &'a mut Core,
    current: Option<HandlerId>,
}

impl Context<'_> {
    /// Monotonic time, read once per loop iteration (after `poll` returns).
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// When this callback began, if the center knows it without reading the clock: the
    /// iteration's clock ([`now`](Self::now)) for its first callback, else the clock the
    /// callback just before it read as it ended ([`ended_at`](Self::ended_at)). `None`
    /// when other work whose end nobody read ran in between (an external closure, a
    /// handler that does not time itself): a callback timing its own work reads the
    /// clock then, rather than count that work as its own.
    pub fn began_at(&self) -> Option<Instant> {
        self.core.began_at
    }

    /// Tells the center that this callback read the clock, `now`, as its last work, and
    /// ran for `ran` from [`began_at`](Self::began_at) (when that was known; otherwise
    /// `ran` is not used): if no other callback runs after it in this iteration, the
    /// center takes `now` as the moment its next `poll` begins instead of reading the
    /// clock again (the load judgement of [`mostly_busy`](Self::mostly_busy) then
    /// counts the loop's own few steps after it as waiting), and, when every callback
    /// of the iteration began where the one before it ended, the sum of their `ran` as
    /// the iteration's running time instead of subtracting clocks.
    pub fn ended_at(&mut self, now: Instant, ran: Duration) {
        self.ended_at_ns(now, u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX));
    }

    /// [`ended_at`](Self::ended_at) with `ran` in nanoseconds (saturated at `u64::MAX`),
    /// for a callback that counts its run time in them already.
    pub fn ended_at_ns(&mut self, now: Instant, ran_ns: u64) {
        self.core.ended_at = Some(now);
        self.core.ended_ran_ns = ran_ns;
    }

    /// Whether this center spent at least 80 % of its last ~2 ms running handlers
    /// rather than waiting in `poll` (false until a first window is complete): a
    /// handler can then spend less on work that only shortens a peer's wait, such as an
    /// extra write, since the thread has little time to spare.
    pub fn mostly_busy(&self) -> bool {
        self.core.mostly_busy
    }

    /// The handler being run, if this code runs on behalf of one.
    pub fn id(&self) -> Option<HandlerId> {
        self.current
    }

    /// This center's id.
    pub fn center_id(&self) -> usize {
        self.core.shared.id()
    }

    /// Registers `source` for `interest` and stores the handler built by `make`, which
    /// receives the new id and takes ownership of the source.
    ///
    /// Ownership: the handler owns its source (e.g. a `mio::net::TcpStream` it reads and
    /// writes in [`Handler::ready`]); the center keeps only the registration (the fd) and
    /// deregisters it on [`remove`](Self::remove), on a panic and at shutdown, before the
    /// handler — and so the source — is dropped. A handler must therefore keep the source
    /// open while registered; to replace it, [`deregister`](Self::deregister) first, then
    /// [`register_source`](Self::register_source) the new one.
    #[doc(alias = "create_file_event")]
    pub fn register<S, F>(
        &mut self,
        source: S,
        interest: Interest,
        make: F,
    ) -> io::Result<HandlerId>
    where
        S: AsRawFd,
        F: FnOnce(HandlerId, S) -> Box<dyn Handler>,
    {
        let fd = source.as_raw_fd();
        let id = self.core.handlers.allocate();
        let handler = match catch_unwind(AssertUnwindSafe(|| make(id, source))) {
            Ok(handler) => handler,
            Err(payload) => {
                self.core.handlers.abandon(id);
                std::panic::resume_unwind(payload);
            }
        };
        self.core.handlers.fill(id, handler);
        if let Err(e) = self.core.handlers.register_fd(id, fd, interest) {
            drop_quietly(self.core.handlers.remove(id));
            return Err(e);
        }
        Ok(id)
    }

    /// Stores a handler that has no source (yet); it can get one later through
    /// [`register_source`](Self::register_source), and receives timers and notifies.
    pub fn insert_handler(&mut self, handler: Box<dyn Handler>) -> HandlerId {
        self.core.handlers.insert(handler)
    }

    /// Registers a source owned by the live handler `id` (possibly the running one), which
    /// must not have one already. The same ownership rules as [`register`](Self::register).
    pub fn register_source<S: AsRawFd + ?Sized>(
        &mut self,
        id: HandlerId,
        source: &S,
        interest: Interest,
    ) -> io::Result<()> {
        self.core.handlers.register_fd(id, source.as_raw_fd(), interest)
    }

    /// Changes the readiness `id` is woken for. `None` stops all readiness (e.g. throttled:
    /// stop reading); setting an interest again reports the source's current readiness, so
    /// data that arrived meanwhile is not missed.
    pub fn set_interest(&mut self, id: HandlerId, interest: Option<Interest>) -> io::Result<()> {
        self.core.handlers.set_interest(id, interest)
    }

    /// Deregisters `id`'s source but keeps the handler (which still owns the source).
    pub fn deregister(&mut self, id: HandlerId) -> io::Result<()> {
        self.core.handlers.deregister(id)
    }

    /// Removes handler `id`: deregisters its source and returns it. Later readiness, timers
    /// and notifies for `id` are never delivered, even once the slot is reused. For the
    /// running handler (or one inside [`with_handler`](Self::with_handler)) this returns
    /// `None` and the handler is dropped when its callback returns. Timers armed for `id`
    /// stay queued until due and are then skipped; cancel them to free them sooner.
    #[doc(alias = "delete_file_event")]
    pub fn remove(&mut self, id: HandlerId) -> Option<Box<dyn Handler>> {
        self.core.handlers.remove(id)
    }

    /// Whether `id` names a live handler on this center.
    pub fn is_live(&self, id: HandlerId) -> bool {
        self.core.handlers.is_live(id)
    }

    /// Arms a one-shot timer `after` from now (the current clock, not the cached
    /// [`now`](Self::now)). Timers fire in deadline order, ties in creation order.
    #[inline]
    pub fn create_time_event(&mut self, after: Duration, target: TimerTarget) -> TimerId {
        let now = Instant::now();
        // An `after` too large for Instant means "never": a year out stands in for it.
        let deadline = now
            .checked_add(after)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        self.core.timers.insert(deadline, target)
    }

    /// Cancels a timer; false if it already fired or was cancelled.
    #[inline]
    pub fn delete_time_event(&mut self, id: TimerId) -> bool {
        self.core.timers.cancel(id)
    }

    /// Armed timers on this center (what [`EventCenter::timer_count`](crate::EventCenter::timer_count)
    /// reports), e.g. for a test reaching a pool's worker through
    /// [`CenterHandle::submit_to`](crate::CenterHandle::submit_to).
    pub fn timer_count(&self) -> usize {
        self.core.timers.len()
    }

    /// Live handlers on this center (what
    /// [`EventCenter::handler_count`](crate::EventCenter::handler_count) reports).
    pub fn handler_count(&self) -> usize {
        self.core.handlers.len()
    }

    /// Runs `f` against another live handler on this center (its callbacks' `cx.id()` is
    /// `id` meanwhile). `None` if `id` is not live or is the one running. A panic in `f` is
    /// treated like a panicking callback: counted, logged, the handler dropped, `None`.
    pub fn with_handler<R>(
        &mut self,
        id: HandlerId,
        f: impl FnOnce(&mut dyn Handler, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let mut out = None;
        run_handler(self.core, id, "with_handler", |h, cx| out = Some(f(h, cx)));
        out
    }

    /// Like [`with_handler`](Self::with_handler) for a handler of concrete type `H`;
    /// `None` also when `id`'s handler is of another type.
    pub fn with_handler_as<H: Handler, R>(
        &mut self,
        id: HandlerId,
        f: impl FnOnce(&mut H, &mut Context<'_>) -> R,
    ) -> Option<R> {
        self.with_handler(id, |h, cx| AsAny::as_any_mut(h).downcast_mut::<H>().map(|h| f(h, cx)))
            .flatten()
    }

    /// Delivers [`Handler::notify`] to `id` on this worker after the work now running
    /// (coalesced like [`CenterHandle::notify`](crate::CenterHandle::notify)), e.g. a
    /// handler that stopped reading early scheduling itself again. Unlike a notify through
    /// a handle it writes no waker: the loop does not sleep while its queue holds work.
    pub fn notify(&mut self, id: HandlerId) {
        // Err only when the center is stopping: then nothing will run again anyway.
        let _ = self.core.shared.notify_from_loop(id);
    }

    /// Tells this center to stop after the current iteration (see
    /// [`CenterHandle::stop`](crate::CenterHandle::stop)).
    pub fn stop(&mut self) {
        self.core.shared.stop();
    }
}
