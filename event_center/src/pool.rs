//! A fixed set of named worker threads, one [`EventCenter`] each.

use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{error, info, warn};
use parking_lot::Mutex;

use crate::center::EventCenter;
use crate::center_handle::CenterHandle;

const LOG: &str = "msgr::center";

/// How to build a [`WorkerPool`].
#[derive(Clone, Debug)]
pub struct WorkerPoolConfig {
    /// Number of worker threads (and centers); at least 1.
    pub workers: usize,
    /// Threads are named `{name_prefix}-{index}`.
    pub name_prefix: String,
    /// Pin worker `i` to CPU `i % available CPUs` (best effort: a failure is logged).
    pub pin_cpus: bool,
    /// Each worker polls without sleeping this long before it sleeps in `poll`
    /// ([`EventCenter::set_busy_poll`]): lower latency for a burning CPU. Zero (the
    /// default): off.
    pub busy_poll: Duration,
}

impl Default for WorkerPoolConfig {
    /// Three workers (Ceph's `ms_async_op_threads` default), `msgr-worker`, no pinning,
    /// no busy polling.
    fn default() -> Self {
        WorkerPoolConfig {
            workers: 3,
            name_prefix: "msgr-worker".to_owned(),
            pin_cpus: false,
            busy_poll: Duration::ZERO,
        }
    }
}

/// The worker threads, each running one center until [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct WorkerPool {
    /// Invariant: not empty (checked in `new`).
    handles: Vec<CenterHandle>,
    /// Taken out (not joined under the lock) by the first `shutdown`.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl WorkerPool {
    /// Creates every center, then spawns exactly `config.workers` threads running them.
    /// On a spawn failure the threads already started are stopped and joined.
    pub fn new(config: WorkerPoolConfig) -> io::Result<WorkerPool> {
        if config.workers == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a pool needs a worker"));
        }
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let pool = WorkerPool { handles: Vec::new(), threads: Mutex::new(Vec::new()) };
        let mut pool = pool;
        for index in 0..config.workers {
            let mut center = EventCenter::new(index)?;
            center.set_busy_poll(config.busy_poll);
            pool.handles.push(center.handle());
            let pin = config.pin_cpus.then_some(index % cpus);
            let thread = thread::Builder::new()
                .name(format!("{}-{index}", config.name_prefix))
                .spawn(move || {
                    if let Some(cpu) = pin {
                        match pin_current_thread(cpu) {
                            Ok(()) => info!(target: LOG, "worker {index} pinned to cpu {cpu}"),
                            Err(e) => warn!(target: LOG, "worker {index}: pin to cpu {cpu}: {e}"),
                        }
                    }
                    if let Err(e) = center.run() {
                        error!(target: LOG, "worker {index} stopped on error: {e}");
                    }
                })?;
            pool.threads.lock().push(thread);
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.handles.len()
    }

    /// The handle of worker `i`.
    ///
    /// # Panics
    /// If `i >= self.workers()`.
    pub fn handle(&self, i: usize) -> &CenterHandle {
        &self.handles[i]
    }

    /// Every worker's handle, in index order.
    pub fn handles(&self) -> &[CenterHandle] {
        &self.handles
    }

    /// The worker with the fewest references ([`CenterHandle::load`]); ties go to the lowest
    /// index. Ceph's `NetworkStack::get_worker`.
    #[doc(alias = "get_worker")]
    pub fn least_loaded(&self) -> &CenterHandle {
        let mut best = &self.handles[0];
        let mut best_load = best.load();
        for handle in &self.handles[1..] {
            let load = handle.load();
            if load < best_load {
                best = handle;
                best_load = load;
            }
        }
        best
    }

    /// Stops every center (handlers get [`Handler::shutdown`](crate::Handler::shutdown)),
    /// wakes them and joins every thread, holding no lock while joining. Idempotent; after
    /// it, posts to any worker return [`CenterError::Stopped`](crate::CenterError::Stopped).
    /// Called from a worker thread itself, that thread is not joined (it exits when its
    /// current callback returns).
    pub fn shutdown(&self) {
        for handle in &self.handles {
            handle.stop();
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        let me = thread::current().id();
        for thread in threads {
            if thread.thread().id() == me {
                continue;
            }
            let name = thread.thread().name().unwrap_or("worker").to_owned();
            if thread.join().is_err() {
                error!(target: LOG, "{name} panicked outside a handler");
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Pins the calling thread to `cpu` (what [`WorkerPoolConfig::pin_cpus`] does for each
/// worker; also for a test that must place a thread beside one).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_thread(0, cpu)
}

/// Pins thread `tid` of this process (0: the calling thread) to `cpu`.
pub fn pin_thread(tid: libc::pid_t, cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cpu beyond CPU_SETSIZE"));
    }
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set; CPU_SET writes
    // inside it (cpu < CPU_SETSIZE checked above); sched_setaffinity only reads `set`.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
