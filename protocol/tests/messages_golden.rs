//! Byte-exact golden vectors for the typed messages, taken from the verified transcript
//! of a client talking to a real Ceph 16.2.15 monitor (shared/protocol/msgr-v1.md §8).
#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::collections::BTreeMap;

use bytes::Bytes;
use protocol::encoding::{Encoder, UTime};
use protocol::messages::{
    decode_any, AnyMessage, AuthNegotiation, MAuth, MAuthReply, MConfig, MMonCommand,
    MMonCommandAck, MMonGetVersion, MMonGetVersionReply, MMonMap, MMonSubscribe, MMonSubscribeAck,
    MPing, MonMap, MsgType, PaxosHeader, TypedMessage,
};
use protocol::types::{AuthEntityName, EntityAddr, EntityAddrVec, EntityType, Features, AUTH_NONE};
use protocol::Message;

const PACIFIC: Features = Features::PACIFIC_ADVERTISED;

fn hex(s: &str) -> Vec<u8> {
    let clean: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    clean
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair.len(), 2, "odd number of hex digits");
            u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()
        })
        .collect()
}

/// Wraps `front` as a received message with the given header versions.
fn received(ty: MsgType, version: u16, compat: u16, front: Vec<u8>) -> Message {
    let mut m = Message::new(ty.0, Bytes::from(front));
    m.set_version(version);
    m.set_compat_version(compat);
    m
}

const FSID: [u8; 16] = [
    0x6d, 0x9a, 0x2b, 0x3e, 0x1f, 0x3c, 0x4a, 0x55, 0x9d, 0x0e, 0x2c, 0x1f, 0x3b, 0x4a, 0x5d, 0x6e,
];

// §8.2: the client's first MAuth (auth none), front 60 bytes, header v1/compat 1.
const MAUTH_FRONT: &str = "
    00 00 00 00 00 00 00 00  ff ff  00 00 00 00 00 00 00 00
    00 00 00 00
    1e 00 00 00
      01
      01 00 00 00  01 00 00 00
      08 00 00 00  05 00 00 00 61 64 6d 69 6e
      00 00 00 00 00 00 00 00
    00 00 00 00";

#[test]
fn mauth_front_matches_transcript() {
    let m = MAuth::negotiate(&AuthNegotiation::default(), 0);
    let msg = m.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &hex(MAUTH_FRONT)[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (17, 1, 1));

    let back = MAuth::from_message(&received(MsgType::AUTH, 1, 1, hex(MAUTH_FRONT))).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.paxos, PaxosHeader { version: 0, session_mon: -1, session_mon_tid: 0 });
    let neg = back.negotiation().unwrap().unwrap();
    assert_eq!(neg.methods, vec![AUTH_NONE]);
    assert_eq!(neg.name, AuthEntityName::new(EntityType::CLIENT, "admin"));
    assert_eq!(neg.global_id, 0);
}

// §8.2: the monitor's MAuthReply, front 24 bytes.
const MAUTH_REPLY_FRONT: &str =
    "01 00 00 00  00 00 00 00  19 10 00 00 00 00 00 00  00 00 00 00  00 00 00 00";

#[test]
fn mauth_reply_matches_transcript() {
    let got =
        MAuthReply::from_message(&received(MsgType::AUTH_REPLY, 1, 1, hex(MAUTH_REPLY_FRONT)))
            .unwrap();
    let want = MAuthReply {
        protocol: AUTH_NONE,
        result: 0,
        global_id: 4121,
        result_bl: Bytes::new(),
        result_msg: String::new(),
    };
    assert_eq!(got, want);
    let msg = want.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &hex(MAUTH_REPLY_FRONT)[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (18, 1, 1));
}

// §8.3: MMonSubscribe {monmap: 0/0} hostname "probe", v3/compat 1, front 32.
const SUBSCRIBE_FRONT: &str = "
    01 00 00 00
    06 00 00 00 6d 6f 6e 6d 61 70
    00 00 00 00 00 00 00 00  00
    05 00 00 00 70 72 6f 62 65";

