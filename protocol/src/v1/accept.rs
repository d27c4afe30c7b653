//! The v1 accept side of the handshake (msgr-v1.md 3.7; Ceph's
//! `ProtocolV1::handle_client_banner`, `handle_connect_message_2`, `open`): the peer's
//! banner and address, its connect messages, the authorizer, the accept decision and
//! the replies.

use std::time::Instant;

use bytes::Bytes;

use crate::auth::{auth_none_authorizer_peer, AuthorizerRequest, AuthorizerStep};
use crate::session::REFUSED_FOREIGN;
use crate::session::{
    AcceptRequest, AuthVerdict, CloseReason, ConnectSeq, Counters, Decision, Event, Fault,
    GlobalSeq, Initiator, Machine, OpenNote, PeerIssue, RequestKind, Seq, Session, State,
    GLOBAL_SEQ_PLAUSIBLE,
};
use crate::types::{
    proto_version, with_port, EntityAddr, EntityType, Features, AUTH_NONE, LEGACY_ADDR_LEN,
};
use crate::wire::{
    check_banner, ConnectMsg, ConnectReply, Tag, BANNER_LEN, CONNECT_LOSSY, MAX_AUTHORIZER_LEN,
};

use super::open::open_rx;
use super::state::{AcceptLink, Handshake, Opening, PendingConnect, Verifier, LOG, V1};

/// Connect messages one accepted TCP connection may send before it is faulted.
///
/// A well-behaved connector needs at most a handful on one socket (RETRY_SESSION,
/// RETRY_GLOBAL, RESETSESSION, CHALLENGE_AUTHORIZER, one more after a BADAUTHORIZER);
/// anything beyond is a peer looping on purpose, and each connect costs us a reply.
/// Ceph's connector gives up after a few retries too; 8 leaves room for every
/// legitimate sequence.
pub const MAX_CONNECT_ATTEMPTS: u32 = 8;

