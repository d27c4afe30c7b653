//! `Context::mostly_busy`: a center that spends its time running handlers says so once a
//! window of its time is judged; one that waits in `poll` does not.

use std::time::{Duration, Instant};

use asyncmsgr_event_center::EventCenter;

/// Burns `d` of this thread's time without sleeping.
fn spin_for(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[test]
fn a_center_running_external_events_back_to_back_is_mostly_busy() {
    let mut center = EventCenter::new(0).expect("center");
    assert!(!center.with_context(|cx| cx.mostly_busy()), "nothing judged yet");
    let handle = center.handle();
    // Each iteration runs 1 ms of work posted before it, so `poll` never waits: more
    // than one window (2 ms) of almost nothing but running.
    for _ in 0..6 {
        handle.dispatch_event_external(|_cx| spin_for(Duration::from_millis(1))).expect("post");
        center.run_once(Some(Duration::from_millis(50))).expect("poll");
    }
    assert!(center.with_context(|cx| cx.mostly_busy()), "a center that only ran is busy");
}

#[test]
fn a_center_waiting_in_poll_is_not_mostly_busy() {
    let mut center = EventCenter::new(0).expect("center");
    let handle = center.handle();
    // First busy, then each iteration runs 0.1 ms and waits 2 ms in `poll`: the windows
    // after the busy one are mostly waiting (a preempted spin would have to stretch
    // ~80-fold to tip one), and the judgement follows them.
    for _ in 0..6 {
        handle.dispatch_event_external(|_cx| spin_for(Duration::from_millis(1))).expect("post");
        center.run_once(Some(Duration::from_millis(50))).expect("poll");
    }
    assert!(center.with_context(|cx| cx.mostly_busy()), "busy first");
    for _ in 0..8 {
        handle.dispatch_event_external(|_cx| spin_for(Duration::from_micros(100))).expect("post");
        center.run_once(Some(Duration::ZERO)).expect("run the posted work");
        center.run_once(Some(Duration::from_millis(2))).expect("wait in poll");
    }
    assert!(!center.with_context(|cx| cx.mostly_busy()), "a center that mostly waited is not busy");
}
