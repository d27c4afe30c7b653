//! [`Message`]: one Ceph message (header, front, middle, data, footer) as zero-copy
//! segments; [`Frame`]: its vectored wire form; [`MessageDecoder`]: the incremental decoder.
//!
//! # Sending
//! The session assigns `seq` and calls [`Message::encode_frame`], which yields a [`Frame`]:
//! `[Tag::MSG + 53-byte header]`, front, middle, data, footer — five slices for `writev`,
//! the payload segments shared with the message, never copied.
//!
//! # Receiving
//! The session reads the one-byte tag itself; after [`crate::wire::Tag::MSG`] it hands the
//! following bytes to a [`MessageDecoder`], in whatever chunks the socket produced:
//!
//! ```text
//!          feed()                    proceed()                 feed()…
//! AwaitHeader ──► HeaderReady(hdr) ───────────► AwaitPayload ──► AwaitFooter ──► Message
//!   (53 bytes,     caller takes a throttle       front, middle,    crcs checked   (decoder is
//!   crc + limits   budget for hdr.payload_len()  data              here           AwaitHeader
//!   checked)       then calls proceed()                                           again)
//! ```
//!
//! 1. [`MessageDecoder::feed`] with the bytes after the tag. It consumes only what it
//!    needs and returns [`Progress::NeedMore`] (everything was consumed, feed more),
//!    [`Progress::HeaderReady`] or [`Progress::Message`].
//! 2. On `HeaderReady` the decoder stops consuming: the caller reserves throttle budget
//!    (it may take a while; just stop reading) and then calls
//!    [`MessageDecoder::proceed`] (the whole payload) or [`MessageDecoder::proceed_with`]
//!    (a first window of it), and feeds again — the same unconsumed input first. With a
//!    window, the decoder takes in no more payload than allowed: when it returns
//!    `NeedMore` and [`MessageDecoder::budget_needed`] says so, the caller reserves more
//!    and calls [`MessageDecoder::grant`]. A message not to be read (a duplicate) is
//!    dropped with [`MessageDecoder::skip`] and [`MessageDecoder::skip_input`] instead.
//! 3. On `Message` the decoder is back at `AwaitHeader`; bytes left in the input belong to
//!    the next tag, which the caller reads.
//!
//! Any error leaves the decoder failed (the connection must fault); [`MessageDecoder::reset`]
//! makes it usable again.

use std::fmt;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::types::{EntityName, EntityType};
use crate::wire::{ceph_crc32c, FooterFlags, FooterFormat, MsgFooter, MsgHeader, Tag};

/// Payload segments at least this large that arrive split across reads are assembled in
/// a buffer reserved at their full length and offered for direct reads
/// ([`MessageDecoder::assembly_buffer`]); smaller ones are simply copied together.
pub const DIRECT_ASSEMBLY_MIN: usize = 64 << 10;

/// What one message held in a queue costs beyond its payload: the `Message` value
/// itself (240 bytes), the queue entry around it (connection handle, throttle permit,
/// arrival ticket), the shared header of its payload allocation and allocator slack,
/// rounded up. Charged with the payload wherever messages are bounded (the dispatch
/// throttle, the send queues), so a flood of empty messages is bounded too.
pub const MESSAGE_OVERHEAD: u64 = 512;

/// Bytes of msgr v1 framing around a message's payload: the tag, the header and the
/// (larger) footer.
pub const FRAME_OVERHEAD: u64 = (1 + MsgHeader::LEN + MsgFooter::MAX_LEN) as u64;

/// `CEPH_MSG_PRIO_LOW`.
pub const PRIO_LOW: u16 = 64;
/// `CEPH_MSG_PRIO_DEFAULT`.
pub const PRIO_DEFAULT: u16 = 127;
/// `CEPH_MSG_PRIO_HIGH`.
pub const PRIO_HIGH: u16 = 196;
/// `CEPH_MSG_PRIO_HIGHEST`.
pub const PRIO_HIGHEST: u16 = 255;

/// A Ceph message: header fields, payload segments, the received footer and the
/// timestamps the messenger fills in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message {
    msg_type: u16,
    version: u16,
    compat_version: u16,
    priority: u16,
    tid: u64,
    seq: u64,
    src: Option<EntityName>,
    data_off: u16,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
    /// The footer as received (crcs, signature, flags); default for locally built ones.
    footer: MsgFooter,
    recv_stamp: Option<Instant>,
    throttle_stamp: Option<Instant>,
    recv_complete_stamp: Option<Instant>,
    dispatch_stamp: Option<Instant>,
}

impl Message {
    /// A message of `msg_type` whose front (payload) is `front`.
    pub fn new(msg_type: u16, front: Bytes) -> Self {
        Message { msg_type, front, ..Default::default() }
    }

