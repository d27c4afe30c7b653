//! The public face of asyncmsgr: [`Messenger`], [`Connection`], policies.
//!
//! Owns: the Processor (listening and accepting), the worker-owned connection drivers
//! that run the protocol seam (`protocol::Connection`: msgr v1, or msgr2 for a peer whose
//! banner says so and for a `v2:` address we dial) over `event_center` sockets, the
//! session table, policies, counters and the connections dump.
//!
//! Never: spawns threads beyond the configured workers and one dispatch thread per
//! messenger (but `ms_reaper`, for a messenger dropped on a worker or a dispatch thread:
//! see [`Messenger`]; and `msgr-admin-rest`, one per admin-socket client whose answer is
//! half-written when the admin socket stops, ending with that answer); holds a lock
//! across a socket call or a dispatcher callback.
//!
//! # Example
//!
//! A server that answers every message on the connection it came on, and a client that
//! sends it one (the OSD heartbeat's ping → reply):
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use asyncmsgr::{Bytes, Connection, Dispatched, Dispatcher, Messenger, MessengerConfig, Policy};
//! use asyncmsgr::{EntityName, EntityType, Message};
//!
//! struct Echo;
//! impl Dispatcher<Connection> for Echo {
//!     fn ms_dispatch(&self, conn: &Connection, msg: Message) -> Dispatched {
//!         let mut reply = Message::new(msg.msg_type(), msg.front().clone());
//!         reply.set_tid(msg.tid());
//!         let _ = conn.send_message(reply);
//!         Dispatched::Taken
//!     }
//! }
//!
//! struct Replies(crossbeam_channel::Sender<u64>);
//! impl Dispatcher<Connection> for Replies {
//!     fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
//!         let _ = self.0.send(msg.tid());
//!         Dispatched::Taken
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let config = MessengerConfig { workers: 1, ..MessengerConfig::default() };
//! let server = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, config.clone())?;
//! server.set_default_policy(Policy::stateless_server());
//! server.bind("127.0.0.1:0".parse().expect("address"))?;
//! server.start()?;
//! server.add_dispatcher_head(Arc::new(Echo))?;
//!
//! let client = Messenger::new(EntityName::new(EntityType::CLIENT, 1), 2, config)?;
//! client.set_default_policy(Policy::lossy_client());
//! client.start()?;
//! let (tx, rx) = crossbeam_channel::unbounded();
//! client.add_dispatcher_head(Arc::new(Replies(tx)))?;
//!
//! // The server's full address (with its nonce), as a Ceph daemon knows it from a map.
//! let conn = client.connect_to(EntityType::OSD, server.my_addr());
//! let mut ping = Message::new(2 /* CEPH_MSG_PING */, Bytes::new());
//! ping.set_tid(42);
//! conn.send_message(ping).expect("queued");
//! assert_eq!(rx.recv_timeout(Duration::from_secs(10)).expect("reply"), 42);
//!
//! client.shutdown();
//! server.shutdown();
//! # Ok(())
//! # }
//! ```
//!
//! # Threads and ownership
//!
//! A [`Connection`] is a handle. Sending pushes onto the handle's mailbox and, only when
//! the mailbox goes from idle to non-empty, posts one notify to the connection's worker.
//! The worker-owned driver is the only code touching the socket and the
//! `protocol::Connection` state machine; it drains the mailbox, reads (into a
//! per-worker buffer split into `Bytes`), hands protocol events to the dispatch layer,
//! writes with one `writev` per batch, and keeps one timer armed from the machine's
//! `poll_timeout`. Received messages are charged to the throttles window by window as
//! their payload arrives; when one is full the driver stops reading until the throttle
//! grants its request (see "Bounds a peer cannot escape" below).
//!
//! Inside, the crate is a line, each part using only those before it (but for the handle
//! and the driver's own sends, which use each other, and `machine`, which takes the read
//! size from the driver): the configuration
//! and counters → the protocol machine as the driver sees it (`machine`, the one module
//! that calls the session machine) → policies, and the handle's mailbox and send bounds
//! → the [`Connection`] handle → the session table (peer address → session, every live
//! connection, and the accept decision's check-and-set) → the drivers' environment →
//! the driver (socket I/O, mailbox, budgets, events, accept and replace, cleanup) → the
//! listener and the admin socket → [`Messenger`]. The handle has three locks (mailbox,
//! what the driver publishes, private data); where its driver runs is set once.
//!
//! # Shutdown
//!
//! [`Messenger::shutdown`] ends every connection's session as [`Messenger::mark_down_all`]
//! does, as Ceph's shutdown does (its `mark_down_all`): each connection whose session had
//! not ended yet, dialled or accepted, open, in standby, reconnecting or still in its
//! handshake, is reported with one `ms_handle_reset`, so a daemon frees what it keeps
//! per session; the loopback connection, one the user marked down
//! ([`Connection::mark_down`]) and one already reported are not. The dispatch thread
//! delivers those resets after the `ms_dispatch` under way and with the connection
//! events queued before them, and drops every message still waiting for `ms_dispatch`.
//! Unlike Ceph's `shutdown`, which only signals and leaves the joins to `wait`, the call
//! returns once all that is done, and no dispatcher of the messenger runs afterwards;
//! but it cannot wait for its own thread when called from the dispatch thread (the
//! resets then come once that dispatcher returns) or a worker, and on a shared pool a
//! fast hook a worker had begun may still be finishing: [`Messenger::wait`] waits for
//! those too.
//!
//! # Deliberate differences from Ceph's AsyncMessenger
//!
//! * **Replace** (an incoming connect takes over a lossless session): the accepting
//!   driver posts its socket and half-open state machine to the existing connection's
//!   driver, which adopts them and moves its session (seqs, queues, unacked messages,
//!   and a keepalive asked for and not sent yet) into the new machine. Ceph does the
//!   same hand-over under two connection locks; here no two connections are ever
//!   locked together, and user handles stay valid.
//! * **Who may take a session.** Sessions are found by the peer's announced address, as
//!   in Ceph; but a peer that authenticated as another entity than the session under
//!   that address is refused and closed (no reply; counted as a peer issue), instead of
//!   resuming, replacing or resetting that session. Another entity: another name than
//!   the one the session's peer proved (cephx tickets name it; see
//!   [`Connection::peer_auth`]), or none where it proved one; for a session whose peer
//!   proved no name (one we dialled), another entity type than the one we know it by.
//!   A stateless server instead opens the connection without registering it under the
//!   address, as its sessions share nothing. Ceph decides by the address alone, so any
//!   authenticated peer could cut another off, or resume its lossless session (and
//!   receive its messages) with the cookie it saw on the wire. Auth none names are the
//!   peer's word, so they protect nothing; a refused honest peer (say, one that lost its
//!   tickets and falls back to auth none) reconnects with backoff until it proves its
//!   name again.
//! * [`Messenger::get_connection`] takes a socket address and dials it with nonce 0, which
//!   is what monitors announce. A peer announcing another nonce fails the address check
//!   (as in Ceph): over msgr v1 a lossy session is then reset (`ms_handle_reset`) and a
//!   lossless one keeps redialling with backoff; use [`Messenger::connect_to`] with the
//!   peer's full address, as Ceph daemons do from their maps.
//! * Messages on the loopback connection are delivered by the dispatch thread (fast
//!   dispatchers included), never on the sender's thread, which may hold its own locks.
//! * The loopback connection's `ms_handle_fast_connect` reaches every fast dispatcher
//!   once, and again each time our address changes after start (a
//!   [`Messenger::rebind`], a learned address, [`Messenger::set_addr_unknowns`]): those
//!   added before the messenger starts when it starts, a later one as it is added
//!   (before it sees a message). Ceph calls it whenever it initialises its local
//!   connection (construction, bind, an unbound start, a learned or set address), for
//!   the fast dispatchers of that moment only: one added after the last such call never
//!   hears it, and start is often that last call, before most dispatchers are added
//!   (the first one added starts a messenger not yet started). Ours tells a later one
//!   as it is added; a move of the address tells the chain again, as Ceph's (a fast
//!   dispatcher added meanwhile hears the new address too). A learned address is told
//!   on the worker of the connection that learned it. None but that one is told once a
//!   shutdown began, and a shutdown from a thread of no messenger returns only after
//!   those under way did (see [`Messenger::shutdown`]).
//! * **Our address** is the bound one (blank for a pure client: `0.0.0.0`, port 0) until
//!   a blank IP is learned, as Ceph's `learned_addr`: the first connection we dial whose
//!   acceptor says how it sees us (v1's banner reply, msgr2's HELLO) gives the IP, kept
//!   for good (port, nonce and address types stay ours; a bound address takes only an
//!   IP of its family, a never-bound client any; that first report decides even when
//!   its family does not fit, as Ceph's `need_addr`), or
//!   [`Messenger::set_addr_unknowns`] sets it. [`Messenger::my_addrs`] shows it and
//!   every later connect announces it (v1's address block, msgr2's CLIENT_IDENT), racing
//!   ones included. Unlike Ceph: a peer saying we are at `0.0.0.0` or `[::]` teaches
//!   nothing (Ceph would keep that blank IP for good); and an acceptor of ours bound to
//!   a wildcard keeps matching a connector's target, and announcing itself, by the
//!   socket's local address, so a host reached at several addresses stays reachable at
//!   each (Ceph's msgr2 acceptor refuses a target other than its learned address). A
//!   connection whose address the messenger did not fill (another family: a `[::]`
//!   listener seen over IPv4) announces what its own peer saw, as before.
//! * [`Messenger::rebind`] binds the new listener before it tears anything down, so a
//!   rebind that fails (every port avoided or taken) leaves the messenger listening where
//!   it was, its nonce and sessions untouched; Ceph's stops its listeners, marks every
//!   session down and moves its nonce on first, and is left listening nowhere (an OSD
//!   then shuts down). It avoids the old port too: Ceph adds it to a set it then does not
//!   pass to its bind, so it may take the old port again. Without a
//!   `bind_port_range` (ours is off by default; Ceph always has one), the kernel's
//!   ephemeral port is taken, asking again while it is one to avoid (at most 16 times).
//!   A messenger bound with [`Messenger::bind_public`] is not rebound (`Unsupported`):
//!   the public address is not ours to pick a port for (Ceph rebinds the announced
//!   address, which behind a NAT fails to bind).
//! * The send side is bounded and a peer that stops reading is faulted; receive budget
//!   is taken window by window; a message in progress must keep progressing (see
//!   "Bounds a peer cannot escape"). Ceph's out queue is unbounded and it reserves a
//!   message's whole length at its header.
//! * Received messages are charged what they cost ([`protocol::Message::queued_cost`]:
//!   payload plus a per-message overhead), to the dispatch throttle and to the policy's
//!   byte throttle; Ceph charges the payload only. So the overhead of a kept message
//!   goes back when it is dropped, not with `clear_payload`/`clear_data`.
//! * Counters: `msgr_running_fast_dispatch_time` is part of `msgr_running_recv_time`
//!   (fast dispatch runs inside the read path); `msgr_handle_ack_lat` is not measured.

