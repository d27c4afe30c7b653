//! Ceph's SyntheticStressTest / SyntheticInjectTest family (test_msgr.cc) on asyncmsgr:
//! `tests::synthetic` runs several server and client messengers on one shared pool
//! through a seeded random mix of connects, `mark_down`s, sends from 32 B to 1 MiB,
//! high-priority noise, pauses and socket cuts, and checks every echo against the head
//! of its connection's sent list.
//!
//! Each CI run sends at least 10,000 checked messages; `ASYNCMSGR_SOAK_SECS=N` runs each
//! variant for N seconds instead. `MSGR_SEED` replays a run.

use std::time::Duration;

use messenger::Policy;
use tests::chaos::ChaosConfig;
use tests::soak;
use tests::synthetic::{self, assert_lossless, Options, Report};

/// Checked messages a CI run sends at least.
const CI_MESSAGES: u64 = 10_000;

fn run(opts: Options) -> Report {
    synthetic::run_and_check(opts, CI_MESSAGES)
}

/// SyntheticInjectTest: stateful servers, lossless clients, 1 operation in 30 cuts a
/// socket (either side). Nothing lost, duplicated or reordered; no session is ever reset
/// from the client's point of view (only the clients' own `mark_down` ends sessions, and
/// the server sees those as a peer restart).
#[test]
fn stateful_server_lossless_client_with_socket_cuts() {
    let seed = soak::seed("stateful_server_lossless_client_with_socket_cuts");
    let opts = Options::new(
        "stateful_server/lossless_client",
        seed,
        Policy::stateful_server(),
        Policy::lossless_client(),
    );
    let r = run(opts);
    assert_lossless(&r);
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
    assert_eq!(r.discarded_by_remote_reset, 0);
}

/// SyntheticInjectTest2: lossless_peer_reuse on both sides (both may reconnect, so
/// connection races happen), 1 operation in 30 cuts a socket, and a dropped connection is
/// marked down at both ends. Loss only where a remote reset says so.
#[test]
fn lossless_peer_reuse_both_ends_with_socket_cuts() {
    let seed = soak::seed("lossless_peer_reuse_both_ends_with_socket_cuts");
    let opts = Options::new(
        "lossless_peer_reuse",
        seed,
        Policy::lossless_peer_reuse(),
        Policy::lossless_peer_reuse(),
    );
    assert!(opts.mark_down_both_ends);
    let r = run(opts);
    assert_lossless(&r);
}

/// SyntheticInjectTest3: stateless servers, lossy clients, 1 operation in 600 cuts a
/// socket. A cut resets the connection and may lose what it had pending; nothing is ever
/// duplicated or reordered, and nothing arrives on a connection that was not sent on it.
#[test]
fn stateless_server_lossy_client_with_rare_socket_cuts() {
    let seed = soak::seed("stateless_server_lossy_client_with_rare_socket_cuts");
    let mut opts = Options::new(
        "stateless_server/lossy_client",
        seed,
        Policy::stateless_server(),
        Policy::lossy_client(),
    );
    opts.cut_one_in = 600;
    assert!(opts.lossy && !opts.mark_down_both_ends);
    let r = run(opts);
    assert_eq!(r.client_remote_resets + r.server_remote_resets, 0, "lossy sessions never resume");
}

/// The stateful/lossless workload with a chaos proxy in front of every server, cutting
/// both sides with RSTs and FINs every 50–400 ms, on top of the injected cuts.
#[test]
fn stateful_server_lossless_client_through_chaos_proxies() {
    let seed = soak::seed("stateful_server_lossless_client_through_chaos_proxies");
    let mut opts = Options::new(
        "stateful_server/lossless_client + chaos",
        seed,
        Policy::stateful_server(),
        Policy::lossless_client(),
    );
    opts.chaos = Some(ChaosConfig {
        min_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(400),
        ..ChaosConfig::new(seed)
    });
    let r = run(opts);
    assert_lossless(&r);
    assert!(r.proxy_cuts > 0, "the proxies never cut");
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
}
