//! [`SessionTable`]: the messenger's connections, by the peer address their session is
//! registered under (Ceph's `conns`, for the accept decision and `connect_to` reuse)
//! and by id (every live connection, Ceph's `accepting_conns` and `conns` together, for
//! `mark_down_all`, dumps, shutdown and `wait`).
//!
//! Both maps live under one lock, so what spans them holds by construction:
//! * a connection registered under an address is live (it leaves `sessions` no later
//!   than `live`);
//! * a connection starts only if it was registered before shutdown began: `shutdown`
//!   takes its list of connections to close under the same lock that registration
//!   checks `stopping` under, so each connection is either closed by it or never starts;
//! * an accept decision reads the existing session, decides and applies its outcome
//!   (register the newcomer with the numbers its session opens with, or mark the
//!   existing session `replacing`) in one critical section, so two connects racing for
//!   one peer on two workers see each other's outcome;
//! * a shutdown lets `wait` stop the dispatch queue only once every session ended with
//!   a reset to report has that reset queued: `end_session` counts them under the lock
//!   that `sessions_ended` waits under. The lock order is table → a
//!   handle's published state; nothing else is locked, and no callback or syscall runs,
//!   inside.

use std::collections::HashMap;

use parking_lot::{Condvar, Mutex};
use protocol::auth::AuthPeer;
use protocol::types::{EntityAddr, EntityType};

use crate::connection::Connection;
use crate::machine::{Existing, SessionSnapshot};
use crate::state::ConnState;

/// What an accept decision does to the table, applied inside the decision's critical
/// section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Nothing (a retry or reset reply).
    Nothing,
    /// The deciding connection becomes the session registered for the peer.
    Register,
    /// The existing session is being replaced: later connects for the peer are told to
    /// retry until its driver adopted the new socket (or closed).
    BeginReplace,
}

/// Whether a newcomer that authenticated as `newcomer` is another entity than the
/// existing session's peer: the one it authenticated as, if it did (a newcomer with no
/// name is then another); else, if the newcomer has a name, the type we know the peer by
/// (a session we dialled: an OSD's session cannot be taken by a client's ticket).
fn foreign(
    existing: Option<&AuthPeer>,
    existing_type: Option<EntityType>,
    newcomer: Option<&AuthPeer>,
) -> bool {
    match (existing, newcomer) {
        (Some(e), n) => n.is_none_or(|n| n.name != e.name),
        (None, Some(n)) => existing_type.is_some_and(|t| u32::from(t.0) != n.name.ty),
        (None, None) => false,
    }
}

/// What `connect_to` found or made.
pub(crate) enum Lookup {
    /// A live session to the peer: reuse it.
    Existing(Connection),
    /// A new connection, registered: start its driver.
    Created(Connection),
    /// The messenger is shutting down: the new connection was not registered and must
    /// not start.
    Stopping(Connection),
}

#[derive(Default)]
struct Tables {
    /// Peer's announced address → its session.
    sessions: HashMap<EntityAddr, Connection>,
    /// Connection id → the address it was registered under in `sessions`: what the
    /// driver later publishes as the peer's address need not be that one (a msgr2 peer
    /// listing a legacy address before its port-0 msgr2 one), and removal must find the
    /// entry all the same. Only live connections have one.
    keys: HashMap<u64, EntityAddr>,
    /// Every live connection by id (registered until its driver is done).
    live: HashMap<u64, Connection>,
    /// Shutdown began: nothing more registers.
    stopping: bool,
    /// The shutdown has ended the sessions of the connections live when it began
    /// ([`SessionTable::sessions_ended`]).
    ended: bool,
    /// Sessions ended through [`SessionTable::end_session`] whose reset has not been
    /// queued yet: one per live [`ResetPending`].
    resets_pending: usize,
}

impl Tables {
    /// `conn` becomes the session registered under `addr` (the one there before, if
    /// any, no longer is; nor is `conn` under an earlier address).
    fn register_session(&mut self, addr: EntityAddr, conn: &Connection) {
        if let Some(old) = self.keys.insert(conn.id(), addr) {
            if old != addr && self.sessions.get(&old) == Some(conn) {
                self.sessions.remove(&old);
            }
        }
        if let Some(before) = self.sessions.insert(addr, conn.clone()) {
            if before != *conn && self.keys.get(&before.id()) == Some(&addr) {
                self.keys.remove(&before.id());
            }
        }
    }

