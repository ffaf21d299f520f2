//! Pool connections: one task per connection that handshakes, follows the pool's notifications,
//! submits forwarded shares and reconnects with backoff.
//!
//! The task reports to the router through [`UpstreamEvent`]s and never decides which pool serves
//! miners. Every forwarded share is tracked by request id until the pool answers, the submit
//! times out, or the connection dies: it ends as accepted, rejected or lost, counted in
//! `hashgate_upstream_shares_total` and logged. Nothing is dropped silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{FailoverConfig, UpstreamConfig, parse_stratum_url};
use crate::metrics::Metrics;
use crate::protocol::{
    Authorize, Configure, ConfigureResult, Difficulty, Extranonce1, Id, LineCodec, Message, Method,
    Notify, Request, Response, Submit, Subscribe, SubscribeResult,
};
use crate::work::ForwardShare;

/// Where a connection sits: which pool (index in priority order) and which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Pool index in priority order.
    pub pool: usize,
    /// Slot: the k-th connection to that pool (more when one's extranonce space is full).
    pub slot: usize,
}

/// What a connection tells the router.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// Handshake done: the connection can serve miners.
    Ready {
        /// Which connection.
        key: ConnKey,
        /// What the pool gave.
        session: PoolSession,
    },
    /// A new job.
    Job {
        /// Which connection.
        key: ConnKey,
        /// The job.
        notify: Notify,
        /// When it arrived (for the broadcast histogram).
        received: Instant,
    },
    /// New upstream share difficulty.
    Difficulty {
        /// Which connection.
        key: ConnKey,
        /// The difficulty.
        difficulty: Difficulty,
    },
    /// The pool changed our extranonce.
    Extranonce {
        /// Which connection.
        key: ConnKey,
        /// New extranonce1.
        extranonce1: Extranonce1,
        /// New extranonce2 size.
        extranonce2_size: usize,
    },
    /// The pool changed the version-rolling mask.
    VersionMask {
        /// Which connection.
        key: ConnKey,
        /// The mask.
        mask: u32,
    },
    /// The connection is gone (it will reconnect by itself).
    Down {
        /// Which connection.
        key: ConnKey,
        /// Why.
        reason: String,
    },
}

/// What the pool gave this connection at subscribe/configure.
#[derive(Debug, Clone)]
pub struct PoolSession {
    /// The pool's extranonce1 for this connection.
    pub extranonce1: Extranonce1,
    /// The pool's extranonce2 size.
    pub extranonce2_size: usize,
    /// The version-rolling mask the pool granted (0: none).
    pub version_mask: u32,
    /// Where accepted shares go.
    pub submit: mpsc::Sender<ForwardShare>,
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connect to {address} failed: {reason}")]
    Connect {
        /// host:port.
        address: String,
        /// Why.
        reason: String,
    },
    /// The pool did not complete configure/subscribe/authorize in time.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The pool refused subscribe or authorize.
    #[error("pool refused {method}: {message}")]
    Refused {
        /// Which request.
        method: &'static str,
        /// The pool's message.
        message: String,
    },
    /// The pool closed the connection.
    #[error("pool closed the connection")]
    Closed,
    /// The pool sent no new job for the configured `job_timeout`.
    #[error("no new job for {0:?}")]
    JobTimeout(Duration),
    /// A line from the pool was not Stratum.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The pool asked us to reconnect.
    #[error("pool asked to reconnect to {target}")]
    Reconnect {
        /// host:port.
        target: String,
        /// How long the pool asked us to wait first.
        wait: Option<Duration>,
    },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(String),
}

type PoolStream = Framed<TcpStream, LineCodec>;

/// Timing shared by every pool connection.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// `[failover]`.
    pub failover: FailoverConfig,
    /// How long shares in flight may wait for the pool's answer at shutdown.
    pub shutdown_grace: Duration,
}

