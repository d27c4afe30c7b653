//! Our msgr2 cephx monitor client against a real Ceph 16.2 monitor whose connection is
//! cut at one chosen step of the handshake (before the server challenge reaches us,
//! before our session-key request reaches the monitor, before AUTH_DONE, between
//! AUTH_DONE and the monitor's signature, before our signature, before SERVER_IDENT)
//! or while a ticket renewal over MAuth is in flight: the next session must
//! authenticate, keep the global id (as Ceph's MonClient does) and never be refused.
//! The monitor announces the proxy's address as its own, so every byte passes
//! untouched (secure mode too). Skipped, with a printed reason, when Ceph is not
//! installed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Messenger, MessengerConfig};
use parking_lot::Mutex;
use protocol::auth::cephx::{ClientEvent, TicketSource, TicketStore};
use protocol::auth::{ConMode, ConModes};
use protocol::messages::{MAuthReply, MsgType, TypedMessage};
use protocol::types::{AddrType, EntityAddr, EntityType};
use protocol::v2::banner::{BANNER_HEAD_LEN, BANNER_PREFIX};
use protocol::v2::framing::{FrameEncoder, Preamble, MAX_SEGMENTS, PREAMBLE_LEN};
use protocol::v2::Tag;
use tests::ceph::CephMon;
use tests::cephx::{client_admin, get_map, monitor_client};
use tests::loopback::{init_logging, test_config, Seen, WAIT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    ToServer,
    ToClient,
}

/// Where to cut: in `dir`, before the frame `after` frames past the first `tag` frame
/// (0: that frame itself). Frames we cannot parse (secure mode, after AUTH_DONE) count
/// as one each read.
#[derive(Clone, Copy, Debug)]
struct Cut {
    dir: Dir,
    tag: Tag,
    after: usize,
}

/// A one-shot proxy: forwards every byte, and cuts the first link on which the armed
/// [`Cut`] point comes (both sockets shut down), reporting it on `cut_rx`.
struct CutProxy {
    armed: Arc<Mutex<Option<Cut>>>,
    cut_rx: Receiver<Cut>,
}

impl CutProxy {
    fn start(listener: TcpListener, upstream: SocketAddr) -> CutProxy {
        let armed = Arc::new(Mutex::new(None::<Cut>));
        let (cut_tx, cut_rx) = crossbeam_channel::unbounded();
        let a = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                for (dir, from, to) in [
                    (Dir::ToServer, client.try_clone(), server.try_clone()),
                    (Dir::ToClient, server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else { continue };
                    let (a, tx) = (a.clone(), cut_tx.clone());
                    std::thread::spawn(move || pump(dir, from, to, &a, &tx));
                }
            }
        });
        CutProxy { armed, cut_rx }
    }

    fn arm(&self, cut: Cut) {
        while self.cut_rx.try_recv().is_ok() {}
        *self.armed.lock() = Some(cut);
    }
}

/// Forwards `from` to `to` frame by frame (the msgr2 banner, then crc-mode frames; raw
/// reads once the frames no longer parse), cutting both when the armed point comes.
fn pump(
    dir: Dir,
    mut from: TcpStream,
    mut to: TcpStream,
    armed: &Mutex<Option<Cut>>,
    tx: &Sender<Cut>,
) {
    let cut_both = |from: &TcpStream, to: &TcpStream| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    let mut head = [0u8; BANNER_HEAD_LEN];
    if from.read_exact(&mut head).is_err() || head[..BANNER_PREFIX.len()] != *BANNER_PREFIX {
        cut_both(&from, &to);
        return;
    }
    let mut banner = vec![0u8; usize::from(u16::from_le_bytes([head[8], head[9]]))];
    if from.read_exact(&mut banner).is_err()
        || to.write_all(&head).is_err()
        || to.write_all(&banner).is_err()
    {
        cut_both(&from, &to);
        return;
    }
    // Frames since the first frame of the armed cut's tag on this link (None: not yet).
    let mut since: Option<usize> = None;
    let mut raw = false;
    loop {
        let mut frame = vec![0u8; if raw { 0 } else { PREAMBLE_LEN }];
        let tag = if raw {
            frame.resize(64 << 10, 0);
            match tests::read_some(&mut from, &mut frame) {
                Ok(0) | Err(_) => break,
                Ok(n) => frame.truncate(n),
            }
            None
        } else {
            if from.read_exact(&mut frame).is_err() {
                break;
            }
            match Preamble::decode(frame.as_slice().try_into().expect("preamble")) {
                Ok(pre) => {
                    let lens = pre.lens().map(|l| l as usize);
                    let num = usize::from(pre.num_segments).min(MAX_SEGMENTS);
                    let wire = FrameEncoder::crc().wire_len(&lens[..num]);
                    frame.resize(wire, 0);
                    if from.read_exact(&mut frame[PREAMBLE_LEN..]).is_err() {
                        break;
                    }
                    Some(pre.tag)
                }
                Err(_) => {
                    raw = true;
                    None
                }
            }
        };
        let cut = *armed.lock();
        if let Some(cut) = cut.filter(|c| c.dir == dir) {
            if since.is_none() && tag == Some(cut.tag) {
                since = Some(0);
            } else if let Some(n) = since.as_mut() {
                *n += 1;
            }
            if since == Some(cut.after) && armed.lock().take().is_some() {
                cut_both(&from, &to);
                let _ = tx.send(cut);
                return;
            }
        }
        if to.write_all(&frame).is_err() {
            break;
        }
    }
    cut_both(&from, &to);
}

