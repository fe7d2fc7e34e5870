//! What the QEMU child may see and do.
//!
//! A guest with its own kernel can send the device model any request it accepts, so the
//! emulator is treated as the next thing to fall. Before QEMU is executed, its child process:
//!
//! - enters a private mount namespace (root only) in which the cella home is an empty tmpfs
//!   with only this sandbox's files bound back: the kernel and initramfs (read-only), its own
//!   `sandboxes/NAME/logs` and upper disk, its agent port socket, and the root when it lives
//!   under the home (read-only). Other sandboxes' disks and sockets, the state database and the
//!   image store are not there to open;
//! - sets `PR_SET_NO_NEW_PRIVS` and a zero core-size limit (a core dump of QEMU would hold the
//!   guest's memory), and marks every inherited descriptor above stderr close-on-exec;
//!
//! and QEMU itself is started with its seccomp filter ([`SECCOMP_ARGS`]): no obsolete system
//! calls, no privilege changes, no process spawning, no scheduler or resource changes.
//!
//! Everything that allocates happens in [`Jail::prepare`], in the sandbox process; the child
//! runs [`Jail::enter`] between fork and exec, which makes system calls only.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// QEMU's own seccomp sandbox, as `-sandbox` arguments.
pub const SECCOMP_ARGS: [&str; 2] =
    ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"];

/// Options of the tmpfs that replaces the home: it holds only empty mount points.
const HIDE_TMPFS_OPTIONS: &std::ffi::CStr = c"mode=0700,size=64k,nr_inodes=256";

/// A path the VMM needs, bound back over the tmpfs.
#[derive(Debug)]
pub struct Keep {
    /// The path.
    pub path: PathBuf,
    /// Bind it read-only.
    pub read_only: bool,
}

impl Keep {
    /// A path QEMU reads and writes.
    pub fn rw(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), read_only: false }
    }

    /// A path QEMU only reads.
    pub fn ro(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), read_only: true }
    }
}

/// One bind mount, ready for the child.
#[derive(Debug)]
struct Bind {
    /// The kept path: what the child opens before the tmpfs hides it, and then the mount point
    /// in the tmpfs.
    path: CString,
    /// Directories between the hidden root and `path`, outermost first, to create.
    parents: Vec<CString>,
    is_dir: bool,
    read_only: bool,
}

/// At most this many kept paths (QEMU needs six at most).
const MAX_BINDS: usize = 8;

/// Everything the child needs, prepared before the fork.
#[derive(Debug)]
pub struct Jail {
    /// The directory replaced by a tmpfs, with the binds that restore what is kept. `None` when
    /// this process may not create a mount namespace (not root).
    hide: Option<(CString, Vec<Bind>)>,
}

impl Jail {
    /// Prepares a jail that hides `home` but for `keep` (paths outside `home` stay as they are).
    /// Without the privilege to create a mount namespace, the jail only drops privileges and
    /// core dumps; [`Jail::hides_home`] tells which.
    pub fn prepare(home: &Path, keep: &[Keep]) -> io::Result<Self> {
        let cstr = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| io::Error::other("a path contains a NUL byte"))
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || home.parent().is_none() {
            return Ok(Self { hide: None });
        }
        let mut binds = Vec::new();
        for entry in keep.iter().filter(|k| k.path.starts_with(home) && k.path != home) {
            let meta = std::fs::metadata(&entry.path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", entry.path.display())))?;
            let mut parents = Vec::new();
            let mut dir = entry.path.parent();
            while let Some(d) = dir.filter(|d| *d != home && d.starts_with(home)) {
                parents.push(cstr(d.as_os_str().as_bytes())?);
                dir = d.parent();
            }
            parents.reverse();
            let path = cstr(entry.path.as_os_str().as_bytes())?;
            binds.push(Bind { path, parents, is_dir: meta.is_dir(), read_only: entry.read_only });
        }
        if binds.len() > MAX_BINDS {
            return Err(io::Error::other(format!("more than {MAX_BINDS} paths to keep")));
        }
        Ok(Self { hide: Some((cstr(home.as_os_str().as_bytes())?, binds)) })
    }

    /// Whether the VMM will run in its own mount namespace with the home hidden.
    pub fn hides_home(&self) -> bool {
        self.hide.is_some()
    }

    /// Applies the jail to the calling process. Meant for the child between fork and exec:
    /// only system calls, no allocation, no locks.
    pub fn enter(&self) -> io::Result<()> {
        if let Some((home, binds)) = &self.hide {
            self.hide_home(home, binds)?;
        }
        close_inherited_on_exec();
        // Inherited from the sandbox process already; set again so that the jail holds
        // whoever spawns QEMU.
        no_privilege_gain_no_core_dumps()
    }

