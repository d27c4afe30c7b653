use super::*;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A value with heap of its own and a drop counter.
struct Item {
    n: u64,
    heap: Vec<u8>,
    drops: Arc<AtomicUsize>,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    static ITEMS: FreeList<Item> = const { FreeList::new() };
}

impl Pooled for Item {
    fn free_list() -> &'static LocalKey<FreeList<Self>> {
        &ITEMS
    }
}

fn item(n: u64, drops: &Arc<AtomicUsize>) -> PoolBox<Item> {
    PoolBox::new(Item { n, heap: vec![n as u8; 100], drops: drops.clone() })
}

fn kept() -> usize {
    ITEMS.with(FreeList::len)
}

fn drain() {
    ITEMS.with(FreeList::clear);
}

#[test]
fn a_dropped_box_drops_its_value_and_its_allocation_is_reused() {
    drain();
    let drops = Arc::new(AtomicUsize::new(0));
    let a = item(7, &drops);
    assert_eq!((a.n, a.heap.len()), (7, 100));
    let at = &*a as *const Item;
    drop(a);
    assert_eq!(drops.load(Ordering::Relaxed), 1, "the value was not dropped");
    assert_eq!(kept(), 1);
    let mut b = item(8, &drops);
    assert_eq!(&*b as *const Item, at, "the kept allocation was not reused");
    assert_eq!(kept(), 0);
    b.n += 1;
    b.heap.push(1);
    assert_eq!((b.n, b.heap.len()), (9, 101));
    drop(b);
    assert_eq!(drops.load(Ordering::Relaxed), 2);
    drain();
}

#[test]
fn the_free_list_never_exceeds_its_bound() {
    drain();
    let drops = Arc::new(AtomicUsize::new(0));
    let boxes: Vec<_> = (0..(KEEP as u64 + 50)).map(|n| item(n, &drops)).collect();
    drop(boxes);
    assert_eq!(drops.load(Ordering::Relaxed), KEEP + 50, "every value dropped");
    assert_eq!(kept(), KEEP);
    // And taking them all back out and one more allocates afresh.
    let again: Vec<_> = (0..(KEEP as u64 + 1)).map(|n| item(n, &drops)).collect();
    assert_eq!(kept(), 0);
    assert!(again.iter().enumerate().all(|(i, b)| b.n == i as u64));
    drop(again);
    assert_eq!(kept(), KEEP);
    drain();
}

#[test]
fn a_box_dropped_on_another_thread_goes_to_that_threads_list() {
    drain();
    let drops = Arc::new(AtomicUsize::new(0));
    let boxes: Vec<_> = (0..10).map(|n| item(n, &drops)).collect();
    let d = drops.clone();
    let other = std::thread::spawn(move || {
        assert_eq!(kept(), 0);
        drop(boxes);
        assert_eq!(d.load(Ordering::Relaxed), 10);
        let k = kept();
        // Reused there: the next box built on that thread takes one.
        let b = item(99, &d);
        (k, kept(), b.n)
    })
    .join()
    .unwrap();
    assert_eq!(other, (10, 9, 99));
    // Nothing came to this thread's list; the other thread's was freed at its exit.
    assert_eq!(kept(), 0);
    assert_eq!(drops.load(Ordering::Relaxed), 11);
}

/// A thread-local whose destructor drops a `PoolBox`: registered after `ITEMS` is first
/// used, so (thread-locals are destroyed in reverse order of registration, on glibc)
/// it usually runs after `ITEMS` is gone, when the box must just be freed; either
/// order must be fine.
struct DropsLate(Option<PoolBox<Item>>);

thread_local! {
    static LATE: std::cell::RefCell<DropsLate> = const { std::cell::RefCell::new(DropsLate(None)) };
}

#[test]
fn a_box_dropped_during_thread_teardown_is_fine() {
    let drops = Arc::new(AtomicUsize::new(0));
    for late_first in [false, true] {
        let d = drops.clone();
        std::thread::spawn(move || {
            if late_first {
                LATE.with(|l| l.borrow_mut().0 = Some(item(1, &d)));
                drop(item(2, &d));
            } else {
                drop(item(2, &d));
                LATE.with(|l| l.borrow_mut().0 = Some(item(1, &d)));
            }
        })
        .join()
        .unwrap();
    }
    assert_eq!(drops.load(Ordering::Relaxed), 4, "every value dropped once");
}

/// A value whose drop drops another box of the same type (re-entering the list).
// The inner box is held only to be dropped with the value.
#[allow(dead_code)]
struct Nested(Option<PoolBox<Nested>>, Rc<Cell<usize>>);

impl Drop for Nested {
    fn drop(&mut self) {
        self.1.set(self.1.get() + 1);
    }
}

thread_local! {
    static NESTED: FreeList<Nested> = const { FreeList::new() };
}

impl Pooled for Nested {
    fn free_list() -> &'static LocalKey<FreeList<Self>> {
        &NESTED
    }
}

#[test]
fn a_value_whose_drop_drops_boxes_of_its_own_type() {
    let drops = Rc::new(Cell::new(0));
    let mut b = PoolBox::new(Nested(None, drops.clone()));
    for _ in 0..(KEEP + 5) {
        b = PoolBox::new(Nested(Some(b), drops.clone()));
    }
    drop(b);
    assert_eq!(drops.get(), KEEP + 6);
    assert_eq!(NESTED.with(FreeList::len), KEEP);
    let c = PoolBox::new(Nested(None, drops.clone()));
    assert_eq!(NESTED.with(FreeList::len), KEEP - 1);
    drop(c);
}

