//! Wall-clock time as the API, the state file and the audit log show it.
//!
//! Durations inside hashgate use `Instant` (monotonic); only what leaves the process or must
//! survive a restart (last submit, drain start, event times) is in Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, the clock of the kernel's socket receive
/// stamps): the load tool's job send instants.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
