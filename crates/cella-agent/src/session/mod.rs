//! One exec session: a process, its stdio pumps and its single exit report.
//!
//! The dispatcher ([`crate::server`]) creates a session with [`start`] and keeps the returned
//! [`SessionHandle`]; everything else happens in the session's own task:
//! 1. plan and spawn on a blocking thread (reading passwd and forking must not stall the
//!    runtime); a failure ends the session with `Exited::SpawnFailed`;
//! 2. send `ExecStarted { pid }`, then run the output pumps ([`output`]), the stdin pump
//!    ([`stdin`]) and the control queue (signals, resizes) concurrently;
//! 3. when the process has exited **and** the output pumps are done (end of file, or given up
//!    after the exit, see [`output`]), drop the stdin pump and send exactly one `Exited`.
//!
//! Invariant: `Exited` is the session's last frame. All of the session's frames go through the
//! one writer queue, and every future that could still queue one (the pumps) is finished or
//! dropped before `Exited` is queued.
//!
//! Signals go to the process group (the process is a session leader, so its pid is the group
//! id); a group id cannot be reused while the group exists, so a late signal can never hit an
//! unrelated process.

pub mod output;
pub mod stdin;
pub mod window;

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use cella_protocol::{
    ExecStart, ExecStarted, Exited, Frame, FrameKind, Message, SpawnFailure, WindowSize,
    INITIAL_WINDOW,
};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::output::{OutputPump, PumpEnd};
use self::stdin::{StdinCounter, StdinMsg, StdinPump};
use self::window::Window;
use crate::exec::{self, ChildStdio, Spawned};
use crate::fdio::FdStream;
use crate::reaper::{ProcessExit, Reaper};

/// Exit code reported when the reaper lost a process's status (it was reaped elsewhere).
pub const LOST_STATUS_CODE: i32 = 255;

/// Requests the dispatcher forwards to a running session.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Deliver this signal to the process group.
    Signal(i32),
    /// Resize the terminal.
    Resize(WindowSize),
}

/// What a session tells the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session's process has exited (its output may still be draining).
    ProcessExited(u64),
    /// The session sent its `Exited` frame and is gone.
    Ended(u64),
}

/// What the session task shares with the rest of the agent.
#[derive(Debug, Clone)]
pub struct SessionContext {
    /// The frame writer queue.
    pub out: mpsc::Sender<Frame>,
    /// Session events for the dispatcher.
    pub events: mpsc::UnboundedSender<SessionEvent>,
    /// The process reaper.
    pub reaper: Reaper,
    /// Root whose `etc/passwd` resolves users (`/` in the guest).
    pub root: PathBuf,
}

/// The dispatcher's side of a session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Signals and resizes.
    pub control: mpsc::UnboundedSender<Control>,
    /// Stdin data and close, bounded by `stdin_counter`.
    pub stdin: mpsc::UnboundedSender<StdinMsg>,
    /// Stdin bytes in flight.
    pub stdin_counter: Arc<StdinCounter>,
    /// Credit of the stdout stream.
    pub stdout_window: Arc<Window>,
    /// Credit of the stderr stream.
    pub stderr_window: Arc<Window>,
    /// The session task.
    pub task: JoinHandle<()>,
    /// Whether the process may still be running (cleared on [`SessionEvent::ProcessExited`]).
    pub running: bool,
}

/// Starts a session task for `request` on `stream`.
pub fn start(stream: u64, request: ExecStart, ctx: SessionContext) -> SessionHandle {
    let (control, control_rx) = mpsc::unbounded_channel();
    let (stdin, stdin_rx) = mpsc::unbounded_channel();
    let io = SessionIo {
        stdin_rx,
        stdin_counter: Arc::new(StdinCounter::default()),
        stdout_window: Arc::new(Window::new(INITIAL_WINDOW)),
        stderr_window: Arc::new(Window::new(INITIAL_WINDOW)),
    };
    let handle_parts =
        (io.stdin_counter.clone(), io.stdout_window.clone(), io.stderr_window.clone());
    let task = tokio::spawn(run(stream, request, ctx, control_rx, io));
    SessionHandle {
        control,
        stdin,
        stdin_counter: handle_parts.0,
        stdout_window: handle_parts.1,
        stderr_window: handle_parts.2,
        task,
        running: true,
    }
}

