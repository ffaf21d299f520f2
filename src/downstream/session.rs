//! One miner connection: the task, its state and its handlers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prometheus::{Counter, IntCounter, IntGauge};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info, info_span, warn};

use super::reject::reject_response;
use super::stats::WorkerStats;
use super::vardiff::Vardiff;
use super::{Downstream, Gate, SessionCommand};
use crate::protocol::{
    Authorize, Configure, ConfigureResult, Difficulty, Extranonce1, FrameError, Id, JobId,
    LineCodec, Message, Method, ParamError, ProtocolError, Reconnect, Request, Response,
    SetExtranonce, Submit, Subscribe, SubscribeResult, code, method, notify_line,
};
use crate::router::{WorkReceiver, WorkState};
use crate::work::{
    DuplicateFilter, ExtranoncePrefix, ForwardShare, InvalidShare, Reject, ShareContext, Threshold,
    Verdict, check_share_for_job,
};

/// The mask hashgate asks pools for; what a miner is offered before any pool has answered.
const DEFAULT_VERSION_MASK: u32 = 0x1fff_e000;
/// Worker names one connection may authorize (rigs behind one socket use a few; more is abuse).
const MAX_WORKERS_PER_CONNECTION: usize = 64;
/// Initial read buffer per miner (grows to `server.max_line_bytes` if a line needs it).
const READ_BUFFER: usize = 1024;
/// Write buffer per miner: batches replies and a job into one write; a longer line (a job with a
/// large coinbase) bypasses it.
const WRITE_BUFFER: usize = 2048;
/// Unparseable lines tolerated before the connection is closed.
const MAX_BAD_LINES: u32 = 50;
/// One share in this many is timed for `hashgate_share_verify_seconds`.
const VERIFY_SAMPLE: u32 = 64;

/// Why a session ended: one log line and one `hashgate_miner_disconnects_total{reason}`.
#[derive(Debug)]
enum Ending {
    Eof,
    Idle,
    SlowReader,
    LineTooLong,
    Io(String),
    Shutdown,
    Command(String),
    Reconnect,
    NoExtranonce,
    TooManyBadLines,
    Drained,
}

impl Ending {
    fn label(&self) -> &'static str {
        match self {
            Ending::Eof => "eof",
            Ending::Idle => "idle",
            Ending::SlowReader => "slow_reader",
            Ending::LineTooLong => "line_too_long",
            Ending::Io(_) => "io",
            Ending::Shutdown => "shutdown",
            Ending::Command(_) => "command",
            Ending::Reconnect => "reconnect",
            Ending::NoExtranonce => "extranonce_exhausted",
            Ending::TooManyBadLines => "protocol",
            Ending::Drained => "drained",
        }
    }
}

/// An accepted miner connection and what the registry gave it.
pub struct Connection {
    /// The session's id in the registry (grows with every connection).
    pub id: u64,
    /// The socket.
    pub stream: TcpStream,
    /// The miner's address.
    pub peer: SocketAddr,
    /// Commands for this session.
    pub commands: mpsc::Receiver<SessionCommand>,
    /// What the API shows; written only by this session.
    pub stats: Arc<Mutex<WorkerStats>>,
}

/// Serves one miner until it leaves, misbehaves, or `cancel` stops hashgate. Its writer task
/// runs on `tracker`, so a shutdown waits for the last lines to be flushed.
pub async fn serve_miner(
    connection: Connection,
    context: Arc<Downstream>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let Connection {
        id,
        stream,
        peer,
        commands,
        stats,
    } = connection;
    let span = info_span!("miner", id, %peer, worker = field::Empty, group = field::Empty);
    async move {
        let metrics = context.metrics.clone();
        metrics.connections.inc();
        let (read, write) = stream.into_split();
        let (out_tx, out_rx) = mpsc::channel(context.settings.server.write_queue);
        let writer = tracker.spawn(write_lines(write, out_rx));
        let mut session = Session::new(id, peer, Arc::clone(&context), out_tx, stats, cancel);
        let ending = session.run(read, commands).await;
        session.release_extranonce();
        if !session.authorized.is_empty() {
            session.counters.workers.dec();
        }
        drop(session); // closes the queue: the writer flushes what is left and ends
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_err()
        {
            // The miner does not read: do not leave a task and a socket behind.
            writer.abort();
        }
        match &ending {
            Ending::Io(error) => info!(reason = ending.label(), %error, "miner disconnected"),
            Ending::Command(reason) => {
                info!(reason = ending.label(), %reason, "miner disconnected")
            }
            _ => info!(reason = ending.label(), "miner disconnected"),
        }
        metrics
            .disconnects
            .with_label_values(&[ending.label()])
            .inc();
        metrics.connections.dec();
    }
    .instrument(span)
    .await
}

