//! Hostile frames in msgr2 secure mode, after a real cephx handshake: a raw peer runs
//! our sans-IO connector to an open secure session, learns the connection secret its
//! auth produced, and then writes frames it seals itself with the session's key and
//! nonces (so they pass, or fail, exactly where the test means them to). The server
//! must fault that one connection with a clear error, hold nothing unbounded or
//! uncharged, and go on serving the others; what it sends in secure mode is read back
//! by an independent reader.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use messenger::{Messenger, MessengerConfig, Policy};
use parking_lot::Mutex;
use protocol::auth::{
    AuthClient, AuthOutcome, AuthProvider, AuthRole, AuthServer, ConMode, ConModes,
};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use protocol::v2::frames::{MsgHeader2, HEADER2_FLAGS};
use protocol::v2::framing::{
    GcmStream, Preamble, SegmentDesc, ALIGN_DEFAULT, ALIGN_PAGE, KEY_LEN, MAX_SEGMENTS, NONCE_LEN,
    PREAMBLE_LEN, SECURE_HEAD_LEN, TAG_LEN,
};
use protocol::v2::Tag;
use tests::cephx::TestCluster;
use tests::hostile::{closed_within, worker_counter, RawPeer, MSG_HOSTILE};
use tests::loopback::*;

const MSG_TEST: u16 = 0x7f00;
const INLINE: usize = 48;

/// The msgr2 address on the port of `addr`.
fn v2(addr: EntityAddr) -> EntityAddr {
    EntityAddr { ty: AddrType::MSGR2, ..addr }
}

fn pad16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// A provider that delegates to cephx, asks for secure mode, and keeps the connection
/// secret its connector side learns.
struct Capture {
    inner: Arc<dyn AuthProvider>,
    secret: Arc<Mutex<Option<Vec<u8>>>>,
}

struct CaptureClient {
    inner: Box<dyn AuthClient>,
    secret: Arc<Mutex<Option<Vec<u8>>>>,
}

impl AuthClient for CaptureClient {
    fn build_request(&mut self) -> protocol::error::Result<Bytes> {
        self.inner.build_request()
    }
    fn handle_reply_more(&mut self, payload: &[u8]) -> protocol::error::Result<Bytes> {
        self.inner.handle_reply_more(payload)
    }
    fn handle_done(
        &mut self,
        now: Instant,
        global_id: u64,
        mode: ConMode,
        payload: &[u8],
    ) -> protocol::error::Result<AuthOutcome> {
        let out = self.inner.handle_done(now, global_id, mode, payload)?;
        *self.secret.lock() = Some(out.connection_secret.clone());
        Ok(out)
    }
    fn confirmed(&mut self) {
        self.inner.confirmed();
    }
}

impl AuthProvider for Capture {
    fn methods(&self, role: AuthRole, peer_type: EntityType) -> Vec<u32> {
        self.inner.methods(role, peer_type)
    }
    fn modes(&self, _role: AuthRole, _peer_type: EntityType) -> Vec<ConMode> {
        vec![ConMode::SECURE]
    }
    fn client(
        &self,
        peer_type: EntityType,
        peer_addr: &EntityAddr,
        method: u32,
    ) -> Option<Box<dyn AuthClient>> {
        let inner = self.inner.client(peer_type, peer_addr, method)?;
        Some(Box::new(CaptureClient { inner, secret: self.secret.clone() }))
    }
    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        self.inner.server(peer_type, method)
    }
}

/// A peer with an open secure session to the server, sealing its own frames.
struct SecurePeer {
    sock: std::net::TcpStream,
    /// Our send direction, at the nonce of the next frame.
    tx: GcmStream,
    /// The next message seq.
    seq: u64,
    key: [u8; KEY_LEN],
    /// The acceptor's first nonce.
    rx_nonce: [u8; NONCE_LEN],
    /// Our receive direction, once found.
    rx: Option<GcmStream>,
    inbuf: Vec<u8>,
}

