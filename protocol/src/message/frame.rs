//! The one msgr v1 message encoder: [`seal`] fills a header's lengths and crcs and
//! encodes it once; [`Message::push_frame_to`] lays a message's frame straight onto a
//! write list (the session's transmit path), and [`Message::encode_header`] /
//! [`Message::encode_frame_with`] produce a [`Frame`] (the golden vectors), whose
//! [`Frame::push_to`] lays it out the same way.

use bytes::{Bytes, BytesMut};

use crate::types::EntityName;
use crate::wire::{ceph_crc32c, FooterFlags, FooterFormat, MsgFooter, MsgHeader, Tag};

use super::{len32, Message};

impl Message {
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
        let segments = [&self.0.front[..], &self.middle()[..], &self.0.data[..]];
        seal_header(self.header_fields(seq, src), segments, crc_header, crc_data)
    }

    /// The complete wire form (tag, header, segments, footer) as message `seq`.
    pub fn encode_frame(&self, seq: u64, src: EntityName, opts: &EncodeOptions) -> Frame {
        self.encode_frame_with(seq, src, opts, |_, _| {})
    }

    /// [`Message::encode_frame`], with `sign` given the header and footer once the crcs
    /// are in (a session that signs its messages writes the signature there).
    pub fn encode_frame_with(
        &self,
        seq: u64,
        src: EntityName,
        opts: &EncodeOptions,
        sign: impl FnOnce(&MsgHeader, &mut MsgFooter),
    ) -> Frame {
        let (header, mut footer) = self.encode_header(seq, src, opts.crc_header, opts.crc_data);
        sign(&header, &mut footer);
        Frame::new(&header, &footer, opts.footer, self)
    }

    /// [`Message::encode_frame_with`] straight onto a write list, laid out as
    /// [`Frame::push_to`] lays a frame out, without the [`Frame`] in between: a payload
    /// segment copied into `head` is not first shared with it. Returns the frame's length.
    #[inline]
    pub fn push_frame_to(
        &self,
        seq: u64,
        src: EntityName,
        opts: &EncodeOptions,
        sign: impl FnOnce(&MsgHeader, &mut MsgFooter),
        head: &mut BytesMut,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let mut header = self.header_fields(seq, src);
        let segments = [&self.0.front[..], &self.middle()[..], &self.0.data[..]];
        // Sealed into locals, not a returned `Sealed`: moving the head, header and footer
        // into one and out again cost ~30 instructions of copies per message. The header
        // is sealed where it was built, not moved in and returned.
        let mut tag_header = [0u8; 1 + MsgHeader::LEN];
        let mut footer =
            seal_in_place(&mut tag_header, &mut header, segments, opts.crc_header, opts.crc_data);
        sign(&header, &mut footer);
        let (footer, footer_len) = footer.to_bytes(opts.footer);
        let segments = [&self.0.front, self.middle(), &self.0.data];
        gather(&tag_header, segments, (&footer, footer_len), head, out)
    }

    /// The header fields this message is sent with as message `seq` (lengths and crcs
    /// are [`seal`]'s).
    fn header_fields(&self, seq: u64, src: EntityName) -> MsgHeader {
        MsgHeader {
            seq,
            tid: self.0.tid,
            msg_type: self.0.msg_type,
            priority: self.0.priority,
            version: self.0.version,
            data_off: self.0.data_off,
            src: self.src().unwrap_or(src),
            compat_version: self.0.compat_version,
            ..MsgHeader::default()
        }
    }
}

/// A message's header and footer as [`seal`] makes them, with the tag and the header
/// already in wire form.
#[derive(Clone, Copy, Debug)]
pub struct Sealed {
    /// `Tag::MSG` and the encoded header (its crc in).
    pub head: [u8; 1 + MsgHeader::LEN],
    /// The header `head` encodes.
    pub header: MsgHeader,
    /// The footer (crcs and `COMPLETE`; no signature).
    pub footer: MsgFooter,
}

/// The header and footer of a message sent with `fields` (seq, tid, type, priority,
/// versions, data_off, src; lengths and crcs are filled in here) and `segments`
/// (front, middle, data): the segment lengths, the crcs when `crc_header` (header,
/// front, middle) and `crc_data` (data, else `NOCRC`), and `COMPLETE`, with the tag and
/// header encoded once: the header crc is taken over the bytes that go on the wire,
/// rather than over a second encoding of the header. Every v1 sender computes them
/// here: [`Message::push_frame_to`] (the session's, through `seal_in_place`), [`seal_header`] (so
/// [`Message::encode_header`]), and peers that keep their payload in plain slices (the
/// benchmark's).
#[inline(always)]
pub fn seal(fields: MsgHeader, segments: [&[u8]; 3], crc_header: bool, crc_data: bool) -> Sealed {
    let mut head = [0u8; 1 + MsgHeader::LEN];
    let (header, footer) = seal_into(&mut head, fields, segments, crc_header, crc_data);
    Sealed { head, header, footer }
}

