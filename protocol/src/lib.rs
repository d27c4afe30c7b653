//! Ceph msgr v1 on the wire, as pure code.
//!
//! Owns: entity names/addresses and feature bits, Ceph's encoding conventions, the v1
//! frames (banner, connect, connect_reply, tags, header, footer, crc32c), [`Message`],
//! typed messages and the sans-IO session state machine.
//!
//! Never: sockets, threads, or reading a clock (time is always passed in as an input).
#![forbid(unsafe_code)]

pub mod message;

pub use message::Message;
