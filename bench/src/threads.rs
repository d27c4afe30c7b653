//! `--threads`: what each thread of the process did over a measured run, from
//! `/proc/self/task/*`: user and kernel time, how often it slept and was preempted, its
//! reads and writes, and how often the scheduler moved it to another CPU.
//!
//! Why: two runs of one peer with the same settings can differ by 1.5× in round trips and
//! CPU per round trip on a two-CPU VM (README, "What bounds the goals not met"). The
//! table's totals cannot tell which end changed; per thread, the slow runs show as one
//! end's kernel time and the other's sleeps per round trip.
//!
//! The kernel counts reads and writes in `/proc/PID/task/TID/io` for `read`, `readv`,
//! `write` and `writev` (and their kin that go through the VFS), not for `recvfrom`,
//! `recvmsg`, `sendto` or `sendmsg`: a peer using those shows none. Resolution of the
//! CPU times is the kernel's clock tick (10 ms at `USER_HZ` 100).

use std::collections::HashMap;
use std::io;
use std::time::Instant;

/// One thread's counters at one look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counts {
    name: String,
    /// utime and stime, in clock ticks.
    user: u64,
    sys: u64,
    voluntary: u64,
    involuntary: u64,
    /// `syscr`, `syscw`, `rchar`, `wchar` of the thread's `io` file.
    reads: u64,
    writes: u64,
    read_bytes: u64,
    write_bytes: u64,
    /// `se.nr_migrations` (`None` where the kernel has no `sched` file).
    migrations: Option<u64>,
}

/// Every thread of this process at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    by_tid: HashMap<u32, Counts>,
}

/// What one thread did between two samples.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadLoad {
    /// Its name (`comm`), with its id when another thread has the same name.
    pub name: String,
    /// Thread id.
    pub tid: u32,
    /// CPUs' worth of user and of kernel time (1.0: one CPU the whole window).
    pub user_cpus: f64,
    /// See `user_cpus`.
    pub sys_cpus: f64,
    /// Voluntary context switches: the thread slept (`epoll_wait`, a futex, a blocking
    /// call).
    pub sleeps: u64,
    /// Involuntary context switches: it was preempted.
    pub preempted: u64,
    /// Read and write system calls the kernel counts for it (see the module's doc).
    pub reads: u64,
    /// See `reads`.
    pub writes: u64,
    /// Bytes those calls moved.
    pub read_bytes: u64,
    /// See `read_bytes`.
    pub write_bytes: u64,
    /// Moves to another CPU, where the kernel says.
    pub migrations: Option<u64>,
}

/// What the threads did over a run, and how many round trips it made meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PerThread {
    /// Round trips between the two samples.
    pub round_trips: u64,
    /// The threads that used at least 2 % of a CPU.
    pub loads: Vec<ThreadLoad>,
}

/// Threads that used less than this many CPUs over a run are left out of the table.
const SHOWN_CPUS: f64 = 0.02;

/// Reads every thread's counters now.
pub fn take() -> io::Result<Sample> {
    let mut by_tid = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may end between the listing and the reads: it is left out.
        if let Some(counts) = read_counts(&entry.path()) {
            by_tid.insert(tid, counts);
        }
    }
    Ok(Sample { at: Instant::now(), by_tid })
}

fn read_counts(dir: &std::path::Path) -> Option<Counts> {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let name = read("comm")?.trim_end().to_string();
    let (_, user, sys) = crate::machine::parse_stat_times(&read("stat")?)?;
    let status = read("status")?;
    let io = read("io").unwrap_or_default();
    let migrations = read("sched").and_then(|s| field(&s, "se.nr_migrations"));
    Some(Counts {
        name,
        user,
        sys,
        voluntary: field(&status, "voluntary_ctxt_switches").unwrap_or(0),
        involuntary: field(&status, "nonvoluntary_ctxt_switches").unwrap_or(0),
        reads: field(&io, "syscr").unwrap_or(0),
        writes: field(&io, "syscw").unwrap_or(0),
        read_bytes: field(&io, "rchar").unwrap_or(0),
        write_bytes: field(&io, "wchar").unwrap_or(0),
        migrations,
    })
}

/// The number after `key` and a `:` on the line that starts with `key` (the layout of
/// `status`, `io` and `sched`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        let value = rest.trim_start().strip_prefix(':')?;
        value.trim().parse().ok()
    })
}

