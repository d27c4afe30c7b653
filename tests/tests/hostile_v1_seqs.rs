//! msgr v1's session numbers at the edges of their 32-bit wire fields, from a hostile
//! (or merely long-lived) client against our acceptor.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use bytes::Bytes;
use messenger::Policy;
use protocol::types::{EntityAddr, EntityType, Features};
use protocol::wire::{ConnectReply, Tag, CONNECT_LOSSY, MAX_AUTHORIZER_LEN};
use tests::hostile::*;
use tests::loopback::*;

/// Reads a whole connect reply (its authorizer and, for SEQ, the acceptor's in_seq),
/// answering a SEQ with our in_seq 0 as a connector does.
fn read_reply(sock: &mut TcpStream) -> ConnectReply {
    let mut head = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut head).expect("connect reply");
    let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
    let len = reply.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN, "authorizer reply of {len} bytes");
    let mut rest = vec![0u8; len + if reply.tag == Tag::SEQ { 8 } else { 0 }];
    sock.read_exact(&mut rest).expect("rest of the reply");
    if reply.tag == Tag::SEQ {
        sock.write_all(&0u64.to_le_bytes()).expect("our in_seq");
    }
    reply
}

/// Connects on a fresh socket as `me` with `connect_seq`, following the acceptor's retry
/// replies as Ceph's connector does (RETRY_SESSION: its connect_seq; RESETSESSION: 0;
/// RETRY_GLOBAL: above its global_seq) for at most `MAX_CONNECT_ATTEMPTS` connects.
/// Returns the final tag and the socket.
fn connect_following_retries(
    server: SocketAddr,
    me: EntityAddr,
    mut connect_seq: u32,
    mut global_seq: u32,
) -> (Vec<Tag>, TcpStream) {
    let mut sock = banner_socket_as(server, me);
    let mut tags = Vec::new();
    for _ in 0..protocol::v1::MAX_CONNECT_ATTEMPTS {
        sock.write_all(&session_connect(connect_seq, global_seq)).expect("connect");
        let reply = read_reply(&mut sock);
        tags.push(reply.tag);
        match reply.tag {
            Tag::RETRY_SESSION => connect_seq = reply.connect_seq,
            Tag::RESETSESSION => connect_seq = 0,
            Tag::RETRY_GLOBAL => global_seq = reply.global_seq + 1,
            _ => break,
        }
    }
    (tags, sock)
}

/// A client whose session's connect_seq reaches the top of v1's 32-bit field (a Ceph
/// connector's wraps to 0 there, as its `connect_seq` is a `uint32_t`; a hostile one can
/// jump to it): our acceptor answers with the wrapped value, and must then accept the
/// client's next reconnect, which counts on from that wrapped value. It must not keep a
/// session number above anything a v1 connect can carry, which answers every later
/// reconnect of the peer with RETRY_SESSION, forever.
#[test]
fn a_v1_connect_seq_at_the_top_of_its_field_does_not_lock_the_peer_out() {
    let (srv, addr, _rx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    // Port 0: a client, never dialled back.
    let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 4242);

    // The session, opened: its connect_seq is 1.
    let (tags, first) = connect_following_retries(addr, me, 0, 10);
    assert!(matches!(tags.last(), Some(&(Tag::SEQ | Tag::READY))), "first connect: {tags:?}");

    // A reconnect at connect_seq u32::MAX: a normal reconnect (above the session's), the
    // reply's connect_seq wraps to 0 (what a Ceph connector expects: its own + 1).
    let (tags, second) = connect_following_retries(addr, me, u32::MAX, 11);
    assert!(matches!(tags.last(), Some(&(Tag::SEQ | Tag::READY))), "second connect: {tags:?}");
    drop(first);

    // The client's socket fails; Ceph's connector reconnects with connect_seq 0 + 1.
    drop(second);
    let (tags, _third) = connect_following_retries(addr, me, 1, 12);
    assert!(
        matches!(tags.last(), Some(&(Tag::SEQ | Tag::READY))),
        "the peer's reconnect never got in: {tags:?}"
    );
    srv.shutdown();
}

/// Ceph's connector takes the session's lossiness from the acceptor's reply
/// (`client_ready`: "this is fyi, actually, server decides!" sets `policy.lossy`), and
/// an accept decision reads that as `existing->policy.lossy`: when the peer that made
/// our dialled session lossy dials us in turn, its connect resets that session ("accept
/// replacing existing (lossy) channel": `session_reset`, then `replace`, which stops it
/// and queues its reset) and opens a new one, answered SEQ with our in_seq 0. Our
/// decision saw the policy we dialled with (lossless), took the connect_seq 0 for a
/// peer restart and kept the lossy session on the new socket, answered READY, and no
/// dispatcher heard of a reset.
#[test]
fn a_session_its_acceptor_made_lossy_is_reset_when_that_peer_dials_us() {
    let (srv, addr, rx) = server(EntityType::OSD, 1, Policy::lossless_peer(), false);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let peer = EntityAddr::legacy(listener.local_addr().expect("addr"), 7);

    // We dial the peer; its acceptor opens the session lossy.
    let conn = srv.connect_to(EntityType::CLIENT, peer);
    conn.send_message(test_message(MSG_HOSTILE, 1, Bytes::new())).expect("queued");
    let (mut sock, _) = listener.accept().expect("our dial");
    let connect = accept_v1_connect(&mut sock, peer);
    let reply = ConnectReply {
        features: Features::PACIFIC_ADVERTISED,
        global_seq: 5,
        connect_seq: connect.connect_seq + 1,
        flags: CONNECT_LOSSY,
        ..ConnectReply::new(Tag::READY)
    };
    sock.write_all(&reply.to_bytes()).expect("READY");
    assert!(wait_for_event(&rx, |s| matches!(s, Seen::Connect(c) if *c == conn)), "no connect");

    // The peer dials us: a new session of its own (connect_seq 0), global_seq above 5.
    let mut back = banner_socket_as(addr, peer);
    back.write_all(&session_connect(0, 6)).expect("connect");
    let reply = read_reply(&mut back);
    assert_eq!(reply.tag, Tag::SEQ, "a new session, not a restarted peer's");
    assert!(
        wait_for_event(&rx, |s| matches!(s, Seen::Reset(c) if *c == conn)),
        "the lossy session was not reset"
    );
    drop(sock);
    srv.shutdown();
}
