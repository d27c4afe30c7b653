//! Two-sided scenarios without sockets: a [`CephxClient`] talking to a [`KeyServer`]
//! through an in-memory pair with a virtual clock (quinn's `Pair`), bounded so a
//! livelock fails instead of spinning.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::testing::TestRng;
use super::ticket::{duration_to_utime, utime_add, utime_to_duration};
use super::*;
use crate::auth::config::AuthConfig;
use crate::auth::error::AuthError;
use crate::auth::keyring::{parse_entity_name, KeyEntry, KeyRing};
use crate::auth::CryptoKey;
use crate::encoding::UTime;
use crate::messages::MAuth;
use crate::types::{EntityType, Features};

const WALL0: UTime = UTime::new(1_700_000_000, 0);
/// Most request/reply round trips one `drive` may take.
const MAX_ROUNDS: usize = 16;

struct Pair {
    client: CephxClient,
    server: KeyServer,
    session: ServerSession,
    start: Instant,
    now: Instant,
    rng: TestRng,
    next_gid: u64,
    /// Every request the client sent, in order.
    sent: Vec<MAuth>,
    /// Every event the client produced.
    events: Vec<ClientEvent>,
    /// The key server's keyring.
    ring: KeyRing,
    /// The features of the client's connection, as the key server sees them.
    features: Features,
}

fn keyring(rng: &mut TestRng) -> KeyRing {
    let mut ring = KeyRing::new();
    ring.insert(
        parse_entity_name("client.admin").unwrap(),
        KeyEntry::new(CryptoKey::generate(WALL0, rng))
            .with_cap("mon", "allow *")
            .with_cap("osd", "allow *")
            .with_cap("mgr", "allow *"),
    );
    ring.insert(
        parse_entity_name("osd.0").unwrap(),
        KeyEntry::new(CryptoKey::generate(WALL0, rng)).with_cap("mon", "allow profile osd"),
    );
    ring.insert(
        parse_entity_name("client.nocaps").unwrap(),
        KeyEntry::new(CryptoKey::generate(WALL0, rng)),
    );
    ring
}

impl Pair {
    // Starts the virtual clock from the real one (`Instant` has no other constructor).
    #[allow(clippy::disallowed_methods)]
    fn new(seed: u64, name: &str, config: AuthConfig) -> Pair {
        eprintln!("cephx pair seed {seed}");
        let mut rng = TestRng::new(seed);
        let ring = keyring(&mut rng);
        let name = parse_entity_name(name).unwrap();
        let key = ring.key(&name).cloned().unwrap_or_else(|_| CryptoKey::generate(WALL0, &mut rng));
        let server = KeyServer::new(ring.clone(), config, WALL0, &mut rng);
        let client = CephxClient::new(
            ClientConfig::new(name, key),
            Box::new(TestRng::new(seed.wrapping_add(1))),
        );
        let now = Instant::now();
        Pair {
            client,
            server,
            session: ServerSession::New,
            start: now,
            now,
            rng,
            next_gid: 4100,
            sent: Vec::new(),
            events: Vec::new(),
            ring,
            features: Features::PACIFIC_ADVERTISED,
        }
    }

    fn wall(&self) -> UTime {
        utime_add(WALL0, self.now - self.start)
    }

    /// Runs request → reply until the client has nothing to send; returns the first
    /// error of the client.
    fn drive(&mut self) -> Result<(), AuthError> {
        for _ in 0..MAX_ROUNDS {
            let Some(req) = self.client.poll_request(self.now) else {
                while let Some(ev) = self.client.poll_event() {
                    self.events.push(ev);
                }
                return Ok(());
            };
            self.sent.push(req.clone());
            let wall = self.wall();
            let gid = &mut self.next_gid;
            let reply = self.server.handle_request(
                &mut self.session,
                &req,
                self.features,
                wall,
                &mut self.rng,
                &mut || {
                    *gid += 1;
                    *gid
                },
            );
            let r = self.client.handle_reply(self.now, &reply);
            while let Some(ev) = self.client.poll_event() {
                self.events.push(ev);
            }
            r?;
        }
        panic!("no quiescence after {MAX_ROUNDS} round trips: livelock");
    }

    /// Moves the virtual clock to the client's next timeout and handles it.
    fn advance_to_timeout(&mut self) -> Result<(), AuthError> {
        let at = self.client.poll_timeout().expect("a timeout is armed");
        assert!(at >= self.now, "timeout in the past");
        self.now = at;
        self.client.handle_timeout(self.now)
    }

    fn new_session(&mut self) {
        self.session = ServerSession::New;
        self.client.start(self.now);
    }
}

fn ceph_config() -> AuthConfig {
    AuthConfig::ceph_defaults()
}

#[test]
fn client_authenticates_gets_tickets_and_its_authorizer_verifies_at_a_daemon() {
    let mut p = Pair::new(11, "client.admin", ceph_config());
    p.new_session();
    p.drive().unwrap();
    // Two round trips: the extra tickets of round 2 cover mon, osd and mgr.
    assert_eq!(p.sent.len(), 2, "{:?}", p.sent);
    assert_eq!(p.sent[0].protocol, 0);
    assert_eq!(p.sent[1].protocol, 2);
    assert_eq!(
        p.events,
        [
            ClientEvent::Authenticated { global_id: 4101, reclaimed: false },
            ClientEvent::ServiceTickets(ServiceMask(0x15)),
        ]
    );
    assert!(p.client.is_authenticated());
    assert_eq!(p.session.authenticated().map(|(_, g)| g), Some(4101));

    // A daemon holding the osd rotating secrets verifies the client's osd authorizer,
    // with the challenge round.
    let store = RotatingKeyStore::new(EntityType::OSD, p.server.rotating(EntityType::OSD).unwrap());
    let mut authorizer = p.client.authorizer(EntityType::OSD, p.now).unwrap();
    let mut verifier = AuthorizerVerifier::new();
    let wall = p.wall();
    let v = verifier
        .verify(&store, EntityType::OSD, authorizer.bytes(), true, wall, None, &mut p.rng)
        .unwrap();
    let AuthorizerVerdict::Challenge(ch) = v else { panic!("{v:?}") };
    let again = authorizer.handle_challenge(&ch).unwrap();
    let v = verifier.verify(&store, EntityType::OSD, &again, true, wall, None, &mut p.rng).unwrap();
    let AuthorizerVerdict::Accepted(acc) = v else { panic!("{v:?}") };
    assert_eq!(acc.ticket.name.to_string(), "client.admin");
    assert_eq!(acc.ticket.global_id, 4101);
    assert_eq!(acc.ticket.caps.cap_string().as_deref(), Some("allow *"));
    authorizer.verify_reply(&acc.reply).unwrap();
    // No ticket for mds was asked for, so none can be presented.
    assert!(p.client.authorizer(EntityType::MDS, p.now).is_err());
}

