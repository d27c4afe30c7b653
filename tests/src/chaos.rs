//! A chaos proxy: a userspace TCP proxy between two messengers that cuts every connection
//! through it — both sides at once, with an RST or a FIN — at random, seeded moments.
//!
//! The messengers run unmodified: the library does not know it is being tested, it only
//! sees its sockets die as they would on a flaky network. One thread runs a `mio` loop
//! that owns the listener and both sockets of every proxied connection, so a cut closes
//! both ends at the same instant, and an RST really is an abortive close (`SO_LINGER` 0
//! on the only descriptor of the socket).
//!
//! # What the proxy rewrites
//! Both protocols check that the peer at the other end is the one dialled, so a proxy
//! presenting the server at its own address must rewrite what names it — what a NAT
//! gateway presenting the server would have to do. It tells the protocols apart by the
//! first bytes each side sends (`ceph v027` or `ceph v2\n`, msgr-v2.md 2):
//! * msgr v1: a connector checks that the acceptor announces the address it dialled
//!   (msgr-v1.md 2.1), so the proxy replaces the acceptor's own address in the first 281
//!   bytes the server sends (the banner block) with its own listening address.
//! * msgr2 (crc mode): the connector faults unless SERVER_IDENT's `addrs` contain the
//!   address it dialled, and the acceptor faults unless CLIENT_IDENT's `target_addr` is
//!   one of its own (Ceph's `handle_server_ident` / `handle_client_ident`; msgr-v2.md 5.6).
//!   The proxy follows the frames of both directions (preamble lengths only) and
//!   re-encodes those two frames with the addresses swapped: the server's addresses
//!   become the proxy's in SERVER_IDENT, the proxy's becomes the server's in
//!   CLIENT_IDENT. Both frames come after AUTH_SIGNATURE, so the pre-auth transcript
//!   stays intact. A secure-mode stream cannot be rewritten (the first encrypted preamble
//!   fails its crc and the proxy stops following); its handshake then fails, as it would
//!   through a real NAT. For secure mode the server announces the proxy's address as its
//!   own instead (`Messenger::bind_public`) and [`ChaosConfig::rewrite`] is off.
//!
//! Everything else passes untouched. Because of the rewrite a session must only ever be
//! dialled through the proxy: use it in front of a server policy (which never dials its
//! clients), not between two peers that both reconnect.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use protocol::types::EntityAddr;
use protocol::v2::banner::{BANNER_HEAD_LEN, BANNER_PREFIX};
use protocol::v2::frames::{ClientIdent, ControlFrame, ServerIdent};
use protocol::v2::framing::{FrameEncoder, Preamble, MAX_SEGMENTS, PREAMBLE_LEN};
use protocol::v2::Tag;
use protocol::wire::{AcceptorBanner, ACCEPTOR_BLOCK_LEN, BANNER};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Link `i` uses tokens `FIRST_LINK + 2i` (downstream) and `FIRST_LINK + 2i + 1` (upstream).
const FIRST_LINK: usize = 2;
/// Bytes buffered per direction of a link before the proxy stops reading that side
/// (backpressure, so a fast sender cannot make the proxy grow without bound).
const DIRECTION_CAP: usize = 1 << 20;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 << 10;

/// How a cut ends the two sockets of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutKind {
    /// Abortive close (`SO_LINGER` 0): both messengers see `ECONNRESET`.
    Reset,
    /// Orderly shutdown of both directions, then close: both messengers see EOF.
    Fin,
}

/// When and how the proxy cuts, once armed.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Seeds the schedule (intervals and cut kinds).
    pub seed: u64,
    /// Shortest time between two cuts.
    pub min_interval: Duration,
    /// Longest time between two cuts.
    pub max_interval: Duration,
    /// Probability that a cut is an RST rather than a FIN.
    pub reset_ratio: f64,
    /// Rewrite what names the server (see the module's notes). Off when the server
    /// announces the proxy's address as its own (`Messenger::bind_public`), as a daemon
    /// behind a NAT does: then every byte passes untouched, which a secure-mode stream
    /// needs.
    pub rewrite: bool,
}

