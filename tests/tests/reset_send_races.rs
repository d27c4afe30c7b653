//! Sends that race a session reset or a replace on a lossless connection: what a send
//! returned Ok for is delivered once, in order, or a reset is reported for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

use bytes::Bytes;
use messenger::Policy;
use protocol::types::{EntityAddr, EntityType, Features, CEPH_OSD_PROTOCOL};
use protocol::wire::{ConnectMsg, ConnectReply, MsgHeader, Tag};
use tests::hostile::banner_socket_as;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// What the peer's old session received from us before we marked our side down.
const PEER_IN_SEQ: u64 = 100;

/// A marks its lossless connection to peer B down and connects again (c2, connect_seq 0),
/// queueing messages on it; before c2's handshake gets anywhere, B's old session (which
/// received `PEER_IN_SEQ` messages from A's old connection) redials A with a connect_seq
/// above 0. Without resetcheck (lossless peers) A keeps c2's session for that connect (Ceph's
/// replace) and the SEQ exchange tells it B's in_seq. Ceph's `discard_requeued_up_to`
/// then numbers on from B's in_seq (nothing requeued: `return seq`); numbered from 1,
/// c2's messages are old seqs to B, which drops them as duplicates (a Pacific v1 receiver
/// stops reading altogether): sent Ok, lost without any reset reported.
#[test]
fn a_fresh_session_kept_for_a_peers_reconnect_numbers_above_the_peers_in_seq() {
    let (a, _, _a_rx) = server(EntityType::OSD, 1, Policy::lossless_peer(), false);
    let a_sock = a.my_addr().addr.expect("A's address");
    // B's listener: takes c2's dial and never answers it (c2 stays connecting).
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let b_addr = EntityAddr::legacy(listener.local_addr().expect("addr"), 7);
    let c2 = a.connect_to(EntityType::OSD, b_addr);
    for tid in 1..=3 {
        c2.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
    }
    let (_dialled, _) = listener.accept().expect("c2's dial");

    // B's old session redials A.
    let mut sock = banner_socket_as(a_sock, b_addr);
    let mut global_seq = 1000;
    let reply = loop {
        let connect = ConnectMsg {
            features: Features::PACIFIC_ADVERTISED,
            host_type: EntityType::OSD,
            global_seq,
            connect_seq: 5,
            protocol_version: CEPH_OSD_PROTOCOL,
            authorizer_protocol: 0,
            authorizer_len: 0,
            flags: 0,
        };
        sock.write_all(&connect.to_bytes()).expect("connect");
        let mut head = [0u8; ConnectReply::LEN];
        sock.read_exact(&mut head).expect("connect reply");
        let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
        assert_eq!(reply.authorizer_len, 0);
        if reply.tag == Tag::RETRY_GLOBAL {
            global_seq = reply.global_seq + 1;
            continue;
        }
        break reply;
    };
    // c2's session is kept for the reconnect (no resetcheck), and the seqs exchanged.
    assert_eq!(reply.tag, Tag::SEQ, "a reconnect with RECONNECT_SEQ is answered SEQ");
    let mut in_seq = [0u8; 8];
    sock.read_exact(&mut in_seq).expect("A's in_seq");
    assert_eq!(u64::from_le_bytes(in_seq), 0, "c2 received nothing");
    sock.write_all(&PEER_IN_SEQ.to_le_bytes()).expect("B's in_seq");
    // The first message A sends on the session: c2's tid 1.
    let mut tag = [0u8; 1];
    loop {
        sock.read_exact(&mut tag).expect("a tag");
        if Tag(tag[0]) == Tag::MSG {
            break;
        }
        assert!(
            [Tag::KEEPALIVE, Tag::ACK, Tag::KEEPALIVE2].contains(&Tag(tag[0])),
            "unexpected tag {}",
            tag[0]
        );
        let skip = if Tag(tag[0]) == Tag::KEEPALIVE { 0 } else { 8 };
        let mut buf = vec![0u8; skip];
        sock.read_exact(&mut buf).expect("tag body");
    }
    let mut head = [0u8; MsgHeader::LEN];
    sock.read_exact(&mut head).expect("header");
    let header = MsgHeader::from_bytes(&head);
    assert_eq!(header.tid, 1);
    assert!(
        header.seq > PEER_IN_SEQ,
        "c2's first message numbered {}: the peer, which has {PEER_IN_SEQ}, drops it",
        header.seq
    );
    a.shutdown();
}
