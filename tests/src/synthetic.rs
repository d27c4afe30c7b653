//! Ceph's Synthetic workload (test_msgr.cc `SyntheticWorkload`) and its checker: server
//! messengers and client messengers on one shared worker pool, a seeded random mix of
//! operations (5 % connect, 5 % `mark_down`, 80 % send with payloads from 32 B to 1 MiB
//! of which 1 in 20 is noise at high priority, 10 % short pauses; injected socket cuts on
//! top), servers echoing every message on the
//! connection it came on, and a checker that holds the workload to the policy's promise.
//!
//! # What the checker holds
//! * Every echo matches the head of the sent list of the connection it arrived on, byte
//!   for byte (FIFO per connection), and nothing arrives that is not pending there: a
//!   duplicate, a reordered or a stray message is a failure.
//! * Everything pending drains within a deadline; if not, the pending lists and the
//!   messengers' connections are dumped.
//! * Loss is allowed only where the policy allows it: a lossy connection's reset drops
//!   what it had pending (counted as lost); a remote reset discards a lossless session's
//!   queue (counted, and later echoes of those messages are forgiven). The reset is
//!   reported through the dispatch queue while echoes are fast-dispatched, so the echoes
//!   of the session that opens after it may come first: a message they overtake is held
//!   until the reset explains it (it was queued before that session opened, as the
//!   `ms_handle_fast_*` hooks tell), and fails as lost if none does. Echoes arriving on
//!   a connection after the workload marked it down are counted, not failed: a fast dispatch
//!   the worker had begun when `mark_down` was called may still run (in Ceph too).
//!
//! Unlike Ceph's checker, a connection's sent list is not forgiven when it reconnects
//! (`ms_handle_fast_connect`): a lossless reconnect must deliver everything.
//!
//! Faults come from [`messenger::Connection::inject_socket_failure`] and, in front of
//! server policies, the chaos proxy. Config-level injection goes through
//! [`Options::config`], which every messenger is built from (the servers from
//! [`Options::server_config`] when set). With [`Options::refusals_allowed`] the send
//! bound is part of the test: a `QueueFull` refusal is counted, and after every send the
//! connection must hold no more than `max_queued_bytes`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::counters::WorkerCounters;
use messenger::{
    Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy, ProtocolVersion,
    SendError,
};
use parking_lot::{Condvar, Mutex};
use protocol::session::CounterValues;
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::chaos::{ChaosConfig, ChaosProxy};
use crate::loopback::addr_for;

/// A checked message from a client (front: its sequence number; data: the payload).
pub const MSG_PING: u16 = 0x7f10;
/// A server's echo of a [`MSG_PING`], same front and data.
pub const MSG_PONG: u16 = 0x7f11;
/// Unchecked traffic at high priority that overtakes the checked stream in the send
/// queues (Ceph's MCommand at priority 200).
pub const MSG_NOISE: u16 = 0x7f12;
/// Above `CEPH_MSG_PRIO_HIGH` (196): strict priority in the queues.
const NOISE_PRIORITY: u16 = 200;
/// Distinct payloads to choose from.
const PAYLOADS: usize = 64;
/// Failures kept verbatim (the rest are counted).
const MAX_FAILURES_KEPT: usize = 20;
/// Messages of one burst at most (`Options::burst_one_in`).
const MAX_BURST: usize = 8;

/// One Synthetic run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Printed with the report.
    pub name: &'static str,
    /// Seeds the operation mix and the payloads.
    pub seed: u64,
    /// Server messengers (entity type OSD, bound on loopback).
    pub servers: usize,
    /// Client messengers (entity type CLIENT; bound when their policy has standby, so
    /// that peers can dial them back, as Ceph's test does).
    pub clients: usize,
    /// Workers of the pool every messenger shares.
    pub workers: usize,
    /// The servers' default policy.
    pub server_policy: Policy,
    /// The clients' default policy.
    pub client_policy: Policy,
    /// Every messenger's configuration, config-level fault injection included: Ceph's
    /// `ms_inject_socket_failures` fails 1 socket operation (read, write, dial, accept)
    /// in 30 on lossless runs and 1 in 600 on lossy ones, seeded with the run's seed.
    pub config: MessengerConfig,
    /// Stop after this many checked messages were sent…
    pub messages: u64,
    /// …or, when set, after this long instead (soak mode).
    pub duration: Option<Duration>,
    /// Checked messages in flight at most (the sender waits for echoes beyond it).
    pub max_in_flight: usize,
    /// Connections the workload keeps at most.
    pub max_connections: usize,
    /// One operation in this many cuts a random connection's socket (client or server
    /// side) with `inject_socket_failure`; 0 for none.
    pub cut_one_in: u32,
    /// Puts a chaos proxy in front of every server. Server policies only: the proxy
    /// rewrites the server's announced address, so the server must never dial back.
    pub chaos: Option<ChaosConfig>,
    /// The policies are lossy: a reset may drop pending messages.
    pub lossy: bool,
    /// Drop both ends of a connection (the client's and the server's session to that
    /// client), as Ceph does for lossless peers.
    pub mark_down_both_ends: bool,
    /// How long everything pending may take to drain at the end.
    pub drain_deadline: Duration,
    /// The servers' configuration when it differs from [`Options::config`] (which the
    /// clients keep): e.g. a send bound checked on the clients only, so that the servers'
    /// echoes are never refused.
    pub server_config: Option<MessengerConfig>,
    /// `send_message` on a lossless connection may fail with `QueueFull` (the clients'
    /// send bound is part of the test): a refusal is counted instead of failed, the
    /// refused message must never be echoed, and after every send the connection holds
    /// at most the clients' `max_queued_bytes` (`Connection::queued_send_bytes`).
    pub refusals_allowed: bool,
    /// How many of the payloads are large, on top of the usual mix (0: none).
    pub large_payloads: usize,
    /// The length of the large payloads.
    pub large_payload_len: RangeInclusive<usize>,
    /// One operation in this many sends large payloads back to back on one connection
    /// until a send is refused (at most 8); 0 for none. Meant with
    /// [`Options::refusals_allowed`]: it drives a connection to its send bound.
    pub burst_one_in: u32,
    /// The protocol clients dial servers with (msgr2: the servers' `v2:` addresses on
    /// the same port) and the servers dial clients back with; every session accepted
    /// or connected must speak it.
    pub proto: ProtocolVersion,
}

