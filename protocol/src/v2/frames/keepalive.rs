//! KEEPALIVE2 (tag 18) and KEEPALIVE2_ACK (tag 19), both directions: a `utime_t`
//! (`u32 sec`, `u32 nsec`); the ack echoes the keepalive's stamp.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::wire::KeepaliveStamp;

use super::{ControlFrame, Tag};

/// A keepalive carrying the sender's wall clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive2 {
    /// The sender's clock.
    pub stamp: KeepaliveStamp,
}

/// The answer to a [`Keepalive2`], echoing its stamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keepalive2Ack {
    /// The stamp of the keepalive answered.
    pub stamp: KeepaliveStamp,
}

impl ControlFrame for Keepalive2 {
    const TAG: Tag = Tag::KEEPALIVE2;

    fn encode(&self, e: &mut Encoder) {
        e.utime(self.stamp);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Keepalive2 { stamp: d.utime()? })
    }
}

impl ControlFrame for Keepalive2Ack {
    const TAG: Tag = Tag::KEEPALIVE2_ACK;

    fn encode(&self, e: &mut Encoder) {
        e.utime(self.stamp);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Keepalive2Ack { stamp: d.utime()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stamp_layout() {
        let stamp = KeepaliveStamp { sec: 0x6b01_e722, nsec: 0x1c78_b0c7 };
        let b = Keepalive2 { stamp }.to_segment();
        assert_eq!(&b[..], &[0x22, 0xe7, 0x01, 0x6b, 0xc7, 0xb0, 0x78, 0x1c]);
        assert_eq!(Keepalive2Ack::from_segment(&b).unwrap().stamp, stamp);
        assert!(Keepalive2::from_segment(&b[..7]).is_err());
    }
}
