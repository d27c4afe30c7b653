//! msgr v1 message frames for the non-asyncmsgr peers, built and checked with the
//! `protocol` crate's pure functions, so every peer puts the same bytes on the wire as
//! asyncmsgr and does the same crc work (`tests::captured_frames_match` compares them).
//!
//! A frame is `Tag::MSG`, the 53-byte `ceph_msg_header` (crc over its first 49 bytes),
//! front, middle, data, and the 21-byte `ceph_msg_footer` (front/middle/data crcs,
//! signature 0, flags). The peers send an empty front and middle and the payload as data,
//! exactly as the asyncmsgr client sends `Message::new(MSG_PING, empty).set_data(payload)`.
//! There is no handshake and no ACK: the peers model an open lossy v1 session.

use std::fmt;

use protocol::message::{seal, DecodeLimits, PRIO_DEFAULT};
use protocol::types::{EntityName, EntityType};
use protocol::wire::{ceph_crc32c, FooterFlags, FooterFormat, MsgFooter, MsgHeader, Tag};

/// `CEPH_MSG_PING`: every request and reply of the benchmark has this type.
pub const MSG_PING: u16 = 2;

/// Who sends requests (the client side of every peer); asyncmsgr's client messenger
/// number `i` is `client.i`.
pub fn client_name(i: usize) -> EntityName {
    EntityName::new(EntityType::CLIENT, i as i64)
}

/// Who sends replies (the server side of every peer), as asyncmsgr's bench server.
pub const SERVER_NAME: EntityName = EntityName::new(EntityType::OSD, 0);

/// The footer of every connection: peers that negotiated `MSG_AUTH`, as all Ceph since
/// Bobtail do, use the 21-byte form.
const FOOTER: FooterFormat = FooterFormat::New;

/// Bytes before the payload: the tag and the header.
pub const HEAD_LEN: usize = 1 + MsgHeader::LEN;

/// Bytes of the footer.
pub const FOOTER_LEN: usize = FOOTER.encoded_len();

/// Frames one direction of a session: assigns `seq` 1, 2, … and computes the crcs.
#[derive(Debug)]
pub struct Framer {
    src: EntityName,
    crc: bool,
    /// The seq of the next frame.
    next_seq: u64,
}

impl Framer {
    /// A sender as `src`; `crc` sets both `ms_crc_header` and `ms_crc_data`.
    pub fn new(src: EntityName, crc: bool) -> Framer {
        Framer { src, crc, next_seq: 1 }
    }

    /// The 54 bytes before the payload and the footer of message `tid` carrying `data`,
    /// from the `protocol` crate's v1 encoder ([`seal`]: header crc, front,
    /// middle and data crcs, as the messenger's own frames).
    pub fn frame(&mut self, tid: u64, data: &[u8]) -> ([u8; HEAD_LEN], [u8; FOOTER_LEN]) {
        let fields = MsgHeader {
            seq: self.next_seq,
            tid,
            msg_type: MSG_PING,
            priority: PRIO_DEFAULT,
            src: self.src,
            ..MsgHeader::default()
        };
        self.next_seq += 1;
        let sealed = seal(fields, [&[], &[], data], self.crc, self.crc);
        let (bytes, _) = sealed.footer.to_bytes(FOOTER);
        let mut foot = [0u8; FOOTER_LEN];
        foot.copy_from_slice(&bytes[..FOOTER_LEN]);
        (sealed.head, foot)
    }

    /// Appends the whole frame of message `tid` to `out` (the payload is copied: what a
    /// codec writing into one buffer does).
    pub fn encode(&mut self, tid: u64, data: &[u8], out: &mut impl bytes::BufMut) {
        let (head, foot) = self.frame(tid, data);
        out.put_slice(&head);
        out.put_slice(data);
        out.put_slice(&foot);
    }
}

