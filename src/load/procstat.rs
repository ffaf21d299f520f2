//! The measured process's resources, read from `/proc/<pid>`: resident memory, CPU time and
//! open files, sampled at the start, after the ramp and at the end of a load run.

use serde::{Deserialize, Serialize};

/// One sample of a process's resources.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// Resident set size (KiB, `VmRSS`).
    pub rss_kib: u64,
    /// User plus system CPU time (seconds).
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_files: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Samples process `pid`; `None` when it is gone or `/proc` cannot be read.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_seconds = cpu_of_stat(&stat)? / ticks_per_second();
    let open_files = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(ProcSample {
        rss_kib,
        cpu_seconds,
        open_files,
    })
}

/// utime + stime (ticks) from a `/proc/<pid>/stat` line: fields 14 and 15, counted after the
/// command's closing parenthesis (the command may itself hold spaces and parentheses).
fn cpu_of_stat(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 567 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(cpu_of_stat(stat), Some(1801.0));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).expect("/proc/self");
        assert!(me.rss_kib > 0 && me.open_files > 0, "{me:?}");
    }
}
