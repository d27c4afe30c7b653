//! The messenger side of the benchmark: a server messenger that answers every message on
//! the connection it came on, and client messengers that keep `depth` requests in flight.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use messenger::{Connection, Dispatcher, Messenger, MessengerConfig, Policy};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use protocol::Message;

use crate::args::Args;
use crate::report::{cpu_time, new_histogram, Progress, Report};

/// `CEPH_MSG_PING`: the server answers a ping with a ping (as the issue asks); any other
/// type is answered with the same type.
const MSG_PING: u16 = 2;

fn config(args: &Args) -> MessengerConfig {
    MessengerConfig {
        workers: args.workers,
        crc_header: args.crc,
        crc_data: args.crc,
        ..MessengerConfig::default()
    }
}

/// Answers every message on its own connection, from the worker (fast dispatch).
struct Echo {
    reply: Bytes,
}

impl Dispatcher<Connection> for Echo {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> messenger::Dispatched {
        self.ms_fast_dispatch(conn, msg);
        messenger::Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &Connection, msg: Message) {
        let mut reply = Message::new(msg.msg_type(), Bytes::new());
        reply.set_tid(msg.tid());
        reply.set_data(self.reply.clone());
        let _ = conn.send_message(reply);
    }
}

/// Starts a server messenger bound to `addr`.
pub fn server(args: &Args, addr: SocketAddr) -> io::Result<(Messenger, SocketAddr)> {
    // Nonce 0, as a monitor announces: a client that knows only the server's IP:port
    // (the `client` mode in another process) dials exactly what the server announces.
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 0, config(args))?;
    m.set_default_policy(Policy::stateless_server());
    let bound = m.bind(addr)?;
    m.start()?;
    m.add_dispatcher_head(Arc::new(Echo { reply: Bytes::from(vec![0x5a; args.reply_size]) }))?;
    Ok((m, bound))
}

/// Completes one in-flight window slot per reply and records its round trip.
struct Collect {
    inflight: Receiver<Instant>,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    done: Arc<AtomicU64>,
}

impl Dispatcher<Connection> for Collect {
    fn ms_dispatch(&self, conn: &Connection, msg: Message) -> messenger::Dispatched {
        self.ms_fast_dispatch(conn, msg);
        messenger::Dispatched::Taken
    }
    fn ms_can_fast_dispatch_any(&self) -> bool {
        true
    }
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, _conn: &Connection, _msg: Message) {
        if let Ok(sent) = self.inflight.try_recv() {
            let _ = self.hist.lock().record(sent.elapsed().as_nanos() as u64);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `args.conns` client messengers against `server` for `args.duration`.
pub fn client(args: &Args, server: SocketAddr, name: &str) -> io::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..args.conns {
        // One client messenger per connection, as ceph_perf_msgr_client does; they
        // share one pool so the thread count stays what was asked for.
        let (tx, rx): (Sender<Instant>, Receiver<Instant>) = crossbeam_channel::bounded(args.depth);
        let m = Messenger::new(
            EntityName::new(EntityType::CLIENT, i as i64),
            1000 + i as u32,
            config(args),
        )?;
        m.set_default_policy(Policy::lossy_client());
        m.start()?;
        let collect = Arc::new(Collect {
            inflight: rx,
            hist: Mutex::new(new_histogram()),
            done: done.clone(),
        });
        m.add_dispatcher_head(collect.clone())?;
        let conn = m.get_connection(EntityType::OSD, server);
        clients.push((m, conn, tx, collect));
    }
    let progress = Progress::start(name.to_string(), done.clone(), args.progress);
    let payload = Bytes::from(vec![0xa5; args.size]);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    std::thread::scope(|s| {
        for (_, conn, tx, _) in &clients {
            let payload = payload.clone();
            s.spawn(move || {
                let mut tid = 0u64;
                while Instant::now() < deadline {
                    // The bounded channel is the in-flight window: blocks at `depth`.
                    if tx.send_timeout(Instant::now(), Duration::from_millis(100)).is_err() {
                        continue;
                    }
                    tid += 1;
                    let mut msg = Message::new(MSG_PING, Bytes::new());
                    msg.set_tid(tid);
                    msg.set_data(payload.clone());
                    if conn.send_message(msg).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    progress.stop();
    let mut rtt = new_histogram();
    for (m, _, _, collect) in clients {
        let _ = rtt.add(&*collect.hist.lock());
        m.shutdown();
    }
    let n = done.load(Ordering::Relaxed);
    Ok(Report {
        name: name.to_string(),
        round_trips: n,
        bytes: n * (args.size + args.reply_size) as u64,
        elapsed,
        cpu,
        rtt,
    })
}

/// Server and clients in this process.
pub fn run(args: &Args) -> io::Result<Report> {
    let (server, addr) = server(args, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let report = client(args, addr, "asyncmsgr");
    server.shutdown();
    report
}
