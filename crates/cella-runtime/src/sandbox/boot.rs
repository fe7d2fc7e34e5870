//! Booting: from a validated config to a guest agent that has answered its handshake.
//!
//! The boot watchdog lives here: the guest gets a bounded time to say hello. A guest that hangs,
//! panics or powers off before that is killed and reported with the tail of its console log, the
//! only witness of a boot that went wrong.
//!
//! The backend is chosen here too ([`backend::select`]); a krun guest needs the main thread,
//! which only a sandbox process started in the krun model ([`Host::InProcess`]) can give.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cella_protocol::{
    check_version, Frame, FrameCodec, FrameKind, Hello, HelloAck, Message, ProtocolError,
    CONTROL_STREAM, PROTOCOL_VERSION,
};
use futures::{SinkExt, StreamExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::process::Host;
use crate::assets::{AssetError, BootAssets};
use crate::backend::qemu::{self, Accel};
use crate::backend::{self, krun, BackendError, LaunchedVm, RunningVm, VmSpec};
use crate::config::{BackendKind, SandboxConfig};
use crate::home::Home;

/// Lines of the console log quoted in a boot error.
const CONSOLE_TAIL_LINES: usize = 15;

/// How often the agent sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// File name of a persistent sandbox's upper-layer disk inside its directory.
pub const UPPER_DISK_NAME: &str = "upper.ext4";

/// Size of a persistent sandbox's upper-layer disk. The file is sparse: it takes host space only
/// for what the guest writes.
const UPPER_DISK_BYTES: u64 = 8 << 30;

/// Booting failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Kernel or initramfs missing.
    #[error(transparent)]
    Assets(#[from] AssetError),
    /// The VMM could not be started.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The guest did not answer in time.
    #[error("guest did not answer within {waited:?} (boot timeout); {log} ends with:\n{tail}")]
    Timeout {
        /// How long it had.
        waited: Duration,
        /// The console log.
        log: ConsoleRef,
        /// Its last lines.
        tail: String,
    },
    /// The VM ended before the agent answered.
    #[error(
        "guest stopped during boot before its agent answered{vmm_said}; {log} ends with:\n{tail}"
    )]
    VmExited {
        /// What the VMM printed last, as `; the VMM said: ...`, or empty.
        vmm_said: String,
        /// The console log.
        log: ConsoleRef,
        /// Its last lines.
        tail: String,
    },
    /// The VMM itself failed while the guest was booting.
    #[error("the VMM failed while the guest was booting; {log} ends with:\n{tail}")]
    VmmFailed {
        /// The console log.
        log: ConsoleRef,
        /// Its last lines.
        tail: String,
        /// What the VMM reported.
        #[source]
        source: std::io::Error,
    },
    /// The persistent upper-layer disk could not be created.
    #[error(
        "cannot create the sandbox disk {path} (mkfs.ext4 from e2fsprogs is required): {detail}"
    )]
    UpperDisk {
        /// The disk image.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The agent's first frame was not a valid hello.
    #[error("guest agent handshake failed")]
    Handshake(#[source] ProtocolError),
}

/// The console log a boot error quotes, as its message names it: by path when the file stays,
/// as "its kernel console" when it goes with an ephemeral sandbox.
#[derive(Debug, Clone)]
pub struct ConsoleRef {
    /// The console log.
    pub path: PathBuf,
    /// Whether the file outlives the sandbox process.
    pub kept: bool,
}

impl std::fmt::Display for ConsoleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kept {
            write!(f, "console log {}", self.path.display())
        } else {
            f.write_str("its kernel console")
        }
    }
}

/// Console lines every boot prints and that explain nothing (microvm has no PCI bus).
const ROUTINE_CONSOLE_LINES: &[&str] = &["PCI: Fatal: No config space access function found"];

/// Starts every boot's part of the console log (which QEMU appends to): boot errors quote
/// only the lines after the last mark, `cella logs` shows where each boot began.
const BOOT_MARK: &str = "----- cella: boot ";

