//! `MMonMap` (type 4) and the `MonMap` it carries.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;

use super::{
    decode_string_map, decode_string_set, decode_string_vec, encode_string_map, encode_string_set,
    encode_string_vec, len32, note_trailing, MsgType, Payload, TypedMessage,
};
use crate::encoding::{DecodeBudget, Decoder, Encoder, UTime};
use crate::error::{Error, Result};
use crate::types::{EntityAddr, EntityAddrVec, EntityName, EntityType, Features, RACE_KEY_LEN};
use crate::Message;

/// `MMonMap`: the monitor map, sent by a monitor after authentication (when the client's
/// epoch is older) and for a `monmap` subscription.
///
/// Front (msgr-v1.md 7.6 and transcript 8.3 \[V\], v1/compat 1): one `bufferlist` holding
/// the encoded [`MonMap`]. Like Ceph's `MMonMap::encode_payload`, the map is encoded for
/// the connection's features ([`MonMap::encode`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MMonMap {
    /// The map.
    pub monmap: MonMap,
}

impl TypedMessage for MMonMap {
    const TYPE: MsgType = MsgType::MON_MAP;
    const HEAD_VERSION: u16 = 1;
    const COMPAT_VERSION: u16 = 1;

    fn encode_payload(&self, features: Features) -> Payload {
        let mut inner = Encoder::with_capacity(256);
        self.monmap.encode(&mut inner, features);
        let mut e = Encoder::with_capacity(inner.len() + 4);
        e.blob(inner.as_slice());
        Payload::front(e.into_bytes(), Self::HEAD_VERSION)
    }

    fn decode_payload(_version: u16, msg: &Message) -> Result<Self> {
        let mut d = Decoder::new(msg.front());
        let blob = d.blob()?;
        note_trailing(&d, Self::TYPE);
        Ok(MMonMap { monmap: MonMap::decode(blob)? })
    }
}

/// `mon_info_t`: one monitor of the map.
///
/// Pacific encodes it as a versioned block v5: `string name`, `entity_addrvec_t
/// public_addrs`, `u16 priority` (v2+), `u16 weight` (v4+), `map<string,string>
/// crush_loc` (v5+) (msgr-v1.md 7.6, bytes \[V\] in transcript 8.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonInfo {
    /// The monitor's name (`a` for `mon.a`).
    pub name: String,
    /// Where it listens.
    pub public_addrs: EntityAddrVec,
    /// Connection preference (lower first).
    pub priority: u16,
    /// Weighted-random choice among equal priorities.
    pub weight: u16,
    /// CRUSH location (stretch clusters).
    pub crush_loc: BTreeMap<String, String>,
}

impl MonInfo {
    const HEAD: u8 = 5;

    fn encode(&self, e: &mut Encoder, features: Features) {
        if !features.contains(Features::SERVER_NAUTILUS_MASK) {
            // Pre-Nautilus peers get v2 with the single legacy address (\[S?\]: Nautilus
            // source; not exercised).
            e.versioned(2, 1, |e| {
                e.string(&self.name);
                self.public_addrs.legacy_addr().unwrap_or_default().encode(e, features);
                e.u16(self.priority);
            });
            return;
        }
        // From memory of later sources \[S?\]: a non-empty crush_loc raises compat to 5 so
        // old readers do not drop it silently. Ceph's own monitors send compat 1 \[V\].
        let compat = if self.crush_loc.is_empty() { 1 } else { 5 };
        e.versioned(Self::HEAD, compat, |e| {
            e.string(&self.name);
            self.public_addrs.encode(e, features);
            e.u16(self.priority).u16(self.weight);
            encode_string_map(e, &self.crush_loc);
        });
    }

    /// Decodes one `mon_info_t`, charging what it owns to `budget` (its slot in the
    /// monmap's tree is the caller's).
    fn decode(d: &mut Decoder<'_>, budget: &mut DecodeBudget) -> Result<Self> {
        d.versioned("mon_info_t", Self::HEAD, |d, v| {
            let name = d.string_within(budget)?;
            let public_addrs = EntityAddrVec::decode_within(d, budget)?;
            let mut m = MonInfo { name, public_addrs, ..MonInfo::default() };
            if v >= 2 {
                m.priority = d.u16()?;
            }
            if v >= 4 {
                m.weight = d.u16()?;
            }
            if v >= 5 {
                m.crush_loc = decode_string_map(d, budget)?;
            }
            Ok(m)
        })
    }
}

