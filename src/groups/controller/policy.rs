//! A group's drain and ramp settings, and the resume ramp's token bucket: the arithmetic of a
//! drain, apart from the task that applies it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::observe::{MinerView, Observed};
use crate::config::Config;
use crate::groups::state::RosterEntry;

/// A group's drain and ramp settings, resolved from `[drain]` and its `[[group]]`.
#[derive(Debug, Clone)]
pub(super) struct Policy {
    /// Declared watts of one mining worker.
    pub watts_per_worker: f64,
    /// A draining group is drained after this at the latest.
    pub drain_timeout: Duration,
    /// Shortest silence that counts as quiet.
    pub quiet_min: Duration,
    /// Expected share intervals of silence that count as quiet.
    pub quiet_shares: f64,
    /// Workers per second the resume admits (the slower of the worker and watt ramps).
    pub ramp_rate: f64,
    /// A resuming group is active after this at the latest.
    pub ramp_timeout: Duration,
    /// A failed required hook is retried after this (doubling).
    pub hook_retry: Duration,
}

impl Policy {
    pub(super) fn new(config: &Config, name: &str, watts_per_worker: f64) -> Self {
        let d = &config.drain;
        let group = config.groups.iter().find(|g| g.name == name);
        let workers_rate = group
            .and_then(|g| g.ramp_workers_per_second)
            .unwrap_or(d.ramp_workers_per_second);
        let watts_rate = group
            .and_then(|g| g.ramp_watts_per_second)
            .or(d.ramp_watts_per_second)
            .filter(|_| watts_per_worker > 0.0)
            .map(|w| w / watts_per_worker);
        Self {
            watts_per_worker,
            drain_timeout: group.and_then(|g| g.drain_timeout).unwrap_or(d.timeout),
            quiet_min: d.quiet_min,
            quiet_shares: d.quiet_shares,
            ramp_rate: watts_rate.map_or(workers_rate, |w| w.min(workers_rate)),
            ramp_timeout: d.ramp_timeout,
            hook_retry: d.hook_retry,
        }
    }

    /// How long to wait before trying a failed automatic transition again after `failures` in
    /// a row: `hook_retry`, doubling with each, at most 10 minutes (a hook that keeps failing is
    /// not run, nor logged, every few seconds for hours).
    pub(super) fn retry_after(&self, failures: u32) -> Duration {
        self.hook_retry
            .saturating_mul(1 << failures.min(6))
            .min(Duration::from_secs(600).max(self.hook_retry))
    }

    /// How long a miner must be silent to count as no longer hashing: `quiet_shares` of its
    /// expected share intervals (difficulty x 2^32 / hashrate), at least `quiet_min`, at most the
    /// drain timeout.
    pub(super) fn quiet_period(&self, difficulty: f64, hashrate: f64) -> Duration {
        let interval = if hashrate > 0.0 && difficulty > 0.0 {
            difficulty * 4_294_967_296.0 / hashrate
        } else {
            0.0
        };
        let quiet =
            Duration::try_from_secs_f64(interval * self.quiet_shares).unwrap_or(self.drain_timeout);
        quiet.clamp(self.quiet_min, self.drain_timeout.max(self.quiet_min))
    }
}

/// The trigger of a drain that measured power proved.
pub(super) const MEASURED: &str = "measured";

impl Policy {
    /// Whether a measured draining group is drained at `now_ms`: its machines have all been
    /// off for `settle` (trigger `measured`), or the drain timeout is reached (trigger
    /// `timeout`, a detail naming the machines not off with their driver's error).
    pub(super) fn drained_measured(
        &self,
        started_ms: u64,
        now_ms: u64,
        off_for: Option<Duration>,
        settle: Duration,
        not_off: &[super::machines::MachineIssue],
    ) -> Option<(&'static str, String)> {
        if off_for.is_some_and(|off| off >= settle) {
            return Some((MEASURED, String::new()));
        }
        let elapsed = Duration::from_millis(now_ms.saturating_sub(started_ms));
        if elapsed < self.drain_timeout {
            return None;
        }
        let listed: Vec<String> = not_off
            .iter()
            .take(20)
            .map(|m| format!("{} ({}): {}", m.worker, m.address, m.problem))
            .collect();
        Some((
            "timeout",
            format!(
                "drain timeout: {} machine(s) not off: {}",
                not_off.len(),
                listed.join("; ")
            ),
        ))
    }