/// Writes queued lines, batching whatever is queued into one flush.
async fn write_lines(write: OwnedWriteHalf, mut lines: mpsc::Receiver<Bytes>) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, write);
    while let Some(line) = lines.recv().await {
        if writer.write_all(&line).await.is_err() {
            return;
        }
        while let Ok(line) = lines.try_recv() {
            if writer.write_all(&line).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Counter handles of the miner's group, resolved once.
struct GroupCounters {
    accepted: IntCounter,
    stale: IntCounter,
    duplicate: IntCounter,
    low_difficulty: IntCounter,
    invalid: IntCounter,
    unauthorized: IntCounter,
    not_subscribed: IntCounter,
    accepted_difficulty: Counter,
    workers: IntGauge,
    refused: IntCounter,
}

impl GroupCounters {
    fn new(metrics: &crate::metrics::Metrics, group: &str) -> Self {
        let shares = |result: &str| metrics.shares.with_label_values(&[group, result]);
        Self {
            accepted: shares("accepted"),
            stale: shares("stale"),
            duplicate: shares("duplicate"),
            low_difficulty: shares("low_difficulty"),
            invalid: shares("invalid"),
            unauthorized: shares("unauthorized"),
            not_subscribed: shares("not_subscribed"),
            accepted_difficulty: metrics.accepted_difficulty.with_label_values(&[group]),
            workers: metrics.workers_connected.with_label_values(&[group]),
            refused: metrics.group_refused_miners.with_label_values(&[group]),
        }
    }

    fn rejected(&self, reject: &Reject) -> &IntCounter {
        match reject {
            Reject::Stale => &self.stale,
            Reject::Duplicate => &self.duplicate,
            Reject::LowDifficulty => &self.low_difficulty,
            Reject::Unauthorized => &self.unauthorized,
            Reject::NotSubscribed => &self.not_subscribed,
            _ => &self.invalid,
        }
    }
}

/// The miner's place in the extranonce space of the work it is on.
struct Binding {
    work: Arc<WorkState>,
    prefix: ExtranoncePrefix,
    extranonce1: Extranonce1,
}

/// A job as this miner received it: the id it was sent under and the difficulty in force for it.
/// Shares are checked and credited against exactly this; an id the miner was never sent (in this
/// extranonce epoch) is stale.
struct SentJob {
    id: JobId,
    seq: u64,
    difficulty: Difficulty,
    threshold: Threshold,
}

struct Session {
    id: u64,
    peer: SocketAddr,
    context: Arc<Downstream>,
    cancel: CancellationToken,
    out: mpsc::Sender<Bytes>,
    /// The miner's group (`default` until authorize).
    group: Arc<str>,
    counters: GroupCounters,
    authorized: Vec<String>,
    user_agent: Option<String>,
    /// Version rolling: the mask asked for in `mining.configure`, and the one in force.
    requested_mask: Option<u32>,
    version_mask: u32,
    extranonce_subscribed: bool,
    /// `minimum-difficulty` from configure.
    floor: Option<Difficulty>,
    /// The difficulty the miner should be at (applied from the next job).
    difficulty: Difficulty,
    sent_difficulty: Option<Difficulty>,
    sent_jobs: VecDeque<SentJob>,
    work_rx: Option<WorkReceiver>,
    binding: Option<Binding>,
    pending_subscribe: Option<(Id, Instant)>,
    work_started: bool,
    paused: bool,
    duplicates: DuplicateFilter,
    vardiff: Vardiff,
    last_activity: Instant,
    bad_lines: u32,
    submits: u32,
    /// Counter for re-sent job ids (`<id>.<n>`): never repeats within the session.
    aliases: u64,
    /// What the API shows about this miner.
    stats: Arc<Mutex<WorkerStats>>,
    /// The group's gate, watched from authorize on.
    gate: Option<watch::Receiver<Gate>>,
    /// Per-worker series, resolved at authorize when `api.per_worker_metrics` is on.
    worker_metrics: Option<WorkerMetrics>,
}

/// Per-worker metric handles (opt-in: bounded label cardinality is the default).
struct WorkerMetrics {
    accepted: IntCounter,
    rejected: IntCounter,
    accepted_difficulty: Counter,
}

impl Session {
    /// Updates the API's view of this miner (its own uncontended mutex).
    fn update_stats(&self, update: impl FnOnce(&mut WorkerStats)) {
        update(
            &mut self
                .stats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    fn new(
        id: u64,
        peer: SocketAddr,
        context: Arc<Downstream>,
        out: mpsc::Sender<Bytes>,
        stats: Arc<Mutex<WorkerStats>>,
        cancel: CancellationToken,
    ) -> Self {
        let d = &context.settings.difficulty;
        let initial = Difficulty::new(d.initial).unwrap_or(Difficulty::ONE);
        let vardiff = Vardiff::new(d.target_share_interval, d.retarget_interval, Instant::now());
        Self {
            id,
            counters: GroupCounters::new(&context.metrics, &context.groups.default_group().name),
            group: Arc::clone(&context.groups.default_group().name),
            cancel,
            peer,
            context,
            out,
            authorized: Vec::new(),
            user_agent: None,
            requested_mask: None,
            version_mask: 0,
            extranonce_subscribed: false,
            floor: None,
            difficulty: initial,
            sent_difficulty: None,
            sent_jobs: VecDeque::new(),
            work_rx: None,
            binding: None,
            pending_subscribe: None,
            work_started: false,
            paused: false,
            duplicates: DuplicateFilter::new(),
            vardiff,
            last_activity: Instant::now(),
            bad_lines: 0,
            submits: 0,
            aliases: 0,
            stats,
            worker_metrics: None,
            gate: None,
        }
    }

    async fn run(
        &mut self,
        read: OwnedReadHalf,
        mut commands: mpsc::Receiver<SessionCommand>,
    ) -> Ending {
        // A miner's lines are a few hundred bytes: start the read buffer small (it grows up to
        // the line limit when needed), since it is paid once per connected miner.
        let mut lines = FramedRead::with_capacity(
            read,
            LineCodec::new(self.context.settings.server.max_line_bytes),
            READ_BUFFER,
        );
        let idle_timeout = self.context.settings.server.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let cancel = self.cancel.clone();
        loop {
            let work_changed = async {
                match self.work_rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let gate_changed = async {
                match self.gate.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let subscribe_deadline = async {
                match &self.pending_subscribe {
                    Some((_, deadline)) => {
                        tokio::time::sleep_until((*deadline).into()).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Ending::Shutdown),
                Some(command) = commands.recv() => self.on_command(command),
                alive = gate_changed => {
                    if alive { self.on_gate_changed() } else { self.gate = None; Ok(()) }
                }
                alive = work_changed => {
                    if alive { self.on_work_changed().await } else { self.work_rx = None; Ok(()) }
                }
                line = lines.next() => match line {
                    None => Err(Ending::Eof),
                    Some(Err(FrameError::LineTooLong { limit })) => {
                        self.context.metrics.protocol_errors.with_label_values(&["line_too_long"]).inc();
                        warn!(limit, "line too long");
                        Err(Ending::LineTooLong)
                    }
                    Some(Err(error)) => Err(Ending::Io(error.to_string())),
                    Some(Ok(line)) => {
                        self.last_activity = Instant::now();
                        self.on_line(&line).await
                    }
                },
                _ = subscribe_deadline => self.subscribe_timed_out(),
                _ = &mut idle => {
                    let deadline = self.last_activity + idle_timeout;
                    if Instant::now() >= deadline {
                        Err(Ending::Idle)
                    } else {
                        idle.as_mut().reset(deadline.into());
                        Ok(())
                    }
                }
            };
            if let Err(ending) = outcome {
                return ending;
            }
        }
    }

    /// Queues a line for the miner; a full queue means the miner is not reading.
    fn send(&self, line: Bytes) -> Result<(), Ending> {
        self.out.try_send(line).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => Ending::SlowReader,
            mpsc::error::TrySendError::Closed(_) => Ending::Io("write failed".into()),
        })
    }

    fn reply(&self, id: Id, result: serde_json::Value) -> Result<(), Ending> {
        if id.is_null() {
            return Ok(());
        }
        self.send(Response::ok(id, result).to_line())
    }

    fn reply_error(&self, id: Id, code: i64, message: &str) -> Result<(), Ending> {
        if id.is_null() {
            return Ok(());
        }
        self.send(Response::error(id, code, message).to_line())
    }

    async fn on_line(&mut self, line: &[u8]) -> Result<(), Ending> {
        let request = match Message::parse(line) {
            Ok(Message::Request(request)) => request,
            Ok(Message::Response(_)) => return Ok(()), // a miner answering us: nothing to do
            Err(ProtocolError::InvalidParams { id, method, reason }) => {
                self.context
                    .metrics
                    .protocol_errors
                    .with_label_values(&["invalid_params"])
                    .inc();
                return if method == method::SUBMIT {
                    let reject = match reason {
                        ParamError::InvalidShare(bad) => Reject::Invalid(bad.into()),
                        _ => Reject::Invalid(InvalidShare::BadHex { field: "params" }),
                    };
                    self.counters.invalid.inc();
                    debug!(%reject, "malformed submit");
                    self.send(reject_response(id, &reject).to_line())
                } else {
                    debug!(method, %reason, "invalid params");
                    self.reply_error(id, code::OTHER, &format!("invalid params: {reason}"))
                };
            }
            Err(error) => {
                let kind = match error {
                    ProtocolError::InvalidUtf8 { .. } => "invalid_utf8",
                    _ => "invalid_json",
                };
                self.context
                    .metrics
                    .protocol_errors
                    .with_label_values(&[kind])
                    .inc();
                self.bad_lines += 1;
                warn!(%error, "unparseable line");
                if self.bad_lines > MAX_BAD_LINES {
                    return Err(Ending::TooManyBadLines);
                }
                return self
                    .send(Response::error(Id::Null, code::OTHER, format!("{error}")).to_line());
            }
        };
        let Request { id, method } = request;
        match method {
            Method::Submit(submit) => self.on_submit(id, submit),
            Method::Configure(configure) => self.on_configure(id, configure),
            Method::Subscribe(subscribe) => self.on_subscribe(id, subscribe).await,
            Method::Authorize(authorize) => self.on_authorize(id, authorize),
            Method::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                self.reply(id, true.into())
            }
            Method::SuggestDifficulty(difficulty) => {
                self.reply(id, true.into())?;
                self.set_target_difficulty(difficulty)
            }
            other => {
                debug!(method = other.name(), "unsupported method");
                self.reply_error(
                    id,
                    code::OTHER,
                    &format!("unsupported method {}", other.name()),
                )
            }
        }
    }

    fn on_configure(&mut self, id: Id, configure: Configure) -> Result<(), Ending> {
        let upstream_mask = self
            .current_work()
            .map_or(DEFAULT_VERSION_MASK, |w| w.version_mask);
        self.requested_mask = configure.version_rolling_mask();
        self.version_mask = self.requested_mask.map_or(0, |m| m & upstream_mask);
        let mut result = ConfigureResult {
            version_rolling: (self.requested_mask.is_some() && self.version_mask != 0)
                .then_some(self.version_mask),
            extensions: Vec::new(),
        };
        for extension in &configure.extensions {
            match extension.as_str() {
                "version-rolling" => {}
                "minimum-difficulty" => {
                    self.floor = configure.minimum_difficulty();
                    result.extensions.push((extension.clone(), true));
                }
                "subscribe-extranonce" => {
                    self.extranonce_subscribed = true;
                    result.extensions.push((extension.clone(), true));
                }
                _ => result.extensions.push((extension.clone(), false)),
            }
        }
        self.reply(id, result.to_value())
    }

    async fn on_subscribe(&mut self, id: Id, subscribe: Subscribe) -> Result<(), Ending> {
        if subscribe.user_agent.is_some() {
            self.user_agent = subscribe.user_agent;
            let agent = self.user_agent.clone();
            self.update_stats(|s| s.user_agent = agent);
            self.regroup_with_user_agent()?;
        }
        if self.binding.is_some() {
            return self.answer_subscribe(id);
        }
        if self.try_bind().await? {
            self.answer_subscribe(id)?;
            self.start_work()
        } else {
            // No pool yet: answer as soon as one is up (the miner's other requests are served
            // meanwhile), or with an error at `server.subscribe_wait`.
            self.pending_subscribe = Some((
                id,
                Instant::now() + self.context.settings.server.subscribe_wait,
            ));
            Ok(())
        }
    }

    fn answer_subscribe(&self, id: Id) -> Result<(), Ending> {
        let Some(binding) = &self.binding else {
            return Ok(());
        };
        let result = SubscribeResult {
            subscription_id: format!("{:016x}", self.id),
            extranonce1: binding.extranonce1,
            extranonce2_size: binding.work.split.miner_size,
        };
        self.reply(id, result.to_value())
    }

    fn subscribe_timed_out(&mut self) -> Result<(), Ending> {
        if let Some((id, _)) = self.pending_subscribe.take() {
            warn!("no pool available within server.subscribe_wait");
            self.reply_error(id, code::OTHER, "no pool available yet, retry")?;
        }
        Ok(())
    }

    /// Takes an extranonce prefix on the first slot with room. Ok(false): no pool is ready yet
    /// (the session now watches a slot and retries when it changes).
    async fn try_bind(&mut self) -> Result<bool, Ending> {
        let slots = self.context.router.slots();
        let mut any_ready = false;
        for rx in &slots {
            let Some(work) = rx.borrow().clone() else {
                continue;
            };
            any_ready = true;
            if let Some(binding) = self.allocate_on(&work) {
                self.binding = Some(binding);
                self.work_rx = Some(rx.clone());
                if let Some(rx) = self.work_rx.as_mut() {
                    rx.mark_unchanged();
                }
                self.apply_version_mask(work.version_mask)?;
                return Ok(true);
            }
        }
        if !any_ready {
            self.work_rx = slots.first().cloned();
            return Ok(false);
        }
        // Every prefix of every slot is taken: open another connection to the pools.
        match self.context.router.add_slot().await {
            Some(rx) => {
                self.work_rx = Some(rx);
                Ok(false)
            }
            None => {
                self.context.metrics.extranonce_exhausted.inc();
                Err(Ending::NoExtranonce)
            }
        }
    }

    fn allocate_on(&self, work: &Arc<WorkState>) -> Option<Binding> {
        let prefix = work
            .allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .allocate()
            .ok()?;
        let Some(extranonce1) = work
            .split
            .miner_extranonce1(&work.pool_extranonce1, &prefix)
        else {
            work.allocator
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .release_unused(prefix);
            return None;
        };
        Some(Binding {
            work: Arc::clone(work),
            prefix,
            extranonce1,
        })
    }

    /// Gives a prefix back, quarantined until the newest job this miner was sent is stale (a
    /// miner never sent a job cannot produce shares: its prefix is free at once).
    fn release(&self, work: &WorkState, prefix: ExtranoncePrefix) {
        let mut allocator = work
            .allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.sent_jobs.iter().map(|sent| sent.seq).max() {
            Some(newest) => allocator.release(prefix, newest),
            None => allocator.release_unused(prefix),
        }
    }

    fn release_extranonce(&mut self) {
        if let Some(binding) = self.binding.take() {
            let latest = self
                .current_work()
                .unwrap_or_else(|| Arc::clone(&binding.work));
            let work = if latest.epoch == binding.work.epoch {
                latest
            } else {
                Arc::clone(&binding.work)
            };
            self.release(&work, binding.prefix);
        }
    }

    fn current_work(&self) -> Option<Arc<WorkState>> {
        if let Some(binding) = &self.binding {
            return Some(Arc::clone(&binding.work));
        }
        self.context
            .router
            .slots()
            .first()
            .and_then(|rx| rx.borrow().clone())
    }

    fn on_authorize(&mut self, id: Id, authorize: Authorize) -> Result<(), Ending> {
        let mut gate_now = None;
        let worker = authorize.worker.trim().to_owned();
        if worker.is_empty() {
            return self.reply_error(id, code::UNAUTHORIZED, "empty worker name");
        }
        if !self.authorized.contains(&worker) {
            if self.authorized.len() >= MAX_WORKERS_PER_CONNECTION {
                return self.reply_error(
                    id,
                    code::UNAUTHORIZED,
                    "too many workers on one connection",
                );
            }
            if self.authorized.is_empty() {
                // The miner's group is decided here, from the first worker name (and again at
                // subscribe if the user agent only arrives then, before any work).
                gate_now = Some(self.join_group(&worker));
                tracing::Span::current().record("worker", worker.as_str());
                if self.context.settings.per_worker_metrics {
                    let metrics = &self.context.metrics;
                    self.worker_metrics = Some(WorkerMetrics {
                        accepted: metrics
                            .worker_shares
                            .with_label_values(&[&worker, "accepted"]),
                        rejected: metrics
                            .worker_shares
                            .with_label_values(&[&worker, "rejected"]),
                        accepted_difficulty: metrics
                            .worker_accepted_difficulty
                            .with_label_values(&[&worker]),
                    });
                }
                info!(user_agent = ?self.user_agent, "miner authorized");
            }
            self.authorized.push(worker);
        }
        match gate_now.flatten() {
            Some(gate) => self.apply_gate(gate, Some(id))?,
            None => self.reply(id, true.into())?,
        }
        self.start_work()
    }

    /// Puts the miner in its group (by worker name, address and user agent): counters, the
    /// group's gate, the API's view. Returns the gate as it is now. Held in the same update that
    /// makes the miner visible: the group controller must never see a miner of a drained or
    /// resuming group as mining.
    fn join_group(&mut self, worker: &str) -> Option<Gate> {
        let group = self
            .context
            .groups
            .assign(worker, self.peer.ip(), self.user_agent.as_deref());
        let group_name = Arc::clone(&group.name);
        self.group = Arc::clone(&group_name);
        self.counters = GroupCounters::new(&self.context.metrics, &group_name);
        self.counters.workers.inc();
        let mut gate_now = None;
        if let Some(rx) = self.context.control.gates.subscribe(&group_name) {
            gate_now = Some(rx.borrow().clone());
            self.gate = Some(rx);
        }
        tracing::Span::current().record("group", &*group_name);
        let held = gate_now.as_ref().is_some_and(|gate| gate.holds(self.id));
        self.paused = held;
        let worker = worker.to_owned();
        self.update_stats(|s| {
            s.group = group_name;
            s.name = Some(worker);
            s.paused = held;
        });
        gate_now
    }

    /// A miner that authorized before subscribing had no user agent yet: once it has one, and
    /// before it gets any work, its group is decided again (a group matched by user agent must
    /// not be escaped by the order of two requests).
    fn regroup_with_user_agent(&mut self) -> Result<(), Ending> {
        let Some(worker) = self.authorized.first().cloned() else {
            return Ok(());
        };
        if self.work_started {
            return Ok(());
        }
        let current = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .group
            .clone();
        let assigned =
            self.context
                .groups
                .assign(&worker, self.peer.ip(), self.user_agent.as_deref());
        if assigned.name == current {
            return Ok(());
        }
        self.counters.workers.dec();
        match self.join_group(&worker) {
            Some(gate @ (Gate::Closed { .. } | Gate::Redirect { .. })) => {
                self.refused();
                self.apply_gate(gate, None)
            }
            Some(gate) => self.apply_gate(gate, None),
            None => Ok(()),
        }
    }

    /// Obeys the group's gate. At authorize (`authorize` is the request's id) a closed group's
    /// miner is refused: it is still hashing somewhere, and the drain's witness must know.
    fn apply_gate(&mut self, gate: Gate, authorize: Option<Id>) -> Result<(), Ending> {
        match gate {
            Gate::Open | Gate::Paused | Gate::Ramp { .. } => {
                if let Some(id) = authorize {
                    self.reply(id, true.into())?;
                }
                let pause = gate.holds(self.id);
                if pause != self.paused {
                    self.set_paused(pause);
                    if !pause && self.work_started {
                        self.send_job(true)?;
                    }
                }
                Ok(())
            }
            Gate::Closed { message } => {
                self.send(
                    Request::notification(Method::ShowMessage(message.to_string())).to_line(),
                )?;
                if let Some(id) = authorize {
                    self.refused();
                    self.reply_error(id, code::UNAUTHORIZED, &message)?;
                }
                Err(Ending::Drained)
            }
            Gate::Redirect {
                host,
                port,
                message,
            } => {
                if let Some(id) = authorize {
                    self.refused();
                    self.reply(id, true.into())?;
                }
                self.send(
                    Request::notification(Method::ShowMessage(message.to_string())).to_line(),
                )?;
                self.send(
                    Request::notification(Method::Reconnect(Reconnect {
                        host: host.map(|h| h.to_string()),
                        port,
                        wait_seconds: None,
                    }))
                    .to_line(),
                )?;
                Err(Ending::Drained)
            }
        }
    }

    fn refused(&self) {
        info!("miner of a drained group came back: refused");
        self.counters.refused.inc();
        let name = self.authorized.first().map_or("", String::as_str);
        self.context
            .control
            .registry()
            .record_refused(&self.group, name, &self.peer.to_string());
    }

    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        self.update_stats(|s| s.paused = paused);
    }

    fn on_gate_changed(&mut self) -> Result<(), Ending> {
        let Some(gate) = self.gate.as_mut().map(|rx| rx.borrow_and_update().clone()) else {
            return Ok(());
        };
        self.apply_gate(gate, None)
    }

    /// Sends the first work once the miner is both subscribed and authorized.
    fn start_work(&mut self) -> Result<(), Ending> {
        if self.work_started || self.binding.is_none() || self.authorized.is_empty() {
            return Ok(());
        }
        self.work_started = true;
        self.send_job(true)
    }

    /// A miner's `suggest_difficulty` sets its starting difficulty. Once it has work, vardiff
    /// decides: a miner re-suggesting a tiny difficulty must not pin itself at thousands of
    /// shares a second.
    fn set_target_difficulty(&mut self, difficulty: Difficulty) -> Result<(), Ending> {
        if self.work_started {
            debug!(suggested = %difficulty, "suggest_difficulty after work started: vardiff decides");
            return Ok(());
        }
        let d = &self.context.settings.difficulty;
        let clamped = difficulty.get().clamp(d.min, d.max);
        self.difficulty = Difficulty::new(clamped).unwrap_or(self.difficulty);
        Ok(())
    }

    /// The difficulty in force for new work: the target within [floor, ceiling], never above the
    /// pool's difficulty (the pool credits each share at its own).
    fn effective_difficulty(&self, work: &WorkState) -> Difficulty {
        let (floor, ceiling) = self.difficulty_bounds(work);
        self.difficulty.max(floor).min(ceiling)
    }

    /// [floor, ceiling] for this miner: `difficulty.min` raised by its `minimum-difficulty`,
    /// `difficulty.max` lowered to the pool's difficulty; the ceiling wins when they cross.
    fn difficulty_bounds(&self, work: &WorkState) -> (Difficulty, Difficulty) {
        let d = &self.context.settings.difficulty;
        let ceiling = Difficulty::new(d.max)
            .unwrap_or(work.difficulty)
            .min(work.difficulty);
        let mut floor = Difficulty::new(d.min).unwrap_or(Difficulty::ONE);
        if let Some(requested) = self.floor {
            floor = floor.max(requested);
        }
        (floor.min(ceiling), ceiling)
    }

    /// Sends set_difficulty (if it changed) then the newest job. The shared serialization goes
    /// out unless this miner already has the job at another difficulty: then the job is re-sent
    /// under an id of its own (`<id>.<n>`), so every id the miner holds means one difficulty.
    fn send_job(&mut self, clean: bool) -> Result<(), Ending> {
        if self.paused {
            return Ok(());
        }
        let Some(binding) = &self.binding else {
            return Ok(());
        };
        let work = Arc::clone(&binding.work);
        let (Some(published), Some(job)) = (&work.job, work.book.latest()) else {
            return Ok(());
        };
        let difficulty = self.effective_difficulty(&work);
        if self.sent_difficulty != Some(difficulty) {
            self.send(Request::notification(Method::SetDifficulty(difficulty)).to_line())?;
            self.sent_difficulty = Some(difficulty);
            let upstream = Arc::clone(&work.upstream);
            self.update_stats(|s| {
                s.difficulty = difficulty.get();
                s.upstream = Some(upstream);
            });
        }
        let already_sent = self.sent_jobs.iter().any(|s| s.seq == published.seq);
        let (id, line) = if !already_sent {
            let line = if clean {
                published.clean_line.clone()
            } else {
                published.line.clone()
            };
            (job.id().clone(), line)
        } else {
            self.aliases += 1;
            let id = JobId::new(&format!("{}.{}", job.id(), self.aliases))
                .map_err(|_| Ending::Io("job id too long to alias".into()))?;
            let mut notify = job.notify().clone();
            notify.job_id = id.clone();
            notify.clean_jobs = clean;
            (id, notify_line(&notify))
        };
        if self.sent_jobs.len() >= 2 * crate::work::DEFAULT_JOB_HISTORY {
            self.sent_jobs.pop_front();
        }
        self.sent_jobs.push_back(SentJob {
            id,
            seq: published.seq,
            difficulty,
            threshold: difficulty.to_threshold(),
        });
        self.send(line)?;
        self.context
            .metrics
            .job_broadcast_seconds
            .observe(published.received.elapsed().as_secs_f64());
        Ok(())
    }

    fn resend_if_difficulty_changed(&mut self) -> Result<(), Ending> {
        let Some(work) = self.binding.as_ref().map(|b| Arc::clone(&b.work)) else {
            return Ok(());
        };
        if self.sent_difficulty != Some(self.effective_difficulty(&work)) {
            self.send_job(false)?;
        }
        Ok(())
    }

    fn apply_version_mask(&mut self, upstream_mask: u32) -> Result<(), Ending> {
        let Some(requested) = self.requested_mask else {
            return Ok(());
        };
        let mask = requested & upstream_mask;
        if mask != self.version_mask {
            self.version_mask = mask;
            self.send(Request::notification(Method::SetVersionMask(mask)).to_line())?;
        }
        Ok(())
    }

    async fn on_work_changed(&mut self) -> Result<(), Ending> {
        let Some(latest) = self
            .work_rx
            .as_mut()
            .and_then(|rx| rx.borrow_and_update().clone())
        else {
            return Ok(());
        };
        let Some(binding) = &self.binding else {
            if let Some((id, _)) = self.pending_subscribe.clone() {
                if self.try_bind().await? {
                    self.pending_subscribe = None;
                    self.answer_subscribe(id)?;
                    self.start_work()?;
                }
            }
            return Ok(());
        };
        if latest.epoch != binding.work.epoch {
            return self.rebind(latest);
        }
        let old = Arc::clone(&binding.work);
        if let Some(binding) = self.binding.as_mut() {
            binding.work = Arc::clone(&latest);
        }
        if latest.version_mask != old.version_mask {
            self.apply_version_mask(latest.version_mask)?;
        }
        self.duplicates
            .retire_jobs_before(latest.book.oldest_live_seq());
        let new_job = latest.job.as_ref().map(|j| j.seq) != old.job.as_ref().map(|j| j.seq);
        if !self.work_started {
            return Ok(());
        }
        if new_job {
            self.maybe_retarget();
            // Updates can be coalesced by the watch channel: if the job this miner last got is
            // no longer live, a clean job happened in between and the miner must drop its work.
            let must_clean = self
                .sent_jobs
                .back()
                .is_none_or(|sent| latest.book.by_seq(sent.seq).is_none());
            self.send_job(must_clean)
        } else {
            // The pool's difficulty may have dropped below the miner's.
            self.resend_if_difficulty_changed()
        }
    }

    /// The work moved to another pool connection: the miner needs a new extranonce.
    fn rebind(&mut self, work: Arc<WorkState>) -> Result<(), Ending> {
        self.release_extranonce();
        let Some(binding) = self.allocate_on(&work) else {
            info!("no extranonce prefix on the new connection: asking the miner to reconnect");
            self.send(Request::notification(Method::Reconnect(Reconnect::default())).to_line())?;
            return Err(Ending::Reconnect);
        };
        let extranonce1 = binding.extranonce1;
        let size = work.split.miner_size;
        self.binding = Some(binding);
        self.duplicates = DuplicateFilter::new();
        self.sent_jobs.clear();
        if !self.extranonce_subscribed {
            info!(upstream = %work.upstream, "extranonce changed and the miner did not subscribe to it: asking it to reconnect");
            self.send(Request::notification(Method::Reconnect(Reconnect::default())).to_line())?;
            return Err(Ending::Reconnect);
        }
        info!(upstream = %work.upstream, %extranonce1, "moving miner to new work");
        self.send(
            Request::notification(Method::SetExtranonce(SetExtranonce {
                extranonce1,
                extranonce2_size: size,
            }))
            .to_line(),
        )?;
        self.apply_version_mask(work.version_mask)?;
        self.sent_difficulty = None;
        if self.work_started {
            self.send_job(true)?;
        }
        Ok(())
    }

    fn on_command(&mut self, command: SessionCommand) -> Result<(), Ending> {
        match command {
            SessionCommand::ShowMessage(text) => {
                self.send(Request::notification(Method::ShowMessage(text)).to_line())
            }
            SessionCommand::Reconnect {
                host,
                port,
                wait_seconds,
            } => {
                self.send(
                    Request::notification(Method::Reconnect(Reconnect {
                        host,
                        port,
                        wait_seconds,
                    }))
                    .to_line(),
                )?;
                Err(Ending::Reconnect)
            }
            SessionCommand::Close { reason } => Err(Ending::Command(reason)),
        }
    }

    fn on_submit(&mut self, id: Id, submit: Submit) -> Result<(), Ending> {
        let Some(binding) = &self.binding else {
            self.counters.not_subscribed.inc();
            return self.send(reject_response(id, &Reject::NotSubscribed).to_line());
        };
        if !self.authorized.iter().any(|w| w == submit.worker.trim()) {
            self.counters.unauthorized.inc();
            return self.send(reject_response(id, &Reject::Unauthorized).to_line());
        }
        let work = Arc::clone(&binding.work);
        let sent = self
            .sent_jobs
            .iter()
            .rev()
            .find(|sent| sent.id == submit.share.job_id);
        let Some((job, difficulty, threshold)) = sent.and_then(|sent| {
            work.book
                .by_seq(sent.seq)
                .map(|job| (job, sent.difficulty, sent.threshold))
        }) else {
            self.counters.stale.inc();
            debug!(job = %submit.share.job_id, "stale share");
            return self.send(reject_response(id, &Reject::Stale).to_line());
        };
        let context = ShareContext {
            extranonce1: &binding.extranonce1,
            extranonce2_size: work.split.miner_size,
            version_mask: self.version_mask,
            share_target: &threshold,
            upstream_target: work.upstream_threshold(job.seq()),
        };
        self.submits = self.submits.wrapping_add(1);
        let timed = self.submits % VERIFY_SAMPLE == 1;
        let started = timed.then(Instant::now);
        let verdict = check_share_for_job(job, &mut self.duplicates, &context, &submit.share);
        if let Some(started) = started {
            self.context
                .metrics
                .share_verify_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        match verdict {
            Verdict::Accepted(accepted) => {
                // Counted and forwarded before the reply is queued: a miner whose queue is full
                // is disconnected, but the work it did is not lost.
                self.counters.accepted.inc();
                self.counters.accepted_difficulty.inc_by(difficulty.get());
                self.update_stats(|s| s.accepted(difficulty.get()));
                if let Some(worker) = &self.worker_metrics {
                    worker.accepted.inc();
                    worker.accepted_difficulty.inc_by(difficulty.get());
                }
                self.vardiff.record(Instant::now(), difficulty.get());
                if accepted.meets_upstream {
                    self.forward(&work, job.upstream_id(), &submit, accepted.is_block);
                }
                if accepted.is_block {
                    info!(hash = %accepted.block_hash(), "share meets the network target");
                }
                self.send(Response::ok(id, true.into()).to_line())?;
                if self.maybe_retarget() {
                    self.resend_if_difficulty_changed()?;
                }
                Ok(())
            }
            Verdict::Rejected(reject) => {
                self.counters.rejected(&reject).inc();
                self.update_stats(|s| s.rejected());
                if let Some(worker) = &self.worker_metrics {
                    worker.rejected.inc();
                }
                debug!(%reject, job = %submit.share.job_id, "share rejected");
                self.send(reject_response(id, &reject).to_line())
            }
        }
    }

    /// Sends an accepted share to the connection its work came from. The miner already has its
    /// answer; a share that cannot be handed over is counted lost, never dropped silently.
    fn forward(&self, work: &WorkState, job_upstream_id: &JobId, submit: &Submit, is_block: bool) {
        let Some(binding) = &self.binding else { return };
        let Some(extranonce2) = work
            .split
            .upstream_extranonce2(&binding.prefix, &submit.share.extranonce2)
        else {
            // The split is validated against the 32-byte bound, so this is a bug; still, the
            // share is counted, never dropped silently.
            self.context
                .metrics
                .upstream_shares
                .with_label_values(&[&work.upstream, "lost"])
                .inc();
            warn!(upstream = %work.upstream, "forwarded share lost: upstream extranonce2 too long");
            return;
        };
        let share = ForwardShare {
            job_id: job_upstream_id.clone(),
            extranonce2,
            ntime: submit.share.ntime,
            nonce: submit.share.nonce,
            version_bits: submit.share.version_bits,
            worker: Arc::from(submit.worker.as_str()),
            is_block,
        };
        if let Err(error) = work.submit.try_send(share) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "upstream submit queue full",
                mpsc::error::TrySendError::Closed(_) => "upstream connection gone",
            };
            self.context
                .metrics
                .upstream_shares
                .with_label_values(&[&work.upstream, "lost"])
                .inc();
            warn!(upstream = %work.upstream, reason, "forwarded share lost");
        }
    }

    /// Runs vardiff; true when the target difficulty changed.
    fn maybe_retarget(&mut self) -> bool {
        let Some(work) = self.binding.as_ref().map(|b| Arc::clone(&b.work)) else {
            return false;
        };
        let (floor, ceiling) = self.difficulty_bounds(&work);
        let current = self.effective_difficulty(&work);
        match self
            .vardiff
            .retarget(Instant::now(), current, floor, ceiling)
        {
            Some(next) => {
                debug!(from = %current, to = %next, hashrate = self.vardiff.hashrate(Instant::now()), "vardiff retarget");
                self.difficulty = next;
                true
            }
            None => false,
        }
    }
}
