//! `hashgate run` and `hashgate check-config`: the daemon and its stop signals.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use hashgate::config::Config;
use hashgate::proxy::Proxy;

pub(crate) async fn run(path: &Path) -> Result<ExitCode> {
    let config = Config::load(path)?;
    // Signal handlers first: a SIGTERM that arrives while the proxy starts must stop it
    // gracefully, not kill it.
    let mut signals = StopSignal::install()?;
    let proxy = Proxy::start(config).await?;
    tracing::info!(miners = %proxy.miner_addr, api = %proxy.api_addr, "hashgate running");
    match signals.next().await {
        Stop::Graceful => {
            tracing::info!(
                "SIGTERM: no new miners, sessions end, then in-flight upstream submits are answered (a second signal exits at once)"
            );
            tokio::select! {
                () = proxy.shutdown() => {}
                _ = signals.next() => {
                    tracing::warn!("second signal: exiting without waiting");
                    return Ok(ExitCode::from(130));
                }
            }
        }
        Stop::Fast => {
            tracing::info!("SIGINT: stopping at once");
            proxy.abort().await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How the operator asked hashgate to stop (pingora's split: SIGTERM graceful, SIGINT fast).
enum Stop {
    Graceful,
    Fast,
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct StopSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next stop signal.
    async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => Stop::Graceful,
                _ = self.interrupt.recv() => Stop::Fast,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Fast
        }
    }
}

pub(crate) fn check_config(path: &Path) -> Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: ok ({} upstream(s), {} group(s), {} hook(s), {} window(s), miners on {}, api on {}, state in {})",
                path.display(),
                config.upstreams.len(),
                config.groups.len(),
                config.hooks.len(),
                config.windows.len(),
                config.server.listen,
                config.api.listen,
                config.state.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{error}");
            Ok(ExitCode::FAILURE)
        }
    }
}
