//! Fuzz bodies for every cephx decoder (`protocol::auth`): keys and keyrings, tickets
//! and ticket replies, rotating secrets, authorizers (both sides), the client handler
//! fed `MAuthReply`s and the monitor-side key server fed `MAuth`s.
//!
//! Random bytes almost never survive AES (the envelope's magic catches them), so each
//! target also *seals* part of its input with the key the decoder will use: the
//! structures behind the encryption get attacker-chosen plaintext. Input layout: byte 0
//! picks a mode, the rest is the payload. Properties: no panic, errors are typed, and
//! what decodes re-encodes to what was consumed where the encoding is canonical.

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::auth::cephx::ticket::{decode_ticket_reply, AuthTicket, ServiceTicketInfo};
use protocol::auth::cephx::{
    AuthorizerVerifier, CephxClient, ClientConfig, KeyServer, RotatingKeyStore, RotatingSecrets,
    ServerSession, TicketBlob,
};
use protocol::auth::{AuthConfig, CryptoKey, KeyEntry, KeyRing};
use protocol::encoding::{Decoder, Encoder, UTime};
use protocol::messages::{MAuth, MAuthReply};
use protocol::types::{AuthEntityName, EntityType, Features};
use rand::rngs::StdRng;
use rand::SeedableRng;

const NOW: UTime = UTime::new(1_700_000_000, 0);

