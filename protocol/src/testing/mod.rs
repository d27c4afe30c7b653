//! Test support (feature `testing`): two messengers' worth of [`Connection`]s, of either
//! protocol, on an in-memory network with a virtual clock (quinn's `Pair`), and toy
//! authentication ([`TestAuthProvider`]).
//!
//! Each [`Node`] plays the messenger: it owns a session table keyed by the peer's
//! address, answers accept requests with [`crate::decide`] and the decision's
//! [`TableEffect`], moves sessions on a replace, dials on [`Event::Reconnect`] and
//! grants receive budget. [`Pair::step`] moves bytes one round; [`Pair::drive`] runs to
//! quiescence and fails on livelock; [`Pair::run_for`] also advances the clock through
//! the machines' timers. Links can be cut, delivery split into arbitrary chunks, and
//! bytes tampered with.
//!
//! Not for production use: it exists for this crate's tests, benchmarks and fuzzing.

mod auth;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::session::{
    AuthVerdict, Config, CookieSource, Event, ExistingSession, Policy, TableEffect,
};
use crate::types::{AddrType, EntityAddr, EntityName, EntityType};
use crate::wire::KeepaliveStamp;
use crate::{decide, Connection, ProtocolVersion};

pub use auth::{TestAuthProvider, TestSigner, TEST_AUTH};

/// One messenger of the pair.
pub struct Node {
    /// Its configuration (shared by its connections).
    pub config: Arc<Config>,
    /// Its policy for the peer.
    pub policy: Policy,
    /// Session table: peer address → endpoint index.
    pub sessions: HashMap<EntityAddr, usize>,
    /// Messages delivered to this node, in order.
    pub received: Vec<Message>,
    /// Every event name seen, in order (for assertions).
    pub log: Vec<String>,
    /// `Event::Reset` count.
    pub resets: usize,
    /// `Event::RemoteReset` count.
    pub remote_resets: usize,
    /// `Event::Refused` count.
    pub refused: usize,
    /// `Event::Opened` count.
    pub opened: usize,
    /// `Event::Acked` count.
    pub acked: usize,
    /// Reject every authorizer the driver is asked about ([`Event::VerifyAuthorizer`]).
    pub reject_authorizers: bool,
    /// Dials to this node fail (it is down).
    pub unreachable: bool,
    /// Keep `NeedBudget` requests pending instead of granting them.
    pub hold_budget: bool,
    /// Endpoints with a budget request outstanding.
    pub budget_waiting: Vec<usize>,
    /// Grant receive credit with each budget request, as the messenger's driver does
    /// ([`BENCH_CREDIT`]): then the messages after it are read without asking.
    pub credit_ahead: bool,
}

impl Node {
    fn new(config: Arc<Config>, policy: Policy) -> Self {
        Node {
            config,
            policy,
            sessions: HashMap::new(),
            received: Vec::new(),
            log: Vec::new(),
            resets: 0,
            remote_resets: 0,
            refused: 0,
            opened: 0,
            acked: 0,
            reject_authorizers: false,
            unreachable: false,
            hold_budget: false,
            budget_waiting: Vec::new(),
            credit_ahead: false,
        }
    }

    /// This node's address in `version` (what the peer dials and keys its table with):
    /// its LEGACY address for v1, its v2 address for msgr2 (else its first).
    pub fn addr(&self, version: ProtocolVersion) -> EntityAddr {
        let ty = match version {
            ProtocolVersion::V1 => AddrType::LEGACY,
            ProtocolVersion::V2 => AddrType::MSGR2,
        };
        let addrs = &self.config.my_addrs.addrs;
        addrs.iter().copied().find(|a| a.ty == ty).or(addrs.first().copied()).unwrap_or_default()
    }
}

/// One connection state machine and where it lives.
pub struct Endpoint {
    /// The machine.
    pub conn: Connection,
    /// Owning node (0 or 1).
    pub node: usize,
    /// The link it currently talks over.
    pub link: Option<usize>,
    /// False once closed or replaced.
    pub alive: bool,
    /// Created by an accept.
    pub accepted: bool,
}

/// A TCP connection between two endpoints.
pub struct Link {
    /// Endpoint at each end.
    pub ends: [usize; 2],
    /// Bytes in flight toward `ends[i]`.
    pub toward: [VecDeque<Bytes>; 2],
    /// Bytes sent toward `ends[i]` so far (tamper offsets count these).
    pub sent: [u64; 2],
    /// End `i` closed its socket: `ends[1 - i]` sees EOF once its queue drains.
    pub closing: [bool; 2],
    /// Gone entirely.
    pub dead: bool,
}

/// Chooses the size of the next delivered chunk (argument: bytes available, >= 1).
pub type Splitter = Box<dyn FnMut(usize) -> usize>;

/// Rewrites a segment in flight (see [`Pair::mutate`]): called with the link, the node
/// the bytes travel toward, the segment's offset in that direction's stream and the
/// segment; returns what travels instead (empty: nothing).
pub type Mutator = Box<dyn FnMut(usize, usize, u64, Bytes) -> Bytes>;

