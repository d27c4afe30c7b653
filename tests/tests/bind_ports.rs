//! Ceph's daemon bind (`Processor::bind`): port 0 walks `ms_bind_port_min` to
//! `ms_bind_port_max` for the first free port (`MessengerConfig::bind_port_range`), and a
//! bind that fails is attempted `ms_bind_retry_count` times in all,
//! `ms_bind_retry_delay` apart. Without a range, port 0 stays the kernel's ephemeral port.
//!
//! Every range here is found free first (below the kernel's ephemeral ports, so no other
//! test's port-0 bind or dial takes one meanwhile; distinct for every test of this
//! process). A test sees a bind's retries through its log lines (target `msgr::bind`, one
//! per failed attempt followed by a wait): this binary's logger runs the hooks a test
//! registered for a line naming its address, on the binding thread, before it waits. A
//! port released by such a hook is free before the retry, with no timing involved.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::{Messenger, MessengerConfig};
use parking_lot::Mutex;
use protocol::types::{EntityName, EntityType};
use tests::loopback::{free_port_range, test_config, WAIT};

type Hook = Box<dyn FnMut(&str) + Send>;

/// The hooks of the `msgr::bind` log lines: (what the line must contain, the hook).
static HOOKS: Mutex<Vec<(String, Hook)>> = Mutex::new(Vec::new());

/// This binary's logger: runs the hooks of `msgr::bind` warnings, prints every warning.
struct BindLog;

impl log::Log for BindLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = record.args().to_string();
        eprintln!("{} {}: {line}", record.level(), record.target());
        if record.target() != "msgr::bind" || !line.contains("trying again") {
            return;
        }
        for (needle, hook) in HOOKS.lock().iter_mut() {
            if line.contains(needle.as_str()) {
                hook(&line);
            }
        }
    }

    fn flush(&self) {}
}

/// Installs [`BindLog`] (before `test_config`'s env_logger, which then stands aside).
fn install_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&BindLog).expect("this binary's logger is the first");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// The retry lines (a failed attempt about to wait) naming `needle`, as they come.
fn retries_of(needle: String) -> Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    HOOKS.lock().push((
        needle,
        Box::new(move |line| {
            let _ = tx.send(line.to_string());
        }),
    ));
    rx
}

/// Runs `hook` on the binding thread at the first retry line naming `needle`, before the
/// bind waits: `hook` drops what it captured (a listener holding a port).
fn at_first_retry_of(needle: String, hook: impl FnOnce() + Send + 'static) {
    let mut hook = Some(hook);
    HOOKS.lock().push((
        needle,
        Box::new(move |_| {
            if let Some(h) = hook.take() {
                h();
            }
        }),
    ));
}

/// A config for these tests: `test_config(1)` (this binary's logger first) with `range`,
/// `attempts` and `delay`.
fn config(range: Option<RangeInclusive<u16>>, attempts: u32, delay: Duration) -> MessengerConfig {
    install_logger();
    MessengerConfig {
        bind_port_range: range,
        bind_retry_count: attempts,
        bind_retry_delay: delay,
        ..test_config(1)
    }
}