    /// Removes `conn` from the sessions if it is registered there.
    fn forget_session(&mut self, conn: &Connection) {
        if let Some(addr) = self.keys.remove(&conn.id()) {
            if self.sessions.get(&addr) == Some(conn) {
                self.sessions.remove(&addr);
            }
        }
    }
}

/// The duty to report a session's end that [`SessionTable::end_session`] gave: drop it
/// once the reset is queued.
#[must_use = "the shutdown waits until the reset is queued and this is dropped"]
pub(crate) struct ResetPending<'a>(&'a SessionTable);

impl Drop for ResetPending<'_> {
    fn drop(&mut self) {
        let mut t = self.0.tables.lock();
        t.resets_pending = t.resets_pending.saturating_sub(1);
        if t.resets_pending == 0 {
            self.0.emptied.notify_all();
        }
    }
}

/// The messenger's connections; see the module docs for what it keeps true.
#[derive(Default)]
pub(crate) struct SessionTable {
    tables: Mutex<Tables>,
    /// Signalled when `live` becomes empty, when the shutdown has ended the sessions, and
    /// when no reset is pending.
    emptied: Condvar,
}

impl SessionTable {
    /// `connect_to`'s lookup: the live session registered for `addr`, else a new
    /// connection from `create`, registered under `addr` unless shutdown began.
    pub(crate) fn get_or_create(
        &self,
        addr: EntityAddr,
        create: impl FnOnce() -> Connection,
    ) -> Lookup {
        let mut t = self.tables.lock();
        if let Some(conn) = t.sessions.get(&addr) {
            if conn.state() != ConnState::Closed {
                return Lookup::Existing(conn.clone());
            }
        }
        let conn = create();
        if t.stopping {
            return Lookup::Stopping(conn);
        }
        t.register_session(addr, &conn);
        t.live.insert(conn.id(), conn.clone());
        Lookup::Created(conn)
    }

    /// Registers an accepted connection as live (not as a session: its accept decision
    /// does that). False if shutdown began: the caller must not start it.
    pub(crate) fn register(&self, conn: &Connection) -> bool {
        let mut t = self.tables.lock();
        if t.stopping {
            return false;
        }
        t.live.insert(conn.id(), conn.clone());
        true
    }

    /// The accept decision's check-and-set, for `me`'s connect from the peer at `addr`:
    /// looks up the live session registered there (other than `me`), shows it to
    /// `decide` — its state, what its driver published, whether it is being replaced —
    /// and applies the [`Claim`] `decide` returns, all in one critical section; a
    /// [`Claim::Register`] publishes `opening`, the numbers `me`'s session opens with,
    /// in it too. Returns `decide`'s verdict, the existing session it saw, and a session
    /// of the other protocol found there, which the caller marks down.
    ///
    /// A session of the other protocol than `opening`'s (an msgr2 ident listing only a
    /// v1 address is looked up under that one) is not decided against: it leaves the
    /// table here and `decide` sees none, as Ceph's `handle_client_ident`,
    /// `handle_reconnect` and v1's `handle_connect_message_2` mark an existing
    /// connection of the other protocol down and go on without it (the protocols' rules
    /// would move a session into the other protocol's machine, its messages renumbered
    /// for a peer that had them). Unless the newcomer is another entity than its peer:
    /// that one is refused as for any session.
    pub(crate) fn decide_accept<V>(
        &self,
        me: &Connection,
        addr: EntityAddr,
        authenticated: Option<&AuthPeer>,
        opening: SessionSnapshot,
        decide: impl FnOnce(Option<&Existing>) -> (V, Claim),
    ) -> (V, Option<Connection>, Option<Connection>) {
        let mut t = self.tables.lock();
        let mut existing =
            t.sessions.get(&addr).filter(|c| *c != me && c.state() != ConnState::Closed).cloned();
        let other_protocol = existing.take_if(|c| {
            let p = c.0.published.lock();
            p.session.protocol().is_some_and(|v| Some(v) != opening.protocol())
                && !foreign(p.peer_auth.as_ref(), p.entity_type, authenticated)
        });
        if let Some(c) = &other_protocol {
            t.forget_session(c);
        }
        let mut published = existing.as_ref().map(|c| c.0.published.lock());
        let view = existing.as_ref().zip(published.as_deref()).map(|(c, p)| Existing {
            state: c.state(),
            // Lossy from `mark_disposable` on, as Ceph's accept reads `existing->policy`.
            session: p.session.marked(c.is_disposable()),
            replacing: p.replacing,
            foreign: foreign(p.peer_auth.as_ref(), p.entity_type, authenticated),
        });
        let (verdict, claim) = decide(view.as_ref());
        match (claim, existing.as_ref().zip(published.as_deref_mut())) {
            // From here the existing session's driver reads nothing more on its own
            // socket (its pump loads the mark) until it adopts the decision's socket.
            (Claim::BeginReplace, Some((c, p))) => c.set_replacing(p, true),
            (Claim::Register, _) => t.register_session(addr, me),
            _ => {}
        }
        drop(published);
        if claim == Claim::Register {
            // Who the newcomer is and its session's numbers count from its registration
            // on, not from its open: a second connect decided meanwhile on another
            // worker must meet the same checks. With the defaults there (no peer
            // global_seq, no cookies) a stale connect from the peer was not found stale
            // and could take the new session over. (Another handle's state is locked
            // only after the existing one's was let go.)
            let mut p = me.0.published.lock();
            p.session = opening;
            if let Some(a) = authenticated {
                p.peer_auth = Some(a.clone());
            }
        }
        (verdict, existing, other_protocol)
    }