/// The monitor map (`MonMap`, `src/mon/MonMap.{h,cc}`).
///
/// Encodings by the peer's features, as `MonMap::encode` chooses them:
/// - with `MONNAMES` + `MONENC` + `SERVER_NAUTILUS` (every Pacific peer): versioned
///   block **v9, compat 6** — fsid, epoch, last_changed, created, persistent and
///   optional features (`mon_feature_t`, versioned 1/1 { u64 }), `map<string,
///   mon_info_t>`, ranks, min_mon_release, removed_ranks, election strategy,
///   disallowed_leaders, stretch_mode_enabled, tiebreaker_mon, stretch_marked_down_mons.
///   Byte-exact with a 16.2.15 monitor (msgr-v1.md 8.3 \[V\]; this crate's golden test).
/// - without `MONNAMES`: `u16 1`, fsid, epoch, `vector<entity_inst_t>` (`mon.<rank>` +
///   address, legacy 136-byte form when the peer lacks `MSG_ADDR2`), last_changed,
///   created — what a minimal-feature client receives \[V\].
/// - without `MONENC`: `u16 2`, fsid, epoch, `map<string, entity_addr_t>`, last_changed,
///   created \[S\].
/// - without `SERVER_NAUTILUS`: versioned v5/compat 3 with the legacy address map,
///   features and `mon_info` (\[S\], Nautilus source: `src/mon/MonMap.cc` at the stored
///   copy of `ceph/ceph`).
///
/// The decoder follows Pacific's `MonMap::decode` (`DECODE_START_LEGACY_COMPAT_LEN_16(9,
/// 3, 3)`): a first byte below 3 is the low byte of the old `u16` version (the body then
/// runs to the end of the blob); otherwise a versioned block whose compat must be ≤ 9.
/// Fields absent from older versions keep their defaults. Differences from Ceph: for
/// maps older than v6 the ranks are derived by sorting the monitors by their address
/// bytes then name (Ceph's `calc_legacy_ranks`); monitors of a v1 map are named by their
/// decimal rank (Ceph uses the single character `'0' + rank`, identical below 10);
/// `min_mon_release` of a pre-v7 map is left 0 (Ceph infers it from the features).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonMap {
    /// The cluster fsid.
    pub fsid: [u8; 16],
    /// The map's epoch.
    pub epoch: u32,
    /// When this epoch was made.
    pub last_changed: UTime,
    /// When the cluster was made.
    pub created: UTime,
    /// Monitor features every monitor has (`mon_feature_t`).
    pub persistent_features: u64,
    /// Optional monitor features.
    pub optional_features: u64,
    /// The monitors by name.
    pub mon_info: BTreeMap<String, MonInfo>,
    /// Monitor names by rank.
    pub ranks: Vec<String>,
    /// Oldest release the monitors run (`ceph_release_t`, 16 = pacific).
    pub min_mon_release: u8,
    /// Ranks removed since the last election.
    pub removed_ranks: BTreeSet<i32>,
    /// Election strategy (1 = classic, 2 = disallow, 3 = connectivity).
    pub election_strategy: u8,
    /// Monitors that may not lead.
    pub disallowed_leaders: BTreeSet<String>,
    /// Stretch mode on.
    pub stretch_mode_enabled: bool,
    /// The stretch tiebreaker monitor.
    pub tiebreaker_mon: String,
    /// Monitors marked down in degraded stretch mode.
    pub stretch_marked_down_mons: BTreeSet<String>,
}