/// The two-node network.
pub struct Pair {
    /// The virtual clock.
    pub now: Instant,
    /// The protocol connectors speak.
    pub version: ProtocolVersion,
    /// Acceptors read the peer's banner to pick the protocol ([`Connection::accept`])
    /// instead of being bound to [`Pair::version`].
    pub sniff: bool,
    /// Node 0 and node 1.
    pub nodes: [Node; 2],
    /// Every endpoint ever created (dead ones stay, for index stability).
    pub eps: Vec<Endpoint>,
    /// Every link ever created.
    pub links: Vec<Link>,
    /// Chunking of deliveries (None: whole segments).
    pub splitter: Option<Splitter>,
    /// Flip bits `xor` of the byte at stream offset `.1` of the bytes travelling toward
    /// node `.0` on the first link that carries that offset (applied once).
    pub tamper: Option<(usize, u64, u8)>,
    /// Rewrites every segment written (after [`Pair::tamper`]): insert, drop, replay,
    /// reorder bytes of the stream at will.
    pub mutate: Option<Mutator>,
    /// Apply [`Pair::mutate`] only to what is written on a link while one of its ends
    /// is not open yet: the handshakes (and what is written with their last frames).
    pub mutate_handshakes_only: bool,
    /// Cut every link after this many bytes were delivered in total.
    pub cut_after: Option<u64>,
    /// Bytes delivered so far.
    pub delivered: u64,
    /// Steps after which [`Pair::drive`] declares livelock.
    pub max_steps: usize,
    /// Log endpoint ids, decisions and close reasons in [`Node::log`].
    pub verbose: bool,
    next_port: u16,
}

/// Moves everything `from` has to send into `to`, one write list at a time, granting
/// `to` the receive budget it asks for; each message `to` delivers goes to `on_message`.
/// The benchmarks' and examples' exchange between two open machines (no [`Pair`] in
/// between, so only the machines' own work is measured). Returns how many budget
/// requests `to` made.
pub fn carry(
    from: &mut Connection,
    to: &mut Connection,
    now: Instant,
    segs: &mut Vec<Bytes>,
    on_message: impl FnMut(Message),
) -> u64 {
    exchange(from, to, now, segs, false, on_message)
}

/// Receive credit [`carry_with_credit`] grants at a time, as the messenger's driver
/// does: at most 64 messages and 256 KiB, and none for a message costing more than
/// 32 KiB.
pub const BENCH_CREDIT: (u32, u64, u64) = (64, 256 << 10, 32 << 10);

/// Receive credit for the messages after one whose budget request asked for `bytes`:
/// [`BENCH_CREDIT`]'s worth of messages as large as it, none when it costs more.
fn add_bench_credit(conn: &mut Connection, bytes: u64) {
    let (messages, max_bytes, max_cost) = BENCH_CREDIT;
    let cost = bytes.saturating_add(crate::message::MESSAGE_OVERHEAD);
    if cost <= max_cost {
        conn.add_receive_credit(messages, cost.saturating_mul(messages.into()).min(max_bytes));
    }
}

/// [`carry`] the way the messenger's driver drives a machine: when `to` asks for budget
/// for a message, it is given receive credit for the messages that follow (at most
/// [`BENCH_CREDIT`], as many as large as this one) and then the budget, so a burst of
/// small messages costs one request instead of one per message; the unused credit is
/// taken back at the end. Returns how many budget requests `to` made.
pub fn carry_with_credit(
    from: &mut Connection,
    to: &mut Connection,
    now: Instant,
    segs: &mut Vec<Bytes>,
    on_message: impl FnMut(Message),
) -> u64 {
    let requests = exchange(from, to, now, segs, true, on_message);
    let _ = to.take_receive_credit();
    requests
}

/// [`carry`], with receive credit granted at each budget request when `credit`.
fn exchange(
    from: &mut Connection,
    to: &mut Connection,
    now: Instant,
    segs: &mut Vec<Bytes>,
    credit: bool,
    mut on_message: impl FnMut(Message),
) -> u64 {
    let mut requests = 0;
    loop {
        segs.clear();
        if from.poll_transmit(segs) == 0 {
            break;
        }
        for s in segs.drain(..) {
            to.handle_bytes(now, s);
            requests += answer_events(to, now, credit, &mut on_message);
        }
    }
    requests
}

/// Answers `to`'s events as the exchanges do: budget granted at once (with receive
/// credit ahead when `credit`), messages to `on_message`, the rest ignored. Returns how
/// many budget requests there were.
fn answer_events(
    to: &mut Connection,
    now: Instant,
    credit: bool,
    on_message: &mut impl FnMut(Message),
) -> u64 {
    let mut requests = 0;
    while let Some(ev) = to.poll_event() {
        match ev {
            Event::NeedBudget { bytes, .. } => {
                requests += 1;
                if credit {
                    add_bench_credit(to, bytes);
                }
                to.grant_budget(now);
            }
            Event::Message(m) => on_message(m),
            _ => {}
        }
    }
    requests
}

/// How much one read of [`Reads`] takes at most by default: the messenger's default
/// `read_buffer` (64 KiB), the size its driver's socket reads ask for.
pub const READ_CHUNK: usize = 64 << 10;

/// One read [`carry_reads`] made, as [`Reads::recording`] keeps it.
#[derive(Debug, Clone)]
pub struct LoggedRead {
    /// The bytes read (a copy: keeping the slice handed over would pin the read buffer
    /// and change how it is reused).
    pub bytes: Bytes,
    /// Read straight into the receiver's assembly buffer
    /// ([`Connection::direct_read_buffer`]), not into the read buffer.
    pub direct: bool,
    /// The most this read could take: the chunk, or what the assembly buffer asked for.
    pub limit: usize,
}

