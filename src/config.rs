//! Configuration: TOML parsed into typed values, validated once, then read-only.
//!
//! Every key has a default except `server.listen` and at least one `[[upstream]]`. Durations are
//! humantime strings (`"10s"`, `"2m"`). Unknown keys are errors (a typo must not silently fall
//! back to a default). [`Config::validate`] names the key of every problem, e.g.
//! `upstream[1].url: expected stratum+tcp://host:port, got "http://pool"`.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::work::Difficulty;

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
    pub windows: Vec<crate::groups::windows::WindowSpec>,
    /// How capacity requests are planned.
    #[serde(default)]
    pub capacity: CapacityConfig,
}

/// `[capacity]`: planning capacity requests from an AI scheduler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// Accepted shortfall of a plan, as a fraction of the watts asked for.
    #[serde(default = "defaults::tolerance")]
    pub tolerance: f64,
    /// A group's efficiency is measured over this much of its share history (its declared
    /// `efficiency_j_per_th` is used until a twelfth of it has been seen).
    #[serde(default = "defaults::efficiency_window", with = "humantime_serde")]
    pub efficiency_window: Duration,
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            tolerance: defaults::tolerance(),
            efficiency_window: defaults::efficiency_window(),
        }
    }
}

/// `[drain]`: the defaults a group's drain and resume use unless the group overrides them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// A draining group is called drained after this even if miners still hash through it (the
    /// event then lists them).
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Shortest silence that counts a miner as quiet, however fast it submitted before.
    #[serde(default = "defaults::quiet_min", with = "humantime_serde")]
    pub quiet_min: Duration,
    /// A miner is quiet after this many of its expected share intervals without a submit (6: a
    /// miner still hashing looks quiet with probability e^-6, 0.25%).
    #[serde(default = "defaults::quiet_shares")]
    pub quiet_shares: f64,
    /// Miners given work again per second while a group resumes.
    #[serde(default = "defaults::ramp_workers_per_second")]
    pub ramp_workers_per_second: f64,
    /// Watts brought back per second while a group resumes (with the group's watts per worker;
    /// the slower of the two ramps wins).
    #[serde(default)]
    pub ramp_watts_per_second: Option<f64>,
    /// A resuming group is called active after this even if some of its miners did not come back.
    #[serde(default = "defaults::ramp_timeout", with = "humantime_serde")]
    pub ramp_timeout: Duration,
    /// A required `drained` or `active` hook that failed is tried again after this.
    #[serde(default = "defaults::hook_retry", with = "humantime_serde")]
    pub hook_retry: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::drain_timeout(),
            quiet_min: defaults::quiet_min(),
            quiet_shares: defaults::quiet_shares(),
            ramp_workers_per_second: defaults::ramp_workers_per_second(),
            ramp_watts_per_second: None,
            ramp_timeout: defaults::ramp_timeout(),
            hook_retry: defaults::hook_retry(),
        }
    }
}

/// A group transition a hook can be run on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HookEvent {
    /// Before a group stops mining: put the machines to sleep here.
    Draining,
    /// The group's miners are gone or quiet: its power is free.
    Drained,
    /// Before a drained group gets work again: wake the machines here.
    Resuming,
    /// The group is back to mining.
    Active,
}

impl HookEvent {
    /// Every event, in lifecycle order.
    pub const ALL: [HookEvent; 4] = [
        HookEvent::Draining,
        HookEvent::Drained,
        HookEvent::Resuming,
        HookEvent::Active,
    ];

    /// The name used in config, env, metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Draining => "draining",
            HookEvent::Drained => "drained",
            HookEvent::Resuming => "resuming",
            HookEvent::Active => "active",
        }
    }
}

