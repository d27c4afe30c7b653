//! Raw msgr2 bytes for hostile peers (`tests/tests/hostile_*.rs`): frames built with the
//! protocol crate's crc-mode encoder, and sockets driven by hand to the point where a
//! real attacker would start misbehaving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::types::{AddrType, EntityAddr, EntityAddrVec, EntityName, EntityType, Features};
use protocol::v2::banner::{Banner, BANNER_LEN};
use protocol::v2::frames::{ClientIdent, ControlFrame, Hello, MsgHeader2, HEADER2_FLAGS};
use protocol::v2::framing::{
    FrameEncoder, Preamble, SegmentDesc, ALIGN_DEFAULT, ALIGN_PAGE, MAX_SEGMENTS, PREAMBLE_LEN,
    SEGMENT_CRC_SEED,
};
use protocol::v2::Tag;
use protocol::wire::ceph_crc32c;
use protocol::Policy;

use crate::hostile::MSG_HOSTILE;

/// The wire pieces of one crc-mode frame `tag` with `segments`, in order (large
/// segments are their own pieces, by reference).
pub fn frame_pieces(tag: Tag, segments: &[&Bytes]) -> Vec<Bytes> {
    let mut small = BytesMut::new();
    let mut pieces = Vec::new();
    FrameEncoder::crc().encode(tag, segments, &mut small, &mut pieces).expect("encode frame");
    pieces.push(small.freeze());
    pieces
}

/// One crc-mode frame `tag` with `segments`, as one buffer.
pub fn frame(tag: Tag, segments: &[&Bytes]) -> Vec<u8> {
    frame_pieces(tag, segments).concat()
}

/// A control frame, as one buffer.
pub fn control<F: ControlFrame>(f: &F) -> Vec<u8> {
    frame(F::TAG, &[&f.to_segment()])
}

/// The header2 of a MESSAGE of type [`MSG_HOSTILE`] with sequence number `seq` and `tid`.
fn hostile_header(seq: u64, tid: u64) -> MsgHeader2 {
    MsgHeader2 { seq, tid, msg_type: MSG_HOSTILE, flags: HEADER2_FLAGS, ..MsgHeader2::default() }
}

/// A MESSAGE frame of type [`MSG_HOSTILE`] with sequence number `seq`, `tid`, `front`
/// and `data` (crc mode), in wire pieces ([`frame_pieces`]).
pub fn message_pieces(seq: u64, tid: u64, front: Bytes, data: Bytes) -> Vec<Bytes> {
    let header = Bytes::copy_from_slice(&hostile_header(seq, tid).to_bytes());
    let empty = Bytes::new();
    let segments: Vec<&Bytes> =
        if data.is_empty() { vec![&header, &front] } else { vec![&header, &front, &empty, &data] };
    frame_pieces(Tag::MESSAGE, &segments)
}

/// Opens a socket to a msgr2 acceptor and exchanges banners: the next bytes the
/// acceptor reads are a frame (it has sent its HELLO, unread).
pub fn v2_banner_socket(server: SocketAddr) -> TcpStream {
    let mut sock = TcpStream::connect(server).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    sock.write_all(&Banner::OURS.to_bytes()).expect("banner");
    let mut banner = [0u8; BANNER_LEN];
    sock.read_exact(&mut banner).expect("acceptor banner");
    sock
}

/// Our HELLO as a client dialling `server`, as one frame.
pub fn client_hello(server: EntityAddr) -> Vec<u8> {
    control(&Hello { entity_type: EntityType::CLIENT, peer_addr: server })
}

/// A msgr2 socket whose handshake our sans-IO machine ran (auth none, crc mode) up to
/// its ident: the acceptor has checked our AUTH_SIGNATURE and now waits for
/// CLIENT_IDENT or SESSION_RECONNECT, which the test writes (the machine's own ident is
/// held back). `me` is the address the machine announces.
pub fn v2_socket_at_ident(server: EntityAddr, me: EntityAddr, policy: Policy) -> TcpStream {
    let cfg = Arc::new(protocol::Config::new(EntityName::new(EntityType::CLIENT, -1), me));
    v2_socket_at_ident_with(cfg, server, EntityType::OSD, policy)
}

