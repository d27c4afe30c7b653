//! A tiny Ceph monitor client over asyncmsgr (msgr v1 or msgr2, auth none or cephx).
//!
//! ```text
//! cargo run --release --example mon_client -- v1:127.0.0.1:6789 status
//! cargo run --release --example mon_client -- --keyring /etc/ceph/ceph.client.admin.keyring \
//!     --name client.admin v1:127.0.0.1:6789 status
//! cargo run --release --example mon_client -- --keyring /etc/ceph/ceph.client.admin.keyring \
//!     --name client.admin --mode secure v2:127.0.0.1:3300 status
//! cargo run --release --example mon_client -- v1:127.0.0.1:6789 mon dump
//! cargo run --release --example mon_client -- v1:127.0.0.1:6789 '{"prefix": "health"}'
//! cargo run --release --example mon_client -- v1:127.0.0.1:6789 --watch
//! ```
//!
//! A command's JSON output goes to stdout, the monitor's status text to stderr, and the
//! exit status is 0 when the monitor answered `r = 0`. `--watch` subscribes to the monmap
//! and prints every new epoch until interrupted (Ctrl-C), reconnecting when the monitor
//! goes away and keeping the session alive with keepalives.
//!
//! What it does on the wire is what Ceph's `MonClient` does: connect with the
//! `lossy_client` policy, MAuth for `client.admin` → MAuthReply with a global id (we
//! become `client.<id>`), the monmap (which gives the fsid), then MMonCommand or
//! MMonSubscribe. Without `--keyring` it offers auth none; with it, cephx
//! (`asyncmsgr::auth::cephx`, cephx.md 4): server challenge, proof of the key, auth and
//! service tickets, renewal before they expire while watching, and on reconnect the old
//! ticket proves our global id so the monitor lets us keep it. A wrong key, an unknown
//! entity or missing caps end the program with the monitor's refusal, at once.
//!
//! At a `v2:` address it speaks msgr2 and authenticates as Ceph's MonClient does there:
//! in the handshake's AUTH frames (no MAuth message), through the messenger's cephx
//! provider (`CephxProvider::with_monitor_key`), each connection anew. While watching it
//! then renews the tickets as at a `v1:` address, with MAuth messages on that session:
//! it takes the cephx session the handshake established from the provider's store
//! (`TicketStore::take_monitor_session`; Ceph's MonClient takes the handshake's handler
//! into itself) and hands each renewal back to it (`TicketStore::update_from`), so the
//! provider's later connections present the renewed tickets. `--mode secure`,
//! `--mode crc` or `--mode "secure crc"` is the messenger's `ms_mon_client_mode`
//! (default Ceph's "secure crc"); the mode the monitor picked is printed on stderr. Auth
//! none allows crc mode only. The first message is MMonGetMap, as a Pacific client's.
#![allow(clippy::print_stdout)] // An example's job is to print.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncmsgr::auth::cephx::{
    CephxClient, CephxProvider, ClientConfig, ClientEvent, RngSource, TicketStore, WallClock,
};
use asyncmsgr::auth::{parse_entity_name, AuthConfig, ConModes, KeyRing};
use asyncmsgr::messages::{
    decode_any, AnyMessage, AuthNegotiation, MAuth, MAuthReply, MMonCommand, MMonSubscribe, MonMap,
    TypedMessage,
};
use asyncmsgr::types::AddrType;
use asyncmsgr::{
    Connection, Dispatched, Dispatcher, EntityAddr, EntityName, EntityType, Message, Messenger,
    MessengerConfig, Policy,
};
use crossbeam_channel::{Receiver, Sender};

/// How long to wait for each answer of the monitor.
const WAIT: Duration = Duration::from_secs(15);
/// Keepalive period while watching (Ceph's `mon_client_ping_interval`): the monitor
/// closes sessions silent for `mon_session_timeout` (300 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);

enum Event {
    Message(Box<AnyMessage>, u64),
    Reset,
}

struct Forward(Sender<Event>);

impl Dispatcher<Connection> for Forward {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        let any = decode_any(&msg).unwrap_or(AnyMessage::Raw(msg.clone()));
        let _ = self.0.send(Event::Message(Box::new(any), msg.tid()));
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, _conn: &Connection) -> bool {
        let _ = self.0.send(Event::Reset);
        true
    }
    fn ms_handle_refused(&self, _conn: &Connection) -> bool {
        let _ = self.0.send(Event::Reset);
        true
    }
}

