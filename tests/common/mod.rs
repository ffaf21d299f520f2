//! Shared harness for wire tests: a proxy on free ports in front of simulated pools, and a raw
//! line-level miner that asserts on what crosses the socket.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod daemon;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hashgate::config::Config;
use hashgate::protocol::{Difficulty, Extranonce1, Extranonce2, Notify, Share};
use hashgate::protocol::{Id, LineCodec, Message, Method, Request, Response, SubscribeResult};
use hashgate::proxy::Proxy;
use hashgate::sim::{SimPool, SimPoolConfig};
use hashgate::work::{HeaderMidstate, JobBook, share_merkle_root};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A proxy config in front of `pools` (in priority order), listening on free loopback ports.
pub fn config_for(pools: &[&SimPool], extra: &str) -> Config {
    let urls: Vec<String> = pools.iter().map(|p| p.url()).collect();
    config_with_urls(&urls, extra)
}

/// A proxy config in front of pools at `urls` (in priority order).
pub fn config_with_urls(urls: &[String], extra: &str) -> Config {
    let mut text = String::from(
        r#"
[server]
listen = "127.0.0.1:0"
subscribe_wait = "20s"
[api]
listen = "127.0.0.1:0"
[difficulty]
initial = 0.000001
min = 0.0000001
max = 1.0
target_share_interval = "1s"
retarget_interval = "30s"
[failover]
backoff_min = "100ms"
backoff_max = "1s"
return_after = "2s"
connect_timeout = "2s"
handshake_timeout = "3s"
"#,
    );
    text.push_str(extra);
    for (i, url) in urls.iter().enumerate() {
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"pool{i}\"\nurl = \"{url}\"\nuser = \"farm.proxy\"\npriority = {i}\n"
        ));
    }
    let mut config = Config::parse(&text, Path::new("test.toml")).expect("test config is valid");
    if !extra.contains("[state]") {
        config.state.dir = state_dir();
    }
    config
}

/// A fresh state directory for one proxy of this test process.
pub fn state_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hashgate-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A pool with test-friendly defaults (easy difficulty, slow jobs so shares are not stale).
pub async fn pool(difficulty: f64) -> SimPool {
    SimPool::start(SimPoolConfig {
        difficulty,
        job_interval: Duration::from_secs(30),
        ..SimPoolConfig::default()
    })
    .await
    .expect("sim pool binds")
}

/// A pool with test-friendly defaults changed by `customize`.
pub async fn pool_with(customize: impl FnOnce(&mut SimPoolConfig)) -> SimPool {
    let mut config = SimPoolConfig {
        difficulty: 1.0,
        job_interval: Duration::from_secs(30),
        ..SimPoolConfig::default()
    };
    customize(&mut config);
    SimPool::start(config).await.expect("sim pool binds")
}

/// Starts a proxy.
pub async fn proxy(config: Config) -> Proxy {
    Proxy::start(config).await.expect("proxy starts")
}

/// Polls `condition` until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the group controller publishes `watts` drawn by `group` (it counts on its tick).
pub async fn wait_power(proxy: &Proxy, group: &str, watts: f64) {
    eventually(&format!("{group} to draw {watts} W"), || {
        group_power(proxy, group) == watts
    })
    .await;
}

/// The group's published power: the sum of its series by source.
pub fn group_power(proxy: &Proxy, group: &str) -> f64 {
    ["meter", "firmware", "declared"]
        .iter()
        .map(|source| {
            proxy
                .metrics
                .groups
                .power_watts
                .with_label_values(&[group, source])
                .get()
        })
        .sum()
}

/// A miner at the line level: sends raw JSON, reads and parses what comes back.
pub struct RawMiner {
    framed: Framed<TcpStream, LineCodec>,
    /// Everything received, in order.
    pub received: Vec<Message>,
    /// Indexes of responses already returned by `response`.
    answered: Vec<usize>,
    /// The subscribe answer, once seen.
    pub extranonce1: Option<Extranonce1>,
    pub extranonce2_size: usize,
    pub difficulty: Option<Difficulty>,
    pub book: JobBook,
    pub version_mask: u32,
}

impl RawMiner {
    pub async fn connect(proxy: &Proxy) -> RawMiner {
        let stream = TcpStream::connect(proxy.miner_addr)
            .await
            .expect("connect to proxy");
        RawMiner {
            framed: Framed::new(stream, LineCodec::new(1 << 20)),
            received: Vec::new(),
            answered: Vec::new(),
            extranonce1: None,
            extranonce2_size: 0,
            difficulty: None,
            book: JobBook::new(16),
            version_mask: 0,
        }
    }

