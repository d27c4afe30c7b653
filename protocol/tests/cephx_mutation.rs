//! Mutation fuzzing of HANDSHAKES authenticated with the real cephx provider on both
//! ends (not the test auth): msgr v1 connects carrying cephx authorizers between two
//! OSDs (challenge round, signed messages), msgr2 AUTH_MODE_AUTHORIZER between two OSDs
//! in crc and secure mode, and msgr2 AUTH_MODE_MON from client.admin to a monitor with
//! a key server (the get-auth-session-key exchange, tickets issued in AUTH_DONE) in crc
//! and secure mode. The bytes of the handshakes are mutated as in handshake_mutation.rs
//! (common::mutation).
//!
//! Held on every run: no panic, no hang (the watchdog), no livelock, bounded memory;
//! every open session names the honest identity: an accepted cephx peer is the entity
//! and global id its ticket or key says, with that entity's caps (never another, never
//! none where cephx is required), and in msgr2 both ends agree on the global id; once
//! the mutation stops, every handshake left ends on its own, and over msgr2 (whose
//! handshakes are signed) what was sent after the mutation stopped on lossless
//! sessions arrives, unless a session end was reported.
//!
//! `MUT_SEED`, `MUT_RUNS` and `MUT_ONE=<mode 0-4>:<seed>` (with `MUT_DEBUG`) as in the
//! other mutation fuzzers.

#![allow(clippy::unwrap_used)]
// The virtual clock starts at the real one (`Instant` has no other constructor); the
// machines under test only ever see it as an input. protocol/clippy.toml bans clock reads.
#![allow(clippy::disallowed_methods)]

extern crate asyncmsgr_protocol as protocol;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mutation::{
    check_held, check_in_flight, check_not_stuck, dump, dumper, prepare, random_message, reports,
    Fuzzer, OrderCheck, Outcome, Sizes, NODE1_IDS, OPS,
};
use protocol::auth::cephx::ticket::AuthCapsInfo;
use protocol::auth::cephx::{
    CephxProvider, KeyServer, RngSource, RotatingKeyStore, SharedKeyStore, TicketStore, WallClock,
};
use protocol::auth::{AuthConfig, AuthPeer, AuthProvider, ConMode, ConModes, CryptoKey};
use protocol::auth::{KeyEntry, KeyRing};
use protocol::encoding::UTime;
use protocol::testing::{node_config, numbers, Pair};
use protocol::types::{AuthEntityName, EntityName, EntityType};
use protocol::{Config, Policy, ProtocolVersion};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};

/// The handshakes fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// msgr v1, osd.0 and osd.1 with cephx authorizers.
    V1Osd,
    /// msgr2 crc, osd.0 and osd.1 (AUTH_MODE_AUTHORIZER).
    CrcOsd,
    /// msgr2 secure, osd.0 and osd.1.
    SecureOsd,
    /// msgr2 crc, client.admin to mon.1 (AUTH_MODE_MON, a key server).
    CrcMon,
    /// msgr2 secure, client.admin to mon.1.
    SecureMon,
}

const MODES: [Mode; 5] =
    [Mode::V1Osd, Mode::CrcOsd, Mode::SecureOsd, Mode::CrcMon, Mode::SecureMon];

const SIZES: Sizes = Sizes { front: 4000, data: 70_000, front_and_data: false };
const HELD_BOUND: usize = 256 << 10;
const IN_FLIGHT_BOUND: usize = 8 << 20;

/// Daemon pairs: both may dial. Monitor pairs: the client dials.
const OSD_POLICIES: [(Policy, Policy); 3] = [
    (Policy::lossless_peer(), Policy::lossless_peer()),
    (Policy::lossless_peer_reuse(), Policy::lossless_peer_reuse()),
    (Policy::lossless_client(), Policy::stateful_server()),
];

const FUZZER: Fuzzer<Mode> = Fuzzer {
    name: "cephx_mutation",
    default_seed: 0xce9f_0001,
    modes: &MODES,
    policies: &OSD_POLICIES,
    ops: OPS.len(),
    history: 32,
    kinds: |mode| {
        if matches!(mode, Mode::SecureOsd | Mode::SecureMon) {
            OPS.len()
        } else {
            OPS.len() - 1
        }
    },
    rare: 4,
    run,
};

