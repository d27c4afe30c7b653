//! Peer misbehaviour a connection saw: counted always, logged at WARN once per kind, and
//! at most [`WARN_LINES_PER_SECOND`] times a second over all connections of a messenger.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Peer issues logged at WARN per second, over every connection sharing a [`WarnLimit`]
/// (one messenger): a flood of misbehaving connections costs a few lines a second, and
/// the rest are counted and summed up in one line when the next second's first is logged.
pub const WARN_LINES_PER_SECOND: u64 = 10;

/// The WARN lines of peer issues left this second, shared by the connections of one
/// messenger. Approximate under races (two threads may each start the new second), which
/// is all a log limit needs.
#[derive(Debug, Default)]
pub struct WarnLimit {
    /// The first `now` it was asked at (time is an input here).
    epoch: OnceLock<Instant>,
    /// The second (since `epoch`) the counts are for.
    second: AtomicU64,
    /// Lines logged in that second.
    logged: AtomicU64,
    /// Lines not logged since the last summary.
    suppressed: AtomicU64,
}

impl WarnLimit {
    /// Whether a line may be logged at `now`: `Some(n)` with the lines suppressed since
    /// the last summary (to say so), or `None` if this second's lines are used up (the
    /// line is counted as suppressed).
    pub fn take(&self, now: Instant) -> Option<u64> {
        let second = now.saturating_duration_since(*self.epoch.get_or_init(|| now)).as_secs();
        let current = self.second.load(Relaxed);
        if second > current
            && self.second.compare_exchange(current, second, Relaxed, Relaxed).is_ok()
        {
            self.logged.store(0, Relaxed);
        }
        if self.logged.fetch_add(1, Relaxed) < WARN_LINES_PER_SECOND {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Logs one line that a rate limit ([`WarnLimit::take`] or the like) answered `line`
/// for: `Some(0)` logs `text` at `level`; `Some(n)` logs `text ({n} skipped)`, saying
/// how many lines went unlogged since the last; `None` logs `demoted` at DEBUG, so that a
/// flood stays visible to whoever asks for it without costing the operator's log.
/// One place for the three arms, so every rate-limited line reads the same way.
pub fn log_limited(
    line: Option<u64>,
    level: log::Level,
    target: &str,
    text: fmt::Arguments<'_>,
    skipped: fmt::Arguments<'_>,
    demoted: fmt::Arguments<'_>,
) {
    match line {
        Some(0) => log::log!(target: target, level, "{text}"),
        Some(n) => log::log!(target: target, level, "{text} ({n} {skipped})"),
        None => log::debug!(target: target, "{demoted}"),
    }
}

/// Kinds of peer misbehaviour that a peer could trigger in bulk. Each is logged at WARN
/// the first time it happens on a connection (within the messenger's [`WarnLimit`]) and
/// at DEBUG otherwise, and always counted ([`Machine::poll_peer_issues`]), so a flood
/// costs at most one log line per connection and kind, and a few a second in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PeerIssue {
    /// A connect or ident we answer with a retry or refusal (bad protocol version,
    /// features, authorizer), or too many of them.
    BadConnect,
    /// A connect reply or ident reply we cannot accept.
    BadConnectReply,
    /// A banner or address that is not what it must be.
    BadBanner,
    /// A message or frame that failed to decode (crc, limits, footer).
    BadMessage,
    /// An unknown tag in the open session.
    UnknownTag,
    /// A message whose seq skips some (Ceph logs "missed message?" and takes it).
    SeqGap,
}

impl PeerIssue {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The peer issues of one machine.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerIssues {
    /// [`PeerIssue`] kinds already logged at WARN on this connection (one bit each).
    warned: u8,
    /// Issues seen since the last [`Machine::poll_peer_issues`].
    seen: u64,
    /// Of those, the ones not logged at WARN.
    unlogged: u64,
}

impl PeerIssues {
    /// Counts `issue`; `Some` when it is the first of its kind on this connection and
    /// `limit` has a line left at `now` (log it at WARN; see [`WarnLimit::take`]).
    pub(crate) fn note(
        &mut self,
        issue: PeerIssue,
        limit: &WarnLimit,
        now: Instant,
    ) -> Option<u64> {
        self.seen += 1;
        let first = self.warned & issue.bit() == 0;
        self.warned |= issue.bit();
        let line = if first { limit.take(now) } else { None };
        if line.is_none() {
            self.unlogged += 1;
        }
        line
    }

    /// Issues seen and not logged at WARN since the last call.
    pub(crate) fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.seen, self.unlogged);
        self.seen = 0;
        self.unlogged = 0;
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    // Starts the virtual clock from the real one (`Instant` has no other constructor).
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    /// The target [`Lines`] keeps the records of (others pass by).
    const TARGET: &str = "msgr::test::log_limited";

    std::thread_local! {
        /// The records of [`TARGET`] logged on this thread: a test sees its own only.
        static LINES: std::cell::RefCell<Vec<(log::Level, String)>> = const {
            std::cell::RefCell::new(Vec::new())
        };
    }

    /// This test binary's logger: keeps the records of [`TARGET`] in [`LINES`].
    struct Lines;

    impl log::Log for Lines {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.target() == TARGET
        }

        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                let line = (record.level(), record.args().to_string());
                LINES.with(|l| l.borrow_mut().push(line));
            }
        }

