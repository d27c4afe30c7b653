//! Message type numbers (`CEPH_MSG_*` from `src/include/ceph_fs.h`, `MSG_*` from
//! `src/msg/Message.h`), msgr-v1.md section 6.

use std::fmt;

/// A message type number as carried in `ceph_msg_header.type`.
///
/// A newtype rather than an enum so that an unknown type still decodes: the registry
/// ([`super::decode_any`]) keeps such a message raw, and the caller decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgType(pub u16);

impl MsgType {
    /// `CEPH_MSG_SHUTDOWN`.
    pub const SHUTDOWN: MsgType = MsgType(1);
    /// `CEPH_MSG_PING` ([`super::MPing`]).
    pub const PING: MsgType = MsgType(2);
    /// `CEPH_MSG_MON_MAP` ([`super::MMonMap`]).
    pub const MON_MAP: MsgType = MsgType(4);
    /// `CEPH_MSG_MON_GET_MAP` (empty payload; a monitor answers with `MON_MAP`).
    pub const MON_GET_MAP: MsgType = MsgType(5);
    /// `CEPH_MSG_MON_GET_OSDMAP`.
    pub const MON_GET_OSDMAP: MsgType = MsgType(6);
    /// `CEPH_MSG_STATFS`.
    pub const STATFS: MsgType = MsgType(13);
    /// `CEPH_MSG_STATFS_REPLY`.
    pub const STATFS_REPLY: MsgType = MsgType(14);
    /// `CEPH_MSG_MON_SUBSCRIBE` ([`super::MMonSubscribe`]).
    pub const MON_SUBSCRIBE: MsgType = MsgType(15);
    /// `CEPH_MSG_MON_SUBSCRIBE_ACK` ([`super::MMonSubscribeAck`]).
    pub const MON_SUBSCRIBE_ACK: MsgType = MsgType(16);
    /// `CEPH_MSG_AUTH` ([`super::MAuth`]).
    pub const AUTH: MsgType = MsgType(17);
    /// `CEPH_MSG_AUTH_REPLY` ([`super::MAuthReply`]).
    pub const AUTH_REPLY: MsgType = MsgType(18);
    /// `CEPH_MSG_MON_GET_VERSION` ([`super::MMonGetVersion`]).
    pub const MON_GET_VERSION: MsgType = MsgType(19);
    /// `CEPH_MSG_MON_GET_VERSION_REPLY` ([`super::MMonGetVersionReply`]).
    pub const MON_GET_VERSION_REPLY: MsgType = MsgType(20);
    /// `CEPH_MSG_MDS_MAP`.
    pub const MDS_MAP: MsgType = MsgType(21);
    /// `CEPH_MSG_CLIENT_SESSION`.
    pub const CLIENT_SESSION: MsgType = MsgType(22);
    /// `CEPH_MSG_CLIENT_RECONNECT`.
    pub const CLIENT_RECONNECT: MsgType = MsgType(23);
    /// `CEPH_MSG_CLIENT_REQUEST`.
    pub const CLIENT_REQUEST: MsgType = MsgType(24);
    /// `CEPH_MSG_CLIENT_REQUEST_FORWARD`.
    pub const CLIENT_REQUEST_FORWARD: MsgType = MsgType(25);
    /// `CEPH_MSG_CLIENT_REPLY`.
    pub const CLIENT_REPLY: MsgType = MsgType(26);
    /// `CEPH_MSG_OSD_MAP`.
    pub const OSD_MAP: MsgType = MsgType(41);
    /// `CEPH_MSG_OSD_OP`.
    pub const OSD_OP: MsgType = MsgType(42);
    /// `CEPH_MSG_OSD_OPREPLY`.
    pub const OSD_OPREPLY: MsgType = MsgType(43);
    /// `CEPH_MSG_WATCH_NOTIFY`.
    pub const WATCH_NOTIFY: MsgType = MsgType(44);
    /// `CEPH_MSG_FS_MAP`.
    pub const FS_MAP: MsgType = MsgType(45);
    /// `CEPH_MSG_POOLOP_REPLY`.
    pub const POOLOP_REPLY: MsgType = MsgType(48);
    /// `CEPH_MSG_POOLOP`.
    pub const POOLOP: MsgType = MsgType(49);
    /// `MSG_MON_COMMAND` ([`super::MMonCommand`]).
    pub const MON_COMMAND: MsgType = MsgType(50);
    /// `MSG_MON_COMMAND_ACK` ([`super::MMonCommandAck`]).
    pub const MON_COMMAND_ACK: MsgType = MsgType(51);
    /// `MSG_LOG`.
    pub const LOG: MsgType = MsgType(52);
    /// `MSG_LOGACK`.
    pub const LOGACK: MsgType = MsgType(53);
    /// `MSG_GETPOOLSTATS`.
    pub const GETPOOLSTATS: MsgType = MsgType(58);
    /// `MSG_GETPOOLSTATSREPLY`.
    pub const GETPOOLSTATS_REPLY: MsgType = MsgType(59);
    /// `MSG_MON_GLOBAL_ID` (monitor internal).
    pub const MON_GLOBAL_ID: MsgType = MsgType(60);
    /// `CEPH_MSG_OSD_BACKOFF`.
    pub const OSD_BACKOFF: MsgType = MsgType(61);
    /// `MSG_CONFIG` ([`super::MConfig`]).
    pub const CONFIG: MsgType = MsgType(62);
    /// `MSG_MON_ELECTION`.
    pub const MON_ELECTION: MsgType = MsgType(65);
    /// `MSG_MON_PAXOS`.
    pub const MON_PAXOS: MsgType = MsgType(66);
    /// `MSG_MON_PROBE`.
    pub const MON_PROBE: MsgType = MsgType(67);
    /// `MSG_MON_JOIN`.
    pub const MON_JOIN: MsgType = MsgType(68);
    /// `MSG_MON_SYNC`.
    pub const MON_SYNC: MsgType = MsgType(69);
    /// `MSG_OSD_PING` ([`super::MOSDPing`]).
    pub const OSD_PING: MsgType = MsgType(70);
    /// `MSG_OSD_BOOT`.
    pub const OSD_BOOT: MsgType = MsgType(71);
    /// `MSG_OSD_FAILURE`.
    pub const OSD_FAILURE: MsgType = MsgType(72);
    /// `MSG_OSD_ALIVE`.
    pub const OSD_ALIVE: MsgType = MsgType(73);
    /// `MSG_COMMAND` ([`super::MCommand`]).
    pub const COMMAND: MsgType = MsgType(97);
    /// `MSG_COMMAND_REPLY` ([`super::MCommandReply`]).
    pub const COMMAND_REPLY: MsgType = MsgType(98);
    /// `MSG_MDS_BEACON`.
    pub const MDS_BEACON: MsgType = MsgType(100);
    /// `MSG_MGR_MAP`.
    pub const MGR_MAP: MsgType = MsgType(0x704);