const WALL0: UTime = UTime::new(1_700_000_000, 0);
const OSD0_GID: u64 = 4100;
const OSD1_GID: u64 = 4101;

fn rng_source(seed: u64) -> RngSource {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(seed));
    Arc::new(move || {
        let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(StdRng::seed_from_u64(s)) as _
    })
}

fn auth_config(modes: &[ConMode]) -> AuthConfig {
    let mut c = AuthConfig::ceph_defaults();
    c.set_all_modes(&ConModes(modes.to_vec()));
    // Tickets outlive the run's virtual hours.
    c.auth_service_ticket_ttl = Duration::from_secs(20 * 24 * 3600);
    c.auth_mon_ticket_ttl = Duration::from_secs(20 * 24 * 3600);
    c
}

fn node(version: ProtocolVersion, ty: EntityType, num: i64, auth: Arc<dyn AuthProvider>) -> Config {
    let mut c = node_config(version, num, 6789 + num as u16, num as u32 + 1);
    c.my_name = EntityName::new(ty, num);
    c.auth = auth;
    c
}

/// The pair of `mode` on `start`, and what each node's accepted peer must be (`None`:
/// that node accepts no one).
fn setup(
    seed: u64,
    mode: Mode,
    p0: Policy,
    p1: Policy,
    start: Instant,
) -> (Pair, [Option<AuthPeer>; 2]) {
    let modes: &[ConMode] = match mode {
        Mode::SecureOsd | Mode::SecureMon => &[ConMode::SECURE],
        _ => &[ConMode::CRC],
    };
    let config = auth_config(modes);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut ring = KeyRing::new();
    let admin = CryptoKey::generate(WALL0, &mut rng);
    let admin_name = AuthEntityName::new(EntityType::CLIENT, "admin");
    ring.insert(
        admin_name.clone(),
        KeyEntry::new(admin.clone()).with_cap("mon", "allow *").with_cap("osd", "allow *"),
    );
    for id in ["0", "1"] {
        ring.insert(
            AuthEntityName::new(EntityType::OSD, id),
            KeyEntry::new(CryptoKey::generate(WALL0, &mut rng))
                .with_cap("mon", "allow profile osd")
                .with_cap("osd", "allow rw"),
        );
    }
    let server = Arc::new(KeyServer::new(ring, config.clone(), WALL0, &mut rng));
    let clock = WallClock::anchored(start, WALL0);
    match mode {
        Mode::V1Osd | Mode::CrcOsd | Mode::SecureOsd => {
            let version =
                if mode == Mode::V1Osd { ProtocolVersion::V1 } else { ProtocolVersion::V2 };
            let keys = Arc::new(SharedKeyStore::new(RotatingKeyStore::new(
                EntityType::OSD,
                server.rotating(EntityType::OSD).unwrap(),
            )));
            let mut peers = [None, None];
            let mut configs = Vec::new();
            for (num, gid) in [(0i64, OSD0_GID), (1, OSD1_GID)] {
                let name = AuthEntityName::new(EntityType::OSD, num.to_string());
                let t =
                    server.service_ticket(&name, gid, EntityType::OSD, WALL0, &mut rng).unwrap();
                let tickets = Arc::new(TicketStore::new(gid));
                tickets.insert(gid, t);
                let provider = CephxProvider::new(
                    name.clone(),
                    config.clone(),
                    clock,
                    rng_source(seed.wrapping_mul(7) + num as u64 * 1000),
                )
                .with_tickets(tickets)
                .with_keys(keys.clone());
                configs.push(node(version, EntityType::OSD, num, Arc::new(provider)));
                // What the other node's acceptor must see.
                peers[1 - num as usize] = Some(AuthPeer {
                    name,
                    global_id: gid,
                    caps: AuthCapsInfo::from_cap_string("allow rw"),
                });
            }
            let c1 = configs.pop().unwrap();
            let c0 = configs.pop().unwrap();
            (Pair::with_configs(start, version, c0, p0, c1, p1), peers)
        }
        Mode::CrcMon | Mode::SecureMon => {
            let store = Arc::new(TicketStore::default());
            let client = CephxProvider::new(
                admin_name.clone(),
                config.clone(),
                clock,
                rng_source(seed.wrapping_mul(11)),
            )
            .with_monitor_key(admin, store);
            let mon = CephxProvider::new(
                AuthEntityName::new(EntityType::MON, "1"),
                config.clone(),
                clock,
                rng_source(seed.wrapping_mul(13)),
            )
            .with_key_server(server.clone());
            let caps = server.caps_for(&admin_name, EntityType::MON);
            let c0 = node(ProtocolVersion::V2, EntityType::CLIENT, 0, Arc::new(client));
            let c1 = node(ProtocolVersion::V2, EntityType::MON, 1, Arc::new(mon));
            let p = Pair::with_configs(
                start,
                ProtocolVersion::V2,
                c0,
                Policy::lossy_client(),
                c1,
                Policy::stateful_server(),
            );
            // The global id is the monitor's to give: checked by agreement instead.
            (p, [None, Some(AuthPeer { name: admin_name, global_id: 0, caps })])
        }
    }
}