// Ticket ttls are a user's text: the largest a `Duration` holds builds a key server
// and authenticates (ticket lifetimes saturate at the wire's u32 seconds); it
// panicked on `period * 2` in the rotating window and an overflowing `utime_add`.
#[test]
fn huge_ticket_ttls_from_the_config_saturate() {
    let mut config = ceph_config();
    config.set("auth_mon_ticket_ttl", "1e19").unwrap();
    config.set("auth_service_ticket_ttl", "1e19").unwrap();
    let mut p = Pair::new(41, "client.admin", config);
    p.client.start(p.now);
    p.drive().unwrap();
    assert!(p.client.is_authenticated());
    assert!(p.client.service_ticket(EntityType::OSD, p.now).is_some());
    assert!(!p.server.rotate(p.wall(), &mut p.rng), "nothing due");
    // A ticket minted with that ttl (its validity not cut to the wire's u32 seconds) is
    // held and renewed from like any other.
    let admin = parse_entity_name("client.admin").unwrap();
    let gid = p.client.global_id();
    let t = p.server.service_ticket(&admin, gid, EntityType::AUTH, p.wall(), &mut p.rng).unwrap();
    p.client.resume(gid, t, p.now);
    assert!(p.client.poll_timeout().is_some());
}

#[test]
fn wrong_key_is_permission_denied_and_final() {
    let mut p = Pair::new(12, "client.admin", ceph_config());
    let name = p.client.name().clone();
    p.client = CephxClient::new(
        ClientConfig::new(name, CryptoKey::new(WALL0, [0x42; 16])),
        Box::new(TestRng::new(99)),
    );
    p.new_session();
    let err = p.drive().unwrap_err();
    assert!(matches!(err, AuthError::PermissionDenied { code: -13, .. }), "{err}");
    assert!(err.to_string().contains("client.admin"), "{err}");
    assert_eq!(p.client.error(), Some(&err));
    assert!(p.client.poll_request(p.now).is_none(), "no retry");
    assert!(p.client.poll_timeout().is_none(), "nothing left to wait for");
}

#[test]
fn unknown_entity_and_missing_caps_are_permission_denied() {
    for name in ["client.nosuchuser", "client.nocaps"] {
        let mut p = Pair::new(13, name, ceph_config());
        p.new_session();
        let err = p.drive().unwrap_err();
        assert!(matches!(err, AuthError::PermissionDenied { code: -13, .. }), "{name}: {err}");
    }
}

#[test]
fn a_monitor_without_cephx_is_no_acceptable_method() {
    let mut cfg = ceph_config();
    cfg.auth_service_required = crate::auth::AuthMethods::none();
    let mut p = Pair::new(14, "client.admin", cfg);
    p.new_session();
    let err = p.drive().unwrap_err();
    assert_eq!(err, AuthError::NoAcceptableMethod { offered: vec![2] });
}

#[test]
fn auth_ticket_renews_at_75_percent_with_the_old_ticket() {
    let mut cfg = ceph_config();
    cfg.auth_mon_ticket_ttl = Duration::from_secs(120);
    cfg.auth_service_ticket_ttl = Duration::from_secs(3600);
    let mut p = Pair::new(15, "client.admin", cfg);
    p.new_session();
    p.drive().unwrap();
    let first = p.client.auth_ticket().unwrap().clone();
    for round in 1..=3 {
        let before = p.now;
        p.advance_to_timeout().unwrap();
        assert_eq!(p.now - before, Duration::from_secs(90), "round {round}: 75 % of 120 s");
        p.drive().unwrap();
        assert_eq!(p.events.last(), Some(&ClientEvent::ServiceTickets(ServiceMask(0x15))));
        assert!(p.events.contains(&ClientEvent::AuthTicketRenewed));
        // The renewal carried the old ticket, and the new blob came encrypted with the
        // previous session key (ticket_enc = 1), which the client opened.
        let last = p.sent.last().unwrap();
        assert!(last.auth_payload.len() > 40, "old ticket included");
    }
    let renewed = p.client.auth_ticket().unwrap();
    assert_ne!(renewed.session_key, first.session_key);
    assert_eq!(p.client.global_id(), 4101);
    assert!(p.client.is_authenticated());
}

#[test]
fn service_tickets_renew_through_get_principal_session_key() {
    let mut cfg = ceph_config();
    cfg.auth_service_ticket_ttl = Duration::from_secs(40);
    let mut p = Pair::new(16, "client.admin", cfg);
    p.new_session();
    p.drive().unwrap();
    let osd_before = p.client.service_ticket(EntityType::OSD, p.now).unwrap().session_key.clone();
    p.advance_to_timeout().unwrap();
    p.drive().unwrap();
    assert_eq!(p.sent.len(), 3);
    assert_eq!(&p.sent[2].auth_payload[..2], &[0x00, 0x02], "GET_PRINCIPAL_SESSION_KEY");
    let osd_after = p.client.service_ticket(EntityType::OSD, p.now).unwrap();
    assert_ne!(osd_after.session_key, osd_before);
}

#[test]
fn reconnect_reclaims_the_global_id_with_the_old_ticket() {
    let mut cfg = ceph_config();
    cfg.auth_allow_insecure_global_id_reclaim = false;
    let mut p = Pair::new(17, "client.admin", cfg);
    p.new_session();
    p.drive().unwrap();
    p.now += Duration::from_secs(5);
    p.new_session();
    p.drive().unwrap();
    assert_eq!(
        p.events[2],
        ClientEvent::Authenticated { global_id: 4101, reclaimed: true },
        "{:?}",
        p.events
    );
    assert_eq!(p.next_gid, 4101, "no new id was handed out");
}

// A session lost between the monitor's challenge (which hands out a new global id) and
// its session key: the id came with no ticket, so the next session must not claim it.
// Ceph's MonClient keeps for reclaim only the global id of a session that authenticated
// (`_finish_hunting` takes the active connection's), with that session's ticket; a
// claim without a ticket is refused -EACCES ("attempt to reclaim global_id without
// presenting ticket"). Ours claimed it: a real monitor injecting socket failures refused
// the next session for good.
#[test]
fn a_session_lost_after_the_challenge_does_not_claim_its_new_global_id() {
    let mut cfg = ceph_config();
    cfg.auth_allow_insecure_global_id_reclaim = false;
    let mut p = Pair::new(23, "client.admin", cfg);
    p.new_session();
    let negotiate = p.client.poll_request(p.now).expect("the negotiation");
    let challenge = p.request(&negotiate);
    p.client.handle_reply(p.now, &challenge).expect("the challenge");
    assert_eq!(challenge.global_id, 4101, "a new global id");
    // The connection is lost before the session key request is answered.
    p.new_session();
    p.drive().expect("the next session authenticates");
    assert!(
        p.events.iter().any(|e| matches!(e, ClientEvent::Authenticated { .. })),
        "{:?}",
        p.events
    );
    // Once authenticated, the id is the session's to reclaim, with its ticket.
    let gid = p.client.global_id();
    p.new_session();
    p.drive().expect("a reclaim");
    assert_eq!(p.client.global_id(), gid);
}

