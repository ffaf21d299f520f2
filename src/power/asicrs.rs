//! Machines on their standard ports, driven through `asic-rs` (the field's maintained crate,
//! used by Block's Proto Fleet): detection by the firmware's own answers, then its power,
//! hashrate, and sleep and wake. hashgate ships and tests the LuxOS and ESP-Miner families
//! (the crate's `luxminer` and `bitaxe` features); the others are a feature away and are not
//! enabled until they are tested against their documented APIs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use asic_rs::MinerFactory;
use asic_rs::core::data::collector::DataField;
use asic_rs::core::data::hashrate::HashRateUnit;
use asic_rs::core::data::operating_state::OperatingState;
use asic_rs::core::traits::entry::FirmwareEntry;
use asic_rs::core::traits::miner::{Miner, MinerAuth};

use super::driver::{DriverError, DriverFuture, MinerDriver, Reading};
use crate::config::Credentials;

/// A machine `asic-rs` identified.
pub struct AsicRsMiner {
    miner: Box<dyn Miner>,
    firmware: String,
}

impl std::fmt::Debug for AsicRsMiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsicRsMiner")
            .field("firmware", &self.firmware)
            .finish_non_exhaustive()
    }
}

/// The firmware families hashgate ships.
fn families() -> Vec<Arc<dyn FirmwareEntry>> {
    vec![
        Arc::new(asic_rs::luxminer::firmware::LuxMinerFirmware::default()),
        Arc::new(asic_rs::bitaxe::firmware::BitaxeFirmware::default()),
    ]
}

impl AsicRsMiner {
    /// The machine at `ip` on its standard ports, if a shipped family answers within `timeout`.
    pub async fn detect(
        ip: IpAddr,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Option<AsicRsMiner> {
        let mut factory = MinerFactory::new()
            .with_firmwares(families())
            .with_identification_timeout(timeout);
        if let Some(credentials) = credentials {
            for family in families() {
                let auth = MinerAuth::new(
                    credentials.username.clone(),
                    credentials.password.expose().to_owned(),
                );
                factory = factory.with_firmware_discovery_auth(family.as_ref(), auth);
            }
        }
        let miner = factory.get_miner(ip).await.ok().flatten()?;
        let info = miner.get_device_info();
        let firmware = format!("{} ({} {})", info.firmware, info.make, info.model);
        Some(AsicRsMiner { miner, firmware })
    }
}

/// A firmware's error for a command it already did (LuxOS answers `curtail` on a sleeping
/// miner with "Miner is already in sleep mode"): the state asked for holds.
fn already(error: &anyhow::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("already in sleep mode") || text.contains("already active")
}

impl MinerDriver for AsicRsMiner {
    fn firmware(&self) -> &str {
        &self.firmware
    }

    fn can_sleep(&self) -> bool {
        self.miner.supports_pause() && self.miner.supports_resume()
    }

    fn read(&self) -> DriverFuture<'_, Reading> {
        Box::pin(async move {
            let mut collector = self.miner.get_collector();
            let data: HashMap<DataField, serde_json::Value> = collector
                .collect(&[
                    DataField::Wattage,
                    DataField::Hashrate,
                    DataField::OperatingState,
                ])
                .await;
            let watts = self
                .miner
                .parse_wattage(&data)
                .map(|p| p.as_watts())
                .ok_or(DriverError::NoReading("power"))?;
            if !watts.is_finite() || watts < 0.0 {
                return Err(DriverError::Malformed(format!("power {watts}")));
            }
            let hashrate_ths = self
                .miner
                .parse_hashrate(&data)
                .map(|h| h.as_unit(HashRateUnit::TeraHash).value)
                .filter(|h| h.is_finite());
            let asleep = self
                .miner
                .parse_operating_state(&data)
                .map(|state| matches!(state, OperatingState::Paused {}));
            Ok(Reading {
                watts,
                hashrate_ths,
                asleep,
            })
        })
    }

    fn sleep(&self) -> DriverFuture<'_, ()> {
        Box::pin(async move {
            self.supported(self.miner.supports_pause(), "sleep")?;
            accepted(self.miner.pause(None).await, "pause")
        })
    }

    fn wake(&self) -> DriverFuture<'_, ()> {
        Box::pin(async move {
            self.supported(self.miner.supports_resume(), "wake")?;
            accepted(self.miner.resume(None).await, "resume")
        })
    }
}

impl AsicRsMiner {
    fn supported(&self, supported: bool, what: &'static str) -> Result<(), DriverError> {
        if supported {
            Ok(())
        } else {
            Err(DriverError::Unsupported {
                firmware: self.firmware.clone(),
                what,
            })
        }
    }
}

/// A pause or resume's answer: accepted, or already in the state asked for.
fn accepted(answer: anyhow::Result<bool>, what: &str) -> Result<(), DriverError> {
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(DriverError::Refused(format!("{what} not accepted"))),
        Err(error) if already(&error) => Ok(()),
        Err(error) => Err(DriverError::Refused(format!("{error:#}"))),
    }
}
