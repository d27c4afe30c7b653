//! The workspace's own CRC-32C (Castagnoli) kernels: [`update`] for short inputs (a
//! message header's 49 bytes, a small payload) and [`fold_update`] for long ones on CPUs
//! with 256-bit carry-less multiplication (AVX2 and VPCLMULQDQ).
//!
//! The `crc32c` crate is built for throughput: it aligns its input byte by byte and
//! splits it into three interleaved streams, which a 49-byte header pays for without
//! gaining from. [`update`] takes the input eight bytes at a time, unaligned, in one
//! dependent chain of the SSE4.2 `crc32` instruction, then four, then one: seven
//! instructions for a header. Long inputs are faster on the `crc32c` crate's three
//! streams or on carry-less-multiply folding, so callers pick by length and CPU (the
//! protocol crate does, measured).
//!
//! [`fold_update`] folds 128 bytes per step in four 256-bit accumulators (eight 128-bit
//! lanes, each multiplied forward by x^1024 mod P with `vpclmulqdq`), folds the lanes
//! into one, and finishes it and the tail with the `crc32` instruction. From 4 KiB it
//! runs three chains of `crc32` beside the fold, each on its own stretch of the input:
//! the fold's multiplies and the `crc32`s go to different execution units, so together
//! they outrun either alone (at 1 MiB on an AMD EPYC, Zen 3: 36 GB/s, against 25 for each
//! alone). The four stretches' registers are joined by moving each over the stretches
//! after it, one carry-less multiply each, and adding them. The constants are powers of x
//! modulo the CRC-32C polynomial, computed at compile time.
//!
//! This is the workspace's one `unsafe` crc code, kept out of the protocol crate so that
//! one stays `forbid(unsafe_code)`. Where an instruction is missing (another
//! architecture, an older x86-64 CPU), both functions are the `crc32c` crate's.

/// Feeds `data` to a CRC-32C register and returns the register: no inversion on the way
/// in or out. Ceph's `ceph_crc32c(seed, data)` is exactly this; the standard CRC-32C of
/// `data` is `!update(!0, data)`.
///
/// It checks the CPU on every call (about six instructions where it is inlined); a
/// caller that makes many calls can check once and keep a [`Chain`].
#[inline]
pub fn update(register: u32, data: &[u8]) -> u32 {
    match Chain::detect() {
        Some(chain) => chain.update(register, data),
        None => three_streams(register, data),
    }
}

/// Proof that this CPU runs [`update`]'s one chain of the `crc32` instruction (x86-64
/// with SSE4.2). Only [`Chain::detect`] makes one, so [`Chain::update`] needs no check
/// of its own: a caller that keeps the proof (the protocol crate caches it once per
/// process) pays the CPU check once instead of on every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain(());

