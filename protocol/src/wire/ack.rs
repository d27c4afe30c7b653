//! The small open-session frames: ACK (+ u64 seq) and KEEPALIVE2 / KEEPALIVE2_ACK
//! (+ `ceph_timespec`). KEEPALIVE and CLOSE are a bare [`Tag`].

use crate::encoding::UTime;
use crate::error::Result;
use crate::wire::{need, Tag};

/// The `ceph_timespec` carried by KEEPALIVE2 and echoed by KEEPALIVE2_ACK
/// (`u32 sec` + `u32 nsec`, the same layout as `utime_t`).
pub type KeepaliveStamp = UTime;

/// `Tag::ACK` + `u64` seq: 9 bytes.
pub fn ack_frame(seq: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = Tag::ACK.0;
    out[1..].copy_from_slice(&seq.to_le_bytes());
    out
}

/// `tag` ([`Tag::KEEPALIVE2`] or [`Tag::KEEPALIVE2_ACK`]) + stamp: 9 bytes.
pub fn keepalive2_frame(tag: Tag, stamp: KeepaliveStamp) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = tag.0;
    out[1..5].copy_from_slice(&stamp.sec.to_le_bytes());
    out[5..].copy_from_slice(&stamp.nsec.to_le_bytes());
    out
}

/// Decodes the `u64` after an ACK tag; returns it and the 8 bytes consumed.
pub fn decode_ack(input: &[u8]) -> Result<(u64, usize)> {
    need(input, 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&input[..8]);
    Ok((u64::from_le_bytes(b), 8))
}

/// Decodes the stamp after a KEEPALIVE2 / KEEPALIVE2_ACK tag; returns it and 8.
pub fn decode_keepalive_stamp(input: &[u8]) -> Result<(KeepaliveStamp, usize)> {
    need(input, 8)?;
    let mut d = crate::encoding::Decoder::new(&input[..8]);
    Ok((d.utime()?, 8))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn golden_keepalive2_and_ack() {
        // msgr-v1.md 4: sec 0x6b01e722, nsec 0x1c78b0c7.
        let stamp = KeepaliveStamp { sec: 0x6b01_e722, nsec: 0x1c78_b0c7 };
        let k = keepalive2_frame(Tag::KEEPALIVE2, stamp);
        assert_eq!(k, [0x0e, 0x22, 0xe7, 0x01, 0x6b, 0xc7, 0xb0, 0x78, 0x1c]);
        assert_eq!(decode_keepalive_stamp(&k[1..]).unwrap(), (stamp, 8));
        assert_eq!(keepalive2_frame(Tag::KEEPALIVE2_ACK, stamp)[0], 0x0f);
        let a = ack_frame(2);
        assert_eq!(a, [8, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_ack(&a[1..]).unwrap(), (2, 8));
        assert!(decode_ack(&a[1..8]).is_err());
        assert!(decode_keepalive_stamp(&k[1..4]).is_err());
    }
}
