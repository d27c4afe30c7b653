//! ACK (tag 20, both directions): `u64 seq`, the highest message seq received in order.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

#[doc = "ACK (tag 20, both directions): `u64 seq`, the highest message seq received in order."]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// Highest seq received.
    pub seq: u64,
}

impl ControlFrame for Ack {
    const TAG: Tag = Tag::ACK;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.seq);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Ack { seq: d.u64()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_little_endian() {
        let f = Ack { seq: 0x0102_0304_0506_0708 };
        let b = f.to_segment();
        assert_eq!(&b[..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Ack::from_segment(&b).unwrap(), f);
        assert!(Ack::from_segment(&b[..7]).is_err());
    }
}
