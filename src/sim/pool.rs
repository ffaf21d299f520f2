//! A real Stratum pool on TCP for demos, tests and benches.
//!
//! It speaks the pool side of Stratum V1, hands out jobs built like a real pool's (a coinbase
//! with the extranonces inside its scriptSig, a merkle branch, a previous block hash), and grades
//! every submit with the plain `bitcoin`-crate reference ([`crate::work::reference`]), never with
//! the proxy's verifier, so a test through hashgate checks hashgate against an independent
//! implementation. Operators of a test can kill it, restart jobs, change an extranonce or ask its
//! clients to reconnect.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protocol::{
    ConfigureResult, Id, LineCodec, Message, Method, Request, Response, SetExtranonce,
    SubscribeResult, code, notify_line,
};
use crate::protocol::{Difficulty, Extranonce1, JobId, Notify, PrevHash, Share};
use crate::work::{Reject, network_target, reference};

/// How the simulated pool behaves.
#[derive(Debug, Clone)]
pub struct SimPoolConfig {
    /// Address to listen on (`127.0.0.1:0` for a free port).
    pub listen: SocketAddr,
    /// extranonce2_size given to clients.
    pub extranonce2_size: usize,
    /// Share difficulty sent to clients.
    pub difficulty: f64,
    /// Version-rolling mask granted (None: refuse version rolling).
    pub version_mask: Option<u32>,
    /// A new job this often (clean every `clean_every` jobs).
    pub job_interval: Duration,
    /// Every n-th job is a new block (`clean_jobs = true`).
    pub clean_every: u64,
    /// nbits of the jobs (network target).
    pub nbits: u32,
}

impl Default for SimPoolConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            extranonce2_size: 8,
            difficulty: 0.001,
            version_mask: Some(0x1fff_e000),
            job_interval: Duration::from_secs(5),
            clean_every: 6,
            nbits: 0x1d00_ffff,
        }
    }
}

/// What the pool saw, for assertions and the demo summary.
#[derive(Debug, Default)]
pub struct SimPoolStats {
    /// Connections accepted over the pool's life.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Shares accepted.
    pub accepted: AtomicU64,
    /// Shares rejected (any reason).
    pub rejected: AtomicU64,
    /// Rejections as duplicate.
    pub duplicates: AtomicU64,
    /// Rejections for low difficulty.
    pub low_difficulty: AtomicU64,
    /// Rejections for unknown job.
    pub stale: AtomicU64,
    /// Rejections as malformed.
    pub invalid: AtomicU64,
    /// Accepted shares that met the network target.
    pub blocks: AtomicU64,
    /// Authorized worker names, with accepted share counts.
    workers: Mutex<HashMap<String, u64>>,
    /// When each job was published to the connections (Unix ns), by sequence number - 1.
    published: Mutex<Vec<u64>>,
}

/// Jobs whose publication time is kept (a job every 100 ms for 27 hours).
const MAX_PUBLISHED: usize = 1_000_000;

/// The coinbase output value of job 0; job `n` pays `n` satoshi more, so the job's sequence
/// number can be read back from `coinb2` after any proxy renamed the job.
const BASE_VALUE: u64 = 312_500_000;

/// The pool's sequence number of a job (1, 2, ...), read from its `coinb2` (a proxy renames
/// job ids but passes the coinbase through): what the load tool matches a notify to the
/// pool's send instant with.
pub fn job_sequence(notify: &Notify) -> Option<u64> {
    let value: [u8; 8] = notify.coinb2.get(5..13)?.try_into().ok()?;
    u64::from_le_bytes(value).checked_sub(BASE_VALUE)
}

impl SimPoolStats {
    /// When job `sequence` was published to the pool's connections (Unix ns).
    pub fn job_sent_ns(&self, sequence: u64) -> Option<u64> {
        let index = usize::try_from(sequence.checked_sub(1)?).ok()?;
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        published.get(index).copied()
    }

    /// Jobs published so far.
    pub fn jobs_published(&self) -> u64 {
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        published.len() as u64
    }

    /// Accepted shares per submitting worker name.
    pub fn accepted_by_worker(&self) -> HashMap<String, u64> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Things a test can make the pool do to every client.
#[derive(Debug, Clone)]
pub enum SimPoolCommand {
    /// Send `mining.set_extranonce` with a fresh extranonce1 and this extranonce2 size.
    SetExtranonce {
        /// The new size.
        extranonce2_size: usize,
    },
    /// Send `client.reconnect` with these params.
    Reconnect {
        /// Host.
        host: Option<String>,
        /// Port.
        port: Option<u16>,
    },
    /// Send a new difficulty.
    SetDifficulty(f64),
    /// Send `client.show_message`.
    ShowMessage(String),
}

/// A running simulated pool.
pub struct SimPool {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// What it saw.
    pub stats: Arc<SimPoolStats>,
    commands: broadcast::Sender<SimPoolCommand>,
    cancel: CancellationToken,
}

impl SimPool {
    /// Binds and starts serving.
    pub async fn start(config: SimPoolConfig) -> std::io::Result<SimPool> {
        let listener = TcpListener::bind(config.listen).await?;
        SimPool::start_on(listener, config)
    }

