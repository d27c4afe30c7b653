//! The per-worker loop: [`EventCenter`], the [`Context`] handed to handlers, and the
//! [`CenterHandle`] other threads use to reach it.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{debug, error};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Waker};

use crate::handler::WAKER_TOKEN;
use crate::timer::{poll_timeout, TimerQueue};
use crate::{Handler, HandlerId, Ready, TimerId, TimerTarget};

const LOG: &str = "msgr::center";

/// How many readiness events one `poll` returns at most, and so how many file handlers one
/// iteration runs. 256 keeps the buffer at a few KiB; sources beyond it are reported by the
/// next poll (epoll keeps them ready), so nothing is lost, only deferred one iteration.
pub const EVENTS_CAPACITY: usize = 256;

/// How many external events one iteration runs at most. A flood from other threads is then
/// interleaved with file and timer events instead of starving them; when more are queued the
/// next poll does not sleep.
pub const EXTERNAL_BATCH: usize = 1024;

/// How many due timers one iteration fires at most (a timer re-arming itself with a zero
/// delay must not keep one iteration going forever).
pub const TIMER_BATCH: usize = 1024;

/// Why a request to a center could not be carried out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CenterError {
    /// The center has been told to stop (or has stopped); the work was not queued or was
    /// dropped without running.
    Stopped,
    /// [`CenterHandle::submit_to`] was called on the center's own worker thread, where waiting
    /// would deadlock; the caller already holds a [`Context`] and can run the code directly.
    OnOwnThread,
    /// The submitted closure panicked (the panic was logged and counted).
    Panicked,
}

impl fmt::Display for CenterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CenterError::Stopped => f.write_str("event center stopped"),
            CenterError::OnOwnThread => {
                f.write_str("submit_to called on the center's own worker thread")
            }
            CenterError::Panicked => f.write_str("submitted closure panicked"),
        }
    }
}

impl std::error::Error for CenterError {}

type ExternalFn = Box<dyn FnOnce(&mut Context<'_>) + Send>;

enum External {
    Run(ExternalFn),
    Notify(HandlerId),
}

/// State shared between a center and its handles.
struct Shared {
    id: usize,
    tx: Sender<External>,
    waker: Waker,
    /// Set by the first post after the loop cleared it; only that post writes the waker.
    wake_pending: AtomicBool,
    stopping: AtomicBool,
    load: AtomicIsize,
    panics: AtomicU64,
    /// Waker writes by posts (after coalescing).
    wakeups: AtomicU64,
    /// The thread that first ran the loop.
    owner: OnceLock<ThreadId>,
    /// Handlers with a `Notify` queued and not yet delivered; bounded by the live handlers.
    notify_pending: Mutex<HashSet<HandlerId>>,
}

/// A cheap, cloneable way to reach one center from any thread.
#[derive(Clone)]
pub struct CenterHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for CenterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CenterHandle")
            .field("id", &self.shared.id)
            .field("load", &self.load())
            .finish_non_exhaustive()
    }
}

impl CenterHandle {
    /// The center's id (its worker index in a [`WorkerPool`](crate::WorkerPool)).
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// Queues `f` to run on the worker and wakes it if needed.
    ///
    /// Events from one sender run in the order posted. Returns [`CenterError::Stopped`] once
    /// the center was told to stop; an event accepted just before the stop may be dropped
    /// unrun (its captures are dropped). The queue itself is unbounded on purpose: a bounded
    /// one would block a worker posting to another worker that posts back (a deadlock
    /// cycle); the memory bound belongs to the producers (the messenger's throttles).
    pub fn dispatch_event_external(
        &self,
        f: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) -> Result<(), CenterError> {
        self.post(External::Run(Box::new(f)))
    }

