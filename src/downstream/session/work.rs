//! Work to the miner and its shares back: the binding on a slot's work, the jobs and difficulty
//! it is sent, and each submit verified, answered and forwarded.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::binding::Binding;
use super::{Ending, Session};
use crate::downstream::reject::reject_response;
use crate::protocol::{
    Id, Method, Reconnect, SetExtranonce, Submit, SubscribeResult, accepted_line, notify_line,
    notify_line_renamed,
};
use crate::router::WorkState;
use crate::work::{ForwardShare, Reject, ShareContext, Verdict, check_share_for_job};

/// One share in this many is timed for `hashgate_share_verify_seconds`.
pub(super) const VERIFY_SAMPLE: u32 = 64;

impl Session {
    pub(super) fn answer_subscribe(&mut self, id: Id) -> Result<(), Ending> {
        let Some(binding) = &self.link.binding else {
            return Ok(());
        };
        let result = SubscribeResult {
            subscription_id: format!("{:016x}", self.id),
            extranonce1: binding.extranonce1,
            extranonce2_size: binding.work.split.miner_size,
        };
        self.reply(id, result.to_value())
    }

    /// Takes an extranonce prefix on the first slot with room. Ok(false): no pool is ready yet,
    /// or every slot is full and another one was asked for (`link.wants_slot`, served by the
    /// dispatcher); the session watches a slot and retries when it changes.
    pub(super) fn try_bind(&mut self) -> Result<bool, Ending> {
        let slots = self.context.router.slots();
        let mut any_ready = false;
        for rx in &slots {
            let Some(work) = rx.borrow().clone() else {
                continue;
            };
            any_ready = true;
            if let Some(binding) = Binding::allocate(&work) {
                self.link.binding = Some(binding);
                let mut rx = rx.clone();
                rx.mark_unchanged();
                self.link.rx = Some(rx);
                self.apply_version_mask(work.version_mask)?;
                return Ok(true);
            }
        }
        if !any_ready {
            self.link.rx = slots.first().cloned();
        } else {
            // Every prefix of every slot is taken: open another connection to the pools.
            self.link.wants_slot = true;
        }
        Ok(false)
    }

    /// Opens another connection to the pools (every prefix was taken) and watches it.
    pub(super) async fn add_slot(&mut self) -> Result<(), Ending> {
        match self.context.router.add_slot().await {
            Some(rx) => {
                self.link.rx = Some(rx);
                Ok(())
            }
            None => {
                self.context.metrics.miners.extranonce_exhausted.inc();
                Err(Ending::NoExtranonce)
            }
        }
    }

    /// Gives the miner's prefix back (quarantined while its jobs are live).
    pub(super) fn release_extranonce(&mut self) {
        if let Some(binding) = self.link.binding.take() {
            binding.release(self.jobs.newest_seq(), self.link.latest());
        }
    }

    /// The work the miner is bound to, else the first slot's.
    pub(super) fn current_work(&self) -> Option<Arc<WorkState>> {
        self.link.current(|| {
            self.context
                .router
                .slots()
                .first()
                .and_then(|rx| rx.borrow().clone())
        })
    }

    /// Sends the first work once the miner is both subscribed and authorized.
    pub(super) fn start_work(&mut self) -> Result<(), Ending> {
        if self.link.started || self.link.binding.is_none() || self.member.workers.is_empty() {
            return Ok(());
        }
        self.link.started = true;
        self.send_job(true)
    }

    /// Sends set_difficulty (if it changed) then the newest job. The shared serialization goes
    /// out unless this miner already has the job at another difficulty: then the job is re-sent
    /// under an id of its own (`<id>.<n>`), so every id the miner holds means one difficulty.
    pub(super) fn send_job(&mut self, clean: bool) -> Result<(), Ending> {
        if self.member.paused {
            return Ok(());
        }
        let Some(work) = self.link.binding.as_ref().map(|b| Arc::clone(&b.work)) else {
            return Ok(());
        };
        let (Some(published), Some(job)) = (&work.job, work.book.latest()) else {
            return Ok(());
        };
        if let Some(difficulty) = self.difficulty.to_announce(work.difficulty) {
            self.notify(Method::SetDifficulty(difficulty))?;
            self.difficulty.announced(difficulty);
            let upstream = Arc::clone(&work.upstream);
            self.update_stats(|s| {
                s.difficulty = difficulty.get();
                s.upstream = Some(upstream);
            });
        }
        let difficulty = self.difficulty.effective(work.difficulty);
        let (id, line) = if !self.jobs.has(published.seq) {
            let line = if clean {
                published.clean_line.clone()
            } else {
                published.line.clone()
            };
            (job.id().clone(), line)
        } else {
            let id = self
                .jobs
                .alias(job.id())
                .ok_or_else(|| Ending::Io("job id too long to alias".into()))?;
            let line =
                notify_line_renamed(&published.line, job.id(), &id, clean).unwrap_or_else(|| {
                    let mut notify = job.notify().clone();
                    notify.job_id = id.clone();
                    notify.clean_jobs = clean;
                    notify_line(&notify)
                });
            (id, line)
        };
        self.jobs.record(id, published.seq, difficulty);
        self.send(line)?;
        self.context
            .metrics
            .miners
            .job_broadcast_seconds
            .observe(published.received.elapsed().as_secs_f64());
        Ok(())
    }