    /// A received message from its decoded parts.
    pub fn from_parts(
        header: &MsgHeader,
        front: Bytes,
        middle: Bytes,
        data: Bytes,
        footer: MsgFooter,
    ) -> Self {
        Message {
            msg_type: header.msg_type,
            version: header.version,
            compat_version: header.compat_version,
            priority: header.priority,
            tid: header.tid,
            seq: header.seq,
            src: Some(header.src),
            data_off: header.data_off,
            front,
            middle,
            data,
            footer,
            ..Default::default()
        }
    }

    /// The message type number (`CEPH_MSG_*`).
    pub fn msg_type(&self) -> u16 {
        self.msg_type
    }
    /// Encoding version of the payload (the message's HEAD_VERSION).
    pub fn version(&self) -> u16 {
        self.version
    }
    /// Sets the payload encoding version.
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }
    /// Oldest decoder version able to read the payload.
    pub fn compat_version(&self) -> u16 {
        self.compat_version
    }
    /// Sets the compat version (sent as is; Ceph sends 0 for some messages).
    pub fn set_compat_version(&mut self, compat_version: u16) {
        self.compat_version = compat_version;
    }
    /// Queueing priority (`PRIO_*`); 0 means "the messenger's default".
    pub fn priority(&self) -> u16 {
        self.priority
    }
    /// Sets the queueing priority.
    pub fn set_priority(&mut self, priority: u16) {
        self.priority = priority;
    }
    /// Transaction id chosen by the upper layer.
    pub fn tid(&self) -> u64 {
        self.tid
    }
    /// Sets the transaction id.
    pub fn set_tid(&mut self, tid: u64) {
        self.tid = tid;
    }
    /// Session sequence number (assigned when sent, read from the header when received).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Sets the sequence number (the session does this when it queues the message).
    pub fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
    /// The sender as named in the header; `None` for a locally built message, which
    /// the session stamps with its own name when encoding.
    pub fn src(&self) -> Option<EntityName> {
        self.src
    }
    /// Sets the sender name.
    pub fn set_src(&mut self, src: EntityName) {
        self.src = Some(src);
    }
    /// The header's `data_off`.
    pub fn data_off(&self) -> u16 {
        self.data_off
    }
    /// Sets `data_off`.
    pub fn set_data_off(&mut self, data_off: u16) {
        self.data_off = data_off;
    }
    /// The front segment.
    pub fn front(&self) -> &Bytes {
        &self.front
    }
    /// Sets the front segment.
    pub fn set_front(&mut self, front: Bytes) {
        self.front = front;
    }
    /// The middle segment.
    pub fn middle(&self) -> &Bytes {
        &self.middle
    }
    /// Sets the middle segment.
    pub fn set_middle(&mut self, middle: Bytes) {
        self.middle = middle;
    }
    /// The data segment.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
    /// Sets the data segment.
    pub fn set_data(&mut self, data: Bytes) {
        self.data = data;
    }
    /// Payload bytes (front + middle + data): what the throttles charge.
    pub fn payload_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data.len()
    }
    /// What this message costs while it waits for dispatch: its payload plus
    /// [`MESSAGE_OVERHEAD`]. The dispatch throttle is charged this much.
    pub fn queued_cost(&self) -> u64 {
        (self.payload_len() as u64).saturating_add(MESSAGE_OVERHEAD)
    }
    /// What this message costs while it waits to be sent: its framed length plus
    /// [`MESSAGE_OVERHEAD`]. The send-side bounds count this much.
    pub fn send_cost(&self) -> u64 {
        self.queued_cost().saturating_add(FRAME_OVERHEAD)
    }
    /// Copies the payload into one allocation of its own when it is smaller than
    /// `below` bytes. A received message's segments are usually slices of a large read
    /// buffer shared with other messages; a small message kept for long (queued for
    /// dispatch) would keep all of that buffer alive. Costs one copy of the payload.
    pub fn compact(&mut self, below: usize) {
        let len = self.payload_len();
        if len == 0 || len >= below {
            return;
        }
        let mut own = BytesMut::with_capacity(len);
        for seg in [&self.front, &self.middle, &self.data] {
            own.extend_from_slice(seg);
        }
        let own = own.freeze();
        let (f, m) = (self.front.len(), self.front.len() + self.middle.len());
        self.front = own.slice(..f);
        self.middle = own.slice(f..m);
        self.data = own.slice(m..);
    }
    /// The footer as received (default for a locally built message).
    pub fn footer(&self) -> &MsgFooter {
        &self.footer
    }

    /// When the first byte of this message was read (set by the messenger).
    pub fn recv_stamp(&self) -> Option<Instant> {
        self.recv_stamp
    }
    /// Records when the first byte was read.
    pub fn set_recv_stamp(&mut self, at: Instant) {
        self.recv_stamp = Some(at);
    }
    /// When throttle budget was granted.
    pub fn throttle_stamp(&self) -> Option<Instant> {
        self.throttle_stamp
    }
    /// Records when throttle budget was granted.
    pub fn set_throttle_stamp(&mut self, at: Instant) {
        self.throttle_stamp = Some(at);
    }
    /// When the last byte was read.
    pub fn recv_complete_stamp(&self) -> Option<Instant> {
        self.recv_complete_stamp
    }
    /// Records when the last byte was read.
    pub fn set_recv_complete_stamp(&mut self, at: Instant) {
        self.recv_complete_stamp = Some(at);
    }
    /// When the message was handed to a dispatcher.
    pub fn dispatch_stamp(&self) -> Option<Instant> {
        self.dispatch_stamp
    }
    /// Records when the message was handed to a dispatcher.
    pub fn set_dispatch_stamp(&mut self, at: Instant) {
        self.dispatch_stamp = Some(at);
    }

    /// The header and footer this message is sent with as message `seq`.
    ///
    /// `src` stands in when the message has none of its own. Front and middle crcs (and
    /// the header crc) are computed when `crc_header`; the data crc when `crc_data`,
    /// otherwise the footer carries `NOCRC`. The footer always has `COMPLETE`.
    pub fn encode_header(
        &self,
        seq: u64,
        src: EntityName,
        crc_header: bool,
        crc_data: bool,
    ) -> (MsgHeader, MsgFooter) {
        let mut header = MsgHeader {
            seq,
            tid: self.tid,
            msg_type: self.msg_type,
            priority: self.priority,
            version: self.version,
            front_len: len32(&self.front),
            middle_len: len32(&self.middle),
            data_len: len32(&self.data),
            data_off: self.data_off,
            src: self.src.unwrap_or(src),
            compat_version: self.compat_version,
            reserved: 0,
            crc: 0,
        };
        let mut footer = MsgFooter { flags: FooterFlags::COMPLETE, ..Default::default() };
        if crc_header {
            header = header.with_crc();
            footer.front_crc = ceph_crc32c(0, &self.front);
            footer.middle_crc = ceph_crc32c(0, &self.middle);
        }
        if crc_data {
            footer.data_crc = ceph_crc32c(0, &self.data);
        } else {
            footer.flags = footer.flags | FooterFlags::NOCRC;
        }
        (header, footer)
    }

    /// The complete wire form (tag, header, segments, footer) as message `seq`.
    pub fn encode_frame(&self, seq: u64, src: EntityName, opts: &EncodeOptions) -> Frame {
        let (header, footer) = self.encode_header(seq, src, opts.crc_header, opts.crc_data);
        Frame::new(&header, &footer, opts.footer, self)
    }
}

