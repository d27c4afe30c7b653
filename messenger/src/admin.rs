//! The admin socket: Ceph's admin-socket protocol on a Unix socket, served by one
//! worker's event loop (no thread of its own, but at a stop one per answer still
//! half-written, `msgr-admin-rest`, which finishes it: [`AdminConn::finish_in_background`]).
//!
//! Protocol (what `ceph --admin-daemon PATH …` speaks): the client connects, sends a
//! command — JSON such as `{"prefix": "perf dump"}`, or plain text from old clients —
//! terminated by a NUL byte (what the CLI sends) or a newline (what a person typing into
//! `nc -U` sends), as Ceph's `AdminSocket::do_accept` ends it at either; bytes after the
//! terminator are never looked at, and a client that closes before one is closed
//! unanswered, as Ceph's is. The server answers with a `u32` big-endian length and
//! that many bytes, then closes. The CLI first asks for `get_command_descriptions` and
//! checks its command against the returned signatures. A first byte NUL is Ceph's first
//! protocol, still read by its `do_accept`: a big-endian `u32` request code (0: the
//! protocol version, which Ceph's `AdminSocketClient::ping` also asks for as `"0"`;
//! 1: `perfcounters_dump`; 2: `perfcounters_schema`), answered in the same framing.
//!
//! An accept that fails for want of descriptors or memory (EMFILE, ENFILE, …) leaves the
//! client queued, and the listener's edge-triggered readiness will not report it again:
//! the listener retries after a pause (the processor's rule, `AcceptErrors`), as
//! Ceph's admin socket thread, looping on its poll, would. So does one after the same
//! error came back several times in a row.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_center::{CenterHandle, Context, Handler, HandlerId, Ready, TimerId, TimerTarget};
use mio::net::{UnixListener, UnixStream};
use mio::Interest;
use serde_json::{json, Value};

use crate::env::Env;
use crate::processor::{AcceptErrors, AcceptFailed, Listening, Pause, PauseLog, ACCEPT_BACKOFF};

/// Longest command accepted: commands are short JSON objects; anything longer is refused
/// (the connection is closed) rather than buffered without bound.
const MAX_COMMAND: usize = 64 << 10;

/// Connections accepted per readiness event before yielding to the worker's other work.
const ACCEPT_BATCH: usize = 64;

/// Most bytes of an answer given to one write. A Unix socket frees the send buffer an
/// answer fills only as the client reads each write whole: a client that reads any of
/// its answer within the deadline, at least this much, counts as progressing.
const WRITE_CHUNK: usize = 4096;

/// The next chunk of `out` after `written`.
fn chunk(out: &[u8], written: usize) -> &[u8] {
    out.get(written..).map(|rest| rest.get(..WRITE_CHUNK).unwrap_or(rest)).unwrap_or_default()
}

/// How long one admin client may take to send its command, and then go without reading
/// any of its answer (the default of [`MessengerConfig::admin_client_deadline`]): a local
/// client that connects and stalls (or stops reading) holds a descriptor and up to
/// [`CommandReader::MAX`] bytes (or an answer) of the worker's memory until then. One
/// that keeps reading, however slowly, gets its whole answer: the `ceph` CLI reads the
/// answer's length, then loops until it has that many bytes, and an answer cut short
/// makes it spin on the closed socket for ever. (Ceph's admin socket writes the whole
/// answer, blocking, with no deadline.)
///
/// [`MessengerConfig::admin_client_deadline`]: crate::MessengerConfig::admin_client_deadline
pub const ADMIN_CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// Admin clients served at once. This bounds what stalled clients hold (descriptors,
/// which the messenger's sockets need too) to a handful. When all are taken, a newcomer
/// takes the slot of the oldest client that has not sent a command yet (which is closed:
/// it asked nothing), so idle clients cannot keep a command out; with none such, the
/// newcomer is closed. (Ceph's admin socket serves one at a time, and one idle client
/// keeps every other out.)
pub const ADMIN_MAX_CLIENTS: usize = 16;

