//! The machine-load figures every table carries: another process's CPU time is seen, this
//! process's own is not; a run that ran beside other work is run again.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bench::args::{Args, Peer};
use bench::machine::{parse_pid_stat, ticks_per_sec, Load, Sample};
use bench::report::Report;
use bench::run_quiet;

/// A busy-looping shell, killed when dropped (a failed assertion included).
struct Spinner(Child);

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CPU ticks `pid` has used so far.
fn ticks_of(pid: u32) -> u64 {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    parse_pid_stat(&line).unwrap().1
}

#[test]
fn another_process_counts_and_this_one_does_not() {
    let hz = ticks_per_sec();
    // Another process burns at least 0.3 s of CPU inside the window.
    let before = Sample::take().unwrap();
    let t0 = Instant::now();
    let spinner = Spinner(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap());
    let pid = spinner.0.id();
    let deadline = t0 + Duration::from_secs(30);
    while (ticks_of(pid) as f64) / hz < 0.3 {
        assert!(Instant::now() < deadline, "the spinner got no CPU in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = Sample::take().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    // Counted while it runs; this process never (its CPU is the run's own column).
    assert!(after.counts(pid), "the spinner is not counted");
    assert!(!after.counts(std::process::id()), "this process counted as another");
    drop(spinner);
    let other = after.load_since(&before).other_cpus * secs;
    assert!(other >= 0.28, "another process's 0.3 s of CPU seen as {other:.3} s");
}

/// A report whose window had `load`.
fn report_with(load: Option<Load>, failure: Option<&str>) -> Report {
    let mut h = bench::report::new_histogram();
    h.record(1000).unwrap();
    let mut r = Report::new("fake", 10, 64, Duration::from_secs(1), Duration::ZERO, h);
    r.machine = load;
    r.failure = failure.map(str::to_string);
    r
}

#[test]
fn a_busy_run_is_run_again_up_to_the_limit() {
    let busy = Load { other_cpus: 0.0, steal_cpus: 0.6 };
    let quiet = Load { other_cpus: 0.02, steal_cpus: 0.01 };
    let args = Args::default();
    assert_eq!(args.busy_retries, 2);
    let peer = Peer::Tokio;

    // Busy, busy, quiet: the third run is kept.
    let mut script = vec![Some(busy), Some(busy), Some(quiet)].into_iter();
    let mut calls = 0;
    let r = run_quiet(&args, peer, |_, _| {
        calls += 1;
        Ok(report_with(script.next().unwrap(), None))
    })
    .unwrap();
    assert_eq!((calls, r.machine), (3, Some(quiet)));

    // Always busy: two more runs, then the busy one is kept (the table warns of it).
    let mut calls = 0;
    let r = run_quiet(&args, peer, |_, _| {
        calls += 1;
        Ok(report_with(Some(busy), None))
    })
    .unwrap();
    assert_eq!((calls, r.machine), (3, Some(busy)));

    // A failed run, an unmeasured one and a quiet one are never run again.
    for (load, failure) in [(Some(busy), Some("reset")), (None, None), (Some(quiet), None)] {
        let mut calls = 0;
        let _ = run_quiet(&args, peer, |_, _| {
            calls += 1;
            Ok(report_with(load, failure))
        })
        .unwrap();
        assert_eq!(calls, 1, "{load:?} {failure:?}");
    }

    // --busy-retries 0 keeps the first run.
    let args = Args::parse(["--busy-retries", "0"].map(String::from)).unwrap();
    let mut calls = 0;
    let _ = run_quiet(&args, peer, |_, _| {
        calls += 1;
        Ok(report_with(Some(busy), None))
    })
    .unwrap();
    assert_eq!(calls, 1);
}
