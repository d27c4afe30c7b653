//! SESSION_RETRY (tag 13, acceptor): `u64 connect_seq`; the connector retries with this + 1.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

#[doc = "SESSION_RETRY (tag 13, acceptor): `u64 connect_seq`; the connector retries with this + 1."]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionRetry {
    /// The acceptor's connect_seq for the session.
    pub connect_seq: u64,
}

impl ControlFrame for SessionRetry {
    const TAG: Tag = Tag::SESSION_RETRY;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.connect_seq);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SessionRetry { connect_seq: d.u64()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_little_endian() {
        let f = SessionRetry { connect_seq: 0x0102_0304_0506_0708 };
        let b = f.to_segment();
        assert_eq!(&b[..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(SessionRetry::from_segment(&b).unwrap(), f);
        assert!(SessionRetry::from_segment(&b[..7]).is_err());
    }
}
