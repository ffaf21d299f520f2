//! Share test vectors: a job, what subscribe/configure gave the miner, and one submit, as JSON.
//!
//! The format is the one of `../shared/testdata/stratum_job_mainnet_block.json` (a real mainnet
//! block expressed as a Stratum job). Tests and benches load it, and `hashgate verify-share`
//! checks any such file, so an operator can replay a disputed share against the verifier.

use std::path::Path;

use serde::Deserialize;

use crate::protocol::{BadShareHex, Extranonce1, Notify, NotifyError, Share, decode_u32_hex};

/// A job plus one share, with optional expected results.
#[derive(Debug, Clone, Deserialize)]
pub struct ShareVector {
    /// The nine `mining.notify` parameters by name.
    pub job: VectorJob,
    /// The miner's extranonce1 (hex).
    pub extranonce1: String,
    /// The miner's extranonce2 size.
    pub extranonce2_size: usize,
    /// The negotiated version-rolling mask (hex), if any.
    #[serde(default)]
    pub version_rolling_mask: Option<String>,
    /// The submit fields.
    pub submit: VectorSubmit,
    /// What the share should hash to, if known.
    #[serde(default)]
    pub expected: Option<VectorExpected>,
    /// The block hash in display order, if the share is a real block.
    #[serde(default)]
    pub block_hash: Option<String>,
}

/// `mining.notify` parameters by name, as hex strings in Stratum's conventions.
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)] // the nine notify parameters, documented on `Notify`
pub struct VectorJob {
    pub job_id: String,
    pub prevhash: String,
    pub coinb1: String,
    pub coinb2: String,
    pub merkle_branch: Vec<String>,
    pub version: String,
    pub nbits: String,
    pub ntime: String,
    pub clean_jobs: bool,
}

/// `mining.submit` fields (without worker and job id).
#[derive(Debug, Clone, Deserialize)]
#[allow(missing_docs)] // the submit parameters, documented on `Share`
pub struct VectorSubmit {
    pub extranonce2: String,
    pub ntime: String,
    pub nonce: String,
    #[serde(default)]
    pub version_bits: Option<String>,
}

/// Expected results of the vector.
#[derive(Debug, Clone, Deserialize)]
pub struct VectorExpected {
    /// The 80-byte header, hex.
    pub header_hex: Option<String>,
    /// Coinbase txid, display order.
    pub coinbase_txid: Option<String>,
    /// Merkle root, display order.
    pub merkle_root: Option<String>,
    /// Whether the hash meets the network target.
    pub meets_network_target: Option<bool>,
}

/// Why a vector file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// The file could not be read.
    #[error("cannot read share vector {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("share vector {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The job's fields do not decode.
    #[error("share vector job: {0}")]
    Job(#[from] NotifyError),
    /// The submit's fields do not decode.
    #[error("share vector submit: {0}")]
    Submit(#[from] BadShareHex),
    /// extranonce1 or the mask do not decode.
    #[error("share vector field {field} is not valid hex")]
    BadHex {
        /// The field.
        field: &'static str,
    },
}

impl ShareVector {
    /// Reads and parses a vector file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, VectorError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| VectorError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| VectorError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The job as a decoded notify.
    pub fn notify(&self) -> Result<Notify, VectorError> {
        let job = &self.job;
        Ok(Notify::from_hex(
            &job.job_id,
            &job.prevhash,
            &job.coinb1,
            &job.coinb2,
            &job.merkle_branch,
            &job.version,
            &job.nbits,
            &job.ntime,
            job.clean_jobs,
        )?)
    }

    /// The submit as a decoded share.
    pub fn share(&self) -> Result<Share, VectorError> {
        Ok(Share::from_hex(
            &self.job.job_id,
            &self.submit.extranonce2,
            &self.submit.ntime,
            &self.submit.nonce,
            self.submit.version_bits.as_deref(),
        )?)
    }

    /// The miner's extranonce1.
    pub fn extranonce1(&self) -> Result<Extranonce1, VectorError> {
        Extranonce1::from_hex(&self.extranonce1).map_err(|_| VectorError::BadHex {
            field: "extranonce1",
        })
    }

    /// The negotiated version mask (0 when absent).
    pub fn version_mask(&self) -> Result<u32, VectorError> {
        match &self.version_rolling_mask {
            None => Ok(0),
            Some(mask) => decode_u32_hex(mask).ok_or(VectorError::BadHex {
                field: "version_rolling_mask",
            }),
        }
    }
}
