//! [`Dispatcher`]: the hooks a daemon implements; [`Dispatchers`]: the ordered chain.
//!
//! | Ceph (`msg/Dispatcher.h`, `Messenger::ms_deliver_*`) | here |
//! |---|---|
//! | `ms_dispatch2` returning `bool` | [`Dispatcher::ms_dispatch`] returning [`Dispatched`] |
//! | `ms_deliver_dispatch` (head → tail until taken) | [`Dispatchers::dispatch`] |
//! | `ms_fast_preprocess` / `ms_can_fast_dispatch` / `ms_fast_dispatch` | same names |
//! | `ms_deliver_handle_connect` etc. | [`Dispatchers::handle_connect`] etc. |
//! | `ms_get_authorizer` / `ms_verify_authorizer` | same names, seldom called (see each) |
//! | `ms_handle_authentication` returning `int` | same name, returning [`Authentication`] |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::Message;

/// What a connection handle must offer the dispatch layer.
///
/// The messenger's `Connection` implements it; tests use a plain id.
pub trait ConnectionRef: Clone + Send + Sync + 'static {
    /// A process-unique id; the queue keeps per-connection FIFO order by it.
    fn conn_id(&self) -> u64;

    /// Whether the connection was marked down (Ceph's `mark_down`): from then on the
    /// queue accepts none of its messages or events and starts the dispatch of none of
    /// the messages it holds. The flag must be set before
    /// [`crate::DispatchQueue::discard`] is called.
    fn is_marked_down(&self) -> bool {
        false
    }

    /// Whether the connection takes no more messages: it was marked down, or its session
    /// ended and was reported reset (Ceph's `_stop`, which discards the connection's
    /// queued messages before the reset is queued). From then on the queue accepts none
    /// of its messages and starts the dispatch of none it holds; unlike a mark_down, its
    /// reset is still taken, and only that: the reset is the session's last callback.
    /// The flag must be set before [`crate::DispatchQueue::discard`] is called and the
    /// reset queued.
    fn takes_no_messages(&self) -> bool {
        self.is_marked_down()
    }
}

/// Whether a dispatcher took a message.
// Declining hands the message back by value: boxing it would cost an allocation per
// declined message for the sake of a smaller `Taken`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Dispatched {
    /// The dispatcher consumed it; later dispatchers do not see it.
    Taken,
    /// Not for this dispatcher: hand it to the next one.
    NotTaken(Message),
}

/// Credentials a dispatcher supplies for an outgoing connection (`AuthAuthorizer`), from
/// [`Dispatcher::ms_get_authorizer`], which the messenger never calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    /// The auth protocol (`CEPH_AUTH_*`).
    pub protocol: u32,
    /// The encoded authorizer.
    pub bytes: Vec<u8>,
}

/// A dispatcher's judgement of an incoming authorizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Accept the peer and send `reply` (may be empty) back in the connect reply.
    Accept {
        /// Authorizer reply bytes.
        reply: Vec<u8>,
    },
    /// Refuse the peer (the wire answers `CEPH_MSGR_TAG_BADAUTHORIZER`).
    Reject,
}

/// What a dispatcher makes of a peer that authenticated
/// ([`Dispatcher::ms_handle_authentication`]): Ceph's `int` (1, 0, negative) as a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Handled: the peer is let in, and later dispatchers are not asked (Ceph's 1).
    Accept,
    /// Not this dispatcher's business: ask the next one (Ceph's 0).
    Pass,
    /// Refused (caps that do not parse, an entity not wanted): the connection is closed
    /// before it opens, and later dispatchers are not asked (Ceph's negative return).
    Refuse,
}

