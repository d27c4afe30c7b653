//! cephx over msgr2 on the two-node [`Pair`] harness (virtual clock, in-memory links):
//! a client authenticating to a monitor (AUTH_MODE_MON) and a daemon presenting an
//! authorizer to another daemon (AUTH_MODE_AUTHORIZER, with the challenge round), in
//! crc and secure mode; refusals with AUTH_BAD_METHOD / -EACCES; tampering in secure
//! mode.

// The virtual clock starts from the real one (an `Instant` cannot be made otherwise).
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::testing::{rng_source, TestRng};
use super::*;
use crate::auth::config::{AuthConfig, ConModes};
use crate::auth::crypto::CryptoKey;
use crate::auth::keyring::{KeyEntry, KeyRing};
use crate::auth::provider::{AuthClient, AuthProvider, AuthStep, EACCES};
use crate::auth::ConMode;
use crate::encoding::UTime;
use crate::message::PRIO_DEFAULT;
use crate::testing::{node_config, Pair};
use crate::types::{AuthEntityName, EntityName, EntityType, AUTH_CEPHX};
use crate::{Config, Message, Policy, ProtocolVersion};

const WALL0: UTime = UTime::new(1_700_000_000, 0);

/// A key server for client.admin, osd.0 and osd.1, and client.admin's key.
struct Cluster {
    server: Arc<KeyServer>,
    admin: CryptoKey,
    clock: WallClock,
}

fn cluster(seed: u64, start: Instant) -> Cluster {
    let mut rng = TestRng::new(seed);
    let mut ring = KeyRing::new();
    let admin = CryptoKey::generate(WALL0, &mut rng);
    ring.insert(
        AuthEntityName::new(EntityType::CLIENT, "admin"),
        KeyEntry::new(admin.clone()).with_cap("mon", "allow *").with_cap("osd", "allow *"),
    );
    for id in ["0", "1"] {
        let key = CryptoKey::generate(WALL0, &mut rng);
        ring.insert(
            AuthEntityName::new(EntityType::OSD, id),
            KeyEntry::new(key).with_cap("mon", "allow profile osd").with_cap("osd", "allow *"),
        );
    }
    let server = KeyServer::new(ring, AuthConfig::ceph_defaults(), WALL0, &mut rng);
    Cluster { server: Arc::new(server), admin, clock: WallClock::anchored(start, WALL0) }
}

/// `ty.id`'s cephx provider with Ceph's defaults on `c`'s clock.
fn provider(c: &Cluster, ty: EntityType, id: &str, seed: u64) -> CephxProvider {
    CephxProvider::new(
        AuthEntityName::new(ty, id),
        AuthConfig::ceph_defaults(),
        c.clock,
        rng_source(seed),
    )
}

/// The cluster's OSD rotating secrets, as an OSD holds them.
fn osd_keys(c: &Cluster) -> Arc<SharedKeyStore> {
    let keys = RotatingKeyStore::new(
        EntityType::OSD,
        c.server.rotating(EntityType::OSD).unwrap_or_default(),
    );
    Arc::new(SharedKeyStore::new(keys))
}

/// Node `num`'s configuration as `ty.num` with `auth`.
fn config(ty: EntityType, num: i64, auth: Arc<dyn AuthProvider>) -> Config {
    let mut c = node_config(ProtocolVersion::V2, num, 6789 + num as u16, num as u32 + 1);
    c.my_name = EntityName::new(ty, num);
    c.auth = auth;
    c
}

/// Ceph's defaults with every `ms_*_mode` set to `modes`.
fn auth_config(modes: &[ConMode]) -> AuthConfig {
    let mut c = AuthConfig::ceph_defaults();
    c.set_all_modes(&ConModes(modes.to_vec()));
    c
}

fn msg(id: u32, data: usize) -> Message {
    let mut m = Message::new(2, Bytes::copy_from_slice(&id.to_le_bytes()));
    m.set_priority(PRIO_DEFAULT);
    m.set_data(Bytes::from((0..data).map(|i| (i * 7 + id as usize) as u8).collect::<Vec<_>>()));
    m
}

fn ids(received: &[Message]) -> Vec<u32> {
    received
        .iter()
        .map(|m| u32::from_le_bytes(m.front()[..4].try_into().unwrap_or([0; 4])))
        .collect()
}

/// client.admin (node 0) dialling mon.0 (node 1, a key server) with `client_modes`.
fn client_and_monitor(
    c: &Cluster,
    client_modes: &[ConMode],
    admin: CryptoKey,
) -> (Pair, Arc<TicketStore>) {
    let store = Arc::new(TicketStore::default());
    let client = CephxProvider::new(
        AuthEntityName::new(EntityType::CLIENT, "admin"),
        auth_config(client_modes),
        c.clock,
        rng_source(100),
    )
    .with_monitor_key(admin, store.clone());
    let mon = provider(c, EntityType::MON, "0", 200).with_key_server(c.server.clone());
    (to_monitor(c, Arc::new(client), Arc::new(mon)), store)
}

/// A client (node 0, saying "client" in its HELLO) with `client` dialling mon.0 (node 1)
/// with `mon`, lossy as Ceph's MonClient.
fn to_monitor(c: &Cluster, client: Arc<dyn AuthProvider>, mon: Arc<dyn AuthProvider>) -> Pair {
    Pair::with_configs(
        c.clock.anchor(),
        ProtocolVersion::V2,
        config(EntityType::CLIENT, 0, client),
        Policy::lossy_client(),
        config(EntityType::MON, 1, mon),
        Policy::stateful_server(),
    )
}

/// osd.0 (node 0, tickets from `tickets`) dialling osd.1 (node 1, the cluster's osd
/// secrets) in `modes`.
fn osd_pair(c: &Cluster, modes: &[ConMode], tickets: Arc<dyn TicketSource>) -> Pair {
    osd_pair_with(c, modes, tickets, EntityType::OSD, auth_config(modes))
}

/// [`osd_pair`] with the dialler's HELLO saying `hello` and the acceptor configured by
/// `acceptor_config`.
fn osd_pair_with(
    c: &Cluster,
    modes: &[ConMode],
    tickets: Arc<dyn TicketSource>,
    hello: EntityType,
    acceptor_config: AuthConfig,
) -> Pair {
    let dialler = CephxProvider::new(
        AuthEntityName::new(EntityType::OSD, "0"),
        auth_config(modes),
        c.clock,
        rng_source(300),
    )
    .with_tickets(tickets);
    let acceptor = CephxProvider::new(
        AuthEntityName::new(EntityType::OSD, "1"),
        acceptor_config,
        c.clock,
        rng_source(400),
    )
    .with_keys(osd_keys(c));
    Pair::with_configs(
        c.clock.anchor(),
        ProtocolVersion::V2,
        config(hello, 0, Arc::new(dialler)),
        Policy::lossless_client(),
        config(EntityType::OSD, 1, Arc::new(acceptor)),
        Policy::stateful_server(),
    )
}

