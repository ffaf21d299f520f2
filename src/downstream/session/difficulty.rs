//! One miner's share difficulty: where it should be, what it was last sent, and the bounds that
//! the config, the miner's `minimum-difficulty` and the pool set.

use std::time::Instant;

use crate::config::DifficultyPolicy;
use crate::downstream::vardiff::Vardiff;
use crate::protocol::Difficulty;

/// The difficulty state of one miner. Pure: the session asks it what to send.
pub(super) struct MinerDifficulty {
    /// The difficulty the miner should be at (applied from its next job).
    target: Difficulty,
    /// `minimum-difficulty` from `mining.configure`, if asked for.
    floor: Option<Difficulty>,
    /// The last `mining.set_difficulty` sent (none since the last extranonce change).
    sent: Option<Difficulty>,
    /// `[difficulty]`, checked at load.
    policy: DifficultyPolicy,
    vardiff: Vardiff,
}

impl MinerDifficulty {
    pub fn new(policy: DifficultyPolicy, now: Instant) -> Self {
        Self {
            target: policy.initial,
            floor: None,
            sent: None,
            vardiff: Vardiff::new(policy.target_share_interval, policy.retarget_interval, now),
            policy,
        }
    }

    /// [floor, ceiling] for this miner under a pool at `pool`: `difficulty.min` raised by its
    /// `minimum-difficulty`, `difficulty.max` lowered to the pool's; the ceiling wins when they
    /// cross (the pool credits each share at its own difficulty).
    pub fn bounds(&self, pool: Difficulty) -> (Difficulty, Difficulty) {
        let ceiling = self.policy.max.min(pool);
        let mut floor = self.policy.min;
        if let Some(requested) = self.floor {
            floor = floor.max(requested);
        }
        (floor.min(ceiling), ceiling)
    }

    /// The difficulty in force for new work under a pool at `pool`.
    pub fn effective(&self, pool: Difficulty) -> Difficulty {
        let (floor, ceiling) = self.bounds(pool);
        self.target.max(floor).min(ceiling)
    }

    /// The miner's `minimum-difficulty`.
    pub fn set_floor(&mut self, floor: Option<Difficulty>) {
        self.floor = floor;
    }

    /// A `suggest_difficulty` before work started: the starting point, within the config's
    /// bounds. (After that vardiff decides; the session does not call this.)
    pub fn suggest(&mut self, suggested: Difficulty) {
        self.target = suggested.max(self.policy.min).min(self.policy.max);
    }

    /// The difficulty to announce before the next job, if it differs from the one sent.
    pub fn to_announce(&self, pool: Difficulty) -> Option<Difficulty> {
        let effective = self.effective(pool);
        (self.sent != Some(effective)).then_some(effective)
    }

    /// `mining.set_difficulty` with `difficulty` was sent.
    pub fn announced(&mut self, difficulty: Difficulty) {
        self.sent = Some(difficulty);
    }

    /// A new extranonce: the next job announces its difficulty again.
    pub fn forget_announced(&mut self) {
        self.sent = None;
    }

    /// An accepted share of `difficulty` at `now`, for vardiff.
    pub fn record(&mut self, now: Instant, difficulty: Difficulty) {
        self.vardiff.record(now, difficulty.get());
    }

    /// Runs vardiff; the new target when it changed.
    pub fn retarget(&mut self, now: Instant, pool: Difficulty) -> Option<Difficulty> {
        let (floor, ceiling) = self.bounds(pool);
        let current = self.effective(pool);
        let next = self.vardiff.retarget(now, current, floor, ceiling)?;
        tracing::debug!(from = %current, to = %next, hashrate = self.vardiff.hashrate(now), "vardiff retarget");
        self.target = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn d(value: f64) -> Difficulty {
        Difficulty::new(value).unwrap()
    }

    fn policy() -> DifficultyPolicy {
        DifficultyPolicy {
            initial: d(1024.0),
            min: d(16.0),
            max: d(65536.0),
            target_share_interval: Duration::from_secs(10),
            retarget_interval: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_pool_caps_and_the_miner_floor_raises() {
        let mut miner = MinerDifficulty::new(policy(), Instant::now());
        assert_eq!(miner.effective(d(1e9)), d(1024.0));
        assert_eq!(
            miner.effective(d(512.0)),
            d(512.0),
            "never above the pool's"
        );
        miner.set_floor(Some(d(4096.0)));
        assert_eq!(miner.effective(d(1e9)), d(4096.0));
        // Floor above the pool's difficulty: the pool wins.
        assert_eq!(miner.bounds(d(2048.0)), (d(2048.0), d(2048.0)));
    }

    #[test]
    fn suggestions_stay_in_bounds_and_announce_once() {
        let mut miner = MinerDifficulty::new(policy(), Instant::now());
        miner.suggest(d(1.0));
        assert_eq!(
            miner.effective(d(1e9)),
            d(16.0),
            "clamped to difficulty.min"
        );
        let pool = d(1e9);
        assert_eq!(miner.to_announce(pool), Some(d(16.0)));
        miner.announced(d(16.0));
        assert_eq!(miner.to_announce(pool), None);
        miner.forget_announced();
        assert_eq!(miner.to_announce(pool), Some(d(16.0)));
    }
}