/// `[[hook]]`: a program or a webhook run on group transitions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// A name for logs and the API (default: the command or url).
    #[serde(default)]
    pub name: Option<String>,
    /// The transitions it runs on.
    pub events: Vec<HookEvent>,
    /// Only for these groups (all when empty).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Killed (command) or given up (webhook) after this.
    #[serde(default = "defaults::hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A failing required hook stops the transition: the group stays where it was.
    #[serde(default)]
    pub required: bool,
    /// Program and arguments, run without a shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Webhook URL (`http://host:port/path`), POSTed a JSON body.
    #[serde(default)]
    pub url: Option<String>,
    /// HMAC-SHA256 key for the webhook's `X-Hashgate-Signature` header.
    #[serde(default)]
    pub secret: Option<String>,
    /// File holding the secret (read at start).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl HookConfig {
    /// The name shown in logs and events.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match (&self.command, &self.url) {
            (Some(command), _) => command.first().cloned().unwrap_or_default(),
            (None, Some(url)) => url.clone(),
            (None, None) => String::new(),
        }
    }
}

/// What a group's machines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// ASIC miners.
    #[default]
    Asic,
    /// GPU rigs.
    Gpu,
}

/// `[[group]]`: machines wired together (a container, a row, a PDU), drained together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Name used in the API, metrics and hooks. `default` configures the unmatched miners.
    pub name: String,
    /// Globs on the authorized worker name, e.g. `farm.c07-*`.
    #[serde(default)]
    pub workers: Vec<String>,
    /// CIDRs of the miner's address, e.g. `10.7.0.0/16`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Globs on the miner's user agent, e.g. `bitaxe*`.
    #[serde(default)]
    pub user_agents: Vec<String>,
    /// ASIC or GPU.
    #[serde(default)]
    pub kind: GroupKind,
    /// Watts one mining worker of this group draws.
    #[serde(default)]
    pub watts_per_worker: f64,
    /// Declared efficiency (J/TH), used when it cannot be measured.
    #[serde(default)]
    pub efficiency_j_per_th: Option<f64>,
    /// Among equally efficient groups, lower drains first.
    #[serde(default)]
    pub drain_priority: Option<i32>,
    /// Overrides `drain.timeout` for this group.
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
    /// Overrides `drain.ramp_workers_per_second` for this group.
    #[serde(default)]
    pub ramp_workers_per_second: Option<f64>,
    /// Overrides `drain.ramp_watts_per_second` for this group.
    #[serde(default)]
    pub ramp_watts_per_second: Option<f64>,
}

/// `[server]`: the Stratum listener for miners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address miners connect to.
    pub listen: SocketAddr,
    /// Longest line a miner may send, in bytes.
    #[serde(default = "defaults::max_line_bytes")]
    pub max_line_bytes: usize,
    /// Largest extranonce2 handed to a miner (WhatsMiner firmware fails above 8).
    #[serde(default = "defaults::max_extranonce2_size")]
    pub max_extranonce2_size: usize,
    /// Bytes of the pool's extranonce2 reserved per miner; default 2 when at least 2 bytes remain
    /// for the miner, else 1.
    #[serde(default)]
    pub extranonce_prefix_size: Option<usize>,
    /// Lines queued for a miner that does not read before it is disconnected.
    #[serde(default = "defaults::write_queue")]
    pub write_queue: usize,
    /// Kernel send buffer per miner socket, in bytes. Bounded so a miner that stops reading is
    /// noticed after kilobytes, not after the kernel has buffered megabytes on its behalf.
    #[serde(default = "defaults::socket_send_buffer")]
    pub socket_send_buffer: usize,
    /// A miner silent this long is disconnected.
    #[serde(default = "defaults::idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a miner may wait for its subscribe answer when no pool is up yet.
    #[serde(default = "defaults::subscribe_wait", with = "humantime_serde")]
    pub subscribe_wait: Duration,
    /// Connections accepted at most (the rest wait in the kernel's backlog).
    #[serde(default = "defaults::max_miners")]
    pub max_miners: usize,
    /// Connections per pool at most (each serves as many miners as its extranonce prefixes).
    #[serde(default = "defaults::max_upstream_connections")]
    pub max_upstream_connections: usize,
    /// Grace period for in-flight upstream submits at shutdown.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// `[api]`: HTTP API and Prometheus metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP listener.
    #[serde(default = "defaults::api_listen")]
    pub listen: SocketAddr,
    /// Bearer token for mutating endpoints.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the token (read at start).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Per-worker metric series (off: 100,000 workers must not make 100,000 series).
    #[serde(default)]
    pub per_worker_metrics: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: defaults::api_listen(),
            token: None,
            token_file: None,
            per_worker_metrics: false,
        }
    }
}