/// A running admin socket; `stop` closes it and removes the socket file.
pub(crate) struct AdminSocket {
    center: CenterHandle,
    listening: Listening,
    path: PathBuf,
    file: FileClaim,
}

/// Whether an admin socket's file at its path is still its own to remove. Given up, by
/// whoever swaps it first, when its listener turns out not to be served (the file is
/// removed then), when it stops (likewise), or when a new admin socket of the messenger
/// takes over the path: after that the file may be another socket's, which a late
/// removal would make unreachable.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileClaim(Arc<AtomicBool>);

impl FileClaim {
    fn held() -> Self {
        FileClaim(Arc::new(AtomicBool::new(true)))
    }

    /// Whether the file is still ours.
    pub(crate) fn holds(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Gives the file up; true if it was ours until now (the caller may remove it).
    fn release(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    /// Gives the file up and removes it, if it was ours.
    fn remove(&self, path: &Path) {
        if self.release() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes the socket file of a listener that will not be served: its registration
/// failed, or never ran (the worker stopped with it queued: dropped unrun). As Ceph's
/// `bind_and_listen` unlinks its file when `listen` fails. Left alone once served.
struct UnservedGuard {
    path: PathBuf,
    file: FileClaim,
    served: bool,
    /// Why the registration failed, if it ran.
    failure: Option<String>,
    /// Whether to log it: the caller did not wait for the outcome, so it is not returned.
    report: bool,
}

impl Drop for UnservedGuard {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        if self.report {
            let why = self.failure.as_deref().unwrap_or("its worker stopped first");
            log::warn!(target: "msgr::admin", "admin socket on {}: not served ({why}): its file is removed", self.path.display());
        }
        self.file.remove(&self.path);
    }
}

/// Whether a listener answers at `path`: a connect that succeeds, or that would wait
/// because the listener's backlog is full (`EAGAIN`: live, only busy). Non-blocking,
/// since it may run on a worker: a blocking connect to a full backlog sleeps until that
/// listener accepts, stalling every connection the worker drives. A stale file refuses.
fn is_served(path: &Path) -> bool {
    match UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

impl AdminSocket {
    /// Serves at `path`. `replacing`: the claim on the file there of this messenger's
    /// own admin socket, which the new one replaces (and which keeps no claim on it).
    ///
    /// From any thread. Off the workers it waits for the listener's registration on
    /// `center` and returns its error. On a worker (a dispatcher's `ms_fast_dispatch`, a
    /// timer) it must not wait: not for its own center, which runs the registration only
    /// once the caller returns, nor for another, which may be waiting for this one. The
    /// registration is posted; if it fails (the poll's: out of memory) or never runs
    /// (the worker stopped), a warning is logged, the socket file removed and the claim
    /// given up ([`AdminSocket::is_served`] turns false).
    pub(crate) fn start(
        path: &Path,
        env: Arc<Env>,
        center: &CenterHandle,
        replacing: Option<FileClaim>,
    ) -> io::Result<Self> {
        // Before the file is touched: a center that stopped would take no listener.
        if center.is_stopping() {
            return Err(io::Error::other("admin socket: the worker stopped"));
        }
        // The path is the new socket's from here: the old one's failing registration, or
        // its stop, must not remove the file bound below. If it gave the file up first,
        // the path is no longer known to be ours.
        let ours = replacing.is_some_and(|old| old.release());
        // A socket that answers is another daemon's (or messenger's): unlinked, it would
        // be unreachable, and its file removed when we stop. Ceph refuses it too, and
        // unlinks only a stale file from a previous run, which would make bind fail.
        if !ours && is_served(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("admin socket: {} is served by another process", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let file = FileClaim::held();
        let wait = !event_center::on_a_worker();
        let mut guard = UnservedGuard {
            path: path.to_path_buf(),
            file: file.clone(),
            served: false,
            failure: None,
            report: !wait,
        };
        let listening = Listening::post(center, move |cx: &mut Context<'_>| {
            let registered = cx.register(listener, Interest::READABLE, |_, listener| {
                Box::new(AdminListener {
                    listener,
                    env,
                    clients: Arc::default(),
                    conns: Vec::new(),
                    paused: Pause::default(),
                    pauses: PauseLog::default(),
                    failures: AcceptErrors::default(),
                })
            });
            match &registered {
                Ok(_) => guard.served = true,
                Err(e) => guard.failure = Some(e.to_string()),
            }
            // Before the outcome is sent: a waiting caller finds the file gone.
            drop(guard);
            registered
        })
        // In each error the guard removed the file: the registration ran and failed, or
        // was dropped unrun (the center stopped), or could not be posted.
        .map_err(Self::unserved)?;
        log::info!(target: "msgr::admin", "admin socket on {}", path.display());
        Ok(AdminSocket { center: center.clone(), listening, path: path.to_path_buf(), file })
    }

    /// The listener will not be served (its file is gone: [`UnservedGuard`]).
    fn unserved(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("admin socket: {e}"))
    }

    /// Closes the listener and removes the socket file, if it is still ours.
    pub(crate) fn stop(self) {
        let (file, path) = (self.file.clone(), self.path.clone());
        self.stop_keeping_file();
        file.remove(&path);
    }

    /// Stops serving but leaves the socket file: another admin socket was bound at the
    /// same path since (binding replaced the file). Posted, never waited for, so it may
    /// be called on a worker; it runs after the registration, posted to the same center
    /// before it. The clients being served are closed with the listener: each holds
    /// the messenger's environment, and on a shared pool, whose worker outlives the
    /// messenger, they stayed until their deadline. One part-way through its answer gets
    /// the rest in the background ([`AdminConn::finish_in_background`]).
    pub(crate) fn stop_keeping_file(self) {
        let listening = self.listening;
        let _ = self.center.dispatch_event_external(move |cx: &mut Context<'_>| {
            if let Some(id) = listening.id() {
                let conns = cx
                    .with_handler_as::<AdminListener, _>(id, |l, _| std::mem::take(&mut l.conns))
                    .unwrap_or_default();
                for conn in conns {
                    cx.with_handler_as::<AdminConn, _>(conn, |c, cx| {
                        c.finish_in_background();
                        c.close(cx, conn);
                    });
                }
                cx.remove(id);
            }
        });
    }

    /// Where the socket file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The claim on the socket file, while it is ours: the listener is served, or its
    /// registration, posted from a worker, has not failed (yet). `None` once the
    /// registration failed or never ran, or a new admin socket took over the path.
    pub(crate) fn file_claim(&self) -> Option<FileClaim> {
        self.file.holds().then(|| self.file.clone())
    }

    /// Whether the listener is served, or its posted registration has not failed (yet).
    pub(crate) fn is_served(&self) -> bool {
        self.file.holds()
    }
}

struct AdminListener {
    listener: UnixListener,
    env: Arc<Env>,
    /// Admin clients being served (each `AdminConn` counts itself out when dropped).
    clients: Arc<AtomicUsize>,
    /// Their handlers, closed when the listener stops (those already gone are pruned at
    /// each accept, so it never holds more than [`ADMIN_MAX_CLIENTS`]).
    conns: Vec<HandlerId>,
    /// Accepting paused for want of descriptors or memory, until a retry.
    paused: Pause,
    /// Which of those pauses are logged.
    pauses: PauseLog,
    /// Accept errors in a row that a retry at once may meet again.
    failures: AcceptErrors,
}

impl AdminListener {
    /// Accepts what is pending, up to [`ACCEPT_BATCH`].
    fn accept_some(&mut self, cx: &mut Context<'_>) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.failures.accepted();
                    if self.clients.load(Ordering::Relaxed) >= ADMIN_MAX_CLIENTS
                        && !self.make_room(cx)
                    {
                        log::debug!(target: "msgr::admin", "{ADMIN_MAX_CLIENTS} admin clients already: one more closed");
                        drop(stream);
                        continue;
                    }
                    self.clients.fetch_add(1, Ordering::Relaxed);
                    let served = Served(self.clients.clone());
                    let env = self.env.clone();
                    let patience = self.env.config.admin_client_deadline;
                    let registered = cx.register(stream, Interest::READABLE, |_, stream| {
                        Box::new(AdminConn {
                            stream,
                            env,
                            reader: CommandReader::default(),
                            output: None,
                            deadline: None,
                            patience,
                            progressed: Instant::now(),
                            _served: served,
                        })
                    });
                    match registered {
                        Ok(id) => {
                            let timer = cx.create_time_event(patience, TimerTarget::Handler(id));
                            cx.with_handler_as::<AdminConn, _>(id, |c, _| c.deadline = Some(timer));
                            self.conns.retain(|&c| cx.is_live(c));
                            self.conns.push(id);
                        }
                        Err(e) => log::warn!(target: "msgr::admin", "admin connection: {e}"),
                    }
                }
                Err(e) => match self.failures.after(&e) {
                    AcceptFailed::Drained => return,
                    AcceptFailed::Next => {
                        log::debug!(target: "msgr::admin", "admin accept: {e}");
                    }
                    AcceptFailed::Pause => {
                        // The client stays queued, and edge-triggered readiness will not
                        // report it again: without the retry it waited for the next
                        // client to connect.
                        self.pause(cx, &e);
                        return;
                    }
                },
            }
        }
        // More may be pending: come back after the worker's other work.
        if let Some(id) = cx.id() {
            cx.notify(id);
        }
    }