fn key(byte: u8) -> CryptoKey {
    CryptoKey::new(NOW, [byte; 16])
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

fn admin() -> AuthEntityName {
    AuthEntityName::new(EntityType::CLIENT, "admin")
}

/// The key server every target talks to: client.admin (key 0x11, caps) and osd.0.
fn key_server() -> KeyServer {
    let mut ring = KeyRing::new();
    ring.insert(
        admin(),
        KeyEntry::new(key(0x11)).with_cap("mon", "allow *").with_cap("osd", "allow *"),
    );
    ring.insert(
        AuthEntityName::new(EntityType::OSD, "0"),
        KeyEntry::new(key(0x22)).with_cap("mon", "allow profile osd"),
    );
    KeyServer::new(ring, AuthConfig::ceph_defaults(), NOW, &mut rng())
}

/// `CryptoKey`, `TicketBlob`, `AuthTicket`, `ServiceTicketInfo` (sealed), ticket
/// replies (raw, and with sealed msg_a parts), `RotatingSecrets`.
pub fn cephx_tickets(data: &[u8]) {
    let [mode, rest @ ..] = data else { return };
    let principal = key(0x11);
    let old = key(0x33);
    match mode % 6 {
        0 => {
            let mut d = Decoder::new(rest);
            if let Ok(k) = CryptoKey::decode(&mut d) {
                let mut e = Encoder::new();
                k.encode(&mut e);
                assert_eq!(e.as_slice(), &rest[..d.position()]);
            }
            let _ = CryptoKey::from_base64(&String::from_utf8_lossy(rest));
        }
        1 => {
            let mut d = Decoder::new(rest);
            if let Ok(t) = TicketBlob::decode(&mut d) {
                let mut e = Encoder::new();
                t.encode(&mut e);
                // The version byte is not checked on decode; the rest is canonical.
                assert_eq!(&e.as_slice()[1..], &rest[1..d.position()]);
            }
            let mut d = Decoder::new(rest);
            if let Ok(t) = AuthTicket::decode(&mut d) {
                let mut e = Encoder::new();
                t.encode(&mut e);
                let again = AuthTicket::decode(&mut Decoder::new(e.as_slice()));
                assert_eq!(again.as_ref().ok(), Some(&t));
            }
        }
        2 => {
            // A ticket blob whose plaintext is the input, sealed with the service secret.
            let secret = key(0x44);
            let blob = TicketBlob {
                secret_id: 1,
                blob: secret.seal(|e| {
                    e.bytes(rest);
                }),
            };
            if let Ok(info) = ServiceTicketInfo::open(&blob, &secret) {
                let sealed = info.seal(1, &secret);
                assert_eq!(ServiceTicketInfo::open(&sealed, &secret).as_ref().ok(), Some(&info));
            }
        }
        3 => {
            let _ = decode_ticket_reply(&mut Decoder::new(rest), &principal, |_| Some(old.clone()));
        }
        4 => {
            // A one-entry reply whose msg_a plaintext is the input.
            let mut e = Encoder::new();
            e.u8(1).u32(1).u32(0x20).u8(1);
            principal.seal_blob(&mut e, |e| {
                e.bytes(rest);
            });
            e.u8(1);
            old.seal_blob(&mut e, |e| {
                e.bytes(rest);
            });
            let _ = decode_ticket_reply(&mut Decoder::new(e.as_slice()), &principal, |_| {
                Some(old.clone())
            });
        }
        _ => {
            let mut d = Decoder::new(rest);
            if let Ok(r) = RotatingSecrets::decode(&mut d) {
                let mut e = Encoder::new();
                r.encode(&mut e);
                assert_eq!(
                    RotatingSecrets::decode(&mut Decoder::new(e.as_slice())).as_ref().ok(),
                    Some(&r)
                );
            }
        }
    }
}

/// The client handler: authenticated against the key server for `mode % 4` round
/// trips, then fed a reply whose result_bl is the input (raw, or behind a valid
/// response header with the input sealed under the client's key).
pub fn cephx_replies(data: &[u8]) {
    let [mode, rest @ ..] = data else { return };
    let server = key_server();
    let mut session = ServerSession::New;
    let mut server_rng = rng();
    let mut gid = 4100;
    let mut client = CephxClient::new(ClientConfig::new(admin(), key(0x11)), Box::new(rng()));
    let now = Instant::now();
    client.start(now);
    client.request_rotating_secrets();
    for _ in 0..(mode % 4) {
        let Some(req) = client.poll_request(now) else { break };
        let reply = server.handle_request(
            &mut session,
            &req,
            Features::PACIFIC_ADVERTISED,
            NOW,
            &mut server_rng,
            &mut || {
                gid += 1;
                gid
            },
        );
        if client.handle_reply(now, &reply).is_err() {
            return;
        }
    }
    let Some(_req) = client.poll_request(now) else { return };
    let result_bl = if mode & 0x10 == 0 {
        Bytes::copy_from_slice(rest)
    } else {
        let mut e = Encoder::new();
        let request_type = [0x0100u16, 0x0200, 0x0400][usize::from(mode >> 5) % 3];
        e.u16(request_type).i32(0);
        key(0x11).seal_blob(&mut e, |e| {
            e.bytes(rest);
        });
        e.into_bytes()
    };
    let result = i32::from(mode >> 6) - 1;
    let reply =
        MAuthReply { protocol: 2, result, global_id: 4101, result_bl, result_msg: String::new() };
    if client.handle_reply(now, &reply).is_err() {
        assert!(client.poll_request(now).is_none(), "a failed client sends nothing");
        assert!(client.error().is_some());
    }
    let _ = client.handle_timeout(now + Duration::from_secs(3600));
    while client.poll_event().is_some() {}
}

/// The daemon-side verifier on raw bytes, and on an authorizer whose ticket plaintext
/// and part B plaintext come from the input; the client side's challenge and reply
/// handling on sealed input.
pub fn cephx_authorizers(data: &[u8]) {
    let [mode, rest @ ..] = data else { return };
    let mut r = rng();
    let rotating = RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, &mut r);
    let store = RotatingKeyStore::new(EntityType::OSD, rotating.clone());
    let require = mode & 1 == 1;
    let bytes = if mode & 2 == 0 {
        rest.to_vec()
    } else {
        let Some(secret) = rotating.get(2) else { return };
        let (a, b) = rest.split_at(rest.len() / 2);
        let mut e = Encoder::new();
        e.u8(1).u64(4242).u32(4);
        TicketBlob {
            secret_id: 2,
            blob: secret.seal(|e| {
                e.bytes(a);
            }),
        }
        .encode(&mut e);
        // Part B sealed with the key K a well-formed ticket plaintext would carry.
        key(0x55).seal_blob(&mut e, |e| {
            e.bytes(b);
        });
        e.into_vec()
    };
    let mut v = AuthorizerVerifier::new();
    let first = v.verify(&store, EntityType::OSD, &bytes, require, NOW, None, &mut r);
    if first.is_ok() {
        let _ = v.verify(&store, EntityType::OSD, &bytes, require, NOW, None, &mut r);
    }
    // Client side: a challenge and a reply whose plaintext is the input.
    let ticket = protocol::auth::cephx::ReceivedTicket {
        service: EntityType::OSD,
        session_key: key(0x55),
        validity: Duration::from_secs(60),
        blob: TicketBlob { secret_id: 2, blob: vec![0; 32] },
    };
    let mut a = protocol::auth::cephx::Authorizer::new(1, &ticket, &mut r);
    let _ = a.handle_challenge(rest);
    let _ = a.handle_challenge(&key(0x55).seal(|e| {
        e.bytes(rest);
    }));
    let _ = a.verify_reply(rest);
    let mut e = Encoder::new();
    key(0x55).seal_blob(&mut e, |e| {
        e.bytes(rest);
    });
    let _ = a.verify_reply(e.as_slice());
}

