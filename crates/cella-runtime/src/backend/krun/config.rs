//! What the krun VM is made of, as plain data: a pure function of the sandbox's [`VmSpec`] and
//! the installed krun assets, so every decision is unit-tested without KVM.
//!
//! The layout is forced by msb_krun 0.1.42 on x86_64: it ignores an initramfs, mounts the
//! virtio-fs share tagged `/dev/root` as the guest's `/` and runs `init=` from it, and its
//! command line starts with a fixed prefix (`nomodule`, `console=hvc0`, `rootfstype=virtiofs`,
//! `quiet` ...) to which the caller may only append. So:
//! - the root share is the sandbox's **boot directory**: the static agent at [`INIT_PATH`] and
//!   the empty mount points it needs ([`BOOT_DIR_MOUNT_POINTS`]), nothing else;
//! - the user's root is a second share, [`ROOT_TAG`], which the agent mounts read-only as the
//!   overlay's lower layer (`cella.root=virtiofs:rootfs`);
//! - both shares are read-only on the host side ([`super::rofs`]): the guest can change neither
//!   the agent it boots nor the user's files;
//! - the agent's parameters ride the appended part of the command line, the same `cella.*` keys
//!   the qemu backend passes, so the agent needs no krun-specific configuration channel;
//! - the sandbox's environment and working directory are not boot parameters on either backend:
//!   the client sends them with every exec request. They never reach the command line, which
//!   the guest (and every process in it) can read from `/proc/cmdline`.

use std::path::{Path, PathBuf};

use super::super::VmSpec;

/// Tag of the virtio-fs share holding the user's root.
pub const ROOT_TAG: &str = "rootfs";

/// The agent's path inside the boot directory; the kernel's `init=`.
pub const INIT_PATH: &str = "/cella-agent";

/// Directories the agent mounts on before it switches root. The boot directory is read-only
/// to the guest, so they must exist beforehand.
pub const BOOT_DIR_MOUNT_POINTS: &[&str] = &["dev", "proc", "sys", "lower", "upper", "newroot"];

/// Guest device of the first (and only) block device: a persistent sandbox's upper disk.
pub const UPPER_DISK_DEVICE: &str = "/dev/vda";

/// The installed files a krun boot needs (see `assets.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunAssets {
    /// The libkrunfw shared library holding the guest kernel.
    pub krunfw: PathBuf,
    /// The static agent binary, copied into each boot directory.
    pub agent: PathBuf,
}

/// Everything the VMM thread needs to build the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KrunConfig {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// libkrunfw library to load the kernel from.
    pub krunfw: PathBuf,
    /// Host directory shared as the guest's `/` (tag `/dev/root`), read-only.
    pub boot_dir: PathBuf,
    /// The kernel's `init=`, inside `boot_dir`.
    pub init_path: &'static str,
    /// Tag of the user's root share.
    pub root_tag: &'static str,
    /// Host directory shared as [`Self::root_tag`], read-only.
    pub rootfs: PathBuf,
    /// Writable raw disk for a persistent sandbox's upper layer.
    pub upper_disk: Option<PathBuf>,
    /// Parameters appended to msb_krun's fixed kernel command line.
    pub cmdline: Vec<String>,
    /// Name of the agent's console port.
    pub port_name: &'static str,
    /// File receiving the kernel console (`hvc0`).
    pub console_log: PathBuf,
    /// Whether the guest may use nested virtualization. Always false: an untrusted guest gets
    /// no hypervisor of its own.
    pub nested_virt: bool,
}

/// The krun configuration for `spec`, booting from `boot_dir` with `assets`.
pub fn krun_config(spec: &VmSpec, assets: &KrunAssets, boot_dir: &Path) -> KrunConfig {
    KrunConfig {
        vcpus: spec.cpus,
        memory_mib: spec.memory_mib,
        krunfw: assets.krunfw.clone(),
        boot_dir: boot_dir.to_path_buf(),
        init_path: INIT_PATH,
        root_tag: ROOT_TAG,
        rootfs: spec.rootfs.clone(),
        upper_disk: spec.upper_disk.clone(),
        cmdline: kernel_params(spec),
        port_name: cella_protocol::AGENT_PORT_NAME,
        console_log: spec.console_log.clone(),
        nested_virt: false,
    }
}

/// The `cella.*` parameters for the agent (see `cella-agent`'s `cmdline.rs`).
pub fn kernel_params(spec: &VmSpec) -> Vec<String> {
    let mut params =
        vec![format!("cella.root=virtiofs:{ROOT_TAG}"), format!("cella.hostname={}", spec.name)];
    if spec.upper_disk.is_some() {
        params.push(format!("cella.upper=blk:{UPPER_DISK_DEVICE}"));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "box-1".into(),
            cpus: 2,
            memory_mib: 768,
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            rootfs: "/roots/debian".into(),
            upper_disk: None,
            port_socket: "/run/box-1.port".into(),
            console_log: "/s/box-1/logs/console.log".into(),
            vmm_log: "/s/box-1/logs/vmm.log".into(),
            state_root: "/home-of-cella".into(),
        }
    }

    fn assets() -> KrunAssets {
        KrunAssets { krunfw: "/k/krun/libkrunfw.so.5.6.1".into(), agent: "/k/cella-agent".into() }
    }

    #[test]
    fn sandbox_resources_and_shares_map_onto_the_vm() {
        let config = krun_config(&spec(), &assets(), Path::new("/s/box-1/runtime/boot"));
        assert_eq!((config.vcpus, config.memory_mib), (2, 768));
        assert_eq!(config.boot_dir, Path::new("/s/box-1/runtime/boot"));
        assert_eq!(
            (config.root_tag, config.rootfs.as_path()),
            ("rootfs", Path::new("/roots/debian"))
        );
        assert_eq!(config.krunfw, Path::new("/k/krun/libkrunfw.so.5.6.1"));
        assert_eq!(config.port_name, "cella.agent");
        assert_eq!(config.console_log, Path::new("/s/box-1/logs/console.log"));
        assert!(!config.nested_virt);
    }

    #[test]
    fn init_is_always_our_agent_never_the_default_aarch64_init() {
        let config = krun_config(&spec(), &assets(), Path::new("/b"));
        assert_eq!(config.init_path, "/cella-agent");
        assert!(!BOOT_DIR_MOUNT_POINTS.is_empty());
    }

    #[test]
    fn agent_parameters_ride_the_appended_command_line() {
        let config = krun_config(&spec(), &assets(), Path::new("/b"));
        assert_eq!(config.cmdline, vec!["cella.root=virtiofs:rootfs", "cella.hostname=box-1"]);
        assert_eq!(config.upper_disk, None);
    }

    #[test]
    fn persistent_upper_layer_is_the_first_virtio_disk() {
        let mut spec = spec();
        spec.upper_disk = Some("/s/box-1/upper.ext4".into());
        let config = krun_config(&spec, &assets(), Path::new("/b"));
        assert_eq!(config.upper_disk.as_deref(), Some(Path::new("/s/box-1/upper.ext4")));
        assert!(config.cmdline.contains(&"cella.upper=blk:/dev/vda".to_string()));
    }

    #[test]
    fn qemu_only_inputs_are_not_used() {
        let config = format!("{:?}", krun_config(&spec(), &assets(), Path::new("/b")));
        assert!(!config.contains("vmlinux") && !config.contains("initramfs"), "{config}");
        assert!(!config.contains(".port"), "krun connects the port in-process: {config}");
    }
}
