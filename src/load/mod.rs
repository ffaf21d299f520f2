//! The load tool behind `hashgate load`: a swarm of real Stratum V1 miners against any endpoint
//! (hashgate, another proxy, a pool), an embedded verifying pool that sends jobs at a set
//! interval so one clock measures everything, and the floor: the raw write loop that bounds any
//! fan-out from one core. Figures: connect and handshake time, submit round trip, job fan-out
//! from the pool's send to the kernel's receive stamp at each miner, shares per second, errors
//! by kind, and the measured process's memory, CPU and open files from `/proc`.
//!
//! A swarm larger than one process's open files is spread over child processes (`slices.rs`)
//! that the parent tells each job's send instant, so one clock still measures it all.
//!
//! It is a harness, like `sim`: nothing of the proxy imports it.

pub mod floor;
pub mod procstat;
pub mod report;
pub mod run;
pub mod slices;
pub mod stats;
pub mod swarm;
pub mod timestamp;

pub use floor::{FloorPlan, FloorReport, run_floor};
pub use report::LoadReport;
pub use run::{LoadPlan, run_load};
pub use slices::run_slice;
