//! Which group a miner belongs to.
//!
//! A miner's group is decided once, at authorize, from the first `[[group]]` whose rules match
//! its worker name (glob), address (CIDR) or user agent (glob); unmatched miners are in
//! `default`.

use std::net::IpAddr;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use ipnet::IpNet;

use crate::config::{GroupConfig, GroupKind};

/// The group of unmatched miners.
pub const DEFAULT_GROUP: &str = "default";

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
        for config in configs {
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
