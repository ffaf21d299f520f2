//! The swarm: real Stratum V1 miners over TCP against any endpoint. Each connects from one of
//! many 127.0.0.x source addresses (so 100,000 connections do not run out of ephemeral ports),
//! configures, subscribes and authorizes the way firmware does, takes every job it is sent
//! (the kernel's receive stamp of each notify is kept, for the job's fan-out) and submits real
//! shares at its part of the aggregate rate: the header hashed with the midstate until it meets
//! the difficulty it was given.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

use super::stats::Latencies;
use super::timestamp;
use crate::protocol::{
    Authorize, Configure, ConfigureResult, Difficulty, Extranonce1, Id, Message, Method, Request,
    Share, Submit, Subscribe, SubscribeResult,
};
use crate::sim::{extranonce2_of, job_sequence, miner_midstate, rolled_bits};
use crate::work::{Job, JobBook, Threshold};

/// The longest line a load miner accepts before it calls the peer broken.
const MAX_LINE: usize = 64 * 1024;

/// Submits a miner keeps waiting for their reply; past this it submits no more until replies
/// come (a target that stops answering must not grow the tool's memory).
const MAX_PENDING: usize = 1024;

/// Fan-out receipts kept while their job's send instant is not known yet (a child process
/// learns it from its parent a moment after the job): at most this many, 16 bytes each.
const MAX_UNSTAMPED: usize = 1 << 20;

/// Hashes tried for one share before the miner gives up on it (a difficulty far above what a
/// load run sets).
const MAX_GRIND: u64 = 1 << 26;

/// What a swarm does.
#[derive(Debug, Clone)]
pub struct SwarmPlan {
    /// Where the miners connect: miner `i` to `targets[i % targets.len()]` (several proxy
    /// instances share one swarm that way). Must not be empty.
    pub targets: Vec<SocketAddr>,
    /// How many.
    pub miners: usize,
    /// The first miner's index (a child process runs a slice of the swarm).
    pub first: usize,
    /// New connections per second.
    pub connect_rate: f64,
    /// Shares per second over all of this swarm's miners (0: none).
    pub shares_per_second: f64,
    /// Ask for version rolling (`mining.configure`) first, as modern firmware does.
    pub version_rolling: bool,
    /// Worker names are `<prefix>.<index>`.
    pub worker_prefix: String,
}

/// Miner `index`'s source address: 127.0.0.2 to 127.0.0.251, in turn.
pub fn source_ip(index: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (index % 250) as u8])
}

/// When each job was sent by the pool (Unix ns), by its sequence number.
pub type JobClock = Arc<dyn Fn(u64) -> Option<u64> + Send + Sync>;

/// What the miners of one target (one proxy instance) did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetCounts {
    /// Miners authorized and given a job.
    pub ready: u64,
    /// Shares answered true in the window.
    pub accepted: u64,
    /// Fan-out to this target's miners (in the window).
    pub fan_out: Latencies,
}

/// What the swarm saw. Latencies after [`Record::restart_window`] only. A child process sends
/// its record to its parent as JSON, and the parent merges them ([`Record::merge`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// TCP connect time.
    pub connect: Latencies,
    /// Subscribe sent to authorize answered true.
    pub handshake: Latencies,
    /// Submit written to its reply read.
    pub round_trip: Latencies,
    /// Pool send instant to the kernel's receive stamp at the miner, per (miner, job).
    pub fan_out: Latencies,
    /// Miners connected.
    pub connected: u64,
    /// Miners authorized and given a job.
    pub ready: u64,
    /// Miners whose connection ended before the run did.
    pub closed: u64,
    /// Shares submitted, accepted, and rejected by Stratum error code.
    pub submitted: u64,
    /// Shares answered true (in the window).
    pub accepted: u64,
    /// Shares answered true over the whole run (what the pool must have accepted).
    pub accepted_total: u64,
    /// Shares answered false or with an error, by code.
    pub rejected: BTreeMap<i64, u64>,
    /// Notifies received.
    pub notifies: u64,
    /// Notifies of a job this miner had already been sent.
    pub duplicate_notifies: u64,
    /// Receipts per job sequence (for the missing count).
    pub receipts: HashMap<u64, u64>,
    /// Everything else that went wrong, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Per target address.
    pub per_target: BTreeMap<String, TargetCounts>,
    /// (job sequence, receive stamp in Unix ns, target) of notifies whose job's send instant
    /// was not known when they arrived; [`Record::resolve_unstamped`] turns them into fan-out
    /// samples.
    pub unstamped: Vec<(u64, u64, Arc<str>)>,
}

