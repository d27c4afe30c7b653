//! Fuzz bodies for the sans-IO v1 session state machine (`protocol::v1`), both sides,
//! handshake included.
//!
//! Input layout: byte 0 seeds the chunking of the stream (and, for the accept side, its
//! bits 0x40 and 0x20 pick a cephx acceptor, see [`accept_config`]), byte 1 picks how
//! the driver answers the machine's requests (accept decision, authorizer verdict,
//! policy); the rest is the byte stream the peer sends. Properties checked on every input:
//! - no panic, whatever the bytes and however they are split;
//! - the machine stays bounded: events per input chunk and bytes to transmit are
//!   bounded, reading stops while a request is unanswered;
//! - nothing is reported after [`Event::Closed`], and a closed machine wants nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::auth::cephx::{CephxProvider, WallClock};
use protocol::auth::AuthConfig;
use protocol::encoding::UTime;
use protocol::message::DecodeLimits;
use protocol::types::AuthEntityName;
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::v1::Connection;
use protocol::{
    decide, AuthVerdict, Config, ConnectSeq, Decision, Event, ExistingSession, ExistingState,
    GlobalSeq, Policy,
};

const POLICIES: [Policy; 6] = [
    Policy::stateful_server(),
    Policy::stateless_server(),
    Policy::lossless_peer(),
    Policy::lossless_peer_reuse(),
    Policy::lossy_client(),
    Policy::lossless_client(),
];

fn sa(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(my_type: EntityType, port: u16, nonce: u32) -> Arc<Config> {
    let mut c = Config::new(EntityName::new(my_type, 0), EntityAddr::legacy(sa(port), nonce));
    // Small limits keep runs cheap and exercise the checks.
    c.limits = DecodeLimits { max_front: 4096, max_middle: 1024, max_data: 8192 };
    Arc::new(c)
}

/// Splits `stream` into chunks (sizes from an xorshift seeded by `seed`).
fn chunks(seed: u8, stream: &[u8]) -> Vec<Bytes> {
    let all = Bytes::copy_from_slice(stream);
    let mut state = u32::from(seed) | 0x100;
    let mut at = 0;
    let mut out = Vec::new();
    while at < all.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = if state % 4 == 0 { all.len() - at } else { 1 + (state % 48) as usize };
        let n = n.min(all.len() - at);
        out.push(all.slice(at..at + n));
        at += n;
    }
    out
}

/// Answers the machine's requests and checks the event invariants. Returns whether it
/// closed.
fn drain_events(conn: &mut Connection, now: Instant, choice: u8, closed: &mut bool) -> usize {
    let mut messages = 0;
    for _ in 0..10_000 {
        let Some(ev) = conn.poll_event() else { return messages };
        assert!(!*closed, "event after Closed: {ev:?}");
        match ev {
            Event::AcceptRequest(req) => {
                let policy = POLICIES[usize::from(choice) % POLICIES.len()];
                let existing = (choice & 0x40 != 0).then_some(ExistingSession {
                    state: [
                        ExistingState::Open,
                        ExistingState::Standby,
                        ExistingState::Connecting,
                        ExistingState::Closed,
                    ][usize::from(choice >> 4) & 3],
                    connect_seq: ConnectSeq(u64::from(choice & 7)),
                    peer_global_seq: GlobalSeq(u64::from(choice >> 3)),
                    lossy: choice & 0x80 != 0,
                    server_side: choice & 8 != 0,
                    ..ExistingSession::default()
                });
                let my = EntityAddr::legacy(sa(6789), 0);
                let d = decide(&req, existing.as_ref(), &policy, &my.into());
                let transferred = matches!(d, Decision::Replace { reset_existing: false, .. })
                    .then(|| {
                        // A session from a throwaway machine, as the messenger would move.
                        let mut old = Connection::connect(
                            config(EntityType::MON, 6789, 0),
                            policy,
                            req.peer_addr,
                            req.peer_type,
                            now,
                        );
                        old.take_session()
                    })
                    .flatten();
                conn.handle_accept_decision(now, policy, d, transferred);
            }
            Event::VerifyAuthorizer { .. } => {
                let verdict = if choice & 0x20 != 0 {
                    AuthVerdict::Reject
                } else {
                    AuthVerdict::Accept { reply: Bytes::from_static(b"ok") }
                };
                conn.handle_authorizer_verdict(now, verdict);
            }
            Event::NeedBudget { bytes, .. } => {
                assert!(bytes <= 4096 + 1024 + 8192, "budget above the limits: {bytes}");
                conn.grant_budget(now);
            }
            Event::Reconnect { .. } => conn.handle_transport_connected(now),
            Event::Closed { .. } => *closed = true,
            Event::Message(_) => messages += 1,
            _ => {}
        }
    }
    panic!("unbounded events");
}

