//! The msgr2 banner: `"ceph v2\n"`, `le16` payload length, then `le64 supported` and
//! `le64 required` msgr2 feature bits (msgr-v2.md 2).

use crate::error::{Error, Result};

/// `CEPH_BANNER_V2`.
pub const BANNER_PREFIX: &[u8; 8] = b"ceph v2\n";
/// The v1 banner's first 8 bytes, recognised to log a clearer refusal.
pub const V1_BANNER_PREFIX: &[u8; 8] = b"ceph v02";
/// Prefix + `le16` payload length.
pub const BANNER_HEAD_LEN: usize = 10;
/// The payload every Ceph sends today: two `u64`s.
pub const BANNER_PAYLOAD_LEN: usize = 16;
/// A whole banner as we send it (26 bytes).
pub const BANNER_LEN: usize = BANNER_HEAD_LEN + BANNER_PAYLOAD_LEN;
/// The longest banner payload we read: Ceph ignores bytes after the two `u64`s, so a
/// future peer may send more; anything this large is not a banner.
pub const MAX_BANNER_PAYLOAD: usize = 4096;

/// msgr2 feature bits (`CEPH_MSGR2_FEATURE_*`), distinct from the Ceph feature bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Msgr2Features(pub u64);

impl Msgr2Features {
    /// No bits.
    pub const NONE: Msgr2Features = Msgr2Features(0);
    /// `CEPH_MSGR2_FEATURE_REVISION_1`: msgr2.1 framing and nonces.
    pub const REVISION_1: Msgr2Features = Msgr2Features(1);
    /// `CEPH_MSGR2_FEATURE_COMPRESSION` (Quincy+; not supported here).
    pub const COMPRESSION: Msgr2Features = Msgr2Features(2);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Msgr2Features) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A decoded banner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Banner {
    /// Features the sender supports.
    pub supported: Msgr2Features,
    /// Features the sender requires of us.
    pub required: Msgr2Features,
}

impl Banner {
    /// What Pacific sends and what we send: supported REVISION_1, required nothing.
    pub const OURS: Banner =
        Banner { supported: Msgr2Features::REVISION_1, required: Msgr2Features::NONE };

    /// The 26 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; BANNER_LEN] {
        let mut out = [0u8; BANNER_LEN];
        out[..8].copy_from_slice(BANNER_PREFIX);
        out[8..10].copy_from_slice(&(BANNER_PAYLOAD_LEN as u16).to_le_bytes());
        out[10..18].copy_from_slice(&self.supported.0.to_le_bytes());
        out[18..26].copy_from_slice(&self.required.0.to_le_bytes());
        out
    }

    /// Checks the first 10 bytes; returns the payload length that follows.
    ///
    /// A v1 banner (`ceph v027`) and any other prefix are [`Error::BadBanner`]; a
    /// payload shorter than the two `u64`s or above [`MAX_BANNER_PAYLOAD`] is malformed.
    pub fn decode_head(head: &[u8]) -> Result<usize> {
        let Some(prefix) = head.get(..8) else {
            return Err(Error::Truncated { need: 8, have: head.len() });
        };
        if prefix != BANNER_PREFIX {
            return Err(Error::BadBanner);
        }
        let Some(len) = head.get(8..10) else {
            return Err(Error::Truncated { need: BANNER_HEAD_LEN, have: head.len() });
        };
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len < BANNER_PAYLOAD_LEN {
            return Err(Error::Malformed("banner payload shorter than its two u64s"));
        }
        if len > MAX_BANNER_PAYLOAD {
            return Err(Error::TooLarge {
                what: "banner payload",
                len: len as u64,
                limit: MAX_BANNER_PAYLOAD as u64,
            });
        }
        Ok(len)
    }

    /// Decodes the payload (extra bytes after the two `u64`s are ignored, as in Ceph).
    pub fn decode_payload(payload: &[u8]) -> Result<Banner> {
        let mut d = crate::encoding::Decoder::new(payload);
        Ok(Banner { supported: Msgr2Features(d.u64()?), required: Msgr2Features(d.u64()?) })
    }

    /// Ceph's `_handle_peer_banner_payload` feature check from our side: what `self`
    /// (ours) requires that the peer lacks, and the reverse. `Ok` when compatible.
    pub fn check_compatible(&self, peer: &Banner) -> Result<()> {
        if self.required.0 & !peer.supported.0 != 0 {
            return Err(Error::Unsupported("peer lacks msgr2 features we require"));
        }
        if peer.required.0 & !self.supported.0 != 0 {
            return Err(Error::Unsupported("peer requires msgr2 features we lack"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // msgr-v2.md 2: the 16.2.15 monitor's and CLI's banner.
    #[test]
    fn golden_pacific_banner() {
        let want = [
            0x63, 0x65, 0x70, 0x68, 0x20, 0x76, 0x32, 0x0a, 0x10, 0x00, 1, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(Banner::OURS.to_bytes(), want);
        assert_eq!(Banner::decode_head(&want[..10]).unwrap(), 16);
        assert_eq!(Banner::decode_payload(&want[10..]).unwrap(), Banner::OURS);
    }

    #[test]
    fn bad_banners_are_refused() {
        assert_eq!(Banner::decode_head(b"ceph v027\0"), Err(Error::BadBanner));
        assert_eq!(
            Banner::decode_head(b"ceph v2\n\x08\x00"),
            Err(Error::Malformed("banner payload shorter than its two u64s"))
        );
        assert!(matches!(Banner::decode_head(b"ceph v2\n\xff\xff"), Err(Error::TooLarge { .. })));
        assert!(Banner::decode_payload(&[0; 15]).is_err());
        // Ceph ignores what follows the two u64s.
        assert_eq!(Banner::decode_payload(&[1; 20]).unwrap().supported.0, 0x0101_0101_0101_0101);
    }

    // "we do not support all peer required features" (E3: required=0x2 → closed).
    #[test]
    fn feature_check_both_ways() {
        let ours = Banner::OURS;
        let needs_compression =
            Banner { supported: Msgr2Features(3), required: Msgr2Features::COMPRESSION };
        assert!(ours.check_compatible(&needs_compression).is_err());
        assert!(ours.check_compatible(&Banner::OURS).is_ok());
        let strict = Banner { required: Msgr2Features::REVISION_1, ..Banner::OURS };
        assert!(strict.check_compatible(&Banner::default()).is_err());
    }
}
