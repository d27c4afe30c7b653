//! Monitor conversations over our [`Messenger`], for interop tests against real Ceph.
//!
//! - [`MonClient`]: our messenger as a client of a monitor (what Ceph's `MonClient` does
//!   on the wire with auth none): MAuth → MAuthReply → `client.<global_id>`, subscriptions,
//!   commands matched to replies by tid, pings, version queries.
//! - [`MiniMon`]: a dispatcher that plays a minimal monitor (msgr-v1.md section 9.2 item
//!   13) so the real `ceph` CLI can use our messenger as its monitor; it records what the
//!   CLI sent. With [`MiniMon::serve_cephx`] it authenticates with cephx through
//!   `protocol::auth::cephx::KeyServer` and answers only authenticated sessions.
//!
//! Everything waits on channels with timeouts; nothing sleeps.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, SendError,
};
use protocol::auth::cephx::{
    CephxClient, CephxProvider, ClientEvent, KeyServer, RngSource, ServerSession, WallClock,
};
use protocol::auth::{AuthConfig, KeyRing};
use protocol::encoding::UTime;
use protocol::messages::{
    decode_any, AnyMessage, AuthNegotiation, MAuth, MAuthReply, MConfig, MMonCommand,
    MMonCommandAck, MMonGetVersion, MMonGetVersionReply, MMonMap, MMonSubscribe, MMonSubscribeAck,
    MPing, MonMap, MsgType, TypedMessage,
};
use protocol::types::{
    AddrType, AuthEntityName, EntityAddr, EntityAddrVec, EntityName, EntityType, Features,
    AUTH_NONE,
};
use protocol::Message;

/// How long a monitor conversation step may take before a test fails.
pub const MON_WAIT: Duration = Duration::from_secs(20);

/// The replies of the pending commands, by tid.
type Pending = Arc<Mutex<HashMap<u64, Sender<MMonCommandAck>>>>;

/// What a [`MonClient`] received, besides command acks it was waiting for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum MonEvent {
    /// `MAuthReply`.
    AuthReply(MAuthReply),
    /// `MMonMap` (decoded map).
    MonMap(MonMap),
    /// `MConfig`.
    Config(MConfig),
    /// `MMonSubscribeAck`.
    SubscribeAck(MMonSubscribeAck),
    /// `MPing` (a monitor's reply carries its health report).
    Ping(MPing),
    /// `MMonGetVersionReply`.
    Version(MMonGetVersionReply),
    /// An `MMonCommandAck` nobody waited for (its tid and the ack).
    UnmatchedAck(u64, MMonCommandAck),
    /// Any other message (or one that failed to decode), raw.
    Other(Message),
    /// `ms_handle_connect`.
    Connect(Connection),
    /// `ms_handle_reset` (a lossy session to the monitor is gone).
    Reset(Connection),
    /// `ms_handle_remote_reset`.
    RemoteReset(Connection),
    /// `ms_handle_refused`.
    Refused(Connection),
}

struct ClientDispatcher {
    tx: Sender<MonEvent>,
    pending: Pending,
}

impl Dispatcher<Connection> for ClientDispatcher {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        let tid = msg.tid();
        let ev = match decode_any(&msg) {
            Ok(AnyMessage::MonCommandAck(ack)) => {
                let waiter = self.pending.lock().remove(&tid);
                match waiter {
                    Some(w) => {
                        let _ = w.send(ack);
                        return Dispatched::Taken;
                    }
                    None => MonEvent::UnmatchedAck(tid, ack),
                }
            }
            Ok(AnyMessage::AuthReply(m)) => MonEvent::AuthReply(m),
            Ok(AnyMessage::MonMap(m)) => MonEvent::MonMap(m.monmap),
            Ok(AnyMessage::Config(m)) => MonEvent::Config(m),
            Ok(AnyMessage::MonSubscribeAck(m)) => MonEvent::SubscribeAck(m),
            Ok(AnyMessage::Ping(m)) => MonEvent::Ping(m),
            Ok(AnyMessage::MonGetVersionReply(m)) => MonEvent::Version(m),
            _ => MonEvent::Other(msg),
        };
        let _ = self.tx.send(ev);
        Dispatched::Taken
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        let _ = self.tx.send(MonEvent::Connect(conn.clone()));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(MonEvent::Reset(conn.clone()));
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let _ = self.tx.send(MonEvent::RemoteReset(conn.clone()));
    }
    fn ms_handle_refused(&self, conn: &Connection) -> bool {
        let _ = self.tx.send(MonEvent::Refused(conn.clone()));
        true
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} from the monitor within {MON_WAIT:?}"),
    )
}

