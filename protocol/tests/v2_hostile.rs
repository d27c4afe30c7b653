//! One msgr2 connector against a scripted acceptor that sends valid frames at the wrong
//! time or with odd values: frames of the handshake once ready, frames of the open
//! session before it, SESSION_RECONNECT_OK with every msg_seq, and a randomised script;
//! no panic, no stall, and on a lossless session no queued message lost, duplicated or
//! renumbered out of order.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

extern crate asyncmsgr_protocol as protocol;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::v2_wire::*;
use protocol::auth::ConMode;
use protocol::testing::v2_addr;
use protocol::types::EntityType;
use protocol::v2::banner::{Banner, BANNER_LEN};
use protocol::v2::frames::*;
use protocol::v2::framing::Frame;
use protocol::v2::{Connection, Tag};
use protocol::{Event, Message, Policy};

/// (seq, ack_seq, first front byte) of the MESSAGE frames in `sent`.
fn msgs(sent: &[Frame]) -> Vec<(u64, u8)> {
    sent.iter()
        .filter(|f| f.tag() == Tag::MESSAGE)
        .map(|f| (MsgHeader2::decode(&f.segments[0]).unwrap().seq, f.segments[1][0]))
        .collect()
}

struct Client {
    c: Connection,
    now: Instant,
}

impl Client {
    fn open() -> Client {
        let (mut c, now) = connector(Policy::lossless_client());
        let mut b = acceptor_prefix(EntityType::MON);
        b.extend(frame(&server_ident(v2_addr(6789, 0))));
        c.handle_bytes(now, Bytes::from(b));
        assert!(c.is_open(), "{c}");
        let _ = output(&mut c);
        let _ = events(&mut c);
        Client { c, now }
    }

    fn send(&mut self, tag: u8) {
        self.c.send_message(Message::new(2, Bytes::from(vec![tag])));
    }

    fn sent(&mut self) -> Vec<Frame> {
        frames(&output(&mut self.c), 0)
    }

    fn feed(&mut self, b: Vec<u8>) -> Vec<Event> {
        self.c.handle_bytes(self.now, Bytes::from(b));
        let mut evs = Vec::new();
        for _ in 0..10 {
            for e in events(&mut self.c) {
                if let Event::NeedBudget { .. } = e {
                    self.c.grant_budget(self.now);
                }
                evs.push(e);
            }
        }
        evs
    }

    /// After a fault: lets the backoff run out, reconnects through the auth phase, and
    /// returns the ident frame it sends.
    fn redial(&mut self) -> Frame {
        self.now += Duration::from_secs(2);
        self.c.handle_timeout(self.now);
        let _ = events(&mut self.c);
        self.c.handle_transport_connected(self.now);
        let _ = output(&mut self.c);
        self.c.handle_bytes(self.now, Bytes::from(acceptor_prefix(EntityType::MON)));
        let sent = frames(&output(&mut self.c), 0);
        sent.last().cloned().unwrap()
    }
}

