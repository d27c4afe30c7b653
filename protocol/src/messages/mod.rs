//! Typed messages that encode to and decode from a [`crate::Message`].
//!
//! Each typed message implements [`TypedMessage`], which ties it to its type number and
//! to the header `version` / `compat_version` Ceph 16.2 (Pacific) uses, and converts it
//! to and from a [`Message`]'s segments. [`decode_any`] is the registry: it turns a
//! received [`Message`] into the matching [`AnyMessage`] variant and keeps a message of
//! an unknown type raw ([`AnyMessage::Raw`]) instead of failing.
//!
//! # Decoding rules (what every decoder here guarantees)
//! - Peer bytes never panic and never allocate more than the input can justify: every
//!   length and count is checked against the bytes that remain before anything is
//!   allocated ([`crate::encoding::Decoder`]).
//! - The collections of one message (`vector<string>`, `map<string,string>`, the monmap's
//!   maps and sets…) take at most a constant factor of the front in memory, plus a fixed
//!   slack ([`crate::encoding::DecodeBudget`]); a message that would take more is refused
//!   with [`Error::TooLarge`]: the dispatch throttle charges only its wire bytes.
//! - A message whose header `compat_version` is newer than the `HEAD_VERSION` we
//!   implement is refused with [`Error::Incompatible`], as Ceph's `decode_message` does.
//! - Versioned blocks (`ENCODE_START`) skip unknown trailing bytes inside the block.
//! - **Unversioned fronts** (every message here except the monmap blob): trailing bytes
//!   after the fields the header version defines are ignored, exactly as Ceph's
//!   `decode_payload()` implementations do (none of them checks for the end of the
//!   payload). Newer Ceph versions append fields this way (e.g. `MMonSubscribeAck`'s fsid,
//!   `MMonGetVersionReply`'s `oldest_version`), so refusing them would break interop.
//!   They are logged at `debug` on target `msgr::messages` (the count, never the bytes).
//!
//! # Deliberate differences from Ceph
//! - Strings must be UTF-8 ([`crate::encoding::Decoder::string`]); Ceph accepts any
//!   bytes. Every name, key and command Ceph puts in these messages is ASCII/JSON.
//! - [`MPing`] keeps its front verbatim (Ceph's decoder ignores it) so a monitor's health
//!   report is readable.
//! - [`MonMap`] of the old forms: see its doc (rank derivation, v1 names, min release).
//! - A typed message whose compat is too new is an error returned to the caller; Ceph
//!   logs it and drops the message. The caller decides (the session layer may drop it).
//!
//! # Header versions
//! Ceph's `Message::encode` sets `compat_version = version` when a message class does not
//! name a compat version ("if the encoder didn't specify past compatibility, we assume it
//! is incompatible"), so the classes that only pass a type to `Message(...)` travel as
//! `v1/compat 1`. The `COMPAT_VERSION` constants below are those effective values.

use bytes::Bytes;

use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::{Error, Result};
use crate::types::Features;
use crate::Message;

mod auth;
mod command;
mod config;
mod mon_command;
mod mon_get_version;
mod mon_map;
mod mon_subscribe;
mod msg_type;
mod osd_ping;
mod ping;

pub use auth::{AuthNegotiation, MAuth, MAuthReply};
pub use command::{MCommand, MCommandReply};
pub use config::MConfig;
pub use mon_command::{MMonCommand, MMonCommandAck};
pub use mon_get_version::{MMonGetVersion, MMonGetVersionReply};
pub use mon_map::{MMonMap, MonInfo, MonMap};
pub use mon_subscribe::{MMonSubscribe, MMonSubscribeAck, SubscribeItem, SUBSCRIBE_ONETIME};
pub use msg_type::MsgType;
pub use osd_ping::{MOSDPing, OsdPingOp, SignedSpan};
pub use ping::MPing;

const LOG_TARGET: &str = "msgr::messages";

/// The encoded segments of a typed message, plus the header version it was encoded as.
///
/// Most messages always encode as their `HEAD_VERSION`; a few pick an older layout for a
/// peer that lacks a feature (e.g. [`MMonSubscribe`] without `SUBSCRIBE2` is version 0),
/// so the version travels with the bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    /// The front segment (the message's `payload` in Ceph).
    pub front: Bytes,
    /// The middle segment (unused by every message implemented here).
    pub middle: Bytes,
    /// The data segment (command input/output for the command messages).
    pub data: Bytes,
    /// The header `version` these bytes are laid out for.
    pub version: u16,
}

impl Payload {
    /// A payload with only a front segment.
    pub fn front(front: Bytes, version: u16) -> Self {
        Payload { front, version, ..Payload::default() }
    }
}

