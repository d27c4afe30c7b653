//! Raw-socket hostile peers: the building blocks of the hardening tests
//! (`tests/tests/hostile_*.rs`) and of the `attack` measuring tool.
//!
//! Each helper speaks just enough msgr v1 over a blocking `std::net::TcpStream` to reach
//! the point where a real attacker would start misbehaving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::types::{
    proto_version, EntityAddr, EntityName, EntityType, Features, CEPH_OSDC_PROTOCOL,
    LEGACY_ADDR_LEN,
};
use protocol::v1;
use protocol::wire::{
    ceph_crc32c, AcceptorBanner, ConnectMsg, ConnectReply, FooterFlags, FooterFormat, MsgFooter,
    MsgHeader, Tag, ACCEPTOR_BLOCK_LEN, BANNER, BANNER_LEN, CONNECT_LOSSY, MAX_AUTHORIZER_LEN,
};
use protocol::{Event, Policy};

/// The message type hostile peers send (not a Ceph type: dispatchers see it as a test).
pub const MSG_HOSTILE: u16 = 0x7f01;

/// Opens a socket to an acceptor and exchanges banners and addresses: the next bytes
/// the acceptor reads are a connect message.
pub fn banner_socket(server: SocketAddr) -> TcpStream {
    banner_socket_as(server, EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), 99))
}

/// Like [`banner_socket`], announcing `me` as our address (the acceptor's session key).
pub fn banner_socket_as(server: SocketAddr, me: EntityAddr) -> TcpStream {
    let mut sock = TcpStream::connect(server).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    sock.write_all(BANNER).expect("banner");
    let mut block = [0u8; ACCEPTOR_BLOCK_LEN];
    sock.read_exact(&mut block).expect("acceptor banner");
    sock.write_all(&me.encode_legacy()).expect("address");
    sock
}

/// [`banner_socket_as`] from a fresh address (a random nonce): each call is a new peer
/// to the acceptor.
pub fn fresh_banner_socket(server: SocketAddr) -> TcpStream {
    let me = EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), rand::random::<u32>() | 1);
    banner_socket_as(server, me)
}

/// The acceptor's half of a v1 handshake up to the reply, by hand, on a socket a
/// listener of the test accepted from one of our connectors: writes the acceptor's
/// banner announcing `me` (the address the connector dialled: it checks the nonce),
/// reads the connector's banner, address and connect message with its authorizer.
/// The next bytes the connector reads are the connect reply the caller writes.
pub fn accept_v1_connect(sock: &mut TcpStream, me: EntityAddr) -> ConnectMsg {
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let peer = sock.peer_addr().expect("peer address");
    let block = AcceptorBanner { my_addr: me, peer_addr: EntityAddr::legacy(peer, 0) };
    sock.write_all(&block.to_bytes()).expect("acceptor banner");
    let mut head = [0u8; BANNER_LEN + LEGACY_ADDR_LEN + ConnectMsg::LEN];
    sock.read_exact(&mut head).expect("banner, address and connect");
    assert_eq!(&head[..BANNER_LEN], BANNER, "not a v1 connector");
    let (connect, _) =
        ConnectMsg::decode(&head[BANNER_LEN + LEGACY_ADDR_LEN..]).expect("connect decodes");
    let len = connect.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN, "authorizer of {len} bytes");
    let mut authorizer = vec![0u8; len];
    sock.read_exact(&mut authorizer).expect("authorizer");
    connect
}

/// One connect as Ceph's Objecter sends it to an OSD (client, `CEPH_OSDC_PROTOCOL`,
/// lossy) carrying `authorizer` under `auth_protocol`, on a socket past the banners;
/// returns the reply and its authorizer bytes.
pub fn objecter_connect(
    stream: &mut TcpStream,
    features: Features,
    auth_protocol: u32,
    authorizer: &[u8],
) -> (ConnectReply, Vec<u8>) {
    let msg = ConnectMsg {
        features,
        host_type: EntityType::CLIENT,
        global_seq: 1,
        connect_seq: 0,
        protocol_version: CEPH_OSDC_PROTOCOL,
        authorizer_protocol: auth_protocol,
        authorizer_len: u32::try_from(authorizer.len()).expect("small"),
        flags: CONNECT_LOSSY,
    };
    let mut out = Vec::new();
    msg.encode_with_authorizer(authorizer, &mut out);
    stream.write_all(&out).expect("send connect");
    let mut head = [0u8; ConnectReply::LEN];
    stream.read_exact(&mut head).expect("connect reply");
    let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
    let len = reply.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN, "authorizer reply of {len} bytes");
    let mut auth = vec![0u8; len];
    stream.read_exact(&mut auth).expect("authorizer reply");
    (reply, auth)
}

