//! The krun backend: `msb_krun` (libkrun's VMM as a Rust library) inside the sandbox process,
//! on hosts with working VMX/SVM KVM. No emulator process; the guest kernel comes from the
//! libkrunfw library that `scripts/setup` installs.
//!
//! Pieces:
//! - [`config`]: the VM as plain data, a pure function of the sandbox (unit-tested);
//! - [`bootdir`]: the per-sandbox boot directory the guest boots from;
//! - [`rofs`]: the host-enforced read-only virtio-fs shares;
//! - [`vmm`]: the main-thread side that builds the VM and hands the thread to `enter()`;
//! - this file: [`launch`], the runtime side, and [`KrunVm`], the [`RunningVm`] it returns.
//!
//! Seen from the runtime a krun VM behaves like a qemu child: [`RunningVm::wait`] resolves when
//! the guest is gone and [`RunningVm::kill`] ends it (through msb_krun's exit handle). The
//! difference is what happens next: the whole process ends, from the exit observer, once the
//! runtime has recorded the run (see [`vmm`]). Dropping a [`KrunVm`] ends the VM, as dropping a
//! qemu child kills it, so no error path can leave a guest running without a supervisor.

pub mod bootdir;
pub mod config;
pub mod rofs;
pub mod vmm;

use std::future::Future;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::pin::Pin;

use msb_krun::ExitHandle;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};

use super::{BackendError, LaunchedVm, RunningVm, VmExit, VmSpec};
pub use config::{krun_config, KrunAssets, KrunConfig};
pub use vmm::{vmm_thread, KrunError, MainThread, VmmThread};

/// The accelerator a krun guest always runs on.
pub const ACCELERATOR: &str = "kvm";

/// Line written to the sandbox's `vmm.log`: krun has no separate VMM process whose output
/// could go there.
const VMM_LOG_NOTE: &str =
    "krun: the VMM runs inside the sandbox process; its messages are in runtime.log\n";

/// Builds the boot directory, asks the main thread to build and run the VM, and returns it
/// with the host end of the agent port.
pub async fn launch(
    spec: &VmSpec,
    assets: &KrunAssets,
    boot_dir: &Path,
    thread: &VmmThread,
) -> Result<LaunchedVm, BackendError> {
    bootdir::prepare(boot_dir, &assets.agent)?;
    let _ = std::fs::write(&spec.vmm_log, VMM_LOG_NOTE);
    let (host_end, guest_end) =
        StdUnixStream::pair().map_err(|source| BackendError::PortPair { source })?;
    host_end.set_nonblocking(true).map_err(|source| BackendError::PortPair { source })?;
    let port =
        UnixStream::from_std(host_end).map_err(|source| BackendError::PortPair { source })?;

    let (ended_tx, ended) = watch::channel(None);
    let (built_tx, built) = oneshot::channel();
    let request = vmm::VmmRequest {
        config: krun_config(spec, assets, boot_dir),
        port: guest_end.into(),
        ended: ended_tx,
        built: built_tx,
    };
    thread.request(request).map_err(|_| BackendError::VmmThreadGone)?;
    let exit = built.await.map_err(|_| BackendError::VmmThreadGone)??;
    tracing::debug!(sandbox = %spec.name, "krun VM built; the main thread enters it");
    Ok(LaunchedVm { vm: Box::new(KrunVm { exit, ended }), port, accelerator: ACCELERATOR })
}

/// A VM running on the main thread.
pub struct KrunVm {
    exit: ExitHandle,
    ended: watch::Receiver<vmm::VmEnd>,
}

impl RunningVm for KrunVm {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn wait(&mut self) -> Pin<Box<dyn Future<Output = std::io::Result<VmExit>> + Send + '_>> {
        Box::pin(async move {
            let end = self
                .ended
                .wait_for(Option::is_some)
                .await
                .map_err(|_| std::io::Error::other("the VMM thread ended without reporting"))?
                .clone();
            match end {
                Some(Ok(exit)) => Ok(exit),
                Some(Err(why)) => Err(std::io::Error::other(why)),
                None => Err(std::io::Error::other("the VMM thread ended without reporting")),
            }
        })
    }

    fn kill(&mut self) -> std::io::Result<()> {
        self.exit.trigger();
        Ok(())
    }
}

impl Drop for KrunVm {
    fn drop(&mut self) {
        self.exit.trigger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        std::fs::create_dir_all(dir.join("root")).unwrap();
        VmSpec {
            name: "t".into(),
            cpus: 1,
            memory_mib: 256,
            kernel: "/unused".into(),
            initramfs: "/unused".into(),
            rootfs: dir.join("root"),
            upper_disk: None,
            port_socket: dir.join("t.port"),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("vmm.log"),
            state_root: "/home-of-cella".into(),
        }
    }

    fn assets(dir: &Path) -> KrunAssets {
        std::fs::write(dir.join("agent"), b"agent").unwrap();
        KrunAssets { krunfw: dir.join("libkrunfw.so"), agent: dir.join("agent") }
    }

    #[tokio::test]
    async fn launch_without_a_main_thread_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (thread, main) = vmm_thread();
        drop(main);
        let err = launch(&spec(tmp.path()), &assets(tmp.path()), &tmp.path().join("boot"), &thread)
            .await
            .err()
            .expect("no main thread");
        assert!(matches!(err, BackendError::VmmThreadGone), "{err}");
    }

    #[tokio::test]
    async fn once_closed_the_main_thread_starts_no_vm() {
        let tmp = tempfile::tempdir().unwrap();
        let (thread, main) = vmm_thread();
        thread.close();
        let server = std::thread::spawn(move || main.serve(std::sync::mpsc::channel().1));
        let err = launch(&spec(tmp.path()), &assets(tmp.path()), &tmp.path().join("boot"), &thread)
            .await
            .err()
            .expect("a closed VMM thread must refuse");
        assert!(matches!(err, BackendError::VmmThreadGone), "{err}");
        drop(thread);
        server.join().unwrap();
    }

    #[tokio::test]
    async fn a_vm_the_main_thread_cannot_build_is_reported_with_its_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let (thread, main) = vmm_thread();
        let server = std::thread::spawn(move || main.serve(std::sync::mpsc::channel().1));
        let mut spec = spec(tmp.path());
        spec.rootfs = tmp.path().join("no-such-root");
        let err = launch(&spec, &assets(tmp.path()), &tmp.path().join("boot"), &thread)
            .await
            .err()
            .expect("unbuildable VM");
        assert!(err.to_string().contains("no-such-root"), "{err}");
        drop(thread);
        server.join().unwrap();
        assert!(tmp.path().join("boot/cella-agent").is_file(), "boot directory was not built");
    }
}
