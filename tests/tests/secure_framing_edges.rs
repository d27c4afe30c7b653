//! msgr2 frames at the padding and inline boundaries against a real Ceph 16.2 monitor,
//! in secure mode and in crc mode: MMonGetMap messages whose front, middle and data are
//! 0, 1, 15, 16, 17, 47, 48, 49, 4095, 4096 and 4097 bytes long (the monitor ignores
//! their contents), each answered with an MMonMap on the same connection: the monitor's
//! frame assembler accepted every one of our layouts. Skipped when Ceph is not
//! installed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use messenger::MessengerConfig;
use protocol::auth::cephx::TicketStore;
use protocol::auth::{ConMode, ConModes};
use protocol::messages::MsgType;
use protocol::types::{AddrType, EntityAddr, EntityType};
use protocol::Message;
use tests::ceph::CephMon;
use tests::cephx::{client_admin, monitor_client};
use tests::loopback::{init_logging, test_config, Seen, WAIT};

const EDGES: [usize; 11] = [0, 1, 15, 16, 17, 47, 48, 49, 4095, 4096, 4097];

fn frames_at_every_padding_edge(test: &str, mode: ConMode) {
    init_logging();
    let Some(mon) = CephMon::start_cephx_msgr2_only(test, &[]).expect("start") else {
        return;
    };
    let addr = EntityAddr { ty: AddrType::MSGR2, nonce: 0, addr: Some(mon.addr()) };
    let (name, key) = client_admin(&mon.keyring());
    let store = Arc::new(TicketStore::default());
    let config = MessengerConfig { mon_client_mode: Some(ConModes(vec![mode])), ..test_config(1) };
    let (msgr, rx) = monitor_client(&name, &key, &store, config);
    let conn = msgr.connect_to(EntityType::MON, addr);
    let pat =
        |n: usize, k: usize| Bytes::from((0..n).map(|i| (i * 31 + k) as u8).collect::<Vec<_>>());
    let mut k = 0;
    for &front in &EDGES {
        for &middle in &[0usize, 1, 16, 17] {
            for &data in &EDGES {
                k += 1;
                let mut m = Message::new(MsgType::MON_GET_MAP.0, pat(front, k));
                m.set_version(1);
                m.set_compat_version(1);
                m.set_middle(pat(middle, k));
                m.set_data(pat(data, k));
                conn.send_message(m).expect("send");
                let deadline = Instant::now() + WAIT;
                loop {
                    match rx.recv_deadline(deadline) {
                        Ok(Seen::Message(c, m)) if c == conn => {
                            assert_eq!(m.msg_type(), MsgType::MON_MAP.0);
                            break;
                        }
                        Ok(Seen::Reset(c) | Seen::Refused(c)) if c == conn => {
                            panic!("front {front} middle {middle} data {data}: dropped")
                        }
                        Ok(_) => {}
                        Err(e) => panic!("front {front} middle {middle} data {data}: {e}"),
                    }
                }
            }
        }
    }
    assert_eq!(k, EDGES.len() * 4 * EDGES.len());
    assert_eq!(conn.con_mode(), Some(mode));
    msgr.shutdown();
}

#[test]
fn secure_frames_at_every_padding_edge_are_accepted_by_a_real_monitor() {
    frames_at_every_padding_edge("secure_edges", ConMode::SECURE);
}

#[test]
fn crc_frames_at_every_padding_edge_are_accepted_by_a_real_monitor() {
    frames_at_every_padding_edge("crc_edges", ConMode::CRC);
}
