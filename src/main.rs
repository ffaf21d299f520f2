//! The `hashgate` command line.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use cli::client::{group_command, groups, status};
use cli::demo::{DemoOptions, demo};
use cli::load::{LoadCommand, load};
use cli::run::{check_config, run};
use cli::verify::verify_share;

/// Stratum V1 proxy for mining farms that hand power between Bitcoin mining and AI workloads.
#[derive(Parser)]
#[command(name = "hashgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
    },
    /// Check a configuration file and exit (0 when valid).
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// A local pool and simulated miners through the real proxy, in one process.
    Demo(DemoOptions),
    /// The load tool: a swarm of real miners against an endpoint, or the fan-out floor.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Show upstreams, groups and the busiest workers of a running hashgate (read from its API);
    /// with several `--api`s, the instances of a farm side by side, added up.
    Status {
        /// The API's base URL; repeated or comma-separated for several instances.
        #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:9100")]
        api: Vec<String>,
        /// Workers to list (the busiest by 1-minute hashrate).
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// List groups: state, power, and who is still hashing in a drained one (read from the API).
    Groups {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Drain a group: its hooks run, its miners stop mining (through the API).
    Drain {
        /// The group.
        group: String,
        /// pause (keep connections, no new work), disconnect (close and refuse), or reconnect
        /// (send the miners to --reconnect-to).
        #[arg(long, default_value = "pause")]
        mode: String,
        /// Why (shown to miners and hooks, kept in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// host:port for --mode reconnect.
        #[arg(long)]
        reconnect_to: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a drained group: its resuming hooks run, then its miners get work at the ramp.
    Resume {
        /// The group.
        group: String,
        /// Resume even if windows or capacity requests still hold the group.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Check one share against its job with hashgate's verifier and print the verdict.
    ///
    /// FILE is a share vector (JSON: a job's notify fields, the miner's extranonce1/size/mask and
    /// the submit), the format of ../shared/testdata/stratum_job_mainnet_block.json. Use it to
    /// replay a disputed share.
    VerifyShare {
        /// The share vector file.
        file: PathBuf,
        /// The miner's share difficulty to check against.
        #[arg(long, default_value_t = 1.0)]
        difficulty: f64,
    },
}

/// Where a running hashgate's API is, and its token.
#[derive(clap::Args)]
struct ApiArgs {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    api: String,
    /// Bearer token for the API's mutating endpoints.
    #[arg(long, env = "HASHGATE_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_json } => {
            init_logging(log_json, "info");
            runtime().and_then(|rt| rt.block_on(run(&config)))
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Demo(options) => {
            init_logging(false, "warn");
            runtime().and_then(|rt| rt.block_on(demo(options)))
        }
        Command::Load(command) => load(command),
        Command::Status { api, top } => status(&api, top),
        Command::Groups { api } => groups(&api.api),
        Command::Drain {
            group,
            mode,
            reason,
            reconnect_to,
            api,
        } => {
            let body = serde_json::json!({
                "mode": mode,
                "reason": reason,
                "reconnect_to": reconnect_to,
            });
            group_command(&api, &group, "drain", body)
        }
        Command::Resume { group, force, api } => group_command(
            &api,
            &group,
            "resume",
            serde_json::json!({ "force": force }),
        ),
        Command::VerifyShare { file, difficulty } => verify_share(&file, difficulty),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hashgate: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already
/// contains (library errors name their cause in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn init_logging(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
