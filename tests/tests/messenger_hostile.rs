//! Nothing a peer sends can hurt anyone else: hostile bytes fault only that peer's
//! connection, while a well-behaved client's traffic goes on untouched. Over msgr v1 and,
//! with msgr2's own attacks (bad preambles, huge segments, stalled frames), over msgr2.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Policy, ProtocolVersion};
use protocol::types::{EntityName, EntityType};
use protocol::v2::banner::Banner;
use protocol::v2::framing::{Preamble, SegmentDesc, HEADER2_LEN, PREAMBLE_LEN};
use protocol::v2::tag::Tag as Tag2;
use protocol::wire::{MsgHeader, Tag};
use rand::{Rng, SeedableRng};
use tests::hostile::{handshaken_socket, head_len, peer_issues, RawPeer};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Waits until the server closes `sock` (EOF or reset), bounded by `WAIT`: the servers
/// here run with a [`patient_config`], so only a fault closes a socket that soon.
fn wait_closed_by_server(mut sock: TcpStream) {
    sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        match tests::read_some(&mut sock, &mut buf) {
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
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), true, any, patient_config(2));
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
    assert_eq!(
        test_messages_seen(&srv_rx),
        201,
        "the server saw exactly the good client's messages"
    );
    cli.shutdown();
    srv.shutdown();
}

/// A msgr2 preamble (crc mode) for `tag` with segments of `lens`.
fn preamble(tag: Tag2, lens: &[u32]) -> [u8; PREAMBLE_LEN] {
    let mut segments = [SegmentDesc::default(); 4];
    for (s, &len) in segments.iter_mut().zip(lens) {
        *s = SegmentDesc { len, align: 8 };
    }
    let num_segments = u8::try_from(lens.len()).expect("at most 4 segments");
    Preamble { tag, num_segments, segments, flags: 0 }.to_bytes()
}

/// msgr2's hostile bytes, each from its own peer while a msgr2 client talks to the same
/// server: each faults only its own connection, counted (`msgr_peer_issues`) and logged
/// like v1's, and the good client's traffic goes on untouched.
#[test]
fn msgr2_hostile_frames_lose_only_their_own_connection() {
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    // The stalled peer is cut off by the payload timeout; the others must be by the
    // checks they break (each waited for below), not by that timeout.
    let config =
        messenger::MessengerConfig { payload_timeout: Duration::from_secs(1), ..patient_config(2) };
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, addr, srv_rx) =
        server_on(EntityType::OSD, 1, Policy::stateless_server(), true, any, config);
    let srv_v2 = addr_for(ProtocolVersion::V2, srv.my_addr());
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let good = cli.connect_to(EntityType::OSD, srv_v2);
    good.send_message(test_message(MSG_TEST, 0, Bytes::new())).expect("send");
    assert_eq!(next_message(&cli_rx).1.tid(), 0);
    assert_eq!(good.protocol(), Some(ProtocolVersion::V2));
    let issues_before = peer_issues(&srv);
    // The first three break a check the server counts as it faults them: waited for one
    // at a time, so each is caught for what it sent (a broken length check would leave
    // the huge segment to the payload timeout, which counts nothing).
    let mut counted = issues_before;
    let mut caught = |what: &str| {
        wait_until(|| peer_issues(&srv) > counted, || format!("{what} was not caught"));
        counted = peer_issues(&srv);
    };

    // 1. A good banner, then random bytes where HELLO's preamble should be.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    garbage.write_all(&Banner::OURS.to_bytes()).expect("banner");
    let noise: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    garbage.write_all(&noise).expect("write");
    caught("garbage for a HELLO");

    // 2. An open session, then a MESSAGE preamble announcing a 4 GiB data segment (its
    //    crc is right, so only the length check can stop it, before any allocation).
    let mut huge = RawPeer::handshake(srv_v2, Policy::lossy_client());
    huge.sock
        .write_all(&preamble(Tag2::MESSAGE, &[HEADER2_LEN as u32, 0, 0, u32::MAX]))
        .expect("write");
    caught("a 4 GiB segment");

    // 3. An open session, then a KEEPALIVE2 preamble whose crc is wrong.
    let mut bad_crc = RawPeer::handshake(srv_v2, Policy::lossy_client());
    let mut p = preamble(Tag2::KEEPALIVE2, &[12]);
    p[PREAMBLE_LEN - 1] ^= 0x5a;
    bad_crc.sock.write_all(&p).expect("write");
    caught("a preamble with a bad crc");

    // 4. An open session, then a message's head and the start of its 1 MiB data, and
    //    silence: faulted at the payload timeout, its budget released.
    let mut stalled = RawPeer::handshake(srv_v2, Policy::lossy_client());
    let head = stalled.announce(1, 1 << 20, head_len(ProtocolVersion::V2) + 100);
    stalled.sock.write_all(&head).expect("write");

    // The good client keeps talking the whole time.
    for tid in 1..=200u64 {
        good.send_message(test_message(MSG_TEST, tid, Bytes::from_static(&[5; 100])))
            .expect("send");
    }
    for tid in 1..=200u64 {
        assert_eq!(next_message(&cli_rx).1.tid(), tid, "good traffic disturbed (seed {seed})");
    }
    for sock in [garbage, huge.sock, bad_crc.sock, stalled.sock] {
        wait_closed_by_server(sock);
    }
    assert!(good.is_connected());
    let issues = peer_issues(&srv) - issues_before;
    assert!(issues >= 3, "{issues} peer issues counted for three bad frames");
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || "the stalled message's budget was not released".into(),
    );
    assert_eq!(
        test_messages_seen(&srv_rx),
        201,
        "the server saw exactly the good client's messages"
    );
    cli.shutdown();
    srv.shutdown();
}

/// Counts the messages the server dispatched until it goes quiet for 300 ms, each of
/// which must be a test message (a hostile peer's bytes never become one).
fn test_messages_seen(srv_rx: &Receiver<Seen>) -> usize {
    let mut seen = 0;
    while let Ok(ev) = srv_rx.recv_timeout(Duration::from_millis(300)) {
        if let Seen::Message(_, m) = ev {
            assert_eq!(m.msg_type(), MSG_TEST);
            seen += 1;
        }
    }
    seen
}
