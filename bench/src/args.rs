//! Command-line options of the benchmark (hand-parsed: no dependency for a dozen flags).

use std::net::SocketAddr;
use std::time::Duration;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In-process messenger server + client, then the std::net loop with the same
    /// parameters, and a comparison table (the default).
    Compare,
    /// Only the in-process messenger run.
    Messenger,
    /// Only the std::net request/reply loop.
    StdNet,
    /// A messenger server in this process (`ceph_perf_msgr_server`).
    Server,
    /// A messenger client of a server in another process (`ceph_perf_msgr_client`).
    Client,
    /// Memory per idle connection: a server and `--conns` idle connections to it.
    Idle,
    /// Depth-1 latency floor of an event-loop design: a bare mio loop, then asyncmsgr
    /// and std::net with the same size.
    Floor,
    /// Internal: the idle mode's client process.
    IdleClients,
}

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct Args {
    /// What to run.
    pub mode: Mode,
    /// Request payload bytes (the message's data segment).
    pub size: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Client connections.
    pub conns: usize,
    /// How long to measure.
    pub duration: Duration,
    /// Worker threads per messenger.
    pub workers: usize,
    /// crc32c on header and data.
    pub crc: bool,
    /// Reply payload bytes.
    pub reply_size: usize,
    /// Server address (server/client modes).
    pub addr: SocketAddr,
    /// Print a progress line every second.
    pub progress: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            mode: Mode::Compare,
            size: 4096,
            depth: 32,
            conns: 1,
            duration: Duration::from_secs(10),
            workers: 2,
            crc: true,
            reply_size: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            progress: true,
        }
    }
}

pub const USAGE: &str = "\
usage: bench [MODE] [options]
modes: compare (default: messenger, then std::net with the same sizes), messenger, stdnet,
       server, client, idle (RSS per idle connection; use with --conns 10000),
       floor (depth 1: a bare mio loop, asyncmsgr and std::net side by side)
options:
  --size BYTES        request data size (default 4096; suffixes k, m)
  --depth N           requests in flight per connection (default 32)
  --conns N           client connections (default 1)
  --duration SECS     measured time (default 10)
  --workers N         worker threads per messenger (default 2)
  --crc on|off        crc32c of header and data (default on)
  --reply-size BYTES  server's reply data size (default 0)
  --addr IP:PORT      server address (server: bind; client: connect)
  --quiet             no progress line";

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().map(|n| n * mult).map_err(|e| format!("bad size {s:?}: {e}"))
}

impl Args {
    /// Parses `argv` (without the program name).
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut a = Args::default();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "compare" => a.mode = Mode::Compare,
                "messenger" => a.mode = Mode::Messenger,
                "stdnet" => a.mode = Mode::StdNet,
                "server" => a.mode = Mode::Server,
                "client" => a.mode = Mode::Client,
                "idle" => a.mode = Mode::Idle,
                "floor" => a.mode = Mode::Floor,
                "idle-clients" => a.mode = Mode::IdleClients,
                "--size" => a.size = parse_size(&value("--size")?)?,
                "--reply-size" => a.reply_size = parse_size(&value("--reply-size")?)?,
                "--depth" => a.depth = value("--depth")?.parse().map_err(|e| format!("{e}"))?,
                "--conns" => a.conns = value("--conns")?.parse().map_err(|e| format!("{e}"))?,
                "--workers" => {
                    a.workers = value("--workers")?.parse().map_err(|e| format!("{e}"))?
                }
                "--duration" => {
                    let secs: f64 = value("--duration")?.parse().map_err(|e| format!("{e}"))?;
                    a.duration = Duration::from_secs_f64(secs);
                }
                "--crc" => {
                    a.crc = match value("--crc")?.as_str() {
                        "on" => true,
                        "off" => false,
                        other => return Err(format!("--crc on|off, not {other:?}")),
                    }
                }
                "--addr" => {
                    a.addr = value("--addr")?.parse().map_err(|e| format!("bad --addr: {e}"))?
                }
                "--quiet" => a.progress = false,
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if a.depth == 0 || a.conns == 0 || a.workers == 0 {
            return Err("--depth, --conns and --workers must be at least 1".into());
        }
        Ok(a)
    }
}
