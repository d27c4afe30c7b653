//! The `rados` crate (crates.io 0.1.4, tchaikov/rados-rs: a native Rust, tokio-based
//! msgr2.1 implementation) against our messenger over msgr2 on loopback, both ways:
//! the crate's `msgr2::Connection::connect` as a client of our server, and its
//! `msgr2::Connection::accept` (the crate's server role) as the server our client
//! dials at a `v2:` address. Crc mode with auth none both ways, and the crate's client
//! with cephx in secure and crc mode: every message both ways is compared
//! byte for byte (type, tid, priority, version, compat version; front, middle and data)
//! with what the other side sent, so a framing, crc, segment or header-field slip on
//! either implementation fails here.
//!
//! Secure mode, one way only: the crate's client does cephx as a monitor client
//! (`MonitorAuthProvider`, AUTH_MODE_MON in the AUTH frames), which our server answers
//! from a key server as a monitor does; the exchange then runs in secure mode
//! (AES-128-GCM with the connection secret our cephx handed out) and, asked for it, in
//! crc mode under cephx. The other way cannot be done: the crate's server refuses cephx
//! from any client, so it never has secure mode's keys
//! ([`rados_server_refuses_cephx_even_from_its_own_client`] shows it).
//!
//! The crate runs in a `current_thread` tokio runtime on a thread of its own; every one
//! of its awaits is bounded by [`tests::loopback::WAIT`], and our side waits on channels
//! with the same deadline, so a stuck handshake fails instead of hanging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use messenger::{MessengerConfig, Policy, ProtocolVersion};
use protocol::auth::cephx::{CephxProvider, KeyServer, WallClock};
use protocol::auth::{AuthConfig, ConMode};
use protocol::types::{AddrType, AuthEntityName, EntityAddr, EntityType};
use rados::msgr2::{Connection as RadosConnection, ConnectionConfig, Message as RadosMessage};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tests::cephx::{seeded_rng_source, wall_now};
use tests::loopback::{client, next_message, server_on, test_config, WAIT};

/// One message as both implementations see it: header fields and the three segments.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    msg_type: u16,
    tid: u64,
    priority: u16,
    version: u16,
    compat_version: u16,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
}

/// Segment lengths that sit on the edges of msgr2's framing: empty, inside and across
/// the 16-byte crypto block and the 48-byte inline area, page sized, above 64 KiB and 1 MiB.
const EDGE_LENS: [usize; 10] = [0, 1, 15, 16, 17, 48, 4095, 4096, 65_537, 1 << 20];

/// `n` messages of type `msg_type` with seeded random contents and header fields; the
/// first ones walk every segment through [`EDGE_LENS`], the rest are random up to 64 KiB.
fn messages(rng: &mut SmallRng, msg_type: u16, first_tid: u64, n: usize) -> Vec<Sent> {
    let mut bytes = |len: usize| {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        Bytes::from(v)
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let edge = |k: usize| EDGE_LENS[(i + k) % EDGE_LENS.len()];
        let (f, m, d) = if i < EDGE_LENS.len() * 2 {
            (edge(0), edge(3), edge(7))
        } else {
            (i % 300, i % 7, (i * 977) % (64 << 10))
        };
        let (front, middle, data) = (bytes(f), bytes(m), bytes(d));
        out.push(Sent {
            msg_type,
            tid: first_tid + i as u64,
            // Not 0: a sender stamps that as PRIO_DEFAULT (ours does, as Ceph does).
            priority: [1, 63, 127, 196, 255][i % 5],
            version: 1 + (i % 9) as u16,
            compat_version: 1 + (i % 3) as u16,
            front,
            middle,
            data,
        });
    }
    out
}

fn to_rados(s: &Sent) -> RadosMessage {
    let mut m = RadosMessage::new(s.msg_type, s.front.clone()).with_tid(s.tid);
    m.header.priority.set(s.priority);
    m.header.version.set(s.version);
    m.header.compat_version.set(s.compat_version);
    m.middle = s.middle.clone();
    m.data = s.data.clone();
    m
}

