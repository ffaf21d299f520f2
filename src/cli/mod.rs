//! The subcommands behind `hashgate`, one file each: the daemon (`run`, `check-config`), the
//! demo, the API client (`status`, `groups`, `drain`, `resume`) and `verify-share`. Errors are
//! `anyhow` here, at the binary's edge; the library's are typed.

pub mod client;
pub mod demo;
mod demo_machines;
pub mod load;
pub mod run;
pub mod verify;
