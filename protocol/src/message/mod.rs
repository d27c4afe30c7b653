//! [`Message`]: one Ceph message (header, front, middle, data, footer) as zero-copy
//! segments; [`Frame`]: its vectored msgr v1 wire form (`frame.rs`, the one encoder);
//! [`MessageDecoder`]: the incremental v1 decoder (`decoder.rs`).
//!
//! # Sending
//! The session assigns `seq` and calls [`Message::push_frame_to`] (signing the footer
//! when its session signs), which appends to a write list what a [`Frame`] holds:
//! `[Tag::MSG + 53-byte header]`, front, middle, data, footer; a payload segment of 4 KiB
//! or more shared with the message, a shorter one copied beside its header. This is the
//! one v1 message encoder: what [`crate::Machine::poll_transmit`] writes, and what the
//! golden vectors test ([`Message::encode_frame_with`], [`Message::encode_frame`] and
//! [`Frame::write_to`] lay frames out through the same code).
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
//! A caller that can decide from the header alone may feed with
//! [`MessageDecoder::feed_admitting`] instead: when a message's header, payload and footer
//! are all in the input, its `admit` is asked with the checked header, and on yes the
//! whole message comes back from that one call, as if `proceed_with` had allowed exactly
//! its payload; otherwise it stops at `HeaderReady` as above. The v1 session admits a
//! message that is no duplicate and that its receive credit covers.
//!
//! Any error leaves the decoder failed (the connection must fault); [`MessageDecoder::reset`]
//! makes it usable again.

mod decoder;
mod frame;
mod lent;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::thread::LocalKey;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use pool_box::{FreeList, PoolBox, Pooled, Slot};

use crate::types::{EntityName, EntityType};
use crate::wire::{MsgFooter, MsgHeader};

/// Payload segments at least this large that arrive split across reads are assembled in
/// a buffer of their own, grown as the receive budget admits them (never past their length), and
/// offered for direct reads ([`MessageDecoder::assembly_buffer`]); smaller ones are
/// simply copied together.
pub const DIRECT_ASSEMBLY_MIN: usize = 64 << 10;

/// A payload segment shorter than this, taken as a slice of its read while the rest of
/// its message is still to come, is copied into a buffer of its own (msgr v1 and msgr2's
/// crc mode): a message in progress is charged its payload's windows, and a slice it
/// kept while waiting for more input pinned the whole shared read buffer the slice came
/// in (64 KiB, for a message whose first window is 4.5 KiB, per connection). Longer
/// segments hold about what they pin.
pub(crate) const OWN_COPY_BELOW: usize = 16 << 10;

/// `segment`'s bytes in an allocation of their own ([`OWN_COPY_BELOW`]).
#[cold]
pub(crate) fn own_copy(segment: &[u8]) -> Bytes {
    Bytes::copy_from_slice(segment)
}

/// Makes room in `buf`, a large segment's assembly buffer, for `want` more bytes,
/// doubling its capacity as `BytesMut::reserve` does (so a segment admitted window by
/// window is reallocated once per doubling), but never past `limit` bytes in all (the
/// segment's length): `reserve`'s doubling alone took a 65 MiB segment's buffer to
/// 128 MiB, held by the message it became while only its length was charged. A no-op
/// when the spare capacity already suffices.
pub(crate) fn grow_within(buf: &mut BytesMut, want: usize, limit: usize) {
    let need = buf.len().saturating_add(want);
    if buf.capacity() >= need {
        return;
    }
    let target = buf.capacity().saturating_mul(2).max(need).min(limit.max(need));
    // A `BytesMut` that owns its whole buffer (an assembly buffer always does) becomes a
    // `Vec` and back (through a unique `Bytes`) without a copy of its bytes, and
    // `reserve_exact` reallocates to `target` exactly, where `reserve` would double.
    let mut v = Vec::from(std::mem::take(buf));
    v.reserve_exact(target - v.len());
    *buf = BytesMut::from(Bytes::from(v));
}

/// What one message held in a queue costs beyond its payload: the `Message` and the
/// allocation of its fields (~200 bytes), the queue entry around it (connection handle,
/// throttle permit, arrival ticket), the shared header of its payload allocation and
/// allocator slack, rounded up. Charged with the payload wherever messages are bounded (the dispatch
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
///
/// A message is moved many times on its way through the messenger (decoder, event
/// queue, driver, dispatcher; handle, mailbox, out queue, encoder): about twenty moves
/// per message, each a `memcpy` call while the fields were held inline (168 bytes, past
/// what the compiler copies inline), ~17 % of the CPU of a 64 B round trip. So a message
/// is one pointer to its fields: one allocation per message (as Ceph's are), and every
/// move copies 8 bytes.
///
/// The allocation is a [`PoolBox`]: a dropped message's goes to a free list of the
/// dropping thread (`FIELDS`) for the next message built or decoded there, instead of
/// back to malloc. Why: each end of a 64 B round trip built one message and dropped one,
/// and glibc's malloc and free of them were ~250 instructions of the round trip's ~4,800.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message(PoolBox<Fields>);

thread_local! {
    /// Allocations of messages dropped on this thread, for the next built here (at most
    /// [`pool_box::KEEP`]; beyond that a drop frees).
    static FIELDS: FreeList<Fields> = const { FreeList::new() };
}

impl Pooled for Fields {
    fn free_list() -> &'static LocalKey<FreeList<Self>> {
        &FIELDS
    }
}

