//! The sans-IO msgr v1 session state machine (connect and accept sides).
//!
//! [`Connection`] never touches a socket, a thread or a clock: it is fed bytes and `now`
//! and hands back bytes to write, [`Event`]s and its next deadline (quinn-proto style).
//!
//! # Driving a connection
//!
//! * **Create**: [`Connection::connect`] (then dial; call
//!   [`Connection::handle_transport_connected`] once the TCP connect completes) or
//!   [`Connection::accept`] (the socket is already connected).
//! * **Inputs**: [`Connection::handle_bytes`] (only while [`Connection::wants_read`]),
//!   [`Connection::handle_transport_closed`], [`Connection::handle_timeout`],
//!   [`Connection::handle_write_blocked`], [`Connection::handle_write_progress`],
//!   [`Connection::handle_accept_decision`], [`Connection::handle_authorizer_verdict`],
//!   [`Connection::grant_budget`].
//! * **Commands**: [`Connection::send_message`], [`Connection::send_keepalive`],
//!   [`Connection::close`], [`Connection::take_session`].
//! * **Outputs**, after every input or command: drain [`Connection::poll_event`], write
//!   what [`Connection::poll_transmit`] returns, re-arm the one timer at
//!   [`Connection::poll_timeout`], and derive read interest from
//!   [`Connection::wants_read`].
//!
//! # States
//!
//! ```text
//! connect side:  AwaitTransport ─► AwaitBanner ─► AwaitConnectReply ─► Open
//!                      ▲                 (retries loop on AwaitConnectReply)
//!                      └── AwaitBackoff ◄── fault (lossless) ──┘  Standby ◄┘
//! accept side:   AwaitPeerBanner ─► AwaitConnect ─► AwaitAuthorizerVerdict
//!                   ─► AwaitAcceptDecision ─► [AwaitPeerInSeq] ─► Open
//!                      (non-final replies loop back to AwaitConnect)
//! any state ─► Closed
//! ```
//!
//! # Deliberate differences from Ceph (each with its reason)
//!
//! * A replaced lossless session opens directly on the new socket (SEQ/READY) instead
//!   of Ceph's extra RETRY_GLOBAL round trip: the session moves as a value, so there is
//!   no second lookup to protect against. A Ceph connector handles both.
//! * A duplicate message (`seq <= in_seq`) is dropped as it streams in (never stored)
//!   and reading continues; Pacific stops reading the socket (msgr-v1.md 3.9 quirk).
//! * A message's budget is asked for in windows as its payload arrives
//!   ([`Event::NeedBudget`]), not for its whole length at the header, and its payload
//!   must progress by a window per `Config::payload_timeout`: a peer cannot hold budget
//!   by announcing a large message and going silent.
//! * An accepted socket may send at most [`MAX_CONNECT_ATTEMPTS`] connect messages; the
//!   next one faults it (retry replies are answered in a loop, never recursively).
//! * A session whose socket takes none of the bytes waiting for it for
//!   `Config::write_timeout` faults ([`Connection::handle_write_blocked`]).
//! * BADPROTOVER, FEATURES, BADAUTHORIZER and CHALLENGE_AUTHORIZER (cephx is out of
//!   scope) end the connection with [`Event::Refused`] instead of retrying forever:
//!   nothing changes between attempts that would make a retry succeed.
//! * The acceptor enforces a handshake timeout (a real monitor keeps a silent
//!   handshake open forever, msgr-v1.md 10).
//! * out_seq is not randomised after RESETSESSION with MSG_AUTH (only meaningful with
//!   cephx signatures, which are out of scope).

mod config;
mod connection;
mod decide;
mod event;
mod fault;
mod policy;
mod rx;
mod session;
pub mod testing;

pub use config::{
    AuthorizerHook, Config, CounterValues, Counters, DEFAULT_FIRST_WINDOW, DEFAULT_PROGRESS_WINDOW,
};
pub use connection::{Connection, SessionState, MAX_CONNECT_ATTEMPTS};
pub use decide::{decide, AcceptRequest, Decision, ExistingSession, ExistingState};
pub use event::{AuthVerdict, CloseReason, Event, Initiator, Opened};
pub use fault::{fault_action, next_backoff, Fault, FaultAction, FaultContext, Side};
pub use policy::Policy;
pub use session::Session;
