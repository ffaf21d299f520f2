//! The router: which pool serves the miners, and the work each slot of miners gets.
//!
//! Miners are grouped into *slots*: slot k is served by the k-th connection to the serving pool,
//! and a slot holds as many miners as that connection's extranonce prefix space allows (65,536
//! with the default 2-byte prefix). A new slot, with one connection per pool, opens only when
//! every slot is full.
//!
//! The router task owns all upstream state. For each slot it publishes an immutable
//! [`WorkState`] through a `watch` channel: the pool's extranonce split, the live jobs (prepared
//! once), the latest job serialized once as shared bytes, the pool's difficulty and where accepted
//! shares go. Sessions read it without locks; a change of `epoch` means their extranonce must
//! change (failover, reconnect, `mining.set_extranonce`).
//!
//! Failover: pools are kept connected in priority order; the serving pool is the best one that is
//! connected and has sent a job. When it fails, the next healthy pool serves at once (its
//! connection is already warm); a better pool takes over again only after it has been healthy for
//! `failover.return_after`, so a flapping pool does not bounce the farm.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::protocol::{Difficulty, Extranonce1, JobId, notify_line};
use crate::upstream::{
    ConnKey, ConnectionSettings, PoolSession, PoolTarget, UpstreamEvent, run_connection,
};
use crate::work::{
    DEFAULT_JOB_HISTORY, ExtranonceAllocator, ExtranonceSplit, ForwardShare, JobBook, Threshold,
};

/// How long a subscribed higher-priority pool may take to send its first job before a lower one
/// starts serving (only when nothing serves yet).
const STARTUP_PREFERENCE_WAIT: Duration = Duration::from_secs(3);

/// The newest job of a slot, serialized once for every miner of the slot.
#[derive(Debug, Clone)]
pub struct PublishedJob {
    /// Sequence number in the slot's job book.
    pub seq: u64,
    /// The `mining.notify` line as the pool sent it.
    pub line: Bytes,
    /// The same job with `clean_jobs = true`, for miners whose extranonce just changed.
    pub clean_line: Bytes,
    /// When the pool's notify arrived.
    pub received: Instant,
}

/// What every miner of a slot works from. Immutable; a new one is published on every change.
#[derive(Debug)]
pub struct WorkState {
    /// Changes when the miners' extranonce must change (new connection, set_extranonce).
    pub epoch: u64,
    /// The serving pool's name.
    pub upstream: Arc<str>,
    /// The pool's extranonce1 for this connection.
    pub pool_extranonce1: Extranonce1,
    /// How the pool's extranonce2 is shared.
    pub split: ExtranonceSplit,
    /// Prefixes of this connection. A std mutex: held only for an O(1) allocate or release,
    /// never across an await, so an async mutex would only add cost.
    pub allocator: Arc<Mutex<ExtranonceAllocator>>,
    /// Version-rolling mask the pool granted (0: none).
    pub version_mask: u32,
    /// The pool's share difficulty.
    pub difficulty: Difficulty,
    /// The pool's share target now (for jobs to come).
    pub threshold: Threshold,
    /// The pool's share target of each live job (by sequence number).
    pub job_thresholds: Vec<(u64, Threshold)>,
    /// Live jobs.
    pub book: JobBook,
    /// The newest job, serialized.
    pub job: Option<PublishedJob>,
    /// Where accepted shares that meet the pool's target go.
    pub submit: mpsc::Sender<ForwardShare>,
}

impl WorkState {
    /// The connection's prefix allocator, locked for one allocate or release.
    pub fn lock_allocator(&self) -> std::sync::MutexGuard<'_, ExtranonceAllocator> {
        self.allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pool's target for the job with sequence number `seq` (the current one if unknown).
    pub fn upstream_threshold(&self, seq: u64) -> &Threshold {
        self.job_thresholds
            .iter()
            .rev()
            .find(|(job, _)| *job == seq)
            .map_or(&self.threshold, |(_, threshold)| threshold)
    }
}

/// The per-slot work channel sessions watch.
pub type WorkReceiver = watch::Receiver<Option<Arc<WorkState>>>;

/// Requests sessions make of the router.
#[derive(Debug)]
pub enum RouterRequest {
    /// Every slot is full: open a new one. Answers its index.
    AddSlot {
        /// A slot with free prefixes (new or existing); None at `server.max_upstream_connections`.
        reply: oneshot::Sender<Option<usize>>,
    },
}