/// Dials the monitor at `addr` (again while a connection is refused or reset, at most
/// `tries` times) until its monmap comes: the connection, or `None` if every try ended
/// without one.
fn session(
    msgr: &Messenger,
    rx: &Receiver<Seen>,
    addr: EntityAddr,
    tries: usize,
) -> Option<Connection> {
    for _ in 0..tries {
        let conn = msgr.connect_to(EntityType::MON, addr);
        if conn.send_message(get_map()).is_err() {
            conn.mark_down();
            continue;
        }
        let deadline = Instant::now() + WAIT;
        let got = loop {
            match rx.recv_deadline(deadline) {
                Ok(Seen::Message(c, m)) if c == conn && m.msg_type() == MsgType::MON_MAP.0 => {
                    break true
                }
                Ok(Seen::Reset(c) | Seen::Refused(c)) if c == conn => break false,
                Ok(_) => {}
                Err(e) => panic!("no monmap and no reset within {WAIT:?}: {e}"),
            }
        };
        if got {
            return Some(conn);
        }
        conn.mark_down();
    }
    None
}

/// A real msgr2-only cephx monitor behind a [`CutProxy`] it announces as its address,
/// with `options`; `None` when Ceph is not installed.
fn mon_behind_proxy(
    test: &str,
    options: &[(&str, &str)],
) -> Option<(CephMon, CutProxy, EntityAddr)> {
    if !tests::ceph::ceph_available(test) {
        return None;
    }
    let bind = SocketAddr::from(([127, 0, 0, 1], tests::ceph::free_loopback_port().expect("port")));
    let public = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let public_addr = public.local_addr().expect("addr");
    let proxy = CutProxy::start(public, bind);
    let mon = CephMon::start_cephx_msgr2_behind(test, bind, public_addr, options)
        .expect("start ceph-mon")?;
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(public_addr) };
    Some((mon, proxy, addr))
}

/// The handshake cut at each step, in `mode`: every next session authenticates with
/// the first session's global id.
fn cuts_keep_the_global_id(mode: ConMode, cuts: &[Cut]) {
    init_logging();
    let test = format!("v2_cephx_cuts_{}", mode.name());
    let Some((mon, proxy, addr)) = mon_behind_proxy(&test, &[("debug_auth", "10")]) else {
        return;
    };
    let (name, key) = client_admin(&mon.keyring());
    let store = Arc::new(TicketStore::default());
    let config = MessengerConfig { mon_client_mode: Some(ConModes(vec![mode])), ..test_config(1) };
    let (msgr, rx) = monitor_client(&name, &key, &store, config);
    let first = session(&msgr, &rx, addr, 1).expect("a first session, nothing cut");
    let (global_id, _) = store.ticket(EntityType::AUTH).expect("an auth ticket");
    first.mark_down();
    for &cut in cuts {
        proxy.arm(cut);
        let conn = session(&msgr, &rx, addr, 3);
        let fired = proxy.cut_rx.try_recv().is_ok();
        assert!(fired, "{cut:?}: the cut point never came");
        let conn = conn.unwrap_or_else(|| panic!("{cut:?}: no session after the cut"));
        let (gid, _) = store.ticket(EntityType::AUTH).expect("an auth ticket");
        assert_eq!(gid, global_id, "{cut:?}: global id kept");
        assert_eq!(conn.con_mode(), Some(mode));
        conn.mark_down();
    }
    msgr.shutdown();
}

fn cut(dir: Dir, tag: Tag, after: usize) -> Cut {
    Cut { dir, tag, after }
}

