//! The messenger side of the benchmark: a server messenger that answers every message on
//! the connection it came on, and client messengers that keep `depth` requests in flight.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use messenger::{Connection, Dispatcher, Messenger, MessengerConfig, Policy};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use std::collections::VecDeque;

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

/// The client side of one connection: every reply completes a round trip and, until the
/// deadline, sends the next request from the worker that delivered the reply (fast
/// dispatch), so the window stays `depth` deep with no user thread in the loop — how an
/// event-driven Ceph client keeps its ops in flight.
struct Pipeline {
    payload: Bytes,
    deadline: Instant,
    /// Send times of the requests in flight, oldest first: replies come back in order on
    /// one connection. Only the connection's worker touches it after the first window.
    inflight: Mutex<VecDeque<Instant>>,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    done: Arc<AtomicU64>,
    tid: AtomicU64,
    drained: crossbeam_channel::Sender<()>,
}

impl Pipeline {
    fn send(&self, conn: &Connection) {
        let tid = self.tid.fetch_add(1, Ordering::Relaxed);
        let mut msg = Message::new(MSG_PING, Bytes::new());
        msg.set_tid(tid);
        msg.set_data(self.payload.clone());
        self.inflight.lock().push_back(Instant::now());
        if conn.send_message(msg).is_err() {
            self.inflight.lock().pop_back();
        }
    }
}

impl Dispatcher<Connection> for Pipeline {
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
    fn ms_fast_dispatch(&self, conn: &Connection, _msg: Message) {
        let (sent, left) = {
            let mut q = self.inflight.lock();
            (q.pop_front(), q.len())
        };
        if let Some(sent) = sent {
            let _ = self.hist.lock().record(sent.elapsed().as_nanos() as u64);
            self.done.fetch_add(1, Ordering::Relaxed);
        }
        if Instant::now() < self.deadline {
            self.send(conn);
        } else if left == 0 {
            let _ = self.drained.try_send(());
        }
    }
}

/// Runs `args.conns` client messengers against `server` for `args.duration`.
pub fn client(args: &Args, server: SocketAddr, name: &str) -> io::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0xa5; args.size]);
    let (drained_tx, drained_rx) = crossbeam_channel::bounded(args.conns);
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let mut clients = Vec::new();
    for i in 0..args.conns {
        // One client messenger per connection, as ceph_perf_msgr_client does.
        let m = Messenger::new(
            EntityName::new(EntityType::CLIENT, i as i64),
            1000 + i as u32,
            config(args),
        )?;
        m.set_default_policy(Policy::lossy_client());
        m.start()?;
        let pipeline = Arc::new(Pipeline {
            payload: payload.clone(),
            deadline,
            inflight: Mutex::new(VecDeque::with_capacity(args.depth)),
            hist: Mutex::new(new_histogram()),
            done: done.clone(),
            tid: AtomicU64::new(1),
            drained: drained_tx.clone(),
        });
        m.add_dispatcher_head(pipeline.clone())?;
        let conn = m.get_connection(EntityType::OSD, server);
        clients.push((m, conn, pipeline));
    }
    let progress = Progress::start(name.to_string(), done.clone(), args.progress);
    let cpu0 = cpu_time();
    for (_, conn, pipeline) in &clients {
        for _ in 0..args.depth {
            pipeline.send(conn);
        }
    }
    // Each connection reports once its last reply after the deadline arrived.
    for _ in 0..args.conns {
        if drained_rx.recv_deadline(deadline + Duration::from_secs(30)).is_err() {
            break;
        }
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    progress.stop();
    let mut rtt = new_histogram();
    for (m, _, pipeline) in clients {
        let _ = rtt.add(&*pipeline.hist.lock());
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
