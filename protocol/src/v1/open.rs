//! The open v1 session (msgr-v1.md 3.9; Ceph's `ProtocolV1::read_event`,
//! `handle_message_*`, `write_event`): tags, ACKs, keepalives and messages in, ACKs,
//! keepalives and framed messages out.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::message::{
    DecodeOptions, EncodeOptions, MessageDecoder, Progress, FRAMES_PER_RESERVE, GATHERED_PER_FRAME,
};
use crate::session::CloseReason;
use crate::session::{Config, Counters, Event, Fault, Initiator, Machine, PeerIssue, Seq};
use crate::types::Features;
use crate::wire::{
    ack_frame, decode_ack, decode_keepalive_stamp, keepalive2_frame, FooterFormat, KeepaliveStamp,
    Tag,
};

use super::state::{Next, OpenRx, LOG, V1};

/// How many payload bytes one `poll_transmit` call frames at most, so one busy
/// connection cannot build an unbounded write list (the driver calls again after
/// writing).
const TRANSMIT_BATCH_BYTES: usize = 1 << 20;

/// The receive side of a session opening with `features` negotiated.
pub(crate) fn open_rx(config: &Config, features: Features) -> OpenRx {
    let decoder = MessageDecoder::new(DecodeOptions {
        limits: config.limits,
        crc: encode_options(config, features),
    });
    OpenRx { next: Next::Tag, decoder }
}

/// How messages are framed and checked on a session with `features`.
fn encode_options(config: &Config, features: Features) -> EncodeOptions {
    EncodeOptions {
        crc_header: config.crc_header,
        crc_data: config.crc_data,
        footer: FooterFormat::for_features(features),
    }
}

/// One unit of open-session input; false when more input (or budget) is needed.
pub(crate) fn read(m: &mut Machine<V1>, now: Instant) -> bool {
    let Some(open) = m.state.open_mut() else { return false };
    if open.budget.is_waiting() {
        return false;
    }
    match open.rx.next {
        Next::Tag => {
            let Some(tag) = m.rx.take_byte().map(Tag) else { return false };
            let next = match tag {
                Tag::MSG => {
                    // Straight on to the message: a round of the input loop per tag
                    // showed per message.
                    open.rx.next = Next::Msg { discard: false };
                    return read_message(m, now, false);
                }
                Tag::ACK => Next::Ack,
                Tag::KEEPALIVE => {
                    m.keepalive.last_received = Some(now);
                    m.note_keepalive();
                    Next::Tag
                }
                Tag::KEEPALIVE2 => Next::Keepalive2,
                Tag::KEEPALIVE2_ACK => Next::Keepalive2Ack,
                Tag::CLOSE => {
                    log::info!(target: LOG, "{m}: peer sent CLOSE");
                    m.session.reset();
                    m.events.push_back(Event::Reset);
                    m.finish(Initiator::Peer, CloseReason::PeerClose);
                    return false;
                }
                other => {
                    m.peer_issue(PeerIssue::UnknownTag, format_args!("unknown tag {}", other.0));
                    m.fault(now, Fault::UnknownTag(other.0));
                    return false;
                }
            };
            set_next(m, next);
            true
        }
        Next::Ack => {
            let Some(b) = m.rx.contiguous(8) else { return false };
            let seq = Seq(decode_ack(b).map(|(s, _)| s).unwrap_or(0));
            m.rx.consume(8);
            set_next(m, Next::Tag);
            // Read on a lossy session too: one marked disposable keeps what it sent before
            // until it is acknowledged (`Machine::mark_lossy`).
            m.session.ack(seq);
            if m.config.report_acks {
                m.note_acked(seq);
            }
            true
        }
        next @ (Next::Keepalive2 | Next::Keepalive2Ack) => {
            let Some(b) = m.rx.contiguous(8) else { return false };
            let stamp = match decode_keepalive_stamp(b) {
                Ok((s, _)) => s,
                Err(e) => {
                    m.fault(now, Fault::Decode(e));
                    return false;
                }
            };
            m.rx.consume(8);
            if next == Next::Keepalive2 {
                m.keepalive.ack_owed = Some(stamp);
                m.keepalive.last_received = Some(now);
                m.note_keepalive();
            } else {
                m.keepalive.last_ack = Some(stamp);
                m.note_keepalive_ack(stamp);
            }
            set_next(m, Next::Tag);
            true
        }
        Next::Msg { discard } => read_message(m, now, discard),
    }
}

