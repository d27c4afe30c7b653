//! `MPing` (type 2).

use bytes::Bytes;

use super::{MsgType, Payload, TypedMessage};
use crate::encoding::Decoder;
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `MPing`: a liveness probe with no fields of its own.
///
/// Pacific (`src/messages/MPing.h`): `Message(CEPH_MSG_PING)`, empty `encode_payload` and
/// `decode_payload`, so it travels as v1/compat 1 with an empty front (msgr-v1.md 7.2 \[V\]).
/// A **monitor** answers an `MPing` with an `MPing` whose front it fills directly with a
/// `string` holding a JSON health report (v1/compat 0, because the front is set without
/// `encode_payload`). Ceph's decoder ignores the front; we keep it verbatim in
/// [`MPing::payload`] and offer [`MPing::monitor_report`] to read that string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MPing {
    /// The front as received (empty from every sender except a monitor's reply).
    pub payload: Bytes,
}

impl MPing {
    /// A ping with an empty front.
    pub fn new() -> Self {
        MPing::default()
    }

    /// A monitor's ping reply carrying `report` (JSON) as a `string` front.
    pub fn with_report(report: &str) -> Self {
        let mut e = crate::encoding::Encoder::with_capacity(4 + report.len());
        e.string(report);
        MPing { payload: e.into_bytes() }
    }

    /// The monitor's report, if the front holds one: `Ok(None)` for an empty front, an
    /// error when the front is not a well-formed `string`.
    pub fn monitor_report(&self) -> Result<Option<String>> {
        if self.payload.is_empty() {
            return Ok(None);
        }
        let mut d = Decoder::new(&self.payload);
        d.string().map(Some)
    }
}

impl TypedMessage for MPing {
    const TYPE: MsgType = MsgType::PING;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        Payload::front(self.payload.clone(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        Ok(MPing { payload: msg.front().clone() })
    }
}
