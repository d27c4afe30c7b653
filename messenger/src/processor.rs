//! The Processor: the listening socket and `C_processor_accept`.
//!
//! Accepts until WouldBlock and places each new connection on the least-loaded worker.
//! Accept errors that mean "out of resources" (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause
//! accepting for a moment instead of spinning on a listener that stays readable, then
//! retry (`after_accept_error`, which the admin socket's listener follows too), and so
//! does a listener whose accepts failed more than Ceph's `ms_max_accept_failures` times
//! in a row (`AcceptErrors`: an error that leaves the connection queued would spin); so do
//! `max_queued_events` connection events waiting for the dispatch thread (each accepted
//! connection adds some, and nothing else bounds them).

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use event_center::{CenterHandle, Context, Handler, HandlerId, Ready, TimerId, TimerTarget};
use mio::net::TcpListener;
use mio::Interest;
use protocol::session::log_limited;

use crate::config::MessengerConfig;
use crate::counters::WorkerCounters;
use crate::driver;
use crate::env::Env;
#[cfg(feature = "fault-injection")]
use crate::inject::{Injector, LISTENER_STREAM};

/// How long accepting pauses after running out of file descriptors or memory (the
/// admin socket's listener too): long enough that a listener the kernel keeps readable
/// costs ten tries a second, short enough that a client queued meanwhile is not kept
/// waiting noticeably once a descriptor is free.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one WARN line per this long about accepts failing for want of descriptors or
/// memory ([`PauseLog`]): a listener retrying every [`ACCEPT_BACKOFF`] would otherwise
/// log ten lines a second for as long as the shortage lasts.
const PAUSE_WARN_EVERY: Duration = Duration::from_secs(10);

/// How often accepting looks again while the dispatch thread has too many events queued.
const EVENTS_BACKOFF: Duration = Duration::from_millis(10);

/// Connections accepted per readiness event before yielding to the worker's other work.
const ACCEPT_BATCH: usize = 256;

/// How many ephemeral ports a bind to port 0 without a
/// [`MessengerConfig::bind_port_range`] takes from the kernel, in one attempt, before it
/// gives up finding one outside the ports to avoid (`Messenger::rebind`). Each port the
/// kernel hands back that must be avoided is held until the attempt ends, so the kernel
/// cannot hand it back again and every try is a new port; the kernel's choice is all but
/// random, so an avoid set of a few ports is passed within two or three tries, and 16
/// bounds the sockets held (and the loop) however many ports the caller avoids.
pub(crate) const EPHEMERAL_TRIES: usize = 16;

/// Binds a listener as Ceph's `Processor::bind` does: up to
/// [`MessengerConfig::bind_retry_count`] attempts, [`MessengerConfig::bind_retry_delay`]
/// apart; in each, port 0 with a [`MessengerConfig::bind_port_range`] tries the ports of
/// the range in turn (without one, the kernel picks an ephemeral port), any other port
/// is bound as asked. Returns the last attempt's error.
///
/// The waits are sleeps of the calling thread, which holds no lock: `Messenger::bind`
/// runs on its caller's thread. On a worker thread (a messenger bound from fast dispatch
/// or a handler) there is one attempt and no wait, as a sleep there would stall every
/// connection of that worker. Before each retry, `still_wanted` may give up (the
/// messenger started or shut down during the wait) with its error.
///
/// A port of `avoid` is never bound by a bind to port 0 (Ceph's `avoid_ports`, which
/// `Messenger::rebind` passes): the range's walk skips it, and without a range a port
/// the kernel hands back that is in `avoid` is held while the kernel is asked again, up
/// to [`EPHEMERAL_TRIES`] times per attempt. A bind to another port binds it as asked.
pub(crate) fn bind(
    addr: SocketAddr,
    config: &MessengerConfig,
    avoid: &BTreeSet<u16>,
    still_wanted: impl Fn() -> io::Result<()>,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let attempts = if event_center::on_a_worker() { 1 } else { config.bind_retry_count.max(1) };
    let mut attempt = 1;
    loop {
        let err = match bind_attempt(addr, config, avoid) {
            Ok(bound) => return Ok(bound),
            Err(e) => e,
        };
        if attempt >= attempts {
            if config.bind_retry_count > 1 {
                log::warn!(
                    target: "msgr::bind",
                    "unable to bind {addr} after {attempt} attempt(s): {err}"
                );
            }
            return Err(err);
        }
        let delay = config.bind_retry_delay;
        log::warn!(
            target: "msgr::bind",
            "unable to bind {addr} (attempt {attempt} of {attempts}): {err}; trying again in {delay:?}"
        );
        std::thread::sleep(delay);
        still_wanted()?;
        attempt += 1;
    }
}