impl Record {
    /// Clears the latencies and counts that describe a window (after the ramp), keeping the
    /// connection counts.
    pub fn restart_window(&mut self) {
        self.round_trip = Latencies::default();
        self.fan_out = Latencies::default();
        self.submitted = 0;
        self.accepted = 0;
        self.rejected.clear();
        self.notifies = 0;
        self.duplicate_notifies = 0;
        self.receipts.clear();
        self.unstamped.clear();
        for counts in self.per_target.values_mut() {
            counts.accepted = 0;
            counts.fan_out = Latencies::default();
        }
    }

    /// Adds another swarm's record (a child process's slice) into this one.
    pub fn merge(&mut self, other: &Record) {
        self.connect.merge(&other.connect);
        self.handshake.merge(&other.handshake);
        self.round_trip.merge(&other.round_trip);
        self.fan_out.merge(&other.fan_out);
        self.connected += other.connected;
        self.ready += other.ready;
        self.closed += other.closed;
        self.submitted += other.submitted;
        self.accepted += other.accepted;
        self.accepted_total += other.accepted_total;
        self.notifies += other.notifies;
        self.duplicate_notifies += other.duplicate_notifies;
        for (code, n) in &other.rejected {
            *self.rejected.entry(*code).or_insert(0) += n;
        }
        for (sequence, n) in &other.receipts {
            *self.receipts.entry(*sequence).or_insert(0) += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_insert(0) += n;
        }
        for (target, counts) in &other.per_target {
            let mine = self.per_target.entry(target.clone()).or_default();
            mine.ready += counts.ready;
            mine.accepted += counts.accepted;
            mine.fan_out.merge(&counts.fan_out);
        }
        self.unstamped.extend_from_slice(&other.unstamped);
    }

    /// Records the fan-out of the receipts kept in [`Record::unstamped`] whose job's send
    /// instant `clock` now knows; keeps the others.
    pub fn resolve_unstamped(&mut self, clock: &JobClock) {
        let unstamped = std::mem::take(&mut self.unstamped);
        for (sequence, stamp, target) in unstamped {
            match clock(sequence) {
                Some(sent) => self.record_fan_out(stamp.saturating_sub(sent) / 1000, &target),
                None => self.unstamped.push((sequence, stamp, target)),
            }
        }
    }

    /// The counts of one target (its address as text), created on first use.
    fn target(&mut self, key: &str) -> &mut TargetCounts {
        if !self.per_target.contains_key(key) {
            self.per_target
                .insert(key.to_owned(), TargetCounts::default());
        }
        self.per_target
            .get_mut(key)
            .expect("the target's counts were inserted above")
    }

    fn record_fan_out(&mut self, micros: u64, target: &str) {
        self.fan_out.record(micros);
        self.target(target).fan_out.record(micros);
    }

    fn fan_out_receipt(&mut self, sequence: u64, stamp: u64, target: &Arc<str>, clock: &JobClock) {
        match clock(sequence) {
            Some(sent) => self.record_fan_out(stamp.saturating_sub(sent) / 1000, target),
            None if self.unstamped.len() < MAX_UNSTAMPED => {
                self.unstamped.push((sequence, stamp, Arc::clone(target)));
            }
            None => self.error("fan-out receipts with no send instant"),
        }
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_insert(0) += 1;
    }
}

/// A swarm's shared record.
pub type SharedRecord = Arc<Mutex<Record>>;

/// Locks the record whatever a panicking holder left (every update is a counter or a sample).
pub fn lock(record: &SharedRecord) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(|p| p.into_inner())
}

/// When the swarm stops: `submits` ends the shares (replies are still read, so every share's
/// fate is known), `all` closes the connections.
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// No more submits.
    pub submits: CancellationToken,
    /// Close everything.
    pub all: CancellationToken,
}