    /// Ceph's name for this type (`get_type_name()` style), or `None` when unknown here.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            MsgType::SHUTDOWN => "shutdown",
            MsgType::PING => "ping",
            MsgType::MON_MAP => "mon_map",
            MsgType::MON_GET_MAP => "mon_get_map",
            MsgType::MON_GET_OSDMAP => "mon_get_osdmap",
            MsgType::STATFS => "statfs",
            MsgType::STATFS_REPLY => "statfs_reply",
            MsgType::MON_SUBSCRIBE => "mon_subscribe",
            MsgType::MON_SUBSCRIBE_ACK => "mon_subscribe_ack",
            MsgType::AUTH => "auth",
            MsgType::AUTH_REPLY => "auth_reply",
            MsgType::MON_GET_VERSION => "mon_get_version",
            MsgType::MON_GET_VERSION_REPLY => "mon_get_version_reply",
            MsgType::MDS_MAP => "mds_map",
            MsgType::CLIENT_SESSION => "client_session",
            MsgType::CLIENT_RECONNECT => "client_reconnect",
            MsgType::CLIENT_REQUEST => "client_request",
            MsgType::CLIENT_REQUEST_FORWARD => "client_request_forward",
            MsgType::CLIENT_REPLY => "client_reply",
            MsgType::OSD_MAP => "osd_map",
            MsgType::OSD_OP => "osd_op",
            MsgType::OSD_OPREPLY => "osd_op_reply",
            MsgType::WATCH_NOTIFY => "watch_notify",
            MsgType::FS_MAP => "fs_map",
            MsgType::POOLOP_REPLY => "poolop_reply",
            MsgType::POOLOP => "poolop",
            MsgType::MON_COMMAND => "mon_command",
            MsgType::MON_COMMAND_ACK => "mon_command_ack",
            MsgType::LOG => "log",
            MsgType::LOGACK => "log_ack",
            MsgType::GETPOOLSTATS => "getpoolstats",
            MsgType::GETPOOLSTATS_REPLY => "getpoolstatsreply",
            MsgType::MON_GLOBAL_ID => "global_id",
            MsgType::OSD_BACKOFF => "osd_backoff",
            MsgType::CONFIG => "config",
            MsgType::MON_ELECTION => "election",
            MsgType::MON_PAXOS => "paxos",
            MsgType::MON_PROBE => "mon_probe",
            MsgType::MON_JOIN => "mon_join",
            MsgType::MON_SYNC => "mon_sync",
            MsgType::OSD_PING => "osd_ping",
            MsgType::OSD_BOOT => "osd_boot",
            MsgType::OSD_FAILURE => "osd_failure",
            MsgType::OSD_ALIVE => "osd_alive",
            MsgType::COMMAND => "command",
            MsgType::COMMAND_REPLY => "command_reply",
            MsgType::MDS_BEACON => "mdsbeacon",
            MsgType::MGR_MAP => "mgrmap",
            _ => return None,
        })
    }
}

impl From<u16> for MsgType {
    fn from(v: u16) -> Self {
        MsgType(v)
    }
}

impl From<MsgType> for u16 {
    fn from(t: MsgType) -> Self {
        t.0
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "type{}", self.0),
        }
    }
}
