//! Busy polling (`EventCenter::set_busy_poll`): the spin before sleeping ends as soon as
//! an event arrives, and never runs past the timeout `run_once` was given or the nearest
//! timer. Each test spins for up to 10 s if the bound is broken, and fails on a 5 s
//! deadline instead (generous: the bounds hold within milliseconds).

use std::thread;
use std::time::{Duration, Instant};

use std::io::Write;

use asyncmsgr_event_center::{Context, EventCenter, Handler, Ready, TimerTarget};
use crossbeam_channel::{unbounded, Sender};
use mio::net::UnixStream;
use mio::Interest;

const SPIN: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(5);

fn spinning_center() -> EventCenter {
    let mut center = EventCenter::new(0).expect("center");
    center.set_busy_poll(SPIN);
    center
}

/// Reports each readiness event of the socket it owns (and reads nothing: the source
/// stays readable, and edge-triggered readiness reports it once).
struct Watch {
    _socket: UnixStream,
    tx: Sender<Ready>,
}

impl Handler for Watch {
    fn ready(&mut self, _cx: &mut Context<'_>, ready: Ready) {
        let _ = self.tx.send(ready);
    }
}

#[test]
fn a_readable_socket_ends_the_spin_at_its_first_poll() {
    let mut center = spinning_center();
    let (mut writer, reader) = UnixStream::pair().expect("pair");
    writer.write_all(b"x").expect("write");
    let (tx, rx) = unbounded();
    center
        .with_context(|cx| {
            cx.register(reader, Interest::READABLE, |_id, socket| {
                Box::new(Watch { _socket: socket, tx })
            })
        })
        .expect("register");
    let start = Instant::now();
    // The inbox is empty, so this iteration spins: the readable socket must end it.
    center.run_once(Some(SPIN)).expect("poll");
    assert!(start.elapsed() < DEADLINE, "spun {:?} past a readable socket", start.elapsed());
    assert!(rx.try_recv().expect("the handler ran in that iteration").readable);
}

// Whenever the post lands (before the spin or during it), the waker ends the wait.
#[test]
fn an_event_posted_from_another_thread_ends_the_spin() {
    let mut center = spinning_center();
    // Owner claimed here: the loop's first iteration has nothing to do.
    center.run_once(Some(Duration::ZERO)).expect("poll");
    let handle = center.handle();
    let (tx, rx) = unbounded();
    let poster = thread::spawn(move || {
        handle.dispatch_event_external(move |_cx| {
            let _ = tx.send(());
        })
    });
    let start = Instant::now();
    while rx.try_recv().is_err() {
        center.run_once(Some(SPIN)).expect("poll");
        assert!(start.elapsed() < DEADLINE, "the spin did not end at the posted event");
    }
    poster.join().expect("poster").expect("posted");
}

#[test]
fn the_spin_ends_at_the_timeout_run_once_was_given() {
    let mut center = spinning_center();
    let start = Instant::now();
    center.run_once(Some(Duration::from_millis(20))).expect("poll");
    assert!(start.elapsed() < DEADLINE, "spun {:?} for a 20 ms timeout", start.elapsed());
}

#[test]
fn the_spin_ends_at_the_nearest_timer() {
    let mut center = spinning_center();
    let (tx, rx) = unbounded();
    // Read before the timer is armed: its deadline counts from a clock read inside.
    let start = Instant::now();
    center.with_context(|cx| {
        cx.create_time_event(
            Duration::from_millis(20),
            TimerTarget::Fn(Box::new(move |_cx| {
                let _ = tx.send(());
            })),
        )
    });
    while rx.try_recv().is_err() {
        center.run_once(None).expect("poll");
        assert!(start.elapsed() < DEADLINE, "the timer waited for the spin");
    }
    assert!(start.elapsed() >= Duration::from_millis(20), "fired early");
}
