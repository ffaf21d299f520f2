//! Jobs prepared once for the share check (from the pool's [`Notify`]), the bounded book of live
//! jobs, and the duplicate filter.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::sha256::Sha256Stream;
use super::target::{Threshold, network_target};
use crate::protocol::{JobId, Notify};

/// A job ready for share checks: everything that is the same for every share is computed once.
#[derive(Debug)]
pub struct Job {
    seq: u64,
    notify: Notify,
    /// The pool's id for this job when the job is shown to miners under another id (a proxy
    /// issues its own, so ids never repeat across pool connections); the notify's id otherwise.
    upstream_id: JobId,
    /// `prevhash` in header order.
    pub(crate) prevhash_header: [u8; 32],
    /// SHA-256 state after coinb1's whole 64-byte blocks.
    pub(crate) coinb1_midstate: [u32; 8],
    /// How many bytes of coinb1 the midstate covers (a multiple of 64).
    pub(crate) coinb1_hashed_len: usize,
    pub(crate) network_threshold: Threshold,
}

impl Job {
    /// Prepares a job. `seq` is its position in the upstream's stream of jobs (monotonic), which
    /// staleness and extranonce quarantine are expressed in.
    pub fn new(seq: u64, notify: Notify) -> Self {
        let whole_blocks_len = notify.coinb1.len() / 64 * 64;
        let mut stream = Sha256Stream::new();
        stream.update(&notify.coinb1[..whole_blocks_len]);
        let (coinb1_midstate, _) = stream
            .midstate()
            .expect("only whole 64-byte blocks were hashed");
        Self {
            seq,
            upstream_id: notify.job_id.clone(),
            prevhash_header: notify.prevhash.header_bytes(),
            coinb1_midstate,
            coinb1_hashed_len: whole_blocks_len,
            network_threshold: network_target(notify.nbits).into(),
            notify,
        }
    }

    /// Sequence number within its upstream (higher is newer).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The job's id as miners see it (the pool's, unless the job was renamed).
    pub fn id(&self) -> &JobId {
        &self.notify.job_id
    }

    /// The pool's id, to submit shares upstream under.
    pub fn upstream_id(&self) -> &JobId {
        &self.upstream_id
    }

    /// The job as the pool sent it.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    /// The network target from `nbits`: a share meeting it is a block.
    pub fn network_threshold(&self) -> &Threshold {
        &self.network_threshold
    }

    /// The coinb1 bytes the midstate does not cover.
    pub(crate) fn coinb1_tail(&self) -> &[u8] {
        &self.notify.coinb1[self.coinb1_hashed_len..]
    }
}

/// Default number of jobs kept per upstream. Pools send a job every 30 to 60 s and miners submit
/// within seconds of switching, so 16 covers several minutes of non-clean updates.
pub const DEFAULT_JOB_HISTORY: usize = 16;

/// The live jobs of one upstream, newest last, bounded.
///
/// A job leaves the book when a `clean_jobs` notify arrives (new block: every older job is stale),
/// when the history is full, or when the pool reuses its id. Shares for a job not in the book are
/// stale (error 21).
#[derive(Debug, Clone)]
pub struct JobBook {
    jobs: VecDeque<Arc<Job>>,
    capacity: usize,
    next_seq: u64,
}

