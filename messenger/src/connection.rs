//! [`Connection`]: the cheap, cloneable handle any thread may hold.
//!
//! Only the driver on the connection's worker touches the socket and the protocol state.
//! Other threads push onto the handle's mailbox and wake the driver with
//! `CenterHandle::notify` — only when the mailbox goes from idle to non-empty, so a burst
//! of sends costs one wakeup (Ceph's "wake a worker only when its queue goes from empty to
//! non-empty").
//!
//! The handle has three locks, each held for a few instructions and never while another
//! of them is taken: the mailbox (every send and drain), what the driver publishes about
//! its peer and session (read by users, and by other connections' accept decisions with
//! the session table's lock held: table first, never the other way), and the user's
//! private data (with `fault-injection`, a fourth holds a test hook). Where the driver runs (`place`) is set once when it starts, and read
//! without a lock on every wake.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use event_center::{CenterHandle, HandlerId};
use parking_lot::Mutex;
use protocol::auth::{AuthPeer, ConMode};
use protocol::types::{EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::wire::KeepaliveStamp;
use protocol::{Message, ProtocolVersion};

use crate::machine::SessionSnapshot;
use crate::mailbox::{Command, Mailbox, SendBudget, NOT_IN_STANDBY};
use crate::own_sends;
use crate::state::ConnState;

/// Why `send_message` did not queue a message.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection was marked down or closed: the message is dropped.
    Closed,
    /// The message would take the connection's send queue over `max_queued_bytes`, or
    /// the messenger's send queues together over `max_total_queued_bytes` (never while
    /// the bound's queues hold nothing: see [`Connection::send_message`]).
    QueueFull,
    /// A payload segment (front, middle or data) is longer than `u32::MAX` bytes, more
    /// than either protocol's header can describe: the message could never be framed.
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection closed"),
            SendError::QueueFull => f.write_str("connection send queue full"),
            SendError::TooLarge => f.write_str("message segment longer than u32::MAX"),
        }
    }
}

impl std::error::Error for SendError {}

/// Whether a segment of `msg` is longer than a wire header can say (`u32` lengths in
/// msgr v1's header and msgr2's segment descriptors).
fn too_large_to_frame(msg: &Message) -> bool {
    [msg.front(), msg.middle(), msg.data()].iter().any(|s| u32::try_from(s.len()).is_err())
}

/// The messenger a handle belongs to, as far as the handle itself needs it: `mark_down`
/// must leave the session table and the dispatch queue at once, and the loopback
/// connection delivers without a driver. Held weakly: a handle outliving its messenger
/// only finds it gone.
pub(crate) trait Home: Send + Sync {
    /// Removes `conn` from the session table if it is the session registered there.
    fn forget(&self, conn: &Connection);
    /// Drops what waits in the dispatch queue for `conn`.
    fn discard_queued(&self, conn: &Connection);
    /// Delivers `msg` to our own dispatchers (the loopback connection).
    fn deliver_local(&self, conn: &Connection, msg: Message);
}

/// What the driver publishes about the peer and the session, read by users (peer
/// address, type, features, keepalives), by dumps, and by other connections' accept
/// decisions (through the session table).
#[derive(Clone, Debug, Default)]
pub(crate) struct Published {
    pub(crate) addr: Option<EntityAddr>,
    /// The addresses the peer's msgr2 ident named (its CLIENT_IDENT on the accept side,
    /// SERVER_IDENT on the connect side), set when the session opens; `None` for msgr v1
    /// and before the first open.
    pub(crate) ident_addrs: Option<EntityAddrVec>,
    /// The number of the peer's entity name from its msgr2 ident (its gid), set when the
    /// session opens; `None` for msgr v1.
    pub(crate) ident_id: Option<i64>,
    pub(crate) entity_type: Option<EntityType>,
    pub(crate) name: Option<EntityName>,
    pub(crate) features: Features,
    /// The protocol the session speaks, and msgr2's connection mode, once open.
    pub(crate) protocol: Option<ProtocolVersion>,
    pub(crate) con_mode: Option<ConMode>,
    pub(crate) socket_addr: Option<SocketAddr>,
    /// What an accept decision against this session needs.
    pub(crate) session: SessionSnapshot,
    /// Another connection's connect was decided "replace" against this session and its
    /// socket is on the way here (set by the session table inside that decision;
    /// cleared when this driver adopts the socket, or closes).
    pub(crate) replacing: bool,
    pub(crate) last_keepalive: Option<Instant>,
    pub(crate) last_keepalive_ack: Option<KeepaliveStamp>,
    /// Who the peer authenticated as: set when a connection that proved it is
    /// registered for the session (the accept side), and kept when we redial the
    /// session (a session we dialled learns no name).
    pub(crate) peer_auth: Option<AuthPeer>,
}

