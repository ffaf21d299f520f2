//! What hashgate asks of a machine's management API, whichever firmware answers: its power and
//! hashrate, and sleep and wake. Every call can fail for that one machine only; the caller
//! bounds each call with its own timeout.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Where a machine's management API listens. The address defaults to the miner's Stratum
/// source address; the ports to the firmware's standard ones (a farm that forwards them, or a
/// simulator that cannot bind below 1024, sets others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManagementAddress {
    /// The machine.
    pub ip: IpAddr,
    /// Its web API (ESP-Miner's REST API): 80 by default.
    pub web_port: u16,
    /// Its cgminer-compatible API (LuxOS): 4028 by default.
    pub rpc_port: u16,
}

/// The web API's standard port.
pub const WEB_PORT: u16 = 80;
/// The cgminer API's standard port.
pub const RPC_PORT: u16 = 4028;

impl ManagementAddress {
    /// `ip` on the standard ports.
    pub fn standard(ip: IpAddr) -> ManagementAddress {
        ManagementAddress {
            ip,
            web_port: WEB_PORT,
            rpc_port: RPC_PORT,
        }
    }
}

impl ManagementAddress {
    /// Where the machine that `worker` connected from `source` is managed, by its group's
    /// `[group.management]` (per-worker table, CIDR mapping, ports; else `source` on the
    /// standard ports).
    pub fn of(management: &crate::config::Management, worker: &str, source: IpAddr) -> Self {
        ManagementAddress {
            ip: management.address_of(worker, source),
            web_port: management.web_port.unwrap_or(WEB_PORT),
            rpc_port: management.rpc_port.unwrap_or(RPC_PORT),
        }
    }
}

impl fmt::Display for ManagementAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip)?;
        if self.web_port != WEB_PORT {
            write!(f, " (web :{})", self.web_port)?;
        }
        if self.rpc_port != RPC_PORT {
            write!(f, " (api :{})", self.rpc_port)?;
        }
        Ok(())
    }
}

/// One reading of a machine, as its firmware reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Watts drawn (the firmware's own figure: an estimate on most makes).
    pub watts: f64,
    /// Hashrate the firmware reports, TH/s.
    pub hashrate_ths: Option<f64>,
    /// Whether the firmware says it is paused or asleep (not every make says).
    pub asleep: Option<bool>,
}

/// Why a call to one machine's management API failed. The side is always the machine's
/// firmware; whether a retry can help is [`DriverError::transient`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// Nothing known answers at the address.
    #[error("no supported firmware found at {address}")]
    NotDetected {
        /// Where it looked.
        address: ManagementAddress,
    },
    /// The call did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which call.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The API could not be reached.
    #[error("cannot reach the management API")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The reply was not what the firmware documents (not JSON, a field missing or not a
    /// number).
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The firmware refused the credentials or the client.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The firmware answered with an error.
    #[error("the firmware refused: {0}")]
    Refused(String),
    /// The firmware gave no reading (the library that drives it reports no detail).
    #[error("the firmware gave no {0} reading")]
    NoReading(&'static str),
    /// This make or firmware version cannot do it.
    #[error("{firmware} cannot {what}")]
    Unsupported {
        /// The firmware.
        firmware: String,
        /// What was asked.
        what: &'static str,
    },
}

impl DriverError {
    /// Whether the next attempt may succeed without anyone changing anything.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            DriverError::Timeout { .. }
                | DriverError::Unreachable(_)
                | DriverError::Malformed(_)
                | DriverError::NoReading(_)
        )
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DriverError::NotDetected { .. } => "not_detected",
            DriverError::Timeout { .. } => "timeout",
            DriverError::Unreachable(_) => "unreachable",
            DriverError::Malformed(_) => "malformed",
            DriverError::Unauthorized(_) => "unauthorized",
            DriverError::Refused(_) => "refused",
            DriverError::NoReading(_) => "no_reading",
            DriverError::Unsupported { .. } => "unsupported",
        }
    }
}

/// A future a driver returns (boxed: drivers are used as trait objects).
pub type DriverFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, DriverError>> + Send + 'a>>;

/// One machine's management API.
pub trait MinerDriver: Send + Sync + fmt::Debug {
    /// The firmware as detected (`LuxOS`, `ESP-Miner 2.14.0`).
    fn firmware(&self) -> &str;
    /// Whether it can sleep and wake through this driver.
    fn can_sleep(&self) -> bool;
    /// Its power and hashrate now.
    fn read(&self) -> DriverFuture<'_, Reading>;
    /// Stops hashing and powers the hashboards down.
    fn sleep(&self) -> DriverFuture<'_, ()>;
    /// Powers back up and resumes hashing.
    fn wake(&self) -> DriverFuture<'_, ()>;
}
