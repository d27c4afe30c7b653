//! Fault injection (feature `fault-injection`; never enabled by the library itself, so
//! a release build has none of this code): Ceph's `ms_inject_*` options as seeded
//! decisions, and the delay queue of delayed delivery.
//!
//! The I/O layer asks an [`Injector`] before each socket operation (read, write, dial,
//! accept) whether it fails, before each write whether the network is congested, and the
//! driver asks it how long an accept decision, a replace hand-off or a received message
//! waits. Each connection has its own injector, seeded from
//! `MessengerConfig::inject_seed`, the messenger's nonce and the connection's id (so
//! connections of different messengers draw independently), and a run with the same seed
//! injects alike on each connection (what differs between runs is only the timing of
//! the operations themselves).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::types::EntityType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::MessengerConfig;
use crate::counters::WorkerCounters;

/// Spreads stream numbers over the seed space (an odd multiplier, so distinct streams
/// keep distinct seeds: the 64-bit golden ratio, as in splitmix64); the generator's own
/// seeding then makes neighbouring seeds unrelated.
const STREAM_SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

/// The injection stream of a messenger's listener (connections use their ids).
pub(crate) const LISTENER_STREAM: u64 = u64::MAX;

/// One connection's (or the listener's) injection decisions, counted in its worker's
/// counters.
pub(crate) struct Injector {
    rng: SmallRng,
    counters: Arc<WorkerCounters>,
    socket_failures: u32,
    network_congestion: u32,
    internal_delays: Duration,
    delay_types: Vec<EntityType>,
    delay_max: Duration,
    delay_probability: f64,
}

impl Injector {
    /// The injector of stream `stream` (a connection id, or [`LISTENER_STREAM`]) of the
    /// messenger with nonce `nonce`: messengers of one process draw from different
    /// streams even though their connection ids start alike.
    pub(crate) fn new(
        config: &MessengerConfig,
        nonce: u32,
        stream: u64,
        counters: Arc<WorkerCounters>,
    ) -> Injector {
        let stream = (u64::from(nonce) << 32) ^ stream;
        let seed = config.inject_seed ^ stream.wrapping_mul(STREAM_SPREAD);
        Injector {
            rng: SmallRng::seed_from_u64(seed),
            counters,
            socket_failures: config.inject_socket_failures,
            network_congestion: config.inject_network_congestion,
            internal_delays: config.inject_internal_delays,
            delay_types: config.inject_delay_type.clone(),
            delay_max: config.inject_delay_max,
            delay_probability: config.inject_delay_probability,
        }
    }

    /// `ms_inject_socket_failures`: whether the socket operation about to run fails
    /// (the caller shuts the socket down), one in `inject_socket_failures`.
    pub(crate) fn fail_socket(&mut self) -> bool {
        if self.socket_failures == 0 {
            return false;
        }
        self.counters.inject_socket_ops.fetch_add(1, Relaxed);
        let fail = self.rng.gen_range(0..self.socket_failures) == 0;
        if fail {
            self.counters.inject_socket_failures.fetch_add(1, Relaxed);
        }
        fail
    }

    /// `ms_inject_network_congestion`: whether the write about to run is refused as if
    /// the socket were full, N−1 times in N.
    pub(crate) fn congest_write(&mut self) -> bool {
        if self.network_congestion == 0 {
            return false;
        }
        self.counters.inject_writes.fetch_add(1, Relaxed);
        let congested = self.rng.gen_range(0..self.network_congestion) != 0;
        if congested {
            self.counters.inject_congested_writes.fetch_add(1, Relaxed);
        }
        congested
    }

    /// `ms_inject_internal_delays`: how long the step about to run waits, if at all.
    pub(crate) fn internal_delay(&self) -> Option<Duration> {
        (!self.internal_delays.is_zero()).then(|| {
            self.counters.inject_internal_delays.fetch_add(1, Relaxed);
            self.internal_delays
        })
    }

    /// `ms_inject_delay_type`: whether messages from a peer of type `peer` go through
    /// the delay queue.
    pub(crate) fn delays_peer(&self, peer: EntityType) -> bool {
        self.delay_probability > 0.0 && self.delay_types.contains(&peer)
    }

    /// `ms_inject_delay_probability` and `ms_inject_delay_max`: how long one received
    /// message waits (zero for most).
    pub(crate) fn message_delay(&mut self) -> Duration {
        if !self.rng.gen_bool(self.delay_probability) {
            return Duration::ZERO;
        }
        self.counters.inject_delayed_messages.fetch_add(1, Relaxed);
        self.delay_max.mul_f64(self.rng.gen::<f64>())
    }
}

/// Items waiting for their release time, released in the order they were queued
/// (Ceph's `DelayedDelivery`): an item never leaves before the ones queued ahead of it,
/// so its release is the later of its own and theirs, and the front always holds the
/// earliest release.
#[derive(Debug)]
pub(crate) struct DelayQueue<T> {
    items: VecDeque<(Instant, T)>,
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        DelayQueue { items: VecDeque::new() }
    }
}