    fn resend_if_difficulty_changed(&mut self) -> Result<(), Ending> {
        let Some(work) = self.link.binding.as_ref().map(|b| Arc::clone(&b.work)) else {
            return Ok(());
        };
        if self.difficulty.to_announce(work.difficulty).is_some() {
            self.send_job(false)?;
        }
        Ok(())
    }

    fn apply_version_mask(&mut self, upstream_mask: u32) -> Result<(), Ending> {
        let Some(requested) = self.version.requested else {
            return Ok(());
        };
        let mask = requested & upstream_mask;
        if mask != self.version.mask {
            self.version.mask = mask;
            self.notify(Method::SetVersionMask(mask))?;
        }
        Ok(())
    }

    pub(super) fn on_work_changed(&mut self) -> Result<(), Ending> {
        let Some(latest) = self
            .link
            .rx
            .as_mut()
            .and_then(|rx| rx.borrow_and_update().clone())
        else {
            return Ok(());
        };
        let Some(binding) = &mut self.link.binding else {
            if let Some((id, _)) = self.link.pending_subscribe.clone()
                && self.try_bind()?
            {
                self.link.pending_subscribe = None;
                self.answer_subscribe(id)?;
                self.start_work()?;
            }
            return Ok(());
        };
        if latest.epoch != binding.work.epoch {
            return self.rebind(latest);
        }
        let old = std::mem::replace(&mut binding.work, Arc::clone(&latest));
        if latest.version_mask != old.version_mask {
            self.apply_version_mask(latest.version_mask)?;
        }
        self.jobs.retire_before(latest.book.oldest_live_seq());
        let new_job = latest.job.as_ref().map(|j| j.seq) != old.job.as_ref().map(|j| j.seq);
        if !self.link.started {
            return Ok(());
        }
        if new_job {
            self.maybe_retarget();
            // Updates can be coalesced by the watch channel: if the job this miner last got is
            // no longer live, a clean job happened in between and the miner must drop its work.
            let must_clean = self
                .jobs
                .last()
                .is_none_or(|sent| latest.book.by_seq(sent.seq).is_none());
            self.send_job(must_clean)
        } else {
            // The pool's difficulty may have dropped below the miner's.
            self.resend_if_difficulty_changed()
        }
    }

    /// The work moved to another pool connection: the miner needs a new extranonce.
    fn rebind(&mut self, work: Arc<WorkState>) -> Result<(), Ending> {
        self.release_extranonce();
        let Some(binding) = Binding::allocate(&work) else {
            info!("no extranonce prefix on the new connection: asking the miner to reconnect");
            self.notify(Method::Reconnect(Reconnect::default()))?;
            return Err(Ending::Reconnect);
        };
        let extranonce1 = binding.extranonce1;
        let size = work.split.miner_size;
        self.link.binding = Some(binding);
        self.jobs.reset();
        if !self.extranonce_subscribed {
            info!(upstream = %work.upstream, "extranonce changed and the miner did not subscribe to it: asking it to reconnect");
            self.notify(Method::Reconnect(Reconnect::default()))?;
            return Err(Ending::Reconnect);
        }
        info!(upstream = %work.upstream, %extranonce1, "moving miner to new work");
        self.notify(Method::SetExtranonce(SetExtranonce {
            extranonce1,
            extranonce2_size: size,
        }))?;
        self.apply_version_mask(work.version_mask)?;
        self.difficulty.forget_announced();
        if self.link.started {
            self.send_job(true)?;
        }
        Ok(())
    }

