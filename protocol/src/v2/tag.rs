//! Frame tags and connection modes: newtypes with named constants, so an unknown value
//! still decodes and is refused by whoever reads it.

use std::fmt;

/// `Tag` of a msgr2 frame (byte 0 of the preamble, msgr-v2.md 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tag(pub u8);

impl Tag {
    /// `HELLO`: entity type and the address the peer is seen at.
    pub const HELLO: Tag = Tag(1);
    /// `AUTH_REQUEST`: method, preferred modes, method payload.
    pub const AUTH_REQUEST: Tag = Tag(2);
    /// `AUTH_BAD_METHOD`: the method was refused; allowed methods and modes.
    pub const AUTH_BAD_METHOD: Tag = Tag(3);
    /// `AUTH_REPLY_MORE`: another auth round.
    pub const AUTH_REPLY_MORE: Tag = Tag(4);
    /// `AUTH_REQUEST_MORE`: the connector's answer to `AUTH_REPLY_MORE`.
    pub const AUTH_REQUEST_MORE: Tag = Tag(5);
    /// `AUTH_DONE`: global id, connection mode, final method payload.
    pub const AUTH_DONE: Tag = Tag(6);
    /// `AUTH_SIGNATURE`: HMAC of the pre-auth transcript.
    pub const AUTH_SIGNATURE: Tag = Tag(7);
    /// `CLIENT_IDENT`: the connector opens a new session.
    pub const CLIENT_IDENT: Tag = Tag(8);
    /// `SERVER_IDENT`: the acceptor accepts a new session.
    pub const SERVER_IDENT: Tag = Tag(9);
    /// `IDENT_MISSING_FEATURES`: the connector lacks required features.
    pub const IDENT_MISSING_FEATURES: Tag = Tag(10);
    /// `SESSION_RECONNECT`: the connector resumes a session.
    pub const SESSION_RECONNECT: Tag = Tag(11);
    /// `SESSION_RESET`: the acceptor has no such session.
    pub const SESSION_RESET: Tag = Tag(12);
    /// `SESSION_RETRY`: retry with a higher connect_seq.
    pub const SESSION_RETRY: Tag = Tag(13);
    /// `SESSION_RETRY_GLOBAL`: retry with a higher global_seq.
    pub const SESSION_RETRY_GLOBAL: Tag = Tag(14);
    /// `SESSION_RECONNECT_OK`: the session resumed.
    pub const SESSION_RECONNECT_OK: Tag = Tag(15);
    /// `WAIT`: the connector lost a connection race.
    pub const WAIT: Tag = Tag(16);
    /// `MESSAGE`: `ceph_msg_header2` + front, middle, data.
    pub const MESSAGE: Tag = Tag(17);
    /// `KEEPALIVE2`: the sender's clock.
    pub const KEEPALIVE2: Tag = Tag(18);
    /// `KEEPALIVE2_ACK`: echoes a KEEPALIVE2 stamp.
    pub const KEEPALIVE2_ACK: Tag = Tag(19);
    /// `ACK`: highest message seq received.
    pub const ACK: Tag = Tag(20);
    /// `COMPRESSION_REQUEST` (Quincy+; refused here, as by Pacific).
    pub const COMPRESSION_REQUEST: Tag = Tag(21);
    /// `COMPRESSION_DONE` (Quincy+; refused here, as by Pacific).
    pub const COMPRESSION_DONE: Tag = Tag(22);

    /// Ceph's name of the tag, or "UNKNOWN".
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 23] = [
            "UNKNOWN",
            "HELLO",
            "AUTH_REQUEST",
            "AUTH_BAD_METHOD",
            "AUTH_REPLY_MORE",
            "AUTH_REQUEST_MORE",
            "AUTH_DONE",
            "AUTH_SIGNATURE",
            "CLIENT_IDENT",
            "SERVER_IDENT",
            "IDENT_MISSING_FEATURES",
            "SESSION_RECONNECT",
            "SESSION_RESET",
            "SESSION_RETRY",
            "SESSION_RETRY_GLOBAL",
            "SESSION_RECONNECT_OK",
            "WAIT",
            "MESSAGE",
            "KEEPALIVE2",
            "KEEPALIVE2_ACK",
            "ACK",
            "COMPRESSION_REQUEST",
            "COMPRESSION_DONE",
        ];
        NAMES.get(usize::from(self.0)).copied().unwrap_or("UNKNOWN")
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ceph() {
        assert_eq!(Tag::HELLO.name(), "HELLO");
        assert_eq!(Tag::ACK.to_string(), "ACK(20)");
        assert_eq!(Tag(0).name(), "UNKNOWN");
        assert_eq!(Tag(200).name(), "UNKNOWN");
    }
}
