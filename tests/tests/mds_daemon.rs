//! An MDS-like daemon on asyncmsgr, the brief's second user: client sessions kept on the
//! connection (`set_priv`), command messages answered on the same connection with the
//! session's state, a tick timer on the messenger's own worker (Ceph's `C_tick_wakeup`),
//! and a session dropped when its connection resets.
//!
//! That first pair runs lossy (a stateless server, lossy clients), which is not how Ceph
//! runs an MDS. The other pairs do: the daemon has `ceph-mds`'s policies
//! (`stateful_server` for clients, src/ceph_mds.cc) and its clients dial it
//! `lossless_client` (src/ceph_fuse.cc), and it handles sessions as MDSDaemon's
//! `ms_handle_accept`, `ms_handle_reset` and `ms_handle_remote_reset` do
//! (src/mds/MDSDaemon.cc), with Server's session open and close (src/mds/Server.cc).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use event_center::{Context, TimerTarget};
use messenger::{
    ConnState, Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy,
    ProtocolVersion,
};
use parking_lot::Mutex;
use protocol::messages::{MCommand, MCommandReply, TypedMessage};
use protocol::types::{EntityAddr, EntityName, EntityType, Features};
use protocol::Message;
use tests::chaos::{ChaosConfig, ChaosProxy, CutKind};
use tests::loopback::{addr_for, test_config, wait_until, WAIT};

/// What the daemon keeps per client (Ceph's MDS `Session`, hung on the connection).
struct Session {
    id: u64,
    commands: AtomicU64,
}

struct Mds {
    sessions: Mutex<HashMap<u64, Arc<Session>>>,
    next_session: AtomicU64,
    dropped: Sender<u64>,
}

impl Mds {
    fn session_of(&self, conn: &Connection) -> Option<Arc<Session>> {
        conn.priv_data().and_then(|p| p.downcast::<Session>().ok())
    }
    fn drop_session(&self, conn: &Connection) {
        if let Some(s) = self.session_of(conn) {
            self.sessions.lock().remove(&s.id);
            conn.set_priv(None);
            let _ = self.dropped.send(s.id);
        }
    }
}

impl Dispatcher<Connection> for Mds {
    fn ms_handle_accept(&self, conn: &Connection) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session { id, commands: AtomicU64::new(0) });
        self.sessions.lock().insert(id, session.clone());
        conn.set_priv(Some(session));
    }
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let Ok(cmd) = MCommand::from_message(&msg) else {
            return Dispatched::NotTaken(msg);
        };
        let Some(session) = self.session_of(conn) else {
            return Dispatched::Taken; // no session: a real MDS would refuse it
        };
        let n = session.commands.fetch_add(1, Ordering::Relaxed) + 1;
        let reply = MCommandReply {
            r: 0,
            rs: format!("session {} command {n}: {}", session.id, cmd.cmd.join(" ")),
            data: Bytes::from(format!("{{\"session\": {}, \"commands\": {n}}}", session.id)),
        };
        let mut out = reply.to_message(Features::PACIFIC_ADVERTISED);
        out.set_tid(msg.tid());
        let _ = conn.send_message(out);
        Dispatched::Taken
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        self.drop_session(conn);
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        self.drop_session(conn);
    }
}

/// A client that forwards command replies (tid, text) to a channel.
struct Client(Sender<(u64, String)>);

impl Dispatcher<Connection> for Client {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        match MCommandReply::from_message(&msg) {
            Ok(reply) => {
                let _ = self.0.send((msg.tid(), reply.rs));
                Dispatched::Taken
            }
            Err(_) => Dispatched::NotTaken(msg),
        }
    }
}

/// Arms a repeating tick on the worker running `cx`, until `stop`.
fn arm_tick(cx: &mut Context<'_>, every: Duration, tx: Sender<()>, stop: Arc<AtomicBool>) {
    cx.create_time_event(
        every,
        TimerTarget::Fn(Box::new(move |cx: &mut Context<'_>| {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let _ = tx.send(());
            arm_tick(cx, every, tx, stop);
        })),
    );
}

fn command(
    conn: &Connection,
    replies: &Receiver<(u64, String)>,
    tid: u64,
    words: &[&str],
) -> String {
    let cmd = MCommand {
        fsid: [1; 16],
        cmd: words.iter().map(|w| w.to_string()).collect(),
        data: Bytes::new(),
    };
    let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    msg.set_tid(tid);
    conn.send_message(msg).expect("send");
    let (got_tid, rs) = replies.recv_timeout(WAIT).expect("command reply");
    assert_eq!(got_tid, tid, "reply matched to its command");
    rs
}

