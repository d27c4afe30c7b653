//! Randomised tests of every codec decoder: round trips under any chunking, and
//! truncated, oversized, corrupted, trailing and random input rejected with typed errors
//! and never a panic. Each test prints its seed; rerun one with `CODEC_SEED=<seed>`.
#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::Bytes;
use protocol::encoding::{Decoder, Encoder};
use protocol::error::Error;
use protocol::message::{DecodeLimits, DecodeOptions, EncodeOptions, MessageDecoder, Progress};
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::wire::{
    AcceptorBanner, ConnectMsg, ConnectReply, FooterFlags, FooterFormat, MsgFooter, MsgHeader, Tag,
};
use protocol::Message;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

fn rng(test: &str) -> SmallRng {
    let seed = std::env::var("CODEC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (rerun with CODEC_SEED={seed})");
    SmallRng::seed_from_u64(seed)
}

fn bytes(r: &mut SmallRng, max: usize) -> Bytes {
    let n = r.gen_range(0..=max);
    let mut v = vec![0u8; n];
    r.fill_bytes(&mut v);
    Bytes::from(v)
}

fn addr(r: &mut SmallRng) -> EntityAddr {
    let sa = match r.gen_range(0..3) {
        0 => None,
        1 => Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(r.gen::<u32>()), r.gen()))),
        _ => Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(r.gen::<u128>()),
            r.gen(),
            r.gen(),
            r.gen(),
        ))),
    };
    EntityAddr { ty: AddrType(r.gen_range(0..4)), nonce: r.gen(), addr: sa }
}

fn message(r: &mut SmallRng) -> Message {
    let mut m = Message::new(r.gen(), bytes(r, 3000));
    m.set_version(r.gen());
    m.set_compat_version(r.gen());
    m.set_priority(r.gen());
    m.set_tid(r.gen());
    m.set_data_off(r.gen());
    if r.gen_bool(0.3) {
        m.set_middle(bytes(r, 100));
    }
    if r.gen_bool(0.5) {
        m.set_data(bytes(r, 5000));
    }
    m
}

fn options(r: &mut SmallRng) -> EncodeOptions {
    EncodeOptions {
        crc_header: r.gen(),
        crc_data: r.gen(),
        footer: if r.gen() { FooterFormat::New } else { FooterFormat::Old },
    }
}

/// Splits `wire` into chunks: whole, byte by byte, or at random points.
fn chunks(r: &mut SmallRng, wire: &[u8]) -> Vec<Bytes> {
    let all = Bytes::copy_from_slice(wire);
    match r.gen_range(0..3) {
        0 => vec![all],
        1 => (0..all.len()).map(|i| all.slice(i..i + 1)).collect(),
        _ => {
            let mut out = Vec::new();
            let mut at = 0;
            while at < all.len() {
                let n = r.gen_range(1..=(all.len() - at).min(700));
                out.push(all.slice(at..at + n));
                at += n;
            }
            out
        }
    }
}

/// Drives a decoder over chunks; returns the message (if any), the error (if any) and
/// the bytes left unconsumed in the chunk where the message completed.
fn drive(dec: &mut MessageDecoder, chunks: Vec<Bytes>) -> (Option<Message>, Option<Error>, usize) {
    let mut got = None;
    for mut c in chunks {
        loop {
            match dec.feed(&mut c) {
                Err(e) => return (got, Some(e), 0),
                Ok(Progress::NeedMore) => break,
                Ok(Progress::HeaderReady(_)) => dec.proceed().unwrap(),
                Ok(Progress::Message(m)) => {
                    assert!(got.is_none(), "two messages from one frame");
                    got = Some(m);
                    return (got, None, c.len());
                }
            }
        }
    }
    (got, None, 0)
}

fn same(a: &Message, b: &Message) -> bool {
    (a.msg_type(), a.version(), a.compat_version(), a.priority(), a.tid(), a.data_off())
        == (b.msg_type(), b.version(), b.compat_version(), b.priority(), b.tid(), b.data_off())
        && (a.front(), a.middle(), a.data()) == (b.front(), b.middle(), b.data())
}

