//! CRC-32C (Castagnoli) of short inputs: a message header's 49 bytes, a small payload.
//!
//! The `crc32c` crate is built for throughput: it aligns its input byte by byte and
//! splits it into three interleaved streams, which a 49-byte header pays for without
//! gaining from. Here the input is taken eight bytes at a time, unaligned, in one
//! dependent chain of the SSE4.2 `crc32` instruction, then four, then one: seven
//! instructions for a header. Longer inputs are faster on the `crc32c` crate's three
//! streams or on carry-less-multiply folding, so callers pick by length (the protocol
//! crate does, measured).
//!
//! This is the workspace's one `unsafe` crc code, kept out of the protocol crate so that
//! one stays `forbid(unsafe_code)`. Where the instruction is missing (another
//! architecture, an x86-64 CPU without SSE4.2), [`update`] is the `crc32c` crate's.

/// Feeds `data` to a CRC-32C register and returns the register: no inversion on the way
/// in or out. Ceph's `ceph_crc32c(seed, data)` is exactly this; the standard CRC-32C of
/// `data` is `!update(!0, data)`.
#[inline]
pub fn update(register: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE4.2, the only feature `x86::update` is compiled for.
            return unsafe { x86::update(register, data) };
        }
    }
    portable(register, data)
}

/// The `crc32c` crate, with its inversions undone (it takes and returns the standard
/// CRC's inverted register).
fn portable(register: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!register, data)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};

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
            assert_eq!(update(reg, data), portable(reg, data), "length {len} offset {off}");
        }
        // Chaining: the register carries over at any split.
        let data = &buf[..300];
        for split in 0..=data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(update(update(7, a), b), update(7, data), "split {split}");
        }
    }
}