impl Default for MonMap {
    /// An empty map with Pacific's defaults (classic elections, min release pacific).
    fn default() -> Self {
        MonMap {
            fsid: [0; 16],
            epoch: 0,
            last_changed: UTime::default(),
            created: UTime::default(),
            persistent_features: 0,
            optional_features: 0,
            mon_info: BTreeMap::new(),
            ranks: Vec::new(),
            min_mon_release: Self::RELEASE_PACIFIC,
            removed_ranks: BTreeSet::new(),
            election_strategy: Self::STRATEGY_CLASSIC,
            disallowed_leaders: BTreeSet::new(),
            stretch_mode_enabled: false,
            tiebreaker_mon: String::new(),
            stretch_marked_down_mons: BTreeSet::new(),
        }
    }
}

impl MonMap {
    /// The newest struct version (Pacific).
    pub const HEAD: u8 = 9;
    /// Its compat version.
    pub const COMPAT: u8 = 6;
    /// `ceph_release_t::pacific`.
    pub const RELEASE_PACIFIC: u8 = 16;
    /// `ElectionLogic::CLASSIC`.
    pub const STRATEGY_CLASSIC: u8 = 1;
    /// The persistent monitor features a fresh 16.2.15 cluster carries (0xff) \[V\].
    pub const PACIFIC_PERSISTENT_FEATURES: u64 = 0xff;

    /// A one-monitor map such as a fresh 16.2.15 cluster has: monitor `name` at `addr`
    /// (rank 0), persistent features 0xff, min release pacific, classic elections.
    pub fn single(fsid: [u8; 16], epoch: u32, name: &str, addr: EntityAddrVec) -> Self {
        let mut m = MonMap {
            fsid,
            epoch,
            persistent_features: Self::PACIFIC_PERSISTENT_FEATURES,
            ..MonMap::default()
        };
        m.add(MonInfo { name: name.to_owned(), public_addrs: addr, ..MonInfo::default() });
        m
    }

    /// Adds a monitor at the next rank.
    pub fn add(&mut self, info: MonInfo) -> &mut Self {
        self.ranks.retain(|n| *n != info.name);
        self.ranks.push(info.name.clone());
        self.mon_info.insert(info.name.clone(), info);
        self
    }

    /// The addresses of the monitor of `rank`.
    pub fn addrs_of_rank(&self, rank: usize) -> Option<&EntityAddrVec> {
        let name = self.ranks.get(rank)?;
        self.mon_info.get(name).map(|m| &m.public_addrs)
    }

    fn legacy_addr_of(&self, name: &str) -> EntityAddr {
        self.mon_info.get(name).and_then(|m| m.public_addrs.legacy_addr()).unwrap_or_default()
    }

    fn legacy_addr_map(&self) -> BTreeMap<&str, EntityAddr> {
        self.mon_info.keys().map(|n| (n.as_str(), self.legacy_addr_of(n))).collect()
    }

    /// Appends the map encoded for a peer with `features` (see the type's doc).
    pub fn encode(&self, e: &mut Encoder, features: Features) {
        if !features.contains(Features::MONNAMES) {
            e.u16(1).uuid(&self.fsid).u32(self.epoch);
            e.u32(len32(self.ranks.len()));
            for (rank, name) in self.ranks.iter().enumerate() {
                let num = i64::try_from(rank).unwrap_or(i64::MAX);
                EntityName::new(EntityType::MON, num).encode(e);
                self.legacy_addr_of(name).encode(e, features);
            }
            e.utime(self.last_changed).utime(self.created);
            return;
        }
        let encode_legacy_map = |e: &mut Encoder| {
            let map = self.legacy_addr_map();
            e.u32(len32(map.len()));
            for (name, addr) in map {
                e.string(name);
                addr.encode(e, features);
            }
        };
        if !features.contains(Features::MONENC) {
            e.u16(2).uuid(&self.fsid).u32(self.epoch);
            encode_legacy_map(e);
            e.utime(self.last_changed).utime(self.created);
            return;
        }
        if !features.contains(Features::SERVER_NAUTILUS_MASK) {
            e.versioned(5, 3, |e| {
                e.uuid(&self.fsid).u32(self.epoch);
                encode_legacy_map(e);
                e.utime(self.last_changed).utime(self.created);
                encode_mon_features(e, self.persistent_features);
                encode_mon_features(e, self.optional_features);
                self.encode_mon_info(e, features);
            });
            return;
        }
        e.versioned(Self::HEAD, Self::COMPAT, |e| {
            e.uuid(&self.fsid).u32(self.epoch);
            e.utime(self.last_changed).utime(self.created);
            encode_mon_features(e, self.persistent_features);
            encode_mon_features(e, self.optional_features);
            self.encode_mon_info(e, features);
            encode_string_vec(e, &self.ranks);
            e.u8(self.min_mon_release);
            e.u32(len32(self.removed_ranks.len()));
            for r in &self.removed_ranks {
                e.i32(*r);
            }
            e.u8(self.election_strategy);
            encode_string_set(e, &self.disallowed_leaders);
            e.bool(self.stretch_mode_enabled).string(&self.tiebreaker_mon);
            encode_string_set(e, &self.stretch_marked_down_mons);
        });
    }

