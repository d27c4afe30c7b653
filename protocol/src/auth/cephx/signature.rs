//! msgr v1 message signatures (cephx.md 8): pure functions over the header and footer
//! fields that are on the wire.

use subtle::ConstantTimeEq;

use crate::auth::crypto::{xor_fold_u64, CryptoKey, AUTH_ENC_MAGIC};
use crate::auth::error::AuthError;
use crate::auth::SessionHandler;
use crate::types::Features;
use crate::wire::{FooterFlags, MsgFooter, MsgHeader};

/// Which signature a session computes: decided by the connection's negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// CEPHX_V2 (bit 61) negotiated: the Pacific scheme over 8 fields.
    CephxV2,
    /// Older peers: the encrypted envelope of the four crcs.
    Legacy,
}

impl SignatureScheme {
    /// The scheme for a connection's negotiated features.
    pub fn for_features(features: Features) -> Self {
        if features.contains(Features::CEPHX_V2) {
            SignatureScheme::CephxV2
        } else {
            SignatureScheme::Legacy
        }
    }
}

/// The fields a signature covers, as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignedFields {
    /// The header crc on the wire.
    pub header_crc: u32,
    /// Footer front crc.
    pub front_crc: u32,
    /// Header front length.
    pub front_len: u32,
    /// Footer middle crc.
    pub middle_crc: u32,
    /// Header middle length.
    pub middle_len: u32,
    /// Footer data crc.
    pub data_crc: u32,
    /// Header data length.
    pub data_len: u32,
    /// Header seq.
    pub seq: u64,
}

impl SignedFields {
    /// The fields of a framed message.
    pub fn of(header: &MsgHeader, footer: &MsgFooter) -> Self {
        SignedFields {
            header_crc: header.crc,
            front_crc: footer.front_crc,
            front_len: header.front_len,
            middle_crc: footer.middle_crc,
            middle_len: header.middle_len,
            data_crc: footer.data_crc,
            data_len: header.data_len,
            seq: header.seq,
        }
    }
}

/// The 64-bit signature of a message (Ceph's `CephxSessionHandler::_calc_signature`).
#[doc(alias = "_calc_signature")]
pub fn message_signature(key: &CryptoKey, scheme: SignatureScheme, f: &SignedFields) -> u64 {
    match scheme {
        SignatureScheme::CephxV2 => {
            let mut block = [0u8; 32];
            // Ceph signs the low 32 bits of seq.
            let seq_lo = (f.seq & u64::from(u32::MAX)) as u32;
            let words = [
                f.header_crc,
                f.front_crc,
                f.front_len,
                f.middle_crc,
                f.middle_len,
                f.data_crc,
                f.data_len,
                seq_lo,
            ];
            for (chunk, w) in block.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            let ct = key.encrypt(&block);
            // The 48-byte ciphertext's padding block is not part of the fold.
            xor_fold_u64(ct.get(..32).unwrap_or(&ct))
        }
        SignatureScheme::Legacy => {
            let mut block = Vec::with_capacity(29);
            block.push(1);
            block.extend_from_slice(&AUTH_ENC_MAGIC.to_le_bytes());
            block.extend_from_slice(&16u32.to_le_bytes());
            for w in [f.header_crc, f.front_crc, f.middle_crc, f.data_crc] {
                block.extend_from_slice(&w.to_le_bytes());
            }
            let ct = key.encrypt(&block);
            xor_fold_u64(ct.get(..8).unwrap_or(&ct))
        }
    }
}

/// Signs and checks the messages of one v1 session with its cephx session key (Ceph's
/// `CephxSessionHandler`). Exists only for sessions whose authorizer was verified and
/// that negotiated `MSG_AUTH` (the 21-byte footer has room for the signature).
#[derive(Clone, Debug)]
pub struct MessageSigner {
    key: CryptoKey,
    scheme: SignatureScheme,
}

impl MessageSigner {
    /// The signer of a session, or `None` when nothing is signed on it: signing off
    /// (`cephx_sign_messages = false`) or `MSG_AUTH` not negotiated.
    pub fn for_session(key: CryptoKey, features: Features, sign_messages: bool) -> Option<Self> {
        (sign_messages && features.contains(Features::MSG_AUTH))
            .then(|| MessageSigner { key, scheme: SignatureScheme::for_features(features) })
    }

