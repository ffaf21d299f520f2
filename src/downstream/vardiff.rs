//! Variable difficulty: keep each miner near one share per `target_share_interval`.
//!
//! The estimator counts *work*, not shares: the sum of the difficulties of accepted shares over a
//! sliding window of the miner's recent shares (at most [`WINDOW_SHARES`] shares and
//! [`WINDOW_SPAN`] of time). Work stays meaningful across difficulty changes, so the estimate does
//! not restart at every retarget, and a window of dozens of shares keeps the noise of a Poisson
//! process (1/sqrt(n)) well inside the +-30% a farm expects. Retargets happen at most every
//! `retarget_interval`, move at most 4x either way, and are skipped within a 20% dead band.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::Difficulty;

/// Shares kept in the estimation window.
pub const WINDOW_SHARES: usize = 64;
/// Longest time kept in the estimation window.
pub const WINDOW_SPAN: Duration = Duration::from_secs(600);
/// Largest factor of one retarget.
pub const MAX_STEP: f64 = 4.0;
/// Relative change below which a retarget is skipped.
pub const DEAD_BAND: f64 = 0.2;

/// One miner's vardiff state.
#[derive(Debug, Clone)]
pub struct Vardiff {
    target_interval: f64,
    retarget_interval: Duration,
    /// (time, difficulty) of accepted shares, oldest first.
    shares: VecDeque<(Instant, f64)>,
    /// The window covers work done after this instant.
    window_start: Instant,
    last_retarget: Instant,
}

impl Vardiff {
    /// A fresh estimator starting at `now`.
    pub fn new(target_interval: Duration, retarget_interval: Duration, now: Instant) -> Self {
        Self {
            target_interval: target_interval.as_secs_f64().max(1e-3),
            retarget_interval,
            shares: VecDeque::new(),
            window_start: now,
            last_retarget: now,
        }
    }

    /// Records an accepted share of difficulty `difficulty`.
    pub fn record(&mut self, now: Instant, difficulty: f64) {
        if self.shares.len() == WINDOW_SHARES
            && let Some((time, _)) = self.shares.pop_front()
        {
            self.window_start = time;
        }
        self.shares.push_back((now, difficulty));
    }

    /// Estimated hashes per second over the window.
    pub fn hashrate(&self, now: Instant) -> f64 {
        let span = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        let work: f64 = self.shares.iter().map(|(_, d)| d).sum();
        work * 4_294_967_296.0 / span
    }