/// [`seal`], with the tag and the encoded header written into `head` and the header
/// and footer returned.
#[inline(always)]
fn seal_into(
    head: &mut [u8; 1 + MsgHeader::LEN],
    fields: MsgHeader,
    segments: [&[u8]; 3],
    crc_header: bool,
    crc_data: bool,
) -> (MsgHeader, MsgFooter) {
    let mut header = fields;
    let footer = seal_in_place(head, &mut header, segments, crc_header, crc_data);
    (header, footer)
}

/// [`seal_into`] on a header the caller holds: `header` comes with the fields
/// ([`seal`]'s `fields`) and leaves with its lengths and crc filled in; the footer is
/// returned. The per-message path ([`Message::push_frame_to`]) keeps the tag and header,
/// the header and the footer in its own locals: the header moved in and returned as
/// `seal_into` does cost ~21 instructions of copies per message.
// Inlined into `push_frame_to`: out of line, returning the sealed head, header and
// footer cost a copy of all three (~150 bytes) per message. Forced: with `Message`'s
// box a `PoolBox` the compiler's own weighing left it out of line.
#[inline(always)]
fn seal_in_place(
    head: &mut [u8; 1 + MsgHeader::LEN],
    header: &mut MsgHeader,
    segments: [&[u8]; 3],
    crc_header: bool,
    crc_data: bool,
) -> MsgFooter {
    let [front, middle, data] = segments;
    let (f, m, d) = (front.len(), middle.len(), data.len());
    if u32::try_from(f | m | d).is_ok() {
        // All three fit (every message but a caller's bug): one test, not a check and
        // a clamp per length (~8 instructions per message sent).
        (header.front_len, header.middle_len, header.data_len) = (f as u32, m as u32, d as u32);
    } else {
        (header.front_len, header.middle_len, header.data_len) = (len32(f), len32(m), len32(d));
    }
    header.reserved = 0;
    header.crc = 0;
    let (tag, rest) = head.split_at_mut(1);
    tag[0] = Tag::MSG.0;
    // Encoded in place (`rest` is the header's 53 bytes): no array returned and copied.
    if let Ok(rest) = <&mut [u8; MsgHeader::LEN]>::try_from(rest) {
        header.write_to(rest);
    }
    let mut footer = MsgFooter { flags: FooterFlags::COMPLETE, ..Default::default() };
    if crc_header {
        let (covered, crc) = head[1..].split_at_mut(MsgHeader::CRC_COVERED);
        header.crc = ceph_crc32c(0, covered);
        crc.copy_from_slice(&header.crc.to_le_bytes());
        footer.front_crc = ceph_crc32c(0, front);
        footer.middle_crc = ceph_crc32c(0, middle);
    }
    if crc_data {
        footer.data_crc = ceph_crc32c(0, data);
    } else {
        footer.flags = footer.flags | FooterFlags::NOCRC;
    }
    footer
}

