//! The msgr2 accept decision row by row against Ceph 16.2's `ProtocolV2`
//! (`handle_client_ident` + `handle_existing_connection`, `handle_reconnect`): one
//! scripted raw msgr2 peer — a lossless mon-type peer, the policy a monitor gives its
//! peers (`lossless_peer_reuse`: resetcheck, not a server) — walks the rows (stale
//! global_seq, old connect_seq, equal connect_seq race, cookie mismatch, stale ident,
//! interrupted ident, restarted peer) and records each answer. The same script runs
//! against our messenger configured as that monitor and, when Ceph is installed, against
//! a real `ceph-mon`; both must give the transcript the rows predict.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Policy, ProtocolVersion};
use protocol::auth::AuthNoneProvider;
use protocol::encoding::UTime;
use protocol::types::Features;
use protocol::types::{
    AddrType, AuthEntityName, EntityAddr, EntityAddrVec, EntityName, EntityType,
};
use protocol::v2::frames::{
    ClientIdent, ControlFrame, Keepalive2, Keepalive2Ack, ServerIdent, SessionReconnect,
    SessionReconnectOk, SessionReset, SessionRetry, SessionRetryGlobal,
};
use protocol::v2::Tag;
use tests::ceph::CephMon;
use tests::hostile_v2::*;
use tests::loopback::*;

/// The raw peer: `mon.9` at `me`, auth none, dialling the monitor at `server`.
struct Peer {
    cfg: Arc<protocol::Config>,
    me: EntityAddr,
    server: EntityAddr,
    /// Server cookies seen, in order: a transcript names them S1, S2, ...
    cookies: Vec<u64>,
}

impl Peer {
    fn new(server: EntityAddr, me: EntityAddr) -> Peer {
        let cfg = protocol::Config::new(EntityName::new(EntityType::MON, 9), me)
            .with_auth(Arc::new(AuthNoneProvider::new(AuthEntityName::new(EntityType::MON, "yy"))));
        Peer { cfg: Arc::new(cfg), me, server, cookies: Vec::new() }
    }

    /// A new socket, handshaken up to the ident.
    fn socket(&self) -> TcpStream {
        v2_socket_at_ident_with(
            self.cfg.clone(),
            self.server,
            EntityType::MON,
            Policy::lossless_peer_reuse(),
        )
    }

    fn ident(&self, cookie: u64, gs: u64) -> Vec<u8> {
        control(&ClientIdent {
            addrs: EntityAddrVec::single(self.me),
            target_addr: self.server,
            gid: 9,
            global_seq: gs,
            supported_features: Features::PACIFIC_ADVERTISED,
            required_features: Features::MSG_ADDR2,
            flags: 0,
            client_cookie: cookie,
        })
    }

    fn reconnect(&self, cc: u64, sc: u64, gs: u64, cs: u64) -> Vec<u8> {
        control(&SessionReconnect {
            addrs: EntityAddrVec::single(self.me),
            client_cookie: cc,
            server_cookie: sc,
            global_seq: gs,
            connect_seq: cs,
            msg_seq: 0,
        })
    }

    /// The server cookie named `n` (1-based) in the transcript.
    fn cookie(&self, n: usize) -> u64 {
        self.cookies[n - 1]
    }

    /// Writes `frame` on `sock` and describes the answer.
    fn ask(&mut self, sock: &mut TcpStream, what: &str, frame: &[u8]) -> String {
        sock.write_all(frame).expect("write");
        let answer = match read_frame(sock) {
            None => "closed".to_string(),
            Some((tag, seg)) => self.describe(tag, &seg),
        };
        format!("{what} -> {answer}")
    }

    fn describe(&mut self, tag: Tag, seg: &Bytes) -> String {
        match tag {
            Tag::SERVER_IDENT => {
                let si = ServerIdent::from_segment(seg).expect("server ident");
                let n = match self.cookies.iter().position(|c| *c == si.server_cookie) {
                    Some(i) => i + 1,
                    None => {
                        self.cookies.push(si.server_cookie);
                        self.cookies.len()
                    }
                };
                format!("SERVER_IDENT flags={} S{n}", si.flags)
            }
            Tag::SESSION_RECONNECT_OK => {
                let ok = SessionReconnectOk::from_segment(seg).expect("reconnect ok");
                format!("RECONNECT_OK ms={}", ok.msg_seq)
            }
            Tag::SESSION_RETRY => {
                format!("RETRY cs={}", SessionRetry::from_segment(seg).expect("retry").connect_seq)
            }
            Tag::SESSION_RETRY_GLOBAL => {
                let r = SessionRetryGlobal::from_segment(seg).expect("retry global");
                format!("RETRY_GLOBAL gs={}", r.global_seq)
            }
            Tag::SESSION_RESET => {
                format!("RESET full={}", SessionReset::from_segment(seg).expect("reset").full)
            }
            Tag::WAIT => "WAIT".to_string(),
            other => format!("{other:?}"),
        }
    }
}

