//! The messenger's policies per peer type and their throttlers (Ceph's `Policy` table of
//! a messenger: `set_default_policy`, `set_policy`, `set_policy_throttlers`). The table
//! is also the protocol configuration's [`protocol::PolicyTable`]: an accepted
//! connection reads its policy's feature bits from it the moment the peer names its type.

use std::collections::HashMap;
use std::sync::Arc;

use dispatch::Throttle;
use parking_lot::RwLock;
use protocol::types::EntityType;

use crate::machine::Policy;
use protocol::PolicyTable;

/// The (bytes, messages) policy throttlers of one peer type.
pub(crate) type ThrottlerPair = (Option<Arc<Throttle>>, Option<Arc<Throttle>>);

/// Policies and throttlers by peer type. Read when a connection learns its peer's type
/// (once per connection), written by the messenger's setters.
pub(crate) struct Policies(RwLock<PolicySet>);

struct PolicySet {
    default: Policy,
    by_type: HashMap<u8, Policy>,
    /// (bytes, messages) throttlers charged for every received message from that peer type.
    throttlers: HashMap<u8, ThrottlerPair>,
}

impl Policies {
    /// Every peer gets [`Policy::lossless_peer`] (lossless, standby, no resetcheck) until
    /// told otherwise. Not Ceph's default: its default-constructed `Policy()` is lossless
    /// with no standby and resetcheck (nor is it `Policy::default()`, which has neither).
    pub(crate) fn new() -> Policies {
        Policies(RwLock::new(PolicySet {
            default: Policy::lossless_peer(),
            by_type: HashMap::new(),
            throttlers: HashMap::new(),
        }))
    }

    /// The policy for peers of type `peer`.
    pub(crate) fn policy(&self, peer: EntityType) -> Policy {
        let set = self.0.read();
        set.by_type.get(&peer.0).copied().unwrap_or(set.default)
    }

    /// The policy for peers with no policy of their own.
    pub(crate) fn default_policy(&self) -> Policy {
        self.0.read().default
    }

    /// The throttlers charged for messages from peers of type `peer`.
    pub(crate) fn throttlers(&self, peer: EntityType) -> ThrottlerPair {
        self.0.read().throttlers.get(&peer.0).cloned().unwrap_or((None, None))
    }

    pub(crate) fn set_default(&self, policy: Policy) {
        self.0.write().default = policy;
    }

    pub(crate) fn set(&self, peer: EntityType, policy: Policy) {
        self.0.write().by_type.insert(peer.0, policy);
    }

    pub(crate) fn set_throttlers(&self, peer: EntityType, throttlers: ThrottlerPair) {
        self.0.write().throttlers.insert(peer.0, throttlers);
    }
}

impl PolicyTable for Policies {
    fn policy(&self, peer_type: EntityType) -> Policy {
        Policies::policy(self, peer_type)
    }
}
