//! A fixed set of named worker threads, one [`EventCenter`] each.

use std::fmt;
use std::io;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::Duration;

use log::{debug, error, info, warn};
use parking_lot::{Condvar, Mutex, MutexGuard};

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
pub struct WorkerPool {
    /// Invariant: not empty (checked in `new`).
    handles: Vec<CenterHandle>,
    /// Where the worker threads are in their life; changed only under this lock, joined
    /// only without it.
    workers: Mutex<Workers>,
    /// Notified when a shutdown finished joining (it left [`Workers::Joining`]).
    joined: Condvar,
}

/// The worker threads as the shutdowns hand them on.
enum Workers {
    /// Not joined yet: every worker until a shutdown takes them, or (after a shutdown on
    /// a worker thread, which cannot join itself) that worker alone.
    Unjoined(Vec<JoinHandle<()>>),
    /// One shutdown took the handles and joins these threads without the lock; the others
    /// wait for it, except these threads themselves, which its join waits for.
    Joining(Vec<ThreadId>),
    /// Every worker was joined.
    Joined,
}

impl fmt::Debug for WorkerPool {
    /// Copies the workers' state out of the lock first (without waiting for it, as
    /// `parking_lot`'s own `Debug` shows a held lock as `<locked>`): the formatter writes
    /// to the caller's sink (any code), never with the lock held.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (workers, threads): (&str, Vec<ThreadId>) = match self.workers.try_lock().as_deref() {
            Some(Workers::Unjoined(threads)) => {
                ("unjoined", threads.iter().map(|t| t.thread().id()).collect())
            }
            Some(Workers::Joining(ids)) => ("joining", ids.clone()),
            Some(Workers::Joined) => ("joined", Vec::new()),
            None => ("<locked>", Vec::new()),
        };
        f.debug_struct("WorkerPool")
            .field("handles", &self.handles)
            .field("workers", &workers)
            .field("threads", &threads)
            .finish_non_exhaustive()
    }
}

/// What a shutdown on thread `me` does about the workers ([`Workers::claim`]).
enum Claim {
    /// Join these: the handles are this caller's alone.
    Join(Vec<JoinHandle<()>>),
    /// Wait for [`WorkerPool::joined`] and claim again.
    Wait,
    /// Nothing to join: all were joined, or the caller is a worker another shutdown joins.
    Nothing,
}

impl Workers {
    /// Takes the handles for a shutdown on thread `me` (leaving `Joining`), or says why not.
    fn claim(&mut self, me: ThreadId) -> Claim {
        let (workers, claim) = match std::mem::replace(self, Workers::Joined) {
            Workers::Unjoined(threads) => {
                let ids = threads.iter().map(|t| t.thread().id()).collect();
                (Workers::Joining(ids), Claim::Join(threads))
            }
            Workers::Joining(ids) => {
                let claim = if ids.contains(&me) { Claim::Nothing } else { Claim::Wait };
                (Workers::Joining(ids), claim)
            }
            Workers::Joined => (Workers::Joined, Claim::Nothing),
        };
        *self = workers;
        claim
    }
}

