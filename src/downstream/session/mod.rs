//! One miner connection: the task and its dispatcher.
//!
//! The task owns every piece of the miner's state, each a small struct of its own that knows
//! nothing of sockets: [`MinerDifficulty`] (what difficulty to announce), [`JobLedger`] (which
//! jobs the miner holds, under which ids), [`Membership`] (its workers and group, and the gate it
//! obeys), and its extranonce [`Binding`] on the work it watches ([`WorkLink`]). This file reads
//! lines and events and hands each to the part it concerns; `work.rs` gets work to the miner and
//! its shares to the pool.

mod binding;
mod counters;
mod difficulty;
mod io;
mod jobs;
mod membership;
mod work;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

use bytes::Bytes;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, field, info, info_span, warn};

use self::binding::WorkLink;
use self::counters::{GroupCounters, WorkerMetrics};
use self::difficulty::MinerDifficulty;
use self::io::{MinerIo, PartialLine, READ_CHUNK, WriteError};
use self::jobs::JobLedger;
use self::membership::{MAX_WORKERS_PER_CONNECTION, Membership};
use super::command::SessionCommand;
use super::context::Downstream;
use super::gate::Gate;
use super::mailbox::Mailbox;
use super::reject::reject_response;
use super::stats::WorkerStats;
use crate::protocol::{
    Authorize, Configure, ConfigureResult, Difficulty, FrameError, Id, Message, Method, ParamError,
    ProtocolError, Reconnect, Request, Response, Subscribe, code, method,
};
use crate::work::{InvalidShare, Reject};

/// The mask hashgate asks pools for; what a miner is offered before any pool has answered.
const DEFAULT_VERSION_MASK: u32 = 0x1fff_e000;
/// Reads served per wake-up before the other events get their turn.
const READS_PER_WAKE: usize = 4;
/// How long a departing miner's last lines may take to be written.
const FINAL_WRITE_GRACE: Duration = Duration::from_secs(2);
/// Unparseable lines tolerated before the connection is closed.
const MAX_BAD_LINES: u32 = 50;

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

impl From<WriteError> for Ending {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::SlowReader => Ending::SlowReader,
            WriteError::Io(error) => Ending::Io(error.to_string()),
        }
    }
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
    pub commands: Arc<Mailbox>,
    /// What the API shows; written only by this session.
    pub stats: Arc<Mutex<WorkerStats>>,
}

/// The future that serves one miner until it leaves, misbehaves, or hashgate stops (a
/// `Shutdown` in its mailbox): one task per miner, reading, writing and handling its work, so
/// an idle miner costs its state and nothing more. The session is built here, before the task
/// runs, so the task's future holds it once.
pub fn serve_miner(
    connection: Connection,
    context: Arc<Downstream>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let Connection {
        id,
        stream,
        peer,
        commands,
        stats,
    } = connection;
    let span = info_span!("miner", id, %peer, worker = field::Empty, group = field::Empty);
    context.metrics.miners.connections.inc();
    let io = MinerIo::new(stream, context.settings.server.write_buffer_bytes);
    let mut session = Session::new(id, peer, context, io, stats);
    // Everything the miner's task needs is now in `session`, `commands` and `permit`, which the
    // block below captures and uses in place: spawned as it is, the task's future holds each
    // once. (An `async fn` taking them would copy its arguments into its body's locals, and a
    // block capturing the connection's parts would keep them beside the session: either costs
    // about 900 bytes a miner for its whole life.)
    async move {
        let ending = session.run(&commands).await;
        commands.close();
        session.release_extranonce();
        if !session.member.workers.is_empty() {
            session.member.counters.workers.dec();
        }
        // The last lines (a reconnect, a refusal) still go out, unless the miner does not
        // read. Boxed: it runs once, and would otherwise widen the task for the miner's life.
        Box::pin(session.io.finish(FINAL_WRITE_GRACE)).await;
        match &ending {
            Ending::Io(error) => info!(reason = ending.label(), %error, "miner disconnected"),
            Ending::Command(reason) => {
                info!(reason = ending.label(), %reason, "miner disconnected")
            }
            _ => info!(reason = ending.label(), "miner disconnected"),
        }
        let metrics = &session.context.metrics;
        metrics
            .miners
            .disconnects
            .with_label_values(&[ending.label()])
            .inc();
        metrics.miners.connections.dec();
        // It leaves the registry and gives its place under `server.max_miners` back.
        session.context.control.registry().remove(session.id);
        drop(permit);
    }
    .instrument(span)
}

