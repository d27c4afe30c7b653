//! Our monitor client against a real Ceph 16.2 monitor that goes away and comes back:
//! killed and restarted on the same address (a new incarnation), down for longer than
//! our backoff ceiling, or reached through a proxy that keeps cutting the connection
//! during the cephx exchange and the open session. The lossy monitor session must be
//! reported reset, a connection dialled while the monitor is down must keep retrying at
//! the backoff's pace (never busy-looping) and open once the monitor is back, nothing
//! may pile up, and the monitor must never log that it rejected our bytes.
//! Skipped, with a printed reason, when Ceph is not installed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy};
use protocol::auth::cephx::TicketStore;
use protocol::auth::{ConMode, ConModes};
use protocol::messages::MsgType;
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use protocol::Message;
use tests::ceph::CephMon;
use tests::cephx::{client_admin, get_map, monitor_client, monmap_or_reset};
use tests::chaos::{ChaosConfig, ChaosProxy};
use tests::loopback::{init_logging, test_config, Recorder, Seen, WAIT};

/// A client messenger authenticating to msgr2 monitors as client.admin with cephx (the
/// provider's monitor key), lossy to monitors, in `mode`.
fn v2_client(mon: &CephMon, mode: ConMode, config: MessengerConfig) -> (Messenger, Receiver<Seen>) {
    let (name, key) = client_admin(&mon.keyring());
    let store = Arc::new(TicketStore::default());
    let config = MessengerConfig { mon_client_mode: Some(ConModes(vec![mode])), ..config };
    monitor_client(&name, &key, &store, config)
}

/// A test config whose reconnects back off from 10 ms up to 200 ms.
fn fast_backoff() -> MessengerConfig {
    MessengerConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        ..test_config(1)
    }
}

/// Handlers and armed timers over every worker of `m`'s pool.
fn pool_counts(m: &Messenger) -> (usize, usize) {
    m.pool()
        .handles()
        .iter()
        .map(|h| h.submit_to(|cx| (cx.handler_count(), cx.timer_count())).expect("worker"))
        .fold((0, 0), |(a, b), (h, t)| (a + h, b + t))
}

/// Lines of the monitor's log that say it rejected what a peer sent.
fn protocol_errors(mon: &CephMon) -> Vec<String> {
    let log = std::fs::read_to_string(mon.dir().join("mon.a.log")).unwrap_or_default();
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            [
                "bad crc",
                "decode",
                "malformed",
                "bad tag",
                "unknown tag",
                "invalid",
                "rx_segments",
                "bad magic",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .map(str::to_owned)
        .collect()
}

/// The monitor (msgr2 only, cephx) is killed and restarted on the same address, three
/// times, in secure mode and in crc mode: each open session is reported reset; a
/// connection dialled while the monitor is down (for longer than our backoff ceiling)
/// keeps retrying and opens, authenticated anew, once it is back, and its monmap
/// request is answered; one live connection at the end.
#[test]
fn msgr2_cephx_monitor_restarted_three_times_is_reached_again_in_both_modes() {
    init_logging();
    let Some(mut mon) =
        CephMon::start_cephx_msgr2_only("msgr2_monitor_restarted", &[("debug_ms", "1")])
            .expect("start ceph-mon")
    else {
        return;
    };
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(mon.addr()) };
    for mode in [ConMode::SECURE, ConMode::CRC] {
        let config = fast_backoff();
        let (msgr, rx) = v2_client(&mon, mode, config);
        let mut conn = msgr.connect_to(EntityType::MON, addr);
        conn.send_message(get_map()).expect("send");
        monmap_or_reset(&rx, &conn, WAIT).expect("first monmap");
        assert_eq!(conn.con_mode(), Some(mode));
        for round in 0..3 {
            mon.kill();
            let mut waited = conn.clone();
            // The session was open: reset, as Ceph's lossy fault reports.
            let r = monmap_or_reset(&rx, &waited, WAIT);
            assert_eq!(r, Err("reset".into()), "{mode:?} round {round}");
            // Dialled while the monitor is down: retried with backoff.
            conn = msgr.connect_to(EntityType::MON, addr);
            assert_ne!(conn, waited);
            conn.send_message(get_map()).expect("send while down");
            waited = conn.clone();
            mon.restart().expect("restart");
            let start = Instant::now();
            loop {
                match monmap_or_reset(&rx, &conn, WAIT) {
                    Ok(()) => break,
                    Err(e) => {
                        // A restarted monitor may refuse auth until its quorum forms;
                        // MonClient then dials again.
                        assert!(start.elapsed() < WAIT, "{mode:?} round {round}: {e}");
                        eprintln!("{mode:?} round {round}: {e}; dialling again");
                        let again = msgr.connect_to(EntityType::MON, addr);
                        if again != conn {
                            // A new connection: the old one (and its request) is gone.
                            again.send_message(get_map()).expect("send");
                        }
                        conn = again;
                    }
                }
            }
            eprintln!("{mode:?} round {round}: same connection: {}", conn == waited);
            assert_eq!(conn.con_mode(), Some(mode));
            assert_eq!(msgr.connection_count(), 1, "{}", msgr.dump_connections());
        }
        msgr.shutdown();
    }
    let errors = protocol_errors(&mon);
    assert!(errors.is_empty(), "the monitor rejected our bytes:\n{}", errors.join("\n"));
}

