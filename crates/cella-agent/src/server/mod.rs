//! The protocol server: the agent's side of the host connection.
//!
//! [`serve`] owns the connection from `Hello` to `Goodbye`. It is generic over the byte stream,
//! so the same code serves the virtio-console port in a guest and an in-memory duplex in tests.
//!
//! Structure (one task each, no shared mutable state between them except through queues):
//! - the **writer** task (`writer.rs`) is the only code that writes the port, fed by a bounded
//!   queue; every frame of every session goes through it, so per-session frame order is queue
//!   order;
//! - the **dispatcher** (this module and `route.rs`) is the only code that reads the port. It
//!   routes each frame to its session and never blocks on a session: stdin is queued (bounded by
//!   the stdin window), credits and controls are applied or queued immediately;
//! - one **session** task per exec ([`crate::session`]).
//!
//! Shutdown (`drain.rs`): on `Shutdown` the dispatcher keeps serving frames (the host must still
//! be able to grant credit so output drains) while it signals everyone, then says `Goodbye`
//! and waits for the ack. On end of file or a read error it does the same without the farewell.
//! A frame that does not decode means the stream is out of sync: [`serve`] returns
//! [`ServeError::Desync`] and the caller powers off, since there is no way to resynchronise.

mod drain;
mod handshake;
mod route;
mod writer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use cella_protocol::{Frame, FrameCodec, Heartbeat, Message, ProtocolError, CONTROL_STREAM};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;

use crate::reaper::Reaper;
use crate::session::{SessionContext, SessionEvent, SessionHandle};

/// Most exec sessions alive at once; more are refused with `Exhausted`.
pub const MAX_SESSIONS: usize = 1024;

/// Finished stream ids remembered so that late frames for them (stdin racing the exit) are
/// dropped silently instead of answered with `UnknownSession`.
pub const RECENT_STREAMS: usize = 1024;

/// Smallest heartbeat interval honoured, whatever the host asks for.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// How the agent is deployed, which decides what shutdown may touch.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Root whose `etc/passwd` resolves users (`/` in the guest).
    pub root: PathBuf,
    /// At shutdown, also signal every process on the system (`kill(-1)`): only as PID 1.
    pub kill_all: bool,
    /// How long processes get between SIGTERM and SIGKILL when the host disappears.
    pub host_gone_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { root: PathBuf::from("/"), kill_all: false, host_gone_grace: Duration::from_secs(1) }
    }
}

/// How serving ended normally. Either way the caller powers off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeOutcome {
    /// The host asked for shutdown and the farewell completed (or timed out).
    Shutdown,
    /// The connection ended (end of file or I/O error) without a shutdown request.
    HostGone,
}