/// What each thread alive at `after` did since `before` (a thread started in between
/// counts from zero), busiest kinds first: those that used at least 2 % of a CPU.
pub fn since(before: &Sample, after: &Sample) -> Vec<ThreadLoad> {
    let secs = after.at.saturating_duration_since(before.at).as_secs_f64().max(1e-9);
    let hz = crate::machine::ticks_per_sec();
    let zero = Counts::default();
    let mut loads: Vec<ThreadLoad> = after
        .by_tid
        .iter()
        .map(|(&tid, now)| {
            let then = before.by_tid.get(&tid).unwrap_or(&zero);
            let d = |a: u64, b: u64| a.saturating_sub(b);
            ThreadLoad {
                name: now.name.clone(),
                tid,
                user_cpus: d(now.user, then.user) as f64 / hz / secs,
                sys_cpus: d(now.sys, then.sys) as f64 / hz / secs,
                sleeps: d(now.voluntary, then.voluntary),
                preempted: d(now.involuntary, then.involuntary),
                reads: d(now.reads, then.reads),
                writes: d(now.writes, then.writes),
                read_bytes: d(now.read_bytes, then.read_bytes),
                write_bytes: d(now.write_bytes, then.write_bytes),
                migrations: now.migrations.map(|m| d(m, then.migrations.unwrap_or(0))),
            }
        })
        .filter(|l| l.user_cpus + l.sys_cpus >= SHOWN_CPUS)
        .collect();
    loads.sort_by(|a, b| a.name.cmp(&b.name).then(a.tid.cmp(&b.tid)));
    let names: Vec<String> = loads.iter().map(|l| l.name.clone()).collect();
    for l in &mut loads {
        if names.iter().filter(|n| **n == l.name).count() > 1 {
            l.name = format!("{}#{}", l.name, l.tid);
        }
    }
    loads
}

/// The per-thread lines printed under a peer's row: per round trip where a count is
/// per event, in CPUs where it is time.
pub fn lines(peer: &str, per_thread: &PerThread) -> String {
    let PerThread { round_trips, loads } = per_thread;
    if loads.is_empty() {
        return String::new();
    }
    let rt = (*round_trips).max(1) as f64;
    let per_call = |bytes: u64, calls: u64| {
        if calls == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", bytes as f64 / calls as f64)
        }
    };
    let mut out = format!(
        "  threads of {peer} (CPUs; counts per round trip):\n  {:<24} {:>5} {:>5} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6}\n",
        "thread", "user", "sys", "sleeps", "preempted", "reads", "B/read", "writes", "B/write", "moves"
    );
    for l in loads {
        out += &format!(
            "  {:<24} {:>5.2} {:>5.2} {:>8.4} {:>9.4} {:>8.4} {:>8} {:>8.4} {:>8} {:>6}\n",
            l.name,
            l.user_cpus,
            l.sys_cpus,
            l.sleeps as f64 / rt,
            l.preempted as f64 / rt,
            l.reads as f64 / rt,
            per_call(l.read_bytes, l.reads),
            l.writes as f64 / rt,
            per_call(l.write_bytes, l.writes),
            l.migrations.map_or("-".to_string(), |m| m.to_string()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_read_from_its_own_line_only() {
        let status = "voluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t4\n";
        assert_eq!(field(status, "voluntary_ctxt_switches"), Some(17));
        assert_eq!(field(status, "nonvoluntary_ctxt_switches"), Some(4));
        let sched = "se.nr_migrations                             :                   12\n";
        assert_eq!(field(sched, "se.nr_migrations"), Some(12));
        assert_eq!(field("syscr: 9\n", "syscw"), None);
    }

    /// The calling thread's CPU time.
    fn thread_cpu() -> std::time::Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid timespec the call writes.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    #[test]
    fn a_busy_thread_s_run_is_counted_and_idle_threads_are_left_out() {
        let before = take().expect("read /proc/self/task");
        // Work this thread can be seen doing: CPU and some writes the kernel counts.
        let busy = std::thread::Builder::new()
            .name("thr-test-busy".into())
            .spawn(|| {
                // Spins for 200 ms of its own CPU time, not of the clock: on a loaded
                // machine a wall-clock spin may get too little CPU to show.
                let t0 = Instant::now();
                let mut x = 0u64;
                while thread_cpu() < std::time::Duration::from_millis(200)
                    && t0.elapsed() < std::time::Duration::from_secs(20)
                {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                let after = take().expect("read /proc/self/task");
                (x, after)
            })
            .expect("spawn");
        let (_, after) = busy.join().expect("join");
        let loads = since(&before, &after);
        let me = loads
            .iter()
            .find(|l| l.name == "thr-test-busy")
            .expect("the busy thread is in the table");
        assert!(me.user_cpus + me.sys_cpus > 0.1, "{me:?}");
        assert!(loads.iter().all(|l| l.user_cpus + l.sys_cpus >= SHOWN_CPUS));
        let text = lines("p", &PerThread { round_trips: 10, loads });
        assert!(text.contains("thr-test-busy"), "{text}");
    }
}
