//! Two connects racing to replace one lossless session: the accept decision reads the
//! session and marks it "being replaced" in one critical section, so at most one wins;
//! the other is told to retry (Ceph's RETRY_GLOBAL while `replacing`). Over msgr v1 and
//! msgr2.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};

use messenger::Policy;
use protocol::types::{EntityAddr, EntityAddrVec, EntityType, Features};
use protocol::v2::frames::{ClientIdent, ControlFrame, ServerIdent, SessionReconnect};
use protocol::v2::Tag as V2Tag;
use protocol::wire::{ConnectReply, Tag};
use tests::hostile::*;
use tests::hostile_v2::*;
use tests::loopback::*;

fn reply_tag(sock: &mut std::net::TcpStream) -> Tag {
    let mut reply = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut reply).expect("reply");
    Tag(reply[0])
}

#[test]
fn two_connects_racing_to_replace_a_session_do_not_both_win() {
    let config = test_config(4);
    let (srv, addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let mut both_won = 0;
    for round in 0..100u32 {
        let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 1000 + round);
        // The session: opened by a first socket (connect_seq 0 → the session's is 1).
        let mut first = banner_socket_as(addr, me);
        first.write_all(&session_connect(0, 10)).expect("connect");
        assert!(matches!(reply_tag(&mut first), Tag::READY | Tag::SEQ));
        // Two reconnects of that session at once.
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut sock = banner_socket_as(addr, me);
                    barrier.wait();
                    sock.write_all(&session_connect(2, 100)).expect("connect");
                    let tag = reply_tag(&mut sock);
                    (sock, tag)
                })
            })
            .collect();
        let tags: Vec<Tag> = racers.into_iter().map(|r| r.join().expect("racer").1).collect();
        let won = tags.iter().filter(|t| matches!(**t, Tag::READY | Tag::SEQ)).count();
        assert!(won >= 1 || tags.contains(&Tag::RETRY_GLOBAL), "round {round}: {tags:?}");
        if won > 1 {
            both_won += 1;
        }
        drop(first);
    }
    assert_eq!(both_won, 0, "two connects replaced one session in {both_won} rounds");
    srv.shutdown();
}

// The msgr2 counterpart: a lossless session opened with CLIENT_IDENT, then two
// SESSION_RECONNECTs of it at once (same cookies, global_seq and connect_seq). The accept
// decision marks the session "being replaced" in the same critical section that reads it,
// so exactly one gets SESSION_RECONNECT_OK; the other is answered as Ceph's
// `handle_reconnect` says: RETRY_GLOBAL while the session is being replaced, or, once the
// winner is in, WAIT (equal connect_seq, the peer's address sorts higher and the policy
// is not a server's: the existing session wins the reconnect race). Never a second
// RECONNECT_OK, never a socket closed without an answer.
#[test]
fn two_session_reconnects_racing_to_replace_a_session_do_not_both_win_over_msgr2() {
    const ROUNDS: u32 = 60;
    let config = test_config(4);
    let (srv, _addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::lossless_peer(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    let server = addr_for(messenger::ProtocolVersion::V2, srv.my_addr());
    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..ROUNDS {
        // Nonces above the server's: our address sorts higher in a race.
        let me = v2_peer_addr(5000 + round);
        let cookie = 0x1000 + u64::from(round);
        // The session: opened by a first socket.
        let mut first = v2_socket_at_ident(server, me, Policy::lossless_peer());
        first
            .write_all(&client_ident(server, me, Features::PACIFIC_ADVERTISED, cookie))
            .expect("ident");
        let (tag, seg) = read_frame(&mut first).expect("ident reply");
        assert_eq!(tag, V2Tag::SERVER_IDENT, "round {round}");
        let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
        assert_ne!(server_cookie, 0, "a lossless session has a server cookie");
        let reconnect = control(&SessionReconnect {
            addrs: EntityAddrVec { addrs: vec![me] },
            client_cookie: cookie,
            server_cookie,
            global_seq: 100,
            connect_seq: 1,
            msg_seq: 0,
        });
        // Two reconnects of that session at once.
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (barrier, reconnect) = (barrier.clone(), reconnect.clone());
                std::thread::spawn(move || {
                    let mut sock = v2_socket_at_ident(server, me, Policy::lossless_peer());
                    barrier.wait();
                    sock.write_all(&reconnect).expect("reconnect");
                    let tag = read_frame(&mut sock).map(|(t, _)| t);
                    (sock, tag)
                })
            })
            .collect();
        let tags: Vec<Option<V2Tag>> =
            racers.into_iter().map(|r| r.join().expect("racer").1).collect();
        for t in &tags {
            *tally.entry(format!("{t:?}")).or_default() += 1;
        }
        let won = tags.iter().filter(|t| **t == Some(V2Tag::SESSION_RECONNECT_OK)).count();
        let lost = tags
            .iter()
            .filter(|t| matches!(t, Some(V2Tag::SESSION_RETRY_GLOBAL | V2Tag::WAIT)))
            .count();
        assert_eq!((won, lost), (1, 1), "round {round}: {tags:?}");
        drop(first);
    }
    eprintln!("replies over {ROUNDS} rounds: {tally:?}");
    srv.shutdown();
}