pub(crate) struct ConnShared {
    id: u64,
    home: Weak<dyn Home>,
    loopback: bool,
    pub(crate) mailbox: Mutex<Mailbox>,
    /// The driver's worker and handler id, set once when the driver starts.
    place: OnceLock<(CenterHandle, HandlerId)>,
    state: AtomicU8,
    pub(crate) published: Mutex<Published>,
    priv_data: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    pub(crate) send_budget: Arc<SendBudget>,
    /// `mark_down` was called: no message of this connection is dispatched from then on.
    pub(crate) marked_down: AtomicBool,
    /// The session ended and its reset is reported (or was): no message of it is
    /// dispatched from then on, and nobody reports the reset again.
    pub(crate) stopped: AtomicBool,
    /// `mark_disposable` was called: the session is lossy from that moment, for its
    /// driver's next decision (read before every input and event it handles) and for
    /// another connection's accept decision against it (read by the session table).
    pub(crate) disposable: AtomicBool,
    /// `Published::replacing`, mirrored for the driver's pump to read without the lock
    /// (written only with `published` locked, see [`Connection::set_replacing`]).
    replacing: AtomicBool,
    /// What the driver holds of this connection's messages (in the protocol's queues
    /// and its write list), as it last published it; with `mailbox_cost`,
    /// what the per-connection send bound counts.
    pub(crate) driver_cost: AtomicU64,
    /// What the mailbox's messages cost: changed only with the mailbox locked, read
    /// without the lock by the driver's own sends (see `own_sends`).
    pub(crate) mailbox_cost: AtomicU64,
    /// An accepted session waiting in standby for its peer to come back, one that
    /// `Env::bound_standby` may reset: what the send budget counts it holding (its
    /// `standby_held`), or `NOT_IN_STANDBY`. Set by the driver as it goes to standby,
    /// recounted at the end of each of its pumps, cleared by any other state.
    pub(crate) standby_counted: AtomicU64,
    /// [`Connection::inject_in_reset`]'s hook.
    #[cfg(feature = "fault-injection")]
    in_reset: Mutex<Option<ResetHook>>,
}

/// What [`Connection::inject_in_reset`] runs.
#[cfg(feature = "fault-injection")]
type ResetHook = Arc<dyn Fn() + Send + Sync>;

/// A handle to one connection (Ceph's `ConnectionRef`). Clone it freely and use it from
/// any thread; all of its methods only queue work for the connection's worker.
#[derive(Clone)]
pub struct Connection(pub(crate) Arc<ConnShared>);

impl Connection {
    pub(crate) fn new(
        id: u64,
        home: Weak<dyn Home>,
        loopback: bool,
        send_budget: Arc<SendBudget>,
    ) -> Connection {
        Connection(Arc::new(ConnShared {
            id,
            home,
            loopback,
            mailbox: Mutex::new(Mailbox::default()),
            place: OnceLock::new(),
            state: AtomicU8::new(ConnState::Connecting as u8),
            published: Mutex::new(Published::default()),
            priv_data: Mutex::new(None),
            send_budget,
            marked_down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            disposable: AtomicBool::new(false),
            replacing: AtomicBool::new(false),
            driver_cost: AtomicU64::new(0),
            mailbox_cost: AtomicU64::new(0),
            standby_counted: AtomicU64::new(NOT_IN_STANDBY),
            #[cfg(feature = "fault-injection")]
            in_reset: Mutex::new(None),
        }))
    }

