//! The miner's socket, driven from the session's own task: no writer task, no line queue.
//!
//! Out: lines queued while the session handles one event go to the kernel in one `writev` when
//! the event is done; what the kernel does not take waits as bytes, bounded by
//! `server.write_buffer_bytes` (a miner that lets it fill is a slow reader). In: reads go into a
//! buffer on the stack of the (synchronous) read handler, lines are handed over as slices of it,
//! and only a line split across two reads is kept, until its end arrives. An idle miner holds
//! no buffer at all: its memory is what it knows, not what it might send or be sent.

use std::io::{self, IoSlice};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::protocol::FrameError;

/// Bytes read from the socket per `read` (on the stack of the read handler, never held).
pub(super) const READ_CHUNK: usize = 4096;
/// Lines written per `writev`; more in one event are written in batches of this many.
const BATCH: usize = 4;

/// Why lines cannot reach the miner.
#[derive(Debug)]
pub(super) enum WriteError {
    /// More than `server.write_buffer_bytes` waiting: the miner does not read.
    SlowReader,
    /// The socket failed.
    Io(io::Error),
}

/// The miner's socket and the bytes on their way to it.
pub(super) struct MinerIo {
    stream: TcpStream,
    /// Lines queued since the last flush, in order.
    batch: [Option<Bytes>; BATCH],
    batched: usize,
    /// Bytes the kernel did not take yet, oldest first (unallocated while empty).
    backlog: Vec<u8>,
    max_backlog: usize,
}

impl MinerIo {
    /// Drives `stream`; at most `max_backlog` bytes wait for a miner that does not read.
    pub fn new(stream: TcpStream, max_backlog: usize) -> Self {
        Self {
            stream,
            batch: Default::default(),
            batched: 0,
            backlog: Vec::new(),
            max_backlog,
        }
    }

    /// Queues a line; it is written at the next [`flush`](Self::flush) (or now, when the batch
    /// is full).
    pub fn queue(&mut self, line: Bytes) -> Result<(), WriteError> {
        if self.batched == BATCH {
            self.flush()?;
        }
        self.batch[self.batched] = Some(line);
        self.batched += 1;
        Ok(())
    }

    /// Hands the queued lines to the kernel without waiting; what it does not take joins the
    /// backlog, written when the socket is writable again.
    pub fn flush(&mut self) -> Result<(), WriteError> {
        if self.batched == 0 {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.batch);
        let count = std::mem::take(&mut self.batched);
        let lines = lines.iter().take(count).flatten();
        if !self.backlog.is_empty() {
            // Order: nothing may overtake what is already waiting.
            for line in lines {
                self.backlog.extend_from_slice(line);
            }
            return self.write_backlog();
        }
        let mut slices = [IoSlice::new(&[]); BATCH];
        let mut total = 0;
        for (slot, line) in slices.iter_mut().zip(lines.clone()) {
            *slot = IoSlice::new(line);
            total += line.len();
        }
        let written = match self.stream.try_write_vectored(&slices[..count]) {
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => 0,
            Err(error) => return Err(WriteError::Io(error)),
        };
        if written < total {
            let mut skip = written;
            for line in lines {
                if skip >= line.len() {
                    skip -= line.len();
                    continue;
                }
                self.backlog.extend_from_slice(&line[skip..]);
                skip = 0;
            }
        }
        self.check_backlog()
    }

