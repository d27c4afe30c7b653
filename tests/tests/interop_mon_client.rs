//! Our Messenger as a client of a real Ceph 16.2 monitor (issue 7): handshake, keepalive,
//! auth none, monmap, version query, ping, commands (sequential and concurrent), the
//! monitor dying and coming back, and our counters against the monitor's `perf dump`.
//!
//! Each test starts its own `ceph-mon` (tests::ceph::CephMon) and is skipped with a
//! printed reason when Ceph is not installed (a failure in CI, ASYNCMSGR_REQUIRE_CEPH=1).
//! No sleeps: every wait is a channel receive with a timeout.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use messenger::{MessengerConfig, Totals};
use protocol::types::{EntityAddr, EntityName, EntityType, Features, AUTH_NONE};
use tests::ceph::CephMon;
use tests::loopback::init_logging;
use tests::mon::*;

const STATUS: &str = r#"{"prefix": "status", "format": "json"}"#;

/// A monitor and an authenticated client of ours (`client.<global_id>`) that knows the
/// monmap (and so the fsid). `None` when Ceph is missing (skipped).
fn setup(test: &str) -> Option<(CephMon, MonClient, u64)> {
    init_logging();
    let mon = CephMon::start(test).expect("start ceph-mon")?;
    let client = MonClient::new(mon.addr(), MessengerConfig::default()).expect("client messenger");
    let reply = client.authenticate().expect("MAuthReply");
    assert_eq!(reply.result, 0, "auth none accepted: {reply:?}");
    assert_eq!(reply.protocol, AUTH_NONE);
    assert!(reply.global_id > 0);
    let monmap = client.fetch_monmap().expect("monmap");
    assert_eq!(monmap.fsid, mon.fsid_bytes());
    Some((mon, client, reply.global_id))
}

fn parse_json(data: &[u8]) -> serde_json::Value {
    serde_json::from_slice(data)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", String::from_utf8_lossy(data)))
}