/// An upstream as the router last saw it, for the API.
#[derive(Debug, Clone)]
struct UpstreamRecord {
    name: String,
    url: String,
    priority: u32,
    state: &'static str,
    connections: usize,
    difficulty: Option<f64>,
    extranonce1: Option<String>,
    extranonce2_size: Option<usize>,
    split: Option<ExtranonceSplit>,
    last_job: Option<Instant>,
    allocators: Vec<Arc<Mutex<ExtranonceAllocator>>>,
}

/// One upstream in `GET /api/v1/upstreams`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpstreamView {
    /// Configured name.
    pub name: String,
    /// Configured url.
    pub url: String,
    /// Lower is preferred.
    pub priority: u32,
    /// serving | standby | connecting | down.
    pub state: String,
    /// Pool connections up (one per slot).
    pub connections: usize,
    /// The pool's share difficulty.
    pub difficulty: Option<f64>,
    /// The pool's extranonce1 on slot 0.
    pub extranonce1: Option<String>,
    /// The pool's extranonce2 size.
    pub extranonce2_size: Option<usize>,
    /// Bytes of it reserved per miner.
    pub prefix_size: Option<usize>,
    /// Bytes of it each miner rolls.
    pub miner_extranonce2_size: Option<usize>,
    /// Miners holding a prefix on this pool's connections.
    pub miners: u64,
    /// Seconds since the pool's last job.
    pub last_job_age_seconds: Option<f64>,
}

/// What sessions hold to find work: the slots and a way to ask for more.
#[derive(Clone)]
pub struct RouterHandle {
    slots: Arc<RwLock<Vec<WorkReceiver>>>,
    requests: mpsc::Sender<RouterRequest>,
    upstreams: Arc<RwLock<Vec<UpstreamRecord>>>,
}

impl RouterHandle {
    /// The work channels of every slot, in order.
    pub fn slots(&self) -> Vec<WorkReceiver> {
        self.slots
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Asks for a new slot (new connections to every pool); None if the router is gone.
    pub async fn add_slot(&self) -> Option<WorkReceiver> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(RouterRequest::AddSlot { reply })
            .await
            .ok()?;
        let index = answer.await.ok()??;
        self.slots().get(index).cloned()
    }

    /// Every configured upstream, in priority order, as of now.
    pub fn upstreams(&self) -> Vec<UpstreamView> {
        let records = self
            .upstreams
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        records
            .into_iter()
            .map(|r| UpstreamView {
                miners: r
                    .allocators
                    .iter()
                    .map(|a| a.lock().unwrap_or_else(|p| p.into_inner()).in_use())
                    .sum(),
                last_job_age_seconds: r.last_job.map(|t| t.elapsed().as_secs_f64()),
                prefix_size: r.split.map(|s| s.prefix_size),
                miner_extranonce2_size: r.split.map(|s| s.miner_size),
                name: r.name,
                url: r.url,
                priority: r.priority,
                state: r.state.to_owned(),
                connections: r.connections,
                difficulty: r.difficulty,
                extranonce1: r.extranonce1,
                extranonce2_size: r.extranonce2_size,
            })
            .collect()
    }

    /// A short description of the serving state, for the demo's status line and health checks.
    pub fn serving_upstream(&self) -> Option<Arc<str>> {
        self.slots()
            .first()
            .and_then(|rx| rx.borrow().as_ref().map(|w| Arc::clone(&w.upstream)))
    }
}

struct ConnState {
    session: PoolSession,
    epoch: u64,
    difficulty: Difficulty,
    book: JobBook,
    allocator: Arc<Mutex<ExtranonceAllocator>>,
    split: ExtranonceSplit,
    job: Option<PublishedJob>,
    /// The pool's target for each live job: set_difficulty applies from the next job, so a share
    /// is forwarded when it meets the target of its own job.
    job_thresholds: VecDeque<(u64, Threshold)>,
}

struct Pool {
    target: Arc<PoolTarget>,
    /// One entry per slot; None while that connection is down.
    conns: Vec<Option<ConnState>>,
    /// Since when slot 0's connection is up with a job.
    healthy_since: Option<Instant>,
    /// Since when slot 0's connection is subscribed (it may not have a job yet).
    ready_since: Option<Instant>,
    /// Slot 0's connection went down since it was last ready (or never came up).
    failed: bool,
}

