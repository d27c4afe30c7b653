//! `bench client` does not lie under faults (the hardening issue's item 8): with the
//! server gone, silent, or answering out of order, it exits non-zero within a deadline
//! with a message that says what happened, and its table reports the resets.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench::args::{Args, MsgrVariant};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use messenger::{Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy};
use protocol::Message;

/// How long a faulted client may take to notice and exit (its stall limit is 1–3 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A running `bench client` with its stderr and exit status on channels.
struct Client {
    pid: u32,
    stderr: Receiver<String>,
    exited: Receiver<(ExitStatus, String)>,
    seen: String,
}

impl Client {
    fn start(addr: SocketAddr, stall_secs: &str) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
            .args(["client", "--addr", &addr.to_string(), "--duration", "120"])
            .args(["--stall", stall_secs])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (err_tx, stderr) = crossbeam_channel::unbounded();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                let _ = err_tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let (exit_tx, exited) = crossbeam_channel::bounded(1);
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut stdout = String::new();
            let _ = out.read_to_string(&mut stdout);
            let status = child.wait().unwrap();
            let _ = exit_tx.send((status, stdout));
        });
        Client { pid, stderr, exited, seen: String::new() }
    }

    /// Waits until the client's progress line shows completed round trips.
    fn wait_for_traffic(&mut self) {
        let deadline = Instant::now() + EXIT_DEADLINE;
        while !self
            .seen
            .split("total")
            .skip(1)
            .any(|t| t.trim_start().starts_with(|c: char| c.is_ascii_digit() && c != '0'))
        {
            match self.stderr.recv_deadline(deadline) {
                Ok(chunk) => self.seen += &chunk,
                Err(_) => panic!("no traffic from the client: {}", self.seen),
            }
        }
    }

    /// The exit status, stdout and all of stderr, or a panic (and a kill) at the deadline.
    fn wait_exit(mut self) -> (ExitStatus, String, String) {
        match self.exited.recv_timeout(EXIT_DEADLINE) {
            Ok((status, stdout)) => {
                // The reader thread may still hold the last chunk: read to its EOF.
                let deadline = Instant::now() + EXIT_DEADLINE;
                while let Ok(chunk) = self.stderr.recv_deadline(deadline) {
                    self.seen += &chunk;
                }
                (status, stdout, self.seen)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                // SAFETY: kill(2) on the pid of the child this test spawned.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
                panic!("bench client still running after {EXIT_DEADLINE:?}: {}", self.seen);
            }
        }
    }
}

/// Runs `bench client --stall <stall_secs>` against a server messenger whose dispatcher
/// is `d` and asserts that it fails, saying `why`.
fn client_fails_against(d: Arc<dyn Dispatcher<Connection>>, stall_secs: &str, why: &str) {
    let m = Messenger::new(bench::wire::SERVER_NAME, 0, MessengerConfig::default()).unwrap();
    m.set_default_policy(Policy::stateless_server());
    let addr = m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    m.start().unwrap();
    m.add_dispatcher_head(d).unwrap();
    let (status, _, stderr) = Client::start(addr, stall_secs).wait_exit();
    assert!(!status.success());
    assert!(stderr.contains(why), "{stderr}");
    m.shutdown();
}

#[test]
fn client_fails_when_the_server_goes_away() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = bench::msgr::server(&Args::default(), loopback, MsgrVariant::default()).unwrap();
    let addr = server.addr;
    let mut client = Client::start(addr, "3");
    client.wait_for_traffic();
    server.shutdown();
    let (status, stdout, stderr) = client.wait_exit();
    assert!(!status.success(), "exit {status}; stdout {stdout}");
    assert!(stderr.contains("bench FAILED") && stderr.contains("reset"), "{stderr}");
    // The table's asyncmsgr row counts the reset (the column after cpu us).
    let row = stdout.lines().find(|l| l.starts_with("asyncmsgr ")).unwrap();
    let resets: u64 = row.split_whitespace().nth(7).unwrap().parse().unwrap();
    assert!(resets >= 1, "{stdout}");
}

/// Takes every message and never answers.
struct Silent;

impl Dispatcher<Connection> for Silent {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
}

#[test]
fn client_fails_when_replies_stop() {
    client_fails_against(Arc::new(Silent), "1", "no reply for 1.0 s: traffic stopped");
}

/// Answers each message with the tid of the next one.
struct Skewed;

impl Dispatcher<Connection> for Skewed {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
        let mut reply = Message::new(msg.msg_type(), Bytes::new());
        reply.set_tid(msg.tid() + 1);
        let _ = conn.send_message(reply);
        Dispatched::Taken
    }
}

#[test]
fn client_fails_on_a_reply_out_of_order() {
    client_fails_against(Arc::new(Skewed), "3", "reply tid 2 where tid 1 was next");
}