    /// A process-unique id of this connection.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Queues `msg` for sending; never blocks on the socket. On a lossless connection the
    /// message survives socket faults and is delivered exactly once, in order among the
    /// messages of its priority that its peer's dispatchers take the same way (fast
    /// dispatch goes ahead of the queue, and the queue serves higher priorities first,
    /// as Ceph's does), unless a reset of the session is reported. It goes
    /// out from our name, whatever source it named (as Ceph's, which stamps `src` on
    /// every message it sends).
    ///
    /// Fails with [`SendError::QueueFull`] when what this connection holds for sending
    /// (messages not yet written, or on a lossless session not yet acknowledged; each
    /// counted as its framed length plus a per-message overhead) would pass
    /// `max_queued_bytes`, or the messenger's total would pass `max_total_queued_bytes`
    /// (see the crate docs, "Bounds a peer cannot escape"). A bound refuses only while
    /// something is held against it: a single message larger than a bound is admitted
    /// when the connection (for `max_queued_bytes`) or the messenger (for the total)
    /// holds nothing, so that it can be sent at all.
    ///
    /// Fails with [`SendError::TooLarge`] when a payload segment is longer than
    /// `u32::MAX` bytes (but on the loopback connection, which frames nothing): no
    /// header can carry its length, and queued it held the connection's whole send
    /// bound while every attempt to frame it faulted the session.
    pub fn send_message(&self, msg: Message) -> Result<(), SendError> {
        if self.0.loopback {
            // Closed when its messenger shut down: the dispatch queue takes nothing more.
            if self.state() == ConnState::Closed {
                return Err(SendError::Closed);
            }
            let home = self.0.home.upgrade().ok_or(SendError::Closed)?;
            home.deliver_local(self, msg);
            return Ok(());
        }
        // Worked out once for both paths below. No segment is too long for a header
        // while the whole cost fits in `u32`: one comparison for nearly every message.
        let cost = msg.send_cost();
        if cost > u64::from(u32::MAX) && too_large_to_frame(&msg) {
            return Err(SendError::TooLarge);
        }
        // A reply from fast dispatch, on the thread running this connection's driver.
        let msg = match own_sends::try_send(self, msg, cost) {
            Ok(sent) => return sent,
            Err(msg) => msg,
        };
        // Read before the lock: every sender of this connection contends for it. On the
        // driver's own worker (a reply from fast dispatch) the loop's clock serves: the
        // driver takes the message in the same pass, and the clock read per message
        // showed in profiles.
        let queued_at = match self.0.place.get().and_then(|(center, _)| center.loop_now()) {
            Some(now) => now,
            None => Instant::now(),
        };
        let wake = {
            let mut mb = self.0.mailbox.lock();
            if mb.closed {
                return Err(SendError::Closed);
            }
            let queued = self.0.mailbox_cost.load(Ordering::Relaxed);
            // Acquire: the driver lowers the total before this count (`update_gauges`).
            let held = queued + self.0.driver_cost.load(Ordering::Acquire);
            if !self.0.send_budget.try_charge(held, cost) {
                return Err(SendError::QueueFull);
            }
            self.0.mailbox_cost.store(queued + cost, Ordering::Relaxed);
            mb.messages.push_back((msg, queued_at));
            !std::mem::replace(&mut mb.notified, true)
        };
        if wake {
            self.wake();
        }
        Ok(())
    }

    /// Queues a command for the driver and always wakes it: unlike messages, which may
    /// wait in the mailbox for the socket to make progress, a command (adopt a socket,
    /// mark down) must run even when the connection is idle or backing off. The center
    /// coalesces a notify already pending.
    /// Returns false (dropping `cmd`) if the connection is already closed, or is the
    /// loopback connection, which has no driver to read its commands (they would pile up
    /// for the messenger's life).
    pub(crate) fn post(&self, cmd: Command) -> bool {
        if self.0.loopback {
            return false;
        }
        {
            let mut mb = self.0.mailbox.lock();
            if mb.closed {
                return false;
            }
            // A keepalive right behind another does nothing more (the driver stamps each
            // as it takes it, and a machine sends one for all it was given): a peer
            // losing connection races to a session whose worker is busy nudged it with
            // one per connect, and they piled up without bound.
            let repeated = matches!(cmd, Command::Keepalive)
                && matches!(mb.commands.last(), Some(Command::Keepalive));
            if !repeated {
                mb.commands.push(cmd);
            }
            mb.notified = true;
        }
        self.wake();
        true
    }

    pub(crate) fn wake(&self) {
        // Before the driver started, its first pump drains whatever is queued.
        if let Some((center, id)) = self.0.place.get() {
            // The driver drains the mailbox and clears `notified` when it runs; if the
            // center is gone the messenger is shutting down and the message is moot.
            let _ = center.notify(*id);
        }
    }