/// What a [`Message`] holds, behind the one pointer that moves.
#[derive(Clone, Default, PartialEq, Eq)]
struct Fields {
    msg_type: u16,
    version: u16,
    compat_version: u16,
    priority: u16,
    data_off: u16,
    /// The sender's type; `None` for a locally built message (see [`Message::src`]).
    src_type: Option<EntityType>,
    /// The sender's number (meaningless while `src_type` is `None`).
    src_num: i64,
    tid: u64,
    seq: u64,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
    /// The footer as received (crcs, signature, flags); default for locally built ones.
    footer: MsgFooter,
    recv_stamp: Option<Instant>,
    dispatch_stamp: Option<Instant>,
    /// What a received message holds of its connection's policy throttlers, if any.
    charge: Charge,
}

/// What a received message holds of its connection's policy throttlers (Ceph's
/// `byte_throttler` and `msg_throttler` on a `Message`): its message count and its
/// bytes, charged while it was read and released when the message is dropped, or
/// earlier, part by part, through [`Message::release_message_throttle`],
/// [`Message::clear_payload`] and [`Message::clear_data`].
///
/// The messenger attaches it (the throttles live in a crate above this one, so the
/// message sees them only through this trait); a dispatcher never needs to implement
/// it. Dropping the charge releases whatever it still holds.
///
/// The charge follows the received `Message` object, wherever it goes:
/// - sent on as it is (an echo, a forward) over a lossless session, the message waits
///   in that session's sent queue until the peer acknowledges it, and holds its charge
///   meanwhile, as Ceph's `Message` held by its connection's sent list does. When the
///   peer is of the same throttled type (a reply to the sender), its acknowledgement
///   can come behind the peer's next message, which waits for the charge: a stall.
///   Build a new message for a reply, or take the charge out first
///   ([`Message::take_throttle_charge`]);
/// - a typed decode ([`crate::messages::decode_any`],
///   [`crate::messages::TypedMessage::from_message`]) reads a `&Message` and carries
///   no charge (nor does the clone in [`crate::messages::AnyMessage::Raw`]): a
///   dispatcher that keeps only the decoded form gives the back-pressure up when it
///   drops the raw message, unless it keeps the charge with what it keeps
///   ([`Message::take_throttle_charge`]).
pub trait ThrottleCharge: Send + Sync {
    /// Releases the message count, if still held (Ceph's `msg_throttler->put()`).
    fn release_count(&mut self);
    /// Releases up to `bytes` of the byte charge (no more than it still holds).
    fn release_bytes(&mut self, bytes: u64);
}

/// A message's [`ThrottleCharge`] slot. Not part of the message's value: a clone has
/// none (the charge stays with the message that was received, counted once), and
/// equality ignores it.
///
/// Asserted unwind safe, so that a `Message` stays `UnwindSafe` and `RefUnwindSafe`
/// (`catch_unwind` around a decode is a common pattern; a `dyn ThrottleCharge` is
/// neither). Sound: nothing reads the charge's state back through the message (only
/// whether there is one), and a panic inside one of its releases can at worst leave
/// it holding what it was releasing, which its drop gives back.
#[derive(Default)]
struct Charge(AssertUnwindSafe<Option<Box<dyn ThrottleCharge>>>);

impl Charge {
    /// No charge.
    const NONE: Charge = Charge(AssertUnwindSafe(None));
}

impl Clone for Charge {
    fn clone(&self) -> Self {
        Charge::NONE
    }
}

impl PartialEq for Charge {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Charge {}

impl Message {
    /// A message of `msg_type` whose front (payload) is `front`.
    // Inlinable into other crates (a dispatcher building its reply): as a call, with
    // `set_data`'s, ~75 more instructions per 64 B round trip under callgrind.
    #[inline]
    pub fn new(msg_type: u16, front: Bytes) -> Self {
        // Every field written out: `..Default::default()` builds a whole default
        // message and drops what it replaces, per message (seen in profiles). Built in
        // the allocation taken first (with `PoolBox::new`, built aside and copied in;
        // with `PoolBox::new_with`, the parts copied into its closure and out again).
        Message(Slot::take().fill(Fields {
            msg_type,
            version: 0,
            compat_version: 0,
            priority: 0,
            data_off: 0,
            src_type: None,
            src_num: 0,
            tid: 0,
            seq: 0,
            front,
            middle: Bytes::new(),
            data: Bytes::new(),
            footer: MsgFooter::default(),
            recv_stamp: None,
            dispatch_stamp: None,
            charge: Charge::NONE,
        }))
    }

    /// A received message from its decoded parts.
    // Always inlined (into the decoder's per-message path): as a call, the three
    // segments were built on the stack, passed by reference and copied again into the
    // message; inlined, they go straight into it (~90 fewer instructions per 64 B round
    // trip under callgrind). `#[inline]` alone left it a call.
    #[inline(always)]
    pub fn from_parts(
        header: &MsgHeader,
        front: Bytes,
        middle: Bytes,
        data: Bytes,
        footer: MsgFooter,
    ) -> Self {
        // Built in place, as in `new`.
        Message(Slot::take().fill(Fields {
            msg_type: header.msg_type,
            version: header.version,
            compat_version: header.compat_version,
            priority: header.priority,
            tid: header.tid,
            seq: header.seq,
            src_type: Some(header.src.ty),
            src_num: header.src.num,
            data_off: header.data_off,
            front,
            middle,
            data,
            footer,
            recv_stamp: None,
            dispatch_stamp: None,
            charge: Charge::NONE,
        }))
    }

