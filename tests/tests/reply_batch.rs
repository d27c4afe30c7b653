//! Replies to a burst go out in batches (`MessengerConfig::reply_batch`): a peer that
//! sends many requests in one write gets the first replies while the rest are still
//! being handled, as it would from Ceph, which writes after every message. Checked by
//! holding the fast dispatch of one request until the peer has the replies to the
//! batch before it: written only at the end of the read, they never arrive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Message, MessengerConfig, Policy};
use protocol::types::EntityType;
use protocol::ProtocolVersion;
use tests::hostile::{RawPeer, MSG_HOSTILE};
use tests::loopback::{addr_for, server_on, test_config, WAIT};

/// The reply's type.
const MSG_REPLY: u16 = 0x7f02;

/// Answers every request on its connection from fast dispatch; the request with tid
/// `hold` first waits (at most [`WAIT`]) for the test's go-ahead.
struct HoldOne {
    hold: u64,
    go: Receiver<()>,
    held: Sender<bool>,
}

impl Dispatcher<Connection> for HoldOne {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_HOSTILE
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        if msg.tid() == self.hold {
            let released = self.go.recv_timeout(WAIT).is_ok();
            let _ = self.held.send(released);
        }
        let mut reply = Message::new(MSG_REPLY, Bytes::new());
        reply.set_tid(msg.tid());
        let _ = conn.send_message(reply);
    }
}

fn burst_is_answered_in_batches(proto: ProtocolVersion) {
    const BATCH: usize = 8;
    const BURST: u64 = 3 * BATCH as u64;
    let config = MessengerConfig { reply_batch: BATCH, ..test_config(1) };
    let (srv, _, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateless_server(),
        false,
        "127.0.0.1:0".parse().expect("addr"),
        config,
    );
    let (go_tx, go) = bounded(1);
    let (held, held_rx) = bounded(1);
    // The first request of the second batch waits until the first batch is answered.
    let hold = BATCH as u64 + 1;
    srv.add_dispatcher_head(Arc::new(HoldOne { hold, go, held })).expect("dispatcher");
    let mut peer = RawPeer::handshake(addr_for(proto, srv.my_addr()), Policy::lossy_client());
    let burst: Vec<u8> = (1..=BURST).flat_map(|tid| peer.message(tid, b"ping")).collect();
    peer.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    std::io::Write::write_all(&mut peer.sock, &burst).expect("burst");

    let first = peer.receive(BATCH);
    go_tx.send(()).expect("release the held request");
    let first = first.unwrap_or_else(|e| panic!("the first batch was not answered early: {e}"));
    let tids: Vec<u64> = first.iter().map(Message::tid).collect();
    assert_eq!(tids, (1..=BATCH as u64).collect::<Vec<_>>());
    assert_eq!(held_rx.recv_timeout(WAIT), Ok(true), "the held request was released");

    // And the rest follows, in order.
    let rest = peer.receive(BURST as usize - BATCH).expect("the rest of the replies");
    let tids: Vec<u64> = rest.iter().map(Message::tid).collect();
    assert_eq!(tids, (BATCH as u64 + 1..=BURST).collect::<Vec<_>>());
    srv.shutdown();
    srv.wait();
}

#[test]
fn a_burst_read_at_once_is_answered_in_batches() {
    burst_is_answered_in_batches(ProtocolVersion::V1);
}

#[test]
fn a_burst_read_at_once_is_answered_in_batches_over_msgr2() {
    burst_is_answered_in_batches(ProtocolVersion::V2);
}
