//! Auth settings with Ceph's option names, for the messenger to adopt.
//!
//! One field per Ceph option (`src/common/options.cc`), spelled the same, with Ceph's
//! value in [`AuthConfig::ceph_defaults`]. [`AuthConfig::default`] is *auth none*
//! everywhere: until the connection machines call the auth seam, a messenger built with
//! the default config behaves as it always did. That is a deliberate difference from
//! Ceph, whose default is cephx.

use std::path::PathBuf;
use std::time::Duration;

use super::error::AuthError;
use super::mode::ConMode;
use crate::types::{EntityType, Features, AUTH_CEPHX, AUTH_NONE};

/// A list of `CEPH_AUTH_*` methods in preference order (`"cephx, none"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthMethods(pub Vec<u32>);

impl AuthMethods {
    /// `none` only.
    pub fn none() -> Self {
        AuthMethods(vec![AUTH_NONE])
    }

    /// `cephx` only.
    pub fn cephx() -> Self {
        AuthMethods(vec![AUTH_CEPHX])
    }

    /// Parses Ceph's spelling: method names separated by commas, spaces or semicolons.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let mut out = Vec::new();
        for word in s.split([',', ' ', ';', '\t']).filter(|w| !w.is_empty()) {
            let m = match word {
                "cephx" => AUTH_CEPHX,
                "none" => AUTH_NONE,
                _ => return Err(AuthError::Malformed("unknown auth method (cephx or none)")),
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(AuthError::Malformed("empty auth method list"));
        }
        Ok(AuthMethods(out))
    }

    /// Whether `method` is allowed.
    pub fn allows(&self, method: u32) -> bool {
        self.0.contains(&method)
    }
}

/// A list of msgr2 connection modes in preference order (`"secure crc"`), one of
/// Ceph's `ms_*_mode` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConModes(pub Vec<ConMode>);

impl ConModes {
    /// `"crc secure"`: crc preferred (Ceph's default between daemons and to OSDs).
    pub fn crc_secure() -> Self {
        ConModes(vec![ConMode::CRC, ConMode::SECURE])
    }

    /// `"secure crc"`: secure preferred (Ceph's default for everything with a monitor).
    pub fn secure_crc() -> Self {
        ConModes(vec![ConMode::SECURE, ConMode::CRC])
    }

    /// Parses Ceph's spelling: `crc` and `secure` separated by commas, spaces or
    /// semicolons (Ceph's `AuthRegistry::_parse_mode_list`, which warns about unknown
    /// words; we refuse them).
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let mut out = Vec::new();
        for word in s.split([',', ' ', ';', '\t']).filter(|w| !w.is_empty()) {
            let m = match word {
                "crc" => ConMode::CRC,
                "secure" => ConMode::SECURE,
                _ => return Err(AuthError::Malformed("unknown connection mode (crc or secure)")),
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(AuthError::Malformed("empty connection mode list"));
        }
        Ok(ConModes(out))
    }
}

/// Which of Ceph's three method lists and six mode lists applies to one connection:
/// Ceph's `AuthRegistry::get_supported_methods` for an entity of type `me` talking to a
/// peer of type `peer`, whichever side dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnKind {
    /// We are a client; the peer a monitor (`auth_client_required`, `ms_mon_client_mode`).
    ClientToMon,
    /// We are a client; the peer a daemon (`auth_client_required`, `ms_client_mode`).
    Client,
    /// Monitor ↔ monitor (`auth_cluster_required`, `ms_mon_cluster_mode`).
    MonCluster,
    /// A monitor and anything but a monitor (`auth_service_required`,
    /// `ms_mon_service_mode`).
    MonService,
    /// A non-monitor daemon and any daemon (`auth_cluster_required`, `ms_cluster_mode`).
    Cluster,
    /// A non-monitor daemon and a client (`auth_service_required`, `ms_service_mode`).
    Service,
}