/// A `u32` segment length; a local segment above 4 GiB cannot be sent in msgr v1 and is
/// a caller bug, logged and clamped rather than silently wrapped.
fn len32(b: &Bytes) -> u32 {
    u32::try_from(b.len()).unwrap_or_else(|_| {
        log::error!(target: "msgr::message", "segment of {} bytes exceeds u32", b.len());
        u32::MAX
    })
}

impl fmt::Debug for Message {
    /// Never prints payload bytes, only their lengths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("type", &self.msg_type)
            .field("version", &self.version)
            .field("compat", &self.compat_version)
            .field("priority", &self.priority)
            .field("tid", &self.tid)
            .field("seq", &self.seq)
            .field("src", &self.src.map(|s| s.to_string()))
            .field("front_len", &self.front.len())
            .field("middle_len", &self.middle.len())
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// How a connection sends messages (Ceph's `ms_crc_header`, `ms_crc_data`, MSG_AUTH).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Compute header, front and middle crcs (`ms_crc_header`, default true).
    pub crc_header: bool,
    /// Compute the data crc (`ms_crc_data`, default true).
    pub crc_data: bool,
    /// Footer format from the negotiated features.
    pub footer: FooterFormat,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { crc_header: true, crc_data: true, footer: FooterFormat::New }
    }
}

/// A message in wire form: five slices for vectored writes; payloads are shared, not copied.
#[derive(Clone, Debug)]
pub struct Frame {
    /// `Tag::MSG` + the 53-byte header.
    head: [u8; 1 + MsgHeader::LEN],
    front: Bytes,
    middle: Bytes,
    data: Bytes,
    footer: [u8; MsgFooter::MAX_LEN],
    footer_len: usize,
}

impl Frame {
    /// Assembles a frame from an encoded header/footer and the message's segments.
    pub fn new(
        header: &MsgHeader,
        footer: &MsgFooter,
        format: FooterFormat,
        msg: &Message,
    ) -> Self {
        let mut head = [0u8; 1 + MsgHeader::LEN];
        head[0] = Tag::MSG.0;
        head[1..].copy_from_slice(&header.to_bytes());
        let (footer, footer_len) = footer.to_bytes(format);
        Frame {
            head,
            front: msg.front.clone(),
            middle: msg.middle.clone(),
            data: msg.data.clone(),
            footer,
            footer_len,
        }
    }

    /// The five slices in wire order: tag+header, front, middle, data, footer.
    pub fn slices(&self) -> [&[u8]; 5] {
        [&self.head, &self.front, &self.middle, &self.data, &self.footer[..self.footer_len]]
    }

