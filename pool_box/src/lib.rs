//! [`PoolBox`]: a box whose allocation, when it is dropped, goes to a bounded
//! thread-local free list ([`FreeList`]) for the next [`PoolBox::new`] on that thread,
//! instead of back to the allocator.
//!
//! Why: the messenger builds and drops one message per message sent or received, each
//! one heap allocation of a couple of hundred bytes (a message is one pointer to its
//! fields, so that its twenty-odd moves copy 8 bytes). At 64 B payloads glibc's malloc
//! and free were ~250 instructions of a round trip's ~4,800. Kept in a free list of the
//! thread that dropped it, the allocation is taken back by the next message built there
//! with a few loads and stores.
//!
//! The list is bounded ([`KEEP`] allocations per type and thread; a drop beyond that
//! frees), so a thread that only drops (a dispatcher that never replies) holds at most
//! that much; a box dropped on a thread other than its creator's goes to the dropping
//! thread's list. A box dropped while its thread's list is being torn down (another
//! thread-local's destructor) frees its allocation, as a `Box` would.
//!
//! The contents are dropped in place when the box is (their own heap with them); only
//! the raw allocation is kept. `Deref` is a plain pointer read: no `Option`, no check.
//!
//! A crate of its own so that `protocol` stays `forbid(unsafe_code)`, as `short_crc`
//! is for the crc kernels.

use std::alloc::{self, Layout};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::thread::LocalKey;

/// Allocations a [`FreeList`] keeps at most (~50 KiB of messages): a burst of
/// acknowledged messages (up to a connection's whole window, 128 at the bench's depth)
/// is dropped at once, before the replies that reuse them are decoded; a list smaller
/// than the burst frees the rest, and those messages are malloc'ed again, from glibc's
/// slow path.
pub const KEEP: usize = 256;

/// A type whose [`PoolBox`]es share a thread-local [`FreeList`]: implement it by
/// declaring the list and naming it.
///
/// ```
/// use asyncmsgr_pool_box::{FreeList, PoolBox, Pooled};
/// struct Fields { a: u64, v: Vec<u8> }
/// thread_local! {
///     static FIELDS: FreeList<Fields> = const { FreeList::new() };
/// }
/// impl Pooled for Fields {
///     fn free_list() -> &'static std::thread::LocalKey<FreeList<Self>> {
///         &FIELDS
///     }
/// }
/// let b = PoolBox::new(Fields { a: 1, v: vec![2] });
/// assert_eq!(b.a + u64::from(b.v[0]), 3);
/// ```
pub trait Pooled: Sized + 'static {
    /// This type's list on the calling thread.
    fn free_list() -> &'static LocalKey<FreeList<Self>>;
}

/// Up to [`KEEP`] unused allocations for a `T`, of the thread that holds it. Freed when
/// the thread exits.
///
/// The list has no destructor of its own (a thread-local without one is accessed with
/// no check of its state): its first keep registers a teardown hook with this thread's
/// one `Teardowns`, which frees what the list holds when the thread exits and closes
/// the list. Why: each access of a thread-local with a destructor checked whether that
/// destructor was registered yet, ~3 instructions per box built and per box dropped
/// (four of each per 64 B round trip in the messenger).
pub struct FreeList<T> {
    /// `slots[..len]` are allocations of `Layout::new::<T>()` owned by this list, holding
    /// no value (uninitialised); the rest are stale and never read.
    slots: [Cell<*mut T>; KEEP],
    len: Cell<usize>,
    /// How many allocations the list may hold now (never above [`KEEP`]): 0 until its
    /// teardown hook is registered (the first keep does that, see `keep`), [`KEEP`]
    /// then, and 0 again once the thread tore the list down. One comparison per keep
    /// serves the bound and both states.
    room: Cell<usize>,
    /// Where the list is in its thread's life.
    stage: Cell<Stage>,
    _owns: PhantomData<T>,
}

/// A [`FreeList`]'s stage.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No teardown hook registered yet (nothing kept so far).
    Fresh,
    /// The hook is registered: allocations are kept up to [`KEEP`].
    Keeping,
    /// Torn down (or its hook could not be registered, the thread being torn down): no
    /// allocation is kept any more; a dropped box frees its own.
    Closed,
}