/// The hooks through which received messages and connection events reach a daemon.
///
/// Every method but [`ms_dispatch`](Self::ms_dispatch) has Ceph's default, so a
/// dispatcher implements only what it needs. Which thread calls what:
/// - `ms_dispatch`, `ms_handle_connect`, `ms_handle_accept`, `ms_handle_reset`,
///   `ms_handle_remote_reset`, `ms_handle_refused`: the queue's `ms_dispatch` thread.
/// - `ms_fast_*` and `ms_handle_fast_*`: the thread that delivered the message or event
///   (a worker, or the dispatch thread for the loopback connection's messages; its
///   `ms_handle_fast_connect`, the thread starting the messenger or adding the
///   dispatcher). They must not block.
/// - `ms_verify_authorizer`, in the one case it is called, and
///   `ms_handle_authentication`: the worker doing the handshake. They must not block.
///   `ms_get_authorizer` is never called by the messenger.
///
/// A hook that panics on the `ms_dispatch` thread loses the message or event it was
/// handling (its budget is released) and is counted (`QueueCounters::panics`); the thread
/// goes on. On a worker, the event center catches it and the connection is dropped.
///
/// No lock of this crate is held while any hook runs, so a hook may call back into the
/// queue or the throttles (but never [`Throttle::acquire`](crate::Throttle::acquire)
/// on the dispatch throttle from the dispatch thread: it is the one that releases it).
pub trait Dispatcher<C: ConnectionRef>: Send + Sync + 'static {
    /// Handles a queued message; give it back with [`Dispatched::NotTaken`] to pass it on.
    #[doc(alias = "ms_dispatch2")]
    fn ms_dispatch(&self, conn: &C, msg: Message) -> Dispatched;

    /// Whether this dispatcher may fast-dispatch anything at all. Read once, when it is
    /// added: only such dispatchers get `ms_fast_preprocess` and `ms_fast_dispatch`.
    fn ms_can_fast_dispatch_any(&self) -> bool {
        false
    }

    /// Whether `msg` should skip the queue and go to [`ms_fast_dispatch`](Self::ms_fast_dispatch).
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        false
    }

    /// Handles `msg` on the delivering thread; must not block.
    fn ms_fast_dispatch(&self, _conn: &C, _msg: Message) {}

    /// Sees every message, fast or queued, in arrival order per connection, before it is
    /// dispatched; must not block. Called only on dispatchers whose
    /// [`ms_can_fast_dispatch_any`](Self::ms_can_fast_dispatch_any) is true (as Ceph).
    fn ms_fast_preprocess(&self, _conn: &C, _msg: &Message) {}

    /// An outgoing connection is open (queued; before any queued message of `conn`).
    fn ms_handle_connect(&self, _conn: &C) {}

    /// An outgoing connection is open (on the delivering thread, before any message of `conn`);
    /// fast dispatchers only.
    fn ms_handle_fast_connect(&self, _conn: &C) {}

    /// An incoming connection is open (queued; before any queued message of `conn`).
    fn ms_handle_accept(&self, _conn: &C) {}

    /// An incoming connection is open (on the delivering thread, before any message of `conn`);
    /// fast dispatchers only.
    fn ms_handle_fast_accept(&self, _conn: &C) {}

    /// The connection's session ended here: it failed and was reset locally, or the
    /// messenger ended it (a messenger-level mark_down, mark_down_all or shutdown, each
    /// session once); also a msgr v1 connection a dispatcher judged in an
    /// [`ms_verify_authorizer`](Self::ms_verify_authorizer) of its own that ends without
    /// opening. Return `true` if handled (stops the walk).
    fn ms_handle_reset(&self, _conn: &C) -> bool {
        false
    }

    /// The peer reset the session (it lost our state); every dispatcher hears it. Over
    /// msgr v1 also when the peer of a lossy session connects again from the same
    /// address, right before the old session's `ms_handle_reset` (Ceph's ProtocolV1
    /// resets the old session's state, then replaces it).
    fn ms_handle_remote_reset(&self, _conn: &C) {}

    /// The peer refused the connection; return `true` if handled (stops the walk).
    ///
    /// Twice over, as in Ceph: a handshake the peer refused for good (features, protocol
    /// version, an auth method it will not take), which ends the connection; and a dial
    /// nothing listened to (`ECONNREFUSED`), on every such attempt, after which the
    /// session's fault policy goes on as for any failed dial (an OSD fails a heartbeat
    /// peer at once on it).
    fn ms_handle_refused(&self, _conn: &C) -> bool {
        false
    }

    /// Credentials for an outgoing connection to a peer of `peer_type` (`CEPH_ENTITY_TYPE_*`).
    ///
    /// Not called by the messenger: a connection's credentials come from its auth
    /// provider (`MessengerConfig::auth`; cephx, set up from an `AuthConfig`), and the
    /// msgr v1 connector takes its authorizer from there too. Only
    /// [`Dispatchers::get_authorizer`] calls it, for whoever wants to ask the chain.
    /// (Ceph 16's v1 connector likewise asks its `AuthClient`, not the dispatchers.)
    fn ms_get_authorizer(&self, _peer_type: u8) -> Option<Authorizer> {
        None
    }

    /// Judges an incoming connection's authorizer.
    ///
    /// Called only on a msgr v1 accept whose auth provider has no v1 authorizer
    /// verifier (`AuthProvider::authorizer_server` gives `None`: auth none, the
    /// default; cephx verifies inline and never asks), and there only when the peer
    /// sent a non-empty authorizer (auth none's, which every v1 connector but a
    /// client dialling a monitor sends, ours as Ceph's; or the protocol config's
    /// `verify_empty_authorizer` is set, which the messenger never does). msgr2 never
    /// calls it: its AUTH frames are the provider's alone. So it is no way to refuse
    /// peers in general: with cephx the provider (set up from an `AuthConfig`) decides
    /// who is let in; with auth none, msgr2 peers and v1 peers sending no authorizer
    /// are let in unasked. An auth-none authorizer that does not decode is refused
    /// (BADAUTHORIZER) before the dispatchers are asked, as Ceph's auth-none handler
    /// refuses it; one that decodes names the peer (`peer_auth`), whatever is answered
    /// here besides accepting.
    /// (Ceph 16's acceptor asks its `AuthServer`, not the dispatchers.)
    ///
    /// A connection a dispatcher judged here (with an implementation of its own) is
    /// reported ended ([`ms_handle_reset`](Self::ms_handle_reset)) whether or not it
    /// ever opens: refused, answered other than open, or dumped by a replace, as Ceph's
    /// ProtocolV1 resets a connection that fails half-accepted. With only the default
    /// here, a connection that never opens ends unreported.
    fn ms_verify_authorizer(
        &self,
        _conn: &C,
        _peer_type: u8,
        _protocol: u32,
        _authorizer: &[u8],
    ) -> AuthVerdict {
        DEFAULT_VERIFY.with(|d| d.set(true));
        AuthVerdict::Accept { reply: Vec::new() }
    }

    /// A peer connecting to us got through authentication (Ceph's
    /// `ms_handle_authentication`): `conn` shows who it proved to be
    /// (`Connection::peer_auth`: a cephx ticket's entity, global id and caps; auth
    /// none's claimed name; nothing for a msgr v1 peer that sent no authorizer), its
    /// type and address. A daemon parses the caps here and keeps a session for the
    /// peer (an OSD's `Session` in `set_priv`).
    ///
    /// Called on the accepting worker, with no lock held, head → tail until one answers
    /// other than [`Authentication::Pass`], once for each connect the peer makes on the
    /// socket (a msgr2 ident or reconnect; a v1 CONNECT, which a peer may send again on
    /// the same socket) before the accept decision: before the session is registered, so
    /// before any `ms_handle_accept` or message of it. [`Authentication::Refuse`] closes
    /// the connection there, and our dispatchers hear nothing more of it: the peer's
    /// handshake fails on a closed socket, as for any fault there (a lossy msgr v1
    /// dialler ends the connection; others, as Ceph's, dial again after their backoff,
    /// and are asked about again). A connection a dispatcher
    /// answered [`Authentication::Accept`] for is reported ended
    /// ([`ms_handle_reset`](Self::ms_handle_reset)) if it ends without opening, as one
    /// judged in [`ms_verify_authorizer`](Self::ms_verify_authorizer), so what it kept
    /// for it can go; so is one whose hook panicked (the event center drops the
    /// connection), as it may have kept something before it did.
    ///
    /// Unlike Ceph 16, whose `AuthServer` (`MonClient::handle_auth_request`, the
    /// monitor's own) calls it on one dispatcher (`handle_authentication_dispatcher`)
    /// inside the auth exchange and ignores what it returns, the chain is asked and a
    /// refusal closes the connection (as Nautilus's `ms_deliver_verify_authorizer` did,
    /// which refused the authorizer on a negative return); and it comes after the
    /// exchange, at the peer's connect, where our accept path takes its decisions.
    fn ms_handle_authentication(&self, _conn: &C) -> Authentication {
        Authentication::Pass
    }
}