/// Every open endpoint's authenticated peer is the honest one.
fn check_identity(ctx: &str, p: &Pair, mode: Mode, want: &[Option<AuthPeer>; 2], dump: impl Fn()) {
    let mon = matches!(mode, Mode::CrcMon | Mode::SecureMon);
    for (i, e) in p.eps.iter().enumerate() {
        // Judged on the side its current link has it on (a lossless peer's accepted
        // endpoint dials itself after a fault).
        let Some(link) = e.link.filter(|_| e.alive && e.conn.is_open()) else { continue };
        let accepted = p.links[link].ends[1] == i;
        let got = e.conn.peer_auth();
        let bad = match (&want[e.node], got) {
            (_, None) if !accepted => false,
            (None, Some(_)) => true,
            (Some(_), None) => true,
            (Some(w), Some(g)) => {
                g.name != w.name || g.caps != w.caps || (!mon && g.global_id != w.global_id)
            }
            (None, None) => false,
        };
        if bad {
            dump();
            panic!(
                "{ctx}: endpoint {i} on node {} open with peer {got:?}, want {:?}",
                e.node, want[e.node]
            );
        }
        if mode != Mode::V1Osd {
            // Both ends of a link agree on the global id (the acceptor's AuthPeer's).
            if let (Some(g), Some(l)) = (got, e.link) {
                let other = p.links[l].ends.iter().copied().find(|&o| o != i);
                if let Some(o) = other {
                    let oc = &p.eps[o].conn;
                    let og = oc.as_v2().map(|c| c.global_id());
                    if oc.is_open() && p.eps[o].link == Some(l) && og != Some(g.global_id) {
                        dump();
                        panic!(
                            "{ctx}: endpoint {i} accepted global id {} but its peer {o} has {og:?}",
                            g.global_id
                        );
                    }
                }
            }
        }
    }
}

