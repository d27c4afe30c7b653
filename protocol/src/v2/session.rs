//! The transferable part of a msgr2 session: v1's sequence numbers and queues plus
//! msgr2's cookies and 64-bit counters.
//!
//! The message half (`in_seq`, `out_seq`, the priority queue, the sent-but-unacked
//! list, requeue and discard) is [`crate::v1::Session`] itself, reused as is: it is
//! protocol-independent. Its own `connect_seq` / `peer_global_seq` (32-bit, v1's
//! connect message) are not used by msgr2, which keeps 64-bit ones here.

use crate::types::Features;
use crate::v1;

/// A msgr2 session, movable between state machines on a replace.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Seqs and queues (shared implementation with v1).
    pub(crate) msgs: v1::Session,
    /// Chosen by the side that sent CLIENT_IDENT: random non-zero when lossless.
    pub(crate) client_cookie: u64,
    /// Chosen by the side that sent SERVER_IDENT; non-zero on a connector means "a
    /// session exists: reconnect instead of ident".
    pub(crate) server_cookie: u64,
    /// Reconnect attempts within the session (0 for a new one).
    pub(crate) connect_seq: u64,
    /// The peer's global_seq of its last accepted ident or reconnect.
    pub(crate) peer_global_seq: u64,
    /// Features negotiated at ident (`peer.supported & ours`); a reconnect keeps them.
    pub(crate) features: Features,
    /// The peer's `gid` from its ident (its entity number).
    pub(crate) peer_gid: i64,
}

impl Session {
    /// `(client_cookie, server_cookie)`.
    pub fn cookies(&self) -> (u64, u64) {
        (self.client_cookie, self.server_cookie)
    }
    /// The session's connect_seq.
    pub fn connect_seq(&self) -> u64 {
        self.connect_seq
    }
    /// The peer's last global_seq.
    pub fn peer_global_seq(&self) -> u64 {
        self.peer_global_seq
    }
    /// Seq of the last message received.
    pub fn in_seq(&self) -> u64 {
        self.msgs.in_seq()
    }
    /// Seq of the last message framed.
    pub fn out_seq(&self) -> u64 {
        self.msgs.out_seq()
    }
    /// Messages queued or sent-but-unacked.
    pub fn pending(&self) -> usize {
        self.msgs.pending()
    }

    /// Ceph's `reset_session`: everything goes, cookies included.
    pub(crate) fn reset(&mut self) {
        *self = Session::default();
    }
}
