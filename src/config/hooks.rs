//! `[[hook]]`: programs and webhooks run on group transitions (the farm's power switch and the
//! AI scheduler's signal).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;
use super::error::ConfigError;
use super::groups::DEFAULT_GROUP;

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

pub(super) fn validate_hooks(
    hooks: &[HookConfig],
    group_names: &HashSet<&str>,
) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    for (i, hook) in hooks.iter().enumerate() {
        let key = |field: &str| format!("hook[{i}].{field}");
        if hook.events.is_empty() {
            return Err(invalid(
                key("events"),
                "name at least one of draining, drained, resuming, active".into(),
            ));
        }
        for (j, group) in hook.groups.iter().enumerate() {
            if group != DEFAULT_GROUP && !group_names.contains(group.as_str()) {
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
