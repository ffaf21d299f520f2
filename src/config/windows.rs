//! Maintenance windows: groups drained on a schedule so their power is free at a known time.
//!
//! A window is either one span (`start`/`end`, RFC 3339) or a cron expression plus a `duration`
//! (each firing opens one span). `lead_time` drains early, so the group is already drained when
//! the span starts. While a span is open the window holds a `groups::Claim::Window` on each of
//! its groups; at the span's end it releases the claim and the group resumes (unless something
//! else still holds it). Windows come from `[[window]]` in the config or from the API (those are
//! kept in the state file). This module is the schedule arithmetic; the controller acts on it.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::drain::DrainMode;
use super::error::ConfigError;
use super::groups::DEFAULT_GROUP;

/// A window as configured or posted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// Unique name (generated for API windows posted without one).
    #[serde(default)]
    pub name: String,
    /// The groups it drains.
    pub groups: Vec<String>,
    /// How they stop.
    #[serde(default = "default_mode")]
    pub mode: DrainMode,
    /// Why (shown to miners, hooks, the audit log).
    #[serde(default)]
    pub reason: String,
    /// `host:port` for `reconnect` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_to: Option<String>,
    /// RFC 3339 start of a one-off window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// RFC 3339 end of a one-off window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Cron expression of a recurring window's starts (UTC; 5 fields `min hour dom month dow`,
    /// or 6-7 with seconds and year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// How long each recurring span lasts.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    /// Drain this long before the start, so the power is free at the start.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lead_time: Option<Duration>,
}

fn default_mode() -> DrainMode {
    DrainMode::Pause
}

