//! Issue 15 must-show 1: the `mon_client` example against a real Ceph 16.2 monitor bound
//! to msgr2 only (`ms_bind_msgr1 = false`) with cephx. It authenticates in msgr2's AUTH
//! frames through the messenger's cephx provider (no MAuth message), in the mode
//! `--mode` asks for, and prints the status JSON; stderr names the negotiated mode.
//! The same messenger path against a real OSD: the monitor-issued osd ticket as an
//! authorizer over msgr2, secure and crc mode. Ticket renewal on a live msgr2 monitor
//! session, with MAuth messages as Ceph's MonClient does: by our messenger and by the
//! example's `--watch`.
//! Skipped, with a printed reason, when Ceph is not installed (a failure in CI,
//! ASYNCMSGR_REQUIRE_CEPH=1).

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use messenger::{Connection, MessengerConfig};
use protocol::auth::cephx::{CephxClient, ClientEvent, ServiceMask, TicketSource, TicketStore};
use protocol::auth::{ConMode, ConModes};
use protocol::messages::{MAuthReply, MCommand, MCommandReply, MsgType, TypedMessage};
use protocol::types::{AddrType, EntityAddr, EntityType, Features};
use protocol::Message;
use tests::ceph::{CephMon, CephOsd};
use tests::cephx::{assert_version_json, client_admin, get_map, monitor_client, monitor_session};
use tests::loopback::{init_logging, test_config, Seen, WAIT};

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
    let (name, key) = client_admin(&osd.mon().keyring());
    for mode in [ConMode::SECURE, ConMode::CRC] {
        let store = Arc::new(TicketStore::default());
        let config = MessengerConfig { client_mode: Some(ConModes(vec![mode])), ..test_config(1) };
        let (msgr, rx) = monitor_client(&name, &key, &store, config);

        // The monitor: MMonGetMap → MMonMap, after cephx in the AUTH frames.
        let mon = msgr.connect_to(EntityType::MON, mon_v2);
        mon.send_message(get_map()).expect("send");
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

/// Sends what `auth` asks for on `conn`; returns the events its last input raised,
/// after handing renewed tickets to the provider (`store`).
fn pump(auth: &mut CephxClient, conn: &Connection, store: &TicketStore) -> Vec<ClientEvent> {
    let events: Vec<ClientEvent> = std::iter::from_fn(|| auth.poll_event()).collect();
    if !events.is_empty() {
        store.update_from(auth, Instant::now());
    }
    if let Some(req) = auth.poll_request(Instant::now()) {
        conn.send_message(req.to_message(conn.features())).expect("send MAuth");
    }
    events
}

/// Feeds `auth` the monitor's MAuthReplys on `conn` and its timer until `done` holds
/// for the events seen so far, within `limit`; a reset of `conn` or a refused request
/// fails the test.
fn renew_until(
    auth: &mut CephxClient,
    conn: &Connection,
    rx: &Receiver<Seen>,
    store: &TicketStore,
    limit: Duration,
    mut done: impl FnMut(&CephxClient, &[ClientEvent]) -> bool,
) -> Vec<ClientEvent> {
    let deadline = Instant::now() + limit;
    let mut seen = pump(auth, conn, store);
    while !done(auth, &seen) {
        let now = Instant::now();
        assert!(now < deadline, "not done within {limit:?}: {seen:?}");
        let timer = auth.poll_timeout().unwrap_or(deadline).min(deadline);
        match rx.recv_timeout(timer.saturating_duration_since(now)) {
            Ok(Seen::Message(c, m)) if &c == conn && m.msg_type() == MsgType::AUTH_REPLY.0 => {
                let reply = MAuthReply::from_message(&m).expect("MAuthReply");
                auth.handle_reply(Instant::now(), &reply).expect("the monitor's reply taken");
            }
            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => panic!("{c:?} dropped"),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                auth.handle_timeout(Instant::now()).expect("no request timed out");
            }
            Err(RecvTimeoutError::Disconnected) => panic!("messenger gone"),
        }
        seen.extend(pump(auth, conn, store));
    }
    seen
}