/// Why a received frame was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not `Tag::MSG`.
    BadTag(u8),
    /// A header field or crc is wrong.
    Header(String),
    /// A segment longer than the limits.
    TooLarge(u64),
    /// A front, middle or data crc does not match the footer.
    BadCrc(&'static str),
    /// The footer lacks `COMPLETE`.
    Aborted,
    /// `seq` is not the next one.
    Seq {
        /// The seq expected.
        expected: u64,
        /// The seq received.
        got: u64,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadTag(t) => write!(f, "tag {t} where a message was expected"),
            WireError::Header(e) => write!(f, "bad header: {e}"),
            WireError::TooLarge(n) => write!(f, "{n}-byte payload exceeds the limits"),
            WireError::BadCrc(what) => write!(f, "bad {what} crc"),
            WireError::Aborted => f.write_str("message not COMPLETE"),
            WireError::Seq { expected, got } => write!(f, "seq {got}, expected {expected}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for std::io::Error {
    fn from(e: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// What [`Deframer::parse`] found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole frame yet; the frame needs this many bytes in all (a lower bound
    /// until the header is in).
    NeedMore(usize),
    /// A whole, verified frame of `len` bytes.
    Frame {
        /// The verified header.
        header: MsgHeader,
        /// Bytes of the frame, tag to footer.
        len: usize,
    },
}

/// Checks one direction of a session as the messenger's receiver does: tag, header
/// crc, segment limits, front/middle/data crcs, `COMPLETE`, and `seq` 1, 2, ….
#[derive(Debug)]
pub struct Deframer {
    crc: bool,
    limits: DecodeLimits,
    /// The seq of the next frame.
    next_seq: u64,
}

impl Deframer {
    /// A receiver that checks crcs when `crc` (as `ms_crc_header` + `ms_crc_data`).
    pub fn new(crc: bool) -> Deframer {
        Deframer { crc, limits: DecodeLimits::default(), next_seq: 1 }
    }

    /// Total frame length announced by the header at the start of `buf`, once the header
    /// is in (lengths unchecked: for deciding whether a buffer holds a whole frame).
    pub fn frame_len(buf: &[u8]) -> Option<usize> {
        let h = MsgHeader::decode(buf.get(1..HEAD_LEN)?).ok()?.0;
        usize::try_from(h.payload_len()).ok().map(|p| HEAD_LEN + p + FOOTER_LEN)
    }

    /// The length of the frame whose first [`HEAD_LEN`] bytes are `head`, its tag and
    /// segment lengths checked as [`Deframer::parse`] checks them, not its header crc:
    /// for a reader that must know how much to read before the frame is in. `parse` then
    /// checks the whole frame, the header crc once.
    pub fn checked_len(&self, head: &[u8]) -> Result<usize, WireError> {
        let Some(head) = head.get(..HEAD_LEN) else {
            return Err(WireError::Header("short header".into()));
        };
        if head[0] != Tag::MSG.0 {
            return Err(WireError::BadTag(head[0]));
        }
        let (header, _) =
            MsgHeader::decode(&head[1..]).map_err(|e| WireError::Header(e.to_string()))?;
        let l = &self.limits;
        if header.front_len > l.max_front
            || header.middle_len > l.max_middle
            || header.data_len > l.max_data
        {
            return Err(WireError::TooLarge(header.payload_len()));
        }
        let payload = header.front_len as usize + header.middle_len as usize;
        Ok(HEAD_LEN + payload + header.data_len as usize + FOOTER_LEN)
    }

    /// Checks the frame at the start of `buf`. On [`Parsed::Frame`] the caller consumes
    /// `len` bytes; nothing here allocates from a peer-supplied length.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parsed, WireError> {
        let Some(head) = buf.get(..HEAD_LEN) else {
            return Ok(Parsed::NeedMore(HEAD_LEN));
        };
        if head[0] != Tag::MSG.0 {
            return Err(WireError::BadTag(head[0]));
        }
        let (header, _) =
            MsgHeader::decode(&head[1..]).map_err(|e| WireError::Header(e.to_string()))?;
        let l = &self.limits;
        if header.front_len > l.max_front
            || header.middle_len > l.max_middle
            || header.data_len > l.max_data
        {
            return Err(WireError::TooLarge(header.payload_len()));
        }
        let (front, middle, data) =
            (header.front_len as usize, header.middle_len as usize, header.data_len as usize);
        let len = HEAD_LEN + front + middle + data + FOOTER_LEN;
        let Some(frame) = buf.get(..len) else {
            return Ok(Parsed::NeedMore(len));
        };
        // The crc on the bytes received, as asyncmsgr's decoder takes it, once per frame:
        // a caller that parses after every read (the tokio codec) does not take it again
        // for each read a large frame needs.
        if self.crc {
            let got = ceph_crc32c(0, &head[1..1 + MsgHeader::CRC_COVERED]);
            if got != header.crc {
                return Err(WireError::Header(format!(
                    "bad header crc: {got:#010x}, the header says {:#010x}",
                    header.crc
                )));
            }
        }
        let (footer, _) = MsgFooter::decode(&frame[len - FOOTER_LEN..], FOOTER)
            .map_err(|e| WireError::Header(e.to_string()))?;
        if !footer.flags.contains(FooterFlags::COMPLETE) {
            return Err(WireError::Aborted);
        }
        if self.crc {
            let mut at = HEAD_LEN;
            let mut check = |n: usize, want: u32, what: &'static str| {
                let seg = &frame[at..at + n];
                at += n;
                if ceph_crc32c(0, seg) == want {
                    Ok(())
                } else {
                    Err(WireError::BadCrc(what))
                }
            };
            check(front, footer.front_crc, "front")?;
            check(middle, footer.middle_crc, "middle")?;
            if !footer.flags.contains(FooterFlags::NOCRC) {
                check(data, footer.data_crc, "data")?;
            }
        }
        if header.seq != self.next_seq {
            return Err(WireError::Seq { expected: self.next_seq, got: header.seq });
        }
        self.next_seq += 1;
        Ok(Parsed::Frame { header, len })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(framer: &mut Framer, tid: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        framer.encode(tid, data, &mut out);
        out
    }

    #[test]
    fn frames_round_trip_and_seq_advances() {
        let mut f = Framer::new(client_name(3), true);
        let mut d = Deframer::new(true);
        for (tid, len) in [(1u64, 0usize), (2, 64), (3, 4096)] {
            let bytes = frame(&mut f, tid, &vec![0xa5; len]);
            assert_eq!(bytes.len(), HEAD_LEN + len + FOOTER_LEN);
            assert_eq!(Deframer::frame_len(&bytes), Some(bytes.len()));
            assert_eq!(d.checked_len(&bytes[..HEAD_LEN]).unwrap(), bytes.len());
            assert_eq!(d.parse(&bytes[..bytes.len() - 1]).unwrap(), Parsed::NeedMore(bytes.len()));
            let Parsed::Frame { header, len: n } = d.parse(&bytes).unwrap() else { panic!() };
            assert_eq!((header.tid, header.seq, n), (tid, tid, bytes.len()));
        }
    }

    /// A frame that arrives over several reads has its header crc taken once, when the
    /// frame is whole, as the std peer (`checked_len`, then `parse`) and asyncmsgr's
    /// decoder take it: the tokio codec calls `parse` after every read, and a header crc
    /// per call was crc work the other peers do not do. Observable: until the frame is
    /// whole, a header whose crc is wrong is not looked at (its tag and lengths are).
    #[test]
    fn the_header_crc_is_taken_once_the_frame_is_whole() {
        let mut f = Framer::new(client_name(0), true);
        let mut bad = frame(&mut f, 1, &[7u8; 4096]);
        bad[1 + 20] ^= 1; // the header's version field: its crc no longer matches
        let mut d = Deframer::new(true);
        for n in [HEAD_LEN, HEAD_LEN + 100, bad.len() - 1] {
            assert_eq!(d.parse(&bad[..n]), Ok(Parsed::NeedMore(bad.len())), "{n} bytes in");
        }
        let err = d.parse(&bad).unwrap_err();
        assert!(err.to_string().contains("bad header"), "{err}");
        // A bad tag or length is still refused at once.
        let mut huge = bad[..HEAD_LEN].to_vec();
        huge[1 + 30..1 + 34].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(d.parse(&huge), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn every_corruption_is_refused() {
        let mut f = Framer::new(client_name(0), true);
        let good = frame(&mut f, 1, &[7u8; 100]);
        // One flipped bit in the header, the data, the footer's data crc, the tag.
        for (at, want) in [
            (10, "bad header"),
            (HEAD_LEN + 50, "bad data crc"),
            (HEAD_LEN + 100 + 8, "bad data crc"),
            (0, "tag"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            let err = Deframer::new(true).parse(&bad).unwrap_err();
            assert!(err.to_string().contains(want), "{at}: {err}");
        }
        // The length alone checks the tag and the limits, not the header crc (parse
        // does, once the frame is in).
        let mut bad_tag = good.clone();
        bad_tag[0] ^= 1;
        assert!(matches!(Deframer::new(true).checked_len(&bad_tag), Err(WireError::BadTag(_))));
        let mut bad_crc = good.clone();
        bad_crc[10] ^= 1;
        assert!(Deframer::new(true).checked_len(&bad_crc).is_ok());
        let huge = frame(&mut f, 2, &[]);
        let mut huge = huge[..HEAD_LEN].to_vec();
        // data_len (header offset 30, after the tag) past the limit.
        huge[1 + 30..1 + 34].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Deframer::new(true).checked_len(&huge), Err(WireError::TooLarge(_))));
        // A replayed frame (seq 1 twice) is refused.
        let mut d = Deframer::new(true);
        assert!(matches!(d.parse(&good).unwrap(), Parsed::Frame { .. }));
        assert_eq!(d.parse(&good).unwrap_err(), WireError::Seq { expected: 2, got: 1 });
        // Without crc the footer says NOCRC and corrupt data passes, as in Ceph.
        let mut nocrc = Framer::new(client_name(0), false);
        let mut bytes = frame(&mut nocrc, 1, &[7u8; 100]);
        bytes[HEAD_LEN] ^= 1;
        assert!(matches!(Deframer::new(false).parse(&bytes).unwrap(), Parsed::Frame { .. }));
    }
}