impl ConnKind {
    /// The kind of connection between `me` and `peer` (Ceph 16.2's table, msgr-v2.md 5.2).
    pub fn of(me: EntityType, peer: EntityType) -> Self {
        let daemon = |t: EntityType| {
            matches!(t, EntityType::MON | EntityType::MGR | EntityType::MDS | EntityType::OSD)
        };
        match me {
            EntityType::CLIENT if peer == EntityType::MON => ConnKind::ClientToMon,
            EntityType::CLIENT => ConnKind::Client,
            EntityType::MON if peer == EntityType::MON => ConnKind::MonCluster,
            EntityType::MON => ConnKind::MonService,
            _ if daemon(peer) => ConnKind::Cluster,
            _ => ConnKind::Service,
        }
    }
}

/// Auth options of one messenger or monitor, named as Ceph's.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    /// Methods we accept when we are a client of a peer (`auth_client_required`).
    pub auth_client_required: AuthMethods,
    /// Methods a daemon requires from clients (`auth_service_required`).
    pub auth_service_required: AuthMethods,
    /// Methods daemons require from each other (`auth_cluster_required`).
    pub auth_cluster_required: AuthMethods,
    /// Keyring file with our key (`keyring`).
    pub keyring: Option<PathBuf>,
    /// Sign outgoing v1 messages and check incoming signatures when a session has a
    /// cephx session key (`cephx_sign_messages`, default true).
    pub cephx_sign_messages: bool,
    /// Refuse unsigned messages and peers without `MSG_AUTH` (`cephx_require_signatures`).
    pub cephx_require_signatures: bool,
    /// As above, between daemons (`cephx_cluster_require_signatures`).
    pub cephx_cluster_require_signatures: bool,
    /// As above, from clients to daemons (`cephx_service_require_signatures`).
    pub cephx_service_require_signatures: bool,
    /// Minimum cephx version of every peer (`cephx_require_version`; 2 means CEPHX_V2
    /// is required: by a monitor of MAuth clients, by a v1 acceptor of authorizers).
    pub cephx_require_version: u32,
    /// Minimum cephx version between daemons (`cephx_cluster_require_version`).
    pub cephx_cluster_require_version: u32,
    /// Minimum cephx version of clients of a daemon (`cephx_service_require_version`;
    /// 2 = the authorizer challenge round is required).
    pub cephx_service_require_version: u32,
    /// Validity of auth tickets a monitor issues (`auth_mon_ticket_ttl`, 72 h).
    pub auth_mon_ticket_ttl: Duration,
    /// Validity of service tickets, and the rotation period of service secrets
    /// (`auth_service_ticket_ttl`, 1 h).
    pub auth_service_ticket_ttl: Duration,
    /// Let clients reclaim a global id without proving they held it
    /// (`auth_allow_insecure_global_id_reclaim`, true in 16.2.15).
    pub auth_allow_insecure_global_id_reclaim: bool,
    /// msgr2 modes a client offers a monitor (`ms_mon_client_mode`, "secure crc").
    pub ms_mon_client_mode: ConModes,
    /// msgr2 modes between monitors (`ms_mon_cluster_mode`, "secure crc").
    pub ms_mon_cluster_mode: ConModes,
    /// msgr2 modes a monitor allows anything but monitors (`ms_mon_service_mode`,
    /// "secure crc").
    pub ms_mon_service_mode: ConModes,
    /// msgr2 modes a client offers daemons other than monitors (`ms_client_mode`,
    /// "crc secure").
    pub ms_client_mode: ConModes,
    /// msgr2 modes between non-monitor daemons (`ms_cluster_mode`, "crc secure").
    pub ms_cluster_mode: ConModes,
    /// msgr2 modes a non-monitor daemon allows clients (`ms_service_mode`, "crc secure").
    pub ms_service_mode: ConModes,
}

