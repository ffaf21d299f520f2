//! Hardware groups on the wire: drains in each mode with miners of two groups, drained
//! detection, resume ramps, and the API that drives them. Real TCP miners through the real proxy
//! to a real TCP pool.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Api, RawMiner, TOKEN, config_for, eventually, pool_with, proxy, wait_power};
use hashgate::protocol::{Id, Message, Method, Request};
use hashgate::sim::{SimMinerConfig, SimMinerStats, run_sim_miner};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Two groups, quick quiet periods and a ramp of 2 miners a second. A raw miner here submits a
/// share or two by hand, so its measured hashrate makes an expected share interval of many
/// seconds: `quiet_shares` is cut so tests wait well under a second of silence.
const GROUPS: &str = r#"
[drain]
quiet_min = "600ms"
quiet_shares = 0.05
timeout = "20s"
ramp_workers_per_second = 2.0
[[group]]
name = "c07"
workers = ["farm.c07-*"]
watts_per_worker = 3250.0
efficiency_j_per_th = 30.0
[[group]]
name = "gpu"
workers = ["farm.gpu-*"]
kind = "gpu"
watts_per_worker = 1500.0
"#;

async fn farm(extra: &str) -> (hashgate::sim::SimPool, hashgate::proxy::Proxy, Api) {
    let pool = pool_with(|c| {
        c.difficulty = 1.0;
        c.job_interval = Duration::from_millis(700);
        c.clean_every = 1000;
    })
    .await;
    let mut config = config_for(&[&pool], &format!("{GROUPS}{extra}"));
    config.api.token = Some(TOKEN.into());
    let proxy = proxy(config).await;
    let api = Api::new(&proxy);
    (pool, proxy, api)
}

/// Submits a share on the miner's newest job and returns the answer.
async fn submit(miner: &mut RawMiner, worker: &str, id: u64, extranonce2: u64) -> bool {
    let share = miner.find_share(extranonce2, true, None);
    miner.send(&RawMiner::submit_line(id, worker, &share)).await;
    miner.response(Id::from(id)).await.is_ok()
}

fn notifies(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Request(Request {
                    method: Method::Notify(_),
                    ..
                })
            )
        })
        .count()
}

