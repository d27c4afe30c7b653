//! Byte-exact golden vectors from the verified transcript (msgr-v1.md section 8): every
//! frame we build must equal what a real Ceph 16.2.15 client/monitor put on the wire, and
//! every recorded frame must decode with its crcs verified.
#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use bytes::Bytes;
use protocol::message::{DecodeOptions, EncodeOptions, MessageDecoder, Progress};
use protocol::types::{EntityAddr, EntityName, EntityType, Features, CEPH_MONC_PROTOCOL};
use protocol::wire::{
    keepalive2_frame, AcceptorBanner, ConnectMsg, ConnectReply, KeepaliveStamp, Tag, BANNER,
    CONNECT_LOSSY,
};
use protocol::Message;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .filter(|t| *t != "|")
        .map(|t| u8::from_str_radix(t, 16).unwrap_or_else(|_| panic!("bad hex {t}")))
        .collect()
}

fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

const CLIENT_ANON: EntityName = EntityName { ty: EntityType::CLIENT, num: -1 };
const CLIENT_4121: EntityName = EntityName { ty: EntityType::CLIENT, num: 4121 };
const MON_0: EntityName = EntityName { ty: EntityType::MON, num: 0 };

/// Builds a message like the transcript's sender did and returns its full frame bytes.
fn frame(
    seq: u64,
    ty: u16,
    prio: u16,
    v: u16,
    compat: u16,
    src: EntityName,
    front: &[u8],
) -> Vec<u8> {
    let mut m = Message::new(ty, Bytes::copy_from_slice(front));
    m.set_priority(prio);
    m.set_version(v);
    m.set_compat_version(compat);
    m.set_src(src);
    let mut out = Vec::new();
    m.encode_frame(seq, src, &EncodeOptions::default()).write_to(&mut out);
    out
}

/// Decodes a frame (starting with the MSG tag) fed one byte at a time.
fn decode_bytewise(wire: &[u8]) -> Message {
    assert_eq!(wire[0], Tag::MSG.0);
    let mut dec = MessageDecoder::new(DecodeOptions::default());
    for (i, b) in wire[1..].iter().enumerate() {
        let mut input = Bytes::copy_from_slice(&[*b]);
        loop {
            match dec.feed(&mut input).unwrap() {
                Progress::NeedMore => break,
                Progress::HeaderReady(_) => dec.proceed().unwrap(),
                Progress::Message(m) => {
                    assert_eq!(i, wire.len() - 2, "message completes on its last byte");
                    return m;
                }
            }
        }
    }
    panic!("frame did not complete");
}

#[test]
fn banner_and_addresses_8_1() {
    assert_eq!(BANNER, b"ceph v027");
    let mut want = b"ceph v027".to_vec();
    want.extend(hex("00 00 00 00 | 00 00 00 00 | 00 02 | 1a 85 | 7f 00 00 01"));
    want.extend(zeros(120));
    want.extend(hex("00 00 00 00 | 00 00 00 00 | 00 02 | 88 26 | 7f 00 00 01"));
    want.extend(zeros(120));
    let block = AcceptorBanner {
        my_addr: EntityAddr::legacy("127.0.0.1:6789".parse().unwrap(), 0),
        peer_addr: EntityAddr::legacy("127.0.0.1:34854".parse().unwrap(), 0),
    };
    assert_eq!(block.to_bytes().to_vec(), want);
    assert_eq!(AcceptorBanner::decode_exact(&want).unwrap(), block);

    let mut client = hex("00 00 00 00 | ad 91 d1 e9 | 00 02 | 00 00 | 7f 00 00 01");
    client.extend(zeros(120));
    let addr = EntityAddr::legacy("127.0.0.1:0".parse().unwrap(), 0xe9d1_91ad);
    assert_eq!(addr.encode_legacy().to_vec(), client);
    assert_eq!(EntityAddr::decode_legacy(&client).unwrap(), addr);
}

#[test]
fn connect_and_seq_reply_8_1() {
    let want = hex("ff ff fd ff bd cf 01 3f 08 00 00 00 01 00 00 00 00 00 00 00 0f 00 00 00 00 00 00 00 00 00 00 00 01");
    let c = ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::CLIENT,
        global_seq: 1,
        connect_seq: 0,
        protocol_version: CEPH_MONC_PROTOCOL,
        authorizer_protocol: 0,
        authorizer_len: 0,
        flags: CONNECT_LOSSY,
    };
    let mut out = Vec::new();
    c.encode_with_authorizer(&[], &mut out);
    assert_eq!(out, want);

    let want = hex("0d ff ff fd ff bd cf 01 3f 29 00 00 00 01 00 00 00 0f 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00");
    let (r, auth, in_seq, used) = ConnectReply::decode_full(&want, 0).unwrap();
    assert_eq!((r.tag, r.global_seq, r.connect_seq, r.protocol_version), (Tag::SEQ, 41, 1, 15));
    assert_eq!((auth.len(), in_seq, used, r.is_lossy()), (0, Some(0), 34, true));
    let mut again = Vec::new();
    r.encode_full(&[], 0, &mut again);
    assert_eq!(again, want);
}

