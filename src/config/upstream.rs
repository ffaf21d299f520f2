//! `[[upstream]]` and `[failover]`: the pools and how their connections are timed.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;
use super::error::{ConfigError, invalid};

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
    /// Host and port from the url (checked by `validate`; the error names the key).
    pub fn endpoint(&self) -> Result<Endpoint, ConfigError> {
        Endpoint::parse(&self.url).map_err(|message| ConfigError::Invalid {
            key: format!("upstream[{}].url", self.name),
            message,
        })
    }
}

/// A pool's host and port, parsed from `stratum+tcp://host:port` once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl Endpoint {
    /// Parses `stratum+tcp://host:port` (the scheme may be omitted); the message says what is
    /// wrong.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        parse_stratum_url(url).map(|(host, port)| Endpoint { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits `host:port` (`[v6]:port` too): a `reconnect_to` target.
pub fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
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

impl fmt::Display for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.url)
    }
}

impl FailoverConfig {
    /// Backoff in order, every timeout above zero.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let f = self;
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
        Ok(())
    }
}

/// At least one pool; names unique; urls, users and limits usable.
pub(super) fn validate_upstreams(upstreams: &[UpstreamConfig]) -> Result<(), ConfigError> {
    if upstreams.is_empty() {
        return Err(invalid(
            "upstream",
            "at least one [[upstream]] is required".into(),
        ));
    }
    let mut names = HashSet::new();
    for (i, upstream) in upstreams.iter().enumerate() {
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
    Ok(())
}
