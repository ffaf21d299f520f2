//! Extranonces and the allocator that splits one upstream's extranonce space between miners.
//!
//! The pool gives hashgate extranonce1 `E` and extranonce2_size `N`. Miner k gets extranonce1
//! `E ++ prefix_k` and extranonce2_size `N - p`; its share goes upstream with extranonce2
//! `prefix_k ++ miner_extranonce2`, so the coinbase bytes (and the hash) are identical on both
//! sides. Prefixes must be unique among live miners, or two miners search the same space and one
//! of them produces duplicates.

use std::collections::VecDeque;

/// A miner's slice of an upstream's extranonce2 space: `size` bytes (1 to 4), big-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ExtranoncePrefix {
    /// The value right-aligned in four big-endian bytes; only the last `size` are used.
    bytes: [u8; 4],
    size: u8,
}

impl ExtranoncePrefix {
    fn new(value: u32, size: u8) -> Self {
        debug_assert!((1..=4).contains(&size));
        Self {
            bytes: value.to_be_bytes(),
            size,
        }
    }

    /// The prefix bytes, exactly `size` of them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[4 - self.size as usize..]
    }

    /// The prefix as a number (its index in the space).
    pub fn value(&self) -> u32 {
        u32::from_be_bytes(self.bytes)
    }

    /// Bytes taken from the upstream's extranonce2.
    pub fn size(&self) -> usize {
        self.size as usize
    }
}

/// Why a prefix could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocatorError {
    /// Every prefix is held by a live miner or still quarantined: open another upstream
    /// connection or wait for old jobs to go stale.
    #[error(
        "extranonce prefix space of {size} byte(s) is exhausted ({capacity} prefixes in use or quarantined)"
    )]
    Exhausted {
        /// Prefix size in bytes.
        size: usize,
        /// Number of distinct prefixes.
        capacity: u64,
    },
    /// Prefix sizes of 1 to 4 bytes are supported.
    #[error("extranonce prefix size {0} is not between 1 and 4 bytes")]
    BadSize(usize),
}

/// Hands out unique extranonce prefixes for one upstream connection.
///
/// A released prefix is not reusable at once: the miner that held it may still submit shares for
/// jobs it was given, and a new miner on the same prefix would search the same space and produce
/// the old miner's shares (stratum PR #2261). So [`release`](Self::release) records the newest job
/// sequence number the departing miner could have seen, and the prefix only becomes free when
/// [`retire_jobs_before`](Self::retire_jobs_before) reports that every job up to that one is
/// stale. Allocation and release are O(1); memory grows with the number of prefixes ever used,
/// never with the size of the space.
#[derive(Debug)]
pub struct ExtranonceAllocator {
    size: u8,
    capacity: u64,
    /// Next never-used prefix value.
    next_fresh: u64,
    /// Released prefixes whose jobs are all stale: reusable, oldest first.
    free: VecDeque<u32>,
    /// Released prefixes waiting for their jobs to go stale: (prefix, newest job seq it saw),
    /// in release order, so job sequence numbers are non-decreasing.
    quarantined: VecDeque<(u32, u64)>,
    /// Jobs with a sequence number below this are stale.
    oldest_live_job: u64,
    in_use: u64,
}

impl ExtranonceAllocator {
    /// An allocator for prefixes of `size` bytes (1 to 4).
    pub fn new(size: usize) -> Result<Self, AllocatorError> {
        if !(1..=4).contains(&size) {
            return Err(AllocatorError::BadSize(size));
        }
        Ok(Self {
            size: size as u8,
            capacity: 1u64 << (8 * size),
            next_fresh: 0,
            free: VecDeque::new(),
            quarantined: VecDeque::new(),
            oldest_live_job: 0,
            in_use: 0,
        })
    }

    /// Takes a prefix that no live miner holds and whose previous holder's jobs are all stale.
    pub fn allocate(&mut self) -> Result<ExtranoncePrefix, AllocatorError> {
        let value = if let Some(value) = self.free.pop_front() {
            value
        } else if self.next_fresh < self.capacity {
            let value = self.next_fresh as u32;
            self.next_fresh += 1;
            value
        } else {
            return Err(AllocatorError::Exhausted {
                size: self.size as usize,
                capacity: self.capacity,
            });
        };
        self.in_use += 1;
        Ok(ExtranoncePrefix::new(value, self.size))
    }

    /// Gives a prefix back. `newest_job_seen` is the sequence number of the newest job its miner
    /// could have worked on; the prefix is reusable once that job is stale.
    pub fn release(&mut self, prefix: ExtranoncePrefix, newest_job_seen: u64) {
        debug_assert_eq!(prefix.size, self.size, "prefix from another allocator");
        self.in_use = self.in_use.saturating_sub(1);
        if newest_job_seen < self.oldest_live_job {
            self.free.push_back(prefix.value());
        } else {
            self.quarantined
                .push_back((prefix.value(), newest_job_seen));
        }
    }

