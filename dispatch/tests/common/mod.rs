//! Shared test fixtures: a plain connection id and a recording dispatcher.
#![allow(dead_code)]

use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use asyncmsgr_dispatch::{ConnectionRef, Dispatched, Dispatcher};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use protocol::Message;

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// The connection handle used by the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestConn(pub u64);

/// A [`TestConn`] id with this bit stands for a connection whose session ended: it takes
/// no messages ([`ConnectionRef::takes_no_messages`]) and is not marked down.
pub const ENDED: u64 = 1 << 63;

impl ConnectionRef for TestConn {
    fn conn_id(&self) -> u64 {
        self.0
    }
    fn takes_no_messages(&self) -> bool {
        self.0 & ENDED != 0
    }
}

/// A message of `msg_type` with priority `prio`, transaction id `tid` and `len` bytes.
pub fn msg(msg_type: u16, prio: u16, tid: u64, len: usize) -> Message {
    let mut m = Message::new(msg_type, Bytes::from(vec![0u8; len]));
    m.set_priority(prio);
    m.set_tid(tid);
    m
}

/// What a [`Recorder`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Dispatch { who: &'static str, conn: u64, msg_type: u16, prio: u16, tid: u64 },
    Fast { conn: u64, tid: u64, thread: ThreadId },
    Preprocess { conn: u64, tid: u64 },
    Connect(u64),
    FastConnect(u64),
    Accept(u64),
    FastAccept(u64),
    Reset { who: &'static str, conn: u64 },
    RemoteReset { who: &'static str, conn: u64 },
    Refused { who: &'static str, conn: u64 },
}

/// A dispatcher that reports everything to a channel.
pub struct Recorder {
    pub name: &'static str,
    /// Message types it takes in `ms_dispatch`; `None` = all.
    pub takes: Option<Vec<u16>>,
    /// Message types it fast-dispatches (also makes it a fast dispatcher if non-empty).
    pub fast: Vec<u16>,
    pub handles_reset: bool,
    pub tx: Sender<Seen>,
}

impl Recorder {
    pub fn new(name: &'static str, tx: Sender<Seen>) -> Self {
        Recorder { name, takes: None, fast: Vec::new(), handles_reset: false, tx }
    }
    fn send(&self, s: Seen) {
        // The receiver may be gone at the end of a test.
        let _ = self.tx.send(s);
    }
}

impl Dispatcher<TestConn> for Recorder {
    fn ms_dispatch(&self, conn: &TestConn, msg: Message) -> Dispatched {
        let taken = self.takes.as_ref().is_none_or(|t| t.contains(&msg.msg_type()));
        if !taken {
            return Dispatched::NotTaken(msg);
        }
        self.send(Seen::Dispatch {
            who: self.name,
            conn: conn.0,
            msg_type: msg.msg_type(),
            prio: msg.priority(),
            tid: msg.tid(),
        });
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        !self.fast.is_empty()
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        self.fast.contains(&msg.msg_type())
    }
    fn ms_fast_dispatch(&self, conn: &TestConn, msg: Message) {
        self.send(Seen::Fast { conn: conn.0, tid: msg.tid(), thread: std::thread::current().id() });
    }
    fn ms_fast_preprocess(&self, conn: &TestConn, msg: &Message) {
        self.send(Seen::Preprocess { conn: conn.0, tid: msg.tid() });
    }
    fn ms_handle_connect(&self, conn: &TestConn) {
        self.send(Seen::Connect(conn.0));
    }
    fn ms_handle_fast_connect(&self, conn: &TestConn) {
        self.send(Seen::FastConnect(conn.0));
    }
    fn ms_handle_accept(&self, conn: &TestConn) {
        self.send(Seen::Accept(conn.0));
    }
    fn ms_handle_fast_accept(&self, conn: &TestConn) {
        self.send(Seen::FastAccept(conn.0));
    }
    fn ms_handle_reset(&self, conn: &TestConn) -> bool {
        self.send(Seen::Reset { who: self.name, conn: conn.0 });
        self.handles_reset
    }
    fn ms_handle_remote_reset(&self, conn: &TestConn) {
        self.send(Seen::RemoteReset { who: self.name, conn: conn.0 });
    }
    fn ms_handle_refused(&self, conn: &TestConn) -> bool {
        self.send(Seen::Refused { who: self.name, conn: conn.0 });
        self.handles_reset
    }
}

/// Receives exactly `n` items, failing the test if they do not come within [`WAIT`].
pub fn recv_n<T>(rx: &Receiver<T>, n: usize) -> Vec<T> {
    let deadline = Instant::now() + WAIT;
    (0..n)
        .map(|i| match rx.recv_deadline(deadline) {
            Ok(v) => v,
            Err(e) => panic!("got {i} of {n}: {e}"),
        })
        .collect()
}

/// Spins (yielding) until `cond` holds; for states with no event to wait on.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        std::thread::yield_now();
    }
}

pub fn arc<D: Dispatcher<TestConn>>(d: D) -> Arc<dyn Dispatcher<TestConn>> {
    Arc::new(d)
}

/// The seed for a randomised test: `TEST_SEED` if set (to replay a failure), else random.
/// Printed so a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed =
        std::env::var("TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{test}: seed = {seed} (replay with TEST_SEED={seed})");
    seed
}
