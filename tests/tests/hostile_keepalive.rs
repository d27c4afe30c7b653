//! What a peer can make us send back, as fast as it sends: a KEEPALIVE2_ACK per
//! KEEPALIVE2 and an ACK per message on a lossless session. A peer that sends them and
//! never reads is owed one of each, the newest (Ceph keeps only the latest keepalive
//! stamp to acknowledge, and acks are cumulative): what waits for it stays a frame,
//! however many it sent. Over msgr v1 (KEEPALIVE2, bare KEEPALIVE) and msgr2 (crc
//! mode), with hostile stamps (far future, nanoseconds past a second). And an acceptor
//! that never answers costs one socket at a time.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, MessengerConfig};
use protocol::encoding::UTime;
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use protocol::{Message, Policy};
use tests::hostile::*;
use tests::loopback::*;

/// Keepalives per write of the flood (with a message after them).
const BATCH: usize = 64;

/// Messages below this tid are echoed; the others (the flood's) only acknowledged.
const ECHO_BELOW: u64 = 100;

/// Echoes the messages below [`ECHO_BELOW`] and tells the test of them; drops the
/// others at once.
struct Echo(Sender<u64>);

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        if msg.tid() < ECHO_BELOW {
            let mut reply = Message::new(msg.msg_type(), msg.front().clone());
            reply.set_tid(msg.tid());
            let _ = conn.send_message(reply);
            let _ = self.0.send(msg.tid());
        }
        Dispatched::Taken
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// msgr v1, KEEPALIVE2 (each owed a KEEPALIVE2_ACK).
    V1Stamped,
    /// msgr v1, bare KEEPALIVE (owed nothing).
    V1Bare,
    /// msgr2 crc mode.
    V2Crc,
}

/// A stateful (lossless) server and a lossless raw peer with an open session to it.
fn setup(kind: Kind, config: MessengerConfig) -> (Messenger, RawPeer, Receiver<u64>) {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let srv = Messenger::new(osd0, 1, config).expect("messenger");
    srv.set_default_policy(messenger::Policy::stateful_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    srv.add_dispatcher_head(Arc::new(Echo(tx))).expect("dispatcher");
    let ty = if kind == Kind::V1Stamped || kind == Kind::V1Bare {
        AddrType::LEGACY
    } else {
        AddrType::MSGR2
    };
    let server = EntityAddr { ty, ..srv.my_addr() };
    let me = EntityAddr { ty, ..EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 7) };
    let cfg = protocol::Config::new(osd1, me);
    let peer = RawPeer::try_handshake_with(server, Policy::lossless_peer(), Arc::new(cfg))
        .unwrap_or_else(|e| panic!("{e}"));
    (srv, peer, rx)
}

/// Stamps no clock gives: the far future, and nanoseconds of a second and more.
const HOSTILE: [UTime; 4] = [
    UTime { sec: u32::MAX, nsec: u32::MAX },
    UTime { sec: 0, nsec: 1_000_000_000 },
    UTime { sec: u32::MAX, nsec: 999_999_999 },
    UTime { sec: 1, nsec: 0x8000_0000 },
];

