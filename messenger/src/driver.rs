//! The worker-owned connection driver (Ceph's `AsyncConnection` minus the protocol
//! logic, which lives in `protocol::v1`).
//!
//! A driver is an `event_center` handler. It is the only code that touches its socket and
//! its protocol state machine. Every entry point (readiness, timer, notify) ends in
//! [`Driver::pump`], which: drains the handle's mailbox → reads (bounded by
//! `read_budget`) → handles protocol events → writes (vectored, every queued frame in one
//! `writev`) → derives the mio interest and the one armed timer from the machine.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use dispatch::{AuthVerdict, InFlight, Permit, QueueEvent, Ticket, Waiting};
use event_center::{CenterHandle, Context, Handler, HandlerId, Ready, TimerId, TimerTarget};
use mio::net::TcpStream;
use mio::Interest;
use protocol::message::MESSAGE_OVERHEAD;
use protocol::types::{EntityAddr, EntityType};
use protocol::v1::{self, Decision, Event, ExistingSession, Policy};
use protocol::wire::KeepaliveStamp;

use crate::connection::{Command, ConnState, Connection};
use crate::counters::WorkerCounters;
use crate::messenger::Core;

/// Most iovecs handed to one `writev` (Linux's IOV_MAX is 1024; 64 covers a burst of
/// small messages, 4 segments each, without a huge stack array).
const MAX_IOV: usize = 64;

/// Messages handed to the protocol's out queue (queued + sent-but-unacked) at most; the
/// rest wait in the handle's mailbox, bounded by `max_queued_bytes`.
const MAX_IN_PROTOCOL: usize = 1024;

/// Frame more messages only while fewer bytes than this wait in the write list (one
/// `poll_transmit` batch): what cannot be written stays in the protocol's queue.
const FRAME_AHEAD: usize = 1 << 20;

/// Rounds of "events → write" per pump: each round can only be triggered by the previous
/// one's output, so a small bound is enough and keeps one connection from hogging a worker.
const MAX_ROUNDS: usize = 4;

/// The steps of a budget request, in the order they are taken: the policy's message
/// count first (a message in progress always holds its count, so counting cannot
/// deadlock with the byte windows), then the policy's bytes, then the dispatch bytes.
const STEP_MESSAGES: usize = 0;
const STEP_POLICY_BYTES: usize = 1;
const STEP_DISPATCH: usize = 2;
const STEPS: usize = 3;

/// A window of budget the machine asked for ([`Event::NeedBudget`]).
#[derive(Clone, Copy, Debug)]
struct Want {
    /// Payload bytes of the window.
    bytes: u64,
    /// The message's first window (it also pays the message count and overhead).
    first: bool,
}

/// What the message being received holds of the throttles (see `Driver::try_budget`).
/// Dropping it releases everything.
#[derive(Default)]
struct RecvBudget {
    /// Held permits by step, windows merged.
    permits: [Option<Permit>; STEPS],
    /// In-progress registrations on the byte throttles, from the second window on.
    inflight: [Option<InFlight>; STEPS],
    /// The window being served, and the step it is at.
    want: Option<Want>,
    step: usize,
    /// The queued request of the current step, when its throttle made it wait.
    waiting: Option<Waiting>,
}

impl RecvBudget {
    fn is_active(&self) -> bool {
        self.want.is_some()
            || self.permits.iter().any(Option::is_some)
            || self.inflight.iter().any(Option::is_some)
    }
}

/// A freshly accepted socket whose connect request was decided "replace": it travels to
/// the existing session's driver, which adopts it (Ceph's replace).
pub(crate) struct Incoming {
    pub(crate) socket: TcpStream,
    pub(crate) proto: v1::Connection,
    pub(crate) policy: Policy,
    pub(crate) decision: Decision,
}

pub(crate) struct Driver {
    conn: Connection,
    core: Arc<Core>,
    counters: Arc<WorkerCounters>,
    center: CenterHandle,
    id: Option<HandlerId>,
    socket: Option<TcpStream>,
    /// Where to dial (outgoing connections only).
    dial: Option<SocketAddr>,
    /// TCP connect in progress.
    dialling: bool,
    proto: v1::Connection,
    policy: Option<Policy>,
    /// Frames handed to us by the machine and not yet fully written.
    wsegs: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    /// The socket reported readable and we have not seen WouldBlock since.
    read_ready: bool,
    /// The socket reported the peer's close (or an error): read until EOF or error.
    peer_closed: bool,
    write_ready: bool,
    interest: Option<Interest>,
    timer: Option<(TimerId, Instant)>,
    /// What the message being received holds of the throttles, and its pending request.
    recv: RecvBudget,
    /// What `recv_held_bytes` last counted for this connection.
    recv_held: u64,
    /// What this driver holds of its connection's send bounds (published as the
    /// connection's `driver_cost`): the protocol's queued and unacknowledged messages, and
    /// on a lossy session the framed bytes in `wsegs`.
    send_held: u64,
    /// Bytes in `wsegs`.
    wsegs_bytes: usize,
    /// The peer type's policy throttlers, looked up on the first message.
    throttlers: Option<crate::messenger::ThrottlerPair>,
    /// What `publish` last wrote to the handle's snapshot: (connect_seq,
    /// peer_global_seq, lossy, server policy).
    published: Option<(u32, u32, bool, bool)>,
    /// Scratch for messages taken from the mailbox (kept for its capacity).
    inbox: VecDeque<(protocol::Message, Instant)>,
    started: bool,
    /// Closed (or handed over): no more input is handled.
    finished: bool,
    /// `cleanup` ran.
    cleaned: bool,
    server_side: bool,
    /// Injected cuts not applied yet (`Connection::inject_socket_failure`): one is
    /// applied per open session, so N calls make N reconnects.
    #[cfg(feature = "fault-injection")]
    cuts_pending: u32,
    /// The current socket was already cut by an injected failure.
    #[cfg(feature = "fault-injection")]
    socket_cut: bool,
}