/// Runs the rows against the monitor at `server`, the peer at `me`.
fn transcript(server: EntityAddr, me: EntityAddr) -> Vec<String> {
    let mut p = Peer::new(server, me);
    let mut t = Vec::new();
    let (c1, c2, c9) = (0xC1, 0xC2, 0xC9);
    // A new session: connect_seq 0, peer global_seq 10.
    let mut s1 = p.socket();
    t.push(p.ask(&mut s1, "ident C1 gs10", &p.ident(c1, 10)));
    // Both sides "reconnecting" at the same connect_seq: the existing (open) session's
    // peer sorts above the monitor (nonce > 0), which is no server: WAIT.
    let mut s2 = p.socket();
    let s = p.cookie(1);
    t.push(p.ask(&mut s2, "reconnect C1 S1 gs20 cs0", &p.reconnect(c1, s, 20, 0)));
    t.push(p.ask(&mut s2, "reconnect C1 S1 gs21 cs1", &p.reconnect(c1, s, 21, 1)));
    // The session (connect_seq 1, peer global_seq 21) against stale requests.
    let mut s3 = p.socket();
    t.push(p.ask(&mut s3, "reconnect C1 S1 gs15 cs2", &p.reconnect(c1, s, 15, 2)));
    t.push(p.ask(&mut s3, "reconnect C1 S1 gs22 cs0", &p.reconnect(c1, s, 22, 0)));
    t.push(p.ask(&mut s3, "reconnect C1 S1 gs23 cs1", &p.reconnect(c1, s, 23, 1)));
    t.push(p.ask(&mut s3, "reconnect C9 S1 gs24 cs2", &p.reconnect(c9, s, 24, 2)));
    t.push(p.ask(&mut s3, "ident C1 gs5", &p.ident(c1, 5)));
    // An ident with the session's client cookie ("interrupted"), then another cookie
    // (the peer restarted; resetcheck).
    let mut s4 = p.socket();
    t.push(p.ask(&mut s4, "ident C1 gs30", &p.ident(c1, 30)));
    let mut s5 = p.socket();
    t.push(p.ask(&mut s5, "ident C2 gs40", &p.ident(c2, 40)));
    let s_new = p.cookie(p.cookies.len());
    let mut s6 = p.socket();
    t.push(p.ask(&mut s6, "reconnect C2 Snew gs50 cs1", &p.reconnect(c2, s_new, 50, 1)));
    let mut s7 = p.socket();
    t.push(p.ask(&mut s7, "reconnect C1 S1 gs60 cs2", &p.reconnect(c1, s, 60, 2)));
    t.push(p.ask(&mut s7, "reconnect C2 Snew gs61 cs1", &p.reconnect(c2, s_new, 61, 1)));
    // That WAIT leaves the existing session alone: Ceph's handle_reconnect sends nothing
    // on it (only handle_existing_connection's ident race kicks its own connection with
    // a keepalive). Two keepalive round trips on it show what it wrote meanwhile.
    t.push(format!("session socket after the WAIT: {:?}", unprompted(&mut s6)));
    t.push(p.ask(&mut s7, "reconnect C2 Snew gs62 cs2", &p.reconnect(c2, s_new, 62, 2)));
    // Standby or open, the same rows: equal connect_seq waits, the next resumes; the
    // server cookie a reconnect names is not checked; an equal global_seq is not stale.
    drop(s7);
    let mut s8 = p.socket();
    t.push(p.ask(&mut s8, "reconnect C2 Snew gs70 cs2", &p.reconnect(c2, s_new, 70, 2)));
    t.push(p.ask(&mut s8, "reconnect C2 Snew gs71 cs3", &p.reconnect(c2, s_new, 71, 3)));
    let mut s9 = p.socket();
    t.push(p.ask(&mut s9, "reconnect C2 S1 gs80 cs4", &p.reconnect(c2, s, 80, 4)));
    let mut s10 = p.socket();
    t.push(p.ask(&mut s10, "reconnect C2 Snew gs80 cs5", &p.reconnect(c2, s_new, 80, 5)));
    let mut s11 = p.socket();
    t.push(p.ask(&mut s11, "ident C2 gs80", &p.ident(c2, 80)));
    // A client cookie 0 on a lossless policy: a restart (resetcheck), then its own
    // session resumed, then an ident with cookie 0 again, which matches ("interrupted").
    let mut s12 = p.socket();
    t.push(p.ask(&mut s12, "ident C0 gs90", &p.ident(0, 90)));
    let s_zero = p.cookie(p.cookies.len());
    let mut s13 = p.socket();
    t.push(p.ask(&mut s13, "reconnect C0 Szero gs91 cs1", &p.reconnect(0, s_zero, 91, 1)));
    let mut s14 = p.socket();
    t.push(p.ask(&mut s14, "ident C0 gs95", &p.ident(0, 95)));
    drop((s1, s2, s3, s4, s5, s6, s8, s9, s10, s11, s12, s13, s14));
    t
}