/// The monitor side: the key server fed MAuth payloads from the input, in a fresh
/// session or after a valid negotiation, and the keyring parser on the same bytes.
pub fn cephx_requests(data: &[u8]) {
    let [mode, rest @ ..] = data else { return };
    let server = key_server();
    let mut session = ServerSession::New;
    let mut r = rng();
    let mut gid = 4100;
    let mut next = || {
        gid += 1;
        gid
    };
    if mode & 1 == 1 {
        let n =
            protocol::messages::AuthNegotiation { methods: vec![2], name: admin(), global_id: 0 };
        let reply = server.handle_request(
            &mut session,
            &MAuth::negotiate(&n, 0),
            Features::PACIFIC_ADVERTISED,
            NOW,
            &mut r,
            &mut next,
        );
        assert_eq!(reply.result, 0);
    }
    let protocol = [0u32, 2, 1][usize::from(mode >> 1) % 3];
    let auth = MAuth { protocol, auth_payload: Bytes::copy_from_slice(rest), ..MAuth::default() };
    let reply = server.handle_request(
        &mut session,
        &auth,
        Features::PACIFIC_ADVERTISED,
        NOW,
        &mut r,
        &mut next,
    );
    assert!(reply.result <= 0);
    if reply.result < 0 {
        assert!(reply.result_bl.is_empty(), "errors carry no payload");
    }
    let _ = KeyRing::parse(&String::from_utf8_lossy(rest), None);
}

/// The msgr2 monitor client (`CephxMonClient`) through its challenge round against a
/// real monitor, then fed an AUTH_DONE payload from the input: raw (mode bits 0-1 = 0),
/// `{request_type, status 0}` and the input sealed under the client's key (1), or the
/// monitor's real AUTH_DONE with the input's (position, byte) pairs written over it
/// (2, 3). Byte 0's bits 2-3 pick the request type of (1). Property: AUTH_DONE is taken
/// only as the answer to the session key request that was sent (GET_AUTH_SESSION_KEY),
/// with a session key; anything else is refused, and a refused session leaves the
/// store's ticket as it was.
pub fn cephx_v2_done(data: &[u8]) {
    use protocol::auth::cephx::{CephxProvider, RngSource, TicketSource, TicketStore, WallClock};
    use protocol::auth::{AuthProvider, AuthStep, ConMode};
    use protocol::types::AUTH_CEPHX;
    use std::sync::Arc;

    let [mode, rest @ ..] = data else { return };
    let now = Instant::now();
    let clock = WallClock::anchored(now, NOW);
    let rngs = |seed: u64| -> RngSource {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(seed));
        Arc::new(move || {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::new(StdRng::seed_from_u64(n)) as _
        })
    };
    let store = Arc::new(TicketStore::default());
    let client_p = CephxProvider::new(admin(), AuthConfig::ceph_defaults(), clock, rngs(1))
        .with_monitor_key(key(0x11), store.clone());
    let mon_p = CephxProvider::new(
        AuthEntityName::new(EntityType::MON, "a"),
        AuthConfig::ceph_defaults(),
        clock,
        rngs(100),
    )
    .with_key_server(Arc::new(key_server()));
    let addr = protocol::testing::v2_addr(6789, 1);
    let Some(mut client) = client_p.client(EntityType::MON, &addr, AUTH_CEPHX) else {
        panic!("no cephx monitor client")
    };
    let Some(mut server) = mon_p.server(EntityType::CLIENT, AUTH_CEPHX) else {
        panic!("no cephx monitor server")
    };
    let req = client.build_request().unwrap_or_else(|e| panic!("build_request: {e}"));
    let AuthStep::More(challenge) = server.handle_request(now, ConMode::CRC, false, &req) else {
        panic!("no challenge")
    };
    let more = client.handle_reply_more(&challenge).unwrap_or_else(|e| panic!("challenge: {e}"));
    let payload: Bytes = match mode & 3 {
        0 => Bytes::copy_from_slice(rest),
        1 => {
            let mut e = Encoder::new();
            let request_type = [0x0100u16, 0x0200, 0x0400, 0x0800][usize::from(mode >> 2) % 4];
            e.u16(request_type).i32(0);
            key(0x11).seal_blob(&mut e, |e| {
                e.bytes(rest);
            });
            e.into_bytes()
        }
        _ => {
            let AuthStep::Done { payload, .. } =
                server.handle_request(now, ConMode::CRC, true, &more)
            else {
                panic!("no AUTH_DONE")
            };
            let mut done = payload.to_vec();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
                if let Some(b) = done.get_mut(at) {
                    *b = edit[2];
                }
            }
            Bytes::from(done)
        }
    };
    let global_id = 4100 + u64::from(mode >> 4);
    match client.handle_done(now, global_id, ConMode::CRC, &payload) {
        Ok(outcome) => {
            assert_eq!(
                payload.get(..2),
                Some(&0x0100u16.to_le_bytes()[..]),
                "AUTH_DONE taken answering another request"
            );
            assert!(outcome.session_key.is_some(), "AUTH_DONE taken without a session key");
            client.confirmed();
            assert_eq!(store.ticket(EntityType::AUTH).map(|(g, _)| g), Some(global_id));
        }
        Err(e) => {
            assert!(mode & 2 == 0 || rest.len() >= 3, "the monitor's own AUTH_DONE refused: {e}");
            client.confirmed();
            assert!(store.ticket(EntityType::AUTH).is_none(), "a refused AUTH_DONE stored");
        }
    }
}