/// A connection dialled through a proxy to a monitor that is down keeps retrying at the
/// backoff's pace (capped at `max_backoff`, never busy) and opens once the monitor is
/// back; msgr v1 (cephx in MAuth is not needed to open the session) and msgr2 crc.
#[test]
fn dialling_a_stopped_monitor_retries_at_the_backoff_pace_until_it_is_back() {
    init_logging();
    let Some(mut mon) =
        CephMon::start_cephx_msgr2_only("stopped_monitor_backoff", &[("debug_ms", "1")])
            .expect("start ceph-mon")
    else {
        return;
    };
    let proxy = ChaosProxy::start(mon.addr(), ChaosConfig::new(7)).expect("proxy");
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(proxy.addr()) };
    let max_backoff = Duration::from_millis(200);
    let config = MessengerConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff,
        ..test_config(1)
    };
    let (msgr, rx) = v2_client(&mon, ConMode::CRC, config);
    let conn = msgr.connect_to(EntityType::MON, addr);
    conn.send_message(get_map()).expect("send");
    monmap_or_reset(&rx, &conn, WAIT).expect("first monmap");
    mon.kill();
    assert_eq!(monmap_or_reset(&rx, &conn, WAIT), Err("reset".into()));
    let links_before = proxy.stats().links;
    let down_since = Instant::now();
    let conn = msgr.connect_to(EntityType::MON, addr);
    conn.send_message(get_map()).expect("send while down");
    // Down past the backoff ceiling: 10, 20, 40, 80, 160 ms, then 200 ms apart.
    tests::loopback::wait_until(
        || proxy.stats().links - links_before >= 10,
        || format!("fewer than 10 attempts: {:?}", proxy.stats()),
    );
    let during = down_since.elapsed();
    let attempts_down = proxy.stats().links - links_before;
    assert!(
        during >= Duration::from_millis(1000),
        "{attempts_down} attempts in {during:?}: not backing off"
    );
    mon.restart().expect("restart");
    let r = monmap_or_reset(&rx, &conn, WAIT);
    let down = down_since.elapsed();
    let attempts = proxy.stats().links - links_before;
    eprintln!("down {down:?}: {attempts} attempts: {r:?}");
    assert_eq!(r, Ok(()), "the connection dialled while the monitor was down");
    // 10, 20, 40, 80, 160 ms, then every 200 ms (+ the handshake of each).
    let bound = 8 + (down.as_millis() / max_backoff.as_millis()) as u64 * 2;
    assert!(attempts <= bound, "{attempts} attempts in {down:?} (at most {bound})");
    assert_eq!(msgr.connection_count(), 1, "{}", msgr.dump_connections());
    msgr.shutdown();
    let errors = protocol_errors(&mon);
    assert!(errors.is_empty(), "the monitor rejected our bytes:\n{}", errors.join("\n"));
}