struct Client {
    msgr: Messenger,
    mon: SocketAddr,
    /// msgr2 (a `v2:` address): authentication happens in the handshake.
    v2: bool,
    rx: Receiver<Event>,
    /// cephx state: over msgr v1 ours from the start (kept across reconnects: its
    /// ticket reclaims our global id); over msgr2 the current session's, taken from
    /// `monitor_store` after its handshake. `None` for auth none.
    cephx: Option<CephxClient>,
    /// msgr2 with cephx: the provider's store, where each monitor session's cephx state
    /// waits after its handshake and where renewed tickets go for its later
    /// connections.
    monitor_store: Option<Arc<TicketStore>>,
}

/// `--keyring FILE --name TYPE.ID`: that entity's name and key.
fn load_key(
    keyring: &str,
    name: &str,
) -> Result<(asyncmsgr::types::AuthEntityName, asyncmsgr::auth::CryptoKey), String> {
    let entity = parse_entity_name(name)
        .ok_or_else(|| format!("--name {name:?} is not an entity name (e.g. client.admin)"))?;
    let ring = KeyRing::load(keyring).map_err(|e| e.to_string())?;
    let key = ring.key(&entity).map_err(|e| e.to_string())?.clone();
    Ok((entity, key))
}

/// The cephx client of msgr v1 (MAuth messages) for `--keyring` / `--name`.
fn cephx_client(keyring: &str, name: &str) -> Result<CephxClient, String> {
    let (entity, key) = load_key(keyring, name)?;
    let mut config = ClientConfig::new(entity, key);
    config.request_timeout = WAIT;
    Ok(CephxClient::new(config, Box::new(rand::rngs::OsRng)))
}

/// The messenger's cephx provider for msgr2 (authentication in the AUTH frames) and its
/// store of tickets and monitor sessions.
fn cephx_provider(
    keyring: &str,
    name: &str,
) -> Result<(Arc<CephxProvider>, Arc<TicketStore>), String> {
    let (entity, key) = load_key(keyring, name)?;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let wall = asyncmsgr::protocol::encoding::UTime::new(
        u32::try_from(wall.as_secs()).unwrap_or(u32::MAX),
        wall.subsec_nanos(),
    );
    let clock = WallClock::anchored(Instant::now(), wall);
    let rng: RngSource = Arc::new(|| Box::new(rand::rngs::OsRng) as _);
    let store = Arc::new(TicketStore::default());
    let provider = CephxProvider::new(entity, AuthConfig::ceph_defaults(), clock, rng)
        .with_monitor_key(key, store.clone());
    Ok((Arc::new(provider), store))
}

impl Client {
    fn new(
        mon: SocketAddr,
        v2: bool,
        cephx: Option<CephxClient>,
        monitor_store: Option<Arc<TicketStore>>,
        config: MessengerConfig,
    ) -> Result<Client, String> {
        let nonce = rand::random::<u32>() | 1;
        let msgr =
            Messenger::new(EntityName::new(EntityType::CLIENT, EntityName::NEW), nonce, config)
                .map_err(|e| format!("messenger: {e}"))?;
        msgr.set_policy(EntityType::MON, Policy::lossy_client());
        msgr.start().map_err(|e| format!("start: {e}"))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        msgr.add_dispatcher_head(Arc::new(Forward(tx))).map_err(|e| format!("dispatcher: {e}"))?;
        Ok(Client { msgr, mon, v2, rx, cephx, monitor_store })
    }

