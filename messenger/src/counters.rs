//! Per-worker messenger counters with Ceph's names (`AsyncMessenger::Worker-N` in a
//! Ceph daemon's `perf dump`), kept as relaxed atomics: each is written by one worker and
//! read by whoever dumps them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters of one worker for one messenger.
#[derive(Default, Debug)]
pub struct WorkerCounters {
    /// `msgr_recv_messages`. Written only by drivers on this worker
    /// (with a plain load and store, not a locked add), as are the next three.
    pub recv_messages: AtomicU64,
    /// `msgr_send_messages`.
    pub send_messages: AtomicU64,
    /// `msgr_recv_bytes`: every byte read from sockets (handshake and frames).
    pub recv_bytes: AtomicU64,
    /// `msgr_send_bytes`: every byte written to sockets.
    pub send_bytes: AtomicU64,
    /// `msgr_active_connections`.
    pub active_connections: AtomicU64,
    /// `msgr_created_connections`.
    pub created_connections: AtomicU64,
    /// `msgr_running_total_time` in nanoseconds: time spent in this messenger's
    /// connection handlers.
    pub running_total_time_ns: AtomicU64,
    /// `msgr_running_send_time` in nanoseconds: the part after reading (protocol events,
    /// framing and writing).
    pub running_send_time_ns: AtomicU64,
    /// `msgr_running_recv_time` in nanoseconds: reading and parsing, including fast
    /// dispatch (which runs inside the read path, so Ceph's separate
    /// `msgr_running_fast_dispatch_time` is part of this one).
    pub running_recv_time_ns: AtomicU64,
    /// `msgr_send_messages_queue_lat`: summed nanoseconds from `send_message` until the
    /// driver takes the message from the connection's mailbox. A send made on the
    /// driver's own worker is stamped with the loop iteration's clock (no clock read per
    /// message), so it counts from the start of that iteration.
    pub send_messages_queue_lat_ns: AtomicU64,
    /// Number of samples in `send_messages_queue_lat_ns`.
    pub send_messages_queue_lat_count: AtomicU64,
    /// `msgr_recv_held_bytes` (ours, a gauge): memory held by messages still being
    /// received on this worker's connections (their assembly buffers and segments).
    pub recv_held_bytes: AtomicU64,
    /// `msgr_peer_issues` (ours): protocol violations by peers (bad banners, bad connects,
    /// bad messages, unknown tags, ...). Each kind is logged at WARN once per connection,
    /// and at most `protocol::session::WARN_LINES_PER_SECOND` lines a second in all.
    pub peer_issues: AtomicU64,
    /// `msgr_peer_issues_unlogged` (ours): the part of `peer_issues` that was not logged
    /// at WARN: the same connection already reported that kind, or the second's lines
    /// were used up.
    pub peer_issues_unlogged: AtomicU64,
    /// `msgr_recv_budget_requests` (ours): messages whose first window the driver asked
    /// the throttles for; the others were taken on receive credit (granted for a read
    /// before it is parsed, or ahead for the rest of a burst). Written only by drivers on
    /// this worker.
    pub recv_budget_requests: AtomicU64,
    /// `msgr_accept_paused_for_events` (ours): times the listener on this worker stopped
    /// accepting because `max_queued_events` connection events waited for dispatch.
    pub accept_paused_for_events: AtomicU64,
    /// `msgr_inject_socket_ops` (test seam, feature `fault-injection`): socket
    /// operations that drew for an injected failure (`ms_inject_socket_failures`).
    #[cfg(feature = "fault-injection")]
    pub inject_socket_ops: AtomicU64,
    /// `msgr_inject_socket_failures` (test seam): socket operations failed on purpose.
    #[cfg(feature = "fault-injection")]
    pub inject_socket_failures: AtomicU64,
    /// `msgr_inject_writes` (test seam): writes that drew for injected congestion
    /// (`ms_inject_network_congestion`).
    #[cfg(feature = "fault-injection")]
    pub inject_writes: AtomicU64,
    /// `msgr_inject_congested_writes` (test seam): writes refused as if the socket were full.
    #[cfg(feature = "fault-injection")]
    pub inject_congested_writes: AtomicU64,
    /// `msgr_inject_internal_delays` (test seam): accept decisions, new sessions'
    /// replies and replace hand-offs delayed (`ms_inject_internal_delays`).
    #[cfg(feature = "fault-injection")]
    pub inject_internal_delays: AtomicU64,
    /// `msgr_inject_delayed_messages` (test seam): received messages whose delivery
    /// was delayed (`ms_inject_delay_*`).
    #[cfg(feature = "fault-injection")]
    pub inject_delayed_messages: AtomicU64,
}