/// Starts the swarm's miners at the plan's connect rate; returns once every miner has been
/// started (they run until `stops.all`).
pub async fn start(plan: &SwarmPlan, record: &SharedRecord, clock: &JobClock, stops: &Stops) {
    let cancel = &stops.all;
    let gap = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let per_miner = if plan.shares_per_second > 0.0 {
        Some(Duration::from_secs_f64(
            plan.miners as f64 / plan.shares_per_second,
        ))
    } else {
        None
    };
    let mut pace = tokio::time::interval(gap);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..plan.miners {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = pace.tick() => {}
        }
        let index = plan.first + n;
        let Some(&target) = plan.targets.get(index % plan.targets.len().max(1)) else {
            return;
        };
        let miner = Miner {
            index,
            target,
            target_key: target.to_string().into(),
            worker: format!("{}.{index}", plan.worker_prefix),
            version_rolling: plan.version_rolling,
            share_interval: per_miner,
        };
        let (record, clock, stops) = (Arc::clone(record), Arc::clone(clock), stops.clone());
        tokio::spawn(async move {
            let outcome = miner.run(&record, &clock, &stops).await;
            if !stops.all.is_cancelled() {
                let mut r = lock(&record);
                r.closed += 1;
                if let Err(kind) = outcome {
                    r.error(kind);
                }
            }
        });
    }
}

/// One load miner.
struct Miner {
    index: usize,
    target: SocketAddr,
    /// `target` as text: its key in [`Record::per_target`].
    target_key: Arc<str>,
    worker: String,
    version_rolling: bool,
    share_interval: Option<Duration>,
}

/// A miner's view of its session.
#[derive(Default)]
struct Session {
    extranonce1: Option<Extranonce1>,
    extranonce2_size: usize,
    version_mask: u32,
    difficulty: Option<Difficulty>,
    book: Option<JobBook>,
    current: Option<(Arc<Job>, Threshold)>,
    extranonce2: u64,
    /// Jobs (pool sequence numbers) seen lately, for duplicate notifies.
    seen: Vec<u64>,
    handshake_sent: Option<Instant>,
    ready: bool,
    submits: HashMap<u64, Instant>,
    next_id: u64,
}

const CONFIGURE: u64 = 1;
const SUBSCRIBE: u64 = 2;
const AUTHORIZE: u64 = 3;
/// Submit ids start here.
const FIRST_SUBMIT: u64 = 100;