/// `count` keepalives of `kind` from a peer that stopped reading once our socket was
/// full (a 256 KiB reply waits in it), with a small message (owed an ACK: the session is
/// lossless) after every 64, each batch read by the server before the next. Then one last message: once its reply arrives, everything
/// owed before it was written, and what the peer reads in all is the two replies and
/// the acks we kept for it: a few frames, not one per keepalive or message.
fn flood(kind: Kind, count: usize) {
    const FRONT: usize = 256 << 10;
    let config = MessengerConfig {
        tcp_sndbuf: 16 << 10,
        write_timeout: Duration::from_secs(300),
        connection_idle_timeout: Duration::from_secs(300),
        ..patient_config(1)
    };
    let (srv, mut peer, rx) = setup(kind, config);
    socket2::SockRef::from(&peer.sock).set_recv_buffer_size(16 << 10).expect("rcvbuf");
    let sent0 = srv.totals().send_bytes;
    let big = peer.message(1, &vec![7u8; FRONT]);
    peer.sock.write_all(&big).expect("write");
    assert_eq!(rx.recv_timeout(WAIT).expect("the first message dispatched"), 1);
    // The reply is framed and cannot all go: the peer reads nothing, and the sockets
    // hold less than it.
    wait_until(
        || srv.totals().send_bytes - sent0 >= 8 << 10,
        || format!("{} bytes of the reply written", srv.totals().send_bytes - sent0),
    );

    let started = Instant::now();
    let last = UTime { sec: 0x1234_5678, nsec: 0x9abc_def0 };
    // One frame per stamp, framed by the peer's session.
    let frames: Vec<Vec<u8>> = match kind {
        Kind::V1Bare => vec![vec![protocol::wire::Tag::KEEPALIVE.0]],
        _ => HOSTILE.iter().map(|&s| peer.keepalive(s)).collect(),
    };
    let mut tid = ECHO_BELOW;
    let mut batch = Vec::with_capacity(4 << 10);
    let mut sent = 0;
    // Batches of 64 keepalives and a message, each written once the server read the
    // one before: a read each, so a frame owed per read (or per keepalive) would show.
    let mut written = srv.totals().recv_bytes;
    while sent < count {
        batch.clear();
        let n = BATCH.min(count - sent);
        for i in 0..n {
            let at = sent + i;
            if at + 1 == count && kind != Kind::V1Bare {
                batch.extend(peer.keepalive(last));
            } else {
                batch.extend_from_slice(&frames[at % frames.len()]);
            }
        }
        tid += 1;
        batch.extend(peer.message(tid, b"ack me"));
        sent += n;
        peer.sock.write_all(&batch).expect("the server stopped reading the flood");
        written += batch.len() as u64;
        wait_until(
            || srv.totals().recv_bytes >= written,
            || format!("{kind:?}: the server stopped reading after {sent} keepalives"),
        );
    }
    let last_msg = peer.message(2, b"last");
    peer.sock.write_all(&last_msg).expect("write");
    assert_eq!(rx.recv_timeout(WAIT).expect("the last message dispatched"), 2);
    let flood_time = started.elapsed();

    // What the server kept for the peer, read back: the two replies and the acks.
    let (replies, read) = peer.receive_counting(2).unwrap_or_else(|e| panic!("{e}"));
    let tids: Vec<u64> = replies.iter().map(Message::tid).collect();
    assert_eq!(tids, [1, 2], "the replies");
    let replies_len = (FRONT + 4) as u64;
    let extra = read.saturating_sub(replies_len);
    eprintln!(
        "{kind:?}: {count} keepalives and {} messages in {flood_time:?}; {read} bytes read, {extra} beyond the replies' payload",
        tid - ECHO_BELOW
    );
    // A frame per keepalive would be 2 MB (v1) to 10 MB (msgr2): what the peer reads
    // beyond the payloads is framing, and a few acks per write the socket took.
    assert!(
        extra <= 16 << 10,
        "{kind:?}: {extra} bytes beyond the replies' payloads for {count} keepalives and {} messages",
        tid - ECHO_BELOW
    );
    if kind != Kind::V1Bare {
        assert_eq!(peer.last_keepalive_ack(), Some(last), "the newest stamp is acknowledged");
    }
    srv.shutdown();
}

// 200,000 keepalives in 3,125 batches: a frame owed per batch (what framing while the
// socket is full did) leaves 50 KB (v1) to 170 KB (msgr2) beyond the bound.
#[test]
fn keepalive2s_from_a_peer_that_does_not_read_are_owed_one_ack() {
    flood(Kind::V1Stamped, 200_000);
}

#[test]
fn bare_keepalives_from_a_peer_that_does_not_read_cost_nothing() {
    flood(Kind::V1Bare, 200_000);
}

#[test]
fn keepalive2s_over_msgr2_are_owed_one_ack() {
    flood(Kind::V2Crc, 200_000);
}

/// An acceptor that takes our connections and never answers: each attempt's handshake
/// timeout fires once and closes that socket (no socket is left behind per attempt),
/// however many attempts a lossless session makes.
fn silent_acceptor_attempts_release_their_sockets(proto: messenger::ProtocolVersion) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = listener.local_addr().expect("addr");
    let config = MessengerConfig {
        connection_ready_timeout: Duration::from_millis(50),
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..test_config(1)
    };
    let (cli, _rx) = client_with(EntityType::OSD, 9, messenger::Policy::lossless_peer(), config);
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, EntityAddr::legacy(at, 1)));
    conn.send_keepalive();
    let mut accepted = Vec::new();
    while accepted.len() < 40 {
        let (s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        accepted.push(s);
    }
    // Every attempt but the last two (one may be under way) was closed by us: EOF.
    for (i, s) in accepted.iter_mut().enumerate().take(38) {
        assert!(closed_within(s, WAIT), "{proto:?}: attempt {i}'s socket still open");
    }
    cli.shutdown();
}

#[test]
fn a_silent_v1_acceptor_costs_one_socket_at_a_time() {
    silent_acceptor_attempts_release_their_sockets(messenger::ProtocolVersion::V1);
}

#[test]
fn a_silent_msgr2_acceptor_costs_one_socket_at_a_time() {
    silent_acceptor_attempts_release_their_sockets(messenger::ProtocolVersion::V2);
}
