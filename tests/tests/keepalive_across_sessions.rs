//! A keepalive asked for (`Connection::send_keepalive`) and not written yet when the
//! session is reset or handed to a new socket, against Ceph's AsyncConnection: the
//! request is a flag of the protocol object (`ProtocolV1::keepalive`,
//! `ProtocolV2::keepalive`, set by `send_keepalive`, cleared only by `write_event` as it
//! writes the frame). Neither `ProtocolV1::session_reset` (a RESETSESSION reply,
//! `handle_connect_reply_2`) nor `ProtocolV2::reset_session` (a full SESSION_RESET,
//! `handle_session_reset`) touches it, and a replace (`ProtocolV1::replace`,
//! `ProtocolV2::reuse_connection`) moves the new socket into the existing connection,
//! whose flag stays set: the keepalive goes out on the next session, ahead of the next
//! message `write_event` writes.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Sender;
use messenger::{ConnState, Connection, Messenger, Policy, ProtocolVersion};
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

fn send(c: &Connection, tid: u64) {
    c.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
}

/// Returns once every worker of `m` ran what was queued to it before this call: the
/// wake-up of a connection's driver posted before (by a command sent to it) is queued
/// ahead, so the driver took the command.
fn settle_workers(m: &Messenger) {
    let handles = m.pool().handles();
    let (tx, rx) = crossbeam_channel::unbounded();
    for w in handles {
        let tx = tx.clone();
        w.dispatch_event_external(move |_| {
            let _ = tx.send(());
        })
        .expect("post");
    }
    for _ in handles {
        rx.recv_timeout(WAIT).expect("a worker ran what was queued to it");
    }
}

fn wait_for_state(c: &Connection, state: ConnState) {
    wait_until(|| c.state() == state, || format!("{c:?} never reached {state:?}"));
}

/// Waits until the peer acknowledged everything `c` sent (a lossless session with
/// nothing unacknowledged parks in standby when its socket fails).
fn wait_acked(c: &Connection) {
    wait_until(|| c.queued_send_bytes() == 0, || format!("{c:?} holds unacknowledged bytes"));
}

/// What the scripted acceptor heard on the session it opened.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    Keepalive,
    Message(u64),
}

/// Serves the acceptor's half of `sock` (as `me`: v1 for a legacy address, else msgr2)
/// with our sans-IO machine: with `reset_first` the first connect (v1) or reconnect
/// (msgr2) is told the session is gone (RESETSESSION, a full SESSION_RESET), every other
/// request opens. Without `heard` it returns once the session opened; with it, it goes
/// on and tells `heard` of every keepalive and message until the socket closes.
fn serve(mut sock: TcpStream, me: EntityAddr, reset_first: bool, heard: Option<Sender<Heard>>) {
    let cfg = protocol::Config::new(
        EntityName::new(EntityType::OSD, 0),
        EntityAddrVec { addrs: vec![me] },
    );
    let (peer, local) = (sock.peer_addr().expect("peer"), sock.local_addr().expect("local"));
    let now = Instant::now();
    let mut c = if me.ty == AddrType::LEGACY {
        protocol::Connection::accept_v1(Arc::new(cfg), peer, local, now)
    } else {
        protocol::Connection::accept(Arc::new(cfg), peer, local, now)
    };
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reset = reset_first;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut out = Vec::new();
        while c.poll_transmit(&mut out) > 0 {}
        for s in &out {
            if sock.write_all(s).is_err() {
                return;
            }
        }
        let now = Instant::now();
        let mut opened = false;
        while let Some(ev) = c.poll_event() {
            match ev {
                protocol::Event::NeedBudget { .. } => c.grant_budget(now),
                protocol::Event::VerifyAuthorizer { .. } => c.handle_authorizer_verdict(
                    now,
                    protocol::AuthVerdict::Accept { reply: Bytes::new() },
                ),
                protocol::Event::AcceptRequest(_) => {
                    let decision = if std::mem::take(&mut reset) {
                        protocol::Decision::ResetSession { full: true }
                    } else {
                        protocol::Decision::Open
                    };
                    c.handle_accept_decision(now, Policy::stateful_server(), decision, None);
                }
                protocol::Event::Opened(_) => opened = true,
                protocol::Event::KeepaliveReceived => {
                    if let Some(h) = &heard {
                        let _ = h.send(Heard::Keepalive);
                    }
                }
                protocol::Event::Message(m) => {
                    if let Some(h) = &heard {
                        let _ = h.send(Heard::Message(m.tid()));
                    }
                }
                protocol::Event::Closed { .. } => return,
                _ => {}
            }
        }
        if opened && heard.is_none() {
            let mut out = Vec::new();
            while c.poll_transmit(&mut out) > 0 {}
            for s in &out {
                let _ = sock.write_all(s);
            }
            return;
        }
        if c.wants_write() {
            continue;
        }
        match tests::read_some(&mut sock, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => c.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
        }
    }
}

