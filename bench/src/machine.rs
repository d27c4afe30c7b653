//! What else the machine did while a run was measured: CPU time of other processes and
//! time the hypervisor stole. On a 2-CPU machine a single busy process elsewhere changes
//! where a pair's threads run and so which peer wins (README, "two regimes"); every
//! table carries these figures so a reader can tell a quiet run from a busy one.
//!
//! Read from `/proc`: each process's `utime + stime` (`/proc/PID/stat`), this process
//! and kernel threads left out (softirq work done for our sockets by `ksoftirqd` is ours,
//! not another load), and the machine's `steal` (`/proc/stat`). Processes that start
//! during the window count in full; one that starts and exits inside it is missed.
//! Resolution is the kernel's clock tick (10 ms at `USER_HZ` 100).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Other processes' CPU and steal together at or above this many CPUs make a run one
/// that ran beside other work: both take CPU from the run's threads, so 0.15 of each
/// weighs as 0.3 of one.
pub const BUSY_CPUS: f64 = 0.25;

/// One look at the machine.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    /// utime + stime in ticks of every other user-space process, by pid.
    others: HashMap<u32, u64>,
    /// The machine's steal ticks (all CPUs).
    steal: u64,
}

/// What the rest of the machine did over a window, averaged over it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// CPUs' worth of other processes' time (1.0: one CPU busy the whole window).
    pub other_cpus: f64,
    /// CPUs' worth of time the hypervisor ran something else on our CPUs.
    pub steal_cpus: f64,
}

impl Load {
    /// Whether the window ran beside other work: other processes' CPU plus steal reached
    /// [`BUSY_CPUS`].
    pub fn is_busy(&self) -> bool {
        self.other_cpus + self.steal_cpus >= BUSY_CPUS
    }
}

/// The fields after the command of one `/proc/PID/stat` line (the command may hold
/// spaces and parentheses; it ends at the last `)`): (flags, utime + stime).
pub fn parse_pid_stat(line: &str) -> Option<(u64, u64)> {
    parse_stat_times(line).map(|(flags, utime, stime)| (flags, utime + stime))
}

/// [`parse_pid_stat`]'s fields apart: (flags, utime, stime). A thread's
/// `/proc/PID/task/TID/stat` has the same layout.
pub fn parse_stat_times(line: &str) -> Option<(u64, u64, u64)> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the command: state, ppid, pgrp, session, tty_nr, tpgid, flags (field 9), …,
    // utime (14), stime (15).
    let flags = fields.nth(6)?.parse().ok()?;
    let utime = fields.nth(4)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((flags, utime, stime))
}

/// The steal ticks of `/proc/stat`'s first (`cpu `) line.
pub fn parse_steal(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal …
    line.split_ascii_whitespace().nth(8)?.parse().ok()
}

/// Clock ticks per second of `/proc`'s times.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant and takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

impl Sample {
    /// Looks at every process now.
    pub fn take() -> io::Result<Sample> {
        let me = std::process::id();
        let mut others = HashMap::new();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            // A process may exit between the listing and the read.
            let Ok(line) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((flags, ticks)) = parse_pid_stat(&line) {
                if flags & PF_KTHREAD == 0 {
                    others.insert(pid, ticks);
                }
            }
        }
        let steal = parse_steal(&std::fs::read_to_string("/proc/stat")?).unwrap_or(0);
        Ok(Sample { at: Instant::now(), others, steal })
    }

    /// Whether process `pid` is among those this sample counts.
    pub fn counts(&self, pid: u32) -> bool {
        self.others.contains_key(&pid)
    }

    /// What the rest of the machine did between `earlier` and this sample.
    pub fn load_since(&self, earlier: &Sample) -> Load {
        let ticks: u64 = self
            .others
            .iter()
            .map(|(pid, &now)| now.saturating_sub(earlier.others.get(pid).copied().unwrap_or(0)))
            .sum();
        let secs = self.at.saturating_duration_since(earlier.at).as_secs_f64().max(1e-9);
        let hz = ticks_per_sec();
        Load {
            other_cpus: ticks as f64 / hz / secs,
            steal_cpus: self.steal.saturating_sub(earlier.steal) as f64 / hz / secs,
        }
    }
}

/// Round trips of the wake-up probe.
const WAKE_ROUND_TRIPS: usize = 2_000;

/// What waking a sleeping thread costs on this machine: the median round trip of two
/// threads that each sleep (`park`, a futex wait with no spin) until the other wakes
/// them, in microseconds (two wake-ups each). It tells hosts apart better than any
/// setting we can read: where an idle CPU halts and a wake-up goes through the
/// hypervisor it is tens of µs, and a peer that sleeps and is woken per write loses
/// most; on the hosts we ran on since, 1.3–7 µs. Measured once per process.
pub fn wake_round_trip_us() -> Option<f64> {
    static MEASURED: OnceLock<Option<f64>> = OnceLock::new();
    *MEASURED.get_or_init(|| measure_wake_round_trip(WAKE_ROUND_TRIPS))
}

