//! The worker-owned connection driver (Ceph's `AsyncConnection` minus the protocol
//! logic, which lives in the protocol crate's session machine, reached through
//! `crate::machine`).
//!
//! A driver is an `event_center` handler. It is the only code that touches its socket and
//! its session machine. Every entry point (readiness, timer, notify) ends in
//! [`Driver::pump`], which: drains the handle's mailbox → reads (bounded by
//! `read_budget`) → handles machine events → writes (vectored, every queued frame in one
//! `writev`) → derives the mio interest and the one armed timer from the machine.
//!
//! The parts, one file each: socket I/O (`io`), the mailbox's driver end (`mailbox`),
//! receive windows and send bounds (`budget`), the machine's events (`events`), the
//! accept decision and the replace hand-off (`accept`), the end of a driver (`cleanup`),
//! and the fault-injection seams (`seams`, empty without the feature).

mod accept;
mod authentication;
mod budget;
mod cleanup;
mod events;
mod io;
mod mailbox;
mod seams;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use dispatch::ReadBatch;
use event_center::{CenterHandle, Context, Handler, HandlerId, Ready, TimerId, TimerTarget};
use mio::net::TcpStream;
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::Message;

use self::budget::{Credit, RecvBudget};
pub(crate) use self::io::read_chunk;
use self::io::Io;
use self::seams::Seams;
use crate::connection::Connection;
use crate::counters::{self, WorkerCounters};
use crate::env::Env;
use crate::machine::{Machine, Policy, SessionSnapshot};
use crate::own_sends;
use crate::policies::ThrottlerPair;
use crate::state::ConnState;

/// Rounds of "events → write" per pump: each round can only be triggered by the previous
/// one's output, so a small bound is enough and keeps one connection from hogging a worker.
const MAX_ROUNDS: usize = 4;

pub(crate) struct Driver {
    conn: Connection,
    env: Arc<Env>,
    counters: Arc<WorkerCounters>,
    center: CenterHandle,
    id: Option<HandlerId>,
    machine: Machine,
    /// The policy in force: from the start on the connect side, from the accept
    /// decision on the accept side.
    policy: Option<Policy>,
    /// The session was accepted (or adopted from an accepted socket): its opening is
    /// `ms_handle_accept`, not `ms_handle_connect`.
    server_side: bool,
    /// This pump put an accepted session in standby: `Env::bound_standby` runs at its end.
    standby_check: bool,
    io: Io,
    /// What the message being received holds of the throttles, and its pending request.
    recv: RecvBudget,
    /// Receive budget granted ahead to the machine (see `budget.rs`).
    credit: Credit,
    /// The peer type's policy throttlers, looked up on the first message.
    throttlers: Option<ThrottlerPair>,
    /// What `recv_held_bytes` last counted for this connection.
    recv_held: u64,
    /// What this driver holds of its connection's send bounds (published as the
    /// connection's `driver_cost`): the machine's queued and unacknowledged messages,
    /// and on a lossy session the framed bytes waiting to be written.
    send_held: u64,
    timer: Option<(TimerId, Instant)>,
    /// What was last published as the session's snapshot.
    published: Option<SessionSnapshot>,
    /// The peer's name as last published (from the last message's source).
    peer_name: Option<EntityName>,
    /// Scratch for messages taken from the mailbox (kept for its capacity).
    inbox: VecDeque<(Message, Instant)>,
    /// Scratch for the messages fast dispatch on this thread sent (`own_sends::take`;
    /// kept for its capacity, which it trades with that queue).
    own_inbox: Vec<Message>,
    /// Messages delivered since the last batch was handed on (`hand_on_batch`).
    delivered_since_batch: usize,
    /// The count of `delivered_since_batch` at which its next check point falls (the
    /// next multiple of `check_every`): kept, where the remainder was a division per
    /// message.
    next_check: usize,
    /// Their payload bytes.
    bytes_since_batch: usize,
    /// What was sent since then (`Message::send_cost`) by fast dispatch on this thread
    /// or through the mailbox, taken into the protocol at `hand_on_batch`'s check points
    /// (non-zero: something was taken).
    sent_since_batch: u64,
    /// The part of it this thread's fast dispatch sent.
    own_sent_since_batch: u64,
    /// The smallest early batch for this pump: smaller while the worker has time to
    /// spare (`Context::mostly_busy`).
    min_batch: usize,
    /// What fast dispatch must have sent before a check point writes it, for this pump:
    /// larger while the worker is mostly busy with quick messages.
    early_sent: u64,
    /// When the batch being delivered began (after the last batch's write; none for a
    /// pump's first batch, whose time includes reads and what ran before).
    batch_clock: Option<Instant>,
    /// The last batch measured handled its messages in under
    /// `MessengerConfig::quick_message` each.
    quick_messages: bool,
    /// What this thread's fast dispatch ever moved into the protocol (send cost,
    /// wrapping): the check points tell its share from the mailbox's by the difference.
    own_sent_total: u64,
    /// Messages delivered since the current read phase began, and in the one before:
    /// the size of the peer's bursts, which sets how many make a batch.
    burst: usize,
    last_burst: usize,
    /// Received messages for the dispatch queue, handed over together
    /// (`deliver_pending`; empty between pumps), with this driver's copy of the
    /// dispatcher chains.
    pending: ReadBatch<Connection>,
    started: bool,
    /// Closed (or handed over): no more input is handled.
    finished: bool,
    /// `cleanup` ran.
    cleaned: bool,
    /// The session opened on this driver at some point (its dispatchers heard connect
    /// or accept): whatever its state when the driver is dropped, ending it then is a
    /// reset they must hear of.
    opened: bool,
    /// A dispatcher judged this connection in an `ms_verify_authorizer` of its own, or
    /// answered `Authentication::Accept` in `ms_handle_authentication` (it may keep
    /// state for it): ending it unopened is a reset they must hear of.
    named: bool,
    /// Fault injection (an empty type without the feature).
    seams: Seams,
}

