//! Ceph's crc32c: the one function every crc of msgr v1 and msgr2's crc mode goes
//! through. The `crc32c` crate (the design's choice) stays the reference; short inputs go
//! to `short_crc` (one chain of the `crc32` instruction, the workspace's own small
//! crate), long ones (from 128 bytes where `short_crc`'s fold runs, else from 256) to the
//! kernels measured fastest on this CPU's kind: `crc-fast`'s folding from 2 KiB where it
//! has 512-bit VPCLMULQDQ, with `short_crc`'s own 256-bit folding below that; the 256-bit
//! folding alone where the CPU has AVX2 and VPCLMULQDQ but not the 512-bit tier; else the
//! `crc32c` crate, which runs the `crc32` instruction on three streams. Each detects the
//! CPU at run time and falls back to portable code, and keeps its `unsafe` to itself, so
//! this crate stays `forbid(unsafe_code)`.

use std::sync::OnceLock;

use crc_fast::{CrcAlgorithm, Digest};

/// Inputs at least this long go to the long kernel ([`long_kernel`]), shorter ones to
/// `short_crc`. Measured on this project's machines (`bench crc`, thread CPU time per
/// call, each call's seed the last one's result): `short_crc` takes a 49-byte header in
/// 6.9–7.7 ns against the `crc32c` crate's 12.3–15.0 and `crc-fast`'s 15.5–17.3; those
/// three are level at 256 (27–31 ns), where `short_crc`'s 256-bit folding takes 21 (it
/// is slower than one chain below 256); from 1 KiB on one chain is half as fast as either
/// of the other two.
const LONG_MIN: usize = 256;

/// Where `short_crc`'s 256-bit folding runs ([`LongKernel::Fold256`], and below
/// [`FOLDING_MIN`] under [`LongKernel::Folding`]), it takes inputs from this long: it
/// folds 128 bytes a step, and with its lanes joined as a tree it beat one chain from
/// here (`bench crc`, 3 December: 12.3 against 16.2 ns at 128 bytes, 19.6 against 24.0
/// at 192), where the other two long kernels are level with the chain until 256 (the
/// fronts of many of Ceph's messages are this long).
const FOLD256_MIN: usize = 128;

/// Under [`LongKernel::Folding`], inputs at least this long go to `crc-fast`, shorter
/// ones (from [`FOLD256_MIN`]) to `short_crc`'s 256-bit folding. `crc-fast` folds 512
/// bytes a step and takes what is left over more slowly, so below 2 KiB the narrower
/// fold beat it at every size measured (`bench crc` on an AVX-512 EPYC, 5 December: 12.5
/// against 26.9 ns at 256 bytes, 16.6 against 39.9 at 384, 20.7 against 28.4 at 512, 29.8
/// against 53.7 at 768, 38.1 against 44.8 at 1 KiB, 55.3 against 62.1 at 1.5 KiB), and
/// from 2 KiB on `crc-fast` wins (44.6 against 73.7 ns at 2 KiB, 93 against 121 at 4 KiB).
const FOLDING_MIN: usize = 2 << 10;

/// The kernel [`ceph_crc32c`] runs on long inputs: from [`long_kernel_from`] bytes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongKernel {
    /// `crc-fast`'s folding from 2 KiB, where it runs on 512-bit VPCLMULQDQ (its
    /// `x86_64-avx512-vpclmulqdq` tier): 58 GB/s at 1 MiB on an AVX-512 EPYC, 2.1× the
    /// `crc32c` crate there. Shorter inputs go to `short_crc`'s 256-bit folding.
    Folding,
    /// `short_crc`'s 256-bit folding, where the CPU has AVX2 and VPCLMULQDQ but not
    /// `crc-fast`'s 512-bit tier: on an EPYC with VPCLMULQDQ and no AVX-512, `crc-fast`
    /// folds 128 bits at a time at 14 GB/s for 4 KiB and 19 GB/s for 1 MiB, the `crc32c`
    /// crate's three `crc32` streams run 18 and 24, and this 25 and 37 (2.3× the
    /// `crc32c` crate at 512 bytes, 1.4× at 4 KiB, 1.6× at 1 MiB, where three `crc32`
    /// chains run beside the fold).
    Fold256,
    /// The `crc32c` crate everywhere else.
    ThreeStreams,
}

impl LongKernel {
    /// The crate behind it, for reports.
    pub fn name(self) -> &'static str {
        match self {
            LongKernel::Folding => "crc-fast's 512-bit folding (short_crc's 256-bit below 2 KiB)",
            LongKernel::Fold256 => "short_crc's 256-bit folding",
            LongKernel::ThreeStreams => "the crc32c crate's three crc32 streams",
        }
    }
}

/// How long an input [`ceph_crc32c`] takes past the one `crc32` chain on this CPU is at
/// least: 128 bytes where `short_crc`'s fold runs, else 256.
pub fn long_kernel_from() -> usize {
    match long_kernel() {
        LongKernel::Fold256 | LongKernel::Folding => FOLD256_MIN,
        LongKernel::ThreeStreams => LONG_MIN,
    }
}