    /// Delivers [`Handler::notify`] to `id` on the worker if it is still live then.
    ///
    /// Coalesced: while a notify for `id` is queued and undelivered, further ones are
    /// no-ops. A notify posted while the handler's `notify` runs is delivered again.
    pub fn notify(&self, id: HandlerId) -> Result<(), CenterError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(CenterError::Stopped);
        }
        let newly = lock(&self.shared.notify_pending).insert(id);
        if !newly {
            return Ok(());
        }
        let posted = self.post(External::Notify(id));
        if posted.is_err() {
            lock(&self.shared.notify_pending).remove(&id);
        }
        posted
    }

    /// Runs `f` on the worker and waits for its result.
    ///
    /// Called on the center's own worker thread it returns [`CenterError::OnOwnThread`] at
    /// once instead of running inline: code on the worker already has a `&mut Context` (the
    /// only way to touch the center) and should call `f(cx)` itself; waiting would deadlock.
    /// Do not call it from one worker to another either (two workers waiting on each other
    /// deadlock); post with [`dispatch_event_external`](Self::dispatch_event_external).
    /// Blocks until the center runs `f`, so the center must be running (a pool's always is).
    pub fn submit_to<R, F>(&self, f: F) -> Result<R, CenterError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Context<'_>) -> R + Send + 'static,
    {
        if self.is_current_thread() {
            return Err(CenterError::OnOwnThread);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.dispatch_event_external(move |cx| {
            let result = catch_unwind(AssertUnwindSafe(|| f(cx)));
            let reply = match result {
                Ok(value) => Ok(value),
                Err(payload) => {
                    cx.core.note_panic("submitted closure", payload.as_ref());
                    Err(CenterError::Panicked)
                }
            };
            // The caller may have gone away; nothing to do then.
            let _ = tx.send(reply);
        })?;
        // A disconnect means the closure was dropped unrun: the center stopped.
        rx.recv().unwrap_or(Err(CenterError::Stopped))
    }

    /// Whether the calling thread is the one running this center.
    pub fn is_current_thread(&self) -> bool {
        self.shared.owner.get() == Some(&thread::current().id())
    }

    /// The worker's reference count (connections placed on it). Never negative.
    pub fn load(&self) -> usize {
        usize::try_from(self.shared.load.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Adds `delta` (usually +1 or -1) to the reference count.
    pub fn add_load(&self, delta: isize) {
        self.shared.load.fetch_add(delta, Ordering::Relaxed);
    }

    /// How many handler callbacks, timer closures and external events panicked here.
    pub fn panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// How many posts wrote the waker. Only the first post after the loop drained its queue
    /// does, so this stays far below the number of posts under load.
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// Tells the center to stop: `run` returns after giving every handler
    /// [`Handler::shutdown`]. Later posts return [`CenterError::Stopped`]. Idempotent.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    fn post(&self, event: External) -> Result<(), CenterError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(CenterError::Stopped);
        }
        self.shared.tx.send(event).map_err(|_| CenterError::Stopped)?;
        // Only the first post since the loop last drained writes the eventfd (Ceph's
        // external-event wakeup). SeqCst pairs with the loop's clear-then-drain.
        if !self.shared.wake_pending.swap(true, Ordering::SeqCst) {
            self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
            self.wake();
        }
        Ok(())
    }

    fn wake(&self) {
        if let Err(e) = self.shared.waker.wake() {
            error!(target: LOG, "center {}: waker failed: {e}", self.shared.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded sets stay consistent even if a holder panicked (single insert/remove).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A source's registration, kept by the center while the handler owns the source itself.
struct Registration {
    fd: RawFd,
    /// `None`: deregistered from epoll (mio has no empty interest), re-added on demand.
    interest: Option<Interest>,
}

struct Slot {
    generation: u32,
    /// Allocated to the handler with `generation`.
    live: bool,
    /// `None` while the handler runs (taken out) or when the slot is free.
    handler: Option<Box<dyn Handler>>,
    registration: Option<Registration>,
}

/// Everything a handler may touch through its [`Context`].
struct Core {
    registry: Registry,
    slots: Vec<Slot>,
    /// Free slot indices. A slot freed while its handler runs joins only when it returns.
    free: Vec<u32>,
    live: usize,
    timers: TimerQueue,
    shared: Arc<Shared>,
    now: Instant,
}

impl Core {
    /// Ids of every live handler, in slot order.
    fn live_ids(&self) -> Vec<HandlerId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, s)| HandlerId { index: i as u32, generation: s.generation })
            .collect()
    }

    fn slot(&self, id: HandlerId) -> Option<&Slot> {
        self.slots.get(id.index as usize).filter(|s| s.live && s.generation == id.generation)
    }

    fn slot_mut(&mut self, id: HandlerId) -> Option<&mut Slot> {
        self.slots.get_mut(id.index as usize).filter(|s| s.live && s.generation == id.generation)
    }

    /// Allocates a live slot whose handler is not yet set.
    fn allocate(&mut self) -> HandlerId {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.live = true;
                return HandlerId { index, generation: slot.generation };
            }
        }
        // Indices stay below u32::MAX (the waker's token) in practice: that many boxed
        // handlers would need far more memory than any host has.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX - 1);
        self.slots.push(Slot { generation: 0, live: true, handler: None, registration: None });
        HandlerId { index, generation: 0 }
    }

    fn insert(&mut self, handler: Box<dyn Handler>) -> HandlerId {
        let id = self.allocate();
        if let Some(slot) = self.slot_mut(id) {
            slot.handler = Some(handler);
        }
        id
    }

    fn register_fd(&mut self, id: HandlerId, fd: RawFd, interest: Interest) -> io::Result<()> {
        let slot = self.slot_mut(id).ok_or_else(stale)?;
        if slot.registration.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "handler has a source"));
        }
        self.registry.register(&mut SourceFd(&fd), id.token(), interest)?;
        if let Some(slot) = self.slots.get_mut(id.index as usize) {
            slot.registration = Some(Registration { fd, interest: Some(interest) });
        }
        Ok(())
    }

    fn set_interest(&mut self, id: HandlerId, interest: Option<Interest>) -> io::Result<()> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
            .ok_or_else(stale)?;
        let reg = slot.registration.as_mut().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "handler has no registered source")
        })?;
        let fd = reg.fd;
        match (reg.interest, interest) {
            (Some(_), Some(new)) => {
                self.registry.reregister(&mut SourceFd(&fd), id.token(), new)?
            }
            (None, Some(new)) => self.registry.register(&mut SourceFd(&fd), id.token(), new)?,
            (Some(_), None) => self.registry.deregister(&mut SourceFd(&fd))?,
            (None, None) => {}
        }
        reg.interest = interest;
        Ok(())
    }

    fn deregister(&mut self, id: HandlerId) -> io::Result<()> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)
            .ok_or_else(stale)?;
        match slot.registration.take() {
            Some(Registration { fd, interest: Some(_) }) => {
                self.registry.deregister(&mut SourceFd(&fd))
            }
            _ => Ok(()),
        }
    }

    /// Frees `id`'s slot: deregisters, bumps the generation. Returns the handler unless it
    /// is running (then whoever runs it frees the slot when it returns).
    fn remove(&mut self, id: HandlerId) -> Option<Box<dyn Handler>> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.live && s.generation == id.generation)?;
        if let Some(Registration { fd, interest: Some(_) }) = slot.registration.take() {
            // The handler still owns the source, so the fd is still the one we registered.
            if let Err(e) = self.registry.deregister(&mut SourceFd(&fd)) {
                debug!(target: LOG, "center {}: deregister {id:?}: {e}", self.shared.id);
            }
        }
        slot.live = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.live -= 1;
        let handler = slot.handler.take();
        if handler.is_some() {
            self.free.push(id.index);
        }
        handler
    }

    fn take(&mut self, id: HandlerId) -> Option<Box<dyn Handler>> {
        self.slot_mut(id)?.handler.take()
    }

    /// Returns a handler after it ran; drops it instead if it was removed meanwhile.
    fn put_back(&mut self, id: HandlerId, handler: Box<dyn Handler>) {
        match self.slot_mut(id) {
            Some(slot) => slot.handler = Some(handler),
            None => {
                self.free.push(id.index);
                drop_quietly(handler);
            }
        }
    }

    /// Drops a handler that panicked, freeing its slot.
    fn discard(&mut self, id: HandlerId, handler: Box<dyn Handler>) {
        if self.slot(id).is_some() {
            // Running, so `remove` does not push the slot: it is pushed below.
            let _ = self.remove(id);
        }
        self.free.push(id.index);
        drop_quietly(handler);
    }

    fn note_panic(&self, what: &str, payload: &(dyn std::any::Any + Send)) {
        self.shared.panics.fetch_add(1, Ordering::Relaxed);
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<non-string panic>");
        error!(target: LOG, "center {}: {what} panicked: {msg}", self.shared.id);
    }
}