/// `[state]`: persistent state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for state files.
    #[serde(default = "defaults::state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: defaults::state_dir(),
        }
    }
}

/// `[difficulty]`: per-miner share difficulty and vardiff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DifficultyConfig {
    /// Difficulty a miner starts at (unless it suggests one).
    #[serde(default = "defaults::initial_difficulty")]
    pub initial: f64,
    /// Lowest difficulty vardiff or a suggestion may set.
    #[serde(default = "defaults::min_difficulty")]
    pub min: f64,
    /// Highest difficulty (and never above the pool's).
    #[serde(default = "defaults::max_difficulty")]
    pub max: f64,
    /// The share interval vardiff aims at.
    #[serde(default = "defaults::target_share_interval", with = "humantime_serde")]
    pub target_share_interval: Duration,
    /// Shortest time between two retargets of one miner.
    #[serde(default = "defaults::retarget_interval", with = "humantime_serde")]
    pub retarget_interval: Duration,
}

impl Default for DifficultyConfig {
    fn default() -> Self {
        Self {
            initial: defaults::initial_difficulty(),
            min: defaults::min_difficulty(),
            max: defaults::max_difficulty(),
            target_share_interval: defaults::target_share_interval(),
            retarget_interval: defaults::retarget_interval(),
        }
    }
}

/// `[failover]`: pool connection timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// TCP connect timeout.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time for configure/subscribe/authorize to be answered.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A forwarded share not answered in this time is counted lost.
    #[serde(default = "defaults::submit_timeout", with = "humantime_serde")]
    pub submit_timeout: Duration,
    /// First reconnect delay.
    #[serde(default = "defaults::backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    #[serde(default = "defaults::backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A higher-priority pool must be healthy this long before miners return to it.
    #[serde(default = "defaults::return_after", with = "humantime_serde")]
    pub return_after: Duration,
    /// Hosts a pool's `client.reconnect` may send hashgate to, besides the pool's own host
    /// (a hijacked pool must not redirect the farm's hashrate).
    #[serde(default)]
    pub allow_reconnect_hosts: Vec<String>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            connect_timeout: defaults::connect_timeout(),
            handshake_timeout: defaults::handshake_timeout(),
            submit_timeout: defaults::submit_timeout(),
            backoff_min: defaults::backoff_min(),
            backoff_max: defaults::backoff_max(),
            return_after: defaults::return_after(),
            allow_reconnect_hosts: Vec::new(),
        }
    }
}

/// `[[upstream]]`: one pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name used in logs, metrics and the API.
    pub name: String,
    /// `stratum+tcp://host:port`.
    pub url: String,
    /// Worker name hashgate authorizes and submits as.
    pub user: String,
    /// Password for authorize.
    #[serde(default = "defaults::password")]
    pub password: String,
    /// Lower is preferred.
    #[serde(default)]
    pub priority: u32,
    /// A pool that sends no new job for this long is treated as down.
    #[serde(default = "defaults::job_timeout", with = "humantime_serde")]
    pub job_timeout: Duration,
    /// Longest line accepted from this pool (large coinbases need more than a miner's 16 KiB).
    #[serde(default = "defaults::upstream_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Ask the pool for version rolling (BIP310).
    #[serde(default = "defaults::yes")]
    pub version_rolling: bool,
}