    /// Waits for the first message `pick` accepts; a reset is an error.
    fn wait<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(AnyMessage, u64) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Event::Message(m, tid)) => {
                    if let Some(t) = pick(*m, tid) {
                        return Ok(t);
                    }
                }
                Ok(Event::Reset) => {
                    return Err(format!("connection to {} lost while waiting for {what}", self.mon))
                }
                Err(_) => return Err(format!("no {what} from {} within {WAIT:?}", self.mon)),
            }
        }
    }

    /// Connects and authenticates (auth none, or cephx with a keyring); returns the
    /// connection and the monmap.
    fn session(&mut self) -> Result<(Connection, MonMap), String> {
        self.msgr.set_myname(EntityName::new(EntityType::CLIENT, EntityName::NEW));
        if self.v2 {
            return self.session_v2();
        }
        let conn = self.msgr.get_connection(EntityType::MON, self.mon);
        let mut monmap = None;
        let gid = match self.cephx.take() {
            None => self.auth_none(&conn, &mut monmap),
            Some(mut auth) => {
                let r = self.auth_cephx(&conn, &mut auth, &mut monmap);
                self.cephx = Some(auth);
                r
            }
        }?;
        let gid = i64::try_from(gid).unwrap_or(EntityName::NEW);
        self.msgr.set_myname(EntityName::new(EntityType::CLIENT, gid));
        // Our MAuth said monmap epoch 0, so the monitor sends its map right away.
        let monmap = match monmap {
            Some(m) => m,
            None => self.wait("MMonMap", |m, _| match m {
                AnyMessage::MonMap(m) => Some(m.monmap),
                _ => None,
            })?,
        };
        Ok((conn, monmap))
    }

    /// msgr2: the handshake authenticates (the messenger's provider); the first message
    /// is MMonGetMap, answered with the monmap. Prints the negotiated mode on stderr.
    /// With cephx, takes the session's cephx state to renew its tickets on.
    fn session_v2(&mut self) -> Result<(Connection, MonMap), String> {
        let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(self.mon) };
        let conn = self.msgr.connect_to(EntityType::MON, addr);
        let mut get_map =
            Message::new(asyncmsgr::messages::MsgType::MON_GET_MAP.0, asyncmsgr::Bytes::new());
        get_map.set_version(1);
        get_map.set_compat_version(1);
        conn.send_message(get_map).map_err(|e| e.to_string())?;
        let monmap = self.wait("MMonMap", |m, _| match m {
            AnyMessage::MonMap(m) => Some(m.monmap),
            _ => None,
        })?;
        let mode = conn.con_mode().map_or("unknown", |m| m.name());
        eprintln!("mon_client: msgr2 to {}, {mode} mode", self.mon);
        if let Some(store) = &self.monitor_store {
            // A message came, so the handshake completed; a cephx one left its session
            // there. A monitor that allows only auth none settles on it (as Ceph's
            // MonClient falls back to it): then there is nothing to renew.
            match store.take_monitor_session(&addr) {
                Some(auth) => self.cephx = Some(auth),
                None => {
                    eprintln!("mon_client: no cephx session with {}: nothing to renew", self.mon)
                }
            }
        }
        Ok((conn, monmap))
    }

    /// Waits for an MAuthReply, keeping a monmap that arrives meanwhile.
    fn wait_auth_reply(&self, monmap: &mut Option<MonMap>) -> Result<MAuthReply, String> {
        self.wait("MAuthReply", |m, _| match m {
            AnyMessage::AuthReply(r) => Some(r),
            AnyMessage::MonMap(m) => {
                *monmap = Some(m.monmap);
                None
            }
            _ => None,
        })
    }

    fn auth_none(&self, conn: &Connection, monmap: &mut Option<MonMap>) -> Result<u64, String> {
        let auth = MAuth::negotiate(&AuthNegotiation::default(), 0);
        conn.send_message(auth.to_message(conn.features())).map_err(|e| e.to_string())?;
        let reply = self.wait_auth_reply(monmap)?;
        if reply.result != 0 {
            return Err(format!("authentication refused: {} {}", reply.result, reply.result_msg));
        }
        Ok(reply.global_id)
    }

    /// cephx rounds until the client has nothing more to ask (2 with a real monitor).
    fn auth_cephx(
        &self,
        conn: &Connection,
        auth: &mut CephxClient,
        monmap: &mut Option<MonMap>,
    ) -> Result<u64, String> {
        auth.start(Instant::now());
        self.pump_cephx(conn, auth, monmap)?;
        if !auth.is_authenticated() {
            return Err("cephx did not complete".into());
        }
        Ok(auth.global_id())
    }

    /// Sends what `auth` asks for and feeds it the replies until it is idle; bounded
    /// (cephx never needs more than a few round trips in a row).
    fn pump_cephx(
        &self,
        conn: &Connection,
        auth: &mut CephxClient,
        monmap: &mut Option<MonMap>,
    ) -> Result<(), String> {
        for _ in 0..8 {
            let Some(req) = auth.poll_request(Instant::now()) else {
                for ev in std::iter::from_fn(|| auth.poll_event()) {
                    if let ClientEvent::Authenticated { global_id, reclaimed: true } = ev {
                        eprintln!("mon_client: kept global id {global_id} (reclaimed)");
                    }
                }
                return Ok(());
            };
            conn.send_message(req.to_message(conn.features())).map_err(|e| e.to_string())?;
            let reply = self.wait_auth_reply(monmap)?;
            auth.handle_reply(Instant::now(), &reply).map_err(|e| e.to_string())?;
        }
        Err("cephx did not settle".into())
    }

    fn command(&mut self, json: &str) -> Result<ExitCode, String> {
        let (conn, monmap) = self.session()?;
        let cmd =
            MMonCommand { fsid: monmap.fsid, cmd: vec![json.to_owned()], ..MMonCommand::default() };
        let mut msg = cmd.to_message(conn.features());
        msg.set_tid(1);
        conn.send_message(msg).map_err(|e| e.to_string())?;
        let ack = self.wait("MMonCommandAck", |m, tid| match m {
            AnyMessage::MonCommandAck(a) if tid == 1 => Some(a),
            _ => None,
        })?;
        println!("{}", String::from_utf8_lossy(&ack.data));
        if !ack.rs.is_empty() {
            eprintln!("{}", ack.rs);
        }
        Ok(if ack.r == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }

    fn watch(&mut self) -> Result<ExitCode, String> {
        loop {
            let (conn, monmap) = match self.session() {
                Ok(s) => s,
                Err(e) => {
                    // The monitor is down or restarting: retry at Ceph's reconnect pace
                    // (mon_client_hunt_interval, 3 s) until it answers or we are stopped.
                    eprintln!("mon_client: {e}; retrying");
                    std::thread::sleep(Duration::from_secs(3));
                    continue;
                }
            };
            print_monmap(&monmap);
            let mut epoch = monmap.epoch;
            let mut sub = MMonSubscribe {
                hostname: "asyncmsgr-mon_client".into(),
                ..MMonSubscribe::default()
            };
            sub.want("monmap", u64::from(epoch) + 1, 0);
            conn.send_message(sub.to_message(conn.features())).map_err(|e| e.to_string())?;
            loop {
                // Wake for the next keepalive or the next cephx renewal, whichever is first.
                let renew = self.cephx.as_ref().and_then(CephxClient::poll_timeout);
                let wait = renew.map_or(KEEPALIVE_EVERY, |at| {
                    at.saturating_duration_since(Instant::now()).min(KEEPALIVE_EVERY)
                });
                match self.rx.recv_timeout(wait) {
                    Ok(Event::Message(m, _)) => match *m {
                        AnyMessage::MonMap(m) if m.monmap.epoch != epoch => {
                            epoch = m.monmap.epoch;
                            print_monmap(&m.monmap);
                        }
                        AnyMessage::AuthReply(r) => {
                            if let Some(auth) = self.cephx.as_mut() {
                                auth.handle_reply(Instant::now(), &r).map_err(|e| e.to_string())?;
                                self.send_cephx_requests(&conn)?;
                            }
                        }
                        _ => {}
                    },
                    Err(crossbeam_channel::RecvTimeoutError::Timeout)
                        if renew.is_some_and(|at| Instant::now() >= at) =>
                    {
                        if let Some(auth) = self.cephx.as_mut() {
                            auth.handle_timeout(Instant::now()).map_err(|e| e.to_string())?;
                            self.send_cephx_requests(&conn)?;
                        }
                    }
                    Ok(Event::Reset) => {
                        eprintln!("connection to {} lost; reconnecting", self.mon);
                        break;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => conn.send_keepalive(),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        return Err("messenger stopped".into())
                    }
                }
            }
        }
    }
}