impl ChaosConfig {
    /// Cuts every 20–150 ms, half RSTs, half FINs.
    pub fn new(seed: u64) -> ChaosConfig {
        ChaosConfig {
            seed,
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(150),
            reset_ratio: 0.5,
            rewrite: true,
        }
    }
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChaosStats {
    /// Connections accepted (each dialled upstream).
    pub links: u64,
    /// Cuts that ended at least one live connection.
    pub cuts: u64,
    /// Of those, RSTs.
    pub resets: u64,
    /// Of those, FINs.
    pub fins: u64,
    /// Connections ended by cuts (a cut ends every live one).
    pub links_cut: u64,
    /// Bytes forwarded, both directions.
    pub bytes: u64,
    /// msgr2 SERVER_IDENT and CLIENT_IDENT frames rewritten.
    pub v2_idents_rewritten: u64,
}

#[derive(Default)]
struct Control {
    armed: bool,
    /// Cuts asked for by [`ChaosProxy::cut_now`], not yet made.
    cut_requests: Vec<CutKind>,
    /// A new upstream asked for by [`ChaosProxy::redirect`], not yet taken.
    redirect: Option<SocketAddr>,
    stop: bool,
    stats: ChaosStats,
}

/// A running chaos proxy in front of one upstream address. Dropping it stops it and
/// closes every connection through it.
pub struct ChaosProxy {
    addr: SocketAddr,
    control: Arc<Mutex<Control>>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

fn lock(c: &Mutex<Control>) -> MutexGuard<'_, Control> {
    c.lock()
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1 (port 0) forwarding to `upstream`. It does not cut
    /// until [`ChaosProxy::arm`].
    pub fn start(upstream: SocketAddr, config: ChaosConfig) -> io::Result<ChaosProxy> {
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        ChaosProxy::start_on(listener, upstream, config)
    }

    /// Like [`ChaosProxy::start`], on `listener`: bound first, so that the upstream can
    /// be told the proxy's address (its public one) before the proxy knows the upstream's.
    pub fn start_on(
        listener: std::net::TcpListener,
        upstream: SocketAddr,
        config: ChaosConfig,
    ) -> io::Result<ChaosProxy> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let control = Arc::new(Mutex::new(Control::default()));
        let mut event_loop = Loop {
            poll,
            listener,
            upstream,
            announce: addr,
            links: HashMap::new(),
            next_link: 0,
            control: control.clone(),
            rng: SmallRng::seed_from_u64(config.seed),
            config,
            next_cut: None,
            buf: vec![0; READ_CHUNK],
        };
        let thread = std::thread::Builder::new()
            .name("chaos-proxy".into())
            .spawn(move || event_loop.run())?;
        Ok(ChaosProxy { addr, control, waker, thread: Some(thread) })
    }

    /// The address to dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts cutting on the seeded schedule.
    pub fn arm(&self) {
        lock(&self.control).armed = true;
        let _ = self.waker.wake();
    }

    /// Stops cutting (connections stay up).
    pub fn disarm(&self) {
        lock(&self.control).armed = false;
        let _ = self.waker.wake();
    }

