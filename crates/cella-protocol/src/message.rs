//! Typed payloads of the control frames.
//!
//! Control payloads are small JSON documents. Every struct rejects unknown fields: a peer that
//! speaks a different dialect fails loudly instead of having half its request ignored. Data
//! frames (stdin, stdout, stderr) carry raw bytes and have no type here.
//!
//! Strings and lists that the guest controls are bounded by the frame size ([`MAX_PAYLOAD`]);
//! receivers apply their own tighter limits where they keep the value (for example, the host
//! truncates a guest's error message before it logs it).
//!
//! [`MAX_PAYLOAD`]: crate::frame::MAX_PAYLOAD

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::frame::{Frame, FrameKind};

/// A control message that travels as JSON in a frame of a fixed kind.
pub trait Message: Serialize + DeserializeOwned {
    /// The frame kind that carries this message.
    const KIND: FrameKind;

    /// Wraps the message in a frame for `stream`.
    fn to_frame(&self, stream: u64) -> Result<Frame, ProtocolError> {
        let payload = serde_json::to_vec(self)
            .map_err(|source| ProtocolError::Encode { kind: Self::KIND, source })?;
        Ok(Frame::new(Self::KIND, stream, payload))
    }

    /// Parses the message out of a frame, checking the frame's kind first.
    fn from_frame(frame: &Frame) -> Result<Self, ProtocolError> {
        if frame.kind != Self::KIND {
            return Err(ProtocolError::UnexpectedKind { expected: Self::KIND, got: frame.kind });
        }
        serde_json::from_slice(&frame.payload)
            .map_err(|source| ProtocolError::Decode { kind: Self::KIND, source })
    }
}

macro_rules! message {
    ($ty:ty, $kind:ident) => {
        impl Message for $ty {
            const KIND: FrameKind = FrameKind::$kind;
        }
    };
}

/// First frame from the agent: who it is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version the agent speaks ([`crate::PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// The agent's own version string, for diagnostics.
    pub agent_version: String,
    /// Optional features the agent supports (for example `"exec"`, `"tty"`).
    pub capabilities: Vec<String>,
    /// Guest uptime in milliseconds when the agent said hello: how long the kernel took to boot.
    pub uptime_ms: u64,
}
message!(Hello, Hello);

/// The host's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloAck {
    /// Protocol version the host speaks.
    pub protocol_version: u32,
    /// How often the agent should send a [`Heartbeat`], in milliseconds; 0 disables it.
    pub heartbeat_interval_ms: u64,
}
message!(HelloAck, HelloAck);

/// Terminal window size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}
message!(WindowSize, Resize);

/// Start one process in a new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStart {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment of the process, in order; later entries win.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` means `/`.
    pub cwd: Option<String>,
    /// User name or numeric uid to run as; `None` means root.
    pub user: Option<String>,
    /// Run on a pseudo-terminal of this size; `None` gives separate stdout and stderr pipes.
    pub tty: Option<WindowSize>,
}
message!(ExecStart, ExecStart);

/// The session's process was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStarted {
    /// Guest pid of the process.
    pub pid: u32,
}
message!(ExecStarted, ExecStarted);

/// Deliver a signal to the session's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Linux signal number.
    pub signal: i32,
}
message!(SignalRequest, Signal);

/// Why a process could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpawnFailure {
    /// The program does not exist in the guest's root (exit status 127).
    NotFound,
    /// The program exists but cannot be executed (exit status 126).
    NotExecutable,
    /// Anything else: bad working directory, unknown user, resource exhaustion (exit status 125).
    Other,
}

impl SpawnFailure {
    /// Exit status a shell would report for this failure.
    pub fn exit_status(self) -> i32 {
        match self {
            SpawnFailure::NotFound => 127,
            SpawnFailure::NotExecutable => 126,
            SpawnFailure::Other => 125,
        }
    }
}

/// How a session ended. Exactly one per session, and always the session's last agent frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Exited {
    /// The process exited with this code.
    Code {
        /// Exit code, 0..=255.
        code: i32,
    },
    /// The process was killed by this signal.
    Signal {
        /// Linux signal number.
        signal: i32,
    },
    /// The process never started.
    SpawnFailed {
        /// Classification, which decides the exit status.
        reason: SpawnFailure,
        /// Human-readable detail from the guest (untrusted; bound it before printing).
        message: String,
    },
}

impl Exited {
    /// The exit status a container CLI reports for this ending: the code, `128 + signal`, or
    /// 126 / 127 / 125 for spawn failures. The signal comes from the guest, so the sum saturates
    /// instead of overflowing.
    pub fn exit_status(&self) -> i32 {
        match self {
            Exited::Code { code } => *code,
            Exited::Signal { signal } => 128i32.saturating_add(*signal),
            Exited::SpawnFailed { reason, .. } => reason.exit_status(),
        }
    }
}
message!(Exited, Exited);

