//! The public face of asyncmsgr: `Messenger`, `Connection`, policies.
//!
//! Owns: the Processor (listening and accepting), the worker-owned connection drivers
//! that run `protocol::v1` over `event_center` sockets, the session table, policies,
//! counters and the connections dump.
//!
//! Never: spawns threads beyond the configured workers and one dispatch thread per
//! messenger; holds a lock across a socket call or a dispatcher callback.

pub mod config;
pub mod counters;

pub use config::MessengerConfig;
