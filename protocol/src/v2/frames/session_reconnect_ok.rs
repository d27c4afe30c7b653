//! SESSION_RECONNECT_OK (tag 15, acceptor): `u64 msg_seq`, the acceptor's in_seq.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

#[doc = "SESSION_RECONNECT_OK (tag 15, acceptor): `u64 msg_seq`, the acceptor's in_seq."]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionReconnectOk {
    /// The acceptor's in_seq: the connector drops requeued messages up to it.
    pub msg_seq: u64,
}

impl ControlFrame for SessionReconnectOk {
    const TAG: Tag = Tag::SESSION_RECONNECT_OK;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.msg_seq);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SessionReconnectOk { msg_seq: d.u64()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_little_endian() {
        let f = SessionReconnectOk { msg_seq: 0x0102_0304_0506_0708 };
        let b = f.to_segment();
        assert_eq!(&b[..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(SessionReconnectOk::from_segment(&b).unwrap(), f);
        assert!(SessionReconnectOk::from_segment(&b[..7]).is_err());
    }
}
