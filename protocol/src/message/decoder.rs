//! [`MessageDecoder`]: the incremental decoder of the bytes after a msgr v1
//! `Tag::MSG` (see the module docs of [`super`] for the call order), its limits and
//! options.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::wire::{ceph_crc32c, FooterFlags, MsgFooter, MsgHeader, RunningCrc};

use super::frame::EncodeOptions;
use super::{grow_within, own_copy, Message, DIRECT_ASSEMBLY_MIN, OWN_COPY_BELOW};

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
    /// While a large segment whose crc is checked is assembled in `partial`: its crc so
    /// far, taken piece by piece as the segment arrives, on bytes still in cache and
    /// while the sender is still sending, instead of over the whole segment once its
    /// footer is in: at 1 MiB that pass sat between the last byte and the reply.
    running_crc: RunningCrc,
    /// The crcs of this message's front, middle and data when they were taken as they
    /// arrived; `check_footer` uses them instead of a second pass.
    taken_crcs: [Option<u32>; 3],
    /// Whether the peer's last message carried a data crc: a peer that sends `NOCRC`
    /// (`ms_crc_data` off) gets no crc taken of its data as it arrives, since the footer
    /// that says so comes after it.
    peer_data_crc: bool,
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
            running_crc: RunningCrc::default(),
            taken_crcs: [None; 3],
            peer_data_crc: true,
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

    /// The header of the message [`Progress::Message`] just returned (a session that
    /// checks signatures reads it; meaningless before the first message).
    pub fn last_header(&self) -> &MsgHeader {
        &self.header
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
        self.running_crc = RunningCrc::default();
        self.taken_crcs = [None; 3];
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
        self.feed_admitting(input, |_| false)
    }

    /// [`MessageDecoder::feed`], deciding about a message's payload in the same call
    /// when the whole message is already there: at a message's start, with nothing
    /// pending and its header, payload and footer all in `input`, `admit` is asked with
    /// the checked header. If it says yes, the message is taken at once, as if
    /// [`MessageDecoder::proceed_with`] had allowed exactly its payload, and
    /// [`Progress::Message`] comes back. Otherwise this is `feed` (`HeaderReady`), and
    /// at any other point `admit` is not asked.
    ///
    /// Why: a small message arrives whole, and its caller's checks (a duplicate, its
    /// budget) need only the header. Returning to the caller between header and payload
    /// cost a second call, a copy of the header and the budget round per message.
    // Always inlined (with `step`) into the caller's per-message loop (msgr v1's
    // `read_message`): the compiler's own choice flipped with unrelated edits in
    // `protocol`, and as a call of its own this cost ~85-115 more instructions per 64 B
    // round trip under callgrind (~2.5 %). Pinned, it costs ~13 more than the lucky
    // unpinned arrangement.
    #[inline(always)]
    pub fn feed_admitting(
        &mut self,
        input: &mut Bytes,
        admit: impl FnOnce(&MsgHeader) -> bool,
    ) -> Result<Progress> {
        let r = self.step(input, admit);
        if r.is_err() {
            self.fail();
        }
        r
    }

    /// After an error: the decoder refuses further input and lets go of what it held.
    // Out of line and cold: inlined into the per-message path it cost ~6 instructions
    // per 64 B round trip under callgrind.
    #[cold]
    #[inline(never)]
    fn fail(&mut self) {
        self.stage = Stage::Failed;
        self.partial = BytesMut::new();
        self.partial_counted = 0;
        self.running_crc = RunningCrc::default();
    }

    // Always inlined: see `feed_admitting`; when only `feed_admitting` was pinned, this
    // fell out as a call instead.
    #[inline(always)]
    fn step(
        &mut self,
        input: &mut Bytes,
        admit: impl FnOnce(&MsgHeader) -> bool,
    ) -> Result<Progress> {
        self.count_direct_reads();
        let mut admit = Some(admit);
        loop {
            match self.stage {
                Stage::Failed => return Err(Error::Misuse("MessageDecoder used after an error")),
                Stage::Skipping { .. } => {
                    return Err(Error::Misuse("MessageDecoder::feed while skipping"))
                }
                Stage::HeaderReady => return Ok(Progress::HeaderReady(self.header)),
                Stage::AwaitHeader => {
                    if !self.take_header(input)? {
                        return Ok(Progress::NeedMore);
                    }
                    let header = self.header;
                    self.stage = Stage::HeaderReady;
                    if let Some(at) = self.footer_at(input) {
                        if admit.take().is_some_and(|admit| admit(&header)) {
                            // As `proceed_with` its payload, then `take_whole`, without
                            // looking for the footer again or counting the allowance
                            // down to the nothing it ends at.
                            return self.split_whole(input, at).map(Progress::Message);
                        }
                    }
                    return Ok(Progress::HeaderReady(header));
                }
                Stage::AwaitFront => {
                    if let Some(msg) = self.take_whole(input)? {
                        return Ok(Progress::Message(msg));
                    }
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
                    let Some(footer) = self.take_small(input, format.encoded_len(), |raw| {
                        MsgFooter::decode(raw, format).map(|(f, _)| f)
                    })?
                    else {
                        return Ok(Progress::NeedMore);
                    };
                    let taken = std::mem::take(&mut self.taken_crcs);
                    self.peer_data_crc = !footer.flags.contains(FooterFlags::NOCRC);
                    self.check_footer(&footer, [&self.front, &self.middle, &self.data], taken)?;
                    let msg = Message::from_parts(
                        &self.header,
                        std::mem::take(&mut self.front),
                        std::mem::take(&mut self.middle),
                        std::mem::take(&mut self.data),
                        footer,
                    );
                    self.stage = Stage::AwaitHeader;
                    self.allowance = 0;
                    self.drop_spare_tail();
                    return Ok(Progress::Message(msg));
                }
            }
        }
    }

    /// The rest of the message in one go when all of it is in `input` (payload and
    /// footer), nothing is pending and the allowance covers the payload: the segments
    /// are split straight into the message instead of being stored in the decoder one
    /// stage at a time and taken out again (each store dropped the empty segment it
    /// replaced). `None` (nothing consumed) otherwise.
    #[inline]
    fn take_whole(&mut self, input: &mut Bytes) -> Result<Option<Message>> {
        if self.header.payload_len() > self.allowance {
            return Ok(None);
        }
        let Some(at) = self.footer_at(input) else { return Ok(None) };
        self.split_whole(input, at).map(Some)
    }

    /// Where the current message's footer starts in `input` (its payload's length) when
    /// nothing is pending and `input` holds the rest of the message (after its header).
    #[inline]
    fn footer_at(&self, input: &[u8]) -> Option<usize> {
        if !self.partial.is_empty() {
            return None;
        }
        let at = usize::try_from(self.header.payload_len()).ok()?;
        let end = at.checked_add(self.opts.crc.footer.encoded_len())?;
        (end <= input.len()).then_some(at)
    }

    /// The current message from `input`, which holds its payload and then its footer
    /// from `at` on ([`Self::footer_at`]): the segments split straight into the message,
    /// the footer checked, the decoder awaiting the next header.
    #[inline]
    fn split_whole(&mut self, input: &mut Bytes, at: usize) -> Result<Message> {
        let format = self.opts.crc.footer;
        let raw = input.get(at..).unwrap_or_default();
        let footer = MsgFooter::decode(raw, format).map(|(f, _)| f)?;
        // The message is built before its footer is checked (dropped if that fails):
        // the segments go straight into it, where held across the crc calls they were
        // spilled and copied twice on the way in. Built with empty segments, each
        // non-empty one then put in its place: its empty ones are written into the
        // message as constants, where passed in they were built on the stack and copied
        // (~20 instructions per message).
        let mut msg =
            Message::from_parts(&self.header, Bytes::new(), Bytes::new(), Bytes::new(), footer);
        // In bounds: the three lengths sum to `at`, and `input` holds that much and the
        // footer after it.
        let mut segment = |n: u32, seg: &mut Bytes| {
            // Most messages' middle, many fronts or datas: no split of the shared buffer.
            if n != 0 {
                // What it replaces is the `Bytes::new()` above, which owns nothing:
                // forgotten, not dropped (a call through its vtable).
                std::mem::forget(std::mem::replace(seg, input.split_to(n as usize)));
            }
        };
        let fields = &mut *msg.0;
        segment(self.header.front_len, &mut fields.front);
        segment(self.header.middle_len, &mut fields.middle);
        segment(self.header.data_len, &mut fields.data);
        input.advance(format.encoded_len());
        self.check_footer(&footer, [msg.front(), msg.middle(), msg.data()], [None; 3])?;
        self.stage = Stage::AwaitHeader;
        self.allowance = 0;
        self.payload_left = 0;
        self.drop_spare_tail();
        Ok(msg)
    }

    /// At the end of a message: the spare capacity `take_partial` kept after a small
    /// segment (for the message's next one) goes. An idle decoder kept it until a later
    /// message's split segment used it, possibly never: it pinned the allocation it
    /// shares with the delivered segment (up to about twice a segment under 64 KiB) on a quiet
    /// connection, and `held_bytes` counted it as memory held for a message being
    /// received (`msgr_recv_held_bytes` never went back to 0).
    #[inline]
    fn drop_spare_tail(&mut self) {
        if self.partial.capacity() != 0 {
            self.partial = BytesMut::new();
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
        if self.partial.is_empty() {
            // The common case between whole messages: nothing was read into it.
            self.partial_counted = 0;
            return;
        }
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
        // Room made here, not by the driver's read (whose `reserve` doubles past the
        // segment's length).
        grow_within(&mut self.partial, need, n);
        Some((&mut self.partial, need))
    }

    /// Takes the next header into `self.header`, checked (crc, limits); false when it is
    /// not all there yet. A header all in `input` with nothing pending is decoded straight
    /// into place: decoded into a local first, it was spilled around the crc call and
    /// copied twice more (~40 instructions per message). Always inlined: as a call of
    /// its own (the compiler's choice with `#[inline]`) it cost what it saved.
    #[inline(always)]
    fn take_header(&mut self, input: &mut Bytes) -> Result<bool> {
        let crc = self.opts.crc.crc_header;
        match input.first_chunk::<{ MsgHeader::LEN }>() {
            Some(raw) if self.partial.is_empty() => {
                self.header = MsgHeader::from_bytes(raw);
                if crc {
                    let got = ceph_crc32c(0, raw.get(..MsgHeader::CRC_COVERED).unwrap_or_default());
                    if got != self.header.crc {
                        return Err(Error::BadCrc {
                            what: "header",
                            expected: self.header.crc,
                            got,
                        });
                    }
                }
                input.advance(MsgHeader::LEN);
            }
            _ => {
                let Some(header) = self.take_small(input, MsgHeader::LEN, |raw| {
                    MsgHeader::decode_checked(raw, crc).map(|(h, _)| h)
                })?
                else {
                    return Ok(false);
                };
                self.header = header;
            }
        }
        self.check_header(&self.header)?;
        let h = &self.header;
        log::trace!(target: "msgr::message", "header seq {} type {} front {} middle {} data {}",
            h.seq, h.msg_type, h.front_len, h.middle_len, h.data_len);
        Ok(true)
    }

    /// Takes exactly `n` bytes of a fixed-size part (header, footer) and decodes them
    /// with `decode`: straight from `input` when they are all there and nothing is
    /// pending (no `Bytes` split off and dropped per message), else through [`Self::take`].
    fn take_small<T>(
        &mut self,
        input: &mut Bytes,
        n: usize,
        decode: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        if self.partial.is_empty() {
            if let Some(raw) = input.get(..n) {
                let v = decode(raw)?;
                input.advance(n);
                return Ok(Some(v));
            }
            if input.is_empty() {
                // As in `take`: nothing to take (a v1 footer in the next read).
                return Ok(None);
            }
        }
        match self.take(input, n) {
            Some(raw) => decode(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// Takes exactly `n` bytes: a zero-copy slice when they are all in `input` and
    /// nothing is pending, else accumulates into `partial` (copying only then). In the
    /// payload, takes no more than the allowance.
    #[inline]
    fn take(&mut self, input: &mut Bytes, n: usize) -> Option<Bytes> {
        if n == 0 {
            // An empty segment (most messages' middle, many fronts or datas).
            return Some(Bytes::new());
        }
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
            let segment = input.split_to(n);
            if payload && n < OWN_COPY_BELOW && self.pauses_after(input) {
                return Some(own_copy(&segment));
            }
            return Some(segment);
        }
        if input.is_empty() && self.partial.is_empty() {
            // Nothing arrived and nothing is pending (a segment whose first bytes are
            // in the next read: a v1 sender's write list ends a piece before each
            // payload of 4 KiB or more): `take_partial` would take nothing. Twice per
            // such message, that call showed (~100 instructions per 4 KiB message).
            return None;
        }
        self.take_partial(input, n, payload, allowed)
    }

    /// Whether the message being decoded cannot end in `input`: the rest of its payload
    /// and its footer are not all there, so its segments taken so far wait for later
    /// reads.
    #[inline]
    fn pauses_after(&self, input: &[u8]) -> bool {
        let footer = self.opts.crc.footer.encoded_len() as u64;
        self.payload_left.saturating_add(footer) > input.len() as u64
    }

    /// [`Self::take`] when the segment is not all in `input` (or bytes of it are
    /// pending): accumulate. Out of line, so the common case stays small enough to
    /// inline into `step`, where the returned `Bytes` was otherwise passed through memory.
    #[inline(never)]
    fn take_partial(
        &mut self,
        input: &mut Bytes,
        n: usize,
        payload: bool,
        allowed: usize,
    ) -> Option<Bytes> {
        let want = (n - self.partial.len()).min(allowed);
        if payload
            && n >= DIRECT_ASSEMBLY_MIN
            && self.partial.capacity() - self.partial.len() < want
        {
            // A large segment split across reads: its buffer grows with the allowance
            // (which the caller charged before granting), never to the announced
            // length up front, so the driver can read straight into it
            // (`assembly_buffer`) and it is not copied together later; doubling, but
            // never past the segment's length.
            grow_within(&mut self.partial, want, n);
        }
        let now = want.min(input.len());
        self.partial.extend_from_slice(&input[..now]);
        input.advance(now);
        self.partial_counted = self.partial.len();
        if payload {
            self.allowance -= now as u64;
            self.payload_left = self.payload_left.saturating_sub(now as u64);
        }
        if payload && n >= DIRECT_ASSEMBLY_MIN {
            self.crc_arrived();
        }
        if self.partial.len() == n {
            self.partial_counted = 0;
            // A large segment takes its whole buffer along and the next one starts a fresh
            // one, as msgr2's decoder does: keeping the spare tail (shared with this
            // segment until its message is dropped) made the next large segment grow that
            // shared allocation, and growing it copied the allocation — ~1.5 MiB of
            // memcpy per 1 MiB message — where a fresh buffer mostly grows in place.
            // Small segments keep the tail for the message's next one (`drop_spare_tail`).
            let segment = if n >= DIRECT_ASSEMBLY_MIN {
                std::mem::take(&mut self.partial)
            } else {
                self.partial.split()
            };
            Some(segment.freeze())
        } else {
            None
        }
    }

    /// Takes the bytes of a large segment that arrived since the last call into its
    /// running crc; once the segment is complete, keeps the crc for `check_footer`.
    fn crc_arrived(&mut self) {
        let (at, checked) = match self.stage {
            Stage::AwaitFront => (0, self.opts.crc.crc_header),
            Stage::AwaitMiddle => (1, self.opts.crc.crc_header),
            Stage::AwaitData => (2, self.opts.crc.crc_data && self.peer_data_crc),
            _ => return,
        };
        if !checked {
            return;
        }
        let crc = self.running_crc.update(0, &self.partial);
        if self.partial.len() == self.segment_len() {
            if let Some(slot) = self.taken_crcs.get_mut(at) {
                *slot = Some(crc);
            }
            self.running_crc = RunningCrc::default();
        }
    }

    /// The segment lengths against the limits (the crc was checked as it was decoded).
    fn check_header(&self, h: &MsgHeader) -> Result<()> {
        let l = &self.opts.limits;
        // Compared first, named only for the error: the loop over (name, length, limit)
        // triples built the triples per message.
        if h.front_len <= l.max_front && h.middle_len <= l.max_middle && h.data_len <= l.max_data {
            return Ok(());
        }
        Err(Self::too_large(h, l))
    }

    /// [`Self::check_header`]'s error, out of line: inlined, the naming of the segment
    /// was computed alongside the comparisons for every header (~20 instructions per
    /// message).
    #[cold]
    #[inline(never)]
    fn too_large(h: &MsgHeader, l: &DecodeLimits) -> Error {
        let (what, len, limit) = if h.front_len > l.max_front {
            ("front", h.front_len, l.max_front)
        } else if h.middle_len > l.max_middle {
            ("middle", h.middle_len, l.max_middle)
        } else {
            ("data", h.data_len, l.max_data)
        };
        Error::TooLarge { what, len: len.into(), limit: limit.into() }
    }

    /// Checks the footer's flags and crcs against the segments; `taken` holds the crcs
    /// already taken of segments as they arrived ([`Self::crc_arrived`]).
    // Inlined: called per message by `split_whole`, where the slices and the footer
    // passed through memory to a call of its own.
    #[inline(always)]
    fn check_footer(
        &self,
        f: &MsgFooter,
        [front, middle, data]: [&[u8]; 3],
        [front_crc, middle_crc, data_crc]: [Option<u32>; 3],
    ) -> Result<()> {
        if !f.flags.contains(FooterFlags::COMPLETE) {
            return Err(Error::Aborted);
        }
        let check = |what, expected, seg: &[u8], taken: Option<u32>| {
            let got = taken.unwrap_or_else(|| ceph_crc32c(0, seg));
            if got == expected {
                Ok(())
            } else {
                Err(Error::BadCrc { what, expected, got })
            }
        };
        if self.opts.crc.crc_header {
            check("front", f.front_crc, front, front_crc)?;
            check("middle", f.middle_crc, middle, middle_crc)?;
        }
        if self.opts.crc.crc_data && !f.flags.contains(FooterFlags::NOCRC) {
            check("data", f.data_crc, data, data_crc)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::{EntityName, EntityType};

    /// The bytes after the MSG tag of a message with a 5-byte front and `len` data bytes.
    fn wire(len: usize, crc_data: bool) -> (Vec<u8>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut msg = Message::new(0x7f00, Bytes::from_static(b"front"));
        msg.set_data(Bytes::from(data.clone()));
        let opts = EncodeOptions { crc_data, ..EncodeOptions::default() };
        let mut out = Vec::new();
        msg.encode_frame(1, EntityName::new(EntityType::OSD, 0), &opts).write_to(&mut out);
        (out.split_off(1), data)
    }

    /// Feeds `wire` up to its footer: the header, front and first data bytes in one
    /// ordinary read, the rest of the data half by direct reads into the assembly buffer
    /// and half as ordinary reads of 10,000 bytes. Returns where the footer starts.
    fn feed_to_footer(dec: &mut MessageDecoder, wire: &[u8], len: usize) -> usize {
        let first = MsgHeader::LEN + 5 + 1000;
        let mut input = Bytes::copy_from_slice(&wire[..first]);
        assert!(matches!(dec.feed(&mut input), Ok(Progress::HeaderReady(_))));
        dec.proceed().unwrap();
        assert!(matches!(dec.feed(&mut input), Ok(Progress::NeedMore)));
        let (mut at, end) = (first, MsgHeader::LEN + 5 + len);
        while at < end {
            let direct = at < end - len / 2;
            let n = if direct {
                let (buf, need) = dec.assembly_buffer().unwrap();
                let n = need.min(70_000);
                buf.extend_from_slice(&wire[at..at + n]);
                assert!(matches!(dec.feed(&mut Bytes::new()), Ok(Progress::NeedMore)));
                n
            } else {
                let n = (end - at).min(10_000);
                let mut piece = Bytes::copy_from_slice(&wire[at..at + n]);
                assert!(matches!(dec.feed(&mut piece), Ok(Progress::NeedMore)));
                n
            };
            at += n;
        }
        at
    }

    // `feed_admitting`: a whole message is taken in one call when admitted, with the
    // input after it left; one not admitted, or not all there, stops at its header as
    // `feed` does (asked only in the first case); and a bad header fails before any
    // question is asked.
    #[test]
    fn a_whole_message_is_taken_in_one_call_only_when_admitted() {
        let (one, data) = wire(64, true);
        let mut two = one.clone();
        two.extend_from_slice(&[0xee; 3]);

        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let mut asked = Vec::new();
        let mut input = Bytes::from(two.clone());
        let got = dec.feed_admitting(&mut input, |h| {
            asked.push((h.seq, h.payload_len()));
            true
        });
        let Ok(Progress::Message(got)) = got else { panic!("no message: {got:?}") };
        assert_eq!((got.front().as_ref(), got.data().as_ref()), (&b"front"[..], &data[..]));
        assert_eq!(asked, [(1, 5 + 64)]);
        assert_eq!(input.as_ref(), [0xee; 3], "the bytes after it are left");
        assert!(dec.is_idle(), "awaits the next header");

        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let mut input = Bytes::from(two.clone());
        let got = dec.feed_admitting(&mut input, |_| false);
        assert!(matches!(got, Ok(Progress::HeaderReady(_))), "{got:?}");
        assert_eq!(input.len(), two.len() - MsgHeader::LEN, "only the header taken");
        dec.proceed().unwrap();
        assert!(matches!(dec.feed(&mut input), Ok(Progress::Message(_))));

        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let mut input = Bytes::copy_from_slice(&one[..one.len() - 1]);
        let got = dec.feed_admitting(&mut input, |_| panic!("asked about a partial message"));
        assert!(matches!(got, Ok(Progress::HeaderReady(_))), "{got:?}");

        let mut bad = one.clone();
        bad[3] ^= 1;
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let got = dec.feed_admitting(&mut Bytes::from(bad), |_| panic!("asked about a bad header"));
        assert!(matches!(got, Err(Error::BadCrc { what: "header", .. })), "{got:?}");
    }

    // A whole message taken in one call for every mix of empty and non-empty segments:
    // each segment as sent, and nothing of the input held once the message is dropped
    // (the empty segments each non-empty one replaces own nothing; a reference to the
    // input lost on the way would keep it shared).
    #[test]
    fn a_whole_message_is_split_for_each_mix_of_empty_segments() {
        for mask in 0..8u8 {
            let seg = |bit: u8, b: &'static [u8]| {
                if mask & bit != 0 {
                    Bytes::from_static(b)
                } else {
                    Bytes::new()
                }
            };
            let mut msg = Message::new(0x7f00, seg(1, b"front"));
            msg.set_middle(seg(2, b"middle"));
            msg.set_data(seg(4, b"some data"));
            let mut out = Vec::new();
            let opts = EncodeOptions::default();
            msg.encode_frame(1, EntityName::new(EntityType::OSD, 0), &opts).write_to(&mut out);
            let mut input = Bytes::from(out.split_off(1));
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            let got = dec.feed_admitting(&mut input, |_| true);
            let Ok(Progress::Message(got)) = got else { panic!("{mask}: no message: {got:?}") };
            assert_eq!(
                (got.front(), got.middle(), got.data()),
                (msg.front(), msg.middle(), msg.data()),
                "{mask}"
            );
            assert!(input.is_empty() && dec.is_idle(), "{mask}");
            drop(got);
            assert!(input.is_unique(), "{mask}: a segment of the input is still held");
        }
    }

    // A whole message admitted with a corrupt front or data fails its footer check in the
    // one call (the message built from it is dropped: nothing of the input is held), and
    // the decoder refuses further input.
    #[test]
    fn a_whole_admitted_message_with_a_bad_payload_crc_fails_and_holds_nothing() {
        let (one, _) = wire(64, true);
        for (at, what) in [(MsgHeader::LEN + 1, "front"), (MsgHeader::LEN + 5 + 30, "data")] {
            let mut bad = one.clone();
            bad[at] ^= 1;
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            let mut input = Bytes::from(bad);
            let got = dec.feed_admitting(&mut input, |_| true);
            assert!(
                matches!(got, Err(Error::BadCrc { what: w, .. }) if w == what),
                "{what}: {got:?}"
            );
            drop(got);
            assert!(input.is_unique(), "{what}: a segment of the input is still held");
            let again = dec.feed(&mut Bytes::copy_from_slice(&one));
            assert!(matches!(again, Err(Error::Misuse(_))), "{what}: {again:?}");
        }
    }

    // A message whose segments arrived in pieces (a small data segment grown piece by
    // piece, a split header) leaves the decoder holding nothing once it is delivered:
    // the assembly buffer's spare tail stayed, counted by `held_bytes`.
    #[test]
    fn a_delivered_message_leaves_no_spare_assembly_buffer() {
        let (wire, data) = wire(40_000, true);
        for (header_piece, piece) in [(MsgHeader::LEN, 7_000), (10, 7_000), (10, wire.len())] {
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            // The header in pieces of `header_piece` bytes, then the rest in `piece`s.
            let mut at = 0;
            while at < MsgHeader::LEN {
                let n = header_piece.min(MsgHeader::LEN - at);
                let mut input = Bytes::copy_from_slice(&wire[at..at + n]);
                at += n;
                let fed = dec.feed(&mut input);
                assert!(matches!(fed, Ok(Progress::NeedMore | Progress::HeaderReady(_))));
            }
            let mut got = None;
            while at < wire.len() {
                let n = piece.min(wire.len() - at);
                let mut input = Bytes::copy_from_slice(&wire[at..at + n]);
                at += n;
                loop {
                    match dec.feed(&mut input) {
                        Ok(Progress::HeaderReady(_)) => dec.proceed().expect("proceed"),
                        Ok(Progress::NeedMore) => break,
                        Ok(Progress::Message(m)) => {
                            got = Some(m);
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            let got = got.expect("the message");
            assert_eq!(got.data().as_ref(), &data[..]);
            assert!(dec.is_idle(), "awaits the next header");
            assert_eq!(
                dec.held_bytes(),
                0,
                "nothing held after the message (header in {header_piece}, pieces of {piece})"
            );
        }
    }

    // A large data segment's crc is taken as its pieces arrive (direct reads and ordinary
    // ones alike), so it is ready before the footer is: no pass over the whole segment
    // between the footer and the message.
    #[test]
    fn a_large_segment_s_crc_is_taken_as_it_arrives() {
        let len = 4 * DIRECT_ASSEMBLY_MIN + 17;
        let (wire, data) = wire(len, true);
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let at = feed_to_footer(&mut dec, &wire, len);
        assert_eq!(dec.taken_crcs, [None, None, Some(ceph_crc32c(0, &data))]);
        let Ok(Progress::Message(got)) = dec.feed(&mut Bytes::copy_from_slice(&wire[at..])) else {
            panic!("no message");
        };
        assert_eq!(got.data().as_ref(), &data[..]);
        assert_eq!(dec.taken_crcs, [None; 3], "used up by the message");
    }

    // A flipped bit anywhere in the segment (the first ordinary read, a direct read, an
    // ordinary read near the end) fails the running crc.
    #[test]
    fn a_corrupt_piece_fails_the_running_crc() {
        let len = 4 * DIRECT_ASSEMBLY_MIN + 17;
        let (clean, _) = wire(len, true);
        for off in [10, 100_000, len - 3] {
            let mut wire = clean.clone();
            wire[MsgHeader::LEN + 5 + off] ^= 0x10;
            let mut dec = MessageDecoder::new(DecodeOptions::default());
            let at = feed_to_footer(&mut dec, &wire, len);
            let got = dec.feed(&mut Bytes::copy_from_slice(&wire[at..]));
            assert!(matches!(got, Err(Error::BadCrc { what: "data", .. })), "{off}: {got:?}");
        }
    }

    // A peer that sends no data crc (`NOCRC`) gets none taken as its data arrives; its
    // next message with a crc is still checked, and the one after is crc'd as it arrives
    // again.
    #[test]
    fn no_running_crc_for_a_peer_that_sends_none() {
        let len = 2 * DIRECT_ASSEMBLY_MIN;
        let mut dec = MessageDecoder::new(DecodeOptions::default());
        let (nocrc, data) = wire(len, false);
        let at = feed_to_footer(&mut dec, &nocrc, len);
        assert_eq!(dec.taken_crcs, [None, None, Some(ceph_crc32c(0, &data))], "first: guessed");
        assert!(matches!(
            dec.feed(&mut Bytes::copy_from_slice(&nocrc[at..])),
            Ok(Progress::Message(_))
        ));
        let (with_crc, _) = wire(len, true);
        let mut corrupt = with_crc.clone();
        corrupt[MsgHeader::LEN + 5 + 500] ^= 1;
        let at = feed_to_footer(&mut dec, &corrupt, len);
        assert_eq!(dec.taken_crcs, [None; 3], "not taken after a NOCRC footer");
        let got = dec.feed(&mut Bytes::copy_from_slice(&corrupt[at..]));
        assert!(matches!(got, Err(Error::BadCrc { what: "data", .. })), "{got:?}");
        dec.reset();
        let at = feed_to_footer(&mut dec, &with_crc, len);
        assert!(matches!(
            dec.feed(&mut Bytes::copy_from_slice(&with_crc[at..])),
            Ok(Progress::Message(_))
        ));
        feed_to_footer(&mut dec, &with_crc, len);
        assert!(dec.taken_crcs[2].is_some(), "taken again after a footer with a crc");
    }
}
