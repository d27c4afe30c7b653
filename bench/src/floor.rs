//! `bench floor`: the latency floor of any event-loop design on this machine — a bare
//! `mio` request/reply loop (one thread and one epoll per side, u32-length framing, no
//! protocol, no crc, no queues), depth 1, the same sizes. The gap between this and the
//! blocking `std::net` loop is the cost of waking through epoll instead of a blocking
//! read; the gap between this and asyncmsgr is the messenger's own.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::args::Args;
use crate::report::{new_histogram, Report, Window};

/// Reads until `buf` holds a whole frame of `want` bytes or the socket would block.
fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, tmp: &mut [u8]) -> io::Result<()> {
    loop {
        match s.read(tmp) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Pops one whole frame (u32 length + payload) off the front of `buf`, if present.
fn pop_frame(buf: &mut Vec<u8>) -> bool {
    if buf.len() < 4 {
        return false;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if buf.len() < 4 + len {
        return false;
    }
    buf.drain(..4 + len);
    true
}

fn write_all(
    s: &mut TcpStream,
    poll: &mut Poll,
    events: &mut Events,
    mut b: &[u8],
) -> io::Result<()> {
    while !b.is_empty() {
        match s.write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll.poll(events, Some(Duration::from_millis(100)))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = (len as u32).to_le_bytes().to_vec();
    f.resize(4 + len, 0xa5);
    f
}

/// Runs the bare mio loop at depth 1 and reports it.
pub fn run(args: &Args) -> io::Result<Report> {
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let reply_size = args.reply_size;
    let stop_s = stop.clone();
    let server = std::thread::spawn(move || -> io::Result<()> {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(16);
        poll.registry().register(&mut listener, Token(0), Interest::READABLE)?;
        let mut conn = loop {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if let Ok((c, _)) = listener.accept() {
                break c;
            }
        };
        conn.set_nodelay(true)?;
        crate::net::tune(&conn)?;
        poll.registry().register(&mut conn, Token(1), Interest::READABLE)?;
        let reply = frame(reply_size);
        let (mut buf, mut tmp) = (Vec::new(), vec![0u8; 64 << 10]);
        while !stop_s.load(Ordering::Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            if fill(&mut conn, &mut buf, &mut tmp).is_err() {
                break;
            }
            while pop_frame(&mut buf) {
                write_all(&mut conn, &mut poll, &mut events, &reply)?;
            }
        }
        Ok(())
    });
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    let mut conn = TcpStream::connect(addr)?;
    poll.registry().register(&mut conn, Token(1), Interest::READABLE | Interest::WRITABLE)?;
    poll.poll(&mut events, Some(Duration::from_secs(5)))?;
    conn.set_nodelay(true)?;
    crate::net::tune(&conn)?;
    let request = frame(args.size);
    let (mut buf, mut tmp) = (Vec::new(), vec![0u8; 64 << 10]);
    let mut rtt = new_histogram();
    let window = Window::open();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < args.duration() {
        let sent = Instant::now();
        write_all(&mut conn, &mut poll, &mut events, &request)?;
        while !pop_frame(&mut buf) {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            fill(&mut conn, &mut buf, &mut tmp)?;
        }
        let _ = rtt.record(sent.elapsed().as_nanos() as u64);
        n += 1;
    }
    let (elapsed, cpu, machine) = window.close();
    stop.store(true, Ordering::Relaxed);
    drop(conn);
    let _ = server.join();
    let report = Report::new("mio-floor (no crc, u32)", n, args.rt_bytes(), elapsed, cpu, rtt);
    Ok(Report { machine, ..report })
}
