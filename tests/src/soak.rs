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

/// What [`stream_through_chaos`] saw: messages sent (each echoed), the client's
/// connects, and the server's connection that carried them.
pub struct Streamed {
    /// Messages sent, each echoed once and in order.
    pub sent: u64,
    /// `ms_handle_connect`s the client saw (the first open and every reconnect).
    pub connects: usize,
    /// The server's connection every message came on.
    pub served: Option<messenger::Connection>,
}

/// A numbered stream of `msg_type` messages (payloads [`payload`]`(tid, max_payload)`,
/// at most `window` unechoed) on `conn` for `run_for`, echoed by the server, through
/// `proxy`, which is armed once the first echo shows the session open and disarmed when
/// the stream is over, before the rest is waited for (a storm whose cuts come faster
/// than a handshake and its replay would otherwise keep the session down for good).
/// Checks every echo (`cli_rx`) and every message the server saw (`srv_rx`, with
/// [`check_server_stream`]) once, in order, byte for byte, and no reset either side.
#[allow(clippy::too_many_arguments)]
pub fn stream_through_chaos(
    proxy: &crate::chaos::ChaosProxy,
    conn: &messenger::Connection,
    cli_rx: &crossbeam_channel::Receiver<crate::loopback::Seen>,
    srv_rx: &crossbeam_channel::Receiver<crate::loopback::Seen>,
    msg_type: u16,
    run_for: Duration,
    window: u64,
    max_payload: usize,
) -> Streamed {
    use crate::loopback::{test_message, Seen, WAIT};
    use std::time::Instant;
    let started = Instant::now();
    let (last_tx, last_rx) = crossbeam_channel::bounded(1);
    std::thread::scope(|s| {
        let server_check = s.spawn(|| check_server_stream(srv_rx, &last_rx, max_payload));
        let (mut sent, mut echoed, mut connects, mut armed) = (0u64, 0u64, 0usize, false);
        loop {
            let streaming = started.elapsed() < run_for;
            while streaming && sent - echoed < window {
                sent += 1;
                let m = test_message(msg_type, sent, payload(sent, max_payload));
                conn.send_message(m).expect("a lossless connection accepts the message");
            }
            if !streaming && echoed == sent {
                break;
            }
            if !streaming && armed {
                proxy.disarm();
            }
            // While the stream runs, wait no later than its end: a storm may keep the
            // session down until the network heals.
            let stall = Instant::now() + WAIT;
            let until = if streaming { stall.min(started + run_for) } else { stall };
            match cli_rx.recv_deadline(until) {
                Ok(Seen::Message(c, m)) => {
                    assert_eq!(&c, conn, "echo on another connection");
                    assert_eq!(m.tid(), echoed + 1, "client: echo lost, duplicated or reordered");
                    assert!(m.data() == &payload(m.tid(), max_payload), "client: payload");
                    echoed += 1;
                    // The first session opens before the first cut: a reply lost in the
                    // very first handshake reads as a client restart (Ceph's rule), which
                    // the server would rightly report as a remote reset.
                    if !armed {
                        proxy.arm();
                        armed = true;
                    }
                }
                Ok(Seen::Connect(_)) => connects += 1,
                Ok(Seen::Reset(_)) => panic!("client: ms_handle_reset on a lossless session"),
                Ok(Seen::RemoteReset(_)) => panic!("client: ms_handle_remote_reset"),
                Ok(_) => {}
                Err(_) if until < stall => {}
                Err(e) => panic!(
                    "client: stalled with {sent} sent, {echoed} echoed: {e}; proxy {:?}",
                    proxy.stats()
                ),
            }
        }
        last_tx.send(sent).expect("server checker alive");
        let (got, served) = server_check.join().expect("server checker");
        assert_eq!(got, sent, "the server saw every message");
        Streamed { sent, connects, served }
    })
}