impl JobBook {
    /// A book that keeps at most `capacity` jobs (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            jobs: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            next_seq: 0,
        }
    }

    /// Adds the pool's newest job and returns it prepared.
    pub fn push(&mut self, notify: Notify) -> Arc<Job> {
        let job = Job::new(self.next_seq, notify);
        self.insert(job)
    }

    /// Adds the pool's newest job under an id of the caller's (`notify.job_id` is kept as the
    /// upstream id). A proxy renames jobs so an id never means two different jobs to a miner,
    /// even when a pool reuses ids across reconnects or extranonce changes.
    pub fn push_renamed(&mut self, mut notify: Notify, id: JobId) -> Arc<Job> {
        let upstream_id = std::mem::replace(&mut notify.job_id, id);
        let mut job = Job::new(self.next_seq, notify);
        job.upstream_id = upstream_id;
        self.insert(job)
    }

    fn insert(&mut self, job: Job) -> Arc<Job> {
        let job = Arc::new(job);
        self.next_seq += 1;
        if job.notify.clean_jobs {
            self.jobs.clear();
        } else {
            // A pool that re-sends an id replaces that job (compared by the pool's id: renamed
            // jobs never repeat their own).
            self.jobs
                .retain(|old| old.upstream_id() != job.upstream_id());
            while self.jobs.len() >= self.capacity {
                self.jobs.pop_front();
            }
        }
        self.jobs.push_back(Arc::clone(&job));
        job
    }

    /// The live job with this id, if any.
    #[inline]
    pub fn get(&self, id: &str) -> Option<&Arc<Job>> {
        // Newest first: almost every share is for the latest job. A handful of jobs makes a
        // linear scan cheaper than hashing the id.
        self.jobs.iter().rev().find(|job| job.id().as_str() == id)
    }

    /// The live job with this sequence number, if any.
    pub fn by_seq(&self, seq: u64) -> Option<&Arc<Job>> {
        self.jobs.iter().rev().find(|job| job.seq == seq)
    }

    /// The newest job.
    pub fn latest(&self) -> Option<&Arc<Job>> {
        self.jobs.back()
    }

    /// Jobs with a sequence number below this are stale.
    pub fn oldest_live_seq(&self) -> u64 {
        self.jobs.front().map_or(self.next_seq, |job| job.seq)
    }

    /// Sequence number the next job will get (one past the newest).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Live jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// No live job yet (or the pool has not sent one since the book was made).
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// Remembers accepted shares per job so a resubmission is answered "duplicate" (error 22).
///
/// The key is the share's SHA-256d hash: two submits with the same job, extranonce1, extranonce2,
/// ntime, nonce and version give the same hash, however their hex was spelled (case flips and
/// padding tricks were used against string-keyed duplicate checks: MiningCore#710), and different
/// submits give different hashes short of a SHA-256 collision. Only the hash's 64 low-order bits
/// are kept (8 bytes a share, not 32: a miner at two shares a second over ten live jobs held
/// 5.6 KiB of them): the high-order bits of a share meeting a target are zeros, the low ones
/// uniform, so two different shares of one miner's job look alike with probability about
/// n / 2^64, and such a collision could only refuse a share, never accept one twice. Memory is
/// bounded by the jobs' lifetime: a job's set is dropped when the job goes stale.
#[derive(Debug, Default)]
pub struct DuplicateFilter {
    /// (job seq, hashes of accepted shares), oldest job first. Only live jobs are here, a
    /// handful, so a linear scan beats a map.
    jobs: Vec<(u64, ShareHashes)>,
}

impl DuplicateFilter {
    /// An empty filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an accepted share; false if the same share was recorded before.
    pub fn insert(&mut self, job_seq: u64, hash: &[u8; 32]) -> bool {
        let set = match self.jobs.iter_mut().position(|(seq, _)| *seq == job_seq) {
            Some(index) => &mut self.jobs[index].1,
            None => {
                self.jobs.push((job_seq, HashSet::default()));
                &mut self.jobs.last_mut().expect("just pushed").1
            }
        };
        set.insert(share_key(hash))
    }

    /// Whether the share was recorded.
    pub fn contains(&self, job_seq: u64, hash: &[u8; 32]) -> bool {
        self.jobs
            .iter()
            .any(|(seq, set)| *seq == job_seq && set.contains(&share_key(hash)))
    }

    /// Forgets every job with a sequence number below `oldest_live_seq`.
    pub fn retire_jobs_before(&mut self, oldest_live_seq: u64) {
        self.jobs.retain(|(seq, _)| *seq >= oldest_live_seq);
    }

