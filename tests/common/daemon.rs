//! The `hashgate` binary as a process: one spawner for every test that runs it, on listeners of
//! port 0 (the daemon binds them and says where in its own log, so no port is taken from under
//! it between a probe and the bind).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WAIT;

/// The binary under test.
pub fn hashgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hashgate"))
}

/// Polls `condition` until it holds or [`WAIT`] passes (for tests without a runtime).
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `hashgate run --config FILE --log-json`.
pub struct Daemon {
    child: Child,
    /// Where it accepts miners.
    pub miners: SocketAddr,
    /// Where its API listens.
    pub api: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts the daemon on `config` and waits until it says it runs (its `hashgate running`
    /// log line names both addresses). Its log is read all along, so it never blocks on a full
    /// pipe.
    pub fn start(config: &Path) -> Daemon {
        let mut child = hashgate()
            .args(["run", "--log-json", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hashgate run starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let mut addresses = None;
        let deadline = Instant::now() + WAIT;
        while addresses.is_none() {
            addresses = log.lock().unwrap().iter().find_map(|line| running_at(line));
            if addresses.is_none() {
                if let Some(exit) = child.try_wait().unwrap() {
                    panic!("hashgate run exited with {exit}: {:?}", log.lock().unwrap());
                }
                assert!(
                    Instant::now() < deadline,
                    "hashgate run did not start: {:?}",
                    log.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let (miners, api) = addresses.expect("loop ends once known");
        Daemon {
            child,
            miners,
            api,
            log,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "hashgate run did not stop on SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses in a JSON `hashgate running` log line.
fn running_at(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let entry: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = entry.get("fields")?;
    if fields.get("message")?.as_str()? != "hashgate running" {
        return None;
    }
    let address = |key: &str| fields.get(key)?.as_str()?.parse().ok();
    Some((address("miners")?, address("api")?))
}
