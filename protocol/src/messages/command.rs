//! `MCommand` (type 97) and `MCommandReply` (type 98): "tell" commands to OSD/MDS/mgr.

use bytes::Bytes;

use super::{decode_string_vec, encode_string_vec, note_trailing, MsgType, Payload, TypedMessage};
use crate::encoding::{DecodeBudget, Decoder, Encoder};
use crate::error::Result;
use crate::types::Features;
use crate::Message;

/// `MCommand`: a command for a daemon (`ceph tell osd.N ...`).
///
/// Layout checked against `src/messages/MCommand.h` of `ceph/ceph` (stored copy at commit
/// 0e8129ad, older than Pacific; the class has no `HEAD_VERSION` there or in Pacific, and
/// the payload has stayed `encode(fsid); encode(cmd)` since). Front: `uuid fsid`,
/// `vector<string> cmd` (normally one JSON object). The command's input travels in the
/// data segment. Header: `Message(MSG_COMMAND)` → version 1, and `Message::encode` turns
/// the unset compat into 1. The reply's tid is the request's. Not exercised live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MCommand {
    /// The cluster fsid.
    pub fsid: [u8; 16],
    /// The command words (normally a single JSON object).
    pub cmd: Vec<String>,
    /// Input for the command (the data segment).
    pub data: Bytes,
}

impl TypedMessage for MCommand {
    const TYPE: MsgType = MsgType::COMMAND;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::new();
        e.uuid(&self.fsid);
        encode_string_vec(&mut e, &self.cmd);
        Payload { data: self.data.clone(), ..Payload::front(e.into_bytes(), Self::HEAD_VERSION) }
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let fsid = d.uuid()?;
        let cmd = decode_string_vec(&mut d, &mut DecodeBudget::for_input(msg.front().len()))?;
        note_trailing(&d, Self::TYPE);
        Ok(MCommand { fsid, cmd, data: msg.data().clone() })
    }
}

/// `MCommandReply`: a daemon's answer to an [`MCommand`].
///
/// Layout checked against `src/messages/MCommandReply.h` of `ceph/ceph` (stored copy at
/// commit 0ade3fe0, Nautilus era; Pacific keeps the same payload): front `errorcode32_t r`
/// (an `s32`; Linux errno values are sent as is) and `string rs` (status text); the
/// command's output is the data segment. Header v1/compat 1 (see [`MCommand`]). The
/// sender copies the request's tid. Not exercised live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MCommandReply {
    /// 0 or a negative errno.
    pub r: i32,
    /// Status text.
    pub rs: String,
    /// The command's output (the data segment).
    pub data: Bytes,
}

impl TypedMessage for MCommandReply {
    const TYPE: MsgType = MsgType::COMMAND_REPLY;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, _features: Features) -> Payload {
        let mut e = Encoder::with_capacity(8 + self.rs.len());
        e.i32(self.r).string(&self.rs);
        Payload { data: self.data.clone(), ..Payload::front(e.into_bytes(), Self::HEAD_VERSION) }
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let r = d.i32()?;
        let rs = d.string()?;
        note_trailing(&d, Self::TYPE);
        Ok(MCommandReply { r, rs, data: msg.data().clone() })
    }
}