/// A connect message as a client of ours would send it to an OSD, with the given
/// protocol version and features.
pub fn connect_msg(protocol_version: u32, features: Features) -> [u8; ConnectMsg::LEN] {
    ConnectMsg {
        features,
        host_type: EntityType::CLIENT,
        global_seq: 1,
        connect_seq: 0,
        protocol_version,
        authorizer_protocol: 0,
        authorizer_len: 0,
        flags: 0,
    }
    .to_bytes()
}

/// A well-formed connect of a client to an OSD with the given session numbers.
pub fn session_connect(connect_seq: u32, global_seq: u32) -> [u8; ConnectMsg::LEN] {
    ConnectMsg {
        features: Features::PACIFIC_ADVERTISED,
        host_type: EntityType::CLIENT,
        global_seq,
        connect_seq,
        protocol_version: good_protocol_version(),
        authorizer_protocol: 0,
        authorizer_len: 0,
        flags: 0,
    }
    .to_bytes()
}

/// The protocol version a client must announce to an OSD.
pub fn good_protocol_version() -> u32 {
    proto_version(EntityType::CLIENT, EntityType::OSD, true)
}

/// A v1 handshake done by hand (our sans-IO machine over a blocking socket) with
/// `policy`, leaving an open session the caller can then abuse with raw frames.
/// Returns the socket and the footer format the session uses.
///
/// Each call announces its own address (a fresh nonce), so the server keeps one session
/// per socket.
pub fn handshaken_socket(server: EntityAddr, policy: Policy) -> (TcpStream, FooterFormat) {
    static NONCE: AtomicU32 = AtomicU32::new(1_000_000);
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    let cfg = Arc::new(protocol::Config::new(
        EntityName::new(EntityType::CLIENT, -1),
        EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce),
    ));
    let now = Instant::now();
    let mut conn = v1::Connection::connect(cfg, policy, server, EntityType::OSD, now);
    let mut sock = TcpStream::connect(server.addr.expect("server address")).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    conn.handle_transport_connected(Instant::now());
    let (mut out, mut buf) = (Vec::new(), vec![0u8; 4096]);
    for _ in 0..64 {
        out.clear();
        conn.poll_transmit(&mut out);
        for seg in &out {
            sock.write_all(seg).expect("write");
        }
        while let Some(ev) = conn.poll_event() {
            if let Event::Opened(o) = ev {
                return (sock, FooterFormat::for_features(o.features));
            }
        }
        let n = crate::read_some(&mut sock, &mut buf).expect("read");
        assert!(n > 0, "server closed during the handshake");
        conn.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
    }
    panic!("handshake did not finish");
}

/// `Tag::MSG` + a header (with a correct crc) announcing `front_len` and `data_len`
/// bytes as message `seq`.
pub fn msg_head(seq: u64, tid: u64, front_len: u32, data_len: u32) -> Vec<u8> {
    let header = MsgHeader {
        seq,
        tid,
        msg_type: MSG_HOSTILE,
        front_len,
        data_len,
        src: EntityName::new(EntityType::CLIENT, -1),
        ..MsgHeader::default()
    }
    .with_crc();
    let mut frame = vec![Tag::MSG.0];
    frame.extend_from_slice(&header.to_bytes());
    frame
}

