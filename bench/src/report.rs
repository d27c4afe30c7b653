//! Results of one run: throughput, round-trip percentiles, CPU per round trip, resets;
//! the comparison table; [`measure`], the harness every in-process peer runs under; a
//! live progress line.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use hdrhistogram::Histogram;

use crate::args::Args;
use crate::machine::{Load, Sample};
pub use crate::verify::new_histogram;
use crate::verify::{self, Signal};

/// A measured window: wall time, this process's CPU time and the rest of the machine's
/// load from [`open`](Window::open) to [`close`](Window::close).
pub struct Window {
    t0: Instant,
    cpu0: Duration,
    machine: Option<Sample>,
}

impl Window {
    /// Starts the window now.
    pub fn open() -> Window {
        // Looked at first: its /proc walk is outside the measured time and CPU.
        let machine = Sample::take().ok();
        Window { t0: Instant::now(), cpu0: cpu_time(), machine }
    }

    /// Ends the window: (elapsed, CPU time, the rest of the machine's load).
    pub fn close(self) -> (Duration, Duration, Option<Load>) {
        let elapsed = self.t0.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu0);
        let load = match (self.machine, Sample::take()) {
            (Some(before), Ok(after)) => Some(after.load_since(&before)),
            _ => None,
        };
        (elapsed, cpu, load)
    }
}

/// Process CPU time (user + system) so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The outcome of one measured run.
#[derive(Clone, Debug)]
pub struct Report {
    /// What ran ("asyncmsgr", "tokio-ct64", …).
    pub name: String,
    /// Round trips completed in the measured window.
    pub round_trips: u64,
    /// Request + reply payload bytes moved.
    pub bytes: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// Process CPU time over the window.
    pub cpu: Duration,
    /// Round-trip times.
    pub rtt: Histogram<u64>,
    /// Connection resets seen by the client (`ms_handle_reset` + `ms_handle_remote_reset`).
    pub resets: u64,
    /// What the rest of the machine did meanwhile (`None`: not measured).
    pub machine: Option<Load>,
    /// Why the run is void (reset with requests in flight, bad frame, reply out of order,
    /// traffic stopped), if it is.
    pub failure: Option<String>,
    /// What each busy thread did (`--threads`; `None` otherwise).
    pub threads: Option<crate::threads::PerThread>,
}

impl Report {
    /// A report of `round_trips` of `per_rt_bytes` payload each.
    pub fn new(
        name: impl Into<String>,
        round_trips: u64,
        per_rt_bytes: usize,
        elapsed: Duration,
        cpu: Duration,
        rtt: Histogram<u64>,
    ) -> Report {
        Report {
            name: name.into(),
            round_trips,
            bytes: round_trips * per_rt_bytes as u64,
            elapsed,
            cpu,
            rtt,
            resets: 0,
            machine: None,
            failure: None,
            threads: None,
        }
    }

