//! The msgr2 connect side of the handshake (msgr-v2.md 4-7; Ceph's
//! `ProtocolV2::handle_hello`, `send_auth_request`, `handle_auth_*`,
//! `send_client_ident`, `send_reconnect`, `handle_server_ident`, `handle_reconnect_ok`
//! and the retry/reset/wait handlers).

use std::time::Instant;

use crate::auth::{filter_modes, AuthError, AuthRole, EOPNOTSUPP};
use crate::session::{
    ConnectSeq, Counters, Event, Fault, GlobalSeq, Machine, PeerIssue, Seq, State,
    GLOBAL_SEQ_PLAUSIBLE,
};
use crate::types::{unmapped, with_port, EntityType};

use super::frames::{
    AuthBadMethod, AuthDone, AuthReplyMore, AuthRequest, AuthRequestMore, ClientIdent,
    ControlFrame, Hello, IdentMissingFeatures, ServerIdent, SessionReconnect, SessionReconnectOk,
    SessionReset, SessionRetry, SessionRetryGlobal, Wait, IDENT_FLAG_LOSSY,
};
use super::framing::Frame;
use super::link::{LOG, MSGR2_REQUIRED, V2};
use super::open;
use super::send::{count_round, finish_auth, send_control, unexpected};
use super::state::{ClientAuth, Handshake, Transcript};
use super::tag::Tag;

/// The acceptor's HELLO: it names its entity type and the address it saw us at.
pub(crate) fn on_hello(m: &mut Machine<V2>, _now: Instant, f: &Frame) -> Result<bool, Fault> {
    if f.tag() != Tag::HELLO {
        return Err(unexpected(f.tag()));
    }
    let hello = Hello::from_segment(&f.segments[0]).map_err(Fault::Decode)?;
    if let Some(expected) = m.peer_type {
        if hello.entity_type != expected {
            log::warn!(target: LOG, "{m}: peer is a {}, expected a {expected}", hello.entity_type);
            // Ceph's handle_hello: stop() and queue_reset, lossless or not; redialling
            // would only reach the same daemon.
            m.stop_and_reset("peer is not the entity type dialled");
            return Ok(false);
        }
    }
    // ms_learn_addr_from_peer: adopt the IP the acceptor saw, keep port and nonce; the
    // messenger's first such report decides for every connection (Ceph's
    // `learned_addr`, then `get_myaddrs` in CLIENT_IDENT). (An acceptor on a dual-stack
    // `[::]` listener may see us as `[::ffff:a.b.c.d]`: we are reached at `a.b.c.d`.)
    if m.proto.my_addrs.addrs.iter().any(|a| a.is_blank_ip()) {
        let seen = hello.peer_addr.addr.map(unmapped);
        if let Some(seen) = seen {
            if m.config.learned_addr.learn(seen, &m.config.my_addrs) {
                m.events.push_back(Event::LearnedAddr);
            }
        }
        m.config.learned_addr.fill(&mut m.proto.my_addrs);
        // What the messenger does not take (a bound address of another family: a
        // `[::]` listener seen over IPv4) this connection still announces as its peer
        // saw it, so the peer does not key us by a blank IP.
        if let Some(seen) = seen.filter(|s| !s.ip().is_unspecified()) {
            for a in m.proto.my_addrs.addrs.iter_mut().filter(|a| a.is_blank_ip()) {
                a.addr = Some(with_port(seen, a.port()));
            }
        }
    }
    let Some((deadline, Handshake::AwaitHello(t))) = m.take_step() else { return Ok(false) };
    start_auth(m, deadline, t, Vec::new(), false)
}

