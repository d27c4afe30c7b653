//! The tokio peer, tuned as a competent user would: a tokio-util codec for msgr v1
//! frames (`FramedRead` with a 64 KiB read buffer, `FramedWrite` with a 64 KiB
//! backpressure boundary, the length-delimited pattern: peek the header, reserve the
//! whole frame, split it off without copying), one `current_thread` runtime per side
//! on its own thread, `TCP_NODELAY`, and a flush only when there is nothing more to
//! send (client: the window is sent; server: no whole request is left to read).
//!
//! Same work as asyncmsgr: the same frames (`wire::Framer`), the same crcs checked on
//! receipt (`wire::Deframer`: header, front/middle/data, seq), replies matched to the
//! oldest request in flight (`verify::InFlight`).
//!
//! Left on the table, deliberately (each is a few lines for a user who needs it): the
//! encoder copies the payload into the write buffer, where a vectored write of the
//! payload `Bytes` would avoid one copy per MiB-sized message; a multi-threaded runtime
//! would spread many connections over both cores.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::Sender;
use futures_util::future::{join, FutureExt};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::types::EntityName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use crate::args::{Args, Peer};
use crate::report::{measure, new_histogram, Join, Report};
use crate::verify::{self, InFlight, Signal};
use crate::wire::{client_name, Deframer, Framer, Parsed, FOOTER_LEN, HEAD_LEN, SERVER_NAME};

/// Read buffer and write backpressure boundary: the one line of tuning.
const BUFFER: usize = 64 << 10;

/// A message to send: its tid and data.
struct Outgoing {
    tid: u64,
    data: Bytes,
}

/// A received, verified frame.
struct Incoming {
    tid: u64,
    /// The whole frame, split off the read buffer without a copy (what a real user
    /// would hand on to the application).
    _frame: Bytes,
}

/// msgr v1 frames as a tokio-util codec.
struct V1Codec {
    framer: Framer,
    deframer: Deframer,
}

impl V1Codec {
    fn new(src: EntityName, crc: bool) -> V1Codec {
        V1Codec { framer: Framer::new(src, crc), deframer: Deframer::new(crc) }
    }
}

impl Decoder for V1Codec {
    type Item = Incoming;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Incoming>> {
        match self.deframer.parse(src)? {
            Parsed::NeedMore(len) => {
                // As LengthDelimitedCodec: room for the whole frame (its length already
                // checked against the limits) so it arrives without reallocation.
                src.reserve(len.saturating_sub(src.len()));
                Ok(None)
            }
            Parsed::Frame { header, len } => {
                Ok(Some(Incoming { tid: header.tid, _frame: src.split_to(len).freeze() }))
            }
        }
    }
}

impl Encoder<Outgoing> for V1Codec {
    type Error = io::Error;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> io::Result<()> {
        let (head, foot) = self.framer.frame(item.tid, &item.data);
        dst.reserve(HEAD_LEN + item.data.len() + FOOTER_LEN);
        dst.put_slice(&head);
        dst.put_slice(&item.data);
        dst.put_slice(&foot);
        Ok(())
    }
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().build()
}

/// Answers every request of one connection with an empty (or `reply`-sized) message.
async fn serve_conn(mut stream: TcpStream, reply: Bytes, crc: bool) -> io::Result<()> {
    let (rd, wr) = stream.split();
    let mut requests = FramedRead::with_capacity(rd, V1Codec::new(SERVER_NAME, crc), BUFFER);
    let mut replies = FramedWrite::new(wr, V1Codec::new(SERVER_NAME, crc));
    replies.set_backpressure_boundary(BUFFER);
    loop {
        // Flush only when no whole request is ready: replies to a burst go out together.
        let next = match requests.next().now_or_never() {
            Some(next) => next,
            None => {
                replies.flush().await?;
                requests.next().await
            }
        };
        let Some(request) = next else { break };
        replies.feed(Outgoing { tid: request?.tid, data: reply.clone() }).await?;
    }
    // The client closed its side after its last request: answer the rest, then close.
    replies.close().await
}

async fn serve(
    listener: TcpListener,
    conns: usize,
    reply: Bytes,
    crc: bool,
    signals: Sender<Signal>,
) {
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                if let Err(e) = crate::net::tune(&s) {
                    let _ = signals.send(Signal::Failed(format!("tokio server: {e}")));
                    return;
                }
                tasks.push(tokio::spawn(serve_conn(s, reply.clone(), crc)));
            }
            Err(e) => {
                let _ = signals.send(Signal::Failed(format!("tokio server accept: {e}")));
                return;
            }
        }
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = signals.send(Signal::Failed(format!("tokio server: {e}")));
            }
            Err(e) => {
                let _ = signals.send(Signal::Failed(format!("tokio server task: {e}")));
            }
        }
    }
}

/// What one client connection shares between its reader and writer halves.
struct Shared {
    window: Mutex<InFlight>,
    /// Signalled by the reader when a reply frees a slot.
    room: Notify,
}