/// MonClient's opening conversation (src/mon/MonClient.cc, msgr-v1.md section 8):
/// handshake with the Pacific feature set, KEEPALIVE2 echoed, MAuth → MAuthReply with a
/// global id (we become client.<id>), monmap, osdmap version, ping, status.
#[test]
fn monitor_conversation_handshake_keepalive_auth_monmap_version_ping_status() {
    init_logging();
    let Some(mon) = CephMon::start("monitor_conversation").expect("start ceph-mon") else {
        return;
    };
    let client = MonClient::new(mon.addr(), MessengerConfig::default()).expect("messenger");
    let conn = client.connection();
    assert_eq!(client.messenger().my_name(), EntityName::new(EntityType::CLIENT, -1));

    // Handshake: ms_handle_connect, both sides advertise the same Pacific set.
    let connected = client
        .wait_for("ms_handle_connect", |ev| match ev {
            MonEvent::Connect(c) => Some(c),
            _ => None,
        })
        .expect("connect");
    assert_eq!(connected, conn);
    assert!(conn.is_connected());
    assert_eq!(
        conn.features(),
        Features::PACIFIC_ADVERTISED,
        "negotiated {:#x}",
        conn.features().0
    );
    assert_eq!(conn.peer_addr(), Some(EntityAddr::legacy(mon.addr(), 0)));

    // Auth none.
    let reply = client.authenticate().expect("MAuthReply");
    assert_eq!((reply.protocol, reply.result), (AUTH_NONE, 0), "{reply:?}");
    assert!(reply.global_id > 0);
    let gid = reply.global_id as i64;
    assert_eq!(client.messenger().my_name(), EntityName::new(EntityType::CLIENT, gid));
    // MAuth said monmap epoch 0: the monitor pushes its monmap unsolicited (msgr-v1.md 7.4).
    let pushed = client
        .wait_for("unsolicited MMonMap", |ev| match ev {
            MonEvent::MonMap(m) => Some(m),
            _ => None,
        })
        .expect("monmap after auth");
    assert_eq!(pushed.fsid, mon.fsid_bytes());

    // Subscription → MMonMap with the fixture's fsid and address.
    let monmap = client.fetch_monmap().expect("subscribed monmap");
    assert_eq!(monmap.fsid, mon.fsid_bytes());
    assert_eq!(monmap.epoch, 1);
    assert_eq!(monmap.ranks, vec!["a".to_string()]);
    let addrs = monmap.addrs_of_rank(0).expect("rank 0");
    assert_eq!(addrs.legacy_addr(), Some(EntityAddr::legacy(mon.addr(), 0)));

    // KEEPALIVE2 → KEEPALIVE2_ACK echoing our stamp. The ack precedes on the wire the
    // reply to any message sent after the keepalive left; the second ping is sent only
    // after the first reply, so once its reply is here the ack has been processed.
    assert!(conn.last_keepalive_ack().is_none());
    conn.send_keepalive();
    let report = client.ping().expect("ping");
    client.ping().expect("second ping");
    let ack = conn.last_keepalive_ack().expect("KEEPALIVE2_ACK received");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert!(u64::from(ack.sec).abs_diff(now) < 120, "echoed stamp {ack:?} is ours (now {now})");

    // MPing → the monitor's health report.
    let health = parse_json(report.as_bytes());
    assert!(health.get("health").is_some(), "ping report has health: {report}");

    // MMonGetVersion osdmap.
    let v = client.get_version("osdmap", 7).expect("version reply");
    assert_eq!(v.handle, 7);
    assert!(v.version >= 1 && v.oldest_version <= v.version, "{v:?}");

    // status → r 0, JSON with the fixture's fsid.
    let ack = client.command(STATUS).expect("status ack");
    assert_eq!(ack.r, 0, "rs {:?}", ack.rs);
    let status = parse_json(&ack.data);
    assert_eq!(status["fsid"].as_str(), Some(mon.fsid()));
    assert_eq!(ack.cmd, vec![STATUS.to_string()], "the ack echoes the command");

    // The monitor's own view of our session (admin socket `sessions`): authenticated as
    // client.admin with our global id and host name, features as negotiated. (It keeps
    // the name `client.?` from the session's first message, MAuth, as for any client.)
    let sessions = parse_json(mon.admin(&["sessions"]).expect("admin sessions").as_bytes());
    let ours = sessions
        .as_array()
        .expect("session list")
        .iter()
        .find(|s| s["global_id"].as_u64() == Some(gid as u64))
        .unwrap_or_else(|| panic!("no session with global id {gid}: {sessions}"));
    assert_eq!(ours["entity_name"], "client.admin");
    assert_eq!(ours["remote_host"], "asyncmsgr");
    assert_eq!(ours["authenticated"], true);
    assert_eq!(ours["con_features_hex"], "3f01cfbdfffdffff");
    client.messenger().shutdown();
}

