//! `MOSDPing` (type 70): OSD heartbeats.

use std::fmt;

use super::{note_trailing, MsgType, Payload, TypedMessage};
use crate::encoding::{Decoder, Encoder, UTime};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// The `op` of an [`MOSDPing`] (`MOSDPing::HEARTBEAT` …). A newtype so an unknown op
/// still decodes; the heartbeat code decides what to do with it. Defaults to `HEARTBEAT` (0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OsdPingOp(pub u8);

impl OsdPingOp {
    /// `HEARTBEAT` (legacy).
    pub const HEARTBEAT: OsdPingOp = OsdPingOp(0);
    /// `START_HEARTBEAT` (legacy).
    pub const START_HEARTBEAT: OsdPingOp = OsdPingOp(1);
    /// `YOU_DIED`: the receiver is marked down in the sender's map.
    pub const YOU_DIED: OsdPingOp = OsdPingOp(2);
    /// `STOP_HEARTBEAT` (legacy).
    pub const STOP_HEARTBEAT: OsdPingOp = OsdPingOp(3);
    /// `PING`: a heartbeat request.
    pub const PING: OsdPingOp = OsdPingOp(4);
    /// `PING_REPLY`: the answer, echoing the stamps.
    pub const PING_REPLY: OsdPingOp = OsdPingOp(5);

    /// Ceph's `get_op_name`.
    pub fn name(self) -> &'static str {
        match self {
            OsdPingOp::HEARTBEAT => "heartbeat",
            OsdPingOp::START_HEARTBEAT => "start_heartbeat",
            OsdPingOp::YOU_DIED => "you_died",
            OsdPingOp::STOP_HEARTBEAT => "stop_heartbeat",
            OsdPingOp::PING => "ping",
            OsdPingOp::PING_REPLY => "ping_reply",
            _ => "???",
        }
    }
}

impl fmt::Display for OsdPingOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A signed monotonic duration (`ceph::signedspan`) as it travels on the wire.
///
/// Wire form (Ceph's generic `std::chrono::duration` encoder): whole seconds and the
/// sub-second nanoseconds, each truncated toward zero and written as a 32-bit value.
/// Pacific's decoder reads both halves as `uint32_t`; later trees read `int32_t`. The
/// bytes are the same; we keep both halves as signed values, exactly as received, so a
/// decoded span re-encodes to the same bytes even when a peer sends nanoseconds outside
/// one second (which [`SignedSpan::as_nanos`] then simply adds up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignedSpan {
    /// Whole seconds (truncated toward zero).
    pub secs: i32,
    /// The remaining nanoseconds, with the sign of the span.
    pub nanos: i32,
}

impl SignedSpan {
    const NANOS: i64 = 1_000_000_000;

    /// A span of `nanos` nanoseconds, split as Ceph splits it. Spans beyond ±2^31 s
    /// wrap their seconds like Ceph's 32-bit cast.
    pub fn from_nanos(nanos: i64) -> Self {
        // `as` truncation is the point: Ceph casts the counts to 32 bits the same way.
        SignedSpan { secs: (nanos / Self::NANOS) as i32, nanos: (nanos % Self::NANOS) as i32 }
    }

    /// The span in nanoseconds (`secs * 10^9 + nanos`).
    pub fn as_nanos(self) -> i64 {
        i64::from(self.secs) * Self::NANOS + i64::from(self.nanos)
    }

    fn encode(self, e: &mut Encoder) {
        e.i32(self.secs).i32(self.nanos);
    }

    fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(SignedSpan { secs: d.i32()?, nanos: d.i32()? })
    }
}