// Without the old ticket, a reclaim of a global id and a renewal on an authenticated
// session are refused -EACCES, but from a legacy client (struct_v < 3) where insecure
// reclaim is allowed: Ceph's verify_old_ticket asks for the ticket in every state past
// NEW_PENDING.
#[test]
fn reclaim_or_renewal_without_the_old_ticket_is_refused_when_insecure_reclaim_is_off() {
    for renewal in [false, true] {
        for (allow, v, ok) in
            [(false, 3, false), (true, 3, false), (true, 2, true), (false, 2, false)]
        {
            let mut cfg = ceph_config();
            cfg.auth_allow_insecure_global_id_reclaim = allow;
            let mut p = Pair::new(18, "client.admin", cfg);
            let key = p.server_key("client.admin");
            let sc = if renewal {
                p.new_session();
                p.drive().unwrap();
                let ServerSession::Authenticated { server_challenge, .. } = p.session else {
                    panic!("not authenticated: {:?}", p.session)
                };
                server_challenge
            } else {
                // Round 1 with a global id to reclaim.
                let n = crate::messages::AuthNegotiation {
                    methods: vec![2],
                    name: parse_entity_name("client.admin").unwrap(),
                    global_id: 777,
                };
                let r1 = p.request(&MAuth::negotiate(&n, 0));
                assert_eq!((r1.result, r1.global_id), (0, 777));
                u64::from_le_bytes(r1.result_bl[1..9].try_into().unwrap())
            };
            let r2 = p.request(&session_key_request(&key, sc, v, ServiceMask::AUTH));
            let case = format!("renewal {renewal}, allow_insecure {allow}, struct_v {v}");
            assert_eq!(r2.result == 0, ok, "{case}: {}", r2.result);
            if !ok {
                assert_eq!(r2.result, -13, "{case}");
            }
        }
    }
}

// Ceph's AuthMonitor::prep_auth on the MAuth path: cephx comes off what an entity
// offers when its connection lacks MSG_AUTH and signatures are required (mon, osd, mds
// and mgr names by the cluster option, others by the service one), else when it lacks
// CEPHX_V2 and cephx v2 is required (the default); the monitor then picks among the
// rest (auth none where allowed) or refuses -EOPNOTSUPP. Without MSG_AUTH and with no
// signatures required the version goes unchecked (Ceph's `else if`).
#[test]
fn a_monitor_takes_cephx_off_for_a_connection_without_the_features_it_requires() {
    let full = Features::PACIFIC_ADVERTISED;
    let no_v2 = full & !Features::CEPHX_V2;
    let no_auth = no_v2 & !Features::MSG_AUTH;
    let set = |options: &[(&str, &str)]| {
        let mut cfg = ceph_config();
        cfg.auth_service_required = crate::auth::AuthMethods(vec![2, 1]);
        for (name, value) in options {
            cfg.set(name, value).unwrap();
        }
        cfg
    };
    let v1 = [
        ("cephx_require_version", "1"),
        ("cephx_service_require_version", "1"),
        ("cephx_cluster_require_version", "1"),
    ];
    // Who, its connection's features, the options set, the methods it offers, and the
    // reply's protocol and result.
    type Case<'a> = (&'a str, Features, &'a [(&'a str, &'a str)], &'a [u32], u32, i32);
    let cases: [Case<'_>; 9] = [
        ("client.admin", full, &[], &[2], 2, 0),
        ("client.admin", no_v2, &[], &[2], 0, -95),
        ("client.admin", no_v2, &[], &[2, 1], 1, 0),
        ("client.admin", no_v2, &v1, &[2], 2, 0),
        ("client.admin", no_auth, &[], &[2], 2, 0),
        ("client.admin", no_auth, &[("cephx_service_require_signatures", "true")], &[2], 0, -95),
        ("osd.0", no_auth, &[("cephx_service_require_signatures", "true")], &[2], 2, 0),
        ("osd.0", no_auth, &[("cephx_cluster_require_signatures", "true")], &[2], 0, -95),
        ("osd.0", no_auth, &[("cephx_require_signatures", "true")], &[2], 0, -95),
    ];
    for (i, (name, features, options, offered, protocol, result)) in cases.into_iter().enumerate() {
        let mut p = Pair::new(26, name, set(options));
        p.features = features;
        let n = crate::messages::AuthNegotiation {
            methods: offered.to_vec(),
            name: parse_entity_name(name).unwrap(),
            global_id: 0,
        };
        let r = p.request(&MAuth::negotiate(&n, 0));
        assert_eq!((r.protocol, r.result), (protocol, result), "case {i}");
    }
}

/// GET_AUTH_SESSION_KEY (CephXAuthenticate `struct_v`) proving `key` against server
/// challenge `sc`, without an old ticket, asking for `other_keys`.
fn session_key_request(key: &CryptoKey, sc: u64, struct_v: u8, other_keys: ServiceMask) -> MAuth {
    let auth = request::Authenticate {
        struct_v,
        client_challenge: 5,
        key: challenge_proof(key, sc, 5),
        old_ticket: TicketBlob::default(),
        other_keys,
    };
    let mut e = crate::encoding::Encoder::new();
    RequestType::GET_AUTH_SESSION_KEY.encode(&mut e);
    auth.encode(&mut e);
    MAuth { protocol: 2, auth_payload: e.into_bytes(), ..MAuth::default() }
}

impl Pair {
    fn server_key(&self, name: &str) -> CryptoKey {
        self.ring.key(&parse_entity_name(name).unwrap()).unwrap().clone()
    }
    fn request(&mut self, m: &MAuth) -> crate::messages::MAuthReply {
        let wall = self.wall();
        let gid = &mut self.next_gid;
        self.server.handle_request(
            &mut self.session,
            m,
            self.features,
            wall,
            &mut self.rng,
            &mut || {
                *gid += 1;
                *gid
            },
        )
    }
}