impl Miner {
    async fn run(
        self,
        record: &SharedRecord,
        clock: &JobClock,
        stops: &Stops,
    ) -> Result<(), &'static str> {
        let cancel = &stops.all;
        let started = Instant::now();
        let socket = TcpSocket::new_v4().map_err(|_| "socket")?;
        socket
            .bind(SocketAddr::new(source_ip(self.index), 0))
            .map_err(|_| "bind")?;
        let stream = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            stream = socket.connect(self.target) => stream.map_err(|_| "connect")?,
        };
        let _ = stream.set_nodelay(true);
        timestamp::enable(&stream).map_err(|_| "timestamping")?;
        {
            let mut r = lock(record);
            r.connected += 1;
            r.connect.record(started.elapsed().as_micros() as u64);
        }
        let (read, mut write) = stream.into_split();
        let mut session = Session {
            book: Some(JobBook::new(8)),
            next_id: FIRST_SUBMIT,
            ..Session::default()
        };
        let mut hello = Vec::new();
        if self.version_rolling {
            let mut parameters = serde_json::Map::new();
            parameters.insert("version-rolling.mask".into(), "1fffe000".into());
            parameters.insert("version-rolling.min-bit-count".into(), 2.into());
            let configure = Method::Configure(Configure {
                extensions: vec!["version-rolling".into()],
                parameters,
            });
            hello.extend_from_slice(&request(CONFIGURE, configure));
        }
        let subscribe = Method::Subscribe(Subscribe {
            user_agent: Some("hashgate-load/1.0".into()),
            session_id: None,
        });
        hello.extend_from_slice(&request(SUBSCRIBE, subscribe));
        let authorize = Method::Authorize(Authorize {
            worker: self.worker.clone(),
            password: Some("x".into()),
        });
        hello.extend_from_slice(&request(AUTHORIZE, authorize));
        session.handshake_sent = Some(Instant::now());
        write.write_all(&hello).await.map_err(|_| "write")?;

        // The first share at a random phase of the interval, so the rate is smooth.
        let mut next_share = self
            .share_interval
            .map(|every| tokio::time::Instant::now() + every.mul_f64(fastrand::f64()));
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        loop {
            let share_due = async {
                match next_share {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                ready = read.readable() => {
                    ready.map_err(|_| "read")?;
                    let lines = CHUNK.with_borrow_mut(|chunk| read_lines(&read, chunk, &mut buf))?;
                    for (line, stamp) in lines {
                        self.on_line(&line, stamp, &mut session, record, clock)?;
                    }
                }
                _ = share_due => {
                    if stops.submits.is_cancelled() {
                        next_share = None;
                        continue;
                    }
                    if let (Some(at), Some(every)) = (next_share, self.share_interval) {
                        next_share = Some(at + every);
                    }
                    if session.submits.len() >= MAX_PENDING {
                        lock(record).error("submits unanswered");
                        continue;
                    }
                    if let Some(line) = self.share(&mut session) {
                        write.write_all(&line).await.map_err(|_| "write")?;
                        lock(record).submitted += 1;
                    }
                }
            }
        }
    }

    fn on_line(
        &self,
        line: &[u8],
        stamp: Option<u64>,
        session: &mut Session,
        record: &SharedRecord,
        clock: &JobClock,
    ) -> Result<(), &'static str> {
        let message = Message::parse(line).map_err(|_| "unparsable line")?;
        match message {
            Message::Response(response) => {
                let id = match response.id {
                    Id::Number(ref n) => n.as_u64().unwrap_or(0),
                    _ => 0,
                };
                match id {
                    CONFIGURE => {
                        session.version_mask = ConfigureResult::from_value(&response.result)
                            .version_rolling
                            .unwrap_or(0);
                    }
                    SUBSCRIBE => {
                        let result = SubscribeResult::from_value(&response.result)
                            .map_err(|_| "subscribe refused")?;
                        session.extranonce1 = Some(result.extranonce1);
                        session.extranonce2_size = result.extranonce2_size;
                    }
                    AUTHORIZE => {
                        if !response.is_ok() || response.result != serde_json::Value::Bool(true) {
                            return Err("authorize refused");
                        }
                        if let Some(sent) = session.handshake_sent.take() {
                            lock(record)
                                .handshake
                                .record(sent.elapsed().as_micros() as u64);
                        }
                    }
                    id if id >= FIRST_SUBMIT => {
                        let sent = session.submits.remove(&id);
                        let mut r = lock(record);
                        if let Some(sent) = sent {
                            r.round_trip.record(sent.elapsed().as_micros() as u64);
                        }
                        if response.is_ok() && response.result == serde_json::Value::Bool(true) {
                            r.accepted += 1;
                            r.accepted_total += 1;
                            r.target(&self.target_key).accepted += 1;
                        } else {
                            let code = response.error.map_or(0, |e| e.code);
                            *r.rejected.entry(code).or_insert(0) += 1;
                        }
                    }
                    _ => {}
                }
            }
            Message::Request(request) => match request.method {
                Method::SetDifficulty(difficulty) => session.difficulty = Some(difficulty),
                Method::Notify(notify) => {
                    let sequence = job_sequence(&notify);
                    let job = match session.book.as_mut() {
                        Some(book) => book.push(notify),
                        None => return Ok(()),
                    };
                    let threshold = session.difficulty.unwrap_or(Difficulty::ONE).to_threshold();
                    session.current = Some((job, threshold));
                    let first_job = !session.ready;
                    session.ready = true;
                    let mut r = lock(record);
                    if first_job {
                        r.ready += 1;
                        r.target(&self.target_key).ready += 1;
                    }
                    r.notifies += 1;
                    if let Some(sequence) = sequence {
                        if session.seen.contains(&sequence) {
                            r.duplicate_notifies += 1;
                        } else {
                            if session.seen.len() >= 64 {
                                session.seen.remove(0);
                            }
                            session.seen.push(sequence);
                            *r.receipts.entry(sequence).or_insert(0) += 1;
                            if let Some(stamp) = stamp {
                                r.fan_out_receipt(sequence, stamp, &self.target_key, clock);
                            }
                        }
                    }
                }
                Method::SetExtranonce(set) => {
                    session.extranonce1 = Some(set.extranonce1);
                    session.extranonce2_size = set.extranonce2_size;
                    session.current = None;
                    session.book = Some(JobBook::new(8));
                }
                Method::SetVersionMask(mask) => session.version_mask = mask,
                _ => {}
            },
        }
        Ok(())
    }

    /// A submit line for a share of the current job at the current difficulty (`None` before
    /// the first job, or when no share was found within [`MAX_GRIND`] hashes).
    fn share(&self, session: &mut Session) -> Option<Vec<u8>> {
        let extranonce1 = session.extranonce1?;
        let (job, threshold) = session.current.clone()?;
        session.extranonce2 = session.extranonce2.wrapping_add(1);
        let extranonce2 = extranonce2_of(session.extranonce2, session.extranonce2_size)?;
        let ntime = job.notify().ntime;
        let midstate = miner_midstate(&job, &extranonce1, extranonce2, session.version_mask);
        let nonce = (0..MAX_GRIND.min(u64::from(u32::MAX)) as u32)
            .find(|&nonce| threshold.is_met_by(&midstate.hash(ntime, nonce)))?;
        let share = Share {
            job_id: job.id().clone(),
            extranonce2,
            ntime,
            nonce,
            version_bits: rolled_bits(session.version_mask),
        };
        let id = session.next_id;
        session.next_id += 1;
        session.submits.insert(id, Instant::now());
        let submit = Method::Submit(Submit {
            worker: self.worker.clone(),
            share,
        });
        Some(request(id, submit))
    }
}

