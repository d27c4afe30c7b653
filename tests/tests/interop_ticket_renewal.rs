//! cephx ticket lifetimes against a real Ceph 16.2.15 monitor and OSD whose tickets
//! live seconds (`auth_service_ticket_ttl` 2 s, `auth_mon_ticket_ttl` 4 s, a monitor
//! tick a second, so its rotating secrets roll every few seconds), over msgr v1 and
//! msgr2 secure, client.admin's monitor session over msgr v1 or msgr2 secure:
//!
//! - (a) our client keeps its monitor session and renews its auth and osd tickets
//!   before they expire; once the first osd ticket expired and its secret left the
//!   monitor's window, a new connection to the OSD (built from the renewed ticket)
//!   is accepted;
//! - (b) the sessions opened to the OSD with the first ticket stay up across its expiry
//!   (Ceph does not re-authenticate open sessions): commands keep being answered on
//!   them, and neither is reset;
//! - (c) a messenger of ours posing as a daemon (`osd.1`, its rotating secrets fetched
//!   from the monitor with GET_ROTATING_KEY) accepts clients whose tickets were sealed
//!   with the next secret of its window (the monitor rotated since the daemon fetched)
//!   and with the previous one (the daemon fetched after the monitor rotated), and
//!   keeps its open sessions across its refreshes;
//! - a daemon refreshing its secrets by `RotatingSecrets::refresh_due` asks the
//!   monitor again once it rotated, not while the current secret is still valid.
//!
//! Skipped, with a printed reason, when Ceph is not installed (a failure in CI,
//! ASYNCMSGR_REQUIRE_CEPH=1).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Connection, Messenger, MessengerConfig, Policy};
use protocol::auth::cephx::{
    CephxClient, CephxProvider, ClientConfig, ClientEvent, ReceivedTicket, RotatingKeyStore,
    RotatingSecrets, SharedKeyStore, TicketSource, TicketStore, WallClock,
};
use protocol::auth::{parse_entity_name, AuthConfig, ConMode, ConModes, KeyRing};
use protocol::messages::{MAuthReply, MCommand, MCommandReply, MsgType, TypedMessage};
use protocol::types::{AddrType, AuthEntityName, EntityAddr, EntityName, EntityType, Features};
use tests::ceph::CephOsd;
use tests::cephx::{
    assert_version_json, client_admin, monitor_client, monitor_session, os_rng_source, wall_now,
};
use tests::loopback::{in_mode, init_logging, start_recorded, test_config, Recorder, Seen, WAIT};
use tests::mon::MonClient;

const VERSION: &str = r#"{"prefix": "version"}"#;
/// `auth_service_ticket_ttl`, seconds.
const SERVICE_TTL: u64 = 2;
/// `auth_service_ticket_ttl` of the rotation test, seconds.
const SERVICE_TTL_ROTATION: u64 = 4;
/// How long the renewal phase may take at most.
const RENEWAL_LIMIT: Duration = Duration::from_secs(40);

/// A provider for `name` whose tickets come from `tickets` (and, as a daemon, whose
/// service secrets come from `keys`).
fn provider(
    name: &AuthEntityName,
    tickets: Arc<TicketStore>,
    keys: Option<Arc<SharedKeyStore>>,
) -> Arc<CephxProvider> {
    let clock = WallClock::anchored(Instant::now(), wall_now());
    let mut p =
        CephxProvider::new(name.clone(), AuthConfig::ceph_defaults(), clock, os_rng_source())
            .with_tickets(tickets);
    if let Some(keys) = keys {
        p = p.with_keys(keys);
    }
    Arc::new(p)
}

/// A client messenger (`me`, lossy to everyone) on `provider`.
fn client(
    me: EntityName,
    provider: Arc<CephxProvider>,
    mode: Option<ConMode>,
) -> (Messenger, Receiver<Seen>) {
    let msgr =
        Messenger::new(me, rand::random::<u32>() | 1, in_mode(mode).with_auth_provider(provider))
            .expect("messenger");
    start_recorded(msgr, Policy::lossy_client())
}

