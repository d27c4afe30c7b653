//! One msgr2 machine against a scripted peer writing raw frames: the edge cases of
//! msgr-v2.md that a well-behaved peer never produces (the probe's experiments E1-E21
//! where they apply to us): wrong banners, oversize lengths, frames out of phase, bad
//! signatures, bad idents, aborted and malformed epilogues, duplicates, unknown tags.

#![allow(clippy::unwrap_used)]

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::v2_wire::*;
use protocol::auth::ConMode;
use protocol::session::Fault;
use protocol::testing::v2_addr;
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityType, Features};
use protocol::v2::banner::{Banner, Msgr2Features, BANNER_LEN};
use protocol::v2::frames::*;
use protocol::v2::framing::{Frame, Preamble, SegmentDesc};
use protocol::v2::{Connection, Tag};
use protocol::{decide, CloseReason, Event, Policy};

fn sa(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn closed_by_fault(evs: &[Event]) -> Option<Fault> {
    evs.iter().find_map(|e| match e {
        Event::Closed { reason, .. } => match &**reason {
            CloseReason::Fault(f) => Some(f.clone()),
            _ => None,
        },
        _ => None,
    })
}

/// A monitor-like acceptor (mon.0 at v2 127.0.0.1:6789/0, auth none) and a raw client.
struct Acceptor {
    conn: Connection,
    now: Instant,
    /// What the acceptor wrote so far.
    wire: Vec<u8>,
}

impl Acceptor {
    fn new() -> Self {
        Acceptor::with_config(node_config(0, 6789, 0))
    }

    // Starts the virtual clock from the real one (`Instant` has no other constructor).
    #[allow(clippy::disallowed_methods)]
    fn with_config(config: protocol::Config) -> Self {
        let now = Instant::now();
        let conn = Connection::accept(Arc::new(config), sa(40000), sa(6789), now);
        let mut a = Acceptor { conn, now, wire: Vec::new() };
        a.flush();
        a
    }

    fn flush(&mut self) {
        let out = output(&mut self.conn);
        self.wire.extend_from_slice(&out);
    }

    fn feed(&mut self, b: &[u8]) -> Vec<Event> {
        self.conn.handle_bytes(self.now, Bytes::copy_from_slice(b));
        let mut evs = events(&mut self.conn);
        // Answer accept requests as a stateless server.
        let mut more = Vec::new();
        for e in &evs {
            if let Event::AcceptRequest(req) = e {
                let policy = Policy::stateless_server();
                let me = EntityAddrVec::single(v2_addr(6789, 0));
                let d = decide(req, None, &policy, &me);
                self.conn.handle_accept_decision(self.now, policy, d, None);
                more.extend(events(&mut self.conn));
            }
        }
        evs.extend(more);
        self.flush();
        evs
    }

    /// Frames the acceptor sent after its banner.
    fn sent(&self) -> Vec<Frame> {
        frames(&self.wire, BANNER_LEN)
    }

    /// Banner + HELLO from a client.
    fn hello(&mut self) {
        let mut b = Banner::OURS.to_bytes().to_vec();
        b.extend(frame(&Hello { entity_type: EntityType::CLIENT, peer_addr: v2_addr(6789, 0) }));
        assert!(self.feed(&b).is_empty());
    }

    /// Through AUTH (none) and both signatures.
    fn authenticated(&mut self) {
        self.hello();
        self.feed(&frame(&auth_none_request(vec![ConMode::CRC])));
        assert_eq!(self.sent().last().unwrap().tag(), Tag::AUTH_SIGNATURE);
        assert!(self.feed(&frame(&AuthSignature::default())).is_empty());
    }

    /// Through SERVER_IDENT (a lossy client).
    fn ready(&mut self) {
        self.authenticated();
        let evs = self.feed(&frame(&client_ident()));
        assert!(evs.iter().any(|e| matches!(e, Event::Opened(_))), "{evs:?}");
    }
}

fn auth_none_request(modes: Vec<ConMode>) -> AuthRequest {
    AuthRequest {
        method: protocol::types::AUTH_NONE,
        preferred_modes: modes,
        payload: Bytes::from_static(b"\x0a\x08\x00\x00\x00\x05\x00\x00\x00admin\0\0\0\0\0\0\0\0"),
    }
}

fn client_ident() -> ClientIdent {
    ClientIdent {
        addrs: EntityAddrVec::single(EntityAddr { ty: AddrType::ANY, nonce: 5, addr: Some(sa(0)) }),
        target_addr: v2_addr(6789, 0),
        gid: -1,
        global_seq: 1,
        supported_features: Features::PACIFIC_ADVERTISED,
        required_features: Features::MSG_ADDR2,
        flags: IDENT_FLAG_LOSSY,
        client_cookie: 0,
    }
}

fn message(seq: u64, late: Option<u8>) -> Vec<u8> {
    let mut w = message_frame(seq, 0);
    if let Some(l) = late {
        let at = w.len() - 13;
        w[at] = l;
    }
    w
}

// E1: the acceptor writes its banner at once, before reading anything.
#[test]
fn acceptor_banner_goes_out_first() {
    let a = Acceptor::new();
    assert_eq!(a.wire, Banner::OURS.to_bytes());
}

// A v1 banner on a v2 port: "peer is using msgr V1 protocol", closed (msgr-v2.md 1.2).
#[test]
fn v1_banner_is_refused_from_its_first_bytes() {
    let mut a = Acceptor::new();
    let evs = a.feed(b"ceph v027");
    assert_eq!(closed_by_fault(&evs), Some(Fault::BadBanner));
}

// E3 and msgr2.0: a banner requiring an unknown feature, or lacking REVISION_1.
#[test]
fn incompatible_banners_are_refused() {
    for banner in [
        Banner { supported: Msgr2Features(3), required: Msgr2Features::COMPRESSION },
        Banner { supported: Msgr2Features::NONE, required: Msgr2Features::NONE },
    ] {
        let mut a = Acceptor::new();
        let evs = a.feed(&banner.to_bytes());
        assert!(matches!(closed_by_fault(&evs), Some(Fault::Decode(_))), "{banner:?}: {evs:?}");
    }
}

// A control frame announcing 1 GiB is refused from its preamble, before any payload.
#[test]
fn oversize_control_frame_is_refused_before_allocating() {
    let mut a = Acceptor::new();
    a.hello();
    let mut segments = [SegmentDesc::default(); 4];
    segments[0] = SegmentDesc { len: 1 << 30, align: 8 };
    let pre = Preamble { tag: Tag::AUTH_REQUEST, num_segments: 1, segments, flags: 0 };
    let evs = a.feed(&pre.to_bytes());
    assert!(
        matches!(
            closed_by_fault(&evs),
            Some(Fault::Decode(protocol::error::Error::TooLarge { .. }))
        ),
        "{evs:?}"
    );
}

// E4/E5: bad preamble crc and bad segment crc fault the connection.
#[test]
fn bad_crcs_fault() {
    for at in [28usize, 40] {
        let mut a = Acceptor::new();
        let mut b = Banner::OURS.to_bytes().to_vec();
        let mut h = frame(&Hello { entity_type: EntityType::CLIENT, peer_addr: v2_addr(6789, 0) });
        let at = at.min(h.len() - 1);
        h[at] ^= 1;
        b.extend(h);
        let evs = a.feed(&b);
        assert!(matches!(closed_by_fault(&evs), Some(Fault::Decode(_))), "byte {at}: {evs:?}");
    }
}

// E6/E7: auth none with only secure mode offered → AUTH_BAD_METHOD(-95, [none], modes);
// another AUTH_REQUEST on the same connection then succeeds.
#[test]
fn bad_mode_then_retry_on_the_same_connection() {
    let mut a = Acceptor::new();
    a.hello();
    a.feed(&frame(&auth_none_request(vec![ConMode::SECURE])));
    let last = a.sent().pop().unwrap();
    assert_eq!(last.tag(), Tag::AUTH_BAD_METHOD);
    let bad = AuthBadMethod::from_segment(&last.segments[0]).unwrap();
    assert_eq!((bad.method, bad.result), (1, -95));
    assert_eq!(bad.allowed_methods, [1]);
    a.feed(&frame(&auth_none_request(vec![ConMode::CRC])));
    let tags: Vec<Tag> = a.sent().iter().map(Frame::tag).collect();
    assert_eq!(&tags[tags.len() - 2..], [Tag::AUTH_DONE, Tag::AUTH_SIGNATURE]);
}

// Frames out of phase: MESSAGE before ready ("not in ready state"), CLIENT_IDENT
// before the signature, an unknown tag.
#[test]
fn frames_out_of_phase_fault() {
    let mut a = Acceptor::new();
    a.hello();
    let evs = a.feed(&message(1, None));
    assert!(matches!(closed_by_fault(&evs), Some(Fault::Misbehaved(_))), "{evs:?}");

    let mut a = Acceptor::new();
    a.hello();
    a.feed(&frame(&auth_none_request(vec![ConMode::CRC])));
    let evs = a.feed(&frame(&client_ident()));
    assert!(matches!(closed_by_fault(&evs), Some(Fault::Misbehaved(_))), "{evs:?}");

    let mut a = Acceptor::new();
    a.hello();
    let evs =
        a.feed(&raw_frame(Tag::COMPRESSION_REQUEST, &[&Bytes::from_static(&[1, 0, 0, 0, 0])]));
    assert_eq!(closed_by_fault(&evs), Some(Fault::UnknownTag(21)));
}

// E18-ish: a wrong AUTH_SIGNATURE (non-zero under auth none): "pre-auth signature
// mismatch", closed.
#[test]
fn bad_signature_faults() {
    let mut a = Acceptor::new();
    a.hello();
    a.feed(&frame(&auth_none_request(vec![ConMode::CRC])));
    let evs = a.feed(&frame(&AuthSignature { hmac: [1; 32] }));
    assert_eq!(closed_by_fault(&evs), Some(Fault::Misbehaved("pre-auth signature mismatch")));
}

// E8/E9 and empty addrs (msgr-v2.md 5.6): missing features → IDENT_MISSING_FEATURES and
// the connection stays open for another ident; wrong target or no address → fault.
#[test]
fn ident_checks() {
    let mut a = Acceptor::new();
    a.authenticated();
    let mut ci = client_ident();
    ci.supported_features = Features(Features::PACIFIC_ADVERTISED.0 & !Features::MSG_ADDR2.0);
    let evs = a.feed(&frame(&ci));
    assert!(evs.is_empty(), "{evs:?}");
    let last = a.sent().pop().unwrap();
    assert_eq!(last.tag(), Tag::IDENT_MISSING_FEATURES);
    assert_eq!(
        IdentMissingFeatures::from_segment(&last.segments[0]).unwrap().missing_features,
        Features::MSG_ADDR2.0
    );
    assert!(a.conn.wants_read());
    let evs = a.feed(&frame(&client_ident()));
    assert!(evs.iter().any(|e| matches!(e, Event::Opened(_))), "{evs:?}");

    // Not forever: a peer repeating a refused ident is dropped after the round bound.
    let mut a = Acceptor::new();
    a.authenticated();
    let mut ci = client_ident();
    ci.supported_features = Features::NONE;
    let mut closed = None;
    for _ in 0..100 {
        closed = closed_by_fault(&a.feed(&frame(&ci)));
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(closed, Some(Fault::Misbehaved("too many handshake rounds")));

    let mut a = Acceptor::new();
    a.authenticated();
    let mut ci = client_ident();
    ci.target_addr = v2_addr(6789, 7);
    assert_eq!(closed_by_fault(&a.feed(&frame(&ci))), Some(Fault::AddrMismatch));

    let mut a = Acceptor::new();
    a.authenticated();
    let mut ci = client_ident();
    ci.addrs = EntityAddrVec::default();
    assert!(matches!(closed_by_fault(&a.feed(&frame(&ci))), Some(Fault::Misbehaved(_))));
}

// msgr-v2.md 7.4 row 1 (V: lossy client): SESSION_RECONNECT to a stateless server →
// SESSION_RESET(full); the connection stays for a CLIENT_IDENT.
#[test]
fn reconnect_without_a_session_is_reset() {
    let mut a = Acceptor::new();
    a.authenticated();
    let r = SessionReconnect {
        addrs: client_ident().addrs,
        client_cookie: 1,
        server_cookie: 2,
        global_seq: 3,
        connect_seq: 1,
        msg_seq: 0,
    };
    a.feed(&frame(&r));
    let last = a.sent().pop().unwrap();
    assert_eq!(last.tag(), Tag::SESSION_RESET);
    assert!(SessionReset::from_segment(&last.segments[0]).unwrap().full);
    let evs = a.feed(&frame(&client_ident()));
    assert!(evs.iter().any(|e| matches!(e, Event::Opened(_))));
}

// auth none authenticates nobody: the accepted peer is whom its AUTH_REQUEST names,
// with the global id the acceptor handed out and every cap.
#[test]
fn auth_none_names_the_peer_it_was_given() {
    let mut a = Acceptor::new();
    assert_eq!(a.conn.peer_auth(), None);
    a.authenticated();
    let who = a.conn.peer_auth().expect("authenticated").clone();
    assert_eq!(who.name, protocol::types::AuthEntityName::new(EntityType::CLIENT, "admin"));
    assert_eq!(who.global_id, protocol::auth::FIRST_GLOBAL_ID);
    assert!(who.caps.allow_all);
}

// A cephx monitor refuses an empty auth payload with -EACCES before its method reads
// it, at the start of the exchange and in AUTH_REQUEST_MORE alike, as Ceph's
// Monitor::handle_auth_request does over msgr2 (its check comes before `more` is looked
// at); the empty AUTH_REQUEST_MORE answered -EINVAL. The connector may start over.
#[test]
fn an_empty_auth_payload_is_refused_with_eacces() {
    use protocol::auth::cephx::{CephxProvider, KeyServer, RngSource, WallClock};
    use protocol::auth::{AuthConfig, CryptoKey, KeyEntry, KeyRing};
    use protocol::encoding::UTime;
    use protocol::types::{AuthEntityName, AUTH_CEPHX};
    use rand::{rngs::StdRng, SeedableRng};

    let wall = UTime::new(1_700_000_000, 0);
    let mut rng = StdRng::seed_from_u64(7);
    let mut ring = KeyRing::new();
    let admin = AuthEntityName::new(EntityType::CLIENT, "admin");
    ring.insert(admin, KeyEntry::new(CryptoKey::generate(wall, &mut rng)));
    let keys = KeyServer::new(ring, AuthConfig::ceph_defaults(), wall, &mut rng);
    let rngs: RngSource = Arc::new(|| Box::new(StdRng::seed_from_u64(8)) as _);
    let mut config = node_config(0, 6789, 0);
    // The clock's anchor only dates tickets, which no step here issues.
    #[allow(clippy::disallowed_methods)]
    let clock = WallClock::anchored(Instant::now(), wall);
    let mon = CephxProvider::new(
        AuthEntityName::new(EntityType::MON, "0"),
        AuthConfig::ceph_defaults(),
        clock,
        rngs,
    )
    .with_key_server(Arc::new(keys));
    config.auth = Arc::new(mon);
    let request = |payload: &'static [u8]| AuthRequest {
        method: AUTH_CEPHX,
        preferred_modes: vec![ConMode::CRC],
        payload: Bytes::from_static(payload),
    };
    let refused = |a: &Acceptor| {
        let last = a.sent().pop().unwrap();
        assert_eq!(last.tag(), Tag::AUTH_BAD_METHOD);
        let bad = AuthBadMethod::from_segment(&last.segments[0]).unwrap();
        (bad.method, bad.result)
    };
    let mut a = Acceptor::with_config(config);
    a.hello();
    a.feed(&frame(&request(b"")));
    assert_eq!(refused(&a), (AUTH_CEPHX, -13), "an empty AUTH_REQUEST");
    // Monitor mode, client.admin, no global id: challenged.
    a.feed(&frame(&request(b"\x0a\x08\x00\x00\x00\x05\x00\x00\x00admin\0\0\0\0\0\0\0\0")));
    assert_eq!(a.sent().last().unwrap().tag(), Tag::AUTH_REPLY_MORE);
    assert!(a.feed(&frame(&AuthRequestMore { payload: Bytes::new() })).is_empty());
    assert_eq!(refused(&a), (AUTH_CEPHX, -13), "an empty AUTH_REQUEST_MORE");
    let before = a.sent().len();
    a.feed(&frame(&request(b"\x0a\x08\x00\x00\x00\x05\x00\x00\x00admin\0\0\0\0\0\0\0\0")));
    let sent = a.sent();
    assert_eq!((sent.len(), sent.last().unwrap().tag()), (before + 1, Tag::AUTH_REPLY_MORE));
}

// An aborted MESSAGE funded by the receive credit gives that credit back, whether it
// was taken in one call (all in one read) or piece by piece (split across reads).
#[test]
fn an_aborted_message_gives_back_its_credit() {
    for split in [None, Some(40)] {
        let mut a = Acceptor::new();
        a.ready();
        a.conn.add_receive_credit(10, 100_000);
        let aborted = message(1, Some(0x01));
        match split {
            None => a.conn.handle_bytes(a.now, Bytes::from(aborted)),
            Some(at) => {
                a.conn.handle_bytes(a.now, Bytes::copy_from_slice(&aborted[..at]));
                a.conn.handle_bytes(a.now, Bytes::copy_from_slice(&aborted[at..]));
            }
        }
        let evs = events(&mut a.conn);
        assert!(!evs.iter().any(|e| matches!(e, Event::Message(_))), "{split:?}: delivered");
        assert!(!evs.iter().any(|e| matches!(e, Event::NeedBudget { .. })), "{split:?}: asked");
        assert_eq!(a.conn.take_receive_credit(), (10, 100_000), "{split:?}");
    }
}

// A MESSAGE that asked for its budget and was then aborted leaves its grant with the
// driver, which learns it is stale only from the next message's first request: so the
// next message asks for its first window even though the credit covers it (taken on
// credit, it reached the driver holding that grant, passed it for its own, and the
// credit it used stayed charged to nothing). The one after it is taken on credit again.
#[test]
fn a_message_after_an_aborted_one_that_asked_is_not_taken_on_credit() {
    let asked =
        |evs: &[Event]| evs.iter().any(|e| matches!(e, Event::NeedBudget { first: true, .. }));
    let delivered = |evs: &[Event]| evs.iter().filter(|e| matches!(e, Event::Message(_))).count();
    let mut a = Acceptor::new();
    a.ready();
    a.conn.handle_bytes(a.now, Bytes::from(message(1, Some(0x01))));
    assert!(asked(&events(&mut a.conn)), "no credit: the aborted one asks");
    a.conn.grant_budget(a.now);
    assert_eq!(delivered(&events(&mut a.conn)), 0, "aborted");
    a.conn.add_receive_credit(10, 100_000);
    a.conn.handle_bytes(a.now, Bytes::from(message(2, None)));
    let evs = events(&mut a.conn);
    assert!(asked(&evs) && delivered(&evs) == 0, "taken on credit: {evs:?}");
    a.conn.grant_budget(a.now);
    assert_eq!(delivered(&events(&mut a.conn)), 1);
    assert_eq!(a.conn.take_receive_credit(), (10, 100_000), "the credit untouched");
    a.conn.add_receive_credit(10, 100_000);
    a.conn.handle_bytes(a.now, Bytes::from(message(3, None)));
    let evs = events(&mut a.conn);
    assert!(!asked(&evs) && delivered(&evs) == 1, "not taken on credit: {evs:?}");
    assert_eq!(a.conn.take_receive_credit().0, 9);
}

// A peer guessing at a session's client cookie (or retrying for ever) on one
// connection: every SESSION_RECONNECT answered with SESSION_RESET counts as a handshake
// round, and past `max_auth_rounds` the connection is cut.
#[test]
fn reconnect_guesses_on_one_connection_are_bounded() {
    let mut a = Acceptor::new();
    a.authenticated();
    let max = protocol::session::Config::new(
        protocol::types::EntityName::new(EntityType::MON, 0),
        v2_addr(6789, 0),
    )
    .max_auth_rounds;
    let mut resets = 0;
    for guess in 1..=u64::from(max) + 1 {
        let r = SessionReconnect {
            addrs: client_ident().addrs,
            client_cookie: guess,
            server_cookie: 2,
            global_seq: 3,
            connect_seq: 1,
            msg_seq: 0,
        };
        let evs = a.feed(&frame(&r));
        if let Some(fault) = closed_by_fault(&evs) {
            assert!(matches!(fault, Fault::Misbehaved(_)), "{fault:?}");
            // The auth round counted too.
            assert_eq!(resets + 1, max, "cut after {resets} resets");
            return;
        }
        assert_eq!(a.sent().pop().unwrap().tag(), Tag::SESSION_RESET);
        resets += 1;
    }
    panic!("{resets} reconnects answered on one connection");
}

// A peer that sends KEEPALIVE2 frames and never reads makes us hold one
// KEEPALIVE2_ACK, for its newest stamp, however many it sent, and one event.
#[test]
fn keepalives_owe_one_ack_the_newest() {
    let mut a = Acceptor::new();
    a.ready();
    let before = a.sent().len();
    let mut bytes = Vec::new();
    for sec in 0..5000u32 {
        bytes.extend(frame(&Keepalive2 { stamp: protocol::wire::KeepaliveStamp { sec, nsec: 9 } }));
    }
    a.conn.handle_bytes(a.now, Bytes::from(bytes));
    assert!(a.conn.wants_read(), "keepalives take no budget");
    let evs = events(&mut a.conn);
    assert!(!evs.iter().any(|e| matches!(e, Event::Closed { .. })));
    // One event for them all too: one per frame queued 5,000.
    assert_eq!(evs.iter().filter(|e| matches!(e, Event::KeepaliveReceived)).count(), 1);
    a.flush();
    let sent = a.sent();
    let acks: Vec<_> = sent[before..]
        .iter()
        .map(|f| (f.tag(), Keepalive2Ack::from_segment(&f.segments[0]).map(|k| k.stamp).ok()))
        .collect();
    let newest = protocol::wire::KeepaliveStamp { sec: 4999, nsec: 9 };
    assert_eq!(acks, [(Tag::KEEPALIVE2_ACK, Some(newest))]);
}

// E14-E17 in the ready state: an aborted MESSAGE is dropped silently and the next one
// delivered (the monitor logged a seq gap); a duplicate seq is dropped (Pacific stops
// reading; we go on); KEEPALIVE2 is echoed; a bad late_status faults. All of it also
// with receive credit (as the messenger runs), where a MESSAGE that arrived whole is
// read in one call: the duplicate must still be dropped there and take no credit.
#[test]
fn ready_state_edges() {
    for credit in [false, true] {
        let mut a = Acceptor::new();
        a.ready();
        if credit {
            a.conn.add_receive_credit(100, 100_000);
        }
        let delivered = |a: &mut Acceptor, b: Vec<u8>| -> Vec<u64> {
            let mut seqs = Vec::new();
            a.conn.handle_bytes(a.now, Bytes::from(b));
            for _ in 0..10 {
                for e in events(&mut a.conn) {
                    match e {
                        Event::NeedBudget { .. } if credit => panic!("asked with credit"),
                        Event::NeedBudget { .. } => a.conn.grant_budget(a.now),
                        Event::Message(m) => seqs.push(m.seq()),
                        Event::Closed { .. } => panic!("closed: {e:?}"),
                        _ => {}
                    }
                }
            }
            a.flush();
            seqs
        };
        assert_eq!(delivered(&mut a, message(1, Some(0x01))), Vec::<u64>::new(), "aborted");
        assert_eq!(delivered(&mut a, message(2, None)), [2], "gap accepted");
        assert_eq!(delivered(&mut a, message(2, None)), Vec::<u64>::new(), "duplicate");
        assert_eq!(a.conn.duplicates_dropped(), 1);
        assert_eq!(delivered(&mut a, message(3, Some(0xE))), [3], "only the low nibble counts");
        let stamp = protocol::wire::KeepaliveStamp { sec: 5, nsec: 6 };
        delivered(&mut a, frame(&Keepalive2 { stamp }));
        let last = a.sent().pop().unwrap();
        assert_eq!(last.tag(), Tag::KEEPALIVE2_ACK);
        assert_eq!(Keepalive2Ack::from_segment(&last.segments[0]).unwrap().stamp, stamp);
        if credit {
            // The two delivered messages took credit; the aborted one gave back what its
            // admitted head took (nothing delivered holds it), the duplicate took none.
            let cost = 5 + protocol::message::MESSAGE_OVERHEAD;
            assert_eq!(a.conn.take_receive_credit(), (98, 100_000 - 2 * cost));
            a.conn.add_receive_credit(1, 100_000);
        }
        a.conn.handle_bytes(a.now, Bytes::from(message(4, Some(0x00))));
        let evs = events(&mut a.conn);
        if !credit {
            assert!(evs.iter().any(|e| matches!(e, Event::NeedBudget { .. })));
            a.conn.grant_budget(a.now);
        }
        let evs = if credit { evs } else { events(&mut a.conn) };
        assert!(
            matches!(closed_by_fault(&evs), Some(Fault::Decode(_))),
            "bad late_status (credit {credit}): {evs:?}"
        );
    }
}

// MESSAGE frames that arrive whole behind one another in a read are taken in one go;
// what comes out is what the same bytes give a byte at a time or in pieces that split
// frames anywhere: the same messages in order, a keepalive's event where it was sent, an
// aborted message and a duplicate dropped, and the receive credit running out partway.
#[test]
fn messages_in_one_read_come_out_as_they_do_byte_by_byte() {
    let mut bytes = Vec::new();
    for seq in 1..=4 {
        bytes.extend(message(seq, None));
    }
    bytes.extend(message(5, Some(0x01)));
    let stamp = protocol::wire::KeepaliveStamp { sec: 5, nsec: 6 };
    bytes.extend(frame(&Keepalive2 { stamp }));
    bytes.extend(message(6, None));
    bytes.extend(message(6, None));
    for seq in 7..=10 {
        bytes.extend(message(seq, None));
    }
    let mut want: Vec<String> = (1..=4).map(|s| format!("m{s}")).collect();
    want.push("KeepaliveReceived".into());
    want.extend((6..=10).map(|s| format!("m{s}")));
    for piece in [bytes.len(), 1, 9, 32, 48, 100] {
        for credit in [0, 3, 100] {
            let mut a = Acceptor::new();
            a.ready();
            if credit > 0 {
                a.conn.add_receive_credit(credit, 1 << 20);
            }
            let mut got = Vec::new();
            for part in bytes.chunks(piece) {
                a.conn.handle_bytes(a.now, Bytes::copy_from_slice(part));
                for _ in 0..1000 {
                    let Some(e) = a.conn.poll_event() else { break };
                    match e {
                        Event::NeedBudget { .. } => a.conn.grant_budget(a.now),
                        Event::Message(m) => got.push(format!("m{}", m.seq())),
                        other => got.push(other.name().to_string()),
                    }
                }
            }
            assert_eq!(got, want, "pieces of {piece}, credit for {credit}");
            assert_eq!(a.conn.duplicates_dropped(), 1, "pieces of {piece}, credit for {credit}");
            a.flush();
            assert_eq!(a.sent().last().map(Frame::tag), Some(Tag::KEEPALIVE2_ACK));
        }
    }
}

// The connector's checks: the acceptor's HELLO type, SERVER_IDENT's addresses, and the
// replies it refuses for good or answers with a backoff.
#[test]
fn connector_edges() {
    // A HELLO from an OSD when we dialled a monitor: the connection stops and is reset,
    // lossless or not (Ceph's handle_hello); a redial would reach the same daemon.
    let (mut c, now) = connector(Policy::lossless_client());
    c.handle_bytes(now, Bytes::from(acceptor_prefix(EntityType::OSD)));
    assert!(c.is_closed(), "{c}");
    assert_eq!(c.poll_timeout(), None, "{c}");
    assert!(!c.wants_read());
    let evs = events(&mut c);
    assert!(evs.iter().any(|e| matches!(e, Event::Reset)), "{evs:?}");

    // SERVER_IDENT not listing the address we dialled.
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&server_ident(v2_addr(6789, 3))));
    c.handle_bytes(now, Bytes::from(b));
    assert!(!c.is_open());
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(200)), "{c}");

    // IDENT_MISSING_FEATURES: refused for good.
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&IdentMissingFeatures { missing_features: 1 << 40 }));
    c.handle_bytes(now, Bytes::from(b));
    let evs = events(&mut c);
    assert!(evs.iter().any(|e| matches!(e, Event::Refused)), "{evs:?}");

    // WAIT: the race is lost; back off for ms_max_backoff.
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&Wait));
    c.handle_bytes(now, Bytes::from(b));
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(15)));

    // WAIT to a lossy connector: its session ends (ms_handle_reset), as Ceph's handle_wait
    // faults from WAIT, a state past those in which ProtocolV2 retries a lossy connect.
    let (mut c, now) = connector(Policy::lossy_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&Wait));
    c.handle_bytes(now, Bytes::from(b));
    let evs = events(&mut c);
    assert!(matches!(evs.first(), Some(Event::Reset)), "{evs:?}");
    assert!(matches!(evs.get(1), Some(Event::Closed { .. })), "{evs:?}");
    assert_eq!(closed_by_fault(&evs), Some(Fault::Wait));
    assert!(c.is_closed() && c.poll_timeout().is_none(), "{c}");

    // SESSION_RESET in answer to a CLIENT_IDENT (not a reconnect): a protocol error.
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&SessionReset { full: true }));
    c.handle_bytes(now, Bytes::from(b));
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(200)), "{c}");

    // And the good path: SERVER_IDENT → open, lossless, with the server's cookie.
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&server_ident(v2_addr(6789, 0))));
    c.handle_bytes(now, Bytes::from(b));
    assert!(c.is_open(), "{c}");
    assert_eq!(c.cookies().server, 77);
    assert_eq!(c.global_id(), 4100);
    let sent = frames(&output(&mut c), BANNER_LEN);
    let tags: Vec<Tag> = sent.iter().map(Frame::tag).collect();
    assert_eq!(tags, [Tag::HELLO, Tag::AUTH_REQUEST, Tag::AUTH_SIGNATURE, Tag::CLIENT_IDENT]);
    let ci = ClientIdent::from_segment(&sent[3].segments[0]).unwrap();
    assert!(!ci.is_lossy() && ci.client_cookie != 0);
    assert_eq!(ci.target_addr, v2_addr(6789, 0));
}