fn send_failed(e: SendError) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())
}

/// Our messenger as a monitor client: entity `client.-1` until authenticated, then
/// `client.<global_id>`; the `lossy_client` policy for monitors (as librados).
pub struct MonClient {
    msgr: Messenger,
    mon: SocketAddr,
    conn: Mutex<Connection>,
    events: Receiver<MonEvent>,
    pending: Pending,
    next_tid: AtomicU64,
    fsid: Mutex<[u8; 16]>,
}

impl MonClient {
    /// A started client messenger (random nonce, no listener) and a connection being
    /// dialled to the monitor at `mon`.
    pub fn new(mon: SocketAddr, config: MessengerConfig) -> io::Result<MonClient> {
        let nonce = rand::random::<u32>() | 1;
        let msgr =
            Messenger::new(EntityName::new(EntityType::CLIENT, EntityName::NEW), nonce, config)?;
        msgr.set_policy(EntityType::MON, Policy::lossy_client());
        msgr.start()?;
        let (tx, events) = crossbeam_channel::unbounded();
        let pending: Pending = Arc::default();
        msgr.add_dispatcher_head(Arc::new(ClientDispatcher { tx, pending: pending.clone() }))?;
        let conn = msgr.get_connection(EntityType::MON, mon);
        Ok(MonClient {
            msgr,
            mon,
            conn: Mutex::new(conn),
            events,
            pending,
            next_tid: AtomicU64::new(1),
            fsid: Mutex::new([0; 16]),
        })
    }

    /// The messenger (counters, name, shutdown).
    pub fn messenger(&self) -> &Messenger {
        &self.msgr
    }

    /// The current connection to the monitor.
    pub fn connection(&self) -> Connection {
        self.conn.lock().clone()
    }

    /// Dials the monitor again (after a reset): `get_connection` returns a new session
    /// once the old one is closed. Our name goes back to `client.-1` until re-authenticated.
    pub fn reconnect(&self) -> Connection {
        self.msgr.set_myname(EntityName::new(EntityType::CLIENT, EntityName::NEW));
        let conn = self.msgr.get_connection(EntityType::MON, self.mon);
        *self.conn.lock() = conn.clone();
        conn
    }

    /// The cluster fsid, as learned from the last monmap seen by [`MonClient::wait_for`]
    /// (all zero before).
    pub fn fsid(&self) -> [u8; 16] {
        *self.fsid.lock()
    }

    /// Sets the fsid used in commands.
    pub fn set_fsid(&self, fsid: [u8; 16]) {
        *self.fsid.lock() = fsid;
    }

    /// The next event within `timeout`, if any.
    pub fn next_event(&self, timeout: Duration) -> Option<MonEvent> {
        let ev = self.events.recv_timeout(timeout).ok()?;
        if let MonEvent::MonMap(m) = &ev {
            self.set_fsid(m.fsid);
        }
        Some(ev)
    }

