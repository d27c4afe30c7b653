//! `--flamegraph FILE.svg`: samples this process's threads while the asyncmsgr run
//! goes (SIGPROF on the process CPU clock, stacks unwound in-process by `pprof`) and
//! writes an interactive flamegraph, so no external `perf` or `inferno` install is
//! needed. The release profile keeps line tables, so frames have names.

use std::fs::File;
use std::io;
use std::path::Path;

/// Samples per CPU second asked for: prime, so sampling does not beat with periodic work.
/// The kernel delivers at most one per scheduler tick (`CONFIG_HZ`, 250 here) per core.
const FREQUENCY: i32 = 997;

/// Runs `f` under the profiler and writes the flamegraph of what ran meanwhile (every
/// thread of the process: client, server, workers, dispatch threads) to `path`.
pub fn profile<T>(path: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Samples that land in the unwinder itself or the vDSO are dropped (unwinding
        // from there can deadlock or crash in a signal handler). libc is kept: without
        // it every sample inside a syscall wrapper (read, writev, epoll_wait) is lost.
        .blocklist(&["libgcc", "vdso"])
        .build()
        .map_err(io::Error::other)?;
    let out = f()?;
    let report = guard.report().build().map_err(io::Error::other)?;
    drop(guard);
    report.flamegraph(File::create(path)?).map_err(io::Error::other)?;
    Ok(out)
}
