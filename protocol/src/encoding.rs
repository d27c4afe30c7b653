//! Ceph's encoding conventions: little-endian integers, strings, containers, versioned blocks.
//!
//! [`Decoder`] reads from a borrowed `&[u8]` with a cursor; every read is bounds-checked and
//! every peer-supplied length or count is checked against the bytes that remain *before*
//! anything is allocated, so a hostile length costs nothing. [`Encoder`] is the mirror
//! image over a growable `Vec<u8>`.
//!
//! Layouts (msgr-v1.md section 1): integers are fixed-width little-endian; `string` and
//! `bufferlist` fields are a `u32` length + bytes; `vector`/`set`/`list` are a `u32`
//! count + elements; `map` is a `u32` count + (key, value) pairs; `utime_t` is `u32` sec +
//! `u32` nsec; a uuid is 16 raw bytes; a versioned struct (`ENCODE_START(v, compat)`) is
//! `u8 v`, `u8 compat`, `u32 len`, then `len` bytes of body.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Ceph's `utime_t` as it travels on the wire: seconds and nanoseconds since the epoch.
///
/// `ceph_timespec` (KEEPALIVE2 stamps) has the same layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UTime {
    /// Seconds since the Unix epoch (Ceph truncates to 32 bits).
    pub sec: u32,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl UTime {
    /// A timestamp from seconds and nanoseconds.
    pub const fn new(sec: u32, nsec: u32) -> Self {
        UTime { sec, nsec }
    }
}