/// See [`wake_round_trip_us`]; `None` if the probe's thread could not be started.
fn measure_wake_round_trip(round_trips: usize) -> Option<f64> {
    // Odd: the partner's turn; even: ours. `stop` ends the partner.
    let turn = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let me = thread::current();
    let partner = {
        let (turn, stop) = (Arc::clone(&turn), Arc::clone(&stop));
        thread::Builder::new()
            .name("wake-probe".into())
            .spawn(move || loop {
                let t = turn.load(Ordering::Acquire);
                if stop.load(Ordering::Acquire) {
                    break;
                }
                if t % 2 == 1 {
                    turn.store(t + 1, Ordering::Release);
                    me.unpark();
                } else {
                    thread::park();
                }
            })
            .ok()?
    };
    let mut times = Vec::with_capacity(round_trips);
    for i in 0..round_trips as u32 {
        let start = Instant::now();
        turn.store(2 * i + 1, Ordering::Release);
        partner.thread().unpark();
        // Bounded, so a lost wake-up cannot hang the benchmark (park may also return
        // spuriously): the loop looks again.
        while turn.load(Ordering::Acquire) != 2 * i + 2 {
            thread::park_timeout(Duration::from_millis(100));
        }
        times.push(start.elapsed());
    }
    stop.store(true, Ordering::Release);
    partner.thread().unpark();
    let _ = partner.join();
    times.sort();
    times.get(times.len() / 2).map(|d| d.as_secs_f64() * 1e6)
}

/// One line on the machine's state over a set of runs: the median and the largest
/// other load and steal, what a wake-up costs ([`wake_round_trip_us`]), and a warning
/// when a run ran beside other work.
pub fn summary(loads: &[Load]) -> String {
    if loads.is_empty() {
        return "machine during the runs: not measured".into();
    }
    let median_and_max = |f: fn(&Load) -> f64| {
        let mut v: Vec<f64> = loads.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (other, other_max) = median_and_max(|l| l.other_cpus);
    let (steal, steal_max) = median_and_max(|l| l.steal_cpus);
    let busy = loads.iter().filter(|l| l.is_busy()).count();
    let mut out = format!(
        "machine during the runs: other processes {other:.2} CPU (largest {other_max:.2}), \
         steal {steal:.2} CPU (largest {steal_max:.2})"
    );
    if let Some(us) = wake_round_trip_us() {
        out += &format!("; wake-up ping-pong (two threads that sleep) {us:.1} µs per round trip");
    }
    out += &format!("; {}", crate::net::describe());
    if busy > 0 {
        out += &format!(
            "\nWARNING: {busy} of {} runs ran beside other work (other processes and steal \
             together ≥ {BUSY_CPUS} CPU): the busy regime, not comparable with quiet figures",
            loads.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe finishes (its partner answers every turn, then exits) and measures
    /// something; what it measures depends on the machine, so no bound is asserted.
    #[test]
    fn the_wake_probe_completes_its_round_trips() {
        let us = measure_wake_round_trip(50).expect("probe thread");
        assert!(us > 0.0 && us.is_finite(), "{us}");
        let line = summary(&[Load::default()]);
        assert!(line.contains("wake-up ping-pong"), "{line}");
    }

    #[test]
    fn parses_a_stat_line_whose_command_has_spaces_and_parens() {
        // Fields from a real /proc/PID/stat, the command made awkward.
        let line = "4242 (a b) (c)) S 1 4242 4242 0 -1 4194560 120 0 0 0 37 5 0 0 20 0 3 0 \
                    100 1000 50 18446744073709551615";
        assert_eq!(parse_pid_stat(line), Some((4_194_560, 42)));
        assert_eq!(parse_stat_times(line), Some((4_194_560, 37, 5)), "utime and stime apart");
        assert_eq!(parse_pid_stat("4242 (x) S 1"), None, "truncated");
        assert_eq!(parse_pid_stat("no parens"), None);
    }

    #[test]
    fn parses_steal_from_the_machine_line() {
        let stat = "cpu  100 2 30 4000 5 0 6 77 0 0\ncpu0 50 1 15 2000 2 0 3 40 0 0\n";
        assert_eq!(parse_steal(stat), Some(77));
        assert_eq!(parse_steal("cpu0 1 2 3\n"), None);
    }

    /// Other processes and steal count together: each takes CPU from the run.
    #[test]
    fn a_run_is_busy_when_other_work_and_steal_together_reach_a_quarter_cpu() {
        let load = |other_cpus, steal_cpus| Load { other_cpus, steal_cpus };
        assert!(!load(0.2, 0.0).is_busy());
        assert!(!load(0.0, 0.2).is_busy());
        assert!(load(0.25, 0.0).is_busy());
        assert!(load(0.0, 0.25).is_busy());
        assert!(load(0.15, 0.15).is_busy(), "neither alone reaches 0.25, the two do");
        assert!(!load(0.12, 0.12).is_busy());
    }

    #[test]
    fn summary_warns_only_about_busy_runs() {
        let quiet = Load { other_cpus: 0.01, steal_cpus: 0.0 };
        let busy = Load { other_cpus: 0.9, steal_cpus: 0.0 };
        assert!(!summary(&[quiet, quiet]).contains("WARNING"));
        let s = summary(&[quiet, busy, quiet]);
        assert!(s.contains("1 of 3 runs"), "{s}");
        assert!(s.contains("largest 0.90"), "{s}");
    }
}
