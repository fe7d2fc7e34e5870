//! The VMM side of the krun backend: what runs on the sandbox process's main thread.
//!
//! `msb_krun`'s `Vm::enter()` runs the VM on the calling thread and never returns once the
//! guest runs: on guest poweroff, or when its [`ExitHandle`] fires, it runs the exit observers
//! and `_exit`s the process. So the sandbox process gives its main thread to the VMM and runs
//! its async runtime on other threads (`sandbox::process`); the runtime asks for a VM with a
//! [`VmmRequest`] through [`VmmThread`] and gets back the VM's [`ExitHandle`].
//!
//! Invariants:
//! - the process never ends behind the runtime's back: the exit observer first tells the
//!   runtime the VM is gone (which resolves `RunningVm::wait`), then waits, bounded by
//!   [`RECORD_TIMEOUT`], until the runtime has recorded the run and cleaned up and sent the
//!   process's exit status, and `_exit`s with that status itself;
//! - host signals stay with the runtime: msb_krun installs its own SIGTERM handler while it
//!   builds the VM (one that stops the VM at once, in the middle of whatever the guest was
//!   doing); the placement observer, which runs after that and before any vCPU runs, puts back
//!   the SIGTERM, SIGINT and SIGHUP handlers that were in place, so a signal reaches the
//!   supervisor, which stops the guest in order (agent shutdown, then the exit handle) exactly
//!   as on qemu. A signal in the few milliseconds between the two ends the VM directly; the run
//!   is then recorded as a VM that stopped without the agent's goodbye;
//! - the guest end of the agent port stays open on this thread until `enter` has duplicated it
//!   into the console device;
//! - no VM outlives the runtime: the main thread publishes the VM's exit handle before it
//!   enters, and [`VmmThread::close`], called once the runtime is done, fires it and forbids
//!   any later VM. (The runtime's own handle can be lost, for example when a signal cancels the
//!   boot just as the VM was built.)

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use msb_krun::{ExitHandle, Vm, VmBuilder};
use tokio::sync::{oneshot, watch};

use super::config::KrunConfig;
use super::rofs::{ReadOnlyFs, ReadOnlyFsError};
use crate::backend::VmExit;

/// How long the exit observer waits for the runtime to record the run before it ends the
/// process anyway (the next startup sweep then reconciles the run).
pub const RECORD_TIMEOUT: Duration = Duration::from_secs(30);

/// The virtio-fs tag the kernel mounts as `/` (msb_krun's command line says `root=/dev/root`).
const ROOT_DEVICE_TAG: &str = "/dev/root";

/// Signals whose handlers the runtime owns.
const RUNTIME_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// How the VM ended, as the runtime sees it: `None` while it runs, `Some(Err)` when the VMM
/// failed (the message says why).
pub type VmEnd = Option<Result<VmExit, String>>;

