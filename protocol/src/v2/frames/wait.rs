//! WAIT (tag 16, acceptor): empty; the connector lost a connection race.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

/// The acceptor's own connection to us will carry the session: back off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wait;

impl ControlFrame for Wait {
    const TAG: Tag = Tag::WAIT;

    fn encode(&self, _e: &mut Encoder) {}

    fn decode(_d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // msgr-v2.md 3.2: WAIT is a bare 32-byte preamble.
    #[test]
    fn empty_payload() {
        assert!(Wait.to_segment().is_empty());
        assert_eq!(Wait::from_segment(&[]), Ok(Wait));
        assert!(Wait::from_segment(&[0]).is_err());
    }
}