fn transitions(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").to_owned(),
                e["to"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_drain_stops_new_work_for_one_group_while_the_other_mines_then_resumes() {
    let (_pool, proxy, api) = farm("").await;
    let mut c07 = RawMiner::connect(&proxy).await;
    c07.handshake("farm.c07-0001").await;
    let mut gpu = RawMiner::connect(&proxy).await;
    gpu.handshake("farm.gpu-0001").await;
    wait_power(&proxy, "c07", 3250.0).await;
    wait_power(&proxy, "gpu", 1500.0).await;

    let (status, body) = api
        .drain("c07", r#"{"mode":"pause","reason":"AI training window"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining");
    assert_eq!(body["watts_before"], 3250.0);

    // Work already given still counts: a share on the job the miner has is accepted.
    assert!(submit(&mut c07, "farm.c07-0001", 10, 1).await);
    // No new work for the paused group, while the other group keeps getting jobs and mining.
    let (c07_seen, gpu_seen) = tokio::join!(
        c07.collect_for(Duration::from_millis(2000)),
        gpu.collect_for(Duration::from_millis(2000))
    );
    assert_eq!(
        notifies(&c07_seen),
        0,
        "paused miner got work: {c07_seen:?}"
    );
    assert!(
        notifies(&gpu_seen) >= 2,
        "gpu miner got no new jobs: {gpu_seen:?}"
    );
    assert!(submit(&mut gpu, "farm.gpu-0001", 11, 2).await);

    // The paused miner has been silent past its quiet period: drained, its watts released.
    let drained = api.wait_state("c07", "drained").await;
    assert_eq!(drained["released_watts"], 3250.0, "{drained}");
    assert_eq!(drained["power_watts"], 0.0, "{drained}");
    assert_eq!(
        proxy
            .metrics
            .groups
            .released_watts
            .with_label_values(&["c07"])
            .get(),
        3250.0
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .state
            .with_label_values(&["c07", "drained"])
            .get(),
        1
    );
    assert_eq!(api.group("gpu").await["state"], "active");

    // Draining again is idempotent: same answer, no new transition.
    let (status, again) = api
        .drain("c07", r#"{"mode":"pause","reason":"AI training window"}"#)
        .await;
    assert_eq!((status, &again["state"]), (200, &Value::from("drained")));

    let (status, body) = api.resume("c07").await;
    assert_eq!(status, 200, "{body}");
    // The miner gets a clean job again, and the group is active once it is back.
    let job = c07.notification("mining.notify").await;
    match job.method {
        Method::Notify(notify) => assert!(notify.clean_jobs, "resume sends a clean job"),
        other => panic!("{other:?}"),
    }
    api.wait_state("c07", "active").await;
    assert!(submit(&mut c07, "farm.c07-0001", 12, 3).await);

    let events = api.events("c07").await;
    assert_eq!(
        transitions(&events),
        [
            ("active", "draining"),
            ("draining", "drained"),
            ("drained", "resuming"),
            ("resuming", "active")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{events:?}"
    );
    let drained_event = &events[1];
    assert_eq!(drained_event["trigger"], "quiet");
    assert_eq!(drained_event["released_watts"], 3250.0);
    assert_eq!(events[0]["reason"], "AI training window");
    assert_eq!(events[0]["watts_before"], 3250.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_drain_closes_the_group_and_refuses_it_until_resumed() {
    let (_pool, proxy, api) = farm("").await;
    let mut c07 = RawMiner::connect(&proxy).await;
    c07.handshake("farm.c07-0001").await;
    let mut gpu = RawMiner::connect(&proxy).await;
    gpu.handshake("farm.gpu-0001").await;

    let (status, body) = api
        .drain("c07", r#"{"mode":"disconnect","reason":"PDU swap"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let message = c07.notification("client.show_message").await;
    match message.method {
        Method::ShowMessage(text) => assert!(text.contains("PDU swap"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(
        c07.closed().await,
        "the drained miner's connection is closed"
    );

    // It comes back (its firmware reconnects): told why, refused, closed.
    let mut back = RawMiner::connect(&proxy).await;
    back.send(r#"{"id":1,"method":"mining.subscribe","params":["bmminer/2.0"]}"#)
        .await;
    back.send(r#"{"id":2,"method":"mining.authorize","params":["farm.c07-0001","x"]}"#)
        .await;
    let refused = back.response(Id::from(2)).await;
    assert!(!refused.is_ok(), "a drained group's miner is refused");
    assert_eq!(refused.error.as_ref().map(|e| e.code), Some(24));
    assert!(back.closed().await);
    assert!(
        back.received.iter().any(|m| matches!(
            m,
            Message::Request(Request {
                method: Method::ShowMessage(_),
                ..
            })
        )),
        "refused miner is told why"
    );
    // The other group mines on.
    assert!(submit(&mut gpu, "farm.gpu-0001", 10, 1).await);

    let drained = api.wait_state("c07", "drained").await;
    assert!(
        drained["refused_reconnects"].as_u64() >= Some(1),
        "{drained}"
    );
    assert_eq!(
        drained["refused_miners"][0]["name"], "farm.c07-0001",
        "{drained}"
    );
    assert_eq!(drained["refused_miners"][0]["count"], 1, "{drained}");
    assert_eq!(
        proxy
            .metrics
            .groups
            .refused_miners
            .with_label_values(&["c07"])
            .get(),
        1
    );

    // Not after a reconnect either: only a resume lets it back.
    let (status, _) = api.resume("c07").await;
    assert_eq!(status, 200);
    let mut returning = RawMiner::connect(&proxy).await;
    returning.handshake("farm.c07-0001").await;
    api.wait_state("c07", "active").await;
    assert!(submit(&mut returning, "farm.c07-0001", 11, 2).await);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_drain_sends_the_group_elsewhere() {
    let (_pool, proxy, api) = farm("").await;
    let mut c07 = RawMiner::connect(&proxy).await;
    c07.handshake("farm.c07-0001").await;
    let mut gpu = RawMiner::connect(&proxy).await;
    gpu.handshake("farm.gpu-0001").await;

    let (status, body) = api
        .drain(
            "c07",
            r#"{"mode":"reconnect","reason":"to the backup farm pool"}"#,
        )
        .await;
    assert_eq!(status, 400, "reconnect needs a target: {body}");
    let (status, body) = api
        .drain(
            "c07",
            r#"{"mode":"reconnect","reason":"to the backup","reconnect_to":"10.9.0.5:3334"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reconnect = c07.notification("client.reconnect").await;
    match reconnect.method {
        Method::Reconnect(r) => {
            assert_eq!(r.host.as_deref(), Some("10.9.0.5"));
            assert_eq!(r.port, Some(3334));
        }
        other => panic!("{other:?}"),
    }
    assert!(c07.closed().await);
    assert!(submit(&mut gpu, "farm.gpu-0001", 10, 1).await);
    let drained = api.wait_state("c07", "drained").await;
    assert_eq!(drained["mode"], "reconnect");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_that_keeps_hashing_is_reported_and_the_drain_times_out() {
    let (_pool, proxy, api) = farm("[[group]]\nname = \"row9\"\nworkers = [\"farm.row9-*\"]\nwatts_per_worker = 100.0\ndrain_timeout = \"3s\"\n").await;
    let cancel = CancellationToken::new();
    let stats = Arc::new(SimMinerStats::default());
    tokio::spawn(run_sim_miner(
        SimMinerConfig::new(proxy.miner_addr, "farm.row9-0001", 200_000.0),
        Arc::clone(&stats),
        cancel.clone(),
    ));
    eventually("the miner submits", || {
        stats.accepted.load(Ordering::Relaxed) >= 3
    })
    .await;
    let (status, _) = api.drain("row9", r#"{"mode":"pause"}"#).await;
    assert_eq!(status, 200);
    // Paused, it keeps hashing its last job (no firmware sleep): hashgate says who.
    let deadline = Instant::now() + Duration::from_secs(10);
    let draining = loop {
        let body = api.group("row9").await;
        if body["still_hashing"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "never reported as hashing: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(draining["state"], "draining");
    assert_eq!(draining["still_hashing"][0]["name"], "farm.row9-0001");
    let started = Instant::now();
    let drained = api.wait_state("row9", "drained").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained at drain_timeout"
    );
    assert!(!drained["still_hashing"].as_array().unwrap().is_empty());
    let events = api.events("row9").await;
    let timeout = events
        .iter()
        .find(|e| e["kind"] == "drain_timeout")
        .expect("a drain_timeout event");
    assert!(
        timeout["detail"]
            .as_str()
            .unwrap()
            .contains("farm.row9-0001"),
        "{timeout}"
    );
    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_admits_miners_at_the_ramp() {
    let (_pool, proxy, api) = farm("").await;
    let mut miners = Vec::new();
    for i in 0..4 {
        let mut miner = RawMiner::connect(&proxy).await;
        miner.handshake(&format!("farm.c07-{i:04}")).await;
        miners.push(miner);
    }
    wait_power(&proxy, "c07", 13_000.0).await;
    let (status, _) = api.drain("c07", r#"{"mode":"pause"}"#).await;
    assert_eq!(status, 200);
    api.wait_state("c07", "drained").await;
    for miner in &mut miners {
        miner.collect_for(Duration::from_millis(10)).await;
    }
    let resumed = Instant::now();
    let (status, _) = api.resume("c07").await;
    assert_eq!(status, 200);
    // 2 miners a second: the first at once, the fourth about 1.5 s later.
    let mut arrivals = Vec::new();
    for miner in &mut miners {
        // Admitted in session order; a job already waiting is read at once.
        miner.notification("mining.notify").await;
        arrivals.push(resumed.elapsed());
    }
    arrivals.sort();
    assert!(arrivals[0] < Duration::from_millis(900), "{arrivals:?}");
    assert!(
        arrivals[3] >= Duration::from_millis(1300),
        "the ramp was not respected: {arrivals:?}"
    );
    assert!(arrivals[3] < Duration::from_secs(4), "{arrivals:?}");
    let active = api.wait_state("c07", "active").await;
    assert_eq!(active["power_watts"], 13_000.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_without_token_unknown_groups_and_bad_bodies() {
    let (_pool, proxy, api) = farm("").await;
    let (status, body) = api
        .post("/api/v1/groups/c07/drain", None, r#"{"mode":"pause"}"#)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = api
        .post("/api/v1/groups/c07/resume", Some("wrong"), "")
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = api.drain("nope", r#"{"mode":"pause"}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, body) = api.get("/api/v1/groups/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.drain("c07", r#"{"mode":"sleep"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("mode")
            || body["error"].as_str().unwrap().contains("sleep"),
        "{body}"
    );
    let (status, body) = api.resume("c07").await;
    assert_eq!(
        (status, &body["state"]),
        (200, &Value::from("active")),
        "resuming an active group changes nothing"
    );
    assert!(api.events("c07").await.is_empty());
    let (status, body) = api.get("/api/v1/events?format=csv").await;
    assert_eq!(status, 200);
    assert!(
        body.as_str().unwrap().starts_with("seq,time,group"),
        "{body}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_agent_sent_after_authorize_still_decides_the_group() {
    let (_pool, proxy, api) = farm(
        "[[group]]\nname = \"bitaxes\"\nuser_agents = [\"bitaxe*\"]\nwatts_per_worker = 15.0\n",
    )
    .await;
    let (status, body) = api
        .drain("bitaxes", r#"{"mode":"disconnect","reason":"desk power"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    // Authorize first (no user agent yet: it would be `default`), then subscribe as a Bitaxe.
    let mut miner = RawMiner::connect(&proxy).await;
    miner
        .send(r#"{"id":1,"method":"mining.authorize","params":["desk.1","x"]}"#)
        .await;
    assert!(miner.response(Id::from(1)).await.is_ok());
    miner
        .send(r#"{"id":2,"method":"mining.subscribe","params":["bitaxe/BM1366/v2.4"]}"#)
        .await;
    assert!(miner.closed().await, "the drained group's miner is closed");
    assert!(
        !miner.received.iter().any(|m| matches!(
            m,
            Message::Request(Request {
                method: Method::Notify(_),
                ..
            })
        )),
        "it got no work: {:?}",
        miner.received
    );
    assert!(
        miner.received.iter().any(|m| matches!(
            m,
            Message::Request(Request {
                method: Method::ShowMessage(_),
                ..
            })
        )),
        "it was told why"
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .refused_miners
            .with_label_values(&["bitaxes"])
            .get(),
        1
    );
    proxy.shutdown().await;
}
