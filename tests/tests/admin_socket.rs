//! The admin socket speaks Ceph's admin-socket protocol: our own client checks the
//! framing, and the real `ceph --admin-daemon` CLI queries it (where Ceph is installed).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use messenger::Policy;
use protocol::types::EntityType;
use tests::ceph::ceph_available;
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("asyncmsgr-asok-{tag}-{}.asok", std::process::id()))
}

/// One request/answer over the admin-socket protocol: command + NUL, then a u32
/// big-endian length and that many bytes.
fn ask(path: &Path, command: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).expect("connect admin socket");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(command).expect("write");
    s.write_all(&[0]).expect("write NUL");
    read_answer(&mut s).expect("answer")
}

/// The answer on `s`: a u32 big-endian length and that many bytes.
fn read_answer(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut out = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut out)?;
    Ok(out)
}

// Ceph's AdminSocket::do_accept ends a command at a newline as at a NUL ("null or \n
// terminated string"), and reads nothing after it: a client that writes
// `{"prefix": "version"}\n` and keeps its write side open (`nc -U`, a script) is answered
// at once. Before, only a NUL or the client's EOF ended a command: it waited out
// ADMIN_CLIENT_DEADLINE and was closed unanswered.
#[test]
fn a_newline_terminated_command_is_answered_while_the_client_keeps_writing_side_open() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("newline");
    srv.start_admin_socket(&path).expect("admin socket");
    let mut s = UnixStream::connect(&path).expect("connect");
    // Well below the deadline at which an unanswered client is closed.
    s.set_read_timeout(Some(messenger::ADMIN_CLIENT_DEADLINE / 5)).expect("timeout");
    // A second command after the newline is not read: the first is answered.
    s.write_all(b"{\"prefix\": \"version\"}\n{\"prefix\": \"messenger dump\"}\n").expect("write");
    let answer = read_answer(&mut s).expect("an answer well before the deadline");
    let version: serde_json::Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(version["release"], "asyncmsgr", "{version}");
    drop(s);
    srv.shutdown();
}

// A command cut short by the client's EOF, before its NUL or newline, is not answered:
// Ceph's AdminSocket::do_accept closes the connection when its read meets EOF (a 16.2.15
// monitor answers `{"prefix": "version"}` sent so with nothing). It was answered.
#[test]
fn a_command_ended_by_eof_without_a_terminator_is_not_answered() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("eof");
    srv.start_admin_socket(&path).expect("admin socket");
    for command in [&br#"{"prefix": "version"}"#[..], b"version", b"", &[0, 0, 0]] {
        let mut s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(command).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("closed by the server within WAIT");
        assert!(answer.is_empty(), "{command:?} answered {answer:?}");
    }
    // Terminated, it is answered as ever.
    let v: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "version"}"#)).expect("json");
    assert_eq!(v["release"], "asyncmsgr");
    srv.shutdown();
}