fn request(id: u64, method: Method) -> Vec<u8> {
    Request {
        id: Id::from(id),
        method,
    }
    .to_line()
    .to_vec()
}

thread_local! {
    /// The read buffer, one per thread rather than one per miner: a read is done before the
    /// next miner's begins (100,000 miners with 16 KiB each would be 1.6 GB).
    static CHUNK: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 16 * 1024]);
}

/// A line and the kernel's receive stamp of the read that completed it (Unix ns).
type StampedLine = (Vec<u8>, Option<u64>);

/// Reads what the socket holds; the complete lines, each with the receive stamp of the read
/// that completed it. `buf` keeps a partial line for the next read.
fn read_lines(
    read: &OwnedReadHalf,
    chunk: &mut [u8],
    buf: &mut Vec<u8>,
) -> Result<Vec<StampedLine>, &'static str> {
    let mut lines = Vec::new();
    loop {
        match timestamp::try_read(read.as_ref(), chunk) {
            Ok((0, _)) => return Err("closed by peer"),
            Ok((n, stamp)) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = memchr::memchr(b'\n', buf) {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let line = line.strip_suffix(b"\n").unwrap_or(&line).to_vec();
                    if !line.is_empty() {
                        lines.push((line, stamp));
                    }
                }
                if buf.len() > MAX_LINE {
                    return Err("line too long");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(lines),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_two_slices_merge_and_late_stamps_resolve_once_the_clock_knows() {
        let sent: JobClock = Arc::new(|sequence| (sequence == 7).then_some(1_000_000_000));
        let mut a = Record {
            ready: 3,
            ..Record::default()
        };
        a.target("127.0.0.1:1").ready = 3;
        a.fan_out_receipt(7, 1_002_000_000, &Arc::from("127.0.0.1:1"), &sent);
        a.fan_out_receipt(8, 1_500_000_000, &Arc::from("127.0.0.1:1"), &sent);
        *a.receipts.entry(7).or_insert(0) += 1;
        assert_eq!(a.fan_out.len(), 1);
        assert_eq!(
            a.unstamped.len(),
            1,
            "job 8's send instant is not known yet"
        );

        // Through JSON, as a child sends it.
        let b: Record = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut merged = Record::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.ready, 6);
        assert_eq!(merged.receipts.get(&7), Some(&2));
        assert_eq!(merged.per_target["127.0.0.1:1"].ready, 6);
        assert_eq!(merged.fan_out.len(), 2);
        assert_eq!(merged.unstamped.len(), 2);

        let later: JobClock = Arc::new(|sequence| {
            let _ = sequence;
            Some(1_000_000_000)
        });
        merged.resolve_unstamped(&later);
        assert!(merged.unstamped.is_empty());
        let fan_out = merged.fan_out.summary();
        assert_eq!(fan_out.count, 4);
        assert!((fan_out.max_ms - 500.0).abs() < 1.0, "{fan_out:?}");
        assert_eq!(merged.per_target["127.0.0.1:1"].fan_out.len(), 4);
    }
}
