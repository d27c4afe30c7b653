//! Command-line options of the benchmark (hand-parsed: no dependency for a few flags).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every peer of `--peers` with the same parameters, one table (the default).
    Compare,
    /// The issue's size/depth table for every peer, `--runs` times, medians.
    Matrix,
    /// asyncmsgr lossy + fast dispatch against lossless and queued dispatch.
    Modes,
    /// Aggregate over many connections: 16 against `--conns` (default 1,000), depth 4.
    Conns,
    /// A messenger server in this process (`ceph_perf_msgr_server`).
    Server,
    /// A messenger client of a server in another process (`ceph_perf_msgr_client`).
    Client,
    /// Memory per idle connection: a server and `--conns` idle connections to it.
    Idle,
    /// Depth-1 latency floor of an event-loop design: a bare mio loop beside the peers.
    Floor,
    /// The crc32c kernels side by side at header to bulk sizes.
    Crc,
    /// The raw AES-128-GCM rate of the `aes-gcm` crate (what bounds secure mode).
    Crypto,
    /// Internal: the idle mode's client process.
    IdleClients,
}

/// How the asyncmsgr peer runs its sessions and dispatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgrVariant {
    /// `Policy::lossless_peer()` at both ends (acks, the sent queue, reconnects) instead
    /// of `lossy_client` / `stateless_server`.
    pub lossless: bool,
    /// Both ends answer from `ms_dispatch` on the dispatch thread instead of
    /// `ms_fast_dispatch` on the worker.
    pub queued: bool,
    /// Only the server answers from `ms_dispatch`; the client takes the replies in
    /// `ms_fast_dispatch`, as Ceph's Objecter does with an OSD's replies: the daemon's
    /// queued path once per round trip instead of twice.
    pub queued_server: bool,
    /// The client dials the server's `v2:` address: msgr2 (crc mode) instead of v1.
    pub v2: bool,
    /// msgr2 in secure mode (AES-128-GCM frames): their mode options allow only secure
    /// (needs `v2` and `cephx`: secure mode's keys come from the cephx exchange).
    pub secure: bool,
    /// Both messengers authenticate with cephx (keys from the in-process key server)
    /// instead of auth none; with `secure` off that is msgr2 crc mode after a cephx
    /// handshake, as a cluster with `ms_*_mode = crc` and cephx runs (needs `v2`).
    pub cephx: bool,
    /// Both messengers' workers busy-poll [`BUSY_POLL`] (or `--busy-poll`, if longer)
    /// before they sleep: the opt-in low-latency mode beside the default in one table.
    pub busy: bool,
    /// Both messengers make no early batches (`MessengerConfig::early_batches` off):
    /// replies written at the end of a read, or every 256 KiB, as a single-threaded
    /// codec's are; the option for hosts where an extra write costs more than it gains.
    pub late: bool,
}

/// The busy-poll of the `busy` peer (`asyncmsgr+busy-poll`).
pub const BUSY_POLL: Duration = Duration::from_micros(20);

impl MsgrVariant {
    /// asyncmsgr's default: lossy, fast dispatch, msgr v1.
    pub const V1: MsgrVariant = MsgrVariant {
        lossless: false,
        queued: false,
        queued_server: false,
        v2: false,
        secure: false,
        cephx: false,
        busy: false,
        late: false,
    };
    /// The same over msgr2 in crc mode.
    pub const V2: MsgrVariant = MsgrVariant { v2: true, ..MsgrVariant::V1 };
    /// msgr2 in crc mode after a cephx handshake.
    pub const V2_CEPHX: MsgrVariant = MsgrVariant { cephx: true, ..MsgrVariant::V2 };
    /// The same over msgr2 in secure mode, with cephx.
    pub const V2_SECURE: MsgrVariant = MsgrVariant { secure: true, ..MsgrVariant::V2_CEPHX };
}

/// One implementation of the request/reply workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// asyncmsgr, server and client messengers in this process.
    Asyncmsgr(MsgrVariant),
    /// tokio + a tokio-util codec, a current_thread runtime per side, 64 KiB buffers.
    Tokio,
    /// Blocking std::net, 64 KiB BufReader/BufWriter, a flush per sent window.
    StdBatched,
    /// The old naive std::net loop: u32 frames, no crc, one write per message.
    StdNaive,
    /// The `rados` crate's msgr2 connection at both ends (crc mode, auth none, lossy).
    Rados,
}