/// Ceph's MonClient on msgr2 renews its tickets with MAuth messages on the monitor
/// session the handshake established (`_check_auth_tickets`, with the handler it took
/// from the connection in `handle_auth_done` / `_finish_hunting`). Against a real
/// monitor with 3 s tickets whose rotating secrets turn every second: the session taken
/// from the provider's store renews its auth ticket (GET_AUTH_SESSION_KEY with the
/// handshake's server challenge and the old ticket: a new session key, a blob sealed
/// with newer secrets) until the secret that sealed the handshake's ticket has left the
/// monitor's window, and an osd ticket is issued on the renewed ticket's authorizer
/// (GET_PRINCIPAL_SESSION_KEY). The monitor then refuses a new connection reclaiming our
/// global id with the handshake's ticket, and takes one from our own provider, which
/// `update_from` gave the renewed ticket.
#[test]
fn a_msgr2_monitor_session_renews_its_tickets_over_mauth() {
    init_logging();
    let options = [
        ("auth_mon_ticket_ttl", "3"),
        ("auth_service_ticket_ttl", "3"),
        ("mon_tick_interval", "1"),
    ];
    let Some(mon) = CephMon::start_cephx_msgr2_only("msgr2_renewal", &options).expect("start")
    else {
        return;
    };
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(mon.addr()) };
    let (name, key) = client_admin(&mon.keyring());
    let store = Arc::new(TicketStore::default());
    let (msgr, rx) = monitor_client(&name, &key, &store, test_config(1));
    let conn = monitor_session(&msgr, &rx, addr).expect("authenticated over msgr2");
    let mut auth = store.take_monitor_session(&addr).expect("the handshake's cephx session");
    assert!(auth.is_authenticated());
    let global_id = auth.global_id();
    assert_eq!(store.ticket(EntityType::AUTH).map(|(g, _)| g), Some(global_id));
    let first = auth.auth_ticket().cloned().expect("an auth ticket");
    // auth_mon_ticket_ttl, capped by the newest secret's expiry (KeyServer's
    // get_service_secret).
    assert!(first.validity <= Duration::from_secs(3), "{:?}", first.validity);

    // Renewals until the monitor can no longer open the first ticket. It holds three
    // secrets (previous, current, next) and seals with the current one, or the next
    // once the current expired before its rotation: a ticket sealed with id n leaves
    // nothing older than n - 2. Bounded by the rotation, a tick a second, 3 s a secret.
    let events = renew_until(&mut auth, &conn, &rx, &store, Duration::from_secs(45), |a, _| {
        a.auth_ticket().is_some_and(|t| t.blob.secret_id >= first.blob.secret_id + 3)
    });
    let renewals = events.iter().filter(|e| **e == ClientEvent::AuthTicketRenewed).count();
    assert!(renewals >= 2, "{events:?}");
    let renewed = auth.auth_ticket().cloned().expect("an auth ticket");
    assert_ne!(renewed.session_key, first.session_key);
    // An osd ticket on an authorizer from the renewed ticket.
    let before = auth.service_ticket(EntityType::OSD, Instant::now()).cloned();
    auth.request_service_tickets(ServiceMask::of(EntityType::OSD));
    let osd = ClientEvent::ServiceTickets(ServiceMask::of(EntityType::OSD));
    renew_until(&mut auth, &conn, &rx, &store, WAIT, |_, seen| seen.contains(&osd));
    let ticket = auth.service_ticket(EntityType::OSD, Instant::now()).cloned().expect("osd");
    assert_ne!(Some(ticket.session_key.clone()), before.map(|t| t.session_key));
    // The provider holds what the session renewed.
    let (gid, osd_kept) = store.ticket(EntityType::OSD).expect("the store's osd ticket");
    assert_eq!((gid, osd_kept.session_key), (global_id, ticket.session_key));
    let current = auth.auth_ticket().cloned().expect("an auth ticket");
    assert_eq!(store.ticket(EntityType::AUTH).map(|(_, t)| t.blob), Some(current.blob));

    // A provider still holding the handshake's auth ticket is refused its reclaim.
    let stale = Arc::new(TicketStore::new(global_id));
    stale.insert(global_id, first);
    let (old, old_rx) = monitor_client(&name, &key, &stale, test_config(1));
    assert!(monitor_session(&old, &old_rx, addr).is_none(), "reclaimed with a rotated-out ticket");
    old.shutdown();
    // Ours reclaims the global id with the renewed one on a new connection.
    conn.mark_down();
    let again = monitor_session(&msgr, &rx, addr).expect("a new session reclaiming our id");
    let auth = store.take_monitor_session(&addr).expect("the new session");
    assert_eq!(auth.global_id(), global_id, "global id kept");
    again.mark_down();
    msgr.shutdown();
}

/// `mon_client --keyring … --watch` at a `v2:` address renews its tickets with MAuth on
/// the msgr2 session its handshake authenticated, as at a `v1:` one (1 s tickets): it
/// prints the monmap, then renews its auth ticket again and again.
#[test]
fn mon_client_example_watch_over_msgr2_renews_its_tickets() {
    init_logging();
    let ttl = [("auth_mon_ticket_ttl", "1"), ("auth_service_ticket_ttl", "1")];
    let Some(mon) = CephMon::start_cephx_msgr2_only("mon_client_watch_v2", &ttl).expect("start")
    else {
        return;
    };
    let mon_addr = format!("v2:{}", mon.addr());
    let (renewals, seen, stdout) =
        tests::ceph::watch_mon_client(&mon.keyring(), &mon_addr, 3, Duration::from_secs(15));
    assert_eq!(renewals, 3, "stderr: {seen:?}");
    assert!(seen.iter().any(|l| l.contains("msgr2 to")), "over msgr2: {seen:?}");
    let first: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap_or("")).expect("monmap JSON");
    assert_eq!(first["fsid"], mon.fsid());
}

// A keyring offered to an msgr2 monitor that allows only auth none: the handshake falls
// back to none (the monitor answers AUTH_BAD_METHOD), as Ceph's MonClient does, and the
// example answers with nothing to renew. Before, it required a cephx session from the
// handshake and exited with "no cephx session from the handshake".
#[test]
fn mon_client_example_with_a_keyring_at_an_auth_none_msgr2_monitor() {
    init_logging();
    let Some(mon) =
        CephMon::start_msgr2_only("mon_client_v2_keyring_none").expect("start ceph-mon")
    else {
        return;
    };
    // Beside the monitor's files, which go with it.
    let keyring = mon.conf().with_file_name("client-keyring");
    std::fs::write(&keyring, tests::ceph::cephx_keyring().to_text()).expect("write keyring");
    let keyring = keyring.display().to_string();
    let out = mon_client(&["--keyring", &keyring, &format!("v2:{}", mon.addr()), "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}; stderr: {stderr}", out.status);
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("status JSON");
    assert_eq!(status["fsid"], mon.fsid(), "stdout: {stdout}");
    assert!(stderr.contains("nothing to renew"), "stderr: {stderr}");
}
