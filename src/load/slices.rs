//! A swarm spread over child processes, for more miners than one process may open sockets
//! (20,000 open files a process here; 100,000 miners take six). The parent keeps the embedded
//! pool, so one clock still measures every fan-out: it tells each child when each job was sent
//! (`job <sequence> <unix ns>` on the child's stdin) and the children send their records back
//! as JSON on stdout, which the parent merges.
//!
//! The child is `hashgate load swarm-slice` (hidden): [`run_slice`]. Its stdin lines are
//! `job S NS`, `window` (the measured window starts), `snapshot` (send the record now),
//! `stop-submits`, and `stop` (or the end of stdin: close every miner, send the final record,
//! exit). Its stdout lines are `progress CONNECTED READY CLOSED` every 200 ms and
//! `record {json}` in answer to `snapshot` and `stop`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::swarm::{self, JobClock, Record, SharedRecord, Stops, SwarmPlan};

/// How often a child tells its progress and the parent looks for new jobs to announce.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
const JOB_POLL: Duration = Duration::from_millis(5);

/// Why the child processes could not run the swarm.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// A child could not be started.
    #[error("cannot start the load child {program}: {source}")]
    Spawn {
        /// The program run.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A child ended without sending its record.
    #[error("load child {index} ended without its record (its stderr says why)")]
    Lost {
        /// Which child.
        index: usize,
    },
}

/// The parent's side: the children, the record each last sent, their progress.
pub struct Slices {
    children: Vec<Child>,
    commands: mpsc::UnboundedSender<String>,
    progress: Vec<Arc<Mutex<[u64; 3]>>>,
    records: Vec<mpsc::UnboundedReceiver<Record>>,
}

/// The number of jobs the parent's pool has published so far.
pub type Published = Arc<dyn Fn() -> u64 + Send + Sync>;

impl Slices {
    /// Starts `processes` children of `program` (this binary), each running a contiguous
    /// part of `plan`'s miners at its share of the connect and share rates, and the task that
    /// tells them each job's send instant.
    pub fn start(
        program: &Path,
        plan: &SwarmPlan,
        processes: usize,
        clock: JobClock,
        published: Published,
    ) -> Result<Slices, SliceError> {
        let processes = processes.clamp(1, plan.miners.max(1));
        let per = plan.miners / processes;
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        let mut progress = Vec::new();
        let mut records = Vec::new();
        for index in 0..processes {
            let first = plan.first + index * per;
            let miners = if index + 1 == processes {
                plan.miners - index * per
            } else {
                per
            };
            let mut command = Command::new(program);
            command
                .args(["load", "swarm-slice"])
                .args(["--first", &first.to_string()])
                .args(["--miners", &miners.to_string()])
                .args([
                    "--connect-rate",
                    &(plan.connect_rate / processes as f64).to_string(),
                ])
                .args([
                    "--shares-per-second",
                    &(plan.shares_per_second * miners as f64 / plan.miners.max(1) as f64)
                        .to_string(),
                ])
                .args(["--worker-prefix", &plan.worker_prefix]);
            for target in &plan.targets {
                command.args(["--target", &target.to_string()]);
            }
            if !plan.version_rolling {
                command.arg("--no-version-rolling");
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| SliceError::Spawn {
                    program: program.display().to_string(),
                    source,
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(SliceError::Lost { index });
            };
            stdins.push(stdin);
            let shown = Arc::new(Mutex::new([0u64; 3]));
            let (record_tx, record_rx) = mpsc::unbounded_channel();
            tokio::spawn(read_child(stdout, Arc::clone(&shown), record_tx));
            progress.push(shown);
            records.push(record_rx);
            children.push(child);
        }
        let (commands, command_rx) = mpsc::unbounded_channel();
        tokio::spawn(tell_children(stdins, command_rx, clock, published));
        Ok(Slices {
            children,
            commands,
            progress,
            records,
        })
    }

    /// (connected, ready, closed) over all children, as they last told.
    pub fn progress(&self) -> (u64, u64, u64) {
        self.progress.iter().fold((0, 0, 0), |(c, r, x), shown| {
            let [connected, ready, closed] = *shown.lock().unwrap_or_else(|p| p.into_inner());
            (c + connected, r + ready, x + closed)
        })
    }

    /// The process ids of the children (their CPU is the tool's too).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// Sends a command to every child.
    pub fn tell(&self, command: &str) {
        let _ = self.commands.send(command.to_owned());
    }

    /// Sends `command` (`snapshot` or `stop`) and merges the record each child answers with.
    pub async fn record(&mut self, command: &str) -> Result<Record, SliceError> {
        self.tell(command);
        let mut merged = Record::default();
        for (index, records) in self.records.iter_mut().enumerate() {
            let record = records.recv().await.ok_or(SliceError::Lost { index })?;
            merged.merge(&record);
        }
        Ok(merged)
    }

    /// Waits for every child to exit (after `stop`).
    pub async fn wait(mut self) {
        drop(self.commands);
        for child in &mut self.children {
            let _ = child.wait().await;
        }
    }
}

/// Reads a child's stdout: its progress and its records.
async fn read_child(
    stdout: tokio::process::ChildStdout,
    shown: Arc<Mutex<[u64; 3]>>,
    records: mpsc::UnboundedSender<Record>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(rest) = line.strip_prefix("progress ") {
            let numbers: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if let [connected, ready, closed] = numbers[..] {
                *shown.lock().unwrap_or_else(|p| p.into_inner()) = [connected, ready, closed];
            }
        } else if let Some(json) = line.strip_prefix("record ") {
            match serde_json::from_str::<Record>(json) {
                Ok(record) => {
                    let _ = records.send(record);
                }
                Err(error) => tracing::warn!(%error, "a load child's record is not JSON"),
            }
        }
    }
}

