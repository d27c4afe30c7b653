//! As `hostile_trickle_memory`, on a pool two messengers share: the worker's read
//! buffer is shared by both messengers' connections, its blocks as large as the larger
//! `read_buffer` asks for. Its own binary: the counting allocator counts the whole
//! process, so no other test may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use bytes::Bytes;
use messenger::Policy;
use protocol::types::{AddrType, EntityAddr, EntityType};
use protocol::v2::framing::{Preamble, SegmentDesc, MAX_SEGMENTS};
use protocol::v2::Tag;
use tests::hostile_v2::v2_banner_socket;
use tests::loopback::*;

/// Bytes allocated and not yet freed, in the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

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

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MSG_TEST: u16 = 0x7f00;

/// The preamble of a HELLO announcing a segment of 60 KiB (within the 64 KiB of a
/// control frame): the server waits for all of it before it looks at it.
fn large_hello_preamble() -> [u8; 32] {
    let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
    segments[0] = SegmentDesc { len: 60 << 10, align: 8 };
    Preamble { tag: Tag::HELLO, num_segments: 1, segments, flags: 0 }.to_bytes()
}

/// Two messengers on one pool (as an OSD runs them) share its workers' read buffer: the
/// blocks are as large as the larger `read_buffer` asks for. A peer of the one with a
/// small `read_buffer` (4 KiB: its reads are copied below 1 KiB) trickling a frame in
/// pieces of 1 KiB, while the other's traffic renews the block between pieces, must
/// hold about what it sent, not the other messenger's 64 KiB block per piece.
#[test]
fn a_trickled_frame_on_a_shared_pool_holds_its_bytes_not_another_messengers_blocks() {
    use event_center::{WorkerPool, WorkerPoolConfig};
    use messenger::Messenger;
    use protocol::types::EntityName;
    use std::sync::Arc;

    /// Pieces trickled, one before each round trip: 50 KiB, within the 60 KiB segment.
    const PIECES: usize = 50;
    const PIECE: usize = 1 << 10;

    let pool = Arc::new(
        WorkerPool::new(WorkerPoolConfig { workers: 1, ..Default::default() }).expect("pool"),
    );
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let start = |id: i64, nonce: u32, config: messenger::MessengerConfig| {
        let m = Messenger::with_pool(
            EntityName::new(EntityType::OSD, id),
            nonce,
            config,
            Arc::clone(&pool),
        )
        .expect("messenger");
        m.set_default_policy(Policy::stateless_server());
        let bound = m.bind(any).expect("bind");
        m.start().expect("start");
        let (rec, rx) = Recorder::new(true);
        m.add_dispatcher_head(rec).expect("dispatcher");
        (m, bound, rx)
    };
    // The busy one, with the default read buffer (64 KiB blocks).
    let (busy, _, busy_rx) = start(0, 1, patient_config(1));
    // The trickled one, with a small read buffer.
    let small = messenger::MessengerConfig { read_buffer: 4 << 10, ..patient_config(1) };
    let (trickled, trickled_at, _trickled_rx) = start(1, 3, small);

    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn =
        cli.connect_to(EntityType::OSD, EntityAddr { ty: AddrType::MSGR2, ..busy.my_addr() });
    let round = |tid: u64| {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![7u8; 48 << 10])))
            .expect("send");
        let (_, reply) = next_message(&cli_rx);
        assert_eq!(reply.tid(), tid);
        drop(next_message(&busy_rx));
    };
    let mut trickler = v2_banner_socket(trickled_at);
    trickler.set_nodelay(true).expect("nodelay");
    trickler.write_all(&large_hello_preamble()).expect("preamble");
    for tid in 1..=50 {
        round(tid);
    }
    let before = LIVE.load(Relaxed);
    for tid in 0..PIECES as u64 {
        trickler.write_all(&[0; PIECE]).expect("a piece");
        round(1000 + tid);
    }
    let grown = LIVE.load(Relaxed) - before;
    let sent = (PIECES * PIECE) as isize;
    // Kept as a block per piece: ~3.2 MiB.
    assert!(
        grown < 8 * sent,
        "{sent} trickled bytes grew the heap by {grown} bytes ({} per piece of {PIECE})",
        grown / PIECES as isize
    );
    drop(trickler);
    drop(trickled);
    drop(busy);
}
