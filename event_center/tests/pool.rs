//! WorkerPool: threads, placement, shutdown, panics, idle CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::Duration;

use asyncmsgr_event_center::{
    CenterError, CenterHandle, Context, Handler, Ready, TimerTarget, WorkerPool, WorkerPoolConfig,
};
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;

const WAIT: Duration = Duration::from_secs(10);

fn pool(workers: usize) -> WorkerPool {
    WorkerPool::new(WorkerPoolConfig { workers, ..WorkerPoolConfig::default() }).expect("pool")
}

#[test]
fn spawns_exactly_the_configured_named_workers() {
    let pool = WorkerPool::new(WorkerPoolConfig {
        workers: 3,
        name_prefix: "msgr-worker".to_owned(),
        pin_cpus: true,
        busy_poll: Duration::ZERO,
    })
    .expect("pool");
    assert_eq!(pool.workers(), 3);
    for i in 0..3 {
        let name = pool.handle(i).submit_to(|_| thread::current().name().map(str::to_owned));
        assert_eq!(name, Ok(Some(format!("msgr-worker-{i}"))));
        assert_eq!(pool.handle(i).id(), i);
    }
    assert!(
        WorkerPool::new(WorkerPoolConfig { workers: 0, ..WorkerPoolConfig::default() }).is_err()
    );
}

// Ceph's NetworkStack::get_worker: the worker with the fewest references, lowest index on ties.
#[test]
fn least_loaded_picks_fewest_references_lowest_index_on_ties() {
    let pool = pool(3);
    assert_eq!(pool.least_loaded().id(), 0);
    pool.handle(0).add_load(2);
    pool.handle(2).add_load(1);
    assert_eq!(pool.least_loaded().id(), 1);
    pool.handle(1).add_load(1);
    assert_eq!(pool.least_loaded().id(), 1, "tie 1 vs 1 goes to the lower index");
    // Placing connections one by one spreads them evenly.
    for _ in 0..6 {
        pool.least_loaded().add_load(1);
    }
    let loads: Vec<usize> = pool.handles().iter().map(CenterHandle::load).collect();
    assert_eq!(loads, [4, 3, 3]);
    pool.handle(0).add_load(-4);
    assert_eq!(pool.handle(0).load(), 0);
    assert_eq!(pool.least_loaded().id(), 0);
}

struct ShutdownProbe {
    tx: Sender<usize>,
}

impl Handler for ShutdownProbe {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn shutdown(&mut self, cx: &mut Context<'_>) {
        let _ = self.tx.send(cx.center_id());
    }
}

fn bounce(to: CenterHandle, back: CenterHandle, running: Arc<AtomicBool>) {
    if !running.load(Ordering::Relaxed) {
        return;
    }
    let next = to.clone();
    // Errors are expected once the pool stops.
    let _ = to.dispatch_event_external(move |_| bounce(back, next, running));
}

#[test]
fn shutdown_while_events_are_in_flight_returns_promptly() {
    let pool = Arc::new(pool(2));
    let (probe_tx, probe_rx) = unbounded();
    for i in 0..2 {
        let tx = probe_tx.clone();
        pool.handle(i)
            .submit_to(move |cx| {
                cx.insert_handler(Box::new(ShutdownProbe { tx }));
                // A far timer must not keep the worker alive.
                cx.create_time_event(Duration::from_secs(3600), TimerTarget::Fn(Box::new(|_| ())));
            })
            .expect("probe");
    }
    let running = Arc::new(AtomicBool::new(true));
    // A ping-pong storm between the two workers plus four posting threads.
    for _ in 0..64 {
        bounce(pool.handle(0).clone(), pool.handle(1).clone(), Arc::clone(&running));
    }
    let posters: Vec<_> = (0..4)
        .map(|t| {
            let h = pool.handle(t % 2).clone();
            thread::spawn(move || {
                let mut posted = 0u64;
                while h.dispatch_event_external(|_| ()).is_ok() {
                    posted += 1;
                }
                posted
            })
        })
        .collect();
    let (done_tx, done_rx) = unbounded();
    let p = Arc::clone(&pool);
    let stopper = thread::spawn(move || {
        p.shutdown();
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(WAIT).expect("shutdown returned");
    stopper.join().expect("stopper");
    for p in posters {
        p.join().expect("poster stopped once the pool refused posts");
    }
    let mut stopped: Vec<usize> = probe_rx.try_iter().collect();
    stopped.sort_unstable();
    assert_eq!(stopped, [0, 1], "every handler got shutdown");
    assert_eq!(pool.handle(0).dispatch_event_external(|_| ()), Err(CenterError::Stopped));
    running.store(false, Ordering::Relaxed);
}

/// Tells the tests watching a thread name about each `msgr::center` debug record logged
/// on a thread of that name: a shutdown that waits for another one's join shows it
/// nowhere but in its log.
struct Capture {
    watchers: Mutex<Vec<(String, Sender<()>)>>,
}

static CAPTURE: Capture = Capture { watchers: parking_lot::const_mutex(Vec::new()) };

impl Log for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "msgr::center" && metadata.level() == Level::Debug
    }

    fn log(&self, record: &Record<'_>) {
        let current = thread::current();
        let Some(name) = current.name() else { return };
        if !self.enabled(record.metadata()) {
            return;
        }
        for (watched, tx) in self.watchers.lock().iter() {
            if watched == name {
                let _ = tx.send(());
            }
        }
    }

    fn flush(&self) {}
}

