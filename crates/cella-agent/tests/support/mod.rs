//! A fake host for driving the agent's protocol server over an in-memory duplex stream.
//!
//! The agent side runs the real [`cella_agent::serve`] with a registered-children reaper, so
//! every test spawns real processes on the test machine through the real session code.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cella_agent::{serve, ReapScope, Reaper, ServeError, ServeOptions, ServeOutcome};
use cella_protocol::{
    Credit, ErrorMessage, ExecStart, ExecStarted, Exited, Frame, FrameCodec, FrameKind, Hello,
    HelloAck, Message, StreamId, WindowSize, CONTROL_STREAM, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// How long any single expected frame may take.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// The host end of a connection to a running agent server.
pub struct Host {
    pub conn: Framed<DuplexStream, FrameCodec>,
    pub server: JoinHandle<Result<ServeOutcome, ServeError>>,
    pub hello: Hello,
    pub root: tempfile::TempDir,
}

/// Everything one session sent, in order.
#[derive(Debug, Default)]
pub struct SessionLog {
    pub started: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exited: Option<Exited>,
    pub kinds: Vec<FrameKind>,
    pub errors: Vec<ErrorMessage>,
}

impl Host {
    /// Starts a server and completes the handshake (heartbeats off).
    pub async fn start() -> Host {
        Self::start_with(0).await
    }

    /// Starts a server and completes the handshake with this heartbeat interval.
    pub async fn start_with(heartbeat_interval_ms: u64) -> Host {
        let root = test_root();
        let (host_end, agent_end) = tokio::io::duplex(1 << 20);
        let reaper = Reaper::start(ReapScope::Registered).unwrap();
        let opts = ServeOptions {
            root: root.path().to_path_buf(),
            host_gone_grace: Duration::from_millis(500),
            ..ServeOptions::default()
        };
        let server = tokio::spawn(serve(agent_end, reaper, opts));
        let mut conn = Framed::new(host_end, FrameCodec::new());
        let first = next(&mut conn).await;
        let hello = Hello::from_frame(&first).expect("first frame is Hello");
        let ack = HelloAck { protocol_version: PROTOCOL_VERSION, heartbeat_interval_ms };
        conn.send(ack.to_frame(CONTROL_STREAM).unwrap()).await.unwrap();
        Host { conn, server, hello, root }
    }

    pub async fn send(&mut self, frame: Frame) {
        self.conn.send(frame).await.expect("agent connection open");
    }

    pub async fn send_msg(&mut self, stream: u64, msg: &impl Message) {
        self.send(msg.to_frame(stream).unwrap()).await;
    }

    pub async fn exec(&mut self, stream: u64, argv: &[&str]) {
        self.send_msg(stream, &request(argv)).await;
    }

    pub async fn next(&mut self) -> Frame {
        next(&mut self.conn).await
    }

    /// The next frame, or `None` if none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        match tokio::time::timeout(wait, self.conn.next()).await {
            Ok(Some(frame)) => Some(frame.expect("agent frames decode")),
            _ => None,
        }
    }

    /// Collects one session's frames until its `Exited`, granting output credit as it goes
    /// when `auto_credit` is set. Frames of other streams are ignored.
    pub async fn run_to_exit(&mut self, stream: u64, auto_credit: bool) -> SessionLog {
        let mut log = SessionLog::default();
        while log.exited.is_none() {
            let frame = self.next().await;
            if frame.stream != stream {
                continue;
            }
            self.record(&mut log, &frame, auto_credit).await;
        }
        log
    }

    pub async fn record(&mut self, log: &mut SessionLog, frame: &Frame, auto_credit: bool) {
        log.kinds.push(frame.kind);
        match frame.kind {
            FrameKind::ExecStarted => {
                log.started = Some(ExecStarted::from_frame(frame).unwrap().pid);
            }
            FrameKind::Stdout | FrameKind::Stderr => {
                let (buf, id) = if frame.kind == FrameKind::Stdout {
                    (&mut log.stdout, StreamId::Stdout)
                } else {
                    (&mut log.stderr, StreamId::Stderr)
                };
                buf.extend_from_slice(&frame.payload);
                if auto_credit {
                    let credit = Credit { stream: id, bytes: frame.payload.len() as u32 };
                    self.send_msg(frame.stream, &credit).await;
                }
            }
            FrameKind::Exited => log.exited = Some(Exited::from_frame(frame).unwrap()),
            FrameKind::Error => log.errors.push(ErrorMessage::from_frame(frame).unwrap()),
            _ => {}
        }
    }

    /// Sends `data` as stdin, never exceeding the stdin window, consuming the agent's stdin
    /// credits and recording any other frame of the stream into `log`.
    pub async fn write_stdin(&mut self, stream: u64, data: &[u8], log: &mut SessionLog) {
        let mut in_flight: u64 = 0;
        let mut chunks = data.chunks(20_000);
        let mut pending = chunks.next();
        while let Some(chunk) = pending {
            if in_flight + chunk.len() as u64 <= u64::from(cella_protocol::INITIAL_WINDOW) {
                let frame = Frame::new(FrameKind::Stdin, stream, Bytes::copy_from_slice(chunk));
                self.send(frame).await;
                in_flight += chunk.len() as u64;
                pending = chunks.next();
                continue;
            }
            let frame = self.next().await;
            if frame.stream != stream {
                continue;
            }
            if frame.kind == FrameKind::Credit {
                let credit = Credit::from_frame(&frame).unwrap();
                assert_eq!(credit.stream, StreamId::Stdin);
                in_flight -= u64::from(credit.bytes);
            } else {
                self.record(log, &frame, true).await;
            }
        }
    }
}

pub async fn next(conn: &mut Framed<DuplexStream, FrameCodec>) -> Frame {
    tokio::time::timeout(FRAME_TIMEOUT, conn.next())
        .await
        .expect("agent answered in time")
        .expect("agent connection open")
        .expect("agent frames decode")
}

pub fn request(argv: &[&str]) -> ExecStart {
    ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: None,
        user: None,
        tty: None,
    }
}

pub fn tty_request(argv: &[&str], rows: u16, cols: u16) -> ExecStart {
    ExecStart { tty: Some(WindowSize { rows, cols }), ..request(argv) }
}

/// A root with its own passwd and group, so HOME and users are predictable.
pub fn test_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/fakeroot:/bin/sh\nalice:x:4321:4322::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.path().join("etc/group"), "root:x:0:\nextra:x:777:alice\n").unwrap();
    root
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn write_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Whether a process with this pid still exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
        Err(_) => false,
    }
}
