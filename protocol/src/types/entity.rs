//! Entity types and names (`entity_name_t`, the auth `EntityName`).

use std::fmt;

use crate::encoding::{Decoder, Encoder};
use crate::error::Result;

/// `CEPH_ENTITY_TYPE_*`: what kind of daemon or client an entity is.
///
/// A newtype so that an unknown value still decodes; callers reject it explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityType(pub u8);

impl EntityType {
    /// A monitor.
    pub const MON: EntityType = EntityType(0x01);
    /// A metadata server.
    pub const MDS: EntityType = EntityType(0x02);
    /// An object storage daemon.
    pub const OSD: EntityType = EntityType(0x04);
    /// A client.
    pub const CLIENT: EntityType = EntityType(0x08);
    /// A manager daemon.
    pub const MGR: EntityType = EntityType(0x10);
    /// The auth service (used in auth names).
    pub const AUTH: EntityType = EntityType(0x20);
    /// Wildcard.
    pub const ANY: EntityType = EntityType(0xff);

    /// Ceph's short name ("mon", "osd", ...), or "unknown".
    pub fn name(self) -> &'static str {
        match self {
            EntityType::MON => "mon",
            EntityType::MDS => "mds",
            EntityType::OSD => "osd",
            EntityType::CLIENT => "client",
            EntityType::MGR => "mgr",
            EntityType::AUTH => "auth",
            EntityType::ANY => "any",
            _ => "unknown",
        }
    }

    /// The type from a 32-bit field (connect `host_type`, auth names); values above
    /// 255 are not entity types.
    pub fn from_u32(v: u32) -> Option<EntityType> {
        u8::try_from(v).ok().map(EntityType)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `entity_name_t`: entity type + number (e.g. `client.4121`, `mon.0`). 9 bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityName {
    /// The entity's type.
    pub ty: EntityType,
    /// Its number; [`EntityName::NEW`] (-1) means "not yet assigned".
    pub num: i64,
}

impl EntityName {
    /// The number of an entity that has none yet (a client before authentication).
    pub const NEW: i64 = -1;
    /// Encoded size.
    pub const LEN: usize = 9;

    /// A name from type and number.
    pub const fn new(ty: EntityType, num: i64) -> Self {
        EntityName { ty, num }
    }

    /// Encodes as `u8 type` + `i64 num`.
    pub fn encode(&self, e: &mut Encoder) {
        e.u8(self.ty.0).i64(self.num);
    }

    /// Decodes `u8 type` + `i64 num`.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(EntityName { ty: EntityType(d.u8()?), num: d.i64()? })
    }

    /// The fixed 9-byte form.
    pub fn to_bytes(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = self.ty.0;
        out[1..].copy_from_slice(&self.num.to_le_bytes());
        out
    }

    /// From the fixed 9-byte form.
    pub fn from_bytes(b: &[u8; 9]) -> Self {
        let mut num = [0u8; 8];
        num.copy_from_slice(&b[1..]);
        EntityName { ty: EntityType(b[0]), num: i64::from_le_bytes(num) }
    }
}

impl fmt::Display for EntityName {
    /// `type.num`; an unassigned number prints as `?` like Ceph (`client.?`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num < 0 {
            write!(f, "{}.?", self.ty)
        } else {
            write!(f, "{}.{}", self.ty, self.num)
        }
    }
}

/// The auth `EntityName` (e.g. `client.admin`): `u32 type` + `string id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuthEntityName {
    /// Entity type as a 32-bit value (see [`EntityType`]).
    pub ty: u32,
    /// The part after the dot.
    pub id: String,
}

impl AuthEntityName {
    /// A name from an entity type and id.
    pub fn new(ty: EntityType, id: impl Into<String>) -> Self {
        AuthEntityName { ty: u32::from(ty.0), id: id.into() }
    }

    /// Encodes as `u32 type` + `string id`.
    pub fn encode(&self, e: &mut Encoder) {
        e.u32(self.ty).string(&self.id);
    }

    /// Decodes `u32 type` + `string id`.
    pub fn decode(d: &mut Decoder<'_>) -> Result<Self> {
        Ok(AuthEntityName { ty: d.u32()?, id: d.string()? })
    }
}

impl fmt::Display for AuthEntityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = EntityType::from_u32(self.ty).map_or("unknown", EntityType::name);
        write!(f, "{ty}.{}", self.id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entity_name_wire_form_and_display() {
        let n = EntityName::new(EntityType::CLIENT, EntityName::NEW);
        assert_eq!(n.to_bytes(), [8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(n.to_string(), "client.?");
        let n = EntityName::new(EntityType::CLIENT, 4121);
        assert_eq!(n.to_bytes(), [8, 0x19, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(n.to_string(), "client.4121");
        assert_eq!(EntityName::from_bytes(&n.to_bytes()), n);
        let mut e = Encoder::new();
        n.encode(&mut e);
        assert_eq!(EntityName::decode(&mut Decoder::new(e.as_slice())).unwrap(), n);
        assert_eq!(EntityType(0x42).name(), "unknown");
    }

    #[test]
    fn auth_name_wire_form_and_display() {
        let n = AuthEntityName::new(EntityType::CLIENT, "admin");
        let mut e = Encoder::new();
        n.encode(&mut e);
        assert_eq!(e.as_slice(), b"\x08\x00\x00\x00\x05\x00\x00\x00admin");
        assert_eq!(n.to_string(), "client.admin");
        assert_eq!(AuthEntityName::decode(&mut Decoder::new(e.as_slice())).unwrap(), n);
    }
}