fn mds_like_daemon_keeps_sessions_answers_commands_ticks_and_drops_sessions_on_reset_over(
    proto: ProtocolVersion,
) {
    let (dropped_tx, dropped_rx) = crossbeam_channel::unbounded();
    let mds = Arc::new(Mds {
        sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        dropped: dropped_tx,
    });
    let daemon =
        Messenger::new(EntityName::new(EntityType::MDS, 0), 1, test_config(2)).expect("mds");
    daemon.set_default_policy(Policy::stateless_server());
    daemon.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    daemon.start().expect("start");
    daemon.add_dispatcher_head(mds.clone()).expect("dispatcher");

    // The tick runs on the daemon's own worker: no thread of the daemon's.
    let (tick_tx, tick_rx) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_tick = stop.clone();
    daemon
        .pool()
        .handle(0)
        .dispatch_event_external(move |cx: &mut Context<'_>| {
            arm_tick(cx, Duration::from_millis(10), tick_tx, stop_tick)
        })
        .expect("post tick");
    for _ in 0..5 {
        tick_rx.recv_timeout(WAIT).expect("tick");
    }

    let mut clients = Vec::new();
    for i in 1..=2u32 {
        let (tx, rx) = crossbeam_channel::unbounded();
        let m = Messenger::new(
            EntityName::new(EntityType::CLIENT, i64::from(i)),
            100 + i,
            test_config(1),
        )
        .expect("client");
        m.set_default_policy(Policy::lossy_client());
        m.start().expect("start");
        m.add_dispatcher_head(Arc::new(Client(tx))).expect("dispatcher");
        let conn = m.connect_to(EntityType::MDS, addr_for(proto, daemon.my_addr()));
        clients.push((m, conn, rx));
    }
    // Each client's commands are counted in its own session.
    let mut session_ids = Vec::new();
    for (_, conn, rx) in &clients {
        let mut first = String::new();
        for n in 1..=3u64 {
            let rs = command(conn, rx, n, &["session", "ls"]);
            assert!(rs.ends_with(&format!("command {n}: session ls")), "{rs}");
            if n == 1 {
                first = rs;
            }
        }
        session_ids.push(first.split_whitespace().nth(1).expect("session id").to_string());
    }
    assert_ne!(session_ids[0], session_ids[1], "one session per client");
    assert!(clients.iter().all(|(_, conn, _)| conn.protocol() == Some(proto)));
    assert_eq!(mds.sessions.lock().len(), 2);

    // Client 1 goes away: its connection resets on the daemon, which drops its session.
    let (gone, _, _) = clients.remove(0);
    gone.shutdown();
    let dropped = dropped_rx.recv_timeout(WAIT).expect("session dropped on reset");
    assert_eq!(dropped.to_string(), session_ids[0]);
    assert_eq!(mds.sessions.lock().len(), 1);
    // The other session is untouched and keeps counting.
    let (_, conn, rx) = &clients[0];
    assert!(command(conn, rx, 4, &["status"]).ends_with("command 4: status"));
    // The ticks collected so far prove nothing about now: a new one must come.
    let _ = tick_rx.try_iter().count();
    tick_rx.recv_timeout(WAIT).expect("still ticking");

    stop.store(true, Ordering::Relaxed);
    for (m, _, _) in clients {
        m.shutdown();
    }
    daemon.shutdown();
}

#[test]
fn mds_like_daemon_keeps_sessions_answers_commands_ticks_and_drops_sessions_on_reset() {
    mds_like_daemon_keeps_sessions_answers_commands_ticks_and_drops_sessions_on_reset_over(
        ProtocolVersion::V1,
    );
}

#[test]
fn mds_like_daemon_keeps_sessions_answers_commands_ticks_and_drops_sessions_on_reset_over_msgr2() {
    mds_like_daemon_keeps_sessions_answers_commands_ticks_and_drops_sessions_on_reset_over(
        ProtocolVersion::V2,
    );
}

// ---------------------------------------------------------------------------------------
// The daemon as Ceph runs an MDS: its real policies, and client sessions handled as
// MDSDaemon and Server handle them.

/// `ceph-mds`'s policies (src/ceph_mds.cc, `main`): lossy by default and toward
/// monitors, `lossless_peer` toward other MDSs, `stateful_server` toward clients.
fn set_mds_policies(m: &Messenger) {
    m.set_default_policy(Policy::lossy_client());
    m.set_policy(EntityType::MON, Policy::lossy_client());
    m.set_policy(EntityType::MDS, Policy::lossless_peer());
    m.set_policy(EntityType::CLIENT, Policy::stateful_server());
}

