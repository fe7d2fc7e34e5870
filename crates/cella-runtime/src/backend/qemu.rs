//! The qemu backend: `qemu-system-x86_64` as a child of the sandbox process.
//!
//! The guest boots on QEMU's `microvm` machine straight into the uncompressed kernel's PVH entry
//! (no firmware), with the agent's console port on virtio-serial and the user's root on a
//! virtio-9p share that QEMU itself opens read-only, so a guest with root cannot write through
//! it. `accel=kvm` is used only when the KVM probe passes; otherwise `accel=tcg`.
//!
//! Under TCG the kernel can hang calibrating the TSC. The command line tells it the clock rate
//! instead (`tsc_early_khz`, `lpj`), derived from this host's CPU frequency on every launch.
//!
//! QEMU runs in its own session and process group, so a Ctrl-C on the user's terminal reaches
//! the guest command through the agent instead of killing the emulator, and with
//! `PR_SET_PDEATHSIG` so a sandbox process killed with SIGKILL never leaves it running. It is
//! confined ([`confine`]): its own seccomp filter, no new privileges, no core dumps, and (as
//! root) a mount namespace in which the cella home holds only this sandbox's files.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::process::{Child, Command};

use super::confine::{self, Jail, Keep};
use super::{probe, BackendError, LaunchedVm, RunningVm, VmExit, VmSpec};

/// The emulator binary, looked up on PATH.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// How long QEMU may take to start and connect the agent port. It does so before the guest
/// boots, so this bounds QEMU's own start-up, not the boot.
const PORT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Kernel timer frequency of Debian's kernels; `lpj` (loops per jiffy) is derived from it.
const GUEST_HZ: u64 = 250;

/// The accelerator QEMU will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// The accelerator for this host, from the KVM probe.
    pub fn detect() -> Self {
        if probe::probe_kvm().is_usable() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The host CPU frequency in kHz from `/proc/cpuinfo`, if it reports one.
pub fn host_cpu_khz(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .find_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        .map(|mhz| (mhz * 1000.0).round() as u64)
}

/// The guest kernel command line.
pub fn kernel_cmdline(spec: &VmSpec, accel: Accel, host_khz: Option<u64>) -> String {
    let mut args = vec![
        "console=ttyS0".to_string(),
        "quiet".into(),
        "panic=-1".into(),
        "reboot=t".into(),
        "tsc=reliable".into(),
        "no_timer_check".into(),
        "cella.root=9p:rootfs".into(),
        format!("cella.hostname={}", spec.name),
    ];
    if spec.upper_disk.is_some() {
        args.push("cella.upper=blk:/dev/vda".into());
    }
    if let (Accel::Tcg, Some(khz)) = (accel, host_khz) {
        args.push(format!("tsc_early_khz={khz}"));
        args.push(format!("lpj={}", khz * 1000 / GUEST_HZ));
    }
    args.join(" ")
}

/// QEMU's arguments for `spec`.
pub fn qemu_args(spec: &VmSpec, accel: Accel, host_khz: Option<u64>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(OsString::from));
    let machine = format!("microvm,accel={},pit=on,pic=on,rtc=on", accel.name());
    let cpu = if accel == Accel::Kvm { "host" } else { "max" };
    push(&["-M", &machine, "-cpu", cpu]);
    push(&["-m", &spec.memory_mib.to_string(), "-smp", &spec.cpus.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&confine::SECCOMP_ARGS);
    push(&[
        "-kernel",
        &spec.kernel.to_string_lossy(),
        "-initrd",
        &spec.initramfs.to_string_lossy(),
    ]);
    push(&["-append", &kernel_cmdline(spec, accel, host_khz)]);

    let console = format!("file,id=con0,path={},append=on", qemu_escape(&spec.console_log));
    push(&["-chardev", &console, "-serial", "chardev:con0"]);

    let port = format!("socket,id=agent,path={}", qemu_escape(&spec.port_socket));
    push(&["-device", "virtio-serial-device", "-chardev", &port]);
    let port_dev = format!("virtserialport,chardev=agent,name={}", cella_protocol::AGENT_PORT_NAME);
    push(&["-device", &port_dev]);

    let fsdev = format!(
        "local,id=rootfs,path={},security_model=none,readonly=on",
        qemu_escape(&spec.rootfs)
    );
    push(&["-fsdev", &fsdev, "-device", "virtio-9p-device,fsdev=rootfs,mount_tag=rootfs"]);

    if let Some(disk) = &spec.upper_disk {
        let drive = format!("file={},if=none,id=upper,format=raw,discard=unmap", qemu_escape(disk));
        push(&["-drive", &drive, "-device", "virtio-blk-device,drive=upper"]);
    }
    args
}

/// QEMU option values separate fields with `,`; a literal comma is written `,,`.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Finds `binary` on PATH.
fn find_on_path(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(binary)).find(|p| p.is_file())
}

