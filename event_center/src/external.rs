//! External events: the cross-thread queue into one center, the waker that interrupts its
//! `poll`, and the coalescing of both wakeups and notifies.
//!
//! Generic over the job type (the center queues `Box<dyn FnOnce(&mut Context)>`), so this
//! layer knows nothing of handlers beyond their ids. Two halves: [`Shared`], which every
//! [`CenterHandle`](crate::CenterHandle) and the center hold (post, notify, stop,
//! counters), and the [`Inbox`] the loop alone drains.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::error;
use mio::{Registry, Waker};
use parking_lot::Mutex;

use crate::registry::{HandlerId, WAKER_TOKEN};

const LOG: &str = "msgr::center";

/// Why a request to a center could not be carried out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CenterError {
    /// The center has been told to stop (or has stopped); the work was not queued or was
    /// dropped without running.
    Stopped,
    /// [`CenterHandle::submit_to`](crate::CenterHandle::submit_to) was called on the
    /// center's own worker thread, where waiting would deadlock; the caller already holds a
    /// [`Context`](crate::Context) and can run the code directly.
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

/// One external event.
pub(crate) enum External<J> {
    /// Run this job on the worker.
    Run(J),
    /// Call the handler's `notify` if it is still live.
    Notify(HandlerId),
}

/// State shared between a center and its handles.
pub(crate) struct Shared<J> {
    id: usize,
    tx: Sender<External<J>>,
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

/// What the loop drains: the receiving end of the queue.
pub(crate) struct Inbox<J> {
    rx: Receiver<External<J>>,
    shared: Arc<Shared<J>>,
}

/// Creates the queue of center `id`, with a waker registered on `poll` under
/// [`WAKER_TOKEN`].
pub(crate) fn channel<J>(id: usize, poll: &Registry) -> io::Result<(Arc<Shared<J>>, Inbox<J>)> {
    let waker = Waker::new(poll, WAKER_TOKEN)?;
    // Unbounded on purpose: see `Shared::post`.
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
    Ok((Arc::clone(&shared), Inbox { rx, shared }))
}

impl<J> Shared<J> {
    /// The center's id.
    #[inline]
    pub(crate) fn id(&self) -> usize {
        self.id
    }

    /// This center's identity for the running-iteration mark: its address, unique while
    /// it lives (ids repeat across pools).
    #[inline]
    pub(crate) fn address(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Queues `event` and writes the waker if this is the first post since the loop last
    /// drained. The queue is unbounded on purpose: a bounded one would block a worker
    /// posting to another worker that posts back (a deadlock cycle); the memory bound
    /// belongs to the producers (the messenger's throttles).
    #[inline]
    pub(crate) fn post(&self, event: External<J>) -> Result<(), CenterError> {
        if self.is_stopping() {
            return Err(CenterError::Stopped);
        }
        self.tx.send(event).map_err(|_| CenterError::Stopped)?;
        // Only the first post since the loop last drained writes the eventfd (Ceph's
        // external-event wakeup). SeqCst pairs with the loop's clear-then-drain.
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.wake();
        }
        Ok(())
    }

    /// Queues a `Notify` for `id` unless one is queued and undelivered already.
    #[inline]
    pub(crate) fn notify(&self, id: HandlerId) -> Result<(), CenterError> {
        self.notify_with(id, |event| self.post(event))
    }

    /// [`notify`](Self::notify) from code running on the loop's own thread: queued
    /// without writing the waker. The loop looks at its queue before every `poll` and
    /// does not sleep while it is non-empty, so the eventfd write (a syscall here and a
    /// spurious return of the next `poll`) would buy nothing.
    #[inline]
    pub(crate) fn notify_from_loop(&self, id: HandlerId) -> Result<(), CenterError> {
        self.notify_with(id, |event| self.tx.send(event).map_err(|_| CenterError::Stopped))
    }

    fn notify_with(
        &self,
        id: HandlerId,
        post: impl FnOnce(External<J>) -> Result<(), CenterError>,
    ) -> Result<(), CenterError> {
        if self.is_stopping() {
            return Err(CenterError::Stopped);
        }
        let newly = self.notify_pending.lock().insert(id);
        if !newly {
            return Ok(());
        }
        let posted = post(External::Notify(id));
        if posted.is_err() {
            self.notify_pending.lock().remove(&id);
        }
        posted
    }