/// Counters the router hands out: the next epoch (a miner's extranonce changes with it) and the
/// last job id.
struct Ids {
    epoch: u64,
    job: u64,
}

/// The router task's state.
pub struct Router {
    config: Arc<Config>,
    connection_settings: Arc<ConnectionSettings>,
    pools: Vec<Pool>,
    slot_senders: Vec<watch::Sender<Option<Arc<WorkState>>>>,
    slots: Arc<RwLock<Vec<WorkReceiver>>>,
    upstream_records: Arc<RwLock<Vec<UpstreamRecord>>>,
    active: Option<usize>,
    events_tx: mpsc::Sender<UpstreamEvent>,
    events: mpsc::Receiver<UpstreamEvent>,
    requests: mpsc::Receiver<RouterRequest>,
    metrics: Metrics,
    /// Epochs and hashgate's job ids, both unique for the life of the process.
    ids: Ids,
    /// When the router started: at startup, better pools get a moment to come up first.
    started: Instant,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Router {
    /// Builds the router (opening slot 0's pool connections) and the handle sessions use; `run`
    /// it on a task. Must be called inside a tokio runtime.
    pub fn new(
        config: Arc<Config>,
        metrics: Metrics,
        cancel: CancellationToken,
        tracker: TaskTracker,
    ) -> Result<(Router, RouterHandle), ConfigError> {
        let (events_tx, events) = mpsc::channel(1024);
        let (requests_tx, requests) = mpsc::channel(64);
        let slots = Arc::new(RwLock::new(Vec::new()));
        let upstream_records = Arc::new(RwLock::new(Vec::new()));
        let pools = config
            .upstreams_by_priority()
            .into_iter()
            .map(|upstream| {
                Ok(Pool {
                    target: Arc::new(PoolTarget {
                        endpoint: upstream.endpoint()?,
                        config: upstream,
                    }),
                    conns: Vec::new(),
                    healthy_since: None,
                    ready_since: None,
                    failed: false,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        for upstream in &config.upstreams {
            metrics.register_upstream(&upstream.name);
        }
        let router = Router {
            connection_settings: Arc::new(ConnectionSettings {
                failover: config.failover.clone(),
                // Leave a margin inside the proxy's own grace period for the counting.
                shutdown_grace: config.server.shutdown_grace.mul_f64(0.8),
            }),
            config,
            pools,
            slot_senders: Vec::new(),
            slots: Arc::clone(&slots),
            upstream_records: Arc::clone(&upstream_records),
            active: None,
            events_tx,
            events,
            requests,
            metrics,
            ids: Ids { epoch: 1, job: 0 },
            started: Instant::now(),
            cancel,
            tracker,
        };
        let mut router = router;
        // Slot 0 exists before any miner can connect, so every session has a channel to watch.
        router.open_slot();
        router.record_status();
        let handle = RouterHandle {
            slots,
            requests: requests_tx,
            upstreams: upstream_records,
        };
        Ok((router, handle))
    }

    /// Runs until cancelled.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                // Session requests first: they are rare, and a burst of pool events must not
                // keep a miner waiting for its slot.
                Some(request) = self.requests.recv() => match request {
                    RouterRequest::AddSlot { reply } => {
                        let _ = reply.send(self.slot_with_room());
                    }
                },
                Some(event) = self.events.recv() => {
                    self.on_event(event);
                    self.record_status();
                }
                _ = tick.tick() => {
                    self.choose_active();
                    self.record_status();
                }
            }
        }
    }

    /// Publishes what the API shows about each upstream.
    fn record_status(&self) {
        let records = self
            .pools
            .iter()
            .enumerate()
            .map(|(index, pool)| {
                let first = pool.conns.first().and_then(Option::as_ref);
                let state = if self.active == Some(index) {
                    "serving"
                } else if pool.healthy_since.is_some() {
                    "standby"
                } else if pool.ready_since.is_some() {
                    "connecting"
                } else {
                    "down"
                };
                UpstreamRecord {
                    name: pool.target.config.name.clone(),
                    url: pool.target.config.url.clone(),
                    priority: pool.target.config.priority,
                    state,
                    connections: pool.conns.iter().filter(|c| c.is_some()).count(),
                    difficulty: first.map(|c| c.difficulty.get()),
                    extranonce1: first.map(|c| c.session.extranonce1.to_hex()),
                    extranonce2_size: first.map(|c| c.session.extranonce2_size),
                    split: first.map(|c| c.split),
                    last_job: first.and_then(|c| c.job.as_ref().map(|j| j.received)),
                    allocators: pool
                        .conns
                        .iter()
                        .flatten()
                        .map(|c| Arc::clone(&c.allocator))
                        .collect(),
                }
            })
            .collect();
        *self
            .upstream_records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = records;
    }

    /// A slot whose serving connection has free prefixes, or a new slot. Many sessions that
    /// found every slot full ask at once; only the first opens a slot, the others get it.
    fn slot_with_room(&mut self) -> Option<usize> {
        let newest = self.slot_senders.len().checked_sub(1)?;
        let newest_has_room = self
            .active
            .and_then(|active| self.pools[active].conns.get(newest))
            .and_then(Option::as_ref)
            .is_none_or(|conn| {
                conn.allocator
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .has_free()
            });
        if newest_has_room {
            return Some(newest);
        }
        if self.slot_senders.len() >= self.config.server.max_upstream_connections {
            warn!(
                limit = self.config.server.max_upstream_connections,
                "every extranonce prefix of every connection is in use (server.max_upstream_connections)"
            );
            return None;
        }
        Some(self.open_slot())
    }

    /// Opens slot k: a work channel and one connection per pool.
    fn open_slot(&mut self) -> usize {
        let slot = self.slot_senders.len();
        let (tx, rx) = watch::channel(None);
        self.slot_senders.push(tx);
        self.slots
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(rx);
        for (index, pool) in self.pools.iter_mut().enumerate() {
            pool.conns.push(None);
            let key = ConnKey { pool: index, slot };
            self.tracker.spawn(run_connection(
                key,
                Arc::clone(&pool.target),
                Arc::clone(&self.connection_settings),
                self.events_tx.clone(),
                self.metrics.clone(),
                self.cancel.child_token(),
            ));
        }
        if slot > 0 {
            info!(
                slot,
                "opened another slot: every extranonce prefix of the others is in use"
            );
        }
        slot
    }

    fn on_event(&mut self, event: UpstreamEvent) {
        match event {
            UpstreamEvent::Ready { key, session } => {
                let name = self.pools[key.pool].target.config.name.clone();
                let split = match ExtranonceSplit::new(
                    session.extranonce1.len(),
                    session.extranonce2_size,
                    self.config.server.extranonce_prefix_size,
                    self.config.server.max_extranonce2_size,
                ) {
                    Ok(split) => split,
                    Err(error) => {
                        error!(upstream = %name, %error, "cannot share this pool's extranonce space between miners; not using it");
                        self.mark_unusable(key);
                        return;
                    }
                };
                let allocator = match ExtranonceAllocator::new(split.prefix_size) {
                    Ok(allocator) => allocator,
                    Err(error) => {
                        error!(upstream = %name, %error, "bad prefix size");
                        return;
                    }
                };
                info!(upstream = %name, slot = key.slot, prefix = split.prefix_size, miner_extranonce2 = split.miner_size, "extranonce split");
                let epoch = self.take_epoch();
                self.pools[key.pool].conns[key.slot] = Some(ConnState {
                    session,
                    epoch,
                    difficulty: Difficulty::ONE,
                    book: JobBook::new(DEFAULT_JOB_HISTORY),
                    allocator: Arc::new(Mutex::new(allocator)),
                    split,
                    job: None,
                    job_thresholds: VecDeque::new(),
                });
                if key.slot == 0 {
                    self.pools[key.pool].ready_since = Some(Instant::now());
                    self.pools[key.pool].failed = false;
                }
                self.publish_if_serving(key);
            }
            UpstreamEvent::Job {
                key,
                notify,
                received,
            } => {
                // Miners see hashgate's own job ids: unique for the life of the process, so a pool
                // that reuses ids after a reconnect or an extranonce change cannot make a stale
                // share look current.
                let miner_id = self.take_job_id();
                let Some(conn) = self.conn_mut(key) else {
                    return;
                };
                let mut notify = notify;
                let upstream_id = std::mem::replace(&mut notify.job_id, miner_id);
                let clean_line = if notify.clean_jobs {
                    None
                } else {
                    let mut clean = notify.clone();
                    clean.clean_jobs = true;
                    Some(notify_line(&clean))
                };
                let line = notify_line(&notify);
                let miner_id = std::mem::replace(&mut notify.job_id, upstream_id);
                let job = conn.book.push_renamed(notify, miner_id);
                conn.allocator
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .retire_jobs_before(conn.book.oldest_live_seq());
                if conn.job_thresholds.len() >= DEFAULT_JOB_HISTORY {
                    conn.job_thresholds.pop_front();
                }
                conn.job_thresholds
                    .push_back((job.seq(), conn.difficulty.to_threshold()));
                conn.job = Some(PublishedJob {
                    seq: job.seq(),
                    clean_line: clean_line.unwrap_or_else(|| line.clone()),
                    line,
                    received,
                });
                if key.slot == 0 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    self.metrics
                        .upstream
                        .last_job
                        .with_label_values(&[&self.pools[key.pool].target.config.name])
                        .set(now);
                }
                if key.slot == 0 && self.pools[key.pool].healthy_since.is_none() {
                    self.pools[key.pool].healthy_since = Some(Instant::now());
                }
                self.choose_active();
                self.publish_if_serving(key);
            }
            UpstreamEvent::Difficulty { key, difficulty } => {
                if let Some(conn) = self.conn_mut(key) {
                    conn.difficulty = difficulty;
                    self.publish_if_serving(key);
                }
            }
            UpstreamEvent::Extranonce {
                key,
                extranonce1,
                extranonce2_size,
            } => {
                let configured = self.config.server.extranonce_prefix_size;
                let max = self.config.server.max_extranonce2_size;
                let epoch = self.take_epoch();
                let name = self.pools[key.pool].target.config.name.clone();
                let Some(conn) = self.conn_mut(key) else {
                    return;
                };
                match ExtranonceSplit::new(extranonce1.len(), extranonce2_size, configured, max)
                    .map_err(|e| e.to_string())
                    .and_then(|split| {
                        ExtranonceAllocator::new(split.prefix_size)
                            .map(|a| (split, a))
                            .map_err(|e| e.to_string())
                    }) {
                    Ok((split, allocator)) => {
                        info!(upstream = %name, %extranonce1, extranonce2_size, "pool changed our extranonce");
                        conn.session.extranonce1 = extranonce1;
                        conn.session.extranonce2_size = extranonce2_size;
                        conn.split = split;
                        conn.allocator = Arc::new(Mutex::new(allocator));
                        conn.epoch = epoch;
                        // Jobs built for the old extranonce are void; the pool follows with new ones.
                        conn.book = JobBook::new(DEFAULT_JOB_HISTORY);
                        conn.job = None;
                        conn.job_thresholds.clear();
                        self.publish_if_serving(key);
                    }
                    Err(error) => {
                        error!(upstream = %name, %error, "pool's new extranonce cannot be shared; not using this connection");
                        self.mark_unusable(key);
                    }
                }
            }
            UpstreamEvent::VersionMask { key, mask } => {
                if let Some(conn) = self.conn_mut(key) {
                    conn.session.version_mask = mask;
                    self.publish_if_serving(key);
                }
            }
            UpstreamEvent::Down { key, cause } => {
                let pool = &mut self.pools[key.pool];
                if let Some(slot) = pool.conns.get_mut(key.slot) {
                    *slot = None;
                }
                if key.slot == 0 {
                    pool.healthy_since = None;
                    pool.ready_since = None;
                    pool.failed = true;
                }
                let reason = cause.describe();
                let kind = cause.error.label();
                self.metrics
                    .upstream
                    .disconnects
                    .with_label_values(&[&pool.target.config.name, kind])
                    .inc();
                warn!(upstream = %pool.target.config.name, slot = key.slot, cause = kind, %reason, "upstream connection down");
                self.choose_active();
                self.publish_if_serving(key);
            }
        }
    }

    /// A connection that cannot serve miners (its extranonce cannot be split) counts as down,
    /// so failover moves miners away from it.
    fn mark_unusable(&mut self, key: ConnKey) {
        if let Some(pool) = self.pools.get_mut(key.pool) {
            if let Some(conn) = pool.conns.get_mut(key.slot) {
                *conn = None;
            }
            if key.slot == 0 {
                pool.healthy_since = None;
                pool.ready_since = None;
            }
        }
        self.choose_active();
    }

    fn take_job_id(&mut self) -> JobId {
        self.ids.job += 1;
        JobId::new(&format!("{:x}", self.ids.job)).expect("a short hex string is a valid id")
    }

    fn take_epoch(&mut self) -> u64 {
        let epoch = self.ids.epoch;
        self.ids.epoch += 1;
        epoch
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<&mut ConnState> {
        self.pools
            .get_mut(key.pool)?
            .conns
            .get_mut(key.slot)?
            .as_mut()
    }

    /// Picks the serving pool: keep the current one while healthy; fail over to the best healthy
    /// one when it is not; return to a better one once it has been healthy for `return_after`.
    fn choose_active(&mut self) {
        let best = self.pools.iter().position(|p| p.healthy_since.is_some());
        // With nothing serving yet (startup, or every pool was down), a better pool that is
        // subscribed and only waiting for its first job gets a moment, so the farm starts on
        // its primary instead of on whichever pool answered first.
        if self.active.is_none()
            && let Some(best) = best
        {
            let starting = self.started.elapsed() < STARTUP_PREFERENCE_WAIT;
            let better_is_coming = self.pools[..best].iter().any(|p| {
                p.healthy_since.is_none()
                    && !p.failed
                    && match p.ready_since {
                        Some(t) => t.elapsed() < STARTUP_PREFERENCE_WAIT,
                        None => starting,
                    }
            });
            if better_is_coming {
                return;
            }
        }
        let chosen = match self.active {
            Some(current) if self.pools[current].healthy_since.is_some() => match best {
                Some(better)
                    if better < current
                        && self.pools[better].healthy_since.is_some_and(|t| {
                            t.elapsed() >= self.connection_settings.failover.return_after
                        }) =>
                {
                    Some(better)
                }
                _ => Some(current),
            },
            _ => best,
        };
        if chosen == self.active {
            return;
        }
        let from = self
            .active
            .map(|i| self.pools[i].target.config.name.clone());
        let to = chosen.map(|i| self.pools[i].target.config.name.clone());
        match (&from, &to) {
            (None, Some(to)) => info!(%to, "serving upstream"),
            (Some(from), Some(to)) => warn!(%from, %to, "serving upstream changed (failover)"),
            (_, None) => error!(from = ?from, "no healthy upstream: miners keep their last work"),
        }
        if self.active.is_some() {
            self.metrics.upstream.failovers.inc();
        }
        for pool in &self.pools {
            self.metrics
                .upstream
                .active
                .with_label_values(&[&pool.target.config.name])
                .set(i64::from(
                    to.as_deref() == Some(pool.target.config.name.as_str()),
                ));
        }
        self.active = chosen;
        if chosen.is_some() {
            for slot in 0..self.slot_senders.len() {
                self.publish(slot);
            }
        }
    }

    fn publish_if_serving(&mut self, key: ConnKey) {
        if self.active == Some(key.pool) {
            self.publish(key.slot);
        }
    }

    /// Publishes slot `slot`'s work from the serving pool's connection.
    fn publish(&self, slot: usize) {
        let Some(active) = self.active else { return };
        let pool = &self.pools[active];
        let state = pool.conns.get(slot).and_then(Option::as_ref).map(|conn| {
            Arc::new(WorkState {
                epoch: conn.epoch,
                upstream: Arc::from(pool.target.config.name.as_str()),
                pool_extranonce1: conn.session.extranonce1,
                split: conn.split,
                allocator: Arc::clone(&conn.allocator),
                version_mask: conn.session.version_mask,
                difficulty: conn.difficulty,
                threshold: conn.difficulty.to_threshold(),
                job_thresholds: conn.job_thresholds.iter().copied().collect(),
                book: conn.book.clone(),
                job: conn.job.clone(),
                submit: conn.session.submit.clone(),
            })
        });
        if let Some(sender) = self.slot_senders.get(slot) {
            // A slot without a live connection keeps its last work: miners keep hashing, and
            // shares they find on it are counted lost when they cannot be forwarded.
            if state.is_some() {
                sender.send_replace(state);
            }
        }
    }
}
