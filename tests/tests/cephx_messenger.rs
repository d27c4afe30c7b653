//! cephx through the messenger, over loopback (issue 14, must-show 4): our messengers
//! present cephx authorizers built from service tickets, verify them with the daemon's
//! rotating secrets (challenge round included) and sign every message of the session.
//! Tickets are minted in-process by a `KeyServer` from a test keyring
//! (`tests::cephx::TestCluster`); no monitor runs.
//!
//! A tap around the real provider (`tests::cephx::Tap`) counts the signatures made and
//! checked, and can sign one message wrongly: a peer that signs wrong, seen from the
//! acceptor.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use messenger::{Messenger, MessengerConfig, Policy, ProtocolVersion, SendError};
use protocol::auth::cephx::SharedKeyStore;
use protocol::auth::AuthProvider;
use protocol::types::{EntityName, EntityType};
use tests::cephx::{Tap, TapCounts, TestCluster};
use tests::loopback::{
    addr_for, assert_no_more_messages, next_message, stream_both_ways_on_own_handles, test_config,
    test_message, wait_until, Recorder, Seen, WAIT,
};

const MSG_TEST: u16 = 0x7f00;

fn tapped(provider: Arc<dyn AuthProvider>) -> (MessengerConfig, Arc<TapCounts>) {
    let (tap, counts) = Tap::new(provider);
    (test_config(2).with_auth_provider(tap), counts)
}

/// A started messenger named `name` with `config` and `policy`, bound on loopback if
/// `bind`, with a recorder.
fn messenger(
    name: EntityName,
    nonce: u32,
    config: MessengerConfig,
    policy: Policy,
    bind: bool,
) -> (Messenger, crossbeam_channel::Receiver<Seen>) {
    let m = Messenger::new(name, nonce, config).expect("messenger");
    m.set_default_policy(policy);
    if bind {
        m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    }
    m.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    m.add_dispatcher_head(rec).expect("dispatcher");
    (m, rx)
}

/// The acceptor's protocol counter `name`, as `perf dump` shows it.
fn protocol_counter(m: &Messenger, name: &str) -> u64 {
    m.counters_json()["msgr_protocol"][name].as_u64().unwrap_or(u64::MAX)
}

fn seed() -> u64 {
    let seed = rand::random::<u64>();
    eprintln!("seed {seed}");
    seed
}

#[test]
fn cephx_signed_sessions_deliver_every_message_once_in_order() {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let mut cluster = TestCluster::new(&[osd0, osd1], seed());
    let mut config = protocol::auth::AuthConfig::ceph_defaults();
    // Every message must be signed: a session without MSG_AUTH is refused.
    config.cephx_require_signatures = true;
    let (c0, n0) = tapped(cluster.provider(osd0, Some(config.clone())));
    let (c1, n1) = tapped(cluster.provider(osd1, Some(config)));
    let (a, a_rx) = messenger(osd0, 1, c0, Policy::lossless_peer(), true);
    let (b, b_rx) = messenger(osd1, 2, c1, Policy::lossless_peer(), true);
    let a_to_b = a.connect_to(EntityType::OSD, b.my_addr());
    let b_to_a = b.connect_to(EntityType::OSD, a.my_addr());
    let n = 300;
    stream_both_ways_on_own_handles((&a_to_b, &a_rx), (&b_to_a, &b_rx), MSG_TEST, n);
    // Every message was signed by its sender and checked by its receiver (acks and
    // keepalives are not messages).
    for (who, counts) in [("osd.0", &n0), ("osd.1", &n1)] {
        let signed = counts.signed.load(Ordering::Relaxed);
        let checked = counts.checked.load(Ordering::Relaxed);
        assert!(signed >= n && checked >= n, "{who}: signed {signed}, checked {checked} of {n}");
    }
    for m in [&a, &b] {
        assert_eq!(protocol_counter(m, "bad_signatures"), 0);
        assert_eq!(protocol_counter(m, "authorizers_rejected"), 0);
    }
    a.shutdown();
    b.shutdown();
}

#[test]
fn peer_with_the_wrong_service_secret_is_refused_at_the_handshake() {
    let osd = EntityName::new(EntityType::OSD, 0);
    let client = EntityName::new(EntityType::CLIENT, 7);
    let seed = seed();
    let mut cluster = TestCluster::new(&[osd, client], seed);
    // The daemon's rotating secrets come from another cluster: it cannot open the
    // tickets the client presents.
    let other = TestCluster::new(&[osd], seed.wrapping_add(1));
    let (sc, _) = tapped(cluster.provider_with_keys(osd, None, Some(other.keys(EntityType::OSD))));
    let (srv, srv_rx) = messenger(osd, 1, sc, Policy::stateless_server(), true);
    let (cc, _) = tapped(cluster.provider(client, None));
    let (cli, cli_rx) = messenger(client, 2, cc, Policy::lossy_client(), false);
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    // The connection dials at once: a refusal that beats this send closes it first
    // (seen on a loaded CI host), and the message then never leaves either way.
    match conn.send_message(test_message(MSG_TEST, 1, Bytes::new())) {
        Ok(()) | Err(SendError::Closed) => {}
        Err(e) => panic!("send: {e:?}"),
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match cli_rx.recv_deadline(deadline) {
            Ok(Seen::Refused(c)) => {
                assert_eq!(c, conn, "refused on another connection");
                break;
            }
            Ok(Seen::Message(..)) => panic!("the client got a message"),
            Ok(Seen::Connect(_)) => panic!("the handshake completed"),
            Ok(_) => {}
            Err(e) => panic!("no ms_handle_refused within {WAIT:?}: {e}"),
        }
    }
    assert_no_more_messages(&srv_rx, "the refused peer's message was dispatched");
    assert!(protocol_counter(&srv, "authorizers_rejected") >= 1, "{}", srv.counters_json());
    // The dialling side counts its credentials refused, in the dump an operator reads.
    assert!(protocol_counter(&cli, "authorizers_refused_by_peer") >= 1, "{}", cli.counters_json());
    assert_eq!(protocol_counter(&srv, "authorizers_refused_by_peer"), 0);
    cli.shutdown();
    srv.shutdown();
}