#[test]
fn keepalive2_8_2() {
    let k = keepalive2_frame(Tag::KEEPALIVE2, KeepaliveStamp { sec: 1795286818, nsec: 477671623 });
    assert_eq!(k.to_vec(), hex("0e 22 e7 01 6b c7 b0 78 1c"));
}

#[test]
fn mauth_frame_8_2() {
    let front =
        hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00 00 00 00 00 1e 00 00 00 01 \
         01 00 00 00 01 00 00 00 08 00 00 00 05 00 00 00 61 64 6d 69 6e 00 00 00 00 00 00 00 00 \
         00 00 00 00");
    assert_eq!(front.len(), 60);
    let mut want =
        hex("07 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 11 00 7f 00 01 00 3c 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 08 ff ff ff ff ff ff ff ff 01 00 00 00 69 4b ab e2");
    want.extend(&front);
    want.extend(hex("5b 63 a7 35 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01"));
    assert_eq!(frame(1, 17, 127, 1, 1, CLIENT_ANON, &front), want);
    let m = decode_bytewise(&want);
    assert_eq!((m.msg_type(), m.seq(), m.src(), m.front().len()), (17, 1, Some(CLIENT_ANON), 60));
}

#[test]
fn mauth_reply_frame_8_2() {
    let front = hex("01 00 00 00 00 00 00 00 19 10 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    let mut want =
        hex("07 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 12 00 c4 00 01 00 18 00 00 00 \
         00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 00 01 00 00 00 71 f3 a0 f8");
    want.extend(&front);
    want.extend(hex("de 2e 06 b3 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01"));
    assert_eq!(frame(1, 18, 196, 1, 1, MON_0, &front), want);
    assert_eq!(decode_bytewise(&want).src(), Some(MON_0));
}

#[test]
fn mon_subscribe_frame_8_3() {
    let front = hex("01 00 00 00 06 00 00 00 6d 6f 6e 6d 61 70 00 00 00 00 00 00 00 00 00 \
         05 00 00 00 70 72 6f 62 65");
    let f = frame(2, 15, 127, 3, 1, CLIENT_4121, &front);
    assert_eq!(&f[50..54], &hex("23 9a 5f dd")[..]);
    assert_eq!(&f[f.len() - 21..f.len() - 17], &hex("27 a5 27 7e")[..]);
    decode_bytewise(&f);
}

#[test]
fn mon_get_version_frames_8_4() {
    let front = hex("01 00 00 00 00 00 00 00 06 00 00 00 6f 73 64 6d 61 70");
    let f = frame(3, 19, 127, 1, 1, CLIENT_4121, &front);
    assert_eq!(&f[50..54], &hex("66 6f 18 5d")[..]);
    assert_eq!(&f[f.len() - 21..f.len() - 17], &hex("92 b1 fb f9")[..]);

    let front = hex("01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00");
    let f = frame(4, 20, 196, 2, 2, MON_0, &front);
    assert_eq!(&f[50..54], &hex("dc 00 d0 89")[..]);
    assert_eq!(&f[f.len() - 21..f.len() - 17], &hex("57 b2 7f 01")[..]);
    assert_eq!(decode_bytewise(&f).version(), 2);
}

#[test]
fn ping_header_8_5() {
    let f = frame(4, 2, 127, 1, 1, CLIENT_4121, &[]);
    assert_eq!(&f[50..54], &hex("15 2e 6e a6")[..]);
    // Empty sections have crc 0, flags COMPLETE.
    assert_eq!(
        &f[f.len() - 21..],
        &hex("00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01")[..]
    );
}

#[test]
fn mon_map_frame_8_3() {
    let front = hex("a6 00 00 00 09 06 a0 00 00 00 \
         6d 9a 2b 3e 1f 3c 4a 55 9d 0e 2c 1f 3b 4a 5d 6e 01 00 00 00 \
         6c dd 01 6b 09 de e1 1f 6c dd 01 6b 09 de e1 1f \
         01 01 08 00 00 00 ff 00 00 00 00 00 00 00 01 01 08 00 00 00 00 00 00 00 00 00 00 00 \
         01 00 00 00 01 00 00 00 61 05 01 35 00 00 00 01 00 00 00 61 02 01 00 00 00 \
         01 01 01 1c 00 00 00 01 00 00 00 00 00 00 00 10 00 00 00 \
         02 00 1a 85 7f 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
         01 00 00 00 01 00 00 00 61 10 00 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00");
    assert_eq!(front.len(), 170);
    let f = frame(2, 4, 196, 1, 1, MON_0, &front);
    assert_eq!(&f[50..54], &hex("c1 77 1f e2")[..]);
    assert_eq!(&f[f.len() - 21..f.len() - 17], &hex("e7 eb 17 f4")[..]);
    let f3 = frame(3, 4, 196, 1, 1, MON_0, &front);
    assert_eq!(&f3[50..54], &hex("c3 c9 99 25")[..]);
}
