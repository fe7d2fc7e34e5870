//! The lifecycle verbs over the state database: create, start, stop, remove, list, inspect.
//!
//! Every verb first reconciles the rows it reads with the liveness of their processes, so a
//! sandbox whose process was killed shows as Crashed at the very next command. Every state
//! change is conditional ("only while still X"), so two commands racing on one sandbox produce
//! one winner and a clear error for the other.

use std::path::Path;
use std::time::{Duration, Instant};

use cella_db::{Db, DbError, NewSandbox, RunRow, RunStatus, SandboxStatus, SandboxSummary};
use cella_runtime::config::SandboxConfig;
use cella_runtime::home::Home;
use cella_runtime::launch;
use cella_runtime::lifecycle::{self, LauncherLock, ProcessIdentity};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::Connection;
use crate::error::SandboxError;
use crate::sandbox::{Sandbox, Starting};

/// Grace between SIGTERM to a sandbox process that ignored the shutdown request and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// How long `stop` waits for a starting sandbox's process to record its run. The sandbox
/// process writes that row within milliseconds of being spawned; waiting longer means it is
/// stuck before its first write (a locked database), and the caller gets an error to retry.
const RUN_ROW_WAIT: Duration = Duration::from_secs(5);

/// Statuses from which a sandbox may be started.
const STARTABLE: &[SandboxStatus] =
    &[SandboxStatus::Created, SandboxStatus::Stopped, SandboxStatus::Crashed];

/// A handle on one `CELLA_HOME`: its layout and its state database.
#[derive(Clone)]
pub struct Cella {
    home: Home,
    db: Db,
}

impl Cella {
    /// Opens the home named by `CELLA_HOME` (default `~/.cella`).
    pub async fn open() -> Result<Self, SandboxError> {
        Self::open_at(Home::from_env()?).await
    }