/// Sends AUTH_REQUEST with our next untried method. With none left we give up for good
/// if we have none to offer (Ceph's `get_auth_request` failing: stop + reset), or if the
/// peer refused them (`refused`) on a lossy session; a lossless one faults and dials
/// again after its backoff, as Ceph's `handle_auth_bad_method` does: the acceptor's
/// rotating secrets may lag our ticket's, and closing the session would lose its queued
/// messages. Returns whether to go on reading.
fn start_auth(
    m: &mut Machine<V2>,
    deadline: Instant,
    mut t: Transcript,
    mut tried: Vec<u32>,
    refused: bool,
) -> Result<bool, Fault> {
    let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
    // A connector always knows the address it dialled.
    let peer_addr = m.peer_addr.unwrap_or_default();
    let provider = m.config.auth.clone();
    for method in provider.methods(AuthRole::Connector, peer_type) {
        if tried.contains(&method) {
            continue;
        }
        let Some(mut client) = provider.client(peer_type, &peer_addr, method) else { continue };
        let modes = filter_modes(method, &provider.modes(AuthRole::Connector, peer_type));
        if modes.is_empty() {
            tried.push(method);
            continue;
        }
        let payload = match client.build_request() {
            Ok(p) => p,
            Err(e) => {
                m.set_state(State::Handshake { deadline, step: Handshake::AwaitHello(t) });
                return Err(Fault::Decode(e));
            }
        };
        let req = AuthRequest { method, preferred_modes: modes.clone(), payload };
        send_control(m, Some(&mut t), &req);
        let auth = ClientAuth { client, method, tried, offered: modes };
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthReply(t, auth) });
        return Ok(true);
    }
    if refused && !m.lossy {
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitHello(t) });
        return Err(Fault::Auth(AuthError::BadAuthorizer("the peer refused every method")));
    }
    m.refuse("no auth method left that both sides allow");
    Ok(false)
}

/// AUTH_BAD_METHOD, AUTH_REPLY_MORE or AUTH_DONE.
pub(crate) fn on_auth_reply(m: &mut Machine<V2>, now: Instant, f: &Frame) -> Result<bool, Fault> {
    count_round(m)?;
    let Some((deadline, Handshake::AwaitAuthReply(mut t, mut auth))) = m.take_step() else {
        return Ok(false);
    };
    let back = |m: &mut Machine<V2>, t, auth| {
        m.set_state(State::Handshake { deadline, step: Handshake::AwaitAuthReply(t, auth) });
    };
    match f.tag() {
        Tag::AUTH_BAD_METHOD => {
            let bad = match AuthBadMethod::from_segment(&f.segments[0]) {
                Ok(b) => b,
                Err(e) => {
                    back(m, t, auth);
                    return Err(Fault::Decode(e));
                }
            };
            log::info!(target: LOG, "{m}: auth method {} refused ({}), allowed {:?} modes {:?}", bad.method, bad.result, bad.allowed_methods, bad.allowed_modes);
            // -EOPNOTSUPP: the method or mode is not allowed (negotiation); anything
            // else is the method's verdict on our credentials.
            if bad.result != EOPNOTSUPP {
                Counters::bump(&m.config.counters.authorizers_refused_by_peer);
            }
            let mut tried = auth.tried;
            tried.push(auth.method);
            // Only methods the peer allows are worth another request.
            let peer_type = m.peer_type.unwrap_or(EntityType::ANY);
            for method in m.config.auth.methods(AuthRole::Connector, peer_type) {
                if !bad.allowed_methods.contains(&method) && !tried.contains(&method) {
                    tried.push(method);
                }
            }
            let _ = now;
            start_auth(m, deadline, t, tried, true)
        }
        Tag::AUTH_REPLY_MORE => {
            let more = AuthReplyMore::from_segment(&f.segments[0]).map_err(Fault::Decode);
            let payload = more.and_then(|more| {
                auth.client.handle_reply_more(&more.payload).map_err(Fault::Decode)
            });
            match payload {
                Ok(payload) => {
                    send_control(m, Some(&mut t), &AuthRequestMore { payload });
                    back(m, t, auth);
                    Ok(true)
                }
                Err(fault) => {
                    back(m, t, auth);
                    Err(fault)
                }
            }
        }
        Tag::AUTH_DONE => {
            let done = match AuthDone::from_segment(&f.segments[0]) {
                Ok(d) if auth.offered.contains(&d.con_mode) => d,
                Ok(_) => {
                    back(m, t, auth);
                    return Err(Fault::Misbehaved("AUTH_DONE with a mode we did not offer"));
                }
                Err(e) => {
                    back(m, t, auth);
                    return Err(Fault::Decode(e));
                }
            };
            let outcome =
                match auth.client.handle_done(now, done.global_id, done.con_mode, &done.payload) {
                    Ok(o) => o,
                    Err(e) => {
                        back(m, t, auth);
                        return Err(Fault::Decode(e));
                    }
                };
            m.proto.global_id = done.global_id;
            m.proto.con_mode = done.con_mode;
            // The connector's transcripts end with the AUTH_DONE it read.
            finish_auth(m, deadline, t, outcome, Some(auth.client))?;
            Ok(true)
        }
        other => {
            back(m, t, auth);
            Err(unexpected(other))
        }
    }
}