/// Runs one pool connection until `cancel`: connect, handshake, serve, back off, repeat.
pub async fn run_connection(
    key: ConnKey,
    config: Arc<UpstreamConfig>,
    settings: Arc<ConnectionSettings>,
    events: mpsc::Sender<UpstreamEvent>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let span = info_span!("upstream", upstream = %config.name, slot = key.slot);
    async move {
        let failover = &settings.failover;
        let Ok((mut host, mut port)) = parse_stratum_url(&config.url) else {
            warn!(url = %config.url, "invalid url (config validation should have caught it)");
            return;
        };
        let own_host = host.clone();
        let mut backoff = failover.backoff_min;
        let mut reconnect_wait: Option<Duration> = None;
        loop {
            let connected_at = Instant::now();
            // Not raced against `cancel` here: `connect_and_serve` handles cancellation itself so
            // that shares in flight get their grace period and are counted.
            let outcome =
                connect_and_serve(key, &config, &settings, &host, port, &events, &metrics, &cancel)
                    .await;
            metrics
                .upstream_connected
                .with_label_values(&[&config.name])
                .set(0);
            let reason = match outcome {
                Ok(()) => return, // cancelled while serving
                Err(UpstreamError::Reconnect { target, wait }) => {
                    if let Some((new_host, new_port)) = reconnect_target(&target, &own_host, failover) {
                        info!(%target, "following the pool's client.reconnect");
                        host = new_host;
                        port = new_port;
                    } else {
                        warn!(%target, "ignoring client.reconnect to a host not in failover.allow_reconnect_hosts");
                    }
                    backoff = failover.backoff_min;
                    // The pool's requested wait stands in for the first backoff step.
                    reconnect_wait = wait;
                    format!("pool asked to reconnect to {target}")
                }
                Err(error) => error.to_string(),
            };
            if events.send(UpstreamEvent::Down { key, reason: reason.clone() }).await.is_err() {
                return;
            }
            // A connection that stayed up a while starts its backoff over.
            if connected_at.elapsed() > failover.backoff_max {
                backoff = failover.backoff_min;
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
            let delay = reconnect_wait.take().unwrap_or(backoff + jitter);
            warn!(%reason, retry_in = ?delay, "upstream down");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            backoff = (backoff * 2).min(failover.backoff_max);
        }
    }
    .instrument(span)
    .await
}

/// `host:port` from a pool's reconnect, if the operator allows that host.
fn reconnect_target(
    target: &str,
    own_host: &str,
    failover: &FailoverConfig,
) -> Option<(String, u16)> {
    let (host, port) = parse_stratum_url(target).ok()?;
    let allowed = host == own_host || failover.allow_reconnect_hosts.contains(&host);
    allowed.then_some((host, port))
}

/// One connection's life: connect, handshake, then serve until error or cancel.
#[allow(clippy::too_many_arguments)] // the connection's fixed context, passed once
async fn connect_and_serve(
    key: ConnKey,
    config: &UpstreamConfig,
    settings: &ConnectionSettings,
    host: &str,
    port: u16,
    events: &mpsc::Sender<UpstreamEvent>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<(), UpstreamError> {
    let failover = &settings.failover;
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let connect = tokio::time::timeout(failover.connect_timeout, TcpStream::connect((host, port)));
    let stream = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        result = connect => result,
    }
    .map_err(|_| UpstreamError::Connect {
        address: address.clone(),
        reason: format!("timed out after {:?}", failover.connect_timeout),
    })?
    .map_err(|e| UpstreamError::Connect {
        address: address.clone(),
        reason: e.to_string(),
    })?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, LineCodec::new(config.max_line_bytes));
    let handshaking =
        tokio::time::timeout(failover.handshake_timeout, handshake(&mut framed, config));
    let (handshake, early) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        result = handshaking => result,
    }
    .map_err(|_| UpstreamError::HandshakeTimeout(failover.handshake_timeout))??;
    info!(
        extranonce1 = %handshake.extranonce1,
        extranonce2_size = handshake.extranonce2_size,
        version_mask = format_args!("{:08x}", handshake.version_mask),
        "upstream ready"
    );
    metrics
        .upstream_connected
        .with_label_values(&[&config.name])
        .set(1);
    let (submit_tx, mut submit_rx) = mpsc::channel(4096);
    let session = PoolSession {
        extranonce1: handshake.extranonce1,
        extranonce2_size: handshake.extranonce2_size,
        version_mask: handshake.version_mask,
        submit: submit_tx,
    };
    if events
        .send(UpstreamEvent::Ready { key, session })
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut connection = Connection {
        key,
        config,
        failover,
        shutdown_grace: settings.shutdown_grace,
        events,
        metrics,
        pending: HashMap::new(),
        next_id: 100,
        last_job: Instant::now(),
        extranonce1: handshake.extranonce1,
    };
    let mut result = Ok(());
    for message in early {
        if let Err(error) = connection.on_message(&mut framed, message).await {
            result = Err(error);
            break;
        }
    }
    if result.is_ok() {
        result = connection.serve(&mut framed, &mut submit_rx, cancel).await;
    }
    // Shares answered "accepted" to miners that never reached this pool are counted, not dropped.
    submit_rx.close();
    while let Ok(share) = submit_rx.try_recv() {
        connection.count_lost_share(&share, "connection ended before the share was sent");
    }
    connection.lose_pending("connection closed before the pool answered");
    result
}