    /// Every slot is taken: frees the one of the oldest client that has not sent its
    /// command (it is closed: it asked nothing), after letting each read what it was sent
    /// meanwhile (a command that came with its connect, but whose readiness is not
    /// handled yet, is taken, not lost). Whether a slot is free now.
    fn make_room(&mut self, cx: &mut Context<'_>) -> bool {
        self.conns.retain(|&c| cx.is_live(c));
        for i in 0..self.conns.len() {
            let Some(&id) = self.conns.get(i) else { break };
            let idle = cx.with_handler_as::<AdminConn, _>(id, |c, cx| {
                c.serve(cx, id);
                c.output.is_none()
            });
            if !cx.is_live(id) {
                // Served whole (or failed) as it read: its slot is free.
                return true;
            }
            if idle == Some(true) {
                log::debug!(target: "msgr::admin", "{ADMIN_MAX_CLIENTS} admin clients already: the oldest without a command closed for a newcomer");
                cx.with_handler_as::<AdminConn, _>(id, |c, cx| c.close(cx, id));
                return !cx.is_live(id);
            }
        }
        false
    }

    /// Stops watching the listener and accepts again after [`ACCEPT_BACKOFF`].
    fn pause(&mut self, cx: &mut Context<'_>, e: &io::Error) {
        self.pauses.note(cx.now(), "msgr::admin", "admin accept", e);
        self.paused.start(cx, ACCEPT_BACKOFF);
    }
}

