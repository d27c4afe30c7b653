//! Ceph keyring files (cephx.md 1.1): `[TYPE.ID]` sections with `key = AQ…` and `caps
//! SERVICE = "…"` lines.
//!
//! Only `key` matters to authenticate; caps are kept for a monitor-side key server
//! (they go into the tickets it issues) and otherwise ignored. Other settings in a
//! section (`auid`, …) are skipped like Ceph does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::crypto::CryptoKey;
use super::error::KeyringError;
use crate::types::{AuthEntityName, EntityType};

/// Largest keyring file we read: real ones are a few hundred bytes per entity.
pub const MAX_KEYRING_LEN: u64 = 1 << 20;

/// One entity of a keyring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Its secret.
    pub key: CryptoKey,
    /// `caps SERVICE = "…"` lines by service name (`mon`, `osd`, `mgr`, `mds`).
    pub caps: BTreeMap<String, String>,
}

impl KeyEntry {
    /// An entry with no caps.
    pub fn new(key: CryptoKey) -> Self {
        KeyEntry { key, caps: BTreeMap::new() }
    }

    /// Adds a cap line (builder style).
    pub fn with_cap(mut self, service: &str, cap: &str) -> Self {
        self.caps.insert(service.to_owned(), cap.to_owned());
        self
    }
}

/// A set of entity keys, as read from one keyring file (Ceph's `KeyRing`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRing {
    path: Option<PathBuf>,
    entries: BTreeMap<AuthEntityName, KeyEntry>,
}

/// Parses `TYPE.ID` (`client.admin`, `osd.0`, `mon.`) into an auth entity name.
pub fn parse_entity_name(s: &str) -> Option<AuthEntityName> {
    let (ty, id) = s.split_once('.')?;
    let ty = match ty {
        "mon" => EntityType::MON,
        "mds" => EntityType::MDS,
        "osd" => EntityType::OSD,
        "client" => EntityType::CLIENT,
        "mgr" => EntityType::MGR,
        "auth" => EntityType::AUTH,
        _ => return None,
    };
    Some(AuthEntityName::new(ty, id))
}

impl KeyRing {
    /// An empty keyring.
    pub fn new() -> Self {
        KeyRing::default()
    }

