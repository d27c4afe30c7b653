//! A NAT in front of a messenger: a TCP proxy that presents the messenger at the proxy's
//! own address, and can black-hole every connection through it (bytes are swallowed in
//! both directions, nothing is closed), as a network partition does.
//!
//! Unlike the chaos proxy, it is meant for two peers that both dial (lossless peers
//! racing each other): each peer sits behind its own `NatProxy` and is known to the other
//! only by that proxy's address. A msgr v1 acceptor keys a session by the address the
//! connector announces, and a connector checks that the acceptor announces the address
//! it dialled (msgr-v1.md 2.1), so the proxy rewrites both: the acceptor's own address in
//! its banner block becomes the proxy's, and the connector's announced address becomes
//! its public one (the other peer's proxy, set with [`NatProxy::announce_connectors_as`]).
//! Nonces are kept, so a race is decided alike at both ends (the race key compares
//! nonces first).
//!
//! One blocking thread per direction of each connection: the proxy carries a handful of
//! connections in a test, never a load.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, MutexGuard};
use protocol::types::{EntityAddr, LEGACY_ADDR_LEN};
use protocol::wire::{ACCEPTOR_BLOCK_LEN, BANNER_LEN};

use crate::chaos::rewrite_acceptor_block;

/// Bytes read per `read` call.
const CHUNK: usize = 64 << 10;

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Connections accepted (each dialled upstream).
    pub links: u64,
    /// Connections black-holed.
    pub black_holed: u64,
    /// Bytes forwarded, both directions.
    pub forwarded: u64,
    /// Bytes swallowed by black holes, both directions.
    pub swallowed: u64,
}

/// One proxied connection: clones of both sockets (to shut them down), its black hole,
/// and whether it still carries anything.
struct Link {
    down: TcpStream,
    up: TcpStream,
    black_hole: Arc<AtomicBool>,
    live: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    links: Vec<Link>,
    threads: Vec<JoinHandle<()>>,
    /// What a connector through us is announced as (its nonce kept).
    connector_public: Option<SocketAddr>,
    stats: NatStats,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.state.lock()
}

/// A running NAT in front of one upstream messenger. Dropping it closes every
/// connection through it and joins its threads.
pub struct NatProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl NatProxy {
    /// Starts a proxy on 127.0.0.1 (port 0) in front of the messenger listening on
    /// `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<NatProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { state: Mutex::default(), stop: AtomicBool::new(false) });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nat-accept".into())
                .spawn(move || accept_loop(listener, upstream, addr, &shared))?
        };
        Ok(NatProxy { addr, shared, acceptor: Some(acceptor) })
    }

    /// The proxy's address: the upstream messenger's public address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connectors through this proxy are announced to the upstream at `public` (the
    /// address of the proxy in front of them), with their own nonce.
    pub fn announce_connectors_as(&self, public: SocketAddr) {
        lock(&self.shared).connector_public = Some(public);
    }

    /// Black-holes every live connection: from now on both directions swallow what they
    /// read, and nothing is closed. Connections made later pass normally. Returns how
    /// many were black-holed.
    pub fn black_hole_all(&self) -> usize {
        let mut st = lock(&self.shared);
        let mut n = 0;
        for link in st.links.iter().filter(|l| l.live.load(Ordering::SeqCst)) {
            if !link.black_hole.swap(true, Ordering::SeqCst) {
                n += 1;
            }
        }
        st.stats.black_holed += n as u64;
        n
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> NatStats {
        lock(&self.shared).stats
    }
}

impl Drop for NatProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let (links, threads) = {
            let mut st = lock(&self.shared);
            (std::mem::take(&mut st.links), std::mem::take(&mut st.threads))
        };
        for link in links {
            let _ = link.down.shutdown(Shutdown::Both);
            let _ = link.up.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, me: SocketAddr, shared: &Arc<Shared>) {
    for down in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = down else { continue };
        let Ok(up) = TcpStream::connect(upstream) else { continue };
        if let Err(e) = link(down, up, me, shared) {
            log::warn!(target: "tests::nat", "proxy {me}: link failed: {e}");
        }
    }
}

