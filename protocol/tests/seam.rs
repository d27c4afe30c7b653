//! The protocol seam: one [`Connection`] type for both protocols (the banner-sniffing
//! acceptor included), one accept decision for both, and the auth seam as the v1
//! machine calls it (authorizers with a challenge round, signed messages).

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::session::Fault;
use protocol::testing::{node_config, numbered, numbers, v1_addr, v2_addr, Pair, TestAuthProvider};
use protocol::types::{EntityAddrVec, EntityType, Features};
use protocol::wire::{ConnectMsg, ConnectReply, Tag, BANNER};
use protocol::{
    decide, AuthVerdict, CloseReason, Connection, Decision, Event, ExistingSession, ExistingState,
    GlobalSeq, Initiator, Policy, ProtocolVersion,
};

fn sa(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

// Receive credit granted ahead, in both protocols: whole small messages are read on
// without a budget request until the credit runs out (in messages or bytes); the unused
// rest comes back, and a session that ends takes its credit with it.
#[test]
fn receive_credit_reads_whole_messages_without_budget_requests() {
    const COST: u64 = 4 + protocol::message::MESSAGE_OVERHEAD;
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let mut p = Pair::new(
            Instant::now(),
            version,
            Policy::lossless_client(),
            Policy::stateful_server(),
        );
        p.nodes[1].hold_budget = true;
        p.send(0, numbered(1));
        p.drive();
        assert_eq!(p.nodes[1].budget_waiting.len(), 1, "{version:?}: the first message asks");
        p.release_budget();
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [1]);
        let b = p.session_ep(1).expect("server session");

        // Two messages' worth (in messages): the third asks again.
        p.eps[b].conn.add_receive_credit(2, 10 * COST);
        for id in 2..=4 {
            p.send(0, numbered(id));
        }
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [1, 2, 3], "{version:?}: two read on credit");
        assert_eq!(p.nodes[1].budget_waiting.len(), 1, "{version:?}: the third asks");
        assert_eq!(p.eps[b].conn.take_receive_credit(), (0, 8 * COST), "bytes left over");
        p.release_budget();
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [1, 2, 3, 4]);

        // Short of the next message by a byte: it asks, and the credit is left whole.
        p.eps[b].conn.add_receive_credit(5, COST - 1);
        p.send(0, numbered(5));
        p.drive();
        assert_eq!(p.nodes[1].budget_waiting.len(), 1, "{version:?}: not covered, it asks");
        assert_eq!(p.eps[b].conn.take_receive_credit(), (5, COST - 1), "untouched");
        assert_eq!(p.eps[b].conn.take_receive_credit(), (0, 0), "taken back once");
        p.release_budget();
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [1, 2, 3, 4, 5]);

        // The session's end takes the credit with it.
        p.eps[b].conn.add_receive_credit(3, 3 * COST);
        p.eps[b].conn.handle_transport_closed(p.now);
        assert_eq!(p.eps[b].conn.take_receive_credit(), (0, 0), "{version:?}: gone");
    }
}

// `poll_message` takes a received message only when it is the next event: anything
// else (a budget request here) stays for `poll_event`, in order, and the messages come
// out in order.
#[test]
fn poll_message_takes_only_a_message_at_the_front() {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let mut p =
            Pair::new(Instant::now(), version, Policy::lossy_client(), Policy::stateless_server());
        let a = p.connect(0);
        p.drive();
        // A stateless server keeps no session record: its endpoint is the accepted one.
        let b = p.eps.iter().position(|e| e.node == 1 && e.alive).unwrap();
        assert!(a < b && p.eps[a].conn.is_open() && p.eps[b].conn.is_open(), "{version:?}");
        let now = p.now;
        let (lo, hi) = p.eps.split_at_mut(b);
        let (ca, cb) = (&mut lo[a].conn, &mut hi[0].conn);
        for id in 1..=3 {
            ca.send_message(numbered(id));
        }
        let mut segs = Vec::new();
        assert!(ca.poll_transmit(&mut segs) > 0);
        for s in segs {
            cb.handle_bytes(now, s);
        }
        assert!(cb.poll_message().is_none(), "{version:?}: a budget request is next");
        assert!(
            matches!(cb.poll_event(), Some(Event::NeedBudget { first: true, .. })),
            "{version:?}: the request was left for poll_event"
        );
        cb.add_receive_credit(2, 1 << 20);
        cb.grant_budget(now);
        let got: Vec<_> = std::iter::from_fn(|| cb.poll_message()).collect();
        assert_eq!(numbers(&got), [1, 2, 3], "{version:?}");
        assert!(cb.poll_event().is_none() && cb.poll_message().is_none(), "{version:?}");
    }
}