/// One attempt of [`bind`]: the address as asked, or, for port 0 with a
/// [`MessengerConfig::bind_port_range`], the first port of the range that binds (Ceph's
/// loop from `ms_bind_port_min` to `ms_bind_port_max`). A port in use (or one this
/// process may not bind: a privileged port, a security policy's label) moves on to the
/// next; any other error is the address's, not the port's, and ends the attempt. A range
/// without a free port fails with the last port's error, `AddrInUse` if it was in use
/// (or if every port of it is avoided). Ports of `avoid` are skipped (see [`bind`]).
fn bind_attempt(
    addr: SocketAddr,
    config: &MessengerConfig,
    avoid: &BTreeSet<u16>,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let range = match &config.bind_port_range {
        Some(range) if addr.port() == 0 => range.clone(),
        _ if addr.port() == 0 && !avoid.is_empty() => return bind_ephemeral(addr, config, avoid),
        _ => return bind_port(addr, config),
    };
    let mut last = None;
    for port in range.clone().filter(|p| !avoid.contains(p)) {
        let mut at = addr;
        at.set_port(port);
        match bind_port(at, config) {
            Ok(bound) => return Ok(bound),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
                ) =>
            {
                log::debug!(target: "msgr::bind", "{at}: {e}");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    let kind = last.as_ref().map_or(io::ErrorKind::AddrInUse, io::Error::kind);
    let last = last.map_or_else(String::new, |e| format!(" (the last: {e})"));
    Err(io::Error::new(
        kind,
        format!(
            "no port of bind_port_range {}..={} binds on {}{last}",
            range.start(),
            range.end(),
            addr.ip()
        ),
    ))
}

/// Port 0 without a range, avoiding the ports of `avoid`: the kernel picks, and a port
/// it picks that is avoided is kept bound (not listening) while it is asked again, so it
/// cannot come back; at most [`EPHEMERAL_TRIES`] picks, then `AddrInUse`. Ceph always
/// has a range (6800–7300 by default) and never asks the kernel; ours is off by default
/// (see [`MessengerConfig::bind_port_range`]), so a rebind must be able to avoid ports
/// of the kernel's choosing too.
fn bind_ephemeral(
    addr: SocketAddr,
    config: &MessengerConfig,
    avoid: &BTreeSet<u16>,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    // Bound, never listening (a peer dialling an avoided port is refused, not queued),
    // and closed when the attempt ends, whatever its outcome.
    let mut avoided = Vec::new();
    for _ in 0..EPHEMERAL_TRIES {
        let (sock, bound) = bound_socket(addr, config)?;
        if !avoid.contains(&bound.port()) {
            return listen(sock, bound);
        }
        log::debug!(target: "msgr::bind", "{bound}: the kernel's port is to be avoided; asking again");
        avoided.push(sock);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "the kernel gave {EPHEMERAL_TRIES} ports to avoid in a row on {}; \
             set bind_port_range",
            addr.ip()
        ),
    ))
}

/// Socket, non-blocking, bind, getsockname, listen.
fn bind_port(
    addr: SocketAddr,
    config: &MessengerConfig,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let (sock, bound) = bound_socket(addr, config)?;
    listen(sock, bound)
}

/// Socket, non-blocking, bind, getsockname: bound, not listening yet.
fn bound_socket(
    addr: SocketAddr,
    config: &MessengerConfig,
) -> io::Result<(socket2::Socket, SocketAddr)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_reuse_address(true)?;
    if config.tcp_rcvbuf > 0 {
        sock.set_recv_buffer_size(config.tcp_rcvbuf)?;
    }
    sock.bind(&addr.into())?;
    let bound = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to an address that is not an IP address"))?;
    Ok((sock, bound))
}