impl SecurePeer {
    /// Seals `plain` as one GCM block (its tag appended).
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut b = plain.to_vec();
        let tag = self.tx.seal(&mut b).expect("seal");
        b.extend_from_slice(&tag);
        b
    }

    /// A frame with this preamble (taken as is: lengths may lie), segment 0 and the
    /// plaintext of block C (the padded segments and the epilogue), or no block C.
    fn raw_frame(&mut self, pre: &Preamble, seg0: &[u8], block_c: Option<&[u8]>) -> Vec<u8> {
        let mut a = pre.to_bytes().to_vec();
        let inline = seg0.len().min(INLINE);
        a.extend_from_slice(&seg0[..inline]);
        a.resize(PREAMBLE_LEN + INLINE, 0);
        let mut out = self.seal(&a);
        if seg0.len() > INLINE {
            let mut b = seg0[INLINE..].to_vec();
            b.resize(pad16(seg0.len()) - INLINE, 0);
            out.extend(self.seal(&b));
        }
        if let Some(c) = block_c {
            out.extend(self.seal(c));
        }
        out
    }

    /// A well-formed MESSAGE frame with `front` and `data`, late_status `late`.
    fn message_with(&mut self, seq: u64, tid: u64, front: &[u8], data: &[u8], late: u8) -> Vec<u8> {
        let header = MsgHeader2 {
            seq,
            tid,
            msg_type: MSG_HOSTILE,
            flags: HEADER2_FLAGS,
            ..MsgHeader2::default()
        }
        .to_bytes();
        let segs: [&[u8]; 3] = [front, &[], data];
        let num = if !data.is_empty() {
            4
        } else if !front.is_empty() {
            2
        } else {
            1
        };
        let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
        segments[0] = SegmentDesc { len: MsgHeader2::LEN as u32, align: ALIGN_DEFAULT };
        for i in 1..num {
            let align = if i == 3 { ALIGN_PAGE } else { ALIGN_DEFAULT };
            segments[i] = SegmentDesc { len: segs[i - 1].len() as u32, align };
        }
        let pre = Preamble { tag: Tag::MESSAGE, num_segments: num as u8, segments, flags: 0 };
        let c = (num > 1).then(|| {
            let mut c = Vec::new();
            for s in segs.iter().take(num - 1) {
                c.extend_from_slice(s);
                c.resize(pad16(c.len()), 0);
            }
            c.push(late);
            c.resize(c.len() + 15, 0);
            c
        });
        self.raw_frame(&pre, &header, c.as_deref())
    }

    fn fill(&mut self, n: usize) {
        let mut buf = vec![0u8; 64 << 10];
        while self.inbuf.len() < n {
            let k = tests::read_some(&mut self.sock, &mut buf).expect("read");
            assert!(k > 0, "EOF");
            self.inbuf.extend_from_slice(&buf[..k]);
        }
    }

    /// Reads and opens the next frame the server sent, checking its padding and
    /// epilogue independently of the protocol crate's decoder: its preamble and
    /// segments.
    fn read_frame(&mut self) -> (Preamble, Vec<Vec<u8>>) {
        self.fill(SECURE_HEAD_LEN);
        let (sealed, tag) = self.inbuf[..SECURE_HEAD_LEN].split_at(SECURE_HEAD_LEN - TAG_LEN);
        let mut a = sealed.to_vec();
        if self.rx.is_none() {
            let base = u64::from_le_bytes(self.rx_nonce[4..].try_into().expect("8"));
            let at = |k: u64| {
                let mut n = self.rx_nonce;
                n[4..].copy_from_slice(&base.wrapping_add(k).to_le_bytes());
                GcmStream::new(&self.key, &n)
            };
            let k = (0..64).find(|&k| at(k).open(&mut a.clone(), tag).is_ok()).expect("nonce");
            self.rx = Some(at(k));
        }
        let rx = self.rx.as_mut().expect("rx");
        rx.open(&mut a, tag).expect("block A");
        let pre = Preamble::decode(a[..PREAMBLE_LEN].try_into().expect("32")).expect("preamble");
        let lens = pre.lens().map(|l| l as usize);
        let num = usize::from(pre.num_segments);
        let mut at = SECURE_HEAD_LEN;
        let mut seg0 = a[PREAMBLE_LEN..PREAMBLE_LEN + lens[0].min(INLINE)].to_vec();
        assert!(a[PREAMBLE_LEN + lens[0].min(INLINE)..].iter().all(|&b| b == 0), "inline pad");
        if pad16(lens[0]) > INLINE {
            let blen = pad16(lens[0]) - INLINE;
            self.fill(at + blen + TAG_LEN);
            let mut b = self.inbuf[at..at + blen].to_vec();
            let tag = self.inbuf[at + blen..at + blen + TAG_LEN].to_vec();
            self.rx.as_mut().expect("rx").open(&mut b, &tag).expect("block B");
            seg0.extend_from_slice(&b[..lens[0] - INLINE]);
            at += blen + TAG_LEN;
        }
        let mut segs = vec![seg0];
        if num > 1 {
            let clen: usize = lens[1..num].iter().map(|&l| pad16(l)).sum::<usize>() + 16;
            self.fill(at + clen + TAG_LEN);
            let mut c = self.inbuf[at..at + clen].to_vec();
            let tag = self.inbuf[at + clen..at + clen + TAG_LEN].to_vec();
            self.rx.as_mut().expect("rx").open(&mut c, &tag).expect("block C");
            let mut off = 0;
            for &l in &lens[1..num] {
                segs.push(c[off..off + l].to_vec());
                assert!(c[off + l..off + pad16(l)].iter().all(|&b| b == 0), "segment pad");
                off += pad16(l);
            }
            assert_eq!(c[off], 0x0e, "late_status");
            assert!(c[off + 1..].iter().all(|&b| b == 0), "epilogue");
            at += clen + TAG_LEN;
        }
        self.inbuf.drain(..at);
        (pre, segs)
    }

    /// The next message (seq numbered by the peer), well formed.
    fn message(&mut self, tid: u64, front: &[u8], data: &[u8]) -> Vec<u8> {
        self.seq += 1;
        let seq = self.seq;
        self.message_with(seq, tid, front, data, 0x0e)
    }
}

