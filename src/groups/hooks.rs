//! Hooks: the programs and webhooks that act on a group transition.
//!
//! hashgate cannot cut a machine's power: only its firmware or its PDU can. The `draining` hooks
//! are where the farm's tooling does that, the `drained` hooks tell the AI scheduler the power is
//! free, `resuming` wakes the machines and `active` says mining is back. A command is run without
//! a shell, with the transition in its environment and the group's miners in a JSON file; a
//! webhook gets the same as a JSON body signed with HMAC-SHA256. Each has a timeout; a command is
//! killed at it, a webhook is retried with backoff until it. Hooks of one event run in config
//! order, so "PDU off" can come before "tell the scheduler".

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde::Serialize;
use tracing::{info, warn};

use super::state::RosterEntry;
use crate::config::DrainMode;
use crate::config::{HookConfig, HookEvent};
use crate::metrics::Metrics;

/// Longest hook output logged, per stream.
const MAX_LOGGED_OUTPUT: usize = 4096;
/// First delay between webhook attempts (doubles up to [`WEBHOOK_BACKOFF_MAX`]).
const WEBHOOK_BACKOFF_MIN: Duration = Duration::from_millis(250);
const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why hooks could not be prepared at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookSetupError {
    /// `secret_file` unreadable.
    #[error("hook[{index}].secret_file {path}: {source}")]
    SecretFile {
        /// Which hook.
        index: usize,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A required hook failed: the transition does not happen.
#[derive(Debug, Clone, thiserror::Error)]
#[error("hook {hook} ({event}) failed: {message}")]
pub struct HookFailure {
    /// The hook's name.
    pub hook: String,
    /// The event.
    pub event: &'static str,
    /// What happened (exit status, timeout, HTTP status).
    pub message: String,
}

/// What a hook is told about the transition.
#[derive(Debug, Clone)]
pub struct HookContext {
    /// The transition.
    pub event: HookEvent,
    /// The group.
    pub group: String,
    /// The drain's reason.
    pub reason: String,
    /// The drain's mode.
    pub mode: Option<DrainMode>,
    /// Who asked (`manual`, `window ID`, `capacity ID`).
    pub trigger: String,
    /// Watts concerned: drawn before a drain, released when drained, coming back on resume,
    /// drawn when active again.
    pub watts: f64,
    /// Where `watts` comes from: `firmware` (every machine's own reading) or `declared`
    /// (`watts_per_worker`; no measurement for at least part of the group).
    pub watts_source: &'static str,
    /// The group's miners.
    pub roster: Vec<RosterEntry>,
}

/// The JSON a webhook receives (and the workers file, for its `miners` part).
#[derive(Debug, Serialize)]
struct WebhookBody<'a> {
    event: &'static str,
    group: &'a str,
    reason: &'a str,
    mode: Option<&'static str>,
    trigger: &'a str,
    workers: usize,
    watts: f64,
    watts_source: &'static str,
    miners: &'a [RosterEntry],
    time: String,
}

enum Action {
    Command(Vec<String>),
    Webhook { url: String, secret: Option<String> },
}

struct Hook {
    name: String,
    events: Vec<HookEvent>,
    groups: Vec<String>,
    timeout: Duration,
    required: bool,
    action: Action,
}

impl Hook {
    fn applies(&self, event: HookEvent, group: &str) -> bool {
        self.events.contains(&event)
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
    }
}

/// Runs the configured hooks.
pub struct HookRunner {
    hooks: Vec<Hook>,
    metrics: Metrics,
    workers_dir: PathBuf,
    files: AtomicU64,
}

impl HookRunner {
    /// Prepares `[[hook]]`s (reads secret files); workers files are written under `workers_dir`.
    pub fn new(
        configs: &[HookConfig],
        metrics: Metrics,
        workers_dir: PathBuf,
    ) -> Result<Self, HookSetupError> {
        let mut hooks = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let action = match (&config.command, &config.url) {
                (Some(command), _) => Action::Command(command.clone()),
                (None, Some(url)) => {
                    let secret = match (&config.secret, &config.secret_file) {
                        (Some(secret), _) => Some(secret.clone()),
                        (None, Some(path)) => {
                            Some(crate::config::read_secret_file(path).map_err(|source| {
                                HookSetupError::SecretFile {
                                    index,
                                    path: path.clone(),
                                    source,
                                }
                            })?)
                        }
                        (None, None) => None,
                    };
                    Action::Webhook {
                        url: url.clone(),
                        secret,
                    }
                }
                // Config validation refuses a hook with neither.
                (None, None) => continue,
            };
            hooks.push(Hook {
                name: config.display_name(),
                events: config.events.clone(),
                groups: config.groups.clone(),
                timeout: config.timeout,
                required: config.required,
                action,
            });
        }
        Ok(Self {
            hooks,
            metrics,
            workers_dir,
            files: AtomicU64::new(0),
        })
    }

    /// Whether any hook runs for this event and group (none: the transition is made at once).
    pub fn has_hooks(&self, event: HookEvent, group: &str) -> bool {
        self.hooks.iter().any(|h| h.applies(event, group))
    }

    /// Runs every hook for this event and group, in order. Err: a required hook failed (the hooks
    /// after it did not run; optional failures are logged and counted only).
    pub async fn run(&self, context: &HookContext) -> Result<(), HookFailure> {
        let mut failure = None;
        for hook in self
            .hooks
            .iter()
            .filter(|h| h.applies(context.event, &context.group))
        {
            let started = Instant::now();
            let outcome = match &hook.action {
                Action::Command(command) => self.run_command(hook, command, context).await,
                Action::Webhook { url, secret } => {
                    run_webhook(hook, url, secret.as_deref(), context).await
                }
            };
            let event = context.event.as_str();
            self.metrics
                .groups
                .hook_seconds
                .with_label_values(&[event])
                .observe(started.elapsed().as_secs_f64());
            let result = match &outcome {
                Ok(()) => "success",
                Err(HookError::Timeout) => "timeout",
                Err(HookError::Failed(_)) => "failure",
            };
            self.metrics
                .groups
                .hook_runs
                .with_label_values(&[event, result])
                .inc();
            match outcome {
                Ok(()) => {
                    info!(hook = %hook.name, event, group = %context.group, seconds = started.elapsed().as_secs_f64(), "hook ran")
                }
                Err(error) => {
                    let message = error.to_string();
                    warn!(hook = %hook.name, event, group = %context.group, required = hook.required, %message, "hook failed");
                    if hook.required {
                        // The hooks after it must not act on a transition that will not happen
                        // ("PDU off" failed: do not tell the scheduler the power is free).
                        failure = Some(HookFailure {
                            hook: hook.name.clone(),
                            event,
                            message,
                        });
                        break;
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    async fn run_command(
        &self,
        hook: &Hook,
        command: &[String],
        context: &HookContext,
    ) -> Result<(), HookError> {
        let Some((program, args)) = command.split_first() else {
            return Err(HookError::Failed("no program".into()));
        };
        let file = self.write_workers_file(context)?;
        let mut child = tokio::process::Command::new(program);
        child
            .args(args)
            .env("HASHGATE_EVENT", context.event.as_str())
            .env("HASHGATE_GROUP", &context.group)
            .env("HASHGATE_REASON", &context.reason)
            .env("HASHGATE_MODE", context.mode.map_or("", DrainMode::as_str))
            .env("HASHGATE_TRIGGER", &context.trigger)
            .env("HASHGATE_WORKERS", context.roster.len().to_string())
            .env("HASHGATE_WATTS", format!("{}", context.watts))
            .env("HASHGATE_WATTS_SOURCE", context.watts_source)
            .env("HASHGATE_WORKERS_FILE", &file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let outcome = match child.spawn() {
            Err(error) => Err(HookError::Failed(format!(
                "cannot start {program}: {error}"
            ))),
            // Dropping the output future at the timeout drops the child: kill_on_drop kills it.
            Ok(child) => match tokio::time::timeout(hook.timeout, child.wait_with_output()).await {
                Err(_) => Err(HookError::Timeout),
                Ok(Err(error)) => Err(HookError::Failed(error.to_string())),
                Ok(Ok(output)) => {
                    log_output(&hook.name, "stdout", &output.stdout);
                    log_output(&hook.name, "stderr", &output.stderr);
                    if output.status.success() {
                        Ok(())
                    } else {
                        Err(HookError::Failed(format!("exited with {}", output.status)))
                    }
                }
            },
        };
        let _ = std::fs::remove_file(&file);
        outcome
    }

    /// The group's miners as JSON, for `HASHGATE_WORKERS_FILE` (a farm has thousands: an
    /// environment variable cannot hold them).
    fn write_workers_file(&self, context: &HookContext) -> Result<PathBuf, HookError> {
        std::fs::create_dir_all(&self.workers_dir)
            .map_err(|e| HookError::Failed(format!("{}: {e}", self.workers_dir.display())))?;
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.workers_dir.join(format!(
            "{}-{}-{}-{n}.json",
            context.group,
            context.event.as_str(),
            std::process::id()
        ));
        let text = serde_json::to_vec_pretty(&context.roster)
            .map_err(|e| HookError::Failed(e.to_string()))?;
        std::fs::write(&path, text)
            .map_err(|e| HookError::Failed(format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

fn log_output(hook: &str, stream: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LOGGED_OUTPUT)]);
    info!(hook, stream, output = %text.trim_end(), "hook output");
}

/// The `X-Hashgate-Signature` value: `sha256=` and the hex HMAC-SHA256 of the body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn run_webhook(
    hook: &Hook,
    url: &str,
    secret: Option<&str>,
    context: &HookContext,
) -> Result<(), HookError> {
    let body = serde_json::to_vec(&WebhookBody {
        event: context.event.as_str(),
        group: &context.group,
        reason: &context.reason,
        mode: context.mode.map(DrainMode::as_str),
        trigger: &context.trigger,
        workers: context.roster.len(),
        watts: context.watts,
        watts_source: context.watts_source,
        miners: &context.roster,
        time: super::events::now_rfc3339(),
    })
    .map_err(|e| HookError::Failed(e.to_string()))?;
    let signature = secret.map(|s| signature(s, &body));
    // Config validation bounds the timeout; checked all the same (no panic on a huge value).
    let deadline = Instant::now()
        .checked_add(hook.timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 3600));
    let mut backoff = WEBHOOK_BACKOFF_MIN;
    let mut last_error = String::from("not sent");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HookError::Failed(format!(
                "timed out; last attempt: {last_error}"
            )));
        }
        let attempt = post_once(
            url.to_owned(),
            body.clone(),
            signature.clone(),
            context.event.as_str(),
            remaining,
        );
        match tokio::task::spawn_blocking(attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => last_error = error,
            Err(error) => last_error = error.to_string(),
        }
        let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(WEBHOOK_BACKOFF_MAX);
    }
}

/// One POST; Ok on a 2xx answer.
fn post_once(
    url: String,
    body: Vec<u8>,
    signature: Option<String>,
    event: &'static str,
    timeout: Duration,
) -> impl FnOnce() -> Result<(), String> {
    move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("X-Hashgate-Event", event);
        if let Some(signature) = &signature {
            request = request.header("X-Hashgate-Signature", signature);
        }
        match request.send(&body[..]) {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Where workers files go under the state directory.
pub fn workers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("hook-workers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_test_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
