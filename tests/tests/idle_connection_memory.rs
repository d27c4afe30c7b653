//! What a connection keeps once its traffic is over: after a burst of replies (many small
//! messages framed in one round) or one large message in msgr2 secure mode (sealed whole
//! into the connection's control buffer), an idle connection must hold about what an
//! idle connection holds, not the largest round it ever framed. The control buffer's
//! remainder after a split shares the round's allocation, so kept for the next round it
//! pinned (and reused) ~1 MiB per end after a burst, and the whole sealed frame after a
//! large secure message: 200 idle connections that once carried a 4 MiB secure message
//! held ~1.6 GiB.
//!
//! Measured with a counting allocator around each connection's traffic, after a first
//! connection warmed what is per thread or per messenger (the lent buffers, the read
//! buffer); every wait is a message with a timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use event_center::{WorkerPool, WorkerPoolConfig};
use messenger::{Messenger, MessengerConfig, Policy};
use protocol::auth::{ConMode, ConModes};
use protocol::types::{AddrType, EntityAddr, EntityName, EntityType};
use tests::cephx::TestCluster;
use tests::counting::{live_bytes, Counting};
use tests::loopback::{next_message, test_config, test_message, Recorder};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocator counts the whole process: one test at a time.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

const MSG_TEST: u16 = 0x7f00;

/// Connections measured, after the first (which warms the per-thread state).
const MEASURED: usize = 4;

/// What one connection (both of its ends, ours) may keep after its traffic: far above
/// its structures and the small messages' buffers, far below the ~1 MiB per end a kept
/// round's buffer holds.
const KEPT_PER_CONNECTION: isize = 512 << 10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    V1,
    Crc,
    Secure,
}

/// A server that echoes every message, and `MEASURED + 1` clients (messengers of their
/// own, on one pool with the server) that each send `sizes` in one go, take the echoes,
/// then a few small round trips. Returns what each measured connection kept, on average.
fn kept_per_connection(mode: Mode, sizes: &[usize]) -> isize {
    let _serial = SERIAL.lock();
    let names: Vec<EntityName> =
        (0..=MEASURED as i64 + 1).map(|i| EntityName::new(EntityType::OSD, i)).collect();
    let mut cluster = TestCluster::new(&names, 7);
    let pool = Arc::new(
        WorkerPool::new(WorkerPoolConfig { workers: 1, ..WorkerPoolConfig::default() })
            .expect("pool"),
    );
    let mut config = |who| {
        if mode == Mode::Secure {
            MessengerConfig {
                cluster_mode: Some(ConModes(vec![ConMode::SECURE])),
                ..test_config(1)
            }
            .with_auth_provider(cluster.provider(who, None))
        } else {
            test_config(1)
        }
    };
    let srv =
        Messenger::with_pool(names[0], 1, config(names[0]), Arc::clone(&pool)).expect("server");
    srv.set_default_policy(Policy::stateless_server());
    srv.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    srv.start().expect("start");
    let (rec, srv_rx) = Recorder::new(true);
    srv.add_dispatcher_head(rec).expect("dispatcher");
    let ty = if mode == Mode::V1 { AddrType::LEGACY } else { AddrType::MSGR2 };
    let mut idle = Vec::new();
    let mut kept = 0;
    for (i, &who) in names[1..].iter().enumerate() {
        let cli = Messenger::with_pool(who, 100 + i as u32, config(who), Arc::clone(&pool))
            .expect("client");
        cli.set_default_policy(Policy::lossy_client());
        cli.start().expect("start");
        let (rec, cli_rx) = Recorder::new(false);
        cli.add_dispatcher_head(rec).expect("dispatcher");
        let conn = cli.connect_to(EntityType::OSD, EntityAddr { ty, ..srv.my_addr() });
        let mut tid = 0;
        let mut round = |sizes: &[usize]| {
            for &len in sizes {
                tid += 1;
                let data = Bytes::from(vec![7u8; len]);
                conn.send_message(test_message(MSG_TEST, tid, data)).expect("send");
            }
            for _ in sizes {
                drop(next_message(&cli_rx));
                drop(next_message(&srv_rx));
            }
        };
        for _ in 0..5 {
            round(&[100]);
        }
        let before = live_bytes();
        round(sizes);
        // The next small messages: whatever a large round grew is given back by now.
        for _ in 0..5 {
            round(&[100]);
        }
        let grown = live_bytes() - before;
        if i > 0 {
            kept += grown;
        }
        idle.push((cli, conn));
    }
    drop(idle);
    drop(srv);
    kept / MEASURED as isize
}

fn assert_kept_little(mode: Mode, sizes: &[usize]) {
    let kept = kept_per_connection(mode, sizes);
    assert!(
        kept < KEPT_PER_CONNECTION,
        "{mode:?}: an idle connection that once carried {} messages of {} bytes keeps {kept} \
         bytes",
        sizes.len(),
        sizes[0]
    );
}

#[test]
fn a_burst_of_small_messages_leaves_no_buffer_behind_v1() {
    assert_kept_little(Mode::V1, &[4000; 256]);
}

#[test]
fn a_burst_of_small_messages_leaves_no_buffer_behind_msgr2_crc() {
    assert_kept_little(Mode::Crc, &[4000; 256]);
}

#[test]
fn a_burst_of_small_messages_leaves_no_buffer_behind_msgr2_secure() {
    assert_kept_little(Mode::Secure, &[4000; 256]);
}

#[test]
fn a_large_secure_message_leaves_no_buffer_behind() {
    assert_kept_little(Mode::Secure, &[1 << 20]);
}

#[test]
fn a_large_message_leaves_no_buffer_behind_crc() {
    assert_kept_little(Mode::Crc, &[4 << 20]);
}
