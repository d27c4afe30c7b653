//! Decoding peer bytes allocates in proportion to the bytes received: a count read from
//! the wire must not size an allocation by itself, and the decoded value must not be
//! many times larger in memory than the bytes it came from. A counting allocator records,
//! per thread, the largest single allocation and the peak of live heap bytes while a
//! hostile (or realistic) front is decoded.

#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use protocol::encoding::{DecodeBudget, Encoder};
use protocol::messages::{
    MCommand, MConfig, MMonCommand, MMonSubscribe, MonMap, MsgType, PaxosHeader, TypedMessage,
};
use protocol::types::Features;
use protocol::Message;

/// The bound the decoders promise: decoded collections take at most this many times the
/// input, plus a fixed slack.
const FACTOR: usize = DecodeBudget::FACTOR;
const SLACK: usize = DecodeBudget::SLACK;

// Per thread, so the tests of this binary, which run in parallel, do not see each
// other's allocations. Const-initialised `Cell`s of `Copy` types: no allocation and no
// destructor, so the allocator may touch them at any time.
thread_local! {
    /// The largest single allocation asked for since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Heap bytes this thread holds now, as malloc chunks (see [`chunk`]).
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// The highest `LIVE` since the last reset.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// What glibc's malloc takes for a request of `size` bytes on a 64-bit host: the request
/// plus an 8-byte header, rounded up to 16, at least 32. Counting requested bytes alone
/// would call a million one-byte strings 1 MB when they hold 32 MB.
fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

fn grow(by: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + by;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

fn shrink(by: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(by)));
}

struct Counting;

// SAFETY: every call is passed on to `System` unchanged; only sizes are recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        grow(chunk(layout.size()));
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(chunk(layout.size()));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // A moving realloc holds both blocks while it copies: count the new one before
        // the old one goes.
        grow(chunk(new_size));
        shrink(chunk(layout.size()));
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation `f` made on this thread.
fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// The peak of heap bytes `f` held on this thread above what was live when it started,
/// counting its result (still live when `f` returns).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    (out, PEAK.with(Cell::get) - start)
}

/// What decoding one input did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Decoded, at most `FACTOR × input + SLACK` bytes at peak.
    Accepted,
    /// Refused with an error, at most `FACTOR × input + SLACK` bytes at peak.
    Refused,
    /// Took more than `FACTOR × input + SLACK` bytes at peak, whatever the result.
    Bloated,
}

/// Decodes `msg` as a `T` (see [`decode_blob_peak`]).
fn decode_peak<T: TypedMessage>(what: &str, msg: &Message) -> Outcome {
    decode_blob_peak(what, msg.front(), |_| T::from_message(msg).map(drop))
}

/// Runs `decode` over `input`, reports the peak heap it took and classifies it.
fn decode_blob_peak(
    what: &str,
    input: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<(), protocol::error::Error>,
) -> Outcome {
    let (res, peak) = peak_during(|| decode(input));
    let input = input.len();
    eprintln!(
        "{what}: {input} bytes in, peak {peak} bytes ({:.2}x), {}",
        peak as f64 / input as f64,
        match &res {
            Ok(()) => "accepted".to_string(),
            Err(e) => format!("refused: {e}"),
        }
    );
    match res {
        _ if peak > FACTOR * input + SLACK => Outcome::Bloated,
        Ok(()) => Outcome::Accepted,
        Err(_) => Outcome::Refused,
    }
}

/// A front of `len` bytes or a little less: `head`, then a `u32` count and as many
/// `u32`-length-prefixed copies of `elem` as fit.
fn string_vec_front(head: &[u8], elem: &[u8], len: usize) -> Bytes {
    let each = 4 + elem.len();
    let n = (len - head.len() - 4) / each;
    let mut e = Encoder::with_capacity(len);
    e.bytes(head).u32(u32::try_from(n).unwrap());
    for _ in 0..n {
        e.blob(elem);
    }
    e.into_bytes()
}

/// `n` distinct ASCII keys of `width` characters, in increasing order (as Ceph encodes a
/// `std::map` or `std::set`, and the order in which a B-tree's nodes end up half full).
fn tiny_keys(n: usize, width: u32) -> impl Iterator<Item = String> {
    const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
    (0..n).map(move |i| {
        (0..width).rev().map(|p| char::from(DIGITS[(i >> (6 * p)) & 63])).collect::<String>()
    })
}

