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
//!
//! Backends: every `cella` command a test starts through [`TestHome::command`] uses the backend
//! named by `CELLA_TEST_BACKEND` (`auto`, `qemu` or `krun`), default `auto`: whichever backend
//! the host's KVM probe picks. So the whole functional VM suite runs on krun the day it runs on
//! a host with VMX/SVM KVM, and can be forced onto either backend anywhere. Tests that need
//! hardware KVM call [`require_kvm`] (`CELLA_REQUIRE_KVM=1` makes a missing KVM a failure).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Set to `1` to turn a missing VM prerequisite into a failure.
pub const REQUIRE_VM_ENV: &str = "CELLA_REQUIRE_VM";

/// Set to `1` to turn a missing hardware-KVM prerequisite (krun tests) into a failure.
pub const REQUIRE_KVM_ENV: &str = "CELLA_REQUIRE_KVM";

/// Names the backend every test command uses (`auto`, `qemu`, `krun`); unset means `auto`.
pub const TEST_BACKEND_ENV: &str = "CELLA_TEST_BACKEND";

/// The variable `cella` reads as the default of `--backend`.
pub const CLI_BACKEND_ENV: &str = "CELLA_BACKEND";

/// Where setup installs libkrunfw under the kernel directory (cella-runtime's `KRUNFW_PATH`).
const KRUNFW_PATH: &str = "krun/libkrunfw.so.5.6.1";

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

/// Whether krun VM tests must run rather than skip.
pub fn kvm_required() -> bool {
    std::env::var(REQUIRE_KVM_ENV).is_ok_and(|v| v == "1")
}

/// The backend tests are asked to use (`CELLA_TEST_BACKEND`), if any.
pub fn test_backend() -> Option<String> {
    std::env::var(TEST_BACKEND_ENV).ok().filter(|v| !v.is_empty())
}

/// Why a krun VM test cannot run here, if it cannot: the same checks as cella's KVM probe
/// (VMX or SVM, no kvm_pvm, `KVM_CREATE_VM` works) plus the krun assets.
pub fn kvm_missing() -> Option<String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("KVM is kvm-pvm, which cannot run the krun guest kernel".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().filter(|l| l.starts_with("flags"));
    if !flags.flat_map(str::split_whitespace).any(|f| f == "vmx" || f == "svm") {
        return Some("the CPU offers no VMX or SVM".into());
    }
    if let Err(why) = create_vm() {
        return Some(why);
    }
    let assets = assets_home();
    if !assets.join("kernel/current.json").is_file() || !assets.join("rootfs/default").is_dir() {
        return Some(format!("no guest assets under {} (run scripts/setup)", assets.display()));
    }
    let kernel = assets.join("kernel");
    if !kernel.join(KRUNFW_PATH).is_file() || !kernel.join("cella-agent").is_file() {
        return Some(format!("krun assets missing under {} (run scripts/setup)", kernel.display()));
    }
    None
}

/// Opens /dev/kvm and creates (and closes) one VM.
fn create_vm() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // SAFETY: KVM_CREATE_VM takes an integer argument and returns a new fd or -1; `kvm` is open.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!("KVM_CREATE_VM failed: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `vm` was just returned by the kernel and nothing else owns it.
    unsafe { libc::close(vm) };
    Ok(())
}

/// Like [`require_vm`] for tests that need hardware KVM (the krun backend): true when the test
/// should run; prints why and returns false when it should be skipped; panics when it cannot
/// run but `CELLA_REQUIRE_KVM=1`.
pub fn require_kvm(test: &str) -> bool {
    match kvm_missing() {
        None => true,
        Some(why) if kvm_required() => panic!("{test}: KVM test cannot run: {why}"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}; set {REQUIRE_KVM_ENV}=1 to make this a failure");
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
        std::os::unix::fs::symlink(
            assets.join("rootfs/default"),
            dir.path().join("rootfs/default"),
        )
        .unwrap();
        Self { dir }
    }

    /// The home's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A command running `bin` with this home, the test backend (see the module doc) and a
    /// fresh process group.
    pub fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env("CELLA_HOME", self.path()).env_remove("CELLA_LOG").process_group(0);
        match test_backend() {
            Some(backend) => cmd.env(CLI_BACKEND_ENV, backend),
            None => cmd.env_remove(CLI_BACKEND_ENV),
        };
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

    /// Names of the sandbox rows in this home's state database (none if it has no database),
    /// read from the SQLite file itself.
    pub fn sandbox_rows(&self) -> Vec<String> {
        let path = self.path().join("db/cella.db");
        if !path.exists() {
            return Vec::new();
        }
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let db = cella_db::Db::open(&path).await.expect("open the test home's database");
            let rows = db.list_sandboxes().await.expect("list sandbox rows");
            db.close().await;
            rows.into_iter().map(|row| row.name).collect()
        })
    }

    /// Waits up to 20 s until no sandbox row, no sandbox directory, no socket and no process
    /// naming this home (an emulator, a sandbox process) is left; panics with what is left
    /// otherwise.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let home_text = self.path().to_string_lossy().into_owned();
        loop {
            let dirs = self.sandbox_dirs();
            let run = self.run_entries();
            let processes = processes_matching(&home_text);
            let rows = self.sandbox_rows();
            let sockets_gone = run.iter().all(|e| e.ends_with(".lock"));
            if dirs.is_empty() && sockets_gone && processes.is_empty() && rows.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "left behind: rows {rows:?}, dirs {dirs:?}, run/ {run:?}, \
                     processes {processes:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
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
    let cache = std::env::var_os("CELLA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/cella")
    });
    let dir = cache.join("debian-bookworm-python");
    dir.join("usr/bin/python3").exists().then_some(dir)
}

/// One entry of [`tree_snapshot`]: path, size, mode and content (files only).
pub type SnapshotEntry = (String, u64, u32, Vec<u8>);

/// Everything under `dir`, to prove a root was not modified.
pub fn tree_snapshot(dir: &Path) -> Vec<SnapshotEntry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() { std::fs::read(&path).unwrap() } else { Vec::new() };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path.display().to_string(), meta.len(), meta.mode(), content));
        }
    }
    out.sort();
    out
}

/// Spawns `cmd` (stdin null, stdout piped, stderr inherited) and waits until its stdout has
/// shown `marker`. Returns the child and a thread collecting all of its stdout. Kills the
/// child's process group and panics if the marker does not come within [`COMMAND_TIMEOUT`].
pub fn spawn_until(mut cmd: Command, marker: &str) -> (Child, std::thread::JoinHandle<Vec<u8>>) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn command");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.as_bytes().to_vec();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if !told && all.windows(marker.len()).any(|w| w == marker.as_slice()) {
                told = true;
                let _ = tx.send(());
            }
        }
        all
    });
    if rx.recv_timeout(COMMAND_TIMEOUT).is_err() {
        // SAFETY: plain kill(2) on the process group the caller created (process_group(0)).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        panic!("the command never printed the marker");
    }
    (child, reader)
}
