//! Per-peer-type connection policy (Ceph's `Messenger::Policy`, `src/msg/Policy.h`).

use crate::types::{EntityType, Features};

/// How connections to or from one peer type behave (msgr-v1.md 3.10), and which
/// features we offer and demand of that type.
///
/// The throttlers of Ceph's policy live in the messenger; this is the part the session
/// state machine needs. Cheap to copy (four flags and two feature words).
///
/// The feature bits, as Ceph's `features_supported` and `features_required`: a
/// connector advertises its policy's `features_supported` for the type it dials (v1
/// CONNECT, msgr2 CLIENT_IDENT with `features_required`) and refuses a peer whose
/// answer lacks a `features_required` bit; an acceptor looks up its policy for the
/// peer's type the moment it learns it ([`PolicyTable`], v1 CONNECT's `host_type`,
/// msgr2 HELLO's entity type), refuses a peer lacking a `features_required` bit (v1
/// `FEATURES` reply, msgr2 IDENT_MISSING_FEATURES) and advertises its
/// `features_supported`. Either way the connection's features are the peer's supported
/// ones intersected with ours. So an OSD can require `SERVER_*` bits of OSD peers and
/// not of clients.
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
    /// The features we advertise to peers of this type (Ceph's `features_supported`;
    /// every constructor: [`Features::PACIFIC_ADVERTISED`]).
    pub features_supported: Features,
    /// The features a peer of this type must have, else the handshake is refused
    /// (Ceph's `features_required`; every constructor: [`Features::REQUIRED_DEFAULT`];
    /// msgr2 adds its `MSG_ADDR2`).
    pub features_required: Features,
}

impl Policy {
    /// The given flags with the default feature bits.
    const fn flags(lossy: bool, server: bool, standby: bool, resetcheck: bool) -> Self {
        Policy {
            lossy,
            server,
            standby,
            resetcheck,
            features_supported: Features::PACIFIC_ADVERTISED,
            features_required: Features::REQUIRED_DEFAULT,
        }
    }

    /// The same policy advertising `supported` and requiring `required` (Ceph's
    /// `Policy::features_supported`, `features_required`; an OSD requires, say,
    /// `SERVER_*` bits of its OSD peers this way).
    pub const fn with_features(self, supported: Features, required: Features) -> Self {
        Policy { features_supported: supported, features_required: required, ..self }
    }

    /// `stateful_server`: lossless, server, standby, resetcheck.
    pub const fn stateful_server() -> Self {
        Policy::flags(false, true, true, true)
    }
    /// `stateless_server` (and `stateless_registered_server`): lossy server; how a
    /// monitor or an OSD treats clients. Its clients' sessions are registered, as
    /// `stateless_registered_server`'s (an OSD's public messenger): a client connecting
    /// again from the same address resets its old session. (Ceph's monitor does not
    /// register them, and leaves the old connection to fail on its own.)
    pub const fn stateless_server() -> Self {
        Policy::flags(true, true, false, false)
    }
    /// `lossless_peer`: lossless, standby, no resetcheck.
    pub const fn lossless_peer() -> Self {
        Policy::flags(false, false, true, false)
    }
    /// `lossless_peer_reuse`: lossless, standby, resetcheck; how monitors treat each other.
    pub const fn lossless_peer_reuse() -> Self {
        Policy::flags(false, false, true, true)
    }
    /// `lossy_client`: what librados and the `ceph` CLI use for everything.
    pub const fn lossy_client() -> Self {
        Policy::flags(true, false, false, false)
    }
    /// `lossless_client`: lossless, no standby, resetcheck.
    pub const fn lossless_client() -> Self {
        Policy::flags(false, false, false, true)
    }
}

impl Default for Policy {
    /// Lossless, not a server, no standby, no resetcheck: what an accepted machine holds
    /// until its peer's type decides its policy (the accept decision). Not Ceph's
    /// default-constructed `Policy()`, which has resetcheck. The default feature bits.
    fn default() -> Self {
        Policy::flags(false, false, false, false)
    }
}

/// The policy for each peer type, where an accepting machine looks up its policy's
/// feature bits as soon as it learns its peer's type (v1 CONNECT's `host_type`, msgr2
/// HELLO's entity type), before the messenger's accept decision
/// ([`super::Machine::handle_accept_decision`]) brings the rest of the policy: Ceph's
/// `messenger->get_policy(peer_type)` in `handle_connect_message_2` and `handle_hello`.
/// A messenger shares its table of policies through [`super::Config::policies`]; a
/// single [`Policy`] is one table for every type.
pub trait PolicyTable: Send + Sync {
    /// The policy for peers of type `peer_type`.
    fn policy(&self, peer_type: EntityType) -> Policy;
}

impl PolicyTable for Policy {
    fn policy(&self, _peer_type: EntityType) -> Policy {
        *self
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
            // Every preset keeps the messenger's default feature bits.
            assert_eq!(p.features_supported, Features::PACIFIC_ADVERTISED);
            assert_eq!(p.features_required, Features::REQUIRED_DEFAULT);
        }
    }

    #[test]
    fn with_features_keeps_flags_and_table_of_one() {
        let p = Policy::stateless_server()
            .with_features(Features::PACIFIC_ADVERTISED, Features::SERVER_NAUTILUS);
        assert_eq!(
            (p.lossy, p.server, p.features_required),
            (true, true, Features::SERVER_NAUTILUS)
        );
        assert_eq!(PolicyTable::policy(&p, EntityType::OSD), p);
    }
}
