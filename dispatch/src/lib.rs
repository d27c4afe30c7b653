//! Delivering received messages to the code that wants them, with back-pressure.
//!
//! Owns: the `Dispatcher` hooks, the priority `DispatchQueue` and its dispatch thread,
//! and `Throttle`.
//!
//! Never: depends on `messenger` (it is generic over the connection handle type) or
//! touches sockets.