/// The socket between two machines as the messenger's driver reads it, for
/// [`carry_reads`]: the sender's write list is queued as its `writev` hands it to the
/// kernel, and the receiver takes it in reads of at most [`Reads::chunk`] bytes, each
/// copied into one reused read buffer (that copy stands for the kernel's copy into the
/// driver's buffer) and split off as one `Bytes` for one
/// [`Connection::handle_bytes`] (`messenger/src/driver/io.rs`: `read`,
/// `read_into_spare`). While the receiver assembles a large payload it offers its own
/// buffer for ([`Connection::direct_read_buffer`]), the read goes there instead, as the
/// driver's does. Reused across calls, so the buffers' allocations are too.
pub struct Reads {
    /// The most one read takes ([`READ_CHUNK`] unless set otherwise).
    pub chunk: usize,
    /// Reads made into the read buffer.
    pub reads: u64,
    /// Reads made straight into the receiver's assembly buffer.
    pub direct_reads: u64,
    /// Everything the sender wrote, in order (kept only when recording).
    pub written: Vec<Bytes>,
    /// Every read, in order (kept only when recording).
    pub log: Vec<LoggedRead>,
    record: bool,
    /// The sender's write list, reused for each `poll_transmit`.
    segs: Vec<Bytes>,
    /// Written and not read yet (the socket's queue); the front one may be part-read.
    wire: VecDeque<Bytes>,
    /// Bytes in `wire`.
    wire_bytes: usize,
    /// The driver's read buffer: reads land in its spare room and are split off.
    buf: BytesMut,
}

impl Default for Reads {
    fn default() -> Self {
        Reads::new(READ_CHUNK)
    }
}

impl Reads {
    /// Reads of at most `chunk` bytes (at least 1).
    pub fn new(chunk: usize) -> Self {
        Reads {
            chunk: chunk.max(1),
            reads: 0,
            direct_reads: 0,
            written: Vec::new(),
            log: Vec::new(),
            record: false,
            segs: Vec::new(),
            wire: VecDeque::new(),
            wire_bytes: 0,
            buf: BytesMut::new(),
        }
    }

    /// [`Reads::new`], keeping a copy of everything written and of every read in
    /// [`Reads::written`] and [`Reads::log`] (for tests).
    pub fn recording(chunk: usize) -> Self {
        Reads { record: true, ..Reads::new(chunk) }
    }

    /// Bytes written and not read yet.
    pub fn pending(&self) -> usize {
        self.wire_bytes
    }

    /// Takes what `from` has to send while less than a read waits: the sender's driver
    /// writes a batch whenever its list drained, and the socket then holds enough for
    /// the next read to be a full one.
    fn fill(&mut self, from: &mut Connection) {
        while self.wire_bytes < self.chunk {
            self.segs.clear();
            if from.poll_transmit(&mut self.segs) == 0 {
                break;
            }
            for s in self.segs.drain(..) {
                if self.record {
                    self.written.push(Bytes::copy_from_slice(&s));
                }
                self.wire_bytes += s.len();
                self.wire.push_back(s);
            }
        }
    }

    /// Moves the next `n` bytes of the socket's queue (`n <= wire_bytes`) to the end of
    /// `dst`, whose spare room holds them.
    fn copy_out(wire: &mut VecDeque<Bytes>, wire_bytes: &mut usize, dst: &mut BytesMut, n: usize) {
        let mut left = n;
        while left > 0 {
            let Some(front) = wire.front_mut() else { break };
            let k = front.len().min(left);
            dst.extend_from_slice(&front[..k]);
            if k == front.len() {
                wire.pop_front();
            } else {
                bytes::Buf::advance(front, k);
            }
            left -= k;
        }
        *wire_bytes -= n - left;
    }

    /// One read into `to`: straight into its assembly buffer when it offers one, else
    /// into the read buffer, split off and handed over whole.
    fn read_into(&mut self, to: &mut Connection, now: Instant) {
        if let Some((dst, need)) = to.direct_read_buffer() {
            // As the driver's `read_into_spare(sock, buf, need, need)`: at most `need`.
            let n = need.min(self.wire_bytes);
            let start = dst.len();
            Reads::copy_out(&mut self.wire, &mut self.wire_bytes, dst, n);
            if self.record {
                let bytes = Bytes::copy_from_slice(&dst[start..]);
                self.log.push(LoggedRead { bytes, direct: true, limit: need });
            }
            self.direct_reads += 1;
            to.handle_direct_read(now, n);
            return;
        }
        // As the driver's `read_into_spare`: the buffer is renewed (or reclaimed, once
        // the slices of its earlier reads are gone) when less than a quarter of a read
        // is left in it; a read takes what room is left, at most a chunk.
        if self.buf.capacity() - self.buf.len() < (self.chunk / 4).max(1) {
            self.buf.reserve(self.chunk);
        }
        let room = (self.buf.capacity() - self.buf.len()).min(self.chunk);
        let n = room.min(self.wire_bytes);
        Reads::copy_out(&mut self.wire, &mut self.wire_bytes, &mut self.buf, n);
        let data = self.buf.split().freeze();
        if self.record {
            let bytes = Bytes::copy_from_slice(&data);
            self.log.push(LoggedRead { bytes, direct: false, limit: room });
        }
        self.reads += 1;
        to.handle_bytes(now, data);
    }
}

