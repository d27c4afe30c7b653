//! Workspace integration tests and their fixtures (loopback peers, a real `ceph-mon`).
//!
//! Never: part of any shipped library; only `tests/` and `bench` use it.

pub mod ceph;
pub mod cephx;
pub mod chaos;
pub mod counting;
pub mod hostile;
pub mod hostile_v2;
pub mod loopback;
pub mod mon;
pub mod nat;
pub mod soak;
pub mod synthetic;
pub mod watchdog;

/// `Read::read`, called again while it is interrupted (`EINTR`). The kernel does not
/// restart a blocking socket read that has a timeout (`SO_RCVTIMEO`, which these tests
/// set everywhere) after a signal or a freeze of the process, as it restarts other
/// reads: a test must not take that for the peer's error or close (a CI run failed on
/// it).
pub fn read_some(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// [`TcpStream::peek`](std::net::TcpStream::peek), called again while it is
/// interrupted, as [`read_some`].
pub fn peek_some(s: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.peek(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod interrupted {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Signals the reader thread has taken.
    static TAKEN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_signal(_: libc::c_int) {
        TAKEN.fetch_add(1, Ordering::SeqCst);
    }

    /// A reader blocked in a socket read with a timeout, signalled (a handler without
    /// `SA_RESTART`) many times before its data comes: `read_some` goes on and returns
    /// the data, where a plain `read` returns `Interrupted` at the first signal.
    #[test]
    fn a_read_interrupted_by_signals_returns_the_data() {
        // SAFETY: a zeroed `sigaction` is valid (empty mask, no flags); the handler only
        // touches an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        ours.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let reader = std::thread::spawn(move || {
            // SAFETY: `pthread_self` has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).expect("send");
            let mut buf = [0u8; 16];
            super::read_some(&mut ours, &mut buf).map(|n| buf[..n].to_vec())
        });
        let tid = rx.recv_timeout(Duration::from_secs(10)).expect("the reader's thread");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Until the reader took 50 signals, or ended (a read that gave up).
        while TAKEN.load(Ordering::SeqCst) < 50 && !reader.is_finished() {
            assert!(Instant::now() < deadline, "the reader took no signals");
            // SAFETY: the reader's thread is not joined yet, so its id stays valid.
            assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
            std::thread::sleep(Duration::from_millis(1));
        }
        peer.write_all(b"hello").expect("write");
        let got = reader.join().expect("the reader panicked");
        assert_eq!(got.expect("the read failed"), b"hello");
    }
}
