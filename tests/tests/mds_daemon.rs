//! An MDS-like daemon on asyncmsgr, the brief's second user: client sessions kept on the
//! connection (`set_priv`), command messages answered on the same connection with the
//! session's state, a tick timer on the messenger's own worker (Ceph's `C_tick_wakeup`),
//! and a session dropped when its connection resets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use event_center::{Context, TimerTarget};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, Policy, ProtocolVersion};
use parking_lot::Mutex;
use protocol::messages::{MCommand, MCommandReply, TypedMessage};
use protocol::types::{EntityName, EntityType, Features};
use protocol::Message;
use tests::loopback::{addr_for, test_config, WAIT};

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
