//! `bench crypto`: the raw AES-128-GCM rate of the `aes-gcm` crate (what msgr2 secure
//! mode seals and opens every frame segment with) on this CPU, at page to bulk sizes,
//! sealing and opening in place as secure mode does. Like `bench crc`, each trial
//! times a few milliseconds of calls on this thread's CPU clock and the median trial is
//! reported, so time other processes take is not counted. One round trip of secure
//! mode at 1 MiB seals once and opens once per direction's payload: the open + seal
//! rate halved bounds the payload one CPU can move.

use std::hint::black_box;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit};

use crate::crc::{median, thread_cpu};

/// Sizes measured: a page, msgr2's usual segment sizes, the matrix's bulk message.
const SIZES: [usize; 4] = [4 << 10, 64 << 10, 256 << 10, 1 << 20];

/// Trials per operation and size.
const TRIALS: usize = 9;

/// Bytes processed per trial (a few milliseconds at AES-NI speeds).
const TRIAL_BYTES: usize = 16 << 20;

/// AES-128's key length in bytes.
const KEY_LEN: usize = 16;

/// GCM's nonce length in bytes.
const NONCE_LEN: usize = 12;

/// Seconds of CPU per byte of sealing (`seal`) or of opening what was sealed.
fn trial(cipher: &Aes128Gcm, data: &[u8], seal: bool) -> Result<f64, String> {
    let calls = (TRIAL_BYTES / data.len().max(1)).max(1);
    // One fixed nonce for every call: nothing secret is sealed here, and the work per
    // byte does not depend on the nonce.
    let nonce = [7u8; NONCE_LEN].into();
    let mut buf = data.to_vec();
    let sealed_tag = cipher
        .encrypt_inout_detached(&nonce, &[], buf.as_mut_slice().into())
        .map_err(|e| format!("aes-gcm seal: {e}"))?;
    let sealed = buf.clone();
    let t0 = thread_cpu();
    for _ in 0..calls {
        if seal {
            let tag = cipher
                .encrypt_inout_detached(&nonce, &[], black_box(buf.as_mut_slice()).into())
                .map_err(|e| format!("aes-gcm seal: {e}"))?;
            black_box(tag);
        } else {
            // Opening needs the sealed bytes back each time (the copy is charged: it
            // is a small share of the work, and the frame decoder copies too).
            buf.copy_from_slice(&sealed);
            cipher
                .decrypt_inout_detached(
                    &nonce,
                    &[],
                    black_box(buf.as_mut_slice()).into(),
                    &sealed_tag,
                )
                .map_err(|e| format!("aes-gcm open: {e}"))?;
        }
    }
    Ok((thread_cpu() - t0).as_secs_f64() / (calls * data.len()) as f64)
}

/// Measures sealing and opening at every size and returns the table (markdown).
pub fn run() -> Result<String, String> {
    let cipher = Aes128Gcm::new(&[0x42u8; KEY_LEN].into());
    let mut out = String::from(
        "| bytes | seal GB/s | open GB/s | seal+open per byte ns | bound GB/s one way |\n\
         |---|---|---|---|---|\n",
    );
    for size in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let (mut seal, mut open) = (Vec::with_capacity(TRIALS), Vec::with_capacity(TRIALS));
        for _ in 0..TRIALS {
            seal.push(trial(&cipher, &data, true)?);
            open.push(trial(&cipher, &data, false)?);
        }
        let (seal, open) = (median(seal), median(open));
        out += &format!(
            "| {size} | {:.2} | {:.2} | {:.3} | {:.2} |\n",
            1e-9 / seal,
            1e-9 / open,
            (seal + open) * 1e9,
            1e-9 / (seal + open)
        );
    }
    Ok(out
        + &format!(
            "\nmedian of {TRIALS} alternating trials, thread CPU time; the bound is one CPU \
             sealing and opening every payload byte once\n"
        ))
}
