//! The sans-IO v1 state machine against real Ceph 16.2 over plain blocking sockets:
//! our connect side to a real `ceph-mon` (handshake, MAuth → MAuthReply, MMonSubscribe →
//! MMonMap, keepalive2), and our accept side dialled by the real `ceph` CLI (it gets as
//! far as sending its MAuth, which we decode). Skipped, with a printed reason, when Ceph
//! is not installed (unless ASYNCMSGR_REQUIRE_CEPH=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::messages::{
    AuthNegotiation, MAuth, MAuthReply, MMonMap, MMonSubscribe, MsgType, TypedMessage,
};
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::v1::Connection;
use protocol::wire::KeepaliveStamp;
use protocol::{decide, Config, Event, Policy, Seq};
use tests::ceph::{client_conf_for, CephMon};

/// Runs `conn` over a blocking `stream` until `stop` accepts an event (which is
/// returned). Budget requests are granted; accept requests are decided as a stateless
/// server announcing `my_addr` (no session table).
fn pump(
    conn: &mut Connection,
    stream: &mut TcpStream,
    deadline: Instant,
    my_addr: EntityAddr,
    dial: Option<SocketAddr>,
    mut stop: impl FnMut(&Event) -> bool,
) -> Event {
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        assert!(Instant::now() < deadline, "deadline passed; {conn}");
        let mut segs = Vec::new();
        while conn.poll_transmit(&mut segs) > 0 {}
        for s in &segs {
            stream.write_all(s).expect("write");
        }
        let now = Instant::now();
        while let Some(ev) = conn.poll_event() {
            if !matches!(ev, Event::Message(_) | Event::NeedBudget { .. }) {
                eprintln!("{conn}: {ev:?}");
            }
            match &ev {
                Event::NeedBudget { .. } => conn.grant_budget(now),
                Event::AcceptRequest(req) => {
                    let policy = Policy::stateless_server();
                    let d = decide(req, None, &policy, &my_addr.into());
                    conn.handle_accept_decision(now, policy, d, None);
                }
                Event::Closed { by, reason } => panic!("{conn}: closed by {by:?}: {reason}"),
                Event::Reconnect { .. } => {
                    // Lossy connect attempt failed before opening (e.g. a monitor still
                    // starting): dial again, as the messenger would.
                    let addr = dial.expect("a connect side knows where to dial");
                    *stream = TcpStream::connect(addr).expect("redial");
                    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                    conn.handle_transport_connected(Instant::now());
                }
                _ => {}
            }
            if stop(&ev) {
                return ev;
            }
        }
        if conn.wants_write() {
            continue;
        }
        if let Some(t) = conn.poll_timeout() {
            if t <= now {
                conn.handle_timeout(now);
            } else if !conn.wants_read() {
                // Nothing to read (backoff): the machine's own timer is the only wake-up.
                std::thread::sleep(t - now);
            }
        }
        if !conn.wants_read() {
            continue;
        }
        match tests::read_some(stream, &mut buf) {
            Ok(0) => conn.handle_transport_closed(Instant::now()),
            Ok(n) => conn.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

// msgr-v1.md 8: a client's first conversation with a monitor, driven by our connect side.
#[test]
fn connect_side_against_real_monitor() {
    let Some(mon) = CephMon::start("connect_side_against_real_monitor").expect("start ceph-mon")
    else {
        return;
    };
    let nonce = std::process::id() ^ 0x5a5a_0000;
    let config = Config::new(
        EntityName::new(EntityType::CLIENT, EntityName::NEW),
        EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce),
    );
    let now = Instant::now();
    let deadline = now + Duration::from_secs(20);
    let mon_addr = EntityAddr::legacy(mon.addr(), 0);
    let my = config.v1_addr();
    let dial = Some(mon.addr());
    let mut conn = Connection::connect(
        Arc::new(config),
        Policy::lossy_client(),
        mon_addr,
        EntityType::MON,
        now,
    );
    let mut stream = TcpStream::connect(mon.addr()).expect("dial monitor");
    conn.handle_transport_connected(Instant::now());
    let opened =
        pump(&mut conn, &mut stream, deadline, my, dial, |e| matches!(e, Event::Opened(_)));
    let Event::Opened(o) = opened else { unreachable!() };
    assert!(o.lossy, "a monitor makes client sessions lossy");
    assert_eq!(o.features, Features::PACIFIC_ADVERTISED);
    assert_eq!(o.connect_seq, protocol::ConnectSeq(1));

    // As MonClient: KEEPALIVE2 first, then MAuth.
    let stamp = KeepaliveStamp { sec: 1_700_000_000, nsec: 42 };
    conn.send_keepalive(stamp);
    let mut auth = MAuth::negotiate(&AuthNegotiation::default(), 0).to_message(conn.features());
    auth.set_priority(PRIO_DEFAULT);
    conn.send_message(auth);
    let mut got_ack = false;
    let ev = pump(&mut conn, &mut stream, deadline, my, dial, |e| {
        got_ack |= matches!(e, Event::KeepaliveAck(s) if *s == stamp);
        matches!(e, Event::Message(m) if m.msg_type() == MsgType::AUTH_REPLY.0)
    });
    let Event::Message(m) = ev else { unreachable!() };
    assert_eq!(m.seq(), 1);
    let reply = MAuthReply::from_message(&m).expect("decode MAuthReply");
    assert_eq!(reply.result, 0);
    assert!(reply.global_id > 0);
    assert!(got_ack || conn.last_keepalive_ack() == Some(stamp), "KEEPALIVE2_ACK echoed");

    let mut sub = MMonSubscribe::default();
    sub.want("monmap", 0, 0);
    let mut sub = sub.to_message(conn.features());
    sub.set_priority(PRIO_DEFAULT);
    conn.send_message(sub);
    let ev = pump(
        &mut conn,
        &mut stream,
        deadline,
        my,
        dial,
        |e| matches!(e, Event::Message(m) if m.msg_type() == MsgType::MON_MAP.0),
    );
    let Event::Message(m) = ev else { unreachable!() };
    let map = MMonMap::from_message(&m).expect("decode MMonMap");
    assert_eq!(map.monmap.fsid, mon.fsid_bytes());
    assert_eq!(conn.seqs().out_seq, Seq(2), "we sent two messages");

    conn.close(Instant::now());
    let mut segs = Vec::new();
    conn.poll_transmit(&mut segs);
    assert_eq!(segs.concat(), [6], "CLOSE");
    stream.write_all(&segs.concat()).unwrap();
    // The monitor closes the TCP connection on CLOSE.
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

// msgr-v1.md 9.1: the real `ceph` CLI dials our accept side, handshakes (SEQ), sends
// KEEPALIVE2 and its MAuth, which we decode.
#[test]
fn accept_side_dialled_by_real_ceph_cli() {
    if !tests::ceph::ceph_available("accept_side_dialled_by_real_ceph_cli") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let local = listener.local_addr().unwrap();
    let conf = client_conf_for(local, "6d9a2b3e-1f3c-4a55-9d0e-2c1f3b4a5d6e").unwrap();
    let mut cli = Command::new("ceph")
        .arg("-c")
        .arg(&conf)
        .args(["-m", &format!("v1:{local}"), "-s", "--connect-timeout", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ceph");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listener.accept());
    });
    let (mut stream, peer) =
        rx.recv_timeout(Duration::from_secs(20)).expect("CLI connected").unwrap();

    let my_addr = EntityAddr::legacy(local, 0);
    let config = Config::new(EntityName::new(EntityType::MON, 0), my_addr);
    let now = Instant::now();
    let mut conn = Connection::accept(Arc::new(config), peer, local, now);
    let my = my_addr;
    let dial = None;
    let deadline = now + Duration::from_secs(20);
    let mut keepalive = false;
    let ev = pump(&mut conn, &mut stream, deadline, my, dial, |e| {
        keepalive |= matches!(e, Event::KeepaliveReceived);
        matches!(e, Event::Message(_))
    });
    let _ = cli.kill();
    let _ = cli.wait();
    let _ = std::fs::remove_dir_all(conf.parent().unwrap());
    let Event::Message(m) = ev else { unreachable!() };
    assert_eq!(m.msg_type(), MsgType::AUTH.0);
    assert_eq!(m.seq(), 1);
    assert!(keepalive, "the CLI sends KEEPALIVE2 before MAuth");
    let auth = MAuth::from_message(&m).expect("decode MAuth");
    let neg = auth.negotiation().expect("negotiation").expect("decodes");
    assert_eq!(neg.name.to_string(), "client.admin");
    assert_eq!(conn.peer_type(), Some(EntityType::CLIENT));
    assert!(conn.is_lossy());
    assert_eq!(conn.peer_addr().unwrap().addr.unwrap().ip(), peer.ip(), "blank IP fixed up");
}