impl UpstreamConfig {
    /// Host and port from the validated url.
    pub fn endpoint(&self) -> Result<(String, u16), ConfigError> {
        parse_stratum_url(&self.url).map_err(|message| ConfigError::Invalid {
            key: format!("upstream[{}].url", self.name),
            message,
        })
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn max_line_bytes() -> usize {
        crate::protocol::DEFAULT_MAX_LINE
    }
    pub fn upstream_max_line_bytes() -> usize {
        256 * 1024
    }
    pub fn max_extranonce2_size() -> usize {
        8
    }
    pub fn write_queue() -> usize {
        256
    }
    pub fn socket_send_buffer() -> usize {
        64 * 1024
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn subscribe_wait() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_miners() -> usize {
        19_900
    }
    pub fn max_upstream_connections() -> usize {
        64
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(5)
    }
    pub fn api_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9100))
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/hashgate")
    }
    pub fn initial_difficulty() -> f64 {
        16384.0
    }
    pub fn min_difficulty() -> f64 {
        1.0
    }
    pub fn max_difficulty() -> f64 {
        4_194_304.0
    }
    pub fn target_share_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn retarget_interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn submit_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn backoff_min() -> Duration {
        Duration::from_millis(500)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(30)
    }
    pub fn return_after() -> Duration {
        Duration::from_secs(60)
    }
    pub fn password() -> String {
        "x".to_owned()
    }
    pub fn job_timeout() -> Duration {
        Duration::from_secs(120)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(600)
    }
    pub fn quiet_min() -> Duration {
        Duration::from_secs(30)
    }
    pub fn quiet_shares() -> f64 {
        6.0
    }
    pub fn ramp_workers_per_second() -> f64 {
        10.0
    }
    pub fn ramp_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn hook_retry() -> Duration {
        Duration::from_secs(10)
    }
    pub fn hook_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn tolerance() -> f64 {
        0.05
    }
    pub fn efficiency_window() -> Duration {
        Duration::from_secs(3600)
    }
}