/// [`seal`]'s header and footer, without the encoded tag and header: what
/// [`Message::encode_header`] returns (so [`Frame`] and the golden vectors), for a
/// sender that encodes the header itself.
pub fn seal_header(
    fields: MsgHeader,
    segments: [&[u8]; 3],
    crc_header: bool,
    crc_data: bool,
) -> (MsgHeader, MsgFooter) {
    let sealed = seal(fields, segments, crc_header, crc_data);
    (sealed.header, sealed.footer)
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

/// The most bytes [`Frame::push_to`] gathers into its `head` per frame (tag, header,
/// footer): a sender framing a batch reserves this much per frame up front.
pub(crate) const GATHERED_PER_FRAME: usize = 1 + MsgHeader::LEN + MsgFooter::MAX_LEN;

/// Payload segments at least this long go onto a write list by reference; shorter ones
/// are copied into the gather buffer beside their header, since an iovec of its own (and
/// the reference it holds) costs more than copying a few hundred bytes, and a batch of
/// small messages would otherwise be two or more iovecs per message where one piece will
/// do. Shared by msgr v1's frames and msgr2's crc-mode frames.
pub(crate) const ZERO_COPY_MIN: usize = 4096;

/// Frames whose small pieces one reservation of a sender's gather buffer covers (about
/// 4 KiB).
pub(crate) const FRAMES_PER_RESERVE: usize = 64;

/// Room in `head` for `need` more bytes, the frame being gathered, once the batch's
/// reservation is used up (a round frames up to 1 MiB, more frames than it covers):
/// another [`FRAMES_PER_RESERVE`] frames' worth. `reserve(need)` alone took an
/// allocation of exactly `need` (and a shared-buffer header) per frame once a payload
/// segment had gone out by reference and split `head`, as the rest of a split buffer
/// that began empty grows by what is asked (~600 instructions of malloc and free per
/// 4 KiB message in a 1,000-message burst); a buffer that was never split grows by
/// doubling either way.
#[cold]
#[inline(never)]
pub(crate) fn grow_head(head: &mut BytesMut, need: usize) {
    head.reserve(need.max(FRAMES_PER_RESERVE * GATHERED_PER_FRAME));
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
        let (footer, footer_len) = footer.to_bytes(format);
        Frame {
            head: tag_and_header(header),
            front: msg.0.front.clone(),
            middle: msg.middle().clone(),
            data: msg.0.data.clone(),
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

    /// Appends the frame to a write list: the tag and header, the footer and payload
    /// segments shorter than 4 KiB into `head` (which gathers small pieces); each longer
    /// payload segment pushed onto `out` by reference, after flushing `head` there. The
    /// wire order is `out`, then what is left in `head`. Returns the frame's length.
    pub fn push_to(self, head: &mut BytesMut, out: &mut Vec<Bytes>) -> usize {
        let segments = [&self.front, &self.middle, &self.data];
        gather(&self.head, segments, (&self.footer, self.footer_len), head, out)
    }

    /// Appends the whole frame to `out` (copies; for tests and small control paths),
    /// laid out by [`Frame::push_to`].
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = BytesMut::new();
        let mut segs = Vec::new();
        self.clone().push_to(&mut head, &mut segs);
        for s in segs.iter().chain(std::iter::once(&head.freeze())) {
            out.extend_from_slice(s);
        }
    }
}

/// `Tag::MSG` and the encoded header: how every msgr v1 message frame begins.
fn tag_and_header(header: &MsgHeader) -> [u8; 1 + MsgHeader::LEN] {
    let mut out = [0u8; 1 + MsgHeader::LEN];
    out[0] = Tag::MSG.0;
    out[1..].copy_from_slice(&header.to_bytes());
    out
}

/// [`Frame::push_to`]'s layout from the frame's parts: `tag_header`, the segments under
/// [`ZERO_COPY_MIN`] and `footer` copied into `head`, each longer segment pushed onto
/// `out` by reference after what `head` gathered so far. Returns the frame's length.
// Always inlined (into `push_frame_to`, the per-message path, and `Frame::push_to`): as a
// call of its own, saving and restoring the registers around it cost ~20 instructions per
// message.
#[inline(always)]
fn gather(
    tag_header: &[u8],
    segments: [&Bytes; 3],
    (footer, footer_len): (&[u8; MsgFooter::MAX_LEN], usize),
    head: &mut BytesMut,
    out: &mut Vec<Bytes>,
) -> usize {
    let footer_len = footer_len.min(MsgFooter::MAX_LEN);
    let payload: usize = segments.iter().map(|s| s.len()).sum();
    // The caller reserves room for a batch ([`GATHERED_PER_FRAME`] each): reserving
    // only what this frame needs cost an allocation (and a shared-buffer header) per
    // message.
    // A payload under `ZERO_COPY_MIN` is all gathered (each segment is shorter): no
    // segment by segment sum for the common small message (~10 instructions a frame).
    let gathered: usize = if payload < ZERO_COPY_MIN {
        payload
    } else {
        segments.iter().map(|s| s.len()).filter(|&l| l < ZERO_COPY_MIN).sum()
    };
    let need = tag_header.len() + gathered + footer_len;
    if head.capacity() - head.len() < need {
        grow_head(head, need);
    }
    head.extend_from_slice(tag_header);
    for seg in segments {
        // Most messages leave a segment or two empty: no copy call for nothing.
        if seg.is_empty() {
            continue;
        }
        if seg.len() < ZERO_COPY_MIN {
            head.extend_from_slice(seg);
            continue;
        }
        if !head.is_empty() {
            out.push(head.split().freeze());
        }
        out.push(seg.clone());
    }
    // The whole array when the format uses it all (the new footer, MSG_AUTH): a copy of
    // known length is a few moves, one of a length known only at run time a `memcpy`
    // call (~20 instructions per message at 64 B).
    if footer_len == MsgFooter::MAX_LEN {
        head.extend_from_slice(footer);
    } else {
        head.extend_from_slice(&footer[..footer_len]);
    }
    tag_header.len() + payload + footer_len
}
