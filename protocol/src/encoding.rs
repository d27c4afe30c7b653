//! Ceph's encoding conventions: little-endian integers, strings, containers, versioned blocks.
//!
//! [`Decoder`] reads from a borrowed `&[u8]` with a cursor; every read is bounds-checked and
//! every peer-supplied length or count is checked against the bytes that remain *before*
//! anything is allocated, so a hostile length costs nothing. [`Encoder`] is the mirror
//! image over a growable `Vec<u8>`.
//!
//! Checking a count against the input is not enough for collections of owned values: a
//! one-byte string takes 5 bytes on the wire and ~56 in memory. A [`DecodeBudget`] bounds
//! what the collections of one decoded input may take to a constant factor of its size;
//! the `*_within` methods of [`Decoder`] charge it before they allocate.
//!
//! Layouts (msgr-v1.md section 1): integers are fixed-width little-endian; `string` and
//! `bufferlist` fields are a `u32` length + bytes; `vector`/`set`/`list` are a `u32`
//! count + elements; `map` is a `u32` count + (key, value) pairs; `utime_t` is `u32` sec +
//! `u32` nsec; a uuid is 16 raw bytes; a versioned struct (`ENCODE_START(v, compat)`) is
//! `u8 v`, `u8 compat`, `u32 len`, then `len` bytes of body.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;

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

/// The memory the collections decoded from one input may take: at most
/// [`DecodeBudget::FACTOR`] times the input's size plus [`DecodeBudget::SLACK`].
///
/// Counting elements against the input ([`Decoder::count`]) stops a count from sizing an
/// allocation by itself, but not the decoded value from being many times its wire size:
/// a `vector<string>` of one-byte strings is 5 bytes an element on the wire and a 24-byte
/// `String` plus a 32-byte malloc chunk in memory, so a 64 MiB front (the default
/// `max_front`) became ~1 GiB while the dispatch throttle charged 64 MiB. Decoders charge
/// every slot, heap block and tree entry here *before* allocating it and fail with
/// [`Error::TooLarge`] once the total would pass the limit. One budget serves a whole
/// input (a message front, a monmap blob), so nested collections (each monitor's CRUSH
/// location inside the monmap) share one slack instead of getting one each.
///
/// The charges are estimates of what glibc's malloc and std's B-tree really take; they
/// err high, so what is charged bounds what is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeBudget {
    used: usize,
    limit: usize,
}

impl DecodeBudget {
    /// The most memory, per input byte, the collections of one input may take.
    ///
    /// What Ceph sends is within 4x or small enough for the slack: a command's JSON or
    /// any long string is ~1x; a central config map with keys of 20-40 characters and
    /// short values ~5x (`osd_some_option_name_NNNN` = `3`: 38 bytes on the wire, 192
    /// charged), so the slack admits ~25,000 such options, where Pacific has ~2,000. What
    /// bloats is well above (measured before this bound, peak heap / front): one-byte
    /// strings 17x (11x, plus the vector's doubling), empty strings 12x (6x), a map or
    /// set of 4-character keys 10x, a subscription map of them 6.6x. 4 refuses every one
    /// of these; 8 would let empty strings through at 6x.
    pub const FACTOR: usize = 4;

    /// Memory every input may take whatever its size.
    ///
    /// It pays the fixed costs short entries cannot amortise (a B-tree slot, a 32-byte
    /// malloc chunk per short string): `debug_ms` = `0/0` is 19 bytes on the wire and 176
    /// charged (9x), so maps of such entries pass on the slack alone: ~11,000 of them fit
    /// (Ceph has a few dozen `debug_*` options). 1 MiB per message in decoding is small
    /// next to the 100 MiB default dispatch throttle.
    pub const SLACK: usize = 1 << 20;

