//! A lossless session in msgr2 secure mode, with cephx, through the chaos proxy
//! (`tests::chaos`): the proxy cuts both sockets at random, seeded moments while a
//! numbered stream flows both ways, and every cut is a new cephx authentication (a new
//! authorizer, a new connection secret, new AES-GCM keys and nonces) under which the
//! session resumes with SESSION_RECONNECT and replays what was not acknowledged,
//! re-encrypted under the new keys.
//!
//! The proxy cannot rewrite an encrypted stream, so the server announces the proxy's
//! address as its own ([`Messenger::bind_public`], Ceph's `public_addr` with
//! `public_bind_addr`), as a daemon behind a NAT does, and the proxy passes every byte
//! untouched. The tickets come from an in-process key server (`tests::cephx`), no monitor.
//!
//! `ASYNCMSGR_SOAK_SECS=N` runs the stream for N seconds instead of the CI's few.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::auth::{ConMode, ConModes};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::chaos::{ChaosConfig, ChaosProxy, CutKind};
use tests::loopback::*;
use tests::soak;

const MSG_TEST: u16 = 0x7f00;
/// Messages sent and not yet echoed, at most. Smaller than the crc tests' (256 of up to
/// 4 KiB): AES-GCM in an unoptimised build seals and opens well under 1 MB/s, and a cut
/// replays the whole window re-encrypted, so a large one would keep every reconnect
/// busy past the next cut.
const WINDOW: u64 = 32;
/// Largest payload (bytes) of a stream message.
const MAX_PAYLOAD: usize = 512;

/// The server (osd.0) and the client (client.2), as the keyring names them.
const SERVER: EntityName = EntityName { ty: EntityType::OSD, num: 0 };
const CLIENT: EntityName = EntityName { ty: EntityType::CLIENT, num: 2 };

/// Secure mode only, both ways (a client talking to a daemon picks `ms_client_mode`),
/// cephx from `cluster`, and reconnects that do not wait long (the proxy cuts every few
/// milliseconds in the storm).
fn secure_config(cluster: &mut TestCluster, who: EntityName) -> MessengerConfig {
    MessengerConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        client_mode: Some(ConModes(vec![ConMode::SECURE])),
        ..test_config(2)
    }
    .with_auth_provider(cluster.provider(who, None))
}

/// A server reached only through a chaos proxy: it listens on a loopback port of its
/// own and announces the proxy's address, which the proxy listens on.
struct Rig {
    srv: Messenger,
    srv_rx: Receiver<Seen>,
    cli: Messenger,
    cli_rx: Receiver<Seen>,
    proxy: ChaosProxy,
    conn: Connection,
}

fn rig(chaos: ChaosConfig) -> Rig {
    let mut cluster = TestCluster::new(&[SERVER, CLIENT], chaos.seed);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let public = TcpListener::bind(loopback).expect("the proxy's listener");
    let public_addr = public.local_addr().expect("the proxy's address");

    let srv = Messenger::new(SERVER, 1, secure_config(&mut cluster, SERVER)).expect("server");
    srv.set_default_policy(Policy::stateful_server());
    let bound = srv.bind_public(loopback, public_addr).expect("bind");
    assert_ne!(bound, public_addr);
    assert_eq!(srv.my_addr().addr, Some(public_addr), "the server announces the proxy");
    srv.start().expect("start");
    let (rec, srv_rx) = Recorder::new(true);
    srv.add_dispatcher_head(rec).expect("dispatcher");

    let proxy = ChaosProxy::start_on(public, bound, ChaosConfig { rewrite: false, ..chaos })
        .expect("proxy");
    let (cli, cli_rx) =
        client_with(CLIENT.ty, 2, Policy::lossless_client(), secure_config(&mut cluster, CLIENT));
    let addr = EntityAddr { ty: AddrType::MSGR2, ..srv.my_addr() };
    let conn = cli.connect_to(EntityType::OSD, addr);
    Rig { srv, srv_rx, cli, cli_rx, proxy, conn }
}

