//! The receive buffer: input chunks as they came, consumed without copying when a
//! piece lies within one chunk.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::Error;

/// Room (in chunks) the buffer keeps once a frame that waited in many reads is
/// gathered (or cut short: [`RxBuf::clear`]): a secure-mode frame is kept whole before
/// it is opened, a chunk per read of at least [`copy_below`], and the room it grew to (32 bytes per 16 KiB of frame:
/// 256 KiB after a 128 MiB frame) stayed for the connection's life.
const CHUNKS_KEEP: usize = 16;

/// Below how long a read that continues bytes still waiting is copied into the buffer's
/// own memory ([`RxBuf::push`], [`RxBuf::settle`]) instead of kept as a slice of the
/// driver's read buffer, for reads of `read_size` ([`super::Config::read_size`]): a
/// quarter of it, the point below which the driver renews its read buffer, so that what
/// waits never keeps alive much more than four times its own size of read buffers.
pub(crate) fn copy_below(read_size: usize) -> usize {
    (read_size / 4).max(1)
}

/// Unconsumed input. Bounded by the driver: it reads only while the machine
/// `wants_read()`, and every state consumes what it needs or pauses reading.
///
/// Input comes as slices of the driver's read buffer, shared by the worker's
/// connections: a slice kept keeps its whole block alive. What waits for more (a frame
/// arriving in pieces) is kept as it came only in reads of at least [`copy_below`];
/// shorter ones are copied into `tail`, so a peer trickling a frame a byte per read holds
/// its bytes, not a block per byte.
#[derive(Debug, Default)]
pub(crate) struct RxBuf {
    /// Invariant: no empty chunks.
    chunks: VecDeque<Bytes>,
    /// Bytes after `chunks`, copied in (see the type's docs); moved into `chunks`
    /// without a copy when they are read.
    tail: BytesMut,
    /// Invariant: the sum of the chunk lengths and `tail`'s.
    avail: usize,
}

impl RxBuf {
    /// Appends a read; one shorter than `copy_below` ([`copy_below`]) that continues
    /// bytes still waiting is copied.
    pub(crate) fn push(&mut self, data: Bytes, copy_below: usize) {
        if data.is_empty() {
            return;
        }
        let waiting = self.avail > 0;
        self.avail += data.len();
        if waiting && data.len() < copy_below {
            self.tail.extend_from_slice(&data);
        } else {
            self.seal_tail();
            self.chunks.push_back(data);
        }
    }

    /// After the input was processed: a short read left waiting on its own (the start of
    /// a frame) is copied too, so it keeps no read buffer alive either.
    pub(crate) fn settle(&mut self, copy_below: usize) {
        if self.tail.is_empty() && self.chunks.len() == 1 && self.avail < copy_below {
            if let Some(c) = self.chunks.pop_front() {
                self.tail.extend_from_slice(&c);
            }
        }
    }

