//! What one session can be told from outside.

/// What a session can be told to do from outside, one session at a time (a group's sessions
/// are told through its [`super::Gate`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SessionCommand {
    /// `client.show_message`.
    ShowMessage(String),
    /// `client.reconnect` to another host (or the same when `host` is None), then close.
    Reconnect {
        /// Host.
        host: Option<String>,
        /// Port.
        port: Option<u16>,
        /// Seconds the miner should wait.
        wait_seconds: Option<u64>,
    },
    /// Close the connection.
    Close {
        /// Logged and counted.
        reason: String,
    },
    /// hashgate is stopping: write what is queued and close (counted as `shutdown`). Sent by
    /// the listener to every live session once it stops accepting.
    Shutdown,
}
