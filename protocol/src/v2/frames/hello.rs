//! HELLO (tag 1, both directions): `u8 entity_type`, `entity_addr_t peer_addr`.

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::{EntityAddr, EntityType};

use super::{ControlFrame, Tag, FRAME_ADDR_FEATURES};

/// The first frame each side sends after the banners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's entity type.
    pub entity_type: EntityType,
    /// Connector: the address it dialled. Acceptor: the connector's address as seen
    /// on the socket (type v2, nonce 0).
    pub peer_addr: EntityAddr,
}

impl ControlFrame for Hello {
    const TAG: Tag = Tag::HELLO;

    fn encode(&self, e: &mut Encoder) {
        e.u8(self.entity_type.0);
        self.peer_addr.encode(e, FRAME_ADDR_FEATURES);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(Hello { entity_type: EntityType(d.u8()?), peer_addr: EntityAddr::decode(d)? })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::test_util::hex;
    use super::*;
    use crate::types::AddrType;

    // msgr-v2.md 5.1: the monitor's HELLO payload (36 bytes).
    #[test]
    fn golden_monitor_hello() {
        let b = hex("01 01 01 01 1c 00 00 00 02 00 00 00 00 00 00 00 10 00 00 00 02 00 92 96 \
                     7f 00 00 01 00 00 00 00 00 00 00 00");
        let h = Hello::from_segment(&b).unwrap();
        assert_eq!(h.entity_type, EntityType::MON);
        assert_eq!(h.peer_addr.ty, AddrType::MSGR2);
        assert_eq!(h.peer_addr.addr, Some("127.0.0.1:37526".parse().unwrap()));
        assert_eq!(&h.to_segment()[..], &b[..]);
        assert!(Hello::from_segment(&b[..35]).is_err());
    }
}
