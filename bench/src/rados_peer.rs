//! The `rados` crate peer (crates.io `rados` 0.1.4, tchaikov/rados-rs): the same
//! request/reply work over the crate's own msgr2.1 connection at both ends, crc mode,
//! auth none, no compression, lossy (as asyncmsgr's default `lossy_client` /
//! `stateless_server`), one `current_thread` runtime per side on its own thread, as the
//! tokio peer. Compare it with asyncmsgr speaking msgr2 (v2 against v2). Crc mode only:
//! the crate's server refuses cephx (it decrypts cephx's folded challenge answer, see
//! the tests crate's `interop_rados_crate`), so it never holds secure mode's keys.
//!
//! Checked on receipt, as every peer does: the crate verifies msgr2's segment crcs
//! itself; the server checks requests arrive with tids 1, 2, … and the request size,
//! the client that every reply answers the oldest request in flight and has the reply
//! size.
//!
//! What the crate's API allows, and so how the client drives its window: the crate's
//! `msgr2::Connection` is one object whose `send_message` and `recv_message` both take
//! `&mut self` (no split into halves), and `recv_message` is not cancel-safe (it reads
//! with `read_exact`, so dropping it mid-frame loses bytes), so one task cannot wait on
//! "room to send" and "a reply arrived" at once. The client therefore alternates: it
//! fills the window, then takes one reply, sends the next request, and so on. That is
//! the crate's own best case on this workload; it cannot overlap a large send with a
//! receive. The server answers each request in turn. While the client writes its
//! window, the server's replies wait in the socket buffers, so a large reply times a
//! deep window could fill them with both sides blocked in a write: runs where
//! `depth × reply` exceeds [`MAX_REPLY_BACKLOG`] are refused.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Sender;
use hdrhistogram::Histogram;
use rados::msgr2::{Connection, ConnectionConfig, ConnectionMode, Message, Msgr2Error};
use tokio::net::TcpListener;

use crate::args::{Args, Peer};
use crate::report::{measure, new_histogram, Report};
use crate::tokio_peer::server_and_clients;
use crate::verify::{self, InFlight, RequestOrder, Signal};
use crate::wire::MSG_PING;

/// Reply bytes a window may leave waiting in the socket buffers (see the module docs).
pub const MAX_REPLY_BACKLOG: usize = 256 << 10;

/// msgr2 framing of one message beyond its data (preamble, header segment, crcs),
/// rounded up: what a reply adds to the backlog besides its payload.
const FRAME_OVERHEAD: usize = 128;

/// Both ends: msgr2.1 without compression, crc mode, auth none, lossy.
fn config() -> ConnectionConfig {
    ConnectionConfig {
        preferred_modes: vec![ConnectionMode::Crc],
        is_lossy: true,
        ..ConnectionConfig::with_no_auth()
    }
}

/// The client closing its side after its last reply reads as one of these on the server.
fn is_peer_gone(e: &Msgr2Error) -> bool {
    matches!(e, Msgr2Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ))
}

/// Answers every request of one accepted connection until the client leaves.
async fn serve_conn(
    stream: tokio::net::TcpStream,
    size: usize,
    reply: Bytes,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| format!("rados server nodelay: {e}"))?;
    crate::net::tune(&stream).map_err(|e| format!("rados server congestion control: {e}"))?;
    let mut conn = Connection::accept(stream, config(), None)
        .await
        .map_err(|e| format!("rados server accept: {e}"))?;
    conn.accept_session().await.map_err(|e| format!("rados server handshake: {e}"))?;
    let mut order = RequestOrder::default();
    loop {
        let request = match conn.recv_message().await {
            Ok(m) => m,
            Err(e) if is_peer_gone(&e) => return Ok(()),
            Err(e) => return Err(format!("rados server: {e}")),
        };
        order.check(request.tid()).map_err(|e| format!("rados server: {e}"))?;
        if request.data.len() != size {
            return Err(format!(
                "rados server: request tid {} carries {} bytes, not {size}",
                request.tid(),
                request.data.len()
            ));
        }
        let mut answer = Message::new(request.msg_type(), Bytes::new()).with_tid(request.tid());
        answer.data = reply.clone();
        conn.send_message(answer).await.map_err(|e| format!("rados server send: {e}"))?;
    }
}

