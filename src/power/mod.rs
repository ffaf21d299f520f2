//! Power: what each machine draws and whether it sleeps, read and switched through its
//! management API. hashgate knows every miner's address from its Stratum session; the drivers
//! here reach the same machine's firmware.
//!
//! Imports: `config`, `clock`, `metrics`; never `downstream`, `upstream`, `router` or `groups`
//! (the group controller asks, this part answers).

mod asicrs;
mod detect;
mod driver;
mod espminer;
mod meter;
mod poller;

pub use detect::detect;
pub use driver::{
    DriverError, DriverFuture, ManagementAddress, MinerDriver, RPC_PORT, Reading, WEB_PORT,
};
pub use meter::{Meter, MeterBook, MeterPoller, MeterReading, ModbusMeter, decode};
pub use poller::{
    CommandOutcome, MachinePower, Poller, PowerBook, PowerCommand, PowerHandle, Switch, Target,
};
