//! `hashgate verify-share`: one share vector checked by hashgate's verifier and by the plain
//! `bitcoin`-crate reference, side by side.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use hashgate::protocol::Difficulty;
use hashgate::work::{
    DuplicateFilter, JobBook, ShareContext, ShareVector, Threshold, Verdict, check_share, sha256,
};

/// Exit 0 when the share is accepted, 1 when rejected or unreadable.
pub(crate) fn verify_share(file: &Path, difficulty: f64) -> Result<ExitCode> {
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
            println!(
                "verdict:        rejected ({}): {reject}",
                hashgate::downstream::reject_code(&reject)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