async fn serve(listener: TcpListener, args: Arc<Args>, signals: Sender<Signal>) {
    let reply = Bytes::from(vec![0x5a; args.reply_size]);
    let mut tasks = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        match listener.accept().await {
            Ok((s, _)) => tasks.push(tokio::spawn(serve_conn(s, args.size, reply.clone()))),
            Err(e) => {
                let _ = signals.send(Signal::Failed(format!("rados server accept: {e}")));
                return;
            }
        }
    }
    for t in tasks {
        let why = match t.await {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(e) => format!("rados server task: {e}"),
        };
        let _ = signals.send(Signal::Failed(why));
    }
}

/// One client connection: keeps `depth` requests in flight until `deadline` (filling
/// the window, then one reply in, one request out), then drains and closes.
async fn client_conn(
    addr: SocketAddr,
    args: Arc<Args>,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> Result<Histogram<u64>, String> {
    let mut conn =
        Connection::connect(addr, config()).await.map_err(|e| format!("rados connect: {e}"))?;
    conn.establish_session().await.map_err(|e| format!("rados handshake: {e}"))?;
    let payload = Bytes::from(vec![0xa5; args.size]);
    let mut window = InFlight::new(args.depth);
    let mut hist = new_histogram();
    loop {
        while window.len() < args.depth && Instant::now() < deadline {
            let tid = window.push(Instant::now());
            let mut request = Message::new(MSG_PING, Bytes::new()).with_tid(tid);
            request.data = payload.clone();
            conn.send_message(request).await.map_err(|e| format!("rados send: {e}"))?;
        }
        if window.is_empty() {
            break;
        }
        let reply = conn.recv_message().await.map_err(|e| format!("rados recv: {e}"))?;
        let sent = window.complete(reply.tid()).map_err(|e| format!("rados client: {e}"))?;
        if reply.data.len() != args.reply_size {
            return Err(format!(
                "rados client: reply tid {} carries {} bytes, not {}",
                reply.tid(),
                reply.data.len(),
                args.reply_size
            ));
        }
        let _ = hist.record(sent.elapsed().as_nanos() as u64);
        done.fetch_add(1, Ordering::Relaxed);
    }
    conn.close().await;
    Ok(hist)
}

/// Runs the `rados` crate peer in this process and reports it.
pub fn run(args: &Args) -> io::Result<Report> {
    let backlog = args.depth.saturating_mul(args.reply_size.saturating_add(FRAME_OVERHEAD));
    if backlog > MAX_REPLY_BACKLOG {
        return Err(io::Error::other(format!(
            "the rados peer cannot run --depth {} with --reply-size {}: the crate's connection \
             sends and receives from one task, so up to depth x reply ({backlog} bytes) waits \
             in the socket buffers while it writes its window (limit {MAX_REPLY_BACKLOG})",
            args.depth, args.reply_size
        )));
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    measure(args, &Peer::Rados.to_string(), |deadline, done, signals| {
        let args = Arc::new(args.clone());
        let server_signals = signals.clone();
        let server_args = args.clone();
        server_and_clients(
            "rados",
            listener,
            &server_signals,
            args.conns,
            {
                let signals = server_signals.clone();
                move |l| serve(l, server_args, signals)
            },
            move |_| {
                let (args, done, signals) = (args.clone(), done.clone(), signals.clone());
                async move {
                    let result = client_conn(addr, args, deadline, done).await;
                    verify::conn_ended(&signals, result)
                }
            },
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn args(extra: &str) -> Args {
        let argv = format!("--peers rados --quiet --duration 0.3 {extra}");
        Args::parse(argv.split_whitespace().map(String::from)).unwrap()
    }

    /// Two connections of the crate at both ends complete round trips, every reply
    /// checked (order, size), and the run ends clean.
    #[test]
    fn runs_and_verifies_every_reply() {
        let r = run(&args("--conns 2 --depth 8 --size 4k --reply-size 100")).unwrap();
        assert_eq!(r.failure, None);
        assert!(r.round_trips > 0, "no round trip in {:?}", r.elapsed);
        assert_eq!(r.bytes, r.round_trips * (4096 + 100));
        assert!(r.elapsed < Duration::from_secs(30));
    }

    /// A window whose replies could fill the socket buffers is refused up front rather
    /// than left to deadlock.
    #[test]
    fn refuses_a_reply_backlog_that_could_deadlock() {
        let err = run(&args("--depth 32 --reply-size 64k")).unwrap_err();
        assert!(err.to_string().contains("socket buffers"), "{err}");
    }
}