impl Default for AuthConfig {
    /// Auth none everywhere (see the module docs); the cephx knobs keep Ceph's values.
    fn default() -> Self {
        AuthConfig {
            auth_client_required: AuthMethods::none(),
            auth_service_required: AuthMethods::none(),
            auth_cluster_required: AuthMethods::none(),
            ..AuthConfig::ceph_defaults()
        }
    }
}

impl AuthConfig {
    /// Ceph 16.2's defaults: cephx everywhere, signing on, CEPHX_V2 required.
    pub fn ceph_defaults() -> Self {
        AuthConfig {
            auth_client_required: AuthMethods(vec![AUTH_CEPHX, AUTH_NONE]),
            auth_service_required: AuthMethods::cephx(),
            auth_cluster_required: AuthMethods::cephx(),
            keyring: None,
            cephx_sign_messages: true,
            cephx_require_signatures: false,
            cephx_cluster_require_signatures: false,
            cephx_service_require_signatures: false,
            cephx_require_version: 2,
            cephx_cluster_require_version: 2,
            cephx_service_require_version: 2,
            auth_mon_ticket_ttl: Duration::from_secs(72 * 3600),
            auth_service_ticket_ttl: Duration::from_secs(3600),
            auth_allow_insecure_global_id_reclaim: true,
            ms_mon_client_mode: ConModes::secure_crc(),
            ms_mon_cluster_mode: ConModes::secure_crc(),
            ms_mon_service_mode: ConModes::secure_crc(),
            ms_client_mode: ConModes::crc_secure(),
            ms_cluster_mode: ConModes::crc_secure(),
            ms_service_mode: ConModes::crc_secure(),
        }
    }

    /// Sets all six `ms_*_mode` options to `modes`: one connection mode (or one order
    /// of them) for every peer, monitors or not, as a test or a single-mode cluster
    /// wants.
    pub fn set_all_modes(&mut self, modes: &ConModes) {
        for m in [
            &mut self.ms_mon_client_mode,
            &mut self.ms_mon_cluster_mode,
            &mut self.ms_mon_service_mode,
            &mut self.ms_client_mode,
            &mut self.ms_cluster_mode,
            &mut self.ms_service_mode,
        ] {
            m.clone_from(modes);
        }
    }

