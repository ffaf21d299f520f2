//! A simulated miner that really hashes, over a real TCP connection.
//!
//! It speaks the miner side of Stratum V1 the way firmware does (configurable handshake order and
//! pipelining), keeps its own job list, rolls extranonce2 and nonces, computes real SHA-256d
//! headers with the header midstate, and submits what meets its difficulty. Its hashrate is capped
//! so tests and the demo know what to expect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    Authorize, Configure, ConfigureResult, Id, LineCodec, Message, Method, Request, Submit,
    Subscribe, SubscribeResult,
};
use crate::protocol::{Difficulty, Extranonce1, Extranonce2, Notify, Share};
use crate::work::{HeaderMidstate, Job, JobBook, Threshold, share_merkle_root};

/// How a simulated miner behaves.
#[derive(Debug, Clone)]
pub struct SimMinerConfig {
    /// Where to connect (hashgate's listener).
    pub addr: SocketAddr,
    /// Worker name to authorize.
    pub worker: String,
    /// Hashes per second (really computed).
    pub hashrate: f64,
    /// Ask for version rolling with this mask.
    pub version_rolling: Option<u32>,
    /// Send `mining.extranonce.subscribe`.
    pub extranonce_subscribe: bool,
    /// Send `mining.suggest_difficulty` with this value after subscribe.
    pub suggest_difficulty: Option<f64>,
    /// User agent.
    pub user_agent: String,
    /// Source address of its Stratum connection (each simulated machine has its own, which is
    /// also where its management API listens); the OS picks one when unset.
    pub bind: Option<std::net::IpAddr>,
    /// The machine it runs on: it finds shares only while the device mines (a sleep through
    /// the firmware stops them).
    pub device: Option<Arc<super::device::SimDevice>>,
}

impl SimMinerConfig {
    /// A miner with sensible defaults.
    pub fn new(addr: SocketAddr, worker: impl Into<String>, hashrate: f64) -> Self {
        Self {
            addr,
            worker: worker.into(),
            hashrate,
            version_rolling: Some(0x1fff_e000),
            extranonce_subscribe: true,
            suggest_difficulty: None,
            user_agent: "hashgate-sim/1.0".into(),
            bind: None,
            device: None,
        }
    }
}

/// What a simulated miner saw.
#[derive(Debug, Default)]
pub struct SimMinerStats {
    /// Hashes computed.
    pub hashes: AtomicU64,
    /// Shares submitted.
    pub submitted: AtomicU64,
    /// Shares answered true.
    pub accepted: AtomicU64,
    /// Shares answered with an error.
    pub rejected: AtomicU64,
    /// Jobs received.
    pub jobs: AtomicU64,
    /// set_difficulty received.
    pub difficulty_changes: AtomicU64,
    /// The difficulty in force, as f64 bits.
    difficulty_bits: AtomicU64,
    /// Rejections by error code.
    rejected_codes: std::sync::Mutex<HashMap<i64, u64>>,
}

impl SimMinerStats {
    /// The current share difficulty.
    pub fn difficulty(&self) -> f64 {
        f64::from_bits(self.difficulty_bits.load(Ordering::Relaxed))
    }

