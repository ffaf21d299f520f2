//! The share verifier: from a job, a miner's extranonce1 and a submit to one verdict.
//!
//! Order of work, cheapest first: job lookup (stale), field checks (invalid), then the hash:
//! coinbase from coinb1's midstate, merkle root folded over the branch, an 80-byte header on the
//! stack, SHA-256d, then comparisons on limbs against the miner's, the upstream's and the
//! network's target. For the mainnet test job that is 43 SHA-256 compressions (coinbase 3 after
//! the midstate plus 1 for the second hash, branch 12 x 3, header 3) and no heap allocation.
//!
//! Header byte order (the part proxies get wrong): version, ntime, nbits and nonce arrive as
//! big-endian hex and are written little-endian; prevhash is word-swapped on the wire
//! ([`PrevHash`](crate::protocol::PrevHash)); merkle branch hashes are used as their raw bytes.

use std::fmt;

use bitcoin::BlockHash;
use bitcoin::hashes::Hash;

use super::job::{DuplicateFilter, Job, JobBook};
use super::sha256::{self, INITIAL_STATE, Sha256Stream, compress, sha256d_64};
use super::target::Threshold;
use crate::protocol::{BadShareHex, Difficulty, Extranonce1, Share};

/// How far a share's ntime may run ahead of its job's ntime, in seconds. ckpool allows about two
/// hours; without an upper bound a miner can grind ntime into the future (stratum#2299).
pub const MAX_NTIME_ROLL: u32 = 7200;

/// Why a share is malformed (Stratum error 20). Each carries the offending value for the reply and
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidShare {
    /// The miner was told one extranonce2 size and sent another.
    #[error("extranonce2 is {got} bytes, expected {expected}")]
    Extranonce2Size {
        /// Size announced to the miner.
        expected: usize,
        /// Size received.
        got: usize,
    },
    /// Version bits set outside the negotiated BIP310 mask (or any when none was negotiated).
    #[error("version bits {bits:08x} outside the negotiated mask {mask:08x}")]
    VersionBitsOutsideMask {
        /// Bits the miner sent.
        bits: u32,
        /// Mask negotiated with the miner.
        mask: u32,
    },
    /// ntime before the job's or more than [`MAX_NTIME_ROLL`] seconds after it.
    #[error("ntime {ntime:08x} outside the job's range {job_ntime:08x}..+{MAX_NTIME_ROLL}s")]
    NtimeOutOfRange {
        /// ntime the miner sent.
        ntime: u32,
        /// The job's ntime.
        job_ntime: u32,
    },
    /// A hex field did not decode.
    #[error("{field} is not valid hex of the right length")]
    BadHex {
        /// Which submit field.
        field: &'static str,
    },
}

/// A share that is not accepted. Rejections are normal outcomes, not errors: each has one metrics
/// label (see [`Reject::label`]); the session maps each to its conventional Stratum error code
/// (`downstream::reject_code`), since the code is a matter of the wire, not of the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// Job unknown or no longer live (21).
    Stale,
    /// Same share already accepted (22).
    Duplicate,
    /// Hash above the miner's target (23).
    LowDifficulty,
    /// Worker not authorized on this connection (24).
    Unauthorized,
    /// Submit before subscribe (25).
    NotSubscribed,
    /// Malformed share (20).
    Invalid(InvalidShare),
}

impl Reject {
    /// A bounded label for metrics (`hashgate_shares_total{result}`).
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Invalid(_) => "invalid",
            Reject::Stale => "stale",
            Reject::Duplicate => "duplicate",
            Reject::LowDifficulty => "low_difficulty",
            Reject::Unauthorized => "unauthorized",
            Reject::NotSubscribed => "not_subscribed",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::Stale => f.write_str("job not found (stale)"),
            Reject::Duplicate => f.write_str("duplicate share"),
            Reject::LowDifficulty => f.write_str("low difficulty share"),
            Reject::Unauthorized => f.write_str("unauthorized worker"),
            Reject::NotSubscribed => f.write_str("not subscribed"),
            Reject::Invalid(reason) => write!(f, "invalid share: {reason}"),
        }
    }
}

impl From<BadShareHex> for InvalidShare {
    fn from(bad: BadShareHex) -> Self {
        InvalidShare::BadHex { field: bad.field }
    }
}

impl From<InvalidShare> for Reject {
    fn from(reason: InvalidShare) -> Self {
        Reject::Invalid(reason)
    }
}

/// An accepted share and what it is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Sequence number of the job it was for.
    pub job_seq: u64,
    /// SHA-256d of the header, internal byte order.
    pub hash: [u8; 32],
    /// The header version after version rolling (what goes upstream as version bits).
    pub version: u32,
    /// Meets the upstream's target: forward it to the pool.
    pub meets_upstream: bool,
    /// Meets the network target: it is a block.
    pub is_block: bool,
}

