//! msgr2 golden vectors from real Ceph 16.2.15: the worked examples of msgr-v2.md
//! (3.1, 3.3, 5.1, 5.7, 6.3) and two complete client sessions captured with
//! `v2_probe.py` against a monitor bound to msgr2 only (`tests/data/v2/`): auth none in
//! crc mode, and cephx in secure mode (with the session key and connection secret the
//! probe printed). Every frame of both directions is decoded and re-encoded byte for
//! byte, payloads included, and the AUTH_SIGNATURE HMACs are recomputed.

#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use bytes::{Bytes, BytesMut};
use protocol::auth::ConMode;
use protocol::v2::banner::{Banner, BANNER_LEN};
use protocol::v2::frames::*;
use protocol::v2::framing::{
    Frame, FrameDecoder, FrameEncoder, FrameLimits, FrameProgress, GcmStream,
};
use protocol::v2::tag::Tag;

fn hex(s: &str) -> Vec<u8> {
    let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..digits.len() / 2)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/v2/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes one frame at the start of `input`; returns it and the bytes it took.
fn decode_one(dec: &mut FrameDecoder, input: &[u8]) -> (Frame, usize) {
    let all = Bytes::copy_from_slice(input);
    let mut at = 0;
    loop {
        if dec.is_paused() {
            dec.proceed().unwrap();
        }
        let n = dec.need();
        let piece = all.slice(at..at + n);
        at += n;
        match dec.advance(piece).unwrap() {
            FrameProgress::NeedMore | FrameProgress::Head(_) => {}
            FrameProgress::Frame(f) => return (f, at),
        }
    }
}

fn encode_one(enc: &mut FrameEncoder, f: &Frame) -> Vec<u8> {
    let num = usize::from(f.preamble.num_segments);
    let segs: Vec<&Bytes> = f.segments[..num].iter().collect();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    enc.encode(f.tag(), &segs, &mut buf, &mut out).unwrap();
    out.push(buf.freeze());
    out.concat()
}

/// Decodes the payload of `f` with its codec and checks the re-encoding.
fn check_payload(f: &Frame) {
    let s0 = &f.segments[0];
    fn rt<T: ControlFrame>(b: &Bytes) {
        let v = T::from_segment(b).unwrap_or_else(|e| panic!("{}: {e}", T::TAG));
        assert_eq!(&v.to_segment()[..], &b[..], "{} re-encodes", T::TAG);
    }
    match f.tag() {
        Tag::HELLO => rt::<Hello>(s0),
        Tag::AUTH_REQUEST => rt::<AuthRequest>(s0),
        Tag::AUTH_BAD_METHOD => rt::<AuthBadMethod>(s0),
        Tag::AUTH_REPLY_MORE => rt::<AuthReplyMore>(s0),
        Tag::AUTH_REQUEST_MORE => rt::<AuthRequestMore>(s0),
        Tag::AUTH_DONE => rt::<AuthDone>(s0),
        Tag::AUTH_SIGNATURE => rt::<AuthSignature>(s0),
        Tag::CLIENT_IDENT => rt::<ClientIdent>(s0),
        Tag::SERVER_IDENT => rt::<ServerIdent>(s0),
        Tag::KEEPALIVE2 => rt::<Keepalive2>(s0),
        Tag::KEEPALIVE2_ACK => rt::<Keepalive2Ack>(s0),
        Tag::ACK => rt::<Ack>(s0),
        Tag::MESSAGE => {
            let h = MsgHeader2::decode(s0).unwrap();
            assert_eq!(&h.to_bytes()[..], &s0[..]);
        }
        other => panic!("unexpected frame {other} in the capture"),
    }
}

