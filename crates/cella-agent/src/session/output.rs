//! The output pump: one per stdout / stderr pipe (or pty master) of a session.
//!
//! It forwards bytes as `Stdout` / `Stderr` frames of at most [`DATA_CHUNK`] bytes and never
//! more than the stream's credit ([`Window`]); with no credit it stops reading, which stalls the
//! process (see the window's module doc).
//!
//! End of output: normally end of file, once the process and everything that inherited the pipe
//! closed it. But a background grandchild may hold the pipe open forever, so once the session's
//! process has exited the pump switches to draining mode:
//! - it keeps reading while data keeps coming, but gives up after [`EXIT_DRAIN_GRACE`] without
//!   any new byte;
//! - it gives up after [`POST_EXIT_MAX_BYTES`] bytes read after the exit (the pipe and pty
//!   buffers hold far less, so more than that means a live writer, not leftovers);
//! - waiting for *credit* is never cut short: bytes the process wrote before it exited are
//!   delivered however slowly the host consumes them.
//!
//! Abandoning a pipe closes the agent's read end; a writer still holding it gets `EPIPE`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cella_protocol::{Frame, FrameKind, DATA_CHUNK};
use tokio::sync::{mpsc, watch};

use super::window::Window;
use crate::fdio::FdStream;

/// How long after the process exited a silent output pipe is still waited for.
pub const EXIT_DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Bytes forwarded after the process exited before the pump stops reading anyway. A default pipe
/// holds 64 KiB (at most 1 MiB after `F_SETPIPE_SZ`), a pty about 4 KiB.
pub const POST_EXIT_MAX_BYTES: u64 = 1 << 20;

/// Why a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// End of file: every writer closed the pipe.
    Eof,
    /// The process had exited and the pipe stayed open (see the module doc).
    Abandoned,
    /// The frame writer is gone: the host connection is closed.
    HostGone,
}

/// Forwards one output stream of a session to the host.
#[derive(Debug)]
pub struct OutputPump {
    /// The pipe read end or pty master.
    pub src: Arc<FdStream>,
    /// `Stdout` or `Stderr`.
    pub kind: FrameKind,
    /// Session stream id.
    pub stream: u64,
    /// Credit for this stream.
    pub window: Arc<Window>,
    /// The frame writer.
    pub out: mpsc::Sender<Frame>,
    /// Becomes `true` when the session's process has exited.
    pub exited: watch::Receiver<bool>,
}

enum Chunk {
    Data(usize),
    End(PumpEnd),
}

impl OutputPump {
    /// Runs until end of file, abandonment or host loss.
    pub async fn run(mut self) -> PumpEnd {
        let mut buf = vec![0u8; DATA_CHUNK];
        let mut after_exit: u64 = 0;
        loop {
            let budget = self.window.available().await.min(DATA_CHUNK as u64) as usize;
            let n = match self.read_chunk(&mut buf[..budget]).await {
                Chunk::Data(n) => n,
                Chunk::End(end) => return end,
            };
            self.window.consume(n as u64);
            let frame = Frame::new(self.kind, self.stream, Bytes::copy_from_slice(&buf[..n]));
            if self.out.send(frame).await.is_err() {
                return PumpEnd::HostGone;
            }
            if *self.exited.borrow() {
                after_exit += n as u64;
                if after_exit >= POST_EXIT_MAX_BYTES {
                    return PumpEnd::Abandoned;
                }
            }
        }
    }

    async fn read_chunk(&mut self, buf: &mut [u8]) -> Chunk {
        if !*self.exited.borrow() {
            tokio::select! {
                result = self.src.read(buf) => return interpret(result),
                // Exited (or the session is going away): fall through to a bounded read.
                _ = self.exited.changed() => {}
            }
        }
        match tokio::time::timeout(EXIT_DRAIN_GRACE, self.src.read(buf)).await {
            Ok(result) => interpret(result),
            Err(_elapsed) => Chunk::End(PumpEnd::Abandoned),
        }
    }
}

/// A pty master reports the slave's last close as `EIO`: that is its end of file.
fn interpret(result: io::Result<usize>) -> Chunk {
    match result {
        Ok(0) => Chunk::End(PumpEnd::Eof),
        Ok(n) => Chunk::Data(n),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Chunk::End(PumpEnd::Eof),
        Err(e) => {
            crate::log_debug!("output read failed: {e}");
            Chunk::End(PumpEnd::Eof)
        }
    }
}
