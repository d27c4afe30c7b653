//! The public face of asyncmsgr: [`Messenger`], [`Connection`], policies.
//!
//! Owns: the Processor (listening and accepting), the worker-owned connection drivers
//! that run `protocol::v1` over `event_center` sockets, the session table, policies,
//! counters and the connections dump.
//!
//! Never: spawns threads beyond the configured workers and one dispatch thread per
//! messenger; holds a lock across a socket call or a dispatcher callback.

pub mod config;
mod connection;
pub mod counters;
mod driver;
mod messenger;
mod processor;

pub use config::MessengerConfig;
pub use connection::{ConnState, Connection, SendError};
pub use dispatch::{AuthVerdict, Authorizer, Dispatched, Dispatcher, Throttle};
pub use messenger::{Messenger, Totals};
pub use protocol::v1::Policy;
