//! A group's power settings: where its figure comes from (`power_source`), whether its machines
//! sleep when drained (`sleep`), what "off" draws (`idle_watts_per_worker`), and where each
//! machine's management API is (`[group.management]`: ports, a CIDR mapping or a per-worker
//! table for miners behind NAT, credentials). Compiled once into [`Management`], which maps a
//! miner's Stratum source address to the address of its firmware.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// Where a group's power figure comes from (Foreman's ranking: a meter, then the machines'
/// own readings, then the declared `watts_per_worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PowerSourceChoice {
    /// The best source available: a meter of the group, else firmware readings, else declared.
    #[default]
    Auto,
    /// Only the group's meter.
    Meter,
    /// Only the machines' firmware readings.
    Firmware,
    /// Only `watts_per_worker` (no firmware is asked for power).
    Declared,
}

/// One CIDR mapping: a miner connecting from `from` is managed at the same host in `to`
/// (`from = "100.64.7.0/24"`, `to = "10.7.0.0/24"`: 100.64.7.12 is managed at 10.7.0.12).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressMapConfig {
    /// The network miners connect from, as hashgate sees them.
    pub from: String,
    /// The network their management APIs are on.
    pub to: String,
}

/// `[group.management]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ManagementConfig {
    /// The ESP-Miner web API's port (80 by default; a forwarded or simulated one otherwise).
    #[serde(default)]
    pub web_port: Option<u16>,
    /// The cgminer-compatible API's port (4028 by default).
    #[serde(default)]
    pub rpc_port: Option<u16>,
    /// CIDR mappings from the Stratum source address, first match wins.
    #[serde(default)]
    pub map: Vec<AddressMapConfig>,
    /// Per-worker management addresses (worker name -> IP), before the mappings.
    #[serde(default)]
    pub workers: BTreeMap<String, String>,
    /// The firmware's user, for makes whose API needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the firmware's password (read at start, never logged).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the firmware's password.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// A firmware password: its text is never printed, by `Debug` or anything else.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The text, for the one call that sends it to a firmware.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A group's firmware credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user (`root` when none is configured).
    pub username: String,
    /// The password.
    pub password: Secret,
}

/// A group's management addressing, compiled.
#[derive(Debug, Clone, Default)]
pub struct Management {
    /// The web API's port, when not the standard one.
    pub web_port: Option<u16>,
    /// The cgminer API's port, when not the standard one.
    pub rpc_port: Option<u16>,
    map: Vec<(IpNet, IpNet)>,
    workers: BTreeMap<String, IpAddr>,
    /// Credentials, when configured.
    pub credentials: Option<Arc<Credentials>>,
}

impl Management {
    /// Compiles `[group.management]` of group `i`; the password is read here, once.
    pub fn new(config: &ManagementConfig, i: usize) -> Result<Management, ConfigError> {
        let key = |field: &str| format!("group[{i}].management.{field}");
        let mut map = Vec::with_capacity(config.map.len());
        for (j, entry) in config.map.iter().enumerate() {
            let net = |field: &str, text: &str| {
                text.parse::<IpNet>().map_err(|e| {
                    invalid(&key(&format!("map[{j}].{field}")), format!("{text:?}: {e}"))
                })
            };
            let (from, to) = (net("from", &entry.from)?, net("to", &entry.to)?);
            if from.prefix_len() != to.prefix_len()
                || matches!(
                    (from, to),
                    (IpNet::V4(_), IpNet::V6(_)) | (IpNet::V6(_), IpNet::V4(_))
                )
            {
                return Err(invalid(
                    &key(&format!("map[{j}].to")),
                    format!("{to} must be the same family and size as {from}"),
                ));
            }
            map.push((from, to));
        }
        let mut workers = BTreeMap::new();
        for (worker, text) in &config.workers {
            let ip = text.parse::<IpAddr>().map_err(|e| {
                invalid(&key(&format!("workers.{worker}")), format!("{text:?}: {e}"))
            })?;
            workers.insert(worker.clone(), ip);
        }
        for (field, port) in [("web_port", config.web_port), ("rpc_port", config.rpc_port)] {
            if port == Some(0) {
                return Err(invalid(&key(field), "0 is not a port".into()));
            }
        }
        let password =
            match (&config.password_file, &config.password_env) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key("password_env"),
                        "set password_file or password_env, not both".into(),
                    ));
                }
                (Some(path), None) => Some(super::read_secret_file(path).map_err(|e| {
                    invalid(&key("password_file"), format!("{}: {e}", path.display()))
                })?),
                (None, Some(var)) => Some(
                    std::env::var(var)
                        .map_err(|e| invalid(&key("password_env"), format!("${var}: {e}")))?,
                ),
                (None, None) => None,
            };
        let credentials = match (password, &config.username) {
            (Some(password), username) => Some(Arc::new(Credentials {
                username: username.clone().unwrap_or_else(|| "root".into()),
                password: Secret(password),
            })),
            (None, Some(_)) => {
                return Err(invalid(
                    &key("username"),
                    "a username needs password_file or password_env".into(),
                ));
            }
            (None, None) => None,
        };
        Ok(Management {
            web_port: config.web_port,
            rpc_port: config.rpc_port,
            map,
            workers,
            credentials,
        })
    }

    /// Where the machine of `worker`, connected from `source`, is managed: its per-worker
    /// entry, else the first mapping whose `from` holds `source` (host bits kept), else
    /// `source` itself.
    pub fn address_of(&self, worker: &str, source: IpAddr) -> IpAddr {
        if let Some(ip) = self.workers.get(worker) {
            return *ip;
        }
        for (from, to) in &self.map {
            if from.contains(&source) {
                return map_host(source, *from, *to);
            }
        }
        source
    }
}

