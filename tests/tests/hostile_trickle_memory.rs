//! A peer trickling a frame a byte at a time into a server whose worker other
//! connections keep busy: the server reads into its worker's read buffer, a block shared
//! by that worker's connections and renewed as they use it up, and what waits for the
//! rest of the frame must hold about what the peer sent, not the block each byte came
//! in. Measured with a counting allocator (this test binary's own), around round trips
//! that each renew the block. No sleeps: every wait is a reply with a timeout.

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

/// Round trips measured, one trickled byte before each.
const ROUNDS: usize = 300;

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
    let before = live_bytes();
    for tid in 0..ROUNDS as u64 {
        trickler.write_all(&[0]).expect("a byte");
        round(1000 + tid);
    }
    let grown = live_bytes() - before;
    // The trickler sent 300 bytes; a read buffer kept per byte is ~19 MiB.
    assert!(
        grown < (ROUNDS * (8 << 10)) as isize,
        "{ROUNDS} trickled bytes grew the heap by {grown} bytes ({} per byte)",
        grown / ROUNDS as isize
    );
    drop(trickler);
}
