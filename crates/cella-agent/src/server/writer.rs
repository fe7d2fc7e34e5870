//! The writer task: the only code that writes to the host connection.
//!
//! Frames arrive on a bounded queue ([`OUT_QUEUE`] frames, each at most one data chunk or a
//! small control message), so a host that stops reading stalls the producers (pumps wait, so
//! processes block on their pipes) instead of growing memory. Frames that are already queued
//! are written in one batch before a flush, which keeps the port busy under load.
//!
//! When a write fails the task ends and drops the queue; every later send fails, which the
//! dispatcher sees as the host being gone.

use cella_protocol::{Frame, FrameCodec};
use futures::SinkExt;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;

/// Frames queued for the port at most.
pub const OUT_QUEUE: usize = 64;

/// Frames written per flush at most.
const MAX_BATCH: usize = 16;

/// Starts the writer on `sink` and returns its queue.
pub(super) fn start<W: AsyncWrite + Send + 'static>(sink: W) -> mpsc::Sender<Frame> {
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    tokio::spawn(run(sink, rx));
    tx
}

async fn run<W: AsyncWrite>(sink: W, mut rx: mpsc::Receiver<Frame>) {
    let mut sink = std::pin::pin!(FramedWrite::new(sink, FrameCodec::new()));
    while let Some(frame) = rx.recv().await {
        let mut result = sink.feed(frame).await;
        let mut batch = 1;
        while result.is_ok() && batch < MAX_BATCH {
            match rx.try_recv() {
                Ok(frame) => result = sink.feed(frame).await,
                Err(_) => break,
            }
            batch += 1;
        }
        if result.is_ok() {
            result = sink.flush().await;
        }
        if let Err(e) = result {
            crate::log_warn!("writing to the host failed: {e}");
            return;
        }
    }
}