/// Runs a cephx secure handshake to `server` as osd.1 and returns the peer, its sealing
/// stream synchronised with what the session sent so far.
fn secure_peer(server: EntityAddr, cluster: &mut TestCluster, nonce: u32) -> SecurePeer {
    let secret = Arc::new(Mutex::new(None));
    let me = EntityName::new(EntityType::OSD, 1);
    let provider = Arc::new(Capture { inner: cluster.provider(me, None), secret: secret.clone() });
    let addr = EntityAddr {
        ty: AddrType::MSGR2,
        ..EntityAddr::legacy(SocketAddr::from(([127, 0, 0, 1], 0)), nonce)
    };
    let cfg = Arc::new(protocol::Config::new(me, addr).with_auth(provider));
    let mut peer = RawPeer::try_handshake_with(server, protocol::Policy::lossless_peer(), cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    // A frame the session would send next: which nonce seals it tells how many the
    // handshake used.
    let probe = peer.frame(protocol::Message::new(MSG_TEST, Bytes::new()));
    let secret = secret.lock().clone().expect("secure mode: a connection secret");
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&secret[..KEY_LEN]);
    // The connector sends with bytes 28..40 of the secret.
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&secret[KEY_LEN + NONCE_LEN..KEY_LEN + 2 * NONCE_LEN]);
    let base = u64::from_le_bytes(nonce[4..].try_into().expect("8 bytes"));
    let at = |k: u64| {
        let mut n = nonce;
        n[4..].copy_from_slice(&base.wrapping_add(k).to_le_bytes());
        GcmStream::new(&key, &n)
    };
    let (sealed, tag) = probe[..SECURE_HEAD_LEN].split_at(SECURE_HEAD_LEN - TAG_LEN);
    let k = (0..64)
        .find(|&k| at(k).open(&mut sealed.to_vec(), tag).is_ok())
        .expect("the session's nonce within 64 of its first");
    let RawPeer { sock, .. } = peer;
    // The acceptor sends with bytes 16..28.
    let mut rx_nonce = [0u8; NONCE_LEN];
    rx_nonce.copy_from_slice(&secret[KEY_LEN..KEY_LEN + NONCE_LEN]);
    SecurePeer { sock, tx: at(k), seq: 0, key, rx_nonce, rx: None, inbuf: Vec::new() }
}