/// A status command tagged with `tag`: the monitor ignores the unknown key and echoes
/// the command in its ack, so each ack can be checked against what its tid asked.
fn tagged_status(tag: &str) -> String {
    format!(r#"{{"prefix": "status", "format": "json", "tag": "{tag}"}}"#)
}

fn check_ack(mon: &CephMon, sent: &str, ack: &protocol::messages::MMonCommandAck) {
    assert_eq!(ack.r, 0, "rs {:?} for {sent}", ack.rs);
    assert_eq!(ack.cmd, vec![sent.to_string()], "ack echoes the command its tid carried");
    assert_eq!(parse_json(&ack.data)["fsid"].as_str(), Some(mon.fsid()));
}

/// A librados-style command stream: 1000 commands one after the other over one lossy
/// connection, then 8 threads sending concurrently over the same connection (Ceph's
/// MonClient matches MMonCommandAck to its request by tid, as we do).
#[test]
fn thousand_sequential_and_eight_concurrent_command_streams_match_by_tid() {
    let Some((mon, client, _gid)) = setup("thousand_sequential_and_eight_concurrent") else {
        return;
    };
    let conn = client.connection();
    for i in 0..1000 {
        let cmd = tagged_status(&format!("seq-{i}"));
        let (tid, rx) = client.send_command(&cmd).expect("send");
        let ack = rx.recv_timeout(MON_WAIT).unwrap_or_else(|_| panic!("no ack for tid {tid}"));
        check_ack(&mon, &cmd, &ack);
    }
    assert_eq!(client.connection(), conn, "one connection throughout");

    const THREADS: usize = 8;
    const PER_THREAD: usize = 125;
    let client = Arc::new(client);
    let mon = Arc::new(mon);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (client, mon) = (client.clone(), mon.clone());
            std::thread::spawn(move || {
                // Keep a few commands in flight per thread so acks interleave.
                let mut in_flight = std::collections::VecDeque::new();
                for i in 0..PER_THREAD {
                    let cmd = tagged_status(&format!("t{t}-{i}"));
                    let (tid, rx) = client.send_command(&cmd).expect("send");
                    in_flight.push_back((tid, cmd, rx));
                    if in_flight.len() == 4 || i + 1 == PER_THREAD {
                        while let Some((tid, cmd, rx)) = in_flight.pop_front() {
                            let ack = rx
                                .recv_timeout(MON_WAIT)
                                .unwrap_or_else(|_| panic!("thread {t}: no ack for tid {tid}"));
                            check_ack(&mon, &cmd, &ack);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("command thread");
    }
    assert_eq!(client.pending_commands(), 0);
    assert_eq!(client.connection(), conn);
    assert!(conn.is_connected());
    // Nothing unmatched was left over.
    while let Some(ev) = client.next_event(std::time::Duration::ZERO) {
        assert!(!matches!(ev, MonEvent::UnmatchedAck(..)), "unmatched ack: {ev:?}");
    }
    client.messenger().shutdown();
}

/// The monitor crashes (SIGKILL) while commands are in flight: Ceph's lossy client
/// session faults into `ms_handle_reset` (ProtocolV1::fault on a lossy channel) and
/// MonClient dials again; once the monitor is back a new connection works.
#[test]
fn monitor_killed_mid_stream_resets_the_lossy_session_and_a_new_connection_works() {
    let Some((mut mon, client, _gid)) = setup("monitor_killed_mid_stream") else {
        return;
    };
    let old = client.connection();
    // Commands in flight, the first one answered: the stream is live.
    let mut replies = Vec::new();
    for i in 0..50 {
        let (_, rx) = client.send_command(&tagged_status(&format!("k{i}"))).expect("send");
        replies.push(rx);
    }
    replies[0].recv_timeout(MON_WAIT).expect("first reply before the kill");
    mon.kill();
    let reset = client
        .wait_for("ms_handle_reset", |ev| match ev {
            MonEvent::Reset(c) => Some(c),
            _ => None,
        })
        .expect("reset of the lossy session");
    assert_eq!(reset, old);
    assert!(!old.is_connected());
    // A lossy session is not resumed: sends on it fail or are dropped, never delivered.
    let _ = client.send_command(STATUS);

    mon.restart().expect("restart ceph-mon");
    let new = client.reconnect();
    assert_ne!(new, old, "a fresh session after the reset");
    let reply = client.authenticate().expect("auth on the new connection");
    assert_eq!(reply.result, 0);
    let ack = client.command(STATUS).expect("status after restart");
    assert_eq!(ack.r, 0, "{:?}", ack.rs);
    assert_eq!(parse_json(&ack.data)["fsid"].as_str(), Some(mon.fsid()));
    assert!(new.is_connected());
    client.messenger().shutdown();
}

fn mon_totals(mon: &CephMon) -> Totals {
    perf_dump_totals(&mon.admin(&["perf", "dump"]).expect("perf dump")).expect("worker counters")
}

/// Our message/byte counters against the monitor's own (`perf dump`,
/// AsyncMessenger::Worker-N summed) over an exchange in which only our connection talks
/// to the monitor. The admin socket is a Unix socket outside the messenger, and a lone
/// monitor has no messenger traffic of its own (local delivery is not counted), so the
/// message counts must agree exactly. Bytes differ by what each side counts:
/// - Ceph's ProtocolV1 counts a received message as header + payload + footer (53 + n +
///   21), without its one tag byte, and a sent one as the bytes written while sending
///   it (tag included). We count every byte read from or written to the socket.
/// - So, on an open connection with no keepalives or acks in the window (a lossy
///   session acks nothing, in either implementation): monitor recv bytes = our send
///   bytes − one tag byte per message we sent; monitor send bytes = our recv bytes.
/// - Handshake bytes are counted by us and never by Ceph: the window starts after it.
#[test]
fn message_and_byte_counters_agree_with_the_monitors_perf_dump() {
    let Some((mon, client, _gid)) = setup("counters_agree_with_perf_dump") else {
        return;
    };
    // Settle: one full round trip so nothing from the setup is still in flight.
    client.command(STATUS).expect("settle");
    let ours_before = client.messenger().totals();
    let mon_before = mon_totals(&mon);

    const COMMANDS: u64 = 40;
    const PINGS: u64 = 10;
    const VERSIONS: u64 = 10;
    for i in 0..COMMANDS {
        client.command(&tagged_status(&format!("c{i}"))).expect("status");
    }
    for _ in 0..PINGS {
        client.ping().expect("ping");
    }
    for h in 0..VERSIONS {
        client.get_version("osdmap", 100 + h).expect("version");
    }
    let ours = totals_delta(ours_before, client.messenger().totals());
    let theirs = totals_delta(mon_before, mon_totals(&mon));
    eprintln!("ours {ours:?}\nmonitor {theirs:?}");

    let exchanged = COMMANDS + PINGS + VERSIONS;
    assert_eq!(ours.send_messages, exchanged);
    assert_eq!(ours.recv_messages, exchanged);
    assert_eq!(theirs.recv_messages, ours.send_messages, "monitor received what we sent");
    assert_eq!(theirs.send_messages, ours.recv_messages, "we received what the monitor sent");
    assert_eq!(theirs.recv_bytes, ours.send_bytes - ours.send_messages, "tag bytes aside");
    assert_eq!(theirs.send_bytes, ours.recv_bytes);

    // Second window: a fresh connection, handshake included. The monitor counts no
    // handshake byte; we count all of them (msgr-v1.md 8.1): we send banner 9 + our
    // address 136 + ceph_msg_connect 33 + in_seq 8 = 186, and read banner 9 + two
    // addresses 272 + connect_reply 26 + in_seq 8 = 315.
    const HANDSHAKE_SENT: u64 = 9 + 136 + 33 + 8;
    const HANDSHAKE_READ: u64 = 9 + 136 + 136 + 26 + 8;
    let mon_before = mon_totals(&mon);
    let fresh = MonClient::new(mon.addr(), MessengerConfig::default()).expect("messenger");
    assert_eq!(fresh.authenticate().expect("auth").result, 0);
    fresh
        .wait_for("unsolicited MMonMap", |ev| matches!(ev, MonEvent::MonMap(_)).then_some(()))
        .expect("monmap");
    fresh.set_fsid(mon.fsid_bytes());
    assert_eq!(fresh.command(STATUS).expect("status").r, 0);
    let ours = fresh.messenger().totals();
    let theirs = totals_delta(mon_before, mon_totals(&mon));
    eprintln!("fresh connection: ours {ours:?}\nmonitor {theirs:?}");
    assert_eq!((ours.send_messages, ours.recv_messages), (2, 3), "MAuth+command; reply+monmap+ack");
    assert_eq!(theirs.recv_messages, ours.send_messages);
    assert_eq!(theirs.send_messages, ours.recv_messages);
    assert_eq!(theirs.recv_bytes, ours.send_bytes - ours.send_messages - HANDSHAKE_SENT);
    assert_eq!(theirs.send_bytes, ours.recv_bytes - HANDSHAKE_READ);
    fresh.messenger().shutdown();
    client.messenger().shutdown();
}
