//! The messenger-level mark-downs (`Messenger::mark_down`, `Messenger::mark_down_all`
//! and the shutdown: Ceph's `mark_down_addrs`, `mark_down_all` and `shutdown`, which
//! stop each connection with `stop(true)` before they return) are as synchronous as
//! `Connection::mark_down`: once one returns, nothing more of the connection is written,
//! however close to a `writev` its driver was. Each test lands the mark-down right
//! before the driver's next write (the `inject_before_write` seam stands in for another
//! thread) and counts what the peer received.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use messenger::{ConnState, Connection, Messenger, Policy, ProtocolVersion};
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// Messages `srv` received once its session for the client is in standby (the client's
/// socket closed and nothing more can arrive on it).
fn received_by_standby(srv: &Messenger, session: &Connection) -> u64 {
    wait_until(
        || session.state() == ConnState::Standby,
        || format!("server session {:?}", session.state()),
    );
    srv.worker_counters().iter().map(|c| c.recv_messages.load(Ordering::SeqCst)).sum()
}

#[derive(Clone, Copy)]
enum How {
    /// `Messenger::mark_down(addr)`.
    Addr,
    /// `Messenger::mark_down_all()`.
    All,
    /// `Messenger::shutdown()` (Ceph's ends every session as `mark_down_all` does).
    Shutdown,
}

fn a_messenger_mark_down_landing_before_a_write_stops_it_over(proto: ProtocolVersion, how: How) {
    let (srv, _srv_addr, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
    let (cli, crx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), test_config(1));
    let cli = Arc::new(cli);
    let target = addr_for(proto, srv.my_addr());
    let conn = cli.connect_to(EntityType::OSD, target);
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (session, first) = next_message(&srx);
    assert_eq!(first.tid(), 1);
    let m = Arc::clone(&cli);
    conn.inject_before_write(move || match how {
        How::Addr => m.mark_down(&target),
        How::All => m.mark_down_all(),
        How::Shutdown => m.shutdown(),
    });
    conn.send_message(test_message(MSG_TEST, 2, Bytes::new())).expect("send");
    wait_for_reset(&crx, &conn);
    if matches!(how, How::Shutdown) {
        cli.wait();
    }
    wait_for_connection_count(&cli, 0, "client");
    assert_eq!(received_by_standby(&srv, &session), 1, "written after mark_down returned");
    cli.shutdown();
    srv.shutdown();
}

#[test]
fn a_messenger_mark_down_landing_before_a_write_stops_it() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V1, How::Addr);
}

#[test]
fn a_messenger_mark_down_landing_before_a_write_stops_it_over_msgr2() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V2, How::Addr);
}

#[test]
fn a_mark_down_all_landing_before_a_write_stops_it() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V1, How::All);
}

#[test]
fn a_mark_down_all_landing_before_a_write_stops_it_over_msgr2() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V2, How::All);
}

#[test]
fn a_shutdown_landing_before_a_write_stops_it() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V1, How::Shutdown);
}

#[test]
fn a_shutdown_landing_before_a_write_stops_it_over_msgr2() {
    a_messenger_mark_down_landing_before_a_write_stops_it_over(ProtocolVersion::V2, How::Shutdown);
}