/// Listen on a socket [`bound_socket`] bound at `bound`.
fn listen(
    sock: socket2::Socket,
    bound: SocketAddr,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    sock.listen(1024)?;
    Ok((sock.into(), bound))
}

/// Where a listener's registration on its worker stands (the messenger's and the admin
/// socket's).
pub(crate) enum Listening {
    /// Registered: the listener's handler.
    On(HandlerId),
    /// Posted by a worker thread, which must not wait for it: the registration's outcome,
    /// in by the time anything posted to the same center after it runs there (the
    /// center's queue is one FIFO).
    Posted(Receiver<io::Result<HandlerId>>),
}

impl Listening {
    /// Posts `register` (a listener's registration) to `center`, from any thread. Off
    /// the workers it waits for the outcome and returns its error. On a worker it must
    /// not wait: not for its own center, which runs the registration only once the caller
    /// returns, nor for another, which may be waiting for this one; the outcome is kept
    /// for [`Listening::id`], and `register` reports a failure itself.
    pub(crate) fn post(
        center: &CenterHandle,
        register: impl FnOnce(&mut Context<'_>) -> io::Result<HandlerId> + Send + 'static,
    ) -> io::Result<Listening> {
        let (tx, outcome) = crossbeam_channel::bounded(1);
        center
            .dispatch_event_external(move |cx: &mut Context<'_>| {
                let _ = tx.send(register(cx));
            })
            .map_err(io::Error::other)?;
        if event_center::on_a_worker() {
            return Ok(Listening::Posted(outcome));
        }
        match outcome.recv() {
            Ok(registered) => registered.map(Listening::On),
            // Dropped unrun: the center stopped meanwhile.
            Err(_) => Err(io::Error::other("the listener's worker stopped")),
        }
    }

    /// The listener's handler, on its worker; `None` if the registration failed or never
    /// ran (the center stopped).
    pub(crate) fn id(self) -> Option<HandlerId> {
        match self {
            Listening::On(id) => Some(id),
            Listening::Posted(outcome) => outcome.try_recv().ok().and_then(Result::ok),
        }
    }
}

/// The messenger's listener, living on one worker once started.
pub(crate) struct Processor {
    listener: Option<std::net::TcpListener>,
    center: CenterHandle,
    listening: Option<Listening>,
}

impl Processor {
    pub(crate) fn new(listener: std::net::TcpListener, center: CenterHandle) -> Processor {
        Processor { listener: Some(listener), center, listening: None }
    }

    /// Registers the listener on its worker; accepting starts, each accepted socket
    /// going to the least loaded of `workers`.
    ///
    /// From any thread, as Ceph's `Processor::start` (whose `submit_to` runs inline on
    /// the listener's own worker), by [`Listening::post`]: on a worker (a dispatcher
    /// added from `ms_fast_dispatch` or a timer) a failure of the registration (the
    /// poll's: out of memory) is logged, not returned.
    pub(crate) fn start(&mut self, env: Arc<Env>, workers: Vec<CenterHandle>) -> io::Result<()> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        let listener = TcpListener::from_std(listener);
        let center = self.center.clone();
        let wait = !event_center::on_a_worker();
        let listening = Listening::post(&self.center, move |cx: &mut Context<'_>| {
            let handler = AcceptHandler::new(listener, env, workers, center);
            let id = cx.insert_handler(Box::new(handler));
            let registered = cx
                .with_handler(id, |h, cx| h.notify(cx))
                .map(|_| id)
                .ok_or_else(|| io::Error::other("accept handler vanished"));
            if let (Err(e), false) = (&registered, wait) {
                log::warn!(target: "msgr::accept", "listener not served: {e}");
            }
            registered
        })?;
        self.listening = Some(listening);
        Ok(())
    }

    /// Stops accepting: the listener is closed on its worker, before this returns (as
    /// Ceph's `Processor::stop`), so the port is free once a shutdown returns, even on a
    /// shared pool whose worker is busy. Called on a worker, it cannot wait (for itself,
    /// or for another worker that may wait on this one): the close is posted.
    pub(crate) fn stop(self) {
        let Some(listening) = self.listening else { return };
        // Posted after the registration, to the same center: it runs after it.
        let remove = move |cx: &mut Context<'_>| {
            if let Some(id) = listening.id() {
                cx.remove(id);
            }
        };
        if event_center::on_a_worker() {
            let _ = self.center.dispatch_event_external(remove);
        } else if let Err(e) = self.center.submit_to(remove) {
            // Stopped: its handlers, the listener among them, went with it.
            log::debug!(target: "msgr::accept", "listener close: {e}");
        }
    }
}