thread_local! {
    /// Set by the default [`Dispatcher::ms_verify_authorizer`]: how
    /// [`Dispatchers::judge_authorizer`] tells a dispatcher that judged a connection
    /// itself (and may keep state for it) from one that left it to the default.
    static DEFAULT_VERIFY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An immutable snapshot of a dispatcher list.
pub(crate) type Chain<C> = Arc<Vec<Arc<dyn Dispatcher<C>>>>;

/// The ordered dispatcher chain plus the fast-path logic, shared by the dispatch thread
/// and the workers.
///
/// Adding is expected at start-up; each call replaces an immutable snapshot, so readers
/// never hold a lock while a hook runs.
pub struct Dispatchers<C: ConnectionRef> {
    all: RwLock<Chain<C>>,
    /// Those whose `ms_can_fast_dispatch_any` was true when added (Ceph's `fast_dispatchers`).
    fast: RwLock<Chain<C>>,
    /// Bumped after each add, once both chains are replaced: a [`ChainCache`] holding an
    /// older value takes the chains again.
    generation: AtomicU64,
}

impl<C: ConnectionRef> Default for Dispatchers<C> {
    fn default() -> Self {
        Dispatchers {
            all: RwLock::new(Arc::new(Vec::new())),
            fast: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
        }
    }
}

/// Offers `msg` to `chain` head → tail until one takes it; returns it if nobody did.
fn dispatch_on<C: ConnectionRef>(chain: &Chain<C>, conn: &C, msg: Message) -> Option<Message> {
    let mut msg = msg;
    for d in chain.iter() {
        match d.ms_dispatch(conn, msg) {
            Dispatched::Taken => return None,
            Dispatched::NotTaken(m) => msg = m,
        }
    }
    Some(msg)
}

/// `ms_fast_preprocess` on all of `fast`, then `ms_fast_dispatch` on the first that wants
/// `msg`; one snapshot for both walks, so a dispatcher added meanwhile sees neither.
///
/// A message holding a policy-throttle charge is compacted below `compact_below` bytes
/// ([`Message::compact`]) before a fast dispatcher gets it: that charge (its payload and
/// overhead) is all that bounds what a dispatcher keeping messages holds, and a small
/// message kept as a slice of the worker's shared read buffer pinned the whole buffer
/// (64 KiB for a message charged some 500 bytes); compacted, it pins at most twice its
/// charge (a payload of up to 256 bytes shares a 1 KiB chunk). Messages for the queue
/// are compacted as they are queued.
#[inline]
fn fast_on<C: ConnectionRef>(
    fast: &Chain<C>,
    conn: &C,
    mut msg: Message,
    compact_below: usize,
) -> Option<Message> {
    // One fast dispatcher (the usual chain): found once for its three calls, with no
    // walk. Walked twice, each call worked out again where the dispatcher sits behind
    // its `Arc`, with the loops around them (~50 instructions per 64 B round trip
    // under callgrind).
    if let [d] = fast.as_slice() {
        let d: &dyn Dispatcher<C> = &**d;
        d.ms_fast_preprocess(conn, &msg);
        if !d.ms_can_fast_dispatch(&msg) {
            return Some(msg);
        }
        if msg.has_throttle_charge() {
            msg.compact(compact_below);
        }
        d.ms_fast_dispatch(conn, msg);
        return None;
    }
    for d in fast.iter() {
        d.ms_fast_preprocess(conn, &msg);
    }
    match fast.iter().find(|d| d.ms_can_fast_dispatch(&msg)) {
        Some(d) => {
            if msg.has_throttle_charge() {
                msg.compact(compact_below);
            }
            d.ms_fast_dispatch(conn, msg);
            None
        }
        None => Some(msg),
    }
}

/// A thread's copy of the chains, for paths that run per message (a worker's receive
/// path, the dispatch thread). Taking a snapshot costs a read lock and a reference count
/// round trip — four atomic read-modify-writes on a line every worker shares; a cache
/// costs one plain load of the generation per message and takes the chains again only
/// after a dispatcher was added. Empty until first used, so an idle connection's copy
/// costs no allocation.
pub struct ChainCache<C: ConnectionRef> {
    generation: u64,
    chains: Option<Chains<C>>,
}

/// The two chains as one snapshot.
pub(crate) struct Chains<C: ConnectionRef> {
    pub(crate) all: Chain<C>,
    pub(crate) fast: Chain<C>,
}

impl<C: ConnectionRef> Default for ChainCache<C> {
    fn default() -> Self {
        ChainCache { generation: 0, chains: None }
    }
}

impl<C: ConnectionRef> fmt::Debug for ChainCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lens = self.chains.as_ref().map(|c| (c.all.len(), c.fast.len()));
        f.debug_struct("ChainCache")
            .field("generation", &self.generation)
            .field("all, fast", &lens)
            .finish()
    }
}

