//! What msgr v1 and msgr2 share, written once: the session and its numbers, the out
//! queue and the sent-but-unacked list, the fault and backoff policy, timers and
//! keepalives, the open session's receive bookkeeping, the address a messenger learns,
//! and [`Machine`], the state machine skeleton both protocols run in.
//!
//! # Map
//!
//! | file | holds |
//! |---|---|
//! | `seq.rs` | [`Seq`], [`ConnectSeq`], [`GlobalSeq`], the messenger's [`GlobalSeqCounter`] |
//! | `mod.rs` | [`Session`]: the numbers and queues that move between machines on a replace |
//! | `queue.rs` | the out queue (priority, FIFO within one; requeue, discard) |
//! | `cookies.rs` | msgr2's [`Cookies`] and their [`CookieSource`] |
//! | `policy.rs` | [`Policy`] (Ceph's `Messenger::Policy`, with its feature bits), [`PolicyTable`] |
//! | `clock.rs` | deadlines that cannot overflow; keepalive wall-clock stamps |
//! | `issues.rs` | peer misbehaviour: counted, logged at WARN once per kind and a few lines a second |
//! | `learned.rs` | [`LearnedAddr`]: the IP a blank address takes from the first acceptor we dial (Ceph's `learned_addr`), or is set |
//! | `config.rs` | [`Config`] of a messenger's machines, its [`Counters`] |
//! | `fault.rs` | [`Fault`] and the pure [`fault_action`] policy |
//! | `event.rs` | [`Event`], what a machine reports to its driver |
//! | `race.rs` | the accept decision's vocabulary: [`AcceptRequest`], [`ExistingSession`], [`Decision`] |
//! | `open.rs` | what only an open session has: receive state, budget, ACK due, signer |
//! | `state.rs` | the state skeleton both protocols fill in, and [`SessionState`] |
//! | `machine.rs` | [`Machine`] and the hooks a protocol plugs into it |
//! | `lifecycle.rs` | the fault shell: open, fault, reconnect, standby, refuse, finish |
//! | `receive.rs` | the open session's receive bookkeeping: seqs, duplicates, acks, budget windows |
//! | `inputs.rs`, `commands.rs`, `outputs.rs`, `timers.rs`, `queries.rs` | [`Machine`]'s API, grouped as quinn's |
//! | `rx.rs` | the receive buffer |
//!
//! Files import downward only: the data files (above `machine.rs` in this table),
//! then `machine.rs`, then the files that add behaviour to [`Machine`].
//!
//! What differs stays with each protocol: v1's connect_seq/global_seq race
//! ([`crate::v1::race`]), msgr2's cookies and its race ([`crate::v2::race`]), framing
//! and the handshakes.

mod clock;
mod commands;
mod config;
mod cookies;
mod event;
mod fault;
mod inputs;
mod issues;
mod learned;
mod lifecycle;
mod machine;
mod open;
mod outputs;
mod policy;
mod queries;
mod queue;
mod race;
mod receive;
mod rx;
mod seq;
mod state;
mod timers;

use std::collections::VecDeque;

use crate::message::Message;
use crate::types::Features;

pub use config::Config;
pub use config::{
    CounterValues, Counters, DEFAULT_FIRST_WINDOW, DEFAULT_PROGRESS_WINDOW, PROGRESS_SHARE,
};
pub use cookies::{CookieSource, Cookies};
pub use event::{AuthVerdict, CloseReason, Event, Initiator, Opened};
pub use fault::{
    fault_action, next_backoff, v1_still_connecting, Fault, FaultAction, FaultContext, Side,
};
pub use issues::{log_limited, WarnLimit, WARN_LINES_PER_SECOND};
pub use learned::LearnedAddr;
pub(crate) use machine::machine_newtype;
pub use machine::Machine;
pub(crate) use machine::Protocol;
pub use policy::{Policy, PolicyTable};
pub use race::{AcceptRequest, Decision, ExistingSession, ExistingState, RequestKind, TableEffect};
pub use seq::{
    ConnectSeq, GlobalSeq, GlobalSeqCounter, Seq, GLOBAL_SEQ_PLAUSIBLE, GLOBAL_SEQ_RAISE_LIMIT,
};
pub use state::SessionState;