/// A CephFS client's policies (src/ceph_fuse.cc, `main`: `Client` in src/client/Client.cc
/// sets none, it uses the messenger it is given): lossy by default (monitors, OSDs),
/// `lossless_client` toward MDSs.
fn set_fs_client_policies(m: &Messenger) {
    m.set_default_policy(Policy::lossy_client());
    m.set_policy(EntityType::MDS, Policy::lossless_client());
}

/// Short reconnect backoffs, as the chaos tests' (Ceph's test suite caps `ms_max_backoff`
/// too): a cut session comes back at once, a handshake the network cut soon after.
fn fs_config() -> MessengerConfig {
    MessengerConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        ..test_config(2)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionState {
    /// New (Ceph's `Session` starts closed, before the client's `REQUEST_OPEN`), or closed.
    Closed,
    Open,
}

/// A client session of the MDS (Ceph's `Session`), hung on its connection with
/// `set_priv`: closed until the client asks to open it, then in the session map under
/// the client's name until it asks to close it.
struct MdsSession {
    id: u64,
    /// Whom it is for (`info.inst.name`); `None` if the peer named nobody.
    client: Option<String>,
    state: Mutex<SessionState>,
    /// Requests the session ran.
    requests: AtomicU64,
    /// The connection it is attached to (`Session::connection`).
    conn: Mutex<Option<Connection>>,
}

/// What the MDS saw, in order.
enum MdsSaw {
    /// `ms_handle_accept`, the session it attached to the connection, and whether that
    /// was an open one found by the client's name (else a new, closed one).
    Accept { conn: Connection, session: u64, found: bool },
    /// `ms_handle_reset`, and the session the connection held.
    Reset { conn: Connection, session: Option<u64> },
    /// `ms_handle_remote_reset`, and the session the connection held.
    RemoteReset { conn: Connection, session: Option<u64> },
}

impl std::fmt::Debug for MdsSaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MdsSaw::Accept { conn, session, found } => {
                write!(f, "accept on {} of session {session} (found: {found})", conn.id())
            }
            MdsSaw::Reset { conn, session } => {
                write!(f, "reset of {} (session {session:?})", conn.id())
            }
            MdsSaw::RemoteReset { conn, session } => {
                write!(f, "remote reset of {} (session {session:?})", conn.id())
            }
        }
    }
}

/// An MDS's client-session handling, after Ceph's (read in ceph/ceph's main branch; the
/// two reset hooks read the same in a Luminous-era copy, so in Pacific between them):
/// * `MDSDaemon::ms_handle_accept`: the open session of the client is looked up by its
///   name in the session map and attached to the connection ("an existing client
///   establishing a new connection"); failing that, a new session, closed until the
///   client opens it, is.
/// * `MDSDaemon::ms_handle_reset` (client peers only): a connection whose session is
///   closed is marked down and loses it; one with no session is marked down; an open
///   session is kept — the session outlives its connection, which its client may
///   reconnect. Returns false.
/// * `MDSDaemon::ms_handle_remote_reset` (client peers only): the same for a closed
///   session, and nothing otherwise.
/// * `Server::handle_client_session`: `session open` on a closed session opens it and
///   puts it in the map; `session close` on an open one closes it: `_session_logged`
///   marks the connection disposable first ("if there is a fault, we will get a reset
///   and clean it up"), answers, and takes the session out of the map. Pacific drops a
///   second open unanswered.
/// * Any other command stands for a client request, run in the session and counted;
///   on a session not open it is dropped unanswered (`Server::handle_client_request`).
///
/// The key: Ceph finds a session by `entity_name_t(peer type, peer global id)`, the name
/// its clients also go by (`client.<global id>`: they name their messenger after the id
/// the monitor gave them). Without a monitor every global id here is 0, so the name the
/// client authenticated as (auth none: the one it claims, `client.<num>`) stands in for
/// it: `Connection::peer_auth`, from the AUTH frames over msgr2 and from the connect's
/// auth-none authorizer over msgr v1 (as Ceph fills `peer_name` and `peer_global_id`).
struct CephMds {
    /// Open sessions by client name (Ceph's `SessionMap`).
    sessionmap: Mutex<HashMap<String, Arc<MdsSession>>>,
    next_session: AtomicU64,
    saw: Sender<MdsSaw>,
}