// AUTH_BAD_METHOD refusing our credentials (any result but -EOPNOTSUPP, which says the
// method or mode is not allowed: negotiation) counts in authorizers_refused_by_peer, not
// in authorizers_rejected (what we refused of peers). Ceph has no counter for either.
#[test]
fn a_connector_counts_the_credentials_its_peer_refused() {
    for (result, counted) in [(-13, 1), (-1, 1), (-95, 0)] {
        let config = Arc::new(node_config(1, 6800, 9));
        let (mut c, now) = connector_with(config.clone(), Policy::lossless_client());
        let mut b = Banner::OURS.to_bytes().to_vec();
        b.extend(frame(&Hello { entity_type: EntityType::MON, peer_addr: v2_addr(40000, 0) }));
        b.extend(frame(&AuthBadMethod {
            method: protocol::types::AUTH_NONE,
            result,
            allowed_methods: vec![protocol::types::AUTH_NONE],
            allowed_modes: vec![ConMode::CRC],
        }));
        c.handle_bytes(now, Bytes::from(b));
        assert!(!c.is_open());
        let n = config.counters.values();
        let got = (n.authorizers_refused_by_peer, n.authorizers_rejected);
        assert_eq!(got, (counted, 0), "result {result}");
    }
}

// The memory a message being received holds is reported (the messenger's
// `msgr_recv_held_bytes`): a large data segment grows in the frame decoder's assembly
// buffer, window by window, and everything is released when the message is delivered.
#[test]
fn assembly_buffer_counts_as_held_receive_memory() {
    let mut a = Acceptor::new();
    a.ready();
    assert_eq!(a.conn.receive_held_bytes(), 0, "nothing held between messages");
    let h = MsgHeader2 { seq: 1, msg_type: 2, flags: 3, ..MsgHeader2::default() };
    let h = Bytes::copy_from_slice(&h.to_bytes());
    let data = Bytes::from((0..256 << 10).map(|i: u32| (i % 253) as u8).collect::<Vec<_>>());
    let wire = raw_frame(Tag::MESSAGE, &[&h, &Bytes::new(), &Bytes::new(), &data]);
    // Preamble, segment 0 with its crc, and the first 64 KiB of the data.
    let mut at = 32 + 45 + (64 << 10);
    a.conn.handle_bytes(a.now, Bytes::copy_from_slice(&wire[..at]));
    let mut got = None;
    let (mut most_held, mut direct_reads) = (0, 0);
    for _ in 0..1000 {
        // Every window asked for is granted at once (a grant may ask for the next).
        for _ in 0..10 {
            for e in events(&mut a.conn) {
                match e {
                    Event::NeedBudget { .. } => a.conn.grant_budget(a.now),
                    Event::Message(m) => got = Some(m),
                    Event::Closed { .. } => panic!("closed: {e:?}"),
                    _ => {}
                }
            }
        }
        if got.is_some() {
            break;
        }
        let held = a.conn.receive_held_bytes();
        let arrived = at - (32 + 45);
        assert!(held >= arrived, "{arrived} bytes of the data arrived, {held} held");
        assert!(held <= 2 * arrived + (64 << 10), "{held} held for {arrived} arrived");
        most_held = most_held.max(held);
        // What a driver does: read straight into the assembly buffer, then the epilogue.
        let n = match a.conn.direct_read_buffer() {
            Some((buf, max)) => {
                let n = max.min(50_000).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                a.conn.handle_direct_read(a.now, n);
                direct_reads += 1;
                n
            }
            None => {
                let n = wire.len() - at;
                a.conn.handle_bytes(a.now, Bytes::copy_from_slice(&wire[at..]));
                n
            }
        };
        at += n;
    }
    let m = got.expect("the message is delivered");
    assert_eq!(m.data(), &data, "byte-exact");
    assert!(direct_reads >= 4, "the data grew by direct reads: {direct_reads}");
    assert!(most_held >= 256 << 10, "the whole segment was held at the end: {most_held}");
    assert_eq!(a.conn.receive_held_bytes(), 0, "released with the delivery");
}

