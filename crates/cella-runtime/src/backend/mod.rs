//! The seam between the sandbox process and a VMM.
//!
//! A backend turns a [`VmSpec`] into a running VM and hands back the host end of the agent's
//! console port as a connected byte stream. Everything above this module (handshake, relay,
//! timers, lifecycle) speaks only to that stream and to [`RunningVm`], so it runs unchanged on
//! either backend and is testable without a VM.

pub mod probe;
pub mod qemu;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::UnixStream;

use crate::config::BackendKind;

/// What the guest should look like, independent of the VMM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox name, for logs and the guest hostname.
    pub name: String,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Uncompressed guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the agent as `/init`.
    pub initramfs: PathBuf,
    /// Host directory attached read-only as the guest's lower root.
    pub rootfs: PathBuf,
    /// Writable disk holding the guest's upper layer (persistent sandboxes); `None` gives the
    /// guest a tmpfs upper layer that vanishes with the VM.
    pub upper_disk: Option<PathBuf>,
    /// Where the VMM connects the agent's console port (a Unix socket path the backend binds).
    pub port_socket: PathBuf,
    /// File receiving the guest kernel console.
    pub console_log: PathBuf,
    /// File receiving the VMM's own diagnostics.
    pub vmm_log: PathBuf,
}

/// How the VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The VMM exited with this status (0 after a guest poweroff).
    Exited(i32),
    /// The VMM was killed by this signal.
    Signaled(i32),
}

/// A VM that was started. Dropping it does not stop it; call [`RunningVm::kill`].
pub trait RunningVm: Send {
    /// Host pid of the VMM process, when it runs in its own process.
    fn pid(&self) -> Option<u32>;

    /// Waits until the VM has ended.
    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<VmExit>> + Send + '_>>;

    /// Ends the VM at once (SIGKILL for a child VMM).
    fn kill(&mut self) -> std::io::Result<()>;
}

/// A VM and the host end of its agent port.
pub struct LaunchedVm {
    /// The VM.
    pub vm: Box<dyn RunningVm>,
    /// The agent's console port, connected.
    pub port: UnixStream,
    /// Name of the accelerator in use (`kvm` or `tcg`), for logs and benchmarks.
    pub accelerator: &'static str,
}

/// Starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VMM binary is not installed.
    #[error("{binary} is not installed or not on PATH: install the qemu-system-x86 package (scripts/setup does)")]
    VmmMissing {
        /// The binary looked for.
        binary: String,
    },
    /// The VMM process could not be spawned.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The port socket could not be set up.
    #[error("cannot listen on agent port socket {path}")]
    PortSocket {
        /// The socket path.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited before connecting the agent port.
    #[error("{binary} exited with {status} before the VM started: {log_tail}")]
    EarlyExit {
        /// The binary.
        binary: String,
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The VMM did not connect the agent port in time.
    #[error("{binary} did not connect the agent port within {waited:?}")]
    PortTimeout {
        /// The binary.
        binary: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A log file could not be created.
    #[error("cannot create log file {path}")]
    Log {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The requested backend cannot run on this host.
    #[error("the {backend} backend cannot run here: {reason}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// Why, in words for the user.
        reason: String,
    },
}

/// Picks the backend for `requested` on this host.
///
/// `auto` would pick krun when KVM works and its kernel is installed; the krun backend is not
/// built yet, so `auto` means qemu (with KVM acceleration where usable) and `krun` is refused
/// with a reason.
pub fn select(requested: BackendKind) -> Result<BackendKind, BackendError> {
    match requested {
        BackendKind::Auto | BackendKind::Qemu => Ok(BackendKind::Qemu),
        BackendKind::Krun => {
            let reason = match probe::probe_kvm() {
                probe::KvmSupport::Unusable(why) => why,
                probe::KvmSupport::Usable => "the krun backend is not built yet".to_string(),
            };
            Err(BackendError::Unavailable { backend: "krun", reason })
        }
    }
}

/// Default boot timeout for an accelerator: a TCG guest boots tens of times slower.
pub fn default_boot_timeout(accelerator: &str) -> Duration {
    match accelerator {
        "kvm" => Duration::from_secs(15),
        _ => Duration::from_secs(90),
    }
}

/// The last `max_lines` lines of a log file, for error messages; empty when unreadable.
pub fn log_tail(path: &std::path::Path, max_lines: usize) -> String {
    const MAX_READ: u64 = 64 * 1024;
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_READ)));
    let mut buf = Vec::new();
    let _ = file.take(MAX_READ).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}
