//! The error type of `protocol::auth`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, ErrorKind};

/// `EPERM`.
pub const EPERM: i32 = 1;
/// `EACCES`: what a 16.2.15 monitor answers for a wrong key, an unknown entity or a
/// refused global_id reclaim (cephx.md 4.6).
pub const EACCES: i32 = 13;
/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `EOPNOTSUPP`: no offered auth method is acceptable.
pub const EOPNOTSUPP: i32 = 95;
/// `ETIMEDOUT`.
pub const ETIMEDOUT: i32 = 110;

/// Why authentication or authorization failed.
///
/// Categories as in [`ErrorKind`]; [`AuthError::errno`] is what a monitor-side handler
/// puts on the wire for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// The bytes do not decode (truncated, bad length, ...).
    Decode(Error),
    /// A structural rule was broken; the text names it.
    Malformed(&'static str),
    /// Decryption gave a wrong envelope magic: the bytes were sealed with another key
    /// (for a client, usually a wrong key in its keyring).
    BadMagic,
    /// A `CryptoKey` of a type other than AES.
    UnsupportedKey {
        /// The `CEPH_CRYPTO_*` value.
        crypto_type: u16,
    },
    /// An AES key whose secret is not 16 bytes.
    BadKeyLength {
        /// The secret's length.
        len: usize,
    },
    /// The monitor refused our credentials (`EACCES`/`EPERM`): wrong key, unknown
    /// entity, missing caps or a refused global_id reclaim — the wire does not say which.
    PermissionDenied {
        /// Who we authenticated as.
        entity: String,
        /// The monitor's (negative) result code.
        code: i32,
        /// The monitor's message, if any.
        message: String,
    },
    /// None of the offered methods is allowed by the peer (`EOPNOTSUPP`).
    NoAcceptableMethod {
        /// What we offered (`CEPH_AUTH_*`).
        offered: Vec<u32>,
    },
    /// The peer chose a method we did not offer or do not speak.
    UnexpectedMethod {
        /// The `CEPH_AUTH_*` value it chose.
        method: u32,
    },
    /// The peer answered with another error code.
    Refused {
        /// The (negative) result code.
        code: i32,
        /// The peer's message, if any.
        message: String,
    },
    /// A reply that does not answer what we asked (wrong request type, missing ticket).
    UnexpectedReply(&'static str),
    /// No answer within the configured time.
    Timeout {
        /// What we were waiting for.
        waiting_for: &'static str,
    },
    /// No secret is known for this entity (monitor side: unknown entity; daemon side:
    /// no service secret with that id).
    UnknownEntity(String),
    /// A service secret is missing (the authorizer names a rotating secret we do not
    /// hold, e.g. because our rotating secrets are stale).
    MissingServiceSecret {
        /// The service (`mon`, `osd`, ...).
        service: &'static str,
        /// The rotating secret id.
        secret_id: u64,
    },
    /// An authorizer failed verification; the text says which check.
    BadAuthorizer(&'static str),
    /// A ticket whose validity has ended.
    Expired,
    /// A message signature does not match its contents.
    BadSignature {
        /// The message's sequence number.
        seq: u64,
    },
    /// A message that must be signed is not.
    MissingSignature {
        /// The message's sequence number.
        seq: u64,
    },
    /// No ticket for the service of the peer we dial (msgr v1: the authorizer cannot be
    /// built; the connect faults and is retried, as Ceph's does).
    NoTicket {
        /// The service (`osd`, `mds`, ...).
        service: &'static str,
    },
    /// A keyring could not be used.
    Keyring(KeyringError),
    /// The local caller misused the API.
    Misuse(&'static str),
}

impl AuthError {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthError::Decode(e) => e.kind(),
            AuthError::Malformed(_) | AuthError::BadKeyLength { .. } => ErrorKind::Malformed,
            AuthError::UnsupportedKey { .. }
            | AuthError::NoAcceptableMethod { .. }
            | AuthError::UnexpectedMethod { .. } => ErrorKind::Incompatible,
            AuthError::Misuse(_) | AuthError::Keyring(_) | AuthError::NoTicket { .. } => {
                ErrorKind::Misuse
            }
            AuthError::BadMagic
            | AuthError::PermissionDenied { .. }
            | AuthError::Refused { .. }
            | AuthError::UnexpectedReply(_)
            | AuthError::Timeout { .. }
            | AuthError::UnknownEntity(_)
            | AuthError::MissingServiceSecret { .. }
            | AuthError::BadAuthorizer(_)
            | AuthError::Expired
            | AuthError::BadSignature { .. }
            | AuthError::MissingSignature { .. } => ErrorKind::PeerMisbehaved,
        }
    }

    /// The positive errno a monitor-side handler answers for this error (the wire
    /// carries its negation). Like a 16.2.15 monitor, every credential problem is
    /// `EACCES`, so a prober cannot tell an unknown entity from a wrong key.
    pub fn errno(&self) -> i32 {
        match self {
            AuthError::NoAcceptableMethod { .. } | AuthError::UnexpectedMethod { .. } => EOPNOTSUPP,
            AuthError::Decode(_)
            | AuthError::Malformed(_)
            | AuthError::UnexpectedReply(_)
            | AuthError::Misuse(_) => EINVAL,
            AuthError::Timeout { .. } => ETIMEDOUT,
            AuthError::Refused { code, .. } => code.saturating_abs(),
            _ => EACCES,
        }
    }

    /// The client-side error for a monitor's negative `result` while authenticating
    /// `entity` with methods `offered`.
    pub fn from_result(result: i32, message: &str, entity: &str, offered: &[u32]) -> AuthError {
        // Saturating: a peer's i32::MIN has no negation.
        match result.saturating_neg() {
            EACCES | EPERM => AuthError::PermissionDenied {
                entity: entity.to_owned(),
                code: result,
                message: message.to_owned(),
            },
            EOPNOTSUPP => AuthError::NoAcceptableMethod { offered: offered.to_vec() },
            _ => AuthError::Refused { code: result, message: message.to_owned() },
        }
    }
}

impl From<Error> for AuthError {
    fn from(e: Error) -> Self {
        AuthError::Decode(e)
    }
}

impl From<KeyringError> for AuthError {
    fn from(e: KeyringError) -> Self {
        AuthError::Keyring(e)
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Decode(e) => write!(f, "cephx: {e}"),
            AuthError::Malformed(what) => write!(f, "cephx: malformed: {what}"),
            AuthError::BadMagic => {
                f.write_str("cephx: decryption failed (bad magic): sealed with another key")
            }
            AuthError::UnsupportedKey { crypto_type } => {
                write!(f, "cephx: key type {crypto_type} is not AES (1)")
            }
            AuthError::BadKeyLength { len } => {
                write!(f, "cephx: AES key has {len} secret bytes, expected 16")
            }
            AuthError::PermissionDenied { entity, code, message } => {
                write!(
                    f,
                    "permission denied authenticating as {entity} (monitor answered {code}: \
                     wrong key, unknown entity, missing caps or refused reclaim)"
                )?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            AuthError::NoAcceptableMethod { offered } => {
                write!(f, "no auth method acceptable to the peer (we offered {offered:?})")
            }
            AuthError::UnexpectedMethod { method } => {
                write!(f, "peer chose auth method {method}, which we did not offer")
            }
            AuthError::Refused { code, message } => write!(f, "auth refused ({code}) {message}"),
            AuthError::UnexpectedReply(what) => write!(f, "cephx: unexpected reply: {what}"),
            AuthError::Timeout { waiting_for } => {
                write!(f, "cephx: no {waiting_for} within the auth timeout")
            }
            AuthError::UnknownEntity(name) => write!(f, "cephx: no secret for entity {name}"),
            AuthError::MissingServiceSecret { service, secret_id } => {
                write!(f, "cephx: no {service} service secret with id {secret_id}")
            }
            AuthError::BadAuthorizer(what) => write!(f, "cephx: bad authorizer: {what}"),
            AuthError::Expired => f.write_str("cephx: ticket expired"),
            AuthError::BadSignature { seq } => {
                write!(f, "cephx: message {seq}: signature does not match contents")
            }
            AuthError::MissingSignature { seq } => {
                write!(f, "cephx: message {seq}: not signed but signatures are required")
            }
            AuthError::NoTicket { service } => {
                write!(f, "cephx: no ticket for {service}: cannot build an authorizer")
            }
            AuthError::Keyring(e) => e.fmt(f),
            AuthError::Misuse(what) => write!(f, "cephx API misuse: {what}"),
        }
    }
}

impl std::error::Error for AuthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthError::Decode(e) => Some(e),
            AuthError::Keyring(e) => Some(e),
            _ => None,
        }
    }
}

