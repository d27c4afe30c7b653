//! [`FrameDecoder`]: wire bytes into frames, incrementally, every length checked
//! against the [`FrameLimits`] from the preamble before a segment is buffered.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::message::{grow_within, own_copy, DIRECT_ASSEMBLY_MIN, OWN_COPY_BELOW};
use crate::wire::{ceph_crc32c, RunningCrc};

use super::super::tag::Tag;
use super::{
    pad16, FrameLimits, GcmStream, Preamble, CRC_EPILOGUE_LEN, CRC_LEN, INLINE_LEN,
    LATE_STATUS_ABORTED, LATE_STATUS_COMPLETE, LATE_STATUS_MASK, MAX_SEGMENTS, PREAMBLE_LEN,
    SECURE_EPILOGUE_LEN, SECURE_HEAD_LEN, SEGMENT_CRC_SEED, TAG_LEN,
};

/// The first segment of a frame being received, before the rest is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The frame's preamble.
    pub preamble: Preamble,
    /// Segment 0, checked (crc or GCM).
    pub segment0: Bytes,
}

impl FrameHead {
    /// The frame's tag.
    pub fn tag(&self) -> Tag {
        self.preamble.tag
    }

    /// Bytes of segments 1..3 (a MESSAGE's front + middle + data).
    pub fn payload_len(&self) -> u64 {
        self.preamble.lens()[1..].iter().map(|&l| u64::from(l)).sum()
    }
}

/// A complete, verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's preamble.
    pub preamble: Preamble,
    /// Segments 0..3 (empty beyond `num_segments`).
    pub segments: [Bytes; MAX_SEGMENTS],
    /// The sender aborted the frame (`late_status` ABORTED): Ceph drops it silently.
    pub aborted: bool,
}

impl Frame {
    /// The frame's tag.
    pub fn tag(&self) -> Tag {
        self.preamble.tag
    }
}

/// What one [`FrameDecoder::advance`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameProgress {
    /// Nothing yet: call [`FrameDecoder::need`] again.
    NeedMore,
    /// Segment 0 is in: call [`FrameDecoder::proceed`] to read the rest.
    Head(FrameHead),
    /// The whole frame; the decoder is ready for the next one.
    Frame(Frame),
}

/// What one [`FrameDecoder::step`] produced: [`FrameProgress`] without the frame's
/// parts, which stay in the decoder until taken ([`FrameDecoder::segment0`],
/// [`FrameDecoder::take_segments`], [`FrameDecoder::take_frame`]). The receive path of
/// every message goes through here, so nothing larger than a byte moves per piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet: call [`FrameDecoder::need`] again.
    NeedMore,
    /// Segment 0 is in ([`FrameDecoder::segment0`]): call [`FrameDecoder::proceed`].
    Head,
    /// The whole frame is in: take it before the next piece.
    Frame,
}

/// What [`FrameDecoder::take_whole_message`] did with the frame at the start of its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Whole<T> {
    /// Nothing: no byte consumed, the decoder as it was; the frame is read piece by piece.
    Untaken,
    /// The MESSAGE frame, whole: what `admit` returned, the segments (segment 0 left
    /// empty: `admit` has seen it), and whether its sender aborted it.
    Taken(T, [Bytes; MAX_SEGMENTS], bool),
    /// Secure mode: the frame's first block was opened (its nonce used) and consumed, but
    /// the frame was not taken whole (no MESSAGE, not all there, or refused). The decoder
    /// is where [`FrameDecoder::step`] on that block leaves it, and this is what that step
    /// returned; the rest is read piece by piece.
    Opened(Step),
}

/// Where the decoder is within a frame. The frame's parts live in the decoder's fields,
/// so moving between stages moves no buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Between frames.
    Preamble,
    /// Preamble read; segment 0 (its crc, or the rest of its GCM block) next.
    Segment0,
    /// Segment 0 handed out; waiting for [`FrameDecoder::proceed`].
    Paused,
    /// Reading segments 1.. (crc mode: one at a time, `next` is the index, then the
    /// epilogue when `next == num_segments`) or block C whole (secure mode).
    Rest { next: usize },
    /// crc mode, after [`FrameDecoder::skip_rest`]: segments 1.. pass in pieces and are
    /// dropped (`next` is the index, `passed` what of it went by), then the epilogue.
    Skip { next: usize, passed: u32 },
    /// An error was returned; nothing more is decoded.
    Failed,
}

/// Incremental receiver of frames (see the module docs for the call order).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    /// Boxed: a connection in crc mode (most) does not carry the cipher state.
    secure: Option<Box<GcmStream>>,
    stage: Stage,
    /// The preamble of the frame in progress.
    preamble: Preamble,
    /// Secure mode: the first 48 bytes of padded segment 0, from the first block.
    inline: Bytes,
    /// The segments received so far of the frame in progress.
    segments: [Bytes; MAX_SEGMENTS],
    /// The frame just completed was aborted by its sender (late_status ABORTED).
    aborted: bool,
    /// crc mode: the start of a large payload segment that arrived across reads, in the
    /// buffer it is assembled in (grown only by what the caller lets in, see
    /// [`FrameDecoder::assembly_buffer`]); in [`Stage::Skip`], the running crcs of
    /// segments 1..3 ([`SKIP_CRCS_LEN`] bytes, nothing of the segments themselves);
    /// empty otherwise.
    partial: BytesMut,
    /// crc mode, while a large segment is assembled in `partial`: its crc so far, taken
    /// as the pieces arrive (on bytes still in cache, while the sender is still sending)
    /// rather than over the whole segment once the epilogue is in.
    running_crc: RunningCrc,
    /// The crcs of this frame's segments taken as they arrived, for the epilogue.
    taken_crcs: [Option<u32>; MAX_SEGMENTS],
    /// The segments of the frame in progress [`FrameDecoder::unpin_segments`] gave
    /// buffers of their own, by bit.
    owned: u8,
}

/// The most a skipped segment passes in one piece: what a duplicate holds at a time.
const SKIP_PIECE: usize = 64 << 10;
/// The running crcs of segments 1..3 of a skipped frame.
const SKIP_CRCS_LEN: usize = CRC_LEN * (MAX_SEGMENTS - 1);

impl FrameDecoder {
    /// A crc-mode decoder.
    pub fn new(limits: FrameLimits) -> Self {
        FrameDecoder {
            limits,
            secure: None,
            stage: Stage::Preamble,
            preamble: Preamble::default(),
            inline: Bytes::new(),
            segments: Default::default(),
            aborted: false,
            partial: BytesMut::new(),
            running_crc: RunningCrc::default(),
            taken_crcs: [None; MAX_SEGMENTS],
            owned: 0,
        }
    }

    /// Switches to secure mode (after AUTH_DONE). Only between frames.
    pub fn set_secure(&mut self, rx: GcmStream) -> Result<()> {
        if self.stage != Stage::Preamble {
            return Err(Error::Misuse("mode switch in the middle of a frame"));
        }
        self.secure = Some(Box::new(rx));
        Ok(())
    }

