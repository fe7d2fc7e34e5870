//! Attaching the terminal's stdio to a command in a sandbox: shared by `run` and `exec`.
//!
//! stdin, stdout and stderr stay separate byte streams; SIGINT, SIGTERM, SIGHUP and SIGQUIT
//! received by cella are forwarded to the guest command, whose own reaction decides the exit
//! status.

use anyhow::Context;
use cella::{ExecIo, ExecStart, Exited, Sandbox};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// Longest guest-provided error message printed.
const MAX_GUEST_MESSAGE: usize = 500;

/// Runs `request` in `sandbox` attached to this process's stdio and signals.
pub async fn attach(
    sandbox: &Sandbox,
    request: ExecStart,
    signals: &mut ForwardedSignals,
) -> anyhow::Result<Exited> {
    let mut conn = sandbox.connect().await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let io = ExecIo {
        stdin: Some(&mut stdin),
        stdout: &mut stdout,
        stderr: &mut stderr,
        signals: Some(&mut signals.rx),
        resizes: None,
    };
    conn.exec(request, io).await.context("running the command failed")
}

/// The exit status for `exited`, printing the guest's reason when the command never started.
pub fn exit_status(exited: &Exited) -> u8 {
    if let Exited::SpawnFailed { message, .. } = exited {
        let message: String = message.chars().take(MAX_GUEST_MESSAGE).collect();
        eprintln!("cella: {message}");
    }
    exited.exit_status().clamp(0, 255) as u8
}

/// The host signals cella forwards to the guest command.
pub struct ForwardedSignals {
    /// Signal numbers as they arrive.
    pub rx: mpsc::Receiver<i32>,
}

impl ForwardedSignals {
    /// Installs the handlers; from now on these signals no longer kill cella.
    pub fn install() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        for (kind, number) in [
            (SignalKind::interrupt(), libc::SIGINT),
            (SignalKind::terminate(), libc::SIGTERM),
            (SignalKind::hangup(), libc::SIGHUP),
            (SignalKind::quit(), libc::SIGQUIT),
        ] {
            let mut stream = signal(kind).context("cannot install signal handlers")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(number).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Self { rx })
    }
}
