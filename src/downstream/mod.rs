//! Miner sessions: the listener and one task per miner connection.
//!
//! Each session task owns its state outright (no lock, no back-pointer). It reads the miner's
//! lines, answers every request by its id at once, verifies every share locally with
//! [`crate::work::check_share`], and forwards shares that meet the pool's target to the
//! connection of the work they were made from. Work arrives through the slot's `watch` channel
//! (one serialization per job for every miner); outbound lines go through a bounded queue to a
//! writer task, and a miner that does not read is disconnected rather than slowing the others.
//!
//! Sessions also take [`SessionCommand`]s (stop sending work, show a message, reconnect elsewhere,
//! close) so groups and the API can act on a miner without touching its state.

mod reject;
mod session;
pub mod stats;
pub mod vardiff;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{DifficultyConfig, ServerConfig};
use crate::metrics::Metrics;
use crate::router::RouterHandle;

pub use reject::{reject_code, reject_response};
pub use session::serve_miner;
pub use stats::{WorkerSnapshot, WorkerStats};

/// What a session can be told to do from outside.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionCommand {
    /// Stop sending new work (shares on work already given are still verified).
    PauseWork,
    /// Admitted by the resume ramp: work again. `ramp` names the ramp (its drain's start), so
    /// an admission that crossed a newer drain or ramp on its way is ignored.
    ResumeWork {
        /// The ramp's epoch, as in [`crate::groups::Gate::Ramp`].
        ramp: u64,
    },
    /// `client.show_message`.
    ShowMessage(String),
    /// `client.reconnect` to another host (or the same when `host` is None), then close.
    Reconnect {
        /// Host.
        host: Option<String>,
        /// Port.
        port: Option<u16>,
        /// Seconds the miner should wait.
        wait_seconds: Option<u64>,
    },
    /// Close the connection.
    Close {
        /// Logged and counted.
        reason: String,
    },
}

/// A live session as others can see it.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    /// Where commands go.
    pub commands: mpsc::Sender<SessionCommand>,
    /// What the API shows; written only by the session.
    pub stats: Arc<Mutex<WorkerStats>>,
}

/// Every live session, by id: how groups and the API reach a miner. A std mutex: held for a map
/// insert, remove or copy, never across an await.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: Mutex<HashMap<u64, SessionEntry>>,
}

impl SessionRegistry {
    fn insert(&self, id: u64, entry: SessionEntry) {
        self.lock().insert(id, entry);
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Snapshots of every live session, by id.
    pub fn workers(&self) -> Vec<WorkerSnapshot> {
        let mut workers: Vec<WorkerSnapshot> = self
            .snapshot()
            .into_iter()
            .map(|(id, entry)| {
                entry
                    .stats
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .snapshot(id)
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        workers
    }

    /// The command channel of a session.
    pub fn commands(&self, id: u64) -> Option<mpsc::Sender<SessionCommand>> {
        self.lock().get(&id).map(|entry| entry.commands.clone())
    }

    /// A copy of every live session.
    pub fn snapshot(&self) -> Vec<(u64, SessionEntry)> {
        self.lock()
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect()
    }

    /// Visits every live session under the registry's lock (no copy of the map: the group
    /// controller looks at every session several times a second). `visit` must not block.
    pub fn for_each(&self, mut visit: impl FnMut(u64, &SessionEntry)) {
        for (id, entry) in self.lock().iter() {
            visit(*id, entry);
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionEntry>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What every session shares, read-only.
pub struct DownstreamContext {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[difficulty]`.
    pub difficulty: DifficultyConfig,
    /// Where work comes from.
    pub router: RouterHandle,
    /// Counters.
    pub metrics: Metrics,
    /// Live sessions.
    pub sessions: SessionRegistry,
    /// Stops every session.
    pub cancel: CancellationToken,
    /// Whether sessions export per-worker series (`api.per_worker_metrics`).
    pub per_worker_metrics: bool,
    /// The hardware groups miners are assigned to at authorize.
    pub groups: crate::config::Groups,
    /// Each group's gate (may it get work), watched by its sessions from authorize on.
    pub gates: Arc<crate::groups::GroupGates>,
    next_id: AtomicU64,
}

impl DownstreamContext {
    /// A context for the listener and its sessions.
    pub fn new(
        server: ServerConfig,
        difficulty: DifficultyConfig,
        router: RouterHandle,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Self {
        metrics
            .target_share_interval_seconds
            .set(difficulty.target_share_interval.as_secs_f64());
        Self {
            server,
            difficulty,
            router,
            metrics,
            sessions: SessionRegistry::default(),
            cancel,
            per_worker_metrics: false,
            groups: crate::config::Groups::default(),
            gates: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

/// Accepts miners until cancelled, at most `server.max_miners` at once.
pub async fn listen(listener: TcpListener, context: Arc<DownstreamContext>, tracker: TaskTracker) {
    let permits = Arc::new(Semaphore::new(context.server.max_miners));
    let local = listener.local_addr().ok();
    info!(listen = ?local, "accepting miners");
    loop {
        let permit = tokio::select! {
            _ = context.cancel.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = context.cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream)
                    .set_send_buffer_size(context.server.socket_send_buffer);
                let id = context.next_id.fetch_add(1, Ordering::Relaxed);
                let (commands_tx, commands_rx) = mpsc::channel(16);
                let stats = Arc::new(Mutex::new(WorkerStats::new(
                    peer,
                    Arc::clone(&context.groups.default_group().name),
                )));
                context.sessions.insert(
                    id,
                    SessionEntry {
                        commands: commands_tx,
                        stats: Arc::clone(&stats),
                    },
                );
                let context = Arc::clone(&context);
                tracker.spawn(async move {
                    serve_miner(id, stream, peer, Arc::clone(&context), commands_rx, stats).await;
                    context.sessions.remove(id);
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: wait a little instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
