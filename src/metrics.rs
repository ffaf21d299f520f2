//! The one place where counters are kept: a Prometheus registry with every hashgate metric.
//!
//! Sessions and upstream tasks resolve their label handles once (at authorize, at connect) and
//! then only increment atomics on the hot path. Label values are bounded: groups and upstreams
//! come from the config, results from fixed enums; per-worker series do not exist here (the API
//! serves per-worker detail), so 100,000 workers do not make 100,000 series.

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric hashgate exports, by the part of hashgate that updates it.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Miner sessions: connections, shares, verification, per-worker series.
    pub miners: MinerMetrics,
    /// Pool connections and failover.
    pub upstream: UpstreamMetrics,
    /// Groups, drains, hooks, windows and capacity requests.
    pub groups: GroupMetrics,
    /// Build version.
    pub build_info: IntGaugeVec,
}

/// The series miner sessions update.
#[derive(Clone)]
pub struct MinerMetrics {
    /// Miners connected, by group.
    pub workers_connected: IntGaugeVec,
    /// Share outcomes by group and result (accepted, stale, duplicate, low_difficulty, invalid,
    /// unauthorized, not_subscribed).
    pub shares: IntCounterVec,
    /// Sum of accepted share difficulties by group: hashrate = rate(...) * 2^32.
    pub accepted_difficulty: prometheus::CounterVec,
    /// Job in from the pool to written to a miner's queue, per miner.
    pub job_broadcast_seconds: Histogram,
    /// Time to verify a share (sampled).
    pub share_verify_seconds: Histogram,
    /// Miner connections closed, by reason (eof, idle, slow_reader, protocol, line_too_long,
    /// shutdown, reconnect).
    pub disconnects: IntCounterVec,
    /// Lines from miners that did not parse, by kind.
    pub protocol_errors: IntCounterVec,
    /// Miners that could not get an extranonce prefix.
    pub extranonce_exhausted: IntCounter,
    /// Per-worker shares by result: only filled with `api.per_worker_metrics = true` (a farm of
    /// 100,000 workers would otherwise create 100,000s of series).
    pub worker_shares: IntCounterVec,
    /// Per-worker accepted difficulty, same condition.
    pub worker_accepted_difficulty: prometheus::CounterVec,
    /// Miners currently connected, all groups.
    pub connections: IntGauge,
    /// Current estimated share rate target, for dashboards.
    pub target_share_interval_seconds: Gauge,
}

/// The series pool connections and the router update.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// 1 while the upstream's connection is up and subscribed.
    pub connected: IntGaugeVec,
    /// The upstream's current share difficulty.
    pub difficulty: GaugeVec,
    /// Forwarded shares by upstream and result (accepted, rejected, lost).
    pub shares: IntCounterVec,
    /// Pool round trip of forwarded shares.
    pub submit_seconds: HistogramVec,
    /// Shares that met the network target, by upstream.
    pub blocks_found: IntCounterVec,
    /// The upstream currently serving miners (1) by name.
    pub active: IntGaugeVec,
    /// Failovers between upstreams.
    pub failovers: IntCounter,
    /// Unix time of the upstream's last job (alerts on a pool that goes silent).
    pub last_job: GaugeVec,
    /// Pool connections that went down, by upstream and cause (refused, io, job_timeout, ...).
    pub disconnects: IntCounterVec,
}