/// What came on `conn` first within `within`: a message of type `ty` (its tid and the
/// message), or its reset (`None`). Panics when neither came: a stall.
fn reply_or_reset(
    rx: &Receiver<Seen>,
    conn: &Connection,
    ty: u16,
    within: Duration,
) -> Option<Message> {
    let deadline = Instant::now() + within;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn && m.msg_type() == ty => return Some(m),
            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => return None,
            Ok(_) => {}
            Err(e) => {
                panic!("no reply of type {ty:#x} and no reset within {within:?}: {e}\n{conn:?}")
            }
        }
    }
}

/// One round of `rounds` over msgr2: dials the monitor at `addr`, asks for its monmap
/// and marks everything down; whether the monmap came (in `mode`) before a reset.
fn monmap_round(msgr: &Messenger, rx: &Receiver<Seen>, addr: EntityAddr, mode: ConMode) -> bool {
    let conn = msgr.connect_to(EntityType::MON, addr);
    if conn.send_message(get_map()).is_err() {
        // Opened and already cut (a lossy session ends at its first fault) while this
        // thread waited for a CPU.
        msgr.mark_down_all();
        return false;
    }
    let got = reply_or_reset(rx, &conn, MsgType::MON_MAP.0, WAIT).is_some();
    if got {
        assert_eq!(conn.con_mode(), Some(mode));
    }
    msgr.mark_down_all();
    got
}

/// Runs `round` (given the round's number) for `secs` seconds, each round leaving at
/// most one connection: through `proxy` cutting, after a round with nothing in the way,
/// and then one more once it stopped; or (no proxy) against a monitor failing its own
/// sockets, where some round must get through. Then nothing piles up (no connection,
/// handler or timer left) and the monitor's log shows none of our bytes rejected.
fn rounds(
    msgr: &Messenger,
    mon: &CephMon,
    proxy: Option<&ChaosProxy>,
    secs: u64,
    mut round: impl FnMut(u64) -> bool,
) {
    if proxy.is_some() {
        assert!(round(1), "a round with no cuts");
        msgr.mark_down_all();
        tests::loopback::wait_for_connection_count(msgr, 0, "client");
    }
    let before = pool_counts(msgr);
    if let Some(p) = proxy {
        p.arm();
    }
    let (mut ok, mut cut, mut n) = (0, 0, 1);
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        n += 1;
        if round(n) {
            ok += 1;
        } else {
            cut += 1;
        }
        assert!(msgr.connection_count() <= 1, "{}", msgr.dump_connections());
    }
    eprintln!("{ok} rounds completed, {cut} cut or reset");
    assert!(ok > 0, "no round completed");
    if let Some(p) = proxy {
        p.disarm();
        eprintln!("proxy {:?}", p.stats());
        assert!(round(n + 1), "a round after the cuts");
    }
    msgr.mark_down_all();
    tests::loopback::wait_for_connection_count(msgr, 0, "client");
    let after = pool_counts(msgr);
    assert_eq!(after, before, "handlers and timers left behind");
    let errors = protocol_errors(mon);
    assert!(errors.is_empty(), "the monitor rejected our bytes:\n{}", errors.join("\n"));
}

