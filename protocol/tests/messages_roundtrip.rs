//! Round trips of every typed message, and randomised truncation/corruption of their
//! encodings: every decoder must return a typed error or a value, never panic, and never
//! allocate beyond what the input justifies.
//!
//! Randomised tests print their seed; rerun one with `MSGS_SEED=<seed>`.
#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use bytes::Bytes;
use protocol::encoding::UTime;
use protocol::error::Error;
use protocol::messages::{
    decode_any, AnyMessage, AuthNegotiation, MAuth, MAuthReply, MCommand, MCommandReply, MConfig,
    MMonCommand, MMonCommandAck, MMonGetVersion, MMonGetVersionReply, MMonMap, MMonSubscribe,
    MMonSubscribeAck, MOSDPing, MPing, MonInfo, MonMap, MsgType, OsdPingOp, PaxosHeader,
    SignedSpan, TypedMessage, SUBSCRIBE_ONETIME,
};
use protocol::types::{AddrType, AuthEntityName, EntityAddr, EntityAddrVec, EntityType, Features};
use protocol::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PACIFIC: Features = Features::PACIFIC_ADVERTISED;
const FSID: [u8; 16] = *b"0123456789abcdef";

// The seed, when none is given, comes from the wall clock (a test's only clock read).
#[allow(clippy::disallowed_methods)]
fn seed() -> u64 {
    let seed = std::env::var("MSGS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("seed = {seed} (rerun with MSGS_SEED={seed})");
    seed
}

fn osd_ping(op: OsdPingOp, delta_ub: Option<SignedSpan>, min_message_size: u32) -> MOSDPing {
    MOSDPing {
        fsid: FSID,
        map_epoch: 42,
        op,
        ping_stamp: UTime::new(1_700_000_000, 123_456_789),
        mono_ping_stamp: SignedSpan::from_nanos(-1_500_000_001),
        mono_send_stamp: SignedSpan::from_nanos(987_654_321_012),
        delta_ub,
        up_from: 7,
        min_message_size,
    }
}

fn rich_monmap() -> MonMap {
    let v2 =
        EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some("10.0.0.1:3300".parse().unwrap()) };
    let v1 = EntityAddr::legacy("10.0.0.1:6789".parse().unwrap(), 0);
    let v6 = EntityAddr::legacy("[fd00::2]:6789".parse().unwrap(), 0);
    let mut m = MonMap::single(FSID, 7, "a", EntityAddrVec { addrs: vec![v2, v1] });
    m.last_changed = UTime::new(10, 20);
    m.created = UTime::new(1, 2);
    m.optional_features = 0x3;
    let mut crush = BTreeMap::new();
    crush.insert("datacenter".to_string(), "dc1".to_string());
    m.add(MonInfo {
        name: "b".into(),
        public_addrs: EntityAddrVec::single(v6),
        priority: 3,
        weight: 10,
        crush_loc: crush,
    });
    m.add(MonInfo {
        name: "c".into(),
        public_addrs: EntityAddrVec::single(EntityAddr::legacy(
            "10.0.0.3:6789".parse().unwrap(),
            0,
        )),
        ..MonInfo::default()
    });
    m.removed_ranks = BTreeSet::from([4, 5]);
    m.election_strategy = 3;
    m.disallowed_leaders = BTreeSet::from(["c".to_string()]);
    m.stretch_mode_enabled = true;
    m.tiebreaker_mon = "c".into();
    m.stretch_marked_down_mons = BTreeSet::from(["b".to_string()]);
    m
}