    /// The message type number (`CEPH_MSG_*`).
    pub fn msg_type(&self) -> u16 {
        self.0.msg_type
    }
    /// Encoding version of the payload (the message's HEAD_VERSION).
    pub fn version(&self) -> u16 {
        self.0.version
    }
    /// Sets the payload encoding version.
    pub fn set_version(&mut self, version: u16) {
        self.0.version = version;
    }
    /// Oldest decoder version able to read the payload.
    pub fn compat_version(&self) -> u16 {
        self.0.compat_version
    }
    /// Sets the compat version (sent as is; Ceph sends 0 for some messages).
    pub fn set_compat_version(&mut self, compat_version: u16) {
        self.0.compat_version = compat_version;
    }
    /// Queueing priority (`PRIO_*`); 0 means "the messenger's default".
    pub fn priority(&self) -> u16 {
        self.0.priority
    }
    /// Sets the queueing priority.
    pub fn set_priority(&mut self, priority: u16) {
        self.0.priority = priority;
    }
    /// Transaction id chosen by the upper layer.
    pub fn tid(&self) -> u64 {
        self.0.tid
    }
    /// Sets the transaction id.
    pub fn set_tid(&mut self, tid: u64) {
        self.0.tid = tid;
    }
    /// Session sequence number (assigned when sent, read from the header when received).
    pub fn seq(&self) -> u64 {
        self.0.seq
    }
    /// Sets the sequence number (the session does this when it queues the message).
    pub fn set_seq(&mut self, seq: u64) {
        self.0.seq = seq;
    }
    /// The sender as named in the header; `None` for a locally built message, which
    /// the session stamps with its own name when encoding.
    pub fn src(&self) -> Option<EntityName> {
        self.0.src_type.map(|ty| EntityName { ty, num: self.0.src_num })
    }
    /// Sets the sender name.
    pub fn set_src(&mut self, src: EntityName) {
        self.0.src_type = Some(src.ty);
        self.0.src_num = src.num;
    }
    /// The header's `data_off`.
    pub fn data_off(&self) -> u16 {
        self.0.data_off
    }
    /// Sets `data_off`.
    pub fn set_data_off(&mut self, data_off: u16) {
        self.0.data_off = data_off;
    }
    /// The front segment.
    pub fn front(&self) -> &Bytes {
        &self.0.front
    }
    /// Sets the front segment.
    pub fn set_front(&mut self, front: Bytes) {
        self.0.front = front;
    }
    /// The middle segment.
    pub fn middle(&self) -> &Bytes {
        &self.0.middle
    }
    /// Sets the middle segment.
    pub fn set_middle(&mut self, middle: Bytes) {
        self.0.middle = middle;
    }
    /// The data segment.
    pub fn data(&self) -> &Bytes {
        &self.0.data
    }
    /// Sets the data segment.
    #[inline]
    pub fn set_data(&mut self, data: Bytes) {
        self.0.data = data;
    }
    /// Payload bytes (front + middle + data): what the throttles charge.
    pub fn payload_len(&self) -> usize {
        self.0.front.len() + self.middle().len() + self.0.data.len()
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
    /// Copies the payload out of the buffer it is a slice of when it is smaller than
    /// `below` bytes. A received message's segments are usually slices of a large read
    /// buffer shared with other messages; a small message kept for long (queued for
    /// dispatch) would keep all of that buffer alive. Costs one copy of the payload. A
    /// payload of at most 256 bytes goes into a 1 KiB chunk shared with the payloads
    /// copied before and after it on this thread; a larger one into a buffer of its own,
    /// one this thread lent to an earlier message when that one is gone, else a new
    /// allocation (see `lent.rs`).
    pub fn compact(&mut self, below: usize) {
        let len = self.payload_len();
        if len == 0 || len >= below {
            return;
        }
        let own = lent::copy_of(&self.payload_parts(), len);
        self.set_payload_copy(own);
    }
    /// [`Self::compact`] for each message of `msgs` (`message` finds it in an item):
    /// the same copies, but the small payloads of a batch are copied one after the
    /// other into a chunk shared by them, split into their slices once the batch (or
    /// the chunk) is done. A message kept long still pins at most one chunk (1 KiB).
    pub fn compact_all<T>(
        msgs: &mut [T],
        message: impl FnMut(&mut T) -> &mut Message,
        below: usize,
    ) {
        lent::compact_all(msgs, message, below);
    }
    /// The payload's three segments, in order.
    #[inline]
    fn payload_parts(&self) -> [&[u8]; 3] {
        [&self.0.front, self.middle(), &self.0.data]
    }
    /// Replaces the payload by `own`, a copy of it (of `payload_len` bytes).
    #[inline(always)]
    fn set_payload_copy(&mut self, own: Bytes) {
        let len = own.len();
        let (f, m) = (self.0.front.len(), self.0.front.len() + self.middle().len());
        // Empty segments become empty handles (an empty slice may still hold the read
        // buffer), and a segment that is the whole payload takes the buffer itself.
        let part =
            |r: std::ops::Range<usize>| if r.is_empty() { Bytes::new() } else { own.slice(r) };
        // The common shapes, one segment holding it all: an empty segment that holds
        // nothing (the decoder's `Bytes::new()`) is left as it is, where replacing it
        // dropped it through its vtable (~20 instructions per 64 B message compacted).
        let fields = &mut *self.0;
        match (f, m) {
            (0, 0) => {
                clear(&mut fields.front);
                clear(&mut fields.middle);
                fields.data = own;
            }
            (f, m) if f == len && m == len => {
                fields.front = own;
                clear(&mut fields.middle);
                clear(&mut fields.data);
            }
            (f, m) => {
                (fields.front, fields.middle, fields.data) = (part(0..f), part(f..m), part(m..len))
            }
        }
    }
    /// The footer as received (default for a locally built message).
    pub fn footer(&self) -> &MsgFooter {
        &self.0.footer
    }

    /// When the first byte of this message was read (set by the messenger).
    pub fn recv_stamp(&self) -> Option<Instant> {
        self.0.recv_stamp
    }
    /// Records when the first byte was read.
    pub fn set_recv_stamp(&mut self, at: Instant) {
        self.0.recv_stamp = Some(at);
    }
    /// When the message was handed to a dispatcher.
    pub fn dispatch_stamp(&self) -> Option<Instant> {
        self.0.dispatch_stamp
    }
    /// Records when the message was handed to a dispatcher.
    pub fn set_dispatch_stamp(&mut self, at: Instant) {
        self.0.dispatch_stamp = Some(at);
    }

    /// Attaches what this received message holds of its connection's policy
    /// throttlers (the messenger does, as it hands the message over); one attached
    /// before is released.
    #[doc(alias = "set_byte_throttler")]
    #[doc(alias = "set_message_throttler")]
    pub fn set_throttle_charge(&mut self, charge: Box<dyn ThrottleCharge>) {
        self.0.charge = Charge(AssertUnwindSafe(Some(charge)));
    }
    /// Takes this message's policy-throttle charge out, leaving it without one: for a
    /// dispatcher that keeps something else in its place (the typed message decoded
    /// from it, an op built from it), which should hold the back-pressure the received
    /// message held, or that sends the message on (see [`ThrottleCharge`]). Dropping
    /// the charge releases what it holds; [`Self::set_throttle_charge`] puts it on
    /// another message.
    pub fn take_throttle_charge(&mut self) -> Option<Box<dyn ThrottleCharge>> {
        self.0.charge.0.take()
    }
    /// Whether this message holds a policy-throttle charge ([`ThrottleCharge`]): only a
    /// received message, from a peer type with policy throttlers, and not its clones.
    pub fn has_throttle_charge(&self) -> bool {
        self.0.charge.0.is_some()
    }
    /// Releases the message count this received message holds of its policy's message
    /// throttle (Ceph's `osd_client_message_cap`), keeping the message and its byte
    /// charge, as Ceph's `Message::release_message_throttle`: a daemon that keeps a
    /// message past its handling (an OSD's finished op, still referenced) lets the next
    /// one in. Nothing without a charge, or once released.
    pub fn release_message_throttle(&mut self) {
        if let Some(c) = self.0.charge.0.as_mut() {
            c.release_count();
        }
    }
    /// Empties the front and middle segments and releases their bytes from the byte
    /// charge, as Ceph's `Message::clear_payload` (an OSD clears a finished op's
    /// buffers so that its byte throttle, `osd_client_message_size_cap`, lets more in).
    /// The rest of the charge (the data segment's bytes, and the per-message overhead
    /// it was charged, [`MESSAGE_OVERHEAD`]) goes when the message is dropped or
    /// [`Self::clear_data`] runs. The other setters leave the charge as received.
    pub fn clear_payload(&mut self) {
        let len = self.0.front.len() + self.0.middle.len();
        self.0.front = Bytes::new();
        self.0.middle = Bytes::new();
        if let Some(c) = self.0.charge.0.as_mut() {
            c.release_bytes(len as u64);
        }
    }
    /// Empties the data segment and releases its bytes from the byte charge, as Ceph's
    /// `Message::clear_data` (see [`Self::clear_payload`]).
    pub fn clear_data(&mut self) {
        let len = self.0.data.len();
        self.0.data = Bytes::new();
        if let Some(c) = self.0.charge.0.as_mut() {
            c.release_bytes(len as u64);
        }
    }
}

/// Makes the empty segment `seg` hold nothing: replaced by `Bytes::new()` unless it is
/// one already ([`holds_nothing`]).
#[inline(always)]
fn clear(seg: &mut Bytes) {
    if !holds_nothing(seg) {
        *seg = Bytes::new();
    }
}

/// Whether `seg` certainly holds no buffer: it is empty at `Bytes::new()`'s address,
/// which no buffer has (an empty slice of a buffer, which may hold it, points into that
/// buffer). Other handles that hold nothing (an empty static slice elsewhere) read as
/// `false`, and are then replaced as if they held something.
#[inline(always)]
fn holds_nothing(seg: &Bytes) -> bool {
    seg.is_empty() && seg.as_ptr() == Bytes::new().as_ptr()
}

/// A `u32` segment length; a local segment above 4 GiB cannot be sent in msgr v1 and is
/// a caller bug, logged and clamped rather than silently wrapped.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| {
        log::error!(target: "msgr::message", "segment of {len} bytes exceeds u32");
        u32::MAX
    })
}