#[test]
fn mon_subscribe_matches_transcript() {
    let mut s = MMonSubscribe { hostname: "probe".into(), ..Default::default() };
    s.want("monmap", 0, 0);
    let msg = s.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &hex(SUBSCRIBE_FRONT)[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (15, 3, 1));
    let back = MMonSubscribe::from_message(&msg).unwrap();
    assert_eq!(back, s);
}

// §8.3: the 170-byte MMonMap front from the real monitor (v9 / compat 6 monmap).
const MONMAP_FRONT: &str = "
    a6 00 00 00
    09 06 a0 00 00 00
    6d 9a 2b 3e 1f 3c 4a 55 9d 0e 2c 1f 3b 4a 5d 6e
    01 00 00 00
    6c dd 01 6b 09 de e1 1f
    6c dd 01 6b 09 de e1 1f
    01 01 08 00 00 00 ff 00 00 00 00 00 00 00
    01 01 08 00 00 00 00 00 00 00 00 00 00 00
    01 00 00 00 | 01 00 00 00 61
    05 01 35 00 00 00
      01 00 00 00 61
      02 | 01 00 00 00
      01 | 01 01 1c 00 00 00
      01 00 00 00 | 00 00 00 00 | 10 00 00 00
      02 00 1a 85 7f 00 00 01 00 00 00 00 00 00 00 00
      00 00 | 00 00 | 00 00 00 00
    01 00 00 00 | 01 00 00 00 61
    10
    00 00 00 00
    01
    00 00 00 00
    00 | 00 00 00 00 | 00 00 00 00";

fn transcript_monmap() -> MonMap {
    let addr = EntityAddr::legacy("127.0.0.1:6789".parse().unwrap(), 0);
    let mut m = MonMap::single(FSID, 1, "a", EntityAddrVec::single(addr));
    let stamp = UTime::new(0x6b01_dd6c, 0x1fe1_de09);
    m.last_changed = stamp;
    m.created = stamp;
    m
}

#[test]
fn monmap_v9_matches_the_real_monitor_byte_for_byte() {
    let front = hex(MONMAP_FRONT);
    assert_eq!(front.len(), 170);
    let got = MMonMap::from_message(&received(MsgType::MON_MAP, 1, 1, front.clone())).unwrap();
    let want = transcript_monmap();
    assert_eq!(got.monmap, want);
    assert_eq!(got.monmap.ranks, vec!["a".to_string()]);
    assert_eq!(got.monmap.addrs_of_rank(0).unwrap().addrs[0].to_string(), "v1:127.0.0.1:6789/0");

    let msg = MMonMap { monmap: want }.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &front[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (4, 1, 1));
}

#[test]
fn monmap_for_a_minimal_client_is_the_v1_form() {
    // msgr-v1.md 7.6: without MONNAMES the monitor sends u16 1, fsid, epoch,
    // vector<entity_inst_t> (mon.<rank> + legacy 136-byte address), last_changed, created.
    let minimal = Features(0x0401_0200_0204_0000);
    let map = transcript_monmap();
    let bytes = map.to_bytes(minimal);
    let mut want = Encoder::new();
    want.u16(1).uuid(&FSID).u32(1).u32(1);
    want.u8(1).i64(0); // mon.0
    want.bytes(&EntityAddr::legacy("127.0.0.1:6789".parse().unwrap(), 0).encode_legacy());
    want.utime(map.last_changed).utime(map.created);
    assert_eq!(&bytes[..], want.as_slice());
    assert_eq!(bytes.len(), 2 + 16 + 4 + 4 + 9 + 136 + 16);

    let back = MonMap::decode(&bytes).unwrap();
    assert_eq!(back.fsid, FSID);
    assert_eq!(back.epoch, 1);
    assert_eq!(back.ranks, vec!["0".to_string()]);
    let addr = back.addrs_of_rank(0).unwrap().addrs[0];
    assert_eq!(addr.to_string(), "v1:127.0.0.1:6789/0");
    assert_eq!(back.last_changed, map.last_changed);
}