impl CephMds {
    fn session_of(conn: &Connection) -> Option<Arc<MdsSession>> {
        conn.priv_data().and_then(|p| p.downcast::<MdsSession>().ok())
    }

    /// Whom the peer authenticated as (see [`CephMds`] for why a name).
    fn client_name(&self, conn: &Connection) -> Option<String> {
        conn.peer_auth().map(|a| a.name.to_string())
    }

    fn open_session(&self, name: &str) -> Option<Arc<MdsSession>> {
        self.sessionmap.lock().get(name).cloned()
    }

    /// Runs a command of the session; `None`: dropped, unanswered.
    fn handle(
        &self,
        conn: &Connection,
        session: &Arc<MdsSession>,
        words: &[&str],
    ) -> Option<String> {
        let mut state = session.state.lock();
        match words {
            ["session", "open"] => {
                if *state != SessionState::Closed {
                    return None; // "currently open|opening|stale|killing, dropping this req"
                }
                *state = SessionState::Open;
                let client = session.client.clone()?;
                self.sessionmap.lock().insert(client, session.clone());
                Some(format!("session {} open", session.id))
            }
            ["session", "close"] => {
                if *state != SessionState::Open {
                    return None;
                }
                // Before the answer, "to avoid a possible race".
                conn.mark_disposable();
                *state = SessionState::Closed;
                if let Some(client) = &session.client {
                    self.sessionmap.lock().remove(client);
                }
                Some(format!("session {} closed", session.id))
            }
            _ if *state != SessionState::Open => None,
            _ => {
                let n = session.requests.fetch_add(1, Ordering::Relaxed) + 1;
                Some(format!("session {} command {n}: {}", session.id, words.join(" ")))
            }
        }
    }

    /// `ms_handle_reset` and `ms_handle_remote_reset` alike: a closed session is taken
    /// off its connection, which is marked down. Returns the session it held.
    fn forget_closed(conn: &Connection, mark_down_sessionless: bool) -> Option<u64> {
        let session = Self::session_of(conn);
        match &session {
            Some(s) if *s.state.lock() == SessionState::Closed => {
                conn.mark_down();
                conn.set_priv(None);
            }
            Some(_) => {}
            None if mark_down_sessionless => conn.mark_down(),
            None => {}
        }
        session.map(|s| s.id)
    }
}

impl Dispatcher<Connection> for CephMds {
    fn ms_handle_accept(&self, conn: &Connection) {
        let client = self.client_name(conn);
        let (session, found) = match client.as_deref().and_then(|c| self.open_session(c)) {
            Some(s) => (s, true),
            None => {
                let id = self.next_session.fetch_add(1, Ordering::Relaxed);
                let s = MdsSession {
                    id,
                    client,
                    state: Mutex::new(SessionState::Closed),
                    requests: AtomicU64::new(0),
                    conn: Mutex::new(None),
                };
                (Arc::new(s), false)
            }
        };
        conn.set_priv(Some(session.clone()));
        *session.conn.lock() = Some(conn.clone());
        let _ = self.saw.send(MdsSaw::Accept { conn: conn.clone(), session: session.id, found });
    }

    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let Ok(cmd) = MCommand::from_message(&msg) else {
            return Dispatched::NotTaken(msg);
        };
        let Some(session) = Self::session_of(conn) else {
            return Dispatched::Taken; // "ignoring sessionless msg"
        };
        let words: Vec<&str> = cmd.cmd.iter().map(String::as_str).collect();
        if let Some(rs) = self.handle(conn, &session, &words) {
            let reply = MCommandReply { r: 0, rs, data: Bytes::new() };
            let mut out = reply.to_message(Features::PACIFIC_ADVERTISED);
            out.set_tid(msg.tid());
            let _ = conn.send_message(out);
        }
        Dispatched::Taken
    }

    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        if conn.peer_type() != Some(EntityType::CLIENT) {
            return false;
        }
        let session = Self::forget_closed(conn, true);
        let _ = self.saw.send(MdsSaw::Reset { conn: conn.clone(), session });
        false
    }

    fn ms_handle_remote_reset(&self, conn: &Connection) {
        if conn.peer_type() != Some(EntityType::CLIENT) {
            return;
        }
        let session = Self::forget_closed(conn, false);
        let _ = self.saw.send(MdsSaw::RemoteReset { conn: conn.clone(), session });
    }
}