    /// Gives back a prefix whose miner was never sent a job: it cannot have produced shares, so
    /// it is free at once.
    pub fn release_unused(&mut self, prefix: ExtranoncePrefix) {
        debug_assert_eq!(prefix.size, self.size, "prefix from another allocator");
        self.in_use = self.in_use.saturating_sub(1);
        self.free.push_back(prefix.value());
    }

    /// Every job with a sequence number below `oldest_live_job` is stale now (a clean job
    /// arrived, or old jobs left the history): quarantined prefixes of those jobs become free.
    pub fn retire_jobs_before(&mut self, oldest_live_job: u64) {
        self.oldest_live_job = self.oldest_live_job.max(oldest_live_job);
        while let Some(&(value, newest_job)) = self.quarantined.front() {
            if newest_job >= self.oldest_live_job {
                break;
            }
            self.quarantined.pop_front();
            self.free.push_back(value);
        }
    }

    /// Whether [`allocate`](Self::allocate) would succeed now.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty() || self.next_fresh < self.capacity
    }

    /// Prefixes held by live miners.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Prefixes released but not yet reusable.
    pub fn quarantined(&self) -> usize {
        self.quarantined.len()
    }

    /// Number of distinct prefixes (256^size).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Prefix size in bytes.
    pub fn prefix_size(&self) -> usize {
        self.size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Extranonce1, Extranonce2};
    use crate::work::ExtranonceSplit;
    use std::collections::HashSet;

    #[test]
    fn split_and_rejoin_extranonce() {
        let mut allocator = ExtranonceAllocator::new(2).unwrap();
        allocator.allocate().unwrap();
        let prefix = allocator.allocate().unwrap();
        assert_eq!(prefix.as_bytes(), &[0x00, 0x01]);
        // A pool extranonce2 of 6 bytes: the 2-byte prefix and 4 for the miner, no padding.
        let split = ExtranonceSplit::new(4, 6, Some(2), 8).unwrap();
        let pool_en1 = Extranonce1::from_hex("9b19f82f").unwrap();
        let miner_en1 = split.miner_extranonce1(&pool_en1, &prefix).unwrap();
        assert_eq!(miner_en1.to_hex(), "9b19f82f0001");
        let miner_en2 = Extranonce2::from_hex("aabbccdd").unwrap();
        let upstream_en2 = split.upstream_extranonce2(&prefix, &miner_en2).unwrap();
        assert_eq!(upstream_en2.to_hex(), "0001aabbccdd");
        // The coinbase bytes are the same both ways.
        let miner_side = [miner_en1.as_bytes(), miner_en2.as_bytes()].concat();
        let pool_side = [pool_en1.as_bytes(), upstream_en2.as_bytes()].concat();
        assert_eq!(miner_side, pool_side);
    }

    #[test]
    fn prefixes_are_unique_and_exhaustion_is_an_error() {
        let mut allocator = ExtranonceAllocator::new(1).unwrap();
        let prefixes: HashSet<_> = (0..256).map(|_| allocator.allocate().unwrap()).collect();
        assert_eq!(prefixes.len(), 256);
        let err = allocator.allocate().unwrap_err();
        assert_eq!(
            err,
            AllocatorError::Exhausted {
                size: 1,
                capacity: 256
            }
        );
        assert!(err.to_string().contains("exhausted"));
        assert!(ExtranonceAllocator::new(0).is_err());
        assert!(ExtranonceAllocator::new(5).is_err());
    }

    #[test]
    fn released_prefix_waits_until_its_jobs_are_stale() {
        let mut allocator = ExtranonceAllocator::new(1).unwrap();
        let held: Vec<_> = (0..256).map(|_| allocator.allocate().unwrap()).collect();
        // The miner on prefix 7 saw job 10 and leaves.
        allocator.release(held[7], 10);
        assert!(allocator.allocate().is_err(), "job 10 may still be live");
        allocator.retire_jobs_before(10);
        assert!(allocator.allocate().is_err(), "job 10 itself is still live");
        allocator.retire_jobs_before(11);
        assert_eq!(allocator.allocate().unwrap(), held[7], "reused once stale");
        // Release after its jobs are already stale: reusable at once.
        allocator.release(held[9], 3);
        assert_eq!(allocator.allocate().unwrap(), held[9]);
        assert_eq!(allocator.in_use(), 256);
    }

    #[test]
    fn four_byte_prefix_space_is_lazy() {
        let mut allocator = ExtranonceAllocator::new(4).unwrap();
        assert_eq!(allocator.capacity(), 1 << 32);
        let p = allocator.allocate().unwrap();
        assert_eq!(p.as_bytes(), &[0, 0, 0, 0]);
        assert_eq!(p.size(), 4);
    }
}
