//! The payloads of msgr2 frames, one file per frame kind (msgr-v2.md 4). Control frames
//! carry one segment: a plain concatenation of Ceph encodings, addresses always in the
//! MSG_ADDR2 form. Each kind implements [`ControlFrame`]; MESSAGE's segment 0 is
//! [`MsgHeader2`].
//!
//! Decoding is strict: a payload must be consumed completely (Ceph ignores trailing
//! bytes; none of its frames has any).

mod ack;
mod auth_bad_method;
mod auth_done;
mod auth_reply_more;
mod auth_request;
mod auth_request_more;
mod auth_signature;
mod client_ident;
mod hello;
mod ident_missing_features;
mod keepalive;
mod message;
mod server_ident;
mod session_reconnect;
mod session_reconnect_ok;
mod session_reset;
mod session_retry;
mod session_retry_global;
mod wait;

use bytes::Bytes;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;

use super::tag::Tag;
use crate::auth::ConMode;

pub use ack::Ack;
pub use auth_bad_method::AuthBadMethod;
pub use auth_done::AuthDone;
pub use auth_reply_more::AuthReplyMore;
pub use auth_request::AuthRequest;
pub use auth_request_more::AuthRequestMore;
pub use auth_signature::{AuthSignature, SIGNATURE_LEN};
pub use client_ident::ClientIdent;
pub use hello::Hello;
pub use ident_missing_features::IdentMissingFeatures;
pub use keepalive::{Keepalive2, Keepalive2Ack};
pub use message::{MsgHeader2, HEADER2_FLAGS};
pub use server_ident::ServerIdent;
pub use session_reconnect::SessionReconnect;
pub use session_reconnect_ok::SessionReconnectOk;
pub use session_reset::SessionReset;
pub use session_retry::SessionRetry;
pub use session_retry_global::SessionRetryGlobal;
pub use wait::Wait;

/// `CEPH_MSG_CONNECT_LOSSY`: bit 0 of the ident `flags`.
pub const IDENT_FLAG_LOSSY: u64 = 1;

/// Features assumed of every msgr2 peer when encoding frame payloads (Ceph's
/// `msgr2_frame_assumed`): addresses always use the new form, with type ANY intact.
pub const FRAME_ADDR_FEATURES: Features =
    Features(Features::MSG_ADDR2.0 | Features::SERVER_NAUTILUS_MASK.0);

/// A single-segment control frame's payload.
pub trait ControlFrame: Sized {
    /// The frame's tag.
    const TAG: Tag;

    /// Writes the payload.
    fn encode(&self, e: &mut Encoder);

    /// Reads the payload.
    fn decode(d: &mut Decoder<'_>) -> Result<Self>;

    /// The payload as segment 0.
    fn to_segment(&self) -> Bytes {
        let mut e = Encoder::new();
        self.encode(&mut e);
        e.into_bytes()
    }

    /// Decodes a whole segment 0; trailing bytes are an error.
    fn from_segment(b: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(b);
        let v = Self::decode(&mut d)?;
        d.finish()?;
        Ok(v)
    }
}

/// `u32 n` + `n × u32`.
fn encode_u32s(e: &mut Encoder, v: &[u32]) {
    e.vec(v, |e, x| {
        e.u32(*x);
    });
}

fn decode_u32s(d: &mut Decoder<'_>) -> Result<Vec<u32>> {
    let n = d.count(4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(d.u32()?);
    }
    Ok(out)
}

fn encode_modes(e: &mut Encoder, v: &[ConMode]) {
    e.vec(v, |e, m| {
        e.u32(m.0);
    });
}

fn decode_modes(d: &mut Decoder<'_>) -> Result<Vec<ConMode>> {
    Ok(decode_u32s(d)?.into_iter().map(ConMode).collect())
}

/// A `bufferlist` field as a fresh `Bytes` (control payloads are small).
fn decode_blob(d: &mut Decoder<'_>) -> Result<Bytes> {
    Ok(Bytes::copy_from_slice(d.blob()?))
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Parses "01 02 ab" style hex (whitespace and `|` ignored).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..digits.len() / 2)
            .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    }
}
