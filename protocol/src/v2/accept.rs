//! The msgr2 accept side of the handshake (msgr-v2.md 4-7; Ceph's
//! `ProtocolV2::handle_hello`, `handle_auth_request(_more)`, `handle_client_ident`,
//! `handle_reconnect`, `send_server_ident`, `send_reconnect_ok` and the replies that
//! send the peer back to identify again).

use std::net::SocketAddr;
use std::time::Instant;

use crate::auth::{filter_modes, pick_mode, AuthRole, AuthStep, EACCES, EOPNOTSUPP};
use crate::session::REFUSED_FOREIGN;
use crate::session::{
    AcceptRequest, CloseReason, ConnectSeq, Counters, Decision, Event, Fault, GlobalSeq, Initiator,
    Machine, PeerIssue, RequestKind, Seq, Session, State, GLOBAL_SEQ_PLAUSIBLE,
};
use crate::types::{with_port, EntityAddr, EntityAddrVec, EntityType};

use super::frames::{
    AuthBadMethod, AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, ClientIdent,
    ControlFrame, Hello, IdentMissingFeatures, ServerIdent, SessionReconnect, SessionReconnectOk,
    SessionReset, SessionRetry, SessionRetryGlobal, Wait, IDENT_FLAG_LOSSY,
};
use super::framing::Frame;
use super::link::{LOG, MSGR2_REQUIRED, V2};
use super::open;
use super::race::msgr2_addr;
use super::send::{count_round, finish_auth, send_control, unexpected};
use super::state::{Handshake, ServerAuth, Transcript};
use super::tag::Tag;

/// The connector's HELLO: its entity type.
pub(crate) fn on_peer_hello(m: &mut Machine<V2>, _now: Instant, f: &Frame) -> Result<bool, Fault> {
    if f.tag() != Tag::HELLO {
        return Err(unexpected(f.tag()));
    }
    let hello = Hello::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
    // Our policy for its type decides the features (Ceph's handle_hello).
    m.learn_peer_type(hello.entity_type);
    let Some((deadline, Handshake::AwaitPeerHello(t))) = m.take_step() else { return Ok(false) };
    m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthRequest(t) });
    Ok(true)
}