/// A typed message: its wire identity and its Pacific encoding.
pub trait TypedMessage: Sized {
    /// The header `type`.
    const TYPE: MsgType;
    /// The newest header `version` we encode and fully decode (Ceph's `HEAD_VERSION`).
    const HEAD_VERSION: u16;
    /// The header `compat_version` we send (Ceph's `COMPAT_VERSION`, see the module doc).
    const COMPAT_VERSION: u16;

    /// Encodes the segments for a connection with the negotiated `features`.
    fn encode_payload(&self, features: Features) -> Payload;

    /// Decodes from `msg`'s segments, laid out for header version `version`.
    ///
    /// Called by [`TypedMessage::from_message`] after the type and compat checks.
    fn decode_payload(version: u16, msg: &Message) -> Result<Self>;

    /// Builds a [`Message`] with type, version, compat version and segments set.
    ///
    /// Priority, tid and source stay at their defaults (the tid of a command reply is
    /// copied by the caller, as in Ceph).
    fn to_message(&self, features: Features) -> Message {
        let payload = self.encode_payload(features);
        let mut msg = Message::new(Self::TYPE.0, payload.front);
        msg.set_version(payload.version);
        // Ceph keeps the class's compat even when encode_payload lowered the version
        // (MMonSubscribe for a peer without SUBSCRIBE2 goes out as v0/compat 1).
        msg.set_compat_version(Self::COMPAT_VERSION);
        if !payload.middle.is_empty() {
            msg.set_middle(payload.middle);
        }
        if !payload.data.is_empty() {
            msg.set_data(payload.data);
        }
        msg
    }

    /// Decodes a received [`Message`] of this type.
    ///
    /// Refuses a message of another type ([`Error::Misuse`]: the caller dispatches by
    /// type) and one whose `compat_version` is newer than [`TypedMessage::HEAD_VERSION`]
    /// ([`Error::Incompatible`]), as Ceph's `decode_message` does.
    fn from_message(msg: &Message) -> Result<Self> {
        if msg.msg_type() != Self::TYPE.0 {
            return Err(Error::Misuse("typed decode of a message of another type"));
        }
        check_compat(msg, Self::TYPE, Self::HEAD_VERSION)?;
        Self::decode_payload(msg.version(), msg)
    }
}

/// Refuses a header `compat_version` above what we implement.
fn check_compat(msg: &Message, ty: MsgType, head: u16) -> Result<()> {
    let compat = msg.compat_version();
    if compat > head {
        return Err(Error::Incompatible {
            what: ty.name().unwrap_or("message"),
            compat: u8::try_from(compat).unwrap_or(u8::MAX),
            understood: u8::try_from(head).unwrap_or(u8::MAX),
        });
    }
    Ok(())
}

/// Notes bytes an unversioned front left unread (ignored, as Ceph does; module doc).
fn note_trailing(d: &Decoder<'_>, ty: MsgType) {
    if !d.is_empty() {
        log::debug!(
            target: LOG_TARGET,
            "{ty}: ignoring {} trailing front bytes (newer sender?)",
            d.remaining()
        );
    }
}

/// The prefix of every `PaxosServiceMessage` front (msgr-v1.md 7.1): 18 bytes.
#[doc(alias = "PaxosServiceMessage")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaxosHeader {
    /// `version` (0 from clients).
    pub version: u64,
    /// `deprecated_session_mon` (-1 from clients).
    pub session_mon: i16,
    /// `deprecated_session_mon_tid` (0 from clients).
    pub session_mon_tid: u64,
}

impl Default for PaxosHeader {
    /// What a client sends: version 0, session_mon -1, tid 0.
    fn default() -> Self {
        PaxosHeader { version: 0, session_mon: -1, session_mon_tid: 0 }
    }
}

impl PaxosHeader {
    /// Encoded size in bytes.
    pub const LEN: usize = 18;

    /// Appends the 18-byte prefix.
    pub fn encode(&self, e: &mut Encoder) {
        e.u64(self.version).i16(self.session_mon).u64(self.session_mon_tid);
    }

    /// Reads the 18-byte prefix.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(PaxosHeader { version: d.u64()?, session_mon: d.i16()?, session_mon_tid: d.u64()? })
    }
}

/// `vector<string>`: each element needs at least its 4-byte length, so the count is
/// checked against that before anything is allocated; slots and strings are charged to
/// `budget`.
fn decode_string_vec(d: &mut Decoder<'_>, budget: &mut DecodeBudget) -> Result<Vec<String>> {
    d.vec_within(budget, 4, Decoder::string_within)
}

fn encode_string_vec(e: &mut Encoder, v: &[String]) {
    e.vec(v, |e, s| {
        e.string(s);
    });
}

/// `set<string>` (sorted, duplicates collapse as in `std::set`), charged to `budget`.
fn decode_string_set(
    d: &mut Decoder<'_>,
    budget: &mut DecodeBudget,
) -> Result<std::collections::BTreeSet<String>> {
    d.set_within(budget, 4, Decoder::string_within)
}

