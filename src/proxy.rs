//! The whole proxy wired together: router, upstream connections, miner listener, API.
//!
//! [`Proxy::start`] binds every listener first (a port in use is a clear error before anything
//! runs), then spawns the tasks under one cancellation token and task tracker, so
//! [`Proxy::shutdown`] can stop accepting, give in-flight upstream submits their grace period,
//! and wait for every task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::config::Groups;
use crate::downstream::{self, Downstream, GroupGates, SessionControl, SessionSettings};
use crate::groups::hooks::HookRunner;
use crate::groups::state::restored_gates;
use crate::groups::store::Store;
use crate::groups::{ControllerParts, GroupController, GroupState, GroupsHandle};
use crate::metrics::Metrics;
use crate::power::{Meter, MeterPoller, ModbusMeter, Poller};
use crate::router::{Router, RouterHandle};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The config key it came from.
        key: &'static str,
        /// Why (address in use, permission).
        #[source]
        source: std::io::Error,
    },
    /// A `[[group]]` rule does not compile (validation should have caught it).
    #[error(transparent)]
    Groups(#[from] crate::config::GroupError),
    /// The state directory is unusable or holds a corrupt state file.
    #[error(transparent)]
    State(#[from] crate::groups::store::StoreError),
    /// The state file holds a drain of a group the config no longer has: its machines would
    /// mine again at full power under another group.
    #[error(
        "{path}: group {group:?} is {state} but no longer configured: restore its [[group]], or resume it before removing it"
    )]
    OrphanedDrain {
        /// The state file.
        path: std::path::PathBuf,
        /// The group.
        group: String,
        /// Its state.
        state: GroupState,
    },
    /// The config does not hold (a `Config` changed after it was validated).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A hook could not be prepared (its secret file).
    #[error(transparent)]
    Hooks(#[from] crate::groups::hooks::HookSetupError),
    /// The group controller's thread could not be started.
    #[error("cannot start the group controller's thread: {0}")]
    ControllerThread(#[source] std::io::Error),
    /// `api.token_file` could not be read.
    #[error("api.token_file {path}: {source}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Closes `tasks` and waits for them, at most `grace`; says so when some are left.
async fn finish(tasks: &TaskTracker, grace: std::time::Duration, what: &str) {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(what, "some tasks did not end within server.shutdown_grace");
    }
}

/// Binds a listener; the error names the config key the address came from.
async fn bind(address: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Bind {
            address,
            key,
            source,
        })
}

/// A running proxy.
pub struct Proxy {
    /// Where miners connect.
    pub miner_addr: SocketAddr,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Counters.
    pub metrics: Metrics,
    /// The serving state.
    pub router: RouterHandle,
    /// Live sessions and the groups' gates.
    pub sessions: SessionControl,
    /// The group controller.
    pub groups: GroupsHandle,
    /// `state.dir`: group states, the audit log, hooks' workers files.
    pub state_dir: std::path::PathBuf,
    stop: Stop,
}

/// What [`Proxy::shutdown`] stops, in order: the group controller first (no transition is judged
/// on a farm whose sessions are going away: leaving miners are not "quiet"), then the listener and
/// the sessions (no new shares), then the router, the pool connections (they send what is queued
/// and wait for the pool's answers) and the API.
struct Stop {
    control: CancellationToken,
    controller: tokio::task::JoinHandle<()>,
    /// A proxy dropped without a stop (a panic unwinding past it) still ends the controller's
    /// thread, so the runtime it was spawned from can shut down.
    _controller_on_drop: tokio_util::sync::DropGuard,
    sessions: CancellationToken,
    session_tasks: TaskTracker,
    rest: CancellationToken,
    tasks: TaskTracker,
    grace: std::time::Duration,
}