fn from_rados(m: &RadosMessage) -> Sent {
    Sent {
        msg_type: m.msg_type(),
        tid: m.tid(),
        priority: m.header.get_priority(),
        version: m.header.get_version(),
        compat_version: m.header.get_compat_version(),
        front: m.front.clone(),
        middle: m.middle.clone(),
        data: m.data.clone(),
    }
}

fn to_ours(s: &Sent) -> protocol::Message {
    let mut m = protocol::Message::new(s.msg_type, s.front.clone());
    m.set_tid(s.tid);
    m.set_priority(s.priority);
    m.set_version(s.version);
    m.set_compat_version(s.compat_version);
    m.set_middle(s.middle.clone());
    m.set_data(s.data.clone());
    m
}

fn from_ours(m: &protocol::Message) -> Sent {
    Sent {
        msg_type: m.msg_type(),
        tid: m.tid(),
        priority: m.priority(),
        version: m.version(),
        compat_version: m.compat_version(),
        front: m.front().clone(),
        middle: m.middle().clone(),
        data: m.data().clone(),
    }
}

/// Asserts `got` is `want` field by field (a mismatch names the message and the field
/// rather than dumping megabytes).
fn assert_same(got: &Sent, want: &Sent, what: &str) {
    let tid = want.tid;
    assert_eq!(
        (got.msg_type, got.tid, got.priority, got.version, got.compat_version),
        (want.msg_type, want.tid, want.priority, want.version, want.compat_version),
        "{what} tid {tid}: header fields"
    );
    for (name, g, w) in [
        ("front", &got.front, &want.front),
        ("middle", &got.middle, &want.middle),
        ("data", &got.data, &want.data),
    ] {
        assert_eq!(g.len(), w.len(), "{what} tid {tid}: {name} length");
        assert!(g == w, "{what} tid {tid}: {name} bytes differ");
    }
}

/// What one side received, checked against what the other sent: our send and dispatch
/// queues are Ceph's priority queues, so a higher-priority message may overtake a lower
/// one (on the wire or in dispatch); inside one priority the order is the sender's. Compares each message with the one sent under its
/// tid, byte for byte.
fn assert_received_by_priority(received: &[Sent], sent: &[Sent], what: &str) {
    assert_eq!(received.len(), sent.len(), "{what}: message count");
    let mut last_tid: std::collections::HashMap<u16, u64> = Default::default();
    for m in received {
        if let Some(prev) = last_tid.insert(m.priority, m.tid) {
            assert!(prev < m.tid, "{what}: tid {} after {prev} at priority {}", m.tid, m.priority);
        }
    }
    let mut by_tid = received.to_vec();
    by_tid.sort_by_key(|m| m.tid);
    for (got, want) in by_tid.iter().zip(sent) {
        assert_same(got, want, what);
    }
}

/// The crate's side runs here: a `current_thread` runtime with time (for the bounds).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// `fut` within [`WAIT`], its crate error as text.
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = rados::msgr2::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("rados {what}: {e}")),
        Err(_) => Err(format!("rados {what}: nothing within {WAIT:?}")),
    }
}

/// What the crate's connection reported about the session it negotiated.
#[derive(Debug)]
struct Negotiated {
    encrypted: bool,
    compressed: bool,
}

fn negotiated(conn: &RadosConnection) -> Negotiated {
    let d = conn.diagnostics();
    Negotiated { encrypted: d.encryption_enabled, compressed: d.compression_algorithm.is_some() }
}

/// What the crate's side received and negotiated, or why it failed.
type CrateSide = Result<(Vec<Sent>, Negotiated), String>;

const MSG_REQUEST: u16 = 0x7f10;
const MSG_REPLY: u16 = 0x7f11;
const MESSAGES: usize = 60;
/// The first request's tid; request `REQUEST_TIDS + i` is answered by `REPLY_TIDS + i`.
const REQUEST_TIDS: u64 = 1000;
const REPLY_TIDS: u64 = 5000;