/// Sends `version` to the OSD on `conn` as `tid` and waits for its answer: `Err` with
/// what happened instead (a reset, a refusal, nothing within `WAIT`).
fn version(conn: &Connection, rx: &Receiver<Seen>, fsid: [u8; 16], tid: u64) -> Result<(), String> {
    let cmd = MCommand { fsid, cmd: vec![VERSION.to_owned()], data: Bytes::new() };
    let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    msg.set_tid(tid);
    conn.send_message(msg).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn && m.tid() == tid => {
                let reply = MCommandReply::from_message(&m).expect("MCommandReply");
                assert_version_json(&reply);
                return Ok(());
            }
            Ok(Seen::Reset(c)) if &c == conn => return Err(format!("tid {tid}: reset")),
            Ok(Seen::Refused(c)) if &c == conn => return Err(format!("tid {tid}: refused")),
            Ok(_) => {}
            Err(e) => return Err(format!("tid {tid}: no answer ({e})")),
        }
    }
}

/// A message to our daemon, echoed back when its authorizer was accepted; `Err` with
/// what happened instead.
fn echo(conn: &Connection, rx: &Receiver<Seen>, tid: u64) -> Result<(), String> {
    let mut msg = tests::loopback::test_message(0x7000, tid, Bytes::from_static(b"hello"));
    msg.set_tid(tid);
    conn.send_message(msg).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Seen::Message(c, m)) if &c == conn && m.tid() == tid => return Ok(()),
            Ok(Seen::Reset(c)) if &c == conn => return Err("reset".into()),
            Ok(Seen::Refused(c)) if &c == conn => return Err("refused".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("no echo ({e})")),
        }
    }
}

/// The OSD's public address of `kind` ("v1"/"v2") with its nonce, from `osd dump`.
fn osd_addr(osd: &CephOsd, kind: &str) -> EntityAddr {
    osd.dumped_addr("public_addrs", kind)
}

/// Our daemon `osd.1` verifying with `window`, bound on loopback (both protocols),
/// echoing every message; its key store, to refresh.
fn daemon(name: &AuthEntityName, window: RotatingSecrets) -> (Messenger, Arc<SharedKeyStore>) {
    let keys = Arc::new(SharedKeyStore::new(RotatingKeyStore::new(EntityType::OSD, window)));
    let msgr = Messenger::new(
        EntityName::new(EntityType::OSD, 1),
        rand::random::<u32>() | 1,
        test_config(1).with_auth_provider(provider(
            name,
            Arc::new(TicketStore::default()),
            Some(keys.clone()),
        )),
    )
    .expect("daemon");
    msgr.set_default_policy(Policy::stateless_server());
    msgr.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    msgr.start().expect("start");
    let (rec, _) = Recorder::new(true);
    msgr.add_dispatcher_head(rec).expect("dispatcher");
    (msgr, keys)
}

/// client.admin's monitor session, over msgr v1 (MAuth from the start) or msgr2 secure
/// (the handshake's cephx session, renewed with MAuth on that connection).
enum MonSession {
    V1(Box<MonClient>),
    V2 { conn: Connection, rx: Receiver<Seen> },
}

impl MonSession {
    /// Sends what `auth` asks for and feeds it the replies until it asks for nothing.
    fn drive(&self, auth: &mut CephxClient) -> Vec<ClientEvent> {
        match self {
            MonSession::V1(mon) => mon.drive_cephx(auth).expect("renewal accepted"),
            MonSession::V2 { conn, rx } => {
                let mut events = Vec::new();
                for _ in 0..8 {
                    let Some(req) = auth.poll_request(Instant::now()) else {
                        events.extend(std::iter::from_fn(|| auth.poll_event()));
                        return events;
                    };
                    conn.send_message(req.to_message(conn.features())).expect("send MAuth");
                    let deadline = Instant::now() + WAIT;
                    let reply = loop {
                        match rx.recv_deadline(deadline) {
                            Ok(Seen::Message(c, m))
                                if &c == conn && m.msg_type() == MsgType::AUTH_REPLY.0 =>
                            {
                                break MAuthReply::from_message(&m).expect("MAuthReply");
                            }
                            Ok(Seen::Reset(c) | Seen::Refused(c)) if &c == conn => {
                                panic!("monitor session dropped")
                            }
                            Ok(_) => {}
                            Err(e) => panic!("no MAuthReply: {e}"),
                        }
                    };
                    auth.handle_reply(Instant::now(), &reply).expect("the monitor's reply taken");
                    events.extend(std::iter::from_fn(|| auth.poll_event()));
                }
                panic!("cephx did not settle within 8 round trips")
            }
        }
    }
}

