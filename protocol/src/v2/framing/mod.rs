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

mod preamble;
mod secure;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::message::DecodeLimits;
use crate::wire::ceph_crc32c;

use super::tag::Tag;

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

/// Segments at least this long are handed out by reference in crc mode (no copy into
/// the gather buffer); shorter ones are copied, which is cheaper than another iovec.
const ZERO_COPY_MIN: usize = 4096;

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

/// Builds frames in crc mode or, once keys exist, secure mode.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    secure: Option<GcmStream>,
}

impl FrameEncoder {
    /// A crc-mode encoder (also the mode of everything up to AUTH_DONE).
    pub fn crc() -> Self {
        FrameEncoder { secure: None }
    }

    /// A secure-mode encoder.
    pub fn secure(tx: GcmStream) -> Self {
        FrameEncoder { secure: Some(tx) }
    }

    /// Whether frames are encrypted.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// Bytes the frame with these segment lengths takes on the wire.
    pub fn wire_len(&self, lens: &[usize]) -> usize {
        let num = effective_segments(lens);
        if self.secure.is_some() {
            let p0 = pad16(lens.first().copied().unwrap_or(0));
            let mut n = SECURE_HEAD_LEN + p0.saturating_sub(INLINE_LEN);
            if p0 > INLINE_LEN {
                n += TAG_LEN;
            }
            if num > 1 {
                n += lens[1..num].iter().map(|&l| pad16(l)).sum::<usize>()
                    + SECURE_EPILOGUE_LEN
                    + TAG_LEN;
            }
            n
        } else {
            let l0 = lens.first().copied().unwrap_or(0);
            let mut n = PREAMBLE_LEN + if l0 > 0 { l0 + CRC_LEN } else { 0 };
            if num > 1 {
                n += lens[1..num].iter().sum::<usize>() + CRC_EPILOGUE_LEN;
            }
            n
        }
    }

    /// Appends the frame `tag` with `segments` (1..=4; trailing empty ones are dropped,
    /// as Ceph does). Small pieces go to `buf`; in crc mode, large segments are pushed
    /// onto `out` by reference after flushing `buf` there, so the wire order is `out`
    /// then `buf`. Returns the frame's wire length.
    pub fn encode(
        &mut self,
        tag: Tag,
        segments: &[&Bytes],
        buf: &mut BytesMut,
        out: &mut Vec<Bytes>,
    ) -> Result<usize> {
        if segments.is_empty() || segments.len() > MAX_SEGMENTS {
            return Err(Error::Misuse("a frame has 1 to 4 segments"));
        }
        let mut lens = [0usize; MAX_SEGMENTS];
        for (l, s) in lens.iter_mut().zip(segments) {
            *l = s.len();
        }
        let num = effective_segments(&lens[..segments.len()]);
        let mut pre = Preamble { tag, num_segments: num as u8, ..Preamble::default() };
        for (i, (&l, desc)) in lens.iter().zip(pre.segments.iter_mut()).take(num).enumerate() {
            let align = if tag == Tag::MESSAGE && i == MAX_SEGMENTS - 1 {
                ALIGN_PAGE
            } else {
                ALIGN_DEFAULT
            };
            let len = u32::try_from(l).map_err(|_| Error::TooLarge {
                what: "frame segment",
                len: l as u64,
                limit: u64::from(u32::MAX),
            })?;
            *desc = SegmentDesc { len, align };
        }
        let total = self.wire_len(&lens[..num]);
        let pre = pre.to_bytes();
        match self.secure.as_mut() {
            None => {
                buf.reserve(PREAMBLE_LEN + CRC_LEN + CRC_EPILOGUE_LEN + 64);
                buf.extend_from_slice(&pre);
                let s0 = segments[0];
                if !s0.is_empty() {
                    push_segment(s0, buf, out);
                    buf.put_u32_le(ceph_crc32c(SEGMENT_CRC_SEED, s0));
                }
                if num > 1 {
                    let mut crcs = [0u32; MAX_SEGMENTS - 1];
                    for i in 1..num {
                        push_segment(segments[i], buf, out);
                        crcs[i - 1] = ceph_crc32c(SEGMENT_CRC_SEED, segments[i]);
                    }
                    buf.put_u8(LATE_STATUS_COMPLETE);
                    for c in crcs {
                        buf.put_u32_le(c);
                    }
                }
            }
            Some(gcm) => {
                buf.reserve(total);
                // Block A: preamble + the first 48 bytes of segment 0, zero padded.
                let start = buf.len();
                buf.extend_from_slice(&pre);
                let s0 = segments[0];
                let inline = s0.len().min(INLINE_LEN);
                buf.extend_from_slice(&s0[..inline]);
                buf.put_bytes(0, INLINE_LEN - inline);
                seal_tail(gcm, buf, start)?;
                // Block B: the rest of segment 0, padded to 16.
                if s0.len() > INLINE_LEN {
                    let start = buf.len();
                    buf.extend_from_slice(&s0[INLINE_LEN..]);
                    buf.put_bytes(0, pad16(s0.len()) - s0.len());
                    seal_tail(gcm, buf, start)?;
                }
                // Block C: segments 1.., each padded, and the epilogue.
                if num > 1 {
                    let start = buf.len();
                    for s in &segments[1..num] {
                        buf.extend_from_slice(s);
                        buf.put_bytes(0, pad16(s.len()) - s.len());
                    }
                    buf.put_u8(LATE_STATUS_COMPLETE);
                    buf.put_bytes(0, SECURE_EPILOGUE_LEN - 1);
                    seal_tail(gcm, buf, start)?;
                }
            }
        }
        Ok(total)
    }
}