    /// Whether a draining group (drain started at `started_ms`) is drained at `now_ms`: every
    /// miner quiet, none refused for `quiet_min`, and `quiet_min` passed (trigger `quiet`); or
    /// the drain timeout reached (trigger `timeout`, with a detail naming who still hashes).
    pub(super) fn drained<'a>(
        &self,
        started_ms: u64,
        now_ms: u64,
        last_refused_ms: u64,
        still_hashing: impl FnOnce() -> Vec<&'a str>,
    ) -> Option<(&'static str, String)> {
        let elapsed = Duration::from_millis(now_ms.saturating_sub(started_ms));
        let quiet_min_ms = u64::try_from(self.quiet_min.as_millis()).unwrap_or(u64::MAX);
        let refused_lately =
            last_refused_ms > started_ms && now_ms.saturating_sub(last_refused_ms) < quiet_min_ms;
        let names = still_hashing();
        if names.is_empty() && !refused_lately && elapsed >= self.quiet_min {
            return Some(("quiet", String::new()));
        }
        if elapsed < self.drain_timeout {
            return None;
        }
        let listed: Vec<&str> = names.iter().take(20).copied().collect();
        let refused = if refused_lately {
            "; reconnects still refused"
        } else {
            ""
        };
        Some((
            "timeout",
            format!(
                "drain timeout: {} miner(s) still hashing: {}{refused}",
                names.len(),
                listed.join(", ")
            ),
        ))
    }
}

/// The resume ramp of one group: a token bucket that fills at the group's rate and holds at most
/// one second of it, so miners that come back late are not admitted all at once. It admits
/// paused sessions in the order they joined by raising the gate's watermark (see
/// `downstream::Gate::Ramp`). Time is passed in, so the arithmetic is tested without a clock.
pub(super) struct Ramp {
    /// When the resume began (for `ramp_timeout`).
    pub started: Instant,
    /// Sessions with a ramp ticket up to this one are admitted.
    pub admit_through: u64,
    tokens: f64,
    filled: Instant,
}

impl Ramp {
    pub(super) fn new(now: Instant) -> Ramp {
        Ramp {
            started: now,
            admit_through: 0,
            // The first miner at once.
            tokens: 1.0,
            filled: now,
        }
    }

    /// Admits waiting sessions (their ramp tickets sorted ascending, all above the watermark) as
    /// far as the bucket allows at `rate` per second; the new watermark when it moved.
    pub(super) fn admit(&mut self, now: Instant, rate: f64, waiting: &[u64]) -> Option<u64> {
        self.fill(now, rate);
        let admit = (self.tokens.floor() as usize).min(waiting.len());
        if admit == 0 {
            return None;
        }
        self.tokens -= admit as f64;
        self.admit_through = waiting[admit - 1];
        Some(self.admit_through)
    }

