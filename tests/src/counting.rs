//! A counting global allocator for tests that measure what the process holds (a peer
//! trickling a frame must hold its bytes, not a read buffer per byte). Each test binary
//! that uses it installs it itself, since it counts the whole process:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: tests::counting::Counting = tests::counting::Counting;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use protocol::v2::framing::{Preamble, SegmentDesc, MAX_SEGMENTS};
use protocol::v2::Tag;

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