/// Messages both ways, byte-exact; returns the negotiated mode and global id.
fn exchange(p: &mut Pair) -> (ConMode, u64) {
    let sent0: Vec<Message> = (1..=5).map(|i| msg(i, i as usize * 5000)).collect();
    let sent1: Vec<Message> = (101..=103).map(|i| msg(i, 777)).collect();
    for m in &sent0 {
        p.send(0, m.clone());
    }
    p.drive();
    for m in &sent1 {
        p.send(1, m.clone());
    }
    p.drive();
    assert_eq!(ids(&p.nodes[1].received), [1, 2, 3, 4, 5], "{:?}", p.nodes[0].log);
    assert_eq!(ids(&p.nodes[0].received), [101, 102, 103]);
    for (got, want) in
        p.nodes[1].received.iter().zip(&sent0).chain(p.nodes[0].received.iter().zip(&sent1))
    {
        assert_eq!((got.front(), got.data()), (want.front(), want.data()));
    }
    let a = p.session_ep(0).expect("client session");
    let b = p.session_ep(1).expect("server session");
    let (ca, cb) = (p.eps[a].conn.con_mode(), p.eps[b].conn.con_mode());
    assert_eq!(ca, cb);
    let ga = p.eps[a].conn.as_v2().map(|c| c.global_id()).unwrap_or(0);
    let gb = p.eps[b].conn.as_v2().map(|c| c.global_id()).unwrap_or(0);
    assert_eq!(ga, gb, "both sides agree on the global id");
    (ca.unwrap_or_default(), ga)
}

// msgr-v2.md 5.3: client.admin to a monitor in AUTH_MODE_MON, in secure and crc mode;
// the monitor-issued tickets land in the store, and the osd ticket then authenticates
// client.admin to an OSD (AUTH_MODE_AUTHORIZER, challenge round) in both modes.
#[test]
fn client_to_monitor_then_with_its_osd_ticket_to_an_osd_both_modes() {
    for mode in [ConMode::SECURE, ConMode::CRC] {
        let c = cluster(1, Instant::now());
        let (mut p, store) = client_and_monitor(&c, &[mode], c.admin.clone());
        let (got, global_id) = exchange(&mut p);
        assert_eq!(got, mode);
        assert!(global_id >= crate::auth::FIRST_GLOBAL_ID, "a fresh id from the monitor");
        let (gid, osd_ticket) =
            store.ticket(EntityType::OSD).expect("an osd ticket from AUTH_DONE");
        assert_eq!(gid, global_id);
        assert!(store.ticket(EntityType::MGR).is_some() && store.ticket(EntityType::MON).is_some());

        // The same ticket through the osd pair, presented by "osd.0" as the client it is.
        let tickets = Arc::new(TicketStore::new(gid));
        tickets.insert(gid, osd_ticket);
        let mut p = osd_pair(&c, &[mode], tickets);
        let (got, osd_gid) = exchange(&mut p);
        assert_eq!((got, osd_gid), (mode, global_id), "AUTH_DONE names the ticket's global id");
    }
}

// Daemon to daemon with a minted ticket: the acceptor's preference does not matter,
// the connector's first allowed mode wins (msgr-v2.md 5.2).
#[test]
fn osd_to_osd_authorizer_picks_the_connectors_first_allowed_mode() {
    let c = cluster(2, Instant::now());
    let mut rng = TestRng::new(9);
    let name = AuthEntityName::new(EntityType::OSD, "0");
    let t = c.server.service_ticket(&name, 4200, EntityType::OSD, WALL0, &mut rng).unwrap();
    let tickets = Arc::new(TicketStore::new(4200));
    tickets.insert(4200, t);
    for (modes, want) in [
        (&[ConMode::SECURE, ConMode::CRC][..], ConMode::SECURE),
        (&[ConMode::CRC, ConMode::SECURE][..], ConMode::CRC),
    ] {
        let mut p = osd_pair(&c, modes, tickets.clone());
        assert_eq!(exchange(&mut p), (want, 4200));
    }
}

// A wrong client key: the monitor still challenges, then answers GET_AUTH_SESSION_KEY
// with AUTH_BAD_METHOD -EACCES (msgr-v2.md 5.3 "Failures" [V]); with no other method the
// connector is refused for good and nothing is delivered.
#[test]
fn wrong_key_is_refused_with_eacces() {
    let start = Instant::now();
    let c = cluster(3, start);
    let wrong = CryptoKey::generate(WALL0, &mut TestRng::new(77));
    let (mut p, store) = client_and_monitor(&c, &[ConMode::SECURE], wrong.clone());
    p.send(0, msg(1, 10));
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.nodes[0].refused, 1, "{:?}", p.nodes[0].log);
    assert!(p.nodes[1].received.is_empty());
    assert!(store.ticket(EntityType::OSD).is_none());

    // The same exchange through the handlers: the answer is -EACCES.
    let client = provider(&c, EntityType::CLIENT, "admin", 5)
        .with_monitor_key(wrong, Arc::new(TicketStore::default()));
    let mon = provider(&c, EntityType::MON, "0", 6).with_key_server(c.server.clone());
    let mut cl = client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    let mut sv = mon.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
    let req = cl.build_request().unwrap();
    let AuthStep::More(challenge) = sv.handle_request(start, ConMode::SECURE, false, &req) else {
        panic!("no challenge")
    };
    let more = cl.handle_reply_more(&challenge).unwrap();
    assert_eq!(
        sv.handle_request(start, ConMode::SECURE, true, &more),
        AuthStep::Reject { result: EACCES }
    );
}

