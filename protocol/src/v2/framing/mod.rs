//! The msgr2.1 frame layer: preamble, segments and epilogue in crc and secure mode
//! (msgr-v2.md 3). [`FrameEncoder`] turns a tag and its segments into wire bytes;
//! [`FrameDecoder`] does the reverse incrementally, checking every length against
//! [`FrameLimits`] from the preamble, before any segment is buffered.
//!
//! # Receiving
//!
//! ```text
//!  need() bytes ─► advance(piece) ─► … ─► Head (segment 0 read and checked)
//!       proceed()  ─► need() bytes ─► advance(piece) ─► Frame (all segments, epilogue checked)
//! ```
//!
//! The decoder asks for exactly the bytes of its next piece ([`FrameDecoder::need`]):
//! the preamble (32 bytes in crc mode, 96 in secure mode), segment 0 with its crc (or
//! its second GCM block), then the rest. It stops after segment 0 so that the session
//! can reserve receive budget for a MESSAGE before its payload is read.
//!
//! A session that can decide from segment 0 alone may instead take a MESSAGE frame that
//! is all in its input in one call ([`FrameDecoder::take_whole_message`]): the same
//! checks, no pieces. In crc mode a frame it does not take is left for the pieces above;
//! in secure mode the first block (preamble and inline segment 0) must be opened to tell
//! what the frame is, and opening it uses its nonce, so a frame not taken goes on in
//! pieces from the point that block's step leaves it ([`Whole::Opened`]).

mod decoder;
mod encoder;
mod preamble;
mod secure;

use crate::error::{Error, Result};
use crate::message::DecodeLimits;

use super::tag::Tag;

pub use decoder::{Frame, FrameDecoder, FrameHead, FrameProgress, Step, Whole};
pub use encoder::FrameEncoder;
pub use preamble::{Preamble, SegmentDesc, MAX_SEGMENTS, PREAMBLE_LEN};
pub use secure::{GcmStream, KEY_LEN, NONCE_LEN, SECRET_USED_LEN, TAG_LEN};

/// Seed of the segment crcs (`ceph_crc32c(-1, ..)`, no final xor).
pub const SEGMENT_CRC_SEED: u32 = 0xFFFF_FFFF;
/// Length of segment 0's crc in crc mode.
const CRC_LEN: usize = 4;
/// crc-mode epilogue: `late_status` + three crcs (segments 1..3), only with 2+ segments.
pub const CRC_EPILOGUE_LEN: usize = 13;
/// Secure-mode epilogue: `late_status` + 15 zero bytes.
pub const SECURE_EPILOGUE_LEN: usize = 16;
/// Segment 0 bytes carried in the first GCM block beside the preamble.
pub const INLINE_LEN: usize = 48;
/// The first GCM block on the wire: preamble + inline + tag.
pub const SECURE_HEAD_LEN: usize = PREAMBLE_LEN + INLINE_LEN + TAG_LEN;
/// Secure-mode padding unit.
const PAD: usize = 16;

/// `FRAME_LATE_STATUS_COMPLETE`: what every sender writes.
pub const LATE_STATUS_COMPLETE: u8 = 0x0E;
/// `FRAME_LATE_STATUS_ABORTED`: the sender gave up; the frame is dropped.
pub const LATE_STATUS_ABORTED: u8 = 0x01;
/// Only the low nibble of `late_status` is checked.
const LATE_STATUS_MASK: u8 = 0x0F;

/// Alignment hint of control segments and a message's header, front and middle.
pub const ALIGN_DEFAULT: u16 = 8;
/// Alignment hint of a message's data segment (`CEPH_PAGE_SIZE`).
pub const ALIGN_PAGE: u16 = 4096;

/// `pad16(n)`.
fn pad16(n: usize) -> usize {
    n.div_ceil(PAD) * PAD
}

/// How long the segments of a frame may be, checked from the preamble before reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Segment 0 of any frame but MESSAGE (Ceph's control frames are < 1 KiB; AUTH_DONE
    /// with many cephx tickets is the largest).
    pub max_control: u32,
    /// Message front, middle and data.
    pub message: DecodeLimits,
}

impl Default for FrameLimits {
    /// 64 KiB control frames (Ceph's largest, AUTH_DONE with every ticket, is ~1 KiB)
    /// and [`DecodeLimits::default`] for messages.
    fn default() -> Self {
        FrameLimits { max_control: 64 << 10, message: DecodeLimits::default() }
    }
}

/// `ceph_msg_header2` length: segment 0 of a MESSAGE.
pub const HEADER2_LEN: usize = 41;

