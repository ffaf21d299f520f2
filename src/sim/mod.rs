//! Simulated pool and miners: real TCP, real hashes, for `hashgate demo`, tests and benches.
//!
//! Nothing here is on the proxy's hot path; it is the other side of the wire, built to be
//! independent of the proxy's own verifier (the pool grades with the `bitcoin`-crate reference).

mod miner;
mod pool;

pub use miner::{SimMinerConfig, SimMinerError, SimMinerStats, difficulty_for, run_sim_miner};
pub use pool::{SimPool, SimPoolCommand, SimPoolConfig, SimPoolStats};
