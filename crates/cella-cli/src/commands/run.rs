//! `cella run`: boot a fresh sandbox, run one command, exit with its status.
//!
//! The sandbox is ephemeral and stops as soon as this process detaches from it, so nothing is
//! left behind however `cella run` ends: normally, by a signal it forwards, or killed outright
//! (the sandbox process notices the closed connection and shuts the VM down itself).
//!
//! Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to the guest command through the
//! agent; the command's own reaction decides the exit status (130 for a SIGINT it does not
//! catch). A signal during the boot stops the sandbox and exits with 128 + the signal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cella::{ExecIo, Exited, Sandbox};
use cella_runtime::config::{parse_env, BackendKind};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// How long `cella run` waits for the sandbox process to finish its cleanup after the command
/// ended, so that the VM and the sandbox's files are gone when `cella run` returns.
const CLEANUP_WAIT: Duration = Duration::from_secs(20);

/// Longest guest-provided error message printed.
const MAX_GUEST_MESSAGE: usize = 500;

/// Arguments of `cella run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  cella run -- sh -c 'echo hello'\n  \
    printf data | cella run -- sh -c 'cat; echo'\n  \
    cella run --rootfs ./debian --memory 1024 -- python3 -c 'print(6*7)'\n\n\
    Exit status: the command's own status; 128+N when it was killed by signal N; 126 when it \
    is not executable; 127 when it does not exist in the root; 125 when cella itself failed.")]
pub struct RunArgs {
    /// Root filesystem directory, attached read-only [default: the busybox root built by setup]
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// Number of virtual CPUs
    #[arg(long, default_value_t = cella_runtime::config::DEFAULT_CPUS as u32, value_name = "N")]
    cpus: u32,
    /// Guest memory in MiB
    #[arg(long, default_value_t = cella_runtime::config::DEFAULT_MEMORY_MIB, value_name = "MIB")]
    memory: u32,
    /// Set an environment variable in the guest (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the command in the guest
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// VMM backend: auto, qemu or krun
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    backend: String,
    /// Name of the sandbox [default: run-<random>]
    #[arg(long)]
    name: Option<String>,
    /// Seconds the guest may take to boot before cella gives up [default: 90 under software
    /// emulation, 15 with KVM]
    #[arg(long, value_name = "SECS")]
    boot_timeout: Option<u64>,
    /// Stop the sandbox after this many seconds, whatever runs
    #[arg(long, value_name = "SECS")]
    max_duration: Option<u64>,
    /// Command and arguments to run in the guest
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Runs `cella run` and returns the process exit status.
pub fn main(args: RunArgs) -> u8 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = runtime.block_on(run(args));
    // Do not wait for the blocking stdin reader: it may sit in read() on a terminal forever.
    runtime.shutdown_background();
    match status {
        Ok(status) => status,
        Err(err) => crate::fail(&err),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let builder = builder(&args)?;
    let mut signals = ForwardedSignals::install()?;

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

    let exited = exec(&sandbox, &args, &mut signals).await;
    sandbox.wait_exit(CLEANUP_WAIT).await;
    let exited = exited?;
    if let Exited::SpawnFailed { message, .. } = &exited {
        let message: String = message.chars().take(MAX_GUEST_MESSAGE).collect();
        eprintln!("cella: {message}");
    }
    Ok(exited.exit_status().clamp(0, 255) as u8)
}

fn builder(args: &RunArgs) -> anyhow::Result<cella::SandboxBuilder> {
    let name = args.name.clone().unwrap_or_else(random_name);
    let backend: BackendKind = args.backend.parse()?;
    cella_runtime::config::validate_cpus(args.cpus)?;
    let mut builder = Sandbox::builder(&name)
        .cpus(args.cpus as u8)
        .memory_mib(args.memory)
        .backend(backend)
        .ephemeral(true)
        .stop_when_detached(true);
    if let Some(rootfs) = &args.rootfs {
        builder = builder.rootfs(rootfs);
    }
    for entry in &args.env {
        let (key, value) = parse_env(entry)?;
        builder = builder.env(key, value);
    }
    if let Some(dir) = &args.workdir {
        builder = builder.workdir(dir);
    }
    if let Some(secs) = args.boot_timeout {
        builder = builder.boot_timeout(Duration::from_secs(secs));
    }
    if let Some(secs) = args.max_duration {
        builder = builder.max_duration(Duration::from_secs(secs));
    }
    Ok(builder)
}

async fn exec(sandbox: &Sandbox, args: &RunArgs, signals: &mut ForwardedSignals) -> anyhow::Result<Exited> {
    let mut conn = sandbox.connect().await?;
    let request = sandbox.exec_request(args.command.clone());
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

/// A name for a one-shot sandbox: `run-` and 8 random hex digits.
fn random_name() -> String {
    let mut bytes = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        bytes = (std::process::id() ^ nanos()).to_le_bytes();
    }
    format!("run-{:08x}", u32::from_le_bytes(bytes))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// The host signals `cella run` forwards to the guest command.
struct ForwardedSignals {
    rx: mpsc::Receiver<i32>,
}

impl ForwardedSignals {
    fn install() -> anyhow::Result<Self> {
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