fn run(seed: u64, mode: Mode, p0: Policy, p1: Policy) -> Outcome {
    let (p, want) = setup(seed, mode, p0, p1, Instant::now());
    let (mut rng, mut p) = prepare(seed, p);
    let (p0, p1) = (p.nodes[0].policy, p.nodes[1].policy);
    p.mutate_handshakes_only = true;
    let secure = matches!(mode, Mode::SecureOsd | Mode::SecureMon);
    let mut m = FUZZER.mutation(seed);
    m.active = true;
    m.toward = match rng.gen_range(0..3) {
        0 => [true, false],
        1 => [false, true],
        _ => [true, true],
    };
    m.rate = [0.05, 0.2, 0.5, 1.0][rng.gen_range(0..4)];
    m.stale_writes = secure;
    let mutation = m.install(&mut p);
    let ctx = format!("seed {seed} {mode:?} {p0:?}/{p1:?}");
    let lossless = !p0.lossy && !p1.lossy;
    let v1 = mode == Mode::V1Osd;

    let may_send = |p: &Pair, node: usize| {
        let policy = if node == 0 { p0 } else { p1 };
        !policy.server || p.session_ep(node).is_some()
    };
    let mut sent = [0u32; 2];
    let send = |p: &mut Pair, rng: &mut SmallRng, sent: &mut [u32; 2], node: usize| {
        if may_send(p, node) {
            let base = if node == 0 { 0 } else { NODE1_IDS };
            p.send(node, random_message(rng, base + sent[node], &SIZES));
            sent[node] += 1;
        }
    };
    let checks = |p: &Pair, order: &mut OrderCheck| {
        check_held(&ctx, p, HELD_BOUND, dumper(p, &mutation));
        check_in_flight(&ctx, p, IN_FLIGHT_BOUND, dumper(p, &mutation));
        check_identity(&ctx, p, mode, &want, dumper(p, &mutation));
        if !v1 {
            order.check(&ctx, p, dumper(p, &mutation));
        }
    };
    let mut order = OrderCheck::default();
    let rounds = rng.gen_range(10..80);
    for _ in 0..rounds {
        match rng.gen_range(0..20) {
            0..=5 => send(&mut p, &mut rng, &mut sent, 0),
            6..=8 => send(&mut p, &mut rng, &mut sent, 1),
            9..=13 => {
                p.step();
            }
            14 | 15 => p.run_for(Duration::from_millis(rng.gen_range(0..2000))),
            16 => p.run_for(Duration::from_millis(rng.gen_range(5000..30_000))),
            17 => {
                let live = p.live_links();
                if !live.is_empty() {
                    p.cut(live[rng.gen_range(0..live.len())]);
                }
            }
            18 => p.cut_all(),
            _ => {
                send(&mut p, &mut rng, &mut sent, 0);
                send(&mut p, &mut rng, &mut sent, 1);
                p.step();
            }
        }
        checks(&p, &mut order);
    }

    mutation.borrow_mut().stop();
    let reports_at_stop = reports(&p);
    let after = sent;
    send(&mut p, &mut rng, &mut sent, 0);
    p.run_for(Duration::from_secs(300));
    checks(&p, &mut order);
    send(&mut p, &mut rng, &mut sent, 1);
    send(&mut p, &mut rng, &mut sent, 0);
    p.run_for(Duration::from_secs(300));
    checks(&p, &mut order);

    check_not_stuck(&ctx, &p, dumper(&p, &mutation));

    let m = mutation.borrow();
    let ctx = format!("{ctx} counts {:?}", m.counts);
    let got = [numbers(&p.nodes[0].received), numbers(&p.nodes[1].received)];
    let reset = reports(&p) > 0;
    if lossless && !v1 && reports(&p) == reports_at_stop {
        for node in 0..2 {
            let peer = 1 - node;
            let base = if node == 0 { 0 } else { NODE1_IDS };
            let missing: Vec<u32> = (base + after[node]..base + sent[node])
                .filter(|id| !got[peer].contains(id))
                .collect();
            if !missing.is_empty() {
                dump(&p, &m);
                panic!("{ctx}: node {peer} never got {missing:?}: {:?}", got[peer]);
            }
        }
    }
    Outcome { reset, counts: m.counts.clone(), links: Some(p.links.len()) }
}

#[test]
fn cephx_v1_authorizer_handshakes_under_mutation() {
    FUZZER.test(Mode::V1Osd);
}

#[test]
fn cephx_msgr2_crc_authorizer_handshakes_under_mutation() {
    FUZZER.test(Mode::CrcOsd);
}

#[test]
fn cephx_msgr2_secure_authorizer_handshakes_under_mutation() {
    FUZZER.test(Mode::SecureOsd);
}

#[test]
fn cephx_msgr2_crc_monitor_handshakes_under_mutation() {
    FUZZER.test(Mode::CrcMon);
}

#[test]
fn cephx_msgr2_secure_monitor_handshakes_under_mutation() {
    FUZZER.test(Mode::SecureMon);
}

#[test]
fn one() {
    FUZZER.one();
}

/// Flips, truncates, extends or overwrites `b` (one to three edits).
fn mangle(rng: &mut SmallRng, b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for _ in 0..rng.gen_range(1..=3) {
        let len = v.len();
        let pos = rng.gen_range(0..=len);
        match rng.gen_range(0..5) {
            0 if len > 0 => v[pos.min(len - 1)] ^= 1 << rng.gen_range(0..8),
            1 => v.truncate(pos),
            2 => {
                let ins: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                v.splice(pos..pos, ins);
            }
            3 if len > 0 => {
                let p = pos.min(len - 1);
                let n = rng.gen_range(1..=8).min(len - p);
                let x = [0u8, 0xff, 0x7f, 0x80][rng.gen_range(0..4)];
                v[p..p + n].fill(x);
            }
            _ => {}
        }
    }
    v
}