    /// Records where the driver runs; once, when it starts.
    pub(crate) fn set_place(&self, center: CenterHandle, id: HandlerId) {
        if self.0.place.set((center, id)).is_err() {
            log::error!(target: "msgr::conn", "conn {}: driver placed twice", self.0.id);
        }
    }

    /// Sends a keepalive (KEEPALIVE2 when negotiated) as soon as possible. Calls before
    /// the driver gets to the first are one keepalive, stamped when it does.
    pub fn send_keepalive(&self) {
        let _ = self.post(Command::Keepalive);
    }

    /// Closes the connection at once, discarding queued messages; no reset callback
    /// is delivered for it (Ceph's `mark_down`).
    ///
    /// Synchronous as Ceph's: once it returns, no dispatch of this connection's
    /// messages starts — those waiting in the dispatch queue are discarded, the worker
    /// delivers none it reads afterwards, and the dispatch thread drops one it had just
    /// taken off the queue. (A fast dispatch the worker had already begun may still be
    /// running, as in Ceph, which also calls fast dispatch without the connection lock;
    /// so may an `ms_dispatch` the dispatch thread was starting just as the flag was set,
    /// as in Ceph, whose `discard_queue` does not wait for its dispatch thread.)
    /// No event of the connection (connect, accept, reset, remote reset, refused) is
    /// queued after it either, even one its worker raises in the same pump; one queued
    /// before it is still delivered, as Ceph's `discard_queue` leaves events alone. And
    /// nothing more of it is written: a driver about to write checks first, so only a
    /// `writev` already under way when it returns still goes out.
    pub fn mark_down(&self) {
        if self.0.loopback {
            return;
        }
        // First, so that whatever checks it after this point drops the message; the
        // discard below then empties the queue under the queue's lock.
        self.0.marked_down.store(true, Ordering::SeqCst);
        if let Some(home) = self.0.home.upgrade() {
            home.forget(self);
            home.discard_queued(self);
        }
        // Closed from this moment: later sends fail at once, queued ones are dropped, and
        // `is_connected` is false (Ceph's mark_down is synchronous).
        self.close_and_stop_driver();
    }

    /// Ends the session's dispatch (Ceph's `_stop`): from here on none of its messages
    /// is delivered or queued, and the dispatch thread starts none it holds. Returns
    /// whether this call ended it, i.e. whether the caller is the one to discard what is
    /// queued and report the reset: a session's own fault and a newcomer resetting it
    /// from the accept path can both find it ending, and only one may report it.
    pub(crate) fn stop_messages(&self) -> bool {
        !self.0.stopped.swap(true, Ordering::SeqCst)
    }

    /// Closes the handle now (sends fail from here on, queued ones are dropped) and tells
    /// its driver to finish. Without the user's mark, so a reset is still reported.
    pub(crate) fn close_and_stop_driver(&self) {
        let _dropped = {
            let mut mb = self.0.mailbox.lock();
            if mb.closed {
                return;
            }
            mb.closed = true;
            mb.commands.push(Command::MarkDown);
            mb.notified = true;
            mb.take_messages(&self.0.mailbox_cost, &self.0.send_budget)
        };
        self.set_state(ConnState::Closed);
        self.wake();
    }

    /// Test seam (feature `fault-injection`): cuts this connection's socket as a network
    /// failure would (what the kernel received and the driver had not read yet is lost
    /// with it). A lossless session must survive it without loss or duplicates.
    ///
    /// Every call is one cut: a call made while no session is open, or while the last cut
    /// is still being recovered from, waits until the session is open again on a new
    /// socket. So N calls on a lossless session make N reconnects (a session parked in
    /// standby opens again when something is sent); on a lossy one the first cut ends
    /// the session and the rest are dropped with it.
    ///
    /// The cut is a command, which the driver takes between read phases, while a message
    /// sent after this call may be taken in the middle of one and leave first. To have
    /// what is sent next leave after the cut, wait until a closure queued with
    /// [`Connection::inject_before_settle`] right after this call has run.
    #[cfg(feature = "fault-injection")]
    pub fn inject_socket_failure(&self) {
        let _ = self.post(Command::InjectFault);
    }