pub(crate) use clock::later;
pub(crate) use issues::{PeerIssue, PeerIssues};
pub(crate) use lifecycle::OpenNote;
pub(crate) use queue::OutQueue;
pub(crate) use race::REFUSED_FOREIGN;
pub(crate) use state::State;

/// A session's sequence numbers and queues: what moves between state machines.
///
/// On a replace (msgr-v1.md 3.7, msgr-v2.md 7.3) Ceph hands the new socket to the old
/// connection object; we move the session out of the old machine as a value instead
/// ([`Machine::take_session`]) and into the one that owns the new socket
/// ([`Machine::handle_accept_decision`]).
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// Successful connects in this session (0 for a new session).
    pub(crate) connect_seq: ConnectSeq,
    /// The peer's global_seq of its last accepted connect, ident or reconnect.
    pub(crate) peer_global_seq: GlobalSeq,
    /// Seq of the last message accepted from the peer.
    pub(crate) in_seq: Seq,
    /// Seq of the last message framed. Invariant: `sent` holds seqs
    /// `out_seq - sent.len() + 1 ..= out_seq` in order while the session is lossless.
    /// A session marked lossy frames on without keeping what it frames, so its kept
    /// messages fall below that range; `requeue_sent` (a resume) renumbers them from
    /// `out_seq - sent.len() + 1`, above what the peer received, as Ceph's
    /// `requeue_sent` does.
    pub(crate) out_seq: Seq,
    /// The highest seq of ours the peer acknowledged in this numbering (an ACK, a
    /// message's ack_seq, a reconnect's in_seq), never above `out_seq`: a reconnect
    /// never numbers below it (see `discard_requeued_up_to`).
    pub(crate) acked: Seq,
    /// Messages waiting to be framed.
    pub(crate) queue: OutQueue,
    /// Framed but not yet acked, in seq order: a lossless session's, or what a session
    /// marked lossy had framed before the mark.
    pub(crate) sent: VecDeque<Message>,
    /// Invariant: the sum of `Message::send_cost` over `sent`.
    pub(crate) sent_cost: u64,
    /// msgr2: the session's cookies (both 0 for v1).
    pub(crate) cookies: Cookies,
    /// Negotiated features (`peer & ours`); msgr2 keeps them across a reconnect.
    pub(crate) features: Features,
    /// msgr2: the peer's `gid` from its ident (its entity number).
    pub(crate) peer_gid: i64,
}

/// Room (in messages, 8 KiB) `Session::sent` keeps once acks (nearly) empty it: a window of
/// messages in flight fills and empties it once per round trip and keeps its room
/// (windows of up to this many regrow nothing), but a peer that held its acks back
/// while we sent a burst (as many as the send bound allows: half a million small
/// messages) must not leave the connection holding the burst's room (4 MiB) for its
/// life.
const SENT_KEEP: usize = 1024;

/// A session's numbers at one moment ([`Machine::seqs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seqs {
    /// Seq of the last message received.
    pub in_seq: Seq,
    /// Seq of the last message framed.
    pub out_seq: Seq,
    /// The session's connect_seq.
    pub connect_seq: ConnectSeq,
    /// The peer's global_seq of its last accepted attempt.
    pub peer_global_seq: GlobalSeq,
}

impl Session {
    /// The session's numbers.
    pub fn seqs(&self) -> Seqs {
        Seqs {
            in_seq: self.in_seq,
            out_seq: self.out_seq,
            connect_seq: self.connect_seq,
            peer_global_seq: self.peer_global_seq,
        }
    }

    /// The session's connect_seq.
    pub fn connect_seq(&self) -> ConnectSeq {
        self.connect_seq
    }

    /// The peer's last global_seq.
    pub fn peer_global_seq(&self) -> GlobalSeq {
        self.peer_global_seq
    }

    /// Seq of the last message received.
    pub fn in_seq(&self) -> Seq {
        self.in_seq
    }