    /// Rejections by Stratum error code.
    pub fn rejected_codes(&self) -> HashMap<i64, u64> {
        self.rejected_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why a simulated miner stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimMinerError {
    /// Could not connect.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The proxy closed the connection.
    #[error("connection closed")]
    Closed,
    /// A line did not parse.
    #[error("protocol: {0}")]
    Protocol(String),
}

struct MinerState {
    extranonce1: Option<Extranonce1>,
    extranonce2_size: usize,
    version_mask: u32,
    /// Difficulty announced, applying from the next job.
    pending_difficulty: Difficulty,
    book: JobBook,
    /// The job being hashed and its difficulty.
    current: Option<(Arc<Job>, Threshold)>,
    extranonce2_counter: u64,
    nonce: u32,
    midstate: Option<(HeaderMidstate, Extranonce2)>,
    next_id: u64,
}

/// Runs the miner until `cancel` or the connection ends.
pub async fn run_sim_miner(
    config: SimMinerConfig,
    stats: Arc<SimMinerStats>,
    cancel: CancellationToken,
) -> Result<(), SimMinerError> {
    let stream = match config.bind {
        Some(ip) => {
            let socket = match ip {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .map_err(SimMinerError::Connect)?;
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(SimMinerError::Connect)?;
            socket.connect(config.addr).await
        }
        None => TcpStream::connect(config.addr).await,
    }
    .map_err(SimMinerError::Connect)?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, LineCodec::new(256 * 1024));
    let mut handshake = Vec::new();
    if let Some(mask) = config.version_rolling {
        let mut parameters = serde_json::Map::new();
        parameters.insert("version-rolling.mask".into(), format!("{mask:08x}").into());
        parameters.insert("version-rolling.min-bit-count".into(), 2.into());
        handshake.push(Request {
            id: Id::from(1),
            method: Method::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                parameters,
            }),
        });
    }
    handshake.push(Request {
        id: Id::from(2),
        method: Method::Subscribe(Subscribe {
            user_agent: Some(config.user_agent.clone()),
            session_id: None,
        }),
    });
    if config.extranonce_subscribe {
        handshake.push(Request {
            id: Id::from(3),
            method: Method::ExtranonceSubscribe,
        });
    }
    if let Some(d) = config
        .suggest_difficulty
        .and_then(|d| Difficulty::new(d).ok())
    {
        handshake.push(Request {
            id: Id::from(4),
            method: Method::SuggestDifficulty(d),
        });
    }
    handshake.push(Request {
        id: Id::from(5),
        method: Method::Authorize(Authorize {
            worker: config.worker.clone(),
            password: Some("x".into()),
        }),
    });
    for request in handshake {
        framed
            .feed(request.to_line())
            .await
            .map_err(|_| SimMinerError::Closed)?;
    }
    framed.flush().await.map_err(|_| SimMinerError::Closed)?;

    let mut state = MinerState {
        extranonce1: None,
        extranonce2_size: 0,
        version_mask: 0,
        pending_difficulty: Difficulty::ONE,
        book: JobBook::new(8),
        current: None,
        extranonce2_counter: fastrand::u64(..),
        nonce: 0,
        midstate: None,
        next_id: 100,
    };
    // Hash in slices of 20 ms so the task stays responsive and the rate is paced.
    let slice = Duration::from_millis(20);
    let per_slice = ((config.hashrate * slice.as_secs_f64()).ceil() as u64).max(1);
    let mut pace = tokio::time::interval(slice);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            line = framed.next() => {
                let line = match line {
                    Some(Ok(line)) => line,
                    _ => return Err(SimMinerError::Closed),
                };
                let message = Message::parse(&line).map_err(|e| SimMinerError::Protocol(e.to_string()))?;
                on_message(&mut state, message, &stats);
            }
            _ = pace.tick() => {
                if config.device.as_ref().is_some_and(|d| !d.hashing()) {
                    continue;
                }
                let found = hash_slice(&mut state, per_slice, &stats);
                for (job_id, extranonce2, ntime, nonce, version_bits) in found {
                    let id = state.next_id;
                    state.next_id += 1;
                    let request = Request {
                        id: Id::from(id),
                        method: Method::Submit(Submit {
                            worker: config.worker.clone(),
                            share: Share { job_id, extranonce2, ntime, nonce, version_bits },
                        }),
                    };
                    stats.submitted.fetch_add(1, Ordering::Relaxed);
                    framed.send(request.to_line()).await.map_err(|_| SimMinerError::Closed)?;
                }
            }
        }
    }
}

fn on_message(state: &mut MinerState, message: Message, stats: &SimMinerStats) {
    match message {
        Message::Response(response) => match response.id {
            Id::Number(ref n) if n.as_u64() == Some(1) => {
                state.version_mask = ConfigureResult::from_value(&response.result)
                    .version_rolling
                    .unwrap_or(0);
            }
            Id::Number(ref n) if n.as_u64() == Some(2) => {
                if let Ok(result) = SubscribeResult::from_value(&response.result) {
                    state.extranonce1 = Some(result.extranonce1);
                    state.extranonce2_size = result.extranonce2_size;
                }
            }
            Id::Number(ref n) if n.as_u64().is_some_and(|id| id >= 100) => {
                if response.is_ok() {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let code = response.error.map(|e| e.code).unwrap_or(0);
                    *stats
                        .rejected_codes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(code)
                        .or_insert(0) += 1;
                }
            }
            _ => {}
        },
        Message::Request(request) => match request.method {
            Method::SetDifficulty(d) => {
                state.pending_difficulty = d;
                stats.difficulty_changes.fetch_add(1, Ordering::Relaxed);
            }
            Method::Notify(notify) => start_job(state, notify, stats),
            Method::SetExtranonce(set) => {
                state.extranonce1 = Some(set.extranonce1);
                state.extranonce2_size = set.extranonce2_size;
                state.current = None;
                state.midstate = None;
                state.book = JobBook::new(8);
            }
            Method::SetVersionMask(mask) => state.version_mask = mask,
            _ => {}
        },
    }
}