fn secure_server(config: MessengerConfig) -> (Messenger, SocketAddr, Receiver<Seen>, TestCluster) {
    secure_server_echo(config, false)
}

fn secure_server_echo(
    config: MessengerConfig,
    echo: bool,
) -> (Messenger, SocketAddr, Receiver<Seen>, TestCluster) {
    let osd0 = EntityName::new(EntityType::OSD, 0);
    let osd1 = EntityName::new(EntityType::OSD, 1);
    let mut cluster = TestCluster::new(&[osd0, osd1], 7);
    let config = MessengerConfig { cluster_mode: Some(ConModes(vec![ConMode::SECURE])), ..config }
        .with_auth_provider(cluster.provider(osd0, None));
    let (srv, addr, rx) = server_on(
        EntityType::OSD,
        1,
        Policy::stateful_server(),
        echo,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        config,
    );
    (srv, addr, rx, cluster)
}

// The harness itself: frames sealed by hand are delivered, byte-exact.
#[test]
fn hand_sealed_secure_messages_are_delivered() {
    let (srv, _, srv_rx, mut cluster) = secure_server(patient_config(2));
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 11);
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let mut wire = p.message(1, b"front", &[]);
    wire.extend(p.message(2, b"", &[]));
    wire.extend(p.message(3, b"f", &data));
    p.sock.write_all(&wire).expect("write");
    for tid in 1..=3 {
        let (c, m) = next_message(&srv_rx);
        assert_eq!(m.tid(), tid);
        assert_eq!(c.con_mode(), Some(ConMode::SECURE));
        if tid == 3 {
            assert_eq!(m.data().as_ref(), &data[..]);
        }
    }
    srv.shutdown();
}

fn panics(srv: &Messenger) -> u64 {
    srv.pool().handles().iter().map(|h| h.panics()).sum()
}

fn preamble(tag: Tag, num: u8, lens: [u32; MAX_SEGMENTS]) -> Preamble {
    let mut segments = [SegmentDesc::default(); MAX_SEGMENTS];
    for (s, l) in segments.iter_mut().zip(lens) {
        *s = SegmentDesc { len: l, align: ALIGN_DEFAULT };
    }
    Preamble { tag, num_segments: num, segments, flags: 0 }
}

fn header(seq: u64) -> [u8; 41] {
    MsgHeader2 {
        seq,
        tid: seq,
        msg_type: MSG_HOSTILE,
        flags: HEADER2_FLAGS,
        ..MsgHeader2::default()
    }
    .to_bytes()
}

