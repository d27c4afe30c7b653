//! The Synthetic workload (`tests::synthetic`, Ceph's test_msgr.cc SyntheticWorkload)
//! under the two injected faults that are not socket cuts, each on top of
//! `ms_inject_socket_failures` (1 socket operation in 30 fails):
//!
//! * delayed delivery (Ceph's SyntheticInjectTest4: `ms_inject_delay_{type,max,
//!   probability}` and `ms_inject_internal_delays`): messages from one chosen peer type
//!   are held back on receipt, and accept decisions and replace hand-offs wait;
//! * network congestion (Ceph PR 44289's `ms_inject_network_congestion`) with
//!   multi-MiB messages and a small send bound on the clients: the bound holds after
//!   every send, a send beyond it is refused with `QueueFull`, and everything accepted
//!   is echoed once, in order.
//!
//! Each CI run sends at least 10,000 checked messages (the delayed-delivery variants over
//! msgr2, dialling the servers' `v2:` addresses, 4,000); `ASYNCMSGR_SOAK_SECS=N` runs
//! each variant for N seconds instead. `MSGR_SEED` replays a run.

use std::time::Duration;

use messenger::{Policy, ProtocolVersion};
use protocol::types::EntityType;
use tests::soak;
use tests::synthetic::{self, assert_lossless, Options};

/// Checked messages a CI run sends at least.
const CI_MESSAGES: u64 = 10_000;
/// Checked messages a CI run over msgr2 sends at least (the same scenarios, CI time
/// kept in check).
const CI_MESSAGES_V2: u64 = 4_000;

/// The longest a received message from a client is held back.
const DELAY_MAX: Duration = Duration::from_millis(40);

/// SyntheticInjectTest4, scaled to CI: stateful servers and lossless clients, 1 in 20
/// messages received from peers of type `delayed` held back (by up to 40 ms; those
/// behind one wait behind it), every accept decision and replace hand-off held back by
/// 2 ms, 1 socket operation in 30 failing and 1 workload operation in 30 cutting a
/// socket. Nothing is lost, duplicated or reordered; only messages from the chosen peer
/// type were held, and the echoes of held ones arrive late. Over `proto`.
fn delayed_delivery(test: &str, delayed: EntityType, proto: ProtocolVersion) {
    let seed = soak::seed(test);
    let mut opts = Options::new(
        "stateful_server/lossless_client + delayed delivery",
        seed,
        Policy::stateful_server(),
        Policy::lossless_client(),
    );
    opts.config.inject_delay_type = vec![delayed];
    opts.config.inject_delay_max = DELAY_MAX;
    opts.config.inject_delay_probability = 0.05;
    opts.config.inject_internal_delays = Duration::from_millis(2);
    opts.proto = proto;
    if proto == ProtocolVersion::V2 {
        opts.messages = CI_MESSAGES_V2;
    }
    let min_messages = opts.messages;
    let r = synthetic::run_and_check(opts, min_messages);
    assert_lossless(&r);
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
    // Clients hold back what OSDs (the servers) send them, and servers what clients send.
    let (on_servers, on_clients) = r.delayed_messages;
    let (held, not_held) = if delayed == EntityType::OSD {
        (on_clients, on_servers)
    } else {
        (on_servers, on_clients)
    };
    assert!(held > 0, "no message from a peer of type {delayed:?} was held back");
    assert_eq!(not_held, 0, "messages from the other peer type were held back");
    assert!(r.internal_delays > 0, "no accept decision, reply or hand-off was held back");
    // A held message is delivered no earlier than its delay: with hundreds held by up
    // to 40 ms each, some echo took at least half of that (a lower bound, so a loaded
    // machine cannot make it fail).
    assert!(
        r.max_echo_latency >= DELAY_MAX / 2,
        "{held} messages held back, yet no echo took {:?} (longest {:?})",
        DELAY_MAX / 2,
        r.max_echo_latency
    );
}

/// [`delayed_delivery`] with the clients holding back the servers' echoes.
#[test]
fn delayed_delivery_of_echoes_keeps_order_and_loses_nothing() {
    delayed_delivery(
        "delayed_delivery_of_echoes_keeps_order_and_loses_nothing",
        EntityType::OSD,
        ProtocolVersion::V1,
    );
}

