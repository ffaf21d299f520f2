//! The share handed from a miner's session to a pool connection: verified, answered, and
//! rewritten into the pool's terms (its job id, the full upstream extranonce2).
//!
//! Owned here, by neither side, so `downstream` and `upstream` never import each other: the
//! router hands each slot's sender to its sessions inside the published work.

use std::sync::Arc;

use crate::protocol::{Extranonce1, Extranonce2, JobId, Share};

/// A share on its way to the pool, already verified and already answered to the miner.
#[derive(Debug, Clone)]
pub struct ForwardShare {
    /// The pool's job id.
    pub job_id: JobId,
    /// The pool's extranonce1 the share was made under: a connection whose pool has changed it
    /// since (`mining.set_extranonce`) knows the share is void without asking the pool.
    pub pool_extranonce1: Extranonce1,
    /// Full upstream extranonce2 (miner's prefix ++ miner's extranonce2).
    pub extranonce2: Extranonce2,
    /// Header ntime.
    pub ntime: u32,
    /// Header nonce.
    pub nonce: u32,
    /// Rolled version bits, if any.
    pub version_bits: Option<u32>,
    /// The miner that found it (for the log).
    pub worker: Arc<str>,
    /// Whether it met the network target.
    pub is_block: bool,
}

impl ForwardShare {
    /// The share's hashed fields, as they go into the pool's `mining.submit`.
    pub fn to_share(&self) -> Share {
        Share {
            job_id: self.job_id.clone(),
            extranonce2: self.extranonce2,
            ntime: self.ntime,
            nonce: self.nonce,
            version_bits: self.version_bits,
        }
    }
}