#[test]
fn msgr2_cephx_handshake_cut_at_each_step_keeps_the_global_id_crc() {
    cuts_keep_the_global_id(
        ConMode::CRC,
        &[
            cut(Dir::ToClient, Tag::AUTH_REPLY_MORE, 0),
            cut(Dir::ToServer, Tag::AUTH_REQUEST_MORE, 0),
            cut(Dir::ToClient, Tag::AUTH_DONE, 0),
            cut(Dir::ToClient, Tag::AUTH_DONE, 1),
            cut(Dir::ToServer, Tag::AUTH_SIGNATURE, 0),
            cut(Dir::ToServer, Tag::CLIENT_IDENT, 0),
            cut(Dir::ToClient, Tag::SERVER_IDENT, 0),
        ],
    );
}

#[test]
fn msgr2_cephx_handshake_cut_at_each_step_keeps_the_global_id_secure() {
    cuts_keep_the_global_id(
        ConMode::SECURE,
        &[
            cut(Dir::ToClient, Tag::AUTH_REPLY_MORE, 0),
            cut(Dir::ToServer, Tag::AUTH_REQUEST_MORE, 0),
            cut(Dir::ToClient, Tag::AUTH_DONE, 0),
            cut(Dir::ToClient, Tag::AUTH_DONE, 1),
            cut(Dir::ToServer, Tag::AUTH_REQUEST_MORE, 1),
            cut(Dir::ToServer, Tag::AUTH_REQUEST_MORE, 2),
            cut(Dir::ToClient, Tag::AUTH_DONE, 2),
        ],
    );
}

/// A ticket renewal over MAuth (as Ceph's MonClient renews on its msgr2 session) whose
/// connection is cut before the reply comes: the next session, taken from the store,
/// keeps the global id and renews.
#[test]
fn msgr2_cephx_renewal_cut_then_the_next_session_renews() {
    renewal_cut(Dir::ToClient);
}

/// As above, the renewal request cut before it reaches the monitor.
#[test]
fn msgr2_cephx_renewal_request_cut_then_the_next_session_renews() {
    renewal_cut(Dir::ToServer);
}

fn renewal_cut(dir: Dir) {
    init_logging();
    let options = [("auth_mon_ticket_ttl", "3"), ("auth_service_ticket_ttl", "3")];
    let Some((mon, proxy, addr)) =
        mon_behind_proxy(&format!("v2_cephx_renewal_cut_{dir:?}"), &options)
    else {
        return;
    };
    let (name, key) = client_admin(&mon.keyring());
    let store = Arc::new(TicketStore::default());
    let config =
        MessengerConfig { mon_client_mode: Some(ConModes(vec![ConMode::CRC])), ..test_config(1) };
    let (msgr, rx) = monitor_client(&name, &key, &store, config);
    let mut conn = session(&msgr, &rx, addr, 1).expect("a first session");
    let mut auth = store.take_monitor_session(&addr).expect("the handshake's session");
    let global_id = auth.global_id();
    for round in 0..3 {
        // Wait until the auth ticket is due, then send the renewal; the proxy cuts
        // the monitor's reply (the first frame it sends after our request).
        loop {
            let at = auth.poll_timeout().expect("a renewal is due some time");
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            auth.handle_timeout(Instant::now()).expect("no request timed out");
            if let Some(req) = auth.poll_request(Instant::now()) {
                proxy.arm(cut(dir, Tag::MESSAGE, 0));
                conn.send_message(req.to_message(conn.features())).expect("send MAuth");
                break;
            }
        }
        assert!(proxy.cut_rx.recv_timeout(WAIT).is_ok(), "the reply was cut");
        conn.mark_down();
        let again = session(&msgr, &rx, addr, 3).expect("a session after the cut");
        let mut next = store.take_monitor_session(&addr).expect("the new session");
        assert_eq!(next.global_id(), global_id, "round {round}: global id kept");
        // The new session renews on its connection.
        next.request_service_tickets(protocol::auth::cephx::ServiceMask::of(EntityType::OSD));
        let req = next.poll_request(Instant::now()).expect("a service-ticket request");
        again.send_message(req.to_message(again.features())).expect("send");
        let deadline = Instant::now() + WAIT;
        loop {
            match rx.recv_deadline(deadline) {
                Ok(Seen::Message(c, m)) if c == again && m.msg_type() == MsgType::AUTH_REPLY.0 => {
                    let reply = MAuthReply::from_message(&m).expect("MAuthReply");
                    next.handle_reply(Instant::now(), &reply).expect("the monitor's reply taken");
                    let evs: Vec<_> = std::iter::from_fn(|| next.poll_event()).collect();
                    if evs.iter().any(|e| matches!(e, ClientEvent::ServiceTickets(_))) {
                        break;
                    }
                }
                Ok(Seen::Reset(c) | Seen::Refused(c)) if c == again => panic!("reset"),
                Ok(_) => {}
                Err(e) => panic!("no reply: {e}"),
            }
        }
        store.update_from(&next, Instant::now());
        auth = next;
        conn = again;
    }
    msgr.shutdown();
}