/// Building or entering the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum KrunError {
    /// A directory could not be shared with the guest.
    #[error(transparent)]
    Share(#[from] ReadOnlyFsError),
    /// msb_krun rejected the configuration.
    #[error("msb_krun refused the VM configuration")]
    Build(#[source] msb_krun::Error),
}

/// One VM for the main thread to run.
pub struct VmmRequest {
    /// What to build.
    pub config: KrunConfig,
    /// Guest end of the agent port (a Unix socket pair).
    pub port: OwnedFd,
    /// Told when the VM has ended.
    pub ended: watch::Sender<VmEnd>,
    /// Receives the exit handle once the VM is built, or why it could not be.
    pub built: oneshot::Sender<Result<ExitHandle, KrunError>>,
}

/// The VM the main thread runs, as far as ending it goes.
#[derive(Default)]
struct Entered {
    /// Exit handle of the VM that is (about to be) entered.
    handle: Option<ExitHandle>,
    /// The runtime is done: no VM may start any more.
    closed: bool,
}

/// The runtime's way to the main thread. Dropping every clone lets the main thread finish.
#[derive(Clone)]
pub struct VmmThread {
    requests: mpsc::Sender<VmmRequest>,
    entered: Arc<Mutex<Entered>>,
}

impl VmmThread {
    /// Asks the main thread to run a VM; gives the request back when the main thread is gone.
    pub fn request(&self, request: VmmRequest) -> Result<(), Box<VmmRequest>> {
        self.requests.send(request).map_err(|e| Box::new(e.0))
    }

    /// Ends the VM the main thread runs, if any, and refuses every later one. For the sandbox
    /// process once its runtime has finished (and sent its exit status).
    pub fn close(&self) {
        let mut entered = self.entered.lock().unwrap_or_else(|e| e.into_inner());
        entered.closed = true;
        if let Some(handle) = &entered.handle {
            handle.trigger();
        }
    }
}

/// The main thread's end.
pub struct MainThread {
    requests: mpsc::Receiver<VmmRequest>,
    entered: Arc<Mutex<Entered>>,
}

/// A connected pair: give [`VmmThread`] to the runtime, keep [`MainThread`] on the main thread.
pub fn vmm_thread() -> (VmmThread, MainThread) {
    let (tx, rx) = mpsc::channel();
    let entered = Arc::new(Mutex::new(Entered::default()));
    let thread = VmmThread { requests: tx, entered: Arc::clone(&entered) };
    (thread, MainThread { requests: rx, entered })
}

impl MainThread {
    /// Runs VMs as the runtime asks until it drops its [`VmmThread`]. Once a VM runs, this never
    /// returns: the process ends from the exit observer with the status received on `status`.
    pub fn serve(self, status: mpsc::Receiver<i32>) {
        let status = Arc::new(Mutex::new(status));
        while let Ok(request) = self.requests.recv() {
            run(request, &self.entered, Arc::clone(&status));
        }
    }
}

/// Builds and enters one VM; returns only if it could not be started.
fn run(request: VmmRequest, entered: &Mutex<Entered>, status: Arc<Mutex<mpsc::Receiver<i32>>>) {
    let VmmRequest { config, port, ended, built } = request;
    let ended = Arc::new(ended);
    let observer = exit_observer(Arc::clone(&ended), status);
    let vm = match build(&config, port.as_raw_fd(), observer) {
        Ok(vm) => vm,
        Err(err) => {
            let _ = built.send(Err(err));
            return;
        }
    };
    {
        let mut entered = entered.lock().unwrap_or_else(|e| e.into_inner());
        if entered.closed {
            return; // the runtime is done; dropping `built` tells a late waiter so
        }
        entered.handle = Some(vm.exit_handle());
    }
    if built.send(Ok(vm.exit_handle())).is_err() {
        return; // the runtime gave up waiting; do not start a VM nobody supervises
    }
    let failure = match vm.enter() {
        Ok(never) => match never {},
        Err(err) => err,
    };
    ended.send_replace(Some(Err(crate::sandbox::error_line(&failure))));
    drop(port);
}

/// Builds the VM; `port_fd` must stay open until `enter` (it is duplicated there).
pub fn build(
    config: &KrunConfig,
    port_fd: RawFd,
    on_exit: impl Fn(i32) + Send + 'static,
) -> Result<Vm, KrunError> {
    let boot = ReadOnlyFs::new(&config.boot_dir)?;
    let root = ReadOnlyFs::new(&config.rootfs)?;
    let cmdline = config.cmdline.join(" ");
    let saved = SavedHandlers::capture();
    let mut builder = VmBuilder::new()
        .machine(|m| {
            m.vcpus(config.vcpus)
                .memory_mib(config.memory_mib as usize)
                .nested_virt(config.nested_virt)
        })
        .kernel(|k| k.krunfw_path(&config.krunfw).init_path(config.init_path).cmdline(&cmdline))
        .fs(|fs| fs.tag(ROOT_DEVICE_TAG).custom(Box::new(boot)))
        .fs(|fs| fs.tag(config.root_tag).custom(Box::new(root)))
        .console(|c| c.output(&config.console_log).port(config.port_name, port_fd, port_fd))
        .on_exit(on_exit)
        .on_placement(move |_| saved.restore());
    if let Some(disk) = &config.upper_disk {
        builder = builder.disk(|d| d.path(disk).read_only(false));
    }
    builder.build().map_err(KrunError::Build)
}

/// The observer msb_krun runs on this thread before it would `_exit`.
fn exit_observer(
    ended: Arc<watch::Sender<VmEnd>>,
    status: Arc<Mutex<mpsc::Receiver<i32>>>,
) -> impl Fn(i32) + Send + 'static {
    move |code| {
        ended.send_replace(Some(Ok(VmExit::Exited(code))));
        let status = match status.lock() {
            Ok(rx) => rx.recv_timeout(RECORD_TIMEOUT).unwrap_or(1),
            Err(_) => 1,
        };
        // SAFETY: _exit ends the process without unwinding or running atexit handlers, which is
        // what the VMM does right after this observer anyway. The runtime has finished its
        // work (it sent the status) or gave up; its log writes are unbuffered.
        unsafe { libc::_exit(status) }
    }
}

