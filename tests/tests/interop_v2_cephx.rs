//! Issue 15 must-show 1: the `mon_client` example against a real Ceph 16.2 monitor bound
//! to msgr2 only (`ms_bind_msgr1 = false`) with cephx. It authenticates in msgr2's AUTH
//! frames through the messenger's cephx provider (no MAuth message), in the mode
//! `--mode` asks for, and prints the status JSON; stderr names the negotiated mode.
//! The same messenger path against a real OSD: the monitor-issued osd ticket as an
//! authorizer over msgr2, secure and crc mode.
//! Skipped, with a printed reason, when Ceph is not installed (a failure in CI,
//! ASYNCMSGR_REQUIRE_CEPH=1).

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use messenger::{Connection, Messenger, MessengerConfig, Policy};
use protocol::auth::cephx::{CephxProvider, RngSource, TicketSource, TicketStore, WallClock};
use protocol::auth::{parse_entity_name, AuthConfig, ConMode, ConModes, KeyRing};
use protocol::messages::{MCommand, MCommandReply, MsgType, TypedMessage};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType, Features};
use protocol::Message;
use tests::ceph::{CephMon, CephOsd};
use tests::cephx::{assert_version_json, wall_now};
use tests::loopback::{init_logging, test_config, Recorder, Seen, WAIT};

/// Runs the `mon_client` example with `args`, bounded by 60 s.
fn mon_client(args: &[&str]) -> Output {
    let bin = tests::ceph::mon_client_example().expect("mon_client example");
    Command::new("timeout").arg("60").arg(bin).args(args).output().expect("run mon_client")
}

