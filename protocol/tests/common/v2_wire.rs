//! msgr2 frames on the wire for tests that script one side of a connection (crc mode).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use protocol::auth::ConMode;
use protocol::testing::v2_addr;
use protocol::types::{EntityAddr, EntityAddrVec, EntityType, Features};
use protocol::v2::banner::Banner;
use protocol::v2::frames::*;
use protocol::v2::framing::{Frame, FrameDecoder, FrameEncoder, FrameLimits, FrameProgress};
use protocol::v2::{Connection, Tag};
use protocol::{Event, Policy, ProtocolVersion};

/// One control frame in crc mode.
pub fn frame<F: ControlFrame>(f: &F) -> Vec<u8> {
    raw_frame(F::TAG, &[&f.to_segment()])
}

/// A frame of `tag` with `segs` in crc mode.
pub fn raw_frame(tag: Tag, segs: &[&Bytes]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    FrameEncoder::crc().encode(tag, segs, &mut buf, &mut out).unwrap();
    out.push(buf.freeze());
    out.concat()
}

/// The machine's output so far.
pub fn output(conn: &mut Connection) -> Vec<u8> {
    let mut segs = Vec::new();
    while conn.poll_transmit(&mut segs) > 0 {}
    segs.concat()
}

/// The frames in `wire` (crc mode), after `skip` bytes.
pub fn frames(wire: &[u8], skip: usize) -> Vec<Frame> {
    let all = Bytes::copy_from_slice(wire);
    let mut dec = FrameDecoder::new(FrameLimits::default());
    let mut at = skip;
    let mut out = Vec::new();
    loop {
        if dec.is_paused() {
            dec.proceed().unwrap();
        }
        let n = dec.need();
        if at + n > all.len() {
            return out;
        }
        let piece = all.slice(at..at + n);
        at += n;
        if let FrameProgress::Frame(f) = dec.advance(piece).unwrap() {
            out.push(f);
        }
    }
}

/// The machine's events so far.
pub fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// A msgr2 node's config: `num`, listening on `port`, with `nonce`.
pub fn node_config(num: i64, port: u16, nonce: u32) -> protocol::Config {
    protocol::testing::node_config(ProtocolVersion::V2, num, port, nonce)
}

/// A connector (client.? dialling mon at v2 127.0.0.1:6789/0) and a raw acceptor.
// Starts the virtual clock from the real one (`Instant` has no other constructor).
#[allow(clippy::disallowed_methods)]
pub fn connector(policy: Policy) -> (Connection, Instant) {
    connector_with(Arc::new(node_config(1, 6800, 9)), policy)
}

/// [`connector`] on a config the test keeps (to read its counters).
#[allow(clippy::disallowed_methods)]
pub fn connector_with(config: Arc<protocol::Config>, policy: Policy) -> (Connection, Instant) {
    let now = Instant::now();
    let mut c = Connection::connect(config, policy, v2_addr(6789, 0), EntityType::MON, now);
    c.handle_transport_connected(now);
    (c, now)
}

/// What an acceptor sends a connector up to SERVER_IDENT: banner, HELLO naming
/// `hello_type`, AUTH_DONE (crc, auth none) and its signature.
pub fn acceptor_prefix(hello_type: EntityType) -> Vec<u8> {
    let mut b = Banner::OURS.to_bytes().to_vec();
    b.extend(frame(&Hello { entity_type: hello_type, peer_addr: v2_addr(40000, 0) }));
    b.extend(frame(&AuthDone { global_id: 4100, con_mode: ConMode::CRC, payload: Bytes::new() }));
    b.extend(frame(&AuthSignature::default()));
    b
}

/// A MESSAGE frame from the peer: seq `seq`, acking `ack_seq`, a 5-byte front of
/// `seq`'s low byte.
pub fn message_frame(seq: u64, ack_seq: u64) -> Vec<u8> {
    let h = MsgHeader2 {
        seq,
        ack_seq,
        msg_type: 2,
        priority: 127,
        version: 1,
        flags: 3,
        compat_version: 1,
        ..MsgHeader2::default()
    };
    let h = Bytes::copy_from_slice(&h.to_bytes());
    let front = Bytes::from(vec![seq as u8; 5]);
    raw_frame(Tag::MESSAGE, &[&h, &front])
}

/// The acceptor's SERVER_IDENT opening a new session at `addr` (cookie 77).
pub fn server_ident(addr: EntityAddr) -> ServerIdent {
    ServerIdent {
        addrs: EntityAddrVec::single(addr),
        gid: 0,
        global_seq: 5,
        supported_features: Features::PACIFIC_ADVERTISED,
        required_features: Features::MSG_ADDR2,
        flags: 0,
        server_cookie: 77,
    }
}