impl FrameLimits {
    fn check(&self, p: &Preamble) -> Result<()> {
        let lens = p.lens();
        let too_large = |what, len: u32, limit: u32| {
            if len > limit {
                Err(Error::TooLarge { what, len: u64::from(len), limit: u64::from(limit) })
            } else {
                Ok(())
            }
        };
        if p.tag == Tag::MESSAGE {
            if lens[0] as usize != HEADER2_LEN {
                return Err(Error::Malformed("MESSAGE segment 0 is not a 41-byte header2"));
            }
            too_large("message front", lens[1], self.message.max_front)?;
            too_large("message middle", lens[2], self.message.max_middle)?;
            too_large("message data", lens[3], self.message.max_data)
        } else {
            if p.num_segments != 1 {
                return Err(Error::Malformed("control frame with more than one segment"));
            }
            too_large("control frame", lens[0], self.max_control)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    fn encode(enc: &mut FrameEncoder, tag: Tag, segs: &[&Bytes]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let n = enc.encode(tag, segs, &mut buf, &mut out).unwrap();
        out.push(buf.freeze());
        let wire = out.concat();
        assert_eq!(wire.len(), n, "wire_len agrees with the bytes written");
        wire
    }

    fn decode(dec: &mut FrameDecoder, wire: &[u8]) -> Result<Frame> {
        let all = Bytes::copy_from_slice(wire);
        let mut at = 0;
        loop {
            if dec.is_paused() {
                dec.proceed()?;
            }
            let n = dec.need();
            let piece = all.slice(at..at + n);
            at += n;
            if let FrameProgress::Frame(f) = dec.advance(piece)? {
                assert_eq!(at, wire.len(), "the frame used every byte");
                return Ok(f);
            }
        }
    }

    fn message_segments() -> [Bytes; 4] {
        [
            Bytes::from(vec![1u8; HEADER2_LEN]),
            Bytes::from(vec![2u8; 100]),
            Bytes::new(),
            Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>()),
        ]
    }

    fn secure_pair() -> (FrameEncoder, FrameDecoder) {
        let secret = [9u8; SECRET_USED_LEN];
        let (_, tx) = GcmStream::pair_from_secret(&secret, false).unwrap();
        let (rx, _) = GcmStream::pair_from_secret(&secret, true).unwrap();
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(rx).unwrap();
        (FrameEncoder::secure(tx), dec)
    }

    // What a message still needs to arrive shrinks segment by segment in crc mode (the
    // receive windows are asked from it); secure mode takes block C whole.
    #[test]
    fn payload_pending_follows_the_segments_taken() {
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = Bytes::from(encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs));
        let mut dec = FrameDecoder::new(FrameLimits::default());
        assert_eq!((dec.payload_len(), dec.payload_pending()), (0, 0), "between frames");
        let mut at = 0;
        let mut pending = Vec::new();
        loop {
            if dec.is_paused() {
                pending.push(dec.payload_pending());
                dec.proceed().unwrap();
            }
            let n = dec.need();
            let piece = wire.slice(at..at + n);
            at += n;
            if matches!(dec.advance(piece).unwrap(), FrameProgress::Frame(_)) {
                break;
            }
            if !dec.is_paused() {
                assert_eq!(dec.payload_len(), 5100);
                pending.push(dec.payload_pending());
            }
        }
        // Preamble, segment 0 (paused), front, data, epilogue: the empty middle is no
        // piece of its own.
        assert_eq!(pending, [5100, 5100, 5000, 0]);
        assert_eq!(dec.payload_pending(), 0, "the frame is done");
    }