// An authorizer sealed with another cluster's secrets, and one whose ticket expired a
// whole lifetime before the acceptor's now: AUTH_BAD_METHOD -EACCES. The connector's
// session is lossless: it faults and dials again after its backoff, as Ceph's does,
// delivering nothing.
#[test]
fn bad_or_expired_authorizer_is_refused() {
    let start = Instant::now();
    let c = cluster(4, start);
    let other = cluster(5, start);
    let mut rng = TestRng::new(9);
    let name = AuthEntityName::new(EntityType::OSD, "0");
    let t = other.server.service_ticket(&name, 4300, EntityType::OSD, WALL0, &mut rng).unwrap();
    let tickets = Arc::new(TicketStore::new(4300));
    tickets.insert(4300, t);
    let mut p = osd_pair(&c, &[ConMode::SECURE], tickets.clone());
    p.send(0, msg(1, 10));
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.nodes[0].refused, 0, "{:?}", p.nodes[0].log);
    let redials = p.nodes[0].log.iter().filter(|l| l.starts_with("Reconnect")).count();
    assert!(redials >= 5, "{redials} redials: {:?}", p.nodes[0].log);
    assert!(p.nodes[1].received.is_empty());

    let good = c.server.service_ticket(&name, 4300, EntityType::OSD, WALL0, &mut rng).unwrap();
    let osd1 = provider(&c, EntityType::OSD, "1", 8).with_key_server(c.server.clone());
    let authorizer = Authorizer::new(4300, &good, &mut rng);
    let mut sv = osd1.server(EntityType::OSD, AUTH_CEPHX).unwrap();
    // Expired a whole lifetime ago (until then it is taken, as by Ceph's daemons).
    let late =
        start + 2 * AuthConfig::ceph_defaults().auth_service_ticket_ttl + Duration::from_secs(1);
    assert_eq!(
        sv.handle_request(late, ConMode::CRC, false, authorizer.bytes()),
        AuthStep::Reject { result: EACCES }
    );
    // A malformed one too: any other answer tells a forger how far its bytes got.
    let bytes = authorizer.bytes();
    assert_eq!(
        sv.handle_request(start, ConMode::CRC, false, &bytes[..bytes.len() - 5]),
        AuthStep::Reject { result: EACCES }
    );
    // In time it is challenged (cephx v2 required by default).
    assert!(matches!(
        sv.handle_request(start, ConMode::CRC, false, authorizer.bytes()),
        AuthStep::More(_)
    ));
    // Also where cephx v2 is not required: every msgr2 peer can answer, and Ceph always
    // asks (accepted at once, a captured authorizer would replay).
    let mut lax = AuthConfig::ceph_defaults();
    lax.cephx_cluster_require_version = 1;
    lax.cephx_service_require_version = 1;
    let osd1 =
        CephxProvider::new(AuthEntityName::new(EntityType::OSD, "1"), lax, c.clock, rng_source(9))
            .with_key_server(c.server.clone());
    let mut sv = osd1.server(EntityType::OSD, AUTH_CEPHX).unwrap();
    let step = sv.handle_request(start, ConMode::CRC, false, authorizer.bytes());
    assert!(matches!(step, AuthStep::More(_)), "{step:?}");
}

// An AUTH_REQUEST no auth server serves is refused with -EACCES, as Ceph's daemons
// (MonClient::handle_auth_request) and monitors (Monitor::handle_auth_request) answer:
// an empty payload, an unknown auth mode, a monitor-mode request to a daemon, and (to a
// monitor) a monitor-mode request that does not decode.
#[test]
fn auth_requests_in_no_served_mode_are_refused_with_eacces() {
    let start = Instant::now();
    let c = cluster(10, start);
    let osd = provider(&c, EntityType::OSD, "1", 11).with_keys(osd_keys(&c));
    let mon = provider(&c, EntityType::MON, "0", 12).with_key_server(c.server.clone());
    let client = provider(&c, EntityType::CLIENT, "admin", 13)
        .with_monitor_key(c.admin.clone(), Arc::new(TicketStore::default()));
    let mon_request =
        client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap().build_request().unwrap();
    let refused = AuthStep::Reject { result: EACCES };
    let ask = |p: &CephxProvider, payload: &[u8]| {
        let mut sv = p.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
        sv.handle_request(start, ConMode::CRC, false, payload)
    };
    for payload in [&[][..], &[42, 0, 0, 0], &[0]] {
        assert_eq!(ask(&osd, payload), refused, "to a daemon: {payload:?}");
        assert_eq!(ask(&mon, payload), refused, "to a monitor: {payload:?}");
    }
    assert_eq!(ask(&osd, &mon_request), refused, "monitor mode to a daemon");
    assert_eq!(ask(&mon, &mon_request[..5]), refused, "a truncated monitor-mode request");
    assert!(matches!(ask(&mon, &mon_request), AuthStep::More(_)), "the whole one is challenged");
}

// A flipped bit inside the first MESSAGE in secure mode fails its GCM tag: the acceptor
// faults the connection (stateful server → standby), the client reconnects with a new
// authorizer and a new connection secret, and the message arrives once.
#[test]
fn tampered_secure_frame_faults_and_a_new_authentication_recovers() {
    let c = cluster(6, Instant::now());
    let ticket = |c: &Cluster| {
        let name = AuthEntityName::new(EntityType::OSD, "0");
        let t = c.server.service_ticket(&name, 4400, EntityType::OSD, WALL0, &mut TestRng::new(3));
        let tickets = Arc::new(TicketStore::new(4400));
        tickets.insert(4400, t.unwrap());
        tickets
    };
    let mut probe = osd_pair(&c, &[ConMode::SECURE], ticket(&c));
    probe.connect(0);
    probe.drive();
    let handshake = probe.links[0].sent[1];
    let mut p = osd_pair(&c, &[ConMode::SECURE], ticket(&c));
    p.tamper = Some((1, handshake + 60, 0x40));
    p.send(0, msg(7, 3000));
    p.run_for(Duration::from_secs(5));
    assert_eq!(ids(&p.nodes[1].received), [7]);
    assert!(p.links.len() >= 2, "a second connection authenticated");
    assert!(p.nodes[1].log.contains(&"Standby".to_string()), "{:?}", p.nodes[1].log);
    assert!(p.nodes[0].log.contains(&"Reconnect".to_string()), "{:?}", p.nodes[0].log);
    let a = p.session_ep(0).unwrap();
    assert_eq!(p.eps[a].conn.con_mode(), Some(ConMode::SECURE));
}

// A duplicate MESSAGE in secure mode is read whole and its tag checked before it is
// dropped, as Ceph checks every frame's tag before it looks at the seq: a byte flipped
// in its late segment faults the connection (it went by unopened and was dropped).
#[test]
fn a_tampered_duplicate_in_secure_mode_faults() {
    let c = cluster(11, Instant::now());
    let name = AuthEntityName::new(EntityType::OSD, "0");
    let t = c.server.service_ticket(&name, 4600, EntityType::OSD, WALL0, &mut TestRng::new(4));
    let tickets = Arc::new(TicketStore::new(4600));
    tickets.insert(4600, t.unwrap());
    let mut p = osd_pair(&c, &[ConMode::SECURE], tickets);
    p.send(0, msg(1, 3000));
    p.drive();
    assert_eq!(ids(&p.nodes[1].received), [1]);
    // The sender numbers its next message 1 again: a duplicate, correctly sealed. As
    // sent, it is read and dropped on the same connection.
    let a = p.session_ep(0).unwrap();
    let link = p.eps[a].link.unwrap();
    let renumber = |p: &mut Pair| {
        let crate::Connection::V2(sender) = p.conn(a) else { panic!("not msgr2") };
        sender.session.out_seq = crate::session::Seq(0);
    };
    renumber(&mut p);
    p.send(0, msg(2, 3000));
    p.drive();
    assert_eq!((ids(&p.nodes[1].received), p.links.len()), (vec![1], 1), "dropped, no fault");
    // Tampered past its first block (preamble, segment 0 and their tag), in the data.
    renumber(&mut p);
    let late = p.links[link].sent[1] + 96 + 1000;
    p.tamper = Some((1, late, 0x01));
    p.send(0, msg(3, 3000));
    p.run_for(Duration::from_secs(5));
    assert_eq!(ids(&p.nodes[1].received), [1], "the duplicates are never delivered");
    assert!(p.nodes[1].log.contains(&"Standby".to_string()), "{:?}", p.nodes[1].log);
    assert!(p.links.len() >= 2, "the connection faulted and the client dialled again");
}

