//! A simulated ESP-Miner (Bitaxe) REST API, written from ESP-Miner's own
//! `main/http_server/openapi.yaml` (v2.14.0 and later): `GET /` serves the AxeOS page (what
//! `asic-rs` identifies it by), `GET /api/system/info` the device's `power` (W), `hashRate`
//! (GH/s), `miningPaused` and the rest, `GET /api/system/asic` the chip, and
//! `POST /api/system/pause` / `resume` sleep and wake it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::device::SimDevice;

/// A running ESP-Miner API; stops when dropped.
#[derive(Debug)]
pub struct SimEspMiner {
    /// Where it listens.
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for SimEspMiner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Accepts like a TCP listener, but drops every connection while the device refuses them.
struct Refusing {
    inner: TcpListener,
    device: Arc<SimDevice>,
}

impl axum::serve::Listener for Refusing {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            if let Ok((stream, addr)) = self.inner.accept().await
                && !self.device.faults().refuse
            {
                return (stream, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl SimEspMiner {
    /// Serves `device`'s API on `listener`; `hostname` is what `/api/system/info` names it.
    pub fn start(
        listener: TcpListener,
        device: Arc<SimDevice>,
        hostname: &str,
    ) -> std::io::Result<SimEspMiner> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let state = Arc::new(Api {
            device: Arc::clone(&device),
            hostname: hostname.to_owned(),
        });
        let routes = Router::new()
            .route("/", get(index))
            .route("/api/system/info", get(info))
            .route("/api/system/asic", get(asic))
            .route("/api/system/pause", post(pause))
            .route("/api/system/resume", post(resume))
            .with_state(state);
        let stop = cancel.clone();
        tokio::spawn(async move {
            let server = axum::serve(
                Refusing {
                    inner: listener,
                    device,
                },
                routes,
            );
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = server.into_future() => {}
            }
        });
        Ok(SimEspMiner { addr, cancel })
    }
}

struct Api {
    device: Arc<SimDevice>,
    hostname: String,
}

/// The faults that apply to every endpoint: a hang, a 401, or a body that is not JSON.
async fn faulted(api: &Api) -> Option<Response> {
    let faults = api.device.faults();
    if faults.hang {
        std::future::pending::<()>().await;
    }
    if faults.unauthorized {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                "Client not in allowed network range",
            )
                .into_response(),
        );
    }
    if faults.oversized {
        return Some(" ".repeat(1 << 20).into_response());
    }
    if faults.malformed {
        return Some(
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                "{\"power\": 18.2,,\"hashRate\": nan}",
            )
                .into_response(),
        );
    }
    None
}

async fn index(State(api): State<Arc<Api>>) -> Response {
    if let Some(fault) = faulted(&api).await {
        return fault;
    }
    Html("<!doctype html><html><head><title>AxeOS</title></head><body><app-root></app-root></body></html>")
        .into_response()
}

async fn info(State(api): State<Arc<Api>>) -> Response {
    if let Some(fault) = faulted(&api).await {
        return fault;
    }
    let device = &api.device;
    let watts = device.watts();
    Json(json!({
        "ASICModel": "BM1370",
        "version": "v2.14.0",
        "axeOSVersion": "v2.14.0",
        "idfVersion": "v5.4.1",
        "boardVersion": "601",
        "hostname": api.hostname,
        "macAddr": "AA:BB:CC:00:00:01",
        "power": (watts * 10.0).round() / 10.0,
        "voltage": 5100.0,
        "current": (watts / 5.1 * 1000.0).round(),
        "maxPower": 25,
        "hashRate": device.reported_ghs(),
        "expectedHashrate": device.profile.reported_ghs,
        "miningPaused": device.asleep(),
        "temp": 55.0,
        "vrTemp": 48.0,
        "frequency": 525,
        "fanrpm": 4000,
        "uptimeSeconds": 3600,
        "sharesAccepted": 0,
        "sharesRejected": 0,
        "bestDiff": "0",
        "bestSessionDiff": "0",
        "stratumURL": "127.0.0.1",
        "stratumPort": 3333,
        "stratumUser": api.hostname,
        "isUsingFallbackStratum": 0,
        "overheat_mode": 0,
    }))
    .into_response()
}

async fn asic(State(api): State<Arc<Api>>) -> Response {
    if let Some(fault) = faulted(&api).await {
        return fault;
    }
    Json(json!({
        "ASICModel": "BM1370",
        "deviceModel": "Gamma",
        "swarmColor": "blue",
        "asicCount": 1,
        "defaultFrequency": 525,
        "frequencyOptions": [400, 490, 525, 550],
        "defaultVoltage": 1150,
        "voltageOptions": [1100, 1150, 1200],
    }))
    .into_response()
}

async fn pause(State(api): State<Arc<Api>>) -> Response {
    if let Some(fault) = faulted(&api).await {
        return fault;
    }
    api.device.sleep();
    Json(json!({"message": "Mining paused"})).into_response()
}

async fn resume(State(api): State<Arc<Api>>) -> Response {
    if let Some(fault) = faulted(&api).await {
        return fault;
    }
    api.device.wake();
    Json(json!({"message": "Mining resumed"})).into_response()
}
