//! Time events on a center driven by the test thread.

use std::time::Duration;

use asyncmsgr_event_center::{Context, EventCenter, Handler, Ready, TimerId, TimerTarget};
use crossbeam_channel::{unbounded, Sender};

/// Upper bound on loop iterations while waiting for a timer: each iteration sleeps in
/// poll until the deadline, so a few suffice; a spinning loop would blow through this.
const MAX_ITERATIONS: u64 = 1000;

fn arm(cx: &mut Context<'_>, after_ms: u64, tag: u32, tx: &Sender<u32>) -> TimerId {
    let tx = tx.clone();
    cx.create_time_event(
        Duration::from_millis(after_ms),
        TimerTarget::Fn(Box::new(move |_cx| {
            let _ = tx.send(tag);
        })),
    )
}

fn run_until(center: &mut EventCenter, mut done: impl FnMut() -> bool) {
    let start = center.iterations();
    while !done() {
        center.run_once(Some(Duration::from_secs(1))).expect("poll");
        assert!(center.iterations() - start < MAX_ITERATIONS, "timer never fired");
    }
}

// Ceph's EventCenter::process_time_events walks time_events (a multimap by deadline) in order.
#[test]
fn timers_fire_in_deadline_order() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    center.with_context(|cx| {
        arm(cx, 30, 30, &tx);
        arm(cx, 10, 10, &tx);
        arm(cx, 20, 20, &tx);
        arm(cx, 10, 11, &tx);
        arm(cx, 0, 0, &tx);
    });
    let mut fired = Vec::new();
    run_until(&mut center, || {
        fired.extend(rx.try_iter());
        fired.len() == 5
    });
    assert_eq!(fired, [0, 10, 11, 20, 30]);
    assert_eq!(center.timer_count(), 0);
}

#[test]
fn cancelled_timer_never_fires() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let (first, second) = center.with_context(|cx| (arm(cx, 5, 1, &tx), arm(cx, 15, 2, &tx)));
    assert!(center.with_context(|cx| cx.delete_time_event(first)));
    assert!(!center.with_context(|cx| cx.delete_time_event(first)), "second cancel is a no-op");
    let mut fired = Vec::new();
    run_until(&mut center, || {
        fired.extend(rx.try_iter());
        !fired.is_empty()
    });
    assert_eq!(fired, [2]);
    assert!(!center.with_context(|cx| cx.delete_time_event(second)), "already fired");
}

#[test]
fn hundred_thousand_timers_insert_then_cancel_leave_nothing() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let ids: Vec<TimerId> = center.with_context(|cx| {
        (0..100_000u32).map(|i| arm(cx, 1 + u64::from(i % 50), i, &tx)).collect()
    });
    assert_eq!(center.timer_count(), 100_000);
    center.with_context(|cx| {
        for id in &ids {
            assert!(cx.delete_time_event(*id));
        }
    });
    assert_eq!(center.timer_count(), 0);
    // Interleaved insert/cancel cycles keep nothing behind either.
    center.with_context(|cx| {
        for i in 0..100_000u32 {
            let id = arm(cx, 1, i, &tx);
            assert!(cx.delete_time_event(id));
        }
    });
    assert_eq!(center.timer_count(), 0);
    center.run_once(Some(Duration::from_millis(60))).expect("poll");
    assert!(rx.try_recv().is_err(), "a cancelled timer fired");
}

// Ceph PR 53477: a deadline closer than epoll's 1 ms granularity made the worker spin.
#[test]
fn sub_millisecond_timer_does_not_spin() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    for round in 0..20u32 {
        center.with_context(|cx| {
            let tx = tx.clone();
            cx.create_time_event(
                Duration::from_micros(u64::from(50 + round * 40)),
                TimerTarget::Fn(Box::new(move |_| {
                    let _ = tx.send(round);
                })),
            );
        });
        let before = center.iterations();
        while rx.try_recv().is_err() {
            center.run_once(None).expect("poll");
            assert!(center.iterations() - before <= 3, "loop spun waiting for a sub-ms timer");
        }
    }
}

struct TimerHandler {
    tx: Sender<TimerId>,
}

impl Handler for TimerHandler {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn timer(&mut self, _cx: &mut Context<'_>, id: TimerId) {
        let _ = self.tx.send(id);
    }
}

#[test]
fn handler_timer_is_delivered_with_its_id() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let timer = center.with_context(|cx| {
        let id = cx.insert_handler(Box::new(TimerHandler { tx }));
        cx.create_time_event(Duration::from_millis(2), TimerTarget::Handler(id))
    });
    let mut got = None;
    run_until(&mut center, || {
        got = rx.try_recv().ok();
        got.is_some()
    });
    assert_eq!(got, Some(timer));
}

#[test]
fn an_enormous_delay_does_not_overflow_and_stays_pending() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let id = center.with_context(|cx| arm_after(cx, Duration::MAX, &tx));
    center.run_once(Some(Duration::ZERO)).expect("poll");
    assert!(rx.try_recv().is_err());
    assert!(center.with_context(|cx| cx.delete_time_event(id)));
}

/// Runs `arm` on a center on its own thread, then [`EventCenter::run`] (which sleeps in
/// `poll` without a timeout: only the center's kernel timer can end a sleep). Returns the
/// first tag a timer sent within `within`, if any.
fn fired_in_sleeps(
    arm: impl FnOnce(&mut EventCenter, &Sender<u32>) + Send + 'static,
    within: Duration,
) -> Option<u32> {
    let (tx, rx) = unbounded();
    let (handle_tx, handle_rx) = unbounded();
    let thread = std::thread::spawn(move || {
        let mut center = EventCenter::new(0).expect("center");
        arm(&mut center, &tx);
        handle_tx.send(center.handle()).expect("handle");
        center.run()
    });
    let handle = handle_rx.recv_timeout(within).expect("the center started");
    let fired = rx.recv_timeout(within).ok();
    handle.stop();
    thread.join().expect("center thread").expect("run");
    fired
}

#[test]
fn a_timer_ends_a_sleep_without_timeout() {
    let fired = fired_in_sleeps(
        |center, tx| {
            center.with_context(|cx| arm(cx, 30, 7, tx));
        },
        Duration::from_secs(10),
    );
    assert_eq!(fired, Some(7), "the center slept through its timer");
}

// The kernel timer is armed for the nearest deadline only when that moves earlier.
#[test]
fn an_earlier_timer_rearms_the_kernel_timer() {
    let fired = fired_in_sleeps(
        |center, tx| {
            center.with_context(|cx| arm(cx, 60_000, 1, tx));
            // Arms the kernel timer a minute out.
            center.run_once(Some(Duration::ZERO)).expect("poll");
            center.with_context(|cx| arm(cx, 20, 2, tx));
        },
        Duration::from_secs(10),
    );
    assert_eq!(fired, Some(2), "the earlier timer did not end the sleep");
}

fn arm_after(cx: &mut Context<'_>, after: Duration, tx: &Sender<u32>) -> TimerId {
    let tx = tx.clone();
    cx.create_time_event(
        after,
        TimerTarget::Fn(Box::new(move |_| {
            let _ = tx.send(0);
        })),
    )
}
