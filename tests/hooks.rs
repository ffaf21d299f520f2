//! Hooks on group transitions: a command with the documented environment and workers file, a
//! signed webhook received by a real HTTP server, and required hooks that stop a transition.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::{Api, RawMiner, TOKEN, config_for, eventually, pool_with, proxy, wait_power};
use hmac::{KeyInit, Mac};
use serde_json::Value;

const GROUPS: &str = r#"
[drain]
quiet_min = "500ms"
quiet_shares = 0.05
[[group]]
name = "c07"
workers = ["farm.c07-*"]
watts_per_worker = 3250.0
[[group]]
name = "gpu"
workers = ["farm.gpu-*"]
kind = "gpu"
watts_per_worker = 1500.0
[[group]]
name = "row9"
workers = ["farm.row9-*"]
watts_per_worker = 100.0
"#;

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hashgate-hooks-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_env(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_hooks_get_the_transition_and_the_workers_file() {
    let dir = temp("command");
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        "out=\"$1/$HASHGATE_EVENT\"\n\
         for v in HASHGATE_EVENT HASHGATE_GROUP HASHGATE_REASON HASHGATE_WORKERS HASHGATE_WATTS HASHGATE_MODE HASHGATE_TRIGGER; do\n\
           eval \"echo $v=\\$$v\" >> \"$out.env\"\n\
         done\n\
         cp \"$HASHGATE_WORKERS_FILE\" \"$out.workers.json\"\n\
         echo \"slept the machines\"\n",
    )
    .unwrap();
    let pool = pool_with(|c| c.difficulty = 1.0).await;
    let extra = format!(
        "{GROUPS}[[hook]]\nevents = [\"draining\", \"drained\", \"resuming\", \"active\"]\ngroups = [\"c07\"]\ntimeout = \"5s\"\nrequired = true\ncommand = [\"/bin/sh\", \"{}\", \"{}\"]\n",
        script.display(),
        dir.display()
    );
    let mut config = config_for(&[&pool], &extra);
    config.api.token = Some(TOKEN.into());
    let proxy = proxy(config).await;
    let api = Api::new(&proxy);
    let mut miner = RawMiner::connect(&proxy).await;
    miner.handshake("farm.c07-0042").await;
    wait_power(&proxy, "c07", 3250.0).await;

    let (status, body) = api
        .post_token(
            "/api/v1/groups/c07/drain",
            r#"{"mode":"pause","reason":"AI job 7"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining", "the draining hook ran first");
    let env = read_env(&dir.join("draining.env"));
    let get = |env: &[(String, String)], key: &str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{key} missing from {env:?}"))
    };
    assert_eq!(get(&env, "HASHGATE_EVENT"), "draining");
    assert_eq!(get(&env, "HASHGATE_GROUP"), "c07");
    assert_eq!(get(&env, "HASHGATE_REASON"), "AI job 7");
    assert_eq!(get(&env, "HASHGATE_WORKERS"), "1");
    assert_eq!(get(&env, "HASHGATE_WATTS"), "3250");
    assert_eq!(get(&env, "HASHGATE_MODE"), "pause");
    assert_eq!(get(&env, "HASHGATE_TRIGGER"), "manual");
    let workers: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("draining.workers.json")).unwrap())
            .unwrap();
    assert_eq!(workers[0]["name"], "farm.c07-0042");
    assert!(
        workers[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // The drained hook carries the released watts: the AI scheduler's signal.
    // Wait for the state the resume needs (the drained transition commits once its hook has
    // ended), not for the hook's file, which the script writes before it ends.
    api.wait_state("c07", "drained").await;
    let env = read_env(&dir.join("drained.env"));
    assert_eq!(get(&env, "HASHGATE_WATTS"), "3250");
    let (status, _) = api.post_token("/api/v1/groups/c07/resume", "").await;
    assert_eq!(status, 200);
    eventually("the active hook", || dir.join("active.env").exists()).await;
    assert!(dir.join("resuming.env").exists());
    assert_eq!(
        proxy
            .metrics
            .groups
            .hook_runs
            .with_label_values(&["draining", "success"])
            .get(),
        1
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .hook_seconds
            .with_label_values(&["drained"])
            .get_sample_count(),
        1
    );
    // The workers file is removed after the hook.
    let workers_dir = proxy_state_dir(&proxy);
    eventually("the workers files removed", || {
        std::fs::read_dir(&workers_dir).map_or(true, |mut d| d.next().is_none())
    })
    .await;
    proxy.shutdown().await;
}

/// The hook workers-file directory of a running proxy's state dir.
fn proxy_state_dir(proxy: &hashgate::proxy::Proxy) -> std::path::PathBuf {
    hashgate::groups::hooks::workers_dir(&proxy.state_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_required_hook_blocks_the_transition() {
    let dir = temp("blocking");
    let after = dir.join("after-pdu-ran").display().to_string();
    let pool = pool_with(|c| c.difficulty = 1.0).await;
    let extra = format!(
        "{GROUPS}\
         [[hook]]\nname = \"pdu-off\"\nevents = [\"draining\"]\ngroups = [\"gpu\"]\nrequired = true\ncommand = [\"/bin/sh\", \"-c\", \"echo PDU unreachable >&2; exit 3\"]\n\
         [[hook]]\nname = \"after-pdu\"\nevents = [\"draining\"]\ngroups = [\"gpu\"]\ncommand = [\"/usr/bin/touch\", \"{after}\"]\n\
         [[hook]]\nname = \"slow\"\nevents = [\"draining\"]\ngroups = [\"row9\"]\nrequired = true\ntimeout = \"500ms\"\ncommand = [\"/bin/sleep\", \"30\"]\n\
         [[hook]]\nname = \"optional\"\nevents = [\"draining\"]\ngroups = [\"c07\"]\ncommand = [\"/bin/false\"]\n"
    );
    let mut config = config_for(&[&pool], &extra);
    config.api.token = Some(TOKEN.into());
    let proxy = proxy(config).await;
    let api = Api::new(&proxy);
    let mut gpu = RawMiner::connect(&proxy).await;
    gpu.handshake("farm.gpu-0001").await;

    let (status, body) = api
        .post_token("/api/v1/groups/gpu/drain", r#"{"mode":"pause"}"#)
        .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("pdu-off") && message.contains("exit"),
        "{message}"
    );
    let view = api.group("gpu").await;
    assert_eq!(view["state"], "active", "{view}");
    assert!(
        !std::path::Path::new(&after).exists(),
        "a hook after the failed required one must not run"
    );
    assert!(
        view["last_error"].as_str().unwrap().contains("pdu-off"),
        "{view}"
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .blocked_transitions
            .with_label_values(&["gpu", "draining"])
            .get(),
        1
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .hook_runs
            .with_label_values(&["draining", "failure"])
            .get(),
        1
    );
    // The group still mines: its miner gets the next job's work and shares are accepted.
    let share = gpu.find_share(1, true, None);
    gpu.send(&RawMiner::submit_line(9, "farm.gpu-0001", &share))
        .await;
    assert!(gpu.response(hashgate::protocol::Id::from(9)).await.is_ok());

    // A hook that hangs is killed at its timeout and blocks the same way.
    let started = Instant::now();
    let (status, body) = api
        .post_token("/api/v1/groups/row9/drain", r#"{"mode":"pause"}"#)
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        body["error"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
    assert_eq!(
        proxy
            .metrics
            .groups
            .hook_runs
            .with_label_values(&["draining", "timeout"])
            .get(),
        1
    );
    // An optional hook's failure is counted but does not stop the drain.
    let (status, body) = api
        .post_token("/api/v1/groups/c07/drain", r#"{"mode":"pause"}"#)
        .await;
    assert_eq!((status, &body["state"]), (200, &Value::from("draining")));
    proxy.shutdown().await;
}

/// What the test webhook server received.
#[derive(Default)]
struct Received {
    requests: Vec<(HeaderMap, Vec<u8>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_until_accepted() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let received = Arc::clone(&received);
                async move {
                    let mut received = received.lock().unwrap();
                    received.requests.push((headers, body.to_vec()));
                    // The scheduler is briefly down: the first attempt fails.
                    if received.requests.len() == 1 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pool = pool_with(|c| c.difficulty = 1.0).await;
    let extra = format!(
        "{GROUPS}[[hook]]\nevents = [\"drained\"]\ntimeout = \"10s\"\nrequired = true\nurl = \"http://{hook_addr}/hook\"\nsecret = \"scheduler-key\"\n"
    );
    let mut config = config_for(&[&pool], &extra);
    config.api.token = Some(TOKEN.into());
    let proxy = proxy(config).await;
    let api = Api::new(&proxy);
    let mut miner = RawMiner::connect(&proxy).await;
    miner.handshake("farm.c07-0001").await;
    wait_power(&proxy, "c07", 3250.0).await;
    let (status, _) = api
        .post_token(
            "/api/v1/groups/c07/drain",
            r#"{"mode":"disconnect","reason":"inference burst"}"#,
        )
        .await;
    assert_eq!(status, 200);
    eventually("the webhook accepted", || {
        received.lock().unwrap().requests.len() >= 2
    })
    .await;
    let view = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = api.group("c07").await;
            if view["state"] == "drained" {
                break view;
            }
            assert!(Instant::now() < deadline, "{view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(view["released_watts"], 3250.0);
    let requests = std::mem::take(&mut received.lock().unwrap().requests);
    for (headers, body) in &requests {
        let signature = headers["x-hashgate-signature"].to_str().unwrap();
        let hex_mac = signature.strip_prefix("sha256=").expect("sha256= prefix");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"scheduler-key").unwrap();
        mac.update(body);
        mac.verify_slice(&hex::decode(hex_mac).unwrap())
            .expect("a valid HMAC-SHA256 of the body");
        assert_eq!(headers["x-hashgate-event"], "drained");
        assert_eq!(headers["content-type"], "application/json");
    }
    let body: Value = serde_json::from_slice(&requests[1].1).unwrap();
    assert_eq!(body["event"], "drained");
    assert_eq!(body["group"], "c07");
    assert_eq!(body["reason"], "inference burst");
    assert_eq!(body["mode"], "disconnect");
    assert_eq!(body["workers"], 1);
    assert_eq!(body["watts"], 3250.0);
    assert_eq!(body["miners"][0]["name"], "farm.c07-0001");
    proxy.shutdown().await;
}

/// The example hook in deploy/hooks (the one the README tells operators to adapt) runs as shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_hook_script_runs_through_a_drain_and_resume() {
    let dir = temp("example");
    let log = dir.join("hooks.log");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/hooks/hashgate-hook.sh");
    let pool = pool_with(|c| c.difficulty = 1.0).await;
    let extra = format!(
        "{GROUPS}[[hook]]\nevents = [\"draining\", \"drained\", \"resuming\", \"active\"]\nrequired = true\ncommand = [\"/usr/bin/env\", \"HASHGATE_HOOK_LOG={}\", \"/bin/sh\", \"{script}\"]\n",
        log.display()
    );
    let mut config = config_for(&[&pool], &extra);
    config.api.token = Some(TOKEN.into());
    let proxy = proxy(config).await;
    let api = Api::new(&proxy);
    let mut miners = Vec::new();
    for worker in ["farm.c07-0001", "farm.c07-0002"] {
        let mut miner = RawMiner::connect(&proxy).await;
        miner.handshake(worker).await;
        miners.push(miner);
    }
    wait_power(&proxy, "c07", 6500.0).await;
    let (status, body) = api
        .post_token(
            "/api/v1/groups/c07/drain",
            r#"{"mode":"pause","reason":"inference"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the drained line", || {
        read().contains("released for AI work")
    })
    .await;
    let (status, _) = api.post_token("/api/v1/groups/c07/resume", "").await;
    assert_eq!(status, 200);
    eventually("the active line", || read().contains("mining again")).await;
    let text = read();
    assert_eq!(
        text.matches("would sleep 127.0.0.1").count(),
        2,
        "one sleep per miner: {text}"
    );
    assert!(
        text.contains("draining c07: 2 miner(s), 6500 W: inference"),
        "{text}"
    );
    assert!(
        text.contains("drained c07: 6500 W released for AI work"),
        "{text}"
    );
    assert_eq!(text.matches("would wake 127.0.0.1").count(), 2, "{text}");
    proxy.shutdown().await;
}