impl Handler for AdminListener {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        if !self.paused.is_on() {
            self.accept_some(cx);
        }
    }

    fn timer(&mut self, cx: &mut Context<'_>, _timer: TimerId) {
        self.paused.end(cx);
        self.accept_some(cx);
    }

    fn notify(&mut self, cx: &mut Context<'_>) {
        if !self.paused.is_on() {
            self.accept_some(cx);
        }
    }
}

/// The admin socket's command framing, without the socket: a command is the bytes up to
/// the first NUL or newline (Ceph's "null or \n terminated string"), at most 64 KiB of
/// them; or, when the first byte is a NUL, a request of the binary protocol, four bytes.
/// A stream that ends first holds no command (Ceph's `do_accept` closes it unanswered).
/// Public so that it can be fuzzed; a daemon has no use for it.
#[derive(Debug, Default)]
pub struct CommandReader {
    /// What arrived of the command so far. Starts with a NUL only for a binary request
    /// (a command ends at its first NUL), and then holds at most its four bytes.
    input: Vec<u8>,
}

/// The length of a binary request: a big-endian `u32` (whose first byte, 0, marks it).
const BINARY_REQUEST: usize = 4;

/// A command longer than the admin socket accepts: the connection is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandTooLong;

impl std::fmt::Display for CommandTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "admin command longer than {MAX_COMMAND} bytes")
    }
}