    /// The slices still to write after `written` bytes went out (for partial writes);
    /// fully written slices come back empty.
    pub fn slices_after(&self, mut written: usize) -> [&[u8]; 5] {
        let mut out = self.slices();
        for s in out.iter_mut() {
            let skip = written.min(s.len());
            *s = &s[skip..];
            written -= skip;
        }
        out
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.slices().iter().map(|s| s.len()).sum()
    }

    /// Never true: a frame always has a tag and a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the whole frame to `out` (copies; for tests and small control paths).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for s in self.slices() {
            out.extend_from_slice(s);
        }
    }
}

/// Upper bounds on the segment lengths a peer may announce, checked before allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest front.
    pub max_front: u32,
    /// Largest middle.
    pub max_middle: u32,
    /// Largest data segment.
    pub max_data: u32,
}

impl Default for DecodeLimits {
    /// 64 MiB front (the largest monitor payloads, full OSDMaps of big clusters, are tens
    /// of MiB), 16 MiB middle (unused by everything we speak), 256 MiB data (Ceph's
    /// largest object writes are ~90 MiB, `osd_max_write_size`).
    fn default() -> Self {
        DecodeLimits { max_front: 64 << 20, max_middle: 16 << 20, max_data: 256 << 20 }
    }
}

/// How a connection receives messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Length limits.
    pub limits: DecodeLimits,
    /// Crc settings; `crc_header` checks header, front and middle crcs, `crc_data` the
    /// data crc (unless the footer says `NOCRC`), as Ceph's receiver does.
    pub crc: EncodeOptions,
}

/// What one [`MessageDecoder::feed`] call achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// All input was consumed; feed more. (With a limited allowance
    /// ([`MessageDecoder::proceed_with`]) also when the allowance ran out before the
    /// payload did: then input may be left, and [`MessageDecoder::budget_needed`] says
    /// how much payload is not yet covered.)
    NeedMore,
    /// The header is decoded and checked; reserve budget, call
    /// [`MessageDecoder::proceed`] (or [`MessageDecoder::skip`] for a message to drop),
    /// then feed again. Input after the header was left.
    HeaderReady(MsgHeader),
    /// A complete, verified message; input after its footer was left.
    Message(Message),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    AwaitHeader,
    HeaderReady,
    AwaitFront,
    AwaitMiddle,
    AwaitData,
    AwaitFooter,
    /// Dropping a message as it streams in ([`MessageDecoder::skip`]): this many bytes
    /// of payload and footer are still to come.
    Skipping {
        left: u64,
    },
    Failed,
}

/// Incremental decoder of the bytes after a `Tag::MSG` (see the module docs for the
/// call order).
///
/// # Memory
/// What a message being received holds is bounded by what its sender actually sent
/// and what the caller allowed: payload bytes are taken in only up to the allowance
/// given with [`MessageDecoder::proceed_with`] and [`MessageDecoder::grant`] (the
/// caller charges it to its throttles first), and a segment arriving in pieces is
/// assembled in a buffer that grows with the allowance, never reserved at its announced
/// length. A skipped message ([`MessageDecoder::skip`]) is dropped as it streams in.
#[derive(Debug)]
pub struct MessageDecoder {
    opts: DecodeOptions,
    stage: Stage,
    /// Bytes of the current piece that arrived split across chunks. Grows only with
    /// bytes actually received (and, for a payload segment, within the allowance), never
    /// from an announced length.
    partial: BytesMut,
    /// Bytes of `partial` already counted against `allowance` (the rest were read into
    /// its spare capacity directly: [`MessageDecoder::assembly_buffer`]).
    partial_counted: usize,
    /// Payload bytes the decoder may still take in for the current message.
    allowance: u64,
    /// Payload bytes of the current message not yet taken in.
    payload_left: u64,
    /// Valid from `HeaderReady` on.
    header: MsgHeader,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
}

