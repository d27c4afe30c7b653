//! MESSAGE (tag 17, both directions): segment 0 is `ceph_msg_header2` (41 bytes,
//! packed); front, middle and data follow as segments 1-3 (msgr-v2.md 6.1).

use crate::error::{Error, Result};

/// The `flags` Ceph puts in header2: the v1 footer flags COMPLETE | NOCRC (messages in
/// v2 carry no v1 crcs). Receivers ignore the field.
pub const HEADER2_FLAGS: u8 = 3;

/// `ceph_msg_header2`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[doc(alias = "ceph_msg_header2")]
pub struct MsgHeader2 {
    /// Per-session sequence number (first message 1).
    pub seq: u64,
    /// Transaction id.
    pub tid: u64,
    /// Message type.
    pub msg_type: u16,
    /// Priority.
    pub priority: u16,
    /// Payload encoding version.
    pub version: u16,
    /// Always 0 in Ceph.
    pub data_pre_padding_len: u32,
    /// `data_off`.
    pub data_off: u16,
    /// The sender's in_seq when it wrote the frame.
    pub ack_seq: u64,
    /// Copied v1 footer flags ([`HEADER2_FLAGS`]); ignored on receipt.
    pub flags: u8,
    /// Oldest decoder version able to read the payload.
    pub compat_version: u16,
    /// Reserved, 0.
    pub reserved: u16,
}

impl MsgHeader2 {
    /// Encoded size.
    pub const LEN: usize = 41;

    /// The 41 bytes.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.tid.to_le_bytes());
        out[16..18].copy_from_slice(&self.msg_type.to_le_bytes());
        out[18..20].copy_from_slice(&self.priority.to_le_bytes());
        out[20..22].copy_from_slice(&self.version.to_le_bytes());
        out[22..26].copy_from_slice(&self.data_pre_padding_len.to_le_bytes());
        out[26..28].copy_from_slice(&self.data_off.to_le_bytes());
        out[28..36].copy_from_slice(&self.ack_seq.to_le_bytes());
        out[36] = self.flags;
        out[37..39].copy_from_slice(&self.compat_version.to_le_bytes());
        out[39..41].copy_from_slice(&self.reserved.to_le_bytes());
        out
    }

    /// Decodes exactly 41 bytes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        // Fixed offsets into a fixed-size array: every message's header is decoded here,
        // and a field-by-field reader with a length check per field cost ~140
        // instructions a message.
        let Ok(b) = <&[u8; Self::LEN]>::try_from(b) else {
            return Err(Error::Malformed("ceph_msg_header2 is not 41 bytes"));
        };
        let le2 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let le4 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let le8 = |at: usize| {
            u64::from_le_bytes([
                b[at],
                b[at + 1],
                b[at + 2],
                b[at + 3],
                b[at + 4],
                b[at + 5],
                b[at + 6],
                b[at + 7],
            ])
        };
        Ok(MsgHeader2 {
            seq: le8(0),
            tid: le8(8),
            msg_type: le2(16),
            priority: le2(18),
            version: le2(20),
            data_pre_padding_len: le4(22),
            data_off: le2(26),
            ack_seq: le8(28),
            flags: b[36],
            compat_version: le2(37),
            reserved: le2(39),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;

    // msgr-v2.md 6.3: the monitor's MMonMap header2.
    #[test]
    fn golden_monmap_header2() {
        let b = hex("01 00 00 00 00 00 00 00 | 00 00 00 00 00 00 00 00 | 04 00 | c4 00 | 01 00 | \
                     00 00 00 00 | 00 00 | 01 00 00 00 00 00 00 00 | 03 | 01 00 | 00 00");
        let h = MsgHeader2::decode(&b).unwrap();
        assert_eq!((h.seq, h.tid, h.msg_type, h.priority, h.version), (1, 0, 4, 196, 1));
        assert_eq!((h.ack_seq, h.flags, h.compat_version), (1, 3, 1));
        assert_eq!(&h.to_bytes()[..], &b[..]);
        assert!(MsgHeader2::decode(&b[..40]).is_err());
    }

    // Every byte in its field: 41 distinct bytes decode to the fields at their offsets
    // and encode back to themselves; 40 or 42 bytes are refused.
    #[test]
    fn every_field_decodes_from_its_own_bytes() {
        let b: Vec<u8> = (1..=41).collect();
        let h = MsgHeader2::decode(&b).unwrap();
        assert_eq!(h.seq, u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(h.tid, u64::from_le_bytes([9, 10, 11, 12, 13, 14, 15, 16]));
        assert_eq!((h.msg_type, h.priority, h.version), (0x1211, 0x1413, 0x1615));
        assert_eq!((h.data_pre_padding_len, h.data_off), (0x1a19_1817, 0x1c1b));
        assert_eq!(h.ack_seq, u64::from_le_bytes([29, 30, 31, 32, 33, 34, 35, 36]));
        assert_eq!((h.flags, h.compat_version, h.reserved), (37, 0x2726, 0x2928));
        assert_eq!(&h.to_bytes()[..], &b[..]);
        let mut long = b.clone();
        long.push(0);
        assert!(MsgHeader2::decode(&long).is_err());
    }
}