/// Opens the session of connector `c` (its transport connected), queues a message, and
/// faults it: the reconnect resumes it with SESSION_RECONNECT, whose answer is the
/// caller's.
fn reconnecting_with_a_message_queued(c: &mut Connection, now: Instant) {
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&server_ident(v2_addr(6789, 0))));
    c.handle_bytes(now, Bytes::from(b));
    assert!(c.is_open());
    let _ = output(c);
    c.send_message(protocol::Message::new(2, Bytes::new()));
    // Cut once open a while (one cut straight after its open backs off first).
    c.handle_transport_closed(now + Duration::from_secs(1));
    assert!(events(c).iter().any(|e| matches!(e, Event::Reconnect { .. })));
    c.handle_transport_connected(now);
    let _ = output(c);
    c.handle_bytes(now, Bytes::from(acceptor_prefix(EntityType::MON)));
    let sent = frames(&output(c), 0);
    assert_eq!(sent.last().map(Frame::tag), Some(Tag::SESSION_RECONNECT));
}

// A SESSION_RETRY_GLOBAL past half of u32's range is refused, as v1's RETRY_GLOBAL:
// raised above it, the process-wide global_seq counter (v1's too, which carries its low
// 32 bits) wrapped, and every other connection paid retries until it caught up. A
// plausible one is followed.
#[test]
#[allow(clippy::disallowed_methods)]
fn an_implausible_retry_global_is_refused() {
    let plausible = u64::from(protocol::session::GLOBAL_SEQ_PLAUSIBLE);
    // A raise leaves headroom below what our acceptors take: raised to the limit, the
    // messenger's next attempts on every connection passed it and were refused.
    let raise_limit = u64::from(protocol::session::GLOBAL_SEQ_RAISE_LIMIT);
    for (gs, followed) in [
        (u64::MAX, false),
        (1 << 32, false),
        (plausible + 1, false),
        (plausible, false),
        (raise_limit + 1, false),
        (raise_limit, true),
        (1000, true),
    ] {
        let config = Arc::new(node_config(1, 6800, 9));
        let now = Instant::now();
        let mut c = Connection::connect(
            config.clone(),
            Policy::lossless_client(),
            v2_addr(6789, 0),
            EntityType::MON,
            now,
        );
        c.handle_transport_connected(now);
        reconnecting_with_a_message_queued(&mut c, now);
        let before = config.global_seq.current();
        c.handle_bytes(now, Bytes::from(frame(&SessionRetryGlobal { global_seq: gs })));
        let sent = frames(&output(&mut c), 0);
        if followed {
            assert_eq!(sent.last().map(Frame::tag), Some(Tag::SESSION_RECONNECT));
            assert_eq!(config.global_seq.current().0, gs + 1);
        } else {
            assert!(sent.is_empty(), "{gs}: answered");
            assert_eq!(config.global_seq.current(), before, "the counter kept");
            assert!(closed_by_fault(&events(&mut c)).is_some() || !c.wants_read(), "{gs}: faulted");
        }
    }
}