#[test]
fn messages_round_trip_in_any_chunking() {
    let mut r = rng("messages_round_trip_in_any_chunking");
    for _ in 0..2000 {
        let m = message(&mut r);
        let opts = options(&mut r);
        let seq = r.gen();
        let src = EntityName::new(EntityType(r.gen()), r.gen());
        let mut wire = Vec::new();
        m.encode_frame(seq, src, &opts).write_to(&mut wire);
        assert_eq!(wire[0], Tag::MSG.0);
        let mut dec = MessageDecoder::new(DecodeOptions { crc: opts, ..Default::default() });
        let cs = chunks(&mut r, &wire[1..]);
        let (got, err, left) = drive(&mut dec, cs);
        assert_eq!(err, None);
        let got = got.unwrap();
        assert!(same(&got, &m));
        assert_eq!((got.seq(), got.src(), left), (seq, Some(src), 0));
        assert!(dec.is_idle());
    }
}

#[test]
fn back_to_back_messages_leave_the_next_bytes_alone() {
    let mut r = rng("back_to_back_messages_leave_the_next_bytes_alone");
    for _ in 0..500 {
        let opts = options(&mut r);
        let (a, b) = (message(&mut r), message(&mut r));
        let mut wire = Vec::new();
        a.encode_frame(1, EntityName::new(EntityType::OSD, 1), &opts).write_to(&mut wire);
        let first = wire.len() - 1;
        b.encode_frame(2, EntityName::new(EntityType::OSD, 1), &opts).write_to(&mut wire);
        // One buffer holding both: the first message leaves exactly the second frame.
        let mut dec = MessageDecoder::new(DecodeOptions { crc: opts, ..Default::default() });
        let (got, err, left) = drive(&mut dec, vec![Bytes::copy_from_slice(&wire[1..])]);
        assert_eq!(err, None);
        assert!(same(&got.unwrap(), &a));
        assert_eq!(left, wire.len() - 1 - first);
        let (got, err, _) = drive(&mut dec, chunks(&mut r, &wire[first + 2..]));
        assert_eq!(err, None);
        assert!(same(&got.unwrap(), &b));
    }
}

#[test]
fn truncated_messages_never_complete() {
    let mut r = rng("truncated_messages_never_complete");
    for _ in 0..2000 {
        let m = message(&mut r);
        let opts = options(&mut r);
        let mut wire = Vec::new();
        m.encode_frame(1, EntityName::new(EntityType::MON, 0), &opts).write_to(&mut wire);
        let cut = r.gen_range(1..wire.len() - 1);
        let mut dec = MessageDecoder::new(DecodeOptions { crc: opts, ..Default::default() });
        let cs = chunks(&mut r, &wire[1..=cut]);
        let (got, err, _) = drive(&mut dec, cs);
        assert!(got.is_none() && err.is_none(), "cut at {cut}: {err:?}");
        assert!(!dec.is_idle() || cut == 0);
    }
}

#[test]
fn corrupted_messages_are_rejected() {
    let mut r = rng("corrupted_messages_are_rejected");
    for _ in 0..3000 {
        let m = message(&mut r);
        let opts = EncodeOptions { crc_header: true, crc_data: true, footer: FooterFormat::New };
        let mut wire = Vec::new();
        m.encode_frame(1, EntityName::new(EntityType::MON, 0), &opts).write_to(&mut wire);
        let body = &mut wire[1..];
        let at = r.gen_range(0..body.len());
        let bit = 1u8 << r.gen_range(0..8);
        body[at] ^= bit;
        let footer_at = body.len() - 21;
        let in_sig = (footer_at + 12..footer_at + 20).contains(&at);
        let harmless_flag = at == body.len() - 1 && bit != 1; // NOCRC or SIGNED set
        let mut dec = MessageDecoder::new(DecodeOptions { crc: opts, ..Default::default() });
        let cs = chunks(&mut r, body);
        let (got, err, _) = drive(&mut dec, cs);
        if in_sig || harmless_flag {
            continue;
        }
        // A flipped length bit is caught by the header crc, everything else by a
        // segment crc or the COMPLETE flag.
        assert!(got.is_none(), "corruption at {at} went unnoticed");
        match err.unwrap() {
            Error::BadCrc { .. } | Error::Aborted => {}
            e => panic!("unexpected error {e:?} for corruption at {at}"),
        }
    }
}