impl WorkerPool {
    /// Creates every center, then spawns exactly `config.workers` threads running them.
    /// On a spawn failure the threads already started are stopped and joined.
    pub fn new(config: WorkerPoolConfig) -> io::Result<WorkerPool> {
        if config.workers == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a pool needs a worker"));
        }
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let mut handles = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        let mut failed = None;
        for index in 0..config.workers {
            match spawn_worker(&config, index, cpus) {
                Ok((handle, thread)) => {
                    handles.push(handle);
                    threads.push(thread);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let pool = WorkerPool {
            handles,
            workers: Mutex::new(Workers::Unjoined(threads)),
            joined: Condvar::new(),
        };
        match failed {
            Some(e) => {
                // Its drop stops and joins the workers already started.
                drop(pool);
                Err(e)
            }
            None => Ok(pool),
        }
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
    ///
    /// Every call returns only once every worker is joined: while one call joins, the
    /// others wait for it (as Ceph's `NetworkStack::stop`, which holds its lock across the
    /// join). Except on a worker thread, which cannot join itself: there the call joins
    /// the other workers (unless another call already joins them all: then it returns at
    /// once) and leaves its own thread, which exits when its current callback returns, to
    /// the next shutdown from another thread (or the drop).
    pub fn shutdown(&self) {
        for handle in &self.handles {
            handle.stop();
        }
        let me = thread::current().id();
        let mut announced = false;
        let mut workers = self.workers.lock();
        let threads = loop {
            match workers.claim(me) {
                Claim::Join(threads) => break threads,
                Claim::Nothing => return,
                Claim::Wait if !announced => {
                    announced = true;
                    // Logged without the lock (a logger is code we do not know); the claim
                    // is made again before waiting, so no notification is missed.
                    MutexGuard::unlocked(&mut workers, || {
                        debug!(target: LOG, "shutdown waits for the one joining the workers");
                    });
                }
                Claim::Wait => self.joined.wait(&mut workers),
            }
        };
        drop(workers);
        let mut own = None;
        for thread in threads {
            if thread.thread().id() == me {
                own = Some(thread);
                continue;
            }
            let name = thread.thread().name().unwrap_or("worker").to_owned();
            if thread.join().is_err() {
                error!(target: LOG, "{name} panicked outside a handler");
            }
        }
        *self.workers.lock() = match own {
            Some(thread) => Workers::Unjoined(vec![thread]),
            None => Workers::Joined,
        };
        self.joined.notify_all();
    }
}

/// Creates center `index` and spawns the worker thread that runs it.
fn spawn_worker(
    config: &WorkerPoolConfig,
    index: usize,
    cpus: usize,
) -> io::Result<(CenterHandle, JoinHandle<()>)> {
    let mut center = EventCenter::new(index)?;
    center.set_busy_poll(config.busy_poll);
    let handle = center.handle();
    let pin = config.pin_cpus.then_some(index % cpus);
    let thread = thread::Builder::new().name(format!("{}-{index}", config.name_prefix)).spawn(
        move || {
            if let Err(e) = block_sigpipe() {
                warn!(target: LOG, "worker {index}: blocking SIGPIPE: {e}");
            }
            if let Some(cpu) = pin {
                match pin_current_thread(cpu) {
                    Ok(()) => info!(target: LOG, "worker {index} pinned to cpu {cpu}"),
                    Err(e) => warn!(target: LOG, "worker {index}: pin to cpu {cpu}: {e}"),
                }
            }
            if let Err(e) = center.run() {
                error!(target: LOG, "worker {index} stopped on error: {e}");
            }
        },
    )?;
    Ok((handle, thread))
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Blocks SIGPIPE on the calling thread (every worker does it first).
///
/// Why: the workers write to sockets with `writev`, which has no `MSG_NOSIGNAL`; after a
/// peer's reset it raises SIGPIPE at the writing thread, and that kills a process that
/// has not ignored the signal (a non-Rust host, a binary restoring the default
/// disposition). Blocked on the thread it was raised at, the signal stays pending there
/// unseen and the write fails with EPIPE: a fault of that connection only.
fn block_sigpipe() -> io::Result<()> {
    // SAFETY: sigset_t is plain data the sigemptyset/sigaddset calls initialise before
    // pthread_sigmask reads it; the old mask is not asked for (null).
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
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

#[cfg(test)]
mod tests {
    use std::fmt::{self, Write as _};

    use super::*;

    // `Debug` writes to the caller's sink with the workers' lock free (a sink that took
    // it would otherwise deadlock), and does not wait for a lock held elsewhere.
    #[test]
    fn debug_writes_with_the_lock_free() {
        struct Sink<'a>(&'a WorkerPool, String);
        impl fmt::Write for Sink<'_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                assert!(self.0.workers.try_lock().is_some(), "workers locked while writing");
                self.1.push_str(s);
                Ok(())
            }
        }
        let config = WorkerPoolConfig { workers: 1, ..WorkerPoolConfig::default() };
        let pool = WorkerPool::new(config).expect("pool");
        let mut sink = Sink(&pool, String::new());
        write!(sink, "{pool:?}").expect("formats");
        assert!(sink.1.contains(r#"workers: "unjoined""#), "{}", sink.1);
        {
            let _held = pool.workers.lock();
            assert!(format!("{pool:?}").contains(r#"workers: "<locked>""#));
        }
        pool.shutdown();
        let mut sink = Sink(&pool, String::new());
        write!(sink, "{pool:?}").expect("formats");
        assert!(sink.1.contains(r#"workers: "joined", threads: []"#), "{}", sink.1);
    }
}
