//! The jobs one miner was sent: under which id, at which difficulty, and the shares it already
//! had accepted on them. A share is checked against exactly what the miner was given.

use std::collections::VecDeque;

use crate::protocol::{Difficulty, JobId};
use crate::work::{DEFAULT_JOB_HISTORY, DuplicateFilter, Threshold};

/// A job as this miner received it: the id it was sent under and the difficulty in force for it.
/// An id the miner was never sent (in this extranonce epoch) is stale. 32 bytes: a miner keeps
/// up to 32 of these, so the share target is derived from the difficulty when a share comes
/// ([`SentJob::threshold`], a few tens of nanoseconds) rather than stored (32 bytes more each).
pub(super) struct SentJob {
    pub id: JobId,
    /// The job's sequence number in its connection's book.
    pub seq: u64,
    pub difficulty: Difficulty,
}

impl SentJob {
    /// The target a share of this job must meet: exactly the difficulty's, as sent.
    pub fn threshold(&self) -> Threshold {
        self.difficulty.to_threshold()
    }
}

/// The miner's jobs, newest last, bounded.
#[derive(Default)]
pub(super) struct JobLedger {
    sent: VecDeque<SentJob>,
    /// Counter for re-sent job ids (`<id>.<n>`): never repeats within the session.
    aliases: u64,
    /// Accepted shares per live job.
    duplicates: DuplicateFilter,
}

impl JobLedger {
    /// Whether the miner was sent the job with this sequence number.
    pub fn has(&self, seq: u64) -> bool {
        self.sent.iter().any(|s| s.seq == seq)
    }

    /// The job the miner knows as `id`.
    pub fn find(&self, id: &JobId) -> Option<&SentJob> {
        self.sent.iter().rev().find(|sent| sent.id == *id)
    }

    /// The last job sent.
    pub fn last(&self) -> Option<&SentJob> {
        self.sent.back()
    }

    /// The newest job (by sequence number) the miner could still submit for.
    pub fn newest_seq(&self) -> Option<u64> {
        self.sent.iter().map(|sent| sent.seq).max()
    }

    /// A fresh id for re-sending `id` at another difficulty, so every id the miner holds
    /// means one difficulty. None when the id would be too long.
    pub fn alias(&mut self, id: &JobId) -> Option<JobId> {
        self.aliases += 1;
        JobId::new(&format!("{id}.{}", self.aliases)).ok()
    }

    /// The miner was sent job `seq` as `id` at `difficulty`.
    pub fn record(&mut self, id: JobId, seq: u64, difficulty: Difficulty) {
        if self.sent.len() >= 2 * DEFAULT_JOB_HISTORY {
            self.sent.pop_front();
        }
        // Grown one job at a time, not doubled: ten live jobs take ten places, not sixteen
        // (one reallocation a job per miner, against 192 bytes a miner for good).
        self.sent.reserve_exact(1);
        self.sent.push_back(SentJob {
            id,
            seq,
            difficulty,
        });
    }

    /// The duplicate filter the verifier records accepted shares in.
    pub fn duplicates(&mut self) -> &mut DuplicateFilter {
        &mut self.duplicates
    }

    /// Forgets the jobs no longer live and their accepted shares (a share on them is stale
    /// either way), so a miner holds what it can still submit for, not its history.
    pub fn retire_before(&mut self, oldest_live_seq: u64) {
        self.duplicates.retire_jobs_before(oldest_live_seq);
        self.sent.retain(|sent| sent.seq >= oldest_live_seq);
        if self.sent.capacity() > 4 * self.sent.len().max(2) {
            self.sent.shrink_to_fit();
        }
    }

    /// A new extranonce: every job and share so far is void for this miner.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.duplicates = DuplicateFilter::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_job_is_32_bytes_and_its_target_is_the_difficultys() {
        // Up to 2 x DEFAULT_JOB_HISTORY of these per miner: what they weigh is per-miner memory.
        assert_eq!(std::mem::size_of::<SentJob>(), 32);
        let difficulty = Difficulty::new(3.725290298461914e-09).unwrap();
        let sent = SentJob {
            id: JobId::new("a").unwrap(),
            seq: 1,
            difficulty,
        };
        assert_eq!(sent.threshold(), difficulty.to_threshold());
    }

    #[test]
    fn history_is_bounded_and_aliases_never_repeat() {
        let mut ledger = JobLedger::default();
        let one = Difficulty::ONE;
        for seq in 0..(3 * DEFAULT_JOB_HISTORY as u64) {
            ledger.record(JobId::new(&format!("{seq:x}")).unwrap(), seq, one);
        }
        assert!(!ledger.has(0), "the oldest fell out");
        assert!(ledger.has(3 * DEFAULT_JOB_HISTORY as u64 - 1));
        let id = JobId::new("a").unwrap();
        let first = ledger.alias(&id).unwrap();
        let second = ledger.alias(&id).unwrap();
        assert_ne!(first, second);
        assert_eq!(first.as_str(), "a.1");
        let newest = 3 * DEFAULT_JOB_HISTORY as u64 - 1;
        ledger.retire_before(newest);
        assert_eq!(ledger.sent.len(), 1, "only the live job is kept");
        assert_eq!(ledger.newest_seq(), Some(newest));
        assert!(ledger.sent.capacity() <= 8, "{}", ledger.sent.capacity());
        ledger.reset();
        assert!(ledger.last().is_none() && ledger.newest_seq().is_none());
    }
}