/// After one good message, `bad` writes what it builds (and `close`: shuts its side):
/// the server closes that connection, panics nowhere, and another peer is served.
fn faults(what: &str, close: bool, bad: impl FnOnce(&mut SecurePeer) -> Vec<u8>) {
    let (srv, _, srv_rx, mut cluster) = secure_server(patient_config(2));
    let tb = messenger::Throttle::new("policy bytes", 64 << 20);
    let tm = messenger::Throttle::new("policy messages", 1000);
    srv.set_policy_throttlers(EntityType::OSD, Some(tb.clone()), Some(tm.clone()));
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 21);
    let good = p.message(1, b"before", &[]);
    p.sock.write_all(&good).expect("write");
    assert_eq!(next_message(&srv_rx).1.tid(), 1);
    let wire = bad(&mut p);
    let _ = p.sock.write_all(&wire);
    if close {
        let _ = p.sock.shutdown(std::net::Shutdown::Write);
    }
    assert!(closed_within(&mut p.sock, WAIT), "{what}: the server did not close the connection");
    assert_eq!(panics(&srv), 0, "{what}: a worker panicked");
    let mut q = secure_peer(v2(srv.my_addr()), &mut cluster, 22);
    let wire = q.message(77, b"after", &[]);
    q.sock.write_all(&wire).expect("write");
    let deadline = Instant::now() + WAIT;
    loop {
        match srv_rx.recv_deadline(deadline) {
            Ok(Seen::Message(_, m)) => {
                assert_eq!(m.tid(), 77, "{what}: the bad frame delivered something");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{what}: the next peer was not served: {e}"),
        }
    }
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("{what}: dispatch budget left held: {}", srv.dispatch_throttle().current()),
    );
    wait_until(
        || tb.current() == 0 && tm.current() == 0,
        || format!("{what}: policy budget left held: {} {}", tb.current(), tm.current()),
    );
    srv.shutdown();
}

#[test]
fn bad_tag_on_the_first_block() {
    faults("bad tag A", false, |p| {
        let mut w = p.message(2, b"x", &[]);
        w[10] ^= 1;
        w
    });
}

#[test]
fn bad_tag_on_block_c() {
    faults("bad tag C", false, |p| {
        let mut w = p.message(2, b"x", &[1u8; 300]);
        let n = w.len();
        w[n - 20] ^= 1;
        w
    });
}

#[test]
fn bad_segment_counts_and_lengths() {
    let cases: Vec<(&str, Preamble)> = vec![
        ("zero segments", preamble(Tag::MESSAGE, 0, [41, 0, 0, 0])),
        ("five segments", preamble(Tag::MESSAGE, 5, [41, 1, 1, 1])),
        ("header 40", preamble(Tag::MESSAGE, 1, [40, 0, 0, 0])),
        ("data too large", preamble(Tag::MESSAGE, 4, [41, 0, 0, (256 << 20) + 1])),
        ("front too large", preamble(Tag::MESSAGE, 2, [41, (64 << 20) + 1, 0, 0])),
        ("u32 max data", preamble(Tag::MESSAGE, 4, [41, 0, 0, u32::MAX])),
        ("control two segments", preamble(Tag::KEEPALIVE2, 2, [12, 4, 0, 0])),
        ("control too large", preamble(Tag::KEEPALIVE2, 1, [(64 << 10) + 1, 0, 0, 0])),
        ("last empty", preamble(Tag::MESSAGE, 4, [41, 5, 0, 0])),
    ];
    for (what, pre) in cases {
        faults(what, false, |p| p.raw_frame(&pre, &header(2), None));
    }
}

#[test]
fn odd_control_frames() {
    faults("empty keepalive", false, |p| {
        p.raw_frame(&preamble(Tag::KEEPALIVE2, 1, [0; 4]), &[], None)
    });
    faults("long keepalive", false, |p| {
        p.raw_frame(&preamble(Tag::KEEPALIVE2, 1, [100, 0, 0, 0]), &[5u8; 100], None)
    });
    faults("unknown tag", false, |p| {
        p.raw_frame(&preamble(Tag(99), 1, [8, 0, 0, 0]), &[0; 8], None)
    });
    faults("hello when open", false, |p| {
        p.raw_frame(&preamble(Tag::HELLO, 1, [8, 0, 0, 0]), &[0; 8], None)
    });
    faults("empty ack", false, |p| p.raw_frame(&preamble(Tag::ACK, 1, [0; 4]), &[], None));
}

