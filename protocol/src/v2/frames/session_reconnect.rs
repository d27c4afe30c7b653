//! SESSION_RECONNECT (tag 11, connector): `entity_addrvec_t addrs`, `u64
//! client_cookie`, `u64 server_cookie`, `u64 global_seq`, `u64 connect_seq`, `u64
//! msg_seq`.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::EntityAddrVec;

use super::{ControlFrame, Tag, FRAME_ADDR_FEATURES};

/// The connector resumes an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionReconnect {
    /// The connector's own addresses.
    pub addrs: EntityAddrVec,
    /// The session's client cookie.
    pub client_cookie: u64,
    /// The session's server cookie (non-zero: that is why it reconnects).
    pub server_cookie: u64,
    /// The connector's counter for this attempt.
    pub global_seq: u64,
    /// Reconnect attempts in this session.
    pub connect_seq: u64,
    /// The connector's in_seq.
    pub msg_seq: u64,
}

impl ControlFrame for SessionReconnect {
    const TAG: Tag = Tag::SESSION_RECONNECT;

    fn encode(&self, e: &mut Encoder) {
        self.addrs.encode(e, FRAME_ADDR_FEATURES);
        e.u64(self.client_cookie)
            .u64(self.server_cookie)
            .u64(self.global_seq)
            .u64(self.connect_seq)
            .u64(self.msg_seq);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SessionReconnect {
            addrs: EntityAddrVec::decode(d)?,
            client_cookie: d.u64()?,
            server_cookie: d.u64()?,
            global_seq: d.u64()?,
            connect_seq: d.u64()?,
            msg_seq: d.u64()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::{AddrType, EntityAddr};

    #[test]
    fn round_trip_with_an_addrvec() {
        let a = EntityAddr {
            ty: AddrType::MSGR2,
            nonce: 7,
            addr: Some("127.0.0.1:3300".parse().unwrap()),
        };
        let f = SessionReconnect {
            addrs: EntityAddrVec::single(a),
            client_cookie: 1,
            server_cookie: 2,
            global_seq: 3,
            connect_seq: 4,
            msg_seq: 5,
        };
        let b = f.to_segment();
        assert_eq!(b.len(), 5 + 35 + 40);
        assert_eq!(SessionReconnect::from_segment(&b).unwrap(), f);
    }
}