// Ceph's AuthRegistry through the provider: a client without a key offers none (or
// nothing), a monitor with a key server accepts cephx, modes follow ms_*_mode.
#[test]
fn provider_methods_and_modes_follow_the_registry() {
    let c = cluster(7, Instant::now());
    let mut cfg = AuthConfig::ceph_defaults();
    let client = |cfg: AuthConfig| {
        CephxProvider::new(
            AuthEntityName::new(EntityType::CLIENT, "admin"),
            cfg,
            c.clock,
            rng_source(1),
        )
    };
    let role = crate::auth::AuthRole::Connector;
    // No keyring: cephx dropped, as Ceph's "no keyring found ... disabling cephx".
    assert_eq!(client(cfg.clone()).methods(role, EntityType::MON), [crate::types::AUTH_NONE]);
    let keyed =
        client(cfg.clone()).with_monitor_key(c.admin.clone(), Arc::new(TicketStore::default()));
    assert_eq!(keyed.methods(role, EntityType::MON), [AUTH_CEPHX, crate::types::AUTH_NONE]);
    assert_eq!(keyed.modes(role, EntityType::MON), [ConMode::SECURE, ConMode::CRC]);
    assert_eq!(keyed.modes(role, EntityType::OSD), [ConMode::CRC, ConMode::SECURE]);
    cfg.set("ms_mon_client_mode", "crc").unwrap();
    assert_eq!(client(cfg).modes(role, EntityType::MON), [ConMode::CRC]);
    let mon = provider(&c, EntityType::MON, "a", 2);
    let acc = crate::auth::AuthRole::Acceptor;
    assert!(mon.methods(acc, EntityType::CLIENT).is_empty(), "no keys: nothing to accept");
    let mon = mon.with_key_server(c.server.clone());
    assert_eq!(mon.methods(acc, EntityType::CLIENT), [AUTH_CEPHX]);
    assert_eq!(mon.modes(acc, EntityType::CLIENT), [ConMode::SECURE, ConMode::CRC]);
    assert_eq!(connection_secret_len(ConMode::SECURE), 64);
    assert_eq!(connection_secret_len(ConMode::CRC), 0);
}

// Hostile input: every prefix of valid requests, and random bytes, in both rounds and
// both modes, to an acceptor that plays a monitor and verifies authorizers. Each answer
// is a refusal or another round; nothing panics, and nothing is accepted.
#[test]
fn hostile_auth_payloads_are_refused_not_panics() {
    use rand::{Rng, SeedableRng};
    let start = Instant::now();
    let c = cluster(8, start);
    let osd1 = provider(&c, EntityType::OSD, "1", 9).with_key_server(c.server.clone());
    let admin = provider(&c, EntityType::CLIENT, "admin", 10)
        .with_monitor_key(c.admin.clone(), Arc::new(TicketStore::default()));
    let name = AuthEntityName::new(EntityType::OSD, "0");
    let ticket = c.server.service_ticket(&name, 4500, EntityType::OSD, WALL0, &mut TestRng::new(1));
    let authorizer = Authorizer::new(4500, &ticket.unwrap(), &mut TestRng::new(2));
    let mon_request =
        admin.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap().build_request().unwrap();
    let valid = [authorizer.bytes().clone(), mon_request];
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for v in &valid {
        inputs.extend((0..v.len()).map(|n| v[..n].to_vec()));
        for _ in 0..50 {
            let mut bad = v.to_vec();
            let at = rng.gen_range(0..bad.len());
            bad[at] ^= rng.gen_range(1..=255u8);
            inputs.push(bad);
        }
    }
    inputs.extend((0..200).map(|_| {
        let len = rng.gen_range(0..300);
        let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Some(first) = b.first_mut() {
            *first = [1u8, 10, 42][rng.gen_range(0..3)];
        }
        b
    }));
    for input in &inputs {
        for mode in [ConMode::CRC, ConMode::SECURE] {
            let mut sv = osd1.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
            for more in [false, true] {
                match sv.handle_request(start, mode, more, input) {
                    AuthStep::Reject { result } => assert!(result < 0),
                    AuthStep::More(_) => {}
                    other => panic!("accepted {input:02x?}: {other:?}"),
                }
            }
        }
    }
}

// cephx.md 6 over msgr2: a new monitor connection of the same provider asks for its
// global id back and proves it with the auth ticket of the last one; the monitor keeps
// the id. A client with no memory gets a new one.
#[test]
fn a_new_monitor_connection_reclaims_the_global_id_with_the_old_ticket() {
    let c = cluster(11, Instant::now());
    // One monitor for every connection: its global id counter moves on.
    let mon: Arc<dyn AuthProvider> =
        Arc::new(provider(&c, EntityType::MON, "0", 600).with_key_server(c.server.clone()));
    let connect = |store: &Arc<TicketStore>, seed: u64| {
        let client = CephxProvider::new(
            AuthEntityName::new(EntityType::CLIENT, "admin"),
            AuthConfig::ceph_defaults(),
            c.clock,
            rng_source(seed),
        )
        .with_monitor_key(c.admin.clone(), store.clone());
        exchange(&mut to_monitor(&c, Arc::new(client), mon.clone())).1
    };
    let store = Arc::new(TicketStore::default());
    let first = connect(&store, 100);
    let (gid, _) = store.ticket(EntityType::AUTH).expect("the auth ticket is kept");
    assert_eq!(gid, first);
    let other = connect(&Arc::new(TicketStore::default()), 200);
    assert_ne!(other, first, "a client without the old ticket gets a new id");
    let again = connect(&store, 300);
    assert_eq!(again, first, "the global id was reclaimed");
}

// The acceptor picks the allowed methods by the type the peer's HELLO claims; the entity
// it then authenticates as must be allowed the method too, as Ceph's monitor checks the
// named entity's type. A peer saying "client" in its HELLO and naming osd.0 with auth
// none, where clients may use none but the cluster requires cephx, is refused (it
// passed as osd.0 with every cap); a real client with none still gets in.
#[test]
fn the_authenticated_entity_must_be_allowed_the_method() {
    let start = Instant::now();
    let c = cluster(9, start);
    let mut mon_config = AuthConfig::ceph_defaults();
    mon_config.set("auth_service_required", "cephx none").unwrap();
    mon_config.set("auth_cluster_required", "cephx").unwrap();
    let mon = CephxProvider::new(
        AuthEntityName::new(EntityType::MON, "0"),
        mon_config,
        c.clock,
        rng_source(7),
    )
    .with_key_server(c.server.clone());
    let mon = Arc::new(mon);
    for (name, opens) in [(EntityType::OSD, false), (EntityType::CLIENT, true)] {
        let peer = crate::auth::AuthNoneProvider::new(AuthEntityName::new(name, "0"));
        let mut p = to_monitor(&c, Arc::new(peer), mon.clone());
        p.send(0, msg(1, 10));
        p.run_for(Duration::from_secs(30));
        assert_eq!(p.nodes[1].received.len(), usize::from(opens), "{name}: {:?}", p.nodes[0].log);
        assert_eq!(p.nodes[0].refused, usize::from(!opens), "{name}");
    }
}