    /// Test seam (feature `fault-injection`): runs `f` once on the connection's worker, in
    /// the driver's next pump, after the pump's last look at the mailbox and before it
    /// decides whether to run again. What `f` sends there (a reply another thread sends
    /// just then, with no wake-up: the driver is running) must still leave without any
    /// further input. Dropped unrun if the connection closes first.
    #[cfg(feature = "fault-injection")]
    pub fn inject_before_settle(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.post(Command::InjectBeforeSettle(Box::new(f)));
    }

    /// Test seam (feature `fault-injection`): runs `f` once on the connection's worker,
    /// right before the driver's next `writev` (after the pump last looked at the
    /// mailbox): what another thread does while a driver is about to write, e.g. a
    /// `mark_down`. Dropped unrun if the connection closes first.
    #[cfg(feature = "fault-injection")]
    pub fn inject_before_write(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.post(Command::InjectBeforeWrite(Box::new(f)));
    }

    /// Test seam (feature `fault-injection`): runs `f` once on the connection's worker,
    /// in the driver's next read phase right before it reads from its socket (a pump that
    /// has bytes to read: after it loaded whether a replace freezes it, before the
    /// machine sees them). What arrives while `f` runs is read right after it. Dropped
    /// unrun if the connection closes first.
    #[cfg(feature = "fault-injection")]
    pub fn inject_before_read(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.post(Command::InjectBeforeRead(Box::new(f)));
    }

    /// Test seam (feature `fault-injection`): runs `f` once on the connection's worker,
    /// halfway through the driver's next change of what it counts of this connection's
    /// messages: after one of the two counts that change has moved (the messenger's
    /// total, and the connection's own, which `send_message` checks the per-connection
    /// bound against) and before the other, as if the worker were preempted there.
    /// Dropped unrun if the connection closes first.
    #[cfg(feature = "fault-injection")]
    pub fn inject_in_send_count(&self, f: impl FnOnce() + Send + 'static) {
        let _ = self.post(Command::InjectInSendCount(Box::new(f)));
    }

    /// Test seam (feature `fault-injection`): runs `f` each time a thread other than the
    /// connection's worker ends its session to report it with `ms_handle_reset` (a
    /// messenger's `mark_down` or `mark_down_all`, its shutdown, a newcomer replacing a
    /// lossy session, the standby bound), on that thread, between the moment the
    /// session's messages stop and the moment its reset is queued, whether or not that
    /// call is the one that reports it (another may have ended it first). What races
    /// such a reset, e.g. a shutdown, can be made to run inside that window.
    #[cfg(feature = "fault-injection")]
    pub fn inject_in_reset(&self, f: impl Fn() + Send + Sync + 'static) {
        // The hook replaced is dropped after the lock: it is the caller's closure, whose
        // captures' drop may call back into this connection (set another hook).
        let old = self.0.in_reset.lock().replace(Arc::new(f));
        drop(old);
    }

