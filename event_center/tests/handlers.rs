//! Handler lifecycle: removal while running, with_handler, panics on file events, shutdown.

use std::io::Write;
use std::time::Duration;

use asyncmsgr_event_center::{CenterHandle, Context, EventCenter, Handler, HandlerId, Ready};
use crossbeam_channel::{unbounded, Sender};
use mio::net::TcpStream;
use mio::Interest;

#[test]
fn handles_are_send_and_sync_and_centers_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<CenterHandle>();
    send_sync::<asyncmsgr_event_center::WorkerPool>();
    send::<EventCenter>();
}

/// Reports its drop, so tests see exactly when the center lets go of it.
struct DropProbe {
    tx: Sender<&'static str>,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        let _ = self.tx.send("dropped");
    }
}

struct SelfRemover {
    tx: Sender<&'static str>,
    _probe: DropProbe,
}

impl Handler for SelfRemover {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, cx: &mut Context<'_>) {
        let me = cx.id().expect("running a handler");
        assert!(cx.remove(me).is_none(), "the running handler is not handed out");
        assert!(!cx.is_live(me));
        let _ = self.tx.send("removed itself");
    }
}

#[test]
fn a_handler_removing_itself_is_dropped_after_it_returns() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let id = center.with_context(|cx| {
        cx.insert_handler(Box::new(SelfRemover {
            tx: tx.clone(),
            _probe: DropProbe { tx: tx.clone() },
        }))
    });
    center.handle().notify(id).expect("notify");
    center.run_once(Some(Duration::ZERO)).expect("poll");
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["removed itself", "dropped"]);
    assert_eq!(center.handler_count(), 0);
    assert_eq!(center.handle().panics(), 0);
    // The slot is free again.
    let next = center.with_context(|cx| {
        cx.insert_handler(Box::new(SelfRemover { tx: tx.clone(), _probe: DropProbe { tx } }))
    });
    assert_eq!(next.slot(), id.slot());
}

struct Counter {
    hits: u32,
    seen_ids: Sender<Option<HandlerId>>,
}

impl Handler for Counter {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, cx: &mut Context<'_>) {
        self.hits += 1;
        let _ = self.seen_ids.send(cx.id());
    }
}

struct Poker {
    target: HandlerId,
    out: Sender<Option<u32>>,
}

impl Handler for Poker {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, cx: &mut Context<'_>) {
        let me = cx.id().expect("running");
        // Another handler: reachable, and its callbacks see its own id.
        let hits = cx.with_handler(self.target, |h, cx| h.notify(cx));
        let _ = self.out.send(hits.map(|()| 1));
        // Itself (taken out while running): not reachable.
        let _ = self.out.send(cx.with_handler(me, |_, _| 7));
        assert_eq!(cx.id(), Some(me), "id restored after with_handler");
    }
}

#[test]
fn with_handler_reaches_other_live_handlers_only() {
    let mut center = EventCenter::new(0).expect("center");
    let (ids_tx, ids_rx) = unbounded();
    let (out_tx, out_rx) = unbounded();
    let target = center
        .with_context(|cx| cx.insert_handler(Box::new(Counter { hits: 0, seen_ids: ids_tx })));
    let poker =
        center.with_context(|cx| cx.insert_handler(Box::new(Poker { target, out: out_tx })));
    center.handle().notify(poker).expect("notify");
    center.run_once(Some(Duration::ZERO)).expect("poll");
    assert_eq!(out_rx.try_iter().collect::<Vec<_>>(), [Some(1), None]);
    assert_eq!(ids_rx.try_iter().collect::<Vec<_>>(), [Some(target)]);
}

struct PanicOnRead {
    _stream: TcpStream,
    _probe: DropProbe,
}

impl Handler for PanicOnRead {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {
        panic!("ready bug (expected by the test)");
    }
}

#[test]
fn a_handler_panicking_on_readiness_is_deregistered_counted_and_dropped() {
    let mut center = EventCenter::new(0).expect("center");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    client.write_all(b"boom").expect("write");
    let (tx, rx) = unbounded();
    let id = center
        .with_context(|cx| {
            cx.register(TcpStream::from_std(server), Interest::READABLE, |_, stream| {
                Box::new(PanicOnRead { _stream: stream, _probe: DropProbe { tx } })
            })
        })
        .expect("register");
    let handle = center.handle();
    for _ in 0..100 {
        center.run_once(Some(Duration::from_millis(100))).expect("poll");
        if handle.panics() > 0 {
            break;
        }
    }
    assert_eq!(handle.panics(), 1);
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), ["dropped"]);
    assert!(!center.with_context(|cx| cx.is_live(id)));
    // More data (or a reset: the dropped handler closed the socket with unread data):
    // nothing is registered any more, so nothing runs and nothing panics.
    let _ = client.write_all(b"again");
    center.run_once(Some(Duration::from_millis(10))).expect("poll");
    assert_eq!(handle.panics(), 1);
}

