//! Delivering received messages to the code that wants them, with back-pressure.
//!
//! Owns: the [`Dispatcher`] hooks and the ordered [`Dispatchers`] chain with its fast
//! path, the priority [`DispatchQueue`] and its one `ms_dispatch` thread, and
//! [`Throttle`] with its RAII [`Permit`].
//!
//! Never: depends on `messenger` (it is generic over the connection handle type, see
//! [`ConnectionRef`]), touches sockets, or holds one of its locks while calling a
//! dispatcher hook or a throttle waker.
//!
//! The receive path, as the messenger drives it:
//! 1. the worker reads a message header and asks the dispatch throttle for its size
//!    with [`Throttle::acquire_or_wait`]; if refused it stops reading and its waker
//!    resumes it after a release;
//! 2. it hands the message and the [`Permit`] to [`DispatchQueue::deliver`], which runs
//!    `ms_fast_preprocess`, then either `ms_fast_dispatch` on the worker or queues it;
//! 3. the `ms_dispatch` thread offers queued messages to the dispatchers head → tail and
//!    releases the permit when the dispatcher returns.
//!
//! Deliberate differences from Ceph (each with its reason at the definition):
//! - an oversize throttle request waits until nothing is held ([`Throttle`]);
//! - weighted round robin counts turns, not message cost ([`DispatchQueue`] docs);
//! - loopback delivery runs on the dispatch thread, not a thread of its own;
//! - `ms_verify_authorizer` asks every dispatcher: any rejection wins ([`Dispatchers::verify_authorizer`]).
#![forbid(unsafe_code)]

pub mod dispatcher;
mod prio;
pub mod queue;
pub mod throttle;

pub use dispatcher::{
    AuthVerdict, Authorizer, ConnectionRef, Delivery, Dispatched, Dispatcher, Dispatchers,
};
pub use queue::{DispatchQueue, QueueCounters, QueueEvent, ShutdownMode};
pub use throttle::{Permit, Throttle, ThrottleCounters, Waker};

/// Ceph's default `ms_dispatch_throttle_bytes`: 100 MiB.
pub const DEFAULT_DISPATCH_THROTTLE_BYTES: u64 = 100 << 20;