    /// Cuts every live connection once, now (armed or not).
    pub fn cut_now(&self, kind: CutKind) {
        lock(&self.control).cut_requests.push(kind);
        let _ = self.waker.wake();
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> ChaosStats {
        lock(&self.control).stats
    }

    /// Forwards the connections the proxy accepts once its loop took this (it wakes for
    /// it) to `upstream`, a server that moved (a rebound messenger), whose address it
    /// rewrites from then on; the live ones stay where they are. A connection accepted
    /// in the same wake-up may still go to the old upstream.
    pub fn redirect(&self, upstream: SocketAddr) {
        lock(&self.control).redirect = Some(upstream);
        let _ = self.waker.wake();
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        lock(&self.control).stop = true;
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One side of a proxied connection.
struct Half {
    sock: TcpStream,
    readable: bool,
    writable: bool,
    /// The peer closed its sending side (read returned 0).
    eof: bool,
    /// We shut down our sending side after forwarding the other side's EOF.
    shut: bool,
}

impl Half {
    fn new(sock: TcpStream) -> Half {
        Half { sock, readable: true, writable: true, eof: false, shut: false }
    }
}

/// A proxied connection: the connector's socket and ours to the upstream.
struct Link {
    down: Half,
    up: Half,
    up_connected: bool,
    /// Read from `down`, not yet written to `up`.
    to_up: Vec<u8>,
    /// Read from `up`, not yet written to `down`.
    to_down: Vec<u8>,
    /// What the proxy follows of `to_up`.
    scan_up: Scan,
    /// What the proxy follows of `to_down`.
    scan_down: Scan,
}

/// Whether a link is still needed after pumping.
#[derive(PartialEq, Eq)]
enum LinkFate {
    Alive,
    Done,
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    upstream: SocketAddr,
    announce: SocketAddr,
    links: HashMap<usize, Link>,
    next_link: usize,
    control: Arc<Mutex<Control>>,
    rng: SmallRng,
    config: ChaosConfig,
    next_cut: Option<Instant>,
    buf: Vec<u8>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let (armed, requests, stop, redirect) = {
                let mut c = lock(&self.control);
                (c.armed, std::mem::take(&mut c.cut_requests), c.stop, c.redirect.take())
            };
            if stop {
                return;
            }
            if let Some(upstream) = redirect {
                self.upstream = upstream;
            }
            for kind in requests {
                self.cut(kind);
            }
            let now = Instant::now();
            match (armed, self.next_cut) {
                (false, _) => self.next_cut = None,
                (true, None) => self.next_cut = Some(now + self.interval()),
                (true, Some(at)) if at <= now => {
                    let kind = if self.rng.gen_bool(self.config.reset_ratio.clamp(0.0, 1.0)) {
                        CutKind::Reset
                    } else {
                        CutKind::Fin
                    };
                    self.cut(kind);
                    self.next_cut = Some(now + self.interval());
                }
                (true, Some(_)) => {}
            }
            let timeout = self.next_cut.map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!(target: "chaos", "poll: {e}");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(t) => {
                        let id = (t - FIRST_LINK) / 2;
                        let upstream = (t - FIRST_LINK) % 2 == 1;
                        let Some(link) = self.links.get_mut(&id) else { continue };
                        let half = if upstream { &mut link.up } else { &mut link.down };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            half.readable = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            half.writable = true;
                        }
                        if upstream && !link.up_connected && (ev.is_writable() || ev.is_error()) {
                            let ok = matches!(link.up.sock.take_error(), Ok(None))
                                && link.up.sock.peer_addr().is_ok();
                            if !ok {
                                self.drop_link(id);
                                continue;
                            }
                            link.up_connected = true;
                        }
                        self.pump(id);
                    }
                }
            }
        }
    }

    fn interval(&mut self) -> Duration {
        let (lo, hi) = (self.config.min_interval, self.config.max_interval);
        if hi <= lo {
            return lo;
        }
        self.rng.gen_range(lo..=hi)
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((down, _)) => {
                    if let Err(e) = self.add_link(down) {
                        log::info!(target: "chaos", "link not started: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!(target: "chaos", "accept: {e}");
                    return;
                }
            }
        }
    }

    fn add_link(&mut self, mut down: TcpStream) -> io::Result<()> {
        let mut up = TcpStream::connect(self.upstream)?;
        down.set_nodelay(true)?;
        up.set_nodelay(true)?;
        let id = self.next_link;
        self.next_link += 1;
        let both = Interest::READABLE | Interest::WRITABLE;
        self.poll.registry().register(&mut down, Token(FIRST_LINK + 2 * id), both)?;
        self.poll.registry().register(&mut up, Token(FIRST_LINK + 2 * id + 1), both)?;
        let mut up = Half::new(up);
        up.writable = false;
        up.readable = false;
        self.links.insert(
            id,
            Link {
                down: Half::new(down),
                up,
                up_connected: false,
                to_up: Vec::new(),
                to_down: Vec::new(),
                scan_up: Scan::new(Direction::ToServer, self.config.rewrite),
                scan_down: Scan::new(Direction::ToClient, self.config.rewrite),
            },
        );
        lock(&self.control).stats.links += 1;
        Ok(())
    }

    fn pump(&mut self, id: usize) {
        let names = Names { server: self.upstream, proxy: self.announce };
        let Some(link) = self.links.get_mut(&id) else { return };
        let fate = pump_link(link, &mut self.buf, names, &self.control);
        if fate == LinkFate::Done {
            self.drop_link(id);
        }
    }

    fn drop_link(&mut self, id: usize) {
        if let Some(mut link) = self.links.remove(&id) {
            let _ = self.poll.registry().deregister(&mut link.down.sock);
            let _ = self.poll.registry().deregister(&mut link.up.sock);
        }
    }

    /// Ends every live link, both sockets at once.
    fn cut(&mut self, kind: CutKind) {
        let ids: Vec<usize> = self.links.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        for &id in &ids {
            if let Some(link) = self.links.get(&id) {
                for sock in [&link.down.sock, &link.up.sock] {
                    match kind {
                        // The proxy holds the only descriptor: closing it with a zero
                        // linger time sends an RST.
                        CutKind::Reset => {
                            let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
                        }
                        CutKind::Fin => {
                            let _ = sock.shutdown(Shutdown::Both);
                        }
                    }
                }
            }
            self.drop_link(id);
        }
        log::info!(target: "chaos", "cut {} connection(s) with {kind:?}", ids.len());
        let mut c = lock(&self.control);
        c.stats.cuts += 1;
        c.stats.links_cut += ids.len() as u64;
        match kind {
            CutKind::Reset => c.stats.resets += 1,
            CutKind::Fin => c.stats.fins += 1,
        }
    }
}

