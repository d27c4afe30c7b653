//! A peer trickling a frame a byte at a time into a server whose worker other
//! connections keep busy: the server reads into its worker's read buffer, a block shared
//! by that worker's connections and renewed as they use it up, and what waits for the
//! rest of the frame must hold about what the peer sent, not the block each byte came
//! in. Measured with a counting allocator (this test binary's own), around round trips
//! that each renew the block. No sleeps: every wait is a reply with a timeout.

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

/// Round trips measured, one trickled byte before each.
const ROUNDS: usize = 300;

/// The preamble of a HELLO announcing a segment of 60 KiB (within the 64 KiB of a
/// control frame): the server waits for all of it before it looks at it.
fn large_hello_preamble() -> [u8; 32] {
    let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
    segments[0] = SegmentDesc { len: 60 << 10, align: 8 };
    Preamble { tag: Tag::HELLO, num_segments: 1, segments, flags: 0 }.to_bytes()
}

#[test]
fn a_trickled_frame_holds_its_bytes_not_a_read_buffer_per_byte() {
    // One worker: the trickler and the busy connection share its read buffer.
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, bound, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), true, any, patient_config(1));
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, EntityAddr { ty: AddrType::MSGR2, ..srv.my_addr() });
    // 48 KiB each way per round trip: each read of one renews the server's read buffer.
    let round = |tid: u64| {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::from(vec![7u8; 48 << 10])))
            .expect("send");
        let (_, reply) = next_message(&cli_rx);
        assert_eq!(reply.tid(), tid);
        drop(next_message(&srv_rx));
    };
    let mut trickler = v2_banner_socket(bound);
    trickler.set_nodelay(true).expect("nodelay");
    trickler.write_all(&large_hello_preamble()).expect("preamble");
    for tid in 1..=50 {
        round(tid);
    }
    let before = LIVE.load(Relaxed);
    for tid in 0..ROUNDS as u64 {
        trickler.write_all(&[0]).expect("a byte");
        round(1000 + tid);
    }
    let grown = LIVE.load(Relaxed) - before;
    // The trickler sent 300 bytes; a read buffer kept per byte is ~19 MiB.
    assert!(
        grown < (ROUNDS * (8 << 10)) as isize,
        "{ROUNDS} trickled bytes grew the heap by {grown} bytes ({} per byte)",
        grown / ROUNDS as isize
    );
    drop(trickler);
}