/// Walks one direction of a capture: banner, then frames; `switch_after` names the
/// last crc-mode frame, after which `secure` streams take over. Returns the frames,
/// and the transcript length up to the switch.
fn walk(stream: &[u8], switch_after: Option<(Tag, GcmStream, GcmStream)>) -> (Vec<Frame>, usize) {
    let banner = Banner::decode_payload(&stream[10..BANNER_LEN]).unwrap();
    assert_eq!(banner, Banner::OURS);
    assert_eq!(&stream[..BANNER_LEN], &Banner::OURS.to_bytes());
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut enc = FrameEncoder::crc();
    let mut switch = switch_after;
    let mut transcript = 0;
    let mut at = BANNER_LEN;
    let mut frames = Vec::new();
    while at < stream.len() {
        let (f, used) = decode_one(&mut dec, &stream[at..]);
        assert!(!f.aborted);
        let again = encode_one(&mut enc, &f);
        assert_eq!(&again[..], &stream[at..at + used], "{} re-encodes byte for byte", f.tag());
        check_payload(&f);
        at += used;
        if switch.as_ref().is_some_and(|(t, _, _)| *t == f.tag()) {
            let (_, rx, tx) = switch.take().unwrap();
            dec.set_secure(rx).unwrap();
            enc = FrameEncoder::secure(tx);
            transcript = at;
        }
        frames.push(f);
    }
    (frames, transcript)
}

fn tags(frames: &[Frame]) -> Vec<Tag> {
    frames.iter().map(Frame::tag).collect()
}

// msgr-v2.md 1.1: the auth-none crc-mode session of `v2_probe.py` (MMonGetMap, two
// MMonMaps, KEEPALIVE2, MMonCommand, ACK, MPing).
#[test]
fn crc_session_capture_round_trips() {
    let (c2s, _) = walk(&data("crc.c2s"), None);
    let (s2c, _) = walk(&data("crc.s2c"), None);
    assert_eq!(
        &tags(&c2s)[..5],
        [Tag::HELLO, Tag::AUTH_REQUEST, Tag::AUTH_SIGNATURE, Tag::CLIENT_IDENT, Tag::MESSAGE]
    );
    assert_eq!(
        &tags(&s2c)[..6],
        [
            Tag::HELLO,
            Tag::AUTH_DONE,
            Tag::AUTH_SIGNATURE,
            Tag::SERVER_IDENT,
            Tag::MESSAGE,
            Tag::MESSAGE
        ]
    );
    assert!(tags(&s2c).contains(&Tag::KEEPALIVE2_ACK));
    // Auth none: both signatures are zeros.
    for f in c2s.iter().chain(&s2c).filter(|f| f.tag() == Tag::AUTH_SIGNATURE) {
        assert_eq!(&f.segments[0][..], &[0; 32]);
    }
    // The monitor's MMonMap: a 2-segment MESSAGE (msgr-v2.md 6.3).
    let map = &s2c[4];
    assert_eq!(map.preamble.num_segments, 2);
    let h = MsgHeader2::decode(&map.segments[0]).unwrap();
    assert_eq!((h.seq, h.msg_type, h.priority, h.ack_seq), (1, 4, 196, 1));
    assert_eq!(h.flags, HEADER2_FLAGS);
    let done = AuthDone::from_segment(&s2c[1].segments[0]).unwrap();
    assert_eq!(done.con_mode, ConMode::CRC);
}