    /// `tail` becomes the last chunk (no copy): what reads the buffer reads chunks.
    /// The whole allocation goes with it: a `split` left its spare capacity in `tail`,
    /// held for the connection's life (idle connections grew by ~280 bytes each).
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(std::mem::take(&mut self.tail).freeze());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.avail
    }

    pub(crate) fn clear(&mut self) {
        if self.chunks.capacity() > CHUNKS_KEEP {
            // A frame cut short in many reads (a connection lost, a session reset):
            // its room goes with it, as once it is gathered (`contiguous`).
            self.chunks = VecDeque::new();
        } else {
            self.chunks.clear();
        }
        self.tail = BytesMut::new();
        self.avail = 0;
    }

    /// Takes the first byte (a v1 tag): one per message, where a one-byte
    /// [`Self::contiguous`] and [`Self::consume`] cost three times the instructions.
    pub(crate) fn take_byte(&mut self) -> Option<u8> {
        if self.chunks.is_empty() {
            self.seal_tail();
        }
        let c = self.chunks.front_mut()?;
        let b = *c.first()?;
        c.advance(1);
        self.avail -= 1;
        if c.is_empty() {
            self.chunks.pop_front();
        }
        Some(b)
    }

    /// The first `n` bytes as one slice, gathering (copying exactly `n` bytes) only if
    /// they span chunks. None if fewer than `n` bytes are buffered.
    pub(crate) fn contiguous(&mut self, n: usize) -> Option<&[u8]> {
        if self.avail < n {
            return None;
        }
        if n == 0 {
            return Some(&[]);
        }
        if self.chunks.front().map_or(0, Bytes::len) < n {
            self.seal_tail();
        }
        if self.chunks.front().map_or(0, Bytes::len) < n {
            let mut buf = BytesMut::with_capacity(n);
            while buf.len() < n {
                let Some(c) = self.chunks.front_mut() else { break };
                let k = c.len().min(n - buf.len());
                buf.extend_from_slice(&c[..k]);
                c.advance(k);
                if c.is_empty() {
                    self.chunks.pop_front();
                }
            }
            if self.chunks.capacity() > CHUNKS_KEEP && self.chunks.len() < CHUNKS_KEEP {
                // A copy was made anyway: giving back a large frame's room costs no more.
                self.chunks.shrink_to(CHUNKS_KEEP);
            }
            self.chunks.push_front(buf.freeze());
        }
        self.chunks.front().map(|c| &c[..n])
    }

    /// Drops `n` bytes from the front (at most what is buffered).
    pub(crate) fn consume(&mut self, mut n: usize) {
        n = n.min(self.avail);
        if n > self.avail - self.tail.len() {
            self.seal_tail();
        }
        self.avail -= n;
        while n > 0 {
            let Some(c) = self.chunks.front_mut() else { break };
            if c.len() <= n {
                n -= c.len();
                self.chunks.pop_front();
            } else {
                c.advance(n);
                n = 0;
            }
        }
    }

    /// Removes and returns the first chunk (for a consumer that advances it itself).
    pub(crate) fn pop_chunk(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            self.seal_tail();
        }
        let c = self.chunks.pop_front()?;
        self.avail -= c.len();
        Some(c)
    }

    /// Puts back what is left of a chunk taken with [`RxBuf::pop_chunk`].
    pub(crate) fn unpop_chunk(&mut self, rest: Bytes) {
        if !rest.is_empty() {
            self.avail += rest.len();
            self.chunks.push_front(rest);
        }
    }

    /// Runs a prefix decoder over the buffered input, widening the window when it
    /// reports how much it needs ([`Error::Truncated`]), and consumes what it used.
    /// `Ok(None)`: not enough input yet.
    pub(crate) fn parse<T>(
        &mut self,
        mut need: usize,
        f: impl Fn(&[u8]) -> Result<(T, usize), Error>,
    ) -> Result<Option<T>, Error> {
        loop {
            let Some(buf) = self.contiguous(need) else { return Ok(None) };
            match f(buf) {
                Ok((v, used)) => {
                    self.consume(used);
                    return Ok(Some(v));
                }
                Err(Error::Truncated { need: more, .. }) if more > need => need = more,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the first `n` bytes as one `Bytes`: a slice of the input chunk when it lies
    /// in one (zero-copy), otherwise one copy.
    pub(crate) fn take(&mut self, n: usize) -> Option<Bytes> {
        self.contiguous(n)?;
        if n == 0 {
            return Some(Bytes::new());
        }
        let c = self.chunks.front_mut()?;
        let out = c.split_to(n);
        if c.is_empty() {
            self.chunks.pop_front();
        }
        self.avail -= n;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a messenger with the default read buffer (64 KiB) copies below.
    const COPY_BELOW: usize = 16 << 10;

    #[test]
    fn take_is_zero_copy_within_a_chunk_and_gathers_across() {
        let mut rx = RxBuf::default();
        let a = Bytes::from_static(b"hello ");
        rx.push(a.clone(), COPY_BELOW);
        rx.push(Bytes::from_static(b"world"), COPY_BELOW);
        let h = rx.take(3);
        assert_eq!(h.as_deref(), Some(&b"hel"[..]));
        assert_eq!(h.map(|h| h.as_ptr()), Some(a.as_ptr()));
        assert_eq!(rx.take(5).as_deref(), Some(&b"lo wo"[..]));
        assert_eq!(rx.len(), 3);
        assert!(rx.take(4).is_none());
        rx.consume(1);
        assert_eq!(rx.contiguous(2), Some(&b"ld"[..]));
    }

    // Short reads continuing waiting bytes are copied in behind the chunks, a long read
    // after them is kept as it came, and every reader sees the bytes in their order.
    #[test]
    fn short_reads_are_copied_in_order_and_long_ones_kept() {
        let long = Bytes::from(vec![b'L'; COPY_BELOW]);
        let mut rx = RxBuf::default();
        rx.push(Bytes::from_static(b"ab"), COPY_BELOW);
        rx.settle(COPY_BELOW);
        assert!(rx.chunks.is_empty(), "a short read left waiting alone is copied");
        rx.push(Bytes::from_static(b"c"), COPY_BELOW);
        rx.push(long.clone(), COPY_BELOW);
        rx.push(Bytes::from_static(b"d"), COPY_BELOW);
        assert_eq!(rx.len(), COPY_BELOW + 4);
        assert_eq!(rx.take_byte(), Some(b'a'));
        assert_eq!(rx.take(2).as_deref(), Some(&b"bc"[..]));
        let kept = rx.take(COPY_BELOW);
        assert_eq!(kept.as_ref().map(|k| k.as_ptr()), Some(long.as_ptr()), "no copy of it");
        assert_eq!(rx.pop_chunk().as_deref(), Some(&b"d"[..]));
        assert_eq!(rx.len(), 0);
        rx.push(Bytes::from_static(b"ef"), COPY_BELOW);
        rx.push(Bytes::from_static(b"gh"), COPY_BELOW);
        rx.consume(3);
        assert_eq!(rx.contiguous(1), Some(&b"h"[..]));
        rx.clear();
        assert_eq!((rx.len(), rx.contiguous(1)), (0, None));
    }

    // Bytes copied in and read out leave no memory behind: an idle connection keeps
    // nothing of the reads its handshake came in.
    #[test]
    fn copied_bytes_read_out_leave_no_allocation() {
        let mut rx = RxBuf::default();
        rx.push(Bytes::from_static(b"ab"), COPY_BELOW);
        rx.settle(COPY_BELOW);
        rx.push(Bytes::from_static(b"cd"), COPY_BELOW);
        assert_eq!(rx.take(3).as_deref(), Some(&b"abc"[..]));
        assert_eq!(rx.take_byte(), Some(b'd'));
        assert_eq!((rx.len(), rx.chunks.len(), rx.tail.capacity()), (0, 0, 0));
    }

    #[test]
    fn take_byte_walks_across_chunks_and_keeps_the_count() {
        let mut rx = RxBuf::default();
        rx.push(Bytes::from_static(b"a"), COPY_BELOW);
        rx.push(Bytes::from_static(b"bcd"), COPY_BELOW);
        assert_eq!(rx.take_byte(), Some(b'a'));
        assert_eq!(rx.len(), 3);
        assert_eq!(rx.take_byte(), Some(b'b'));
        // What is left is still there for the other readers.
        assert_eq!(rx.contiguous(2), Some(&b"cd"[..]));
        assert_eq!(rx.take_byte(), Some(b'c'));
        assert_eq!(rx.take_byte(), Some(b'd'));
        assert_eq!((rx.take_byte(), rx.len()), (None, 0));
        rx.push(Bytes::from_static(b"e"), COPY_BELOW);
        assert_eq!((rx.take_byte(), rx.len()), (Some(b'e'), 0));
    }
}

#[cfg(test)]
mod room_tests {
    use crate::auth::ConMode;
    use crate::session::Machine;
    use crate::testing::{numbered, numbers, Pair};
    use crate::v2::V2;
    use crate::{Connection, Policy};
    use bytes::Bytes;
    use std::time::Instant;

    // A large secure-mode message arriving in reads of 16 KiB (each kept as a chunk
    // until the frame is all there) must not leave the connection holding a chunk slot
    // per read once it is read.
    #[test]
    // The virtual clock starts at the real one; the machines see it only as an input.
    #[allow(clippy::disallowed_methods)]
    fn a_large_secure_frame_leaves_no_chunk_room_behind() {
        const LEN: usize = 2 << 20;
        let mut p = Pair::with_test_auth(
            Instant::now(),
            Policy::lossless_client(),
            Policy::stateful_server(),
            &[ConMode::SECURE],
        );
        p.send(0, numbered(0));
        p.drive();
        p.splitter = Some(Box::new(|n| n.min(16 << 10)));
        let mut m = numbered(1);
        m.set_data(Bytes::from(vec![7u8; LEN]));
        p.send(0, m);
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [0, 1]);
        let b = p.session_ep(1).expect("the server's session");
        let Connection::V2(c) = &p.eps[b].conn else { panic!("a msgr2 connection") };
        let machine: &Machine<V2> = c;
        let kept = machine.rx.chunks.capacity() * std::mem::size_of::<Bytes>();
        assert!(
            kept <= super::CHUNKS_KEEP * std::mem::size_of::<Bytes>(),
            "after a {LEN}-byte secure frame in 16 KiB reads the receive buffer keeps {kept} bytes of chunk room"
        );
    }

    // The same frame cut short by the peer, which then cannot be reached: the lossless
    // session keeps its machine, backing off (for ever, were the peer a server that
    // closed for good, or its own side parked in standby), and what the cut frame's
    // reads grew the chunk list to must not stay with it. `clear` kept it.
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_large_secure_frame_cut_short_leaves_no_chunk_room_behind() {
        const LEN: usize = 2 << 20;
        let mut p = Pair::with_test_auth(
            Instant::now(),
            Policy::lossless_client(),
            Policy::stateful_server(),
            &[ConMode::SECURE],
        );
        p.send(0, numbered(0));
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [0]);
        p.splitter = Some(Box::new(|n| n.min(16 << 10)));
        p.cut_after = Some(p.delivered + LEN as u64 / 2);
        p.nodes[1].unreachable = true;
        let mut m = numbered(1);
        m.set_data(Bytes::from(vec![7u8; LEN]));
        p.send(1, m);
        p.drive();
        assert!(p.nodes[0].received.is_empty(), "the frame was cut short");
        let a = p.session_ep(0).expect("the client's session, backing off");
        let Connection::V2(c) = &p.eps[a].conn else { panic!("a msgr2 connection") };
        let machine: &Machine<V2> = c;
        assert_eq!(machine.rx.len(), 0, "the cut connection's input is gone");
        let kept = machine.rx.chunks.capacity() * std::mem::size_of::<Bytes>();
        assert!(
            kept <= super::CHUNKS_KEEP * std::mem::size_of::<Bytes>(),
            "after half a {LEN}-byte secure frame in 16 KiB reads and a cut the receive buffer keeps {kept} bytes of chunk room"
        );
    }
}
