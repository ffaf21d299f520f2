//! `[difficulty]`: the share difficulty miners start at and the bounds vardiff keeps them in.

use std::time::Duration;

use serde::Deserialize;

use super::defaults;
use super::error::{ConfigError, invalid};
use crate::protocol::Difficulty;

/// `[difficulty]`: per-miner share difficulty and vardiff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifficultyConfig {
    /// Difficulty a miner starts at (unless it suggests one).
    #[serde(default = "defaults::initial_difficulty")]
    pub initial: f64,
    /// Lowest difficulty vardiff or a suggestion may set.
    #[serde(default = "defaults::min_difficulty")]
    pub min: f64,
    /// Highest difficulty (and never above the pool's).
    #[serde(default = "defaults::max_difficulty")]
    pub max: f64,
    /// The share interval vardiff aims at.
    #[serde(default = "defaults::target_share_interval", with = "humantime_serde")]
    pub target_share_interval: Duration,
    /// Shortest time between two retargets of one miner.
    #[serde(default = "defaults::retarget_interval", with = "humantime_serde")]
    pub retarget_interval: Duration,
}

impl Default for DifficultyConfig {
    fn default() -> Self {
        Self {
            initial: defaults::initial_difficulty(),
            min: defaults::min_difficulty(),
            max: defaults::max_difficulty(),
            target_share_interval: defaults::target_share_interval(),
            retarget_interval: defaults::retarget_interval(),
        }
    }
}

/// `[difficulty]` as the sessions use it: every number a [`Difficulty`], checked once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DifficultyPolicy {
    /// Where a miner starts (unless it suggests one).
    pub initial: Difficulty,
    /// Lowest vardiff or a suggestion may set.
    pub min: Difficulty,
    /// Highest (and never above the pool's).
    pub max: Difficulty,
    /// The share interval vardiff aims at.
    pub target_share_interval: Duration,
    /// Shortest time between two retargets of one miner.
    pub retarget_interval: Duration,
}

impl DifficultyConfig {
    /// The typed policy: every difficulty usable, `min <= initial <= max`, a share interval
    /// above zero; the first problem names its key.
    pub fn policy(&self) -> Result<DifficultyPolicy, ConfigError> {
        let d = self;
        let checked =
            |key: &str, value: f64| Difficulty::new(value).map_err(|e| invalid(key, e.to_string()));
        let initial = checked("difficulty.initial", d.initial)?;
        let min = checked("difficulty.min", d.min)?;
        let max = checked("difficulty.max", d.max)?;
        if d.min > d.max {
            return Err(invalid(
                "difficulty.min",
                format!("{} is above difficulty.max {}", d.min, d.max),
            ));
        }
        if d.initial < d.min || d.initial > d.max {
            return Err(invalid(
                "difficulty.initial",
                format!("{} is outside [{}, {}]", d.initial, d.min, d.max),
            ));
        }
        if d.target_share_interval.is_zero() {
            return Err(invalid(
                "difficulty.target_share_interval",
                "must be above zero".into(),
            ));
        }
        Ok(DifficultyPolicy {
            initial,
            min,
            max,
            target_share_interval: d.target_share_interval,
            retarget_interval: d.retarget_interval,
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.policy().map(|_| ())
    }
}
