//! Feature bits (`CEPH_FEATURE_*`, `src/include/ceph_features.h`, msgr-v1.md 3.5).

use std::fmt;
use std::ops::{BitAnd, BitOr, Not};

/// A set of Ceph feature bits.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u64);

macro_rules! features {
    ($($(#[$doc:meta])* $name:ident = $bit:expr;)*) => {
        impl Features {
            $($(#[$doc])* pub const $name: Features = Features(1u64 << $bit);)*
            /// Every named bit with its (first) name, in bit order, for logging.
            pub const NAMED: &'static [(Features, &'static str)] =
                &[$((Features::$name, stringify!($name)),)*];
        }
    };
}

features! {
    /// Bit 0.
    UID = 0;
    /// Bit 1: the 53-byte message header without source addresses.
    NOSRCADDR = 1;
    /// Bit 2 (was MONCLOCKCHECK).
    SERVER_NAUTILUS = 2;
    /// Bit 3.
    FLOCK = 3;
    /// Bit 4: new MMonSubscribe format.
    SUBSCRIBE2 = 4;
    /// Bit 5: named monitors in the MonMap.
    MONNAMES = 5;
    /// Bit 6: the acceptor answers `SEQ` and both sides exchange `in_seq`.
    RECONNECT_SEQ = 6;
    /// Bit 7.
    DIRLAYOUTHASH = 7;
    /// Bit 8.
    OBJECTLOCATOR = 8;
    /// Bit 9.
    PGID64 = 9;
    /// Bit 10.
    INCSUBOSDMAP = 10;
    /// Bit 11.
    PGPOOL3 = 11;
    /// Bit 12.
    OSDREPLYMUX = 12;
    /// Bit 13.
    OSDENC = 13;
    /// Bit 14.
    SERVER_KRAKEN = 14;
    /// Bit 15: versioned MonMap encoding.
    MONENC = 15;
    /// Bit 16 (also OSD_REPOP_MLCOD).
    SERVER_OCTOPUS = 16;
    /// Bit 17 (not advertised by 16.2.15).
    OS_PERF_STAT_NS = 17;
    /// Bit 18.
    CRUSH_TUNABLES = 18;
    /// Bit 19.
    OSD_PGLOG_HARDLIMIT = 19;
    /// Bit 20.
    SERVER_PACIFIC = 20;
    /// Bit 21 (also RESEND_ON_SPLIT, RADOS_BACKOFF, OSDMAP_PG_UPMAP, CRUSH_CHOOSE_ARGS).
    SERVER_LUMINOUS = 21;
    /// Bit 22.
    OSD_FIXED_COLLECTION_LIST = 22;
    /// Bit 23: 21-byte footer with signature (13-byte old footer without it).
    MSG_AUTH = 23;
    /// Bit 24.
    RECOVERY_RESERVATION_2 = 24;
    /// Bit 25.
    CRUSH_TUNABLES2 = 25;
    /// Bit 26.
    CREATEPOOLID = 26;
    /// Bit 27.
    REPLY_CREATE_INODE = 27;
    /// Bit 28.
    SERVER_MIMIC = 28;
    /// Bit 29.
    MDSENC = 29;
    /// Bit 30.
    OSDHASHPSPOOL = 30;
    /// Bit 31 (deprecated, still set).
    MON_SINGLE_PAXOS = 31;
    /// Bit 32.
    STRETCH_MODE = 32;
    /// Bit 34.
    RANGE_BLOCKLIST = 34;
    /// Bit 35.
    OSD_CACHEPOOL = 35;
    /// Bit 36.
    CRUSH_V2 = 36;
    /// Bit 37.
    EXPORT_PEER = 37;
    /// Bit 39.
    OSDMAP_ENC = 39;
    /// Bit 40.
    MDS_INLINE_DATA = 40;
    /// Bit 41 (also OSD_PRIMARY_AFFINITY).
    CRUSH_TUNABLES3 = 41;
    /// Bit 42: keepalives carry a timestamp (`KEEPALIVE2`).
    MSGR_KEEPALIVE2 = 42;
    /// Bit 43.
    OSD_POOLRESEND = 43;
    /// Bit 46.
    OSD_FADVISE_FLAGS = 46;
    /// Bit 47.
    MDS_QUOTA = 47;
    /// Bit 48.
    CRUSH_V4 = 48;
    /// Bit 56.
    NEW_OSDOP_ENCODING = 56;
    /// Bit 57 (also MON_STATEFUL_SUB).
    SERVER_JEWEL = 57;
    /// Bit 58 (also NEW_OSDOPREPLY_ENCODING, FS_FILE_LAYOUT_V2).
    CRUSH_TUNABLES5 = 58;
    /// Bit 59: new `entity_addr_t` forms inside messages (also FS_BTIME, FS_CHANGE_ATTR).
    MSG_ADDR2 = 59;
    /// Bit 60.
    OSD_RECOVERY_DELETES = 60;
    /// Bit 61.
    CEPHX_V2 = 61;
}

impl Features {
    /// Alias of bit 57 under the name the subscription code uses.
    pub const MON_STATEFUL_SUB: Features = Features::SERVER_JEWEL;
    /// What Ceph's `HAVE_FEATURE(f, SERVER_NAUTILUS)` asks for (its
    /// `CEPH_FEATUREMASK_SERVER_NAUTILUS`): bit 2 with its incarnation, bits 28 and 57.
    /// Bit 2 alone was MONCLOCKCHECK, which Jewel and Kraken peers still set.
    pub const SERVER_NAUTILUS_MASK: Features =
        Features(Features::SERVER_NAUTILUS.0 | Features::SERVER_MIMIC.0 | Features::SERVER_JEWEL.0);
    /// The empty set.
    pub const NONE: Features = Features(0);
    /// What a Ceph 16.2.15 client and monitor advertise (verified live); we advertise it too.
    pub const PACIFIC_ADVERTISED: Features = Features(0x3f01_cfbd_fffd_ffff);
    /// What we require from every peer by default: only `NOSRCADDR`.
    ///
    /// The codec handles both footers (MSG_AUTH), both address forms (MSG_ADDR2), READY as
    /// well as SEQ (RECONNECT_SEQ) and both keepalives, so the one framing feature it
    /// cannot do without is the 53-byte header (NOSRCADDR, every peer since 2010 has it).
    /// Cluster-dependent requirements (CRUSH tunables...) are a monitor's business and
    /// are added by the policy, as Ceph's OSDMonitor does.
    pub const REQUIRED_DEFAULT: Features = Features::NOSRCADDR;

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits of `required` that `self` lacks (empty if `self` has them all).
    pub const fn missing_from(self, required: Features) -> Features {
        Features(required.0 & !self.0)
    }

    /// True if no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Names of the named bits set in `self` (unnamed bits are skipped).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Features::NAMED.iter().filter(move |(f, _)| self.contains(*f)).map(|(_, n)| *n)
    }
}

impl BitAnd for Features {
    type Output = Features;
    fn bitand(self, rhs: Features) -> Features {
        Features(self.0 & rhs.0)
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl Not for Features {
    type Output = Features;
    fn not(self) -> Features {
        Features(!self.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({:#018x})", self.0)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacific_set_has_the_framing_bits() {
        let p = Features::PACIFIC_ADVERTISED;
        for f in [
            Features::RECONNECT_SEQ,
            Features::MSG_AUTH,
            Features::MSGR_KEEPALIVE2,
            Features::MSG_ADDR2,
            Features::SERVER_NAUTILUS,
            Features::NOSRCADDR,
        ] {
            assert!(p.contains(f), "{f:?}");
        }
        // msgr-v1.md 3.5: bits 17, 33, 38, 44, 45, 49-55, 62, 63 are clear.
        assert!(!p.contains(Features::OS_PERF_STAT_NS));
        assert!(p.contains(Features::REQUIRED_DEFAULT));
        // The required set a 16.2.15 monitor announces to clients.
        let mon_required = Features(0x0401_0200_0204_0000);
        assert_eq!(
            mon_required,
            Features::CRUSH_TUNABLES
                | Features::CRUSH_TUNABLES2
                | Features::CRUSH_TUNABLES3
                | Features::CRUSH_V4
                | Features::CRUSH_TUNABLES5
        );
        assert!(p.missing_from(mon_required).is_empty());
        assert_eq!(Features::NONE.missing_from(mon_required), mon_required);
        assert_eq!(
            Features::CRUSH_V4.missing_from(mon_required).names().count(),
            4,
            "names of missing bits are listed"
        );
    }

    #[test]
    fn every_advertised_bit_is_named() {
        let named = Features::NAMED.iter().fold(Features::NONE, |acc, (f, _)| acc | *f);
        assert!(named.contains(Features::PACIFIC_ADVERTISED));
    }
}
