//! A simulated machine's power and hashing state, shared by its Stratum side (the sim miner
//! hashes only while the device mines) and its management API (ESP-Miner's REST API or LuxOS's
//! cgminer API), so a sleep through the firmware really stops the shares and the watts.
//!
//! Power follows the state: full while mining (also while the proxy withholds new work: an ASIC
//! keeps hashing its last job), idle once the firmware pauses, the sleep draw once asleep, and a
//! ramp back to full over `wake` after a wakeup. The device integrates its own energy exactly
//! (the draw is piecewise linear), so tests can compare hashgate's ledger with what was drawn.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A machine's figures.
#[derive(Debug, Clone)]
pub struct DeviceProfile {
    /// Watts while hashing.
    pub full_watts: f64,
    /// Watts asleep (control board, fans at rest, PSU standby).
    pub sleep_watts: f64,
    /// How long a wakeup takes to reach full power (hashing starts at its end).
    pub wake: Duration,
    /// How long after a sleep command the draw drops (the firmware ramps down).
    pub sleep_delay: Duration,
    /// Hashrate the firmware reports while hashing, in GH/s.
    pub reported_ghs: f64,
}

impl DeviceProfile {
    /// A Bitaxe Gamma: ~18 W, ~1.1 TH/s.
    pub fn bitaxe() -> DeviceProfile {
        DeviceProfile {
            full_watts: 18.0,
            sleep_watts: 2.5,
            wake: Duration::from_secs(1),
            sleep_delay: Duration::from_millis(200),
            reported_ghs: 1100.0,
        }
    }

    /// An Antminer S19k Pro on LuxOS: ~2,800 W, ~120 TH/s.
    pub fn s19k_pro() -> DeviceProfile {
        DeviceProfile {
            full_watts: 2800.0,
            sleep_watts: 35.0,
            wake: Duration::from_secs(1),
            sleep_delay: Duration::from_millis(300),
            reported_ghs: 120_000.0,
        }
    }
}

/// What the firmware is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeviceMode {
    /// Hashing at full power.
    Mining,
    /// Told to sleep at `since`: the draw drops after the profile's `sleep_delay`.
    Asleep {
        /// When the command came.
        since: Instant,
    },
    /// Told to wake at `since`: the draw ramps to full over the profile's `wake`, then it mines.
    Waking {
        /// When the command came.
        since: Instant,
    },
}

/// Misbehaviour a test can switch on for one device's management API.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Refuse connections (the API is down).
    pub refuse: bool,
    /// Accept and never answer.
    pub hang: bool,
    /// Answer with JSON that does not parse.
    pub malformed: bool,
    /// Answer every sleep or wake command with success and do nothing (a firmware that lies).
    pub ignore_commands: bool,
    /// Refuse privileged commands as unauthorized.
    pub unauthorized: bool,
    /// Answer with a body far longer than any real reply (a megabyte).
    pub oversized: bool,
}

#[derive(Debug)]
struct State {
    mode: DeviceMode,
    faults: Faults,
    /// Energy drawn up to `integrated_at`, in joules.
    joules: f64,
    integrated_at: Instant,
    sleeps: u64,
    wakes: u64,
}

/// One simulated machine.
#[derive(Debug)]
pub struct SimDevice {
    /// Its figures.
    pub profile: DeviceProfile,
    state: Mutex<State>,
}

