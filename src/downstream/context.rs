//! What every session shares, built once before the first accept.

use std::sync::Arc;

use super::control::SessionControl;
use super::gate::GroupGates;
use crate::config::{DifficultyPolicy, Groups, ServerConfig};
use crate::metrics::Metrics;
use crate::router::RouterHandle;

/// The session settings, from `[server]`, `[difficulty]` and `api.per_worker_metrics`.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[difficulty]`, typed.
    pub difficulty: DifficultyPolicy,
    /// Whether sessions export per-worker series (`api.per_worker_metrics`).
    pub per_worker_metrics: bool,
}

/// What every session shares, read-only, built once before the first accept.
pub struct Downstream {
    /// How sessions behave.
    pub settings: SessionSettings,
    /// Where work comes from.
    pub router: RouterHandle,
    /// Counters.
    pub metrics: Metrics,
    /// The hardware groups miners are assigned to at authorize.
    pub groups: Groups,
    /// Live sessions and each group's gate.
    pub control: SessionControl,
}

impl Downstream {
    /// Everything the listener and its sessions share.
    pub fn new(
        settings: SessionSettings,
        router: RouterHandle,
        metrics: Metrics,
        groups: Groups,
        gates: Arc<GroupGates>,
    ) -> Self {
        metrics
            .miners
            .target_share_interval_seconds
            .set(settings.difficulty.target_share_interval.as_secs_f64());
        Self {
            settings,
            router,
            metrics,
            groups,
            control: SessionControl::new(Arc::default(), gates),
        }
    }
}