/// Serving failed in a way the connection cannot recover from.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A frame did not decode: the byte stream is out of sync.
    #[error("host stream out of sync")]
    Desync(#[source] ProtocolError),
    /// A frame of the agent's own could not be encoded.
    #[error("cannot encode a frame")]
    Encode(#[source] ProtocolError),
    /// The host's `HelloAck` was malformed.
    #[error("bad HelloAck from host")]
    BadHelloAck(#[source] ProtocolError),
    /// The host speaks another protocol version.
    #[error("host speaks protocol {host}, agent speaks {agent}")]
    VersionMismatch {
        /// The host's version.
        host: u32,
        /// Ours.
        agent: u32,
    },
}

/// Serves the host connection on `port` until shutdown or disconnect.
pub async fn serve<P>(
    port: P,
    reaper: Reaper,
    opts: ServeOptions,
) -> Result<ServeOutcome, ServeError>
where
    P: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(port);
    let out = writer::start(write_half);
    let mut reader = FramedRead::new(read_half, FrameCodec::new());

    let Some(ack) = handshake::run(&out, &mut reader).await? else {
        crate::log_warn!("host closed the connection during the handshake");
        return Ok(ServeOutcome::HostGone);
    };
    let heartbeat = (ack.heartbeat_interval_ms > 0).then(|| {
        let period = Duration::from_millis(ack.heartbeat_interval_ms).max(MIN_HEARTBEAT);
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    crate::log_info!("host connected, heartbeat {:?} ms", ack.heartbeat_interval_ms);

    let mut dispatcher = Dispatcher::new(out, reaper, opts, heartbeat);
    dispatcher.run(&mut reader).await
}

type Reader<P> = FramedRead<ReadHalf<P>, FrameCodec>;

/// Why a dispatch loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The host asked for shutdown with this grace period.
    Shutdown(Duration),
    /// The connection is gone.
    HostGone,
    /// The loop's deadline passed.
    Deadline,
    /// The loop's completion condition holds.
    Done,
}

/// The dispatcher's state.
struct Dispatcher {
    out: mpsc::Sender<Frame>,
    sessions: HashMap<u64, SessionHandle>,
    recent: RecentStreams,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    ctx: SessionContext,
    opts: ServeOptions,
    heartbeat: Option<Interval>,
    draining: bool,
    goodbye_acked: bool,
}

impl Dispatcher {
    fn new(
        out: mpsc::Sender<Frame>,
        reaper: Reaper,
        opts: ServeOptions,
        heartbeat: Option<Interval>,
    ) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let ctx =
            SessionContext { out: out.clone(), events: events_tx, reaper, root: opts.root.clone() };
        Self {
            out,
            sessions: HashMap::new(),
            recent: RecentStreams::default(),
            events,
            ctx,
            opts,
            heartbeat,
            draining: false,
            goodbye_acked: false,
        }
    }

    async fn run<P: AsyncRead>(
        &mut self,
        reader: &mut Reader<P>,
    ) -> Result<ServeOutcome, ServeError> {
        match self.dispatch(reader, None, |_| false).await? {
            Stop::Shutdown(grace) => self.shutdown(reader, grace).await,
            _ => Ok(self.host_gone().await),
        }
    }

    /// Serves frames, session events and heartbeats until `done` holds, the deadline passes,
    /// the host asks for shutdown or the connection ends.
    async fn dispatch<P: AsyncRead>(
        &mut self,
        reader: &mut Reader<P>,
        deadline: Option<Instant>,
        done: impl Fn(&Self) -> bool,
    ) -> Result<Stop, ServeError> {
        let deadline = deadline.unwrap_or_else(far_future);
        loop {
            if done(self) {
                return Ok(Stop::Done);
            }
            tokio::select! {
                frame = reader.next() => match frame {
                    Some(Ok(frame)) => {
                        if let Some(grace) = self.route(frame).await {
                            return Ok(Stop::Shutdown(grace));
                        }
                    }
                    Some(Err(ProtocolError::Io(e))) => {
                        crate::log_warn!("host connection failed: {e}");
                        return Ok(Stop::HostGone);
                    }
                    Some(Err(e)) => return Err(ServeError::Desync(e)),
                    None => return Ok(Stop::HostGone),
                },
                Some(event) = self.events.recv() => self.on_event(event),
                _ = tick(&mut self.heartbeat) => self.send_heartbeat().await,
                _ = self.out.closed() => return Ok(Stop::HostGone),
                _ = tokio::time::sleep_until(deadline) => return Ok(Stop::Deadline),
            }
        }
    }

    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::ProcessExited(stream) => {
                if let Some(session) = self.sessions.get_mut(&stream) {
                    session.running = false;
                }
            }
            SessionEvent::Ended(stream) => {
                self.sessions.remove(&stream);
                self.recent.insert(stream);
            }
        }
    }

    async fn send_heartbeat(&mut self) {
        let beat = Heartbeat {
            uptime_ms: crate::console::uptime_ms(),
            sessions: self.sessions.len() as u32,
        };
        self.send(&beat, CONTROL_STREAM).await;
    }

    async fn send(&self, message: &impl Message, stream: u64) {
        match message.to_frame(stream) {
            Ok(frame) => drop(self.out.send(frame).await),
            Err(e) => crate::log_error!("stream {stream}: cannot encode frame: {e}"),
        }
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// A bounded memory of recently finished stream ids.
#[derive(Debug, Default)]
struct RecentStreams {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl RecentStreams {
    fn insert(&mut self, stream: u64) {
        if self.set.insert(stream) {
            self.order.push_back(stream);
            if self.order.len() > RECENT_STREAMS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, stream: u64) {
        if self.set.remove(&stream) {
            self.order.retain(|s| *s != stream);
        }
    }

    fn contains(&self, stream: u64) -> bool {
        self.set.contains(&stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_streams_forget_the_oldest_beyond_the_bound() {
        let mut recent = RecentStreams::default();
        for s in 0..(RECENT_STREAMS as u64 + 5) {
            recent.insert(s);
        }
        assert!(!recent.contains(0));
        assert!(!recent.contains(4));
        assert!(recent.contains(5));
        recent.remove(5);
        assert!(!recent.contains(5));
        assert_eq!(recent.order.len(), recent.set.len());
    }
}