/// Feeds the input; returns how many messages were delivered.
fn run(conn: &mut Connection, data: &[u8], connect_side: bool) -> usize {
    let [seed, choice, stream @ ..] = data else { return 0 };
    let mut messages = 0;
    let mut now = Instant::now();
    let mut closed = false;
    if connect_side {
        conn.handle_transport_connected(now);
    }
    let mut segs = Vec::new();
    for chunk in chunks(*seed, stream) {
        messages += drain_events(conn, now, *choice, &mut closed);
        segs.clear();
        let mut out = 0;
        for _ in 0..16 {
            let n = conn.poll_transmit(&mut segs);
            if n == 0 {
                break;
            }
            out += n;
        }
        assert!(out < 4 << 20, "transmit output unbounded: {out}");
        if closed {
            assert!(conn.is_closed() && !conn.wants_read() && conn.poll_timeout().is_none());
            return messages;
        }
        if conn.wants_read() {
            conn.handle_bytes(now, chunk);
        }
        if let Some(t) = conn.poll_timeout() {
            // Occasionally let a timer fire (handshake, idle, keepalive, backoff).
            if chunk_len_odd(*seed) {
                now = now.max(t);
                conn.handle_timeout(now);
            }
        }
    }
    messages += drain_events(conn, now, *choice, &mut closed);
    conn.handle_transport_closed(now + Duration::from_secs(1));
    messages + drain_events(conn, now, *choice, &mut closed)
}

fn chunk_len_odd(seed: u8) -> bool {
    seed & 0x80 != 0
}

/// The acceptor's config for seed byte `seed`: bit 0x40 clear, no auth provider (the
/// driver verifies authorizers); set, a cephx provider without keys (it refuses every
/// cephx authorizer itself), whose config requires signatures and, bit 0x20 clear, cephx
/// v2 (Ceph's default), so a cephx connect is held to `v1_required_features`
/// (MSG_AUTH, CEPHX_V2) before its authorizer is looked at.
fn accept_config(seed: u8, now: Instant) -> Arc<Config> {
    let mut c = config(EntityType::MON, 6789, 0);
    if seed & 0x40 != 0 {
        let mut auth = AuthConfig::ceph_defaults();
        auth.cephx_require_signatures = true;
        if seed & 0x20 != 0 {
            auth.cephx_require_version = 1;
            auth.cephx_cluster_require_version = 1;
            auth.cephx_service_require_version = 1;
        }
        let clock = WallClock::anchored(now, UTime::new(1_700_000_000, 0));
        let rng: protocol::auth::cephx::RngSource =
            Arc::new(|| Box::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7)) as _);
        let name = AuthEntityName::new(EntityType::MON, "a");
        Arc::make_mut(&mut c).auth = Arc::new(CephxProvider::new(name, auth, clock, rng));
    }
    c
}

/// The accept side fed a connector's bytes (banner, address, connect messages, in_seq,
/// then open-session frames).
/// Returns how many messages were delivered.
pub fn v1_accept(data: &[u8]) -> usize {
    let now = Instant::now();
    let seed = data.first().copied().unwrap_or(0);
    let mut conn = Connection::accept(accept_config(seed, now), sa(40000), sa(6789), now);
    run(&mut conn, data, false)
}

/// The connect side fed an acceptor's bytes (banner block, connect replies, in_seq,
/// then open-session frames). Returns how many messages were delivered.
pub fn v1_connect(data: &[u8]) -> usize {
    let Some(choice) = data.get(1) else { return 0 };
    let policy = POLICIES[usize::from(*choice) % POLICIES.len()];
    let peer = EntityAddr::legacy(sa(6789), 0);
    let mut conn = Connection::connect(
        config(EntityType::CLIENT, 0, 7),
        policy,
        peer,
        EntityType::MON,
        Instant::now(),
    );
    run(&mut conn, data, true)
}