/// Longest span a window may have (a year: a longer "maintenance" is a decommissioning).
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest lead time.
const MAX_LEAD_TIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest reason (it is shown to miners and put in hooks' environment).
pub const MAX_REASON: usize = 256;

/// A reason fit to show a miner and pass to a hook: at most [`MAX_REASON`] characters, no
/// control characters.
pub fn check_reason(field: &'static str, reason: &str) -> Result<(), WindowError> {
    if reason.chars().count() > MAX_REASON {
        return Err(invalid(
            field,
            format!("longer than {MAX_REASON} characters"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// When a window holds its groups.
#[derive(Debug, Clone)]
enum Schedule {
    Once {
        start_ms: u64,
        end_ms: u64,
    },
    Cron {
        schedule: Box<cron::Schedule>,
        duration_ms: u64,
    },
}

/// A validated window.
#[derive(Debug, Clone)]
pub struct Window {
    /// What was configured or posted.
    pub spec: WindowSpec,
    /// From the config file (not deletable through the API).
    pub from_config: bool,
    schedule: Schedule,
    lead_ms: u64,
}

/// One span of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Unix ms the drain begins (start minus lead time).
    pub drain_at_ms: u64,
    /// Unix ms of the start.
    pub start_ms: u64,
    /// Unix ms of the end.
    pub end_ms: u64,
}

/// Why a window is not acceptable (the message names the field).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WindowError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> WindowError {
    WindowError {
        field,
        message: message.into(),
    }
}

/// Parses an RFC 3339 time into unix milliseconds.
pub fn parse_time(field: &'static str, text: &str) -> Result<u64, WindowError> {
    let time = humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_err(|e| invalid(field, format!("{text:?} is not an RFC 3339 time: {e}")))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| invalid(field, format!("{text:?} is before 1970")))
}

/// Unix ms as RFC 3339 (UTC); times past year 9999 are written as that limit.
pub fn format_time(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms.min(LAST_RFC3339_MS));
    let mut text = String::new();
    // Within the limit humantime cannot fail; an error leaves the text empty, never a panic.
    let _ = std::fmt::write(
        &mut text,
        format_args!("{}", humantime::format_rfc3339_seconds(time)),
    );
    text
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59Z), in unix ms.
const LAST_RFC3339_MS: u64 = 253_402_300_799_000;

impl Window {
    /// Validates a spec; `known_group` says whether a group name exists.
    pub fn new(
        spec: WindowSpec,
        from_config: bool,
        known_group: impl Fn(&str) -> bool,
    ) -> Result<Window, WindowError> {
        if spec.groups.is_empty() {
            return Err(invalid("groups", "name at least one group"));
        }
        check_reason("reason", &spec.reason)?;
        let valid_name = spec.name.len() <= 64
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(invalid(
                "name",
                format!(
                    "{:?}: at most 64 letters, digits, '-', '_' or '.'",
                    spec.name
                ),
            ));
        }
        if spec.lead_time.is_some_and(|lead| lead > MAX_LEAD_TIME) {
            return Err(invalid("lead_time", "at most 30 days"));
        }
        if let Some(unknown) = spec.groups.iter().find(|g| !known_group(g)) {
            return Err(invalid("groups", format!("unknown group {unknown:?}")));
        }
        if spec.mode == DrainMode::Reconnect
            && spec
                .reconnect_to
                .as_deref()
                .and_then(super::upstream::split_host_port)
                .is_none()
        {
            return Err(invalid(
                "reconnect_to",
                "mode reconnect needs \"host:port\"",
            ));
        }
        let schedule = match (&spec.start, &spec.end, &spec.cron, spec.duration) {
            (Some(start), Some(end), None, None) => {
                let start_ms = parse_time("start", start)?;
                let end_ms = parse_time("end", end)?;
                if end_ms <= start_ms {
                    return Err(invalid("end", "must be after start"));
                }
                if end_ms > LAST_RFC3339_MS {
                    return Err(invalid("end", "must be before year 10000"));
                }
                Schedule::Once { start_ms, end_ms }
            }
            (None, None, Some(expression), Some(duration)) => {
                if duration.is_zero() || duration > MAX_DURATION {
                    return Err(invalid("duration", "must be above zero and at most a year"));
                }
                // Operators write 5-field cron; the cron crate wants seconds first.
                let fields = expression.split_whitespace().count();
                let full = if fields == 5 {
                    format!("0 {expression}")
                } else {
                    expression.clone()
                };
                let schedule = cron::Schedule::from_str(&full)
                    .map_err(|e| invalid("cron", format!("{expression:?}: {e}")))?;
                Schedule::Cron {
                    schedule: Box::new(schedule),
                    duration_ms: millis(duration),
                }
            }
            _ => {
                return Err(invalid(
                    "start",
                    "give start and end (RFC 3339), or cron and duration",
                ));
            }
        };
        Ok(Window {
            lead_ms: spec.lead_time.map_or(0, millis),
            spec,
            from_config,
            schedule,
        })
    }

    /// The span whose drain period (`drain_at` to `end`) contains `now_ms`, if any.
    pub fn open_at(&self, now_ms: u64) -> Option<Occurrence> {
        self.first_ending_after(now_ms)
            .filter(|occurrence| occurrence.drain_at_ms <= now_ms)
    }

    /// The span in force or the next one (for the API).
    pub fn current_or_next(&self, now_ms: u64) -> Option<Occurrence> {
        self.first_ending_after(now_ms)
    }

    /// The first span that ends after `now_ms`.
    fn first_ending_after(&self, now_ms: u64) -> Option<Occurrence> {
        match &self.schedule {
            Schedule::Once { start_ms, end_ms } => (*end_ms > now_ms).then(|| Occurrence {
                drain_at_ms: start_ms.saturating_sub(self.lead_ms),
                start_ms: *start_ms,
                end_ms: *end_ms,
            }),
            Schedule::Cron {
                schedule,
                duration_ms,
            } => {
                // A firing t is in force while t - lead <= now < t + duration: the first firing
                // after now - duration is the only candidate.
                let after_ms = now_ms.saturating_sub(*duration_ms);
                let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(
                    i64::try_from(after_ms).ok()?,
                )?;
                let start = schedule.after(&after).next()?;
                let start_ms = u64::try_from(start.timestamp_millis()).ok()?;
                Some(Occurrence {
                    drain_at_ms: start_ms.saturating_sub(self.lead_ms),
                    start_ms,
                    end_ms: start_ms.saturating_add(*duration_ms),
                })
            }
        }
    }

    /// A one-off window whose end has passed.
    pub fn ended(&self, now_ms: u64) -> bool {
        matches!(self.schedule, Schedule::Once { end_ms, .. } if end_ms <= now_ms)
    }
}

/// A window as `GET /api/v1/windows` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WindowView {
    /// The window.
    #[serde(flatten)]
    pub spec: WindowSpec,
    /// From the config file.
    pub from_config: bool,
    /// `scheduled`, `open` (its groups are held) or `ended`.
    pub state: String,
    /// The span in force or the next (RFC 3339).
    pub next_drain_at: Option<String>,
    /// Its start.
    pub next_start: Option<String>,
    /// Its end.
    pub next_end: Option<String>,
}

impl Window {
    /// The API's view at `now_ms`.
    pub fn view(&self, now_ms: u64) -> WindowView {
        let occurrence = self.current_or_next(now_ms);
        let state = if self.ended(now_ms) {
            "ended"
        } else if self.open_at(now_ms).is_some() {
            "open"
        } else {
            "scheduled"
        };
        WindowView {
            spec: self.spec.clone(),
            from_config: self.from_config,
            state: state.to_owned(),
            next_drain_at: occurrence.map(|o| format_time(o.drain_at_ms)),
            next_start: occurrence.map(|o| format_time(o.start_ms)),
            next_end: occurrence.map(|o| format_time(o.end_ms)),
        }
    }
}

