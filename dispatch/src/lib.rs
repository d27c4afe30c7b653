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
//! 1. the worker reads a message header and asks the dispatch throttle for a first
//!    window of its size (and for more windows as its bytes arrive) with
//!    [`Throttle::acquire_or_wait`]; if the request is queued it stops reading and the
//!    waker resumes it when a release grants the request;
//! 2. it hands the message and the [`Permit`] to [`DispatchQueue::deliver_into`], which
//!    runs `ms_fast_preprocess`, then either `ms_fast_dispatch` on the worker or adds it
//!    to the worker's [`ReadBatch`], which [`DispatchQueue::enqueue_batch`] queues once
//!    the read is handled (one lock, at most one wakeup; [`DispatchQueue::deliver`] does
//!    both for one message). The batch keeps the worker's copy of the dispatcher chains
//!    ([`ChainCache`]), so a message costs no lock on the shared chain;
//! 3. the `ms_dispatch` thread offers queued messages to the dispatchers head → tail and
//!    releases the permit when the dispatcher returns.
//!
//! Deliberate differences from Ceph (each with its reason at the definition):
//! - an oversize throttle request waits until nothing is held, where Ceph admits it
//!   whenever the count is not above the maximum ([`Throttle`]): the overshoot stays
//!   bounded by one request;
//! - a worker waiting for throttle budget queues one request whose grant calls its
//!   waker, instead of retrying on a 1 ms timer; requests are granted in FIFO order
//!   and the oldest message in progress always gets its next window ([`Throttle`]);
//! - weighted round robin counts turns (weight = priority), not message cost
//!   ([`queue`] docs); priority 0 counts as `PRIO_DEFAULT`;
//! - loopback delivery runs on the dispatch thread, not on a thread of its own;
//! - `ms_verify_authorizer` asks every dispatcher: any rejection wins, else the first
//!   non-empty reply ([`Dispatchers::verify_authorizer`]); the messenger asks only on
//!   a msgr v1 accept under auth none, and never calls `ms_get_authorizer`: credentials
//!   and their verification come from the auth provider (cephx: `AuthConfig`), as
//!   Ceph 16's `AuthClient`/`AuthServer` took them over from its dispatchers;
//! - `ms_handle_authentication` asks the chain until one answers, and a refusal
//!   closes the connection, where Ceph 16 asks one dispatcher and ignores the answer
//!   ([`Dispatcher::ms_handle_authentication`]);
//! - messages are `Message` values moved through the chain (a declining dispatcher
//!   hands it back in [`Dispatched::NotTaken`]) instead of reference-counted pointers.
#![forbid(unsafe_code)]

pub mod dispatcher;
mod prio;
pub mod queue;
pub mod throttle;

pub use dispatcher::{
    AuthVerdict, Authentication, Authorizer, ChainCache, ConnectionRef, Dispatched, Dispatcher,
    Dispatchers,
};
pub use queue::{
    on_a_dispatch_thread, Delivery, DispatchQueue, QueueCounters, QueueEvent, ReadBatch,
    ShutdownMode, DEFAULT_IDLE_SPIN,
};
pub use throttle::{InFlight, Permit, Throttle, ThrottleCounters, Ticket, Waiting, Waker};

/// Ceph's default `ms_dispatch_throttle_bytes`: 100 MiB.
pub const DEFAULT_DISPATCH_THROTTLE_BYTES: u64 = 100 << 20;
