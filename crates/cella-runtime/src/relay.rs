//! The relay: many clients on the sandbox socket, one agent on the console port.
//!
//! Each client that connects is given its own range of stream ids in a [`Welcome`] and may only
//! use ids inside it, so agent frames route back to the right client by their id alone, without
//! rewriting. The relay keeps the set of live sessions and forwards only frames that belong to
//! one: a guest cannot inject frames into a stream no client opened, and a client cannot touch
//! another client's sessions.
//!
//! Memory stays bounded: every queue is a bounded channel, and an honest agent never has more
//! than its flow-control window in flight per stream. A hostile agent that ignores its window
//! fills a client's queue, and then the relay stops reading the port until that client catches
//! up: the guest stalls itself, the host does not grow. The cost is that one slow client can
//! delay the others; per-client fairness would need per-client buffering with its own bound.
//!
//! When a client disconnects, its live sessions are killed (SIGKILL to their process groups) and
//! their remaining output is drained and discarded, with credit granted back so the agent can
//! finish them and report their exit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cella_protocol::{
    Credit, ErrorCode, ErrorMessage, Exited, Frame, FrameCodec, FrameKind, Goodbye, Heartbeat,
    Hello, Message, ProtocolError, Shutdown, SignalRequest, StreamId, Welcome, CONTROL_STREAM,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::ratelimit::RateLimiter;

/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 64;
/// Most live sessions one client may hold.
pub const MAX_SESSIONS_PER_CLIENT: usize = 256;
/// Frames queued towards one client before the relay waits for it.
const CLIENT_QUEUE_FRAMES: usize = 64;
/// Frames queued towards the agent before senders wait.
const GUEST_QUEUE_FRAMES: usize = 256;
/// Each client owns `1 << STREAM_BITS` stream ids, starting at `index << STREAM_BITS`.
const STREAM_BITS: u32 = 32;
/// Longest guest-provided text the relay puts in a log line.
const MAX_LOGGED_TEXT: usize = 200;

/// What the relay is doing, for the supervisor's idle and detach decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Clients connected now.
    pub clients: usize,
    /// Exec sessions running now.
    pub sessions: usize,
    /// Clients that ever connected.
    pub clients_total: u64,
    /// When the count of clients or sessions last changed.
    pub changed_at: Option<Instant>,
}

impl Activity {
    /// No client and no session.
    pub fn is_idle(&self) -> bool {
        self.clients == 0 && self.sessions == 0
    }
}

/// Something the supervisor must act on.
#[derive(Debug)]
pub enum RelayEvent {
    /// The agent sent its final frame (already acknowledged).
    Goodbye(Goodbye),
    /// The port closed or the agent broke the protocol; the relay has stopped reading it.
    AgentGone(Option<RelayError>),
    /// A client asked the sandbox to shut down, giving its processes `grace` between SIGTERM
    /// and SIGKILL (the sandbox process caps it).
    ShutdownRequested {
        /// What the client asked for.
        grace: std::time::Duration,
    },
}

/// A protocol violation by the agent.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The byte stream from the agent could not be decoded.
    #[error("agent sent an undecodable frame")]
    Decode(#[source] ProtocolError),
    /// The agent sent a frame kind that it never may send.
    #[error("agent sent a {kind:?} frame on stream {stream}, which agents never send")]
    UnexpectedFrame {
        /// The kind.
        kind: FrameKind,
        /// The stream.
        stream: u64,
    },
}

struct State {
    next_client: u64,
    clients: HashMap<u64, mpsc::Sender<Frame>>,
    /// Live sessions by stream id.
    sessions: HashSet<u64>,
    accepting: bool,
    goodbye_seen: bool,
    activity: Activity,
}

struct Shared {
    state: Mutex<State>,
    activity: watch::Sender<Activity>,
    heartbeat: watch::Sender<Instant>,
    events: mpsc::Sender<RelayEvent>,
    guest: mpsc::Sender<Frame>,
    agent: Hello,
    log_limit: Mutex<RateLimiter>,
}

/// Handle to a running relay.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

/// Receivers the supervisor watches.
pub struct RelayWatch {
    /// Lifecycle events.
    pub events: mpsc::Receiver<RelayEvent>,
    /// Connected clients and live sessions.
    pub activity: watch::Receiver<Activity>,
    /// Time of the agent's last heartbeat (or of the handshake).
    pub heartbeat: watch::Receiver<Instant>,
}

