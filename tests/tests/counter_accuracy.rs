//! The messenger's message counters (`Messenger::totals`, `perf dump`'s
//! `msgr_send_messages` and `msgr_recv_messages`) count each message once, whatever
//! happened to the connection it went over. The counters are published by the worker at
//! the end of its pass (late, never wrong): every check here waits for the expected value
//! with a timeout, then checks it does not move past it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Messenger, MessengerConfig, Policy, ProtocolVersion};
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// A message far larger than what the socket buffers take while its reader waits (its
/// receive buffer grows only as it reads): it cannot be written whole meanwhile.
const LARGE: usize = 16 << 20;

fn config() -> MessengerConfig {
    test_config(1)
}

/// Waits for `read()` to reach `expected`, then checks it stays there a moment (a double
/// count shows as a value past it).
#[track_caller]
fn assert_settles_at(what: &str, read: impl Fn() -> u64, expected: u64) {
    wait_until(|| read() >= expected, || format!("{what}: {} of {expected}", read()));
    let grace = Instant::now() + Duration::from_millis(300);
    while Instant::now() < grace {
        assert_eq!(read(), expected, "{what}");
        std::thread::yield_now();
    }
}

/// `name` of `perf dump` summed over the messenger's workers (what the admin socket
/// answers).
fn perf(m: &Messenger, name: &str) -> u64 {
    let dump = m.counters_json();
    let sections = dump.as_object().into_iter().flatten();
    let workers = sections.filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"));
    workers.map(|(_, v)| v[name].as_u64().unwrap_or(0)).sum()
}

/// A lossless session is cut while a large message is half written; after the
/// reconnect the message is sent again (the peer never got it whole) and delivered once.
/// It was sent once: the sender counts one message, as the receiver does.
fn a_replayed_message_is_counted_once_over(proto: ProtocolVersion) {
    let (srv, _addr, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        config(),
    );
    let (cli, _cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    assert_eq!(next_message(&srv_rx).1.tid(), 1);
    assert_settles_at("sent before the cut", || cli.totals().send_messages, 1);

    // The server reads nothing meanwhile: the large message is framed (counted), written
    // in part, and cut.
    let go = hold_workers(&srv);
    conn.send_message(test_message(MSG_TEST, 2, Bytes::from(vec![7u8; LARGE]))).expect("send");
    wait_until(|| cli.totals().send_messages >= 2, || "the large message was not framed".into());
    conn.inject_socket_failure();
    wait_until(|| !conn.is_connected(), || "the cut did not happen".into());
    drop(go);

    let (_, m) = next_message(&srv_rx);
    assert_eq!((m.tid(), m.data().len()), (2, LARGE), "delivered whole after the reconnect");
    assert_no_more_messages(&srv_rx, "a message delivered twice");
    assert!(cli.v1_counters().connects >= 2, "the session reconnected");
    assert_settles_at("received", || srv.totals().recv_messages, 2);
    assert_settles_at(
        "sent (two messages, one of them framed twice)",
        || cli.totals().send_messages,
        2,
    );
    assert_eq!(perf(&cli, "msgr_send_messages"), 2, "perf dump agrees");
    assert_eq!(perf(&srv, "msgr_recv_messages"), 2, "perf dump agrees");
    // One connection each side: the client's reconnected on its own driver; the
    // server's accepted socket was handed to the session's driver, which closed.
    assert_eq!(perf(&cli, "msgr_created_connections"), 1);
    assert_settles_at("client connections", || perf(&cli, "msgr_active_connections"), 1);
    assert_eq!(perf(&srv, "msgr_created_connections"), 2);
    assert_settles_at("server connections", || perf(&srv, "msgr_active_connections"), 1);
    cli.shutdown();
    srv.shutdown();
    assert_eq!(perf(&cli, "msgr_active_connections"), 0, "all closed");
    assert_eq!(perf(&srv, "msgr_active_connections"), 0, "all closed");
}

#[test]
fn a_replayed_message_is_counted_once() {
    a_replayed_message_is_counted_once_over(ProtocolVersion::V1);
}

#[test]
fn a_replayed_message_is_counted_once_over_msgr2() {
    a_replayed_message_is_counted_once_over(ProtocolVersion::V2);
}

/// The server's half of it: a reply half written when the client's connection is cut is
/// sent again on the socket the client reconnects with, which the server's session
/// adopts (the replace hand-off). The server sent one reply: it counts one.
fn a_reply_replayed_after_a_replace_is_counted_once_over(proto: ProtocolVersion) {
    let (srv, _addr, srv_rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        false,
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        config(),
    );
    let (cli, cli_rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config());
    let conn = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (served, m) = next_message(&srv_rx);
    assert_eq!(m.tid(), 1);
    served.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("reply");
    assert_eq!(next_message(&cli_rx).1.tid(), 1);
    assert_settles_at("replies before the cut", || srv.totals().send_messages, 1);

    let go = hold_workers(&cli);
    served.send_message(test_message(MSG_TEST, 2, Bytes::from(vec![7u8; LARGE]))).expect("reply");
    wait_until(|| srv.totals().send_messages >= 2, || "the large reply was not framed".into());
    served.inject_socket_failure();
    wait_until(|| !served.is_connected(), || "the cut did not happen".into());
    drop(go);

    let (_, m) = next_message(&cli_rx);
    assert_eq!((m.tid(), m.data().len()), (2, LARGE), "delivered whole after the reconnect");
    assert_no_more_messages(&cli_rx, "a reply delivered twice");
    assert!(cli.v1_counters().connects >= 2, "the session reconnected");
    assert_settles_at("received", || cli.totals().recv_messages, 2);
    assert_settles_at("replies sent", || srv.totals().send_messages, 2);
    assert_eq!(perf(&srv, "msgr_send_messages"), 2, "perf dump agrees");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_reply_replayed_after_a_replace_is_counted_once() {
    a_reply_replayed_after_a_replace_is_counted_once_over(ProtocolVersion::V1);
}

#[test]
fn a_reply_replayed_after_a_replace_is_counted_once_over_msgr2() {
    a_reply_replayed_after_a_replace_is_counted_once_over(ProtocolVersion::V2);
}
