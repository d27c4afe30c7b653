//! A message queued for `ms_dispatch` is compacted on the worker that read it
//! (`Message::compact`), and the worker reuses the buffer of an earlier compacted
//! message once that one is gone. That reuse must cost no allocation at all: it runs
//! once per queued message, and an allocation of the buffer's sharing bookkeeping per
//! reuse (with its free) was a tenth of the queued path's extra instructions per
//! message. A counting allocator records this thread's allocations.

#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use protocol::Message;

// Per thread, so the tests of this binary, which run in parallel, do not see each
// other's allocations. A const-initialised `Cell` of a `Copy` type: no allocation and
// no destructor, so the allocator may touch it at any time.
thread_local! {
    /// Allocations (and reallocations) made by this thread.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

struct Counting;

// SAFETY: every call is passed on to `System` unchanged; only calls are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// How many allocations `f` made on this thread.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (out, ALLOCS.with(Cell::get) - before)
}

/// A received message: its data `len` bytes of a shared read buffer.
fn received(shared: &Bytes, len: usize) -> Message {
    let mut m = Message::new(17, Bytes::new());
    m.set_data(shared.slice(..len));
    m
}

/// Steady state of the queued path: a worker compacts each message it queues, the
/// dispatch thread drops it, and the next copy reuses its buffer without allocating; a
/// small payload goes into the open chunk, beside the ones copied before it.
#[test]
fn compacting_into_a_buffer_that_came_back_allocates_nothing() {
    let shared = Bytes::from((0..64u32 << 10).map(|i| i as u8).collect::<Vec<_>>());
    for (first, lens) in [(64, [64, 60, 33, 64]), (2000, [2000, 1900, 1500, 2000])] {
        // The first copies make the buffers (and the ring that keeps their handles).
        for _ in 0..4 {
            let mut m = received(&shared, first);
            m.compact(32 << 10);
            drop(m);
        }
        for len in lens {
            let mut m = received(&shared, len);
            let ((), n) = allocations_during(|| m.compact(32 << 10));
            assert_eq!(
                n, 0,
                "compacting {len} bytes into a buffer that came back allocated {n} times"
            );
            assert_eq!(m.data(), &shared.slice(..len), "the copy reads what was received");
            drop(m);
        }
    }
    // A buffer of its own still held (a dispatcher keeps its message) is not reused: the
    // next copy gets one of its own, and the kept message still reads its own bytes.
    let mut kept = received(&shared, 2000);
    kept.compact(32 << 10);
    let mut next = received(&shared, 2000);
    let ((), n) = allocations_during(|| next.compact(32 << 10));
    assert!(n >= 1, "a copy made while the only buffer back is held allocated nothing");
    assert_ne!(next.data().as_ptr(), kept.data().as_ptr());
    assert_eq!(kept.data(), &shared.slice(..2000));
    // A small one kept holds its chunk, and the next goes beside it: no allocation, and
    // neither overwrites the other.
    let mut kept = received(&shared, 64);
    kept.compact(32 << 10);
    let mut next = received(&shared.slice(100..), 64);
    let ((), n) = allocations_during(|| next.compact(32 << 10));
    assert_eq!(n, 0, "a small copy beside a kept one allocated {n} times");
    assert_eq!(next.data().as_ptr() as usize, kept.data().as_ptr() as usize + 64);
    assert_eq!(kept.data(), &shared.slice(..64));
    assert_eq!(next.data(), &shared.slice(100..164));
}