    /// Whether frames are decrypted.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// Whether the decoder waits for [`FrameDecoder::proceed`].
    pub fn is_paused(&self) -> bool {
        self.stage == Stage::Paused
    }

    /// Whether the decoder is between frames.
    pub fn is_idle(&self) -> bool {
        self.stage == Stage::Preamble
    }

    /// The exact number of bytes the next [`FrameDecoder::advance`] takes (0 is valid:
    /// call `advance` with an empty piece). Meaningless while paused or failed.
    pub fn need(&self) -> usize {
        let lens = self.preamble.lens();
        let num = usize::from(self.preamble.num_segments);
        match self.stage {
            Stage::Preamble if self.secure.is_some() => SECURE_HEAD_LEN,
            Stage::Preamble => PREAMBLE_LEN,
            Stage::Segment0 => {
                let l0 = lens[0] as usize;
                if self.secure.is_some() {
                    let p0 = pad16(l0);
                    if p0 > INLINE_LEN {
                        p0 - INLINE_LEN + TAG_LEN
                    } else {
                        0
                    }
                } else if l0 > 0 {
                    l0 + CRC_LEN
                } else {
                    0
                }
            }
            Stage::Rest { .. } if num <= 1 => 0,
            Stage::Rest { .. } if self.secure.is_some() => {
                lens[1..num].iter().map(|&l| pad16(l as usize)).sum::<usize>()
                    + SECURE_EPILOGUE_LEN
                    + TAG_LEN
            }
            // Each segment on its own, so that one arriving in one chunk is sliced out
            // of it rather than gathered with its neighbours.
            Stage::Rest { next } if next < num => {
                lens.get(next).map_or(0, |&l| l as usize).saturating_sub(self.partial.len())
            }
            Stage::Rest { .. } => CRC_EPILOGUE_LEN,
            Stage::Skip { next, passed } if next < num => lens
                .get(next)
                .map_or(0, |&l| l as usize)
                .saturating_sub(passed as usize)
                .min(SKIP_PIECE),
            Stage::Skip { .. } => CRC_EPILOGUE_LEN,
            Stage::Paused | Stage::Failed => 0,
        }
    }

    /// Payload bytes (segments 1..) of the frame in progress.
    pub fn payload_len(&self) -> u64 {
        match self.stage {
            Stage::Preamble | Stage::Failed => 0,
            _ => self.preamble.lens()[1..].iter().map(|&l| u64::from(l)).sum(),
        }
    }

    /// Payload bytes (segments 1..) of the frame in progress that
    /// [`FrameDecoder::advance`] has not taken yet (secure mode takes them all at once).
    pub fn payload_pending(&self) -> u64 {
        let lens = self.preamble.lens();
        let num = usize::from(self.preamble.num_segments);
        let (from, taken) = match self.stage {
            Stage::Segment0 | Stage::Paused => (1, self.partial.len()),
            Stage::Rest { next } if self.secure.is_none() => (next, self.partial.len()),
            Stage::Rest { .. } => (1, self.partial.len()),
            Stage::Skip { next, passed } => (next, passed as usize),
            Stage::Preamble | Stage::Failed => return 0,
        };
        let left: u64 = lens.get(from..num).map_or(0, |l| l.iter().map(|&x| u64::from(x)).sum());
        left.saturating_sub(taken as u64)
    }

    /// The large payload segment (crc mode, at least [`DIRECT_ASSEMBLY_MIN`] bytes) the
    /// decoder is in, and how many bytes of it are still missing; `None` elsewhere.
    fn assembling(&self) -> Option<usize> {
        let Stage::Rest { next } = self.stage else { return None };
        if self.secure.is_some() || next >= usize::from(self.preamble.num_segments) {
            return None;
        }
        let len = self.preamble.lens().get(next).map_or(0, |&l| l as usize);
        (len >= DIRECT_ASSEMBLY_MIN).then(|| len - self.partial.len())
    }

    /// Whether a large payload segment is being assembled in place (crc mode), so that
    /// [`FrameDecoder::absorb`] would take bytes: callers check it before gathering
    /// buffered bytes for it, which costs a copy whenever they span several reads.
    pub fn is_assembling(&self) -> bool {
        self.assembling().is_some()
    }

    /// Copies the first bytes of a large payload segment that are already buffered
    /// into its assembly buffer, so that the rest can be read straight into it
    /// ([`FrameDecoder::assembly_buffer`]). Takes at most what the segment still needs;
    /// returns how many bytes it took (0 when not in such a segment).
    pub fn absorb(&mut self, bytes: &[u8]) -> usize {
        let Some(missing) = self.assembling() else { return 0 };
        let n = bytes.len().min(missing);
        // Room made within the segment's length: `extend_from_slice` alone doubles, and
        // a segment fed in reads (`handle_bytes`) was held in twice its length.
        let segment_len = self.partial.len() + missing;
        grow_within(&mut self.partial, n, segment_len);
        self.partial.extend_from_slice(&bytes[..n]);
        n
    }

    /// While a large payload segment is being assembled (crc mode), the buffer it grows
    /// in and how many bytes may be read into its spare capacity now: what the segment
    /// still needs, at most `allowed` (the receive budget not yet covered). The buffer
    /// grows for that much only (doubling, but never past the segment's length), never
    /// to the announced length up front. The caller then
    /// calls [`FrameDecoder::advance`] with what [`FrameDecoder::need`] says (an empty
    /// piece once the segment is complete). `None` otherwise.
    pub fn assembly_buffer(&mut self, allowed: u64) -> Option<(&mut BytesMut, usize)> {
        let missing = self.assembling()?;
        let want = missing.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        if want == 0 {
            return None;
        }
        self.running_crc.update(SEGMENT_CRC_SEED, &self.partial);
        let segment_len = self.partial.len() + missing;
        grow_within(&mut self.partial, want, segment_len);
        Some((&mut self.partial, want))
    }