/// A started MDS with Ceph's policies and session handling; its bound address.
fn start_ceph_mds() -> (Messenger, SocketAddr, Arc<CephMds>, Receiver<MdsSaw>) {
    let (saw_tx, saw) = crossbeam_channel::unbounded();
    let mds = Arc::new(CephMds {
        sessionmap: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(1),
        saw: saw_tx,
    });
    let daemon = Messenger::new(EntityName::new(EntityType::MDS, 0), 1, fs_config()).expect("mds");
    set_mds_policies(&daemon);
    let bound = daemon.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    daemon.start().expect("start");
    daemon.add_dispatcher_head(mds.clone()).expect("dispatcher");
    (daemon, bound, mds, saw)
}

/// What a CephFS client saw.
#[derive(Debug)]
enum ClientSaw {
    Reply { tid: u64, r: i32, rs: String },
    Connect,
    Reset,
    RemoteReset,
}

struct FsClient(Sender<ClientSaw>);

impl Dispatcher<Connection> for FsClient {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        match MCommandReply::from_message(&msg) {
            Ok(reply) => {
                let _ = self.0.send(ClientSaw::Reply { tid: msg.tid(), r: reply.r, rs: reply.rs });
                Dispatched::Taken
            }
            Err(_) => Dispatched::NotTaken(msg),
        }
    }
    fn ms_handle_connect(&self, _conn: &Connection) {
        let _ = self.0.send(ClientSaw::Connect);
    }
    fn ms_handle_reset(&self, _conn: &Connection) -> bool {
        let _ = self.0.send(ClientSaw::Reset);
        true
    }
    fn ms_handle_remote_reset(&self, _conn: &Connection) {
        let _ = self.0.send(ClientSaw::RemoteReset);
    }
}

/// `client.1`, the incarnation with `nonce`, started with a CephFS client's policies;
/// what it sees, and its connection to the MDS at `mds`.
fn start_fs_client(nonce: u32, mds: EntityAddr) -> (Messenger, Receiver<ClientSaw>, Connection) {
    let m =
        Messenger::new(EntityName::new(EntityType::CLIENT, 1), nonce, fs_config()).expect("client");
    set_fs_client_policies(&m);
    m.start().expect("start");
    let (tx, rx) = crossbeam_channel::unbounded();
    m.add_dispatcher_head(Arc::new(FsClient(tx))).expect("dispatcher");
    let conn = m.connect_to(EntityType::MDS, mds);
    (m, rx, conn)
}

fn send_command(conn: &Connection, tid: u64, words: &[&str]) {
    let cmd = MCommand {
        fsid: [1; 16],
        cmd: words.iter().map(|w| w.to_string()).collect(),
        data: Bytes::new(),
    };
    let mut msg = cmd.to_message(Features::PACIFIC_ADVERTISED);
    msg.set_tid(tid);
    conn.send_message(msg).expect("a lossless connection takes the command");
}

/// The next reply (tid, r, text), counting the `ms_handle_connect`s met on the way. A
/// reset of either kind fails: a lossless client's session with a stateful server has
/// none unless one side loses it.
fn next_reply(rx: &Receiver<ClientSaw>, connects: &mut u64) -> (u64, i32, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(ClientSaw::Reply { tid, r, rs }) => return (tid, r, rs),
            Ok(ClientSaw::Connect) => *connects += 1,
            Ok(seen) => panic!("client: {seen:?} on a lossless session to a stateful server"),
            Err(e) => panic!("client: no reply within {WAIT:?}: {e}"),
        }
    }
}

/// Sends a command and returns the text of its reply, which must be a success for it.
fn ask(conn: &Connection, rx: &Receiver<ClientSaw>, tid: u64, words: &[&str]) -> String {
    send_command(conn, tid, words);
    let (got, r, rs) = next_reply(rx, &mut 0);
    assert_eq!((got, r), (tid, 0), "the reply to command {tid} ({rs})");
    rs
}

/// The id in the reply to `session open`.
fn opened_session(rs: &str) -> u64 {
    let id = rs.strip_prefix("session ").and_then(|r| r.strip_suffix(" open"));
    id.and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("not a session open: {rs}"))
}

/// Opens the client's session; returns its id.
fn open_session(conn: &Connection, rx: &Receiver<ClientSaw>, tid: u64) -> u64 {
    opened_session(&ask(conn, rx, tid, &["session", "open"]))
}

/// Asserts that the client sees nothing more for a short grace period.
fn assert_client_quiet(rx: &Receiver<ClientSaw>, why: &str) {
    let grace = Instant::now() + Duration::from_millis(300);
    if let Ok(seen) = rx.recv_deadline(grace) {
        panic!("client: {seen:?} ({why})");
    }
}

