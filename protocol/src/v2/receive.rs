//! Reading one msgr2 TCP connection, both sides: the banner, frames piece by piece (the
//! pre-auth transcript recorded as they come), MESSAGE heads waiting for budget, and
//! whole frames dispatched to the step (or the open session) they arrive in; the
//! AUTH_SIGNATURE check.

use std::time::Instant;

use bytes::Bytes;

use crate::error::Error;
use crate::session::{Fault, Machine, PeerIssue, Seq, Side, State};
use crate::types::{AddrType, EntityAddr};

use super::banner::{Banner, Msgr2Features, BANNER_HEAD_LEN, BANNER_PREFIX, V1_BANNER_PREFIX};
use super::frames::{AuthSignature, ControlFrame, Hello, MsgHeader2};
use super::framing::{Frame, Step, Whole};
use super::link::{LOG, V2};
use super::send::{send_control, unexpected};
use super::state::{Handshake, OpenRx};
use super::tag::Tag;
use super::{accept, connect, open};

/// Takes exactly `n` buffered bytes as one `Bytes` (zero-copy within a chunk),
/// recording them in the transcript while it is kept.
fn take(m: &mut Machine<V2>, n: usize) -> Option<Bytes> {
    let out = m.rx.take(n)?;
    if let Some(t) = m.state.step_mut().and_then(Handshake::transcript_mut) {
        t.rx.extend_from_slice(&out);
    }
    Some(out)
}

/// The peer's banner (both sides); our HELLO answers it.
pub(crate) fn read_banner(m: &mut Machine<V2>, now: Instant) -> bool {
    let len = {
        let Some(head) = m.rx.contiguous(BANNER_HEAD_LEN.min(m.rx.len().max(1))) else {
            return false;
        };
        // A wrong prefix is known from its first 8 bytes.
        if head.len() < BANNER_HEAD_LEN {
            if !BANNER_PREFIX.starts_with(&head[..head.len().min(8)]) {
                m.fault(now, Fault::BadBanner);
            }
            return false;
        }
        match Banner::decode_head(head) {
            Ok(len) => len,
            Err(Error::BadBanner) => {
                if head.starts_with(V1_BANNER_PREFIX) {
                    log::info!(target: LOG, "{m}: peer is using msgr V1 protocol");
                }
                m.peer_issue(PeerIssue::BadBanner, format_args!("not a msgr2 banner"));
                m.fault(now, Fault::BadBanner);
                return false;
            }
            Err(e) => {
                m.fault(now, Fault::Decode(e));
                return false;
            }
        }
    };
    let Some(all) = take(m, BANNER_HEAD_LEN + len) else { return false };
    let peer = match Banner::decode_payload(&all[BANNER_HEAD_LEN..]) {
        Ok(b) => b,
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    if let Err(e) = Banner::OURS.check_compatible(&peer) {
        incompatible(m, now, e);
        return false;
    }
    if !peer.supported.contains(Msgr2Features::REVISION_1) {
        // msgr2.0 (Nautilus 14.2.0-14.2.4): different framing and nonces with known
        // weaknesses; not implemented.
        incompatible(m, now, Error::Unsupported("peer speaks msgr2.0 only (no REVISION_1)"));
        return false;
    }
    let my_type = m.config.my_name.ty;
    match m.take_step() {
        Some((deadline, Handshake::AwaitBanner(mut t))) => {
            let dialled = m.peer_addr.unwrap_or_default();
            send_control(m, Some(&mut t), &Hello { entity_type: my_type, peer_addr: dialled });
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitHello(t) });
        }
        Some((deadline, Handshake::AwaitPeerBanner(mut t))) => {
            let seen = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: m.socket_peer };
            send_control(m, Some(&mut t), &Hello { entity_type: my_type, peer_addr: seen });
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitPeerHello(t) });
        }
        Some((deadline, other)) => {
            m.set_state(State::Handshake { deadline, step: other });
            return false;
        }
        None => return false,
    }
    true
}

