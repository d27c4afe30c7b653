//! msgr2.1 (shared/protocol/msgr-v2.md), crc and secure mode, as a [`crate::Machine`]
//! protocol: its handshake, the open session's frames, its framing and its race rules.
//!
//! [`Connection`] is a [`crate::Machine`] running [`V2`]: the same inputs, commands,
//! outputs, queries and [`crate::Event`]s as msgr v1's, through the same session
//! skeleton ([`crate::session`]); drive it directly or through [`crate::Connection`].
//!
//! Authentication runs inside the machine through the [`crate::auth::AuthProvider`] of
//! the [`crate::Config`] (auth none here; cephx implements the same traits). Connection
//! races and reconnects need the messenger's session table: they leave as
//! [`crate::Event::AcceptRequest`] and come back as a [`crate::Decision`] from the pure
//! [`race::decide`].
//!
//! # Files
//!
//! | file | holds |
//! |---|---|
//! | `link.rs` | [`V2`]: what one TCP connection keeps (frame codec, mode, addresses, rounds); msgr2's accessors |
//! | `state.rs` | the handshake steps (with the transcript and auth attempt they carry) |
//! | `send.rs` | control frames out, the mode switch, handshake rounds |
//! | `receive.rs` | banner and frames in, dispatched by step; the AUTH_SIGNATURE check |
//! | `connection.rs` | [`Connection`], its constructors, [`V2`]'s hooks |
//! | `connect.rs` | the connect side: HELLO, auth client, idents, every session reply |
//! | `accept.rs` | the accept side: HELLO, auth server, idents, decision, replies |
//! | `open.rs` | the open session: MESSAGE, KEEPALIVE2(_ACK), ACK; framing out |
//! | `race.rs` | the pure race rules ([`race::decide`]) |
//! | `banner.rs`, `tag.rs`, `frames/`, `framing/` | the wire: banner, tags, one codec per frame kind, the frame layer (crc and secure) |
//!
//! # States
//!
//! ```text
//! connect side:
//!  AwaitTransport ─► AwaitBanner ─► AwaitHello ─► AwaitAuthReply ─► AwaitAuthSignature
//!    ▲  (banner out)   (HELLO out)  (AUTH_REQUEST) │ ▲ AUTH_REPLY_MORE /   │ (AUTH_DONE in:
//!    │                                             │ └ AUTH_BAD_METHOD ───┘  mode switch;
//!    │                                             │             ours out after theirs)
//!    │            SESSION_RETRY(_GLOBAL), SESSION_RESET ─┐                   ▼
//!    │                                   AwaitIdentReply ◄┘◄─ CLIENT_IDENT / SESSION_RECONNECT
//!    │                                     │ SERVER_IDENT / SESSION_RECONNECT_OK
//!    └── AwaitBackoff ◄── fault ──┐        ▼
//!        (WAIT: max backoff)      └──── Open ──► Standby (lossless, nothing to send)
//!
//! accept side:
//!  AwaitPeerBanner ─► AwaitPeerHello ─► AwaitAuthRequest ◄─► AwaitAuthRequestMore
//!    (banner out at once) (HELLO out)        │ AUTH_DONE + signature out (mode switch)
//!                                            ▼
//!                                AwaitAuthSignature ─► AwaitIdent ◄──────────────┐
//!                                                        │ CLIENT_IDENT /         │ WAIT, RESET,
//!                                                        ▼ SESSION_RECONNECT      │ RETRY(_GLOBAL)
//!                                              AwaitAcceptDecision ───────────────┘
//!                                                        │ SERVER_IDENT / RECONNECT_OK
//!                                                        ▼
//!                                                       Open
//! any state ─► Closed
//! ```
//!
//! # Deliberate differences from Ceph (each with its reason)
//!
//! * **msgr2.1 only.** A peer whose banner lacks REVISION_1 (msgr2.0, Nautilus before
//!   14.2.5) is refused: 2.0's framing and nonce scheme have known integrity flaws
//!   and no supported Ceph speaks only 2.0. A connector gives up ([`crate::Event::Refused`]).
//! * **No compression.** We do not advertise `COMPRESSION` in the banner, so a
//!   conforming peer never sends COMPRESSION_REQUEST; tags 21/22 are unknown tags and
//!   fault, exactly as on Pacific.
//! * **The connector signs second.** It sends its AUTH_SIGNATURE (its first frame in
//!   the new mode) only once the acceptor's matched, and keeps what AUTH_DONE taught
//!   (tickets, global id) only then; Ceph's sends its own at once. An AUTH_DONE
//!   replayed from another connection decrypts under our key, so Ceph's connector
//!   seals a frame with that connection's key and first nonce again (a GCM nonce
//!   reuse) and keeps its stale tickets. Ceph's acceptor sends its signature without
//!   waiting, so nothing changes on the wire.
//! * A duplicate MESSAGE (`seq <= in_seq`) is dropped and reading continues; Pacific
//!   stops reading the connection (msgr-v2.md 6.2 quirk).
//! * Frame lengths are limited ([`framing::FrameLimits`]: control frames 64 KiB, message
//!   segments as [`crate::message::DecodeLimits`]); a MESSAGE's segment 0 must be
//!   exactly the 41-byte header2 and control frames exactly one segment. Ceph relies
//!   on its throttles alone.
//! * Control payloads must be consumed exactly (trailing bytes are an error).
//! * The handshake is bounded: [`crate::Config::max_auth_rounds`] rounds (auth, refused idents,
//!   session retries and resets) and 256 KiB of pre-auth transcript per direction; Ceph
//!   loops as long as the peer does and only asserts on a 1 MB transcript with
//!   `ms_die_on_bug`.
//! * IDENT_MISSING_FEATURES (in answer to a CLIENT_IDENT; after a SESSION_RECONNECT it
//!   faults, as in Ceph), an incompatible banner and an auth method refused with no
//!   alternative end a connector with [`crate::Event::Refused`] instead of Ceph's endless
//!   fault-and-retry: nothing changes between attempts that would make a retry pass.
//! * The connector checks the acceptor's HELLO entity type against the type dialled
//!   and SERVER_IDENT's required features against ours (Ceph checks neither on
//!   receipt).
//! * A stale CLIENT_IDENT (older global_seq) closes the new connection with
//!   [`crate::CloseReason::Replaced`] and no `ms_handle_reset` (Ceph queues a reset
//!   for a connection that was never open).
//! * A replaced session moves into the new machine as a value ([`crate::Machine::take_session`])
//!   instead of Ceph's socket hand-over into the old connection object.
//! * An aborted MESSAGE (late_status ABORTED) is dropped after the driver granted its
//!   budget; the budget is released with the next message, as for any message.
//! * The accept side enforces the handshake timeout (`ms_connection_ready_timeout`).
//! * A MESSAGE's payload is budgeted in windows as v1's (the first at its header, the
//!   next once what arrived covers what was granted; reading stops in between) and must
//!   progress by a window (or the messenger's floor, if more) per payload
//!   timeout, so a peer that announces a large message and stalls holds what it sent
//!   plus one window, then loses its connection. A large
//!   segment (crc mode) is read straight into the buffer it is assembled in, as v1's;
//!   secure mode takes block C in one piece from the receive buffer.

mod accept;
pub mod banner;
mod connect;
mod connection;
pub mod frames;
pub mod framing;
mod link;
mod open;
pub mod race;
mod receive;
mod send;
mod state;
pub mod tag;

pub use connection::Connection;
pub use link::V2;
pub use race::msgr2_addr;
pub use tag::Tag;
