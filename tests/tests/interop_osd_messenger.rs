//! cephx against a real Ceph 16.2.15 OSD through the messenger (issue 14, must-show 6):
//! what `interop_osd` drives by hand at the wire level, done by our messenger with the
//! cephx provider. client.admin authenticates to the real monitor (`CephxClient`), its
//! osd ticket goes into the provider's `TicketStore`, and the messenger dials the real
//! `ceph-osd`: the authorizer and the CHALLENGE_AUTHORIZER round run in the v1 machine,
//! `MCommand {"prefix": "version"}` leaves signed, the OSD's `MCommandReply` is checked
//! against its signature before it is dispatched. A message we sign wrongly makes the
//! OSD drop the connection, and nothing answers it.
//!
//! Skipped with a printed reason when Ceph is not installed (a failure in CI, where
//! `ASYNCMSGR_REQUIRE_CEPH=1`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, Policy};
use protocol::messages::{MCommand, MCommandReply, TypedMessage};
use protocol::types::{EntityAddr, EntityType, Features};
use tests::ceph::CephOsd;
use tests::cephx::{assert_version_json, Tap, TapCounts};
use tests::loopback::{init_logging, test_config, Recorder, Seen, WAIT};

/// What `ceph tell osd.N version` sends (cephx.md 14.5).
const VERSION: &str = r#"{"prefix": "version"}"#;

/// client.admin's messenger, its cephx provider fed with the monitor-issued tickets.
struct Admin {
    msgr: Messenger,
    rx: Receiver<Seen>,
    counts: Arc<TapCounts>,
    fsid: [u8; 16],
}

fn admin(osd: &CephOsd) -> Admin {
    let (provider, me) = osd.client_admin_provider();
    let (tap, counts) = Tap::new(Arc::new(provider));
    let msgr = Messenger::new(me, 1, test_config(1).with_auth_provider(tap)).expect("messenger");
    msgr.set_default_policy(Policy::lossy_client());
    msgr.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    msgr.add_dispatcher_head(rec).expect("dispatcher");
    Admin { msgr, rx, counts, fsid: osd.mon().fsid_bytes() }
}

/// The OSD's public v1 address with its nonce, from `osd dump` (a v1 connector checks
/// that the acceptor is who it dialled, nonce included).
fn osd_v1_addr(osd: &CephOsd) -> EntityAddr {
    let out = osd.mon().ceph(&["osd", "dump", "--format", "json"]).expect("osd dump");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("osd dump JSON");
    let v1 = dump["osds"][0]["public_addrs"]["addrvec"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["type"] == "v1"))
        .cloned()
        .unwrap_or_default();
    let nonce = v1["nonce"].as_u64().and_then(|n| u32::try_from(n).ok()).expect("nonce");
    EntityAddr::legacy(osd.v1_addr(), nonce)
}

fn send_version(admin: &Admin, conn: &Connection, tid: u64) {
    try_send_version(admin, conn, tid).expect("send");
}

/// Sends the `version` command; fails only if the connection is closed already.
fn try_send_version(
    admin: &Admin,
    conn: &Connection,
    tid: u64,
) -> Result<(), messenger::SendError> {
    let cmd = MCommand { fsid: admin.fsid, cmd: vec![VERSION.to_owned()], data: Bytes::new() };
    let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    msg.set_tid(tid);
    conn.send_message(msg)
}

/// Waits for a message on `conn`, or fails on its reset or refusal.
fn reply_on(admin: &Admin, conn: &Connection) -> MCommandReply {
    let deadline = Instant::now() + WAIT;
    loop {
        match admin.rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn => {
                assert_eq!(m.msg_type(), MCommandReply::TYPE.0);
                return MCommandReply::from_message(&m).expect("MCommandReply decodes");
            }
            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => {
                panic!("the OSD dropped us: {}", admin.msgr.counters_json())
            }
            Ok(_) => {}
            Err(e) => panic!("no reply within {WAIT:?}: {e}"),
        }
    }
}

