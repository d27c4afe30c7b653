//! Ceph's crc32c: the one function every crc of msgr v1 goes through, on two kernels
//! picked by length. The `crc32c` crate (the design's choice) stays the reference;
//! short inputs go to `short_crc` (one chain of the `crc32` instruction, the workspace's
//! own small crate) and long ones to `crc-fast`, which folds. Each detects the CPU at run
//! time and falls back to portable code, and keeps its `unsafe` to itself, so this crate
//! stays `forbid(unsafe_code)`.

use crc_fast::{CrcAlgorithm, Digest};

/// Inputs at least this long go to the folding kernel (`crc-fast`), shorter ones to
/// `short_crc`. Measured on this project's machines (`bench crc`, thread CPU time per
/// call, each call's seed the last one's result): `short_crc` takes a 49-byte header in
/// 7.7 ns against the `crc32c` crate's 15.0 and `crc-fast`'s 17.3, 64 B in 7.2 against
/// 11.9 and 12.5; the three are level at 256 (27–30 ns); from 512 on folding is 2× faster
/// and more (4 KiB: 99 ns against 199 for the `crc32c` crate and 428 for one chain).
const FOLD_MIN: usize = 256;

/// `ceph_crc32c(seed, data)`: CRC-32C (Castagnoli) whose register starts at `seed` and is
/// returned without a final xor (msgr-v1.md 5.3). Every crc in msgr v1 uses seed 0.
///
/// Standard CRC-32C inverts the register on the way in and out; the kernels take the
/// register as it is, so no inversion is undone here except `crc-fast`'s final xor.
// Inlined: most calls are for an empty segment (returned at once) or a header, and the
// folding kernel's large frame, set up out of line, would be paid by every call.
#[inline]
pub fn ceph_crc32c(seed: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        // Most messages have an empty middle (and many an empty front or data): no
        // kernel call, whose setup costs more than the nothing it would compute.
        seed
    } else if data.len() >= FOLD_MIN {
        folded(seed, data)
    } else {
        short_crc::update(seed, data)
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

/// The `crc32c` crate (SSE4.2 `crc32` instruction on three streams, software fallback):
/// the reference the other kernels are checked against.
#[cfg(test)]
fn reference(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// `crc-fast`: carry-less multiplication folding (VPCLMULQDQ / PCLMULQDQ, chosen at run
/// time; a portable table fallback elsewhere). Its register for a reflected CRC is the
/// same value the `crc32c` crate's `!prev` is, so the seed goes in as is and `finalize`'s
/// xor is undone.
#[inline(never)]
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

    /// Every kernel, so each is checked whatever [`FOLD_MIN`] picks.
    const KERNELS: [(&str, Kernel); 4] = [
        ("ceph_crc32c", ceph_crc32c),
        ("reference", reference),
        ("folded", folded),
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
            assert_eq!(ceph_crc32c(register, data), want, "len {len}");
        }
    }
}
