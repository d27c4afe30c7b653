//! What every peer checks about the replies it gets: each answers the oldest request in
//! flight on its connection (tids come back in order, none missing, none extra), and
//! the run as a whole keeps moving.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;

/// A reply that does not answer the oldest request in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderError {
    /// The reply's tid is not the oldest in flight: one is missing or out of order.
    OutOfOrder {
        /// The oldest tid in flight.
        expected: u64,
        /// The reply's tid.
        got: u64,
    },
    /// A reply with nothing in flight.
    Unexpected {
        /// The reply's tid.
        got: u64,
    },
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderError::OutOfOrder { expected, got } => write!(
                f,
                "reply tid {got} where tid {expected} was next: a reply is missing or out of order"
            ),
            OrderError::Unexpected { got } => {
                write!(f, "reply tid {got} with no request in flight")
            }
        }
    }
}

impl std::error::Error for OrderError {}

/// The requests in flight on one connection, oldest first: tid and send time.
#[derive(Debug, Default)]
pub struct InFlight {
    q: VecDeque<(u64, Instant)>,
    next_tid: u64,
}

impl InFlight {
    /// Room for `depth` requests; tids start at 1.
    pub fn new(depth: usize) -> InFlight {
        InFlight { q: VecDeque::with_capacity(depth), next_tid: 1 }
    }

    /// Records a request sent now and returns its tid.
    pub fn push(&mut self, at: Instant) -> u64 {
        let tid = self.next_tid;
        self.next_tid += 1;
        self.q.push_back((tid, at));
        tid
    }

    /// Records `n` requests (at least one) sent now; their tids, in order.
    pub fn push_n(&mut self, at: Instant, n: usize) -> std::ops::Range<u64> {
        let first = self.next_tid;
        for _ in 0..n.max(1) {
            self.push(at);
        }
        first..self.next_tid
    }

    /// Forgets the newest request (its send failed) and gives its tid back.
    pub fn unpush(&mut self) {
        if self.q.pop_back().is_some() {
            self.next_tid -= 1;
        }
    }

    /// Completes the oldest request with a reply carrying `tid`; its send time.
    pub fn complete(&mut self, tid: u64) -> Result<Instant, OrderError> {
        match self.q.front() {
            Some(&(want, at)) if want == tid => {
                self.q.pop_front();
                Ok(at)
            }
            Some(&(want, _)) => Err(OrderError::OutOfOrder { expected: want, got: tid }),
            None => Err(OrderError::Unexpected { got: tid }),
        }
    }

    /// Requests without a reply yet.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// True when every request was answered.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The server's side of the same check: requests arrive with tids 1, 2, … per connection.
#[derive(Debug)]
pub struct RequestOrder {
    next: u64,
}

impl Default for RequestOrder {
    fn default() -> Self {
        RequestOrder { next: 1 }
    }
}

impl RequestOrder {
    /// Accepts request `tid` if it is the next one.
    pub fn check(&mut self, tid: u64) -> Result<(), OrderError> {
        if tid == self.next {
            self.next += 1;
            Ok(())
        } else {
            Err(OrderError::OutOfOrder { expected: self.next, got: tid })
        }
    }
}

/// What a peer's connections tell the watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// A connection got its last reply after the deadline: it is done.
    Drained,
    /// A connection failed (reset, bad frame, order); the run is void.
    Failed(String),
}

