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
use crate::downstream::{self, DownstreamContext};
use crate::groups::hooks::HookRunner;
use crate::groups::store::Store;
use crate::groups::{ControllerParts, GroupController, GroupGates, GroupsHandle};
use crate::metrics::Metrics;
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
    #[error("groups: {0}")]
    Groups(#[from] crate::config::GroupError),
    /// The state directory is unusable or holds a corrupt state file.
    #[error("{0}")]
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
        state: crate::groups::GroupState,
    },
    /// A hook could not be prepared (its secret file).
    #[error("{0}")]
    Hooks(#[from] crate::groups::hooks::HookSetupError),
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
    /// Live sessions and their command channels.
    pub downstream: Arc<DownstreamContext>,
    /// The group controller.
    pub groups: GroupsHandle,
    /// `state.dir`: group states, the audit log, hooks' workers files.
    pub state_dir: std::path::PathBuf,
    cancel: CancellationToken,
    tracker: TaskTracker,
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
        let miners = bind(config.server.listen, "server.listen").await?;
        let api_listener = bind(config.api.listen, "api.listen").await?;
        let miner_addr = miners.local_addr().unwrap_or(config.server.listen);
        let api_addr = api_listener.local_addr().unwrap_or(config.api.listen);
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        info!(
            sha256 = crate::work::sha256::backend(),
            version = env!("CARGO_PKG_VERSION"),
            "hashgate starting"
        );

        let upstream_cancel = cancel.child_token();
        let (router, handle) = Router::new(
            Arc::clone(&config),
            metrics.clone(),
            upstream_cancel,
            tracker.clone(),
        );
        tracker.spawn(router.run());

        let downstream_cancel = cancel.child_token();
        let mut context = DownstreamContext::new(
            config.server.clone(),
            config.difficulty.clone(),
            handle.clone(),
            metrics.clone(),
            downstream_cancel,
        );
        context.per_worker_metrics = config.api.per_worker_metrics;
        context.groups = crate::config::Groups::new(&config.groups)?;
        if let Some((group, record)) = restored.groups.iter().find(|(name, record)| {
            record.state != crate::groups::GroupState::Active
                && !context.groups.iter().any(|g| *g.name == ***name)
        }) {
            return Err(StartError::OrphanedDrain {
                path: store.state_path().to_owned(),
                group: group.clone(),
                state: record.state,
            });
        }
        for group in context.groups.iter() {
            metrics.register_group(&group.name);
        }
        let gates = Arc::new(GroupGates::new(GroupController::restored_gates(
            &context.groups,
            &restored,
        )));
        context.gates = Arc::clone(&gates);
        let context = Arc::new(context);
        let hooks = HookRunner::new(
            &config.hooks,
            metrics.clone(),
            crate::groups::hooks::workers_dir(store.dir()),
        )?;
        let (controller, groups) = GroupController::new(ControllerParts {
            config: Arc::clone(&config),
            downstream: Arc::clone(&context),
            gates,
            hooks,
            store,
            restored,
            events,
            metrics: metrics.clone(),
            cancel: cancel.child_token(),
            tracker: tracker.clone(),
        });
        tracker.spawn(controller.run());
        tracker.spawn(downstream::listen(
            miners,
            Arc::clone(&context),
            tracker.clone(),
        ));
        tracker.spawn(api::serve(
            api_listener,
            ApiState {
                metrics: metrics.clone(),
                router: handle.clone(),
                downstream: Arc::clone(&context),
                groups: groups.clone(),
                token,
            },
            cancel.child_token(),
        ));
        Ok(Proxy {
            miner_addr,
            api_addr,
            metrics,
            router: handle,
            downstream: context,
            groups,
            state_dir: config.state.dir.clone(),
            cancel,
            tracker,
            grace: config.server.shutdown_grace,
        })
    }

    /// Graceful stop: miners are disconnected first (no new shares), upstream connections get
    /// their grace period to collect answers to shares in flight, then everything ends.
    pub async fn shutdown(self) {
        self.downstream.cancel.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within server.shutdown_grace");
        }
    }

    /// A token that is cancelled when the proxy stops.
    pub fn cancelled(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