fn stale() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no live handler with this id")
}

fn drop_quietly<T>(value: T) {
    // A Drop impl that panics must not take the worker down either.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

/// Runs one callback of handler `id` (taken out of its slot) under `catch_unwind`.
/// Returns false if the handler was not live (or already running).
fn run_handler(
    core: &mut Core,
    id: HandlerId,
    what: &str,
    f: impl FnOnce(&mut dyn Handler, &mut Context<'_>),
) -> bool {
    let Some(mut handler) = core.take(id) else {
        return false;
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = Context { core: &mut *core, current: Some(id) };
        f(handler.as_mut(), &mut cx);
    }));
    match result {
        Ok(()) => core.put_back(id, handler),
        Err(payload) => {
            core.note_panic(&format!("handler {id:?} {what}"), payload.as_ref());
            core.discard(id, handler);
        }
    }
    true
}

/// Runs a closure (timer or external event) under `catch_unwind`.
fn run_closure(core: &mut Core, what: &str, f: ExternalFn) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = Context { core: &mut *core, current: None };
        f(&mut cx);
    }));
    if let Err(payload) = result {
        core.note_panic(what, payload.as_ref());
    }
}

/// The center as seen from code running on its worker: handlers, timers and closures.
///
/// Everything here acts at once on the owning worker; nothing locks.
pub struct Context<'a> {
    core: &'a mut Core,
    current: Option<HandlerId>,
}

