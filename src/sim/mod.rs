//! Simulated pool and miners: real TCP, real hashes, for `hashgate demo`, tests and benches;
//! each simulated machine may also have a management API (ESP-Miner's REST API, LuxOS's
//! cgminer API) driving its power, and a rack may have a meter (an SDM630 over Modbus TCP).
//!
//! Nothing here is on the proxy's hot path; it is the other side of the wire, built to be
//! independent of the proxy's own verifier (the pool grades with the `bitcoin`-crate reference).

mod device;
mod espminer;
mod luxos;
mod meter;
mod miner;
mod pool;

pub use device::{DeviceMode, DeviceProfile, Faults, SimDevice};
pub use espminer::SimEspMiner;
pub use luxos::SimLuxos;
pub use meter::{SDM630_TOTAL_POWER, SimMeter};

pub use miner::{
    SimMinerConfig, SimMinerError, SimMinerStats, difficulty_for, extranonce2_of, miner_midstate,
    rolled_bits, run_sim_miner,
};
pub use pool::{SimPool, SimPoolCommand, SimPoolConfig, SimPoolStats, job_sequence};