#[test]
fn admin_socket_answers_perf_dump_messenger_dump_and_refuses_unknown_commands() {
    let (srv, _addr, srv_rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let path = socket_path("proto");
    srv.start_admin_socket(&path).expect("admin socket");
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    for tid in 1..=5 {
        conn.send_message(test_message(MSG_TEST, tid, Bytes::new())).expect("send");
        next_message(&cli_rx);
    }
    drop(srv_rx);

    let perf: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "perf dump"}"#)).expect("json");
    let received: u64 = perf
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"))
        .map(|(_, v)| v["msgr_recv_messages"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(received, 5, "{perf}");

    let one: serde_json::Value = serde_json::from_slice(&ask(
        &path,
        br#"{"prefix": "perf dump", "logger": "AsyncMessenger::Worker-0", "counter": "msgr_send_messages"}"#,
    ))
    .expect("json");
    assert!(one["AsyncMessenger::Worker-0"]["msgr_send_messages"].is_u64(), "{one}");

    let dump: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "messenger dump"}"#)).expect("json");
    assert_eq!(dump.as_array().map(|a| a.len()), Some(1), "{dump}");

    // Old clients send plain words.
    let version: serde_json::Value = serde_json::from_slice(&ask(&path, b"version")).expect("json");
    assert_eq!(version["release"], "asyncmsgr");

    let err = String::from_utf8(ask(&path, br#"{"prefix": "no such thing"}"#)).expect("utf8");
    assert!(err.starts_with("ERROR: (22) Invalid argument"), "{err}");

    // A command that never ends is refused, not buffered without bound: closed once it
    // passes the limit, well before the deadline that closes any client.
    let started = std::time::Instant::now();
    let mut s = UnixStream::connect(&path).expect("connect");
    let junk = vec![b'x'; 128 << 10];
    let _ = s.write_all(&junk);
    assert!(closed_by_server(&mut s, Duration::from_secs(2)), "an endless command was kept open");
    let took = started.elapsed();
    assert!(took < messenger::ADMIN_CLIENT_DEADLINE / 2, "closed only after {took:?}");

    cli.shutdown();
    srv.shutdown();
    assert!(!path.exists(), "socket file removed at shutdown");
}

#[test]
fn the_real_ceph_cli_reads_our_admin_socket() {
    if !ceph_available("the_real_ceph_cli_reads_our_admin_socket") {
        return;
    }
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), true);
    let path = socket_path("cli");
    srv.start_admin_socket(&path).expect("admin socket");
    let (cli, cli_rx) = client(EntityType::CLIENT, 2, Policy::lossy_client());
    let conn = cli.connect_to(EntityType::OSD, srv.my_addr());
    conn.send_message(test_message(MSG_TEST, 1, Bytes::new())).expect("send");
    next_message(&cli_rx);

    let run = |args: &[&str]| {
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg("ceph")
            .arg("--admin-daemon")
            .arg(&path)
            .args(args)
            .output()
            .expect("run ceph");
        assert!(
            out.status.success(),
            "ceph --admin-daemon {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON from the CLI")
    };
    let perf = run(&["perf", "dump"]);
    let received: u64 = perf
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"))
        .map(|(_, v)| v["msgr_recv_messages"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(received, 1, "{perf}");
    let dump = run(&["messenger", "dump"]);
    assert!(dump.as_array().is_some_and(|a| !a.is_empty()), "{dump}");
    let schema = run(&["perf", "schema"]);
    assert_ceph_schema_shape(&schema);
    assert_eq!(run(&["perfcounters_schema"]), schema);
    let perf = run(&["perfcounters_dump"]);
    assert!(perf.get("AsyncMessenger::Worker-0").is_some(), "{perf}");
    cli.shutdown();
    srv.shutdown();
}

// Local clients that connect and never send their command: at most
// ADMIN_MAX_CLIENTS are served at once (one more takes the oldest one's slot, which is
// closed as it connects), each is closed after ADMIN_CLIENT_DEADLINE, and the socket
// answers again afterwards. Before, each stayed for good, holding a descriptor the
// messenger's sockets share.
#[test]
fn stalled_admin_clients_are_bounded_and_closed_at_their_deadline() {
    use messenger::{ADMIN_CLIENT_DEADLINE, ADMIN_MAX_CLIENTS};
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("stalled");
    srv.start_admin_socket(&path).expect("admin socket");
    let started = std::time::Instant::now();
    let mut stalled: Vec<UnixStream> =
        (0..ADMIN_MAX_CLIENTS).map(|_| UnixStream::connect(&path).expect("connect")).collect();
    let extra = UnixStream::connect(&path).expect("connect");
    let mut oldest = std::mem::replace(&mut stalled[0], extra);
    assert!(closed_by_server(&mut oldest, WAIT), "a client past the bound frees the oldest's slot");
    assert!(started.elapsed() < ADMIN_CLIENT_DEADLINE, "…before any deadline");
    for s in &mut stalled {
        assert!(closed_by_server(s, WAIT + ADMIN_CLIENT_DEADLINE), "a stalled client is closed");
    }
    assert!(started.elapsed() >= ADMIN_CLIENT_DEADLINE, "not before its deadline");
    let version: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "version"}"#)).expect("json");
    assert_eq!(version["release"], "asyncmsgr");
    srv.shutdown();
}

// On a shared pool (whose workers outlive the messenger), an admin socket asked for after
// shutdown is refused, and none is left behind. Before, it started, kept its file and
// answered for as long as the pool ran.
#[test]
fn no_admin_socket_after_shutdown() {
    let pool = std::sync::Arc::new(
        event_center::WorkerPool::new(event_center::WorkerPoolConfig::default()).expect("pool"),
    );
    let m = messenger::Messenger::with_pool(
        protocol::types::EntityName::new(EntityType::OSD, 0),
        1,
        test_config(1),
        pool.clone(),
    )
    .expect("messenger");
    m.start().expect("start");
    m.shutdown();
    let path = socket_path("after-shutdown");
    assert!(m.start_admin_socket(&path).is_err());
    assert!(UnixStream::connect(&path).is_err(), "nothing listens at {}", path.display());
    pool.shutdown();
}

// A second admin socket replaces the first: at the same path it answers there; at another
// path the first one's file goes; one that fails to start leaves the running one alone.
/// Another process's live admin socket at our path is left alone (Ceph pings it and
/// refuses): before, we unlinked it, so it became unreachable, and removed the file when
/// we stopped. A stale file, with nothing serving it, is replaced.
#[test]
fn a_live_admin_socket_of_another_process_is_not_taken_over() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("taken");
    let _ = std::fs::remove_file(&path);
    let other = std::os::unix::net::UnixListener::bind(&path).expect("the other daemon's");
    let err = srv.start_admin_socket(&path).expect_err("a live socket at the path");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    let _client = std::os::unix::net::UnixStream::connect(&path).expect("still reachable");
    other.accept().expect("the other daemon's socket took the connection");
    drop(other);
    // Now a stale file: nothing answers there.
    srv.start_admin_socket(&path).expect("a stale file is replaced");
    let v: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "version"}"#)).expect("json");
    assert!(v.get("version").is_some(), "{v}");
    srv.shutdown();
    assert!(!path.exists(), "our socket file is removed at shutdown");
}

