//! The rules of a group's record under a drain or a release, as pure functions of the record
//! (the engine in `mod.rs` runs hooks, makes the result durable and sets the gate).

use std::collections::HashSet;

use super::handle::DrainRequest;
use super::observe::Observed;
use crate::groups::state::{Claim, Drain, GroupRecord, GroupState, RosterEntry};

/// A drain asked of a group already draining or drained: the claim joins it (`claim_added`);
/// an operator's own drain may change its mode (`mode_changed`; a window or capacity request
/// joining keeps the mode). `None` when nothing changes.
pub(super) fn joined(
    current: &GroupRecord,
    request: &DrainRequest,
) -> Option<(GroupRecord, &'static str)> {
    let mut next = current.clone();
    let mut kind = None;
    if next.claims.insert(request.claim.clone()) {
        kind = Some("claim_added");
    }
    if let Some(drain) = next
        .drain
        .as_mut()
        .filter(|_| request.claim == Claim::Manual)
        && (drain.mode != request.mode || drain.reconnect_to != request.reconnect_to)
    {
        drain.mode = request.mode;
        drain.reconnect_to = request.reconnect_to.clone();
        kind = Some("mode_changed");
    }
    kind.map(|kind| (next, kind))
}

/// The record of a group starting to drain at `now_ms` from active or resuming (a new drain
/// stops a ramp; the miners the ramp still waited for stay on the roster), drawing
/// `watts_before` now.
pub(super) fn draining(
    current: &GroupRecord,
    request: DrainRequest,
    observed: &Observed,
    watts_before: f64,
    now_ms: u64,
) -> GroupRecord {
    let mut roster: Vec<RosterEntry> = observed
        .miners
        .iter()
        .map(|m| RosterEntry {
            name: m.name.to_string(),
            address: m.address.to_string(),
        })
        .collect();
    if current.state == GroupState::Resuming {
        let present: HashSet<String> = roster.iter().map(|r| r.name.clone()).collect();
        for entry in current.drain.iter().flat_map(|d| d.roster.iter()) {
            if !present.contains(&entry.name) {
                roster.push(entry.clone());
            }
        }
    }
    GroupRecord {
        state: GroupState::Draining,
        since: now_ms / 1000,
        drain: Some(Drain {
            mode: request.mode,
            reason: request.reason,
            reconnect_to: request.reconnect_to,
            started_at_ms: now_ms,
            watts_before,
            roster: roster.into(),
            verified: false,
        }),
        claims: [request.claim].into(),
    }
}

/// What releasing `claim` (every claim with `force`) does to a draining or drained group.
#[derive(Debug, PartialEq)]
pub(super) enum Release {
    /// No claim is left: the group resumes with this record.
    Resume(GroupRecord),
    /// Claims are left; `released` (the new record) when this claim was one of them.
    Held {
        /// The record without the released claim, if it held it.
        released: Option<GroupRecord>,
        /// The claims still holding it.
        left: Vec<String>,
    },
}

/// The record of a draining group once drained, at `now_ms`: `verified` when its measured
/// power proved it.
pub(super) fn drained(current: &GroupRecord, verified: bool, now_ms: u64) -> GroupRecord {
    let mut next = GroupRecord {
        state: GroupState::Drained,
        since: now_ms / 1000,
        ..current.clone()
    };
    if let Some(drain) = next.drain.as_mut() {
        drain.verified = verified;
    }
    next
}

/// Releases `claim` (or every claim with `force`) at `now_ms`.
pub(super) fn released(current: &GroupRecord, claim: &Claim, force: bool, now_ms: u64) -> Release {
    let mut claims = current.claims.clone();
    let released = if force {
        let any = !claims.is_empty();
        claims.clear();
        any
    } else {
        claims.remove(claim)
    };
    if claims.is_empty() {
        return Release::Resume(GroupRecord {
            state: GroupState::Resuming,
            since: now_ms / 1000,
            drain: current.drain.clone(),
            claims,
        });
    }
    let left = claims.iter().map(Claim::to_string).collect();
    Release::Held {
        released: released.then(|| GroupRecord {
            claims,
            ..current.clone()
        }),
        left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DrainMode;

    fn request(claim: Claim, mode: DrainMode) -> DrainRequest {
        DrainRequest {
            mode,
            reason: "test".into(),
            reconnect_to: None,
            claim,
        }
    }

    #[test]
    fn claims_join_a_drain_and_only_the_last_release_resumes() {
        let window = Claim::Window("w".into());
        let start = draining(
            &GroupRecord::default(),
            request(Claim::Manual, DrainMode::Pause),
            &Observed::default(),
            3250.0,
            1_000_000,
        );
        assert_eq!((start.state, start.since), (GroupState::Draining, 1000));
        // A window joins; it does not change the operator's mode.
        let (joined_record, kind) =
            joined(&start, &request(window.clone(), DrainMode::Disconnect)).expect("joins");
        assert_eq!(kind, "claim_added");
        assert_eq!(
            joined_record.drain.as_ref().map(|d| d.mode),
            Some(DrainMode::Pause)
        );
        assert_eq!(
            joined(&joined_record, &request(window.clone(), DrainMode::Pause)),
            None
        );
        // The operator changes the mode.
        let (_, kind) = joined(
            &joined_record,
            &request(Claim::Manual, DrainMode::Disconnect),
        )
        .expect("changes");
        assert_eq!(kind, "mode_changed");
        // The window lets go: still held by the operator.
        let Release::Held {
            released: Some(held),
            left,
        } = released(&joined_record, &window, false, 2_000_000)
        else {
            panic!("held by manual");
        };
        assert_eq!(left, ["manual"]);
        // A claim it does not hold: nothing released, still held.
        assert_eq!(
            released(&held, &window, false, 2_000_000),
            Release::Held {
                released: None,
                left: vec!["manual".into()]
            }
        );
        let Release::Resume(resuming) = released(&held, &Claim::Manual, false, 3_000_000) else {
            panic!("the last claim resumes");
        };
        assert_eq!(
            (resuming.state, resuming.since),
            (GroupState::Resuming, 3000)
        );
        assert_eq!(
            resuming.drain, held.drain,
            "the roster goes with the resume"
        );
        // force releases everything at once.
        assert!(matches!(
            released(&joined_record, &Claim::Manual, true, 0),
            Release::Resume(_)
        ));
    }
}