/// The series the group controller and its hooks update.
#[derive(Clone)]
pub struct GroupMetrics {
    /// Group state (1 for the current state), filled by the groups module.
    pub state: IntGaugeVec,
    /// Watts drawn by a group's mining.
    pub power_watts: GaugeVec,
    /// Hook runs by event and result.
    pub hook_runs: IntCounterVec,
    /// Hook run time by event.
    pub hook_seconds: HistogramVec,
    /// Transitions a required hook stopped, by group and the state it would have entered.
    pub blocked_transitions: IntCounterVec,
    /// State or audit-log writes that failed (the change was not applied).
    pub state_save_failures: IntCounter,
    /// Miners of a closed (drained) group refused at authorize, by group.
    pub refused_miners: IntCounterVec,
    /// Active capacity requests.
    pub capacity_requests: IntGauge,
    /// Watts active capacity requests asked for.
    pub capacity_watts_requested: Gauge,
    /// Watts their groups have released.
    pub capacity_watts_released: Gauge,
    /// Active capacity requests whose heartbeat lease lapsed.
    pub capacity_heartbeat_lapsed: IntGauge,
    /// Maintenance windows whose span is open.
    pub windows_open: IntGauge,
    /// Watts a drained group has released to other loads (what it drew before the drain minus
    /// what it draws now).
    pub released_watts: GaugeVec,
    /// Energy a group drew, by source (the energy ledger, continued across restarts).
    pub energy_joules: CounterVec,
    /// Energy a group did not draw against its pre-drain baseline while drained.
    pub energy_released_joules: CounterVec,
    /// A worker's machine's power as its firmware reports it (only with
    /// `api.per_worker_metrics`: a farm of 20,000 machines would be 20,000 series).
    pub worker_power_watts: GaugeVec,
    /// Time the group controller spends in one tick (every 200 ms; once a second it also lists
    /// and measures every machine): the control plane's cost as the farm grows.
    pub controller_tick_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry (plus the process collector).
    pub fn new() -> Self {
        let registry = Registry::new();
        fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric names are unique constants, registered once");
            c
        }
        let latency_buckets = vec![
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ];
        let miners = MinerMetrics {
            workers_connected: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("hashgate_workers_connected", "Miners connected, by group."),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            shares: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_shares_total",
                        "Shares from miners by group and result.",
                    ),
                    &["group", "result"],
                )
                .expect("valid metric"),
            ),
            accepted_difficulty: register(
                &registry,
                prometheus::CounterVec::new(
                    Opts::new(
                        "hashgate_accepted_difficulty_total",
                        "Sum of accepted share difficulties; hashrate = rate(...) * 2^32.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            job_broadcast_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "hashgate_job_broadcast_seconds",
                        "Job received from the pool to queued for a miner, per miner.",
                    )
                    .buckets(latency_buckets.clone()),
                )
                .expect("valid metric"),
            ),
            share_verify_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "hashgate_share_verify_seconds",
                        "Share verification time (one share in 64 is timed).",
                    )
                    .buckets(vec![
                        0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1,
                        0.001,
                    ]),
                )
                .expect("valid metric"),
            ),
            disconnects: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_miner_disconnects_total",
                        "Miner connections closed, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            protocol_errors: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_protocol_errors_total",
                        "Miner lines that did not parse, by kind.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            extranonce_exhausted: register(
                &registry,
                IntCounter::new(
                    "hashgate_extranonce_exhausted_total",
                    "Miners refused because no extranonce prefix was free.",
                )
                .expect("valid metric"),
            ),
            worker_shares: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_worker_shares_total",
                        "Shares by worker and result (only with api.per_worker_metrics).",
                    ),
                    &["worker", "result"],
                )
                .expect("valid metric"),
            ),
            worker_accepted_difficulty: register(
                &registry,
                prometheus::CounterVec::new(
                    Opts::new(
                        "hashgate_worker_accepted_difficulty_total",
                        "Accepted difficulty by worker (only with api.per_worker_metrics).",
                    ),
                    &["worker"],
                )
                .expect("valid metric"),
            ),
            connections: register(
                &registry,
                IntGauge::new("hashgate_connections", "Miner TCP connections open.")
                    .expect("valid metric"),
            ),
            target_share_interval_seconds: register(
                &registry,
                Gauge::new(
                    "hashgate_target_share_interval_seconds",
                    "The share interval vardiff aims at.",
                )
                .expect("valid metric"),
            ),
        };
        let upstream = UpstreamMetrics {
            connected: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "hashgate_upstream_connected",
                        "1 while the upstream is connected and subscribed.",
                    ),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            difficulty: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "hashgate_upstream_difficulty",
                        "The upstream's share difficulty.",
                    ),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            shares: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_upstream_shares_total",
                        "Shares forwarded upstream by result (accepted, rejected, lost).",
                    ),
                    &["upstream", "result"],
                )
                .expect("valid metric"),
            ),
            submit_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "hashgate_upstream_submit_seconds",
                        "Pool round trip of forwarded shares.",
                    )
                    .buckets(latency_buckets.clone()),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            blocks_found: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_blocks_found_total",
                        "Shares that met the network target.",
                    ),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            active: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "hashgate_upstream_active",
                        "1 for the upstream serving miners.",
                    ),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            failovers: register(
                &registry,
                IntCounter::new(
                    "hashgate_failovers_total",
                    "Switches of the serving upstream.",
                )
                .expect("valid metric"),
            ),
            last_job: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "hashgate_upstream_last_job_timestamp_seconds",
                        "Unix time of the last job received from the upstream.",
                    ),
                    &["upstream"],
                )
                .expect("valid metric"),
            ),
            disconnects: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_upstream_disconnects_total",
                        "Pool connections that went down, by upstream and cause.",
                    ),
                    &["upstream", "cause"],
                )
                .expect("valid metric"),
            ),
        };
        let groups = GroupMetrics {
            state: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("hashgate_group_state", "1 for the group's current state."),
                    &["group", "state"],
                )
                .expect("valid metric"),
            ),
            power_watts: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "hashgate_group_power_watts",
                        "Watts the group draws, by source (meter, firmware readings, declared watts_per_worker of mining workers without a reading); the sum is the group's figure.",
                    ),
                    &["group", "source"],
                )
                .expect("valid metric"),
            ),
            hook_runs: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("hashgate_hook_runs_total", "Hook runs by event and result."),
                    &["event", "result"],
                )
                .expect("valid metric"),
            ),
            hook_seconds: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("hashgate_hook_seconds", "Hook run time by event.").buckets(
                        vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0],
                    ),
                    &["event"],
                )
                .expect("valid metric"),
            ),
            blocked_transitions: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_group_blocked_transitions_total",
                        "Group transitions stopped by a failing required hook.",
                    ),
                    &["group", "to"],
                )
                .expect("valid metric"),
            ),
            state_save_failures: register(
                &registry,
                IntCounter::new(
                    "hashgate_state_save_failures_total",
                    "State or audit-log writes that failed (the change was not applied).",
                )
                .expect("valid metric"),
            ),
            refused_miners: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "hashgate_group_refused_miners_total",
                        "Miners of a drained group refused when they came back.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            capacity_requests: register(
                &registry,
                IntGauge::new(
                    "hashgate_capacity_requests",
                    "Active capacity requests from AI schedulers.",
                )
                .expect("valid metric"),
            ),
            capacity_watts_requested: register(
                &registry,
                Gauge::new(
                    "hashgate_capacity_requested_watts",
                    "Watts the active capacity requests asked for.",
                )
                .expect("valid metric"),
            ),
            capacity_watts_released: register(
                &registry,
                Gauge::new(
                    "hashgate_capacity_released_watts",
                    "Watts the active capacity requests' groups have released.",
                )
                .expect("valid metric"),
            ),
            capacity_heartbeat_lapsed: register(
                &registry,
                IntGauge::new(
                    "hashgate_capacity_heartbeat_lapsed",
                    "Active capacity requests whose scheduler stopped renewing its lease.",
                )
                .expect("valid metric"),
            ),
            windows_open: register(
                &registry,
                IntGauge::new(
                    "hashgate_windows_open",
                    "Maintenance windows whose span is open (their groups are held).",
                )
                .expect("valid metric"),
            ),
            released_watts: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "hashgate_group_released_watts",
                        "Watts a group has released (drained) for other loads.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            energy_joules: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "hashgate_group_energy_joules_total",
                        "Energy the group drew, by source (meter, firmware, declared), integrated from the measured samples.",
                    ),
                    &["group", "source"],
                )
                .expect("valid metric"),
            ),
            worker_power_watts: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "hashgate_worker_power_watts",
                        "Watts a worker's machine draws by its firmware's last reading (only with api.per_worker_metrics).",
                    ),
                    &["worker", "group"],
                )
                .expect("valid metric"),
            ),
            energy_released_joules: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "hashgate_group_energy_released_joules_total",
                        "Energy the group did not draw against its pre-drain baseline while in a drain.",
                    ),
                    &["group"],
                )
                .expect("valid metric"),
            ),
            controller_tick_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "hashgate_controller_tick_seconds",
                        "Time the group controller spends in one tick.",
                    )
                    .buckets(vec![
                        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                        0.1, 0.25, 0.5, 1.0,
                    ]),
                )
                .expect("valid metric"),
            ),
        };
        let m = Metrics {
            miners,
            upstream,
            groups,
            build_info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("hashgate_build_info", "Build information."),
                    &["version"],
                )
                .expect("valid metric"),
            ),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist before any event, so dashboards and alerts have something to read:
        // every miner is in `default` (active) until groups are configured.
        m.register_group(crate::config::DEFAULT_GROUP);
        for event in ["draining", "drained", "resuming", "active"] {
            for result in ["success", "failure", "timeout"] {
                m.groups.hook_runs.with_label_values(&[event, result]);
            }
            m.groups.hook_seconds.with_label_values(&[event]);
        }
        #[cfg(target_os = "linux")]
        {
            let _ = m.registry.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        m
    }

    /// Declares a group's series (state active, no power yet) so they exist before any miner.
    pub fn register_group(&self, name: &str) {
        self.groups
            .state
            .with_label_values(&[name, "active"])
            .set(1);
        for state in ["draining", "drained", "resuming"] {
            self.groups.state.with_label_values(&[name, state]).set(0);
        }
        for source in ["meter", "firmware", "declared"] {
            self.groups.power_watts.with_label_values(&[name, source]);
        }
        self.groups.released_watts.with_label_values(&[name]);
        self.groups
            .energy_released_joules
            .with_label_values(&[name]);
        for source in ["meter", "firmware", "declared"] {
            self.groups.energy_joules.with_label_values(&[name, source]);
        }
        self.groups.refused_miners.with_label_values(&[name]);
        for to in ["draining", "drained", "resuming", "active"] {
            self.groups
                .blocked_transitions
                .with_label_values(&[name, to]);
        }
        self.miners.workers_connected.with_label_values(&[name]);
        self.miners.accepted_difficulty.with_label_values(&[name]);
        for result in [
            "accepted",
            "stale",
            "duplicate",
            "low_difficulty",
            "invalid",
            "unauthorized",
        ] {
            self.miners.shares.with_label_values(&[name, result]);
        }
    }

    /// Declares an upstream's series at zero, so they exist before its first event.
    pub fn register_upstream(&self, name: &str) {
        self.upstream.connected.with_label_values(&[name]).set(0);
        self.upstream.active.with_label_values(&[name]).set(0);
        self.upstream.difficulty.with_label_values(&[name]);
        self.upstream.last_job.with_label_values(&[name]);
        self.upstream.blocks_found.with_label_values(&[name]);
        self.upstream.submit_seconds.with_label_values(&[name]);
        for result in ["accepted", "rejected", "lost"] {
            self.upstream.shares.with_label_values(&[name, result]);
        }
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Sum of a counter vector over all label values matching `(label, value)`.
    pub fn sum_counter(counter: &IntCounterVec, label: &str, value: &str) -> u64 {
        use prometheus::core::Collector;
        counter
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == label && pair.value() == value)
            })
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
