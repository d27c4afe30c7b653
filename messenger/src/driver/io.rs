//! The driver's socket I/O: dial, read into the worker's buffer (or straight into a
//! large segment's own buffer), write every queued frame with one `writev`, derive the
//! mio interest, and the fault-injection seams that sit on those operations.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use dispatch::ConnectionRef;
use event_center::{Context, Ready};
use mio::net::TcpStream;
use mio::Interest;

use super::Driver;
use crate::counters::WorkerCounters;
use crate::machine::Machine;
use crate::state::ConnState;

/// Most iovecs handed to one `writev` (Linux's IOV_MAX is 1024): a client sending 64
/// requests of 4 KiB (two segments each: header and footer gathered, data by
/// reference) in one write, which costs it a fraction of four writes of 16.
const MAX_IOV: usize = 256;

/// The iovec array for a write list this short or shorter: a depth-1 write (one message
/// of two segments, an ack beside it). The array is filled afresh for each `writev`:
/// filling `SMALL_IOV`'s 32 slots for two cost ~50 instructions per write, ~100 of the
/// 250 `write_segments` took per 4 KiB round trip at depth 1 (both ends).
const TINY_IOV: usize = 4;

/// The next array up: most writes at depth are this short or shorter.
const SMALL_IOV: usize = 32;

/// The next array up: a client's window of 32 requests of 4 KiB (64 segments). Each
/// `writev` zeroes its whole array before filling it, and zeroing `MAX_IOV`'s 256 slots
/// for 64 cost ~900 instructions per write.
const MID_IOV: usize = 64;

/// A segment this large ends its `writev`: what follows it (a message's footer, the
/// frames after it) goes in the next one. Measured on loopback under BBR, whose pacing
/// some hosts default to: 1 MiB messages with the footer in the data's `writev` ran
/// 18–28 % fewer round trips than with it written apart, BBR's bandwidth estimate was
/// 52 against 131 Gbit/s and twice as many segments were retransmitted for nothing;
/// under cubic the two ran level (README, "Performance"). One syscall more per large
/// segment, against the ≥ 100 µs its copy takes.
const SPLIT_AFTER: usize = 256 << 10;

/// Frame more messages only while fewer bytes than this wait in the write list (one
/// `poll_transmit` batch): what cannot be written stays in the protocol's queue.
const FRAME_AHEAD: usize = 1 << 20;

/// The smallest chunk a read asks the kernel for.
const MIN_READ_CHUNK: usize = 4096;

/// How much a read asks the kernel for (and the worker's read buffer is renewed by):
/// `read_buffer`, at least [`MIN_READ_CHUNK`].
pub(crate) fn read_chunk(read_buffer: usize) -> usize {
    read_buffer.max(MIN_READ_CHUNK)
}

/// The driver's socket and what it knows of its readiness.
pub(super) struct Io {
    pub(super) socket: Option<TcpStream>,
    /// Where to dial (outgoing connections, and accepted ones once the peer's address
    /// is known).
    pub(super) dial: Option<SocketAddr>,
    /// TCP connect in progress.
    pub(super) dialling: bool,
    /// The connect in progress completed or failed while the session was frozen for a
    /// replace: its result is taken once the freeze ends (`Driver::finish_deferred_dial`),
    /// or dropped with the socket at the hand-off.
    dial_settled: bool,
    /// Frames handed to us by the machine and not yet fully written: `wsegs[whead..]`.
    /// The slots before `whead` were written and emptied (their buffers released at
    /// once); they go when the list is next appended to, if they are at least as many as
    /// the segments still waiting, and all of them once everything is written (the list
    /// is then empty and `whead` 0). A `VecDeque` here cost a conversion to and from the
    /// `Vec` the machine frames into, and its `truncate`, ~250 instructions per 4 KiB
    /// round trip at depth 1.
    wsegs: Vec<Bytes>,
    whead: usize,
    /// Bytes in `wsegs`.
    pub(super) wsegs_bytes: usize,
    /// The socket reported readable and we have not seen WouldBlock since.
    pub(super) read_ready: bool,
    /// The socket reported the peer's close (or an error): read until EOF or error.
    peer_closed: bool,
    /// The socket was cut by an injected failure: the next read sees the link dead at
    /// once, whatever the kernel still buffered.
    cut: bool,
    write_ready: bool,
    interest: Option<Interest>,
    /// Whether the socket's peer is on this host (`None`: not asked yet on this socket).
    same_host: Option<bool>,
    /// Whether the peer sent from the CPU this driver runs on, at the last look and at
    /// the look before it (see [`Io::peer_on_our_cpu`]).
    cpu_seen: bool,
    cpu_seen_before: bool,
    /// Read phases that asked [`Io::peer_on_our_cpu`], and whether this one has.
    cpu_asks: u32,
    cpu_asked: bool,
}

