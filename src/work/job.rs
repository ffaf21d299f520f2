//! Jobs as the pool describes them (`mining.notify`), prepared once for the share check, and the
//! bounded book of live jobs.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bitcoin::BlockHash;
use bitcoin::hashes::Hash;

use super::extranonce::Extranonce2;
use super::sha256::Sha256Stream;
use super::target::{Threshold, network_target};

/// Longest job id accepted from a pool. Real pools send 1 to 16 hex characters; the bound keeps a
/// broken pool from making every share lookup compare kilobytes.
pub const MAX_JOB_ID_LEN: usize = 128;

/// A job id exactly as the pool sent it: an opaque string (some pools send hex, some decimal,
/// some words), compared byte for byte and echoed back unchanged. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JobId(Arc<str>);

/// Why a string is not a usable job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobIdError {
    /// Empty job ids cannot be told apart from a missing field.
    #[error("job id is empty")]
    Empty,
    /// Longer than [`MAX_JOB_ID_LEN`].
    #[error("job id of {0} bytes is longer than {MAX_JOB_ID_LEN}")]
    TooLong(usize),
}

impl JobId {
    /// Checks the bounds and wraps the string.
    pub fn new(id: &str) -> Result<Self, JobIdError> {
        if id.is_empty() {
            Err(JobIdError::Empty)
        } else if id.len() > MAX_JOB_ID_LEN {
            Err(JobIdError::TooLong(id.len()))
        } else {
            Ok(JobId(Arc::from(id)))
        }
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({:?})", &*self.0)
    }
}

/// The previous block hash in Stratum's wire order: the hash's internal byte order with each
/// 4-byte word byte-reversed (a historical accident of cgminer that every pool keeps).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrevHash {
    wire: [u8; 32],
}

impl PrevHash {
    /// From the 32 bytes as they appear in `mining.notify` hex.
    pub fn from_wire_bytes(wire: [u8; 32]) -> Self {
        Self { wire }
    }

    /// From a block hash (as the `bitcoin` crate holds it, internal order): how a pool builds
    /// the notify field.
    pub fn from_block_hash(hash: BlockHash) -> Self {
        Self {
            wire: swap_words(hash.to_byte_array()),
        }
    }

    /// The bytes as sent on the wire.
    pub fn wire_bytes(&self) -> &[u8; 32] {
        &self.wire
    }

    /// The bytes as they go into the block header (internal order): each word swapped back.
    pub fn header_bytes(&self) -> [u8; 32] {
        swap_words(self.wire)
    }

    /// As a block hash.
    pub fn to_block_hash(&self) -> BlockHash {
        BlockHash::from_byte_array(self.header_bytes())
    }
}

impl fmt::Debug for PrevHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrevHash({})", self.to_block_hash())
    }
}

/// Reverses the bytes inside each 4-byte word (not the order of the words).
fn swap_words(bytes: [u8; 32]) -> [u8; 32] {
    let mut out = bytes;
    for word in out.chunks_exact_mut(4) {
        word.reverse();
    }
    out
}

/// The nine parameters of `mining.notify`, decoded from hex once.
///
/// Byte orders: `prevhash` is word-swapped (see [`PrevHash`]); `coinb1`, `coinb2` and the merkle
/// branch are raw bytes used as-is; `version`, `nbits`, `ntime` are the big-endian hex numbers
/// parsed into integers (the header stores them little-endian).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Notify {
    /// Opaque id, echoed in every submit for this job.
    pub job_id: JobId,
    /// Previous block hash, wire order.
    pub prevhash: PrevHash,
    /// Coinbase transaction up to the extranonces.
    pub coinb1: Vec<u8>,
    /// Coinbase transaction after the extranonces.
    pub coinb2: Vec<u8>,
    /// Hashes that fold the coinbase txid into the merkle root, bottom level first.
    pub merkle_branch: Vec<[u8; 32]>,
    /// Block version before version rolling.
    pub version: u32,
    /// Compact network target.
    pub nbits: u32,
    /// The pool's timestamp; shares may roll it forward (see [`crate::work::MAX_NTIME_ROLL`]).
    pub ntime: u32,
    /// When true, every earlier job is stale (new block or coinbase change).
    pub clean_jobs: bool,
}

/// Why `mining.notify` parameters do not make a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// The job id is empty or too long.
    #[error("job_id: {0}")]
    JobId(#[from] JobIdError),
    /// A field is not hex of the expected length.
    #[error("{field} is not valid hex of the expected length")]
    BadHex {
        /// Which notify field.
        field: &'static str,
    },
    /// More merkle levels than any block can have (2^32 transactions).
    #[error("merkle branch has {0} levels, more than 32")]
    BranchTooLong(usize),
}