impl Client {
    /// Sends the request `cephx` wants now (renewals while watching); its reply comes
    /// back through the watch loop. Over msgr2, renewed tickets go to the provider.
    fn send_cephx_requests(&mut self, conn: &Connection) -> Result<(), String> {
        let Some(auth) = self.cephx.as_mut() else { return Ok(()) };
        if let Some(req) = auth.poll_request(Instant::now()) {
            conn.send_message(req.to_message(conn.features())).map_err(|e| e.to_string())?;
        }
        let mut renewed = false;
        for ev in std::iter::from_fn(|| auth.poll_event()) {
            match ev {
                ClientEvent::AuthTicketRenewed => eprintln!("mon_client: auth ticket renewed"),
                ClientEvent::ServiceTickets(s) => eprintln!("mon_client: service tickets ({s})"),
                _ => continue,
            }
            renewed = true;
        }
        if let (true, Some(store)) = (renewed, &self.monitor_store) {
            store.update_from(auth, Instant::now());
        }
        Ok(())
    }
}

fn fsid_string(fsid: &[u8; 16]) -> String {
    let h: String = fsid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn print_monmap(m: &MonMap) {
    let mons: Vec<serde_json::Value> = m
        .ranks
        .iter()
        .enumerate()
        .map(|(rank, name)| {
            let addrs: Vec<String> = m
                .addrs_of_rank(rank)
                .map(|v| v.addrs.iter().map(|a| a.to_string()).collect())
                .unwrap_or_default();
            serde_json::json!({"rank": rank, "name": name, "addrs": addrs})
        })
        .collect();
    let j = serde_json::json!({"epoch": m.epoch, "fsid": fsid_string(&m.fsid), "mons": mons});
    println!("{j}");
}

/// `v1:127.0.0.1:6789`, `127.0.0.1:6789`, `v1:127.0.0.1:6789/0` or (msgr2)
/// `v2:127.0.0.1:3300`; returns the socket address and whether it is msgr2.
fn parse_mon_addr(s: &str) -> Result<(SocketAddr, bool), String> {
    let (s, v2) = match s.strip_prefix("v2:") {
        Some(rest) => (rest, true),
        None => (s.strip_prefix("v1:").unwrap_or(s), false),
    };
    let s = s.split('/').next().unwrap_or(s);
    let addr = s.parse().map_err(|e| format!("bad monitor address {s:?}: {e}"))?;
    Ok((addr, v2))
}

fn main() -> ExitCode {
    const USAGE: &str = "usage: mon_client [--keyring FILE [--name TYPE.ID]] \
                         [--mode secure|crc|'secure crc'] <v1:IP:PORT | v2:IP:PORT> \
                         (<command words> | '<json>' | --watch)";
    let mut keyring = None;
    let mut mode = None;
    let mut name = "client.admin".to_owned();
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keyring" | "-k" => keyring = args.next(),
            "--name" | "-n" => name = args.next().unwrap_or_default(),
            "--mode" => mode = args.next(),
            _ => positional.push(a),
        }
    }
    let Some((addr, rest)) = positional.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let run = || -> Result<ExitCode, String> {
        let (mon, v2) = parse_mon_addr(addr)?;
        let mut config = MessengerConfig { workers: 1, ..MessengerConfig::default() };
        if let Some(m) = &mode {
            if !v2 {
                return Err("--mode is for msgr2 (a v2: address)".into());
            }
            config.mon_client_mode = Some(ConModes::parse(m).map_err(|e| format!("--mode: {e}"))?);
        }
        let (cephx, monitor_store) = match (&keyring, v2) {
            (Some(k), false) => (Some(cephx_client(k, &name)?), None),
            (Some(k), true) => {
                let (provider, store) = cephx_provider(k, &name)?;
                config = config.with_auth_provider(provider);
                (None, Some(store))
            }
            (None, _) => (None, None),
        };
        let mut client = Client::new(mon, v2, cephx, monitor_store, config)?;
        let result = match rest {
            [w] if w == "--watch" => client.watch(),
            [] => client.command(r#"{"prefix": "status", "format": "json"}"#),
            [json] if json.trim_start().starts_with('{') => client.command(json),
            words => {
                let cmd = serde_json::json!({"prefix": words.join(" "), "format": "json"});
                client.command(&cmd.to_string())
            }
        };
        client.msgr.shutdown();
        result
    };
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mon_client: {e}");
            ExitCode::FAILURE
        }
    }
}