/// The crate as a msgr2 client of our server: it sends `requests`, our server checks
/// each and answers with the matching one of `replies`, which the crate receives.
/// Returns the replies sent and the crate's side.
fn rados_client_exchange(
    config: ConnectionConfig,
    server_config: MessengerConfig,
    mode: ConMode,
    test: &str,
) -> (Vec<Sent>, CrateSide) {
    let mut rng = SmallRng::seed_from_u64(tests::soak::seed(test));
    let requests = messages(&mut rng, MSG_REQUEST, REQUEST_TIDS, MESSAGES);
    let replies = messages(&mut rng, MSG_REPLY, REPLY_TIDS, MESSAGES);

    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let (srv, _bound, srv_rx) =
        server_on(EntityType::MON, 0, Policy::stateless_server(), false, loopback, server_config);
    let addr: SocketAddr = srv.my_addr().addr.expect("bound address");

    let crate_side = {
        let requests = requests.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut conn = bounded("connect", RadosConnection::connect(addr, config)).await?;
                bounded("establish_session", conn.establish_session()).await?;
                for r in &requests {
                    bounded("send_message", conn.send_message(to_rados(r))).await?;
                }
                let mut got = Vec::with_capacity(MESSAGES);
                for _ in 0..MESSAGES {
                    got.push(from_rados(&bounded("recv_message", conn.recv_message()).await?));
                }
                let negotiated = negotiated(&conn);
                conn.close().await;
                Ok::<_, String>((got, negotiated))
            })
        })
    };

    let mut session = None;
    let mut received = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let (conn, m) = next_message(&srv_rx);
        let m = from_ours(&m);
        let reply = m.tid.checked_sub(REQUEST_TIDS).and_then(|i| replies.get(i as usize));
        let reply = reply.unwrap_or_else(|| panic!("our server received unknown tid {}", m.tid));
        received.push(m);
        assert_eq!(conn.protocol(), Some(ProtocolVersion::V2), "the crate speaks msgr2 only");
        assert_eq!(conn.con_mode(), Some(mode));
        conn.send_message(to_ours(reply)).expect("reply");
        if let Some(first) = &session {
            assert_eq!(&conn, first, "every request on one session");
        }
        session = Some(conn);
    }
    assert_received_by_priority(&received, &requests, "our server received");
    let result = crate_side.join().expect("the crate's thread panicked");
    srv.shutdown();
    (replies, result)
}

/// The crate's client, crc mode, auth none: 60 messages each way, byte-exact, on one
/// msgr2 session our server reports as v2/crc; the crate reports it unencrypted.
#[test]
fn rados_client_to_our_server_crc_byte_exact_both_ways() {
    let (replies, result) = rados_client_exchange(
        ConnectionConfig::prefer_crc_mode(),
        test_config(2),
        ConMode::CRC,
        "rados_client_to_our_server_crc_byte_exact_both_ways",
    );
    let (got, negotiated) = result.expect("the crate's side");
    assert!(!negotiated.encrypted && !negotiated.compressed, "{negotiated:?}");
    assert_received_by_priority(&got, &replies, "the crate received");
}

/// The crate offering on-wire compression (msgr2's COMPRESSION feature bit, which our
/// banner does not set): the session comes up uncompressed and carries the same
/// exchange byte-exact.
#[test]
fn rados_client_offering_compression_gets_an_uncompressed_session() {
    let (replies, result) = rados_client_exchange(
        ConnectionConfig {
            preferred_modes: vec![rados::msgr2::ConnectionMode::Crc],
            ..ConnectionConfig::with_compression()
        },
        test_config(2),
        ConMode::CRC,
        "rados_client_offering_compression_gets_an_uncompressed_session",
    );
    let (got, negotiated) = result.expect("the crate's side");
    assert!(!negotiated.compressed, "{negotiated:?}");
    assert_received_by_priority(&got, &replies, "the crate received");
}

