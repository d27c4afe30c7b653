//! The numbers of a session, as types: message seqs, connect_seq, global_seq, and the
//! messenger's global_seq counter.
//!
//! Both protocols keep them as 64-bit values; msgr v1's connect message and reply
//! carry 32-bit fields, so v1 sends the low 32 bits ([`ConnectSeq::to_v1`],
//! [`GlobalSeq::to_v1`]) and reads its peer's values back unchanged. A v1 session
//! would need four billion reconnects before the two ever differ.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A message sequence number (`in_seq`, `out_seq`, `ack_seq`, a message's `seq`).
///
/// 0 means "none yet": the first message of a session is 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq that follows this one.
    pub fn next(self) -> Seq {
        Seq(self.0.wrapping_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A session's `connect_seq`: how many times it was (re)connected (0 for a new one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectSeq(pub u64);

impl ConnectSeq {
    /// The next connect_seq.
    pub fn next(self) -> ConnectSeq {
        ConnectSeq(self.0.wrapping_add(1))
    }

    /// A value from a v1 connect or connect reply.
    pub fn from_v1(v: u32) -> ConnectSeq {
        ConnectSeq(u64::from(v))
    }

    /// The value a v1 connect or connect reply carries (the low 32 bits).
    pub fn to_v1(self) -> u32 {
        self.0 as u32
    }

    /// The next connect_seq of a v1 session: within v1's 32-bit field, wrapping to 0
    /// as Ceph's `uint32_t` does. (A value above the field could never be met by a
    /// connect again: every reconnect would be older than the session.)
    pub fn next_v1(self) -> ConnectSeq {
        ConnectSeq::from_v1(self.to_v1().wrapping_add(1))
    }
}

impl fmt::Display for ConnectSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection attempt's `global_seq` (Ceph's per-messenger attempt counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlobalSeq(pub u64);

impl GlobalSeq {
    /// A value from a v1 connect or connect reply.
    pub fn from_v1(v: u32) -> GlobalSeq {
        GlobalSeq(u64::from(v))
    }

    /// The value a v1 connect or connect reply carries (the low 32 bits).
    pub fn to_v1(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for GlobalSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The highest global_seq our acceptors take in a connect and our connectors in a reply
/// (half of v1's 32-bit field; Ceph's counter is 32 bits): no messenger makes that many
/// connect attempts, and the counter, shared by both protocols, must stay where v1's low
/// 32 bits carry it.
pub const GLOBAL_SEQ_PLAUSIBLE: u32 = u32::MAX / 2;

/// The highest global_seq a peer's retry may raise the counter to, half of
/// [`GLOBAL_SEQ_PLAUSIBLE`]: the counter goes on counting every attempt of every
/// connection after a raise, and a raise to the limit itself left the very next attempts
/// above what our acceptors take, so no connect of ours to them opened again.
pub const GLOBAL_SEQ_RAISE_LIMIT: u32 = GLOBAL_SEQ_PLAUSIBLE / 2;

/// The messenger's connection-attempt counter (Ceph's `AsyncMessenger::global_seq`),
/// shared by all its connections of both protocols.
#[derive(Debug, Default)]
pub struct GlobalSeqCounter(AtomicU64);

impl GlobalSeqCounter {
    /// A counter whose first [`GlobalSeqCounter::next`] is 1.
    pub fn new() -> Self {
        GlobalSeqCounter::default()
    }

    /// A counter that hands out `last + 1` next (a messenger continuing a sequence).
    pub fn after(last: GlobalSeq) -> Self {
        GlobalSeqCounter(AtomicU64::new(last.0))
    }

    /// The last value handed out (0 before the first).
    pub fn current(&self) -> GlobalSeq {
        GlobalSeq(self.0.load(Ordering::Relaxed))
    }

    /// Takes the next global_seq (Ceph's `get_global_seq()`).
    #[doc(alias = "get_global_seq")]
    pub fn next(&self) -> GlobalSeq {
        GlobalSeq(self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1))
    }

    /// Sets the counter (tests that make a messenger forget its attempts: feature
    /// `testing` only).
    #[cfg(any(test, feature = "testing"))]
    pub fn set(&self, to: GlobalSeq) {
        self.0.store(to.0, Ordering::Relaxed);
    }

    /// Whether a peer's retry naming `seen` may be followed with [`Self::above`]: it
    /// raises the counter at most to [`GLOBAL_SEQ_RAISE_LIMIT`] + 1, or not at all (a
    /// value this counter already passed, such as one of our own connects).
    pub fn may_raise_to(&self, seen: GlobalSeq) -> bool {
        seen.0 <= u64::from(GLOBAL_SEQ_PLAUSIBLE)
            && (seen.0 <= u64::from(GLOBAL_SEQ_RAISE_LIMIT) || seen <= self.current())
    }

    /// Raises the counter above `seen` and takes the next value (Ceph's
    /// `get_global_seq(old)` after a RETRY_GLOBAL).
    pub fn above(&self, seen: GlobalSeq) -> GlobalSeq {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = cur.max(seen.0).wrapping_add(1);
            match self.0.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return GlobalSeq(next),
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_starts_at_one_and_jumps_above_what_it_saw() {
        let c = GlobalSeqCounter::new();
        assert_eq!(c.current(), GlobalSeq(0));
        assert_eq!(c.next(), GlobalSeq(1));
        assert_eq!(c.above(GlobalSeq(40)), GlobalSeq(41));
        assert_eq!(c.above(GlobalSeq(3)), GlobalSeq(42), "never goes back");
        assert_eq!(c.current(), GlobalSeq(42));
    }

    #[test]
    fn v1_fields_carry_the_low_32_bits() {
        assert_eq!(ConnectSeq(0x1_0000_0005).to_v1(), 5);
        assert_eq!(GlobalSeq::from_v1(7), GlobalSeq(7));
        assert_eq!(Seq(9).next(), Seq(10));
    }
}