    /// One tick of a resuming group: admits waiting paused miners (above the watermark, in
    /// ticket order) at `rate`, and says whether the ramp is over: nobody waits for admission,
    /// `may_finish` (no hook run or retry under way), and every miner of the drain's `roster`
    /// is back (trigger `ramp`), or `timeout` passed since the resume (trigger `ramp_timeout`,
    /// with a detail naming who did not come back). Miners waiting for admission are always
    /// admitted at the rate, never all at once, even after the timeout.
    pub(super) fn step(
        &mut self,
        now: Instant,
        pace: RampPace,
        observed: &Observed,
        roster: &[RosterEntry],
        may_finish: bool,
        awake: impl Fn(&MinerView) -> bool,
    ) -> RampStep {
        let RampPace { rate, timeout } = pace;
        let mut waiting: Vec<(u64, bool)> = observed
            .miners
            .iter()
            .filter(|m| m.paused && m.ticket > self.admit_through)
            .map(|m| (m.ticket, awake(m)))
            .collect();
        waiting.sort_unstable_by_key(|(ticket, _)| *ticket);
        // The watermark admits every ticket below it: only the prefix whose machines are awake.
        let ready: Vec<u64> = waiting
            .iter()
            .take_while(|(_, awake)| *awake)
            .map(|(ticket, _)| *ticket)
            .collect();
        let waiting: Vec<u64> = waiting.iter().map(|(ticket, _)| *ticket).collect();
        let admit_through = self.admit(now, rate, &ready);
        let still_waiting = waiting.iter().any(|t| *t > self.admit_through);
        let admitted = self.admit_through;
        let back: HashSet<&str> = observed
            .miners
            .iter()
            .filter(|m| !m.paused || m.ticket <= admitted)
            .map(|m| &*m.name)
            .collect();
        let missing: Vec<&str> = roster
            .iter()
            .map(|entry| entry.name.as_str())
            .filter(|name| !back.contains(name))
            .collect();
        let timed_out = now.saturating_duration_since(self.started) >= timeout;
        let finished = if still_waiting || !may_finish || (!missing.is_empty() && !timed_out) {
            None
        } else if missing.is_empty() {
            Some(("ramp", None))
        } else {
            let names: Vec<&str> = missing.iter().take(20).copied().collect();
            Some((
                "ramp_timeout",
                Some(format!(
                    "ramp timeout: {} miner(s) did not come back: {}",
                    missing.len(),
                    names.join(", ")
                )),
            ))
        };
        RampStep {
            admit_through,
            finished,
        }
    }

    fn fill(&mut self, now: Instant, rate: f64) {
        let elapsed = now.saturating_duration_since(self.filled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.filled = now;
    }
}

/// How fast a resume admits miners and how long it may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct RampPace {
    /// Miners a second.
    pub rate: f64,
    /// The ramp is over after this, whoever is missing.
    pub timeout: Duration,
}

