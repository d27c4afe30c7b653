//! `CryptoKey` and cephx's encryption envelope (cephx.md sections 1.2, 2.1, 2.2).
//!
//! Every cephx encryption is AES-128-CBC with the constant IV `cephsageyudagreg` and
//! PKCS#7 padding. The cipher comes from RustCrypto's `aes` and `cbc` crates; nothing
//! here implements a cipher.
//!
//! The envelope (`encode_encrypt_enc_bl`) prepends `u8 1` and the 64-bit magic
//! `0xff009cad8826aa55` to the plaintext; a wrong key shows up as a bad magic after
//! decryption, which is how cephx detects it.

use std::fmt;

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

use super::error::AuthError;
use crate::encoding::{Decoder, Encoder, UTime};

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// The constant CBC initialisation vector of every cephx encryption (`CEPH_AES_IV`).
pub const CEPH_AES_IV: [u8; 16] = *b"cephsageyudagreg";
/// The magic after the envelope's version byte (`AUTH_ENC_MAGIC`).
pub const AUTH_ENC_MAGIC: u64 = 0xff00_9cad_8826_aa55;
/// The envelope's version byte.
const ENVELOPE_V: u8 = 1;
/// AES block size: ciphertexts are a non-zero multiple of it.
const AES_BLOCK: usize = 16;
/// AES-128 key length (`AES_KEY_LEN`).
pub const AES_KEY_LEN: usize = 16;

/// `CEPH_CRYPTO_*`: the key's algorithm. A newtype so unknown values still decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CryptoType(pub u16);

impl CryptoType {
    /// `CEPH_CRYPTO_NONE`: no key.
    pub const NONE: CryptoType = CryptoType(0);
    /// `CEPH_CRYPTO_AES`: AES-128-CBC (every cephx key in practice).
    pub const AES: CryptoType = CryptoType(1);
}

/// A cephx secret: `CryptoKey` (cephx.md 1.2). Only AES keys exist in cephx.
///
/// Encoded as `le16 type`, `utime_t created`, `le16 len`, `len` bytes; the keyring's
/// `key = AQ…` is the base64 of that encoding. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoKey {
    /// When the key was made (informational; not used by the cipher).
    pub created: UTime,
    secret: [u8; AES_KEY_LEN],
}

impl CryptoKey {
    /// Encoded size of an AES key: 2 + 8 + 2 + 16.
    pub const ENCODED_LEN: usize = 28;

    /// An AES key from its 16 secret bytes.
    pub fn new(created: UTime, secret: [u8; AES_KEY_LEN]) -> Self {
        CryptoKey { created, secret }
    }

    /// A fresh random AES key (session keys, rotating secrets), created at `now`.
    pub fn generate(now: UTime, rng: &mut dyn CryptoRngCore) -> Self {
        let mut secret = [0u8; AES_KEY_LEN];
        rng.fill_bytes(&mut secret);
        CryptoKey { created: now, secret }
    }

    /// The 16 secret bytes.
    pub fn secret(&self) -> &[u8; AES_KEY_LEN] {
        &self.secret
    }

    /// Appends the `CryptoKey` encoding.
    pub fn encode(&self, e: &mut Encoder) {
        e.u16(CryptoType::AES.0).utime(self.created).u16(AES_KEY_LEN as u16).bytes(&self.secret);
    }

