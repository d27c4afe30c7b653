//! A hostile server against our client's authentication: a msgr2 acceptor that answers
//! every AUTH_REQUEST with AUTH_BAD_METHOD naming the method just used, or with
//! AUTH_REPLY_MORE without end. Our lossless client must neither spin on one socket nor
//! redial in a busy loop: the dials and auth requests in a window are counted against a
//! bound that a backoff allows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{MessengerConfig, Policy};
use protocol::auth::ConMode;
use protocol::types::{AddrType, EntityAddr, EntityType};
use protocol::v2::banner::{Banner, BANNER_LEN};
use protocol::v2::frames::{AuthBadMethod, AuthReplyMore, AuthRequest, ControlFrame, Hello};
use protocol::v2::Tag;
use tests::hostile_v2::{control, read_frame};
use tests::loopback::*;

/// How long dials are counted.
const WINDOW: Duration = Duration::from_secs(2);
/// The most dials allowed in [`WINDOW`] at 100 ms doubling to 800 ms (about 6 with a
/// backoff; a busy loop makes thousands).
const MAX_DIALS: usize = 30;

#[derive(Clone, Copy, Debug)]
enum Script {
    /// AUTH_BAD_METHOD naming the method just used, and allowing only it.
    BadMethodSameMethod,
    /// AUTH_REPLY_MORE with garbage, to every AUTH_REQUEST and AUTH_REQUEST_MORE.
    ReplyMoreForever,
}

fn serve(mut sock: TcpStream, script: Script, auth_frames: &Sender<Instant>) {
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    if sock.write_all(&Banner::OURS.to_bytes()).is_err() {
        return;
    }
    let mut banner = [0u8; BANNER_LEN];
    if sock.read_exact(&mut banner).is_err() {
        return;
    }
    let peer = EntityAddr {
        ty: AddrType::MSGR2,
        ..EntityAddr::legacy(sock.peer_addr().expect("peer"), 0)
    };
    if sock.write_all(&control(&Hello { entity_type: EntityType::OSD, peer_addr: peer })).is_err() {
        return;
    }
    loop {
        let Some((tag, seg)) = read_frame(&mut sock) else { return };
        let reply = match tag {
            Tag::HELLO => continue,
            Tag::AUTH_REQUEST | Tag::AUTH_REQUEST_MORE => {
                let _ = auth_frames.send(Instant::now());
                match script {
                    Script::BadMethodSameMethod => {
                        let method = if tag == Tag::AUTH_REQUEST {
                            AuthRequest::from_segment(&seg).map(|r| r.method).unwrap_or(0)
                        } else {
                            0
                        };
                        control(&AuthBadMethod {
                            method,
                            result: -13,
                            allowed_methods: vec![method],
                            allowed_modes: vec![ConMode::CRC],
                        })
                    }
                    Script::ReplyMoreForever => {
                        control(&AuthReplyMore { payload: Bytes::from_static(&[7u8; 32]) })
                    }
                }
            }
            _ => return,
        };
        if sock.write_all(&reply).is_err() {
            return;
        }
    }
}

/// Our lossless client dials a server running `script`; returns the sockets it opened
/// and the AUTH_REQUEST(_MORE) frames it sent in [`WINDOW`].
fn against(script: Script) -> (usize, usize) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let (dial_tx, dials): (Sender<Instant>, Receiver<Instant>) = crossbeam_channel::unbounded();
    let (auth_tx, auths) = crossbeam_channel::unbounded();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut serving = Vec::new();
            for sock in listener.incoming() {
                if stop.load(Relaxed) {
                    break;
                }
                let Ok(sock) = sock else { continue };
                let _ = dial_tx.send(Instant::now());
                let auth_tx = auth_tx.clone();
                serving.push(std::thread::spawn(move || serve(sock, script, &auth_tx)));
            }
            for t in serving {
                let _ = t.join();
            }
        })
    };
    let config = MessengerConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(800),
        ..test_config(2)
    };
    let (client, _rx) = client_with(EntityType::CLIENT, 2, Policy::lossless_client(), config);
    let target = EntityAddr { ty: AddrType::MSGR2, ..EntityAddr::legacy(addr, 7) };
    let conn = client.connect_to(EntityType::OSD, target);
    conn.send_message(test_message(0x7f41, 1, Bytes::new())).expect("queued");
    let first = dials.recv_timeout(WAIT).expect("a dial");
    let mut n = 1;
    while dials.recv_deadline(first + WINDOW).is_ok() {
        n += 1;
    }
    let frames = auths.try_iter().count();
    eprintln!("{script:?}: {n} dials, {frames} auth frames in {WINDOW:?}");
    client.shutdown();
    stop.store(true, Relaxed);
    let _ = TcpStream::connect(addr);
    thread.join().expect("server thread");
    (n, frames)
}

#[test]
fn auth_bad_method_naming_the_method_used_is_redialled_with_backoff() {
    let (dials, frames) = against(Script::BadMethodSameMethod);
    assert!(dials <= MAX_DIALS, "{dials} dials in {WINDOW:?}");
    assert!(frames <= MAX_DIALS * 4, "{frames} auth requests in {WINDOW:?}");
}

#[test]
fn auth_reply_more_without_end_is_cut_off_and_redialled_with_backoff() {
    let (dials, frames) = against(Script::ReplyMoreForever);
    assert!(dials <= MAX_DIALS, "{dials} dials in {WINDOW:?}");
    assert!(frames <= MAX_DIALS * 20, "{frames} auth requests in {WINDOW:?}");
}