    /// Waits (at most [`MON_WAIT`]) for the first event `pick` accepts; events it refuses
    /// are dropped.
    pub fn wait_for<T>(
        &self,
        what: &str,
        mut pick: impl FnMut(MonEvent) -> Option<T>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + MON_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left).ok_or_else(|| timed_out(what))?;
            if let Some(t) = pick(ev) {
                return Ok(t);
            }
        }
    }

    /// Encodes `m` for the connection's features and sends it.
    pub fn send<M: TypedMessage>(&self, m: &M) -> Result<(), SendError> {
        let conn = self.connection();
        conn.send_message(m.to_message(conn.features()))
    }

    /// Auth none (msgr-v1.md 7.3/7.4): MAuth for `client.admin` with methods `[none]` and
    /// monmap epoch 0 → MAuthReply; on success our name becomes `client.<global_id>`.
    /// Returns the reply (the caller checks `result`).
    pub fn authenticate(&self) -> io::Result<MAuthReply> {
        let auth = MAuth::negotiate(&AuthNegotiation::default(), 0);
        self.send(&auth).map_err(send_failed)?;
        let reply = self.wait_for("MAuthReply", |ev| match ev {
            MonEvent::AuthReply(r) => Some(r),
            _ => None,
        })?;
        if reply.result == 0 {
            let gid = i64::try_from(reply.global_id).unwrap_or(EntityName::NEW);
            self.msgr.set_myname(EntityName::new(EntityType::CLIENT, gid));
        }
        Ok(reply)
    }

    /// cephx with the monitor (cephx.md 4): starts `auth` on the current connection and
    /// drives it until it has nothing more to ask; on success our name becomes
    /// `client.<global_id>`. Returns the events `auth` produced. A monitor error or a
    /// silent monitor is an error within [`MON_WAIT`] per round trip.
    pub fn authenticate_cephx(&self, auth: &mut CephxClient) -> io::Result<Vec<ClientEvent>> {
        auth.start(Instant::now());
        self.drive_cephx(auth)
    }

    /// Sends what `auth` asks for and feeds it the replies, until it is idle (renewals,
    /// service tickets, rotating secrets on an authenticated session).
    pub fn drive_cephx(&self, auth: &mut CephxClient) -> io::Result<Vec<ClientEvent>> {
        let mut events = Vec::new();
        // Bounded: a handful of round trips is all cephx ever needs in one go.
        for _ in 0..8 {
            let Some(req) = auth.poll_request(Instant::now()) else {
                events.extend(std::iter::from_fn(|| auth.poll_event()));
                return Ok(events);
            };
            self.send(&req).map_err(send_failed)?;
            let reply = self.wait_for("MAuthReply", |ev| match ev {
                MonEvent::AuthReply(r) => Some(r),
                _ => None,
            })?;
            auth.handle_reply(Instant::now(), &reply)
                .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
            for ev in std::iter::from_fn(|| auth.poll_event()) {
                if let ClientEvent::Authenticated { global_id, .. } = ev {
                    let gid = i64::try_from(global_id).unwrap_or(EntityName::NEW);
                    self.msgr.set_myname(EntityName::new(EntityType::CLIENT, gid));
                }
                events.push(ev);
            }
        }
        Err(io::Error::other("cephx did not settle within 8 round trips"))
    }

    /// Subscribes to `what` from epoch `start` with `flags`.
    pub fn subscribe(&self, items: &[(&str, u64, u8)]) -> Result<(), SendError> {
        let mut sub = MMonSubscribe { hostname: "asyncmsgr".into(), ..MMonSubscribe::default() };
        for (what, start, flags) in items {
            sub.want(what, *start, *flags);
        }
        self.send(&sub)
    }

    /// Subscribes to the monmap and waits for it (learning the fsid).
    pub fn fetch_monmap(&self) -> io::Result<MonMap> {
        self.subscribe(&[("monmap", 0, 0)]).map_err(send_failed)?;
        self.wait_for("MMonMap", |ev| match ev {
            MonEvent::MonMap(m) => Some(m),
            _ => None,
        })
    }

    /// Sends a command (one JSON string) with a fresh tid; the ack arrives on the
    /// returned channel, whatever order acks come in.
    pub fn send_command(&self, json: &str) -> Result<(u64, Receiver<MMonCommandAck>), SendError> {
        let tid = self.next_tid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending.lock().insert(tid, tx);
        let cmd =
            MMonCommand { fsid: self.fsid(), cmd: vec![json.to_owned()], ..MMonCommand::default() };
        let conn = self.connection();
        let mut msg = cmd.to_message(conn.features());
        msg.set_tid(tid);
        if let Err(e) = conn.send_message(msg) {
            self.pending.lock().remove(&tid);
            return Err(e);
        }
        Ok((tid, rx))
    }

    /// Sends a command and waits for its ack.
    pub fn command(&self, json: &str) -> io::Result<MMonCommandAck> {
        let (_, rx) = self.send_command(json).map_err(send_failed)?;
        rx.recv_timeout(MON_WAIT).map_err(|_| timed_out("MMonCommandAck"))
    }

    /// Commands sent and not answered yet.
    pub fn pending_commands(&self) -> usize {
        self.pending.lock().len()
    }

    /// Sends an `MPing` and returns the monitor's health report (JSON text).
    pub fn ping(&self) -> io::Result<String> {
        self.send(&MPing::new()).map_err(send_failed)?;
        let ping = self.wait_for("MPing reply", |ev| match ev {
            MonEvent::Ping(p) => Some(p),
            _ => None,
        })?;
        ping.monitor_report()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty ping reply"))
    }

    /// `MMonGetVersion` for `what` (e.g. `osdmap`) with `handle`, and its reply.
    pub fn get_version(&self, what: &str, handle: u64) -> io::Result<MMonGetVersionReply> {
        self.send(&MMonGetVersion { handle, what: what.into() }).map_err(send_failed)?;
        self.wait_for("MMonGetVersionReply", |ev| match ev {
            MonEvent::Version(v) if v.handle == handle => Some(v),
            _ => None,
        })
    }
}