    fn encode_mon_info(&self, e: &mut Encoder, features: Features) {
        e.map(&self.mon_info, |e, name, info| {
            e.string(name);
            info.encode(e, features);
        });
    }

    /// The map encoded for `features`, as bytes.
    pub fn to_bytes(&self, features: Features) -> bytes::Bytes {
        let mut e = Encoder::with_capacity(256);
        self.encode(&mut e, features);
        e.into_bytes()
    }

    /// Decodes a map in any of the forms listed in the type's doc.
    ///
    /// Its collections may take at most [`DecodeBudget::for_input`]`(blob.len())` in
    /// memory; a map that would take more is refused with [`Error::TooLarge`].
    pub fn decode(blob: &[u8]) -> Result<Self> {
        let budget = &mut DecodeBudget::for_input(blob.len());
        let mut d = Decoder::new(blob);
        let struct_v = d.u8()?;
        if struct_v < 3 {
            // Pre-MONENC: a u16 version (its high byte skipped, as Ceph does) and a body
            // without a length that runs to the end of the blob.
            d.skip(1)?;
            if struct_v == 0 {
                return Err(Error::Malformed("monmap version 0"));
            }
            return Self::decode_body(&mut d, struct_v, budget);
        }
        let compat = d.u8()?;
        if compat > Self::HEAD {
            return Err(Error::Incompatible { what: "MonMap", compat, understood: Self::HEAD });
        }
        let len = d.u32()? as usize;
        let mut body = Decoder::new(d.bytes(len)?);
        Self::decode_body(&mut body, struct_v, budget)
    }

    fn decode_body(d: &mut Decoder<'_>, v: u8, budget: &mut DecodeBudget) -> Result<Self> {
        let mut m =
            MonMap { fsid: d.uuid()?, epoch: d.u32()?, min_mon_release: 0, ..MonMap::default() };
        // Legacy address map of versions below 6, with the rank order for v1.
        let mut legacy: Vec<(String, EntityAddr)> = Vec::new();
        if v == 1 {
            // entity_inst_t: 9-byte name + at least a 1-byte address marker.
            let mut rank = 0usize;
            legacy = d.vec_within(budget, EntityName::LEN + 1, |d, budget| {
                let _name = EntityName::decode(d)?;
                let name = rank.to_string();
                rank += 1;
                budget.charge_heap(name.len())?;
                Ok((name, EntityAddr::decode(d)?))
            })?;
        } else if v < 6 {
            legacy = d.vec_within(budget, 4 + 1, |d, budget| {
                Ok((d.string_within(budget)?, EntityAddr::decode(d)?))
            })?;
        }
        m.last_changed = d.utime()?;
        m.created = d.utime()?;
        if v >= 4 {
            m.persistent_features = decode_mon_features(d)?;
            m.optional_features = decode_mon_features(d)?;
        }
        if v < 5 {
            for (name, addr) in &legacy {
                // A tree slot, the name twice (key and field) and a one-address vector.
                budget.charge_tree_entry::<String, MonInfo>()?;
                budget.charge_heap(name.len())?;
                budget.charge_heap(name.len())?;
                budget.charge_heap(size_of::<EntityAddr>())?;
                let info = MonInfo {
                    name: name.clone(),
                    public_addrs: EntityAddrVec::single(*addr),
                    ..MonInfo::default()
                };
                m.mon_info.insert(name.clone(), info);
            }
        } else {
            m.mon_info = d.map_within(budget, 4 + 6, Decoder::string_within, MonInfo::decode)?;
        }
        if v < 6 {
            m.ranks = legacy_ranks(&m.mon_info, budget)?;
        } else {
            m.ranks = decode_string_vec(d, budget)?;
        }
        if v >= 7 {
            m.min_mon_release = d.u8()?;
        }
        if v >= 8 {
            m.removed_ranks = d.set_within(budget, 4, |d, _| d.i32())?;
            m.election_strategy = d.u8()?;
            m.disallowed_leaders = decode_string_set(d, budget)?;
        }
        if v >= 9 {
            m.stretch_mode_enabled = d.bool()?;
            m.tiebreaker_mon = d.string()?;
            m.stretch_marked_down_mons = decode_string_set(d, budget)?;
        }
        Ok(m)
    }
}