fn start_job(state: &mut MinerState, notify: Notify, stats: &SimMinerStats) {
    stats.jobs.fetch_add(1, Ordering::Relaxed);
    let job = state.book.push(notify);
    let difficulty = state.pending_difficulty;
    stats
        .difficulty_bits
        .store(difficulty.get().to_bits(), Ordering::Relaxed);
    state.current = Some((job, difficulty.to_threshold()));
    state.midstate = None;
}

type Found = (crate::protocol::JobId, Extranonce2, u32, u32, Option<u32>);

/// Hashes up to `count` nonces of the current job; returns the shares found.
fn hash_slice(state: &mut MinerState, count: u64, stats: &SimMinerStats) -> Vec<Found> {
    let mut found = Vec::new();
    let Some(extranonce1) = state.extranonce1 else {
        return found;
    };
    let Some((job, threshold)) = state.current.clone() else {
        return found;
    };
    let ntime = job.notify().ntime;
    let version_bits = rolled_bits(state.version_mask);
    for _ in 0..count {
        if state.midstate.is_none() || state.nonce == u32::MAX {
            state.extranonce2_counter = state.extranonce2_counter.wrapping_add(1);
            let Some(extranonce2) =
                extranonce2_of(state.extranonce2_counter, state.extranonce2_size)
            else {
                return found;
            };
            let midstate = miner_midstate(&job, &extranonce1, extranonce2, state.version_mask);
            state.midstate = Some((midstate, extranonce2));
            state.nonce = 0;
        }
        let Some((midstate, extranonce2)) = &state.midstate else {
            return found;
        };
        let nonce = state.nonce;
        state.nonce = state.nonce.wrapping_add(1);
        let hash = midstate.hash(ntime, nonce);
        if threshold.is_met_by(&hash) {
            found.push((job.id().clone(), *extranonce2, ntime, nonce, version_bits));
        }
    }
    stats.hashes.fetch_add(count, Ordering::Relaxed);
    found
}

/// The version bits a miner rolls: one fixed pattern inside the granted mask, when rolling is
/// allowed.
pub fn rolled_bits(version_mask: u32) -> Option<u32> {
    (version_mask != 0).then_some(version_mask & 0x0000_6000)
}

/// Extranonce2 number `counter` in `size` bytes (at most 8).
pub fn extranonce2_of(counter: u64, size: usize) -> Option<Extranonce2> {
    Extranonce2::from_bytes(&counter.to_le_bytes()[..size.min(8)]).ok()
}

/// The header midstate a miner hashes nonces over, for `job` with its extranonces and the
/// version bits of [`rolled_bits`]: the coinbase and merkle root are built once per
/// extranonce2.
pub fn miner_midstate(
    job: &Job,
    extranonce1: &Extranonce1,
    extranonce2: Extranonce2,
    version_mask: u32,
) -> HeaderMidstate {
    let version_bits = rolled_bits(version_mask);
    let share = Share {
        job_id: job.id().clone(),
        extranonce2,
        ntime: job.notify().ntime,
        nonce: 0,
        version_bits,
    };
    let root = share_merkle_root(job, extranonce1, &share);
    let version = (job.notify().version & !version_mask) | version_bits.unwrap_or(0);
    HeaderMidstate::for_job(job, &root, version)
}

/// The difficulty at which a miner of `hashrate` finds one share per `interval`.
pub fn difficulty_for(hashrate: f64, interval: Duration) -> f64 {
    hashrate * interval.as_secs_f64() / 4_294_967_296.0
}