#[test]
fn monmap_older_forms_round_trip_their_fields() {
    let map = transcript_monmap();
    // Without MONENC: u16 2 + map<string, entity_addr_t>.
    let no_monenc = Features(Features::PACIFIC_ADVERTISED.0 & !Features::MONENC.0);
    let b = map.to_bytes(no_monenc);
    assert_eq!(&b[..2], &[2, 0]);
    let back = MonMap::decode(&b).unwrap();
    assert_eq!(back.ranks, vec!["a".to_string()]);
    assert_eq!(back.mon_info["a"].public_addrs, map.mon_info["a"].public_addrs);
    // Without SERVER_NAUTILUS: versioned 5/3.
    let no_nautilus = Features(Features::PACIFIC_ADVERTISED.0 & !Features::SERVER_NAUTILUS.0);
    let b = map.to_bytes(no_nautilus);
    assert_eq!(&b[..2], &[5, 3]);
    let back = MonMap::decode(&b).unwrap();
    assert_eq!(back.persistent_features, 0xff);
    assert_eq!(back.ranks, vec!["a".to_string()]);
    assert_eq!(back.mon_info["a"].public_addrs, map.mon_info["a"].public_addrs);
    // Nor for a Jewel or Kraken peer, whose bit 2 is MONCLOCKCHECK: Ceph's
    // HAVE_FEATURE(SERVER_NAUTILUS) also wants bits 28 and 57 (its incarnation).
    let jewel = Features(Features::PACIFIC_ADVERTISED.0 & !Features::SERVER_MIMIC.0);
    assert!(jewel.contains(Features::SERVER_NAUTILUS));
    assert_eq!(&map.to_bytes(jewel)[..2], &[5, 3]);
}

// §8.4: MMonGetVersion handle 1 "osdmap" (18 bytes) and the v2/compat 2 reply (24 bytes).
#[test]
fn mon_get_version_and_reply_match_transcript() {
    let req = MMonGetVersion { handle: 1, what: "osdmap".into() };
    let msg = req.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &hex("01 00 00 00 00 00 00 00 06 00 00 00 6f 73 64 6d 61 70")[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (19, 1, 1));

    let reply_front =
        hex("01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00");
    let reply = MMonGetVersionReply::from_message(&received(
        MsgType::MON_GET_VERSION_REPLY,
        2,
        2,
        reply_front.clone(),
    ))
    .unwrap();
    assert_eq!(reply, MMonGetVersionReply { handle: 1, version: 1, oldest_version: 1 });
    let msg = reply.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &reply_front[..]);
    assert_eq!((msg.version(), msg.compat_version()), (2, 2));
    // A v1 reply has no oldest_version: the third u64 is ignored trailing data.
    let v1 = MMonGetVersionReply::from_message(&received(
        MsgType::MON_GET_VERSION_REPLY,
        1,
        1,
        reply_front,
    ))
    .unwrap();
    assert_eq!(v1.oldest_version, 0);
}

const STATUS_CMD: &str = r#"{"prefix": "status", "format": "json"}"#;

// §8.5: MMonCommand front 80 bytes, tid 1.
#[test]
fn mon_command_matches_transcript() {
    let mut want = hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00");
    want.extend_from_slice(&FSID);
    want.extend_from_slice(&hex("01 00 00 00 26 00 00 00"));
    want.extend_from_slice(STATUS_CMD.as_bytes());
    assert_eq!(want.len(), 80);
    let cmd = MMonCommand { fsid: FSID, cmd: vec![STATUS_CMD.into()], ..Default::default() };
    let msg = cmd.to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &want[..]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (50, 1, 1));
    assert_eq!(MMonCommand::from_message(&msg).unwrap(), cmd);
}

// §8.5: MMonCommandAck front 72 bytes (r 0, rs "", cmd echo) + output in the data segment.
#[test]
fn mon_command_ack_matches_transcript_layout() {
    let mut front = hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00");
    front.extend_from_slice(&hex("00 00 00 00  00 00 00 00  01 00 00 00 26 00 00 00"));
    front.extend_from_slice(STATUS_CMD.as_bytes());
    assert_eq!(front.len(), 72);
    let mut msg = received(MsgType::MON_COMMAND_ACK, 1, 1, front.clone());
    msg.set_data(Bytes::from_static(b"{\"fsid\":\"6d9a2b3e\"}"));
    let ack = MMonCommandAck::from_message(&msg).unwrap();
    assert_eq!(ack.r, 0);
    assert_eq!(ack.rs, "");
    assert_eq!(ack.cmd, vec![STATUS_CMD.to_string()]);
    assert_eq!(&ack.data[..], b"{\"fsid\":\"6d9a2b3e\"}");
    let out = ack.to_message(PACIFIC);
    assert_eq!(&out.front()[..], &front[..]);
    assert_eq!(out.data(), msg.data());
}