// A monitor allowing cephx and none hands out global ids from one counter, whichever
// method a peer authenticates with, as Ceph's (AuthMonitor::_assign_global_id for
// every monitor-mode session). The cephx acceptor and its auth-none one each had a
// counter from 4096: an auth-none client and a cephx client were both 4096.
#[test]
fn a_monitor_allowing_cephx_and_none_gives_each_session_its_own_global_id() {
    let start = Instant::now();
    let c = cluster(13, start);
    let mut mon_config = AuthConfig::ceph_defaults();
    mon_config.set("auth_service_required", "cephx, none").unwrap();
    let mon = CephxProvider::new(
        AuthEntityName::new(EntityType::MON, "0"),
        mon_config,
        c.clock,
        rng_source(14),
    )
    .with_key_server(c.server.clone());
    let by_none = || {
        let name = AuthEntityName::new(EntityType::CLIENT, "guest");
        let req =
            crate::auth::AuthNoneClient::new(name, 0, EntityType::MON).build_request().unwrap();
        let mut sv = mon.server(EntityType::CLIENT, crate::types::AUTH_NONE).unwrap();
        match sv.handle_request(start, ConMode::CRC, false, &req) {
            AuthStep::Done { global_id, .. } => global_id,
            other => panic!("auth none refused: {other:?}"),
        }
    };
    let by_cephx = || {
        let client = provider(&c, EntityType::CLIENT, "admin", 15)
            .with_monitor_key(c.admin.clone(), Arc::new(TicketStore::default()));
        let mut cl = client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
        let mut sv = mon.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
        let req = cl.build_request().unwrap();
        let AuthStep::More(challenge) = sv.handle_request(start, ConMode::CRC, false, &req) else {
            panic!("no challenge")
        };
        let more = cl.handle_reply_more(&challenge).unwrap();
        match sv.handle_request(start, ConMode::CRC, true, &more) {
            AuthStep::Done { global_id, .. } => global_id,
            other => panic!("cephx refused: {other:?}"),
        }
    };
    let ids = [by_none(), by_cephx(), by_none(), by_cephx()];
    let distinct: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "global ids handed out twice: {ids:?}");
}

/// client.admin with its monitor key and `store`.
fn admin_with(c: &Cluster, store: &Arc<TicketStore>) -> CephxProvider {
    provider(c, EntityType::CLIENT, "admin", 16).with_monitor_key(c.admin.clone(), store.clone())
}

/// `client` authenticating to `mon` through the handlers (AUTH_MODE_MON, crc mode), the
/// monitor's now being `at`; its tickets go into its store.
fn authenticate_at(client: &CephxProvider, mon: &CephxProvider, at: Instant) {
    let mut cl = client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    let req = cl.build_request().unwrap();
    finish_at(&mut cl, &req, mon, at);
}

// A monitor-role provider rotates its key server's secrets once due, before it seals
// tickets with them, as a Ceph monitor keeps them current on its tick: a ticket issued
// after the current secret expired is sealed with the next one, and a ticket sealed
// with the previous secret a moment before still opens at an OSD holding the rotated
// secrets. Behind a bare Arc the provider's key server never rotated: every ticket was
// sealed with a secret past its expiration.
#[test]
fn a_monitor_provider_rotates_due_secrets_before_it_issues_tickets() {
    let start = Instant::now();
    let c = cluster(17, start);
    let mon = provider(&c, EntityType::MON, "0", 18).with_key_server(c.server.clone());
    let period = AuthConfig::ceph_defaults().auth_service_ticket_ttl;
    let first = c.server.rotating(EntityType::OSD).unwrap().current().unwrap().0;
    let before = start + period - Duration::from_secs(1);
    let old = Arc::new(TicketStore::default());
    authenticate_at(&admin_with(&c, &old), &mon, before);
    let (old_gid, old_ticket) = old.ticket(EntityType::OSD).unwrap();
    assert_eq!(old_ticket.blob.secret_id, first);

    let after = start + period + Duration::from_secs(1);
    let new = Arc::new(TicketStore::default());
    authenticate_at(&admin_with(&c, &new), &mon, after);
    let rotated = c.server.rotating(EntityType::OSD).unwrap();
    let current = rotated.current().unwrap().0;
    assert_eq!(current, first + 1, "rotated once");
    let (new_gid, new_ticket) = new.ticket(EntityType::OSD).unwrap();
    assert_eq!(new_ticket.blob.secret_id, current, "sealed with the new current secret");

    let keys = RotatingKeyStore::new(EntityType::OSD, rotated);
    for (gid, ticket) in [(old_gid, old_ticket), (new_gid, new_ticket)] {
        let mut rng = TestRng::new(19);
        let authorizer = Authorizer::new(gid, &ticket, &mut rng);
        let verdict = AuthorizerVerifier::new().verify(
            &keys,
            EntityType::OSD,
            authorizer.bytes(),
            false,
            c.clock.wall(after),
            None,
            &mut rng,
        );
        let secret = ticket.blob.secret_id;
        assert!(matches!(verdict, Ok(AuthorizerVerdict::Accepted(_))), "{secret}: {verdict:?}");
    }
}

// A client wanting MDS tickets (Ceph's MonClient::set_want_keys, as an MDS daemon or a
// CephFS client calls it) gets one from a monitor over msgr2, and builds its
// authorizers to MDSs from it; by default it wants mon, osd and mgr only, as librados.
// The msgr2 monitor client asked for mon, osd and mgr whatever the user wanted: no
// authorizer to an MDS could be built.
#[test]
fn a_client_wanting_mds_tickets_gets_one_and_an_authorizer_to_mdss() {
    let start = Instant::now();
    let c = cluster(20, start);
    let mon = provider(&c, EntityType::MON, "0", 21).with_key_server(c.server.clone());
    let store = Arc::new(TicketStore::default());
    let wanted = ServiceMask::CLIENT_SERVICES.with(ServiceMask::of(EntityType::MDS));
    let client = admin_with(&c, &store).with_wanted_services(wanted);
    authenticate_at(&client, &mon, start);
    let (_, mds_ticket) = store.ticket(EntityType::MDS).expect("an MDS ticket from AUTH_DONE");
    assert!(store.ticket(EntityType::OSD).is_some() && store.ticket(EntityType::MGR).is_some());
    let mut authorizer =
        client.client(EntityType::MDS, &mon_addr(), AUTH_CEPHX).expect("an authorizer to an MDS");
    let mds_keys =
        RotatingKeyStore::new(EntityType::MDS, c.server.rotating(EntityType::MDS).unwrap());
    let verdict = AuthorizerVerifier::new().verify(
        &mds_keys,
        EntityType::MDS,
        &authorizer.build_request().unwrap(),
        false,
        WALL0,
        None,
        &mut TestRng::new(22),
    );
    assert!(matches!(verdict, Ok(AuthorizerVerdict::Accepted(_))), "{verdict:?}");
    assert_eq!(mds_ticket.service, EntityType::MDS);

    let store = Arc::new(TicketStore::default());
    let librados_like = admin_with(&c, &store);
    authenticate_at(&librados_like, &mon, start);
    assert!(store.ticket(EntityType::OSD).is_some());
    assert!(store.ticket(EntityType::MDS).is_none());
    assert!(librados_like.client(EntityType::MDS, &mon_addr(), AUTH_CEPHX).is_none());
}