    /// Starts serving on `listener` (`config.listen` is not used): for a pool that appears on
    /// an address reserved before, such as a port a test holds bound while nothing listens.
    pub fn start_on(listener: TcpListener, config: SimPoolConfig) -> std::io::Result<SimPool> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(SimPoolStats::default());
        let (commands, _) = broadcast::channel(16);
        let cancel = CancellationToken::new();
        let (jobs_tx, jobs_rx) = watch::channel(None);
        tokio::spawn(make_jobs(
            config.clone(),
            Arc::clone(&stats),
            jobs_tx,
            cancel.clone(),
        ));
        tokio::spawn(accept(
            listener,
            config,
            Arc::clone(&stats),
            commands.clone(),
            jobs_rx,
            cancel.clone(),
        ));
        Ok(SimPool {
            addr,
            stats,
            commands,
            cancel,
        })
    }

    /// Sends a command to every connected client.
    pub fn command(&self, command: SimPoolCommand) {
        let _ = self.commands.send(command);
    }

    /// Stops listening and closes every connection (a pool going down).
    pub fn kill(&self) {
        self.cancel.cancel();
    }

    /// `stratum+tcp://` url of the pool.
    pub fn url(&self) -> String {
        format!("stratum+tcp://{}", self.addr)
    }
}

impl Drop for SimPool {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A job template shared by every connection (each connection's extranonce1 differs).
#[derive(Debug, Clone)]
struct Template {
    notify: Notify,
}

async fn make_jobs(
    config: SimPoolConfig,
    stats: Arc<SimPoolStats>,
    jobs: watch::Sender<Option<Arc<Template>>>,
    cancel: CancellationToken,
) {
    let mut rng = fastrand::Rng::new();
    let mut prevhash = [0u8; 32];
    let mut height: u32 = 900_000;
    let mut counter: u64 = 0;
    let mut tick = tokio::time::interval(config.job_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let clean = counter.is_multiple_of(config.clean_every.max(1));
        if clean {
            rng.fill(&mut prevhash);
            height += 1;
        }
        counter += 1;
        // coinb1: version, one input spending nothing, scriptSig length, BIP34 height push and a
        // tag; then the extranonces; coinb2: sequence, one output, locktime.
        let mut coinb1 = Vec::new();
        coinb1.extend_from_slice(&2u32.to_le_bytes());
        coinb1.push(1);
        coinb1.extend_from_slice(&[0u8; 32]);
        coinb1.extend_from_slice(&u32::MAX.to_le_bytes());
        let tag = b"/hashgate-sim/";
        let script_len = 4 + tag.len() + 4 + config.extranonce2_size;
        coinb1.push(script_len as u8);
        coinb1.push(3);
        coinb1.extend_from_slice(&height.to_le_bytes()[..3]);
        coinb1.extend_from_slice(tag);
        let mut coinb2 = Vec::new();
        coinb2.extend_from_slice(&u32::MAX.to_le_bytes());
        coinb2.push(1);
        coinb2.extend_from_slice(&(BASE_VALUE + counter).to_le_bytes());
        coinb2.push(22);
        coinb2.extend_from_slice(&[0x00, 0x14]);
        let mut program = [0u8; 20];
        rng.fill(&mut program);
        coinb2.extend_from_slice(&program);
        coinb2.extend_from_slice(&0u32.to_le_bytes());
        let branch: Vec<[u8; 32]> = (0..rng.usize(0..6))
            .map(|_| {
                let mut h = [0u8; 32];
                rng.fill(&mut h);
                h
            })
            .collect();
        let ntime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1_700_000_000);
        let notify = Notify {
            job_id: JobId::new(&format!("{counter:x}")).expect("short hex id"),
            prevhash: PrevHash::from_block_hash(bitcoin::BlockHash::from_byte_array(prevhash)),
            coinb1,
            coinb2,
            merkle_branch: branch,
            version: 0x2000_0000,
            nbits: config.nbits,
            ntime,
            clean_jobs: clean,
        };
        {
            let mut published = stats.published.lock().unwrap_or_else(|p| p.into_inner());
            if published.len() < MAX_PUBLISHED {
                published.push(crate::clock::unix_ns());
            }
        }
        jobs.send_replace(Some(Arc::new(Template { notify })));
    }
}

async fn accept(
    listener: TcpListener,
    config: SimPoolConfig,
    stats: Arc<SimPoolStats>,
    commands: broadcast::Sender<SimPoolCommand>,
    jobs: watch::Receiver<Option<Arc<Template>>>,
    cancel: CancellationToken,
) {
    let next_extranonce = Arc::new(AtomicU32::new(0x1000_0000 | fastrand::u32(..0x00ff_ffff)));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_client(
            stream,
            config.clone(),
            Arc::clone(&stats),
            commands.subscribe(),
            jobs.clone(),
            Arc::clone(&next_extranonce),
            cancel.clone(),
        ));
    }
}