    /// Bytes of memory held for the frame in progress: the segments taken so far and
    /// the capacity of a large segment's assembly buffer (0 between frames).
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.segments.iter().map(Bytes::len).sum::<usize>()
    }

    /// Resumes after [`FrameProgress::Head`].
    pub fn proceed(&mut self) -> Result<()> {
        if self.stage != Stage::Paused {
            return Err(Error::Misuse("proceed without a frame head"));
        }
        self.stage = Stage::Rest { next: self.nonempty_from(1) };
        Ok(())
    }

    /// Resumes after [`FrameProgress::Head`] without keeping the rest of the frame (a
    /// duplicate message), in crc mode only: its segments pass in pieces of at most 64
    /// KiB, their crcs checked as they go, and are dropped, so the frame holds nothing
    /// whatever it announced. In secure mode the rest is one GCM block whose tag can only
    /// be checked over the whole of it, and every frame's tag is checked before anything
    /// of it is trusted (Ceph verifies a duplicate's before it looks at its seq): a
    /// duplicate is read whole with [`FrameDecoder::proceed`], and this is refused.
    pub fn skip_rest(&mut self) -> Result<()> {
        if self.secure.is_some() {
            return Err(Error::Misuse("secure mode reads a frame whole to check its tag"));
        }
        self.proceed()?;
        // A one-segment frame has no more bytes (crc mode has no epilogue for it).
        if self.preamble.num_segments > 1 {
            self.stage = Stage::Skip { next: 1, passed: 0 };
            self.partial = BytesMut::with_capacity(SKIP_CRCS_LEN);
            for _ in 1..MAX_SEGMENTS {
                self.partial.extend_from_slice(&SEGMENT_CRC_SEED.to_le_bytes());
            }
        }
        Ok(())
    }

    /// crc mode: the first segment from `next` on that has bytes to read (or
    /// `num_segments`: the epilogue). An empty segment is no piece of its own: a
    /// message with an empty front or middle (most) takes no read step for it.
    /// Secure mode reads block C whole, from segment 1.
    fn nonempty_from(&self, next: usize) -> usize {
        if self.secure.is_some() {
            return next;
        }
        let num = usize::from(self.preamble.num_segments);
        let lens = self.preamble.lens();
        (next..num).find(|&i| lens.get(i).is_some_and(|&l| l > 0)).unwrap_or(num)
    }

    /// Forgets any partial frame (after a fault, before reuse).
    pub fn reset(&mut self) {
        self.stage = Stage::Preamble;
        self.inline = Bytes::new();
        self.segments = Default::default();
        self.partial = BytesMut::new();
        self.running_crc = RunningCrc::default();
        self.taken_crcs = [None; MAX_SEGMENTS];
    }

    /// Feeds exactly [`FrameDecoder::need`] bytes. Any error leaves the decoder failed.
    pub fn advance(&mut self, piece: Bytes) -> Result<FrameProgress> {
        let step = self.step(piece)?;
        Ok(self.progress(step))
    }

    /// [`FrameDecoder::advance`] leaving the frame's parts in the decoder.
    pub fn step(&mut self, piece: Bytes) -> Result<Step> {
        if piece.len() != self.need() || matches!(self.stage, Stage::Paused | Stage::Failed) {
            return Err(Error::Misuse("advance with the wrong number of bytes"));
        }
        match std::mem::replace(&mut self.stage, Stage::Failed) {
            Stage::Preamble => self.read_preamble(&piece),
            Stage::Segment0 => self.read_segment0(piece),
            Stage::Rest { next } => self.read_rest(next, piece),
            Stage::Skip { next, passed } => self.skip_piece(next, passed, &piece),
            Stage::Paused | Stage::Failed => Err(Error::Misuse("advance on a failed decoder")),
        }
    }

    /// The parts of what `step` produced, handed out.
    fn progress(&mut self, step: Step) -> FrameProgress {
        match step {
            Step::NeedMore => FrameProgress::NeedMore,
            Step::Head => FrameProgress::Head(FrameHead {
                preamble: self.preamble,
                segment0: self.segments[0].clone(),
            }),
            Step::Frame => FrameProgress::Frame(self.take_frame()),
        }
    }

    /// The preamble of the frame in progress (or just completed).
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    /// Segment 0 of the frame in progress, once [`Step::Head`] was returned.
    pub fn segment0(&self) -> &Bytes {
        &self.segments[0]
    }

    /// Whether the frame just completed ([`Step::Frame`]) was aborted by its sender.
    pub fn aborted(&self) -> bool {
        self.aborted
    }

    /// Takes the segments of the frame just completed ([`Step::Frame`]).
    pub fn take_segments(&mut self) -> [Bytes; MAX_SEGMENTS] {
        self.owned = 0;
        std::mem::take(&mut self.segments)
    }

    /// The frame in progress waits for more input (or for its budget): its segments
    /// received so far that are slices of the read they came in, and shorter than
    /// `OWN_COPY_BELOW` (16 KiB), are copied into buffers of their own, once each. Kept as
    /// slices while the frame waited, they pinned the whole shared read buffer (64 KiB
    /// per connection, for a message charged its first window).
    pub fn unpin_segments(&mut self) {
        for (i, segment) in self.segments.iter_mut().enumerate() {
            let bit = 1u8 << i;
            if segment.is_empty() || segment.len() >= OWN_COPY_BELOW || self.owned & bit != 0 {
                continue;
            }
            *segment = own_copy(segment);
            self.owned |= bit;
        }
    }

    /// Takes the frame just completed ([`Step::Frame`]).
    pub fn take_frame(&mut self) -> Frame {
        Frame { preamble: self.preamble, segments: self.take_segments(), aborted: self.aborted }
    }

    /// Whether the next piece is only read, never kept (the preamble, crc mode's
    /// epilogue): [`FrameDecoder::advance_slice`] takes it without a `Bytes`.
    pub fn reads_in_place(&self) -> bool {
        let num = usize::from(self.preamble.num_segments);
        match self.stage {
            Stage::Preamble => true,
            Stage::Rest { next } => self.secure.is_none() && num > 1 && next >= num,
            Stage::Skip { next, .. } => next >= num,
            _ => false,
        }
    }

    /// [`FrameDecoder::advance`] for a piece that is only read
    /// ([`FrameDecoder::reads_in_place`]): the caller needs no `Bytes` for it (no
    /// reference taken on a shared read buffer). Any error leaves the decoder failed.
    pub fn advance_slice(&mut self, piece: &[u8]) -> Result<FrameProgress> {
        let step = self.step_slice(piece)?;
        Ok(self.progress(step))
    }

    /// [`FrameDecoder::advance_slice`] leaving the frame's parts in the decoder.
    pub fn step_slice(&mut self, piece: &[u8]) -> Result<Step> {
        if !self.reads_in_place() || piece.len() != self.need() {
            return Err(Error::Misuse("advance_slice with a piece that is kept or wrong"));
        }
        match std::mem::replace(&mut self.stage, Stage::Failed) {
            Stage::Preamble => self.read_preamble(piece),
            Stage::Skip { .. } => self.read_crc_epilogue(piece, true),
            _ => self.read_crc_epilogue(piece, false),
        }
    }

    /// Between frames: a MESSAGE frame that is all at the start of `input`, taken in one
    /// call instead of one piece at a time. `admit` is asked with segment 0 (its crc or
    /// GCM tag checked) and the payload length (segments 1..); on `Some(t)` the frame is
    /// consumed from `input` and comes back as [`Whole::Taken`]. Otherwise the frame is
    /// read piece by piece ([`FrameDecoder::step`]): in crc mode nothing is consumed
    /// ([`Whole::Untaken`]); in secure mode the first block must be opened to learn what
    /// the frame is, and that uses its nonce, so once it is opened it is consumed and the
    /// decoder goes on from it ([`Whole::Opened`]). An error is the one the piece-by-piece
    /// path returns on the same bytes, and leaves the decoder failed.
    ///
    /// Why: a small message arrives whole, and reading it in pieces (preamble, segment
    /// 0, the payload, the epilogue; in secure mode the first block and block C) cost a
    /// round of the caller's input loop and of this decoder's bookkeeping each.
    pub fn take_whole_message<T>(
        &mut self,
        input: &mut Bytes,
        admit: impl FnOnce(&[u8], u64) -> Option<T>,
    ) -> Result<Whole<T>> {
        if self.stage != Stage::Preamble {
            return Ok(Whole::Untaken);
        }
        let r = if self.secure.is_some() {
            self.whole_sealed_message(input, admit)
        } else {
            self.whole_message(input, admit)
        };
        if r.is_err() {
            self.stage = Stage::Failed;
        }
        r
    }

    fn whole_message<T>(
        &mut self,
        input: &mut Bytes,
        admit: impl FnOnce(&[u8], u64) -> Option<T>,
    ) -> Result<Whole<T>> {
        let Some(raw) = input.first_chunk::<PREAMBLE_LEN>() else { return Ok(Whole::Untaken) };
        let preamble = self.checked_preamble(raw)?;
        let lens = preamble.lens();
        let num = usize::from(preamble.num_segments);
        let l0 = lens[0] as usize;
        if preamble.tag != Tag::MESSAGE || l0 == 0 {
            return Ok(Whole::Untaken);
        }
        let rest = lens.get(1..num).unwrap_or_default();
        let payload: u64 = rest.iter().map(|&l| u64::from(l)).sum();
        let seg0_end = PREAMBLE_LEN + l0 + CRC_LEN;
        // Within the limits just checked: no overflow.
        let end = if num > 1 { seg0_end + payload as usize + CRC_EPILOGUE_LEN } else { seg0_end };
        let (Some(seg0), Some(seg0_crc), Some(epilogue)) = (
            input.get(PREAMBLE_LEN..PREAMBLE_LEN + l0),
            input.get(PREAMBLE_LEN + l0..seg0_end).and_then(|c| c.first_chunk::<CRC_LEN>()),
            input.get(end - if num > 1 { CRC_EPILOGUE_LEN } else { 0 }..end),
        ) else {
            return Ok(Whole::Untaken);
        };
        let wire = u32::from_le_bytes(*seg0_crc);
        let got = ceph_crc32c(SEGMENT_CRC_SEED, seg0);
        if wire != got {
            return Err(Error::BadCrc { what: "segment 0", expected: wire, got });
        }
        let Some(admitted) = admit(seg0, payload) else { return Ok(Whole::Untaken) };
        let mut segments: [Bytes; MAX_SEGMENTS] = Default::default();
        if num > 1 {
            let (late, crcs) = epilogue.split_at(1);
            let mut at = seg0_end;
            // Segments 1.. sliced off, not skipped: `skip` on a `take` was a call of
            // `Take::nth` per message (~75 instructions at 4 KiB).
            let slots = segments[1..].iter_mut().zip(&lens[1..]).zip(&SEGMENT_NAMES[1..]);
            for (((slot, &len), &what), crc) in slots.zip(crcs.chunks_exact(CRC_LEN)).take(num - 1)
            {
                let len = len as usize;
                // In bounds: the segments end where the epilogue starts, within `input`.
                let segment = if len == 0 { Bytes::new() } else { input.slice(at..at + len) };
                at += len;
                let wire = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                let got = ceph_crc32c(SEGMENT_CRC_SEED, &segment);
                if wire != got {
                    return Err(Error::BadCrc { what, expected: wire, got });
                }
                *slot = segment;
            }
            self.finish_with(late[0])?;
        } else {
            self.finish_frame(false);
        }
        input.advance(end);
        self.preamble = preamble;
        Ok(Whole::Taken(admitted, segments, self.aborted))
    }

    /// Secure mode's [`FrameDecoder::take_whole_message`]: the first block is opened
    /// (into a stack buffer: a message's header is inline in it and read in place), then
    /// block C, when it is all there, only if `admit` says yes.
    fn whole_sealed_message<T>(
        &mut self,
        input: &mut Bytes,
        admit: impl FnOnce(&[u8], u64) -> Option<T>,
    ) -> Result<Whole<T>> {
        let Some(head) = input.first_chunk::<SECURE_HEAD_LEN>() else {
            return Ok(Whole::Untaken);
        };
        let (preamble, block) = self.open_first_block(head)?;
        input.advance(SECURE_HEAD_LEN);
        let inline = &block[PREAMBLE_LEN..];
        let lens = preamble.lens();
        let num = usize::from(preamble.num_segments);
        let l0 = lens[0] as usize;
        let rest = lens.get(1..num).unwrap_or_default();
        let payload: u64 = rest.iter().map(|&l| u64::from(l)).sum();
        // Within the limits just checked: no overflow.
        let block_c = if num > 1 {
            rest.iter().map(|&l| pad16(l as usize)).sum::<usize>() + SECURE_EPILOGUE_LEN + TAG_LEN
        } else {
            0
        };
        let segment0 = inline.get(..l0).filter(|_| l0 > 0 && pad16(l0) <= INLINE_LEN);
        if let (Tag::MESSAGE, Some(segment0), true) =
            (preamble.tag, segment0, input.len() >= block_c)
        {
            if let Some(admitted) = admit(segment0, payload) {
                self.segments = Default::default();
                self.preamble = preamble;
                let late_status = if num > 1 {
                    self.open_rest(input.split_to(block_c))?
                } else {
                    LATE_STATUS_COMPLETE
                };
                self.finish_with(late_status)?;
                return Ok(Whole::Taken(admitted, self.take_segments(), self.aborted));
            }
        }
        let inline = Bytes::copy_from_slice(inline);
        self.enter_frame(preamble, inline).map(Whole::Opened)
    }

    fn read_preamble(&mut self, piece: &[u8]) -> Result<Step> {
        if self.secure.is_none() {
            let Some(raw) = piece.first_chunk::<PREAMBLE_LEN>() else {
                return Err(Error::Misuse("short preamble"));
            };
            let preamble = self.checked_preamble(raw)?;
            return self.enter_frame(preamble, Bytes::new());
        }
        let Some(head) = piece.first_chunk::<SECURE_HEAD_LEN>() else {
            return Err(Error::Misuse("short secure head"));
        };
        let (preamble, block) = self.open_first_block(head)?;
        let inline = Bytes::copy_from_slice(&block[PREAMBLE_LEN..]);
        self.enter_frame(preamble, inline)
    }

    /// A preamble, decoded and checked against the limits.
    fn checked_preamble(&self, raw: &[u8; PREAMBLE_LEN]) -> Result<Preamble> {
        let preamble = Preamble::decode(raw)?;
        self.limits.check(&preamble)?;
        Ok(preamble)
    }

    /// Secure mode's first block, opened (its nonce used) into a stack buffer, and its
    /// preamble checked: the block's bytes are read (the preamble, a message's header,
    /// inline after it), rarely kept.
    fn open_first_block(
        &mut self,
        head: &[u8; SECURE_HEAD_LEN],
    ) -> Result<(Preamble, [u8; PREAMBLE_LEN + INLINE_LEN])> {
        let Some(gcm) = self.secure.as_mut() else {
            return Err(Error::Misuse("a sealed block outside secure mode"));
        };
        let (sealed, tag) = head.split_at(PREAMBLE_LEN + INLINE_LEN);
        let mut block = [0u8; PREAMBLE_LEN + INLINE_LEN];
        block.copy_from_slice(sealed);
        gcm.open(&mut block, tag)?;
        let Some(raw) = block.first_chunk::<PREAMBLE_LEN>() else {
            return Err(Error::Misuse("secure head too short"));
        };
        let preamble = self.checked_preamble(raw)?;
        Ok((preamble, block))
    }

    /// A frame's preamble (checked) and, in secure mode, the inline bytes of its first
    /// block are in: on to segment 0.
    fn enter_frame(&mut self, preamble: Preamble, inline: Bytes) -> Result<Step> {
        if self.segments.iter().any(|seg| !seg.is_empty()) {
            // Parts of the last frame nobody took: never mistaken for this one's.
            self.segments = Default::default();
        }
        self.owned = 0;
        self.inline = inline;
        self.preamble = preamble;
        self.aborted = false;
        self.stage = Stage::Segment0;
        if self.need() == 0 {
            self.stage = Stage::Failed;
            return self.read_segment0(Bytes::new());
        }
        Ok(Step::NeedMore)
    }

    fn read_segment0(&mut self, piece: Bytes) -> Result<Step> {
        let l0 = self.preamble.lens()[0] as usize;
        let segment0 = match self.secure.as_mut() {
            None if l0 == 0 => Bytes::new(),
            None => {
                let mut piece = piece;
                let crc_bytes = piece.split_off(l0);
                let wire =
                    u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
                let got = ceph_crc32c(SEGMENT_CRC_SEED, &piece);
                if wire != got {
                    return Err(Error::BadCrc { what: "segment 0", expected: wire, got });
                }
                piece
            }
            Some(_) if piece.is_empty() => self.inline.slice(..l0),
            Some(gcm) => {
                let body = piece.len() - TAG_LEN;
                let mut all = BytesMut::with_capacity(INLINE_LEN + body);
                all.extend_from_slice(&self.inline);
                all.extend_from_slice(&piece[..body]);
                gcm.open(&mut all[INLINE_LEN..], &piece[body..])?;
                all.truncate(l0);
                all.freeze()
            }
        };
        self.inline = Bytes::new();
        self.segments[0] = segment0;
        self.stage = Stage::Paused;
        Ok(Step::Head)
    }

    fn read_rest(&mut self, next: usize, piece: Bytes) -> Result<Step> {
        let num = usize::from(self.preamble.num_segments);
        if num <= 1 {
            return Ok(self.finish_frame(false));
        }
        if self.secure.is_some() {
            let late_status = self.open_rest(piece)?;
            return self.finish_with(late_status);
        }
        if next < num {
            // One segment; its crc is checked with the epilogue.
            let segment = if self.partial.is_empty() {
                piece
            } else {
                let segment_len = self.partial.len() + piece.len();
                grow_within(&mut self.partial, piece.len(), segment_len);
                self.partial.extend_from_slice(&piece);
                let crc = self.running_crc.update(SEGMENT_CRC_SEED, &self.partial);
                if let Some(slot) = self.taken_crcs.get_mut(next) {
                    *slot = Some(crc);
                }
                self.running_crc = RunningCrc::default();
                std::mem::take(&mut self.partial).freeze()
            };
            if let Some(slot) = self.segments.get_mut(next) {
                *slot = segment;
            }
            self.stage = Stage::Rest { next: self.nonempty_from(next + 1) };
            return Ok(Step::NeedMore);
        }
        self.read_crc_epilogue(&piece, false)
    }

    /// Secure mode's block C, whole: opened, segments 1.. of the frame in progress put
    /// in their slots; returns the epilogue's late_status.
    fn open_rest(&mut self, piece: Bytes) -> Result<u8> {
        let num = usize::from(self.preamble.num_segments);
        let lens = self.preamble.lens();
        let Some(gcm) = self.secure.as_mut() else {
            return Err(Error::Misuse("block C outside secure mode"));
        };
        let Some(body) = piece.len().checked_sub(TAG_LEN) else {
            return Err(Error::Misuse("block C shorter than its tag"));
        };
        // Decrypt in place: the piece is usually the only owner of its bytes (gathered
        // for us), so no copy; otherwise one.
        let mut plain = piece.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
        let tag = plain.split_off(body);
        gcm.open(&mut plain, &tag)?;
        let plain = plain.freeze();
        let mut at = 0;
        for (slot, &len) in self.segments.iter_mut().zip(&lens).take(num).skip(1) {
            let len = len as usize;
            // In bounds: block C holds every segment padded, then the epilogue.
            *slot = plain.slice(at..at + len);
            at += pad16(len);
        }
        Ok(plain.get(at).copied().unwrap_or(0))
    }

    /// One piece of segment `next` of a skipped frame (or its epilogue): into the
    /// segment's running crc, then dropped.
    fn skip_piece(&mut self, next: usize, passed: u32, piece: &[u8]) -> Result<Step> {
        let num = usize::from(self.preamble.num_segments);
        if next >= num {
            return self.read_crc_epilogue(piece, true);
        }
        let at = CRC_LEN * (next - 1);
        let Some(slot) = self.partial.get_mut(at..at + CRC_LEN) else {
            return Err(Error::Misuse("skipping without running crcs"));
        };
        let crc = ceph_crc32c(u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]), piece);
        slot.copy_from_slice(&crc.to_le_bytes());
        let passed = passed as usize + piece.len();
        let len = self.preamble.lens().get(next).map_or(0, |&l| l as usize);
        self.stage = if passed >= len {
            Stage::Skip { next: next + 1, passed: 0 }
        } else {
            // `passed < len`, a segment length: fits.
            Stage::Skip { next, passed: passed as u32 }
        };
        Ok(Step::NeedMore)
    }

    /// crc mode's epilogue: late_status, then the crcs of segments 1..3 (0 past
    /// num_segments), checked against the segments read (`skipped`: against the running
    /// crcs of a skipped frame's segments).
    fn read_crc_epilogue(&mut self, piece: &[u8], skipped: bool) -> Result<Step> {
        let num = usize::from(self.preamble.num_segments);
        let (late, crcs) = piece.split_at(1);
        let running = if skipped { std::mem::take(&mut self.partial) } else { BytesMut::new() };
        let taken = std::mem::take(&mut self.taken_crcs);
        let used = self.segments.iter().zip(SEGMENT_NAMES).enumerate().take(num).skip(1);
        for ((i, (seg, what)), wire) in used.zip(crcs.chunks_exact(CRC_LEN)) {
            let wire = u32::from_le_bytes([wire[0], wire[1], wire[2], wire[3]]);
            let got = match running.get(CRC_LEN * (i - 1)..CRC_LEN * i) {
                Some(c) if skipped => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                _ => match taken.get(i) {
                    Some(Some(crc)) => *crc,
                    _ => ceph_crc32c(SEGMENT_CRC_SEED, seg),
                },
            };
            if wire != got {
                return Err(Error::BadCrc { what, expected: wire, got });
            }
        }
        self.finish_with(late[0])
    }

    /// The frame is complete with this late_status.
    fn finish_with(&mut self, late_status: u8) -> Result<Step> {
        let aborted = match late_status & LATE_STATUS_MASK {
            LATE_STATUS_COMPLETE => false,
            LATE_STATUS_ABORTED => true,
            _ => return Err(Error::Malformed("bad late_status in the epilogue")),
        };
        Ok(self.finish_frame(aborted))
    }

    fn finish_frame(&mut self, aborted: bool) -> Step {
        self.stage = Stage::Preamble;
        self.aborted = aborted;
        Step::Frame
    }
}