/// AUTH_REQUEST (a method and its first payload) or AUTH_REQUEST_MORE.
pub(crate) fn on_auth_request(m: &mut Machine<V2>, now: Instant, f: &Frame) -> Result<bool, Fault> {
    count_round(m)?;
    let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
    let provider = m.config.auth.clone();
    let Some((deadline, step)) = m.take_step() else { return Ok(false) };
    let (mut t, mut auth, payload, more) = match (step, f.tag()) {
        (Handshake::AwaitAuthRequest(mut t), Tag::AUTH_REQUEST) => {
            let req = match AuthRequest::from_segment(&f.segments[0]) {
                Ok(r) => r,
                Err(e) => {
                    m.set_state(State::Handshake {
                        deadline,
                        step: Handshake::AwaitAuthRequest(t),
                    });
                    return Err(Fault::Decode(e));
                }
            };
            let allowed = provider.methods(AuthRole::Acceptor, peer_type);
            let modes = filter_modes(req.method, &provider.modes(AuthRole::Acceptor, peer_type));
            let mode = pick_mode(&req.preferred_modes, &modes);
            let server = allowed
                .contains(&req.method)
                .then(|| provider.server(peer_type, req.method))
                .flatten();
            match (mode, server) {
                (Some(mode), Some(server)) => {
                    (t, ServerAuth { server, method: req.method, mode }, req.payload, false)
                }
                _ => {
                    send_bad_method(m, &mut t, req.method, EOPNOTSUPP);
                    m.set_state(State::Handshake {
                        deadline,
                        step: Handshake::AwaitAuthRequest(t),
                    });
                    return Ok(true);
                }
            }
        }
        (Handshake::AwaitAuthRequestMore(t, auth), Tag::AUTH_REQUEST_MORE) => {
            match AuthRequestMore::from_segment(&f.segments[0]) {
                Ok(more) => (t, auth, more.payload, true),
                Err(e) => {
                    let step = Handshake::AwaitAuthRequestMore(t, auth);
                    m.set_state(State::Handshake { deadline, step });
                    return Err(Fault::Decode(e));
                }
            }
        }
        (step, other) => {
            m.set_state(State::Handshake { deadline, step });
            return Err(unexpected(other));
        }
    };
    // Ceph's auth servers refuse an empty payload with -EACCES before the method reads
    // it, whether it starts the exchange or continues it (Monitor::handle_auth_request
    // over msgr2; a daemon's MonClient::handle_auth_request, its messenger requiring an
    // authorizer). A cephx monitor's AUTH_REQUEST_MORE answered -EINVAL, its request
    // decoder having met no bytes.
    let step = if payload.is_empty() {
        AuthStep::Reject { result: EACCES }
    } else {
        auth.server.handle_request(now, auth.mode, more, &payload)
    };
    match step {
        AuthStep::More(payload) => {
            send_control(m, Some(&mut t), &AuthReplyMore { payload });
            m.set_state(State::Handshake {
                deadline,
                step: Handshake::AwaitAuthRequestMore(t, auth),
            });
        }
        AuthStep::Reject { result } => {
            // The method's verdict on the peer's credentials (not a method or mode we
            // do not allow, which never gets this far).
            Counters::bump(&m.config.counters.authorizers_rejected);
            send_bad_method(m, &mut t, auth.method, result);
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthRequest(t) });
        }
        AuthStep::Busy => {
            log::info!(target: LOG, "{m}: auth busy, dropping the connection");
            m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthRequest(t) });
            m.finish(Initiator::Library, CloseReason::Refused("authentication busy"));
            return Ok(false);
        }
        AuthStep::Done { global_id, payload, outcome } => {
            // The method was chosen by the type the peer's HELLO claimed; the one it
            // authenticated as must allow it too (Ceph's monitor checks the named
            // entity's type): else a peer claiming to be a client could pass as osd.0
            // with a method only clients may use (auth none where the cluster requires
            // cephx).
            let named = outcome.peer.as_ref().map(|p| EntityType::from_u32(p.name.ty));
            if let Some(named) = named {
                let allowed =
                    named.is_some_and(|ty| provider.allows_authenticated(auth.method, ty));
                if !allowed {
                    Counters::bump(&m.config.counters.authorizers_rejected);
                    send_bad_method(m, &mut t, auth.method, EOPNOTSUPP);
                    m.set_state(State::Handshake {
                        deadline,
                        step: Handshake::AwaitAuthRequest(t),
                    });
                    return Ok(true);
                }
            }
            m.proto.global_id = global_id;
            m.peer_auth = outcome.peer.clone();
            m.proto.con_mode = auth.mode;
            send_control(m, Some(&mut t), &AuthDone { global_id, con_mode: auth.mode, payload });
            // The acceptor's transcripts end with the AUTH_DONE it wrote.
            finish_auth(m, deadline, t, outcome, None)?;
        }
    }
    Ok(true)
}

/// AUTH_BAD_METHOD: the method (or its mode) is refused; the connector may try another.
fn send_bad_method(m: &mut Machine<V2>, t: &mut Transcript, method: u32, result: i32) {
    let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
    let provider = m.config.auth.clone();
    let bad = AuthBadMethod {
        method,
        result,
        allowed_methods: provider.methods(AuthRole::Acceptor, peer_type),
        allowed_modes: provider.modes(AuthRole::Acceptor, peer_type),
    };
    log::info!(target: LOG, "{m}: refusing auth method {} ({result})", bad.method);
    send_control(m, Some(t), &bad);
}

/// Whether `target` names us: one of our addresses, where a blank IP of ours matches
/// the IP the peer reached us on.
fn is_my_addr(m: &Machine<V2>, target: &EntityAddr) -> bool {
    m.config.my_addrs.addrs.iter().any(|mine| {
        if mine == target {
            return true;
        }
        mine.is_blank_ip()
            && mine.ty == target.ty
            && mine.nonce == target.nonce
            && mine.port() == target.port()
            && target.addr.map(|a| a.ip()) == m.proto.socket_local.map(|a| a.ip())
    })
}

/// Our addresses for SERVER_IDENT: a blank IP of ours (a listener on `0.0.0.0` or
/// `[::]`) is the IP the peer reached us on, keeping port and nonce, as `is_my_addr`
/// accepts it; the connector looks for the address it dialled among them (Ceph's
/// acceptor learns its IP from the connector's HELLO for the same end).
fn announced_addrs(m: &Machine<V2>) -> EntityAddrVec {
    let mut addrs = m.config.my_addrs.clone();
    if let Some(local) = m.proto.socket_local {
        for a in addrs.addrs.iter_mut().filter(|a| a.is_blank_ip() && a.addr.is_some()) {
            a.addr = Some(with_port(local, a.port()));
        }
    }
    addrs
}

