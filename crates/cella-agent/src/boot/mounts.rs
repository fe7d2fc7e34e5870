//! Mounts: the initramfs basics, the overlay root, the switch into it, and the runtime file
//! systems inside it.
//!
//! The root is an overlay: the user's root read-only at [`LOWER`] (9p or virtio-fs share, or a
//! block device; read-only is enforced by the host, `MS_RDONLY` here is courtesy), a writable
//! layer at [`UPPER`] (tmpfs, or an ext4 disk for a persistent sandbox), merged at
//! [`NEW_ROOT`].
//!
//! On krun there is no initramfs: `/` is a read-only virtio-fs boot directory that already holds
//! the mount points (`/dev`, `/proc`, `/sys`, `/lower`, `/upper`, `/newroot`), devtmpfs may be
//! mounted by the kernel already (`EBUSY` is fine), and nothing is freed before the switch.
//!
//! Invariant: nothing is ever created in the user's root. Mount points the root lacks (`/proc`,
//! `/sys`, `/dev`, `/run`, `/tmp`) are created through the overlay, so they land in the upper
//! layer; `/dev/pts` and `/dev/shm` are created in devtmpfs.
//!
//! The switch is the initramfs way (`pivot_root` does not work on rootfs): move `/dev`, `/proc`,
//! `/sys` under the new root, delete the initramfs files to give their memory back (only when
//! `/` really is a ramfs/tmpfs, without crossing mount points), then `chdir` + `mount --move` +
//! `chroot`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use super::BootError;
use crate::cmdline::{BootConfig, RootSpec, UpperSpec};

/// Mount point of the read-only lower layer in the initramfs.
pub const LOWER: &str = "/lower";
/// Mount point of the writable layer in the initramfs.
pub const UPPER: &str = "/upper";
/// Where the overlay is assembled before the switch.
pub const NEW_ROOT: &str = "/newroot";
/// Where the lower layer stays visible, read-only, after the switch (under the new root). It
/// shows the root as the host provided it, before any write of this sandbox, and it keeps the
/// host's read-only guarantee testable: a guest that remounts it read-write still cannot write.
pub const LOWER_VIEW: &str = "run/cella/lower";

/// 9p message size. The virtio transport caps it at 125 pages (512000 bytes on x86_64); asking
/// for more only adds a kernel warning. Large messages cut round trips for big reads.
pub const NINEP_MSIZE: u32 = 512_000;

/// 9p cache mode. `loose` lets the guest cache pages and metadata: the lower layer is an image
/// that does not change under a running sandbox, and exec-heavy workloads (shells, compilers)
/// read the same files over and over. Measured under TCG on a Debian root
/// (`scripts/agent-smoke.py --bench`, 3 interleaved boots each, loaded host): cold
/// `python3 -c pass` about 1.2 s with `loose` against 1.8 s with `none`, warm 0.45 s against
/// 0.55 s, a handful of stdlib imports 0.6 s against 0.8 s.
pub const NINEP_CACHE: &str = "loose";

/// How long the root device (or 9p channel) may take to appear after its driver loaded.
pub const ROOT_WAIT: Duration = Duration::from_secs(5);

/// `statfs` type of ramfs (the initramfs), from `<linux/magic.h>`.
const RAMFS_MAGIC: i64 = 0x8584_58f6;

const ROOT_POLL: Duration = Duration::from_millis(20);