/// The wire length of the crc-mode frame at the start of `stream`, once its preamble is
/// there.
fn crc_frame_len(stream: &[u8]) -> Option<(crate::v2::Tag, usize)> {
    use crate::v2::framing::{FrameEncoder, Preamble, PREAMBLE_LEN};
    let pre: &[u8; PREAMBLE_LEN] = stream.get(..PREAMBLE_LEN)?.try_into().ok()?;
    let pre = Preamble::decode(pre).ok()?;
    let lens = pre.lens().map(|l| l as usize);
    let num = usize::from(pre.num_segments);
    Some((pre.tag, FrameEncoder::crc().wire_len(&lens[..num])))
}

// A connector holds its AUTH_SIGNATURE, and keeps nothing AUTH_DONE taught, until the
// acceptor's signature matched. Ceph's connector sends its own at once: an AUTH_DONE
// replayed from another connection (it decrypts under our key) then made it seal its
// first secure frame with that connection's key and first nonce again, and put the
// replayed tickets and global id in its store.
#[test]
fn a_connector_seals_and_keeps_nothing_before_the_acceptors_signature() {
    use crate::v2::banner::BANNER_LEN;
    use crate::v2::Tag;
    let start = Instant::now();
    let c = cluster(12, start);
    let (p, store) = client_and_monitor(&c, &[ConMode::SECURE], c.admin.clone());
    let (client_cfg, mon_cfg) = (p.nodes[0].config.clone(), p.nodes[1].config.clone());
    let mon_addr = p.nodes[1].addr(ProtocolVersion::V2);
    let mut cl = crate::Connection::connect(
        client_cfg,
        ProtocolVersion::V2,
        Policy::lossless_client(),
        mon_addr,
        EntityType::MON,
        start,
    );
    let sa = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut mon = crate::Connection::accept(mon_cfg, sa(40000), sa(6790), start);
    cl.handle_transport_connected(start);
    let out = |conn: &mut crate::Connection| {
        let mut segs = Vec::new();
        conn.poll_transmit(&mut segs);
        segs.concat()
    };
    // What the monitor sent the client and the client has not read yet.
    let mut toward_client: Vec<u8> = Vec::new();
    let mut banner_read = false;
    let mut done_read = false;
    for _ in 0..32 {
        let up = out(&mut cl);
        if !up.is_empty() {
            mon.handle_bytes(start, Bytes::from(up));
        }
        toward_client.extend(out(&mut mon));
        // Frame by frame, up to and including AUTH_DONE; the rest is held.
        loop {
            if !banner_read {
                if toward_client.len() < BANNER_LEN {
                    break;
                }
                let b: Vec<u8> = toward_client.drain(..BANNER_LEN).collect();
                cl.handle_bytes(start, Bytes::from(b));
                banner_read = true;
                continue;
            }
            let Some((tag, len)) = crc_frame_len(&toward_client) else { break };
            if done_read || toward_client.len() < len {
                break;
            }
            let f: Vec<u8> = toward_client.drain(..len).collect();
            cl.handle_bytes(start, Bytes::from(f));
            done_read |= tag == Tag::AUTH_DONE;
        }
        if done_read {
            break;
        }
    }
    assert!(done_read, "the monitor answered with AUTH_DONE");
    assert!(!toward_client.is_empty(), "its AUTH_SIGNATURE is held back");
    assert!(out(&mut cl).is_empty(), "nothing sealed before the monitor's signature");
    assert!(store.ticket(EntityType::AUTH).is_none(), "nothing kept before it");
    // The signature: ours follows, then the ident, and the tickets are kept.
    cl.handle_bytes(start, Bytes::from(std::mem::take(&mut toward_client)));
    assert!(!out(&mut cl).is_empty(), "signature and ident sent");
    assert!(store.ticket(EntityType::AUTH).is_some());
}

// cephx always challenges first: an AUTH_DONE in answer to the first AUTH_REQUEST is
// refused. It used to be taken as the challenge's answer (its payload decodes as one,
// trailing bytes ignored), and a client resuming with a stored ticket came back with
// that ticket's session key as if authenticated.
#[test]
fn cephx_auth_done_before_the_challenge_is_refused() {
    let c = cluster(13, Instant::now());
    let (mut p, store) = client_and_monitor(&c, &[ConMode::CRC], c.admin.clone());
    let (_, global_id) = exchange(&mut p);
    assert!(store.ticket(EntityType::AUTH).is_some(), "a ticket to resume with");
    let provider = p.nodes[0].config.auth.clone();
    let mut client = provider.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    client.build_request().unwrap();
    let challenge_like = [1u8, 7, 7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 0];
    assert!(client.handle_done(Instant::now(), global_id, ConMode::CRC, &challenge_like).is_err());
}

// An AUTH_DONE whose payload answers another cephx request than GET_AUTH_SESSION_KEY
// (a response header of GET_PRINCIPAL_SESSION_KEY or GET_ROTATING_KEY) is refused. The
// cephx client ignores such an MAuthReply as a late reply of an earlier session's lost
// connection (msgr v1), leaving its session waiting; msgr2's AUTH_DONE is this
// connection's one answer, and taken as ignored it authenticated the handshake with the
// stored auth ticket's session key under the global id AUTH_DONE named, no connection
// secret, and no ticket of this session.
#[test]
fn cephx_auth_done_answering_another_request_is_refused() {
    let start = Instant::now();
    let c = cluster(15, start);
    let (mut p, store) = client_and_monitor(&c, &[ConMode::CRC], c.admin.clone());
    let (_, global_id) = exchange(&mut p);
    assert!(store.ticket(EntityType::AUTH).is_some(), "a ticket to resume with");
    let mon = provider(&c, EntityType::MON, "0", 201).with_key_server(c.server.clone());
    let provider = p.nodes[0].config.auth.clone();
    for other in [RequestType::GET_PRINCIPAL_SESSION_KEY, RequestType::GET_ROTATING_KEY] {
        let mut client = provider.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
        let req = client.build_request().unwrap();
        let mut sv = mon.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
        let AuthStep::More(challenge) = sv.handle_request(start, ConMode::CRC, false, &req) else {
            panic!("no challenge")
        };
        client.handle_reply_more(&challenge).unwrap();
        // {request_type, status 0} and an empty ticket list.
        let mut e = crate::encoding::Encoder::with_capacity(16);
        other.encode(&mut e);
        e.i32(0);
        e.u8(1);
        e.u32(0);
        let done = client.handle_done(start, global_id + 1, ConMode::CRC, &e.into_bytes());
        assert!(done.is_err(), "{other:?}: AUTH_DONE taken: {:?}", done.map(|o| o.session_key));
        client.confirmed();
        assert_eq!(store.ticket(EntityType::AUTH).map(|(g, _)| g), Some(global_id));
    }
}

