//! A client connection to a running sandbox, and exec sessions over it.
//!
//! The sandbox process greets every client with a `Welcome` that assigns it a range of stream
//! ids; each exec session takes the next id of that range. Output is written to the caller's
//! sinks as it arrives and credit is granted back only after the bytes were written, so a slow
//! reader on the host pauses the guest process instead of growing a buffer. Stdin is sent only
//! within the credit the agent granted.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cella_protocol::{
    Credit, ErrorMessage, ExecStart, Exited, Frame, FrameCodec, FrameKind, Message, Shutdown,
    SignalRequest, StreamId, Welcome, WindowSize, CONTROL_STREAM, DATA_CHUNK, INITIAL_WINDOW,
    PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::ClientError;

/// One connection to a sandbox's socket.
pub struct Connection {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    welcome: Welcome,
    next_stream: u64,
}

/// How long a sandbox process has to accept a connection and send its welcome. It answers in
/// microseconds when alive; one that does not (stopped, or wedged) must not hang the client.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

impl Connection {
    /// Connects to the sandbox socket at `path` and reads its welcome, waiting at most
    /// [`WELCOME_TIMEOUT`].
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        match tokio::time::timeout(WELCOME_TIMEOUT, Self::connect_unbounded(path)).await {
            Ok(connected) => connected,
            Err(_) => {
                Err(ClientError::Unresponsive { path: path.to_path_buf(), waited: WELCOME_TIMEOUT })
            }
        }
    }

    async fn connect_unbounded(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.to_path_buf(), source })?;
        let (read_half, write_half) = stream.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::new());
        let writer = FramedWrite::new(write_half, FrameCodec::new());
        let frame = next_frame(&mut reader).await?;
        if frame.kind == FrameKind::Error {
            let refusal = ErrorMessage::from_frame(&frame)?;
            return Err(ClientError::Refused { message: refusal.message });
        }
        let welcome = Welcome::from_frame(&frame)?;
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(cella_protocol::ProtocolError::VersionMismatch {
                host: PROTOCOL_VERSION,
                agent: welcome.protocol_version,
            }));
        }
        let next_stream = welcome.first_stream;
        Ok(Self { reader, writer, welcome, next_stream })
    }

    /// The relay's greeting (includes the agent's version and capabilities).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Asks the sandbox to shut down in order, giving its processes `grace` between SIGTERM
    /// and SIGKILL (the sandbox caps it at its own default of 3 s).
    pub async fn request_shutdown(&mut self, grace: Duration) -> Result<(), ClientError> {
        let request = Shutdown { grace_ms: grace.as_millis().min(u64::MAX as u128) as u64 };
        self.writer.send(request.to_frame(CONTROL_STREAM)?).await?;
        Ok(())
    }

    /// Runs one process to completion, streaming its stdio to and from the given endpoints.
    ///
    /// Signal numbers received on `signals` are delivered to the process. Returns how it ended.
    pub async fn exec(
        &mut self,
        request: ExecStart,
        io: ExecIo<'_>,
    ) -> Result<Exited, ClientError> {
        let stream = self.next_stream;
        self.next_stream += 1;
        self.writer.send(request.to_frame(stream)?).await?;
        let mut pump = Pump {
            stream,
            stdin_credit: INITIAL_WINDOW as usize,
            stdin_open: io.stdin.is_some(),
            closed_sinks: [false; 2],
            last_sigpipe: None,
        };
        pump.run(&mut self.reader, &mut self.writer, io).await
    }
}

/// Where an exec session's bytes come from and go to.
pub struct ExecIo<'a> {
    /// Source of the process's stdin; `None` closes it at once.
    pub stdin: Option<&'a mut (dyn AsyncRead + Unpin + Send)>,
    /// Sink of the process's stdout.
    pub stdout: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Sink of the process's stderr.
    pub stderr: &'a mut (dyn AsyncWrite + Unpin + Send),
    /// Signals to deliver to the process.
    pub signals: Option<&'a mut mpsc::Receiver<i32>>,
    /// Window size changes to apply (tty sessions).
    pub resizes: Option<&'a mut mpsc::Receiver<WindowSize>>,
}

/// Least time between two SIGPIPEs sent for output that had nowhere to go.
const SIGPIPE_INTERVAL: Duration = Duration::from_millis(500);

struct Pump {
    stream: u64,
    stdin_credit: usize,
    stdin_open: bool,
    /// stdout / stderr whose reader has gone (EPIPE): their output is dropped.
    closed_sinks: [bool; 2],
    /// When the command was last sent SIGPIPE for writing to a closed sink.
    last_sigpipe: Option<Instant>,
}