/// The session task's ends of the dispatcher's queues and windows.
struct SessionIo {
    stdin_rx: mpsc::UnboundedReceiver<StdinMsg>,
    stdin_counter: Arc<StdinCounter>,
    stdout_window: Arc<Window>,
    stderr_window: Arc<Window>,
}

async fn run(
    stream: u64,
    request: ExecStart,
    ctx: SessionContext,
    control: mpsc::UnboundedReceiver<Control>,
    io: SessionIo,
) {
    let exited = match spawn_process(request, &ctx).await {
        Err(exited) => exited,
        Ok(spawned) => {
            let started = ExecStarted { pid: spawned.pid.as_raw() as u32 };
            send(&ctx, stream, &started).await;
            supervise(stream, spawned, &ctx, control, io).await
        }
    };
    crate::log_debug!("stream {stream}: {exited:?}");
    send(&ctx, stream, &exited).await;
    let _ = ctx.events.send(SessionEvent::Ended(stream));
}

async fn spawn_process(request: ExecStart, ctx: &SessionContext) -> Result<Spawned, Exited> {
    let reaper = ctx.reaper.clone();
    let root = ctx.root.clone();
    let result = tokio::task::spawn_blocking(move || {
        let plan = exec::plan(&request, &root)?;
        exec::spawn(&plan, &reaper)
    })
    .await;
    match result {
        Ok(Ok(spawned)) => Ok(spawned),
        Ok(Err(err)) => Err(Exited::SpawnFailed { reason: err.failure(), message: err.message() }),
        Err(join) => Err(Exited::SpawnFailed {
            reason: SpawnFailure::Other,
            message: format!("agent spawn task failed: {join}"),
        }),
    }
}

/// Runs a started process's session until it may send `Exited`, which it returns.
async fn supervise(
    stream: u64,
    spawned: Spawned,
    ctx: &SessionContext,
    mut control: mpsc::UnboundedReceiver<Control>,
    io: SessionIo,
) -> Exited {
    let pid = spawned.pid;
    let mut exit_rx = spawned.exit;
    let (exited_tx, exited_rx) = watch::channel(false);
    let wired = match wire(stream, spawned.stdio, ctx, io, exited_rx) {
        Ok(wired) => wired,
        Err(e) => {
            crate::log_error!("stream {stream}: cannot watch the stdio of pid {pid}: {e}");
            signal_group(pid, libc::SIGKILL, false);
            return to_exited(exit_rx.await);
        }
    };
    let pty = wired.pty;
    let pumps = wired.pumps;
    let stdin = wired.stdin;
    tokio::pin!(pumps, stdin);

    let mut status: Option<Exited> = None;
    let (mut pumps_done, mut stdin_done, mut control_open) = (false, false, true);
    while status.is_none() || !pumps_done {
        tokio::select! {
            msg = control.recv(), if control_open => match msg {
                Some(Control::Signal(sig)) => signal_group(pid, sig, status.is_some()),
                Some(Control::Resize(size)) => resize(stream, pty.as_deref(), size),
                None => control_open = false,
            },
            result = &mut exit_rx, if status.is_none() => {
                status = Some(to_exited(result));
                let _ = exited_tx.send(true);
                let _ = ctx.events.send(SessionEvent::ProcessExited(stream));
            }
            _ = &mut pumps, if !pumps_done => pumps_done = true,
            _ = &mut stdin, if !stdin_done => stdin_done = true,
        }
    }
    // Leaving this scope drops the stdin pump: no Credit frame can follow the Exited frame.
    status.unwrap_or(Exited::Code { code: LOST_STATUS_CODE })
}

/// The pumps of a session, wired to its descriptors.
struct Wired<P, S> {
    pumps: P,
    stdin: S,
    pty: Option<Arc<FdStream>>,
}

