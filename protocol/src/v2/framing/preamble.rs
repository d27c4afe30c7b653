//! The 32-byte preamble every msgr2 frame starts with (msgr-v2.md 3.1).

use crate::error::{Error, Result};
use crate::wire::ceph_crc32c;

use super::super::tag::Tag;

/// Size of the preamble.
pub const PREAMBLE_LEN: usize = 32;
/// Segments a frame may have.
pub const MAX_SEGMENTS: usize = 4;
/// Bytes covered by the preamble crc.
const PREAMBLE_CRC_COVERED: usize = 28;
/// The preamble crc's seed (the segment crcs use [`super::SEGMENT_CRC_SEED`]).
const PREAMBLE_CRC_SEED: u32 = 0;

/// One segment descriptor: length and the receive-buffer alignment hint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentDesc {
    /// Unpadded length in bytes.
    pub len: u32,
    /// Alignment hint (8 for control data, 4096 for a message's data segment).
    pub align: u16,
}

/// A decoded preamble.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preamble {
    /// The frame's tag.
    pub tag: Tag,
    /// 1..=4.
    pub num_segments: u8,
    /// Descriptors; those at index `>= num_segments` are zero.
    pub segments: [SegmentDesc; MAX_SEGMENTS],
    /// Byte 26: reserved in Pacific (Quincy's compression flag); sent as 0, ignored.
    pub flags: u8,
}

impl Preamble {
    /// The 32 bytes with their crc.
    pub fn to_bytes(&self) -> [u8; PREAMBLE_LEN] {
        let mut out = [0u8; PREAMBLE_LEN];
        out[0] = self.tag.0;
        out[1] = self.num_segments;
        for (i, &s) in self.segments.iter().enumerate() {
            put_desc(&mut out, i, s);
        }
        out[26] = self.flags;
        seal(&mut out);
        out
    }

    /// Decodes and checks 32 bytes, as Ceph's `disassemble_preamble`: the crc, `1 <=
    /// num_segments <= 4`, and a non-empty last segment when there are several.
    pub fn decode(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble> {
        let wire = u32::from_le_bytes([b[28], b[29], b[30], b[31]]);
        let got = ceph_crc32c(PREAMBLE_CRC_SEED, &b[..PREAMBLE_CRC_COVERED]);
        if wire != got {
            return Err(Error::BadCrc { what: "preamble", expected: wire, got });
        }
        let num = b[1];
        if num == 0 || usize::from(num) > MAX_SEGMENTS {
            return Err(Error::Malformed("preamble num_segments not in 1..=4"));
        }
        let len = |i: usize| {
            let at = 2 + 6 * i;
            u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        };
        let desc = |i: usize| {
            let at = 2 + 6 * i;
            SegmentDesc { len: len(i), align: u16::from_le_bytes([b[at + 4], b[at + 5]]) }
        };
        // The last segment's length read from the bytes, and the descriptors built in
        // the result: checked in an array indexed at run time, the array was built on
        // the stack and copied into the result (~25 instructions a frame).
        if num > 1 && len(usize::from(num) - 1) == 0 {
            return Err(Error::Malformed("preamble: last segment empty"));
        }
        let segments = [desc(0), desc(1), desc(2), desc(3)];
        Ok(Preamble { tag: Tag(b[0]), num_segments: num, segments, flags: b[26] })
    }

    /// The lengths of the segments in use (zero for the others).
    pub fn lens(&self) -> [u32; MAX_SEGMENTS] {
        let mut out = [0; MAX_SEGMENTS];
        for (i, o) in out.iter_mut().enumerate().take(usize::from(self.num_segments)) {
            *o = self.segments[i].len;
        }
        out
    }
}

/// Writes the crc of the first 28 bytes of the preamble `out` into its last four.
#[inline]
pub(super) fn seal(out: &mut [u8; PREAMBLE_LEN]) {
    let crc = ceph_crc32c(PREAMBLE_CRC_SEED, &out[..PREAMBLE_CRC_COVERED]);
    out[PREAMBLE_CRC_COVERED..].copy_from_slice(&crc.to_le_bytes());
}

/// Writes descriptor `i` (`len`, `align`) into the preamble `out`.
#[inline]
pub(super) fn put_desc(
    out: &mut [u8; PREAMBLE_LEN],
    i: usize,
    SegmentDesc { len, align }: SegmentDesc,
) {
    let at = 2 + 6 * i;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 6].copy_from_slice(&align.to_le_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // msgr-v2.md 3.1 test vector: a 36-byte HELLO → crc 0x066bbd3f.
    #[test]
    fn golden_hello_preamble() {
        let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
        segments[0] = SegmentDesc { len: 36, align: 8 };
        let p = Preamble { tag: Tag::HELLO, num_segments: 1, segments, flags: 0 };
        let b = p.to_bytes();
        assert_eq!(&b[..8], &[1, 1, 0x24, 0, 0, 0, 8, 0]);
        assert!(b[8..28].iter().all(|&x| x == 0));
        assert_eq!(&b[28..], &[0x3f, 0xbd, 0x6b, 0x06]);
        assert_eq!(Preamble::decode(&b).unwrap(), p);
    }

    // Every descriptor is read from its bytes, those past `num_segments` too (as sent),
    // and the last one in use, wherever it is, must not be empty.
    #[test]
    fn decodes_every_descriptor_and_checks_the_last_in_use() {
        for num in 1..=4u8 {
            let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
            for (i, s) in segments.iter_mut().enumerate() {
                *s = SegmentDesc { len: 0x0101_0101 * (i as u32 + 1), align: 8 << i };
            }
            let p = Preamble { tag: Tag::MESSAGE, num_segments: num, segments, flags: 3 };
            assert_eq!(Preamble::decode(&p.to_bytes()).unwrap(), p, "{num}");
            let last = usize::from(num) - 1;
            let mut empty = p;
            empty.segments[last].len = 0;
            let got = Preamble::decode(&empty.to_bytes());
            if num == 1 {
                assert_eq!(got.unwrap(), empty);
            } else {
                assert_eq!(got, Err(Error::Malformed("preamble: last segment empty")), "{num}");
            }
        }
    }

    #[test]
    fn checks_crc_count_and_last_segment() {
        let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
        segments[0] = SegmentDesc { len: 41, align: 8 };
        segments[1] = SegmentDesc { len: 0, align: 8 };
        let p = Preamble { tag: Tag::MESSAGE, num_segments: 2, segments, flags: 0 };
        assert_eq!(
            Preamble::decode(&p.to_bytes()),
            Err(Error::Malformed("preamble: last segment empty"))
        );
        let p = Preamble { num_segments: 5, ..p };
        assert!(matches!(Preamble::decode(&p.to_bytes()), Err(Error::Malformed(_))));
        let mut b = Preamble { num_segments: 1, ..p }.to_bytes();
        b[5] ^= 1;
        assert!(matches!(Preamble::decode(&b), Err(Error::BadCrc { what: "preamble", .. })));
    }
}
