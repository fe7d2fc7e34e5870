//! Shared fixtures: a temp home with an open database, child processes that are killed on drop,
//! tmpfs mounts that are detached on drop, and the worker-process entry point.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cella_db::{Db, NewSandbox, RunRow, SandboxRow, SandboxStatus};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::home::Home;
use crate::lifecycle::{
    cleanup_sandbox, run_startup_maintenance, MaintenanceOutcome, ProcessIdentity,
};

/// Env var that turns this test binary into a worker process; its value is the role.
const WORKER_ENV: &str = "CELLA_LIFECYCLE_TEST_WORKER";
const HOME_ENV: &str = "CELLA_LIFECYCLE_TEST_HOME";
const NAME_ENV: &str = "CELLA_LIFECYCLE_TEST_SANDBOX";
const START_ENV: &str = "CELLA_LIFECYCLE_TEST_START_AT_MS";
const RESULT_MARK: &str = "WORKER-RESULT ";

/// A cella home in a temp dir with its database open.
pub struct TestHome {
    _dir: TempDir,
    pub home: Home,
    pub db: Db,
}

impl TestHome {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("home"));
        home.ensure().unwrap();
        let db = Db::open(home.db_path()).await.unwrap();
        Self { _dir: dir, home, db }
    }

    /// Inserts a sandbox and gives it a directory with nested content.
    pub async fn sandbox(&self, name: &str, ephemeral: bool, status: SandboxStatus) -> SandboxRow {
        let new = NewSandbox {
            name: name.into(),
            config: serde_json::json!({ "name": name }),
            ephemeral,
            status,
        };
        let row = self.db.insert_sandbox(&new).await.unwrap();
        let dir = self.dir(name);
        fs::create_dir_all(dir.join("logs")).unwrap();
        fs::write(dir.join("logs").join("runtime.log"), "booted\n").unwrap();
        fs::write(dir.join("config.json"), "{}").unwrap();
        row
    }

    /// Inserts a sandbox whose run records `owner`, then moves it to `status`.
    pub async fn sandbox_with_run(
        &self,
        name: &str,
        ephemeral: bool,
        owner: &ProcessIdentity,
        status: SandboxStatus,
    ) -> (SandboxRow, RunRow) {
        let row = self.sandbox(name, ephemeral, SandboxStatus::Starting).await;
        let run = self.db.insert_run(row.id, &owner.to_new_run()).await.unwrap();
        if status != SandboxStatus::Starting {
            assert!(self
                .db
                .set_sandbox_status(row.id, status, &[SandboxStatus::Starting])
                .await
                .unwrap());
        }
        (self.db.sandbox(row.id).await.unwrap(), run)
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.home.sandbox_dir(name)
    }

    pub async fn status(&self, name: &str) -> Option<SandboxStatus> {
        self.db.find_sandbox(name).await.unwrap().map(|s| s.status)
    }
}

/// A `sleep` child that is killed and reaped when dropped.
pub struct Sleeper {
    child: Option<Child>,
}

impl Sleeper {
    pub fn spawn() -> Self {
        let child = Command::new("sleep").arg("1000").stdin(Stdio::null()).spawn().unwrap();
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn identity(&self) -> ProcessIdentity {
        ProcessIdentity::of(self.pid()).unwrap()
    }

    /// Sends SIGKILL and leaves the child a zombie (not reaped).
    pub fn kill_without_reaping(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGKILL).unwrap();
        wait_until(|| {
            fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                .map(|s| {
                    s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        });
    }

    /// `kill -9`, then reaps the child: its pid is gone.
    pub fn kill_and_reap(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tmpfs mounted at a path, detached when dropped.
pub struct TmpfsMount {
    path: PathBuf,
    mounted: bool,
}

impl TmpfsMount {
    /// Mounts a tmpfs at `path` (created if missing). Needs root, as the suite does.
    pub fn new(path: &Path) -> Self {
        fs::create_dir_all(path).unwrap();
        mount(Some("none"), path, Some("tmpfs"), MsFlags::empty(), None::<&str>).unwrap_or_else(
            |e| panic!("mount tmpfs on {} (tests run as root): {e}", path.display()),
        );
        fs::write(path.join("inside"), "x").unwrap();
        Self { path: path.to_owned(), mounted: true }
    }

    pub fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            umount2(&self.path, MntFlags::MNT_DETACH).unwrap();
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

/// Polls `cond` for up to five seconds.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not reached within 5 s");
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What a worker process does.
#[derive(Debug, Clone, Copy)]
pub enum WorkerRole {
    /// `cleanup_sandbox` on one sandbox; prints the outcome.
    Cleanup,
    /// `run_startup_maintenance`; prints `swept errors=N completed=B` or `skipped REASON`.
    Maintenance,
}

/// Starts `count` workers of this test binary against `home`, all released at one instant, and
/// returns each worker's result line.
pub fn run_workers(role: WorkerRole, count: usize, home: &Home, sandbox: &str) -> Vec<String> {
    let start = now_ms() + 1500;
    let children: Vec<Child> = (0..count)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "lifecycle::tests::support::worker_entry", "--nocapture"])
                .args(["--test-threads=1"])
                .env(WORKER_ENV, format!("{role:?}"))
                .env(HOME_ENV, home.root())
                .env(NAME_ENV, sandbox)
                .env(START_ENV, start.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text.lines().find_map(|l| l.split_once(RESULT_MARK).map(|(_, r)| r));
            line.map(str::to_owned).unwrap_or_else(|| format!("no result (status {})", out.status))
        })
        .collect()
}

/// The worker process: a no-op in a normal test run.
#[test]
fn worker_entry() {
    let Ok(role) = std::env::var(WORKER_ENV) else {
        return;
    };
    let home = Home::at(std::env::var(HOME_ENV).unwrap());
    let name = std::env::var(NAME_ENV).unwrap();
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    std::thread::sleep(Duration::from_millis(start.saturating_sub(now_ms())));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = rt.block_on(async {
        let db = match Db::open(home.db_path()).await {
            Ok(db) => db,
            Err(e) => return format!("open failed: {e}"),
        };
        match role.as_str() {
            "Cleanup" => match cleanup_sandbox(&db, &home, name.as_str()).await {
                Ok(outcome) => format!("{outcome:?}"),
                Err(e) => format!("error: {e}"),
            },
            "Maintenance" => match run_startup_maintenance(&db, &home).await {
                MaintenanceOutcome::Swept(r) => {
                    format!("swept errors={} completed={}", r.errors, r.completed)
                }
                MaintenanceOutcome::Skipped(reason) => format!("skipped {reason:?}"),
            },
            other => format!("unknown role {other}"),
        }
    });
    println!("\n{RESULT_MARK}{result}");
}
