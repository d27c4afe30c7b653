//! Reconnects and reconnect races on real sockets (Ceph's ReconnectTest and
//! ReconnectRaceTest, and the lossless-peer livelock of Ceph PR 27359: both peers cut at
//! once, both reconnecting with equal connect_seqs, one answered WAIT forever).
//!
//! The numbers of connect attempts and of WAIT / RETRY / RESETSESSION replies come from
//! `Messenger::v1_counters`; each open of a session from `ms_handle_connect` /
//! `ms_handle_accept`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{MessengerConfig, Policy};
use protocol::types::EntityType;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

/// The WAIT backoff is `max_backoff`: a minute here, so a race that only resolves by
/// falling back to it shows as a stalled stream instead of passing slowly.
fn race_config() -> MessengerConfig {
    MessengerConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(60),
        ..test_config(2)
    }
}

/// A peer played by the sans-IO v1 machine over a blocking socket, so a test decides
/// exactly when each of its connects goes out.
struct RawPeer {
    machine: protocol::v1::Connection,
    socket: Option<std::net::TcpStream>,
}

impl RawPeer {
    /// Writes what the machine has, reads once (or until `deadline`), feeds the bytes,
    /// and returns the events.
    fn pump(&mut self, deadline: Instant) -> Vec<protocol::v1::Event> {
        use std::io::{Read, Write};
        let mut events = Vec::new();
        let now = Instant::now();
        let mut out = Vec::new();
        self.machine.poll_transmit(&mut out);
        if let Some(s) = self.socket.as_mut() {
            for seg in &out {
                s.write_all(seg).expect("raw peer write");
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
            s.set_read_timeout(Some(wait)).expect("timeout");
            let mut buf = vec![0u8; 64 << 10];
            match s.read(&mut buf) {
                Ok(0) => self.machine.handle_transport_closed(Instant::now()),
                Ok(n) => {
                    buf.truncate(n);
                    self.machine.handle_bytes(Instant::now(), Bytes::from(buf));
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => self.machine.handle_transport_closed(Instant::now()),
            }
        }
        while let Some(ev) = self.machine.poll_event() {
            if let protocol::v1::Event::NeedBudget { .. } = ev {
                self.machine.grant_budget(Instant::now());
            }
            events.push(ev);
        }
        // What the input produced (the in_seq of a SEQ exchange, ACKs) goes out now.
        out.clear();
        self.machine.poll_transmit(&mut out);
        if let Some(s) = self.socket.as_mut() {
            for seg in &out {
                s.write_all(seg).expect("raw peer write");
            }
        }
        events
    }

    /// Pumps until an event matching `pred` shows up; panics after `WAIT`.
    fn until(
        &mut self,
        what: &str,
        pred: impl Fn(&protocol::v1::Event) -> bool,
    ) -> protocol::v1::Event {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "raw peer: no {what}");
            if let Some(ev) = self.pump(deadline).into_iter().find(|e| pred(e)) {
                return ev;
            }
        }
    }
}

/// Ceph breaks a connection race with `peer_addr < my_addr || existing->policy.server`:
/// the *policy's* server flag. Between two lossless peers neither is a server, so only the
/// address decides, the same way on both sides. Here the side with the lower address (A)
/// had accepted the session and is now reconnecting it (in Connecting, connect_seq 1)
/// when the higher peer B connects with the same connect_seq: A must answer WAIT (its own
/// attempt wins). Were it to replace because it once *accepted* the session, B would
/// replace too on its side, and the two would close each other's new sockets.
#[test]
fn a_race_at_the_lower_address_answers_wait_even_if_it_had_accepted_the_session() {
    use protocol::v1::{Config, Event};
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let (a, _, a_rx) =
        server_on(EntityType::OSD, 1, Policy::lossless_peer(), false, any, race_config());
    // B's listening address: a socket that accepts A's reconnect and never answers.
    let b_listener = std::net::TcpListener::bind(any).expect("bind");
    let b_addr = protocol::types::EntityAddr::legacy(b_listener.local_addr().expect("addr"), 2);
    assert!(a.my_addr().race_key() < b_addr.race_key(), "A sorts lower (nonce 1 < 2)");
    let config = std::sync::Arc::new(Config::new(
        protocol::types::EntityName::new(EntityType::OSD, 2),
        b_addr,
    ));
    let machine = protocol::v1::Connection::connect(
        config.clone(),
        Policy::lossless_peer(),
        a.my_addr(),
        EntityType::OSD,
        Instant::now(),
    );
    let a_sock = a.my_addr().addr.expect("A's socket address");
    let mut b =
        RawPeer { machine, socket: Some(std::net::TcpStream::connect(a_sock).expect("dial A")) };
    b.machine.handle_transport_connected(Instant::now());
    b.until("open", |e| matches!(e, Event::Opened(_)));
    let a_conn = loop {
        match a_rx.recv_timeout(WAIT).expect("A accepts") {
            Seen::Accept(c) => break c,
            _ => continue,
        }
    };
    // B's socket dies; A's session (nothing pending) parks in standby, then a message
    // wakes it: A dials B's address, where nobody answers. A is now Connecting, cs 1.
    b.socket = None;
    b.machine.handle_transport_closed(Instant::now());
    let deadline = Instant::now() + WAIT;
    while a_conn.state() != messenger::ConnState::Standby {
        assert!(Instant::now() < deadline, "A never parked: {:?}", a_conn.state());
        std::thread::yield_now();
    }
    a_conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    let (_held, _) = b_listener.accept().expect("A reconnects to B's address");
    // B wakes too and connects again with the same connect_seq: a connection race.
    b.machine.send_message(test_message(MSG_TEST, 1, Bytes::new()));
    let reconnect = b.until("reconnect", |e| matches!(e, Event::Reconnect { .. }));
    assert!(matches!(reconnect, Event::Reconnect { .. }));
    b.socket = Some(std::net::TcpStream::connect(a_sock).expect("dial A again"));
    b.machine.handle_transport_connected(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(5);
    while config.counters.values().wait == 0 {
        assert!(Instant::now() < deadline, "no WAIT reply");
        for ev in b.pump(deadline) {
            assert!(
                !matches!(ev, Event::Opened(_)),
                "A replaced its own attempt: {:?}",
                config.counters.values()
            );
        }
    }
    assert_eq!(config.counters.values().connects, 2);
    a.shutdown();
}