/// [`carry_with_credit`] with the bytes delivered as the messenger's driver reads them
/// ([`Reads`]): the sender's write list goes through one reused read buffer in reads of
/// up to [`Reads::chunk`] bytes (64 KiB, the driver's default), each handed to `to`
/// once, so messages mostly arrive whole, with their footers, and are split off without
/// a copy. [`carry`] and [`carry_with_credit`] hand each piece of the write list over
/// as a read of its own: a payload sent by reference then arrives without its footer
/// and is copied into a buffer of the receiver's own, which the messenger's reads seldom
/// make it do. Budget and credit as [`carry_with_credit`]. Stops when `from` has nothing
/// more to send and everything was read, or when `to` stops reading (it closed): what
/// it did not read stays in `reads` for the next call. Returns how many budget requests
/// `to` made.
pub fn carry_reads(
    from: &mut Connection,
    to: &mut Connection,
    now: Instant,
    reads: &mut Reads,
    mut on_message: impl FnMut(Message),
) -> u64 {
    let mut requests = 0;
    loop {
        reads.fill(from);
        if reads.pending() == 0 || !to.wants_read() {
            break;
        }
        reads.read_into(to, now);
        requests += answer_events(to, now, true, &mut on_message);
    }
    let _ = to.take_receive_credit();
    requests
}

/// How [`one_way`] feeds the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// [`carry_reads`]: as the messenger's driver reads its socket.
    Reads,
    /// [`carry_with_credit`]: each piece of the write list a read of its own.
    Pieces,
    /// [`carry`]: pieces, one budget request per message.
    BudgetPerMessage,
}

/// What the sans-IO benches and the instruction-count example repeat: `batch` clones of
/// `msg` sent from `a` to `b`, delivered as `delivery` says, then `b`'s ACK carried
/// back ([`ack_back`]) so `a`'s unacked queue stays bounded. Returns how many messages
/// `b` delivered.
#[allow(clippy::too_many_arguments)]
pub fn one_way(
    a: &mut Connection,
    b: &mut Connection,
    msg: &Message,
    batch: u64,
    delivery: Delivery,
    now: Instant,
    reads: &mut Reads,
    segs: &mut Vec<Bytes>,
) -> u64 {
    for _ in 0..batch {
        a.send_message(msg.clone());
    }
    let mut got = 0;
    let _ = match delivery {
        Delivery::Reads => carry_reads(a, b, now, reads, |_| got += 1),
        Delivery::Pieces => carry_with_credit(a, b, now, segs, |_| got += 1),
        Delivery::BudgetPerMessage => carry(a, b, now, segs, |_| got += 1),
    };
    ack_back(a, b, now, segs);
    got
}

/// One case of the sans-IO benches' exchange, set up to be repeated: an open pair (as
/// [`Pair::open_v1`] and [`Pair::open_v2`] return it), the message [`one_way`] sends
/// (`size` bytes of data at `PRIO_DEFAULT`) and its reused buffers.
pub struct OneWay {
    pair: Pair,
    a: usize,
    b: usize,
    msg: Message,
    /// The reads [`Delivery::Reads`] made, counted.
    pub reads: Reads,
    segs: Vec<Bytes>,
}

impl OneWay {
    /// The case over `open` (the pair, the sending end and the receiving end, `a < b`).
    pub fn new((pair, a, b): (Pair, usize, usize), size: usize) -> Self {
        let mut msg = Message::new(2, Bytes::from(vec![0xa5u8; size]));
        msg.set_priority(crate::message::PRIO_DEFAULT);
        OneWay { pair, a, b, msg, reads: Reads::default(), segs: Vec::new() }
    }

    /// [`one_way`] once: `batch` messages delivered as `delivery` says, the ACK back.
    /// Returns how many messages were delivered.
    pub fn run(&mut self, batch: u64, delivery: Delivery) -> u64 {
        let now = self.pair.now;
        let (a, b) = self.pair.ends_mut(self.a, self.b);
        one_way(a, b, &self.msg, batch, delivery, now, &mut self.reads, &mut self.segs)
    }
}

/// Carries what `b` has to send (after a one-way exchange: its ACK) to `a`, piece by
/// piece, and drops `a`'s events.
pub fn ack_back(a: &mut Connection, b: &mut Connection, now: Instant, segs: &mut Vec<Bytes>) {
    segs.clear();
    b.poll_transmit(segs);
    for s in segs.drain(..) {
        a.handle_bytes(now, s);
    }
    while a.poll_event().is_some() {}
}

/// A test message numbered `id` (its front is `id`, little-endian) at `PRIO_DEFAULT`:
/// what the pair scenarios send, so that [`numbers`] can tell what arrived.
pub fn numbered(id: u32) -> Message {
    let mut m = Message::new(2, Bytes::copy_from_slice(&id.to_le_bytes()));
    m.set_priority(crate::message::PRIO_DEFAULT);
    m
}

/// The numbers of [`numbered`] messages, in order (`u32::MAX` for a front too short to
/// carry one).
pub fn numbers(received: &[Message]) -> Vec<u32> {
    received
        .iter()
        .map(|m| {
            m.front().get(..4).and_then(|b| b.try_into().ok()).map_or(u32::MAX, u32::from_le_bytes)
        })
        .collect()
}