/// BIP310 version rolling with this miner: the mask it asked for and the one in force (the
/// request AND the pool's grant).
#[derive(Default)]
struct VersionRolling {
    requested: Option<u32>,
    mask: u32,
}

/// The miner's line discipline: activity for the idle timer, unparseable lines, submits (one in
/// [`work::VERIFY_SAMPLE`] is timed).
struct LineHealth {
    /// On the runtime's clock (tokio's), like the timer it arms: paused-time tests see it move.
    last_activity: tokio::time::Instant,
    bad_lines: u32,
    submits: u32,
}

/// One miner's state, owned by its task.
struct Session {
    id: u64,
    peer: SocketAddr,
    context: Arc<Downstream>,
    /// The socket, and what waits to be written to it.
    io: MinerIo,
    /// A line split across two reads.
    partial: PartialLine,
    /// What the API shows about this miner.
    stats: Arc<Mutex<WorkerStats>>,
    user_agent: Option<String>,
    version: VersionRolling,
    /// The miner takes `mining.set_extranonce` (else it is asked to reconnect).
    extranonce_subscribed: bool,
    difficulty: MinerDifficulty,
    jobs: JobLedger,
    link: WorkLink,
    member: Membership,
    health: LineHealth,
}

impl Session {
    fn new(
        id: u64,
        peer: SocketAddr,
        context: Arc<Downstream>,
        io: MinerIo,
        stats: Arc<Mutex<WorkerStats>>,
    ) -> Self {
        let now = Instant::now();
        let default_group = Arc::clone(&context.groups.default_group().name);
        let counters = GroupCounters::new(&context.metrics, &default_group);
        Self {
            id,
            peer,
            difficulty: MinerDifficulty::new(context.settings.difficulty, now),
            partial: PartialLine::new(context.settings.server.max_line_bytes),
            context,
            io,
            stats,
            user_agent: None,
            version: VersionRolling::default(),
            extranonce_subscribed: false,
            jobs: JobLedger::default(),
            link: WorkLink::default(),
            member: Membership::new(default_group, counters),
            health: LineHealth {
                last_activity: tokio::time::Instant::now(),
                bad_lines: 0,
                submits: 0,
            },
        }
    }