// IDENT_MISSING_FEATURES answers a CLIENT_IDENT only (Ceph's connector faults on it in
// any other state): in answer to our SESSION_RECONNECT it is a protocol error that
// faults and redials, keeping the session and its queued message, not a refusal that
// drops them.
#[test]
fn ident_missing_features_in_answer_to_a_reconnect_faults() {
    let (mut c, now) = connector(Policy::lossless_client());
    reconnecting_with_a_message_queued(&mut c, now);

    c.handle_bytes(now, Bytes::from(frame(&IdentMissingFeatures { missing_features: 1 << 40 })));
    let evs = events(&mut c);
    assert!(!evs.iter().any(|e| matches!(e, Event::Refused)), "{evs:?}");
    assert!(closed_by_fault(&evs).is_some() || !c.wants_read(), "faulted: {evs:?}");
    // The session survives: the next connect resumes it and the message goes out.
    let at = now + Duration::from_secs(1);
    c.handle_timeout(at);
    c.handle_transport_connected(at);
    let _ = output(&mut c);
    c.handle_bytes(at, Bytes::from(acceptor_prefix(EntityType::MON)));
    let sent = frames(&output(&mut c), 0);
    assert_eq!(sent.last().map(Frame::tag), Some(Tag::SESSION_RECONNECT), "{c}");
    c.handle_bytes(at, Bytes::from(frame(&SessionReconnectOk { msg_seq: 0 })));
    assert!(c.is_open(), "{c}");
    let sent = frames(&output(&mut c), 0);
    assert!(sent.iter().any(|f| f.tag() == Tag::MESSAGE), "the queued message resent: {sent:?}");
}