/// A complete, valid message frame: `front` as the front segment.
pub fn msg_frame(seq: u64, tid: u64, front: &[u8], format: FooterFormat) -> Vec<u8> {
    let len = u32::try_from(front.len()).expect("front length");
    let mut frame = msg_head(seq, tid, len, 0);
    frame.extend_from_slice(front);
    let footer = MsgFooter {
        front_crc: ceph_crc32c(0, front),
        flags: FooterFlags::COMPLETE,
        ..MsgFooter::default()
    };
    let (bytes, n) = footer.to_bytes(format);
    frame.extend_from_slice(&bytes[..n]);
    frame
}

/// Keeps `sock` read (and discarded) on a thread of its own until `stop` or its EOF, so
/// that what a server sends back to a flooding peer (acks) never blocks it.
pub fn drain_in_background(
    mut sock: TcpStream,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while !stop.load(Ordering::Relaxed) {
            match crate::read_some(&mut sock, &mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    })
}

/// Reads (and discards) until the peer closes `sock` (EOF or reset); returns whether that
/// happened within `within`.
pub fn closed_within(sock: &mut TcpStream, within: Duration) -> bool {
    read_to_close(sock, within, |_| {})
}

/// Reads until the peer closes `sock` (EOF or reset); returns what it sent before, or
/// `None` if it kept the socket open past `within`. For a test that claims the peer
/// closed without a reply (or which reply it sent), where [`closed_within`] would discard
/// one.
pub fn read_until_closed(sock: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    read_to_close(sock, within, |b| got.extend_from_slice(b)).then_some(got)
}

