//! `struct ceph_msg_footer` (21 bytes) and `ceph_msg_footer_old` (13 bytes).

use std::ops::BitOr;

use crate::encoding::Decoder;
use crate::error::Result;
use crate::types::Features;
use crate::wire::{exact, need};

/// `CEPH_MSG_FOOTER_*` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FooterFlags(pub u8);

impl FooterFlags {
    /// The sender finished the message (without it the message was aborted).
    pub const COMPLETE: FooterFlags = FooterFlags(1);
    /// The data crc was not computed.
    pub const NOCRC: FooterFlags = FooterFlags(2);
    /// The message carries a signature.
    pub const SIGNED: FooterFlags = FooterFlags(4);

    /// True if every bit of `other` is set.
    pub fn contains(self, other: FooterFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for FooterFlags {
    type Output = FooterFlags;
    fn bitor(self, rhs: FooterFlags) -> FooterFlags {
        FooterFlags(self.0 | rhs.0)
    }
}

/// Which footer a connection uses; both directions use the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FooterFormat {
    /// `ceph_msg_footer_old` (13 bytes): the negotiated features lack `MSG_AUTH`.
    Old,
    /// `ceph_msg_footer` (21 bytes, with signature): `MSG_AUTH` negotiated.
    New,
}

impl FooterFormat {
    /// The format for a connection's negotiated features.
    pub fn for_features(features: Features) -> Self {
        if features.contains(Features::MSG_AUTH) {
            FooterFormat::New
        } else {
            FooterFormat::Old
        }
    }

    /// Encoded size.
    pub const fn encoded_len(self) -> usize {
        match self {
            FooterFormat::Old => 13,
            FooterFormat::New => 21,
        }
    }
}

/// A message footer (either format; the old one has no signature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgFooter {
    /// `ceph_crc32c(0, front)`, or 0 when header crcs are off.
    pub front_crc: u32,
    /// `ceph_crc32c(0, middle)`, or 0.
    pub middle_crc: u32,
    /// `ceph_crc32c(0, data)`, or 0 with [`FooterFlags::NOCRC`].
    pub data_crc: u32,
    /// Message signature (new format only; 0 without cephx signing).
    pub sig: u64,
    /// Flags.
    pub flags: FooterFlags,
}

impl MsgFooter {
    /// Largest encoded size.
    pub const MAX_LEN: usize = 21;

    /// The encoded footer in `format`: the first `format.encoded_len()` bytes of the array.
    pub fn to_bytes(&self, format: FooterFormat) -> ([u8; Self::MAX_LEN], usize) {
        let mut out = [0u8; Self::MAX_LEN];
        out[0..4].copy_from_slice(&self.front_crc.to_le_bytes());
        out[4..8].copy_from_slice(&self.middle_crc.to_le_bytes());
        out[8..12].copy_from_slice(&self.data_crc.to_le_bytes());
        // One layout for both formats, the old one's flags written over the first byte
        // of a zero signature: written per format, the compiler merged the two arrays
        // byte by byte (shifts and byte stores on every message sent).
        let (sig, flags_at) = match format {
            FooterFormat::Old => (0, 12),
            FooterFormat::New => (self.sig, 20),
        };
        out[12..20].copy_from_slice(&sig.to_le_bytes());
        out[flags_at] = self.flags.0;
        (out, format.encoded_len())
    }

    /// Appends the encoded footer.
    pub fn encode(&self, format: FooterFormat, out: &mut Vec<u8>) {
        let (b, n) = self.to_bytes(format);
        out.extend_from_slice(&b[..n]);
    }

    /// Decodes a footer in `format` from the start of `input`.
    pub fn decode(input: &[u8], format: FooterFormat) -> Result<(Self, usize)> {
        need(input, format.encoded_len())?;
        let mut d = Decoder::new(&input[..format.encoded_len()]);
        let front_crc = d.u32()?;
        let middle_crc = d.u32()?;
        let data_crc = d.u32()?;
        let sig = match format {
            FooterFormat::Old => 0,
            FooterFormat::New => d.u64()?,
        };
        let flags = FooterFlags(d.u8()?);
        Ok((MsgFooter { front_crc, middle_crc, data_crc, sig, flags }, format.encoded_len()))
    }

    /// Like [`MsgFooter::decode`] but `input` must be exactly the footer.
    pub fn decode_exact(input: &[u8], format: FooterFormat) -> Result<Self> {
        exact(input, Self::decode(input, format)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::ceph_crc32c;

    // Every field in its place in both formats, a signature only in the new one (the
    // old format's array is zero past its flags).
    #[test]
    fn to_bytes_lays_out_each_format() {
        let f = MsgFooter {
            front_crc: 0x0403_0201,
            middle_crc: 0x0807_0605,
            data_crc: 0x0c0b_0a09,
            sig: 0x1817_1615_1413_1211,
            flags: FooterFlags::COMPLETE | FooterFlags::NOCRC,
        };
        let crcs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let flags = f.flags.0;
        let (new, n) = f.to_bytes(FooterFormat::New);
        assert_eq!(n, 21);
        assert_eq!(new[..12], crcs);
        assert_eq!(new[12..], [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, flags]);
        let (old, n) = f.to_bytes(FooterFormat::Old);
        assert_eq!(n, 13);
        assert_eq!(old[..12], crcs);
        assert_eq!(old[12..], [flags, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn golden_mauth_footer() {
        // msgr-v1.md 8.2: the MAuth front and its 21-byte footer.
        let front: [u8; 60] = [
            0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1e, 0, 0, 0,
            1, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, b'a', b'd', b'm', b'i', b'n', 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let f = MsgFooter {
            front_crc: ceph_crc32c(0, &front),
            flags: FooterFlags::COMPLETE,
            ..Default::default()
        };
        assert_eq!(f.front_crc, 0x35a7635b);
        let mut out = Vec::new();
        f.encode(FooterFormat::New, &mut out);
        assert_eq!(
            out,
            [0x5b, 0x63, 0xa7, 0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(MsgFooter::decode_exact(&out, FooterFormat::New).unwrap(), f);
        let mut old = Vec::new();
        f.encode(FooterFormat::Old, &mut old);
        assert_eq!(old, [0x5b, 0x63, 0xa7, 0x35, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(MsgFooter::decode_exact(&old, FooterFormat::Old).unwrap(), f);
        assert!(MsgFooter::decode_exact(&out, FooterFormat::Old).is_err());
        assert_eq!(FooterFormat::for_features(Features::PACIFIC_ADVERTISED), FooterFormat::New);
        assert_eq!(FooterFormat::for_features(Features(0x0401_0200_0204_0000)), FooterFormat::Old);
    }
}
