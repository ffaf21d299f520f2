//! The share difficulty as Stratum sends it (`mining.set_difficulty`, `suggest_difficulty`,
//! `minimum-difficulty`): a number with an invariant. Its target math (diff1 / d, exact in 256-bit
//! integers) is work's (`work::target`), where the hot path uses it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Stratum share difficulty: finite and strictly positive; fractional values are legal.
///
/// Keeping the invariant in the type means the target math below never sees NaN, infinity, zero
/// or a negative number coming from a miner's `suggest_difficulty` or a pool's `set_difficulty`.
#[derive(Clone, Copy, PartialEq, PartialOrd, Serialize)]
#[serde(transparent)]
pub struct Difficulty(f64);

/// Why a number is not a usable difficulty.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DifficultyError {
    /// NaN or infinite.
    #[error("difficulty {0} is not a finite number")]
    NotFinite(f64),
    /// Zero or negative.
    #[error("difficulty {0} must be greater than zero")]
    NotPositive(f64),
}

impl Difficulty {
    /// Difficulty 1 (target `0x00000000FFFF0000...`).
    pub const ONE: Difficulty = Difficulty(1.0);

    /// Checks the invariant: finite and > 0.
    pub fn new(value: f64) -> Result<Self, DifficultyError> {
        if !value.is_finite() {
            Err(DifficultyError::NotFinite(value))
        } else if value <= 0.0 {
            Err(DifficultyError::NotPositive(value))
        } else {
            Ok(Difficulty(value))
        }
    }

    /// The plain number.
    #[inline]
    pub fn get(self) -> f64 {
        self.0
    }

    /// The smaller of two difficulties.
    pub fn min(self, other: Difficulty) -> Difficulty {
        if other.0 < self.0 { other } else { self }
    }

    /// The larger of two difficulties.
    pub fn max(self, other: Difficulty) -> Difficulty {
        if other.0 > self.0 { other } else { self }
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Difficulty({})", self.0)
    }
}

impl TryFrom<f64> for Difficulty {
    type Error = DifficultyError;
    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Difficulty::new(value)
    }
}

impl<'de> Deserialize<'de> for Difficulty {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Difficulty::new(value).map_err(serde::de::Error::custom)
    }
}