    /// Runs [`Connection::inject_in_reset`]'s hook, if any (outside the lock: it may
    /// block).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn run_in_reset(&self) {
        let hook = self.0.in_reset.lock().clone();
        if let Some(f) = hook {
            f();
        }
    }

    /// Marks the connection disposable (Ceph's `mark_disposable`): its session becomes
    /// lossy, so the next fault ends it with `ms_handle_reset` instead of a reconnect,
    /// and what its driver frames once it has taken the mark is not kept for resending.
    /// What it had sent unacknowledged is kept until acknowledged: an msgr2 peer that
    /// reconnects before our side faults resumes the session (as Ceph's
    /// `handle_reconnect` does) and gets it again.
    ///
    /// At once, as Ceph's sets `policy.lossy` under the connection's lock: a fault its
    /// driver handles after this returns resets the session, and so does one it had
    /// not acted on yet (say, bytes behind the message whose fast dispatch calls this,
    /// parsed with it). A session already waiting in standby or redialling stays so
    /// until its next fault.
    pub fn mark_disposable(&self) {
        if self.0.disposable.swap(true, Ordering::SeqCst) {
            // Marked before: the driver was told then.
            return;
        }
        // Wakes the driver: it drops what it keeps for resending and shows the session
        // lossy to accept decisions without waiting for other work.
        let _ = self.post(Command::MarkDisposable);
    }

    /// Marks (or unmarks) this session as being replaced by another connection's
    /// socket: `p` is its published state, locked by the caller, so the mark and what
    /// an accept decision read of the session change together.
    pub(crate) fn set_replacing(&self, p: &mut Published, on: bool) {
        p.replacing = on;
        self.0.replacing.store(on, Ordering::Release);
    }

    /// Whether a replace of this session was decided and its socket has not been
    /// adopted yet (the driver's pump does nothing on its own socket meanwhile).
    #[inline]
    pub(crate) fn replace_pending(&self) -> bool {
        self.0.replacing.load(Ordering::Acquire)
    }

    /// Whether [`Connection::mark_disposable`] was called.
    #[inline]
    pub(crate) fn is_disposable(&self) -> bool {
        self.0.disposable.load(Ordering::Relaxed)
    }

    /// Whether the session is open (handshake done, not faulted or closed).
    pub fn is_connected(&self) -> bool {
        self.state() == ConnState::Open
    }

    /// What this connection holds for its peer, as its per-connection send bound counts
    /// it (framed bytes plus a per-message overhead): messages waiting in the mailbox,
    /// queued in the session, being written, and sent but not yet acknowledged (on a
    /// lossless session, or sent before the session was marked disposable). Zero once the peer has acknowledged everything (Ceph's out
    /// queue plus sent list, as `messenger dump` would show them).
    pub fn queued_send_bytes(&self) -> u64 {
        let mailbox = self.0.mailbox_cost.load(Ordering::Relaxed);
        mailbox + self.0.driver_cost.load(Ordering::Relaxed)
    }

    /// The connection's state as last published by its driver.
    pub fn state(&self) -> ConnState {
        ConnState::from_u8(self.0.state.load(Ordering::Acquire))
    }

    /// Whether this is the messenger's loopback connection.
    pub fn is_loopback(&self) -> bool {
        self.0.loopback
    }

    /// The peer's announced address, once known.
    pub fn peer_addr(&self) -> Option<EntityAddr> {
        self.0.published.lock().addr
    }

    /// The peer's address vector (Ceph's `get_peer_addrs`): over msgr2, the addresses
    /// its ident named once the session opened (a client's CLIENT_IDENT on the accept
    /// side, the server's SERVER_IDENT on the connect side), as Ceph's ProtocolV2 sets
    /// them; over msgr v1, or before the session opened, the one address of
    /// [`Connection::peer_addr`] (Ceph's v1 keeps a vector of that one legacy address);
    /// on the loopback connection, [`Messenger::my_addrs`](crate::Messenger::my_addrs)
    /// (as Ceph's local connection). Empty while no address is known.
    #[doc(alias = "get_peer_addrs")]
    pub fn peer_addrs(&self) -> EntityAddrVec {
        let p = self.0.published.lock();
        match (&p.ident_addrs, p.addr) {
            (Some(addrs), _) if !addrs.addrs.is_empty() => addrs.clone(),
            (_, Some(addr)) => EntityAddrVec::single(addr),
            _ => EntityAddrVec::default(),
        }
    }

    /// The number of the peer's entity name as its msgr2 ident gave it (Ceph's
    /// `get_peer_id`: the 3 of `osd.3`, a client's global id), once the session opened.
    /// `None` over msgr v1, whose handshake names no entity, and on the loopback
    /// connection (Ceph's `-1` for both). [`Connection::peer_name`] is the name the last
    /// received message came from.
    #[doc(alias = "get_peer_id")]
    pub fn peer_id(&self) -> Option<i64> {
        self.0.published.lock().ident_id
    }

    /// The global id the peer authenticated with (Ceph's `get_peer_global_id`): the
    /// global id of [`Connection::peer_auth`], so known on the accept side only (Ceph's
    /// is 0 where ours is `None`).
    #[doc(alias = "get_peer_global_id")]
    pub fn peer_global_id(&self) -> Option<u64> {
        self.0.published.lock().peer_auth.as_ref().map(|a| a.global_id)
    }

    /// Whether any bit of `f` is among the negotiated features (Ceph's `has_feature`,
    /// `features & f`; meant for one bit).
    pub fn has_feature(&self, f: Features) -> bool {
        self.features().0 & f.0 != 0
    }

    /// Whether every bit of `f` is among the negotiated features (Ceph's
    /// `has_features`, `(features & f) == f`).
    pub fn has_features(&self, f: Features) -> bool {
        self.features().contains(f)
    }

    /// The peer's socket address (the TCP endpoint), once connected.
    pub fn peer_socket_addr(&self) -> Option<SocketAddr> {
        self.0.published.lock().socket_addr
    }

    /// The peer's entity type (mon, osd, client…), once known.
    pub fn peer_type(&self) -> Option<EntityType> {
        self.0.published.lock().entity_type
    }

    /// The peer's entity name, from the last message received on this connection (the
    /// loopback connection: our own name, kept current).
    pub fn peer_name(&self) -> Option<EntityName> {
        self.0.published.lock().name
    }

    /// The negotiated features (peer's ∩ ours), once open.
    pub fn features(&self) -> Features {
        self.0.published.lock().features
    }

    /// The protocol the session speaks (msgr v1 or msgr2), once open.
    pub fn protocol(&self) -> Option<ProtocolVersion> {
        self.0.published.lock().protocol
    }

    /// Who the peer authenticated as (Ceph's `peer_name`, `peer_global_id` and
    /// `peer_caps_info`), learnt on the accept side: a cephx ticket's entity, global id
    /// and caps for this service, or auth none's claimed name with every cap. What a
    /// daemon authorizes requests by; [`Connection::peer_type`] and the message source
    /// are what the peer claims. Set once the accepting connection is registered for
    /// the session (before it opens), and kept when we redial the session. `None` for a
    /// session only ever dialled (the connect side learns no name); over msgr v1 also when
    /// the peer sent no authorizer, when a dispatcher judged an authorizer of a method
    /// other than auth none, and on a monitor for a non-monitor peer (which
    /// authenticates afterwards with MAuth).
    pub fn peer_auth(&self) -> Option<AuthPeer> {
        self.0.published.lock().peer_auth.clone()
    }

    /// msgr2's connection mode (crc or secure), once open; `None` for msgr v1.
    pub fn con_mode(&self) -> Option<ConMode> {
        self.0.published.lock().con_mode
    }

    /// Attaches private data for the dispatcher (Ceph's `set_priv`; an MDS keeps its
    /// session here).
    pub fn set_priv(&self, data: Option<Arc<dyn Any + Send + Sync>>) {
        // The old data is dropped after the lock: its drop is the user's code, which may
        // call back into this connection.
        let old = std::mem::replace(&mut *self.0.priv_data.lock(), data);
        drop(old);
    }

    /// The private data attached with [`Connection::set_priv`].
    pub fn priv_data(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.priv_data.lock().clone()
    }

    /// When the last keepalive from the peer arrived.
    pub fn last_keepalive(&self) -> Option<Instant> {
        self.0.published.lock().last_keepalive
    }

    /// The stamp echoed by the peer's last KEEPALIVE2_ACK.
    pub fn last_keepalive_ack(&self) -> Option<KeepaliveStamp> {
        self.0.published.lock().last_keepalive_ack
    }

    /// Publishes the connection's state. `Closed` is final: a driver finishing a pump
    /// after `mark_down` must not make the handle look open again.
    pub(crate) fn set_state(&self, state: ConnState) {
        let closed = ConnState::Closed as u8;
        let _ = self.0.state.fetch_update(Ordering::Release, Ordering::Acquire, |now| {
            (now != closed).then_some(state as u8)
        });
        if state != ConnState::Standby {
            self.0.send_budget.leave_standby(&self.0.standby_counted);
        }
    }

    /// The driver put this accepted session in standby (see `standby_counted`).
    pub(crate) fn set_server_standby(&self) {
        self.0.send_budget.enter_standby(&self.0.standby_counted, self.queued_send_bytes());
    }

    /// Counts what this session holds again if it waits in standby (its driver, at the
    /// end of each pump: sends to it, and what the driver dropped, move it).
    #[inline]
    pub(crate) fn recount_server_standby(&self) {
        if self.marked_server_standby() {
            self.0.send_budget.recount_standby(&self.0.standby_counted, self.queued_send_bytes());
        }
    }

    /// Whether the driver marked this accepted session waiting in standby (see
    /// `standby_counted`).
    #[inline]
    pub(crate) fn marked_server_standby(&self) -> bool {
        self.0.standby_counted.load(Ordering::Relaxed) != NOT_IN_STANDBY
    }

    /// An accepted session waiting in standby for its peer (see `standby_counted`), and
    /// not being resumed: one a peer's reconnect is being handed to is no longer waiting.
    pub(crate) fn is_server_standby(&self) -> bool {
        // The mark first: a resumed session leaves Standby before its driver clears it, so
        // one read after the other cannot miss both.
        self.marked_server_standby()
            && !self.0.published.lock().replacing
            && self.state() == ConnState::Standby
    }

    /// Closes a handle whose driver never ran (or has ended): sends fail from now on
    /// and whatever waited is dropped.
    pub(crate) fn close(&self) {
        self.set_state(ConnState::Closed);
        let closed = self.0.mailbox.lock().close(&self.0.mailbox_cost, &self.0.send_budget);
        drop(closed);
    }

    /// The connection as `messenger dump` shows it.
    pub(crate) fn dump(&self) -> serde_json::Value {
        let p = self.0.published.lock().clone();
        let commands = self.0.mailbox.lock().commands.len();
        serde_json::json!({
            "id": self.id(),
            "peer_addr": p.addr.map(|a| a.to_string()),
            "peer_type": p.entity_type.map(|t| t.name().to_string()),
            "socket": p.socket_addr.map(|a| a.to_string()),
            "state": format!("{:?}", self.state()),
            "features": format!("{:#x}", p.features.0),
            "protocol": p.protocol.map(|v| match v {
                ProtocolVersion::V1 => "v1",
                ProtocolVersion::V2 => "v2",
            }),
            "mode": p.con_mode.map(ConMode::name),
            // What the send bound counts (`queued_send_bytes`), by where it waits: sent
            // and not yet taken by the driver, and the driver's (queued in the session,
            // being written, unacknowledged).
            "send_queued": {
                "mailbox": self.0.mailbox_cost.load(Ordering::Relaxed),
                "session": self.0.driver_cost.load(Ordering::Relaxed),
            },
            // Commands other threads posted that its driver has not taken yet.
            "mailbox_commands": commands,
        })
    }
}