/// Appends the boot mark to the console log. A log that cannot be written only costs the mark.
fn mark_boot(console: &std::path::Path) {
    use std::io::Write;
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let file = std::fs::OpenOptions::new().create(true).append(true).open(console);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{BOOT_MARK}at unix time {since_epoch} -----");
    }
}

/// The last lines of the console log worth quoting (of this boot only), or a note that there
/// are none.
fn console_tail(path: &std::path::Path) -> String {
    let tail = backend::log_tail(path, CONSOLE_TAIL_LINES + ROUTINE_CONSOLE_LINES.len());
    let tail = match tail.rfind(BOOT_MARK) {
        Some(at) => {
            tail[at..].split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default()
        }
        None => tail,
    };
    if tail.is_empty() {
        return "(nothing: the guest kernel printed nothing)".into();
    }
    let lines: Vec<&str> =
        tail.lines().filter(|l| !ROUTINE_CONSOLE_LINES.iter().any(|r| l.contains(r))).collect();
    if lines.is_empty() {
        return "(nothing but routine lines: the guest kernel printed no warning)".into();
    }
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}

/// A guest whose agent has answered.
pub struct Booted {
    /// The VM.
    pub vm: Box<dyn RunningVm>,
    /// The agent's handshake.
    pub hello: Hello,
    /// Reads frames from the agent.
    pub reader: FramedRead<OwnedReadHalf, FrameCodec>,
    /// Writes frames to the agent.
    pub writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    /// `kvm` or `tcg`.
    pub accelerator: &'static str,
    /// The backend running the guest.
    pub backend: BackendKind,
    /// Time from the start of [`boot`] to the agent's hello.
    pub boot_time: Duration,
}

/// Boots the sandbox described by `config`.
pub async fn boot(home: &Home, config: &SandboxConfig, host: &Host) -> Result<Booted, BootError> {
    let started = Instant::now();
    let assets = BootAssets::load(&home.kernel_dir())?;
    let kind = backend::select(config.backend, assets.krun_install())?;
    let upper_disk = if config.ephemeral {
        None
    } else {
        let path = home.sandbox_dir(&config.name).join(UPPER_DISK_NAME);
        ensure_upper_disk(&path).await?;
        Some(path)
    };
    let spec = vm_spec(home, config, &assets, upper_disk);
    mark_boot(&spec.console_log);
    let launched = launch(home, kind, &spec, &assets, host).await?;
    let timeout = config
        .boot_timeout_secs
        .map(Duration::from_secs)
        .unwrap_or_else(|| backend::default_boot_timeout(launched.accelerator));

    let mut vm = launched.vm;
    let (read_half, write_half) = launched.port.into_split();
    let mut reader = FramedRead::new(read_half, FrameCodec::new());
    let mut writer = FramedWrite::new(write_half, FrameCodec::new());
    let console = ConsoleRef { path: spec.console_log.clone(), kept: !config.ephemeral };
    let hello = tokio::select! {
        hello = handshake(&mut reader, &mut writer) => hello,
        exit = vm.wait() => Err(vm_ended_early(exit, &console, &spec.vmm_log)),
        _ = tokio::time::sleep(timeout) => Err(BootError::Timeout {
            waited: timeout, tail: console_tail(&console.path), log: console.clone(),
        }),
    };
    match hello {
        Ok(hello) => Ok(Booted {
            vm,
            hello,
            reader,
            writer,
            accelerator: launched.accelerator,
            backend: kind,
            boot_time: started.elapsed(),
        }),
        Err(err) => {
            let _ = vm.kill();
            let _ = vm.wait().await;
            Err(err)
        }
    }
}

