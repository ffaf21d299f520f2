//! A simulated LuxOS management API: the cgminer-compatible JSON API on TCP 4028, as LuxOS
//! documents it (docs.luxor.tech/firmware/api) and as `asic-rs` drives it: one command per
//! connection, `{"command":"version"}` answered with a `LUXminer` version (detection), `power`
//! with `POWER[0].Watts`, `stats` with `STATS[1]["GHS 5s"]`, and sleep and wake through
//! `session` / `logon` and `curtail` with `<session id>,sleep` or `,wakeup`. The request may
//! come with or without a newline; the reply ends the connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::device::SimDevice;

/// LuxOS ends a session after a minute without use.
const SESSION_IDLE: Duration = Duration::from_secs(60);
/// The longest request read.
const MAX_REQUEST: usize = 64 * 1024;

/// The one LuxOS session (LuxOS allows one at a time).
#[derive(Debug, Default)]
struct Session {
    id: Option<(String, Instant)>,
    next: u64,
}

/// A running LuxOS API; stops when dropped.
#[derive(Debug)]
pub struct SimLuxos {
    /// Where it listens.
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for SimLuxos {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl SimLuxos {
    /// Serves `device`'s LuxOS API on `listener`.
    pub fn start(listener: TcpListener, device: Arc<SimDevice>) -> std::io::Result<SimLuxos> {
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let session = Arc::new(Mutex::new(Session::default()));
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                if device.faults().refuse {
                    drop(stream);
                    continue;
                }
                let (device, session, stop) =
                    (Arc::clone(&device), Arc::clone(&session), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve(stream, &device, &session) => {}
                    }
                });
            }
        });
        Ok(SimLuxos { addr, cancel })
    }
}

async fn serve(mut stream: TcpStream, device: &SimDevice, session: &Mutex<Session>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // One JSON object, with or without a newline after it.
    let command: Value = loop {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
        else {
            return;
        };
        if n == 0 || request.len() + n > MAX_REQUEST {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Ok(value) = serde_json::from_str::<Value>(text.trim_end_matches(['\n', '\0'])) {
            break value;
        }
    };
    let faults = device.faults();
    if faults.hang {
        std::future::pending::<()>().await;
    }
    let reply = if faults.malformed {
        // A reply cut short: what a crashed or overloaded cgminer sends.
        "{\"STATUS\":[{\"STATUS\":\"S\",\"Msg\":\"Power usage\"}],\"POWER\":[{\"Watts\":".to_owned()
    } else {
        answer(&command, device, session).to_string()
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.write_all(b"\0").await;
    let _ = stream.shutdown().await;
}

fn status(code: u32, ok: bool, message: &str) -> Value {
    json!([{
        "Code": code,
        "Description": "LUXminer 2025.4.8.220305-57b389c7",
        "Msg": message,
        "STATUS": if ok { "S" } else { "E" },
        "When": crate::clock::unix_ms() / 1000,
    }])
}

fn error(message: &str) -> Value {
    json!({"STATUS": status(14, false, message), "id": 1})
}

fn answer(command: &Value, device: &SimDevice, session: &Mutex<Session>) -> Value {
    let name = command["command"].as_str().unwrap_or("");
    let parameter = command["parameter"].as_str().unwrap_or("");
    match name {
        "version" => json!({
            "STATUS": status(22, true, "LUXminer versions"),
            "VERSION": [{
                "API": "3.7",
                "CompileTime": "Tue Apr  8 22:05:35 UTC 2025",
                "LUXminer": "2025.4.8.220305-57b389c7",
                "Miner": "2025.4.8.220305",
                "Type": "Antminer S19k Pro",
            }],
            "id": 1,
        }),
        "power" => json!({
            "STATUS": status(311, true, "Power usage"),
            "POWER": [{"PSU": false, "Watts": device.watts().round()}],
            "id": 1,
        }),
        "stats" => json!({
            "STATUS": status(70, true, "CGMiner stats"),
            "STATS": [
                {"BMMiner": "1.0.0", "Miner": "2025.4.8.220305", "Type": "Antminer S19k Pro"},
                {"GHS 5s": device.reported_ghs(), "GHS av": device.reported_ghs(), "Elapsed": 3600},
            ],
            "id": 1,
        }),
        "summary" => json!({
            "STATUS": status(11, true, "Summary"),
            "SUMMARY": [{"GHS 5s": device.reported_ghs(), "Elapsed": 3600}],
            "id": 1,
        }),
        "session" => {
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            expire(&mut s);
            let id = s.id.as_ref().map(|(id, _)| id.clone()).unwrap_or_default();
            json!({"STATUS": status(319, true, "Session information"), "SESSION": [{"SessionID": id}], "id": 1})
        }
        "logon" => {
            if device.faults().unauthorized {
                return error("Access denied");
            }
            let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
            expire(&mut s);
            if s.id.is_some() {
                return error("Another session is active");
            }
            s.next += 1;
            let id = format!("sim{:05}", s.next);
            s.id = Some((id.clone(), Instant::now()));
            json!({"STATUS": status(316, true, "Session created"), "SESSION": [{"SessionID": id}], "id": 1})
        }
        "curtail" => {
            let (id, action) = parameter.split_once(',').unwrap_or((parameter, ""));
            {
                let mut s = session.lock().unwrap_or_else(|p| p.into_inner());
                expire(&mut s);
                match &mut s.id {
                    Some((current, used)) if current == id => *used = Instant::now(),
                    _ => return error("Invalid session id"),
                }
            }
            match action {
                "sleep" if device.asleep() => error("Miner is already in sleep mode"),
                "sleep" => {
                    device.sleep();
                    json!({"STATUS": status(335, true, "Curtailment command sent"), "CURTAIL": [{"Action": "sleep mode"}], "id": 1})
                }
                "wakeup" if !device.asleep() => error("Miner is already active"),
                "wakeup" => {
                    device.wake();
                    json!({"STATUS": status(335, true, "Curtailment command sent"), "CURTAIL": [{"Action": "wake up"}], "id": 1})
                }
                _ => error("Invalid curtail mode"),
            }
        }
        _ => error("Invalid command"),
    }
}

fn expire(session: &mut Session) {
    if session
        .id
        .as_ref()
        .is_some_and(|(_, used)| used.elapsed() >= SESSION_IDLE)
    {
        session.id = None;
    }
}
