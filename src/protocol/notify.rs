//! `mining.notify` on the wire: job ids, the word-swapped previous block hash, and the nine
//! notify parameters decoded from hex once.
//!
//! Preparing a job for share checks (midstates, targets) and keeping the live ones is work's job
//! (`work::Job`, `work::JobBook`); this module only decodes and holds what the pool sent.

use std::fmt;
use std::sync::Arc;

use bitcoin::BlockHash;
use bitcoin::hashes::Hash;

use super::hex::{decode_array, decode_u32_hex};

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
    #[inline]
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
    #[inline]
    pub fn wire_bytes(&self) -> &[u8; 32] {
        &self.wire
    }

    /// The bytes as they go into the block header (internal order): each word swapped back.
    #[inline]
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
    /// The pool's timestamp; shares may roll it forward (the verifier bounds how far: `work::MAX_NTIME_ROLL`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
