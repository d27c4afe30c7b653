//! Knobs shared by the randomised and soak tests: the seed and the soak duration, the
//! payloads of numbered streams and the server-side check of one.

use std::time::Duration;

/// The seed of a randomised test: `MSGR_SEED` if set, else a random one. Printed (on
/// stderr, shown for a failing test) so any run can be replayed.
pub fn seed(test: &str) -> u64 {
    use rand::Rng;
    let seed = std::env::var("MSGR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{test}: MSGR_SEED={seed}");
    seed
}

/// `ASYNCMSGR_SOAK_SECS=N`: run the soak variants of the stress tests for N seconds
/// instead of their bounded CI size.
pub fn soak_duration() -> Option<Duration> {
    std::env::var("ASYNCMSGR_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .map(Duration::from_secs)
}

/// Bytes of the shared pool payloads are cut from (random, fixed for the process).
const POOL_LEN: usize = 1 << 16;

fn pool() -> &'static bytes::Bytes {
    static POOL: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..POOL_LEN)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

/// The payload of message `tag`: 0 to `max_len` (at most 64 KiB) bytes cut from a shared
/// random pool, both derived from `tag`, so a checker rebuilds it from the message's id
/// instead of keeping a copy (and building it costs no allocation).
pub fn payload(tag: u64, max_len: usize) -> bytes::Bytes {
    let h = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    let len = (h as usize) % (max_len.min(POOL_LEN) + 1);
    let off = ((h >> 32) as usize) % (POOL_LEN - len + 1);
    pool().slice(off..off + len)
}

/// What the server of a numbered stream saw (the chaos tests'): the stream's messages
/// (tids from 1, payloads [`payload`]`(tid, max_payload)`), each once and in order, all
/// on one connection (one session carries every reconnect), and no reset of either
/// kind. `last` brings the number of messages sent once the stream is over; returns
/// how many arrived and the connection they came on.
pub fn check_server_stream(
    rx: &crossbeam_channel::Receiver<crate::loopback::Seen>,
    last: &crossbeam_channel::Receiver<u64>,
    max_payload: usize,
) -> (u64, Option<messenger::Connection>) {
    use crate::loopback::{Seen, WAIT};
    let mut expect = 1u64;
    let mut stop_at = None;
    let mut served: Option<messenger::Connection> = None;
    loop {
        if stop_at.is_some_and(|n| expect > n) {
            return (expect - 1, served);
        }
        let last = if stop_at.is_none() { last.clone() } else { crossbeam_channel::never() };
        crossbeam_channel::select! {
            recv(rx) -> seen => match seen {
                Ok(Seen::Message(c, m)) => {
                    assert_eq!(m.tid(), expect, "server: lost, duplicated or reordered");
                    assert!(m.data() == &payload(m.tid(), max_payload), "server: payload");
                    if let Some(s) = &served {
                        assert_eq!(*s, c, "server: one session carries every reconnect");
                    }
                    served = Some(c);
                    expect += 1;
                }
                Ok(Seen::Reset(_)) => panic!("server: ms_handle_reset on a lossless session"),
                Ok(Seen::RemoteReset(_)) => panic!("server: ms_handle_remote_reset"),
                Ok(_) => {}
                Err(e) => panic!("server: recorder gone: {e}"),
            },
            recv(last) -> n => stop_at = Some(n.expect("the stream's end")),
            default(WAIT) => panic!("server: stream stalled at {expect}"),
        }
    }
}
