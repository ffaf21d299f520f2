//! hashgate: a Stratum V1 proxy for mining farms that hand power between Bitcoin mining and AI
//! workloads.
//!
//! The library is layered so that data flows one way:
//!
//! - [`work`] is pure and synchronous: difficulty and target math, extranonces, jobs, and the share
//!   verifier on the SHA-256d hot path. It knows nothing about sockets or tokio.
//! - [`protocol`] is the Stratum V1 wire: typed messages in both directions (hashgate is a server to
//!   miners and a client to pools) and the bounded line codec. It does no I/O of its own.
//!
//! The proxy layers (sessions, upstreams, router, groups, API) are built on these two and talk to
//! them only through the types documented here.

#![warn(missing_docs)]

pub mod api;
pub mod clock;
pub mod config;
pub mod downstream;
pub mod groups;
pub mod load;
pub mod metrics;
pub mod power;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod sim;
pub mod upstream;
pub mod work;
