//! `CEPH_MSGR_TAG_*`: the one-byte tags of connect replies and of the open session.

use std::fmt;

/// A msgr v1 tag. A newtype so an unknown value still decodes; the session rejects it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u8);

impl Tag {
    /// Connect reply: session open, no seq exchange.
    pub const READY: Tag = Tag(1);
    /// Connect reply: no such session, reconnect with connect_seq 0.
    pub const RESETSESSION: Tag = Tag(2);
    /// Connect reply: race lost by the connector; back off.
    pub const WAIT: Tag = Tag(3);
    /// Connect reply: resend connect with `reply.connect_seq`.
    pub const RETRY_SESSION: Tag = Tag(4);
    /// Connect reply: resend connect with a global_seq above `reply.global_seq`.
    pub const RETRY_GLOBAL: Tag = Tag(5);
    /// Open session: orderly close.
    pub const CLOSE: Tag = Tag(6);
    /// Open session: a message follows.
    pub const MSG: Tag = Tag(7);
    /// Open session: a `u64` acked seq follows.
    pub const ACK: Tag = Tag(8);
    /// Open session: keepalive without payload.
    pub const KEEPALIVE: Tag = Tag(9);
    /// Connect reply: protocol version mismatch.
    pub const BADPROTOVER: Tag = Tag(10);
    /// Connect reply: authorizer rejected.
    pub const BADAUTHORIZER: Tag = Tag(11);
    /// Connect reply: connector lacks required features.
    pub const FEATURES: Tag = Tag(12);
    /// Connect reply: session open; `u64` in_seq exchange follows.
    pub const SEQ: Tag = Tag(13);
    /// Open session: keepalive with a timestamp.
    pub const KEEPALIVE2: Tag = Tag(14);
    /// Open session: echo of a KEEPALIVE2 timestamp.
    pub const KEEPALIVE2_ACK: Tag = Tag(15);
    /// Connect reply: cephx v2 challenge.
    pub const CHALLENGE_AUTHORIZER: Tag = Tag(16);

    /// The Ceph name without prefix ("READY", "MSG"...), or "UNKNOWN".
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "READY",
            2 => "RESETSESSION",
            3 => "WAIT",
            4 => "RETRY_SESSION",
            5 => "RETRY_GLOBAL",
            6 => "CLOSE",
            7 => "MSG",
            8 => "ACK",
            9 => "KEEPALIVE",
            10 => "BADPROTOVER",
            11 => "BADAUTHORIZER",
            12 => "FEATURES",
            13 => "SEQ",
            14 => "KEEPALIVE2",
            15 => "KEEPALIVE2_ACK",
            16 => "CHALLENGE_AUTHORIZER",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag::{}({})", self.name(), self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_known_tag() {
        for v in 1..=16u8 {
            assert_ne!(Tag(v).name(), "UNKNOWN", "{v}");
        }
        assert_eq!(Tag(0x42).name(), "UNKNOWN");
        assert_eq!(Tag::KEEPALIVE2_ACK.0, 15);
        assert_eq!(format!("{:?}", Tag::SEQ), "Tag::SEQ(13)");
    }
}
