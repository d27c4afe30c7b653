//! Replay after a reconnect with a message of a priority above PRIO_HIGHEST queued
//! during the outage, over msgr v1 and msgr2 on the in-memory [`Pair`] network.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::{Duration, Instant};

use protocol::message::PRIO_DEFAULT;
use protocol::testing::{numbered, numbers, Pair};
use protocol::{Message, Policy, ProtocolVersion};

fn client_server(version: ProtocolVersion) -> Pair {
    Pair::new(Instant::now(), version, Policy::lossless_client(), Policy::stateful_server())
}

fn msg_at(id: u32, priority: u16) -> Message {
    let mut m = numbered(id);
    m.set_priority(priority);
    m
}

/// Messages 0 and 1 at `first` priority are sent; the link is cut after `off` bytes;
/// while it is down 2 and 3 are queued at `later` priority; the session reconnects.
/// Returns what the server received, in order, and whether 0 and 1 were both delivered
/// and unacknowledged at the cut.
fn cut_and_queue(version: ProtocolVersion, off: u64, first: u16, later: u16) -> (Vec<u32>, bool) {
    let mut p = client_server(version);
    p.cut_after = Some(off);
    p.send(0, msg_at(0, first));
    p.send(0, msg_at(1, first));
    // Up to the cut and one step more (the events of the bytes before it), not on into
    // the reconnect.
    while p.cut_after.is_some() && p.step() {}
    p.step();
    let a = p.session_ep(0).unwrap();
    let both_unacked =
        numbers(&p.nodes[1].received) == [0, 1] && p.eps[a].conn.pending_messages() == 2;
    p.send(0, msg_at(2, later));
    p.send(0, msg_at(3, later));
    p.run_for(Duration::from_secs(60));
    let open = p.eps.iter().filter(|e| e.alive && e.conn.is_open()).count();
    assert_eq!(open, 2, "cut at {off}: one session per side");
    (numbers(&p.nodes[1].received), both_unacked)
}

/// The bytes of the whole exchange without a cut.
fn total_bytes(version: ProtocolVersion) -> u64 {
    let mut p = client_server(version);
    p.send(0, numbered(0));
    p.send(0, numbered(1));
    p.drive();
    p.delivered
}

/// A message of a priority above PRIO_HIGHEST (priorities are u16, as on the wire)
/// queued while the link is down and messages sit unacknowledged: after the reconnect
/// every message arrives exactly once, whatever the peer had received, for a cut at
/// every byte offset. (Replay looked for the requeued messages in the first lane only,
/// which such a message takes: the peer's in_seq then discarded nothing, the next
/// message took a seq the peer dropped as a duplicate, and a requeued one was delivered
/// twice.)
fn replay_with_a_priority_above_highest(version: ProtocolVersion) {
    let mut both_unacked = 0;
    for off in 0..=total_bytes(version) {
        let (got, unacked) = cut_and_queue(version, off, PRIO_DEFAULT, 1000);
        both_unacked += usize::from(unacked);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3], "cut at {off}: {got:?}");
    }
    assert!(both_unacked > 0, "no cut left both delivered and unacknowledged");
}

/// Every message at one priority above PRIO_HIGHEST: after any cut they arrive in the
/// order sent. (Requeued messages waited in the PRIO_HIGHEST lane, so the ones queued
/// during the outage, in their higher lane, went first.)
fn replay_keeps_order_within_a_priority_above_highest(version: ProtocolVersion) {
    for off in 0..=total_bytes(version) {
        let (got, _) = cut_and_queue(version, off, 300, 300);
        assert_eq!(got, [0, 1, 2, 3], "cut at {off}");
    }
}

#[test]
fn replay_with_a_priority_above_highest_loses_and_repeats_nothing_over_msgr1() {
    replay_with_a_priority_above_highest(ProtocolVersion::V1);
}

#[test]
fn replay_with_a_priority_above_highest_loses_and_repeats_nothing_over_msgr2() {
    replay_with_a_priority_above_highest(ProtocolVersion::V2);
}

#[test]
fn replay_keeps_order_within_a_priority_above_highest_over_msgr1() {
    replay_keeps_order_within_a_priority_above_highest(ProtocolVersion::V1);
}

#[test]
fn replay_keeps_order_within_a_priority_above_highest_over_msgr2() {
    replay_keeps_order_within_a_priority_above_highest(ProtocolVersion::V2);
}
