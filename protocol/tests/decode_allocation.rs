//! Decoding peer bytes allocates in proportion to the bytes received: a count read from
//! the wire must not size an allocation by itself. A counting allocator records the
//! largest single allocation made while a hostile blob is decoded.

#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use protocol::messages::MonMap;

/// The largest allocation asked for since the last [`largest_since`] reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is passed on to `System` unchanged; only sizes are recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation `f` made (other threads of the test binary may add
/// small ones; none is near the sizes checked here).
fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    (out, LARGEST.load(Ordering::Relaxed))
}

/// A pre-MONENC monmap of version `v` (1 or 2) whose legacy address list claims as many
/// entries as the smallest entry size allows in `junk` bytes, followed by junk.
fn legacy_monmap(v: u8, min_entry: usize, junk: usize) -> Vec<u8> {
    let mut b = vec![v, 0];
    b.extend([0x11; 16]); // fsid
    b.extend(1u32.to_le_bytes()); // epoch
    b.extend(u32::try_from(junk / min_entry).unwrap().to_le_bytes());
    // Junk whose first string length (v2) or address marker (v1) cannot decode.
    b.extend(std::iter::repeat_n(0xff, junk));
    b
}

// A monmap's legacy address list of a million claimed entries in 1 MiB of junk fails
// to decode without reserving room for the entries: each takes ~64 bytes decoded but
// only 5 (or 10) on the wire, and a 64 MiB front once asked for ~860 MB at once.
#[test]
fn a_monmaps_claimed_entries_do_not_size_its_allocation() {
    for (v, min_entry) in [(1u8, 10usize), (2, 5)] {
        let blob = legacy_monmap(v, min_entry, 1 << 20);
        let (res, largest) = largest_during(|| MonMap::decode(&blob));
        assert!(res.is_err(), "v{v}: junk decoded");
        assert!(
            largest <= 2 * blob.len(),
            "v{v}: a {largest}-byte allocation for {} bytes",
            blob.len()
        );
    }
}
