//! AUTH_REQUEST_MORE (tag 5, connector): `bufferlist auth_payload`.

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{decode_blob, ControlFrame, Tag};

/// The connector's answer to AUTH_REPLY_MORE (cephx: the proof).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthRequestMore {
    /// The method's payload.
    pub payload: Bytes,
}

impl ControlFrame for AuthRequestMore {
    const TAG: Tag = Tag::AUTH_REQUEST_MORE;

    fn encode(&self, e: &mut Encoder) {
        e.blob(&self.payload);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthRequestMore { payload: decode_blob(d)? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let f = AuthRequestMore { payload: Bytes::from_static(b"proof") };
        let b = f.to_segment();
        assert_eq!(AuthRequestMore::from_segment(&b).unwrap(), f);
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(AuthRequestMore::from_segment(&longer).is_err());
    }
}