/// CLIENT_IDENT for a new session, SESSION_RECONNECT to resume one (the connector has
/// a server cookie).
#[doc(alias = "finish_client_auth")]
#[doc(alias = "send_client_ident")]
#[doc(alias = "send_reconnect")]
pub(crate) fn send_ident_or_reconnect(m: &mut Machine<V2>) {
    let reconnect = m.session.cookies.server != 0;
    if !reconnect {
        if !m.lossy && m.session.cookies.client == 0 {
            m.session.cookies.client = m.config.cookies.next();
        }
        let ident = ClientIdent {
            addrs: m.proto.my_addrs.clone(),
            target_addr: m.peer_addr.unwrap_or_default(),
            gid: m.config.my_name.num,
            global_seq: m.global_seq.0,
            supported_features: m.policy.features_supported,
            required_features: m.policy.features_required | MSGR2_REQUIRED,
            flags: if m.lossy { IDENT_FLAG_LOSSY } else { 0 },
            client_cookie: if m.lossy { 0 } else { m.session.cookies.client },
        };
        log::debug!(target: LOG, "{m}: client ident gs={} cookie={:#x}", ident.global_seq, ident.client_cookie);
        send_control(m, None, &ident);
    } else {
        let r = SessionReconnect {
            addrs: m.proto.my_addrs.clone(),
            client_cookie: m.session.cookies.client,
            server_cookie: m.session.cookies.server,
            global_seq: m.global_seq.0,
            connect_seq: m.session.connect_seq.0,
            msg_seq: m.session.in_seq.0,
        };
        log::debug!(target: LOG, "{m}: reconnect gs={} cs={} ms={}", r.global_seq, r.connect_seq, r.msg_seq);
        send_control(m, None, &r);
    }
    Counters::bump(&m.config.counters.connects);
    m.set_step(Handshake::AwaitIdentReply { reconnect });
}

