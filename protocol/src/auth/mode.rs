//! msgr2 connection modes: how frames are protected after authentication. Negotiated
//! by the auth exchange (a method without a connection secret allows crc only), so they
//! belong to the auth seam.

use std::fmt;

/// `CEPH_CON_MODE_*`: how frames are protected after AUTH_DONE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[doc(alias = "con_mode")]
pub struct ConMode(pub u32);

impl ConMode {
    /// `CEPH_CON_MODE_UNKNOWN`: none chosen.
    pub const UNKNOWN: ConMode = ConMode(0);
    /// `CEPH_CON_MODE_CRC`: crc32c integrity only.
    pub const CRC: ConMode = ConMode(1);
    /// `CEPH_CON_MODE_SECURE`: AES-128-GCM.
    pub const SECURE: ConMode = ConMode(2);

    /// "crc", "secure" or "unknown" (Ceph's `ceph_con_mode_name`).
    pub fn name(self) -> &'static str {
        match self {
            ConMode::CRC => "crc",
            ConMode::SECURE => "secure",
            _ => "unknown",
        }
    }
}

impl fmt::Display for ConMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ceph() {
        assert_eq!(ConMode::SECURE.to_string(), "secure");
        assert_eq!(ConMode(7).name(), "unknown");
    }
}
