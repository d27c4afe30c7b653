//! Buffers of compacted payloads ([`super::Message::compact`]), taken back for the next
//! copy once the messages holding them are gone.
//!
//! Why: a message queued for dispatch is compacted on the worker that read it and
//! dropped on the dispatch thread. Freed there, each buffer went back to the worker's
//! malloc arena under that arena's lock, while the worker took the same lock for the
//! next copy. At 4 KiB depth 32 with the server answering from `ms_dispatch` the two
//! threads met on that lock about once per ten messages (a futex wait and wake each
//! time, ~40 % of all futex calls of the run). Now the thread that copies keeps a handle
//! to each buffer it lends out; once the handle is the only one left (the message was
//! dropped, wherever), the buffer is reused on this thread, and a buffer that is freed
//! is freed here.
//!
//! What is kept is bounded per thread: [`LENT_KEEP`] buffers and [`LENT_BYTES`] bytes,
//! lent out or back. Past either bound the oldest handle is let go: a buffer still in
//! use is then freed by whoever drops it last, as any other `Bytes`.
//!
//! Small payloads (at most [`PACK_MAX`] bytes) are packed one after the other into
//! chunks of [`CHUNK`] bytes instead of a buffer each: a buffer per message, reclaimed
//! or new, and its handle kept here, cost ~300 instructions per 64 B message queued for
//! `ms_dispatch`, a copy into the open chunk a reference count. A read's batch
//! ([`super::Message::compact_all`]) splits the chunk once and gives each message a
//! slice of that. A small message kept long still pins at most one chunk, never the
//! read buffer it came from; a chunk is reused once every message packed into it is
//! gone.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::Message;

thread_local! {
    static LENT: RefCell<Lent> = const { RefCell::new(Lent::new()) };
}

/// Buffers a thread keeps handles to at most: two batches of queued messages.
const LENT_KEEP: usize = 128;

/// Bytes of buffers a thread keeps handles to at most.
const LENT_BYTES: usize = 1 << 20;

/// Payloads of at most this many bytes are packed into chunks ([`CHUNK`]); larger ones
/// get a buffer of their own. A quarter of a chunk: what a chunk leaves unused when the
/// next payload does not fit is then at most a quarter of it.
pub(super) const PACK_MAX: usize = CHUNK / 4;

/// The size of a chunk small payloads are packed into: what one small message kept
/// long holds at most. 1 KiB: a received message's policy-throttle charge is its
/// payload plus `MESSAGE_OVERHEAD` (512), so a packed message kept by a dispatcher pins
/// at most twice what it is charged, the bound a reused buffer of its own keeps too
/// (see `reclaim`). 4 KiB chunks measured no better: the difference stayed within
/// the run-to-run spread (~100 instructions per round trip at 64 B depth 128).
pub(super) const CHUNK: usize = 1 << 10;

/// The buffers this thread lent out, oldest first, with their capacities. Each is kept
/// as the empty handle left behind the payload split off it: a handle on the same
/// allocation that is the only one left once every message holding the payload is gone,
/// and that then takes the whole allocation back without freeing it.
struct Lent {
    ring: VecDeque<(BytesMut, usize)>,
    bytes: usize,
    /// The chunk small payloads are packed into now: the handle on its unused tail (it
    /// joins the ring once the next payload does not fit).
    open: Option<BytesMut>,
}

impl Lent {
    const fn new() -> Lent {
        Lent { ring: VecDeque::new(), bytes: 0, open: None }
    }

    /// `parts` copied into `len` bytes (their sum) of a buffer lent out: the open chunk
    /// for a small payload, else one buffer of their own.
    fn copy(&mut self, parts: &[&[u8]], len: usize) -> Bytes {
        if len <= PACK_MAX {
            return self.pack(parts, len);
        }
        let (buf, cap) = match self.reclaim(|cap| cap >= len && cap / 2 <= len) {
            Some(kept) => kept,
            None => {
                let buf = BytesMut::with_capacity(len);
                let cap = buf.capacity();
                (buf, cap)
            }
        };
        let mut buf = fill(buf, parts);
        // The payload goes out; what stays here is an empty handle on the same
        // allocation. The split shares a new buffer's allocation (its one bookkeeping
        // allocation); a reused one is shared already, and a reference count is all the
        // split and the later reuse cost: before, the reuse turned the buffer back into
        // an owned one and the handle kept here shared it again, an allocation and a
        // free of that bookkeeping per message. Split off at 0, not after the payload:
        // the handle kept then stays at the buffer's start, which its reclaim only
        // widens back to the whole capacity; one left after the payload was moved back
        // to the start by the reclaim, and the split moved the payload's start (~55
        // instructions per message at 64 B between the two).
        let out = buf.split_off(0).freeze();
        self.keep(buf, cap);
        out
    }

