//! A simulated rack meter: an Eastron SDM630's Modbus TCP interface (a `tokio-modbus` server)
//! whose "Total system power" (input register 30053, protocol address 52, float32, high word
//! first) is the sum of its devices' draw plus a fixed overhead (fans, switches, the PDU
//! itself), as a real meter at a rack's feed sees it.

use std::future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use super::device::SimDevice;

/// The SDM630's total system power: input register 30053, protocol address 52.
pub const SDM630_TOTAL_POWER: u16 = 52;

/// A running meter; stops when dropped.
#[derive(Debug)]
pub struct SimMeter {
    /// Where it listens.
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for SimMeter {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone)]
struct Sdm630 {
    devices: Arc<Vec<Arc<SimDevice>>>,
    overhead_watts: f64,
}

impl Sdm630 {
    fn total_watts(&self) -> f64 {
        self.overhead_watts + self.devices.iter().map(|d| d.watts()).sum::<f64>()
    }
}

impl tokio_modbus::server::Service for Sdm630 {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(match request {
            Request::ReadInputRegisters(SDM630_TOTAL_POWER, 2) => {
                let bits = (self.total_watts() as f32).to_bits();
                Ok(Response::ReadInputRegisters(vec![
                    (bits >> 16) as u16,
                    (bits & 0xFFFF) as u16,
                ]))
            }
            Request::ReadInputRegisters(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

impl SimMeter {
    /// Serves the meter of `devices` (plus `overhead_watts`) on `listener`.
    pub fn start(
        listener: TcpListener,
        devices: Vec<Arc<SimDevice>>,
        overhead_watts: f64,
    ) -> std::io::Result<SimMeter> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let service = Sdm630 {
            devices: Arc::new(devices),
            overhead_watts,
        };
        let stop = cancel.clone();
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = move |stream, socket_addr| {
                let service = service.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone())))
                }
            };
            let _ = server
                .serve_until(&on_connected, |_error| {}, stop.cancelled_owned())
                .await;
        });
        Ok(SimMeter { addr, cancel })
    }
}