/// One piece of a frame: the next thing the frame decoder needs.
pub(crate) fn read_frame(m: &mut Machine<V2>, now: Instant) -> bool {
    if m.proto.decoder.is_paused() {
        return false;
    }
    if let Some(more) = read_whole_message(m, now) {
        return more;
    }
    let n = m.proto.decoder.need();
    let step = if m.state.is_open() && m.proto.decoder.reads_in_place() {
        // A preamble or epilogue is only read: no `Bytes` for it, so no reference is
        // taken on (and dropped from) the shared read buffer twice per message.
        let Some(piece) = m.rx.contiguous(n) else {
            m.proto.decoder.unpin_segments();
            ask_next_window(m);
            return false;
        };
        let step = m.proto.decoder.step_slice(piece);
        m.rx.consume(n);
        step
    } else {
        let Some(piece) = take(m, n) else {
            absorb_buffered(m);
            m.proto.decoder.unpin_segments();
            ask_next_window(m);
            return false;
        };
        if m.state.step_mut().and_then(Handshake::transcript_mut).is_some_and(|t| t.too_long()) {
            m.fault(now, Fault::Misbehaved("pre-auth phase too long"));
            return false;
        }
        m.proto.decoder.step(piece)
    };
    after_step(m, now, step)
}

/// What the decoder's step on a piece of a frame leads to.
fn after_step(m: &mut Machine<V2>, now: Instant, step: Result<Step, Error>) -> bool {
    match step {
        Err(e) => {
            m.peer_issue(PeerIssue::BadMessage, format_args!("bad frame: {e}"));
            m.fault(now, Fault::Decode(e));
            false
        }
        Ok(Step::NeedMore) => true,
        Ok(Step::Head) => {
            let more = handle_head(m, now);
            if m.proto.decoder.is_paused() {
                // Waiting for its budget, which may take long (a full throttle): its
                // header goes to a buffer of its own, not kept as a slice of its read.
                m.proto.decoder.unpin_segments();
            }
            more
        }
        Ok(Step::Frame) if m.state.is_open() && m.proto.decoder.preamble().tag == Tag::MESSAGE => {
            // The common case, kept lean: the segments go from the decoder into the
            // message, nothing else is moved.
            log::trace!(target: LOG, "{m}: got {}", Tag::MESSAGE);
            let aborted = m.proto.decoder.aborted();
            let segments = m.proto.decoder.take_segments();
            let result = open::on_message(m, now, segments, aborted).map(|()| true);
            conclude(m, now, Tag::MESSAGE, result)
        }
        Ok(Step::Frame) => {
            let f = m.proto.decoder.take_frame();
            handle_frame(m, now, f)
        }
    }
}

/// Open, between frames: a MESSAGE frame that is all in the first buffered chunk, no
/// duplicate and covered by the receive credit, is read in one call: what
/// [`handle_head`], its first window (which covers the payload, all in memory) and the
/// frame's pieces would each do in a round of the input loop. `None` when it is not so
/// and nothing was read: the frame is then read piece by piece, and anything wrong with
/// it found there. In secure mode a frame not taken whole may have had its first block
/// read (it must be opened to tell): the piece-by-piece path goes on from there.
fn read_whole_message(m: &mut Machine<V2>, now: Instant) -> Option<bool> {
    if !between_messages(m) {
        return None;
    }
    let mut chunk = m.rx.pop_chunk()?;
    let read = read_whole_messages(m, now, &mut chunk);
    m.rx.unpop_chunk(chunk);
    read
}

/// [`read_whole_message`] on the first buffered chunk, taken out of the receive buffer,
/// going on with the next frame while each one is a MESSAGE taken whole.
///
/// Why a loop: a batch of small messages arrives in one read, and a return to the input
/// loop per message (the chunk taken out and put back, the checks above made again)
/// showed in profiles, as it did in msgr v1. Each round takes a whole frame or ends, so
/// the loop ends with the chunk.
fn read_whole_messages(m: &mut Machine<V2>, now: Instant, chunk: &mut Bytes) -> Option<bool> {
    let mut taken_one = false;
    loop {
        let in_seq = m.session.in_seq;
        let Some(open) = m.state.open_mut() else { return taken_one.then_some(false) };
        let (credit, budget) = (&mut open.credit, &mut open.budget);
        let taken = m.proto.decoder.take_whole_message(chunk, |segment0, payload| {
            let header = MsgHeader2::decode(segment0).ok()?;
            let funded = Seq(header.seq) > in_seq && credit.take(payload);
            if funded {
                budget.funded_by_credit(payload);
            }
            funded.then_some(header)
        });
        match taken {
            // Nothing read: after a message, the input loop comes round again (and reads
            // this frame piece by piece); before one, the caller does so now.
            Ok(Whole::Untaken) => return taken_one.then_some(true),
            Ok(Whole::Opened(step)) => return Some(after_step(m, now, Ok(step))),
            Err(e) => return Some(after_step(m, now, Err(e))),
            Ok(Whole::Taken(header, segments, aborted)) => {
                log::trace!(target: LOG, "{m}: got {}", Tag::MESSAGE);
                open::on_whole_message(m, now, header, segments, aborted, true);
                taken_one = true;
            }
        }
        if m.state.is_closed() {
            return Some(false);
        }
        // The next frame is taken here only as `read_whole_message` would take it.
        if chunk.is_empty() || !between_messages(m) {
            return Some(true);
        }
    }
}