/// What a counter's value in `perf dump` is, as Ceph's `perf schema` describes it: its
/// `type` (the `PERFCOUNTER_*` bits), `metric_type` and `value_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PerfType {
    /// A count that only grows: an integer (`PERFCOUNTER_U64 | PERFCOUNTER_COUNTER`).
    Counter,
    /// A level that goes up and down, or a configured bound: an integer
    /// (`PERFCOUNTER_U64`).
    Gauge,
    /// Seconds: a real (`PERFCOUNTER_TIME`).
    Time,
    /// An average of times: `avgcount`, `sum` and `avgtime`
    /// (`PERFCOUNTER_TIME | PERFCOUNTER_LONGRUNAVG`).
    TimeAverage,
}

/// Whether a counter counts bytes (Ceph's `units`: `bytes` or `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PerfUnit {
    /// A number of things, or seconds.
    None,
    /// Bytes.
    Bytes,
}

/// One counter's entry in `perf schema`, in the shape of Ceph's
/// (`PerfCounters::dump_formatted_generic` with `schema`): we give no counter a nick or
/// a priority.
pub(crate) fn perf_schema_entry(
    ty: PerfType,
    unit: PerfUnit,
    description: &str,
) -> serde_json::Value {
    // Ceph's bits: TIME 1, U64 2, LONGRUNAVG 4, COUNTER 8.
    let (bits, metric, value) = match ty {
        PerfType::Counter => (10, "counter", "integer"),
        PerfType::Gauge => (2, "gauge", "integer"),
        PerfType::Time => (1, "gauge", "real"),
        PerfType::TimeAverage => (5, "gauge", "real-integer-pair"),
    };
    serde_json::json!({
        "type": bits,
        "metric_type": metric,
        "value_type": value,
        "description": description,
        "nick": "",
        "priority": 0,
        "units": match unit {
            PerfUnit::None => "none",
            PerfUnit::Bytes => "bytes",
        },
    })
}

/// A `perf schema` section from `(name, type, unit, description)` rows.
pub(crate) fn perf_schema_section(rows: &[(&str, PerfType, PerfUnit, &str)]) -> serde_json::Value {
    let mut section = serde_json::Map::new();
    for &(name, ty, unit, description) in rows {
        section.insert(name.into(), perf_schema_entry(ty, unit, description));
    }
    serde_json::Value::Object(section)
}