// msgr-v2.md 3.3 and 5.5: cephx, secure mode. Every frame after AUTH_DONE is encrypted,
// both AUTH_SIGNATUREs included; re-encrypting with the same nonce sequence reproduces
// the captured ciphertext, and each signature is the HMAC of the other direction.
#[test]
fn secure_session_capture_round_trips() {
    let keys = String::from_utf8(data("secure.keys.json")).unwrap();
    let field = |name: &str| {
        let at = keys.find(name).unwrap() + name.len() + 4;
        let end = keys[at..].find('"').unwrap();
        hex(&keys[at..at + end])
    };
    let (session_key, secret) = (field("session_key"), field("con_secret"));
    assert_eq!((session_key.len(), secret.len()), (16, 64));
    let (conn_rx, conn_tx) = GcmStream::pair_from_secret(&secret, true).unwrap();
    let (acc_rx, acc_tx) = GcmStream::pair_from_secret(&secret, false).unwrap();
    let c2s_raw = data("secure.c2s");
    let s2c_raw = data("secure.s2c");
    let (c2s, c2s_transcript) = walk(&c2s_raw, Some((Tag::AUTH_REQUEST_MORE, acc_rx, conn_tx)));
    let (s2c, s2c_transcript) = walk(&s2c_raw, Some((Tag::AUTH_DONE, conn_rx, acc_tx)));
    assert_eq!(
        &tags(&s2c)[..4],
        [Tag::HELLO, Tag::AUTH_REPLY_MORE, Tag::AUTH_DONE, Tag::AUTH_SIGNATURE]
    );
    assert_eq!(AuthDone::from_segment(&s2c[2].segments[0]).unwrap().con_mode, ConMode::SECURE);
    let client_sig = c2s.iter().find(|f| f.tag() == Tag::AUTH_SIGNATURE).unwrap();
    let mon_sig = &s2c[3];
    assert_eq!(
        &client_sig.segments[0][..],
        &AuthSignature::compute(Some(&session_key), &s2c_raw[..s2c_transcript]).hmac
    );
    assert_eq!(
        &mon_sig.segments[0][..],
        &AuthSignature::compute(Some(&session_key), &c2s_raw[..c2s_transcript]).hmac
    );
    assert!(s2c.iter().filter(|f| f.tag() == Tag::MESSAGE).count() >= 4);
}

// msgr-v2.md 3.3: the monitor's first encrypted frame (its AUTH_SIGNATURE).
#[test]
fn secure_vector_from_the_document() {
    let mut secret = hex("86308ea851cde83b7efa397b84c20adb 5916c214deea406e3d323d94 \
                          81aac878afb68b21f341fb3b");
    secret.resize(64, 0);
    let (_, acc_tx) = GcmStream::pair_from_secret(&secret, false).unwrap();
    let hmac = hex("efb0508f08614053bca29aabf17e3f08 fa6f8a94eb0a1e8ca3d7a798ea89a085");
    let want = hex("5fff13fc60032300d6e11ec8b32fb886 9928ce41bd0941ab808fae129d433dbb \
                    294aac90f6cf2d729bc3d76040bfb4f5 2f7dafc72ac93ed9ff25ef00b3df9f51 \
                    53c6b896c2b27ef8372b9264baf29561 0d5a48f3e291f746fc638ae8ce9f1c84");
    let seg = Bytes::from(hmac.clone());
    let mut enc = FrameEncoder::secure(acc_tx);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let n = enc.encode(Tag::AUTH_SIGNATURE, &[&seg], &mut buf, &mut out).unwrap();
    assert_eq!(n, 96);
    assert!(out.is_empty());
    assert_eq!(&buf[..], &want[..]);
    // And the connector decrypts it.
    let (conn_rx, _) = GcmStream::pair_from_secret(&secret, true).unwrap();
    let mut dec = FrameDecoder::new(FrameLimits::default());
    dec.set_secure(conn_rx).unwrap();
    let (f, used) = decode_one(&mut dec, &want);
    assert_eq!(used, 96);
    assert_eq!(&f.segments[0][..], &hmac[..]);
}

