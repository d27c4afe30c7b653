//! SESSION_RETRY_GLOBAL (tag 14, acceptor): `u64 global_seq`; the connector retries above it.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

#[doc = "SESSION_RETRY_GLOBAL (tag 14, acceptor): `u64 global_seq`; the connector retries above it."]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRetryGlobal {
    /// The highest global_seq the acceptor saw from the connector.
    pub global_seq: u64,
}

impl ControlFrame for SessionRetryGlobal {
    const TAG: Tag = Tag::SESSION_RETRY_GLOBAL;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.global_seq);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SessionRetryGlobal { global_seq: d.u64()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_little_endian() {
        let f = SessionRetryGlobal { global_seq: 0x0102_0304_0506_0708 };
        let b = f.to_segment();
        assert_eq!(&b[..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(SessionRetryGlobal::from_segment(&b).unwrap(), f);
        assert!(SessionRetryGlobal::from_segment(&b[..7]).is_err());
    }
}
