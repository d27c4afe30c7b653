//! Messages at the edges of their shape, through the real messenger: a payload segment
//! longer than any wire header can describe is refused at the send, and the connection
//! goes on serving the messages after it.

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy, ProtocolVersion, SendError};
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::*;

const MSG_SHAPE: u16 = 0x7f31;

const SERVER: EntityName = EntityName { ty: EntityType::OSD, num: 0 };
const CLIENT: EntityName = EntityName { ty: EntityType::CLIENT, num: 2 };

/// Bytes that differ by position and by message: a segment delivered shifted, swapped
/// or from another message does not compare equal.
fn pattern(tid: u64, which: u8, len: usize) -> Bytes {
    let mut x = tid.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(which) << 56;
    Bytes::from(
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

/// A message `tid` with a front, middle and data of these lengths.
fn message(tid: u64, [front, middle, data]: [usize; 3]) -> Message {
    let mut m = Message::new(MSG_SHAPE, pattern(tid, 1, front));
    m.set_middle(pattern(tid, 2, middle));
    m.set_data(pattern(tid, 3, data));
    m.set_tid(tid);
    m
}

struct Rig {
    srv: Messenger,
    srv_rx: Receiver<Seen>,
    cli: Messenger,
    conn: Connection,
}

/// A stateful server and a lossless client over `proto`, both with `config`.
fn rig(proto: ProtocolVersion, config: impl Fn() -> MessengerConfig) -> Rig {
    let (srv, _addr, srv_rx) = server_on(
        SERVER.ty,
        1,
        Policy::stateful_server(),
        false,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        config(),
    );
    let (cli, _cli_rx) = client_with(CLIENT.ty, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(SERVER.ty, addr_for(proto, srv.my_addr()));
    Rig { srv, srv_rx, cli, conn }
}

/// A segment longer than `u32::MAX` bytes fits no header (msgr v1's lengths and msgr2's
/// segment descriptors are 32-bit): it is refused at the send. Queued, it could never
/// be framed (msgr2's encoder refused it and faulted the session; msgr v1 announced
/// `u32::MAX` bytes, which the peer refused), so the lossless session reconnected and
/// replayed it for ever, while it held the connection's whole send bound: every later
/// send on the connection was refused with `QueueFull`.
#[test]
fn a_segment_longer_than_u32_max_is_refused_at_the_send() {
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        // No data crc: nothing here reads the 4 GiB.
        let r = rig(proto, || MessengerConfig { crc_data: false, ..patient_config(2) });
        for which in 0..3 {
            // Zeroed by the allocator: pages mapped lazily, never touched here.
            let huge = Bytes::from(vec![0u8; (1usize << 32) + 1]);
            let mut m = message(100 + which, [1, 0, 1]);
            match which {
                0 => m.set_front(huge),
                1 => m.set_middle(huge),
                _ => m.set_data(huge),
            }
            let sent = r.conn.send_message(m);
            assert_eq!(sent, Err(SendError::TooLarge), "{proto:?}: segment {which} of 4 GiB + 1");
        }
        // The connection goes on as if it had never been asked.
        let shapes = [[3, 0, 5], [0, 7, 70_000]];
        for (tid, s) in (1..).zip(shapes) {
            r.conn.send_message(message(tid, s)).expect("send");
        }
        for (tid, s) in (1..).zip(shapes) {
            let (_, got) = next_message(&r.srv_rx);
            let want = message(tid, s);
            assert_eq!(got.tid(), tid, "{proto:?}: once, in order");
            assert!(
                got.front() == want.front()
                    && got.middle() == want.middle()
                    && got.data() == want.data(),
                "{proto:?}: message {tid} differs"
            );
        }
        assert_no_more_messages(&r.srv_rx, "a duplicate");
        r.cli.shutdown();
        r.srv.shutdown();
    }
}