fn next_mds_saw(saw: &Receiver<MdsSaw>) -> MdsSaw {
    saw.recv_timeout(WAIT).expect("an MDS callback within the wait")
}

/// Asserts that the MDS sees nothing more for a short grace period.
fn assert_mds_quiet(saw: &Receiver<MdsSaw>, why: &str) {
    let grace = Instant::now() + Duration::from_millis(300);
    if let Ok(seen) = saw.recv_deadline(grace) {
        panic!("mds: {seen:?} ({why})");
    }
}

/// The MDS's next callback, which must be the accept that made session `id`, new;
/// returns its connection.
fn accept_making(saw: &Receiver<MdsSaw>, id: u64) -> Connection {
    match next_mds_saw(saw) {
        MdsSaw::Accept { conn, session, found: false } if session == id => conn,
        other => panic!("mds: {other:?}, not the accept making session {id}"),
    }
}

/// Waits until the MDS noticed that `conn`'s socket died, and asserts that it keeps the
/// session in standby: a stateful server never dials its client, and reports no reset.
fn assert_standby_after_fault(conn: &Connection) {
    wait_until(|| conn.state() != ConnState::Open, || "the MDS missed the fault".into());
    assert_eq!(conn.state(), ConnState::Standby, "the session waits for its client");
}

/// Ahead of the MDS: when a command whose tid is in `at` comes up for dispatch, has the
/// proxy cut the connection (RST and FIN in turn) and waits until it did, then passes
/// the command on. So every cut lands with that command's reply not yet sent — it must
/// cross the reconnect — and the client's later commands in flight.
struct CutUnder {
    proxy: Arc<ChaosProxy>,
    at: Vec<u64>,
}

impl Dispatcher<Connection> for CutUnder {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        if let Some(i) = self.at.iter().position(|&tid| tid == msg.tid()) {
            let before = self.proxy.stats().cuts;
            self.proxy.cut_now(if i % 2 == 0 { CutKind::Reset } else { CutKind::Fin });
            wait_until(|| self.proxy.stats().cuts > before, || "the proxy did not cut".into());
        }
        Dispatched::NotTaken(msg)
    }
}

/// A CephFS client's requests in flight while the network cuts its TCP connection to the
/// MDS (the chaos proxy closes both sockets at once), as a mount over a flaky network
/// lives: the session is open, the client keeps 32 commands in flight, 200 in all, and
/// the connection is cut five times, each while the MDS holds a command it has not
/// answered yet. Every reply arrives once and in order, each command ran once in the
/// one session (its counter reads the command's rank), every reconnect is one
/// `ms_handle_connect` on the client and one `ms_handle_accept` on the MDS, on the same
/// connection, finding the same session; neither side sees a reset of either kind
/// (Ceph's lossless session between a `lossless_client` and a `stateful_server`).
fn mds_session_survives_connection_cuts_under_a_command_stream_over(proto: ProtocolVersion) {
    const COMMANDS: u64 = 200;
    const WINDOW: u64 = 32;
    // The commands the connection is cut under (tid 1 opens the session).
    let cut_at = vec![21, 61, 101, 141, 181];
    let cuts = cut_at.len() as u64;
    let (daemon, bound, mds, saw) = start_ceph_mds();
    let proxy = Arc::new(ChaosProxy::start(bound, ChaosConfig::new(0)).expect("proxy"));
    let cutter = CutUnder { proxy: proxy.clone(), at: cut_at };
    daemon.add_dispatcher_head(Arc::new(cutter)).expect("dispatcher");
    let through_proxy = EntityAddr::legacy(proxy.addr(), daemon.my_addr().nonce);
    let (client, rx, conn) = start_fs_client(101, addr_for(proto, through_proxy));

    let mut connects = 0;
    send_command(&conn, 1, &["session", "open"]);
    let (tid, r, rs) = next_reply(&rx, &mut connects);
    assert_eq!((tid, r), (1, 0), "{rs}");
    let session = opened_session(&rs);

    let (mut sent, mut answered) = (0u64, 0u64);
    while answered < COMMANDS {
        while sent < COMMANDS && sent - answered < WINDOW {
            sent += 1;
            send_command(&conn, 1 + sent, &["ls", &format!("dir{sent}")]);
        }
        let (tid, r, rs) = next_reply(&rx, &mut connects);
        answered += 1;
        assert_eq!(tid, 1 + answered, "client: a reply lost, duplicated or reordered");
        let expected = format!("session {session} command {answered}: ls dir{answered}");
        assert_eq!((r, rs), (0, expected), "each command ran once, in the one session");
    }
    assert_eq!(connects, 1 + cuts, "one connect, then one reconnect per cut");
    assert_client_quiet(&rx, "every reply came once");

    let first_conn = accept_making(&saw, session);
    let first = mds.open_session("client.1").expect("the session is open");
    for cut in 1..=cuts {
        match next_mds_saw(&saw) {
            MdsSaw::Accept { conn, session: id, found: true }
                if conn == first_conn && id == session => {}
            other => panic!("mds: {other:?} after cut {cut}, not a reconnect finding the session"),
        }
    }
    assert_mds_quiet(&saw, "one accept per cut, no reset");
    assert_eq!(proxy.stats().cuts, cuts, "each cut ended a live connection");
    assert_eq!(first.requests.load(Ordering::Relaxed), COMMANDS);
    assert_eq!(mds.sessionmap.lock().len(), 1);
    assert_eq!(conn.protocol(), Some(proto));
    eprintln!(
        "mds stream over {proto:?}: {COMMANDS} commands, {cuts} cuts, {} replies sent for {} \
         (one each: a reply sent again after a cut is not counted again)",
        daemon.totals().send_messages,
        1 + COMMANDS
    );
    client.shutdown();
    daemon.shutdown();
}