/// What the guest should look like: the config's resources, the installed kernel, the
/// sandbox's files. The sandbox's environment and working directory are not part of it: the
/// client sends them with every exec request, on either backend.
fn vm_spec(
    home: &Home,
    config: &SandboxConfig,
    assets: &BootAssets,
    upper_disk: Option<PathBuf>,
) -> VmSpec {
    let logs = home.sandbox_dir(&config.name).join("logs");
    VmSpec {
        name: config.name.clone(),
        cpus: config.cpus,
        memory_mib: config.memory_mib,
        kernel: assets.vmlinux.clone(),
        initramfs: assets.initramfs.clone(),
        rootfs: config.rootfs.clone(),
        upper_disk,
        port_socket: home.agent_port_socket(&config.name),
        console_log: logs.join("console.log"),
        vmm_log: logs.join("vmm.log"),
        state_root: home.root().to_path_buf(),
    }
}

/// Starts the VM on the selected backend.
async fn launch(
    home: &Home,
    kind: BackendKind,
    spec: &VmSpec,
    assets: &BootAssets,
    host: &Host,
) -> Result<LaunchedVm, BootError> {
    let launched = match (kind, host) {
        (BackendKind::Krun, Host::InProcess(thread)) => {
            let files = assets.krun().ok_or_else(|| BackendError::Unavailable {
                backend: "krun",
                reason: format!("its files are not installed: {}", crate::assets::SETUP_HINT),
            })?;
            krun::launch(spec, &files, &home.krun_boot_dir(&spec.name), thread).await?
        }
        // Only when setup installed krun between the process's start and this boot.
        (BackendKind::Krun, Host::Child) => return Err(BackendError::VmmThreadGone.into()),
        _ => qemu::launch(spec, Accel::detect()).await?,
    };
    Ok(launched)
}

/// The error for a VM that ended before its agent answered.
fn vm_ended_early(
    exit: std::io::Result<backend::VmExit>,
    console: &ConsoleRef,
    vmm_log: &std::path::Path,
) -> BootError {
    let (log, tail) = (console.clone(), console_tail(&console.path));
    match exit {
        Ok(_) => {
            // QEMU says on stderr why it stopped (no memory for the guest, a device it refused).
            let said: String =
                backend::log_tail(vmm_log, 3).replace('\n', " / ").chars().take(500).collect();
            let vmm_said = if said.is_empty() { said } else { format!("; the VMM said: {said}") };
            BootError::VmExited { vmm_said, log, tail }
        }
        Err(source) => BootError::VmmFailed { log, tail, source },
    }
}

/// Reads the agent's hello, checks its version and acknowledges it.
async fn handshake(
    reader: &mut FramedRead<OwnedReadHalf, FrameCodec>,
    writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
) -> Result<Hello, BootError> {
    let frame = match reader.next().await {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => return Err(BootError::Handshake(e)),
        None => std::future::pending::<Frame>().await, // the VM exit arm reports this
    };
    if frame.stream != CONTROL_STREAM || frame.kind != FrameKind::Hello {
        return Err(BootError::Handshake(ProtocolError::UnexpectedKind {
            expected: FrameKind::Hello,
            got: frame.kind,
        }));
    }
    let hello = Hello::from_frame(&frame).map_err(BootError::Handshake)?;
    check_version(&hello).map_err(BootError::Handshake)?;
    let ack = HelloAck {
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u64,
    };
    let frame = ack.to_frame(CONTROL_STREAM).map_err(BootError::Handshake)?;
    writer.send(frame).await.map_err(BootError::Handshake)?;
    Ok(hello)
}