/// Dials `addr` from the worker behind `center`, for the new outgoing `conn`.
pub(crate) fn spawn_outgoing(
    env: &Arc<Env>,
    center: &CenterHandle,
    conn: Connection,
    peer_type: EntityType,
    addr: EntityAddr,
) {
    // Charged at selection, as Ceph's get_worker does, so a burst of new connections
    // spreads out before any of them has run; released in `Driver::cleanup`.
    center.add_load(1);
    let unstarted = Unstarted { env: env.clone(), center: center.clone(), conn: Some(conn) };
    let posted = center.dispatch_event_external(move |cx: &mut Context<'_>| {
        let mut unstarted = unstarted;
        let Some(conn) = unstarted.conn.take() else { return };
        let env = unstarted.env.clone();
        let policy = env.policies.policy(peer_type);
        let machine = Machine::connect(env.protocol_config(), policy, addr, peer_type, cx.now());
        let io = Io::new(None, addr.addr);
        let d = Driver::new(conn, env, unstarted.center.clone(), machine, Some(policy), io);
        d.install(cx);
    });
    if posted.is_err() {
        log::warn!(target: "msgr::conn", "worker gone; connection to {addr} not started");
    }
}

/// A new outgoing connection until its driver exists. Dropped with the connection still
/// in it — the start was refused (the worker stopped) or dropped unrun (the worker shut
/// down with it queued) — it undoes what `connect_to` did: the handle is closed (sends
/// fail instead of queueing for no one), the session table lets it go (so `wait` and
/// the next `connect_to` do not find it), and the worker's load goes back.
struct Unstarted {
    env: Arc<Env>,
    center: CenterHandle,
    conn: Option<Connection>,
}

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close();
            self.env.sessions.unregister(&conn);
            self.center.add_load(-1);
        }
    }
}

/// Takes a just-accepted socket onto the worker behind `center`.
pub(crate) fn spawn_accepted(
    env: &Arc<Env>,
    center: &CenterHandle,
    socket: TcpStream,
    peer: SocketAddr,
) {
    let env = env.clone();
    // Charged at selection, as for a dial; released in `Driver::cleanup`, or by
    // `UnstartedAccept` if the driver never starts.
    center.add_load(1);
    let unstarted = UnstartedAccept { center: center.clone(), socket: Some(socket) };
    let posted = center.dispatch_event_external(move |cx: &mut Context<'_>| {
        let mut unstarted = unstarted;
        let Some(socket) = unstarted.socket.take() else { return };
        let handle = unstarted.center.clone();
        let local = socket.local_addr().unwrap_or(peer);
        let machine = Machine::accept(env.protocol_config(), peer, local, cx.now());
        let conn = env.new_connection(false);
        conn.0.published.lock().socket_addr = Some(peer);
        if !env.sessions.register(&conn) {
            // Accepted while shutting down: the socket is dropped unanswered.
            handle.add_load(-1);
            return;
        }
        let mut d = Driver::new(conn, env, handle, machine, None, Io::new(Some(socket), None));
        d.server_side = true;
        d.install(cx);
    });
    if posted.is_err() {
        log::warn!(target: "msgr::conn", "worker gone; accepted socket from {peer} dropped");
    }
}

