//! `struct ceph_msg_connect_reply` (acceptor → connector, 26 bytes) + authorizer reply.

use crate::encoding::Decoder;
use crate::error::{Error, Result};
use crate::types::Features;
use crate::wire::{exact, need, Tag, CONNECT_LOSSY};

/// `ceph_msg_connect_reply`; `authorizer_len` bytes of authorizer reply follow it, then,
/// only for [`Tag::SEQ`], the acceptor's `u64` in_seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectReply {
    /// The outcome ([`Tag::READY`], [`Tag::SEQ`], [`Tag::WAIT`]...).
    pub tag: Tag,
    /// Features (meaning depends on the tag; msgr-v1.md 3.5).
    pub features: Features,
    /// Acceptor's global_seq, or the value to exceed for RETRY_GLOBAL.
    pub global_seq: u32,
    /// New connect_seq (READY/SEQ) or the value to use (RETRY_SESSION).
    pub connect_seq: u32,
    /// Acceptor's protocol version for this peer type.
    pub protocol_version: u32,
    /// Bytes of authorizer reply following the struct.
    pub authorizer_len: u32,
    /// [`CONNECT_LOSSY`] if the session is lossy.
    pub flags: u8,
}

impl ConnectReply {
    /// Encoded size without authorizer reply and in_seq.
    pub const LEN: usize = 26;

    /// A reply with `tag` and every other field zero.
    pub fn new(tag: Tag) -> Self {
        ConnectReply {
            tag,
            features: Features::NONE,
            global_seq: 0,
            connect_seq: 0,
            protocol_version: 0,
            authorizer_len: 0,
            flags: 0,
        }
    }

    /// True if the acceptor made the session lossy.
    pub fn is_lossy(&self) -> bool {
        self.flags & CONNECT_LOSSY != 0
    }

    /// The 26-byte struct.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = self.tag.0;
        out[1..9].copy_from_slice(&self.features.0.to_le_bytes());
        out[9..13].copy_from_slice(&self.global_seq.to_le_bytes());
        out[13..17].copy_from_slice(&self.connect_seq.to_le_bytes());
        out[17..21].copy_from_slice(&self.protocol_version.to_le_bytes());
        out[21..25].copy_from_slice(&self.authorizer_len.to_le_bytes());
        out[25] = self.flags;
        out
    }

    /// Appends the struct, `authorizer_reply` (its length replaces `authorizer_len`) and,
    /// for [`Tag::SEQ`], `in_seq`.
    pub fn encode_full(&self, authorizer_reply: &[u8], in_seq: u64, out: &mut Vec<u8>) {
        let r = ConnectReply {
            authorizer_len: u32::try_from(authorizer_reply.len()).unwrap_or(u32::MAX),
            ..*self
        };
        out.extend_from_slice(&r.to_bytes());
        out.extend_from_slice(authorizer_reply);
        if self.tag == Tag::SEQ {
            out.extend_from_slice(&in_seq.to_le_bytes());
        }
    }

    /// Decodes the 26-byte struct from the start of `input`.
    pub fn decode(input: &[u8]) -> Result<(Self, usize)> {
        need(input, Self::LEN)?;
        let mut d = Decoder::new(&input[..Self::LEN]);
        let reply = ConnectReply {
            tag: Tag(d.u8()?),
            features: Features(d.u64()?),
            global_seq: d.u32()?,
            connect_seq: d.u32()?,
            protocol_version: d.u32()?,
            authorizer_len: d.u32()?,
            flags: d.u8()?,
        };
        Ok((reply, Self::LEN))
    }

    /// Decodes the struct, the authorizer reply (length checked against `max_authorizer`
    /// first) and, for [`Tag::SEQ`], the acceptor's in_seq. Returns them and the bytes
    /// consumed.
    pub fn decode_full(
        input: &[u8],
        max_authorizer: usize,
    ) -> Result<(Self, &[u8], Option<u64>, usize)> {
        let (reply, at) = Self::decode(input)?;
        let len = reply.authorizer_len as usize;
        if len > max_authorizer {
            return Err(Error::TooLarge {
                what: "connect reply authorizer",
                len: len as u64,
                limit: max_authorizer as u64,
            });
        }
        need(input, at + len)?;
        let auth = &input[at..at + len];
        let mut end = at + len;
        let in_seq = if reply.tag == Tag::SEQ {
            need(input, end + 8)?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&input[end..end + 8]);
            end += 8;
            Some(u64::from_le_bytes(seq))
        } else {
            None
        };
        Ok((reply, auth, in_seq, end))
    }

    /// Like [`ConnectReply::decode`] but `input` must be exactly the 26 bytes.
    pub fn decode_exact(input: &[u8]) -> Result<Self> {
        exact(input, Self::decode(input)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn golden_seq_reply() {
        // msgr-v1.md 8.1: the monitor's SEQ reply + in_seq 0.
        let golden: [u8; 34] = [
            0x0d, 0xff, 0xff, 0xfd, 0xff, 0xbd, 0xcf, 0x01, 0x3f, 0x29, 0, 0, 0, 1, 0, 0, 0, 0x0f,
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let r = ConnectReply {
            tag: Tag::SEQ,
            features: Features::PACIFIC_ADVERTISED,
            global_seq: 41,
            connect_seq: 1,
            protocol_version: 15,
            authorizer_len: 0,
            flags: CONNECT_LOSSY,
        };
        let mut out = Vec::new();
        r.encode_full(&[], 0, &mut out);
        assert_eq!(out, golden);
        assert_eq!(ConnectReply::decode_exact(&golden[..26]).unwrap(), r);
        let (got, auth, in_seq, used) = ConnectReply::decode_full(&golden, 0).unwrap();
        assert_eq!((got, auth.len(), in_seq, used), (r, 0, Some(0), 34));
        assert!(matches!(
            ConnectReply::decode_full(&golden[..33], 0),
            Err(Error::Truncated { .. })
        ));
        assert!(got.is_lossy());
    }

    #[test]
    fn ready_has_no_in_seq_and_authorizer_is_bounded() {
        let r = ConnectReply { authorizer_len: 3, ..ConnectReply::new(Tag::READY) };
        let mut out = Vec::new();
        r.encode_full(b"xyz", 7, &mut out);
        assert_eq!(out.len(), 29);
        let (_, auth, in_seq, used) = ConnectReply::decode_full(&out, 8).unwrap();
        assert_eq!((auth, in_seq, used), (&b"xyz"[..], None, 29));
        assert!(matches!(ConnectReply::decode_full(&out, 2), Err(Error::TooLarge { .. })));
    }
}