    pub(super) fn on_submit(&mut self, id: Id, submit: Submit) -> Result<(), Ending> {
        let counters = &self.member.counters;
        let Some(binding) = &self.link.binding else {
            counters.not_subscribed.inc();
            return self.send(reject_response(id, &Reject::NotSubscribed).to_line());
        };
        let Some(worker) = self.member.worker(submit.worker.trim()).cloned() else {
            counters.unauthorized.inc();
            return self.send(reject_response(id, &Reject::Unauthorized).to_line());
        };
        let work = Arc::clone(&binding.work);
        let extranonce1 = binding.extranonce1;
        let Some((job, difficulty, threshold)) =
            self.jobs.find(&submit.share.job_id).and_then(|sent| {
                work.book
                    .by_seq(sent.seq)
                    .map(|job| (job, sent.difficulty, sent.threshold()))
            })
        else {
            counters.rejected(&Reject::Stale).inc();
            debug!(job = %submit.share.job_id, "stale share");
            return self.send(reject_response(id, &Reject::Stale).to_line());
        };
        let context = ShareContext {
            extranonce1: &extranonce1,
            extranonce2_size: work.split.miner_size,
            version_mask: self.version.mask,
            share_target: &threshold,
            upstream_target: work.upstream_threshold(job.seq()),
        };
        self.health.submits = self.health.submits.wrapping_add(1);
        let timed = self.health.submits % VERIFY_SAMPLE == 1;
        let started = timed.then(Instant::now);
        let verdict = check_share_for_job(job, self.jobs.duplicates(), &context, &submit.share);
        if let Some(started) = started {
            self.context
                .metrics
                .miners
                .share_verify_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let counters = &self.member.counters;
        match verdict {
            Verdict::Accepted(accepted) => {
                // Counted and forwarded before the reply is queued: a miner whose queue is full
                // is disconnected, but the work it did is not lost.
                counters.accepted.inc();
                counters.accepted_difficulty.inc_by(difficulty.get());
                self.update_stats(|s| s.accepted(difficulty.get()));
                if let Some(worker) = &self.member.worker_metrics {
                    worker.accepted.inc();
                    worker.accepted_difficulty.inc_by(difficulty.get());
                }
                self.difficulty.record(Instant::now(), difficulty);
                if accepted.meets_upstream {
                    self.forward(&work, job, &submit, worker, accepted.is_block);
                }
                if accepted.is_block {
                    info!(hash = %accepted.block_hash(), "share meets the network target");
                }
                self.send(accepted_line(&id))?;
                if self.maybe_retarget() {
                    self.resend_if_difficulty_changed()?;
                }
                Ok(())
            }
            Verdict::Rejected(reject) => {
                counters.rejected(&reject).inc();
                self.update_stats(|s| s.rejected());
                if let Some(worker) = &self.member.worker_metrics {
                    worker.rejected.inc();
                }
                debug!(%reject, job = %submit.share.job_id, "share rejected");
                self.send(reject_response(id, &reject).to_line())
            }
        }
    }

    /// Sends an accepted share to the connection its work came from, in the pool's terms (its
    /// job id, the full upstream extranonce2). The miner already has its answer; a share that
    /// cannot be handed over is counted lost, never dropped silently.
    fn forward(
        &self,
        work: &WorkState,
        job: &crate::work::Job,
        submit: &Submit,
        worker: Arc<str>,
        is_block: bool,
    ) {
        let Some(binding) = &self.link.binding else {
            return;
        };
        let lost = |reason: &str| {
            self.context
                .metrics
                .upstream
                .shares
                .with_label_values(&[&work.upstream, "lost"])
                .inc();
            warn!(upstream = %work.upstream, reason, "forwarded share lost");
        };
        let Some(extranonce2) = work
            .split
            .upstream_extranonce2(&binding.prefix, &submit.share.extranonce2)
        else {
            // The split is validated against the 32-byte bound, so this is a bug; still, the
            // share is counted, never dropped silently.
            return lost("upstream extranonce2 too long");
        };
        let share = ForwardShare {
            job_id: job.upstream_id().clone(),
            pool_extranonce1: work.pool_extranonce1,
            extranonce2,
            ntime: submit.share.ntime,
            nonce: submit.share.nonce,
            version_bits: submit.share.version_bits,
            worker,
            is_block,
        };
        if let Err(error) = work.submit.try_send(share) {
            lost(match error {
                tokio::sync::mpsc::error::TrySendError::Full(_) => "upstream submit queue full",
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "upstream connection gone",
            });
        }
    }

    /// Runs vardiff; true when the target difficulty changed.
    fn maybe_retarget(&mut self) -> bool {
        let Some(work) = self.link.binding.as_ref().map(|b| Arc::clone(&b.work)) else {
            return false;
        };
        self.difficulty
            .retarget(Instant::now(), work.difficulty)
            .is_some()
    }
}