/// An accepted socket until its driver exists. Dropped with the socket still in it — the
/// start was refused (the worker stopped) or dropped unrun (the worker shut down with it
/// queued) — it gives back the worker's load charged for it, and the socket closes. Ceph
/// makes the connection as it accepts, and a connection gives its worker back when it is
/// destroyed.
struct UnstartedAccept {
    center: CenterHandle,
    socket: Option<TcpStream>,
}

impl Drop for UnstartedAccept {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            drop(socket);
            self.center.add_load(-1);
        }
    }
}

impl Driver {
    fn new(
        conn: Connection,
        env: Arc<Env>,
        center: CenterHandle,
        machine: Machine,
        policy: Option<Policy>,
        io: Io,
    ) -> Driver {
        let counters = env.worker_counters(center.id());
        let next_check = events::check_every(env.config.dispatch_batch);
        let seams = Seams::new(&env.config, env.identity.nonce(), conn.id(), counters.clone());
        Driver {
            conn,
            env,
            counters,
            center,
            id: None,
            machine,
            policy,
            server_side: false,
            standby_check: false,
            io,
            recv: RecvBudget::default(),
            credit: Credit::default(),
            throttlers: None,
            recv_held: 0,
            send_held: 0,
            timer: None,
            published: None,
            peer_name: None,
            inbox: VecDeque::new(),
            own_inbox: Vec::new(),
            delivered_since_batch: 0,
            next_check,
            bytes_since_batch: 0,
            sent_since_batch: 0,
            own_sent_since_batch: 0,
            min_batch: events::MIN_DISPATCH_BATCH,
            early_sent: events::EARLY_SENT_BYTES,
            batch_clock: None,
            quick_messages: false,
            own_sent_total: 0,
            burst: 0,
            last_burst: 0,
            pending: ReadBatch::new(),
            started: false,
            finished: false,
            cleaned: false,
            opened: false,
            named: false,
            seams,
        }
    }

    /// Puts the driver into the center and starts it (first pump).
    fn install(self, cx: &mut Context<'_>) {
        let conn = self.conn.clone();
        let center = self.center.clone();
        self.counters.created_connections.fetch_add(1, Relaxed);
        self.counters.active_connections.fetch_add(1, Relaxed);
        let id = cx.insert_handler(Box::new(self));
        conn.set_place(center, id);
        // Start in handler context so the driver learns its id and registers its socket.
        cx.with_handler(id, |h, cx| h.notify(cx));
    }

    /// Runs this driver again after the worker's other work (with no waker write: this
    /// runs on the worker).
    fn notify_self(&self, cx: &mut Context<'_>) {
        if let Some(id) = self.id {
            cx.notify(id);
        }
    }