    fn hide_home(&self, home: &CString, binds: &[Bind]) -> io::Result<()> {
        let none = std::ptr::null::<libc::c_char>();
        let mut fds = [-1; MAX_BINDS];
        // SAFETY: every pointer is a NUL-terminated string owned by `self` or a stack buffer,
        // or null where the call allows null; the calls only change this process's own mount
        // namespace and descriptors.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here may reach the host's namespace.
            let slave = libc::MS_REC | libc::MS_SLAVE;
            check(libc::mount(none, c"/".as_ptr(), none, slave, std::ptr::null()))?;
            // Opened in the new namespace (a bind source must be one of its own mounts), before
            // the tmpfs hides them.
            for (bind, fd) in binds.iter().zip(fds.iter_mut()) {
                *fd = libc::open(bind.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                check(*fd)?;
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            let (tmpfs, options) = (c"tmpfs".as_ptr(), HIDE_TMPFS_OPTIONS.as_ptr().cast());
            check(libc::mount(tmpfs, home.as_ptr(), tmpfs, flags, options))?;
            for (bind, &fd) in binds.iter().zip(fds.iter()) {
                for dir in &bind.parents {
                    mkdir_exists_ok(dir)?;
                }
                let target = bind.path.as_ptr();
                if bind.is_dir {
                    mkdir_exists_ok(&bind.path)?;
                } else {
                    let placeholder = libc::open(target, libc::O_WRONLY | libc::O_CREAT, 0o600);
                    check(placeholder)?;
                    libc::close(placeholder);
                }
                let source = FdPath::new(fd);
                check(libc::mount(source.as_ptr(), target, none, libc::MS_BIND, std::ptr::null()))?;
                if bind.read_only {
                    let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                    check(libc::mount(none, target, none, ro, std::ptr::null()))?;
                }
                libc::close(fd);
            }
        }
        Ok(())
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS` (exec can never gain privileges) and a core-size limit of 0 (a
/// core dump would hold guest memory) for this process and everything it starts. System calls
/// only: safe between fork and exec.
pub fn no_privilege_gain_no_core_dumps() -> io::Result<()> {
    // SAFETY: plain prctl / setrlimit calls with valid arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec, so QEMU inherits none of the sandbox
/// process's (its launcher lock above all: a QEMU still dying would hold the lock).
fn close_inherited_on_exec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process.
    let done = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if done == 0 {
        return;
    }
    // Kernels before 5.11: one fcntl per possible descriptor.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into `limit`; fcntl on a closed descriptor just fails with EBADF.
    unsafe {
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(65_536) as libc::c_int
        } else {
            1024
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// `/proc/self/fd/N` in a stack buffer: the child may not allocate.
struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    fn new(fd: libc::c_int) -> Self {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (fd.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, digit) in digits[..len].iter().rev().enumerate() {
            buf[PREFIX.len() + i] = *digit;
        }
        Self { buf }
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

/// mkdir(2) that accepts an existing directory.
fn mkdir_exists_ok(dir: &CString) -> io::Result<()> {
    // SAFETY: `dir` is NUL-terminated.
    if unsafe { libc::mkdir(dir.as_ptr(), 0o700) } != 0 && errno() != libc::EEXIST {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_the_home_are_bound_back_with_their_parents() {
        let home = tempfile::tempdir().unwrap();
        let logs = home.path().join("sandboxes/web/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let kernel = home.path().join("kernel/6.1/vmlinux");
        std::fs::create_dir_all(kernel.parent().unwrap()).unwrap();
        std::fs::write(&kernel, b"elf").unwrap();
        let outside = tempfile::tempdir().unwrap();

        let keep = [Keep::rw(&logs), Keep::ro(&kernel), Keep::ro(outside.path())];
        let jail = Jail::prepare(home.path(), &keep).unwrap();

        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!jail.hides_home());
            return;
        }
        let (_, binds) = jail.hide.as_ref().unwrap();
        assert_eq!(binds.len(), 2, "the path outside the home is left alone");
        let text = |c: &CString| c.to_str().unwrap().to_string();
        let home_text = home.path().to_str().unwrap();
        assert_eq!(
            binds[0].parents.iter().map(text).collect::<Vec<_>>(),
            [format!("{home_text}/sandboxes"), format!("{home_text}/sandboxes/web")]
        );
        assert!(binds[0].is_dir && !binds[0].read_only);
        assert!(!binds[1].is_dir && binds[1].read_only);
        assert_eq!(text(&binds[1].path), kernel.to_str().unwrap());
    }

    #[test]
    fn descriptor_paths_are_formatted_without_allocating() {
        let text = |fd| {
            let path = FdPath::new(fd);
            // SAFETY: FdPath is NUL-terminated within its buffer.
            unsafe { std::ffi::CStr::from_ptr(path.as_ptr()) }.to_str().unwrap().to_string()
        };
        assert_eq!(text(0), "/proc/self/fd/0");
        assert_eq!(text(7), "/proc/self/fd/7");
        assert_eq!(text(1234567890), "/proc/self/fd/1234567890");
        assert_eq!(text(i32::MAX), "/proc/self/fd/2147483647");
    }

    #[test]
    fn a_missing_kept_path_is_an_error_that_names_it() {
        let home = tempfile::tempdir().unwrap();
        let missing = home.path().join("kernel/none");
        let err = Jail::prepare(home.path(), &[Keep::ro(&missing)]);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert!(err.unwrap_err().to_string().contains("kernel/none"));
        }
    }
}