impl Context<'_> {
    /// Monotonic time, read once per loop iteration (after `poll` returns).
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The handler being run, if this code runs on behalf of one.
    pub fn id(&self) -> Option<HandlerId> {
        self.current
    }

    /// This center's id.
    pub fn center_id(&self) -> usize {
        self.core.shared.id
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
        let id = self.core.allocate();
        let handler = match catch_unwind(AssertUnwindSafe(|| make(id, source))) {
            Ok(handler) => handler,
            Err(payload) => {
                let _ = self.core.remove(id);
                self.core.free.push(id.index);
                std::panic::resume_unwind(payload);
            }
        };
        if let Some(slot) = self.core.slot_mut(id) {
            slot.handler = Some(handler);
        }
        if let Err(e) = self.core.register_fd(id, fd, interest) {
            drop_quietly(self.core.remove(id));
            return Err(e);
        }
        Ok(id)
    }

    /// Stores a handler that has no source (yet); it can get one later through
    /// [`register_source`](Self::register_source), and receives timers and notifies.
    pub fn insert_handler(&mut self, handler: Box<dyn Handler>) -> HandlerId {
        self.core.insert(handler)
    }

    /// Registers a source owned by the live handler `id` (possibly the running one), which
    /// must not have one already. The same ownership rules as [`register`](Self::register).
    pub fn register_source<S: AsRawFd + ?Sized>(
        &mut self,
        id: HandlerId,
        source: &S,
        interest: Interest,
    ) -> io::Result<()> {
        self.core.register_fd(id, source.as_raw_fd(), interest)
    }

    /// Changes the readiness `id` is woken for. `None` stops all readiness (e.g. throttled:
    /// stop reading); setting an interest again reports the source's current readiness, so
    /// data that arrived meanwhile is not missed.
    pub fn set_interest(&mut self, id: HandlerId, interest: Option<Interest>) -> io::Result<()> {
        self.core.set_interest(id, interest)
    }

    /// Deregisters `id`'s source but keeps the handler (which still owns the source).
    pub fn deregister(&mut self, id: HandlerId) -> io::Result<()> {
        self.core.deregister(id)
    }

    /// Removes handler `id`: deregisters its source and returns it. Later readiness, timers
    /// and notifies for `id` are never delivered, even once the slot is reused. For the
    /// running handler (or one inside [`with_handler`](Self::with_handler)) this returns
    /// `None` and the handler is dropped when its callback returns. Timers armed for `id`
    /// stay queued until due and are then skipped; cancel them to free them sooner.
    #[doc(alias = "delete_file_event")]
    pub fn remove(&mut self, id: HandlerId) -> Option<Box<dyn Handler>> {
        self.core.remove(id)
    }

    /// Whether `id` names a live handler on this center.
    pub fn is_live(&self, id: HandlerId) -> bool {
        self.core.slot(id).is_some()
    }

    /// Arms a one-shot timer `after` from now (the current clock, not the cached
    /// [`now`](Self::now)). Timers fire in deadline order, ties in creation order.
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
    pub fn delete_time_event(&mut self, id: TimerId) -> bool {
        self.core.timers.cancel(id)
    }

    /// A handle to this center, for other threads.
    pub fn handle(&self) -> CenterHandle {
        CenterHandle { shared: Arc::clone(&self.core.shared) }
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
        self.with_handler(id, |h, cx| {
            crate::AsAny::as_any_mut(h).downcast_mut::<H>().map(|h| f(h, cx))
        })
        .flatten()
    }

    /// Tells this center to stop after the current iteration (see [`CenterHandle::stop`]).
    pub fn stop(&mut self) {
        self.handle().stop();
    }
}

/// One worker's event loop over its own `mio::Poll`.
///
/// Each [`run_once`](Self::run_once): timeout from the nearest timer → `poll` → file
/// handlers for each ready token (at most [`EVENTS_CAPACITY`]) → due timers (at most
/// [`TIMER_BATCH`]) → external events (at most [`EXTERNAL_BATCH`]). Idle, it sleeps in
/// `poll`. The thread that first runs it is its owner (see
/// [`CenterHandle::is_current_thread`]).
pub struct EventCenter {
    poll: Poll,
    events: Events,
    rx: Receiver<External>,
    core: Core,
    iterations: u64,
    shut_down: bool,
}