/// Signal dispositions saved before msb_krun replaces some of them.
struct SavedHandlers(Vec<(libc::c_int, libc::sigaction)>);

impl SavedHandlers {
    fn capture() -> Self {
        let saved = RUNTIME_SIGNALS
            .iter()
            .filter_map(|&signal| {
                // SAFETY: all-zero bytes are a valid `sigaction` (no handler, empty mask).
                let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
                // SAFETY: a null `act` only reads the current disposition into `old`, a valid,
                // writable sigaction we own.
                let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
                (rc == 0).then_some((signal, old))
            })
            .collect();
        Self(saved)
    }

    fn restore(&self) {
        for (signal, action) in &self.0 {
            // SAFETY: `action` is a disposition the kernel gave us for this very signal; putting
            // it back reinstalls the runtime's handler, which is still loaded and valid.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(dir: &Path) -> KrunConfig {
        for sub in ["boot", "root"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::File::create(dir.join("upper.ext4")).unwrap().set_len(1 << 20).unwrap();
        KrunConfig {
            vcpus: 2,
            memory_mib: 256,
            krunfw: dir.join("libkrunfw.so.5.6.1"),
            boot_dir: dir.join("boot"),
            init_path: "/cella-agent",
            root_tag: "rootfs",
            rootfs: dir.join("root"),
            upper_disk: Some(dir.join("upper.ext4")),
            cmdline: vec!["cella.root=virtiofs:rootfs".into(), "cella.hostname=t".into()],
            port_name: "cella.agent",
            console_log: dir.join("console.log"),
            nested_virt: false,
        }
    }

    #[test]
    fn msb_krun_accepts_the_configuration_without_touching_kvm() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let vm = build(&config(tmp.path()), a.as_raw_fd(), |_| {}).unwrap();
        let _handle = vm.exit_handle();
    }

    #[test]
    fn a_missing_root_is_reported_before_any_vm_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config(tmp.path());
        config.rootfs = tmp.path().join("missing");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = build(&config, a.as_raw_fd(), |_| {}).err().expect("build must fail");
        assert!(matches!(err, KrunError::Share(_)), "{err}");
    }

    #[test]
    fn saved_signal_handlers_are_put_back() {
        // SIGHUP's disposition in this test process: replaced, then restored.
        let saved = SavedHandlers::capture();
        // SAFETY: installs SIG_IGN for SIGHUP in this test process; restored below.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        saved.restore();
        let after = SavedHandlers::capture();
        let handler = |s: &SavedHandlers| {
            s.0.iter().find(|(n, _)| *n == libc::SIGHUP).map(|(_, a)| a.sa_sigaction)
        };
        assert_eq!(handler(&saved), handler(&after));
    }
}
