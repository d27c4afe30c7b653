//! [`DispatchQueue`]: received messages and connection events waiting for the one
//! `ms_dispatch` thread.
//!
//! # What is promised
//! - **Events first.** Queued connection events ([`QueueEvent`]) are delivered before
//!   any queued message, in the order they were enqueued (one FIFO for all
//!   connections). So an event enqueued before a message of the same connection is
//!   delivered first — and an event enqueued later may overtake that connection's
//!   earlier queued messages, as in Ceph. A reset does not: the messenger discards the
//!   connection's queued messages before it queues the reset, as Ceph's `_stop` does,
//!   and from then on the queue takes none of them and no other event of the connection
//!   ([`crate::ConnectionRef::takes_no_messages`]): the reset is its last callback.
//!   [`DispatchQueue::discard`] does not remove events.
//! - **Connect / accept before messages.** [`DispatchQueue::enqueue_event`] with
//!   `Connect`/`Accept` calls `ms_handle_fast_connect`/`ms_handle_fast_accept` on the
//!   calling thread before it returns, and queues `ms_handle_connect`/`ms_handle_accept`.
//!   If the caller delivers that connection's messages after `enqueue_event` returns
//!   (the connection's worker does), then the fast hooks run before every message of
//!   the connection, fast-dispatched or queued, and the queued hooks run before every
//!   *queued* message of it. A fast-dispatched message may run before the queued
//!   `ms_handle_connect` (as in Ceph).
//! - **Messages.** Priorities above `PRIO_HIGH` (so `PRIO_HIGHEST`) strictly first,
//!   highest first; the others by weighted round robin, the priority value being the
//!   weight (see the `prio` module docs: proportional turns, nothing starves; Ceph's
//!   `DispatchQueue` is strict from `PRIO_LOW` up); within a
//!   priority, connections take turns; within one connection and one priority, FIFO.
//!   Priority 0 counts as `PRIO_DEFAULT`. Messages of one connection at different
//!   priorities may be reordered (that is what priorities are for).
//! - **Fast path.** [`DispatchQueue::deliver`] runs `ms_fast_preprocess` for every
//!   message and `ms_fast_dispatch` on the calling thread for those a fast dispatcher
//!   wants, bypassing the queue; each connection's worker calls it in arrival order, so
//!   preprocess sees each connection's messages in arrival order.
//! - **Loopback.** [`DispatchQueue::local_delivery`] keeps the same guarantees: local
//!   messages wait in a FIFO lane that the dispatch thread serves after events and
//!   before queued messages, running preprocess, then fast dispatch or queueing, exactly
//!   as a worker would. (Ceph uses a separate local-delivery thread; we add no thread.)
//! - **Budget.** Each message may carry a dispatch-throttle [`Permit`], acquired when it
//!   was read. It is released when the dispatcher (fast or not) returns, or when the
//!   message is discarded.
//!
//! # Bounds
//! The message queue has no bound of its own: it is bounded by the dispatch throttle
//! (bytes; default 100 MiB, Ceph's `ms_dispatch_throttle_bytes`), because workers stop
//! reading when they cannot acquire budget. Every message is charged what it costs
//! while queued, [`Message::queued_cost`] (payload plus
//! [`protocol::message::MESSAGE_OVERHEAD`] for the value and its queue entry), so
//! empty messages are bounded too. Events are few per
//! connection (open, reset, refused). Local deliveries are charged with
//! [`Throttle::take`] (the local sender is not blocked, as in Ceph), which makes
//! remote readers back off.
//!
//! # Wakeups
//! The dispatch thread sleeps on a condvar when nothing waits, and a producer wakes it
//! only when it makes an idle queue non-empty. A worker hands over what one read
//! produced together ([`DispatchQueue::enqueue_batch`]): one lock and at most one
//! wakeup per read, where handing over message by message let the thread wake, drain
//! the first message and sleep again several times per read. Each sleep costs a futex wait here and
//! a futex wake on the producer (a worker), which dominated the queued path's cost
//! under a request/reply load. So before it sleeps the thread spins for a few
//! microseconds ([`DispatchQueue::set_idle_spin`], default [`DEFAULT_IDLE_SPIN`]),
//! watching an arrivals counter without the lock; work that lands within the spin is
//! taken with no syscall on either side. A spin that found nothing makes the thread
//! skip the spin the next 1, 2, 4 … (at most 64) times it runs dry, so a load whose
//! gaps outlast the spin (depth 1, an idle daemon) pays almost nothing for it.
//! [`QueueCounters::sleeps`] counts the sleeps.
//!
//! A waiting message's age ([`QueueCounters::oldest_age`]) counts from its
//! [`Message::dispatch_stamp`] (the worker reads the clock once per batch) and the
//! queue reads the clock only for messages without one.
//!
//! # Shutdown
//! [`ShutdownMode::Drain`] delivers what is queued, then stops; `Discard` drops every
//! queued message at once (releasing budgets) and, after the dispatch in progress,
//! delivers the events queued before the shutdown, then stops, as Ceph's dispatch
//! thread delivers its queued codes after `stop` and discards its messages (a
//! messenger's shutdown queues each closed connection's `ms_handle_reset` first). Both
//! refuse new items and join the thread (unless called from the dispatch thread
//! itself, where they only ask it to stop: it delivers those events once its dispatcher
//! returns). If the thread was never started, both discard, events included. Every call
//! returns only once the thread is joined, also one racing [`DispatchQueue::start`] (it
//! waits for the spawn) or another shutdown (it waits for that one's join); a start
//! after a shutdown fails and spawns nothing.
//!
//! # Files
//! Each imports only the ones below it: the shared state and the public data types
//! (`shared`), the dispatch thread's loop and its idle spin (`dispatch_thread`), and the
//! [`DispatchQueue`] handle producers and the owner call (`handle`).
//!
//! [`Permit`]: crate::throttle::Permit
//! [`Throttle::take`]: crate::throttle::Throttle::take
//! [`Message::queued_cost`]: protocol::Message::queued_cost
//! [`Message::dispatch_stamp`]: protocol::Message::dispatch_stamp

mod dispatch_thread;
mod handle;
mod shared;

pub use dispatch_thread::on_a_dispatch_thread;
pub use handle::{Delivery, DispatchQueue, ReadBatch, DEFAULT_IDLE_SPIN};
pub use shared::{QueueCounters, QueueEvent, ShutdownMode};