impl MessageDecoder {
    /// A decoder awaiting a header.
    pub fn new(opts: DecodeOptions) -> Self {
        MessageDecoder {
            opts,
            stage: Stage::AwaitHeader,
            partial: BytesMut::new(),
            partial_counted: 0,
            allowance: 0,
            payload_left: 0,
            header: MsgHeader::default(),
            front: Bytes::new(),
            middle: Bytes::new(),
            data: Bytes::new(),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &DecodeOptions {
        &self.opts
    }

    /// Changes the options (e.g. the footer format once features are negotiated).
    /// Takes effect for the next message.
    pub fn set_options(&mut self, opts: DecodeOptions) {
        self.opts = opts;
    }

    /// The decoded header, once `HeaderReady` was returned and until the message completes.
    pub fn header(&self) -> Option<&MsgHeader> {
        match self.stage {
            Stage::AwaitHeader | Stage::Failed | Stage::Skipping { .. } => None,
            _ => Some(&self.header),
        }
    }

    /// True between messages with nothing buffered.
    pub fn is_idle(&self) -> bool {
        self.stage == Stage::AwaitHeader && self.partial.is_empty()
    }

    /// Bytes of memory the decoder holds for the message in progress (its assembly
    /// buffer's capacity and the segments taken so far).
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.front.len() + self.middle.len() + self.data.len()
    }

    /// Forgets any partial message and failure; awaits a header again.
    pub fn reset(&mut self) {
        self.stage = Stage::AwaitHeader;
        self.partial = BytesMut::new();
        self.partial_counted = 0;
        self.allowance = 0;
        self.payload_left = 0;
        self.front = Bytes::new();
        self.middle = Bytes::new();
        self.data = Bytes::new();
    }

    /// Lets the decoder read the whole payload after `HeaderReady` (no allowance limit).
    pub fn proceed(&mut self) -> Result<()> {
        self.proceed_with(u64::MAX)
    }

    /// Lets the decoder read the payload after `HeaderReady`, taking in at most
    /// `allowance` payload bytes until [`MessageDecoder::grant`] allows more.
    pub fn proceed_with(&mut self, allowance: u64) -> Result<()> {
        if self.stage != Stage::HeaderReady {
            return Err(Error::Misuse("MessageDecoder::proceed without HeaderReady"));
        }
        self.stage = Stage::AwaitFront;
        self.allowance = allowance;
        self.payload_left = self.header.payload_len();
        Ok(())
    }

    /// Allows `more` payload bytes of the current message.
    pub fn grant(&mut self, more: u64) {
        self.allowance = self.allowance.saturating_add(more);
    }

    /// While a message's payload is being read: how many of its payload bytes the
    /// allowance does not cover yet, if the decoder cannot go on without more
    /// ([`MessageDecoder::grant`]). `None` when it can.
    pub fn budget_needed(&self) -> Option<u64> {
        if !self.in_payload() || self.allowance > 0 {
            return None;
        }
        let uncovered = self.payload_left.saturating_sub(self.uncounted() as u64);
        (uncovered > 0).then_some(uncovered)
    }

    /// Drops the message announced by `HeaderReady` instead of reading it: its payload
    /// and footer are consumed by [`MessageDecoder::skip_input`] as they arrive and
    /// never stored, whatever length the header announced.
    pub fn skip(&mut self) -> Result<()> {
        if self.stage != Stage::HeaderReady {
            return Err(Error::Misuse("MessageDecoder::skip without HeaderReady"));
        }
        let footer = self.opts.crc.footer.encoded_len() as u64;
        self.stage = Stage::Skipping { left: self.header.payload_len() + footer };
        Ok(())
    }

    /// While skipping: consumes the skipped message's bytes from the front of `input`.
    /// Returns true once all of them went by (the decoder then awaits a header again;
    /// input after them is left).
    pub fn skip_input(&mut self, input: &mut Bytes) -> Result<bool> {
        let Stage::Skipping { left } = self.stage else {
            return Err(Error::Misuse("MessageDecoder::skip_input without skip"));
        };
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
        input.advance(n);
        let left = left - n as u64;
        self.stage = if left == 0 { Stage::AwaitHeader } else { Stage::Skipping { left } };
        Ok(left == 0)
    }

    /// Consumes bytes from the front of `input` (advancing it) and reports progress.
    pub fn feed(&mut self, input: &mut Bytes) -> Result<Progress> {
        let r = self.step(input);
        if r.is_err() {
            self.stage = Stage::Failed;
            self.partial = BytesMut::new();
            self.partial_counted = 0;
        }
        r
    }

    fn step(&mut self, input: &mut Bytes) -> Result<Progress> {
        self.count_direct_reads();
        loop {
            match self.stage {
                Stage::Failed => return Err(Error::Misuse("MessageDecoder used after an error")),
                Stage::Skipping { .. } => {
                    return Err(Error::Misuse("MessageDecoder::feed while skipping"))
                }
                Stage::HeaderReady => return Ok(Progress::HeaderReady(self.header)),
                Stage::AwaitHeader => {
                    let Some(raw) = self.take(input, MsgHeader::LEN) else {
                        return Ok(Progress::NeedMore);
                    };
                    let (header, _) = MsgHeader::decode(&raw)?;
                    self.check_header(&header)?;
                    log::trace!(target: "msgr::message", "header seq {} type {} front {} middle {} data {}",
                        header.seq, header.msg_type, header.front_len, header.middle_len, header.data_len);
                    self.header = header;
                    self.stage = Stage::HeaderReady;
                    return Ok(Progress::HeaderReady(header));
                }
                Stage::AwaitFront => {
                    let Some(b) = self.take(input, self.header.front_len as usize) else {
                        return Ok(Progress::NeedMore);
                    };
                    self.front = b;
                    self.stage = Stage::AwaitMiddle;
                }
                Stage::AwaitMiddle => {
                    let Some(b) = self.take(input, self.header.middle_len as usize) else {
                        return Ok(Progress::NeedMore);
                    };
                    self.middle = b;
                    self.stage = Stage::AwaitData;
                }
                Stage::AwaitData => {
                    let Some(b) = self.take(input, self.header.data_len as usize) else {
                        return Ok(Progress::NeedMore);
                    };
                    self.data = b;
                    self.stage = Stage::AwaitFooter;
                }
                Stage::AwaitFooter => {
                    let format = self.opts.crc.footer;
                    let Some(raw) = self.take(input, format.encoded_len()) else {
                        return Ok(Progress::NeedMore);
                    };
                    let (footer, _) = MsgFooter::decode(&raw, format)?;
                    self.check_footer(&footer)?;
                    let msg = Message::from_parts(
                        &self.header,
                        std::mem::take(&mut self.front),
                        std::mem::take(&mut self.middle),
                        std::mem::take(&mut self.data),
                        footer,
                    );
                    self.stage = Stage::AwaitHeader;
                    self.allowance = 0;
                    return Ok(Progress::Message(msg));
                }
            }
        }
    }

    fn in_payload(&self) -> bool {
        matches!(self.stage, Stage::AwaitFront | Stage::AwaitMiddle | Stage::AwaitData)
    }

    /// The length of the payload segment being read (0 outside the payload).
    fn segment_len(&self) -> usize {
        (match self.stage {
            Stage::AwaitFront => self.header.front_len,
            Stage::AwaitMiddle => self.header.middle_len,
            Stage::AwaitData => self.header.data_len,
            _ => 0,
        }) as usize
    }

    /// Bytes read into `partial` directly and not yet counted against the allowance.
    fn uncounted(&self) -> usize {
        self.partial.len().saturating_sub(self.partial_counted)
    }

    /// Counts bytes a driver read straight into the assembly buffer.
    fn count_direct_reads(&mut self) {
        let n = self.uncounted() as u64;
        if n > 0 && self.in_payload() {
            self.allowance = self.allowance.saturating_sub(n);
            self.payload_left = self.payload_left.saturating_sub(n);
        }
        self.partial_counted = self.partial.len();
    }

    /// While a large payload segment (at least [`DIRECT_ASSEMBLY_MIN`] bytes) is being
    /// assembled from pieces, the buffer it grows in and how many bytes may be read
    /// into it now (at most what the segment still needs and the allowance covers).
    /// A driver may read up to that many bytes straight into the buffer's spare
    /// capacity and then call [`MessageDecoder::feed`] with an empty input: the segment
    /// is then never copied together. `None` otherwise.
    pub fn assembly_buffer(&mut self) -> Option<(&mut BytesMut, usize)> {
        let n = self.segment_len();
        if n < DIRECT_ASSEMBLY_MIN || self.partial.is_empty() || self.partial.len() >= n {
            return None;
        }
        let room = self.allowance.saturating_sub(self.uncounted() as u64);
        let need = (n - self.partial.len()).min(usize::try_from(room).unwrap_or(usize::MAX));
        if need == 0 {
            return None;
        }
        Some((&mut self.partial, need))
    }

    /// Takes exactly `n` bytes: a zero-copy slice when they are all in `input` and
    /// nothing is pending, else accumulates into `partial` (copying only then). In the
    /// payload, takes no more than the allowance.
    fn take(&mut self, input: &mut Bytes, n: usize) -> Option<Bytes> {
        let payload = self.in_payload();
        let allowed = if payload {
            usize::try_from(self.allowance).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        if self.partial.is_empty() && input.len() >= n && n <= allowed {
            if payload {
                self.allowance -= n as u64;
                self.payload_left = self.payload_left.saturating_sub(n as u64);
            }
            return Some(input.split_to(n));
        }
        let want = (n - self.partial.len()).min(allowed);
        if payload
            && n >= DIRECT_ASSEMBLY_MIN
            && self.partial.capacity() - self.partial.len() < want
        {
            // A large segment split across reads: its buffer grows with the allowance
            // (which the caller charged before granting), never to the announced
            // length up front, so the driver can read straight into it
            // (`assembly_buffer`) and it is not copied together later.
            self.partial.reserve(want);
        }
        let now = want.min(input.len());
        self.partial.extend_from_slice(&input[..now]);
        input.advance(now);
        self.partial_counted = self.partial.len();
        if payload {
            self.allowance -= now as u64;
            self.payload_left = self.payload_left.saturating_sub(now as u64);
        }
        if self.partial.len() == n {
            self.partial_counted = 0;
            Some(self.partial.split().freeze())
        } else {
            None
        }
    }

    fn check_header(&self, h: &MsgHeader) -> Result<()> {
        if self.opts.crc.crc_header {
            h.verify_crc()?;
        }
        let l = &self.opts.limits;
        for (what, len, limit) in [
            ("front", h.front_len, l.max_front),
            ("middle", h.middle_len, l.max_middle),
            ("data", h.data_len, l.max_data),
        ] {
            if len > limit {
                return Err(Error::TooLarge { what, len: len.into(), limit: limit.into() });
            }
        }
        Ok(())
    }

    fn check_footer(&self, f: &MsgFooter) -> Result<()> {
        if !f.flags.contains(FooterFlags::COMPLETE) {
            return Err(Error::Aborted);
        }
        let check = |what, expected, seg: &Bytes| {
            let got = ceph_crc32c(0, seg);
            if got == expected {
                Ok(())
            } else {
                Err(Error::BadCrc { what, expected, got })
            }
        };
        if self.opts.crc.crc_header {
            check("front", f.front_crc, &self.front)?;
            check("middle", f.middle_crc, &self.middle)?;
        }
        if self.opts.crc.crc_data && !f.flags.contains(FooterFlags::NOCRC) {
            check("data", f.data_crc, &self.data)?;
        }
        Ok(())
    }
}

/// The name a session uses for locally built messages before it knows better.
pub const UNNAMED_CLIENT: EntityName = EntityName { ty: EntityType::CLIENT, num: EntityName::NEW };

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::new(17, Bytes::from_static(b"front bytes"));
        m.set_version(1);
        m.set_compat_version(1);
        m.set_priority(PRIO_DEFAULT);
        m.set_tid(9);
        m.set_middle(Bytes::from_static(b"mid"));
        m.set_data(Bytes::from(vec![7u8; 100]));
        m
    }

