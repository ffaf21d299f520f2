//! What a pool connection and the router say to each other, and what a connection is given.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::error::DownCause;
use crate::config::{Endpoint, FailoverConfig, UpstreamConfig};
use crate::protocol::{Difficulty, Extranonce1, LineCodec, Notify};
use crate::work::ForwardShare;

/// Where a connection sits: which pool (index in priority order) and which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Pool index in priority order.
    pub pool: usize,
    /// Slot: the k-th connection to that pool (more when one's extranonce space is full).
    pub slot: usize,
}

/// What a connection tells the router.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// Handshake done: the connection can serve miners.
    Ready {
        /// Which connection.
        key: ConnKey,
        /// What the pool gave.
        session: PoolSession,
    },
    /// A new job.
    Job {
        /// Which connection.
        key: ConnKey,
        /// The job.
        notify: Notify,
        /// When it arrived (for the broadcast histogram).
        received: Instant,
    },
    /// New upstream share difficulty.
    Difficulty {
        /// Which connection.
        key: ConnKey,
        /// The difficulty.
        difficulty: Difficulty,
    },
    /// The pool changed our extranonce.
    Extranonce {
        /// Which connection.
        key: ConnKey,
        /// New extranonce1.
        extranonce1: Extranonce1,
        /// New extranonce2 size.
        extranonce2_size: usize,
    },
    /// The pool changed the version-rolling mask.
    VersionMask {
        /// Which connection.
        key: ConnKey,
        /// The mask.
        mask: u32,
    },
    /// The connection is gone (it will reconnect by itself).
    Down {
        /// Which connection.
        key: ConnKey,
        /// Why, typed: failover reads whether a retry can help.
        cause: DownCause,
    },
}

/// What the pool gave this connection at subscribe/configure.
#[derive(Debug, Clone)]
pub struct PoolSession {
    /// The pool's extranonce1 for this connection.
    pub extranonce1: Extranonce1,
    /// The pool's extranonce2 size.
    pub extranonce2_size: usize,
    /// The version-rolling mask the pool granted (0: none).
    pub version_mask: u32,
    /// Where accepted shares go.
    pub submit: mpsc::Sender<ForwardShare>,
}

/// A pool connection, framed into lines.
pub(super) type PoolStream = Framed<TcpStream, LineCodec>;

/// A configured pool and where it is, parsed once from its url.
#[derive(Debug, Clone)]
pub struct PoolTarget {
    /// `[[upstream]]`.
    pub config: UpstreamConfig,
    /// Its host and port.
    pub endpoint: Endpoint,
}

/// Timing shared by every pool connection.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// `[failover]`.
    pub failover: FailoverConfig,
    /// How long shares in flight may wait for the pool's answer at shutdown.
    pub shutdown_grace: Duration,
}