#[test]
fn mon_client_example_over_msgr2_with_cephx_in_secure_and_crc_mode() {
    init_logging();
    let Some(mon) =
        CephMon::start_cephx_msgr2_only("mon_client_v2_cephx", &[]).expect("start ceph-mon")
    else {
        return;
    };
    let addr = format!("v2:{}", mon.addr());
    let keyring = mon.keyring().display().to_string();
    for mode in ["secure", "crc"] {
        let out = mon_client(&[
            "--keyring",
            &keyring,
            "--name",
            "client.admin",
            "--mode",
            mode,
            &addr,
            "status",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {:?}\n{stdout}\n{stderr}", out.status);
        let status: serde_json::Value = serde_json::from_str(stdout.trim()).expect("status JSON");
        assert_eq!(status["fsid"], mon.fsid(), "{mode}");
        assert!(
            stderr.contains(&format!("msgr2 to {}, {mode} mode", mon.addr())),
            "{mode}: {stderr}"
        );
    }
    // Without --mode: Ceph's default ms_mon_client_mode "secure crc", the monitor's
    // "secure crc": secure.
    let out = mon_client(&["--keyring", &keyring, &addr, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("secure mode"), "{stderr}");
    // A wrong key: AUTH_BAD_METHOD -EACCES, the connection refused, a non-zero exit.
    let wrong = mon.dir().join("wrong.keyring");
    std::fs::write(&wrong, tests::ceph::cephx_keyring().to_text()).expect("write");
    let wrong = wrong.display().to_string();
    let out = mon_client(&["--keyring", &wrong, "--mode", "secure", &addr, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no status with a wrong key");
}

/// An address of `kind` ("v1"/"v2") with its nonce from an addrvec in Ceph's JSON.
fn addr_from_json(addrvec: &serde_json::Value, kind: &str) -> Option<EntityAddr> {
    let a = addrvec.as_array()?.iter().find(|a| a["type"] == kind)?;
    let addr: SocketAddr = a["addr"].as_str()?.parse().ok()?;
    let nonce = u32::try_from(a["nonce"].as_u64()?).ok()?;
    Some(EntityAddr { ty: AddrType::MSGR2, nonce, addr: Some(addr) })
}

/// Our messenger against a real monitor and OSD, both over msgr2 with cephx: client.admin
/// authenticates to the monitor in AUTH_MODE_MON (the provider keeps the osd ticket
/// AUTH_DONE brings), then presents an authorizer built from that ticket to the real
/// `ceph-osd` (its challenge in AUTH_REPLY_MORE, its AuthorizeReply v2 with the
/// connection secret in AUTH_DONE) in the mode `client_mode` asks for, and the OSD
/// answers `version`.
#[test]
fn real_osd_over_msgr2_with_cephx_from_monitor_issued_tickets_both_modes() {
    init_logging();
    let Some(osd) = CephOsd::start("real_osd_over_msgr2_cephx").expect("start cluster") else {
        return;
    };
    let out = osd.mon().ceph(&["mon", "dump", "--format", "json"]).expect("mon dump");
    let monmap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("mon dump JSON");
    let mon_v2 = addr_from_json(&monmap["mons"][0]["public_addrs"]["addrvec"], "v2")
        .expect("the monitor's v2 address");
    let out = osd.mon().ceph(&["osd", "dump", "--format", "json"]).expect("osd dump");
    let osdmap: serde_json::Value = serde_json::from_slice(&out.stdout).expect("osd dump JSON");
    let osd_v2 = addr_from_json(&osdmap["osds"][0]["public_addrs"]["addrvec"], "v2")
        .expect("the OSD's v2 address");
    let ring = KeyRing::load(osd.mon().keyring()).expect("keyring");
    let name = parse_entity_name("client.admin").expect("name");
    let key = ring.key(&name).expect("client.admin key").clone();
    for mode in [ConMode::SECURE, ConMode::CRC] {
        let store = Arc::new(TicketStore::default());
        let clock = WallClock::anchored(Instant::now(), wall_now());
        let rng: RngSource = Arc::new(|| Box::new(rand::rngs::OsRng) as _);
        let provider = CephxProvider::new(name.clone(), AuthConfig::ceph_defaults(), clock, rng)
            .with_monitor_key(key.clone(), store.clone());
        let config = MessengerConfig { client_mode: Some(ConModes(vec![mode])), ..test_config(1) }
            .with_auth_provider(Arc::new(provider));
        let msgr = Messenger::new(EntityName::new(EntityType::CLIENT, EntityName::NEW), 1, config)
            .expect("messenger");
        msgr.set_default_policy(Policy::lossy_client());
        msgr.start().expect("start");
        let (rec, rx) = Recorder::new(false);
        msgr.add_dispatcher_head(rec).expect("dispatcher");

        // The monitor: MMonGetMap → MMonMap, after cephx in the AUTH frames.
        let mon = msgr.connect_to(EntityType::MON, mon_v2);
        let mut get_map = Message::new(MsgType::MON_GET_MAP.0, Bytes::new());
        get_map.set_version(1);
        get_map.set_compat_version(1);
        mon.send_message(get_map).expect("send");
        let (_, m) = reply_on(&rx, &mon);
        assert_eq!(m.msg_type(), MsgType::MON_MAP.0);
        assert_eq!(mon.con_mode(), Some(ConMode::SECURE), "ms_mon_client_mode default");
        let (gid, _) = store.ticket(EntityType::OSD).expect("the monitor's osd ticket");
        assert!(gid > 0);

        // The OSD: the authorizer from that ticket, in `mode`.
        let conn = msgr.connect_to(EntityType::OSD, osd_v2);
        let cmd = MCommand {
            fsid: osd.mon().fsid_bytes(),
            cmd: vec![r#"{"prefix": "version"}"#.to_owned()],
            data: Bytes::new(),
        };
        let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
        msg.set_tid(1);
        conn.send_message(msg).expect("send");
        let (_, m) = reply_on(&rx, &conn);
        assert_version_json(&MCommandReply::from_message(&m).expect("MCommandReply"));
        assert_eq!(conn.con_mode(), Some(mode));
        msgr.shutdown();
    }
}

/// The next message on `conn`; a reset or refusal of `conn` fails the test.
fn reply_on(rx: &crossbeam_channel::Receiver<Seen>, conn: &Connection) -> (Connection, Message) {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn => return (c, m),
            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => panic!("{c:?} dropped"),
            Ok(_) => {}
            Err(e) => panic!("no reply within {WAIT:?}: {e}"),
        }
    }
}