/// CLIENT_IDENT or SESSION_RECONNECT: checked, then handed to the messenger.
#[doc(alias = "handle_client_ident")]
#[doc(alias = "handle_reconnect")]
pub(crate) fn on_ident(m: &mut Machine<V2>, _now: Instant, f: &Frame) -> Result<bool, Fault> {
    // Each answer but an open invites another try on this connection: a peer guessing
    // at a session's cookie, or retrying for ever, is cut off with the auth rounds.
    count_round(m)?;
    let socket_peer = m.socket_peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
    let (peer_addrs, kind) = match f.tag() {
        Tag::CLIENT_IDENT => {
            let ci = ClientIdent::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
            if ci.addrs.addrs.first().is_none_or(|a| *a == EntityAddr::default()) {
                return Err(Fault::Misbehaved("CLIENT_IDENT without addresses"));
            }
            if !is_my_addr(m, &ci.target_addr) {
                m.peer_issue(
                    PeerIssue::BadConnect,
                    format_args!("peer is trying to reach {} which is not us", ci.target_addr),
                );
                return Err(Fault::AddrMismatch);
            }
            let missing =
                (m.policy.features_required | MSGR2_REQUIRED).0 & !ci.supported_features.0;
            if missing != 0 {
                // The peer may try again on this connection (counted above).
                m.peer_issue(
                    PeerIssue::BadConnect,
                    format_args!("peer lacks required features {missing:#x}"),
                );
                send_control(m, None, &IdentMissingFeatures { missing_features: missing });
                return Ok(true);
            }
            if m.proto.offered_cookie == 0 {
                m.proto.offered_cookie = m.config.cookies.next();
            }
            let kind = RequestKind::Ident {
                peer_addrs: ci.addrs.clone(),
                global_seq: GlobalSeq(ci.global_seq),
                client_cookie: ci.client_cookie,
                features: ci.supported_features,
                gid: ci.gid,
                lossy: ci.is_lossy(),
            };
            (ci.addrs, kind)
        }
        Tag::SESSION_RECONNECT => {
            let r = SessionReconnect::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
            let kind = RequestKind::Reconnect {
                peer_addrs: r.addrs.clone(),
                global_seq: GlobalSeq(r.global_seq),
                connect_seq: ConnectSeq(r.connect_seq),
                client_cookie: r.client_cookie,
                server_cookie: r.server_cookie,
                msg_seq: Seq(r.msg_seq),
            };
            (r.addrs, kind)
        }
        other => return Err(unexpected(other)),
    };
    if let RequestKind::Ident { global_seq, .. } | RequestKind::Reconnect { global_seq, .. } = kind
    {
        if global_seq.0 > u64::from(GLOBAL_SEQ_PLAUSIBLE) {
            // Taken as the peer's global_seq, every later reconnect of the session would
            // be told to SESSION_RETRY_GLOBAL to it, which the connector refuses as
            // implausible: the session would never open again.
            m.peer_issue(PeerIssue::BadConnect, format_args!("global_seq {global_seq}"));
            return Err(Fault::Misbehaved("implausible global_seq"));
        }
    }
    let v2 = msgr2_addr(&peer_addrs);
    m.peer_addr = (v2.port() != 0).then_some(v2);
    let key = if v2 != EntityAddr::default() {
        v2
    } else {
        peer_addrs.addrs.first().copied().unwrap_or_default()
    };
    m.proto.peer_addrs = peer_addrs;
    let req = AcceptRequest { peer_addr: key, peer_type, socket_peer, kind };
    log::debug!(target: LOG, "{m}: {:?}", req.kind);
    m.events.push_back(Event::AcceptRequest(Box::new(req.clone())));
    m.set_step(Handshake::AwaitAcceptDecision(req));
    Ok(false)
}

