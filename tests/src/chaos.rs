//! A chaos proxy: a userspace TCP proxy between two messengers that cuts every connection
//! through it — both sides at once, with an RST or a FIN — at random, seeded moments.
//!
//! The messengers run unmodified: the library does not know it is being tested, it only
//! sees its sockets die as they would on a flaky network. One thread runs a `mio` loop
//! that owns the listener and both sockets of every proxied connection, so a cut closes
//! both ends at the same instant, and an RST really is an abortive close (`SO_LINGER` 0
//! on the only descriptor of the socket).
//!
//! # The one thing the proxy rewrites
//! A msgr v1 connector checks that the acceptor announces the address it dialled
//! (msgr-v1.md 2.1). Dialling the proxy, it would meet the server's own address, so the
//! proxy replaces the acceptor's address in the first 281 bytes the server sends (the
//! banner block) with its own listening address — what a NAT gateway presenting the
//! server would have to do. Everything else passes untouched. Because of that rewrite a
//! session must only ever be dialled through the proxy: use it in front of a server
//! policy (which never dials its clients), not between two peers that both reconnect.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use protocol::wire::{AcceptorBanner, ACCEPTOR_BLOCK_LEN};
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
}

impl ChaosConfig {
    /// Cuts every 20–150 ms, half RSTs, half FINs.
    pub fn new(seed: u64) -> ChaosConfig {
        ChaosConfig {
            seed,
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_millis(150),
            reset_ratio: 0.5,
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
}

#[derive(Default)]
struct Control {
    armed: bool,
    /// Cuts asked for by [`ChaosProxy::cut_now`], not yet made.
    cut_requests: Vec<CutKind>,
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
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
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
    /// The acceptor's banner block has not been rewritten yet.
    rewrite_pending: bool,
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
            let (armed, requests, stop) = {
                let mut c = lock(&self.control);
                (c.armed, std::mem::take(&mut c.cut_requests), c.stop)
            };
            if stop {
                return;
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
                rewrite_pending: true,
            },
        );
        lock(&self.control).stats.links += 1;
        Ok(())
    }

    fn pump(&mut self, id: usize) {
        let announce = self.announce;
        let Some(link) = self.links.get_mut(&id) else { return };
        let fate = pump_link(link, &mut self.buf, announce, &self.control);
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
fn pump_link(
    link: &mut Link,
    buf: &mut [u8],
    announce: SocketAddr,
    control: &Mutex<Control>,
) -> LinkFate {
    let mut moved = 0u64;
    loop {
        let mut progress = false;
        // Downstream (the connector) → upstream (the server).
        match read_some(&mut link.down, &mut link.to_up, buf) {
            Ok(n) => progress |= n > 0,
            Err(_) => return LinkFate::Done,
        }
        if link.up_connected {
            match write_some(&mut link.up, &mut link.to_up) {
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
        if link.rewrite_pending && (link.to_down.len() >= ACCEPTOR_BLOCK_LEN || link.up.eof) {
            link.rewrite_pending = false;
            rewrite_acceptor_block(&mut link.to_down, announce);
        }
        if !link.rewrite_pending {
            match write_some(&mut link.down, &mut link.to_down) {
                Ok(n) => {
                    moved += n as u64;
                    progress |= n > 0;
                }
                Err(_) => return LinkFate::Done,
            }
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
    lock(control).stats.bytes += moved;
    if link.down.shut && link.up.shut {
        LinkFate::Done
    } else {
        LinkFate::Alive
    }
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

/// Writes `from` to `half` while it is writable. Returns the bytes written.
fn write_some(half: &mut Half, from: &mut Vec<u8>) -> io::Result<usize> {
    let mut total = 0;
    while half.writable && total < from.len() {
        match half.sock.write(from.get(total..).unwrap_or_default()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => half.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    from.drain(..total);
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
