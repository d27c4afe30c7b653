//! The open msgr2 session (msgr-v2.md 6; Ceph's `ProtocolV2::handle_message`,
//! `handle_keepalive2(_ack)`, `handle_message_ack`, `write_message`): MESSAGE,
//! KEEPALIVE2, KEEPALIVE2_ACK and ACK in; messages (each carrying our ack_seq),
//! keepalives and ACKs out.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::session::{Event, Fault, Machine, OpenNote, Seq};
use crate::types::{EntityName, EntityType};
use crate::wire::{FooterFlags, MsgFooter, MsgHeader};

use super::frames::{Ack, ControlFrame, Keepalive2, Keepalive2Ack, MsgHeader2, HEADER2_FLAGS};
use super::framing::{Frame, MAX_SEGMENTS};
use super::link::{LOG, V2};
use super::send::unexpected;
use super::state::OpenRx;
use super::tag::Tag;

/// How many payload bytes one `poll_transmit` call frames at most, so one busy
/// connection cannot build an unbounded write list (the driver calls again).
const TRANSMIT_BATCH_BYTES: usize = 1 << 20;

/// The session is open (SERVER_IDENT or SESSION_RECONNECT_OK, sent or received).
pub(crate) fn start(m: &mut Machine<V2>, now: Instant, resumed: bool, remote_reset: bool) {
    // The peer's v2 address, else its first one (a client's ANY address).
    let peer_addr =
        m.peer_addr.or_else(|| m.proto.peer_addrs.addrs.first().copied()).unwrap_or_default();
    log::debug!(target: LOG, "{m}: {} mode", m.proto.con_mode);
    m.open(now, OpenRx::Idle, None, OpenNote { peer_addr, resumed, remote_reset });
}

/// A frame of the open session.
pub(crate) fn on_frame(m: &mut Machine<V2>, now: Instant, f: Frame) -> Result<bool, Fault> {
    match f.tag() {
        Tag::MESSAGE => on_message(m, now, f.segments, f.aborted).map(|()| true),
        Tag::KEEPALIVE2 => {
            let k = Keepalive2::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
            m.keepalive.ack_owed = Some(k.stamp);
            m.keepalive.last_received = Some(now);
            m.note_keepalive();
            Ok(true)
        }
        Tag::KEEPALIVE2_ACK => {
            let k = Keepalive2Ack::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
            m.keepalive.last_ack = Some(k.stamp);
            m.note_keepalive_ack(k.stamp);
            Ok(true)
        }
        Tag::ACK => {
            let a = Ack::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
            // Read on a lossy session too: one marked disposable keeps what it sent before
            // until it is acknowledged (`Machine::mark_lossy`).
            m.session.ack(Seq(a.seq));
            if m.config.report_acks {
                m.note_acked(Seq(a.seq));
            }
            Ok(true)
        }
        other => Err(unexpected(other)),
    }
}

/// A complete MESSAGE (its header2 was read with segment 0): delivered unless it was
/// aborted or is a duplicate.
pub(crate) fn on_message(
    m: &mut Machine<V2>,
    now: Instant,
    segments: [Bytes; MAX_SEGMENTS],
    aborted: bool,
) -> Result<(), Fault> {
    let rx = m.state.open_mut().map(|o| std::mem::replace(&mut o.rx, OpenRx::Idle));
    let Some(OpenRx::Reading { header, duplicate, skipped }) = rx else {
        return Err(Fault::Misbehaved("MESSAGE without a header"));
    };
    // A duplicate streaming by in crc mode was read without budget.
    on_whole_message(m, now, header, segments, aborted || duplicate, !skipped);
    Ok(())
}

/// A complete MESSAGE with its `header`: the budget of its reading ends, and it is
/// delivered unless `dropped` (aborted by its sender, or a duplicate); `budgeted`: it
/// was read with budget (not a duplicate streaming by in crc mode). A MESSAGE taken
/// whole ([`super::receive`]'s one-call read) comes here straight, its header from the
/// admission, never stored in [`OpenRx::Reading`].
pub(crate) fn on_whole_message(
    m: &mut Machine<V2>,
    now: Instant,
    header: MsgHeader2,
    segments: [Bytes; MAX_SEGMENTS],
    dropped: bool,
    budgeted: bool,
) {
    if let Some(open) = m.state.open_mut() {
        let credited = open.budget.finish();
        match (dropped, credited) {
            // Aborted after the credit paid for it (taken in one call, or its first
            // window read piece by piece): nothing delivered holds that charge.
            (true, Some(len)) => open.credit.refund(len),
            // Dropped after asking for its budget: the driver holds that grant until
            // the next message asks for its first window (`Credit::held_back`).
            (true, None) => open.credit.held_back |= budgeted,
            _ => {}
        }
    }
    if dropped {
        log::debug!(target: LOG, "{m}: dropped message seq {} (aborted or duplicate)", header.seq);
        return;
    }
    deliver(m, now, header, segments);
}