#[test]
fn a_silent_monitor_is_a_timeout_not_a_hang() {
    let mut p = Pair::new(19, "client.admin", ceph_config());
    p.new_session();
    let req = p.client.poll_request(p.now).unwrap();
    assert_eq!(req.protocol, 0);
    assert!(p.client.poll_request(p.now).is_none(), "one request at a time");
    let err = p.advance_to_timeout().unwrap_err();
    assert_eq!(err, AuthError::Timeout { waiting_for: "server challenge" });
    assert_eq!(p.now - p.start, Duration::from_secs(30));
    assert!(p.client.poll_timeout().is_none());
}

#[test]
fn a_daemon_fetches_its_rotating_secrets() {
    let mut p = Pair::new(20, "osd.0", ceph_config());
    p.client.request_rotating_secrets();
    p.new_session();
    p.drive().unwrap();
    let got = p.events.iter().find_map(|e| match e {
        ClientEvent::RotatingSecrets(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(got, p.server.rotating(EntityType::OSD));
    // A client entity gets none.
    let mut p = Pair::new(21, "client.admin", ceph_config());
    p.client.request_rotating_secrets();
    p.new_session();
    assert!(matches!(p.drive(), Err(AuthError::Refused { code: -22, .. })));
}

#[test]
fn hostile_replies_fail_cleanly_in_every_state() {
    // Random bytes as result_bl at each step: an error or a state change, never a panic.
    for seed in 0..200u64 {
        let mut p = Pair::new(22, "client.admin", ceph_config());
        let mut rng = TestRng::new(seed);
        p.new_session();
        for _step in 0..3 {
            let Some(_req) = p.client.poll_request(p.now) else { break };
            let len = (rand_core::RngCore::next_u32(&mut rng) % 300) as usize;
            let mut bl = vec![0u8; len];
            rand_core::RngCore::fill_bytes(&mut rng, &mut bl);
            let reply = crate::messages::MAuthReply {
                protocol: 2,
                result: 0,
                global_id: 1,
                result_bl: bl.into(),
                result_msg: String::new(),
            };
            if p.client.handle_reply(p.now, &reply).is_err() {
                break;
            }
        }
    }
}

#[test]
fn key_server_rotates_expired_secrets_and_old_tickets_still_open_within_the_window() {
    let mut cfg = ceph_config();
    cfg.auth_service_ticket_ttl = Duration::from_secs(60);
    let mut p = Pair::new(23, "client.admin", cfg);
    p.new_session();
    p.drive().unwrap();
    let before = p.server.rotating(EntityType::OSD).unwrap();
    assert_eq!(before.current().unwrap().0, 2);
    // The current secret (expiring at +60 s) has expired: one rotation.
    let mut rng = TestRng::new(5);
    p.server.rotate(utime_add(WALL0, Duration::from_secs(61)), &mut rng);
    let after = p.server.rotating(EntityType::OSD).unwrap();
    assert_eq!(after.secrets.keys().copied().collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(after.current().unwrap().0, 3);
    assert_eq!(after.max_ver, 4);
    // A ticket sealed with secret 2 still opens with the rotated set.
    let store = RotatingKeyStore::new(EntityType::OSD, after.clone());
    let authorizer = p.client.authorizer(EntityType::OSD, p.now).unwrap();
    let v = AuthorizerVerifier::new().verify(
        &store,
        EntityType::OSD,
        authorizer.bytes(),
        false,
        WALL0,
        None,
        &mut rng,
    );
    assert!(matches!(v, Ok(AuthorizerVerdict::Accepted(_))), "{v:?}");
    // A very long pause replaces the window once, boundedly.
    p.server.rotate(utime_add(WALL0, Duration::from_secs(1_000_000)), &mut rng);
    assert_eq!(p.server.rotating(EntityType::OSD).unwrap().secrets.len(), 3);
}

// After a pause of many periods, one rotation leaves a current secret valid past now,
// expiring two periods after it, and a rotation a second later keeps it: Ceph's
// _rotate_secret dates each new secret from the later of now + ttl and the newest
// one's expiration. Chained from the newest secret alone, the bounded passes left the
// current secret expired, and every later call replaced the whole window again: the
// secret that had sealed a ticket a second before was gone.
#[test]
fn a_rotation_after_a_long_pause_keeps_its_current_secret_a_second_later() {
    let mut cfg = ceph_config();
    cfg.auth_service_ticket_ttl = Duration::from_secs(60);
    let mut rng = TestRng::new(31);
    let server = KeyServer::new(keyring(&mut rng), cfg.clone(), WALL0, &mut rng);
    let later = utime_add(WALL0, Duration::from_secs(1_000_000));
    server.rotate(later, &mut rng);
    let a_second_later = utime_add(later, Duration::from_secs(1));
    let services = [EntityType::AUTH, EntityType::MON, EntityType::OSD, EntityType::MGR];
    let current: Vec<u64> = services
        .iter()
        .map(|&s| {
            let r = server.rotating(s).unwrap();
            let (id, k) = r.current().unwrap();
            let period = if s == EntityType::AUTH {
                cfg.auth_mon_ticket_ttl
            } else {
                cfg.auth_service_ticket_ttl
            };
            assert_eq!(k.expiration, utime_add(later, period * 2), "{}", s.name());
            id
        })
        .collect();
    server.rotate(a_second_later, &mut rng);
    for (&s, &id) in services.iter().zip(&current) {
        let r = server.rotating(s).unwrap();
        assert!(r.get(id).is_some(), "{}: secret {id} is gone: {:?}", s.name(), r.secrets.keys());
        let (now_current, k) = r.current().unwrap();
        assert_eq!(now_current, id, "{}", s.name());
        assert!(k.expiration >= a_second_later, "{}", s.name());
    }
}

// Two monitor threads finding the same secrets due at once: one rotates, the other
// finds them current, so no secret id is handed out with two keys. (Two threads only
// to race the calls: the crate itself starts none.)
#[test]
#[allow(clippy::disallowed_methods)]
fn concurrent_rotations_rotate_once() {
    let mut rng = TestRng::new(32);
    let server = KeyServer::new(keyring(&mut rng), ceph_config(), WALL0, &mut rng);
    let later = utime_add(WALL0, Duration::from_secs(4000));
    let barrier = std::sync::Barrier::new(2);
    let rotated: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u64)
            .map(|i| {
                let (server, barrier) = (&server, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    server.rotate(later, &mut TestRng::new(40 + i))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(rotated.iter().filter(|r| **r).count(), 1, "{rotated:?}");
    assert_eq!(server.rotating(EntityType::OSD).unwrap().current().unwrap().0, 3);
}

// The key server rotates AUTH's secrets at the auth tickets' lifetime, the others at
// the service tickets' (Ceph's _rotate_secret). With AUTH's at the service period, the
// secret that sealed a client's auth ticket was gone after two rotations, and the
// client's third renewal of its service tickets (at 135 minutes) was refused, -EACCES.
#[test]
fn auth_tickets_still_open_after_hours_of_rotations() {
    let mut p = Pair::new(25, "client.admin", ceph_config());
    p.new_session();
    p.drive().unwrap();
    let auth_id = p.server.rotating(EntityType::AUTH).unwrap().current().unwrap().0;
    for round in 0..4u64 {
        p.advance_to_timeout().unwrap();
        let wall = p.wall();
        p.server.rotate(wall, &mut TestRng::new(100 + round));
        p.drive().unwrap_or_else(|e| panic!("renewal {round} at {:?}: {e}", p.now - p.start));
    }
    assert!(p.now - p.start >= Duration::from_secs(2 * 3600), "{:?}", p.now - p.start);
    let osd = p.server.rotating(EntityType::OSD).unwrap().current().unwrap().0;
    assert!(osd > 2, "the service secrets rotated (current {osd})");
    assert_eq!(p.server.rotating(EntityType::AUTH).unwrap().current().unwrap().0, auth_id);
}

#[test]
fn service_tickets_need_the_sessions_own_auth_ticket() {
    // client.admin authenticates; osd.0 on another session presents admin's auth ticket
    // (with admin's global id) in GET_PRINCIPAL_SESSION_KEY: refused, -EACCES.
    let mut p = Pair::new(24, "client.admin", ceph_config());
    p.new_session();
    p.drive().unwrap();
    let stolen = p.client.auth_ticket().unwrap().clone();
    let gid = p.client.global_id();
    let mut thief = ServerSession::New;
    std::mem::swap(&mut p.session, &mut thief);
    let key = p.server_key("osd.0");
    let n = crate::messages::AuthNegotiation {
        methods: vec![2],
        name: parse_entity_name("osd.0").unwrap(),
        global_id: 0,
    };
    let r1 = p.request(&MAuth::negotiate(&n, 0));
    let sc = u64::from_le_bytes(r1.result_bl[1..9].try_into().unwrap());
    let r2 = p.request(&session_key_request(&key, sc, 3, ServiceMask::NONE));
    assert_eq!(r2.result, 0, "osd.0 authenticates");
    let authorizer = Authorizer::new(gid, &stolen, &mut p.rng);
    let mut e = crate::encoding::Encoder::new();
    RequestType::GET_PRINCIPAL_SESSION_KEY.encode(&mut e);
    e.bytes(authorizer.bytes());
    e.u8(1).u32(ServiceMask::CLIENT_SERVICES.0);
    let r3 = p.request(&MAuth { protocol: 2, auth_payload: e.into_bytes(), ..MAuth::default() });
    assert_eq!(r3.result, -13);
    assert!(r3.result_bl.is_empty());
}

/// Runs `client` (a second one beside a [`Pair`]'s, on `session`) against the pair's
/// key server until it has nothing to send; its events go to `events`.
fn drive_second(
    p: &mut Pair,
    client: &mut CephxClient,
    session: &mut ServerSession,
    events: &mut Vec<ClientEvent>,
) -> Result<(), AuthError> {
    let wall = p.wall();
    for _ in 0..MAX_ROUNDS {
        let Some(req) = client.poll_request(p.now) else {
            events.extend(std::iter::from_fn(|| client.poll_event()));
            return Ok(());
        };
        let gid = &mut p.next_gid;
        let reply =
            p.server.handle_request(session, &req, p.features, wall, &mut p.rng, &mut || {
                *gid += 1;
                *gid
            });
        let r = client.handle_reply(p.now, &reply);
        events.extend(std::iter::from_fn(|| client.poll_event()));
        r?;
    }
    panic!("no quiescence after {MAX_ROUNDS} round trips: livelock");
}

// Days of uptime with the OSD's clock 20 minutes ahead of the monitor's: the monitor
// rotates on its tick, client.admin renews its tickets when its timer says (75 % of
// their validity, on its own clock), osd.0 refreshes its rotating secrets as Ceph's
// MonClient::_check_auth_rotating does (once the current one expired before now -
// min(30 s, ttl / 4), on its own clock). Every minute the client's osd authorizer must
// be accepted, as a Ceph 16.2 OSD accepts it: cephx_verify_authorizer never looks at
// the ticket's `expires` (a ticket is good while the OSD holds the secret that sealed
// it). Ours refused every ticket past `expires` on the OSD's clock: from 40 minutes
// into each ticket, before the client renews at 45, every authorizer was refused.
#[test]
fn an_osd_whose_clock_runs_ahead_accepts_tickets_over_days() {
    const SKEW: Duration = Duration::from_secs(20 * 60);
    let mut p = Pair::new(61, "client.admin", ceph_config());
    p.new_session();
    p.drive().unwrap();
    let osd_name = parse_entity_name("osd.0").unwrap();
    let osd_config = ClientConfig {
        want_services: ServiceMask::NONE,
        ..ClientConfig::new(osd_name, p.server_key("osd.0"))
    };
    let mut osd = CephxClient::new(osd_config, Box::new(TestRng::new(62)));
    let mut osd_session = ServerSession::New;
    let mut osd_events = Vec::new();
    osd.start(p.now);
    let mut keys = RotatingKeyStore::new(EntityType::OSD, RotatingSecrets::default());
    let ttl = ceph_config().auth_service_ticket_ttl;
    let cutoff_by = (ttl / 4).min(Duration::from_secs(30));
    let end = p.now + Duration::from_secs(2 * 86_400);
    let mut tick = 0u64;
    while p.now < end {
        tick += 1;
        let wall = p.wall();
        p.server.rotate(wall, &mut TestRng::new(1000 + tick));
        // osd.0 on its own clock.
        let osd_wall = utime_add(wall, SKEW);
        let cutoff = duration_to_utime(utime_to_duration(osd_wall) - cutoff_by);
        if keys.rotating.secrets.len() < 3
            || keys.rotating.current().is_none_or(|(_, k)| k.expiration <= cutoff)
        {
            osd.request_rotating_secrets();
        }
        drive_second(&mut p, &mut osd, &mut osd_session, &mut osd_events).unwrap();
        for e in osd_events.drain(..) {
            if let ClientEvent::RotatingSecrets(r) = e {
                keys.rotating = r;
            }
        }
        // client.admin.
        if p.client.poll_timeout().is_some_and(|t| t <= p.now) {
            p.client.handle_timeout(p.now).unwrap();
        }
        p.drive().unwrap();
        let mut authorizer = p.client.authorizer(EntityType::OSD, p.now).unwrap();
        let mut verifier = AuthorizerVerifier::new();
        let first = verifier.verify(
            &keys,
            EntityType::OSD,
            authorizer.bytes(),
            true,
            osd_wall,
            None,
            &mut p.rng,
        );
        let verdict = match first {
            Ok(AuthorizerVerdict::Challenge(ch)) => {
                let again = authorizer.handle_challenge(&ch).unwrap();
                verifier.verify(&keys, EntityType::OSD, &again, true, osd_wall, None, &mut p.rng)
            }
            other => other,
        };
        let at = p.now - p.start;
        assert!(matches!(verdict, Ok(AuthorizerVerdict::Accepted(_))), "at {at:?}: {verdict:?}");
        p.now += Duration::from_secs(60);
    }
    // A ticket a whole lifetime past its expiry is still refused, whatever the secrets.
    let ticket = p.client.service_ticket(EntityType::OSD, p.now).unwrap().clone();
    let stale = utime_add(p.wall(), ttl * 2 + Duration::from_secs(1));
    let authorizer = Authorizer::new(p.client.global_id(), &ticket, &mut p.rng);
    let r = AuthorizerVerifier::new().verify(
        &keys,
        EntityType::OSD,
        authorizer.bytes(),
        false,
        stale,
        None,
        &mut p.rng,
    );
    assert_eq!(r, Err(AuthError::Expired));
}

// A monitor handing out tickets of no validity must not be asked again at once, over and
// over (Ceph's MonClient checks its tickets on its tick, once a second): at most ten
// times a second here. Before, the renewal was due again the moment the reply came, and
// the client asked at the speed of the round trip.
#[test]
fn tickets_without_validity_are_not_renewed_in_a_loop() {
    for (mon_ttl, service_ttl) in [(3600, 0), (0, 3600)] {
        let mut cfg = ceph_config();
        cfg.auth_mon_ticket_ttl = Duration::from_secs(mon_ttl);
        cfg.auth_service_ticket_ttl = Duration::from_secs(service_ttl);
        let mut p = Pair::new(31, "client.admin", cfg);
        p.new_session();
        p.drive().unwrap();
        let (t0, sent0) = (p.now, p.sent.len());
        for _ in 0..20 {
            p.advance_to_timeout().unwrap();
            p.drive().unwrap();
        }
        let asked = p.sent.len() - sent0;
        assert!(asked >= 10, "ttls {mon_ttl}/{service_ttl}: still renewed ({asked})");
        assert!(
            p.now - t0 >= Duration::from_millis(100) * (asked as u32 - 1),
            "ttls {mon_ttl}/{service_ttl}: {asked} renewals in {:?}",
            p.now - t0
        );
    }
}

// A service the monitor leaves out of its reply (it has no secrets for it) is asked
// for again at the next check, not at once.
#[test]
fn a_service_left_out_of_a_renewal_is_asked_again_a_second_later() {
    let mut cfg = ceph_config();
    cfg.auth_service_ticket_ttl = Duration::from_secs(40);
    let mut p = Pair::new(32, "client.admin", cfg);
    p.new_session();
    p.drive().unwrap();
    assert!(p.client.service_ticket(EntityType::OSD, p.now).is_some());
    // The renewal is due; the monitor answers without any ticket.
    p.advance_to_timeout().unwrap();
    let req = p.client.poll_request(p.now).expect("renewal");
    let reply = empty_ticket_reply(&p, &req);
    let at = p.now;
    p.client.handle_reply(p.now, &reply).unwrap();
    let next = p.client.poll_timeout().expect("a renewal is still wanted");
    assert!(next >= at + Duration::from_secs(1), "asked again after {:?}", next - at);
}

/// A monitor's answer to a ticket request `req` that carries no ticket at all (it has
/// none to give).
fn empty_ticket_reply(p: &Pair, req: &MAuth) -> crate::messages::MAuthReply {
    let mut e = crate::encoding::Encoder::new();
    super::request::ResponseHeader {
        request_type: RequestType::GET_PRINCIPAL_SESSION_KEY,
        status: 0,
    }
    .encode(&mut e);
    let session_key = p.client.auth_ticket().unwrap().session_key.clone();
    super::ticket::encode_ticket_reply(&mut e, &session_key, &[]);
    crate::messages::MAuthReply {
        protocol: req.protocol,
        result: 0,
        global_id: p.client.global_id(),
        result_bl: bytes::Bytes::from(e.into_vec()),
        result_msg: String::new(),
    }
}

// A service the client wants and never held, left out of the monitor's answers (it had
// no secrets for it yet), is asked for again at the next check, as Ceph's MonClient asks
// on every tick while its handler `need_tickets`. It used to be dropped from the wanted
// set for the rest of the session: no ticket, and no connection to that service, until
// the client authenticated again.
#[test]
fn a_wanted_service_never_issued_is_asked_for_again() {
    use crate::encoding::{Decoder, Encoder};
    use request::Authenticate;
    let mut p = Pair::new(33, "client.admin", ceph_config());
    p.new_session();
    let answer = |p: &mut Pair, req: &MAuth| {
        let wall = p.wall();
        let gid = &mut p.next_gid;
        p.server.handle_request(&mut p.session, req, p.features, wall, &mut p.rng, &mut || {
            *gid += 1;
            *gid
        })
    };
    let req = p.client.poll_request(p.now).expect("negotiation");
    let reply = answer(&mut p, &req);
    p.client.handle_reply(p.now, &reply).unwrap();
    // GET_AUTH_SESSION_KEY: the monitor issues no OSD ticket with the auth ticket.
    let mut req = p.client.poll_request(p.now).expect("session key request");
    let mut d = Decoder::new(&req.auth_payload);
    let ty = RequestType::decode(&mut d).unwrap();
    let mut a = Authenticate::decode(&mut d).unwrap();
    a.other_keys = a.other_keys.without(ServiceMask::of(EntityType::OSD));
    let mut e = Encoder::new();
    ty.encode(&mut e);
    a.encode(&mut e);
    req.auth_payload = e.into_bytes();
    let reply = answer(&mut p, &req);
    p.client.handle_reply(p.now, &reply).unwrap();
    assert!(p.client.is_authenticated());
    assert!(p.client.service_ticket(EntityType::OSD, p.now).is_none());
    // The client asks for it; the monitor has none to give.
    let req = p.client.poll_request(p.now).expect("the OSD ticket asked for");
    let empty = empty_ticket_reply(&p, &req);
    let at = p.now;
    p.client.handle_reply(p.now, &empty).unwrap();
    assert!(p.client.poll_request(p.now).is_none(), "not asked again at once");
    // Asked again at the next check, and this time the monitor has it.
    let next = p.client.poll_timeout().expect("a check ahead");
    assert!(next >= at + Duration::from_secs(1), "asked again after {:?}", next - at);
    assert!(next <= at + Duration::from_secs(2), "not asked again for {:?}", next - at);
    p.advance_to_timeout().unwrap();
    p.drive().unwrap();
    assert!(p.client.service_ticket(EntityType::OSD, p.now).is_some(), "the OSD ticket came");
}

// TicketStore::update_from with a monitor session of another global id (a new
// CephxClient: the application restarted its monitor client, or refills one store from
// two) takes that session's tickets alone: those of the old global id go, as Ceph's
// MonClient replaces its whole cephx handler with the new session's. The store kept
// the old session's MDS ticket under the new global id: every authorizer to an MDS was
// refused (the global id it names is not the ticket's), and the store went on offering
// it.
#[test]
fn update_from_a_session_of_a_new_global_id_keeps_no_ticket_of_the_old_one() {
    let mut p = Pair::new(41, "client.admin", ceph_config());
    let name = parse_entity_name("client.admin").unwrap();
    let key = p.ring.key(&name).cloned().unwrap();
    let mut with_mds = ClientConfig::new(name.clone(), key.clone());
    with_mds.want_services = ServiceMask::CLIENT_SERVICES.with(ServiceMask::of(EntityType::MDS));
    p.client = CephxClient::new(with_mds, Box::new(TestRng::new(42)));
    p.new_session();
    p.drive().unwrap();
    let store = TicketStore::default();
    store.update_from(&p.client, p.now);
    let first = p.client.global_id();
    assert!(store.ticket(EntityType::MDS).is_some());

    p.client = CephxClient::new(ClientConfig::new(name, key), Box::new(TestRng::new(43)));
    p.new_session();
    p.drive().unwrap();
    let second = p.client.global_id();
    assert_ne!(first, second, "a client without memory gets a new global id");
    store.update_from(&p.client, p.now);
    for service in [EntityType::MON, EntityType::OSD, EntityType::MGR, EntityType::MDS] {
        let Some((gid, ticket)) = store.ticket(service) else {
            assert_eq!(service, EntityType::MDS, "the second session brought a ticket");
            continue;
        };
        let authorizer = Authorizer::new(gid, &ticket, &mut p.rng);
        let v = verify_at_daemon(&mut p, service, authorizer.bytes());
        assert!(
            matches!(v, Ok(AuthorizerVerdict::Accepted(_))),
            "{}: ticket handed out as {gid}'s refused: {v:?}",
            service.name()
        );
    }
}

/// What a daemon of `service` holding the cluster's rotating secrets makes of
/// `authorizer` (it checks the global id named against the ticket's).
fn verify_at_daemon(
    p: &mut Pair,
    service: EntityType,
    authorizer: &[u8],
) -> Result<AuthorizerVerdict, AuthError> {
    let wall = p.wall();
    let keys = RotatingKeyStore::new(service, p.server.rotating(service).unwrap());
    AuthorizerVerifier::new().verify(&keys, service, authorizer, false, wall, None, &mut p.rng)
}

// CephxClient::resume with another global id (an earlier session of another connection
// to the monitors, as its docs offer) leaves none of the old id's service tickets: the
// next session reclaims the resumed id, and an authorizer names the global id its
// ticket was issued to. The MDS ticket the client had asked for under its own id stayed,
// held and not due: its authorizers, naming the resumed id, were refused.
#[test]
fn resume_with_another_global_id_keeps_no_service_ticket_of_the_old_one() {
    let mut p = Pair::new(51, "client.admin", ceph_config());
    let name = parse_entity_name("client.admin").unwrap();
    let key = p.ring.key(&name).cloned().unwrap();
    p.new_session();
    p.drive().unwrap();
    p.client.request_service_tickets(ServiceMask::of(EntityType::MDS));
    p.drive().unwrap();
    let first = p.client.global_id();
    assert!(p.client.service_ticket(EntityType::MDS, p.now).is_some());

    let other = CephxClient::new(ClientConfig::new(name, key), Box::new(TestRng::new(52)));
    let mut earlier = std::mem::replace(&mut p.client, other);
    p.new_session();
    p.drive().unwrap();
    let (second, auth) = (p.client.global_id(), p.client.auth_ticket().cloned().unwrap());
    assert_ne!(first, second);
    earlier.resume(second, auth, p.now);
    p.client = earlier;
    p.new_session();
    p.drive().unwrap();
    assert_eq!(p.client.global_id(), second, "the resumed id reclaimed");
    for service in [EntityType::OSD, EntityType::MDS] {
        let Ok(authorizer) = p.client.authorizer(service, p.now) else { continue };
        let v = verify_at_daemon(&mut p, service, authorizer.bytes());
        assert!(matches!(v, Ok(AuthorizerVerdict::Accepted(_))), "{}: {v:?}", service.name());
    }
}

// ---- sessions lost part-way (review cephxlost) ----

/// A [`Pair`] with insecure reclaim off (a 16.2 monitor's default), authenticated.
fn authenticated_pair(seed: u64, name: &str) -> Pair {
    let mut cfg = ceph_config();
    cfg.auth_allow_insecure_global_id_reclaim = false;
    cfg.auth_mon_ticket_ttl = Duration::from_secs(120);
    let mut p = Pair::new(seed, name, cfg);
    p.new_session();
    p.drive().expect("the first session authenticates");
    assert_eq!(p.client.global_id(), 4101);
    p
}

/// The last `Authenticated` event.
fn last_authenticated(p: &Pair) -> Option<ClientEvent> {
    p.events.iter().rev().find(|e| matches!(e, ClientEvent::Authenticated { .. })).cloned()
}

// (a) A reclaim's challenge came, the connection went before its session key: the next
// session reclaims the same id with the same old ticket.
#[test]
fn a_session_lost_after_a_reclaim_challenge_reclaims_again_with_the_old_ticket() {
    let mut p = authenticated_pair(71, "client.admin");
    p.now += Duration::from_secs(5);
    p.new_session();
    let negotiate = p.client.poll_request(p.now).unwrap();
    let challenge = p.request(&negotiate);
    assert_eq!(challenge.global_id, 4101);
    p.client.handle_reply(p.now, &challenge).unwrap();
    p.new_session();
    p.drive().expect("the next session reclaims");
    assert_eq!(
        last_authenticated(&p),
        Some(ClientEvent::Authenticated { global_id: 4101, reclaimed: true })
    );
    assert_eq!(p.next_gid, 4101, "no new id was handed out");
}

// (b) A renewal whose reply was lost (the monitor renewed, the reply never came): the
// next session reclaims with the ticket still held, whose session key opens the reply.
#[test]
fn a_session_lost_in_a_renewal_reclaims_with_the_ticket_held() {
    let mut p = authenticated_pair(72, "client.admin");
    p.advance_to_timeout().unwrap();
    let renewal = p.client.poll_request(p.now).expect("the renewal");
    let reply = p.request(&renewal);
    assert_eq!(reply.result, 0, "the monitor renewed; its reply is lost");
    p.new_session();
    p.drive().expect("the next session reclaims");
    assert_eq!(
        last_authenticated(&p),
        Some(ClientEvent::Authenticated { global_id: 4101, reclaimed: true })
    );
    // And it renews on from there.
    p.advance_to_timeout().unwrap();
    let before = p.events.len();
    p.drive().expect("a renewal on the new session");
    assert!(p.events[before..].contains(&ClientEvent::AuthTicketRenewed), "{:?}", p.events);
}

// (c) A service-ticket request lost with its session: asked again on the next one.
#[test]
fn a_service_ticket_request_lost_with_its_session_is_asked_again() {
    let mut p = authenticated_pair(73, "client.admin");
    p.client.request_service_tickets(ServiceMask::of(EntityType::MDS));
    let req = p.client.poll_request(p.now).expect("GET_PRINCIPAL_SESSION_KEY");
    assert_eq!(&req.auth_payload[..2], &[0x00, 0x02]);
    p.new_session();
    p.drive().unwrap();
    assert!(p.client.is_authenticated());
    assert!(p.client.service_ticket(EntityType::MDS, p.now).is_some(), "{:?}", p.events);
}

// (c) A rotating-secret request lost with its session: asked again on the next one.
#[test]
fn a_rotating_secret_request_lost_with_its_session_is_asked_again() {
    let mut p = authenticated_pair(74, "osd.0");
    p.client.request_rotating_secrets();
    let req = p.client.poll_request(p.now).expect("GET_ROTATING_KEY");
    assert_eq!(&req.auth_payload[..2], &[0x00, 0x04]);
    p.new_session();
    p.drive().unwrap();
    assert!(p.events.iter().any(|e| matches!(e, ClientEvent::RotatingSecrets(_))));
}

// (d) The monitor answers a reclaim with another global id (the old ticket and service
// tickets go), and that session is lost before its key: the next session asks for a new
// id, without the old ticket.
#[test]
fn a_session_lost_after_a_refused_reclaim_asks_for_a_new_id() {
    let mut p = authenticated_pair(75, "client.admin");
    p.new_session();
    let negotiate = p.client.poll_request(p.now).unwrap();
    // The monitor forgot the id: it answers as to a new client.
    let mut n = crate::messages::AuthNegotiation::decode(&negotiate.auth_payload).unwrap();
    assert_eq!(n.global_id, 4101);
    n.global_id = 0;
    let challenge = p.request(&MAuth::negotiate(&n, 0));
    assert_eq!(challenge.global_id, 4102);
    p.client.handle_reply(p.now, &challenge).unwrap();
    assert!(p.client.auth_ticket().is_none());
    assert!(p.client.service_ticket(EntityType::OSD, p.now).is_none());
    p.new_session();
    p.drive().expect("the next session authenticates");
    assert_eq!(
        last_authenticated(&p),
        Some(ClientEvent::Authenticated { global_id: 4103, reclaimed: false })
    );
}

// (f) The reply to the old session's renewal arrives after the next session's
// negotiation went out: it is no server challenge and must not be taken for one (the
// session would answer a challenge the monitor never made, and fail on the real one).
#[test]
fn a_late_session_key_reply_is_not_taken_for_the_next_sessions_challenge() {
    let mut p = authenticated_pair(76, "client.admin");
    p.advance_to_timeout().unwrap();
    let renewal = p.client.poll_request(p.now).expect("the renewal");
    let late = p.request(&renewal);
    assert_eq!(late.result, 0);
    p.new_session();
    let negotiate = p.client.poll_request(p.now).unwrap();
    let _ = p.client.handle_reply(p.now, &late);
    let challenge = p.request(&negotiate);
    p.client.handle_reply(p.now, &challenge).expect("the real challenge is taken");
    p.drive().expect("the session authenticates");
    assert_eq!(
        last_authenticated(&p),
        Some(ClientEvent::Authenticated { global_id: 4101, reclaimed: true })
    );
}

// (f) The reply to the old session's service-ticket request arrives while the next
// session waits for its session key: it answers another request and must not fail the
// session; the session key reply that follows authenticates it.
#[test]
fn a_late_service_ticket_reply_does_not_fail_the_next_sessions_authentication() {
    let mut p = authenticated_pair(77, "client.admin");
    p.client.request_service_tickets(ServiceMask::of(EntityType::MDS));
    let principal = p.client.poll_request(p.now).expect("GET_PRINCIPAL_SESSION_KEY");
    let late = p.request(&principal);
    assert_eq!(late.result, 0);
    p.new_session();
    let negotiate = p.client.poll_request(p.now).unwrap();
    let challenge = p.request(&negotiate);
    p.client.handle_reply(p.now, &challenge).unwrap();
    let session_key = p.client.poll_request(p.now).expect("GET_AUTH_SESSION_KEY");
    p.client.handle_reply(p.now, &late).expect("a late reply is no error of this session");
    let reply = p.request(&session_key);
    p.client.handle_reply(p.now, &reply).expect("the session key");
    p.drive().expect("the session goes on");
    assert_eq!(
        last_authenticated(&p),
        Some(ClientEvent::Authenticated { global_id: 4101, reclaimed: true })
    );
    assert!(p.client.service_ticket(EntityType::MDS, p.now).is_some());
}

// (f) The reply to the old session's renewal arrives while the next (authenticated)
// session waits for rotating secrets: ignored, the rotating secrets then taken.
#[test]
fn a_late_renewal_reply_does_not_fail_a_rotating_secret_request() {
    let mut p = authenticated_pair(78, "osd.0");
    p.advance_to_timeout().unwrap();
    let renewal = p.client.poll_request(p.now).expect("the renewal");
    let late = p.request(&renewal);
    assert_eq!(late.result, 0);
    p.new_session();
    p.drive().expect("the next session authenticates");
    p.client.request_rotating_secrets();
    let rotating = p.client.poll_request(p.now).expect("GET_ROTATING_KEY");
    p.client.handle_reply(p.now, &late).expect("a late reply is no error of this session");
    let reply = p.request(&rotating);
    p.client.handle_reply(p.now, &reply).expect("the rotating secrets");
    assert!(std::iter::from_fn(|| p.client.poll_event())
        .any(|e| matches!(e, ClientEvent::RotatingSecrets(_))));
}