    /// Forgets `conn` if `still(conn)` holds, both under the table's lock: an accept
    /// decision, which marks the session it hands a reconnect to as being replaced under
    /// the same lock, is then either before (and `still` sees the mark) or after (and
    /// finds no session). Returns whether it forgot it.
    pub(crate) fn forget_if(
        &self,
        conn: &Connection,
        still: impl FnOnce(&Connection) -> bool,
    ) -> bool {
        let mut t = self.tables.lock();
        if !still(conn) {
            return false;
        }
        t.forget_session(conn);
        true
    }

    /// Ends a replace that will not happen (the replaced session closed before the
    /// socket reached it, or moved on since the decision: `Replacement::still_holds`):
    /// the peer's next connect is decided afresh.
    pub(crate) fn abort_replace(&self, existing: &Connection) {
        {
            let _t = self.tables.lock();
            existing.set_replacing(&mut existing.0.published.lock(), false);
        }
        // Its driver is the caller or is ending (its mailbox closed); were it neither, a
        // frozen driver would neither read nor time out anything until some pump armed
        // its timer again (`Driver::update_timer`): woken, with no lock held.
        existing.wake();
    }

    /// The live session registered for `addr`.
    pub(crate) fn lookup(&self, addr: &EntityAddr) -> Option<Connection> {
        self.tables.lock().sessions.get(addr).cloned()
    }

    /// Removes `conn` from the sessions if it is the one registered for its peer (it
    /// stays live until [`SessionTable::unregister`]).
    pub(crate) fn forget(&self, conn: &Connection) {
        self.tables.lock().forget_session(conn);
    }

    /// `conn`'s driver is done: it leaves the sessions and the live connections.
    pub(crate) fn unregister(&self, conn: &Connection) {
        let mut t = self.tables.lock();
        t.forget_session(conn);
        t.live.remove(&conn.id());
        if t.live.is_empty() {
            self.emptied.notify_all();
        }
    }

    /// Every live connection.
    pub(crate) fn live(&self) -> Vec<Connection> {
        self.tables.lock().live.values().cloned().collect()
    }

    /// Number of live connections.
    pub(crate) fn len(&self) -> usize {
        self.tables.lock().live.len()
    }

    /// Number of peers with a registered session.
    pub(crate) fn sessions(&self) -> usize {
        self.tables.lock().sessions.len()
    }

    /// Begins shutdown: nothing registers from now on. Returns the live connections to
    /// close, or `None` if shutdown had already begun. The caller calls
    /// [`SessionTable::sessions_ended`] once it has ended their sessions.
    pub(crate) fn begin_shutdown(&self) -> Option<Vec<Connection>> {
        let mut t = self.tables.lock();
        if std::mem::replace(&mut t.stopping, true) {
            return None;
        }
        Some(t.live.values().cloned().collect())
    }

