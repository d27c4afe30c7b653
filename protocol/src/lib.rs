//! Ceph's messenger protocols as pure code: msgr v1 and msgr2.1 on the wire, their
//! session state machines, and authentication (auth none, cephx).
//!
//! Owns: entity names/addresses and feature bits, Ceph's encoding conventions, the v1
//! frames, msgr2's frames and frame layer, [`Message`] and typed messages, the sans-IO
//! session machines of both protocols behind one seam ([`Connection`]), and the auth
//! seam with its methods.
//!
//! Never: sockets, threads, or reading a clock (time is always passed in as an input,
//! and so is randomness).
//!
//! # Map
//!
//! | module | holds |
//! |---|---|
//! | [`error`], [`encoding`], [`types`] | the error type, Ceph's encoding, names, addresses, features |
//! | [`wire`] | msgr v1 frames: banner, connect, reply, tags, header, footer, crc32c |
//! | [`message`], [`messages`] | [`Message`] and its one v1 framing encoder and decoder; typed messages |
//! | [`auth`] | the auth seam both machines call, auth none, cephx |
//! | [`session`] | what both protocols share: the session and its numbers, queues, the fault policy, timers, [`Event`], the race vocabulary, the learned address, [`Machine`] |
//! | [`v1`] | msgr v1: handshake, open session, race rules |
//! | [`v2`] | msgr2.1: frames, frame layer, handshake, open session, race rules |
//! | `connection.rs` | [`Connection`]: either protocol behind one type; the banner-sniffing acceptor |
//! | `accept.rs` | [`decide`]: the accept decision for a request of either protocol |
//! | `testing` | (feature `testing`) the two-node in-memory `Pair` harness, toy auth |
//!
//! Where to look: a message is framed in `v1/open.rs` (through
//! [`Message::push_frame_to`], laid out as the [`Frame`](message::Frame) that
//! [`Message::encode_frame_with`] builds for the golden tests) or `v2/open.rs`; the race is decided in
//! `v1/race.rs` / `v2/race.rs`; a replace happens in [`Machine::take_session`] and
//! `v1/accept.rs` / `v2/accept.rs` (`handle_decision`); auth plugs in through
//! [`auth::AuthProvider`] (`auth/provider.rs`, `auth/authorizer.rs`).
#![forbid(unsafe_code)]

mod accept;
pub mod auth;
mod connection;
pub mod encoding;
pub mod error;
pub mod message;
pub mod messages;
pub mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod types;
pub mod v1;
pub mod v2;
pub mod wire;

pub use accept::decide;
pub use accept::Sniffer;
pub use connection::{Connection, ProtocolVersion};
pub use message::Message;
pub use session::{
    AcceptRequest, AuthVerdict, CloseReason, Config, ConnectSeq, Cookies, Decision, Event,
    ExistingSession, ExistingState, GlobalSeq, GlobalSeqCounter, Initiator, Machine, Opened,
    Policy, PolicyTable, RequestKind, Seq, Seqs, Session, SessionState, TableEffect,
};