impl Options {
    /// Ceph's sizes scaled to a 2-core CI machine: 8 servers, 16 clients, 3 workers,
    /// 10,000 messages, 64 in flight, up to 128 connections, 1 cut per 30 operations.
    pub fn new(name: &'static str, seed: u64, server: Policy, client: Policy) -> Options {
        let lossy = server.lossy || client.lossy;
        Options {
            name,
            seed,
            servers: 8,
            clients: 16,
            workers: 3,
            server_policy: server,
            client_policy: client,
            config: MessengerConfig {
                // Reconnects should not idle for long while cuts keep coming (Ceph's test
                // runs with ms_max_backoff 1 s).
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_secs(1),
                // Ceph's SyntheticInjectTest: 1 in 30 (lossless) / 1 in 600 (lossy).
                inject_socket_failures: if lossy { 600 } else { 30 },
                inject_seed: seed,
                ..MessengerConfig::default()
            },
            messages: 10_000,
            duration: None,
            max_in_flight: 64,
            max_connections: 128,
            cut_one_in: 30,
            chaos: None,
            lossy,
            mark_down_both_ends: !client.lossy && !client.server && client.standby,
            drain_deadline: Duration::from_secs(60),
            server_config: None,
            refusals_allowed: false,
            large_payloads: 0,
            large_payload_len: (2 << 20)..=(4 << 20),
            burst_one_in: 0,
            proto: ProtocolVersion::V1,
        }
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Checked messages sent.
    pub sent: u64,
    /// Echoes checked and matched.
    pub echoed: u64,
    /// Noise messages sent.
    pub noise: u64,
    /// Payload bytes of checked messages sent.
    pub bytes: u64,
    /// Connections the workload opened.
    pub connections: u64,
    /// `mark_down`s made by the workload.
    pub mark_downs: u64,
    /// Socket cuts injected with `inject_socket_failure`.
    pub cuts: u64,
    /// Cuts made by the chaos proxies.
    pub proxy_cuts: u64,
    /// Socket operations failed by `ms_inject_socket_failures`, over every messenger.
    pub injected_socket_failures: u64,
    /// Socket operations that drew for an injected failure.
    pub injection_socket_ops: u64,
    /// `ms_handle_connect` on clients / servers.
    pub client_connects: u64,
    /// `ms_handle_connect` on servers (lossless peers dial back).
    pub server_connects: u64,
    /// `ms_handle_accept` on servers.
    pub server_accepts: u64,
    /// `ms_handle_accept` on clients (a server dialled back).
    pub client_accepts: u64,
    /// `ms_handle_reset` on clients.
    pub client_resets: u64,
    /// `ms_handle_reset` on servers.
    pub server_resets: u64,
    /// `ms_handle_remote_reset` on clients.
    pub client_remote_resets: u64,
    /// `ms_handle_remote_reset` on servers.
    pub server_remote_resets: u64,
    /// Of `client_remote_resets`, those on a connection already marked down when the
    /// dispatcher heard of it.
    pub client_remote_resets_marked_down: u64,
    /// Pending messages dropped by a lossy reset.
    pub lost: u64,
    /// Pending messages discarded by a remote reset of their session.
    pub discarded_by_remote_reset: u64,
    /// Pending messages abandoned by the workload's own `mark_down`.
    pub abandoned: u64,
    /// Echoes that arrived on a connection after the workload marked it down or it was
    /// reset.
    pub late_after_gone: u64,
    /// Echoes of messages a remote reset had discarded that arrived anyway.
    pub late_forgiven: u64,
    /// Messages whose echo was overtaken by a later one's before their session's
    /// remote reset was reported (the reset is queued, the echoes are fast-dispatched);
    /// each must be explained by that reset, and is then counted as discarded by it.
    pub overtaken: u64,
    /// Echoes a server could not send (its connection closed).
    pub echo_send_failures: u64,
    /// Sum of every messenger's v1 counters.
    pub v1: CounterValues,
    /// Everything the checker objected to.
    pub failures: Vec<String>,
    /// Failures beyond those kept in `failures`.
    pub more_failures: u64,
    /// Wall time of the operations and the drain.
    pub wall: Duration,
    /// Sends refused with `QueueFull` (only with [`Options::refusals_allowed`]).
    pub refused_sends: u64,
    /// The most a client connection held for sending, read after each send
    /// (`Connection::queued_send_bytes`; only with [`Options::refusals_allowed`]).
    pub max_queued_send_bytes: u64,
    /// The longest time from a send to its echo.
    pub max_echo_latency: Duration,
    /// Received messages held back by `ms_inject_delay_*`, on the servers and on the
    /// clients.
    pub delayed_messages: (u64, u64),
    /// Accept decisions, new sessions' replies and replace hand-offs held back by
    /// `ms_inject_internal_delays`.
    pub internal_delays: u64,
    /// Writes refused as congested by `ms_inject_network_congestion`, of the writes
    /// that drew for it.
    pub congested_writes: (u64, u64),
}

impl Report {
    fn fail(&mut self, what: String) {
        if self.failures.len() < MAX_FAILURES_KEPT {
            self.failures.push(what);
        } else {
            self.more_failures += 1;
        }
    }

