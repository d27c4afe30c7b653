//! Test support: two messengers' worth of msgr2 [`Connection`]s on an in-memory network
//! with a virtual clock (quinn's `Pair`), and a toy auth method that exercises the
//! multi-round auth framework, the transcript signatures and secure mode.
//!
//! Each [`Node`] plays the messenger: it owns a session table keyed by the peer's v2
//! address, answers accept requests with [`decide`], moves sessions on a replace, dials
//! on [`Event::Reconnect`] and grants receive budget. [`Pair::step`] moves bytes one
//! round; [`Pair::drive`] runs to quiescence and fails on livelock; [`Pair::run_for`]
//! also advances the clock through the machines' timers. Links can be cut, delivery
//! split into arbitrary chunks, and bytes tampered with.
//!
//! Not for production use: it exists for this crate's tests, benchmarks and fuzzing.
//! (The driving loop mirrors `v1::testing`; the two collapse into one harness once both
//! machines sit behind the protocol seam.)

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::types::{
    AddrType, AuthEntityName, EntityAddr, EntityAddrVec, EntityName, EntityType, AUTH_NONE,
};
use crate::v1::{ExistingState, Policy, SessionState};
use crate::wire::KeepaliveStamp;

use super::auth::{
    AuthClient, AuthNoneProvider, AuthOutcome, AuthProvider, AuthRole, AuthServer, AuthStep, EACCES,
};
use super::{decide, ConMode, Config, Connection, CookieSource, Decision, Event, ExistingSession};

/// One messenger of the pair.
pub struct Node {
    /// Its configuration (shared by its connections).
    pub config: Arc<Config>,
    /// Its policy for the peer.
    pub policy: Policy,
    /// Session table: the peer's v2 address → endpoint index.
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
    /// Dials to this node fail (it is down).
    pub unreachable: bool,
    /// Keep `NeedBudget` requests pending instead of granting them.
    pub hold_budget: bool,
    /// Endpoints with a budget request outstanding.
    pub budget_waiting: Vec<usize>,
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
            unreachable: false,
            hold_budget: false,
            budget_waiting: Vec::new(),
        }
    }

    /// This node's v2 address (what the peer dials and keys its table with).
    pub fn addr(&self) -> EntityAddr {
        super::msgr2_addr(&self.config.my_addrs)
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

/// The two-node network.
pub struct Pair {
    /// The virtual clock.
    pub now: Instant,
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

/// A v2 address on loopback.
pub fn v2_addr(port: u16, nonce: u32) -> EntityAddr {
    EntityAddr {
        ty: AddrType::MSGR2,
        nonce,
        addr: Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))),
    }
}

/// A node configuration: `mon.<num>` at v2 127.0.0.1:`port`/`nonce`, auth none,
/// deterministic cookies.
pub fn node_config(num: i64, port: u16, nonce: u32) -> Config {
    let mut c = Config::new(
        EntityName::new(EntityType::MON, num),
        EntityAddrVec::single(v2_addr(port, nonce)),
        AuthEntityName::new(EntityType::MON, num.to_string()),
    );
    c.cookies = Arc::new(CookieSource::with_seed(u64::from(port) << 32 | u64::from(nonce)));
    c
}

impl Pair {
    /// Node 0 is `mon.0` at v2 127.0.0.1:6789 nonce 1, node 1 `mon.1` at :6790 nonce 2
    /// (node 0's address sorts lower), auth none, crc mode.
    pub fn new(now: Instant, policy0: Policy, policy1: Policy) -> Self {
        Pair::with_configs(now, node_config(0, 6789, 1), policy0, node_config(1, 6790, 2), policy1)
    }

    /// As [`Pair::new`], both nodes authenticating with [`TestAuthProvider`] (two
    /// rounds, a session key, a connection secret) preferring `modes`.
    pub fn with_test_auth(
        now: Instant,
        policy0: Policy,
        policy1: Policy,
        modes: &[ConMode],
    ) -> Self {
        let mut c0 = node_config(0, 6789, 1);
        let mut c1 = node_config(1, 6790, 2);
        c0.auth = Arc::new(TestAuthProvider::new(modes));
        c1.auth = Arc::new(TestAuthProvider::new(modes));
        Pair::with_configs(now, c0, policy0, c1, policy1)
    }

