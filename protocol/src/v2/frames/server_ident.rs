//! SERVER_IDENT (tag 9, acceptor): `entity_addrvec_t addrs`, `s64 gid`, `u64
//! global_seq`, `u64 supported`, `u64 required`, `u64 flags`, `u64 server_cookie`.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::{EntityAddrVec, Features};

use super::{ControlFrame, Tag, FRAME_ADDR_FEATURES, IDENT_FLAG_LOSSY};

/// The acceptor accepted a new session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdent {
    /// All the acceptor's bound addresses.
    pub addrs: EntityAddrVec,
    /// Its entity number.
    pub gid: i64,
    /// Its messenger's counter.
    pub global_seq: u64,
    /// Ceph features it supports.
    pub supported_features: Features,
    /// Ceph features it requires.
    pub required_features: Features,
    /// [`IDENT_FLAG_LOSSY`] when the acceptor's policy for us is lossy.
    pub flags: u64,
    /// Random non-zero for a lossless session, 0 for a lossy one.
    pub server_cookie: u64,
}

impl ServerIdent {
    /// Whether the session is lossy (the acceptor decides).
    pub fn is_lossy(&self) -> bool {
        self.flags & IDENT_FLAG_LOSSY != 0
    }
}

impl ControlFrame for ServerIdent {
    const TAG: Tag = Tag::SERVER_IDENT;

    fn encode(&self, e: &mut Encoder) {
        self.addrs.encode(e, FRAME_ADDR_FEATURES);
        e.i64(self.gid)
            .u64(self.global_seq)
            .u64(self.supported_features.0)
            .u64(self.required_features.0)
            .u64(self.flags)
            .u64(self.server_cookie);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(ServerIdent {
            addrs: EntityAddrVec::decode(d)?,
            gid: d.i64()?,
            global_seq: d.u64()?,
            supported_features: Features(d.u64()?),
            required_features: Features(d.u64()?),
            flags: d.u64()?,
            server_cookie: d.u64()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;
    use crate::types::AddrType;

    /// msgr-v2.md 5.7: the monitor's SERVER_IDENT payload (123 bytes).
    fn golden_payload() -> Vec<u8> {
        hex("02 | 02 00 00 00 \
             01 | 01 01 1c 00 00 00 | 02 00 00 00 | 00 00 00 00 | 10 00 00 00 | 02 00 9c 0b \
             7f 00 00 01 00 00 00 00 00 00 00 00 \
             01 | 01 01 1c 00 00 00 | 01 00 00 00 | 00 00 00 00 | 10 00 00 00 | 02 00 9c 05 \
             7f 00 00 01 00 00 00 00 00 00 00 00 \
             00 00 00 00 00 00 00 00 06 00 00 00 00 00 00 00 ff ff fd ff bd cf 01 3f \
             00 00 04 02 00 02 01 0c 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")
    }

    #[test]
    fn golden_monitor_server_ident() {
        let b = golden_payload();
        assert_eq!(b.len(), 123);
        let f = ServerIdent::from_segment(&b).unwrap();
        assert_eq!(f.addrs.addrs.len(), 2);
        assert_eq!(f.addrs.addrs[0].ty, AddrType::MSGR2);
        assert_eq!(f.addrs.addrs[0].port(), 39947);
        assert_eq!(f.addrs.addrs[1].ty, AddrType::LEGACY);
        assert_eq!((f.gid, f.global_seq), (0, 6));
        assert_eq!(f.supported_features, Features::PACIFIC_ADVERTISED);
        assert_eq!(f.required_features.0, 0x0c01_0200_0204_0000);
        assert!(f.is_lossy());
        assert_eq!(f.server_cookie, 0);
        assert_eq!(&f.to_segment()[..], &b[..]);
    }
}