impl Chain {
    /// The proof, where this CPU has the instruction; `None` elsewhere (then
    /// [`three_streams`] is the kernel).
    #[inline]
    pub fn detect() -> Option<Chain> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("sse4.2") {
                return Some(Chain(()));
            }
        }
        None
    }

    /// [`update`] without its CPU check: the same register in and out.
    #[inline]
    pub fn update(self, register: u32, data: &[u8]) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` exists, so `detect` found SSE4.2 on this CPU: the only
            // feature `x86::update` is compiled for.
            unsafe { x86::update(register, data) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // Never reached: `detect` makes no `Chain` off x86-64.
            three_streams(register, data)
        }
    }
}

/// Whether [`fold_update`] runs its 256-bit folding here (x86-64 with AVX2, PCLMULQDQ,
/// VPCLMULQDQ and SSE4.2); where it does not, it is the `crc32c` crate.
pub fn can_fold() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Inputs at least this long go to the fold with three `crc32` streams beside it; below,
/// joining the four stretches costs more than the streams save (on an AMD EPYC, Zen 3:
/// 91 against 67 ns at 1.5 KiB, 162 against 177 ns at 4 KiB, 27 against 41 µs at 1 MiB).
const HYBRID_MIN: usize = 4 << 10;

/// [`update`] for long inputs: the same register in and out, computed by folding 256
/// bits at a time where [`can_fold`] (inputs under 128 bytes go to [`update`]), from 4
/// KiB with three chains of `crc32` running beside the fold.
#[inline]
pub fn fold_update(register: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if can_fold() {
            // SAFETY: the CPU has every feature `x86::fold` and `x86::hybrid` are
            // compiled for.
            return unsafe {
                if data.len() >= HYBRID_MIN {
                    x86::hybrid(register, data)
                } else {
                    x86::fold(register, data)
                }
            };
        }
    }
    three_streams(register, data)
}

/// The `crc32c` crate (the `crc32` instruction on three interleaved streams, software
/// where the instruction is missing) with its inversions undone, so the same register
/// goes in and comes out as with [`update`]: the reference the other kernels are checked
/// against, and the kernel where they have no instructions.
pub fn three_streams(register: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!register, data)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256i, _mm256_castsi256_si128, _mm256_clmulepi64_epi128, _mm256_extracti128_si256,
        _mm256_loadu_si256, _mm256_set_epi32, _mm256_set_epi64x, _mm256_xor_si256,
        _mm_clmulepi64_si128, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8, _mm_cvtsi128_si64,
        _mm_cvtsi64_si128, _mm_extract_epi64, _mm_set_epi64x, _mm_xor_si128,
    };

    /// The CRC-32C polynomial with its x^32 term.
    const POLY: u64 = 0x1_1edc_6f41;

    /// a·b mod POLY, in the usual bit order (bit i is the coefficient of x^i).
    const fn mul_mod(a: u32, b: u32) -> u32 {
        let mut product: u64 = 0;
        let mut i = 0;
        while i < 32 {
            if b >> i & 1 == 1 {
                product ^= (a as u64) << i;
            }
            i += 1;
        }
        // Reduce from the top: each set bit at or above x^32 is cleared by POLY moved there.
        let mut bit = 63;
        while bit >= 32 {
            if product >> bit & 1 == 1 {
                product ^= POLY << (bit - 32);
            }
            bit -= 1;
        }
        product as u32
    }

    /// x^n mod POLY, in the usual bit order, by squaring: log2(n) steps.
    const fn x_pow_mod(n: u128) -> u32 {
        let mut result = 1;
        let mut square = 2; // x
        let mut n = n;
        while n > 0 {
            if n & 1 == 1 {
                result = mul_mod(result, square);
            }
            square = mul_mod(square, square);
            n >>= 1;
        }
        result
    }

    /// The constant that multiplies a 64-bit half by x^n mod POLY under `clmul` in the
    /// reflected bit order: x^(n-1) mod POLY (a reflected carry-less product comes out
    /// multiplied by x once more), reflected, in the upper half of the 64-bit operand.
    const fn fold_constant(n: u32) -> u64 {
        (x_pow_mod(n as u128 - 1).reverse_bits() as u64) << 32
    }

    /// Moves a 128-bit lane 1024 bits on (the next 128-byte block): its high-degree half
    /// by x^(1024+64), its low-degree half by x^1024.
    const BY_1024: (u64, u64) = (fold_constant(1024 + 64), fold_constant(1024));
    /// Moves a 128-bit lane onto the next one, 128 bits on.
    const BY_128: (u64, u64) = (fold_constant(128 + 64), fold_constant(128));
    /// Moves a 128-bit lane two lanes on.
    const BY_256: (u64, u64) = (fold_constant(256 + 64), fold_constant(256));
    /// Moves a 128-bit lane four lanes on.
    const BY_512: (u64, u64) = (fold_constant(512 + 64), fold_constant(512));

    /// A pair of lane constants in both lanes of a 256-bit register, as [`fold_256`]
    /// takes them.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn both_lanes((high, low): (u64, u64)) -> __m256i {
        _mm256_set_epi64x(low as i64, high as i64, low as i64, high as i64)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(bytes: &[u8; 32]) -> __m256i {
        // SAFETY: reads the 32 bytes of `bytes`; the load needs no alignment.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    }

    /// One lane (or two, in a 256-bit register) multiplied forward by the constants in
    /// `k` (low-degree-half constant in the upper 64 bits of each 128), plus `next`.
    #[inline]
    #[target_feature(enable = "avx2,pclmulqdq,vpclmulqdq")]
    fn fold_256(x: __m256i, k: __m256i, next: __m256i) -> __m256i {
        let high = _mm256_clmulepi64_epi128(x, k, 0x00);
        let low = _mm256_clmulepi64_epi128(x, k, 0x11);
        _mm256_xor_si256(_mm256_xor_si256(high, low), next)
    }

    /// The fold's four 256-bit accumulators after the first 128-byte block, the register
    /// entered as the first four bytes' xor (a reflected CRC's seed).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn start(register: u32, [a, b, c, d]: &[[u8; 32]; 4]) -> [__m256i; 4] {
        let seed = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, register as i32);
        [_mm256_xor_si256(load(a), seed), load(b), load(c), load(d)]
    }

    /// The accumulators moved on by one 128-byte block, `[a, b, c, d]` added.
    #[target_feature(enable = "avx2,pclmulqdq,vpclmulqdq")]
    #[inline]
    fn step(x: [__m256i; 4], [a, b, c, d]: &[[u8; 32]; 4]) -> [__m256i; 4] {
        let k = both_lanes(BY_1024);
        [
            fold_256(x[0], k, load(a)),
            fold_256(x[1], k, load(b)),
            fold_256(x[2], k, load(c)),
            fold_256(x[3], k, load(d)),
        ]
    }

    /// The register after everything the accumulators hold.
    #[inline]
    #[target_feature(enable = "avx2,pclmulqdq,vpclmulqdq,sse4.2")]
    fn finish(x: [__m256i; 4]) -> u32 {
        // The accumulators in the order of their bytes, folded as a tree (three steps
        // deep instead of seven): each of the first two onto the one after it (two lanes
        // on), the first pair's result onto the second's (four lanes on), then the lower
        // lane of what is left onto the upper one.
        let k256 = both_lanes(BY_256);
        let pair0 = fold_256(x[0], k256, x[1]);
        let pair1 = fold_256(x[2], k256, x[3]);
        let last = fold_256(pair0, both_lanes(BY_512), pair1);
        let k = _mm_set_epi64x(BY_128.1 as i64, BY_128.0 as i64);
        let low = _mm256_castsi256_si128(last);
        let acc = _mm_xor_si128(
            _mm_xor_si128(_mm_clmulepi64_si128(low, k, 0x00), _mm_clmulepi64_si128(low, k, 0x11)),
            _mm256_extracti128_si256(last, 1),
        );
        // `acc` is congruent to everything folded, as 16 bytes of input in its place: its
        // crc from a zero register, then the rest's, is the whole input's.
        let crc = _mm_crc32_u64(0, _mm_cvtsi128_si64(acc) as u64);
        _mm_crc32_u64(crc, _mm_extract_epi64(acc, 1) as u64) as u32
    }

    #[target_feature(enable = "avx2,pclmulqdq,vpclmulqdq,sse4.2")]
    pub(super) fn fold(register: u32, data: &[u8]) -> u32 {
        let blocks = blocks(data);
        let Some((first, rest)) = blocks.split_first() else {
            return update(register, data);
        };
        let mut x = start(register, first);
        for block in rest {
            x = step(x, block);
        }
        update(finish(x), data.get(blocks.len() * 128..).unwrap_or_default())
    }

    /// The whole 128-byte blocks at the start of `data`, as four 32-byte loads each.
    fn blocks(data: &[u8]) -> &[[[u8; 32]; 4]] {
        data.as_chunks::<32>().0.as_chunks::<4>().0
    }

    /// One step of a `crc32` stream of [`hybrid`], as words.
    type Words = [[u8; 8]; STREAM_STEP];

    /// The whole steps of a `crc32` stream at the start of `data`.
    fn words(data: &[u8]) -> &[Words] {
        data.as_chunks::<8>().0.as_chunks::<STREAM_STEP>().0
    }

    /// x^(8·2^i − 33) mod POLY, reflected: the constant with which [`mul_reflected`] moves
    /// a register 2^i bytes on (for i ≥ 3; below, the power would be negative).
    const SHIFT_BY_POW2: [u32; 64] = {
        let mut t = [0; 64];
        let mut i = 3;
        while i < 64 {
            t[i] = x_pow_mod(8 * (1u128 << i) - 33).reverse_bits();
            i += 1;
        }
        t
    };

    /// A·B·x^33 mod POLY for reflected registers `a` and `b`: their carry-less product
    /// (under 64 bits, and a reflected product comes out times x) reduced by `crc32` of
    /// it as eight bytes (times x^32). With `b` the constant for n bytes, x^(8n − 33), it
    /// moves `a` n bytes on; two such constants multiply into the one for their sum.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    pub(super) fn mul_reflected(a: u32, b: u32) -> u32 {
        let product = _mm_clmulepi64_si128(
            _mm_cvtsi64_si128(i64::from(a)),
            _mm_cvtsi64_si128(i64::from(b)),
            0x00,
        );
        _mm_crc32_u64(0, _mm_cvtsi128_si64(product) as u64) as u32
    }

    /// The [`mul_reflected`] constant that moves a register `bytes` on, a multiple of 8.
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    pub(super) fn shift_constant(bytes: usize) -> Option<u32> {
        let mut k: Option<u32> = None;
        for (i, &t) in SHIFT_BY_POW2.iter().enumerate().skip(3) {
            if bytes >> i & 1 == 1 {
                k = Some(match k {
                    None => t,
                    Some(k) => mul_reflected(k, t),
                });
            }
        }
        k
    }

    /// Eight-byte words each of [`hybrid`]'s three `crc32` streams takes per 128-byte step
    /// of its fold: 48 bytes ran fastest of 24 to 64 on an AMD EPYC (Zen 3), where the
    /// fold alone and the three streams alone each run at about 25 GB/s.
    const STREAM_STEP: usize = 6;

    /// The fold and three chains of `crc32` at once, on four consecutive stretches of
    /// `data`: the first folded 128 bytes a step, the other three `STREAM_STEP` words a
    /// step each; `vpclmulqdq` and `crc32` run on different execution units. The three
    /// streams' registers start at zero; each register is moved over the stretches after
    /// it ([`mul_reflected`]) and the four are added: the CRC is linear, so the register
    /// after `x` and `y` is the one after `x` moved over `y`'s length, xor `y`'s from zero.
    #[target_feature(enable = "avx2,pclmulqdq,vpclmulqdq,sse4.2")]
    pub(super) fn hybrid(register: u32, data: &[u8]) -> u32 {
        let steps = data.len() / (128 + 3 * 8 * STREAM_STEP);
        let stretch = steps * 8 * STREAM_STEP;
        let split = data.split_at_checked(steps * 128).and_then(|(a, rest)| {
            let (b, rest) = rest.split_at_checked(stretch)?;
            let (c, rest) = rest.split_at_checked(stretch)?;
            let (d, tail) = rest.split_at_checked(stretch)?;
            Some((a, b, c, d, tail))
        });
        let Some((a, b, c, d, tail)) = split else { return fold(register, data) };
        let (Some((first, a)), Some(k)) = (blocks(a).split_first(), shift_constant(stretch)) else {
            return fold(register, data);
        };
        let k2 = mul_reflected(k, k);
        let k3 = mul_reflected(k2, k);
        let mut streams = words(b).iter().zip(words(c)).zip(words(d));
        let mut x = start(register, first);
        let mut r = [0u64; 3];
        // The streams' first step goes with the fold's first, `start`.
        if let Some(words) = streams.next() {
            r = stream_step(r, words);
        }
        for (block, words) in a.iter().zip(streams) {
            x = step(x, block);
            r = stream_step(r, words);
        }
        // Each register moved over the stretches after it, side by side rather than one
        // after another (the constants' products, taken before the loop, move three and
        // two stretches on).
        let [rb, rc, rd] = r.map(|r| r as u32);
        let crc = mul_reflected(finish(x), k3) ^ mul_reflected(rb, k2) ^ mul_reflected(rc, k) ^ rd;
        update(crc, tail)
    }

    /// One step of [`hybrid`]'s three `crc32` streams: `STREAM_STEP` words into each
    /// register, the three chains interleaved.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn stream_step(
        [mut rb, mut rc, mut rd]: [u64; 3],
        ((wb, wc), wd): ((&Words, &Words), &Words),
    ) -> [u64; 3] {
        for j in 0..STREAM_STEP {
            rb = _mm_crc32_u64(rb, u64::from_le_bytes(wb[j]));
            rc = _mm_crc32_u64(rc, u64::from_le_bytes(wc[j]));
            rd = _mm_crc32_u64(rd, u64::from_le_bytes(wd[j]));
        }
        [rb, rc, rd]
    }

    /// One dependent chain of `crc32`: eight bytes a step, then four, then one.
    #[target_feature(enable = "sse4.2")]
    pub(super) fn update(register: u32, data: &[u8]) -> u32 {
        let (words, tail) = data.as_chunks::<8>();
        let mut crc = u64::from(register);
        for w in words {
            crc = _mm_crc32_u64(crc, u64::from_le_bytes(*w));
        }
        // The instruction leaves the upper half zero.
        let mut crc = crc as u32;
        let (quad, bytes) = tail.as_chunks::<4>();
        for q in quad {
            crc = _mm_crc32_u32(crc, u32::from_le_bytes(*q));
        }
        for &b in bytes {
            crc = _mm_crc32_u8(crc, b);
        }
        crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn catalogue_and_ceph_vectors() {
        // CRC-32/ISCSI's check value.
        assert_eq!(!update(!0, b"123456789"), 0xe306_9283);
        // Ceph's crc of the header of a real client's first MAuth (msgr-v1.md 5.3).
        let header: Vec<u8> = "01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 11 00 7f 00 01 00 \
                               3c 00 00 00 00 00 00 00 00 00 00 00 00 00 08 ff ff ff ff ff ff ff \
                               ff 01 00 00 00"
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap_or(0))
            .collect();
        assert_eq!(header.len(), 49);
        assert_eq!(update(0, &header), 0xe2ab_4b69);
        assert_eq!(update(0x1234_5678, &[]), 0x1234_5678);
    }

    /// Every length to 64 KiB and a few longer ones, at every alignment mod 32 in turn,
    /// from a random register, as the `crc32c` crate computes it.
    #[test]
    fn folding_matches_the_crc32c_crate_at_every_length() {
        if !can_fold() {
            eprintln!("no AVX2 + VPCLMULQDQ here: fold_update is the crc32c crate's");
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xf01d);
        let mut buf = vec![0u8; (1 << 20) + 64];
        rng.fill_bytes(&mut buf);
        let lengths = (0..=64 << 10).chain([(1 << 20) - 1, 1 << 20, (1 << 20) + 17]);
        for len in lengths {
            let off = len % 32;
            let data = &buf[off..off + len];
            let reg: u32 = rng.gen();
            assert_eq!(
                fold_update(reg, data),
                three_streams(reg, data),
                "length {len} offset {off}"
            );
        }
    }

    /// The fold with streams beside it at every length to 16 KiB (also below the length
    /// `fold_update` gives it, down to where it has no whole step) and a few longer.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn streams_beside_the_fold_match_the_crc32c_crate() {
        if !can_fold() {
            eprintln!("no AVX2 + VPCLMULQDQ here: nothing to check");
            return;
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xb1d);
        let mut buf = vec![0u8; (1 << 20) + 64];
        rng.fill_bytes(&mut buf);
        let lengths = (0..=16 << 10).chain([64 << 10, (1 << 20) - 1, 1 << 20, (1 << 20) + 17]);
        for len in lengths {
            let off = len % 32;
            let data = &buf[off..off + len];
            let reg: u32 = rng.gen();
            // SAFETY: `can_fold` said the CPU has every feature `hybrid` is compiled for.
            let got = unsafe { x86::hybrid(reg, data) };
            assert_eq!(got, three_streams(reg, data), "length {len} offset {off}");
        }
    }

    /// Moving a register n bytes on with the carry-less multiply is feeding it n zeros.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_register_moved_on_is_one_fed_zeros() {
        if !can_fold() {
            eprintln!("no AVX2 + VPCLMULQDQ here: nothing to check");
            return;
        }
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5_41f7);
        let zeros = vec![0u8; 1 << 20];
        let lengths = (8..=4096).step_by(8).chain([(1 << 20) - 8, 1 << 20]);
        for n in lengths {
            let reg: u32 = rng.gen();
            // SAFETY: `can_fold` said the CPU has PCLMULQDQ and SSE4.2.
            let moved = unsafe { x86::shift_constant(n).map(|k| x86::mul_reflected(reg, k)) };
            assert_eq!(moved, Some(three_streams(reg, &zeros[..n])), "{n} bytes");
        }
    }

    /// A [`Chain`] is made exactly where the CPU has SSE4.2, and computes what the
    /// `crc32c` crate does at every length to 4 KiB.
    #[test]
    fn a_chain_is_detected_where_the_cpu_has_the_instruction_and_matches() {
        #[cfg(target_arch = "x86_64")]
        let has = std::arch::is_x86_feature_detected!("sse4.2");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        assert_eq!(Chain::detect().is_some(), has);
        let Some(chain) = Chain::detect() else {
            eprintln!("no SSE4.2 here: nothing more to check");
            return;
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xc4a1);
        let mut buf = vec![0u8; 4096 + 8];
        rng.fill_bytes(&mut buf);
        for len in 0..=4096 {
            let off = len % 8;
            let data = &buf[off..off + len];
            let reg: u32 = rng.gen();
            assert_eq!(chain.update(reg, data), three_streams(reg, data), "length {len}");
        }
        assert_eq!(chain.update(0, b"123456789"), update(0, b"123456789"));
    }

    #[test]
    fn matches_the_crc32c_crate_at_every_length_and_offset() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
        let mut buf = vec![0u8; 4096 + 8];
        rng.fill_bytes(&mut buf);
        // Every length to 4 KiB, its start cycling through the eight alignments, from a
        // random register.
        for len in 0..=4096 {
            let off = len % 8;
            let data = &buf[off..off + len];
            let reg: u32 = rng.gen();
            assert_eq!(update(reg, data), three_streams(reg, data), "length {len} offset {off}");
        }
        // Chaining: the register carries over at any split.
        let data = &buf[..300];
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(update(update(7, a), b), update(7, data), "split {split}");
        }
    }
}
