//! Work: difficulty and targets, extranonces, jobs, and the share verifier.
//!
//! Everything here is pure and synchronous (no tokio, no I/O), so it can be unit-tested against
//! real mainnet vectors and benchmarked on its own. The proxy uses it like this:
//!
//! 1. an upstream's `mining.notify` is decoded (by [`crate::protocol`]) into a [`Notify`] and pushed into that upstream's
//!    [`JobBook`], which prepares a [`Job`] (coinb1 midstate, header-order prevhash, network
//!    target) once;
//! 2. each miner gets an [`ExtranoncePrefix`] from the upstream's [`ExtranonceAllocator`] and
//!    works with `extranonce1 = upstream ++ prefix`;
//! 3. each `mining.submit` becomes a [`Share`], and [`check_share`] returns a [`Verdict`]:
//!    accepted (forward upstream if it meets the pool's target; a block if it meets the
//!    network's) or a [`Reject`] (the session maps it to a Stratum error code).
//!
//! `work` builds on the wire types of [`crate::protocol`] and imports nothing with sockets.
//!
//! Byte orders are decided once, in the types: [`PrevHash`] knows Stratum's word swap, the header
//! integers are written little-endian by the verifier, hashes compare as little-endian 256-bit
//! integers through [`Threshold`].
//!
//! [`Notify`]: crate::protocol::Notify
//! [`Share`]: crate::protocol::Share
//! [`PrevHash`]: crate::protocol::PrevHash

mod extranonce;
mod forward;
mod job;
pub mod reference;
pub mod sha256;
mod split;
mod target;
mod vector;
mod verify;

pub use extranonce::{AllocatorError, ExtranonceAllocator, ExtranoncePrefix};
pub use forward::ForwardShare;
pub use job::{DEFAULT_JOB_HISTORY, DuplicateFilter, Job, JobBook};
pub use split::{ExtranonceSplit, SplitError};
pub use target::{DIFF1_TARGET, Threshold, network_target};
pub use vector::{ShareVector, VectorError};
pub use verify::{
    Accepted, HeaderMidstate, InvalidShare, MAX_NTIME_ROLL, Reject, ShareContext, ShareHash,
    Verdict, check_share, check_share_for_job, hash_share, share_merkle_root,
};