// An AUTH_REPLY_MORE whose payload answers another cephx request than the challenge (a
// ticket reply's header) is the peer's fault, reported as malformed input: the client
// ignores such a reply and is left with no request to send, which read as our own
// misuse ("API misuse: cephx has no session key request to send").
#[test]
fn cephx_auth_reply_more_answering_another_request_is_malformed() {
    let start = Instant::now();
    let c = cluster(16, start);
    let (p, _store) = client_and_monitor(&c, &[ConMode::CRC], c.admin.clone());
    let provider = p.nodes[0].config.auth.clone();
    for other in [RequestType::GET_AUTH_SESSION_KEY, RequestType::GET_ROTATING_KEY] {
        let mut client = provider.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
        client.build_request().unwrap();
        // {request_type, status 0} and an empty ticket list.
        let mut e = crate::encoding::Encoder::with_capacity(16);
        other.encode(&mut e);
        e.i32(0);
        e.u8(1);
        e.u32(0);
        let err = client.handle_reply_more(&e.into_bytes()).expect_err("taken as a challenge");
        assert_eq!(err.kind(), crate::error::ErrorKind::Malformed, "{other:?}: {err}");
    }
}

// A daemon (not a monitor) does not second-guess a name cephx proved: a peer whose HELLO
// says "client" and whose ticket is osd.0's (as an mgr's librados, HELLO client, name
// mgr.x) gets in even where the cluster methods (for osd names) lack cephx; only an auth
// none name, the peer's word, is checked against its type's methods (see above).
#[test]
fn a_daemon_takes_the_name_cephx_proved() {
    let c = cluster(14, Instant::now());
    let name = AuthEntityName::new(EntityType::OSD, "0");
    let mut rng = TestRng::new(10);
    let t = c.server.service_ticket(&name, 4300, EntityType::OSD, WALL0, &mut rng).unwrap();
    let tickets = Arc::new(TicketStore::new(4300));
    tickets.insert(4300, t);
    let mut acceptor_config = auth_config(&[ConMode::CRC]);
    acceptor_config.set("auth_cluster_required", "none").unwrap();
    acceptor_config.set("auth_service_required", "cephx").unwrap();
    let mut p = osd_pair_with(&c, &[ConMode::CRC], tickets, EntityType::CLIENT, acceptor_config);
    exchange(&mut p);
}

/// The address the handler tests dial the monitor at (node 1 of the pairs above).
fn mon_addr() -> crate::types::EntityAddr {
    crate::testing::v2_addr(6790, 2)
}

// Ceph's MonClient takes the cephx handler the msgr2 handshake built into itself
// (`_finish_hunting`) and renews its tickets over MAuth on that connection. The store
// keeps the session under the address dialled, once the monitor's signature matched:
// authenticated as the global id AUTH_DONE named (it said 0 before: the principal
// requests' authorizers would carry 0), its tickets timed from when AUTH_DONE arrived
// (they were timed from the clock's anchor), and taken once.
#[test]
fn the_handshakes_session_waits_in_the_store_under_the_address_dialled() {
    let c = cluster(15, Instant::now());
    let (mut p, store) = client_and_monitor(&c, &[ConMode::SECURE], c.admin.clone());
    // An hour passes before the client dials.
    p.run_for(Duration::from_secs(3600));
    let dialled = p.now;
    let (_, global_id) = exchange(&mut p);
    let other = crate::testing::v2_addr(6791, 2);
    assert!(store.take_monitor_session(&other).is_none(), "no session dialled there");
    let auth = store.take_monitor_session(&mon_addr()).expect("the handshake's session");
    assert!(auth.is_authenticated());
    assert_eq!(auth.global_id(), global_id);
    let (_, kept) = store.ticket(EntityType::AUTH).unwrap();
    assert_eq!(auth.auth_ticket().map(|t| &t.blob), Some(&kept.blob));
    // The service tickets (an hour) are renewed first, at 75 % of theirs.
    let due = auth.poll_timeout().expect("a renewal ahead");
    let service = AuthConfig::ceph_defaults().auth_service_ticket_ttl;
    let ahead = due.checked_duration_since(dialled);
    assert!(due >= dialled + service * 3 / 4, "not timed from AUTH_DONE: {ahead:?} after the dial");
    assert!(due <= p.now + service * 3 / 4);
    assert!(store.take_monitor_session(&mon_addr()).is_none(), "taken once");
}

