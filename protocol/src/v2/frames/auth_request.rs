//! AUTH_REQUEST (tag 2, connector): `u32 method`, `u32[] preferred_modes`,
//! `bufferlist auth_payload`.

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{decode_blob, decode_modes, encode_modes, ConMode, ControlFrame, Tag};

/// The connector's first auth frame (also sent again after AUTH_BAD_METHOD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequest {
    /// `CEPH_AUTH_*`.
    pub method: u32,
    /// Connection modes in preference order.
    pub preferred_modes: Vec<ConMode>,
    /// The method's payload (for a monitor: auth mode 10, name, global id).
    pub payload: Bytes,
}

impl ControlFrame for AuthRequest {
    const TAG: Tag = Tag::AUTH_REQUEST;

    fn encode(&self, e: &mut Encoder) {
        e.u32(self.method);
        encode_modes(e, &self.preferred_modes);
        e.blob(&self.payload);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthRequest {
            method: d.u32()?,
            preferred_modes: decode_modes(d)?,
            payload: decode_blob(d)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;

    // msgr-v2.md 9: the CLI's AUTH_REQUEST (none, crc) with the client.admin payload.
    #[test]
    fn golden_cli_auth_request() {
        let b = hex("01000000 01000000 01000000 16000000 0a 08000000 05000000 61646d696e \
                     0000000000000000");
        let r = AuthRequest::from_segment(&b).unwrap();
        assert_eq!(r.method, 1);
        assert_eq!(r.preferred_modes, [ConMode::CRC]);
        assert_eq!(r.payload.len(), 22);
        assert_eq!(&r.to_segment()[..], &b[..]);
        // A mode count larger than the input is refused before allocating.
        assert!(AuthRequest::from_segment(&hex("01000000 ffffffff")).is_err());
    }
}