/// `MOSDPing`: the heartbeat between OSDs (and its replies).
///
/// Layout checked against `src/messages/MOSDPing.h` of `ceph/ceph` (stored copy at
/// commit 0165f384, an Octopus-or-later tree: `HEAD_VERSION = 5`, `COMPAT_VERSION = 4`,
/// the v5 mono stamps and the optional `delta_ub`, which is the Pacific layout; the
/// duration and `std::optional` encoders were checked in `src/include/encoding.h` and
/// `include/encoding_optional.h`). Not exercised against a live OSD.
///
/// Front: `uuid fsid`, `u32 map_epoch`, `u8 op`, `utime_t ping_stamp` (29 bytes), then
/// `u32 size` (padding length), then for v5 `u32 up_from`, `signedspan mono_ping_stamp`,
/// `signedspan mono_send_stamp`, `optional<signedspan> delta_ub` (`u8 present` + value),
/// then `size` zero bytes of padding. The sender computes `size = min_message_size - 29`
/// (0 if smaller), so a padded message is a little longer than `min_message_size`, as in
/// Ceph. The receiver skips the padding and sets `min_message_size = size + 29`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MOSDPing {
    /// The cluster fsid.
    pub fsid: [u8; 16],
    /// The sender's OSDMap epoch.
    pub map_epoch: u32,
    /// What this heartbeat is.
    pub op: OsdPingOp,
    /// Wall-clock time the PING was sent (echoed in the reply).
    pub ping_stamp: UTime,
    /// When the PING was sent, on the sender's monotonic clock (v5).
    pub mono_ping_stamp: SignedSpan,
    /// The replier's monotonic send stamp (v5).
    pub mono_send_stamp: SignedSpan,
    /// Upper bound on the clock delta, from the ping sender (v5, optional).
    pub delta_ub: Option<SignedSpan>,
    /// The epoch the sender came up in (v5).
    pub up_from: u32,
    /// Pad the front to about this size (jumbo frame checks, Ceph tracker #20087).
    pub min_message_size: u32,
}

/// Bytes before the padding-size field: fsid, epoch, op, ping_stamp.
const MID_LEN: u32 = 16 + 4 + 1 + 8;

impl TypedMessage for MOSDPing {
    const TYPE: MsgType = MsgType::OSD_PING;
    const HEAD_VERSION: u16 = 5;
    const COMPAT_VERSION: u16 = 4;

    fn encode_payload(&self, _features: Features) -> Payload {
        let pad = self.min_message_size.saturating_sub(MID_LEN);
        let mut e = Encoder::with_capacity(MID_LEN as usize + 30 + pad as usize);
        e.uuid(&self.fsid).u32(self.map_epoch).u8(self.op.0).utime(self.ping_stamp);
        e.u32(pad).u32(self.up_from);
        self.mono_ping_stamp.encode(&mut e);
        self.mono_send_stamp.encode(&mut e);
        match self.delta_ub {
            Some(span) => {
                e.u8(1);
                span.encode(&mut e);
            }
            None => {
                e.u8(0);
            }
        }
        // Local value, not peer input: the padding is what we were asked to send.
        e.bytes(&vec![0u8; pad as usize]);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let mut m = MOSDPing {
            fsid: d.uuid()?,
            map_epoch: d.u32()?,
            op: OsdPingOp(d.u8()?),
            ping_stamp: d.utime()?,
            ..MOSDPing::default()
        };
        let pad = d.u32()?;
        if version >= 5 {
            m.up_from = d.u32()?;
            m.mono_ping_stamp = SignedSpan::decode(&mut d)?;
            m.mono_send_stamp = SignedSpan::decode(&mut d)?;
            m.delta_ub = match d.u8()? {
                0 => None,
                _ => Some(SignedSpan::decode(&mut d)?),
            };
        }
        // The padding must be there (Ceph's `p += size` throws past the end).
        d.skip(pad as usize)?;
        m.min_message_size = pad.saturating_add(MID_LEN);
        note_trailing(&d, Self::TYPE);
        Ok(m)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signed_span_truncates_toward_zero_like_chrono() {
        // -1.5 s: duration_cast<seconds> gives -1, the remainder -500_000_000 ns.
        let mut e = Encoder::new();
        let span = SignedSpan::from_nanos(-1_500_000_000);
        assert_eq!(span, SignedSpan { secs: -1, nanos: -500_000_000 });
        span.encode(&mut e);
        assert_eq!(e.as_slice(), &[0xff, 0xff, 0xff, 0xff, 0x00, 0x9b, 0x32, 0xe2]);
        let back = SignedSpan::decode(&mut Decoder::new(e.as_slice())).unwrap();
        assert_eq!(back.as_nanos(), -1_500_000_000);
    }

    #[test]
    fn min_message_size_below_the_fixed_part_means_no_padding() {
        let m = MOSDPing { min_message_size: 10, ..MOSDPing::default() };
        let p = m.encode_payload(Features::NONE);
        assert_eq!(p.front.len(), 29 + 4 + 4 + 8 + 8 + 1);
        assert_eq!(&p.front[29..33], &[0, 0, 0, 0]);
    }
}
