//! The seam between the sandbox process and a VMM.
//!
//! A backend turns a [`VmSpec`] into a running VM and hands back the host end of the agent's
//! console port as a connected byte stream. Everything above this module (handshake, relay,
//! timers, lifecycle) speaks only to that stream and to [`RunningVm`], so it runs unchanged on
//! either backend and is testable without a VM.
//!
//! [`select`] decides which backend a sandbox gets: `krun` only where hardware KVM really works
//! (the [`probe`]) and its kernel library is installed; `auto` falls back to `qemu` otherwise,
//! while an explicit `krun` fails at once with the probe's reason.

pub mod confine;
pub mod krun;
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
    /// The cella home. A confined VMM sees none of it but the paths above.
    pub state_root: PathBuf,
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
    /// The VMM's confinement could not be prepared.
    #[error("cannot confine {binary}: {source}")]
    Confine {
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
    /// The krun boot directory could not be built.
    #[error(transparent)]
    BootDir(#[from] krun::bootdir::BootDirError),
    /// msb_krun could not build the VM.
    #[error(transparent)]
    Krun(#[from] krun::KrunError),
    /// The socket pair carrying the agent port could not be created.
    #[error("cannot create the agent port socket pair")]
    PortPair {
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The krun backend needs the process's main thread, and it is not serving VMs.
    #[error("the sandbox process has no VMM thread to run a krun guest on")]
    VmmThreadGone,
}

/// What `krun` needs besides KVM: whether its kernel library and the agent are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KrunInstall {
    /// libkrunfw and the agent binary are in the kernel directory.
    Installed,
    /// libkrunfw is missing.
    NoKernelLibrary,
    /// The agent binary for the boot directory is missing.
    NoAgent,
}

/// Picks the backend for `requested` on this host: probes KVM when krun is a candidate.
pub fn select(requested: BackendKind, krun: KrunInstall) -> Result<BackendKind, BackendError> {
    match requested {
        BackendKind::Qemu => Ok(BackendKind::Qemu),
        BackendKind::Auto | BackendKind::Krun => decide(requested, krun, &probe::probe_kvm()),
    }
}

/// The decision behind [`select`], for given probe results.
pub fn decide(
    requested: BackendKind,
    krun: KrunInstall,
    kvm: &probe::KvmSupport,
) -> Result<BackendKind, BackendError> {
    let unavailable = match (kvm, krun) {
        (probe::KvmSupport::Unusable(why), _) => why.clone(),
        (probe::KvmSupport::Usable, KrunInstall::Installed) => return Ok(BackendKind::Krun),
        (probe::KvmSupport::Usable, KrunInstall::NoKernelLibrary) => {
            format!("libkrunfw, its guest kernel, is not installed: {}", crate::assets::SETUP_HINT)
        }
        (probe::KvmSupport::Usable, KrunInstall::NoAgent) => {
            format!("the guest agent is not installed for it: {} again", crate::assets::SETUP_HINT)
        }
    };
    match requested {
        BackendKind::Krun => {
            Err(BackendError::Unavailable { backend: "krun", reason: unavailable })
        }
        _ => Ok(BackendKind::Qemu),
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

#[cfg(test)]
mod tests {
    use super::probe::KvmSupport;
    use super::*;

    fn pvm() -> KvmSupport {
        KvmSupport::Unusable(
            "KVM is kvm-pvm, a paravirtual module that cannot run this guest kernel".into(),
        )
    }

    #[test]
    fn auto_picks_krun_only_with_working_kvm_and_its_files() {
        let auto = BackendKind::Auto;
        assert!(matches!(
            decide(auto, KrunInstall::Installed, &KvmSupport::Usable),
            Ok(BackendKind::Krun)
        ));
        assert!(matches!(decide(auto, KrunInstall::Installed, &pvm()), Ok(BackendKind::Qemu)));
        assert!(matches!(
            decide(auto, KrunInstall::NoKernelLibrary, &KvmSupport::Usable),
            Ok(BackendKind::Qemu)
        ));
        assert!(matches!(
            decide(auto, KrunInstall::NoAgent, &KvmSupport::Usable),
            Ok(BackendKind::Qemu)
        ));
    }

    #[test]
    fn explicit_krun_without_working_kvm_fails_with_the_probe_reason() {
        let err = decide(BackendKind::Krun, KrunInstall::Installed, &pvm()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the krun backend cannot run here: KVM is kvm-pvm, a paravirtual module that cannot run this guest kernel"
        );
        let err = decide(BackendKind::Krun, KrunInstall::NoKernelLibrary, &KvmSupport::Usable)
            .unwrap_err();
        assert!(err.to_string().contains("libkrunfw, its guest kernel, is not installed"), "{err}");
        assert!(err.to_string().contains("scripts/setup"), "{err}");
    }

    #[test]
    fn qemu_is_never_probed_away() {
        assert!(matches!(select(BackendKind::Qemu, KrunInstall::Installed), Ok(BackendKind::Qemu)));
    }

    #[test]
    fn on_a_kvm_pvm_host_krun_is_refused_and_auto_means_qemu() {
        if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
            eprintln!("not a kvm-pvm host; the decision itself is covered by the tests above");
            return;
        }
        let err = select(BackendKind::Krun, KrunInstall::Installed).unwrap_err();
        assert!(err.to_string().contains("kvm-pvm"), "{err}");
        assert!(matches!(select(BackendKind::Auto, KrunInstall::Installed), Ok(BackendKind::Qemu)));
    }
}
