//! `[power]`: how machines' firmware is polled for power and told to sleep and wake. A farm of
//! 20,000 machines polled every 30 s is ~670 requests a second: calls are bounded in number and
//! time, spread over the interval, and a machine that keeps failing backs off alone.

use std::time::Duration;

use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// `[power]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerConfig {
    /// How often each machine's firmware is read while its group mines or stays drained.
    #[serde(default = "poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often while its group drains or resumes, so `drained` follows the measured drop
    /// within seconds.
    #[serde(default = "fast_poll_interval", with = "humantime_serde")]
    pub fast_poll_interval: Duration,
    /// Firmware calls in flight at once, over all machines.
    #[serde(default = "concurrency")]
    pub concurrency: usize,
    /// Each firmware call's limit (a hanging API is timed out, never waited on).
    #[serde(default = "request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A machine whose calls keep failing is tried at most this far apart (the wait doubles from
    /// the poll interval).
    #[serde(default = "max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// A draining group is drained once its measured power has stayed at or below its idle
    /// level this long.
    #[serde(default = "settle", with = "humantime_serde")]
    pub settle: Duration,
    /// A machine told to sleep whose power comes back up is told again, at most this often
    /// (drift re-dispatch).
    #[serde(default = "redispatch", with = "humantime_serde")]
    pub redispatch: Duration,
    /// On resume, machines are woken in batches this far apart...
    #[serde(default = "wake_interval", with = "humantime_serde")]
    pub wake_interval: Duration,
    /// ...of this percentage of the group's machines...
    #[serde(default = "wake_batch_percent")]
    pub wake_batch_percent: f64,
    /// ...but at least this many...
    #[serde(default = "wake_batch_min")]
    pub wake_batch_min: usize,
    /// ...and at most this many.
    #[serde(default = "wake_batch_max")]
    pub wake_batch_max: usize,
}

fn settle() -> Duration {
    Duration::from_secs(10)
}

fn redispatch() -> Duration {
    Duration::from_secs(30)
}

fn wake_interval() -> Duration {
    Duration::from_secs(30)
}

fn wake_batch_percent() -> f64 {
    1.0
}

fn wake_batch_min() -> usize {
    10
}

fn wake_batch_max() -> usize {
    100
}

fn poll_interval() -> Duration {
    Duration::from_secs(30)
}

fn fast_poll_interval() -> Duration {
    Duration::from_secs(3)
}

fn concurrency() -> usize {
    64
}

fn request_timeout() -> Duration {
    Duration::from_secs(5)
}

fn max_backoff() -> Duration {
    Duration::from_secs(300)
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            poll_interval: poll_interval(),
            fast_poll_interval: fast_poll_interval(),
            concurrency: concurrency(),
            request_timeout: request_timeout(),
            max_backoff: max_backoff(),
            settle: settle(),
            redispatch: redispatch(),
            wake_interval: wake_interval(),
            wake_batch_percent: wake_batch_percent(),
            wake_batch_min: wake_batch_min(),
            wake_batch_max: wake_batch_max(),
        }
    }
}

impl PowerConfig {
    /// Intervals that can be timed, a bound that lets calls run.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bounded = |key: &str, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                Err(invalid(
                    key,
                    format!("{value:?} must be between {min:?} and {max:?}"),
                ))
            } else {
                Ok(())
            }
        };
        let hour = Duration::from_secs(3600);
        bounded(
            "power.poll_interval",
            self.poll_interval,
            Duration::from_secs(1),
            hour,
        )?;
        bounded(
            "power.fast_poll_interval",
            self.fast_poll_interval,
            Duration::from_millis(200),
            self.poll_interval,
        )?;
        bounded(
            "power.request_timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        bounded(
            "power.max_backoff",
            self.max_backoff,
            self.poll_interval,
            Duration::from_secs(24 * 3600),
        )?;
        bounded("power.settle", self.settle, Duration::ZERO, hour)?;
        bounded(
            "power.redispatch",
            self.redispatch,
            self.fast_poll_interval,
            hour,
        )?;
        bounded(
            "power.wake_interval",
            self.wake_interval,
            Duration::ZERO,
            hour,
        )?;
        if !(self.wake_batch_percent > 0.0 && self.wake_batch_percent <= 100.0) {
            return Err(invalid(
                "power.wake_batch_percent",
                format!(
                    "{} must be above 0 and at most 100",
                    self.wake_batch_percent
                ),
            ));
        }
        if self.wake_batch_min == 0 || self.wake_batch_min > self.wake_batch_max {
            return Err(invalid(
                "power.wake_batch_min",
                format!(
                    "{} must be at least 1 and at most wake_batch_max ({})",
                    self.wake_batch_min, self.wake_batch_max
                ),
            ));
        }
        if !(1..=4096).contains(&self.concurrency) {
            return Err(invalid(
                "power.concurrency",
                format!("{} must be between 1 and 4096", self.concurrency),
            ));
        }
        Ok(())
    }
}

impl PowerConfig {
    /// Machines woken per batch for a group of `machines`: `wake_batch_percent` of them,
    /// clamped to `[wake_batch_min, wake_batch_max]` (Proto Fleet's clamp(1%, 10, 100)).
    pub fn wake_batch(&self, machines: usize) -> usize {
        let share = (machines as f64 * self.wake_batch_percent / 100.0).ceil() as usize;
        share.clamp(self.wake_batch_min, self.wake_batch_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_batches_are_one_percent_between_ten_and_a_hundred() {
        let power = PowerConfig::default();
        assert_eq!(power.wake_batch(3), 10);
        assert_eq!(power.wake_batch(2_000), 20);
        assert_eq!(power.wake_batch(20_000), 100);
        assert_eq!(power.wake_batch(1_050), 11);
    }
}
