//! Ceph's SyntheticStressTest / SyntheticInjectTest family (test_msgr.cc) on asyncmsgr:
//! `tests::synthetic` runs several server and client messengers on one shared pool
//! through a seeded random mix of connects, `mark_down`s, sends from 32 B to 1 MiB,
//! high-priority noise, pauses and socket cuts, and checks every echo against the head
//! of its connection's sent list.
//!
//! Each scenario runs over msgr v1 and, dialling the servers' `v2:` addresses, over
//! msgr2 (every session checked to speak it). A v1 CI run sends at least 10,000 checked
//! messages, a msgr2 one 4,000 (the same scenarios; CI time stays in check);
//! `ASYNCMSGR_SOAK_SECS=N` runs each variant, both protocols, for N seconds instead.
//! `MSGR_SEED` replays a run.

use std::time::Duration;

use messenger::{Policy, ProtocolVersion};
use tests::chaos::ChaosConfig;
use tests::soak;
use tests::synthetic::{self, assert_lossless, Options, Report};

use ProtocolVersion::{V1, V2};

/// Checked messages a CI run sends at least, per protocol.
fn ci_messages(proto: ProtocolVersion) -> u64 {
    match proto {
        V1 => 10_000,
        V2 => 4_000,
    }
}

/// Runs `opts` over `proto` at its CI size.
fn run(mut opts: Options, proto: ProtocolVersion) -> Report {
    opts.proto = proto;
    opts.messages = ci_messages(proto);
    synthetic::run_and_check(opts, ci_messages(proto))
}

/// The seed of the variant `test` over `proto` (printed with the variant's name).
fn seed(test: &str, proto: ProtocolVersion) -> u64 {
    match proto {
        V1 => soak::seed(test),
        V2 => soak::seed(&format!("{test}_over_msgr2")),
    }
}

/// SyntheticInjectTest: stateful servers, lossless clients, 1 operation in 30 cuts a
/// socket (either side). Nothing lost, duplicated or reordered; no session is ever reset
/// from the client's point of view (only the clients' own `mark_down` ends sessions, and
/// the server sees those as a peer restart).
fn stateful_server_lossless_client(proto: ProtocolVersion) {
    let seed = seed("stateful_server_lossless_client_with_socket_cuts", proto);
    let opts = Options::new(
        "stateful_server/lossless_client",
        seed,
        Policy::stateful_server(),
        Policy::lossless_client(),
    );
    let r = run(opts, proto);
    assert_lossless(&r);
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
    assert_eq!(r.discarded_by_remote_reset, 0);
}

#[test]
fn stateful_server_lossless_client_with_socket_cuts() {
    stateful_server_lossless_client(V1);
}

#[test]
fn stateful_server_lossless_client_with_socket_cuts_over_msgr2() {
    stateful_server_lossless_client(V2);
}

/// SyntheticInjectTest2: lossless_peer_reuse on both sides (both may reconnect, so
/// connection races happen), 1 operation in 30 cuts a socket, and a dropped connection is
/// marked down at both ends. Loss only where a remote reset says so.
fn lossless_peer_reuse_both_ends(proto: ProtocolVersion) {
    let seed = seed("lossless_peer_reuse_both_ends_with_socket_cuts", proto);
    let opts = Options::new(
        "lossless_peer_reuse",
        seed,
        Policy::lossless_peer_reuse(),
        Policy::lossless_peer_reuse(),
    );
    assert!(opts.mark_down_both_ends);
    let r = run(opts, proto);
    assert_lossless(&r);
}

#[test]
fn lossless_peer_reuse_both_ends_with_socket_cuts() {
    lossless_peer_reuse_both_ends(V1);
}

#[test]
fn lossless_peer_reuse_both_ends_with_socket_cuts_over_msgr2() {
    lossless_peer_reuse_both_ends(V2);
}

/// SyntheticInjectTest3: stateless servers, lossy clients, 1 operation in 600 cuts a
/// socket. A cut resets the connection and may lose what it had pending; nothing is ever
/// duplicated or reordered, and nothing arrives on a connection that was not sent on it.
fn stateless_server_lossy_client(proto: ProtocolVersion) {
    let seed = seed("stateless_server_lossy_client_with_rare_socket_cuts", proto);
    let mut opts = Options::new(
        "stateless_server/lossy_client",
        seed,
        Policy::stateless_server(),
        Policy::lossy_client(),
    );
    opts.cut_one_in = 600;
    assert!(opts.lossy && !opts.mark_down_both_ends);
    let r = run(opts, proto);
    assert_eq!(r.client_remote_resets, 0, "lossy sessions never resume");
    // A client that connects again while the server still holds its old session resets
    // that session: over msgr v1 the server hears ms_handle_remote_reset for it, then
    // its ms_handle_reset (Ceph's ProtocolV1: session_reset, then replace); over msgr2
    // only the reset.
    match proto {
        V1 => assert!(r.server_remote_resets <= r.server_resets, "each with its reset"),
        V2 => assert_eq!(r.server_remote_resets, 0, "msgr2 reports only the reset"),
    }
}

#[test]
fn stateless_server_lossy_client_with_rare_socket_cuts() {
    stateless_server_lossy_client(V1);
}

#[test]
fn stateless_server_lossy_client_with_rare_socket_cuts_over_msgr2() {
    stateless_server_lossy_client(V2);
}

/// The stateful/lossless workload with a chaos proxy in front of every server, cutting
/// both sides with RSTs and FINs every 50–400 ms, on top of the injected cuts.
fn stateful_server_lossless_client_through_chaos(proto: ProtocolVersion) {
    let seed = seed("stateful_server_lossless_client_through_chaos_proxies", proto);
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
    let r = run(opts, proto);
    assert_lossless(&r);
    assert!(r.proxy_cuts > 0, "the proxies never cut");
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
}

#[test]
fn stateful_server_lossless_client_through_chaos_proxies() {
    stateful_server_lossless_client_through_chaos(V1);
}

/// [`stateful_server_lossless_client_through_chaos_proxies`] over msgr2 (crc mode): the
/// proxies rewrite the ident frames that name the servers.
#[test]
fn stateful_server_lossless_client_through_chaos_proxies_over_msgr2() {
    stateful_server_lossless_client_through_chaos(V2);
}
