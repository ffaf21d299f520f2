//! How one pool connection's extranonce2 is shared between the miners behind it.
//!
//! The pool gives extranonce1 `E` and extranonce2_size `N`. Each miner gets a unique prefix
//! (`ExtranonceAllocator`), extranonce1 `E ++ prefix ++ padding` and the rest of the `N` bytes to
//! roll; its share goes upstream with extranonce2 `prefix ++ padding ++ miner's`, so the coinbase
//! bytes, and the hash, are identical on both sides. Pure arithmetic on the wire types: the
//! session does it for each forwarded share without asking the router.

use super::extranonce::ExtranoncePrefix;
use crate::protocol::{Extranonce1, Extranonce2, MAX_EXTRANONCE_LEN};

/// How a pool's extranonce2 is divided: `prefix ++ padding` identifies the miner, the rest is the
/// miner's own extranonce2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtranonceSplit {
    /// Bytes of the miner's unique prefix (1 to 4).
    pub prefix_size: usize,
    /// Zero bytes after the prefix, when the pool's extranonce2 is larger than a miner may roll.
    pub padding: usize,
    /// Bytes the miner rolls.
    pub miner_size: usize,
}

/// Why a pool's extranonce space cannot be shared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// Too small to give each miner a prefix and at least one byte of its own.
    #[error(
        "pool extranonce2_size {pool_size} leaves no room for a {prefix_size}-byte miner prefix plus at least 1 byte for the miner"
    )]
    TooSmall {
        /// The pool's extranonce2 size.
        pool_size: usize,
        /// The prefix size wanted.
        prefix_size: usize,
    },
    /// The miner's extranonce1 (pool's ++ prefix ++ padding) would exceed 32 bytes.
    #[error(
        "pool extranonce1 of {extranonce1_len} bytes plus {extra} bytes of miner prefix exceeds {MAX_EXTRANONCE_LEN} bytes"
    )]
    TooLong {
        /// The pool's extranonce1 length.
        extranonce1_len: usize,
        /// Prefix and padding.
        extra: usize,
    },
}

impl ExtranonceSplit {
    /// Splits `pool_size` bytes: prefix `configured` or 2 bytes when at least 2 remain for the
    /// miner (else 1); the miner gets the rest up to `max_miner_size`, any excess is zero padding.
    /// `extranonce1_len` is the pool's extranonce1, which the miner's extranonce1 extends.
    pub fn new(
        extranonce1_len: usize,
        pool_size: usize,
        configured: Option<usize>,
        max_miner_size: usize,
    ) -> Result<Self, SplitError> {
        let prefix_size = configured.unwrap_or(if pool_size >= 4 { 2 } else { 1 });
        if pool_size < prefix_size + 1 {
            return Err(SplitError::TooSmall {
                pool_size,
                prefix_size,
            });
        }
        let miner_size = (pool_size - prefix_size).min(max_miner_size.max(1));
        let padding = pool_size - prefix_size - miner_size;
        if extranonce1_len + prefix_size + padding > MAX_EXTRANONCE_LEN
            || pool_size > MAX_EXTRANONCE_LEN
        {
            return Err(SplitError::TooLong {
                extranonce1_len,
                extra: prefix_size + padding,
            });
        }
        Ok(Self {
            prefix_size,
            padding,
            miner_size,
        })
    }

    /// The extranonce1 the miner gets: pool's ++ prefix ++ padding.
    pub fn miner_extranonce1(
        &self,
        pool: &Extranonce1,
        prefix: &ExtranoncePrefix,
    ) -> Option<Extranonce1> {
        let mut bytes = Vec::with_capacity(pool.len() + self.prefix_size + self.padding);
        bytes.extend_from_slice(pool.as_bytes());
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.resize(bytes.len() + self.padding, 0);
        Extranonce1::from_bytes(&bytes).ok()
    }

    /// The extranonce2 the pool gets: prefix ++ padding ++ miner's.
    pub fn upstream_extranonce2(
        &self,
        prefix: &ExtranoncePrefix,
        miner: &Extranonce2,
    ) -> Option<Extranonce2> {
        let mut bytes = [0u8; 2 * crate::protocol::MAX_EXTRANONCE_LEN];
        let p = prefix.as_bytes();
        bytes[..p.len()].copy_from_slice(p);
        let start = p.len() + self.padding;
        let m = miner.as_bytes();
        bytes[start..start + m.len()].copy_from_slice(m);
        Extranonce2::from_bytes(&bytes[..start + m.len()]).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::ExtranonceAllocator;

    #[test]
    fn split_for_every_pool_size() {
        // (pool extranonce2_size, expected prefix, padding, miner size) with the 8-byte cap.
        for (pool, prefix, padding, miner) in [
            (2, 1, 0, 1),
            (3, 1, 0, 2),
            (4, 2, 0, 2),
            (5, 2, 0, 3),
            (8, 2, 0, 6),
            (12, 2, 2, 8),
        ] {
            let split = ExtranonceSplit::new(4, pool, None, 8).unwrap();
            assert_eq!(
                (split.prefix_size, split.padding, split.miner_size),
                (prefix, padding, miner),
                "pool size {pool}"
            );
        }
        assert!(ExtranonceSplit::new(4, 1, None, 8).is_err());
        assert!(ExtranonceSplit::new(4, 2, Some(2), 8).is_err());
        assert_eq!(
            ExtranonceSplit::new(4, 4, Some(3), 8).unwrap().miner_size,
            1
        );
        // A long pool extranonce1 with a large padding would exceed 32 bytes for the miner.
        assert!(matches!(
            ExtranonceSplit::new(28, 32, None, 8),
            Err(SplitError::TooLong { .. })
        ));
        assert!(ExtranonceSplit::new(4, 33, None, 8).is_err());
    }

    #[test]
    fn split_bytes_line_up_on_both_sides() {
        let split = ExtranonceSplit::new(4, 12, None, 8).unwrap();
        let mut allocator = ExtranonceAllocator::new(split.prefix_size).unwrap();
        let _ = allocator.allocate().unwrap();
        let prefix = allocator.allocate().unwrap();
        let pool_en1 = Extranonce1::from_hex("aabbccdd").unwrap();
        let miner_en1 = split.miner_extranonce1(&pool_en1, &prefix).unwrap();
        assert_eq!(miner_en1.to_hex(), "aabbccdd00010000");
        let miner_en2 = Extranonce2::from_hex("0102030405060708").unwrap();
        let upstream = split.upstream_extranonce2(&prefix, &miner_en2).unwrap();
        assert_eq!(upstream.to_hex(), "000100000102030405060708");
        assert_eq!(
            [miner_en1.as_bytes(), miner_en2.as_bytes()].concat(),
            [pool_en1.as_bytes(), upstream.as_bytes()].concat()
        );
    }
}