/// Starts QEMU for `spec` and waits for it to connect the agent port.
///
/// Must be called from a thread that lives as long as the VM: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child exits, so calling this from a short-lived blocking-pool thread
/// would kill QEMU early. The sandbox process calls it from its main thread.
pub async fn launch(spec: &VmSpec, accel: Accel) -> Result<LaunchedVm, BackendError> {
    let binary = find_on_path(QEMU_BINARY)
        .ok_or_else(|| BackendError::VmmMissing { binary: QEMU_BINARY.into() })?;
    let _ = std::fs::remove_file(&spec.port_socket);
    let listener = UnixListener::bind(&spec.port_socket)
        .map_err(|source| BackendError::PortSocket { path: spec.port_socket.clone(), source })?;

    let host_khz = host_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let args = qemu_args(spec, accel, host_khz);
    // The full argv on one line, so a benchmark can replay the exact command (docs/benchmarks.md).
    let argv: Vec<_> =
        std::iter::once(binary.as_os_str()).chain(args.iter().map(OsString::as_os_str)).collect();
    tracing::info!(sandbox = %spec.name, ?argv, "qemu command line");
    let jail = Jail::prepare(&spec.state_root, &kept_paths(spec))
        .map_err(|source| BackendError::Confine { binary: QEMU_BINARY.into(), source })?;
    if jail.hides_home() {
        tracing::debug!(sandbox = %spec.name, "qemu runs in its own mount namespace");
    } else {
        tracing::info!(sandbox = %spec.name,
            "qemu sees the whole cella home: a private mount namespace needs root");
    }
    let mut child = spawn(&binary, args, &spec.vmm_log, jail)?;
    let port = tokio::select! {
        accepted = listener.accept() => accepted
            .map(|(stream, _)| stream)
            .map_err(|source| BackendError::PortSocket { path: spec.port_socket.clone(), source }),
        status = child.wait() => Err(BackendError::EarlyExit {
            binary: QEMU_BINARY.into(),
            status: status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
            log_tail: super::log_tail(&spec.vmm_log, 10),
        }),
        _ = tokio::time::sleep(PORT_CONNECT_TIMEOUT) => Err(BackendError::PortTimeout {
            binary: QEMU_BINARY.into(),
            waited: PORT_CONNECT_TIMEOUT,
        }),
    };
    // QEMU connects once; nobody else may use the path afterwards.
    let _ = std::fs::remove_file(&spec.port_socket);
    match port {
        Ok(port) => {
            Ok(LaunchedVm { vm: Box::new(QemuVm { child }), port, accelerator: accel.name() })
        }
        Err(err) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(err)
        }
    }
}