/// The cephx monitor and authorizer exchanges driven directly through the auth seam
/// (`AuthClient` / `AuthServer`), one payload of each round mutated: no panic, and
/// whatever the server accepts is the honest entity, global id and caps, with the
/// session key the client ends with (else the client refuses the AUTH_DONE).
#[test]
fn cephx_auth_payloads_under_mutation_never_panic_or_change_identity() {
    use protocol::auth::AuthStep;
    let runs: u64 = std::env::var("MUT_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let start = Instant::now();
    let mut accepted_mutated = 0;
    let mut secrets_differ = 0;
    for seed in 0..runs {
        for mode in [Mode::SecureMon, Mode::CrcMon, Mode::SecureOsd, Mode::CrcOsd] {
            let (p, want) =
                setup(seed, mode, Policy::lossless_peer(), Policy::lossless_peer(), start);
            let mon = matches!(mode, Mode::CrcMon | Mode::SecureMon);
            let con = if matches!(mode, Mode::SecureMon | Mode::SecureOsd) {
                ConMode::SECURE
            } else {
                ConMode::CRC
            };
            let (peer_ty, my_ty) = if mon {
                (EntityType::MON, EntityType::CLIENT)
            } else {
                (EntityType::OSD, EntityType::OSD)
            };
            let caddr = p.nodes[1].addr(ProtocolVersion::V2);
            let mut client = p.nodes[0]
                .config
                .auth
                .client(peer_ty, &caddr, protocol::types::AUTH_CEPHX)
                .unwrap();
            let mut server =
                p.nodes[1].config.auth.server(my_ty, protocol::types::AUTH_CEPHX).unwrap();
            let mut rng = SmallRng::seed_from_u64(seed ^ (mode as u64) << 40);
            // Which message (0 request, 1 reply-more, 2 request-more, 3 done) is mutated.
            let which = rng.gen_range(0..4);
            let mut mutated = false;
            let mut m = |i: usize, b: &[u8], rng: &mut SmallRng| {
                if i == which {
                    let out = mangle(rng, b);
                    mutated |= out != b;
                    out
                } else {
                    b.to_vec()
                }
            };
            let Ok(req) = client.build_request() else { continue };
            let req = m(0, &req, &mut rng);
            let mut step = server.handle_request(start, con, false, &req);
            let mut round = 0;
            let (gid, payload, outcome) = loop {
                match step {
                    AuthStep::More(more) => {
                        round += 1;
                        if round > 4 {
                            panic!("{mode:?} seed {seed}: endless rounds");
                        }
                        let more = m(1, &more, &mut rng);
                        let Ok(next) = client.handle_reply_more(&more) else {
                            break (0, None, None);
                        };
                        let next = m(2, &next, &mut rng);
                        step = server.handle_request(start, con, true, &next);
                    }
                    AuthStep::Done { global_id, payload, outcome } => {
                        break (global_id, Some(payload), Some(outcome))
                    }
                    AuthStep::Reject { .. } | AuthStep::Busy => break (0, None, None),
                }
            };
            let (Some(payload), Some(outcome)) = (payload, outcome) else { continue };
            let peer = outcome.peer.clone().expect("cephx names its peer");
            let w = want[1].clone().unwrap();
            assert!(
                peer.name == w.name
                    && peer.caps == w.caps
                    && (mon || peer.global_id == w.global_id),
                "{mode:?} seed {seed} (mutated message {which}): accepted {peer:?}, want {w:?}"
            );
            assert_eq!(gid, peer.global_id, "{mode:?} seed {seed}: AUTH_DONE's global id");
            let payload = m(3, &payload, &mut rng);
            if let Ok(got) = client.handle_done(start, gid, con, &payload) {
                if mutated {
                    accepted_mutated += 1;
                }
                assert_eq!(
                    got.session_key, outcome.session_key,
                    "{mode:?} seed {seed} (mutated message {which}): the ends' session keys differ"
                );
                // A mutated AUTH_DONE can still open (AES-CBC is malleable: a flipped bit
                // garbles one block and flips the next) with another connection secret:
                // the AUTH_SIGNATURE over the transcript is what faults that connection
                // (the pair fuzzers above check it ends so); so is a secret missing from a
                // mutated request's answer (shorter than secure mode needs: a fault).
                if got.connection_secret != outcome.connection_secret {
                    secrets_differ += 1;
                }
            }
        }
    }
    eprintln!("{secrets_differ} accepted AUTH_DONEs with another connection secret");
    eprintln!("{accepted_mutated} mutated exchanges accepted (with the honest keys)");
}