    /// Opens the home `home`, creating its directories and database when missing.
    pub async fn open_at(home: Home) -> Result<Self, SandboxError> {
        home.ensure()?;
        let db = Db::open(home.db_path()).await?;
        Ok(Self { home, db })
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Records a new, stopped sandbox with `config` (already validated).
    pub async fn create(&self, config: &SandboxConfig) -> Result<(), SandboxError> {
        let new = NewSandbox {
            name: config.name.clone(),
            config: serde_json::to_value(config).expect("sandbox config serialises"),
            ephemeral: config.ephemeral,
            status: SandboxStatus::Created,
        };
        match self.db.insert_sandbox(&new).await {
            Ok(_) => {}
            Err(DbError::DuplicateName { name }) => return Err(SandboxError::Exists { name }),
            Err(e) => return Err(e.into()),
        }
        cella_runtime::home::create_private_dir(&self.home.sandbox_dir(&config.name))?;
        Ok(())
    }

    /// Starts a stopped sandbox: takes its launcher lock, marks it Starting and spawns its
    /// sandbox process, which inherits the lock. Wait on the result with [`Starting::ready`].
    pub async fn start(&self, name: &str, cella_bin: &Path) -> Result<Starting, SandboxError> {
        let summary = self.summary(name).await?;
        let status = summary.sandbox.status;
        if !STARTABLE.contains(&status) {
            return Err(SandboxError::AlreadyActive {
                name: name.into(),
                status: status.to_string(),
            });
        }
        let lock = LauncherLock::try_acquire_for(&self.home, name)?
            .ok_or_else(|| SandboxError::LauncherBusy { name: name.into() })?;
        if !self.db.set_sandbox_status(name, SandboxStatus::Starting, STARTABLE).await? {
            let status = self.db.sandbox(name).await?.status.to_string();
            return Err(SandboxError::AlreadyActive { name: name.into(), status });
        }
        match launch::spawn(cella_bin, &self.home, name, Some(&lock)) {
            Ok(pending) => Ok(Starting::new(pending, self.sandbox_handle(summary.sandbox.config)?)),
            Err(err) => {
                self.db
                    .set_sandbox_status(name, SandboxStatus::Crashed, &[SandboxStatus::Starting])
                    .await?;
                if summary.sandbox.ephemeral {
                    let _ = lifecycle::cleanup_sandbox(&self.db, &self.home, name).await;
                }
                Err(err.into())
            }
        }
    }

    /// A handle on running sandbox `name`, for exec sessions.
    pub async fn sandbox(&self, name: &str) -> Result<Sandbox, SandboxError> {
        let summary = self.summary(name).await?;
        if summary.sandbox.status != SandboxStatus::Running {
            let status = summary.sandbox.status.to_string();
            return Err(SandboxError::NotRunning { name: name.into(), status });
        }
        self.sandbox_handle(summary.sandbox.config)
    }

    fn sandbox_handle(&self, config: serde_json::Value) -> Result<Sandbox, SandboxError> {
        let config: SandboxConfig = serde_json::from_value(config).map_err(|source| {
            cella_runtime::config::ConfigError::Parse { path: self.home.db_path(), source }
        })?;
        Ok(Sandbox::from_parts(self.home.clone(), config))
    }

    /// Stops a running sandbox: marks it Draining, asks the agent to shut down, and escalates to
    /// SIGTERM and then SIGKILL of its sandbox process if it is still alive after `timeout`.
    /// With `force`, kills the sandbox process at once. A sandbox that is still booting is
    /// stopped with SIGTERM, which its sandbox process turns into an orderly teardown.
    ///
    /// Signals go only to the process of the sandbox's current run, and only while its pid
    /// still has the recorded identity: a finished run's pid may belong to anyone by now.
    pub async fn stop(
        &self,
        name: &str,
        timeout: Duration,
        force: bool,
    ) -> Result<(), SandboxError> {
        let (status, run) = self.current_run(name).await?;
        // Draining also keeps a booting sandbox from flipping to Running, and makes its run end
        // with ShutdownRequested whichever step ends it.
        let stoppable = [SandboxStatus::Running, SandboxStatus::Starting];
        self.db.set_sandbox_status(name, SandboxStatus::Draining, &stoppable).await?;
        let identity = ProcessIdentity::from_run(&run);
        let asked_at = Instant::now();
        if force {
            signal_if_alive(&identity, Signal::SIGKILL);
        } else if status != SandboxStatus::Starting {
            // A sandbox process that does not even answer its socket (stopped, wedged) uses up
            // the timeout here and gets the signals below.
            let socket = self.home.client_socket(name);
            let ask = async {
                let mut conn = Connection::connect(&socket).await?;
                conn.request_shutdown(timeout).await
            };
            let _ = tokio::time::timeout(timeout, ask).await;
        } else {
            signal_if_alive(&identity, Signal::SIGTERM);
        }
        if !wait_dead(&identity, timeout.saturating_sub(asked_at.elapsed())).await {
            signal_if_alive(&identity, Signal::SIGTERM);
            if !wait_dead(&identity, TERM_GRACE).await {
                signal_if_alive(&identity, Signal::SIGKILL);
                if !wait_dead(&identity, TERM_GRACE).await {
                    return Err(SandboxError::StopTimeout {
                        name: name.into(),
                        pid: run.pid,
                        waited: timeout + 2 * TERM_GRACE,
                    });
                }
            }
        }
        // A process killed before it could record its end leaves the row for the reconciler.
        lifecycle::reconcile_sandbox(&self.db, &self.home, name).await?;
        Ok(())
    }

    /// The status of active sandbox `name` and its current (unfinished) run. A sandbox that is
    /// Starting may not have recorded its run yet: it is waited for up to [`RUN_ROW_WAIT`].
    async fn current_run(&self, name: &str) -> Result<(SandboxStatus, RunRow), SandboxError> {
        let deadline = Instant::now() + RUN_ROW_WAIT;
        loop {
            let summary = self.summary(name).await?;
            let status = summary.sandbox.status;
            if !status.is_active() {
                let status = status.to_string();
                return Err(SandboxError::NotRunning { name: name.into(), status });
            }
            match summary.latest_run {
                Some(run) if run.status == RunStatus::Running => return Ok((status, run)),
                _ if Instant::now() >= deadline => {
                    return Err(SandboxError::NoCurrentRun {
                        name: name.into(),
                        waited: RUN_ROW_WAIT,
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Removes a sandbox, directory first, then its row. A running sandbox is refused unless
    /// `force`, which kills it first.
    pub async fn remove(&self, name: &str, force: bool) -> Result<(), SandboxError> {
        let summary = self.summary(name).await?;
        let status = summary.sandbox.status;
        if status.is_active() {
            if !force {
                return Err(SandboxError::StillActive {
                    name: name.into(),
                    status: status.to_string(),
                });
            }
            self.stop(name, Duration::ZERO, true).await?;
        }
        match lifecycle::remove_sandbox(&self.db, &self.home, name).await? {
            lifecycle::CleanupOutcome::Removed | lifecycle::CleanupOutcome::AlreadyGone => Ok(()),
            other => {
                let status = format!("{other:?}");
                Err(SandboxError::StillActive { name: name.into(), status })
            }
        }
    }

    /// Settles a sandbox whose process has gone: records a run that process could not close
    /// (Crashed, or Stopped after a stop) and removes an ephemeral sandbox it could not remove
    /// itself, as the next startup sweep would. Nothing to do is not an error.
    pub async fn settle(&self, name: &str) -> Result<(), SandboxError> {
        lifecycle::reconcile_sandbox(&self.db, &self.home, name).await?;
        lifecycle::cleanup_sandbox(&self.db, &self.home, name).await?;
        Ok(())
    }

    /// Every sandbox with its latest run, reconciled.
    pub async fn list(&self) -> Result<Vec<SandboxSummary>, SandboxError> {
        Ok(lifecycle::list_reconciled(&self.db, &self.home).await?)
    }

    /// One sandbox, reconciled, with its whole run history (oldest first).
    pub async fn inspect(&self, name: &str) -> Result<(SandboxSummary, Vec<RunRow>), SandboxError> {
        let summary = self.summary(name).await?;
        let runs = self.db.runs(name).await?;
        Ok((summary, runs))
    }

    /// Reconciles and reads one sandbox.
    async fn summary(&self, name: &str) -> Result<SandboxSummary, SandboxError> {
        cella_runtime::config::validate_name(name)?;
        lifecycle::reconcile_sandbox(&self.db, &self.home, name).await?;
        self.db
            .find_sandbox_summary(name)
            .await?
            .ok_or_else(|| SandboxError::NotFound { name: name.into() })
    }
}

/// Sends `signal` to the process with `identity` if that pid still is that process.
fn signal_if_alive(identity: &ProcessIdentity, signal: Signal) {
    if lifecycle::is_alive(identity) {
        // ESRCH here means it exited since the check: the goal is reached either way.
        let _ = kill(Pid::from_raw(identity.pid), signal);
    }
}

/// Waits until the process with `identity` is gone, up to `limit`.
async fn wait_dead(identity: &ProcessIdentity, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !lifecycle::is_alive(identity) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