/// The bytes each side receives in a real conversation (handshake + a few messages,
/// keepalives and acks both ways), for seeds: `(toward acceptor, toward connector)`.
pub fn sample_streams() -> (Vec<u8>, Vec<u8>) {
    let now = Instant::now();
    let acc_cfg = config(EntityType::MON, 6789, 0);
    let mut a = Connection::accept(acc_cfg, sa(40000), sa(6789), now);
    let peer = EntityAddr::legacy(sa(6789), 0);
    let mut c = Connection::connect(
        config(EntityType::OSD, 6800, 7),
        Policy::lossless_peer(),
        peer,
        EntityType::MON,
        now,
    );
    c.handle_transport_connected(now);
    for i in 0..3u8 {
        let mut m = protocol::Message::new(2, Bytes::from(vec![i; 10 + usize::from(i)]));
        m.set_priority(127);
        c.send_message(m.clone());
        a.send_message(m);
    }
    c.send_keepalive(protocol::wire::KeepaliveStamp { sec: 1, nsec: 2 });
    let (mut to_a, mut to_c) = (Vec::new(), Vec::new());
    let (mut ca, mut cc) = (false, false);
    for _ in 0..50 {
        let mut segs = Vec::new();
        c.poll_transmit(&mut segs);
        for s in segs.drain(..) {
            to_a.extend_from_slice(&s);
            a.handle_bytes(now, s);
        }
        drain_events(&mut a, now, 2, &mut ca);
        a.poll_transmit(&mut segs);
        for s in segs.drain(..) {
            to_c.extend_from_slice(&s);
            c.handle_bytes(now, s);
        }
        drain_events(&mut c, now, 2, &mut cc);
    }
    (to_a, to_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_prefix(seed: u8, choice: u8, stream: &[u8]) -> Vec<u8> {
        let mut v = vec![seed, choice];
        v.extend_from_slice(stream);
        v
    }

    /// Replays real conversations, every prefix of them, and single-byte corruptions.
    #[test]
    fn sample_conversations_replay_cleanly() {
        let (to_a, to_c) = sample_streams();
        assert!(to_a.len() > 186 && to_c.len() > 315, "{} {}", to_a.len(), to_c.len());
        // Unchanged, the conversation opens and delivers the three messages each way.
        assert_eq!(v1_accept(&with_prefix(0, 2, &to_a)), 3);
        assert_eq!(v1_connect(&with_prefix(5, 2, &to_c)), 3);
        // A listener serving both protocols sniffs the banner and serves it all the same.
        assert_eq!(crate::v2::accept_any(&with_prefix(0, 4, &to_a)), 3);
        for cut in (0..to_a.len()).step_by(5) {
            crate::v2::accept_any(&with_prefix(3, 4, &to_a[..cut]));
        }
        for choice in [0u8, 2, 3, 0x21, 0x42, 0x53, 0xe5] {
            for seed in [0u8, 7, 0x80, 0xff] {
                v1_accept(&with_prefix(seed, choice, &to_a));
                v1_connect(&with_prefix(seed, choice, &to_c));
            }
        }
        for cut in 0..to_a.len() {
            v1_accept(&with_prefix(3, 2, &to_a[..cut]));
        }
        for cut in 0..to_c.len() {
            v1_connect(&with_prefix(3, 2, &to_c[..cut]));
        }
        for at in 0..to_a.len().max(to_c.len()) {
            let mut a = to_a.clone();
            if let Some(b) = a.get_mut(at) {
                *b ^= 0x5a;
                v1_accept(&with_prefix(0x81, 2, &a));
            }
            let mut c = to_c.clone();
            if let Some(b) = c.get_mut(at) {
                *b ^= 0x5a;
                v1_connect(&with_prefix(0x81, 2, &c));
            }
        }
    }

    /// The sample conversation toward the acceptor with its connect carrying a cephx
    /// authorizer (method 2, same bytes) and without `features_off`.
    fn cephx_connect(features_off: protocol::types::Features) -> Vec<u8> {
        use protocol::types::LEGACY_ADDR_LEN;
        use protocol::wire::{ConnectMsg, BANNER_LEN};
        let (mut to_a, _) = sample_streams();
        let at = BANNER_LEN + LEGACY_ADDR_LEN;
        let (mut msg, auth, _) =
            ConnectMsg::decode_with_authorizer(&to_a[at..], 4096).expect("the sample's connect");
        let auth = auth.to_vec();
        msg.authorizer_protocol = protocol::types::AUTH_CEPHX;
        msg.features = msg.features & !features_off;
        let mut out = Vec::new();
        msg.encode_with_authorizer(&auth, &mut out);
        // The connect only: what follows would be read as the next connect.
        to_a.truncate(at);
        to_a.extend_from_slice(&out);
        to_a
    }

    /// With byte 0's bit 0x40 the acceptor holds a cephx connect to its provider's v1
    /// required features: one lacking MSG_AUTH is answered FEATURES (the target reaches
    /// `required_of`'s non-empty case); the same connect with the bit clear is not.
    #[test]
    fn the_cephx_acceptor_answers_features_to_a_connect_lacking_msg_auth() {
        use protocol::types::Features;
        use protocol::wire::{ConnectReply, Tag, ACCEPTOR_BLOCK_LEN};
        let stream = cephx_connect(Features::MSG_AUTH);
        let reply_to = |seed: u8| {
            let now = Instant::now();
            let mut conn = Connection::accept(accept_config(seed, now), sa(40000), sa(6789), now);
            let mut closed = false;
            let mut segs = Vec::new();
            while conn.poll_transmit(&mut segs) > 0 {}
            conn.handle_bytes(now, Bytes::from(stream.clone()));
            drain_events(&mut conn, now, 2, &mut closed);
            assert!(!closed);
            while conn.poll_transmit(&mut segs) > 0 {}
            let out: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
            ConnectReply::decode(&out[ACCEPTOR_BLOCK_LEN..]).expect("a connect reply").0
        };
        let reply = reply_to(0x40);
        assert_eq!(reply.tag, Tag::FEATURES, "{reply:?}");
        assert!(reply.features.contains(Features::MSG_AUTH | Features::CEPHX_V2), "{reply:?}");
        assert_ne!(reply_to(0).tag, Tag::FEATURES);
    }

    /// The checked-in seeds (`corpus/v1_accept`, `corpus/v1_connect`) replay cleanly.
    #[test]
    fn v1_seed_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in
            [("v1_accept", v1_accept as fn(&[u8]) -> usize), ("v1_connect", v1_connect)]
        {
            let mut seeds = 0;
            for entry in std::fs::read_dir(root.join(name)).into_iter().flatten().flatten() {
                let data = std::fs::read(entry.path()).unwrap_or_default();
                target(&data);
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds for {name}");
        }
    }

    /// Stand-in for a fuzzing session without cargo-fuzz: mutated real conversations.
    /// `FUZZ_ITERS=200000 cargo test --release -- --ignored v1_random_mutations`.
    #[test]
    #[ignore]
    fn v1_random_mutations() {
        let iters: u64 =
            std::env::var("FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000);
        let seed: u64 =
            std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
        eprintln!("v1_random_mutations: seed {seed}, {iters} inputs per side");
        let (to_a, to_c) = sample_streams();
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..iters {
            for (stream, accept) in [(&to_a, true), (&to_c, false)] {
                let mut buf = with_prefix(next() as u8, next() as u8, stream);
                for _ in 0..(next() % 6) {
                    if buf.len() <= 2 {
                        break;
                    }
                    let at = 2 + (next() % (buf.len() as u64 - 2)) as usize;
                    match next() % 4 {
                        0 => buf[at] ^= 1 << (next() % 8),
                        1 => buf.truncate(at),
                        2 => buf[at] = next() as u8,
                        _ => buf.insert(at, next() as u8),
                    }
                }
                if accept {
                    v1_accept(&buf);
                } else {
                    v1_connect(&buf);
                }
            }
        }
    }

    /// Writes the seed corpus from [`sample_streams`]:
    /// `cargo test -- --ignored write_v1_seeds`.
    #[test]
    #[ignore]
    fn write_v1_seeds() {
        let (to_a, to_c) = sample_streams();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, stream) in [("v1_accept", &to_a), ("v1_connect", &to_c)] {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            for (file, choice) in [("conversation", 2u8), ("stateless", 1), ("reject_auth", 0x22)] {
                std::fs::write(dir.join(file), with_prefix(0, choice, stream))
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}