    /// One line of figures for the test log.
    pub fn summary(&self) -> String {
        format!(
            "{} checked messages ({} MiB) + {} noise, {} echoed; {} connections, {} mark_downs, \
             {} injected cuts, {} proxy cuts, {} of {} socket operations failed by injection; connects c/s {}/{}, accepts s/c {}/{}; resets c/s \
             {}/{}, remote resets c/s {}/{} (c after mark_down {}); lost {}, discarded by remote reset {}, abandoned \
             {}, late after gone {}, late forgiven {}, overtaken before their remote reset \
             {}; v1 {:?}; delayed messages s/c {:?}, \
             internal delays {}, congested writes {:?}, refused sends {}, max queued {} B, \
             max echo latency {:?}; {:?}",
            self.sent,
            self.bytes >> 20,
            self.noise,
            self.echoed,
            self.connections,
            self.mark_downs,
            self.cuts,
            self.proxy_cuts,
            self.injected_socket_failures,
            self.injection_socket_ops,
            self.client_connects,
            self.server_connects,
            self.server_accepts,
            self.client_accepts,
            self.client_resets,
            self.server_resets,
            self.client_remote_resets,
            self.server_remote_resets,
            self.client_remote_resets_marked_down,
            self.lost,
            self.discarded_by_remote_reset,
            self.abandoned,
            self.late_after_gone,
            self.late_forgiven,
            self.overtaken,
            self.v1,
            self.delayed_messages,
            self.internal_delays,
            self.congested_writes,
            self.refused_sends,
            self.max_queued_send_bytes,
            self.max_echo_latency,
            self.wall
        )
    }
}

/// A connection's key: (messenger index, connection id). Ids are per messenger.
type Key = (usize, u64);

/// A client-side connection of the workload and what it still waits for.
struct Tracked {
    conn: Connection,
    client: usize,
    server: usize,
    /// Sent and not yet echoed, in send order: (sequence number, payload, when sent).
    sent: VecDeque<(u64, Bytes, Instant)>,
    /// The last sequence number queued on it (0 before the first).
    last_sent: u64,
}

/// One client connection's session opens, as the checker needs them to place a remote
/// reset: `ms_handle_remote_reset` is queued when the session is reset, but the echoes
/// of the session that opens next are fast-dispatched on the worker and may overtake
/// it. What the reset discarded was queued before that next open; what was queued
/// after that open (its `ms_handle_fast_*` hook) was not discarded.
#[derive(Default)]
struct Opens {
    /// For each open whose queued `ms_handle_connect`/`ms_handle_accept` has not run
    /// yet, the last sequence number queued on the connection before it (in order).
    unreported: VecDeque<u64>,
    /// The same for the latest open.
    latest: u64,
}

#[derive(Default)]
struct State {
    /// Client-side connections in use.
    live: HashMap<Key, Tracked>,
    /// Connections the workload left (marked down, or reset): later echoes are counted.
    gone: HashSet<Key>,
    /// Messages discarded by a remote reset: an echo of one is tolerated.
    forgiven: HashSet<u64>,
    /// Per client connection: its session opens (see [`Opens`]).
    opens: HashMap<Key, Opens>,
    /// Per client connection: messages whose echo was overtaken by the echo of one
    /// queued later, all queued before the session that delivered it opened. Only a
    /// remote reset of that connection, reported late, explains them; one left at the
    /// end was lost.
    overtaken: HashMap<Key, Vec<u64>>,
    in_flight: usize,
    /// Server-side connections seen (for cuts from the server side).
    server_conns: HashMap<Key, Connection>,
    /// The workload is over and the messengers shut down: the `ms_handle_reset` each
    /// session still going hears then (as from Ceph's shutdown) is not the workload's.
    shutting_down: bool,
    report: Report,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever `in_flight` drops.
    drained: Condvar,
    lossy: bool,
    /// The protocol every session must speak ([`Options::proto`]).
    proto: ProtocolVersion,
}

impl Shared {
    /// Fails the run if `conn` (just opened) speaks another protocol than the run's.
    fn check_protocol(&self, conn: &Connection, side: &str) {
        if conn.protocol() != Some(self.proto) {
            let what = format!("{side} session {} speaks {:?}", conn.id(), conn.protocol());
            self.state.lock().report.fail(what);
        }
    }

    /// Removes `t`'s pending messages from the flight count; returns how many.
    fn release(st: &mut State, t: &Tracked) -> u64 {
        st.in_flight -= t.sent.len();
        t.sent.len() as u64
    }
}

impl State {
    /// `ms_handle_fast_connect`/`ms_handle_fast_accept` of client connection `key`: a
    /// session opened, before any of its messages is dispatched.
    fn opened(&mut self, key: Key) {
        let last = self.live.get(&key).map_or(0, |t| t.last_sent);
        let opens = self.opens.entry(key).or_default();
        opens.unreported.push_back(last);
        opens.latest = last;
    }

    /// The queued `ms_handle_connect`/`ms_handle_accept` of `key`'s oldest unreported
    /// open ran.
    fn open_reported(&mut self, key: Key) {
        if let Some(opens) = self.opens.get_mut(&key) {
            opens.unreported.pop_front();
        }
    }

    /// Checks the echo of message `seq` on client connection `key`; true if it took a
    /// message out of flight.
    fn echo(&mut self, key: Key, seq: u64, data: &Bytes) -> bool {
        let Some(t) = self.live.get_mut(&key) else {
            if self.gone.contains(&key) {
                self.report.late_after_gone += 1;
            } else {
                self.report.fail(format!("echo {seq} on conn {key:?} the workload never used"));
            }
            return false;
        };
        let head = t.sent.front().map(|h| h.0);
        let pos = t.sent.iter().position(|(s, ..)| *s == seq);
        let latest_open = self.opens.get(&key).map_or(0, |o| o.latest);
        let ahead = match pos {
            Some(0) => 0,
            _ if self.forgiven.remove(&seq) => {
                self.report.late_forgiven += 1;
                return false;
            }
            // Everything ahead of it was queued before the session that delivered it
            // opened: a remote reset may have discarded it, its ms_handle_remote_reset
            // still queued behind this fast-dispatched echo. That reset must come.
            Some(p) if t.sent.iter().take(p).all(|(s, ..)| *s <= latest_open) => p,
            Some(_) => {
                let what = format!(
                    "conn {key:?} (client {} → server {}): echo {seq} before {head:?}: lost or \
                     reordered",
                    t.client, t.server
                );
                self.report.fail(what);
                return false;
            }
            None => {
                let what = format!(
                    "conn {key:?} (client {} → server {}): echo {seq} not pending (head \
                     {head:?}): duplicate or stray",
                    t.client, t.server
                );
                self.report.fail(what);
                return false;
            }
        };
        if ahead > 0 {
            let overtaken: Vec<u64> = t.sent.drain(..ahead).map(|(s, ..)| s).collect();
            self.in_flight -= ahead;
            self.report.overtaken += ahead as u64;
            self.overtaken.entry(key).or_default().extend(overtaken);
        }
        let Some((_, payload, at)) = t.sent.pop_front() else { return ahead > 0 };
        if *data != payload {
            let what = format!(
                "conn {key:?}: echo {seq} payload differs ({} bytes, sent {})",
                data.len(),
                payload.len()
            );
            self.report.fail(what);
        }
        self.in_flight -= 1;
        self.report.echoed += 1;
        self.report.max_echo_latency = self.report.max_echo_latency.max(at.elapsed());
        true
    }