/// Starts forwarding between `down` (the connector) and `up` (the upstream acceptor).
fn link(down: TcpStream, up: TcpStream, me: SocketAddr, shared: &Arc<Shared>) -> io::Result<()> {
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let black_hole = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicBool::new(true));
    let mut st = lock(shared);
    let connector_public = st.connector_public;
    let to_up = Direction {
        from: down.try_clone()?,
        to: up.try_clone()?,
        rewrite: connector_public.map(Rewrite::Connector),
        black_hole: black_hole.clone(),
        live: live.clone(),
        shared: shared.clone(),
    };
    let to_down = Direction {
        from: up.try_clone()?,
        to: down.try_clone()?,
        rewrite: Some(Rewrite::Acceptor(me)),
        black_hole: black_hole.clone(),
        live: live.clone(),
        shared: shared.clone(),
    };
    for (name, dir) in [("nat-up", to_up), ("nat-down", to_down)] {
        let t = std::thread::Builder::new().name(name.into()).spawn(move || dir.run())?;
        st.threads.push(t);
    }
    st.links.push(Link { down, up, black_hole, live });
    st.stats.links += 1;
    Ok(())
}

/// What a direction rewrites at the start of its stream.
#[derive(Clone, Copy)]
enum Rewrite {
    /// The acceptor's banner block: its own address becomes the proxy's.
    Acceptor(SocketAddr),
    /// The connector's banner and address: the address becomes its public one.
    Connector(SocketAddr),
}

impl Rewrite {
    /// Bytes that must be in hand before the rewrite.
    fn len(self) -> usize {
        match self {
            Rewrite::Acceptor(_) => ACCEPTOR_BLOCK_LEN,
            Rewrite::Connector(_) => BANNER_LEN + LEGACY_ADDR_LEN,
        }
    }

    /// Bytes before the rewritten region, forwarded as soon as they arrive (a connector
    /// sends its banner and waits for the acceptor's before it sends its address).
    fn untouched(self) -> usize {
        match self {
            Rewrite::Acceptor(_) => 0,
            Rewrite::Connector(_) => BANNER_LEN,
        }
    }

    fn apply(self, head: &mut [u8]) {
        match self {
            Rewrite::Acceptor(me) => rewrite_acceptor_block(head, me),
            Rewrite::Connector(public) => {
                let Some(block) = head.get_mut(BANNER_LEN..BANNER_LEN + LEGACY_ADDR_LEN) else {
                    return;
                };
                if let Ok(mut addr) = EntityAddr::decode_legacy(block) {
                    addr.addr = Some(public);
                    block.copy_from_slice(&addr.encode_legacy());
                }
            }
        }
    }
}

/// One direction of a link: copies `from` to `to`, or swallows once black-holed.
struct Direction {
    from: TcpStream,
    to: TcpStream,
    rewrite: Option<Rewrite>,
    black_hole: Arc<AtomicBool>,
    /// Cleared when either direction ends (outside a black hole).
    live: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Direction {
    fn run(mut self) {
        let mut buf = vec![0u8; CHUNK];
        // The start of the stream, held until it can be rewritten.
        let mut head = Vec::new();
        // How much of `head` was forwarded already.
        let mut head_sent = 0;
        loop {
            let n = match crate::read_some(&mut self.from, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if self.black_hole.load(Ordering::SeqCst) {
                lock(&self.shared).stats.swallowed += n as u64;
                continue;
            }
            let mut out = buf.get(..n).unwrap_or_default();
            if let Some(rewrite) = self.rewrite {
                head.extend_from_slice(out);
                if head.len() < rewrite.len() {
                    let ready = rewrite.untouched().min(head.len());
                    if ready > head_sent {
                        let early = head.get(head_sent..ready).unwrap_or_default();
                        if self.to.write_all(early).is_err() {
                            break;
                        }
                        head_sent = ready;
                    }
                    continue;
                }
                rewrite.apply(&mut head);
                self.rewrite = None;
                out = head.get(head_sent..).unwrap_or_default();
            }
            if self.to.write_all(out).is_err() {
                break;
            }
            lock(&self.shared).stats.forwarded += out.len() as u64;
            head.clear();
        }
        // The end of one side ends the other (a black hole keeps both open: the read
        // above only ends when a side closes, or the proxy stops).
        if !self.black_hole.load(Ordering::SeqCst) {
            self.live.store(false, Ordering::SeqCst);
            let _ = self.to.shutdown(Shutdown::Both);
            let _ = self.from.shutdown(Shutdown::Both);
        }
    }
}