/// Mounts devtmpfs, proc and sysfs in the initramfs. `EBUSY` (already mounted) is fine.
pub fn mount_early() -> Result<(), BootError> {
    for (fstype, target) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        mkdir(Path::new(target), 0o755)?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        match mount_fs(fstype, target, fstype, flags, None) {
            Err(BootError::Mount { source: Errno::EBUSY, .. }) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Mounts the lower layer, the upper layer and the overlay at [`NEW_ROOT`].
pub fn assemble_root(config: &BootConfig) -> Result<(), BootError> {
    mount_lower(&config.root)?;
    crate::log_info!("root mounted at {LOWER}: {:?}", config.root);

    mkdir(Path::new(UPPER), 0o755)?;
    match &config.upper {
        UpperSpec::Tmpfs => {
            mount_fs("tmpfs", UPPER, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
        }
        UpperSpec::Block { device } => {
            wait_for_path(device)?;
            mount_fs(&device.to_string_lossy(), UPPER, "ext4", MsFlags::empty(), None)?;
        }
    }
    let upper = Path::new(UPPER).join("upper");
    let work = Path::new(UPPER).join("work");
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o755)?;

    mkdir(Path::new(NEW_ROOT), 0o755)?;
    let opts = format!("lowerdir={LOWER},upperdir={},workdir={}", upper.display(), work.display());
    mount_fs("overlay", NEW_ROOT, "overlay", MsFlags::empty(), Some(&opts))?;
    crate::log_info!("overlay root assembled at {NEW_ROOT}");
    Ok(())
}

fn mount_lower(root: &RootSpec) -> Result<(), BootError> {
    mkdir(Path::new(LOWER), 0o755)?;
    match root {
        RootSpec::NineP { tag } => {
            let opts =
                format!("trans=virtio,version=9p2000.L,msize={NINEP_MSIZE},cache={NINEP_CACHE}");
            // The channel for the tag registers when the 9p device is probed; until then the
            // mount fails with ENOENT.
            retry_enoent(|| mount_fs(tag, LOWER, "9p", MsFlags::MS_RDONLY, Some(&opts)))
        }
        RootSpec::VirtioFs { tag } => {
            retry_enoent(|| mount_fs(tag, LOWER, "virtiofs", MsFlags::MS_RDONLY, None))
        }
        RootSpec::Block { device, fstype } => {
            wait_for_path(device)?;
            mount_fs(&device.to_string_lossy(), LOWER, fstype, MsFlags::MS_RDONLY, None)
        }
    }
}

/// Moves the kernel file systems and the lower layer into the new root and makes it `/`.
///
/// `/run` is mounted before the switch so that the lower layer can move under it
/// ([`LOWER_VIEW`]); the overlay keeps its own reference to the lower layer, so the move does
/// not disturb it.
pub fn switch_root() -> Result<(), BootError> {
    let new_root = Path::new(NEW_ROOT);
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        mkdir(&new_root.join(dir), if dir == "tmp" { 0o1777 } else { 0o755 })?;
    }
    let run = new_root.join("run");
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs("tmpfs", &run.to_string_lossy(), "tmpfs", nosuid_nodev, Some("mode=0755"))?;
    let lower_view = new_root.join(LOWER_VIEW);
    mkdir(lower_view.parent().expect("LOWER_VIEW has a parent"), 0o755)?;
    mkdir(&lower_view, 0o755)?;
    for (from, to) in [("/dev", "dev"), ("/proc", "proc"), ("/sys", "sys"), (LOWER, LOWER_VIEW)] {
        let target = new_root.join(to);
        mount(Some(from), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|source| BootError::MoveMount { from: from.into(), to: target, source })?;
    }

    free_initramfs();

    let step = |step: &'static str| move |source| BootError::SwitchRoot { step, source };
    nix::unistd::chdir(new_root).map_err(step("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("move the new root onto /"))?;
    nix::unistd::chroot(".").map_err(step("chroot"))?;
    nix::unistd::chdir("/").map_err(step("chdir to /"))?;
    crate::log_info!("switched root");
    Ok(())
}

/// Mounts devpts, /dev/shm and /tmp inside the new root (`/run` came with the switch), and the
/// /dev/fd links.
pub fn mount_runtime(tty_gid: Option<u32>) -> Result<(), BootError> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mkdir(Path::new("/dev/pts"), 0o755)?;
    let pts_opts = match tty_gid {
        Some(gid) => format!("newinstance,ptmxmode=0666,mode=0620,gid={gid}"),
        None => "newinstance,ptmxmode=0666,mode=0620".to_owned(),
    };
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&pts_opts),
    )?;
    mkdir(Path::new("/dev/shm"), 0o1777)?;
    mount_fs("shm", "/dev/shm", "tmpfs", nosuid_nodev, Some("mode=1777"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777"))?;

    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                crate::log_warn!("cannot create {link}: {e}")
            }
            _ => {}
        }
    }
    Ok(())
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), BootError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|errno| BootError::Mount {
        target: target.into(),
        fstype: fstype.into(),
        source: errno,
    })
}

/// Creates `path` with `mode` (exactly, regardless of umask); an existing path is fine.
fn mkdir(path: &Path, mode: u32) -> Result<(), BootError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            let _ = nix::sys::stat::fchmodat(
                None,
                path,
                nix::sys::stat::Mode::from_bits_truncate(mode),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(BootError::Mkdir { path: path.into(), source }),
    }
}

fn wait_for_path(path: &Path) -> Result<(), BootError> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > ROOT_WAIT {
            return Err(BootError::DeviceMissing { path: path.into(), waited: ROOT_WAIT });
        }
        std::thread::sleep(ROOT_POLL);
    }
    Ok(())
}

fn retry_enoent(mut attempt: impl FnMut() -> Result<(), BootError>) -> Result<(), BootError> {
    let start = Instant::now();
    loop {
        match attempt() {
            Err(BootError::Mount { source: Errno::ENOENT, .. }) if start.elapsed() < ROOT_WAIT => {
                std::thread::sleep(ROOT_POLL)
            }
            other => return other,
        }
    }
}

/// Deletes the initramfs contents (like `switch_root` does) so their memory is freed. Only runs
/// when `/` is a ramfs or tmpfs; never crosses into another file system.
fn free_initramfs() {
    let Ok(fs) = nix::sys::statfs::statfs("/") else {
        return;
    };
    let magic = fs.filesystem_type().0;
    if magic != RAMFS_MAGIC && magic != libc::TMPFS_MAGIC {
        // Expected on krun, whose `/` is the read-only boot directory: not worth a warning.
        crate::log_info!("/ is not an initramfs; not freeing it");
        return;
    }
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_on_device(Path::new("/"), root.dev());
}

fn remove_on_device(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_on_device(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
