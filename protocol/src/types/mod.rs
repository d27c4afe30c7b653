//! Ceph's basic wire types: entity names and types, entity addresses, feature bits and
//! protocol/auth constants.

mod addr;
mod entity;
mod features;

pub use addr::unmapped;
pub(crate) use addr::with_port;
pub use addr::{AddrType, EntityAddr, EntityAddrVec, LEGACY_ADDR_LEN, RACE_KEY_LEN};
pub use entity::{AuthEntityName, EntityName, EntityType};
pub use features::Features;

/// `CEPH_AUTH_UNKNOWN`: no authorizer.
pub const AUTH_UNKNOWN: u32 = 0;
/// `CEPH_AUTH_NONE`.
pub const AUTH_NONE: u32 = 1;
/// `CEPH_AUTH_CEPHX`.
pub const AUTH_CEPHX: u32 = 2;
/// `CEPH_AUTH_GSS`.
pub const AUTH_GSS: u32 = 4;

/// `CEPH_MON_PROTOCOL` (`src/mon/Monitor.h`): mon ↔ mon cluster protocol. Verified live.
pub const CEPH_MON_PROTOCOL: u32 = 13;
/// `CEPH_OSD_PROTOCOL` (`src/osd/OSD.h`): osd ↔ osd cluster protocol.
pub const CEPH_OSD_PROTOCOL: u32 = 10;
/// `CEPH_MDS_PROTOCOL` (`src/mds/MDSDaemon.h`): mds ↔ mds cluster protocol.
///
/// The value moved over releases (stored Ceph copies show 33, 34 and 36); 36 is the one
/// in the newest stored tree, which has the Pacific-era `MDSDaemon(.., io_context&)`
/// constructor. Not verified against a live 16.2 MDS; only mds ↔ mds sessions use it.
pub const CEPH_MDS_PROTOCOL: u32 = 36;
/// `CEPH_MONC_PROTOCOL` (`src/include/ceph_fs.h`): anything ↔ mon. Verified live.
pub const CEPH_MONC_PROTOCOL: u32 = 15;
/// `CEPH_OSDC_PROTOCOL`: anything ↔ osd.
pub const CEPH_OSDC_PROTOCOL: u32 = 24;
/// `CEPH_MDSC_PROTOCOL`: anything ↔ mds.
pub const CEPH_MDSC_PROTOCOL: u32 = 32;

/// The `protocol_version` for a v1 connect (`AsyncMessenger::get_proto_version`).
///
/// Same type on both ends: that daemon's cluster protocol (0 for clients and mgrs).
/// Different types: the connector sends the value for the *peer's* type, the acceptor
/// expects the value for *its own* type (`connecting` says which side we are).
pub fn proto_version(my_type: EntityType, peer_type: EntityType, connecting: bool) -> u32 {
    if my_type == peer_type {
        return match my_type {
            EntityType::MON => CEPH_MON_PROTOCOL,
            EntityType::OSD => CEPH_OSD_PROTOCOL,
            EntityType::MDS => CEPH_MDS_PROTOCOL,
            _ => 0,
        };
    }
    match if connecting { peer_type } else { my_type } {
        EntityType::MON => CEPH_MONC_PROTOCOL,
        EntityType::OSD => CEPH_OSDC_PROTOCOL,
        EntityType::MDS => CEPH_MDSC_PROTOCOL,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_versions_match_msgr_v1_3_4() {
        use EntityType as T;
        assert_eq!(proto_version(T::CLIENT, T::MON, true), 15);
        assert_eq!(proto_version(T::CLIENT, T::OSD, true), 24);
        assert_eq!(proto_version(T::CLIENT, T::MDS, true), 32);
        assert_eq!(proto_version(T::OSD, T::MON, true), 15);
        assert_eq!(proto_version(T::MON, T::MON, true), 13);
        assert_eq!(proto_version(T::OSD, T::OSD, false), 10);
        assert_eq!(proto_version(T::MGR, T::MON, true), 15);
        assert_eq!(proto_version(T::MON, T::CLIENT, true), 0);
        // The acceptor expects its own client-facing value.
        assert_eq!(proto_version(T::MON, T::CLIENT, false), 15);
        assert_eq!(proto_version(T::CLIENT, T::CLIENT, false), 0);
    }
}
