//! Fuzz target bodies for the `protocol` crate's codec decoders.
//!
//! Each function takes arbitrary bytes, must never panic on its own account, and asserts
//! the round-trip properties the decoder promises (a panic here is a finding). The
//! `fuzz_targets/*.rs` binaries call them under libFuzzer; the tests below replay the
//! checked-in seed corpus (`corpus/<target>/`) on stable Rust, and an ignored test runs
//! every target over pseudo-random inputs when cargo-fuzz is not available.

pub mod admin;
pub mod cephx;
pub mod pair;
pub mod typed_messages;
pub mod v1;
pub mod v2;

use bytes::Bytes;
use protocol::encoding::{Decoder, Encoder};
use protocol::message::{
    seal, seal_header, DecodeLimits, DecodeOptions, EncodeOptions, MessageDecoder, Progress,
};
use protocol::types::{EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::wire::{
    ceph_crc32c, check_banner, AcceptorBanner, ConnectMsg, ConnectReply, FooterFlags, FooterFormat,
    MsgFooter, MsgHeader, Tag,
};

/// Authorizer bound used by the targets (small, so the bound itself gets exercised).
const MAX_AUTH: usize = 512;

/// The acceptor's banner block and the connector's legacy address.
pub fn banner(data: &[u8]) {
    let _ = check_banner(data);
    if let Ok((block, used)) = AcceptorBanner::decode(data) {
        assert_eq!(used, protocol::wire::ACCEPTOR_BLOCK_LEN);
        // Decoding ignores type bytes 1-3 and padding, so compare after one normalisation.
        let again = AcceptorBanner::decode_exact(&block.to_bytes());
        assert_eq!(again, Ok(block));
    }
    if let Ok(addr) = EntityAddr::decode_legacy(data) {
        assert_eq!(EntityAddr::decode_legacy(&addr.encode_legacy()), Ok(addr));
    }
}

/// `ceph_msg_connect` + authorizer: the encoding is a bijection on what was consumed.
pub fn connect(data: &[u8]) {
    if let Ok((msg, auth, used)) = ConnectMsg::decode_with_authorizer(data, MAX_AUTH) {
        let mut out = Vec::new();
        msg.encode_with_authorizer(auth, &mut out);
        assert_eq!(&out[..], &data[..used]);
    }
}

/// `ceph_msg_connect_reply` + authorizer reply (+ in_seq for SEQ): bijective too.
pub fn connect_reply(data: &[u8]) {
    if let Ok((reply, auth, in_seq, used)) = ConnectReply::decode_full(data, MAX_AUTH) {
        let mut out = Vec::new();
        reply.encode_full(auth, in_seq.unwrap_or(0), &mut out);
        assert_eq!(&out[..], &data[..used]);
    }
}

/// Message header (crc checked or not) and both footer formats.
pub fn header_footer(data: &[u8]) {
    if let Ok((h, used)) = MsgHeader::decode(data) {
        assert_eq!(&h.to_bytes()[..], &data[..used]);
        let valid = h.verify_crc().is_ok();
        assert_eq!(valid, h.with_crc() == h);
        assert!(h.payload_len() <= 3 * u64::from(u32::MAX));
    }
    for format in [FooterFormat::Old, FooterFormat::New] {
        if let Ok((f, used)) = MsgFooter::decode(data, format) {
            let (b, n) = f.to_bytes(format);
            assert_eq!(&b[..n], &data[..used]);
        }
    }
    seal_agrees(data);
}

/// `seal` (the header encoded once, its crc taken over the wire bytes) against the
/// header built field by field and encoded by `MsgHeader::to_bytes`, for header fields
/// from the input's first 53 bytes, crc flags from the next and segments from the rest
/// (split at the two bytes after the flags).
fn seal_agrees(data: &[u8]) {
    let Some((raw, rest)) = data.split_first_chunk::<{ MsgHeader::LEN }>() else { return };
    let [flags, cut0, cut1, payload @ ..] = rest else { return };
    let fields = MsgHeader::from_bytes(raw);
    let (crc_header, crc_data) = (flags & 1 != 0, flags & 2 != 0);
    let a = usize::from(*cut0).min(payload.len());
    let b = (a + usize::from(*cut1)).min(payload.len());
    let segments = [&payload[..a], &payload[a..b], &payload[b..]];
    let sealed = seal(fields, segments, crc_header, crc_data);
    let lens = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut header = MsgHeader {
        front_len: lens(a),
        middle_len: lens(b - a),
        data_len: lens(payload.len() - b),
        // Reserved goes out as 0 whatever the fields said.
        reserved: 0,
        crc: 0,
        ..fields
    };
    if crc_header {
        header = header.with_crc();
        assert!(header.verify_crc().is_ok());
    }
    assert_eq!(sealed.header, header, "seal's header");
    assert_eq!(sealed.head[0], Tag::MSG.0);
    assert_eq!(&sealed.head[1..], &header.to_bytes()[..], "seal's wire bytes");
    assert_eq!(
        MsgHeader::decode_checked(&sealed.head[1..], crc_header),
        Ok((header, MsgHeader::LEN))
    );
    assert_eq!(seal_header(fields, segments, crc_header, crc_data), (header, sealed.footer));
    let f = sealed.footer;
    assert!(f.flags.contains(FooterFlags::COMPLETE));
    assert_eq!(f.flags.contains(FooterFlags::NOCRC), !crc_data);
    if crc_header {
        assert_eq!(
            (f.front_crc, f.middle_crc),
            (ceph_crc32c(0, segments[0]), ceph_crc32c(0, segments[1]))
        );
    }
    if crc_data {
        assert_eq!(f.data_crc, ceph_crc32c(0, segments[2]));
    }
}

/// `entity_addr_t` / `entity_addrvec_t` inside messages (every marker).
pub fn entity_addr(data: &[u8]) {
    if let Ok(a) = EntityAddr::decode(&mut Decoder::new(data)) {
        for features in [Features::NONE, Features::MSG_ADDR2 | Features::SERVER_NAUTILUS] {
            let mut e = Encoder::new();
            a.encode(&mut e, features);
            let mut d = Decoder::new(e.as_slice());
            let b = EntityAddr::decode(&mut d);
            assert!(b.is_ok() && d.is_empty());
        }
    }
    if let Ok(v) = EntityAddrVec::decode(&mut Decoder::new(data)) {
        let mut e = Encoder::new();
        v.encode(&mut e, Features::MSG_ADDR2 | Features::SERVER_NAUTILUS_MASK);
        assert_eq!(EntityAddrVec::decode(&mut Decoder::new(e.as_slice())), Ok(v));
    }
}

/// The incremental message decoder, fed in chunks derived from the input.
///
/// Byte 0 picks the options (crc flags, footer format), bytes 1-2 seed the chunk sizes;
/// the rest is the byte stream after a MSG tag, possibly several messages back to back.
///
/// However the stream is split, the decoder must come to the same messages and the same
/// error: a header wholly in a read is decoded in place (`take_header`'s fast path), one
/// split across reads through the assembly buffer, and a message wholly in a read is
/// taken in one go (`take_whole`, or `split_whole` when admitted with its header). The
/// stream is decoded with the seeded chunking, in 1-byte reads (every header and footer
/// split, at every offset), whole with `feed`, and whole with every header admitted.
pub fn message_decoder(data: &[u8]) {
    let [opt, s0, s1, stream @ ..] = data else { return };
    let crc = EncodeOptions {
        crc_header: opt & 1 != 0,
        crc_data: opt & 2 != 0,
        footer: if opt & 4 != 0 { FooterFormat::New } else { FooterFormat::Old },
    };
    // Small limits keep each run cheap and exercise the limit checks.
    let limits = DecodeLimits { max_front: 4096, max_middle: 1024, max_data: 8192 };
    let opts = DecodeOptions { limits, crc };
    let all = Bytes::copy_from_slice(stream);
    let mut state = u32::from(*s0) << 8 | u32::from(*s1) | 1;
    let seeded = decode_stream(&all, opts, false, |left| {
        // xorshift: chunk sizes 1..=64, occasionally the whole rest.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if state % 8 == 0 {
            left
        } else {
            1 + (state % 64) as usize
        }
    });
    for m in seeded.iter().flatten() {
        check_message(m, opts);
    }
    let bytewise = decode_stream(&all, opts, false, |_| 1);
    assert_eq!(seeded, bytewise, "seeded chunks and 1-byte reads disagree");
    let whole = decode_stream(&all, opts, false, |left| left);
    assert_eq!(seeded, whole, "seeded chunks and one read disagree");
    let admitted = decode_stream(&all, opts, true, |left| left);
    assert_eq!(seeded, admitted, "feed and feed_admitting disagree");
}