/// Our server authenticating as a monitor does (cephx in AUTH_MODE_MON from a key
/// server holding a fresh keyring, Ceph's default mode lists), and client.admin's key in
/// the base64 form the crate takes.
fn cephx_monitor(seed: u64) -> (MessengerConfig, String) {
    let ring = tests::ceph::cephx_keyring();
    let admin = ring.key(&AuthEntityName::new(EntityType::CLIENT, "admin")).expect("admin key");
    let admin = admin.to_base64();
    let keys =
        KeyServer::new(ring, AuthConfig::ceph_defaults(), wall_now(), &mut rand::rngs::OsRng);
    let provider = CephxProvider::new(
        AuthEntityName::new(EntityType::MON, "a"),
        AuthConfig::ceph_defaults(),
        WallClock::anchored(Instant::now(), wall_now()),
        seeded_rng_source(seed),
    )
    .with_key_server(Arc::new(keys));
    (test_config(2).with_auth_provider(Arc::new(provider)), admin)
}

/// The crate's cephx client (`MonitorAuthProvider`, client.admin's key, cephx only)
/// asking for `mode` only, against [`cephx_monitor`]: the same exchange as the crc test.
fn rados_cephx_client_exchange(mode: ConMode, test: &str) {
    let (server_config, admin_key) = cephx_monitor(tests::soak::seed(test));
    let mut auth = rados::auth::MonitorAuthProvider::new("client.admin").expect("entity name");
    auth.set_secret_key_from_base64(&admin_key).expect("the crate takes our key");
    let crate_mode = match mode {
        ConMode::SECURE => rados::msgr2::ConnectionMode::Secure,
        _ => rados::msgr2::ConnectionMode::Crc,
    };
    let config = ConnectionConfig {
        preferred_modes: vec![crate_mode],
        supported_auth_methods: vec![rados::msgr2::AuthMethod::Cephx],
        ..ConnectionConfig::with_auth_provider(Box::new(auth))
    };
    let (replies, result) = rados_client_exchange(config, server_config, mode, test);
    let (got, negotiated) = result.expect("the crate's side");
    assert_eq!(negotiated.encrypted, mode == ConMode::SECURE, "{negotiated:?}");
    assert_received_by_priority(&got, &replies, "the crate received");
}

/// The crate's cephx client in secure mode (AES-128-GCM with the connection secret our
/// cephx handed it) against our server: 60 messages each way, byte-exact.
#[test]
fn rados_cephx_client_to_our_server_secure_byte_exact_both_ways() {
    rados_cephx_client_exchange(
        ConMode::SECURE,
        "rados_cephx_client_to_our_server_secure_byte_exact_both_ways",
    );
}

/// The same with cephx in crc mode (authenticated, not encrypted).
#[test]
fn rados_cephx_client_to_our_server_crc_byte_exact_both_ways() {
    rados_cephx_client_exchange(
        ConMode::CRC,
        "rados_cephx_client_to_our_server_crc_byte_exact_both_ways",
    );
}