impl std::error::Error for CommandTooLong {}

impl CommandReader {
    /// The longest command accepted, in bytes.
    pub const MAX: usize = MAX_COMMAND;

    /// Bytes read from the client: the command once its terminator (a NUL or a newline)
    /// arrived, without it, and with the bytes after it ignored (Ceph reads none of
    /// them); `None` while incomplete. A binary request, once its four bytes arrived,
    /// becomes the JSON command Ceph turns it into (`{"prefix": "0"}` for code 0, …).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, CommandTooLong> {
        let first = self.input.first().or(bytes.first());
        if first == Some(&0) {
            return Ok(self.feed_binary(bytes));
        }
        let (part, complete) = match bytes.iter().position(|&b| b == 0 || b == b'\n') {
            Some(end) => (bytes.get(..end).unwrap_or_default(), true),
            None => (bytes, false),
        };
        if self.input.len() + part.len() > MAX_COMMAND {
            return Err(CommandTooLong);
        }
        self.input.extend_from_slice(part);
        Ok(complete.then(|| std::mem::take(&mut self.input)))
    }

    /// Ceph's `do_accept` for a first byte NUL: four bytes, of which the last picks the
    /// command (the two between are not looked at).
    fn feed_binary(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let wanted = BINARY_REQUEST.saturating_sub(self.input.len()).min(bytes.len());
        self.input.extend_from_slice(bytes.get(..wanted).unwrap_or_default());
        let code = *self.input.get(BINARY_REQUEST - 1)?;
        self.input.clear();
        let prefix = match code {
            0 => "0",
            1 => "perfcounters_dump",
            2 => "perfcounters_schema",
            _ => "foo",
        };
        Some(json!({ "prefix": prefix }).to_string().into_bytes())
    }
}

/// A command as the admin socket reads it: a JSON object with a `prefix` (today's CLI)
/// or plain words, which become the prefix (old clients). Always an object with a
/// string `prefix`.
pub fn parse_command(command: &[u8]) -> Value {
    let text = String::from_utf8_lossy(command);
    let text = text.trim();
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.get("prefix").is_some_and(Value::is_string) => v,
        _ => json!({ "prefix": text }),
    }
}

/// One admin client: read a command up to its terminator, answer, close.
struct AdminConn {
    stream: UnixStream,
    env: Arc<Env>,
    reader: CommandReader,
    /// The framed answer and how much of it is written.
    output: Option<(Vec<u8>, usize)>,
    /// Its deadline timer: for its command, then for each progress of its answer.
    deadline: Option<TimerId>,
    /// How long it may take to send its command, then go without taking any of its
    /// answer ([`MessengerConfig::admin_client_deadline`](crate::MessengerConfig)).
    patience: Duration,
    /// When its answer was ready, or the socket last took some of it.
    progressed: Instant,
    _served: Served,
}