/// What one ramp tick decided.
#[derive(Debug, PartialEq)]
pub(super) struct RampStep {
    /// The gate's new watermark, when it moved.
    pub admit_through: Option<u64>,
    /// The ramp is over: its trigger, and on a timeout who did not come back.
    pub finished: Option<(&'static str, Option<String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_period_scales_with_the_expected_share_interval() {
        let policy = Policy {
            watts_per_worker: 3250.0,
            drain_timeout: Duration::from_secs(600),
            quiet_min: Duration::from_secs(30),
            quiet_shares: 6.0,
            ramp_rate: 10.0,
            ramp_timeout: Duration::from_secs(300),
            hook_retry: Duration::from_secs(10),
        };
        // An S19 at 100 TH/s on difficulty 230,000 submits every ~9.9 s: quiet after ~59 s.
        let quiet = policy.quiet_period(230_000.0, 100e12);
        assert!((quiet.as_secs_f64() - 59.3).abs() < 0.5, "{quiet:?}");
        // A fast miner is held to quiet_min, a slow one to the drain timeout.
        assert_eq!(policy.quiet_period(1.0, 100e12), Duration::from_secs(30));
        assert_eq!(policy.quiet_period(1e9, 1e9), Duration::from_secs(600));
        // No hashrate known: quiet_min.
        assert_eq!(policy.quiet_period(65536.0, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn the_ramp_admits_at_its_rate_in_ticket_order() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut ramp = Ramp::new(start);
        // One token at the start: the lowest waiting ticket.
        assert_eq!(ramp.admit(at(0), 2.0, &[4, 9, 12, 15, 20]), Some(4));
        assert_eq!(
            ramp.admit(at(200), 2.0, &[9, 12, 15, 20]),
            None,
            "0.4 tokens"
        );
        // 2 per second: one more by 500 ms, then two a second.
        assert_eq!(ramp.admit(at(500), 2.0, &[9, 12, 15, 20]), Some(9));
        assert_eq!(ramp.admit(at(1500), 2.0, &[12, 15, 20]), Some(15));
        // A long quiet spell does not bank a backlog: at most a second's worth (2) at once.
        assert_eq!(ramp.admit(at(60_000), 2.0, &[20, 21, 22, 23]), Some(21));
        assert_eq!(ramp.admit_through, 21);
    }

    fn miner(name: &str, ticket: u64, paused: bool) -> super::super::observe::MinerView {
        super::super::observe::MinerView {
            id: ticket,
            name: name.into(),
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            paused,
            mining: !paused,
            last_submit_ms: None,
            difficulty: 1.0,
            hashrate: 0.0,
            ticket,
        }
    }

    fn roster(names: &[&str]) -> Vec<RosterEntry> {
        names
            .iter()
            .map(|n| RosterEntry {
                name: (*n).into(),
                address: "127.0.0.1:1".into(),
            })
            .collect()
    }

    #[test]
    fn the_ramp_admits_only_up_to_the_first_miner_whose_machine_is_not_awake() {
        let start = Instant::now();
        let timeout = Duration::from_secs(60);
        let roster = roster(&["a", "b", "c"]);
        let observed = Observed {
            miners: vec![
                miner("a", 1, true),
                miner("b", 2, true),
                miner("c", 3, true),
            ],
            ..Observed::default()
        };
        let mut ramp = Ramp::new(start);
        let later = start + Duration::from_secs(10);
        let pace = RampPace {
            rate: 10.0,
            timeout,
        };
        let mut step = |at, awake: &dyn Fn(&MinerView) -> bool| {
            ramp.step(at, pace, &observed, &roster, true, awake)
        };
        // Plenty of tokens, but b's machine is still waking: a only (c comes after b).
        let first = step(later, &|m| &*m.name != "b");
        assert_eq!((first.admit_through, first.finished), (Some(1), None));
        assert_eq!(step(later, &|_| false).admit_through, None);
        let rest = step(later + Duration::from_secs(1), &|_| true);
        assert_eq!(rest.admit_through, Some(3));
    }

    #[test]
    fn a_ramp_ends_once_the_roster_is_back_or_at_its_timeout_naming_who_is_missing() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let timeout = Duration::from_secs(60);
        let roster = roster(&["a", "b", "c"]);
        let mut ramp = Ramp::new(start);
        // a and b are back but paused: one a second, so two ticks; c has not reconnected.
        let observed = Observed {
            miners: vec![miner("a", 1, true), miner("b", 2, true)],
            ..Observed::default()
        };
        let first = ramp.step(
            at(0),
            RampPace { rate: 1.0, timeout },
            &observed,
            &roster,
            true,
            |_| true,
        );
        assert_eq!(first.admit_through, Some(1));
        assert_eq!(first.finished, None, "b still waits for admission");
        let second = ramp.step(
            at(1),
            RampPace { rate: 1.0, timeout },
            &observed,
            &roster,
            true,
            |_| true,
        );
        assert_eq!(second.admit_through, Some(2));
        assert_eq!(
            second.finished, None,
            "c is missing and the timeout is not reached"
        );
        // A hook run under way holds the end back even at the timeout.
        let held = ramp.step(
            at(61),
            RampPace { rate: 1.0, timeout },
            &observed,
            &roster,
            false,
            |_| true,
        );
        assert_eq!(held.finished, None);
        let timed_out = ramp.step(
            at(61),
            RampPace { rate: 1.0, timeout },
            &observed,
            &roster,
            true,
            |_| true,
        );
        assert_eq!(
            timed_out.finished,
            Some((
                "ramp_timeout",
                Some("ramp timeout: 1 miner(s) did not come back: c".into())
            ))
        );
        // Everyone back and admitted: over at once.
        let mut ramp = Ramp::new(start);
        let all = Observed {
            miners: vec![
                miner("a", 1, false),
                miner("b", 2, false),
                miner("c", 3, false),
            ],
            ..Observed::default()
        };
        let done = ramp.step(
            at(0),
            RampPace { rate: 1.0, timeout },
            &all,
            &roster,
            true,
            |_| true,
        );
        assert_eq!(
            (done.admit_through, done.finished),
            (None, Some(("ramp", None)))
        );
    }
}
