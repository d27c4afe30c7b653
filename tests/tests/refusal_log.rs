//! The log of peers the dispatchers refuse (`ms_handle_authentication`): a peer that
//! redials at every backoff and is refused each time costs a few lines a second, not one
//! per refusal. A binary of its own: it installs the process's logger.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use messenger::{Authentication, Connection, Dispatched, Dispatcher, Messenger, Policy};
use protocol::session::WARN_LINES_PER_SECOND;
use protocol::types::{EntityName, EntityType};
use protocol::Message;
use tests::loopback::{addr_for, backoff_config, client_with, test_config, WAIT};

/// The refusal lines logged so far.
static REFUSAL_LINES: AtomicU64 = AtomicU64::new(0);

/// This binary's logger: counts the refusal lines at INFO, prints every warning.
struct RefusalLog;

impl log::Log for RefusalLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
        if record.level() == log::Level::Info
            && record.target() == "msgr::conn"
            && record.args().to_string().contains("refused the authenticated peer")
        {
            REFUSAL_LINES.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

/// Installs [`RefusalLog`] (before `test_config`'s env_logger, which then stands aside).
fn install_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&RefusalLog).expect("this binary's logger is the first");
        log::set_max_level(log::LevelFilter::Info);
    });
}

/// Refuses every peer, and says so on a channel.
struct RefuseAll(Sender<()>);

impl Dispatcher<Connection> for RefuseAll {
    fn ms_dispatch(&self, _conn: &Connection, msg: Message) -> Dispatched {
        Dispatched::NotTaken(msg)
    }
    fn ms_handle_authentication(&self, _conn: &Connection) -> Authentication {
        let _ = self.0.send(());
        Authentication::Refuse
    }
}

/// The most lines a limit of [`WARN_LINES_PER_SECOND`] lets through in `elapsed` (its
/// seconds count from its first line, within `elapsed`), with a second's lines to
/// spare for threads racing into a new second.
fn allowed(elapsed: Duration) -> u64 {
    WARN_LINES_PER_SECOND * (elapsed.as_secs() + 2)
}

// A lossless msgr2 client that a server's dispatcher refuses redials at every backoff
// (1 ms here) and is refused each time: the server logs a bounded number of lines a
// second about it, not one per refusal.
#[test]
fn a_burst_of_refusals_logs_a_bounded_number_of_lines() {
    install_logger();
    let m = Messenger::new(EntityName::new(EntityType::OSD, 0), 1, test_config(2)).expect("m");
    m.set_default_policy(Policy::stateful_server());
    m.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    m.start().expect("start");
    let (refused_tx, refused) = crossbeam_channel::unbounded();
    m.add_dispatcher_tail(std::sync::Arc::new(RefuseAll(refused_tx))).expect("dispatcher");
    let quick = backoff_config(Duration::from_millis(1), Duration::from_millis(2));
    let (c, _crx) = client_with(EntityType::CLIENT, 71, Policy::lossless_client(), quick);
    let began = Instant::now();
    let _conn =
        c.connect_to(EntityType::OSD, addr_for(messenger::ProtocolVersion::V2, m.my_addr()));
    // Refused more times than the limit can have logged lines for by now, and a
    // second's lines more.
    let mut refusals = 0u64;
    while refusals <= allowed(began.elapsed()) + WARN_LINES_PER_SECOND {
        refused.recv_timeout(WAIT).expect("the client redials and is refused");
        refusals += 1;
    }
    c.shutdown();
    m.shutdown();
    let elapsed = began.elapsed();
    refusals += refused.try_iter().count() as u64;
    let lines = REFUSAL_LINES.load(Ordering::SeqCst);
    assert!(lines >= 1, "the first refusal is logged");
    assert!(
        lines <= allowed(elapsed),
        "{lines} lines for {refusals} refusals in {elapsed:?}: at most {} allowed",
        allowed(elapsed)
    );
}
