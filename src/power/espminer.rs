//! ESP-Miner (Bitaxe and its kin) on any port: hashgate's own driver for the three calls of
//! ESP-Miner's documented REST API it needs (`GET /api/system/info`, `POST /api/system/pause`,
//! `POST /api/system/resume`, per the firmware's `main/http_server/openapi.yaml`). `asic-rs`
//! drives ESP-Miner too, but only on port 80; a farm that forwards management ports, or a
//! demo that cannot bind below 1024, needs another port, so this driver exists for those.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::driver::{DriverError, DriverFuture, MinerDriver, Reading};

/// The fields of `GET /api/system/info` hashgate reads.
#[derive(Debug, Deserialize)]
struct SystemInfo {
    /// Watts, from the regulator.
    power: f64,
    /// GH/s.
    #[serde(rename = "hashRate")]
    hash_rate: Option<f64>,
    /// Since v2.14.0.
    #[serde(rename = "miningPaused")]
    mining_paused: Option<bool>,
    version: Option<String>,
}

/// A detected ESP-Miner.
#[derive(Debug)]
pub struct EspMiner {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    firmware: String,
    can_pause: bool,
}

/// A request that failed: timed out (`timeout` is the client's limit), or could not reach the
/// firmware.
fn failed(error: reqwest::Error, timeout: Duration) -> DriverError {
    if error.is_timeout() {
        DriverError::Timeout {
            what: "ESP-Miner request",
            after: timeout,
        }
    } else {
        DriverError::Unreachable(Box::new(error))
    }
}

/// Whether an ESP-Miner version string (`v2.14.0`, `2.15.1`) has pause and resume (2.14+).
fn has_pause(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 14)
}

/// One HTTP client for every ESP-Miner (a client per machine cost 50 KB and its own connector
/// and TLS roots: 1 GB and a saturated core at 20,000 machines, BENCHMARKS.md); each request
/// carries its own timeout.
fn shared_client() -> Result<reqwest::Client, reqwest::Error> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // No idle connections kept: a machine is polled every few seconds at most, and
        // 20,000 idle sockets would take the file descriptors miners need.
        .pool_max_idle_per_host(0)
        .build()?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

impl EspMiner {
    /// The ESP-Miner at `address`, if AxeOS answers there (`None`: something else does).
    pub async fn detect(
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<Option<EspMiner>, DriverError> {
        let client = shared_client().map_err(|e| failed(e, timeout))?;
        let base = format!("http://{address}");
        let response = client
            .get(format!("{base}/"))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| failed(e, timeout))?;
        let page = bounded_body(response, timeout).await?;
        if !String::from_utf8_lossy(&page).contains("AxeOS") {
            return Ok(None);
        }
        let mut miner = EspMiner {
            base,
            client,
            timeout,
            firmware: "ESP-Miner".into(),
            can_pause: false,
        };
        let info = miner.info().await?;
        let version = info.version.unwrap_or_default();
        miner.can_pause = has_pause(&version);
        miner.firmware = format!("ESP-Miner {}", version.trim_start_matches('v'));
        Ok(Some(miner))
    }

    async fn info(&self) -> Result<SystemInfo, DriverError> {
        let response = self
            .client
            .get(format!("{}/api/system/info", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failed(e, self.timeout))?;
        let body = checked(response, self.timeout).await?;
        serde_json::from_slice(&body)
            .map_err(|e| DriverError::Malformed(format!("/api/system/info: {e}")))
    }

    async fn post(&self, path: &'static str, what: &'static str) -> Result<(), DriverError> {
        if !self.can_pause {
            return Err(DriverError::Unsupported {
                firmware: self.firmware.clone(),
                what,
            });
        }
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| failed(e, self.timeout))?;
        checked(response, self.timeout).await.map(drop)
    }
}

/// The longest reply read from a machine (`/api/system/info` is ~2 KiB; AxeOS's page is small):
/// a device that streams more is that device's error, not the proxy's memory.
const MAX_BODY: usize = 64 * 1024;

/// A reply's body, read chunk by chunk up to [`MAX_BODY`].
async fn bounded_body(
    mut response: reqwest::Response,
    timeout: Duration,
) -> Result<Vec<u8>, DriverError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e, timeout))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(DriverError::Malformed(format!(
                "reply longer than {MAX_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of a 2xx answer; a 401 is the firmware's allowed-network check.
async fn checked(response: reqwest::Response, timeout: Duration) -> Result<Vec<u8>, DriverError> {
    let status = response.status();
    let body = bounded_body(response, timeout).await?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(DriverError::Unauthorized(
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ));
    }
    if !status.is_success() {
        return Err(DriverError::Refused(format!("HTTP {status}")));
    }
    Ok(body)
}

impl MinerDriver for EspMiner {
    fn firmware(&self) -> &str {
        &self.firmware
    }

    fn can_sleep(&self) -> bool {
        self.can_pause
    }

    fn read(&self) -> DriverFuture<'_, Reading> {
        Box::pin(async move {
            let info = self.info().await?;
            if !info.power.is_finite() || info.power < 0.0 {
                return Err(DriverError::Malformed(format!("power {}", info.power)));
            }
            Ok(Reading {
                watts: info.power,
                hashrate_ths: info.hash_rate.filter(|h| h.is_finite()).map(|h| h / 1000.0),
                asleep: info.mining_paused,
            })
        })
    }

    fn sleep(&self) -> DriverFuture<'_, ()> {
        Box::pin(self.post("/api/system/pause", "sleep"))
    }

    fn wake(&self) -> DriverFuture<'_, ()> {
        Box::pin(self.post("/api/system/resume", "wake"))
    }
}

#[cfg(test)]
mod tests {
    use super::has_pause;

    #[test]
    fn pause_and_resume_came_with_2_14() {
        assert!(has_pause("v2.14.0"));
        assert!(has_pause("2.15.1"));
        assert!(has_pause("v3.0.0"));
        assert!(!has_pause("v2.13.2"));
        assert!(!has_pause("v2.9.0"));
        assert!(!has_pause(""));
    }
}