fn set_next(m: &mut Machine<V1>, next: Next) {
    if let Some(open) = m.state.open_mut() {
        open.rx.next = next;
    }
}

/// Feeds message bytes to the decoder (or lets a duplicate stream by).
fn read_message(m: &mut Machine<V1>, now: Instant, discard: bool) -> bool {
    if discard {
        return skip_message(m, now);
    }
    // A header whose payload the receive credit covers goes straight on to the payload
    // in this call: a return to the input loop in between showed per message. (Twice at
    // most: a granted header moves the decoder on to the payload.)
    for _ in 0..2 {
        match feed_message(m, now) {
            Fed::HeaderGranted => continue,
            Fed::Done(more) => return more,
        }
    }
    true
}

/// What one [`feed_message`] call did.
enum Fed {
    /// A header was read and its payload allowed at once: feed again.
    HeaderGranted,
    /// Whether the input loop should go on.
    Done(bool),
}

/// Lets a duplicate message's bytes stream by.
fn skip_message(m: &mut Machine<V1>, now: Instant) -> bool {
    let Some(open) = m.state.open_mut() else { return false };
    let mut chunk = m.rx.pop_chunk().unwrap_or_default();
    let done = open.rx.decoder.skip_input(&mut chunk);
    m.rx.unpop_chunk(chunk);
    match done {
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            false
        }
        Ok(true) => {
            set_next(m, Next::Tag);
            true
        }
        Ok(false) => m.rx.len() > 0,
    }
}

/// Feeds message bytes to the decoder once, and goes on with the next message while
/// each one arrived whole behind the last.
fn feed_message(m: &mut Machine<V1>, now: Instant) -> Fed {
    // No buffered input is fine: a direct read may have completed the segment.
    let mut chunk = m.rx.pop_chunk().unwrap_or_default();
    let fed = feed_chunk(m, now, &mut chunk);
    m.rx.unpop_chunk(chunk);
    fed
}

/// [`feed_message`] on the first buffered chunk, taken out of the receive buffer
/// while the messages in it are decoded.
///
/// Why a loop here: a batch of small messages arrives in one read, and a return to the
/// input loop per message (the chunk taken out and put back, the state looked up, the
/// tag read through the buffer) showed in profiles. A message's tag is read here only
/// when the message follows another in the same chunk; every other case goes back
/// through the input loop as before. The loop ends with the chunk, which each round
/// consumes at least a tag of.
fn feed_chunk(m: &mut Machine<V1>, now: Instant, chunk: &mut Bytes) -> Fed {
    let window = m.config.progress_window;
    let lossless = !m.lossy;
    loop {
        let in_seq = m.session.in_seq;
        // The one look-up of the open state per message: the fields used below are
        // reached through it (looked up again per use, it was ~22 instructions per
        // round trip).
        let Some(open) = m.state.open_mut() else { return Fed::Done(false) };
        let before = chunk.len();
        // A message that arrived whole is taken in this call when it is no duplicate
        // and the credit covers it: what `HeaderReady` below decides, the same way (its
        // first window covers the payload, which is all in memory; the budget has
        // nothing to clock). Anything else comes back as `HeaderReady`.
        let credit = &mut open.credit;
        let progress = open
            .rx
            .decoder
            .feed_admitting(chunk, |h| Seq(h.seq) > in_seq && credit.take(h.payload_len()));
        let used = before - chunk.len();
        // `Machine::note_payload_progress`, on the open state in hand.
        open.budget.progress(used as u64, window, now);
        let mut msg = match progress {
            Ok(Progress::Message(msg)) => msg,
            Err(e) => {
                m.peer_issue(PeerIssue::BadMessage, format_args!("bad message: {e}"));
                m.fault(now, Fault::Decode(e));
                return Fed::Done(false);
            }
            Ok(Progress::NeedMore) => {
                let uncovered = m.state.open().and_then(|o| o.rx.decoder.budget_needed());
                if let Some(uncovered) = uncovered {
                    // The rest of the chunk is in memory too: a message that arrived
                    // whole is taken in one window, not in doubling ones and copies.
                    m.request_window(uncovered, false, chunk.len());
                    return Fed::Done(false);
                }
                return Fed::Done(!chunk.is_empty() || m.rx.len() > 0);
            }
            Ok(Progress::HeaderReady(h)) => {
                if m.is_duplicate(Seq(h.seq)) {
                    // Already delivered: let it stream by without budget and without
                    // storing it, then read on.
                    let skipped = m.state.open_mut().map(|o| o.rx.decoder.skip());
                    if let Some(Err(e)) = skipped {
                        m.fault(now, Fault::Decode(e));
                        return Fed::Done(false);
                    }
                    set_next(m, Next::Msg { discard: true });
                    return Fed::Done(true);
                }
                return if m.request_first_window(now, h.payload_len(), chunk.len()) {
                    Fed::HeaderGranted
                } else {
                    Fed::Done(false)
                };
            }
        };
        open.rx.next = Next::Tag;
        open.budget.finish();
        let header = open.rx.decoder.last_header();
        if let Some(Err(e)) = open.signer.as_ref().map(|s| s.check(header, msg.footer())) {
            Counters::bump(&m.config.counters.bad_signatures);
            m.peer_issue(PeerIssue::BadMessage, format_args!("{e}"));
            m.fault(now, Fault::Auth(e));
            return Fed::Done(false);
        }
        // The next message's tag, when it is in this chunk: on to its header here.
        let next_in_chunk = chunk.first() == Some(&Tag::MSG.0);
        if next_in_chunk {
            open.rx.next = Next::Msg { discard: false };
        }
        // `Machine::note_received`, its ACK owed set on the open state in hand.
        open.ack_pending |= lossless;
        m.advance_in_seq(Seq(msg.seq()));
        msg.set_recv_stamp(now);
        m.events.push_back(Event::Message(msg));
        if !next_in_chunk {
            return Fed::Done(true);
        }
        chunk.advance(1);
    }
}

