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
        if !(1..=4096).contains(&self.concurrency) {
            return Err(invalid(
                "power.concurrency",
                format!("{} must be between 1 and 4096", self.concurrency),
            ));
        }
        Ok(())
    }
}