impl Accepted {
    /// The hash as a block hash (displays in the usual reversed order).
    pub fn block_hash(&self) -> BlockHash {
        BlockHash::from_byte_array(self.hash)
    }

    /// The difficulty the hash achieved (for best-share reporting, not for crediting).
    pub fn hash_difficulty(&self) -> f64 {
        Difficulty::of_hash(&self.hash)
    }
}

/// The verdict on one submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new.
    Accepted(Accepted),
    /// Not credited; the reason says which error to answer.
    Rejected(Reject),
}

/// What the verifier needs to know about the miner that sent the share: what it was given at
/// subscribe/configure and the targets it is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ShareContext<'a> {
    /// The miner's full extranonce1 (upstream extranonce1 ++ prefix).
    pub extranonce1: &'a Extranonce1,
    /// The extranonce2 size announced to the miner.
    pub extranonce2_size: usize,
    /// The negotiated BIP310 mask (0 when version rolling is off).
    pub version_mask: u32,
    /// The miner's current share target (its difficulty).
    pub share_target: &'a Threshold,
    /// The upstream's target: shares meeting it are forwarded.
    pub upstream_target: &'a Threshold,
}

/// A share's header hash and version, computed by [`hash_share`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareHash {
    /// SHA-256d of the header, internal byte order.
    pub hash: [u8; 32],
    /// The header version after applying the rolled bits.
    pub version: u32,
}

/// Checks a share's fields against the job and computes its header hash.
///
/// This is the whole cryptographic path; the caller adds the job lookup, duplicate tracking and
/// target comparisons ([`check_share`] does all of it).
#[inline]
pub fn hash_share(
    job: &Job,
    extranonce1: &Extranonce1,
    extranonce2_size: usize,
    version_mask: u32,
    share: &Share,
) -> Result<ShareHash, InvalidShare> {
    let notify = job.notify();
    if share.extranonce2.len() != extranonce2_size {
        return Err(InvalidShare::Extranonce2Size {
            expected: extranonce2_size,
            got: share.extranonce2.len(),
        });
    }
    let bits = share.version_bits.unwrap_or(0);
    if bits & !version_mask != 0 {
        return Err(InvalidShare::VersionBitsOutsideMask {
            bits,
            mask: version_mask,
        });
    }
    if share.ntime < notify.ntime || share.ntime - notify.ntime > MAX_NTIME_ROLL {
        return Err(InvalidShare::NtimeOutOfRange {
            ntime: share.ntime,
            job_ntime: notify.ntime,
        });
    }
    let version = (notify.version & !version_mask) | (bits & version_mask);

    let merkle_root = merkle_root(job, extranonce1, share);
    let header = header_bytes(job, &merkle_root, version, share.ntime, share.nonce);
    Ok(ShareHash {
        hash: sha256d_header(&header),
        version,
    })
}

/// The full verdict: stale, invalid, duplicate, low difficulty or accepted (with the upstream and
/// block flags). Records accepted shares in `duplicates`.
pub fn check_share(
    book: &JobBook,
    duplicates: &mut DuplicateFilter,
    context: &ShareContext<'_>,
    share: &Share,
) -> Verdict {
    let Some(job) = book.get(share.job_id.as_str()) else {
        return Verdict::Rejected(Reject::Stale);
    };
    check_share_for_job(job, duplicates, context, share)
}

/// [`check_share`] for a job already looked up (the caller needed it first, e.g. to pick the
/// difficulty that applied when the job was sent).
pub fn check_share_for_job(
    job: &Job,
    duplicates: &mut DuplicateFilter,
    context: &ShareContext<'_>,
    share: &Share,
) -> Verdict {
    let hashed = match hash_share(
        job,
        context.extranonce1,
        context.extranonce2_size,
        context.version_mask,
        share,
    ) {
        Ok(hashed) => hashed,
        Err(reason) => return Verdict::Rejected(Reject::Invalid(reason)),
    };
    if !context.share_target.is_met_by(&hashed.hash) {
        return Verdict::Rejected(Reject::LowDifficulty);
    }
    if !duplicates.insert(job.seq(), &hashed.hash) {
        return Verdict::Rejected(Reject::Duplicate);
    }
    Verdict::Accepted(Accepted {
        job_seq: job.seq(),
        hash: hashed.hash,
        version: hashed.version,
        meets_upstream: context.upstream_target.is_met_by(&hashed.hash),
        is_block: job.network_threshold().is_met_by(&hashed.hash),
    })
}

