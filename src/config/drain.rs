//! `[drain]` and `[capacity]`: how drains are witnessed and resumes ramp, how capacity requests
//! are planned, and the modes a group can be drained in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::error::{ConfigError, invalid};

/// How a group stops mining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainMode {
    /// Keep connections, send no new work (shares on work already given still count).
    Pause,
    /// Close the group's connections and refuse them until resumed.
    Disconnect,
    /// Send the group's miners elsewhere with `client.reconnect`.
    Reconnect,
}

impl DrainMode {
    /// The name in the API and events.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainMode::Pause => "pause",
            DrainMode::Disconnect => "disconnect",
            DrainMode::Reconnect => "reconnect",
        }
    }
}

/// `[drain]`: the defaults a group's drain and resume use unless the group overrides them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// A draining group is called drained after this even if miners still hash through it (the
    /// event then lists them).
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Shortest silence that counts a miner as quiet, however fast it submitted before.
    #[serde(default = "defaults::quiet_min", with = "humantime_serde")]
    pub quiet_min: Duration,
    /// A miner is quiet after this many of its expected share intervals without a submit (6: a
    /// miner still hashing looks quiet with probability e^-6, 0.25%).
    #[serde(default = "defaults::quiet_shares")]
    pub quiet_shares: f64,
    /// Miners given work again per second while a group resumes.
    #[serde(default = "defaults::ramp_workers_per_second")]
    pub ramp_workers_per_second: f64,
    /// Watts brought back per second while a group resumes (with the group's watts per worker;
    /// the slower of the two ramps wins).
    #[serde(default)]
    pub ramp_watts_per_second: Option<f64>,
    /// A resuming group is called active after this even if some of its miners did not come back.
    #[serde(default = "defaults::ramp_timeout", with = "humantime_serde")]
    pub ramp_timeout: Duration,
    /// A required `drained` or `active` hook that failed is tried again after this.
    #[serde(default = "defaults::hook_retry", with = "humantime_serde")]
    pub hook_retry: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::drain_timeout(),
            quiet_min: defaults::quiet_min(),
            quiet_shares: defaults::quiet_shares(),
            ramp_workers_per_second: defaults::ramp_workers_per_second(),
            ramp_watts_per_second: None,
            ramp_timeout: defaults::ramp_timeout(),
            hook_retry: defaults::hook_retry(),
        }
    }
}

impl DrainConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let d = self;
        for (key, value) in [
            ("drain.timeout", d.timeout),
            ("drain.quiet_min", d.quiet_min),
            ("drain.ramp_timeout", d.ramp_timeout),
            ("drain.hook_retry", d.hook_retry),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero".into()));
            }
        }
        for (key, value) in [
            ("drain.quiet_shares", Some(d.quiet_shares)),
            (
                "drain.ramp_workers_per_second",
                Some(d.ramp_workers_per_second),
            ),
            ("drain.ramp_watts_per_second", d.ramp_watts_per_second),
        ] {
            if let Some(value) = value
                && (!value.is_finite() || value <= 0.0)
            {
                return Err(invalid(key, format!("{value} must be above zero")));
            }
        }
        Ok(())
    }
}

/// `[capacity]`: planning capacity requests from an AI scheduler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// Accepted shortfall of a plan, as a fraction of the watts asked for.
    #[serde(default = "defaults::tolerance")]
    pub tolerance: f64,
    /// A group's efficiency is measured over this much of its share history (its declared
    /// `efficiency_j_per_th` is used until a twelfth of it has been seen).
    #[serde(default = "defaults::efficiency_window", with = "humantime_serde")]
    pub efficiency_window: Duration,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            tolerance: defaults::tolerance(),
            efficiency_window: defaults::efficiency_window(),
        }
    }
}

impl CapacityConfig {
    /// A tolerance that is a fraction, a window above zero.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        if !(0.0..1.0).contains(&c.tolerance) {
            return Err(invalid(
                "capacity.tolerance",
                format!("{} is not a fraction in [0, 1)", c.tolerance),
            ));
        }
        if c.efficiency_window.is_zero() {
            return Err(invalid(
                "capacity.efficiency_window",
                "must be above zero".into(),
            ));
        }
        Ok(())
    }
}