#[test]
fn bad_tag_on_a_large_block_c() {
    faults("bad tag large C", false, |p| {
        let mut w = p.message(2, b"x", &vec![1u8; 5 << 20]);
        let n = w.len();
        w[n - 20] ^= 1;
        w
    });
}

#[test]
fn bad_late_status() {
    faults("late 0", false, |p| p.message_with(2, 2, b"x", &[], 0));
}

#[test]
fn truncated_frames_then_close() {
    faults("half block C", true, |p| {
        let w = p.message(2, b"x", &[3u8; 5000]);
        w[..w.len() / 2].to_vec()
    });
    faults("half block A", true, |p| {
        let w = p.message(2, b"x", &[]);
        w[..50].to_vec()
    });
}

#[test]
fn aborted_and_duplicate_messages_are_dropped_and_the_session_goes_on() {
    let (srv, _, srv_rx, mut cluster) = secure_server(patient_config(2));
    let tb = messenger::Throttle::new("policy bytes", 64 << 20);
    let tm = messenger::Throttle::new("policy messages", 1000);
    srv.set_policy_throttlers(EntityType::OSD, Some(tb.clone()), Some(tm.clone()));
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 31);
    let big = vec![9u8; 3 << 20];
    let mut wire = p.message(1, b"one", &[]);
    // Aborted: not delivered, seq 2 not taken.
    wire.extend(p.message_with(2, 2, b"aborted", &big, 0x01));
    // A duplicate of seq 1, large.
    wire.extend(p.message_with(1, 1, b"dup", &big, 0x0e));
    p.seq = 1;
    wire.extend(p.message(3, b"three", &big));
    wire.extend(p.message(4, b"four", &[]));
    p.sock.write_all(&wire).expect("write");
    for tid in [1, 3, 4] {
        assert_eq!(next_message(&srv_rx).1.tid(), tid);
    }
    assert_no_more_messages(&srv_rx, "an aborted or duplicate message was delivered");
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("dispatch budget left held: {}", srv.dispatch_throttle().current()),
    );
    wait_until(
        || tb.current() == 0 && tm.current() == 0,
        || format!("policy budget left held: {} {}", tb.current(), tm.current()),
    );
    assert!(!closed_within(&mut p.sock, Duration::from_millis(200)), "the session was faulted");
    srv.shutdown();
}

#[test]
fn a_large_announced_secure_message_holds_what_arrived() {
    let (srv, _, _srv_rx, mut cluster) = secure_server(patient_config(2));
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 41);
    // A 100 MiB data segment announced: its first block and 8 MiB of block C.
    let data_len = 100u32 << 20;
    let pre = Preamble {
        tag: Tag::MESSAGE,
        num_segments: 4,
        segments: [
            SegmentDesc { len: 41, align: ALIGN_DEFAULT },
            SegmentDesc::default(),
            SegmentDesc::default(),
            SegmentDesc { len: data_len, align: ALIGN_PAGE },
        ],
        flags: 0,
    };
    let head = p.raw_frame(&pre, &header(1), None);
    p.sock.write_all(&head).expect("head");
    let sent = 8u64 << 20;
    let chunk = vec![0u8; 1 << 20];
    let before = srv.totals().recv_bytes;
    for _ in 0..8 {
        p.sock.write_all(&chunk).expect("payload");
    }
    wait_until(|| srv.totals().recv_bytes >= before + sent, || "the server stopped reading".into());
    let held = worker_counter(&srv, "msgr_recv_held_bytes");
    let charged = srv.dispatch_throttle().current();
    assert!(held <= 2 * sent, "held {held} after {sent} sent");
    assert!(charged <= 4 * sent, "charged {charged} after {sent} sent");
    drop(p);
    wait_until(
        || srv.dispatch_throttle().current() == 0,
        || format!("dispatch budget left held: {}", srv.dispatch_throttle().current()),
    );
    srv.shutdown();
}