impl Peer {
    /// The peers of the default comparison (and the matrix): asyncmsgr over v1, over
    /// msgr2 in crc mode and in secure mode side by side, then the other
    /// implementations.
    pub const DEFAULT: [Peer; 5] = [
        Peer::Asyncmsgr(MsgrVariant::V1),
        Peer::Asyncmsgr(MsgrVariant::V2),
        Peer::Asyncmsgr(MsgrVariant::V2_SECURE),
        Peer::Tokio,
        Peer::StdBatched,
    ];

    /// The peers of `bench modes`: asyncmsgr's lossy + fast dispatch first.
    pub const MODES: [Peer; 4] = [
        Peer::Asyncmsgr(MsgrVariant::V1),
        Peer::Asyncmsgr(MsgrVariant { lossless: true, ..MsgrVariant::V1 }),
        Peer::Asyncmsgr(MsgrVariant { queued: true, ..MsgrVariant::V1 }),
        Peer::Asyncmsgr(MsgrVariant { queued_server: true, ..MsgrVariant::V1 }),
    ];

    /// The peers of `bench conns` (a blocking peer with 1,000 connections is 3,000
    /// threads; add `--peers ...,std` to see it).
    pub const SCALING: [Peer; 2] = [Peer::Asyncmsgr(MsgrVariant::V1), Peer::Tokio];

    fn parse(s: &str) -> Result<Peer, String> {
        let v =
            |lossless, queued| Peer::Asyncmsgr(MsgrVariant { lossless, queued, ..MsgrVariant::V1 });
        Ok(match s {
            "asyncmsgr" => v(false, false),
            "v2" | "asyncmsgr-v2" => Peer::Asyncmsgr(MsgrVariant::V2),
            "v2s" | "asyncmsgr-v2-secure" => Peer::Asyncmsgr(MsgrVariant::V2_SECURE),
            "v2c" | "asyncmsgr-v2-cephx" => Peer::Asyncmsgr(MsgrVariant::V2_CEPHX),
            "lossless" | "asyncmsgr+lossless" => v(true, false),
            "queued" | "asyncmsgr+queued" => v(false, true),
            "lossless+queued" | "asyncmsgr+lossless+queued" => v(true, true),
            "queued-server" | "asyncmsgr+queued-server" => {
                Peer::Asyncmsgr(MsgrVariant { queued_server: true, ..MsgrVariant::V1 })
            }
            "busy" | "asyncmsgr+busy-poll" => {
                Peer::Asyncmsgr(MsgrVariant { busy: true, ..MsgrVariant::V1 })
            }
            "late" | "asyncmsgr+late-batches" => {
                Peer::Asyncmsgr(MsgrVariant { late: true, ..MsgrVariant::V1 })
            }
            "tokio" | "tokio-ct64" => Peer::Tokio,
            "std" | "std-batched" => Peer::StdBatched,
            "naive" | "std-naive" => Peer::StdNaive,
            "rados" | "rados-msgr2" => Peer::Rados,
            other => return Err(format!("unknown peer {other:?}")),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Asyncmsgr(v) => {
                f.write_str(match (v.v2, v.secure, v.cephx) {
                    (false, _, _) => "asyncmsgr",
                    (true, false, false) => "asyncmsgr-v2",
                    (true, false, true) => "asyncmsgr-v2-cephx",
                    (true, true, _) => "asyncmsgr-v2-secure",
                })?;
                if v.lossless {
                    f.write_str("+lossless")?;
                }
                if v.queued {
                    f.write_str("+queued")?;
                }
                if v.queued_server {
                    f.write_str("+queued-server")?;
                }
                if v.busy {
                    f.write_str("+busy-poll")?;
                }
                if v.late {
                    f.write_str("+late-batches")?;
                }
                Ok(())
            }
            Peer::Tokio => f.write_str("tokio-ct64"),
            Peer::StdBatched => f.write_str("std-batched"),
            Peer::StdNaive => f.write_str("std-naive (no crc, u32)"),
            Peer::Rados => f.write_str("rados-msgr2"),
        }
    }
}

/// Benchmark parameters.
#[derive(Clone, Debug)]
pub struct Args {
    /// What to run.
    pub mode: Mode,
    /// The peers to run, in table order (the first is the ratios' reference).
    pub peers: Vec<Peer>,
    /// `--peers` was given (else the mode picks its own).
    pub peers_given: bool,
    /// asyncmsgr's variant in `server` / `client` mode (and for `asyncmsgr` in `--peers`).
    pub variant: MsgrVariant,
    /// Request payload bytes (the message's data segment).
    pub size: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Client connections.
    pub conns: usize,
    /// How long to measure (`None`: the mode's default).
    pub duration: Option<Duration>,
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
    /// A run fails when no reply arrives for this long.
    pub stall: Duration,
    /// Runs per cell in `matrix`, `modes` and `conns` (medians are reported).
    pub runs: usize,
    /// How many times a run that ran beside other work ([`crate::machine::Load::is_busy`])
    /// is run again before it is kept anyway.
    pub busy_retries: usize,
    /// Write the latency distribution of every peer here (SVG).
    pub plot: Option<PathBuf>,
    /// Profile the asyncmsgr runs in-process and write a flamegraph here (SVG).
    pub flamegraph: Option<PathBuf>,
    /// asyncmsgr's workers (both messengers) poll without sleeping this long before
    /// they sleep (`WorkerPoolConfig::busy_poll`); zero: off.
    pub busy_poll: Duration,
    /// Pin the server's and the client's threads (`None`: the scheduler places them).
    pub pin: Option<crate::pin::Pin>,
    /// The TCP congestion control of every peer's sockets (`None`: the host's default).
    pub tcp_congestion: Option<String>,
    /// Print what each thread did under each peer's row ([`crate::threads`]).
    pub threads: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            mode: Mode::Compare,
            peers: Peer::DEFAULT.to_vec(),
            peers_given: false,
            variant: MsgrVariant::default(),
            size: 4096,
            depth: 32,
            conns: 1,
            duration: None,
            workers: 2,
            crc: true,
            reply_size: 0,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            progress: true,
            stall: Duration::from_secs(5),
            runs: 3,
            busy_retries: 2,
            plot: None,
            flamegraph: None,
            busy_poll: Duration::ZERO,
            pin: None,
            tcp_congestion: None,
            threads: false,
        }
    }
}