/// [`delayed_delivery_of_echoes_keeps_order_and_loses_nothing`] over msgr2.
#[test]
fn delayed_delivery_of_echoes_keeps_order_and_loses_nothing_over_msgr2() {
    delayed_delivery(
        "delayed_delivery_of_echoes_keeps_order_and_loses_nothing_over_msgr2",
        EntityType::OSD,
        ProtocolVersion::V2,
    );
}

/// [`delayed_delivery`] with the servers holding back the clients' messages (Ceph's
/// `ms_inject_delay_type = client`).
///
/// This is the variant that exercises a peer reset with messages held: a client marks
/// its connection down and dials the same server again, the server's session adopts
/// the new socket as a peer reset, and whatever the old incarnation received but no
/// dispatcher saw (held back, or queued) and whatever was sent for it meanwhile must be
/// dropped with it, as Ceph's `was_session_reset` does. Before the driver did that, the
/// echoes of held messages went out on the new session (the client saw "duplicate or
/// stray" in about half the runs with random seeds).
#[test]
fn delayed_delivery_of_client_messages_keeps_order_and_loses_nothing() {
    delayed_delivery(
        "delayed_delivery_of_client_messages_keeps_order_and_loses_nothing",
        EntityType::CLIENT,
        ProtocolVersion::V1,
    );
}

/// [`delayed_delivery_of_client_messages_keeps_order_and_loses_nothing`] over msgr2.
#[test]
fn delayed_delivery_of_client_messages_keeps_order_and_loses_nothing_over_msgr2() {
    delayed_delivery(
        "delayed_delivery_of_client_messages_keeps_order_and_loses_nothing_over_msgr2",
        EntityType::CLIENT,
        ProtocolVersion::V2,
    );
}

/// Congestion (3 writes in 4 refused as if the socket were full, both sides) with
/// 1 payload in 65 of 2–4 MiB, and a 6 MiB send bound per client connection (the
/// servers keep the default bound, so their echoes are never refused). After every send,
/// accepted or refused, the connection holds at most 6 MiB for sending; some sends were
/// refused with `QueueFull` (the bound was reached); a refused message is never echoed;
/// everything accepted is echoed once and in order, through 1 in 30 socket operations
/// failing and the workload's cuts.
#[test]
fn congestion_with_multi_mib_messages_keeps_the_send_bound_and_order() {
    let seed = soak::seed("congestion_with_multi_mib_messages_keeps_the_send_bound_and_order");
    let mut opts = Options::new(
        "stateful_server/lossless_client + congestion, multi-MiB",
        seed,
        Policy::stateful_server(),
        Policy::lossless_client(),
    );
    // The servers keep the default bound and no congestion: their echoes are never
    // refused, and the test's time goes to the clients' congested writes.
    // The checker compares every echo byte for byte; the data crc would only make a
    // debug build spend its time on the multi-MiB payloads.
    opts.config.crc_data = false;
    let mut server_config = opts.config.clone();
    server_config.inject_seed = seed.rotate_left(32);
    opts.server_config = Some(server_config);
    opts.config.inject_network_congestion = 4;
    opts.config.max_queued_bytes = 6 << 20;
    opts.config.max_total_queued_bytes = 48 << 20;
    opts.refusals_allowed = true;
    opts.large_payloads = 1;
    opts.large_payload_len = (2 << 20)..=(4 << 20);
    // Now and then large messages back to back on one connection, until one is refused.
    opts.burst_one_in = 1_000;
    // Fewer connections (still enough for the workload's mark_downs, which start at 10),
    // so that large messages pile up on each and reach the bound.
    opts.max_connections = 12;
    let bound = opts.config.max_queued_bytes;
    let r = synthetic::run_and_check(opts, CI_MESSAGES);
    assert_lossless(&r);
    assert_eq!(r.client_remote_resets, 0, "a lossless client's session was reset");
    assert!(r.max_queued_send_bytes <= bound, "the send bound was passed");
    assert!(r.refused_sends > 0, "no send was refused: the bound was never reached");
    let (congested, writes) = r.congested_writes;
    assert!(congested > writes / 2, "{congested} of {writes} writes congested, expected 3 in 4");
}