    /// `ms_handle_remote_reset` of client connection `key`. The events of one
    /// connection are queued in order, so the reset came before the oldest open not yet
    /// reported: what it discarded was queued no later than that open (if none opened
    /// since, anything pending may be gone). Returns how many messages it explains.
    fn remote_reset(&mut self, key: Key) -> u64 {
        let bound = self.opens.get(&key).and_then(|o| o.unreported.front().copied());
        let covered = |seq: u64| bound.is_none_or(|b| seq <= b);
        let mut n = 0;
        if let Some(overtaken) = self.overtaken.get_mut(&key) {
            let before = overtaken.len();
            overtaken.retain(|&seq| !covered(seq));
            n += (before - overtaken.len()) as u64;
            if overtaken.is_empty() {
                self.overtaken.remove(&key);
            }
        }
        if let Some(t) = self.live.get_mut(&key) {
            // Pending and queued before the next open: discarded, or not (a message
            // still in the connection's mailbox at the reset survives); its echo is
            // tolerated either way.
            while let Some(&(seq, ..)) = t.sent.front().filter(|(seq, ..)| covered(*seq)) {
                t.sent.pop_front();
                self.forgiven.insert(seq);
                self.in_flight -= 1;
                n += 1;
            }
        }
        n
    }
}

/// The clients' dispatcher: checks every echo.
struct ClientSide {
    shared: Arc<Shared>,
    /// Index of its client messenger.
    client: usize,
}

impl Dispatcher<Connection> for ClientSide {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_PONG
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        if self.shared.state.lock().echo((self.client, conn.id()), msg.tid(), msg.data()) {
            self.shared.drained.notify_all();
        }
    }
    fn ms_handle_fast_connect(&self, conn: &Connection) {
        self.shared.state.lock().opened((self.client, conn.id()));
    }
    fn ms_handle_fast_accept(&self, conn: &Connection) {
        self.shared.state.lock().opened((self.client, conn.id()));
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        self.shared.check_protocol(conn, "client (connected)");
        let mut st = self.shared.state.lock();
        st.report.client_connects += 1;
        st.open_reported((self.client, conn.id()));
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        let mut st = self.shared.state.lock();
        st.report.client_accepts += 1;
        st.open_reported((self.client, conn.id()));
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let mut st = self.shared.state.lock();
        let st = &mut *st;
        if st.shutting_down {
            return true;
        }
        st.report.client_resets += 1;
        let key = (self.client, conn.id());
        if let Some(t) = st.live.remove(&key) {
            let n = Shared::release(st, &t);
            st.gone.insert(key);
            if self.shared.lossy {
                st.report.lost += n;
            } else {
                st.report.fail(format!("ms_handle_reset on lossless conn {key:?} ({n} pending)"));
            }
            self.shared.drained.notify_all();
        }
        true
    }
    fn ms_handle_remote_reset(&self, conn: &Connection) {
        let mut st = self.shared.state.lock();
        let st = &mut *st;
        st.report.client_remote_resets += 1;
        if dispatch::ConnectionRef::is_marked_down(conn) {
            st.report.client_remote_resets_marked_down += 1;
        }
        // The session's queue is gone (Ceph's session_reset): so are its echoes.
        let n = st.remote_reset((self.client, conn.id()));
        st.report.discarded_by_remote_reset += n;
        self.shared.drained.notify_all();
    }
}

/// The servers' dispatcher: echoes every checked message on its connection.
struct ServerSide {
    shared: Arc<Shared>,
    /// Index of its server messenger.
    server: usize,
}

impl Dispatcher<Connection> for ServerSide {
    fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> Dispatched {
        // Noise: taken and dropped, after waiting its turn in the dispatch queue.
        Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type() == MSG_PING
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        let mut echo = Message::new(MSG_PONG, msg.front().clone());
        echo.set_tid(msg.tid());
        echo.set_data(msg.data().clone());
        if conn.send_message(echo).is_err() {
            self.shared.state.lock().report.echo_send_failures += 1;
        }
    }
    fn ms_handle_connect(&self, conn: &Connection) {
        self.shared.check_protocol(conn, "server (connected)");
        let mut st = self.shared.state.lock();
        st.report.server_connects += 1;
        st.server_conns.insert((self.server, conn.id()), conn.clone());
    }
    fn ms_handle_accept(&self, conn: &Connection) {
        self.shared.check_protocol(conn, "server (accepted)");
        let mut st = self.shared.state.lock();
        st.report.server_accepts += 1;
        st.server_conns.insert((self.server, conn.id()), conn.clone());
    }
    fn ms_handle_reset(&self, conn: &Connection) -> bool {
        let mut st = self.shared.state.lock();
        if st.shutting_down {
            return true;
        }
        st.report.server_resets += 1;
        st.server_conns.remove(&(self.server, conn.id()));
        if !self.shared.lossy {
            st.report.fail(format!("ms_handle_reset on lossless server conn {}", conn.id()));
        }
        true
    }
    fn ms_handle_remote_reset(&self, _conn: &Connection) {
        self.shared.state.lock().report.server_remote_resets += 1;
    }
}