fn client_of(stream: u64) -> u64 {
    stream >> STREAM_BITS
}

impl Relay {
    /// Starts relaying over an agent port whose handshake is done. Spawns the port's reader and
    /// writer tasks on the current runtime.
    pub fn start(
        reader: FramedRead<impl tokio::io::AsyncRead + Send + Unpin + 'static, FrameCodec>,
        writer: FramedWrite<impl tokio::io::AsyncWrite + Send + Unpin + 'static, FrameCodec>,
        agent: Hello,
    ) -> (Relay, RelayWatch) {
        let (guest_tx, guest_rx) = mpsc::channel(GUEST_QUEUE_FRAMES);
        let (events_tx, events) = mpsc::channel(16);
        let (activity_tx, activity) = watch::channel(Activity::default());
        let (heartbeat_tx, heartbeat) = watch::channel(Instant::now());
        let state = State {
            next_client: 1,
            clients: HashMap::new(),
            sessions: HashSet::new(),
            accepting: true,
            goodbye_seen: false,
            activity: Activity::default(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            activity: activity_tx,
            heartbeat: heartbeat_tx,
            events: events_tx,
            guest: guest_tx,
            agent,
            log_limit: Mutex::new(RateLimiter::for_guest_logs()),
        });
        tokio::spawn(write_guest(writer, guest_rx));
        tokio::spawn(read_guest(reader, shared.clone()));
        (Relay { shared }, RelayWatch { events, activity, heartbeat })
    }