/// msgr v1 with cephx in MAuth, as Ceph's MonClient does, through a proxy that cuts
/// every 20–150 ms: each round dials, authenticates (keeping the global id with the old
/// ticket) and runs `status`; a cut ends the round with a reset, never a stall. Once the
/// proxy stops cutting a round succeeds; nothing piles up; the monitor logs no
/// rejected bytes.
#[test]
fn v1_cephx_monitor_session_through_repeated_cuts() {
    init_logging();
    let Some(mon) =
        CephMon::start_cephx("v1_cephx_cuts", &[("debug_ms", "1")]).expect("start ceph-mon")
    else {
        return;
    };
    let proxy = ChaosProxy::start(mon.addr(), ChaosConfig::new(11)).expect("proxy");
    v1_cephx_rounds(&mon, Some(&proxy));
}

/// The monitor fails its own socket operations at random (`ms_inject_socket_failures`:
/// one in 40) while our msgr v1 client dials, authenticates with cephx in MAuth and runs
/// `status` over and over: every round ends with the answer or a reset, never a stall;
/// nothing piles up; the monitor logs no rejected bytes.
#[test]
fn v1_cephx_client_against_a_monitor_injecting_socket_failures() {
    init_logging();
    let options = [("debug_ms", "1"), ("ms_inject_socket_failures", "40")];
    let Some(mon) = CephMon::start_cephx("v1_cephx_inject", &options).expect("start ceph-mon")
    else {
        return;
    };
    v1_cephx_rounds(&mon, None);
}

/// Rounds of dial, cephx over MAuth and `status`, for 8 s: through `proxy`, cutting, or
/// straight to `mon`. A round after them succeeds (the proxy no longer cutting).
fn v1_cephx_rounds(mon: &CephMon, proxy: Option<&ChaosProxy>) {
    use protocol::auth::cephx::{CephxClient, ClientConfig};
    use protocol::messages::{MAuthReply, MMonCommand, MMonCommandAck, TypedMessage};
    let (name, key) = client_admin(&mon.keyring());
    let mut auth = CephxClient::new(ClientConfig::new(name, key), Box::new(rand::rngs::OsRng));
    let dial = proxy.map_or(mon.addr(), ChaosProxy::addr);
    let config = fast_backoff();
    let msgr = Messenger::new(EntityName::new(EntityType::CLIENT, EntityName::NEW), 3, config)
        .expect("messenger");
    msgr.set_policy(EntityType::MON, Policy::lossy_client());
    msgr.start().expect("start");
    let (rec, rx) = Recorder::new(false);
    msgr.add_dispatcher_head(rec).expect("dispatcher");
    let fsid = mon.fsid_bytes();
    let round = |auth: &mut CephxClient, tid: u64| -> bool {
        msgr.set_myname(EntityName::new(EntityType::CLIENT, EntityName::NEW));
        let conn = msgr.get_connection(EntityType::MON, dial);
        auth.start(Instant::now());
        for _ in 0..8 {
            let Some(req) = auth.poll_request(Instant::now()) else { break };
            if conn.send_message(req.to_message(conn.features())).is_err() {
                return false;
            }
            let Some(m) = reply_or_reset(&rx, &conn, MsgType::AUTH_REPLY.0, WAIT) else {
                return false;
            };
            let reply = MAuthReply::from_message(&m).expect("MAuthReply");
            auth.handle_reply(Instant::now(), &reply).expect("cephx accepted");
        }
        while auth.poll_event().is_some() {}
        assert!(auth.is_authenticated());
        let gid = i64::try_from(auth.global_id()).expect("gid");
        msgr.set_myname(EntityName::new(EntityType::CLIENT, gid));
        let cmd = MMonCommand {
            fsid,
            cmd: vec![r#"{"prefix": "status"}"#.to_owned()],
            ..MMonCommand::default()
        };
        let mut msg = cmd.to_message(conn.features());
        msg.set_tid(tid);
        if conn.send_message(msg).is_err() {
            return false;
        }
        let Some(m) = reply_or_reset(&rx, &conn, MsgType::MON_COMMAND_ACK.0, WAIT) else {
            return false;
        };
        let ack = MMonCommandAck::from_message(&m).expect("ack");
        assert_eq!(ack.r, 0, "{}", ack.rs);
        msgr.mark_down_all();
        true
    };
    rounds(&msgr, mon, proxy, 8, |tid| round(&mut auth, tid));
    msgr.shutdown();
}

/// msgr2 crc mode with cephx in the AUTH frames, through a proxy that cuts every 20–150
/// ms: each round dials, authenticates in the handshake and asks for the monmap; a cut
/// ends the round with a reset (or the connector retries within the round), never a
/// stall. Once the proxy stops cutting a round succeeds; nothing piles up; the monitor
/// logs no rejected bytes.
#[test]
fn msgr2_crc_cephx_monitor_handshakes_through_repeated_cuts() {
    init_logging();
    let Some(mon) = CephMon::start_cephx_msgr2_only("msgr2_crc_cuts", &[("debug_ms", "1")])
        .expect("start ceph-mon")
    else {
        return;
    };
    let proxy = ChaosProxy::start(mon.addr(), ChaosConfig::new(13)).expect("proxy");
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(proxy.addr()) };
    let config = fast_backoff();
    let (msgr, rx) = v2_client(&mon, ConMode::CRC, config);
    rounds(&msgr, &mon, Some(&proxy), 8, |_| monmap_round(&msgr, &rx, addr, ConMode::CRC));
    msgr.shutdown();
}

