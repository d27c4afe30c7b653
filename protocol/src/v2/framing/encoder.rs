//! [`FrameEncoder`]: a tag and its segments into wire bytes, crc or secure mode.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::wire::ceph_crc32c;

use super::super::tag::Tag;
use super::preamble;
use super::{
    pad16, GcmStream, SegmentDesc, ALIGN_DEFAULT, ALIGN_PAGE, CRC_EPILOGUE_LEN, CRC_LEN,
    INLINE_LEN, LATE_STATUS_COMPLETE, MAX_SEGMENTS, PREAMBLE_LEN, SECURE_EPILOGUE_LEN,
    SECURE_HEAD_LEN, SEGMENT_CRC_SEED, TAG_LEN,
};
use crate::message::{grow_head, ZERO_COPY_MIN};

/// Builds frames in crc mode or, once keys exist, secure mode.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    /// Boxed: a connection in crc mode (most) does not carry the cipher state.
    secure: Option<Box<GcmStream>>,
}

impl FrameEncoder {
    /// A crc-mode encoder (also the mode of everything up to AUTH_DONE).
    pub fn crc() -> Self {
        FrameEncoder { secure: None }
    }

    /// A secure-mode encoder.
    pub fn secure(tx: GcmStream) -> Self {
        FrameEncoder { secure: Some(Box::new(tx)) }
    }

    /// Whether frames are encrypted.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// Bytes the frame with these segment lengths takes on the wire.
    pub fn wire_len(&self, lens: &[usize]) -> usize {
        if self.secure.is_some() {
            secure_wire_len(lens)
        } else {
            crc_wire_len(lens)
        }
    }

    /// Appends the frame `tag` with `segments` (1..=4; trailing empty ones are dropped,
    /// as Ceph does). Small pieces go to `buf`; in crc mode, large segments after
    /// segment 0 are pushed onto `out` by reference after flushing `buf` there, so the
    /// wire order is `out` then `buf`. Returns the frame's wire length.
    pub fn encode(
        &mut self,
        tag: Tag,
        segments: &[&Bytes],
        buf: &mut BytesMut,
        out: &mut Vec<Bytes>,
    ) -> Result<usize> {
        let Some((segment0, rest)) = segments.split_first() else {
            return Err(Error::Misuse("a frame has 1 to 4 segments"));
        };
        self.encode_parts(tag, segment0, rest, buf, out)
    }

    /// [`FrameEncoder::encode`] with segment 0 as plain bytes (it is always copied into
    /// `buf`: a MESSAGE's header2 needs no `Bytes` of its own) and the other segments
    /// in `rest` (0..=3).
    pub fn encode_parts(
        &mut self,
        tag: Tag,
        segment0: &[u8],
        rest: &[&Bytes],
        buf: &mut BytesMut,
        out: &mut Vec<Bytes>,
    ) -> Result<usize> {
        if rest.len() >= MAX_SEGMENTS {
            return Err(Error::Misuse("a frame has 1 to 4 segments"));
        }
        let mut lens = [0usize; MAX_SEGMENTS];
        lens[0] = segment0.len();
        for (l, s) in lens[1..].iter_mut().zip(rest) {
            *l = s.len();
        }
        let num = effective_segments(&lens[..=rest.len()]);
        // The preamble written straight into its bytes (what `Preamble::to_bytes` gives
        // for these descriptors and no flags): built as a `Preamble` first, it was then
        // copied field by field into the bytes (~30 instructions a frame).
        let mut pre = [0u8; PREAMBLE_LEN];
        pre[0] = tag.0;
        pre[1] = num as u8;
        for (i, &l) in lens.iter().enumerate().take(num) {
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
            preamble::put_desc(&mut pre, i, SegmentDesc { len, align });
        }
        preamble::seal(&mut pre);
        match self.secure.as_mut() {
            None => {
                let total = crc_wire_len(&lens[..num]);
                // Everything but the segments sent by reference is copied into `buf`.
                // Reserving only this frame's need took an allocation (and a
                // shared-buffer header) per frame once a payload's split had shared
                // `buf`: grown as msgr v1's gather buffer grows, a batch's worth at once.
                let by_ref: usize =
                    rest.iter().map(|s| s.len()).filter(|&l| l >= ZERO_COPY_MIN).sum();
                let need = total - by_ref;
                if buf.capacity() - buf.len() < need {
                    grow_head(buf, need);
                }
                buf.extend_from_slice(&pre);
                if !segment0.is_empty() {
                    buf.extend_from_slice(segment0);
                    buf.put_u32_le(ceph_crc32c(SEGMENT_CRC_SEED, segment0));
                }
                if num > 1 {
                    // Built on the stack and copied once: each `put_*` on `buf` is a
                    // call of its own.
                    let mut epilogue = [0u8; CRC_EPILOGUE_LEN];
                    epilogue[0] = LATE_STATUS_COMPLETE;
                    let crcs = epilogue[1..].chunks_exact_mut(CRC_LEN);
                    for (seg, crc) in rest.iter().zip(crcs).take(num - 1) {
                        // Most messages leave a segment or two empty: no copy call for
                        // nothing, and the crc of nothing is the seed.
                        let c = if seg.is_empty() {
                            SEGMENT_CRC_SEED
                        } else {
                            push_segment(seg, buf, out);
                            ceph_crc32c(SEGMENT_CRC_SEED, seg)
                        };
                        crc.copy_from_slice(&c.to_le_bytes());
                    }
                    buf.extend_from_slice(&epilogue);
                }
                Ok(total)
            }
            Some(gcm) => {
                let total = secure_wire_len(&lens[..num]);
                buf.reserve(total);
                // Block A: preamble + the first 48 bytes of segment 0, zero padded.
                let start = buf.len();
                buf.extend_from_slice(&pre);
                let s0 = segment0;
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
                    for s in rest.iter().take(num - 1) {
                        buf.extend_from_slice(s);
                        buf.put_bytes(0, pad16(s.len()) - s.len());
                    }
                    buf.put_u8(LATE_STATUS_COMPLETE);
                    buf.put_bytes(0, SECURE_EPILOGUE_LEN - 1);
                    seal_tail(gcm, buf, start)?;
                }
                Ok(total)
            }
        }
    }
}

