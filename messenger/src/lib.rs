//! The public face of asyncmsgr: `Messenger`, `Connection`, `Policy`.
//!
//! Owns: the Processor (listening and accepting), the worker-owned connection drivers
//! that run `protocol::v1` over `event_center` sockets, the session table, policies,
//! counters and the admin socket.
//!
//! Never: spawns threads beyond the configured workers and one dispatch thread per messenger.