/// Our client dials the crate's server (`Connection::accept` + `accept_session`, the
/// crate's server role) at a `v2:` address, crc mode, auth none: 60 messages each way,
/// byte-exact, both sides reporting msgr2 crc.
#[test]
fn our_client_to_rados_server_crc_byte_exact_both_ways() {
    let test = "our_client_to_rados_server_crc_byte_exact_both_ways";
    let mut rng = SmallRng::seed_from_u64(tests::soak::seed(test));
    let requests = messages(&mut rng, MSG_REQUEST, REQUEST_TIDS, MESSAGES);
    let replies = messages(&mut rng, MSG_REPLY, REPLY_TIDS, MESSAGES);

    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    let (read_all_tx, read_all_rx) = tokio::sync::oneshot::channel::<()>();
    let crate_side = {
        let replies = replies.clone();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| format!("bind: {e}"))?;
                let addr = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?;
                addr_tx.send(addr).map_err(|e| format!("addr: {e}"))?;
                let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
                    .await
                    .map_err(|_| "no connection".to_string())?
                    .map_err(|e| format!("accept: {e}"))?;
                let mut conn = bounded(
                    "accept",
                    RadosConnection::accept(stream, ConnectionConfig::prefer_crc_mode(), None),
                )
                .await?;
                bounded("accept_session", conn.accept_session()).await?;
                let mut got = Vec::with_capacity(MESSAGES);
                for reply in &replies {
                    got.push(from_rados(&bounded("recv_message", conn.recv_message()).await?));
                    bounded("send_message", conn.send_message(to_rados(reply))).await?;
                }
                let negotiated = negotiated(&conn);
                // Hold the session until our client has read the last reply.
                let _ = tokio::time::timeout(WAIT, read_all_rx).await;
                conn.close().await;
                Ok::<_, String>((got, negotiated))
            })
        })
    };
    let addr = addr_rx.recv_timeout(WAIT).expect("the crate's server address");

    let (cli, cli_rx) = client(EntityType::CLIENT, 7, Policy::lossy_client());
    let target = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(addr) };
    let conn = cli.connect_to(EntityType::MON, target);
    for r in &requests {
        conn.send_message(to_ours(r)).expect("send");
    }
    let mut received = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let (c, m) = next_message(&cli_rx);
        assert_eq!(c, conn, "replies on the connection we sent on");
        received.push(from_ours(&m));
    }
    assert_received_by_priority(&received, &replies, "our client received");
    assert_eq!(conn.protocol(), Some(ProtocolVersion::V2));
    assert_eq!(conn.con_mode(), Some(ConMode::CRC));
    let _ = read_all_tx.send(());

    let (got, negotiated) =
        crate_side.join().expect("the crate's thread panicked").expect("the crate's side");
    assert!(!negotiated.encrypted && !negotiated.compressed, "{negotiated:?}");
    assert_received_by_priority(&got, &requests, "the crate's server received");
    cli.shutdown();
}

/// A cephx key in Ceph's keyring form (test-only; the same as protocol's keyring tests).
const ADMIN_KEY: &str = "AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==";

/// Why our client cannot be tested against the crate's server in secure mode: in rados
/// 0.1.4 the server has no working cephx, and secure mode needs cephx's keys (auth none
/// has none). `CephXServerHandler::handle_authenticate` decrypts the client's challenge
/// answer, but cephx's answer (`cephx_calc_client_server_challenge`, which the crate's
/// own client computes) is an encrypt-then-fold to 8 bytes that cannot be decrypted:
/// the server refuses every Ceph client, its own included, as shown here. Past that,
/// its connection secret is 16 bytes (`random_aes_key`) where its own secure setup
/// (`parse_connection_secret`) needs at least 40 (Ceph sends 64). If this starts
/// failing, the crate's server grew cephx: test our client against it in secure mode.
#[test]
fn rados_server_refuses_cephx_even_from_its_own_client() {
    let keyring =
        rados::auth::Keyring::from_string(&format!("[client.admin]\n\tkey = {ADMIN_KEY}\n"))
            .expect("keyring");
    let (server, client) = runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let server = async {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let handler = rados::auth::CephXServerHandler::new(keyring);
            let config = ConnectionConfig::prefer_secure_mode();
            let mut conn =
                bounded("accept", RadosConnection::accept(stream, config, Some(handler))).await?;
            bounded("accept_session", conn.accept_session()).await
        };
        let client = async {
            let mut auth = rados::auth::MonitorAuthProvider::new("client.admin").expect("name");
            auth.set_secret_key_from_base64(ADMIN_KEY).expect("key");
            let config = ConnectionConfig {
                preferred_modes: vec![rados::msgr2::ConnectionMode::Secure],
                supported_auth_methods: vec![rados::msgr2::AuthMethod::Cephx],
                ..ConnectionConfig::with_auth_provider(Box::new(auth))
            };
            let mut conn = bounded("connect", RadosConnection::connect(addr, config)).await?;
            bounded("establish_session", conn.establish_session()).await
        };
        tokio::join!(server, client)
    });
    let server_err = server.expect_err("the crate's server completed a cephx handshake");
    assert!(server_err.contains("AES decryption failed"), "{server_err}");
    assert!(client.is_err(), "the crate's client got a session from a failed server");
}