/// A keepalive asked for while the session waited in standby, then a message that
/// wakes it: the acceptor answers the reconnect with a full reset (v1 RESETSESSION,
/// msgr2 SESSION_RESET full). Ceph's reset discards the queued messages but not the
/// keepalive flag, so the keepalive goes out on the new session, ahead of the next
/// message. Before, ours dropped it with the session (`keepalive.pending = None`).
#[test]
fn a_keepalive_pending_across_a_full_session_reset_is_sent_on_the_new_session() {
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
        let me = addr_for(proto, EntityAddr::legacy(l.local_addr().expect("addr"), 7));
        let (cli, crx) = client(EntityType::OSD, 3, Policy::lossless_peer());
        let conn = cli.connect_to(EntityType::OSD, me);
        let (first, _) = l.accept().expect("first dial");
        serve(first, me, false, None);
        assert!(wait_for_event(&crx, |s| matches!(s, Seen::Connect(x) if *x == conn)), "{proto:?}");
        // Nothing queued nor unacknowledged: the cut parks the session in standby.
        wait_for_state(&conn, ConnState::Standby);

        conn.send_keepalive();
        settle_workers(&cli);
        // The keepalive does not wake a session in standby (as in Ceph); a message does.
        send(&conn, 2);
        let (second, _) = l.accept().expect("the reconnect");
        let (htx, heard) = crossbeam_channel::unbounded();
        let server = std::thread::spawn(move || serve(second, me, true, Some(htx)));
        assert!(
            wait_for_event(&crx, |s| matches!(s, Seen::RemoteReset(x) if *x == conn)),
            "{proto:?}: no remote reset"
        );
        // Queued after the reset: on the new session.
        send(&conn, 3);
        let mut got = Vec::new();
        loop {
            let h = heard.recv_timeout(WAIT).unwrap_or_else(|e| {
                panic!("{proto:?}: the acceptor heard {got:?} and then nothing ({e})")
            });
            let done = h == Heard::Message(3);
            got.push(h);
            if done {
                break;
            }
        }
        assert_eq!(
            got.first(),
            Some(&Heard::Keepalive),
            "{proto:?}: the keepalive asked for before the reset, ahead of the next message"
        );
        cli.shutdown();
        server.join().expect("acceptor thread");
    }
}

/// A keepalive asked for on a stateful server's session while it waits in standby for
/// its client, who then reconnects: the acceptor hands the new socket to the existing
/// session (a replace). Ceph's replace moves the socket into the existing connection,
/// whose keepalive flag stays set, and its next `write_event` writes it ahead of the
/// next message. Before, ours left it in the old socket's machine, dropped with it.
#[test]
fn a_keepalive_pending_when_a_session_is_replaced_is_sent_on_the_new_socket() {
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let (srv, _, srx) = server(EntityType::OSD, 1, Policy::stateful_server(), false);
        let (cli, crx) = client(EntityType::CLIENT, 2, Policy::lossless_peer());
        let c1 = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        send(&c1, 1);
        let (s1, m) = next_message(&srx);
        assert_eq!(m.tid(), 1, "{proto:?}");
        wait_acked(&c1);
        assert_eq!(c1.last_keepalive(), None, "{proto:?}: no keepalive yet");

        c1.inject_socket_failure();
        wait_for_state(&s1, ConnState::Standby);
        wait_for_state(&c1, ConnState::Standby);
        s1.send_keepalive();
        settle_workers(&srv);

        send(&c1, 2);
        let (s, m) = next_message(&srx);
        assert_eq!((m.tid(), &s), (2, &s1), "{proto:?}: the session goes on, replaced");
        s1.send_message(test_message(MSG_TEST, 3, Bytes::new())).expect("send");
        let (c, m) = next_message(&crx);
        assert_eq!((m.tid(), &c), (3, &c1), "{proto:?}");
        // Written ahead of the message, so read (and recorded) before it was dispatched.
        assert!(
            c1.last_keepalive().is_some(),
            "{proto:?}: the keepalive asked for before the replace never came"
        );
        cli.shutdown();
        srv.shutdown();
    }
}

/// The keepalives `keepalive_interval` sends carry our wall clock, as every KEEPALIVE2
/// does (Ceph stamps each with `ceph_clock_now()`): the peer echoes the stamp, and
/// `last_keepalive_ack` is what a user compares with the time now (MonClient's hunting
/// does, on the monitor connection). Before, a connection whose user never called
/// `send_keepalive` stamped them with the time since the connection was made, a date in
/// January 1970.
#[test]
fn interval_keepalives_carry_the_wall_clock() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    for proto in [ProtocolVersion::V1, ProtocolVersion::V2] {
        let (srv, _, _srx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
        let config = messenger::MessengerConfig {
            keepalive_interval: Some(Duration::from_millis(20)),
            ..test_config(2)
        };
        let (cli, _crx) = client_with(EntityType::CLIENT, 2, Policy::lossy_client(), config);
        let c = cli.connect_to(EntityType::OSD, addr_for(proto, srv.my_addr()));
        send(&c, 1);
        wait_until(
            || c.last_keepalive_ack().is_some(),
            || format!("{proto:?}: no KEEPALIVE2_ACK to an interval keepalive"),
        );
        let ack = c.last_keepalive_ack().expect("an ack");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        let sec = u64::from(ack.sec);
        assert!(
            sec + 60 >= now && sec <= now + 60,
            "{proto:?}: the interval keepalive was stamped {sec} s after 1970, now is {now}"
        );
        cli.shutdown();
        srv.shutdown();
    }
}
