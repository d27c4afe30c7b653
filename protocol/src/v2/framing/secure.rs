//! Secure mode's cipher state: AES-128-GCM with Ceph's msgr2.1 nonce rule (msgr-v2.md
//! 3.3). The cipher is RustCrypto's `aes-gcm`; nothing here is cryptography of our own.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit};

use crate::error::{Error, Result};

/// AES-128 key length.
pub const KEY_LEN: usize = 16;
/// GCM nonce length: `le32 fixed` + `le64 counter`.
pub const NONCE_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes of the connection secret that secure mode uses: key, then the nonce of the
/// frames the connector receives, then the nonce of the frames it sends.
pub const SECRET_USED_LEN: usize = KEY_LEN + 2 * NONCE_LEN;

/// One direction of secure mode: a key and a nonce counter that advances by one after
/// every GCM operation (a frame uses 1, 2 or 3).
pub struct GcmStream {
    cipher: Aes128Gcm,
    fixed: u32,
    counter: u64,
    /// The counter value we started at: reaching it again means every nonce was used
    /// (Ceph's "out of nonces"), and reusing one would break GCM.
    initial: u64,
    used: bool,
}

impl GcmStream {
    /// A stream from a 16-byte key and a 12-byte initial nonce.
    pub fn new(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> Self {
        let fixed = u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&nonce[4..]);
        let counter = u64::from_le_bytes(c);
        GcmStream {
            cipher: Aes128Gcm::new(&(*key).into()),
            fixed,
            counter,
            initial: counter,
            used: false,
        }
    }

    /// The `(rx, tx)` streams of one side from the connection secret: the connector
    /// receives with bytes 16..28 and sends with 28..40; the acceptor the reverse
    /// (Ceph's `create_handler_pair(.., crossed)`).
    pub fn pair_from_secret(secret: &[u8], connector: bool) -> Result<(GcmStream, GcmStream)> {
        let Some(used) = secret.get(..SECRET_USED_LEN) else {
            return Err(Error::Malformed("connection secret shorter than 40 bytes"));
        };
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&used[..KEY_LEN]);
        let mut a = [0u8; NONCE_LEN];
        a.copy_from_slice(&used[KEY_LEN..KEY_LEN + NONCE_LEN]);
        let mut b = [0u8; NONCE_LEN];
        b.copy_from_slice(&used[KEY_LEN + NONCE_LEN..]);
        let (rx, tx) = if connector { (a, b) } else { (b, a) };
        Ok((GcmStream::new(&key, &rx), GcmStream::new(&key, &tx)))
    }

    fn next_nonce(&mut self) -> Result<[u8; NONCE_LEN]> {
        if self.used && self.counter == self.initial {
            return Err(Error::Unsupported("secure mode is out of nonces"));
        }
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.fixed.to_le_bytes());
        n[4..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        self.used = true;
        Ok(n)
    }

    /// Encrypts `buf` in place (one GCM operation) and returns its tag.
    pub fn seal(&mut self, buf: &mut [u8]) -> Result<[u8; TAG_LEN]> {
        let n = self.next_nonce()?;
        let tag = self
            .cipher
            .encrypt_inout_detached(&n.into(), &[], buf.into())
            .map_err(|_| Error::Misuse("GCM refused to encrypt"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts `buf` in place (one GCM operation) after checking `tag`.
    pub fn open(&mut self, buf: &mut [u8], tag: &[u8]) -> Result<()> {
        let n = self.next_nonce()?;
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return Err(Error::Malformed("GCM tag is not 16 bytes"));
        };
        self.cipher
            .decrypt_inout_detached(&n.into(), &[], buf.into(), &tag.into())
            .map_err(|_| Error::Malformed("frame failed GCM authentication (bad tag)"))
    }
}

impl std::fmt::Debug for GcmStream {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcmStream").field("counter", &self.counter).finish_non_exhaustive()
    }
}
