//! `bench idle`: what an idle connection costs the messenger in memory.
//!
//! A server messenger accepts `--conns` connections whose handshakes are done by a child
//! process (this binary in `idle-clients` mode, driving `protocol::v1::Connection` over
//! blocking sockets), so only the server's own memory is in the measured process. The
//! resident set before and after, divided by the connection count, is the per-connection
//! cost: the connection handle, its driver and protocol state, the session table entry,
//! the worker's slab slot and timer — not the kernel's socket buffers.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::types::{EntityAddr, EntityName, EntityType};
use protocol::v1;
use protocol::{Config, Event, Policy};

use crate::args::{Args, MsgrVariant};

/// Resident set size of this process in bytes (from /proc/self/statm).
fn rss_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/self/statm"))?;
    Ok(pages * 4096)
}

/// Raises the open-file limit to its hard maximum (both ends of 10k connections need fds).
fn raise_fd_limit() {
    // SAFETY: get/setrlimit only read and write the struct we pass.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// One blocking v1 handshake as a lossy client of the server at `addr`; returns the open
/// session's state machine and its socket.
pub fn handshake(addr: SocketAddr, cfg: &Arc<Config>) -> io::Result<(v1::Connection, TcpStream)> {
    let now = Instant::now();
    let peer = EntityAddr::legacy(addr, 0);
    let mut conn =
        v1::Connection::connect(cfg.clone(), Policy::lossy_client(), peer, EntityType::OSD, now);
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.handle_transport_connected(Instant::now());
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..64 {
        out.clear();
        conn.poll_transmit(&mut out);
        for seg in &out {
            sock.write_all(seg)?;
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Opened(_) => return Ok((conn, sock)),
                Event::Closed { reason, .. } => {
                    return Err(io::Error::other(format!("handshake failed: {reason}")))
                }
                _ => {}
            }
        }
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("server closed during handshake"));
        }
        conn.handle_bytes(Instant::now(), Bytes::copy_from_slice(&buf[..n]));
    }
    Err(io::Error::other("handshake did not finish"))
}

/// The child: opens `n` connections, prints "ready", holds them until stdin closes.
pub fn clients(addr: SocketAddr, n: usize) -> io::Result<()> {
    raise_fd_limit();
    let mut socks = Vec::with_capacity(n);
    // One client per connection, each with a nonce of its own, as Ceph's clients are
    // (a client messenger keeps one connection per server): from one address they would
    // be one client connecting again, whose older connection the server resets.
    let base = std::process::id().wrapping_mul(100_003);
    for i in 0..n {
        let nonce = base.wrapping_add(u32::try_from(i).unwrap_or(u32::MAX)).wrapping_add(1);
        let mut cfg = Config::new(
            EntityName::new(EntityType::CLIENT, -1),
            EntityAddr::legacy(SocketAddr::from(([0, 0, 0, 0], 0)), nonce),
        );
        cfg.crc_data = true;
        socks.push(handshake(addr, &Arc::new(cfg))?.1);
    }
    let mut stdout = io::stdout();
    writeln!(stdout, "ready {}", socks.len())?;
    stdout.flush()?;
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// The parent: a server messenger, the child's connections, RSS before and after.
pub fn run(args: &Args) -> io::Result<()> {
    raise_fd_limit();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = crate::msgr::server(args, loopback, MsgrVariant::default())?;
    let addr = server.addr;
    // Warm the server's paths once so one-time allocations are not charged to the idle
    // connections: a few connections come and go first.
    {
        let mut child = spawn_clients(addr, 8)?;
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let settle = Instant::now() + Duration::from_secs(10);
    while server.messenger.connection_count() > 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = rss_bytes()?;
    let mut child = spawn_clients(addr, args.conns)?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no child stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        return Err(io::Error::other(format!("clients failed: {line:?}")));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.messenger.connection_count() < args.conns && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let conns = server.messenger.connection_count();
    let after = rss_bytes()?;
    let per = (after.saturating_sub(before)) as f64 / conns.max(1) as f64;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "idle connections: {conns} open on the server; RSS {:.1} MiB -> {:.1} MiB; \
             {:.0} bytes ({:.2} KiB) per idle connection",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per,
            per / 1024.0
        );
        let goals = crate::goals::idle_report(args, conns, per / 1024.0);
        if !goals.is_empty() {
            println!("\n{goals}");
        }
    }
    drop(child.stdin.take());
    let _ = child.wait();
    server.shutdown();
    Ok(())
}

fn spawn_clients(addr: SocketAddr, n: usize) -> io::Result<std::process::Child> {
    Command::new(std::env::current_exe()?)
        .arg("idle-clients")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--conns")
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
}