    /// Ends `conn`'s session ([`Connection::stop_messages`]) for a caller that reports
    /// the end with a reset. If this call ended it, returns the duty to report it, which
    /// the caller drops once the reset is queued; until then the shutdown does not let
    /// the dispatch queue stop ([`SessionTable::sessions_ended`]). `None` if the session
    /// had already ended: whoever ended it reports it.
    ///
    /// Ceph's shutdown never passes a session whose reset is not queued yet: a fault or
    /// a newcomer ends it and queues the reset under the connection's lock, which the
    /// shutdown's `stop` takes, and `mark_down_all` or `mark_down` under the messenger's,
    /// which the shutdown holds. Here an ender may be between the two on another thread
    /// when the shutdown finds the session already ended; without this count the
    /// dispatch queue could stop before that reset was queued, and it would be lost.
    pub(crate) fn end_session(&self, conn: &Connection) -> Option<ResetPending<'_>> {
        // Under the lock, so a shutdown that finds the session ended after this also
        // finds it counted.
        let mut t = self.tables.lock();
        if !conn.stop_messages() {
            return None;
        }
        t.resets_pending = t.resets_pending.saturating_add(1);
        Some(ResetPending(self))
    }

    /// The shutdown has ended the sessions [`SessionTable::begin_shutdown`] listed:
    /// returns once every reset pending is queued (those of the sessions the shutdown
    /// found already ended by another thread included), after which
    /// [`SessionTable::wait_for_shutdown`] returns. Bounded: every listed session has
    /// ended by now and no other starts, so no new reset becomes pending; each pending
    /// one's ender only has to queue it (no callback, lock or wait on the way). Not
    /// called with a lock held.
    pub(crate) fn sessions_ended(&self) {
        let mut t = self.tables.lock();
        while t.resets_pending > 0 {
            self.emptied.wait(&mut t);
        }
        t.ended = true;
        self.emptied.notify_all();
    }

    /// Blocks until a shutdown began and ended the sessions it found: a `wait` that
    /// stopped the dispatch queue before would make it refuse their resets.
    pub(crate) fn wait_for_shutdown(&self) {
        let mut t = self.tables.lock();
        while !t.ended {
            self.emptied.wait(&mut t);
        }
    }

    /// Whether shutdown began.
    pub(crate) fn is_stopping(&self) -> bool {
        self.tables.lock().stopping
    }

    /// Blocks until no connection is live.
    pub(crate) fn wait_until_empty(&self) {
        let mut t = self.tables.lock();
        while !t.live.is_empty() {
            self.emptied.wait(&mut t);
        }
    }

    /// The live connections as `messenger dump` shows them.
    pub(crate) fn dump(&self) -> serde_json::Value {
        serde_json::Value::Array(self.live().iter().map(Connection::dump).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::sync::Arc;
    use std::time::Duration;

    use protocol::auth::cephx::ticket::AuthCapsInfo;
    use protocol::types::AuthEntityName;

    use super::*;

    /// A connection that has not started, as an accepted one is when its connect is
    /// decided; `claims` is the type its peer's connect claims (the driver publishes it
    /// before it asks the table).
    fn accepted(id: u64, claims: EntityType) -> Connection {
        // A handle with no messenger behind it: the table only reads and writes what a
        // driver would publish on it.
        let conn = crate::connection::testing::detached(id, false);
        conn.0.published.lock().entity_type = Some(claims);
        conn
    }

    fn peer(ty: EntityType, id: &str) -> AuthPeer {
        AuthPeer {
            name: AuthEntityName::new(ty, id),
            global_id: 5000,
            caps: AuthCapsInfo::allow_all(),
        }
    }

    /// Decides `conn`'s connect from `addr` as `who`: the existing session's `foreign`
    /// (`None` if there was none), with `claim` applied.
    fn decide(
        table: &SessionTable,
        conn: &Connection,
        addr: EntityAddr,
        who: &AuthPeer,
        claim: Claim,
    ) -> Option<bool> {
        let opening = SessionSnapshot::default();
        let (foreign, _, _) =
            table.decide_accept(conn, addr, Some(who), opening, |e| (e.map(|e| e.foreign), claim));
        foreign
    }

    #[test]
    fn a_newcomer_is_another_entity_than_a_named_session_unless_it_proved_that_name() {
        let seven = peer(EntityType::CLIENT, "7");
        let renewed = AuthPeer { global_id: 5001, ..seven.clone() };
        assert!(!foreign(Some(&seven), Some(EntityType::CLIENT), Some(&renewed)), "same name");
        let eight = peer(EntityType::CLIENT, "8");
        assert!(foreign(Some(&seven), Some(EntityType::CLIENT), Some(&eight)), "another name");
        assert!(foreign(Some(&seven), Some(EntityType::CLIENT), None), "no name at all");
        let osd = peer(EntityType::OSD, "7");
        assert!(
            foreign(Some(&seven), Some(EntityType::CLIENT), Some(&osd)),
            "same id, another type"
        );
    }

    #[test]
    fn a_session_with_no_proven_name_is_taken_only_by_a_name_of_the_type_we_know_it_by() {
        let client = peer(EntityType::CLIENT, "8");
        let osd = peer(EntityType::OSD, "1");
        assert!(foreign(None, Some(EntityType::OSD), Some(&client)), "a client's ticket");
        assert!(!foreign(None, Some(EntityType::OSD), Some(&osd)), "an OSD's ticket");
        assert!(!foreign(None, None, Some(&client)), "no type to compare with");
        assert!(!foreign(None, Some(EntityType::OSD), None), "neither proved a name");
    }

    /// client.7's newcomer registered under the address, but has not opened yet (it is
    /// still answering its connect); a second connect, client.8's, must meet client.7's
    /// name there, not a session with no name whose claimed type client.8 shares.
    #[test]
    fn a_registered_newcomer_is_known_by_its_name_before_it_opens() {
        let table = SessionTable::default();
        let addr = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 6800)), 7);
        let first = accepted(1, EntityType::CLIENT);
        let seven = peer(EntityType::CLIENT, "7");
        assert_eq!(decide(&table, &first, addr, &seven, Claim::Register), None, "nothing there");
        assert_eq!(table.lookup(&addr), Some(first.clone()));

        let second = accepted(2, EntityType::CLIENT);
        let eight = peer(EntityType::CLIENT, "8");
        assert_eq!(
            decide(&table, &second, addr, &eight, Claim::Nothing),
            Some(true),
            "client.8 could take client.7's session before it opened"
        );
        let third = accepted(3, EntityType::CLIENT);
        assert_eq!(decide(&table, &third, addr, &seven, Claim::Nothing), Some(false));
    }

    /// How long a thread that must stay blocked is watched: it could only return sooner,
    /// never later, so a slow machine cannot make these tests pass wrongly.
    const STAYS_BLOCKED: Duration = Duration::from_millis(200);
    /// How long a thread that must return is given: generous, for a loaded machine.
    const RETURNS: Duration = Duration::from_secs(10);

    /// Runs `f` on a thread of its own; the receiver hears when it returned.
    fn spawn_and_watch(f: impl FnOnce() + Send + 'static) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx
    }

    /// A `wait` parked before the shutdown began must not go on when it begins, only once
    /// the shutdown has ended the sessions it found: it would stop the dispatch queue,
    /// which would then refuse their resets (Ceph's `wait` stops its dispatch queue
    /// only after `shutdown` ran `mark_down_all`).
    #[test]
    fn wait_for_shutdown_returns_once_the_sessions_are_ended_not_when_shutdown_begins() {
        let table = Arc::new(SessionTable::default());
        let waiter = {
            let table = Arc::clone(&table);
            spawn_and_watch(move || table.wait_for_shutdown())
        };
        assert!(table.begin_shutdown().is_some(), "the first shutdown");
        assert_eq!(
            waiter.recv_timeout(STAYS_BLOCKED),
            Err(RecvTimeoutError::Timeout),
            "returned when the shutdown began, before it ended the sessions"
        );
        table.sessions_ended();
        waiter.recv_timeout(RETURNS).expect("returned once the sessions were ended");
        table.wait_for_shutdown();
    }

    /// A session another thread ended to report it, its reset not queued yet: a shutdown
    /// that finds it ended does not end its own part (after which the dispatch queue may
    /// stop and refuse that reset) until the reset is queued, as Ceph's shutdown cannot
    /// stop a connection whose fault holds its lock until the reset is queued.
    #[test]
    fn the_shutdown_waits_for_a_reset_another_thread_is_queuing() {
        let table = Arc::new(SessionTable::default());
        let conn = accepted(1, EntityType::CLIENT);
        let pending = table.end_session(&conn).expect("this call ended the session");
        assert!(table.end_session(&conn).is_none(), "and no other call ends it again");
        assert!(table.begin_shutdown().is_some());
        let stopper = {
            let table = Arc::clone(&table);
            spawn_and_watch(move || table.sessions_ended())
        };
        let waiter = {
            let table = Arc::clone(&table);
            spawn_and_watch(move || table.wait_for_shutdown())
        };
        assert_eq!(
            stopper.recv_timeout(STAYS_BLOCKED),
            Err(RecvTimeoutError::Timeout),
            "the shutdown went on with a reset still to queue"
        );
        assert_eq!(waiter.try_recv(), Err(mpsc::TryRecvError::Empty), "wait went on");
        drop(pending);
        stopper.recv_timeout(RETURNS).expect("the shutdown went on once it was queued");
        waiter.recv_timeout(RETURNS).expect("and wait too");
    }
}
