//! The open session's receive bookkeeping, for both protocols: in_seq and duplicates,
//! the ACK that is due, the receive budget a message asks for in windows, and the
//! progress its payload must make.

use std::time::Instant;

use super::config::Counters;
use super::event::Event;
use super::machine::{Machine, Protocol};
use super::open::Budget;
use super::seq::Seq;

impl<P: Protocol> Machine<P> {
    /// A message with `seq` was taken (not a duplicate): in_seq moves to it, and a
    /// lossless session owes the peer an ACK.
    ///
    /// Inlined, with the gap's report out of line: as a call, its frame (sized for the
    /// report's formatting) cost ~12 instructions per message.
    #[inline]
    pub(crate) fn note_received(&mut self, seq: Seq) {
        self.advance_in_seq(seq);
        let lossless = !self.lossy;
        if let Some(open) = self.state.open_mut() {
            open.ack_pending |= lossless;
        }
    }

    /// [`Machine::note_received`] but for the ACK owed, which a caller holding the open
    /// session sets itself (`ack_pending |= !lossy`): one look-up of the open state fewer
    /// per message.
    #[inline]
    pub(crate) fn advance_in_seq(&mut self, seq: Seq) {
        let expected = self.session.in_seq.next();
        if seq > expected {
            self.note_seq_gap(seq, expected);
        }
        self.session.in_seq = seq;
    }

    /// A message arrived with `seq` beyond the `expected` one: reported through the
    /// peer-issue limit (a peer numbering every message with a gap wrote a line per
    /// message).
    #[cold]
    #[inline(never)]
    fn note_seq_gap(&mut self, seq: Seq, expected: Seq) {
        self.peer_issue(
            super::issues::PeerIssue::SeqGap,
            format_args!("seq gap: got {seq}, expected {expected}"),
        );
    }

    /// Whether a message with `seq` was already delivered (a resend the peer could not
    /// know we had): then it is counted and the caller lets it stream by unstored.
    pub(crate) fn is_duplicate(&mut self, seq: Seq) -> bool {
        if seq > self.session.in_seq {
            return false;
        }
        log::debug!(target: P::LOG, "{self}: dropping duplicate seq {seq} (in_seq {})", self.session.in_seq);
        Counters::bump(&self.config.counters.old_seq_dropped);
        self.duplicates_dropped += 1;
        true
    }

    /// Asks the driver for budget for `bytes` of the message's payload and stops reading
    /// until [`Machine::grant_budget`]. `first`: the message's header just arrived.
    pub(crate) fn request_budget(&mut self, bytes: u64, first: bool) {
        let now = self.now;
        let Some(open) = self.state.open_mut() else { return };
        if first {
            // This request tells the driver that what it holds is stale.
            open.credit.held_back = false;
        }
        open.budget.ask(bytes, first, now);
        self.events.push_back(Event::NeedBudget { bytes, first });
    }

    /// Asks for the next window of a message whose payload still needs `uncovered`
    /// bytes beyond what was granted ([`Budget::window`]). `in_hand`: bytes of input
    /// taken out of the receive buffer while they are decoded (in memory as much as
    /// what is buffered).
    pub(crate) fn request_window(&mut self, uncovered: u64, first: bool, in_hand: usize) {
        let Some(open) = self.state.open() else { return };
        let budget = if first { Budget::default() } else { open.budget };
        let buffered = self.rx.len().saturating_add(in_hand);
        let bytes = budget.window(uncovered, &self.config, buffered);
        self.request_budget(bytes, first);
    }

    /// The first window of a message whose payload is `len` bytes (`in_hand`: as for
    /// [`Machine::request_window`]): taken from the
    /// credit granted ahead when the window covers the whole payload and the credit
    /// covers the window (then the message is read on at once: returns true), else asked
    /// for with [`super::Event::NeedBudget`] (returns false: reading stops).
    pub(crate) fn request_first_window(&mut self, now: Instant, len: u64, in_hand: usize) -> bool {
        let buffered = self.rx.len().saturating_add(in_hand);
        let Some(open) = self.state.open_mut() else { return false };
        let window = Budget::default().window(len, &self.config, buffered);
        if window < len || !open.credit.take(len) {
            self.request_budget(window, true);
            if let Some(open) = self.state.open_mut() {
                open.budget.set_len(len);
            }
            return false;
        }
        open.budget.ask(len, true, now);
        open.budget.set_len(len);
        open.budget.funded_by_credit(len);
        let Some((bytes, first)) = self.take_grant(now, P::TIMED_PAYLOAD) else { return false };
        if let Err(fault) = P::grant(self, bytes, first) {
            self.fault(now, fault);
            return false;
        }
        true
    }

    /// The driver granted the outstanding request: returns `(bytes, first)`, and (when
    /// `timed`) starts the payload's progress clock. `None` when nothing was asked.
    pub(crate) fn take_grant(&mut self, now: Instant, timed: bool) -> Option<(u64, bool)> {
        self.state.open_mut()?.budget.grant(timed.then_some(now))
    }

    /// Counts `n` bytes of the message being received towards its progress deadline.
    pub(crate) fn note_payload_progress(&mut self, now: Instant, n: u64) {
        let window = self.config.progress_window;
        if let Some(open) = self.state.open_mut() {
            open.budget.progress(n, window, now);
        }
    }
}
