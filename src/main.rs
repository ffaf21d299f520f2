//! The `hashgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hashgate::work::{
    Difficulty, DuplicateFilter, JobBook, ShareContext, ShareVector, Threshold, Verdict,
    check_share, sha256,
};

/// Stratum V1 proxy for mining farms that hand power between Bitcoin mining and AI workloads.
#[derive(Parser)]
#[command(name = "hashgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::VerifyShare { file, difficulty } => verify_share(&file, difficulty),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("hashgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit 0 when the share is accepted, 1 when rejected or unreadable.
fn verify_share(file: &PathBuf, difficulty: f64) -> Result<ExitCode> {
    let vector = ShareVector::load(file)?;
    let difficulty = Difficulty::new(difficulty).context("--difficulty")?;
    let notify = vector.notify()?;
    let extranonce1 = vector.extranonce1()?;
    let share = vector.share()?;
    let mask = vector.version_mask()?;
    let mut book = JobBook::new(1);
    book.push(notify);
    let share_target = difficulty.to_threshold();
    let context = ShareContext {
        extranonce1: &extranonce1,
        extranonce2_size: vector.extranonce2_size,
        version_mask: mask,
        share_target: &share_target,
        upstream_target: &Threshold::MAX,
    };
    println!("sha256 backend: {}", sha256::backend());
    println!("job:            {}", share.job_id);
    println!("extranonce1:    {extranonce1}");
    println!("extranonce2:    {}", share.extranonce2);
    match check_share(&book, &mut DuplicateFilter::new(), &context, &share) {
        Verdict::Accepted(accepted) => {
            println!("verdict:        accepted at difficulty {difficulty}");
            println!("hash:           {}", accepted.block_hash());
            println!("version:        {:08x}", accepted.version);
            println!("hash difficulty {:.6e}", accepted.hash_difficulty());
            println!("block:          {}", accepted.is_block);
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Rejected(reject) => {
            println!("verdict:        rejected ({}): {reject}", reject.code());
            Ok(ExitCode::FAILURE)
        }
    }
}
