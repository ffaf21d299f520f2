//! A simulated ESP-Miner (Bitaxe) REST API, written from ESP-Miner's own
//! `main/http_server/openapi.yaml` (v2.14.0 and later): `GET /` serves the AxeOS page (what
//! `asic-rs` identifies it by), `GET /api/system/info` the device's `power` (W), `hashRate`
//! (GH/s), `miningPaused` and the rest, `GET /api/system/asic` the chip, and
//! `POST /api/system/pause` / `resume` sleep and wake it. One listener can also serve a whole
//! fleet (`start_fleet`): bound to every local address, it answers for the machine whose
//! address the connection was made to, so thousands of machines cost one socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
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

/// Accepts like a TCP listener, but drops every connection while the device it was made to
/// refuses them.
struct Refusing {
    inner: TcpListener,
    machines: Arc<Machines>,
}

/// The address a connection was made to: which machine of a fleet it asks.
#[derive(Debug, Clone, Copy)]
struct Called(IpAddr);

impl Connected<IncomingStream<'_, Refusing>> for Called {
    fn connect_info(stream: IncomingStream<'_, Refusing>) -> Self {
        Called(
            stream
                .io()
                .local_addr()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip()),
        )
    }
}

/// The machines one listener answers for.
enum Machines {
    /// One machine, whatever address it is called on.
    One(Machine),
    /// A fleet: the machine at each address.
    ByAddress(HashMap<IpAddr, Machine>),
}

struct Machine {
    device: Arc<SimDevice>,
    hostname: String,
}

impl Machines {
    fn at(&self, ip: IpAddr) -> Option<&Machine> {
        match self {
            Machines::One(machine) => Some(machine),
            Machines::ByAddress(fleet) => fleet.get(&ip),
        }
    }
}

impl axum::serve::Listener for Refusing {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            if let Ok((stream, addr)) = self.inner.accept().await {
                let called = stream.local_addr().map(|a| a.ip());
                let machine = called.ok().and_then(|ip| self.machines.at(ip));
                if machine.is_some_and(|m| !m.device.faults().refuse) {
                    return (stream, addr);
                }
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
        let machine = Machine {
            device,
            hostname: hostname.to_owned(),
        };
        SimEspMiner::serve(listener, Machines::One(machine))
    }

    /// Serves a fleet on one `listener` (bound to 0.0.0.0): each device answers on its own
    /// address, named `bitaxe-<address>`; a call to any other address is dropped.
    pub fn start_fleet(
        listener: TcpListener,
        devices: impl IntoIterator<Item = (IpAddr, Arc<SimDevice>)>,
    ) -> std::io::Result<SimEspMiner> {
        let fleet = devices
            .into_iter()
            .map(|(ip, device)| {
                let hostname = format!("bitaxe-{ip}");
                (ip, Machine { device, hostname })
            })
            .collect();
        SimEspMiner::serve(listener, Machines::ByAddress(fleet))
    }

    fn serve(listener: TcpListener, machines: Machines) -> std::io::Result<SimEspMiner> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let machines = Arc::new(machines);
        let routes = Router::new()
            .route("/", get(index))
            .route("/api/system/info", get(info))
            .route("/api/system/asic", get(asic))
            .route("/api/system/pause", post(pause))
            .route("/api/system/resume", post(resume))
            .with_state(Arc::clone(&machines));
        let stop = cancel.clone();
        tokio::spawn(async move {
            let server = axum::serve(
                Refusing {
                    inner: listener,
                    machines,
                },
                routes.into_make_service_with_connect_info::<Called>(),
            );
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = server.into_future() => {}
            }
        });
        Ok(SimEspMiner { addr, cancel })
    }
}

/// The machine a request was made to, or the answer when there is none or it is faulted (a
/// hang, a 401, or a body that is not JSON): the faults apply to every endpoint.
async fn called(machines: &Machines, called: Called) -> Result<&Machine, Response> {
    let Some(machine) = machines.at(called.0) else {
        return Err(StatusCode::NOT_FOUND.into_response());
    };
    match faulted(machine).await {
        Some(fault) => Err(fault),
        None => Ok(machine),
    }
}

async fn faulted(api: &Machine) -> Option<Response> {
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

async fn index(
    State(machines): State<Arc<Machines>>,
    ConnectInfo(to): ConnectInfo<Called>,
) -> Response {
    if let Err(answer) = called(&machines, to).await {
        return answer;
    }
    Html("<!doctype html><html><head><title>AxeOS</title></head><body><app-root></app-root></body></html>")
        .into_response()
}

async fn info(
    State(machines): State<Arc<Machines>>,
    ConnectInfo(to): ConnectInfo<Called>,
) -> Response {
    let api = match called(&machines, to).await {
        Ok(machine) => machine,
        Err(answer) => return answer,
    };
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

async fn asic(
    State(machines): State<Arc<Machines>>,
    ConnectInfo(to): ConnectInfo<Called>,
) -> Response {
    if let Err(answer) = called(&machines, to).await {
        return answer;
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

async fn pause(
    State(machines): State<Arc<Machines>>,
    ConnectInfo(to): ConnectInfo<Called>,
) -> Response {
    let api = match called(&machines, to).await {
        Ok(machine) => machine,
        Err(answer) => return answer,
    };
    api.device.sleep();
    Json(json!({"message": "Mining paused"})).into_response()
}

async fn resume(
    State(machines): State<Arc<Machines>>,
    ConnectInfo(to): ConnectInfo<Called>,
) -> Response {
    let api = match called(&machines, to).await {
        Ok(machine) => machine,
        Err(answer) => return answer,
    };
    api.device.wake();
    Json(json!({"message": "Mining resumed"})).into_response()
}