impl Proxy {
    /// Binds the listeners and starts every task.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let token = match (&config.api.token, &config.api.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(path)) => {
                Some(crate::config::read_secret_file(path).map_err(|source| {
                    StartError::TokenFile {
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            (None, None) => None,
        };
        // The state first: a drained group must be closed to its miners from the first accept.
        let (store, restored, events) = Store::open(&config.state.dir)?;
        let group_rules = Groups::new(&config.groups)?;
        if let Some((group, record)) = restored.groups.iter().find(|(name, record)| {
            record.state != GroupState::Active && !group_rules.iter().any(|g| *g.name == ***name)
        }) {
            return Err(StartError::OrphanedDrain {
                path: store.state_path().to_owned(),
                group: group.clone(),
                state: record.state,
            });
        }
        let miners = bind(config.server.listen, "server.listen").await?;
        let api_listener = bind(config.api.listen, "api.listen").await?;
        let miner_addr = miners.local_addr().unwrap_or(config.server.listen);
        let api_addr = api_listener.local_addr().unwrap_or(config.api.listen);
        let config = Arc::new(config);
        let metrics = Metrics::new();
        info!(
            sha256 = crate::work::sha256::backend(),
            version = env!("CARGO_PKG_VERSION"),
            "hashgate starting"
        );
        for group in group_rules.iter() {
            metrics.register_group(&group.name);
        }
        let hooks = HookRunner::new(
            &config.hooks,
            metrics.clone(),
            crate::groups::hooks::workers_dir(store.dir()),
        )?;

        let control = CancellationToken::new();
        let sessions_cancel = CancellationToken::new();
        let session_tasks = TaskTracker::new();
        let rest = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (router, handle) = Router::new(
            Arc::clone(&config),
            metrics.clone(),
            rest.child_token(),
            tasks.clone(),
        )?;
        tasks.spawn(router.run());

        let gates = Arc::new(GroupGates::new(restored_gates(
            &group_rules,
            &restored.groups,
        )));
        let downstream = Arc::new(Downstream::new(
            SessionSettings {
                server: config.server.clone(),
                difficulty: config.difficulty.policy()?,
                per_worker_metrics: config.api.per_worker_metrics,
            },
            handle.clone(),
            metrics.clone(),
            group_rules.clone(),
            gates,
        ));
        let sessions = downstream.control.clone();
        // The power poller: the controller tells it which machines to watch; it never waits on
        // a firmware, nor does anyone wait on it.
        let (poller, power) = Poller::new(config.power.clone(), tasks.clone());
        tasks.spawn(poller.run(rest.child_token()));
        let meters: Vec<(String, Arc<dyn Meter>)> = config
            .meters
            .iter()
            .filter_map(|m| {
                let meter: Arc<dyn Meter> = Arc::new(ModbusMeter::new(m)?);
                Some((m.group.clone(), meter))
            })
            .collect();
        let (meter_poller, meter_book) = MeterPoller::new(
            meters,
            config.power.fast_poll_interval,
            config.power.request_timeout,
        );
        meter_poller.spawn(&tasks, rest.child_token());
        let (controller, groups) = GroupController::new(ControllerParts {
            config: Arc::clone(&config),
            groups: group_rules.clone(),
            sessions: sessions.clone(),
            hooks,
            store,
            restored,
            events,
            metrics: metrics.clone(),
            cancel: control.clone(),
            tracker: tasks.clone(),
            runtime: tokio::runtime::Handle::current(),
            power: power.clone(),
            meters: meter_book,
        });
        let controller = controller
            .spawn(&tasks)
            .map_err(StartError::ControllerThread)?;
        session_tasks.spawn(downstream::listen(
            miners,
            downstream,
            sessions_cancel.clone(),
            session_tasks.clone(),
        ));
        tasks.spawn(api::serve(
            api_listener,
            ApiState {
                metrics: metrics.clone(),
                router: handle.clone(),
                sessions: sessions.clone(),
                group_rules,
                groups: groups.clone(),
                token,
                power: Arc::clone(&power.book),
                power_stale_ms: u64::try_from(
                    (config.power.poll_interval * 3 + config.power.request_timeout).as_millis(),
                )
                .unwrap_or(u64::MAX),
            },
            rest.child_token(),
        ));
        let stop = Stop {
            _controller_on_drop: control.clone().drop_guard(),
            control,
            controller,
            sessions: sessions_cancel,
            session_tasks,
            rest,
            tasks,
            grace: config.server.shutdown_grace,
        };
        Ok(Proxy {
            miner_addr,
            api_addr,
            metrics,
            router: handle,
            sessions,
            groups,
            state_dir: config.state.dir.clone(),
            stop,
        })
    }

    /// Graceful stop, in order: the group controller (it decides no more transitions on a farm
    /// whose sessions are going away), then stop accepting and end every session (each flushes
    /// its last lines); only once they are gone (no share can be forwarded any more) the pool
    /// connections, which send what is queued and wait up to `server.shutdown_grace` for the
    /// pool's answers, then the API. Every forwarded share ends counted.
    pub async fn shutdown(self) {
        let stop = self.stop;
        stop.control.cancel();
        let _ = stop.controller.await;
        stop.sessions.cancel();
        finish(&stop.session_tasks, stop.grace, "miner sessions").await;
        stop.rest.cancel();
        finish(&stop.tasks, stop.grace, "pool connections, router and API").await;
    }

    /// Fast stop: everything is cancelled at once (the pool connections still count what they
    /// cannot send as lost), for SIGINT or a second signal.
    pub async fn abort(self) {
        let stop = self.stop;
        stop.control.cancel();
        stop.sessions.cancel();
        stop.rest.cancel();
        stop.session_tasks.close();
        stop.tasks.close();
        let _ = tokio::time::timeout(stop.grace, async {
            stop.session_tasks.wait().await;
            stop.tasks.wait().await;
        })
        .await;
    }

    /// A token that is cancelled when the proxy's pool connections, controller and API stop.
    pub fn cancelled(&self) -> CancellationToken {
        self.stop.rest.clone()
    }
}