struct Stopping {
    tx: Sender<&'static str>,
}

impl Handler for Stopping {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn shutdown(&mut self, _cx: &mut Context<'_>) {
        let _ = self.tx.send("shutdown");
    }
}

#[test]
fn dropping_a_center_shuts_its_handlers_down_once() {
    let mut center = EventCenter::new(0).expect("center");
    let handle = center.handle();
    let (tx, rx) = unbounded();
    center.with_context(|cx| {
        cx.insert_handler(Box::new(Stopping { tx: tx.clone() }));
        cx.insert_handler(Box::new(Stopping { tx }));
    });
    center.shutdown();
    center.shutdown();
    drop(center);
    assert_eq!(rx.try_iter().count(), 2);
    assert!(handle.is_stopping());
    assert!(handle.dispatch_event_external(|_| ()).is_err());
}

#[test]
fn with_handler_as_downcasts_to_the_concrete_type() {
    let mut center = EventCenter::new(0).expect("center");
    let (ids_tx, _ids_rx) = unbounded();
    let (tx, _rx) = unbounded();
    let counter = center
        .with_context(|cx| cx.insert_handler(Box::new(Counter { hits: 41, seen_ids: ids_tx })));
    let other = center.with_context(|cx| cx.insert_handler(Box::new(Stopping { tx })));
    center.with_context(|cx| {
        assert_eq!(
            cx.with_handler_as(counter, |c: &mut Counter, _| {
                c.hits += 1;
                c.hits
            }),
            Some(42)
        );
        assert_eq!(cx.with_handler_as(other, |c: &mut Counter, _| c.hits), None, "wrong type");
        assert!(cx.is_live(other), "a type mismatch leaves the handler in place");
    });
}

/// Notifies itself every time it runs: it asks to come back after other work.
struct Rescheduler {
    runs: usize,
    tx: Sender<usize>,
}

impl Handler for Rescheduler {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, cx: &mut Context<'_>) {
        self.runs += 1;
        let _ = self.tx.send(self.runs);
        let me = cx.id().expect("running a handler");
        cx.notify(me);
    }
}

/// A handler that notifies itself runs once per iteration: its next run waits for the
/// worker's file events and timers (before, the drain popped its notify again at once,
/// up to EXTERNAL_BATCH times in a row, while every other handler waited).
#[test]
fn a_handler_notifying_itself_runs_once_per_iteration() {
    let mut center = EventCenter::new(0).expect("center");
    let (tx, rx) = unbounded();
    let id = center.with_context(|cx| cx.insert_handler(Box::new(Rescheduler { runs: 0, tx })));
    center.handle().notify(id).expect("notify");
    for iteration in 1..=3 {
        center.run_once(Some(Duration::ZERO)).expect("poll");
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [iteration], "iteration {iteration}");
    }
}

/// Arms a timer a year out for itself, then panics in `notify`.
struct ArmsThenPanics;

impl Handler for ArmsThenPanics {
    fn ready(&mut self, _cx: &mut Context<'_>, _ready: Ready) {}
    fn notify(&mut self, cx: &mut Context<'_>) {
        if let Some(id) = cx.id() {
            cx.create_time_event(
                Duration::from_secs(365 * 24 * 3600),
                asyncmsgr_event_center::TimerTarget::Handler(id),
            );
        }
        panic!("notify bug (expected by the test)");
    }
}

/// A handler the center drops after a panic takes its timers with it (a handler that
/// removes itself cancels its own; this one had no say). Before, they stayed armed
/// until their deadlines, one more for every handler a panic ended.
#[test]
fn a_handler_dropped_after_a_panic_leaves_no_timer() {
    let mut center = EventCenter::new(0).expect("center");
    let handle = center.handle();
    // Another handler's timer stays.
    let other = center.with_context(|cx| cx.insert_handler(Box::new(ArmsThenPanics)));
    center.with_context(|cx| {
        cx.create_time_event(
            Duration::from_secs(3600),
            asyncmsgr_event_center::TimerTarget::Handler(other),
        )
    });
    for n in 1..=100u64 {
        let id = center.with_context(|cx| cx.insert_handler(Box::new(ArmsThenPanics)));
        center.with_context(|cx| cx.with_handler(id, |h, cx| h.notify(cx)));
        assert_eq!(handle.panics(), n);
        assert!(!center.with_context(|cx| cx.is_live(id)));
    }
    assert_eq!(center.timer_count(), 1, "only the live handler's timer is left");
    assert_eq!(center.handler_count(), 1);
}