/// Writes to every child's stdin: each job's send instant as soon as the pool published it,
/// then the commands, in order (so a snapshot comes after the jobs sent before it).
async fn tell_children(
    mut stdins: Vec<ChildStdin>,
    mut commands: mpsc::UnboundedReceiver<String>,
    clock: JobClock,
    published: Published,
) {
    let mut next_job = 1;
    let mut poll = tokio::time::interval(JOB_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(command) => Some(command),
                None => return,
            },
            _ = poll.tick() => None,
        };
        let mut text = String::new();
        while next_job <= published() {
            let Some(sent) = clock(next_job) else { break };
            text.push_str(&format!("job {next_job} {sent}\n"));
            next_job += 1;
        }
        if let Some(command) = command {
            text.push_str(&command);
            text.push('\n');
        }
        if text.is_empty() {
            continue;
        }
        for stdin in &mut stdins {
            let _ = stdin.write_all(text.as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

/// The child: runs its slice of the swarm, told the job clock and the phases on stdin.
pub async fn run_slice(plan: SwarmPlan) {
    let sent: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let clock: JobClock = {
        let sent = Arc::clone(&sent);
        Arc::new(move |sequence| {
            sent.lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&sequence)
                .copied()
        })
    };
    let record: SharedRecord = Arc::default();
    let stops = Stops::default();
    let starter = {
        let (record, clock, stops) = (Arc::clone(&record), Arc::clone(&clock), stops.clone());
        tokio::spawn(async move { swarm::start(&plan, &record, &clock, &stops).await })
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        let line = tokio::select! {
            line = stdin.next_line() => line.ok().flatten(),
            _ = tick.tick() => {
                let (c, r, x) = {
                    let r = swarm::lock(&record);
                    (r.connected, r.ready, r.closed)
                };
                say(&format!("progress {c} {r} {x}"));
                continue;
            }
        };
        let Some(line) = line else { break };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("job") => {
                let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
                if let (Some(sequence), Some(ns)) = (number(words.next()), number(words.next())) {
                    sent.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(sequence, ns);
                }
            }
            Some("window") => swarm::lock(&record).restart_window(),
            Some("snapshot") => send_record(&record, &clock),
            Some("stop-submits") => stops.submits.cancel(),
            Some("stop") => break,
            _ => {}
        }
    }
    stops.all.cancel();
    let _ = starter.await;
    send_record(&record, &clock);
}

fn send_record(record: &SharedRecord, clock: &JobClock) {
    let mut copy = swarm::lock(record).clone();
    copy.resolve_unstamped(clock);
    match serde_json::to_string(&copy) {
        Ok(json) => say(&format!("record {json}")),
        Err(error) => tracing::warn!(%error, "the record cannot be written as JSON"),
    }
}

/// One line to the parent (stdout is a pipe it reads all the time).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