    /// Round trips per second.
    pub fn rate(&self) -> f64 {
        self.round_trips as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Payload megabytes (10^6) per second, both directions.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Percentile of the round trip in microseconds.
    pub fn pct_us(&self, q: f64) -> f64 {
        self.rtt.value_at_quantile(q) as f64 / 1000.0
    }
    /// CPU microseconds per round trip (both ends, since both run in this process).
    pub fn cpu_us_per_rt(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / (self.round_trips.max(1) as f64)
    }
}

/// `reference ÷ other`, printed as `x1.23` (a dash when undefined).
fn ratio(reference: f64, other: f64) -> String {
    if other > 0.0 && reference.is_finite() && other.is_finite() {
        format!("x{:.2}", reference / other)
    } else {
        "-".into()
    }
}

/// One table of runs with the same parameters: a row per peer, and the first row's
/// throughput, CPU per round trip and p50 divided by each other row's (so `rt/s x1.30`
/// means the first row did 1.3 times the round trips; `cpu x0.80` that it spent 80 % of
/// the CPU per round trip).
pub fn table(reports: &[Report]) -> String {
    let mut out = format!(
        "{:<26} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}   {:<9} {:>7} {:>7} {:>7}\n",
        "peer",
        "rt/s",
        "MB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "cpu us",
        "resets",
        "ref/peer:",
        "rt/s",
        "cpu",
        "p50"
    );
    let reference = reports.first();
    for (i, r) in reports.iter().enumerate() {
        let ratios = match reference {
            Some(f) if i > 0 => format!(
                "{:<9} {:>7} {:>7} {:>7}",
                "",
                ratio(f.rate(), r.rate()),
                ratio(f.cpu_us_per_rt(), r.cpu_us_per_rt()),
                ratio(f.pct_us(0.5), r.pct_us(0.5)),
            ),
            _ => String::new(),
        };
        out += &format!(
            "{:<26} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>6}   {}\n",
            r.name,
            r.rate(),
            r.mbps(),
            r.pct_us(0.5),
            r.pct_us(0.99),
            r.pct_us(0.999),
            r.cpu_us_per_rt(),
            r.resets,
            ratios.trim_end(),
        );
        if let Some(why) = &r.failure {
            out += &format!("  {} FAILED: {why}\n", r.name);
        }
        if let Some(per_thread) = &r.threads {
            out += &crate::threads::lines(&r.name, per_thread);
        }
    }
    let loads: Vec<Load> = reports.iter().filter_map(|r| r.machine).collect();
    out += &crate::machine::summary(&loads);
    out.push('\n');
    out
}

/// What a peer's `start` hands back: joins its threads and merges their histograms.
pub type Join = Box<dyn FnOnce() -> io::Result<Histogram<u64>>>;

/// Measures one peer in this process: `start(deadline, done, signals)` sets up its
/// server and clients (they count round trips in `done` and report on `signals`, and
/// stop sending at `deadline`); the run lasts until every connection drained or one
/// failed ([`verify::watch`]). CPU time covers the whole process over the same window.
/// After a failure the peer's threads are not joined (they may be blocked on a silent
/// socket); the process reports the failure and exits.
pub fn measure(
    args: &Args,
    name: &str,
    start: impl FnOnce(Instant, Arc<AtomicU64>, Sender<Signal>) -> io::Result<Join>,
) -> io::Result<Report> {
    /// Generous: the stall check, not this, is what notices a dead run.
    const GRACE: Duration = Duration::from_secs(60);
    /// How long before the deadline `--threads` takes its second look.
    const LOOK_AHEAD: Duration = Duration::from_millis(50);
    let (signals, signals_rx) = crossbeam_channel::unbounded();
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(name.to_string(), done.clone(), args.progress);
    // Before the window: its /proc walk is outside the measured time and CPU.
    let threads_before = if args.threads { Some(crate::threads::take()?) } else { None };
    let window = Window::open();
    let deadline = Instant::now() + args.duration();
    let join = start(deadline, done.clone(), signals)?;
    // The second look is taken just before the deadline, while the peer's threads still
    // run: some end within a millisecond of it, as soon as their last reply is in.
    let threads_after = threads_before.map(|before| {
        let done = done.clone();
        let at = deadline.checked_sub(LOOK_AHEAD).unwrap_or(deadline);
        std::thread::spawn(move || {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let after = crate::threads::take()?;
            Ok::<_, io::Error>(crate::threads::PerThread {
                round_trips: done.load(Ordering::Relaxed),
                loads: crate::threads::since(&before, &after),
            })
        })
    });
    if let Some(pin) = args.pin {
        if crate::pin::apply(pin)? == 0 {
            return Err(io::Error::other(format!("--pin: {name} has no thread to pin")));
        }
    }
    let outcome = verify::watch(&signals_rx, args.conns, &done, args.stall, deadline + GRACE);
    let (elapsed, cpu, machine) = window.close();
    let threads = match threads_after {
        Some(look) => {
            Some(look.join().map_err(|_| io::Error::other("--threads: the look panicked"))??)
        }
        None => None,
    };
    progress.stop();
    let (rtt, outcome) = match outcome {
        Ok(()) => (join()?, verify::late_failure(&signals_rx)),
        Err(why) => (new_histogram(), Err(why)),
    };
    let n = done.load(Ordering::Relaxed);
    let mut report = Report::new(name, n, args.rt_bytes(), elapsed, cpu, rtt);
    report.machine = machine;
    report.failure = outcome.err();
    report.threads = threads;
    Ok(report)
}

/// A live progress line on stderr, once a second, from a counter the run increments.
pub struct Progress {
    stop: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts printing `label` and the rate of `counter` every second (if `enabled`).
    pub fn start(label: String, counter: Arc<AtomicU64>, enabled: bool) -> Progress {
        let stop = Arc::new(AtomicU64::new(0));
        let thread = enabled.then(|| {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-progress".into())
                .spawn(move || {
                    let start = Instant::now();
                    let mut last = counter.load(Ordering::Relaxed);
                    while stop.load(Ordering::Relaxed) == 0 {
                        std::thread::park_timeout(Duration::from_secs(1));
                        if stop.load(Ordering::Relaxed) != 0 {
                            break;
                        }
                        let now = counter.load(Ordering::Relaxed);
                        eprint!(
                            "\r{label}: {:>5.1}s  {:>10} rt/s  total {:>10}   ",
                            start.elapsed().as_secs_f64(),
                            now - last,
                            now
                        );
                        last = now;
                    }
                    eprintln!();
                })
                .ok()
        });
        Progress { stop, thread: thread.flatten() }
    }

    /// Stops the line.
    pub fn stop(mut self) {
        self.stop.store(1, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