        fn flush(&self) {}
    }

    #[test]
    fn a_limited_line_is_logged_with_the_count_skipped_or_demoted() {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&Lines).expect("the only logger of this test binary");
            log::set_max_level(log::LevelFilter::Debug);
        });
        let (what, e) = ("accept", "Too many open files");
        for line in [Some(0), Some(3), None] {
            log_limited(
                line,
                log::Level::Info,
                TARGET,
                format_args!("{what}: {e}; retrying"),
                format_args!("more failures not logged"),
                format_args!("{what}: {e}"),
            );
        }
        let lines = LINES.with(|l| l.take());
        assert_eq!(
            lines,
            [
                (log::Level::Info, "accept: Too many open files; retrying".to_string()),
                (
                    log::Level::Info,
                    "accept: Too many open files; retrying (3 more failures not logged)"
                        .to_string()
                ),
                (log::Level::Debug, "accept: Too many open files".to_string()),
            ]
        );
    }

    #[test]
    fn a_few_lines_a_second_and_a_count_of_the_rest() {
        let t0 = start();
        let limit = WarnLimit::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Seconds count from the first time it is asked.
        let first: Vec<_> = (0..25).map(|i| limit.take(at(i))).collect();
        assert_eq!(first.iter().filter(|l| l.is_some()).count(), WARN_LINES_PER_SECOND as usize);
        assert!(first[..10].iter().all(|l| *l == Some(0)));
        // The next second's first line says how many were not logged.
        assert_eq!(limit.take(at(1_200)), Some(15));
        assert_eq!(limit.take(at(1_300)), Some(0));
        // A time before the epoch or going back counts in the current second.
        assert_eq!(limit.take(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)), Some(0));
    }

    #[test]
    fn repeats_on_a_connection_and_lines_over_the_limit_are_unlogged() {
        let t0 = start();
        let limit = WarnLimit::default();
        let mut conns = vec![PeerIssues::default(); 20];
        let logged = conns
            .iter_mut()
            .flat_map(|c| {
                [
                    c.note(PeerIssue::BadMessage, &limit, t0),
                    c.note(PeerIssue::BadMessage, &limit, t0),
                ]
            })
            .filter(Option::is_some)
            .count();
        assert_eq!(logged, WARN_LINES_PER_SECOND as usize);
        let (seen, unlogged): (u64, u64) = conns
            .iter_mut()
            .map(PeerIssues::take_counts)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert_eq!((seen, unlogged), (40, 40 - WARN_LINES_PER_SECOND));
    }
}
