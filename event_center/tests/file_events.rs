//! File events on real loopback sockets (127.0.0.1, port 0).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use asyncmsgr_event_center::{
    Context, EventCenter, Handler, HandlerId, Ready, TimerTarget, WorkerPool, WorkerPoolConfig,
};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(10);
const PAYLOAD: usize = 4 << 20;

fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("conn");
    let (server, _) = listener.accept().expect("accept");
    client.set_nonblocking(true).expect("nonblocking");
    server.set_nonblocking(true).expect("nonblocking");
    (TcpStream::from_std(client), TcpStream::from_std(server))
}

/// Reads until WouldBlock on every readable event; reports bytes and whether each readable
/// event ended in WouldBlock (the edge contract).
struct Reader {
    stream: TcpStream,
    total: usize,
    tx: Sender<ReadReport>,
}

#[derive(Debug)]
enum ReadReport {
    Drained { total: usize },
    Eof { total: usize },
}

impl Handler for Reader {
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready) {
        if !ready.readable && !ready.closed {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    let _ = self.tx.send(ReadReport::Eof { total: self.total });
                    if let Some(id) = cx.id() {
                        cx.remove(id);
                    }
                    return;
                }
                Ok(n) => self.total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = self.tx.send(ReadReport::Drained { total: self.total });
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Writes `left` bytes, until WouldBlock on every writable event, then shuts down writing.
struct Writer {
    stream: TcpStream,
    left: usize,
    writable_events: Sender<()>,
}

impl Handler for Writer {
    fn ready(&mut self, cx: &mut Context<'_>, ready: Ready) {
        if !ready.writable {
            return;
        }
        let _ = self.writable_events.send(());
        let buf = [0x5au8; 64 * 1024];
        while self.left > 0 {
            match self.stream.write(&buf[..self.left.min(buf.len())]) {
                Ok(n) => self.left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        if let Some(id) = cx.id() {
            cx.remove(id);
        }
    }
}

/// Accepts until WouldBlock and registers a Reader for each connection.
struct Acceptor {
    listener: TcpListener,
    tx: Sender<ReadReport>,
}

impl Handler for Acceptor {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let tx = self.tx.clone();
                    cx.register(stream, Interest::READABLE, move |_, stream| {
                        Box::new(Reader { stream, total: 0, tx })
                    })
                    .expect("register accepted");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

#[test]
fn loopback_bulk_transfer_drains_until_would_block() {
    let pool = WorkerPool::new(WorkerPoolConfig { workers: 2, ..WorkerPoolConfig::default() })
        .expect("pool");
    let (read_tx, read_rx) = unbounded();
    let addr: SocketAddr = pool
        .handle(0)
        .submit_to(move |cx| {
            let listener = TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            let addr = listener.local_addr()?;
            cx.register(listener, Interest::READABLE, |_, listener| {
                Box::new(Acceptor { listener, tx: read_tx })
            })?;
            io::Result::Ok(addr)
        })
        .expect("submit")
        .expect("listen");
    let (writable_tx, writable_rx) = unbounded();
    pool.handle(1)
        .submit_to(move |cx| {
            let stream = TcpStream::connect(addr)?;
            cx.register(stream, Interest::WRITABLE, |_, stream| {
                Box::new(Writer { stream, left: PAYLOAD, writable_events: writable_tx })
            })
            .map(|_| ())
        })
        .expect("submit")
        .expect("connect");

    // Completing at all proves the edge contract: a side that stopped before WouldBlock
    // would get no further event and the transfer would stall until the timeout.
    let mut last = 0;
    loop {
        match read_rx.recv_timeout(WAIT).expect("reader progress") {
            ReadReport::Drained { total } => {
                assert!(total >= last);
                last = total;
            }
            ReadReport::Eof { total } => {
                assert_eq!(total, PAYLOAD);
                break;
            }
        }
    }
    assert!(writable_rx.try_iter().count() >= 1);
}

#[test]
fn interest_none_stops_readiness_and_restoring_it_reports_pending_data() {
    let mut center = EventCenter::new(0).expect("center");
    let (mut client, server) = connected_pair();
    let (tx, rx) = unbounded();
    let id = center
        .with_context(|cx| {
            cx.register(server, Interest::READABLE, |_, stream| {
                Box::new(Reader { stream, total: 0, tx })
            })
        })
        .expect("register");
    center.with_context(|cx| cx.set_interest(id, None)).expect("no interest");
    client.write_all(b"hello").expect("write");
    for _ in 0..3 {
        center.run_once(Some(Duration::from_millis(10))).expect("poll");
    }
    assert!(rx.try_recv().is_err(), "readiness delivered with no interest");
    center.with_context(|cx| cx.set_interest(id, Some(Interest::READABLE))).expect("interest");
    let mut got = None;
    for _ in 0..100 {
        center.run_once(Some(Duration::from_millis(100))).expect("poll");
        if let Ok(report) = rx.try_recv() {
            got = Some(report);
            break;
        }
    }
    assert!(matches!(got, Some(ReadReport::Drained { total: 5 })), "{got:?}");
}

/// Records every callback it gets; it must get none that were meant for a removed handler.
struct Recorder {
    tx: Sender<&'static str>,
    _stream: Option<TcpStream>,
}

impl Handler for Recorder {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {
        let _ = self.tx.send("ready");
    }
    fn timer(&mut self, _cx: &mut Context<'_>, _id: asyncmsgr_event_center::TimerId) {
        let _ = self.tx.send("timer");
    }
    fn notify(&mut self, _cx: &mut Context<'_>) {
        let _ = self.tx.send("notify");
    }
}

#[test]
fn stale_id_gets_no_notify_or_timer_after_its_slot_is_reused() {
    let mut center = EventCenter::new(0).expect("center");
    let handle = center.handle();
    let (old_tx, old_rx) = unbounded();
    let (new_tx, new_rx) = unbounded();
    let old = center
        .with_context(|cx| cx.insert_handler(Box::new(Recorder { tx: old_tx, _stream: None })));
    center.with_context(|cx| {
        cx.create_time_event(Duration::ZERO, TimerTarget::Handler(old));
    });
    handle.notify(old).expect("notify");
    let removed = center.with_context(|cx| cx.remove(old));
    assert!(removed.is_some());
    let new = center
        .with_context(|cx| cx.insert_handler(Box::new(Recorder { tx: new_tx, _stream: None })));
    assert_eq!(new.slot(), old.slot(), "slot reused");
    assert_ne!(new, old);
    center.run_once(Some(Duration::from_millis(5))).expect("poll");
    center.run_once(Some(Duration::ZERO)).expect("poll");
    assert!(old_rx.try_recv().is_err());
    assert!(new_rx.try_recv().is_err(), "stale event reached the slot's new handler");
    assert!(center.with_context(|cx| cx.remove(old)).is_none(), "remove twice");
    assert!(center.with_context(|cx| cx.set_interest(old, None)).is_err());
}

/// On readiness removes its victim and puts a Recorder, registered on an idle socket (so it
/// has no readiness of its own), in the freed slot. Two of them,
/// each the other's victim, both readable in one poll: whichever runs second has a stale
/// token in the batch, which must not reach the Recorder.
struct Killer {
    _stream: TcpStream,
    spare: Option<TcpStream>,
    victim: Arc<Mutex<Option<HandlerId>>>,
    tx: Sender<&'static str>,
    reused: Sender<(HandlerId, HandlerId)>,
}

impl Handler for Killer {
    fn ready(&mut self, cx: &mut Context<'_>, _ready: Ready) {
        let victim = *self.victim.lock();
        let Some(victim) = victim else { return };
        if cx.remove(victim).is_some() {
            let Some(spare) = self.spare.take() else { return };
            let tx = self.tx.clone();
            let new = cx
                .register(spare, Interest::READABLE, |_, s| {
                    Box::new(Recorder { tx, _stream: Some(s) })
                })
                .expect("register spare");
            let _ = self.reused.send((victim, new));
        }
    }
}

#[test]
fn stale_readiness_in_the_same_poll_batch_is_not_delivered_to_the_reused_slot() {
    let mut center = EventCenter::new(0).expect("center");
    let (mut c1, s1) = connected_pair();
    let (mut c2, s2) = connected_pair();
    let (_idle_c1, spare1) = connected_pair();
    let (_idle_c2, spare2) = connected_pair();
    c1.write_all(b"x").expect("write");
    c2.write_all(b"y").expect("write");
    let (rec_tx, rec_rx) = unbounded();
    let (reused_tx, reused_rx): (Sender<_>, Receiver<_>) = unbounded();
    let victim_of_1 = Arc::new(Mutex::new(None));
    let victim_of_2 = Arc::new(Mutex::new(None));
    let (k1, k2) = center.with_context(|cx| {
        let k1 = cx
            .register(s1, Interest::READABLE, {
                let (victim, tx, reused) =
                    (Arc::clone(&victim_of_1), rec_tx.clone(), reused_tx.clone());
                let spare = Some(spare1);
                move |_, _stream| Box::new(Killer { _stream, spare, victim, tx, reused })
            })
            .expect("register");
        let k2 = cx
            .register(s2, Interest::READABLE, {
                let (victim, tx, reused) =
                    (Arc::clone(&victim_of_2), rec_tx.clone(), reused_tx.clone());
                let spare = Some(spare2);
                move |_, _stream| Box::new(Killer { _stream, spare, victim, tx, reused })
            })
            .expect("register");
        (k1, k2)
    });
    *victim_of_1.lock() = Some(k2);
    *victim_of_2.lock() = Some(k1);
    // Both sockets already have data: one poll reports both tokens.
    center.run_once(Some(Duration::from_secs(1))).expect("poll");
    let (victim, new) = reused_rx.recv_timeout(WAIT).expect("one killer ran");
    assert_eq!(new.slot(), victim.slot(), "the victim's slot was reused");
    for _ in 0..3 {
        center.run_once(Some(Duration::from_millis(5))).expect("poll");
    }
    assert!(rec_rx.try_recv().is_err(), "stale token delivered to the reused slot");
}
