//! The schedules' rules on plain data with an explicit clock: no controller, no sockets, no
//! waiting for wall time.

use std::cell::Cell;
use std::path::Path;

use super::*;
use crate::config::Config;
use crate::config::windows::format_time;
use crate::groups::capacity::{Candidate, EfficiencySource};

const T0: u64 = 1_900_000_000_000;
const MINUTE: u64 = 60_000;

fn schedules(extra: &str) -> Schedules {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"unused\"\n\n\
         [[upstream]]\nname = \"p\"\nurl = \"stratum+tcp://127.0.0.1:3333\"\nuser = \"u\"\n\n\
         [[group]]\nname = \"rack1\"\nworkers = [\"rack1.*\"]\nwatts_per_worker = 1000\n\n\
         [[group]]\nname = \"rack2\"\nworkers = [\"rack2.*\"]\nwatts_per_worker = 1000\n{extra}"
    );
    let config = Config::parse(&text, Path::new("test.toml"))
        .and_then(Config::validate)
        .expect("config");
    Schedules::new(&config, &PersistedState::default(), |g| {
        g == "rack1" || g == "rack2"
    })
}

fn view(held: &[(&str, Claim)], waiting: &[&str]) -> ClaimsView {
    let mut view = ClaimsView::default();
    for group in ["rack1", "rack2"] {
        view.groups.insert(
            group.to_owned(),
            GroupClaims {
                claims: held
                    .iter()
                    .filter(|(g, _)| *g == group)
                    .map(|(_, c)| c.clone())
                    .collect(),
                waiting: waiting.contains(&group),
            },
        );
    }
    view
}

fn window(name: &str, start: u64, end: u64) -> WindowSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "groups": ["rack1"],
        "start": format_time(start),
        "end": format_time(end),
    }))
    .expect("spec")
}

fn drains(intents: &[Intent]) -> Vec<(&str, &Claim)> {
    intents
        .iter()
        .filter_map(|i| match i {
            Intent::Drain { group, request } => Some((group.as_str(), &request.claim)),
            _ => None,
        })
        .collect()
}

fn releases(intents: &[Intent]) -> Vec<(&str, &Claim)> {
    intents
        .iter()
        .filter_map(|i| match i {
            Intent::Release { group, claim } => Some((group.as_str(), claim)),
            _ => None,
        })
        .collect()
}

fn ok(_: &Schedules) -> Result<(), StoreError> {
    Ok(())
}

#[test]
fn a_window_drains_its_groups_once_while_open_and_releases_them_when_it_closes() {
    let mut s = schedules("");
    let claim = Claim::Window("w".into());
    let created = s.create_window(
        window("w", T0 + MINUTE, T0 + 10 * MINUTE),
        None,
        T0,
        &view(&[], &[]),
        &mut ok,
    );
    assert!(matches!(
        created.reply,
        Reply::Now(Answer { status: 201, .. })
    ));
    assert!(created.intents.is_empty(), "nothing before its start");

    let before = s.reconcile(T0 + MINUTE - 1, &view(&[], &[]), &mut ok);
    assert!(before.intents.is_empty(), "{before:?}");

    let open = s.reconcile(T0 + MINUTE, &view(&[], &[]), &mut ok);
    assert_eq!(drains(&open.intents), [("rack1", &claim)]);
    // The drain is under way: it is not asked for twice, nor while the claim is held.
    let again = s.reconcile(T0 + 2 * MINUTE, &view(&[], &["rack1"]), &mut ok);
    assert!(again.intents.is_empty(), "{again:?}");
    let held = s.reconcile(
        T0 + 3 * MINUTE,
        &view(&[("rack1", claim.clone())], &[]),
        &mut ok,
    );
    assert!(held.intents.is_empty(), "{held:?}");
    // A forced resume during the span is not undone.
    let forced = s.reconcile(T0 + 4 * MINUTE, &view(&[], &[]), &mut ok);
    assert!(forced.intents.is_empty(), "{forced:?}");

    let closed = s.reconcile(
        T0 + 10 * MINUTE,
        &view(&[("rack1", claim.clone())], &[]),
        &mut ok,
    );
    assert_eq!(releases(&closed.intents), [("rack1", &claim)]);
}

#[test]
fn a_refused_window_drain_is_handed_back_and_asked_for_again() {
    let mut s = schedules("");
    s.create_window(
        window("w", T0, T0 + 10 * MINUTE),
        None,
        T0,
        &view(&[], &[]),
        &mut ok,
    );
    // Busy group: skipped, and asked for once it can take the step.
    let busy = s.reconcile(T0 + 1, &view(&[], &["rack1"]), &mut ok);
    assert!(busy.intents.is_empty());
    let first = s.reconcile(T0 + 2, &view(&[], &[]), &mut ok);
    assert_eq!(drains(&first.intents).len(), 1);
    assert!(
        s.inflight
            .contains(&("rack1".into(), Claim::Window("w".into())))
    );
    // The engine could not make it (a hook refused): handed back, tried again.
    assert!(s.forget_attempt("rack1", &Claim::Window("w".into())));
    assert!(s.inflight.is_empty());
    let retry = s.reconcile(T0 + 3, &view(&[], &[]), &mut ok);
    assert_eq!(drains(&retry.intents).len(), 1);
}

