//! The processes a scenario runs: `hashgate run` in front of the tool's pool, the load tool
//! itself (`hashgate load swarm` and `hashgate load floor`), and the aiostratum-proxy peer. Each
//! is a real process, pinned like the measurements: the proxy on core 0, the tool on 1.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hashgate::load::{FloorReport, LoadReport};

/// The hashgate binary cargo built for this bench.
pub fn hashgate() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hashgate"))
}

/// A loopback port free now (the process that needs it binds it a moment later).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// `command` pinned to `cpu` (through `taskset`, which every Debian has in util-linux).
fn pinned(cpu: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

/// A proxy under test, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Proxy {
    child: Child,
    /// Where its miners connect.
    pub miners: u16,
    /// Its API and /metrics (hashgate only).
    pub api: Option<u16>,
}

impl Proxy {
    /// The proxy's pid, for the tool's /proc readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `hashgate run` on core 0, its upstream the tool's pool at `pool_port`, the miners'
    /// difficulty fixed at the pool's (every share is forwarded).
    pub fn hashgate(dir: &Path, pool_port: u16, difficulty: f64) -> Result<Proxy> {
        let miners = free_port()?;
        let api = free_port()?;
        let config = dir.join("hashgate.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{miners}\"\nmax_miners = 25000\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n[state]\ndir = \"{}\"\n\
                 [difficulty]\ninitial = {difficulty:e}\nmin = {difficulty:e}\nmax = {difficulty:e}\n\
                 [[upstream]]\nname = \"pool\"\nurl = \"stratum+tcp://127.0.0.1:{pool_port}\"\nuser = \"load.proxy\"\n",
                dir.join("state").display()
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let log = std::fs::File::create(dir.join("hashgate.log"))?;
        let child = pinned(0, &hashgate())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start hashgate run")?;
        let proxy = Proxy {
            child,
            miners,
            api: Some(api),
        };
        proxy.wait_listening()?;
        Ok(proxy)
    }

    /// aiostratum-proxy (benches/aiostratum/run.sh from `venv`) on core 0.
    pub fn aiostratum(venv: &Path, dir: &Path, pool_port: u16) -> Result<Proxy> {
        let miners = free_port()?;
        let log = std::fs::File::create(dir.join("aiostratum.log"))?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/aiostratum/run.sh");
        let child = Command::new("taskset")
            .args(["-c", "0", "bash"])
            .arg(script)
            .arg(miners.to_string())
            .arg(format!("127.0.0.1:{pool_port}"))
            .arg("-q")
            .env("VENV", venv)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start aiostratum-proxy")?;
        let proxy = Proxy {
            child,
            miners,
            api: None,
        };
        proxy.wait_listening()?;
        Ok(proxy)
    }

    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.miners)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the proxy did not listen on port {} within 20 s",
                    self.miners
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on a child this process started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One swarm run of the load tool.
pub struct Swarm<'a> {
    /// Where the reports and logs go.
    pub dir: &'a Path,
    /// The run's name (its files).
    pub name: String,
    pub miners: usize,
    pub shares_per_second: f64,
    pub pool_port: u16,
    pub pool_difficulty: f64,
    pub job_interval: &'a str,
    pub duration: &'a str,
    pub warmup: &'a str,
    /// The proxies in between, the miners spread over them in turn (none: straight to the
    /// pool).
    pub proxies: Vec<&'a Proxy>,
    /// Child processes for the swarm (None: as the tool decides from its open-file limit).
    pub processes: Option<usize>,
}

impl Swarm<'_> {
    /// Runs the tool on core 1 and reads its report.
    pub fn run(&self) -> Result<LoadReport> {
        let (command, json, table) = self.command();
        run_tool(command, &json, &table)
    }

    /// Runs the tool on core 1 and, while it runs, `during` (given the tool's process, to
    /// check on it); then reads the report and what `during` returned.
    pub fn run_with<T>(&self, during: impl FnOnce(&mut Child) -> T) -> Result<(LoadReport, T)> {
        let (mut command, json, table) = self.command();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run hashgate load")?;
        let seen = during(&mut child);
        let output = child.wait_with_output().context("hashgate load")?;
        let report = tool_output(output, &json, &table)?;
        Ok((report, seen))
    }

    fn command(&self) -> (Command, PathBuf, PathBuf) {
        let json = self.dir.join(format!("{}.json", self.name));
        let mut command = pinned(1, &hashgate());
        command
            .args(["load", "swarm", "--cpu", "1", "--no-version-rolling"])
            .args(["--miners", &self.miners.to_string()])
            .args(["--connect-rate", "4000"])
            .args(["--shares-per-second", &self.shares_per_second.to_string()])
            .args(["--pool-listen", &format!("127.0.0.1:{}", self.pool_port)])
            .args(["--pool-difficulty", &self.pool_difficulty.to_string()])
            .args(["--job-interval", self.job_interval])
            .args(["--warmup", self.warmup, "--duration", self.duration])
            .arg("--json")
            .arg(&json);
        for proxy in &self.proxies {
            command
                .args(["--target", &format!("127.0.0.1:{}", proxy.miners)])
                .args(["--proxy-pid", &proxy.pid().to_string()]);
        }
        if let Some(processes) = self.processes {
            command.args(["--processes", &processes.to_string()]);
        }
        let table = self.dir.join(format!("{}.txt", self.name));
        (command, json, table)
    }
}

/// The floor: one thread writing a line to each of `sockets` sockets (writer on core 0, readers
/// on core 1).
pub fn floor(dir: &Path, name: &str, sockets: usize, rounds: usize) -> Result<FloorReport> {
    let json = dir.join(format!("{name}.json"));
    let mut command = pinned(1, &hashgate());
    command
        .args(["load", "floor", "--cpu", "1", "--writer-cpu", "0"])
        .args(["--sockets", &sockets.to_string()])
        .args(["--rounds", &rounds.to_string()])
        .arg("--json")
        .arg(&json);
    run_tool(command, &json, &dir.join(format!("{name}.txt")))
}

fn run_tool<T: serde::de::DeserializeOwned>(
    mut command: Command,
    json: &Path,
    table: &Path,
) -> Result<T> {
    let output = command.output().context("cannot run hashgate load")?;
    tool_output(output, json, table)
}

fn tool_output<T: serde::de::DeserializeOwned>(
    output: std::process::Output,
    json: &Path,
    table: &Path,
) -> Result<T> {
    std::fs::write(table, &output.stdout)?;
    if !output.status.success() {
        bail!(
            "hashgate load failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text =
        std::fs::read_to_string(json).with_context(|| format!("no report {}", json.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a report", json.display()))
}

/// The aiostratum-proxy venv, set up by benches/aiostratum/setup.sh (None, with the reason
/// printed, when it cannot be: the peer's rows are then left out).
pub fn aiostratum_venv(dir: &Path) -> Option<PathBuf> {
    let venv = dir.join("aio-venv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/aiostratum/setup.sh");
    match Command::new("bash")
        .arg(script)
        .arg(&venv)
        .stdout(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => Some(venv),
        Ok(output) => {
            eprintln!(
                "scale: aiostratum-proxy could not be set up, its rows are left out: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            None
        }
        Err(error) => {
            eprintln!("scale: aiostratum-proxy could not be set up: {error}");
            None
        }
    }
}