// msgr-v2.md 5.1 and 5.7: whole crc-mode frames from the document.
#[test]
fn crc_frames_from_the_document() {
    let hello = hex("01 01 | 24 00 00 00 08 00 | 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
                     00 00 | 00 00 | 3f bd 6b 06 | 01 | 01 | 01 01 1c 00 00 00 | 02 00 00 00 | \
                     00 00 00 00 | 10 00 00 00 | 02 00 | 92 96 | 7f 00 00 01 | \
                     00 00 00 00 00 00 00 00 | 7b aa 10 59");
    assert_eq!(hello.len(), 72);
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let (f, used) = decode_one(&mut dec, &hello);
    assert_eq!(used, 72);
    assert_eq!(encode_one(&mut FrameEncoder::crc(), &f), hello);
    // SERVER_IDENT (159 bytes): preamble crc 0x378d0147, segment crc 0xc90e126d.
    let payload = hex("02 | 02 00 00 00 \
         01 | 01 01 1c 00 00 00 | 02 00 00 00 | 00 00 00 00 | 10 00 00 00 | 02 00 9c 0b \
         7f 00 00 01 00 00 00 00 00 00 00 00 \
         01 | 01 01 1c 00 00 00 | 01 00 00 00 | 00 00 00 00 | 10 00 00 00 | 02 00 9c 05 \
         7f 00 00 01 00 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 06 00 00 00 00 00 00 00 ff ff fd ff bd cf 01 3f \
         00 00 04 02 00 02 01 0c 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
    let ident = ServerIdent::from_segment(&payload).unwrap();
    let seg = ident.to_segment();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let n = FrameEncoder::crc().encode(Tag::SERVER_IDENT, &[&seg], &mut buf, &mut out).unwrap();
    assert_eq!(n, 159);
    assert_eq!(&buf[..8], &hex("09 01 7b 00 00 00 08 00")[..]);
    assert_eq!(&buf[28..32], &hex("47 01 8d 37")[..]);
    assert_eq!(&buf[155..], &hex("6d 12 0e c9")[..]);
}

/// Frames of one capture direction after the banner, with their wire ranges.
fn frames_with_ranges(stream: &[u8]) -> Vec<(Frame, std::ops::Range<usize>)> {
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut at = BANNER_LEN;
    let mut out = Vec::new();
    while at < stream.len() {
        let (f, used) = decode_one(&mut dec, &stream[at..]);
        out.push((f, at..at + used));
        at += used;
    }
    out
}

fn end_of(frames: &[(Frame, std::ops::Range<usize>)], tag: Tag) -> usize {
    frames.iter().find(|(f, _)| f.tag() == tag).map(|(_, r)| r.end).unwrap()
}

fn drain(conn: &mut protocol::v2::Connection, wire: &mut Vec<u8>) {
    let mut segs = Vec::new();
    while conn.poll_transmit(&mut segs) > 0 {}
    for s in segs {
        wire.extend_from_slice(&s);
    }
}

// Our connect side, configured as the probe was (client.admin, lossy, the capture's
// nonce, required = MSG_ADDR2 only) and fed the monitor's real bytes, writes exactly the
// probe's handshake bytes: banner, HELLO, AUTH_REQUEST, AUTH_SIGNATURE, CLIENT_IDENT.
#[test]
// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn connect_side_handshake_is_byte_exact_with_the_capture() {
    use protocol::types::{
        AuthEntityName, EntityAddr, EntityAddrVec, EntityName, EntityType, Features,
    };
    use protocol::v2::Connection;
    use protocol::{Config, Event};
    use std::sync::Arc;
    use std::time::Instant;
    let c2s = data("crc.c2s");
    let s2c = data("crc.s2c");
    let ours = frames_with_ranges(&c2s);
    let theirs = frames_with_ranges(&s2c);
    let (ident_frame, _) = ours.iter().find(|(f, _)| f.tag() == Tag::CLIENT_IDENT).unwrap();
    let ident = ClientIdent::from_segment(&ident_frame.segments[0]).unwrap();
    let me = EntityAddr { addr: Some("0.0.0.0:0".parse().unwrap()), ..ident.addrs.addrs[0] };
    let config = Config::new(
        EntityName::new(EntityType::CLIENT, EntityName::NEW),
        EntityAddrVec::single(me),
    );
    let config = config.with_auth(Arc::new(protocol::auth::AuthNoneProvider::new(
        AuthEntityName::new(EntityType::CLIENT, "admin"),
    )));
    let now = Instant::now();
    let mon = ident.target_addr;
    let mut conn = Connection::connect(
        Arc::new(config),
        protocol::Policy::lossy_client()
            .with_features(Features::PACIFIC_ADVERTISED, Features::NONE),
        mon,
        EntityType::MON,
        now,
    );
    conn.handle_transport_connected(now);
    let mut wire = Vec::new();
    drain(&mut conn, &mut wire);
    let upto = end_of(&theirs, Tag::SERVER_IDENT);
    for chunk in s2c[..upto].chunks(7) {
        conn.handle_bytes(now, Bytes::copy_from_slice(chunk));
        drain(&mut conn, &mut wire);
    }
    let mut opened = false;
    while let Some(ev) = conn.poll_event() {
        opened |= matches!(ev, Event::Opened(_));
    }
    assert!(opened, "{conn}");
    let handshake = end_of(&ours, Tag::CLIENT_IDENT);
    assert_eq!(wire.len(), handshake);
    assert_eq!(wire, &c2s[..handshake], "our connector's handshake bytes");
}

// Our accept side, configured as the monitor was (its addresses, gid 0, required
// features, global_seq counter and global id) and fed the probe's real bytes, writes
// exactly the monitor's handshake bytes: banner, HELLO, AUTH_DONE, AUTH_SIGNATURE,
// SERVER_IDENT.
#[test]
// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
fn accept_side_handshake_is_byte_exact_with_the_capture() {
    use protocol::auth::AuthNoneProvider;
    use protocol::types::{AuthEntityName, EntityName, EntityType, Features};
    use protocol::v2::Connection;
    use protocol::{decide, Config, Event, GlobalSeq, GlobalSeqCounter};
    use std::sync::Arc;
    use std::time::Instant;
    let c2s = data("crc.c2s");
    let s2c = data("crc.s2c");
    let ours = frames_with_ranges(&c2s);
    let theirs = frames_with_ranges(&s2c);
    let seg = |tag| {
        theirs.iter().find(|(f, _)| f.tag() == tag).map(|(f, _)| f.segments[0].clone()).unwrap()
    };
    let hello = Hello::from_segment(&seg(Tag::HELLO)).unwrap();
    let done = AuthDone::from_segment(&seg(Tag::AUTH_DONE)).unwrap();
    let si = ServerIdent::from_segment(&seg(Tag::SERVER_IDENT)).unwrap();
    let mut config = Config::new(EntityName::new(EntityType::MON, si.gid), si.addrs.clone());
    // The monitor's policy for clients: its required features (less msgr2's own).
    let required = Features(si.required_features.0 & !Features::MSG_ADDR2.0);
    config.policies = Arc::new(
        protocol::Policy::stateless_server().with_features(Features::PACIFIC_ADVERTISED, required),
    );
    config.global_seq = Arc::new(GlobalSeqCounter::after(GlobalSeq(si.global_seq - 1)));
    config.auth = Arc::new(
        AuthNoneProvider::new(AuthEntityName::new(EntityType::MON, "a"))
            .with_first_global_id(done.global_id),
    );
    let my_addrs = config.my_addrs.clone();
    let now = Instant::now();
    let socket_peer = hello.peer_addr.addr.unwrap();
    let socket_local = si.addrs.addrs[0].addr.unwrap();
    let mut conn = Connection::accept(Arc::new(config), socket_peer, socket_local, now);
    let mut wire = Vec::new();
    drain(&mut conn, &mut wire);
    let upto = end_of(&ours, Tag::CLIENT_IDENT);
    for chunk in c2s[..upto].chunks(5) {
        conn.handle_bytes(now, Bytes::copy_from_slice(chunk));
        while let Some(ev) = conn.poll_event() {
            if let Event::AcceptRequest(req) = ev {
                let policy = protocol::Policy::stateless_server();
                let d = decide(&req, None, &policy, &my_addrs);
                conn.handle_accept_decision(now, policy, d, None);
            }
        }
        drain(&mut conn, &mut wire);
    }
    assert!(conn.is_open(), "{conn}");
    let handshake = end_of(&theirs, Tag::SERVER_IDENT);
    assert_eq!(wire.len(), handshake);
    assert_eq!(wire, &s2c[..handshake], "our acceptor's handshake bytes");
}