    /// Seq of the last message framed.
    pub fn out_seq(&self) -> Seq {
        self.out_seq
    }

    /// msgr2's cookies (zero for v1).
    pub fn cookies(&self) -> Cookies {
        self.cookies
    }

    /// Messages queued or sent-but-unacked.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.sent.len()
    }

    /// What the messages queued or sent-but-unacked cost (`Message::send_cost`).
    pub fn send_cost(&self) -> u64 {
        self.queue.cost() + self.sent_cost
    }

    /// Keeps a framed message until the peer acknowledges it (lossless sessions).
    pub(crate) fn push_sent(&mut self, msg: Message) {
        self.sent_cost += msg.send_cost();
        self.sent.push_back(msg);
    }

    /// Ceph's `requeue_sent`: unacked messages go back to the head of the queue with
    /// their seqs, and out_seq rolls back so they are framed with the same numbers.
    pub(crate) fn requeue_sent(&mut self) {
        if self.sent.is_empty() {
            return;
        }
        self.out_seq = Seq(self.out_seq.0.saturating_sub(self.sent.len() as u64));
        let sent = std::mem::take(&mut self.sent);
        self.sent_cost = 0;
        self.queue.requeue_front(sent.into_iter());
    }

    /// After the peer told us its in_seq: drop requeued messages it already has.
    /// With nothing requeued we number on from the peer's in_seq, as Ceph's
    /// `discard_requeued_up_to` does (`return seq`): a session of ours that never sent
    /// (a fresh connection kept for the peer's reconnect, its connect_seq above ours)
    /// would otherwise frame seqs the peer already has, which it drops as duplicates.
    ///
    /// Never below what the peer acknowledged before (`acked`): a peer whose reconnect
    /// claims less than it acknowledged would otherwise be sent seqs it already has,
    /// drop them as duplicates and acknowledge them with its next ACK, losing them with
    /// no reset told (Ceph numbers from the claim; with messages requeued it keeps its
    /// out_seq, as here).
    pub(crate) fn discard_requeued_up_to(&mut self, peer_in_seq: Seq) {
        if self.sent.is_empty() && !self.queue.has_requeued() {
            self.out_seq = peer_in_seq.max(self.acked);
            self.acked = self.out_seq;
            return;
        }
        self.out_seq.0 += self.queue.discard_requeued_up_to(peer_in_seq);
        self.acked = self.acked.max(peer_in_seq.min(self.out_seq));
    }

    /// A new numbering of the session's messages starts (a new session keeping the
    /// queues of a replaced one): both ways from 1.
    pub(crate) fn renumber_from_start(&mut self) {
        self.in_seq = Seq(0);
        self.out_seq = Seq(0);
        self.acked = Seq(0);
    }

    /// Ceph's `session_reset` (RESETSESSION, peer restart under resetcheck): a brand
    /// new session; everything queued or unacked is discarded.
    pub(crate) fn reset(&mut self) {
        *self = Session::default();
    }

    /// Trims `sent` up to `seq` (an ACK); returns whether anything was trimmed.
    ///
    /// Inlined, the trim out of line: msgr2 carries an ack in every MESSAGE, and most
    /// have nothing to trim (a lossy session keeps nothing sent; a lossless one's acks
    /// repeat between replies), where the call's frame, sized for the trim, was most of
    /// its ~26 instructions.
    #[inline]
    pub(crate) fn ack(&mut self, seq: Seq) -> bool {
        self.acked = self.acked.max(seq.min(self.out_seq));
        if self.sent.front().is_none_or(|m| m.seq() > seq.0) {
            return false;
        }
        self.trim_sent(seq);
        true
    }

    /// [`Session::ack`]'s trim, for an ack that covers at least the first message sent.
    #[inline(never)]
    fn trim_sent(&mut self, seq: Seq) {
        while self.sent.front().is_some_and(|m| m.seq() <= seq.0) {
            if let Some(m) = self.sent.pop_front() {
                self.sent_cost -= m.send_cost();
            }
        }
        let room = self.sent.capacity();
        if room > SENT_KEEP && self.sent.len() <= room / 4 {
            // A burst held unacked is over: its room goes, the steady state's stays. Not
            // only once `sent` is empty: with traffic going on, a message or a few are
            // in flight whenever an ack comes. Shrunk to twice what waits, the room
            // shrinks again only once `sent` halved (no reallocation per ack).
            self.sent.shrink_to(SENT_KEEP.max(self.sent.len() * 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{PRIO_DEFAULT, PRIO_HIGHEST};
    use bytes::Bytes;

    fn msg(prio: u16, tag: u8) -> Message {
        let mut m = Message::new(2, Bytes::from(vec![tag]));
        m.set_priority(prio);
        m
    }

    // ProtocolV1::requeue_sent + discard_requeued_up_to.
    #[test]
    fn requeue_keeps_seqs_and_discard_advances_out_seq() {
        let mut s = Session::default();
        for i in 1..=3u64 {
            let mut m = msg(PRIO_DEFAULT, i as u8);
            m.set_seq(i);
            s.sent.push_back(m);
        }
        s.out_seq = Seq(3);
        s.queue.push_back(msg(PRIO_HIGHEST, 9));
        s.requeue_sent();
        assert_eq!(s.out_seq, Seq(0));
        assert!(s.queue.has_requeued());
        s.discard_requeued_up_to(Seq(2));
        assert_eq!(s.out_seq, Seq(2));
        let first = s.queue.pop().map(|m| m.seq());
        assert_eq!(first, Some(3));
        assert_eq!(s.queue.pop().map(|m| m.front()[0]), Some(9));
    }

    // Ceph's discard_requeued_up_to with nothing requeued: `return seq`.
    #[test]
    fn with_nothing_requeued_out_seq_numbers_on_from_the_peers_in_seq() {
        let mut s = Session::default();
        s.queue.push_back(msg(PRIO_DEFAULT, 1));
        s.discard_requeued_up_to(Seq(100));
        assert_eq!(s.out_seq, Seq(100), "the next message is seq 101, above what the peer has");
        assert_eq!(s.queue.len(), 1, "a queued message is not a requeued one");
    }

    // A reconnect claiming less than the peer acknowledged numbers on above what it
    // acknowledged (its seqs at or below would be dropped as duplicates and then
    // acknowledged as delivered); a claim above it is followed.
    #[test]
    fn a_reconnect_never_numbers_below_what_the_peer_acknowledged() {
        let mut s = Session::default();
        for seq in 1..=5u64 {
            let mut m = msg(PRIO_DEFAULT, seq as u8);
            m.set_seq(seq);
            s.push_sent(m);
        }
        s.out_seq = Seq(5);
        assert!(s.ack(Seq(5)));
        s.requeue_sent();
        s.discard_requeued_up_to(Seq(2));
        assert_eq!(s.out_seq, Seq(5), "the next message is seq 6");
        s.discard_requeued_up_to(Seq(9));
        assert_eq!(s.out_seq, Seq(9));
        // An ACK beyond what was framed does not raise the floor above out_seq.
        s.ack(Seq(100));
        s.discard_requeued_up_to(Seq(9));
        assert_eq!(s.out_seq, Seq(9));
    }

    // A peer holding its acks back while we send many small messages grows `sent` (as
    // the send bound allows: 256 MiB of 512-byte costs is half a million messages);
    // once its acks empty it, the connection must not keep the room for its life.
    #[test]
    fn sent_gives_back_its_room_once_acked() {
        const N: u64 = 100_000;
        let mut s = Session::default();
        for seq in 1..=N {
            let mut m = Message::new(2, Bytes::new());
            m.set_seq(seq);
            s.out_seq = Seq(seq);
            s.push_sent(m);
        }
        let grown = s.sent.capacity();
        assert!(s.ack(Seq(N / 2)));
        assert!(s.sent.capacity() >= N as usize / 2, "half still waits: the room stays");
        assert!(s.ack(Seq(N)));
        let kept = s.sent.capacity() * std::mem::size_of::<Message>();
        assert!(
            kept <= SENT_KEEP * std::mem::size_of::<Message>(),
            "{N} messages acked, `sent` keeps {kept} bytes of room (grew to {grown} slots)"
        );
    }

    // The same burst, but the traffic goes on and the peer's acks (as any peer's whose
    // ACK crosses our next message, or a hostile one acking all but the newest) never
    // empty `sent`: one message or a few are always in flight. The burst's room must not
    // stay for the connection's life because `sent` is never seen empty.
    #[test]
    fn sent_gives_back_its_room_while_a_message_stays_in_flight() {
        const N: u64 = 100_000;
        let mut s = Session::default();
        let send = |s: &mut Session, seq: u64| {
            let mut m = Message::new(2, Bytes::new());
            m.set_seq(seq);
            s.out_seq = Seq(seq);
            s.push_sent(m);
        };
        for seq in 1..=N {
            send(&mut s, seq);
        }
        let grown = s.sent.capacity();
        // Acked up to the one before the newest, then one more sent and acked so, each
        // round trip leaving the newest in flight.
        assert!(s.ack(Seq(N - 1)));
        for seq in N + 1..=N + 10 {
            send(&mut s, seq);
            assert!(s.ack(Seq(seq - 1)));
            assert_eq!(s.sent.len(), 1);
        }
        let kept = s.sent.capacity() * std::mem::size_of::<Message>();
        assert!(
            kept <= SENT_KEEP * std::mem::size_of::<Message>(),
            "{N} messages acked but one, `sent` keeps {kept} bytes of room (grew to {grown} slots)"
        );
    }

    // `ack` returns early when it has nothing to trim (every msgr2 MESSAGE carries an
    // ack): it must still record what the peer acknowledged, and a new ack still trims.
    #[test]
    fn an_ack_with_nothing_to_trim_still_records_it_and_a_new_one_trims() {
        let mut s = Session { out_seq: Seq(5), ..Session::default() };
        // A lossy session keeps nothing sent: still, the floor a reconnect numbers from.
        assert!(!s.ack(Seq(3)));
        assert_eq!(s.acked, Seq(3));
        let one = msg(PRIO_DEFAULT, 1).send_cost();
        for seq in 4..=5u64 {
            let mut m = msg(PRIO_DEFAULT, seq as u8);
            m.set_seq(seq);
            s.push_sent(m);
        }
        assert!(!s.ack(Seq(3)), "an ack repeated: nothing to trim");
        assert_eq!((s.sent.len(), s.sent_cost, s.acked), (2, 2 * one, Seq(3)));
        assert!(s.ack(Seq(4)));
        assert_eq!((s.sent.len(), s.sent_cost, s.acked), (1, one, Seq(4)));
        assert_eq!(s.sent.front().map(Message::seq), Some(5));
        assert!(s.ack(Seq(9)), "beyond what was framed: all of it, acked up to out_seq");
        assert_eq!((s.sent.len(), s.sent_cost, s.acked), (0, 0, Seq(5)));
        assert!(!s.ack(Seq(9)));
        assert_eq!(s.acked, Seq(5));
    }

    #[test]
    fn send_cost_follows_the_messages_through_every_stage() {
        let mut s = Session::default();
        let one = msg(PRIO_DEFAULT, 1).send_cost();
        for _ in 0..3 {
            s.queue.push_back(msg(PRIO_DEFAULT, 1));
        }
        assert_eq!(s.send_cost(), 3 * one);
        for seq in 1..=2u64 {
            let mut m = s.queue.pop().expect("queued");
            m.set_seq(seq);
            s.out_seq = Seq(seq);
            s.push_sent(m);
        }
        assert_eq!(s.send_cost(), 3 * one);
        s.ack(Seq(1));
        assert_eq!(s.send_cost(), 2 * one);
        s.requeue_sent();
        assert_eq!(s.send_cost(), 2 * one);
        s.discard_requeued_up_to(Seq(2));
        assert_eq!(s.send_cost(), one);
        s.reset();
        assert_eq!(s.send_cost(), 0);
    }
}