    /// `parts` (`len` bytes, at most [`PACK_MAX`]) copied to the end of what the open
    /// chunk holds, lent out as a slice of it; a new chunk is opened when they do not fit.
    fn pack(&mut self, parts: &[&[u8]], len: usize) -> Bytes {
        let open = match &mut self.open {
            Some(open) if open.capacity() >= len => open,
            _ => self.next_chunk(),
        };
        fill_in(open, parts);
        // The payload goes out as a slice of the chunk (a reference count); the open
        // handle moves past it.
        open.split_to(len).freeze()
    }

    /// Retires the open chunk into the ring and opens the next: a chunk this thread lent
    /// before, when every message packed into it is gone, else a new one.
    #[cold]
    fn next_chunk(&mut self) -> &mut BytesMut {
        if let Some(full) = self.open.take() {
            self.keep(full, CHUNK);
        }
        let chunk = match self.reclaim(|cap| cap == CHUNK) {
            Some((chunk, _)) => chunk,
            None => BytesMut::with_capacity(CHUNK),
        };
        self.open.insert(chunk)
    }

    /// Keeps the handle `buf` on an allocation of `cap` bytes lent out, letting go of
    /// the oldest ones past the bounds. A buffer larger than the whole bound is not kept,
    /// and makes no room.
    #[inline]
    fn keep(&mut self, buf: BytesMut, cap: usize) {
        if cap <= LENT_BYTES {
            while self.ring.len() >= LENT_KEEP || self.bytes + cap > LENT_BYTES {
                if !self.let_go_oldest() {
                    break;
                }
            }
            self.ring.push_back((buf, cap));
            self.bytes += cap;
        }
    }

    /// The oldest buffer, emptied, with its capacity, if nothing else holds it and its
    /// capacity `suits` the payload: for a buffer of its own at least as large and at
    /// most twice as large, so a small message never holds a large buffer; for a chunk,
    /// [`CHUNK`] exactly. Messages are dispatched in the order they were queued, so the
    /// oldest is the first to come back; only it is looked at. One that is back but
    /// does not suit is freed.
    fn reclaim(&mut self, suits: impl Fn(usize) -> bool) -> Option<(BytesMut, usize)> {
        let (front, cap) = self.ring.front_mut()?;
        // The handle sits at the buffer's start with no capacity of its own (the payload
        // was split off at 0): asking for the whole capacity widens it back over the
        // buffer, and only while this handle is the only one left; never allocates.
        if *cap == 0 || !front.try_reclaim(*cap) {
            return None;
        }
        let (buf, cap) = self.ring.pop_front()?;
        self.bytes -= cap;
        if !suits(cap) {
            return None;
        }
        Some((buf, cap))
    }

    fn let_go_oldest(&mut self) -> bool {
        match self.ring.pop_front() {
            Some((_, cap)) => {
                self.bytes -= cap;
                true
            }
            None => false,
        }
    }
}

/// `parts` (of `len` bytes in all) copied into one buffer of their own, reusing one this
/// thread lent out before when it is back (see the module docs).
pub(super) fn copy_of(parts: &[&[u8]], len: usize) -> Bytes {
    let lent = LENT.try_with(|l| l.try_borrow_mut().ok().map(|mut l| l.copy(parts, len)));
    match lent {
        Ok(Some(b)) => b,
        // A thread being torn down, or a copy made while one is under way (not
        // expected): a plain buffer.
        _ => fill(BytesMut::with_capacity(len), parts).freeze(),
    }
}

