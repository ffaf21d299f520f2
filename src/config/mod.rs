//! Configuration: TOML parsed into typed values, validated once, then read-only.
//!
//! Every key has a default except `server.listen` and at least one `[[upstream]]`. Durations are
//! humantime strings (`"10s"`, `"2m"`). Unknown keys are errors (a typo must not silently fall
//! back to a default). [`Config::validate`] names the key of every problem, e.g.
//! `upstream[1].url: expected stratum+tcp://host:port, got "http://pool"`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

mod defaults;
mod difficulty;
mod drain;
mod error;
mod groups;
mod hooks;
mod locate;
mod management;
mod meter;
mod power;
mod server;
mod upstream;
pub mod windows;

pub use difficulty::{DifficultyConfig, DifficultyPolicy};
pub use drain::{CapacityConfig, DrainConfig, DrainMode};
pub use error::ConfigError;
pub use groups::{DEFAULT_GROUP, Group, GroupConfig, GroupError, GroupKind, Groups};
pub use hooks::{HookConfig, HookEvent};
pub use management::{
    AddressMapConfig, Credentials, Management, ManagementConfig, PowerSourceChoice, Secret,
};
pub use meter::{MeterConfig, RegisterKind, ValueType, WordOrder};
pub use power::PowerConfig;
pub use server::{ApiConfig, ServerConfig, StateConfig};
pub use upstream::{Endpoint, FailoverConfig, UpstreamConfig, parse_stratum_url, split_host_port};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The miner-facing listener.
    pub server: ServerConfig,
    /// The HTTP API and metrics listener.
    #[serde(default)]
    pub api: ApiConfig,
    /// Where state survives restarts.
    #[serde(default)]
    pub state: StateConfig,
    /// Miner difficulty policy.
    #[serde(default)]
    pub difficulty: DifficultyConfig,
    /// Failover and pool-connection timing.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Pools, tried in `priority` order (lowest first).
    #[serde(rename = "upstream", default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Hardware groups, matched in order at authorize (first match wins; others are `default`).
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupConfig>,
    /// How drains are witnessed and how resumed groups ramp back (defaults for every group).
    #[serde(default)]
    pub drain: DrainConfig,
    /// Programs and webhooks run on group transitions (the farm's power switch and the AI
    /// scheduler's signal).
    #[serde(rename = "hook", default)]
    pub hooks: Vec<HookConfig>,
    /// Scheduled maintenance windows (more can be added through the API).
    #[serde(rename = "window", default)]
    pub windows: Vec<windows::WindowSpec>,
    /// How capacity requests are planned.
    #[serde(default)]
    pub capacity: CapacityConfig,
    /// How machines' firmware is polled for power and told to sleep and wake.
    #[serde(default)]
    pub power: PowerConfig,
    /// Rack or PDU meters, one per group at most: the best power source.
    #[serde(rename = "meter", default)]
    pub meters: Vec<MeterConfig>,
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                key: locate::key_of(&e),
                message: e.message().to_owned(),
            }
        })?;
        config.validate().map_err(|source| {
            let line = match &source {
                ConfigError::Invalid { key, .. } => {
                    locate::offset_of(text, key).map(|offset| line_and_column(text, offset).0)
                }
                _ => None,
            };
            ConfigError::InFile {
                path: path.to_owned(),
                line,
                source: Box::new(source),
            }
        })
    }

    /// Checks every rule that types alone cannot express; names the key of the first problem.
    /// Each section checks itself; the references between sections (a hook's or a window's
    /// groups) are checked against the group names.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.server.validate()?;
        self.difficulty.validate()?;
        self.failover.validate()?;
        upstream::validate_upstreams(&self.upstreams)?;
        let group_names = groups::validate_groups(&self.groups)?;
        self.validate_bounds()?;
        self.drain.validate()?;
        hooks::validate_hooks(&self.hooks, &group_names)?;
        windows::validate_windows(&self.windows, &group_names)?;
        meter::validate_meters(&self.meters, &group_names)?;
        self.capacity.validate()?;
        self.power.validate()?;
        self.api.validate()?;
        Ok(self)
    }

    /// Every duration within reason: timers are added to clocks, and a typo such as "10000y"
    /// must be a config error naming its key, not an overflow at run time.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        const MAX: Duration = Duration::from_secs(30 * 24 * 3600);
        let s = &self.server;
        let f = &self.failover;
        let d = &self.drain;
        let mut durations = vec![
            ("server.idle_timeout".to_owned(), s.idle_timeout),
            ("server.subscribe_wait".to_owned(), s.subscribe_wait),
            ("server.shutdown_grace".to_owned(), s.shutdown_grace),
            (
                "difficulty.target_share_interval".to_owned(),
                self.difficulty.target_share_interval,
            ),
            (
                "difficulty.retarget_interval".to_owned(),
                self.difficulty.retarget_interval,
            ),
            ("failover.connect_timeout".to_owned(), f.connect_timeout),
            ("failover.handshake_timeout".to_owned(), f.handshake_timeout),
            ("failover.submit_timeout".to_owned(), f.submit_timeout),
            ("failover.backoff_max".to_owned(), f.backoff_max),
            ("failover.return_after".to_owned(), f.return_after),
            ("drain.timeout".to_owned(), d.timeout),
            ("drain.quiet_min".to_owned(), d.quiet_min),
            ("drain.ramp_timeout".to_owned(), d.ramp_timeout),
            ("drain.hook_retry".to_owned(), d.hook_retry),
            (
                "capacity.efficiency_window".to_owned(),
                self.capacity.efficiency_window,
            ),
        ];
        for (i, u) in self.upstreams.iter().enumerate() {
            durations.push((format!("upstream[{i}].job_timeout"), u.job_timeout));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if let Some(timeout) = g.drain_timeout {
                durations.push((format!("group[{i}].drain_timeout"), timeout));
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            durations.push((format!("hook[{i}].timeout"), h.timeout));
        }
        for (key, value) in durations {
            if value > MAX {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{} is above 30 days", humantime::format_duration(value)),
                });
            }
        }
        Ok(())
    }

    /// Upstreams in failover order (priority, then file order).
    pub fn upstreams_by_priority(&self) -> Vec<UpstreamConfig> {
        let mut upstreams = self.upstreams.clone();
        upstreams.sort_by_key(|u| u.priority);
        upstreams
    }
}