#[test]
fn a_failed_save_leaves_no_window_and_no_idempotency_key() {
    let mut s = schedules("");
    let mut failing = |_: &Schedules| -> Result<(), StoreError> {
        Err(StoreError::Write {
            path: "state.json".into(),
            source: std::io::Error::other("disk full"),
        })
    };
    let outcome = s.create_window(
        window("w", T0, T0 + MINUTE),
        Some("key-1".into()),
        T0,
        &view(&[], &[]),
        &mut failing,
    );
    assert!(matches!(
        outcome.reply,
        Reply::Now(Answer { status: 500, .. })
    ));
    assert!(s.windows.is_empty());
    assert!(s.idempotency.is_empty());
}

#[test]
fn an_idempotency_key_replays_its_answer_and_refuses_another_request() {
    let mut s = schedules("");
    let saves = Cell::new(0);
    let mut counting = |_: &Schedules| -> Result<(), StoreError> {
        saves.set(saves.get() + 1);
        Ok(())
    };
    let spec = window("w", T0 + MINUTE, T0 + 2 * MINUTE);
    let answer = |o: Outcome| match o.reply {
        Reply::Now(a) => a,
        Reply::CapacityView(..) => panic!("a window answers now"),
    };
    let first = answer(s.create_window(
        spec.clone(),
        Some("k".into()),
        T0,
        &view(&[], &[]),
        &mut counting,
    ));
    let writes = saves.get();
    let replay = answer(s.create_window(
        spec,
        Some("k".into()),
        T0 + 1,
        &view(&[], &[]),
        &mut counting,
    ));
    assert_eq!(first, replay);
    assert_eq!(saves.get(), writes, "a replay writes nothing");
    assert_eq!(s.windows.len(), 1);
    let other = answer(s.create_window(
        window("w2", T0 + MINUTE, T0 + 2 * MINUTE),
        Some("k".into()),
        T0 + 2,
        &view(&[], &[]),
        &mut counting,
    ));
    assert_eq!(other.status, 422);
}

fn candidate(group: &str, watts: f64) -> Candidate {
    Candidate {
        group: group.into(),
        watts,
        efficiency_j_per_th: Some(30.0),
        source: EfficiencySource::Declared,
        drain_priority: None,
        expected_drained_seconds: 60.0,
    }
}

fn request(json: serde_json::Value) -> CapacityRequest {
    serde_json::from_value(json).expect("request")
}

#[test]
fn a_capacity_request_drains_its_plan_ends_at_until_and_reports_a_lapsed_lease_once() {
    let mut s = schedules("");
    let outcome = s.create_capacity(
        request(serde_json::json!({
            "watts": 1000.0,
            "until": format_time(T0 + 60 * MINUTE),
            "resume_at_until": true,
            "heartbeat": "5m",
        })),
        None,
        vec![candidate("rack1", 1000.0), candidate("rack2", 5000.0)],
        T0,
        &view(&[], &[]),
        &mut ok,
    );
    let Reply::Now(answer) = &outcome.reply else {
        panic!("created answers now");
    };
    assert_eq!(answer.status, 201, "{answer:?}");
    let id = answer.body["id"].as_str().expect("id").to_owned();
    let claim = Claim::Capacity(id.clone());
    assert_eq!(drains(&outcome.intents), [("rack1", &claim)]);

    // Held: nothing more to do; the lease is renewed in time.
    let held = view(&[("rack1", claim.clone())], &[]);
    assert!(s.reconcile(T0 + MINUTE, &held, &mut ok).intents.is_empty());
    // Past the lease: one audit event per group, once; the count stays while it lapses.
    let lapsed = s.reconcile(T0 + 6 * MINUTE, &held, &mut ok);
    assert_eq!(lapsed.lapsed, 1);
    assert_eq!(
        lapsed.intents,
        [Intent::Lapsed {
            group: "rack1".into(),
            claim: claim.clone()
        }]
    );
    let still = s.reconcile(T0 + 7 * MINUTE, &held, &mut ok);
    assert_eq!((still.lapsed, still.intents.len()), (1, 0));
    // A heartbeat renews it.
    s.heartbeat(&id, T0 + 8 * MINUTE, &mut ok);
    assert_eq!(s.reconcile(T0 + 9 * MINUTE, &held, &mut ok).lapsed, 0);

    // At `until` the request ends and its group is released.
    let ended = s.reconcile(T0 + 60 * MINUTE, &held, &mut ok);
    assert_eq!(releases(&ended.intents), [("rack1", &claim)]);
    assert_eq!(s.capacity[0].state, "ended");
    // A claim left over on a group (its release was busy) is let go by a later tick.
    let orphan = s.reconcile(T0 + 61 * MINUTE, &held, &mut ok);
    assert_eq!(releases(&orphan.intents), [("rack1", &claim)]);
}

#[test]
fn a_group_planned_by_one_request_is_not_offered_to_another() {
    let mut s = schedules("");
    let first = s.create_capacity(
        request(serde_json::json!({"watts": 1000.0})),
        None,
        vec![candidate("rack1", 1000.0)],
        T0,
        &view(&[], &[]),
        &mut ok,
    );
    assert_eq!(drains(&first.intents).len(), 1);
    // rack1's drain has not committed yet: it is still offered as a candidate by the engine.
    let second = s.create_capacity(
        request(serde_json::json!({"watts": 1000.0})),
        None,
        vec![candidate("rack1", 1000.0)],
        T0 + 1,
        &view(&[], &["rack1"]),
        &mut ok,
    );
    let Reply::Now(answer) = second.reply else {
        panic!("answers now");
    };
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(second.intents.is_empty());
}