/// The connector's banner and its address as it believes it to be.
pub(crate) fn read_peer_banner(m: &mut Machine<V1>, now: Instant) -> bool {
    let need = BANNER_LEN + LEGACY_ADDR_LEN;
    let Some(buf) = m.rx.contiguous(need) else {
        if let Some(b) = m.rx.contiguous(BANNER_LEN) {
            if check_banner(b).is_err() {
                m.fault(now, Fault::BadBanner);
            }
        }
        return false;
    };
    if check_banner(buf).is_err() {
        m.fault(now, Fault::BadBanner);
        return false;
    }
    let mut addr = match EntityAddr::decode_legacy(&buf[BANNER_LEN..need]) {
        Ok(a) => a,
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    m.rx.consume(need);
    if addr.is_blank_ip() {
        if let Some(sp) = m.socket_peer {
            // As Ceph, the socket's whole sockaddr (an IPv6 scope id, flowinfo) but
            // the port.
            addr.addr = Some(with_port(sp, addr.port()));
        }
    }
    m.peer_addr = Some(addr);
    m.set_step(Handshake::AwaitConnect(AcceptLink::default()));
    true
}

/// A connect message: version and feature checks, then the authorizer.
pub(crate) fn read_connect(m: &mut Machine<V1>, now: Instant) -> bool {
    let parsed = m.rx.parse(ConnectMsg::LEN, |b| {
        ConnectMsg::decode_with_authorizer(b, MAX_AUTHORIZER_LEN)
            .map(|(msg, auth, used)| ((msg, Bytes::copy_from_slice(auth)), used))
    });
    let (msg, authorizer) = match parsed {
        Ok(Some(m)) => m,
        Ok(None) => return false,
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    let Some((deadline, Handshake::AwaitConnect(mut link))) = m.take_step() else {
        return false;
    };
    let peer_type = msg.host_type;
    // Our policy for the type it names decides the features (handle_connect_message_2).
    m.learn_peer_type(peer_type);
    log::debug!(target: LOG, "{m}: connect from {peer_type} gs={} cs={}", msg.global_seq, msg.connect_seq);
    link.connects = link.connects.saturating_add(1);
    let again = |m: &mut Machine<V1>, link| {
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
    };
    if link.connects > MAX_CONNECT_ATTEMPTS {
        again(m, link);
        m.peer_issue(
            PeerIssue::BadConnect,
            format_args!("more than {MAX_CONNECT_ATTEMPTS} connects on one connection"),
        );
        m.fault(now, Fault::Misbehaved("too many connect attempts on one connection"));
        return false;
    }
    if msg.global_seq > GLOBAL_SEQ_PLAUSIBLE {
        // Taken as the peer's global_seq, every later connect of the session would be
        // told to RETRY_GLOBAL to it, which the connector refuses as implausible: the
        // session would reconnect forever and never open again.
        again(m, link);
        m.peer_issue(PeerIssue::BadConnect, format_args!("global_seq {}", msg.global_seq));
        m.fault(now, Fault::Misbehaved("implausible global_seq in connect"));
        return false;
    }
    let expected = proto_version(m.config.my_name.ty, peer_type, false);
    if msg.protocol_version != expected {
        again(m, link);
        m.peer_issue(
            PeerIssue::BadConnect,
            format_args!("peer protocol {} != {expected}", msg.protocol_version),
        );
        retry_reply(m, &msg, Tag::BADPROTOVER, &[], 0, 0);
        return true;
    }
    let missing = msg.features.missing_from(required_of(m, &msg));
    if !missing.is_empty() {
        again(m, link);
        m.peer_issue(PeerIssue::BadConnect, format_args!("peer lacks required features {missing}"));
        retry_reply(m, &msg, Tag::FEATURES, &[], 0, 0);
        return true;
    }
    if matches!(link.verifier, Verifier::Unasked) {
        link.verifier = match m.config.auth.authorizer_server() {
            Some(v) => Verifier::Inline(v),
            None => Verifier::Driver,
        };
    }
    let mut pending =
        PendingConnect { msg, authorizer_reply: Bytes::new(), signer: None, named_peer: None };
    match &mut link.verifier {
        Verifier::Inline(verifier) => {
            let request = AuthorizerRequest {
                peer_type,
                method: msg.authorizer_protocol,
                authorizer: &authorizer,
                features: m.policy.features_supported & msg.features,
                now,
            };
            let step = verifier.verify(&request);
            m.set_state(State::Handshake {
                deadline,
                step: Handshake::AwaitAuthorizerVerdict(link, pending),
            });
            judged(m, now, step);
            true
        }
        Verifier::Driver if !authorizer.is_empty() || m.config.verify_empty_authorizer => {
            // (A monitor takes any authorizer from a non-monitor unread, as Ceph's: they
            // authenticate afterwards with MAuth.)
            let monitor_skips =
                m.config.my_name.ty == EntityType::MON && peer_type != EntityType::MON;
            if msg.authorizer_protocol == AUTH_NONE && !authorizer.is_empty() && !monitor_skips {
                // Ceph's auth-none handler reads whom the authorizer names (the
                // connection's peer name and global id) and refuses what does not decode.
                pending.named_peer = auth_none_authorizer_peer(&authorizer);
                if pending.named_peer.is_none() {
                    m.set_state(State::Handshake {
                        deadline,
                        step: Handshake::AwaitAuthorizerVerdict(link, pending),
                    });
                    judged(m, now, AuthorizerStep::Reject);
                    return true;
                }
            }
            m.events.push_back(Event::VerifyAuthorizer {
                peer_type,
                protocol: msg.authorizer_protocol,
                authorizer: Box::new(authorizer),
            });
            m.set_state(State::Handshake {
                deadline,
                step: Handshake::AwaitAuthorizerVerdict(link, pending),
            });
            false
        }
        Verifier::Driver | Verifier::Unasked => {
            request_decision(m, deadline, link, pending);
            false
        }
    }
}

/// The driver's verdict on the authorizer ([`Event::VerifyAuthorizer`]).
pub(crate) fn handle_verdict(m: &mut Machine<V1>, now: Instant, verdict: AuthVerdict) {
    let step = match verdict {
        AuthVerdict::Accept { reply } => AuthorizerStep::Accept { reply, signer: None, peer: None },
        AuthVerdict::Challenge(challenge) => AuthorizerStep::Challenge(challenge),
        AuthVerdict::Reject => AuthorizerStep::Reject,
    };
    if !matches!(m.state.step(), Some(Handshake::AwaitAuthorizerVerdict(..))) {
        log::warn!(target: LOG, "{m}: authorizer verdict in state {}", m.state_name());
        return;
    }
    judged(m, now, step);
    m.process(now);
}

/// The authorizer was judged (inline or by the driver): on to the accept decision, or
/// back to waiting for the next connect.
fn judged(m: &mut Machine<V1>, _now: Instant, step: AuthorizerStep) {
    let Some((deadline, Handshake::AwaitAuthorizerVerdict(link, mut pending))) = m.take_step()
    else {
        return;
    };
    match step {
        AuthorizerStep::Accept { reply, signer, peer } => {
            pending.authorizer_reply = reply;
            pending.signer = signer;
            m.peer_auth = peer.or(pending.named_peer.take());
            request_decision(m, deadline, link, pending);
        }
        AuthorizerStep::Challenge(challenge) => {
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
            retry_reply(m, &pending.msg, Tag::CHALLENGE_AUTHORIZER, &challenge, 0, 0);
        }
        AuthorizerStep::Reject => {
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
            Counters::bump(&m.config.counters.authorizers_rejected);
            m.peer_issue(PeerIssue::BadConnect, format_args!("authorizer rejected"));
            retry_reply(m, &pending.msg, Tag::BADAUTHORIZER, &[], 0, 0);
        }
    }
}

/// Asks the driver to decide about the connect with its session table.
fn request_decision(
    m: &mut Machine<V1>,
    deadline: Instant,
    link: AcceptLink,
    pending: PendingConnect,
) {
    let (Some(peer_addr), Some(socket_peer)) = (m.peer_addr, m.socket_peer) else {
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
        return;
    };
    let msg = &pending.msg;
    let req = AcceptRequest {
        peer_addr,
        peer_type: msg.host_type,
        socket_peer,
        kind: RequestKind::Connect {
            global_seq: GlobalSeq::from_v1(msg.global_seq),
            connect_seq: ConnectSeq::from_v1(msg.connect_seq),
            features: msg.features,
            lossy: msg.is_lossy(),
        },
    };
    m.events.push_back(Event::AcceptRequest(Box::new(req)));
    m.set_state(State::Handshake { deadline, step: Handshake::AwaitAcceptDecision(link, pending) });
}

/// The features required of `msg`: the policy's for the type it names, and those its
/// authorizer's method asks for (Ceph's `handle_connect_message_2` adds MSG_AUTH and
/// CEPHX_V2 to the connection's `policy.features_required` for a cephx connect, after
/// the protocol version check).
fn required_of(m: &Machine<V1>, msg: &ConnectMsg) -> Features {
    m.policy.features_required
        | m.config.auth.v1_required_features(msg.host_type, msg.authorizer_protocol)
}

/// A reply that leaves the peer to send another connect (or to give up), carrying
/// `auth` as its authorizer bytes: features `(theirs & supported) | required`, as
/// Ceph's `send_connect_message_reply` (required with the authorizer method's bits but
/// for BADPROTOVER, which Ceph sends before it adds them). The machine is back at
/// AwaitConnect.
fn retry_reply(m: &mut Machine<V1>, msg: &ConnectMsg, tag: Tag, auth: &[u8], gs: u32, cs: u32) {
    let required =
        if tag == Tag::BADPROTOVER { m.policy.features_required } else { required_of(m, msg) };
    let reply = ConnectReply {
        tag,
        features: (msg.features & m.policy.features_supported) | required,
        global_seq: gs,
        connect_seq: cs,
        protocol_version: proto_version(m.config.my_name.ty, msg.host_type, false),
        authorizer_len: 0,
        flags: 0,
    };
    let mut out = Vec::with_capacity(ConnectReply::LEN + auth.len());
    reply.encode_full(auth, 0, &mut out);
    m.ctrl.extend_from_slice(&out);
    // The caller's input loop reads the next connect: never call it from here, or a
    // peer that pipelines thousands of bad connects would recurse once per connect.
    log::debug!(target: LOG, "{m}: replied {tag}");
}

/// The messenger's accept decision (Ceph's `handle_connect_message_2` after the
/// existing-connection lookup).
pub(crate) fn handle_decision(
    m: &mut Machine<V1>,
    now: Instant,
    decision: Decision,
    transferred: Option<Session>,
) {
    let Some((deadline, Handshake::AwaitAcceptDecision(link, pending))) = m.take_step() else {
        return;
    };
    let retry = |m: &mut Machine<V1>, link, tag, gs: u32, cs: u32| {
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
        retry_reply(m, &pending.msg, tag, &[], gs, cs);
    };
    match decision {
        Decision::Open => accept_open(m, now, pending, transferred, false, false),
        Decision::Replace { reset_existing, peer_restarted } => {
            accept_open(m, now, pending, transferred, reset_existing, peer_restarted)
        }
        Decision::RetryGlobal(gs) => retry(m, link, Tag::RETRY_GLOBAL, gs.to_v1(), 0),
        Decision::RetrySession(cs) => retry(m, link, Tag::RETRY_SESSION, 0, cs.to_v1()),
        Decision::Wait => retry(m, link, Tag::WAIT, 0, 0),
        Decision::ResetSession { .. } => retry(m, link, Tag::RESETSESSION, 0, 0),
        Decision::Drop => {
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitConnect(link) });
            m.fault(now, Fault::Misbehaved("accept decision Drop is not a v1 answer"));
            return;
        }
        Decision::Refuse => {
            Counters::bump(&m.config.counters.identity_refused);
            m.peer_issue(PeerIssue::BadConnect, format_args!("{REFUSED_FOREIGN}"));
            m.finish(Initiator::Library, CloseReason::Refused(REFUSED_FOREIGN));
            return;
        }
    }
    // After a retry reply, the peer's next connect may already be buffered; after an
    // open, its first bytes.
    m.process(now);
}

