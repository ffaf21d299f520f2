//! The miner's writer task: the one place bytes go to the socket.

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Write buffer per miner: batches replies and a job into one write; a longer line (a job with a
/// large coinbase) bypasses it.
const WRITE_BUFFER: usize = 2048;

/// Writes queued lines, batching whatever is queued into one flush; ends when the queue closes
/// (the session is gone) or the socket fails.
pub(super) async fn write_lines(write: OwnedWriteHalf, mut lines: mpsc::Receiver<Bytes>) {
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, write);
    while let Some(line) = lines.recv().await {
        if writer.write_all(&line).await.is_err() {
            return;
        }
        while let Ok(line) = lines.try_recv() {
            if writer.write_all(&line).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
