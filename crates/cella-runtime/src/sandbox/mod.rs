//! The sandbox process: `cella sandbox --name NAME`, one per running sandbox.
//!
//! Its life has three phases:
//! 1. boot ([`boot`]): read the config, start the VM, wait for the agent's handshake under the
//!    boot watchdog, then tell the launcher "ready" or the real cause of failure;
//! 2. serve ([`supervise`]): accept clients on the sandbox socket and relay them to the agent,
//!    while watching the idle timeout, the maximum duration, the agent's heartbeat, host
//!    signals and, for `cella run`, whether its client is still attached;
//! 3. teardown: ask the agent to shut down (it powers off only after acknowledging), kill the VM
//!    if it does not, remove the socket and, for an ephemeral sandbox, its directory.
//!
//! The outcome of phase 2 is a [`Termination`]: why the run ended and whether the agent said a
//! proper goodbye, which decides Stopped versus Crashed.
//!
//! How the process uses its threads depends on the backend ([`process`]): for qemu the async
//! runtime runs on the main thread; for krun the main thread belongs to the VMM and the runtime
//! runs on a second thread. Everything in this module runs on the runtime either way.

pub mod boot;
pub mod process;
pub mod record;
pub mod supervise;

use std::time::Duration;

use cella_db::Db;

use crate::config::SandboxConfig;
use crate::home::Home;
use crate::launch::{ReadyReport, ReadyReporter};
use crate::lifecycle::LifecycleError;
use crate::relay::Relay;
use process::Host;
use record::RunRecord;

pub use supervise::Termination;

/// How long the sandbox process waits for the VM to exit after the agent's goodbye, or after a
/// shutdown request, before it kills the VM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Grace the agent gives remaining processes between SIGTERM and SIGKILL on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Errors that end the sandbox process before it serves.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The stored config is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A directory or socket could not be set up.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// The state database or the run record failed.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The config stored in the database does not parse.
    #[error("stored config of sandbox {name} is malformed")]
    StoredConfig {
        /// The sandbox.
        name: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The client socket could not be bound.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket.
        path: std::path::PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A signal asked the sandbox process to stop while the guest was booting.
    #[error("interrupted by {signal} while the guest was booting")]
    Interrupted {
        /// The signal's name.
        signal: &'static str,
    },
    /// The guest did not boot.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
}

/// A sandbox whose config is read and whose run row exists.
pub struct Prepared {
    config: SandboxConfig,
    record: RunRecord,
}

impl Prepared {
    /// The sandbox's config.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }
}

/// Runs a prepared sandbox to completion, booting its VM on `host`. Returns the process's exit
/// status: 0 when the run ended in an orderly way, 1 otherwise. The sandbox process starts
/// through [`process::main`], which prepares the sandbox and picks the host.
pub async fn run_prepared(
    home: Home,
    prepared: Prepared,
    mut reporter: ReadyReporter,
    host: Host,
) -> i32 {
    let Prepared { config, record } = prepared;
    let maintenance = {
        let (db, home) = (record.db().clone(), home.clone());
        tokio::spawn(async move { crate::lifecycle::run_startup_maintenance(&db, &home).await })
    };
    let status = match serve(&home, &config, &record, &mut reporter, &host).await {
        Ok(t) => {
            tracing::info!(sandbox = %config.name, reason = %t.reason, clean = t.clean, detail = %t.detail, "sandbox stopped");
            record.finish(&t).await;
            if t.clean {
                0
            } else {
                1
            }
        }
        Err(SandboxError::Interrupted { signal }) => {
            tracing::info!(sandbox = %config.name, signal, "stopped by a signal while booting");
            record.interrupted(signal).await;
            let line = error_line(&SandboxError::Interrupted { signal });
            reporter.report(&ReadyReport::Failed { error: line });
            1
        }
        Err(err) => {
            let line = error_line(&err);
            tracing::error!(sandbox = %config.name, error = %line, "sandbox failed to start");
            record.boot_failed(&line).await;
            reporter.report(&ReadyReport::Failed { error: line });
            1
        }
    };
    // The sweep never blocks the boot, but it should not be cut off mid-write either.
    let _ = tokio::time::timeout(Duration::from_secs(1), maintenance).await;
    teardown(&home, &config, record.db()).await;
    status
}