// SESSION_RECONNECT_OK's msg_seq, below, at, inside and beyond what we sent: exactly
// the messages the peer does not have are sent again, with their seqs, in order; a
// message queued after numbers on as Ceph's discard_requeued_up_to does.
#[test]
fn reconnect_ok_resends_exactly_the_unacked() {
    // (peer's msg_seq, resent (seq, tag), seq of the next new message)
    type Case = (u64, &'static [(u64, u8)], u64);
    let cases: [Case; 5] = [
        (0, &[(3, 3), (4, 4), (5, 5)], 6),
        (2, &[(3, 3), (4, 4), (5, 5)], 6),
        (4, &[(5, 5)], 6),
        (5, &[], 6),
        (9, &[], 6),
    ];
    for (msg_seq, resent, next) in cases {
        let mut cl = Client::open();
        for t in 1..=5 {
            cl.send(t);
        }
        let first = msgs(&cl.sent());
        assert_eq!(first, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        cl.feed(frame(&Ack { seq: 2 }));
        // A second SERVER_IDENT once ready: a protocol error.
        let evs = cl.feed(frame(&server_ident(v2_addr(6789, 0))));
        assert!(!cl.c.is_open(), "{evs:?}");
        let ident = cl.redial();
        assert_eq!(ident.tag(), Tag::SESSION_RECONNECT);
        cl.feed(frame(&SessionReconnectOk { msg_seq }));
        assert!(cl.c.is_open(), "{}", cl.c);
        assert_eq!(msgs(&cl.sent()), resent, "msg_seq {msg_seq}");
        cl.send(9);
        assert_eq!(msgs(&cl.sent()), [(next, 9)], "msg_seq {msg_seq}");
    }
}

// SESSION_RECONNECT_OK whose msg_seq is below what the peer had already acknowledged,
// with nothing of ours unacknowledged: the next messages must not be numbered at or
// below what the peer acknowledged. Numbered from the lower msg_seq (Ceph's
// discard_requeued_up_to with no requeued lane returns it), seqs 3.. reach a peer
// whose in_seq is 5: it drops them as duplicates (Pacific stops reading the connection
// on one, msgr-v2.md 6.2), and its next ACK of 5 trims them from our sent list as
// delivered, so they are lost on a lossless session with no reset told.
#[test]
fn reconnect_ok_below_what_was_acked_does_not_renumber_below_it() {
    let mut cl = Client::open();
    for t in 1..=5 {
        cl.send(t);
    }
    assert_eq!(msgs(&cl.sent()).len(), 5);
    cl.feed(frame(&Ack { seq: 5 }));
    assert_eq!(cl.c.pending_messages(), 0, "all acknowledged");
    cl.c.handle_transport_closed(cl.now);
    assert_eq!(cl.redial().tag(), Tag::SESSION_RECONNECT);
    // Queued before the answer: an already-queued message of the lossless session.
    cl.send(6);
    cl.feed(frame(&SessionReconnectOk { msg_seq: 2 }));
    assert!(cl.c.is_open(), "{}", cl.c);
    let sent = msgs(&cl.sent());
    assert_eq!(sent.len(), 1);
    assert!(sent[0].0 > 5, "framed as seq {} after the peer acknowledged 5", sent[0].0);
    // The peer (in_seq 5 at least) acknowledges what it has: the message must stay
    // pending until a seq that covers it is acknowledged.
    cl.feed(frame(&Ack { seq: 5 }));
    assert_eq!(cl.c.pending_messages(), 1, "a message the peer never took was trimmed");
}

// Frames that belong to the handshake, once ready: each faults the connection and the
// lossless session keeps every unacked message for the redial.
#[test]
fn handshake_frames_once_ready_fault_and_lose_nothing() {
    let bad: Vec<Vec<u8>> = vec![
        frame(&Hello { entity_type: EntityType::MON, peer_addr: v2_addr(40000, 0) }),
        frame(&AuthDone { global_id: 4100, con_mode: ConMode::CRC, payload: Bytes::new() }),
        frame(&AuthSignature::default()),
        frame(&server_ident(v2_addr(6789, 0))),
        frame(&SessionReconnectOk { msg_seq: 0 }),
        frame(&SessionRetry { connect_seq: 1 }),
        frame(&SessionRetryGlobal { global_seq: 100 }),
        frame(&SessionReset { full: true }),
        frame(&SessionReset { full: false }),
        frame(&Wait),
        frame(&IdentMissingFeatures { missing_features: 1 }),
        raw_frame(Tag(21), &[&Bytes::from_static(&[0u8; 8])]),
        raw_frame(Tag(22), &[&Bytes::from_static(&[0u8; 8])]),
        raw_frame(Tag(0), &[&Bytes::from_static(&[0u8; 8])]),
    ];
    for b in bad {
        let mut cl = Client::open();
        for t in 1..=3 {
            cl.send(t);
        }
        let _ = cl.sent();
        cl.feed(message_frame(1, 1));
        let evs = cl.feed(b.clone());
        assert!(!cl.c.is_open(), "tag {}: {evs:?}", b[0]);
        assert!(
            !evs.iter()
                .any(|e| matches!(e, Event::Reset | Event::RemoteReset | Event::Closed { .. })),
            "tag {}: {evs:?}",
            b[0]
        );
        let ident = cl.redial();
        assert_eq!(ident.tag(), Tag::SESSION_RECONNECT, "tag {}", b[0]);
        let r = SessionReconnect::from_segment(&ident.segments[0]).unwrap();
        assert_eq!(r.msg_seq, 1, "tag {}", b[0]);
        cl.feed(frame(&SessionReconnectOk { msg_seq: 1 }));
        assert!(cl.c.is_open(), "tag {}", b[0]);
        assert_eq!(msgs(&cl.sent()), [(2, 2), (3, 3)], "tag {}", b[0]);
    }
}

// MESSAGE, ACK, KEEPALIVE2 and KEEPALIVE2_ACK before the session is ready: each faults
// the attempt (Ceph: "not in ready state"), and a queued message survives.
#[test]
fn open_session_frames_before_ready_fault() {
    let early: Vec<Vec<u8>> = vec![
        message_frame(1, 0),
        frame(&Ack { seq: 1 }),
        frame(&Keepalive2 { stamp: protocol::wire::KeepaliveStamp { sec: 1, nsec: 2 } }),
        frame(&Keepalive2Ack { stamp: protocol::wire::KeepaliveStamp { sec: 1, nsec: 2 } }),
    ];
    // Insert after: banner+HELLO (AwaitAuthReply), after AUTH_DONE (AwaitAuthSignature),
    // after the signature (AwaitIdentReply).
    for at in 0..3 {
        for e in &early {
            let (mut c, now) = connector(Policy::lossless_client());
            c.send_message(Message::new(2, Bytes::from_static(&[7])));
            let mut b = Banner::OURS.to_bytes().to_vec();
            b.extend(frame(&Hello { entity_type: EntityType::MON, peer_addr: v2_addr(40000, 0) }));
            if at >= 1 {
                b.extend(frame(&AuthDone {
                    global_id: 4100,
                    con_mode: ConMode::CRC,
                    payload: Bytes::new(),
                }));
            }
            if at >= 2 {
                b.extend(frame(&AuthSignature::default()));
            }
            b.extend(e.clone());
            b.extend(frame(&server_ident(v2_addr(6789, 0))));
            c.handle_bytes(now, Bytes::from(b));
            assert!(!c.is_open(), "at {at} tag {}", e[0]);
            assert!(!c.is_closed(), "at {at} tag {}", e[0]);
            assert_eq!(c.pending_messages(), 1);
        }
    }
}

/// A tiny deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn odd_seq(r: &mut Rng, around: u64) -> u64 {
    match r.below(6) {
        0 => 0,
        1 => around,
        2 => around.saturating_sub(1),
        3 => around + 1,
        4 => around + r.below(4),
        _ => r.below(12),
    }
}

// A scripted acceptor sending valid frames, mostly in order and sometimes out of it,
// with odd (but honest: never above what it received) acks, to a lossless connector
// with messages queued: no panic, no stall (closed, reading, a timer, an event to
// answer, or standby), the messages we frame on one TCP connection numbered 1 apart,
// and every queued message delivered once, in order, or still pending, unless a reset
// was told.
#[test]
fn scripted_acceptor_never_stalls_loses_or_misnumbers() {
    // Mostly the peer's in_seq; sometimes less (a peer contradicting its own acks).
    let reconnect_seq =
        |r: &mut Rng, in_seq: u64| if r.below(3) == 0 { r.below(in_seq + 1) } else { in_seq };
    let mut opened = 0;
    let mut resumed = 0;
    for seed in 1..=600u64 {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut now = Instant::now();
        let config = Arc::new(node_config(1, 6800, 9));
        let mut c = Connection::connect(
            config,
            Policy::lossless_client(),
            v2_addr(6789, 0),
            EntityType::MON,
            now,
        );
        let mut queued = 0u32;
        // The peer's session: its in_seq, and what it delivered (ids, in order).
        let mut peer_in_seq = 0u64;
        let mut delivered: Vec<u32> = Vec::new();
        let mut our_in = 0u64;
        let mut reset_told = false;
        let mut need_dial = true;
        let mut last_seq: Option<u64> = None;
        let mut log: Vec<String> = Vec::new();
        for step in 0..80 {
            let evs = events(&mut c);
            for e in &evs {
                match e {
                    Event::Reset | Event::RemoteReset | Event::Refused | Event::Closed { .. } => {
                        reset_told = true
                    }
                    Event::NeedBudget { .. } => c.grant_budget(now),
                    Event::Reconnect { .. } => need_dial = true,
                    Event::Opened(o) => {
                        opened += 1;
                        resumed += u32::from(o.resumed);
                    }
                    _ => {}
                }
            }
            if c.is_closed() || reset_told {
                break;
            }
            if c.is_backing_off() {
                now = c.poll_timeout().unwrap();
                c.handle_timeout(now);
                log.push("timeout".into());
                continue;
            }
            if r.below(3) == 0 {
                c.send_message(Message::new(2, Bytes::copy_from_slice(&queued.to_le_bytes())));
                queued += 1;
            }
            if need_dial {
                need_dial = false;
                c.handle_transport_connected(now);
                last_seq = None;
                log.push("dial".into());
            }
            if matches!(c.state(), protocol::SessionState::Standby) {
                break;
            }
            let out = output(&mut c);
            let skip = if out.starts_with(b"ceph v2\n") { BANNER_LEN } else { 0 };
            for f in frames(&out, skip) {
                log.push(format!("> {}", f.tag()));
                if f.tag() == Tag::MESSAGE {
                    let s = MsgHeader2::decode(&f.segments[0]).unwrap().seq;
                    let id = u32::from_le_bytes(f.segments[1][..4].try_into().unwrap());
                    log.push(format!("  seq {s} id {id}"));
                    if let Some(l) = last_seq {
                        assert_eq!(
                            s,
                            l + 1,
                            "seed {seed} step {step}: seq {s} after {l}: {log:#?}"
                        );
                    }
                    last_seq = Some(s);
                    if s > peer_in_seq {
                        peer_in_seq = s;
                        delivered.push(id);
                    }
                }
            }
            let honest = |r: &mut Rng| r.below(peer_in_seq + 1);
            let stamp = protocol::wire::KeepaliveStamp { sec: 1, nsec: 2 };
            let pick = r.below(100);
            let b: Vec<u8> = if c.is_open() {
                match pick {
                    0..=29 => {
                        let seq = odd_seq(&mut r, our_in + 1);
                        our_in = our_in.max(seq);
                        message_frame(seq, honest(&mut r))
                    }
                    30..=49 => frame(&Ack { seq: honest(&mut r) }),
                    50..=59 => frame(&Keepalive2 { stamp }),
                    60..=64 => frame(&Keepalive2Ack { stamp }),
                    65..=69 => frame(&server_ident(v2_addr(6789, 0))),
                    70..=72 => {
                        frame(&SessionReconnectOk { msg_seq: reconnect_seq(&mut r, peer_in_seq) })
                    }
                    73..=75 => frame(&Wait),
                    76..=79 => {
                        frame(&Hello { entity_type: EntityType::MON, peer_addr: v2_addr(40000, 0) })
                    }
                    _ => Vec::new(), // cut
                }
            } else {
                let mut b = Vec::new();
                if out.starts_with(b"ceph v2\n") {
                    b.extend(acceptor_prefix(EntityType::MON));
                }
                let sent_ident = frames(&out, skip).iter().any(|f| f.tag() == Tag::CLIENT_IDENT);
                match pick {
                    0..=29 => {
                        if sent_ident {
                            // A new session at the peer.
                            peer_in_seq = 0;
                        }
                        b.extend(frame(&server_ident(v2_addr(6789, 0))))
                    }
                    30..=54 => b.extend(frame(&SessionReconnectOk {
                        msg_seq: reconnect_seq(&mut r, peer_in_seq),
                    })),
                    55..=59 => b.extend(frame(&SessionRetry { connect_seq: r.below(5) })),
                    60..=64 => b.extend(frame(&SessionRetryGlobal { global_seq: r.below(50) })),
                    65..=69 => {
                        // The peer's session is gone: nothing more to check.
                        reset_told = true;
                        b.extend(frame(&SessionReset { full: false }))
                    }
                    70..=72 => b.extend(frame(&Wait)),
                    73..=76 => b.extend(frame(&Ack { seq: honest(&mut r) })),
                    77..=79 => b.extend(message_frame(1, 0)),
                    80..=82 => b.extend(frame(&Keepalive2 { stamp })),
                    _ => {}
                }
                b
            };
            if b.is_empty() {
                log.push("cut".into());
                c.handle_transport_closed(now);
            } else {
                let f = frames(&b, if b.starts_with(b"ceph v2\n") { BANNER_LEN } else { 0 });
                log.push(format!(
                    "< {:?}",
                    f.iter().map(|f| f.tag().to_string()).collect::<Vec<_>>()
                ));
                c.handle_bytes(now, Bytes::from(b));
            }
            let has_events = c.has_events();
            assert!(
                c.is_closed()
                    || c.wants_read()
                    || c.poll_timeout().is_some()
                    || has_events
                    || matches!(c.state(), protocol::SessionState::Standby),
                "seed {seed} step {step}: stalled in {c}"
            );
        }
        if reset_told {
            continue;
        }
        // In order, once each.
        for w in delivered.windows(2) {
            assert!(w[0] < w[1], "seed {seed}: delivered {delivered:?}\n{log:#?}");
        }
        let missing = queued as usize - delivered.len();
        assert!(
            missing <= c.pending_messages(),
            "seed {seed}: {missing} not delivered, {} pending: delivered {delivered:?}\n{log:#?}",
            c.pending_messages()
        );
    }
    assert!(opened > 300 && resumed > 50, "opened {opened}, resumed {resumed}");
}