/// A v2 address on loopback.
pub fn v2_addr(port: u16, nonce: u32) -> EntityAddr {
    EntityAddr {
        ty: AddrType::MSGR2,
        nonce,
        addr: Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))),
    }
}

/// A v1 (LEGACY) address on loopback.
pub fn v1_addr(port: u16, nonce: u32) -> EntityAddr {
    EntityAddr::legacy(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)), nonce)
}

/// A node configuration: `mon.<num>` at 127.0.0.1:`port`/`nonce` in `version`, auth
/// none as `mon.<num>`, deterministic cookies.
pub fn node_config(version: ProtocolVersion, num: i64, port: u16, nonce: u32) -> Config {
    let addr = match version {
        ProtocolVersion::V1 => v1_addr(port, nonce),
        ProtocolVersion::V2 => v2_addr(port, nonce),
    };
    let mut c = Config::new(EntityName::new(EntityType::MON, num), addr);
    c.cookies = Arc::new(CookieSource::with_seed(u64::from(port) << 32 | u64::from(nonce)));
    c
}

/// [`Pair::new`]'s two msgr2 node configurations, each authenticating with
/// [`TestAuthProvider`] preferring `modes`.
fn test_auth_configs(modes: &[crate::auth::ConMode]) -> (Config, Config) {
    let mut c0 = node_config(ProtocolVersion::V2, 0, 6789, 1);
    let mut c1 = node_config(ProtocolVersion::V2, 1, 6790, 2);
    c0.auth = Arc::new(TestAuthProvider::new(modes));
    c1.auth = Arc::new(TestAuthProvider::new(modes));
    (c0, c1)
}

impl Pair {
    /// Node 0 is `mon.0` at 127.0.0.1:6789 nonce 1, node 1 `mon.1` at :6790 nonce 2 (node
    /// 0's address sorts lower), speaking `version`, auth none, with the given policies.
    pub fn new(now: Instant, version: ProtocolVersion, policy0: Policy, policy1: Policy) -> Self {
        let c0 = node_config(version, 0, 6789, 1);
        let c1 = node_config(version, 1, 6790, 2);
        Pair::with_configs(now, version, c0, policy0, c1, policy1)
    }

    /// [`Pair::new`] over msgr v1.
    pub fn v1(now: Instant, policy0: Policy, policy1: Policy) -> Self {
        Pair::new(now, ProtocolVersion::V1, policy0, policy1)
    }

    /// Two v1 machines opened with each other, crc on both ends or neither, the session
    /// lossy or lossless as [`Pair::open_with`] makes it. Returns the pair, the dialler's
    /// endpoint and the acceptor's.
    pub fn open_v1(now: Instant, crc: bool, lossy: bool) -> (Pair, usize, usize) {
        let mut c0 = node_config(ProtocolVersion::V1, 0, 6789, 1);
        let mut c1 = node_config(ProtocolVersion::V1, 1, 6790, 2);
        for c in [&mut c0, &mut c1] {
            c.crc_header = crc;
            c.crc_data = crc;
        }
        Pair::open_with(now, ProtocolVersion::V1, c0, c1, lossy)
    }

    /// Two msgr2 machines opened with each other in `mode` (both authenticating with
    /// [`TestAuthProvider`], as [`Pair::with_test_auth`]), the session lossy or lossless
    /// as [`Pair::open_with`] makes it. Returns the pair, the dialler's endpoint and the
    /// acceptor's.
    pub fn open_v2(now: Instant, mode: crate::auth::ConMode, lossy: bool) -> (Pair, usize, usize) {
        let (c0, c1) = test_auth_configs(&[mode]);
        let (p, a, b) = Pair::open_with(now, ProtocolVersion::V2, c0, c1, lossy);
        for e in [a, b] {
            assert_eq!(p.eps[e].conn.con_mode(), Some(mode), "endpoint {e}'s mode");
        }
        (p, a, b)
    }

    /// Node 0 (`c0`) dials node 1 (`c1`) and the pair is driven until both ends are
    /// open: the session lossy (a `lossy_client` dialling a `stateless_server`) or
    /// lossless (two `lossless_peer`s), checked at both ends. Returns the pair, the
    /// dialler's endpoint and the acceptor's (a stateless server registers no session:
    /// its end is the accepted endpoint still alive).
    fn open_with(
        now: Instant,
        version: ProtocolVersion,
        c0: Config,
        c1: Config,
        lossy: bool,
    ) -> (Pair, usize, usize) {
        let (p0, p1) = if lossy {
            (Policy::lossy_client(), Policy::stateless_server())
        } else {
            (Policy::lossless_peer(), Policy::lossless_peer())
        };
        let mut p = Pair::with_configs(now, version, c0, p0, c1, p1);
        let a = p.connect(0);
        p.drive();
        let b = (0..p.eps.len()).find(|&e| p.eps[e].accepted && p.eps[e].alive);
        let b = b.unwrap_or_else(|| panic!("no accepted endpoint alive"));
        for e in [a, b] {
            assert!(p.eps[e].conn.is_open(), "endpoint {e}: {}", p.eps[e].conn);
            assert_eq!(p.eps[e].conn.is_lossy(), lossy, "endpoint {e}'s lossiness");
        }
        assert!(a < b, "the dialler's endpoint comes first");
        (p, a, b)
    }