/// While open: the ACK we owe, a pending keepalive, then messages, up to the batch.
// Always inlined into `V1::transmit` (its only caller, a one-line forward): pinned with
// `next_outgoing`, as edits elsewhere made it a call of its own.
#[inline(always)]
pub(crate) fn transmit(m: &mut Machine<V1>, head: &mut BytesMut, out: &mut Vec<Bytes>) {
    let lossless = !m.lossy;
    let in_seq = m.session.in_seq;
    let Some(open) = m.state.open_mut() else { return };
    // Whether the session signs its messages, taken once: the signer looked up per
    // message (the state matched again) cost ~6 instructions a message without one.
    let signs = open.signer.is_some();
    if open.ack_pending && lossless {
        head.extend_from_slice(&ack_frame(in_seq.0));
    }
    open.ack_pending = false;
    if let Some(stamp) = m.keepalive.ack_owed.take() {
        head.extend_from_slice(&keepalive2_frame(Tag::KEEPALIVE2_ACK, stamp));
    }
    if let Some(stamp) = m.keepalive.pending.take() {
        queue_keepalive(head, m.session.features, stamp);
    }
    let opts = encode_options(&m.config, m.session.features);
    let src = m.config.my_name;
    // One allocation for the small pieces of the frames about to be made, not one each.
    let batch = m.session.queue.len().min(FRAMES_PER_RESERVE);
    head.reserve(batch * GATHERED_PER_FRAME);
    let mut framed = head.len();
    while framed < TRANSMIT_BATCH_BYTES {
        let Some(msg) = m.next_outgoing() else { break };
        let seq = Seq(msg.seq());
        let signer = if signs { m.state.open().and_then(|o| o.signer.as_deref()) } else { None };
        let sign = |header: &_, footer: &mut _| {
            if let Some(s) = signer {
                s.sign(header, footer);
            }
        };
        framed += msg.push_frame_to(seq.0, src, &opts, sign, head, out);
        m.framed(msg);
    }
}

/// A keepalive into `buf`: KEEPALIVE2 with `stamp` if negotiated, else KEEPALIVE.
pub(crate) fn queue_keepalive(buf: &mut BytesMut, features: Features, stamp: KeepaliveStamp) {
    if features.contains(Features::MSGR_KEEPALIVE2) {
        buf.extend_from_slice(&keepalive2_frame(Tag::KEEPALIVE2, stamp));
    } else {
        buf.put_u8(Tag::KEEPALIVE.0);
    }
}