/// Ceph's `calc_legacy_ranks`: monitors ordered by their (legacy or first) address, as
/// the in-memory `entity_addr_t` compares, then by name.
///
/// The sort vector and the ranks (a copy of every name) are charged to `budget` first.
fn legacy_ranks(
    mon_info: &BTreeMap<String, MonInfo>,
    budget: &mut DecodeBudget,
) -> Result<Vec<String>> {
    let n = mon_info.len();
    budget.charge_heap(n.saturating_mul(size_of::<([u8; RACE_KEY_LEN], &String)>()))?;
    budget.charge_heap(n.saturating_mul(size_of::<String>()))?;
    for info in mon_info.values() {
        budget.charge_heap(info.name.len())?;
    }
    let mut v: Vec<([u8; RACE_KEY_LEN], &String)> = mon_info
        .values()
        .map(|m| {
            let addr = m
                .public_addrs
                .legacy_addr()
                .or_else(|| m.public_addrs.addrs.first().copied())
                .unwrap_or_default();
            (addr.race_key(), &m.name)
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, n)| n.clone()).collect())
}

/// `mon_feature_t`: versioned 1/1 { u64 }.
fn encode_mon_features(e: &mut Encoder, f: u64) {
    e.versioned(1, 1, |e| {
        e.u64(f);
    });
}

fn decode_mon_features(d: &mut Decoder<'_>) -> Result<u64> {
    d.versioned("mon_feature_t", 1, |d, _| d.u64())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(name: &str, addr: &str) -> MonInfo {
        MonInfo {
            name: name.into(),
            public_addrs: EntityAddrVec::single(EntityAddr::legacy(addr.parse().unwrap(), 0)),
            ..MonInfo::default()
        }
    }

    #[test]
    fn legacy_ranks_follow_address_order_then_name() {
        let mut mons = BTreeMap::new();
        for (n, a) in [("a", "10.0.0.3:6789"), ("b", "10.0.0.1:6789"), ("c", "10.0.0.2:6789")] {
            mons.insert(n.to_string(), info(n, a));
        }
        let ranks = legacy_ranks(&mons, &mut DecodeBudget::for_input(0)).unwrap();
        assert_eq!(ranks, ["b", "c", "a"]);
    }

    #[test]
    fn crush_location_raises_mon_info_compat() {
        let mut m = info("a", "10.0.0.1:6789");
        let mut e = Encoder::new();
        m.encode(&mut e, Features::PACIFIC_ADVERTISED);
        assert_eq!(&e.as_slice()[..2], &[5, 1]);
        m.crush_loc.insert("host".into(), "h1".into());
        let mut e = Encoder::new();
        m.encode(&mut e, Features::PACIFIC_ADVERTISED);
        assert_eq!(&e.as_slice()[..2], &[5, 5]);
        let budget = &mut DecodeBudget::for_input(e.len());
        assert_eq!(MonInfo::decode(&mut Decoder::new(e.as_slice()), budget).unwrap(), m);
    }

    #[test]
    fn version_zero_and_empty_blobs_are_malformed() {
        assert!(matches!(MonMap::decode(&[]), Err(Error::Truncated { .. })));
        assert!(matches!(MonMap::decode(&[0, 0]), Err(Error::Malformed(_))));
    }
}