//!
//! # Bounds a peer cannot escape
//!
//! Whatever a peer sends (or does not read), what its connection makes this process
//! hold is bounded, and the other connections keep flowing.
//!
//! **Receiving.** A message's budget (the dispatch throttle, `dispatch_throttle_bytes`,
//! and its peer type's policy throttlers) is taken in windows as its payload arrives:
//! the first window (4 KiB, or what already arrived with the header if more, plus
//! [`protocol::message::MESSAGE_OVERHEAD`] for the message itself) when its header is
//! read, each further one when the previous one is used up, doubling with what the
//! message already holds. Its assembly buffer grows with the grants, never to the
//! announced length. So a peer that announces 100 MiB and sends 100 bytes holds one
//! small window, not 100 MiB; a thousand such peers hold about 4.5 MiB of the 100 MiB
//! and everyone else goes on. A message must progress by at least `read_buffer` bytes
//! (or to its end) per `payload_timeout` (10 s), or the connection faults and releases
//! everything the message held: trickling one byte at a time does not keep a message
//! alive (the idle timer alone would let it). While waiting for a window the driver
//! stops reading that socket and the message's clock pauses (a window granted at once
//! does not restart it: the progress is owed per timeout, not per window); when
//! messages in progress hold all of the budget, the oldest of them is always granted
//! its next window (it then completes and is dispatched, and releases what it holds:
//! the dispatch throttle when its dispatcher returns, a policy's when it is dropped),
//! so honest large messages never deadlock; that overshoot is bounded by one message. That oldest
//! message is the one the others wait for, and messages waiting for their next window
//! keep what they hold meanwhile. So while a byte throttle queues requests, its oldest
//! message in progress must progress by a sixteenth of what all messages in progress
//! hold of it per `payload_timeout` ([`protocol::session::PROGRESS_SHARE`]; the driver
//! sets this floor before each read and timeout): keeping budget that others wait on
//! costs the peer bandwidth in proportion (640 KB/s to hold the whole default 100 MiB),
//! or its connection faults within a timeout and the next oldest takes its turn under
//! the same rule. A trickler holding the privilege at one `read_buffer` per timeout,
//! with another connection holding most of the budget behind it, used to keep everyone
//! waiting until the trickled message ended (hours for a large one). A policy's
//! message-count throttle (none by default; Ceph's `osd_client_message_cap`) is held
//! one count per message in progress and per message received and not dropped yet,
//! and new messages waiting for a count wait for counts, not for bytes. While messages
//! in progress (from their second window on) hold the whole cap, only their completing
//! frees a count: then every one of them must progress by a sixteenth of its own length
//! per `payload_timeout`, arriving whole within sixteen timeouts of its reading time (a
//! trickler holds few bytes but a whole count). While a message handed on holds a
//! count (kept by its dispatcher: an OSD's queued ops fill the cap under load), the
//! waiters wait for the application as much, and a message in progress owes only its
//! window, as any message does without contention: Ceph sets no floor at all, and an
//! honest large message on a slow link would otherwise be cut off (and, lossless, sent
//! again and cut off again) whenever the daemon is busy. What remains:
//! * a chain: k connections whose messages were in progress before the budget filled
//!   can each hold the privilege for up to one timeout without paying, so about k
//!   timeouts in all, each costing its peer a handshake and two windows of real bytes;
//! * the floor sums what every message in progress holds, including younger ones
//!   parked waiting for a window: under contention an honest oldest message must keep
//!   up with that (640 KB/s at most, at the defaults), and one on a slower link faults
//!   and, on a lossless session, is sent again, which can repeat while the contention
//!   lasts; likewise, while new messages wait for a count that messages in progress
//!   hold all of, any honest message slower than its length per sixteen timeouts
//!   (590 KB/s for 90 MiB at the defaults).
//!   Without contention no floor applies, so an honest large message on a slow link is
//!   not cut off;
//! * a count held cheaply: for a message under sixteen `read_buffer`s (1 MiB at the
//!   defaults) the window per timeout is the stricter rule, so a peer can hold a count
//!   for up to sixteen timeouts at one window per timeout; each count it frees goes to
//!   a waiting message first;
//! * a count held beside kept ones: while the dispatcher keeps any message of the
//!   policy, a peer's messages in progress owe only a window per timeout however many
//!   counts they hold (up to the cap less one), as in Ceph, where they owe nothing;
//! * the floor is sampled before each read and timer: a trickler may dodge it for one
//!   timeout if nobody waits at a read it triggers.
//!
//! Duplicates (`seq <= in_seq`) stream by without being stored (msgr v1, msgr2 crc
//! mode); in msgr2 secure mode a duplicate is read and charged as any message, then
//! dropped once its GCM tag is checked. Why windows
//! and not a reservation at the header (Ceph) or a fixed per-connection share: a
//! reservation lets one silent peer hold the whole budget, and a fixed share is either
//! too small for large messages or lets a few hundred peers hold it all; windows that
//! grow with real bytes cost an attacker one real byte per byte held beyond the first
//! window, while the deadline bounds how long it may hold them. What stays unbounded is
//! the number of connections (each holding its first window): that is the operating
//! system's file descriptor limit.
//!
//! What a message is charged is released in two parts, as in Ceph. Its dispatch
//! charge (`ms_dispatch_throttle_bytes`) when its dispatcher returns: it bounds the
//! messages waiting for `ms_dispatch`. Its policy charge (the peer type's throttlers,
//! [`Messenger::set_policy_throttlers`]: Ceph's `osd_client_message_cap` and
//! `osd_client_message_size_cap`) goes into the message itself and is released when the
//! message is dropped, as Ceph's `Message` puts its `msg_throttler` and
//! `byte_throttler` when it is destroyed: a dispatcher that keeps messages past its
//! return (an OSD queues its ops) holds their count and bytes, and once the policy is
//! full its peers' connections stop reading. It gives them back earlier, part by part,
//! with [`protocol::Message::release_message_throttle`] (the count) and
//! [`protocol::Message::clear_payload`] and [`protocol::Message::clear_data`] (the
//! bytes of the segments they empty), as the OSD does for an op that finished while
//! still referenced (`OpRequest::_unregistered`). A clone of a message carries no
//! charge. The charge follows the received `Message` object, so two uses need care:
//! * sending that object itself back (an echo) on a lossless session keeps it, and its
//!   charge, in the session's sent queue until the peer acknowledges it; when the peer
//!   is of the throttled type, the acknowledgement may come behind the peer's next
//!   message, which waits for that charge, and the session stalls until something
//!   else frees a count (Ceph's sent list holds the message's reference the same way).
//!   Build a new message for a reply, or take the charge out before sending;
//! * a typed decode (`protocol::messages::decode_any`, `TypedMessage::from_message`)
//!   reads a `&Message`, and what it returns carries no charge (`AnyMessage::Raw` holds
//!   a clone): a dispatcher that keeps only the decoded form and drops the raw message
//!   gives the back-pressure up. Keep the raw message too, or move its charge to what
//!   is kept with [`protocol::Message::take_throttle_charge`] (dropping the charge
//!   releases it).
//!
//! Small messages do not ask once per message. Before a read's bytes are parsed the
//! driver grants the machine receive credit for one message of at most that many bytes
//! (reads of 64 bytes to 32 KiB, between frames), so a message that arrived whole in
//! one read is taken without a request; from the second message of a read's burst it
//! grants credit for whole messages up to the next dispatch batch. Credit is taken from
//! every throttle at once and only if it is there (never waited for), at most an eighth
//! of each throttle's maximum, and each message it funds is charged exactly what it
//! would have asked for (one message, its queued cost in policy bytes and of the
//! dispatch throttle); `msgr_recv_budget_requests` counts the messages that asked. A
//! funded message takes its policy charge along, split off the credit, as any message
//! does; one that goes to the dispatch queue takes its dispatch charge along too, as its
//! own permit, released when its dispatcher returns; the dispatch charge of a
//! fast-dispatched one (whose dispatcher returned during the pump) is released with
//! what the burst did not use at the end of the pump, in one release per throttle
//! rather than one per message. So credit is held only while a burst is being parsed
//! and an idle connection holds none.
//!
//! **Sending.** What a connection holds for sending — messages in its mailbox, in the
//! protocol's queue, framed and unwritten (lossy), or written and not yet acknowledged
//! (lossless) — is counted as [`protocol::Message::send_cost`] (framed bytes plus the
//! per-message overhead), wherever it is and whether or not the socket is writable.
//! `send_message` fails with [`SendError::QueueFull`] when that would pass
//! [`MessengerConfig::max_queued_bytes`] for the connection or
//! [`MessengerConfig::max_total_queued_bytes`] for the messenger. A bound refuses only
//! while something is held against it: a single message larger than a bound is
//! admitted when the connection (for the total, the messenger) holds nothing, so that
//! it can be sent at all. When bytes wait and the socket takes none of them for
//! [`MessengerConfig::write_timeout`] (60 s), the connection faults (a lossless session
//! keeps its messages for the reconnect, still counted). A connection never stops
//! *reading* because its peer does not read: that back-pressure would let two lossless
//! peers streaming at each other both stop reading and wedge for good, while the write
//! deadline cannot deadlock. A server whose dispatcher answers every request sees
//! `QueueFull` for the replies of a peer that does not read them until the deadline
//! closes that connection. A reply sent from
//! `ms_fast_dispatch` on the connection being dispatched waits in a queue on the worker's
//! thread instead of the mailbox (no lock: the driver that takes it is running there),
//! counted the same: the driver holds a chunk of the messenger's total (64 KiB, a
//! sixteenth of the bound at most) charged ahead for such replies while it runs, so the
//! total never passes its bound either. A server's lossless session whose peer went
//! away waits in standby with what was queued for it, as Ceph's does; such sessions
//! hold at most [`MessengerConfig::max_standby_queued_bytes`] together (a quarter of
//! the total at most), the ones holding the most reset first, and at most
//! [`MessengerConfig::max_standby_sessions`] of them wait, those holding nothing reset
//! first, then the oldest (a reset ends the session as a fault does: `ms_handle_reset`).
//! One being resumed by its peer's reconnect is no longer waiting, and never reset so.
//! Without that, peers that flood a stateful server without reading and leave, under a
//! new name each time, would fill the total with sessions nobody resumes, and every
//! other connection's sends would be refused; and peers that only handshake and leave
//! would fill memory (a standby session keeps no socket, so no file limit stops them).
//!
//! **Connection events.** `ms_handle_accept`, `ms_handle_reset` and the other
//! connection events are not messages and no throttle is charged for them; each keeps
//! its connection's handle alive until delivered. While the dispatch thread is held up,
//! a peer that connects and leaves over and over would add two per connection, so the
//! listener stops accepting while [`MessengerConfig::max_queued_events`] of them wait,
//! and takes up again once they drain (counted as `msgr_accept_paused_for_events`).
//! The connections this messenger dials are not refused, and their events are not
//! bounded by how many it makes: a server we dial that completes each handshake and
//! closes at once is dialled again once `initial_backoff` has passed since the session
//! opened (Ceph reconnects a session that was open at once), so while the dispatch
//! thread is held up each such connection queues an event per `initial_backoff` (two
//! with a reset), about 16 bytes each, as Ceph's unbounded event queue does.
//!
//! **Memory of queued messages.** A received message's segments are slices of a
//! per-worker read buffer shared with other messages. When a message below half a read
//! buffer is queued for dispatch it is copied out, so a queued message never pins a
//! whole buffer for a few bytes; larger ones pin at most about twice their size. (A
//! fast-dispatched message is not copied: the dispatch throttle's charge for it ends
//! when `ms_fast_dispatch` returns.)
//! Decoders of typed messages never reserve more than their remaining input holds.
//!
//! # Fault injection (feature `fault-injection`)
//!
//! A test seam, never enabled by the library: without the feature none of its code or
//! state exists (the driver's injection state is an empty type, checked at compile
//! time). With it, [`MessengerConfig`] carries Ceph's options, each decision drawn from a
//! generator seeded with `inject_seed`, the nonce and the connection's id, and counted in the
//! worker's counters (`msgr_inject_*`):
//!
//! * `inject_socket_failures` (`ms_inject_socket_failures`): each socket read, write,
//!   dial and accept fails with probability 1/N. A read or write shuts the socket down
//!   both ways first (the operation then sees EOF or an error and the session faults the
//!   ordinary way); a dial fails before connecting; an accepted socket is shut down and
//!   dropped.
//! * `inject_internal_delays` (`ms_inject_internal_delays`): the accept decision, a new
//!   session's reply once the decision registered it (where Ceph delays after
//!   `accept_conn`), and the adoption of a replaced session's new socket wait this long.
//!   Ceph sleeps on the connection's thread; here the work is held on the driver's
//!   timer, so the worker goes on serving its other connections meanwhile.
//! * `inject_delay_type`, `inject_delay_max`, `inject_delay_probability`
//!   (`ms_inject_delay_*`, Ceph's `DelayedDelivery`): received messages from peers of the
//!   chosen types are delayed with the given probability, by up to the maximum. Order per
//!   connection is kept: a message queued behind a delayed one leaves with it (Ceph
//!   releases the head of its queue on each message's timer, so its delays are not
//!   bounded the same way). Held messages are delivered before the connection's next
//!   session event (connect, reset…), and dropped with it on `mark_down`.
//! * `inject_network_congestion` (`ms_inject_network_congestion`, Ceph PR 44289): a write
//!   is refused as if the socket were full N−1 times in N; since a socket that is not
//!   full raises no new readiness edge, the driver retries after the worker's other work.
//! * `Connection::inject_socket_failure`: cuts one connection's socket on request
//!   (each call one cut, see its docs).
//! * `Connection::inject_in_reset`, `inject_before_settle`, `inject_before_write`,
//!   `inject_before_read`, `inject_in_send_count`: run a test's hook at one point of the
//!   messenger's own work (while a thread other than the connection's worker ends its
//!   session and has not queued the reset yet; at the driver's settle; before its write;
//!   before its read; halfway through a change of what the driver counts of the
//!   connection's messages), to run a race inside that window.
mod admin;
pub mod config;
mod connection;
pub mod counters;
mod driver;
mod env;
#[cfg(feature = "fault-injection")]
mod inject;
mod machine;
mod mailbox;
mod messenger;
mod own_sends;
mod policies;
mod processor;
mod session_table;
mod state;

pub use admin::{
    parse_command, CommandReader, CommandTooLong, ADMIN_CLIENT_DEADLINE, ADMIN_MAX_CLIENTS,
};
pub use config::{AuthProviderHandle, ConfigError, MessengerConfig, MIN_DURATION};
pub use connection::{Connection, SendError};
pub use dispatch::{AuthVerdict, Authentication, Authorizer, Dispatched, Dispatcher, Throttle};
pub use messenger::{Messenger, Totals};
pub use protocol::{Policy, ProtocolVersion};
pub use state::ConnState;

// What a daemon names besides the messenger itself, so that `asyncmsgr` is its one
// dependency: messages and their payloads, entity names and addresses, typed messages,
// auth configuration, a shared worker pool; the crates underneath, whole, for the rest.
pub use bytes::Bytes;
pub use event_center::{WorkerPool, WorkerPoolConfig};
pub use protocol::auth::{AuthConfig, KeyRing};
pub use protocol::types::{EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
pub use protocol::{auth, messages, types, Message};
pub use {dispatch, event_center, protocol};
