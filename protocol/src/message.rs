//! [`Message`]: one Ceph message (header, front, middle, data, footer) as zero-copy segments.

use bytes::Bytes;

/// `CEPH_MSG_PRIO_LOW`.
pub const PRIO_LOW: u16 = 64;
/// `CEPH_MSG_PRIO_DEFAULT`.
pub const PRIO_DEFAULT: u16 = 127;
/// `CEPH_MSG_PRIO_HIGH`.
pub const PRIO_HIGH: u16 = 196;
/// `CEPH_MSG_PRIO_HIGHEST`.
pub const PRIO_HIGHEST: u16 = 255;

/// A Ceph message: the header fields the upper layers set, plus payload segments.
///
/// Placeholder shape fixed early so `dispatch` can build against it; the wire codec
/// extends it (header/footer structs, timestamps) without changing these accessors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    msg_type: u16,
    version: u16,
    compat_version: u16,
    priority: u16,
    tid: u64,
    seq: u64,
    front: Bytes,
    middle: Bytes,
    data: Bytes,
}

impl Message {
    /// A message of `msg_type` whose front (payload) is `front`.
    pub fn new(msg_type: u16, front: Bytes) -> Self {
        Message { msg_type, front, ..Default::default() }
    }
    /// The message type number (`CEPH_MSG_*`).
    pub fn msg_type(&self) -> u16 {
        self.msg_type
    }
    /// Encoding version of the payload (the message's HEAD_VERSION).
    pub fn version(&self) -> u16 {
        self.version
    }
    /// Sets the payload encoding version.
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }
    /// Oldest decoder version able to read the payload.
    pub fn compat_version(&self) -> u16 {
        self.compat_version
    }
    /// Sets the compat version.
    pub fn set_compat_version(&mut self, compat_version: u16) {
        self.compat_version = compat_version;
    }
    /// Sets the middle segment.
    pub fn set_middle(&mut self, middle: Bytes) {
        self.middle = middle;
    }
    /// Queueing priority (`PRIO_*`); 0 means "the messenger's default".
    pub fn priority(&self) -> u16 {
        self.priority
    }
    /// Sets the queueing priority.
    pub fn set_priority(&mut self, priority: u16) {
        self.priority = priority;
    }
    /// Transaction id chosen by the upper layer.
    pub fn tid(&self) -> u64 {
        self.tid
    }
    /// Sets the transaction id.
    pub fn set_tid(&mut self, tid: u64) {
        self.tid = tid;
    }
    /// Session sequence number (assigned when sent).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The front segment.
    pub fn front(&self) -> &Bytes {
        &self.front
    }
    /// The middle segment.
    pub fn middle(&self) -> &Bytes {
        &self.middle
    }
    /// The data segment.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
    /// Sets the data segment.
    pub fn set_data(&mut self, data: Bytes) {
        self.data = data;
    }
    /// Payload bytes (front + middle + data): what the throttles charge.
    pub fn payload_len(&self) -> usize {
        self.front.len() + self.middle.len() + self.data.len()
    }
}
