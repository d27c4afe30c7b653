//! The one error type of the `protocol` crate.
//!
//! Every decoder (encoding, wire frames, [`crate::Message`], typed messages and the v1
//! state machine) returns [`Error`]. Like rustls, each error falls into one category,
//! [`ErrorKind`], which is what the session layer acts on (fault the connection, refuse
//! the peer, or report a caller bug).

use std::fmt;

/// What an [`Error`] means for the connection it happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The bytes do not form a valid structure (truncated, bad marker, bad length...).
    Malformed,
    /// The bytes are well formed but the peer broke a protocol rule (bad crc, an
    /// aborted message, a length above our limits).
    PeerMisbehaved,
    /// The peer speaks something we cannot understand (newer compat version, wrong
    /// banner, unsupported address family).
    Incompatible,
    /// The local caller asked for something impossible (API misuse).
    Misuse,
}

/// One error of the `protocol` crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input ended before the structure was complete.
    Truncated {
        /// Bytes needed at the point of failure.
        need: usize,
        /// Bytes that were available there.
        have: usize,
    },
    /// Bytes remained after a structure that must consume its whole input.
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A structural violation; the text names the field or rule.
    Malformed(&'static str),
    /// A length or count above a configured or structural limit.
    TooLarge {
        /// The field that was too large.
        what: &'static str,
        /// The length the peer announced.
        len: u64,
        /// The limit it exceeded.
        limit: u64,
    },
    /// A crc32c mismatch.
    BadCrc {
        /// Which crc (header, front, middle, data).
        what: &'static str,
        /// The crc carried on the wire.
        expected: u32,
        /// The crc computed over the received bytes.
        got: u32,
    },
    /// A message footer without `COMPLETE`: the sender aborted it.
    Aborted,
    /// A versioned block whose compat version is newer than what we can read.
    Incompatible {
        /// The structure being decoded.
        what: &'static str,
        /// The compat version on the wire.
        compat: u8,
        /// The newest version we understand.
        understood: u8,
    },
    /// A value we recognise as valid Ceph but do not implement (e.g. a socket family).
    Unsupported(&'static str),
    /// The peer's banner is not `ceph v027`.
    BadBanner,
    /// The local caller misused the API (e.g. called a decoder in the wrong state).
    Misuse(&'static str),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Truncated { .. } | Error::TrailingBytes { .. } | Error::Malformed(_) => {
                ErrorKind::Malformed
            }
            Error::TooLarge { .. } | Error::BadCrc { .. } | Error::Aborted => {
                ErrorKind::PeerMisbehaved
            }
            Error::Incompatible { .. } | Error::Unsupported(_) | Error::BadBanner => {
                ErrorKind::Incompatible
            }
            Error::Misuse(_) => ErrorKind::Misuse,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { need, have } => {
                write!(f, "truncated input: need {need} bytes, have {have}")
            }
            Error::TrailingBytes { extra } => write!(f, "{extra} unexpected trailing bytes"),
            Error::Malformed(what) => write!(f, "malformed input: {what}"),
            Error::TooLarge { what, len, limit } => {
                write!(f, "{what} too large: {len} > limit {limit}")
            }
            Error::BadCrc { what, expected, got } => {
                write!(f, "bad {what} crc: wire {expected:#010x}, computed {got:#010x}")
            }
            Error::Aborted => write!(f, "message footer lacks COMPLETE: sender aborted it"),
            Error::Incompatible { what, compat, understood } => {
                write!(f, "{what}: compat version {compat} is newer than understood {understood}")
            }
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::BadBanner => write!(f, "peer banner is not \"ceph v027\""),
            Error::Misuse(what) => write!(f, "API misuse: {what}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_categorised() {
        assert_eq!(Error::Truncated { need: 1, have: 0 }.kind(), ErrorKind::Malformed);
        assert_eq!(
            Error::BadCrc { what: "header", expected: 1, got: 2 }.kind(),
            ErrorKind::PeerMisbehaved
        );
        assert_eq!(Error::BadBanner.kind(), ErrorKind::Incompatible);
        assert_eq!(Error::Misuse("x").kind(), ErrorKind::Misuse);
        assert!(Error::TooLarge { what: "front", len: 9, limit: 1 }
            .to_string()
            .contains("front too large"));
    }
}