// One listener for both protocols: the acceptor reads the peer's banner, becomes the
// machine of that protocol, and the session works as with a listener bound to it.
// ACKs trim the sender's sent queue whether or not they are reported; with
// `report_acks` off (as the messenger runs, ignoring the event) an ACK produces no event.
#[test]
fn acks_trim_the_sent_queue_with_or_without_their_events() {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        for report in [true, false] {
            let mut c0 = node_config(version, 0, 6789, 1);
            let mut c1 = node_config(version, 1, 6790, 2);
            c0.report_acks = report;
            c1.report_acks = report;
            let mut p = Pair::with_configs(
                Instant::now(),
                version,
                c0,
                Policy::lossless_peer(),
                c1,
                Policy::lossless_peer(),
            );
            for id in 0..20 {
                p.send(0, numbered(id));
            }
            p.drive();
            assert_eq!(numbers(&p.nodes[1].received), (0..20).collect::<Vec<_>>(), "{version:?}");
            let ep = p.session_ep(0).unwrap();
            assert_eq!(p.conn(ep).pending_messages(), 0, "{version:?}: all acked and dropped");
            if report {
                assert!(p.nodes[0].acked > 0, "{version:?}: ACKs reported");
            } else {
                assert_eq!(p.nodes[0].acked, 0, "{version:?}: no Acked events");
            }
        }
    }
}

#[test]
fn sniffing_acceptor_serves_both_protocols() {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let mut p =
            Pair::new(Instant::now(), version, Policy::lossless_peer(), Policy::lossless_peer());
        p.sniff = true;
        for i in 0..5 {
            p.send(0, numbered(i));
        }
        p.drive();
        for i in 10..13 {
            p.send(1, numbered(i));
        }
        p.drive();
        assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3, 4], "{version:?}");
        assert_eq!(numbers(&p.nodes[0].received), [10, 11, 12], "{version:?}");
        let b = p.session_ep(1).unwrap();
        assert_eq!(p.eps[b].conn.protocol(), Some(version));
        assert!(p.eps[b].conn.is_open());
    }
}

// Cut at every stage of the handshake, the sniffing acceptor behaves as the bound one:
// the lossless session recovers and nothing is lost or repeated.
#[test]
fn sniffing_acceptor_survives_cuts_at_any_offset() {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
        for cut in (0..400).step_by(7) {
            let mut p = Pair::new(
                Instant::now(),
                version,
                Policy::lossless_client(),
                Policy::stateful_server(),
            );
            p.sniff = true;
            p.cut_after = Some(cut);
            p.send(0, numbered(1));
            p.run_for(Duration::from_secs(60));
            p.send(0, numbered(2));
            p.run_for(Duration::from_secs(60));
            assert_eq!(numbers(&p.nodes[1].received), [1, 2], "{version:?} cut at {cut}");
        }
    }
}

// The difference from Ceph's acceptor: nothing is written before the peer's 8 banner
// bytes, then the protocol's own banner goes out.
#[test]
fn sniffing_acceptor_writes_after_the_peer_banner() {
    let now = Instant::now();
    let config = Arc::new(node_config(ProtocolVersion::V1, 0, 6789, 1));
    let mut c = Connection::accept(config.clone(), sa(40000), sa(6789), now);
    let mut out = Vec::new();
    assert_eq!(c.poll_transmit(&mut out), 0);
    assert!(c.wants_read() && c.protocol().is_none());
    c.handle_bytes(now, Bytes::from_static(b"ceph v0"));
    assert_eq!(c.poll_transmit(&mut out), 0, "7 bytes do not decide");
    c.handle_bytes(now, Bytes::from_static(b"27"));
    assert_eq!(c.protocol(), Some(ProtocolVersion::V1));
    assert_eq!(c.poll_transmit(&mut out), 281, "v1's banner block");

    let mut c = Connection::accept(config, sa(40001), sa(6789), now);
    c.handle_bytes(now, Bytes::from_static(b"ceph v2\n"));
    assert_eq!(c.protocol(), Some(ProtocolVersion::V2));
    out.clear();
    assert_eq!(c.poll_transmit(&mut out), 26, "msgr2's banner");
}