    /// The encoding as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(Self::ENCODED_LEN);
        self.encode(&mut e);
        e.into_vec()
    }

    /// Decodes a `CryptoKey`; only AES keys of exactly 16 bytes are usable.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self, AuthError> {
        let ty = CryptoType(d.u16()?);
        let created = d.utime()?;
        let len = usize::from(d.u16()?);
        let secret = d.bytes(len)?;
        if ty != CryptoType::AES {
            return Err(AuthError::UnsupportedKey { crypto_type: ty.0 });
        }
        let secret: [u8; AES_KEY_LEN] =
            secret.try_into().map_err(|_| AuthError::BadKeyLength { len })?;
        Ok(CryptoKey { created, secret })
    }

    /// The keyring form: base64 of the encoding (`AQ…`, 40 characters).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// From the keyring form. Trailing bytes after the key are refused: a keyring line
    /// holds exactly one key.
    pub fn from_base64(text: &str) -> Result<Self, AuthError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| AuthError::Malformed("key is not valid base64"))?;
        let mut d = Decoder::new(&raw);
        let key = CryptoKey::decode(&mut d)?;
        d.finish()?;
        Ok(key)
    }

    /// AES-128-CBC with cephx's IV and PKCS#7 padding: `16 * (len / 16 + 1)` bytes.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        Aes128CbcEnc::new(&self.secret.into(), &CEPH_AES_IV.into())
            .encrypt_padded_vec_mut::<Pkcs7>(plaintext)
    }

    /// The inverse of [`CryptoKey::encrypt`].
    ///
    /// Like Ceph's `CryptoAESKeyHandler::decrypt`, input that is empty or not a multiple
    /// of 16 is refused and `min(last byte, 16)` bytes of padding are dropped without
    /// checking them: the envelope's magic is what detects a wrong key, and a padding
    /// check would only add a distinguishable error.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, AuthError> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(AES_BLOCK) {
            return Err(AuthError::Malformed("ciphertext length is not a multiple of 16"));
        }
        let mut out = Aes128CbcDec::new(&self.secret.into(), &CEPH_AES_IV.into())
            .decrypt_padded_vec_mut::<NoPadding>(ciphertext)
            .map_err(|_| AuthError::Malformed("ciphertext length is not a multiple of 16"))?;
        let pad = usize::from(out.last().copied().unwrap_or(0)).min(AES_BLOCK);
        out.truncate(out.len() - pad);
        Ok(out)
    }

    /// `encode_encrypt_enc_bl`: the envelope `{u8 1, le64 magic, body}` encrypted; raw
    /// ciphertext, no length.
    pub fn seal(&self, body: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::with_capacity(64);
        e.u8(ENVELOPE_V).u64(AUTH_ENC_MAGIC);
        body(&mut e);
        self.encrypt(e.as_slice())
    }

    /// `encode_encrypt`: [`CryptoKey::seal`] as a length-prefixed blob appended to `e`.
    pub fn seal_blob(&self, e: &mut Encoder, body: impl FnOnce(&mut Encoder)) {
        let ct = self.seal(body);
        e.blob(&ct);
    }

    /// `decode_decrypt_enc_bl`: decrypts raw ciphertext, checks the envelope and returns
    /// the body's plaintext (the caller decodes its structure; trailing bytes after it
    /// are ignored, as in Ceph). A wrong key gives [`AuthError::BadMagic`].
    pub fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, AuthError> {
        let plain = self.decrypt(ciphertext)?;
        let mut d = Decoder::new(&plain);
        // The version byte is read and not checked, as Ceph does.
        let _v = d.u8().map_err(|_| AuthError::BadMagic)?;
        let magic = d.u64().map_err(|_| AuthError::BadMagic)?;
        if magic != AUTH_ENC_MAGIC {
            return Err(AuthError::BadMagic);
        }
        Ok(d.rest().to_vec())
    }

    /// `decode_decrypt`: reads a length-prefixed ciphertext blob from `d` and opens it.
    pub fn open_blob(&self, d: &mut Decoder<'_>) -> Result<Vec<u8>, AuthError> {
        let ct = d.blob()?;
        self.open(ct)
    }
}

impl fmt::Debug for CryptoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoKey").field("created", &self.created).finish_non_exhaustive()
    }
}

impl ConstantTimeEq for CryptoKey {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.secret.ct_eq(&other.secret)
    }
}