/// The monitor's msgr2 address, from its monmap.
fn mon_v2_addr(osd: &CephOsd) -> EntityAddr {
    let out = osd.mon().ceph(&["mon", "dump", "--format", "json"]).expect("mon dump");
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("mon dump JSON");
    let a = dump["mons"][0]["public_addrs"]["addrvec"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["type"] == "v2"))
        .cloned()
        .unwrap_or_default();
    let addr: SocketAddr = a["addr"].as_str().expect("addr").parse().expect("addr");
    EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(addr) }
}

/// `osd.1`'s rotating osd secrets, fetched now over its own monitor session.
fn fetch_rotating(mon: &MonClient, auth: &mut CephxClient) -> RotatingSecrets {
    auth.request_rotating_secrets();
    let events = mon.drive_cephx(auth).expect("GET_ROTATING_KEY");
    events
        .into_iter()
        .find_map(|e| match e {
            ClientEvent::RotatingSecrets(r) => Some(r),
            _ => None,
        })
        .expect("rotating secrets")
}

/// Connects to our daemon `daemon` (both protocols on one port) from a fresh client
/// messenger holding only `ticket`, over v1 and msgr2 secure: `Ok` when both are
/// accepted.
fn daemon_takes(
    daemon: &Messenger,
    name: &AuthEntityName,
    me: EntityName,
    global_id: u64,
    ticket: &ReceivedTicket,
) -> Result<(), String> {
    let store = Arc::new(TicketStore::new(global_id));
    store.insert(global_id, ticket.clone());
    for (kind, mode) in [(AddrType::LEGACY, None), (AddrType::MSGR2, Some(ConMode::SECURE))] {
        let addr = daemon.my_addrs().addrs.into_iter().find(|a| a.ty == kind).expect("bound");
        let (msgr, rx) = client(me, provider(name, store.clone(), None), mode);
        let conn = msgr.connect_to(EntityType::OSD, addr);
        let r = echo(&conn, &rx, 1).map_err(|e| format!("{kind:?}: {e}"));
        msgr.shutdown();
        r?;
    }
    Ok(())
}

