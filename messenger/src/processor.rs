//! The Processor: the listening socket and `C_processor_accept`.
//!
//! Accepts until WouldBlock and places each new connection on the least-loaded worker.
//! Accept errors that mean "out of resources" (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause
//! accepting for a moment instead of spinning on a listener that stays readable; so do
//! `max_queued_events` connection events waiting for the dispatch thread (each accepted
//! connection adds some, and nothing else bounds them).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use event_center::{CenterHandle, Context, Handler, HandlerId, Ready, TimerId, TimerTarget};
use mio::net::TcpListener;
use mio::Interest;

use crate::config::MessengerConfig;
use crate::counters::WorkerCounters;
use crate::driver;
use crate::env::Env;
#[cfg(feature = "fault-injection")]
use crate::inject::{Injector, LISTENER_STREAM};

/// How long accepting pauses after running out of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often accepting looks again while the dispatch thread has too many events queued.
const EVENTS_BACKOFF: Duration = Duration::from_millis(10);

/// Connections accepted per readiness event before yielding to the worker's other work.
const ACCEPT_BATCH: usize = 256;

/// Socket, non-blocking, bind, getsockname, listen.
pub(crate) fn bind(
    addr: SocketAddr,
    config: &MessengerConfig,
) -> io::Result<(std::net::TcpListener, SocketAddr)> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_reuse_address(true)?;
    if config.tcp_rcvbuf > 0 {
        sock.set_recv_buffer_size(config.tcp_rcvbuf)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    let listener: std::net::TcpListener = sock.into();
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// The messenger's listener, living on one worker once started.
pub(crate) struct Processor {
    listener: Option<std::net::TcpListener>,
    center: CenterHandle,
    id: Option<HandlerId>,
}

impl Processor {
    pub(crate) fn new(listener: std::net::TcpListener, center: CenterHandle) -> Processor {
        Processor { listener: Some(listener), center, id: None }
    }

    /// Registers the listener on its worker; accepting starts, each accepted socket
    /// going to the least loaded of `workers`.
    pub(crate) fn start(&mut self, env: Arc<Env>, workers: Vec<CenterHandle>) -> io::Result<()> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        let listener = TcpListener::from_std(listener);
        let center = self.center.clone();
        let id = self
            .center
            .submit_to(move |cx: &mut Context<'_>| -> io::Result<HandlerId> {
                #[cfg(feature = "fault-injection")]
                let injector = Injector::new(
                    &env.config,
                    env.identity.nonce(),
                    LISTENER_STREAM,
                    env.worker_counters(center.id()),
                );
                let counters = env.worker_counters(center.id());
                let handler = AcceptHandler {
                    listener,
                    counters,
                    events_full: false,
                    env,
                    workers,
                    paused: None,
                    center,
                    registered: false,
                    #[cfg(feature = "fault-injection")]
                    injector,
                };
                let id = cx.insert_handler(Box::new(handler));
                let registered = cx.with_handler(id, |h, cx| h.notify(cx));
                if registered.is_none() {
                    return Err(io::Error::other("accept handler vanished"));
                }
                Ok(id)
            })
            .map_err(|e| io::Error::other(format!("{e}")))??;
        self.id = Some(id);
        Ok(())
    }

    /// Stops accepting: the listener is closed on its worker, before this returns (as
    /// Ceph's `Processor::stop`), so the port is free once a shutdown returns, even on a
    /// shared pool whose worker is busy. Called on a worker, it cannot wait (for itself,
    /// or for another worker that may wait on this one): the close is posted.
    pub(crate) fn stop(self) {
        let Some(id) = self.id else { return };
        let remove = move |cx: &mut Context<'_>| {
            cx.remove(id);
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
    paused: Option<TimerId>,
    center: CenterHandle,
    registered: bool,
    /// `ms_inject_socket_failures` on accept.
    #[cfg(feature = "fault-injection")]
    injector: Injector,
}

impl AcceptHandler {
    fn accept_some(&mut self, cx: &mut Context<'_>) {
        for _ in 0..ACCEPT_BATCH {
            if self.events_backlogged() {
                self.pause(cx, EVENTS_BACKOFF);
                return;
            }
            match self.listener.accept() {
                Ok((socket, peer)) => {
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    log::warn!(target: "msgr::accept", "accept: {e}; pausing {ACCEPT_BACKOFF:?}");
                    self.pause(cx, ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends: that one connection is gone; go on.
                    log::info!(target: "msgr::accept", "accept: {e}");
                }
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

    /// Stops watching the listener for `backoff`.
    fn pause(&mut self, cx: &mut Context<'_>, backoff: Duration) {
        if let Some(id) = cx.id() {
            let _ = cx.set_interest(id, None);
            self.paused = Some(cx.create_time_event(backoff, TimerTarget::Handler(id)));
        }
    }

    /// Ceph's `get_worker`: the worker holding the fewest connections, ties to the lowest.
    fn least_loaded(&self) -> CenterHandle {
        self.workers.iter().min_by_key(|w| w.load()).cloned().unwrap_or_else(|| self.center.clone())
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

impl Handler for AcceptHandler {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        if self.paused.is_none() {
            self.accept_some(cx);
        }
    }

    fn timer(&mut self, cx: &mut Context<'_>, _id: TimerId) {
        self.paused = None;
        if let Some(id) = cx.id() {
            let _ = cx.set_interest(id, Some(Interest::READABLE));
        }
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
        self.accept_some(cx);
    }

    fn shutdown(&mut self, cx: &mut Context<'_>) {
        if let Some(id) = cx.id() {
            let _ = cx.deregister(id);
        }
    }
}