    /// The difficulty to switch to, if a retarget is due and worth it. `floor` and `ceiling`
    /// bound the result (the ceiling is the pool's difficulty or the configured maximum).
    pub fn retarget(
        &mut self,
        now: Instant,
        current: Difficulty,
        floor: Difficulty,
        ceiling: Difficulty,
    ) -> Option<Difficulty> {
        if now.saturating_duration_since(self.last_retarget) < self.retarget_interval {
            return None;
        }
        self.expire(now);
        let span = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64();
        if span <= 0.0 {
            return None;
        }
        let work: f64 = self.shares.iter().map(|(_, d)| d).sum();
        // With no share at all the miner is slower than one share per `span`: aim as if one had
        // just arrived, which can only lower the difficulty.
        let ideal = if self.shares.is_empty() {
            if span < 2.0 * self.target_interval {
                return None;
            }
            current.get() * self.target_interval / span
        } else {
            work * self.target_interval / span
        };
        let bounded = ideal.clamp(current.get() / MAX_STEP, current.get() * MAX_STEP);
        let bounded = bounded.max(floor.get()).min(ceiling.get());
        self.last_retarget = now;
        if (bounded / current.get() - 1.0).abs() < DEAD_BAND {
            return None;
        }
        Difficulty::new(bounded).ok()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(time, _)) = self.shares.front() {
            if now.saturating_duration_since(time) <= WINDOW_SPAN {
                break;
            }
            self.shares.pop_front();
            self.window_start = time;
        }
        if self.shares.is_empty() && now.saturating_duration_since(self.window_start) > WINDOW_SPAN
        {
            self.window_start = now - WINDOW_SPAN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miner of known hashrate, simulated with exponential share arrivals, settles within
    /// +-30% of the target interval from far too low and far too high starting difficulties.
    #[test]
    fn converges_for_a_known_hashrate() {
        let hashrate = 100e12; // 100 TH/s
        let target = Duration::from_secs(10);
        let ideal = hashrate * 10.0 / 4_294_967_296.0;
        for start in [ideal / 1000.0, ideal * 50.0] {
            let mut rng = fastrand::Rng::with_seed(7);
            let t0 = Instant::now();
            let mut now = t0;
            let mut vardiff = Vardiff::new(target, Duration::from_secs(30), now);
            let mut difficulty = Difficulty::new(start).unwrap();
            let floor = Difficulty::new(1.0).unwrap();
            let ceiling = Difficulty::new(1e15).unwrap();
            let mut intervals = Vec::new();
            // Six simulated hours; step one second at a time.
            for _ in 0..6 * 3600 {
                now += Duration::from_secs(1);
                let expected_shares = hashrate / (difficulty.get() * 4_294_967_296.0);
                // Poisson arrivals within the second.
                let mut remaining = 1.0f64;
                loop {
                    let gap = -(1.0 - rng.f64()).ln() / expected_shares;
                    if gap > remaining {
                        break;
                    }
                    remaining -= gap;
                    let at = now - Duration::from_secs_f64(remaining);
                    vardiff.record(at, difficulty.get());
                }
                if let Some(next) = vardiff.retarget(now, difficulty, floor, ceiling) {
                    difficulty = next;
                }
                if now.duration_since(t0) > Duration::from_secs(3600) {
                    intervals.push(difficulty.get() * 4_294_967_296.0 / hashrate);
                }
            }
            let mean = intervals.iter().sum::<f64>() / intervals.len() as f64;
            assert!(
                (mean / 10.0 - 1.0).abs() < 0.3,
                "start {start}: mean interval {mean}s"
            );
            let worst = intervals
                .iter()
                .map(|i| (i / 10.0 - 1.0).abs())
                .fold(0.0, f64::max);
            assert!(worst < 0.6, "start {start}: worst deviation {worst}");
        }
    }

    #[test]
    fn steps_are_bounded_and_spaced() {
        let now = Instant::now();
        let mut vardiff = Vardiff::new(Duration::from_secs(10), Duration::from_secs(30), now);
        let d = Difficulty::new(1000.0).unwrap();
        let floor = Difficulty::new(1.0).unwrap();
        let ceiling = Difficulty::new(1e9).unwrap();
        for i in 0..60 {
            vardiff.record(now + Duration::from_millis(i * 100), 1000.0);
        }
        assert_eq!(
            vardiff.retarget(now + Duration::from_secs(10), d, floor, ceiling),
            None,
            "not before retarget_interval"
        );
        let next = vardiff
            .retarget(now + Duration::from_secs(30), d, floor, ceiling)
            .unwrap();
        assert_eq!(next.get(), 4000.0, "at most 4x up");
        // never above the ceiling (the pool's difficulty)
        let mut v = Vardiff::new(Duration::from_secs(10), Duration::from_secs(30), now);
        for i in 0..60 {
            v.record(now + Duration::from_millis(i * 100), 1000.0);
        }
        let capped = v
            .retarget(
                now + Duration::from_secs(30),
                d,
                floor,
                Difficulty::new(1500.0).unwrap(),
            )
            .unwrap();
        assert_eq!(capped.get(), 1500.0);
        // a silent miner comes down
        let mut v = Vardiff::new(Duration::from_secs(10), Duration::from_secs(30), now);
        let lower = v
            .retarget(now + Duration::from_secs(60), d, floor, ceiling)
            .unwrap();
        assert!(lower.get() < 1000.0 && lower.get() >= 250.0);
    }
}