impl<T> DelayQueue<T> {
    /// Queues `item` to leave at `release`, or when the item ahead of it leaves if that
    /// is later.
    pub(crate) fn push(&mut self, release: Instant, item: T) {
        let release = match self.items.back() {
            Some((last, _)) => release.max(*last),
            None => release,
        };
        self.items.push_back((release, item));
    }

    /// The next release time.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.items.front().map(|(at, _)| *at)
    }

    /// The next item if its time has come.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.items.front() {
            Some((at, _)) if *at <= now => self.items.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    /// The next item, whatever its release time (a flush).
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front().map(|(_, item)| item)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops every item.
    pub(crate) fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injector(config: MessengerConfig) -> (Injector, Arc<WorkerCounters>) {
        let counters = Arc::new(WorkerCounters::default());
        (Injector::new(&config, 1, 7, counters.clone()), counters)
    }

    /// `ms_inject_socket_failures = 30` fails one operation in 30 (with this seed: within
    /// 10 % of 1,000 in 30,000 draws), and counts what it drew and injected.
    #[test]
    fn socket_failures_fire_one_in_n_with_a_fixed_seed() {
        let config = MessengerConfig {
            inject_socket_failures: 30,
            inject_seed: 42,
            ..MessengerConfig::default()
        };
        let (mut inj, counters) = injector(config.clone());
        let fails = (0..30_000).filter(|_| inj.fail_socket()).count();
        assert!((900..=1_100).contains(&fails), "{fails} failures in 30,000 operations");
        assert_eq!(counters.inject_socket_ops.load(Relaxed), 30_000);
        assert_eq!(counters.inject_socket_failures.load(Relaxed), fails as u64);
        // The same seed and stream draw the same sequence.
        let (mut again, _) = injector(config);
        let replay = (0..30_000).filter(|_| again.fail_socket()).count();
        assert_eq!(replay, fails);
    }

    /// Off (0) never fails and draws nothing.
    #[test]
    fn socket_failures_off_never_fire() {
        let (mut inj, counters) = injector(MessengerConfig::default());
        assert!((0..10_000).all(|_| !inj.fail_socket() && !inj.congest_write()));
        assert_eq!(counters.inject_socket_ops.load(Relaxed), 0);
        assert_eq!(inj.internal_delay(), None);
        assert!(!inj.delays_peer(EntityType::CLIENT));
    }

    /// `ms_inject_network_congestion = 4`: three writes in four are refused.
    #[test]
    fn congestion_refuses_n_minus_one_writes_in_n() {
        let config = MessengerConfig {
            inject_network_congestion: 4,
            inject_seed: 3,
            ..MessengerConfig::default()
        };
        let (mut inj, counters) = injector(config);
        let refused = (0..40_000).filter(|_| inj.congest_write()).count();
        assert!((29_000..=31_000).contains(&refused), "{refused} of 40,000 writes refused");
        assert_eq!(counters.inject_congested_writes.load(Relaxed), refused as u64);
    }

    /// Delayed delivery picks its peer types, delays about `probability` of their
    /// messages, and never by more than `inject_delay_max`.
    #[test]
    fn message_delays_follow_probability_and_maximum() {
        let max = Duration::from_millis(50);
        let config = MessengerConfig {
            inject_delay_type: vec![EntityType::OSD],
            inject_delay_max: max,
            inject_delay_probability: 0.25,
            inject_seed: 9,
            ..MessengerConfig::default()
        };
        let (mut inj, _) = injector(config);
        assert!(inj.delays_peer(EntityType::OSD));
        assert!(!inj.delays_peer(EntityType::CLIENT));
        let delays: Vec<Duration> = (0..10_000).map(|_| inj.message_delay()).collect();
        let delayed = delays.iter().filter(|d| !d.is_zero()).count();
        assert!((2_300..=2_700).contains(&delayed), "{delayed} of 10,000 delayed");
        assert!(delays.iter().all(|d| *d <= max));
    }

    /// Items leave in the order they were queued: one queued behind a longer delay waits
    /// for it, and nothing leaves before its time.
    #[test]
    fn delay_queue_keeps_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DelayQueue::default();
        q.push(t0 + ms(30), 1);
        q.push(t0 + ms(5), 2); // behind 1: leaves with it
        q.push(t0 + ms(40), 3);
        assert_eq!(q.next_release(), Some(t0 + ms(30)));
        assert_eq!(q.pop_due(t0 + ms(10)), None);
        assert_eq!(q.pop_due(t0 + ms(30)), Some(1));
        assert_eq!(q.pop_due(t0 + ms(30)), Some(2));
        assert_eq!(q.pop_due(t0 + ms(30)), None);
        assert_eq!(q.next_release(), Some(t0 + ms(40)));
        assert_eq!(q.pop_front(), Some(3));
        assert!(q.is_empty());
    }
}
