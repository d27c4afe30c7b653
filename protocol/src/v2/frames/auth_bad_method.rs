//! AUTH_BAD_METHOD (tag 3, acceptor): `u32 method`, `s32 result`, `u32[] allowed
//! methods`, `u32[] allowed modes`.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{decode_modes, decode_u32s, encode_modes, encode_u32s, ConMode, ControlFrame, Tag};

/// The acceptor refused the method (or the mode, or the credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthBadMethod {
    /// The refused method.
    pub method: u32,
    /// A negative errno (-95 EOPNOTSUPP, -13 EACCES).
    pub result: i32,
    /// Methods the acceptor allows for our entity type.
    pub allowed_methods: Vec<u32>,
    /// Its (unfiltered) modes for our entity type.
    pub allowed_modes: Vec<ConMode>,
}

impl ControlFrame for AuthBadMethod {
    const TAG: Tag = Tag::AUTH_BAD_METHOD;

    fn encode(&self, e: &mut Encoder) {
        e.u32(self.method).i32(self.result);
        encode_u32s(e, &self.allowed_methods);
        encode_modes(e, &self.allowed_modes);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthBadMethod {
            method: d.u32()?,
            result: d.i32()?,
            allowed_methods: decode_u32s(d)?,
            allowed_modes: decode_modes(d)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // msgr-v2.md 5.2: an auth-none request for secure mode → -95, modes [2, 1].
    #[test]
    fn round_trip_as_the_monitor_sends_it() {
        let f = AuthBadMethod {
            method: 1,
            result: -95,
            allowed_methods: vec![1],
            allowed_modes: vec![ConMode::SECURE, ConMode::CRC],
        };
        let b = f.to_segment();
        assert_eq!(&b[..8], &[1, 0, 0, 0, 0xa1, 0xff, 0xff, 0xff]);
        assert_eq!(b.len(), 4 + 4 + 8 + 12);
        assert_eq!(AuthBadMethod::from_segment(&b).unwrap(), f);
    }
}