/// A lossless session whose authorizer the acceptor cannot verify yet (its rotating
/// secrets lag the ticket's, as a daemon's do until it fetches the new ones) is not
/// lost: the connector faults and dials again after its backoff, as Ceph's does, and
/// once the acceptor has the secrets the queued message is delivered. Before, the
/// rejection (BADAUTHORIZER; over msgr2 AUTH_BAD_METHOD with no method left) closed the
/// session as refused, and its messages with it.
fn a_lossless_session_outlasts_lagging_rotating_secrets(proto: ProtocolVersion) {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let seed = seed();
    let mut cluster = TestCluster::new(&[osd0, osd1], seed);
    let stale = TestCluster::new(&[osd1], seed.wrapping_add(1));
    let store = Arc::new(SharedKeyStore::new(stale.keys(EntityType::OSD)));
    let (sc, _) = tapped(cluster.provider_with_store(osd1, None, Some(store.clone())));
    let (srv, srv_rx) = messenger(osd1, 1, sc, Policy::lossless_peer(), true);
    let (cc, _) = tapped(cluster.provider(osd0, None));
    let (cli, cli_rx) = messenger(osd0, 2, cc, Policy::lossless_peer(), true);
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    wait_until(
        || protocol_counter(&srv, "authorizers_rejected") >= 1,
        || format!("the stale acceptor rejected nothing: {}", srv.counters_json()),
    );
    store.set_rotating(cluster.keys(EntityType::OSD).rotating);
    let (_, msg) = next_message(&srv_rx);
    assert_eq!(msg.tid(), 1);
    assert!(conn.is_connected());
    let ended = cli_rx.try_iter().find(|s| matches!(s, Seen::Refused(_) | Seen::Reset(_)));
    assert!(ended.is_none(), "the session ended: {ended:?}");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_lossless_session_outlasts_lagging_rotating_secrets_over_msgr1() {
    a_lossless_session_outlasts_lagging_rotating_secrets(ProtocolVersion::V1);
}

#[test]
fn a_lossless_session_outlasts_lagging_rotating_secrets_over_msgr2() {
    a_lossless_session_outlasts_lagging_rotating_secrets(ProtocolVersion::V2);
}

#[test]
fn wrongly_signed_message_faults_the_connection_and_is_counted() {
    let osd = EntityName::new(EntityType::OSD, 0);
    let client = EntityName::new(EntityType::CLIENT, 7);
    let mut cluster = TestCluster::new(&[osd, client], seed());
    let (sc, srv_counts) = tapped(cluster.provider(osd, None));
    let (srv, srv_rx) = messenger(osd, 1, sc, Policy::stateless_server(), true);
    let (cc, cli_counts) = tapped(cluster.provider(client, None));
    cli_counts.tamper_seq.store(3, Ordering::Relaxed);
    let (cli, cli_rx) = messenger(client, 2, cc, Policy::lossy_client(), false);
    let target = srv.my_addr();
    let conn = cli.connect_to(EntityType::OSD, target);
    // The correctly signed ones are dispatched before the third is sent: those still
    // waiting for ms_dispatch when the fault resets the lossy session are discarded with
    // it, as Ceph's are.
    for tid in 1..=2 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
    }
    for tid in 1..=2 {
        assert_eq!(next_message(&srv_rx).1.tid(), tid, "the correctly signed ones arrive");
    }
    conn.send_message(test_message(MSG_TEST, 3, Bytes::new())).expect("send");
    // The acceptor faults the connection; our lossy client sees the reset.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match cli_rx.recv_deadline(deadline) {
            Ok(Seen::Reset(c)) if c == conn => break,
            Ok(_) => {}
            Err(e) => panic!("no reset of the tampered connection within {WAIT:?}: {e}"),
        }
    }
    assert!(cli_counts.tampered.load(Ordering::Relaxed));
    assert_eq!(protocol_counter(&srv, "bad_signatures"), 1, "{}", srv.counters_json());
    assert_no_more_messages(&srv_rx, "the wrongly signed message was dispatched");
    // A new session signs correctly again and is served.
    let checked_before = srv_counts.checked.load(Ordering::Relaxed);
    let again = cli.connect_to(EntityType::OSD, target);
    again.send_message(test_message(MSG_TEST, 4, Bytes::new())).expect("send");
    assert_eq!(next_message(&srv_rx).1.tid(), 4);
    assert!(srv_counts.checked.load(Ordering::Relaxed) > checked_before);
    assert_eq!(protocol_counter(&srv, "bad_signatures"), 1);
    cli.shutdown();
    srv.shutdown();
}
