//! Ending the connection: the orderly `Shutdown` sequence and the host-gone path.
//!
//! Orderly shutdown, while still serving frames (output keeps draining under host credit):
//! 1. refuse new sessions; count the sessions whose process is still running (reported in
//!    `Goodbye { killed_sessions }`);
//! 2. SIGTERM every session's process group and, as PID 1, every process (`kill(-1)`);
//! 3. wait up to the host's grace for every session to send its `Exited`;
//! 4. SIGKILL whatever is left, wait up to [`KILL_WAIT`]; abort sessions that still have not
//!    finished (their output is lost: the host stopped granting credit or the writer stalled);
//! 5. send `Goodbye` and wait up to [`GOODBYE_ACK_TIMEOUT`] for `GoodbyeAck`.
//!
//! Host gone (end of file or read error): the same signals with [`ServeOptions::host_gone_grace`]
//! between them, waiting only for processes to exit (nobody is left to read their output), and
//! no farewell.
//!
//! [`ServeOptions::host_gone_grace`]: super::ServeOptions::host_gone_grace

use std::time::Duration;

use cella_protocol::{Goodbye, CONTROL_STREAM};
use tokio::io::AsyncRead;
use tokio::time::Instant;

use super::{Dispatcher, Reader, ServeError, ServeOutcome, Stop};
use crate::session::Control;

/// How long SIGKILLed sessions get to report before they are abandoned.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// How long the agent waits for the host to acknowledge `Goodbye`.
pub const GOODBYE_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest shutdown grace honoured, whatever the host asks for.
pub const MAX_GRACE: Duration = Duration::from_secs(600);

impl Dispatcher {
    /// The orderly shutdown sequence (see the module doc).
    pub(super) async fn shutdown<P: AsyncRead>(
        &mut self,
        reader: &mut Reader<P>,
        grace: Duration,
    ) -> Result<ServeOutcome, ServeError> {
        self.draining = true;
        // A session queues its `Ended` event right after its `Exited` frame, so anything the
        // host has seen end is in the queue by now: apply it before counting.
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event);
        }
        let killed = self.sessions.values().filter(|s| s.running).count() as u32;
        crate::log_info!("shutdown requested: {killed} running session(s), grace {grace:?}");

        let all_ended = |d: &Dispatcher| d.sessions.is_empty();
        self.signal_everyone(libc::SIGTERM);
        let deadline = Instant::now() + grace.min(MAX_GRACE);
        if self.dispatch(reader, Some(deadline), all_ended).await? == Stop::HostGone {
            return Ok(self.host_gone().await);
        }
        if !self.sessions.is_empty() {
            self.signal_everyone(libc::SIGKILL);
            let deadline = Instant::now() + KILL_WAIT;
            if self.dispatch(reader, Some(deadline), all_ended).await? == Stop::HostGone {
                return Ok(self.host_gone().await);
            }
        }
        self.abort_sessions();

        self.heartbeat = None;
        self.send(&Goodbye { killed_sessions: killed }, CONTROL_STREAM).await;
        let deadline = Instant::now() + GOODBYE_ACK_TIMEOUT;
        match self.dispatch(reader, Some(deadline), |d| d.goodbye_acked).await? {
            Stop::Done => crate::log_info!("host acknowledged goodbye"),
            _ => crate::log_warn!("no goodbye ack from the host"),
        }
        Ok(ServeOutcome::Shutdown)
    }

    /// Stops everything after the host disappeared (see the module doc).
    pub(super) async fn host_gone(&mut self) -> ServeOutcome {
        self.draining = true;
        crate::log_info!("host gone: stopping {} session(s)", self.sessions.len());
        let none_running = |d: &Dispatcher| d.sessions.values().all(|s| !s.running);
        self.signal_everyone(libc::SIGTERM);
        self.wait_events(Instant::now() + self.opts.host_gone_grace, none_running).await;
        if !none_running(self) {
            self.signal_everyone(libc::SIGKILL);
            self.wait_events(Instant::now() + KILL_WAIT, none_running).await;
        }
        self.abort_sessions();
        ServeOutcome::HostGone
    }

    /// Processes session events only (no host frames) until `done` or the deadline.
    async fn wait_events(&mut self, deadline: Instant, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event),
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Sends `signal` to every session's process group and, as PID 1, to every process.
    fn signal_everyone(&self, signal: i32) {
        for session in self.sessions.values() {
            let _ = session.control.send(Control::Signal(signal));
        }
        if self.opts.kill_all {
            // SAFETY: kill(2) with plain integers. As PID 1, kill(-1) reaches every process
            // except the agent itself; `kill_all` is only set in that mode.
            unsafe { libc::kill(-1, signal) };
        }
    }

    fn abort_sessions(&mut self) {
        for (stream, session) in self.sessions.drain() {
            crate::log_debug!("stream {stream}: abandoned at shutdown");
            session.task.abort();
        }
    }
}