/// What a [`MiniMon`] received: the message decoded, with its connection, source and tid.
#[derive(Debug)]
pub struct Received {
    /// The connection it came on.
    pub conn: Connection,
    /// The header `src`.
    pub src: Option<EntityName>,
    /// The header tid.
    pub tid: u64,
    /// Whether a keepalive had arrived on this connection before this message.
    pub keepalive_before: bool,
    /// The decoded message (raw if its type is not typed).
    pub msg: AnyMessage,
}

/// A command answer: `r`, `rs` and the output (data segment).
pub type CommandAnswer = (i32, String, Bytes);

/// Answers a command given as its JSON object.
pub type CommandHandler = Box<dyn Fn(&serde_json::Value) -> CommandAnswer + Send + Sync>;

/// A dispatcher playing a minimal monitor `mon.0` at `addr` (auth none): MAuthReply with
/// a fresh global id (and the monmap right after, when the client's epoch is older),
/// MMonMap for `monmap` subscriptions, an empty MConfig for `config`, an
/// MMonSubscribeAck for peers without MON_STATEFUL_SUB, MMonCommandAck from `commands`.
/// Everything it receives is forwarded to a channel.
pub struct MiniMon {
    monmap: MonMap,
    next_global_id: AtomicU64,
    commands: CommandHandler,
    tx: Sender<Received>,
    /// cephx, when served with a keyring; `None` for auth none.
    cephx: Option<Mutex<CephxMon>>,
}

/// The cephx side of a [`MiniMon`]: its key server and one session per connection.
struct CephxMon {
    server: KeyServer,
    /// Auth state by connection id; dropped when the connection resets.
    sessions: HashMap<u64, ServerSession>,
    rng: rand::rngs::StdRng,
}

/// The wall clock as a `utime_t` (tickets carry it).
fn wall_now() -> UTime {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    UTime::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX), d.subsec_nanos())
}

impl MiniMon {
    /// The first global id handed out (Ceph's monitor starts around 4100 as well).
    pub const FIRST_GLOBAL_ID: u64 = 4200;

    /// A mini monitor announcing itself as `mon.a` at `addr` in cluster `fsid`.
    pub fn new(
        fsid: [u8; 16],
        addr: SocketAddr,
        commands: CommandHandler,
    ) -> (Arc<MiniMon>, Receiver<Received>) {
        MiniMon::with_addrs(fsid, EntityAddrVec::single(EntityAddr::legacy(addr, 0)), commands)
    }