fn encode_string_set(e: &mut Encoder, s: &std::collections::BTreeSet<String>) {
    e.u32(len32(s.len()));
    for item in s {
        e.string(item);
    }
}

/// `map<string,string>`: each entry needs at least 8 bytes; entries and strings are
/// charged to `budget`.
fn decode_string_map(
    d: &mut Decoder<'_>,
    budget: &mut DecodeBudget,
) -> Result<std::collections::BTreeMap<String, String>> {
    d.map_within(budget, 8, Decoder::string_within, Decoder::string_within)
}

fn encode_string_map(e: &mut Encoder, m: &std::collections::BTreeMap<String, String>) {
    e.map(m, |e, k, v| {
        e.string(k).string(v);
    });
}

/// A collection length as Ceph's `u32` count. Our own collections never approach 4 Gi
/// entries; saturate rather than wrap if a caller builds one that does.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Any message the registry knows, or the raw [`Message`] when its type is not typed here.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum AnyMessage {
    /// [`MPing`].
    Ping(MPing),
    /// [`MOSDPing`].
    OsdPing(MOSDPing),
    /// [`MCommand`].
    Command(MCommand),
    /// [`MCommandReply`].
    CommandReply(MCommandReply),
    /// [`MAuth`].
    Auth(MAuth),
    /// [`MAuthReply`].
    AuthReply(MAuthReply),
    /// [`MMonSubscribe`].
    MonSubscribe(MMonSubscribe),
    /// [`MMonSubscribeAck`].
    MonSubscribeAck(MMonSubscribeAck),
    /// [`MMonMap`].
    MonMap(MMonMap),
    /// [`MConfig`].
    Config(MConfig),
    /// [`MMonGetVersion`].
    MonGetVersion(MMonGetVersion),
    /// [`MMonGetVersionReply`].
    MonGetVersionReply(MMonGetVersionReply),
    /// [`MMonCommand`].
    MonCommand(MMonCommand),
    /// [`MMonCommandAck`].
    MonCommandAck(MMonCommandAck),
    /// A message of a type not implemented here, untouched.
    Raw(Message),
}

impl AnyMessage {
    /// The header type number of this message.
    pub fn msg_type(&self) -> MsgType {
        match self {
            AnyMessage::Ping(_) => MPing::TYPE,
            AnyMessage::OsdPing(_) => MOSDPing::TYPE,
            AnyMessage::Command(_) => MCommand::TYPE,
            AnyMessage::CommandReply(_) => MCommandReply::TYPE,
            AnyMessage::Auth(_) => MAuth::TYPE,
            AnyMessage::AuthReply(_) => MAuthReply::TYPE,
            AnyMessage::MonSubscribe(_) => MMonSubscribe::TYPE,
            AnyMessage::MonSubscribeAck(_) => MMonSubscribeAck::TYPE,
            AnyMessage::MonMap(_) => MMonMap::TYPE,
            AnyMessage::Config(_) => MConfig::TYPE,
            AnyMessage::MonGetVersion(_) => MMonGetVersion::TYPE,
            AnyMessage::MonGetVersionReply(_) => MMonGetVersionReply::TYPE,
            AnyMessage::MonCommand(_) => MMonCommand::TYPE,
            AnyMessage::MonCommandAck(_) => MMonCommandAck::TYPE,
            AnyMessage::Raw(m) => MsgType(m.msg_type()),
        }
    }
}