/// Reads until the peer closes `sock` (EOF or reset), handing what arrives to `seen`;
/// whether the close came within `within` (a read timeout is not a close).
fn read_to_close(sock: &mut TcpStream, within: Duration, mut seen: impl FnMut(&[u8])) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        sock.set_read_timeout(Some(left.min(Duration::from_millis(200)))).expect("timeout");
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => seen(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The server's `msgr_peer_issues` (protocol violations by peers), summed over its
/// workers.
pub fn peer_issues(srv: &messenger::Messenger) -> u64 {
    worker_counter(srv, "msgr_peer_issues")
}

/// A worker counter of `srv`'s `perf dump` (`msgr_…`), summed over its workers.
pub fn worker_counter(srv: &messenger::Messenger, name: &str) -> u64 {
    let counters = srv.counters_json();
    let Some(sections) = counters.as_object() else { return 0 };
    sections
        .iter()
        .filter(|(k, _)| k.starts_with("AsyncMessenger::Worker"))
        .map(|(_, v)| v[name].as_u64().unwrap_or(0))
        .sum()
}

/// This process's resident set size in bytes (Linux `/proc/self/status`), 0 if unknown.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A hand-driven peer over either protocol: our sans-IO machine did the handshake over a
/// blocking socket (so the acceptor holds an open session with it), and frames messages
/// on request ([`RawPeer::frame`]) that the test then writes whole, in part, trickled or
/// not at all. It never reads after the handshake: what the acceptor sends piles up
/// unread.
pub struct RawPeer {
    /// The socket, open.
    pub sock: TcpStream,
    machine: protocol::Connection,
}

impl RawPeer {
    /// Connects to `server` (its `v2:` address for msgr2, its v1 one for v1) with
    /// `policy` and runs the handshake to an open session. Each call announces a fresh
    /// nonce, so the acceptor keeps one session per peer.
    pub fn handshake(server: EntityAddr, policy: Policy) -> RawPeer {
        static NONCE: AtomicU32 = AtomicU32::new(2_000_000);
        RawPeer::handshake_as(server, policy, NONCE.fetch_add(1, Ordering::Relaxed))
    }

    /// [`RawPeer::handshake`] announcing `nonce`: a second peer with the same one is, for
    /// the acceptor, the same peer connecting again.
    pub fn handshake_as(server: EntityAddr, policy: Policy, nonce: u32) -> RawPeer {
        let me = EntityAddr {
            ty: server.ty,
            ..EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce)
        };
        let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::CLIENT, -1), me));
        RawPeer::try_handshake_with(server, policy, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects to `server` as `cfg` says (its name, the addresses it announces, its
    /// authentication) and runs the handshake to an open session; the error says how it
    /// ended otherwise (the server closed, or the handshake did not finish).
    pub fn try_handshake_with(
        server: EntityAddr,
        policy: Policy,
        cfg: Arc<protocol::Config>,
    ) -> Result<RawPeer, String> {
        let version = if server.ty == protocol::types::AddrType::MSGR2 {
            protocol::ProtocolVersion::V2
        } else {
            protocol::ProtocolVersion::V1
        };
        let now = Instant::now();
        let mut machine =
            protocol::Connection::connect(cfg, version, policy, server, EntityType::OSD, now);
        let mut sock = TcpStream::connect(server.addr.expect("server address")).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        machine.handle_transport_connected(Instant::now());
        let (mut out, mut buf) = (Vec::new(), vec![0u8; 4096]);
        for _ in 0..64 {
            out.clear();
            machine.poll_transmit(&mut out);
            for seg in &out {
                if let Err(e) = sock.write_all(seg) {
                    return Err(format!("the server closed during the handshake: {e}"));
                }
            }
            while let Some(ev) = machine.poll_event() {
                if let Event::Opened(_) = ev {
                    return Ok(RawPeer { sock, machine });
                }
            }
            match crate::read_some(&mut sock, &mut buf) {
                Ok(0) => return Err("the server closed during the handshake".into()),
                Ok(n) => machine.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n])),
                Err(e) => return Err(format!("the handshake's read failed: {e}")),
            }
        }
        Err("handshake did not finish".into())
    }

    /// The protocol the session speaks.
    pub fn protocol(&self) -> protocol::ProtocolVersion {
        self.machine.protocol().expect("open")
    }

    /// The wire bytes of `msg` as the session frames it (the next sequence number, the
    /// protocol's header, crcs and epilogue), not written: the test writes them.
    pub fn frame(&mut self, msg: protocol::Message) -> Vec<u8> {
        self.machine.send_message(msg);
        let mut out = Vec::new();
        self.machine.poll_transmit(&mut out);
        out.concat()
    }

    /// A message of type [`MSG_HOSTILE`] with `tid` and `front`, framed
    /// ([`RawPeer::frame`]).
    pub fn message(&mut self, tid: u64, front: &[u8]) -> Vec<u8> {
        let mut msg = protocol::Message::new(MSG_HOSTILE, Bytes::copy_from_slice(front));
        msg.set_tid(tid);
        self.frame(msg)
    }

    /// Reads until `n` messages arrived (granting their budget as the machine asks), or
    /// fails when the socket's read timeout passes first, saying how many came.
    pub fn receive(&mut self, n: usize) -> Result<Vec<protocol::Message>, String> {
        self.receive_counting(n).map(|(got, _)| got)
    }

    /// The wire bytes of a keepalive carrying `stamp` as the session frames it
    /// (KEEPALIVE2, or a bare KEEPALIVE on a v1 session without that feature), not
    /// written.
    pub fn keepalive(&mut self, stamp: protocol::wire::KeepaliveStamp) -> Vec<u8> {
        self.machine.send_keepalive(stamp);
        let mut out = Vec::new();
        self.machine.poll_transmit(&mut out);
        out.concat()
    }

    /// [`RawPeer::receive`], also returning how many bytes were read for them.
    pub fn receive_counting(&mut self, n: usize) -> Result<(Vec<protocol::Message>, u64), String> {
        let mut got = Vec::with_capacity(n);
        let mut read_total = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        while got.len() < n {
            let read = crate::read_some(&mut self.sock, &mut buf).map_err(|e| {
                format!("{} of {n} messages arrived, then the read failed: {e}", got.len())
            })?;
            if read == 0 {
                return Err(format!("{} of {n} messages arrived, then EOF", got.len()));
            }
            read_total += read as u64;
            self.machine.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..read]));
            while let Some(ev) = self.machine.poll_event() {
                match ev {
                    Event::NeedBudget { .. } => self.machine.grant_budget(Instant::now()),
                    Event::Message(m) => got.push(m),
                    _ => {}
                }
            }
        }
        Ok((got, read_total))
    }

    /// The stamp of the last KEEPALIVE2_ACK this peer read (see
    /// [`RawPeer::receive_counting`]).
    pub fn last_keepalive_ack(&self) -> Option<protocol::wire::KeepaliveStamp> {
        self.machine.last_keepalive_ack()
    }

    /// The first `n` wire bytes of a message of type [`MSG_HOSTILE`] announcing
    /// `data_len` bytes of data (zeros) and no front: its head ([`head_len`]) and the
    /// start of its data, what a peer that announces a large message and goes silent
    /// sends.
    pub fn announce(&mut self, tid: u64, data_len: usize, n: usize) -> Vec<u8> {
        let mut msg = protocol::Message::new(MSG_HOSTILE, Bytes::new());
        msg.set_tid(tid);
        // calloc'd: the pages of a large announcement are never touched but by the crc.
        msg.set_data(Bytes::from(vec![0u8; data_len]));
        self.machine.send_message(msg);
        let mut out = Vec::new();
        self.machine.poll_transmit(&mut out);
        let mut head = Vec::with_capacity(n);
        for piece in &out {
            let take = (n - head.len()).min(piece.len());
            head.extend_from_slice(&piece[..take]);
        }
        head
    }
}