struct AcceptHandler {
    listener: TcpListener,
    counters: Arc<WorkerCounters>,
    /// Paused because `max_queued_events` were queued (logged once per pause).
    events_full: bool,
    env: Arc<Env>,
    /// The workers accepted connections are placed on.
    workers: Vec<CenterHandle>,
    paused: Pause,
    /// Which pauses for want of descriptors or memory are logged.
    pauses: PauseLog,
    /// Accept errors in a row that a retry at once may meet again.
    failures: AcceptErrors,
    center: CenterHandle,
    registered: bool,
    /// `ms_inject_socket_failures` on accept.
    #[cfg(feature = "fault-injection")]
    injector: Injector,
}

impl AcceptHandler {
    fn new(
        listener: TcpListener,
        env: Arc<Env>,
        workers: Vec<CenterHandle>,
        center: CenterHandle,
    ) -> AcceptHandler {
        AcceptHandler {
            #[cfg(feature = "fault-injection")]
            injector: Injector::new(
                &env.config,
                env.identity.nonce(),
                LISTENER_STREAM,
                env.worker_counters(center.id()),
            ),
            listener,
            counters: env.worker_counters(center.id()),
            events_full: false,
            env,
            workers,
            paused: Pause::default(),
            pauses: PauseLog::default(),
            failures: AcceptErrors::default(),
            center,
            registered: false,
        }
    }

    fn accept_some(&mut self, cx: &mut Context<'_>) {
        for _ in 0..ACCEPT_BATCH {
            if self.events_backlogged() {
                self.paused.start(cx, EVENTS_BACKOFF);
                return;
            }
            match self.listener.accept() {
                Ok((socket, peer)) => {
                    self.failures.accepted();
                    log::debug!(target: "msgr::accept", "accepted {peer}");
                    #[cfg(feature = "fault-injection")]
                    if self.injector.fail_socket() {
                        log::info!(target: "msgr::accept", "injected socket failure (accept {peer})");
                        let _ = socket.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                    let worker = self.least_loaded();
                    driver::spawn_accepted(&self.env, &worker, socket, peer);
                }
                Err(e) => match self.failures.after(&e) {
                    AcceptFailed::Drained => return,
                    AcceptFailed::Next => {
                        if e.kind() != io::ErrorKind::Interrupted {
                            log::info!(target: "msgr::accept", "accept: {e}");
                        }
                    }
                    AcceptFailed::Pause => {
                        self.pauses.note(cx.now(), "msgr::accept", "accept", &e);
                        self.paused.start(cx, ACCEPT_BACKOFF);
                        return;
                    }
                },
            }
        }
        // Batch used up with connections possibly still pending: come back after other work.
        if let Some(id) = cx.id() {
            cx.notify(id);
        }
    }

    /// Whether `max_queued_events` wait for the dispatch thread; logs when that starts and
    /// ends.
    fn events_backlogged(&mut self) -> bool {
        let (queued, max) = (self.env.queue.queued_events(), self.env.config.max_queued_events);
        let full = queued >= max;
        if full && !self.events_full {
            self.counters.accept_paused_for_events.fetch_add(1, Relaxed);
            log::warn!(target: "msgr::accept", "{queued} connection events wait for dispatch (max_queued_events {max}): not accepting until they drain");
        } else if !full && self.events_full {
            log::info!(target: "msgr::accept", "connection events drained ({queued} queued): accepting again");
        }
        self.events_full = full;
        full
    }

    /// Ceph's `get_worker`: the worker holding the fewest connections, ties to the lowest.
    fn least_loaded(&self) -> CenterHandle {
        self.workers.iter().min_by_key(|w| w.load()).cloned().unwrap_or_else(|| self.center.clone())
    }
}

/// What a listener does after `accept` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcceptFailed {
    /// Nothing is pending (`WouldBlock`): the next connection raises a new edge.
    Drained,
    /// That one connection is gone, or the call was interrupted (ECONNABORTED, EINTR,
    /// …): accept the next at once.
    Next,
    /// Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): the connection
    /// stays in the backlog, but edge-triggered readiness will not report it again and
    /// retrying at once would spin on it. Stop watching the listener and accept again
    /// after [`ACCEPT_BACKOFF`] (Ceph's accept loops retry too, on their own timer or
    /// poll).
    Pause,
}