/// Coinbase txid from coinb1's midstate, folded up the merkle branch.
#[inline(always)]
fn merkle_root(job: &Job, extranonce1: &Extranonce1, share: &Share) -> [u8; 32] {
    let mut coinbase =
        Sha256Stream::from_midstate(job.coinb1_midstate, job.coinb1_hashed_len as u64);
    coinbase.update(job.coinb1_tail());
    coinbase.update(extranonce1.as_bytes());
    coinbase.update(share.extranonce2.as_bytes());
    coinbase.update(&job.notify().coinb2);
    let mut root = sha256::sha256_of_digest(&coinbase.finish());
    let mut pair = [0u8; 64];
    for branch_hash in &job.notify().merkle_branch {
        pair[..32].copy_from_slice(&root);
        pair[32..].copy_from_slice(branch_hash);
        root = sha256d_64(&pair);
    }
    root
}

/// The 80-byte header, every integer little-endian.
#[inline(always)]
fn header_bytes(
    job: &Job,
    merkle_root: &[u8; 32],
    version: u32,
    ntime: u32,
    nonce: u32,
) -> [u8; 80] {
    let mut header = [0u8; 80];
    header[0..4].copy_from_slice(&version.to_le_bytes());
    header[4..36].copy_from_slice(&job.prevhash_header);
    header[36..68].copy_from_slice(merkle_root);
    header[68..72].copy_from_slice(&ntime.to_le_bytes());
    header[72..76].copy_from_slice(&job.notify().nbits.to_le_bytes());
    header[76..80].copy_from_slice(&nonce.to_le_bytes());
    header
}

/// SHA-256d of an 80-byte header: two compressions, then one for the second hash.
#[inline(always)]
fn sha256d_header(header: &[u8; 80]) -> [u8; 32] {
    let mut state = INITIAL_STATE;
    compress(&mut state, header[..64].try_into().expect("80 > 64 bytes"));
    HeaderMidstate {
        state,
        tail: header[64..80].try_into().expect("16 bytes"),
    }
    .finish()
}

/// A header whose first 64 bytes (version, prevhash, 28 bytes of merkle root) are fixed, hashed
/// once: each further nonce or ntime costs two compressions. This is how a miner searches, and how
/// the verifier checks shares whose merkle root is already known.
#[derive(Debug, Clone, Copy)]
pub struct HeaderMidstate {
    state: [u32; 8],
    /// Header bytes 64..80: the last 4 of the merkle root, ntime, nbits, nonce.
    tail: [u8; 16],
}

impl HeaderMidstate {
    /// Hashes the fixed first block of a header.
    pub fn new(
        version: u32,
        prevhash_header: &[u8; 32],
        merkle_root: &[u8; 32],
        nbits: u32,
    ) -> Self {
        let mut first = [0u8; 64];
        first[0..4].copy_from_slice(&version.to_le_bytes());
        first[4..36].copy_from_slice(prevhash_header);
        first[36..64].copy_from_slice(&merkle_root[..28]);
        let mut state = INITIAL_STATE;
        compress(&mut state, &first);
        let mut tail = [0u8; 16];
        tail[0..4].copy_from_slice(&merkle_root[28..32]);
        tail[8..12].copy_from_slice(&nbits.to_le_bytes());
        Self { state, tail }
    }

    /// The midstate for a job's header with a given merkle root and version.
    pub fn for_job(job: &Job, merkle_root: &[u8; 32], version: u32) -> Self {
        Self::new(
            version,
            &job.prevhash_header,
            merkle_root,
            job.notify().nbits,
        )
    }

    /// SHA-256d of the header with this ntime and nonce.
    #[inline(always)]
    pub fn hash(&self, ntime: u32, nonce: u32) -> [u8; 32] {
        let mut with_fields = *self;
        with_fields.tail[4..8].copy_from_slice(&ntime.to_le_bytes());
        with_fields.tail[12..16].copy_from_slice(&nonce.to_le_bytes());
        with_fields.finish()
    }

    #[inline(always)]
    fn finish(&self) -> [u8; 32] {
        let mut block = [0u8; 64];
        block[..16].copy_from_slice(&self.tail);
        block[16] = 0x80;
        block[62] = 0x02; // 640 bits = 0x0280, big-endian
        block[63] = 0x80;
        let mut state = self.state;
        compress(&mut state, &block);
        sha256::sha256_of_digest(&sha256::state_to_digest(&state))
    }
}

/// The merkle root a share builds (coinbase txid folded over the branch), exposed for tools and
/// for the simulated pool, which must agree with the proxy byte for byte.
pub fn share_merkle_root(job: &Job, extranonce1: &Extranonce1, share: &Share) -> [u8; 32] {
    merkle_root(job, extranonce1, share)
}