/// As [`v2_socket_at_ident`], with the machine's configuration `cfg` (who we are, our
/// addresses, our auth) dialling a `server_type` at `server`.
pub fn v2_socket_at_ident_with(
    cfg: Arc<protocol::Config>,
    server: EntityAddr,
    server_type: EntityType,
    policy: Policy,
) -> TcpStream {
    let now = Instant::now();
    let mut machine = protocol::Connection::connect(
        cfg,
        protocol::ProtocolVersion::V2,
        policy,
        server,
        server_type,
        now,
    );
    let mut sock = TcpStream::connect(server.addr.expect("server address")).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    machine.handle_transport_connected(Instant::now());
    let mut buf = vec![0u8; 4096];
    let mut relay = V2Relay::default();
    for _ in 0..64 {
        if relay.write_until(&mut machine, &mut sock, |tag| {
            tag == Tag::CLIENT_IDENT || tag == Tag::SESSION_RECONNECT
        }) {
            return sock;
        }
        let n = crate::read_some(&mut sock, &mut buf).expect("read");
        assert!(n > 0, "server closed during the handshake");
        machine.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
    }
    panic!("the handshake did not reach the ident");
}

/// Writes a sans-IO msgr2 machine's output to its socket frame by frame, so that a test
/// can hold back the first frame of a kind (and what follows it) unwritten.
#[derive(Default)]
pub struct V2Relay {
    /// What the machine transmitted and was not written yet.
    pending: Vec<u8>,
    /// Whether the banner (which is not a frame) went already.
    banner_sent: bool,
}

impl V2Relay {
    /// Takes what `machine` has to transmit and writes it to `sock`, up to the first
    /// frame whose tag `stop` accepts: true once that frame is reached (it and what
    /// follows stay unwritten, see [`V2Relay::into_pending`]).
    pub fn write_until(
        &mut self,
        machine: &mut protocol::Connection,
        sock: &mut TcpStream,
        stop: impl Fn(Tag) -> bool,
    ) -> bool {
        let mut out = Vec::new();
        while machine.poll_transmit(&mut out) > 0 {}
        for seg in &out {
            self.pending.extend_from_slice(seg);
        }
        loop {
            if !self.banner_sent {
                if self.pending.len() < BANNER_LEN {
                    return false;
                }
                sock.write_all(&self.pending[..BANNER_LEN]).expect("banner");
                self.pending.drain(..BANNER_LEN);
                self.banner_sent = true;
                continue;
            }
            let Some((tag, len)) = next_frame(&self.pending) else { return false };
            if stop(tag) {
                return true;
            }
            let Some(frame) = self.pending.get(..len) else { return false };
            sock.write_all(frame).expect("frame");
            self.pending.drain(..len);
        }
    }

    /// What was held back: the stopping frame and everything after it.
    pub fn into_pending(self) -> Vec<u8> {
        self.pending
    }
}

/// The tag and wire length of the crc-mode frame at the start of `stream`, once its
/// preamble is there.
fn next_frame(stream: &[u8]) -> Option<(Tag, usize)> {
    let pre: &[u8; PREAMBLE_LEN] = stream.get(..PREAMBLE_LEN)?.try_into().ok()?;
    let pre = Preamble::decode(pre).expect("a crc-mode preamble");
    let lens = pre.lens().map(|l| l as usize);
    let num = usize::from(pre.num_segments);
    Some((pre.tag, FrameEncoder::crc().wire_len(&lens[..num])))
}

/// Reads one crc-mode frame from `sock`: its tag and segment 0. `None` if the peer
/// closed (or reset) the socket first. Panics if the socket's read timeout passes
/// first: a peer that neither answers nor closes is not one that closed.
pub fn read_frame(sock: &mut TcpStream) -> Option<(Tag, Bytes)> {
    let mut pre = [0u8; PREAMBLE_LEN];
    read_or_closed(sock, &mut pre)?;
    let (tag, len) = next_frame(&pre)?;
    let mut rest = vec![0u8; len - PREAMBLE_LEN];
    read_or_closed(sock, &mut rest)?;
    let l0 = Preamble::decode(&pre).ok()?.lens()[0] as usize;
    Some((tag, Bytes::copy_from_slice(rest.get(..l0)?)))
}