impl Pump {
    async fn run(
        &mut self,
        reader: &mut FramedRead<OwnedReadHalf, FrameCodec>,
        writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
        mut io: ExecIo<'_>,
    ) -> Result<Exited, ClientError> {
        if io.stdin.is_none() {
            writer.send(Frame::new(FrameKind::StdinClose, self.stream, Bytes::new())).await?;
        }
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let want_stdin = self.stdin_open && self.stdin_credit > 0;
            tokio::select! {
                frame = next_frame(reader) => {
                    if let Some(exited) = self.on_frame(frame?, writer, &mut io).await? {
                        return Ok(exited);
                    }
                }
                read = read_some(&mut io.stdin, &mut buf[..self.stdin_credit.min(DATA_CHUNK)]), if want_stdin => {
                    self.on_stdin(read, &buf, writer).await?;
                }
                Some(signal) = recv_opt(&mut io.signals) => {
                    writer.send(SignalRequest { signal }.to_frame(self.stream)?).await?;
                }
                Some(size) = recv_opt(&mut io.resizes) => {
                    writer.send(size.to_frame(self.stream)?).await?;
                }
            }
        }
    }

    async fn on_stdin(
        &mut self,
        read: std::io::Result<usize>,
        buf: &[u8],
        writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
    ) -> Result<(), ClientError> {
        match read {
            Ok(0) | Err(_) => {
                self.stdin_open = false;
                writer.send(Frame::new(FrameKind::StdinClose, self.stream, Bytes::new())).await?;
            }
            Ok(n) => {
                self.stdin_credit -= n;
                let data = Bytes::copy_from_slice(&buf[..n]);
                writer.send(Frame::new(FrameKind::Stdin, self.stream, data)).await?;
            }
        }
        Ok(())
    }

    async fn on_frame(
        &mut self,
        frame: Frame,
        writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
        io: &mut ExecIo<'_>,
    ) -> Result<Option<Exited>, ClientError> {
        if frame.stream != self.stream {
            // Frames of other sessions of this connection, or a stray reply: not ours.
            return Ok(None);
        }
        match frame.kind {
            FrameKind::Stdout | FrameKind::Stderr => {
                let (sink, which, slot) = if frame.kind == FrameKind::Stdout {
                    (&mut *io.stdout, StreamId::Stdout, 0)
                } else {
                    (&mut *io.stderr, StreamId::Stderr, 1)
                };
                if !self.closed_sinks[slot] && !write_output(sink, &frame.payload).await? {
                    self.closed_sinks[slot] = true;
                }
                if self.closed_sinks[slot] {
                    self.sigpipe(writer).await?;
                }
                let credit = Credit { stream: which, bytes: frame.payload.len() as u32 };
                writer.send(credit.to_frame(self.stream)?).await?;
            }
            FrameKind::Credit => {
                let credit = Credit::from_frame(&frame)?;
                if credit.stream == StreamId::Stdin {
                    let limit = INITIAL_WINDOW as usize;
                    self.stdin_credit = (self.stdin_credit + credit.bytes as usize).min(limit);
                }
            }
            FrameKind::Exited => {
                io.stdout.flush().await.ok();
                io.stderr.flush().await.ok();
                return Ok(Some(Exited::from_frame(&frame)?));
            }
            FrameKind::Error => {
                let error = ErrorMessage::from_frame(&frame)?;
                return Err(ClientError::Session { code: error.code, message: error.message });
            }
            _ => {}
        }
        Ok(None)
    }
}

impl Pump {
    /// The command wrote to a sink whose reader has gone: on a host it would get SIGPIPE from
    /// that write, so it gets SIGPIPE here (at most every [`SIGPIPE_INTERVAL`]). A command that
    /// ignores it goes on, its output dropped, as it would with EPIPE.
    async fn sigpipe(
        &mut self,
        writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
    ) -> Result<(), ClientError> {
        if self.last_sigpipe.is_some_and(|at| at.elapsed() < SIGPIPE_INTERVAL) {
            return Ok(());
        }
        self.last_sigpipe = Some(Instant::now());
        writer.send(SignalRequest { signal: libc::SIGPIPE }.to_frame(self.stream)?).await?;
        Ok(())
    }
}

/// Writes one chunk of output. Returns false when the sink is closed (a pipe whose reader
/// left): not an error for the session, the bytes are dropped.
async fn write_output(
    sink: &mut (dyn AsyncWrite + Unpin + Send),
    data: &[u8],
) -> Result<bool, ClientError> {
    // tokio's stdout writes on a background thread: a failed write surfaces in the flush.
    let written = match sink.write_all(data).await {
        Ok(()) => sink.flush().await,
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(ClientError::Output(e)),
    }
}

async fn next_frame(
    reader: &mut FramedRead<OwnedReadHalf, FrameCodec>,
) -> Result<Frame, ClientError> {
    match reader.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(ClientError::Protocol(e)),
        None => Err(ClientError::Disconnected),
    }
}

async fn read_some(
    src: &mut Option<&mut (dyn AsyncRead + Unpin + Send)>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match src {
        Some(src) => src.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn recv_opt<T>(rx: &mut Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
