//! The stdin pump: host `Stdin` frames into the process's stdin pipe (or pty master).
//!
//! Flow control runs the other way from output: the host may have at most
//! [`cella_protocol::INITIAL_WINDOW`] bytes of stdin in flight. The dispatcher
//! counts bytes in ([`StdinCounter::accept`]) and refuses a frame that would exceed the window;
//! this pump counts them out once they are in the pipe (or discarded) and returns the same
//! amount to the host as `Credit { stream: Stdin }`. So the queue between the two never holds
//! more than one window, even though it is unbounded (it must not block the dispatcher while
//! one process does not read its stdin).
//!
//! `StdinClose` closes the pipe after everything queued before it was written. On a pty the
//! master cannot be closed without hanging up the terminal, so it sends the terminal's default
//! end-of-file character (Ctrl-D) instead. Data for a process that stopped reading (`EPIPE`) or
//! after a close is discarded, but still credited back until the session ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cella_protocol::{Credit, Frame, Message, StreamId, INITIAL_WINDOW};
use tokio::sync::mpsc;

use crate::fdio::FdStream;

/// The default terminal end-of-file character (`VEOF`, Ctrl-D).
pub const TTY_EOF: u8 = 0x04;

/// What the dispatcher queues for the stdin pump.
#[derive(Debug)]
pub enum StdinMsg {
    /// Bytes to write.
    Data(Bytes),
    /// The host's stdin ended.
    Close,
}

/// Bytes of stdin the host has in flight for one session, shared by dispatcher and pump.
#[derive(Debug, Default)]
pub struct StdinCounter(AtomicU64);

impl StdinCounter {
    /// Counts `len` incoming bytes; `false` (and nothing counted) if they exceed the window.
    pub fn accept(&self, len: usize) -> bool {
        let len = len as u64;
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                let next = cur.checked_add(len)?;
                (next <= u64::from(INITIAL_WINDOW)).then_some(next)
            })
            .is_ok()
    }

    /// Counts `len` bytes as written out.
    pub fn release(&self, len: usize) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            Some(cur.saturating_sub(len as u64))
        });
    }
}

/// Writes queued stdin to the process and credits it back.
#[derive(Debug)]
pub struct StdinPump {
    /// Pipe write end or pty master; `None` once closed or broken.
    pub dst: Option<Arc<FdStream>>,
    /// Whether `dst` is a pty master.
    pub tty: bool,
    /// Queue filled by the dispatcher.
    pub rx: mpsc::UnboundedReceiver<StdinMsg>,
    /// In-flight accounting shared with the dispatcher.
    pub counter: Arc<StdinCounter>,
    /// Session stream id.
    pub stream: u64,
    /// The frame writer.
    pub out: mpsc::Sender<Frame>,
}

impl StdinPump {
    /// Runs until the queue closes (the session ends) or the host is gone.
    pub async fn run(mut self) {
        while let Some(msg) = self.rx.recv().await {
            match msg {
                StdinMsg::Data(bytes) => {
                    self.write(&bytes).await;
                    self.counter.release(bytes.len());
                    if !self.credit(bytes.len()).await {
                        return;
                    }
                }
                StdinMsg::Close if self.tty => self.write(&[TTY_EOF]).await,
                StdinMsg::Close => self.dst = None,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        let Some(dst) = &self.dst else { return };
        if let Err(e) = dst.write_all(bytes).await {
            crate::log_debug!("stream {}: stdin write failed, discarding stdin: {e}", self.stream);
            self.dst = None;
        }
    }

    async fn credit(&self, len: usize) -> bool {
        let credit = Credit { stream: StreamId::Stdin, bytes: len as u32 };
        match credit.to_frame(self.stream) {
            Ok(frame) => self.out.send(frame).await.is_ok(),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_refuses_more_than_one_window_in_flight() {
        let counter = StdinCounter::default();
        assert!(counter.accept(INITIAL_WINDOW as usize - 10));
        assert!(!counter.accept(11));
        assert!(counter.accept(10));
        counter.release(100);
        assert!(counter.accept(100));
        assert!(!counter.accept(1));
    }
}