impl dispatch::ConnectionRef for Connection {
    fn conn_id(&self) -> u64 {
        self.0.id
    }

    fn is_marked_down(&self) -> bool {
        self.0.marked_down.load(Ordering::SeqCst)
    }

    fn takes_no_messages(&self) -> bool {
        self.is_marked_down() || self.0.stopped.load(Ordering::SeqCst)
    }
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Connection {}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = self.0.published.lock().socket_addr;
        write!(f, "conn({} {:?} {:?})", self.0.id, socket, self.state())
    }
}

/// Handles with no messenger behind them, for unit tests of what reads and writes a
/// handle's state.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    struct NoHome;

    impl Home for NoHome {
        fn forget(&self, _: &Connection) {}
        fn discard_queued(&self, _: &Connection) {}
        fn deliver_local(&self, _: &Connection, _: Message) {}
    }

    /// A handle that has not started (no driver), with no messenger behind it.
    pub(crate) fn detached(id: u64, loopback: bool) -> Connection {
        let budget = SendBudget::new(u64::MAX, u64::MAX, u64::MAX, usize::MAX);
        Connection::new(id, Weak::<NoHome>::new(), loopback, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::detached;

    fn connection(loopback: bool) -> super::Connection {
        detached(1, loopback)
    }

    fn commands(conn: &super::Connection) -> usize {
        conn.0.mailbox.lock().commands.len()
    }

    // No driver reads the loopback connection's commands: a fast dispatcher marking every
    // connection it hears from disposable, or sending keepalives, grew them by one a
    // call for the messenger's life. Before, 10,000 calls left 20,000 commands.
    #[test]
    fn the_loopback_connection_keeps_no_commands() {
        let conn = connection(true);
        for _ in 0..10_000 {
            conn.mark_disposable();
            conn.send_keepalive();
        }
        assert_eq!(commands(&conn), 0);
        assert!(conn.is_disposable());
    }

    // Keepalives posted while the driver has not run are one command: consecutive ones
    // do what one does. One behind another command is kept, in its place.
    #[test]
    fn keepalives_in_a_row_queue_one_command() {
        let conn = connection(false);
        for _ in 0..1_000 {
            conn.send_keepalive();
        }
        assert_eq!(commands(&conn), 1);
        conn.mark_disposable();
        conn.send_keepalive();
        conn.send_keepalive();
        assert_eq!(commands(&conn), 3);
    }

    // A connection marked again tells its driver once: the mark is a flag the driver
    // reads at every step.
    #[test]
    fn marking_disposable_again_queues_nothing_more() {
        let conn = connection(false);
        for _ in 0..100 {
            conn.mark_disposable();
        }
        assert_eq!(commands(&conn), 1);
    }
}