/// The number of segments sent: up to the last non-empty one, at least 1.
fn effective_segments(lens: &[usize]) -> usize {
    lens.iter().rposition(|&l| l > 0).map_or(1, |i| i + 1).max(1)
}

fn push_segment(seg: &Bytes, buf: &mut BytesMut, out: &mut Vec<Bytes>) {
    if seg.len() >= ZERO_COPY_MIN {
        if !buf.is_empty() {
            out.push(buf.split().freeze());
        }
        out.push(seg.clone());
    } else {
        buf.extend_from_slice(seg);
    }
}

/// Encrypts `buf[start..]` in place and appends its tag.
fn seal_tail(gcm: &mut GcmStream, buf: &mut BytesMut, start: usize) -> Result<()> {
    let tag = gcm.seal(&mut buf[start..])?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// The first segment of a frame being received, before the rest is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The frame's preamble.
    pub preamble: Preamble,
    /// Segment 0, checked (crc or GCM).
    pub segment0: Bytes,
}

impl FrameHead {
    /// The frame's tag.
    pub fn tag(&self) -> Tag {
        self.preamble.tag
    }

    /// Bytes of segments 1..3 (a MESSAGE's front + middle + data).
    pub fn payload_len(&self) -> u64 {
        self.preamble.lens()[1..].iter().map(|&l| u64::from(l)).sum()
    }
}

/// A complete, verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's preamble.
    pub preamble: Preamble,
    /// Segments 0..3 (empty beyond `num_segments`).
    pub segments: [Bytes; MAX_SEGMENTS],
    /// The sender aborted the frame (`late_status` ABORTED): Ceph drops it silently.
    pub aborted: bool,
}

impl Frame {
    /// The frame's tag.
    pub fn tag(&self) -> Tag {
        self.preamble.tag
    }
}

/// What one [`FrameDecoder::advance`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameProgress {
    /// Nothing yet: call [`FrameDecoder::need`] again.
    NeedMore,
    /// Segment 0 is in: call [`FrameDecoder::proceed`] to read the rest.
    Head(FrameHead),
    /// The whole frame; the decoder is ready for the next one.
    Frame(Frame),
}

/// Where the decoder is within a frame. The frame's parts live in the decoder's fields,
/// so moving between stages moves no buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Between frames.
    Preamble,
    /// Preamble read; segment 0 (its crc, or the rest of its GCM block) next.
    Segment0,
    /// Segment 0 handed out; waiting for [`FrameDecoder::proceed`].
    Paused,
    /// Reading segments 1.. (crc mode: one at a time, `next` is the index, then the
    /// epilogue when `next == num_segments`) or block C whole (secure mode).
    Rest { next: usize },
    /// An error was returned; nothing more is decoded.
    Failed,
}

/// Incremental receiver of frames (see the module docs for the call order).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    secure: Option<GcmStream>,
    stage: Stage,
    /// The preamble of the frame in progress.
    preamble: Preamble,
    /// Secure mode: the first 48 bytes of padded segment 0, from the first block.
    inline: Bytes,
    /// The segments received so far of the frame in progress.
    segments: [Bytes; MAX_SEGMENTS],
}

