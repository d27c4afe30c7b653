//! msgr v1 frames: banner, connect, connect_reply, tags, message header and footer, crc32c.
//!
//! One file per frame kind. Fixed-size frames offer `to_bytes() -> [u8; N]` and
//! `decode(&[u8]) -> Result<(Self, consumed)>`, which reads a prefix and leaves what follows
//! (the next frame) alone; `decode_exact` additionally rejects trailing bytes. Decoders
//! never allocate from a peer-supplied length without checking it against a limit first.
//!
//! What travels on the wire, in order (msgr-v1.md 2.1):
//!
//! ```text
//! connector                                   acceptor
//!   BANNER (9) ─────────────────────────────►
//!            ◄───────────────── BANNER + its addr + connector addr as seen (281)
//!   own legacy addr (136) ──────────────────►
//!   ConnectMsg (33) + authorizer ───────────►
//!            ◄──────────────── ConnectReply (26) + authorizer reply [+ u64 if SEQ]
//!   [u64 in_seq if SEQ] ────────────────────►
//!   ══ open: Tag::MSG + MsgHeader + front + middle + data + MsgFooter, Tag::ACK + u64,
//!      Tag::KEEPALIVE2(_ACK) + stamp, Tag::KEEPALIVE, Tag::CLOSE ══
//! ```
//!
//! # Deliberate differences from Ceph (all on the receive side, all stricter)
//! - Authorizers and authorizer replies above [`MAX_AUTHORIZER_LEN`] are refused; Ceph
//!   reads whatever length the peer announces.
//! - A connect `host_type` above 255 is malformed (it cannot be an entity type).
//! - An `entity_addr_t` whose sockaddr length exceeds `sockaddr_in6` (28) or is too short
//!   for its family is refused, and families other than inet/inet6/unspec are unsupported.
//! - Strings must be UTF-8 ([`crate::encoding::Decoder::string`]).
//! - Message segment lengths are checked against [`crate::message::DecodeLimits`] before
//!   any payload is read; Ceph relies on its throttles alone.

mod ack;
mod banner;
mod connect;
mod connect_reply;
mod crc;
mod footer;
mod header;
mod tag;

pub use ack::{ack_frame, decode_ack, decode_keepalive_stamp, keepalive2_frame, KeepaliveStamp};
pub use banner::{check_banner, AcceptorBanner, ACCEPTOR_BLOCK_LEN, BANNER, BANNER_LEN};
pub use connect::{ConnectMsg, CONNECT_LOSSY, MAX_AUTHORIZER_LEN};
pub use connect_reply::ConnectReply;
pub(crate) use crc::RunningCrc;
pub use crc::{ceph_crc32c, long_kernel, long_kernel_from, LongKernel};
pub use footer::{FooterFlags, FooterFormat, MsgFooter};
pub use header::MsgHeader;
pub use tag::Tag;

use crate::error::{Error, Result};

/// Fails with [`Error::Truncated`] unless `input` holds at least `need` bytes.
fn need(input: &[u8], need: usize) -> Result<()> {
    if input.len() < need {
        Err(Error::Truncated { need, have: input.len() })
    } else {
        Ok(())
    }
}

/// Fails with [`Error::TrailingBytes`] unless `consumed` is all of `input`.
fn exact<T>(input: &[u8], (value, consumed): (T, usize)) -> Result<T> {
    match input.len() - consumed {
        0 => Ok(value),
        extra => Err(Error::TrailingBytes { extra }),
    }
}
