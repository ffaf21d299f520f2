//! The HTTP API on a running proxy with traffic, through a real HTTP client.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Http, blocking, config_for, eventually, pool, proxy, wait_power};
use hashgate::api::{GroupView, UpstreamReport, WorkersPage};
use hashgate::downstream::WorkerSnapshot;
use hashgate::sim::{SimMinerConfig, SimMinerStats, run_sim_miner};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_on_a_proxy_with_traffic() {
    let pool = pool(0.00002).await;
    let mut config = config_for(&[&pool], "");
    config.api.token = Some("s3cret".into());
    let proxy = proxy(config).await;
    let cancel = CancellationToken::new();
    let stats: Vec<_> = (0..3)
        .map(|i| {
            let stats = Arc::new(SimMinerStats::default());
            tokio::spawn(run_sim_miner(
                SimMinerConfig::new(proxy.miner_addr, format!("farm.rig{i}"), 100_000.0),
                Arc::clone(&stats),
                cancel.clone(),
            ));
            stats
        })
        .collect();
    eventually("shares accepted", || {
        stats
            .iter()
            .all(|s| s.accepted.load(Ordering::Relaxed) >= 2)
            && pool.stats.accepted.load(Ordering::Relaxed) >= 1
    })
    .await;
    let http = Arc::new(Http::new(proxy.api_addr));

    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/healthz")).await;
    assert_eq!(status, 200, "{body}");

    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/metrics")).await;
    assert_eq!(status, 200);
    for name in [
        "hashgate_workers_connected{group=\"default\"} 3",
        "hashgate_shares_total{group=\"default\",result=\"accepted\"}",
        "hashgate_accepted_difficulty_total",
        "hashgate_upstream_connected{upstream=\"pool0\"} 1",
        "hashgate_upstream_shares_total{result=\"accepted\",upstream=\"pool0\"}",
        "hashgate_upstream_submit_seconds_bucket",
        "hashgate_job_broadcast_seconds_bucket",
        "hashgate_share_verify_seconds_bucket",
        "hashgate_build_info",
        "process_open_fds",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }

    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/api/v1/workers?group=default&limit=2")).await;
    assert_eq!(status, 200, "{body}");
    let page: WorkersPage = serde_json::from_str(&body).unwrap();
    assert_eq!((page.total, page.workers.len()), (3, 2));
    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/workers?offset=2")).await;
    let page: WorkersPage = serde_json::from_str(&body).unwrap();
    assert_eq!(page.workers.len(), 1);
    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/workers?group=rack-9")).await;
    assert_eq!(serde_json::from_str::<WorkersPage>(&body).unwrap().total, 0);
    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/api/v1/workers?limit=1000000")).await;
    assert_eq!(status, 400);
    assert!(body.contains("\"error\""));

    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/api/v1/workers/farm.rig1")).await;
    assert_eq!(status, 200, "{body}");
    let worker: WorkerSnapshot = serde_json::from_str(&body).unwrap();
    assert_eq!(worker.name.as_deref(), Some("farm.rig1"));
    assert_eq!(worker.group, "default");
    assert_eq!(worker.upstream.as_deref(), Some("pool0"));
    assert!(
        worker.accepted >= 2 && worker.hashrate_1m > 0.0,
        "{worker:?}"
    );
    assert_eq!(worker.user_agent.as_deref(), Some("hashgate-sim/1.0"));
    let h = Arc::clone(&http);
    let (status, body) = blocking(move || h.get("/api/v1/workers/nobody")).await;
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""));

    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/groups")).await;
    let groups: Vec<GroupView> = serde_json::from_str(&body).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].status.name.as_str(), groups[0].status.workers),
        ("default", 3)
    );

    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/upstreams")).await;
    let upstreams: Vec<UpstreamReport> = serde_json::from_str(&body).unwrap();
    assert_eq!(upstreams[0].view.state, "serving");
    assert_eq!(upstreams[0].view.miners, 3);
    assert_eq!(upstreams[0].view.prefix_size, Some(2));
    assert!(upstreams[0].accepted >= 1);

    // Mutating endpoints need the token.
    let h = Arc::clone(&http);
    let (status, _) = blocking(move || h.post("/api/v1/workers/farm.rig0/disconnect", None)).await;
    assert_eq!(status, 401);
    let h = Arc::clone(&http);
    let (status, _) =
        blocking(move || h.post("/api/v1/workers/farm.rig0/disconnect", Some("wrong"))).await;
    assert_eq!(status, 401);
    let h = Arc::clone(&http);
    let (status, body) =
        blocking(move || h.post("/api/v1/workers/farm.rig0/disconnect", Some("s3cret"))).await;
    assert_eq!(status, 202, "{body}");
    eventually("the worker is disconnected", || {
        proxy.sessions.registry().len() == 2
    })
    .await;
    let h = Arc::clone(&http);
    let (status, _) = blocking(move || h.post("/api/v1/workers/farm.rig1/reconnect", None)).await;
    assert_eq!(status, 401);
    let h = Arc::clone(&http);
    let (status, body) =
        blocking(move || h.post("/api/v1/workers/farm.rig1/reconnect", Some("s3cret"))).await;
    assert_eq!(status, 202, "{body}");
    eventually("the worker was asked to reconnect", || {
        proxy.sessions.registry().len() == 1
    })
    .await;
    let h = Arc::clone(&http);
    let (status, _) =
        blocking(move || h.post("/api/v1/workers/nobody/disconnect", Some("s3cret"))).await;
    assert_eq!(status, 404);
    // Per-worker series are off by default.
    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/metrics")).await;
    assert!(
        !body.contains("hashgate_worker_shares_total{"),
        "no per-worker series by default"
    );
    let h = Arc::clone(&http);
    let (status, _) = blocking(move || h.get("/api/v1/nothing-here")).await;
    assert_eq!(status, 404);

    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_without_an_upstream() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = proxy(common::config_with_urls(
        &[format!("stratum+tcp://127.0.0.1:{port}")],
        "",
    ))
    .await;
    let http = Http::new(proxy.api_addr);
    let (status, body) = blocking(move || http.get("/healthz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("reason"), "{body}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_worker_metrics_are_opt_in() {
    let pool = pool(1.0).await;
    let mut config = config_for(&[&pool], "");
    config.api.per_worker_metrics = true;
    let proxy = proxy(config).await;
    let mut miner = common::RawMiner::connect(&proxy).await;
    miner.handshake("farm.tracked").await;
    let share = miner.find_share(1, true, None);
    miner
        .send(&common::RawMiner::submit_line(9, "farm.tracked", &share))
        .await;
    assert!(
        miner
            .response(hashgate::protocol::Id::from(9))
            .await
            .is_ok()
    );
    let http = Http::new(proxy.api_addr);
    let (_, body) = blocking(move || http.get("/metrics")).await;
    assert!(
        body.contains(
            "hashgate_worker_shares_total{result=\"accepted\",worker=\"farm.tracked\"} 1"
        ),
        "{body}"
    );
    proxy.shutdown().await;
}

/// Miners land in the first `[[group]]` whose rules match (worker glob, address CIDR, user-agent
/// glob), else `default`; the API and metrics show the groups and the watts their mining draws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miners_are_grouped_at_authorize() {
    let pool = pool(1.0).await;
    let config = config_for(
        &[&pool],
        r#"
[[group]]
name = "c07"
workers = ["farm.c07-*"]
watts_per_worker = 3250.0
[[group]]
name = "gpu-row"
user_agents = ["gpu-rig/*"]
kind = "gpu"
watts_per_worker = 1500.0
[[group]]
name = "lab"
addresses = ["192.0.2.0/24"]
watts_per_worker = 10.0
"#,
    );
    let proxy = proxy(config).await;
    let mut miners = Vec::new();
    for (worker, agent) in [
        ("farm.c07-0001", "bmminer/2.0.0"),
        ("farm.c07-0002", "bmminer/2.0.0"),
        ("farm.r3-0001", "gpu-rig/0.9"),
        ("farm.other", "cgminer/4.11"),
    ] {
        let mut miner = common::RawMiner::connect(&proxy).await;
        miner
            .send(&format!(
                r#"{{"id":1,"method":"mining.subscribe","params":["{agent}"]}}"#
            ))
            .await;
        miner
            .send(&format!(
                r#"{{"id":2,"method":"mining.authorize","params":["{worker}","x"]}}"#
            ))
            .await;
        assert!(
            miner
                .response(hashgate::protocol::Id::from(2))
                .await
                .is_ok()
        );
        miners.push(miner);
    }
    let http = Arc::new(Http::new(proxy.api_addr));
    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/workers")).await;
    let page: WorkersPage = serde_json::from_str(&body).unwrap();
    let group_of = |name: &str| {
        page.workers
            .iter()
            .find(|w| w.session.name.as_deref() == Some(name))
            .map(|w| w.session.group.clone())
            .unwrap()
    };
    assert_eq!(group_of("farm.c07-0002"), "c07");
    assert_eq!(group_of("farm.r3-0001"), "gpu-row");
    assert_eq!(group_of("farm.other"), "default");

    // The group controller publishes power on its next tick (its statuses before its metrics).
    wait_power(&proxy, "c07", 6500.0).await;
    wait_power(&proxy, "gpu-row", 1500.0).await;
    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/api/v1/groups")).await;
    let groups: Vec<GroupView> = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = groups.iter().map(|g| g.status.name.as_str()).collect();
    assert_eq!(names, vec!["c07", "gpu-row", "lab", "default"]);
    assert_eq!(
        (groups[0].status.workers, groups[0].status.power_watts),
        (2, 6500.0)
    );
    assert_eq!(
        (groups[1].kind.as_str(), groups[1].status.power_watts),
        ("gpu", 1500.0)
    );
    assert_eq!(
        groups[2].status.workers, 0,
        "an empty group is still listed"
    );

    let h = Arc::clone(&http);
    let (_, body) = blocking(move || h.get("/metrics")).await;
    assert!(
        body.contains("hashgate_group_power_watts{group=\"c07\",source=\"declared\"} 6500"),
        "{body}"
    );
    assert!(body.contains("hashgate_workers_connected{group=\"c07\"} 2"));
    assert!(body.contains("hashgate_group_state{group=\"lab\",state=\"active\"} 1"));

    // A miner leaving takes its watts with it.
    miners.remove(0);
    wait_power(&proxy, "c07", 3250.0).await;
    proxy.shutdown().await;
}