thread_local! {
    /// The worker's read buffer, shared by all connections of that worker: reads land in
    /// its spare capacity and are split off as `Bytes`, so an idle connection holds no
    /// buffer at all and a busy worker reuses one block until messages release it.
    static READ_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Reads into the unused capacity of `buf` (at least `chunk` bytes of it), without
/// zeroing it first: the bytes read become `buf`'s new tail and are split off as `Bytes`
/// that message payloads reference without a copy.
/// At most `max` bytes are read. Returns the bytes read and how many were asked for.
fn read_into_spare(
    sock: &TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
    max: usize,
) -> io::Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    let spare = &mut spare[..len];
    // SAFETY: read(2) writes at most `spare.len()` bytes at the start of the spare
    // capacity, which is valid for writes; only the `n` bytes it reports written are
    // then marked initialized.
    let n = unsafe { libc::read(sock.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (n, asked) = (n as usize, spare.len());
    // SAFETY: the kernel initialized exactly `n` bytes past the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, asked))
}

fn wall_stamp() -> KeepaliveStamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    KeepaliveStamp { sec: d.as_secs() as u32, nsec: d.subsec_nanos() }
}

/// Dials `addr` from the worker behind `center`, for the new outgoing `conn`.
pub(crate) fn spawn_outgoing(
    core: &Arc<Core>,
    center: &CenterHandle,
    conn: Connection,
    peer_type: EntityType,
    addr: EntityAddr,
) {
    let core = core.clone();
    let handle = center.clone();
    // Charged at selection, as Ceph's get_worker does, so a burst of new connections
    // spreads out before any of them has run; released in `Driver::release`.
    center.add_load(1);
    let posted = center.dispatch_event_external(move |cx: &mut Context<'_>| {
        let policy = core.policies.read().policy(peer_type);
        let proto = v1::Connection::connect(core.proto_config(), policy, addr, peer_type, cx.now());
        let dial = addr.addr;
        let d = Driver::new(conn, core, handle, proto, Some(policy), None, dial, false);
        d.install(cx);
    });
    if posted.is_err() {
        center.add_load(-1);
        log::warn!(target: "msgr::conn", "worker gone; connection to {addr} not started");
    }
}

