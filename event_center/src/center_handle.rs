//! [`CenterHandle`]: how other threads reach one center (post, notify, submit, stop).

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::external::{CenterError, External, Shared};
use crate::handler::{Context, ExternalFn};
use crate::registry::HandlerId;

/// A cheap, cloneable way to reach one center from any thread.
#[derive(Clone)]
pub struct CenterHandle {
    shared: Arc<Shared<ExternalFn>>,
}

impl fmt::Debug for CenterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CenterHandle")
            .field("id", &self.shared.id())
            .field("load", &self.load())
            .finish_non_exhaustive()
    }
}

impl CenterHandle {
    pub(crate) fn new(shared: Arc<Shared<ExternalFn>>) -> CenterHandle {
        CenterHandle { shared }
    }

    /// The center's id (its worker index in a [`WorkerPool`](crate::WorkerPool)).
    #[inline]
    pub fn id(&self) -> usize {
        self.shared.id()
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
        self.shared.post(External::Run(Box::new(f)))
    }

    /// Delivers [`Handler::notify`](crate::Handler::notify) to `id` on the worker if it is
    /// still live then.
    ///
    /// Coalesced: while a notify for `id` is queued and undelivered, further ones are
    /// no-ops. A notify posted while the handler's `notify` runs is delivered again.
    #[inline]
    pub fn notify(&self, id: HandlerId) -> Result<(), CenterError> {
        self.shared.notify(id)
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
                    cx.core.shared.note_panic("submitted closure", payload.as_ref());
                    Err(CenterError::Panicked)
                }
            };
            // The caller may have gone away; nothing to do then.
            let _ = tx.send(reply);
        })?;
        // A disconnect means the closure was dropped unrun: the center stopped.
        rx.recv().unwrap_or(Err(CenterError::Stopped))
    }

    /// The clock of the loop iteration the calling thread is running of this center
    /// (what [`Context::now`] returns there), or `None` when the caller is not inside an
    /// iteration of this center. Code that may run on the worker (a send from
    /// `ms_fast_dispatch`) can stamp with it instead of reading the clock again; the
    /// stamp is as old as the iteration.
    #[inline]
    pub fn loop_now(&self) -> Option<std::time::Instant> {
        crate::center::loop_now(self.shared.address())
    }

    /// Whether the calling thread is the one running this center.
    #[inline]
    pub fn is_current_thread(&self) -> bool {
        self.shared.is_owner()
    }

    /// The worker's reference count (connections placed on it). Never negative.
    #[inline]
    pub fn load(&self) -> usize {
        self.shared.load()
    }

    /// Adds `delta` (usually +1 or -1) to the reference count.
    #[inline]
    pub fn add_load(&self, delta: isize) {
        self.shared.add_load(delta);
    }

    /// How many handler callbacks, timer closures and external events panicked here.
    #[inline]
    pub fn panics(&self) -> u64 {
        self.shared.panics()
    }

    /// How many posts wrote the waker. Only the first post after the loop drained its queue
    /// does, so this stays far below the number of posts under load.
    #[inline]
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups()
    }

    /// Tells the center to stop: `run` returns after giving every handler
    /// [`Handler::shutdown`](crate::Handler::shutdown). Later posts return
    /// [`CenterError::Stopped`]. Idempotent.
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Whether [`stop`](Self::stop) was called.
    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.shared.is_stopping()
    }
}

impl Context<'_> {
    /// A handle to this center, for other threads.
    pub fn handle(&self) -> CenterHandle {
        CenterHandle::new(Arc::clone(&self.core.shared))
    }
}