/// Every typed message with non-default field values, as the registry would return them.
fn samples() -> Vec<AnyMessage> {
    let mut sub = MMonSubscribe { hostname: "host-1".into(), ..Default::default() };
    sub.want("monmap", 0, 0).want("osdmap", 12, SUBSCRIBE_ONETIME).want("config", 0, 0);
    let mut cfg = BTreeMap::new();
    cfg.insert("mon_host".to_string(), "v1:127.0.0.1:6789".to_string());
    cfg.insert("log_to_stderr".to_string(), "true".to_string());
    vec![
        AnyMessage::Ping(MPing::new()),
        AnyMessage::Ping(MPing::with_report("{\"health\":\"HEALTH_OK\"}")),
        AnyMessage::OsdPing(osd_ping(OsdPingOp::PING, Some(SignedSpan::from_nanos(3)), 1000)),
        AnyMessage::OsdPing(osd_ping(OsdPingOp::PING_REPLY, None, 29)),
        AnyMessage::OsdPing(osd_ping(
            OsdPingOp::YOU_DIED,
            Some(SignedSpan::from_nanos(-9)),
            40_000,
        )),
        AnyMessage::Command(MCommand {
            fsid: FSID,
            cmd: vec!["{\"prefix\": \"version\"}".into()],
            data: Bytes::from_static(b"input bytes"),
        }),
        AnyMessage::CommandReply(MCommandReply {
            r: -22,
            rs: "unrecognized command".into(),
            data: Bytes::from_static(b"{\"version\":\"16.2.15\"}"),
        }),
        AnyMessage::Auth(MAuth::negotiate(
            &AuthNegotiation {
                methods: vec![2, 1],
                name: AuthEntityName::new(EntityType::OSD, "12"),
                global_id: 4121,
            },
            3,
        )),
        AnyMessage::Auth(MAuth {
            paxos: PaxosHeader { version: 9, session_mon: 2, session_mon_tid: 77 },
            protocol: 2,
            auth_payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
            monmap_epoch: 8,
        }),
        AnyMessage::AuthReply(MAuthReply {
            protocol: 0,
            result: -95,
            global_id: 0,
            result_bl: Bytes::from_static(b"ticket"),
            result_msg: "no supported method".into(),
        }),
        AnyMessage::MonSubscribe(sub),
        AnyMessage::MonSubscribeAck(MMonSubscribeAck { interval: 86400, fsid: FSID }),
        AnyMessage::MonMap(MMonMap { monmap: rich_monmap() }),
        AnyMessage::Config(MConfig { config: cfg }),
        AnyMessage::MonGetVersion(MMonGetVersion { handle: 0xfeed, what: "fsmap".into() }),
        AnyMessage::MonGetVersionReply(MMonGetVersionReply {
            handle: 0xfeed,
            version: 99,
            oldest_version: 1,
        }),
        AnyMessage::MonCommand(MMonCommand {
            paxos: PaxosHeader::default(),
            fsid: FSID,
            cmd: vec!["{\"prefix\": \"status\"}".into(), "extra".into()],
            data: Bytes::from_static(b"stdin"),
        }),
        AnyMessage::MonCommandAck(MMonCommandAck {
            paxos: PaxosHeader::default(),
            r: 0,
            rs: String::new(),
            cmd: vec!["{\"prefix\": \"status\"}".into()],
            data: Bytes::from(vec![b'x'; 4096]),
        }),
    ]
}

fn encode(any: &AnyMessage, f: Features) -> Message {
    match any {
        AnyMessage::Ping(m) => m.to_message(f),
        AnyMessage::OsdPing(m) => m.to_message(f),
        AnyMessage::Command(m) => m.to_message(f),
        AnyMessage::CommandReply(m) => m.to_message(f),
        AnyMessage::Auth(m) => m.to_message(f),
        AnyMessage::AuthReply(m) => m.to_message(f),
        AnyMessage::MonSubscribe(m) => m.to_message(f),
        AnyMessage::MonSubscribeAck(m) => m.to_message(f),
        AnyMessage::MonMap(m) => m.to_message(f),
        AnyMessage::Config(m) => m.to_message(f),
        AnyMessage::MonGetVersion(m) => m.to_message(f),
        AnyMessage::MonGetVersionReply(m) => m.to_message(f),
        AnyMessage::MonCommand(m) => m.to_message(f),
        AnyMessage::MonCommandAck(m) => m.to_message(f),
        AnyMessage::Raw(m) => m.clone(),
    }
}

fn assert_round_trip<T: TypedMessage + PartialEq + Debug>(v: &T, f: Features) {
    let msg = v.to_message(f);
    assert_eq!(MsgType(msg.msg_type()), T::TYPE);
    assert_eq!(msg.compat_version(), T::COMPAT_VERSION);
    let back = T::from_message(&msg).unwrap();
    assert_eq!(&back, v);
    let again = back.to_message(f);
    assert_eq!(again, msg, "re-encoding is byte-identical");
}

