//! Peer misbehaviour a connection saw: counted always, logged at WARN once per kind.

/// Kinds of peer misbehaviour that a peer could trigger in bulk. Each is logged at WARN
/// the first time it happens on a connection and at DEBUG afterwards, and always counted
/// ([`Machine::poll_peer_issues`]), so a flood costs one log line per connection and
/// kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerIssue {
    /// A connect or ident we answer with a retry or refusal (bad protocol version,
    /// features, authorizer), or too many of them.
    BadConnect,
    /// A connect reply or ident reply we cannot accept.
    BadConnectReply,
    /// A banner or address that is not what it must be.
    BadBanner,
    /// A message or frame that failed to decode (crc, limits, footer).
    BadMessage,
    /// An unknown tag in the open session.
    UnknownTag,
}

impl PeerIssue {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The peer issues of one machine.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerIssues {
    /// [`PeerIssue`] kinds already logged at WARN on this connection (one bit each).
    warned: u8,
    /// Issues seen since the last [`Machine::poll_peer_issues`].
    seen: u64,
    /// Of those, the ones not logged at WARN.
    unlogged: u64,
}

impl PeerIssues {
    /// Counts `issue`; true when it is the first of its kind on this connection (log it
    /// at WARN).
    pub(crate) fn note(&mut self, issue: PeerIssue) -> bool {
        self.seen += 1;
        if self.warned & issue.bit() == 0 {
            self.warned |= issue.bit();
            true
        } else {
            self.unlogged += 1;
            false
        }
    }

    /// Issues seen and not logged at WARN since the last call.
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.seen, self.unlogged);
        self.seen = 0;
        self.unlogged = 0;
        counts
    }
}
