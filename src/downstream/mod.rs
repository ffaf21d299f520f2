//! Miner sessions: the listener and one task per miner connection.
//!
//! Each session task owns its state outright (no lock, no back-pointer). It reads the miner's
//! lines, answers every request by its id at once, verifies every share locally with
//! [`crate::work::check_share`], and forwards shares that meet the pool's target to the
//! connection of the work they were made from. Work arrives through the slot's `watch` channel
//! (one serialization per job for every miner); outbound lines go through a bounded queue to a
//! writer task, and a miner that does not read is disconnected rather than slowing the others.
//!
//! Outside the session, only [`SessionControl`] reaches it: a group's [`Gate`] (set by group
//! control, watched by every session of the group), a [`SessionCommand`] to one session (the
//! API's reconnect and close), and read-only copies of each session's stats and of the refused
//! reconnects ([`SessionRegistry`]). Nothing outside writes into a session.

mod command;
mod context;
mod control;
mod gate;
mod mailbox;
mod registry;
mod reject;
mod session;
pub mod stats;
pub mod vardiff;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use command::SessionCommand;
pub use context::{Downstream, SessionSettings};
pub use control::SessionControl;
pub use gate::{Gate, GroupGates};
pub use mailbox::{Mailbox, MailboxError};
pub use registry::{Refusals, RefusedMiner, SessionEntry, SessionRegistry};
pub use reject::{reject_code, reject_response};
pub use session::{Connection, serve_miner};
pub use stats::{WorkerSnapshot, WorkerStats};

/// Accepts miners until `cancel`, at most `server.max_miners` at once; each session runs on
/// `tracker`. Once it stops accepting, every live session is told to stop through its
/// mailbox (a session waits on one thing less than a cancellation future of its own).
pub async fn listen(
    listener: TcpListener,
    downstream: Arc<Downstream>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let server = &downstream.settings.server;
    let permits = Arc::new(Semaphore::new(server.max_miners));
    let local = listener.local_addr().ok();
    info!(listen = ?local, "accepting miners");
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let _ =
                    socket2::SockRef::from(&stream).set_send_buffer_size(server.socket_send_buffer);
                let commands = Arc::new(Mailbox::default());
                let stats = Arc::new(Mutex::new(WorkerStats::new(
                    peer,
                    Arc::clone(&downstream.groups.default_group().name),
                )));
                let sessions = downstream.control.registry();
                let id = sessions.register(SessionEntry {
                    commands: Arc::clone(&commands),
                    stats: Arc::clone(&stats),
                });
                let connection = Connection {
                    id,
                    stream,
                    peer,
                    commands,
                    stats,
                };
                // Spawned as built: the task holds the session once (it leaves the registry and
                // drops the permit itself).
                tracker.spawn(serve_miner(connection, Arc::clone(&downstream), permit));
            }
            Err(error) => {
                // EMFILE and friends: wait a little instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Every session was registered before its task was spawned: none is missed.
    downstream.control.registry().shut_down_all();
}