#[test]
fn oversized_segments_fail_before_the_payload_is_read() {
    let mut r = rng("oversized_segments_fail_before_the_payload_is_read");
    for _ in 0..1000 {
        let m = message(&mut r);
        let opts = options(&mut r);
        let mut wire = Vec::new();
        m.encode_frame(1, EntityName::new(EntityType::MON, 0), &opts).write_to(&mut wire);
        let limits = DecodeLimits {
            max_front: r.gen_range(0..=3000),
            max_middle: r.gen_range(0..=100),
            max_data: r.gen_range(0..=5000),
        };
        let over = m.front().len() as u32 > limits.max_front
            || m.middle().len() as u32 > limits.max_middle
            || m.data().len() as u32 > limits.max_data;
        let mut dec = MessageDecoder::new(DecodeOptions { limits, crc: opts });
        let mut input = Bytes::copy_from_slice(&wire[1..]);
        let first = dec.feed(&mut input);
        if over {
            assert!(matches!(first, Err(Error::TooLarge { .. })), "{first:?}");
            assert_eq!(input.len(), wire.len() - 1 - MsgHeader::LEN, "payload untouched");
        } else {
            assert!(matches!(first, Ok(Progress::HeaderReady(_))));
        }
    }
}

#[test]
fn hostile_header_lengths_allocate_nothing_up_front() {
    // A header announcing 4 GiB segments with limits wide open: the decoder must not
    // reserve the announced size, only buffer what arrives.
    let h = MsgHeader {
        front_len: u32::MAX,
        middle_len: u32::MAX,
        data_len: u32::MAX,
        ..Default::default()
    }
    .with_crc();
    let limits = DecodeLimits { max_front: u32::MAX, max_middle: u32::MAX, max_data: u32::MAX };
    let mut dec = MessageDecoder::new(DecodeOptions { limits, ..Default::default() });
    let mut input = Bytes::copy_from_slice(&h.to_bytes());
    assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
    dec.proceed().unwrap();
    let mut more = Bytes::from_static(&[1, 2, 3]);
    assert_eq!(dec.feed(&mut more).unwrap(), Progress::NeedMore);
}

#[test]
fn fixed_frames_round_trip_and_reject_truncated_and_trailing_input() {
    let mut r = rng("fixed_frames_round_trip_and_reject_truncated_and_trailing_input");
    for _ in 0..2000 {
        let c = ConnectMsg {
            features: Features(r.gen()),
            host_type: EntityType(r.gen()),
            global_seq: r.gen(),
            connect_seq: r.gen(),
            protocol_version: r.gen(),
            authorizer_protocol: r.gen(),
            authorizer_len: r.gen(),
            flags: r.gen(),
        };
        let b = c.to_bytes();
        assert_eq!(ConnectMsg::decode_exact(&b).unwrap(), c);
        check_truncated_and_trailing(&mut r, &b, |x| ConnectMsg::decode_exact(x).map(|_| ()));

        let rep = ConnectReply {
            tag: Tag(r.gen()),
            features: Features(r.gen()),
            global_seq: r.gen(),
            connect_seq: r.gen(),
            protocol_version: r.gen(),
            authorizer_len: r.gen(),
            flags: r.gen(),
        };
        let b = rep.to_bytes();
        assert_eq!(ConnectReply::decode_exact(&b).unwrap(), rep);
        check_truncated_and_trailing(&mut r, &b, |x| ConnectReply::decode_exact(x).map(|_| ()));

        let h = MsgHeader {
            seq: r.gen(),
            tid: r.gen(),
            msg_type: r.gen(),
            priority: r.gen(),
            version: r.gen(),
            front_len: r.gen(),
            middle_len: r.gen(),
            data_len: r.gen(),
            data_off: r.gen(),
            src: EntityName::new(EntityType(r.gen()), r.gen()),
            compat_version: r.gen(),
            reserved: r.gen(),
            crc: 0,
        }
        .with_crc();
        let b = h.to_bytes();
        let got = MsgHeader::decode_exact(&b).unwrap();
        assert_eq!(got, h);
        got.verify_crc().unwrap();
        check_truncated_and_trailing(&mut r, &b, |x| MsgHeader::decode_exact(x).map(|_| ()));

        for format in [FooterFormat::Old, FooterFormat::New] {
            let f = MsgFooter {
                front_crc: r.gen(),
                middle_crc: r.gen(),
                data_crc: r.gen(),
                sig: if format == FooterFormat::New { r.gen() } else { 0 },
                flags: FooterFlags(r.gen()),
            };
            let (b, n) = f.to_bytes(format);
            assert_eq!(MsgFooter::decode_exact(&b[..n], format).unwrap(), f);
            check_truncated_and_trailing(&mut r, &b[..n], |x| {
                MsgFooter::decode_exact(x, format).map(|_| ())
            });
        }

        let legacy = |a: EntityAddr| EntityAddr { ty: AddrType::LEGACY, ..a };
        let block =
            AcceptorBanner { my_addr: legacy(addr(&mut r)), peer_addr: legacy(addr(&mut r)) };
        let b = block.to_bytes();
        assert_eq!(AcceptorBanner::decode_exact(&b).unwrap(), block);
        check_truncated_and_trailing(&mut r, &b, |x| AcceptorBanner::decode_exact(x).map(|_| ()));
    }
}