    /// A pair from explicit configurations.
    pub fn with_configs(now: Instant, c0: Config, p0: Policy, c1: Config, p1: Policy) -> Self {
        Pair {
            now,
            nodes: [Node::new(Arc::new(c0), p0), Node::new(Arc::new(c1), p1)],
            eps: Vec::new(),
            links: Vec::new(),
            splitter: None,
            tamper: None,
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

    /// `node` opens a connection to the other node: registered in the session table at
    /// once and dialled. Returns its endpoint.
    pub fn connect(&mut self, node: usize) -> usize {
        let peer = Pair::peer_of(node);
        let peer_addr = self.nodes[peer].addr();
        let peer_type = self.nodes[peer].config.my_name.ty;
        let conn = Connection::connect(
            self.nodes[node].config.clone(),
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
        let peer_addr = self.nodes[Pair::peer_of(node)].addr();
        self.nodes[node].sessions.get(&peer_addr).copied().filter(|&e| self.eps[e].alive)
    }

    /// Sends `msg` from `node` through its session (connecting first if none).
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
        let listen = self.nodes[peer].addr().addr.unwrap_or(local);
        let acc = Connection::accept(self.nodes[peer].config.clone(), local, listen, self.now);
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

    fn existing_of(&self, ep: usize) -> ExistingSession {
        let c = &self.eps[ep].conn;
        let (client_cookie, server_cookie) = c.cookies();
        let (_, _, connect_seq, peer_global_seq) = c.seqs();
        ExistingSession {
            state: match c.state() {
                SessionState::Open => ExistingState::Open,
                SessionState::Standby => ExistingState::Standby,
                SessionState::Closed => ExistingState::Closed,
                SessionState::Connecting | SessionState::Accepting => ExistingState::Connecting,
            },
            client_cookie,
            server_cookie,
            connect_seq,
            peer_global_seq,
            lossy: c.is_lossy(),
            server_side: c.policy().server,
            replacing: false,
        }
    }

    fn handle_event(&mut self, ep: usize, ev: Event) {
        let node = self.eps[ep].node;
        let name = match &ev {
            Event::AcceptRequest(_) => "AcceptRequest",
            Event::Opened(_) => "Opened",
            Event::NeedBudget { .. } => "NeedBudget",
            Event::Message(_) => "Message",
            Event::Acked { .. } => "Acked",
            Event::KeepaliveReceived => "KeepaliveReceived",
            Event::KeepaliveAck(_) => "KeepaliveAck",
            Event::Reconnect { .. } => "Reconnect",
            Event::Standby => "Standby",
            Event::Reset => "Reset",
            Event::RemoteReset => "RemoteReset",
            Event::Refused => "Refused",
            Event::Closed { .. } => "Closed",
        };
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
            Event::AcceptRequest(req) => {
                let policy = self.nodes[node].policy;
                let key = super::msgr2_addr(&req.peer_addrs);
                let existing_ep = self.nodes[node]
                    .sessions
                    .get(&key)
                    .copied()
                    .filter(|&e| e != ep && self.eps[e].alive);
                let existing = existing_ep.map(|e| self.existing_of(e));
                let my_addrs = self.nodes[node].config.my_addrs.clone();
                let decision = decide(&req, existing.as_ref(), &policy, &my_addrs);
                if self.verbose {
                    self.nodes[node].log.push(format!(
                        "decide#{ep}({:?} vs {existing_ep:?} {existing:?}) = {decision:?}",
                        req.kind
                    ));
                }
                let mut transferred = None;
                let register = !(policy.lossy && policy.server);
                match (decision, existing_ep) {
                    (Decision::Replace { reset_existing, remote_reset }, Some(old)) => {
                        if reset_existing && !remote_reset {
                            // A lossy existing connection: stopped, ms_handle_reset.
                            self.eps[old].conn.close(now);
                            self.nodes[node].resets += 1;
                        } else {
                            // Keep (or discard, on a peer restart) its session.
                            transferred = self.eps[old].conn.take_session();
                        }
                        self.eps[old].alive = false;
                        self.detach(old);
                        if register {
                            self.nodes[node].sessions.insert(key, ep);
                        }
                    }
                    (Decision::Open | Decision::Replace { .. }, None) if register => {
                        self.nodes[node].sessions.insert(key, ep);
                    }
                    (Decision::Wait, Some(old)) => {
                        self.eps[old].conn.send_keepalive(KeepaliveStamp::default());
                    }
                    _ => {}
                }
                self.eps[ep].conn.handle_accept_decision(now, policy, decision, transferred);
            }
            Event::Opened(_) => self.nodes[node].opened += 1,
            Event::NeedBudget { .. } => {
                if self.nodes[node].hold_budget {
                    self.nodes[node].budget_waiting.push(ep);
                } else {
                    self.eps[ep].conn.grant_budget(now);
                }
            }
            Event::Message(m) => self.nodes[node].received.push(m),
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
                self.transmit(ep);
                self.detach(ep);
            }
            Event::Acked { .. } | Event::KeepaliveReceived | Event::KeepaliveAck(_) => {}
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
                self.links[link].toward[side].push_back(seg);
            }
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
                let ep = self.links[l].ends[side];
                if !self.eps[ep].alive || self.eps[ep].link != Some(l) {
                    self.links[l].toward[side].clear();
                    continue;
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

/// The toy method's number: outside Ceph's `CEPH_AUTH_*` values.
pub const TEST_AUTH: u32 = 0xfe;

/// A toy two-round auth method for tests (NOT secure: it only has the shape of cephx).
///
/// AUTH_REQUEST carries a name; the acceptor answers AUTH_REPLY_MORE with an 8-byte
/// challenge; AUTH_REQUEST_MORE proves the shared key by xoring it in; AUTH_DONE
/// carries a 64-byte connection secret masked with the key (secure mode only). Both
/// sides then hold the key as session key (so the AUTH_SIGNATUREs are real HMACs).
pub struct TestAuthProvider {
    key: [u8; 16],
    modes: Vec<ConMode>,
    counter: Arc<AtomicU64>,
    /// Methods a connector offers (default: TEST_AUTH then AUTH_NONE).
    pub client_methods: Vec<u32>,
    /// Methods an acceptor allows (default: TEST_AUTH then AUTH_NONE).
    pub server_methods: Vec<u32>,
    none: AuthNoneProvider,
}

impl TestAuthProvider {
    /// Both roles, preferring `modes`.
    pub fn new(modes: &[ConMode]) -> Self {
        TestAuthProvider {
            key: *b"asyncmsgr-test!!",
            modes: modes.to_vec(),
            counter: Arc::new(AtomicU64::new(1)),
            client_methods: vec![TEST_AUTH, AUTH_NONE],
            server_methods: vec![TEST_AUTH, AUTH_NONE],
            none: AuthNoneProvider::new(AuthEntityName::new(EntityType::CLIENT, "test")),
        }
    }

    /// The same key with a different value: proofs fail (EACCES).
    pub fn with_wrong_key(mut self) -> Self {
        self.key[0] ^= 1;
        self
    }
}

fn mask(key: &[u8; 16], data: &[u8]) -> Vec<u8> {
    data.iter().zip(key.iter().cycle()).map(|(d, k)| d ^ k).collect()
}

struct TestClient {
    key: [u8; 16],
}

impl AuthClient for TestClient {
    fn build_request(&mut self) -> Result<Bytes> {
        Ok(Bytes::from_static(b"test-auth"))
    }

    fn handle_reply_more(&mut self, payload: &[u8]) -> Result<Bytes> {
        if payload.len() != 8 {
            return Err(Error::Malformed("test auth challenge is not 8 bytes"));
        }
        Ok(Bytes::from(mask(&self.key, payload)))
    }

    fn handle_done(
        &mut self,
        _global_id: u64,
        mode: ConMode,
        payload: &[u8],
    ) -> Result<AuthOutcome> {
        let secret = mask(&self.key, payload);
        if mode == ConMode::SECURE && secret.len() < 40 {
            return Err(Error::Malformed("test auth secret too short"));
        }
        Ok(AuthOutcome { session_key: Some(self.key.to_vec()), connection_secret: secret })
    }
}

struct TestServer {
    key: [u8; 16],
    challenge: [u8; 8],
    counter: Arc<AtomicU64>,
}

impl AuthServer for TestServer {
    fn handle_request(&mut self, mode: ConMode, more: bool, payload: &[u8]) -> AuthStep {
        if !more {
            return AuthStep::More(Bytes::copy_from_slice(&self.challenge));
        }
        if payload != mask(&self.key, &self.challenge).as_slice() {
            return AuthStep::Reject { result: EACCES };
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let secret: Vec<u8> = if mode == ConMode::SECURE {
            (0..64u64).map(|i| (n.wrapping_mul(31).wrapping_add(i * 7)) as u8).collect()
        } else {
            Vec::new()
        };
        AuthStep::Done {
            global_id: 1000 + n,
            payload: Bytes::from(mask(&self.key, &secret)),
            outcome: AuthOutcome {
                session_key: Some(self.key.to_vec()),
                connection_secret: secret,
            },
        }
    }
}

impl AuthProvider for TestAuthProvider {
    fn methods(&self, role: AuthRole, _peer_type: EntityType) -> Vec<u32> {
        match role {
            AuthRole::Connector => self.client_methods.clone(),
            AuthRole::Acceptor => self.server_methods.clone(),
        }
    }

    fn modes(&self, _role: AuthRole, _peer_type: EntityType) -> Vec<ConMode> {
        self.modes.clone()
    }

    fn client(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthClient>> {
        match method {
            TEST_AUTH => Some(Box::new(TestClient { key: self.key })),
            _ => self.none.client(peer_type, method),
        }
    }

    fn server(&self, peer_type: EntityType, method: u32) -> Option<Box<dyn AuthServer>> {
        match method {
            TEST_AUTH => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                Some(Box::new(TestServer {
                    key: self.key,
                    challenge: n.to_le_bytes(),
                    counter: self.counter.clone(),
                }))
            }
            _ => self.none.server(peer_type, method),
        }
    }
}