impl Io {
    pub(super) fn new(socket: Option<TcpStream>, dial: Option<SocketAddr>) -> Io {
        Io {
            socket,
            dial,
            dialling: false,
            dial_settled: false,
            wsegs: Vec::new(),
            whead: 0,
            wsegs_bytes: 0,
            read_ready: true,
            peer_closed: false,
            cut: false,
            write_ready: true,
            interest: None,
            same_host: None,
            cpu_seen: false,
            cpu_seen_before: false,
            cpu_asks: 0,
            cpu_asked: false,
        }
    }

    /// Drops every frame not yet written.
    fn clear_wsegs(&mut self) {
        self.wsegs.clear();
        self.whead = 0;
        self.wsegs_bytes = 0;
    }

    /// `n` bytes of the write list were written, fewer than it holds: the segments they
    /// cover are released and the list resumes at the first byte not written.
    fn consume_written(&mut self, mut n: usize) {
        self.wsegs_bytes = self.wsegs_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.wsegs.get_mut(self.whead) else { break };
            if n >= front.len() {
                n -= front.len();
                // Released now, not when the slot goes: a written segment pins nothing.
                drop(std::mem::take(front));
                self.whead += 1;
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if self.whead >= self.wsegs.len() {
            self.wsegs.clear();
            self.whead = 0;
        }
    }

    /// Drops the written slots before the list grows, when they are at least as many as
    /// the segments still waiting: each slot is moved at most once per slot written, and
    /// the list never holds more than twice what waits plus one batch, however long a
    /// full socket keeps part of it.
    fn compact_wsegs(&mut self) {
        if self.whead > 0 && self.whead >= self.wsegs.len() - self.whead {
            self.wsegs.drain(..self.whead);
            self.whead = 0;
        }
    }

    /// Frames more into the write list (see `Machine::poll_transmit`); returns the bytes.
    fn frame_into_wsegs(&mut self, machine: &mut Machine) -> usize {
        self.compact_wsegs();
        let before = self.wsegs.len();
        let framed = machine.poll_transmit(&mut self.wsegs);
        // The machine appends no empty segment (a frame's pieces are gathered or pushed
        // whole only when non-empty): nothing framed leaves the list as it was, not
        // holding segments of nothing, whose `writev` of 0 bytes read as a full socket.
        debug_assert!(framed > 0 || self.wsegs.len() == before, "empty segments framed");
        self.wsegs_bytes += framed;
        framed
    }

    /// A new read phase: [`Io::peer_on_our_cpu`] answers once per phase.
    pub(super) fn new_read_phase(&mut self) {
        self.cpu_asked = false;
    }

    /// A new socket: nothing is known of its peer.
    fn forget_peer(&mut self) {
        self.same_host = None;
        self.cpu_seen = false;
        self.cpu_seen_before = false;
        self.cpu_asks = 0;
        self.cpu_asked = false;
    }

    /// Whether the peer is on this host and runs on the CPU we run on: then it cannot
    /// run before this thread sleeps, and a reply written early only adds a write.
    ///
    /// Looked at in the first of every [`CPU_LOOK_EVERY`] read phases that ask (a
    /// `getsockopt` each: 64 B depth 128 ran 4 % slower with one per phase), by
    /// `SO_INCOMING_CPU`: the CPU whose network stack took the socket's last packet,
    /// which on loopback is the sender's — but also ours for a packet our own sending
    /// provoked (an ACK, data clocked out by it): with the ends pinned to different CPUs
    /// 8–10 % of looks saw the peer on ours. So it counts only when two looks in a row
    /// saw it. A peer on another host (whose packets the NIC's CPU takes) never counts.
    ///
    /// Inlined: it is asked for every message delivered, and all but the first ask of a
    /// phase only read the answer (~15 instructions per 4 KiB round trip as a call).
    #[inline]
    pub(super) fn peer_on_our_cpu(&mut self) -> bool {
        if !self.cpu_asked {
            self.first_ask_of_phase();
        }
        self.cpu_seen && self.cpu_seen_before
    }

    /// [`Io::peer_on_our_cpu`]'s first ask in a read phase: counts it, and looks at the
    /// peer's CPU if it is the phase's turn.
    #[inline(never)]
    fn first_ask_of_phase(&mut self) {
        self.cpu_asked = true;
        if self.cpu_asks.is_multiple_of(CPU_LOOK_EVERY) {
            self.cpu_seen_before = self.cpu_seen;
            self.cpu_seen = match &self.socket {
                Some(s) if *self.same_host.get_or_insert_with(|| same_host(s)) => {
                    let sock = socket2::SockRef::from(s);
                    // SAFETY: sched_getcpu takes no arguments and only reads the calling
                    // thread's CPU number (glibc: from its rseq area).
                    let ours = unsafe { libc::sched_getcpu() };
                    matches!(
                        (sock.cpu_affinity(), usize::try_from(ours)),
                        (Ok(theirs), Ok(ours)) if theirs == ours
                    )
                }
                _ => false,
            };
        }
        self.cpu_asks = self.cpu_asks.wrapping_add(1);
    }

    /// Bytes are waiting in readable socket data the driver has not taken.
    pub(super) fn unread(&self) -> bool {
        self.read_ready && !self.dialling && self.socket.is_some()
    }
}

/// [`Io::peer_on_our_cpu`] looks at the peer's CPU once in this many read phases that
/// ask: threads move between CPUs seldom, on the scale of many read phases.
const CPU_LOOK_EVERY: u32 = 8;

/// Whether a connected socket's peer is on this host: a loopback address, or our own
/// address (the kernel routes that over loopback too). Unknown addresses count as remote.
fn same_host(s: &TcpStream) -> bool {
    match (s.local_addr(), s.peer_addr()) {
        (Ok(local), Ok(peer)) => peer.ip().is_loopback() || peer.ip() == local.ip(),
        _ => false,
    }
}

thread_local! {
    /// The worker's read buffers, shared by all connections of that worker: reads land in
    /// their spare capacity and are split off as `Bytes`, so an idle connection holds no
    /// buffer at all and a busy worker reuses one block until messages release it. One
    /// per read size ([`read_chunk`]), so a connection's reads come in blocks of its own
    /// messenger's size, which its machine copies below a quarter of
    /// (`protocol::Config::read_size`): messengers sharing a pool with different
    /// `read_buffer`s (an OSD's) sharing one, a trickled piece of a small-buffer
    /// messenger's frame kept the larger one's whole block alive.
    static READ_BUF: std::cell::RefCell<Vec<(usize, BytesMut)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on the calling worker's read buffer for reads of `chunk` bytes.
fn with_read_buf<R>(chunk: usize, f: impl FnOnce(&mut BytesMut) -> R) -> R {
    READ_BUF.with(|bufs| {
        let mut bufs = bufs.borrow_mut();
        let i = match bufs.iter().position(|(c, _)| *c == chunk) {
            Some(i) => i,
            None => {
                bufs.push((chunk, BytesMut::new()));
                bufs.len() - 1
            }
        };
        f(&mut bufs[i].1)
    })
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
    // Never no room at all: a read of 0 bytes returns 0 at once, which would be taken
    // for the peer's EOF.
    if buf.capacity() - buf.len() < (chunk / 4).max(1) {
        buf.reserve(chunk.max(1));
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

impl Driver {
    pub(super) fn configure_socket(&self) -> io::Result<()> {
        if let Some(s) = &self.io.socket {
            let config = &self.env.config;
            s.set_nodelay(config.tcp_nodelay)?;
            let sock = socket2::SockRef::from(s);
            if config.tcp_rcvbuf > 0 {
                sock.set_recv_buffer_size(config.tcp_rcvbuf)?;
            }
            if config.tcp_sndbuf > 0 {
                sock.set_send_buffer_size(config.tcp_sndbuf)?;
            }
            if let Some(name) = &config.tcp_congestion {
                crate::config::set_tcp_congestion(sock, name)?;
            }
            if let Some(prio) = config.socket_priority {
                crate::config::set_socket_priority(socket2::SockRef::from(s), prio)?;
            }
        }
        Ok(())
    }

    pub(super) fn register_socket(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let (Some(id), Some(s)) = (self.id, self.io.socket.as_ref()) else {
            return Ok(());
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        cx.register_source(id, s, interest)?;
        self.io.interest = Some(interest);
        self.io.read_ready = true;
        self.io.peer_closed = false;
        self.io.cut = false;
        self.io.write_ready = true;
        self.io.forget_peer();
        self.seams.new_socket();
        Ok(())
    }

    /// Takes `socket` as this connection's socket (an adopted replace).
    pub(super) fn adopt_socket(
        &mut self,
        cx: &mut Context<'_>,
        socket: TcpStream,
    ) -> io::Result<()> {
        self.close_socket(cx);
        self.io.socket = Some(socket);
        self.configure_socket()?;
        self.register_socket(cx)
    }

    pub(super) fn dial_now(&mut self, cx: &mut Context<'_>, addr: SocketAddr) -> io::Result<()> {
        self.close_socket(cx);
        if self.seams.fail_socket() {
            log::info!(target: "msgr::conn", "{}: injected socket failure (dial)", self.machine);
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "injected dial failure"));
        }
        let source = *self.env.source_ip.lock();
        let s = match source {
            Some(from) => dial_from(from, addr)?,
            None => TcpStream::connect(addr)?,
        };
        self.io.socket = Some(s);
        self.io.dialling = true;
        // A dial that fails leaves no socket: the caller reports the failure to the
        // machine, which backs off, and a socket kept here would go on connecting
        // through the backoff and report its connect to a machine not waiting for one.
        if let Err(e) = self.configure_socket().and_then(|()| self.register_socket(cx)) {
            self.close_socket(cx);
            return Err(e);
        }
        self.conn.set_state(ConnState::Connecting);
        Ok(())
    }

    /// Closes the socket a fault left behind, as Ceph's `AsyncConnection::fault` does
    /// (`shutdown_socket`) before the protocol decides what comes next: the machine
    /// waits out its reconnect backoff and is done with this socket. Kept until the
    /// redial, it told the peer nothing for as long as the backoff (`max_backoff`, 15 s
    /// by default, after a WAIT) while holding a descriptor on both ends. The session
    /// is untouched: the redial after the backoff replays it as before.
    ///
    /// A session cut straight after it opened backs off too, without a reconnect event:
    /// it is published as connecting, not open (`is_connected`, and the state the accept
    /// decision of a racing connection from the peer reads).
    pub(super) fn close_socket_left_by_fault(&mut self, cx: &mut Context<'_>) {
        if !self.machine.is_backing_off() {
            return;
        }
        if self.io.socket.is_some() {
            log::debug!(target: "msgr::conn", "{}: socket closed until the redial", self.machine);
            self.close_socket(cx);
        }
        if self.conn.state() == ConnState::Open {
            // The connect_seq the fault moved on first (see `Event::Reconnect`'s).
            self.publish_snapshot(false);
            self.conn.set_state(ConnState::Connecting);
        }
    }

    pub(super) fn close_socket(&mut self, cx: &mut Context<'_>) {
        if let Some(socket) = self.io.socket.take() {
            // Out of the poll set before the fd is closed: closed first, the deregistration
            // named a closed (or already reused) fd.
            if let Some(id) = self.id {
                let _ = cx.deregister(id);
            }
            drop(socket);
        }
        self.io.interest = None;
        self.io.clear_wsegs();
        self.io.dialling = false;
        self.io.dial_settled = false;
    }

    /// Readiness of the socket: remembered, and a dial in progress completes or fails.
    pub(super) fn on_ready(&mut self, cx: &mut Context<'_>, ready: Ready) {
        if ready.readable || ready.closed {
            self.io.read_ready = true;
        }
        if ready.closed {
            self.io.peer_closed = true;
        }
        if ready.writable || ready.closed {
            self.io.write_ready = true;
        }
        if self.io.dialling && (ready.writable || ready.closed) {
            if self.conn.replace_pending() {
                // Frozen for a replace: the session takes no input, as Ceph's existing
                // connection in state NONE after `reuse_connection` ignores its
                // connect's result. A failed dial handled now faulted the session (its
                // connect_seq moved on), which voided the decision at the hand-off: one
                // more reconnect of the peer. Kept for the end of the freeze (the edge
                // does not come again): taken by the pump once the mark is gone (a
                // voided replace wakes it), or dropped with the socket at the adoption.
                log::debug!(target: "msgr::conn", "{}: dial settled while frozen for a replace, its result kept", self.machine);
                self.io.dial_settled = true;
                return;
            }
            self.take_dial_result(cx);
        }
    }

    /// Takes the result of a dial whose socket settled while the session was frozen
    /// for a replace (see [`Self::on_ready`]), once the freeze is over.
    pub(super) fn finish_deferred_dial(&mut self, cx: &mut Context<'_>) {
        if std::mem::take(&mut self.io.dial_settled) && self.io.dialling {
            self.take_dial_result(cx);
        }
    }

    /// The socket of the dial in progress settled: the machine hears that it connected,
    /// or that it failed.
    fn take_dial_result(&mut self, cx: &mut Context<'_>) {
        let now = cx.now();
        let connected = match self.io.socket.as_ref() {
            Some(s) => match s.take_error() {
                Ok(None) => s.peer_addr(),
                Ok(Some(e)) | Err(e) => Err(e),
            },
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        self.io.dialling = false;
        self.io.dial_settled = false;
        match connected {
            Ok(peer) => {
                self.conn.0.published.lock().socket_addr = Some(peer);
                self.machine.handle_transport_connected(now);
            }
            Err(e) => {
                self.close_socket(cx);
                self.report_refused_dial(&e);
                self.machine.handle_transport_closed(now);
            }
        }
    }

    /// Shuts the socket down both ways, as a network failure would: the next read sees
    /// the link dead and the next write an error, which fault the session the ordinary
    /// way. What the kernel had received and we had not read is lost with the link (as
    /// a reset loses it): read after `shutdown`, acks already buffered would be taken
    /// first, and a cut meant to leave messages unacknowledged could find none.
    fn cut_socket(&mut self) {
        if let Some(s) = &self.io.socket {
            let _ = s.shutdown(Shutdown::Both);
            self.io.read_ready = true;
            self.io.peer_closed = true;
            self.io.cut = true;
        }
    }

    /// Whether an injected cut (`Connection::inject_socket_failure`) waits and the
    /// session is open on a socket not cut yet.
    pub(super) fn cut_ready(&self) -> bool {
        self.seams.cut_wanted() && self.io.socket.is_some() && self.machine.is_open()
    }

    /// Cuts the socket for one pending `inject_socket_failure`, once the session is open
    /// on a socket not cut yet: a cut asked for while another is still being recovered
    /// from waits for the next session, so each call costs exactly one reconnect.
    pub(super) fn apply_injected_cut(&mut self) {
        if self.cut_ready() {
            log::info!(target: "msgr::conn", "{}: injected socket failure", self.machine);
            self.cut_socket();
            self.seams.cut_applied();
        }
    }

    pub(super) fn read(&mut self, cx: &mut Context<'_>) {
        if self.io.dialling || !self.io.read_ready || self.io.socket.is_none() {
            return;
        }
        self.last_burst = std::mem::take(&mut self.burst);
        self.io.new_read_phase();
        self.set_progress_floor(cx.now());
        let mut budget = self.env.config.read_budget;
        let chunk = read_chunk(self.env.config.read_buffer);
        while budget > 0 && self.io.read_ready && self.machine.wants_read() {
            self.seams.run_before_read();
            if self.seams.fail_socket() {
                log::info!(target: "msgr::conn", "{}: injected socket failure (read)", self.machine);
                self.cut_socket();
            }
            if self.io.cut {
                self.io.read_ready = false;
                self.machine.handle_transport_closed(cx.now());
                break;
            }
            let Some(sock) = self.io.socket.as_ref() else { break };
            // A large segment arriving in pieces is read straight into the buffer it is
            // assembled in (never past its end), so it is not copied together later;
            // anything else goes into the worker's buffer and is split off as `Bytes`.
            let read = match self.machine.direct_read_buffer() {
                Some((buf, need)) => {
                    read_into_spare(sock, buf, need, need).map(|(n, asked)| (n, n < asked, None))
                }
                None => with_read_buf(chunk, |b| {
                    read_into_spare(sock, b, chunk, usize::MAX)
                        .map(|(n, asked)| (n, n < asked, Some(b.split().freeze())))
                }),
            };
            match read {
                Ok((0, _, _)) => {
                    self.io.read_ready = false;
                    self.machine.handle_transport_closed(cx.now());
                    break;
                }
                Ok((n, drained, chunk)) => {
                    // A short read emptied the socket's receive queue: the next bytes to
                    // arrive raise a new edge, so the read that would only say WouldBlock
                    // is skipped (one syscall per message saved). Not once the peer's
                    // close was reported: its EOF may sit behind these bytes and raises
                    // no further edge.
                    if drained && !self.io.peer_closed {
                        self.io.read_ready = false;
                    }
                    log::trace!(target: "msgr::conn", "{}: read {n}", self.machine);
                    budget = budget.saturating_sub(n);
                    WorkerCounters::add_own(&self.counters.recv_bytes, n as u64);
                    match chunk {
                        Some(data) => {
                            self.credit_for_read(n);
                            self.machine.handle_bytes(cx.now(), data);
                        }
                        None => self.machine.handle_direct_read(cx.now(), n),
                    }
                    // Budget requests and decisions must be answered before reading on.
                    if self.machine.has_events() {
                        self.handle_events(cx);
                        if self.finished {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.read_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::info!(target: "msgr::conn", "{}: read error: {e}", self.machine);
                    self.io.read_ready = false;
                    self.machine.handle_transport_closed(cx.now());
                    break;
                }
            }
            if self.io.socket.is_none() {
                break;
            }
        }
        if budget == 0 && self.io.read_ready {
            // Stopped before WouldBlock: edge-triggered readiness will not fire again for
            // the bytes still buffered, so come back after other work on this worker.
            self.notify_self(cx);
        }
    }

    /// Writes everything the machine has queued, vectored. Returns whether bytes moved.
    pub(super) fn flush(&mut self, cx: &mut Context<'_>) -> bool {
        // Nothing is written while the session is frozen for a replace, from the moment
        // the decision marks it (the load is per flush, not per pump: a pump that began
        // before the mark wrote on for its rounds), as Ceph's `reuse_connection` sets
        // the existing connection's `can_write` to false in the decision's critical
        // section. A write to a socket the peer had left faulted the session, which
        // voided the decision (`Replacement::still_holds`) and cost the peer one more
        // reconnect. What waits goes out on the adopted socket (or on this one once a
        // voided replace wakes the session); nothing grows meanwhile that does not
        // anyway: the protocol's queue takes `MAX_IN_PROTOCOL` messages at most and the
        // rest wait in the mailbox under the send bounds. The write deadline waits too
        // (the machine's timer is not armed while frozen).
        if self.io.dialling || self.io.socket.is_none() || self.conn.replace_pending() {
            return false;
        }
        // What other connections' accept decisions read of this session is published
        // before any byte the peer could act on leaves: a peer that gets the reply
        // opening the session and is cut right after reconnects at once, and its next
        // connect must be decided against the new connect_seq, not the last one
        // published (it would be told to reset its session).
        self.publish_snapshot(false);
        let sent_before = self.machine.messages_sent();
        // Frame more only while little waits for the socket, and only while it takes
        // bytes: messages stay in the protocol's queue (where they can still be
        // requeued) rather than pile up here, and what the peer's frames ask us to send
        // back stays one owed frame (framed per pump into a full socket's list, a peer
        // sending KEEPALIVE2s and never reading queued an ack per read, up to 1 MiB).
        if self.io.wsegs_bytes < FRAME_AHEAD && (self.io.write_ready || self.io.wsegs.is_empty()) {
            self.io.frame_into_wsegs(&mut self.machine);
        }
        let mut wrote_any = false;
        while self.io.write_ready && !self.io.wsegs.is_empty() {
            if self.seams.fail_socket() {
                log::info!(target: "msgr::conn", "{}: injected socket failure (write)", self.machine);
                self.cut_socket();
            }
            if self.seams.congest_write() {
                // As if the socket were full; it is not, so no edge will come: the pump
                // comes back by itself (see `take_write_retry`).
                self.io.write_ready = false;
                break;
            }
            self.seams.run_before_write();
            if self.conn.takes_no_messages() {
                // mark_down returned on another thread during this pump (the connection's
                // silent one, or the messenger's `mark_down`, `mark_down_all` or
                // shutdown, which end the session to report it): Ceph's stops the
                // connection before it returns, so nothing more of it goes out (a late
                // handshake frame could replace the peer's next session). Its MarkDown
                // command, in the mailbox, closes this driver next.
                break;
            }
            let Some(sock) = self.io.socket.as_mut() else { break };
            let segs = self.io.wsegs.get(self.io.whead..).unwrap_or_default();
            let written = if segs.len() <= TINY_IOV {
                write_segments::<TINY_IOV>(sock, segs)
            } else if segs.len() <= SMALL_IOV {
                write_segments::<SMALL_IOV>(sock, segs)
            } else if segs.len() <= MID_IOV {
                write_segments::<MID_IOV>(sock, segs)
            } else {
                write_segments::<MAX_IOV>(sock, segs)
            };
            match written {
                Ok(0) => {
                    self.io.write_ready = false;
                    break;
                }
                Ok(n) => {
                    log::trace!(target: "msgr::conn", "{}: wrote {n}", self.machine);
                    wrote_any = true;
                    WorkerCounters::add_own(&self.counters.send_bytes, n as u64);
                    if n == self.io.wsegs_bytes {
                        // All of it went (the usual case): nothing to walk segment by
                        // segment.
                        self.io.clear_wsegs();
                        continue;
                    }
                    self.io.consume_written(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.write_ready = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::info!(target: "msgr::conn", "{}: write error: {e}", self.machine);
                    self.io.write_ready = false;
                    self.io.clear_wsegs();
                    self.machine.handle_transport_closed(cx.now());
                    break;
                }
            }
        }
        // The write deadline: bytes waiting that the socket takes none of.
        if wrote_any || self.io.wsegs.is_empty() {
            self.machine.handle_write_progress(cx.now());
        }
        if !self.io.wsegs.is_empty() && !self.io.write_ready {
            self.machine.handle_write_blocked(cx.now());
        }
        let framed = self.machine.messages_sent().saturating_sub(sent_before);
        WorkerCounters::add_own(&self.counters.send_messages, framed);
        wrote_any
    }

    /// Whether another flush would write now: the socket takes more and the machine has
    /// something to frame (one flush frames a bounded batch).
    pub(super) fn more_to_write(&self) -> bool {
        // Not while frozen for a replace: no flush writes, and the pump would run again
        // at once until the hand-off came.
        self.io.write_ready && self.machine.wants_write() && !self.conn.replace_pending()
    }

    /// A write refused by injected congestion is retried after the worker's other work
    /// (the edge a real full socket would raise once drained). Returns whether one was.
    pub(super) fn retry_congested_write(&mut self) -> bool {
        if !self.seams.take_write_retry() {
            return false;
        }
        self.io.write_ready = true;
        true
    }

    pub(super) fn update_interest(&mut self, cx: &mut Context<'_>) {
        let (Some(id), Some(_)) = (self.id, self.io.socket.as_ref()) else { return };
        // READABLE stays registered even while a throttle holds reading back (the read
        // loop checks `wants_read`): every interest change is an epoll_ctl, and an edge
        // per arriving segment ends once the peer's window fills. WRITABLE only while
        // bytes wait or a connect is in progress.
        let want = if self.io.dialling || !self.io.wsegs.is_empty() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if Some(want) != self.io.interest {
            if let Err(e) = cx.set_interest(id, Some(want)) {
                log::warn!(target: "msgr::conn", "{}: reregister failed: {e}", self.machine);
            }
            self.io.interest = Some(want);
        }
    }
}

/// One `writev` of the first `N` (or fewer) segments of `segs`, ending after the first
/// of at least [`SPLIT_AFTER`] bytes.
fn write_segments<const N: usize>(sock: &mut TcpStream, segs: &[Bytes]) -> io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); N];
    let mut n = 0;
    for (slot, seg) in iov.iter_mut().zip(segs) {
        *slot = IoSlice::new(seg);
        n += 1;
        if seg.len() >= SPLIT_AFTER {
            break;
        }
    }
    sock.write_vectored(&iov[..n])
}

/// A non-blocking connect to `addr` from a socket bound to `from` (an IP with port 0,
/// which the kernel picks, and its scope id: `env::dial_source`): `Messenger::client_bind`,
/// as Ceph's `generic_connect` binds `my_addrs.front()` with port 0 under
/// `ms_bind_before_connect`. A `from` of the other family than `addr` is not bound (the
/// kernel picks the source), where Ceph's bind fails and so does every dial.
fn dial_from(from: SocketAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    if from.is_ipv4() != addr.is_ipv4() {
        log::debug!(target: "msgr::conn", "client_bind {from}: not of {addr}'s family, not bound");
        return TcpStream::connect(addr);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.bind(&from.into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream as StdStream};

    use super::{write_segments, Io, CPU_LOOK_EVERY, MAX_IOV, SMALL_IOV, SPLIT_AFTER};

    /// A loopback pair: our end as the driver holds it, and the peer's.
    fn pair() -> (mio::net::TcpStream, StdStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = StdStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        (mio::net::TcpStream::from_std(ours), peer)
    }

    /// Reads the 4 bytes the peer sent on `ours` (waiting at most 10 s for them).
    fn take(ours: &mut mio::net::TcpStream) {
        let mut buf = [0u8; 4];
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got < buf.len() {
            match ours.read(&mut buf[got..]) {
                Ok(0) => panic!("peer closed"),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the 4 bytes never arrived");
                    std::thread::yield_now();
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The peer sends 4 bytes from a thread pinned to `cpu`.
    fn send_from(cpu: usize, peer: &mut StdStream) {
        std::thread::scope(|s| {
            s.spawn(|| {
                event_center::pin_current_thread(cpu).expect("pin the sender");
                peer.write_all(b"ping").expect("write");
            });
        });
    }

    /// [`CPU_LOOK_EVERY`] read phases: in the first the peer sends from `cpu` and we read
    /// it; every phase asks. Returns the answers.
    fn look(cpu: usize, io: &mut Io, peer: &mut StdStream) -> Vec<bool> {
        (0..CPU_LOOK_EVERY)
            .map(|phase| {
                io.new_read_phase();
                if phase == 0 {
                    send_from(cpu, peer);
                    take(io.socket.as_mut().expect("socket"));
                }
                io.peer_on_our_cpu()
            })
            .collect()
    }

    #[test]
    fn a_loopback_peer_sending_from_our_cpu_counts_from_the_second_look() {
        event_center::pin_current_thread(0).expect("pin the test thread to CPU 0");
        let (ours, mut peer) = pair();
        let mut io = Io::new(Some(ours), None);
        let all = |v: bool| vec![v; CPU_LOOK_EVERY as usize];
        assert_eq!(look(0, &mut io, &mut peer), all(false), "one look is not enough");
        assert_eq!(io.same_host, Some(true), "127.0.0.1 is this host");
        assert_eq!(look(0, &mut io, &mut peer), all(true), "two looks in a row saw CPU 0");
        // Asked again within a phase: the same answer, and no look.
        peer.write_all(b"ping").expect("write");
        io.new_read_phase();
        assert!(io.peer_on_our_cpu());
        assert!(io.peer_on_our_cpu());
        assert_eq!(io.cpu_asks, 2 * CPU_LOOK_EVERY + 1, "one ask per phase");
    }

    #[test]
    fn a_loopback_peer_sending_from_another_cpu_does_not_count() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(cpus >= 2, "this test needs two CPUs");
        event_center::pin_current_thread(0).expect("pin the test thread to CPU 0");
        let (ours, mut peer) = pair();
        let mut io = Io::new(Some(ours), None);
        let all = |v: bool| vec![v; CPU_LOOK_EVERY as usize];
        assert_eq!(look(0, &mut io, &mut peer), all(false), "one look is not enough");
        assert_eq!(look(1, &mut io, &mut peer), all(false), "the peer sent from CPU 1");
        assert_eq!(look(0, &mut io, &mut peer), all(false), "the look before saw CPU 1");
        assert_eq!(look(0, &mut io, &mut peer), all(true), "two looks in a row saw CPU 0");
        // Between looks the answer stands, wherever the peer sends from.
        assert!(!look(1, &mut io, &mut peer)[0], "the new look saw CPU 1");
        io.new_read_phase();
        send_from(0, &mut peer);
        take(io.socket.as_mut().expect("socket"));
        assert!(!io.peer_on_our_cpu(), "not looked at again within the group");
    }

    /// A large segment ends its `writev`: header and data go in one, the footer after
    /// them in the next. The send buffer holds all three, so one `writev` of the three
    /// would take them all.
    #[test]
    fn a_large_segment_ends_its_writev() {
        let (mut ours, _peer) = pair();
        socket2::SockRef::from(&ours).set_send_buffer_size(8 << 20).expect("sndbuf");
        let segs: Vec<bytes::Bytes> = [
            bytes::Bytes::from_static(&[1; 53]),
            bytes::Bytes::from(vec![2; SPLIT_AFTER]),
            bytes::Bytes::from_static(&[3; 21]),
        ]
        .into();
        let first = write_segments::<SMALL_IOV>(&mut ours, &segs).expect("writev");
        assert_eq!(first, 53 + SPLIT_AFTER, "header and data, not the footer");
        let small: Vec<bytes::Bytes> =
            [bytes::Bytes::from(vec![2; SPLIT_AFTER - 1]), bytes::Bytes::from_static(&[3; 21])]
                .into();
        let both = write_segments::<SMALL_IOV>(&mut ours, &small).expect("writev");
        assert_eq!(both, SPLIT_AFTER - 1 + 21, "a smaller segment does not end it");
    }

    /// The segments `lens` long, each byte numbered in order (mod 251).
    fn numbered(lens: &[usize]) -> Vec<bytes::Bytes> {
        let mut next = 0usize;
        lens.iter()
            .map(|&len| {
                let seg: Vec<u8> = (next..next + len).map(|b| (b % 251) as u8).collect();
                next += len;
                bytes::Bytes::from(seg)
            })
            .collect()
    }

    /// What the write list still holds, in order.
    fn waiting(io: &Io) -> Vec<u8> {
        io.wsegs[io.whead..].iter().flat_map(|s| s.iter().copied()).collect()
    }

    /// A write that stops mid-segment resumes at the first byte not written: the
    /// segments it covered are released (not kept behind the head), the one it stopped
    /// in is cut, the rest wait untouched.
    #[test]
    fn a_partial_write_resumes_at_the_first_unwritten_byte() {
        let mut io = Io::new(None, None);
        let segs = numbered(&[10, 300, 7, 0, 40]);
        let all: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
        let pinned = segs[1].clone();
        io.wsegs = segs;
        io.wsegs_bytes = all.len();
        let mut written = 0;
        for n in [3, 7, 150, 151, 1, 30] {
            io.consume_written(n);
            written += n;
            assert_eq!(waiting(&io), all[written..], "after {written} bytes written");
            assert_eq!(io.wsegs_bytes, all.len() - written);
            assert!(
                io.wsegs[..io.whead].iter().all(|s| s.is_empty()),
                "written slots hold nothing"
            );
        }
        assert_eq!(io.whead, 4, "the empty segment went with the one before it");
        assert!(pinned.is_unique(), "a written segment is released at once");
        io.consume_written(15);
        assert!(io.wsegs.is_empty() && io.whead == 0, "all written: the list is empty");
        assert_eq!(io.wsegs_bytes, 0);
    }

    /// A socket that keeps taking part of the list while as much is framed behind it,
    /// every write stopping mid-segment: the written slots are dropped before the list
    /// grows, so it stays at most twice what waits plus the batch, whatever the age of
    /// the connection.
    #[test]
    fn a_write_list_behind_a_slow_socket_does_not_grow() {
        let mut io = Io::new(None, None);
        let mut lens = vec![2];
        lens.extend([5; 10]);
        io.wsegs = numbered(&lens);
        io.wsegs_bytes = 52;
        for round in 0..10_000usize {
            io.compact_wsegs();
            io.wsegs.extend(numbered(&[5, 5, 5]));
            io.wsegs_bytes += 15;
            io.consume_written(15);
            let live = io.wsegs.len() - io.whead;
            assert_eq!(io.wsegs_bytes, 52, "round {round}");
            assert_eq!(io.wsegs[io.whead].len(), 2, "round {round}: stopped mid-segment");
            assert!(
                io.wsegs.len() <= 2 * live + 3,
                "round {round}: {} slots, {live} waiting",
                io.wsegs.len()
            );
        }
        assert!(io.wsegs.capacity() <= 64, "capacity {}", io.wsegs.capacity());
    }

    /// Only the slots a `writev` fills are handed to it: a list longer than the array
    /// goes in the array's length, a shorter one whole, each byte in order.
    #[test]
    fn a_writev_sends_exactly_the_segments_it_has_room_for() {
        let (mut ours, mut peer) = pair();
        let segs: Vec<bytes::Bytes> = (0..SMALL_IOV as u8 + 8)
            .map(|i| bytes::Bytes::from(vec![i; 1 + usize::from(i)]))
            .collect();
        let sent = |k: usize| segs.iter().take(k).map(|s| s.len()).sum::<usize>();
        let first = write_segments::<SMALL_IOV>(&mut ours, &segs).expect("writev");
        assert_eq!(first, sent(SMALL_IOV), "as many segments as the array holds");
        let rest: Vec<bytes::Bytes> = segs.iter().skip(SMALL_IOV).cloned().collect();
        let second = write_segments::<MAX_IOV>(&mut ours, &rest).expect("writev");
        assert_eq!(
            second,
            sent(segs.len()) - sent(SMALL_IOV),
            "the rest, fewer than the array holds"
        );
        let mut got = vec![0; first + second];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(got, segs.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>());
    }
}
