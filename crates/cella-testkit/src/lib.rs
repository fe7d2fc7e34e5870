//! The one helper behind every test that boots a real guest.
//!
//! Each test gets a fresh `CELLA_HOME` in a temporary directory; the guest assets that
//! `scripts/setup` installed (kernel, initramfs, default root) are linked into it from the asset
//! home (`CELLA_TEST_ASSETS`, default `~/.cella`), so tests share the expensive files but never
//! state.
//!
//! When the assets or QEMU are missing, a VM test is skipped with a message on stderr, unless
//! `CELLA_REQUIRE_VM=1` (set by CI), in which case it fails: a guest that cannot boot must fail
//! the run, never pass it silently. Every command a test runs has a deadline after which its
//! whole process group is killed, so one hung guest cannot hang the suite.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Set to `1` to turn a missing VM prerequisite into a failure.
pub const REQUIRE_VM_ENV: &str = "CELLA_REQUIRE_VM";

/// Deadline for one `cella` invocation that boots a guest under software emulation.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Where setup put the shared guest assets.
pub fn assets_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("CELLA_TEST_ASSETS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cella")
}

/// Whether VM tests must run (CI) rather than skip.
pub fn vm_required() -> bool {
    std::env::var(REQUIRE_VM_ENV).is_ok_and(|v| v == "1")
}

/// Why a VM test cannot run here, if it cannot.
pub fn vm_missing() -> Option<String> {
    let assets = assets_home();
    if !assets.join("kernel/current.json").is_file() {
        return Some(format!("no guest kernel under {} (run scripts/setup)", assets.display()));
    }
    if !assets.join("rootfs/default").is_dir() {
        return Some(format!("no default root under {} (run scripts/setup)", assets.display()));
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    if !on_path {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    None
}

/// Returns true when the VM test should run; prints why and returns false when it should be
/// skipped; panics when it cannot run but `CELLA_REQUIRE_VM=1`.
pub fn require_vm(test: &str) -> bool {
    match vm_missing() {
        None => true,
        Some(why) if vm_required() => panic!("{test}: VM test cannot run: {why}"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}; set {REQUIRE_VM_ENV}=1 to make this a failure");
            false
        }
    }
}

/// A fresh `CELLA_HOME` that shares the guest assets.
pub struct TestHome {
    dir: tempfile::TempDir,
}

impl TestHome {
    /// Creates the home and links the assets into it.
    pub fn new() -> Self {
        // Short prefix: sandbox sockets live under the home and Unix socket paths are short.
        let dir = tempfile::Builder::new().prefix("ch").tempdir_in("/tmp").expect("temp home");
        let assets = assets_home();
        std::os::unix::fs::symlink(assets.join("kernel"), dir.path().join("kernel")).unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink(assets.join("rootfs/default"), dir.path().join("rootfs/default"))
            .unwrap();
        Self { dir }
    }

    /// The home's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command running `bin` with this home and a fresh process group.
    pub fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("CELLA_HOME", self.path()).env_remove("CELLA_LOG").process_group(0);
        cmd
    }

    /// Names of the entries in `sandboxes/` (should be empty after ephemeral runs).
    pub fn sandbox_dirs(&self) -> Vec<String> {
        list(&self.path().join("sandboxes"))
    }

    /// Names of the entries in `run/` (sockets, locks).
    pub fn run_entries(&self) -> Vec<String> {
        list(&self.path().join("run"))
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Bytes written to stdout.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// The exit code; panics with the output if the process was killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// stderr as text, for assertions and failure messages.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `cmd` with `stdin` bytes, collecting output, killing its process group at `timeout`.
pub fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Finished {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &data);
    });
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_or_kill(&mut child, timeout);
    let _ = writer.join();
    Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

fn drain(mut src: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = src.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child`; at `timeout`, kills its process group and panics.
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill takes plain integers; a negative pid names the process group the
            // test created for this child (process_group(0)).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("command did not finish within {timeout:?}; killed its process group");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of running processes whose command line contains `needle` (for leak checks).
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The cached Debian root with python3 built by `scripts/debian-rootfs`, if present
/// (`CELLA_DEBIAN_ROOTFS` names it explicitly).
pub fn debian_rootfs() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CELLA_DEBIAN_ROOTFS").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return dir.join("usr/bin/python3").exists().then_some(dir);
    }
    let cache = std::env::var_os("CELLA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cella"));
    let dir = cache.join("debian-bookworm-python");
    dir.join("usr/bin/python3").exists().then_some(dir)
}