// The taken session renews over MAuth against the monitor's session of that
// connection: the auth ticket with the handshake's server challenge and the old ticket
// (GET_AUTH_SESSION_KEY), service tickets with an authorizer from the renewed auth
// ticket (GET_PRINCIPAL_SESSION_KEY, which names the global id). update_from then
// hands the renewed tickets to the provider: its authorizers and the next monitor
// session's reclaim use them.
#[test]
fn the_handshakes_session_renews_over_mauth_and_refills_the_provider() {
    let start = Instant::now();
    let c = cluster(16, start);
    let store = Arc::new(TicketStore::default());
    let admin = AuthEntityName::new(EntityType::CLIENT, "admin");
    let client = provider(&c, EntityType::CLIENT, "admin", 7)
        .with_monitor_key(c.admin.clone(), store.clone());
    let mut cl = client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    let mut rng = TestRng::new(8);
    let mut session = ServerSession::New;
    let mut next_id = || 4100;
    cl.build_request().unwrap();
    let (challenge, global_id) =
        c.server.start_v2(&mut session, admin, 0, &mut rng, &mut next_id).unwrap();
    let more = cl.handle_reply_more(&challenge).unwrap();
    let done_at = start + Duration::from_secs(60);
    let (body, _) =
        c.server.handle_v2_more(&mut session, &more, c.clock.wall(done_at), &mut rng, &[]).unwrap();
    cl.handle_done(done_at, global_id, ConMode::CRC, &body).unwrap();
    assert!(store.take_monitor_session(&mon_addr()).is_none(), "not before the signature");
    cl.confirmed();
    let mut auth = store.take_monitor_session(&mon_addr()).expect("the session");
    let first = auth.auth_ticket().cloned().unwrap();

    // One request and its reply through the monitor's session of this connection.
    let mut round = |auth: &mut CephxClient, now: Instant| -> Vec<ClientEvent> {
        let req = auth.poll_request(now).expect("a request due");
        let reply = c.server.handle_request(
            &mut session,
            &req,
            crate::types::Features::PACIFIC_ADVERTISED,
            c.clock.wall(now),
            &mut rng,
            &mut next_id,
        );
        auth.handle_reply(now, &reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
        std::iter::from_fn(|| auth.poll_event()).collect()
    };
    // The auth ticket at 75 % of its 72 h.
    let mon_ttl = AuthConfig::ceph_defaults().auth_mon_ticket_ttl;
    let now = done_at + mon_ttl * 3 / 4;
    auth.handle_timeout(now).unwrap();
    let events = round(&mut auth, now);
    assert!(events.contains(&ClientEvent::AuthTicketRenewed), "{events:?}");
    let renewed = auth.auth_ticket().cloned().unwrap();
    assert_ne!(renewed.session_key, first.session_key);
    assert_ne!(renewed.blob, first.blob);
    // An osd ticket on the renewed auth ticket's authorizer.
    let before = auth.service_ticket(EntityType::OSD, now).cloned().unwrap();
    auth.request_service_tickets(ServiceMask::of(EntityType::OSD));
    let events = round(&mut auth, now);
    assert!(events.contains(&ClientEvent::ServiceTickets(ServiceMask::of(EntityType::OSD))));
    let osd = auth.service_ticket(EntityType::OSD, now).cloned().unwrap();
    assert_ne!(osd.session_key, before.session_key);

    // Until update_from, the provider still holds the handshake's tickets.
    assert_eq!(store.ticket(EntityType::AUTH).unwrap().1.blob, first.blob);
    store.update_from(&auth, now);
    let (gid, kept) = store.ticket(EntityType::AUTH).unwrap();
    assert_eq!((gid, &kept.blob), (global_id, &renewed.blob));
    assert_eq!(store.ticket(EntityType::OSD).unwrap().1.session_key, osd.session_key);
    // The next monitor connection reclaims the global id with the renewed auth ticket.
    let mut next = client.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    let request = next.build_request().unwrap();
    assert_eq!(request.get(request.len() - 8..), Some(&global_id.to_le_bytes()[..]));
    let mut session = ServerSession::New;
    let admin = AuthEntityName::new(EntityType::CLIENT, "admin");
    let (challenge, kept_id) =
        c.server.start_v2(&mut session, admin, global_id, &mut rng, &mut next_id).unwrap();
    assert_eq!(kept_id, global_id);
    let more = next.handle_reply_more(&challenge).unwrap();
    let wall = c.clock.wall(now);
    assert!(c.server.handle_v2_more(&mut session, &more, wall, &mut rng, &[]).is_ok());
}

/// Completes `cl`'s monitor-mode handshake (its AUTH_REQUEST `req` already built) with
/// `mon` at `at` and confirms it, as the machine does once the monitor's signature
/// matched; returns the global id AUTH_DONE named.
fn finish_at(cl: &mut Box<dyn AuthClient>, req: &[u8], mon: &CephxProvider, at: Instant) -> u64 {
    let mut sv = mon.server(EntityType::CLIENT, AUTH_CEPHX).unwrap();
    let AuthStep::More(challenge) = sv.handle_request(at, ConMode::CRC, false, req) else {
        panic!("no challenge")
    };
    let more = cl.handle_reply_more(&challenge).unwrap();
    let AuthStep::Done { global_id, payload, .. } =
        sv.handle_request(at, ConMode::CRC, true, &more)
    else {
        panic!("refused")
    };
    cl.handle_done(at, global_id, ConMode::CRC, &payload).unwrap();
    cl.confirmed();
    global_id
}

/// Whether the authorizer `store` builds for `service` opens at a daemon of that
/// service holding the cluster's secrets (it checks the global id the authorizer names
/// against the ticket's).
fn store_authorizer_opens(c: &Cluster, store: &TicketStore, service: EntityType) -> bool {
    let Some((gid, ticket)) = store.ticket(service) else { return false };
    let keys = RotatingKeyStore::new(service, c.server.rotating(service).unwrap());
    let mut rng = TestRng::new(40);
    let authorizer = Authorizer::new(gid, &ticket, &mut rng);
    let verdict = AuthorizerVerifier::new().verify(
        &keys,
        service,
        authorizer.bytes(),
        false,
        WALL0,
        None,
        &mut rng,
    );
    matches!(verdict, Ok(AuthorizerVerdict::Accepted(_)))
}

// Two monitor sessions sharing a store, dialled before either finished (Ceph's
// MonClient hunts several monitors at once; two messengers of one application share
// the store), both ask for a new global id and get different ones. The store follows
// the session confirmed last, whole, as Ceph's MonClient replaces its whole cephx
// handler with the new session's: no ticket issued to the other global id is handed
// out under this one. The store kept the first session's MDS ticket (the second did
// not ask for one) under the second's global id: every authorizer to an MDS named a
// global id its ticket was not issued to and was refused, and the store went on
// offering it.
#[test]
fn a_new_global_id_leaves_no_ticket_of_the_old_one_in_the_store() {
    let start = Instant::now();
    let c = cluster(30, start);
    let mon = provider(&c, EntityType::MON, "0", 31).with_key_server(c.server.clone());
    let store = Arc::new(TicketStore::default());
    let cephfs = admin_with(&c, &store)
        .with_wanted_services(ServiceMask::CLIENT_SERVICES.with(ServiceMask::of(EntityType::MDS)));
    let rados = admin_with(&c, &store);
    let mut a = cephfs.client(EntityType::MON, &mon_addr(), AUTH_CEPHX).unwrap();
    let mut b =
        rados.client(EntityType::MON, &crate::testing::v2_addr(6791, 3), AUTH_CEPHX).unwrap();
    let (req_a, req_b) = (a.build_request().unwrap(), b.build_request().unwrap());
    let first = finish_at(&mut a, &req_a, &mon, start);
    assert!(store_authorizer_opens(&c, &store, EntityType::MDS), "the first session's MDS ticket");
    let second = finish_at(&mut b, &req_b, &mon, start);
    assert_ne!(first, second, "both asked for a new global id");
    assert_eq!(store.ticket(EntityType::AUTH).map(|(gid, _)| gid), Some(second));
    for service in [EntityType::MON, EntityType::OSD, EntityType::MGR] {
        assert!(store_authorizer_opens(&c, &store, service), "{}", service.name());
    }
    // No MDS ticket of the second global id: none at all, rather than one of the first.
    if let Some((gid, ticket)) = store.ticket(EntityType::MDS) {
        assert!(
            store_authorizer_opens(&c, &store, EntityType::MDS),
            "an MDS ticket issued to {first} handed out as {gid}'s (secret {})",
            ticket.blob.secret_id
        );
    }
}