/// Names of the segment crcs in errors.
const SEGMENT_NAMES: [&str; MAX_SEGMENTS] = ["segment 0", "segment 1", "segment 2", "segment 3"];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod skip_tests {
    use super::super::FrameEncoder;
    use super::*;

    /// A crc-mode MESSAGE with a 41-byte head and a data segment of `data_len` bytes.
    fn message(data_len: usize) -> Vec<u8> {
        let head = Bytes::from(vec![1u8; 41]);
        let data = Bytes::from((0..data_len).map(|i| i as u8).collect::<Vec<_>>());
        let empty = Bytes::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        FrameEncoder::crc()
            .encode(Tag::MESSAGE, &[&head, &empty, &empty, &data], &mut buf, &mut out)
            .unwrap();
        out.push(buf.freeze());
        out.concat()
    }

    /// Feeds `wire` skipping the rest after the head; returns the pieces' largest size
    /// and the outcome.
    fn skip(wire: &[u8]) -> (usize, Result<Frame>) {
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let all = Bytes::copy_from_slice(wire);
        let (mut at, mut largest) = (0, 0);
        loop {
            if dec.is_paused() {
                dec.skip_rest().unwrap();
            }
            let n = dec.need();
            largest = largest.max(n);
            let piece = all.slice(at..at + n);
            at += n;
            match dec.advance(piece) {
                Ok(FrameProgress::Frame(f)) => return (largest, Ok(f)),
                Ok(_) => {}
                Err(e) => return (largest, Err(e)),
            }
        }
    }

    // A skipped message's payload passes in pieces of at most SKIP_PIECE, never gathered,
    // and its crc is still checked.
    #[test]
    fn a_skipped_payload_passes_in_bounded_pieces_with_its_crc_checked() {
        let wire = message(1 << 20);
        let (largest, frame) = skip(&wire);
        assert_eq!(largest, SKIP_PIECE, "the 1 MiB segment was taken whole");
        let frame = frame.unwrap();
        assert!(frame.segments[3].is_empty(), "a skipped segment was kept");
        let mut bad = wire.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(skip(&bad).1, Err(Error::BadCrc { what: "segment 3", .. })));
        // A head-only message (one segment, no epilogue) and a small one.
        for len in [0, 100] {
            let wire = message(len);
            assert!(skip(&wire).1.unwrap().segments.iter().skip(1).all(Bytes::is_empty));
        }
    }

    // Secure mode skips nothing: a frame's tag covers all of block C, and no part of a
    // frame is trusted before its tag checked (a duplicate is read whole, then dropped).
    #[test]
    fn secure_mode_refuses_to_skip_a_frame() {
        let stream = || GcmStream::new(&[7u8; 16], &[9u8; 12]);
        let mut enc = FrameEncoder::secure(stream());
        let (head, data, empty) =
            (Bytes::from(vec![1u8; 41]), Bytes::from(vec![2u8; 1000]), Bytes::new());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        enc.encode(Tag::MESSAGE, &[&head, &empty, &empty, &data], &mut buf, &mut out).unwrap();
        out.push(buf.freeze());
        let all = Bytes::from(out.concat());
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(stream()).unwrap();
        let mut at = 0;
        while !dec.is_paused() {
            let n = dec.need();
            dec.advance(all.slice(at..at + n)).unwrap();
            at += n;
        }
        assert!(matches!(dec.skip_rest(), Err(Error::Misuse(_))));
        dec.proceed().unwrap();
        let n = dec.need();
        let Ok(FrameProgress::Frame(f)) = dec.advance(all.slice(at..at + n)) else {
            panic!("no frame")
        };
        assert_eq!(f.segments[3], data);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod running_crc_tests {
    use super::super::FrameEncoder;
    use super::*;

    // A large segment's crc is taken as its pieces arrive (what was absorbed, then each
    // direct read), so it is ready when the segment is; a flipped bit in the absorbed
    // start or in a direct read fails it.
    #[test]
    fn a_large_segment_s_crc_is_taken_as_it_arrives() {
        let head = Bytes::from(vec![1u8; 41]);
        let data = Bytes::from((0..300_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        let empty = Bytes::new();
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        FrameEncoder::crc()
            .encode(Tag::MESSAGE, &[&head, &empty, &empty, &data], &mut buf, &mut out)
            .unwrap();
        out.push(buf.freeze());
        let clean = out.concat();
        for corrupt in [None, Some(500), Some(200_000)] {
            let mut wire = clean.clone();
            let seg_at = PREAMBLE_LEN + 41 + CRC_LEN;
            if let Some(off) = corrupt {
                wire[seg_at + off] ^= 4;
            }
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let mut at = 0;
            for _ in 0..2 {
                let n = dec.need();
                dec.advance(Bytes::copy_from_slice(&wire[at..at + n])).unwrap();
                at += n;
            }
            dec.proceed().unwrap();
            assert_eq!(at, seg_at);
            at += dec.absorb(&wire[at..at + 1000]);
            while let Some((buf, max)) = dec.assembly_buffer(64 << 10) {
                let k = max.min(40_000);
                buf.extend_from_slice(&wire[at..at + k]);
                at += k;
            }
            assert!(matches!(dec.advance(Bytes::new()).unwrap(), FrameProgress::NeedMore));
            let taken = dec.taken_crcs[3];
            assert_eq!(taken, Some(ceph_crc32c(SEGMENT_CRC_SEED, &wire[seg_at..at])));
            let got = dec.advance_slice(&wire[at..]);
            match corrupt {
                None => assert!(matches!(got, Ok(FrameProgress::Frame(_))), "{got:?}"),
                Some(_) => {
                    assert!(matches!(got, Err(Error::BadCrc { what: "segment 3", .. })), "{got:?}")
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod whole_message_tests {
    use super::super::FrameEncoder;
    use super::*;

    /// A crc-mode MESSAGE: a 41-byte head, a 5-byte front, no middle, `data_len` data
    /// bytes.
    fn message(data_len: usize) -> Vec<u8> {
        let head = Bytes::from(vec![1u8; 41]);
        let front = Bytes::from_static(b"front");
        let data = Bytes::from((0..data_len).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        FrameEncoder::crc()
            .encode(Tag::MESSAGE, &[&head, &front, &Bytes::new(), &data], &mut buf, &mut out)
            .unwrap();
        out.push(buf.freeze());
        out.concat()
    }

    /// The frame read piece by piece, as without `take_whole_message`.
    fn by_pieces(wire: &[u8]) -> Frame {
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let all = Bytes::copy_from_slice(wire);
        let mut at = 0;
        loop {
            let n = dec.need();
            let piece = all.slice(at..at + n);
            at += n;
            match dec.advance(piece).unwrap() {
                FrameProgress::Head(_) => dec.proceed().unwrap(),
                FrameProgress::Frame(f) => return f,
                FrameProgress::NeedMore => {}
            }
        }
    }

    // A whole MESSAGE at the start of the input is taken in one call, with the segments
    // the piece-by-piece path yields, and the input after it is left; one not all
    // there, one `admit` refuses and a frame of another kind are left untouched (and
    // `admit` is asked only when the frame is a whole MESSAGE).
    #[test]
    fn a_whole_message_is_taken_in_one_call_with_the_segments_of_the_piecewise_path() {
        let one = message(64);
        let mut two = one.clone();
        two.extend_from_slice(&one);
        two.push(0xee);
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let mut input = Bytes::from(two.clone());
        let mut asked = Vec::new();
        for left in [one.len() + 1, 1] {
            let got = dec.take_whole_message(&mut input, |seg0, payload| {
                asked.push((seg0.to_vec(), payload));
                Some(7)
            });
            let Whole::Taken(t, segments, aborted) = got.unwrap() else { panic!("not taken") };
            assert_eq!((t, aborted), (7, false));
            let want = by_pieces(&one).segments;
            assert_eq!(segments[1..], want[1..], "the payload segments");
            assert!(segments[0].is_empty(), "segment 0 went to admit only");
            assert_eq!(input.len(), left);
            assert!(dec.is_idle());
        }
        assert_eq!(asked, vec![(vec![1u8; 41], 5 + 64); 2]);

        let untouched = |wire: Vec<u8>, admit: Option<u32>| {
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let mut input = Bytes::from(wire.clone());
            let got = dec.take_whole_message(&mut input, |_, _| admit);
            assert!(matches!(got, Ok(Whole::Untaken)), "{got:?}");
            assert_eq!(input.as_ref(), &wire[..], "nothing consumed");
            assert!(dec.is_idle());
        };
        untouched(one[..one.len() - 1].to_vec(), Some(1));
        untouched(one.clone(), None);
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let mut other = Vec::new();
        let mut buf = BytesMut::new();
        FrameEncoder::crc()
            .encode(Tag::KEEPALIVE2, &[&Bytes::from(vec![0u8; 12])], &mut buf, &mut other)
            .unwrap();
        other.push(buf.freeze());
        let other = other.concat();
        let got = dec.take_whole_message(&mut Bytes::from(other), |_, _| -> Option<()> {
            panic!("asked about a frame of another kind")
        });
        assert!(matches!(got, Ok(Whole::Untaken)));
    }

    // What the piece-by-piece path refuses, this refuses too, and the decoder is then
    // failed: a flipped bit in the data, a flipped bit in segment 0 (before `admit` is
    // asked), a bad late_status. An aborted frame comes back as aborted.
    #[test]
    fn a_whole_message_is_checked_as_the_piecewise_path_checks_it() {
        let good = message(64);
        let epilogue = good.len() - CRC_EPILOGUE_LEN;
        let mut bad_data = good.clone();
        bad_data[epilogue - 3] ^= 1;
        let mut bad_head = good.clone();
        bad_head[PREAMBLE_LEN + 2] ^= 1;
        let mut bad_late = good.clone();
        bad_late[epilogue] = 0x0;
        for (wire, what) in [(bad_data, "segment 3"), (bad_head, "segment 0")] {
            let mut dec = FrameDecoder::new(FrameLimits::default());
            let got = dec.take_whole_message(&mut Bytes::from(wire), |_, _| {
                assert_ne!(what, "segment 0", "asked about a corrupt segment 0");
                Some(())
            });
            assert!(matches!(got, Err(Error::BadCrc { what: w, .. }) if w == what), "{got:?}");
            assert!(!dec.is_idle(), "failed");
        }
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let got = dec.take_whole_message(&mut Bytes::from(bad_late), |_, _| Some(()));
        assert!(matches!(got, Err(Error::Malformed(_))), "{got:?}");

        let mut aborted = good.clone();
        aborted[epilogue] = LATE_STATUS_ABORTED;
        let mut dec = FrameDecoder::new(FrameLimits::default());
        let got = dec.take_whole_message(&mut Bytes::from(aborted), |_, _| Some(()));
        assert!(matches!(got, Ok(Whole::Taken(_, _, true))), "{got:?}");
    }

    /// The secure-mode stream both ends of these tests start from.
    fn stream() -> GcmStream {
        GcmStream::new(&[7u8; 16], &[9u8; 12])
    }

    /// Frames sealed one after the other by one secure encoder: MESSAGEs of a 41-byte
    /// head, a 5-byte front and `data_len` data bytes (`Some`), or a KEEPALIVE2 (`None`).
    fn sealed(frames: &[Option<usize>]) -> Vec<Vec<u8>> {
        let mut enc = FrameEncoder::secure(stream());
        let head = Bytes::from(vec![1u8; 41]);
        let front = Bytes::from_static(b"front");
        frames
            .iter()
            .map(|f| {
                let mut buf = BytesMut::new();
                let mut out = Vec::new();
                match f {
                    Some(n) => {
                        let data = Bytes::from((0..*n).map(|i| (i * 7) as u8).collect::<Vec<_>>());
                        let segs = [&head, &front, &Bytes::new(), &data];
                        enc.encode(Tag::MESSAGE, &segs, &mut buf, &mut out).unwrap();
                    }
                    None => {
                        let stamp = Bytes::from(vec![3u8; 12]);
                        enc.encode(Tag::KEEPALIVE2, &[&stamp], &mut buf, &mut out).unwrap();
                    }
                }
                out.push(buf.freeze());
                out.concat()
            })
            .collect()
    }

    /// A secure decoder past the frames before the one at `at` of `all` (read piece by
    /// piece), and the input from there.
    fn sealed_decoder_at(all: &[Vec<u8>], at: usize) -> (FrameDecoder, Bytes) {
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(stream()).unwrap();
        let wire = Bytes::from(all.concat());
        let mut off = 0;
        for _ in 0..at {
            loop {
                if dec.is_paused() {
                    dec.proceed().unwrap();
                }
                let n = dec.need();
                let piece = wire.slice(off..off + n);
                off += n;
                if let Step::Frame = dec.step(piece).unwrap() {
                    dec.take_frame();
                    break;
                }
            }
        }
        (dec, wire.slice(off..))
    }

    // Secure mode: a whole MESSAGE is taken in one call with the segments the piecewise
    // path yields. A frame it does not take (another kind, one refused, one not all
    // there) has had its first block opened and consumed, and the decoder goes on from
    // there piece by piece to the same frame, its nonces in step with the sender's (a
    // nonce out of step fails GCM authentication). Less than a first block is left
    // alone.
    #[test]
    fn a_whole_sealed_message_is_taken_in_one_call_and_the_others_go_on_piece_by_piece() {
        let frames = sealed(&[Some(64), None, Some(64), Some(0), Some(64)]);
        let want = |i: usize| {
            let (mut dec, input) = sealed_decoder_at(&frames, i);
            let mut off = 0;
            loop {
                if dec.is_paused() {
                    dec.proceed().unwrap();
                }
                let n = dec.need();
                let piece = input.slice(off..off + n);
                off += n;
                if let FrameProgress::Frame(f) = dec.advance(piece).unwrap() {
                    return f;
                }
            }
        };
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(stream()).unwrap();
        let mut all = frames.concat();
        // The last frame is not all there.
        all.pop();
        let mut input = Bytes::from(all);
        let mut asked = Vec::new();
        // The rest of a frame that was opened but not taken, piece by piece.
        let rest = |dec: &mut FrameDecoder, input: &mut Bytes, step: Step| {
            assert_eq!(step, Step::Head);
            dec.proceed().unwrap();
            let n = dec.need();
            let Step::Frame = dec.step(input.split_to(n)).unwrap() else { panic!("frame") };
            dec.take_frame()
        };
        for (i, admit) in [(0, true), (1, true), (2, false), (3, true)] {
            let before = input.len();
            let got = dec
                .take_whole_message(&mut input, |seg0, payload| {
                    asked.push((i, seg0.to_vec(), payload));
                    admit.then_some(i)
                })
                .unwrap();
            let (segments, aborted) = match got {
                Whole::Taken(t, segments, aborted) => {
                    assert_eq!(t, i);
                    (segments, aborted)
                }
                Whole::Opened(step) => {
                    assert!(!admit || i == 1, "frame {i} not taken");
                    assert_eq!(before - input.len(), SECURE_HEAD_LEN, "the first block read");
                    let f = rest(&mut dec, &mut input, step);
                    (f.segments, f.aborted)
                }
                Whole::Untaken => panic!("frame {i} untouched"),
            };
            let f = want(i);
            assert!(!aborted);
            if i == 1 {
                assert_eq!(segments, f.segments, "the keepalive");
            } else {
                assert_eq!(segments[1..], f.segments[1..], "frame {i}'s payload");
            }
            assert!(dec.is_idle());
        }
        let heads: Vec<(usize, Vec<u8>, u64)> = [0, 2, 3]
            .iter()
            .map(|&i| (i, vec![1u8; 41], 5 + if i == 3 { 0 } else { 64 }))
            .collect();
        assert_eq!(asked, heads, "asked about whole MESSAGEs only");

        // The last frame, one byte short: opened, not asked about.
        let got = dec.take_whole_message(&mut input, |_, _| -> Option<()> {
            panic!("asked about a partial frame")
        });
        assert!(matches!(got, Ok(Whole::Opened(Step::Head))), "{got:?}");
        dec.proceed().unwrap();
        assert_eq!(dec.need(), input.len() + 1);

        // Less than a first block: nothing read, the nonce unused.
        let (mut dec, input) = sealed_decoder_at(&frames, 4);
        let mut short = input.slice(..SECURE_HEAD_LEN - 1);
        let got = dec.take_whole_message(&mut short, |_, _| Some(()));
        assert!(matches!(got, Ok(Whole::Untaken)), "{got:?}");
        assert_eq!(short.len(), SECURE_HEAD_LEN - 1);
        let mut whole = input;
        let got = dec.take_whole_message(&mut whole, |_, _| Some(()));
        assert!(matches!(got, Ok(Whole::Taken(..))), "{got:?}");
    }

    /// `wire`, one sealed MESSAGE, with `edit` applied to its block C's plaintext (the
    /// padded segments 1.., then the epilogue), sealed again with the same nonces.
    fn resealed(wire: &[u8], edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let (mut open, mut seal) = (stream(), stream());
        let mut head = wire[..PREAMBLE_LEN + INLINE_LEN].to_vec();
        open.open(&mut head, &wire[PREAMBLE_LEN + INLINE_LEN..SECURE_HEAD_LEN]).unwrap();
        let (c, tag) = wire[SECURE_HEAD_LEN..].split_at(wire.len() - SECURE_HEAD_LEN - TAG_LEN);
        let mut c = c.to_vec();
        open.open(&mut c, tag).unwrap();
        edit(&mut c);
        let mut out = head.clone();
        let tag = seal.seal(&mut out).unwrap();
        out.extend_from_slice(&tag);
        let tag = seal.seal(&mut c).unwrap();
        out.extend_from_slice(&c);
        out.extend_from_slice(&tag);
        out
    }

    // Secure mode: what the piece-by-piece path refuses, this refuses too, and the
    // decoder is then failed: a flipped bit in block C or in the first block (before
    // `admit` is asked), a bad late_status. An aborted frame comes back as aborted.
    #[test]
    fn a_whole_sealed_message_is_checked_as_the_piecewise_path_checks_it() {
        let good = sealed(&[Some(64)]).concat();
        let late_at = pad16(5) + pad16(64);
        assert_eq!(resealed(&good, |_| {}), good, "resealing with no edit is the identity");
        let mut bad_c = good.clone();
        bad_c[SECURE_HEAD_LEN + 3] ^= 1;
        let mut bad_head = good.clone();
        bad_head[PREAMBLE_LEN + 2] ^= 1;
        for (wire, first_block) in [(bad_c, false), (bad_head, true)] {
            let mut dec = FrameDecoder::new(FrameLimits::default());
            dec.set_secure(stream()).unwrap();
            let got = dec.take_whole_message(&mut Bytes::from(wire), |_, _| {
                assert!(!first_block, "asked about a corrupt first block");
                Some(())
            });
            assert!(matches!(got, Err(Error::Malformed(_))), "{got:?}");
            assert!(!dec.is_idle(), "failed");
        }
        let bad_late = resealed(&good, |c| c[late_at] = 0);
        let aborted = resealed(&good, |c| c[late_at] = LATE_STATUS_ABORTED);
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(stream()).unwrap();
        let got = dec.take_whole_message(&mut Bytes::from(bad_late), |_, _| Some(()));
        assert!(matches!(got, Err(Error::Malformed(_))), "{got:?}");
        let mut dec = FrameDecoder::new(FrameLimits::default());
        dec.set_secure(stream()).unwrap();
        let got = dec.take_whole_message(&mut Bytes::from(aborted), |_, _| Some(()));
        assert!(matches!(got, Ok(Whole::Taken(_, _, true))), "{got:?}");
    }
}