/// The one rule for an accept error, shared by the messenger's listener and the admin
/// socket's.
pub(crate) fn after_accept_error(e: &io::Error) -> AcceptFailed {
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::WouldBlock, _) => AcceptFailed::Drained,
        (_, Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
            AcceptFailed::Pause
        }
        _ => AcceptFailed::Next,
    }
}

/// Consecutive accept errors a retry at once may meet again, after which a listener
/// pauses as for a shortage ([`AcceptFailed::Pause`]).
///
/// Why: an error that takes no connection off the backlog (a security module refusing
/// the accept: `EACCES`, `EPERM`) comes back on every call, and the listener would spin
/// on its worker. Ceph counts the same errors in a row (`ms_max_accept_failures`, 4) and
/// aborts the daemon past them; pausing keeps every other connection on the worker
/// running.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    in_a_row: u32,
}

/// Errors in a row after which accepting pauses: Ceph's `ms_max_accept_failures`.
const MAX_ACCEPT_FAILURES: u32 = 4;

impl AcceptErrors {
    /// A connection was accepted.
    pub(crate) fn accepted(&mut self) {
        self.in_a_row = 0;
    }

    /// What to do after `e` ([`after_accept_error`]), pausing once more than
    /// [`MAX_ACCEPT_FAILURES`] errors came in a row. An aborted connection or an
    /// interrupted call is not counted (as in Ceph): the next call may well succeed.
    pub(crate) fn after(&mut self, e: &io::Error) -> AcceptFailed {
        let failed = after_accept_error(e);
        let transient =
            e.kind() == io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ECONNABORTED);
        match failed {
            AcceptFailed::Next if !transient => {
                self.in_a_row += 1;
                if self.in_a_row > MAX_ACCEPT_FAILURES {
                    self.in_a_row = 0;
                    return AcceptFailed::Pause;
                }
                failed
            }
            AcceptFailed::Pause => {
                self.in_a_row = 0;
                failed
            }
            _ => failed,
        }
    }
}

/// A listener's pause: while it lasts the listener is not watched (it may stay readable),
/// and a timer brings its handler back, whose `timer` calls [`Pause::end`]. For the
/// messenger's listener and the admin socket's.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    /// The timer that ends it; `None` while not paused.
    timer: Option<TimerId>,
}

impl Pause {
    /// Whether the listener is paused.
    pub(crate) fn is_on(&self) -> bool {
        self.timer.is_some()
    }

    /// Stops watching the running handler's listener for `backoff`.
    pub(crate) fn start(&mut self, cx: &mut Context<'_>, backoff: Duration) {
        if let Some(id) = cx.id() {
            let _ = cx.set_interest(id, None);
            self.timer = Some(cx.create_time_event(backoff, TimerTarget::Handler(id)));
        }
    }

    /// The pause's timer fired: the listener is watched again.
    pub(crate) fn end(&mut self, cx: &mut Context<'_>) {
        self.timer = None;
        if let Some(id) = cx.id() {
            let _ = cx.set_interest(id, Some(Interest::READABLE));
        }
    }
}

