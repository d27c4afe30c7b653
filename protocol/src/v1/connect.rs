//! The v1 connect side of the handshake (msgr-v1.md 3.2-3.6; Ceph's
//! `ProtocolV1::send_connect_message` and `handle_connect_reply_2`): banner, our
//! address, connect messages, and every reply the acceptor can give.

use std::time::Instant;

use bytes::Bytes;

use crate::auth::{AuthError, AuthorizerClient};
use crate::error::Error;
use crate::session::{
    ConnectSeq, Counters, Event, Fault, GlobalSeq, Machine, OpenNote, PeerIssue, Seq, State,
    GLOBAL_SEQ_PLAUSIBLE,
};
use crate::types::{proto_version, unmapped, with_port, EntityType};
use crate::wire::{
    check_banner, AcceptorBanner, ConnectMsg, ConnectReply, Tag, ACCEPTOR_BLOCK_LEN, BANNER,
    BANNER_LEN, CONNECT_LOSSY, MAX_AUTHORIZER_LEN,
};

use super::accept::MAX_CONNECT_ATTEMPTS;
use super::open::open_rx;
use super::state::{Handshake, LOG, V1};

/// The dialled socket connected: our banner goes first (the acceptor writes its own at
/// once too).
pub(crate) fn start(m: &mut Machine<V1>) -> Handshake {
    m.ctrl.extend_from_slice(BANNER);
    Handshake::AwaitBanner
}