/// Names unique and non-empty; every window valid against the configured groups.
pub(super) fn validate_windows(
    windows: &[WindowSpec],
    group_names: &HashSet<&str>,
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, spec) in windows.iter().enumerate() {
        let key = |field: &str| format!("window[{i}].{field}");
        if spec.name.is_empty() || !names.insert(spec.name.as_str()) {
            return Err(ConfigError::Invalid {
                key: key("name"),
                message: format!("{:?} must be a unique, non-empty name", spec.name),
            });
        }
        Window::new(spec.clone(), true, |g| {
            g == DEFAULT_GROUP || group_names.contains(g)
        })
        .map_err(|e| ConfigError::Invalid {
            key: key(e.field),
            message: e.message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WindowSpec {
        WindowSpec {
            name: "w".into(),
            groups: vec!["c07".into()],
            mode: DrainMode::Pause,
            reason: String::new(),
            reconnect_to: None,
            start: None,
            end: None,
            cron: None,
            duration: None,
            lead_time: None,
        }
    }

    const HOUR: u64 = 3_600_000;

    #[test]
    fn a_one_off_window_with_lead_time() {
        let window = Window::new(
            WindowSpec {
                start: Some("2026-12-01T20:00:00Z".into()),
                end: Some("2026-12-01T22:00:00+00:00".into()),
                lead_time: Some(Duration::from_secs(600)),
                ..spec()
            },
            false,
            |_| true,
        )
        .unwrap();
        let start = parse_time("start", "2026-12-01T20:00:00Z").unwrap();
        assert_eq!(start, 1_796_155_200_000, "2026-12-01T20:00:00Z in unix ms");
        assert_eq!(window.open_at(start - 601_000), None);
        let open = window
            .open_at(start - 600_000)
            .expect("open at start - lead");
        assert_eq!(open.end_ms, start + 2 * HOUR);
        assert!(window.open_at(start + 2 * HOUR).is_none(), "closed at end");
        assert!(window.ended(start + 2 * HOUR));
        assert_eq!(format_time(start), "2026-12-01T20:00:00Z");
        assert_eq!(format_time(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_nightly_cron_window() {
        // Every day at 02:00 UTC for 4 hours, drained 15 minutes early.
        let window = Window::new(
            WindowSpec {
                cron: Some("0 2 * * *".into()),
                duration: Some(Duration::from_secs(4 * 3600)),
                lead_time: Some(Duration::from_secs(900)),
                ..spec()
            },
            true,
            |_| true,
        )
        .unwrap();
        let day = parse_time("start", "2026-12-01T00:00:00Z").unwrap();
        let at = |h: f64| day + (h * HOUR as f64) as u64;
        assert!(window.open_at(at(1.7)).is_none());
        let open = window.open_at(at(1.75)).expect("open at 01:45");
        assert_eq!(open.start_ms, at(2.0));
        assert!(window.open_at(at(5.99)).is_some());
        assert!(window.open_at(at(6.0)).is_none());
        assert_eq!(window.current_or_next(at(6.0)).unwrap().start_ms, at(26.0));
        assert!(!window.ended(at(100.0)));
    }

    #[test]
    fn bad_windows_name_their_field() {
        let cases = [
            (
                WindowSpec {
                    groups: vec![],
                    ..spec()
                },
                "groups",
            ),
            (
                WindowSpec {
                    groups: vec!["nope".into()],
                    start: Some("2026-12-01T20:00:00Z".into()),
                    end: Some("2026-12-01T21:00:00Z".into()),
                    ..spec()
                },
                "groups",
            ),
            (
                WindowSpec {
                    start: Some("tomorrow".into()),
                    end: Some("2026-12-01T21:00:00Z".into()),
                    ..spec()
                },
                "start",
            ),
            (
                WindowSpec {
                    start: Some("2026-12-01T22:00:00Z".into()),
                    end: Some("2026-12-01T21:00:00Z".into()),
                    ..spec()
                },
                "end",
            ),
            (
                WindowSpec {
                    cron: Some("61 * * * *".into()),
                    duration: Some(Duration::from_secs(60)),
                    ..spec()
                },
                "cron",
            ),
            (spec(), "start"),
            (
                WindowSpec {
                    cron: Some("0 2 * * *".into()),
                    duration: Some(Duration::from_secs(8000 * 366 * 24 * 3600)),
                    ..spec()
                },
                "duration",
            ),
            (
                WindowSpec {
                    start: Some("2026-12-01T20:00:00Z".into()),
                    end: Some("2026-12-01T21:00:00Z".into()),
                    reason: "x".repeat(300),
                    ..spec()
                },
                "reason",
            ),
        ];
        for (spec, field) in cases {
            let error = Window::new(spec, false, |g| g == "c07").unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }
}