/// Moves bytes both ways until nothing moves. Returns whether the link is finished.
fn pump_link(link: &mut Link, buf: &mut [u8], names: Names, control: &Mutex<Control>) -> LinkFate {
    let mut moved = 0u64;
    let mut rewritten = 0u64;
    loop {
        let mut progress = false;
        // Downstream (the connector) → upstream (the server).
        match read_some(&mut link.down, &mut link.to_up, buf) {
            Ok(n) => progress |= n > 0,
            Err(_) => return LinkFate::Done,
        }
        rewritten += link.scan_up.advance(&mut link.to_up, link.down.eof, names);
        if link.up_connected {
            match write_some(&mut link.up, &mut link.to_up, &mut link.scan_up.ready) {
                Ok(n) => {
                    moved += n as u64;
                    progress |= n > 0;
                }
                Err(_) => return LinkFate::Done,
            }
            match read_some(&mut link.up, &mut link.to_down, buf) {
                Ok(n) => progress |= n > 0,
                Err(_) => return LinkFate::Done,
            }
        }
        rewritten += link.scan_down.advance(&mut link.to_down, link.up.eof, names);
        match write_some(&mut link.down, &mut link.to_down, &mut link.scan_down.ready) {
            Ok(n) => {
                moved += n as u64;
                progress |= n > 0;
            }
            Err(_) => return LinkFate::Done,
        }
        // Forward an orderly close once everything before it went through.
        if link.down.eof && link.to_up.is_empty() && link.up_connected && !link.up.shut {
            let _ = link.up.sock.shutdown(Shutdown::Write);
            link.up.shut = true;
        }
        if link.up.eof && link.to_down.is_empty() && !link.down.shut {
            let _ = link.down.sock.shutdown(Shutdown::Write);
            link.down.shut = true;
        }
        if !progress {
            break;
        }
    }
    let mut c = lock(control);
    c.stats.bytes += moved;
    c.stats.v2_idents_rewritten += rewritten;
    drop(c);
    if link.down.shut && link.up.shut {
        LinkFate::Done
    } else {
        LinkFate::Alive
    }
}