#[test]
fn a_second_admin_socket_replaces_the_first() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let version = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&ask(path, br#"{"prefix": "version"}"#)).expect("json")
    };
    let first = socket_path("replace-a");
    srv.start_admin_socket(&first).expect("admin socket");
    srv.start_admin_socket(&first).expect("again, same path");
    assert_eq!(version(&first)["release"], "asyncmsgr");
    assert_eq!(srv.admin_socket_path(), Some(first.clone()));
    let second = socket_path("replace-b");
    srv.start_admin_socket(&second).expect("another path");
    assert_eq!(version(&second)["release"], "asyncmsgr");
    assert!(!first.exists(), "the first socket's file is gone");
    let nowhere = std::env::temp_dir().join("asyncmsgr-no-such-dir").join("x.asok");
    assert!(srv.start_admin_socket(&nowhere).is_err());
    assert_eq!(version(&second)["release"], "asyncmsgr", "the running one stays");
    assert_eq!(srv.admin_socket_path(), Some(second.clone()));
    srv.shutdown();
    assert!(!second.exists(), "shutdown removes the file");
    assert_eq!(srv.admin_socket_path(), None);
}

// Ceph's AdminSocketClient::ping asks for `{"prefix":"0"}` and takes a one-byte answer
// (CEPH_ADMIN_SOCK_VERSION) for a live socket: a Ceph daemon about to bind our path
// unlinks it otherwise. Ceph's do_accept still reads its binary protocol (a first byte
// NUL, a big-endian u32 code): 0 asks the same, 1 is perf dump. Before, both were
// "unknown command prefix" (the binary request read as an empty command).
#[test]
fn ceph_pings_and_binary_requests_are_answered() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("binary");
    srv.start_admin_socket(&path).expect("admin socket");
    assert_eq!(ask(&path, br#"{"prefix":"0"}"#), b"2");
    let binary = |code: u8| {
        let mut s = UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(&[0, 0, 0, code]).expect("write");
        read_answer(&mut s).expect("answer")
    };
    assert_eq!(binary(0), b"2");
    let perf: serde_json::Value = serde_json::from_slice(&binary(1)).expect("json");
    assert!(perf.get("AsyncMessenger::Worker-0").is_some(), "{perf}");
    let schema: serde_json::Value = serde_json::from_slice(&binary(2)).expect("json");
    assert!(schema.get("AsyncMessenger::Worker-0").is_some(), "{schema}");
    srv.shutdown();
}

/// One counter's `perf schema` entry as a 16.2.15 daemon answers it for
/// `AsyncMessenger::Worker-0`'s `msgr_recv_bytes`.
fn assert_ceph_schema_shape(schema: &serde_json::Value) {
    let entry = &schema["AsyncMessenger::Worker-0"]["msgr_recv_bytes"];
    let want = serde_json::json!({
        "type": 10, "metric_type": "counter", "value_type": "integer",
        "description": "Network received bytes", "nick": "", "priority": 0, "units": "bytes",
    });
    assert_eq!(entry, &want, "{schema}");
    let lat = &schema["AsyncMessenger::Worker-0"]["msgr_send_messages_queue_lat"];
    assert_eq!((&lat["type"], &lat["value_type"]), (&5.into(), &"real-integer-pair".into()));
}

// Ceph registers `perf schema` for every daemon (CephContext), with `perfcounters_schema`
// and `2` as aliases and the binary request 2: what each counter of `perf dump` is. It
// answered "unknown command prefix"; the CLI refused `perfcounters_schema` (and
// `perfcounters_dump`), which get_command_descriptions did not list. `help` lists only
// the commands with help, as Ceph's.
#[test]
fn perf_schema_is_answered_in_cephs_shape() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("schema");
    srv.start_admin_socket(&path).expect("admin socket");
    let json = |command: &[u8]| -> serde_json::Value {
        serde_json::from_slice(&ask(&path, command)).expect("json")
    };
    let schema = json(br#"{"prefix": "perf schema"}"#);
    assert_ceph_schema_shape(&schema);
    let perf = json(br#"{"prefix": "perf dump"}"#);
    let names =
        |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(names(&schema), names(&perf), "a schema section for each dump section");
    for alias in [&br#"{"prefix": "perfcounters_schema"}"#[..], br#"{"prefix": "2"}"#] {
        assert_eq!(json(alias), schema);
    }
    assert_eq!(names(&json(br#"{"prefix": "1"}"#)), names(&perf));
    let descriptions = json(br#"{"prefix": "get_command_descriptions"}"#);
    let listed: Vec<String> = descriptions
        .as_object()
        .expect("object")
        .values()
        .map(|c| {
            let sig = c["sig"].as_array().expect("sig");
            sig.iter().filter_map(|w| w.as_str()).collect::<Vec<_>>().join(" ")
        })
        .collect();
    for command in ["perf schema", "perfcounters_schema", "perfcounters_dump", "0", "1", "2"] {
        assert!(listed.iter().any(|c| c == command), "{command} not in {listed:?}");
    }
    let help = json(br#"{"prefix": "help"}"#);
    assert_eq!(help["perf schema"], "dump perfcounters schema", "{help}");
    assert!(help.get("perfcounters_schema").is_none() && help.get("0").is_none(), "{help}");
    srv.shutdown();
}

/// A started messenger on `workers` workers of its own, shareable with them.
fn started_messenger(workers: usize) -> std::sync::Arc<messenger::Messenger> {
    let name = protocol::types::EntityName::new(EntityType::OSD, 0);
    let m = messenger::Messenger::new(name, 1, test_config(workers)).expect("messenger");
    m.start().expect("start");
    std::sync::Arc::new(m)
}

/// Runs `call` on worker `worker` of `m`'s pool, from a timer's closure (`via_timer`) or
/// an external event, and returns what it returned.
fn on_worker<R: Send + 'static>(
    m: &std::sync::Arc<messenger::Messenger>,
    worker: usize,
    via_timer: bool,
    call: impl FnOnce(&messenger::Messenger) -> R + Send + 'static,
) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let m2 = m.clone();
    let run = move |_: &mut event_center::Context<'_>| {
        let _ = tx.send(call(&m2));
    };
    let center = m.pool().handle(worker);
    let posted = if via_timer {
        center.dispatch_event_external(move |cx| {
            cx.create_time_event(Duration::ZERO, event_center::TimerTarget::Fn(Box::new(run)));
        })
    } else {
        center.dispatch_event_external(run)
    };
    posted.expect("worker running");
    rx.recv_timeout(WAIT).expect("the call on the worker returned")
}

// start_admin_socket from a worker (a timer, an ms_fast_dispatch) works as from any
// thread, as Ceph users expect, here on a one-worker messenger whose admin socket goes on
// that very worker. Before, it waited for the registration on that worker (submit_to:
// OnOwnThread) and failed after binding: the path held a dead socket, and when it was
// the running admin socket's path, that one was unreachable.
#[test]
fn start_admin_socket_from_the_messengers_own_worker() {
    let m = started_messenger(1);
    let version = |path: &Path| -> serde_json::Value {
        serde_json::from_slice(&ask(path, br#"{"prefix": "version"}"#)).expect("json")
    };
    let first = socket_path("own-worker-a");
    let served = first.clone();
    on_worker(&m, 0, true, move |m| m.start_admin_socket(&served)).expect("a new path");
    assert_eq!(version(&first)["release"], "asyncmsgr");
    let again = first.clone();
    on_worker(&m, 0, false, move |m| m.start_admin_socket(&again)).expect("the served path");
    assert_eq!(version(&first)["release"], "asyncmsgr", "the served path answers still");
    let second = socket_path("own-worker-b");
    let other = second.clone();
    on_worker(&m, 0, false, move |m| m.start_admin_socket(&other)).expect("another new path");
    assert_eq!(version(&second)["release"], "asyncmsgr");
    assert!(!first.exists(), "the first socket's file is gone");
    m.shutdown();
    assert!(!second.exists(), "shutdown removes the file");
}

// start_admin_socket on one worker while the worker the socket goes on is busy waiting
// for that call: it returns without waiting for that worker. Before, it blocked in
// submit_to until the other worker ran the registration; two workers doing so at once
// deadlocked.
#[test]
fn start_admin_socket_on_a_worker_does_not_wait_for_another() {
    let m = started_messenger(2);
    let target = m.pool().least_loaded().id();
    let caller = 1 - target;
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let (blocked, is_blocked) = crossbeam_channel::bounded(1);
    m.pool()
        .handle(target)
        .dispatch_event_external(move |_| {
            let _ = blocked.send(());
            let _ = released.recv_timeout(WAIT);
        })
        .expect("worker running");
    is_blocked.recv_timeout(WAIT).expect("the target worker is blocked");
    let path = socket_path("other-worker");
    let served = path.clone();
    let (started, while_blocked) = on_worker(&m, caller, false, move |m| {
        let started = m.start_admin_socket(&served);
        // Fails once the target worker gave up waiting: the call waited for it.
        (started, release.send(()).is_ok())
    });
    started.expect("admin socket");
    assert!(while_blocked, "start_admin_socket waited for the busy worker");
    let v: serde_json::Value =
        serde_json::from_slice(&ask(&path, br#"{"prefix": "version"}"#)).expect("json");
    assert_eq!(v["release"], "asyncmsgr");
    m.shutdown();
    assert!(!path.exists(), "shutdown removes the file");
}

// A path another process serves with its backlog full (its admin thread stuck, clients
// queued) is refused at once from a worker: the probe for a live socket does not wait.
// Before, it was a blocking connect, which sleeps until that listener accepts: the
// worker, and every connection it drives, stopped.
#[test]
fn start_admin_socket_on_a_worker_refuses_a_busy_foreign_socket_without_waiting() {
    let m = started_messenger(1);
    let path = socket_path("busy-foreign");
    let foreign = std::os::unix::net::UnixListener::bind(&path).expect("foreign listener");
    // Its backlog filled with connects it never accepts, until one would wait.
    let mut queued = Vec::new();
    loop {
        match mio::net::UnixStream::connect(&path) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("connect: {e}"),
        }
        assert!(queued.len() < 100_000, "the backlog never filled");
    }
    let served = path.clone();
    let refused = on_worker(&m, 0, false, move |m| m.start_admin_socket(&served));
    let err = refused.expect_err("another process serves the path");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert!(path.exists(), "the foreign socket's file is left alone");
    drop((queued, foreign));
    m.shutdown();
    let _ = std::fs::remove_file(&path);
}

/// Sends on its channel when dropped: posted to a worker behind other work, it tells when
/// that work was run or dropped unrun.
struct DropSignal(crossbeam_channel::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

// start_admin_socket on a worker returns before its listener is registered on the
// worker it goes to; when that registration never succeeds (here the worker stops with it
// still queued, and drops it unrun), the socket file is removed, admin_socket_path says
// so, and the shutdown leaves alone the path, which may be another socket's by then. As
// Ceph's bind_and_listen unlinks its file when listen fails. Before, the failure was
// only logged: the file stayed (connections to it refused) and the shutdown removed
// whatever socket was at the path then.
#[test]
fn an_admin_socket_never_served_removes_its_file_and_says_so() {
    let pool = std::sync::Arc::new(
        event_center::WorkerPool::new(event_center::WorkerPoolConfig {
            workers: 2,
            ..Default::default()
        })
        .expect("pool"),
    );
    let name = protocol::types::EntityName::new(EntityType::OSD, 0);
    let m =
        messenger::Messenger::with_pool(name, 1, test_config(2), pool.clone()).expect("messenger");
    m.start().expect("start");
    let m = std::sync::Arc::new(m);
    let target = m.pool().least_loaded().id();
    let caller = 1 - target;
    let (release, released) = crossbeam_channel::bounded::<()>(1);
    let (blocked, is_blocked) = crossbeam_channel::bounded(1);
    pool.handle(target)
        .dispatch_event_external(move |_| {
            let _ = blocked.send(());
            let _ = released.recv_timeout(WAIT);
        })
        .expect("worker running");
    is_blocked.recv_timeout(WAIT).expect("the target worker is blocked");
    let path = socket_path("never-served");
    let served = path.clone();
    let (started, at) = on_worker(&m, caller, false, move |m| {
        (m.start_admin_socket(&served), m.admin_socket_path())
    });
    started.expect("posted");
    assert_eq!(at.as_deref(), Some(path.as_path()), "pending counts as served");
    assert!(path.exists(), "bound");
    // Queued behind the registration, dropped after it.
    let (dropped_tx, dropped) = crossbeam_channel::bounded(1);
    let signal = DropSignal(dropped_tx);
    pool.handle(target).dispatch_event_external(move |_| drop(signal)).expect("worker running");
    pool.handle(target).stop();
    release.send(()).expect("release");
    dropped.recv_timeout(WAIT).expect("the stopped worker dropped what was queued");
    assert!(!path.exists(), "the file of a listener never served is removed");
    assert_eq!(m.admin_socket_path(), None);
    // Another process's socket at the path since: the shutdown leaves it.
    let other = std::os::unix::net::UnixListener::bind(&path).expect("another socket");
    m.shutdown();
    assert!(path.exists(), "the other socket's file is left alone");
    drop(other);
    let _ = std::fs::remove_file(&path);
    pool.shutdown();
}

// Every Ceph daemon's admin socket answers `git_version` (AdminSocket::init registers it
// beside `version`, `0`, `help` and `get_command_descriptions`): `ceph --admin-daemon
// PATH git_version` printed "no valid command found" and exited 22 against ours.
#[test]
fn the_real_ceph_cli_asks_git_version() {
    if !ceph_available("the_real_ceph_cli_asks_git_version") {
        return;
    }
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("git-version");
    srv.start_admin_socket(&path).expect("admin socket");
    let out = std::process::Command::new("timeout")
        .args(["60", "ceph", "--admin-daemon"])
        .arg(&path)
        .arg("git_version")
        .output()
        .expect("run ceph");
    srv.shutdown();
    assert!(
        out.status.success(),
        "ceph --admin-daemon git_version: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the CLI");
    assert!(v["git_version"].is_string(), "{v}");
}

// `perf dump` narrowed to a counter answers as Ceph's `PerfCountersCollection::
// dump_formatted` does: the counter filter applies to every section kept, a section
// without the counter is an empty object (not the counter as null), and an empty logger
// (what `ceph daemon X perf dump "" COUNTER` sends) filters no section. Before, a
// counter without a logger was ignored (every counter of every section), an empty
// logger answered `{}`, and an unknown counter was dumped as `null`.
#[test]
fn perf_dump_narrowed_to_a_counter_answers_as_cephs() {
    let (srv, _addr, _rx) = server(EntityType::OSD, 1, Policy::stateless_server(), false);
    let path = socket_path("filter");
    srv.start_admin_socket(&path).expect("admin socket");
    let json = |command: &[u8]| -> serde_json::Value {
        serde_json::from_slice(&ask(&path, command)).expect("json")
    };
    let all = json(br#"{"prefix": "perf dump"}"#);
    let sections = all.as_object().expect("object");
    // Ceph's answer for counter `c`: every section, each with only `c` if it has it.
    let only = |c: &str| -> serde_json::Value {
        let narrowed = sections.iter().map(|(name, section)| {
            let kept = section.get(c).map(|v| (c.to_string(), v.clone()));
            (name.clone(), serde_json::Value::Object(kept.into_iter().collect()))
        });
        serde_json::Value::Object(narrowed.collect())
    };
    let want = only("msgr_recv_bytes");
    assert_eq!(want["AsyncMessenger::Worker-1"], serde_json::json!({"msgr_recv_bytes": 0}));
    assert_eq!(want["dispatch_queue"], serde_json::json!({}));
    for command in [
        &br#"{"prefix": "perf dump", "counter": "msgr_recv_bytes"}"#[..],
        br#"{"prefix": "perf dump", "logger": "", "counter": "msgr_recv_bytes"}"#,
    ] {
        assert_eq!(json(command), want, "{}", String::from_utf8_lossy(command));
    }
    let unknown = json(
        br#"{"prefix": "perf dump", "logger": "AsyncMessenger::Worker-0", "counter": "no_such"}"#,
    );
    assert_eq!(unknown, serde_json::json!({"AsyncMessenger::Worker-0": {}}));
    assert_eq!(json(br#"{"prefix": "perf dump", "logger": ""}"#), all);

    if ceph_available("perf_dump_narrowed_to_a_counter_answers_as_cephs") {
        let out = std::process::Command::new("timeout")
            .args(["60", "ceph", "--admin-daemon"])
            .arg(&path)
            .args(["perf", "dump", "", "msgr_recv_bytes"])
            .output()
            .expect("run ceph");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(got, want, "the CLI's perf dump \"\" msgr_recv_bytes");
    }
    srv.shutdown();
}