// A peer trickling a frame a byte per read. The driver's reads are slices of its worker's
// read buffer, a 64 KiB block shared by the worker's connections and renewed as they use
// it up: while the rest of the frame is awaited, what arrived must not keep alive the
// block each byte came in (a trickler pinned a block per byte, 64 KiB for each byte its
// buffer counted, for as long as it kept the frame open: in the open session, a control
// frame needs only a byte per idle timeout; the other connections' reads renew the block).
#[test]
fn a_trickled_frame_does_not_pin_a_read_block_per_byte() {
    const BLOCK: usize = 64 << 10;
    // A control frame within the limit, sent in the open session, and a MESSAGE's payload.
    let control = raw_frame(Tag::KEEPALIVE2, &[&Bytes::from(vec![7u8; 60 << 10])]);
    for (what, ready) in [("handshake", false), ("open", true)] {
        let mut a = Acceptor::new();
        if ready {
            a.ready();
        } else {
            a.hello();
        }
        let mut blocks = Vec::new();
        for &b in &control[..3000] {
            let mut block = vec![0u8; BLOCK];
            block[0] = b;
            let block = Bytes::from(block);
            a.conn.handle_bytes(a.now, block.slice(..1));
            blocks.push(block);
        }
        assert!(a.conn.wants_read(), "{what}: the frame is still awaited");
        assert!(!events(&mut a.conn).iter().any(|e| matches!(e, Event::Closed { .. })));
        let pinned = blocks.iter().filter(|b| !b.is_unique()).count();
        assert!(pinned <= 1, "{what}: 3000 bytes kept {pinned} blocks of 64 KiB alive");
    }
}