    /// Serves one client connection until it disconnects.
    pub async fn serve_client(&self, stream: UnixStream) {
        let (read_half, write_half) = stream.into_split();
        let mut writer = FramedWrite::new(write_half, FrameCodec::new());
        let Some((index, rx)) = self.register_client() else {
            let refusal =
                ErrorMessage { code: ErrorCode::Exhausted, message: "too many clients".into() };
            if let Ok(frame) = refusal.to_frame(CONTROL_STREAM) {
                let _ = writer.send(frame).await;
            }
            return;
        };
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            first_stream: index << STREAM_BITS,
            stream_count: 1 << STREAM_BITS,
            agent: self.shared.agent.clone(),
        };
        let write_task = tokio::spawn(write_client(writer, rx, welcome));
        self.read_client(index, FramedRead::new(read_half, FrameCodec::new())).await;
        self.unregister_client(index).await;
        write_task.abort();
    }

    /// Whether the agent has said its final goodbye. Set before the goodbye is acknowledged, so
    /// it is already true when a guest that powers off right after the acknowledgement is gone.
    pub fn goodbye_seen(&self) -> bool {
        self.shared.state.lock().unwrap().goodbye_seen
    }

    /// Stops taking new sessions and asks the agent to end everything and power off.
    pub async fn request_shutdown(&self, grace: Duration) {
        self.shared.state.lock().unwrap().accepting = false;
        let request = Shutdown { grace_ms: grace.as_millis() as u64 };
        if let Ok(frame) = request.to_frame(CONTROL_STREAM) {
            let _ = self.shared.guest.send(frame).await;
        }
    }

    fn register_client(&self) -> Option<(u64, mpsc::Receiver<Frame>)> {
        let mut state = self.shared.state.lock().unwrap();
        if state.clients.len() >= MAX_CLIENTS {
            return None;
        }
        let index = state.next_client;
        state.next_client += 1;
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE_FRAMES);
        state.clients.insert(index, tx);
        state.activity.clients_total += 1;
        self.shared.publish(&mut state);
        Some((index, rx))
    }

    async fn unregister_client(&self, index: u64) {
        let orphans: Vec<u64> = {
            let mut state = self.shared.state.lock().unwrap();
            state.clients.remove(&index);
            self.shared.publish(&mut state);
            state.sessions.iter().copied().filter(|s| client_of(*s) == index).collect()
        };
        for stream in orphans {
            let kill = SignalRequest { signal: libc::SIGKILL };
            if let Ok(frame) = kill.to_frame(stream) {
                let _ = self.shared.guest.send(frame).await;
            }
        }
    }

    async fn read_client(
        &self,
        index: u64,
        mut reader: FramedRead<tokio::net::unix::OwnedReadHalf, FrameCodec>,
    ) {
        while let Some(next) = reader.next().await {
            let Ok(frame) = next else {
                tracing::debug!(
                    client = index,
                    "client sent an undecodable frame; disconnecting it"
                );
                return;
            };
            if let Err(refusal) = self.route_client_frame(index, frame).await {
                let (stream, error) = refusal;
                if let Ok(frame) = error.to_frame(stream) {
                    if self.shared.send_to_client(index, frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Checks one client frame and forwards it to the agent, or says why not.
    async fn route_client_frame(
        &self,
        index: u64,
        frame: Frame,
    ) -> Result<(), (u64, ErrorMessage)> {
        let refuse = |code, message: &str| {
            Err((frame.stream, ErrorMessage { code, message: message.into() }))
        };
        if frame.stream == CONTROL_STREAM {
            if frame.kind == FrameKind::Shutdown {
                let Ok(request) = Shutdown::from_frame(&frame) else {
                    return refuse(ErrorCode::BadRequest, "malformed Shutdown request");
                };
                let grace = std::time::Duration::from_millis(request.grace_ms);
                let _ = self.shared.events.send(RelayEvent::ShutdownRequested { grace }).await;
                return Ok(());
            }
            return refuse(ErrorCode::Forbidden, "clients may only send Shutdown on stream 0");
        }
        if client_of(frame.stream) != index {
            return refuse(ErrorCode::Forbidden, "stream id outside this client's range");
        }
        match frame.kind {
            FrameKind::ExecStart => self.open_session(index, frame.stream)?,
            FrameKind::Stdin
            | FrameKind::StdinClose
            | FrameKind::Signal
            | FrameKind::Resize
            | FrameKind::Credit => {
                if !self.shared.state.lock().unwrap().sessions.contains(&frame.stream) {
                    // The session ended while the client was still writing to it: not an error.
                    return Ok(());
                }
            }
            _ => return refuse(ErrorCode::Forbidden, "frame kind not allowed from clients"),
        }
        let _ = self.shared.guest.send(frame).await;
        Ok(())
    }

    fn open_session(&self, index: u64, stream: u64) -> Result<(), (u64, ErrorMessage)> {
        let refuse =
            |code, message: &str| Err((stream, ErrorMessage { code, message: message.into() }));
        let mut state = self.shared.state.lock().unwrap();
        if !state.accepting {
            return refuse(ErrorCode::ShuttingDown, "the sandbox is shutting down");
        }
        if state.sessions.contains(&stream) {
            return refuse(ErrorCode::SessionExists, "stream id already in use");
        }
        let owned = state.sessions.iter().filter(|s| client_of(**s) == index).count();
        if owned >= MAX_SESSIONS_PER_CLIENT {
            return refuse(ErrorCode::Exhausted, "too many sessions on this connection");
        }
        state.sessions.insert(stream);
        self.shared.publish(&mut state);
        Ok(())
    }
}

impl Shared {
    fn publish(&self, state: &mut State) {
        state.activity.clients = state.clients.len();
        state.activity.sessions = state.sessions.len();
        state.activity.changed_at = Some(Instant::now());
        self.activity.send_replace(state.activity);
    }

    async fn send_to_client(&self, index: u64, frame: Frame) -> Result<(), Frame> {
        let tx = self.state.lock().unwrap().clients.get(&index).cloned();
        match tx {
            Some(tx) => tx.send(frame).await.map_err(|e| e.0),
            None => Err(frame),
        }
    }

    fn warn_guest(&self, what: &str, detail: &str) {
        if let Some(suppressed) = self.log_limit.lock().unwrap().check() {
            let detail: String = detail.chars().take(MAX_LOGGED_TEXT).collect();
            tracing::warn!(suppressed, detail = %detail, "{what}");
        }
    }

    /// Handles a frame the agent sent on a session stream.
    async fn route_agent_frame(&self, frame: Frame) -> Result<(), RelayError> {
        match frame.kind {
            FrameKind::ExecStarted
            | FrameKind::Stdout
            | FrameKind::Stderr
            | FrameKind::Credit
            | FrameKind::Error
            | FrameKind::Exited => {}
            kind => return Err(RelayError::UnexpectedFrame { kind, stream: frame.stream }),
        }
        let live = self.state.lock().unwrap().sessions.contains(&frame.stream);
        if !live {
            self.warn_guest(
                "dropping agent frame for a stream with no live session",
                &format!("{:?} on {}", frame.kind, frame.stream),
            );
            return Ok(());
        }
        if frame.kind == FrameKind::Exited {
            if let Err(e) = Exited::from_frame(&frame) {
                self.warn_guest("agent sent a malformed exit frame", &e.to_string());
            }
            let mut state = self.state.lock().unwrap();
            state.sessions.remove(&frame.stream);
            self.publish(&mut state);
        }
        let (stream, kind, len) = (frame.stream, frame.kind, frame.payload.len());
        if self.send_to_client(client_of(stream), frame).await.is_err() {
            self.drain_orphan(stream, kind, len).await;
        }
        Ok(())
    }

    /// Output for a session whose client is gone: discard it and grant the credit back so the
    /// agent can finish the session.
    async fn drain_orphan(&self, stream: u64, kind: FrameKind, len: usize) {
        let which = match kind {
            FrameKind::Stdout => StreamId::Stdout,
            FrameKind::Stderr => StreamId::Stderr,
            _ => return,
        };
        if let Ok(frame) = (Credit { stream: which, bytes: len as u32 }).to_frame(stream) {
            let _ = self.guest.send(frame).await;
        }
    }

    /// Handles a frame the agent sent on the control stream.
    async fn control_frame(&self, frame: Frame) -> Result<(), RelayError> {
        match frame.kind {
            FrameKind::Heartbeat => {
                if Heartbeat::from_frame(&frame).is_ok() {
                    self.heartbeat.send_replace(Instant::now());
                } else {
                    self.warn_guest("agent sent a malformed heartbeat", "");
                }
            }
            FrameKind::Goodbye => {
                let first = !std::mem::replace(&mut self.state.lock().unwrap().goodbye_seen, true);
                let goodbye = Goodbye::from_frame(&frame).unwrap_or(Goodbye { killed_sessions: 0 });
                let _ = self
                    .guest
                    .send(Frame::new(FrameKind::GoodbyeAck, CONTROL_STREAM, Vec::new()))
                    .await;
                if first {
                    let _ = self.events.send(RelayEvent::Goodbye(goodbye)).await;
                }
            }
            FrameKind::Error => {
                let text = ErrorMessage::from_frame(&frame).map(|e| e.message).unwrap_or_default();
                self.warn_guest("agent reported an error on the control stream", &text);
            }
            kind => return Err(RelayError::UnexpectedFrame { kind, stream: CONTROL_STREAM }),
        }
        Ok(())
    }
}

async fn read_guest(
    mut reader: FramedRead<impl tokio::io::AsyncRead + Unpin, FrameCodec>,
    shared: Arc<Shared>,
) {
    let outcome = loop {
        let frame = match reader.next().await {
            None => break None,
            Some(Err(e)) => break Some(RelayError::Decode(e)),
            Some(Ok(frame)) => frame,
        };
        let routed = if frame.stream == CONTROL_STREAM {
            shared.control_frame(frame).await
        } else {
            shared.route_agent_frame(frame).await
        };
        if let Err(e) = routed {
            break Some(e);
        }
    };
    {
        let mut state = shared.state.lock().unwrap();
        state.accepting = false;
        // Dropping the senders ends every client's writer, which closes its connection.
        state.clients.clear();
        state.sessions.clear();
        shared.publish(&mut state);
    }
    let _ = shared.events.send(RelayEvent::AgentGone(outcome)).await;
}

async fn write_guest(
    mut writer: FramedWrite<impl tokio::io::AsyncWrite + Unpin, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some(frame) = rx.recv().await {
        if let Err(e) = writer.send(frame).await {
            tracing::debug!(error = %e, "agent port write failed");
            return;
        }
    }
}

async fn write_client(
    mut writer: FramedWrite<tokio::net::unix::OwnedWriteHalf, FrameCodec>,
    mut rx: mpsc::Receiver<Frame>,
    welcome: Welcome,
) {
    let Ok(frame) = welcome.to_frame(CONTROL_STREAM) else { return };
    if writer.send(frame).await.is_err() {
        return;
    }
    while let Some(frame) = rx.recv().await {
        if writer.send(frame).await.is_err() {
            return;
        }
    }
}
