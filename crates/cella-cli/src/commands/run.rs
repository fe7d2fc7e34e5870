//! `cella run`: boot a fresh sandbox, run one command, exit with its status.
//!
//! The sandbox stops as soon as this process detaches from it, so nothing keeps running however
//! `cella run` ends: normally, by a signal it forwards, or killed outright (the sandbox process
//! notices the closed connection and shuts the VM down itself). Without `--keep` it is also
//! removed, row and directory; with `--keep` it stays, Stopped, and `cella start` boots it again
//! with its files.
//!
//! A signal during the boot stops the sandbox and exits with 128 + the signal. If the sandbox
//! process itself is killed, `cella run` records the crash and removes an ephemeral sandbox.

use std::time::{Duration, Instant};

use cella::Exited;
use clap::Args;

use super::attach::{attach, exit_status, ForwardedSignals};
use super::opts::{runtime, SandboxOpts};

/// How long `cella run` waits for the sandbox process to finish its cleanup after the command
/// ended, so that the VM and the sandbox's files are gone when `cella run` returns.
const CLEANUP_WAIT: Duration = Duration::from_secs(20);

/// Arguments of `cella run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  cella run -- sh -c 'echo hello'\n  \
    printf data | cella run -- sh -c 'cat; echo'\n  \
    cella run --rootfs ./debian --memory 1024 -- python3 -c 'print(6*7)'\n  \
    cella run --name build --keep -- sh -c 'echo state > /root/file'\n\n\
    Exit status: the command's own status; 128+N when it was killed by signal N; 126 when it \
    is not executable; 127 when it does not exist in the root; 125 when cella itself failed.")]
pub struct RunArgs {
    #[command(flatten)]
    opts: SandboxOpts,
    /// Name of the sandbox [default: run-<random>]
    #[arg(long)]
    name: Option<String>,
    /// Keep the sandbox (stopped, with its files) after the command ends
    #[arg(long)]
    keep: bool,
    /// Command and arguments to run in the guest
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `cella run` and returns the process exit status.
pub fn main(args: RunArgs) -> u8 {
    let runtime = runtime();
    let status = runtime.block_on(run(args));
    // Do not wait for the blocking stdin reader: it may sit in read() on a terminal forever.
    runtime.shutdown_background();
    match status {
        Ok(status) => status,
        Err(err) => crate::fail(&err),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let name = args.name.clone().unwrap_or_else(random_name);
    let builder = args.opts.builder(&name)?.ephemeral(!args.keep).stop_when_detached(true);
    let mut signals = ForwardedSignals::install()?;

    let launched_at = Instant::now();
    let starting = builder.spawn().await?;
    let pid = starting.pid();
    let ready = starting.ready();
    tokio::pin!(ready);
    let mut sandbox = tokio::select! {
        sandbox = &mut ready => sandbox?,
        signal = signals.rx.recv() => {
            let signal = signal.unwrap_or(libc::SIGTERM);
            // The sandbox process stops its VM and cleans up on SIGTERM.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGTERM);
            let _ = ready.await;
            return Ok((128 + signal) as u8);
        }
    };

    let request = sandbox.exec_request(args.command.clone());
    let exited = attach(&sandbox, request, &mut signals).await;
    if sandbox.wait_exit(CLEANUP_WAIT).await {
        // Normally the sandbox process has recorded its end and removed an ephemeral sandbox;
        // if it was killed, that falls to us rather than to the next sweep.
        if let Err(e) = sandbox.settle().await {
            tracing::warn!(sandbox = %name, error = %e, "cannot settle the finished sandbox");
        }
    }
    let exited = exited?;
    // The sandbox ends a command that outlives --max-duration with SIGTERM (and SIGKILL after a
    // grace); say so, or the status reads like any other signal.
    if let (Exited::Signal { .. }, Some(limit)) = (&exited, args.opts.max_duration) {
        if launched_at.elapsed() >= Duration::from_secs(limit) {
            eprintln!("cella: the sandbox reached its maximum duration ({limit}s) and was stopped");
        }
    }
    Ok(exit_status(&exited))
}

/// A name for a one-shot sandbox: `run-` and 8 random hex digits.
fn random_name() -> String {
    let mut bytes = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes = (std::process::id() ^ nanos).to_le_bytes();
    }
    format!("run-{:08x}", u32::from_le_bytes(bytes))
}
