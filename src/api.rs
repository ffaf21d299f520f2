//! The HTTP API and Prometheus metrics, for operators, their monitoring and their tooling.
//!
//! Read endpoints serve snapshots (sessions keep their own stats, the router its upstream view);
//! handlers never hold a lock across an await. Mutating endpoints require
//! `Authorization: Bearer <token>` when `api.token` or `api.token_file` is set (compared in
//! constant time); the config refuses a non-loopback listener without a token. Errors are JSON
//! `{"error": "..."}` with the matching status code. Every endpoint is documented with an example
//! in `docs/api.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::DrainMode;
use crate::config::Groups;
use crate::config::windows::WindowSpec;
use crate::downstream::{SessionCommand, SessionControl, WorkerSnapshot};
use crate::groups::PowerSource;
use crate::groups::capacity::CapacityRequest;
use crate::groups::controller::Answer;
use crate::groups::{Claim, ControlError, DrainRequest, GroupStatus, GroupsHandle};
use crate::metrics::Metrics;
use crate::power::{ManagementAddress, PowerBook};
use crate::router::{RouterHandle, UpstreamView};

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Counters.
    pub metrics: Metrics,
    /// The serving state.
    pub router: RouterHandle,
    /// Live sessions (read, and one command at a time).
    pub sessions: SessionControl,
    /// The configured groups, listed even when empty.
    pub group_rules: Groups,
    /// The group controller.
    pub groups: GroupsHandle,
    /// Bearer token for mutating endpoints, if any.
    pub token: Option<String>,
    /// The machines' power as their firmware reports it.
    pub power: Arc<PowerBook>,
    /// A reading older than this (ms) is no longer a machine's draw.
    pub power_stale_ms: u64,
}

/// A worker as the API shows it: its session, and its machine's power.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerView {
    /// The session.
    #[serde(flatten)]
    pub session: WorkerSnapshot,
    /// Its machine's power.
    #[serde(flatten)]
    pub power: WorkerPower,
}

/// A worker's machine's power (shared by the workers of one machine).
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerPower {
    /// Watts its machine's firmware reports (null: not read lately).
    pub power_watts: Option<f64>,
    /// `firmware` when read lately, else `declared` (its group's `watts_per_worker`).
    pub power_source: PowerSource,
    /// Whether its firmware says it sleeps (null: not said or not read).
    pub asleep: Option<bool>,
    /// Whether it can sleep through its driver (null: not detected yet).
    pub can_sleep: Option<bool>,
    /// The firmware as detected.
    pub firmware: Option<String>,
    /// The management address its power is read at.
    pub management_address: Option<String>,
    /// The last reading's or command's error.
    pub power_error: Option<String>,
}

impl ApiState {
    fn worker_view(&self, session: WorkerSnapshot) -> WorkerView {
        let power = self.worker_power(&session);
        WorkerView { session, power }
    }

    fn worker_power(&self, session: &WorkerSnapshot) -> WorkerPower {
        let (Some(name), Ok(remote)) = (
            session.name.as_deref(),
            session.remote.parse::<std::net::SocketAddr>(),
        ) else {
            return WorkerPower::default();
        };
        let Some(group) = self.group_rules.iter().find(|g| *g.name == *session.group) else {
            return WorkerPower::default();
        };
        let address = ManagementAddress::of(&group.management, name, remote.ip());
        let Some(machine) = self.power.get(&address) else {
            return WorkerPower::default();
        };
        let cutoff = crate::clock::unix_ms().saturating_sub(self.power_stale_ms);
        let fresh = machine.read_at_ms.is_some_and(|t| t >= cutoff);
        let command_error = machine.last_command.as_ref().and_then(|c| {
            c.error
                .as_ref()
                .map(|e| format!("{}: {e}", c.switch.as_str()))
        });
        WorkerPower {
            power_watts: machine.watts.filter(|_| fresh),
            power_source: if fresh {
                PowerSource::Firmware
            } else {
                PowerSource::Declared
            },
            asleep: machine.asleep.filter(|_| fresh),
            can_sleep: machine.can_sleep,
            firmware: machine.firmware.clone(),
            management_address: Some(address.to_string()),
            power_error: machine.error.clone().or(command_error),
        }
    }
}

