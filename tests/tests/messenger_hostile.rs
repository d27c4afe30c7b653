//! Nothing a peer sends can hurt anyone else: hostile bytes fault only that peer's
//! connection, while a well-behaved client's traffic goes on untouched.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::Policy;
use protocol::types::{EntityName, EntityType};
use protocol::wire::{MsgHeader, Tag};
use rand::{Rng, SeedableRng};
use tests::hostile::handshaken_socket;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Waits until the server closes `sock` (EOF or reset), bounded by `WAIT`.
fn wait_closed_by_server(mut sock: TcpStream) {
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        assert!(Instant::now() < deadline, "the server kept a hostile connection open");
    }
}

#[test]
fn hostile_peers_lose_only_their_own_connection() {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, srv.my_addr());
    good.send_message(test_message(MSG_TEST, 0, Bytes::new())).expect("send");
    assert_eq!(next_message(&cli_rx).1.tid(), 0);

    // 1. Random bytes instead of a banner.
    let mut garbage = TcpStream::connect(srv.my_addr().addr.expect("addr")).expect("connect");
    let noise: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    garbage.write_all(&noise).expect("write");

    // 2. A proper session, then a message header announcing a 4 GiB front (over any
    //    limit; its crc is right, so only the length check can stop it).
    let (mut oversize, _) = handshaken_socket(srv.my_addr(), Policy::lossy_client());
    let header = MsgHeader {
        seq: 1,
        msg_type: MSG_TEST,
        front_len: u32::MAX,
        src: EntityName::new(EntityType::CLIENT, -1),
        ..MsgHeader::default()
    }
    .with_crc();
    let mut frame = vec![Tag::MSG.0];
    frame.extend_from_slice(&header.to_bytes());
    oversize.write_all(&frame).expect("write");

    // 3. A proper session, then an unknown tag.
    let (mut bad_tag, _) = handshaken_socket(srv.my_addr(), Policy::lossy_client());
    bad_tag.write_all(&[0x42]).expect("write");

    // The good client keeps talking the whole time.
    for tid in 1..=200u64 {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[5; 100])))
            .expect("send");
    }
    for tid in 1..=200u64 {
        assert_eq!(next_message(&cli_rx).1.tid(), tid, "good traffic disturbed (seed {seed})");
    }
    for sock in [garbage, oversize, bad_tag] {
        wait_closed_by_server(sock);
    }
    assert!(good.is_connected());
    // The server saw exactly the good client's messages.
    let mut seen = 0;
    while let Ok(ev) = srv_rx.recv_timeout(Duration::from_millis(300)) {
        if let Seen::Message(_, m) = ev {
            assert_eq!(m.msg_type(), MSG_TEST);
            seen += 1;
        }
    }
    assert_eq!(seen, 201, "the server saw exactly the good client's messages");
    cli.shutdown();
    srv.shutdown();
}