/// The cephx targets by name (corpus directory = name).
pub const CEPHX_TARGETS: &[crate::Target] = &[
    ("cephx_tickets", cephx_tickets),
    ("cephx_replies", cephx_replies),
    ("cephx_authorizers", cephx_authorizers),
    ("cephx_requests", cephx_requests),
    ("cephx_v2_done", cephx_v2_done),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The checked-in seeds (`corpus/cephx_*`) and every prefix of them replay cleanly.
    #[test]
    fn cephx_seed_corpus_replays_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in CEPHX_TARGETS {
            let dir = root.join(name);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.map(|e| e.path()).unwrap_or_else(|e| panic!("{e}"));
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                target(&data);
                for cut in 0..data.len() {
                    target(&data[..cut]);
                }
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds for {name}");
        }
    }

    /// The seeds reach past the crypto: the authorizer seed is verified (challenged)
    /// and the round-1 reply seed decodes as a server challenge.
    #[test]
    fn cephx_seeds_reach_the_structures_behind_the_encryption() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let seed = std::fs::read(root.join("cephx_authorizers/authorizer")).unwrap_or_default();
        let mut r = rng();
        let rotating = RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, &mut r);
        let store = RotatingKeyStore::new(EntityType::OSD, rotating);
        let v = AuthorizerVerifier::new().verify(
            &store,
            EntityType::OSD,
            &seed[1..],
            true,
            NOW,
            None,
            &mut r,
        );
        assert!(matches!(v, Ok(protocol::auth::cephx::AuthorizerVerdict::Challenge(_))), "{v:?}");
        let seed = std::fs::read(root.join("cephx_replies/round0")).unwrap_or_default();
        assert_eq!(seed.len(), 1 + 9, "server challenge");
    }

    /// A seeded random run over every cephx target (mutating the seeds), cheap enough
    /// for every `cargo test`; prints its seed.
    #[test]
    fn cephx_targets_survive_random_mutations() {
        let seed: u64 =
            std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xce9f);
        eprintln!("cephx_targets_survive_random_mutations: seed {seed}");
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, target) in CEPHX_TARGETS {
            let seeds: Vec<Vec<u8>> = std::fs::read_dir(root.join(name))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect();
            for _ in 0..300 {
                let mut buf = if next() % 2 == 0 && !seeds.is_empty() {
                    seeds[(next() % seeds.len() as u64) as usize].clone()
                } else {
                    (0..(next() % 300)).map(|_| next() as u8).collect()
                };
                for _ in 0..(next() % 4) {
                    if buf.is_empty() {
                        break;
                    }
                    let at = (next() % buf.len() as u64) as usize;
                    buf[at] ^= 1 << (next() % 8);
                }
                target(&buf);
            }
        }
    }

    /// Writes the seed corpus: `cargo test --manifest-path fuzz/Cargo.toml --
    /// --ignored write_cephx_seeds`.
    #[test]
    #[ignore]
    fn write_cephx_seeds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let write = |target: &str, name: &str, bytes: &[u8]| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
        };
        let with_mode = |mode: u8, body: &[u8]| {
            let mut v = vec![mode];
            v.extend_from_slice(body);
            v
        };
        // Tickets: a key, a ticket blob, an auth ticket, a service ticket plaintext, a
        // sealed ticket reply, a ServiceTicket plaintext, rotating secrets.
        let mut e = Encoder::new();
        key(0x11).encode(&mut e);
        write("cephx_tickets", "cryptokey", &with_mode(0, e.as_slice()));
        let ticket = AuthTicket {
            name: admin(),
            global_id: 4242,
            created: NOW,
            expires: NOW,
            caps: protocol::auth::cephx::ticket::AuthCapsInfo::from_cap_string("allow *"),
            flags: 0,
        };
        let mut e = Encoder::new();
        ticket.encode(&mut e);
        write("cephx_tickets", "auth_ticket", &with_mode(1, e.as_slice()));
        let mut info = Encoder::new();
        info.u8(1);
        ticket.encode(&mut info);
        key(0x55).encode(&mut info);
        write("cephx_tickets", "service_ticket_info", &with_mode(2, info.as_slice()));
        let mut msg_a = Encoder::new();
        msg_a.u8(1);
        key(0x55).encode(&mut msg_a);
        msg_a.u32(3600).u32(0);
        write("cephx_tickets", "msg_a", &with_mode(4, msg_a.as_slice()));
        let issued = protocol::auth::cephx::ticket::IssuedTicket {
            service: EntityType::OSD,
            session_key: key(0x55),
            validity: Duration::from_secs(3600),
            blob: TicketBlob { secret_id: 2, blob: vec![7; 96] },
            encrypt_blob_with: Some(key(0x33)),
        };
        let mut e = Encoder::new();
        protocol::auth::cephx::ticket::encode_ticket_reply(&mut e, &key(0x11), &[issued]);
        write("cephx_tickets", "ticket_reply", &with_mode(3, e.as_slice()));
        let mut e = Encoder::new();
        RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, &mut rng()).encode(&mut e);
        write("cephx_tickets", "rotating", &with_mode(5, e.as_slice()));

        // Replies: the server's real answers, so the mutations start from valid ones.
        let server = key_server();
        let mut session = ServerSession::New;
        let mut r = rng();
        let mut gid = 4100;
        let mut client = CephxClient::new(ClientConfig::new(admin(), key(0x11)), Box::new(rng()));
        let now = Instant::now();
        client.start(now);
        let mut replies = Vec::new();
        let mut requests = Vec::new();
        while let Some(req) = client.poll_request(now) {
            let reply = server.handle_request(
                &mut session,
                &req,
                Features::PACIFIC_ADVERTISED,
                NOW,
                &mut r,
                &mut || {
                    gid += 1;
                    gid
                },
            );
            requests.push(req.clone());
            replies.push(reply.clone());
            if client.handle_reply(now, &reply).is_err() {
                break;
            }
        }
        for (i, reply) in replies.iter().enumerate() {
            write("cephx_replies", &format!("round{i}"), &with_mode(i as u8, &reply.result_bl));
        }
        write("cephx_replies", "sealed_rotating", &with_mode(0x52, &msg_a.as_slice()[..1]));
        for (i, req) in requests.iter().enumerate() {
            let mode = if req.protocol == 0 { 0 } else { 3 };
            write("cephx_requests", &format!("request{i}"), &with_mode(mode, &req.auth_payload));
        }
        write("cephx_requests", "keyring", &with_mode(0, b"[client.admin]\n\tkey = AQAAEF5fAAAAABAAAAECAwQFBgcICQoLDA0ODw==\n\tcaps mon = \"allow *\"\n"));

        // Authorizers: a real one for the fuzz store's osd secret 2.
        let rotating = RotatingSecrets::generate(NOW, Duration::from_secs(3600), 1, &mut rng());
        let secret = rotating.get(2).cloned().unwrap_or_else(|| key(0));
        let info = ServiceTicketInfo {
            ticket: AuthTicket { expires: UTime::new(NOW.sec + 3600, 0), ..ticket },
            session_key: key(0x55),
        };
        let received = protocol::auth::cephx::ReceivedTicket {
            service: EntityType::OSD,
            session_key: key(0x55),
            validity: Duration::from_secs(3600),
            blob: info.seal(2, &secret),
        };
        let a = protocol::auth::cephx::Authorizer::new(4242, &received, &mut rng());
        write("cephx_authorizers", "authorizer", &with_mode(1, a.bytes()));
        write("cephx_authorizers", "authorizer_no_challenge", &with_mode(0, a.bytes()));
        let mut halves = info.ticket.clone();
        halves.global_id = 4242;
        let mut plain = Encoder::new();
        plain.u8(1);
        halves.encode(&mut plain);
        key(0x55).encode(&mut plain);
        let mut b = plain.into_vec();
        let part_b = [2u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        // The sealed mode splits the payload in halves: pad part B to the ticket's length.
        let mut pb = part_b.to_vec();
        pb.resize(b.len(), 0);
        b.extend_from_slice(&pb);
        write("cephx_authorizers", "sealed_halves", &with_mode(2, &b));
    }
}