/// A bounds-checked cursor over encoded bytes.
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder positioned at the start of `buf`.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    #[inline]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The unread bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Fails with [`Error::TrailingBytes`] unless every byte was consumed.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(Error::TrailingBytes { extra }),
        }
    }

    /// Consumes exactly `n` bytes and returns them (borrowed, no copy).
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let have = self.remaining();
        if n > have {
            return Err(Error::Truncated { need: n, have });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.bytes(n).map(|_| ())
    }

    /// Consumes a fixed-size array.
    #[inline]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A `u8`.
    #[inline]
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    /// A little-endian `u16`.
    #[inline]
    pub fn u16(&mut self) -> Result<u16> {
        self.array().map(u16::from_le_bytes)
    }
    /// A little-endian `u32`.
    #[inline]
    pub fn u32(&mut self) -> Result<u32> {
        self.array().map(u32::from_le_bytes)
    }
    /// A little-endian `u64`.
    #[inline]
    pub fn u64(&mut self) -> Result<u64> {
        self.array().map(u64::from_le_bytes)
    }
    /// An `i8`.
    #[inline]
    pub fn i8(&mut self) -> Result<i8> {
        self.array().map(i8::from_le_bytes)
    }
    /// A little-endian `i16`.
    #[inline]
    pub fn i16(&mut self) -> Result<i16> {
        self.array().map(i16::from_le_bytes)
    }
    /// A little-endian `i32`.
    #[inline]
    pub fn i32(&mut self) -> Result<i32> {
        self.array().map(i32::from_le_bytes)
    }
    /// A little-endian `i64`.
    #[inline]
    pub fn i64(&mut self) -> Result<i64> {
        self.array().map(i64::from_le_bytes)
    }

    /// A `bool` (one byte). Like Ceph, any non-zero byte reads as `true`.
    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }

    /// A 16-byte uuid (`uuid_d`, fsid) in wire order.
    pub fn uuid(&mut self) -> Result<[u8; 16]> {
        self.array()
    }

    /// A `utime_t` / `ceph_timespec`.
    pub fn utime(&mut self) -> Result<UTime> {
        Ok(UTime { sec: self.u32()?, nsec: self.u32()? })
    }

    /// A `u32`-length-prefixed byte string (`bufferlist` field), borrowed.
    ///
    /// The length is checked against the remaining input before anything else.
    pub fn blob(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.bytes(len)
    }

    /// A `u32`-length-prefixed `bufferlist` field as a zero-copy slice of `whole`.
    ///
    /// `whole` must be the `Bytes` this decoder was created over (so the position maps
    /// onto it); otherwise this returns [`Error::Misuse`].
    pub fn blob_bytes(&mut self, whole: &Bytes) -> Result<Bytes> {
        if whole.as_ptr() != self.buf.as_ptr() || whole.len() != self.buf.len() {
            return Err(Error::Misuse("blob_bytes: Bytes is not the decoder's buffer"));
        }
        let start = self.pos + 4;
        let len = self.blob()?.len();
        Ok(whole.slice(start..start + len))
    }

    /// A `u32`-length-prefixed string. Ceph strings are raw bytes; we require UTF-8
    /// (every name and key Ceph puts on this wire is ASCII) and reject anything else.
    pub fn string(&mut self) -> Result<String> {
        let raw = self.blob()?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| Error::Malformed("string is not valid UTF-8"))
    }

    /// A `u32` element count, checked so that `count * min_elem_size` bytes remain.
    ///
    /// Every element needs at least `min_elem_size` bytes (pass 1 when unsure), so a
    /// count larger than the input is rejected before any allocation.
    pub fn count(&mut self, min_elem_size: usize) -> Result<usize> {
        let count = self.u32()? as usize;
        let need = count.saturating_mul(min_elem_size.max(1));
        if need > self.remaining() {
            return Err(Error::Truncated { need, have: self.remaining() });
        }
        Ok(count)
    }

    /// A `vector`/`list`/`set`: `u32` count then `count` elements decoded by `elem`.
    pub fn vec<T>(&mut self, elem: impl FnMut(&mut Self) -> Result<T>) -> Result<Vec<T>> {
        self.vec_of(1, elem)
    }

    /// Like [`Decoder::vec`] for elements that take at least `min_elem_size` bytes on
    /// the wire: the count is checked against that first.
    pub fn vec_of<T>(
        &mut self,
        min_elem_size: usize,
        mut elem: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let count = self.count(min_elem_size)?;
        let mut out = Vec::with_capacity(self.capacity_for::<T>(count));
        for _ in 0..count {
            out.push(elem(self)?);
        }
        Ok(out)
    }

    /// How many `T`s to reserve for `count` elements read from the wire: never more
    /// than the remaining input's size in bytes worth of them. An element may be much
    /// larger in memory than on the wire (an address is 1 byte of count check but 40 in
    /// memory), so a hostile count must not make us reserve that ratio up front; the
    /// vector grows with the elements actually decoded instead.
    pub fn capacity_for<T>(&self, count: usize) -> usize {
        count.min(self.remaining() / std::mem::size_of::<T>().max(1))
    }

    /// A `map<K, V>`: `u32` count then (key, value) pairs. A repeated key keeps the last
    /// value, as `std::map` decoding does in Ceph.
    pub fn map<K: Ord, V>(
        &mut self,
        mut key: impl FnMut(&mut Self) -> Result<K>,
        mut value: impl FnMut(&mut Self) -> Result<V>,
    ) -> Result<BTreeMap<K, V>> {
        let count = self.count(1)?;
        let mut out = BTreeMap::new();
        for _ in 0..count {
            let k = key(self)?;
            let v = value(self)?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// A versioned block (`DECODE_START(understood, bl)` … `DECODE_FINISH`).
    ///
    /// Reads `u8 struct_v`, `u8 struct_compat`, `u32 len`; rejects a compat newer than
    /// `understood` with [`Error::Incompatible`]; hands `body` a sub-decoder limited to
    /// the `len` bytes of the block and the struct version; then skips whatever the body
    /// left unread (fields added by newer versions). The body can never read past the
    /// block.
    pub fn versioned<T>(
        &mut self,
        what: &'static str,
        understood: u8,
        body: impl FnOnce(&mut Decoder<'a>, u8) -> Result<T>,
    ) -> Result<T> {
        let struct_v = self.u8()?;
        let compat = self.u8()?;
        if compat > understood {
            return Err(Error::Incompatible { what, compat, understood });
        }
        let len = self.u32()? as usize;
        let block = self.bytes(len)?;
        let mut sub = Decoder::new(block);
        body(&mut sub, struct_v)
    }
}

/// Builds Ceph-encoded bytes into a `Vec<u8>`.
#[derive(Clone, Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    #[inline]
    pub fn new() -> Self {
        Encoder::default()
    }

    /// An empty encoder with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Encoder { buf: Vec::with_capacity(cap) }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The encoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// The encoded bytes as a zero-copy `Bytes`.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }

    /// Raw bytes, no length prefix.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// A `u8`.
    #[inline]
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// A little-endian `u16`.
    #[inline]
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A little-endian `u32`.
    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A little-endian `u64`.
    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// An `i8`.
    #[inline]
    pub fn i8(&mut self, v: i8) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A little-endian `i16`.
    #[inline]
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A little-endian `i32`.
    #[inline]
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A little-endian `i64`.
    #[inline]
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// A `bool` as one byte 0/1.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// A 16-byte uuid in wire order.
    pub fn uuid(&mut self, v: &[u8; 16]) -> &mut Self {
        self.bytes(v)
    }
    /// A `utime_t` / `ceph_timespec`.
    pub fn utime(&mut self, v: UTime) -> &mut Self {
        self.u32(v.sec).u32(v.nsec)
    }

    /// A `u32` length or count. Ceph's 32-bit fields cannot describe more; a caller that
    /// builds a larger section has a bug, so this saturates and logs instead of wrapping.
    fn len32(&mut self, n: usize) -> &mut Self {
        let v = u32::try_from(n).unwrap_or_else(|_| {
            log::error!(target: "msgr::encoding", "length {n} does not fit a u32 field");
            u32::MAX
        });
        self.u32(v)
    }

    /// A `u32`-length-prefixed byte string (`bufferlist` field).
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        self.len32(b.len()).bytes(b)
    }
    /// A `u32`-length-prefixed string.
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.blob(s.as_bytes())
    }

    /// A `vector`/`list`/`set`: `u32` count then each element via `elem`.
    pub fn vec<T>(&mut self, items: &[T], mut elem: impl FnMut(&mut Self, &T)) -> &mut Self {
        self.len32(items.len());
        for item in items {
            elem(self, item);
        }
        self
    }

    /// A `map<K, V>` in key order: `u32` count then (key, value) pairs.
    pub fn map<K, V>(
        &mut self,
        map: &BTreeMap<K, V>,
        mut entry: impl FnMut(&mut Self, &K, &V),
    ) -> &mut Self {
        self.len32(map.len());
        for (k, v) in map {
            entry(self, k, v);
        }
        self
    }

    /// A versioned block (`ENCODE_START(v, compat)` … `ENCODE_FINISH`): writes the
    /// header, runs `body`, then back-patches the `u32` length.
    pub fn versioned(&mut self, v: u8, compat: u8, body: impl FnOnce(&mut Self)) -> &mut Self {
        self.u8(v).u8(compat);
        let len_at = self.buf.len();
        self.u32(0);
        body(self);
        let body_len = self.buf.len() - len_at - 4;
        let len = u32::try_from(body_len).unwrap_or(u32::MAX);
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_little_endian_and_round_trip() {
        let mut e = Encoder::new();
        e.u8(1).u16(0x0203).u32(0x0405_0607).u64(0x0809_0a0b_0c0d_0e0f);
        e.i16(-2).i32(-3).i64(-1).bool(true).utime(UTime::new(7, 8));
        let b = e.into_vec();
        assert_eq!(&b[..7], &[1, 3, 2, 7, 6, 5, 4]);
        let mut d = Decoder::new(&b);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u16().unwrap(), 0x0203);
        assert_eq!(d.u32().unwrap(), 0x0405_0607);
        assert_eq!(d.u64().unwrap(), 0x0809_0a0b_0c0d_0e0f);
        assert_eq!(d.i16().unwrap(), -2);
        assert_eq!(d.i32().unwrap(), -3);
        assert_eq!(d.i64().unwrap(), -1);
        assert!(d.bool().unwrap());
        assert_eq!(d.utime().unwrap(), UTime::new(7, 8));
        d.finish().unwrap();
    }

    #[test]
    fn strings_and_containers_round_trip() {
        let mut m = BTreeMap::new();
        m.insert("b".to_string(), 2u32);
        m.insert("a".to_string(), 1u32);
        let mut e = Encoder::new();
        e.string("monmap").vec(&[1u64, 2, 3], |e, v| {
            e.u64(*v);
        });
        e.map(&m, |e, k, v| {
            e.string(k).u32(*v);
        });
        let b = e.into_vec();
        assert_eq!(&b[..10], b"\x06\x00\x00\x00monmap");
        let mut d = Decoder::new(&b);
        assert_eq!(d.string().unwrap(), "monmap");
        assert_eq!(d.vec(|d| d.u64()).unwrap(), vec![1, 2, 3]);
        assert_eq!(d.map(|d| d.string(), |d| d.u32()).unwrap(), m);
        d.finish().unwrap();
    }

    #[test]
    fn hostile_lengths_fail_before_allocating() {
        let b = [0xff, 0xff, 0xff, 0xff, 0];
        assert!(matches!(Decoder::new(&b).blob(), Err(Error::Truncated { .. })));
        assert!(matches!(Decoder::new(&b).string(), Err(Error::Truncated { .. })));
        assert!(matches!(Decoder::new(&b).vec(|d| d.u8()), Err(Error::Truncated { .. })));
        assert!(matches!(Decoder::new(&b).count(8), Err(Error::Truncated { .. })));
        assert!(matches!(
            Decoder::new(&b).map(|d| d.u8(), |d| d.u8()),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn non_utf8_string_is_malformed() {
        let b = [1, 0, 0, 0, 0xff];
        assert!(matches!(Decoder::new(&b).string(), Err(Error::Malformed(_))));
    }

    #[test]
    fn versioned_blocks_skip_unknown_tail_and_reject_new_compat() {
        let mut e = Encoder::new();
        e.versioned(3, 1, |e| {
            e.u32(42).u64(99); // the u64 is a field "we" don't know yet
        });
        e.u8(0xaa);
        let b = e.into_vec();
        assert_eq!(&b[..6], &[3, 1, 12, 0, 0, 0]);
        let mut d = Decoder::new(&b);
        let (v, x) = d.versioned("t", 1, |d, v| Ok((v, d.u32()?))).unwrap();
        assert_eq!((v, x), (3, 42));
        assert_eq!(d.u8().unwrap(), 0xaa);

        let mut d = Decoder::new(&b);
        let err = d.versioned("t", 0, |d, _| d.u32()).unwrap_err();
        assert_eq!(err, Error::Incompatible { what: "t", compat: 1, understood: 0 });

        // The body cannot read past the block even if more input follows.
        let mut d = Decoder::new(&b);
        let err = d.versioned("t", 1, |d, _| d.bytes(13).map(|_| ())).unwrap_err();
        assert_eq!(err, Error::Truncated { need: 13, have: 12 });
    }

    #[test]
    fn blob_bytes_slices_without_copy() {
        let whole = Bytes::from_static(b"\x03\x00\x00\x00abcz");
        let mut d = Decoder::new(&whole);
        let s = d.blob_bytes(&whole).unwrap();
        assert_eq!(&s[..], b"abc");
        assert_eq!(s.as_ptr(), whole[4..].as_ptr());
        let other = Bytes::from(b"\x03\x00\x00\x00abcz".to_vec());
        let mut d = Decoder::new(&whole);
        assert!(matches!(d.blob_bytes(&other), Err(Error::Misuse(_))));
    }

    #[test]
    fn a_hostile_count_reserves_no_more_than_the_input_holds() {
        // 1,000 one-byte elements announced in 1,004 bytes: u64s of 8 bytes each would
        // be 8,000 bytes reserved; at most 1,000 bytes' worth are.
        let mut b = 1000u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[0u8; 1000]);
        let d = Decoder::new(&b[4..]);
        assert_eq!(d.capacity_for::<u64>(1000), 125);
        assert_eq!(d.capacity_for::<u8>(1000), 1000);
        let v = Decoder::new(&b).vec(|d| d.u8().map(u64::from)).unwrap();
        assert_eq!(v.len(), 1000);
        // The count is still checked against each element's smallest size.
        assert!(matches!(Decoder::new(&b).vec_of(2, |d| d.u16()), Err(Error::Truncated { .. })));
    }
}