/// Creates the sparse ext4 disk that holds a persistent sandbox's writes, once. A half-made
/// disk is never left under the final name: it is built under a temporary name and renamed.
async fn ensure_upper_disk(path: &std::path::Path) -> Result<(), BootError> {
    if path.exists() {
        return Ok(());
    }
    let fail = |detail: String| BootError::UpperDisk { path: path.to_path_buf(), detail };
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(|e| fail(e.to_string()))?;
    file.set_len(UPPER_DISK_BYTES).map_err(|e| fail(e.to_string()))?;
    drop(file);
    let output = tokio::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&partial)
        .output()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(fail(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    std::fs::rename(&partial, path).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::backend::krun::{krun_config, KrunAssets};

    #[test]
    fn boot_errors_quote_the_console_without_routine_lines_or_a_path_that_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        assert_eq!(console_tail(&log), "(nothing: the guest kernel printed nothing)");
        std::fs::write(&log, "[ 0.2] PCI: Fatal: No config space access function found\n").unwrap();
        assert!(console_tail(&log).starts_with("(nothing but routine lines"));
        let mut text = String::from("[ 0.2] PCI: Fatal: No config space access function found\n");
        for i in 0..40 {
            text.push_str(&format!("[ 1.{i}] line {i}\n"));
        }
        std::fs::write(&log, text).unwrap();
        let tail = console_tail(&log);
        assert_eq!(tail.lines().count(), CONSOLE_TAIL_LINES);
        assert!(tail.ends_with("line 39") && !tail.contains("PCI"), "{tail}");

        // Only this boot's lines: what came before the last boot mark is an earlier boot's.
        std::fs::write(&log, "[ 9.9] earlier boot panicked\n").unwrap();
        mark_boot(&log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"[ 0.5] cannot mount /upper\n"))
            .unwrap();
        assert_eq!(console_tail(&log), "[ 0.5] cannot mount /upper");
        mark_boot(&log);
        assert_eq!(console_tail(&log), "(nothing: the guest kernel printed nothing)");

        let kept = ConsoleRef { path: log.clone(), kept: true };
        assert_eq!(kept.to_string(), format!("console log {}", log.display()));
        let gone = ConsoleRef { path: log, kept: false };
        assert_eq!(gone.to_string(), "its kernel console");
    }

    fn config() -> SandboxConfig {
        SandboxConfig {
            name: "web".into(),
            rootfs: "/roots/web".into(),
            cpus: 3,
            memory_mib: 1024,
            env: vec![("TOKEN".into(), "s3cr3t\tvalue".into())],
            workdir: Some("/srv/app-dir".into()),
            backend: BackendKind::Krun,
            ephemeral: true,
            stop_when_detached: true,
            idle_timeout_secs: None,
            max_duration_secs: None,
            boot_timeout_secs: None,
        }
    }

    fn assets() -> BootAssets {
        BootAssets {
            kernel_version: "6.1".into(),
            vmlinux: "/k/vmlinux".into(),
            initramfs: "/k/i.cpio".into(),
            agent: Some("/k/cella-agent".into()),
            krunfw: Some("/k/krun/libkrunfw.so.5.6.1".into()),
        }
    }

    #[test]
    fn the_vm_gets_the_sandbox_resources_root_and_files() {
        let home = Home::at("/h");
        let spec = vm_spec(&home, &config(), &assets(), None);
        assert_eq!((spec.cpus, spec.memory_mib), (3, 1024));
        assert_eq!(spec.rootfs, Path::new("/roots/web"));
        assert_eq!(spec.console_log, Path::new("/h/sandboxes/web/logs/console.log"));
        assert_eq!(spec.port_socket, Path::new("/h/run/web.port"));
    }

    #[test]
    fn env_and_workdir_never_reach_the_kernel_command_line_on_either_backend() {
        let home = Home::at("/h");
        let spec = vm_spec(&home, &config(), &assets(), None);
        let files = KrunAssets {
            krunfw: "/k/krun/libkrunfw.so.5.6.1".into(),
            agent: "/k/cella-agent".into(),
        };
        let krun = format!("{:?}", krun_config(&spec, &files, &home.krun_boot_dir("web")));
        let qemu = qemu::kernel_cmdline(&spec, Accel::Tcg, Some(2_000_000));
        for boot_text in [krun, qemu] {
            assert!(!boot_text.contains("s3cr3t") && !boot_text.contains("TOKEN"), "{boot_text}");
            assert!(!boot_text.contains("app-dir"), "{boot_text}");
        }
    }

    #[tokio::test]
    async fn krun_in_a_process_without_a_vmm_thread_is_refused() {
        let spec = vm_spec(&Home::at("/h"), &config(), &assets(), None);
        let err = launch(&Home::at("/h"), BackendKind::Krun, &spec, &assets(), &Host::Child)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, BootError::Backend(BackendError::VmmThreadGone)), "{err}");
    }
}