impl fmt::Debug for EventCenter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCenter")
            .field("id", &self.core.shared.id)
            .field("handlers", &self.core.live)
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
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        let registry = poll.registry().try_clone()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            id,
            tx,
            waker,
            wake_pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            load: AtomicIsize::new(0),
            panics: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            owner: OnceLock::new(),
            notify_pending: Mutex::new(HashSet::new()),
        });
        Ok(EventCenter {
            poll,
            events: Events::with_capacity(EVENTS_CAPACITY),
            rx,
            core: Core {
                registry,
                slots: Vec::new(),
                free: Vec::new(),
                live: 0,
                timers: TimerQueue::default(),
                shared,
                now: Instant::now(),
            },
            iterations: 0,
            shut_down: false,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> CenterHandle {
        CenterHandle { shared: Arc::clone(&self.core.shared) }
    }

    /// Runs `f` with a [`Context`] directly (set-up code on the owning thread, tests).
    pub fn with_context<R>(&mut self, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let mut cx = Context { core: &mut self.core, current: None };
        f(&mut cx)
    }

    /// Loop iterations run so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Live handlers.
    pub fn handler_count(&self) -> usize {
        self.core.live
    }

    /// Armed timers.
    pub fn timer_count(&self) -> usize {
        self.core.timers.len()
    }

    /// One loop iteration, sleeping in `poll` at most `max_wait` (`None`: until an event or
    /// the nearest timer). Returns `poll`'s error, if any (EINTR is not an error).
    pub fn run_once(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        let me = thread::current().id();
        let _ = self.core.shared.owner.get_or_init(|| me);

        let mut timeout = max_wait;
        if let Some(deadline) = self.core.timers.next_deadline() {
            let until = poll_timeout(Instant::now(), deadline);
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        if !self.rx.is_empty() || self.core.shared.stopping.load(Ordering::Acquire) {
            timeout = Some(Duration::ZERO);
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.events.clear(),
            Err(e) => return Err(e),
        }
        self.core.now = Instant::now();
        self.iterations += 1;

        for event in self.events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            let id = HandlerId::from_token(event.token());
            // Skip stale tokens and sources whose interest was dropped earlier in this batch.
            let active = self
                .core
                .slot(id)
                .and_then(|s| s.registration.as_ref())
                .is_some_and(|r| r.interest.is_some());
            if active {
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

        // Clear before draining: a post that lands after the clear wakes the next poll.
        self.core.shared.wake_pending.store(false, Ordering::SeqCst);
        for _ in 0..EXTERNAL_BATCH {
            match self.rx.try_recv() {
                Ok(External::Run(f)) => run_closure(&mut self.core, "external event", f),
                Ok(External::Notify(id)) => {
                    lock(&self.core.shared.notify_pending).remove(&id);
                    run_handler(&mut self.core, id, "notify", |h, cx| h.notify(cx));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Runs until [`CenterHandle::stop`], then [`shutdown`](Self::shutdown). A `poll` error
    /// ends the loop too (after the shutdown) and is returned.
    pub fn run(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        while !self.core.shared.stopping.load(Ordering::Acquire) {
            if let Err(e) = self.run_once(None) {
                error!(target: LOG, "center {}: poll failed: {e}", self.core.shared.id);
                result = Err(e);
                break;
            }
        }
        self.shutdown();
        result
    }

    /// Stops the center for good: marks it stopping, gives every live handler
    /// [`Handler::shutdown`], deregisters and drops them, drops armed timers and queued
    /// external events unrun (a waiting `submit_to` then gets [`CenterError::Stopped`]).
    /// Idempotent; also run on drop.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        self.core.shared.stopping.store(true, Ordering::Release);
        let ids = self.core.live_ids();
        for &id in &ids {
            run_handler(&mut self.core, id, "shutdown", |h, cx| h.shutdown(cx));
            drop_quietly(self.core.remove(id));
        }
        // Handlers created by other handlers' shutdown get no callback: bounded work.
        for id in self.core.live_ids() {
            drop_quietly(self.core.remove(id));
        }
        self.core.timers.clear();
        let dropped = self.rx.try_iter().count();
        lock(&self.core.shared.notify_pending).clear();
        debug!(
            target: LOG,
            "center {}: shut down, {} handlers, {dropped} external events dropped",
            self.core.shared.id,
            ids.len()
        );
    }
}

impl Drop for EventCenter {
    fn drop(&mut self) {
        self.shutdown();
    }
}
