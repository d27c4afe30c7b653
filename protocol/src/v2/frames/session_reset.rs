//! SESSION_RESET (tag 12, acceptor): `u8 full` (bool).

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

/// The acceptor has no session to resume: the connector sends CLIENT_IDENT on the same
/// connection; `full` also discards its queues, seqs and cookies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionReset {
    /// Reset the whole session (else only server cookie, connect_seq and in_seq).
    pub full: bool,
}

impl ControlFrame for SessionReset {
    const TAG: Tag = Tag::SESSION_RESET;

    fn encode(&self, e: &mut Encoder) {
        e.bool(self.full);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SessionReset { full: d.bool()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_bool() {
        assert_eq!(&SessionReset { full: true }.to_segment()[..], &[1]);
        assert!(!SessionReset::from_segment(&[0]).unwrap().full);
        assert!(SessionReset::from_segment(&[]).is_err());
    }
}