    /// Reads and parses the keyring file at `path` (configuration time; the only file
    /// `protocol` ever reads). Errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<KeyRing, KeyringError> {
        let path = path.as_ref();
        let err = |reason: String| KeyringError {
            path: Some(path.to_owned()),
            entity: None,
            line: None,
            reason,
        };
        use std::io::Read as _;
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let meta = file.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_KEYRING_LEN {
            return Err(err(format!("{} bytes, more than a keyring holds", meta.len())));
        }
        // The read is bounded too: a fifo or a device says 0 bytes in its metadata, and a
        // file may grow after it was looked at.
        let mut text = String::new();
        file.take(MAX_KEYRING_LEN + 1)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_KEYRING_LEN {
            return Err(err(format!("over {MAX_KEYRING_LEN} bytes, more than a keyring holds")));
        }
        KeyRing::parse(&text, Some(path))
    }

    /// Parses keyring text; `path` (if any) only serves error messages.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<KeyRing, KeyringError> {
        let mut ring = KeyRing { path: path.map(Path::to_owned), entries: BTreeMap::new() };
        let err = |line: usize, entity: Option<&str>, reason: String| KeyringError {
            path: path.map(Path::to_owned),
            entity: entity.map(str::to_owned),
            line: Some(line),
            reason,
        };
        // The section being read.
        struct Section {
            text: String,
            name: AuthEntityName,
            key: Option<CryptoKey>,
            caps: BTreeMap<String, String>,
        }
        let mut current: Option<Section> = None;
        let mut finish = |cur: Option<Section>, line: usize| -> Result<(), KeyringError> {
            if let Some(sec) = cur {
                let key = sec.key.ok_or_else(|| {
                    err(line, Some(&sec.text), "section has no `key =` line".into())
                })?;
                ring.entries.insert(sec.name, KeyEntry { key, caps: sec.caps });
            }
            Ok(())
        };
        let mut last_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            last_line = n;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let text = rest
                    .strip_suffix(']')
                    .ok_or_else(|| err(n, None, format!("unterminated section header {line:?}")))?
                    .trim()
                    .to_owned();
                let name = parse_entity_name(&text)
                    .ok_or_else(|| err(n, Some(&text), "not an entity name (TYPE.ID)".into()))?;
                finish(current.take(), n)?;
                current = Some(Section { text, name, key: None, caps: BTreeMap::new() });
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                let entity = current.as_ref().map(|c| c.text.as_str());
                return Err(err(n, entity, format!("expected `name = value`, got {line:?}")));
            };
            let Some(cur) = current.as_mut() else {
                return Err(err(n, None, "setting outside of any [entity] section".into()));
            };
            // Ceph treats spaces and underscores in option names alike.
            let k: String = k.split_whitespace().collect::<Vec<_>>().join(" ").replace('_', " ");
            let v = v.trim();
            if k == "key" {
                let key = CryptoKey::from_base64(v)
                    .map_err(|e| err(n, Some(&cur.text), format!("bad key: {e}")))?;
                cur.key = Some(key);
            } else if let Some(service) = k.strip_prefix("caps ") {
                let cap = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                cur.caps.insert(service.trim().to_owned(), cap.to_owned());
            }
        }
        finish(current.take(), last_line)?;
        Ok(ring)
    }

    /// The file this keyring came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The entry of `name`.
    pub fn get(&self, name: &AuthEntityName) -> Option<&KeyEntry> {
        self.entries.get(name)
    }

    /// The key of `name`, or an error naming the file and the entity.
    pub fn key(&self, name: &AuthEntityName) -> Result<&CryptoKey, KeyringError> {
        self.get(name).map(|e| &e.key).ok_or_else(|| KeyringError {
            path: self.path.clone(),
            entity: Some(name.to_string()),
            line: None,
            reason: format!("no key for {name}"),
        })
    }

    /// Adds or replaces an entity.
    pub fn insert(&mut self, name: AuthEntityName, entry: KeyEntry) {
        self.entries.insert(name, entry);
    }

    /// Every entity, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&AuthEntityName, &KeyEntry)> {
        self.entries.iter()
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no entity.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keyring file text (what `ceph-authtool` writes).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (name, entry) in &self.entries {
            out.push_str(&format!("[{name}]\n\tkey = {}\n", entry.key.to_base64()));
            for (service, cap) in &entry.caps {
                out.push_str(&format!("\tcaps {service} = \"{cap}\"\n"));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ADMIN: &str = "[client.admin]\n\tkey = AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==\n\
                         \tcaps mon = \"allow *\"\n\tcaps osd = \"allow *\"\n\
                         [mon.]\n\tkey = AQAAEF5fAAAAABAAAAECAwQFBgcICQoLDA0ODw==\n\tcaps mon = \"allow *\"\n";

    #[test]
    fn parses_ceph_authtool_output() {
        let ring = KeyRing::parse(ADMIN, None).unwrap();
        assert_eq!(ring.len(), 2);
        let admin = ring.get(&parse_entity_name("client.admin").unwrap()).unwrap();
        assert_eq!(admin.key.to_base64(), "AQCF8QxrWLGNNRAAAkt5SuYycYocSr6XQk9dLg==");
        assert_eq!(admin.caps["mon"], "allow *");
        assert_eq!(admin.caps["osd"], "allow *");
        let mon = parse_entity_name("mon.").unwrap();
        assert_eq!(mon, AuthEntityName::new(EntityType::MON, ""));
        assert!(ring.key(&mon).is_ok());
        // Round trip through the text form.
        assert_eq!(KeyRing::parse(&ring.to_text(), None).unwrap(), ring);
    }

    // MAX_KEYRING_LEN bounds what is read, not only what the file's metadata says: a
    // fifo (or /dev/stdin, a file growing meanwhile) has length 0 there and was read to
    // its end, however long.
    // A thread feeds the fifo: `load` is the one place `protocol` does file IO.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_keyring_longer_than_its_metadata_says_is_refused() {
        let dir = std::env::temp_dir().join(format!("asyncmsgr-keyring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                let mut written = 0u64;
                let _ = f.write_all(ADMIN.as_bytes());
                let comment = format!("#{}\n", "x".repeat(1022));
                // 4 MiB of comments; the reader may stop early (EPIPE).
                for _ in 0..4096 {
                    if f.write_all(comment.as_bytes()).is_err() {
                        break;
                    }
                    written += comment.len() as u64;
                }
                written
            })
        };
        let loaded = KeyRing::load(&fifo);
        let written = writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let err = loaded.expect_err("a 4 MiB keyring was read whole");
        assert!(err.to_string().contains("more than a keyring holds"), "{err}");
        assert!(written <= 2 * MAX_KEYRING_LEN, "the reader stopped near the bound: {written}");
    }

    #[test]
    fn errors_name_the_file_and_the_entity() {
        let path = Path::new("/etc/ceph/k");
        let ring = KeyRing::parse(ADMIN, Some(path)).unwrap();
        let err = ring.key(&parse_entity_name("client.bob").unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/etc/ceph/k") && text.contains("client.bob"), "{text}");

        let err = KeyRing::parse("[client.x]\nkey = AQnotbase64!\n", Some(path)).unwrap_err();
        assert_eq!((err.line, err.entity.as_deref()), (Some(2), Some("client.x")));
        assert!(err.to_string().contains("/etc/ceph/k line 2 [client.x]"), "{err}");
        let err = KeyRing::parse("[client.x]\ncaps mon = \"allow *\"\n", None).unwrap_err();
        assert!(err.reason.contains("no `key =`"), "{err}");
        assert!(KeyRing::parse("[nobody]\n", None).is_err());
        assert!(KeyRing::parse("key = x\n", None).is_err());
        assert!(KeyRing::parse("[client.x\n", None).is_err());
        let err = KeyRing::load("/nonexistent/keyring").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/keyring"), "{err}");
    }
}