#[test]
fn every_typed_message_round_trips_through_the_registry() {
    for sample in samples() {
        let msg = encode(&sample, PACIFIC);
        assert_eq!(msg.msg_type(), sample.msg_type().0);
        let back = decode_any(&msg).unwrap_or_else(|e| panic!("{:?}: {e}", sample.msg_type()));
        assert_eq!(back, sample);
        assert_eq!(encode(&back, PACIFIC), msg, "re-encoding is byte-identical");
    }
}

#[test]
fn typed_round_trips_keep_versions_and_segments() {
    assert_round_trip(&MPing::with_report("r"), PACIFIC);
    assert_round_trip(&osd_ping(OsdPingOp::PING, Some(SignedSpan::from_nanos(-1)), 64), PACIFIC);
    assert_round_trip(&MMonGetVersionReply { handle: 1, version: 2, oldest_version: 3 }, PACIFIC);
    let cmd = MCommand { fsid: FSID, cmd: vec!["x".into()], data: Bytes::from_static(b"d") };
    let msg = cmd.to_message(PACIFIC);
    assert_eq!(&msg.data()[..], b"d", "command input travels in the data segment");
    assert_round_trip(&cmd, PACIFIC);
    assert_round_trip(&MMonMap { monmap: rich_monmap() }, PACIFIC);
}

#[test]
fn osd_ping_pads_to_min_message_size_like_ceph() {
    // Ceph pads with (min_message_size - 29) zero bytes after the v5 fields.
    let m = osd_ping(OsdPingOp::PING, None, 1000);
    let msg = m.to_message(PACIFIC);
    assert_eq!((msg.version(), msg.compat_version()), (5, 4));
    let fixed = 29 + 4 + 4 + 8 + 8 + 1;
    assert_eq!(msg.front().len(), fixed + (1000 - 29));
    assert_eq!(&msg.front()[29..33], &(1000u32 - 29).to_le_bytes());
    assert!(msg.front()[fixed..].iter().all(|&b| b == 0));
    // A v4 sender: no up_from/stamps, just the padding after the size.
    let mut v4 = msg.front()[..29].to_vec();
    v4.extend_from_slice(&3u32.to_le_bytes());
    v4.extend_from_slice(&[0, 0, 0]);
    let mut old = Message::new(MsgType::OSD_PING.0, Bytes::from(v4));
    old.set_version(4);
    old.set_compat_version(4);
    let got = MOSDPing::from_message(&old).unwrap();
    assert_eq!(
        (got.map_epoch, got.op, got.up_from, got.min_message_size),
        (42, OsdPingOp::PING, 0, 32)
    );
    // Padding that is announced but missing is truncation.
    let mut short = msg.front()[..msg.front().len() - 1].to_vec();
    short.truncate(short.len());
    let mut cut = Message::new(MsgType::OSD_PING.0, Bytes::from(short));
    cut.set_version(5);
    cut.set_compat_version(4);
    assert!(matches!(MOSDPing::from_message(&cut), Err(Error::Truncated { .. })));
    assert_eq!(OsdPingOp::YOU_DIED.to_string(), "you_died");
    assert_eq!(OsdPingOp(9).name(), "???");
}

#[test]
fn subscribe_for_a_peer_without_subscribe2_uses_the_old_items() {
    // MMonSubscribe.h: version 0, {string, u64 unused, u64 have = start - 1, u8 onetime}.
    let mut sub = MMonSubscribe { hostname: "dropped".into(), ..Default::default() };
    sub.want("osdmap", 12, SUBSCRIBE_ONETIME).want("monmap", 0, 0);
    let no_sub2 = Features(PACIFIC.0 & !Features::SUBSCRIBE2.0);
    let msg = sub.to_message(no_sub2);
    assert_eq!((msg.version(), msg.compat_version()), (0, 1));
    assert_eq!(msg.front().len(), 4 + (10 + 17) * 2);
    let back = MMonSubscribe::from_message(&msg).unwrap();
    assert_eq!(back.what, sub.what, "start and ONETIME survive the old form");
    assert_eq!(back.hostname, "", "the old form has no hostname");
}