/// XOR of the little-endian 64-bit words of `bytes` (a trailing partial word is
/// skipped): the fold cephx uses for the challenge proof (cephx.md 3.3) and the v1
/// message signature (8.2).
pub(crate) fn xor_fold_u64(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0, |acc, w| {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        acc ^ u64::from_le_bytes(word)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn key_k() -> CryptoKey {
        let mut secret = [0u8; 16];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        CryptoKey::new(UTime::new(0x5f5e_1000, 0), secret)
    }

    #[test]
    fn cryptokey_encoding_matches_cephx_md_11() {
        let k = key_k();
        assert_eq!(k.to_bytes(), hex("01 00 00 10 5e 5f 00 00 00 00 10 00 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"));
        assert_eq!(k.to_base64(), "AQAAEF5fAAAAABAAAAECAwQFBgcICQoLDA0ODw==");
        assert_eq!(CryptoKey::from_base64("AQAAEF5fAAAAABAAAAECAwQFBgcICQoLDA0ODw==").unwrap(), k);
    }

    #[test]
    fn keyring_key_of_cephx_md_1_2_decodes() {
        let k = CryptoKey::from_base64("AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==").unwrap();
        assert_eq!(k.created, UTime::new(0x6b0c_f185, 0x358d_b158));
        assert_eq!(k.secret().to_vec(), hex("02 4b 79 4a e6 32 71 8a 1c 4a be 97 42 4f 5d 2e"));
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(CryptoKey::from_base64("AQ!!"), Err(AuthError::Malformed(_))));
        // Type NONE, length 0.
        let mut e = Encoder::new();
        e.u16(0).utime(UTime::default()).u16(0);
        let none = base64::engine::general_purpose::STANDARD.encode(e.as_slice());
        assert_eq!(
            CryptoKey::from_base64(&none),
            Err(AuthError::UnsupportedKey { crypto_type: 0 })
        );
        // AES with an 8-byte secret.
        let mut e = Encoder::new();
        e.u16(1).utime(UTime::default()).u16(8).bytes(&[0; 8]);
        let short = base64::engine::general_purpose::STANDARD.encode(e.as_slice());
        assert_eq!(CryptoKey::from_base64(&short), Err(AuthError::BadKeyLength { len: 8 }));
    }

    #[test]
    fn aes_vectors_of_cephx_md_11() {
        let k = key_k();
        assert_eq!(k.encrypt(b""), hex("7e e5 cf 4e 55 7c 53 3d 50 24 04 fc 3b 64 d7 e9"));
        assert_eq!(
            k.encrypt(b"hello cephx"),
            hex("88 30 48 fe 4b cd 9d c0 7d 67 b0 17 76 0a 5e 98")
        );
        let zeros = k.encrypt(&[0u8; 16]);
        assert_eq!(zeros, hex("7b b9 ad 20 b1 51 a1 5d 7c c7 27 9c 77 d9 90 0c e7 63 81 00 14 dc 29 5a 4b 89 dc cb 55 c0 b1 a2"));
        assert_eq!(k.decrypt(&zeros).unwrap(), vec![0u8; 16]);
        assert_eq!(k.decrypt(&k.encrypt(b"hello cephx")).unwrap(), b"hello cephx");
        assert!(k.decrypt(&[]).is_err());
        assert!(k.decrypt(&[0u8; 15]).is_err());
    }

    #[test]
    fn envelope_vector_of_cephx_md_11_and_wrong_key() {
        let k = key_k();
        let mut e = Encoder::new();
        k.seal_blob(&mut e, |e| {
            e.u64(0x1122_3344_5566_7788);
        });
        assert_eq!(e.as_slice(), &hex("20 00 00 00 5e 4c 58 eb a0 ea 93 1c 02 ef 66 28 53 ed c6 c2 43 6f d8 1c b2 dc 92 81 ad 93 1d a0 55 65 ec 32")[..]);
        let mut d = Decoder::new(e.as_slice());
        let body = k.open_blob(&mut d).unwrap();
        assert_eq!(body, 0x1122_3344_5566_7788u64.to_le_bytes());
        let other = CryptoKey::new(UTime::default(), [7; 16]);
        let mut d = Decoder::new(e.as_slice());
        assert_eq!(other.open_blob(&mut d), Err(AuthError::BadMagic));
    }

    #[test]
    fn xor_fold_skips_partial_word() {
        let mut b = [0u8; 20];
        b[0] = 1;
        b[8] = 2;
        b[16] = 0xff; // in the partial trailing word: ignored
        assert_eq!(xor_fold_u64(&b), 3);
    }
}