    /// The connections of endpoints `a` and `b` (`a < b`), both borrowed at once.
    pub fn ends_mut(&mut self, a: usize, b: usize) -> (&mut Connection, &mut Connection) {
        assert!(a < b, "endpoint {a} must come before {b}");
        let (lo, hi) = self.eps.split_at_mut(b);
        (&mut lo[a].conn, &mut hi[0].conn)
    }

    /// [`Pair::new`] over msgr2 (crc mode).
    pub fn v2(now: Instant, policy0: Policy, policy1: Policy) -> Self {
        Pair::new(now, ProtocolVersion::V2, policy0, policy1)
    }

    /// As [`Pair::v2`], both nodes authenticating with [`TestAuthProvider`] (two rounds,
    /// a session key, a connection secret) preferring `modes`.
    pub fn with_test_auth(
        now: Instant,
        policy0: Policy,
        policy1: Policy,
        modes: &[crate::auth::ConMode],
    ) -> Self {
        let (c0, c1) = test_auth_configs(modes);
        Pair::with_configs(now, ProtocolVersion::V2, c0, policy0, c1, policy1)
    }

    /// A pair from explicit configurations. Each node's policy is its policy for every
    /// peer type: also its configuration's [`Config::policies`], where its acceptors find
    /// their feature bits.
    pub fn with_configs(
        now: Instant,
        version: ProtocolVersion,
        mut c0: Config,
        p0: Policy,
        mut c1: Config,
        p1: Policy,
    ) -> Self {
        c0.policies = Arc::new(p0);
        c1.policies = Arc::new(p1);
        Pair {
            now,
            version,
            sniff: false,
            nodes: [Node::new(Arc::new(c0), p0), Node::new(Arc::new(c1), p1)],
            eps: Vec::new(),
            links: Vec::new(),
            splitter: None,
            tamper: None,
            mutate: None,
            mutate_handshakes_only: false,
            cut_after: None,
            delivered: 0,
            max_steps: 100_000,
            verbose: false,
            next_port: 40_000,
        }
    }

    /// The other node.
    pub fn peer_of(node: usize) -> usize {
        1 - node
    }

    /// `node` opens a connection to the other node (Ceph's `get_connection`): it is
    /// registered in the session table at once and dialled. Returns its endpoint.
    pub fn connect(&mut self, node: usize) -> usize {
        let peer = Pair::peer_of(node);
        let peer_addr = self.nodes[peer].addr(self.version);
        let peer_type = self.nodes[peer].config.my_name.ty;
        let conn = Connection::connect(
            self.nodes[node].config.clone(),
            self.version,
            self.nodes[node].policy,
            peer_addr,
            peer_type,
            self.now,
        );
        let ep = self.eps.len();
        self.eps.push(Endpoint { conn, node, link: None, alive: true, accepted: false });
        self.nodes[node].sessions.insert(peer_addr, ep);
        self.dial(ep);
        ep
    }

    /// The endpoint registered on `node` for the other node, if alive.
    pub fn session_ep(&self, node: usize) -> Option<usize> {
        let peer_addr = self.nodes[Pair::peer_of(node)].addr(self.version);
        self.nodes[node].sessions.get(&peer_addr).copied().filter(|&e| self.eps[e].alive)
    }

    /// Sends `msg` from `node` to the other node through its session (connecting first
    /// if there is none), as the messenger's `send_message(msg, dest)`.
    pub fn send(&mut self, node: usize, msg: Message) {
        let ep = match self.session_ep(node) {
            Some(ep) => ep,
            None => self.connect(node),
        };
        self.eps[ep].conn.send_message(msg);
    }

    /// The machine of endpoint `ep`.
    pub fn conn(&mut self, ep: usize) -> &mut Connection {
        &mut self.eps[ep].conn
    }