impl FrameDecoder {
    /// A crc-mode decoder.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            secure: None,
            stage: Stage::Preamble,
            preamble: Preamble::default(),
            inline: Bytes::new(),
            segments: Default::default(),
        }
    }

    /// Switches to secure mode (after AUTH_DONE). Only between frames.
    pub fn set_secure(&mut self, rx: GcmStream) -> Result<()> {
        if self.stage != Stage::Preamble {
            return Err(Error::Misuse("mode switch in the middle of a frame"));
        }
        self.secure = Some(rx);
        Ok(())
    }

    /// Whether frames are decrypted.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// Whether the decoder waits for [`FrameDecoder::proceed`].
    pub fn is_paused(&self) -> bool {
        self.stage == Stage::Paused
    }

    /// Whether the decoder is between frames.
    pub fn is_idle(&self) -> bool {
        self.stage == Stage::Preamble
    }

    /// The exact number of bytes the next [`FrameDecoder::advance`] takes (0 is valid:
    /// call `advance` with an empty piece). Meaningless while paused or failed.
    pub fn need(&self) -> usize {
        let lens = self.preamble.lens();
        let num = usize::from(self.preamble.num_segments);
        match self.stage {
            Stage::Preamble if self.secure.is_some() => SECURE_HEAD_LEN,
            Stage::Preamble => PREAMBLE_LEN,
            Stage::Segment0 => {
                let l0 = lens[0] as usize;
                if self.secure.is_some() {
                    let p0 = pad16(l0);
                    if p0 > INLINE_LEN {
                        p0 - INLINE_LEN + TAG_LEN
                    } else {
                        0
                    }
                } else if l0 > 0 {
                    l0 + CRC_LEN
                } else {
                    0
                }
            }
            Stage::Rest { .. } if num <= 1 => 0,
            Stage::Rest { .. } if self.secure.is_some() => {
                lens[1..num].iter().map(|&l| pad16(l as usize)).sum::<usize>()
                    + SECURE_EPILOGUE_LEN
                    + TAG_LEN
            }
            // Each segment on its own, so that one arriving in one chunk is sliced out
            // of it rather than gathered with its neighbours.
            Stage::Rest { next } if next < num => lens.get(next).map_or(0, |&l| l as usize),
            Stage::Rest { .. } => CRC_EPILOGUE_LEN,
            Stage::Paused | Stage::Failed => 0,
        }
    }

    /// Resumes after [`FrameProgress::Head`].
    pub fn proceed(&mut self) -> Result<()> {
        if self.stage != Stage::Paused {
            return Err(Error::Misuse("proceed without a frame head"));
        }
        self.stage = Stage::Rest { next: 1 };
        Ok(())
    }

    /// Forgets any partial frame (after a fault, before reuse).
    pub fn reset(&mut self) {
        self.stage = Stage::Preamble;
        self.inline = Bytes::new();
        self.segments = Default::default();
    }

    /// Feeds exactly [`FrameDecoder::need`] bytes. Any error leaves the decoder failed.
    pub fn advance(&mut self, piece: Bytes) -> Result<FrameProgress> {
        if piece.len() != self.need() || matches!(self.stage, Stage::Paused | Stage::Failed) {
            return Err(Error::Misuse("advance with the wrong number of bytes"));
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Failed);
        let progress = match stage {
            Stage::Preamble => self.read_preamble(piece)?,
            Stage::Segment0 => self.read_segment0(piece)?,
            Stage::Rest { next } => self.read_rest(next, piece)?,
            Stage::Paused | Stage::Failed => {
                return Err(Error::Misuse("advance on a failed decoder"))
            }
        };
        Ok(progress)
    }

    fn read_preamble(&mut self, piece: Bytes) -> Result<FrameProgress> {
        let mut raw = [0u8; PREAMBLE_LEN];
        match self.secure.as_mut() {
            None => {
                raw.copy_from_slice(&piece[..PREAMBLE_LEN]);
                self.inline = Bytes::new();
            }
            Some(gcm) => {
                let mut block = BytesMut::from(&piece[..PREAMBLE_LEN + INLINE_LEN]);
                gcm.open(&mut block, &piece[PREAMBLE_LEN + INLINE_LEN..])?;
                raw.copy_from_slice(&block[..PREAMBLE_LEN]);
                let mut block = block.freeze();
                self.inline = block.split_off(PREAMBLE_LEN);
            }
        }
        let preamble = Preamble::decode(&raw)?;
        self.limits.check(&preamble)?;
        self.preamble = preamble;
        self.stage = Stage::Segment0;
        if self.need() == 0 {
            self.stage = Stage::Failed;
            return self.read_segment0(Bytes::new());
        }
        Ok(FrameProgress::NeedMore)
    }

    fn read_segment0(&mut self, piece: Bytes) -> Result<FrameProgress> {
        let l0 = self.preamble.lens()[0] as usize;
        let segment0 = match self.secure.as_mut() {
            None if l0 == 0 => Bytes::new(),
            None => {
                let mut piece = piece;
                let crc_bytes = piece.split_off(l0);
                let wire =
                    u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
                let got = ceph_crc32c(SEGMENT_CRC_SEED, &piece);
                if wire != got {
                    return Err(Error::BadCrc { what: "segment 0", expected: wire, got });
                }
                piece
            }
            Some(_) if piece.is_empty() => self.inline.slice(..l0),
            Some(gcm) => {
                let body = piece.len() - TAG_LEN;
                let mut all = BytesMut::with_capacity(INLINE_LEN + body);
                all.extend_from_slice(&self.inline);
                all.extend_from_slice(&piece[..body]);
                gcm.open(&mut all[INLINE_LEN..], &piece[body..])?;
                all.truncate(l0);
                all.freeze()
            }
        };
        self.inline = Bytes::new();
        self.segments[0] = segment0.clone();
        self.stage = Stage::Paused;
        Ok(FrameProgress::Head(FrameHead { preamble: self.preamble, segment0 }))
    }

    fn read_rest(&mut self, next: usize, piece: Bytes) -> Result<FrameProgress> {
        let num = usize::from(self.preamble.num_segments);
        let lens = self.preamble.lens();
        if num <= 1 {
            return Ok(self.finish_frame(false));
        }
        let late_status = match self.secure.as_mut() {
            None if next < num => {
                // One segment; its crc is checked with the epilogue.
                if let Some(slot) = self.segments.get_mut(next) {
                    *slot = piece;
                }
                self.stage = Stage::Rest { next: next + 1 };
                return Ok(FrameProgress::NeedMore);
            }
            None => {
                // late_status, then the crcs of segments 1..3 (0 past num_segments).
                let (late, crcs) = piece.split_at(1);
                let used = self.segments.iter().zip(SEGMENT_NAMES).take(num).skip(1);
                for ((seg, what), wire) in used.zip(crcs.chunks_exact(CRC_LEN)) {
                    let wire = u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]);
                    let got = ceph_crc32c(SEGMENT_CRC_SEED, seg);
                    if wire != got {
                        return Err(Error::BadCrc { what, expected: wire, got });
                    }
                }
                late[0]
            }
            Some(gcm) => {
                // Decrypt in place: the piece is usually the only owner of its bytes
                // (gathered for us), so no copy; otherwise one.
                let mut plain = piece.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
                let body = plain.len() - TAG_LEN;
                let tag = plain.split_off(body);
                gcm.open(&mut plain, &tag)?;
                let plain = plain.freeze();
                let mut at = 0;
                for (slot, &len) in self.segments.iter_mut().zip(&lens).take(num).skip(1) {
                    let len = len as usize;
                    *slot = plain.slice(at..at + len);
                    at += pad16(len);
                }
                plain.get(at).copied().unwrap_or(0)
            }
        };
        let aborted = match late_status & LATE_STATUS_MASK {
            LATE_STATUS_COMPLETE => false,
            LATE_STATUS_ABORTED => true,
            _ => return Err(Error::Malformed("bad late_status in the epilogue")),
        };
        Ok(self.finish_frame(aborted))
    }

    fn finish_frame(&mut self, aborted: bool) -> FrameProgress {
        self.stage = Stage::Preamble;
        let segments = std::mem::take(&mut self.segments);
        FrameProgress::Frame(Frame { preamble: self.preamble, segments, aborted })
    }
}

/// Names of the segment crcs in errors.
const SEGMENT_NAMES: [&str; MAX_SEGMENTS] = ["segment 0", "segment 1", "segment 2", "segment 3"];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
