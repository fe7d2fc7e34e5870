//! Creating sandboxes and talking to them.
//!
//! [`Sandbox::builder`] validates a configuration, writes it to the sandbox's directory and
//! spawns the sandbox process that owns the VM; [`Starting::ready`] waits until the guest agent
//! has answered (or returns the boot failure's real cause). A [`Sandbox`] then takes exec
//! sessions over its socket.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use cella_protocol::{ExecStart, Exited};
use cella_runtime::config::{self, BackendKind, SandboxConfig};
use cella_runtime::home::Home;
use cella_runtime::launch::PendingSandbox;

use crate::client::{Connection, ExecIo};
use crate::error::SandboxError;
use crate::manage::Cella;

/// Environment variable naming the `cella` binary that runs sandbox processes.
pub const BIN_ENV: &str = "CELLA_BIN";

/// Builds and starts a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    config: SandboxConfig,
    home: Option<Home>,
    cella_bin: Option<PathBuf>,
}

impl SandboxBuilder {
    fn new(name: &str) -> Self {
        Self {
            config: SandboxConfig {
                name: name.to_string(),
                rootfs: PathBuf::new(),
                cpus: config::DEFAULT_CPUS,
                memory_mib: config::DEFAULT_MEMORY_MIB,
                env: Vec::new(),
                workdir: None,
                backend: BackendKind::Auto,
                ephemeral: false,
                stop_when_detached: false,
                idle_timeout_secs: None,
                max_duration_secs: None,
                boot_timeout_secs: None,
            },
            home: None,
            cella_bin: None,
        }
    }

    /// Root filesystem directory; default: the home's default root built by setup.
    pub fn rootfs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.rootfs = dir.into();
        self
    }
    /// vCPUs.
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.config.cpus = cpus;
        self
    }
    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.config.memory_mib = mib;
        self
    }
    /// Adds an environment variable for every process in the sandbox.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.env.push((key.into(), value.into()));
        self
    }
    /// Default working directory of exec sessions.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.config.workdir = Some(dir.into());
        self
    }
    /// VMM backend.
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.config.backend = backend;
        self
    }
    /// Remove the sandbox once it stops.
    pub fn ephemeral(mut self, ephemeral: bool) -> Self {
        self.config.ephemeral = ephemeral;
        self
    }
    /// Stop the sandbox once its first client has gone and no session is left. Applies to the
    /// boot this builder starts only: a persistent sandbox started again later lives until it
    /// is stopped.
    pub fn stop_when_detached(mut self, stop: bool) -> Self {
        self.config.stop_when_detached = stop;
        self
    }
    /// Stop after this long without clients or sessions.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout_secs = Some(timeout.as_secs().max(1));
        self
    }
    /// Stop after this long whatever runs.
    pub fn max_duration(mut self, limit: Duration) -> Self {
        self.config.max_duration_secs = Some(limit.as_secs().max(1));
        self
    }
    /// Time the guest has to answer before the boot counts as failed.
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.config.boot_timeout_secs = Some(timeout.as_secs().max(1));
        self
    }
    /// Use this home instead of `CELLA_HOME` / `~/.cella`.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(Home::at(home.into()));
        self
    }
    /// Use this `cella` binary to run the sandbox process.
    pub fn cella_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.cella_bin = Some(path.into());
        self
    }

    /// Validates the configuration and fills in the defaults (root, home, binary).
    fn resolve(self) -> Result<(Home, SandboxConfig, PathBuf), SandboxError> {
        let home = match self.home {
            Some(home) => home,
            None => Home::from_env()?,
        };
        let mut config = self.config;
        config::validate_name(&config.name)?;
        if config.rootfs.as_os_str().is_empty() {
            config.rootfs = home.default_rootfs();
        }
        config::validate_rootfs(&config.rootfs)?;
        config.rootfs = std::fs::canonicalize(&config.rootfs)
            .map_err(|_| config::ConfigError::RootfsMissing { path: config.rootfs.clone() })?;
        config.validate()?;
        let bin = match self.cella_bin {
            Some(bin) => bin,
            None => find_cella_bin().ok_or(SandboxError::NoBinary)?,
        };
        Ok((home, config, bin))
    }

    /// Records the sandbox, stopped, without starting it (`cella create`).
    pub async fn define(self) -> Result<(), SandboxError> {
        let (home, config, _) = self.resolve()?;
        Cella::open_at(home).await?.create(&config).await
    }

    /// Records the sandbox and spawns its sandbox process.
    pub async fn spawn(self) -> Result<Starting, SandboxError> {
        let (home, config, bin) = self.resolve()?;
        let cella = Cella::open_at(home).await?;
        cella.create(&config).await?;
        cella.start(&config.name, &bin).await
    }

    /// Records the sandbox, spawns it and waits until its guest is up. If the guest fails to
    /// boot, an ephemeral sandbox is gone with it; a persistent one stays, Crashed, with its
    /// logs, until [`Cella::remove`] (a second `create` of the name fails until then).
    pub async fn create(self) -> Result<Sandbox, SandboxError> {
        self.spawn().await?.ready().await
    }
}