/// The messengers of a run.
struct Cluster {
    pool: Arc<WorkerPool>,
    servers: Vec<Messenger>,
    clients: Vec<Messenger>,
    /// Where clients dial each server (its own address, or its proxy's).
    server_addrs: Vec<EntityAddr>,
    proxies: Vec<ChaosProxy>,
}

impl Cluster {
    fn start(opts: &Options, shared: &Arc<Shared>) -> Cluster {
        let pool = Arc::new(
            WorkerPool::new(WorkerPoolConfig {
                workers: opts.workers,
                name_prefix: "synth-w".into(),
                ..WorkerPoolConfig::default()
            })
            .expect("worker pool"),
        );
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut servers = Vec::new();
        let mut server_addrs = Vec::new();
        let mut proxies = Vec::new();
        let server_config = opts.server_config.as_ref().unwrap_or(&opts.config);
        for i in 0..opts.servers {
            let m = Messenger::with_pool(
                EntityName::new(EntityType::OSD, i as i64),
                1000 + i as u32,
                server_config.clone(),
                pool.clone(),
            )
            .expect("server messenger");
            m.set_default_policy(opts.server_policy);
            let bound = m.bind(loopback).expect("bind server");
            m.start().expect("start server");
            m.add_dispatcher_head(Arc::new(ServerSide { shared: shared.clone(), server: i }))
                .expect("server dispatcher");
            let addr = match &opts.chaos {
                Some(chaos) => {
                    assert!(opts.server_policy.server, "a chaos proxy needs a server policy");
                    let mut chaos = chaos.clone();
                    chaos.seed = chaos.seed.wrapping_add(i as u64);
                    let proxy = ChaosProxy::start(bound, chaos).expect("chaos proxy");
                    proxy.arm();
                    let addr = EntityAddr::legacy(proxy.addr(), m.my_addr().nonce);
                    let addr = addr_for(opts.proto, addr);
                    proxies.push(proxy);
                    addr
                }
                None => addr_for(opts.proto, m.my_addr()),
            };
            server_addrs.push(addr);
            servers.push(m);
        }
        let mut clients = Vec::new();
        for i in 0..opts.clients {
            let m = Messenger::with_pool(
                EntityName::new(EntityType::CLIENT, 100 + i as i64),
                2000 + i as u32,
                opts.config.clone(),
                pool.clone(),
            )
            .expect("client messenger");
            m.set_default_policy(opts.client_policy);
            if opts.client_policy.standby {
                m.bind(loopback).expect("bind client");
            }
            m.start().expect("start client");
            m.add_dispatcher_head(Arc::new(ClientSide { shared: shared.clone(), client: i }))
                .expect("client dispatcher");
            clients.push(m);
        }
        Cluster { pool, servers, clients, server_addrs, proxies }
    }

    fn all(&self) -> impl Iterator<Item = &Messenger> {
        self.servers.iter().chain(self.clients.iter())
    }
}

/// Payloads from 32 B to 1 MiB, mostly small (so a CI run moves 10,000 of them in
/// seconds): 90 % up to 4 KiB, 9 % up to 64 KiB, 1 % up to 1 MiB; then
/// `opts.large_payloads` more of `opts.large_payload_len`.
fn make_payloads(rng: &mut SmallRng, opts: &Options) -> Vec<Bytes> {
    let mut payloads: Vec<Bytes> = (0..PAYLOADS)
        .map(|i| {
            let max = match i % 100 {
                0 => 1 << 20,
                1..=9 => 64 << 10,
                _ => 4 << 10,
            };
            let len = rng.gen_range(32..=max);
            (0..len).map(|_| rng.gen::<u8>()).collect::<Vec<u8>>().into()
        })
        .collect();
    for _ in 0..opts.large_payloads {
        let mut large = vec![0; rng.gen_range(opts.large_payload_len.clone())];
        rng.fill(&mut large[..]);
        payloads.push(large.into());
    }
    payloads
}

/// The workload: operations on random connections until the budget is spent.
struct Workload<'a> {
    opts: &'a Options,
    shared: &'a Arc<Shared>,
    cluster: &'a Cluster,
    rng: SmallRng,
    payloads: Vec<Bytes>,
    next_seq: u64,
}

