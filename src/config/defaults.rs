//! The value of every key left out of the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(super) fn max_line_bytes() -> usize {
    crate::protocol::DEFAULT_MAX_LINE
}
pub(super) fn upstream_max_line_bytes() -> usize {
    256 * 1024
}
pub(super) fn max_extranonce2_size() -> usize {
    8
}
pub(super) fn write_buffer_bytes() -> usize {
    64 * 1024
}
pub(super) fn socket_send_buffer() -> usize {
    64 * 1024
}
pub(super) fn idle_timeout() -> Duration {
    Duration::from_secs(600)
}
pub(super) fn subscribe_wait() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn max_miners() -> usize {
    19_900
}
pub(super) fn max_upstream_connections() -> usize {
    64
}
pub(super) fn shutdown_grace() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}
pub(super) fn state_dir() -> PathBuf {
    PathBuf::from("/var/lib/hashgate")
}
pub(super) fn initial_difficulty() -> f64 {
    16384.0
}
pub(super) fn min_difficulty() -> f64 {
    1.0
}
pub(super) fn max_difficulty() -> f64 {
    4_194_304.0
}
pub(super) fn target_share_interval() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn retarget_interval() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn connect_timeout() -> Duration {
    Duration::from_secs(5)
}
pub(super) fn handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn submit_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn backoff_min() -> Duration {
    Duration::from_millis(500)
}
pub(super) fn backoff_max() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn return_after() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn password() -> String {
    "x".to_owned()
}
pub(super) fn job_timeout() -> Duration {
    Duration::from_secs(120)
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn drain_timeout() -> Duration {
    Duration::from_secs(600)
}
pub(super) fn quiet_min() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn quiet_shares() -> f64 {
    6.0
}
pub(super) fn ramp_workers_per_second() -> f64 {
    10.0
}
pub(super) fn ramp_timeout() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn hook_retry() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn hook_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn tolerance() -> f64 {
    0.05
}
pub(super) fn efficiency_window() -> Duration {
    Duration::from_secs(3600)
}