    fn decode_all(bytes: &[u8], opts: DecodeOptions) -> Result<Message> {
        let mut dec = MessageDecoder::new(opts);
        let mut input = Bytes::copy_from_slice(bytes);
        loop {
            match dec.feed(&mut input)? {
                Progress::NeedMore => return Err(Error::Truncated { need: 1, have: 0 }),
                Progress::HeaderReady(_) => dec.proceed()?,
                Progress::Message(m) => {
                    assert!(input.is_empty());
                    return Ok(m);
                }
            }
        }
    }

    #[test]
    fn frame_round_trips_without_copying_payload() {
        let m = sample();
        let frame = m.encode_frame(5, UNNAMED_CLIENT, &EncodeOptions::default());
        assert_eq!(frame.slices()[1].as_ptr(), m.front().as_ptr());
        assert_eq!(frame.slices()[3].as_ptr(), m.data().as_ptr());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        assert_eq!(wire.len(), frame.len());
        assert_eq!(wire[0], Tag::MSG.0);
        let got = decode_all(&wire[1..], DecodeOptions::default()).unwrap();
        assert_eq!(got.seq(), 5);
        assert_eq!(got.src(), Some(UNNAMED_CLIENT));
        assert_eq!((got.front(), got.middle(), got.data()), (m.front(), m.middle(), m.data()));
        assert_eq!((got.tid(), got.msg_type(), got.version()), (9, 17, 1));
        assert!(got.footer().flags.contains(FooterFlags::COMPLETE));
    }