// The same with a messenger's larger read buffer (`Config::read_size`): reads shorter
// than a quarter of it that continue a waiting frame are copied too. Kept as they came
// when at least 16 KiB, whatever the read size, each piece of a trickled frame could keep
// alive a whole read buffer of up to 64 MiB (the largest `read_buffer`).
#[test]
fn pieces_under_a_quarter_of_a_large_read_size_do_not_pin_their_reads() {
    const BLOCK: usize = 1 << 20;
    const PIECE: usize = 20 << 10;
    let control = raw_frame(Tag::KEEPALIVE2, &[&Bytes::from(vec![7u8; 60 << 10])]);
    for (what, ready) in [("handshake", false), ("open", true)] {
        let mut config = node_config(0, 6789, 0);
        config.read_size = BLOCK;
        let mut a = Acceptor::with_config(config);
        if ready {
            a.ready();
        } else {
            a.hello();
        }
        let mut blocks = Vec::new();
        for piece in control[..control.len() - 1].chunks(PIECE) {
            let mut block = vec![0u8; BLOCK];
            block[..piece.len()].copy_from_slice(piece);
            let block = Bytes::from(block);
            a.conn.handle_bytes(a.now, block.slice(..piece.len()));
            blocks.push(block);
        }
        assert!(a.conn.wants_read(), "{what}: the frame is still awaited");
        assert!(!events(&mut a.conn).iter().any(|e| matches!(e, Event::Closed { .. })));
        let pinned = blocks.iter().filter(|b| !b.is_unique()).count();
        assert!(
            pinned <= 1,
            "{what}: {} pieces of 20 KiB kept {pinned} reads of 1 MiB",
            blocks.len()
        );
    }
}