/// Reads a secret kept in a file (an API token, a webhook key): the file's text without the
/// surrounding whitespace an editor leaves.
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "0.0.0.0:3333"
[[upstream]]
name = "primary"
url = "stratum+tcp://pool.example:3333"
user = "farm.proxy"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.difficulty.initial, 16384.0);
        assert_eq!(
            config.difficulty.target_share_interval,
            Duration::from_secs(10)
        );
        assert_eq!(config.upstreams[0].job_timeout, Duration::from_secs(120));
        assert_eq!(config.upstreams[0].password, "x");
        assert_eq!(config.api.listen, "127.0.0.1:9100".parse().unwrap());
        let endpoint = config.upstreams[0].endpoint().unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port),
            ("pool.example", 3333)
        );
        assert_eq!(endpoint.to_string(), "pool.example:3333");
    }

    #[test]
    fn every_config_error_names_its_key_and_line() {
        let line_of =
            |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        // A type error: the deserializer's key and the parser's line.
        let text = MINIMAL.replace(
            "[[upstream]]",
            "[difficulty]\ninitial = \"abc\"\n\n[[upstream]]",
        );
        let typed = parse(&text).unwrap_err().to_string();
        let line = line_of(&text, "initial = ").unwrap();
        assert!(
            typed.starts_with(&format!(
                "test.toml:{line}:11: difficulty.initial: invalid type"
            )),
            "{typed}"
        );
        // A value that parses but is not acceptable: its key, found again on its line.
        let text = format!("{MINIMAL}\n[[group]]\nname = \"c07\"\nworkers = [\"ok*\", \"[\"]\n");
        let semantic = parse(&text).unwrap_err().to_string();
        let line = line_of(&text, "workers = ").unwrap();
        assert!(
            semantic.starts_with(&format!("test.toml:{line}: group[0].workers[1]: ")),
            "{semantic}"
        );
    }

    #[test]
    fn groups_are_validated_by_key() {
        let with = |group: &str| format!("{MINIMAL}[[group]]\n{group}\n");
        let ok = parse(&with(
            "name = \"c07\"\nworkers = [\"farm.c07-*\"]\naddresses = [\"10.7.0.0/16\"]\nkind = \"gpu\"\nwatts_per_worker = 3250.0",
        ))
        .unwrap();
        assert_eq!(ok.groups[0].kind, GroupKind::Gpu);
        for (text, key) in [
            (
                "name = \"c07\"\naddresses = [\"10.7.0.0/33\"]",
                "group[0].addresses[0]",
            ),
            ("name = \"c07\"\nworkers = [\"[\"]", "group[0].workers[0]"),
            ("name = \"c 07\"", "group[0].name"),
            (
                "name = \"c07\"\nwatts_per_worker = -5.0",
                "group[0].watts_per_worker",
            ),
            ("name = \"default\"\nworkers = [\"*\"]", "group[0].workers"),
        ] {
            let err = parse(&with(text)).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn drains_hooks_and_windows_are_validated_by_key() {
        let group = "[[group]]\nname = \"c07\"\nworkers = [\"farm.c07-*\"]\n";
        let ok = parse(&format!(
            "{MINIMAL}{group}[[window]]\nname = \"nightly\"\ngroups = [\"c07\"]\ncron = \"0 2 * * *\"\nduration = \"4h\"\nlead_time = \"15m\"\n[[hook]]\nevents = [\"drained\"]\nurl = \"http://scheduler.local/hook\"\nsecret = \"k\"\n"
        ))
        .unwrap();
        assert_eq!(ok.windows[0].duration, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(ok.hooks[0].events, vec![HookEvent::Drained]);
        for (text, key) in [
            ("[drain]\nquiet_shares = 0.0\n", "drain.quiet_shares"),
            ("[drain]\ntimeout = \"0s\"\n", "drain.timeout"),
            ("[capacity]\ntolerance = 1.5\n", "capacity.tolerance"),
            (
                "[[hook]]\nevents = []\ncommand = [\"/bin/true\"]\n",
                "hook[0].events",
            ),
            ("[[hook]]\nevents = [\"active\"]\n", "hook[0].command"),
            (
                "[[hook]]\nevents = [\"active\"]\nurl = \"https://x\"\n",
                "hook[0].url",
            ),
            (
                "[[hook]]\nevents = [\"active\"]\ngroups = [\"nope\"]\ncommand = [\"/bin/true\"]\n",
                "hook[0].groups[0]",
            ),
            (
                "[[window]]\nname = \"w\"\ngroups = [\"c07\"]\nstart = \"2026-12-01T20:00:00Z\"\nend = \"2026-12-01T19:00:00Z\"\n",
                "window[0].end",
            ),
            (
                "[[window]]\nname = \"w\"\ngroups = [\"c07\"]\ncron = \"every night\"\nduration = \"1h\"\n",
                "window[0].cron",
            ),
            (
                "[[window]]\ngroups = [\"c07\"]\ncron = \"0 2 * * *\"\nduration = \"1h\"\n",
                "window[0].name",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}{group}{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_stratum_url("stratum+tcp://[::1]:3333").unwrap(),
            ("::1".into(), 3333)
        );
        assert_eq!(parse_stratum_url("pool:1").unwrap(), ("pool".into(), 1));
        assert!(parse_stratum_url("http://pool:3333").is_err());
        assert!(parse_stratum_url("stratum+tcp://pool").is_err());
        assert!(parse_stratum_url("stratum+tcp://pool:99999").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                MINIMAL.replace("pool.example:3333", "pool.example"),
                "upstream[0].url",
            ),
            (
                format!("{MINIMAL}[difficulty]\nmin = 0.0\n"),
                "difficulty.min",
            ),
            (
                format!("{MINIMAL}[difficulty]\nmin = 10.0\nmax = 1.0\n"),
                "difficulty.min",
            ),
            (
                format!("{MINIMAL}[difficulty]\ninitial = 0.5\n"),
                "difficulty.initial",
            ),
            (
                format!("{MINIMAL}[[upstream]]\nname = \"primary\"\nurl = \"a:1\"\nuser = \"u\"\n"),
                "upstream[1].name",
            ),
            (
                format!("{MINIMAL}[api]\nlisten = \"0.0.0.0:9100\"\n"),
                "api.listen",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
            assert!(err.starts_with("test.toml"), "{err} should name the file");
        }
    }

    #[test]
    fn syntax_and_type_errors_name_the_line() {
        let err = parse("[server]\nlisten = \"0.0.0.0:3333\"\nbogus_key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml:3"), "{err}");
        assert!(err.contains("bogus_key"), "{err}");
        let err = parse(&MINIMAL.replace("[server]", "[server]\nidle_timeout = \"ten\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml:3"), "{err}");
        let err = parse("[server\n").unwrap_err().to_string();
        assert!(err.contains("test.toml:1"), "{err}");
    }
}
