//! How a msgr v1 session faults and reconnects, against Ceph's `ProtocolV1`
//! (src/msg/async/ProtocolV1.cc: `fault`, `handle_connect_reply_2`, `session_reset`):
//! a scripted raw acceptor drives our connector through a reply and the test checks
//! what a user and the wire see against what Ceph does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use messenger::{ConnState, Policy};
use protocol::types::{EntityAddr, EntityType, Features};
use protocol::wire::{ConnectMsg, ConnectReply, MsgHeader, Tag, MAX_AUTHORIZER_LEN};
use tests::hostile::*;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

fn listener() -> (TcpListener, EntityAddr) {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = EntityAddr::legacy(l.local_addr().expect("addr"), 7);
    (l, addr)
}

fn ready(connect: &ConnectMsg) -> ConnectReply {
    ConnectReply {
        features: Features::PACIFIC_ADVERTISED,
        global_seq: 5,
        connect_seq: connect.connect_seq + 1,
        ..ConnectReply::new(Tag::READY)
    }
}

/// The next connect message on a socket past the banners.
fn next_connect(sock: &mut TcpStream) -> ConnectMsg {
    let mut head = [0u8; ConnectMsg::LEN];
    sock.read_exact(&mut head).expect("connect");
    let (connect, _) = ConnectMsg::decode(&head).expect("connect decodes");
    let len = connect.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN);
    let mut auth = vec![0u8; len];
    sock.read_exact(&mut auth).expect("authorizer");
    connect
}

/// The header of the next message on an open socket (nothing else expected before it).
fn next_message_header(sock: &mut TcpStream) -> MsgHeader {
    let mut tag = [0u8; 1];
    sock.read_exact(&mut tag).expect("tag");
    assert_eq!(Tag(tag[0]), Tag::MSG, "expected a message");
    let mut head = [0u8; MsgHeader::LEN];
    sock.read_exact(&mut head).expect("header");
    MsgHeader::decode(&head).expect("header decodes").0
}

/// RESETSESSION to a lossless connector's reconnect (the acceptor lost the session):
/// Ceph's `session_reset` discards the queued and unacknowledged messages, reports
/// `ms_handle_remote_reset`, and connects again at connect_seq 0 on the same socket;
/// the new session numbers from 1.
#[test]
fn resetsession_on_a_reconnect_starts_a_new_session() {
    let (l, peer) = listener();
    let cfg = backoff_config(Duration::from_millis(5), Duration::from_millis(50));
    let (m, rx) = client_with(EntityType::OSD, 3, Policy::lossless_peer(), cfg);
    let conn = m.connect_to(EntityType::OSD, peer);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (mut s1, _) = l.accept().expect("first dial");
    let c = accept_v1_connect(&mut s1, peer);
    assert_eq!(c.connect_seq, 0);
    s1.write_all(&ready(&c).to_bytes()).expect("READY");
    assert!(wait_for_event(&rx, |s| matches!(s, Seen::Connect(x) if *x == conn)), "no connect");
    assert_eq!(next_message_header(&mut s1).seq, 1);
    drop(s1);

    let (mut s2, _) = l.accept().expect("reconnect");
    let c = accept_v1_connect(&mut s2, peer);
    assert_eq!(c.connect_seq, 2, "a reconnect past open bumps connect_seq");
    s2.write_all(&ConnectReply::new(Tag::RESETSESSION).to_bytes()).expect("RESETSESSION");
    let c = next_connect(&mut s2);
    assert_eq!(c.connect_seq, 0, "after RESETSESSION");
    s2.write_all(&ready(&c).to_bytes()).expect("READY");
    assert!(
        wait_for_event(&rx, |s| matches!(s, Seen::RemoteReset(x) if *x == conn)),
        "no remote reset"
    );
    conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    let h = next_message_header(&mut s2);
    assert_eq!(
        (h.seq, h.tid),
        (1, 2),
        "the old session's message went with it; ours numbers from 1"
    );
    m.shutdown();
}

/// WAIT to a lossless connector with standby and nothing queued: Ceph's `fault` does not
/// park a connection in WAIT (`state != WAIT`), it dials again after `ms_max_backoff`.
#[test]
fn wait_with_nothing_queued_dials_again_after_the_max_backoff() {
    let (l, peer) = listener();
    let cfg = backoff_config(Duration::from_millis(5), Duration::from_millis(50));
    let (m, _rx) = client_with(EntityType::OSD, 3, Policy::lossless_peer(), cfg);
    let conn = m.connect_to(EntityType::OSD, peer);
    let (mut s1, _) = l.accept().expect("first dial");
    let c = accept_v1_connect(&mut s1, peer);
    s1.write_all(&ConnectReply::new(Tag::WAIT).to_bytes()).expect("WAIT");
    l.set_nonblocking(false).expect("blocking");
    let (tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        // The socket goes back with the connect: held open, our side waits for the
        // reply (a closed one would fault it into standby, which is right then).
        let _ = tx.send(l.accept().map(|(mut s, _)| (accept_v1_connect(&mut s, peer), s)));
    });
    let again = done.recv_timeout(Duration::from_secs(5)).expect("no dial after WAIT");
    let (again, _held) = again.expect("accept");
    assert_eq!(again.connect_seq, c.connect_seq, "a connect attempt keeps its connect_seq");
    assert_ne!(conn.state(), ConnState::Standby);
    m.shutdown();
}
