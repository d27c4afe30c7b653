//! The peers put asyncmsgr's bytes on the wire: a request framed by `bench::wire` equals
//! the frame the v1 session machine (asyncmsgr's sender) produces for the same message,
//! and a reply captured on the socket from a running asyncmsgr bench server equals the
//! bench's frame of that reply, byte for byte — crcs included.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bench::args::{Args, MsgrVariant};
use bench::wire::{client_name, Framer, FOOTER_LEN, HEAD_LEN, MSG_PING, SERVER_NAME};
use bytes::Bytes;
use protocol::message::PRIO_DEFAULT;
use protocol::types::EntityAddr;
use protocol::Message;

#[test]
fn captured_frames_match() {
    let args = Args::default();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = bench::msgr::server(&args, loopback, MsgrVariant::default()).unwrap();
    let addr = server.addr;
    let mut cfg = protocol::Config::new(client_name(0), EntityAddr::legacy(loopback, 4242));
    cfg.crc_header = true;
    cfg.crc_data = true;
    let (mut conn, mut sock) = bench::idle::handshake(addr, &Arc::new(cfg)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Request tid 1 (seq 1 of the session): 4 KiB of data, as the bench client sends it.
    let payload = Bytes::from((0..4096u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    let mut msg = Message::new(MSG_PING, Bytes::new());
    msg.set_tid(1);
    msg.set_data(payload.clone());
    // The messenger's driver gives a message without a priority the default one.
    msg.set_priority(PRIO_DEFAULT);
    conn.send_message(msg);
    let mut segs = Vec::new();
    conn.poll_transmit(&mut segs);
    let theirs: Vec<u8> = segs.iter().flat_map(|s| s.iter().copied()).collect();
    let mut ours = Vec::new();
    Framer::new(client_name(0), true).encode(1, &payload, &mut ours);
    assert_eq!(ours.len(), HEAD_LEN + payload.len() + FOOTER_LEN);
    assert_eq!(theirs, ours, "request frame differs from the session machine's");

    // The asyncmsgr server accepts our frame (its crcs check out) and answers; its reply
    // on the socket is exactly the bench's reply frame.
    sock.write_all(&ours).unwrap();
    let mut captured = vec![0u8; HEAD_LEN + FOOTER_LEN];
    sock.read_exact(&mut captured).unwrap();
    let mut expected = Vec::new();
    Framer::new(SERVER_NAME, true).encode(1, &[], &mut expected);
    assert_eq!(captured, expected, "asyncmsgr's reply differs from the bench's frame");
    server.shutdown();
}