/// A complete MESSAGE: in_seq moves, the piggy-backed ack trims our sent list, and the
/// message goes up.
fn deliver(m: &mut Machine<V2>, now: Instant, h: MsgHeader2, segments: [Bytes; MAX_SEGMENTS]) {
    let [_, front, middle, data] = segments;
    m.note_received(Seq(h.seq));
    // Read on a lossy session too: one marked disposable keeps what it sent before
    // until it is acknowledged (`Machine::mark_lossy`).
    m.session.ack(Seq(h.ack_seq));
    let len32 = |b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX);
    let header = MsgHeader {
        seq: h.seq,
        tid: h.tid,
        msg_type: h.msg_type,
        priority: h.priority,
        version: h.version,
        front_len: len32(&front),
        middle_len: len32(&middle),
        data_len: len32(&data),
        data_off: h.data_off,
        src: EntityName::new(m.peer_type.unwrap_or(EntityType::ANY), m.session.peer_gid),
        compat_version: h.compat_version,
        reserved: h.reserved,
        crc: 0,
    };
    let footer = MsgFooter { flags: FooterFlags::COMPLETE, ..MsgFooter::default() };
    let mut msg = Message::from_parts(&header, front, middle, data, footer);
    msg.set_recv_stamp(now);
    m.events.push_back(Event::Message(msg));
}

/// While open: a pending keepalive, messages up to the batch (each carries our in_seq,
/// so no separate ACK is owed after one), then the ACK still owed.
pub(crate) fn transmit(m: &mut Machine<V2>, head: &mut BytesMut, out: &mut Vec<Bytes>) {
    if let Some(stamp) = m.keepalive.ack_owed.take() {
        encode(m, Tag::KEEPALIVE2_ACK, &Keepalive2Ack { stamp }.to_segment(), head, out);
    }
    if let Some(stamp) = m.keepalive.pending.take() {
        encode(m, Tag::KEEPALIVE2, &Keepalive2 { stamp }.to_segment(), head, out);
    }
    let mut framed = 0;
    while framed < TRANSMIT_BATCH_BYTES && m.deferred_fault.is_none() {
        let Some(msg) = m.next_outgoing() else { break };
        let seq = Seq(msg.seq());
        let header = MsgHeader2 {
            seq: seq.0,
            tid: msg.tid(),
            msg_type: msg.msg_type(),
            priority: msg.priority(),
            version: msg.version(),
            data_pre_padding_len: 0,
            data_off: msg.data_off(),
            ack_seq: m.session.in_seq.0,
            flags: HEADER2_FLAGS,
            compat_version: msg.compat_version(),
            reserved: 0,
        };
        let segs = [msg.front(), msg.middle(), msg.data()];
        match m.proto.encoder.encode_parts(Tag::MESSAGE, &header.to_bytes(), &segs, head, out) {
            Ok(n) => framed += n,
            Err(e) => {
                m.deferred_fault = Some(Fault::Decode(e));
                if !m.lossy {
                    // Requeued with the unacked ones when the fault lands.
                    m.session.push_sent(msg);
                }
                break;
            }
        }
        if let Some(open) = m.state.open_mut() {
            open.ack_pending = false;
        }
        m.framed(msg);
    }
    let owed = m.state.open().is_some_and(|o| o.ack_pending) && !m.lossy;
    if owed && m.deferred_fault.is_none() {
        if let Some(open) = m.state.open_mut() {
            open.ack_pending = false;
        }
        let seg = Ack { seq: m.session.in_seq.0 }.to_segment();
        encode(m, Tag::ACK, &seg, head, out);
    }
}

/// Encodes one frame into the write list; a failure faults the connection after this
/// round of output.
fn encode(m: &mut Machine<V2>, tag: Tag, seg: &Bytes, head: &mut BytesMut, out: &mut Vec<Bytes>) {
    if let Err(e) = m.proto.encoder.encode(tag, &[seg], head, out) {
        m.deferred_fault = Some(Fault::Decode(e));
    }
}