    /// Interrupts the loop's `poll`.
    pub(crate) fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            error!(target: LOG, "center {}: waker failed: {e}", self.id);
        }
    }

    /// Marks the center stopping and wakes it. Idempotent.
    pub(crate) fn stop(&self) {
        self.mark_stopping();
        self.wake();
    }

    /// Refuses later posts, without waking the loop (which is the caller).
    pub(crate) fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether [`stop`](Self::stop) was called.
    #[inline]
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Makes the calling thread the center's owner if it has none yet.
    #[inline]
    pub(crate) fn claim_owner(&self) {
        // Checked first: every loop iteration calls this, and `thread::current()` is a
        // reference count round trip on the thread's handle.
        if self.owner.get().is_none() {
            let me = thread::current().id();
            let _ = self.owner.get_or_init(|| me);
        }
    }

    /// Whether the calling thread is the one that first ran the loop.
    #[inline]
    pub(crate) fn is_owner(&self) -> bool {
        self.owner.get() == Some(&thread::current().id())
    }

    /// The worker's reference count. Never negative.
    #[inline]
    pub(crate) fn load(&self) -> usize {
        usize::try_from(self.load.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Adds `delta` to the reference count.
    #[inline]
    pub(crate) fn add_load(&self, delta: isize) {
        self.load.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts one panic caught on the worker and logs it.
    pub(crate) fn note_panic(&self, what: &str, payload: &(dyn std::any::Any + Send)) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<non-string panic>");
        error!(target: LOG, "center {}: {what} panicked: {msg}", self.id);
    }

    /// Panics caught on the worker.
    #[inline]
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Waker writes by posts.
    #[inline]
    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

impl<J> Inbox<J> {
    /// Whether events wait.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// How many events are queued now.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Called before a drain: a post that lands after this writes the waker again, so the
    /// next `poll` does not sleep on an event this drain leaves behind.
    #[inline]
    pub(crate) fn begin_drain(&self) {
        self.shared.wake_pending.store(false, Ordering::SeqCst);
    }

    /// The next event, if any. A `Notify` is no longer pending once popped, so a notify
    /// posted while the handler's `notify` runs is delivered again.
    #[inline]
    pub(crate) fn pop(&self) -> Option<External<J>> {
        match self.rx.try_recv() {
            Ok(External::Notify(id)) => {
                self.shared.notify_pending.lock().remove(&id);
                Some(External::Notify(id))
            }
            Ok(run) => Some(run),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Drops every queued event unrun; returns how many there were.
    pub(crate) fn discard_all(&self) -> usize {
        let dropped = self.rx.try_iter().count();
        self.shared.notify_pending.lock().clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (mio::Poll, Arc<Shared<u32>>, Inbox<u32>) {
        let poll = mio::Poll::new().expect("poll");
        let (shared, inbox) = channel(0, poll.registry()).expect("channel");
        (poll, shared, inbox)
    }

    fn id(index: u32) -> HandlerId {
        HandlerId { index, generation: 0 }
    }

    #[test]
    fn only_the_first_post_after_a_drain_wakes() {
        let (_poll, shared, inbox) = queue();
        for n in 0..3 {
            shared.post(External::Run(n)).expect("post");
        }
        assert_eq!(shared.wakeups(), 1);
        inbox.begin_drain();
        assert!(matches!(inbox.pop(), Some(External::Run(0))));
        shared.post(External::Run(3)).expect("post");
        assert_eq!(shared.wakeups(), 2, "a post after the drain began wakes again");
    }

    #[test]
    fn a_notify_is_queued_once_until_popped() {
        let (_poll, shared, inbox) = queue();
        shared.notify(id(1)).expect("notify");
        shared.notify(id(1)).expect("coalesced");
        shared.notify(id(2)).expect("another handler");
        assert!(matches!(inbox.pop(), Some(External::Notify(h)) if h == id(1)));
        shared.notify(id(1)).expect("pending again once popped");
        assert!(matches!(inbox.pop(), Some(External::Notify(h)) if h == id(2)));
        assert!(matches!(inbox.pop(), Some(External::Notify(h)) if h == id(1)));
        assert!(inbox.pop().is_none());
    }

    #[test]
    fn a_notify_from_the_loop_is_queued_and_coalesced_without_waking() {
        let (_poll, shared, inbox) = queue();
        shared.notify_from_loop(id(1)).expect("notify");
        shared.notify_from_loop(id(1)).expect("coalesced");
        shared.notify(id(1)).expect("coalesced with a foreign notify too");
        assert_eq!(shared.wakeups(), 0, "the loop's own notify writes no waker");
        assert!(matches!(inbox.pop(), Some(External::Notify(h)) if h == id(1)));
        assert!(inbox.pop().is_none());
        // A foreign notify after it still wakes the loop.
        shared.notify(id(2)).expect("notify");
        assert_eq!(shared.wakeups(), 1);
    }

    #[test]
    fn stop_refuses_posts_and_discard_forgets_pending_notifies() {
        let (_poll, shared, inbox) = queue();
        shared.notify(id(1)).expect("notify");
        shared.post(External::Run(7)).expect("post");
        assert_eq!(inbox.discard_all(), 2);
        assert!(shared.notify_pending.lock().is_empty());
        shared.stop();
        assert_eq!(shared.post(External::Run(8)), Err(CenterError::Stopped));
        assert_eq!(shared.notify(id(1)), Err(CenterError::Stopped));
        assert!(inbox.is_empty());
    }
}
