//! The engine's side of windows and capacity requests: a command from the API or a tick's
//! reconciliation goes to the schedules (`schedules/`), which decide; the drains and releases
//! they ask for ([`Intent`]s) are carried out here through the controller's own transitions.

use std::time::Instant;

use tracing::warn;

use super::handle::{ControlError, lock};
use super::schedules::{self, Answer, ClaimsView, Intent, Outcome, ScheduleCommand, Schedules};
use super::{GroupController, status};
use crate::clock::unix_ms;

impl GroupController {
    /// A window or capacity command from the API: the schedules decide, the engine makes the
    /// drains and releases, then the answer is sent.
    pub(super) fn on_schedule(&mut self, command: ScheduleCommand) {
        let now_ms = unix_ms();
        let view = ClaimsView::of(&self.groups, &self.records, Instant::now());
        let candidates = matches!(command, ScheduleCommand::CreateCapacity { .. })
            .then(|| {
                status::candidates(&self.groups, &self.records(), &self.observe_with(|_| true))
            })
            .unwrap_or_default();
        let (outcome, reply) = {
            let (records, orphans, file) = (&self.records, &self.orphans, &mut self.state_file);
            let mut save = |s: &Schedules| file.save(records, orphans, s);
            self.sched
                .take(command, now_ms, &view, candidates, &mut save)
        };
        let Outcome {
            reply: answer,
            intents,
        } = outcome;
        self.apply(intents);
        let answer = match answer {
            schedules::Reply::Now(answer) => answer,
            schedules::Reply::CapacityView(status, capacity) => {
                let statuses = lock(&self.status).clone();
                Answer::new(
                    status,
                    self.sched.capacity_view(
                        &capacity,
                        &statuses,
                        &self.ledger.state.claims,
                        unix_ms(),
                    ),
                )
            }
        };
        let _ = reply.send(answer);
        self.publish(&self.observe_all());
    }

    /// Each tick: the schedules' drains and releases for `now_ms`.
    pub(super) fn reconcile_schedules(&mut self, now_ms: u64, now: Instant) {
        let view = ClaimsView::of(&self.groups, &self.records, now);
        let reconciled = {
            let (records, orphans, file) = (&self.records, &self.orphans, &mut self.state_file);
            let mut save = |s: &Schedules| file.save(records, orphans, s);
            self.sched.reconcile(now_ms, &view, &mut save)
        };
        self.apply(reconciled.intents);
        self.metrics
            .groups
            .capacity_heartbeat_lapsed
            .set(reconciled.lapsed);
    }

    /// Carries out what the schedules asked for; a drain that cannot be made now is handed back.
    fn apply(&mut self, intents: Vec<Intent>) {
        for intent in intents {
            match intent {
                Intent::Drain { group, request } => {
                    let claim = request.claim.clone();
                    if let Err(error) = self.drain(&group, request) {
                        warn!(%group, %claim, %error, "drain not made yet");
                        self.forget_attempt(&group, &claim);
                    }
                }
                Intent::Release { group, claim } => match self.resume(&group, claim.clone(), false)
                {
                    Ok(_) | Err(ControlError::Held { .. }) => {}
                    Err(error) => warn!(%group, %claim, %error, "claim not released yet"),
                },
                Intent::Lapsed { group, claim } => {
                    if let Some(index) = self.index(&group) {
                        let state = self.record(&group).state;
                        self.log_event(
                            index,
                            "heartbeat_lapsed",
                            (state, state),
                            &claim.to_string(),
                            "the scheduler stopped renewing its lease; the group stays drained",
                        );
                    }
                }
            }
        }
    }
}
