//! `MConfig` (type 62): central configuration pushed by the monitor.

use std::collections::BTreeMap;

use super::{decode_string_map, encode_string_map, note_trailing, MsgType, Payload, TypedMessage};
use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `MConfig`: the monitor's answer to a `config` subscription.
///
/// Front: `map<string,string>` of option name → value (msgr-v1.md 7.7 \[V\]: an empty map
/// `00 00 00 00` from a fresh 16.2.15 cluster, header v1/compat 1). Checked against
/// `src/messages/MConfig.h` of `ceph/ceph` (stored copy at commit 09d388e9, Nautilus era:
/// `HEAD_VERSION = 1`, `COMPAT_VERSION = 1`, `encode(config)`), matching the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MConfig {
    /// Option name → value.
    pub config: BTreeMap<String, String>,
}

impl TypedMessage for MConfig {
    const TYPE: MsgType = MsgType::CONFIG;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::new();
        encode_string_map(&mut e, &self.config);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let config = decode_string_map(&mut d, &mut DecodeBudget::for_input(msg.front().len()))?;
        note_trailing(&d, Self::TYPE);
        Ok(MConfig { config })
    }
}