/// The two addresses the proxy swaps: the server's own and the one it presents it at.
#[derive(Clone, Copy)]
struct Names {
    server: SocketAddr,
    proxy: SocketAddr,
}

/// Which way a buffered stream flows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the connector to the server.
    ToServer,
    /// From the server to the connector.
    ToClient,
}

/// How far the proxy follows one direction of a link.
enum Stage {
    /// The protocol is not known yet: the banner's first 8 bytes are still to come (a
    /// v1 connector sends its 9-byte banner and waits).
    Banner,
    /// msgr2: the banner's length field is still to come.
    V2Banner,
    /// msgr v1, server → connector: the acceptor's banner block is still to come.
    V1Block,
    /// msgr2 frames (crc mode); `skip` more bytes of the current one pass untouched.
    Frames { skip: usize },
    /// Everything passes untouched.
    Pass,
}

/// What the proxy follows of one direction: the stage, and how many bytes at the front
/// of the direction's buffer it has cleared to forward (the rest may still be rewritten).
struct Scan {
    direction: Direction,
    stage: Stage,
    ready: usize,
}

impl Scan {
    /// `rewrite`: follow the stream to rewrite it; else let everything pass.
    fn new(direction: Direction, rewrite: bool) -> Scan {
        let stage = if rewrite { Stage::Banner } else { Stage::Pass };
        Scan { direction, stage, ready: 0 }
    }

    /// Follows `stream` (the direction's buffer, whose first `self.ready` bytes are
    /// already cleared) as far as it goes, rewriting what names the server. `eof`: the
    /// sender closed, nothing more will come, so whatever is held goes as it is.
    /// Returns the msgr2 ident frames rewritten.
    fn advance(&mut self, stream: &mut Vec<u8>, eof: bool, names: Names) -> u64 {
        let mut rewritten = 0;
        loop {
            let rest = stream.get(self.ready..).unwrap_or_default();
            match self.stage {
                Stage::Pass => {
                    self.ready = stream.len();
                    return rewritten;
                }
                Stage::Banner => {
                    let Some(prefix) = rest.get(..BANNER_PREFIX.len()) else { break };
                    self.stage = if prefix == BANNER_PREFIX {
                        Stage::V2Banner
                    } else if BANNER.starts_with(prefix) && self.direction == Direction::ToClient {
                        Stage::V1Block
                    } else {
                        Stage::Pass
                    };
                }
                Stage::V2Banner => {
                    let Some(&[lo, hi]) = rest.get(BANNER_PREFIX.len()..BANNER_HEAD_LEN) else {
                        break;
                    };
                    let payload = u16::from_le_bytes([lo, hi]);
                    self.stage = Stage::Frames { skip: BANNER_HEAD_LEN + usize::from(payload) };
                }
                Stage::V1Block => {
                    let Some(block) = stream.get_mut(self.ready..self.ready + ACCEPTOR_BLOCK_LEN)
                    else {
                        break;
                    };
                    rewrite_acceptor_block(block, names.proxy);
                    self.stage = Stage::Pass;
                }
                Stage::Frames { skip } if skip > 0 => {
                    let n = skip.min(rest.len());
                    self.ready += n;
                    self.stage = Stage::Frames { skip: skip - n };
                    if n < skip {
                        return rewritten;
                    }
                }
                Stage::Frames { .. } => {
                    let Some(Ok(pre)) =
                        rest.get(..PREAMBLE_LEN).map(<&[u8; PREAMBLE_LEN]>::try_from)
                    else {
                        break;
                    };
                    let Ok(pre) = Preamble::decode(pre) else {
                        // Encrypted (secure mode), or not msgr2 after all.
                        self.stage = Stage::Pass;
                        continue;
                    };
                    let lens = pre.lens().map(|l| l as usize);
                    let num = usize::from(pre.num_segments).min(MAX_SEGMENTS);
                    let wire = FrameEncoder::crc().wire_len(&lens[..num]);
                    let ident = match self.direction {
                        Direction::ToServer => Tag::CLIENT_IDENT,
                        Direction::ToClient => Tag::SERVER_IDENT,
                    };
                    if pre.tag != ident || num != 1 {
                        self.stage = Stage::Frames { skip: wire };
                        continue;
                    }
                    let Some(frame) = rest.get(..wire) else { break };
                    let Some(seg) = frame.get(PREAMBLE_LEN..PREAMBLE_LEN + lens[0]) else {
                        self.stage = Stage::Pass;
                        continue;
                    };
                    let Some(new) = rewrite_ident(pre.tag, seg, names) else {
                        self.stage = Stage::Frames { skip: wire };
                        continue;
                    };
                    stream.splice(self.ready..self.ready + wire, new.iter().copied());
                    self.ready += new.len();
                    rewritten += 1;
                }
            }
        }
        if eof {
            // Nothing more will come to complete what is held: let it go as it is.
            self.stage = Stage::Pass;
            self.ready = stream.len();
        }
        rewritten
    }
}