/// Waits until `conns` connections have drained, failing at once on a
/// [`Signal::Failed`] and when `done` (round trips completed) stands still for `stall`
/// — traffic stopped — or nothing is heard by `deadline`.
pub fn watch(
    signals: &Receiver<Signal>,
    conns: usize,
    done: &AtomicU64,
    stall: Duration,
    deadline: Instant,
) -> Result<(), String> {
    /// How often progress is sampled: a stall is noticed within `stall` + this.
    const SAMPLE: Duration = Duration::from_millis(200);
    let mut drained = 0;
    let mut last = done.load(Ordering::Relaxed);
    let mut last_move = Instant::now();
    while drained < conns {
        match signals.recv_timeout(SAMPLE) {
            Ok(Signal::Drained) => drained += 1,
            Ok(Signal::Failed(why)) => return Err(why),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "{} of {conns} connections ended without reporting",
                    conns - drained
                ))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        if n != last {
            (last, last_move) = (n, now);
        } else if now.duration_since(last_move) >= stall {
            return Err(format!(
                "no reply for {:.1} s: traffic stopped after {n} round trips",
                stall.as_secs_f64()
            ));
        }
        if now >= deadline {
            return Err(format!(
                "{} of {conns} connections still busy at the deadline",
                conns - drained
            ));
        }
    }
    Ok(())
}

/// Reports how a client connection ended ([`Signal::Drained`] with its round trips
/// histogram, or [`Signal::Failed`]) and returns the histogram (empty after a failure).
pub fn conn_ended(
    signals: &Sender<Signal>,
    result: Result<Histogram<u64>, String>,
) -> Histogram<u64> {
    match result {
        Ok(hist) => {
            let _ = signals.send(Signal::Drained);
            hist
        }
        Err(why) => {
            let _ = signals.send(Signal::Failed(why));
            new_histogram()
        }
    }
}

/// A round-trip histogram in nanoseconds (1 µs … 60 s, 3 significant digits). It lives
/// here, below `report`, because a run's watcher hands back an empty one on failure.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The first failure reported after [`watch`] returned (a server side that failed
/// while the clients drained), once every thread has been joined.
pub fn late_failure(signals: &Receiver<Signal>) -> Result<(), String> {
    match signals.try_iter().find_map(|s| match s {
        Signal::Failed(why) => Some(why),
        Signal::Drained => None,
    }) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replies_must_answer_the_oldest_request() {
        let t = Instant::now();
        let mut f = InFlight::new(4);
        assert_eq!((f.push(t), f.push(t), f.push(t)), (1, 2, 3));
        assert_eq!(f.complete(1), Ok(t));
        // tid 2 skipped: missing or reordered, either way an error.
        assert_eq!(f.complete(3), Err(OrderError::OutOfOrder { expected: 2, got: 3 }));
        assert_eq!(f.complete(2), Ok(t));
        f.unpush();
        assert!(f.is_empty());
        assert_eq!(f.complete(3), Err(OrderError::Unexpected { got: 3 }));
        // The unpushed tid is reused.
        assert_eq!(f.push(t), 3);
        assert_eq!(f.push_n(t, 3), 4..7);
        assert_eq!(f.len(), 4);
        assert_eq!(f.push_n(t, 0), 7..8, "at least one");
        let mut r = RequestOrder::default();
        assert!(r.check(1).is_ok());
        assert_eq!(r.check(1), Err(OrderError::OutOfOrder { expected: 2, got: 1 }));
    }

    #[test]
    fn watchdog_fails_when_traffic_stops() {
        let (_tx, rx) = crossbeam_channel::unbounded();
        let done = AtomicU64::new(5);
        let t0 = Instant::now();
        let err = watch(&rx, 1, &done, Duration::from_millis(300), t0 + Duration::from_secs(60))
            .unwrap_err();
        assert!(err.contains("traffic stopped after 5"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn watchdog_reports_the_first_failure_and_counts_drains() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let done = AtomicU64::new(0);
        let far = Instant::now() + Duration::from_secs(60);
        tx.send(Signal::Drained).unwrap();
        tx.send(Signal::Drained).unwrap();
        assert_eq!(watch(&rx, 2, &done, Duration::from_secs(30), far), Ok(()));
        tx.send(Signal::Failed("reset".into())).unwrap();
        assert_eq!(watch(&rx, 1, &done, Duration::from_secs(30), far), Err("reset".into()));
        drop(tx);
        assert!(watch(&rx, 1, &done, Duration::from_secs(30), far).unwrap_err().contains("ended"));
    }
}