/// `source`'s host bits in `from`, placed in `to` (same family and prefix length).
fn map_host(source: IpAddr, from: IpNet, to: IpNet) -> IpAddr {
    match (source, from, to) {
        (IpAddr::V4(ip), IpNet::V4(from), IpNet::V4(to)) => {
            let host = u32::from(ip) & u32::from(from.hostmask());
            IpAddr::V4(std::net::Ipv4Addr::from(u32::from(to.network()) | host))
        }
        (IpAddr::V6(ip), IpNet::V6(from), IpNet::V6(to)) => {
            let host = u128::from(ip) & u128::from(from.hostmask());
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(to.network()) | host))
        }
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_nat_mapping_keeps_the_host_and_a_worker_entry_comes_first() {
        let config = ManagementConfig {
            map: vec![
                AddressMapConfig {
                    from: "100.64.7.0/24".into(),
                    to: "10.7.0.0/24".into(),
                },
                AddressMapConfig {
                    from: "fd00:1::/64".into(),
                    to: "fd00:7::/64".into(),
                },
            ],
            workers: [("farm.c07-001".to_owned(), "10.9.9.9".to_owned())].into(),
            ..ManagementConfig::default()
        };
        let m = Management::new(&config, 0).unwrap();
        assert_eq!(m.address_of("x", ip("100.64.7.12")), ip("10.7.0.12"));
        assert_eq!(m.address_of("x", ip("100.64.7.255")), ip("10.7.0.255"));
        assert_eq!(m.address_of("x", ip("fd00:1::42")), ip("fd00:7::42"));
        assert_eq!(m.address_of("x", ip("192.168.1.5")), ip("192.168.1.5"));
        assert_eq!(
            m.address_of("farm.c07-001", ip("100.64.7.12")),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn mappings_of_different_sizes_and_bad_entries_name_their_key() {
        let config = ManagementConfig {
            map: vec![AddressMapConfig {
                from: "100.64.0.0/16".into(),
                to: "10.7.0.0/24".into(),
            }],
            ..ManagementConfig::default()
        };
        let error = Management::new(&config, 2).unwrap_err().to_string();
        assert!(
            error.starts_with("group[2].management.map[0].to:"),
            "{error}"
        );
        let config = ManagementConfig {
            workers: [("a".to_owned(), "not-an-ip".to_owned())].into(),
            ..ManagementConfig::default()
        };
        let error = Management::new(&config, 0).unwrap_err().to_string();
        assert!(
            error.starts_with("group[0].management.workers.a:"),
            "{error}"
        );
    }

    #[test]
    fn a_password_is_read_once_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("hashgate-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        let config = ManagementConfig {
            password_file: Some(file),
            ..ManagementConfig::default()
        };
        let m = Management::new(&config, 0).unwrap();
        let credentials = m.credentials.as_ref().unwrap();
        assert_eq!(credentials.username, "root");
        assert_eq!(credentials.password.expose(), "hunter2");
        assert!(!format!("{m:?}").contains("hunter2"));
        let missing = ManagementConfig {
            password_file: Some(dir.join("absent")),
            ..ManagementConfig::default()
        };
        let error = Management::new(&missing, 1).unwrap_err().to_string();
        assert!(
            error.starts_with("group[1].management.password_file:"),
            "{error}"
        );
        assert!(!error.contains("hunter2"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
