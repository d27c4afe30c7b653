//! What a peer can make grow in a connection's mailbox: the commands other threads post
//! for its driver, which runs them only when its worker gets to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger::{ConnState, Connection, Messenger, MessengerConfig, Policy};
use protocol::types::{proto_version, EntityAddr, EntityName, EntityType, Features};
use protocol::wire::{
    ConnectMsg, ConnectReply, Tag, ACCEPTOR_BLOCK_LEN, BANNER, MAX_AUTHORIZER_LEN,
};
use tests::loopback::{patient_config, wait_until, Recorder, WAIT};

/// Commands posted to `conn` that its driver has not taken yet (`messenger dump`).
fn mailbox_commands(m: &Messenger, conn: &Connection) -> u64 {
    let dump = m.dump_connections();
    let entry = dump
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"].as_u64() == Some(conn.id())))
        .unwrap_or_else(|| panic!("conn {} not in the dump: {dump}", conn.id()));
    entry["mailbox_commands"].as_u64().unwrap_or_else(|| panic!("no count: {entry}"))
}

/// A v1 connect of an OSD to an OSD, opening a session (connect_seq 0).
fn osd_connect(global_seq: u32) -> [u8; ConnectMsg::LEN] {
    ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::OSD,
        global_seq,
        connect_seq: 0,
        protocol_version: proto_version(EntityType::OSD, EntityType::OSD, false),
        authorizer_protocol: 0,
        authorizer_len: 0,
        flags: 0,
    }
    .to_bytes()
}

fn read_reply(sock: &mut std::net::TcpStream) -> Tag {
    let mut head = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut head).expect("connect reply");
    let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
    let len = reply.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN, "authorizer reply of {len} bytes");
    let mut auth = vec![0u8; len];
    sock.read_exact(&mut auth).expect("authorizer reply");
    reply.tag
}

/// Our OSD dials a peer whose acceptor never answers, so its session waits, connecting.
/// A hostile peer then claims that peer's address (sorting above ours, so it loses the
/// connection race) on TCP connection after TCP connection, 8 connects each: every one is
/// answered WAIT and nudges our connecting session with a keepalive. With that session's
/// worker busy, the nudges wait in its mailbox: one command each grew it by 80,000
/// commands for 10,000 connections, without bound. Consecutive keepalives do what one
/// does (the driver stamps it when it takes it), so one waits at most.
#[test]
fn nudges_of_a_connecting_session_by_peers_that_lose_the_race_do_not_pile_up() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind the silent peer");
    // Its nonce sorts above ours (1): its connects lose the race and are told to wait.
    let claimed = EntityAddr::legacy(silent.local_addr().expect("addr"), 0xff);
    let config = MessengerConfig { workers: 3, ..patient_config(3) };
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config).expect("messenger");
    m.set_default_policy(Policy::lossless_peer());
    let bound = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (rec, _rx) = Recorder::new(false);
    m.add_dispatcher_head(rec).expect("dispatcher");
    // The listener went to worker 0 (all idle at the bind); the session goes to worker 1,
    // which the test then holds, while accepted connections go to the others.
    let pool = m.pool().clone();
    pool.handle(0).add_load(1);
    pool.handle(2).add_load(1);
    let existing = m.connect_to(EntityType::OSD, claimed);
    assert_eq!(pool.handle(1).load(), 1, "the session is on worker 1");
    pool.handle(0).add_load(-1);
    pool.handle(2).add_load(-1);
    let (held_tx, held_rx) = crossbeam_channel::bounded::<()>(1);
    let (release, wait) = crossbeam_channel::bounded::<()>(0);
    let still_held = Arc::new(AtomicBool::new(true));
    let held = still_held.clone();
    pool.handle(1)
        .dispatch_event_external(move |_| {
            let _ = held_tx.send(());
            let _ = wait.recv_timeout(Duration::from_secs(300));
            held.store(false, Ordering::SeqCst);
        })
        .expect("hold");
    held_rx.recv_timeout(WAIT).expect("worker 1 held");
    assert_eq!(existing.state(), ConnState::Connecting);

    const CONNECTIONS: u32 = 10_000;
    const CONNECTS: u32 = 8;
    let started = Instant::now();
    let batch: Vec<u8> = (0..CONNECTS).flat_map(|i| osd_connect(i + 1)).collect();
    for n in 0..CONNECTIONS {
        // Our address and the connects in one write, with no delay: the test's pace is
        // the server's, not Nagle's.
        let mut sock = TcpStream::connect(bound).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        sock.write_all(BANNER).expect("banner");
        let mut block = [0u8; ACCEPTOR_BLOCK_LEN];
        sock.read_exact(&mut block).expect("acceptor banner");
        let mut hello = claimed.encode_legacy().to_vec();
        hello.extend_from_slice(&batch);
        sock.write_all(&hello).expect("address and connects");
        for i in 0..CONNECTS {
            let tag = read_reply(&mut sock);
            assert_eq!(tag, Tag::WAIT, "connection {n}, connect {i}: {tag:?}");
        }
    }
    let queued = mailbox_commands(&m, &existing);
    assert!(still_held.load(Ordering::SeqCst), "measured with the session's worker held");
    eprintln!(
        "{CONNECTIONS} connections x {CONNECTS} connects in {:?}: {queued} commands queued",
        started.elapsed()
    );
    assert!(queued <= 1, "{queued} commands wait for the busy session's driver");

    // Released, the driver takes what waits and the session still waits for its peer.
    drop(release);
    wait_until(
        || mailbox_commands(&m, &existing) == 0,
        || format!("still queued: {}", mailbox_commands(&m, &existing)),
    );
    assert_eq!(existing.state(), ConnState::Connecting);
    m.shutdown();
    m.wait();
    drop(silent);
}