#[test]
fn clone_eq_default_and_debug_are_the_values() {
    #[derive(Clone, Default, PartialEq, Eq, Debug)]
    struct V(String);
    thread_local! {
        static VS: FreeList<V> = const { FreeList::new() };
    }
    impl Pooled for V {
        fn free_list() -> &'static LocalKey<FreeList<Self>> {
            &VS
        }
    }
    let a = PoolBox::new(V("x".into()));
    let b = a.clone();
    assert!(!std::ptr::eq(&*a, &*b));
    assert_eq!(a, b);
    assert_ne!(a, PoolBox::default());
    assert_eq!(format!("{a:?}"), "V(\"x\")");
}

#[test]
fn a_slot_takes_a_kept_allocation_and_an_unfilled_one_goes_back() {
    drain();
    let drops = Arc::new(AtomicUsize::new(0));
    let a = item(1, &drops);
    let at = &*a as *const Item;
    drop(a);
    assert_eq!(kept(), 1);
    // Taken and dropped unfilled: back in the list, no value dropped (there was none).
    let slot = Slot::<Item>::take();
    assert_eq!(kept(), 0, "the slot did not take the kept allocation");
    drop(slot);
    assert_eq!((kept(), drops.load(Ordering::Relaxed)), (1, 1));
    // Filled: the same allocation, holding the value, given back again when dropped.
    let b = Slot::take().fill(Item { n: 5, heap: vec![5; 10], drops: drops.clone() });
    assert_eq!(&*b as *const Item, at, "the slot's allocation was not the kept one");
    assert_eq!((b.n, b.heap.len(), kept()), (5, 10, 0));
    drop(b);
    assert_eq!((kept(), drops.load(Ordering::Relaxed)), (1, 2));
    // With the list full, an unfilled slot frees its allocation instead.
    let full: Vec<_> = (0..KEEP as u64 + 1).map(|n| item(n, &drops)).collect();
    let slot = Slot::<Item>::take();
    drop(full);
    assert_eq!(kept(), KEEP);
    drop(slot);
    assert_eq!(kept(), KEEP, "the list grew past its bound");
    drain();
}

thread_local! {
    static LATE_SLOT: std::cell::RefCell<Option<Slot<Item>>> = const { std::cell::RefCell::new(None) };
}

/// What `Message::new`'s `Slot::take().fill(Fields { .. })` relies on: a panic while
/// the value is built, after the slot was taken, gives the allocation back (no value
/// dropped, none leaked); a slot dropped while its thread's list is torn down (held by
/// another thread-local) frees its allocation, whichever is destroyed first. Run under
/// Miri for the frees.
#[test]
fn a_slot_goes_back_after_a_panic_before_its_fill_and_is_freed_at_thread_teardown() {
    drain();
    let drops = Arc::new(AtomicUsize::new(0));
    let kept_one = item(1, &drops);
    drop(kept_one);
    assert_eq!(kept(), 1);
    let built = std::panic::catch_unwind(|| {
        Slot::<Item>::take().fill(Item {
            n: 2,
            heap: if kept() == 0 { panic!("building the value") } else { Vec::new() },
            drops: Arc::new(AtomicUsize::new(0)),
        })
    });
    assert!(built.is_err(), "the value's construction did not panic");
    assert_eq!((kept(), drops.load(Ordering::Relaxed)), (1, 1), "the slot's allocation");
    drain();
    for slot_first in [false, true] {
        let d = drops.clone();
        std::thread::spawn(move || {
            if slot_first {
                LATE_SLOT.with(|l| *l.borrow_mut() = Some(Slot::take()));
                drop(item(3, &d));
            } else {
                drop(item(3, &d));
                LATE_SLOT.with(|l| *l.borrow_mut() = Some(Slot::take()));
            }
        })
        .join()
        .unwrap();
    }
    assert_eq!(drops.load(Ordering::Relaxed), 3, "a slot drops no value");
}

/// Counts the live allocations of [`Big`]'s size (no other type in these tests has it),
/// to see that a thread's kept allocations are freed when it exits.
struct Counting;

const BIG: usize = 3001;
static LIVE_BIG: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == BIG {
            LIVE_BIG.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == BIG {
            LIVE_BIG.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

struct Big([u8; BIG]);

thread_local! {
    static BIGS: FreeList<Big> = const { FreeList::new() };
    static BIG_LATE: std::cell::RefCell<Option<PoolBox<Big>>> = const { std::cell::RefCell::new(None) };
}

impl Pooled for Big {
    fn free_list() -> &'static LocalKey<FreeList<Self>> {
        &BIGS
    }
}

/// The list has no destructor of its own: what it keeps is freed by the teardown hook
/// its first keep registered, and a box dropped after that (by a thread-local destroyed
/// later) frees its allocation; either order of the two leaves nothing allocated.
#[test]
fn what_a_thread_kept_is_freed_when_it_exits() {
    for late_first in [None, Some(false), Some(true)] {
        std::thread::spawn(move || {
            let late = || BIG_LATE.with(|l| *l.borrow_mut() = Some(PoolBox::new(Big([1; BIG]))));
            if late_first == Some(true) {
                late();
            }
            let boxes: Vec<_> = (0..5).map(|i| PoolBox::new(Big([i; BIG]))).collect();
            assert_eq!(boxes.iter().map(|b| b.0[BIG - 1]).sum::<u8>(), 10);
            drop(boxes);
            assert_eq!(BIGS.with(FreeList::len), 5, "the dropped boxes were not kept");
            if late_first == Some(false) {
                late();
            }
        })
        .join()
        .unwrap();
        assert_eq!(LIVE_BIG.load(Ordering::SeqCst), 0, "leaked at thread exit ({late_first:?})");
    }
}
