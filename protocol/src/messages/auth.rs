//! `MAuth` (type 17) and `MAuthReply` (type 18), with the auth-none negotiation payload.

use bytes::Bytes;

use super::{note_trailing, MsgType, PaxosHeader, Payload, TypedMessage};
use crate::encoding::{Decoder, Encoder};
use crate::error::Result;
use crate::types::{AuthEntityName, EntityType, Features, AUTH_NONE, AUTH_UNKNOWN};
use crate::Message;

/// `MAuth`: a client's authentication request to a monitor.
///
/// Front (msgr-v1.md 7.3 and transcript 8.2 \[V\], v1/compat 1): the paxos prefix (7.1),
/// `u32 protocol` (0 = `CEPH_AUTH_UNKNOWN`, "negotiating", in the first message),
/// `bufferlist auth_payload`, `u32 monmap_epoch`. Like Ceph's decoder, a front that ends
/// after `auth_payload` decodes with `monmap_epoch = 0` (pre-monmap-epoch senders).
/// For protocol 0 the payload is an [`AuthNegotiation`]; for later rounds it is
/// method-specific and kept as bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MAuth {
    /// The `PaxosServiceMessage` prefix.
    pub paxos: PaxosHeader,
    /// Auth method of this round (`AUTH_UNKNOWN` while negotiating).
    pub protocol: u32,
    /// Method-specific bytes ([`AuthNegotiation`] when `protocol` is 0).
    pub auth_payload: Bytes,
    /// Epoch of the client's monmap (0 if none): an older one makes the monitor push its
    /// monmap right after the reply.
    pub monmap_epoch: u32,
}

impl MAuth {
    /// The first `MAuth` of a client: protocol 0 with `negotiation` as payload.
    pub fn negotiate(negotiation: &AuthNegotiation, monmap_epoch: u32) -> Self {
        MAuth {
            paxos: PaxosHeader::default(),
            protocol: AUTH_UNKNOWN,
            auth_payload: negotiation.encode(),
            monmap_epoch,
        }
    }

    /// The negotiation payload, when this is a protocol-0 (negotiating) request.
    pub fn negotiation(&self) -> Option<Result<AuthNegotiation>> {
        (self.protocol == AUTH_UNKNOWN).then(|| AuthNegotiation::decode(&self.auth_payload))
    }
}

impl TypedMessage for MAuth {
    const TYPE: MsgType = MsgType::AUTH;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(PaxosHeader::LEN + 12 + self.auth_payload.len());
        self.paxos.encode(&mut e);
        e.u32(self.protocol).blob(&self.auth_payload).u32(self.monmap_epoch);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let front = msg.front();
        let mut d = Decoder::new(front);
        let paxos = PaxosHeader::decode(&mut d)?;
        let protocol = d.u32()?;
        let auth_payload = d.blob_bytes(front)?;
        let monmap_epoch = if d.is_empty() { 0 } else { d.u32()? };
        note_trailing(&d, Self::TYPE);
        Ok(MAuth { paxos, protocol, auth_payload, monmap_epoch })
    }
}

/// The `auth_payload` of a negotiating (`protocol` 0) [`MAuth`].
///
/// Layout (msgr-v1.md 7.3 \[V\], from `MonConnection::start` in `src/mon/MonClient.cc`):
/// `u8 struct_v = 1`, `vector<u32>` supported methods in preference order, the auth
/// `EntityName`, `u64 global_id` (0 for a new client, the old id when re-authenticating).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthNegotiation {
    /// Auth methods the client supports, preferred first (`[AUTH_NONE]` for auth none).
    pub methods: Vec<u32>,
    /// Who is authenticating (e.g. `client.admin`).
    pub name: AuthEntityName,
    /// The client's previous global id, 0 for a new client.
    pub global_id: u64,
}

impl Default for AuthNegotiation {
    /// What the real CLI sends on an auth-none cluster: methods `[1]`, `client.admin`.
    fn default() -> Self {
        AuthNegotiation {
            methods: vec![AUTH_NONE],
            name: AuthEntityName::new(EntityType::CLIENT, "admin"),
            global_id: 0,
        }
    }
}

impl AuthNegotiation {
    /// The payload's `struct_v`.
    pub const STRUCT_V: u8 = 1;

    /// Encodes the payload bytes.
    pub fn encode(&self) -> Bytes {
        let mut e = Encoder::with_capacity(1 + 4 + 4 * self.methods.len() + 8 + 32);
        e.u8(Self::STRUCT_V);
        e.vec(&self.methods, |e, m| {
            e.u32(*m);
        });
        self.name.encode(&mut e);
        e.u64(self.global_id);
        e.into_bytes()
    }

    /// Decodes the payload bytes; trailing bytes are ignored (Ceph's monitor reads the
    /// fields it knows and stops).
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut d = Decoder::new(b);
        // Only version 1 exists; the monitor reads the byte without acting on it, and
        // so do we (a future version would append fields, which we ignore).
        let _struct_v = d.u8()?;
        let n = d.count(4)?;
        let mut methods = Vec::with_capacity(n);
        for _ in 0..n {
            methods.push(d.u32()?);
        }
        let name = AuthEntityName::decode(&mut d)?;
        let global_id = d.u64()?;
        Ok(AuthNegotiation { methods, name, global_id })
    }
}

/// `MAuthReply`: the monitor's answer to an [`MAuth`].
///
/// Front (msgr-v1.md 7.4 and transcript 8.2 \[V\], v1/compat 1; not a paxos message):
/// `u32 protocol` (the chosen method), `s32 result` (0 or negative errno, e.g. -95
/// EOPNOTSUPP when no offered method is allowed), `u64 global_id`, `bufferlist
/// result_bl` (method-specific, empty for auth none), `string result_msg`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MAuthReply {
    /// The method the monitor chose (0 when it refused all).
    pub protocol: u32,
    /// 0 or a negative errno.
    pub result: i32,
    /// The client's global id (it becomes `client.<global_id>`).
    pub global_id: u64,
    /// Method-specific reply bytes.
    pub result_bl: Bytes,
    /// Human-readable status.
    pub result_msg: String,
}

impl TypedMessage for MAuthReply {
    const TYPE: MsgType = MsgType::AUTH_REPLY;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(24 + self.result_bl.len() + self.result_msg.len());
        e.u32(self.protocol).i32(self.result).u64(self.global_id);
        e.blob(&self.result_bl).string(&self.result_msg);
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let front = msg.front();
        let mut d = Decoder::new(front);
        let protocol = d.u32()?;
        let result = d.i32()?;
        let global_id = d.u64()?;
        let result_bl = d.blob_bytes(front)?;
        let result_msg = d.string()?;
        note_trailing(&d, Self::TYPE);
        Ok(MAuthReply { protocol, result, global_id, result_bl, result_msg })
    }
}
