//! The decoder's direct-read path: a large data segment split across reads is assembled
//! in one buffer reserved at its full length, into which a driver reads the rest directly.

// The workspace names this package's library `protocol` (see the root Cargo.toml).
extern crate asyncmsgr_protocol as protocol;

use bytes::{BufMut, Bytes};
use protocol::message::{
    DecodeOptions, EncodeOptions, MessageDecoder, Progress, DIRECT_ASSEMBLY_MIN,
};
use protocol::types::{EntityName, EntityType};
use protocol::Message;

fn frame_after_tag(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode_frame(1, EntityName::new(EntityType::OSD, 0), &EncodeOptions::default())
        .write_to(&mut out);
    // The frame starts with the MSG tag byte, which the session reads itself.
    out.split_off(1)
}

#[test]
fn large_segment_read_directly_into_its_assembly_buffer_arrives_intact() {
    let len = 4 * DIRECT_ASSEMBLY_MIN + 17;
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut msg = Message::new(0x7f00, Bytes::from_static(b"front"));
    msg.set_data(Bytes::from(data.clone()));
    let wire = frame_after_tag(&msg);

    let mut dec = MessageDecoder::new(DecodeOptions::default());
    // Header, front and the first 1000 data bytes arrive in one ordinary read.
    let first = 53 + 5 + 1000;
    let mut input = Bytes::copy_from_slice(&wire[..first]);
    assert!(matches!(dec.feed(&mut input), Ok(Progress::HeaderReady(_))));
    dec.proceed().expect("proceed");
    assert!(matches!(dec.feed(&mut input), Ok(Progress::NeedMore)));
    assert!(input.is_empty());

    // The rest of the data goes straight into the assembly buffer, in pieces, never
    // more than it asks for.
    let mut pos = first;
    let data_end = 53 + 5 + len;
    while let Some((buf, need)) = dec.assembly_buffer() {
        assert_eq!(need, data_end - pos, "asks for exactly the rest of the segment");
        let piece = need.min(70_000);
        buf.put_slice(&wire[pos..pos + piece]);
        pos += piece;
        assert!(matches!(dec.feed(&mut Bytes::new()), Ok(Progress::NeedMore)));
    }
    assert_eq!(pos, data_end, "the buffer is offered until the segment is complete");

    // The footer comes as an ordinary read.
    let mut rest = Bytes::copy_from_slice(&wire[pos..]);
    let Ok(Progress::Message(got)) = dec.feed(&mut rest) else {
        panic!("no message after the footer");
    };
    assert_eq!(got.data().as_ref(), &data[..], "payload intact, crc verified");
    assert_eq!(got.front().as_ref(), b"front");
}

#[test]
fn small_segments_are_not_offered_for_direct_reads() {
    let mut msg = Message::new(0x7f00, Bytes::new());
    msg.set_data(Bytes::from(vec![9u8; DIRECT_ASSEMBLY_MIN - 1]));
    let wire = frame_after_tag(&msg);
    let mut dec = MessageDecoder::new(DecodeOptions::default());
    let mut input = Bytes::copy_from_slice(&wire[..53 + 100]);
    assert!(matches!(dec.feed(&mut input), Ok(Progress::HeaderReady(_))));
    dec.proceed().expect("proceed");
    assert!(matches!(dec.feed(&mut input), Ok(Progress::NeedMore)));
    assert!(dec.assembly_buffer().is_none());
}