/// Which byte stream of a session a [`Credit`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamId {
    /// The process's standard input (credit flows agent -> host).
    Stdin,
    /// The process's standard output (credit flows host -> agent).
    Stdout,
    /// The process's standard error (credit flows host -> agent).
    Stderr,
}

/// Flow-control window update: the sender of this frame has consumed `bytes` more of `stream`,
/// so the peer may send that many more.
///
/// Every data stream starts with [`INITIAL_WINDOW`] bytes of credit. A producer never has more
/// than its window in flight, so neither side buffers more than that per stream.
///
/// [`INITIAL_WINDOW`]: crate::INITIAL_WINDOW
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credit {
    /// The stream the credit is for.
    pub stream: StreamId,
    /// Additional bytes the peer may send.
    pub bytes: u32,
}
message!(Credit, Credit);

/// Ask the agent to end every process and power the VM off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    /// Milliseconds between SIGTERM to the remaining processes and SIGKILL.
    pub grace_ms: u64,
}
message!(Shutdown, Shutdown);

/// The agent's final frame. It powers off once the host answers with `GoodbyeAck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goodbye {
    /// Sessions that were still running and had to be killed.
    pub killed_sessions: u32,
}
message!(Goodbye, Goodbye);

/// Periodic proof of life from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Guest uptime in milliseconds.
    pub uptime_ms: u64,
    /// Exec sessions currently running.
    pub sessions: u32,
}
message!(Heartbeat, Heartbeat);

/// What kind of failure an [`ErrorMessage`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid here (wrong kind for the stream's state, bad JSON).
    BadRequest,
    /// The stream id is not a live session.
    UnknownSession,
    /// The stream id is already in use.
    SessionExists,
    /// The relay refused the request (id outside the client's range, forbidden kind).
    Forbidden,
    /// The sandbox is shutting down and takes no new sessions.
    ShuttingDown,
    /// The peer ran out of a resource (too many sessions).
    Exhausted,
}

/// A request on a stream failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMessage {
    /// Classification.
    pub code: ErrorCode,
    /// Human-readable detail (untrusted when it comes from the guest).
    pub message: String,
}
message!(ErrorMessage, Error);

/// The relay's greeting to a client on the sandbox socket.
///
/// A client may only use stream ids in `[first_stream, first_stream + stream_count)`; the relay
/// routes every agent frame on those streams back to that client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// Protocol version the relay speaks.
    pub protocol_version: u32,
    /// First stream id this client owns.
    pub first_stream: u64,
    /// Number of stream ids this client owns.
    pub stream_count: u64,
    /// The agent's handshake, passed through.
    pub agent: Hello,
}
message!(Welcome, Welcome);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_frames() {
        let start = ExecStart {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: Some("/tmp".into()),
            user: None,
            tty: Some(WindowSize { rows: 24, cols: 80 }),
        };
        let frame = start.to_frame(5).unwrap();
        assert_eq!(frame.kind, FrameKind::ExecStart);
        assert_eq!(ExecStart::from_frame(&frame).unwrap(), start);

        let exited = Exited::SpawnFailed { reason: SpawnFailure::NotFound, message: "x".into() };
        assert_eq!(Exited::from_frame(&exited.to_frame(5).unwrap()).unwrap(), exited);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let frame = Frame::new(FrameKind::Signal, 1, &br#"{"signal":2,"extra":1}"#[..]);
        assert!(SignalRequest::from_frame(&frame).is_err());
    }

    #[test]
    fn wrong_kind_is_rejected() {
        let frame = Frame::new(FrameKind::Stdout, 1, &br#"{"signal":2}"#[..]);
        assert!(matches!(
            SignalRequest::from_frame(&frame),
            Err(ProtocolError::UnexpectedKind { .. })
        ));
    }

    #[test]
    fn exit_status_follows_container_convention() {
        assert_eq!(Exited::Code { code: 7 }.exit_status(), 7);
        assert_eq!(Exited::Signal { signal: 9 }.exit_status(), 137);
        let not_found = Exited::SpawnFailed { reason: SpawnFailure::NotFound, message: "".into() };
        assert_eq!(not_found.exit_status(), 127);
        let not_exec =
            Exited::SpawnFailed { reason: SpawnFailure::NotExecutable, message: "".into() };
        assert_eq!(not_exec.exit_status(), 126);
    }

    #[test]
    fn huge_guest_signal_does_not_overflow_exit_status() {
        // Caught by the fuzz harness (fuzz/decode_messages calls exit_status on every decoded
        // Exited): `128 + signal` overflowed, a panic with overflow checks and without them a
        // negative status that `cella run` clamped to exit 0.
        let frame = Frame::new(FrameKind::Exited, 5, &br#"{"signal":{"signal":2147483647}}"#[..]);
        let exited = Exited::from_frame(&frame).unwrap();
        assert_eq!(exited.exit_status(), i32::MAX);
        assert_eq!(Exited::Signal { signal: i32::MAX - 127 }.exit_status(), i32::MAX);
        assert_eq!(Exited::Signal { signal: i32::MIN }.exit_status(), i32::MIN + 128);
    }
}