    /// Writes raw bytes as they are (several lines in one segment, partial lines, ...).
    pub async fn write_raw(&mut self, bytes: &str) {
        self.framed
            .send(Bytes::copy_from_slice(bytes.as_bytes()))
            .await
            .expect("write to proxy");
    }

    /// Writes one line.
    pub async fn send(&mut self, line: &str) {
        self.write_raw(&format!("{line}\n")).await;
    }

    /// Reads one message (with the timeout).
    pub async fn next(&mut self) -> Message {
        let line = tokio::time::timeout(WAIT, self.framed.next())
            .await
            .expect("a line from the proxy in time")
            .expect("connection open")
            .expect("a valid line");
        let message = Message::parse(&line).expect("the proxy sends valid stratum");
        if std::env::var("HG_TRACE").is_ok() {
            eprintln!("<- {}", String::from_utf8_lossy(&line));
        }
        self.observe(&message);
        self.received.push(message.clone());
        message
    }

    /// Everything that arrives within `window` (stops early if the connection closes).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + window;
        let mut messages = Vec::new();
        while let Ok(Some(Ok(line))) = tokio::time::timeout_at(deadline, self.framed.next()).await {
            if let Ok(message) = Message::parse(&line) {
                self.observe(&message);
                self.received.push(message.clone());
                messages.push(message);
            }
        }
        messages
    }

    /// Whether the proxy closed the connection (within the timeout).
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.framed.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(line))) => {
                    if let Ok(message) = Message::parse(&line) {
                        self.observe(&message);
                        self.received.push(message);
                    }
                }
                Err(_) => return false,
            }
        }
    }

    fn observe(&mut self, message: &Message) {
        match message {
            Message::Request(Request { method, .. }) => match method {
                Method::SetDifficulty(d) => self.difficulty = Some(*d),
                Method::Notify(notify) => {
                    self.book.push(notify.clone());
                }
                Method::SetExtranonce(set) => {
                    self.extranonce1 = Some(set.extranonce1);
                    self.extranonce2_size = set.extranonce2_size;
                    self.book = JobBook::new(16);
                }
                Method::SetVersionMask(mask) => self.version_mask = *mask,
                _ => {}
            },
            Message::Response(response) => {
                if let Ok(result) = SubscribeResult::from_value(&response.result) {
                    self.extranonce1 = Some(result.extranonce1);
                    self.extranonce2_size = result.extranonce2_size;
                }
                if let Some(mask) = response
                    .result
                    .get("version-rolling.mask")
                    .and_then(Value::as_str)
                {
                    self.version_mask = u32::from_str_radix(mask, 16).unwrap_or(0);
                }
            }
        }
    }

    /// The response to `id`: already received (answers may come out of order, e.g. a deferred
    /// subscribe), or the next one to arrive.
    pub async fn response(&mut self, id: Id) -> Response {
        let mut seen = 0;
        loop {
            while seen < self.received.len() {
                if let Message::Response(response) = &self.received[seen]
                    && response.id == id
                    && !self.answered.contains(&seen)
                {
                    self.answered.push(seen);
                    return response.clone();
                }
                seen += 1;
            }
            self.next().await;
        }
    }

    /// Reads until a request/notification of `method` arrives.
    pub async fn notification(&mut self, method: &str) -> Request {
        loop {
            if let Message::Request(request) = self.next().await
                && request.method.name() == method
            {
                return request;
            }
        }
    }

    /// Subscribes and authorizes, then waits for the first job.
    pub async fn handshake(&mut self, worker: &str) -> Notify {
        self.send(r#"{"id":1,"method":"mining.subscribe","params":["test-miner/1.0"]}"#)
            .await;
        self.send(&format!(
            r#"{{"id":2,"method":"mining.authorize","params":["{worker}","x"]}}"#
        ))
        .await;
        assert!(self.response(Id::from(1)).await.is_ok());
        assert!(self.response(Id::from(2)).await.is_ok());
        self.latest_job().await
    }

    /// Waits until a job is known.
    pub async fn latest_job(&mut self) -> Notify {
        loop {
            if let Some(job) = self.book.latest() {
                return job.notify().clone();
            }
            self.next().await;
        }
    }

    /// Searches nonces of the newest job for a share that meets (`meets = true`) or misses the
    /// current difficulty; returns the submit params.
    pub fn find_share(&self, extranonce2: u64, meets: bool, version_bits: Option<u32>) -> Share {
        let job = self.book.latest().expect("a job").clone();
        let extranonce1 = self.extranonce1.expect("subscribed");
        let bytes = extranonce2.to_be_bytes();
        let extranonce2 = Extranonce2::from_bytes(&bytes[8 - self.extranonce2_size..]).unwrap();
        let mut share = Share {
            job_id: job.id().clone(),
            extranonce2,
            ntime: job.notify().ntime,
            nonce: 0,
            version_bits,
        };
        let root = share_merkle_root(&job, &extranonce1, &share);
        let mask = self.version_mask;
        let version = (job.notify().version & !mask) | (version_bits.unwrap_or(0) & mask);
        let midstate = HeaderMidstate::for_job(&job, &root, version);
        let threshold = self.difficulty.expect("a difficulty").to_threshold();
        for nonce in 0..u32::MAX {
            if threshold.is_met_by(&midstate.hash(share.ntime, nonce)) == meets {
                share.nonce = nonce;
                return share;
            }
        }
        panic!("no nonce found");
    }

    /// The submit line for a share.
    pub fn submit_line(id: u64, worker: &str, share: &Share) -> String {
        let mut line = format!(
            r#"{{"id":{id},"method":"mining.submit","params":["{worker}","{}","{}","{:08x}","{:08x}""#,
            share.job_id, share.extranonce2, share.ntime, share.nonce
        );
        if let Some(bits) = share.version_bits {
            line.push_str(&format!(r#","{bits:08x}""#));
        }
        line.push_str("]}");
        line
    }
}

/// One GET of any URL (a Prometheus server, the API); `(0, "")` while nothing listens there.
pub fn http_get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// A blocking HTTP client for the API (run it through [`blocking`] from async tests).
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Http {
            agent,
            base: format!("http://{addr}"),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let mut response = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    /// A POST without a body (as `curl -X POST` sends).
    pub fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.send_empty().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        self.request("POST", path, token, Some(body), None)
    }

    /// GET, DELETE or POST (with a JSON body and an optional `Idempotency-Key`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut response = match method {
            "GET" | "DELETE" => {
                let mut request = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call().unwrap()
            }
            _ => {
                let mut request = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                if let Some(key) = idempotency_key {
                    request = request.header("Idempotency-Key", key);
                }
                request.send(body.unwrap_or("").as_bytes()).unwrap()
            }
        };
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }
}