impl<T> FreeList<T> {
    /// An empty list (a `const` thread-local's initialiser).
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        FreeList {
            slots: [const { Cell::new(std::ptr::null_mut()) }; KEEP],
            len: Cell::new(0),
            room: Cell::new(0),
            stage: Cell::new(Stage::Fresh),
            _owns: PhantomData,
        }
    }

    /// How many allocations the list holds (never above [`KEEP`]).
    pub fn len(&self) -> usize {
        self.len.get()
    }

    /// Whether the list holds none.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// Frees every allocation the list holds (a test's clean start; a thread's exit does
    /// it by itself).
    pub fn clear(&self) {
        while let Some(p) = self.pop() {
            // SAFETY: `p` came from `alloc(Layout::new::<T>())` (see `PoolBox::new`) and
            // was owned by this list, holding no value; taken out, nothing else frees it.
            unsafe { free::<T>(p) };
        }
    }

    /// Takes an allocation out, if there is one.
    #[inline]
    fn pop(&self) -> Option<NonNull<T>> {
        let len = self.len.get();
        let i = len.checked_sub(1)?;
        self.len.set(i);
        // `get` (not indexing): `len` never exceeds `KEEP`, and no panic path is wanted.
        NonNull::new(self.slots.get(i)?.get())
    }

    /// Keeps `p` if there is room now; otherwise gives it back.
    #[inline]
    fn push(&self, p: NonNull<T>) -> Result<(), NonNull<T>> {
        let len = self.len.get();
        if len >= self.room.get() {
            return Err(p);
        }
        // SAFETY: `len < room <= KEEP`, the array's length (`room` is only ever 0 or
        // `KEEP`): in bounds. Unchecked: the comparison above is the bound already.
        let slot = unsafe { self.slots.get_unchecked(len) };
        slot.set(p.as_ptr());
        self.len.set(len + 1);
        Ok(())
    }

    /// The thread's teardown: frees what the list holds, and keeps nothing from now on.
    fn close(&self) {
        self.stage.set(Stage::Closed);
        self.room.set(0);
        self.clear();
    }
}

/// Keeps `p` (an allocation of `T`'s layout holding no value, owned by the caller) in
/// this thread's list of `T`, or gives it back (to be freed): the list is full, or
/// closed.
#[inline]
fn keep<T: Pooled>(p: NonNull<T>) -> Result<(), NonNull<T>> {
    match T::free_list().try_with(|l| l.push(p)) {
        Ok(Ok(())) => Ok(()),
        _ => keep_cold(p),
    }
}

/// [`keep`]'s other cases, out of line: the list's first keep on this thread registers
/// its teardown hook and opens it (then keeps `p`); a full or closed list gives `p`
/// back.
#[cold]
#[inline(never)]
fn keep_cold<T: Pooled>(p: NonNull<T>) -> Result<(), NonNull<T>> {
    T::free_list()
        .try_with(|l| {
            if l.stage.get() != Stage::Fresh {
                return Err(p);
            }
            let registered = TEARDOWNS.try_with(|t| t.add(close_list::<T>)).unwrap_or(false);
            if registered {
                l.stage.set(Stage::Keeping);
                l.room.set(KEEP);
                l.push(p)
            } else {
                // The thread is being torn down: nothing would free what is kept.
                l.stage.set(Stage::Closed);
                Err(p)
            }
        })
        .unwrap_or(Err(p))
}

/// The teardown hook of `T`'s list.
fn close_list<T: Pooled>() {
    let _ = T::free_list().try_with(FreeList::close);
}

/// The teardown hooks of this thread's [`FreeList`]s (one per type that kept an
/// allocation here), run when the thread exits.
struct Teardowns {
    hooks: RefCell<Vec<fn()>>,
}

