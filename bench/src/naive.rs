//! The naive `std::net` loop (`--peers naive`), kept for comparison with older numbers
//! and labelled as such: NOT the same work as asyncmsgr. Framing as small as it can be
//! (a u32 length), no crc, no sequence numbers, no order check, one `write_all` per
//! message and no batching. The honest blocking peer is `stdnet` (std-batched).

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::args::{Args, Peer};
use crate::report::{new_histogram, Progress, Report, Window};

/// A frame prebuilt once: u32 length + payload, sent with one `write` per request.
fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + payload_len);
    f.extend_from_slice(&(payload_len as u32).to_le_bytes());
    f.resize(4 + payload_len, fill);
    f
}

fn read_frame(s: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    buf.resize(len, 0);
    s.read_exact(buf)
}

fn serve(listener: TcpListener, reply_size: usize, stop: Arc<AtomicBool>) {
    let mut handlers = Vec::new();
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(mut s) = stream else { continue };
        let _ = s.set_nodelay(true);
        if crate::net::tune(&s).is_err() {
            continue;
        }
        let Ok(r) = s.try_clone() else { continue };
        handlers.push(crate::pin::spawn_named("naive-server-c", move || {
            let reply = frame(reply_size, 0x5a);
            let mut r = BufReader::with_capacity(64 << 10, r);
            let mut buf = Vec::new();
            while read_frame(&mut r, &mut buf).is_ok() {
                if s.write_all(&reply).is_err() {
                    break;
                }
            }
        }));
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Runs the loop in-process and reports it.
pub fn run(args: &Args) -> io::Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stop_server = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop_server.clone();
        let reply_size = args.reply_size;
        crate::pin::spawn_named("naive-server", move || serve(listener, reply_size, stop))
    };
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let name = Peer::StdNaive.to_string();
    let progress = Progress::start(name.clone(), done.clone(), args.progress);
    let window = Window::open();
    let mut clients = Vec::new();
    for _ in 0..args.conns {
        let mut w = TcpStream::connect(addr)?;
        w.set_nodelay(true)?;
        crate::net::tune(&w)?;
        let mut r = BufReader::with_capacity(64 << 10, w.try_clone()?);
        // The in-flight window: `depth` slot tokens. The writer takes a token, then
        // stamps and writes a request; the reader returns the token after reading the
        // reply. So at most `depth` requests are outstanding, and a round trip is timed
        // from the moment its request could go out, not from before waiting for a slot.
        let (slot_tx, slot_rx) = crossbeam_channel::bounded::<()>(args.depth);
        for _ in 0..args.depth {
            let _ = slot_tx.send(());
        }
        let (tx, rx) = crossbeam_channel::bounded::<Instant>(args.depth);
        let (stop_w, size) = (stop.clone(), args.size);
        let writer = crate::pin::spawn_named("naive-client-w", move || {
            let request = frame(size, 0xa5);
            while !stop_w.load(Ordering::Relaxed) {
                if slot_rx.recv().is_err() {
                    break;
                }
                if tx.send(Instant::now()).is_err() || w.write_all(&request).is_err() {
                    break;
                }
            }
            drop(tx);
            w
        });
        let done_r = done.clone();
        let reader = crate::pin::spawn_named("naive-client-r", move || {
            let mut hist = new_histogram();
            let mut buf = Vec::new();
            while read_frame(&mut r, &mut buf).is_ok() {
                let Ok(sent) = rx.recv() else { break };
                let _ = hist.record(sent.elapsed().as_nanos() as u64);
                done_r.fetch_add(1, Ordering::Relaxed);
                let _ = slot_tx.send(());
            }
            hist
        });
        clients.push((writer, reader));
    }
    std::thread::sleep(args.duration());
    stop.store(true, Ordering::Relaxed);
    let mut rtt = new_histogram();
    for (writer, reader) in clients {
        let w = writer.join().map_err(|_| io::Error::other("writer panicked"))?;
        // EOF to the server: it answers what is outstanding, then closes, which ends the
        // reader after the last reply.
        let _ = w.shutdown(Shutdown::Write);
        let h = reader.join().map_err(|_| io::Error::other("reader panicked"))?;
        let _ = rtt.add(&h);
    }
    let (elapsed, cpu, machine) = window.close();
    progress.stop();
    stop_server.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(addr);
    let _ = server.join();
    let n = done.load(Ordering::Relaxed);
    Ok(Report { machine, ..Report::new(name, n, args.rt_bytes(), elapsed, cpu, rtt) })
}