/// Decodes a received message into its typed form.
///
/// A type implemented here that fails to decode is an error (malformed or incompatible
/// peer bytes); a type not implemented here is returned as [`AnyMessage::Raw`], never an
/// error. What it returns holds none of `msg`'s policy-throttle charge (`Raw` holds a
/// clone): to keep the back-pressure with the decoded form, move the charge with
/// [`Message::take_throttle_charge`] (see [`crate::message::ThrottleCharge`]).
pub fn decode_any(msg: &Message) -> Result<AnyMessage> {
    Ok(match MsgType(msg.msg_type()) {
        MsgType::PING => AnyMessage::Ping(MPing::from_message(msg)?),
        MsgType::OSD_PING => AnyMessage::OsdPing(MOSDPing::from_message(msg)?),
        MsgType::COMMAND => AnyMessage::Command(MCommand::from_message(msg)?),
        MsgType::COMMAND_REPLY => AnyMessage::CommandReply(MCommandReply::from_message(msg)?),
        MsgType::AUTH => AnyMessage::Auth(MAuth::from_message(msg)?),
        MsgType::AUTH_REPLY => AnyMessage::AuthReply(MAuthReply::from_message(msg)?),
        MsgType::MON_SUBSCRIBE => AnyMessage::MonSubscribe(MMonSubscribe::from_message(msg)?),
        MsgType::MON_SUBSCRIBE_ACK => {
            AnyMessage::MonSubscribeAck(MMonSubscribeAck::from_message(msg)?)
        }
        MsgType::MON_MAP => AnyMessage::MonMap(MMonMap::from_message(msg)?),
        MsgType::CONFIG => AnyMessage::Config(MConfig::from_message(msg)?),
        MsgType::MON_GET_VERSION => AnyMessage::MonGetVersion(MMonGetVersion::from_message(msg)?),
        MsgType::MON_GET_VERSION_REPLY => {
            AnyMessage::MonGetVersionReply(MMonGetVersionReply::from_message(msg)?)
        }
        MsgType::MON_COMMAND => AnyMessage::MonCommand(MMonCommand::from_message(msg)?),
        MsgType::MON_COMMAND_ACK => AnyMessage::MonCommandAck(MMonCommandAck::from_message(msg)?),
        _ => AnyMessage::Raw(msg.clone()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn msg_type_names_and_display() {
        assert_eq!(MsgType::MON_MAP.to_string(), "mon_map(4)");
        assert_eq!(MsgType(0x4242).to_string(), "type16962");
        assert_eq!(MsgType::from(70), MsgType::OSD_PING);
        assert_eq!(u16::from(MsgType::MGR_MAP), 0x704);
    }

    #[test]
    fn paxos_header_is_18_bytes_and_client_default() {
        let mut e = Encoder::new();
        PaxosHeader::default().encode(&mut e);
        assert_eq!(e.len(), PaxosHeader::LEN);
        assert_eq!(&e.as_slice()[8..10], &[0xff, 0xff]);
        let back = PaxosHeader::decode(&mut Decoder::new(e.as_slice())).unwrap();
        assert_eq!(back, PaxosHeader::default());
    }

    #[test]
    fn string_containers_check_counts_before_allocating() {
        let huge = [0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
        let b = &mut DecodeBudget::for_input(huge.len());
        assert!(matches!(
            decode_string_vec(&mut Decoder::new(&huge), b),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode_string_map(&mut Decoder::new(&huge), b),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            decode_string_set(&mut Decoder::new(&huge), b),
            Err(Error::Truncated { .. })
        ));
    }

    /// `n` one-byte strings (`01 00 00 00 'x'`), 5 bytes each on the wire.
    fn tiny_strings(n: u32) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u32(n);
        for _ in 0..n {
            e.string("x");
        }
        e.into_vec()
    }

    #[test]
    fn string_containers_stop_at_their_budget() {
        // 200,000 one-byte strings (1 MB on the wire) would take ~11 MB.
        let b = tiny_strings(200_000);
        let mut budget = DecodeBudget::for_input(b.len());
        let err = decode_string_vec(&mut Decoder::new(&b), &mut budget).unwrap_err();
        assert!(matches!(err, Error::TooLarge { what: "memory for decoded collections", .. }));
        assert_eq!(err.kind(), crate::error::ErrorKind::PeerMisbehaved);
        assert!(budget.used() <= budget.limit());

        // A few thousand fit the slack; what was decoded is what was charged.
        let b = tiny_strings(5_000);
        let mut budget = DecodeBudget::for_input(b.len());
        let v = decode_string_vec(&mut Decoder::new(&b), &mut budget).unwrap();
        assert_eq!((v.len(), v.capacity()), (5_000, 5_000));
        assert_eq!(budget.used(), DecodeBudget::heap_block(5_000 * 24) + 5_000 * 32);

        // Nested collections share one budget: a second map is charged on top.
        let mut e = Encoder::new();
        let m: std::collections::BTreeMap<String, String> =
            (0..5_000).map(|i| (format!("k{i:05}"), String::new())).collect();
        encode_string_map(&mut e, &m);
        let mut budget = DecodeBudget::for_input(0);
        let one = decode_string_map(&mut Decoder::new(e.as_slice()), &mut budget).unwrap();
        assert_eq!(one, m);
        let used = budget.used();
        assert!(decode_string_map(&mut Decoder::new(e.as_slice()), &mut budget).is_err());
        assert!(used > DecodeBudget::SLACK / 2);
    }

    #[test]
    fn to_message_sets_type_versions_and_segments() {
        let m = MMonCommand { data: Bytes::from_static(b"in"), ..MMonCommand::default() };
        let msg = m.to_message(Features::PACIFIC_ADVERTISED);
        assert_eq!(msg.msg_type(), MsgType::MON_COMMAND.0);
        assert_eq!((msg.version(), msg.compat_version()), (1, 1));
        assert_eq!(&msg.data()[..], b"in");
        assert!(msg.middle().is_empty());
    }
}