/// Connects `c` again at `at` (its Reconnect taken) and resumes its session: the
/// acceptor answers SESSION_RECONNECT_OK.
fn resume_at(c: &mut Connection, at: Instant) {
    c.handle_transport_connected(at);
    let _ = output(c);
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&SessionReconnectOk { msg_seq: 0 }));
    c.handle_bytes(at, Bytes::from(b));
    assert!(c.is_open(), "{c}");
    let _ = output(c);
    let _ = events(c);
}

/// Cuts `c` at `at`: whether it redials at once (a Reconnect event now), else the
/// backoff it waits (its timer from `at`).
fn cut_at(c: &mut Connection, at: Instant) -> Option<Duration> {
    c.handle_transport_closed(at);
    if events(c).iter().any(|e| matches!(e, Event::Reconnect { .. })) {
        assert!(!c.is_backing_off(), "{c}");
        return None;
    }
    assert!(c.is_backing_off(), "{c}: neither redialling nor backing off");
    let until = c.poll_timeout().expect("a backoff timer");
    c.handle_timeout(until);
    assert!(events(c).iter().any(|e| matches!(e, Event::Reconnect { .. })), "{c}");
    Some(until - at)
}

// A session cut straight after it opened redials no sooner than the initial backoff
// after the open, each time: a server that opens every session and cuts it at once
// would otherwise be redialled as fast as the handshake goes (opening reset the backoff,
// and an open session's fault redials at once). A session cut after it stayed open for
// `initial_backoff` redials at once, as Ceph's does.
#[test]
fn a_session_cut_as_it_opens_backs_off_and_one_open_a_while_redials_at_once() {
    let initial = Duration::from_millis(200);
    let soon = Duration::from_millis(1);
    let (mut c, now) = connector(Policy::lossless_client());
    let mut b = acceptor_prefix(EntityType::MON);
    b.extend(frame(&server_ident(v2_addr(6789, 0))));
    c.handle_bytes(now, Bytes::from(b));
    assert!(c.is_open());
    let _ = output(&mut c);
    let _ = events(&mut c);
    c.send_message(protocol::Message::new(2, Bytes::new()));
    let _ = output(&mut c);

    // Cut 1 ms after the open, three times in a row: the redial 200 ms after each open
    // (a steady rate, not a growing backoff: a network that cuts often gets its session
    // back as soon).
    let mut t = now;
    for _ in 0..3 {
        assert_eq!(cut_at(&mut c, t + soon), Some(initial - soon), "{c}");
        t += initial;
        resume_at(&mut c, t);
    }
    // Cut 150 ms after the open: what is left of the 200 ms.
    let late = Duration::from_millis(150);
    assert_eq!(cut_at(&mut c, t + late), Some(initial - late), "{c}");
    t += initial;
    resume_at(&mut c, t);
    // Open for the initial backoff: at once.
    t += initial;
    assert_eq!(cut_at(&mut c, t), None, "a session open a while redials at once: {c}");
    resume_at(&mut c, t);
    // Its next cut straight after the open waits again; a connect attempt failing after
    // that backs off as the first failed attempt does.
    assert_eq!(cut_at(&mut c, t + soon), Some(initial - soon), "{c}");
    t += initial;
    c.handle_transport_connected(t);
    c.handle_transport_closed(t);
    assert_eq!(c.poll_timeout(), Some(t + initial), "{c}");
    assert_eq!(c.pending_messages(), 1, "the message stays queued: {c}");
}

