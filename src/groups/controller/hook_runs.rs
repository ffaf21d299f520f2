//! A transition's hooks: what they are told (the group, the watts, the roster) and the task they
//! run in, which reports back to the controller when they are done.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::group::GroupRuntime;
use super::handle::Control;
use super::observe::Observed;
use super::status::watts;
use crate::config::HookEvent;
use crate::groups::hooks::{HookContext, HookFailure, HookRunner};
use crate::groups::state::{GroupRecord, GroupState, RosterEntry};

/// The hook event of a transition into `state`.
pub(super) fn event_for(state: GroupState) -> HookEvent {
    match state {
        GroupState::Draining => HookEvent::Draining,
        GroupState::Drained => HookEvent::Drained,
        GroupState::Resuming => HookEvent::Resuming,
        GroupState::Active => HookEvent::Active,
    }
}

/// What the hooks of `event` get: the watts it moves (all of them before a drain or a resume,
/// the released ones once drained, the drawn ones once active) and the miners concerned.
pub(super) fn context(
    runtime: &GroupRuntime,
    observed: &Observed,
    event: HookEvent,
    next: &GroupRecord,
    trigger: &str,
) -> HookContext {
    let now = watts(runtime, observed);
    let watts_now = now.total;
    let drain = next.drain.as_ref();
    let watts_before = drain.map_or(watts_now, |d| d.watts_before);
    let watts = match event {
        HookEvent::Draining | HookEvent::Resuming => watts_before,
        HookEvent::Drained => (watts_before - watts_now).max(0.0),
        HookEvent::Active => watts_now,
    };
    let roster = match event {
        HookEvent::Draining | HookEvent::Drained | HookEvent::Resuming => {
            drain.map(|d| d.roster.to_vec()).unwrap_or_default()
        }
        HookEvent::Active => observed
            .miners
            .iter()
            .map(|m| RosterEntry {
                name: m.name.to_string(),
                address: m.address.to_string(),
            })
            .collect(),
    };
    HookContext {
        event,
        group: runtime.name.to_string(),
        reason: drain.map(|d| d.reason.clone()).unwrap_or_default(),
        mode: drain.map(|d| d.mode),
        trigger: trigger.to_owned(),
        watts,
        // A figure before the drain (a draining or resuming hook) is the baseline recorded
        // then; the released and drawn ones rest on the source now.
        watts_source: now.source.as_str(),
        roster,
    }
}

/// Where a transition's hooks run: tracked by the proxy's tracker, on the proxy's runtime (not
/// the controller's own thread, which ends at shutdown), reporting to the controller.
pub(super) struct HookRuns {
    pub hooks: Arc<HookRunner>,
    pub tracker: TaskTracker,
    pub runtime: Handle,
    /// The controller's own command channel, for `HooksDone`.
    pub controller: mpsc::Sender<Control>,
}

impl HookRuns {
    /// Runs the hooks of `context` and sends their outcome to the controller as `HooksDone`
    /// with `token`. The run has a task of its own: if a hook runner panics, the transition
    /// still gets its answer (a failure) instead of staying pending and the group busy for good.
    pub(super) fn spawn(&self, context: HookContext, token: u64) {
        let group = context.group.clone();
        let event = context.event.as_str();
        let runs = self.tracker.clone();
        let on = self.runtime.clone();
        let hooks = Arc::clone(&self.hooks);
        let controller = self.controller.clone();
        self.tracker.spawn_on(
            async move {
                let result = runs
                    .spawn_on(async move { hooks.run(&context).await }, &on)
                    .await
                    .unwrap_or_else(|error| {
                        Err(HookFailure {
                            hook: "(hook runner)".into(),
                            event,
                            message: format!("the hook task failed: {error}"),
                        })
                    });
                let _ = controller
                    .send(Control::HooksDone {
                        group,
                        token,
                        result,
                    })
                    .await;
            },
            &self.runtime,
        );
    }
}