    /// Updates the API's view of this miner (its own uncontended mutex).
    fn update_stats(&self, update: impl FnOnce(&mut WorkerStats)) {
        update(
            &mut self
                .stats
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
    }

    /// The dispatcher: one `select!` over cancel-safe futures, the work done in the arm bodies
    /// (synchronous: nothing the miner sends is held across an await), and whatever they queued
    /// for the miner written once the event is handled.
    async fn run(&mut self, commands: &Mailbox) -> Ending {
        let idle_timeout = self.context.settings.server.idle_timeout;
        // One timer for the idle limit and a subscribe waiting for a pool, whichever is first.
        let timer = tokio::time::sleep(idle_timeout);
        tokio::pin!(timer);
        loop {
            if self.link.wants_slot {
                self.link.wants_slot = false;
                // Boxed: rare, and its future would otherwise widen every miner's task.
                if let Err(ending) = Box::pin(self.add_slot()).await {
                    return ending;
                }
            }
            let wake_at = self.next_deadline(idle_timeout);
            // Reset when something is due earlier, or once it fired (a fired Sleep stays ready).
            if timer.is_elapsed() || wake_at < timer.deadline() {
                timer.as_mut().reset(wake_at);
            }
            // One readiness wait for both directions (writable only while bytes wait).
            let io = &self.io;
            let socket_ready = std::future::poll_fn(|cx| io.poll_ready(cx));
            let work_changed = async {
                match self.link.rx.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let gate_changed = async {
                match self.member.gate.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                biased;
                command = commands.recv() => self.on_command(command),
                alive = gate_changed => {
                    if alive { self.on_gate_changed() } else { self.member.gate = None; Ok(()) }
                }
                alive = work_changed => {
                    if alive { self.on_work_changed() } else { self.link.rx = None; Ok(()) }
                }
                ready = socket_ready => match ready {
                    // Both are attempted: an attempt the socket is not ready for costs no call.
                    Ok(()) => self.io.write_backlog().map_err(Ending::from).and_then(|()| self.on_readable()),
                    Err(error) => Err(Ending::Io(error.to_string())),
                },
                _ = &mut timer => self.on_timer(idle_timeout),
            };
            if let Err(ending) = outcome.and_then(|()| self.io.flush().map_err(Ending::from)) {
                return ending;
            }
        }
    }

    /// The idle limit or the waiting subscribe's deadline, whichever comes first.
    fn next_deadline(&self, idle_timeout: Duration) -> tokio::time::Instant {
        let idle = self.health.last_activity + idle_timeout;
        match &self.link.pending_subscribe {
            Some((_, deadline)) => idle.min(*deadline),
            None => idle,
        }
    }

    fn on_timer(&mut self, idle_timeout: Duration) -> Result<(), Ending> {
        let now = tokio::time::Instant::now();
        if self
            .link
            .pending_subscribe
            .as_ref()
            .is_some_and(|(_, deadline)| now >= *deadline)
        {
            self.subscribe_timed_out()?;
        }
        if now >= self.health.last_activity + idle_timeout {
            return Err(Ending::Idle);
        }
        Ok(())
    }

    /// Reads what the miner sent and serves each complete line, without waiting.
    fn on_readable(&mut self) -> Result<(), Ending> {
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..READS_PER_WAKE {
            match self.io.try_read(&mut chunk) {
                Ok(0) => {
                    // A last line without its newline is served, like any line.
                    if !self.partial.is_empty() {
                        let line = self
                            .partial
                            .complete(&[])
                            .map_err(|e| self.frame_error(e))?;
                        self.on_raw_line(&line)?;
                    }
                    return Err(Ending::Eof);
                }
                Ok(read) => {
                    self.on_bytes(&chunk[..read])?;
                    if read < chunk.len() {
                        return Ok(());
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Ending::Io(error.to_string())),
            }
        }
        Ok(())
    }

    /// Splits bytes into lines: the end of a line begun in an earlier read first, then every
    /// line whole in `bytes` (served in place), then the start of the next one is kept.
    fn on_bytes(&mut self, mut bytes: &[u8]) -> Result<(), Ending> {
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', bytes) else {
                return self.partial.keep(bytes).map_err(|e| self.frame_error(e));
            };
            let line = self
                .partial
                .complete(&bytes[..end])
                .map_err(|e| self.frame_error(e))?;
            bytes = &bytes[end + 1..];
            self.on_raw_line(&line)?;
        }
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            if end > self.partial.max_line() {
                let limit = self.partial.max_line();
                return Err(self.frame_error(FrameError::LineTooLong { limit }));
            }
            self.on_raw_line(&bytes[..end])?;
            bytes = &bytes[end + 1..];
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.partial.keep(bytes).map_err(|e| self.frame_error(e))
    }

    /// A line, `\r\n` and surrounding blanks trimmed; blank lines (a keepalive of some firmware)
    /// are skipped.
    fn on_raw_line(&mut self, line: &[u8]) -> Result<(), Ending> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        self.health.last_activity = tokio::time::Instant::now();
        self.on_line(line)
    }

    fn frame_error(&self, error: FrameError) -> Ending {
        match error {
            FrameError::LineTooLong { limit } => {
                self.context
                    .metrics
                    .miners
                    .protocol_errors
                    .with_label_values(&["line_too_long"])
                    .inc();
                warn!(limit, "line too long");
                Ending::LineTooLong
            }
            other => Ending::Io(other.to_string()),
        }
    }

    /// Queues a line for the miner (written when the current event is handled); a miner whose
    /// unwritten bytes pass `server.write_buffer_bytes` does not read.
    fn send(&mut self, line: Bytes) -> Result<(), Ending> {
        self.io.queue(line).map_err(Ending::from)
    }

    fn notify(&mut self, method: Method) -> Result<(), Ending> {
        self.send(Request::notification(method).to_line())
    }

    fn reply(&mut self, id: Id, result: serde_json::Value) -> Result<(), Ending> {
        if id.is_null() {
            return Ok(());
        }
        self.send(Response::ok(id, result).to_line())
    }