    /// Shares remembered, over all live jobs.
    pub fn len(&self) -> usize {
        self.jobs.iter().map(|(_, set)| set.len()).sum()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The accepted shares of one job, by [`share_key`].
type ShareHashes = HashSet<u64, BuildHasherDefault<HashPrefixHasher>>;

/// A share's key in the filter: the 64 low-order bits of its SHA-256d hash (the first 8 bytes
/// in Bitcoin's internal, little-endian order).
fn share_key(hash: &[u8; 32]) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(low)
}

/// Hashes a [`share_key`] as itself: it is already uniformly random, so running SipHash over it
/// again would only cost time.
#[derive(Default)]
struct HashPrefixHasher(u64);

impl Hasher for HashPrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let take = bytes.len().min(8);
        word[..take].copy_from_slice(&bytes[..take]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PrevHash;

    fn notify(id: &str, clean: bool) -> Notify {
        Notify {
            job_id: JobId::new(id).unwrap(),
            prevhash: PrevHash::from_wire_bytes([1; 32]),
            coinb1: vec![2; 70],
            coinb2: vec![3; 30],
            merkle_branch: vec![],
            version: 0x2000_0000,
            nbits: 0x1d00ffff,
            ntime: 1_700_000_000,
            clean_jobs: clean,
        }
    }

    #[test]
    fn clean_jobs_retire_everything_older() {
        let mut book = JobBook::new(4);
        book.push(notify("a", true));
        book.push(notify("b", false));
        assert!(book.get("a").is_some() && book.get("b").is_some());
        let c = book.push(notify("c", true));
        assert!(book.get("a").is_none() && book.get("b").is_none());
        assert_eq!(book.get("c").unwrap().seq(), c.seq());
        assert_eq!(book.oldest_live_seq(), 2);
    }

    #[test]
    fn history_is_bounded_and_reused_ids_replace() {
        let mut book = JobBook::new(3);
        for id in ["a", "b", "c", "d"] {
            book.push(notify(id, false));
        }
        assert_eq!(book.len(), 3);
        assert!(book.get("a").is_none(), "evicted: stale");
        assert_eq!(book.oldest_live_seq(), 1);
        let again = book.push(notify("c", false));
        assert_eq!(book.get("c").unwrap().seq(), again.seq(), "newest wins");
        assert_eq!(book.len(), 3);
        assert_eq!(book.latest().unwrap().id().as_str(), "c");
    }

    #[test]
    fn renamed_jobs_keep_the_pool_id() {
        let mut book = JobBook::new(4);
        let job = book.push_renamed(notify("pool-7", true), JobId::new("a1").unwrap());
        assert_eq!(job.id().as_str(), "a1");
        assert_eq!(job.upstream_id().as_str(), "pool-7");
        assert!(book.get("a1").is_some() && book.get("pool-7").is_none());
        assert_eq!(book.by_seq(job.seq()).unwrap().id().as_str(), "a1");
        let plain = book.push(notify("b", false));
        assert_eq!(plain.upstream_id(), plain.id());
        // The pool re-sends its id "pool-7" with new contents: the old one is gone.
        let again = book.push_renamed(notify("pool-7", false), JobId::new("a3").unwrap());
        assert!(book.get("a1").is_none());
        assert_eq!(book.get("a3").unwrap().seq(), again.seq());
    }

    #[test]
    fn midstate_covers_whole_blocks_of_coinb1() {
        let job = Job::new(0, notify("a", true));
        assert_eq!(job.coinb1_hashed_len, 64);
        assert_eq!(job.coinb1_tail().len(), 6);
    }

    #[test]
    fn duplicate_filter_forgets_stale_jobs() {
        let mut filter = DuplicateFilter::new();
        let hash = [7u8; 32];
        assert!(filter.insert(1, &hash));
        assert!(!filter.insert(1, &hash));
        assert!(filter.insert(2, &hash), "per job");
        let mut other = hash;
        other[0] ^= 1;
        assert!(
            filter.insert(1, &other),
            "a share differing in its low-order bits is new"
        );
        assert!(filter.contains(1, &hash));
        filter.retire_jobs_before(2);
        assert!(!filter.contains(1, &hash));
        assert_eq!(filter.len(), 1);
    }
}
