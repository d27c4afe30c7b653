//! Counting for tests: a counting global allocator, and dispatchers that count or
//! forward what they are given.
//!
//! The allocator is for tests that measure what the process holds (a peer trickling a
//! frame must hold its bytes, not a read buffer per byte). Each test binary that uses it
//! installs it itself, since it counts the whole process:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tests::counting::Counting = tests::counting::Counting;
//! ```
//!
//! [`Forward`] hands something of each message (its tid, the message itself) to the
//! test over a channel; [`Count`] only counts them. Both take every message, by fast
//! dispatch on the worker or from the dispatch queue, as the test asks.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_channel::Sender;
use messenger::{Connection, Dispatched, Dispatcher};
use protocol::v2::framing::{Preamble, SegmentDesc, MAX_SEGMENTS};
use protocol::v2::Tag;
use protocol::Message;

/// Bytes allocated and not yet freed, in the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// What the process holds now, as far as [`Counting`] (installed) has seen.
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

/// `System`'s allocator, counting the bytes it holds in [`live_bytes`].
pub struct Counting;

// SAFETY: every call is System's, with the caller's arguments; only the count is ours.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

/// The preamble of a msgr2 HELLO announcing a segment of 60 KiB (within the 64 KiB of a
/// control frame): a server waits for all of it before it looks at it, so a peer can
/// trickle it.
pub fn large_hello_preamble() -> [u8; 32] {
    let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
    segments[0] = SegmentDesc { len: 60 << 10, align: 8 };
    Preamble { tag: Tag::HELLO, num_segments: 1, segments, flags: 0 }.to_bytes()
}

/// A dispatcher that sends what its `pick` makes of each message to the test, and keeps
/// nothing: every message is taken (dropped, or moved into what is sent). With `fast`
/// it takes every message by fast dispatch, on the worker (an OSD's ops); otherwise in
/// `ms_dispatch`, from the dispatch queue.
pub struct Forward<T> {
    tx: Sender<T>,
    fast: bool,
    /// What to send for a message; `None`: nothing (the message is dropped unreported).
    pick: Box<dyn Fn(Message) -> Option<T> + Send + Sync>,
}

impl<T: Send + 'static> Forward<T> {
    /// Sends `pick(msg)` of every message to `tx`.
    pub fn new(
        tx: Sender<T>,
        fast: bool,
        pick: impl Fn(Message) -> T + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::filtered(tx, fast, move |msg| Some(pick(msg)))
    }

    /// Sends `pick(msg)` to `tx` where it is `Some`; the other messages are dropped
    /// unreported.
    pub fn filtered(
        tx: Sender<T>,
        fast: bool,
        pick: impl Fn(Message) -> Option<T> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Forward { tx, fast, pick: Box::new(pick) })
    }

    fn take(&self, msg: Message) {
        if let Some(t) = (self.pick)(msg) {
            let _ = self.tx.send(t);
        }
    }
}

impl Forward<u64> {
    /// Sends the tid of every message to `tx`.
    pub fn tids(tx: Sender<u64>, fast: bool) -> Arc<Self> {
        Self::new(tx, fast, |msg| msg.tid())
    }
}

impl<T: Send + 'static> Dispatcher<Connection> for Forward<T> {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        self.take(msg);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, msg: Message) {
        self.take(msg);
    }
}

/// A dispatcher that counts the messages it is given and drops them: every message by
/// fast dispatch on the worker with `fast`, in `ms_dispatch` otherwise.
pub struct Count {
    /// Messages dispatched so far.
    seen: AtomicU64,
    fast: bool,
}

impl Count {
    /// A count at 0.
    pub fn new(fast: bool) -> Arc<Self> {
        Arc::new(Count { seen: AtomicU64::new(0), fast })
    }

    /// The messages dispatched so far (a relaxed read: no order with anything else).
    pub fn count(&self) -> u64 {
        self.seen.load(Relaxed)
    }
}

impl Dispatcher<Connection> for Count {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        self.seen.fetch_add(1, Relaxed);
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        self.fast
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        self.fast
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        self.seen.fetch_add(1, Relaxed);
    }
}