    /// Sets one option by its Ceph name (spaces, dashes and underscores alike), from
    /// its text value as in `ceph.conf`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), AuthError> {
        let name = name.trim().replace([' ', '-'], "_");
        let value = value.trim();
        let flag = || parse_bool(value).ok_or(AuthError::Malformed("expected true or false"));
        let num = || value.parse::<u32>().map_err(|_| AuthError::Malformed("expected a number"));
        let secs = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                // `from_secs_f64` panics past what a `Duration` holds.
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or(AuthError::Malformed("expected a positive number of seconds"))
        };
        match name.as_str() {
            "auth_client_required" => self.auth_client_required = AuthMethods::parse(value)?,
            "auth_service_required" => self.auth_service_required = AuthMethods::parse(value)?,
            "auth_cluster_required" => self.auth_cluster_required = AuthMethods::parse(value)?,
            "keyring" => self.keyring = Some(PathBuf::from(value)),
            "cephx_sign_messages" => self.cephx_sign_messages = flag()?,
            "cephx_require_signatures" => self.cephx_require_signatures = flag()?,
            "cephx_cluster_require_signatures" => self.cephx_cluster_require_signatures = flag()?,
            "cephx_service_require_signatures" => self.cephx_service_require_signatures = flag()?,
            "cephx_require_version" => self.cephx_require_version = num()?,
            "cephx_cluster_require_version" => self.cephx_cluster_require_version = num()?,
            "cephx_service_require_version" => self.cephx_service_require_version = num()?,
            "auth_mon_ticket_ttl" => self.auth_mon_ticket_ttl = secs()?,
            "auth_service_ticket_ttl" => self.auth_service_ticket_ttl = secs()?,
            "auth_allow_insecure_global_id_reclaim" => {
                self.auth_allow_insecure_global_id_reclaim = flag()?
            }
            "ms_mon_client_mode" => self.ms_mon_client_mode = ConModes::parse(value)?,
            "ms_mon_cluster_mode" => self.ms_mon_cluster_mode = ConModes::parse(value)?,
            "ms_mon_service_mode" => self.ms_mon_service_mode = ConModes::parse(value)?,
            "ms_client_mode" => self.ms_client_mode = ConModes::parse(value)?,
            "ms_cluster_mode" => self.ms_cluster_mode = ConModes::parse(value)?,
            "ms_service_mode" => self.ms_service_mode = ConModes::parse(value)?,
            _ => return Err(AuthError::Malformed("unknown auth option")),
        }
        Ok(())
    }

    /// The methods allowed on a connection between `me` and `peer`, whichever side
    /// dialled (Ceph's `AuthRegistry::get_supported_methods`).
    pub fn methods_for(&self, me: EntityType, peer: EntityType) -> &AuthMethods {
        match ConnKind::of(me, peer) {
            ConnKind::ClientToMon | ConnKind::Client => &self.auth_client_required,
            ConnKind::MonCluster | ConnKind::Cluster => &self.auth_cluster_required,
            ConnKind::MonService | ConnKind::Service => &self.auth_service_required,
        }
    }

    /// The msgr2 modes of a connection between `me` and `peer`, in preference order,
    /// before the per-method filter (Ceph's `AuthRegistry::get_supported_methods`).
    pub fn modes_for(&self, me: EntityType, peer: EntityType) -> &ConModes {
        match ConnKind::of(me, peer) {
            ConnKind::ClientToMon => &self.ms_mon_client_mode,
            ConnKind::Client => &self.ms_client_mode,
            ConnKind::MonCluster => &self.ms_mon_cluster_mode,
            ConnKind::MonService => &self.ms_mon_service_mode,
            ConnKind::Cluster => &self.ms_cluster_mode,
            ConnKind::Service => &self.ms_service_mode,
        }
    }

    /// The methods a daemon of type `me` accepts from a peer of type `peer`: cluster
    /// methods between daemons, service methods for clients (Ceph's
    /// `AuthRegistry::_get_supported_methods`).
    pub fn accepted_from(&self, peer: EntityType) -> &AuthMethods {
        if peer == EntityType::CLIENT {
            &self.auth_service_required
        } else {
            &self.auth_cluster_required
        }
    }

    /// Whether a daemon must run the authorizer challenge round even with a peer of type
    /// `peer` that cannot answer it (`cephx_*require_version >= 2`); one that can (a v1
    /// peer with CEPHX_V2, every msgr2 peer) is always challenged.
    ///
    /// `cephx_require_version` counts for every peer, as in Ceph's
    /// `ProtocolV1::handle_connect_message_2`, which then requires CEPHX_V2: with it at
    /// 2 (the default) and only the service (or cluster) option lowered, a captured
    /// authorizer replayed in a connect without CEPHX_V2 was let in unchallenged.
    pub fn requires_challenge(&self, peer: EntityType) -> bool {
        let v = if peer == EntityType::CLIENT {
            self.cephx_service_require_version
        } else {
            self.cephx_cluster_require_version
        };
        self.cephx_require_version >= 2 || v >= 2
    }

    /// Whether a monitor takes cephx off the methods an MAuth offers, for an entity named
    /// as a `named` on a connection with `features` (Ceph's `AuthMonitor::prep_auth`, the
    /// msgr v1 path: msgr2 authenticates in its AUTH frames and needs neither feature):
    /// without MSG_AUTH where signatures are required, else without CEPHX_V2 where cephx
    /// v2 is. Mon, OSD, MDS and MGR names are held to the cluster options, any other to
    /// the service ones.
    pub fn mon_disallows_cephx(&self, named: EntityType, features: Features) -> bool {
        let cluster =
            matches!(named, EntityType::MON | EntityType::OSD | EntityType::MDS | EntityType::MGR);
        if !features.contains(Features::MSG_AUTH) {
            self.cephx_require_signatures
                || if cluster {
                    self.cephx_cluster_require_signatures
                } else {
                    self.cephx_service_require_signatures
                }
        } else if !features.contains(Features::CEPHX_V2) {
            // Ceph's `else if`: a peer without MSG_AUTH where no signatures are required
            // is let through whatever its cephx version.
            let v = if cluster {
                self.cephx_cluster_require_version
            } else {
                self.cephx_service_require_version
            };
            self.cephx_require_version >= 2 || v >= 2
        } else {
            false
        }
    }

    /// The feature bits a msgr v1 acceptor requires of a connect from a peer of type
    /// `peer` that carries a cephx authorizer (Ceph's
    /// `ProtocolV1::handle_connect_message_2`, which answers a peer lacking one with
    /// FEATURES before it looks at the authorizer): MSG_AUTH where signatures are
    /// required, CEPHX_V2 where cephx v2 is. As there, an OSD, MDS or MGR peer is held to
    /// the cluster options and any other (a client, a monitor) to the service ones.
    pub fn v1_cephx_required_features(&self, peer: EntityType) -> Features {
        let cluster = matches!(peer, EntityType::OSD | EntityType::MDS | EntityType::MGR);
        let (signatures, version) = if cluster {
            (self.cephx_cluster_require_signatures, self.cephx_cluster_require_version)
        } else {
            (self.cephx_service_require_signatures, self.cephx_service_require_version)
        };
        let mut required = Features::NONE;
        if self.cephx_require_signatures || signatures {
            required = required | Features::MSG_AUTH;
        }
        if self.cephx_require_version >= 2 || version >= 2 {
            required = required | Features::CEPHX_V2;
        }
        required
    }

    /// Whether messages from a peer of type `peer` must be signed.
    pub fn requires_signatures(&self, peer: EntityType) -> bool {
        self.cephx_require_signatures
            || if peer == EntityType::CLIENT {
                self.cephx_service_require_signatures
            } else {
                self.cephx_cluster_require_signatures
            }
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_is_auth_none_and_ceph_defaults_are_cephx() {
        let d = AuthConfig::default();
        assert_eq!(d.auth_client_required, AuthMethods::none());
        assert!(d.cephx_sign_messages);
        let c = AuthConfig::ceph_defaults();
        assert!(c.auth_service_required.allows(AUTH_CEPHX));
        assert!(!c.auth_service_required.allows(AUTH_NONE));
        assert!(c.requires_challenge(EntityType::CLIENT));
        assert!(!c.requires_signatures(EntityType::OSD));
    }

    #[test]
    fn options_set_by_ceph_name() {
        let mut c = AuthConfig::default();
        c.set("auth_client_required", "cephx, none").unwrap();
        assert_eq!(c.auth_client_required, AuthMethods(vec![AUTH_CEPHX, AUTH_NONE]));
        c.set("auth service required", "cephx").unwrap();
        c.set("cephx-require-signatures", "true").unwrap();
        c.set("cephx_service_require_version", "1").unwrap();
        c.set("auth_service_ticket_ttl", "30").unwrap();
        c.set("keyring", "/etc/ceph/ceph.client.admin.keyring").unwrap();
        assert!(c.requires_signatures(EntityType::CLIENT));
        // cephx_require_version (2) still requires it, as in Ceph.
        assert!(c.requires_challenge(EntityType::CLIENT));
        c.set("cephx_require_version", "1").unwrap();
        assert!(!c.requires_challenge(EntityType::CLIENT));
        assert_eq!(c.auth_service_ticket_ttl, Duration::from_secs(30));
        assert!(c.set("auth_client_required", "kerberos").is_err());
        assert!(c.set("cephx_sign_messages", "maybe").is_err());
        assert!(c.set("no_such_option", "1").is_err());
    }

    // A ttl is a user's text: one too large for a `Duration` is a clear error, not a
    // panic in `Duration::from_secs_f64`.
    #[test]
    fn a_ttl_too_large_for_a_duration_is_an_error() {
        let mut c = AuthConfig::default();
        for huge in ["1e30", "1e300", "18446744073709551616"] {
            assert!(c.set("auth_mon_ticket_ttl", huge).is_err(), "{huge}");
            assert!(c.set("auth_service_ticket_ttl", huge).is_err(), "{huge}");
        }
    }

    // Ceph 16.2's table (msgr-v2.md 5.2, checked live): which option applies per pair of
    // entity types, and the defaults.
    #[test]
    fn mode_and_method_lists_per_connection_kind() {
        use EntityType as T;
        let mut c = AuthConfig::ceph_defaults();
        let (secure, crc) = (ConMode::SECURE, ConMode::CRC);
        // Defaults: secure first with monitors, crc first elsewhere.
        assert_eq!(c.modes_for(T::CLIENT, T::MON).0, [secure, crc]);
        assert_eq!(c.modes_for(T::CLIENT, T::OSD).0, [crc, secure]);
        assert_eq!(c.modes_for(T::MON, T::CLIENT).0, [secure, crc]);
        assert_eq!(c.modes_for(T::OSD, T::OSD).0, [crc, secure]);
        // Each option reaches exactly its cells of the table.
        let names = [
            "ms_mon_client_mode",
            "ms_client_mode",
            "ms_mon_cluster_mode",
            "ms_mon_service_mode",
            "ms_cluster_mode",
            "ms_service_mode",
        ];
        for name in names {
            c.set(name, "secure").unwrap();
        }
        c.set("ms_mon_client_mode", "crc").unwrap();
        c.set("ms service mode", "crc, secure").unwrap();
        let table = [
            (T::CLIENT, T::MON, ConnKind::ClientToMon, vec![crc]),
            (T::CLIENT, T::OSD, ConnKind::Client, vec![secure]),
            (T::CLIENT, T::MGR, ConnKind::Client, vec![secure]),
            (T::MON, T::MON, ConnKind::MonCluster, vec![secure]),
            (T::MON, T::CLIENT, ConnKind::MonService, vec![secure]),
            (T::MON, T::OSD, ConnKind::MonService, vec![secure]),
            (T::OSD, T::MON, ConnKind::Cluster, vec![secure]),
            (T::OSD, T::MDS, ConnKind::Cluster, vec![secure]),
            (T::MGR, T::OSD, ConnKind::Cluster, vec![secure]),
            (T::OSD, T::CLIENT, ConnKind::Service, vec![crc, secure]),
            (T::MDS, T::CLIENT, ConnKind::Service, vec![crc, secure]),
        ];
        for (me, peer, kind, modes) in table {
            assert_eq!(ConnKind::of(me, peer), kind, "{me:?} -> {peer:?}");
            assert_eq!(c.modes_for(me, peer).0, modes, "{me:?} -> {peer:?}");
        }
        // Methods follow the same split.
        c.set("auth_client_required", "none").unwrap();
        c.set("auth_cluster_required", "cephx").unwrap();
        c.set("auth_service_required", "cephx, none").unwrap();
        assert_eq!(c.methods_for(T::CLIENT, T::MON).0, [AUTH_NONE]);
        assert_eq!(c.methods_for(T::OSD, T::MON).0, [AUTH_CEPHX]);
        assert_eq!(c.methods_for(T::MON, T::OSD).0, [AUTH_CEPHX, AUTH_NONE]);
        assert_eq!(c.methods_for(T::OSD, T::CLIENT).0, [AUTH_CEPHX, AUTH_NONE]);
        assert!(ConModes::parse("crc fast").is_err());
        assert!(ConModes::parse(" ").is_err());
        assert_eq!(ConModes::parse("secure;crc;secure").unwrap(), ConModes::secure_crc());
    }
}
