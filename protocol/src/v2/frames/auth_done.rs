//! AUTH_DONE (tag 6, acceptor): `u64 global_id`, `u32 con_mode`, `bufferlist
//! auth_payload`.

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{decode_blob, ConMode, ControlFrame, Tag};

/// Authentication finished; the frames after this one use `con_mode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthDone {
    /// The connector's global id (assigned by a monitor).
    pub global_id: u64,
    /// The chosen connection mode.
    pub con_mode: ConMode,
    /// The method's final payload (cephx: tickets and the connection secret).
    pub payload: Bytes,
}

impl ControlFrame for AuthDone {
    const TAG: Tag = Tag::AUTH_DONE;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.global_id).u32(self.con_mode.0).blob(&self.payload);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthDone { global_id: d.u64()?, con_mode: ConMode(d.u32()?), payload: decode_blob(d)? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;

    // msgr-v2.md 5.3: auth none, global_id 4099, crc, empty payload (16 bytes).
    #[test]
    fn golden_auth_none_done() {
        let b = hex("03 10 00 00 00 00 00 00 | 01 00 00 00 | 00 00 00 00");
        let f = AuthDone::from_segment(&b).unwrap();
        assert_eq!((f.global_id, f.con_mode, f.payload.len()), (4099, ConMode::CRC, 0));
        assert_eq!(&f.to_segment()[..], &b[..]);
    }
}