// The sending side, checked by an independent reader: every shape of message the
// server echoes (empty and non-empty fronts and data around the padding and inline
// boundaries) is sealed with the right lengths, zero padding and a complete epilogue.
#[test]
fn echoed_secure_frames_are_well_formed() {
    let (srv, _, _srv_rx, mut cluster) = secure_server_echo(patient_config(2), true);
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 51);
    let mut tid = 0;
    for front_len in [0usize, 1, 15, 16, 17, 47, 48, 49, 100] {
        for data_len in [0usize, 1, 4095, 4096, 4097, 70_000] {
            tid += 1;
            let front: Vec<u8> = (0..front_len).map(|i| (i * 3 + tid) as u8).collect();
            let data: Vec<u8> = (0..data_len).map(|i| (i * 7 + tid) as u8).collect();
            let wire = p.message(tid as u64, &front, &data);
            p.sock.write_all(&wire).expect("write");
            loop {
                let (pre, segs) = p.read_frame();
                if pre.tag != Tag::MESSAGE {
                    continue;
                }
                let h = MsgHeader2::decode(&segs[0]).expect("header2");
                assert_eq!(h.tid, tid as u64);
                let empty = Vec::new();
                assert_eq!(segs.get(1).unwrap_or(&empty), &front, "front of {tid}");
                assert_eq!(segs.get(3).unwrap_or(&empty), &data, "data of {tid}");
                break;
            }
        }
    }
    srv.shutdown();
}

// A message larger than the policy's byte throttle still arrives (the oldest message in
// progress goes on past the maximum), in secure mode where block C is read whole.
#[test]
fn a_secure_message_larger_than_the_policy_throttle_arrives() {
    let (srv, _, srv_rx, mut cluster) = secure_server(patient_config(1));
    let tb = messenger::Throttle::new("policy bytes", 1 << 20);
    srv.set_policy_throttlers(EntityType::OSD, Some(tb.clone()), None);
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 61);
    let data = vec![5u8; 5 << 20];
    let mut wire = p.message(1, b"big", &data);
    wire.extend(p.message(2, b"small", &[]));
    p.sock.write_all(&wire).expect("write");
    let (_, m) = next_message(&srv_rx);
    assert_eq!((m.tid(), m.data().len()), (1, data.len()));
    drop(m);
    assert_eq!(next_message(&srv_rx).1.tid(), 2);
    srv.shutdown();
}

// A burst in one write: messages taken whole, keepalives and acks between them opened
// piecewise, a message too large for the credit in the middle: all in order, once.
#[test]
fn a_mixed_secure_burst_in_one_write_arrives_in_order() {
    let (srv, _, srv_rx, mut cluster) = secure_server(patient_config(1));
    let mut p = secure_peer(v2(srv.my_addr()), &mut cluster, 71);
    let ka = [1u8, 0, 0, 0, 2, 0, 0, 0];
    let mut wire = Vec::new();
    for tid in 1..=300u64 {
        let data = if tid % 50 == 0 {
            vec![tid as u8; 300_000]
        } else {
            vec![tid as u8; (tid as usize * 37) % 700]
        };
        wire.extend(p.message(tid, &tid.to_le_bytes(), &data));
        match tid % 3 {
            0 => wire.extend(p.raw_frame(&preamble(Tag::KEEPALIVE2, 1, [8, 0, 0, 0]), &ka, None)),
            1 => wire.extend(p.raw_frame(
                &preamble(Tag::ACK, 1, [8, 0, 0, 0]),
                &0u64.to_le_bytes(),
                None,
            )),
            _ => {}
        }
    }
    p.sock.write_all(&wire).expect("write");
    for tid in 1..=300u64 {
        let (_, m) = next_message(&srv_rx);
        assert_eq!(m.tid(), tid, "in order, once");
        assert_eq!(m.front().as_ref(), &tid.to_le_bytes());
    }
    assert_no_more_messages(&srv_rx, "more than sent");
    srv.shutdown();
}
