//! Drains that switch the power and prove it, on the wire: simulated Bitaxes (ESP-Miner's REST
//! API on their own loopback addresses, found by hashgate's driver on a forwarded port) mine
//! through the proxy from those same addresses; a drain with `sleep` puts them to sleep through
//! their firmware, `drained` follows the measured drop, hooks get the measured watts, a machine
//! whose API is down is named and holds the drain to its timeout, a restart of a drained group
//! wakes nothing, and a resume wakes the machines in batches before they get work.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::daemon::Daemon;
use common::{Api, config_for, pool, state_dir};
use hashgate::config::Config;
use hashgate::proxy::Proxy;
use hashgate::sim::{
    DeviceProfile, Faults, SimDevice, SimEspMiner, SimMinerConfig, SimMinerStats, run_sim_miner,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Power waits are longer than the harness's: firmware is polled, slept and settled.
const POWER_WAIT: Duration = Duration::from_secs(30);

/// One simulated Bitaxe: its device, its API, and the miner hashing on it.
struct Bitaxe {
    device: Arc<SimDevice>,
    _api: SimEspMiner,
    worker: String,
}

/// `n` Bitaxes at 127.0.`net`.1.. with their web API on one port (as a farm forwards it).
async fn bitaxes(net: u8, n: u8) -> (Vec<Bitaxe>, u16) {
    let mut port = 0;
    let mut machines = Vec::new();
    for i in 1..=n {
        let ip = IpAddr::from([127, 0, net, i]);
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .expect("bind the web API");
        port = listener.local_addr().expect("addr").port();
        let device = Arc::new(SimDevice::new(DeviceProfile::bitaxe()));
        let api = SimEspMiner::start(listener, Arc::clone(&device), &format!("bitaxe-{i}"))
            .expect("start");
        machines.push(Bitaxe {
            device,
            _api: api,
            worker: format!("farm.bx{net}-{i}"),
        });
    }
    (machines, port)
}

/// Starts the miners: each connects from its machine's address and hashes while it mines.
fn mine(proxy: &Proxy, machines: &[Bitaxe], net: u8, cancel: &CancellationToken) {
    mine_at(proxy.miner_addr, machines, net, cancel);
}

/// [`mine`] against a proxy at `addr` (a daemon process).
fn mine_at(addr: SocketAddr, machines: &[Bitaxe], net: u8, cancel: &CancellationToken) {
    for (i, machine) in machines.iter().enumerate() {
        let mut config = SimMinerConfig::new(addr, machine.worker.clone(), 50_000.0);
        config.bind = Some(IpAddr::from([127, 0, net, i as u8 + 1]));
        config.device = Some(Arc::clone(&machine.device));
        tokio::spawn(run_sim_miner(
            config,
            Arc::new(SimMinerStats::default()),
            cancel.child_token(),
        ));
    }
}

/// `[power]` fast enough for a test (plus `power`), group `desk` of the `net` machines with
/// sleep on and their web API on `port` (plus `extra`).
fn power_config(
    pool: &hashgate::sim::SimPool,
    net: u8,
    port: u16,
    power: &str,
    extra: &str,
) -> Config {
    config_for(
        &[pool],
        &format!(
            "[power]\npoll_interval = \"1s\"\nfast_poll_interval = \"200ms\"\nrequest_timeout = \"1s\"\nmax_backoff = \"2s\"\nsettle = \"1s\"\nredispatch = \"2s\"\n{power}\
             [[group]]\nname = \"desk\"\nworkers = [\"farm.bx{net}-*\"]\nwatts_per_worker = 20.0\nsleep = true\nidle_watts_per_worker = 5.0\n\
             [group.management]\nweb_port = {port}\n{extra}"
        ),
    )
}

/// Polls the group until `done` holds for it.
async fn group_until(api: &Api, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    named_group_until(api, "desk", what, done).await
}

/// Group `name` once `done` holds (panics after [`POWER_WAIT`]).
async fn named_group_until(
    api: &Api,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + POWER_WAIT;
    loop {
        let group = api.get_ok(&format!("/api/v1/groups/{name}")).await;
        if done(&group) {
            return group;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {group:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drains group `desk` with `body`; the call must succeed.
async fn drain(api: &Api, body: &str) {
    let (status, answer) = api.post_token("/api/v1/groups/desk/drain", body).await;
    assert_eq!(status, 200, "{answer}");
}

/// The newest audit event into `state`.
async fn last_event_to(api: &Api, state: &str) -> Value {
    let events = api.get_ok("/api/v1/events").await;
    events
        .as_array()
        .and_then(|e| e.iter().rev().find(|e| e["to"] == state))
        .cloned()
        .unwrap_or_else(|| panic!("no event into {state}: {events:#}"))
}

fn f(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_sleep_is_measured_down_verified_and_hooks_get_the_measured_watts() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(93, 3).await;
    let dir = state_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let hook_out = dir.join("hook.env");
    let hook = format!(
        "[[hook]]\nevents = [\"drained\"]\ngroups = [\"desk\"]\nrequired = true\ncommand = [\"/bin/sh\", \"-c\", \"echo $HASHGATE_WATTS $HASHGATE_WATTS_SOURCE > {}\"]\n",
        hook_out.display()
    );
    let mut config = power_config(&pool, 93, port, "", &hook);
    config.api.token = Some(common::TOKEN.into());
    let proxy = common::proxy(config).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 93, &cancel);

    // Mining: every machine read by its firmware, the group's figure measured (3 x 18 W, not
    // the declared 3 x 20 W).
    let group = group_until(&api, "three machines measured", |g| {
        g["machines_read"] == 3 && g["power_source"] == "firmware" && g["workers"] == 3
    })
    .await;
    assert_eq!(f(&group, "power_watts"), 54.0, "{group:#}");
    let firmware = proxy
        .metrics
        .groups
        .power_watts
        .with_label_values(&["desk", "firmware"])
        .get();
    assert_eq!(firmware, 54.0);

    drain(&api, r#"{"mode": "pause", "reason": "AI window"}"#).await;
    let drained = group_until(&api, "drained on measured power", |g| {
        g["state"] == "drained"
    })
    .await;
    assert_eq!(drained["verified"], true, "{drained:#}");
    assert_eq!(drained["machines_off"], 3);
    assert!(f(&drained, "power_watts") <= 7.5 + 1e-9, "{drained:#}");
    let released = f(&drained, "released_watts");
    assert!(
        (released - 46.5).abs() < 1e-6,
        "54 W before, 7.5 W asleep: {drained:#}"
    );
    for machine in &machines {
        assert!(machine.device.asleep(), "{} sleeps", machine.worker);
        assert_eq!(machine.device.commands(), (1, 0), "slept once, never woken");
    }
    // The drained hook got the measured release and its source.
    let env = std::fs::read_to_string(&hook_out).expect("the drained hook ran");
    let mut parts = env.split_whitespace();
    let watts: f64 = parts.next().and_then(|w| w.parse().ok()).expect("watts");
    assert!((watts - 46.5).abs() < 1e-6, "{env}");
    assert_eq!(parts.next(), Some("firmware"), "{env}");
    // Each worker shows its machine's power.
    let worker = api
        .get_ok(&format!("/api/v1/workers/{}", machines[0].worker))
        .await;
    assert_eq!(
        (
            &worker["power_watts"],
            &worker["asleep"],
            &worker["power_source"]
        ),
        (&json!(2.5), &json!(true), &json!("firmware")),
        "{worker:#}"
    );
    // The audit log says the drained state was verified, and on what.
    let last = last_event_to(&api, "drained").await;
    assert_eq!(
        (&last["verified"], &last["watts_source"]),
        (&json!(true), &json!("firmware")),
        "{last:#}"
    );
    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_api_is_down_is_named_and_holds_the_drain_to_its_timeout() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(94, 3).await;
    let mut config = power_config(&pool, 94, port, "", "");
    config.groups[0].drain_timeout = Some(Duration::from_secs(6));
    config.api.token = Some(common::TOKEN.into());
    let proxy = common::proxy(config).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 94, &cancel);
    group_until(&api, "three machines measured", |g| g["machines_read"] == 3).await;
    // The third machine's API goes down: its sleep cannot be sent, its power not read.
    machines[2].device.set_faults(Faults {
        refuse: true,
        ..Faults::default()
    });
    drain(&api, r#"{"mode": "pause"}"#).await;
    let waiting = group_until(&api, "two machines off, one named", |g| {
        g["machines_off"] == 2
            && g["machines_not_off"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
    })
    .await;
    assert_eq!(waiting["state"], "draining", "{waiting:#}");
    let named = &waiting["machines_not_off"][0];
    assert_eq!(named["worker"], machines[2].worker.as_str(), "{waiting:#}");
    assert!(
        named["problem"].as_str().is_some_and(|p| !p.is_empty()),
        "{waiting:#}"
    );
    assert!(machines[0].device.asleep() && machines[1].device.asleep());
    assert!(!machines[2].device.asleep());
    // At the timeout: drained, but not verified, and the audit log names the machine.
    let drained = group_until(&api, "drained at the timeout", |g| g["state"] == "drained").await;
    assert_eq!(drained["verified"], false, "{drained:#}");
    let events = api.get_ok("/api/v1/events").await;
    let timeout = events
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "drain_timeout"))
        .cloned()
        .expect("a drain_timeout event");
    let detail = timeout["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&machines[2].worker) && detail.contains("1 machine(s) not off"),
        "{detail}"
    );
    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_a_drained_group_asleep_and_a_resume_wakes_in_batches_before_work() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(95, 3).await;
    let dir = state_dir();
    // One machine per batch, 1.5 s apart.
    let batches = "wake_interval = \"1500ms\"\nwake_batch_min = 1\nwake_batch_max = 1\n";
    let make_config = || {
        let mut config = power_config(&pool, 95, port, batches, "");
        config.state.dir = dir.clone();
        config.api.token = Some(common::TOKEN.into());
        config
    };
    let proxy = common::proxy(make_config()).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 95, &cancel);
    group_until(&api, "three machines measured", |g| g["machines_read"] == 3).await;
    drain(&api, r#"{"mode": "pause"}"#).await;
    group_until(&api, "drained", |g| {
        g["state"] == "drained" && g["verified"] == true
    })
    .await;

    // An abrupt stop and a new process on the same state: still drained, machines watched
    // again (read asleep), nothing woken.
    proxy.abort().await;
    let proxy = common::proxy(make_config()).await;
    let api = Api::new(&proxy);
    // The miners' firmware reconnects (to a paused group: no work).
    mine(&proxy, &machines, 95, &cancel);
    let again = group_until(&api, "the restarted proxy reads the machines asleep", |g| {
        g["state"] == "drained" && g["machines_off"] == 3 && g["workers"] == 3
    })
    .await;
    assert_eq!(again["verified"], true);
    for machine in &machines {
        assert_eq!(machine.device.commands().1, 0, "no wake after the restart");
        assert!(machine.device.asleep());
    }

    // Resume: one machine woken per batch; no session gets work before its machine's wake.
    let (status, body) = api.post_token("/api/v1/groups/desk/resume", "{}").await;
    assert_eq!(status, 200, "{body}");
    let started = tokio::time::Instant::now();
    let mut woken_at: Vec<Option<Duration>> = vec![None; machines.len()];
    let deadline = started + POWER_WAIT;
    loop {
        let page = api.get_ok("/api/v1/workers?group=desk").await;
        // Wakes seen after the page: a worker the page shows with work was woken before it.
        let wakes: Vec<u64> = machines.iter().map(|m| m.device.commands().1).collect();
        for (i, count) in wakes.iter().enumerate() {
            if *count > 0 && woken_at[i].is_none() {
                woken_at[i] = Some(started.elapsed());
            }
        }
        for worker in page["workers"].as_array().into_iter().flatten() {
            let i = machines
                .iter()
                .position(|m| worker["name"] == m.worker.as_str())
                .expect("one of ours");
            if worker["paused"] == false {
                assert!(
                    wakes[i] > 0,
                    "{} got work before its wake",
                    machines[i].worker
                );
            }
        }
        let group = api.get_ok("/api/v1/groups/desk").await;
        if group["state"] == "active" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "resume did not finish: {group:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times: Vec<Duration> = woken_at
        .iter()
        .map(|t| t.expect("every machine woken"))
        .collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(1000),
            "wakes come in batches 1.5 s apart: {times:?}"
        );
    }
    for machine in &machines {
        assert_eq!(machine.device.commands().1, 1, "woken once");
    }
    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_outranks_firmware_which_outranks_declared() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(96, 2).await;
    let (lab, _) = bitaxes(97, 1).await;
    // The rack's meter: both machines plus 10 W of fans and switch.
    let listener = TcpListener::bind((IpAddr::from([127, 0, 96, 250]), 0))
        .await
        .expect("bind the meter");
    let devices = machines.iter().map(|m| Arc::clone(&m.device)).collect();
    let meter = hashgate::sim::SimMeter::start(listener, devices, 10.0).expect("meter");
    let extra = format!(
        "[[meter]]\ngroup = \"desk\"\naddress = \"{}\"\nregister = 52\ntype = \"float32\"\nword_order = \"big\"\n\
         [[group]]\nname = \"lab\"\nworkers = [\"farm.bx97-*\"]\nwatts_per_worker = 20.0\npower_source = \"declared\"\n",
        meter.addr
    );
    let mut config = power_config(&pool, 96, port, "", &extra);
    config.groups[0].idle_watts_per_worker = Some(10.0);
    config.api.token = Some(common::TOKEN.into());
    let proxy = common::proxy(config).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 96, &cancel);
    mine(&proxy, &lab, 97, &cancel);

    // The meter's 46 W (2 x 18 W + 10 W), not the firmware's 36 W nor the declared 40 W.
    let metered = group_until(&api, "the meter's figure", |g| g["power_source"] == "meter").await;
    assert_eq!(f(&metered, "power_watts"), 46.0, "{metered:#}");
    assert_eq!(metered["power_by_source"]["meter"], 46.0);
    let meter_series = || {
        proxy
            .metrics
            .groups
            .power_watts
            .with_label_values(&["desk", "meter"])
            .get()
    };
    common::eventually("the meter series", || meter_series() == 46.0).await;
    assert_eq!(
        common::group_power(&proxy, "desk"),
        46.0,
        "the series sum to the figure"
    );
    // A declared group: its nameplate figure once its miner mines (the controller's next look
    // after the miner authorized), and its machine is not asked.
    let lab_group = named_group_until(&api, "lab", "the lab's miner counted as mining", |g| {
        g["mining_workers"] == 1
    })
    .await;
    assert_eq!(
        (&lab_group["power_source"], f(&lab_group, "power_watts")),
        (&json!("declared"), 20.0),
        "{lab_group:#}"
    );
    assert_eq!(lab_group["machines_read"], 0);

    // A drain is verified by the meter (2 x 2.5 W + 10 W at or below 2 x 10 W).
    drain(&api, r#"{"mode": "pause"}"#).await;
    let drained = group_until(&api, "drained by the meter", |g| g["state"] == "drained").await;
    assert_eq!(
        (
            &drained["verified"],
            &drained["power_source"],
            f(&drained, "power_watts")
        ),
        (&json!(true), &json!("meter"), 15.0),
        "{drained:#}"
    );

    // The meter goes away: the machines' own readings take over once its reading is stale.
    drop(meter);
    let fallback = group_until(&api, "the firmware's figure", |g| {
        g["power_source"] == "firmware"
    })
    .await;
    assert_eq!(f(&fallback, "power_watts"), 5.0, "{fallback:#}");
    cancel.cancel();
    proxy.shutdown().await;
}

/// The sum of the devices' exact energy integrals, and when it was taken (Unix ms).
fn device_joules(machines: &[Bitaxe]) -> (f64, u64) {
    let joules = machines.iter().map(|m| m.device.joules()).sum();
    (joules, hashgate::clock::unix_ms())
}

/// The group's ledger: firmware-measured energy drawn (J), released in the drain (J), and
/// the sample it is as of (Unix ms).
fn ledger(group: &Value) -> (f64, f64, u64) {
    (
        group["energy_kwh_by_source"]["firmware"]
            .as_f64()
            .unwrap_or(f64::NAN)
            * 3.6e6,
        group["energy_released_kwh"].as_f64().unwrap_or(f64::NAN) * 3.6e6,
        group["energy_as_of_ms"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_integrates_the_measured_power_and_the_release() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(98, 3).await;
    let mut config = power_config(&pool, 98, port, "", "");
    config.api.token = Some(common::TOKEN.into());
    let proxy = common::proxy(config).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 98, &cancel);
    let first = group_until(&api, "three machines measured", |g| {
        g["power_source"] == "firmware" && g["machines_read"] == 3
    })
    .await;
    // Two samples later the ledger holds the full draw: the window starts there.
    let start_sample = first["energy_as_of_ms"].as_u64().unwrap_or(0);
    let start = group_until(&api, "two more ledger samples", |g| {
        g["energy_as_of_ms"].as_u64().unwrap_or(0) >= start_sample + 2_000
    })
    .await;
    let (devices_start, read_start) = device_joules(&machines);
    let (ledger_start, _, as_of_start) = ledger(&start);
    let end = group_until(&api, "eight seconds of samples", |g| {
        g["energy_as_of_ms"].as_u64().unwrap_or(0) >= as_of_start + 8_000
    })
    .await;
    let (devices_end, read_end) = device_joules(&machines);
    let (ledger_end, _, as_of_end) = ledger(&end);
    // The devices' integral over the ledger's own window [as_of_start, as_of_end]: the draw is
    // steady at 54 W, so the few milliseconds between a sample and the devices' read are
    // taken off at that draw.
    let steady = 54.0;
    let devices = (devices_end - steady * (read_end - as_of_end) as f64 / 1000.0)
        - (devices_start - steady * (read_start - as_of_start) as f64 / 1000.0);
    let measured = ledger_end - ledger_start;
    assert!(
        (measured - devices).abs() <= 0.01 * devices,
        "ledger {measured:.1} J, devices {devices:.1} J over {} ms",
        as_of_end - as_of_start
    );
    let counter = proxy
        .metrics
        .groups
        .energy_joules
        .with_label_values(&["desk", "firmware"])
        .get();
    assert!(counter >= ledger_end, "the counter follows the ledger");

    // Drained and asleep: the release accrues at the baseline minus the asleep draw
    // (54 - 7.5 W), and the energy drawn at 7.5 W.
    drain(&api, r#"{"mode": "pause"}"#).await;
    let drained = group_until(&api, "drained", |g| g["state"] == "drained").await;
    let (_, released_start, as_of_drained) = ledger(&drained);
    let later = group_until(&api, "five seconds drained", |g| {
        g["energy_as_of_ms"].as_u64().unwrap_or(0) >= as_of_drained + 5_000
    })
    .await;
    let (_, released_end, as_of_later) = ledger(&later);
    let seconds = (as_of_later - as_of_drained) as f64 / 1000.0;
    let expected = (54.0 - 7.5) * seconds;
    assert!(
        ((released_end - released_start) - expected).abs() <= 0.01 * expected,
        "released {:.1} J, expected {expected:.1} J",
        released_end - released_start
    );
    cancel.cancel();
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_sleep_keeps_the_share_witness_and_says_its_power_did_not_drop() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(99, 2).await;
    let mut config = power_config(&pool, 99, port, "", "[drain]\nquiet_min = \"1s\"\n");
    // Its power is switched elsewhere (a PDU hook): hashgate reads it but does not sleep it.
    config.groups[0].sleep = false;
    config.api.token = Some(common::TOKEN.into());
    let proxy = common::proxy(config).await;
    let api = Api::new(&proxy);
    let cancel = CancellationToken::new();
    mine(&proxy, &machines, 99, &cancel);
    group_until(&api, "two machines measured", |g| g["machines_read"] == 2).await;
    drain(&api, r#"{"mode": "disconnect"}"#).await;
    // Drained when its miners went quiet, not at the timeout; nothing slept them, so the
    // machines still draw full power and the drain is not verified.
    let drained = group_until(&api, "drained on share silence", |g| {
        g["state"] == "drained"
    })
    .await;
    assert_eq!(drained["verified"], false, "{drained:#}");
    let last = last_event_to(&api, "drained").await;
    assert_eq!(last["trigger"], "quiet", "{last:#}");
    for machine in &machines {
        assert_eq!(machine.device.commands(), (0, 0), "no sleep sent");
    }
    cancel.cancel();
    proxy.shutdown().await;
}

/// Starts `hashgate run` on `config` (the daemon's start waits, so off the runtime's threads).
async fn daemon(config: &std::path::Path) -> Daemon {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || Daemon::start(&config))
        .await
        .expect("the daemon starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_sleep_keeps_the_group_draining_then_drained_and_wakes_nothing() {
    let pool = pool(1.0).await;
    let (machines, port) = bitaxes(92, 3).await;
    let dir = state_dir();
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
             [state]\ndir = \"{dir}\"\n\
             [power]\npoll_interval = \"1s\"\nfast_poll_interval = \"200ms\"\nrequest_timeout = \"1s\"\nmax_backoff = \"2s\"\nsettle = \"1s\"\nredispatch = \"1s\"\n\
             [[group]]\nname = \"desk\"\nworkers = [\"farm.bx92-*\"]\nwatts_per_worker = 20.0\nsleep = true\nidle_watts_per_worker = 5.0\ndrain_timeout = \"10m\"\n\
             [group.management]\nweb_port = {port}\n\
             [[upstream]]\nname = \"p\"\nurl = \"{url}\"\nuser = \"u\"\n",
            token = common::TOKEN,
            dir = dir.display(),
            url = pool.url(),
        ),
    )
    .expect("write the config");
    let cancel = CancellationToken::new();
    let first = daemon(&config).await;
    let api = Api::at(first.api);
    let miners = cancel.child_token();
    mine_at(first.miners, &machines, 92, &miners);
    group_until(&api, "three machines measured", |g| g["machines_read"] == 3).await;

    // The third machine's firmware answers but ignores its sleep: the drain is mid-sleep,
    // two machines asleep, one still drawing full power.
    machines[2].device.set_faults(Faults {
        ignore_commands: true,
        ..Faults::default()
    });
    drain(&api, r#"{"mode": "pause", "reason": "AI window"}"#).await;
    group_until(&api, "two machines asleep, one not", |g| {
        g["machines_off"] == 2 && g["state"] == "draining"
    })
    .await;
    assert!(machines[0].device.asleep() && machines[1].device.asleep());
    assert!(!machines[2].device.asleep());

    // kill -9 mid-sleep, the miners' connections cut with it.
    tokio::task::spawn_blocking(move || first.kill())
        .await
        .expect("killed");
    miners.cancel();
    let second = daemon(&config).await;
    let api = Api::at(second.api);
    let miners = cancel.child_token();
    mine_at(second.miners, &machines, 92, &miners);
    let again = group_until(&api, "the restart reads the machines", |g| {
        g["machines_read"] == 3 && g["workers"] == 3
    })
    .await;
    assert_eq!(again["state"], "draining", "still draining: {again:#}");
    for machine in &machines {
        assert_eq!(machine.device.commands().1, 0, "no wake after kill -9");
    }
    assert!(machines[0].device.asleep() && machines[1].device.asleep());

    // The third machine takes commands again: the restarted daemon's sleep reaches it and
    // the drain ends measured.
    machines[2].device.set_faults(Faults::default());
    let drained = group_until(&api, "drained on measured power", |g| {
        g["state"] == "drained"
    })
    .await;
    assert_eq!(drained["verified"], true, "{drained:#}");
    assert!(machines[2].device.asleep());

    // kill -9 once drained: the restart keeps it drained and verified, and wakes nothing.
    tokio::task::spawn_blocking(move || second.kill())
        .await
        .expect("killed");
    miners.cancel();
    let third = daemon(&config).await;
    let api = Api::at(third.api);
    mine_at(third.miners, &machines, 92, &cancel);
    let kept = group_until(&api, "the restart reads the machines asleep", |g| {
        g["machines_off"] == 3 && g["workers"] == 3
    })
    .await;
    assert_eq!(
        (&kept["state"], &kept["verified"]),
        (&json!("drained"), &json!(true)),
        "{kept:#}"
    );
    // A few polls later still nothing woken (the controller had every chance to).
    let polled = kept["energy_as_of_ms"].as_u64().unwrap_or(0);
    group_until(&api, "three more seconds of samples", |g| {
        g["energy_as_of_ms"].as_u64().unwrap_or(0) >= polled + 3_000
    })
    .await;
    for machine in &machines {
        assert_eq!(machine.device.commands().1, 0, "no wake after kill -9");
        assert!(machine.device.asleep());
    }
    cancel.cancel();
    tokio::task::spawn_blocking(move || third.kill())
        .await
        .expect("killed");
}
