//! `[[group]]`: machines wired together, and the compiled rules that put a miner in one.
//!
//! A miner's group is decided once, at authorize, from the first `[[group]]` whose rules match
//! its worker name (glob), address (CIDR) or user agent (glob); unmatched miners are in
//! `default`. The rules are compiled here, with the config, so the session that applies them and
//! the controller that drains groups both read one typed value.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;

use serde::Deserialize;

use super::error::{ConfigError, invalid};
use super::management::{Management, ManagementConfig, PowerSourceChoice};

/// The group of unmatched miners.
pub const DEFAULT_GROUP: &str = "default";

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
    /// Where the group's power figure comes from.
    #[serde(default)]
    pub power_source: PowerSourceChoice,
    /// Sleep the group's machines through their firmware once its work has stopped, and wake
    /// them on resume.
    #[serde(default)]
    pub sleep: bool,
    /// Watts one machine draws asleep: a machine at or below it counts as off (else the
    /// firmware's own "asleep" is taken).
    #[serde(default)]
    pub idle_watts_per_worker: Option<f64>,
    /// Where the machines' management APIs are, and their credentials.
    #[serde(default)]
    pub management: ManagementConfig,
}

/// Why the groups could not be compiled (config validation reports the same, by key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A glob does not compile.
    #[error("group {group}: pattern {pattern:?}: {source}")]
    Glob {
        /// The group.
        group: String,
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// A CIDR does not parse.
    #[error("group {group}: address {cidr:?} is not a CIDR")]
    Cidr {
        /// The group.
        group: String,
        /// The text.
        cidr: String,
    },
    /// `[group.management]` does not compile (a mapping, a password that cannot be read).
    #[error(transparent)]
    Management(#[from] ConfigError),
}

/// One group's rules and figures.
#[derive(Debug, Clone)]
pub struct Group {
    /// Name.
    pub name: Arc<str>,
    /// ASIC or GPU.
    pub kind: GroupKind,
    /// Watts one mining worker draws.
    pub watts_per_worker: f64,
    /// Declared J/TH.
    pub efficiency_j_per_th: Option<f64>,
    /// Drain order among equals.
    pub drain_priority: Option<i32>,
    /// Where its power figure comes from.
    pub power_source: PowerSourceChoice,
    /// Whether its machines sleep when drained.
    pub sleep: bool,
    /// Watts one machine draws asleep.
    pub idle_watts_per_worker: Option<f64>,
    /// Where its machines are managed.
    pub management: Management,
    workers: Vec<GlobMatcher>,
    addresses: Vec<IpNet>,
    user_agents: Vec<GlobMatcher>,
}

impl Group {
    fn matches(&self, worker: &str, address: IpAddr, user_agent: Option<&str>) -> bool {
        self.workers.iter().any(|g| g.is_match(worker))
            || self.addresses.iter().any(|net| net.contains(&address))
            || user_agent.is_some_and(|ua| self.user_agents.iter().any(|g| g.is_match(ua)))
    }
}

/// The configured groups, in match order, plus `default` last.
#[derive(Debug, Clone)]
pub struct Groups {
    groups: Vec<Group>,
}

impl Groups {
    /// Compiles the `[[group]]` sections.
    pub fn new(configs: &[GroupConfig]) -> Result<Self, GroupError> {
        let mut groups = Vec::with_capacity(configs.len() + 1);
        for (i, config) in configs.iter().enumerate() {
            let glob = |pattern: &String| {
                Glob::new(pattern)
                    .map(|g| g.compile_matcher())
                    .map_err(|source| GroupError::Glob {
                        group: config.name.clone(),
                        pattern: pattern.clone(),
                        source,
                    })
            };
            groups.push(Group {
                name: Arc::from(config.name.as_str()),
                kind: config.kind,
                watts_per_worker: config.watts_per_worker,
                efficiency_j_per_th: config.efficiency_j_per_th,
                drain_priority: config.drain_priority,
                power_source: config.power_source,
                sleep: config.sleep,
                idle_watts_per_worker: config.idle_watts_per_worker,
                management: Management::new(&config.management, i)?,
                workers: config.workers.iter().map(glob).collect::<Result<_, _>>()?,
                user_agents: config
                    .user_agents
                    .iter()
                    .map(glob)
                    .collect::<Result<_, _>>()?,
                addresses: config
                    .addresses
                    .iter()
                    .map(|cidr| {
                        cidr.parse().map_err(|_| GroupError::Cidr {
                            group: config.name.clone(),
                            cidr: cidr.clone(),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            });
        }
        if !groups.iter().any(|g| &*g.name == DEFAULT_GROUP) {
            groups.push(Group {
                name: Arc::from(DEFAULT_GROUP),
                kind: GroupKind::default(),
                watts_per_worker: 0.0,
                efficiency_j_per_th: None,
                drain_priority: None,
                power_source: PowerSourceChoice::Declared,
                sleep: false,
                idle_watts_per_worker: None,
                management: Management::default(),
                workers: Vec::new(),
                addresses: Vec::new(),
                user_agents: Vec::new(),
            });
        }
        Ok(Self { groups })
    }

    /// The group of a miner: the first whose rules match, else `default`.
    pub fn assign(&self, worker: &str, address: IpAddr, user_agent: Option<&str>) -> &Group {
        self.groups
            .iter()
            .find(|g| &*g.name != DEFAULT_GROUP && g.matches(worker, address, user_agent))
            .unwrap_or_else(|| self.default_group())
    }

    /// The `default` group.
    pub fn default_group(&self) -> &Group {
        self.groups
            .iter()
            .find(|g| &*g.name == DEFAULT_GROUP)
            .expect("Groups::new always adds the default group")
    }

    /// Every group, configured order, `default` included.
    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter()
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new(&[]).expect("no patterns to compile")
    }
}

/// Names valid and unique, rules that compile, figures that are numbers; returns the names.
pub(super) fn validate_groups(groups: &[GroupConfig]) -> Result<HashSet<&str>, ConfigError> {
    let mut group_names = HashSet::new();
    for (i, group) in groups.iter().enumerate() {
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
            cidr.parse::<ipnet::IpNet>()
                .map_err(|e| invalid(&key(&format!("addresses[{j}]")), format!("{cidr:?}: {e}")))?;
        }
        if !group.watts_per_worker.is_finite() || group.watts_per_worker < 0.0 {
            return Err(invalid(
                &key("watts_per_worker"),
                format!("{} must be a number of watts >= 0", group.watts_per_worker),
            ));
        }
        if let Some(efficiency) = group.efficiency_j_per_th
            && (!efficiency.is_finite() || efficiency <= 0.0)
        {
            return Err(invalid(
                &key("efficiency_j_per_th"),
                format!("{efficiency} must be above zero"),
            ));
        }
        let rates = [
            ("ramp_workers_per_second", group.ramp_workers_per_second),
            ("ramp_watts_per_second", group.ramp_watts_per_second),
        ];
        for (field, rate) in rates {
            if let Some(rate) = rate
                && (!rate.is_finite() || rate <= 0.0)
            {
                return Err(invalid(&key(field), format!("{rate} must be above zero")));
            }
        }
        if group.drain_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid(&key("drain_timeout"), "must be above zero".into()));
        }
        if let Some(idle) = group.idle_watts_per_worker
            && (!idle.is_finite() || idle < 0.0)
        {
            return Err(invalid(
                &key("idle_watts_per_worker"),
                format!("{idle} must be a number of watts >= 0"),
            ));
        }
        if group.sleep && group.power_source == PowerSourceChoice::Declared {
            return Err(invalid(
                &key("sleep"),
                "sleep needs a measured power source to prove it (power_source = \"declared\")"
                    .into(),
            ));
        }
        Management::new(&group.management, i)?;
    }
    Ok(group_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, workers: &[&str], addresses: &[&str], agents: &[&str]) -> GroupConfig {
        GroupConfig {
            name: name.into(),
            workers: workers.iter().map(|s| s.to_string()).collect(),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            user_agents: agents.iter().map(|s| s.to_string()).collect(),
            kind: GroupKind::Asic,
            watts_per_worker: 3250.0,
            efficiency_j_per_th: None,
            drain_priority: None,
            drain_timeout: None,
            ramp_workers_per_second: None,
            ramp_watts_per_second: None,
            power_source: PowerSourceChoice::Auto,
            sleep: false,
            idle_watts_per_worker: None,
            management: ManagementConfig::default(),
        }
    }

    #[test]
    fn first_match_wins_and_the_rest_is_default() {
        let groups = Groups::new(&[
            group("c07", &["farm.c07-*"], &[], &[]),
            group("row-b", &[], &["10.2.0.0/16"], &[]),
            group("bitaxes", &[], &[], &["bitaxe*"]),
            group("catch-10", &[], &["10.0.0.0/8"], &[]),
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            &*groups.assign("farm.c07-0042", ip("10.2.1.1"), None).name,
            "c07"
        );
        assert_eq!(
            &*groups.assign("farm.x", ip("10.2.1.1"), None).name,
            "row-b"
        );
        assert_eq!(
            &*groups
                .assign("farm.x", ip("192.168.1.9"), Some("bitaxe/BM1366"))
                .name,
            "bitaxes"
        );
        assert_eq!(
            &*groups.assign("farm.x", ip("10.9.9.9"), None).name,
            "catch-10"
        );
        assert_eq!(
            &*groups
                .assign("farm.x", ip("192.168.1.9"), Some("bmminer"))
                .name,
            "default"
        );
        assert_eq!(groups.iter().count(), 5);
    }

    #[test]
    fn a_configured_default_keeps_its_watts() {
        let mut default = group("default", &[], &[], &[]);
        default.watts_per_worker = 1200.0;
        let groups = Groups::new(&[default]).unwrap();
        assert_eq!(groups.default_group().watts_per_worker, 1200.0);
        assert_eq!(groups.iter().count(), 1);
    }
}
