//! AUTH_SIGNATURE (tag 7, both directions): 32 bytes, the HMAC-SHA256 of the pre-auth
//! transcript under the session key, or zeros without one (msgr-v2.md 5.5).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

use super::{ControlFrame, Tag};

/// Length of the signature.
pub const SIGNATURE_LEN: usize = 32;

/// Each side's proof that it saw the same banners, HELLOs and auth frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthSignature {
    /// `HMAC-SHA256(session_key, transcript)`, or zeros.
    pub hmac: [u8; SIGNATURE_LEN],
}

impl AuthSignature {
    /// The signature over `transcript`: HMAC-SHA256 keyed with the session key's secret,
    /// or 32 zero bytes when the method produced no session key (auth none).
    pub fn compute(session_key: Option<&[u8]>, transcript: &[u8]) -> AuthSignature {
        let Some(key) = session_key.filter(|k| !k.is_empty()) else {
            return AuthSignature::default();
        };
        // HMAC accepts keys of any length; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return AuthSignature::default();
        };
        mac.update(transcript);
        let mut hmac = [0u8; SIGNATURE_LEN];
        hmac.copy_from_slice(&mac.finalize().into_bytes());
        AuthSignature { hmac }
    }
}

impl ControlFrame for AuthSignature {
    const TAG: Tag = Tag::AUTH_SIGNATURE;

    fn encode(&self, e: &mut Encoder) {
        e.bytes(&self.hmac);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthSignature { hmac: d.array()? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;

    #[test]
    fn zeros_without_a_session_key() {
        assert_eq!(AuthSignature::compute(None, b"anything").hmac, [0; 32]);
        assert_eq!(AuthSignature::compute(Some(&[]), b"anything").hmac, [0; 32]);
        let b = AuthSignature::default().to_segment();
        assert_eq!(&b[..], &[0; 32]);
        assert!(AuthSignature::from_segment(&b[..31]).is_err());
    }

    // RFC 4231 test case 2 (HMAC-SHA256, key "Jefe"): the primitive is the standard one.
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let sig = AuthSignature::compute(Some(b"Jefe"), b"what do ya want for nothing?");
        let want = hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(&sig.hmac[..], &want[..]);
    }
}