/// Open, between frames, reading (not paused) and awaiting no budget: when a MESSAGE
/// may be taken whole.
pub(crate) fn between_messages(m: &Machine<V2>) -> bool {
    m.proto.decoder.is_idle()
        && !m.proto.decoder.is_paused()
        && m.state.open().is_some_and(|o| matches!(o.rx, OpenRx::Idle) && !o.budget.is_waiting())
}

/// While a stored message's payload is read and no budget is awaited: what of it was
/// granted, what arrived (taken by the decoder or buffered) and its total; `None`
/// otherwise.
fn payload_progress(m: &Machine<V2>) -> Option<(u64, u64, u64)> {
    let open = m.state.open()?;
    let reading = matches!(open.rx, OpenRx::Reading { skipped: false, .. });
    if !reading || open.budget.is_waiting() || m.proto.decoder.is_paused() {
        return None;
    }
    let total = m.proto.decoder.payload_len();
    let pending = m.proto.decoder.payload_pending();
    let arrived = total.saturating_sub(pending).saturating_add(m.rx.len() as u64);
    Some((open.budget.granted(), arrived, total))
}

/// The receive budget of the message being read not yet covered by what arrived of
/// it; `None` when no (stored) message payload is being read or budget is awaited.
pub(crate) fn window_left(m: &Machine<V2>) -> Option<u64> {
    payload_progress(m).map(|(granted, arrived, _)| granted.saturating_sub(arrived))
}

/// A large segment that arrives across reads: what of it is buffered moves into the
/// buffer the segment is assembled in (one copy of a read's tail), so the receive
/// buffer is empty and the rest is read straight into it (`direct_read_buffer`).
fn absorb_buffered(m: &mut Machine<V2>) {
    let n = m.rx.len();
    // Gathering the buffered reads into one piece copies them: only when the decoder
    // takes them, or a frame it does not assemble in place (secure mode) is copied again
    // on every read until it is complete.
    if n == 0 || !m.proto.decoder.is_assembling() || window_left(m).is_none() {
        return;
    }
    let Some(head) = m.rx.contiguous(n) else { return };
    let used = m.proto.decoder.absorb(head);
    m.rx.consume(used);
}

/// A message's payload is budgeted in windows, as v1's: once what arrived of it (taken
/// by the decoder or buffered) covers what was granted, the next window is asked for
/// and reading stops until it is granted. A peer announcing a large message holds only
/// what it sent plus one window, and must progress per payload timeout.
fn ask_next_window(m: &mut Machine<V2>) {
    let Some((granted, arrived, total)) = payload_progress(m) else { return };
    if arrived >= granted && granted < total {
        m.request_window(total - granted, false, 0);
    }
}