/// What [`decode_stream`] came to: each message, then the error that stopped it, if any.
type Decoded = Vec<Result<protocol::Message, String>>;

/// Feeds `all` to a fresh decoder in chunks of `chunk(bytes left)` bytes (at least 1),
/// proceeding after every header (or admitting every header when `admit`).
fn decode_stream(
    all: &Bytes,
    opts: DecodeOptions,
    admit: bool,
    mut chunk: impl FnMut(usize) -> usize,
) -> Decoded {
    let limits = opts.limits;
    let mut dec = MessageDecoder::new(opts);
    let mut out = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let n = chunk(all.len() - at).clamp(1, all.len() - at);
        let mut input = all.slice(at..at + n);
        at += n;
        loop {
            let step = if admit {
                dec.feed_admitting(&mut input, |h| {
                    assert!(h.front_len <= limits.max_front && h.data_len <= limits.max_data);
                    true
                })
            } else {
                dec.feed(&mut input)
            };
            match step {
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    return out;
                }
                Ok(Progress::NeedMore) => {
                    assert!(input.is_empty(), "NeedMore with input left");
                    break;
                }
                Ok(Progress::HeaderReady(h)) => {
                    assert!(h.front_len <= limits.max_front);
                    assert!(h.middle_len <= limits.max_middle);
                    assert!(h.data_len <= limits.max_data);
                    if dec.proceed().is_err() {
                        panic!("proceed refused after HeaderReady");
                    }
                }
                Ok(Progress::Message(m)) => {
                    let h = dec.last_header();
                    assert_eq!(
                        (h.seq, h.tid, h.msg_type, h.front_len as usize, h.data_len as usize),
                        (m.seq(), m.tid(), m.msg_type(), m.front().len(), m.data().len())
                    );
                    out.push(Ok(m));
                }
            }
        }
    }
    out
}