    /// A mini monitor announcing itself as `mon.a` at `addrs` in cluster `fsid`.
    pub fn with_addrs(
        fsid: [u8; 16],
        addrs: EntityAddrVec,
        commands: CommandHandler,
    ) -> (Arc<MiniMon>, Receiver<Received>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let monmap = MonMap::single(fsid, 1, "a", addrs);
        let mon = MiniMon {
            monmap,
            next_global_id: AtomicU64::new(Self::FIRST_GLOBAL_ID),
            commands,
            tx,
            cephx: None,
        };
        (Arc::new(mon), rx)
    }

    /// Starts a messenger `mon.0`, nonce 0 (monitors announce nonce 0 and clients check
    /// it against `mon_host`), on a free loopback port, with this dispatcher. Returns the
    /// messenger, its address and what it receives.
    pub fn serve(
        fsid: [u8; 16],
        commands: CommandHandler,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        MiniMon::serve_with(fsid, commands, None, false)
    }

    /// [`MiniMon::serve`] announcing msgr2 and v1 on its one port (`[v2:…, v1:…]` in
    /// its monmap, Ceph's order), so a client that read the monmap dials msgr2. Auth
    /// none: over msgr2 the messenger's AUTH frames authenticate, no MAuth comes.
    pub fn serve_msgr2(
        fsid: [u8; 16],
        commands: CommandHandler,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        MiniMon::serve_with(fsid, commands, None, true)
    }

    /// [`MiniMon::serve_msgr2`] with cephx required in msgr2's AUTH frames: the
    /// messenger's `CephxProvider` answers AUTH_MODE_MON with a [`KeyServer`] for the
    /// entities of `keyring` (challenge, proof, tickets, a connection secret), in the
    /// mode Ceph's `ms_mon_service_mode` default ("secure crc") and the client's
    /// preference pick. No MAuth comes; the dispatcher sees authenticated sessions only.
    pub fn serve_msgr2_cephx(
        fsid: [u8; 16],
        commands: CommandHandler,
        keyring: KeyRing,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let server = KeyServer::new(keyring, AuthConfig::ceph_defaults(), wall_now(), &mut rng);
        let clock = WallClock::anchored(Instant::now(), wall_now());
        let rng: RngSource = Arc::new(|| Box::new(rand::rngs::OsRng) as _);
        let provider = CephxProvider::new(
            AuthEntityName::new(EntityType::MON, "a"),
            AuthConfig::ceph_defaults(),
            clock,
            rng,
        )
        .with_key_server(Arc::new(server));
        let config = MessengerConfig::default().with_auth_provider(Arc::new(provider));
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        MiniMon::serve_config(fsid, commands, None, true, config, lo)
    }

    /// [`MiniMon::serve`] with cephx required (Ceph's defaults, `cephx_*` as in
    /// 16.2.15) for the entities of `keyring`: MAuth is answered by a
    /// [`KeyServer`], and nothing else is answered before the session authenticated.
    pub fn serve_cephx(
        fsid: [u8; 16],
        commands: CommandHandler,
        keyring: KeyRing,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        MiniMon::serve_with(fsid, commands, Some(keyring), false)
    }

    fn serve_with(
        fsid: [u8; 16],
        commands: CommandHandler,
        keyring: Option<KeyRing>,
        msgr2: bool,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        MiniMon::serve_config(fsid, commands, keyring, msgr2, MessengerConfig::default(), lo)
    }

    /// [`MiniMon::serve`] (`msgr2`: [`MiniMon::serve_msgr2`]) with the messenger bound to
    /// `bind` (a wildcard, say); the monmap names `127.0.0.1` and the bound port when the
    /// bound IP is blank. Returns the messenger, that address and what it receives.
    pub fn serve_bound(
        fsid: [u8; 16],
        commands: CommandHandler,
        msgr2: bool,
        bind: SocketAddr,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        MiniMon::serve_config(fsid, commands, None, msgr2, MessengerConfig::default(), bind)
    }