/// Which kernel [`ceph_crc32c`] uses for long inputs on this CPU (decided once).
pub fn long_kernel() -> LongKernel {
    static KERNEL: OnceLock<LongKernel> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if folds_512_bits() {
            LongKernel::Folding
        } else if short_crc::can_fold() {
            LongKernel::Fold256
        } else {
            LongKernel::ThreeStreams
        }
    })
}

/// Whether `crc-fast` runs its 512-bit VPCLMULQDQ tier here: the CPU features it asks
/// for that tier (a test checks the two agree).
fn folds_512_bits() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `ceph_crc32c(seed, data)`: CRC-32C (Castagnoli) whose register starts at `seed` and is
/// returned without a final xor (msgr-v1.md 5.3). Every crc in msgr v1 uses seed 0.
///
/// Standard CRC-32C inverts the register on the way in and out; the kernels take the
/// register as it is, so no inversion is undone here except `crc-fast`'s final xor.
// Inlined: most calls are for an empty segment (returned at once) or a header, and the
// long kernels' large frames, set up out of line, would be paid by every call.
#[inline]
pub fn ceph_crc32c(seed: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        // Most messages have an empty middle (and many an empty front or data): no
        // kernel call, whose setup costs more than the nothing it would compute.
        seed
    } else if data.len() >= LONG_MIN {
        long(seed, data)
    } else if data.len() >= FOLD256_MIN {
        medium(seed, data)
    } else {
        short(seed, data)
    }
}

/// The proof that this CPU runs `short_crc`'s one chain, once found (never set where it
/// does not). Read per call where `short_crc::update` checked the CPU itself: that
/// check, inlined at each of the ~6 calls of a 64 B round trip, was a load of std's
/// feature cache (through the GOT), a test for "not yet detected" and a test of its
/// bit, six instructions; this is four (the once-state through the GOT, one test).
static CHAIN: OnceLock<short_crc::Chain> = OnceLock::new();

/// [`ceph_crc32c`] of a short input: `short_crc`'s one chain, its CPU check paid once.
#[inline]
fn short(seed: u32, data: &[u8]) -> u32 {
    match CHAIN.get() {
        Some(chain) => chain.update(seed, data),
        None => short_first(seed, data),
    }
}

/// [`short`] before the chain is known to run here (the first call), and on every call
/// on a CPU without it. Out of line, so that the common path stays one compare.
#[cold]
#[inline(never)]
fn short_first(seed: u32, data: &[u8]) -> u32 {
    match short_crc::Chain::detect() {
        Some(chain) => CHAIN.get_or_init(|| chain).update(seed, data),
        None => short_crc::three_streams(seed, data),
    }
}

/// [`ceph_crc32c`] of an input from [`FOLD256_MIN`] to [`LONG_MIN`] bytes: the 256-bit
/// fold where this CPU's long kernels include it, else one chain. Out of line, as
/// [`long`].
#[inline(never)]
fn medium(seed: u32, data: &[u8]) -> u32 {
    match long_kernel() {
        LongKernel::Fold256 | LongKernel::Folding => short_crc::fold_update(seed, data),
        LongKernel::ThreeStreams => short_crc::update(seed, data),
    }
}

/// [`ceph_crc32c`] of a long input, on this CPU's [`long_kernel`]. Out of line: the
/// long kernels set up large frames that the short path should not pay for.
#[inline(never)]
fn long(seed: u32, data: &[u8]) -> u32 {
    match long_kernel() {
        LongKernel::Folding if data.len() >= FOLDING_MIN => folded(seed, data),
        LongKernel::Folding | LongKernel::Fold256 => short_crc::fold_update(seed, data),
        LongKernel::ThreeStreams => short_crc::three_streams(seed, data),
    }
}

/// The crc of a buffer that grows in place (a large segment assembled from reads), taken
/// over each new tail as it lands, so no pass over the whole is left once it is complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunningCrc {
    crc: u32,
    /// How many bytes of the buffer `crc` covers; 0 starts over from the seed.
    through: usize,
}

impl RunningCrc {
    /// Adds the bytes `buf` gained since the last call to the crc begun from `seed`;
    /// returns the crc of all of `buf`.
    pub(crate) fn update(&mut self, seed: u32, buf: &[u8]) -> u32 {
        if self.through == 0 {
            self.crc = seed;
        }
        self.crc = ceph_crc32c(self.crc, buf.get(self.through..).unwrap_or_default());
        self.through = buf.len();
        self.crc
    }
}