/// The `--help` text.
pub const USAGE: &str = "\
usage: bench [MODE] [options]
modes:
  compare (default)  every peer of --peers with the same parameters, one table with ratios
  matrix             the performance issue's table (4k/1, 4k/32, 4k/128, 64/128, 1m/1, 1m/16)
                     for every peer, --runs times each (default 3), medians; 5 s per run
  modes              asyncmsgr lossy+fast against lossless and queued dispatch (4k/32, 64/128):
                     queued at both ends, and at the server only (queued-server)
  conns              aggregate rt/s of 16 connections against --conns (default 1000), depth 4
  server, client     ceph_perf_msgr_server / ceph_perf_msgr_client in two processes
                     (the client's table counts its own CPU only)
  idle               RSS per idle connection (use with --conns 10000): msgr v1, lossy,
                     auth none, fast dispatch (refuses --proto, --lossless, --queued,
                     --mode and --auth)
  floor              depth 1: a bare mio loop (no crc, u32 frames) beside the peers
  crc                the crc32c kernels (crc32c crate, crc-fast, protocol's pick) by size
  crypto             AES-128-GCM (the aes-gcm crate secure mode uses) seal/open rate by size
options:
  --peers LIST        comma-separated, first is the reference
                      (default asyncmsgr,v2,v2s,tokio,std); also lossless, queued,
                      lossless+queued, queued-server, busy, late (asyncmsgr variants;
                      queued-server: the server answers from ms_dispatch, the client
                      fast-dispatches the replies, as Ceph's Objecter; busy: both ends'
                      workers busy-poll 20 us before they sleep, or --busy-poll if
                      longer; late: both ends write replies only at the end of a read,
                      MessengerConfig::early_batches off),
                      naive;
                      v2 = asyncmsgr over msgr2 (crc mode) beside asyncmsgr over v1;
                      v2s = asyncmsgr over msgr2 in secure mode (cephx keys from an
                      in-process key server; the run fails unless secure was negotiated);
                      v2c = asyncmsgr over msgr2 in crc mode after a cephx handshake;
                      every asyncmsgr-v2 run fails unless both ends negotiated the mode
                      rados (the rados crate's msgr2 at both ends: crc, auth none, lossy;
                      one task per connection alternates sends and receives, as its
                      Connection allows; refused when depth x reply-size > 256 KiB; crc
                      only: the crate's server has no cephx, so no secure mode)
  --proto v1|v2       the protocol of the asyncmsgr peer (and of server/client modes)
  --auth none|cephx   the asyncmsgr peer's authentication (cephx: with --proto v2; secure
                      mode implies it; default none in crc mode)
  --mode crc|secure   msgr2's connection mode of the asyncmsgr peer (secure: with --proto v2,
                      cephx at both ends, in-process compare/matrix runs only)
  --lossless          asyncmsgr with lossless_peer at both ends (acks, resend on reconnect)
  --queued            asyncmsgr answering from ms_dispatch instead of ms_fast_dispatch
  --size BYTES        request data size (default 4096; suffixes k, m)
  --depth N           requests in flight per connection (default 32)
  --conns N           client connections (default 1)
  --duration SECS     measured time (default 10; 5 per run in matrix, modes and conns)
  --workers N         worker threads per messenger (default 2)
  --crc on|off        crc32c of header and data (default on)
  --reply-size BYTES  server's reply data size (default 0)
  --addr IP:PORT      server address (server: bind; client: connect)
  --stall SECS        fail when no reply arrives for this long (default 5)
  --runs N            runs per cell in matrix, modes and conns (default 3; their goals
                      are judged only on 3 runs of 5 s, the defaults)
  --busy-retries N    run again, up to N times, a run during which other processes and the
                      hypervisor's steal together took 0.25 CPU or more (default 2); every
                      table ends with what the rest of the machine did and warns of busy
                      runs kept
  --plot FILE.svg     latency distribution of every peer on one chart
  --flamegraph FILE.svg   profile the asyncmsgr run in-process
  --busy-poll US      asyncmsgr's workers poll without sleeping this long before they
                      sleep (default 0: off); lower depth-1 latency for CPU, which the
                      cpu column shows
  --pin same|apart    pin every peer's server and client threads: both to CPU 0 (same)
                      or the server to CPU 0 and the client to CPU 1 (apart); unpinned
                      (default), the scheduler puts them on one CPU or two, run by run
  --tcp-congestion NAME   every peer's sockets use this TCP congestion control (e.g.
                      cubic; default: the host's, which every table names); the rados
                      peer's client socket is the crate's own and keeps the default
  --threads           compare mode: under each peer's row, what each of its threads did:
                      user and kernel CPUs, sleeps, preemptions, reads and writes per
                      round trip (read/write calls only: recv*/send* are not counted),
                      CPU moves
  --quiet             no progress line";

fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>().map(|n| n * mult).map_err(|e| format!("bad size {s:?}: {e}"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("bad seconds {s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad seconds {s:?}: {e}"))
}

impl Args {
    /// Parses `argv` (without the program name).
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut a = Args::default();
        let mut conns_given = false;
        let mut auth: Option<bool> = None;
        let mut proto_given = false;
        let mut mode_given = false;
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
            match arg.as_str() {
                "compare" => a.mode = Mode::Compare,
                "matrix" | "--matrix" => a.mode = Mode::Matrix,
                "modes" => a.mode = Mode::Modes,
                "conns" => a.mode = Mode::Conns,
                "server" => a.mode = Mode::Server,
                "client" => a.mode = Mode::Client,
                "idle" => a.mode = Mode::Idle,
                "floor" => a.mode = Mode::Floor,
                "crc" => a.mode = Mode::Crc,
                "crypto" => a.mode = Mode::Crypto,
                "idle-clients" => a.mode = Mode::IdleClients,
                "--peers" => {
                    a.peers =
                        value("--peers")?.split(',').map(Peer::parse).collect::<Result<_, _>>()?;
                    a.peers_given = true;
                }
                "--lossless" => a.variant.lossless = true,
                "--proto" => {
                    proto_given = true;
                    a.variant.v2 = match value("--proto")?.as_str() {
                        "v1" => false,
                        "v2" => true,
                        other => return Err(format!("--proto v1|v2, not {other:?}")),
                    }
                }
                "--mode" => {
                    mode_given = true;
                    a.variant.secure = match value("--mode")?.as_str() {
                        "crc" => false,
                        "secure" => true,
                        other => return Err(format!("--mode crc|secure, not {other:?}")),
                    }
                }
                "--auth" => {
                    auth = Some(match value("--auth")?.as_str() {
                        "none" => false,
                        "cephx" => true,
                        other => return Err(format!("--auth none|cephx, not {other:?}")),
                    })
                }
                "--queued" => a.variant.queued = true,
                "--size" => a.size = parse_size(&value("--size")?)?,
                "--reply-size" => a.reply_size = parse_size(&value("--reply-size")?)?,
                "--depth" => a.depth = number(value("--depth")?)?,
                "--conns" => {
                    a.conns = number(value("--conns")?)?;
                    conns_given = true;
                }
                "--workers" => a.workers = number(value("--workers")?)?,
                "--runs" => a.runs = number(value("--runs")?)?,
                "--busy-retries" => a.busy_retries = number(value("--busy-retries")?)?,
                "--duration" => a.duration = Some(parse_secs(&value("--duration")?)?),
                "--stall" => a.stall = parse_secs(&value("--stall")?)?,
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
                "--plot" => a.plot = Some(value("--plot")?.into()),
                "--flamegraph" => a.flamegraph = Some(value("--flamegraph")?.into()),
                "--busy-poll" => {
                    let us = number(value("--busy-poll")?)?;
                    a.busy_poll = Duration::from_micros(us as u64);
                }
                "--pin" => a.pin = Some(crate::pin::Pin::parse(&value("--pin")?)?),
                "--tcp-congestion" => a.tcp_congestion = Some(value("--tcp-congestion")?),
                "--quiet" => a.progress = false,
                "--threads" => a.threads = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if a.mode == Mode::Conns && !conns_given {
            a.conns = 1000;
        }
        if a.mode == Mode::Idle {
            // Its connections come from a child process's v1 state machines, lossy, to a
            // server answering by fast dispatch with auth none: these would change
            // nothing, so a run with them would report the default's figure as theirs.
            let given = [
                (proto_given, "--proto"),
                (a.variant.lossless, "--lossless"),
                (a.variant.queued, "--queued"),
                (mode_given, "--mode"),
                (auth.is_some(), "--auth"),
            ];
            let given: Vec<&str> = given.iter().filter(|(on, _)| *on).map(|(_, f)| *f).collect();
            if !given.is_empty() {
                return Err(format!(
                    "idle does not take {}: its connections are msgr v1, lossy, auth none, \
                     answered by fast dispatch",
                    given.join(", ")
                ));
            }
        }
        // Secure mode's keys come from cephx: it implies it, and refuses auth none.
        a.variant.cephx = match auth {
            Some(false) if a.variant.secure => {
                return Err("--mode secure needs --auth cephx: secure mode's keys come from \
                            the cephx exchange"
                    .into())
            }
            Some(cephx) => cephx || a.variant.secure,
            None => a.variant.secure,
        };
        // `modes` and `conns` have peers of their own, chosen here so that the options
        // below apply to them as to the default table's.
        if !a.peers_given {
            match a.mode {
                Mode::Modes => a.peers = Peer::MODES.to_vec(),
                Mode::Conns => a.peers = Peer::SCALING.to_vec(),
                _ => {}
            }
        }
        // `--lossless` / `--queued` / `--proto` apply to the plain asyncmsgr peer; with
        // `--proto v2` the default table's separate v2 row would repeat it (and with
        // `--lossless` or `--queued`, a row of `modes`).
        for p in &mut a.peers {
            if *p == Peer::Asyncmsgr(MsgrVariant::V1) {
                *p = Peer::Asyncmsgr(a.variant);
            }
        }
        if !a.peers_given {
            let mut seen = Vec::with_capacity(a.peers.len());
            a.peers.retain(|p| {
                let first = !seen.contains(p);
                seen.push(*p);
                first
            });
        }
        if a.variant.secure && !a.variant.v2 {
            return Err("--mode secure needs --proto v2: msgr v1 has no secure mode \
                        (only message signatures)"
                .into());
        }
        if a.variant.cephx && !a.variant.v2 {
            // Only msgr2 reports what the handshake negotiated, so only there can the
            // run check that both ends really ran it.
            return Err("--auth cephx needs --proto v2".into());
        }
        if a.variant.cephx && matches!(a.mode, Mode::Server | Mode::Client) {
            // The cephx keys come from a key server in this process; two processes
            // would need a keyring both read.
            return Err("--auth cephx and --mode secure run in-process only (compare, \
                        matrix), not in server/client mode: the cephx keys live in one \
                        process"
                .into());
        }
        if a.depth == 0 || a.conns == 0 || a.workers == 0 || a.runs == 0 || a.peers.is_empty() {
            return Err(
                "--depth, --conns, --workers, --runs and --peers must not be 0/empty".into()
            );
        }
        if a.stall.is_zero() {
            return Err("--stall must be above 0".into());
        }
        if a.threads && a.mode != Mode::Compare {
            // The other modes print medians or one process's side, not a row per run.
            return Err("--threads prints under each run's row: compare mode only".into());
        }
        Ok(a)
    }

    /// The measured time of one run: `--duration`, else 10 s (5 s per run in the modes
    /// that run many cells).
    pub fn duration(&self) -> Duration {
        self.duration.unwrap_or(match self.mode {
            Mode::Matrix | Mode::Modes | Mode::Conns => Duration::from_secs(5),
            _ => Duration::from_secs(10),
        })
    }

    /// Payload bytes of one round trip.
    pub fn rt_bytes(&self) -> usize {
        self.size + self.reply_size
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_are_the_issue_s() {
        let a = parse("").unwrap();
        assert_eq!((a.size, a.depth, a.conns, a.crc), (4096, 32, 1, true));
        assert_eq!(a.duration(), Duration::from_secs(10));
        assert_eq!(a.peers, Peer::DEFAULT.to_vec());
    }

    #[test]
    fn peers_and_variants() {
        let a =
            parse("--peers asyncmsgr,lossless,queued,queued-server,tokio,naive,rados --lossless")
                .unwrap();
        let names: Vec<String> = a.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            [
                "asyncmsgr+lossless",
                "asyncmsgr+lossless",
                "asyncmsgr+queued",
                "asyncmsgr+queued-server",
                "tokio-ct64",
                "std-naive (no crc, u32)",
                "rados-msgr2"
            ]
        );
        let busy = parse("--peers busy,asyncmsgr+busy-poll").unwrap();
        let names: Vec<String> = busy.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["asyncmsgr+busy-poll", "asyncmsgr+busy-poll"]);
        let late = parse("--peers late,asyncmsgr+late-batches").unwrap();
        let names: Vec<String> = late.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["asyncmsgr+late-batches", "asyncmsgr+late-batches"]);
        assert!(parse("--peers early").is_err(), "early batches are the default now");
        assert!(parse("--peers quic").is_err());
        assert_eq!(parse("conns").unwrap().conns, 1000);
        assert_eq!(parse("conns --conns 50").unwrap().conns, 50);
        assert_eq!(parse("matrix").unwrap().duration(), Duration::from_secs(5));
        assert_eq!(
            parse("--size 1m --duration 0.5").unwrap().duration(),
            Duration::from_millis(500)
        );
        assert!(parse("--stall 0").is_err());
    }

    #[test]
    fn proto_and_mode() {
        let names = |a: Args| a.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let a = parse("").unwrap();
        assert_eq!(names(a)[..3], ["asyncmsgr", "asyncmsgr-v2", "asyncmsgr-v2-secure"]);
        // --proto v2 makes the asyncmsgr row msgr2: the table has it once.
        let a = parse("--proto v2").unwrap();
        assert_eq!(names(a), ["asyncmsgr-v2", "asyncmsgr-v2-secure", "tokio-ct64", "std-batched"]);
        // --mode secure makes it secure mode: the crc row stays beside it.
        let a = parse("--proto v2 --mode secure").unwrap();
        assert_eq!(names(a), ["asyncmsgr-v2-secure", "asyncmsgr-v2", "tokio-ct64", "std-batched"]);
        let a = parse("--peers asyncmsgr,v2,v2s").unwrap();
        assert_eq!(names(a), ["asyncmsgr", "asyncmsgr-v2", "asyncmsgr-v2-secure"]);
        let a = parse("--proto v2 --lossless --peers asyncmsgr,tokio").unwrap();
        assert_eq!(names(a), ["asyncmsgr-v2+lossless", "tokio-ct64"]);
        assert!(parse("--proto v3").is_err());
        assert!(!parse("--mode crc").unwrap().variant.secure);
        let v1 = parse("--mode secure").unwrap_err();
        assert!(v1.contains("needs --proto v2"), "{v1}");
        assert!(parse("server --proto v2 --mode secure").is_err());
        assert!(parse("--mode plain").is_err());
    }

    // idle's connections are msgr v1, lossy, auth none and answered by fast dispatch
    // whatever the options: the options that would change that are refused, not ignored.
    #[test]
    fn idle_refuses_the_variant_options() {
        assert!(parse("idle --conns 100").is_ok());
        assert!(parse("idle --crc off --workers 1").is_ok());
        for (options, named) in [
            ("--proto v2", "--proto"),
            ("--proto v1", "--proto"),
            ("--lossless", "--lossless"),
            ("--queued", "--queued"),
            ("--mode crc", "--mode"),
            ("--auth none", "--auth"),
            ("--proto v2 --mode secure", "--proto, --mode"),
        ] {
            let e = parse(&format!("idle --conns 100 {options}")).unwrap_err();
            assert!(e.contains(named) && e.contains("idle"), "{options}: {e}");
        }
        // The same options stay fine elsewhere.
        assert!(parse("conns --proto v2 --lossless --queued").is_ok());
    }

    /// `modes` and `conns` choose their own peers, and `--proto`, `--lossless`, `--queued`
    /// (accepted for them) apply to those peers: the run is what its command line says,
    /// not the plain asyncmsgr row under a command line that asked for another.
    #[test]
    fn the_modes_own_peers_take_the_variant_options() {
        let names =
            |s: &str| parse(s).unwrap().peers.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(names("conns"), ["asyncmsgr", "tokio-ct64"]);
        assert_eq!(names("conns --proto v2 --lossless"), ["asyncmsgr-v2+lossless", "tokio-ct64"]);
        assert_eq!(
            names("modes"),
            ["asyncmsgr", "asyncmsgr+lossless", "asyncmsgr+queued", "asyncmsgr+queued-server"]
        );
        assert_eq!(names("modes --proto v2")[0], "asyncmsgr-v2");
        assert_eq!(
            names("modes --lossless"),
            ["asyncmsgr+lossless", "asyncmsgr+queued", "asyncmsgr+queued-server"]
        );
        assert_eq!(names("conns --peers asyncmsgr,std"), ["asyncmsgr", "std-batched"]);
    }

    #[test]
    fn tcp_congestion() {
        assert_eq!(parse("").unwrap().tcp_congestion, None);
        let a = parse("matrix --tcp-congestion cubic").unwrap();
        assert_eq!(a.tcp_congestion.as_deref(), Some("cubic"));
        assert!(parse("--tcp-congestion").is_err());
    }

    #[test]
    fn threads() {
        assert!(!parse("").unwrap().threads);
        assert!(parse("--size 64 --threads").unwrap().threads);
        assert!(parse("matrix --threads").is_err());
    }

    #[test]
    fn pin() {
        assert_eq!(parse("").unwrap().pin, None);
        assert_eq!(parse("--pin same").unwrap().pin, Some(crate::pin::Pin::Same));
        assert_eq!(parse("matrix --pin apart").unwrap().pin, Some(crate::pin::Pin::Apart));
        assert!(parse("--pin both").is_err());
        assert!(parse("--pin").is_err());
    }
}
