//! Threads and readiness for asyncmsgr.
//!
//! Owns: one [`EventCenter`] per worker thread over its own `mio::Poll` (file events,
//! time events, external events) and the fixed `WorkerPool` that runs them.
//!
//! Never: anything that knows about Ceph, messages or protocols; spawning threads other
//! than the pool's configured workers.