    fn serve_config(
        fsid: [u8; 16],
        commands: CommandHandler,
        keyring: Option<KeyRing>,
        msgr2: bool,
        config: MessengerConfig,
        bind: SocketAddr,
    ) -> io::Result<(Messenger, SocketAddr, Receiver<Received>)> {
        let msgr = Messenger::new(EntityName::new(EntityType::MON, 0), 0, config)?;
        msgr.set_default_policy(Policy::stateless_server());
        let mut addr = msgr.bind(bind)?;
        if addr.ip().is_unspecified() {
            addr = SocketAddr::from(([127, 0, 0, 1], addr.port()));
        }
        msgr.start()?;
        let v1 = EntityAddr::legacy(addr, 0);
        let addrs = if msgr2 {
            EntityAddrVec { addrs: vec![EntityAddr { ty: AddrType::MSGR2, ..v1 }, v1] }
        } else {
            EntityAddrVec::single(v1)
        };
        let (mon, rx) = MiniMon::with_addrs(fsid, addrs, commands);
        let mut mon = Arc::try_unwrap(mon).map_err(|_| io::Error::other("MiniMon shared"))?;
        if let Some(ring) = keyring {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
            let server = KeyServer::new(ring, AuthConfig::ceph_defaults(), wall_now(), &mut rng);
            mon.cephx = Some(Mutex::new(CephxMon { server, sessions: HashMap::new(), rng }));
        }
        msgr.add_dispatcher_head(Arc::new(mon))?;
        Ok((msgr, addr, rx))
    }

    /// cephx: answers `auth` on `conn`'s session; true when this reply completed the
    /// session's authentication (the monitor then sends its monmap).
    fn answer_cephx(&self, cx: &Mutex<CephxMon>, conn: &Connection, auth: &MAuth) -> bool {
        let mut guard = cx.lock();
        let CephxMon { server, sessions, rng } = &mut *guard;
        let now = wall_now();
        server.rotate(now, rng);
        let session = sessions.entry(conn.id()).or_default();
        let was_authenticated = session.authenticated().is_some();
        let reply = server.handle_request(session, auth, conn.features(), now, rng, &mut || {
            self.next_global_id.fetch_add(1, Ordering::Relaxed)
        });
        let completed = !was_authenticated && session.authenticated().is_some();
        drop(guard);
        self.reply(conn, reply.to_message(conn.features()));
        completed
    }

    /// Whether `conn` may be answered: always with auth none; once authenticated with
    /// cephx (a real monitor ignores an unauthenticated session's requests).
    fn is_authenticated(&self, conn: &Connection) -> bool {
        let Some(cx) = &self.cephx else { return true };
        cx.lock().sessions.get(&conn.id()).is_some_and(|s| s.authenticated().is_some())
    }

    fn reply(&self, conn: &Connection, msg: Message) {
        // A send to a connection the client already closed is moot.
        let _ = conn.send_message(msg);
    }

    fn send_monmap(&self, conn: &Connection) {
        self.reply(conn, MMonMap { monmap: self.monmap.clone() }.to_message(conn.features()));
    }