    #[test]
    fn whole_segments_are_sliced_not_copied() {
        let frame = sample().encode_frame(1, UNNAMED_CLIENT, &EncodeOptions::default());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        let mut input = Bytes::from(wire).slice(1..);
        let base = input.as_ptr() as usize;
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
        dec.proceed().unwrap();
        let Progress::Message(m) = dec.feed(&mut input).unwrap() else { panic!("no message") };
        assert_eq!(m.front().as_ptr() as usize, base + MsgHeader::LEN);
    }

    #[test]
    fn slices_after_partial_write() {
        let frame = sample().encode_frame(1, UNNAMED_CLIENT, &EncodeOptions::default());
        let all: Vec<u8> = frame.slices().concat();
        for written in [0, 1, 54, 60, 65, frame.len() - 1, frame.len()] {
            let rest: Vec<u8> = frame.slices_after(written).concat();
            assert_eq!(rest, all[written..]);
        }
    }

    #[test]
    fn old_footer_and_no_data_crc() {
        let opts = EncodeOptions { crc_header: true, crc_data: false, footer: FooterFormat::Old };
        let frame = sample().encode_frame(2, UNNAMED_CLIENT, &opts);
        assert_eq!(frame.slices()[4].len(), 13);
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        let m = decode_all(&wire[1..], DecodeOptions { crc: opts, ..Default::default() }).unwrap();
        assert!(m.footer().flags.contains(FooterFlags::NOCRC));
        // A receiver that wants data crcs honours NOCRC.
        let strict = EncodeOptions { crc_data: true, ..opts };
        decode_all(&wire[1..], DecodeOptions { crc: strict, ..Default::default() }).unwrap();
    }