#[test]
fn mds_session_survives_connection_cuts_under_a_command_stream() {
    mds_session_survives_connection_cuts_under_a_command_stream_over(ProtocolVersion::V1);
}

#[test]
fn mds_session_survives_connection_cuts_under_a_command_stream_over_msgr2() {
    mds_session_survives_connection_cuts_under_a_command_stream_over(ProtocolVersion::V2);
}

/// A client restarting: a new messenger under the same name with a new nonce, the old
/// one shut down without closing its session. What Ceph's MDS sees, step by step:
/// 1. The old incarnation's connection faults; a stateful server never dials a client,
///    so it waits in standby with its session (ProtocolV1/V2 `fault`: "server, going to
///    standby"): no `ms_handle_reset`, no `ms_handle_remote_reset`.
/// 2. The new incarnation announces another address (the nonce), so nothing of the old
///    is replaced or reset: `ms_handle_accept` on a new connection. There
///    `MDSDaemon::ms_handle_accept` finds the open session by the client's name and
///    attaches it: the new incarnation's requests run in it, counted on. (A Ceph client
///    restarting gets a new global id from the monitor, hence a new name, hence a new
///    session; the same name is the same client to Ceph, and this is what it does.)
/// 3. The client closes the session (`Server::_session_logged` marks the connection
///    disposable) and goes away: the connection, lossy now, faults into
///    `ms_handle_reset`, which marks it down and takes the closed session off it.
/// 4. Another incarnation under the same name: no open session to find, so a new one —
///    the closed one is not brought back.
fn mds_sees_a_client_restart_as_ceph_does_over(proto: ProtocolVersion) {
    let (daemon, _, mds, saw) = start_ceph_mds();
    let addr = addr_for(proto, daemon.my_addr());

    let (old, old_rx, old_conn) = start_fs_client(101, addr);
    let s1 = open_session(&old_conn, &old_rx, 1);
    for tid in 2..=4 {
        assert_eq!(
            ask(&old_conn, &old_rx, tid, &["status"]),
            format!("session {s1} command {}: status", tid - 1)
        );
    }
    let on_old = accept_making(&saw, s1);
    assert_eq!(on_old.peer_addr().map(|a| a.nonce), Some(101));

    // 1. The old incarnation dies with its session open.
    old.shutdown();
    assert_standby_after_fault(&on_old);

    // 2. The new incarnation: the same name, another nonce.
    let (new, new_rx, new_conn) = start_fs_client(102, addr);
    assert_eq!(
        ask(&new_conn, &new_rx, 1, &["status"]),
        format!("session {s1} command 4: status"),
        "the open session found by name and attached to the new connection"
    );
    let on_new = match next_mds_saw(&saw) {
        MdsSaw::Accept { conn, session, found: true } if session == s1 => conn,
        other => panic!("mds: {other:?}, not an accept finding session {s1}"),
    };
    assert_ne!(on_new, on_old, "the new incarnation has a connection of its own");
    assert_eq!(on_new.peer_addr().map(|a| a.nonce), Some(102));
    let session = mds.open_session("client.1").expect("open");
    assert_eq!(session.conn.lock().as_ref(), Some(&on_new), "Session::set_connection");
    assert_eq!(on_old.state(), ConnState::Standby, "the old connection still waits");
    assert!(CephMds::session_of(&on_old).is_some_and(|s| s.id == s1), "and holds the session");

    // 3. The session closed, its client gone: a reset, and the session taken off.
    assert_eq!(ask(&new_conn, &new_rx, 2, &["session", "close"]), format!("session {s1} closed"));
    new.shutdown();
    match next_mds_saw(&saw) {
        MdsSaw::Reset { conn, session: Some(id) } if conn == on_new && id == s1 => {}
        other => panic!("mds: {other:?}, not the disposable connection's reset"),
    }
    assert!(CephMds::session_of(&on_new).is_none(), "the closed session taken off");
    assert_eq!(on_new.state(), ConnState::Closed, "marked down");
    assert!(mds.sessionmap.lock().is_empty());

    // 4. Another incarnation: a new session.
    let (last, last_rx, last_conn) = start_fs_client(103, addr);
    let s2 = open_session(&last_conn, &last_rx, 1);
    assert_ne!(s2, s1, "the closed session is not brought back");
    assert_eq!(
        ask(&last_conn, &last_rx, 2, &["status"]),
        format!("session {s2} command 1: status")
    );
    let on_last = accept_making(&saw, s2);
    assert!(on_last != on_old && on_last != on_new, "a connection of its own");
    assert_mds_quiet(&saw, "no other accept or reset");
    assert_client_quiet(&last_rx, "no reset");
    last.shutdown();
    daemon.shutdown();
}

