//! The batched blocking `std::net` peer, tuned as a competent user would: a thread per
//! socket direction on the client and per connection on the server, 64 KiB
//! `BufReader`/`BufWriter`, `TCP_NODELAY`, the receive buffer reused across messages,
//! and one flush per batch (client: when the window is sent; server: when no whole
//! request is left in the read buffer).
//!
//! Same work as asyncmsgr: the same frames (`wire::Framer`), the same crcs checked on
//! receipt (`wire::Deframer`), replies matched to the oldest request in flight.
//!
//! Left on the table: the frame is read into a separate buffer (one copy out of the
//! `BufReader`), where parsing in place from `fill_buf` would save it for small frames.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::wire::MsgHeader;

use crate::args::{Args, Peer};
use crate::report::{measure, new_histogram, Report};
use crate::verify::{self, InFlight, Signal};
use crate::wire::{client_name, Deframer, Framer, Parsed, HEAD_LEN, SERVER_NAME};

/// Buffered reader and writer capacity.
const BUFFER: usize = 64 << 10;

/// Reads and checks one frame into `buf` (grown, never shrunk, never zero-filled twice);
/// `None` on a clean end of stream between frames.
fn read_frame(
    r: &mut impl BufRead,
    deframer: &mut Deframer,
    buf: &mut Vec<u8>,
) -> io::Result<Option<MsgHeader>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    if buf.len() < HEAD_LEN {
        buf.resize(HEAD_LEN, 0);
    }
    r.read_exact(&mut buf[..HEAD_LEN])?;
    // The length only: the header's crc is checked once, with the rest of the frame.
    let len = deframer.checked_len(&buf[..HEAD_LEN])?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    r.read_exact(&mut buf[HEAD_LEN..len])?;
    match deframer.parse(&buf[..len])? {
        Parsed::Frame { header, .. } => Ok(Some(header)),
        Parsed::NeedMore(_) => Err(io::Error::other("frame longer than announced")),
    }
}

/// Writes one frame into the buffered writer (the payload bypasses the buffer when it
/// is larger than it, as `BufWriter` does).
fn write_frame(w: &mut impl Write, framer: &mut Framer, tid: u64, data: &[u8]) -> io::Result<()> {
    let (head, foot) = framer.frame(tid, data);
    w.write_all(&head)?;
    w.write_all(data)?;
    w.write_all(&foot)
}

fn serve_conn(stream: TcpStream, reply: &[u8], crc: bool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    crate::net::tune(&stream)?;
    let mut r = BufReader::with_capacity(BUFFER, stream.try_clone()?);
    let mut w = BufWriter::with_capacity(BUFFER, stream);
    let (mut deframer, mut framer) = (Deframer::new(crc), Framer::new(SERVER_NAME, crc));
    let mut buf = Vec::new();
    loop {
        let buffered = r.buffer();
        if Deframer::frame_len(buffered).is_none_or(|n| n > buffered.len()) {
            // The next read may block: what is answered so far goes out first.
            w.flush()?;
        }
        let Some(request) = read_frame(&mut r, &mut deframer, &mut buf)? else { break };
        write_frame(&mut w, &mut framer, request.tid, reply)?;
    }
    w.flush()
}