    #[test]
    fn errors_are_typed() {
        let frame = sample().encode_frame(1, UNNAMED_CLIENT, &EncodeOptions::default());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        let body = &wire[1..];
        let opts = DecodeOptions::default();

        let mut bad = body.to_vec();
        bad[0] ^= 1;
        assert!(matches!(decode_all(&bad, opts), Err(Error::BadCrc { what: "header", .. })));
        let mut bad = body.to_vec();
        bad[MsgHeader::LEN] ^= 1;
        assert!(matches!(decode_all(&bad, opts), Err(Error::BadCrc { what: "front", .. })));
        let mut bad = body.to_vec();
        let data_at = MsgHeader::LEN + 11 + 3;
        bad[data_at] ^= 1;
        assert!(matches!(decode_all(&bad, opts), Err(Error::BadCrc { what: "data", .. })));
        let mut bad = body.to_vec();
        *bad.last_mut().unwrap() = 0;
        assert_eq!(decode_all(&bad, opts), Err(Error::Aborted));

        let tight = DecodeOptions {
            limits: DecodeLimits { max_front: 4, ..Default::default() },
            ..Default::default()
        };
        assert!(matches!(decode_all(body, tight), Err(Error::TooLarge { what: "front", .. })));

        let mut dec = MessageDecoder::new(opts);
        assert!(matches!(dec.proceed(), Err(Error::Misuse(_))));
    }

    #[test]
    fn header_ready_holds_until_proceed() {
        let frame = sample().encode_frame(1, UNNAMED_CLIENT, &EncodeOptions::default());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        let mut input = Bytes::from(wire).slice(1..);
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let Progress::HeaderReady(h) = dec.feed(&mut input).unwrap() else { panic!() };
        assert_eq!(h.payload_len(), 114);
        let left = input.len();
        assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
        assert_eq!(input.len(), left, "nothing consumed before proceed()");
        assert_eq!(dec.header().map(|h| h.seq), Some(1));
    }

    fn wire_of(m: &Message) -> Bytes {
        let frame = m.encode_frame(1, UNNAMED_CLIENT, &EncodeOptions::default());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        Bytes::from(wire).slice(1..)
    }

    #[test]
    fn a_skipped_message_streams_by_unstored() {
        let mut m = Message::new(17, Bytes::from(vec![3u8; 5000]));
        m.set_data(Bytes::from(vec![4u8; 200_000]));
        let mut input = wire_of(&m);
        let next = wire_of(&sample());
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
        dec.skip().unwrap();
        let mut done = false;
        while !input.is_empty() {
            let mut piece = input.split_to(input.len().min(999));
            done = dec.skip_input(&mut piece).unwrap();
            assert!(piece.is_empty());
            assert_eq!(dec.held_bytes(), 0, "a skipped message is never stored");
        }
        assert!(done && dec.is_idle());
        let mut next = next;
        assert!(matches!(dec.feed(&mut next).unwrap(), Progress::HeaderReady(_)));
    }

    #[test]
    fn the_allowance_bounds_what_a_message_takes_in() {
        let mut m = Message::new(17, Bytes::from(vec![3u8; 100]));
        m.set_data(Bytes::from(vec![4u8; 1 << 20]));
        let wire = wire_of(&m);
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let mut input = wire.clone();
        assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
        dec.proceed_with(64 << 10).unwrap();
        // Fed in 4 KiB pieces (so the data segment is assembled): it stops at the window.
        let mut granted = 64u64 << 10;
        let mut got = None;
        while got.is_none() {
            let mut piece = input.split_to(input.len().min(4096));
            loop {
                match dec.feed(&mut piece).unwrap() {
                    Progress::Message(m) => {
                        got = Some(m);
                        break;
                    }
                    Progress::NeedMore => {
                        if let Some(uncovered) = dec.budget_needed() {
                            assert!(dec.held_bytes() as u64 <= 2 * granted + 4096);
                            let more = uncovered.min(granted);
                            dec.grant(more);
                            granted += more;
                            continue;
                        }
                        break;
                    }
                    Progress::HeaderReady(_) => panic!("second header"),
                }
            }
            assert!(piece.is_empty());
        }
        assert_eq!(granted, m.payload_len() as u64);
        let got = got.unwrap();
        assert_eq!((got.front(), got.data()), (m.front(), m.data()));
    }

    #[test]
    fn compact_copies_small_payloads_out_of_a_shared_buffer() {
        let shared = Bytes::from(vec![1u8; 64 << 10]);
        let range = shared.as_ptr() as usize..shared.as_ptr() as usize + shared.len();
        let mut m = Message::new(17, shared.slice(0..10));
        m.set_middle(shared.slice(10..13));
        m.set_data(shared.slice(100..200));
        let before = (m.front().clone(), m.middle().clone(), m.data().clone());
        m.compact(1 << 10);
        for seg in [m.front(), m.middle(), m.data()] {
            assert!(!range.contains(&(seg.as_ptr() as usize)), "still a slice of the buffer");
        }
        assert_eq!((m.front(), m.middle(), m.data()), (&before.0, &before.1, &before.2));
        // At the threshold and above it stays a zero-copy slice.
        let mut big = Message::new(17, shared.slice(0..1024));
        big.compact(1 << 10);
        assert!(range.contains(&(big.front().as_ptr() as usize)));
    }
}
