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