/// What [`Message::compact_all`] does: for each message whose payload is below `below`
/// bytes, a copy; the small ones packed into the open chunk one after the other and
/// handed out once the chunk is full or the batch done, with one split of the chunk
/// and one slice of that per message (a split of the chunk per message costs twice
/// that).
pub(super) fn compact_all<T>(
    msgs: &mut [T],
    mut message: impl FnMut(&mut T) -> &mut Message,
    below: usize,
) {
    if below == 0 {
        return;
    }
    let done = LENT.try_with(|l| match l.try_borrow_mut() {
        Ok(mut lent) => {
            lent.compact_all(msgs, &mut message, below);
            true
        }
        Err(_) => false,
    });
    if done != Ok(true) {
        // A thread being torn down, or a copy made while one is under way (not
        // expected): one by one, each in a plain buffer.
        for m in msgs.iter_mut() {
            message(m).compact(below);
        }
    }
}

/// Whether a payload of `len` bytes is packed into a chunk when compacted below `below`.
#[inline]
fn packed(len: usize, below: usize) -> bool {
    len != 0 && len < below && len <= PACK_MAX
}

impl Lent {
    fn compact_all<T>(
        &mut self,
        msgs: &mut [T],
        message: &mut impl FnMut(&mut T) -> &mut Message,
        below: usize,
    ) {
        // `msgs[from..i]` holds the packed payloads copied into the open chunk and not
        // yet handed out: `pending` of them, `filled` bytes.
        let (mut from, mut pending, mut filled) = (0, 0, 0);
        for i in 0..msgs.len() {
            let m = message(&mut msgs[i]);
            let len = m.payload_len();
            if !packed(len, below) {
                if len != 0 && len < below {
                    let own = self.copy(&m.payload_parts(), len);
                    m.set_payload_copy(own);
                }
                continue;
            }
            let open = match &mut self.open {
                Some(open) if open.capacity() >= len => open,
                _ => {
                    if pending > 0 {
                        self.hand_out(&mut msgs[from..i], message, below, pending, filled);
                    }
                    (from, pending, filled) = (i, 0, 0);
                    self.next_chunk()
                }
            };
            fill_in(open, &message(&mut msgs[i]).payload_parts());
            pending += 1;
            filled += len;
        }
        if pending > 0 {
            self.hand_out(&mut msgs[from..], message, below, pending, filled);
        }
    }

    /// Gives each of the `pending` packed messages of `msgs` its slice of the first
    /// `filled` bytes of the open chunk, where their payloads were copied in order.
    fn hand_out<T>(
        &mut self,
        msgs: &mut [T],
        message: &mut impl FnMut(&mut T) -> &mut Message,
        below: usize,
        mut pending: usize,
        filled: usize,
    ) {
        let Some(open) = &mut self.open else {
            return;
        };
        let mut block = open.split_to(filled).freeze();
        for item in msgs.iter_mut() {
            let m = message(item);
            let len = m.payload_len();
            if !packed(len, below) {
                continue;
            }
            pending -= 1;
            // The last one takes what is left, without a reference count of its own.
            let own = if pending == 0 { std::mem::take(&mut block) } else { block.split_to(len) };
            m.set_payload_copy(own);
            if pending == 0 {
                break;
            }
        }
    }
}

/// `parts` appended to `buf`.
fn fill(mut buf: BytesMut, parts: &[&[u8]]) -> BytesMut {
    fill_in(&mut buf, parts);
    buf
}

/// `parts` appended to `buf`.
#[inline]
fn fill_in(buf: &mut BytesMut, parts: &[&[u8]]) {
    // Most payloads are one segment: the empty ones cost no copy call (~25
    // instructions per message at 64 B).
    for part in parts.iter().filter(|p| !p.is_empty()) {
        buf.extend_from_slice(part);
    }
}

