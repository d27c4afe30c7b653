//! Per-peer-type connection policy (Ceph's `Messenger::Policy`, `src/msg/Policy.h`).

/// How connections to or from one peer type behave (msgr-v1.md 3.10).
///
/// The throttlers of Ceph's policy live in the messenger; this is the part the session
/// state machine needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lossy: on a fault the session is dropped (reset), messages are never acked or
    /// resent. Lossless: unacked messages are resent after a reconnect.
    pub lossy: bool,
    /// Server: this side never dials the peer; a faulted lossless session waits for the
    /// peer to reconnect.
    pub server: bool,
    /// Standby: a faulted lossless session with nothing queued waits for new messages
    /// before reconnecting.
    pub standby: bool,
    /// Resetcheck: detect a peer that lost its session (restart) and reset ours.
    pub resetcheck: bool,
}

impl Policy {
    /// `stateful_server`: lossless, server, standby, resetcheck.
    pub const fn stateful_server() -> Self {
        Policy { lossy: false, server: true, standby: true, resetcheck: true }
    }
    /// `stateless_server` (and `stateless_registered_server`): lossy server; how a
    /// monitor or an OSD treats clients. Its clients' sessions are registered, as
    /// `stateless_registered_server`'s (an OSD's public messenger): a client connecting
    /// again from the same address resets its old session. (Ceph's monitor does not
    /// register them, and leaves the old connection to fail on its own.)
    pub const fn stateless_server() -> Self {
        Policy { lossy: true, server: true, standby: false, resetcheck: false }
    }
    /// `lossless_peer`: lossless, standby, no resetcheck.
    pub const fn lossless_peer() -> Self {
        Policy { lossy: false, server: false, standby: true, resetcheck: false }
    }
    /// `lossless_peer_reuse`: lossless, standby, resetcheck; how monitors treat each other.
    pub const fn lossless_peer_reuse() -> Self {
        Policy { lossy: false, server: false, standby: true, resetcheck: true }
    }
    /// `lossy_client`: what librados and the `ceph` CLI use for everything.
    pub const fn lossy_client() -> Self {
        Policy { lossy: true, server: false, standby: false, resetcheck: false }
    }
    /// `lossless_client`: lossless, no standby, resetcheck.
    pub const fn lossless_client() -> Self {
        Policy { lossy: false, server: false, standby: false, resetcheck: true }
    }
}

impl Default for Policy {
    /// Lossless, not a server, no standby, no resetcheck: what an accepted machine holds
    /// until its peer's type decides its policy (the accept decision). Not Ceph's
    /// default-constructed `Policy()`, which has resetcheck.
    fn default() -> Self {
        Policy { lossy: false, server: false, standby: false, resetcheck: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Mirrors the table in src/msg/Policy.h (msgr-v1.md 3.10).
    #[test]
    fn presets_match_ceph_table() {
        let rows = [
            (Policy::stateful_server(), (false, true, true, true)),
            (Policy::stateless_server(), (true, true, false, false)),
            (Policy::lossless_peer(), (false, false, true, false)),
            (Policy::lossless_peer_reuse(), (false, false, true, true)),
            (Policy::lossy_client(), (true, false, false, false)),
            (Policy::lossless_client(), (false, false, false, true)),
        ];
        for (p, (lossy, server, standby, resetcheck)) in rows {
            assert_eq!(
                (p.lossy, p.server, p.standby, p.resetcheck),
                (lossy, server, standby, resetcheck)
            );
        }
    }
}