/// [`FrameEncoder::wire_len`] in crc mode.
#[inline]
fn crc_wire_len(lens: &[usize]) -> usize {
    let num = effective_segments(lens);
    let l0 = lens.first().copied().unwrap_or(0);
    let mut n = PREAMBLE_LEN + if l0 > 0 { l0 + CRC_LEN } else { 0 };
    if num > 1 {
        n += lens[1..num].iter().sum::<usize>() + CRC_EPILOGUE_LEN;
    }
    n
}

/// [`FrameEncoder::wire_len`] in secure mode.
#[inline]
fn secure_wire_len(lens: &[usize]) -> usize {
    let num = effective_segments(lens);
    let p0 = pad16(lens.first().copied().unwrap_or(0));
    let mut n = SECURE_HEAD_LEN + p0.saturating_sub(INLINE_LEN);
    if p0 > INLINE_LEN {
        n += TAG_LEN;
    }
    if num > 1 {
        n += lens[1..num].iter().map(|&l| pad16(l)).sum::<usize>() + SECURE_EPILOGUE_LEN + TAG_LEN;
    }
    n
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Preamble;
    use super::*;
    use crate::message::{FRAMES_PER_RESERVE, GATHERED_PER_FRAME};
    use crate::v2::frames::MsgHeader2;

    /// The preamble `encode_parts` writes is the one `Preamble::to_bytes` gives for the
    /// frame's descriptors, for every count of segments in use (empty ones at the end
    /// dropped), a MESSAGE's (its data segment page aligned) and another tag's.
    #[test]
    fn the_preamble_written_is_the_descriptors_one() {
        let seg = |n: usize| Bytes::from(vec![3u8; n]);
        let empty = Bytes::new();
        for tag in [Tag::MESSAGE, Tag::HELLO] {
            for num in 1..=MAX_SEGMENTS {
                let rest: Vec<Bytes> = (1..MAX_SEGMENTS)
                    .map(|i| if i < num { seg(100 * i + 3) } else { empty.clone() })
                    .collect();
                let rest: Vec<&Bytes> = rest.iter().collect();
                let s0 = vec![9u8; 41];
                let (mut buf, mut out) = (BytesMut::new(), Vec::new());
                FrameEncoder::crc().encode_parts(tag, &s0, &rest, &mut buf, &mut out).unwrap();
                let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
                segments[0] = SegmentDesc { len: 41, align: ALIGN_DEFAULT };
                for (i, d) in segments.iter_mut().enumerate().take(num).skip(1) {
                    let align =
                        if tag == Tag::MESSAGE && i == 3 { ALIGN_PAGE } else { ALIGN_DEFAULT };
                    *d = SegmentDesc { len: (100 * i + 3) as u32, align };
                }
                let want = Preamble { tag, num_segments: num as u8, segments, flags: 0 }.to_bytes();
                assert_eq!(buf[..PREAMBLE_LEN], want, "{tag:?} {num}");
            }
        }
    }

    // A burst of MESSAGE frames whose payloads go out by reference, more than one
    // reservation covers (a transmit round of 4 KiB messages), as msgr v1's
    // `a_burst_of_zero_copy_frames_gathers_into_few_buffers`: the small pieces between
    // the payloads (preamble, header2 and its crc, epilogue) come from a buffer per
    // reservation's worth of frames. Reserving only what each frame needed, once the
    // first payload's split had shared the buffer, took a buffer per frame (an
    // allocation and a shared-buffer header each).
    #[test]
    fn a_burst_of_zero_copy_frames_gathers_into_few_buffers() {
        let frames = 5 * FRAMES_PER_RESERVE;
        let data = Bytes::from(vec![5u8; ZERO_COPY_MIN]);
        let empty = Bytes::new();
        let header = [0u8; MsgHeader2::LEN];
        let mut enc = FrameEncoder::crc();
        // Empty, as a session's gather buffer starts a round after a large one.
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        for _ in 0..frames {
            let segs = [&empty, &empty, &data];
            enc.encode_parts(Tag::MESSAGE, &header, &segs, &mut buf, &mut out).unwrap();
        }
        out.push(buf.freeze());
        let small: Vec<&Bytes> = out.iter().filter(|b| b.as_ptr() != data.as_ptr()).collect();
        assert_eq!(small.len(), frames + 1);
        // A piece that does not start where the one before it ended began a new buffer.
        let buffers = 1 + small
            .windows(2)
            .filter(|w| w[1].as_ptr() as usize != w[0].as_ptr() as usize + w[0].len())
            .count();
        let per_frame = PREAMBLE_LEN + MsgHeader2::LEN + CRC_LEN + CRC_EPILOGUE_LEN;
        let most = frames * per_frame / (FRAMES_PER_RESERVE * GATHERED_PER_FRAME) + 2;
        assert!(buffers <= most, "{buffers} buffers for {frames} frames (at most {most})");
    }
}