    fn reply_error(&mut self, id: Id, code: i64, message: &str) -> Result<(), Ending> {
        if id.is_null() {
            return Ok(());
        }
        self.send(Response::error(id, code, message).to_line())
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), Ending> {
        let request = match Message::parse(line) {
            Ok(Message::Request(request)) => request,
            Ok(Message::Response(_)) => return Ok(()), // a miner answering us: nothing to do
            Err(ProtocolError::InvalidParams { id, method, reason }) => {
                return self.on_invalid_params(id, method, reason);
            }
            Err(error) => {
                let kind = match error {
                    ProtocolError::InvalidUtf8 { .. } => "invalid_utf8",
                    _ => "invalid_json",
                };
                self.context
                    .metrics
                    .miners
                    .protocol_errors
                    .with_label_values(&[kind])
                    .inc();
                self.health.bad_lines += 1;
                warn!(%error, "unparseable line");
                if self.health.bad_lines > MAX_BAD_LINES {
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
            Method::Subscribe(subscribe) => self.on_subscribe(id, subscribe),
            Method::Authorize(authorize) => self.on_authorize(id, authorize),
            Method::ExtranonceSubscribe => {
                self.extranonce_subscribed = true;
                self.reply(id, true.into())
            }
            Method::SuggestDifficulty(difficulty) => {
                self.reply(id, true.into())?;
                self.on_suggest_difficulty(difficulty);
                Ok(())
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

    /// A known method whose parameters do not decode: a malformed submit is a rejected share
    /// (error 20 with the field named), anything else error 20 with the reason.
    fn on_invalid_params(
        &mut self,
        id: Id,
        method: &'static str,
        reason: ParamError,
    ) -> Result<(), Ending> {
        self.context
            .metrics
            .miners
            .protocol_errors
            .with_label_values(&["invalid_params"])
            .inc();
        if method != method::SUBMIT {
            debug!(method, %reason, "invalid params");
            return self.reply_error(id, code::OTHER, &format!("invalid params: {reason}"));
        }
        let reject = match reason {
            ParamError::InvalidShare(bad) => Reject::Invalid(bad.into()),
            _ => Reject::Invalid(InvalidShare::BadHex { field: "params" }),
        };
        self.member.counters.invalid.inc();
        debug!(%reject, "malformed submit");
        self.send(reject_response(id, &reject).to_line())
    }

    fn on_configure(&mut self, id: Id, configure: Configure) -> Result<(), Ending> {
        let upstream_mask = self
            .current_work()
            .map_or(DEFAULT_VERSION_MASK, |w| w.version_mask);
        self.version.requested = configure.version_rolling_mask();
        self.version.mask = self.version.requested.map_or(0, |m| m & upstream_mask);
        let mut result = ConfigureResult {
            version_rolling: (self.version.requested.is_some() && self.version.mask != 0)
                .then_some(self.version.mask),
            extensions: Vec::new(),
        };
        for extension in &configure.extensions {
            match extension.as_str() {
                "version-rolling" => {}
                "minimum-difficulty" => {
                    self.difficulty.set_floor(configure.minimum_difficulty());
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

    fn on_subscribe(&mut self, id: Id, subscribe: Subscribe) -> Result<(), Ending> {
        if subscribe.user_agent.is_some() {
            self.user_agent = subscribe.user_agent;
            let agent = self.user_agent.clone();
            self.update_stats(|s| s.user_agent = agent);
            self.regroup_with_user_agent()?;
        }
        if self.link.binding.is_some() {
            return self.answer_subscribe(id);
        }
        if self.try_bind()? {
            self.answer_subscribe(id)?;
            self.start_work()
        } else {
            // No pool yet: answer as soon as one is up (the miner's other requests are served
            // meanwhile), or with an error at `server.subscribe_wait`.
            let deadline =
                tokio::time::Instant::now() + self.context.settings.server.subscribe_wait;
            self.link.pending_subscribe = Some((id, deadline));
            Ok(())
        }
    }

    fn subscribe_timed_out(&mut self) -> Result<(), Ending> {
        if let Some((id, _)) = self.link.pending_subscribe.take() {
            warn!("no pool available within server.subscribe_wait");
            self.reply_error(id, code::OTHER, "no pool available yet, retry")?;
        }
        Ok(())
    }

    /// A miner's `suggest_difficulty` sets its starting difficulty. Once it has work, vardiff
    /// decides: a miner re-suggesting a tiny difficulty must not pin itself at thousands of
    /// shares a second.
    fn on_suggest_difficulty(&mut self, difficulty: Difficulty) {
        if self.link.started {
            debug!(suggested = %difficulty, "suggest_difficulty after work started: vardiff decides");
            return;
        }
        self.difficulty.suggest(difficulty);
    }

    fn on_authorize(&mut self, id: Id, authorize: Authorize) -> Result<(), Ending> {
        let mut gate_now = None;
        let worker = authorize.worker.trim().to_owned();
        if worker.is_empty() {
            return self.reply_error(id, code::UNAUTHORIZED, "empty worker name");
        }
        if !self.member.authorized(&worker) {
            if self.member.workers.len() >= MAX_WORKERS_PER_CONNECTION {
                return self.reply_error(
                    id,
                    code::UNAUTHORIZED,
                    "too many workers on one connection",
                );
            }
            if self.member.workers.is_empty() {
                // The miner's group is decided here, from the first worker name (and again at
                // subscribe if the user agent only arrives then, before any work).
                gate_now = Some(self.join_group(&worker));
                tracing::Span::current().record("worker", worker.as_str());
                if self.context.settings.per_worker_metrics {
                    self.member.worker_metrics =
                        Some(WorkerMetrics::new(&self.context.metrics, &worker));
                }
                info!(user_agent = ?self.user_agent, "miner authorized");
            }
            self.member.workers.push(Arc::from(worker));
        }
        match gate_now.flatten() {
            Some(gate) => self.apply_gate(gate, Some(id))?,
            None => self.reply(id, true.into())?,
        }
        self.start_work()
    }

    /// Puts the miner in its group (by worker name, address and user agent): counters, the
    /// group's gate, the API's view. Returns the gate as it is now. Held in the same update that
    /// makes the miner visible: group control must never see a miner of a drained or resuming
    /// group as mining.
    fn join_group(&mut self, worker: &str) -> Option<Gate> {
        let group = self
            .context
            .groups
            .assign(worker, self.peer.ip(), self.user_agent.as_deref());
        let group_name = Arc::clone(&group.name);
        self.member.group = Arc::clone(&group_name);
        self.member.counters = GroupCounters::new(&self.context.metrics, &group_name);
        self.member.counters.workers.inc();
        let gates = self.context.control.gates();
        let ticket = gates.ticket();
        self.member.ticket = ticket;
        let mut gate_now = None;
        if let Some(rx) = gates.subscribe(&group_name) {
            gate_now = Some(rx.borrow().clone());
            self.member.gate = Some(rx);
        }
        tracing::Span::current().record("group", &*group_name);
        let held = gate_now.as_ref().is_some_and(|gate| gate.holds(ticket));
        self.member.paused = held;
        let worker: Arc<str> = Arc::from(worker);
        self.update_stats(|s| {
            s.group = group_name;
            s.name = Some(worker);
            s.paused = held;
            s.ramp_ticket = ticket;
        });
        gate_now
    }

    /// A miner that authorized before subscribing had no user agent yet: once it has one, and
    /// before it gets any work, its group is decided again (a group matched by user agent must
    /// not be escaped by the order of two requests).
    fn regroup_with_user_agent(&mut self) -> Result<(), Ending> {
        let Some(worker) = self.member.name().map(str::to_owned) else {
            return Ok(());
        };
        if self.link.started {
            return Ok(());
        }
        let assigned =
            self.context
                .groups
                .assign(&worker, self.peer.ip(), self.user_agent.as_deref());
        if assigned.name == self.member.group {
            return Ok(());
        }
        self.member.counters.workers.dec();
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
                let pause = gate.holds(self.member.ticket);
                if pause != self.member.paused {
                    self.set_paused(pause);
                    if !pause && self.link.started {
                        self.send_job(true)?;
                    }
                }
                Ok(())
            }
            Gate::Closed { message } => {
                self.notify(Method::ShowMessage(message.to_string()))?;
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
                self.notify(Method::ShowMessage(message.to_string()))?;
                self.notify(Method::Reconnect(Reconnect {
                    host: host.map(|h| h.to_string()),
                    port,
                    wait_seconds: None,
                }))?;
                Err(Ending::Drained)
            }
        }
    }

    /// A miner of a closed group came back: counted, and recorded for the drain's witness.
    fn refused(&self) {
        info!("miner of a drained group came back: refused");
        self.member.counters.refused.inc();
        let name = self.member.name().unwrap_or("");
        self.context.control.registry().record_refused(
            &self.member.group,
            name,
            &self.peer.to_string(),
        );
    }

    fn set_paused(&mut self, paused: bool) {
        self.member.paused = paused;
        self.update_stats(|s| s.paused = paused);
    }

    fn on_gate_changed(&mut self) -> Result<(), Ending> {
        match self.member.gate_changed() {
            Some(gate) => self.apply_gate(gate, None),
            None => Ok(()),
        }
    }

    fn on_command(&mut self, command: SessionCommand) -> Result<(), Ending> {
        match command {
            SessionCommand::ShowMessage(text) => self.notify(Method::ShowMessage(text)),
            SessionCommand::Reconnect {
                host,
                port,
                wait_seconds,
            } => {
                self.notify(Method::Reconnect(Reconnect {
                    host,
                    port,
                    wait_seconds,
                }))?;
                Err(Ending::Reconnect)
            }
            SessionCommand::Close { reason } => Err(Ending::Command(reason)),
            SessionCommand::Shutdown => Err(Ending::Shutdown),
        }
    }
}