/// Takes a just-accepted socket onto the worker behind `center`.
pub(crate) fn spawn_accepted(
    core: &Arc<Core>,
    center: &CenterHandle,
    socket: TcpStream,
    peer: SocketAddr,
) {
    let core = core.clone();
    let handle = center.clone();
    center.add_load(1);
    let posted = center.dispatch_event_external(move |cx: &mut Context<'_>| {
        let local = socket.local_addr().unwrap_or(peer);
        let proto = v1::Connection::accept(core.proto_config(), peer, local, cx.now());
        let conn = Connection::new(
            core.new_conn_id(),
            Arc::downgrade(&core),
            false,
            core.send_budget.clone(),
        );
        conn.0.peer.lock().socket_addr = Some(peer);
        if !core.register(&conn) {
            // Accepted while shutting down: the socket is dropped unanswered.
            handle.add_load(-1);
            return;
        }
        let d = Driver::new(conn, core, handle, proto, None, Some(socket), None, true);
        d.install(cx);
    });
    if posted.is_err() {
        center.add_load(-1);
        log::warn!(target: "msgr::conn", "worker gone; accepted socket from {peer} dropped");
    }
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    fn new(
        conn: Connection,
        core: Arc<Core>,
        center: CenterHandle,
        proto: v1::Connection,
        policy: Option<Policy>,
        socket: Option<TcpStream>,
        dial: Option<SocketAddr>,
        server_side: bool,
    ) -> Driver {
        let counters = core.counters[center.id() % core.counters.len().max(1)].clone();
        Driver {
            conn,
            core,
            counters,
            center,
            id: None,
            socket,
            dial,
            dialling: false,
            proto,
            policy,
            wsegs: VecDeque::new(),
            scratch: Vec::new(),
            read_ready: true,
            peer_closed: false,
            write_ready: true,
            interest: None,
            timer: None,
            recv: RecvBudget::default(),
            recv_held: 0,
            send_held: 0,
            wsegs_bytes: 0,
            throttlers: None,
            published: None,
            inbox: VecDeque::new(),
            started: false,
            finished: false,
            cleaned: false,
            server_side,
            #[cfg(feature = "fault-injection")]
            cuts_pending: 0,
            #[cfg(feature = "fault-injection")]
            socket_cut: false,
        }
    }

    /// Puts the driver into the center and starts it (first pump).
    fn install(self, cx: &mut Context<'_>) {
        let conn = self.conn.clone();
        let center = self.center.clone();
        self.counters.created_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters.active_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = cx.insert_handler(Box::new(self));
        *conn.0.place.lock() = Some((center, id));
        // Start in handler context so the driver learns its id and registers its socket.
        cx.with_handler(id, |h, cx| h.notify(cx));
    }

    /// The one entry point after any input.
    fn pump(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        // The loop iteration's cached clock is the start; two clock reads per pump
        // (after reading, at the end) give the recv and total run times.
        let started_at = cx.now();
        if !self.started {
            self.started = true;
            self.id = cx.id();
            if let Err(e) = self.start(cx) {
                log::info!(target: "msgr::conn", "{}: start failed: {e}", self.proto);
                self.proto.handle_transport_closed(cx.now());
            }
        }
        // While the driver runs, senders need not wake it: it re-drains the mailbox before
        // each write, so replies sent from fast dispatch leave in the same writev.
        self.conn.0.mailbox.lock().notified = true;
        self.drain_mailbox(cx);
        if self.finished {
            return;
        }
        #[cfg(feature = "fault-injection")]
        self.apply_injected_cut();
        self.read(cx);
        let read_done = Instant::now();
        WorkerCounters::add_time(
            &self.counters.running_recv_time_ns,
            read_done.saturating_duration_since(started_at),
        );
        for _ in 0..MAX_ROUNDS {
            self.drain_mailbox(cx);
            if self.finished {
                return;
            }
            let progressed = self.handle_events(cx);
            if self.finished {
                return;
            }
            let wrote = self.flush(cx);
            // A write error queues a fault's events (e.g. Reconnect): never leave them
            // for a timer to find.
            if !progressed && !wrote && !self.proto.has_events() {
                break;
            }
        }
        #[cfg(feature = "fault-injection")]
        let cut_ready = self.cut_ready();
        #[cfg(not(feature = "fault-injection"))]
        let cut_ready = false;
        // Readable bytes the machine wants now but the read phase did not take: budget
        // granted during the rounds (after the read phase) resumes a paused read, and
        // edge-triggered readiness will not report those bytes again.
        let unread =
            self.read_ready && !self.dialling && self.socket.is_some() && self.proto.wants_read();
        if self.settle_mailbox() || self.proto.has_events() || unread || cut_ready {
            // Work left after the bounded rounds: run again after the worker's other work.
            if let Some(id) = self.id {
                let _ = self.center.notify(id);
            }
        }
        self.count_peer_issues();
        self.update_gauges();
        self.publish();
        self.update_interest(cx);
        self.update_timer(cx);
        let done = Instant::now();
        WorkerCounters::add_time(
            &self.counters.running_send_time_ns,
            done.saturating_duration_since(read_done),
        );
        WorkerCounters::add_time(
            &self.counters.running_total_time_ns,
            done.saturating_duration_since(started_at),
        );
    }

    fn start(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.socket.is_some() {
            self.configure_socket()?;
            self.register_socket(cx)?;
            return Ok(());
        }
        if let Some(addr) = self.dial {
            self.dial_now(cx, addr)?;
        }
        Ok(())
    }

    fn configure_socket(&self) -> io::Result<()> {
        if let Some(s) = &self.socket {
            s.set_nodelay(self.core.config.tcp_nodelay)?;
            let sock = socket2::SockRef::from(s);
            if self.core.config.tcp_rcvbuf > 0 {
                sock.set_recv_buffer_size(self.core.config.tcp_rcvbuf)?;
            }
            if self.core.config.tcp_sndbuf > 0 {
                sock.set_send_buffer_size(self.core.config.tcp_sndbuf)?;
            }
        }
        Ok(())
    }

    fn register_socket(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let (Some(id), Some(s)) = (self.id, self.socket.as_ref()) else {
            return Ok(());
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        cx.register_source(id, s, interest)?;
        self.interest = Some(interest);
        self.read_ready = true;
        self.peer_closed = false;
        self.write_ready = true;
        #[cfg(feature = "fault-injection")]
        {
            self.socket_cut = false;
        }
        Ok(())
    }

    fn dial_now(&mut self, cx: &mut Context<'_>, addr: SocketAddr) -> io::Result<()> {
        self.close_socket(cx);
        let s = TcpStream::connect(addr)?;
        self.socket = Some(s);
        self.dialling = true;
        self.configure_socket()?;
        self.register_socket(cx)?;
        self.conn.set_state(ConnState::Connecting);
        Ok(())
    }

    fn close_socket(&mut self, cx: &mut Context<'_>) {
        if self.socket.take().is_some() {
            if let Some(id) = self.id {
                let _ = cx.deregister(id);
            }
        }
        self.interest = None;
        self.wsegs.clear();
        self.wsegs_bytes = 0;
        self.dialling = false;
    }

    fn drain_mailbox(&mut self, cx: &mut Context<'_>) {
        // Only as many messages move into the protocol's queue as it has room for: the
        // rest stay in the mailbox. Wherever they are, the send bounds count them. A
        // socket making progress (writable, ACKs) brings the driver back to take more.
        let room = MAX_IN_PROTOCOL.saturating_sub(self.proto.pending_messages());
        // The messages move through a scratch queue the driver keeps, so a drain costs
        // no allocation.
        let mut inbox = std::mem::take(&mut self.inbox);
        let commands = {
            let mut mb = self.conn.0.mailbox.lock();
            let n = room.min(mb.messages.len());
            if n == mb.messages.len() {
                std::mem::swap(&mut mb.messages, &mut inbox);
            } else {
                inbox.extend(mb.messages.drain(..n));
            }
            // The messages stay counted against the send bounds: as the driver's now.
            let moved: u64 = inbox.iter().map(|(m, _)| m.send_cost()).sum();
            mb.queued_cost = mb.queued_cost.saturating_sub(moved);
            self.conn.0.driver_cost.fetch_add(moved, std::sync::atomic::Ordering::Relaxed);
            self.send_held += moved;
            std::mem::take(&mut mb.commands)
        };
        let now = cx.now();
        let me = (!inbox.is_empty()).then(|| *self.core.name.read());
        for (mut msg, queued_at) in inbox.drain(..) {
            if let (None, Some(me)) = (msg.src(), me) {
                msg.set_src(me);
            }
            if msg.priority() == 0 {
                msg.set_priority(protocol::message::PRIO_DEFAULT);
            }
            WorkerCounters::add_time(
                &self.counters.send_messages_queue_lat_ns,
                now.saturating_duration_since(queued_at),
            );
            self.counters
                .send_messages_queue_lat_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.proto.send_message(msg);
        }
        self.inbox = inbox;
        for cmd in commands {
            match cmd {
                Command::Keepalive => self.proto.send_keepalive(wall_stamp()),
                Command::MarkDisposable => {
                    self.proto.mark_lossy();
                    if let Some(p) = self.policy.as_mut() {
                        p.lossy = true;
                    }
                }
                Command::MarkDown => {
                    self.finish(cx);
                    return;
                }
                Command::TakeOver(incoming) => self.take_over(cx, *incoming),
                #[cfg(feature = "fault-injection")]
                Command::InjectFault => self.cuts_pending = self.cuts_pending.saturating_add(1),
            }
        }
    }

    /// Whether an injected cut waits and the session is open on a socket not cut yet.
    #[cfg(feature = "fault-injection")]
    fn cut_ready(&self) -> bool {
        self.cuts_pending > 0 && !self.socket_cut && self.socket.is_some() && self.proto.is_open()
    }

    /// Cuts the socket (both directions shut down, as a network failure would) for one
    /// pending `inject_socket_failure`, once the session is open on a socket not cut yet:
    /// a cut asked for while another is still being recovered from waits for the next
    /// session, so each call costs exactly one reconnect.
    #[cfg(feature = "fault-injection")]
    fn apply_injected_cut(&mut self) {
        if !self.cut_ready() {
            return;
        }
        if let Some(s) = &self.socket {
            log::info!(target: "msgr::conn", "{}: injected socket failure", self.proto);
            let _ = s.shutdown(std::net::Shutdown::Both);
            self.cuts_pending -= 1;
            self.socket_cut = true;
            self.read_ready = true;
            self.peer_closed = true;
        }
    }

    /// Leaves the awake state: returns whether the mailbox still has work this driver can
    /// take now (then it stays marked notified and the caller schedules another pump).
    /// Messages left only because the protocol queue is full need no wakeup from senders:
    /// socket progress (writable, ACKs) brings the driver back.
    fn settle_mailbox(&mut self) -> bool {
        let room = MAX_IN_PROTOCOL > self.proto.pending_messages();
        let mut mb = self.conn.0.mailbox.lock();
        if mb.closed {
            return false;
        }
        let more = !mb.commands.is_empty() || (room && !mb.messages.is_empty());
        mb.notified = more || !mb.messages.is_empty();
        more
    }

    /// Adopts a newly accepted socket for this session (Ceph's replace): the session's
    /// sequence numbers and queues move into the new socket's state machine.
    fn take_over(&mut self, cx: &mut Context<'_>, incoming: Incoming) {
        let Incoming { socket, mut proto, policy, decision } = incoming;
        let session = self.proto.take_session();
        let now = cx.now();
        proto.handle_accept_decision(now, policy, decision, session);
        self.close_socket(cx);
        self.proto = proto;
        self.policy = Some(policy);
        self.socket = Some(socket);
        self.server_side = true;
        self.recv = RecvBudget::default();
        // The session's new numbers and the end of the replace become visible together:
        // a connect racing this one must see either `replacing` or the new connect_seq,
        // never the old numbers without the mark (it would replace the session again).
        self.publish_snapshot(true);
        if let Err(e) = self.configure_socket().and_then(|()| self.register_socket(cx)) {
            log::info!(target: "msgr::conn", "{}: adopting replaced socket failed: {e}", self.proto);
            self.proto.handle_transport_closed(now);
        }
    }

    fn read(&mut self, cx: &mut Context<'_>) {
        if self.dialling || !self.read_ready {
            return;
        }
        if self.socket.is_none() {
            return;
        }
        let mut budget = self.core.config.read_budget;
        let chunk = self.core.config.read_buffer.max(4096);
        while budget > 0 && self.read_ready && self.proto.wants_read() {
            let Some(sock) = self.socket.as_ref() else { break };
            // A large segment arriving in pieces is read straight into the buffer it is
            // assembled in (never past its end), so it is not copied together later;
            // anything else goes into the worker's buffer and is split off as `Bytes`.
            let read = match self.proto.direct_read_buffer() {
                Some((buf, need)) => {
                    read_into_spare(sock, buf, need, need).map(|(n, asked)| (n, n < asked, None))
                }
                None => READ_BUF.with(|b| {
                    let mut b = b.borrow_mut();
                    read_into_spare(sock, &mut b, chunk, usize::MAX)
                        .map(|(n, asked)| (n, n < asked, Some(b.split().freeze())))
                }),
            };
            match read {
                Ok((0, _, _)) => {
                    self.read_ready = false;
                    self.proto.handle_transport_closed(cx.now());
                    break;
                }
                Ok((n, drained, chunk)) => {
                    // A short read emptied the socket's receive queue: the next bytes to
                    // arrive raise a new edge, so the read that would only say WouldBlock
                    // is skipped (one syscall per message saved). Not once the peer's
                    // close was reported: its EOF may sit behind these bytes and raises
                    // no further edge.
                    if drained && !self.peer_closed {
                        self.read_ready = false;
                    }
                    log::trace!(target: "msgr::conn", "{}: read {n}", self.proto);
                    budget = budget.saturating_sub(n);
                    self.counters
                        .recv_bytes
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    let whole_chunk = chunk.is_some();
                    match chunk {
                        Some(data) => self.proto.handle_bytes(cx.now(), data),
                        None => self.proto.handle_direct_read(cx.now(), n),
                    }
                    // Budget requests and decisions must be answered before reading on.
                    if self.proto.has_events() {
                        self.handle_events(cx);
                        if self.finished {
                            return;
                        }
                    }
                    if whole_chunk {
                        // Send what this chunk produced (replies from fast dispatch, acks)
                        // before parsing the next one: the peer starts on them while we
                        // read on, so the two ends overlap instead of trading whole batches.
                        self.drain_mailbox(cx);
                        if self.finished {
                            return;
                        }
                        self.flush(cx);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::info!(target: "msgr::conn", "{}: read error: {e}", self.proto);
                    self.read_ready = false;
                    self.proto.handle_transport_closed(cx.now());
                    break;
                }
            }
            if self.socket.is_none() {
                break;
            }
        }
        if budget == 0 && self.read_ready {
            // Stopped before WouldBlock: edge-triggered readiness will not fire again for
            // the bytes still buffered, so come back after other work on this worker.
            if let Some(id) = self.id {
                let _ = self.center.notify(id);
            }
        }
    }

    /// Writes everything the machine has queued, vectored. Returns whether bytes moved.
    fn flush(&mut self, cx: &mut Context<'_>) -> bool {
        if self.dialling || self.socket.is_none() {
            return false;
        }
        let sent_before = self.proto.messages_sent();
        // Frame more only while little waits for the socket: messages stay in the
        // protocol's queue (where they can still be requeued) rather than pile up here.
        if self.wsegs_bytes < FRAME_AHEAD {
            self.scratch.clear();
            let framed = self.proto.poll_transmit(&mut self.scratch);
            if framed > 0 {
                self.wsegs_bytes += framed;
                self.wsegs.extend(self.scratch.drain(..));
            }
        }
        let mut wrote_any = false;
        while self.write_ready && !self.wsegs.is_empty() {
            let Some(sock) = self.socket.as_mut() else { break };
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for seg in self.wsegs.iter().take(MAX_IOV) {
                iov[n_iov] = IoSlice::new(seg);
                n_iov += 1;
            }
            match sock.write_vectored(&iov[..n_iov]) {
                Ok(0) => {
                    self.write_ready = false;
                    break;
                }
                Ok(mut n) => {
                    log::trace!(target: "msgr::conn", "{}: wrote {n}", self.proto);
                    wrote_any = true;
                    self.wsegs_bytes = self.wsegs_bytes.saturating_sub(n);
                    self.counters
                        .send_bytes
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    while n > 0 {
                        let Some(front) = self.wsegs.front_mut() else { break };
                        if n >= front.len() {
                            n -= front.len();
                            self.wsegs.pop_front();
                        } else {
                            let _ = front.split_to(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::info!(target: "msgr::conn", "{}: write error: {e}", self.proto);
                    self.write_ready = false;
                    self.wsegs.clear();
                    self.wsegs_bytes = 0;
                    self.proto.handle_transport_closed(cx.now());
                    break;
                }
            }
        }
        // The write deadline: bytes waiting that the socket takes none of.
        if wrote_any || self.wsegs.is_empty() {
            self.proto.handle_write_progress(cx.now());
        }
        if !self.wsegs.is_empty() && !self.write_ready {
            self.proto.handle_write_blocked(cx.now());
        }
        let framed = self.proto.messages_sent().saturating_sub(sent_before);
        self.counters.send_messages.fetch_add(framed, std::sync::atomic::Ordering::Relaxed);
        wrote_any
    }

    /// Handles every pending protocol event. Returns whether any was handled.
    fn handle_events(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        while let Some(ev) = self.proto.poll_event() {
            any = true;
            self.handle_event(cx, ev);
            if self.finished {
                break;
            }
        }
        // A fault dropped the message being received: so does its budget.
        if self.recv.is_active() && !self.proto.message_in_progress() {
            self.recv = RecvBudget::default();
        }
        any
    }

    fn handle_event(&mut self, cx: &mut Context<'_>, ev: Event) {
        let now = cx.now();
        match ev {
            Event::AcceptRequest(req) => self.decide_accept(cx, req),
            Event::VerifyAuthorizer { peer_type, protocol, authorizer } => {
                let verdict = self.core.dispatchers.verify_authorizer(
                    &self.conn,
                    peer_type.0,
                    protocol,
                    &authorizer,
                );
                let verdict = match verdict {
                    AuthVerdict::Accept { reply } => {
                        v1::AuthVerdict::Accept { reply: reply.into() }
                    }
                    AuthVerdict::Reject => v1::AuthVerdict::Reject,
                };
                self.proto.handle_authorizer_verdict(now, verdict);
            }
            Event::Opened(opened) => {
                {
                    let mut peer = self.conn.0.peer.lock();
                    peer.addr = Some(opened.peer_addr);
                    peer.entity_type = Some(opened.peer_type);
                    peer.features = opened.features;
                }
                self.conn.set_state(ConnState::Open);
                log::info!(target: "msgr::conn", "{}: open", self.proto);
                let ev = if self.server_side {
                    QueueEvent::Accept(self.conn.clone())
                } else {
                    QueueEvent::Connect(self.conn.clone())
                };
                self.core.queue.enqueue_event(ev);
            }
            Event::NeedBudget { bytes } => {
                let first = self.recv.permits.iter().all(Option::is_none);
                if !first && self.recv.inflight.iter().all(Option::is_none) {
                    // A second window: from now on this message holds budget while it
                    // waits for more, so it registers as in progress (the oldest one
                    // always goes on; see `dispatch::throttle`).
                    let ticket = Ticket::next();
                    let (tb, _) = self.throttlers();
                    self.recv.inflight[STEP_POLICY_BYTES] = tb.map(|t| t.begin_inflight(ticket));
                    self.recv.inflight[STEP_DISPATCH] =
                        Some(self.core.dispatch_throttle.begin_inflight(ticket));
                }
                self.recv.want = Some(Want { bytes, first });
                self.recv.step = 0;
                self.try_budget(cx);
            }
            Event::Message(mut msg) => {
                self.counters.recv_messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                msg.set_dispatch_stamp(now);
                if let Some(src) = msg.src() {
                    let mut peer = self.conn.0.peer.lock();
                    if peer.name != Some(src) {
                        peer.name = Some(src);
                    }
                }
                // The dispatch-throttle permit travels with the message until its
                // dispatcher returns, charged exactly what the queued message costs; the
                // policy throttlers' permits (and the in-progress registrations) are
                // released when the message is handed over.
                let mut recv = std::mem::take(&mut self.recv);
                let mut permit = recv.permits[STEP_DISPATCH].take();
                if let Some(p) = permit.as_mut() {
                    p.settle(msg.queued_cost());
                }
                drop(recv);
                if dispatch::ConnectionRef::is_marked_down(&self.conn) {
                    // Read after mark_down: never delivered (the MarkDown command that
                    // closes this driver is on its way).
                    return;
                }
                let _ = self.core.queue.deliver(&self.conn, msg, permit);
            }
            Event::Acked { .. } => {}
            Event::KeepaliveReceived => {
                self.conn.0.keepalive.lock().0 = Some(now);
            }
            Event::KeepaliveAck(stamp) => {
                self.conn.0.keepalive.lock().1 = Some(stamp);
            }
            Event::Reconnect { .. } => {
                self.conn.set_state(ConnState::Connecting);
                match self.dial.or_else(|| self.conn.peer_addr().and_then(|a| a.addr)) {
                    Some(addr) => {
                        self.dial = Some(addr);
                        if let Err(e) = self.dial_now(cx, addr) {
                            log::info!(target: "msgr::conn", "{}: dial {addr} failed: {e}", self.proto);
                            self.proto.handle_transport_closed(now);
                        } else {
                            // The machine restarts its handshake once the TCP connect is done.
                        }
                    }
                    None => self.finish(cx),
                }
            }
            Event::Standby => {
                self.close_socket(cx);
                self.conn.set_state(ConnState::Standby);
            }
            Event::Reset => {
                // Dead before anyone hears of it: a dispatcher reacting to the reset
                // (MonClient dialling again) must get a new session from
                // get_connection, and sends on this handle must fail.
                self.core.forget(&self.conn);
                self.conn.set_state(ConnState::Closed);
                self.conn.0.mailbox.lock().closed = true;
                self.core.queue.enqueue_event(QueueEvent::Reset(self.conn.clone()));
            }
            Event::RemoteReset => {
                self.core.queue.enqueue_event(QueueEvent::RemoteReset(self.conn.clone()));
            }
            Event::Refused => {
                self.core.queue.enqueue_event(QueueEvent::Refused(self.conn.clone()));
            }
            Event::Closed { by, reason } => {
                log::info!(target: "msgr::conn", "{}: closed by {by:?}: {reason}", self.proto);
                self.finish(cx);
            }
        }
    }

    /// The peer type's (bytes, messages) policy throttlers; the type is fixed once
    /// known, so they are looked up once.
    fn throttlers(&mut self) -> crate::messenger::ThrottlerPair {
        if self.throttlers.is_none() {
            let peer_type = self.conn.peer_type().unwrap_or(EntityType::ANY);
            self.throttlers = Some(self.core.policies.read().throttlers(peer_type));
        }
        self.throttlers.clone().unwrap_or((None, None))
    }

    /// Serves the pending request for the message being received, throttle by throttle
    /// (policy messages, policy bytes, dispatch bytes). When one makes it wait, the
    /// driver stops reading; the request's grant calls a waker (a notify of this
    /// driver), and `notify` picks it up here. One queued request per throttle at a
    /// time, however often the driver is notified for other reasons.
    fn try_budget(&mut self, cx: &mut Context<'_>) {
        let Some(want) = self.recv.want else { return };
        let Some(id) = self.id else { return };
        let (tb, tm) = self.throttlers();
        // The first window also pays for the message itself.
        let bytes = want.bytes + if want.first { MESSAGE_OVERHEAD } else { 0 };
        while self.recv.step < STEPS {
            let step = self.recv.step;
            let (throttle, n) = match step {
                STEP_MESSAGES => (tm.as_ref(), u64::from(want.first)),
                STEP_POLICY_BYTES => (tb.as_ref(), bytes),
                _ => (Some(&self.core.dispatch_throttle), bytes),
            };
            let Some(throttle) = throttle.filter(|_| n > 0) else {
                self.recv.step += 1;
                continue;
            };
            let permit = match self.recv.waiting.take() {
                Some(waiting) => match waiting.try_take() {
                    Ok(p) => p,
                    Err(waiting) => {
                        self.recv.waiting = Some(waiting);
                        return;
                    }
                },
                // Room now is the common case: no waker to build.
                None => match throttle.try_acquire(n) {
                    Some(p) => p,
                    None => {
                        let center = self.center.clone();
                        let waker = Box::new(move || {
                            let _ = center.notify(id);
                        });
                        let asked = match &self.recv.inflight[step] {
                            Some(inflight) => inflight.acquire_or_wait(n, waker),
                            None => throttle.acquire_or_wait(n, waker),
                        };
                        match asked {
                            Ok(p) => p,
                            Err(waiting) => {
                                self.recv.waiting = Some(waiting);
                                return;
                            }
                        }
                    }
                },
            };
            match &mut self.recv.permits[step] {
                Some(held) => {
                    let _ = held.merge(permit);
                }
                slot => *slot = Some(permit),
            }
            self.recv.step += 1;
        }
        self.recv.want = None;
        self.proto.grant_budget(cx.now());
    }

    /// The accept decision: the machine parsed and pre-checked the peer's connect; the
    /// session table says whether a session exists (Ceph's `handle_connect_message`).
    fn decide_accept(&mut self, cx: &mut Context<'_>, req: v1::AcceptRequest) {
        let now = cx.now();
        let policy = self.core.policies.read().policy(req.peer_type);
        let my_addr = *self.core.my_addr.read();
        {
            let mut peer = self.conn.0.peer.lock();
            peer.addr = Some(req.peer_addr);
            peer.entity_type = Some(req.peer_type);
        }
        let (Some(id), true) = (self.id, self.socket.is_some()) else {
            // Not running or no socket: nothing to decide for (the machine faults).
            self.proto.handle_transport_closed(now);
            return;
        };
        // One critical section of the session table: look the session up, read its
        // snapshot, decide, and apply the table's side of the decision (register this
        // connection, or mark the existing session as being replaced). Two connects
        // racing for one peer on two workers then see each other's outcome: the second
        // finds `replacing` set and is told to retry. No callback and no syscall runs
        // inside; the lock order is sessions → snapshot everywhere.
        let (decision, existing, existing_lossy) = {
            let mut sessions = self.core.sessions.lock();
            let existing = sessions
                .get(&req.peer_addr)
                .filter(|c| *c != &self.conn && c.state() != ConnState::Closed)
                .cloned();
            let mut snapshot = existing.as_ref().map(|c| c.0.snapshot.lock());
            let view = existing.as_ref().zip(snapshot.as_deref()).map(|(c, s)| ExistingSession {
                state: match c.state() {
                    ConnState::Open => v1::ExistingState::Open,
                    ConnState::Standby => v1::ExistingState::Standby,
                    ConnState::Connecting => v1::ExistingState::Connecting,
                    ConnState::Closed => v1::ExistingState::Closed,
                },
                connect_seq: s.connect_seq,
                peer_global_seq: s.peer_global_seq,
                lossy: s.lossy,
                server_side: s.server_side,
                replacing: s.replacing,
            });
            let decision = v1::decide(&req, view.as_ref(), &policy, &my_addr);
            let existing_lossy = view.is_some_and(|v| v.lossy);
            match (&decision, snapshot.as_deref_mut()) {
                (Decision::Replace { .. }, Some(s)) if !existing_lossy => s.replacing = true,
                (Decision::Open { .. } | Decision::Replace { .. }, _) => {
                    sessions.insert(req.peer_addr, self.conn.clone());
                }
                _ => {}
            }
            drop(snapshot);
            (decision, existing, existing_lossy)
        };
        log::debug!(target: "msgr::conn", "{}: accept decision {decision:?}", self.proto);
        match (&decision, existing) {
            (Decision::Replace { .. }, Some(existing)) if !existing_lossy => {
                // Lossless replace: the existing session adopts this socket. From here
                // on nothing returns early with `replacing` set: either the existing
                // driver adopts the socket (and clears it), or it is already closed.
                let Some(socket) = self.socket.take() else { return };
                let _ = cx.deregister(id);
                let proto = std::mem::replace(
                    &mut self.proto,
                    v1::Connection::accept(
                        self.core.proto_config(),
                        req.socket_peer,
                        req.socket_peer,
                        now,
                    ),
                );
                let incoming = Incoming { socket, proto, policy, decision };
                if !existing.post(Command::TakeOver(Box::new(incoming))) {
                    // Closed meanwhile: the socket is dropped and the peer connects again.
                    existing.0.snapshot.lock().replacing = false;
                }
                // This driver's handle never opened; it vanishes without callbacks.
                self.cleanup();
                cx.remove(id);
            }
            (Decision::Replace { .. }, Some(existing)) => {
                // Lossy existing session: it is reset, this one becomes the session.
                existing.0.core.upgrade().map(|c| c.queue.discard(existing.id()));
                let _ = existing.post(Command::MarkDown);
                self.core.queue.enqueue_event(QueueEvent::Reset(existing));
                self.policy = Some(policy);
                self.proto.handle_accept_decision(now, policy, decision, None);
            }
            (Decision::Wait, Some(existing)) => {
                existing.send_keepalive();
                self.proto.handle_accept_decision(now, policy, decision, None);
            }
            (Decision::Open { .. } | Decision::Replace { .. }, _) => {
                self.policy = Some(policy);
                self.proto.handle_accept_decision(now, policy, decision, None);
            }
            _ => self.proto.handle_accept_decision(now, policy, decision, None),
        }
    }

    /// Updates this connection's share of the worker's gauges and of the send bounds.
    fn update_gauges(&mut self) {
        let held = if self.finished { 0 } else { self.proto.receive_held_bytes() as u64 };
        WorkerCounters::move_gauge(&self.counters.recv_held_bytes, &mut self.recv_held, held);
        let send = if self.finished {
            0
        } else {
            // A lossless session keeps framed messages until they are acknowledged
            // (counted by the machine); a lossy one forgets them once framed, so their
            // bytes count while they wait here.
            let framed = if self.proto.is_lossy() { self.wsegs_bytes as u64 } else { 0 };
            self.proto.send_held_cost() + framed
        };
        if send != self.send_held {
            self.conn.0.driver_cost.store(send, std::sync::atomic::Ordering::Relaxed);
            self.conn.0.send_budget.adjust(self.send_held, send);
            self.send_held = send;
        }
    }

    /// Moves the machine's peer-misbehaviour counts into the worker's counters.
    fn count_peer_issues(&mut self) {
        let (issues, unlogged) = self.proto.poll_peer_issues();
        if issues > 0 {
            self.counters.peer_issues.fetch_add(issues, std::sync::atomic::Ordering::Relaxed);
            self.counters
                .peer_issues_unlogged
                .fetch_add(unlogged, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes what another connection's accept decision needs to the handle's snapshot
    /// (and ends a replace when `replace_done`).
    fn publish_snapshot(&mut self, replace_done: bool) {
        let (_, _, connect_seq, peer_global_seq) = self.proto.seqs();
        let lossy = self.policy.as_ref().is_some_and(|p| p.lossy);
        // Ceph's `existing->policy.server`, not whether this connection was accepted: a
        // race between two lossless peers is decided by their addresses alone, the same
        // way on both sides.
        let server_policy = self.policy.as_ref().is_some_and(|p| p.server);
        let now = (connect_seq, peer_global_seq, lossy, server_policy);
        // These change only on (re)connects: skip the lock on every other pump.
        if self.published != Some(now) || replace_done {
            self.published = Some(now);
            let mut s = self.conn.0.snapshot.lock();
            s.connect_seq = connect_seq;
            s.peer_global_seq = peer_global_seq;
            s.lossy = lossy;
            s.server_side = server_policy;
            if replace_done {
                s.replacing = false;
            }
        }
    }

    fn publish(&mut self) {
        self.publish_snapshot(false);
        if self.proto.is_open() && self.conn.state() != ConnState::Open {
            self.conn.set_state(ConnState::Open);
        }
    }

    fn update_interest(&mut self, cx: &mut Context<'_>) {
        let (Some(id), Some(_)) = (self.id, self.socket.as_ref()) else { return };
        // READABLE stays registered even while a throttle holds reading back (the read
        // loop checks `wants_read`): every interest change is an epoll_ctl, and an edge
        // per arriving segment ends once the peer's window fills. WRITABLE only while
        // bytes wait or a connect is in progress.
        let want = if self.dialling || !self.wsegs.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if Some(want) != self.interest {
            if let Err(e) = cx.set_interest(id, Some(want)) {
                log::warn!(target: "msgr::conn", "{}: reregister failed: {e}", self.proto);
            }
            self.interest = Some(want);
        }
    }

    fn update_timer(&mut self, cx: &mut Context<'_>) {
        let want = self.proto.poll_timeout();
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

    /// Closes for good: unregisters, drops queued messages, releases the handler.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if self.finished {
            return;
        }
        // Counted before the socket closes, so whoever sees the close sees the counts.
        self.count_peer_issues();
        self.close_socket(cx);
        self.cleanup();
        if let Some((tid, _)) = self.timer.take() {
            cx.delete_time_event(tid);
        }
        if let Some(id) = self.id {
            cx.remove(id);
        }
    }

    /// Undoes everything this driver stands for outside itself, whichever way it ends
    /// (closed, its socket handed to another session, or dropped by the event center
    /// after a panic): the handle is closed and its queued messages dropped (with their
    /// share of the send bounds), the session table and connection list forget it, its
    /// gauges, the worker's load and the active-connection count go back, and a
    /// `replacing` mark on its own session is cleared. Needs no `Context`, so `Drop`
    /// can run it; runs once.
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        self.finished = true;
        self.count_peer_issues();
        self.update_gauges();
        self.conn.set_state(ConnState::Closed);
        {
            let mut mb = self.conn.0.mailbox.lock();
            mb.closed = true;
            mb.drop_messages(&self.conn.0.send_budget);
            mb.commands.clear();
        }
        self.conn.0.snapshot.lock().replacing = false;
        self.recv = RecvBudget::default();
        self.core.unregister(&self.conn);
        self.counters.active_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.center.add_load(-1);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Dropped without closing: a callback panicked (a user's fast dispatcher, say)
        // and the event center discarded the driver, or the center stopped. Without
        // this the session table would keep a dead session that swallows the peer's
        // reconnects.
        let was_open = matches!(self.conn.state(), ConnState::Open | ConnState::Standby);
        log::warn!(target: "msgr::conn", "{}: driver dropped without closing; cleaning up", self.proto);
        self.cleanup();
        if was_open {
            // The session's state is gone with the driver: for the dispatchers this is
            // a reset.
            self.core.queue.enqueue_event(QueueEvent::Reset(self.conn.clone()));
        }
    }
}

impl Handler for Driver {
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready) {
        log::trace!(target: "msgr::conn", "{}: ready {ready:?}", self.proto);
        if ready.readable || ready.closed {
            self.read_ready = true;
        }
        if ready.closed {
            self.peer_closed = true;
        }
        if ready.writable || ready.closed {
            self.write_ready = true;
        }
        if self.dialling && (ready.writable || ready.closed) {
            let now = cx.now();
            let connected = match self.socket.as_ref() {
                Some(s) => match s.take_error() {
                    Ok(None) => s.peer_addr().ok(),
                    _ => None,
                },
                None => None,
            };
            match connected {
                Some(peer) => {
                    self.dialling = false;
                    self.conn.0.peer.lock().socket_addr = Some(peer);
                    self.proto.handle_transport_connected(now);
                }
                None if ready.closed || ready.writable => {
                    self.dialling = false;
                    self.close_socket(cx);
                    self.proto.handle_transport_closed(now);
                }
                None => {}
            }
        }
        self.pump(cx);
    }

    fn timer(&mut self, cx: &mut Context<'_>, id: TimerId) {
        if self.timer.is_some_and(|t| t.0 == id) {
            self.timer = None;
        }
        self.proto.handle_timeout(cx.now());
        self.pump(cx);
    }

    fn notify(&mut self, cx: &mut Context<'_>) {
        if self.recv.want.is_some() {
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
        write!(f, "{}", self.proto)
    }
}