/// The routes.
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/workers/{name}", get(worker))
        .route("/api/v1/workers/{name}/disconnect", post(disconnect_worker))
        .route("/api/v1/workers/{name}/reconnect", post(reconnect_worker))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/groups/{name}", get(group))
        .route("/api/v1/groups/{name}/drain", post(drain_group))
        .route("/api/v1/groups/{name}/resume", post(resume_group))
        .route("/api/v1/events", get(events))
        .route("/api/v1/windows", get(windows).post(create_window))
        .route("/api/v1/windows/{name}", get(window).delete(delete_window))
        .route("/api/v1/capacity", get(capacity_list).post(create_capacity))
        .route(
            "/api/v1/capacity/{id}",
            get(capacity_one).delete(end_capacity),
        )
        .route("/api/v1/capacity/{id}/heartbeat", post(capacity_heartbeat))
        .route("/api/v1/upstreams", get(upstreams))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(Arc::new(state))
}

/// A JSON error response.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    match state.router.serving_upstream() {
        Some(upstream) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ok", "upstream": &*upstream})),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "reason": "no upstream connected with a job"
            })),
        )
            .into_response(),
    }
}

/// Query of `GET /api/v1/workers`.
#[derive(Debug, Deserialize)]
pub struct WorkersQuery {
    group: Option<String>,
    upstream: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

/// A page of workers.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkersPage {
    /// Workers matching the filters, before paging.
    pub total: usize,
    /// This page.
    pub workers: Vec<WorkerView>,
}

const MAX_PAGE: usize = 10_000;

async fn workers(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<WorkersQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100);
    if limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is above {MAX_PAGE}"),
        );
    }
    let matching: Vec<WorkerSnapshot> = state
        .sessions
        .registry()
        .workers()
        .into_iter()
        .filter(|w| query.group.as_ref().is_none_or(|g| *g == w.group))
        .filter(|w| {
            query
                .upstream
                .as_ref()
                .is_none_or(|u| w.upstream.as_ref() == Some(u))
        })
        .collect();
    let total = matching.len();
    let workers = matching
        .into_iter()
        .skip(query.offset.unwrap_or(0))
        .take(limit)
        .map(|w| state.worker_view(w))
        .collect();
    Json(WorkersPage { total, workers }).into_response()
}

fn find_worker(state: &ApiState, name: &str) -> Option<WorkerSnapshot> {
    state
        .sessions
        .registry()
        .workers()
        .into_iter()
        .find(|w| w.name.as_deref() == Some(name) || w.id.to_string() == name)
}

async fn worker(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match find_worker(&state, &name) {
        Some(worker) => Json(state.worker_view(worker)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no connected worker {name:?}"),
        ),
    }
}

/// Whether the request carries the configured bearer token (always true without a token).
fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(expected) = &state.token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

/// Proof that the request carried the bearer token: a handler that takes it is protected (an
/// extractor, so no mutating handler can forget the check).
pub struct Authorized;

impl axum::extract::FromRequestParts<Arc<ApiState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        if authorized(state, &parts.headers) {
            Ok(Authorized)
        } else {
            Err(unauthorized())
        }
    }
}

/// A JSON body whose errors are this API's: 400 with serde's message, which names the field.
pub struct JsonBody<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<ApiState>> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")))
    }
}

/// Compares in constant time (`subtle`), so response timing does not reveal how much of a guess
/// was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn send_command(state: &ApiState, name: &str, command: SessionCommand) -> Response {
    let Some(worker) = find_worker(state, name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no connected worker {name:?}"),
        );
    };
    let Some(commands) = state.sessions.registry().commands(worker.id) else {
        return error(StatusCode::NOT_FOUND, format!("worker {name:?} just left"));
    };
    match commands.try_send(command) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"worker": worker.name, "id": worker.id, "status": "sent"})),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the worker's session is busy or closing; retry",
        ),
    }
}

async fn disconnect_worker(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(name): Path<String>,
) -> Response {
    let command = SessionCommand::Close {
        reason: "disconnected through the API".into(),
    };
    send_command(&state, &name, command).await
}