/// A session's descriptors, registered with the reactor.
struct Fds {
    /// Where stdin goes: the pipe's write end or the pty master.
    stdin: Arc<FdStream>,
    /// The stdout pipe or the pty master.
    stdout: Arc<FdStream>,
    /// The stderr pipe; `None` on a pty.
    stderr: Option<Arc<FdStream>>,
    /// The pty master, for resizes.
    pty: Option<Arc<FdStream>>,
}

impl Fds {
    fn register(stdio: ChildStdio) -> std::io::Result<Self> {
        let stream = |fd| FdStream::new(fd).map(Arc::new);
        Ok(match stdio {
            ChildStdio::Pipes { stdin, stdout, stderr } => Fds {
                stdin: stream(stdin)?,
                stdout: stream(stdout)?,
                stderr: Some(stream(stderr)?),
                pty: None,
            },
            ChildStdio::Pty { master } => {
                let master = stream(master)?;
                Fds {
                    stdin: master.clone(),
                    stdout: master.clone(),
                    stderr: None,
                    pty: Some(master),
                }
            }
        })
    }
}

fn wire(
    stream: u64,
    stdio: ChildStdio,
    ctx: &SessionContext,
    io: SessionIo,
    exited: watch::Receiver<bool>,
) -> std::io::Result<Wired<impl Future<Output = ()>, impl Future<Output = ()>>> {
    let fds = Fds::register(stdio)?;
    let pump = |src: &Arc<FdStream>, kind, window: &Arc<Window>| OutputPump {
        src: src.clone(),
        kind,
        stream,
        window: window.clone(),
        out: ctx.out.clone(),
        exited: exited.clone(),
    };
    let stdout = pump(&fds.stdout, FrameKind::Stdout, &io.stdout_window);
    let stderr = fds.stderr.as_ref().map(|fd| pump(fd, FrameKind::Stderr, &io.stderr_window));
    let stdin = StdinPump {
        dst: Some(fds.stdin),
        tty: fds.pty.is_some(),
        rx: io.stdin_rx,
        counter: io.stdin_counter,
        stream,
        out: ctx.out.clone(),
    };
    let pumps = async move {
        let (out, err) = match stderr {
            Some(stderr) => tokio::join!(stdout.run(), stderr.run()),
            None => (stdout.run().await, PumpEnd::Eof),
        };
        crate::log_debug!("stream {stream}: output ended: stdout {out:?}, stderr {err:?}");
    };
    Ok(Wired { pumps, stdin: stdin.run(), pty: fds.pty })
}

fn to_exited(result: Result<ProcessExit, oneshot::error::RecvError>) -> Exited {
    match result {
        Ok(ProcessExit::Code(code)) => Exited::Code { code },
        Ok(ProcessExit::Signal(signal)) => Exited::Signal { signal },
        Err(_) => {
            crate::log_warn!("exit status lost (reaped elsewhere)");
            Exited::Code { code: LOST_STATUS_CODE }
        }
    }
}

/// Signals the process group; falls back to the process itself while it has not been reaped.
pub fn signal_group(pid: Pid, signal: i32, reaped: bool) {
    // SAFETY: kill(2) takes plain integers; the group id is our child's pid, still reserved.
    let rc = unsafe { libc::kill(-pid.as_raw(), signal) };
    if rc < 0 && nix::errno::Errno::last() == nix::errno::Errno::ESRCH && !reaped {
        // SAFETY: as above; the pid is unreaped, so it still names our child.
        unsafe { libc::kill(pid.as_raw(), signal) };
    }
}

fn resize(stream: u64, pty: Option<&FdStream>, size: WindowSize) {
    let Some(master) = pty else { return };
    if let Err(e) = exec::pty::set_window_size(&master.as_fd(), size) {
        crate::log_debug!("stream {stream}: resize failed: {e}");
    }
}

async fn send(ctx: &SessionContext, stream: u64, message: &impl Message) {
    match message.to_frame(stream) {
        Ok(frame) => drop(ctx.out.send(frame).await),
        Err(e) => crate::log_error!("stream {stream}: cannot encode frame: {e}"),
    }
}