    /// A budget for decoding `input_len` bytes: `FACTOR × input_len + SLACK`.
    pub fn for_input(input_len: usize) -> Self {
        DecodeBudget {
            used: 0,
            limit: input_len.saturating_mul(Self::FACTOR).saturating_add(Self::SLACK),
        }
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The most that may be charged.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Charges `bytes`, or fails with [`Error::TooLarge`] (charging nothing) if the total
    /// would pass the limit; the error's `len` is that total.
    pub fn charge(&mut self, bytes: usize) -> Result<()> {
        let total = self.used.saturating_add(bytes);
        if total > self.limit {
            return Err(Error::TooLarge {
                what: "memory for decoded collections",
                len: total as u64,
                limit: self.limit as u64,
            });
        }
        self.used = total;
        Ok(())
    }

    /// Charges a heap block of `len` bytes as malloc takes it ([`DecodeBudget::heap_block`]).
    pub fn charge_heap(&mut self, len: usize) -> Result<()> {
        self.charge(Self::heap_block(len))
    }

    /// Charges one entry of a `BTreeMap<K, V>` (or, with `V = ()`, of a `BTreeSet<K>`):
    /// its slot in a tree node ([`DecodeBudget::tree_entry`]). The heap blocks the key and
    /// value own are charged separately.
    pub fn charge_tree_entry<K, V>(&mut self) -> Result<()> {
        self.charge(Self::tree_entry::<K, V>())
    }

    /// What a heap block of `len` bytes takes from glibc's malloc on a 64-bit host: none
    /// for an empty one (std does not allocate), else `len` plus its 8-byte header,
    /// rounded up to 16, at least 32.
    pub fn heap_block(len: usize) -> usize {
        if len == 0 {
            return 0;
        }
        (len.saturating_add(8 + 15) & !15).max(32)
    }

    /// What one entry of a `BTreeMap<K, V>` takes in its tree: twice its inline size, as
    /// a node stores 11 entries inline and the splits of sorted inserts (how Ceph encodes
    /// a `std::map`) leave it about half full, plus 16 bytes for its share of the node
    /// header and of the child pointers of internal nodes.
    pub fn tree_entry<K, V>() -> usize {
        size_of::<(K, V)>().saturating_mul(2).saturating_add(16)
    }

    /// Charges a vector's growth from `old` to `new` bytes of buffer: both are live while
    /// the old one is copied, so the new one is charged in full before the old one is
    /// given back.
    fn charge_growth(&mut self, old: usize, new: usize) -> Result<()> {
        self.charge(Self::heap_block(new))?;
        self.used = self.used.saturating_sub(Self::heap_block(old));
        Ok(())
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

    /// A string, like [`Decoder::string`], whose heap block is charged to `budget`
    /// before it is allocated.
    pub fn string_within(&mut self, budget: &mut DecodeBudget) -> Result<String> {
        let raw = self.blob()?;
        budget.charge_heap(raw.len())?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| Error::Malformed("string is not valid UTF-8"))
    }

    /// Like [`Decoder::vec_of`], with the vector's buffer charged to `budget` before each
    /// growth. `elem` charges what each element owns (e.g. [`Decoder::string_within`]).
    ///
    /// The vector starts at [`Decoder::capacity_for`] and doubles, never past the count,
    /// so an honest vector ends exactly full and a hostile count reserves nothing beyond
    /// what the input and the budget allow.
    pub fn vec_within<T>(
        &mut self,
        budget: &mut DecodeBudget,
        min_elem_size: usize,
        mut elem: impl FnMut(&mut Self, &mut DecodeBudget) -> Result<T>,
    ) -> Result<Vec<T>> {
        let count = self.count(min_elem_size)?;
        let slot = size_of::<T>();
        let first = self.capacity_for::<T>(count);
        budget.charge_heap(first.saturating_mul(slot))?;
        let mut out = Vec::with_capacity(first);
        for _ in 0..count {
            let item = elem(self, budget)?;
            if out.len() == out.capacity() {
                let cap = out.capacity();
                let new_cap = cap.saturating_mul(2).max(out.len() + 1).min(count);
                budget.charge_growth(cap.saturating_mul(slot), new_cap.saturating_mul(slot))?;
                out.reserve_exact(new_cap - out.len());
            }
            out.push(item);
        }
        Ok(out)
    }

    /// Like [`Decoder::map`], with each entry's tree slot charged to `budget` before it is
    /// inserted; `key` and `value` charge what they own. Every entry needs at least
    /// `min_entry_size` bytes, checked against the count first.
    pub fn map_within<K: Ord, V>(
        &mut self,
        budget: &mut DecodeBudget,
        min_entry_size: usize,
        mut key: impl FnMut(&mut Self, &mut DecodeBudget) -> Result<K>,
        mut value: impl FnMut(&mut Self, &mut DecodeBudget) -> Result<V>,
    ) -> Result<BTreeMap<K, V>> {
        let count = self.count(min_entry_size)?;
        let mut out = BTreeMap::new();
        for _ in 0..count {
            let k = key(self, budget)?;
            let v = value(self, budget)?;
            // A repeated key is charged too: Ceph never sends one, and charging it only
            // refuses sooner.
            budget.charge_tree_entry::<K, V>()?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// A `set`: `u32` count then elements, each tree slot charged to `budget` before it is
    /// inserted (see [`Decoder::map_within`]). Repeated elements collapse, as in
    /// `std::set`.
    pub fn set_within<T: Ord>(
        &mut self,
        budget: &mut DecodeBudget,
        min_elem_size: usize,
        mut elem: impl FnMut(&mut Self, &mut DecodeBudget) -> Result<T>,
    ) -> Result<BTreeSet<T>> {
        let count = self.count(min_elem_size)?;
        let mut out = BTreeSet::new();
        for _ in 0..count {
            let item = elem(self, budget)?;
            budget.charge_tree_entry::<T, ()>()?;
            out.insert(item);
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
    fn a_budget_charges_up_to_its_limit_and_no_further() {
        let mut b = DecodeBudget::for_input(10);
        assert_eq!(b.limit(), 40 + DecodeBudget::SLACK);
        b.charge(b.limit() - 1).unwrap();
        let err = b.charge(2).unwrap_err();
        assert_eq!(
            err,
            Error::TooLarge {
                what: "memory for decoded collections",
                len: b.limit() as u64 + 1,
                limit: b.limit() as u64
            }
        );
        // A refused charge leaves the total as it was.
        assert_eq!(b.used(), b.limit() - 1);
        b.charge(1).unwrap();
        assert_eq!(DecodeBudget::for_input(usize::MAX).limit(), usize::MAX);
    }

    #[test]
    fn heap_blocks_and_tree_entries_are_estimated_as_malloc_and_btree_take_them() {
        let sizes: Vec<usize> =
            [0, 1, 24, 25, 40, 41, 1000].into_iter().map(DecodeBudget::heap_block).collect();
        assert_eq!(sizes, [0, 32, 32, 48, 48, 64, 1008]);
        assert_eq!(DecodeBudget::tree_entry::<String, String>(), 2 * 48 + 16);
        assert_eq!(DecodeBudget::tree_entry::<i32, ()>(), 2 * 4 + 16);
    }

    #[test]
    fn budgeted_containers_charge_before_they_allocate() {
        // Ten u64s in 84 bytes: the vector ends exactly full, its one block charged.
        let mut e = Encoder::new();
        e.vec(&[7u64; 10], |e, v| {
            e.u64(*v);
        });
        let mut b = DecodeBudget::for_input(0);
        let v = Decoder::new(e.as_slice()).vec_within(&mut b, 8, |d, _| d.u64()).unwrap();
        assert_eq!((v.len(), v.capacity()), (10, 10));
        assert_eq!(b.used(), DecodeBudget::heap_block(80));

        // A vector of empty strings grows by doubling until its buffer passes the budget;
        // the growth that would is refused before it allocates.
        let n = DecodeBudget::SLACK / 24 * 2;
        let mut e = Encoder::new();
        e.u32(n as u32);
        for _ in 0..n {
            e.string("");
        }
        let mut b = DecodeBudget::for_input(0);
        let err = Decoder::new(e.as_slice()).vec_within(&mut b, 4, |d, b| d.string_within(b));
        assert!(matches!(err, Err(Error::TooLarge { .. })));
        assert!(b.used() <= b.limit());

        // Maps and sets charge a slot per entry, repeated keys included.
        let mut e = Encoder::new();
        e.u32(3).string("a").u32(1).string("a").u32(2).string("bb").u32(3);
        let mut b = DecodeBudget::for_input(0);
        let m = Decoder::new(e.as_slice())
            .map_within(&mut b, 8, Decoder::string_within, |d, _| d.u32())
            .unwrap();
        assert_eq!(m.into_iter().collect::<Vec<_>>(), [("a".into(), 2), ("bb".into(), 3)]);
        let entry = DecodeBudget::tree_entry::<String, u32>();
        assert_eq!(b.used(), 3 * (entry + 32));
        let mut e = Encoder::new();
        e.u32(2).i32(5).i32(-1);
        let mut b = DecodeBudget::for_input(0);
        let s = Decoder::new(e.as_slice()).set_within(&mut b, 4, |d, _| d.i32()).unwrap();
        assert_eq!(s.into_iter().collect::<Vec<_>>(), [-1, 5]);
        assert_eq!(b.used(), 2 * DecodeBudget::tree_entry::<i32, ()>());
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