// Not a Ceph banner, a silent peer, a peer that hangs up: the sniffing acceptor closes
// like a half-accepted machine (no session, nothing else reported).
#[test]
fn sniffing_acceptor_closes_on_garbage_silence_and_eof() {
    let now = Instant::now();
    let config = Arc::new(node_config(ProtocolVersion::V2, 0, 6789, 1));
    let mut c = Connection::accept(config.clone(), sa(40000), sa(6789), now);
    c.handle_bytes(now, Bytes::from_static(b"GET / HTTP/1.1\r\n"));
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Closed { by: Initiator::Library, reason }]
            if matches!(**reason, CloseReason::Fault(Fault::BadBanner))
    ));
    assert!(c.is_closed() && !c.wants_read() && c.poll_timeout().is_none());

    let mut c = Connection::accept(config.clone(), sa(40001), sa(6789), now);
    let deadline = c.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(10));
    c.handle_timeout(deadline - Duration::from_millis(1));
    assert!(events(&mut c).is_empty(), "early timer calls do nothing");
    c.handle_timeout(deadline);
    assert!(matches!(
        &events(&mut c)[..],
        [Event::Closed { reason, .. }] if matches!(**reason, CloseReason::Fault(Fault::HandshakeTimeout))
    ));

    let mut c = Connection::accept(config, sa(40002), sa(6789), now);
    c.handle_bytes(now, Bytes::from_static(b"ceph"));
    c.handle_transport_closed(now);
    assert!(matches!(&events(&mut c)[..], [Event::Closed { by: Initiator::Peer, .. }]));
}

// One decision function for both protocols: a request goes to its protocol's race
// rules (same inputs, different rules: v1 answers an older connect_seq with
// RETRY_SESSION, msgr2 a stale ident with a drop).
#[test]
fn decide_uses_the_requests_protocol() {
    let mut p1 = Pair::v1(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    let mut p2 = Pair::v2(Instant::now(), Policy::lossless_peer(), Policy::lossless_peer());
    for p in [&mut p1, &mut p2] {
        p.nodes[1].hold_budget = false;
        p.connect(0);
        p.step();
    }
    let existing = ExistingSession {
        state: ExistingState::Open,
        peer_global_seq: GlobalSeq(50),
        ..ExistingSession::default()
    };
    let me = EntityAddrVec { addrs: vec![v2_addr(6790, 2), v1_addr(6790, 2)] };
    for (p, want) in [(&mut p1, Decision::RetryGlobal(GlobalSeq(50))), (&mut p2, Decision::Drop)] {
        let acc = p.eps.iter().position(|e| e.accepted).unwrap();
        let mut req = None;
        for _ in 0..20 {
            p.step();
            while let Some(ev) = p.eps[acc].conn.poll_event() {
                match ev {
                    Event::AcceptRequest(r) => {
                        req = Some(r);
                        break;
                    }
                    // v1: the connector's auth-none authorizer comes first.
                    Event::VerifyAuthorizer { .. } => p.eps[acc].conn.handle_authorizer_verdict(
                        p.now,
                        AuthVerdict::Accept { reply: Bytes::new() },
                    ),
                    _ => {}
                }
            }
            if req.is_some() {
                break;
            }
        }
        let req = req.expect("an accept request");
        assert_eq!(decide(&req, Some(&existing), &Policy::lossless_peer(), &me), want);
    }
}

/// A lossless client/server pair over v1 whose nodes present and verify authorizers
/// (the toy method: a challenge round, then signed messages).
fn authorized_v1_pair() -> Pair {
    let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
    let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
    c0.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
    c1.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
    let mut p = Pair::with_configs(
        Instant::now(),
        ProtocolVersion::V1,
        c0,
        Policy::lossless_client(),
        c1,
        Policy::stateful_server(),
    );
    p.verbose = true;
    p
}

// The v1 auth seam end to end: the connector's authorizer is challenged, answers,
// the acceptor's reply is checked, and every message of the session is signed and
// checked; nothing reaches the driver (the verifier is inline).
#[test]
fn v1_authorizer_challenge_round_and_signed_messages() {
    let mut p = authorized_v1_pair();
    for i in 0..5 {
        p.send(0, numbered(i));
    }
    p.drive();
    for i in 10..12 {
        p.send(1, numbered(i));
    }
    p.drive();
    assert_eq!(numbers(&p.nodes[1].received), [0, 1, 2, 3, 4]);
    assert_eq!(numbers(&p.nodes[0].received), [10, 11]);
    assert!(!p.nodes[1].log.iter().any(|l| l.starts_with("VerifyAuthorizer")));
    // Two connect messages: the first was challenged.
    assert_eq!(p.nodes[0].config.counters.values().connects, 2);
    let footer_flags = p.nodes[1].received[0].footer().flags;
    assert!(footer_flags.contains(protocol::wire::FooterFlags::SIGNED));
}

// A message whose signature does not check faults the connection (Ceph's
// check_message_signature failing); the lossless session resends it, signed right.
#[test]
fn v1_bad_signature_faults_and_the_resend_is_delivered_once() {
    let mut p = authorized_v1_pair();
    p.connect(0);
    p.drive();
    let handshake = p.links[0].sent[1];
    // The signature of the first message: tag, header, the 4-byte front, then the
    // footer's three crcs.
    p.tamper = Some((1, handshake + 1 + 53 + 4 + 12, 0x40));
    p.send(0, numbered(7));
    p.run_for(Duration::from_secs(5));
    assert_eq!(numbers(&p.nodes[1].received), [7], "{:?}", p.nodes[1].log);
    assert!(
        p.nodes[1].log.iter().any(|l| l.starts_with("Standby#")),
        "the acceptor faulted: {:?}",
        p.nodes[1].log
    );
    assert!(p.nodes[0].log.iter().any(|l| l.starts_with("Reconnect#")));
}

// Wrong key: the acceptor rejects the challenge's answer (BADAUTHORIZER); a lossy
// connector gives up for good, a lossless one keeps its session and dials again after
// its backoff (Ceph's fault), delivering nothing while the key stays wrong.
#[test]
fn v1_wrong_authorizer_key_is_refused() {
    for (policy, lossless) in [(Policy::lossy_client(), false), (Policy::lossless_client(), true)] {
        let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
        let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
        c0.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers().with_wrong_key());
        c1.auth = Arc::new(TestAuthProvider::new(&[]).with_v1_authorizers());
        let mut p = Pair::with_configs(
            Instant::now(),
            ProtocolVersion::V1,
            c0,
            policy,
            c1,
            Policy::stateful_server(),
        );
        p.send(0, numbered(1));
        p.run_for(Duration::from_secs(30));
        assert!(p.nodes[1].received.is_empty());
        let connects = p.nodes[0].config.counters.values().connects;
        if lossless {
            assert_eq!(p.nodes[0].refused, 0, "{:?}", p.nodes[0].log);
            // 30 s of backoff from 200 ms, doubling to 15 s: 0.2 + 0.4 + … + 12.8 + 15.
            assert!(connects >= 5, "{connects} connects: {:?}", p.nodes[0].log);
        } else {
            assert_eq!(p.nodes[0].refused, 1);
            assert_eq!(connects, 2, "the first connect and the challenge's answer");
        }
    }
}