impl Workload<'_> {
    fn connect(&mut self) {
        let (c, s) =
            (self.rng.gen_range(0..self.opts.clients), self.rng.gen_range(0..self.opts.servers));
        let mut st = self.shared.state.lock();
        if st.live.len() >= self.opts.max_connections {
            return;
        }
        drop(st);
        let conn =
            self.cluster.clients[c].connect_to(EntityType::OSD, self.cluster.server_addrs[s]);
        st = self.shared.state.lock();
        let key = (c, conn.id());
        if !st.live.contains_key(&key) && !st.gone.contains(&key) {
            st.report.connections += 1;
            let t = Tracked { conn, client: c, server: s, sent: VecDeque::new(), last_sent: 0 };
            st.live.insert(key, t);
        }
    }

    fn random_live(&mut self) -> Option<(Key, Connection, usize, usize)> {
        let st = self.shared.state.lock();
        if st.live.is_empty() {
            return None;
        }
        let k = self.rng.gen_range(0..st.live.len());
        st.live.iter().nth(k).map(|(id, t)| (*id, t.conn.clone(), t.client, t.server))
    }

    fn mark_down(&mut self) {
        if self.shared.state.lock().live.len() < 10 {
            return;
        }
        let Some((id, conn, c, s)) = self.random_live() else { return };
        {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            if let Some(t) = st.live.remove(&id) {
                let n = Shared::release(st, &t);
                st.report.abandoned += n;
                st.report.mark_downs += 1;
                st.gone.insert(id);
                self.shared.drained.notify_all();
            }
        }
        conn.mark_down();
        if self.opts.mark_down_both_ends {
            // Lossless peers: the server's session to that client goes too, or it would
            // reconnect and resend into the client's next session (Ceph does the same).
            let client = addr_for(self.opts.proto, self.cluster.clients[c].my_addr());
            self.cluster.servers[s].connect_to(EntityType::CLIENT, client).mark_down();
        }
    }

    fn cut(&mut self) {
        let target = if self.rng.gen_bool(0.5) {
            self.random_live().map(|(_, c, _, _)| c)
        } else {
            let st = self.shared.state.lock();
            if st.server_conns.is_empty() {
                None
            } else {
                let k = self.rng.gen_range(0..st.server_conns.len());
                st.server_conns.values().nth(k).cloned()
            }
        };
        if let Some(conn) = target {
            conn.inject_socket_failure();
            self.shared.state.lock().report.cuts += 1;
        }
    }

    /// Waits until fewer than `max_in_flight` messages are in flight; false on timeout.
    fn wait_for_room(&self) -> bool {
        let deadline = Instant::now() + self.opts.drain_deadline;
        let mut st = self.shared.state.lock();
        while st.in_flight >= self.opts.max_in_flight {
            if self.shared.drained.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    fn send(&mut self) -> bool {
        if !self.wait_for_room() {
            return false;
        }
        let Some((id, conn, _, _)) = self.random_live() else {
            self.connect();
            return true;
        };
        if self.rng.gen_ratio(1, 20) {
            let mut noise = Message::new(MSG_NOISE, Bytes::from_static(b"command"));
            noise.set_priority(NOISE_PRIORITY);
            if conn.send_message(noise).is_ok() {
                self.shared.state.lock().report.noise += 1;
            }
            return true;
        }
        let payload = self.payloads[self.rng.gen_range(0..self.payloads.len())].clone();
        self.send_checked(id, &conn, payload);
        true
    }

    /// Sends one checked message on `conn`; false if it was not queued.
    fn send_checked(&mut self, id: Key, conn: &Connection, payload: Bytes) -> bool {
        self.next_seq += 1;
        let seq = self.next_seq;
        {
            let mut st = self.shared.state.lock();
            let Some(t) = st.live.get_mut(&id) else { return false };
            t.sent.push_back((seq, payload.clone(), Instant::now()));
            t.last_sent = seq;
            st.in_flight += 1;
            st.report.sent += 1;
            st.report.bytes += payload.len() as u64;
        }
        let len = payload.len() as u64;
        let mut msg = Message::new(MSG_PING, Bytes::copy_from_slice(&seq.to_le_bytes()));
        msg.set_tid(seq);
        msg.set_data(payload);
        let sent = conn.send_message(msg);
        if let Err(e) = &sent {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            // Unsent only if it is still pending here: a reset that ran between the
            // push above and this failure already counted it (lost, or discarded by a
            // remote reset), and uncounting it too would count it twice.
            let mut unsent = false;
            if let Some(t) = st.live.get_mut(&id) {
                if t.sent.back().is_some_and(|(s, ..)| *s == seq) {
                    t.sent.pop_back();
                    st.in_flight -= 1;
                    unsent = true;
                }
                let refusal = self.opts.refusals_allowed && *e == SendError::QueueFull;
                if refusal {
                    st.report.refused_sends += 1;
                } else if !self.shared.lossy {
                    st.report.fail(format!("send on live lossless conn {id:?} failed: {e}"));
                }
            }
            if unsent {
                st.report.sent -= 1;
                st.report.bytes -= len;
            }
        }
        if self.opts.refusals_allowed {
            self.check_send_bound(id, conn, sent.is_ok());
        }
        sent.is_ok()
    }

    /// Large messages back to back on one connection until one is refused (or
    /// [`MAX_BURST`] were queued): congestion with multi-MiB messages reaches the send
    /// bound on purpose.
    fn burst(&mut self) {
        let large = self.opts.large_payloads.min(self.payloads.len());
        let Some((id, conn, _, _)) = self.random_live() else { return };
        for _ in 0..MAX_BURST {
            let k = self.payloads.len() - 1 - self.rng.gen_range(0..large.max(1));
            let payload = self.payloads[k].clone();
            if !self.send_checked(id, &conn, payload) {
                break;
            }
        }
    }

    /// The clients' send bound holds after a send, accepted or refused: only this
    /// thread adds to a client connection's queue, and its driver only takes from it, so
    /// what it holds now is the most it held since the send.
    fn check_send_bound(&self, id: Key, conn: &Connection, accepted: bool) {
        let bound = self.opts.config.max_queued_bytes;
        let held = conn.queued_send_bytes();
        let mut st = self.shared.state.lock();
        st.report.max_queued_send_bytes = st.report.max_queued_send_bytes.max(held);
        if held > bound {
            let how = if accepted { "accepted" } else { "refused" };
            st.report.fail(format!(
                "conn {id:?} holds {held} bytes for sending after a send ({how}), above \
                 max_queued_bytes {bound}"
            ));
        }
    }

    /// Runs operations until the message or time budget is spent. False if the run
    /// stalled (in flight never drained below the limit).
    fn run(&mut self) -> bool {
        let started = Instant::now();
        for _ in 0..self.opts.max_connections / 4 {
            self.connect();
        }
        loop {
            let done = match self.opts.duration {
                Some(d) => started.elapsed() >= d,
                None => self.shared.state.lock().report.sent >= self.opts.messages,
            };
            if done {
                return true;
            }
            if self.opts.cut_one_in > 0 && self.rng.gen_ratio(1, self.opts.cut_one_in) {
                self.cut();
            }
            if self.opts.burst_one_in > 0 && self.rng.gen_ratio(1, self.opts.burst_one_in) {
                self.burst();
            }
            match self.rng.gen_range(0..100) {
                95.. => self.connect(),
                90..=94 => self.mark_down(),
                10..=89 => {
                    if !self.send() {
                        return false;
                    }
                }
                _ => std::thread::sleep(Duration::from_micros(self.rng.gen_range(100..1000))),
            }
        }
    }
}

/// The pending lists and the messengers' connections, for a failure message.
fn dump(shared: &Shared, cluster: &Cluster) -> String {
    let mut out = String::new();
    let st = shared.state.lock();
    let _ = writeln!(out, "{} messages in flight:", st.in_flight);
    for ((_, id), t) in st.live.iter().filter(|(_, t)| !t.sent.is_empty()) {
        let seqs: Vec<u64> = t.sent.iter().take(8).map(|(s, ..)| *s).collect();
        let _ = writeln!(
            out,
            "  conn {id} {:?} client {} → server {}: {} pending, first {seqs:?}",
            t.conn,
            t.client,
            t.server,
            t.sent.len()
        );
    }
    drop(st);
    for (i, m) in cluster.clients.iter().enumerate() {
        let _ = writeln!(out, "client {i} {}: {}", m.my_addr(), m.dump_connections());
    }
    for (i, m) in cluster.servers.iter().enumerate() {
        let _ = writeln!(out, "server {i} {}: {}", m.my_addr(), m.dump_connections());
    }
    out
}

fn dispatch_queue_len(m: &Messenger) -> u64 {
    m.counters_json()["dispatch_queue"]["len"].as_u64().unwrap_or(u64::MAX)
}

/// Runs the workload, drains it, shuts everything down and checks what is left. The
/// report's `failures` lists every broken promise (empty on success).
pub fn run(opts: &Options) -> Report {
    crate::loopback::init_logging();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        drained: Condvar::new(),
        lossy: opts.lossy,
        proto: opts.proto,
    });
    let cluster = Cluster::start(opts, &shared);
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let payloads = make_payloads(&mut rng, opts);
    let started = Instant::now();
    let mut workload =
        Workload { opts, shared: &shared, cluster: &cluster, rng, payloads, next_seq: 0 };
    if !workload.run() {
        let what = format!(
            "stalled: in flight never dropped below the limit\n{}",
            dump(&shared, &cluster)
        );
        shared.state.lock().report.fail(what);
    }
    for proxy in &cluster.proxies {
        proxy.disarm();
    }
    // Everything still pending drains, cuts included.
    let deadline = Instant::now() + opts.drain_deadline;
    {
        let mut st = shared.state.lock();
        while st.in_flight > 0 {
            if shared.drained.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
    }
    if shared.state.lock().in_flight > 0 {
        let what =
            format!("not drained within {:?}\n{}", opts.drain_deadline, dump(&shared, &cluster));
        shared.state.lock().report.fail(what);
    }
    // Noise may still wait behind a slow dispatcher, and a session cut by an injected
    // failure just before the end may still be reconnecting (its ms_handle_connect is
    // queued when it opens): every queue empties, all of them at once.
    // Judged once they were all empty at one moment, or at the deadline: a session that
    // opens after that moment queues its ms_handle_connect, which is not a stuck item.
    let deadline = Instant::now() + opts.drain_deadline;
    let still_queued = loop {
        let queued: Vec<String> = cluster
            .all()
            .enumerate()
            .filter_map(|(i, m)| {
                let len = dispatch_queue_len(m);
                (len > 0).then(|| format!("messenger {i}: {len} items still in its dispatch queue"))
            })
            .collect();
        if queued.is_empty() || Instant::now() >= deadline {
            break queued;
        }
        std::thread::yield_now();
    };
    let wall = started.elapsed();
    {
        // Every remote reset was reported by now: an overtaken message none explains
        // was lost.
        let mut st = shared.state.lock();
        let st = &mut *st;
        for (key, seqs) in std::mem::take(&mut st.overtaken) {
            st.report.lost += seqs.len() as u64;
            let what = format!(
                "conn {key:?}: {} message(s) overtaken by later echoes and no remote reset \
                 of the session explains them: lost (first {:?})",
                seqs.len(),
                &seqs[..seqs.len().min(8)]
            );
            st.report.fail(what);
        }
    }
    let mut v1 = CounterValues::default();
    for m in cluster.all() {
        let c = m.v1_counters();
        v1.connects += c.connects;
        v1.wait += c.wait;
        v1.retry_global += c.retry_global;
        v1.retry_session += c.retry_session;
        v1.reset_session += c.reset_session;
        v1.old_seq_dropped += c.old_seq_dropped;
    }
    let sum = |ms: &[Messenger], counter: fn(&WorkerCounters) -> &std::sync::atomic::AtomicU64| {
        ms.iter().flat_map(|m| m.worker_counters()).map(|c| counter(c).load(Relaxed)).sum::<u64>()
    };
    let both = |counter| sum(&cluster.servers, counter) + sum(&cluster.clients, counter);
    let injected = both(|c| &c.inject_socket_failures);
    let socket_ops = both(|c| &c.inject_socket_ops);
    let delayed_messages = (
        sum(&cluster.servers, |c| &c.inject_delayed_messages),
        sum(&cluster.clients, |c| &c.inject_delayed_messages),
    );
    let internal_delays = both(|c| &c.inject_internal_delays);
    let congested_writes = (both(|c| &c.inject_congested_writes), both(|c| &c.inject_writes));
    let mut late = still_queued;
    shared.state.lock().shutting_down = true;
    for m in cluster.all() {
        m.shutdown();
    }
    // Ceph's wait(): on the shared pool (still running) every connection is gone after it.
    for (i, m) in cluster.all().enumerate() {
        m.wait();
        if m.connection_count() > 0 {
            late.push(format!("messenger {i}: {} connections after wait()", m.connection_count()));
        }
        if dispatch_queue_len(m) > 0 {
            late.push(format!("messenger {i}: dispatch queue not empty after shutdown"));
        }
    }
    let proxy_cuts = cluster.proxies.iter().map(|p| p.stats().cuts).sum();
    cluster.pool.shutdown();
    let mut st = shared.state.lock();
    for what in late {
        st.report.fail(what);
    }
    st.report.v1 = v1;
    st.report.wall = wall;
    st.report.proxy_cuts = proxy_cuts;
    st.report.injected_socket_failures = injected;
    st.report.injection_socket_ops = socket_ops;
    st.report.delayed_messages = delayed_messages;
    st.report.internal_delays = internal_delays;
    st.report.congested_writes = congested_writes;
    st.report.clone()
}