/// A keyring that cannot give the key asked for; names the file and the entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringError {
    /// The keyring file (`None` for text that did not come from a file).
    pub path: Option<PathBuf>,
    /// The entity concerned (`client.admin`), when known.
    pub entity: Option<String>,
    /// 1-based line number of a parse error.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for KeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("keyring")?;
        if let Some(p) = &self.path {
            write!(f, " {}", p.display())?;
        }
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(e) = &self.entity {
            write!(f, " [{e}]")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for KeyringError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitors_most_negative_result_is_an_error_not_an_overflow() {
        // A peer's i32::MIN: negated unchecked, it panicked in debug builds.
        let e = AuthError::from_result(i32::MIN, "", "client.admin", &[2]);
        assert!(matches!(e, AuthError::Refused { code: i32::MIN, .. }), "{e:?}");
        assert_eq!(e.errno(), i32::MAX);
    }

    #[test]
    fn monitor_results_map_to_clear_errors() {
        let e = AuthError::from_result(-13, "", "client.admin", &[2]);
        assert!(matches!(e, AuthError::PermissionDenied { code: -13, .. }));
        assert!(e.to_string().contains("client.admin"), "{e}");
        assert_eq!(e.errno(), EACCES);
        let e = AuthError::from_result(-95, "", "client.admin", &[2]);
        assert_eq!(e, AuthError::NoAcceptableMethod { offered: vec![2] });
        assert_eq!(e.errno(), EOPNOTSUPP);
        let e = AuthError::from_result(-22, "bad", "client.admin", &[2]);
        assert_eq!(e, AuthError::Refused { code: -22, message: "bad".into() });
        assert_eq!(e.errno(), EINVAL);
        assert_eq!(AuthError::BadMagic.kind(), ErrorKind::PeerMisbehaved);
    }
}