/// A configuration problem, naming the file or key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, with the line.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message (names the key for type errors).
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Key path, e.g. `difficulty.min`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A problem in a named file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: Box<ConfigError>,
    },
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
                message: e.message().to_owned(),
            }
        })?;
        config.validate().map_err(|source| ConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks every rule that types alone cannot express; names the key of the first problem.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let s = &self.server;
        if s.max_line_bytes < 512 {
            return Err(invalid(
                "server.max_line_bytes",
                format!(
                    "{} is too small for a submit (at least 512)",
                    s.max_line_bytes
                ),
            ));
        }
        if !(1..=32).contains(&s.max_extranonce2_size) {
            return Err(invalid(
                "server.max_extranonce2_size",
                format!("{} is not between 1 and 32", s.max_extranonce2_size),
            ));
        }
        if let Some(size) = s.extranonce_prefix_size {
            if !(1..=4).contains(&size) {
                return Err(invalid(
                    "server.extranonce_prefix_size",
                    format!("{size} is not between 1 and 4"),
                ));
            }
        }
        if s.socket_send_buffer < 4096 {
            return Err(invalid(
                "server.socket_send_buffer",
                format!("{} is below 4096 bytes", s.socket_send_buffer),
            ));
        }
        if s.write_queue == 0 {
            return Err(invalid("server.write_queue", "must be at least 1".into()));
        }
        if s.max_upstream_connections == 0 {
            return Err(invalid(
                "server.max_upstream_connections",
                "must be at least 1".into(),
            ));
        }
        if s.max_miners == 0 {
            return Err(invalid("server.max_miners", "must be at least 1".into()));
        }
        let d = &self.difficulty;
        for (key, value) in [
            ("difficulty.initial", d.initial),
            ("difficulty.min", d.min),
            ("difficulty.max", d.max),
        ] {
            Difficulty::new(value).map_err(|e| invalid(key, e.to_string()))?;
        }
        if d.min > d.max {
            return Err(invalid(
                "difficulty.min",
                format!("{} is above difficulty.max {}", d.min, d.max),
            ));
        }
        if d.initial < d.min || d.initial > d.max {
            return Err(invalid(
                "difficulty.initial",
                format!("{} is outside [{}, {}]", d.initial, d.min, d.max),
            ));
        }
        if d.target_share_interval.is_zero() {
            return Err(invalid(
                "difficulty.target_share_interval",
                "must be above zero".into(),
            ));
        }
        let f = &self.failover;
        if f.backoff_min > f.backoff_max {
            return Err(invalid(
                "failover.backoff_min",
                "is above failover.backoff_max".into(),
            ));
        }
        for (key, value) in [
            ("failover.connect_timeout", f.connect_timeout),
            ("failover.handshake_timeout", f.handshake_timeout),
            ("failover.submit_timeout", f.submit_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero".into()));
            }
        }
        if self.upstreams.is_empty() {
            return Err(invalid(
                "upstream",
                "at least one [[upstream]] is required".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, upstream) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field}");
            if upstream.name.trim().is_empty() {
                return Err(invalid(&key("name"), "must not be empty".into()));
            }
            if !names.insert(upstream.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used by another upstream", upstream.name),
                ));
            }
            parse_stratum_url(&upstream.url).map_err(|message| invalid(&key("url"), message))?;
            if upstream.user.is_empty() {
                return Err(invalid(&key("user"), "must not be empty".into()));
            }
            if upstream.job_timeout.is_zero() {
                return Err(invalid(&key("job_timeout"), "must be above zero".into()));
            }
            if upstream.max_line_bytes < 1024 {
                return Err(invalid(
                    &key("max_line_bytes"),
                    "must be at least 1024".into(),
                ));
            }
        }
        let mut group_names = HashSet::new();
        for (i, group) in self.groups.iter().enumerate() {
            let key = |field: &str| format!("group[{i}].{field}");
            let valid_name = !group.name.is_empty()
                && group
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
            if !valid_name {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} must be letters, digits, '-', '_' or '.'", group.name),
                ));
            }
            if !group_names.insert(group.name.as_str()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used by another group", group.name),
                ));
            }
            if group.name == "default"
                && !(group.workers.is_empty()
                    && group.addresses.is_empty()
                    && group.user_agents.is_empty())
            {
                return Err(invalid(
                    &key("workers"),
                    "the default group takes the unmatched miners: it has no match rules".into(),
                ));
            }
            for (j, pattern) in group.workers.iter().enumerate() {
                globset::Glob::new(pattern)
                    .map_err(|e| invalid(&key(&format!("workers[{j}]")), e.to_string()))?;
            }
            for (j, pattern) in group.user_agents.iter().enumerate() {
                globset::Glob::new(pattern)
                    .map_err(|e| invalid(&key(&format!("user_agents[{j}]")), e.to_string()))?;
            }
            for (j, cidr) in group.addresses.iter().enumerate() {
                cidr.parse::<ipnet::IpNet>().map_err(|e| {
                    invalid(&key(&format!("addresses[{j}]")), format!("{cidr:?}: {e}"))
                })?;
            }
            if !group.watts_per_worker.is_finite() || group.watts_per_worker < 0.0 {
                return Err(invalid(
                    &key("watts_per_worker"),
                    format!("{} must be a number of watts >= 0", group.watts_per_worker),
                ));
            }
            if let Some(efficiency) = group.efficiency_j_per_th {
                if !efficiency.is_finite() || efficiency <= 0.0 {
                    return Err(invalid(
                        &key("efficiency_j_per_th"),
                        format!("{efficiency} must be above zero"),
                    ));
                }
            }
            let rates = [
                ("ramp_workers_per_second", group.ramp_workers_per_second),
                ("ramp_watts_per_second", group.ramp_watts_per_second),
            ];
            for (field, rate) in rates {
                if let Some(rate) = rate {
                    if !rate.is_finite() || rate <= 0.0 {
                        return Err(invalid(&key(field), format!("{rate} must be above zero")));
                    }
                }
            }
            if group.drain_timeout.is_some_and(|t| t.is_zero()) {
                return Err(invalid(&key("drain_timeout"), "must be above zero".into()));
            }
        }
        self.validate_bounds()?;
        self.validate_drain()?;
        self.validate_hooks(&group_names)?;
        self.validate_windows(&group_names)?;
        let c = &self.capacity;
        if !(0.0..1.0).contains(&c.tolerance) {
            return Err(invalid(
                "capacity.tolerance",
                format!("{} is not a fraction in [0, 1)", c.tolerance),
            ));
        }
        if c.efficiency_window.is_zero() {
            return Err(invalid(
                "capacity.efficiency_window",
                "must be above zero".into(),
            ));
        }
        if !self.api.listen.ip().is_loopback()
            && self.api.token.is_none()
            && self.api.token_file.is_none()
        {
            return Err(invalid(
                "api.listen",
                format!(
                    "{} is not a loopback address: set api.token or api.token_file",
                    self.api.listen
                ),
            ));
        }
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

    fn validate_drain(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        };
        let d = &self.drain;
        for (key, value) in [
            ("drain.timeout", d.timeout),
            ("drain.quiet_min", d.quiet_min),
            ("drain.ramp_timeout", d.ramp_timeout),
            ("drain.hook_retry", d.hook_retry),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero".into()));
            }
        }
        for (key, value) in [
            ("drain.quiet_shares", Some(d.quiet_shares)),
            (
                "drain.ramp_workers_per_second",
                Some(d.ramp_workers_per_second),
            ),
            ("drain.ramp_watts_per_second", d.ramp_watts_per_second),
        ] {
            if let Some(value) = value {
                if !value.is_finite() || value <= 0.0 {
                    return Err(invalid(key, format!("{value} must be above zero")));
                }
            }
        }
        Ok(())
    }

    fn validate_hooks(&self, group_names: &HashSet<&str>) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
        for (i, hook) in self.hooks.iter().enumerate() {
            let key = |field: &str| format!("hook[{i}].{field}");
            if hook.events.is_empty() {
                return Err(invalid(
                    key("events"),
                    "name at least one of draining, drained, resuming, active".into(),
                ));
            }
            for (j, group) in hook.groups.iter().enumerate() {
                if group != crate::groups::DEFAULT_GROUP && !group_names.contains(group.as_str()) {
                    return Err(invalid(
                        key(&format!("groups[{j}]")),
                        format!("unknown group {group:?}"),
                    ));
                }
            }
            if hook.timeout.is_zero() {
                return Err(invalid(key("timeout"), "must be above zero".into()));
            }
            match (&hook.command, &hook.url) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("url"),
                        "a hook is either a command or a url, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        key("command"),
                        "set command = [\"/path\", \"arg\"] or url = \"http://...\"".into(),
                    ));
                }
                (Some(command), None) => {
                    if command.first().is_none_or(|program| program.is_empty()) {
                        return Err(invalid(key("command"), "names no program".into()));
                    }
                }
                (None, Some(url)) => {
                    if !url.starts_with("http://") {
                        return Err(invalid(
                            key("url"),
                            format!(
                                "{url:?}: only http:// webhooks are supported (https needs a \
                                 TLS-terminating proxy in front until TLS is built in)"
                            ),
                        ));
                    }
                }
            }
            if hook.command.is_some() && (hook.secret.is_some() || hook.secret_file.is_some()) {
                return Err(invalid(
                    key("secret"),
                    "only a webhook (url) is signed".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_windows(&self, group_names: &HashSet<&str>) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, spec) in self.windows.iter().enumerate() {
            let key = |field: &str| format!("window[{i}].{field}");
            if spec.name.is_empty() || !names.insert(spec.name.as_str()) {
                return Err(ConfigError::Invalid {
                    key: key("name"),
                    message: format!("{:?} must be a unique, non-empty name", spec.name),
                });
            }
            crate::groups::windows::Window::new(spec.clone(), true, |g| {
                g == crate::groups::DEFAULT_GROUP || group_names.contains(g)
            })
            .map_err(|e| ConfigError::Invalid {
                key: key(e.field),
                message: e.message,
            })?;
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

/// Parses `stratum+tcp://host:port` (the scheme may be omitted).
pub fn parse_stratum_url(url: &str) -> Result<(String, u16), String> {
    let rest = match url.split_once("://") {
        Some(("stratum+tcp", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "unsupported scheme {scheme:?} in {url:?}: expected stratum+tcp://host:port"
            ));
        }
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port: expected stratum+tcp://host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{url:?}: port {port:?} is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(format!("{url:?}: port 0 is not connectable"));
    }
    Ok((host.to_owned(), port))
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

impl fmt::Display for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.url)
    }
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
        assert_eq!(
            config.upstreams[0].endpoint().unwrap(),
            ("pool.example".into(), 3333)
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
