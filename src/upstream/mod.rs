//! Pool connections: one task per connection that handshakes, follows the pool's notifications,
//! submits forwarded shares and reconnects with backoff.
//!
//! The task reports to the router through [`UpstreamEvent`]s and never decides which pool serves
//! miners. Every forwarded share is tracked by request id until the pool answers, the submit
//! times out, or the connection dies: it ends as accepted, rejected or lost, counted in
//! `hashgate_upstream_shares_total` and logged. Nothing is dropped silently.

mod connection;
mod error;
mod events;
mod handshake;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

pub use error::{DownCause, Retry, Side, UpstreamError};
pub use events::{ConnKey, ConnectionSettings, PoolSession, PoolTarget, UpstreamEvent};

use self::connection::{Connection, ShareMetrics};
use self::handshake::handshake;
use crate::config::{Endpoint, FailoverConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::protocol::LineCodec;

/// Runs one pool connection until `cancel`: connect, handshake, serve, back off, repeat. The
/// backoff follows the cause: the pool's own wait after `client.reconnect`, the longest step
/// after a refusal (the same credentials fail again), doubling with jitter otherwise.
pub async fn run_connection(
    key: ConnKey,
    target: Arc<PoolTarget>,
    settings: Arc<ConnectionSettings>,
    events: mpsc::Sender<UpstreamEvent>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let span = info_span!("upstream", upstream = %target.config.name, slot = key.slot);
    async move {
        let config = &target.config;
        let failover = &settings.failover;
        let mut endpoint = target.endpoint.clone();
        let mut backoff = failover.backoff_min;
        loop {
            let connected_at = Instant::now();
            // Not raced against `cancel` here: `connect_and_serve` handles cancellation itself so
            // that shares in flight get their grace period and are counted.
            let outcome = connect_and_serve(
                key, config, &settings, &endpoint, &events, &metrics, &cancel,
            )
            .await;
            metrics
                .upstream.connected
                .with_label_values(&[&config.name])
                .set(0);
            let Err(error) = outcome else {
                return; // cancelled while serving
            };
            // A connection that stayed up a while starts its backoff over.
            if connected_at.elapsed() > failover.backoff_max {
                backoff = failover.backoff_min;
            }
            let jitter = |step: Duration| step.mul_f64(fastrand::f64() * 0.5);
            let delay = match (&error, error.retry()) {
                (_, Retry::Never) => return,
                (UpstreamError::Reconnect { target: to, wait }, _) => {
                    match reconnect_target(to, &target.endpoint, failover) {
                        Some(next) => {
                            info!(target = %to, "following the pool's client.reconnect");
                            endpoint = next;
                        }
                        None => warn!(target = %to, "ignoring client.reconnect to a host not in failover.allow_reconnect_hosts"),
                    }
                    backoff = failover.backoff_min;
                    // The pool's requested wait stands in for the first backoff step.
                    wait.unwrap_or(backoff + jitter(backoff))
                }
                (_, Retry::Slowly) => failover.backoff_max,
                _ => backoff + jitter(backoff),
            };
            let cause = DownCause {
                error: Arc::new(error),
            };
            let reason = cause.describe();
            if matches!(*cause.error, UpstreamError::Refused { .. }) {
                error!(%reason, retry_in = ?delay, "the pool refuses this connection (check the upstream's user and password)");
            } else {
                warn!(%reason, cause = cause.error.label(), retry_in = ?delay, "upstream down");
            }
            if events.send(UpstreamEvent::Down { key, cause }).await.is_err() {
                return;
            }
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

/// Where a pool's `client.reconnect` points, if the operator allows that host.
fn reconnect_target(target: &str, own: &Endpoint, failover: &FailoverConfig) -> Option<Endpoint> {
    let next = Endpoint::parse(target).ok()?;
    let allowed = next.host == own.host || failover.allow_reconnect_hosts.contains(&next.host);
    allowed.then_some(next)
}

/// Accepted shares waiting for the connection's task: three seconds of a 100,000-machine
/// farm at 20,000 shares a second, so a pool that is slow for a moment costs no share (4,096
/// lost 3% of them at that rate). About 100 bytes a share, allocated only while they wait.
const SUBMIT_QUEUE: usize = 65_536;

/// One connection's life: connect, handshake, then serve until error or cancel.
async fn connect_and_serve(
    key: ConnKey,
    config: &UpstreamConfig,
    settings: &ConnectionSettings,
    endpoint: &Endpoint,
    events: &mpsc::Sender<UpstreamEvent>,
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<(), UpstreamError> {
    let failover = &settings.failover;
    let address = endpoint.to_string();
    let connect = tokio::time::timeout(
        failover.connect_timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    );
    let stream = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        result = connect => result,
    }
    .map_err(|_| UpstreamError::ConnectTimeout {
        address: address.clone(),
        after: failover.connect_timeout,
    })?
    .map_err(|source| UpstreamError::Connect {
        address: address.clone(),
        source,
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
        .upstream
        .connected
        .with_label_values(&[&config.name])
        .set(1);
    let (submit_tx, mut submit_rx) = mpsc::channel(SUBMIT_QUEUE);
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
        endpoint,
        failover,
        shutdown_grace: settings.shutdown_grace,
        events,
        metrics,
        pending: HashMap::new(),
        next_id: 100,
        last_job: Instant::now(),
        extranonce1: handshake.extranonce1,
        shares: ShareMetrics::new(metrics, &config.name),
        line: Vec::new(),
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