/// The whole scenario, client.admin's monitor session over msgr2 secure (`mon_v2`) or
/// msgr v1.
fn renewal(test: &str, mon_v2: bool) {
    init_logging();
    let ttl = SERVICE_TTL.to_string();
    let options = [
        ("auth_service_ticket_ttl", ttl.as_str()),
        ("auth_mon_ticket_ttl", "4"),
        ("mon_tick_interval", "1"),
    ];
    let Some(osd) = CephOsd::start_cephx_with(test, &options).expect("cluster") else {
        return;
    };
    let fsid = osd.mon().fsid_bytes();
    let (osd_v1, osd_v2) = (osd_addr(&osd, "v1"), osd_addr(&osd, "v2"));

    // Our daemon: osd.1, its secrets from the monitor, both protocols on one port.
    let caps = [("mon", "allow profile osd"), ("osd", "allow *")];
    let osd1_ring =
        KeyRing::load(osd.mon().add_entity("osd.1", &caps).expect("osd.1")).expect("keyring");
    let osd1_name = parse_entity_name("osd.1").expect("name");
    let osd1_key = osd1_ring.key(&osd1_name).expect("osd.1 key").clone();
    let mut osd1 = CephxClient::new(
        ClientConfig::new(osd1_name.clone(), osd1_key),
        Box::new(rand::rngs::OsRng),
    );
    let osd1_mon = MonClient::new(osd.mon().addr(), MessengerConfig::default()).expect("msgr");
    osd1_mon.authenticate_cephx(&mut osd1).expect("osd.1 authenticates");
    let window0 = fetch_rotating(&osd1_mon, &mut osd1);
    // One daemon keeps the window it fetched until it took a ticket sealed with that
    // window's next secret; the other fetches a fresh window before each check.
    let (lagging, lagging_keys) = daemon(&osd1_name, window0.clone());
    let (fresh, fresh_keys) = daemon(&osd1_name, window0.clone());
    let mut lagging_window = window0.clone();
    let (mut took_next, mut took_previous) = (Vec::new(), Vec::new());

    // client.admin: its monitor session, its tickets in a store.
    let (name, key) = client_admin(&osd.mon().keyring());
    let store = Arc::new(TicketStore::default());
    let p = provider(&name, store.clone(), None);
    // Over msgr2 the monitor session's messenger also dials the OSD over msgr2 (as
    // librados: one messenger), its tickets from the same store.
    let (mon, mut auth, v2_shared) = if mon_v2 {
        let config = MessengerConfig {
            mon_client_mode: Some(ConModes(vec![ConMode::SECURE])),
            ..in_mode(Some(ConMode::SECURE))
        };
        let (msgr, rx) = monitor_client(&name, &key, &store, config);
        let addr = mon_v2_addr(&osd);
        let conn = monitor_session(&msgr, &rx, addr).expect("monitor refused us");
        let auth = store.take_monitor_session(&addr).expect("the handshake's cephx session");
        msgr.set_myname(EntityName::new(EntityType::CLIENT, auth.global_id() as i64));
        (MonSession::V2 { conn, rx: rx.clone() }, auth, Some((msgr, rx)))
    } else {
        let mut auth =
            CephxClient::new(ClientConfig::new(name.clone(), key), Box::new(rand::rngs::OsRng));
        let mon = MonClient::new(osd.mon().addr(), MessengerConfig::default()).expect("msgr");
        mon.authenticate_cephx(&mut auth).expect("client.admin authenticates");
        store.update_from(&auth, Instant::now());
        (MonSession::V1(Box::new(mon)), auth, None)
    };
    let global_id = auth.global_id();
    let me = EntityName::new(EntityType::CLIENT, global_id as i64);
    let first = auth.service_ticket(EntityType::OSD, Instant::now()).cloned().expect("osd ticket");
    let first_expiry = Instant::now() + first.validity;
    let mut tickets: BTreeMap<u64, ReceivedTicket> = BTreeMap::new();
    tickets.insert(first.blob.secret_id, first.clone());

    // (b) Sessions opened with the first ticket.
    let (v1, v1_rx) = client(me, p.clone(), None);
    let (v2, v2_rx) = v2_shared.unwrap_or_else(|| client(me, p.clone(), Some(ConMode::SECURE)));
    let open_v1 = v1.connect_to(EntityType::OSD, osd_v1);
    let open_v2 = v2.connect_to(EntityType::OSD, osd_v2);
    // And sessions to our fresh daemon, which refreshes its secrets under them.
    let daemon_sessions: Vec<(Messenger, Receiver<Seen>, Connection)> =
        [(AddrType::LEGACY, None), (AddrType::MSGR2, Some(ConMode::SECURE))]
            .into_iter()
            .map(|(kind, mode)| {
                let addr =
                    fresh.my_addrs().addrs.into_iter().find(|a| a.ty == kind).expect("bound");
                let (msgr, rx) = client(me, p.clone(), mode);
                let conn = msgr.connect_to(EntityType::OSD, addr);
                echo(&conn, &rx, 1).unwrap_or_else(|e| panic!("{kind:?} to our daemon: {e}"));
                (msgr, rx, conn)
            })
            .collect();
    let mut tid = 1;
    version(&open_v1, &v1_rx, fsid, tid).expect("v1 session with the first ticket");
    version(&open_v2, &v2_rx, fsid, tid).expect("msgr2 secure session with the first ticket");

    // (a) Renew until the first osd ticket expired and its secret left the window.
    let deadline = Instant::now() + RENEWAL_LIMIT;
    let mut renewals = 0;
    loop {
        let now = Instant::now();
        let held = store.ticket(EntityType::OSD).map(|(_, t)| t.blob.secret_id).unwrap_or(0);
        if now > first_expiry + Duration::from_secs(1)
            && held >= first.blob.secret_id + 3
            && !took_next.is_empty()
            && !took_previous.is_empty()
        {
            break;
        }
        assert!(
            now < deadline,
            "not renewed past the first ticket within {RENEWAL_LIMIT:?}: held {held}, first {}",
            first.blob.secret_id
        );
        let at =
            auth.poll_timeout().expect("a renewal is scheduled").min(now + Duration::from_secs(1));
        // Wait for the renewal time on the OSD sessions' channel: nothing may happen there.
        match v1_rx.recv_deadline(at) {
            Ok(Seen::Reset(c) | Seen::RemoteReset(c)) if c == open_v1 => panic!("v1 session reset"),
            _ => {}
        }
        // (c) Previous: the fresh daemon's window may have rotated past the secret of
        // the ticket we hold, not yet renewed.
        let window = fetch_rotating(&osd1_mon, &mut osd1);
        fresh_keys.set_rotating(window.clone());
        if let Some((_, held)) = store.ticket(EntityType::OSD) {
            let oldest = window.secrets.keys().next().copied();
            if Some(held.blob.secret_id) == oldest && !took_previous.contains(&held.blob.secret_id)
            {
                daemon_takes(&fresh, &name, me, global_id, &held).unwrap_or_else(|e| {
                    panic!("ticket sealed with the previous secret {}: {e}", held.blob.secret_id)
                });
                took_previous.push(held.blob.secret_id);
            }
        }
        auth.handle_timeout(Instant::now()).expect("no request timed out");
        let events = mon.drive(&mut auth);
        renewals += events.iter().filter(|e| **e == ClientEvent::AuthTicketRenewed).count();
        store.update_from(&auth, Instant::now());
        if let Some(t) = auth.service_ticket(EntityType::OSD, Instant::now()).cloned() {
            tickets.entry(t.blob.secret_id).or_insert_with(|| t.clone());
            // (c) Next: a fresh ticket sealed with the lagging daemon's next secret.
            if t.blob.secret_id == lagging_window.max_ver {
                daemon_takes(&lagging, &name, me, global_id, &t).unwrap_or_else(|e| {
                    panic!("ticket sealed with the next secret {}: {e}", t.blob.secret_id)
                });
                took_next.push(t.blob.secret_id);
                lagging_window = window.clone();
                lagging_keys.set_rotating(window.clone());
            }
        }
        // (b) The open sessions keep answering.
        tid += 1;
        version(&open_v1, &v1_rx, fsid, tid).unwrap_or_else(|e| panic!("open v1 session: {e}"));
        version(&open_v2, &v2_rx, fsid, tid).unwrap_or_else(|e| panic!("open msgr2 session: {e}"));
        for (_, rx, conn) in &daemon_sessions {
            echo(conn, rx, tid).unwrap_or_else(|e| panic!("open session to our daemon: {e}"));
        }
    }
    assert!(renewals >= 1, "the auth ticket was renewed");
    eprintln!("osd tickets sealed with secret ids {:?}", tickets.keys().collect::<Vec<_>>());

    // (a) A new connection after the first ticket's expiry, from the renewed ticket.
    let (n1, n1_rx) = client(me, p.clone(), None);
    let (n2, n2_rx) = client(me, p.clone(), Some(ConMode::SECURE));
    let new_v1 = n1.connect_to(EntityType::OSD, osd_v1);
    let new_v2 = n2.connect_to(EntityType::OSD, osd_v2);
    version(&new_v1, &n1_rx, fsid, 1).expect("new v1 connection after expiry");
    version(&new_v2, &n2_rx, fsid, 1).expect("new msgr2 secure connection after expiry");
    // (b) The first sessions are still the same, unreset.
    tid += 1;
    version(&open_v1, &v1_rx, fsid, tid).expect("first v1 session after expiry");
    version(&open_v2, &v2_rx, fsid, tid).expect("first msgr2 session after expiry");
    for (m, rx, c) in [(&v1, &v1_rx, &open_v1), (&v2, &v2_rx, &open_v2)] {
        assert!(
            !rx.try_iter()
                .any(|s| matches!(s, Seen::Reset(ref x) | Seen::RemoteReset(ref x) if x == c)),
            "{:?} was reset",
            m.my_addr()
        );
    }

    eprintln!("taken: next {took_next:?}, previous {took_previous:?}");
    assert!(!took_next.is_empty(), "no ticket sealed with a lagging window's next secret seen");
    assert!(
        !took_previous.is_empty(),
        "no ticket sealed with a fresh window's previous secret seen"
    );

    for (m, _, _) in &daemon_sessions {
        m.shutdown();
    }
    for m in [&v1, &v2, &n1, &n2, &lagging, &fresh] {
        m.shutdown();
    }
    if let MonSession::V1(mon) = &mon {
        mon.messenger().shutdown();
    }
    osd1_mon.messenger().shutdown();
}