/// Runs `opts` — for `ASYNCMSGR_SOAK_SECS` seconds instead when that is set — prints its
/// seed and figures, and asserts what every variant promises: the checker found nothing,
/// a CI run sent at least `min_messages`, config-level socket failures were injected, and
/// every checked message is accounted for exactly once.
pub fn run_and_check(mut opts: Options, min_messages: u64) -> Report {
    opts.duration = crate::soak::soak_duration();
    let report = run(&opts);
    eprintln!("{} over {:?} (seed {}): {}", opts.name, opts.proto, opts.seed, report.summary());
    assert!(
        report.failures.is_empty(),
        "{} (MSGR_SEED={}): {} failures (+{} more):\n{}",
        opts.name,
        opts.seed,
        report.failures.len(),
        report.more_failures,
        report.failures.join("\n")
    );
    if opts.duration.is_none() {
        assert!(report.sent >= min_messages, "only {} messages sent", report.sent);
    }
    // Config-level injection (`ms_inject_socket_failures`) was on and failed operations.
    assert!(report.injected_socket_failures > 0, "no socket operation failed by injection");
    assert_eq!(
        report.sent,
        report.echoed + report.abandoned + report.discarded_by_remote_reset + report.lost,
        "sent = echoed + abandoned by mark_down + discarded by a remote reset + lost"
    );
    report
}