/// The messenger's accept decision (Ceph's `handle_existing_connection` and
/// `handle_reconnect` after the lookup).
#[doc(alias = "handle_existing_connection")]
pub(crate) fn handle_decision(
    m: &mut Machine<V2>,
    now: Instant,
    decision: Decision,
    transferred: Option<Session>,
) {
    let Some((deadline, Handshake::AwaitAcceptDecision(req))) = m.take_step() else { return };
    // Every answer but an open or a drop sends the peer back to identify again.
    m.set_state(State::Handshake { deadline, step: Handshake::AwaitIdent });
    let is_ident = matches!(req.kind, RequestKind::Ident { .. });
    match decision {
        Decision::Open if is_ident => accept_new_session(m, now, &req, None, false, false),
        Decision::Replace { reset_existing, peer_restarted } if is_ident => {
            let kept = if reset_existing { None } else { transferred };
            accept_new_session(m, now, &req, kept, reset_existing, peer_restarted)
        }
        Decision::Replace { .. } => match transferred {
            Some(s) => accept_resume(m, now, &req, s),
            // Nothing to resume after all: the peer starts over.
            None => reply_and_wait(m, now, &SessionReset { full: true }),
        },
        Decision::Open => reply_and_wait(m, now, &SessionReset { full: true }),
        Decision::Drop => {
            log::info!(target: LOG, "{m}: stale connection (older global_seq), closing");
            m.finish(Initiator::Library, CloseReason::Replaced);
        }
        Decision::Refuse => {
            Counters::bump(&m.config.counters.identity_refused);
            m.peer_issue(PeerIssue::BadConnect, format_args!("{REFUSED_FOREIGN}"));
            m.finish(Initiator::Library, CloseReason::Refused(REFUSED_FOREIGN));
        }
        Decision::Wait => reply_and_wait(m, now, &Wait),
        Decision::ResetSession { full } => reply_and_wait(m, now, &SessionReset { full }),
        Decision::RetrySession(cs) => reply_and_wait(m, now, &SessionRetry { connect_seq: cs.0 }),
        Decision::RetryGlobal(gs) => {
            reply_and_wait(m, now, &SessionRetryGlobal { global_seq: gs.0 })
        }
    }
}

/// A reply after which the peer sends another ident or reconnect (or gives up).
fn reply_and_wait<F: ControlFrame>(m: &mut Machine<V2>, now: Instant, f: &F) {
    log::debug!(target: LOG, "{m}: replied {}", F::TAG);
    send_control(m, None, f);
    m.process(now);
}

/// SERVER_IDENT: a new session (Ceph's `send_server_ident`), possibly keeping the
/// queues of a replaced one.
fn accept_new_session(
    m: &mut Machine<V2>,
    now: Instant,
    req: &AcceptRequest,
    kept: Option<Session>,
    reset_existing: bool,
    remote_reset: bool,
) {
    let RequestKind::Ident { global_seq, client_cookie, features, gid, .. } = req.kind else {
        return;
    };
    let mut resumed = false;
    if let Some(mut s) = kept {
        s.requeue_sent();
        m.session = s;
        resumed = true;
    }
    if remote_reset && reset_existing {
        m.events.push_back(Event::RemoteReset);
    }
    m.once_ready = true;
    m.session.features = features & m.policy.features_supported;
    m.session.peer_gid = gid;
    m.session.cookies.client = client_cookie;
    m.session.cookies.server = if m.lossy { 0 } else { m.proto.offered_cookie };
    m.session.peer_global_seq = global_seq;
    // A new session numbers from 1 both ways; kept messages are renumbered.
    m.session.renumber_from_start();
    // And counts its reconnects from 0, as the peer does: CLIENT_IDENT starts a session
    // at connect_seq 0 (Ceph's connector asserts it). Unlike Ceph, whose
    // `reuse_connection` keeps the replaced session's connect_seq when it has no
    // resetcheck to reset it: the two ends then disagree, and the peer's next reconnect
    // (connect_seq 1) can meet our parked session at that same number, which
    // `handle_reconnect` takes for a reconnect race and answers WAIT, though our side,
    // in standby, will never dial: the peer sits out the whole WAIT backoff.
    m.session.connect_seq = ConnectSeq(0);
    let si = ServerIdent {
        addrs: announced_addrs(m),
        gid: m.config.my_name.num,
        global_seq: m.config.global_seq.next().0,
        supported_features: m.policy.features_supported,
        required_features: m.policy.features_required | MSGR2_REQUIRED,
        flags: if m.lossy { IDENT_FLAG_LOSSY } else { 0 },
        server_cookie: m.session.cookies.server,
    };
    send_control(m, None, &si);
    open::start(m, now, resumed, remote_reset);
    m.process(now);
}

/// SESSION_RECONNECT_OK: the session resumes (Ceph's `send_reconnect_ok`).
fn accept_resume(m: &mut Machine<V2>, now: Instant, req: &AcceptRequest, mut s: Session) {
    let RequestKind::Reconnect { global_seq, connect_seq, msg_seq, .. } = req.kind else {
        return;
    };
    s.requeue_sent();
    m.session = s;
    m.once_ready = true;
    m.session.connect_seq = connect_seq;
    m.session.peer_global_seq = global_seq;
    m.session.discard_requeued_up_to(msg_seq);
    let in_seq = m.session.in_seq;
    send_control(m, None, &SessionReconnectOk { msg_seq: in_seq.0 });
    open::start(m, now, true, false);
    m.process(now);
}
