//! One session's commands from outside (the API's disconnect and reconnect), in a mailbox that
//! costs a few dozen bytes while empty: it exists for every connected miner and is almost never
//! used, where a channel would reserve a block of slots per miner up front.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use super::command::SessionCommand;

/// Commands waiting for a session at most; a session that does not take them is busy or gone.
pub const MAILBOX_CAPACITY: usize = 16;

/// Why a command was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// [`MAILBOX_CAPACITY`] commands are already waiting.
    #[error("the session has {MAILBOX_CAPACITY} commands waiting")]
    Full,
    /// The session has ended.
    #[error("the session has ended")]
    Closed,
}

/// A session's command mailbox: many senders, the session the one receiver.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<SessionCommand>>,
    /// The one receiver's waker: a waiting session costs a poll function in its task, not a
    /// `Notify` registration (88 bytes of every miner's future).
    arrived: AtomicWaker,
    closed: AtomicBool,
    /// hashgate is stopping: every later receive is [`SessionCommand::Shutdown`] (a flag, not
    /// a queued command: a full mailbox must not keep a session alive).
    stopping: AtomicBool,
}

impl Mailbox {
    /// Queues a command without waiting.
    pub fn try_send(&self, command: SessionCommand) -> Result<(), MailboxError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(MailboxError::Closed);
        }
        {
            let mut queue = self.lock();
            if queue.len() >= MAILBOX_CAPACITY {
                return Err(MailboxError::Full);
            }
            queue.push_back(command);
        }
        // The receiver looks at the queue again after registering, so no command is missed.
        self.arrived.wake();
        Ok(())
    }

    /// The next command. Cancel-safe: a command is taken out only when it is returned. One
    /// receiver (the session) at a time.
    pub async fn recv(&self) -> SessionCommand {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next command if one waits, else the task is woken when one arrives. Shutdown
    /// comes first.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<SessionCommand> {
        if let Some(command) = self.take() {
            return Poll::Ready(command);
        }
        self.arrived.register(cx.waker());
        match self.take() {
            Some(command) => Poll::Ready(command),
            None => Poll::Pending,
        }
    }

    fn take(&self) -> Option<SessionCommand> {
        if self.stopping.load(Ordering::Acquire) {
            return Some(SessionCommand::Shutdown);
        }
        self.lock().pop_front()
    }

    /// hashgate is stopping: the session's next receive is [`SessionCommand::Shutdown`].
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        self.arrived.wake();
    }

    /// The session ended: later commands are refused, waiting ones dropped.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<SessionCommand>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn close(reason: &str) -> SessionCommand {
        SessionCommand::Close {
            reason: reason.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_sent_before_the_session_waits_is_received() {
        let mailbox = Arc::new(Mailbox::default());
        mailbox.try_send(close("first")).unwrap();
        let received = tokio::time::timeout(Duration::from_secs(1), mailbox.recv()).await;
        assert!(matches!(received, Ok(SessionCommand::Close { reason }) if reason == "first"));
        let waiting = {
            let mailbox = Arc::clone(&mailbox);
            tokio::spawn(async move { mailbox.recv().await })
        };
        tokio::task::yield_now().await;
        mailbox.try_send(close("second")).unwrap();
        let received = waiting.await.unwrap();
        assert!(matches!(received, SessionCommand::Close { reason } if reason == "second"));
    }

    #[test]
    fn a_full_or_closed_mailbox_refuses() {
        let mailbox = Mailbox::default();
        for i in 0..MAILBOX_CAPACITY {
            mailbox.try_send(close(&i.to_string())).unwrap();
        }
        assert_eq!(
            mailbox.try_send(close("one too many")),
            Err(MailboxError::Full)
        );
        mailbox.close();
        assert_eq!(mailbox.try_send(close("late")), Err(MailboxError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_reaches_a_waiting_session_even_past_a_full_mailbox() {
        let mailbox = Arc::new(Mailbox::default());
        let waiting = {
            let mailbox = Arc::clone(&mailbox);
            tokio::spawn(async move { mailbox.recv().await })
        };
        tokio::task::yield_now().await;
        mailbox.shut_down();
        let received = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(matches!(received, Ok(Ok(SessionCommand::Shutdown))));
        let full = Mailbox::default();
        for i in 0..MAILBOX_CAPACITY {
            full.try_send(close(&i.to_string())).unwrap();
        }
        full.shut_down();
        assert!(matches!(full.recv().await, SessionCommand::Shutdown));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_loses_no_command() {
        let mailbox = Mailbox::default();
        // A wait dropped before anything arrived (as a select! drops it) ...
        assert!(
            tokio::time::timeout(Duration::from_millis(10), mailbox.recv())
                .await
                .is_err()
        );
        mailbox.try_send(close("kept")).unwrap();
        // ... leaves the command for the next wait.
        let received = tokio::time::timeout(Duration::from_secs(1), mailbox.recv()).await;
        assert!(matches!(received, Ok(SessionCommand::Close { reason }) if reason == "kept"));
    }
}