/// Counts one admin client as served until dropped.
struct Served(Arc<AtomicUsize>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AdminConn {
    /// Done with this client (answered, failed or out of time).
    fn close(&mut self, cx: &mut Context<'_>, id: HandlerId) {
        if let Some(timer) = self.deadline.take() {
            cx.delete_time_event(timer);
        }
        cx.remove(id);
    }

    /// Reads until the terminator; returns the command once complete.
    fn read_command(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                // Before the terminator (or a binary request's fourth byte): nothing to
                // answer, as Ceph's do_accept answers nothing when its read meets EOF.
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before its command ended",
                    ))
                }
                Ok(n) => match self.reader.feed(chunk.get(..n).unwrap_or_default()) {
                    Ok(Some(command)) => return Ok(Some(command)),
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the answer; returns whether it is all written.
    fn write_answer(&mut self) -> io::Result<bool> {
        let Some((out, written)) = self.output.as_mut() else { return Ok(true) };
        while *written < out.len() {
            match self.stream.write(chunk(out, *written)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *written += n;
                    self.progressed = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The admin socket stops (the messenger shuts down, or another admin socket replaced
    /// it) with this client's answer part-way written: a blocking thread of its own
    /// writes the rest, each write allowed the client's patience, and ends at the first
    /// that takes nothing in that time (or fails), as the worker would have. It holds
    /// the socket and the answer only, not the messenger.
    ///
    /// Ceph's `AdminSocket::shutdown` joins its admin thread, which finishes the answer
    /// it is writing (blocking, with no deadline) before it sees the shutdown: the client
    /// gets its whole answer, and the shutdown waits on that client, for ever if it
    /// stops reading. Here the client gets it whole too, but the shutdown waits for
    /// nobody; a client that stops reading holds a thread and its answer for the patience
    /// only. Cut at once instead, the answer would leave the `ceph` CLI spinning on the
    /// closed socket. A client still sending its command is closed unanswered, as before.
    fn finish_in_background(&mut self) {
        let Some((out, written)) = self.output.take() else { return };
        if written >= out.len() {
            return;
        }
        // The worker closes its descriptor (deregistered first): the copy keeps the socket.
        let stream = match self.stream.as_fd().try_clone_to_owned() {
            Ok(fd) => std::os::unix::net::UnixStream::from(fd),
            Err(e) => {
                log::info!(target: "msgr::admin", "admin answer cut at the stop: {e}");
                return;
            }
        };
        let patience = self.patience;
        let spawned = std::thread::Builder::new()
            .name("msgr-admin-rest".into())
            .spawn(move || write_rest(&stream, &out, written, patience));
        if let Err(e) = spawned {
            log::info!(target: "msgr::admin", "admin answer cut at the stop: {e}");
        }
    }

    /// Reads the command until it is complete, then answers it (as much as the socket
    /// takes now), closing the client when done or failed.
    fn serve(&mut self, cx: &mut Context<'_>, id: HandlerId) {
        if self.output.is_none() {
            match self.read_command() {
                Ok(Some(command)) => {
                    let answer = answer(&self.env, &command);
                    let mut framed = Vec::with_capacity(4 + answer.len());
                    framed.extend_from_slice(
                        &u32::try_from(answer.len()).unwrap_or(u32::MAX).to_be_bytes(),
                    );
                    framed.extend_from_slice(&answer);
                    self.output = Some((framed, 0));
                    // The answer's deadline counts from here.
                    self.progressed = Instant::now();
                }
                Ok(None) => return,
                // A client that connects and closes (a liveness probe) is no news.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    log::debug!(target: "msgr::admin", "admin client dropped: {e}");
                    self.close(cx, id);
                    return;
                }
                Err(e) => {
                    log::info!(target: "msgr::admin", "admin client dropped: {e}");
                    self.close(cx, id);
                    return;
                }
            }
        }
        match self.write_answer() {
            Ok(true) => self.close(cx, id),
            Ok(false) => {
                let _ = cx.set_interest(id, Some(Interest::WRITABLE));
            }
            Err(e) => {
                log::info!(target: "msgr::admin", "admin answer not sent: {e}");
                self.close(cx, id);
            }
        }
    }
}

/// Writes `out` from `written` on a blocking socket, each write allowed `patience`: what
/// [`AdminConn::finish_in_background`] runs. The client is closed (the socket dropped)
/// when it is all written, or when a write took nothing in time or failed. (A write that
/// times out takes the room the client made meanwhile, if any: Linux looks at the send
/// buffer again then.)
fn write_rest(
    stream: &std::os::unix::net::UnixStream,
    out: &[u8],
    mut written: usize,
    patience: Duration,
) {
    let set = stream.set_nonblocking(false).and_then(|()| stream.set_write_timeout(Some(patience)));
    if let Err(e) = set {
        log::info!(target: "msgr::admin", "admin answer cut at the stop: {e}");
        return;
    }
    let mut stream = stream;
    while written < out.len() {
        match stream.write(chunk(out, written)) {
            Ok(0) => return,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::info!(target: "msgr::admin", "admin answer not sent after the stop: {e}");
                return;
            }
        }
    }
}

impl Handler for AdminConn {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        let Some(id) = cx.id() else { return };
        self.serve(cx, id);
    }

    fn timer(&mut self, cx: &mut Context<'_>, _timer: TimerId) {
        let Some(id) = cx.id() else { return };
        self.deadline = None;
        if self.output.is_some() {
            // Answering: closed only once the socket took none of it for the patience. It
            // reports room (writable) only once the client has read three quarters of
            // what it holds: room it has for less is found by writing.
            self.serve(cx, id);
            if !cx.is_live(id) {
                // All written, or failed.
                return;
            }
            let idle = self.progressed.elapsed();
            if let Some(left) = self.patience.checked_sub(idle).filter(|d| !d.is_zero()) {
                self.deadline = Some(cx.create_time_event(left, TimerTarget::Handler(id)));
                return;
            }
            log::info!(target: "msgr::admin", "admin client read none of its answer for {:?}: closed", self.patience);
        } else {
            log::info!(target: "msgr::admin", "admin client sent no command within {:?}: closed", self.patience);
        }
        self.close(cx, id);
    }

    /// The worker stops (its pool shuts down: the messenger's own, at its shutdown).
    fn shutdown(&mut self, _cx: &mut Context<'_>) {
        self.finish_in_background();
    }
}

/// The commands we serve, in the shape of Ceph's `get_command_descriptions` table and in
/// its order (sorted by command). As in a 16.2.15 daemon's, the aliases are listed
/// without help (`0`, the protocol version; `1` and `perfcounters_dump`, `perf dump`; `2`
/// and `perfcounters_schema`, `perf schema`): the CLI accepts only listed commands, and
/// `help` leaves them out.
fn command_table() -> Value {
    json!({
        "cmd000": {"sig": ["0"], "help": ""},
        "cmd001": {"sig": ["1"], "help": ""},
        "cmd002": {"sig": ["2"], "help": ""},
        "cmd003": {"sig": ["get_command_descriptions"], "help": "list available commands"},
        "cmd004": {"sig": ["git_version"], "help": "get git sha1"},
        "cmd005": {"sig": ["help"], "help": "list available commands"},
        "cmd006": {"sig": ["messenger", "dump"],
                   "help": "dump the messenger's connections (peer, state, features)"},
        "cmd007": {"sig": ["perf", "dump",
                           {"name": "logger", "req": "false", "type": "CephString"},
                           {"name": "counter", "req": "false", "type": "CephString"}],
                   "help": "dump perfcounters value"},
        "cmd008": {"sig": ["perf", "schema"], "help": "dump perfcounters schema"},
        "cmd009": {"sig": ["perfcounters_dump"], "help": ""},
        "cmd010": {"sig": ["perfcounters_schema"], "help": ""},
        "cmd011": {"sig": ["version"], "help": "get asyncmsgr version"},
    })
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `perf dump` narrowed as Ceph's `PerfCountersCollection::dump_formatted` narrows it:
/// with a `logger`, only that section (none if there is no such section); with a
/// `counter`, every section kept shows only that counter (an empty object where it has
/// none). An empty argument, which the CLI sends for one left out before another
/// (`perf dump "" msgr_recv_bytes`), filters nothing.
fn filter_perf_dump(all: Value, logger: Option<&str>, counter: Option<&str>) -> Value {
    let Value::Object(sections) = all else { return all };
    let kept = sections.into_iter().filter(|(name, _)| logger.is_none_or(|l| l == name));
    let kept = kept.map(|(name, section)| {
        let section = match (counter, section) {
            (Some(c), Value::Object(mut counters)) => {
                let mut only = serde_json::Map::new();
                if let Some(v) = counters.remove(c) {
                    only.insert(c.to_string(), v);
                }
                Value::Object(only)
            }
            (_, section) => section,
        };
        (name, section)
    });
    Value::Object(kept.collect())
}

/// The answer to one command (JSON, or Ceph's error text for an unknown one).
fn answer(env: &Env, command: &[u8]) -> Vec<u8> {
    let parsed = parse_command(command);
    let prefix = parsed.get("prefix").and_then(Value::as_str).unwrap_or_default();
    log::debug!(target: "msgr::admin", "admin command {prefix:?}");
    match prefix {
        "get_command_descriptions" => pretty(&command_table()),
        "help" => {
            let table = command_table();
            let mut help = serde_json::Map::new();
            if let Some(cmds) = table.as_object() {
                // Ceph's HelpHook lists only commands with help.
                for cmd in
                    cmds.values().filter(|c| c["help"].as_str().is_some_and(|h| !h.is_empty()))
                {
                    let sig: Vec<&str> = cmd["sig"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    help.insert(sig.join(" "), cmd["help"].clone());
                }
            }
            pretty(&Value::Object(help))
        }
        // The admin socket's protocol version (Ceph's CEPH_ADMIN_SOCK_VERSION): a Ceph
        // daemon about to bind our path pings with it, and takes any answer longer than
        // one byte for a stale socket to unlink.
        "0" => b"2".to_vec(),
        "perf dump" | "perfcounters_dump" | "1" => {
            let arg = |name| parsed.get(name).and_then(Value::as_str).filter(|s| !s.is_empty());
            pretty(&filter_perf_dump(env.perf_dump(), arg("logger"), arg("counter")))
        }
        // Ceph's takes no arguments: always every section.
        "perf schema" | "perfcounters_schema" | "2" => pretty(&env.perf_schema()),
        "messenger dump" => pretty(&env.sessions.dump()),
        // Every Ceph daemon's admin socket serves it (AdminSocket's own VersionHook,
        // beside `version`). The build records no commit: the crate's version.
        "git_version" => pretty(&json!({ "git_version": env!("CARGO_PKG_VERSION") })),
        "version" => pretty(&json!({
            "version": env!("CARGO_PKG_VERSION"),
            "release": "asyncmsgr",
            "release_type": "dev",
        })),
        other => {
            format!("ERROR: (22) Invalid argument\nunknown command prefix {other}\n").into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ceph's do_accept: "new protocol: null or \n terminated string".
    #[test]
    fn a_command_ends_at_a_newline_as_at_a_nul() {
        for terminated in [&b"{\"prefix\": \"version\"}\n"[..], b"{\"prefix\": \"version\"}\0"] {
            let mut r = CommandReader::default();
            assert_eq!(r.feed(&terminated[..5]), Ok(None));
            let command = r.feed(&terminated[5..]).expect("short").expect("complete");
            assert_eq!(command, b"{\"prefix\": \"version\"}");
        }
        // What follows the first terminator is not part of the command (Ceph reads none
        // of it), whichever terminator comes first.
        let mut r = CommandReader::default();
        assert_eq!(r.feed(b"version\nperf dump\0"), Ok(Some(b"version".to_vec())));
        let mut r = CommandReader::default();
        assert_eq!(r.feed(b"version\0perf dump\n"), Ok(Some(b"version".to_vec())));
        // Without a terminator, no command (its end is the socket's EOF: unanswered).
        let mut r = CommandReader::default();
        assert_eq!(r.feed(b"version"), Ok(None));
    }

    // Ceph's do_accept, "old protocol: __be32": a first byte NUL, then three more, the
    // last of which picks the command; what follows is not read.
    #[test]
    fn a_first_byte_nul_is_a_binary_request() {
        for (code, prefix) in [(0, "0"), (1, "perfcounters_dump"), (2, "perfcounters_schema")] {
            let mut r = CommandReader::default();
            assert_eq!(r.feed(&[0]), Ok(None));
            assert_eq!(r.feed(&[0, 0]), Ok(None));
            let command = r.feed(&[code, b'x', 0]).expect("short").expect("complete");
            assert_eq!(parse_command(&command)["prefix"], prefix);
        }
        let mut r = CommandReader::default();
        let command = r.feed(&[0, 7, 7, 9]).expect("short").expect("complete");
        assert_eq!(parse_command(&command)["prefix"], "foo");
        // Cut short: no command yet (Ceph closes it without an answer).
        let mut r = CommandReader::default();
        assert_eq!(r.feed(&[0, 0]), Ok(None));
        // A NUL later on ends a command as before.
        let mut r = CommandReader::default();
        assert_eq!(r.feed(b"v\0\0\0\0"), Ok(Some(b"v".to_vec())));
    }
}