struct Handshake {
    extranonce1: Extranonce1,
    extranonce2_size: usize,
    version_mask: u32,
}

/// Notifications kept from before the handshake completes.
const MAX_EARLY_MESSAGES: usize = 32;

const ID_CONFIGURE: u64 = 1;
const ID_SUBSCRIBE: u64 = 2;
const ID_AUTHORIZE: u64 = 3;
const ID_EXTRANONCE_SUBSCRIBE: u64 = 4;

/// Sends configure (version rolling only: pools have frozen on other extensions), subscribe,
/// authorize and extranonce.subscribe in one burst and waits for subscribe and authorize.
/// Notifications that arrive meanwhile are returned to be handled once ready.
async fn handshake(
    framed: &mut PoolStream,
    config: &UpstreamConfig,
) -> Result<(Handshake, Vec<Message>), UpstreamError> {
    let mut burst = Vec::new();
    if config.version_rolling {
        let mut parameters = serde_json::Map::new();
        parameters.insert("version-rolling.mask".into(), "1fffe000".into());
        parameters.insert("version-rolling.min-bit-count".into(), 2.into());
        burst.push(Request {
            id: Id::from(ID_CONFIGURE),
            method: Method::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                parameters,
            }),
        });
    }
    burst.push(Request {
        id: Id::from(ID_SUBSCRIBE),
        method: Method::Subscribe(Subscribe {
            user_agent: Some(format!("hashgate/{}", env!("CARGO_PKG_VERSION"))),
            session_id: None,
        }),
    });
    burst.push(Request {
        id: Id::from(ID_AUTHORIZE),
        method: Method::Authorize(Authorize {
            worker: config.user.clone(),
            password: Some(config.password.clone()),
        }),
    });
    burst.push(Request {
        id: Id::from(ID_EXTRANONCE_SUBSCRIBE),
        method: Method::ExtranonceSubscribe,
    });
    for request in &burst {
        framed
            .feed(request.to_line())
            .await
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
    }
    framed
        .flush()
        .await
        .map_err(|e| UpstreamError::Io(e.to_string()))?;

    let mut version_mask = None;
    let mut subscribed: Option<SubscribeResult> = None;
    let mut authorized = false;
    let mut early = Vec::new();
    while subscribed.is_none() || !authorized {
        let line = next_line(framed).await?;
        let message = Message::parse(&line).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        match message {
            Message::Response(response) => match &response.id {
                id if *id == Id::from(ID_CONFIGURE) => {
                    version_mask = ConfigureResult::from_value(&response.result).version_rolling;
                }
                id if *id == Id::from(ID_SUBSCRIBE) => {
                    if !response.is_ok() {
                        return Err(refused("mining.subscribe", &response));
                    }
                    subscribed =
                        Some(SubscribeResult::from_value(&response.result).map_err(|e| {
                            UpstreamError::Protocol(format!("subscribe result: {e}"))
                        })?);
                }
                id if *id == Id::from(ID_AUTHORIZE) => {
                    if !response.is_ok() {
                        return Err(refused("mining.authorize", &response));
                    }
                    authorized = true;
                }
                _ => {} // extranonce.subscribe: refusal is fine
            },
            // Bounded: a pool that floods notifications during the handshake keeps only the
            // newest ones (a notify or a difficulty from before the last few is obsolete).
            Message::Request(_) => {
                if early.len() >= MAX_EARLY_MESSAGES {
                    early.remove(0);
                }
                early.push(message);
            }
        }
    }
    let subscribed = subscribed.expect("loop ends only once subscribed");
    Ok((
        Handshake {
            extranonce1: subscribed.extranonce1,
            extranonce2_size: subscribed.extranonce2_size,
            version_mask: version_mask.unwrap_or(0),
        },
        early,
    ))
}

fn refused(method: &'static str, response: &Response) -> UpstreamError {
    UpstreamError::Refused {
        method,
        message: response
            .error
            .as_ref()
            .map(|e| format!("{} ({})", e.message, e.code))
            .unwrap_or_else(|| "result false".into()),
    }
}