/// How many buffers and bytes this thread keeps handles to (for tests).
#[cfg(test)]
pub(super) fn held() -> (usize, usize) {
    LENT.with(|l| {
        let l = l.borrow();
        (l.ring.len(), l.bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    /// A message whose data is `len` bytes of a shared 64 KiB read buffer.
    fn received(shared: &Bytes, len: usize) -> Message {
        let mut m = Message::new(17, Bytes::new());
        m.set_data(shared.slice(..len));
        m
    }

    fn shared() -> Bytes {
        Bytes::from((0..64u32 << 10).map(|i| i as u8).collect::<Vec<_>>())
    }

    #[test]
    fn a_compacted_buffer_is_reused_once_its_message_is_gone() {
        let shared = shared();
        let mut first = received(&shared, 4096);
        first.compact(32 << 10);
        let at = first.data().as_ptr();
        // Still held: the next copy gets a buffer of its own.
        let mut second = received(&shared, 4096);
        second.compact(32 << 10);
        assert_ne!(second.data().as_ptr(), at);
        assert_eq!(second.data(), &shared.slice(..4096));
        drop(first);
        let mut third = received(&shared, 4000);
        third.compact(32 << 10);
        assert_eq!(third.data().as_ptr(), at, "the first message's buffer was not reused");
        // Reused, not freed and allocated again at the same address: a new buffer would
        // have been 4,000 bytes.
        assert_eq!(held(), (2, 2 * 4096));
        assert_eq!(third.data(), &shared.slice(..4000));
        // The reused buffer holds only the new payload, and the message held meanwhile
        // still reads what it was given.
        assert_eq!(second.data(), &shared.slice(..4096));
    }

    #[test]
    fn a_buffer_is_reused_only_when_every_segment_is_gone_and_its_size_suits() {
        let shared = shared();
        let mut m = Message::new(17, shared.slice(..100));
        m.set_middle(shared.slice(100..110));
        m.set_data(shared.slice(200..2700));
        m.compact(32 << 10);
        let at = m.front().as_ptr();
        let data = m.data().clone();
        drop(m);
        // The data segment still holds the buffer.
        let mut next = received(&shared, 2610);
        next.compact(32 << 10);
        assert_ne!(next.data().as_ptr(), at);
        drop((data, next));
        // Back now, but over twice the size of a 1,100-byte payload: freed, not reused
        // (the allocator may hand out the same address again, so the kept capacities
        // tell: `next`'s buffer and a new one of 1,100 bytes).
        assert_eq!(held(), (2, 2 * 2610));
        let mut small = received(&shared, 1100);
        small.compact(32 << 10);
        assert_eq!(held(), (2, 2610 + 1100));
        assert_eq!(small.data(), &shared.slice(..1100));
    }

    #[test]
    fn the_handles_a_thread_keeps_are_bounded() {
        let shared = shared();
        let held_messages: Vec<Message> = (0..3 * LENT_KEEP)
            .map(|i| {
                let mut m = received(&shared, PACK_MAX + 1 + i % 3);
                m.compact(32 << 10);
                m
            })
            .collect();
        assert_eq!(held().0, LENT_KEEP);
        let big: Vec<Message> = (0..40)
            .map(|_| {
                let mut m = received(&shared, 30 << 10);
                m.compact(32 << 10);
                m
            })
            .collect();
        let (n, bytes) = held();
        assert!(n <= LENT_KEEP && bytes <= LENT_BYTES, "{n} buffers, {bytes} bytes");
        assert!(bytes > LENT_BYTES / 2, "{bytes} bytes: the ring let go of too much");
        // A payload larger than the whole bound is copied, not kept, and makes no room.
        let huge = Bytes::from(vec![7u8; LENT_BYTES + 1]);
        let mut m = Message::new(17, Bytes::new());
        m.set_data(huge.clone());
        m.compact(usize::MAX);
        assert_eq!(m.data(), &huge);
        assert_eq!(held(), (n, bytes));
        // Every message still reads its own payload.
        for (i, m) in held_messages.iter().enumerate() {
            assert_eq!(m.data(), &shared.slice(..PACK_MAX + 1 + i % 3));
        }
        assert!(big.iter().all(|m| m.data() == &shared.slice(..30 << 10)));
    }

    #[test]
    fn small_payloads_are_packed_into_bounded_chunks_byte_for_byte() {
        let shared = shared();
        let before = held();
        // 200 payloads of 50 to 80 bytes, each from another place of the read buffer,
        // in three segments for some.
        let msgs: Vec<Message> = (0..200usize)
            .map(|i| {
                let at = (i * 331) % (60 << 10);
                let len = 50 + i % 31;
                let mut m = Message::new(17, Bytes::new());
                if i % 5 == 0 {
                    m.set_front(shared.slice(at..at + 7));
                    m.set_middle(shared.slice(at + 7..at + 9));
                    m.set_data(shared.slice(at + 9..at + len));
                } else {
                    m.set_data(shared.slice(at..at + len));
                }
                m.compact(32 << 10);
                m
            })
            .collect();
        let range = shared.as_ptr() as usize..shared.as_ptr() as usize + shared.len();
        let mut total = 0;
        for (i, m) in msgs.iter().enumerate() {
            let at = (i * 331) % (60 << 10);
            let len = 50 + i % 31;
            let whole: Vec<u8> = [&m.front()[..], &m.middle()[..], &m.data()[..]].concat();
            assert_eq!(whole, shared.slice(at..at + len), "message {i}");
            assert!(
                !range.contains(&(m.data().as_ptr() as usize)),
                "still a slice of the read buffer"
            );
            total += len;
        }
        // Packed: a chunk per CHUNK bytes of payloads, not a buffer per message; and each
        // chunk is CHUNK bytes, so a kept message pins no more.
        let (n, bytes) = held();
        let chunks = n - before.0;
        assert!(chunks <= total / (CHUNK - PACK_MAX) + 1, "{chunks} buffers for {total} bytes");
        assert_eq!(bytes - before.1, chunks * CHUNK);
        // Each payload follows the one before in its chunk: only a new chunk breaks the
        // run.
        let bounds = |m: &Message| {
            let segs = [m.front(), m.middle(), m.data()];
            let mut full = segs.into_iter().filter(|b| !b.is_empty());
            let first = full.next().map_or(0, |b| b.as_ptr() as usize);
            (first, first + m.payload_len())
        };
        let breaks = msgs.windows(2).filter(|w| bounds(&w[0]).1 != bounds(&w[1]).0).count();
        // (`held` counts the chunks retired into the ring, not the one still open.)
        assert!(breaks <= chunks, "{breaks} breaks in {chunks} full chunks");
    }

    #[test]
    fn a_message_kept_from_a_chunk_outlives_the_others_and_pins_only_its_chunk() {
        let shared = shared();
        let batch = |from: usize| -> Vec<Message> {
            (0..300)
                .map(|_| {
                    let mut m = received(&shared.slice(from..), 64);
                    m.compact(32 << 10);
                    m
                })
                .collect()
        };
        let mut first = batch(0);
        let kept = first.swap_remove(7);
        let kept_chunk = kept.data().as_ptr() as usize;
        drop(first);
        // The chunks of the first batch come back for the next, but the kept message's
        // is not reused: its payload stays as it was while 2,000 more are packed.
        let mut later = Vec::new();
        for round in 1..8 {
            later.push(batch(round * 100));
            if later.len() > 2 {
                later.remove(0);
            }
            assert_eq!(kept.data(), &shared.slice(..64), "round {round}");
        }
        for b in &later {
            for m in b {
                let at = m.data().as_ptr() as usize;
                assert!(
                    at + 64 <= kept_chunk || at >= kept_chunk + 64,
                    "overwrote the kept payload"
                );
            }
        }
        // The ring keeps its handles bounded while a chunk stays pinned.
        let (n, bytes) = held();
        assert!(n <= LENT_KEEP && bytes <= LENT_BYTES, "{n} buffers, {bytes} bytes");
    }

    /// A batch of mixed messages, as a read gives them: each slices the shared read
    /// buffer at `at`, `len` bytes, in `segs` segments.
    fn mixed(shared: &Bytes) -> Vec<(Message, (usize, usize))> {
        (0..300usize)
            .map(|i| {
                let at = (i * 523) % (30 << 10);
                let len = match i % 10 {
                    0 => 0,
                    1 => 2000,     // over PACK_MAX: a buffer of its own
                    2 => 33 << 10, // not below the threshold: stays a slice
                    3 => PACK_MAX, // the largest packed
                    _ => 40 + i % 50,
                };
                let mut m = Message::new(17, Bytes::new());
                if i % 4 == 0 && len >= 9 {
                    m.set_front(shared.slice(at..at + 5));
                    m.set_middle(shared.slice(at + 5..at + 9));
                    m.set_data(shared.slice(at + 9..at + len));
                } else {
                    m.set_data(shared.slice(at..at + len));
                }
                (m, (at, len))
            })
            .collect()
    }

    fn payload(m: &Message) -> Vec<u8> {
        [&m.front()[..], &m.middle()[..], &m.data()[..]].concat()
    }

    #[test]
    fn compact_all_copies_what_compact_copies_byte_for_byte_packing_the_small_ones() {
        let shared = shared();
        let range = shared.as_ptr() as usize..shared.as_ptr() as usize + shared.len();
        let mut batch = mixed(&shared);
        let before = held();
        Message::compact_all(&mut batch, |(m, _)| m, 32 << 10);
        for (i, (m, (at, len))) in batch.iter().enumerate() {
            assert_eq!(payload(m), shared.slice(*at..at + len), "message {i}");
            assert_eq!(m.payload_len(), *len);
            let in_read_buffer = [m.front(), m.middle(), m.data()]
                .iter()
                .any(|b| !b.is_empty() && range.contains(&(b.as_ptr() as usize)));
            assert_eq!(in_read_buffer, *len >= 32 << 10, "message {i} of {len} bytes");
            // A copied message's empty segments do not hold the read buffer either.
            if *len != 0 && *len < 32 << 10 {
                for b in [m.front(), m.middle(), m.data()] {
                    assert!(!range.contains(&(b.as_ptr() as usize)), "message {i}");
                }
            }
        }
        // The packed payloads follow one another within a chunk: only a new chunk breaks
        // the run, and each chunk is CHUNK bytes.
        let packed: Vec<&Message> = batch
            .iter()
            .filter(|(_, (_, l))| super::packed(*l, 32 << 10))
            .map(|(m, _)| m)
            .collect();
        let start = |m: &Message| {
            [m.front(), m.middle(), m.data()]
                .into_iter()
                .find(|b| !b.is_empty())
                .map_or(0, |b| b.as_ptr() as usize)
        };
        let breaks =
            packed.windows(2).filter(|w| start(w[0]) + w[0].payload_len() != start(w[1])).count();
        let (n, bytes) = held();
        let own = batch.iter().filter(|(_, (_, l))| *l == 2000).count();
        let chunks = n - before.0 - own;
        assert!(breaks <= chunks, "{breaks} breaks in {chunks} full chunks");
        assert!(
            chunks
                <= packed.iter().map(|m| m.payload_len()).sum::<usize>() / (CHUNK - PACK_MAX) + 1
        );
        assert_eq!(bytes - before.1, chunks * CHUNK + own * 2000);
        // Nothing to do below 0.
        let mut again = mixed(&shared);
        Message::compact_all(&mut again, |(m, _)| m, 0);
        assert!(again
            .iter()
            .all(|(m, (_, l))| *l == 0 || range.contains(&(m.data().as_ptr() as usize))));
    }

    #[test]
    fn a_message_kept_from_a_compacted_batch_outlives_the_others_and_its_chunk_is_not_reused() {
        let shared = shared();
        let batch = |from: usize| -> Vec<(Message, ())> {
            let mut b: Vec<(Message, ())> =
                (0..200).map(|i| (received(&shared.slice(from + i..), 64), ())).collect();
            Message::compact_all(&mut b, |(m, _)| m, 32 << 10);
            b
        };
        let mut first = batch(0);
        let (kept, ()) = first.swap_remove(70);
        let at = kept.data().as_ptr() as usize;
        drop(first);
        let mut later = Vec::new();
        for round in 1..10 {
            later.push(batch(round * 1000));
            if later.len() > 2 {
                later.remove(0);
            }
            assert_eq!(kept.data(), &shared.slice(70..134), "round {round}");
            for (m, ()) in later.iter().flatten() {
                let p = m.data().as_ptr() as usize;
                assert!(p + 64 <= at || p >= at + 64, "a later payload overlaps the kept one");
            }
        }
        // The chunks of dropped batches were reused: fewer chunks were made than filled.
        let (n, bytes) = held();
        assert!(n <= LENT_KEEP && bytes <= LENT_BYTES, "{n} buffers, {bytes} bytes");
    }
}
