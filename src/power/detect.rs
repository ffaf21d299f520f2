//! Finding the driver for a machine: hashgate's own ESP-Miner driver where the web API is on a
//! port `asic-rs` cannot use, else `asic-rs` on the standard ports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::asicrs::AsicRsMiner;
use super::driver::{DriverError, ManagementAddress, MinerDriver, RPC_PORT, WEB_PORT};
use super::espminer::EspMiner;
use crate::config::Credentials;

/// Detects the firmware at `address` within `timeout` (per attempt); `credentials` go to the
/// makes whose API takes them (ESP-Miner and LuxOS take none).
pub async fn detect(
    address: ManagementAddress,
    credentials: Option<&Credentials>,
    timeout: Duration,
) -> Result<Arc<dyn MinerDriver>, DriverError> {
    let bounded = |what| DriverError::Timeout {
        what,
        after: timeout,
    };
    if address.web_port != WEB_PORT {
        let at = SocketAddr::new(address.ip, address.web_port);
        let found = tokio::time::timeout(timeout, EspMiner::detect(at, timeout))
            .await
            .map_err(|_| bounded("detect"))?;
        match found {
            Ok(Some(miner)) => return Ok(Arc::new(miner)),
            Ok(None) => {}
            // Nothing on the web port: the cgminer API may still answer on its own port.
            Err(error) if address.rpc_port != RPC_PORT => return Err(error),
            Err(_) => {}
        }
    }
    if address.rpc_port != RPC_PORT && address.web_port == WEB_PORT {
        return Err(DriverError::Unsupported {
            firmware: format!("the cgminer API on port {}", address.rpc_port),
            what: "be driven (asic-rs 0.8 uses port 4028 only)",
        });
    }
    match AsicRsMiner::detect(address.ip, credentials, timeout).await {
        Some(miner) => Ok(Arc::new(miner)),
        None => Err(DriverError::NotDetected { address }),
    }
}
