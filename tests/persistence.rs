//! A drained group stays drained across a graceful restart and a `kill -9`, and a corrupt state
//! file stops hashgate instead of starting as if no drain existed. The `kill -9` case runs the
//! real binary and drives it with its own `drain`, `groups` and `resume` commands.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{self, Daemon, wait_until};
use common::{Http, RawMiner, blocking, config_for, pool_with, proxy, state_dir};
use hashgate::protocol::{Message, Method, Request};
use serde_json::Value;

const GROUPS: &str = r#"
[drain]
quiet_min = "300ms"
quiet_shares = 0.05
[[group]]
name = "c07"
workers = ["farm.c07-*"]
watts_per_worker = 3250.0
[[group]]
name = "gpu"
workers = ["farm.gpu-*"]
watts_per_worker = 1500.0
"#;

async fn state_of(proxy: &hashgate::proxy::Proxy, group: &str) -> String {
    let http = Arc::new(Http::new(proxy.api_addr));
    let path = format!("/api/v1/groups/{group}");
    let (_, text) = blocking(move || http.get(&path)).await;
    let view: Value = serde_json::from_str(&text).unwrap();
    view["state"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_group_stays_drained_across_a_restart() {
    let pool = pool_with(|c| {
        c.difficulty = 1.0;
        c.job_interval = Duration::from_millis(500);
    })
    .await;
    let dir = state_dir();
    let config = || {
        let mut config = config_for(&[&pool], GROUPS);
        config.state.dir = dir.clone();
        config
    };
    let first = proxy(config()).await;
    let http = Arc::new(Http::new(first.api_addr));
    let (status, body) = blocking(move || {
        http.post_json(
            "/api/v1/groups/c07/drain",
            None,
            r#"{"mode":"pause","reason":"row maintenance"}"#,
        )
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&first, "c07").await != "drained" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.shutdown().await;

    let second = proxy(config()).await;
    assert_eq!(state_of(&second, "c07").await, "drained");
    // A c07 miner that reconnects after the restart gets no work; a gpu miner does.
    let mut c07 = RawMiner::connect(&second).await;
    c07.send(r#"{"id":1,"method":"mining.subscribe","params":["bmminer/2.0"]}"#)
        .await;
    c07.send(r#"{"id":2,"method":"mining.authorize","params":["farm.c07-0001","x"]}"#)
        .await;
    let mut gpu = RawMiner::connect(&second).await;
    gpu.handshake("farm.gpu-0001").await;
    let seen = c07.collect_for(Duration::from_millis(1500)).await;
    assert!(
        !seen.iter().any(|m| matches!(
            m,
            Message::Request(Request {
                method: Method::Notify(_),
                ..
            })
        )),
        "a drained group got work after a restart: {seen:?}"
    );
    // The audit log survived too.
    let events = second.groups.events(0, Some("c07"), 100);
    assert_eq!(events.len(), 2, "{events:?}");
    second.shutdown().await;

    // The drained group's [[group]] removed from the config: hashgate refuses to start rather
    // than let its machines mine under `default`.
    let mut without_c07 = config();
    without_c07.groups.retain(|g| g.name != "c07");
    let error = match hashgate::proxy::Proxy::start(without_c07).await {
        Ok(_) => panic!("started with a drained group no longer configured"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("state.json") && error.contains("c07") && error.contains("drained"),
        "{error}"
    );

    // A corrupt state file stops hashgate with an error naming it.
    std::fs::write(
        dir.join("state.json"),
        "{\"version\": 1, \"groups\": {\"c07\": ",
    )
    .unwrap();
    let error = match hashgate::proxy::Proxy::start(config()).await {
        Ok(_) => panic!("started on a corrupt state file"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("state.json") && error.contains("corrupt"),
        "{error}"
    );
}

fn cli(args: &[&str], api: std::net::SocketAddr) -> (bool, String) {
    let out = daemon::hashgate()
        .args(args)
        .args(["--api", &format!("http://{api}")])
        .env("HASHGATE_API_TOKEN", "t0ken")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Authorizes a c07 worker over a plain socket and returns the authorize answer line.
fn authorize_answer(miners: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(miners).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n{\"id\":2,\"method\":\"mining.authorize\",\"params\":[\"farm.c07-0001\",\"x\"]}\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        if line.contains("\"id\":2") {
            return line;
        }
    }
}

#[test]
fn a_drain_survives_kill_9_and_the_cli_drives_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = runtime
        .block_on(hashgate::sim::SimPool::start(
            hashgate::sim::SimPoolConfig::default(),
        ))
        .unwrap();
    let dir = state_dir();
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n[state]\ndir = \"{}\"\n{GROUPS}\n[[upstream]]\nname = \"p\"\nurl = \"{}\"\nuser = \"u\"\n",
            dir.display(),
            pool.url()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let api = daemon.api;

    let (ok, text) = cli(
        &[
            "drain",
            "c07",
            "--mode",
            "disconnect",
            "--reason",
            "AI lease 12",
        ],
        api,
    );
    assert!(ok, "{text}");
    assert!(text.contains("c07: draining"), "{text}");
    let (ok, text) = cli(&["drain", "nope", "--mode", "pause"], api);
    assert!(
        !ok && text.contains("no group") && text.contains("404"),
        "{text}"
    );

    // kill -9: no chance to write anything more.
    daemon.kill();
    let daemon = Daemon::start(&config);
    let (miners, api) = (daemon.miners, daemon.api);
    wait_until("c07 drained after the restart", || {
        let (ok, text) = cli(&["groups"], api);
        assert!(ok, "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("c07"))
            .unwrap_or("")
            .to_owned();
        assert!(
            line.contains("draining") || line.contains("drained"),
            "c07 lost its drain: {text}"
        );
        if !line.contains("drained") {
            return false;
        }
        assert!(
            line.contains("disconnect") && line.contains("AI lease 12"),
            "{text}"
        );
        true
    });
    let refused = authorize_answer(miners);
    assert!(refused.contains("24"), "drained after kill -9: {refused}");

    let (ok, text) = cli(&["resume", "c07"], api);
    assert!(ok, "{text}");
    wait_until("c07 active", || {
        let (_, text) = cli(&["groups"], api);
        text.lines()
            .any(|l| l.starts_with("c07") && l.contains("active"))
    });
    let answer = authorize_answer(miners);
    assert!(answer.contains("\"result\":true"), "{answer}");
    daemon.kill();
    drop(pool);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_saved_is_not_applied() {
    let pool = pool_with(|c| c.difficulty = 1.0).await;
    let mut config = config_for(&[&pool], GROUPS);
    let dir = state_dir();
    config.state.dir = dir.clone();
    let proxy = proxy(config).await;
    let mut c07 = RawMiner::connect(&proxy).await;
    c07.handshake("farm.c07-0001").await;
    // The state directory goes away (a full or failed disk, an unmounted volume).
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let http = Arc::new(Http::new(proxy.api_addr));
    let h = Arc::clone(&http);
    let (status, body) =
        blocking(move || h.post_json("/api/v1/groups/c07/drain", None, r#"{"mode":"pause"}"#))
            .await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("not applied"), "{body}");
    assert_eq!(state_of(&proxy, "c07").await, "active");
    assert!(proxy.metrics.groups.state_save_failures.get() >= 1);
    // The miner still mines: the drain was not applied.
    let share = c07.find_share(1, true, None);
    c07.send(&RawMiner::submit_line(5, "farm.c07-0001", &share))
        .await;
    assert!(c07.response(hashgate::protocol::Id::from(5)).await.is_ok());
    // With the directory back, the drain goes through.
    std::fs::remove_file(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let (status, body) =
        blocking(move || http.post_json("/api/v1/groups/c07/drain", None, r#"{"mode":"pause"}"#))
            .await;
    assert_eq!(status, 200, "{body}");
    proxy.shutdown().await;
}