/// The msgr2 ident frame `tag` with segment `seg`, re-encoded (crc mode) with the
/// addresses swapped: the server's socket address becomes the proxy's in SERVER_IDENT,
/// the proxy's becomes the server's in CLIENT_IDENT (types and nonces kept). `None` if
/// the segment does not decode.
fn rewrite_ident(tag: Tag, seg: &[u8], names: Names) -> Option<Vec<u8>> {
    let swap = |a: &mut EntityAddr, from: SocketAddr, to: SocketAddr| {
        if a.addr == Some(from) {
            a.addr = Some(to);
        }
    };
    let segment = if tag == Tag::SERVER_IDENT {
        let mut si = ServerIdent::from_segment(seg).ok()?;
        for a in &mut si.addrs.addrs {
            swap(a, names.server, names.proxy);
        }
        si.to_segment()
    } else {
        let mut ci = ClientIdent::from_segment(seg).ok()?;
        swap(&mut ci.target_addr, names.proxy, names.server);
        ci.to_segment()
    };
    let mut small = BytesMut::new();
    let mut large: Vec<Bytes> = Vec::new();
    FrameEncoder::crc().encode(tag, &[&segment], &mut small, &mut large).ok()?;
    let mut out: Vec<u8> = large.iter().flat_map(|b| b.iter().copied()).collect();
    out.extend_from_slice(&small);
    Some(out)
}

/// Reads from `half` into `into` while it is readable and `into` has room. Returns the
/// bytes read; an error means the link is gone.
fn read_some(half: &mut Half, into: &mut Vec<u8>, buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while half.readable && !half.eof && into.len() < DIRECTION_CAP {
        match half.sock.read(buf) {
            Ok(0) => half.eof = true,
            Ok(n) => {
                into.extend_from_slice(buf.get(..n).unwrap_or_default());
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => half.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Writes the first `ready` bytes of `from` to `half` while it is writable, and takes
/// what went out off both. Returns the bytes written.
fn write_some(half: &mut Half, from: &mut Vec<u8>, ready: &mut usize) -> io::Result<usize> {
    let mut total = 0;
    let limit = (*ready).min(from.len());
    while half.writable && total < limit {
        match half.sock.write(from.get(total..limit).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => half.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    from.drain(..total);
    *ready -= total;
    Ok(total)
}

/// Replaces the acceptor's own address in the banner block at the start of `stream`
/// with `announce` (keeping its nonce). A stream that does not start with a valid block
/// is left alone.
pub(crate) fn rewrite_acceptor_block(stream: &mut [u8], announce: SocketAddr) {
    let Some(block) = stream.get_mut(..ACCEPTOR_BLOCK_LEN) else { return };
    let Ok((mut banner, _)) = AcceptorBanner::decode(block) else { return };
    banner.my_addr.addr = Some(announce);
    block.copy_from_slice(&banner.to_bytes());
}
