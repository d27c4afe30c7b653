//! Messenger configuration, with Ceph's option names and defaults.

use std::time::Duration;

/// Options of one messenger. Field names are Ceph's `ms_*` options without the prefix;
/// defaults are Ceph's (Pacific).
#[derive(Clone, Debug)]
pub struct MessengerConfig {
    /// Worker threads to create when the messenger is not given a shared pool.
    pub workers: usize,
    /// `ms_tcp_nodelay`: disable Nagle on every socket (messages are small and latency-bound).
    pub tcp_nodelay: bool,
    /// `ms_tcp_rcvbuf` (0 = kernel default).
    pub tcp_rcvbuf: usize,
    /// Send buffer size (0 = kernel default).
    pub tcp_sndbuf: usize,
    /// `ms_initial_backoff`: first reconnect delay of a lossless connection.
    pub initial_backoff: Duration,
    /// `ms_max_backoff`: reconnect delay cap (also the WAIT backoff).
    pub max_backoff: Duration,
    /// `ms_connection_ready_timeout`: the whole handshake must complete within this time,
    /// counted from accept (or from the start of the dial); progress does not extend it,
    /// so a peer trickling its handshake byte by byte is cut off too.
    pub connection_ready_timeout: Duration,
    /// While a message arrives, its payload must progress by at least one window of
    /// budget (`read_buffer` bytes) within this time, or the connection faults and
    /// releases what the message held (ours; see the crate docs, "Bounds").
    pub payload_timeout: Duration,
    /// Bytes waiting to be sent that the socket takes none of for this long fault the
    /// connection: the peer stopped reading (ours; see the crate docs, "Bounds").
    pub write_timeout: Duration,
    /// `ms_connection_idle_timeout`: an open connection with no traffic for this long is closed.
    pub connection_idle_timeout: Duration,
    /// Interval of keepalives sent on open connections (`None` = only on request).
    pub keepalive_interval: Option<Duration>,
    /// `ms_dispatch_throttle_bytes`: bytes of received messages waiting for or inside dispatch.
    pub dispatch_throttle_bytes: u64,
    /// `ms_crc_header`: compute and check header, front and middle crcs.
    pub crc_header: bool,
    /// `ms_crc_data`: compute and check the data crc.
    pub crc_data: bool,
    /// Largest front a peer may send (checked before allocating).
    pub max_front: u32,
    /// Largest middle a peer may send.
    pub max_middle: u32,
    /// Largest data segment a peer may send (Ceph's `osd_max_write_size`-like bound).
    pub max_data: u32,
    /// Bytes read per socket readiness event before yielding to other connections.
    pub read_budget: usize,
    /// Size of the reusable read buffer of a connection while it is active.
    pub read_buffer: usize,
    /// Bound on the sender side, per connection: what messages queued on one
    /// connection cost until they leave it (written, or acknowledged on a lossless
    /// session), counted in framed bytes plus a per-message overhead
    /// (`Message::send_cost`). `send_message` beyond it fails with `QueueFull`.
    pub max_queued_bytes: u64,
    /// The same bound over all connections of the messenger together.
    pub max_total_queued_bytes: u64,
}

impl Default for MessengerConfig {
    fn default() -> Self {
        MessengerConfig {
            workers: 3,
            tcp_nodelay: true,
            tcp_rcvbuf: 0,
            tcp_sndbuf: 0,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(15),
            connection_ready_timeout: Duration::from_secs(10),
            connection_idle_timeout: Duration::from_secs(900),
            payload_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            keepalive_interval: None,
            dispatch_throttle_bytes: 100 << 20,
            crc_header: true,
            crc_data: true,
            max_front: 64 << 20,
            max_middle: 64 << 20,
            max_data: 128 << 20,
            read_budget: 1 << 20,
            read_buffer: 64 << 10,
            max_queued_bytes: 256 << 20,
            max_total_queued_bytes: 1 << 30,
        }
    }
}