    /// The one entry point after any input.
    fn pump(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        // The callback's start as the center knows it (the iteration's clock for its
        // first callback, the end of the pump before this one when it ran just before),
        // else read: counted from the iteration's clock, the drivers an iteration runs
        // one after another each counted from its start (256 connections accepted at
        // once summed to seconds within milliseconds), and from the last pump's end, the
        // other work run since (an external job, a timer closure, the admin socket's
        // answer) counted as this messenger's. Two clock reads per pump (after reading,
        // at the end) give the recv and send run times; total is both.
        let started_at = cx.began_at().unwrap_or_else(Instant::now);
        self.batch_clock = None;
        (self.min_batch, self.early_sent) = match (cx.mostly_busy(), self.quick_messages) {
            (false, _) => (events::MIN_DISPATCH_BATCH, events::EARLY_SENT_BYTES),
            (true, false) => (events::MIN_BUSY_DISPATCH_BATCH, events::EARLY_SENT_BYTES),
            (true, true) => {
                (events::QUICK_BUSY_DISPATCH_BATCH, events::QUICK_BUSY_EARLY_SENT_BYTES)
            }
        };
        if !self.started {
            self.started = true;
            self.id = cx.id();
            if let Err(e) = self.start(cx) {
                log::info!(target: "msgr::conn", "{}: start failed: {e}", self.machine);
                self.report_refused_dial(&e);
                self.machine.handle_transport_closed(cx.now());
            }
        }
        // While the driver runs, senders need not wake it: it re-drains the mailbox before
        // each write, so replies sent from fast dispatch leave in the same writev.
        self.drain_mailbox(cx, true);
        if self.finished {
            return;
        }
        // A session another connection's accept decision is replacing reads nothing
        // more on its own socket until the decision's socket arrives (a command in the
        // mailbox, drained just before), as Ceph's `reuse_connection` stops the existing
        // connection in the decision's critical section. The decision read the session
        // as last published: read on, our own connect answered and its messages
        // delivered, the session moved on under it, the replace renumbered it (in_seq
        // back to 0), and the peer's resends after that were delivered twice. What was
        // read before the mark is handled as usual. One load per pump (and one per
        // flush: nor does it write, see `flush`).
        let replaced = self.conn.replace_pending();
        if !replaced {
            // A dial that settled during a freeze now ended (see `on_ready`).
            self.finish_deferred_dial(cx);
            self.apply_injected_cut();
            self.read(cx);
        }
        let read_done = Instant::now();
        // In nanoseconds from here: the total is their sum, and the center takes it in
        // them (a `Duration` sum and two more conversions per pump cost ~25
        // instructions, the same numbers).
        let recv_ns = counters::ns(read_done.saturating_duration_since(started_at));
        WorkerCounters::add_own(&self.counters.running_recv_time_ns, recv_ns);
        for _ in 0..MAX_ROUNDS {
            self.drain_mailbox(cx, false);
            if self.finished {
                return;
            }
            let progressed = self.handle_events(cx);
            if self.finished {
                return;
            }
            let wrote = self.flush(cx);
            // Another round only for what this one left: replies fast dispatch sent while
            // events were handled (in the mailbox), what one flush did not frame (it frames
            // a bounded batch) while the socket takes more, and events a write raised (a
            // write error queues a fault's, e.g. Reconnect: never leave them for a timer
            // to find). Whatever other threads send meanwhile is found by
            // `settle_mailbox`, which runs the pump again.
            let more_to_write = wrote && self.more_to_write();
            if !progressed && !more_to_write && !self.machine.has_events() {
                break;
            }
        }
        // A fault this pump (a reply, a read, a write, the handshake's timer) that left
        // the machine backing off: its socket goes now, not at the redial.
        self.close_socket_left_by_fault(cx);
        // Credit is for the burst this pump read: what it did not use goes back.
        if self.credit.is_held() {
            let settled = !self.machine.message_in_progress() && !self.machine.has_events();
            self.return_credit(settled);
        }
        // Readable bytes the machine wants now but the read phase did not take: budget
        // granted during the rounds (after the read phase) resumes a paused read, and
        // edge-triggered readiness will not report those bytes again.
        let unread = !replaced && self.io.unread() && self.machine.wants_read();
        self.seams.run_before_settle();
        // What fast dispatch sent that the protocol had no room for waits in the mailbox.
        own_sends::spill(&self.conn);
        // What the bounded rounds did not frame while the socket still takes bytes: no
        // writable edge will come for it, and a lossy peer sends nothing back (no ACK)
        // that would bring the driver back.
        let more = self.settle_mailbox()
            | self.machine.has_events()
            | unread
            | (!replaced && self.cut_ready())
            | self.retry_congested_write()
            | self.more_to_write();
        if more {
            // Work left after the bounded rounds: run again after the worker's other work.
            self.notify_self(cx);
        }
        self.count_peer_issues();
        self.update_gauges();
        // What a session in standby holds, counted in the bound's running total once
        // this pump published it.
        self.conn.recount_server_standby();
        if std::mem::take(&mut self.standby_check) {
            self.env.bound_standby();
        }
        self.publish();
        self.update_interest(cx);
        self.update_timer(cx);
        let ended = Instant::now();
        let send_ns = counters::ns(ended.saturating_duration_since(read_done));
        WorkerCounters::add_own(&self.counters.running_send_time_ns, send_ns);
        let total_ns = recv_ns.saturating_add(send_ns);
        WorkerCounters::add_own(&self.counters.running_total_time_ns, total_ns);
        // The center's next `poll` starts from this read if nothing runs after the pump,
        // and its load meter takes the pump's run time (from `began_at` when known) as
        // it is instead of subtracting clocks again.
        cx.ended_at_ns(ended, total_ns);
    }