/// The `cella` binary: `CELLA_BIN`, else the running executable when it is `cella`, else PATH.
pub fn find_cella_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    if let Ok(exe) = std::env::current_exe() {
        if exe.file_name().is_some_and(|n| n == "cella") {
            return Some(exe);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("cella")).find(|p| p.is_file())
}

/// A sandbox process that is booting its guest.
pub struct Starting {
    pending: PendingSandbox,
    sandbox: Sandbox,
}

impl Starting {
    pub(crate) fn new(pending: PendingSandbox, sandbox: Sandbox) -> Self {
        Self { pending, sandbox }
    }

    /// Pid of the sandbox process.
    pub fn pid(&self) -> u32 {
        self.pending.pid()
    }

    /// Waits until the guest is up, or returns why it could not boot.
    pub async fn ready(self) -> Result<Sandbox, SandboxError> {
        let Self { pending, mut sandbox } = self;
        let launched = tokio::task::spawn_blocking(move || pending.wait_ready())
            .await
            .expect("ready wait does not panic")?;
        sandbox.child = Some(launched.child);
        Ok(sandbox)
    }
}

/// A running sandbox.
///
/// Dropping the handle that started an ephemeral sandbox stops it (SIGTERM to its sandbox
/// process, which shuts the VM down and removes the sandbox); a persistent one keeps running
/// until it is stopped. Either way the sandbox process is reaped in the background once it
/// exits, so a long-lived program collects no zombies.
pub struct Sandbox {
    name: String,
    home: Home,
    child: Option<Child>,
    config: SandboxConfig,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if self.config.ephemeral {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // The child is not reaped yet, so this pid is still ours.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let reaper = std::thread::Builder::new().name("cella-reaper".into());
        let _ = reaper.spawn(move || {
            let _ = child.wait();
        });
    }
}

/// Collected result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub exited: Exited,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Sandbox {
    pub(crate) fn from_parts(home: Home, config: SandboxConfig) -> Self {
        Self { name: config.name.clone(), home, child: None, config }
    }

    /// Starts building a sandbox called `name`.
    pub fn builder(name: &str) -> SandboxBuilder {
        SandboxBuilder::new(name)
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens a new connection to the sandbox.
    pub async fn connect(&self) -> Result<Connection, SandboxError> {
        Ok(Connection::connect(&self.home.client_socket(&self.name)).await?)
    }

    /// Runs `argv` with no stdin and collects its output.
    pub async fn exec_output(&self, argv: &[&str]) -> Result<Output, SandboxError> {
        let mut conn = self.connect().await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let request = self.exec_request(argv.iter().map(|s| s.to_string()).collect());
        let io = ExecIo {
            stdin: None,
            stdout: &mut stdout,
            stderr: &mut stderr,
            signals: None,
            resizes: None,
        };
        let exited = conn.exec(request, io).await?;
        Ok(Output { exited, stdout, stderr })
    }

    /// Stops the sandbox as [`Cella::stop`] does: an orderly shutdown, then SIGTERM and SIGKILL
    /// of its sandbox process if it is still alive after `timeout`. A sandbox that has stopped
    /// already (or, ephemeral, is gone) is not an error.
    pub async fn stop(mut self, timeout: Duration) -> Result<(), SandboxError> {
        let cella = Cella::open_at(self.home.clone()).await?;
        match cella.stop(&self.name, timeout, false).await {
            Ok(()) | Err(SandboxError::NotRunning { .. } | SandboxError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        // Reap the process if this handle started it; it has exited or is about to.
        self.wait_exit(Duration::from_secs(10)).await;
        cella.settle(&self.name).await
    }

    /// After its sandbox process has exited: does what that process could not do itself (see
    /// [`Cella::settle`]): record a run it was killed in, remove an ephemeral sandbox it left,
    /// remove the lock file it held to the end.
    pub async fn settle(&self) -> Result<(), SandboxError> {
        Cella::open_at(self.home.clone()).await?.settle(&self.name).await
    }

    /// Waits up to `timeout` for the sandbox process (if this handle started it) to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        waited.await.unwrap_or(false)
    }

    /// An exec request for `argv` with the sandbox's environment and working directory.
    pub fn exec_request(&self, argv: Vec<String>) -> ExecStart {
        ExecStart {
            argv,
            env: self.config.env.clone(),
            cwd: self.config.workdir.clone(),
            user: None,
            tty: None,
        }
    }

    /// Pid of the sandbox process, when this handle started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Path of the sandbox's directory.
    pub fn dir(&self) -> PathBuf {
        self.home.sandbox_dir(&self.name)
    }

    /// The home this sandbox lives in.
    pub fn home_dir(&self) -> &Path {
        self.home.root()
    }
}
