//! CLIENT_IDENT (tag 8, connector): `entity_addrvec_t addrs`, `entity_addr_t target`,
//! `s64 gid`, `u64 global_seq`, `u64 supported`, `u64 required`, `u64 flags`, `u64
//! client_cookie`.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::{EntityAddr, EntityAddrVec, Features};

use super::{ControlFrame, Tag, FRAME_ADDR_FEATURES, IDENT_FLAG_LOSSY};

/// The connector opens a new session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdent {
    /// The connector's own addresses.
    pub addrs: EntityAddrVec,
    /// The address it dialled; must be one of the acceptor's.
    pub target_addr: EntityAddr,
    /// Its entity number (-1 for a client without a global id yet).
    pub gid: i64,
    /// Its messenger's counter for this attempt.
    pub global_seq: u64,
    /// Ceph features it supports.
    pub supported_features: Features,
    /// Ceph features it requires (always with MSG_ADDR2).
    pub required_features: Features,
    /// [`IDENT_FLAG_LOSSY`] for a lossy policy.
    pub flags: u64,
    /// Random non-zero for a lossless session, 0 for a lossy one.
    pub client_cookie: u64,
}

impl ClientIdent {
    /// Whether the connector's policy is lossy.
    pub fn is_lossy(&self) -> bool {
        self.flags & IDENT_FLAG_LOSSY != 0
    }
}

impl ControlFrame for ClientIdent {
    const TAG: Tag = Tag::CLIENT_IDENT;

    fn encode(&self, e: &mut Encoder) {
        self.addrs.encode(e, FRAME_ADDR_FEATURES);
        self.target_addr.encode(e, FRAME_ADDR_FEATURES);
        e.i64(self.gid)
            .u64(self.global_seq)
            .u64(self.supported_features.0)
            .u64(self.required_features.0)
            .u64(self.flags)
            .u64(self.client_cookie);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(ClientIdent {
            addrs: EntityAddrVec::decode(d)?,
            target_addr: EntityAddr::decode(d)?,
            gid: d.i64()?,
            global_seq: d.u64()?,
            supported_features: Features(d.u64()?),
            required_features: Features(d.u64()?),
            flags: d.u64()?,
            client_cookie: d.u64()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;
    use crate::types::AddrType;

    // msgr-v2.md 9: the real CLI's CLIENT_IDENT (123 bytes).
    #[test]
    fn golden_cli_client_ident() {
        let b = hex("02 01000000 | 01 01011c000000 | 03000000 a981598e 10000000 | 0200 0000 \
                     7f000001 0000000000000000 \
                     01 01011c000000 | 02000000 00000000 10000000 | 0200 e573 7f000001 \
                     0000000000000000 \
                     ffffffffffffffff | 0100000000000000 | ffff fdff bdcf 013f | \
                     0000000000000008 | 0000000000000000 | 5eac625c3cb72474");
        assert_eq!(b.len(), 123);
        let f = ClientIdent::from_segment(&b).unwrap();
        assert_eq!(f.addrs.addrs[0].ty, AddrType::ANY);
        assert_eq!(f.addrs.addrs[0].nonce, 0x8e59_81a9);
        assert_eq!(f.target_addr.port(), 58739);
        assert_eq!((f.gid, f.global_seq), (-1, 1));
        assert_eq!(f.supported_features, Features::PACIFIC_ADVERTISED);
        assert_eq!(f.required_features, Features::MSG_ADDR2);
        assert!(!f.is_lossy());
        assert_eq!(f.client_cookie, 0x7424_b73c_5c62_ac5e);
        assert_eq!(&f.to_segment()[..], &b[..]);
    }
}
