//! As `hostile_trickle_memory`, on a pool two messengers share: the worker's read
//! buffer is shared by both messengers' connections, its blocks as large as the larger
//! `read_buffer` asks for. Its own binary: the counting allocator counts the whole
//! process, so no other test may run beside it.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use messenger::Policy;
use protocol::types::{AddrType, EntityAddr, EntityType};
use tests::counting::{large_hello_preamble, live_bytes, Counting};
use tests::hostile_v2::v2_banner_socket;
use tests::loopback::*;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MSG_TEST: u16 = 0x7f00;

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
    let before = live_bytes();
    for tid in 0..PIECES as u64 {
        trickler.write_all(&[0; PIECE]).expect("a piece");
        round(1000 + tid);
    }
    let grown = live_bytes() - before;
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