impl SimDevice {
    /// A device mining now.
    pub fn new(profile: DeviceProfile) -> SimDevice {
        SimDevice {
            profile,
            state: Mutex::new(State {
                mode: DeviceMode::Mining,
                faults: Faults::default(),
                joules: 0.0,
                integrated_at: Instant::now(),
                sleeps: 0,
                wakes: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watts drawn at `now` in `mode`.
    fn watts_in(&self, mode: DeviceMode, now: Instant) -> f64 {
        let p = &self.profile;
        match mode {
            DeviceMode::Mining => p.full_watts,
            DeviceMode::Asleep { since } => {
                if now.saturating_duration_since(since) >= p.sleep_delay {
                    p.sleep_watts
                } else {
                    p.full_watts
                }
            }
            DeviceMode::Waking { since } => {
                let done = now.saturating_duration_since(since).as_secs_f64();
                let share = if p.wake.is_zero() {
                    1.0
                } else {
                    (done / p.wake.as_secs_f64()).min(1.0)
                };
                p.sleep_watts + (p.full_watts - p.sleep_watts) * share
            }
        }
    }

    /// Joules drawn in `mode` from `a` to `b`, exactly (the draw is piecewise linear).
    fn energy_in(&self, mode: DeviceMode, a: Instant, b: Instant) -> f64 {
        let p = &self.profile;
        // Seconds of [a, b] before and after the instant `at`.
        let split = |at: Instant| {
            let before = at.min(b).saturating_duration_since(a).as_secs_f64();
            let after = b.saturating_duration_since(at.max(a)).as_secs_f64();
            (before, after)
        };
        match mode {
            DeviceMode::Mining => p.full_watts * b.saturating_duration_since(a).as_secs_f64(),
            DeviceMode::Asleep { since } => {
                let (before, after) = split(since + p.sleep_delay);
                p.full_watts * before + p.sleep_watts * after
            }
            DeviceMode::Waking { since } => {
                let end = since + p.wake;
                let (_, full) = split(end);
                // The ramp's part of [a, b]: the mean of its two ends' draws times its length.
                let (ramp_from, ramp_to) = (a.max(since).min(end), b.min(end));
                let ramp = ramp_to.saturating_duration_since(ramp_from).as_secs_f64();
                let mean = (self.watts_in(mode, ramp_from) + self.watts_in(mode, ramp_to)) / 2.0;
                mean * ramp + p.full_watts * full
            }
        }
    }

    /// Brings the energy integral up to `now`; a finished wake becomes mining.
    fn integrate(&self, state: &mut State, now: Instant) {
        if now > state.integrated_at {
            state.joules += self.energy_in(state.mode, state.integrated_at, now);
            state.integrated_at = now;
        }
        if let DeviceMode::Waking { since } = state.mode
            && now.saturating_duration_since(since) >= self.profile.wake
        {
            state.mode = DeviceMode::Mining;
        }
    }

    /// The mode now.
    pub fn mode(&self) -> DeviceMode {
        let mut state = self.state();
        self.integrate(&mut state, Instant::now());
        state.mode
    }

    /// Watts drawn now.
    pub fn watts(&self) -> f64 {
        let mut state = self.state();
        let now = Instant::now();
        self.integrate(&mut state, now);
        self.watts_in(state.mode, now)
    }

    /// Whether it hashes now (its Stratum side finds shares only then).
    pub fn hashing(&self) -> bool {
        self.mode() == DeviceMode::Mining
    }

    /// Whether the firmware would say it is paused or asleep.
    pub fn asleep(&self) -> bool {
        matches!(self.mode(), DeviceMode::Asleep { .. })
    }

    /// Hashrate the firmware reports now, in GH/s.
    pub fn reported_ghs(&self) -> f64 {
        if self.hashing() {
            self.profile.reported_ghs
        } else {
            0.0
        }
    }

    /// Energy drawn since the device was made, in joules.
    pub fn joules(&self) -> f64 {
        let mut state = self.state();
        self.integrate(&mut state, Instant::now());
        state.joules
    }

    /// A sleep command (`false`: ignored by a lying firmware, still answered as done).
    pub fn sleep(&self) -> bool {
        self.command(true)
    }

    /// A wake command (`false`: ignored).
    pub fn wake(&self) -> bool {
        self.command(false)
    }

    fn command(&self, sleep: bool) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        self.integrate(&mut state, now);
        if sleep {
            state.sleeps += 1;
        } else {
            state.wakes += 1;
        }
        if state.faults.ignore_commands {
            return false;
        }
        let asleep = matches!(state.mode, DeviceMode::Asleep { .. });
        if sleep && !asleep {
            state.mode = DeviceMode::Asleep { since: now };
        } else if !sleep && asleep {
            state.mode = DeviceMode::Waking { since: now };
        }
        true
    }

    /// Sleep and wake commands received: (sleeps, wakes).
    pub fn commands(&self) -> (u64, u64) {
        let state = self.state();
        (state.sleeps, state.wakes)
    }

    /// The faults switched on.
    pub fn faults(&self) -> Faults {
        self.state().faults
    }

    /// Switches faults on or off.
    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn power_follows_sleep_and_wake_and_the_energy_is_its_integral() {
        let device = SimDevice::new(DeviceProfile {
            full_watts: 100.0,
            sleep_watts: 10.0,
            wake: Duration::from_secs(2),
            sleep_delay: Duration::from_secs(1),
            reported_ghs: 500.0,
        });
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(device.watts(), 100.0);
        assert!((device.joules() - 1000.0).abs() < 1e-6);
        assert!(device.sleep());
        // Still drawing until the firmware has ramped down.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(device.watts(), 100.0);
        assert!(!device.hashing(), "no shares once told to sleep");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(device.watts(), 10.0);
        tokio::time::advance(Duration::from_secs(9)).await;
        // 10 s at 100 W, 1 s at 100 W, 9 s at 10 W.
        assert!(
            (device.joules() - 1190.0).abs() < 1e-6,
            "{}",
            device.joules()
        );
        assert!(device.wake());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!((device.watts() - 55.0).abs() < 1e-6, "half way up the ramp");
        assert!(!device.hashing());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(device.hashing());
        // The ramp: 2 s averaging 55 W.
        assert!(
            (device.joules() - 1300.0).abs() < 1e-6,
            "{}",
            device.joules()
        );
        assert_eq!(device.commands(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lying_firmware_answers_and_keeps_drawing() {
        let device = SimDevice::new(DeviceProfile::bitaxe());
        device.set_faults(Faults {
            ignore_commands: true,
            ..Faults::default()
        });
        assert!(!device.sleep());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(device.watts(), 18.0);
        assert!(device.hashing());
    }
}
