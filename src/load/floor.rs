//! The floor of a fan-out on this machine: one thread doing nothing but `write()` of a
//! 320-byte line to each of N connected loopback sockets, round after round, while the readers
//! (on another core) take each line's kernel receive stamp. No proxy can deliver a job to N
//! miners from one core faster than this; a report states its fan-out as a ratio to the floor
//! measured in the same run.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;

use super::stats::{Latencies, LatencySummary};
use super::swarm::source_ip;
use super::timestamp;
use crate::clock::unix_ns;

/// The length of each line, as a typical `mining.notify`.
pub const LINE: usize = 320;

/// What the floor run does.
#[derive(Debug, Clone)]
pub struct FloorPlan {
    /// Sockets written to.
    pub sockets: usize,
    /// Rounds (one line to every socket each).
    pub rounds: usize,
    /// Between rounds.
    pub interval: Duration,
    /// Pin the writer thread to this core (the proxy's).
    pub writer_cpu: Option<usize>,
}

/// What the floor run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorReport {
    /// Sockets written to.
    pub sockets: usize,
    /// Rounds.
    pub rounds: usize,
    /// Round start to each line's receive stamp.
    pub fan_out: LatencySummary,
    /// The writer's time for one round, per socket (microseconds, median round).
    pub write_us_per_socket: f64,
    /// The slowest round's write time (milliseconds): a fan-out cannot end before its round
    /// was written.
    pub slowest_round_ms: f64,
}

/// Why the floor could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A socket could not be set up (the open-file limit: the floor holds two per socket).
    #[error("floor sockets: {0}")]
    Io(#[from] std::io::Error),
    /// The writer thread failed.
    #[error("the floor's writer thread failed")]
    Writer,
}

/// Runs the floor on the current runtime (the readers); the writer on a thread of its own.
pub async fn run_floor(plan: &FloorPlan) -> Result<FloorReport, FloorError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(plan.sockets);
    let mut writers = Vec::with_capacity(plan.sockets);
    for i in 0..plan.sockets {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source_ip(i), 0))?;
        let (connected, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        let reader = connected?;
        let writer = accepted?.0.into_std()?;
        writer.set_nonblocking(false)?;
        timestamp::enable(&reader)?;
        writer.set_nodelay(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    let (rounds, interval, cpu) = (plan.rounds, plan.interval, plan.writer_cpu);
    let writer = std::thread::spawn(move || write_rounds(writers, rounds, interval, cpu));
    let mut fan_out = Latencies::default();
    let mut tasks = Vec::new();
    for reader in readers {
        tasks.push(tokio::spawn(read_rounds(reader, rounds)));
    }
    for task in tasks {
        if let Ok(latencies) = task.await {
            fan_out.merge(&latencies);
        }
    }
    let mut per_round = writer.join().map_err(|_| FloorError::Writer)??;
    per_round.sort_by(f64::total_cmp);
    let median = per_round.get(per_round.len() / 2).copied().unwrap_or(0.0);
    Ok(FloorReport {
        sockets: plan.sockets,
        rounds: plan.rounds,
        fan_out: fan_out.summary(),
        write_us_per_socket: median / plan.sockets.max(1) as f64,
        slowest_round_ms: per_round.last().copied().unwrap_or(0.0) / 1000.0,
    })
}

/// The writer: a warm-up round, then each round's start (Unix ns) in a 320-byte line to every
/// socket. Returns each measured round's write time (us).
fn write_rounds(
    mut sockets: Vec<TcpStream>,
    rounds: usize,
    interval: Duration,
    cpu: Option<usize>,
) -> std::io::Result<Vec<f64>> {
    if let Some(cpu) = cpu {
        timestamp::pin_to_cpu(cpu)?;
    }
    let mut times = Vec::with_capacity(rounds);
    // Round 0 warms the sockets and caches up and carries no start (0): not measured.
    for round in 0..=rounds {
        std::thread::sleep(interval);
        let start = unix_ns();
        let stamped = if round == 0 { 0 } else { start };
        let mut line = format!("{stamped:020}").into_bytes();
        line.resize(LINE - 1, b' ');
        line.push(b'\n');
        for socket in &mut sockets {
            socket.write_all(&line)?;
        }
        if round > 0 {
            times.push((unix_ns() - start) as f64 / 1000.0);
        }
    }
    Ok(times)
}

/// A reader: every line's receive stamp minus the round start it carries (the warm-up
/// round's line carries none).
async fn read_rounds(reader: tokio::net::TcpStream, rounds: usize) -> Latencies {
    let rounds = rounds + 1;
    let mut latencies = Latencies::default();
    let mut chunk = vec![0u8; LINE * 4];
    let mut pending: Vec<u8> = Vec::new();
    let mut seen = 0;
    while seen < rounds {
        if reader.readable().await.is_err() {
            break;
        }
        match timestamp::try_read(&reader, &mut chunk) {
            Ok((0, _)) => break,
            Ok((n, stamp)) => {
                pending.extend_from_slice(&chunk[..n]);
                while pending.len() >= LINE {
                    let start: Option<u64> = std::str::from_utf8(&pending[..20])
                        .ok()
                        .and_then(|s| s.parse().ok());
                    if let (Some(start @ 1..), Some(stamp)) = (start, stamp) {
                        latencies.record(stamp.saturating_sub(start) / 1000);
                    }
                    pending.drain(..LINE);
                    seen += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    latencies
}
