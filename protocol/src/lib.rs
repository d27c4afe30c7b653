//! Ceph msgr v1 on the wire, as pure code.
//!
//! Owns: entity names/addresses and feature bits, Ceph's encoding conventions, the v1
//! frames (banner, connect, connect_reply, tags, header, footer, crc32c), [`Message`],
//! typed messages, the sans-IO session state machine and authentication (auth none,
//! cephx).
//!
//! Never: sockets, threads, or reading a clock (time is always passed in as an input).
#![forbid(unsafe_code)]

pub mod auth;
pub mod encoding;
pub mod error;
pub mod message;
pub mod messages;
pub mod types;
pub mod v1;
pub mod v2;
pub mod wire;

pub use message::Message;