/// What QEMU opens by path: everything else in the cella home is hidden from it.
fn kept_paths(spec: &VmSpec) -> Vec<Keep> {
    let mut keep = vec![Keep::ro(&spec.kernel), Keep::ro(&spec.initramfs), Keep::ro(&spec.rootfs)];
    keep.push(Keep::rw(&spec.port_socket));
    if let Some(logs) = spec.console_log.parent() {
        keep.push(Keep::rw(logs));
    }
    if let Some(disk) = &spec.upper_disk {
        keep.push(Keep::rw(disk));
    }
    keep
}

fn spawn(
    binary: &Path,
    args: Vec<OsString>,
    log: &Path,
    jail: Jail,
) -> Result<Child, BackendError> {
    let log_err = |source| BackendError::Log { path: log.to_path_buf(), source };
    let out = File::create(log).map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let parent = std::process::id();

    let mut cmd = std::process::Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (setsid, prctl, getppid, _exit, and the system calls of `Jail::enter`, whose
    // strings were all built before the fork); it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would reap us.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            jail.enter()
        });
    }
    Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BackendError::Spawn { binary: binary.display().to_string(), source })
}

/// A QEMU child process.
struct QemuVm {
    child: Child,
}

impl RunningVm for QemuVm {
    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<VmExit>> + Send + '_>> {
        Box::pin(async move {
            let status = self.child.wait().await?;
            Ok(match (status.code(), status.signal()) {
                (Some(code), _) => VmExit::Exited(code),
                (None, Some(signal)) => VmExit::Signaled(signal),
                (None, None) => VmExit::Exited(-1),
            })
        })
    }

    fn kill(&mut self) -> std::io::Result<()> {
        self.child.start_kill()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "t1".into(),
            cpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/init.cpio".into(),
            rootfs: "/roots/a,b".into(),
            upper_disk: None,
            port_socket: "/run/t1.port".into(),
            console_log: "/s/console.log".into(),
            vmm_log: "/s/vmm.log".into(),
            state_root: "/home-of-cella".into(),
        }
    }

    #[test]
    fn clock_rate_comes_from_the_host_not_a_constant() {
        let info = "processor: 0\ncpu MHz\t\t: 2445.426\n";
        assert_eq!(host_cpu_khz(info), Some(2_445_426));
        assert_eq!(host_cpu_khz("nothing here"), None);
        let line = kernel_cmdline(&spec(), Accel::Tcg, Some(2_445_426));
        assert!(line.contains("tsc_early_khz=2445426"));
        assert!(line.contains(&format!("lpj={}", 2_445_426u64 * 1000 / 250)));
    }

    #[test]
    fn persistent_upper_layer_is_a_virtio_disk() {
        let mut spec = spec();
        assert!(!kernel_cmdline(&spec, Accel::Tcg, None).contains("cella.upper"));
        spec.upper_disk = Some("/s/upper.ext4".into());
        assert!(kernel_cmdline(&spec, Accel::Tcg, None).contains("cella.upper=blk:/dev/vda"));
        let args: Vec<String> = qemu_args(&spec, Accel::Tcg, None)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(args.iter().any(|a| a.starts_with("file=/s/upper.ext4,")));
    }

    #[test]
    fn kvm_needs_no_clock_hints() {
        let line = kernel_cmdline(&spec(), Accel::Kvm, Some(2_445_426));
        assert!(!line.contains("tsc_early_khz"));
    }

    #[test]
    fn root_is_shared_read_only_and_commas_are_escaped() {
        let args: Vec<String> = qemu_args(&spec(), Accel::Tcg, None)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let fsdev = args.iter().find(|a| a.starts_with("local,")).unwrap();
        assert!(fsdev.contains("path=/roots/a,,b"));
        assert!(fsdev.ends_with("readonly=on"));
        assert!(args.iter().any(|a| a == "microvm,accel=tcg,pit=on,pic=on,rtc=on"));
        assert!(args.iter().any(|a| a.contains("name=cella.agent")));
        assert!(args.windows(2).any(|w| w[0] == "-smp" && w[1] == "2"));
    }
}
