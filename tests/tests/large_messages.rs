//! Large fronts and large data on a lossless connection (Ceph's MessageTest): an
//! MCommand whose front is ~900 KB of command words and an MPing carrying ~800 KB of
//! data, echoed back byte for byte — then the same sizes streamed while the socket is
//! cut in the middle of them, so half-written large messages are replayed; and a large
//! v1 segment arriving in pieces whose last is a few bytes.

use std::io::Write;

use bytes::Bytes;
use messenger::Policy;
use protocol::messages::{MCommand, TypedMessage};
use protocol::types::{EntityType, Features};
use protocol::Message;
use tests::loopback::*;

const CEPH_MSG_PING: u16 = 2;

/// A message type of our own for raw-peer messages.
const MSG_LARGE: u16 = 0x7f10;

/// Ceph's MessageTest payload: the alphabet 30 × 1024 times.
fn alphabet_words() -> Vec<String> {
    vec!["abcdefghijklmnopqrstuvwxyz".to_owned(); 30 * 1024]
}

fn alphabet_data() -> Bytes {
    Bytes::from(b"abcdefghijklmnopqrstuvwxyz".repeat(30 * 1024))
}

/// MessageTest: a stateful server echoes, a lossless peer sends a ~900 KB front (an
/// MCommand of 30,720 words) and then ~800 KB of data (an MPing); both come back intact
/// and decode to what was sent.
#[test]
fn eight_hundred_kilobyte_front_and_data_round_trip_on_a_lossless_connection() {
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateful_server(), true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_peer());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());

    let command =
        MCommand { fsid: [7; 16], cmd: alphabet_words(), data: Bytes::from_static(b"input") };
    let mut m = command.to_message(Features::PACIFIC_ADVERTISED);
    m.set_tid(1);
    let front = m.front().clone();
    assert!(front.len() > 900_000, "front of {} bytes", front.len());
    conn.send_message(m).expect("send");
    let (_, got) = next_message(&srv_rx);
    assert!(got.front() == &front, "server: front differs");
    let (_, echo) = next_message(&cli_rx);
    assert_eq!(echo.tid(), 1);
    assert!(echo.front() == &front, "client: echoed front differs");
    let decoded = MCommand::from_message(&echo).expect("the echo decodes as an MCommand");
    assert_eq!(decoded, command);

    let data = alphabet_data();
    assert_eq!(data.len(), 798_720);
    conn.send_message(test_message(CEPH_MSG_PING, 2, data.clone())).expect("send");
    let (_, got) = next_message(&srv_rx);
    assert!(got.data() == &data, "server: data differs");
    let (_, echo) = next_message(&cli_rx);
    assert_eq!(echo.tid(), 2);
    assert!(echo.data() == &data, "client: echoed data differs");
    cli.shutdown();
    srv.shutdown();
}

/// Twenty such messages (large fronts and large data alternating) on one lossless
/// session, the socket cut after every third one is queued: the cuts land while large
/// messages are half written or half read, and every message still arrives once, in
/// order, byte for byte.
#[test]
fn large_messages_survive_cuts_in_the_middle() {
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    // lossless_client has no standby: a cut that lands after everything was delivered
    // still reconnects at once, so every cut is one reconnect to count.
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossless_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    let front = Bytes::from(
        MCommand { fsid: [1; 16], cmd: alphabet_words(), data: Bytes::new() }
            .to_message(Features::PACIFIC_ADVERTISED)
            .front()
            .to_vec(),
    );
    let data = alphabet_data();
    let message = |tid: u64| {
        let mut m = if tid.is_multiple_of(2) {
            Message::new(CEPH_MSG_PING, Bytes::new())
        } else {
            Message::new(CEPH_MSG_PING, front.clone())
        };
        if tid.is_multiple_of(2) {
            m.set_data(data.clone());
        }
        m.set_tid(tid);
        m
    };
    const N: u64 = 20;
    for tid in 1..=N {
        conn.send_message(message(tid)).expect("send");
        if tid.is_multiple_of(3) {
            conn.inject_socket_failure();
        }
    }
    for tid in 1..=N {
        let (_, got) = next_message(&srv_rx);
        assert_eq!(got.tid(), tid, "once, in order");
        let want = message(tid);
        assert!(got.front() == want.front() && got.data() == want.data(), "message {tid} differs");
    }
    assert_no_more_messages(&srv_rx, "a duplicate");
    let cuts = (N / 3) as usize;
    let connects = count_events(&cli_rx, 1 + cuts, |s| matches!(s, Seen::Connect(_)));
    assert_eq!(connects, 1 + cuts, "each cut was one reconnect");
    assert_eq!(srv.v1_counters().old_seq_dropped, 0, "replays were trimmed by the SEQ exchange");
    cli.shutdown();
    srv.shutdown();
}

// A large v1 segment arriving in two writes is read straight into its assembly buffer in
// growing windows; with a data length of 64 KiB plus 1–3 bytes the last window is those
// few bytes. A read asking for 0 bytes there (a buffer exactly full, no room made) would
// return 0 at once, taken for the peer's EOF: the connection would fault and the lossy
// session's message be lost. A review predicted that; the buffer's growth leaves room,
// and `read_into_spare` now makes room whatever it is asked for.
#[test]
fn a_large_v1_segment_whose_last_piece_is_a_few_bytes_arrives() {
    use tests::hostile::{head_len, worker_counter, RawPeer};
    for data_len in [65_537usize, 65_538, 65_539, 65_540, 131_074] {
        let (srv, _, rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
        let server_addr = addr_for(protocol::ProtocolVersion::V1, srv.my_addr());
        let mut peer = RawPeer::handshake(server_addr, Policy::lossy_client());
        let mut msg = Message::new(MSG_LARGE, Bytes::new());
        msg.set_tid(9);
        msg.set_data(Bytes::from((0..data_len).map(|i| i as u8).collect::<Vec<u8>>()));
        let wire = peer.frame(msg);
        let first = head_len(protocol::ProtocolVersion::V1) + 4096;
        let before = worker_counter(&srv, "msgr_recv_bytes");
        peer.sock.write_all(&wire[..first]).expect("write the head");
        // The rest only once the first piece was read on its own.
        wait_until(
            || worker_counter(&srv, "msgr_recv_bytes") >= before + first as u64,
            || format!("the first {first} bytes were not read"),
        );
        peer.sock.write_all(&wire[first..]).expect("write the rest");
        let (_, got) = next_message(&rx);
        assert_eq!(got.tid(), 9, "data_len {data_len}");
        assert_eq!(got.data().len(), data_len, "data_len {data_len}");
        assert!(
            got.data().iter().enumerate().all(|(i, b)| *b == i as u8),
            "data_len {data_len}: the data arrived changed"
        );
        srv.shutdown();
    }
}
