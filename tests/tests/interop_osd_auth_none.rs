//! A default messenger (auth none, msgr v1) against a real Ceph 16.2.15 OSD in an
//! auth-none cluster ([`CephOsd::start_auth_none`]).
//!
//! A Pacific OSD answers a v1 connect without an authorizer BADAUTHORIZER even under
//! auth none (Ceph's `Messenger::require_authorizer` defaults to true; msgr-v1.md 3.6),
//! and takes auth none's authorizer (`u8 1`, entity name, global id). So a connector
//! under auth none must present that authorizer to every peer but a monitor it dials as
//! a client, as Ceph's does; this test shows both facts at the wire and then that our
//! messenger, with `MessengerConfig::default()`'s auth, opens a session with the OSD and
//! gets its `MCommandReply` to `{"prefix": "version"}`.
//!
//! Skipped with a printed reason when Ceph is not installed (a failure in CI, where
//! `ASYNCMSGR_REQUIRE_CEPH=1`).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy};
use protocol::messages::{MCommand, MCommandReply, TypedMessage};
use protocol::types::{AddrType, EntityName, EntityType, Features, AUTH_NONE};
use protocol::wire::{ConnectReply, Tag};
use tests::ceph::CephOsd;
use tests::cephx::assert_version_json;
use tests::hostile::{fresh_banner_socket, objecter_connect};
use tests::loopback::{init_logging, Recorder, Seen, WAIT};

/// What `ceph tell osd.N version` sends (cephx.md 14.5).
const VERSION: &str = r#"{"prefix": "version"}"#;

/// The OSD's reply to a first v1 connect as Ceph's Objecter sends it (client,
/// `CEPH_OSDC_PROTOCOL`, lossy), carrying `authorizer` under `auth_protocol`, on a fresh
/// connection from a fresh address.
fn first_connect_reply(osd: SocketAddr, auth_protocol: u32, authorizer: &[u8]) -> ConnectReply {
    let mut stream = fresh_banner_socket(osd);
    let (reply, auth_reply) =
        objecter_connect(&mut stream, Features::PACIFIC_ADVERTISED, auth_protocol, authorizer);
    assert!(auth_reply.is_empty(), "auth none replies no authorizer bytes: {reply:?}");
    reply
}

/// The messenger's protocol counters (connects, authorizers rejected, …).
fn protocol_counters(msgr: &Messenger) -> serde_json::Value {
    msgr.counters_json()["msgr_protocol"].clone()
}

/// The reply on `conn`, or a failure on its reset or refusal or after [`WAIT`].
fn reply_on(msgr: &Messenger, rx: &Receiver<Seen>, conn: &Connection) -> MCommandReply {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn => {
                assert_eq!(m.msg_type(), MCommandReply::TYPE.0);
                return MCommandReply::from_message(&m).expect("MCommandReply decodes");
            }
            Ok(Seen::Refused(c)) if &c == conn => {
                panic!("the OSD refused our connect; msgr_protocol: {}", protocol_counters(msgr))
            }
            Ok(Seen::Reset(c)) if &c == conn => {
                panic!("the OSD reset the session; msgr_protocol: {}", protocol_counters(msgr))
            }
            Ok(_) => {}
            Err(e) => {
                panic!("no reply within {WAIT:?}: {e}; msgr_protocol: {}", protocol_counters(msgr))
            }
        }
    }
}

/// The auth-none OSD refuses a v1 connect without an authorizer (what our connector sent
/// before it presented auth none's) and accepts one with auth none's authorizer; a
/// messenger with the default config dials its v1 address, and its `version` command is
/// answered with r = 0 and the version JSON, twice on one session.
#[test]
fn default_messenger_talks_to_an_auth_none_osd_over_v1() {
    init_logging();
    let test = "default_messenger_talks_to_an_auth_none_osd_over_v1";
    let Some(osd) = CephOsd::start_auth_none(test).expect("start ceph-mon and ceph-osd") else {
        return;
    };

    // The fact the connector's authorizer rests on: no authorizer, BADAUTHORIZER...
    let reply = first_connect_reply(osd.v1_addr(), 0, &[]);
    assert_eq!(reply.tag, Tag::BADAUTHORIZER, "no authorizer: {reply:?}");
    // ...auth none's, a session: `u8 1`, EntityName client.admin (`u32` type 8,
    // `u32` length, "admin"), `u64` global id 0. Spelled out here rather than taken from
    // `protocol::auth::AuthNoneAuthorizer`, so the real OSD checks the layout too.
    let mut authorizer = vec![1u8];
    authorizer.extend_from_slice(&8u32.to_le_bytes());
    authorizer.extend_from_slice(&5u32.to_le_bytes());
    authorizer.extend_from_slice(b"admin");
    authorizer.extend_from_slice(&0u64.to_le_bytes());
    let reply = first_connect_reply(osd.v1_addr(), AUTH_NONE, &authorizer);
    assert!(matches!(reply.tag, Tag::SEQ | Tag::READY), "auth none's authorizer: {reply:?}");
    // ...and auth-none bytes that do not decode (the name cut short), BADAUTHORIZER: the
    // fact our acceptor's refusal of them rests on.
    let reply = first_connect_reply(osd.v1_addr(), AUTH_NONE, &authorizer[..7]);
    assert_eq!(reply.tag, Tag::BADAUTHORIZER, "a cut auth-none authorizer: {reply:?}");

    let config = MessengerConfig::default();
    assert!(config.auth.is_none(), "the default config authenticates with auth none");
    let nonce = rand::random::<u32>() | 1;
    let msgr = Messenger::new(EntityName::new(EntityType::CLIENT, 4100), nonce, config)
        .expect("messenger");
    msgr.set_default_policy(Policy::lossy_client());
    msgr.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    msgr.add_dispatcher_head(rec).expect("dispatcher");

    let target = osd.v1_entity_addr();
    assert_eq!(target.ty, AddrType::LEGACY, "dialling the OSD's v1 address: {target:?}");
    assert_ne!(target.addr, osd.v2_addr(), "not its msgr2 address");
    let conn = msgr.connect_to(EntityType::OSD, target);
    let fsid = osd.mon().fsid_bytes();
    for tid in 1..=2 {
        let cmd = MCommand { fsid, cmd: vec![VERSION.to_owned()], data: Bytes::new() };
        let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
        msg.set_tid(tid);
        conn.send_message(msg).expect("send");
        assert_version_json(&reply_on(&msgr, &rx, &conn));
    }
    assert!(osd.is_running());
    msgr.shutdown();
}