impl Rig {
    /// Both ends of the session speak msgr2 in secure mode, no authorizer was refused,
    /// no peer was found at fault, and nothing is left held for receiving.
    fn check_secure_and_clean(&self, served: Option<&Connection>) {
        assert_eq!(self.conn.protocol(), Some(ProtocolVersion::V2));
        assert_eq!(self.conn.con_mode(), Some(ConMode::SECURE), "the client's mode");
        if let Some(served) = served {
            assert_eq!(served.con_mode(), Some(ConMode::SECURE), "the server's mode");
        }
        assert_eq!(self.proxy.stats().v2_idents_rewritten, 0, "nothing rewritten");
        for (who, m) in [("server", &self.srv), ("client", &self.cli)] {
            let c = m.counters_json();
            assert_eq!(
                c["msgr_protocol"]["authorizers_rejected"].as_u64(),
                Some(0),
                "{who}: every re-authentication accepted: {c}"
            );
        }
        let dump = self.srv.dump_connections().to_string();
        assert!(dump.contains(r#""mode":"secure""#), "{dump}");
    }

    fn shutdown(self) {
        self.cli.shutdown();
        self.srv.shutdown();
    }
}

/// Ceph's lossless promise in secure mode through a network that keeps failing: a
/// stateful server and a lossless client authenticated with cephx, the client streaming
/// numbered messages (0–4 KiB) that the server echoes on the same connection, while the
/// proxy cuts every 20–150 ms. Every message and every echo arrives exactly once, in
/// order, byte for byte; no `ms_handle_reset` or `ms_handle_remote_reset` reaches
/// either side; every reconnect is explained by a cut; every re-authentication is
/// accepted.
#[test]
fn secure_lossless_stream_survives_a_proxy_cutting_both_sides_at_random() {
    let name = "secure_lossless_stream_survives_a_proxy_cutting_both_sides_at_random";
    stream_through_chaos(ChaosConfig::new(soak::seed(name)), Duration::from_secs(3));
}

/// The same under a storm of cuts every 1–8 ms, so that many land inside the cephx
/// exchange (AUTH_REQUEST, the challenge round, AUTH_DONE), between AUTH_DONE and the
/// first encrypted frames, and inside SESSION_RECONNECT/RECONNECT_OK.
#[test]
fn secure_lossless_stream_survives_cuts_that_land_inside_handshakes() {
    let name = "secure_lossless_stream_survives_cuts_that_land_inside_handshakes";
    let storm = ChaosConfig {
        min_interval: Duration::from_millis(1),
        max_interval: Duration::from_millis(8),
        ..ChaosConfig::new(soak::seed(name))
    };
    stream_through_chaos(storm, Duration::from_secs(2));
}

fn stream_through_chaos(chaos: ChaosConfig, ci_run: Duration) {
    let run_for = soak::soak_duration().unwrap_or(ci_run);
    let rig = rig(chaos);
    let Rig { cli_rx, srv_rx, proxy, conn, .. } = &rig;
    let started = Instant::now();
    let soak::Streamed { sent, connects, served } = soak::stream_through_chaos(
        proxy,
        conn,
        cli_rx,
        srv_rx,
        MSG_TEST,
        run_for,
        WINDOW,
        MAX_PAYLOAD,
    );
    let wall = started.elapsed();
    let stats = proxy.stats();
    let reconnects = connects.saturating_sub(1);
    eprintln!(
        "secure chaos: {sent} messages each way in {wall:?}, {} cuts ({} RST, {} FIN) ending {} \
         connections, {reconnects} reconnects (each a cephx authentication); 0 lost, \
         0 duplicated, 0 reordered, 0 resets",
        stats.cuts, stats.resets, stats.fins, stats.links_cut
    );
    assert!(stats.cuts >= 3, "the proxy barely cut: {stats:?}");
    assert!(reconnects >= 1, "no cut hit an open session: {stats:?}");
    assert!(reconnects as u64 <= stats.cuts, "a reconnect without a cut: {reconnects} > {stats:?}");
    rig.check_secure_and_clean(served.as_ref());
    rig.shutdown();
}

/// One cut of each kind on an idle secure session: each costs exactly one reconnect
/// (one new cephx authentication: the client's `ms_handle_connect` again, the server's
/// `ms_handle_accept` for the replacing socket) and nothing else.
#[test]
fn one_proxy_cut_of_each_kind_is_one_secure_reconnect() {
    let rig = rig(ChaosConfig::new(0));
    let Rig { cli_rx, srv_rx, proxy, conn, .. } = &rig;
    let mut tid = 0;
    let mut connects = 0;
    // The next echo; counts the connects seen on the way.
    let echo = |connects: &mut usize| loop {
        match cli_rx.recv_timeout(WAIT).expect("an echo within the wait") {
            Seen::Message(_, m) => return m.tid(),
            Seen::Connect(_) => *connects += 1,
            Seen::Reset(_) | Seen::RemoteReset(_) => {
                panic!("client: a reset on a lossless session")
            }
            _ => {}
        }
    };
    for kind in [CutKind::Reset, CutKind::Fin] {
        tid += 1;
        conn.send_message(test_message(MSG_TEST, tid, soak::payload(tid, MAX_PAYLOAD)))
            .expect("send");
        assert_eq!(echo(&mut connects), tid);
        proxy.cut_now(kind);
        tid += 1;
        conn.send_message(test_message(MSG_TEST, tid, soak::payload(tid, MAX_PAYLOAD)))
            .expect("send");
        assert_eq!(echo(&mut connects), tid, "{kind:?}: the session came back");
    }
    connects += count_events(cli_rx, 3 - connects, |s| matches!(s, Seen::Connect(_)));
    assert_eq!(connects, 3, "one connect, then one reconnect per cut");
    assert_eq!(proxy.stats().cuts, 2);
    let mut accepts = 0;
    let mut got = Vec::new();
    let mut served = None;
    let grace = Instant::now() + Duration::from_millis(300);
    while let Ok(seen) = srv_rx.recv_deadline(grace) {
        match seen {
            Seen::Accept(_) => accepts += 1,
            Seen::Message(c, m) => {
                assert!(m.data() == &soak::payload(m.tid(), MAX_PAYLOAD), "server: payload");
                got.push(m.tid());
                served = Some(c);
            }
            Seen::Reset(_) | Seen::RemoteReset(_) => {
                panic!("server: a reset on a lossless session")
            }
            _ => {}
        }
    }
    assert_eq!(got, [1, 2, 3, 4], "each message once, in order");
    assert_eq!(accepts, 3, "one accept, then one replacing accept per cut");
    rig.check_secure_and_clean(served.as_ref());
    rig.shutdown();
}