// The driver's verdict can challenge too (Event::VerifyAuthorizer answered with
// AuthVerdict::Challenge): CHALLENGE_AUTHORIZER carries the bytes, and the repeated
// connect is judged again.
#[test]
fn v1_driver_verdict_can_challenge() {
    let now = Instant::now();
    let config = Arc::new(node_config(ProtocolVersion::V1, 0, 6789, 1));
    let mut a = Connection::accept_v1(config, sa(5000), sa(6789), now);
    let mut out = Vec::new();
    a.poll_transmit(&mut out);
    let mut hello = BANNER.to_vec();
    hello.extend_from_slice(&v1_addr(6790, 2).encode_legacy());
    a.handle_bytes(now, Bytes::from(hello));
    let connect = |auth: &[u8]| {
        let m = ConnectMsg {
            features: Features::PACIFIC_ADVERTISED,
            host_type: EntityType::MON,
            global_seq: 5,
            connect_seq: 0,
            protocol_version: 13,
            authorizer_protocol: 2,
            authorizer_len: auth.len() as u32,
            flags: 0,
        };
        let mut v = Vec::new();
        m.encode_with_authorizer(auth, &mut v);
        Bytes::from(v)
    };
    a.handle_bytes(now, connect(b"first"));
    assert!(matches!(&events(&mut a)[..], [Event::VerifyAuthorizer { .. }]));
    a.handle_authorizer_verdict(now, AuthVerdict::Challenge(Bytes::from_static(b"prove it")));
    out.clear();
    a.poll_transmit(&mut out);
    let wire = out.concat();
    let (reply, auth, _, _) = ConnectReply::decode_full(&wire, 64).unwrap();
    assert_eq!((reply.tag, auth), (Tag::CHALLENGE_AUTHORIZER, &b"prove it"[..]));
    a.handle_bytes(now, connect(b"answer"));
    let evs = events(&mut a);
    assert!(
        matches!(&evs[..], [Event::VerifyAuthorizer { authorizer, .. }] if &authorizer[..] == b"answer"),
        "{evs:?}"
    );
}
