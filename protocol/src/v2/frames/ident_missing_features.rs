//! IDENT_MISSING_FEATURES (tag 10, acceptor): `u64` the Ceph feature bits the connector lacks.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

#[doc = "IDENT_MISSING_FEATURES (tag 10, acceptor): `u64` the Ceph feature bits the connector lacks."]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentMissingFeatures {
    /// The missing feature bits.
    pub missing_features: u64,
}

impl ControlFrame for IdentMissingFeatures {
    const TAG: Tag = Tag::IDENT_MISSING_FEATURES;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.missing_features);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(IdentMissingFeatures { missing_features: d.u64()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_little_endian() {
        let f = IdentMissingFeatures { missing_features: 0x0102_0304_0506_0708 };
        let b = f.to_segment();
        assert_eq!(&b[..], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(IdentMissingFeatures::from_segment(&b).unwrap(), f);
        assert!(IdentMissingFeatures::from_segment(&b[..7]).is_err());
    }
}
