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
//!   O(log n), monotonic clock; `poll` sleeps until the nearest deadline rounded up to
//!   the next millisecond, so a sub-millisecond deadline never spins.
//! - **External events**: [`CenterHandle::dispatch_event_external`],
//!   [`CenterHandle::notify`] and [`CenterHandle::submit_to`] from any thread; only the
//!   first post after the loop drained its queue writes the waker.
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

mod center;
mod handler;
mod pool;
mod timer;

pub use center::{
    CenterError, CenterHandle, Context, EventCenter, EVENTS_CAPACITY, EXTERNAL_BATCH, TIMER_BATCH,
};
pub use handler::{Handler, HandlerId, Ready};
pub use pool::{WorkerPool, WorkerPoolConfig};
pub use timer::{TimerId, TimerTarget};