    fn dial(&mut self, ep: usize) {
        let node = self.eps[ep].node;
        let peer = Pair::peer_of(node);
        if self.nodes[peer].unreachable {
            self.eps[ep].conn.handle_transport_closed(self.now);
            return;
        }
        self.next_port = self.next_port.wrapping_add(1).max(40_000);
        let local = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.next_port));
        let listen = self.nodes[peer].addr(self.version).addr.unwrap_or(local);
        let config = self.nodes[peer].config.clone();
        let acc = match (self.sniff, self.version) {
            (true, _) => Connection::accept(config, local, listen, self.now),
            (false, ProtocolVersion::V1) => Connection::accept_v1(config, local, listen, self.now),
            (false, ProtocolVersion::V2) => Connection::accept_v2(config, local, listen, self.now),
        };
        let acc_ep = self.eps.len();
        self.eps.push(Endpoint { conn: acc, node: peer, link: None, alive: true, accepted: true });
        let link = self.links.len();
        self.links.push(Link {
            ends: [ep, acc_ep],
            toward: [VecDeque::new(), VecDeque::new()],
            sent: [0, 0],
            closing: [false, false],
            dead: false,
        });
        self.eps[ep].link = Some(link);
        self.eps[acc_ep].link = Some(link);
        self.eps[ep].conn.handle_transport_connected(self.now);
    }

    /// Cuts `link` abruptly: bytes in flight are lost and both ends see EOF.
    pub fn cut(&mut self, link: usize) {
        if self.links[link].dead {
            return;
        }
        self.links[link].dead = true;
        for i in 0..2 {
            self.links[link].toward[i].clear();
            let ep = self.links[link].ends[i];
            if self.eps[ep].link == Some(link) {
                self.eps[ep].link = None;
                if self.eps[ep].alive {
                    self.eps[ep].conn.handle_transport_closed(self.now);
                }
            }
        }
    }

    /// Cuts every live link.
    pub fn cut_all(&mut self) {
        for l in 0..self.links.len() {
            self.cut(l);
        }
    }

    /// Live links.
    pub fn live_links(&self) -> Vec<usize> {
        (0..self.links.len()).filter(|&l| !self.links[l].dead).collect()
    }

    fn detach(&mut self, ep: usize) {
        // The endpoint dropped its socket: what it already wrote still arrives, then EOF.
        if let Some(link) = self.eps[ep].link.take() {
            let side = if self.links[link].ends[0] == ep { 0 } else { 1 };
            self.links[link].closing[side] = true;
            self.links[link].toward[side].clear();
        }
    }

    /// The messenger's accept decision: one check-and-set of the session table.
    fn decide(&mut self, ep: usize, req: crate::AcceptRequest) {
        let node = self.eps[ep].node;
        let now = self.now;
        let policy = self.nodes[node].policy;
        let key = req.peer_addr;
        let existing_ep =
            self.nodes[node].sessions.get(&key).copied().filter(|&e| e != ep && self.eps[e].alive);
        let existing: Option<ExistingSession> =
            existing_ep.map(|e| self.eps[e].conn.existing_session());
        let my_addrs = self.nodes[node].config.my_addrs.clone();
        let decision = decide(&req, existing.as_ref(), &policy, &my_addrs);
        if self.verbose {
            self.nodes[node].log.push(format!(
                "decide#{ep}({:?} vs {existing_ep:?} {existing:?}) = {decision:?}",
                req.kind
            ));
        }
        let register = !(policy.lossy && policy.server);
        let mut transferred = None;
        let mut replaced = None;
        match (decision.table_effect(&req.kind, existing.as_ref()), existing_ep) {
            (TableEffect::Replace, Some(old)) => {
                transferred = self.eps[old].conn.take_session();
                replaced = Some(old);
                self.eps[old].alive = false;
                self.detach(old);
                self.nodes[node].sessions.insert(key, ep);
            }
            (TableEffect::ResetExisting, Some(old)) => {
                self.eps[old].conn.close(now);
                self.nodes[node].resets += 1;
                self.nodes[node].sessions.insert(key, ep);
            }
            (TableEffect::Register, _) if register => {
                self.nodes[node].sessions.insert(key, ep);
            }
            (TableEffect::NudgeExisting, Some(old)) => {
                self.eps[old].conn.send_keepalive(KeepaliveStamp::default());
            }
            _ => {}
        }
        self.eps[ep].conn.handle_accept_decision(now, policy, decision, transferred);
        // As the messenger's replace (`Replacement::adopt`): a keepalive the replaced
        // machine was asked for and did not send goes out on the new one.
        if let Some(old) = replaced.filter(|&old| old != ep) {
            let (new, old) = if ep < old {
                let (l, r) = self.eps.split_at_mut(old);
                (&mut l[ep], &mut r[0])
            } else {
                let (l, r) = self.eps.split_at_mut(ep);
                (&mut r[0], &mut l[old])
            };
            new.conn.adopt_keepalive(&mut old.conn);
        }
    }

    fn handle_event(&mut self, ep: usize, ev: Event) {
        let node = self.eps[ep].node;
        let name = ev.name();
        match &ev {
            Event::Message(_) | Event::NeedBudget { .. } | Event::Acked { .. } => {}
            Event::Closed { reason, .. } if self.verbose => {
                self.nodes[node].log.push(format!("Closed#{ep}({reason})"))
            }
            _ if self.verbose => self.nodes[node].log.push(format!("{name}#{ep}")),
            _ => self.nodes[node].log.push(name.to_string()),
        }
        let now = self.now;
        match ev {
            Event::AcceptRequest(req) => self.decide(ep, *req),
            Event::VerifyAuthorizer { .. } => {
                let verdict = if self.nodes[node].reject_authorizers {
                    AuthVerdict::Reject
                } else {
                    AuthVerdict::Accept { reply: Bytes::new() }
                };
                self.eps[ep].conn.handle_authorizer_verdict(now, verdict);
            }
            Event::Opened(_) => self.nodes[node].opened += 1,
            Event::NeedBudget { bytes, .. } => {
                if self.nodes[node].hold_budget {
                    self.nodes[node].budget_waiting.push(ep);
                } else {
                    if self.nodes[node].credit_ahead {
                        add_bench_credit(&mut self.eps[ep].conn, bytes);
                    }
                    self.eps[ep].conn.grant_budget(now);
                }
            }
            Event::Message(m) => {
                if self.verbose {
                    let id = numbers(std::slice::from_ref(&m))[0];
                    self.nodes[node].log.push(format!("Message#{ep}({id} seq {})", m.seq()));
                }
                self.nodes[node].received.push(m)
            }
            Event::Reconnect { .. } => {
                self.detach(ep);
                self.dial(ep);
            }
            Event::Standby => self.detach(ep),
            Event::Reset => self.nodes[node].resets += 1,
            Event::RemoteReset => self.nodes[node].remote_resets += 1,
            Event::Refused => self.nodes[node].refused += 1,
            Event::Closed { .. } => {
                self.eps[ep].alive = false;
                // Flush a final CLOSE (v1) before the socket goes.
                self.transmit(ep);
                self.detach(ep);
            }
            Event::Acked { .. } => self.nodes[node].acked += 1,
            Event::KeepaliveReceived | Event::KeepaliveAck(_) | Event::LearnedAddr => {}
        }
    }

    /// Grants every held budget request.
    pub fn release_budget(&mut self) {
        for node in 0..2 {
            for ep in std::mem::take(&mut self.nodes[node].budget_waiting) {
                self.eps[ep].conn.grant_budget(self.now);
            }
        }
    }

    fn transmit(&mut self, ep: usize) -> bool {
        let Some(link) = self.eps[ep].link else { return false };
        let mut segs = Vec::new();
        let mut any = false;
        // Bounded: each call frames at most the machine's transmit batch.
        for _ in 0..64 {
            segs.clear();
            if self.eps[ep].conn.poll_transmit(&mut segs) == 0 {
                break;
            }
            any = true;
            let side = if self.links[link].ends[0] == ep { 1 } else { 0 };
            let to_node = self.eps[self.links[link].ends[side]].node;
            let open = self.links[link]
                .ends
                .iter()
                .all(|&e| self.eps[e].alive && self.eps[e].conn.is_open());
            let mutate = !(self.mutate_handshakes_only && open);
            for seg in segs.drain(..) {
                let start = self.links[link].sent[side];
                self.links[link].sent[side] += seg.len() as u64;
                let seg = match self.tamper {
                    Some((n, off, xor))
                        if n == to_node && off >= start && off < start + seg.len() as u64 =>
                    {
                        // Once: the resend on the next connection must get through.
                        self.tamper = None;
                        let mut b = BytesMut::from(&seg[..]);
                        b[(off - start) as usize] ^= xor;
                        b.freeze()
                    }
                    _ => seg,
                };
                let seg = match self.mutate.as_mut().filter(|_| mutate) {
                    Some(f) => f(link, to_node, start, seg),
                    None => seg,
                };
                if !seg.is_empty() {
                    self.links[link].toward[side].push_back(seg);
                }
            }
        }
        if any {
            // The link takes everything at once: report it as a driver whose writes
            // completed does (a v1 connector learns its banner left from this).
            let now = self.now;
            self.eps[ep].conn.handle_write_progress(now);
        }
        any
    }

    /// One round: events, transmits, deliveries, EOFs. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        let mut progress = false;
        for ep in 0..self.eps.len() {
            while self.eps[ep].alive {
                let Some(ev) = self.eps[ep].conn.poll_event() else { break };
                progress = true;
                self.handle_event(ep, ev);
            }
            if self.eps[ep].alive {
                progress |= self.transmit(ep);
            }
        }
        for l in 0..self.links.len() {
            if self.links[l].dead {
                continue;
            }
            for side in 0..2 {
                progress |= self.deliver(l, side);
            }
        }
        if self.cut_after.is_some_and(|limit| self.delivered >= limit) {
            if !self.live_links().is_empty() {
                self.cut_all();
                progress = true;
            }
            self.cut_after = None;
        }
        progress
    }

    /// Delivers the bytes in flight toward `ends[side]` of link `l` (then its EOF).
    fn deliver(&mut self, l: usize, side: usize) -> bool {
        let mut progress = false;
        let ep = self.links[l].ends[side];
        if !self.eps[ep].alive || self.eps[ep].link != Some(l) {
            self.links[l].toward[side].clear();
            return false;
        }
        while self.eps[ep].conn.wants_read() {
            let Some(mut seg) = self.links[l].toward[side].pop_front() else { break };
            let n = match self.splitter.as_mut() {
                Some(f) => f(seg.len()).clamp(1, seg.len()),
                None => seg.len(),
            };
            let n = match self.cut_after {
                Some(limit) => n.min(limit.saturating_sub(self.delivered) as usize),
                None => n,
            };
            if n == 0 {
                self.links[l].toward[side].push_front(seg);
                break;
            }
            let chunk = seg.split_to(n);
            if !seg.is_empty() {
                self.links[l].toward[side].push_front(seg);
            }
            self.delivered += n as u64;
            progress = true;
            self.eps[ep].conn.handle_bytes(self.now, chunk);
            if self.splitter.is_some() {
                break;
            }
        }
        if self.links[l].toward[side].is_empty() && self.links[l].closing[1 - side] {
            self.links[l].dead = true;
            if self.eps[ep].link == Some(l) {
                self.eps[ep].link = None;
                self.eps[ep].conn.handle_transport_closed(self.now);
            }
            progress = true;
        }
        progress
    }

    /// Steps until nothing moves. Panics on livelock (more than `max_steps` rounds).
    pub fn drive(&mut self) {
        for _ in 0..self.max_steps {
            if !self.step() {
                return;
            }
        }
        panic!("livelock: still busy after {} steps", self.max_steps);
    }

    /// Drives, then advances the clock from timer to timer for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.drive();
        for _ in 0..self.max_steps {
            let next =
                self.eps.iter().filter(|e| e.alive).filter_map(|e| e.conn.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for ep in 0..self.eps.len() {
                        if self.eps[ep].alive
                            && self.eps[ep].conn.poll_timeout().is_some_and(|t| t <= self.now)
                        {
                            self.eps[ep].conn.handle_timeout(self.now);
                        }
                    }
                    self.drive();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("livelock: timers keep firing at {:?}", self.now);
    }
}