    fn start(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.io.socket.is_some() {
            self.configure_socket()?;
            self.register_socket(cx)?;
            return Ok(());
        }
        if let Some(addr) = self.io.dial {
            self.dial_now(cx, addr)?;
        }
        Ok(())
    }

    /// Makes the session lossy once its handle was marked disposable (Ceph's
    /// `mark_disposable` sets `policy.lossy` at once, under the connection's lock): run
    /// before the driver hands the machine an input and before it takes each event, so a
    /// fault after the mark, or one the machine decided and the driver has not acted on
    /// (`protocol::Machine::mark_lossy`), resets the session. A mark in fast dispatch is
    /// seen before the next event (the machine may have parsed bytes behind the message)
    /// and before any write of the reply it sent. One load while the handle is unmarked.
    #[inline]
    fn apply_disposable(&mut self) {
        if !self.conn.is_disposable() {
            return;
        }
        // Again after an accept decision or a replace brought a lossless policy.
        if !self.machine.is_lossy() {
            self.machine.mark_lossy();
        }
        if let Some(p) = self.policy.as_mut() {
            p.lossy = true;
        }
    }

    fn publish(&mut self) {
        self.publish_snapshot(false);
        if self.machine.is_open() && self.conn.state() != ConnState::Open {
            self.conn.set_state(ConnState::Open);
        }
    }

    /// Keeps one timer armed at the earliest of the machine's deadline and what an
    /// injected delay holds.
    fn update_timer(&mut self, cx: &mut Context<'_>) {
        // While a replace holds the session frozen, the machine's deadline waits: the
        // hand-off brings a machine with deadlines of its own, and a replace abandoned
        // wakes the driver (`SessionTable::abort_replace`), whose pump arms it again,
        // fired at once if it passed meanwhile. Armed, a deadline gone by would fire in
        // a loop, each time skipped (`Handler::timer`).
        let machine = if self.conn.replace_pending() { None } else { self.machine.poll_timeout() };
        let want = match (machine, self.seams.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // An armed timer that fires no later than wanted is kept: firing early only makes
        // the machine re-derive its deadline, while re-arming on every pump (the idle
        // deadline moves with each read) would churn the timer set.
        match (self.timer, want) {
            (Some((_, armed)), Some(at)) if armed <= at => return,
            (Some(_), None) | (None, None) => return,
            _ => {}
        }
        if let Some((tid, _)) = self.timer.take() {
            cx.delete_time_event(tid);
        }
        if let (Some(at), Some(id)) = (want, self.id) {
            let after = at.saturating_duration_since(cx.now());
            let tid = cx.create_time_event(after, TimerTarget::Handler(id));
            self.timer = Some((tid, at));
        }
    }
}

impl Handler for Driver {
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready) {
        log::trace!(target: "msgr::conn", "{}: ready {ready:?}", self.machine);
        let _own = own_sends::Scope::enter(&self.conn);
        self.apply_disposable();
        self.on_ready(cx, ready);
        self.pump(cx);
    }

    fn timer(&mut self, cx: &mut Context<'_>, id: TimerId) {
        if self.timer.is_some_and(|t| t.0 == id) {
            self.timer = None;
        }
        let _own = own_sends::Scope::enter(&self.conn);
        self.apply_disposable();
        self.set_progress_floor(cx.now());
        // A session frozen for a replace times nothing out (see `update_timer`), as
        // Ceph's connection in state NONE ignores its tick's fault: faulted, it redialled
        // the peer while the hand-off was in flight.
        if !self.conn.replace_pending() {
            self.machine.handle_timeout(cx.now());
        }
        self.release_held(cx);
        self.pump(cx);
    }

    fn notify(&mut self, cx: &mut Context<'_>) {
        let _own = own_sends::Scope::enter(&self.conn);
        self.apply_disposable();
        if self.recv.is_waiting() {
            self.try_budget(cx);
        }
        self.pump(cx);
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) {
        self.finish(cx);
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.machine)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use event_center::EventCenter;
    use protocol::types::EntityName;

    use super::*;
    use crate::config::MessengerConfig;

