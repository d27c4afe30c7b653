//! `MMonSubscribe` (type 15) and `MMonSubscribeAck` (type 16).

use std::collections::BTreeMap;

use super::{note_trailing, MsgType, Payload, TypedMessage};
use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `CEPH_SUBSCRIBE_ONETIME`: send one update only.
pub const SUBSCRIBE_ONETIME: u8 = 1;

/// One subscription (`ceph_mon_subscribe_item`): where to start and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubscribeItem {
    /// First epoch wanted (0 = the current one); "have + 1".
    pub start: u64,
    /// [`SUBSCRIBE_ONETIME`] or 0.
    pub flags: u8,
}

/// `MMonSubscribe`: subscribe to cluster maps (`monmap`, `osdmap`, `config`, `mgrmap` …).
///
/// Pacific layout (msgr-v1.md 7.5 and transcript 8.3 \[V\], v3/compat 1): `map<string,
/// ceph_mon_subscribe_item>` (each item `u64 start`, `u8 flags`) then, since v3, `string
/// hostname`. Checked against `src/messages/MMonSubscribe.h` of `ceph/ceph` (a stored
/// copy with `HEAD_VERSION = 3`, `COMPAT_VERSION = 1`): for a peer without `SUBSCRIBE2`
/// the sender writes header version 0 and the old item (`u64 unused`, `u64 have`,
/// `u8 onetime`) with `have = start - 1` (0 for start 0) and no hostname; a receiver of a
/// version below 2 maps back `start = have + 1` (0 for have 0), flags = ONETIME if
/// `onetime`. Both directions are implemented here the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonSubscribe {
    /// What to subscribe to, by name.
    pub what: BTreeMap<String, SubscribeItem>,
    /// The subscriber's host name (v3).
    pub hostname: String,
}

impl MMonSubscribe {
    /// Adds or replaces a subscription (Ceph's `sub_want`).
    pub fn want(&mut self, what: &str, start: u64, flags: u8) -> &mut Self {
        self.what.insert(what.to_owned(), SubscribeItem { start, flags });
        self
    }
}

impl TypedMessage for MMonSubscribe {
    const TYPE: MsgType = MsgType::MON_SUBSCRIBE;
    const HEAD_VERSION: u16 = 3;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, features: Features) -> Payload {
        let mut e = Encoder::new();
        if !features.contains(Features::SUBSCRIBE2) {
            e.map(&self.what, |e, name, item| {
                // start 1 and start 0 both become have 0: ambiguous, as in Ceph.
                e.string(name).u64(0).u64(item.start.saturating_sub(1));
                e.u8(u8::from(item.flags & SUBSCRIBE_ONETIME != 0));
            });
            return Payload::front(e.into_bytes(), 0);
        }
        e.map(&self.what, |e, name, item| {
            e.string(name).u64(item.start).u8(item.flags);
        });
        e.string(&self.hostname);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let mut m = MMonSubscribe::default();
        let budget = &mut DecodeBudget::for_input(msg.front().len());
        if version < 2 {
            // string (>= 4) + unused + have + onetime = at least 21 bytes per entry.
            m.what = d.map_within(budget, 21, Decoder::string_within, |d, _| {
                let _unused = d.u64()?;
                let have = d.u64()?;
                let onetime = d.u8()? != 0;
                let start = if have == 0 { 0 } else { have.saturating_add(1) };
                let flags = if onetime { SUBSCRIBE_ONETIME } else { 0 };
                Ok(SubscribeItem { start, flags })
            })?;
        } else {
            m.what = d.map_within(budget, 13, Decoder::string_within, |d, _| {
                Ok(SubscribeItem { start: d.u64()?, flags: d.u8()? })
            })?;
            if version >= 3 {
                m.hostname = d.string()?;
            }
        }
        note_trailing(&d, Self::TYPE);
        Ok(m)
    }
}

/// `MMonSubscribeAck`: sent by a monitor to peers without `MON_STATEFUL_SUB`, telling
/// them how often to renew their subscriptions.
///
/// Front (msgr-v1.md 7.5 \[V\], v1/compat 1): `u32 interval` (seconds; 86400 =
/// `mon_subscribe_interval`), `uuid fsid`. Checked against
/// `src/messages/MMonSubscribeAck.h` of `ceph/ceph` (stored copy at commit 008216bd, the
/// layout unchanged since): the decoder reads the fsid only if bytes remain, so a front
/// with just the interval decodes with an all-zero fsid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonSubscribeAck {
    /// Renewal interval in seconds.
    pub interval: u32,
    /// The cluster fsid.
    pub fsid: [u8; 16],
}

impl TypedMessage for MMonSubscribeAck {
    const TYPE: MsgType = MsgType::MON_SUBSCRIBE_ACK;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(20);
        e.u32(self.interval).uuid(&self.fsid);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let interval = d.u32()?;
        let fsid = if d.is_empty() { [0; 16] } else { d.uuid()? };
        note_trailing(&d, Self::TYPE);
        Ok(MMonSubscribeAck { interval, fsid })
    }
}
