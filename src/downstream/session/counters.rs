//! Metric handles of one miner, resolved once per group (and per worker when per-worker series
//! are on), so a share costs counter increments, not label lookups.

use prometheus::{Counter, IntCounter, IntGauge};

use crate::metrics::Metrics;
use crate::work::Reject;

/// Counter handles of the miner's group.
pub(super) struct GroupCounters {
    pub accepted: IntCounter,
    stale: IntCounter,
    duplicate: IntCounter,
    low_difficulty: IntCounter,
    pub invalid: IntCounter,
    pub unauthorized: IntCounter,
    pub not_subscribed: IntCounter,
    pub accepted_difficulty: Counter,
    pub workers: IntGauge,
    pub refused: IntCounter,
}

impl GroupCounters {
    pub fn new(metrics: &Metrics, group: &str) -> Self {
        let shares = |result: &str| metrics.miners.shares.with_label_values(&[group, result]);
        Self {
            accepted: shares("accepted"),
            stale: shares("stale"),
            duplicate: shares("duplicate"),
            low_difficulty: shares("low_difficulty"),
            invalid: shares("invalid"),
            unauthorized: shares("unauthorized"),
            not_subscribed: shares("not_subscribed"),
            accepted_difficulty: metrics
                .miners
                .accepted_difficulty
                .with_label_values(&[group]),
            workers: metrics.miners.workers_connected.with_label_values(&[group]),
            refused: metrics.groups.refused_miners.with_label_values(&[group]),
        }
    }

    /// The counter of a rejection.
    pub fn rejected(&self, reject: &Reject) -> &IntCounter {
        match reject {
            Reject::Stale => &self.stale,
            Reject::Duplicate => &self.duplicate,
            Reject::LowDifficulty => &self.low_difficulty,
            Reject::Unauthorized => &self.unauthorized,
            Reject::NotSubscribed => &self.not_subscribed,
            _ => &self.invalid,
        }
    }
}

/// Per-worker metric handles (opt-in: bounded label cardinality is the default).
pub(super) struct WorkerMetrics {
    pub accepted: IntCounter,
    pub rejected: IntCounter,
    pub accepted_difficulty: Counter,
}

impl WorkerMetrics {
    pub fn new(metrics: &Metrics, worker: &str) -> Self {
        Self {
            accepted: metrics
                .miners
                .worker_shares
                .with_label_values(&[worker, "accepted"]),
            rejected: metrics
                .miners
                .worker_shares
                .with_label_values(&[worker, "rejected"]),
            accepted_difficulty: metrics
                .miners
                .worker_accepted_difficulty
                .with_label_values(&[worker]),
        }
    }
}