fn check_truncated_and_trailing(
    r: &mut SmallRng,
    good: &[u8],
    decode: impl Fn(&[u8]) -> Result<(), Error>,
) {
    let cut = r.gen_range(0..good.len());
    assert!(matches!(decode(&good[..cut]), Err(Error::Truncated { .. })));
    let mut long = good.to_vec();
    long.extend(std::iter::repeat_n(0u8, r.gen_range(1..10)));
    assert!(matches!(decode(&long), Err(Error::TrailingBytes { .. })));
}

#[test]
fn addresses_round_trip_in_every_form() {
    let mut r = rng("addresses_round_trip_in_every_form");
    for _ in 0..3000 {
        let v = EntityAddrVec { addrs: (0..r.gen_range(0..4)).map(|_| addr(&mut r)).collect() };
        let features = Features(r.gen()) | Features::SERVER_NAUTILUS_MASK;
        let mut e = Encoder::new();
        v.encode(&mut e, features);
        let mut d = Decoder::new(e.as_slice());
        let got = EntityAddrVec::decode(&mut d).unwrap();
        d.finish().unwrap();
        if features.contains(Features::MSG_ADDR2) {
            assert_eq!(got, v);
        } else {
            // Collapsed to the v1 member (or a blank legacy address).
            assert_eq!(got.addrs.len(), 1);
            assert_eq!(
                got.addrs[0],
                v.legacy_addr()
                    .unwrap_or(EntityAddr { ty: AddrType::LEGACY, ..Default::default() })
            );
        }
        // Every strict prefix fails with a typed error.
        let cut = r.gen_range(0..e.len());
        assert!(EntityAddrVec::decode(&mut Decoder::new(&e.as_slice()[..cut])).is_err());
    }
}

#[test]
fn random_input_never_panics_any_decoder() {
    let mut r = rng("random_input_never_panics_any_decoder");
    let mut errors = 0u64;
    for i in 0..100_000 {
        let n = r.gen_range(0..400);
        let mut buf = vec![0u8; n];
        r.fill_bytes(&mut buf);
        // Bias some inputs towards valid prefixes so decoders get past the first check.
        if i % 4 == 0 && n > 9 {
            buf[..9].copy_from_slice(b"ceph v027");
        }
        if i % 5 == 0 && n > 0 {
            buf[0] = r.gen_range(0..3);
        }
        let _ = AcceptorBanner::decode(&buf).map_err(|_| errors += 1);
        let _ = ConnectMsg::decode_with_authorizer(&buf, 64).map_err(|_| errors += 1);
        let _ = ConnectReply::decode_full(&buf, 64).map_err(|_| errors += 1);
        let _ = MsgHeader::decode(&buf).map_err(|_| errors += 1);
        let _ = MsgFooter::decode(&buf, FooterFormat::Old).map_err(|_| errors += 1);
        let _ = EntityAddr::decode(&mut Decoder::new(&buf)).map_err(|_| errors += 1);
        let _ = EntityAddrVec::decode(&mut Decoder::new(&buf)).map_err(|_| errors += 1);
        let _ = EntityAddr::decode_legacy(&buf).map_err(|_| errors += 1);
        let mut d = Decoder::new(&buf);
        let _ =
            d.versioned("random", r.gen(), |d, _| d.vec(|d| d.string())).map_err(|_| errors += 1);
        // The message decoder with crcs off, so random bytes get past the header.
        let crc = EncodeOptions { crc_header: false, crc_data: false, footer: FooterFormat::Old };
        let limits = DecodeLimits { max_front: 300, max_middle: 300, max_data: 300 };
        let mut dec = MessageDecoder::new(DecodeOptions { limits, crc });
        let cs = chunks(&mut r, &buf);
        let _ = drive(&mut dec, cs);
    }
    assert!(errors > 0);
}