/// The acceptor's banner, its address and ours as it sees us (281 bytes).
pub(crate) fn read_acceptor_banner(m: &mut Machine<V1>, now: Instant) -> bool {
    let Some(buf) = m.rx.contiguous(ACCEPTOR_BLOCK_LEN) else {
        // A wrong banner is known from its first 9 bytes.
        if let Some(b) = m.rx.contiguous(BANNER_LEN.min(m.rx.len())) {
            if b.len() == BANNER_LEN && check_banner(b).is_err() {
                m.fault(now, Fault::BadBanner);
            }
        }
        return false;
    };
    let block = match AcceptorBanner::decode(buf) {
        Ok((b, _)) => b,
        Err(Error::BadBanner) => {
            m.fault(now, Fault::BadBanner);
            return false;
        }
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    m.rx.consume(ACCEPTOR_BLOCK_LEN);
    // The acceptor must be who we dialled; a blank IP with our port and nonce passes.
    if let Some(dialled) = m.peer_addr {
        let same = block.my_addr.nonce == dialled.nonce && block.my_addr.addr == dialled.addr;
        let blank_ok = block.my_addr.is_blank_ip()
            && block.my_addr.port() == dialled.port()
            && block.my_addr.nonce == dialled.nonce;
        if !same && !blank_ok {
            m.peer_issue(
                PeerIssue::BadBanner,
                format_args!("peer announced {:?}, dialled {:?}", block.my_addr, dialled),
            );
            m.fault(now, Fault::AddrMismatch);
            return false;
        }
    }
    // Learn our IP from what the peer saw (ms_learn_addr_from_peer), keep port/nonce:
    // the messenger's first such report decides for every connection (Ceph's
    // `learned_addr`, then `get_myaddr_legacy`).
    let mut me = m.config.v1_addr();
    if me.is_blank_ip() {
        // An acceptor on a dual-stack `[::]` listener may see us as
        // `[::ffff:a.b.c.d]`: we are reached at `a.b.c.d`.
        let seen = block.peer_addr.addr.map(unmapped);
        if let Some(seen) = seen {
            if m.config.learned_addr.learn(seen, &m.config.my_addrs) {
                m.events.push_back(Event::LearnedAddr);
            }
        }
        m.config.learned_addr.fill_one(&mut me);
        // What the messenger does not take (a bound address of another family: a
        // `[::]` listener seen over IPv4) this connection still announces as its peer
        // saw it, so the peer does not key us by a blank IP.
        if let (true, Some(seen)) = (me.is_blank_ip(), seen) {
            if !seen.ip().is_unspecified() {
                me.addr = Some(with_port(seen, me.port()));
            }
        }
    }
    m.ctrl.extend_from_slice(&me.encode_legacy());
    let Ok(authorizer) = send_connect(m, None) else { return false };
    m.set_step(Handshake::AwaitConnectReply { authorizer, connects: 1, answered: None });
    true
}

/// Sends a connect message. Its authorizer is `answer` (the same authorizer with the
/// bytes that answer a challenge), else a fresh one from the auth provider (Ceph asks
/// `ms_get_authorizer` for every connect, unless a non-monitor talks to a monitor:
/// clients authenticate to monitors with MAuth afterwards). Returns the authorizer,
/// for the reply; `Err` once the machine faulted because none could be built (cephx
/// without a ticket for the peer: Ceph's connector faults too, and a connect without
/// it would open a session neither authenticated nor signed).
fn send_connect(
    m: &mut Machine<V1>,
    answer: Option<(Box<dyn AuthorizerClient>, Bytes)>,
) -> Result<Option<Box<dyn AuthorizerClient>>, ()> {
    let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
    let my_type = m.config.my_name.ty;
    let (authorizer, bytes) = match answer {
        Some((a, bytes)) => (Some(a), bytes),
        None if peer_type != EntityType::MON || my_type == EntityType::MON => {
            match m.config.auth.authorizer_client(peer_type) {
                Ok(a) => {
                    let bytes = a.as_ref().map(|a| a.bytes()).unwrap_or_default();
                    (a, bytes)
                }
                Err(e) => {
                    let now = m.now;
                    m.fault(now, Fault::Auth(e));
                    return Err(());
                }
            }
        }
        None => (None, Bytes::new()),
    };
    let msg = ConnectMsg {
        features: m.policy.features_supported,
        host_type: my_type,
        global_seq: m.global_seq.to_v1(),
        connect_seq: m.session.connect_seq.to_v1(),
        protocol_version: proto_version(my_type, peer_type, true),
        authorizer_protocol: authorizer.as_ref().map_or(0, |a| a.method()),
        authorizer_len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        flags: if m.policy.lossy { CONNECT_LOSSY } else { 0 },
    };
    let mut out = Vec::with_capacity(ConnectMsg::LEN + bytes.len());
    msg.encode_with_authorizer(&bytes, &mut out);
    m.ctrl.extend_from_slice(&out);
    Counters::bump(&m.config.counters.connects);
    log::debug!(target: LOG, "{m}: connect gs={} cs={}", msg.global_seq, msg.connect_seq);
    Ok(authorizer)
}

/// The acceptor's reply to our connect (msgr-v1.md 3.5).
pub(crate) fn read_connect_reply(m: &mut Machine<V1>, now: Instant) -> bool {
    let parsed = m.rx.parse(ConnectReply::LEN, |b| {
        ConnectReply::decode_full(b, MAX_AUTHORIZER_LEN)
            .map(|(r, auth, in_seq, used)| ((r, Bytes::copy_from_slice(auth), in_seq), used))
    });
    let (reply, auth_reply, peer_in_seq) = match parsed {
        Ok(Some(r)) => r,
        Ok(None) => return false,
        Err(e) => {
            m.fault(now, Fault::Decode(e));
            return false;
        }
    };
    log::debug!(target: LOG, "{m}: reply {} gs={} cs={}", reply.tag, reply.global_seq, reply.connect_seq);
    let (authorizer, connects, answered) = match m.state.step_mut() {
        Some(Handshake::AwaitConnectReply { authorizer, connects, answered }) => {
            (authorizer.take(), *connects, answered.take())
        }
        _ => (None, 0, None),
    };
    // Every one of these replies asks for another connect, each with an authorizer
    // (cephx: a seal and random bytes) for the ~26 bytes of the reply. Ceph's acceptor
    // needs a few in a row at most (a race, a reset, a challenge); a peer that asks on
    // and on is cut off, and the reconnect waits out its backoff.
    let again = matches!(
        reply.tag,
        Tag::CHALLENGE_AUTHORIZER | Tag::RESETSESSION | Tag::RETRY_GLOBAL | Tag::RETRY_SESSION
    );
    if again && connects >= MAX_CONNECT_ATTEMPTS {
        m.peer_issue(
            PeerIssue::BadConnectReply,
            format_args!("{} after {connects} connects on one connection", reply.tag),
        );
        m.fault(now, Fault::Misbehaved("too many connect retries asked for on one connection"));
        return false;
    }
    let connects = connects + 1;
    let supported = m.policy.features_supported;
    match reply.tag {
        Tag::FEATURES => {
            let missing = supported.missing_from(reply.features);
            m.peer_issue(
                PeerIssue::BadConnectReply,
                format_args!("peer requires features we lack: {missing}"),
            );
            m.refuse("peer requires features we lack");
            false
        }
        Tag::BADPROTOVER => {
            m.peer_issue(
                PeerIssue::BadConnectReply,
                format_args!("peer wants protocol version {}", reply.protocol_version),
            );
            m.refuse("protocol version mismatch");
            false
        }
        Tag::BADAUTHORIZER => {
            Counters::bump(&m.config.counters.authorizers_refused_by_peer);
            if m.lossy {
                m.refuse("authorizer rejected");
            } else {
                // Ceph faults: a lossless session dials again after its backoff, with a
                // fresh authorizer. The acceptor's rotating secrets may lag the ticket's
                // (or our tickets be renewed meanwhile); closed here, the session's
                // queued messages would be lost.
                m.fault(now, Fault::Auth(AuthError::BadAuthorizer("the peer rejected ours")));
            }
            false
        }
        Tag::CHALLENGE_AUTHORIZER => {
            let Some(mut a) = authorizer else {
                m.refuse("authorizer challenge without an authorizer to answer it");
                return false;
            };
            match a.handle_challenge(&auth_reply) {
                Ok(bytes) => {
                    let Ok(authorizer) = send_connect(m, Some((a, bytes.clone()))) else {
                        return false;
                    };
                    m.set_step(Handshake::AwaitConnectReply {
                        authorizer,
                        connects,
                        answered: Some(bytes),
                    });
                    true
                }
                Err(e) => {
                    m.fault(now, Fault::Auth(e));
                    false
                }
            }
        }
        Tag::RESETSESSION => {
            Counters::bump(&m.config.counters.reset_session);
            log::info!(target: LOG, "{m}: peer reset our session");
            // A keepalive asked for stays: it goes out on the new session (Ceph's
            // `session_reset` leaves its `keepalive` flag alone).
            m.session.reset();
            m.events.push_back(crate::session::Event::RemoteReset);
            resend_connect(m, connects, authorizer, answered);
            true
        }
        Tag::RETRY_GLOBAL => {
            Counters::bump(&m.config.counters.retry_global);
            if !m.config.global_seq.may_raise_to(GlobalSeq::from_v1(reply.global_seq)) {
                // Past half the wire's range no messenger gets (a connect attempt each),
                // and the process-wide counter raised above it would wrap to 0 on the
                // wire for every connection. Raised near that limit, the messenger's
                // next attempts, on every connection, passed it and were refused by our
                // acceptors: a raise leaves headroom (`GLOBAL_SEQ_RAISE_LIMIT`).
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("RETRY_GLOBAL to {}", reply.global_seq),
                );
                m.fault(now, Fault::Misbehaved("implausible global_seq in RETRY_GLOBAL"));
                return false;
            }
            m.global_seq = m.config.global_seq.above(GlobalSeq::from_v1(reply.global_seq));
            resend_connect(m, connects, authorizer, answered);
            true
        }
        Tag::RETRY_SESSION => {
            Counters::bump(&m.config.counters.retry_session);
            let ours = m.session.connect_seq.to_v1();
            if reply.connect_seq <= ours {
                // An acceptor asks for a connect_seq above the one it saw (Ceph's
                // connector asserts it). Adopted, a lower one (0: "I lost my session")
                // made the acceptor zero its in_seq as for a restarted peer while we
                // kept ours and resent what it had: delivered twice, no reset told.
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("RETRY_SESSION to {} from {ours}", reply.connect_seq),
                );
                m.fault(now, Fault::Misbehaved("RETRY_SESSION to a connect_seq not above ours"));
                return false;
            }
            m.session.connect_seq = ConnectSeq::from_v1(reply.connect_seq);
            resend_connect(m, connects, authorizer, answered);
            true
        }
        Tag::WAIT => {
            Counters::bump(&m.config.counters.wait);
            m.fault(now, Fault::Wait);
            false
        }
        Tag::SEQ | Tag::READY => {
            let missing = reply.features.missing_from(m.policy.features_required);
            if !missing.is_empty() {
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("peer lacks required features {missing}"),
                );
                m.refuse("peer lacks required features");
                return false;
            }
            let cs = m.session.connect_seq.next_v1();
            if reply.connect_seq != cs.to_v1() {
                m.fault(now, Fault::Misbehaved("connect_seq in the reply is not ours + 1"));
                return false;
            }
            if reply.global_seq > GLOBAL_SEQ_PLAUSIBLE {
                // Kept as the peer's global_seq, its every later connect of the session
                // would be told to RETRY_GLOBAL to it, which it refuses: never open again.
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("global_seq {}", reply.global_seq),
                );
                m.fault(now, Fault::Misbehaved("implausible global_seq in the reply"));
                return false;
            }
            let features = reply.features & supported;
            let signer = match authorizer.map(|mut a| a.handle_reply(&auth_reply, features)) {
                None => None,
                Some(Ok(signer)) => signer,
                Some(Err(e)) => {
                    m.fault(now, Fault::Auth(e));
                    return false;
                }
            };
            if let Some(peer_in) = peer_in_seq {
                m.session.discard_requeued_up_to(Seq(peer_in));
                m.ctrl.extend_from_slice(&m.session.in_seq.0.to_le_bytes());
            }
            m.session.connect_seq = cs;
            m.session.peer_global_seq = GlobalSeq::from_v1(reply.global_seq);
            // The acceptor decides, as Ceph's client_ready takes the reply's flag ("this
            // is fyi, actually, server decides!"): a lossy client of a stateful server
            // acks and resends, or the server's unacked list grew for the connection's
            // life. msgr2 does the same with its server ident.
            m.lossy = reply.is_lossy();
            m.policy.lossy = m.lossy;
            m.session.features = features;
            let note = OpenNote {
                peer_addr: m.peer_addr.unwrap_or_default(),
                resumed: m.session.in_seq.0 > 0 || m.session.out_seq.0 > 0,
                remote_reset: false,
            };
            let rx = open_rx(&m.config, features);
            m.open(now, rx, signer, note);
            true
        }
        other => {
            m.fault(now, Fault::UnknownTag(other.0));
            false
        }
    }
}

/// A retry reply: the next connect on this TCP connection, with the authorizer that
/// answered the acceptor's challenge if one did (as Ceph's connector does: the acceptor
/// keeps its challenge for the connection), else a fresh one.
fn resend_connect(
    m: &mut Machine<V1>,
    connects: u32,
    authorizer: Option<Box<dyn AuthorizerClient>>,
    answered: Option<Bytes>,
) {
    let (sent, answered) = match (authorizer, answered) {
        (Some(a), Some(bytes)) => (send_connect(m, Some((a, bytes.clone()))), Some(bytes)),
        _ => (send_connect(m, None), None),
    };
    let Ok(authorizer) = sent else { return };
    if matches!(m.state, State::Handshake { .. }) {
        m.set_step(Handshake::AwaitConnectReply { authorizer, connects, answered });
    }
}
