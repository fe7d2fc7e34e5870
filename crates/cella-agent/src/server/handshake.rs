//! The handshake: the agent says `Hello` first, the host answers `HelloAck`.
//!
//! The agent speaks first because the port only becomes writable once the host end is
//! connected: the blocked `Hello` is how the agent waits for its host. Frames other than
//! `HelloAck` before the handshake completes are refused with `BadRequest` (the host may not
//! start sessions before it has checked the agent's version).

use cella_protocol::{
    ErrorCode, ErrorMessage, Frame, FrameKind, Hello, HelloAck, Message, ProtocolError,
    CONTROL_STREAM, PROTOCOL_VERSION,
};
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::{Reader, ServeError};

/// Capabilities announced in `Hello`.
pub const CAPABILITIES: &[&str] = &["exec"];

/// Sends `Hello` and waits for the host's `HelloAck`; `None` if the host went away first.
pub(super) async fn run<P: AsyncRead>(
    out: &mpsc::Sender<Frame>,
    reader: &mut Reader<P>,
) -> Result<Option<HelloAck>, ServeError> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: crate::AGENT_VERSION.to_owned(),
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        uptime_ms: crate::console::uptime_ms(),
    };
    let frame = hello.to_frame(CONTROL_STREAM).map_err(ServeError::Encode)?;
    if out.send(frame).await.is_err() {
        return Ok(None);
    }

    loop {
        let frame = match reader.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(ProtocolError::Io(_))) | None => return Ok(None),
            Some(Err(e)) => return Err(ServeError::Desync(e)),
        };
        if frame.kind == FrameKind::HelloAck && frame.stream == CONTROL_STREAM {
            let ack = HelloAck::from_frame(&frame).map_err(ServeError::BadHelloAck)?;
            if ack.protocol_version != PROTOCOL_VERSION {
                return Err(ServeError::VersionMismatch {
                    host: ack.protocol_version,
                    agent: PROTOCOL_VERSION,
                });
            }
            return Ok(Some(ack));
        }
        let refusal = ErrorMessage {
            code: ErrorCode::BadRequest,
            message: format!("{:?} before the handshake completed", frame.kind),
        };
        if let Ok(reply) = refusal.to_frame(frame.stream) {
            if out.send(reply).await.is_err() {
                return Ok(None);
            }
        }
    }
}