#[test]
fn monmap_encodings_for_every_feature_level_decode_back() {
    let map = rich_monmap();
    let levels = [
        ("pacific", PACIFIC),
        ("no ADDR2", Features(PACIFIC.0 & !Features::MSG_ADDR2.0)),
        ("no NAUTILUS", Features(PACIFIC.0 & !Features::SERVER_NAUTILUS.0)),
        ("no MONENC", Features(PACIFIC.0 & !Features::MONENC.0)),
        ("no MONNAMES", Features(PACIFIC.0 & !Features::MONNAMES.0)),
        ("minimal", Features(0x0401_0200_0204_0000)),
    ];
    for (label, f) in levels {
        let back = MonMap::decode(&map.to_bytes(f)).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(back.fsid, map.fsid, "{label}");
        assert_eq!(back.epoch, map.epoch, "{label}");
        assert_eq!(back.created, map.created, "{label}");
        assert_eq!(back.ranks.len(), 3, "{label}");
        // Maps older than v6 carry no ranks: like Ceph's calc_legacy_ranks the decoder
        // orders them by address, so compare the set of addresses, not the order.
        for rank in 0..3 {
            let want = map.addrs_of_rank(rank).unwrap().legacy_addr().unwrap();
            let found = (0..3)
                .any(|r| back.addrs_of_rank(r).unwrap().addrs.iter().any(|a| a.addr == want.addr));
            assert!(found, "{label}: {want} missing from {back:?}");
        }
    }
}

/// Prefix lengths at which a message legitimately decodes (optional trailing fields).
fn optional_cuts(ty: MsgType, full: usize) -> Vec<usize> {
    match ty {
        MsgType::PING => (0..full).collect(),
        MsgType::AUTH => vec![full - 4], // monmap_epoch is read only if present
        MsgType::MON_SUBSCRIBE_ACK => vec![4], // so is the fsid
        _ => vec![],
    }
}

fn with_front(msg: &Message, front: Vec<u8>, version: u16, compat: u16) -> Message {
    let mut m = Message::new(msg.msg_type(), Bytes::from(front));
    m.set_version(version);
    m.set_compat_version(compat);
    m.set_data(msg.data().clone());
    m
}