/// Segment 0 of a frame is in: a MESSAGE waits for budget (or goes by unstored as a
/// duplicate); any other frame is read on.
fn handle_head(m: &mut Machine<V2>, now: Instant) -> bool {
    if m.proto.decoder.preamble().tag != Tag::MESSAGE {
        if let Err(e) = m.proto.decoder.proceed() {
            m.fault(now, Fault::Decode(e));
            return false;
        }
        return true;
    }
    if !m.state.is_open() {
        m.peer_issue(PeerIssue::BadMessage, format_args!("MESSAGE while not ready"));
        m.fault(now, Fault::Misbehaved("MESSAGE before the session is ready"));
        return false;
    }
    let header = match MsgHeader2::decode(m.proto.decoder.segment0()) {
        Ok(hd) => hd,
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    let duplicate = m.is_duplicate(crate::session::Seq(header.seq));
    // Already delivered: in crc mode read without budget and dropped as it passes, its
    // crcs checked; in secure mode read as any message (its tag covers the whole rest)
    // and dropped once its tag checked, as Ceph checks every frame's before it looks at
    // the seq (Pacific then stops reading the connection, msgr-v2.md 6.2).
    let skipped = duplicate && !m.proto.decoder.is_secure();
    if let Some(open) = m.state.open_mut() {
        open.rx = OpenRx::Reading { header, duplicate, skipped };
    }
    if skipped {
        if let Err(e) = m.proto.decoder.skip_rest() {
            m.fault(now, Fault::Decode(e));
            return false;
        }
        return true;
    }
    m.request_first_window(now, m.proto.decoder.payload_len(), 0)
}

/// A whole frame: dispatched by the step (or the open session) it arrives in.
fn handle_frame(m: &mut Machine<V2>, now: Instant, f: Frame) -> bool {
    let tag = f.tag();
    log::trace!(target: LOG, "{m}: got {tag}");
    if f.aborted && tag != Tag::MESSAGE {
        // An aborted frame is dropped unread (FRAME_LATE_STATUS_ABORTED).
        return true;
    }
    let route = match m.state.step() {
        _ if m.state.is_open() => Route::Open,
        Some(Handshake::AwaitHello(_)) => Route::Hello,
        Some(Handshake::AwaitAuthReply(..)) => Route::AuthReply,
        Some(Handshake::AwaitIdentReply { .. }) => Route::IdentReply,
        Some(Handshake::AwaitPeerHello(_)) => Route::PeerHello,
        Some(Handshake::AwaitAuthRequest(_) | Handshake::AwaitAuthRequestMore(..)) => {
            Route::AuthRequest
        }
        Some(Handshake::AwaitIdent) => Route::Ident,
        Some(Handshake::AwaitAuthSignature(_)) => Route::AuthSignature,
        Some(
            Handshake::AwaitBanner(_)
            | Handshake::AwaitPeerBanner(_)
            | Handshake::AwaitAcceptDecision(_),
        )
        | None => Route::Nowhere,
    };
    let result = match route {
        Route::Open => open::on_frame(m, now, f),
        Route::Hello => connect::on_hello(m, now, &f),
        Route::AuthReply => connect::on_auth_reply(m, now, &f),
        Route::IdentReply => connect::on_ident_reply(m, now, &f),
        Route::PeerHello => accept::on_peer_hello(m, now, &f),
        Route::AuthRequest => accept::on_auth_request(m, now, &f),
        Route::Ident => accept::on_ident(m, now, &f),
        Route::AuthSignature => on_auth_signature(m, now, &f),
        Route::Nowhere => Ok(false),
    };
    conclude(m, now, tag, result)
}

/// What a handled frame leaves: whether to read on, or its fault taken.
fn conclude(m: &mut Machine<V2>, now: Instant, tag: Tag, result: Result<bool, Fault>) -> bool {
    match result {
        Ok(more) => more && !m.state.is_closed(),
        Err(fault) => {
            let issue = match m.side {
                Side::Accept => PeerIssue::BadConnect,
                Side::Connect => PeerIssue::BadConnectReply,
            };
            m.peer_issue(issue, format_args!("{tag}: {fault}"));
            m.fault(now, fault);
            false
        }
    }
}

/// Which handler a whole frame goes to.
enum Route {
    Open,
    Hello,
    AuthReply,
    IdentReply,
    PeerHello,
    AuthRequest,
    Ident,
    AuthSignature,
    Nowhere,
}

/// The peer's AUTH_SIGNATURE over what we sent: the connector then identifies, the
/// acceptor waits for that.
fn on_auth_signature(m: &mut Machine<V2>, _now: Instant, f: &Frame) -> Result<bool, Fault> {
    if f.tag() != Tag::AUTH_SIGNATURE {
        return Err(unexpected(f.tag()));
    }
    let got = AuthSignature::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
    let Some(Handshake::AwaitAuthSignature(check)) = m.state.step_mut() else { return Ok(false) };
    let want = AuthSignature::compute(check.session_key.as_deref(), &check.sent);
    // In constant time, as every other proof of a key is checked: an early exit would
    // tell a peer replaying a captured exchange how much of its guess was right.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&got.hmac[..], &want.hmac[..])) {
        return Err(Fault::Misbehaved("pre-auth signature mismatch"));
    }
    let held = check.held.take();
    if m.side == Side::Connect {
        // Ours only now (see `send::finish_auth`).
        if let Some((ours, mut client)) = held {
            client.confirmed();
            send_control(m, None, &ours);
        }
        connect::send_ident_or_reconnect(m);
    } else {
        m.set_step(Handshake::AwaitIdent);
    }
    Ok(true)
}

/// The peer's banner is incompatible: a connector gives up for good (a retry would
/// meet the same banner); an acceptor just drops the connection.
fn incompatible(m: &mut Machine<V2>, now: Instant, e: Error) {
    m.peer_issue(PeerIssue::BadBanner, format_args!("{e}"));
    if m.side == Side::Connect {
        m.refuse("incompatible msgr2 peer");
    } else {
        m.fault(now, Fault::Decode(e));
    }
}