    /// An accepted socket whose start is still queued when its worker shuts down gives
    /// the worker's load back (and is closed): the load counts connections, and a
    /// leaked unit would steer new connections away from that worker for good.
    #[test]
    fn an_accepted_socket_that_never_starts_gives_its_worker_load_back() {
        let name = EntityName::new(EntityType::OSD, 0);
        let env = Env::new(name, 1, MessengerConfig::default(), 1);
        let mut center = EventCenter::new(0).expect("center");
        let handle = center.handle();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("dial");
        let (accepted, peer) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        spawn_accepted(&env, &handle, TcpStream::from_std(accepted), peer);
        assert_eq!(handle.load(), 1, "charged as it is placed");
        // The worker stops with the start queued: it is dropped unrun.
        center.shutdown();
        assert_eq!(handle.load(), 0, "given back");
        client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        assert_eq!(client.read(&mut [0u8; 1]).expect("EOF"), 0, "the socket was closed");
        // Refused outright by a stopped worker: given back too.
        let client2 =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("dial");
        let (accepted, peer) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        spawn_accepted(&env, &handle, TcpStream::from_std(accepted), peer);
        assert_eq!(handle.load(), 0, "refused, given back");
        drop(client2);
    }

    /// A center run on a thread of the test, publishing its timer and handler counts
    /// after every iteration (a pool's centers are out of reach).
    struct CountedCenter {
        handle: CenterHandle,
        timers: Arc<std::sync::atomic::AtomicUsize>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl CountedCenter {
        fn start() -> CountedCenter {
            use std::sync::atomic::{AtomicBool, AtomicUsize};
            let timers = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = crossbeam_channel::bounded(1);
            let (t, s) = (Arc::clone(&timers), Arc::clone(&stop));
            let thread = std::thread::spawn(move || {
                let mut center = EventCenter::new(0).expect("center");
                tx.send(center.handle()).expect("handle");
                while !s.load(Relaxed) {
                    center.run_once(Some(Duration::from_millis(5))).expect("poll");
                    t.store(center.timer_count(), Relaxed);
                }
                center.shutdown();
            });
            let handle = rx.recv().expect("center started");
            CountedCenter { handle, timers, stop, thread: Some(thread) }
        }
    }