    /// Whether bytes wait for the socket to become writable.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Ready when the socket has bytes (or its end) to read, or, while bytes wait, may take
    /// more of them. A poll function rather than `TcpStream::ready`'s future: the session's
    /// task is its only caller, and the future (168 bytes) would sit in every miner's task.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_backlog()
            && let Poll::Ready(result) = self.stream.poll_write_ready(cx)
        {
            return Poll::Ready(result);
        }
        self.stream.poll_read_ready(cx)
    }

    /// Ready when the socket may take more of the backlog.
    pub async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Writes as much of the backlog as the kernel takes now.
    pub fn write_backlog(&mut self) -> Result<(), WriteError> {
        while !self.backlog.is_empty() {
            match self.stream.try_write(&self.backlog) {
                Ok(0) => return Err(WriteError::Io(io::ErrorKind::WriteZero.into())),
                Ok(written) => {
                    self.backlog.drain(..written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(WriteError::Io(error)),
            }
        }
        if self.backlog.is_empty() {
            // A miner that caught up holds no buffer.
            self.backlog = Vec::new();
        }
        self.check_backlog()
    }

    fn check_backlog(&self) -> Result<(), WriteError> {
        if self.backlog.len() > self.max_backlog {
            Err(WriteError::SlowReader)
        } else {
            Ok(())
        }
    }

    /// Reads what the socket has into `buffer` without waiting (0: the miner closed).
    pub fn try_read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.stream.try_read(buffer)?;
        if read > 0 && read < buffer.len() {
            // A short read drained the socket (epoll reports new bytes as a new event): clear
            // the readiness now rather than pay a read that would only say "would block".
            let _ = self.stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        Ok(read)
    }

    /// The session is over: writes what is queued and waiting, for at most `grace` (a miner
    /// that does not read must not keep a task and a socket), then closes the sending side.
    pub async fn finish(mut self, grace: Duration) {
        if self.flush().is_err() && self.backlog.is_empty() {
            return;
        }
        let drained = tokio::time::timeout(grace, async {
            while self.has_backlog() {
                if self.writable().await.is_err() {
                    return false;
                }
                if let Err(WriteError::Io(_)) = self.write_backlog() {
                    return false;
                }
            }
            true
        })
        .await;
        if drained == Ok(true) {
            let _ = self.stream.shutdown().await;
        }
    }
}

/// A line that began in one read and has not ended yet; empty (and unallocated) between lines.
pub(super) struct PartialLine {
    bytes: Vec<u8>,
    max_line: usize,
}

impl PartialLine {
    /// Lines up to `max_line` bytes (without the newline).
    pub fn new(max_line: usize) -> Self {
        Self {
            bytes: Vec::new(),
            max_line,
        }
    }

    /// The longest line allowed.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Whether a line is begun.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Keeps the start of a line, refusing it once it is longer than the limit.
    pub fn keep(&mut self, start: &[u8]) -> Result<(), FrameError> {
        if self.bytes.len() + start.len() > self.max_line {
            return Err(FrameError::LineTooLong {
                limit: self.max_line,
            });
        }
        self.bytes.extend_from_slice(start);
        Ok(())
    }

    /// The begun line completed by `end`, leaving this empty.
    pub fn complete(&mut self, end: &[u8]) -> Result<Vec<u8>, FrameError> {
        self.keep(end)?;
        Ok(std::mem::take(&mut self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn lines_arrive_in_order_and_a_caught_up_miner_holds_no_buffer() {
        let (server, mut client) = pair().await;
        let mut io = MinerIo::new(server, 1 << 20);
        io.stream.writable().await.unwrap();
        let mut expected = Vec::new();
        for i in 0..10 {
            let line = format!("{{\"id\":{i}}}\n");
            expected.extend_from_slice(line.as_bytes());
            io.queue(Bytes::from(line)).unwrap();
        }
        io.flush().unwrap();
        while io.has_backlog() {
            io.writable().await.unwrap();
            io.write_backlog().unwrap();
        }
        assert_eq!(io.backlog.capacity(), 0);
        let mut received = vec![0; expected.len()];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn a_miner_that_does_not_read_is_a_slow_reader_after_the_bound_in_bytes() {
        let (server, _client) = pair().await;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        let mut io = MinerIo::new(server, 64 * 1024);
        io.stream.writable().await.unwrap();
        let line = Bytes::from(vec![b'x'; 1000]);
        let mut outcome = Ok(());
        for _ in 0..10_000 {
            outcome = io.queue(line.clone()).and_then(|()| io.flush());
            if outcome.is_err() {
                break;
            }
        }
        assert!(
            matches!(outcome, Err(WriteError::SlowReader)),
            "{outcome:?}"
        );
        assert!(io.backlog.len() <= 64 * 1024 + 4 * 1000);
    }

    #[test]
    fn a_partial_line_is_bounded_and_freed_when_complete() {
        let mut partial = PartialLine::new(10);
        partial.keep(b"{\"id\"").unwrap();
        assert_eq!(partial.complete(b":1}").unwrap(), b"{\"id\":1}");
        assert!(partial.is_empty() && partial.bytes.capacity() == 0);
        partial.keep(b"0123456789").unwrap();
        assert!(matches!(
            partial.keep(b"a"),
            Err(FrameError::LineTooLong { limit: 10 })
        ));
    }
}