fn messenger(nonce: u32, config: MessengerConfig) -> Messenger {
    Messenger::new(EntityName::new(EntityType::OSD, i64::from(nonce)), nonce, config)
        .expect("messenger")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Listeners holding `ports` of 127.0.0.1 (a daemon already there).
fn hold(ports: impl IntoIterator<Item = u16>) -> Vec<TcpListener> {
    ports.into_iter().map(|p| TcpListener::bind(loopback(p)).expect("hold a free port")).collect()
}

/// A bind to port 0 binds the range's first port, and listens there (a dial connects);
/// the announced address carries it. Ceph: `Processor::bind`'s loop from
/// `ms_bind_port_min`.
#[test]
fn port_zero_binds_the_first_port_of_the_range() {
    let range = free_port_range(3);
    let m = messenger(1, config(Some(range.clone()), 1, Duration::from_millis(5)));
    let bound = m.bind(loopback(0)).expect("bind");
    assert_eq!(bound, loopback(*range.start()));
    assert_eq!(m.my_addr().addr, Some(bound));
    TcpStream::connect_timeout(&bound, WAIT).expect("the listener is there");
    m.shutdown();
}

/// `bind_public` takes the bound port from the range as `bind` does; the announced
/// address is the public one.
#[test]
fn bind_public_takes_its_port_from_the_range_too() {
    let range = free_port_range(2);
    let _first = hold([*range.start()]);
    let m = messenger(2, config(Some(range.clone()), 1, Duration::from_millis(5)));
    let public = SocketAddr::from(([192, 0, 2, 7], 6800));
    let bound = m.bind_public(loopback(0), public).expect("bind_public");
    assert_eq!(bound, loopback(*range.end()));
    assert_eq!(m.my_addr().addr, Some(public));
    m.shutdown();
}

/// Ports other listeners hold are skipped: the bind takes the next free one, and a
/// second messenger of the process the one after (an OSD's public, cluster and
/// heartbeat messengers each get their own port of the range).
#[test]
fn ports_in_use_are_skipped_for_the_next_free_one() {
    let range = free_port_range(5);
    let start = *range.start();
    let _held = hold([start, start + 1]);
    let a = messenger(3, config(Some(range.clone()), 1, Duration::from_millis(5)));
    let b = messenger(4, config(Some(range.clone()), 1, Duration::from_millis(5)));
    assert_eq!(a.bind(loopback(0)).expect("bind a"), loopback(start + 2));
    assert_eq!(b.bind(loopback(0)).expect("bind b"), loopback(start + 3));
    a.shutdown();
    b.shutdown();
}

/// With every port of the range held, each attempt fails, the bind waits between
/// them, and after the last it fails with `AddrInUse`. Ceph: "unable to bind to ... on
/// any port in range", retried `ms_bind_retry_count` times in all.
#[test]
fn a_range_all_in_use_fails_with_addr_in_use_after_the_retries() {
    let range = free_port_range(3);
    let held = hold(range.clone());
    let needle = format!("{}..={}", range.start(), range.end());
    let retries = retries_of(needle);
    let delay = Duration::from_millis(20);
    let m = messenger(5, config(Some(range), 3, delay));
    let began = Instant::now();
    let err = m.bind(loopback(0)).expect_err("no port free");
    let took = began.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    // Three attempts: two waits, the last failure waits for nothing.
    let lines: Vec<String> = retries.try_iter().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("attempt 1 of 3") && lines[1].contains("attempt 2 of 3"));
    assert!(took >= 2 * delay, "{took:?}");
    assert!(took < WAIT, "{took:?}");
    // Nothing was bound: once a port is free, a bind gets it.
    drop(held);
    let m = messenger(6, config(Some(free_port_range(1)), 1, delay));
    m.bind(loopback(0)).expect("a free range binds");
    m.shutdown();
}

/// A port in use when the bind starts but released during the wait (a restarted
/// daemon's old socket going away) is bound by the retry: the hook releases it on the
/// binding thread at the first failure, before the wait.
#[test]
fn a_port_released_during_the_retry_delay_is_bound_by_the_retry() {
    let port = *free_port_range(1).start();
    let held = hold([port]);
    let retries = retries_of(loopback(port).to_string());
    at_first_retry_of(loopback(port).to_string(), move || drop(held));
    let m = messenger(7, config(None, 3, Duration::from_millis(5)));
    assert_eq!(m.bind(loopback(port)).expect("the retry binds"), loopback(port));
    assert_eq!(retries.try_iter().count(), 1, "one failed attempt, one retry");
    m.shutdown();
}