fn message(ty: MsgType, front: Bytes, version: u16) -> Message {
    let mut m = Message::new(ty.0, front);
    m.set_version(version);
    m.set_compat_version(1);
    m
}

const HOSTILE_FRONT: usize = 8 << 20;
const FSID: [u8; 16] = *b"0123456789abcdef";

/// A pre-MONENC monmap of version `v` (1 or 2) whose legacy address list claims as many
/// entries as the smallest entry size allows in `junk` bytes, followed by junk.
fn legacy_monmap(v: u8, min_entry: usize, junk: usize) -> Vec<u8> {
    let mut b = vec![v, 0];
    b.extend([0x11; 16]); // fsid
    b.extend(1u32.to_le_bytes()); // epoch
    b.extend(u32::try_from(junk / min_entry).unwrap().to_le_bytes());
    // Junk whose first string length (v2) or address marker (v1) cannot decode.
    b.extend(std::iter::repeat_n(0xff, junk));
    b
}

// A monmap's legacy address list of a million claimed entries in 1 MiB of junk fails
// to decode without reserving room for the entries: each takes ~64 bytes decoded but
// only 5 (or 10) on the wire, and a 64 MiB front once asked for ~860 MB at once.
#[test]
fn a_monmaps_claimed_entries_do_not_size_its_allocation() {
    for (v, min_entry) in [(1u8, 10usize), (2, 5)] {
        let blob = legacy_monmap(v, min_entry, 1 << 20);
        let (res, largest) = largest_during(|| MonMap::decode(&blob));
        assert!(res.is_err(), "v{v}: junk decoded");
        assert!(
            largest <= 2 * blob.len(),
            "v{v}: a {largest}-byte allocation for {} bytes",
            blob.len()
        );
    }
}

// One-byte strings take 5 bytes on the wire but a 24-byte `String` plus a 32-byte
// malloc chunk decoded (~11x, ~15x with the vector's doubling); empty ones 4 bytes for
// 24 (6x, 12x). An 8 MiB command front of them must not become ~100 MB.
#[test]
fn a_command_of_tiny_strings_does_not_bloat() {
    let mut wrong = Vec::new();
    for (elem, name) in [(&b"x"[..], "one-byte"), (&b""[..], "empty")] {
        let front = string_vec_front(&FSID, elem, HOSTILE_FRONT);
        let msg = message(MsgType::COMMAND, front, 1);
        let what = format!("MCommand of {name} strings");
        let got = decode_peak::<MCommand>(&what, &msg);
        if got != Outcome::Refused {
            wrong.push((what, got));
        }

        let mut head = Encoder::new();
        PaxosHeader::default().encode(&mut head);
        head.uuid(&FSID);
        let front = string_vec_front(head.as_slice(), elem, HOSTILE_FRONT);
        let msg = message(MsgType::MON_COMMAND, front, 1);
        let what = format!("MMonCommand of {name} strings");
        let got = decode_peak::<MMonCommand>(&what, &msg);
        if got != Outcome::Refused {
            wrong.push((what, got));
        }
    }
    assert!(wrong.is_empty(), "not refused within the bound: {wrong:?}");
}

// A config map of 4-character keys and empty values: 12 bytes an entry on the wire,
// ~125 decoded (a 48-byte B-tree slot in a half-full node, a 32-byte key chunk).
#[test]
fn a_config_map_of_tiny_entries_does_not_bloat() {
    let n = HOSTILE_FRONT / 12;
    let config: BTreeMap<String, String> = tiny_keys(n, 4).map(|k| (k, String::new())).collect();
    let msg = MConfig { config }.to_message(Features::PACIFIC_ADVERTISED);
    assert_eq!(decode_peak::<MConfig>("MConfig of tiny entries", &msg), Outcome::Refused);
}