/// A decoded message re-encodes to a frame that decodes to the same message.
fn check_message(m: &protocol::Message, opts: DecodeOptions) {
    let src = m.src().unwrap_or(EntityName::new(EntityType::CLIENT, -1));
    let mut wire = Vec::new();
    m.encode_frame(m.seq(), src, &opts.crc).write_to(&mut wire);
    let mut dec = MessageDecoder::new(opts);
    let mut input = Bytes::from(wire).slice(1..);
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 8, "decoder did not finish a complete frame");
        match dec.feed(&mut input) {
            Ok(Progress::HeaderReady(_)) => assert!(dec.proceed().is_ok()),
            Ok(Progress::Message(again)) => {
                assert_eq!(
                    (again.front(), again.middle(), again.data()),
                    (m.front(), m.middle(), m.data())
                );
                assert_eq!(
                    (again.seq(), again.msg_type(), again.tid()),
                    (m.seq(), m.msg_type(), m.tid())
                );
                return;
            }
            other => panic!("re-encoded message failed to decode: {other:?}"),
        }
    }
}

/// A fuzz target: its name (its corpus directory) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, for the corpus replay and the random run.
pub const TARGETS: &[Target] = &[
    ("banner", banner),
    ("connect", connect),
    ("connect_reply", connect_reply),
    ("header_footer", header_footer),
    ("entity_addr", entity_addr),
    ("message_decoder", message_decoder),
    ("admin_command", admin::admin_command),
    ("v2_frames", v2::v2_frames),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn seed_corpus_replays_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}"));
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                target(&data);
                // Every prefix too: truncation must never panic.
                for cut in 0..data.len() {
                    target(&data[..cut]);
                }
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds for {name}");
        }
    }

    /// Stand-in for a fuzzing session where cargo-fuzz (nightly) is unavailable:
    /// `FUZZ_ITERS=1000000 cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn random_inputs_every_target() {
        let iters: u64 =
            std::env::var("FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
        let seed: u64 =
            std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        eprintln!("random_inputs_every_target: seed {seed}, {iters} inputs per target");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (name, target) in TARGETS {
            let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                // Half mutate a seed (flip, cut, splice), half pure random bytes.
                let mut buf = if next() % 2 == 0 && !seeds.is_empty() {
                    seeds[(next() % seeds.len() as u64) as usize].clone()
                } else {
                    let n = (next() % 600) as usize;
                    (0..n).map(|_| next() as u8).collect()
                };
                for _ in 0..(next() % 4) {
                    if buf.is_empty() {
                        break;
                    }
                    let at = (next() % buf.len() as u64) as usize;
                    match next() % 3 {
                        0 => buf[at] ^= 1 << (next() % 8),
                        1 => buf.truncate(at),
                        _ => buf[at] = next() as u8,
                    }
                }
                target(&buf);
            }
            eprintln!("{name}: {iters} executions in {:?}", start.elapsed());
        }
    }
}