impl Teardowns {
    /// Registers `hook`; false if the hooks are being run (the thread is exiting).
    fn add(&self, hook: fn()) -> bool {
        match self.hooks.try_borrow_mut() {
            Ok(mut hooks) => {
                hooks.push(hook);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Teardowns {
    fn drop(&mut self) {
        // Popped one at a time, not borrowed across the calls: a hook frees nothing that
        // runs code of its own (the lists hold raw allocations), but stays safe if it did.
        loop {
            let hook = match self.hooks.try_borrow_mut() {
                Ok(mut hooks) => hooks.pop(),
                Err(_) => None,
            };
            match hook {
                Some(hook) => hook(),
                None => break,
            }
        }
    }
}

thread_local! {
    /// This thread's [`Teardowns`].
    static TEARDOWNS: Teardowns = const { Teardowns { hooks: RefCell::new(Vec::new()) } };
}

/// Gives an allocation of `T`'s layout back to the allocator.
///
/// # Safety
/// `p` was returned by `alloc(Layout::new::<T>())`, holds no live value, and is not
/// used afterwards. `T` is not zero-sized.
#[inline]
unsafe fn free<T>(p: NonNull<T>) {
    // SAFETY: the caller's contract: allocated with this layout, not used after.
    unsafe { alloc::dealloc(p.as_ptr().cast(), Layout::new::<T>()) }
}

/// An owned `T` on the heap, like `Box<T>`, whose allocation goes to its dropping
/// thread's [`FreeList`] (or back to the allocator when that is full or gone) and is
/// reused by the next [`PoolBox::new`] there.
pub struct PoolBox<T: Pooled> {
    /// Allocated with `Layout::new::<T>()` (never zero-sized, see `new`), holding a valid
    /// `T` owned by this box.
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a `PoolBox<T>` owns its `T` exactly as a `Box<T>` does (no sharing, no
// thread-affine state: the free list is chosen by the dropping thread at drop time), so
// it is `Send`/`Sync` exactly when `T` is.
unsafe impl<T: Pooled + Send> Send for PoolBox<T> {}
// SAFETY: as above; `&PoolBox<T>` gives only `&T`.
unsafe impl<T: Pooled + Sync> Sync for PoolBox<T> {}

impl<T: Pooled> PoolBox<T> {
    /// Moves `value` into an allocation from this thread's free list, or a new one.
    #[inline]
    pub fn new(value: T) -> Self {
        Self::new_with(|| value)
    }

    /// The value `make` returns, in an allocation from this thread's free list, or a new
    /// one. The allocation is taken first, so that the compiler can build the value in
    /// it rather than build it aside and copy it in (a `memcpy` call for a large `T`).
    /// Should `make` panic, the allocation is lost (leaked, not freed).
    #[inline]
    pub fn new_with(make: impl FnOnce() -> T) -> Self {
        const { assert!(size_of::<T>() != 0, "PoolBox of a zero-sized type") };
        let ptr = match T::free_list().try_with(FreeList::pop) {
            Ok(Some(p)) => p,
            // Empty, or the list is gone (thread teardown): a fresh allocation.
            _ => alloc_one::<T>(),
        };
        // SAFETY: `ptr` is an allocation of `T`'s layout holding no value (fresh, or
        // taken out of the list, which holds only such) and owned here: writing
        // initialises it without dropping anything.
        unsafe { ptr.as_ptr().write(make()) };
        PoolBox { ptr, _owns: PhantomData }
    }
}

/// An allocation for one `T` taken from this thread's free list (or a new one), not
/// yet holding a value: [`Slot::fill`] moves a value in and makes it a [`PoolBox`].
/// Dropped unfilled, the allocation goes back to the list (or is freed).
///
/// Why, beside [`PoolBox::new_with`]: the closure `new_with` takes is built before the
/// allocation is taken, so what it captures (a message's segments and footer, ~120
/// bytes) was copied into it and out again into the allocation, ~25 instructions per
/// message; with the slot taken first, the value is written straight from its parts.
pub struct Slot<T: Pooled> {
    /// Allocated with `Layout::new::<T>()` (never zero-sized), holding no value, owned
    /// here.
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

impl<T: Pooled> Slot<T> {
    /// An allocation from this thread's free list, or a new one.
    #[inline]
    #[must_use = "a slot dropped unfilled only goes back to the free list"]
    pub fn take() -> Self {
        const { assert!(size_of::<T>() != 0, "PoolBox of a zero-sized type") };
        let ptr = match T::free_list().try_with(FreeList::pop) {
            Ok(Some(p)) => p,
            // Empty, or the list is gone (thread teardown): a fresh allocation.
            _ => alloc_one::<T>(),
        };
        Slot { ptr, _owns: PhantomData }
    }

    /// `value` in this allocation.
    #[inline(always)]
    pub fn fill(self, value: T) -> PoolBox<T> {
        let ptr = self.ptr;
        // The allocation passes to the box: the slot's drop must not give it back.
        std::mem::forget(self);
        // SAFETY: `ptr` is an allocation of `T`'s layout holding no value, owned by the
        // slot that was just consumed: writing initialises it without dropping
        // anything, and the box becomes its one owner.
        unsafe { ptr.as_ptr().write(value) };
        PoolBox { ptr, _owns: PhantomData }
    }
}

impl<T: Pooled> Drop for Slot<T> {
    fn drop(&mut self) {
        if keep(self.ptr).is_err() {
            // SAFETY: allocated with `T`'s layout, holding no value, owned by this slot
            // and not taken by the list: nothing else refers to it.
            unsafe { free_cold(self.ptr) };
        }
    }
}

/// A fresh allocation for one `T` (not zero-sized); out of line, the list's miss path.
/// (The compile-time assertions of `PoolBox::new_with` and `Slot::take` are the only
/// guard for the size, so nothing else calls this.)
#[cold]
#[inline(never)]
fn alloc_one<T>() -> NonNull<T> {
    let layout = Layout::new::<T>();
    // SAFETY: `layout` is not zero-sized (asserted at compile time by `PoolBox::new_with`
    // and `Slot::take`, the two callers).
    let p = unsafe { alloc::alloc(layout) };
    match NonNull::new(p.cast::<T>()) {
        Some(p) => p,
        None => alloc::handle_alloc_error(layout),
    }
}

impl<T: Pooled> Drop for PoolBox<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the box owns a valid `T` at `ptr` (see the field), dropped once here;
        // afterwards the allocation holds no value and is only kept or freed.
        unsafe { self.ptr.as_ptr().drop_in_place() };
        // The value's drop ran before the list is touched: whatever it runs (another
        // `PoolBox`'s drop, even) finds the list in a consistent state.
        if keep(self.ptr).is_err() {
            // SAFETY: allocated with `T`'s layout; its value was dropped above, and the
            // list did not take it (full, or gone), so nothing else refers to it.
            unsafe { free_cold(self.ptr) };
        }
    }
}

/// [`free`] out of line: a full list or a thread being torn down.
///
/// # Safety
/// As [`free`].
#[cold]
#[inline(never)]
unsafe fn free_cold<T>(p: NonNull<T>) {
    // SAFETY: the caller's contract, passed on.
    unsafe { free(p) }
}

impl<T: Pooled> Deref for PoolBox<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        // SAFETY: `ptr` holds a valid `T` owned by this box, borrowed as `self` is.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Pooled> DerefMut for PoolBox<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as `deref`; `&mut self` makes the borrow unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: Pooled + Clone> Clone for PoolBox<T> {
    fn clone(&self) -> Self {
        PoolBox::new(T::clone(self))
    }
}

impl<T: Pooled + Default> Default for PoolBox<T> {
    fn default() -> Self {
        PoolBox::new(T::default())
    }
}

impl<T: Pooled + PartialEq> PartialEq for PoolBox<T> {
    fn eq(&self, other: &Self) -> bool {
        T::eq(self, other)
    }
}

impl<T: Pooled + Eq> Eq for PoolBox<T> {}

impl<T: Pooled + fmt::Debug> fmt::Debug for PoolBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::fmt(self, f)
    }
}

// Like `Box`: a panic while the box is borrowed leaves at worst a `T` in whatever state
// its own unwind safety allows.
impl<T: Pooled + std::panic::UnwindSafe> std::panic::UnwindSafe for PoolBox<T> {}
impl<T: Pooled + std::panic::RefUnwindSafe> std::panic::RefUnwindSafe for PoolBox<T> {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