    // A large data segment is assembled from what was buffered plus direct reads into
    // the decoder's buffer, never past what is allowed, and its crc is still checked.
    #[test]
    fn large_segment_is_assembled_by_direct_reads_within_the_allowance() {
        let data = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let segs = [Bytes::from(vec![7u8; HEADER2_LEN]), Bytes::new(), Bytes::new(), data];
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = Bytes::from(encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs));
        for corrupt in [false, true] {
            let mut wire = wire.to_vec();
            if corrupt {
                wire[32 + 45 + 150_000] ^= 1;
            }
            let wire = Bytes::from(wire);
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let mut at = 0;
            for _ in 0..2 {
                let n = dec.need();
                dec.advance(wire.slice(at..at + n)).unwrap();
                at += n;
            }
            dec.proceed().unwrap();
            // The empty front and middle are no pieces of their own.
            assert_eq!(dec.need(), 200_000, "the data segment whole");
            // 1000 bytes were buffered: absorbed, not more than the segment needs.
            assert_eq!(dec.absorb(&wire[at..at + 1000]), 1000);
            at += 1000;
            assert_eq!(dec.payload_pending(), 199_000);
            let mut reads = 0;
            while let Some((buf, max)) = dec.assembly_buffer(64 << 10) {
                assert!(max <= 64 << 10, "never past the allowance");
                let k = max.min(50_000);
                buf.extend_from_slice(&wire[at..at + k]);
                at += k;
                reads += 1;
            }
            assert_eq!(reads, 4);
            assert_eq!(dec.need(), 0, "nothing more for the segment");
            assert!(matches!(dec.advance(Bytes::new()).unwrap(), FrameProgress::NeedMore));
            let got = dec.advance(wire.slice(at..));
            if corrupt {
                assert!(matches!(got, Err(Error::BadCrc { what: "segment 3", .. })), "{got:?}");
            } else {
                let Ok(FrameProgress::Frame(f)) = got else { panic!("{got:?}") };
                assert_eq!(f.segments, segs);
            }
        }
    }

    /// A crc-mode MESSAGE frame with a `len`-byte data segment, its segments and wire
    /// bytes, and a decoder fed its preamble and header and told to proceed: the data
    /// segment is next, from wire offset `at`.
    fn segment_ready(len: usize) -> ([Bytes; 4], Bytes, FrameDecoder, usize) {
        let data = Bytes::from((0..len).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        let segs = [Bytes::from(vec![7u8; HEADER2_LEN]), Bytes::new(), Bytes::new(), data];
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = Bytes::from(encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs));
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let mut at = 0;
        for _ in 0..2 {
            let n = dec.need();
            dec.advance(wire.slice(at..at + n)).unwrap();
            at += n;
        }
        dec.proceed().unwrap();
        (segs, wire, dec, at)
    }

    // The assembly buffer grows with the windows granted, doubling, but never past the
    // segment's length: `BytesMut::reserve`'s doubling took a segment just over a power
    // of two to twice its length, held by the message it became.
    #[test]
    fn assembly_buffer_never_grows_past_the_segment() {
        let len = 300_000usize;
        let (segs, wire, mut dec, mut at) = segment_ready(len);
        // Windows as the session grants them: 4 KiB, then doubling, the last one what
        // is left.
        let (mut granted, mut window, mut arrived) = (0usize, 4096usize, 0usize);
        while arrived < len {
            granted = (granted + window).min(len);
            window = granted;
            while let Some((buf, max)) = dec.assembly_buffer((granted - arrived) as u64) {
                assert!(buf.capacity() <= len, "capacity {} for {len} bytes", buf.capacity());
                buf.extend_from_slice(&wire[at..at + max]);
                at += max;
                arrived += max;
            }
        }
        assert!(dec.held_bytes() <= len + HEADER2_LEN, "held {}", dec.held_bytes());
        assert!(matches!(dec.advance(Bytes::new()).unwrap(), FrameProgress::NeedMore));
        let Ok(FrameProgress::Frame(f)) = dec.advance(wire.slice(at..)) else { panic!() };
        assert_eq!(f.segments, segs);
    }

    // The same when the segment comes in reads the driver did not make into the buffer
    // (`absorb`, what `handle_bytes` takes while a segment is assembled): the buffer
    // grew by `extend_from_slice`, `BytesMut::reserve`'s doubling, and a 280 KB segment
    // fed in 64 KiB reads held 512 KiB (found by open_mutation.rs).
    #[test]
    fn absorbed_reads_never_grow_the_buffer_past_the_segment() {
        for len in [280_661usize, 300_000, 1 << 20] {
            let (segs, wire, mut dec, mut at) = segment_ready(len);
            let mut most = 0;
            loop {
                let end = (at + (64 << 10)).min(wire.len());
                let n = dec.absorb(&wire[at..end]);
                if n == 0 {
                    break;
                }
                at += n;
                most = most.max(dec.held_bytes());
            }
            assert!(most >= len, "the segment was absorbed: {most} of {len}");
            assert!(most <= len + HEADER2_LEN, "{len}-byte segment: held {most}");
            assert!(matches!(dec.advance(Bytes::new()).unwrap(), FrameProgress::NeedMore));
            let Ok(FrameProgress::Frame(f)) = dec.advance(wire.slice(at..)) else { panic!() };
            assert_eq!(f.segments, segs);
        }
    }

    // The preamble and crc mode's epilogue can be fed as plain slices (nothing kept);
    // a kept piece cannot, and the crcs are checked the same way.
    #[test]
    fn preamble_and_epilogue_decode_from_slices() {
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = Bytes::from(encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs));
        for corrupt in [false, true] {
            let mut wire = wire.to_vec();
            if corrupt {
                wire[32 + 45 + 50] ^= 1;
            }
            let wire = Bytes::from(wire);
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let (mut at, mut slices) = (0, 0);
            let got = loop {
                if dec.is_paused() {
                    dec.proceed().unwrap();
                }
                let n = dec.need();
                let progress = if dec.reads_in_place() {
                    slices += 1;
                    dec.advance_slice(&wire[at..at + n])
                } else {
                    assert!(dec.advance_slice(&[]).is_err(), "a kept piece is refused");
                    dec.advance(wire.slice(at..at + n))
                };
                at += n;
                match progress {
                    Ok(FrameProgress::NeedMore | FrameProgress::Head(_)) => {}
                    other => break other,
                }
            };
            assert_eq!(slices, 2, "the preamble and the epilogue");
            if corrupt {
                assert!(matches!(got, Err(Error::BadCrc { what: "segment 1", .. })), "{got:?}");
            } else {
                let Ok(FrameProgress::Frame(f)) = got else { panic!("{got:?}") };
                assert_eq!(f.segments, segs);
            }
        }
    }

    // Every segment round-trips, an empty middle included, in both modes.
    #[test]
    fn four_segment_message_round_trips_in_both_modes() {
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs);
        // msgr-v2.md 3.2: 32 + (41 + 4) + 100 + 0 + 5000 + 13.
        assert_eq!(wire.len(), 32 + 45 + 5100 + 13);
        let f = decode(&mut FrameDecoder::new(FrameLimits::default()), &wire).unwrap();
        assert_eq!(f.segments, segs);
        let (mut enc, mut dec) = secure_pair();
        let wire = encode(&mut enc, Tag::MESSAGE, &refs);
        // 3.3: 96 + pad16(100) + 0 + pad16(5000) + 16 + 16.
        assert_eq!(wire.len(), 96 + 112 + 5008 + 32);
        assert_eq!(decode(&mut dec, &wire).unwrap().segments, segs);
    }

    // A bad crc in any later segment and a bad late_status are caught at the epilogue;
    // ABORTED is reported, not an error.
    #[test]
    fn epilogue_checks() {
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs);
        let data_at = 32 + 45 + 100 + 10;
        let mut bad = wire.clone();
        bad[data_at] ^= 1;
        let err = decode(&mut FrameDecoder::new(FrameLimits::default()), &bad).unwrap_err();
        assert!(matches!(err, Error::BadCrc { what: "segment 3", .. }), "{err}");
        let late_at = wire.len() - CRC_EPILOGUE_LEN;
        let mut aborted = wire.clone();
        aborted[late_at] = LATE_STATUS_ABORTED;
        let f = decode(&mut FrameDecoder::new(FrameLimits::default()), &aborted).unwrap();
        assert!(f.aborted);
        let mut garbage = wire;
        garbage[late_at] = 0;
        let err = decode(&mut FrameDecoder::new(FrameLimits::default()), &garbage).unwrap_err();
        assert_eq!(err, Error::Malformed("bad late_status in the epilogue"));
    }

    // Any flipped bit of any GCM block fails its tag.
    #[test]
    fn gcm_blocks_are_authenticated() {
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let (mut enc, _) = secure_pair();
        let wire = encode(&mut enc, Tag::MESSAGE, &refs);
        for at in [0, 50, 95, 96, 300, wire.len() - 1] {
            let (_, mut dec) = secure_pair();
            let mut bad = wire.clone();
            bad[at] ^= 0x80;
            assert!(decode(&mut dec, &bad).is_err(), "flip at {at} went unnoticed");
        }
    }

    // Limits are checked from the preamble, before any segment is read.
    #[test]
    fn limits_are_checked_from_the_preamble() {
        let mut limits = FrameLimits::default();
        limits.message.max_data = 4999;
        let segs = message_segments();
        let refs: Vec<&Bytes> = segs.iter().collect();
        let wire = encode(&mut FrameEncoder::crc(), Tag::MESSAGE, &refs);
        let mut dec = FrameDecoder::new(limits);
        let err = dec.advance(Bytes::copy_from_slice(&wire[..PREAMBLE_LEN])).unwrap_err();
        assert!(matches!(err, Error::TooLarge { what: "message data", .. }), "{err}");
        // And a decoder that failed stays failed.
        assert!(dec.advance(Bytes::new()).is_err());
    }
}