/// `crc-fast`: carry-less multiplication folding (VPCLMULQDQ / PCLMULQDQ, chosen at run
/// time; a portable table fallback elsewhere). Its register for a reflected CRC is the
/// same value the `crc32c` crate's `!prev` is, so the seed goes in as is and `finalize`'s
/// xor is undone.
fn folded(seed: u32, data: &[u8]) -> u32 {
    let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(seed));
    digest.update(data);
    // CRC-32/ISCSI's xorout is all ones and the result fits 32 bits.
    !(digest.finalize() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    /// The header of a real client's first MAuth, without its crc (msgr-v1.md 5.3; the hex
    /// string printed there has one `00` too many after `3c`, the 8.2 transcript is right).
    fn mauth_header_49() -> Vec<u8> {
        hex("01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 11 00 7f 00 01 00 3c 00 00 00 \
             00 00 00 00 00 00 00 00 00 00 08 ff ff ff ff ff ff ff ff 01 00 00 00")
    }

    /// That MAuth's 60-byte front (msgr-v1.md 8.2), whose footer carries 0x35a7635b.
    fn mauth_front_60() -> Vec<u8> {
        hex("00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00 00 00 00 00 00 00 1e 00 00 00 \
             01 01 00 00 00 01 00 00 00 08 00 00 00 05 00 00 00 61 64 6d 69 6e \
             00 00 00 00 00 00 00 00 00 00 00 00")
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap_or(0)).collect()
    }

    /// A kernel: Ceph's crc32c of `data` from register `seed`.
    type Kernel = fn(u32, &[u8]) -> u32;

    /// The reference the kernels are checked against.
    fn reference(seed: u32, data: &[u8]) -> u32 {
        short_crc::three_streams(seed, data)
    }

    /// Every kernel, so each is checked whatever [`LONG_MIN`] and [`long_kernel`] pick.
    const KERNELS: [(&str, Kernel); 6] = [
        ("ceph_crc32c", ceph_crc32c),
        ("short (cached chain)", short),
        ("three_streams", short_crc::three_streams),
        ("folded", folded),
        ("fold_update", short_crc::fold_update),
        ("short", short_crc::update),
    ];

    #[test]
    fn matches_ceph_and_standard_vectors() {
        let h = mauth_header_49();
        let front = mauth_front_60();
        assert_eq!((h.len(), front.len()), (49, 60));
        for (name, crc) in KERNELS {
            assert_eq!(crc(0, &h), 0xe2ab4b69, "{name}");
            assert_eq!(crc(0, &front), 0x35a7635b, "{name}");
            assert_eq!(crc(0xffff_ffff, &h) ^ 0xffff_ffff, 0x7a593d07, "{name}");
            // The catalogue check value of CRC-32/ISCSI.
            assert_eq!(crc(0xffff_ffff, b"123456789") ^ 0xffff_ffff, 0xe306_9283, "{name}");
            assert_eq!(crc(0, &[]), 0, "{name}");
            assert_eq!(crc(0x1234_5678, &[]), 0x1234_5678, "{name}");
            // Chaining: the register carries over.
            let (a, b) = h.split_at(20);
            assert_eq!(crc(crc(0, a), b), 0xe2ab4b69, "{name}");
        }
        assert_eq!(crc32c::crc32c(&h), 0x7a593d07);
    }

    /// The long kernel is `crc-fast` exactly where that crate says it folds 512 bits at a
    /// time (the tier it was measured faster on).
    #[test]
    fn folding_is_chosen_where_crc_fast_has_its_512_bit_tier() {
        let tier = crc_fast::get_calculator_target(CrcAlgorithm::Crc32Iscsi);
        assert_eq!(
            long_kernel() == LongKernel::Folding,
            tier == "x86_64-avx512-vpclmulqdq",
            "crc-fast's tier here: {tier}"
        );
    }

    /// The chain is cached exactly where `short_crc` finds it, and what goes through the
    /// cache (first call and later ones) is the reference's crc.
    #[test]
    fn the_short_chain_is_cached_where_the_cpu_has_it() {
        let h = mauth_header_49();
        assert_eq!(short(0, &h), 0xe2ab4b69);
        assert_eq!(CHAIN.get().copied(), short_crc::Chain::detect());
        assert_eq!(short(0, &h), 0xe2ab4b69);
        assert_eq!(short_first(0, &h), 0xe2ab4b69);
    }

    /// Every length from 0 to 64 KiB, at a random alignment with a random seed, gives
    /// the `crc32c` crate's answer, from every kernel. Set `CRC_SEED` to replay a failure.
    #[test]
    fn kernels_agree_on_every_length_to_64k() {
        const MAX: usize = 64 << 10;
        let seed = std::env::var("CRC_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::thread_rng().next_u64());
        eprintln!("CRC_SEED={seed}");
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut buf = vec![0u8; MAX + 64];
        rng.fill_bytes(&mut buf);
        for len in 0..=MAX {
            let at = rng.gen_range(0..64);
            let data = &buf[at..at + len];
            let register: u32 = rng.gen();
            let want = reference(register, data);
            assert_eq!(folded(register, data), want, "len {len} at {at} seed {register:#x}");
            assert_eq!(short_crc::update(register, data), want, "len {len} at {at}");
            assert_eq!(short(register, data), want, "len {len} at {at}");
            assert_eq!(short_crc::fold_update(register, data), want, "len {len} at {at}");
            assert_eq!(ceph_crc32c(register, data), want, "len {len}");
        }
    }
}
