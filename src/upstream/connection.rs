//! A connected pool: its notifications followed, forwarded shares submitted and tracked by id
//! until the pool answers, the submit times out or the connection dies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::UpstreamError;
use super::events::{ConnKey, PoolStream, UpstreamEvent};
use crate::config::{Endpoint, FailoverConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::protocol::{Extranonce1, Id, Message, Method, Request, Response, write_submit_line};
use crate::work::ForwardShare;

/// Most shares written to the pool in one batch.
const SUBMIT_BATCH: usize = 256;

/// This connection's share series, resolved once: a label lookup per share was measurable.
pub(super) struct ShareMetrics {
    accepted: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
    lost: prometheus::IntCounter,
    blocks: prometheus::IntCounter,
    round_trip: prometheus::Histogram,
}

impl ShareMetrics {
    /// The series of upstream `name`.
    pub fn new(metrics: &Metrics, name: &str) -> Self {
        let upstream = &metrics.upstream;
        Self {
            accepted: upstream.shares.with_label_values(&[name, "accepted"]),
            rejected: upstream.shares.with_label_values(&[name, "rejected"]),
            lost: upstream.shares.with_label_values(&[name, "lost"]),
            blocks: upstream.blocks_found.with_label_values(&[name]),
            round_trip: upstream.submit_seconds.with_label_values(&[name]),
        }
    }
}

/// A share sent upstream, waiting for the pool's answer.
pub(super) struct Pending {
    share: ForwardShare,
    sent: Instant,
}

pub(super) struct Connection<'a> {
    pub key: ConnKey,
    pub config: &'a UpstreamConfig,
    /// Where it is connected (the pool's own host for a `client.reconnect` without one).
    pub endpoint: &'a Endpoint,
    pub failover: &'a FailoverConfig,
    pub shutdown_grace: Duration,
    pub events: &'a mpsc::Sender<UpstreamEvent>,
    pub metrics: &'a Metrics,
    pub pending: HashMap<u64, Pending>,
    pub next_id: u64,
    pub last_job: Instant,
    /// The extranonce1 the pool gave this connection now (shares made under another are void).
    pub extranonce1: Extranonce1,
    pub shares: ShareMetrics,
    /// One submit line at a time is built here (kept: no allocation per share).
    pub line: Vec<u8>,
}

impl Connection<'_> {
    pub async fn serve(
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
                        Some(Err(e)) => return Err(UpstreamError::Io(e)),
                        None => return Err(UpstreamError::Closed),
                    };
                    match Message::parse(&line) {
                        Ok(message) => self.on_message(framed, message).await?,
                        Err(error) => warn!(%error, "unparseable line from pool"),
                    }
                }
                share = submits.recv() => {
                    // The sender lives in the router's state of this connection: None means the
                    // router let the connection go (unusable) or is gone (then reporting the
                    // error fails and the task ends).
                    let Some(share) = share else { return Err(UpstreamError::Unusable) };
                    self.submit_batch(framed, share, submits).await?;
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
            self.queue_submit(framed, share);
        }
        if self.flush(framed).await.is_err() {
            return;
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

    /// Sends `first` and every share queued behind it in one write. The sessions woken in the
    /// same turn of the runtime queue theirs first (one yield: at most a turn's delay), so a
    /// busy farm's shares go to the pool together instead of a write, and a wake-up of the
    /// pool, each.
    async fn submit_batch(
        &mut self,
        framed: &mut PoolStream,
        first: ForwardShare,
        submits: &mut mpsc::Receiver<ForwardShare>,
    ) -> Result<(), UpstreamError> {
        tokio::task::yield_now().await;
        self.queue_submit(framed, first);
        for _ in 1..SUBMIT_BATCH {
            let Ok(share) = submits.try_recv() else {
                break;
            };
            self.queue_submit(framed, share);
        }
        self.flush(framed).await
    }

    /// Puts a share's submit in the write buffer and tracks it (before the write: if the write
    /// fails, the share is counted lost with the rest).
    fn queue_submit(&mut self, framed: &mut PoolStream, share: ForwardShare) {
        if share.pool_extranonce1 != self.extranonce1 {
            // Verified on work from before the pool's set_extranonce, and still queued when it
            // came: its coinbase is not the pool's any more. Counted, not sent to be rejected.
            self.count_lost_share(&share, "the pool changed the extranonce before it was sent");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.line.clear();
        write_submit_line(&mut self.line, id, &self.config.user, &share.to_share());
        framed.write_buffer_mut().extend_from_slice(&self.line);
        if share.is_block {
            info!(worker = %share.worker, job = %share.job_id, "submitting a block candidate");
        }
        self.pending.insert(
            id,
            Pending {
                share,
                sent: Instant::now(),
            },
        );
    }

    /// Writes what is buffered; a pool that stops reading for `submit_timeout` is a dead pool.
    async fn flush(&self, framed: &mut PoolStream) -> Result<(), UpstreamError> {
        match tokio::time::timeout(self.failover.submit_timeout, framed.flush()).await {
            Ok(result) => result.map_err(UpstreamError::Io),
            Err(_) => Err(UpstreamError::WriteTimeout(self.failover.submit_timeout)),
        }
    }

    /// Writes a line; a pool that stops reading for `submit_timeout` is a dead pool.
    async fn write(&self, framed: &mut PoolStream, line: Bytes) -> Result<(), UpstreamError> {
        match tokio::time::timeout(self.failover.submit_timeout, framed.send(line)).await {
            Ok(result) => result.map_err(UpstreamError::Io),
            Err(_) => Err(UpstreamError::WriteTimeout(self.failover.submit_timeout)),
        }
    }

    pub async fn on_message(
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
        self.shares
            .round_trip
            .observe(pending.sent.elapsed().as_secs_f64());
        if response.is_ok() {
            self.shares.accepted.inc();
            if pending.share.is_block {
                self.shares.blocks.inc();
                info!(worker = %pending.share.worker, "block accepted by the pool");
            }
            debug!(worker = %pending.share.worker, job = %pending.share.job_id, "pool accepted share");
        } else {
            self.shares.rejected.inc();
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
                    .upstream
                    .difficulty
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
                let host = reconnect.host.unwrap_or_else(|| self.endpoint.host.clone());
                let port = reconnect.port.unwrap_or(self.endpoint.port);
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
        if let Some(event) = event
            && self.events.send(event).await.is_err()
        {
            return Err(UpstreamError::RouterGone);
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

    pub fn lose_pending(&mut self, reason: &str) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, p)| p).collect();
        for share in &pending {
            self.count_lost(share, reason);
        }
    }

    fn count_lost(&self, pending: &Pending, reason: &str) {
        self.count_lost_share(&pending.share, reason);
    }

    pub fn count_lost_share(&self, share: &ForwardShare, reason: &str) {
        self.shares.lost.inc();
        warn!(worker = %share.worker, job = %share.job_id, reason, "forwarded share lost");
    }
}