/// The frames the open session on `sock` writes besides the answers to two keepalive
/// round trips of ours (their ACKs), by name.
fn unprompted(sock: &mut TcpStream) -> Vec<String> {
    let mut seen = Vec::new();
    for sec in [1, 2] {
        let stamp = UTime { sec, nsec: 0 };
        sock.write_all(&control(&Keepalive2 { stamp })).expect("keepalive");
        loop {
            let (tag, seg) = read_frame(sock).expect("the session closed");
            if tag == Tag::KEEPALIVE2_ACK
                && Keepalive2Ack::from_segment(&seg).expect("ack").stamp == stamp
            {
                break;
            }
            seen.push(match tag {
                Tag::KEEPALIVE2 => "KEEPALIVE2".to_string(),
                other => format!("{other:?}"),
            });
        }
    }
    seen
}

/// What Ceph's rules answer, row by row.
fn expected() -> Vec<&'static str> {
    vec![
        "ident C1 gs10 -> SERVER_IDENT flags=0 S1",
        "reconnect C1 S1 gs20 cs0 -> WAIT",
        "reconnect C1 S1 gs21 cs1 -> RECONNECT_OK ms=0",
        "reconnect C1 S1 gs15 cs2 -> RETRY_GLOBAL gs=21",
        "reconnect C1 S1 gs22 cs0 -> RETRY cs=1",
        "reconnect C1 S1 gs23 cs1 -> WAIT",
        "reconnect C9 S1 gs24 cs2 -> RESET full=true",
        "ident C1 gs5 -> closed",
        "ident C1 gs30 -> SERVER_IDENT flags=0 S2",
        "ident C2 gs40 -> SERVER_IDENT flags=0 S3",
        "reconnect C2 Snew gs50 cs1 -> RECONNECT_OK ms=0",
        "reconnect C1 S1 gs60 cs2 -> RESET full=true",
        "reconnect C2 Snew gs61 cs1 -> WAIT",
        "session socket after the WAIT: []",
        "reconnect C2 Snew gs62 cs2 -> RECONNECT_OK ms=0",
        "reconnect C2 Snew gs70 cs2 -> WAIT",
        "reconnect C2 Snew gs71 cs3 -> RECONNECT_OK ms=0",
        "reconnect C2 S1 gs80 cs4 -> RECONNECT_OK ms=0",
        "reconnect C2 Snew gs80 cs5 -> RECONNECT_OK ms=0",
        "ident C2 gs80 -> SERVER_IDENT flags=0 S4",
        "ident C0 gs90 -> SERVER_IDENT flags=0 S5",
        "reconnect C0 Szero gs91 cs1 -> RECONNECT_OK ms=0",
        "ident C0 gs95 -> SERVER_IDENT flags=0 S6",
    ]
}

/// A peer address above the monitor's (nonce 0) in the race order, at a port that
/// listens (never accepting) so a dial back would not be refused.
fn peer_at(listener: &TcpListener, nonce: u32) -> EntityAddr {
    EntityAddr {
        ty: AddrType::MSGR2,
        nonce,
        addr: Some(listener.local_addr().expect("listener address")),
    }
}

fn names(rx: &Receiver<Seen>, within: Duration) -> Vec<&'static str> {
    let deadline = std::time::Instant::now() + within;
    let mut seen = Vec::new();
    while let Ok(ev) = rx.recv_deadline(deadline) {
        seen.push(match ev {
            Seen::Message(..) => "message",
            Seen::Connect(_) => "connect",
            Seen::Accept(_) => "accept",
            Seen::Reset(_) => "reset",
            Seen::RemoteReset(_) => "remote_reset",
            Seen::Refused(_) => "refused",
        });
    }
    seen
}

#[test]
fn our_acceptor_answers_the_session_rows_as_ceph() {
    let (srv, _bound, rx) = server_on(
        EntityType::MON,
        0,
        Policy::lossless_peer_reuse(),
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        test_config(2),
    );
    let server = addr_for(ProtocolVersion::V2, srv.my_addr());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let got = transcript(server, peer_at(&listener, 0x5a5a_0101));
    let events = names(&rx, Duration::from_millis(300));
    srv.shutdown();
    assert_eq!(got, expected(), "events: {events:?}");
    // ms_handle_remote_reset for the two restarts under resetcheck (C1 -> C2, C2 -> 0),
    // on the session's connection; every opening is an accept.
    let resets = events.iter().filter(|e| **e == "remote_reset").count();
    assert_eq!(resets, 2, "{events:?}");
    assert!(!events.contains(&"reset"), "{events:?}");
}

#[test]
fn ceph_mon_answers_the_session_rows_as_expected() {
    let Some(mon) = CephMon::start_msgr2_only("ceph_mon_answers_the_session_rows_as_expected")
        .expect("start ceph-mon")
    else {
        return;
    };
    let server = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(mon.addr()) };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let got = transcript(server, peer_at(&listener, 0x5a5a_0101));
    assert_eq!(got, expected());
}
