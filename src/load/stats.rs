//! What a load run records: latency histograms (microseconds, 3 significant digits) and the
//! figures a report states about them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The longest latency told apart: an hour.
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency distribution being recorded, in microseconds. As JSON it is its (value, count)
/// pairs: how a child process sends its distribution to its parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "Vec<(u64, u64)>", from = "Vec<(u64, u64)>")]
pub struct Latencies(Histogram<u64>);

impl From<Latencies> for Vec<(u64, u64)> {
    fn from(latencies: Latencies) -> Self {
        latencies.to_pairs()
    }
}

impl From<Vec<(u64, u64)>> for Latencies {
    fn from(pairs: Vec<(u64, u64)>) -> Self {
        Latencies::from_pairs(&pairs)
    }
}

impl Default for Latencies {
    fn default() -> Self {
        // 1 us to an hour; longer is recorded as an hour. The bounds are valid constants.
        Latencies(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid bounds"))
    }
}

impl Latencies {
    /// Records one latency of `micros` microseconds.
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    /// Adds another distribution (a child process's) into this one.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    /// The recorded values as (value, count) pairs: how a child sends its distribution.
    pub fn to_pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// A distribution from [`Latencies::to_pairs`].
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Latencies {
        let mut latencies = Latencies::default();
        for &(value, count) in pairs {
            let _ = latencies.0.record_n(value.clamp(1, MAX_MICROS), count);
        }
        latencies
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The figures a report states.
    pub fn summary(&self) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.5)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// A latency distribution as a report states it (milliseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution_and_a_merge() {
        let mut a = Latencies::default();
        for micros in 1..=1000 {
            a.record(micros * 10);
        }
        let s = a.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        let b = Latencies::from_pairs(&a.to_pairs());
        let mut merged = Latencies::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.len(), 2000);
        assert_eq!(merged.summary().p99_ms, s.p99_ms);
    }
}