/// Which accept pauses ([`AcceptFailed::Pause`]) are logged at WARN: the first, then at
/// most one per [`PAUSE_WARN_EVERY`], each saying how many went unlogged before it.
#[derive(Debug, Default)]
pub(crate) struct PauseLog {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Pauses not logged since then.
    unlogged: u64,
}

impl PauseLog {
    /// Whether the pause at `now` is logged: `Some` with the pauses not logged since
    /// the last line, `None` (counted) if one was logged less than
    /// [`PAUSE_WARN_EVERY`] ago.
    pub(crate) fn take(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < PAUSE_WARN_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }

    /// Logs the pause at `now` that `e` caused to `what` (a listener) under `target`:
    /// at WARN as [`PauseLog::take`] allows, else at DEBUG.
    pub(crate) fn note(&mut self, now: Instant, target: &str, what: &str, e: &io::Error) {
        log_limited(
            self.take(now),
            log::Level::Warn,
            target,
            format_args!("{what}: {e}; retrying every {ACCEPT_BACKOFF:?}"),
            format_args!("more failures not logged"),
            format_args!("{what}: {e}"),
        );
    }
}

impl Handler for AcceptHandler {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        if !self.paused.is_on() {
            self.accept_some(cx);
        }
    }

    fn timer(&mut self, cx: &mut Context<'_>, _id: TimerId) {
        self.paused.end(cx);
        self.accept_some(cx);
    }

    fn notify(&mut self, cx: &mut Context<'_>) {
        // The first notify registers the listener; later ones resume a used-up batch.
        if !self.registered {
            if let Some(id) = cx.id() {
                match cx.register_source(id, &self.listener, Interest::READABLE) {
                    Ok(()) => self.registered = true,
                    Err(e) => log::error!(target: "msgr::accept", "listener registration: {e}"),
                }
            }
        }
        // A notify queued before a pause began (a used-up batch's) leaves the pause to
        // its timer, as the admin socket's listener does: accepting now would pause
        // again, arming a second timer beside the first.
        if !self.paused.is_on() {
            self.accept_some(cx);
        }
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) {
        if let Some(id) = cx.id() {
            let _ = cx.deregister(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    // Ceph's accept loops retry after a shortage (the Processor on a timer, the admin
    // socket thread on its poll): a listener must not stop at one.
    #[test]
    fn running_out_of_descriptors_or_memory_pauses_and_retries() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(after_accept_error(&os(code)), AcceptFailed::Pause, "errno {code}");
        }
    }

    #[test]
    fn a_failed_connection_or_an_interrupted_call_goes_on_to_the_next() {
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert_eq!(after_accept_error(&os(code)), AcceptFailed::Next, "errno {code}");
        }
    }

    // An error that leaves the connection queued (a security module's EACCES) would come
    // back on every call: past Ceph's ms_max_accept_failures in a row the listener
    // pauses instead of spinning. Before, every such error was "next" forever.
    #[test]
    fn the_same_error_in_a_row_pauses_after_cephs_limit() {
        for code in [libc::EACCES, libc::EPERM, libc::EPROTO] {
            let mut errors = AcceptErrors::default();
            for _ in 0..MAX_ACCEPT_FAILURES {
                assert_eq!(errors.after(&os(code)), AcceptFailed::Next, "errno {code}");
            }
            assert_eq!(errors.after(&os(code)), AcceptFailed::Pause, "errno {code}");
            // The pause starts a new count.
            assert_eq!(errors.after(&os(code)), AcceptFailed::Next, "errno {code}");
        }
    }

    #[test]
    fn an_accepted_connection_or_a_transient_error_resets_or_skips_the_count() {
        let mut errors = AcceptErrors::default();
        for _ in 0..3 {
            for _ in 0..MAX_ACCEPT_FAILURES {
                assert_eq!(errors.after(&os(libc::EACCES)), AcceptFailed::Next);
            }
            errors.accepted();
        }
        for _ in 0..100 {
            assert_eq!(errors.after(&os(libc::ECONNABORTED)), AcceptFailed::Next);
            assert_eq!(errors.after(&os(libc::EINTR)), AcceptFailed::Next);
        }
        assert_eq!(errors.after(&os(libc::EMFILE)), AcceptFailed::Pause);
    }

    #[test]
    fn would_block_means_drained() {
        assert_eq!(after_accept_error(&os(libc::EAGAIN)), AcceptFailed::Drained);
        let e = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(after_accept_error(&e), AcceptFailed::Drained);
    }

    #[test]
    fn pauses_are_logged_once_per_period_with_the_count_of_the_rest() {
        let mut log = PauseLog::default();
        let t0 = Instant::now();
        assert_eq!(log.take(t0), Some(0), "the first pause is logged");
        let within = PAUSE_WARN_EVERY - Duration::from_millis(1);
        for i in 1..=3 {
            assert_eq!(log.take(t0 + within * i / 3), None, "pause {i} inside the period");
        }
        assert_eq!(log.take(t0 + PAUSE_WARN_EVERY), Some(3), "the next period's first line");
        assert_eq!(log.take(t0 + PAUSE_WARN_EVERY), None);
    }

    // A rebind without a port range asks the kernel, which may hand back a port to
    // avoid: it asks again, a bounded number of times, then fails with AddrInUse (never
    // binding an avoided port, never looping for ever).
    #[test]
    fn the_kernels_ports_all_avoided_fail_after_bounded_tries() {
        let config = MessengerConfig { bind_retry_count: 1, ..MessengerConfig::default() };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let every: BTreeSet<u16> = (1..=u16::MAX).collect();
        let err = bind(any, &config, &every, || Ok(())).expect_err("every port avoided");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // Avoiding a few ports, the kernel's pick is outside them.
        let few: BTreeSet<u16> = (32_768..32_800).collect();
        let (_listener, bound) = bind(any, &config, &few, || Ok(())).expect("bind");
        assert!(!few.contains(&bound.port()), "{bound}");
    }

    /// A listener paused (here: the dispatch thread's events backlogged) with a notify
    /// of its own still queued, from a batch of accepts that was used up: that notify
    /// must not pause it again. It did, arming a second pause timer while the first was
    /// still armed, so two timers (and from then on two retries per pause period) ran
    /// for one listener, one more each time it happened again.
    #[test]
    fn a_notify_while_paused_arms_no_second_pause() {
        use event_center::EventCenter;
        use protocol::types::{EntityName, EntityType};

        let config = MessengerConfig { max_queued_events: 1, ..MessengerConfig::default() };
        let env = Env::new(EntityName::new(EntityType::OSD, 0), 1, config, 1);
        let mut center = EventCenter::new(0).expect("center");
        // Accepted sockets go to a worker that never runs: they wait in its queue.
        let elsewhere = EventCenter::new(1).expect("center");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (listener, addr) = bind(any, &env.config, &BTreeSet::new(), || Ok(())).expect("bind");
        // More than one batch waits in the backlog.
        let clients: Vec<_> = (0..ACCEPT_BATCH + 8)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let handler = AcceptHandler::new(
            TcpListener::from_std(listener),
            Arc::clone(&env),
            vec![elsewhere.handle()],
            center.handle(),
        );
        // Registered and started as `Processor::start` does: one batch is accepted and
        // the listener notifies itself to come back for the rest.
        let id = center.with_context(|cx| {
            let id = cx.insert_handler(Box::new(handler));
            cx.with_handler(id, |h, cx| h.notify(cx));
            id
        });
        assert_eq!(elsewhere.handle().load(), ACCEPT_BATCH, "one batch accepted");
        // Meanwhile the dispatch thread fell behind: accepting must pause.
        env.queue.enqueue_event(dispatch::QueueEvent::Reset(env.new_connection(false)));
        assert_eq!(env.queue.queued_events(), 1);
        // The next iteration: the listener's readiness pauses it, then its own notify
        // runs.
        center.run_once(Some(Duration::ZERO)).expect("poll");
        center.run_once(Some(Duration::ZERO)).expect("poll");
        assert!(center.with_context(|cx| cx.is_live(id)));
        assert_eq!(elsewhere.handle().load(), ACCEPT_BATCH, "paused: nothing more accepted");
        assert_eq!(center.timer_count(), 1, "one pause, one timer");
        drop(clients);
    }
}
