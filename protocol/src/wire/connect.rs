//! `struct ceph_msg_connect` (connector → acceptor, 33 bytes) + authorizer.

use crate::encoding::Decoder;
use crate::error::{Error, Result};
use crate::types::{EntityType, Features};
use crate::wire::{exact, need};

/// `CEPH_MSG_CONNECT_LOSSY`: flag bit of connect and connect_reply.
pub const CONNECT_LOSSY: u8 = 1;

/// Largest authorizer (or authorizer reply) we accept.
///
/// Ceph reads whatever `authorizer_len` says; cephx authorizers are a few hundred bytes,
/// so 64 KiB is generous while bounding what one connect can make us buffer.
pub const MAX_AUTHORIZER_LEN: usize = 64 * 1024;

/// `ceph_msg_connect`; the `authorizer_len` bytes of authorizer follow it on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectMsg {
    /// Feature bits the connector supports.
    pub features: Features,
    /// The connector's entity type (a `u32` on the wire).
    pub host_type: EntityType,
    /// The connector's per-process connection attempt counter.
    pub global_seq: u32,
    /// Successful connects in this session (0 for a new session).
    pub connect_seq: u32,
    /// See [`crate::types::proto_version`].
    pub protocol_version: u32,
    /// `CEPH_AUTH_*` of the authorizer, 0 if none.
    pub authorizer_protocol: u32,
    /// Bytes of authorizer following the struct.
    pub authorizer_len: u32,
    /// [`CONNECT_LOSSY`] or 0.
    pub flags: u8,
}

impl ConnectMsg {
    /// Encoded size without the authorizer.
    pub const LEN: usize = 33;

    /// True if the connector asked for a lossy session.
    pub fn is_lossy(&self) -> bool {
        self.flags & CONNECT_LOSSY != 0
    }

    /// The 33-byte struct (the authorizer is written separately).
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..8].copy_from_slice(&self.features.0.to_le_bytes());
        out[8..12].copy_from_slice(&u32::from(self.host_type.0).to_le_bytes());
        out[12..16].copy_from_slice(&self.global_seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.connect_seq.to_le_bytes());
        out[20..24].copy_from_slice(&self.protocol_version.to_le_bytes());
        out[24..28].copy_from_slice(&self.authorizer_protocol.to_le_bytes());
        out[28..32].copy_from_slice(&self.authorizer_len.to_le_bytes());
        out[32] = self.flags;
        out
    }

    /// Appends the struct and `authorizer` (whose length replaces `authorizer_len`).
    pub fn encode_with_authorizer(&self, authorizer: &[u8], out: &mut Vec<u8>) {
        let msg = ConnectMsg {
            authorizer_len: u32::try_from(authorizer.len()).unwrap_or(u32::MAX),
            ..*self
        };
        out.extend_from_slice(&msg.to_bytes());
        out.extend_from_slice(authorizer);
    }

    /// Decodes the 33-byte struct from the start of `input`.
    ///
    /// A `host_type` above 255 is not an entity type and is rejected as malformed.
    pub fn decode(input: &[u8]) -> Result<(Self, usize)> {
        need(input, Self::LEN)?;
        let mut d = Decoder::new(&input[..Self::LEN]);
        let features = Features(d.u64()?);
        let host_type = EntityType::from_u32(d.u32()?)
            .ok_or(Error::Malformed("connect host_type is not an entity type"))?;
        let msg = ConnectMsg {
            features,
            host_type,
            global_seq: d.u32()?,
            connect_seq: d.u32()?,
            protocol_version: d.u32()?,
            authorizer_protocol: d.u32()?,
            authorizer_len: d.u32()?,
            flags: d.u8()?,
        };
        Ok((msg, Self::LEN))
    }

    /// Decodes the struct and its authorizer; `authorizer_len` is checked against
    /// `max_authorizer` before anything else. Returns the authorizer (borrowed) and the
    /// bytes consumed.
    pub fn decode_with_authorizer(
        input: &[u8],
        max_authorizer: usize,
    ) -> Result<(Self, &[u8], usize)> {
        let (msg, at) = Self::decode(input)?;
        let len = msg.authorizer_len as usize;
        if len > max_authorizer {
            return Err(Error::TooLarge {
                what: "connect authorizer",
                len: len as u64,
                limit: max_authorizer as u64,
            });
        }
        need(input, at + len)?;
        Ok((msg, &input[at..at + len], at + len))
    }

    /// Like [`ConnectMsg::decode`] but `input` must be exactly the 33 bytes.
    pub fn decode_exact(input: &[u8]) -> Result<Self> {
        exact(input, Self::decode(input)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// msgr-v1.md 8.1: the real client's connect to a monitor.
    const GOLDEN: [u8; 33] = [
        0xff, 0xff, 0xfd, 0xff, 0xbd, 0xcf, 0x01, 0x3f, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x0f,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];

    #[test]
    fn golden_connect() {
        let c = ConnectMsg {
            features: Features::PACIFIC_ADVERTISED,
            host_type: EntityType::CLIENT,
            global_seq: 1,
            connect_seq: 0,
            protocol_version: 15,
            authorizer_protocol: 0,
            authorizer_len: 0,
            flags: CONNECT_LOSSY,
        };
        assert_eq!(c.to_bytes(), GOLDEN);
        assert_eq!(ConnectMsg::decode_exact(&GOLDEN).unwrap(), c);
        assert!(c.is_lossy());
    }

    #[test]
    fn authorizer_is_bounded_and_round_trips() {
        let c =
            ConnectMsg { host_type: EntityType::MON, authorizer_protocol: 1, ..Default::default() };
        let mut out = Vec::new();
        c.encode_with_authorizer(b"auth!", &mut out);
        let (got, auth, used) = ConnectMsg::decode_with_authorizer(&out, 16).unwrap();
        assert_eq!((got.authorizer_len, auth, used), (5, &b"auth!"[..], 38));
        assert!(matches!(ConnectMsg::decode_with_authorizer(&out, 4), Err(Error::TooLarge { .. })));
        assert!(matches!(
            ConnectMsg::decode_with_authorizer(&out[..37], 16),
            Err(Error::Truncated { .. })
        ));
        let mut bad = GOLDEN;
        bad[9] = 1; // host_type 0x108
        assert!(matches!(ConnectMsg::decode(&bad), Err(Error::Malformed(_))));
    }
}