impl fmt::Debug for Message {
    /// Never prints payload bytes, only their lengths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("type", &self.0.msg_type)
            .field("version", &self.0.version)
            .field("compat", &self.0.compat_version)
            .field("priority", &self.0.priority)
            .field("tid", &self.0.tid)
            .field("seq", &self.0.seq)
            .field("src", &self.src().map(|s| s.to_string()))
            .field("front_len", &self.0.front.len())
            .field("middle_len", &self.middle().len())
            .field("data_len", &self.0.data.len())
            .finish()
    }
}

/// The name a session uses for locally built messages before it knows better.
pub const UNNAMED_CLIENT: EntityName = EntityName { ty: EntityType::CLIENT, num: EntityName::NEW };

pub use decoder::{DecodeLimits, DecodeOptions, MessageDecoder, Progress};
pub(crate) use frame::{grow_head, FRAMES_PER_RESERVE, GATHERED_PER_FRAME, ZERO_COPY_MIN};
pub use frame::{seal, seal_header, EncodeOptions, Frame, Sealed};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::{Error, Result};
    use crate::wire::{FooterFlags, FooterFormat, Tag};
    use bytes::{Buf, BytesMut};

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

    // The write-list form: tag+header gathered, a payload segment of ZERO_COPY_MIN or
    // more by reference (the same allocation), the footer gathered after it; the bytes
    // are write_to's.
    #[test]
    fn push_to_shares_large_payload_and_matches_write_to() {
        let mut m = sample();
        m.set_data(Bytes::from(vec![7u8; ZERO_COPY_MIN]));
        let mut head = BytesMut::new();
        let mut out = Vec::new();
        let n = m
            .encode_frame(3, UNNAMED_CLIENT, &EncodeOptions::default())
            .push_to(&mut head, &mut out);
        assert_eq!(out.len(), 2, "header with front and middle gathered, data; footer in head");
        assert_eq!(out[1].as_ptr(), m.data().as_ptr());
        out.push(head.freeze());
        let mut want = Vec::new();
        m.encode_frame(3, UNNAMED_CLIENT, &EncodeOptions::default()).write_to(&mut want);
        assert_eq!((out.concat(), n), (want.clone(), want.len()));
    }

    // Small segments are copied beside their header, so a batch of small messages is one
    // piece to write, not two or more per message.
    #[test]
    fn push_to_gathers_small_segments() {
        let m = sample();
        let mut head = BytesMut::new();
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut n = 0;
        for seq in 1..=100 {
            let frame = m.encode_frame(seq, UNNAMED_CLIENT, &EncodeOptions::default());
            frame.write_to(&mut want);
            n += frame.push_to(&mut head, &mut out);
        }
        assert!(out.is_empty(), "{} pieces handed out by reference", out.len());
        assert_eq!((&head[..], n), (&want[..], want.len()));
    }

    // Segments each under `ZERO_COPY_MIN` are gathered into `head` whatever their sum
    // (a payload of 4 KiB or more in small segments too); only a longer segment goes
    // onto the write list by reference. The same bytes as the frame's either way.
    #[test]
    fn push_frame_to_gathers_every_short_segment() {
        let short = ZERO_COPY_MIN - 1;
        for (front, data, by_ref) in
            [(10, 20, false), (short, short, false), (short, ZERO_COPY_MIN, true)]
        {
            let mut m = Message::new(17, Bytes::from(vec![1u8; front]));
            m.set_data(Bytes::from(vec![2u8; data]));
            let opts = EncodeOptions::default();
            let (mut head, mut out) = (BytesMut::new(), Vec::new());
            let n = m.push_frame_to(5, UNNAMED_CLIENT, &opts, |_, _| {}, &mut head, &mut out);
            let shared = out.iter().any(|b| b.as_ptr() == m.data().as_ptr());
            assert_eq!((shared, out.is_empty()), (by_ref, !by_ref), "{front} + {data}");
            out.push(head.freeze());
            let mut want = Vec::new();
            m.encode_frame(5, UNNAMED_CLIENT, &opts).write_to(&mut want);
            assert_eq!((out.concat(), n), (want.clone(), want.len()), "{front} + {data}");
        }
    }

    // The sender's path, without a Frame: the same bytes as the frame's, each seal seen
    // by the signer, a large data segment shared.
    #[test]
    fn push_frame_to_matches_the_frame() {
        for data_len in [0, 100, ZERO_COPY_MIN - 1, ZERO_COPY_MIN, 3 * ZERO_COPY_MIN] {
            let mut m = sample();
            m.set_data(Bytes::from(vec![5u8; data_len]));
            let opts = EncodeOptions::default();
            let (mut head, mut out) = (BytesMut::new(), Vec::new());
            let mut signed = 0;
            let sign = |h: &MsgHeader, f: &mut MsgFooter| {
                signed += 1;
                f.sig = h.seq + 1;
            };
            let n = m.push_frame_to(7, UNNAMED_CLIENT, &opts, sign, &mut head, &mut out);
            let shared = out.iter().any(|b| b.as_ptr() == m.data().as_ptr());
            assert_eq!(shared, data_len >= ZERO_COPY_MIN, "data of {data_len}");
            out.push(head.freeze());
            let frame = m.encode_frame_with(7, UNNAMED_CLIENT, &opts, |_, f| f.sig = 8);
            let mut want = Vec::new();
            frame.write_to(&mut want);
            assert_eq!(
                (out.concat(), n, signed),
                (want.clone(), want.len(), 1),
                "data of {data_len}"
            );
        }
    }

    // A burst of frames with payloads sent by reference, more than one reservation
    // covers (as a transmit round of 4 KiB messages): the small pieces between the
    // payloads come from a buffer per `FRAMES_PER_RESERVE` frames. Growing only by what
    // each frame needed, once the payload's split had shared the buffer, took a buffer
    // per frame (an allocation and a shared-buffer header each).
    #[test]
    fn a_burst_of_zero_copy_frames_gathers_into_few_buffers() {
        let frames = 5 * FRAMES_PER_RESERVE;
        // Nothing but the payload, so each frame gathers `GATHERED_PER_FRAME` bytes.
        let mut m = Message::new(2, Bytes::new());
        m.set_data(Bytes::from(vec![5u8; ZERO_COPY_MIN]));
        let opts = EncodeOptions::default();
        let (mut head, mut out) = (BytesMut::new(), Vec::new());
        head.reserve(FRAMES_PER_RESERVE * GATHERED_PER_FRAME);
        for seq in 1..=frames as u64 {
            m.push_frame_to(seq, UNNAMED_CLIENT, &opts, |_, _| {}, &mut head, &mut out);
        }
        out.push(head.freeze());
        let small: Vec<&Bytes> = out.iter().filter(|b| b.as_ptr() != m.data().as_ptr()).collect();
        assert_eq!(small.len(), frames + 1);
        // A piece that does not start where the one before it ended began a new buffer.
        let buffers = 1 + small
            .windows(2)
            .filter(|w| w[1].as_ptr() as usize != w[0].as_ptr() as usize + w[0].len())
            .count();
        assert!(buffers <= 6, "{buffers} buffers for {frames} frames");
    }

    // The sender's path against the wire layout spelled out piece by piece (not through
    // the gathering it shares with `Frame::push_to`): tag, header, segments, then the
    // footer at its format's length, for each format and crc setting.
    #[test]
    fn push_frame_to_lays_out_each_footer_format() {
        let m = sample();
        for footer in [FooterFormat::New, FooterFormat::Old] {
            for (crc_header, crc_data) in [(true, true), (true, false), (false, false)] {
                let opts = EncodeOptions { crc_header, crc_data, footer };
                let (mut head, mut out) = (BytesMut::new(), Vec::new());
                let n = m.push_frame_to(3, UNNAMED_CLIENT, &opts, |_, _| {}, &mut head, &mut out);
                out.push(head.freeze());
                let (h, f) = m.encode_header(3, UNNAMED_CLIENT, crc_header, crc_data);
                let mut want = vec![Tag::MSG.0];
                want.extend_from_slice(&h.to_bytes());
                for seg in [m.front(), m.middle(), m.data()] {
                    want.extend_from_slice(seg);
                }
                f.encode(footer, &mut want);
                assert_eq!((out.concat(), n), (want.clone(), want.len()), "{opts:?}");
            }
        }
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
    fn a_dropped_box_serves_the_next_decoded_message_and_keeps_nothing_of_the_old() {
        // Whatever an earlier test left on this thread goes first.
        FIELDS.with(FreeList::clear);
        let frame = sample().encode_frame(5, UNNAMED_CLIENT, &EncodeOptions::default());
        let mut wire = Vec::new();
        frame.write_to(&mut wire);
        let fresh = decode_all(&wire[1..], DecodeOptions::default()).unwrap();

        let payload = Bytes::from(vec![1u8; 64]);
        let mut old = Message::new(99, payload.clone());
        old.set_data(payload.clone());
        old.set_middle(payload.clone());
        old.set_seq(77);
        old.set_tid(1234);
        old.set_src(EntityName { ty: EntityType::OSD, num: 3 });
        old.set_priority(PRIO_HIGH);
        old.set_version(9);
        old.set_compat_version(8);
        // Any instant will do: stamps are only carried here.
        #[allow(clippy::disallowed_methods)]
        let at = Instant::now();
        old.set_recv_stamp(at);
        old.set_dispatch_stamp(at);
        let old_box = &*old.0 as *const Fields;
        drop(old);
        assert!(payload.is_unique(), "a kept box still holds its message's payload");

        let reused = decode_all(&wire[1..], DecodeOptions::default()).unwrap();
        assert_eq!(&*reused.0 as *const Fields, old_box, "the spare box was not reused");
        assert!(reused == fresh, "the reused box kept something of the old message");
    }

    #[test]
    fn a_thread_keeps_a_bounded_number_of_spare_boxes() {
        FIELDS.with(FreeList::clear);
        let all: Vec<_> =
            (0..(pool_box::KEEP as u16 + 100)).map(|i| Message::new(i, Bytes::new())).collect();
        drop(all);
        assert_eq!(FIELDS.with(FreeList::len), pool_box::KEEP);
        FIELDS.with(FreeList::clear);
    }

    /// A message dropped on a thread other than its builder's (a dispatcher's) leaves
    /// its box to that thread; the builder's thread keeps nothing of it.
    #[test]
    fn a_message_dropped_on_another_thread() {
        FIELDS.with(FreeList::clear);
        let payload = Bytes::from(vec![1u8; 64]);
        let msgs: Vec<_> = (0..10).map(|i| Message::new(i, payload.clone())).collect();
        // A test's own thread: `protocol` spawns none of its own (sans-IO).
        #[allow(clippy::disallowed_methods)]
        let (kept_there, reused) = std::thread::spawn(move || {
            let at = &*msgs[9].0 as *const Fields;
            drop(msgs);
            let kept = FIELDS.with(FreeList::len);
            let next = Message::new(1, Bytes::new());
            (kept, std::ptr::eq(&*next.0, at))
        })
        .join()
        .unwrap();
        assert_eq!((kept_there, reused), (10, true));
        assert!(payload.is_unique(), "a payload outlived its message");
        assert_eq!(FIELDS.with(FreeList::len), 0);
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
        // Each segment against its own limit, named with its length and the limit (the
        // sample's front is 11 bytes, its middle 3, its data 100).
        for (limits, what, len, limit) in [
            (DecodeLimits { max_front: 10, ..Default::default() }, "front", 11, 10),
            (DecodeLimits { max_middle: 2, ..Default::default() }, "middle", 3, 2),
            (DecodeLimits { max_data: 99, ..Default::default() }, "data", 100, 99),
            (DecodeLimits { max_front: 0, max_middle: 0, max_data: 0 }, "front", 11, 0),
        ] {
            let tight = DecodeOptions { limits, ..Default::default() };
            assert_eq!(decode_all(body, tight), Err(Error::TooLarge { what, len, limit }));
        }
        let exact = DecodeLimits { max_front: 11, max_middle: 3, max_data: 100 };
        assert!(decode_all(body, DecodeOptions { limits: exact, ..Default::default() }).is_ok());

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

    /// A whole message already in the input is still taken in only up to the allowance
    /// (the one-go path needs the allowance to cover the payload); granted the rest, it
    /// is the message sent, as it is when the allowance covers it from the start.
    #[test]
    fn a_whole_message_in_the_input_waits_for_its_allowance() {
        let mut m = Message::new(17, Bytes::from(vec![3u8; 100]));
        m.set_data(Bytes::from(vec![4u8; 900]));
        let wire = wire_of(&m);
        let footer_len = DecodeOptions::default().crc.footer.encoded_len();
        for allowance in [0u64, 99, 100, 999, 1000] {
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            let mut input = wire.clone();
            assert!(matches!(dec.feed(&mut input).unwrap(), Progress::HeaderReady(_)));
            dec.proceed_with(allowance).unwrap();
            let got = match dec.feed(&mut input).unwrap() {
                Progress::Message(got) => {
                    assert_eq!(allowance, 1000, "complete only when covered");
                    got
                }
                Progress::NeedMore => {
                    assert!(allowance < 1000);
                    assert_eq!(input.len() as u64, 1000 - allowance + footer_len as u64);
                    assert_eq!(dec.budget_needed(), Some(1000 - allowance));
                    dec.grant(1000 - allowance);
                    match dec.feed(&mut input).unwrap() {
                        Progress::Message(got) => got,
                        other => panic!("after the grant: {other:?}"),
                    }
                }
                Progress::HeaderReady(_) => panic!("second header"),
            };
            assert!(input.is_empty());
            assert_eq!((got.front(), got.data()), (m.front(), m.data()), "allowance {allowance}");
        }
    }

    /// A large segment assembled from pieces leaves the decoder holding nothing: its
    /// buffer went with the message. (Kept as the next segment's start, it was shared
    /// with the message, and growing it for the next large segment copied it whole.)
    #[test]
    fn a_large_segment_takes_its_whole_buffer_along() {
        let mut m = Message::new(17, Bytes::from(vec![3u8; 100]));
        m.set_data(Bytes::from(vec![4u8; 1 << 20]));
        let wire = wire_of(&m);
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        for round in 0..2 {
            let mut input = wire.clone();
            let mut got = None;
            // Budget in doubling windows, as a driver grants it: the buffer grows by them.
            let mut granted = 0u64;
            while got.is_none() {
                let mut piece = input.split_to(input.len().min(64 << 10));
                loop {
                    match dec.feed(&mut piece).unwrap() {
                        Progress::HeaderReady(_) => {
                            granted = 64 << 10;
                            dec.proceed_with(granted).unwrap();
                        }
                        Progress::Message(m) => {
                            got = Some(m);
                            break;
                        }
                        Progress::NeedMore => match dec.budget_needed() {
                            Some(uncovered) => {
                                let more = uncovered.min(granted);
                                dec.grant(more);
                                granted += more;
                            }
                            None => break,
                        },
                    }
                }
            }
            let got = got.unwrap();
            assert_eq!(got.data(), m.data(), "round {round}");
            assert_eq!(dec.held_bytes(), 0, "round {round}: the decoder kept a buffer");
        }
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

    /// What a test charge was asked to release, and whether it was dropped.
    #[derive(Default)]
    struct Released {
        count: std::sync::atomic::AtomicU64,
        bytes: std::sync::atomic::AtomicU64,
        dropped: std::sync::atomic::AtomicBool,
    }

    struct TestCharge(std::sync::Arc<Released>);

    impl ThrottleCharge for TestCharge {
        fn release_count(&mut self) {
            self.0.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn release_bytes(&mut self, bytes: u64) {
            self.0.bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Drop for TestCharge {
        fn drop(&mut self) {
            self.0.dropped.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn charged() -> (Message, std::sync::Arc<Released>) {
        let released = std::sync::Arc::new(Released::default());
        let mut m = sample();
        m.set_throttle_charge(Box::new(TestCharge(released.clone())));
        (m, released)
    }

    /// A received message's throttle charge is counted once: its clone has none (and
    /// compares equal all the same), and it goes when the message is dropped (its box
    /// kept for reuse).
    #[test]
    fn a_throttle_charge_stays_with_its_message() {
        use std::sync::atomic::Ordering::Relaxed;
        let (m, released) = charged();
        let copy = m.clone();
        assert!(m.has_throttle_charge() && !copy.has_throttle_charge());
        assert!(m == copy, "equality ignores the charge");
        drop(copy);
        assert!(!released.dropped.load(Relaxed), "the clone's drop released the charge");
        drop(m);
        assert!(released.dropped.load(Relaxed));

        let (m, released) = charged();
        drop(m);
        assert!(released.dropped.load(Relaxed), "a kept box kept its charge");
        FIELDS.with(FreeList::clear);
    }

    /// Ceph's release_message_throttle gives the count back; clear_payload and
    /// clear_data the bytes of what they empty (front and middle, data).
    #[test]
    fn releasing_a_charge_part_by_part() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut m, released) = charged();
        m.release_message_throttle();
        assert_eq!(released.count.load(Relaxed), 1);
        m.clear_payload();
        assert_eq!(released.bytes.load(Relaxed), 11 + 3, "front and middle");
        assert!(m.front().is_empty() && m.middle().is_empty());
        m.clear_data();
        assert_eq!(released.bytes.load(Relaxed), 11 + 3 + 100, "and data");
        assert!(m.data().is_empty());
        assert!(!released.dropped.load(Relaxed), "the rest stays until the drop");
        // Without a charge these only empty the segments.
        let mut plain = sample();
        plain.release_message_throttle();
        plain.clear_payload();
        plain.clear_data();
        assert_eq!(plain.payload_len(), 0);
    }

    /// A charge taken out of a message goes on holding until it is dropped, wherever
    /// it is kept; the message holds none any more, so its drop releases nothing, and
    /// the charge can be put on another message.
    #[test]
    fn a_charge_taken_out_holds_until_dropped() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut m, released) = charged();
        let charge = m.take_throttle_charge().expect("the charge");
        assert!(!m.has_throttle_charge() && m.take_throttle_charge().is_none());
        m.release_message_throttle();
        drop(m);
        assert_eq!(released.count.load(Relaxed), 0, "released through a message without it");
        assert!(!released.dropped.load(Relaxed), "dropped with the message it left");
        let mut other = sample();
        other.set_throttle_charge(charge);
        drop(other);
        assert!(released.dropped.load(Relaxed), "the message it went on released it");
    }

    /// A message (charged or not) may be used inside `catch_unwind`, as around a
    /// decode: it is `UnwindSafe` and `RefUnwindSafe` (checked when this compiles).
    #[test]
    fn a_message_is_unwind_safe() {
        fn unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
        unwind_safe::<Message>();
        let (m, _) = charged();
        let decoded = std::panic::catch_unwind(|| m.front().len());
        assert_eq!(decoded.ok(), Some(m.front().len()));
    }

    /// A message is moved about twenty times on its way through the messenger: what
    /// moves is one pointer (see its docs).
    #[test]
    fn message_stays_small() {
        assert_eq!(std::mem::size_of::<Message>(), std::mem::size_of::<usize>());
        let mut m = sample();
        assert_eq!(m.middle(), &Bytes::from_static(b"mid"));
        m.set_middle(Bytes::new());
        assert!(m.middle().is_empty());
        assert_eq!(m.payload_len(), 11 + 100);
        assert_eq!(m.src(), None);
        m.set_src(UNNAMED_CLIENT);
        assert_eq!(m.src(), Some(UNNAMED_CLIENT));
    }

    /// Compaction leaves an empty segment that holds nothing as it is, but one that
    /// is an empty slice of the read buffer (which holds it) is still let go, whichever
    /// segment holds the payload, one message at a time or a batch.
    #[test]
    fn compaction_lets_go_of_an_empty_segment_that_holds_the_buffer() {
        // An empty handle that still holds `buf`: its bytes advanced past.
        let empty_of = |buf: &Bytes| {
            let mut b = buf.slice(4..8);
            b.advance(4);
            b
        };
        for batch in [false, true] {
            for data in [false, true] {
                let buf = Bytes::from(vec![7u8; 4 << 10]);
                let mut m = Message::new(17, Bytes::new());
                m.set_middle(empty_of(&buf));
                let payload = buf.slice(100..164);
                if data {
                    m.set_front(empty_of(&buf));
                    m.set_data(payload.clone());
                } else {
                    m.set_front(payload.clone());
                    m.set_data(empty_of(&buf));
                }
                drop(payload);
                if batch {
                    Message::compact_all(std::slice::from_mut(&mut m), |m| m, 1 << 10);
                } else {
                    m.compact(1 << 10);
                }
                assert_eq!(m.payload_len(), 64);
                assert!(m.front().iter().chain(m.data().iter()).all(|&b| b == 7));
                assert!(buf.is_unique(), "batch {batch} data {data}: the buffer is still held");
                // An empty segment that holds nothing is compacted the same.
                let mut plain = Message::new(17, Bytes::new());
                plain.set_data(buf.slice(..64));
                plain.compact(1 << 10);
                assert!(plain.front().is_empty() && plain.middle().is_empty());
                assert!(buf.is_unique(), "batch {batch} data {data}: a plain one holds it");
            }
        }
        assert!(holds_nothing(&Bytes::new()) && holds_nothing(&Message::default().front().clone()));
        let buf = Bytes::from(vec![0u8; 16]);
        assert!(!holds_nothing(&empty_of(&buf)) && !holds_nothing(&buf.slice(16..)));
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
        // One segment (front or data alone) is copied too.
        for data in [false, true] {
            let mut one = Message::new(17, Bytes::new());
            if data {
                one.set_data(shared.slice(300..364));
            } else {
                one.set_front(shared.slice(300..364));
            }
            one.compact(1 << 10);
            let (seg, empty) =
                if data { (one.data(), one.front()) } else { (one.front(), one.data()) };
            assert!(!range.contains(&(seg.as_ptr() as usize)), "still a slice of the buffer");
            assert_eq!((seg, empty.len()), (&shared.slice(300..364), 0));
        }
        // At the threshold and above it stays a zero-copy slice.
        let mut big = Message::new(17, shared.slice(0..1024));
        big.compact(1 << 10);
        assert!(range.contains(&(big.front().as_ptr() as usize)));
    }
}