    fn answer(&self, conn: &Connection, tid: u64, any: &AnyMessage) {
        let features = conn.features();
        match any {
            AnyMessage::Auth(auth) if self.cephx.is_some() => {
                let completed =
                    self.cephx.as_ref().is_some_and(|cx| self.answer_cephx(cx, conn, auth));
                if completed && auth.monmap_epoch < self.monmap.epoch {
                    self.send_monmap(conn);
                }
            }
            _ if !self.is_authenticated(conn) => {}
            AnyMessage::Auth(auth) => {
                let ok = auth
                    .negotiation()
                    .and_then(|n| n.ok())
                    .is_some_and(|n| n.methods.contains(&AUTH_NONE));
                let reply = if ok {
                    MAuthReply {
                        protocol: AUTH_NONE,
                        result: 0,
                        global_id: self.next_global_id.fetch_add(1, Ordering::Relaxed),
                        ..MAuthReply::default()
                    }
                } else {
                    MAuthReply { result: -95, ..MAuthReply::default() }
                };
                self.reply(conn, reply.to_message(features));
                if ok && auth.monmap_epoch < self.monmap.epoch {
                    self.send_monmap(conn);
                }
            }
            AnyMessage::MonSubscribe(sub) => {
                for (what, item) in &sub.what {
                    let current = u64::from(self.monmap.epoch);
                    match what.as_str() {
                        "monmap" if item.start <= current => self.send_monmap(conn),
                        "config" => self.reply(conn, MConfig::default().to_message(features)),
                        // osdmap, mgrmap…: a real monitor sends maps we cannot build; the
                        // CLI gets by without them for monitor commands.
                        _ => {}
                    }
                }
                if !features.contains(Features::MON_STATEFUL_SUB) {
                    let ack = MMonSubscribeAck { interval: 86400, fsid: self.monmap.fsid };
                    self.reply(conn, ack.to_message(features));
                }
            }
            AnyMessage::MonCommand(cmd) => {
                let json = cmd
                    .cmd
                    .first()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or(serde_json::Value::Null);
                let (r, rs, data) = (self.commands)(&json);
                let ack = MMonCommandAck {
                    r,
                    rs,
                    cmd: cmd.cmd.clone(),
                    data,
                    ..MMonCommandAck::default()
                };
                let mut msg = ack.to_message(features);
                msg.set_tid(tid);
                self.reply(conn, msg);
            }
            // A msgr2 client's first message (it authenticated in the AUTH frames).
            AnyMessage::Raw(m) if m.msg_type() == MsgType::MON_GET_MAP.0 => self.send_monmap(conn),
            AnyMessage::MonGetVersion(q) => {
                let reply = MMonGetVersionReply { handle: q.handle, version: 1, oldest_version: 1 };
                self.reply(conn, reply.to_message(features));
            }
            _ => {}
        }
    }
}

impl Dispatcher<Connection> for MiniMon {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let any = decode_any(&msg).unwrap_or_else(|_| AnyMessage::Raw(msg.clone()));
        // Recorded before it is answered: a peer that exits on our reply has had all its
        // messages recorded by then.
        let _ = self.tx.send(Received {
            conn: conn.clone(),
            src: msg.src(),
            tid: msg.tid(),
            keepalive_before: conn.last_keepalive().is_some(),
            msg: any.clone(),
        });
        self.answer(conn, msg.tid(), &any);
        Dispatched::Taken
    }

    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        if let Some(cx) = &self.cephx {
            cx.lock().sessions.remove(&conn.id());
        }
        // Other dispatchers may want to hear of it too.
        false
    }
}

/// Message and byte counters of a real Ceph daemon's messenger: the
/// `AsyncMessenger::Worker-N` sections of its `perf dump`, summed over workers.
pub fn perf_dump_totals(perf_dump: &str) -> io::Result<messenger::Totals> {
    let v: serde_json::Value = serde_json::from_str(perf_dump)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "perf dump is not an object"))?;
    let mut t = messenger::Totals::default();
    let mut workers = 0;
    for (name, section) in obj {
        if !name.starts_with("AsyncMessenger::Worker-") {
            continue;
        }
        workers += 1;
        let get = |k: &str| section.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        t.recv_messages += get("msgr_recv_messages");
        t.send_messages += get("msgr_send_messages");
        t.recv_bytes += get("msgr_recv_bytes");
        t.send_bytes += get("msgr_send_bytes");
    }
    if workers == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no AsyncMessenger::Worker-N section",
        ));
    }
    Ok(t)
}

/// The difference `after - before` of two counter snapshots.
pub fn totals_delta(before: messenger::Totals, after: messenger::Totals) -> messenger::Totals {
    messenger::Totals {
        recv_messages: after.recv_messages.saturating_sub(before.recv_messages),
        send_messages: after.send_messages.saturating_sub(before.send_messages),
        recv_bytes: after.recv_bytes.saturating_sub(before.recv_bytes),
        send_bytes: after.send_bytes.saturating_sub(before.send_bytes),
    }
}

/// Formats a 16-byte fsid the way Ceph prints it.
pub fn fsid_string(fsid: &[u8; 16]) -> String {
    let h: String = fsid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