    /// The scheme in use.
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// Writes the signature into `footer` and sets `SIGNED`; call after the crcs are in
    /// the header and footer.
    #[doc(alias = "sign_message")]
    pub fn sign(&self, header: &MsgHeader, footer: &mut MsgFooter) {
        footer.sig = message_signature(&self.key, self.scheme, &SignedFields::of(header, footer));
        footer.flags = footer.flags | FooterFlags::SIGNED;
    }

    /// Checks a received message's signature (constant-time). As in Ceph, only the
    /// value counts; a missing `SIGNED` flag just names the failure.
    #[doc(alias = "check_message_signature")]
    pub fn check(&self, header: &MsgHeader, footer: &MsgFooter) -> Result<(), AuthError> {
        let want = message_signature(&self.key, self.scheme, &SignedFields::of(header, footer));
        if bool::from(want.to_le_bytes().ct_eq(&footer.sig.to_le_bytes())) {
            return Ok(());
        }
        if footer.flags.contains(FooterFlags::SIGNED) {
            Err(AuthError::BadSignature { seq: header.seq })
        } else {
            Err(AuthError::MissingSignature { seq: header.seq })
        }
    }
}

impl SessionHandler for MessageSigner {
    fn sign(&self, header: &MsgHeader, footer: &mut MsgFooter) {
        MessageSigner::sign(self, header, footer);
    }

    fn check(&self, header: &MsgHeader, footer: &MsgFooter) -> Result<(), AuthError> {
        MessageSigner::check(self, header, footer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::cephx::testing::key_k;

    fn vector_fields() -> SignedFields {
        SignedFields {
            header_crc: 0x1111_1111,
            front_crc: 0x2222_2222,
            front_len: 60,
            seq: 5,
            ..SignedFields::default()
        }
    }

    #[test]
    fn signature_vectors_of_cephx_md_11() {
        let k = key_k();
        assert_eq!(
            message_signature(&k, SignatureScheme::CephxV2, &vector_fields()),
            0x72e2_3720_1b85_e551
        );
        assert_eq!(
            message_signature(&k, SignatureScheme::Legacy, &vector_fields()),
            0xef0e_ef48_08b5_2ead
        );
    }

    #[test]
    fn signer_signs_checks_and_names_failures() {
        let features = Features::PACIFIC_ADVERTISED;
        let signer = MessageSigner::for_session(key_k(), features, true).unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::CephxV2);
        let header = MsgHeader { seq: 5, front_len: 60, crc: 0x1111_1111, ..MsgHeader::default() };
        let mut footer = MsgFooter {
            front_crc: 0x2222_2222,
            flags: FooterFlags::COMPLETE,
            ..MsgFooter::default()
        };
        signer.sign(&header, &mut footer);
        assert_eq!(footer.sig, 0x72e2_3720_1b85_e551);
        assert_eq!(footer.flags, FooterFlags(5));
        signer.check(&header, &footer).unwrap();
        // Tampering with any covered field breaks it.
        let mut h2 = header;
        h2.front_len = 61;
        assert_eq!(signer.check(&h2, &footer), Err(AuthError::BadSignature { seq: 5 }));
        let mut f2 = footer;
        f2.data_crc = 1;
        assert!(signer.check(&header, &f2).is_err());
        let unsigned = MsgFooter {
            front_crc: 0x2222_2222,
            flags: FooterFlags::COMPLETE,
            ..MsgFooter::default()
        };
        assert_eq!(signer.check(&header, &unsigned), Err(AuthError::MissingSignature { seq: 5 }));
        // A correct signature without the SIGNED flag passes (as a 16.2.15 OSD does).
        let mut no_flag = footer;
        no_flag.flags = FooterFlags::COMPLETE;
        signer.check(&header, &no_flag).unwrap();
        // No signer without MSG_AUTH or with signing off.
        let no_msg_auth = Features(features.0 & !Features::MSG_AUTH.0);
        assert!(MessageSigner::for_session(key_k(), no_msg_auth, true).is_none());
        assert!(MessageSigner::for_session(key_k(), features, false).is_none());
        let legacy = Features(features.0 & !Features::CEPHX_V2.0);
        let s = MessageSigner::for_session(key_k(), legacy, true).unwrap();
        assert_eq!(s.scheme(), SignatureScheme::Legacy);
    }
}