#[test]
fn mconfig_and_subscribe_ack_match_section_7() {
    // 7.7: an empty config map.
    let msg = MConfig::default().to_message(PACIFIC);
    assert_eq!(&msg.front()[..], &[0, 0, 0, 0]);
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (62, 1, 1));
    let mut cfg = BTreeMap::new();
    cfg.insert("log_to_stderr".to_string(), "false".to_string());
    let m = MConfig { config: cfg };
    assert_eq!(MConfig::from_message(&m.to_message(PACIFIC)).unwrap(), m);

    // 7.5: interval 86400 + fsid.
    let ack = MMonSubscribeAck { interval: 86400, fsid: FSID };
    let msg = ack.to_message(PACIFIC);
    let mut want = 86400u32.to_le_bytes().to_vec();
    want.extend_from_slice(&FSID);
    assert_eq!(&msg.front()[..], &want[..]);
    // Ceph reads the fsid only when present.
    let short = received(MsgType::MON_SUBSCRIBE_ACK, 1, 1, want[..4].to_vec());
    assert_eq!(MMonSubscribeAck::from_message(&short).unwrap().fsid, [0; 16]);
}

#[test]
fn ping_from_client_and_monitor_reply() {
    // 8.5: the client's MPing has an empty front; the monitor answers with a string.
    let msg = MPing::new().to_message(PACIFIC);
    assert!(msg.front().is_empty());
    assert_eq!((msg.msg_type(), msg.version(), msg.compat_version()), (2, 1, 1));
    let reply = received(MsgType::PING, 1, 0, {
        let mut e = Encoder::new();
        e.string("{\"health\":\"HEALTH_OK\"}");
        e.into_vec()
    });
    match decode_any(&reply).unwrap() {
        AnyMessage::Ping(p) => {
            assert_eq!(p.monitor_report().unwrap().as_deref(), Some("{\"health\":\"HEALTH_OK\"}"))
        }
        other => panic!("decoded as {other:?}"),
    }
}

#[test]
fn registry_dispatches_by_type_and_keeps_unknown_types_raw() {
    let msg = received(MsgType::AUTH, 1, 1, hex(MAUTH_FRONT));
    assert!(matches!(decode_any(&msg).unwrap(), AnyMessage::Auth(_)));
    let msg = received(MsgType::MON_MAP, 1, 1, hex(MONMAP_FRONT));
    let any = decode_any(&msg).unwrap();
    assert_eq!(any.msg_type(), MsgType::MON_MAP);
    // MOSDMap (41) is not typed here: it stays raw, untouched.
    let osdmap = received(MsgType::OSD_MAP, 4, 3, vec![1, 2, 3]);
    assert_eq!(decode_any(&osdmap).unwrap(), AnyMessage::Raw(osdmap.clone()));
    let weird = received(MsgType(0xbeef), 1, 1, vec![]);
    assert!(matches!(decode_any(&weird).unwrap(), AnyMessage::Raw(_)));
}

#[test]
fn compat_newer_than_head_is_refused_like_ceph() {
    use protocol::error::{Error, ErrorKind};
    let msg = received(MsgType::AUTH, 2, 2, hex(MAUTH_FRONT));
    let err = decode_any(&msg).unwrap_err();
    assert!(matches!(err, Error::Incompatible { compat: 2, understood: 1, .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Incompatible);
    // A newer *version* with a compatible compat decodes (extra fields ignored).
    let mut front = hex(MAUTH_FRONT);
    front.extend_from_slice(&[9, 9, 9, 9]);
    let msg = received(MsgType::AUTH, 7, 1, front);
    assert!(matches!(decode_any(&msg).unwrap(), AnyMessage::Auth(_)));
    // Decoding as the wrong type is caller misuse.
    let err = MAuthReply::from_message(&received(MsgType::AUTH, 1, 1, hex(MAUTH_FRONT)));
    assert_eq!(err.unwrap_err().kind(), ErrorKind::Misuse);
}