fn serve(listener: TcpListener, conns: usize, reply: Bytes, crc: bool, signals: Sender<Signal>) {
    let mut handlers = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (stream, reply, signals) = match listener.accept() {
            Ok((s, _)) => (s, reply.clone(), signals.clone()),
            Err(e) => {
                let _ = signals.send(Signal::Failed(format!("std server accept: {e}")));
                return;
            }
        };
        handlers.push(crate::pin::spawn_named("std-server-conn", move || {
            if let Err(e) = serve_conn(stream, &reply, crc) {
                let _ = signals.send(Signal::Failed(format!("std server: {e}")));
            }
        }));
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Keeps the window full until `deadline`, one flush per batch, then closes the write
/// side so the server answers the rest and closes.
fn write_requests(
    stream: TcpStream,
    i: usize,
    args: &Args,
    window: &Mutex<InFlight>,
    slots: &Receiver<()>,
    deadline: Instant,
) -> io::Result<()> {
    let payload = vec![0xa5u8; args.size];
    let mut framer = Framer::new(client_name(i), args.crc);
    let mut w = BufWriter::with_capacity(BUFFER, stream);
    while Instant::now() < deadline {
        // Block for one free slot, then take every other slot already free.
        if slots.recv().is_err() {
            break;
        }
        loop {
            // The request's stamp is also the deadline check: a reader freeing slots as
            // fast as this writes (both on one CPU) would otherwise keep it here past
            // the deadline.
            let now = Instant::now();
            let tid = window.lock().push(now);
            write_frame(&mut w, &mut framer, tid, &payload)?;
            if now >= deadline || slots.try_recv().is_err() {
                break;
            }
        }
        w.flush()?;
    }
    w.flush()?;
    w.get_ref().shutdown(Shutdown::Write)
}

fn read_replies(
    stream: TcpStream,
    crc: bool,
    window: &Mutex<InFlight>,
    slots: &Sender<()>,
    done: &AtomicU64,
) -> Result<Histogram<u64>, String> {
    let mut r = BufReader::with_capacity(BUFFER, stream);
    let mut deframer = Deframer::new(crc);
    let (mut hist, mut buf) = (new_histogram(), Vec::new());
    while let Some(reply) =
        read_frame(&mut r, &mut deframer, &mut buf).map_err(|e| format!("std client: {e}"))?
    {
        let sent = window.lock().complete(reply.tid).map_err(|e| e.to_string())?;
        let _ = hist.record(sent.elapsed().as_nanos() as u64);
        done.fetch_add(1, Ordering::Relaxed);
        let _ = slots.send(());
    }
    match window.lock().len() {
        0 => Ok(hist),
        lost => Err(format!("std server closed with {lost} requests unanswered")),
    }
}

/// One client connection: a writer and a reader thread; the reader's histogram.
fn client_conn(
    addr: SocketAddr,
    i: usize,
    args: &Args,
    deadline: Instant,
    done: &Arc<AtomicU64>,
    signals: &Sender<Signal>,
) -> io::Result<JoinHandle<Histogram<u64>>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    crate::net::tune(&stream)?;
    let reader_stream = stream.try_clone()?;
    let window = Arc::new(Mutex::new(InFlight::new(args.depth)));
    // `depth` slot tokens: the writer takes one per request, the reader returns it.
    let (slot_tx, slot_rx) = crossbeam_channel::bounded::<()>(args.depth);
    for _ in 0..args.depth {
        let _ = slot_tx.send(());
    }
    let writer = {
        let (args, window, signals) = (args.clone(), window.clone(), signals.clone());
        crate::pin::spawn_named("std-client-w", move || {
            if let Err(e) = write_requests(stream, i, &args, &window, &slot_rx, deadline) {
                let _ = signals.send(Signal::Failed(format!("std client write: {e}")));
            }
        })
    };
    let (crc, done, signals) = (args.crc, done.clone(), signals.clone());
    Ok(crate::pin::spawn_named("std-client-r", move || {
        let result = read_replies(reader_stream, crc, &window, &slot_tx, &done);
        let _ = writer.join();
        verify::conn_ended(&signals, result)
    }))
}

/// Runs the batched std::net peer in this process and reports it.
pub fn run(args: &Args) -> io::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    measure(args, &Peer::StdBatched.to_string(), |deadline, done, signals| {
        let server = {
            let (signals, conns, crc) = (signals.clone(), args.conns, args.crc);
            let reply = Bytes::from(vec![0x5a; args.reply_size]);
            crate::pin::spawn_named("std-server", move || {
                serve(listener, conns, reply, crc, signals)
            })
        };
        let readers = (0..args.conns)
            .map(|i| client_conn(addr, i, args, deadline, &done, &signals))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Box::new(move || {
            let mut rtt = new_histogram();
            for r in readers {
                let h = r.join().map_err(|_| io::Error::other("std client panicked"))?;
                let _ = rtt.add(&h);
            }
            let _ = server.join();
            Ok(rtt)
        }))
    })
}