/// A CLIENT_IDENT from `me` opening a lossless session with `client_cookie`, sent at
/// `global_seq`.
fn ident_at(server: EntityAddr, me: EntityAddr, client_cookie: u64, global_seq: u64) -> Vec<u8> {
    control(&ClientIdent {
        addrs: EntityAddrVec { addrs: vec![me] },
        target_addr: server,
        gid: -1,
        global_seq,
        supported_features: Features::PACIFIC_ADVERTISED,
        required_features: Features::MSG_ADDR2,
        flags: 0,
        client_cookie,
    })
}

// A client marks a connection down in the middle of its handshake and opens a new
// session; the old connection's CLIENT_IDENT, late (a proxy, a slow path), reaches the
// stateful server after the new session's. Its lower global_seq marks it stale (Ceph's
// handle_existing_connection: "this is a stale connection"): it must not replace the
// newer session as a peer restart would, or the client's next reconnect of that session
// is answered SESSION_RESET and a lossless client sees its session reset.
#[test]
fn a_late_ident_of_an_older_connection_does_not_replace_a_newer_session_over_msgr2() {
    let (srv, _addr, _rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        test_config(2),
    );
    let server = addr_for(messenger::ProtocolVersion::V2, srv.my_addr());
    let me = v2_peer_addr(4242);
    let mut old = v2_socket_at_ident(server, me, Policy::lossless_client());
    let mut new = v2_socket_at_ident(server, me, Policy::lossless_client());
    new.write_all(&ident_at(server, me, 0xB, 20)).expect("new ident");
    let (tag, seg) = read_frame(&mut new).expect("new ident reply");
    assert_eq!(tag, V2Tag::SERVER_IDENT);
    let server_cookie = ServerIdent::from_segment(&seg).expect("server ident").server_cookie;
    old.write_all(&ident_at(server, me, 0xA, 10)).expect("old ident");
    let answer = read_frame(&mut old).map(|(t, _)| t);
    assert_ne!(answer, Some(V2Tag::SERVER_IDENT), "the stale ident opened a session");
    // The newer session survives: its reconnect after a cut is taken, not reset.
    drop(new);
    let mut again = v2_socket_at_ident(server, me, Policy::lossless_client());
    again
        .write_all(&control(&SessionReconnect {
            addrs: EntityAddrVec { addrs: vec![me] },
            client_cookie: 0xB,
            server_cookie,
            global_seq: 30,
            connect_seq: 1,
            msg_seq: 0,
        }))
        .expect("reconnect");
    let tag = read_frame(&mut again).map(|(t, _)| t);
    assert_eq!(tag, Some(V2Tag::SESSION_RECONNECT_OK), "the newer session was replaced");
    srv.shutdown();
}
