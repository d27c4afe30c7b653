//! Threads and readiness for asyncmsgr.
//!
//! Owns: one [`EventCenter`] per worker thread over its own `mio::Poll` (file events,
//! time events, external events) and the fixed [`WorkerPool`] that runs them.
//!
//! Never: anything that knows about Ceph, messages or protocols; spawning threads other
//! than the pool's configured workers.
//!
//! # Model
//! - **Handlers** ([`Handler`]) live in a slab inside their center, named by
//!   generation-tagged [`HandlerId`]s, and are taken out while they run. They reach the
//!   center only through the [`Context`] passed to every callback: no shared ownership.
//! - **File events**: a handler owns its source (say a `mio::net::TcpStream`); the center
//!   keeps the registration ([`Context::register`], [`Context::set_interest`]).
//!   Readiness is edge-like: read/write until `WouldBlock` (see [`Ready`]).
//! - **Time events**: [`Context::create_time_event`] / [`Context::delete_time_event`],
//!   O(log n), monotonic clock. The nearest deadline is kept on one timerfd in the
//!   center's epoll set, re-armed only when it moves earlier, so `poll` sleeps without a
//!   timeout (where no timerfd can be made, `poll` times out at the deadline rounded up
//!   to the next millisecond, so a sub-millisecond deadline never spins).
//! - **External events**: [`CenterHandle::dispatch_event_external`],
//!   [`CenterHandle::notify`] and [`CenterHandle::submit_to`] from any thread; only the
//!   first post after the loop drained its queue writes the waker. Code on the worker
//!   reschedules a handler with [`Context::notify`], which writes none.
//!
//! # Example: a handler that owns its socket
//! ```
//! use std::io::{self, Read};
//! use asyncmsgr_event_center::{Context, Handler, Ready, WorkerPool, WorkerPoolConfig};
//! use mio::{net::TcpListener, Interest};
//!
//! struct Acceptor {
//!     listener: TcpListener,
//! }
//!
//! impl Handler for Acceptor {
//!     fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
//!         // Edge-triggered: accept until WouldBlock.
//!         while let Ok((stream, _peer)) = self.listener.accept() {
//!             let _ = cx.register(stream, Interest::READABLE, |_id, stream| {
//!                 Box::new(Conn { stream })
//!             });
//!         }
//!     }
//! }
//!
//! struct Conn {
//!     stream: mio::net::TcpStream,
//! }
//!
//! impl Handler for Conn {
//!     fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
//!         let mut buf = [0u8; 4096];
//!         loop {
//!             match self.stream.read(&mut buf) {
//!                 Ok(0) => {
//!                     // Peer closed: deregister and drop (after this callback returns).
//!                     if let Some(id) = cx.id() {
//!                         cx.remove(id);
//!                     }
//!                     return;
//!                 }
//!                 Ok(_n) => {}
//!                 Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
//!                 Err(_) => return,
//!             }
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = WorkerPool::new(WorkerPoolConfig { workers: 2, ..Default::default() })?;
//! let worker = pool.least_loaded();
//! worker.add_load(1);
//! let addr = worker.submit_to(|cx| -> io::Result<std::net::SocketAddr> {
//!     let listener = TcpListener::bind("127.0.0.1:0".parse().expect("literal"))?;
//!     let addr = listener.local_addr()?;
//!     cx.register(listener, Interest::READABLE, |_id, listener| Box::new(Acceptor { listener }))?;
//!     Ok(addr)
//! })??;
//! std::net::TcpStream::connect(addr)?;
//! pool.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Ceph names
//! `EventCenter::create_file_event` → [`Context::register`]; `delete_file_event` →
//! [`Context::remove`] / [`Context::set_interest`]; `create_time_event`,
//! `delete_time_event`, `dispatch_event_external`, `submit_to` keep their names;
//! `NetworkStack::get_worker` → [`WorkerPool::least_loaded`].
//!
//! # Differences from Ceph
//! - `submit_to` on the center's own thread returns [`CenterError::OnOwnThread`] instead of
//!   running inline: the only way to touch the center is the `&mut Context` that code on the
//!   worker already holds, so it calls the closure itself.
//! - A panicking handler is dropped and counted instead of aborting the process.
//!
//! # Layout (for readers of the source)
//! Bottom up, each file using only those before it: `registry` (the slab of
//! generation-tagged handler slots and their epoll registrations), `timer` (the ordered
//! timer queue) and `external` (the cross-thread queue, the waker, the coalescing of
//! wakeups and notifies) are generic and know no handler; `handler` (the [`Handler`]
//! trait and the [`Context`] it is given) builds on them, `center_handle` on it, `center`
//! (the loop) on all of them, and `pool` on the loop. Their small hot-path methods are
//! `#[inline]`: split across modules, the compiler stopped inlining them, and a timer's
//! insert + cancel took a fifth more instructions than in one file.

mod center;
mod center_handle;
mod external;
mod handler;
mod pool;
mod registry;
mod timer;
mod timerfd;

pub use center::{on_a_worker, EventCenter, EVENTS_CAPACITY, EXTERNAL_BATCH, TIMER_BATCH};
pub use center_handle::CenterHandle;
pub use external::CenterError;
pub use handler::{AsAny, Context, Handler, Ready, TimerTarget};
pub use pool::{pin_current_thread, pin_thread, WorkerPool, WorkerPoolConfig};
pub use registry::HandlerId;
pub use timer::TimerId;