/// Reads the sandbox's config and inserts this process's run row.
pub async fn prepare(home: &Home, name: &str) -> Result<Prepared, SandboxError> {
    crate::config::validate_name(name)?;
    home.ensure()?;
    for socket in [home.client_socket(name), home.agent_port_socket(name)] {
        crate::home::check_socket_path(&socket)?;
    }
    let db = Db::open(home.db_path()).await.map_err(LifecycleError::from)?;
    let row = db.sandbox(name).await.map_err(LifecycleError::from)?;
    crate::home::create_private_dir(&home.sandbox_dir(name).join("logs"))?;
    let config: SandboxConfig = serde_json::from_value(row.config)
        .map_err(|source| SandboxError::StoredConfig { name: name.to_string(), source })?;
    config.validate()?;
    let mut config = config;
    let record = RunRecord::begin(db, name).await?;
    // Stopping once detached belongs to the boot that `cella run` (or the SDK's create) attaches
    // to: a kept sandbox started again later lives until it is stopped.
    if config.stop_when_detached {
        let runs = record.db().runs(name).await.map_err(LifecycleError::from)?;
        if runs.len() > 1 {
            tracing::debug!(sandbox = %name, "not the first boot: not stopping when detached");
            config.stop_when_detached = false;
        }
    }
    Ok(Prepared { config, record })
}

async fn serve(
    home: &Home,
    config: &SandboxConfig,
    record: &RunRecord,
    reporter: &mut ReadyReporter,
    host: &Host,
) -> Result<Termination, SandboxError> {
    let socket = home.client_socket(&config.name);
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|source| SandboxError::Listen { path: socket.clone(), source })?;

    let mut signals = Signals::install();
    let booted = tokio::select! {
        booted = boot::boot(home, config, host) => booted?,
        name = signals.recv() => return Err(SandboxError::Interrupted { signal: name }),
    };
    tracing::info!(sandbox = %config.name, backend = booted.backend.name(), accelerator = booted.accelerator,
        boot_ms = booted.boot_time.as_millis() as u64, agent = %booted.hello.agent_version, "guest is up");
    let (relay, watch) = Relay::start(booted.reader, booted.writer, booted.hello);
    if let Err(e) = record.running().await {
        tracing::warn!(sandbox = %config.name, error = %e, "cannot mark the sandbox Running");
    }
    reporter.report(&ReadyReport::Ready {
        pid: std::process::id(),
        accelerator: booted.accelerator.to_string(),
        boot_ms: booted.boot_time.as_millis() as u64,
    });
    Ok(supervise::supervise(config, booted.vm, relay, watch, listener, &mut signals).await)
}

async fn teardown(home: &Home, config: &SandboxConfig, db: &Db) {
    let _ = std::fs::remove_file(home.client_socket(&config.name));
    let _ = std::fs::remove_file(home.agent_port_socket(&config.name));
    if config.ephemeral {
        match crate::lifecycle::cleanup_sandbox(db, home, config.name.as_str()).await {
            Ok(outcome) => tracing::debug!(sandbox = %config.name, ?outcome, "ephemeral cleanup"),
            Err(e) => {
                tracing::warn!(sandbox = %config.name, error = %e, "ephemeral cleanup failed; the next sweep retries")
            }
        }
    }
}

/// The host signals that stop a sandbox process in order: SIGTERM, SIGINT, SIGHUP.
///
/// Installed before the boot so that a signal at any moment after it is caught, never lost
/// between two handlers and never fatal.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Panics only if the runtime has no signal driver, a build bug.
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind| signal(kind).expect("tokio runtime without signal support");
        Self {
            term: install(SignalKind::terminate()),
            int: install(SignalKind::interrupt()),
            hup: install(SignalKind::hangup()),
        }
    }

    /// Waits for the next signal and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// An error and its causes on one line, for the launcher.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