#[test]
fn tickets_renew_across_expiry_with_a_msgr1_monitor_session() {
    renewal("ticket_renewal_mon_v1", false);
}

#[test]
fn tickets_renew_across_expiry_with_a_msgr2_secure_monitor_session() {
    renewal("ticket_renewal_mon_v2", true);
}

/// A daemon refreshes its rotating secrets as Ceph's `_check_auth_rotating` does, by
/// [`RotatingSecrets::refresh_due`] with Ceph's tolerance (`min(30 s, ttl / 4)`),
/// checked four times a second against a real monitor whose secrets roll every 4 s:
/// it asks again once the monitor rotated (it rotates when the current secret expires,
/// `KeyServer::_rotate_secret`), and never while the current secret is still valid,
/// when the monitor can only answer with the window it already holds. Before, the
/// check was due from `margin` before the current secret's expiry (documented with the
/// ticket ttl as margin: due at once after every fetch), a GET_ROTATING_KEY on every
/// check answered with the same window.
#[test]
fn a_daemon_asks_for_rotating_secrets_only_once_the_monitor_rotated() {
    init_logging();
    let ttl = SERVICE_TTL_ROTATION.to_string();
    let options = [("auth_service_ticket_ttl", ttl.as_str()), ("mon_tick_interval", "1")];
    let Some(mon) =
        tests::ceph::CephMon::start_cephx("rotating_refresh", &options).expect("start ceph-mon")
    else {
        return;
    };
    let caps = [("mon", "allow profile osd"), ("osd", "allow *")];
    let ring = KeyRing::load(mon.add_entity("osd.0", &caps).expect("osd.0")).expect("keyring");
    let name = parse_entity_name("osd.0").expect("name");
    let key = ring.key(&name).expect("osd.0 key").clone();
    let mut osd = CephxClient::new(ClientConfig::new(name, key), Box::new(rand::rngs::OsRng));
    let client = MonClient::new(mon.addr(), MessengerConfig::default()).expect("messenger");
    client.authenticate_cephx(&mut osd).expect("osd.0 authenticates");
    let mut window = fetch_rotating(&client, &mut osd);
    // Ceph's cutoff: `now - min(30, auth_service_ticket_ttl / 4)`.
    let tolerance =
        Duration::from_secs(SERVICE_TTL_ROTATION).div_f64(4.0).min(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(3 * SERVICE_TTL_ROTATION + 2);
    let (mut rotated, mut unchanged) = (0, Vec::new());
    while Instant::now() < deadline && rotated < 2 {
        // The daemon's tick; the monitor session's channel is where we wait.
        let _ = client.next_event(Duration::from_millis(250));
        let now = wall_now();
        if !window.refresh_due(now, tolerance) {
            continue;
        }
        let current = window.current().map(|(id, k)| (id, k.expiration)).expect("current");
        let fresh = fetch_rotating(&client, &mut osd);
        if fresh.max_ver == window.max_ver {
            unchanged.push((current, now));
        } else {
            rotated += 1;
        }
        window = fresh;
    }
    assert!(rotated >= 2, "refreshed {rotated} times in {}s", 3 * SERVICE_TTL_ROTATION + 2);
    // While the current secret is valid the monitor has nothing new: such fetches are
    // waste. (After its expiry, an unchanged answer only means the monitor's tick has
    // not rotated yet.)
    let early: Vec<_> = unchanged.iter().filter(|((_, exp), at)| at < exp).collect();
    assert!(
        early.is_empty(),
        "{} GET_ROTATING_KEY answered with the window already held, asked while its \
         current secret was still valid ((id, expiration), asked at): {early:?}",
        early.len()
    );
    client.messenger().shutdown();
}