impl<C: ConnectionRef> Dispatchers<C> {
    /// An empty chain.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Puts `d` first (Ceph's `add_dispatcher_head`).
    #[doc(alias = "add_dispatcher_head")]
    pub fn add_head(&self, d: Arc<dyn Dispatcher<C>>) {
        self.insert(d, true);
    }

    /// Puts `d` last (Ceph's `add_dispatcher_tail`).
    #[doc(alias = "add_dispatcher_tail")]
    pub fn add_tail(&self, d: Arc<dyn Dispatcher<C>>) {
        self.insert(d, false);
    }

    fn insert(&self, d: Arc<dyn Dispatcher<C>>, head: bool) {
        let fast = d.ms_can_fast_dispatch_any();
        self.add_asked(d, head, fast);
    }

    /// Puts `d` first (`head`) or last, and on the fast chain too when `fast`: what
    /// [`Self::add_head`] and [`Self::add_tail`] do with `d`'s answer to
    /// `ms_can_fast_dispatch_any`, for a caller that asked it already and acts on the
    /// answer itself (the messenger tells a fast dispatcher of its loopback connection
    /// before it joins). Each dispatcher is asked once, when it is added, as Ceph's
    /// `add_dispatcher_head` does.
    pub fn add_asked(&self, d: Arc<dyn Dispatcher<C>>, head: bool, fast: bool) {
        let push = |chain: &RwLock<Chain<C>>, d: Arc<dyn Dispatcher<C>>| {
            let mut w = chain.write();
            let mut v: Vec<_> = w.as_ref().clone();
            if head {
                v.insert(0, d);
            } else {
                v.push(d);
            }
            *w = Arc::new(v);
        };
        if fast {
            push(&self.fast, Arc::clone(&d));
        }
        push(&self.all, d);
        // After both chains: a cache that sees the new generation finds both replaced.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Brings `cache` up to date (a plain load when no dispatcher was added since) and
    /// returns it.
    // The check inlined, the reload apart: whole, it was called apart, ~21 instructions
    // per message on a worker at 64 B.
    #[inline(always)]
    pub(crate) fn refresh<'a>(&self, cache: &'a mut ChainCache<C>) -> &'a Chains<C> {
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation || cache.chains.is_none() {
            self.reload(cache, generation);
        }
        cache.chains.get_or_insert_with(|| Chains { all: self.all(), fast: self.fast() })
    }

    /// For [`refresh`](Self::refresh): `cache` made anew for `generation`.
    #[cold]
    #[inline(never)]
    fn reload(&self, cache: &mut ChainCache<C>, generation: u64) {
        cache.generation = generation;
        // Taken after the generation was read: at least as new as it says.
        cache.chains = Some(Chains { all: self.all(), fast: self.fast() });
    }

    /// Number of dispatchers.
    pub fn len(&self) -> usize {
        self.all.read().len()
    }

    /// Whether no dispatcher was added yet.
    pub fn is_empty(&self) -> bool {
        self.all.read().is_empty()
    }

    fn all(&self) -> Chain<C> {
        Arc::clone(&self.all.read())
    }

    /// A snapshot of the fast dispatchers (Ceph's `fast_dispatchers`).
    pub(crate) fn fast(&self) -> Chain<C> {
        Arc::clone(&self.fast.read())
    }

    /// Offers `msg` head → tail until one takes it; returns it if nobody did.
    #[doc(alias = "ms_deliver_dispatch")]
    pub fn dispatch(&self, conn: &C, msg: Message) -> Option<Message> {
        dispatch_on(&self.all(), conn, msg)
    }

    /// [`dispatch`](Self::dispatch) through the caller's [`ChainCache`].
    // Inlined into the dispatch thread's loop: called apart, its frame and the moves of
    // its arguments cost ~20 instructions per queued message at 64 B.
    #[inline(always)]
    pub(crate) fn dispatch_cached(
        &self,
        cache: &mut ChainCache<C>,
        conn: &C,
        msg: Message,
    ) -> Option<Message> {
        dispatch_on(&self.refresh(cache).all, conn, msg)
    }

    /// `ms_fast_preprocess` on every fast dispatcher, then `ms_fast_dispatch` on the first
    /// that wants `msg` (`None`), through the caller's [`ChainCache`]; hands the message
    /// back when no fast dispatcher wants it.
    #[inline]
    pub(crate) fn preprocess_and_fast_dispatch(
        &self,
        cache: &mut ChainCache<C>,
        conn: &C,
        msg: Message,
        compact_below: usize,
    ) -> Option<Message> {
        fast_on(&self.refresh(cache).fast, conn, msg, compact_below)
    }

    /// [`preprocess_and_fast_dispatch`](Self::preprocess_and_fast_dispatch) on a snapshot
    /// taken now, for callers without a cache.
    pub(crate) fn fast_or_return(
        &self,
        conn: &C,
        msg: Message,
        compact_below: usize,
    ) -> Option<Message> {
        fast_on(&self.fast(), conn, msg, compact_below)
    }

    /// Whether some fast dispatcher wants `msg` on the fast path.
    #[doc(alias = "ms_can_fast_dispatch")]
    pub fn can_fast_dispatch(&self, msg: &Message) -> bool {
        self.fast().iter().any(|d| d.ms_can_fast_dispatch(msg))
    }

    /// Hands `msg` to the first fast dispatcher that wants it; returns it if none does.
    #[doc(alias = "ms_deliver_fast_dispatch")]
    pub fn fast_dispatch(&self, conn: &C, msg: Message) -> Option<Message> {
        match self.fast().iter().find(|d| d.ms_can_fast_dispatch(&msg)) {
            Some(d) => {
                d.ms_fast_dispatch(conn, msg);
                None
            }
            None => Some(msg),
        }
    }

    /// Shows `msg` to every fast dispatcher's `ms_fast_preprocess`.
    #[doc(alias = "ms_fast_preprocess")]
    pub fn fast_preprocess(&self, conn: &C, msg: &Message) {
        for d in self.fast().iter() {
            d.ms_fast_preprocess(conn, msg);
        }
    }

    /// `ms_handle_connect` on every dispatcher.
    pub fn handle_connect(&self, conn: &C) {
        self.all().iter().for_each(|d| d.ms_handle_connect(conn));
    }

    /// `ms_handle_fast_connect` on every fast dispatcher.
    pub fn handle_fast_connect(&self, conn: &C) {
        self.fast().iter().for_each(|d| d.ms_handle_fast_connect(conn));
    }

    /// `ms_handle_accept` on every dispatcher.
    pub fn handle_accept(&self, conn: &C) {
        self.all().iter().for_each(|d| d.ms_handle_accept(conn));
    }

    /// `ms_handle_fast_accept` on every fast dispatcher.
    pub fn handle_fast_accept(&self, conn: &C) {
        self.fast().iter().for_each(|d| d.ms_handle_fast_accept(conn));
    }

    /// `ms_handle_reset` head → tail until one returns `true`; returns whether one did.
    pub fn handle_reset(&self, conn: &C) -> bool {
        self.all().iter().any(|d| d.ms_handle_reset(conn))
    }

    /// `ms_handle_authentication` head → tail until one answers other than
    /// [`Authentication::Pass`]; that answer, or `Pass` if none did (the peer is let
    /// in).
    #[doc(alias = "ms_handle_authentication")]
    pub fn handle_authentication(&self, conn: &C) -> Authentication {
        self.all()
            .iter()
            .map(|d| d.ms_handle_authentication(conn))
            .find(|a| *a != Authentication::Pass)
            .unwrap_or(Authentication::Pass)
    }

    /// `ms_handle_remote_reset` on every dispatcher.
    pub fn handle_remote_reset(&self, conn: &C) {
        self.all().iter().for_each(|d| d.ms_handle_remote_reset(conn));
    }

    /// `ms_handle_refused` head → tail until one returns `true`; returns whether one did.
    pub fn handle_refused(&self, conn: &C) -> bool {
        self.all().iter().any(|d| d.ms_handle_refused(conn))
    }

    /// The first authorizer a dispatcher (head → tail) supplies for `peer_type`. The
    /// messenger never calls it (see [`Dispatcher::ms_get_authorizer`]).
    #[doc(alias = "ms_get_authorizer")]
    pub fn get_authorizer(&self, peer_type: u8) -> Option<Authorizer> {
        self.all().iter().find_map(|d| d.ms_get_authorizer(peer_type))
    }

    /// Asks every dispatcher head → tail: any `Reject` rejects (stopping the walk);
    /// otherwise the peer is accepted with the first non-empty reply (or an empty one).
    /// With no dispatchers the peer is accepted. The messenger calls it only in the
    /// case [`Dispatcher::ms_verify_authorizer`] names (msgr v1, auth none).
    #[doc(alias = "ms_verify_authorizer")]
    pub fn verify_authorizer(
        &self,
        conn: &C,
        peer_type: u8,
        protocol: u32,
        authorizer: &[u8],
    ) -> AuthVerdict {
        self.judge_authorizer(conn, peer_type, protocol, authorizer).0
    }

    /// [`verify_authorizer`](Self::verify_authorizer), and whether a dispatcher judged
    /// `conn` with an `ms_verify_authorizer` of its own (not the default): one that may
    /// keep state for it, which must hear of its end (`ms_handle_reset`) even if it
    /// never opens.
    pub fn judge_authorizer(
        &self,
        conn: &C,
        peer_type: u8,
        protocol: u32,
        authorizer: &[u8],
    ) -> (AuthVerdict, bool) {
        let mut reply = Vec::new();
        let mut judged = false;
        for d in self.all().iter() {
            DEFAULT_VERIFY.with(|f| f.set(false));
            let verdict = d.ms_verify_authorizer(conn, peer_type, protocol, authorizer);
            judged |= !DEFAULT_VERIFY.with(|f| f.replace(false));
            match verdict {
                AuthVerdict::Reject => return (AuthVerdict::Reject, judged),
                AuthVerdict::Accept { reply: r } => {
                    if reply.is_empty() {
                        reply = r;
                    }
                }
            }
        }
        (AuthVerdict::Accept { reply }, judged)
    }
}