#[test]
fn mds_sees_a_client_restart_as_ceph_does() {
    mds_sees_a_client_restart_as_ceph_does_over(ProtocolVersion::V1);
}

#[test]
fn mds_sees_a_client_restart_as_ceph_does_over_msgr2() {
    mds_sees_a_client_restart_as_ceph_does_over(ProtocolVersion::V2);
}

/// A client that marks its connection to the MDS down and dials it again from the same
/// messenger (connect_seq 0 over v1, a new client cookie over msgr2): to the MDS, whose
/// stateful-server policy has resetcheck, the peer reset its side of the connection, so
/// `ms_handle_remote_reset` comes (ProtocolV1's "accept peer reset", ProtocolV2's
/// `reset_session`), then `ms_handle_accept`, both on the connection that held the
/// session. `MDSDaemon::ms_handle_remote_reset` leaves an open session alone, and
/// `ms_handle_accept` finds it again: the client's requests go on in it.
fn mds_keeps_an_open_session_through_a_remote_reset_over(proto: ProtocolVersion) {
    let (daemon, _, mds, saw) = start_ceph_mds();
    let addr = addr_for(proto, daemon.my_addr());
    let (client, rx, first) = start_fs_client(101, addr);
    let s1 = open_session(&first, &rx, 1);
    assert_eq!(ask(&first, &rx, 2, &["status"]), format!("session {s1} command 1: status"));
    let on_mds = accept_making(&saw, s1);

    first.mark_down();
    assert_standby_after_fault(&on_mds);
    let second = client.connect_to(EntityType::MDS, addr);
    assert_ne!(second, first);
    assert_eq!(ask(&second, &rx, 3, &["status"]), format!("session {s1} command 2: status"));
    match next_mds_saw(&saw) {
        MdsSaw::RemoteReset { conn, session: Some(id) } if conn == on_mds && id == s1 => {}
        other => panic!("mds: {other:?}, not the remote reset of the session's connection"),
    }
    match next_mds_saw(&saw) {
        MdsSaw::Accept { conn, session, found: true } if conn == on_mds && session == s1 => {}
        other => panic!("mds: {other:?}, not the accept finding session {s1} again"),
    }
    assert!(CephMds::session_of(&on_mds).is_some_and(|s| s.id == s1), "kept on the connection");
    assert!(mds.open_session("client.1").is_some_and(|s| s.id == s1), "and in the map");
    assert_mds_quiet(&saw, "nothing else");
    assert_client_quiet(&rx, "no reset on the client's side");
    client.shutdown();
    daemon.shutdown();
}

#[test]
fn mds_keeps_an_open_session_through_a_remote_reset() {
    mds_keeps_an_open_session_through_a_remote_reset_over(ProtocolVersion::V1);
}

#[test]
fn mds_keeps_an_open_session_through_a_remote_reset_over_msgr2() {
    mds_keeps_an_open_session_through_a_remote_reset_over(ProtocolVersion::V2);
}
