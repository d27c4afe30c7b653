//! The machine-load figures every table carries: another process's CPU time is seen, this
//! process's own is not.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bench::machine::{parse_pid_stat, Sample};
use bench::report::cpu_time;

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

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant and takes no pointers.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
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
    drop(spinner);
    let other = after.load_since(&before).other_cpus * secs;
    assert!(other >= 0.28, "another process's 0.3 s of CPU seen as {other:.3} s");

    // This process burns 0.3 s of CPU: none of it is another load.
    let before = Sample::take().unwrap();
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    let mut x = 0u64;
    while cpu_time() - cpu0 < Duration::from_millis(300) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    let after = Sample::take().unwrap();
    let other = after.load_since(&before).other_cpus * t0.elapsed().as_secs_f64();
    assert!(other < 0.2, "our own 0.3 s of CPU counted as another load ({other:.3} s)");
}