struct Client {
    config: SimPoolConfig,
    stats: Arc<SimPoolStats>,
    extranonce1: Extranonce1,
    extranonce2_size: usize,
    version_mask: u32,
    difficulty: f64,
    authorized: bool,
    subscribed: bool,
    /// Jobs sent to this client, by id (cleared on clean jobs and on extranonce changes).
    jobs: HashMap<String, Arc<Template>>,
    seen: HashSet<[u8; 32]>,
}

async fn serve_client(
    stream: TcpStream,
    config: SimPoolConfig,
    stats: Arc<SimPoolStats>,
    mut commands: broadcast::Receiver<SimPoolCommand>,
    mut jobs: watch::Receiver<Option<Arc<Template>>>,
    next_extranonce: Arc<AtomicU32>,
    cancel: CancellationToken,
) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    let mut framed = Framed::new(stream, LineCodec::new(64 * 1024));
    let extranonce1 = fresh_extranonce(&next_extranonce);
    let mut client = Client {
        extranonce2_size: config.extranonce2_size,
        difficulty: config.difficulty,
        version_mask: 0,
        config,
        stats: Arc::clone(&stats),
        extranonce1,
        authorized: false,
        subscribed: false,
        jobs: HashMap::new(),
        seen: HashSet::new(),
    };
    loop {
        let mut out = Vec::new();
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = jobs.changed(), if client.subscribed => {
                if changed.is_err() { break }
                let template = jobs.borrow_and_update().clone();
                if let Some(template) = template {
                    client.send_job(&template, false, &mut out);
                }
            }
            command = commands.recv() => match command {
                Ok(command) => client.on_command(command, &next_extranonce, &jobs, &mut out),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            line = framed.next() => {
                let Some(Ok(line)) = line else { break };
                match Message::parse(&line) {
                    Ok(Message::Request(request)) => client.on_request(request, &jobs, &mut out),
                    Ok(Message::Response(_)) => {}
                    Err(error) => {
                        debug!(%error, "sim pool: bad line");
                        out.push(Response::error(Id::Null, code::OTHER, error.to_string()).to_line());
                    }
                }
            }
        }
        for line in out {
            if framed.feed(line).await.is_err() {
                break;
            }
        }
        if framed.flush().await.is_err() {
            break;
        }
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

fn fresh_extranonce(next: &AtomicU32) -> Extranonce1 {
    let value = next.fetch_add(1, Ordering::Relaxed);
    Extranonce1::from_bytes(&value.to_be_bytes()).expect("4 bytes fit")
}

impl Client {
    fn on_request(
        &mut self,
        request: Request,
        jobs: &watch::Receiver<Option<Arc<Template>>>,
        out: &mut Vec<bytes::Bytes>,
    ) {
        let id = request.id;
        match request.method {
            Method::Configure(configure) => {
                let granted = match (configure.version_rolling_mask(), self.config.version_mask) {
                    (Some(asked), Some(offered)) => Some(asked & offered),
                    _ => None,
                };
                self.version_mask = granted.unwrap_or(0);
                let result = ConfigureResult {
                    version_rolling: granted,
                    extensions: Vec::new(),
                };
                out.push(Response::ok(id, result.to_value()).to_line());
            }
            Method::Subscribe(_) => {
                self.subscribed = true;
                let result = SubscribeResult {
                    subscription_id: format!("{}", self.extranonce1),
                    extranonce1: self.extranonce1,
                    extranonce2_size: self.extranonce2_size,
                };
                out.push(Response::ok(id, result.to_value()).to_line());
                self.send_difficulty(out);
                if let Some(template) = jobs.borrow().clone() {
                    self.send_job(&template, true, out);
                }
            }
            Method::Authorize(authorize) => {
                self.authorized = true;
                self.stats
                    .workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(authorize.worker)
                    .or_insert(0);
                out.push(Response::ok(id, true.into()).to_line());
            }
            Method::ExtranonceSubscribe => out.push(Response::ok(id, true.into()).to_line()),
            Method::SuggestDifficulty(_) => out.push(Response::ok(id, true.into()).to_line()),
            Method::Submit(submit) => {
                let verdict = self.grade(&submit.share);
                let stats = &self.stats;
                match verdict {
                    Ok(is_block) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        if is_block {
                            stats.blocks.fetch_add(1, Ordering::Relaxed);
                        }
                        *stats
                            .workers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(submit.worker)
                            .or_insert(0) += 1;
                        out.push(Response::ok(id, true.into()).to_line());
                    }
                    Err(reject) => {
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        let counter = match reject {
                            Reject::Duplicate => &stats.duplicates,
                            Reject::LowDifficulty => &stats.low_difficulty,
                            Reject::Stale => &stats.stale,
                            _ => &stats.invalid,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        out.push(crate::downstream::reject_response(id, &reject).to_line());
                    }
                }
            }
            other => out.push(
                Response::error(id, code::OTHER, format!("unsupported {}", other.name())).to_line(),
            ),
        }
    }

    /// Grades a share with the `bitcoin`-crate reference. Ok(true) for a block.
    fn grade(&mut self, share: &Share) -> Result<bool, Reject> {
        if !self.authorized {
            return Err(Reject::Unauthorized);
        }
        let template = self.jobs.get(share.job_id.as_str()).ok_or(Reject::Stale)?;
        let notify = &template.notify;
        if share.extranonce2.len() != self.extranonce2_size {
            return Err(Reject::Invalid(
                crate::work::InvalidShare::Extranonce2Size {
                    expected: self.extranonce2_size,
                    got: share.extranonce2.len(),
                },
            ));
        }
        let bits = share.version_bits.unwrap_or(0);
        if bits & !self.version_mask != 0 {
            return Err(Reject::Invalid(
                crate::work::InvalidShare::VersionBitsOutsideMask {
                    bits,
                    mask: self.version_mask,
                },
            ));
        }
        let hash = reference::share_hash(notify, &self.extranonce1, share, self.version_mask);
        let target = Difficulty::new(self.difficulty)
            .map_err(|_| Reject::LowDifficulty)?
            .to_target();
        if !target.is_met_by(hash) {
            return Err(Reject::LowDifficulty);
        }
        if !self.seen.insert(hash.to_byte_array()) {
            return Err(Reject::Duplicate);
        }
        Ok(network_target(notify.nbits).is_met_by(hash))
    }

    fn send_difficulty(&self, out: &mut Vec<bytes::Bytes>) {
        if let Ok(d) = Difficulty::new(self.difficulty) {
            out.push(Request::notification(Method::SetDifficulty(d)).to_line());
        }
    }

    fn send_job(
        &mut self,
        template: &Arc<Template>,
        force_clean: bool,
        out: &mut Vec<bytes::Bytes>,
    ) {
        let clean = force_clean || template.notify.clean_jobs;
        // The jobs watch can report a template this client already got at subscribe: a real
        // pool does not send the same job twice.
        let already_sent = self
            .jobs
            .get(template.notify.job_id.as_str())
            .is_some_and(|sent| Arc::ptr_eq(sent, template));
        if already_sent && !force_clean {
            return;
        }
        if clean {
            self.jobs.clear();
            self.seen.clear();
        }
        self.jobs.insert(
            template.notify.job_id.as_str().to_owned(),
            Arc::clone(template),
        );
        if force_clean && !template.notify.clean_jobs {
            let mut notify = template.notify.clone();
            notify.clean_jobs = true;
            out.push(notify_line(&notify));
        } else {
            out.push(notify_line(&template.notify));
        }
    }

    fn on_command(
        &mut self,
        command: SimPoolCommand,
        next_extranonce: &AtomicU32,
        jobs: &watch::Receiver<Option<Arc<Template>>>,
        out: &mut Vec<bytes::Bytes>,
    ) {
        if !self.subscribed {
            return;
        }
        match command {
            SimPoolCommand::SetExtranonce { extranonce2_size } => {
                self.extranonce1 = fresh_extranonce(next_extranonce);
                self.extranonce2_size = extranonce2_size;
                out.push(
                    Request::notification(Method::SetExtranonce(SetExtranonce {
                        extranonce1: self.extranonce1,
                        extranonce2_size,
                    }))
                    .to_line(),
                );
                if let Some(template) = jobs.borrow().clone() {
                    self.send_job(&template, true, out);
                }
            }
            SimPoolCommand::Reconnect { host, port } => out.push(
                Request::notification(Method::Reconnect(crate::protocol::Reconnect {
                    host,
                    port,
                    wait_seconds: None,
                }))
                .to_line(),
            ),
            SimPoolCommand::SetDifficulty(d) => {
                self.difficulty = d;
                self.send_difficulty(out);
            }
            SimPoolCommand::ShowMessage(text) => {
                out.push(Request::notification(Method::ShowMessage(text)).to_line())
            }
        }
    }
}