/// Reports every `msgr::center` debug record logged from now on by a thread named one
/// of `names`.
fn watch_log_of(names: &[&str]) -> Receiver<()> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CAPTURE).expect("the only logger of this test binary");
        log::set_max_level(LevelFilter::Debug);
    });
    let (tx, rx) = unbounded();
    CAPTURE.watchers.lock().extend(names.iter().map(|n| ((*n).to_owned(), tx.clone())));
    rx
}

// Ceph's NetworkStack::stop holds pool_spin across join_worker, so a second stop returns
// only after the first joined the workers; we keep that without a lock across the join.
#[test]
fn a_second_concurrent_shutdown_returns_only_once_the_workers_are_joined() {
    let pool = Arc::new(pool(1));
    let (entered_tx, entered_rx) = bounded(1);
    let (open_tx, open_rx) = bounded::<()>(1);
    let finished = Arc::new(AtomicBool::new(false));
    {
        let finished = Arc::clone(&finished);
        pool.handle(0)
            .dispatch_event_external(move |_| {
                let _ = entered_tx.send(());
                // Until the test opens the gate (or fails and drops it): the worker cannot
                // exit, so whichever shutdown joins it is held up joining.
                let _ = open_rx.recv_timeout(WAIT);
                finished.store(true, Ordering::SeqCst);
            })
            .expect("post");
    }
    entered_rx.recv_timeout(WAIT).expect("the worker runs the callback");
    let names = ["shutdown-a", "shutdown-b"];
    let waits = watch_log_of(&names);
    let (returned_tx, returned_rx) = unbounded();
    let stoppers: Vec<_> = names
        .iter()
        .map(|name| {
            let (pool, finished, returned) =
                (Arc::clone(&pool), Arc::clone(&finished), returned_tx.clone());
            thread::Builder::new()
                .name((*name).to_owned())
                .spawn(move || {
                    pool.shutdown();
                    // Whether the worker had finished when this shutdown returned.
                    let _ = returned.send(finished.load(Ordering::SeqCst));
                })
                .expect("spawn")
        })
        .collect();
    // One shutdown takes the worker and is held up joining it; the other must wait for
    // that join (and log it), not return.
    let mut returned = 0;
    select! {
        recv(waits) -> _ => {}
        recv(returned_rx) -> done => {
            assert!(done.expect("sent"), "a shutdown returned while the worker still ran");
            returned += 1;
        }
        default(WAIT) => panic!("neither shutdown returned nor waited"),
    }
    open_tx.send(()).expect("open the gate");
    while returned < 2 {
        let done = returned_rx.recv_timeout(WAIT).expect("shutdown returned");
        assert!(done, "a shutdown returned while the worker still ran");
        returned += 1;
    }
    for stopper in stoppers {
        stopper.join().expect("stopper");
    }
}

struct Panicker;

impl Handler for Panicker {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, _cx: &mut Context<'_>) {
        panic!("handler bug (expected by the test)");
    }
}

#[test]
fn panicking_handler_is_counted_and_dropped_and_the_worker_survives() {
    let pool = pool(1);
    let h = pool.handle(0);
    let id = h.submit_to(|cx| cx.insert_handler(Box::new(Panicker))).expect("insert");
    h.notify(id).expect("notify");
    // Runs after the notify: FIFO on the worker's queue.
    assert_eq!(h.submit_to(move |cx| cx.is_live(id)), Ok(false), "panicked handler dropped");
    assert_eq!(h.panics(), 1);
    h.dispatch_event_external(|_| panic!("closure bug (expected by the test)")).expect("post");
    assert_eq!(
        h.submit_to(|_| panic!("submitted bug (expected by the test)")),
        Err::<(), _>(CenterError::Panicked)
    );
    assert_eq!(h.submit_to(|cx| cx.center_id()), Ok(0), "worker still serves");
    assert_eq!(h.panics(), 3);
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn an_idle_center_uses_near_zero_cpu() {
    let pool = pool(1);
    let h = pool.handle(0);
    // A far timer armed, as a connection's keepalive would be.
    h.submit_to(|cx| {
        cx.create_time_event(Duration::from_secs(3600), TimerTarget::Fn(Box::new(|_| ())));
    })
    .expect("arm");
    let before = h.submit_to(|_| thread_cpu_time()).expect("cpu");
    // The interval being measured, not a wait for an event.
    thread::sleep(Duration::from_millis(300));
    let after = h.submit_to(|_| thread_cpu_time()).expect("cpu");
    let used = after - before;
    assert!(used < Duration::from_millis(20), "idle worker used {used:?} of CPU in 300 ms");
}

/// A worker's write to a connection its peer reset fails with EPIPE and nothing else:
/// with SIGPIPE at its default disposition (a host that does not ignore it), a `writev`
/// on a worker after the reset ended this test process.
#[test]
fn a_workers_write_to_a_reset_connection_raises_no_sigpipe() {
    use std::io::{IoSlice, Write};
    let pool = pool(1);
    // SAFETY: `signal` with a valid signal number and a disposition constant; the old
    // disposition is put back below.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let errors = pool.handle(0).submit_to(|_| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut ours =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).expect("linger");
        drop(peer);
        // The first write after the reset reports it (ECONNRESET); the next one writes to
        // a closed connection: EPIPE, and SIGPIPE unless the thread blocks it.
        let mut errors = Vec::new();
        for _ in 0..100 {
            if let Err(e) = ours.write_vectored(&[IoSlice::new(&[1; 64])]) {
                errors.push(e.kind());
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    break;
                }
            }
        }
        errors
    });
    // SAFETY: as above, restoring what was there.
    unsafe { libc::signal(libc::SIGPIPE, old) };
    let errors = errors.expect("the worker ran it");
    assert_eq!(errors.last(), Some(&std::io::ErrorKind::BrokenPipe), "{errors:?}");
}