/// msgr2 secure mode with cephx, through a proxy that passes every byte and cuts every
/// 20–150 ms (the monitor announces the proxy's address: `public_bind_addr`): each
/// round dials, authenticates in the AUTH frames, derives the AES-GCM keys and asks for
/// the monmap; a cut ends the round with a reset (or the connector retries within it),
/// never a stall. Once the proxy stops cutting a round succeeds; nothing piles up; the
/// monitor logs no rejected bytes.
#[test]
fn msgr2_secure_cephx_monitor_handshakes_through_repeated_cuts() {
    init_logging();
    if !tests::ceph::ceph_available("msgr2_secure_cuts") {
        return;
    }
    let bind = SocketAddr::from(([127, 0, 0, 1], tests::ceph::free_loopback_port().expect("port")));
    let public = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let public_addr = public.local_addr().expect("addr");
    let config = ChaosConfig { rewrite: false, ..ChaosConfig::new(17) };
    let proxy = ChaosProxy::start_on(public, bind, config).expect("proxy");
    let Some(mon) = CephMon::start_cephx_msgr2_behind(
        "msgr2_secure_cuts",
        bind,
        public_addr,
        &[("debug_ms", "1")],
    )
    .expect("start ceph-mon") else {
        return;
    };
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(public_addr) };
    let config = fast_backoff();
    let (msgr, rx) = v2_client(&mon, ConMode::SECURE, config);
    rounds(&msgr, &mon, Some(&proxy), 8, |_| monmap_round(&msgr, &rx, addr, ConMode::SECURE));
    msgr.shutdown();
}

/// The real monitor fails its own socket operations at random
/// (`ms_inject_socket_failures`: one in 40), in the middle of handshakes, cephx
/// exchanges and open sessions, while our client dials, authenticates (msgr2, in
/// `mode`) and asks for the monmap over and over: every round ends with the monmap or
/// a reset, never a stall; nothing piles up.
#[test]
fn msgr2_client_against_a_monitor_injecting_socket_failures() {
    init_logging();
    let options = [("debug_ms", "1"), ("ms_inject_socket_failures", "40")];
    let Some(mon) =
        CephMon::start_cephx_msgr2_only("mon_inject_failures", &options).expect("start ceph-mon")
    else {
        return;
    };
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(mon.addr()) };
    for mode in [ConMode::SECURE, ConMode::CRC] {
        let config = fast_backoff();
        let (msgr, rx) = v2_client(&mon, mode, config);
        eprintln!("{mode:?}");
        rounds(&msgr, &mon, None, 5, |_| monmap_round(&msgr, &rx, addr, mode));
        msgr.shutdown();
    }
}
