//! A watchdog that turns a stall (a deadlock, a livelock) into a test failure with a
//! dump of who waits on what, instead of a test that hangs until CI kills it.
//!
//! The test calls [`Watchdog::beat`] whenever it makes progress; threads under test
//! (dispatch threads, workers running fast dispatch) record what they are doing with
//! [`Watchdog::doing`]. If no beat arrives within the deadline, the watchdog thread
//! prints every thread's last recorded activity and how long it has been at it, plus the
//! test's own dump, straight to the process's stderr, and exits the process with a
//! failure status: a thread stuck in a deadlock cannot be unwound, so the process is the
//! unit that fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};

/// What each thread said it is doing, by thread name and id.
type Activities = Mutex<BTreeMap<String, (String, Instant)>>;

/// Exit status of a process the watchdog ends (libtest's own failure status).
const STALL_EXIT: i32 = 101;
/// How long the test's dump may take before the watchdog gives up on it (it may block on
/// the very lock that deadlocked).
const DUMP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running watchdog; dropping it stops it.
pub struct Watchdog {
    name: String,
    beats: Option<Sender<()>>,
    activities: Arc<Activities>,
    thread: Option<JoinHandle<()>>,
}

/// Restores the thread's previous activity when dropped.
pub struct Doing<'a> {
    watchdog: &'a Watchdog,
    key: String,
    previous: Option<(String, Instant)>,
}

fn thread_key() -> String {
    let t = std::thread::current();
    format!("{} {:?}", t.name().unwrap_or("unnamed"), t.id())
}

fn lock(a: &Activities) -> MutexGuard<'_, BTreeMap<String, (String, Instant)>> {
    a.lock()
}

impl Watchdog {
    /// Starts watching: `stall_after` without a beat ends the process after printing the
    /// activities and `dump()`.
    pub fn start(
        name: &str,
        stall_after: Duration,
        dump: impl Fn() -> String + Send + Sync + 'static,
    ) -> Watchdog {
        let (tx, rx) = crossbeam_channel::unbounded::<()>();
        let activities: Arc<Activities> = Arc::new(Mutex::new(BTreeMap::new()));
        let watched = activities.clone();
        let test = name.to_owned();
        let dump = Arc::new(dump);
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                match rx.recv_timeout(stall_after) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                    Err(RecvTimeoutError::Timeout) => stalled(&test, stall_after, &watched, &dump),
                }
            })
            .expect("watchdog thread");
        Watchdog { name: name.to_owned(), beats: Some(tx), activities, thread: Some(thread) }
    }

    /// Progress: the deadline starts again.
    pub fn beat(&self) {
        if let Some(tx) = &self.beats {
            let _ = tx.send(());
        }
    }

    /// Records what the calling thread is doing until the guard drops.
    pub fn doing(&self, what: impl Into<String>) -> Doing<'_> {
        let key = thread_key();
        let previous = lock(&self.activities).insert(key.clone(), (what.into(), Instant::now()));
        Doing { watchdog: self, key, previous }
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Doing<'_> {
    fn drop(&mut self) {
        let mut a = lock(&self.watchdog.activities);
        match self.previous.take() {
            Some(p) => a.insert(self.key.clone(), p),
            None => a.insert(self.key.clone(), ("idle".into(), Instant::now())),
        };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.beats = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn stalled(
    test: &str,
    after: Duration,
    activities: &Activities,
    dump: &Arc<impl Fn() -> String + Send + Sync + 'static>,
) -> ! {
    // Straight to the file descriptor: the test harness's output capture would be lost
    // with the process.
    let mut err = std::io::stderr();
    let _ = writeln!(err, "\nWATCHDOG {test}: no progress for {after:?}. Who waits on what:");
    let now = Instant::now();
    for (thread, (what, since)) in lock(activities).iter() {
        let _ =
            writeln!(err, "  {thread}: {what} (for {:?})", now.saturating_duration_since(*since));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    let dump = dump.clone();
    let _ = std::thread::Builder::new().name("watchdog-dump".into()).spawn(move || {
        let _ = tx.send(dump());
    });
    match rx.recv_timeout(DUMP_TIMEOUT) {
        Ok(text) => {
            let _ = writeln!(err, "{text}");
        }
        Err(_) => {
            let _ = writeln!(err, "  (the dump itself blocked for {DUMP_TIMEOUT:?})");
        }
    }
    let _ = err.flush();
    std::process::exit(STALL_EXIT);
}
