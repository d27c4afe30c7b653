//! The banner (`CEPH_BANNER`) and the acceptor's banner block.

use crate::error::{Error, Result};
use crate::types::{EntityAddr, LEGACY_ADDR_LEN};
use crate::wire::{exact, need};

/// `CEPH_BANNER`: 9 ASCII bytes, no terminator.
pub const BANNER: &[u8; BANNER_LEN] = b"ceph v027";
/// Length of [`BANNER`].
pub const BANNER_LEN: usize = 9;
/// The acceptor's first block: banner + its address + the connector's address as seen.
pub const ACCEPTOR_BLOCK_LEN: usize = BANNER_LEN + 2 * LEGACY_ADDR_LEN;

/// Checks that `input` starts with [`BANNER`] (the first 9 bytes must be available).
pub fn check_banner(input: &[u8]) -> Result<()> {
    need(input, BANNER_LEN)?;
    if &input[..BANNER_LEN] == BANNER {
        Ok(())
    } else {
        Err(Error::BadBanner)
    }
}

/// The 281 bytes an acceptor sends right after `accept()`.
///
/// The connector answers with its own legacy address (136 bytes:
/// [`EntityAddr::encode_legacy`]) after reading this block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptorBanner {
    /// The acceptor's own (legacy) listening address.
    pub my_addr: EntityAddr,
    /// The connector's address as the acceptor sees it (peer IP + source port, nonce 0).
    pub peer_addr: EntityAddr,
}

impl AcceptorBanner {
    /// The encoded block.
    pub fn to_bytes(&self) -> [u8; ACCEPTOR_BLOCK_LEN] {
        let mut out = [0u8; ACCEPTOR_BLOCK_LEN];
        out[..BANNER_LEN].copy_from_slice(BANNER);
        out[BANNER_LEN..BANNER_LEN + LEGACY_ADDR_LEN]
            .copy_from_slice(&self.my_addr.encode_legacy());
        out[BANNER_LEN + LEGACY_ADDR_LEN..].copy_from_slice(&self.peer_addr.encode_legacy());
        out
    }

    /// Decodes the block from the start of `input`; returns it and the bytes consumed.
    pub fn decode(input: &[u8]) -> Result<(Self, usize)> {
        check_banner(input)?;
        need(input, ACCEPTOR_BLOCK_LEN)?;
        let my_addr = EntityAddr::decode_legacy(&input[BANNER_LEN..BANNER_LEN + LEGACY_ADDR_LEN])?;
        let peer_addr =
            EntityAddr::decode_legacy(&input[BANNER_LEN + LEGACY_ADDR_LEN..ACCEPTOR_BLOCK_LEN])?;
        Ok((AcceptorBanner { my_addr, peer_addr }, ACCEPTOR_BLOCK_LEN))
    }

    /// Like [`AcceptorBanner::decode`] but `input` must be exactly the block.
    pub fn decode_exact(input: &[u8]) -> Result<Self> {
        exact(input, Self::decode(input)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn golden_acceptor_block() {
        // msgr-v1.md 8.1: monitor 127.0.0.1:6789, client seen as 127.0.0.1:34854.
        let b = AcceptorBanner {
            my_addr: EntityAddr::legacy("127.0.0.1:6789".parse().unwrap(), 0),
            peer_addr: EntityAddr::legacy("127.0.0.1:34854".parse().unwrap(), 0),
        };
        let bytes = b.to_bytes();
        assert_eq!(&bytes[..9], b"ceph v027");
        assert_eq!(&bytes[9..25], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x1a, 0x85, 127, 0, 0, 1]);
        assert_eq!(&bytes[145..161], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x88, 0x26, 127, 0, 0, 1]);
        assert_eq!(AcceptorBanner::decode_exact(&bytes).unwrap(), b);
        assert_eq!(check_banner(b"ceph v2\n\0"), Err(Error::BadBanner));
    }
}