/// The same with port 0 and a range of one port: the retry walks the range again.
#[test]
fn a_range_port_released_during_the_retry_delay_is_bound_by_the_retry() {
    let range = free_port_range(1);
    let port = *range.start();
    let held = hold([port]);
    let needle = format!("{port}..={port}");
    let retries = retries_of(needle.clone());
    at_first_retry_of(needle, move || drop(held));
    let m = messenger(8, config(Some(range), 3, Duration::from_millis(5)));
    assert_eq!(m.bind(loopback(0)).expect("the retry binds"), loopback(port));
    assert_eq!(retries.try_iter().count(), 1, "one failed attempt, one retry");
    m.shutdown();
}

/// Without a range (the default), port 0 is the kernel's choice: an ephemeral port,
/// not one of Ceph's 6800–7300.
#[test]
fn port_zero_without_a_range_binds_an_ephemeral_port() {
    let m = messenger(9, config(None, 3, Duration::from_millis(5)));
    let bound = m.bind(loopback(0)).expect("bind");
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((1, u16::MAX));
    assert!((low..=high).contains(&bound.port()), "{bound} outside {low}..={high}");
    assert!(MessengerConfig::default().bind_port_range.is_none());
    m.shutdown();
}

/// On a worker thread a bind makes one attempt and never waits: a sleep there would
/// stall every connection of the worker. The delay is far beyond `WAIT`.
#[test]
fn a_bind_on_a_worker_thread_does_not_wait_to_retry() {
    let port = *free_port_range(1).start();
    let _held = hold([port]);
    let retries = retries_of(loopback(port).to_string());
    let m = Arc::new(messenger(10, config(None, 3, 2 * WAIT)));
    let pool = WorkerPool::new(WorkerPoolConfig { workers: 1, ..WorkerPoolConfig::default() })
        .expect("pool");
    let on_worker = Arc::clone(&m);
    let began = Instant::now();
    let err = pool.handle(0).submit_to(move |_| on_worker.bind(loopback(port))).expect("ran");
    let err = err.expect_err("the port is held");
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(began.elapsed() < WAIT, "{:?}", began.elapsed());
    assert_eq!(retries.try_iter().count(), 0);
    pool.shutdown();
    m.shutdown();
}

/// A messenger shut down while its bind waits to retry gives the bind up when the wait
/// ends, binding nothing, however many attempts were left.
#[test]
fn a_shutdown_during_the_retry_delay_ends_the_bind() {
    let port = *free_port_range(1).start();
    let _held = hold([port]);
    let retries = retries_of(loopback(port).to_string());
    let m = Arc::new(messenger(11, config(None, u32::MAX, Duration::from_millis(5))));
    let binder = Arc::clone(&m);
    let bind = std::thread::spawn(move || binder.bind(loopback(port)));
    retries.recv_timeout(WAIT).expect("a failed attempt");
    m.shutdown();
    let err = bind.join().expect("bind thread").expect_err("shut down");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
}

/// `validate` refuses a range starting at port 0 or ending below its start, and no
/// attempts; Ceph's retry defaults are kept.
#[test]
fn bad_bind_options_are_refused() {
    let ok = config(Some(free_port_range(1)), 1, Duration::from_millis(5));
    assert!(ok.validate().is_ok());
    let refused = |c: MessengerConfig| c.validate().expect_err("refused").option;
    assert_eq!(
        refused(MessengerConfig { bind_port_range: Some(0..=10), ..ok.clone() }),
        "bind_port_range"
    );
    #[allow(clippy::reversed_empty_ranges)]
    let backwards = 7300..=6800;
    assert_eq!(
        refused(MessengerConfig { bind_port_range: Some(backwards), ..ok.clone() }),
        "bind_port_range"
    );
    assert_eq!(refused(MessengerConfig { bind_retry_count: 0, ..ok.clone() }), "bind_retry_count");
    assert_eq!(
        refused(MessengerConfig { bind_retry_delay: Duration::ZERO, ..ok.clone() }),
        "bind_retry_delay"
    );
    let d = MessengerConfig::default();
    assert_eq!((d.bind_retry_count, d.bind_retry_delay), (3, Duration::from_secs(5)));
    // A one-port range is a range.
    assert!(MessengerConfig { bind_port_range: Some(6800..=6800), ..ok }.validate().is_ok());
}