// A subscription map of 4-character names: 17 bytes an entry on the wire, ~110 decoded.
#[test]
fn a_subscription_map_of_tiny_entries_does_not_bloat() {
    let mut sub = MMonSubscribe::default();
    for name in tiny_keys(HOSTILE_FRONT / 17, 4) {
        sub.want(&name, 0, 0);
    }
    let msg = sub.to_message(Features::PACIFIC_ADVERTISED);
    let got = decode_peak::<MMonSubscribe>("MMonSubscribe of tiny entries", &msg);
    assert_eq!(got, Outcome::Refused);
}

// A monmap's string set (disallowed_leaders) of 4-character names: 8 bytes an entry on
// the wire, ~77 decoded.
#[test]
fn a_monmaps_string_set_does_not_bloat() {
    let mut map = MonMap::single(FSID, 1, "a", Default::default());
    map.disallowed_leaders = tiny_keys(HOSTILE_FRONT / 8, 4).collect::<BTreeSet<_>>();
    let blob = map.to_bytes(Features::PACIFIC_ADVERTISED);
    let got = decode_blob_peak("MonMap of a tiny-name set", &blob, |b| MonMap::decode(b).map(drop));
    assert_eq!(got, Outcome::Refused);
}

// What Ceph sends stays well inside the bound: a large central config (Pacific has
// about 2,000 options; 5,000 entries with keys of 25 characters and short values) and
// a command carrying a long JSON argument.
#[test]
fn realistic_large_messages_decode() {
    let values = ["3", "true", "0/5", "4096", "false", "10.0.0.0/24", "1.5", "host"];
    let config: BTreeMap<String, String> = (0..5000)
        .map(|i| (format!("osd_some_option_name_{i:04}"), values[i % values.len()].to_string()))
        .collect();
    let msg = MConfig { config }.to_message(Features::PACIFIC_ADVERTISED);
    assert_eq!(decode_peak::<MConfig>("MConfig of 5,000 options", &msg), Outcome::Accepted);

    // Short keys such as `debug_ms` = `0/0` are the worst realistic ratio (~9x); there
    // are a few dozen of them.
    let config: BTreeMap<String, String> =
        (0..200).map(|i| (format!("debug_{i:03}"), "0/5".to_string())).collect();
    let msg = MConfig { config }.to_message(Features::PACIFIC_ADVERTISED);
    assert_eq!(decode_peak::<MConfig>("MConfig of 200 debug levels", &msg), Outcome::Accepted);

    let long = "x".repeat(1 << 20);
    let json = format!(r#"{{"prefix": "config-key set", "key": "mgr/x/blob", "val": "{long}"}}"#);
    let cmd = MMonCommand { fsid: FSID, cmd: vec![json], ..MMonCommand::default() };
    let msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    assert_eq!(decode_peak::<MMonCommand>("MMonCommand of a 1 MiB JSON", &msg), Outcome::Accepted);

    let words = ["injectargs", "--debug-osd", "20/20", "--debug-ms", "1"];
    let cmd = MCommand {
        fsid: FSID,
        cmd: words.iter().map(|w| w.to_string()).collect(),
        data: Bytes::new(),
    };
    let msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    assert_eq!(decode_peak::<MCommand>("MCommand of argv words", &msg), Outcome::Accepted);
}

// A monitor's address vector of empty addresses: 19 bytes an address on the wire, 40
// decoded. Grown by pushing, it doubled past the count (to ~4x the input) and was only
// charged to the budget once decoded, after the doubling's copy had held both buffers
// (~6x): an 8 MiB monmap took ~50 MB at peak and was accepted holding ~34 MB.
#[test]
fn a_monitors_address_vector_does_not_bloat() {
    use protocol::messages::MonInfo;
    use protocol::types::{EntityAddr, EntityAddrVec};
    let n = HOSTILE_FRONT / 19;
    let addrs = EntityAddrVec { addrs: vec![EntityAddr::default(); n] };
    let mut map = MonMap::default();
    map.add(MonInfo { name: "a".into(), public_addrs: addrs, ..MonInfo::default() });
    let blob = map.to_bytes(Features::PACIFIC_ADVERTISED);
    drop(map);
    let got =
        decode_blob_peak("MonMap of a long address vector", &blob, |b| MonMap::decode(b).map(drop));
    assert_ne!(got, Outcome::Bloated);
}