async fn next_line(framed: &mut PoolStream) -> Result<Bytes, UpstreamError> {
    match framed.next().await {
        Some(Ok(line)) => Ok(line),
        Some(Err(e)) => Err(UpstreamError::Io(e.to_string())),
        None => Err(UpstreamError::Closed),
    }
}

/// A share sent upstream, waiting for the pool's answer.
struct Pending {
    share: ForwardShare,
    sent: Instant,
}

struct Connection<'a> {
    key: ConnKey,
    config: &'a UpstreamConfig,
    failover: &'a FailoverConfig,
    shutdown_grace: Duration,
    events: &'a mpsc::Sender<UpstreamEvent>,
    metrics: &'a Metrics,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    last_job: Instant,
    /// The extranonce1 the pool gave this connection now (shares made under another are void).
    extranonce1: Extranonce1,
}

impl Connection<'_> {
    async fn serve(
        &mut self,
        framed: &mut PoolStream,
        submits: &mut mpsc::Receiver<ForwardShare>,
        cancel: &CancellationToken,
    ) -> Result<(), UpstreamError> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.drain_for_shutdown(framed, submits).await;
                    return Ok(());
                }
                // Reads before submits: under a flood of submits, the pool's answers and jobs
                // must still be read.
                line = framed.next() => {
                    let line = match line {
                        Some(Ok(line)) => line,
                        Some(Err(e)) => return Err(UpstreamError::Io(e.to_string())),
                        None => return Err(UpstreamError::Closed),
                    };
                    match Message::parse(&line) {
                        Ok(message) => self.on_message(framed, message).await?,
                        Err(error) => warn!(%error, "unparseable line from pool"),
                    }
                }
                share = submits.recv() => {
                    // The sender lives in the router's state; None means the router is gone.
                    let Some(share) = share else { return Ok(()) };
                    self.submit(framed, share).await?;
                }
                _ = tick.tick() => {
                    self.expire_pending();
                    if self.last_job.elapsed() > self.config.job_timeout {
                        return Err(UpstreamError::JobTimeout(self.config.job_timeout));
                    }
                }
            }
        }
    }

    /// At shutdown: send the shares already queued, then wait up to the grace period for the
    /// pool's answers. Whatever is still unanswered is counted lost by the caller.
    async fn drain_for_shutdown(
        &mut self,
        framed: &mut PoolStream,
        submits: &mut mpsc::Receiver<ForwardShare>,
    ) {
        submits.close();
        while let Ok(share) = submits.try_recv() {
            if self.submit(framed, share).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, framed.next()).await {
                Ok(Some(Ok(line))) => {
                    if let Ok(Message::Response(response)) = Message::parse(&line) {
                        self.on_response(response);
                    }
                }
                _ => break,
            }
        }
    }

    async fn submit(
        &mut self,
        framed: &mut PoolStream,
        share: ForwardShare,
    ) -> Result<(), UpstreamError> {
        if share.pool_extranonce1 != self.extranonce1 {
            // Verified on work from before the pool's set_extranonce, and still queued when it
            // came: its coinbase is not the pool's any more. Counted, not sent to be rejected.
            self.count_lost_share(&share, "the pool changed the extranonce before it was sent");
            return Ok(());
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id: Id::from(id),
            method: Method::Submit(Submit {
                worker: self.config.user.clone(),
                share: share.to_share(),
            }),
        };
        if share.is_block {
            info!(worker = %share.worker, job = %share.job_id, "submitting a block candidate");
        }
        // Tracked before the write: if the write fails, the share is counted lost with the rest.
        self.pending.insert(
            id,
            Pending {
                share,
                sent: Instant::now(),
            },
        );
        self.write(framed, request.to_line()).await
    }

    /// Writes a line; a pool that stops reading for `submit_timeout` is a dead pool.
    async fn write(&self, framed: &mut PoolStream, line: Bytes) -> Result<(), UpstreamError> {
        match tokio::time::timeout(self.failover.submit_timeout, framed.send(line)).await {
            Ok(result) => result.map_err(|e| UpstreamError::Io(e.to_string())),
            Err(_) => Err(UpstreamError::Io(format!(
                "pool did not read for {:?}",
                self.failover.submit_timeout
            ))),
        }
    }

    async fn on_message(
        &mut self,
        framed: &mut PoolStream,
        message: Message,
    ) -> Result<(), UpstreamError> {
        match message {
            Message::Response(response) => {
                self.on_response(response);
                Ok(())
            }
            Message::Request(request) => self.on_request(framed, request).await,
        }
    }

    fn on_response(&mut self, response: Response) {
        let Id::Number(number) = &response.id else {
            return;
        };
        let Some(pending) = number.as_u64().and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        let name = self.config.name.as_str();
        self.metrics
            .upstream_submit_seconds
            .with_label_values(&[name])
            .observe(pending.sent.elapsed().as_secs_f64());
        if response.is_ok() {
            self.metrics
                .upstream_shares
                .with_label_values(&[name, "accepted"])
                .inc();
            if pending.share.is_block {
                self.metrics.blocks_found.with_label_values(&[name]).inc();
                info!(worker = %pending.share.worker, "block accepted by the pool");
            }
            debug!(worker = %pending.share.worker, job = %pending.share.job_id, "pool accepted share");
        } else {
            self.metrics
                .upstream_shares
                .with_label_values(&[name, "rejected"])
                .inc();
            let (code, message) = response
                .error
                .map(|e| (e.code, e.message))
                .unwrap_or((0, "result false".into()));
            warn!(worker = %pending.share.worker, job = %pending.share.job_id, code, %message, "pool rejected share");
        }
    }

    async fn on_request(
        &mut self,
        framed: &mut PoolStream,
        request: Request,
    ) -> Result<(), UpstreamError> {
        let key = self.key;
        let event = match request.method {
            Method::Notify(notify) => {
                self.last_job = Instant::now();
                Some(UpstreamEvent::Job {
                    key,
                    notify,
                    received: Instant::now(),
                })
            }
            Method::SetDifficulty(difficulty) => {
                self.metrics
                    .upstream_difficulty
                    .with_label_values(&[&self.config.name])
                    .set(difficulty.get());
                Some(UpstreamEvent::Difficulty { key, difficulty })
            }
            Method::SetExtranonce(set) => Some({
                self.extranonce1 = set.extranonce1;
                UpstreamEvent::Extranonce {
                    key,
                    extranonce1: set.extranonce1,
                    extranonce2_size: set.extranonce2_size,
                }
            }),
            Method::SetVersionMask(mask) => Some(UpstreamEvent::VersionMask { key, mask }),
            Method::ShowMessage(text) => {
                info!(message = %text, "pool message");
                None
            }
            Method::Reconnect(reconnect) => {
                let (own_host, own_port) = parse_stratum_url(&self.config.url).unwrap_or_default();
                let host = reconnect.host.unwrap_or(own_host);
                let port = reconnect.port.unwrap_or(own_port);
                // The wait happens after the connection is closed and reported down, so the
                // router can fail over meanwhile.
                return Err(UpstreamError::Reconnect {
                    target: format!("{host}:{port}"),
                    wait: reconnect
                        .wait_seconds
                        .map(|w| Duration::from_secs(w.min(300))),
                });
            }
            Method::Unknown(name) => {
                if !request.id.is_null() {
                    let reply = if name == "client.get_version" {
                        Response::ok(
                            request.id,
                            format!("hashgate/{}", env!("CARGO_PKG_VERSION")).into(),
                        )
                    } else {
                        Response::error(
                            request.id,
                            crate::protocol::code::OTHER,
                            "unsupported method",
                        )
                    };
                    self.write(framed, reply.to_line()).await?;
                }
                None
            }
            other => {
                debug!(
                    method = other.name(),
                    "ignoring miner-side method from pool"
                );
                None
            }
        };
        if let Some(event) = event {
            if self.events.send(event).await.is_err() {
                return Err(UpstreamError::Closed);
            }
        }
        Ok(())
    }

    /// Shares the pool has not answered within `submit_timeout` are lost.
    fn expire_pending(&mut self) {
        let timeout = self.failover.submit_timeout;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                self.count_lost(&pending, "no answer within failover.submit_timeout");
            }
        }
    }

    fn lose_pending(&mut self, reason: &str) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for share in &pending {
            self.count_lost(share, reason);
        }
    }

    fn count_lost(&self, pending: &Pending, reason: &str) {
        self.count_lost_share(&pending.share, reason);
    }

    fn count_lost_share(&self, share: &ForwardShare, reason: &str) {
        self.metrics
            .upstream_shares
            .with_label_values(&[&self.config.name, "lost"])
            .inc();
        warn!(worker = %share.worker, job = %share.job_id, reason, "forwarded share lost");
    }
}
