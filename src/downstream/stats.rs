//! What the API shows about one miner, kept by its session.
//!
//! Each session owns one [`WorkerStats`] behind its own mutex: only that session writes it (a
//! few field updates per share, uncontended), and the API copies it when asked. There is no
//! global lock on the share path; per-worker detail lives here instead of in metric labels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Accepted work per second, smoothed over a time constant (an exponentially decaying sum).
/// Early on the sum is corrected for the time it has been counting, so a miner connected for
/// ten seconds does not look six times slower on the one-minute figure.
#[derive(Debug, Clone, Copy)]
pub struct RateEstimator {
    tau: f64,
    rate: f64,
    last: Option<Instant>,
    started: Instant,
}

impl RateEstimator {
    /// An estimator with time constant `tau_seconds`.
    pub fn new(tau_seconds: f64) -> Self {
        Self::starting_at(tau_seconds, Instant::now())
    }

    /// An estimator counting from `started`.
    pub fn starting_at(tau_seconds: f64, started: Instant) -> Self {
        Self {
            tau: tau_seconds.max(1e-3),
            rate: 0.0,
            last: None,
            started,
        }
    }

    /// Adds `amount` of work done at `now`.
    pub fn add(&mut self, now: Instant, amount: f64) {
        self.rate = self.decayed(now) + amount / self.tau;
        self.last = Some(now);
    }

    /// The rate at `now` (work per second).
    pub fn at(&self, now: Instant) -> f64 {
        let counted = now.saturating_duration_since(self.started).as_secs_f64();
        let coverage = 1.0 - (-counted / self.tau).exp();
        if coverage <= 1e-9 {
            return 0.0;
        }
        self.decayed(now) / coverage
    }

    fn decayed(&self, now: Instant) -> f64 {
        match self.last {
            Some(last) => {
                let dt = now.saturating_duration_since(last).as_secs_f64();
                self.rate * (-dt / self.tau).exp()
            }
            None => 0.0,
        }
    }
}

/// A miner as the API sees it.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// The first authorized worker name (shared: the group controller lists a draining
    /// group's miners five times a second).
    pub name: Option<Arc<str>>,
    /// The miner's group.
    pub group: Arc<str>,
    /// The miner's address.
    pub remote: SocketAddr,
    /// The miner software, from subscribe.
    pub user_agent: Option<String>,
    /// Current share difficulty.
    pub difficulty: f64,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares (any reason).
    pub rejected: u64,
    /// The serving upstream.
    pub upstream: Option<Arc<str>>,
    /// When the connection was accepted (unix seconds).
    pub connected_since: u64,
    /// When the last accepted share arrived (unix seconds).
    pub last_share: Option<u64>,
    /// When the miner last submitted anything, accepted or not (unix milliseconds): a miner told
    /// to stop is still hashing as long as it submits.
    pub last_submit_unix_ms: Option<u64>,
    /// Whether the miner is held without new work (its group is paused, or waits for the resume
    /// ramp).
    pub paused: bool,
    /// The ramp ticket it took when it joined its group (see `Gate::Ramp`).
    pub ramp_ticket: u64,
    hashrate_1m: RateEstimator,
    hashrate_15m: RateEstimator,
}

impl WorkerStats {
    /// A fresh miner.
    pub fn new(remote: SocketAddr, group: Arc<str>) -> Self {
        Self {
            name: None,
            group,
            remote,
            user_agent: None,
            difficulty: 0.0,
            accepted: 0,
            rejected: 0,
            upstream: None,
            connected_since: unix_now(),
            last_share: None,
            last_submit_unix_ms: None,
            paused: false,
            ramp_ticket: 0,
            hashrate_1m: RateEstimator::new(60.0),
            hashrate_15m: RateEstimator::new(900.0),
        }
    }

    /// Records an accepted share of `difficulty`.
    pub fn accepted(&mut self, difficulty: f64) {
        let now = Instant::now();
        self.accepted += 1;
        self.last_share = Some(unix_now());
        self.submitted();
        self.hashrate_1m.add(now, difficulty);
        self.hashrate_15m.add(now, difficulty);
    }

    /// Records a rejected share.
    pub fn rejected(&mut self) {
        self.rejected += 1;
        self.submitted();
    }

    fn submitted(&mut self) {
        self.last_submit_unix_ms = Some(crate::clock::unix_ms());
    }

    /// Hashes per second over about 15 minutes (what a drain's quiet period is derived from: it
    /// does not collapse within a minute of the miner going quiet).
    pub fn hashrate_15m(&self) -> f64 {
        self.hashrate_15m.at(Instant::now()) * 4_294_967_296.0
    }

    /// A copy for the API, with hashrates evaluated now.
    pub fn snapshot(&self, id: u64) -> WorkerSnapshot {
        let now = Instant::now();
        WorkerSnapshot {
            id,
            name: self.name.as_deref().map(str::to_owned),
            group: self.group.to_string(),
            remote: self.remote.to_string(),
            user_agent: self.user_agent.clone(),
            difficulty: self.difficulty,
            hashrate_1m: self.hashrate_1m.at(now) * 4_294_967_296.0,
            hashrate_15m: self.hashrate_15m.at(now) * 4_294_967_296.0,
            accepted: self.accepted,
            rejected: self.rejected,
            last_share: self.last_share,
            connected_since: self.connected_since,
            upstream: self.upstream.as_deref().map(str::to_owned),
            paused: self.paused,
        }
    }
}

/// One worker in `GET /api/v1/workers`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WorkerSnapshot {
    /// Session id.
    pub id: u64,
    /// Authorized worker name (null before authorize).
    pub name: Option<String>,
    /// Group.
    pub group: String,
    /// Remote address.
    pub remote: String,
    /// User agent.
    pub user_agent: Option<String>,
    /// Current difficulty.
    pub difficulty: f64,
    /// Hashes per second over about a minute (from verified shares).
    pub hashrate_1m: f64,
    /// Hashes per second over about 15 minutes.
    pub hashrate_15m: f64,
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares.
    pub rejected: u64,
    /// Last accepted share (unix seconds).
    pub last_share: Option<u64>,
    /// Connected since (unix seconds).
    pub connected_since: u64,
    /// Serving upstream.
    pub upstream: Option<String>,
    /// Held without new work (group paused or waiting for the resume ramp).
    #[serde(default)]
    pub paused: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_estimator_tracks_a_steady_rate() {
        let start = Instant::now();
        let mut estimator = RateEstimator::starting_at(60.0, start);
        // 2 units of work every second for ten minutes: the rate settles at 2/s.
        for i in 0..600 {
            estimator.add(start + Duration::from_secs(i), 2.0);
        }
        let rate = estimator.at(start + Duration::from_secs(600));
        assert!((rate - 2.0).abs() < 0.1, "{rate}");
        // Early figures are not biased low: after 10 s at 2/s the estimate is about 2/s.
        let mut early = RateEstimator::starting_at(60.0, start);
        for i in 1..=10 {
            early.add(start + Duration::from_secs(i), 2.0);
        }
        let rate = early.at(start + Duration::from_secs(10));
        assert!((rate - 2.0).abs() < 0.3, "{rate}");
        // and decays when work stops
        assert!(estimator.at(start + Duration::from_secs(1200)) < 0.01);
    }
}
