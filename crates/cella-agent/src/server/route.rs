//! Routing one host frame: control frames on stream 0, session frames on their stream.
//!
//! A well-framed but invalid request (bad JSON, a kind the host may not send, an unknown
//! session) is answered with an `Error` frame on its stream and otherwise ignored: the stream is
//! still in sync, so the connection survives. Frames for a session that just ended are dropped
//! without an answer (see [`super::RECENT_STREAMS`]), so a host whose stdin races the exit never
//! sees a frame after `Exited` on that stream. Nothing here is logged above debug level: every
//! path is triggerable by the host.

use std::time::Duration;

use bytes::Bytes;
use cella_protocol::{
    Credit, ErrorCode, ErrorMessage, ExecStart, Frame, FrameKind, Message, Shutdown, SignalRequest,
    StreamId, WindowSize, CONTROL_STREAM,
};

use super::{Dispatcher, MAX_SESSIONS};
use crate::session::{self, stdin::StdinMsg, Control, SessionHandle};

/// Highest signal number `Signal` may carry (`SIGRTMAX` on Linux).
const MAX_SIGNAL: i32 = 64;

impl Dispatcher {
    /// Handles one frame; returns the grace period when it is a shutdown request.
    pub(super) async fn route(&mut self, frame: Frame) -> Option<Duration> {
        if frame.stream == CONTROL_STREAM {
            return self.route_control(frame).await;
        }
        let stream = frame.stream;
        let result = match frame.kind {
            FrameKind::ExecStart => self.exec_start(&frame),
            FrameKind::Stdin => self.stdin(stream, frame.payload),
            FrameKind::StdinClose => {
                self.session(stream).map(|s| drop(s.stdin.send(StdinMsg::Close)))
            }
            FrameKind::Signal => self.signal(&frame),
            FrameKind::Resize => self.resize(&frame),
            FrameKind::Credit => self.credit(&frame),
            kind => {
                Err(Some(bad_request(format!("{kind:?} is not a host-to-agent session frame"))))
            }
        };
        if let Err(Some(error)) = result {
            crate::log_debug!("stream {stream}: refused {:?}: {}", frame.kind, error.message);
            self.send(&error, stream).await;
        }
        None
    }

    async fn route_control(&mut self, frame: Frame) -> Option<Duration> {
        match frame.kind {
            FrameKind::Shutdown if !self.draining => match Shutdown::from_frame(&frame) {
                Ok(req) => return Some(Duration::from_millis(req.grace_ms)),
                Err(e) => self.send(&bad_request(e.to_string()), CONTROL_STREAM).await,
            },
            // A repeated request while already shutting down changes nothing.
            FrameKind::Shutdown => {}
            FrameKind::GoodbyeAck => self.goodbye_acked = true,
            kind => {
                let error = bad_request(format!("{kind:?} is not valid on the control stream"));
                self.send(&error, CONTROL_STREAM).await;
            }
        }
        None
    }

    fn exec_start(&mut self, frame: &Frame) -> Result<(), Option<ErrorMessage>> {
        let stream = frame.stream;
        if self.draining {
            return Err(Some(error(ErrorCode::ShuttingDown, "the agent is shutting down")));
        }
        if self.sessions.contains_key(&stream) {
            return Err(Some(error(
                ErrorCode::SessionExists,
                format!("stream {stream} is in use"),
            )));
        }
        if self.sessions.len() >= MAX_SESSIONS {
            let message = format!("at most {MAX_SESSIONS} sessions at once");
            return Err(Some(error(ErrorCode::Exhausted, message)));
        }
        let request = ExecStart::from_frame(frame).map_err(|e| Some(bad_request(e.to_string())))?;
        crate::log_debug!("stream {stream}: exec {:?}", request.argv);
        self.recent.remove(stream);
        let handle = session::start(stream, request, self.ctx.clone());
        self.sessions.insert(stream, handle);
        Ok(())
    }

    fn stdin(&mut self, stream: u64, payload: Bytes) -> Result<(), Option<ErrorMessage>> {
        let session = self.session(stream)?;
        if payload.is_empty() {
            return Ok(());
        }
        if !session.stdin_counter.accept(payload.len()) {
            return Err(Some(bad_request("stdin beyond the granted window; data dropped")));
        }
        let len = payload.len();
        if session.stdin.send(StdinMsg::Data(payload)).is_err() {
            session.stdin_counter.release(len);
        }
        Ok(())
    }

    fn signal(&mut self, frame: &Frame) -> Result<(), Option<ErrorMessage>> {
        let session = self.session(frame.stream)?;
        let req = SignalRequest::from_frame(frame).map_err(|e| Some(bad_request(e.to_string())))?;
        if !(1..=MAX_SIGNAL).contains(&req.signal) {
            return Err(Some(bad_request(format!("invalid signal number {}", req.signal))));
        }
        let _ = session.control.send(Control::Signal(req.signal));
        Ok(())
    }

    fn resize(&mut self, frame: &Frame) -> Result<(), Option<ErrorMessage>> {
        let session = self.session(frame.stream)?;
        let size = WindowSize::from_frame(frame).map_err(|e| Some(bad_request(e.to_string())))?;
        let _ = session.control.send(Control::Resize(size));
        Ok(())
    }

    fn credit(&mut self, frame: &Frame) -> Result<(), Option<ErrorMessage>> {
        let session = self.session(frame.stream)?;
        let credit = Credit::from_frame(frame).map_err(|e| Some(bad_request(e.to_string())))?;
        match credit.stream {
            StreamId::Stdout => session.stdout_window.grant(credit.bytes),
            StreamId::Stderr => session.stderr_window.grant(credit.bytes),
            StreamId::Stdin => {
                return Err(Some(bad_request("stdin credit flows from the agent to the host")))
            }
        }
        Ok(())
    }

    /// The live session on `stream`; `Err(None)` (drop silently) if it just ended,
    /// `Err(Some(UnknownSession))` if it never existed.
    fn session(&self, stream: u64) -> Result<&SessionHandle, Option<ErrorMessage>> {
        match self.sessions.get(&stream) {
            Some(session) => Ok(session),
            None if self.recent.contains(stream) => Err(None),
            None => Err(Some(error(
                ErrorCode::UnknownSession,
                format!("no session on stream {stream}"),
            ))),
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
    ErrorMessage { code, message: message.into() }
}

fn bad_request(message: impl Into<String>) -> ErrorMessage {
    error(ErrorCode::BadRequest, message)
}