/// Body of `POST /api/v1/workers/{name}/reconnect`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectBody {
    host: Option<String>,
    port: Option<u16>,
    wait_seconds: Option<u64>,
}

async fn reconnect_worker(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(name): Path<String>,
    body: Option<Json<ReconnectBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let command = SessionCommand::Reconnect {
        host: body.host,
        port: body.port,
        wait_seconds: body.wait_seconds,
    };
    send_command(&state, &name, command).await
}

/// One group in `GET /api/v1/groups`: its lifecycle and power (from the group controller) and
/// its hashing (from the sessions).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GroupView {
    /// State, drain, power and the drain's witness.
    #[serde(flatten)]
    pub status: GroupStatus,
    /// asic or gpu.
    pub kind: String,
    /// Watts one mining worker draws.
    pub watts_per_worker: f64,
    /// Sum of the workers' 1-minute hashrates.
    pub hashrate_1m: f64,
    /// Sum of the workers' 15-minute hashrates.
    pub hashrate_15m: f64,
    /// Accepted shares of connected workers.
    pub accepted: u64,
    /// Rejected shares of connected workers.
    pub rejected: u64,
}

fn group_views(state: &ApiState) -> Vec<GroupView> {
    // Configured order, `default` last; every configured group is listed, even when empty.
    let mut order = Vec::new();
    let mut groups: BTreeMap<String, GroupView> = BTreeMap::new();
    for group in state.group_rules.iter() {
        order.push(group.name.to_string());
        groups.insert(
            group.name.to_string(),
            GroupView {
                status: state
                    .groups
                    .status(&group.name)
                    .unwrap_or_else(|| GroupStatus {
                        name: group.name.to_string(),
                        ..GroupStatus::default()
                    }),
                kind: match group.kind {
                    crate::config::GroupKind::Asic => "asic".into(),
                    crate::config::GroupKind::Gpu => "gpu".into(),
                },
                watts_per_worker: group.watts_per_worker,
                ..GroupView::default()
            },
        );
    }
    // Workers and their totals are counted live; state and power are the controller's (at most
    // one tick, 200 ms, old).
    for group in groups.values_mut() {
        group.status.workers = 0;
    }
    for w in state.sessions.registry().workers() {
        // Only authorized miners mine (and are in a group for good).
        let Some(group) = groups.get_mut(&w.group).filter(|_| w.name.is_some()) else {
            continue;
        };
        group.status.workers += 1;
        group.hashrate_1m += w.hashrate_1m;
        group.hashrate_15m += w.hashrate_15m;
        group.accepted += w.accepted;
        group.rejected += w.rejected;
    }
    order
        .into_iter()
        .filter_map(|name| groups.remove(&name))
        .collect()
}

async fn groups(State(state): State<Arc<ApiState>>) -> Response {
    Json(group_views(&state)).into_response()
}

async fn group(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match group_views(&state)
        .into_iter()
        .find(|g| g.status.name == name)
    {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no group {name:?}")),
    }
}

/// Body of `POST /api/v1/groups/{name}/drain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// pause, disconnect or reconnect.
    pub mode: DrainMode,
    /// Why (shown to miners and hooks, kept in the audit log).
    #[serde(default)]
    pub reason: String,
    /// `host:port` for reconnect mode.
    #[serde(default)]
    pub reconnect_to: Option<String>,
}

/// Body of `POST /api/v1/groups/{name}/resume`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    /// Resume even if windows or capacity requests still hold the group.
    #[serde(default)]
    pub force: bool,
}

/// 401 for a missing or wrong token.
fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
}

/// The HTTP answer to a group command: the group's status, or why it was refused.
fn group_answer(outcome: Result<GroupStatus, ControlError>) -> Response {
    let refusal = match outcome {
        Ok(status) => return Json(status).into_response(),
        Err(refusal) => refusal,
    };
    let status = match &refusal {
        ControlError::UnknownGroup(_) => StatusCode::NOT_FOUND,
        ControlError::Busy { .. } | ControlError::Held { .. } => StatusCode::CONFLICT,
        ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ControlError::HookFailed { .. } => StatusCode::BAD_GATEWAY,
        ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, refusal.to_string())
}

