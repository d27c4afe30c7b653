//! `--pin same|apart`: where the two sides' threads run. Unpinned, the scheduler decides,
//! and on a two-CPU machine it puts a request/reply pair's two busy threads on one CPU
//! (they then take turns) or on two (they overlap) by how they wake each other — a choice
//! that moved a cell's result by 1.5× between runs and between peers. Pinned, every peer
//! runs with the same placement: `same` puts both sides on CPU 0, `apart` the server on
//! CPU 0 and the client on CPU 1.
//!
//! Threads are found by name (`/proc/self/task/*/comm`): every peer names its server
//! side's threads `…server…` and its client side's `…client…`. asyncmsgr's dispatch
//! threads (`ms_dispatch`, one per messenger) are left where the scheduler puts them.

use std::io;
use std::time::Duration;

/// Where the server's and the client's threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Both sides on CPU 0: they take turns on one CPU.
    Same,
    /// The server on CPU 0, the client on CPU 1.
    Apart,
}

impl Pin {
    /// Parses `same` or `apart`.
    pub fn parse(s: &str) -> Result<Pin, String> {
        match s {
            "same" => Ok(Pin::Same),
            "apart" => Ok(Pin::Apart),
            other => Err(format!("--pin same|apart, not {other:?}")),
        }
    }

    /// The server's CPU and the client's.
    fn cpus(self) -> (usize, usize) {
        match self {
            Pin::Same => (0, 0),
            Pin::Apart => (0, 1),
        }
    }

    /// How the report's header names it.
    pub fn label(self) -> &'static str {
        match self {
            Pin::Same => "both sides pinned to CPU 0",
            Pin::Apart => "server pinned to CPU 0, client to CPU 1",
        }
    }
}

/// Pins the running peer's threads, looking twice: a peer may start a thread as a
/// connection is accepted, just after its setup returned. Returns how many threads
/// were pinned at the second look.
pub fn apply(pin: Pin) -> io::Result<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server, client) = pin.cpus();
    if server.max(client) >= cpus {
        return Err(io::Error::other(format!("--pin {pin:?} needs {} CPUs", client + 1)));
    }
    pin_named(server, client)?;
    std::thread::sleep(Duration::from_millis(50));
    pin_named(server, client)
}

fn pin_named(server: usize, client: usize) -> io::Result<usize> {
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        // A thread that ended since the listing has no comm left: nothing to pin.
        let Ok(name) = std::fs::read_to_string(entry.path().join("comm")) else { continue };
        let cpu = if name.contains("server") {
            server
        } else if name.contains("client") {
            client
        } else {
            continue;
        };
        set_affinity(tid, cpu)?;
        pinned += 1;
    }
    Ok(pinned)
}

fn set_affinity(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    match event_center::pin_thread(tid, cpu) {
        // The thread ended between the listing and now.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r,
    }
}

/// `std::thread::spawn` with a name (which `--pin` goes by).
pub fn spawn_named<F, T>(name: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("spawn a thread (std::thread::spawn panics the same way)")
}