// A session marked lossy (`mark_disposable`) after a cut whose outcome was not taken yet
// is reset, as a lossy session's cut is: whether the cut redials at once (open a while)
// or backs off (cut as it opened, a backoff that is that cut's outcome until the redial).
#[test]
fn marked_lossy_after_a_cut_is_reset_whether_it_redials_at_once_or_backs_off() {
    for open_for in [Duration::from_secs(1), Duration::from_millis(1)] {
        let (mut c, now) = connector(Policy::lossless_client());
        let mut b = acceptor_prefix(EntityType::MON);
        b.extend(frame(&server_ident(v2_addr(6789, 0))));
        c.handle_bytes(now, Bytes::from(b));
        assert!(c.is_open());
        let _ = output(&mut c);
        let _ = events(&mut c);
        c.handle_transport_closed(now + open_for);
        let young = open_for < Duration::from_millis(200);
        assert_eq!(c.is_backing_off(), young, "open {open_for:?}: {c}");
        c.mark_lossy();
        let evs = events(&mut c);
        assert!(evs.iter().any(|e| matches!(e, Event::Reset)), "open {open_for:?}: {evs:?}");
        assert!(c.is_closed(), "open {open_for:?}: {c}");
    }
}

/// `[::ffff:127.0.0.1]:port`: how a dual-stack `[::]` listener sees an IPv4 peer.
fn v4_mapped(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), port)
}

// A connector with a blank IP (a client, or a messenger bound to `0.0.0.0`) learns its
// IP from the acceptor's HELLO (`ms_learn_addr_from_peer`). An acceptor on a dual-stack
// `[::]` listener (Ceph's, or a hostile one) tells an IPv4 connector it is at
// `[::ffff:127.0.0.1]`: the connector is reached at `127.0.0.1`, and announcing the
// IPv6 form its peer would key its session there and dial it back there, to be refused
// (our listener checks a CLIENT_IDENT's target against the IPv4 address it was reached
// at).
#[test]
fn a_connector_learns_an_ipv4_mapped_address_as_the_ipv4_one() {
    let mut config = node_config(1, 6800, 9);
    config.my_addrs = EntityAddrVec::single(EntityAddr {
        ty: AddrType::MSGR2,
        nonce: 9,
        addr: Some(SocketAddr::from(([0, 0, 0, 0], 6800))),
    });
    let (mut c, now) = connector_with(Arc::new(config), Policy::lossless_client());
    let mut b = Banner::OURS.to_bytes().to_vec();
    let seen = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(v4_mapped(40000)) };
    b.extend(frame(&Hello { entity_type: EntityType::MON, peer_addr: seen }));
    b.extend(frame(&AuthDone { global_id: 4100, con_mode: ConMode::CRC, payload: Bytes::new() }));
    b.extend(frame(&AuthSignature::default()));
    c.handle_bytes(now, Bytes::from(b));
    let sent = frames(&output(&mut c), BANNER_LEN);
    let ci = sent.iter().find(|f| f.tag() == Tag::CLIENT_IDENT).expect("a CLIENT_IDENT");
    let ci = ClientIdent::from_segment(&ci.segments[0]).unwrap();
    assert_eq!(ci.addrs.addrs, [v2_addr(6800, 9)], "we announce the address we are reached at");
}

// And the acceptor on such a listener tells an IPv4 peer its IPv4 address in HELLO.
#[test]
#[allow(clippy::disallowed_methods)]
fn an_acceptor_tells_an_ipv4_peer_of_a_dual_stack_listener_its_ipv4_address() {
    let now = Instant::now();
    let config = Arc::new(node_config(0, 6789, 0));
    let mut a = Connection::accept(config, v4_mapped(40000), v4_mapped(6789), now);
    let mut wire = output(&mut a);
    a.handle_bytes(now, Bytes::copy_from_slice(&Banner::OURS.to_bytes()));
    wire.extend(output(&mut a));
    let sent = frames(&wire, BANNER_LEN);
    let hello = sent.iter().find(|f| f.tag() == Tag::HELLO).expect("a HELLO");
    let hello = Hello::from_segment(&hello.segments[0]).unwrap();
    assert_eq!(hello.peer_addr.addr, Some(sa(40000)));
}