/// `d` in nanoseconds, saturated at `u64::MAX` (a driver's running times are added in
/// them).
pub(crate) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl WorkerCounters {
    /// Moves a gauge from `*last` to `now` (what one connection contributes).
    pub(crate) fn move_gauge(gauge: &AtomicU64, last: &mut u64, now: u64) {
        if now > *last {
            gauge.fetch_add(now - *last, Relaxed);
        } else if now < *last {
            gauge.fetch_sub(*last - now, Relaxed);
        }
        *last = now;
    }

    /// Adds `n` to a counter that only one thread writes (a driver's, on its worker:
    /// `recv_messages`, `recv_bytes`, `send_bytes`, `send_messages`, the running times and
    /// the send queue's latency): a plain load and store. `fetch_add` is a locked
    /// read-modify-write, a full barrier on x86 that waits for the store buffer; per
    /// received message it was the hottest instruction of the driver's event handling.
    /// Readers see the store like any relaxed one, and a later release (a channel send,
    /// a lock) publishes it with everything before it.
    pub(crate) fn add_own(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Adds `d` to a nanosecond counter.
    pub fn add_time(counter: &AtomicU64, d: Duration) {
        counter.fetch_add(ns(d), Relaxed);
    }

    /// The counters as a JSON object in the shape of Ceph's `perf dump` section.
    pub fn to_json(&self) -> serde_json::Value {
        let avg = |sum: &AtomicU64, count: &AtomicU64| {
            let (s, c) = (sum.load(Relaxed), count.load(Relaxed));
            serde_json::json!({
                "avgcount": c,
                "sum": s as f64 / 1e9,
                "avgtime": if c == 0 { 0.0 } else { s as f64 / c as f64 / 1e9 },
            })
        };
        #[allow(unused_mut)]
        let mut section = serde_json::json!({
            "msgr_recv_messages": self.recv_messages.load(Relaxed),
            "msgr_send_messages": self.send_messages.load(Relaxed),
            "msgr_recv_bytes": self.recv_bytes.load(Relaxed),
            "msgr_send_bytes": self.send_bytes.load(Relaxed),
            "msgr_created_connections": self.created_connections.load(Relaxed),
            "msgr_active_connections": self.active_connections.load(Relaxed),
            "msgr_running_total_time": self.running_total_time_ns.load(Relaxed) as f64 / 1e9,
            "msgr_running_send_time": self.running_send_time_ns.load(Relaxed) as f64 / 1e9,
            "msgr_running_recv_time": self.running_recv_time_ns.load(Relaxed) as f64 / 1e9,
            "msgr_send_messages_queue_lat":
                avg(&self.send_messages_queue_lat_ns, &self.send_messages_queue_lat_count),
            "msgr_recv_held_bytes": self.recv_held_bytes.load(Relaxed),
            "msgr_peer_issues": self.peer_issues.load(Relaxed),
            "msgr_peer_issues_unlogged": self.peer_issues_unlogged.load(Relaxed),
            "msgr_recv_budget_requests": self.recv_budget_requests.load(Relaxed),
            "msgr_accept_paused_for_events": self.accept_paused_for_events.load(Relaxed),
        });
        #[cfg(feature = "fault-injection")]
        if let Some(obj) = section.as_object_mut() {
            for (name, counter) in [
                ("msgr_inject_socket_ops", &self.inject_socket_ops),
                ("msgr_inject_socket_failures", &self.inject_socket_failures),
                ("msgr_inject_writes", &self.inject_writes),
                ("msgr_inject_congested_writes", &self.inject_congested_writes),
                ("msgr_inject_internal_delays", &self.inject_internal_delays),
                ("msgr_inject_delayed_messages", &self.inject_delayed_messages),
            ] {
                obj.insert(name.into(), counter.load(Relaxed).into());
            }
        }
        section
    }

    /// What [`to_json`](Self::to_json)'s counters are, in the shape of Ceph's `perf
    /// schema` section (Ceph's descriptions for Ceph's counters).
    pub(crate) fn schema() -> serde_json::Value {
        use PerfType::{Counter, Gauge, Time, TimeAverage};
        use PerfUnit::{Bytes, None};
        #[allow(unused_mut)]
        let mut rows = vec![
            ("msgr_recv_messages", Counter, None, "Network received messages"),
            ("msgr_send_messages", Counter, None, "Network sent messages"),
            ("msgr_recv_bytes", Counter, Bytes, "Network received bytes"),
            ("msgr_send_bytes", Counter, Bytes, "Network sent bytes"),
            ("msgr_created_connections", Counter, None, "Created connection number"),
            // A counter in Ceph's schema too, though it falls as connections close.
            ("msgr_active_connections", Counter, None, "Active connection number"),
            ("msgr_running_total_time", Time, None, "The total time of thread running"),
            ("msgr_running_send_time", Time, None, "The total time of message sending"),
            ("msgr_running_recv_time", Time, None, "The total time of message receiving"),
            ("msgr_send_messages_queue_lat", TimeAverage, None, "Network sent messages lat"),
            ("msgr_recv_held_bytes", Gauge, Bytes, "Memory held by messages being received"),
            ("msgr_peer_issues", Counter, None, "Protocol violations by peers"),
            ("msgr_peer_issues_unlogged", Counter, None, "Protocol violations by peers not logged"),
            (
                "msgr_recv_budget_requests",
                Counter,
                None,
                "Received messages whose budget was asked of the throttles",
            ),
            (
                "msgr_accept_paused_for_events",
                Counter,
                None,
                "Times accepting paused for queued connection events",
            ),
        ];
        #[cfg(feature = "fault-injection")]
        rows.extend([
            (
                "msgr_inject_socket_ops",
                Counter,
                None,
                "Socket operations drawn for injected failures",
            ),
            ("msgr_inject_socket_failures", Counter, None, "Socket operations failed on purpose"),
            ("msgr_inject_writes", Counter, None, "Writes drawn for injected congestion"),
            ("msgr_inject_congested_writes", Counter, None, "Writes refused as if congested"),
            ("msgr_inject_internal_delays", Counter, None, "Injected internal delays"),
            ("msgr_inject_delayed_messages", Counter, None, "Received messages delayed on purpose"),
        ]);
        perf_schema_section(&rows)
    }
}
