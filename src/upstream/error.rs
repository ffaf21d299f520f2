//! Why a pool connection ended, typed so failover can act on the cause: which side it came from
//! and whether retrying soon can help (pingora's `ErrorSource` and `RetryType`).

use std::time::Duration;

use crate::protocol::{FrameError, ParamError, ProtocolError};

/// Which side an error comes from: metrics and failover read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The pool (or the network to it).
    Upstream,
    /// hashgate itself (a task it depends on is gone).
    Internal,
}

/// Whether retrying the connection soon can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A transient failure (reset, timeout, close): reconnect with the usual backoff.
    Backoff,
    /// The pool said so (`client.reconnect`): reconnect after its wait, backoff reset.
    AsAsked,
    /// The pool refused us (a wrong user or password, a banned account): the same request
    /// will fail again, so wait the longest backoff and tell the operator.
    Slowly,
    /// hashgate is stopping or broken inside: do not retry.
    Never,
}

/// Why a connection attempt or a connection ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// TCP connect failed.
    #[error("connect to {address} failed")]
    Connect {
        /// host:port.
        address: String,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// TCP connect did not complete in time.
    #[error("connect to {address} timed out after {after:?}")]
    ConnectTimeout {
        /// host:port.
        address: String,
        /// `failover.connect_timeout`.
        after: Duration,
    },
    /// The pool did not complete configure/subscribe/authorize in time.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The pool refused subscribe or authorize.
    #[error("pool refused {method}: {message}")]
    Refused {
        /// Which request.
        method: &'static str,
        /// The pool's message.
        message: String,
    },
    /// The pool closed the connection.
    #[error("pool closed the connection")]
    Closed,
    /// The pool sent no new job for the configured `job_timeout`.
    #[error("no new job for {0:?}")]
    JobTimeout(Duration),
    /// A line from the pool was not Stratum.
    #[error("unreadable line from the pool")]
    Protocol(#[source] ProtocolError),
    /// The subscribe answer does not give a usable extranonce.
    #[error("unusable mining.subscribe result")]
    SubscribeResult(#[source] ParamError),
    /// The pool asked us to reconnect.
    #[error("pool asked to reconnect to {target}")]
    Reconnect {
        /// host:port.
        target: String,
        /// How long the pool asked us to wait first.
        wait: Option<Duration>,
    },
    /// Reading from or writing to the pool failed.
    #[error("connection to the pool failed")]
    Io(#[source] FrameError),
    /// The pool stopped reading our lines.
    #[error("pool did not read for {0:?}")]
    WriteTimeout(Duration),
    /// The router that takes this connection's events is gone (hashgate is stopping).
    #[error("the router is gone")]
    RouterGone,
    /// The router cannot serve miners from this connection (the pool's extranonce space cannot
    /// be shared between them) and let it go; the pool may be reconfigured, so it is tried
    /// again, slowly.
    #[error("the pool's extranonce space cannot be shared between miners")]
    Unusable,
}

impl UpstreamError {
    /// Which side the error comes from.
    pub fn side(&self) -> Side {
        match self {
            UpstreamError::RouterGone => Side::Internal,
            _ => Side::Upstream,
        }
    }

    /// Whether a retry soon can help.
    pub fn retry(&self) -> Retry {
        match self {
            UpstreamError::Refused { .. } | UpstreamError::Unusable => Retry::Slowly,
            UpstreamError::Reconnect { .. } => Retry::AsAsked,
            UpstreamError::RouterGone => Retry::Never,
            _ => Retry::Backoff,
        }
    }

    /// A bounded label for logs and `hashgate_upstream_disconnects_total{cause}`.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::HandshakeTimeout(_) => "handshake_timeout",
            UpstreamError::Refused { .. } => "refused",
            UpstreamError::Closed => "closed",
            UpstreamError::JobTimeout(_) => "job_timeout",
            UpstreamError::Protocol(_) | UpstreamError::SubscribeResult(_) => "protocol",
            UpstreamError::Reconnect { .. } => "reconnect",
            UpstreamError::Io(FrameError::LineTooLong { .. }) => "protocol",
            UpstreamError::Io(_) => "io",
            UpstreamError::WriteTimeout(_) => "write_timeout",
            UpstreamError::RouterGone => "internal",
            UpstreamError::Unusable => "unusable",
        }
    }
}

/// What the router is told when a connection goes down: the typed cause, shared.
#[derive(Debug, Clone)]
pub struct DownCause {
    /// The error, with its chain of sources.
    pub error: std::sync::Arc<UpstreamError>,
}

impl DownCause {
    /// The error and its sources on one line, each once.
    pub fn describe(&self) -> String {
        let mut text = self.error.to_string();
        let mut source = std::error::Error::source(&*self.error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_say_their_side_and_whether_a_retry_helps() {
        let refused = UpstreamError::Refused {
            method: "mining.authorize",
            message: "unknown worker (24)".into(),
        };
        assert_eq!(refused.retry(), Retry::Slowly);
        assert_eq!(refused.side(), Side::Upstream);
        let reset = UpstreamError::Io(FrameError::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(reset.retry(), Retry::Backoff);
        assert_eq!(UpstreamError::RouterGone.side(), Side::Internal);
        // The source is kept and printed once.
        let cause = DownCause {
            error: std::sync::Arc::new(reset),
        };
        let text = cause.describe();
        assert_eq!(text.matches("reset").count(), 1, "{text}");
        assert!(
            text.starts_with("connection to the pool failed: "),
            "{text}"
        );
    }
}
