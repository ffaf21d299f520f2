//! `[server]`, `[api]` and `[state]`: where hashgate listens and keeps its files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;
use super::error::{ConfigError, invalid};

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
    /// Bytes waiting for a miner that does not read before it is disconnected (on top of the
    /// kernel's send buffer); a miner that reads holds none.
    #[serde(default = "defaults::write_buffer_bytes")]
    pub write_buffer_bytes: usize,
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

impl ServerConfig {
    /// The listener's bounds (line length, extranonce sizes, queues).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
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
        if let Some(size) = s.extranonce_prefix_size
            && !(1..=4).contains(&size)
        {
            return Err(invalid(
                "server.extranonce_prefix_size",
                format!("{size} is not between 1 and 4"),
            ));
        }
        if s.socket_send_buffer < 4096 {
            return Err(invalid(
                "server.socket_send_buffer",
                format!("{} is below 4096 bytes", s.socket_send_buffer),
            ));
        }
        if s.write_buffer_bytes < s.max_line_bytes {
            return Err(invalid(
                "server.write_buffer_bytes",
                format!(
                    "must hold at least one line (server.max_line_bytes = {})",
                    s.max_line_bytes
                ),
            ));
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
        Ok(())
    }
}

impl ApiConfig {
    /// A non-loopback API needs a token.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.token.is_none() && self.token_file.is_none() {
            return Err(invalid(
                "api.listen",
                format!(
                    "{} is not a loopback address: set api.token or api.token_file",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