/// Ceph's `ProtocolV1::open` on the accept side: the final reply (SEQ or READY).
fn accept_open(
    m: &mut Machine<V1>,
    now: Instant,
    p: PendingConnect,
    transferred: Option<Session>,
    reset_existing: bool,
    reset_from_peer: bool,
) {
    let mut resumed = false;
    m.once_ready = true;
    if let Some(mut s) = transferred {
        s.requeue_sent();
        m.session = s;
        resumed = true;
    }
    if reset_existing {
        m.session.reset();
        resumed = false;
    }
    // A kept session came from another connection (usually one our dispatchers were
    // told of): its fault before the peer's in_seq ends it with a reset (a fresh one
    // closes quietly).
    m.announced |= resumed;
    // Ceph's session_reset queues ms_handle_remote_reset; a peer restart without
    // resetcheck keeps our session (READY, in_seq zeroed) and reports nothing.
    if reset_from_peer && reset_existing {
        m.events.push_back(Event::RemoteReset);
    }
    m.session.connect_seq = ConnectSeq::from_v1(p.msg.connect_seq).next_v1();
    m.session.peer_global_seq = GlobalSeq::from_v1(p.msg.global_seq);
    let seq_exchange = p.msg.features.contains(Features::RECONNECT_SEQ) && !reset_from_peer;
    if reset_from_peer {
        // After a peer restart numbering starts over. Without the exchange otherwise
        // (a peer without RECONNECT_SEQ) the session keeps its numbers, as SimpleMessenger's
        // Pipe::accept and crimson's replace_existing do ("we respect our original
        // connection's value"): the connector keeps its own on READY (Ceph's
        // client_ready), so zeroed here (Async's ProtocolV1::open) its resends of what
        // we had delivered were delivered again, and our next messages, numbered from 1,
        // carried seqs it had and were dropped as duplicates.
        m.session.in_seq = Seq(0);
        if !m.session.queue.has_requeued() {
            m.session.renumber_from_start();
        }
    }
    let reply = ConnectReply {
        tag: if seq_exchange { Tag::SEQ } else { Tag::READY },
        features: m.policy.features_supported,
        global_seq: m.config.global_seq.next().to_v1(),
        connect_seq: m.session.connect_seq.to_v1(),
        protocol_version: proto_version(m.config.my_name.ty, p.msg.host_type, false),
        authorizer_len: 0,
        flags: if m.policy.lossy { CONNECT_LOSSY } else { 0 },
    };
    let mut out = Vec::with_capacity(ConnectReply::LEN + p.authorizer_reply.len() + 8);
    reply.encode_full(&p.authorizer_reply, m.session.in_seq.0, &mut out);
    m.ctrl.extend_from_slice(&out);
    m.session.features = m.policy.features_supported & p.msg.features;
    log::debug!(target: LOG, "{m}: replied {}", reply.tag);
    let opening = Opening { resumed, remote_reset: reset_from_peer, signer: p.signer };
    if seq_exchange {
        m.set_step(Handshake::AwaitPeerInSeq(opening));
    } else {
        open(m, now, opening);
    }
}

/// The connector's in_seq after our SEQ: what it already has of ours is not resent.
pub(crate) fn read_peer_in_seq(m: &mut Machine<V1>, now: Instant) -> bool {
    let Some(b) = m.rx.contiguous(8) else { return false };
    let mut s = [0u8; 8];
    s.copy_from_slice(b);
    m.rx.consume(8);
    let Some((_, Handshake::AwaitPeerInSeq(opening))) = m.take_step() else { return false };
    m.session.discard_requeued_up_to(Seq(u64::from_le_bytes(s)));
    open(m, now, opening);
    true
}

fn open(m: &mut Machine<V1>, now: Instant, opening: Opening) {
    let note = OpenNote {
        peer_addr: m.peer_addr.unwrap_or_default(),
        resumed: opening.resumed || m.session.in_seq.0 > 0 || m.session.out_seq.0 > 0,
        remote_reset: opening.remote_reset,
    };
    let rx = open_rx(&m.config, m.session.features);
    m.open(now, rx, opening.signer, note);
}