#[test]
fn every_truncation_of_every_message_is_a_typed_error() {
    let mut checked = 0;
    for sample in samples() {
        let msg = encode(&sample, PACIFIC);
        let ty = MsgType(msg.msg_type());
        let full = msg.front().len();
        let ok_cuts = optional_cuts(ty, full);
        for cut in 0..full {
            let m =
                with_front(&msg, msg.front()[..cut].to_vec(), msg.version(), msg.compat_version());
            match decode_any(&m) {
                Ok(_) => assert!(ok_cuts.contains(&cut), "{ty}: prefix {cut}/{full} decoded"),
                Err(e) => assert!(
                    matches!(e, Error::Truncated { .. } | Error::Malformed(_)),
                    "{ty}: prefix {cut}/{full}: unexpected error {e:?}"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked > 1000, "checked {checked} truncations");
}

#[test]
fn hostile_counts_and_lengths_fail_without_allocating() {
    // Each front claims ~4 G elements/bytes right at a count or length field.
    let huge = u32::MAX.to_le_bytes();
    let cases: Vec<(MsgType, u16, Vec<u8>)> = vec![
        (MsgType::CONFIG, 1, huge.to_vec()),
        (MsgType::MON_SUBSCRIBE, 3, huge.to_vec()),
        (MsgType::MON_SUBSCRIBE, 1, huge.to_vec()),
        (MsgType::MON_MAP, 1, huge.to_vec()),
        (MsgType::COMMAND, 1, [&FSID[..], &huge[..]].concat()),
        (MsgType::MON_GET_VERSION, 1, [&[0u8; 8][..], &huge[..]].concat()),
        (MsgType::AUTH, 1, [&[0u8; 22][..], &huge[..]].concat()),
        (MsgType::OSD_PING, 5, [&[0u8; 29][..], &huge[..], &[0u8; 21][..]].concat()),
    ];
    for (ty, v, front) in cases {
        let mut m = Message::new(ty.0, Bytes::from(front));
        m.set_version(v);
        m.set_compat_version(1);
        let err = decode_any(&m).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{ty}: {err:?}");
    }
    // A monmap blob whose mon_info count is huge, inside a valid v9 block.
    let mut blob = vec![9, 6];
    let body = [
        &FSID[..],
        &[0u8; 4 + 16][..],
        &[1, 1, 8, 0, 0, 0],
        &[0u8; 8],
        &[1, 1, 8, 0, 0, 0],
        &[0u8; 8],
        &huge[..],
    ]
    .concat();
    blob.extend_from_slice(&(body.len() as u32).to_le_bytes());
    blob.extend_from_slice(&body);
    assert!(matches!(MonMap::decode(&blob), Err(Error::Truncated { .. })));
    // A monmap compat newer than v9 is refused.
    let mut newer = MonMap::default().to_bytes(PACIFIC).to_vec();
    newer[1] = 10;
    assert!(matches!(MonMap::decode(&newer), Err(Error::Incompatible { compat: 10, .. })));
}

/// Applies 1-4 random mutations to `front`.
fn mutate(rng: &mut SmallRng, front: &mut Vec<u8>) {
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..7) {
            0 if !front.is_empty() => {
                let i = rng.gen_range(0..front.len());
                front[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !front.is_empty() => {
                let i = rng.gen_range(0..front.len());
                front[i] = rng.gen();
            }
            2 => front.truncate(rng.gen_range(0..=front.len())),
            3 => {
                let n = rng.gen_range(1..16);
                front.extend((0..n).map(|_| rng.gen::<u8>()));
            }
            4 if front.len() >= 4 => {
                // A random big value over a possible length/count field.
                let i = rng.gen_range(0..=front.len() - 4);
                let v: u32 = if rng.gen_bool(0.5) { rng.gen() } else { rng.gen_range(0..64) };
                front[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            5 => {
                let i = rng.gen_range(0..=front.len());
                let n = rng.gen_range(1..8);
                for _ in 0..n {
                    front.insert(i, rng.gen());
                }
            }
            _ if !front.is_empty() => {
                let i = rng.gen_range(0..front.len());
                let j = rng.gen_range(i..=front.len());
                front.drain(i..j);
            }
            _ => {}
        }
    }
}

#[test]
fn randomly_corrupted_messages_never_panic() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let encoded: Vec<Message> = samples().iter().map(|s| encode(s, PACIFIC)).collect();
    let (mut ok, mut err) = (0u32, 0u32);
    for _ in 0..20_000 {
        let base = &encoded[rng.gen_range(0..encoded.len())];
        let mut front = base.front().to_vec();
        mutate(&mut rng, &mut front);
        let version = if rng.gen_bool(0.8) { base.version() } else { rng.gen_range(0..8) };
        let compat = if rng.gen_bool(0.9) { base.compat_version() } else { rng.gen_range(0..8) };
        let m = with_front(base, front, version, compat);
        match decode_any(&m) {
            Ok(any) => {
                // Whatever decoded must re-encode without panicking.
                let _ = encode(&any, PACIFIC);
                ok += 1;
            }
            Err(e) => {
                let _ = e.kind();
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    eprintln!("corrupted messages: {ok} decoded, {err} rejected (seed {seed})");
    assert!(err > 1000, "most corruptions are rejected");
}

#[test]
fn random_bytes_as_any_typed_message_never_panic() {
    let seed = seed();
    let mut rng = SmallRng::seed_from_u64(seed);
    let types = [2u16, 4, 15, 16, 17, 18, 19, 20, 50, 51, 62, 70, 97, 98];
    for _ in 0..20_000 {
        let ty = types[rng.gen_range(0..types.len())];
        let len = rng.gen_range(0..200);
        let front: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let mut m = Message::new(ty, Bytes::from(front));
        m.set_version(rng.gen_range(0..10));
        m.set_compat_version(rng.gen_range(0..3));
        let _ = decode_any(&m);
    }
    // Random monmap blobs, with a plausible header half the time.
    for _ in 0..20_000 {
        let len = rng.gen_range(0..300);
        let mut blob: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.5) && blob.len() >= 6 {
            blob[0] = rng.gen_range(1..10);
            blob[1] = rng.gen_range(0..7);
            let body = (blob.len() - 6) as u32;
            blob[2..6].copy_from_slice(&body.to_le_bytes());
        }
        let _ = MonMap::decode(&blob);
    }
}
