//! `MMonCommand` (type 50) and `MMonCommandAck` (type 51).

use bytes::Bytes;

use super::{
    decode_string_vec, encode_string_vec, note_trailing, MsgType, PaxosHeader, Payload,
    TypedMessage,
};
use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `MMonCommand`: a command for the monitor (`ceph status`, `ceph osd pool ls` …).
///
/// Front (msgr-v1.md 7.9 and transcript 8.5 \[V\], v1/compat 1): the paxos prefix (7.1),
/// `uuid fsid`, `vector<string> cmd` — normally one JSON object such as
/// `{"prefix": "status", "format": "json"}`. Optional input in the data segment. The
/// header tid is the client's command id; the monitor copies it into the ack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonCommand {
    /// The `PaxosServiceMessage` prefix.
    pub paxos: PaxosHeader,
    /// The cluster fsid.
    pub fsid: [u8; 16],
    /// The command words.
    pub cmd: Vec<String>,
    /// Input for the command (the data segment).
    pub data: Bytes,
}

impl TypedMessage for MMonCommand {
    const TYPE: MsgType = MsgType::MON_COMMAND;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::new();
        self.paxos.encode(&mut e);
        e.uuid(&self.fsid);
        encode_string_vec(&mut e, &self.cmd);
        Payload { data: self.data.clone(), ..Payload::front(e.into_bytes(), Self::HEAD_VERSION) }
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let paxos = PaxosHeader::decode(&mut d)?;
        let fsid = d.uuid()?;
        let cmd = decode_string_vec(&mut d, &mut DecodeBudget::for_input(msg.front().len()))?;
        note_trailing(&d, Self::TYPE);
        Ok(MMonCommand { paxos, fsid, cmd, data: msg.data().clone() })
    }
}

/// `MMonCommandAck`: the monitor's answer to an [`MMonCommand`].
///
/// Front (msgr-v1.md 7.9 \[V\], v1/compat 1): paxos prefix, `s32 r` (0 or negative errno),
/// `string rs` (status text), `vector<string> cmd` (echo of the request). The command's
/// output is the data segment; the tid is the request's. (The stored Ceph copy of
/// `MMonCommandAck.h` predates the paxos prefix; the layout here is the one a 16.2.15
/// monitor sent, and that the real CLI accepted from `mon_probe.py --fake-mon`.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonCommandAck {
    /// The `PaxosServiceMessage` prefix.
    pub paxos: PaxosHeader,
    /// 0 or a negative errno.
    pub r: i32,
    /// Status text.
    pub rs: String,
    /// The command, echoed.
    pub cmd: Vec<String>,
    /// The command's output (the data segment).
    pub data: Bytes,
}

impl TypedMessage for MMonCommandAck {
    const TYPE: MsgType = MsgType::MON_COMMAND_ACK;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::new();
        self.paxos.encode(&mut e);
        e.i32(self.r).string(&self.rs);
        encode_string_vec(&mut e, &self.cmd);
        Payload { data: self.data.clone(), ..Payload::front(e.into_bytes(), Self::HEAD_VERSION) }
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let paxos = PaxosHeader::decode(&mut d)?;
        let r = d.i32()?;
        let rs = d.string()?;
        let cmd = decode_string_vec(&mut d, &mut DecodeBudget::for_input(msg.front().len()))?;
        note_trailing(&d, Self::TYPE);
        Ok(MMonCommandAck { paxos, r, rs, cmd, data: msg.data().clone() })
    }
}