/// The acceptor's answer to our ident or reconnect.
pub(crate) fn on_ident_reply(m: &mut Machine<V2>, now: Instant, f: &Frame) -> Result<bool, Fault> {
    let s0 = &f.segments[0];
    let reconnecting =
        matches!(m.state.step(), Some(Handshake::AwaitIdentReply { reconnect: true }));
    let reconnect_only = || {
        if reconnecting {
            Ok(())
        } else {
            Err(Fault::Misbehaved("session reply to an ident that was not a reconnect"))
        }
    };
    let counters = m.config.counters.clone();
    match f.tag() {
        Tag::SERVER_IDENT => {
            if reconnecting {
                return Err(Fault::Misbehaved("SERVER_IDENT in answer to a reconnect"));
            }
            let si = ServerIdent::from_segment(s0).map_err(Fault::Decode)?;
            let target = m.peer_addr.unwrap_or_default();
            if !si.addrs.addrs.contains(&target) {
                log::warn!(target: LOG, "{m}: peer identifies as {:?}, not {target}", si.addrs);
                return Err(Fault::AddrMismatch);
            }
            let missing = si.supported_features.missing_from(m.policy.features_required);
            if !missing.is_empty() {
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("peer lacks required features {missing}"),
                );
                m.refuse("peer lacks required features");
                return Ok(false);
            }
            if si.global_seq > u64::from(GLOBAL_SEQ_PLAUSIBLE) {
                // Kept as the peer's global_seq, its every later reconnect of the session
                // would be told to SESSION_RETRY_GLOBAL to it, which it refuses.
                m.peer_issue(
                    PeerIssue::BadConnectReply,
                    format_args!("global_seq {}", si.global_seq),
                );
                return Err(Fault::Misbehaved("implausible global_seq in SERVER_IDENT"));
            }
            m.session.cookies.server = si.server_cookie;
            m.session.peer_global_seq = GlobalSeq(si.global_seq);
            m.session.peer_gid = si.gid;
            m.session.features = si.supported_features & m.policy.features_supported;
            m.lossy = si.is_lossy();
            m.proto.peer_addrs = si.addrs;
            m.policy.lossy = m.lossy;
            open::start(m, now, false, false);
            Ok(true)
        }
        Tag::IDENT_MISSING_FEATURES => {
            // Only an answer to our CLIENT_IDENT: an acceptor checks features against a
            // new session, never a resumed one (Ceph's connector faults on it elsewhere,
            // keeping the session; a refusal here would drop its queued messages).
            if reconnecting {
                return Err(Fault::Misbehaved("IDENT_MISSING_FEATURES in answer to a reconnect"));
            }
            let missing = IdentMissingFeatures::from_segment(s0).map_err(Fault::Decode)?;
            m.peer_issue(
                PeerIssue::BadConnectReply,
                format_args!("peer requires features we lack: {:#x}", missing.missing_features),
            );
            m.refuse("peer requires features we lack");
            Ok(false)
        }
        Tag::SESSION_RECONNECT_OK => {
            reconnect_only()?;
            let ok = SessionReconnectOk::from_segment(s0).map_err(Fault::Decode)?;
            m.session.discard_requeued_up_to(Seq(ok.msg_seq));
            open::start(m, now, true, false);
            Ok(true)
        }
        Tag::SESSION_RETRY => {
            reconnect_only()?;
            let r = SessionRetry::from_segment(s0).map_err(Fault::Decode)?;
            count_round(m)?;
            Counters::bump(&counters.retry_session);
            m.session.connect_seq = ConnectSeq(r.connect_seq).next();
            send_ident_or_reconnect(m);
            Ok(true)
        }
        Tag::SESSION_RETRY_GLOBAL => {
            reconnect_only()?;
            let r = SessionRetryGlobal::from_segment(s0).map_err(Fault::Decode)?;
            count_round(m)?;
            Counters::bump(&counters.retry_global);
            if !m.config.global_seq.may_raise_to(GlobalSeq(r.global_seq)) {
                // No messenger gets there (a connect attempt each; Ceph's counter is 32
                // bits). The counter is the process's, v1's too: raised past 2^32, every
                // v1 connect would carry its low bits, wrapped back near 0, and v1 peers
                // with a session of ours would answer RETRY_GLOBAL for hours; raised near
                // the limit our acceptors take, the next attempts of every connection
                // passed it and were refused (`GLOBAL_SEQ_RAISE_LIMIT` leaves headroom).
                return Err(Fault::Misbehaved("implausible global_seq in SESSION_RETRY_GLOBAL"));
            }
            m.global_seq = m.config.global_seq.above(GlobalSeq(r.global_seq));
            send_ident_or_reconnect(m);
            Ok(true)
        }
        Tag::SESSION_RESET => {
            reconnect_only()?;
            let r = SessionReset::from_segment(s0).map_err(Fault::Decode)?;
            count_round(m)?;
            Counters::bump(&counters.reset_session);
            log::info!(target: LOG, "{m}: peer reset our session (full {})", r.full);
            if r.full {
                // A keepalive asked for stays: it goes out on the new session (Ceph's
                // `reset_session` leaves its `keepalive` flag alone).
                m.session.reset();
                m.events.push_back(Event::RemoteReset);
            } else {
                m.session.cookies.server = 0;
                m.session.connect_seq = ConnectSeq(0);
                m.session.in_seq = Seq(0);
            }
            send_ident_or_reconnect(m);
            Ok(true)
        }
        Tag::WAIT => {
            Wait::from_segment(s0).map_err(Fault::Decode)?;
            Counters::bump(&counters.wait);
            Err(Fault::Wait)
        }
        other => Err(unexpected(other)),
    }
}