/// The real OSD accepts the authorizer our messenger builds from the monitor-issued osd
/// ticket (challenge round included), answers our signed `version` command twice with
/// replies whose signatures our messenger checked; a command signed wrongly on a new
/// connection gets no answer and the OSD drops that connection.
#[test]
fn real_osd_answers_signed_commands_through_the_messenger() {
    init_logging();
    let Some(osd) = CephOsd::start("real_osd_through_the_messenger").expect("start cluster") else {
        return;
    };
    let admin = admin(&osd);
    let target = osd_v1_addr(&osd);
    let conn = admin.msgr.connect_to(EntityType::OSD, target);
    for tid in 1..=2 {
        send_version(&admin, &conn, tid);
        assert_version_json(&reply_on(&admin, &conn));
    }
    // Both commands were signed by us, both replies checked by us (what the OSD signed
    // with the ticket's session key).
    let (signed, checked) =
        (admin.counts.signed.load(Ordering::Relaxed), admin.counts.checked.load(Ordering::Relaxed));
    assert!(signed >= 2 && checked >= 2, "signed {signed}, checked {checked}");
    assert_eq!(admin.msgr.counters_json()["msgr_protocol"]["bad_signatures"], 0);

    // A wrongly signed command on a new connection: the OSD checks it and drops us.
    conn.mark_down();
    admin.counts.tamper_seq.store(1, Ordering::Relaxed);
    let bad = admin.msgr.connect_to(EntityType::OSD, target);
    send_version(&admin, &bad, 3);
    let deadline = Instant::now() + WAIT;
    loop {
        match admin.rx.recv_deadline(deadline) {
            Ok(Seen::Reset(c)) if c == bad => break,
            Ok(Seen::Message(c, m)) if c == bad => {
                panic!("the OSD answered a bad signature: {m:?}")
            }
            Ok(_) => {}
            Err(e) => panic!("the OSD did not drop the wrongly signed connection: {e}"),
        }
    }
    assert!(admin.counts.tampered.load(Ordering::Relaxed));
    assert!(osd.is_running());
    admin.msgr.shutdown();
}

/// The first of a reset or refusal of `conn` (`None`), or a message on it (`Some`),
/// within `WAIT`; a stall fails the test.
fn reply_or_drop(admin: &Admin, conn: &Connection) -> Option<MCommandReply> {
    let deadline = Instant::now() + WAIT;
    loop {
        match admin.rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn => {
                return Some(MCommandReply::from_message(&m).expect("MCommandReply decodes"))
            }
            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => return None,
            Ok(_) => {}
            Err(e) => panic!("no reply and no reset within {WAIT:?}: {e}"),
        }
    }
}

/// The real OSD is killed and started again (a new incarnation, a new nonce): our
/// lossy session to it is reported reset; a connection to its old address (old nonce)
/// never talks to the new incarnation (Ceph's v1 connector faults on "connect claims to
/// be ... not ..."); one to the address the osdmap now has is answered.
#[test]
fn real_osd_restarted_is_a_new_incarnation() {
    init_logging();
    let Some(mut osd) = CephOsd::start("real_osd_restarted").expect("start cluster") else {
        return;
    };
    let admin = admin(&osd);
    let old = osd_v1_addr(&osd);
    let conn = admin.msgr.connect_to(EntityType::OSD, old);
    send_version(&admin, &conn, 1);
    assert_version_json(&reply_on(&admin, &conn));
    osd.restart().expect("restart the OSD");
    assert!(reply_or_drop(&admin, &conn).is_none(), "the old session is reset");
    let new = osd_v1_addr(&osd);
    eprintln!("old {old:?}, new {new:?}");
    assert_ne!(old.nonce, new.nonce);

    let stale = admin.msgr.connect_to(EntityType::OSD, old);
    // The dial runs on a worker: under load its banner exchange, which names the new
    // nonce and ends the lossy connection, can come before this thread's send, which
    // then finds it closed (CI, 7 December: "send: Closed"). Either way, never answered.
    match try_send_version(&admin, &stale, 2) {
        Ok(()) => {
            let r = reply_or_drop(&admin, &stale);
            assert!(r.is_none(), "answered on the old incarnation's address: {r:?}");
        }
        Err(e) => assert!(!stale.is_connected(), "send failed on an open connection: {e:?}"),
    }
    admin.msgr.mark_down_all();

    let fresh = admin.msgr.connect_to(EntityType::OSD, new);
    send_version(&admin, &fresh, 3);
    assert_version_json(&reply_on(&admin, &fresh));
    admin.msgr.shutdown();
}