/// Runs blocking work (an HTTP call) off the async test's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The bearer token the group tests configure.
pub const TOKEN: &str = "s3cret";

/// The HTTP API as the group tests drive it: JSON in and out, `TOKEN` on mutating calls.
pub struct Api(Arc<Http>);

impl Api {
    pub fn new(proxy: &Proxy) -> Api {
        Api::at(proxy.api_addr)
    }

    /// The API of a proxy elsewhere (a daemon process).
    pub fn at(addr: std::net::SocketAddr) -> Api {
        Api(Arc::new(Http::new(addr)))
    }

    /// Any call; the body parsed as JSON (or kept as a string when it is not JSON).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let (http, method, path) = (Arc::clone(&self.0), method.to_owned(), path.to_owned());
        let (token, body, key) = (
            token.map(str::to_owned),
            body.map(str::to_owned),
            key.map(str::to_owned),
        );
        let (status, text) = blocking(move || {
            http.request(
                &method,
                &path,
                token.as_deref(),
                body.as_deref(),
                key.as_deref(),
            )
        })
        .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A mutating call with the token (`key`: an `Idempotency-Key`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.request(method, path, Some(TOKEN), body.as_deref(), key)
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        self.request("POST", path, token, Some(body), None).await
    }

    /// POST with the token.
    pub async fn post_token(&self, path: &str, body: &str) -> (u16, Value) {
        self.post(path, Some(TOKEN), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None, None, None).await
    }

    /// GET that must answer 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn drain(&self, group: &str, body: &str) -> (u16, Value) {
        self.post(&format!("/api/v1/groups/{group}/drain"), Some(TOKEN), body)
            .await
    }

    pub async fn resume(&self, group: &str) -> (u16, Value) {
        self.post(&format!("/api/v1/groups/{group}/resume"), Some(TOKEN), "")
            .await
    }

    pub async fn group(&self, group: &str) -> Value {
        self.get_ok(&format!("/api/v1/groups/{group}")).await
    }

    pub async fn state(&self, group: &str) -> String {
        self.group(group).await["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Polls the group until its state is `state`; returns its status then.
    pub async fn wait_state(&self, group: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let body = self.group(group).await;
            if body["state"] == state {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "group {group} never became {state}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The audit log of one group.
    pub async fn events(&self, group: &str) -> Vec<Value> {
        self.get_ok(&format!("/api/v1/events?group={group}"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
