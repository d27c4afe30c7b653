//! `MMonGetVersion` (type 19) and `MMonGetVersionReply` (type 20).

use super::{note_trailing, MsgType, Payload, TypedMessage};
use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `MMonGetVersion`: "what is the newest epoch of this map?"
///
/// Front: `u64 handle` (the caller's id, echoed back; real clients match replies by it),
/// `string what` (`"osdmap"`, `"mdsmap"`, `"fsmap"`, `"monmap"` …) — msgr-v1.md 7.8 and
/// transcript 8.4 \[V\]. Checked against `src/messages/MMonGetVersion.h` of `ceph/ceph`
/// (stored copy at commit 0ccaa764: `Message(CEPH_MSG_MON_GET_VERSION)`, so v1 and, via
/// `Message::encode`, compat 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonGetVersion {
    /// Caller-chosen id echoed in the reply.
    pub handle: u64,
    /// Which map.
    pub what: String,
}

impl TypedMessage for MMonGetVersion {
    const TYPE: MsgType = MsgType::MON_GET_VERSION;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(12 + self.what.len());
        e.u64(self.handle).string(&self.what);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let m = MMonGetVersion { handle: d.u64()?, what: d.string()? };
        note_trailing(&d, Self::TYPE);
        Ok(m)
    }
}

/// `MMonGetVersionReply`: the newest (and oldest) epoch of the asked-for map.
///
/// Front: `u64 handle`, `u64 version`, and since header v2 `u64 oldest_version`
/// (msgr-v1.md 7.8 \[V\]: v2/compat 2 from 16.2.15, `handle 1, version 1, oldest 1`).
/// Checked against `src/messages/MMonGetVersionReply.h` of `ceph/ceph` (stored copy at
/// commit 09d388e9: `HEAD_VERSION = 2`, `oldest_version` decoded only when
/// `header.version >= 2`). A v1 reply decodes with `oldest_version = 0`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonGetVersionReply {
    /// The request's handle.
    pub handle: u64,
    /// Newest epoch.
    pub version: u64,
    /// Oldest epoch the monitor still has (0 from a v1 sender).
    pub oldest_version: u64,
}

impl TypedMessage for MMonGetVersionReply {
    const TYPE: MsgType = MsgType::MON_GET_VERSION_REPLY;
    const HEAD_VERSION: u16 = 2;
    const COMPAT_VERSION: u16 = 2;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(24);
        e.u64(self.handle).u64(self.version).u64(self.oldest_version);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let mut m = MMonGetVersionReply { handle: d.u64()?, version: d.u64()?, oldest_version: 0 };
        if version >= 2 {
            m.oldest_version = d.u64()?;
        }
        note_trailing(&d, Self::TYPE);
        Ok(m)
    }
}