    impl Drop for CountedCenter {
        fn drop(&mut self) {
            self.stop.store(true, Relaxed);
            self.handle.stop();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    struct Quiet;

    impl dispatch::Dispatcher<Connection> for Quiet {
        fn ms_dispatch(&self, _conn: &Connection, _msg: Message) -> dispatch::Dispatched {
            dispatch::Dispatched::Taken
        }
    }

    /// Waits (at most 20 s) for `done`.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A one-worker client messenger (client.2, nonce 2) whose connections are
    /// lossless_client, reconnecting after `initial_backoff`.
    fn lossless_client(initial_backoff: Duration) -> crate::Messenger {
        let config = MessengerConfig { workers: 1, initial_backoff, ..MessengerConfig::default() };
        let client = crate::Messenger::new(EntityName::new(EntityType::CLIENT, 2), 2, config)
            .expect("client");
        client.set_default_policy(Policy::lossless_client());
        client.add_dispatcher_head(Arc::new(Quiet)).expect("dispatcher");
        client
    }

    /// Waits at every settle of `conn`'s pump for the first one that finds it
    /// connecting, and sends what the session table held for it then.
    #[cfg(feature = "fault-injection")]
    fn observe_connecting(conn: Connection, tx: std::sync::mpsc::Sender<SessionSnapshot>) {
        if conn.state() == ConnState::Connecting {
            let _ = tx.send(conn.0.published.lock().session);
        } else {
            let again = conn.clone();
            conn.inject_before_settle(move || observe_connecting(again, tx));
        }
    }

    /// A lossless session's fault moves its connect_seq on and makes it connecting in
    /// the same pump; another worker's accept decision reads both (the state and the
    /// published numbers) in one critical section, so the number must be published by
    /// the time the state says connecting. It was published at the pump's end: a
    /// racing reconnect from the peer decided in between read "connecting" beside the
    /// old number, and replaced the session where the new number breaks the tie. Both
    /// ways a fault leaves an open session connecting: a redial at once (the case that
    /// failed), and the wait of a session cut within the initial backoff of its open
    /// (`young`), its socket closed (there the pump's flush published the number first,
    /// unless the fault was that flush's write).
    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_faulted_session_publishes_its_next_connect_seq_before_it_shows_connecting() {
        for (v2, young) in [(false, false), (true, false), (false, true), (true, true)] {
            let server = crate::Messenger::new(
                EntityName::new(EntityType::OSD, 0),
                1,
                MessengerConfig { workers: 1, ..MessengerConfig::default() },
            )
            .expect("server");
            server.set_default_policy(Policy::stateful_server());
            server.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            server.start().expect("start");
            server.add_dispatcher_head(Arc::new(Quiet)).expect("dispatcher");
            let client = lossless_client(Duration::from_millis(if young { 10_000 } else { 1 }));
            let mut addr = server.my_addr();
            addr.ty = if v2 {
                protocol::types::AddrType::MSGR2
            } else {
                protocol::types::AddrType::LEGACY
            };
            let conn = client.connect_to(EntityType::OSD, addr);
            let mut m = Message::new(0x7f00, bytes::Bytes::from_static(b"x"));
            m.set_tid(1);
            conn.send_message(m).expect("send");
            wait_for("the session", || conn.state() == ConnState::Open);
            if !young {
                // Past the initial backoff since the open: the fault redials at once.
                std::thread::sleep(Duration::from_millis(20));
            }
            let open = conn.0.published.lock().session;

            let (tx, rx) = std::sync::mpsc::channel();
            observe_connecting(conn.clone(), tx);
            conn.inject_socket_failure();
            let connecting = rx.recv_timeout(Duration::from_secs(20)).expect("connecting");
            client.shutdown();
            server.shutdown();
            assert_ne!(
                connecting, open,
                "v2 {v2}, young {young}: connecting, and the table still held the open \
                 session's numbers"
            );
        }
    }

    /// A lossless peer whose socket keeps failing reconnects, and each accepted socket is
    /// handed to its session (a replace): the accepting driver vanishes, and with it the
    /// handshake timer it had armed. Before, that timer stayed in the center's timer set
    /// until its deadline (`connection_ready_timeout`), so a peer reconnecting in a loop
    /// grew the worker's timers by one per reconnect.
    #[test]
    fn a_socket_handed_to_its_session_leaves_no_timer_behind() {
        const ROUNDS: usize = 50;
        let name = EntityName::new(EntityType::OSD, 0);
        let config = MessengerConfig {
            connection_ready_timeout: Duration::from_secs(600),
            ..MessengerConfig::default()
        };
        let env = Env::new(name, 1, config, 1);
        env.policies.set_default(Policy::stateful_server());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let bound = listener.local_addr().expect("addr");
        assert!(env.identity.set_bound(bound));
        let center = CountedCenter::start();

        // Accepts on a thread of the test, keeping a clone of each socket to cut it.
        let accepted = Arc::new(parking_lot::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let (env2, handle, acc) = (Arc::clone(&env), center.handle.clone(), Arc::clone(&accepted));
        listener.set_nonblocking(false).expect("blocking");
        let acceptor = std::thread::spawn(move || {
            for _ in 0..=ROUNDS {
                let Ok((sock, peer)) = listener.accept() else { return };
                acc.lock().push(sock.try_clone().expect("clone"));
                sock.set_nonblocking(true).expect("nonblocking");
                spawn_accepted(&env2, &handle, TcpStream::from_std(sock), peer);
            }
        });

        let client = lossless_client(Duration::from_millis(1));
        let conn = client.connect_to(EntityType::OSD, env.my_addr());
        let counters = env.worker_counters(0);
        let created = || counters.created_connections.load(Relaxed);
        let active = || counters.active_connections.load(Relaxed);
        let send = |tid| {
            let mut m = Message::new(0x7f00, bytes::Bytes::from_static(b"x"));
            m.set_tid(tid);
            conn.send_message(m).expect("send");
        };
        send(0);
        wait_for("the session", || created() == 1 && env.sessions.live().len() == 1);
        for round in 1..=ROUNDS {
            let last = accepted.lock().last().expect("a socket").try_clone().expect("clone");
            let _ = last.shutdown(std::net::Shutdown::Both);
            send(round as u64);
            let want = round as u64 + 1;
            wait_for("the replace", || created() == want && active() == 1);
        }
        // The counts are published after each iteration: after these two, they are of
        // an iteration that ran after the last replace.
        center.handle.submit_to(|_| ()).expect("center");
        center.handle.submit_to(|_| ()).expect("center");
        let timers = center.timers.load(Relaxed);
        client.shutdown();
        drop(center);
        let _ = acceptor.join();
        assert!(
            timers <= 1,
            "{timers} timers armed for one live connection after {ROUNDS} replaces"
        );
    }
}