/// What a lossless run promises on top of [`run_and_check`]: nothing lost, no session
/// reset, cuts were made and reconnected, and no resend of an already delivered message
/// ever reached a receiver (the SEQ exchange trims every replay to what the peer lacks).
pub fn assert_lossless(r: &Report) {
    assert_eq!(r.lost, 0, "a lossless session lost messages");
    assert_eq!((r.client_resets, r.server_resets), (0, 0), "ms_handle_reset on lossless sessions");
    assert!(r.cuts > 0, "no cut was injected");
    assert_eq!(r.v1.old_seq_dropped, 0, "duplicates reached a receiver's dedup");
    assert!(
        r.v1.connects > r.connections,
        "the cuts caused no reconnect: {} connect attempts for {} connections",
        r.v1.connects,
        r.connections
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checker with one tracked client connection (never started: the checker only
    /// keys on it).
    fn checker() -> (State, Key, Messenger) {
        let m =
            Messenger::new(EntityName::new(EntityType::CLIENT, 1), 1, MessengerConfig::default())
                .expect("messenger");
        let free = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let peer = EntityAddr::legacy(free, 1);
        let conn = m.connect_to(EntityType::OSD, peer);
        let key = (0, conn.id());
        let mut st = State::default();
        let t = Tracked { conn, client: 0, server: 0, sent: VecDeque::new(), last_sent: 0 };
        st.live.insert(key, t);
        (st, key, m)
    }

    fn send(st: &mut State, key: Key, seq: u64) {
        let t = st.live.get_mut(&key).expect("tracked");
        t.sent.push_back((seq, Bytes::from_static(b"x"), Instant::now()));
        t.last_sent = seq;
        st.in_flight += 1;
        st.report.sent += 1;
    }

    fn echo(st: &mut State, key: Key, seq: u64) {
        st.echo(key, seq, &Bytes::from_static(b"x"));
    }

    /// The soak's "lost" echo (issue 11): message 1 is queued while the session is in
    /// standby, the peer answers the reconnect with RESETSESSION (message 1 discarded),
    /// the session reopens, message 2 is sent and its fast-dispatched echo arrives before
    /// the queued ms_handle_remote_reset. Once the reset is reported, nothing is missing.
    #[test]
    fn an_echo_overtaking_a_queued_remote_reset_is_explained_by_it() {
        let (mut st, key, _m) = checker();
        send(&mut st, key, 1);
        st.opened(key);
        send(&mut st, key, 2);
        echo(&mut st, key, 2);
        assert!(st.report.failures.is_empty(), "{:?}", st.report.failures);
        assert_eq!((st.report.overtaken, st.in_flight), (1, 0));
        assert_eq!(st.remote_reset(key), 1, "the reset explains message 1");
        st.open_reported(key);
        assert!(st.overtaken.is_empty());
        assert_eq!(st.report.echoed, 1);
    }

    /// Without the remote reset, the overtaken message stays unexplained (the end of
    /// the run fails it as lost).
    #[test]
    fn an_overtaken_message_without_a_remote_reset_stays_unexplained() {
        let (mut st, key, _m) = checker();
        send(&mut st, key, 1);
        st.opened(key);
        send(&mut st, key, 2);
        echo(&mut st, key, 2);
        st.open_reported(key);
        assert_eq!(st.overtaken.get(&key), Some(&vec![1]));
    }

    /// A reset reported before a later open explains only what was queued before the
    /// open that followed it: a message queued after that open and overtaken is not
    /// covered.
    #[test]
    fn a_remote_reset_covers_only_what_was_queued_before_the_next_open() {
        let (mut st, key, _m) = checker();
        send(&mut st, key, 1);
        st.opened(key); // the open after the reset: marker 1
        send(&mut st, key, 2);
        st.opened(key); // a later reconnect: marker 2
        send(&mut st, key, 3);
        echo(&mut st, key, 3); // 1 and 2 overtaken
        assert_eq!(st.remote_reset(key), 1, "only message 1 was queued before the open");
        assert_eq!(st.overtaken.get(&key), Some(&vec![2]));
    }

    /// A message queued after the session opened cannot have been discarded by an
    /// earlier reset: an echo overtaking it fails at once.
    #[test]
    fn an_echo_overtaking_a_message_of_its_own_session_fails() {
        let (mut st, key, _m) = checker();
        st.opened(key);
        send(&mut st, key, 1);
        send(&mut st, key, 2);
        echo(&mut st, key, 2);
        assert_eq!(st.report.failures.len(), 1, "{:?}", st.report.failures);
        assert!(st.report.failures[0].contains("lost or reordered"));
        assert_eq!(st.report.overtaken, 0);
    }

    /// Duplicates still fail.
    #[test]
    fn a_second_echo_fails_as_a_duplicate() {
        let (mut st, key, _m) = checker();
        send(&mut st, key, 1);
        echo(&mut st, key, 1);
        echo(&mut st, key, 1);
        assert_eq!(st.report.failures.len(), 1, "{:?}", st.report.failures);
        assert!(st.report.failures[0].contains("duplicate or stray"));
    }
}
