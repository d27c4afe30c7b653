//! msgr v1 (shared/protocol/msgr-v1.md) as a [`crate::Machine`] protocol: its
//! handshake, the open session's tags and messages, its framing and its race rules.
//!
//! [`Connection`] is a [`crate::Machine`] running [`V1`]; drive it through the
//! machine's inputs, commands and outputs, or through [`crate::Connection`] with msgr2
//! beside it.
//!
//! # Files
//!
//! | file | holds |
//! |---|---|
//! | `connection.rs` | [`Connection`], its constructors, [`V1`]'s hooks |
//! | `state.rs` | the handshake steps and the open session's reading state |
//! | `connect.rs` | the connect side: banner, address, connects, every reply |
//! | `accept.rs` | the accept side: banner, connects, authorizer, decision, replies |
//! | `open.rs` | the open session: tags, ACKs, keepalives, messages; framing |
//! | `race.rs` | the pure race rules ([`race::decide`]) |
//!
//! # States
//!
//! ```text
//! connect side:  AwaitTransport ─► AwaitBanner ─► AwaitConnectReply ─► Open
//!                      ▲                 (retries and CHALLENGE_AUTHORIZER loop on
//!                      │                  AwaitConnectReply)
//!                      └── AwaitBackoff ◄── fault (lossless*) ─┘  Standby ◄┘
//!                (*: and a lossy connector's before its banner is written)
//! accept side:   AwaitPeerBanner ─► AwaitConnect ─► AwaitAuthorizerVerdict
//!                   ─► AwaitAcceptDecision ─► [AwaitPeerInSeq] ─► Open
//!                      (non-final replies loop back to AwaitConnect)
//! any state ─► Closed
//! ```
//!
//! AwaitAuthorizerVerdict is passed through at once when the auth provider verifies
//! inline ([`crate::auth::AuthProvider::authorizer_server`]); without one, a connect
//! with an authorizer waits there for [`crate::Machine::handle_authorizer_verdict`].
//!
//! # Deliberate differences from Ceph (each with its reason)
//!
//! * A replaced lossless session opens directly on the new socket (SEQ/READY) instead
//!   of Ceph's extra RETRY_GLOBAL round trip: the session moves as a value, so there is
//!   no second lookup to protect against. A Ceph connector handles both.
//! * A session resumed with READY (a peer without RECONNECT_SEQ that did not restart)
//!   keeps its in_seq and out_seq, as SimpleMessenger's `Pipe::accept` and crimson do;
//!   Async's `ProtocolV1::open` zeroes them while the connector keeps its own
//!   (`client_ready`), which delivers the peer's resends twice and numbers our next
//!   messages below what the peer has.
//! * A duplicate message (`seq <= in_seq`) is dropped as it streams in (never stored)
//!   and reading continues; Pacific stops reading the socket (msgr-v1.md 3.9 quirk).
//! * A message's budget is asked for in windows as its payload arrives
//!   ([`crate::Event::NeedBudget`]), not for its whole length at the header, and its
//!   payload must progress by a window (and by the floor the messenger sets, if more:
//!   [`crate::Machine::set_progress_floor`]) per `Config::payload_timeout`: a peer
//!   cannot hold budget by announcing a large message and going silent, or by
//!   trickling it while others wait. Whole small
//!   messages can also be read on budget granted ahead
//!   ([`crate::Machine::add_receive_credit`]), one request for a burst.
//! * An accepted socket may send at most [`MAX_CONNECT_ATTEMPTS`] connect messages; the
//!   next one faults it (retry replies are answered in a loop, never recursively).
//! * A session whose socket takes none of the bytes waiting for it for
//!   `Config::write_timeout` faults ([`crate::Machine::handle_write_blocked`]).
//! * BADPROTOVER and FEATURES end the connection with [`crate::Event::Refused`] instead
//!   of retrying forever: nothing changes between attempts that would make a retry
//!   succeed. So does a CHALLENGE_AUTHORIZER to a connect that carried no authorizer,
//!   and BADAUTHORIZER on a lossy session; on a lossless one BADAUTHORIZER faults, as in
//!   Ceph, and the session dials again after its backoff with a fresh authorizer (the
//!   acceptor's rotating secrets may lag our ticket's; closing would lose the session's
//!   queued messages).
//! * The acceptor enforces a handshake timeout (a real monitor keeps a silent
//!   handshake open forever, msgr-v1.md 10).
//! * A challenge to auth none's authorizer faults the connection (a Ceph connector would
//!   send the same bytes again; no acceptor challenges auth none).
//! * out_seq is not randomised after RESETSESSION with MSG_AUTH (only meaningful with
//!   cephx signatures).

mod accept;
mod connect;
mod connection;
mod open;
pub mod race;
mod state;

pub use accept::MAX_CONNECT_ATTEMPTS;
pub use connection::Connection;
pub use state::V1;