/// Fills `buf` from `sock`; `None` if the peer closed (EOF) or reset it first. Panics on
/// the socket's read timeout.
fn read_or_closed(sock: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    match sock.read_exact(buf) {
        Ok(()) => Some(()),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("no frame and no close within the socket's read timeout: {e}")
        }
        Err(_) => None,
    }
}

/// The tags of the crc-mode frames `stream` is made of, in order; panics if it ends
/// with part of a frame.
pub fn frame_tags(mut stream: &[u8]) -> Vec<Tag> {
    let mut tags = Vec::new();
    while let Some((tag, len)) = next_frame(stream) {
        let Some(rest) = stream.get(len..) else { break };
        tags.push(tag);
        stream = rest;
    }
    assert!(stream.is_empty(), "{} bytes of a frame after {tags:?}", stream.len());
    tags
}

/// The first bytes of a crc-mode MESSAGE frame of type [`MSG_HOSTILE`] with sequence
/// number `seq` announcing `data_len` bytes of data (no front): its preamble, header2
/// and header2's crc, what comes before the data ([`crate::hostile::head_len`]).
pub fn message_head(seq: u64, tid: u64, data_len: u32) -> Vec<u8> {
    let header = hostile_header(seq, tid).to_bytes();
    let control = SegmentDesc { len: 0, align: ALIGN_DEFAULT };
    let segments = [
        SegmentDesc { len: MsgHeader2::LEN as u32, align: ALIGN_DEFAULT },
        control,
        control,
        SegmentDesc { len: data_len, align: ALIGN_PAGE },
    ];
    let preamble =
        Preamble { tag: Tag::MESSAGE, num_segments: MAX_SEGMENTS as u8, segments, flags: 0 };
    let mut out = preamble.to_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&ceph_crc32c(SEGMENT_CRC_SEED, &header).to_le_bytes());
    out
}

/// A msgr2 address on 127.0.0.1 (port 0) with `nonce`: what a raw peer announces.
pub fn v2_peer_addr(nonce: u32) -> EntityAddr {
    EntityAddr {
        ty: AddrType::MSGR2,
        ..EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), nonce)
    }
}

/// A CLIENT_IDENT from `me` for `server`, opening a lossless session with
/// `client_cookie`, supporting `features` (requiring MSG_ADDR2 only if it supports it),
/// as one frame.
pub fn client_ident(
    server: EntityAddr,
    me: EntityAddr,
    features: Features,
    client_cookie: u64,
) -> Vec<u8> {
    control(&ClientIdent {
        addrs: EntityAddrVec { addrs: vec![me] },
        target_addr: server,
        gid: -1,
        global_seq: 10,
        supported_features: features,
        required_features: Features(features.0 & Features::MSG_ADDR2.0),
        flags: 0,
        client_cookie,
    })
}

/// A CLIENT_IDENT for `server` listing `addrs` as ours, opening a lossless session
/// with `client_cookie`, sent at `global_seq` (Pacific's features), as one frame.
pub fn ident_listing(
    server: EntityAddr,
    addrs: Vec<EntityAddr>,
    client_cookie: u64,
    global_seq: u64,
) -> Vec<u8> {
    control(&ClientIdent {
        addrs: EntityAddrVec { addrs },
        target_addr: server,
        gid: -1,
        global_seq,
        supported_features: Features::PACIFIC_ADVERTISED,
        required_features: Features::MSG_ADDR2,
        flags: 0,
        client_cookie,
    })
}

/// A CLIENT_IDENT that lacks every feature (an acceptor requires MSG_ADDR2 at least):
/// Ceph answers IDENT_MISSING_FEATURES and lets the peer try again, a bounded number of
/// times.
pub fn featureless_ident(server: EntityAddr, me: EntityAddr) -> Vec<u8> {
    client_ident(server, me, Features(0), 7)
}