impl Notify {
    /// Decodes the notify parameters from their wire hex.
    #[allow(clippy::too_many_arguments)] // the nine positional notify parameters, by name
    pub fn from_hex<S: AsRef<str>>(
        job_id: &str,
        prevhash: &str,
        coinb1: &str,
        coinb2: &str,
        merkle_branch: &[S],
        version: &str,
        nbits: &str,
        ntime: &str,
        clean_jobs: bool,
    ) -> Result<Self, NotifyError> {
        if merkle_branch.len() > 32 {
            return Err(NotifyError::BranchTooLong(merkle_branch.len()));
        }
        let branch = merkle_branch
            .iter()
            .map(|h| {
                decode_array::<32>(h.as_ref()).ok_or(NotifyError::BadHex {
                    field: "merkle_branch",
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Notify {
            job_id: JobId::new(job_id)?,
            prevhash: PrevHash::from_wire_bytes(
                decode_array::<32>(prevhash).ok_or(NotifyError::BadHex { field: "prevhash" })?,
            ),
            coinb1: hex::decode(coinb1).map_err(|_| NotifyError::BadHex { field: "coinb1" })?,
            coinb2: hex::decode(coinb2).map_err(|_| NotifyError::BadHex { field: "coinb2" })?,
            merkle_branch: branch,
            version: decode_u32_hex(version).ok_or(NotifyError::BadHex { field: "version" })?,
            nbits: decode_u32_hex(nbits).ok_or(NotifyError::BadHex { field: "nbits" })?,
            ntime: decode_u32_hex(ntime).ok_or(NotifyError::BadHex { field: "ntime" })?,
            clean_jobs,
        })
    }
}

/// Decodes exactly 8 hex digits (either case) as a big-endian u32, the wire form of version,
/// nbits, ntime and nonce. Shorter or padded spellings are refused, so one value has one spelling.
pub fn decode_u32_hex(hex_str: &str) -> Option<u32> {
    decode_array::<4>(hex_str).map(u32::from_be_bytes)
}

/// Decodes exactly `N` bytes of hex.
pub(crate) fn decode_array<const N: usize>(hex_str: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

impl Share {
    /// Decodes the hex fields of a `mining.submit`. A field that does not decode makes the share
    /// invalid (error 20) with the field named.
    pub fn from_hex(
        job_id: &str,
        extranonce2: &str,
        ntime: &str,
        nonce: &str,
        version_bits: Option<&str>,
    ) -> Result<Self, crate::work::InvalidShare> {
        use crate::work::InvalidShare::BadHex;
        Ok(Share {
            job_id: JobId::new(job_id).map_err(|_| BadHex { field: "job_id" })?,
            extranonce2: Extranonce2::from_hex(extranonce2).map_err(|_| BadHex {
                field: "extranonce2",
            })?,
            ntime: decode_u32_hex(ntime).ok_or(BadHex { field: "ntime" })?,
            nonce: decode_u32_hex(nonce).ok_or(BadHex { field: "nonce" })?,
            version_bits: version_bits
                .map(|bits| {
                    decode_u32_hex(bits).ok_or(BadHex {
                        field: "version_bits",
                    })
                })
                .transpose()?,
        })
    }
}

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

/// The fields of a `mining.submit` that go into the hash, decoded from hex once.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Share {
    /// The job the miner worked on.
    pub job_id: JobId,
    /// The miner's extranonce2 (size checked by the verifier against what the miner was given).
    pub extranonce2: Extranonce2,
    /// Header timestamp.
    pub ntime: u32,
    /// Header nonce.
    pub nonce: u32,
    /// Rolled version bits (BIP310), when the miner sends them.
    pub version_bits: Option<u32>,
}

/// Remembers accepted shares per job so a resubmission is answered "duplicate" (error 22).
///
/// The key is the share's SHA-256d hash: two submits with the same job, extranonce1, extranonce2,
/// ntime, nonce and version give the same hash, however their hex was spelled (case flips and
/// padding tricks were used against string-keyed duplicate checks: MiningCore#710), and different
/// submits give different hashes short of a SHA-256 collision. Memory is bounded by the jobs'
/// lifetime: a job's set is dropped when the job goes stale.
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
        set.insert(*hash)
    }

    /// Whether the share was recorded.
    pub fn contains(&self, job_seq: u64, hash: &[u8; 32]) -> bool {
        self.jobs
            .iter()
            .any(|(seq, set)| *seq == job_seq && set.contains(hash))
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

/// The accepted share hashes of one job.
type ShareHashes = HashSet<[u8; 32], BuildHasherDefault<HashPrefixHasher>>;

/// Hashes a SHA-256d output by taking 8 of its bytes: the input is already uniformly random, so
/// running SipHash over it again would only cost time. The low-order bytes are used because
/// shares meeting a target have their high-order bytes zero.
#[derive(Default)]
struct HashPrefixHasher(u64);

impl Hasher for HashPrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as a length prefix then its bytes: both are folded in, and the
        // constant prefix changes nothing about the spread.
        let mut word = [0u8; 8];
        let take = bytes.len().min(8);
        word[..take].copy_from_slice(&bytes[..take]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn prevhash_word_swap_matches_the_mainnet_vector() {
        // From ../shared/testdata: the notify prevhash and the same bytes in the real header.
        let wire: [u8; 32] =
            hex::decode("19213b5f01c49d5227f4f03fd7be57a4b8b5e7060009c3de0000000000000000")
                .unwrap()
                .try_into()
                .unwrap();
        let prevhash = PrevHash::from_wire_bytes(wire);
        assert_eq!(
            hex::encode(prevhash.header_bytes()),
            "5f3b2119529dc4013ff0f427a457bed706e7b5b8dec309000000000000000000"
        );
        // The previous block's hash in the usual display order (the whole 32 bytes reversed).
        assert_eq!(
            prevhash.to_block_hash().to_string(),
            "00000000000000000009c3deb8b5e706d7be57a427f4f03f01c49d5219213b5f"
        );
        assert_eq!(
            PrevHash::from_block_hash(prevhash.to_block_hash()),
            prevhash
        );
    }

    #[test]
    fn job_ids_are_bounded_opaque_strings() {
        assert_eq!(JobId::new("6a3b").unwrap().as_str(), "6a3b");
        assert_eq!(JobId::new(""), Err(JobIdError::Empty));
        assert!(JobId::new(&"a".repeat(MAX_JOB_ID_LEN + 1)).is_err());
        assert_ne!(JobId::new("0a").unwrap(), JobId::new("0A").unwrap());
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
        assert!(filter.contains(1, &hash));
        filter.retire_jobs_before(2);
        assert!(!filter.contains(1, &hash));
        assert_eq!(filter.len(), 1);
    }
}
