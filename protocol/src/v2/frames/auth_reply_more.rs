//! AUTH_REPLY_MORE (tag 4, acceptor): `bufferlist auth_payload`.

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{decode_blob, ControlFrame, Tag};

/// Another auth round (cephx: the server challenge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthReplyMore {
    /// The method's payload.
    pub payload: Bytes,
}

impl ControlFrame for AuthReplyMore {
    const TAG: Tag = Tag::AUTH_REPLY_MORE;

    fn encode(&self, e: &mut Encoder) {
        e.blob(&self.payload);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthReplyMore { payload: decode_blob(d)? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // msgr-v2.md 5.3: the cephx server challenge is a 9-byte payload.
    #[test]
    fn round_trip() {
        let f = AuthReplyMore { payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8, 9]) };
        let b = f.to_segment();
        assert_eq!(&b[..4], &[9, 0, 0, 0]);
        assert_eq!(AuthReplyMore::from_segment(&b).unwrap(), f);
        assert!(AuthReplyMore::from_segment(&b[..12]).is_err());
    }
}