/// Parses an optional JSON body; the error is serde's message (it names the field).
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

async fn drain_group(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<DrainBody>,
) -> Response {
    let request = DrainRequest {
        mode: body.mode,
        reason: body.reason,
        reconnect_to: body.reconnect_to,
        claim: Claim::Manual,
    };
    group_answer(state.groups.drain(&name, request).await)
}

async fn resume_group(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: ResumeBody = match optional_json(&body) {
        Ok(body) => body,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    group_answer(state.groups.resume(&name, Claim::Manual, body.force).await)
}

/// Sends a controller answer as it is.
fn answer(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(answer.body)).into_response()
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| k.chars().take(200).collect())
}

async fn windows(State(state): State<Arc<ApiState>>) -> Response {
    Json(state.groups.windows()).into_response()
}

async fn window(State(state): State<Arc<ApiState>>, Path(name): Path<String>) -> Response {
    match state
        .groups
        .windows()
        .into_iter()
        .find(|w| w.spec.name == name)
    {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no window {name:?}")),
    }
}

async fn create_window(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    headers: HeaderMap,
    JsonBody(spec): JsonBody<WindowSpec>,
) -> Response {
    answer(
        state
            .groups
            .create_window(spec, idempotency_key(&headers))
            .await,
    )
}

async fn delete_window(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(name): Path<String>,
) -> Response {
    answer(state.groups.delete_window(&name).await)
}

async fn capacity_list(State(state): State<Arc<ApiState>>) -> Response {
    Json(state.groups.capacity()).into_response()
}

async fn capacity_one(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match state
        .groups
        .capacity()
        .into_iter()
        .find(|c| c.capacity.id == id)
    {
        Some(view) => Json(view).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no capacity request {id:?}")),
    }
}

async fn create_capacity(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CapacityRequest>,
) -> Response {
    answer(
        state
            .groups
            .create_capacity(request, idempotency_key(&headers))
            .await,
    )
}

async fn end_capacity(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(id): Path<String>,
) -> Response {
    answer(state.groups.end_capacity(&id).await)
}

async fn capacity_heartbeat(
    State(state): State<Arc<ApiState>>,
    _: Authorized,
    Path(id): Path<String>,
) -> Response {
    answer(state.groups.heartbeat(&id).await)
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    after: Option<u64>,
    group: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

async fn events(State(state): State<Arc<ApiState>>, Query(query): Query<EventsQuery>) -> Response {
    let limit = query.limit.unwrap_or(1000);
    if limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is above {MAX_PAGE}"),
        );
    }
    let events = state
        .groups
        .events(query.after.unwrap_or(0), query.group.as_deref(), limit);
    match query.format.as_deref() {
        None | Some("json") => Json(events).into_response(),
        Some("csv") => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::groups::events::to_csv(&events),
        )
            .into_response(),
        Some(other) => error(
            StatusCode::BAD_REQUEST,
            format!("format {other:?}: use json or csv"),
        ),
    }
}

/// One upstream with its share outcomes.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpstreamReport {
    /// State and extranonce split.
    #[serde(flatten)]
    pub view: UpstreamView,
    /// Forwarded shares the pool accepted.
    pub accepted: u64,
    /// Forwarded shares the pool rejected.
    pub rejected: u64,
    /// Forwarded shares lost (connection died, no answer in time).
    pub lost: u64,
}

async fn upstreams(State(state): State<Arc<ApiState>>) -> Response {
    let counter = |name: &str, result: &str| {
        state
            .metrics
            .upstream
            .shares
            .get_metric_with_label_values(&[name, result])
            .map(|c| c.get())
            .unwrap_or(0)
    };
    let reports: Vec<UpstreamReport> = state
        .router
        .upstreams()
        .into_iter()
        .map(|view| UpstreamReport {
            accepted: counter(&view.name, "accepted"),
            rejected: counter(&view.name, "rejected"),
            lost: counter(&view.name, "lost"),
            view,
        })
        .collect();
    Json(reports).into_response()
}

/// Serves the API on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, state: ApiState, cancel: CancellationToken) {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(listen = ?local, "api listening");
    let result = axum::serve(listener, routes(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "api server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
    }
}
