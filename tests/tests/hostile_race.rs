//! Two connects racing to replace one lossless session: the accept decision reads the
//! session and marks it "being replaced" in one critical section, so at most one wins;
//! the other is told to retry (Ceph's RETRY_GLOBAL while `replacing`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};

use messenger::Policy;
use protocol::types::{EntityAddr, EntityType};
use protocol::wire::{ConnectReply, Tag};
use tests::hostile::*;
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
