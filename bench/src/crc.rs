//! `bench crc`: the crc32c kernels side by side — the `crc32c` crate (SSE4.2 `crc32`
//! instruction on three streams), `crc-fast` (carry-less multiply folding), `short_crc`
//! (one chain of `crc32`), `short_crc`'s 256-bit folding and `protocol`'s `ceph_crc32c`
//! (which picks by length and, for long inputs, by CPU: `protocol::wire::long_kernel`) —
//! at field, header, small, page and bulk sizes. Each call's seed is the last one's
//! result, so this is the latency of one crc, as a message's header crc is. Each trial
//! times a few milliseconds of calls on this thread's CPU clock, so time the scheduler
//! gives to other processes is not counted; the kernels alternate trial by trial and the
//! median trial is reported, so a noisy machine hurts all alike.

use std::hint::black_box;
use std::time::Duration;

use crc_fast::{CrcAlgorithm, Digest};
use protocol::wire::{ceph_crc32c, long_kernel, long_kernel_from};

/// Sizes measured: short fields, a message header's covered bytes, small messages (the
/// kernels' crossovers between 128 bytes and 4 KiB), pages, bulk.
#[rustfmt::skip]
const SIZES: [usize; 19] = [
    13, 21, 49, 64, 96, 128, 192, 256, 384, 512, 768, 1 << 10, 1536, 2 << 10, 3 << 10, 4 << 10,
    16 << 10, 64 << 10, 1 << 20,
];

/// Trials per kernel and size.
const TRIALS: usize = 15;

/// Bytes crc'd per trial (so a trial lasts about a millisecond even for the fastest).
const TRIAL_BYTES: usize = 32 << 20;

/// A kernel under test: Ceph's variant (register = seed, no final xor).
type Kernel = fn(u32, &[u8]) -> u32;

fn crc_fast(seed: u32, data: &[u8]) -> u32 {
    let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc32Iscsi, u64::from(seed));
    d.update(data);
    !(d.finalize() as u32)
}

const KERNELS: [(&str, Kernel); 5] = [
    ("crc32c crate", short_crc::three_streams),
    ("crc-fast", crc_fast),
    ("short_crc", short_crc::update),
    ("short_crc fold", short_crc::fold_update),
    ("ceph_crc32c", ceph_crc32c),
];

/// This thread's CPU time (also the crypto mode's clock).
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass; the clock id is valid.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Nanoseconds of CPU per call of `k` on `data`, over one trial.
fn trial(k: Kernel, data: &[u8]) -> f64 {
    let calls = (TRIAL_BYTES / data.len().max(1)).max(1);
    let t0 = thread_cpu();
    let mut acc = 0u32;
    for _ in 0..calls {
        acc ^= k(black_box(acc), black_box(data));
    }
    black_box(acc);
    (thread_cpu() - t0).as_nanos() as f64 / calls as f64
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Measures every kernel at every size and returns the table (markdown).
pub fn run() -> String {
    let mut out = String::from(
        "| bytes | crc32c crate ns | crc-fast ns | short_crc ns | short_crc fold ns | \
         ceph_crc32c ns | crc32c ÷ crc-fast | crc32c ÷ short_crc fold | crc-fast GB/s | \
         short_crc fold GB/s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for size in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        // The kernels agree, or the timing is moot.
        let want = short_crc::three_streams(0, &data);
        assert!(KERNELS.iter().all(|(_, k)| k(0, &data) == want), "kernels disagree at {size}");
        let mut ns = vec![Vec::with_capacity(TRIALS); KERNELS.len()];
        for _ in 0..TRIALS {
            for (i, (_, k)) in KERNELS.iter().enumerate() {
                ns[i].push(trial(*k, &data));
            }
        }
        let m: Vec<f64> = ns.into_iter().map(median).collect();
        out += &format!(
            "| {size} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} |\n",
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[0] / m[1],
            m[0] / m[3],
            size as f64 / m[1],
            size as f64 / m[3]
        );
    }
    let from = long_kernel_from();
    out + &format!(
        "\nmedian of {TRIALS} alternating trials, thread CPU time; ceph_crc32c's long inputs \
         ({from} bytes and more) go to {} here (crc-fast's tier: {})\n",
        long_kernel().name(),
        crc_fast::get_calculator_target(CrcAlgorithm::Crc32Iscsi)
    )
}