/// Writes `wire[..fast]` at once, then the rest at `rate` bytes per second in pieces of
/// 8 KiB (on a schedule: a late piece is caught up on, so a busy machine does not slow
/// the rate), until the socket fails, no more than a piece is left (the caller writes
/// it, or not), or twice [`crate::loopback::WAIT`] passed; returns what it wrote. The
/// traffic of a peer, not a wait for anything.
pub fn trickle(
    mut sock: std::net::TcpStream,
    wire: Vec<u8>,
    fast: usize,
    rate: usize,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        if sock.write_all(&wire[..fast]).is_err() {
            return 0;
        }
        let piece = 8 << 10;
        let every = Duration::from_secs_f64(piece as f64 / rate as f64);
        let (mut sent, started) = (fast, Instant::now());
        let mut due = started;
        while sent + piece < wire.len() && started.elapsed() < 2 * crate::loopback::WAIT {
            due += every;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if sock.write_all(&wire[sent..sent + piece]).is_err() {
                break;
            }
            sent += piece;
        }
        sent
    })
}

/// How many bytes of a framed message with an empty front come before its data: v1's tag
/// and header, msgr2's preamble, header2 segment and its crc (crc mode).
pub fn head_len(proto: protocol::ProtocolVersion) -> usize {
    match proto {
        protocol::ProtocolVersion::V1 => 1 + MsgHeader::LEN,
        protocol::ProtocolVersion::V2 => {
            protocol::v2::framing::PREAMBLE_LEN + protocol::v2::framing::HEADER2_LEN + 4
        }
    }
}

/// A new client address (127.0.0.1, port 0) with a random odd nonce: another peer each
/// call, so the acceptor's session table sees no earlier session of it.
pub fn fresh_peer_addr() -> EntityAddr {
    EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), rand::random::<u32>() | 1)
}

/// Sends the v1 connect `msg` carrying `auth` as its authorizer on a socket past the
/// banners, and reads the reply (and its authorizer reply); on SEQ the acceptor's
/// in_seq is read and ours (0, nothing received) sent. Returns the reply's tag.
pub fn exchange_connect(sock: &mut TcpStream, msg: ConnectMsg, auth: &[u8]) -> Tag {
    let msg = ConnectMsg { authorizer_len: u32::try_from(auth.len()).expect("small"), ..msg };
    let mut out = Vec::new();
    msg.encode_with_authorizer(auth, &mut out);
    sock.write_all(&out).expect("send connect");
    let mut head = [0u8; ConnectReply::LEN];
    sock.read_exact(&mut head).expect("connect reply");
    let (reply, _) = ConnectReply::decode(&head).expect("reply decodes");
    let len = reply.authorizer_len as usize;
    assert!(len <= MAX_AUTHORIZER_LEN, "authorizer reply of {len} bytes");
    let mut rest = vec![0u8; len];
    sock.read_exact(&mut rest).expect("authorizer reply");
    if reply.tag == Tag::SEQ {
        let mut seq = [0u8; 8];
        sock.read_exact(&mut seq).expect("acceptor's seq");
        sock.write_all(&0u64.to_le_bytes()).expect("our seq");
    }
    reply.tag
}
