//! Results of one run: throughput, round-trip percentiles, CPU per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

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

/// A round-trip histogram in nanoseconds (1 µs … 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The outcome of one measured run.
#[derive(Clone, Debug)]
pub struct Report {
    /// What ran ("asyncmsgr", "std::net").
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
}

impl Report {
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

    /// One table row.
    pub fn row(&self) -> String {
        format!(
            "{:<10} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>12.2}",
            self.name,
            self.rate(),
            self.mbps(),
            self.pct_us(0.5),
            self.pct_us(0.99),
            self.pct_us(0.999),
            self.cpu_us_per_rt(),
        )
    }

    /// The table header matching [`Report::row`].
    pub fn header() -> String {
        format!(
            "{:<10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12}",
            "peer", "rt/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "cpu us/rt"
        )
    }
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