/// Keeps `depth` requests in flight until `deadline`, then closes the write side.
async fn write_requests(
    sink: &mut FramedWrite<tokio::net::tcp::WriteHalf<'_>, V1Codec>,
    shared: &Shared,
    depth: usize,
    payload: Bytes,
    deadline: Instant,
) -> io::Result<()> {
    while Instant::now() < deadline {
        let free = depth - shared.window.lock().len();
        if free == 0 {
            shared.room.notified().await;
            continue;
        }
        for _ in 0..free {
            let tid = shared.window.lock().push(Instant::now());
            sink.feed(Outgoing { tid, data: payload.clone() }).await?;
        }
        sink.flush().await?;
    }
    // EOF after the last request: the server answers what is outstanding and closes.
    sink.close().await
}

/// Matches replies to requests until the server closes after the last one.
async fn read_replies(
    stream: &mut FramedRead<tokio::net::tcp::ReadHalf<'_>, V1Codec>,
    shared: &Shared,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut hist = new_histogram();
    while let Some(reply) = stream.next().await {
        let reply = reply.map_err(|e| format!("tokio client: {e}"))?;
        let sent = shared.window.lock().complete(reply.tid).map_err(|e| e.to_string())?;
        let _ = hist.record(sent.elapsed().as_nanos() as u64);
        done.fetch_add(1, Ordering::Relaxed);
        shared.room.notify_one();
    }
    match shared.window.lock().len() {
        0 => Ok(hist),
        lost => Err(format!("tokio server closed with {lost} requests unanswered")),
    }
}

async fn client_conn(
    addr: SocketAddr,
    i: usize,
    args: Arc<Args>,
    deadline: Instant,
    done: Arc<AtomicU64>,
    signals: Sender<Signal>,
) -> Histogram<u64> {
    let result = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        crate::net::tune(&stream).map_err(|e| e.to_string())?;
        let (rd, wr) = stream.split();
        let mut replies =
            FramedRead::with_capacity(rd, V1Codec::new(client_name(i), args.crc), BUFFER);
        let mut requests = FramedWrite::new(wr, V1Codec::new(client_name(i), args.crc));
        requests.set_backpressure_boundary(BUFFER);
        let shared = Shared { window: Mutex::new(InFlight::new(args.depth)), room: Notify::new() };
        let payload = Bytes::from(vec![0xa5; args.size]);
        let (hist, written) = join(
            read_replies(&mut replies, &shared, &done),
            write_requests(&mut requests, &shared, args.depth, payload, deadline),
        )
        .await;
        written.map_err(|e| format!("tokio client write: {e}"))?;
        hist
    }
    .await;
    verify::conn_ended(&signals, result)
}

/// Runs `serve(listener)` on a `current_thread` runtime on a thread of its own
/// (`{name}-server`) and the client connections `conn(0)`, `conn(1)`, … `conn(conns - 1)`
/// as tasks of another (`{name}-client`); the [`Join`] merges their histograms. The
/// harness of every tokio-based peer, for [`measure`]'s `start`; a listener the server's
/// runtime cannot take fails the run on `signals`.
pub(crate) fn server_and_clients<S, SFut, C, CFut>(
    name: &str,
    listener: std::net::TcpListener,
    signals: &Sender<Signal>,
    conns: usize,
    serve: S,
    conn: C,
) -> io::Result<Join>
where
    S: FnOnce(TcpListener) -> SFut + Send + 'static,
    SFut: Future<Output = ()>,
    C: Fn(usize) -> CFut + Send + 'static,
    CFut: Future<Output = Histogram<u64>> + Send + 'static,
{
    let server = {
        let (rt, signals, name) = (runtime()?, signals.clone(), name.to_string());
        std::thread::Builder::new().name(format!("{name}-server")).spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => serve(l).await,
                    Err(e) => {
                        let _ = signals.send(Signal::Failed(format!("{name} listener: {e}")));
                    }
                }
            })
        })?
    };
    let client = {
        let rt = runtime()?;
        std::thread::Builder::new().name(format!("{name}-client")).spawn(move || {
            rt.block_on(async move {
                let tasks: Vec<_> = (0..conns).map(|i| tokio::spawn(conn(i))).collect();
                // The connections hold their own signal senders; drop the factory's so
                // the watchdog sees every sender gone once they end.
                drop(conn);
                let mut rtt = new_histogram();
                for t in tasks {
                    if let Ok(h) = t.await {
                        let _ = rtt.add(&h);
                    }
                }
                rtt
            })
        })?
    };
    let name = name.to_string();
    Ok(Box::new(move || {
        let rtt = client.join().map_err(|_| io::Error::other(format!("{name} client panicked")))?;
        let _ = server.join();
        Ok(rtt)
    }))
}

/// Runs the tokio peer in this process and reports it.
pub fn run(args: &Args) -> io::Result<Report> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    measure(args, &Peer::Tokio.to_string(), |deadline, done, signals| {
        let (conns, crc) = (args.conns, args.crc);
        let reply = Bytes::from(vec![0x5a; args.reply_size]);
        let server_signals = signals.clone();
        let args = Arc::new(args.clone());
        server_and_clients(
            "tokio",
            listener,
            &server_signals,
            conns,
            {
                let signals = server_signals.clone();
                move |l| serve(l, conns, reply, crc, signals)
            },
            move |i| client_conn(addr, i, args.clone(), deadline, done.clone(), signals.clone()),
        )
    })
}
