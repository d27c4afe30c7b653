//! Replay after a reconnect with a message of a priority above PRIO_HIGHEST queued
//! during the outage, over msgr v1 and msgr2 on the in-memory [`Pair`] network.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::testing::Pair;
use protocol::{Message, Policy, ProtocolVersion};

fn msg(id: u32) -> Message {
    let mut m = Message::new(2, Bytes::copy_from_slice(&id.to_le_bytes()));
    m.set_priority(PRIO_DEFAULT);
    m
}

fn ids(received: &[Message]) -> Vec<u32> {
    received.iter().map(|m| u32::from_le_bytes(m.front()[..4].try_into().unwrap())).collect()
}

fn client_server(version: ProtocolVersion) -> Pair {
    Pair::new(Instant::now(), version, Policy::lossless_client(), Policy::stateful_server())
}

fn send_two(p: &mut Pair) {
    p.send(0, msg(0));
    p.send(0, msg(1));
}

/// A message of a priority above PRIO_HIGHEST (priorities are u16, as on the wire)
/// queued while the link is down and messages sit unacknowledged: after the reconnect
/// every message arrives exactly once, whatever the peer had received, for a cut at
/// every byte offset. (Replay looked for the requeued messages in the first lane only,
/// which such a message takes: the peer's in_seq then discarded nothing, the next
/// message took a seq the peer dropped as a duplicate, and a requeued one was delivered
/// twice.)
fn replay_with_a_priority_above_highest(version: ProtocolVersion) {
    let mut reference = client_server(version);
    send_two(&mut reference);
    reference.drive();
    let total = reference.delivered;
    let mut both_unacked = 0;
    for off in 0..=total {
        let mut p = client_server(version);
        p.cut_after = Some(off);
        send_two(&mut p);
        // Up to the cut and one step more (the events of the bytes before it), not on
        // into the reconnect.
        while p.cut_after.is_some() && p.step() {}
        p.step();
        let a = p.session_ep(0).unwrap();
        if ids(&p.nodes[1].received) == [0, 1] && p.eps[a].conn.pending_messages() == 2 {
            both_unacked += 1;
        }
        let mut urgent = msg(2);
        urgent.set_priority(1000);
        p.send(0, urgent);
        p.send(0, msg(3));
        p.run_for(Duration::from_secs(60));
        let mut got = ids(&p.nodes[1].received);
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3], "cut at {off}: {:?}", ids(&p.nodes[1].received));
        let open = p.eps.iter().filter(|e| e.alive && e.conn.is_open()).count();
        assert_eq!(open, 2, "cut at {off}: one session per side");
    }
    assert!(both_unacked > 0, "no cut left both delivered and unacknowledged");
}

#[test]
fn replay_with_a_priority_above_highest_loses_and_repeats_nothing_over_msgr1() {
    replay_with_a_priority_above_highest(ProtocolVersion::V1);
}

#[test]
fn replay_with_a_priority_above_highest_loses_and_repeats_nothing_over_msgr2() {
    replay_with_a_priority_above_highest(ProtocolVersion::V2);
}
